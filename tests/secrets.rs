//! Issue 17: secrets at the new surfaces (Entra ID, certificates, proxies). Bearer tokens never
//! go over plain `http://`; token requests and Blob requests never follow redirects; no secret
//! a user can mistype reaches any output. Everything on loopback: fake token endpoints, fake
//! `az`, scripted servers; the instance metadata address is never probed (the override
//! variables point at loopback in every CLI run).
#![cfg(all(feature = "cli", feature = "entra"))]

mod common;
#[path = "common/token_server.rs"]
mod token_server;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Output;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use azmutex::auth::entra::EntraCredential;
use azmutex::rest::{BlobClient, RestRequest};
use azmutex::{ClientOptions, Credential, StorageConfig, TokenProvider};
use token_server::{TokenServer, CLIENT_ID, IDENTITY_HEADER, SECRET, TENANT};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A PKI for HTTPS test endpoints (`localhost`), made once per test binary.
fn pki() -> &'static token_server::Pki {
    static PKI: OnceLock<token_server::Pki> = OnceLock::new();
    PKI.get_or_init(|| token_server::make_pki(std::env::temp_dir().join(common::unique("azmutex-secrets-pki"))))
}

fn trusting() -> ClientOptions {
    let mut o = ClientOptions::default();
    o.ca_certificates_pem.push(pki().ca_pem.clone().into_bytes());
    o.retry.call_timeout = Duration::from_secs(5);
    o
}

/// A scripted HTTP(S) endpoint on loopback: every request (head and body) is recorded and
/// answered with whatever raw HTTP/1.1 response `answer` returns.
struct Scripted {
    base: String,
    port: u16,
    seen: Mutex<Vec<String>>,
}

type AnswerFn = Arc<dyn Fn(&str) -> String + Send + Sync>;

impl Scripted {
    async fn start(tls: bool, answer: impl Fn(&str) -> String + Send + Sync + 'static) -> Arc<Scripted> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let base = if tls {
            format!("https://localhost:{port}")
        } else {
            format!("http://127.0.0.1:{port}")
        };
        let me = Arc::new(Scripted {
            base,
            port,
            seen: Mutex::new(Vec::new()),
        });
        let answer: AnswerFn = Arc::new(answer);
        let acceptor = tls.then(|| {
            use rustls::pki_types::pem::PemObject as _;
            let certs = rustls::pki_types::CertificateDer::pem_slice_iter(pki().cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(pki().key_pem.as_bytes()).unwrap();
            let config =
                rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_no_client_auth()
                    .with_single_cert(certs, key)
                    .unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let me2 = me.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let me = me2.clone();
                let answer = answer.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        Some(a) => {
                            if let Ok(s) = a.accept(stream).await {
                                me.serve(s, answer).await;
                            }
                        }
                        None => me.serve(stream, answer).await,
                    }
                });
            }
        });
        me
    }

    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(&self, mut stream: S, answer: AnswerFn) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            let Ok(n) = stream.read(&mut chunk).await else { return };
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let length: usize = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let Ok(n) = stream.read(&mut chunk).await else { return };
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let request = String::from_utf8_lossy(&buf).to_string();
        self.seen.lock().unwrap().push(request.clone());
        let response = answer(&request);
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// A raw HTTP/1.1 response.
fn response(status: u16, headers: &[(&str, &str)], body: &str) -> String {
    let mut r = format!("HTTP/1.1 {status} X\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    r
}

fn bin() -> String {
    std::env::var("AZMUTEX_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_azmutex").to_string())
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(common::unique(name));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A directory with nothing in it, for `PATH` (no `az`).
fn empty_dir() -> PathBuf {
    scratch("azmutex-secrets-empty")
}

/// The environment every CLI run starts from: nothing but a `PATH` without `az`, and the
/// instance metadata override pointing at a loopback port nobody listens on (port 1).
fn base_env() -> Vec<(String, String)> {
    vec![
        ("PATH".into(), empty_dir().display().to_string()),
        ("AZURE_POD_IDENTITY_AUTHORITY_HOST".into(), "http://127.0.0.1:1".into()),
    ]
}

/// Runs `azmutex` with exactly `env` (plus `base_env`), bounded to 60 s.
async fn azmutex(env: &[(String, String)], args: &[String]) -> Output {
    let mut c = tokio::process::Command::new(bin());
    c.env_clear();
    for (k, v) in base_env().into_iter().chain(env.iter().cloned()) {
        c.env(k, v);
    }
    c.args(args).stdin(std::process::Stdio::null()).kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(60), c.output())
        .await
        .expect("azmutex finished within 60 s")
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn s(v: &str) -> String {
    v.to_string()
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|a| a.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// 1. A bearer token never goes over plain http://
// ---------------------------------------------------------------------------------------------

/// Promise: Entra ID with an `http://` account URL is a configuration error (78) before any
/// token request. On 5136815 each kind asked for a token and sent `Authorization: Bearer` in
/// clear text to the endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_are_refused_over_plain_http_before_any_token_request() {
    let storage = Scripted::start(false, |_| response(200, &[], "")).await;
    let https_token = TokenServer::start(Some((&pki().cert_pem, &pki().key_pem)), 3600).await;
    let local_token = TokenServer::start(None, 3600).await;
    let az_dir = scratch("azmutex-secrets-az");
    token_server::fake_az(&az_dir, 3600, true, true);
    let ca = pki().dir.join("ca.pem").display().to_string();
    let url = format!("http://127.0.0.1:{}/acct", storage.port);
    let secret_env = vec![
        (s("AZURE_TENANT_ID"), s(TENANT)),
        (s("AZURE_CLIENT_ID"), s(CLIENT_ID)),
        (s("AZURE_CLIENT_SECRET"), s(SECRET)),
        (s("AZURE_AUTHORITY_HOST"), https_token.base.clone()),
    ];
    let mi_env = vec![
        (s("IDENTITY_ENDPOINT"), format!("{}/msi/token", local_token.base)),
        (s("IDENTITY_HEADER"), s(IDENTITY_HEADER)),
    ];
    let az_env = vec![(s("PATH"), az_dir.display().to_string())];
    for (auth, env) in [
        ("managed-identity", &mi_env),
        ("client-secret", &secret_env),
        ("azure-cli", &az_env),
        ("auto", &secret_env),
        ("auto", &mi_env),
    ] {
        for how in ["flag", "variable", "upper-case"] {
            let mut env = env.clone();
            let mut a = args(&["--ca-cert", &ca, "--auth", auth]);
            match how {
                "flag" => a.extend(args(&["--account-url", &url])),
                "variable" => env.push((s("AZURE_STORAGE_SERVICE_ENDPOINT"), url.clone())),
                _ => {
                    // (An account name alone gives https: only a URL can be http.)
                    a.extend(args(&["--account-url", &url.replace("http://", "HTTP://")]));
                }
            }
            a.extend(args(&["status", "job"]));
            let o = azmutex(&env, &a).await;
            let t = text(&o);
            assert_eq!(o.status.code(), Some(78), "{auth} {how}: {t}");
            assert!(t.contains("http://") && t.contains("https://"), "{auth} {how}: {t}");
        }
    }
    assert_eq!(https_token.requests(), 0, "no token was asked for");
    assert_eq!(local_token.requests(), 0, "no token was asked for");
    assert!(!az_dir.join("az.calls").exists(), "`az` was not run");
    assert!(
        storage.seen().is_empty(),
        "nothing reached the endpoint: {:?}",
        storage.seen()
    );
}

/// The library's constructors: `StorageConfig::entra` refuses `http://`; `StorageConfig::new`
/// with a caller's provider refuses it too, except on loopback (a local emulator).
#[test]
fn library_bearer_configurations_refuse_plain_http() {
    let credential = EntraCredential::builder()
        .vars(|_| None)
        .azure_cli_command("/nonexistent/az")
        .azure_cli()
        .unwrap();
    let err = StorageConfig::entra("http://acct.blob.core.windows.net", credential.clone()).unwrap_err();
    assert!(err.to_string().contains("http://"), "{err}");
    assert!(StorageConfig::entra("https://acct.blob.core.windows.net", credential.clone()).is_ok());
    let provider: Arc<dyn TokenProvider> = Arc::new(credential);
    let err = StorageConfig::new(
        "http://acct.blob.core.windows.net",
        Credential::Bearer(provider.clone()),
    )
    .unwrap_err();
    assert!(err.to_string().contains("http://"), "{err}");
    assert!(StorageConfig::new("http://127.0.0.1:10000/acct", Credential::Bearer(provider)).is_ok());
}

// ---------------------------------------------------------------------------------------------
// 2. No redirects: token requests and Blob requests
// ---------------------------------------------------------------------------------------------

/// Promise: a token endpoint's redirect is a refusal naming the status; the request (client
/// secret, identity header) never goes where `Location` says. On 5136815 reqwest followed it:
/// the secret was re-posted to the other server and the identity header forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_requests_never_follow_redirects() {
    for status in [301u16, 302, 303, 307, 308] {
        // Client secret: https endpoint redirecting to another https endpoint.
        let sink = Scripted::start(true, |_| response(200, &[], "{}")).await;
        let location = format!("{}/elsewhere", sink.base);
        let redirecting =
            Scripted::start(true, move |_| response(status, &[("Location", location.as_str())], "")).await;
        let vars: HashMap<&str, String> = HashMap::from([
            ("AZURE_TENANT_ID", s(TENANT)),
            ("AZURE_CLIENT_ID", s(CLIENT_ID)),
            ("AZURE_CLIENT_SECRET", s(SECRET)),
            ("AZURE_AUTHORITY_HOST", redirecting.base.clone()),
        ]);
        let credential = EntraCredential::builder()
            .client_options(&trusting())
            .vars(move |n| vars.get(n).cloned())
            .client_secret_credential()
            .unwrap();
        let err = credential.token().await.unwrap_err().to_string();
        assert!(err.contains(&status.to_string()) && err.contains("redirect"), "{err}");
        assert!(!err.contains(SECRET), "{err}");
        assert_eq!(redirecting.seen().len(), 1, "asked once");
        assert!(
            sink.seen().is_empty(),
            "{status}: the secret went on: {:?}",
            sink.seen()
        );

        // App Service managed identity: plain http, redirect to another local server.
        let sink = Scripted::start(false, |_| response(200, &[], "{}")).await;
        let location = format!("{}/msi/token", sink.base);
        let redirecting =
            Scripted::start(false, move |_| response(status, &[("Location", location.as_str())], "")).await;
        let vars: HashMap<&str, String> = HashMap::from([
            ("IDENTITY_ENDPOINT", format!("{}/msi/token", redirecting.base)),
            ("IDENTITY_HEADER", s(IDENTITY_HEADER)),
        ]);
        let credential = EntraCredential::builder()
            .client_options(&trusting())
            .vars(move |n| vars.get(n).cloned())
            .managed_identity()
            .unwrap();
        let err = credential.token().await.unwrap_err().to_string();
        assert!(err.contains(&status.to_string()) && err.contains("redirect"), "{err}");
        assert!(
            sink.seen().is_empty(),
            "{status}: the identity header went on: {:?}",
            sink.seen()
        );
    }
}

/// Promise: Blob operations never redirect; a 3xx comes back as that answer, and nothing is
/// sent where `Location` points (the request carries a SharedKey signature or a SAS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_requests_never_follow_redirects() {
    let sink = Scripted::start(false, |_| response(200, &[], "")).await;
    let location = format!("{}/acct/c/b", sink.base);
    let redirecting = Scripted::start(false, move |_| response(307, &[("Location", location.as_str())], "")).await;
    let config = StorageConfig::parse_connection_string(&format!(
        "AccountName=acct;AccountKey={};BlobEndpoint={}/acct",
        common::DEV_KEY,
        redirecting.base
    ))
    .unwrap();
    let client = BlobClient::new(&config, ClientOptions::default()).unwrap();
    let req = RestRequest::new("head", reqwest::Method::HEAD, "c", Some("b"));
    let resp = client
        .send(&req, std::time::Instant::now() + Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(resp.status, 307);
    assert!(sink.seen().is_empty(), "followed: {:?}", sink.seen());
}
