//! `azmutex` with Entra ID: `--auth` kinds against an HTTPS Azurite (`--oauth basic`) and a
//! local token endpoint; the private CA of `--ca-cert` trusted by token requests; the chain's
//! error when nothing is configured; secrets never printed.

mod common;
#[path = "common/token_server.rs"]
mod token_server;

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use token_server::{Mode, TokenServer, CLIENT_ID, SECRET, TENANT};

fn azurite() -> &'static (token_server::Pki, common::Service) {
    token_server::https_oauth_azurite()
}

/// `azmutex` with a clean environment (PATH, the blob endpoint, `--ca-cert`) plus `env`.
async fn azmutex(env: &[(&str, String)], args: &[&str], ca_cert: bool) -> Output {
    let (pki, service) = azurite();
    let bin = std::env::var("AZMUTEX_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_azmutex").to_string());
    let mut c = tokio::process::Command::new(bin);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AZURE_STORAGE_SERVICE_ENDPOINT", &service.endpoint);
    for (k, v) in env {
        c.env(k, v);
    }
    if ca_cert {
        c.arg("--ca-cert").arg(pki.dir.join("ca.pem"));
    }
    c.args(["--container", &common::unique("entra-cli")]).args(args);
    c.stdin(std::process::Stdio::null());
    tokio::time::timeout(Duration::from_secs(120), c.output())
        .await
        .expect("azmutex finished")
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

async fn https_server(lifetime: u64) -> std::sync::Arc<TokenServer> {
    let pki = &azurite().0;
    TokenServer::start(Some((&pki.cert_pem, &pki.key_pem)), lifetime).await
}

fn entra_env(server: &TokenServer) -> Vec<(&'static str, String)> {
    vec![
        ("AZURE_TENANT_ID", TENANT.to_string()),
        ("AZURE_CLIENT_ID", CLIENT_ID.to_string()),
        ("AZURE_AUTHORITY_HOST", server.base.clone()),
    ]
}

/// `run` holding the lock through one renewal (15 s lease, renewed every 5 s).
const RUN: [&str; 6] = ["run", "--lease", "15", "job", "--", "sleep 6"];

async fn run_ok(env: &[(&str, String)], auth: &str) {
    let mut args = vec!["--auth", auth];
    args.extend(RUN.iter().take(4));
    args.extend(["--", "sh", "-c", "sleep 6"]);
    let o = azmutex(env, &args, true).await;
    assert_eq!(o.status.code(), Some(0), "{auth}: {}", text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_a_client_secret_explicit_and_auto() {
    let server = https_server(3600).await;
    let mut env = entra_env(&server);
    env.push(("AZURE_CLIENT_SECRET", SECRET.to_string()));
    run_ok(&env, "client-secret").await;
    run_ok(&env, "auto").await;
    assert_eq!(server.requests(), 2, "one token per process");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_workload_identity() {
    let server = https_server(3600).await;
    let dir = std::env::temp_dir().join(common::unique("azmutex-wi-cli"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), "federated-assertion-1").unwrap();
    let mut env = entra_env(&server);
    env.push(("AZURE_FEDERATED_TOKEN_FILE", dir.join("token").display().to_string()));
    run_ok(&env, "workload-identity").await;
    assert_eq!(server.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_a_managed_identity() {
    let server = TokenServer::start(None, 3600).await;
    let env = vec![("AZURE_POD_IDENTITY_AUTHORITY_HOST", server.base.clone())];
    run_ok(&env, "managed-identity").await;
    // The chain (no secret, no workload identity) finds it too, with --client-id.
    let mut args = vec!["--client-id", "my-uami"];
    args.extend(RUN.iter().take(4));
    args.extend(["--", "true"]);
    let o = azmutex(&env, &args, true).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(server
        .queries
        .lock()
        .unwrap()
        .last()
        .unwrap()
        .contains("client_id=my-uami"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_the_azure_cli() {
    let dir = std::env::temp_dir().join(common::unique("azmutex-az-cli"));
    token_server::fake_az(&dir, 3600, true, true);
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
    run_ok(&[("PATH", path)], "azure-cli").await;
    assert_eq!(
        std::fs::read_to_string(dir.join("az.calls")).unwrap().lines().count(),
        1
    );
}

/// No account key, no SAS, nothing for Entra ID: the chain's error lists every kind, exit 77,
/// fast (the metadata endpoint refuses connections here; see the library test for one that
/// never answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_configured_lists_every_kind() {
    // Port 1: nothing listens there, and no other server can be given it meanwhile.
    let refusing = 1;
    let env = vec![
        (
            "AZURE_POD_IDENTITY_AUTHORITY_HOST",
            format!("http://127.0.0.1:{refusing}"),
        ),
        ("PATH", empty_dir().display().to_string()),
    ];
    let started = Instant::now();
    let o = azmutex(&env, &["status", "job"], true).await;
    let t = text(&o);
    assert_eq!(o.status.code(), Some(77), "{t}");
    for kind in ["client secret", "workload identity", "managed identity", "Azure CLI"] {
        assert!(t.contains(kind), "{kind}: {t}");
    }
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
}

fn empty_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(common::unique("azmutex-empty"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_cert_is_trusted_by_token_requests() {
    let server = https_server(3600).await;
    let mut env = entra_env(&server);
    env.push(("AZURE_CLIENT_SECRET", SECRET.to_string()));
    let o = azmutex(&env, &["--auth", "client-secret", "status", "job"], false).await;
    let t = text(&o);
    assert_eq!(o.status.code(), Some(78), "{t}");
    assert!(t.contains("unknown (untrusted) CA"), "{t}");
    assert_eq!(server.requests(), 0, "the token endpoint's certificate was refused");
    // With the CA: the token endpoint (certificate from that CA) is trusted too.
    let o = azmutex(&env, &["--auth", "client-secret", "status", "job"], true).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(server.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_misconfigured_are_named_without_secrets() {
    let server = https_server(3600).await;
    let mut env = entra_env(&server);
    env.push(("AZURE_CLIENT_SECRET", "wrong-NEVER-printed".into()));
    let o = azmutex(&env, &["-vv", "--auth", "client-secret", "status", "job"], true).await;
    let t = text(&o);
    assert_eq!(o.status.code(), Some(77), "{t}");
    assert!(t.contains("AADSTS7000215") && !t.contains("NEVER-printed"), "{t}");
    // The endpoint refuses: an auth error too.
    server.set_mode(Mode::Refuse);
    env.pop();
    env.push(("AZURE_CLIENT_SECRET", SECRET.into()));
    let o = azmutex(&env, &["-vv", "--auth", "client-secret", "status", "job"], true).await;
    let t = text(&o);
    assert_eq!(o.status.code(), Some(77), "{t}");
    assert!(!t.contains(SECRET) && !t.contains("eyJ"), "{t}");
    // Explicit kinds need their settings, checked before the network.
    let o = azmutex(&[], &["--auth", "workload-identity", "status", "job"], true).await;
    let t = text(&o);
    assert_eq!(o.status.code(), Some(78), "{t}");
    assert!(t.contains("AZURE_FEDERATED_TOKEN_FILE"), "{t}");
    // `--auth key` without a key; an Entra kind with a key.
    let o = azmutex(&[], &["--auth", "key", "status", "job"], true).await;
    assert_eq!(o.status.code(), Some(78), "{}", text(&o));
    let env = vec![("AZURE_STORAGE_KEY", common::DEV_KEY.to_string())];
    let o = azmutex(&env, &["--auth", "managed-identity", "status", "job"], true).await;
    let t = text(&o);
    assert_eq!(o.status.code(), Some(78), "{t}");
    assert!(t.contains("--auth") && !t.contains(common::DEV_KEY), "{t}");
}
