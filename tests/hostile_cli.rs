//! The `azmutex` binary against typos, hostile lock blobs and hostile servers (issue 9): no
//! secret in any output, no panic (exit 101), honest exit codes, bounded time.
#![cfg(feature = "cli")]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use azmutex::rest::RestRequest;
use azmutex::{AzureMutex, Holder, LeaseDuration};
use reqwest::Method;

const BIN: &str = env!("CARGO_BIN_EXE_azmutex");
/// A key that is not the emulator's, to look for in the output.
const KEY: &str = "q0Zr7bYp1mT3XyK9eL2wV8nH4sJ6uA5cD0fG1hI2jK3lM4nO5pQ6rS7tU8vW9xY0zA1bC2dE3fG4hI5jK6lM7nO8pQ==";

fn azmutex(env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// No 8-character window of the key appears in `out`.
fn assert_no_key(out: &str, context: &str) {
    for w in KEY.as_bytes().windows(8) {
        let w = std::str::from_utf8(w).unwrap();
        assert!(!out.contains(w), "{context}: output contains {w:?} of the key:\n{out}");
    }
}

/// Item 2: typos in connection strings, swapped flags, a connection string in the wrong
/// variable, a key as a lease id: exit 78 (or 2), and the key is never printed.
#[test]
fn typos_never_print_the_key() {
    let cs_typos = [
        format!("AccountName=acct,AccountKey={KEY}"),
        format!("AccountName=acct\nAccountKey={KEY}"),
        format!("AccountName=acct AccountKey={KEY}"),
        format!("AccountName=acct;AccountKey:{KEY}"),
        format!("AccountName=acct;{KEY}"),
        format!("AccountName=acct;AccountKey={KEY},EndpointSuffix=core.windows.net"),
        format!("DefaultEndpointsProtocol=https,AccountName=acct,AccountKey={KEY}"),
        format!("BlobEndpoint=https://acct.blob.core.windows.net/,AccountKey={KEY}"),
        format!("AccountName=acct;AccountKey={KEY};EndpointSuffix=core\\windows.net"),
    ];
    for cs in &cs_typos {
        let o = azmutex(&[("AZURE_STORAGE_CONNECTION_STRING", cs)], &["status", "x"]);
        assert_eq!(o.status.code(), Some(78), "{cs:?}: {}", text(&o));
        assert_no_key(&text(&o), cs);
    }
    type Case<'a> = (Vec<(&'a str, String)>, Vec<&'a str>, i32);
    let cases: Vec<Case> = vec![
        (
            vec![],
            vec!["--account-name", KEY, "--account-key", "acct", "status", "x"],
            78,
        ),
        (
            vec![(
                "AZURE_STORAGE_ACCOUNT",
                format!("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={KEY}"),
            )],
            vec!["status", "x"],
            78,
        ),
        (
            vec![("AZURE_STORAGE_CONNECTION_STRING", "UseDevelopmentStorage=true".into())],
            vec!["renew", "x", "--lease-id", KEY],
            2,
        ),
    ];
    for (env, args, code) in cases {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let o = azmutex(&env, &args);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", text(&o));
        assert_no_key(&text(&o), &format!("{args:?}"));
    }
}

/// Item 2: `--help` shows no environment values (a SAS URL in `AZURE_STORAGE_SERVICE_ENDPOINT`
/// printed its `sig`). Item 7: it documents 126 and 127.
#[test]
fn help_hides_values_and_lists_every_exit_code() {
    let o = azmutex(
        &[
            (
                "AZURE_STORAGE_SERVICE_ENDPOINT",
                "https://a.blob.core.windows.net/?sv=1&sig=SIGSECRET1",
            ),
            ("AZURE_STORAGE_ACCOUNT", "ACCTSECRET1"),
            ("AZURE_STORAGE_KEY", KEY),
        ],
        &["--help"],
    );
    assert_eq!(o.status.code(), Some(0));
    let help = text(&o);
    assert!(!help.contains("SIGSECRET1") && !help.contains("ACCTSECRET1"), "{help}");
    assert_no_key(&help, "--help");
    for code in ["75", "70", "69", "77", "78", "126", "127", "2 ", "1 "] {
        assert!(
            help.contains(&format!("\n  {code}")),
            "exit code {code} missing:\n{help}"
        );
    }
}

/// Item 7: an empty connection string is a configuration error, never development storage;
/// `--timeout 0` is refused.
#[test]
fn empty_configuration_and_zero_timeout_are_refused() {
    for var in [
        "AZURE_STORAGE_CONNECTION_STRING",
        "AZURE_STORAGE_ACCOUNT",
        "AZURE_STORAGE_KEY",
        "AZURE_STORAGE_SAS_TOKEN",
        "AZURE_STORAGE_SERVICE_ENDPOINT",
    ] {
        let o = azmutex(&[(var, "")], &["--timeout", "1s", "status", "x"]);
        assert_eq!(o.status.code(), Some(78), "{var}: {}", text(&o));
        assert!(text(&o).contains("set but empty"), "{}", text(&o));
        assert!(!text(&o).contains("development storage;"), "{}", text(&o));
    }
    let o = azmutex(&[], &["--connection-string", "", "status", "x"]);
    assert_eq!(o.status.code(), Some(78), "{}", text(&o));
    for t in ["0", "0s", "0ms"] {
        let o = azmutex(&[], &["--timeout", t, "status", "x"]);
        assert_eq!(o.status.code(), Some(2), "{t}: {}", text(&o));
    }
}

/// Items 1 and 5: a lock blob whose holder record has a huge `azmutexsince` and an owner full
/// of terminal escapes: `status` exits 0 and prints no control character.
#[test]
fn status_survives_a_hostile_holder_record() {
    let container = common::unique("hostile-status");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let lease = rt.block_on(async {
        let holder = Holder {
            owner: Some("\u{1b}]0;owned\u{7}\u{1b}[2J\u{9b}31m job\u{202e}".into()),
            host: Some("h\u{1b}[1A".into()),
            pid: Some(1),
        };
        let mutex = AzureMutex::builder(common::config(), &container)
            .client_options(common::fast_options())
            .holder(holder)
            .build()
            .unwrap();
        let lease = mutex.acquire("job", LeaseDuration::seconds(60).unwrap()).await.unwrap();
        let info = mutex.inspect("job").await.unwrap();
        let mut req = RestRequest::new("set-metadata", Method::PUT, &container, Some("job"))
            .query("comp", "metadata")
            .header("x-ms-lease-id", lease.id().to_string())
            .header("x-ms-meta-azmutexsince", "18446744073709551615");
        for (k, v) in info.metadata.iter().filter(|(k, _)| k.as_str() != "azmutexsince") {
            req = req.header_owned(&format!("x-ms-meta-{k}"), v.clone()).unwrap();
        }
        let resp = mutex
            .client()
            .send(&req, mutex.client().default_deadline())
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        lease
    });
    let cs = common::service().connection_string.clone();
    for json in [false, true] {
        let mut args = vec!["--container", container.as_str(), "status", "job"];
        if json {
            args.push("--json");
        }
        let o = azmutex(&[("AZURE_STORAGE_CONNECTION_STRING", &cs)], &args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let out = String::from_utf8(o.stdout.clone()).unwrap();
        assert!(
            !out.chars().any(|c| c != '\n' && azmutex::error::is_unsafe_char(c)),
            "{out:?}"
        );
        assert!(out.contains("job"), "{out}");
    }
    // The "waiting for" line of a `run` that waits names the same holder, inertly.
    let o = azmutex(
        &[("AZURE_STORAGE_CONNECTION_STRING", &cs)],
        &[
            "--container",
            container.as_str(),
            "run",
            "job",
            "--wait",
            "1s",
            "--",
            "true",
        ],
    );
    assert_eq!(o.status.code(), Some(75), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(err.contains("waiting for lock"), "{err}");
    assert!(
        !err.chars().any(|c| c != '\n' && azmutex::error::is_unsafe_char(c)),
        "{err:?}"
    );
    drop(lease);
}

/// Item 4: an untrusted certificate exits 78 at once, naming the problem and the fix.
#[test]
fn untrusted_certificate_exits_78_within_2s() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = std::sync::Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into()),
            )
            .unwrap(),
    );
    std::thread::spawn(move || {
        for mut tcp in listener.incoming().flatten() {
            let Ok(mut tls) = rustls::ServerConnection::new(config.clone()) else {
                return;
            };
            while tls.is_handshaking() {
                if tls.complete_io(&mut tcp).is_err() {
                    break;
                }
            }
        }
    });
    let cs = format!(
        "AccountName=devstoreaccount1;AccountKey={};BlobEndpoint=https://localhost:{port}/devstoreaccount1",
        common::DEV_KEY
    );
    let started = Instant::now();
    let o = azmutex(
        &[("AZURE_STORAGE_CONNECTION_STRING", &cs)],
        &["--timeout", "30s", "acquire", "job"],
    );
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(78), "{}", text(&o));
    assert!(took < Duration::from_secs(2), "{took:?}");
    let msg = text(&o);
    assert!(
        msg.contains("unknown (untrusted) CA") && msg.contains("--ca-cert"),
        "{msg}"
    );
}

/// Item 3: a server streaming an endless body: the CLI exits within `--timeout`.
#[test]
fn endless_body_exits_within_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf);
                let _ = c.write_all(b"HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\n\r\n");
                let chunk = vec![b'x'; 64 * 1024];
                let started = Instant::now();
                while started.elapsed() < Duration::from_secs(20) && c.write_all(&chunk).is_ok() {}
            });
        }
    });
    let cs = format!(
        "AccountName=devstoreaccount1;AccountKey={};BlobEndpoint=http://{addr}/devstoreaccount1",
        common::DEV_KEY
    );
    let started = Instant::now();
    let o = azmutex(
        &[("AZURE_STORAGE_CONNECTION_STRING", &cs)],
        &["--timeout", "3s", "status", "job"],
    );
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(69), "{}", text(&o));
    assert!(took < Duration::from_secs(4), "{took:?}");
    // `run` too: giving up, cleanup included, fits in --timeout (it used to take twice it).
    let started = Instant::now();
    let o = azmutex(
        &[("AZURE_STORAGE_CONNECTION_STRING", &cs)],
        &["--timeout", "3s", "run", "job", "--", "true"],
    );
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(69), "{}", text(&o));
    assert!(took < Duration::from_secs(4), "run took {took:?}");
}
