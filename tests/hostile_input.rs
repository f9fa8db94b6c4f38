//! Issue 17: hostile input at the new surfaces: files named in the configuration (certificate
//! directories, special files), a machine without CA roots, `az` that misbehaves, endpoints that
//! answer badly. Everything on loopback; the instance metadata address is never probed (every
//! CLI run points `AZURE_POD_IDENTITY_AUTHORITY_HOST` at loopback port 1 and has no `az`
//! unless a fake one is given).
#![cfg(all(feature = "cli", feature = "entra"))]

mod common;
#[path = "common/token_server.rs"]
mod token_server;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> String {
    std::env::var("AZMUTEX_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_azmutex").to_string())
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(common::unique(name));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// What a run gave: exit code, output, wall time and the child's own peak RSS (bytes).
struct Ran {
    code: Option<i32>,
    out: String,
    elapsed: Duration,
    max_rss: u64,
}

/// Runs `azmutex` with a clean environment plus `env`, killed after `limit`; measures the
/// child's peak RSS with `wait4` (its own, not this process's other children).
fn run(env: &[(&str, String)], args: &[&str], limit: Duration) -> Ran {
    let dir = scratch("azmutex-hostile-out");
    let (out_path, err_path) = (dir.join("out"), dir.join("err"));
    let mut c = Command::new(bin());
    c.env_clear()
        .env("PATH", scratch("azmutex-hostile-empty"))
        .env("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:1");
    for (k, v) in env {
        c.env(k, v);
    }
    c.args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    let started = Instant::now();
    let child = c.spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let killer = std::thread::spawn(move || {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
            // Still running? (signal 0 checks; a reaped pid is gone.)
            if unsafe { libc::kill(pid, 0) } != 0 {
                return;
            }
        }
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid);
    let elapsed = started.elapsed();
    let _ = killer.join();
    std::mem::forget(child);
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    let out = format!(
        "status {code:?} after {elapsed:?}\nstdout: {}\nstderr: {}",
        std::fs::read_to_string(&out_path).unwrap_or_default(),
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
    Ran {
        code,
        out,
        elapsed,
        max_rss: usage.ru_maxrss as u64 * 1024,
    }
}

/// A connection string for the local (http) Azurite.
fn azurite_env() -> Vec<(&'static str, String)> {
    vec![(
        "AZURE_STORAGE_CONNECTION_STRING",
        common::service().connection_string.clone(),
    )]
}

/// `status` against a local TLS server (a certificate from a fresh test CA that nothing trusts)
/// with a key and the `SSL_CERT_*` setting `cert_var`: an https endpoint, so that the system's
/// roots are read (an http one reads none).
fn status_over_tls(pki_dir: &str, cert_var: (&'static str, String), limit: Duration) -> Ran {
    let pki = token_server::make_pki(scratch(pki_dir));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(token_server::TokenServer::start(
        Some((&pki.cert_pem, &pki.key_pem)),
        3600,
    ));
    let env = vec![cert_var, ("AZURE_STORAGE_KEY", common::DEV_KEY.to_string())];
    let url = format!("{}/devstoreaccount1", server.base);
    run(
        &env,
        &[
            "--account-url",
            &url,
            "--account-name",
            "devstoreaccount1",
            "--timeout",
            "3s",
            "status",
            "job",
        ],
        limit,
    )
}

fn sparse(path: &Path, len: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(len).unwrap();
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

// ---------------------------------------------------------------------------------------------
// 4. Files: regular files only, size caps, nothing blocks, read once
// ---------------------------------------------------------------------------------------------

/// Promise: a huge (sparse) file in `SSL_CERT_DIR` costs neither memory nor time: it is
/// skipped (more than 10 MiB), and the run works. On 5136815 every byte was read into memory
/// (a 3 GiB file: 3.15 GB and 14 s), once for every HTTP client built.
#[test]
fn a_huge_file_in_ssl_cert_dir_is_skipped_not_read() {
    let dir = scratch("azmutex-hostile-certdir");
    // Named like an OpenSSL hash link, as the platform verifier's reader wants.
    sparse(&dir.join("5ad8a5d6.0"), 768 * 1024 * 1024);
    std::fs::copy("/etc/ssl/certs/ca-certificates.crt", dir.join("3513523f.0")).ok();
    // An https endpoint, so that the roots are read (an http one reads none): a local TLS
    // server whose CA is not in the directory, so the handshake fails as untrusted (78) after
    // the directory was read.
    let r = status_over_tls(
        "azmutex-hostile-certdir-pki",
        ("SSL_CERT_DIR", dir.display().to_string()),
        Duration::from_secs(60),
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(r.code, Some(78), "{}", r.out);
    assert!(
        r.out.contains("--ca-cert"),
        "untrusted, after reading the roots: {}",
        r.out
    );
    assert!(
        r.max_rss < 100 * 1024 * 1024,
        "peak RSS {} MB: {}",
        r.max_rss / (1024 * 1024),
        r.out
    );
    assert!(r.elapsed < Duration::from_secs(10), "{}", r.out);
}

/// Promise: special files in the certificate directory, as `SSL_CERT_FILE` or `--ca-cert` are
/// refused or skipped, never opened for reading: nothing blocks.
#[test]
fn special_files_named_for_certificates_never_block() {
    let dir = scratch("azmutex-hostile-fifo");
    mkfifo(&dir.join("00000000.0"));
    mkfifo(&dir.join("fifo.pem"));
    std::fs::copy("/etc/ssl/certs/ca-certificates.crt", dir.join("3513523f.0")).ok();
    let container = common::unique("hostile-fifo");
    // In SSL_CERT_DIR: skipped.
    let mut env = azurite_env();
    env.push(("SSL_CERT_DIR", dir.display().to_string()));
    let r = run(
        &env,
        &["--container", &container, "status", "job"],
        Duration::from_secs(30),
    );
    assert_eq!(r.code, Some(0), "{}", r.out);
    // As SSL_CERT_FILE, for an https endpoint: refused (78), naming the problem. (For an http
    // endpoint it is not read at all: `http_endpoints_read_no_certificate_file`.)
    let r = status_over_tls(
        "azmutex-hostile-fifo-pki",
        ("SSL_CERT_FILE", dir.join("fifo.pem").display().to_string()),
        Duration::from_secs(30),
    );
    assert_eq!(r.code, Some(78), "{}", r.out);
    assert!(r.out.contains("not a regular file"), "{}", r.out);
    // As --ca-cert: refused (78) whatever the endpoint, as the user named it.
    let fifo = dir.join("fifo.pem").display().to_string();
    for file in [fifo.as_str(), "/dev/zero", "/dev/stdin", "/proc/self/fd/0"] {
        let r = run(
            &azurite_env(),
            &["--container", &container, "--ca-cert", file, "status", "job"],
            Duration::from_secs(30),
        );
        assert_eq!(r.code, Some(78), "{file}: {}", r.out);
        assert!(r.elapsed < Duration::from_secs(10), "{file}: {}", r.out);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Promise (issue 23): a client for an `http://` endpoint reads no certificate file: with
/// `SSL_CERT_FILE` naming a FIFO (which any read would refuse, 78) and `SSL_CERT_DIR` naming a
/// directory that is not there, `status` works. On bc85010 the system's roots were read for
/// every client, `http://` or not (4 ms of a 9 ms command), and this exited 78.
#[test]
fn http_endpoints_read_no_certificate_file() {
    let dir = scratch("azmutex-hostile-nocerts");
    mkfifo(&dir.join("fifo.pem"));
    let mut env = azurite_env();
    env.push(("SSL_CERT_FILE", dir.join("fifo.pem").display().to_string()));
    env.push(("SSL_CERT_DIR", dir.join("missing").display().to_string()));
    let container = common::unique("hostile-nocerts");
    let r = run(
        &env,
        &["--container", &container, "status", "job"],
        Duration::from_secs(30),
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(r.code, Some(0), "{}", r.out);
    assert!(!r.out.contains("CA certificates"), "{}", r.out);
}

/// Promise (issue 23): with the endpoint's CA named (`--ca-cert`), an `https://` endpoint reads
/// no system certificate file, and trusts exactly as before: the system's roots are read, once,
/// only for a server the named certificates do not vouch for. On 7cb9ecd they were read first
/// (the FIFO below as `SSL_CERT_FILE`: 78 before the first request).
#[test]
fn a_named_ca_that_vouches_for_the_server_reads_no_system_certificate() {
    let pki = token_server::make_pki(scratch("azmutex-hostile-named-pki"));
    let other = token_server::make_pki(scratch("azmutex-hostile-other-pki"));
    let (cert, key) = (pki.dir.join("cert.pem"), pki.dir.join("key.pem"));
    let azurite = common::start_azurite(
        "https",
        &["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()],
    );
    let files = scratch("azmutex-hostile-named-files");
    mkfifo(&files.join("fifo.pem"));
    let fifo = files.join("fifo.pem").display().to_string();
    let (ours, theirs) = (
        pki.dir.join("ca.pem").display().to_string(),
        other.dir.join("ca.pem").display().to_string(),
    );
    let container = common::unique("hostile-named");
    let status = |system_file: &str, named: &str| {
        let env = vec![
            ("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string.clone()),
            ("SSL_CERT_FILE", system_file.to_string()),
            ("SSL_CERT_DIR", files.join("missing").display().to_string()),
        ];
        run(
            &env,
            &["--ca-cert", named, "--container", &container, "status", "job"],
            Duration::from_secs(30),
        )
    };
    // The named CA vouches for the server: the system's roots (a FIFO) are never opened.
    let r = status(&fifo, &ours);
    assert_eq!(r.code, Some(0), "{}", r.out);
    // Another CA named; the system's roots (SSL_CERT_FILE: the server's CA) vouch: trusted.
    let r = status(&ours, &theirs);
    assert_eq!(r.code, Some(0), "{}", r.out);
    // Neither vouches: untrusted (78, with the hint).
    let r = status(&theirs, &theirs);
    assert_eq!(r.code, Some(78), "{}", r.out);
    assert!(r.out.contains("--ca-cert"), "{}", r.out);
    // Not vouched for by the named CA, and the system's roots cannot be read: refused (78),
    // naming the file's problem.
    let r = status(&fifo, &theirs);
    assert_eq!(r.code, Some(78), "{}", r.out);
    assert!(r.out.contains("not a regular file"), "{}", r.out);
    for dir in [&pki.dir, &other.dir, &files] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Promise (medium item): a machine with no CA roots at all still reaches `http://` endpoints;
/// `https://` ones fail as untrusted (78, with the --ca-cert hint), not "unexpected error". On
/// 5136815 building any HTTP client failed ("No CA certificates were loaded from the system").
#[test]
fn no_ca_roots_still_reaches_http_endpoints() {
    let empty = scratch("azmutex-hostile-noroots");
    let mut env = azurite_env();
    env.push(("SSL_CERT_DIR", empty.display().to_string()));
    let container = common::unique("hostile-noroots");
    let r = run(
        &env,
        &["--container", &container, "status", "job"],
        Duration::from_secs(30),
    );
    assert_eq!(r.code, Some(0), "{}", r.out);
    // An https endpoint (a local TLS listener) is untrusted.
    let r = status_over_tls(
        "azmutex-hostile-pki",
        ("SSL_CERT_DIR", empty.display().to_string()),
        Duration::from_secs(30),
    );
    assert_eq!(r.code, Some(78), "{}", r.out);
    assert!(
        r.out.contains("--ca-cert") && !r.out.contains("unexpected"),
        "{}",
        r.out
    );
}

// ---------------------------------------------------------------------------------------------
// Medium items
// ---------------------------------------------------------------------------------------------

/// Promise: Entra ID configuration errors are configuration errors (78), found before any
/// token request or `az` run: a set-but-empty `AZURE_CLIENT_SECRET` (on 5136815 the chain
/// moved on silently to the developer's `az` login), an empty `IDENTITY_HEADER`, a federated
/// token file that is a directory (on 5136815: 77 with a key/SAS hint), `user:pass@` in
/// `AZURE_AUTHORITY_HOST` (accepted on 5136815).
#[test]
fn token_configuration_errors_exit_78_before_any_token_request() {
    let az_dir = scratch("azmutex-hostile-az");
    token_server::fake_az(&az_dir, 3600, true, true);
    let token_dir = scratch("azmutex-hostile-tokendir");
    let base = |extra: &[(&'static str, String)]| {
        let mut env = vec![
            ("PATH", az_dir.display().to_string()),
            ("AZURE_STORAGE_SERVICE_ENDPOINT", "https://localhost:1/acct".to_string()),
            ("AZURE_TENANT_ID", token_server::TENANT.to_string()),
            ("AZURE_CLIENT_ID", token_server::CLIENT_ID.to_string()),
            ("AZURE_AUTHORITY_HOST", "https://localhost:1".to_string()),
        ];
        env.extend(extra.iter().cloned());
        env
    };
    for (name, env, args, expect) in [
        (
            "empty AZURE_CLIENT_SECRET",
            base(&[("AZURE_CLIENT_SECRET", String::new())]),
            vec!["status", "job"],
            "AZURE_CLIENT_SECRET",
        ),
        (
            "empty IDENTITY_HEADER",
            base(&[
                ("IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi/token".to_string()),
                ("IDENTITY_HEADER", " ".to_string()),
            ]),
            vec!["--auth", "managed-identity", "status", "job"],
            "IDENTITY_HEADER",
        ),
        (
            "federated token file is a directory",
            base(&[("AZURE_FEDERATED_TOKEN_FILE", token_dir.display().to_string())]),
            vec!["--auth", "workload-identity", "--timeout", "5s", "status", "job"],
            "not a regular file",
        ),
        (
            "user:pass@ in AZURE_AUTHORITY_HOST",
            base(&[
                ("AZURE_CLIENT_SECRET", "x".to_string()),
                (
                    "AZURE_AUTHORITY_HOST",
                    "https://u:Hunter2Secret@localhost:1".to_string(),
                ),
            ]),
            vec!["--auth", "client-secret", "status", "job"],
            "user:password@",
        ),
    ] {
        let r = run(&env, &args, Duration::from_secs(30));
        assert_eq!(r.code, Some(78), "{name}: {}", r.out);
        assert!(r.out.contains(expect), "{name}: {}", r.out);
        assert!(!r.out.contains("Hunter2Secret"), "{name}: {}", r.out);
        assert!(!az_dir.join("az.calls").exists(), "{name}: `az` was run: {}", r.out);
    }
}

/// Promise: `az` is waited for, not the pipes it leaves open: an `az` whose child keeps stdout
/// open gives its token at once (on 5136815 every such run failed after 30 s), and nothing `az`
/// started outlives the request.
#[test]
fn az_children_neither_hold_up_the_token_nor_outlive_it() {
    let (pki, service) = token_server::https_oauth_azurite();
    let dir = scratch("azmutex-hostile-az-child");
    let az = token_server::fake_az(&dir, 3600, true, true);
    // The same fake `az`, but it first leaves a child behind holding stdout and stderr open.
    let script = std::fs::read_to_string(&az).unwrap();
    let script = script.replacen("#!/bin/sh\n", "#!/bin/sh\nsleep 300 &\necho $! > \"$0.child\"\n", 1);
    std::fs::write(&az, script).unwrap();
    let env = vec![
        ("PATH", format!("{}:/usr/bin:/bin", dir.display())),
        ("AZURE_STORAGE_SERVICE_ENDPOINT", service.endpoint.clone()),
    ];
    let ca = pki.dir.join("ca.pem").display().to_string();
    let container = common::unique("hostile-az");
    let r = run(
        &env,
        &[
            "--container",
            &container,
            "--ca-cert",
            &ca,
            "--auth",
            "azure-cli",
            "status",
            "job",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(r.code, Some(0), "{}", r.out);
    assert!(r.elapsed < Duration::from_secs(15), "{}", r.out);
    let child: i32 = std::fs::read_to_string(dir.join("az.child"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // Alive: present and not a zombie (a killed child waits for its new parent to reap it).
    let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .map(|(_, r)| r.trim_start().chars().next())
        .unwrap_or_default();
    let alive = state.is_some_and(|c| c != 'Z' && c != 'X');
    if alive {
        unsafe { libc::kill(child, libc::SIGKILL) };
    }
    assert!(!alive, "az's child {child} outlived azmutex");
}

/// A loopback HTTP server answering every request with `status` and a Blob error body (on
/// threads; lives as long as the test process).
fn always(status: u16, code: &'static str) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let header = if code == "InvalidHeaderValue" {
                    "<HeaderName>x-ms-version</HeaderName>"
                } else {
                    ""
                };
                let body = format!(
                    "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>busy</Message>{header}</Error>"
                );
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nx-ms-error-code: {code}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    port
}

/// Promise: after many 500/503 answers, the give-up message counts the attempts and names the
/// last service answer. On 5136815 `run` and `acquire --wait` (which retry with calls of their
/// own) ended with "gave up after 1 attempts (request timed out)": the last call had no time
/// left to send anything.
#[test]
fn the_give_up_message_counts_attempts_and_names_the_last_answer() {
    for (status, code) in [(503, "ServerBusy"), (500, "InternalError")] {
        let port = always(status, code);
        let env = vec![(
            "AZURE_STORAGE_CONNECTION_STRING",
            format!(
                "AccountName=acct;AccountKey={};BlobEndpoint=http://127.0.0.1:{port}/acct",
                common::DEV_KEY
            ),
        )];
        for args in [
            &["--timeout", "3s", "run", "job", "--", "true"][..],
            &["--timeout", "3s", "acquire", "--wait", "5s", "job"],
        ] {
            let r = run(&env, args, Duration::from_secs(30));
            assert_eq!(r.code, Some(69), "{args:?}: {}", r.out);
            assert!(
                r.out.contains(&format!("HTTP {status} {code}")) && !r.out.contains("request timed out"),
                "{args:?}: {}",
                r.out
            );
            let attempts: u32 = r
                .out
                .split("gave up after ")
                .nth(1)
                .and_then(|t| t.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            assert!(attempts >= 2, "{args:?}: {}", r.out);
        }
    }
}

/// Promise: a proxy that refuses the tunnel is named (without its credentials) with the status
/// its CONNECT answered, and the hint points at the proxy. On 5136815 the failure read as the
/// storage endpoint's ("tunnel error: unsuccessful", check the endpoint URL).
#[test]
fn a_proxy_refusing_the_tunnel_is_named_with_its_status() {
    let port = always(403, "Forbidden");
    let env = vec![
        ("HTTPS_PROXY", format!("http://ci:Pw0rdSecret77@127.0.0.1:{port}")),
        ("AZURE_STORAGE_ACCOUNT", "acct".to_string()),
        ("AZURE_STORAGE_KEY", common::DEV_KEY.to_string()),
    ];
    let r = run(&env, &["--timeout", "3s", "status", "job"], Duration::from_secs(30));
    assert_eq!(r.code, Some(69), "{}", r.out);
    assert!(
        r.out.contains(&format!("127.0.0.1:{port}")) && r.out.contains("CONNECT answered HTTP 403"),
        "{}",
        r.out
    );
    assert!(r.out.contains("the proxy is failing"), "{}", r.out);
    assert!(!r.out.contains("Pw0rdSecret77"), "{}", r.out);
    // Token requests through it: the same.
    let env = vec![
        ("HTTPS_PROXY", format!("http://ci:Pw0rdSecret77@127.0.0.1:{port}")),
        ("AZURE_STORAGE_ACCOUNT", "acct".to_string()),
        ("AZURE_TENANT_ID", token_server::TENANT.to_string()),
        ("AZURE_CLIENT_ID", token_server::CLIENT_ID.to_string()),
        ("AZURE_CLIENT_SECRET", "Q7x8Q~aBcD3.eFgH4_iJkL5".to_string()),
    ];
    let r = run(
        &env,
        &["--auth", "client-secret", "--timeout", "3s", "status", "job"],
        Duration::from_secs(30),
    );
    assert_eq!(r.code, Some(69), "{}", r.out);
    assert!(
        r.out.contains("token endpoint (CONNECT answered HTTP 403)") && r.out.contains("the proxy is failing"),
        "{}",
        r.out
    );
    assert!(
        !r.out.contains("Pw0rdSecret77") && !r.out.contains("eFgH4"),
        "{}",
        r.out
    );
}

/// Promise: when the endpoint refuses both service versions (or the pinned one), the error says
/// so and names `--api-version` (exit 1, as tests/stack_hub.rs has it for a pinned version). On
/// 5136815: "unexpected response: HTTP 400 InvalidHeaderValue" and nothing more.
#[test]
fn both_service_versions_refused_names_api_version() {
    let port = always(400, "InvalidHeaderValue");
    let env = vec![(
        "AZURE_STORAGE_CONNECTION_STRING",
        format!(
            "AccountName=acct;AccountKey={};BlobEndpoint=http://127.0.0.1:{port}/acct",
            common::DEV_KEY
        ),
    )];
    for args in [
        &["--timeout", "3s", "status", "job"][..],
        &["--timeout", "3s", "acquire", "job"],
        &["--timeout", "3s", "--api-version", "2020-04-08", "status", "job"],
    ] {
        let r = run(&env, args, Duration::from_secs(30));
        assert_eq!(r.code, Some(1), "{args:?}: {}", r.out);
        assert!(r.out.contains("--api-version"), "{args:?}: {}", r.out);
    }
}

/// Promise: the certificate roots are read once per process, not for every HTTP client built:
/// a second client still trusts a CA from `SSL_CERT_DIR` after the directory is gone. On
/// 5136815 every client re-read the directory (the second client found no roots at all).
#[test]
fn certificate_roots_are_read_once_per_process() {
    use azmutex::rest::{BlobClient, RestRequest};
    use azmutex::{ClientOptions, StorageConfig};
    let pki = token_server::make_pki(scratch("azmutex-hostile-once-pki"));
    let dir = scratch("azmutex-hostile-once");
    std::fs::write(dir.join("test-ca.pem"), &pki.ca_pem).unwrap();
    // Only this test builds HTTP clients in this process (the others run the CLI with a
    // cleared environment), so the variable reaches no one else.
    std::env::set_var("SSL_CERT_DIR", &dir);
    std::env::remove_var("SSL_CERT_FILE");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(token_server::TokenServer::start(
        Some((&pki.cert_pem, &pki.key_pem)),
        3600,
    ));
    let config = StorageConfig::parse_connection_string(&format!(
        "AccountName=acct;AccountKey={};BlobEndpoint={}/acct",
        common::DEV_KEY,
        server.base
    ))
    .unwrap();
    let head = |client: &BlobClient| {
        let req = RestRequest::new("head", reqwest::Method::HEAD, "c", Some("b"));
        rt.block_on(client.send(&req, Instant::now() + Duration::from_secs(5)))
            .map(|r| r.status)
    };
    let first = BlobClient::new(&config, ClientOptions::default()).unwrap();
    assert!(head(&first).is_ok(), "{:?}", head(&first));
    std::fs::remove_dir_all(&dir).unwrap();
    let second = BlobClient::new(&config, ClientOptions::default());
    std::env::remove_var("SSL_CERT_DIR");
    let second = second.expect("a second client without re-reading the roots");
    let answer = head(&second);
    assert!(answer.is_ok(), "the second client re-read the roots: {answer:?}");
}
