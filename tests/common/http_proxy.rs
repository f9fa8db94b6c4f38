//! An HTTP-aware fault proxy for targeted faults: it reads each request, and for the first rule
//! that matches it answers in the rule's way. Every request goes upstream on a connection of its
//! own (`Connection: close` both ways), so one request's fault never disturbs another's.
//!
//! Faults: answer without forwarding (e.g. 503 `ServerBusy`: not applied), forward and then
//! answer 500 (applied, answer lost), forward and delay the answer, forward and rewrite a
//! response header, or swallow the request (blackhole).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Which requests a rule applies to.
#[derive(Clone, Debug)]
pub enum Match {
    /// `x-ms-lease-action: <action>`.
    LeaseAction(&'static str),
    /// `comp=<value>` in the query.
    Comp(&'static str),
    /// Every request.
    Any,
    /// `x-ms-version` newer than this one (or missing).
    VersionNewerThan(&'static str),
    /// `x-ms-lease-action: <action>` on a target (path and query) containing the second string.
    LeaseActionOn(&'static str, &'static str),
    /// A request header (first string, lower case) with this value (second string).
    Header(&'static str, &'static str),
}

/// The most requests with lease action `action` in any window of `window` among `seen`.
pub fn peak_rate(seen: &[Seen], action: &str, window: Duration) -> usize {
    let times: Vec<std::time::Instant> = seen
        .iter()
        .filter(|s| s.lease_action.as_deref() == Some(action))
        .map(|s| s.at)
        .collect();
    let mut best = 0;
    for (i, start) in times.iter().enumerate() {
        let n = times[i..]
            .iter()
            .take_while(|t| t.duration_since(*start) < window)
            .count();
        best = best.max(n);
    }
    best
}

/// What to do with a matching request.
#[derive(Clone, Debug)]
pub enum Action {
    /// Answer `status` with `x-ms-error-code: code` without forwarding.
    Respond(u16, &'static str),
    /// As `Respond`, with `Retry-After: <seconds>` (a throttling answer that asks to wait).
    RespondRetryAfter(u16, &'static str, u64),
    /// Forward, then throw the answer away and answer `status` (the request was applied).
    ForwardThenRespond(u16, &'static str),
    /// Forward, and hold the answer back this long.
    Delay(Duration),
    /// Hold the request back this long, then forward it (it reaches the service late).
    DelayRequest(Duration),
    /// Forward, and set (or with `None` remove) a response header.
    RewriteHeader(&'static str, Option<String>),
    /// Swallow the request; never answer.
    Blackhole,
    /// Answer without forwarding as Azure Stack Hub answers an `x-ms-version` it does not
    /// support: 400 `InvalidHeaderValue`, with the header named in the XML body.
    RefuseVersion,
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub when: Match,
    pub action: Action,
    /// How many more requests it applies to (`None`: all).
    pub times: Option<u32>,
}

/// One request the proxy saw: method, path with query, lease action, and the rule's action.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub lease_action: Option<String>,
    pub action: Option<Action>,
    /// The request's `x-ms-version`.
    pub version: Option<String>,
    /// When the proxy read it.
    pub at: std::time::Instant,
}

pub struct HttpProxy {
    pub addr: SocketAddr,
    rules: Arc<Mutex<Vec<Rule>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl HttpProxy {
    /// Starts a proxy to `upstream` on a thread and runtime of its own.
    pub fn start(upstream: SocketAddr) -> Self {
        let rules: Arc<Mutex<Vec<Rule>>> = Arc::default();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (r, s) = (rules.clone(), seen.clone());
        let addr = super::proxy::serve(move |conn| handle(conn, upstream, r.clone(), s.clone()));
        Self { addr, rules, seen }
    }

    /// Adds a rule (after the existing ones).
    pub fn add(&self, when: Match, action: Action, times: Option<u32>) {
        self.rules.lock().unwrap().push(Rule { when, action, times });
    }

    /// Removes all rules.
    pub fn clear(&self) {
        self.rules.lock().unwrap().clear();
    }

    /// What the proxy has seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests with lease action `action` it saw.
    pub fn count(&self, action: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.lease_action.as_deref() == Some(action))
            .count()
    }
}

struct Request {
    head: String,
    body: Vec<u8>,
}

async fn read_request(conn: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut body = buf[end + 4..].to_vec();
    let len = header(&head, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    while body.len() < len {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Request { head, body })
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// `head` with header `name` set to `value` (or removed), and `Connection: close`.
fn rewrite(head: &str, name: &str, value: Option<&str>) -> String {
    let mut lines: Vec<String> = head
        .lines()
        .filter(|l| {
            let n = l.split_once(':').map(|(n, _)| n.trim()).unwrap_or("");
            !n.eq_ignore_ascii_case(name) && !n.eq_ignore_ascii_case("connection")
        })
        .map(str::to_string)
        .collect();
    if let Some(v) = value {
        lines.push(format!("{name}: {v}"));
    }
    lines.push("Connection: close".into());
    lines.join("\r\n") + "\r\n\r\n"
}

async fn handle(mut conn: TcpStream, upstream: SocketAddr, rules: Arc<Mutex<Vec<Rule>>>, seen: Arc<Mutex<Vec<Seen>>>) {
    let Some(req) = read_request(&mut conn).await else {
        return;
    };
    let first = req.head.lines().next().unwrap_or("").to_string();
    let mut parts = first.split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let lease_action = header(&req.head, "x-ms-lease-action");
    let version = header(&req.head, "x-ms-version");
    let action = {
        let mut rules = rules.lock().unwrap();
        let hit = rules.iter_mut().find(|r| {
            r.times != Some(0)
                && match &r.when {
                    Match::LeaseAction(a) => lease_action.as_deref() == Some(*a),
                    Match::Comp(c) => target.contains(&format!("comp={c}")),
                    Match::Any => true,
                    Match::VersionNewerThan(v) => version.as_deref().is_none_or(|got| got > *v),
                    Match::LeaseActionOn(a, t) => lease_action.as_deref() == Some(*a) && target.contains(t),
                    Match::Header(n, v) => header(&req.head, n).as_deref() == Some(*v),
                }
        });
        hit.map(|r| {
            if let Some(t) = r.times.as_mut() {
                *t -= 1;
            }
            r.action.clone()
        })
    };
    seen.lock().unwrap().push(Seen {
        method: method.clone(),
        target,
        lease_action,
        action: action.clone(),
        version: version.clone(),
        at: std::time::Instant::now(),
    });
    let error = |status: u16, code: &str| {
        format!("HTTP/1.1 {status} Fault\r\nx-ms-error-code: {code}\r\nx-ms-request-id: fault-proxy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    };
    match &action {
        Some(Action::Respond(status, code)) => {
            let _ = conn.write_all(error(*status, code).as_bytes()).await;
            return;
        }
        Some(Action::RespondRetryAfter(status, code, secs)) => {
            let answer = format!(
                "HTTP/1.1 {status} Fault\r\nx-ms-error-code: {code}\r\nRetry-After: {secs}\r\nx-ms-request-id: fault-proxy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = conn.write_all(answer.as_bytes()).await;
            return;
        }
        Some(Action::RefuseVersion) => {
            let body = format!(
                "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>InvalidHeaderValue</Code><Message>The value for one of the HTTP headers is not in the correct format.\nRequestId:00000000-0000-0000-0000-000000000000\nTime:2026-11-23T00:00:00.0000000Z</Message><HeaderName>x-ms-version</HeaderName><HeaderValue>{}</HeaderValue></Error>",
                version.as_deref().unwrap_or("")
            );
            // A HEAD answer (Get Blob Properties) has no body: only the error code says it.
            let body = if method == "HEAD" { String::new() } else { body };
            let answer = format!(
                "HTTP/1.1 400 The value for one of the HTTP headers is not in the correct format.\r\nContent-Type: application/xml\r\nx-ms-error-code: InvalidHeaderValue\r\nx-ms-request-id: stack-hub\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(answer.as_bytes()).await;
            return;
        }
        Some(Action::Blackhole) => {
            let mut sink = [0u8; 1024];
            while matches!(conn.read(&mut sink).await, Ok(n) if n > 0) {}
            return;
        }
        Some(Action::DelayRequest(d)) => tokio::time::sleep(*d).await,
        _ => {}
    }
    // Forward on a fresh connection and read the whole answer.
    let Ok(mut up) = TcpStream::connect(upstream).await else {
        return;
    };
    let head = rewrite(&req.head, "connection", None);
    if up.write_all(head.as_bytes()).await.is_err() || up.write_all(&req.body).await.is_err() {
        return;
    }
    let mut answer = Vec::new();
    if up.read_to_end(&mut answer).await.is_err() {
        return;
    }
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(answer.len().saturating_sub(4));
    let (ahead, abody) = (
        String::from_utf8_lossy(&answer[..split]).into_owned(),
        answer[(split + 4).min(answer.len())..].to_vec(),
    );
    let out_head = match &action {
        Some(Action::ForwardThenRespond(status, code)) => {
            let _ = conn.write_all(error(*status, code).as_bytes()).await;
            return;
        }
        Some(Action::Delay(d)) => {
            tokio::time::sleep(*d).await;
            rewrite(&ahead, "connection", None)
        }
        Some(Action::RewriteHeader(name, value)) => {
            let h = rewrite(&ahead, name, value.as_deref());
            h
        }
        _ => rewrite(&ahead, "connection", None),
    };
    let _ = conn.write_all(out_head.as_bytes()).await;
    let _ = conn.write_all(&abody).await;
}
