//! Hostile servers and hostile lock blobs (issue 9): server-controlled numbers, huge and endless
//! bodies, terminal escapes, TLS failures, and metadata that broke signing. Misbehaving servers
//! are loopback servers written here; the lock-blob cases run against the tests' Azurite.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use azmutex::error::TlsProblem;
use azmutex::rest::{BlobClient, RestRequest};
use azmutex::{AzureMutex, ClientOptions, Error, Holder, LeaseDuration, StorageConfig};
use reqwest::Method;

/// Serves loopback connections on threads: reads one request head, then lets `answer` write
/// whatever it likes. Returns the address.
fn serve(answer: impl Fn(&mut TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let answer = answer.clone();
            std::thread::spawn(move || loop {
                if !read_head(&mut conn) {
                    return;
                }
                answer(&mut conn);
            });
        }
    });
    addr
}

fn read_head(conn: &mut TcpStream) -> bool {
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => seen.push(byte[0]),
            _ => return false,
        }
    }
    true
}

fn client_for(addr: SocketAddr, call_timeout: Duration) -> (StorageConfig, ClientOptions) {
    let mut options = ClientOptions::default();
    options.retry.call_timeout = call_timeout;
    (common::config_via(addr), options)
}

/// One acquire through a loopback server, with a 5 s call timeout; its error.
async fn acquire_via(addr: SocketAddr) -> Error {
    let (config, options) = client_for(addr, Duration::from_secs(5));
    let mutex = AzureMutex::builder(config, "locks")
        .client_options(options)
        .build()
        .unwrap();
    mutex
        .acquire("job", LeaseDuration::seconds(15).unwrap())
        .await
        .unwrap_err()
}

/// Item 1: a `Retry-After` of 2^63 s or more used to overflow `Instant + Duration` and panic.
#[tokio::test]
async fn huge_retry_after_is_clamped_not_a_panic() {
    for value in ["9223372036854775808", "18446744073709551615", "99999999999999999999999"] {
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\nx-ms-error-code: ServerBusy\r\nRetry-After: {value}\r\nContent-Length: 0\r\n\r\n"
        );
        let addr = serve(move |c| {
            let _ = c.write_all(answer.as_bytes());
        });
        let (config, options) = client_for(addr, Duration::from_secs(2));
        let client = BlobClient::new(&config, options).unwrap();
        let started = Instant::now();
        let req = RestRequest::new("probe", Method::HEAD, "c", Some("b"));
        let err = client
            .send(&req, Instant::now() + Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Throttled { .. }), "{value}: {err}");
        assert!(started.elapsed() < Duration::from_secs(3), "{value}");
    }
}

/// Item 1: `azmutexsince` of 2^64-1 used to overflow `UNIX_EPOCH + Duration` in `inspect`.
#[tokio::test]
async fn huge_holder_since_is_ignored_not_a_panic() {
    let container = common::unique("hostile-since");
    let mutex = common::mutex(&container);
    let lease = mutex.acquire("job", LeaseDuration::seconds(15).unwrap()).await.unwrap();
    let req = RestRequest::new("set-metadata", Method::PUT, &container, Some("job"))
        .query("comp", "metadata")
        .header("x-ms-lease-id", lease.id().to_string())
        .header("x-ms-meta-azmutexsince", "18446744073709551615")
        .header("x-ms-meta-azmutexowner", "x");
    let resp = mutex
        .client()
        .send(&req, mutex.client().default_deadline())
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    let info = mutex.inspect("job").await.unwrap();
    let holder = info.holder.expect("the owner is still read");
    assert_eq!(holder.since, None);
    assert_eq!(holder.holder.owner.as_deref(), Some("x"));
    mutex.release(&lease).await.unwrap();
}

/// Item 6: metadata names `k_1` and `k1` (byte order and the service's order differ), a value
/// that is not ASCII, and an upper-case name, on a lock blob whose acquire records the holder
/// and the fencing token. Every acquire used to get 403 ("check the account key").
#[tokio::test]
async fn foreign_metadata_survives_holder_and_fencing_records() {
    let container = common::unique("hostile-meta");
    let holder = Holder {
        owner: Some("nightly ünï".into()),
        host: Some("h1".into()),
        pid: Some(7),
    };
    let mutex = AzureMutex::builder(common::config(), &container)
        .client_options(common::fast_options())
        .fencing(true)
        .holder(holder.clone())
        .build()
        .unwrap();
    // A block blob with foreign metadata (a lock blob someone else made), container first.
    let create = RestRequest::new("create-container", Method::PUT, &container, None).query("restype", "container");
    let deadline = mutex.client().default_deadline();
    assert_eq!(mutex.client().send(&create, deadline).await.unwrap().status, 201);
    let put = RestRequest::new("put", Method::PUT, &container, Some("job"))
        .header("x-ms-blob-type", "BlockBlob")
        .header("x-ms-meta-k_1", "underscore")
        .header("x-ms-meta-k1", "digit")
        .header("x-ms-meta-_x", "leading underscore")
        .header("x-ms-meta-utf", "é ü");
    let put = put.header_owned("X-MS-META-UPPER", "Case").unwrap();
    assert_eq!(mutex.client().send(&put, deadline).await.unwrap().status, 201);

    let mut last = 0;
    for _ in 0..2 {
        let lease = mutex.acquire("job", LeaseDuration::seconds(15).unwrap()).await.unwrap();
        // Tokens start from the clock (see src/fence.rs) and strictly increase.
        let token = lease.fencing_token().unwrap();
        assert!(token > last, "{token} after {last}");
        last = token;
        let info = mutex.inspect("job").await.unwrap();
        let m = &info.metadata;
        assert_eq!(m.get("k_1").map(String::as_str), Some("underscore"), "{m:?}");
        assert_eq!(m.get("k1").map(String::as_str), Some("digit"));
        assert_eq!(m.get("_x").map(String::as_str), Some("leading underscore"));
        assert_eq!(m.get("utf").map(String::as_str), Some("é ü"));
        assert_eq!(m.get("upper").map(String::as_str), Some("Case"));
        assert_eq!(info.holder.unwrap().holder, holder);
        mutex.release(&lease).await.unwrap();
    }
}

/// Item 3: an endless error body used to be read until memory ran out; a 10 MB `<Message>`
/// became one 10 MB line. Now bodies are cut at 64 KiB and messages at 300 characters.
#[tokio::test]
async fn endless_and_huge_bodies_are_cut() {
    // Endless: a 409 whose body never ends (no length, close-delimited).
    let endless = serve(|c| {
        let head = "HTTP/1.1 409 Conflict\r\nx-ms-error-code: LeaseAlreadyPresent\r\nConnection: close\r\n\r\n<Error><Code>LeaseAlreadyPresent</Code><Message>";
        if c.write_all(head.as_bytes()).is_err() {
            return;
        }
        let chunk = vec![b'A'; 64 * 1024];
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) && c.write_all(&chunk).is_ok() {}
        let _ = c.shutdown(std::net::Shutdown::Both);
    });
    let (config, options) = client_for(endless, Duration::from_secs(5));
    let mutex = AzureMutex::builder(config, "locks")
        .client_options(options)
        .build()
        .unwrap();
    let started = Instant::now();
    let err = mutex
        .acquire("job", LeaseDuration::seconds(15).unwrap())
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    assert!(err.to_string().len() < 1000, "{} bytes", err.to_string().len());

    // Huge but finite: a 10 MB message full of terminal escapes.
    let huge = serve(|c| {
        let mut body = b"<?xml version=\"1.0\"?><Error><Code>InternalError</Code><Message>".to_vec();
        for _ in 0..(10 << 20) / 8 {
            body.extend_from_slice(b"\x1b[2Jab\xc2\x9b");
        }
        body.extend_from_slice(b"</Message></Error>");
        let head = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\nContent-Type: application/xml\r\n\r\n",
            body.len()
        );
        let _ = c.write_all(head.as_bytes());
        let _ = c.write_all(&body);
    });
    let err = acquire_via(huge).await;
    let text = err.to_string();
    assert!(text.len() < 2000, "{} bytes", text.len());
    assert!(!text.contains('\u{1b}') && !text.contains('\u{9b}'), "{text}");
}

/// Item 5: server text with escape sequences never reaches the caller raw.
#[tokio::test]
async fn server_messages_are_stripped_of_control_characters() {
    let addr = serve(|c| {
        let body = "<Error><Code>Lease\u{1b}]0;pwned\u{7}Present</Code><Message>\u{1b}[31mred\u{1b}[0m &amp; \u{202e}txt</Message></Error>";
        let head = format!(
            "HTTP/1.1 409 Conflict\r\nx-ms-request-id: r1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let _ = c.write_all(head.as_bytes());
        let _ = c.write_all(body.as_bytes());
    });
    let err = acquire_via(addr).await;
    let text = err.to_string();
    assert!(!text.chars().any(azmutex::error::is_unsafe_char), "{text:?}");
    assert!(text.contains("\\u{1b}[31mred\\u{1b}[0m & \\u{202e}txt"), "{text}");
}

mod tls {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    pub struct Server {
        pub addr: SocketAddr,
        pub ca_pem: String,
    }

    /// A TLS server on loopback with a certificate from its own CA for `names`, valid until
    /// `expired` says otherwise. It only handshakes.
    pub fn server(names: &[&str], expired: bool) -> Server {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        if expired {
            leaf.not_before = rcgen::date_time_ymd(2019, 1, 1);
            leaf.not_after = rcgen::date_time_ymd(2020, 1, 1);
        }
        let leaf = leaf.signed_by(&leaf_key, &issuer).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(leaf.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            )
            .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut tcp) = conn else { return };
                let config = config.clone();
                std::thread::spawn(move || {
                    let Ok(mut tls) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    let started = Instant::now();
                    while tls.is_handshaking() && started.elapsed() < Duration::from_secs(10) {
                        if tls.complete_io(&mut tcp).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Server {
            addr,
            ca_pem: ca_cert.pem(),
        }
    }
}

async fn tls_error(endpoint: String, ca: Option<&str>) -> (Error, Duration) {
    let cs = format!(
        "AccountName=devstoreaccount1;AccountKey={};BlobEndpoint={endpoint}",
        common::DEV_KEY
    );
    let config = StorageConfig::parse_connection_string(&cs).unwrap();
    let mut options = ClientOptions::default();
    options.retry.call_timeout = Duration::from_secs(10);
    if let Some(ca) = ca {
        options.ca_certificates_pem.push(ca.as_bytes().to_vec());
    }
    let mutex = AzureMutex::builder(config, "locks")
        .client_options(options)
        .build()
        .unwrap();
    let started = Instant::now();
    let err = mutex
        .acquire("job", LeaseDuration::seconds(15).unwrap())
        .await
        .unwrap_err();
    (err, started.elapsed())
}

/// Item 4: TLS failures are configuration errors, named, and not retried for the whole timeout.
#[tokio::test]
async fn tls_failures_are_named_and_not_retried() {
    let untrusted = tls::server(&["localhost"], false);
    let mismatched = tls::server(&["other.example"], false);
    let expired = tls::server(&["localhost"], true);
    // A plain HTTP server answers the ClientHello's bytes with an HTTP error, as servers do.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let plain = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            let mut buf = [0u8; 512];
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    let cases = [
        (
            format!("https://localhost:{}/a", untrusted.addr.port()),
            None,
            TlsProblem::UnknownIssuer,
        ),
        (
            format!("https://localhost:{}/a", mismatched.addr.port()),
            Some(mismatched.ca_pem.as_str()),
            TlsProblem::NameMismatch,
        ),
        (
            format!("https://localhost:{}/a", expired.addr.port()),
            Some(expired.ca_pem.as_str()),
            TlsProblem::Expired,
        ),
        (
            format!("https://127.0.0.1:{}/a", plain.port()),
            None,
            TlsProblem::NotTls,
        ),
    ];
    for (endpoint, ca, expected) in cases {
        let (err, took) = tls_error(endpoint.clone(), ca).await;
        match &err {
            Error::Tls { problem } => assert_eq!(problem, &expected, "{endpoint}"),
            other => panic!("{endpoint}: not a TLS error: {other}"),
        }
        assert!(!err.is_transient());
        assert!(took < Duration::from_secs(2), "{endpoint}: {took:?}");
    }
}
