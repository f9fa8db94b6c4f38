//! The endpoint over real TCP on loopback: answers, `/healthz` both ways, and hostile clients
//! (oversize heads, slow and dribbling clients, too many connections, clients that leave early).
//! Timeouts here are generous ceilings for a busy machine, never assertions of speed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::Recorder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::*;

/// The longest any step may take before the test fails (a hang, not a slow machine).
const CEILING: Duration = Duration::from_secs(60);

/// A server on a free loopback port with `limits`, a registry holding one counter, and a
/// health flag (`true`: healthy).
struct Running {
    addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(limits: Limits) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("local address");
    let registry = Registry::new();
    let metadata = metrics::Metadata::new("test", metrics::Level::INFO, None);
    let key = metrics::Key::from_parts(
        "azmutex_requests_total",
        vec![metrics::Label::new("outcome", "success")],
    );
    registry.register_counter(&key, &metadata).increment(5);
    let healthy = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&healthy);
    let health = move || {
        if flag.load(Ordering::SeqCst) {
            Ok("holding lock \"a\"".to_string())
        } else {
            Err("lock \"a\" lost".to_string())
        }
    };
    let task = tokio::spawn(serve_with(listener, registry, health, limits));
    Running { addr, healthy, task }
}

/// Sends `request`, then reads until the server closes; the bytes read (empty if it closed or
/// reset the connection without an answer).
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    timeout(CEILING, async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let _ = stream.write_all(request).await;
        read_all(&mut stream).await
    })
    .await
    .expect("the server answered and closed in time")
}

/// Reads until end of stream; what came before a reset counts as read.
async fn read_all(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n").into_bytes()
}

/// The status code of an answer.
fn status(answer: &str) -> &str {
    answer.get(9..12).unwrap_or("")
}

/// An answer's body (after the blank line).
fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[tokio::test]
async fn metrics_and_healthz_are_answered() {
    let server = start(Limits::default()).await;
    let answer = exchange(server.addr, &get("/metrics")).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\r\nConnection: close\r\n"), "{answer}");
    let text = body(&answer);
    assert_eq!(
        text,
        "# TYPE azmutex_requests_total counter\nazmutex_requests_total{outcome=\"success\"} 5\n"
    );
    assert!(
        answer.contains(&format!("\r\nContent-Length: {}\r\n", text.len())),
        "{answer}"
    );

    // A query string and the absolute form name the same path.
    let answer = exchange(server.addr, &get("/metrics?x=1")).await;
    assert_eq!(status(&answer), "200", "{answer}");
    let answer = exchange(server.addr, &get("http://localhost/metrics")).await;
    assert_eq!(status(&answer), "200", "{answer}");
    // HTTP/1.0 and bare LF line ends are fine too.
    let answer = exchange(server.addr, b"GET /metrics HTTP/1.0\n\n").await;
    assert_eq!(status(&answer), "200", "{answer}");

    let answer = exchange(server.addr, &get("/healthz")).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert_eq!(body(&answer), "holding lock \"a\"\n");
    server.healthy.store(false, Ordering::SeqCst);
    let answer = exchange(server.addr, &get("/healthz")).await;
    assert!(answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{answer}");
    assert_eq!(body(&answer), "lock \"a\" lost\n");
    server.healthy.store(true, Ordering::SeqCst);
    assert_eq!(status(&exchange(server.addr, &get("/healthz")).await), "200");
}

#[tokio::test]
async fn head_gets_the_headers_without_the_body() {
    let server = start(Limits::default()).await;
    let answer = exchange(server.addr, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n"), "no body: {answer}");
    assert!(
        !answer.contains("Content-Length: 0\r\n"),
        "the GET body's length: {answer}"
    );
    let answer = exchange(server.addr, b"HEAD /healthz HTTP/1.1\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.ends_with("\r\n\r\n"),
        "{answer}"
    );
}

#[tokio::test]
async fn wrong_paths_methods_and_garbage_get_4xx() {
    let server = start(Limits::default()).await;
    let cases: &[(&[u8], &str)] = &[
        (b"GET / HTTP/1.1\r\n\r\n", "404"),
        (b"GET /metricsx HTTP/1.1\r\n\r\n", "404"),
        (b"GET /metrics/ HTTP/1.1\r\n\r\n", "404"),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "405"),
        (b"DELETE /healthz HTTP/1.1\r\n\r\n", "405"),
        (b"\x00\x01\x02garbage\r\n\r\n", "400"),
        (b"GET /metrics\r\n\r\n", "400"),
        (b"GET /metrics HTTP/2.0\r\n\r\n", "400"),
        (b"GET  /metrics HTTP/1.1\r\n\r\n", "400"),
        (b"GET metrics HTTP/1.1\r\n\r\n", "400"),
        (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", "400"),
        (b"GET /metrics HTTP/1.1\r\nBad Name: x\r\n\r\n", "400"),
        (b"GET /m\xffetrics HTTP/1.1\r\n\r\n", "400"),
        (b"G(T /metrics HTTP/1.1\r\n\r\n", "400"),
        (b"\r\n\r\n", "400"),
    ];
    for (request, expected) in cases {
        let answer = exchange(server.addr, request).await;
        assert_eq!(
            status(&answer),
            *expected,
            "{:?}: {answer}",
            String::from_utf8_lossy(request)
        );
        assert!(answer.contains("\r\nConnection: close\r\n"), "{answer}");
    }
    let answer = exchange(server.addr, b"PUT /metrics HTTP/1.1\r\n\r\n").await;
    assert!(answer.contains("\r\nAllow: GET, HEAD\r\n"), "{answer}");
    assert_eq!(status(&exchange(server.addr, &get("/metrics")).await), "200");
}

#[tokio::test]
async fn an_oversize_head_gets_431() {
    let server = start(Limits::default()).await;
    // No end of head within 8 KiB.
    let mut request = get("/metrics");
    request.truncate(request.len() - 2);
    request.extend(format!("X-Filler: {}\r\n", "a".repeat(9000)).bytes());
    let answer = exchange(server.addr, &request).await;
    assert!(
        answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{answer}"
    );
    // The same with an end: still too long.
    request.extend(b"\r\n");
    let answer = exchange(server.addr, &request).await;
    assert_eq!(status(&answer), "431", "{answer}");
    // One that just fits is answered.
    let mut request = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
    request.resize(8 * 1024 - 4, b'a');
    request.extend(b"\r\n\r\n");
    assert_eq!(status(&exchange(server.addr, &request).await), "200");
}

#[tokio::test]
async fn a_slow_client_is_dropped_and_others_are_served_meanwhile() {
    let limits = Limits {
        read_timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    let server = start(limits).await;
    // Half a request, and then nothing.
    let mut slow = TcpStream::connect(server.addr).await.expect("connect");
    slow.write_all(b"GET /metr").await.expect("write");
    // Others are served while it waits.
    for _ in 0..3 {
        assert_eq!(status(&exchange(server.addr, &get("/metrics")).await), "200");
    }
    // The server gives up on it without an answer.
    let answer = timeout(CEILING, read_all(&mut slow)).await.expect("dropped in time");
    assert_eq!(answer, "", "no answer to half a request");
    assert_eq!(status(&exchange(server.addr, &get("/healthz")).await), "200");
}

#[tokio::test]
async fn a_dribbling_client_gets_one_deadline_for_the_whole_head() {
    let limits = Limits {
        read_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let server = start(limits).await;
    let stream = TcpStream::connect(server.addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    // One byte every 100 ms: each read is quick, the head never ends. Only a deadline for the
    // whole head closes it (within the ceiling: a deadline per read never would).
    let dribble = tokio::spawn(async move {
        for byte in b"GET /metrics HTTP/1.1\r\nX: ".iter().chain(std::iter::repeat(&b'a')) {
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut buf = [0u8; 64];
    let closed = timeout(CEILING, reader.read(&mut buf)).await;
    dribble.abort();
    let read = closed.expect("the server kept a dribbling client for a whole minute");
    assert!(matches!(read, Ok(0) | Err(_)), "no answer expected: {read:?}");
    assert_eq!(status(&exchange(server.addr, &get("/metrics")).await), "200");
}

#[tokio::test]
async fn many_connections_at_once_are_all_served() {
    let limits = Limits {
        connections: 64,
        ..Limits::default()
    };
    let server = start(limits).await;
    let addr = server.addr;
    let clients: Vec<_> = (0..50)
        .map(|i| {
            let path = if i % 2 == 0 { "/metrics" } else { "/healthz" };
            tokio::spawn(async move { exchange(addr, &get(path)).await })
        })
        .collect();
    for client in clients {
        let answer = client.await.expect("client task");
        assert_eq!(status(&answer), "200", "{answer}");
    }
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once() {
    let limits = Limits {
        connections: 4,
        read_timeout: Duration::from_secs(600),
        ..Limits::default()
    };
    let server = start(limits).await;
    // Four silent clients take every slot (accepted in the order they connected).
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    // The fifth is closed without an answer, long before the silent ones time out.
    let answer = exchange(server.addr, &get("/metrics")).await;
    assert_eq!(answer, "", "over the cap: closed at once");
    // When they leave, their slots come back (freed as the server sees them close).
    drop(silent);
    let served = timeout(CEILING, async {
        loop {
            let answer = exchange(server.addr, &get("/metrics")).await;
            if status(&answer) == "200" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(served.is_ok(), "slots came back");
}

#[tokio::test]
async fn clients_that_leave_early_do_not_hurt_the_server() {
    let server = start(Limits::default()).await;
    // Connect and close at once.
    for _ in 0..5 {
        drop(TcpStream::connect(server.addr).await.expect("connect"));
    }
    // Half a request, then close.
    let mut half = TcpStream::connect(server.addr).await.expect("connect");
    half.write_all(b"GET /metrics HT").await.expect("write");
    drop(half);
    // A whole request, then close without reading the answer (the server's write may fail).
    for _ in 0..5 {
        let mut gone = TcpStream::connect(server.addr).await.expect("connect");
        gone.write_all(&get("/metrics")).await.expect("write");
        drop(gone);
    }
    // Reset instead of close (linger 0).
    let reset = TcpStream::connect(server.addr).await.expect("connect");
    reset.set_zero_linger().expect("linger");
    drop(reset);
    for _ in 0..3 {
        assert_eq!(status(&exchange(server.addr, &get("/metrics")).await), "200");
    }
    assert!(!server.task.is_finished(), "the server still runs");
}

#[tokio::test]
async fn stopping_the_server_ends_its_connections() {
    let limits = Limits {
        read_timeout: Duration::from_secs(600),
        ..Limits::default()
    };
    let server = start(limits).await;
    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    // Answered after the silent one was accepted (in connection order).
    assert_eq!(status(&exchange(server.addr, &get("/metrics")).await), "200");
    server.task.abort();
    let answer = timeout(CEILING, read_all(&mut silent))
        .await
        .expect("closed with the server");
    assert_eq!(answer, "");
    let refused = timeout(CEILING, TcpStream::connect(server.addr))
        .await
        .expect("connect attempt");
    assert!(refused.is_err(), "the listener is closed");
}

#[test]
fn heads_end_at_a_blank_line() {
    assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\n"), Some(18));
    assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
    assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
    assert_eq!(
        parse_request(b"GET /metrics?a=b HTTP/1.1\r\nHost: x\r\n\r\n"),
        Some(("GET", "/metrics"))
    );
    assert_eq!(parse_request(b"GET https://h:1 HTTP/1.1\r\n\r\n"), Some(("GET", "/")));
    assert_eq!(parse_request(b"GET ftp://h/metrics HTTP/1.1\r\n\r\n"), None);
    assert_eq!(parse_request(b"GET /a\x01b HTTP/1.1\r\n\r\n"), None);
    assert_eq!(parse_request(b"GET /a HTTP/1.1\r\nX: a\x01b\r\n\r\n"), None);
}
