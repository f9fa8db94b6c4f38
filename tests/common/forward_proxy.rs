//! A forward proxy for the tests, as a corporate proxy would be: `CONNECT host:port` tunnels
//! (HTTPS) and absolute-form requests (`GET http://host:port/path`, plain HTTP). It records
//! what it saw, can demand `Proxy-Authorization`, and routes host names to loopback addresses
//! (so a custom domain such as `locks.contoso.test` needs no DNS), optionally rewriting the
//! `Host` header of plain-HTTP requests the way a custom domain maps to its account.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One request the proxy saw.
#[derive(Clone, Debug)]
pub struct Seen {
    /// `CONNECT` or the HTTP method.
    pub method: String,
    /// `host:port` (CONNECT) or the absolute URL.
    pub target: String,
    /// The decoded `Proxy-Authorization: Basic` credentials, `user:password`.
    pub credentials: Option<String>,
}

#[derive(Default)]
struct Config {
    /// `host:port` as the client asked for it → where to connect.
    routes: HashMap<String, SocketAddr>,
    /// `host:port` → the `Host` header to send upstream instead.
    host_rewrites: HashMap<String, String>,
    /// `user:password` the proxy demands (407 otherwise).
    credentials: Option<String>,
}

pub struct ForwardProxy {
    pub addr: SocketAddr,
    config: Arc<Mutex<Config>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl ForwardProxy {
    pub fn start() -> Self {
        let config: Arc<Mutex<Config>> = Arc::default();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (c, s) = (config.clone(), seen.clone());
        let addr = super::proxy::serve(move |conn| handle(conn, c.clone(), s.clone()));
        Self { addr, config, seen }
    }

    /// Requests for `host_port` go to `to`.
    pub fn route(&self, host_port: &str, to: SocketAddr) {
        self.config.lock().unwrap().routes.insert(host_port.to_string(), to);
    }

    /// Plain-HTTP requests for `host_port` reach upstream with `Host: host`.
    pub fn rewrite_host(&self, host_port: &str, host: &str) {
        self.config
            .lock()
            .unwrap()
            .host_rewrites
            .insert(host_port.to_string(), host.to_string());
    }

    /// Demands `Proxy-Authorization: Basic` with `user:password`.
    pub fn require(&self, user_password: &str) {
        self.config.lock().unwrap().credentials = Some(user_password.to_string());
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The proxy URL, with credentials if given.
    pub fn url(&self, credentials: Option<&str>) -> String {
        match credentials {
            Some(c) => format!("http://{c}@{}", self.addr),
            None => format!("http://{}", self.addr),
        }
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

async fn handle(mut conn: TcpStream, config: Arc<Mutex<Config>>, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut rest = buf[end + 4..].to_vec();
    let first = head.lines().next().unwrap_or("").to_string();
    let mut parts = first.split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let credentials = header(&head, "proxy-authorization")
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    seen.lock().unwrap().push(Seen {
        method: method.clone(),
        target: target.clone(),
        credentials: credentials.clone(),
    });
    let (required, routes, rewrites) = {
        let c = config.lock().unwrap();
        (c.credentials.clone(), c.routes.clone(), c.host_rewrites.clone())
    };
    if required.is_some() && required != credentials {
        let _ = conn
            .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await;
        return;
    }
    let host_port = if method == "CONNECT" {
        target.clone()
    } else {
        let Some(after) = target.strip_prefix("http://") else {
            let _ = conn
                .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
            return;
        };
        let hp = after.split('/').next().unwrap_or("");
        if hp.contains(':') {
            hp.to_string()
        } else {
            format!("{hp}:80")
        }
    };
    // A routed name, or a loopback name the system resolves (`localhost`).
    let upstream = match routes.get(&host_port) {
        Some(a) => a.to_string(),
        None => host_port.clone(),
    };
    let Ok(mut up) = TcpStream::connect(upstream.as_str()).await else {
        let _ = conn
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await;
        return;
    };
    if method == "CONNECT" {
        if conn
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
        if !rest.is_empty() && up.write_all(&rest).await.is_err() {
            return;
        }
        let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
        return;
    }
    // Plain HTTP: origin-form request line, the Host rewritten if asked, one request per
    // connection.
    let path = target
        .strip_prefix("http://")
        .and_then(|a| a.find('/').map(|i| a[i..].to_string()))
        .unwrap_or_else(|| "/".into());
    let version = first.rsplit(' ').next().unwrap_or("HTTP/1.1");
    let mut lines = vec![format!("{method} {path} {version}")];
    for line in head.lines().skip(1) {
        let name = line
            .split_once(':')
            .map(|(n, _)| n.trim().to_ascii_lowercase())
            .unwrap_or_default();
        match name.as_str() {
            "proxy-authorization" | "proxy-connection" | "connection" => {}
            "host" => match rewrites.get(&host_port) {
                Some(h) => lines.push(format!("Host: {h}")),
                None => lines.push(line.to_string()),
            },
            _ => lines.push(line.to_string()),
        }
    }
    lines.push("Connection: close".into());
    let len = header(&head, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    while rest.len() < len {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => rest.extend_from_slice(&chunk[..n]),
        }
    }
    let out = lines.join("\r\n") + "\r\n\r\n";
    if up.write_all(out.as_bytes()).await.is_err() || up.write_all(&rest).await.is_err() {
        return;
    }
    let mut answer = Vec::new();
    if up.read_to_end(&mut answer).await.is_err() {
        return;
    }
    let _ = conn.write_all(&answer).await;
}
