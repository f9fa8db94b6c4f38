//! Hostile review of issue 11 (Entra ID credentials). Failing tests reproduce broken
//! promises (each commented: promise, observed, expected); passing tests are attacks that held.
#![cfg(feature = "entra")]

mod common;
#[path = "common/token_server.rs"]
mod token_server;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use azmutex::auth::entra::{EntraBuilder, EntraCredential};
use azmutex::{AzureMutex, ClientOptions, Credential, StorageConfig, TokenProvider};
use token_server::{TokenServer, CLIENT_ID, SECRET, TENANT};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

fn azurite() -> &'static (token_server::Pki, common::Service) {
    token_server::https_oauth_azurite()
}

fn trusting() -> ClientOptions {
    let mut o = ClientOptions::default();
    o.ca_certificates_pem.push(azurite().0.ca_pem.clone().into_bytes());
    o.retry.call_timeout = Duration::from_secs(8);
    o
}

fn builder(vars: &[(&str, String)]) -> EntraBuilder {
    let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    EntraCredential::builder()
        .client_options(&trusting())
        .vars(move |name| map.get(name).cloned())
}

fn mutex(credential: Arc<dyn TokenProvider>) -> AzureMutex {
    let config = StorageConfig::new(&azurite().1.endpoint, Credential::Bearer(credential)).unwrap();
    AzureMutex::builder(config, common::unique("break11"))
        .client_options(trusting())
        .build()
        .unwrap()
}

/// A scripted HTTP(S) endpoint on loopback: `answer(request head + body)` -> (status, body).
/// Records every request it received.
struct Scripted {
    base: String,
    seen: Mutex<Vec<String>>,
}

type AnswerFn = Arc<dyn Fn(&str) -> (u16, String) + Send + Sync>;

async fn scripted(tls: bool, answer: impl Fn(&str) -> (u16, String) + Send + Sync + 'static) -> Arc<Scripted> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let base = if tls {
        format!("https://localhost:{port}")
    } else {
        format!("http://127.0.0.1:{port}")
    };
    let me = Arc::new(Scripted {
        base,
        seen: Mutex::new(Vec::new()),
    });
    let answer: AnswerFn = Arc::new(answer);
    let acceptor = tls.then(|| {
        use rustls::pki_types::pem::PemObject as _;
        let pki = &azurite().0;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(pki.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    let m = me.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (m, answer, acceptor) = (m.clone(), answer.clone(), acceptor.clone());
            tokio::spawn(async move {
                match acceptor {
                    Some(a) => {
                        if let Ok(s) = a.accept(stream).await {
                            serve(&m, &answer, s).await
                        }
                    }
                    None => serve(&m, &answer, stream).await,
                }
            });
        }
    });
    me
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(m: &Scripted, answer: &AnswerFn, mut s: S) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Ok(n) = s.read(&mut chunk).await else { return };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(i) = text.find("\r\n\r\n") {
            let len = text[..i]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= i + 4 + len {
                break;
            }
        }
    }
    let request = String::from_utf8_lossy(&buf).to_string();
    m.seen.lock().unwrap().push(request.clone());
    let (status, body) = answer(&request);
    let response = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(response.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// JSON-escapes `s` (enough for form bodies and header values).
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\r', "\\r")
        .replace('\n', "\\n")
}

// ---------------------------------------------------------------------------------------------
// Secrets echoed by a token endpoint's error answer.
// ---------------------------------------------------------------------------------------------

/// PROMISE: "Tokens and secrets (client secret, federated token, access tokens) never appear in
/// output (errors, Debug ...)"; the brief: the endpoint's error body "must never echo the client
/// secret or assertion".
/// OBSERVED: the error text quotes the endpoint's `error_description` verbatim (only cut and
/// stripped of control characters), so an endpoint (or a proxy / WAF / misconfigured authority
/// host in front of it) that echoes the request body puts the client secret in `Error::Auth`'s
/// Display and Debug.
/// EXPECTED: the known secrets (client secret, federated assertion, identity header) are
/// redacted from any text taken from an endpoint before it enters an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_echoed_by_the_endpoint_is_not_printed() {
    let server = scripted(true, |req| {
        let body = req.split("\r\n\r\n").nth(1).unwrap_or_default();
        let decoded: String = url::form_urlencoded::parse(body.as_bytes())
            .map(|(k, v)| format!("{k}={v} "))
            .collect();
        (
            400,
            format!(
                r#"{{"error":"invalid_request","error_description":"AADSTS900144: malformed request: {}"}}"#,
                esc(&decoded)
            ),
        )
    })
    .await;
    let vars = vec![
        ("AZURE_TENANT_ID", TENANT.to_string()),
        ("AZURE_CLIENT_ID", CLIENT_ID.to_string()),
        ("AZURE_AUTHORITY_HOST", server.base.clone()),
        ("AZURE_CLIENT_SECRET", SECRET.to_string()),
    ];
    let cred = builder(&vars).client_secret_credential().unwrap();
    let err = mutex(Arc::new(cred))
        .acquire("job", common::secs(15))
        .await
        .unwrap_err();
    let text = format!("{err} | {err:?}");
    assert!(text.contains("AADSTS900144"), "the endpoint was reached: {text}");
    assert!(!text.contains(SECRET), "client secret printed: {text}");
}

/// PROMISE / EXPECTED as above, for the workload identity's federated token (the assertion).
/// OBSERVED: an endpoint echoing the body prints the federated token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_assertion_echoed_by_the_endpoint_is_not_printed() {
    let assertion = "eyJhbGciOiJSUzI1NiJ9.FEDERATED-ASSERTION-never-printed.c2ln";
    let server = scripted(true, |req| {
        let body = req.split("\r\n\r\n").nth(1).unwrap_or_default();
        let a = url::form_urlencoded::parse(body.as_bytes())
            .find(|(k, _)| k == "client_assertion")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        (
            401,
            format!(
                r#"{{"error":"invalid_client","error_description":"AADSTS50027: JWT token is invalid or malformed: {}"}}"#,
                esc(&a)
            ),
        )
    })
    .await;
    let dir = std::env::temp_dir().join(common::unique("break11-wi"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, assertion).unwrap();
    let vars = vec![
        ("AZURE_TENANT_ID", TENANT.to_string()),
        ("AZURE_CLIENT_ID", CLIENT_ID.to_string()),
        ("AZURE_AUTHORITY_HOST", server.base.clone()),
        ("AZURE_FEDERATED_TOKEN_FILE", file.display().to_string()),
    ];
    let cred = builder(&vars).workload_identity().unwrap();
    let err = mutex(Arc::new(cred))
        .acquire("job", common::secs(15))
        .await
        .unwrap_err();
    let text = format!("{err} | {err:?}");
    assert!(text.contains("AADSTS50027"), "the endpoint was reached: {text}");
    assert!(
        !text.contains("FEDERATED-ASSERTION-never-printed"),
        "federated token printed: {text}"
    );
}

/// PROMISE / EXPECTED as above, for App Service's `IDENTITY_HEADER` (the crate itself treats it
/// as a `Secret`). OBSERVED: an endpoint echoing the header prints it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_service_identity_header_echoed_by_the_endpoint_is_not_printed() {
    let header = "app-service-HEADER-never-printed";
    let server = scripted(false, |req| {
        let h = req
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("x-identity-header")
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_default();
        (
            400,
            format!(
                r#"{{"error":"invalid_request","error_description":"unknown identity header {}"}}"#,
                esc(&h)
            ),
        )
    })
    .await;
    let vars = vec![
        ("IDENTITY_ENDPOINT", format!("{}/msi/token", server.base)),
        ("IDENTITY_HEADER", header.to_string()),
    ];
    let cred = builder(&vars).managed_identity().unwrap();
    let err = mutex(Arc::new(cred))
        .acquire("job", common::secs(15))
        .await
        .unwrap_err();
    let text = format!("{err} | {err:?}");
    assert!(
        text.contains("unknown identity header"),
        "the endpoint was reached: {text}"
    );
    assert!(!text.contains(header), "identity header printed: {text}");
}

/// PROMISE: tokens never appear in output (errors ...).
/// OBSERVED: when `az` exits non-zero, the first non-empty line of its stderr is quoted in the
/// error; a CLI (or wrapper script, or extension) that prints a token there has it printed.
/// EXPECTED: token-shaped text (JWTs: `eyJ...`) redacted from quoted `az` output. Low severity:
/// the real `az` does not print its token on stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_cli_stderr_token_is_not_echoed() {
    let (token, _) = token_server::mint_jwt(3600);
    let dir = std::env::temp_dir().join(common::unique("break11-az"));
    std::fs::create_dir_all(&dir).unwrap();
    let az = dir.join("az");
    std::fs::write(
        &az,
        format!("#!/bin/sh\necho \"ERROR: cached token {token} could not be refreshed\" >&2\nexit 1\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&az, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cred = builder(&[]).azure_cli_command(&az).azure_cli().unwrap();
    let err = mutex(Arc::new(cred))
        .acquire("job", common::secs(15))
        .await
        .unwrap_err();
    let text = format!("{err} | {err:?}");
    assert!(text.contains("cached token"), "az was run: {text}");
    // The quote is cut at 300 characters, but the token's header and most claims remain.
    assert!(!text.contains(&token[..120]), "access token printed: {text}");
}

/// PROMISE: "A default chain in a documented order", modelled on the Azure SDKs' default
/// credential (`EntraKind::CHAIN` docs say "as the Azure SDKs' default credential").
/// OBSERVED: a kind that IS configured (here a service principal in AZURE_CLIENT_* whose token
/// endpoint answers 500 for a moment) is skipped like an unconfigured one, and the chain then
/// picks the next kind that answers (here the machine's managed identity) and sticks to it for
/// the process's life: locks are taken silently under another identity. The SDKs
/// (azure-identity's ChainedTokenCredential / DefaultAzureCredential) move on only when a kind is
/// *unavailable*; a configured kind's failure ends the chain with that error.
/// EXPECTED: a configured kind's failure is the chain's answer (transient -> retried), never a
/// switch to a different principal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_does_not_switch_identity_when_the_configured_kind_fails() {
    let pki = &azurite().0;
    let entra = TokenServer::start(Some((&pki.cert_pem, &pki.key_pem)), 3600).await;
    let imds = TokenServer::start(None, 3600).await;
    entra.set_mode(token_server::Mode::Fail);
    let vars = vec![
        ("AZURE_TENANT_ID", TENANT.to_string()),
        ("AZURE_CLIENT_ID", CLIENT_ID.to_string()),
        ("AZURE_CLIENT_SECRET", SECRET.to_string()),
        ("AZURE_AUTHORITY_HOST", entra.base.clone()),
        ("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.base.clone()),
        ("PATH", "/nonexistent".to_string()),
    ];
    let cred = builder(&vars).chain().unwrap();
    let m = mutex(Arc::new(cred));
    let first = m.acquire("job", common::secs(15)).await;
    // The service principal's endpoint recovers; the chain should use it from now on.
    entra.set_mode(token_server::Mode::Normal);
    if let Ok(lease) = first {
        m.release(&lease).await.unwrap();
    }
    let before = imds.requests();
    // The token cache backs off after failures (at most 10 s): the service principal is used
    // again once its endpoint answers, within a bounded wait.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let lease = loop {
        match m.acquire("job", common::secs(15)).await {
            Ok(lease) => break lease,
            Err(e) if std::time::Instant::now() < deadline => {
                assert!(e.is_transient(), "{e}");
            }
            Err(e) => panic!("the recovered service principal was never used: {e}"),
        }
    };
    m.release(&lease).await.unwrap();
    assert!(
        before == 0 && imds.requests() == 0,
        "the configured service principal failed once and the chain switched to the managed \
         identity ({} IMDS token requests, {} to the service principal's endpoint)",
        imds.requests(),
        entra.requests()
    );
}

/// Held? `-vv` logs of the CLI never show the client secret or an access token it was given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_vv_logs_show_no_secret_or_token() {
    let (pki, service) = azurite();
    let server = TokenServer::start(Some((&pki.cert_pem, &pki.key_pem)), 3600).await;
    let bin = env!("CARGO_BIN_EXE_azmutex");
    let out = tokio::process::Command::new(bin)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AZURE_STORAGE_SERVICE_ENDPOINT", &service.endpoint)
        .env("AZURE_TENANT_ID", TENANT)
        .env("AZURE_CLIENT_ID", CLIENT_ID)
        .env("AZURE_CLIENT_SECRET", SECRET)
        .env("AZURE_AUTHORITY_HOST", &server.base)
        .env("RUST_LOG", "trace")
        .arg("--ca-cert")
        .arg(pki.dir.join("ca.pem"))
        .args(["-vv", "--container", &common::unique("break11-cli")])
        .args([
            "--auth",
            "client-secret",
            "run",
            "--lease",
            "15",
            "job",
            "--",
            "sh",
            "-c",
            "sleep 1",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let text = format!(
        "{} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains(SECRET), "secret in -vv output: {text}");
    let issued: Vec<String> = server.issued.lock().unwrap().keys().cloned().collect();
    assert!(!issued.is_empty());
    for t in issued {
        assert!(!text.contains(&t), "token in -vv output: {text}");
        let payload = t.split('.').nth(1).unwrap().to_string();
        assert!(!text.contains(&payload), "token claims in -vv output: {text}");
    }
}

/// Held? `az` printing garbage, or megabytes, is a bounded transient failure, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_cli_garbage_and_huge_output_are_bounded() {
    let dir = std::env::temp_dir().join(common::unique("break11-az2"));
    std::fs::create_dir_all(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for (name, script) in [
        (
            "garbage",
            "#!/bin/sh\nprintf '\\033[31m{\"accessToken\": \"a b\"' \nexit 0\n",
        ),
        ("huge", "#!/bin/sh\nhead -c 50000000 /dev/zero | tr '\\0' 'x'\nexit 0\n"),
        ("past", "#!/bin/sh\necho '{\"accessToken\":\"abc\",\"expires_on\":1}'\n"),
    ] {
        let az = dir.join(name);
        std::fs::write(&az, script).unwrap();
        std::fs::set_permissions(&az, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cred = builder(&[]).azure_cli_command(&az).azure_cli().unwrap();
        let started = Instant::now();
        let err = mutex(Arc::new(cred))
            .acquire("job", common::secs(15))
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(12),
            "{name}: {:?} {err}",
            started.elapsed()
        );
        assert!(!err.to_string().contains("xxxxxxxxxx"), "{name}: {err}");
    }
}
