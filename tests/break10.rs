//! Hostile review of issue 10 (service versions, TLS pinning, proxies, custom domains).
//! Each failing test reproduces a broken promise; see the comment above it.

#[path = "common/cli.rs"]
mod cli;
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use azmutex::rest::{RestRequest, DEFAULT_API_VERSION, FALLBACK_API_VERSION};
use azmutex::{AzureMutex, BlobClient, ClientOptions};
use common::http_proxy::{Action, HttpProxy, Match};

fn client_via(addr: std::net::SocketAddr, request_timeout: Duration) -> BlobClient {
    let options = ClientOptions {
        request_timeout,
        ..common::fast_options()
    };
    BlobClient::new(&common::config_via(addr), options).unwrap()
}

fn props(container: &str) -> RestRequest {
    RestRequest::new("props", reqwest::Method::GET, container, None).query("restype", "container")
}

/// Runs `c` with a wall-clock limit; `None` if it had to be killed.
fn run_bounded(mut c: Command, limit: Duration) -> Option<std::process::Output> {
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// PROMISE 1 (gate): calls waiting on the version gate respect their own deadlines.
// WHAT HAPPENS: `send` computes the attempt's timeout (`request_timeout.min(remaining)`) BEFORE
// waiting on the gate; a call whose deadline passes while it waits then still sends a request
// with the stale (full) timeout, so it returns up to `request_timeout` after its deadline.
// SHOULD: return (Transient/Timeout) at its deadline, without sending.
#[tokio::test]
async fn gate_waiter_keeps_its_own_deadline() {
    let proxy = HttpProxy::start(common::azurite_addr());
    proxy.add(Match::Any, Action::Blackhole, None);
    let client = client_via(proxy.addr, Duration::from_secs(5));
    let first = {
        let c = client.clone();
        tokio::spawn(async move { c.send(&props("gate-a"), Instant::now() + Duration::from_secs(20)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(2);
    let r = client.send(&props("gate-b"), deadline).await;
    let took = started.elapsed();
    first.abort();
    assert!(r.is_err());
    assert!(
        took < Duration::from_millis(2700),
        "deadline 2 s, returned after {took:?} ({} requests reached the proxy)",
        proxy.seen().len()
    );
}

// PROMISE 1 (one extra request per client, "however many calls start together"): while the
// first request is slow (here: blackholed), other calls wait on the gate; when their deadlines
// pass they give up waiting but still send their own request at the default version, each gets
// refused, so the client pays one refusal per such call.
// SHOULD: at most one refused request for the client.
#[tokio::test]
async fn gate_timeouts_cost_no_extra_refusals() {
    let proxy = HttpProxy::start(common::azurite_addr());
    // First request: swallowed (a slow first answer). Then: Azure Stack Hub.
    proxy.add(Match::Any, Action::Blackhole, Some(1));
    proxy.add(
        Match::VersionNewerThan(FALLBACK_API_VERSION),
        Action::RefuseVersion,
        None,
    );
    let client = client_via(proxy.addr, Duration::from_secs(4));
    let first = {
        let c = client.clone();
        tokio::spawn(async move { c.send(&props("gate-c"), Instant::now() + Duration::from_secs(20)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            c.send(&props("gate-c"), Instant::now() + Duration::from_secs(1)).await
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let _ = first.await;
    let seen = proxy.seen();
    let refused = seen
        .iter()
        .filter(|s| matches!(s.action, Some(Action::RefuseVersion)))
        .count();
    assert_eq!(client.api_version(), FALLBACK_API_VERSION);
    assert!(refused <= 1, "{refused} refused requests for one client: {seen:#?}");
}

// PROMISE 1 (pins validated as YYYY-MM-DD): a pinned version is "a YYYY-MM-DD date"; only the
// shape (digits and dashes) is checked, so impossible dates are accepted and sent.
// SHOULD: refuse month 13 / day 45 like any other malformed version (before the network).
#[test]
fn pinned_impossible_dates_are_refused() {
    for bad in ["2017-13-45", "2099-00-00", "9999-99-99"] {
        let options = ClientOptions {
            api_version: Some(bad.into()),
            ..ClientOptions::default()
        };
        let built = AzureMutex::builder(common::config_via("127.0.0.1:9".parse().unwrap()), "b10-cont")
            .client_options(options)
            .build();
        assert!(built.is_err(), "pinned api_version {bad:?} was accepted");
    }
}

// Held: the CLI rejects malformed --api-version / AZMUTEX_API_VERSION before the network.
#[test]
fn cli_rejects_bad_api_version_before_network() {
    for (flag, env) in [(Some("2015-02-20"), None), (None, Some("latest"))] {
        let mut c = cli::azmutex_with("b10-cont", &cli::connection_via("127.0.0.1:9".parse().unwrap()));
        if let Some(f) = flag {
            c.args(["--api-version", f]);
        }
        if let Some(e) = env {
            c.env("AZMUTEX_API_VERSION", e);
        }
        c.args(["--timeout", "2s", "status", "job"]);
        let out = run_bounded(c, Duration::from_secs(20)).expect("hung");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{err}");
        assert!(err.contains("api-version"), "{err}");
    }
    let _ = DEFAULT_API_VERSION;
}

fn status_via_dead_port() -> Command {
    let mut c = cli::azmutex_with("b10-cont", &cli::connection_via("127.0.0.1:9".parse().unwrap()));
    c.args(["--timeout", "3s"]);
    c
}

// PROMISE 2 (bad --ca-cert files: clear typed error exit 78, no hang): a --ca-cert that is a
// FIFO (or any never-ending file such as a pipe) is read with an unbounded `std::fs::read`
// before anything else; the CLI blocks forever, ignoring --timeout 3s.
// SHOULD: refuse non-regular files / read a bounded amount, exit 78.
#[test]
fn ca_cert_fifo_is_refused_not_waited_on() {
    let dir = cli::scratch("b10-fifo");
    let fifo = dir.join("ca.pem");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let mut c = status_via_dead_port();
    c.arg("--ca-cert").arg(&fifo).args(["status", "job"]);
    let out = run_bounded(c, Duration::from_secs(15));
    assert!(out.is_some(), "--ca-cert FIFO: still running after 15 s (--timeout 3s)");
    assert_eq!(out.unwrap().status.code(), Some(78));
}

// PROMISE 2 (SSL_CERT_FILE garbage: clear typed error, no hang): same with SSL_CERT_FILE,
// which `tls_config` reads with `std::fs::read` too (and the platform verifier reads again).
#[test]
fn ssl_cert_file_fifo_is_refused_not_waited_on() {
    let dir = cli::scratch("b10-fifo2");
    let fifo = dir.join("bundle.pem");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let mut c = status_via_dead_port();
    c.env("SSL_CERT_FILE", &fifo).args(["status", "job"]);
    let out = run_bounded(c, Duration::from_secs(15));
    assert!(
        out.is_some(),
        "SSL_CERT_FILE FIFO: still running after 15 s (--timeout 3s)"
    );
}

// Held: garbage, empty, DER, key-only, directory --ca-cert files are typed config errors.
#[test]
fn bad_ca_cert_files_exit_78() {
    let dir = cli::scratch("b10-ca");
    let der = dir.join("cert.der");
    let key = dir.join("key.pem");
    let ok = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=x", "-outform", "DER",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&der)
        .output()
        .unwrap();
    assert!(ok.status.success());
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, b"\x00\xff\xfe not pem at all \n\x1b[2J").unwrap();
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, b"").unwrap();
    let broken = dir.join("broken.pem");
    std::fs::write(
        &broken,
        b"-----BEGIN CERTIFICATE-----\n!!!!not base64!!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let unterminated = dir.join("unterminated.pem");
    std::fs::write(&unterminated, b"-----BEGIN CERTIFICATE-----\nMIIB\n").unwrap();
    let huge = dir.join("huge.pem");
    std::fs::write(&huge, vec![b'A'; 50 << 20]).unwrap();
    for f in [&der, &key, &garbage, &empty, &broken, &unterminated, &huge, &dir] {
        let mut c = status_via_dead_port();
        c.arg("--ca-cert").arg(f).args(["status", "job"]);
        let out = run_bounded(c, Duration::from_secs(30)).expect("hung");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{}: {err}", f.display());
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.len() < 2000, "{}: {} bytes of error", f.display(), err.len());
    }
}

// PROMISE 3: proxy credentials never printed, with special characters, in errors and -vv logs.
#[test]
fn proxy_credentials_with_special_characters_never_printed() {
    let secrets = ["S3cr%40t", "S3cr@t", "pä%C3%9Fw", "hunter2:x"];
    let urls = [
        "http://us%40er:S3cr%40t@127.0.0.1:9",
        "http://user:pä%C3%9Fw@127.0.0.1:9",
        // Malformed: no host, spaces, bad port, a path: typed errors that must not quote them.
        "http://user:S3cr%40t@",
        "http://user:S3cr@t@127.0.0.1:9",
        "http://user:hunter2:x@127.0.0.1:99999",
        "http://user:S3cr%40t@127.0.0.1:9/path",
        " http://user:S3cr%40t@ bad host:9",
    ];
    for url in urls {
        for how in ["flag", "HTTP_PROXY", "http_proxy", "ALL_PROXY"] {
            let mut c = status_via_dead_port();
            c.arg("-vv");
            if how == "flag" {
                c.args(["--proxy", url]);
            } else {
                c.env(how, url);
            }
            c.args(["status", "job"]);
            let out = run_bounded(c, Duration::from_secs(30)).expect("hung");
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            for s in secrets {
                assert!(!all.contains(s), "{how}={url}: secret {s:?} printed:\n{all}");
            }
            assert!(!all.contains("panicked"), "{all}");
        }
    }
}

// PROMISE 3: a proxy answering 407 → exit 77 at once, and the (wrong, special-character)
// credentials are not printed, even with -vv. Held.
#[test]
fn proxy_407_with_unicode_credentials_exits_77_without_printing_them() {
    let proxy = common::forward_proxy::ForwardProxy::start();
    proxy.require("right:answer");
    let mut c = cli::azmutex_with("b10-cont", &cli::connection_via(common::azurite_addr()));
    c.args(["--timeout", "20s", "-vv", "--proxy"])
        .arg(proxy.url(Some("w%40rong:Pw%C3%A4%3Ad%25x")))
        .args(["status", "job"]);
    let started = Instant::now();
    let out = run_bounded(c, Duration::from_secs(30)).expect("hung");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(77), "{all}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    for s in ["Pw%C3%A4", "Pwä", "%3Ad%25x", ":d%x"] {
        assert!(!all.contains(s), "{s:?} printed: {all}");
    }
}

// PROMISE 3: a proxy that accepts and never answers CONNECT is bounded by --timeout. Held.
#[test]
fn silent_proxy_is_bounded_by_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut keep = Vec::new();
        for s in listener.incoming().flatten() {
            keep.push(s);
        }
    });
    let cs = format!(
        "AccountName=devstoreaccount1;AccountKey={};BlobEndpoint=https://localhost:9/devstoreaccount1",
        common::DEV_KEY
    );
    let mut c = cli::azmutex_with("b10-cont", &cs);
    c.env("HTTPS_PROXY", format!("http://u:p@{addr}"))
        .args(["--timeout", "3s", "status", "job"]);
    let started = Instant::now();
    let out = run_bounded(c, Duration::from_secs(30)).expect("hung past 30 s with --timeout 3s");
    assert_eq!(out.status.code(), Some(69), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}

// PROMISE 4: a custom domain without an account name (SharedKey) → exit 78 before the network.
// Held.
#[test]
fn custom_domain_without_account_name_is_78() {
    let mut c = Command::new(cli::bin());
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AZURE_STORAGE_KEY", common::DEV_KEY)
        .args([
            "--container",
            "b10-cont",
            "--account-url",
            "https://locks.example.com",
            "status",
            "job",
        ]);
    let out = run_bounded(c, Duration::from_secs(10)).expect("hung");
    assert_eq!(out.status.code(), Some(78));
}
