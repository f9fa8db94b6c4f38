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

// ---------------------------------------------------------------------------------------------
// 3. Secrets never printed: the property test and named cases
// ---------------------------------------------------------------------------------------------

/// Every form of `secret` a program may print, lower-cased: as is, form- and percent-encoded
/// (upper- and lower-case hex, RFC 3986), JSON-escaped, base64 and base64url at the three
/// alignments. (Written independently of the library's scrubber.)
fn encodings(secret: &str) -> Vec<String> {
    use base64::Engine as _;
    let b = secret.as_bytes();
    let pct = |keep: &dyn Fn(u8) -> bool, lower: bool| -> String {
        b.iter()
            .map(|&c| {
                if keep(c) {
                    (c as char).to_string()
                } else if lower {
                    format!("%{c:02x}")
                } else {
                    format!("%{c:02X}")
                }
            })
            .collect()
    };
    let mut v = vec![
        secret.to_string(),
        url::form_urlencoded::byte_serialize(b).collect(),
        pct(&|c: u8| c.is_ascii_alphanumeric(), false),
        pct(&|c: u8| c.is_ascii_alphanumeric(), true),
        pct(&|c: u8| c.is_ascii_alphanumeric() || b"-._~".contains(&c), false),
        pct(&|c: u8| c.is_ascii_alphanumeric() || b"-._~".contains(&c), true),
        serde_json::to_string(secret).unwrap().trim_matches('"').to_string(),
        secret.replace('/', "\\/"),
    ];
    for skip in 0..3 {
        v.push(base64::engine::general_purpose::STANDARD.encode(&b[skip..]));
        v.push(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&b[skip..]));
    }
    v.into_iter().map(|s| s.to_ascii_lowercase()).collect()
}

/// The first run of 12 characters `output` shares with any encoding of `secret` (ignoring
/// ASCII case), if any. Base64 forms are trimmed of their last 4 characters (which depend on
/// what follows the secret).
fn leak(output: &str, secret: &str) -> Option<String> {
    let out = output.to_ascii_lowercase();
    for form in encodings(secret) {
        let chars: Vec<char> = form.chars().collect();
        if chars.len() < 12 {
            continue;
        }
        for w in chars.windows(12) {
            let w: String = w.iter().collect();
            if out.contains(&w) {
                return Some(w);
            }
        }
    }
    None
}

/// What a hostile endpoint echoes of a request: everything, in several encodings, and cut in
/// half (as endpoints truncate).
fn echo(request: &str) -> String {
    use base64::Engine as _;
    let half = &request[..request.len() / 2];
    let decoded: String = url::form_urlencoded::parse(request.as_bytes())
        .map(|(k, v)| format!("{k}={v} "))
        .collect();
    let lower_pct: String = request
        .bytes()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                (c as char).to_string()
            } else {
                format!("%{c:02x}")
            }
        })
        .collect();
    format!(
        "received: {request} | decoded: {decoded} | pct: {lower_pct} | b64: {} | cut: {half}",
        base64::engine::general_purpose::STANDARD.encode(request)
    )
}

/// The hostile endpoints of the property test: an Entra token endpoint refusing every request
/// and quoting it back (JSON), a Blob endpoint doing the same (403, XML), and a proxy answering
/// 407 with the request quoted.
struct Hostile {
    token: Arc<Scripted>,
    storage: Arc<Scripted>,
    proxy: Arc<Scripted>,
}

async fn hostile() -> Hostile {
    let token = Scripted::start(true, |req| {
        let client_id = req
            .split("client_id=")
            .nth(1)
            .map(|r| r.split(['&', ' ']).next().unwrap_or_default().to_string())
            .unwrap_or_default();
        let description = format!(
            "AADSTS700016: Application with identifier '{}' was not found. {}",
            url::form_urlencoded::parse(format!("x={client_id}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default(),
            echo(req)
        );
        let body = format!(
            r#"{{"error":"unauthorized_client","error_description":{},"message":{}}}"#,
            serde_json::to_string(&description).unwrap(),
            serde_json::to_string(&echo(req)).unwrap()
        );
        response(400, &[], &body)
    })
    .await;
    let storage = Scripted::start(true, |req| {
        let escaped = echo(req).replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>AuthenticationFailed</Code><Message>Server failed to authenticate the request. {escaped}</Message></Error>"
        );
        response(403, &[("x-ms-error-code", "AuthenticationFailed")], &body)
    })
    .await;
    let proxy = Scripted::start(false, |req| {
        response(407, &[("Proxy-Authenticate", "Basic realm=\"x\"")], &echo(req))
    })
    .await;
    Hostile { token, storage, proxy }
}

/// A kind of secret: its name, the value a user types, and the part of it that is secret.
struct Kind {
    name: &'static str,
    typed: String,
    secret: String,
}

fn kinds(proxy_port: u16) -> Vec<Kind> {
    let (bearer, _) = token_server::mint_jwt(3600);
    let sig = "Kq3Zr7Wm2Xv9Yb4Tn6Lp1Hs8Dg5Fj0Qc7Ve2Nu4Rw9A%3D";
    vec![
        Kind {
            name: "account key",
            typed: "Zm9vYmFyQmF6UXV4MTIzNDU2Nzg5MGFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6QUJDREVGR0g5OQ==".into(),
            secret: "Zm9vYmFyQmF6UXV4MTIzNDU2Nzg5MGFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6QUJDREVGR0g5OQ==".into(),
        },
        Kind {
            name: "SAS signature",
            typed: format!("sv=2025-11-05&ss=b&srt=co&sp=rwdlac&se=2030-01-01T00:00:00Z&spr=https&sig={sig}"),
            secret: "Kq3Zr7Wm2Xv9Yb4Tn6Lp1Hs8Dg5Fj0Qc7Ve2Nu4Rw9A=".into(),
        },
        Kind {
            name: "client secret",
            typed: "Q7x8Q~aBcD3.eFgH4_iJkL5-mNoP6qRsT7uVwX8yZ".into(),
            secret: "Q7x8Q~aBcD3.eFgH4_iJkL5-mNoP6qRsT7uVwX8yZ".into(),
        },
        Kind {
            name: "federated assertion",
            typed: "eyJhbGciOiJSUzI1NiIsImtpZCI6IkZlZDEifQ.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDp3b3JrbG9hZCJ9.U2lnbmF0dXJlT2ZUaGVGZWRlcmF0ZWRUb2tlbjEyMzQ"
                .into(),
            secret: "eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDp3b3JrbG9hZCJ9.U2lnbmF0dXJlT2ZUaGVGZWRlcmF0ZWRUb2tlbjEyMzQ"
                .into(),
        },
        Kind {
            name: "identity header",
            typed: "c3f1A9e2-B7d4-4k8M-9pQ2-Z6x5W4v3U2t1".into(),
            secret: "c3f1A9e2-B7d4-4k8M-9pQ2-Z6x5W4v3U2t1".into(),
        },
        Kind {
            name: "proxy password",
            typed: format!("http://ci-user:Pr0xyPassw0rd9xQ7zKm4@127.0.0.1:{proxy_port}"),
            secret: "Pr0xyPassw0rd9xQ7zKm4".into(),
        },
        Kind {
            name: "bearer token",
            secret: bearer.split('.').nth(1).unwrap().to_string(),
            typed: bearer,
        },
    ]
}

/// Where a user can put (or mistype) a value: a flag, a variable, a positional word. `auth`:
/// the `--auth` that makes the value used (so that the run reaches the code reading it).
struct Place {
    name: &'static str,
    flag: Option<&'static str>,
    var: Option<&'static str>,
    auth: &'static str,
    /// A path place: the value is written into a file there (`file`), or given as the path
    /// itself (the mistake).
    file: bool,
}

const fn flag(name: &'static str, f: &'static str, auth: &'static str) -> Place {
    Place {
        name,
        flag: Some(f),
        var: None,
        auth,
        file: false,
    }
}

const fn var(name: &'static str, v: &'static str, auth: &'static str) -> Place {
    Place {
        name,
        flag: None,
        var: Some(v),
        auth,
        file: false,
    }
}

fn places() -> Vec<Place> {
    vec![
        flag("--connection-string", "--connection-string", "auto"),
        var(
            "AZURE_STORAGE_CONNECTION_STRING",
            "AZURE_STORAGE_CONNECTION_STRING",
            "auto",
        ),
        flag("--account-url", "--account-url", "auto"),
        var(
            "AZURE_STORAGE_SERVICE_ENDPOINT",
            "AZURE_STORAGE_SERVICE_ENDPOINT",
            "auto",
        ),
        flag("--account-name", "--account-name", "auto"),
        var("AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_ACCOUNT", "auto"),
        flag("--account-key", "--account-key", "key"),
        var("AZURE_STORAGE_KEY", "AZURE_STORAGE_KEY", "key"),
        flag("--sas-token", "--sas-token", "sas"),
        var("AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_SAS_TOKEN", "sas"),
        flag("--container", "--container", "client-secret"),
        flag("--ca-cert", "--ca-cert", "client-secret"),
        Place {
            name: "--ca-cert file",
            flag: Some("--ca-cert"),
            var: None,
            auth: "client-secret",
            file: true,
        },
        flag("--proxy", "--proxy", "client-secret"),
        flag("--api-version", "--api-version", "client-secret"),
        var("AZMUTEX_API_VERSION", "AZMUTEX_API_VERSION", "client-secret"),
        flag("--auth", "--auth", "client-secret"),
        var("AZMUTEX_AUTH", "AZMUTEX_AUTH", "client-secret"),
        flag("--client-id", "--client-id", "client-secret"),
        var("AZURE_CLIENT_ID", "AZURE_CLIENT_ID", "client-secret"),
        flag("--object-id", "--object-id", "managed-identity"),
        flag("--resource-id", "--resource-id", "managed-identity"),
        flag("--tenant-id", "--tenant-id", "client-secret"),
        var("AZURE_TENANT_ID", "AZURE_TENANT_ID", "client-secret"),
        flag("--authority-host", "--authority-host", "client-secret"),
        var("AZURE_AUTHORITY_HOST", "AZURE_AUTHORITY_HOST", "client-secret"),
        var("AZURE_CLIENT_SECRET", "AZURE_CLIENT_SECRET", "client-secret"),
        var(
            "AZURE_FEDERATED_TOKEN_FILE",
            "AZURE_FEDERATED_TOKEN_FILE",
            "workload-identity",
        ),
        Place {
            name: "AZURE_FEDERATED_TOKEN_FILE file",
            flag: None,
            var: Some("AZURE_FEDERATED_TOKEN_FILE"),
            auth: "workload-identity",
            file: true,
        },
        var("IDENTITY_ENDPOINT", "IDENTITY_ENDPOINT", "managed-identity"),
        var("IDENTITY_HEADER", "IDENTITY_HEADER", "managed-identity"),
        var(
            "AZURE_POD_IDENTITY_AUTHORITY_HOST",
            "AZURE_POD_IDENTITY_AUTHORITY_HOST",
            "managed-identity",
        ),
        var("HTTPS_PROXY", "HTTPS_PROXY", "client-secret"),
        var("https_proxy", "https_proxy", "client-secret"),
        var("ALL_PROXY", "ALL_PROXY", "client-secret"),
        var("NO_PROXY", "NO_PROXY", "client-secret"),
        var("SSL_CERT_FILE", "SSL_CERT_FILE", "client-secret"),
        var("SSL_CERT_DIR", "SSL_CERT_DIR", "client-secret"),
        var("AZMUTEX_LOG", "AZMUTEX_LOG", "client-secret"),
        Place {
            name: "lock name",
            flag: None,
            var: None,
            auth: "client-secret",
            file: false,
        },
        Place {
            name: "stray word",
            flag: Some(""),
            var: None,
            auth: "client-secret",
            file: false,
        },
    ]
}

/// The log levels every combination runs at.
const LEVELS: [&str; 4] = ["default", "-v", "-vv", "AZMUTEX_LOG=trace"];

/// One run: `kind`'s value put at `place`, at `level`, against the hostile endpoints.
fn combination(
    h: &Hostile,
    kind: &Kind,
    place: &Place,
    level: &str,
    dir: &std::path::Path,
) -> (Vec<(String, String)>, Vec<String>) {
    let ca = pki().dir.join("ca.pem").display().to_string();
    let mut env: Vec<(String, String)> = vec![
        (s("AZURE_TENANT_ID"), s(TENANT)),
        (s("AZURE_CLIENT_ID"), s(CLIENT_ID)),
        (s("AZURE_CLIENT_SECRET"), s("base-Secret~1234.abcdefGHIJ")),
        (s("AZURE_AUTHORITY_HOST"), h.token.base.clone()),
        (s("IDENTITY_ENDPOINT"), format!("{}/msi/token", h.token.base)),
        (s("IDENTITY_HEADER"), s("base-header-0000")),
    ];
    if place.auth == "workload-identity" {
        let file = dir.join("federated-token");
        std::fs::write(&file, "base-assertion").unwrap();
        env.push((s("AZURE_FEDERATED_TOKEN_FILE"), file.display().to_string()));
    }
    let mut front: Vec<String> = args(&["--timeout", "2s", "--auth", place.auth]);
    let mut lock = s("job");
    let mut ca_given = false;
    let mut url_given = false;
    let value = if place.file {
        let file = dir.join("value");
        std::fs::write(&file, &kind.typed).unwrap();
        file.display().to_string()
    } else {
        kind.typed.clone()
    };
    match (place.flag, place.var) {
        (Some(""), _) => front.push(value.clone()),
        (Some(f), _) => {
            ca_given |= f == "--ca-cert";
            url_given |= f == "--account-url" || f == "--connection-string";
            if f == "--auth" {
                front.retain(|a| a != "--auth" && a != place.auth);
            }
            front.extend([s(f), value.clone()]);
        }
        (None, Some(v)) => {
            env.retain(|(k, _)| k != v);
            url_given |= v == "AZURE_STORAGE_SERVICE_ENDPOINT" || v == "AZURE_STORAGE_CONNECTION_STRING";
            if v == "AZMUTEX_AUTH" {
                front.retain(|a| a != "--auth" && a != place.auth);
            }
            env.push((s(v), value.clone()));
        }
        (None, None) => lock = value.clone(),
    }
    if !ca_given {
        front.extend([s("--ca-cert"), ca]);
    }
    if !url_given {
        front.extend([s("--account-url"), h.storage.base.clone()]);
    }
    if place.auth == "key" || place.auth == "sas" {
        front.extend(args(&["--account-name", "acct"]));
    }
    match level {
        "default" => {}
        "AZMUTEX_LOG=trace" => env.push((s("AZMUTEX_LOG"), s("trace"))),
        flag => front.push(s(flag)),
    }
    let mut all = front;
    all.extend([s("status"), lock]);
    (env, all)
}

/// Property: for every kind of secret, every place a user can put or mistype it, and every log
/// level, no output of the CLI shares 12 consecutive characters with it in any encoding, while
/// every endpoint quotes back everything it receives. Plus `--help` with every variable set to
/// the secret. Reports the number of combinations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_output_ever_carries_a_secret() {
    let h = Arc::new(hostile().await);
    let kinds = Arc::new(kinds(h.proxy.port));
    let places = Arc::new(places());
    let limit = Arc::new(tokio::sync::Semaphore::new(4));
    let mut set = tokio::task::JoinSet::new();
    let mut combinations = 0usize;
    let mut help_failures = Vec::new();
    for k in 0..kinds.len() {
        for p in 0..places.len() {
            for level in LEVELS {
                combinations += 1;
                let (h, kinds, places, limit) = (h.clone(), kinds.clone(), places.clone(), limit.clone());
                set.spawn(async move {
                    let _permit = limit.acquire().await.unwrap();
                    let (kind, place) = (&kinds[k], &places[p]);
                    let dir = scratch("azmutex-secrets-prop");
                    let (env, a) = combination(&h, kind, place, level, &dir);
                    let started = std::time::Instant::now();
                    let o = azmutex(&env, &a).await;
                    let out = format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    );
                    let _ = std::fs::remove_dir_all(&dir);
                    let elapsed = started.elapsed();
                    let problem = leak(&out, &kind.secret).map(|w| format!("leaked {w:?}"));
                    problem.map(|p| format!("{} at {} ({level}, {elapsed:?}): {p}\n{out}", kind.name, place.name))
                });
            }
        }
        // `--help` with every variable holding the secret.
        combinations += 3;
        let mut env: Vec<(String, String)> = Vec::new();
        for place in places.iter() {
            if let Some(v) = place.var {
                env.push((s(v), kinds[k].typed.clone()));
            }
        }
        for sub in [&["--help"][..], &["status", "--help"], &["run", "--help"]] {
            let o = azmutex(&env, &args(sub)).await;
            let out = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            if let Some(w) = leak(&out, &kinds[k].secret) {
                help_failures.push(format!(
                    "{} at {} (--help): leaked {w:?}\n{out}",
                    kinds[k].name,
                    sub.join(" ")
                ));
            }
        }
    }
    let mut failures = help_failures;
    while let Some(r) = set.join_next().await {
        if let Some(f) = r.unwrap() {
            failures.push(f);
        }
    }
    eprintln!(
        "secrets property: {combinations} combinations ({} kinds x {} places x {} levels, plus 3 --help pages per kind); {} leaks",
        kinds.len(),
        places.len(),
        LEVELS.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {combinations} combinations leaked:\n{}\nfirst ones in full:\n{}",
        failures.len(),
        failures
            .iter()
            .map(|f| f.lines().next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n"),
        failures.iter().take(4).cloned().collect::<Vec<_>>().join("\n---\n")
    );
}
