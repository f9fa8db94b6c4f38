//! Test harness: a real Azurite blob service started by the tests themselves (npm package
//! `azurite`, pinned in tools/azurite/package-lock.json) on a free loopback port with in-memory
//! persistence, one per test binary, stopped when the test process exits.
//!
//! Set `AZMUTEX_TEST_CONNECTION_STRING` to run the same tests against another endpoint (for
//! example a real storage account) instead.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use azmutex::{AzureMutex, ClientOptions, StorageConfig};

pub mod faults;
pub mod forward_proxy;
pub mod http_proxy;
pub mod proxy;
pub mod semaphore;

pub const DEV_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

pub struct Service {
    /// Blob endpoint, e.g. `http://127.0.0.1:PORT/devstoreaccount1`.
    pub endpoint: String,
    pub connection_string: String,
    /// The port (None for an external endpoint).
    pub port: Option<u16>,
    _child: Option<Child>,
}

static SERVICE: OnceLock<Service> = OnceLock::new();

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shared service for this test binary: Azurite unless `AZMUTEX_TEST_CONNECTION_STRING`.
pub fn service() -> &'static Service {
    SERVICE.get_or_init(|| {
        if let Ok(cs) = std::env::var("AZMUTEX_TEST_CONNECTION_STRING") {
            let cfg = StorageConfig::parse_connection_string(&cs).expect("AZMUTEX_TEST_CONNECTION_STRING");
            return Service {
                endpoint: cfg.endpoint.to_string(),
                connection_string: cs,
                port: None,
                _child: None,
            };
        }
        start_azurite("http", &[])
    })
}

/// Starts a separate Azurite with `extra` arguments (e.g. `--cert`/`--key` for HTTPS, in which
/// case `scheme` is `https` and the endpoint host is `localhost`).
pub fn start_azurite(scheme: &str, extra: &[&str]) -> Service {
    let main = repo_root().join("tools/azurite/node_modules/azurite/dist/src/blob/main.js");
    if !main.exists() {
        panic!(
            "\n\nAzurite is not installed, and these tests need it (they never pass without it).\n\
             Install the pinned version with:\n\n    npm ci --prefix tools/azurite\n\n\
             (Node.js 20 or later), or run ./scripts/test, which does it for you.\n\
             To test against another endpoint instead, set AZMUTEX_TEST_CONNECTION_STRING.\n"
        );
    }
    // `sh` keeps Azurite tied to this process: when the test process exits, the pipe on sh's
    // stdin closes, `read` returns and Azurite is killed (in-memory, so nothing is lost).
    let script = r#"node "$0" --blobHost 127.0.0.1 --blobPort 0 --inMemoryPersistence --silent --disableTelemetry --extentMemoryLimit 256 "$@" </dev/null &
pid=$!
read _unused
kill -9 $pid 2>/dev/null"#;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(&main)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start sh to run Azurite: {e}"));
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent {
                if let Some(rest) = line
                    .split("successfully listens on ")
                    .nth(1)
                    .and_then(|r| r.rsplit(':').next())
                {
                    let port: u16 = rest.trim().parse().expect("Azurite port");
                    let _ = tx.send(port);
                    sent = true;
                }
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("Azurite did not report its port within 60 s (is `node` on PATH?)"));
    let host = if scheme == "https" { "localhost" } else { "127.0.0.1" };
    let endpoint = format!("{scheme}://{host}:{port}/devstoreaccount1");
    let connection_string = format!(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={DEV_KEY};BlobEndpoint={endpoint};"
    );
    Service {
        endpoint,
        connection_string,
        port: Some(port),
        _child: Some(child),
    }
}

pub fn config() -> StorageConfig {
    StorageConfig::parse_connection_string(&service().connection_string).unwrap()
}

/// A container name no other test uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        fastrand::u32(..) % 100_000
    )
}

pub fn fast_options() -> ClientOptions {
    let mut o = ClientOptions::default();
    o.retry.call_timeout = Duration::from_secs(10);
    o
}

pub fn mutex(container: &str) -> AzureMutex {
    AzureMutex::builder(config(), container)
        .client_options(fast_options())
        .build()
        .unwrap()
}

pub fn sas(name: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(include_str!("../vectors/sas.json")).unwrap();
    v[name].as_str().unwrap().to_string()
}

/// The development account reached through `addr` (e.g. a test proxy in front of Azurite).
pub fn config_via(addr: std::net::SocketAddr) -> StorageConfig {
    let cs = format!("AccountName=devstoreaccount1;AccountKey={DEV_KEY};BlobEndpoint=http://{addr}/devstoreaccount1");
    StorageConfig::parse_connection_string(&cs).unwrap()
}

/// The local Azurite's address (these tests need it, not an external endpoint).
pub fn azurite_addr() -> std::net::SocketAddr {
    format!(
        "127.0.0.1:{}",
        service().port.expect("these tests need the local Azurite")
    )
    .parse()
    .unwrap()
}

pub fn secs(n: u64) -> azmutex::LeaseDuration {
    azmutex::LeaseDuration::seconds(n).unwrap()
}

/// A mutex on `container` reached through `addr` (a test proxy in front of Azurite).
pub fn via(addr: std::net::SocketAddr, container: &str, fencing: bool) -> AzureMutex {
    AzureMutex::builder(config_via(addr), container)
        .client_options(fast_options())
        .fencing(fencing)
        .build()
        .unwrap()
}

/// A mutex with fencing tokens on `container`.
pub fn fenced(container: &str) -> AzureMutex {
    AzureMutex::builder(config(), container)
        .client_options(fast_options())
        .fencing(true)
        .build()
        .unwrap()
}

/// Sends a raw request straight to the service (no proxy).
pub async fn send(req: azmutex::rest::RestRequest) -> azmutex::rest::RestResponse {
    azmutex::BlobClient::new(&config(), ClientOptions::default())
        .unwrap()
        .send(&req, std::time::Instant::now() + Duration::from_secs(10))
        .await
        .unwrap()
}

/// Creates `container` (already there is fine).
pub async fn create_container(container: &str) {
    let req =
        azmutex::rest::RestRequest::new("cc", reqwest::Method::PUT, container, None).query("restype", "container");
    let r = send(req).await;
    assert!(r.status == 201 || r.status == 409, "{:?}", r.error());
}

/// Deletes a blob that is not leased.
pub async fn delete_blob(container: &str, blob: &str) {
    let r = send(azmutex::rest::RestRequest::new(
        "delete",
        reqwest::Method::DELETE,
        container,
        Some(blob),
    ))
    .await;
    assert_eq!(r.status, 202, "{:?}", r.error());
}

/// Locker options for tests: `lease`, quick polling.
pub fn locker_options(lease: azmutex::LeaseDuration) -> azmutex::LockerOptions {
    azmutex::LockerOptions {
        lease,
        poll_initial: Duration::from_millis(20),
        poll_max: Duration::from_millis(200),
        ..azmutex::LockerOptions::default()
    }
}
