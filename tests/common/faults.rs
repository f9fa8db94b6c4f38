//! A fault-injecting HTTP/1.1 proxy between one client and Azurite, for the chaos checker.
//!
//! Unlike [`super::proxy::Proxy`], which copies bytes, this proxy reads whole requests and whole
//! answers, so that a fault hits one request cleanly: the server applied it or it did not, and
//! the client got the real answer, a fake one, or none. The current [`Fault`] is read when a
//! request has fully arrived (and, for a blackhole, again before an answer is written back).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the proxy does to the requests that arrive while it is set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Forward requests and answers.
    Healthy,
    /// Nothing is forwarded and nothing answered (a network partition): requests vanish, and
    /// answers the server gives meanwhile are dropped too.
    Blackhole,
    /// Requests reach the server; its answers are dropped and the connection goes silent.
    DropAnswers,
    /// Answers are held back this long after the server gave them.
    Delay(Duration),
    /// The connection is reset (RST): before forwarding, or after the server has answered.
    Reset,
    /// The proxy answers `500 InternalError` itself; the server never sees the request.
    Answer500,
    /// The proxy answers `503 ServerBusy` itself; the server never sees the request.
    Answer503,
    /// The request is applied by the server, but the client gets `500 InternalError` instead of
    /// the server's answer.
    Fail500AfterForward,
    /// The proxy answers `503 ServerBusy` with `Retry-After: <seconds>` itself; the server never
    /// sees the request.
    Answer503RetryAfter(u32),
    /// About half the requests with an `x-ms-version` newer than [`OLDEST_VERSION`] (drawn per
    /// request) get the answer Azure Stack Hub gives a version it does not support:
    /// `400 InvalidHeaderValue` naming `x-ms-version`, not forwarded, as from one node of a
    /// service that does not know the newer version yet. The others are forwarded.
    RefuseVersion,
}

impl Fault {
    /// Short name used in summaries.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Healthy => "healthy",
            Fault::Blackhole => "blackhole",
            Fault::DropAnswers => "drop-answers",
            Fault::Delay(_) => "delay",
            Fault::Reset => "reset",
            Fault::Answer500 => "answer-500",
            Fault::Answer503 => "answer-503",
            Fault::Fail500AfterForward => "500-after-forward",
            Fault::Answer503RetryAfter(_) => "503-retry-after",
            Fault::RefuseVersion => "refuse-version",
        }
    }

    /// Every faulty kind, in a fixed order (for summaries).
    pub const KINDS: [&'static str; 9] = [
        "blackhole",
        "drop-answers",
        "delay",
        "reset",
        "answer-500",
        "answer-503",
        "500-after-forward",
        "503-retry-after",
        "refuse-version",
    ];
}

/// The version [`Fault::RefuseVersion`] never refuses (the one azmutex steps down to).
pub const OLDEST_VERSION: &str = "2017-11-09";

/// One request as it fully arrived at the proxy.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub at: Instant,
    /// `x-ms-lease-action`, lowercased.
    pub lease_action: Option<String>,
    /// `x-ms-lease-id`.
    pub lease_id: Option<String>,
    /// The fault in force when it arrived ([`Fault::kind`]; `healthy` when none).
    pub fault: &'static str,
}

#[derive(Default)]
struct Shared {
    fault: Mutex<Option<Fault>>,
    /// Requests affected, per index in [`Fault::KINDS`].
    hits: [AtomicU64; Fault::KINDS.len()],
    forwarded: AtomicU64,
    requests: Mutex<Vec<RequestRecord>>,
    /// Requests in a million answered `503 ServerBusy` while healthy (see
    /// [`FaultProxy::answer_503_per_million`]).
    random_503: AtomicU64,
    /// Whether [`RequestRecord`]s are kept (off for long runs at high rates).
    not_recording: std::sync::atomic::AtomicBool,
    /// Client connections open now.
    live: AtomicU64,
}

impl Shared {
    fn current(&self) -> Fault {
        self.fault.lock().unwrap().unwrap_or(Fault::Healthy)
    }

    fn hit(&self, f: Fault) {
        if let Some(i) = Fault::KINDS.iter().position(|k| *k == f.kind()) {
            self.hits[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// TLS towards the target: the connector and the name the target's certificate must show.
pub type UpstreamTls = (tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>);

/// A loopback proxy to one target whose behaviour is switched with [`FaultProxy::set`].
/// It runs on a thread and runtime of its own, so that it outlives any test runtime.
pub struct FaultProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// Starts a healthy proxy to `target`. `seed` drives its own random choices (reset before or
    /// after forwarding).
    pub fn start(target: SocketAddr, seed: u64) -> FaultProxy {
        FaultProxy::start_with(target, seed, None)
    }

    /// Like [`FaultProxy::start`], but speaking TLS to the target when `tls` is given (clients
    /// still speak plain HTTP to the proxy).
    pub fn start_with(target: SocketAddr, seed: u64, tls: Option<UpstreamTls>) -> FaultProxy {
        let shared = Arc::new(Shared::default());
        let state = shared.clone();
        let rng = Mutex::new(fastrand::Rng::with_seed(seed));
        let addr = super::proxy::serve(move |conn| {
            let _ = conn.set_nodelay(true);
            let conn_seed = rng.lock().unwrap().u64(..);
            handle(conn, target, tls.clone(), state.clone(), conn_seed)
        });
        FaultProxy { addr, shared }
    }

    /// Switches behaviour for requests from now on.
    pub fn set(&self, fault: Fault) {
        *self.shared.fault.lock().unwrap() = Some(fault);
    }

    /// While healthy, answers `per_million` requests in a million `503 ServerBusy` itself
    /// (drawn per request; counted as `answer-503`).
    pub fn answer_503_per_million(&self, per_million: u64) {
        self.shared.random_503.store(per_million, Ordering::Relaxed);
    }

    /// Client connections open now.
    pub fn live_connections(&self) -> u64 {
        self.shared.live.load(Ordering::Relaxed)
    }

    /// Stops keeping a [`RequestRecord`] per request (a long run at hundreds of requests a
    /// second would otherwise grow without bound).
    pub fn stop_recording(&self) {
        self.shared.not_recording.store(true, Ordering::Relaxed);
    }

    /// Every request that fully arrived so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Requests affected so far, per kind in [`Fault::KINDS`] order, and requests forwarded.
    pub fn stats(&self) -> ([u64; Fault::KINDS.len()], u64) {
        let mut out = [0; Fault::KINDS.len()];
        for (o, h) in out.iter_mut().zip(&self.shared.hits) {
            *o = h.load(Ordering::Relaxed);
        }
        (out, self.shared.forwarded.load(Ordering::Relaxed))
    }
}

fn canned(status: u16) -> Vec<u8> {
    let (reason, code) = if status == 503 {
        ("Service Unavailable", "ServerBusy")
    } else {
        ("Internal Server Error", "InternalError")
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nx-ms-error-code: {code}\r\nx-ms-request-id: chaos-proxy\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn retry_after(secs: u32) -> Vec<u8> {
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nx-ms-error-code: ServerBusy\r\nRetry-After: {secs}\r\nx-ms-request-id: chaos-proxy\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// Azure Stack Hub's answer to an `x-ms-version` it does not support (as
/// [`super::http_proxy::Action::RefuseVersion`]); a HEAD answer has no body.
fn refuse_version(version: &str, is_head: bool) -> Vec<u8> {
    let body = if is_head {
        String::new()
    } else {
        format!(
            "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>InvalidHeaderValue</Code><Message>The value for one of the HTTP headers is not in the correct format.\nRequestId:00000000-0000-0000-0000-000000000000\nTime:2026-11-23T00:00:00.0000000Z</Message><HeaderName>x-ms-version</HeaderName><HeaderValue>{version}</HeaderValue></Error>"
        )
    };
    let mut out = format!(
        "HTTP/1.1 400 The value for one of the HTTP headers is not in the correct format.\r\nContent-Type: application/xml\r\nx-ms-error-code: InvalidHeaderValue\r\nx-ms-request-id: chaos-proxy\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// A header's value in a raw HTTP head (names case-insensitive).
fn header_value(bytes: &[u8], name: &str) -> Option<String> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

async fn handle(client: TcpStream, target: SocketAddr, tls: Option<UpstreamTls>, shared: Arc<Shared>, seed: u64) {
    struct Live(Arc<Shared>);
    impl Drop for Live {
        fn drop(&mut self) {
            self.0.live.fetch_sub(1, Ordering::Relaxed);
        }
    }
    shared.live.fetch_add(1, Ordering::Relaxed);
    let _live = Live(shared.clone());
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut client = Conn::new(client);
    let mut server: Option<Conn<Box<dyn Io>>> = None;
    loop {
        let Ok(Some(req)) = read_message(&mut client, None).await else {
            return;
        };
        let mut fault = shared.current();
        let per_million = shared.random_503.load(Ordering::Relaxed);
        if fault == Fault::Healthy && per_million > 0 && rng.u64(..1_000_000) < per_million {
            fault = Fault::Answer503;
        }
        if !shared.not_recording.load(Ordering::Relaxed) {
            shared.requests.lock().unwrap().push(RequestRecord {
                at: Instant::now(),
                lease_action: header_value(&req.bytes, "x-ms-lease-action").map(|a| a.to_ascii_lowercase()),
                lease_id: header_value(&req.bytes, "x-ms-lease-id"),
                fault: fault.kind(),
            });
        }
        match fault {
            Fault::Answer503RetryAfter(secs) => {
                shared.hit(fault);
                if client.stream.write_all(&retry_after(secs)).await.is_err() {
                    return;
                }
                continue;
            }
            Fault::RefuseVersion
                if header_value(&req.bytes, "x-ms-version").is_none_or(|v| v.as_str() > OLDEST_VERSION)
                    && rng.bool() =>
            {
                shared.hit(fault);
                let version = header_value(&req.bytes, "x-ms-version").unwrap_or_default();
                if client
                    .stream
                    .write_all(&refuse_version(&version, req.is_head))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            Fault::Blackhole => {
                shared.hit(fault);
                return client.swallow().await;
            }
            Fault::Answer500 | Fault::Answer503 => {
                shared.hit(fault);
                let status = if fault == Fault::Answer503 { 503 } else { 500 };
                if client.stream.write_all(&canned(status)).await.is_err() {
                    return;
                }
                continue;
            }
            Fault::Reset if rng.bool() => {
                shared.hit(fault);
                return client.reset();
            }
            _ => {}
        }
        let answer = match exchange(&mut server, target, tls.as_ref(), &req).await {
            Ok(a) => a,
            Err(_) => {
                // The server closed or failed mid-answer: the client sees a reset.
                return client.reset();
            }
        };
        shared.forwarded.fetch_add(1, Ordering::Relaxed);
        let answer = match fault {
            Fault::Healthy | Fault::RefuseVersion => answer,
            Fault::DropAnswers => {
                shared.hit(fault);
                return client.swallow().await;
            }
            Fault::Delay(d) => {
                shared.hit(fault);
                tokio::time::sleep(d).await;
                answer
            }
            Fault::Reset => {
                shared.hit(fault);
                return client.reset();
            }
            Fault::Fail500AfterForward => {
                shared.hit(fault);
                canned(500)
            }
            Fault::Blackhole | Fault::Answer500 | Fault::Answer503 | Fault::Answer503RetryAfter(_) => unreachable!(),
        };
        if shared.current() == Fault::Blackhole {
            shared.hit(Fault::Blackhole);
            return client.swallow().await;
        }
        if client.stream.write_all(&answer).await.is_err() {
            return;
        }
    }
}

/// Sends `req` on the (re)connected server connection and reads the whole answer.
async fn exchange(
    server: &mut Option<Conn<Box<dyn Io>>>,
    target: SocketAddr,
    tls: Option<&UpstreamTls>,
    req: &Message,
) -> std::io::Result<Vec<u8>> {
    // A pooled server connection may have been closed by the server while idle: on a failure
    // before any answer byte, retry once on a fresh connection.
    for fresh in [false, true] {
        if server.is_none() || fresh {
            let s = TcpStream::connect(target).await?;
            let _ = s.set_nodelay(true);
            let stream: Box<dyn Io> = match tls {
                None => Box::new(s),
                Some((connector, name)) => Box::new(connector.connect(name.clone(), s).await?),
            };
            *server = Some(Conn::new(stream));
        }
        let conn = server.as_mut().unwrap();
        if conn.stream.write_all(&req.bytes).await.is_err() {
            continue;
        }
        match read_message(conn, Some(req.is_head)).await {
            Ok(Some(answer)) => {
                if answer.close {
                    *server = None;
                }
                return Ok(answer.bytes);
            }
            Ok(None) if !fresh => continue,
            Ok(None) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Err(e) => {
                *server = None;
                return Err(e);
            }
        }
    }
    Err(std::io::ErrorKind::UnexpectedEof.into())
}

/// A byte stream towards the target: plain TCP or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Conn<S = TcpStream> {
    stream: S,
    buf: Vec<u8>,
}

struct Message {
    bytes: Vec<u8>,
    is_head: bool,
    /// The answer ends the connection (`Connection: close` or read to EOF).
    close: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn new(stream: S) -> Self {
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Reads more bytes into the buffer; `Ok(false)` at EOF.
    async fn fill(&mut self) -> std::io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    async fn take(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await? {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    async fn line(&mut self) -> std::io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                return Ok(self.buf.drain(..i + 2).collect());
            }
            if !self.fill().await? {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

impl Conn<TcpStream> {
    /// Reads and discards everything until the peer closes: a connection nobody answers.
    async fn swallow(mut self) {
        while let Ok(true) = self.fill().await {
            self.buf.clear();
        }
    }

    /// Closes with a TCP reset.
    fn reset(self) {
        let _ = self.stream.set_zero_linger();
        drop(self.stream);
    }
}

/// Reads one HTTP/1.1 message: a request (`answer_to_head` None) or an answer (to a HEAD
/// request or not). `Ok(None)` on a clean EOF before the first byte.
async fn read_message<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    answer_to_head: Option<bool>,
) -> std::io::Result<Option<Message>> {
    let head_end = loop {
        if let Some(i) = conn.buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if !conn.fill().await? {
            if conn.buf.is_empty() {
                return Ok(None);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    };
    let mut bytes: Vec<u8> = conn.buf.drain(..head_end).collect();
    let head = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
    let first = head.lines().next().unwrap_or_default().to_string();
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.strip_prefix(':'))
                .map(|v| v.trim().to_string())
        })
    };
    let is_head = first.starts_with("head ");
    let close = header("connection").is_some_and(|v| v.contains("close"));
    let status: Option<u16> = answer_to_head.and_then(|_| first.split(' ').nth(1).and_then(|s| s.parse().ok()));
    let no_body = answer_to_head == Some(true) || status.is_some_and(|s| s < 200 || s == 204 || s == 304);
    if no_body {
    } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let line = conn.line().await?;
            let size_text = String::from_utf8_lossy(&line);
            let size = usize::from_str_radix(size_text.trim().split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
            bytes.extend_from_slice(&line);
            if size == 0 {
                loop {
                    let trailer = conn.line().await?;
                    bytes.extend_from_slice(&trailer);
                    if trailer == b"\r\n" {
                        break;
                    }
                }
                break;
            }
            bytes.extend(conn.take(size + 2).await?);
        }
    } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        bytes.extend(conn.take(len).await?);
    } else if answer_to_head.is_some() {
        // An answer without a length runs to EOF.
        while conn.fill().await? {}
        bytes.append(&mut conn.buf);
        return Ok(Some(Message {
            bytes,
            is_head,
            close: true,
        }));
    }
    Ok(Some(Message { bytes, is_head, close }))
}
