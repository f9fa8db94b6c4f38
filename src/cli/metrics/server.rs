//! The `--metrics` HTTP endpoint: `GET /metrics` (the registry in the Prometheus text format)
//! and `GET /healthz`, one request per connection.
//!
//! It runs on the runtime that renews the lease, so it only does async I/O, bounds everything a
//! client controls (request head size, time to send it and to read the answer, connections at
//! once) and never panics on input. It is a scrape target on a trusted network, not a web
//! server: no keep-alive, no bodies, no TLS.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::timeout;

use super::registry::Registry;

/// The `Content-Type` of `/metrics`: the Prometheus text format, version 0.0.4.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `Content-Type` of `/healthz` and of error answers.
const TEXT: &str = "text/plain; charset=utf-8";

/// A pause after a failed `accept` (such as too many open files), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long a closing connection's unread input is drained (so the answer is not lost to a
/// reset), and how much of it at most.
const LINGER: Duration = Duration::from_secs(2);
/// See [`LINGER`].
const LINGER_BYTES: usize = 64 * 1024;

/// What a client may cost the server.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// The longest request head (request line and headers); a longer one gets 431.
    pub head_bytes: usize,
    /// The time a client has to send its whole request head; then the connection is dropped
    /// without an answer.
    pub read_timeout: Duration,
    /// The time a client has to take the whole answer; then the connection is dropped.
    pub write_timeout: Duration,
    /// Connections served at once; one more is closed as soon as it is accepted.
    pub connections: usize,
}

impl Default for Limits {
    /// 8 KiB of head, 5 s to send it, 10 s to read the answer, 32 connections.
    fn default() -> Self {
        Self {
            head_bytes: 8 * 1024,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            connections: 32,
        }
    }
}

/// Serves `/metrics` from `registry` and `/healthz` from `health` (`Ok(text)`: 200,
/// `Err(text)`: 503) on `listener` with the default [`Limits`], until the future is dropped
/// (a spawned task aborted), which also ends the connections being served. Spawn it on the
/// runtime: `tokio::spawn(serve(listener, registry, health))`. `health` runs on the runtime at
/// every `/healthz` request: it must answer at once (read a flag or a watch), never block.
pub(crate) async fn serve<H>(listener: TcpListener, registry: Registry, health: H)
where
    H: Fn() -> Result<String, String> + Send + Sync + 'static,
{
    serve_with(listener, registry, health, Limits::default()).await
}

/// [`serve`] with other [`Limits`].
pub(crate) async fn serve_with<H>(listener: TcpListener, registry: Registry, health: H, limits: Limits)
where
    H: Fn() -> Result<String, String> + Send + Sync + 'static,
{
    let endpoint = Arc::new(Endpoint {
        registry,
        health,
        limits,
    });
    let slots = Arc::new(Semaphore::new(limits.connections.min(Semaphore::MAX_PERMITS)));
    // Connections' tasks, aborted with this future (a stopped server leaves none behind).
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {} // reap the finished ones
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::debug!(%error, "metrics endpoint: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!("metrics endpoint: too many connections, closing a new one");
            drop(stream);
            continue;
        };
        let endpoint = Arc::clone(&endpoint);
        connections.spawn(async move {
            endpoint.answer(stream).await;
            drop(slot);
        });
    }
}

/// What every connection's task shares.
struct Endpoint<H> {
    /// The metrics `/metrics` renders.
    registry: Registry,
    /// What `/healthz` says.
    health: H,
    /// What a client may cost.
    limits: Limits,
}

/// How reading a request head ended.
enum Head {
    /// The head, up to and including its blank line.
    Complete(Vec<u8>),
    /// More than the limit without a blank line.
    TooLarge,
    /// The client closed (or the connection failed) first.
    Closed,
}

impl<H> Endpoint<H>
where
    H: Fn() -> Result<String, String> + Send + Sync + 'static,
{
    /// Reads one request from `stream`, answers it and closes the connection.
    async fn answer(&self, mut stream: TcpStream) {
        let head = match timeout(self.limits.read_timeout, read_head(&mut stream, self.limits.head_bytes)).await {
            Ok(Head::Complete(head)) => head,
            Ok(Head::TooLarge) => {
                let answer = error(431, "Request Header Fields Too Large", "");
                return self.send(stream, &answer).await;
            }
            Ok(Head::Closed) | Err(_) => return, // gone, or too slow: no answer
        };
        let answer = self.respond(&head);
        self.send(stream, &answer).await;
    }

    /// Writes `answer`, closes the sending side, and drains what the client still sends for a
    /// moment (closing a socket with unread input resets it, and the client may lose the
    /// answer).
    async fn send(&self, mut stream: TcpStream, answer: &[u8]) {
        let sent = timeout(self.limits.write_timeout, async {
            stream.write_all(answer).await?;
            stream.shutdown().await
        })
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            return;
        }
        let _ = timeout(LINGER, async {
            let mut buf = [0u8; 1024];
            let mut drained = 0;
            while drained < LINGER_BYTES {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
        })
        .await;
    }

    /// The whole answer (status line, headers, body) to the request whose head is `head`.
    fn respond(&self, head: &[u8]) -> Vec<u8> {
        let Some((method, path)) = parse_request(head) else {
            return error(400, "Bad Request", "");
        };
        let metrics = match path {
            "/metrics" => true,
            "/healthz" => false,
            _ => return error(404, "Not Found", ""),
        };
        let head_only = match method {
            "GET" => false,
            "HEAD" => true,
            _ => return error(405, "Method Not Allowed", "Allow: GET, HEAD\r\n"),
        };
        if metrics {
            let body = self.registry.render();
            return response(200, "OK", METRICS_CONTENT_TYPE, body.as_bytes(), head_only, "");
        }
        let (status, reason, mut text) = match (self.health)() {
            Ok(text) => (200, "OK", text),
            Err(text) => (503, "Service Unavailable", text),
        };
        if !text.ends_with('\n') {
            text.push('\n');
        }
        response(status, reason, TEXT, text.as_bytes(), head_only, "")
    }
}

/// Reads from `stream` until the blank line that ends a request head (CRLF CRLF, or bare LF
/// LF), at most `limit` bytes.
async fn read_head(stream: &mut TcpStream, limit: usize) -> Head {
    let mut head = vec![0u8; limit];
    let mut len = 0;
    while len < limit {
        let n = match stream.read(&mut head[len..]).await {
            Ok(0) | Err(_) => return Head::Closed,
            Ok(n) => n,
        };
        // The end may straddle two reads: look from a few bytes back.
        let from = len.saturating_sub(3);
        len += n;
        if let Some(end) = head_end(&head[from..len]) {
            head.truncate(from + end);
            return Head::Complete(head);
        }
    }
    Head::TooLarge
}

/// Where the head in `bytes` ends (just after its blank line), if it does.
fn head_end(bytes: &[u8]) -> Option<usize> {
    (0..bytes.len()).find_map(|i| {
        let rest = &bytes[i..];
        if rest.starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if rest.starts_with(b"\n\n") {
            Some(i + 2)
        } else if rest.starts_with(b"\n\r\n") {
            Some(i + 3)
        } else {
            None
        }
    })
}

/// The method and path of a request head (query and fragment left out), or `None` if it is
/// not HTTP/1.x: a request line of three parts (a token method, an origin-form or absolute
/// target, `HTTP/1.0` or `HTTP/1.1`), then `name: value` header lines.
fn parse_request(head: &[u8]) -> Option<(&str, &str)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split('\n').map(|line| line.strip_suffix('\r').unwrap_or(line));
    let mut parts = lines.next()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !is_token(method) || !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return None;
    }
    for line in lines.take_while(|line| !line.is_empty()) {
        let (name, value) = line.split_once(':')?;
        if !is_token(name) || value.chars().any(|c| c.is_control() && c != '\t') {
            return None;
        }
    }
    let path = match target.split_once("://") {
        // absolute-form (`GET http://host:port/metrics`), which servers must accept
        Some(("http" | "https", rest)) => rest.find('/').map_or("/", |at| &rest[at..]),
        Some(_) => return None,
        None => target,
    };
    if !path.starts_with('/') || path.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return None;
    }
    let end = path.find(['?', '#']).unwrap_or(path.len());
    Some((method, &path[..end]))
}

/// Whether `s` is an HTTP token (RFC 9110 `tchar`s, at least one).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// An answer with `body` (left out if `head_only`, its length still given) and `extra` header
/// lines (each ending in CRLF).
fn response(status: u16, reason: &str, content_type: &str, body: &[u8], head_only: bool, extra: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

/// An error answer whose body is its reason phrase.
fn error(status: u16, reason: &str, extra: &str) -> Vec<u8> {
    let body = format!("{reason}\n");
    response(status, reason, TEXT, body.as_bytes(), false, extra)
}

#[cfg(test)]
mod tests;
