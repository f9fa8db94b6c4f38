//! `--metrics ADDR`: the library's `metrics` counters, gauges and histograms, collected in
//! process ([`Registry`]) and served over HTTP as Prometheus text ([`serve`]), with a
//! `/healthz` that says whether the lock (or leadership) is held.
//!
//! Wiring, in a command: parse the flag with [`parse_addr`], then [`start`] (which installs the
//! registry as the process's recorder, binds, spawns the server and returns the bound address
//! to log); abort the returned task when the command ends.

mod health;
mod registry;
mod server;

pub(crate) use health::{serve_if, Health, Phase};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub(crate) use registry::Registry;
pub(crate) use server::serve;

/// Installs `registry` as the process's `metrics` recorder, binds `addr` and spawns [`serve`]
/// on the current runtime. Returns the bound address (the port chosen when `addr` had port 0)
/// and the server's task (abort it to stop serving). Fails, saying why, if a recorder was
/// installed before or the address cannot be bound.
pub(crate) async fn start<H>(
    addr: SocketAddr,
    registry: Registry,
    health: H,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), String>
where
    H: Fn() -> Result<String, String> + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--metrics {addr}: cannot listen: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("--metrics {addr}: cannot listen: {e}"))?;
    registry.install().map_err(|e| format!("--metrics: {e}"))?;
    Ok((bound, tokio::spawn(serve(listener, registry, health))))
}

/// The address `--metrics` listens on: `PORT` or `:PORT` (loopback, 127.0.0.1), `IP:PORT`,
/// `[IPv6]:PORT`, or `localhost:PORT` (127.0.0.1). Port 0 picks a free port. Other host names
/// are refused rather than resolved, so the address is what the flag says.
pub(crate) fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    const USAGE: &str = "give PORT, IP:PORT or [IPv6]:PORT, e.g. 9464, 0.0.0.0:9464 or [::1]:9464";
    let shown = super::output::printable(s, 80);
    if s.is_empty() {
        return Err(format!("empty address: {USAGE}"));
    }
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => return Err(format!("{shown}: missing port, e.g. {s}:9464")),
        Ok(IpAddr::V6(_)) => return Err(format!("{shown}: missing port (IPv6 in brackets), e.g. [::1]:9464")),
        Err(_) if s.starts_with('[') && s.ends_with(']') => {
            return Err(format!("{shown}: missing port, e.g. {s}:9464"));
        }
        Err(_) => {}
    }
    let (host, p) = match s.rsplit_once(':') {
        Some(parts) => parts,
        None if s.bytes().all(|b| b.is_ascii_digit()) => ("", s),
        None => return Err(format!("{shown}: not an address: {USAGE}")),
    };
    let ip = if host.is_empty() || host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let ip = inner.parse::<Ipv6Addr>();
        IpAddr::V6(ip.map_err(|_| format!("{shown}: not an IPv6 address between the brackets"))?)
    } else if let Ok(ip) = host.parse::<Ipv4Addr>() {
        IpAddr::V4(ip)
    } else if host.contains(':') {
        return Err(format!("{shown}: an IPv6 address needs brackets, e.g. [::1]:9464"));
    } else {
        return Err(format!(
            "{shown}: not an IP address (host names other than localhost are not looked up): \
             e.g. 127.0.0.1:9464, 0.0.0.0:9464 (every interface) or [::1]:9464"
        ));
    };
    Ok(SocketAddr::new(ip, port(p, &shown)?))
}

/// `s` as a port number (0-65535), or an error naming the whole address `shown`.
fn port(s: &str, shown: &str) -> Result<u16, String> {
    if s.is_empty() {
        return Err(format!("{shown}: missing port after ':'"));
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{shown}: the port is not a number (0-65535)"));
    }
    s.parse()
        .map_err(|_| format!("{shown}: the port is out of range (0-65535)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The only test in this binary that installs a global recorder.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn start_installs_binds_and_serves_once() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let busy = taken.local_addr().expect("address");
        let error = start(busy, Registry::new(), || Ok(String::new())).await.err();
        assert!(
            error.is_some_and(|e| e.contains("cannot listen")),
            "a port in use is refused"
        );

        let registry = Registry::new();
        let (addr, task) = start(parse_addr(":0").expect("port 0"), registry.clone(), || Ok("ok".into()))
            .await
            .expect("started");
        assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
        // Emitted from another task (on another worker thread, maybe): the global recorder.
        tokio::spawn(async { ::metrics::counter!("azmutex_started_total", "by" => "test").increment(2) })
            .await
            .expect("task");
        assert!(registry.render().contains("azmutex_started_total{by=\"test\"} 2\n"));

        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.expect("write");
        let mut answer = String::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(60), stream.read_to_string(&mut answer));
        read.await.expect("answered in time").expect("read");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("\nazmutex_started_total{by=\"test\"} 2\n"), "{answer}");

        let again = start(parse_addr(":0").expect("port 0"), Registry::new(), || Ok(String::new())).await;
        assert!(again.is_err_and(|e| e.contains("already installed")));
        task.abort();
    }

    fn ok(s: &str) -> String {
        parse_addr(s).unwrap_or_else(|e| panic!("{s}: {e}")).to_string()
    }

    fn err(s: &str) -> String {
        match parse_addr(s) {
            Ok(addr) => panic!("{s} parsed as {addr}"),
            Err(e) => e,
        }
    }

    #[test]
    fn ports_alone_listen_on_loopback() {
        assert_eq!(ok("9464"), "127.0.0.1:9464");
        assert_eq!(ok(":9464"), "127.0.0.1:9464");
        assert_eq!(ok("0"), "127.0.0.1:0");
        assert_eq!(ok(":0"), "127.0.0.1:0");
        assert_eq!(ok("65535"), "127.0.0.1:65535");
        assert_eq!(ok("localhost:9464"), "127.0.0.1:9464");
        assert_eq!(ok("LocalHost:1"), "127.0.0.1:1");
    }

    #[test]
    fn addresses_are_taken_as_written() {
        assert_eq!(ok("0.0.0.0:9464"), "0.0.0.0:9464");
        assert_eq!(ok("10.1.2.3:80"), "10.1.2.3:80");
        assert_eq!(ok("[::1]:9464"), "[::1]:9464");
        assert_eq!(ok("[::]:0"), "[::]:0");
        assert_eq!(ok("[2001:db8::7]:9100"), "[2001:db8::7]:9100");
    }

    #[test]
    fn anything_else_is_refused_saying_why() {
        assert!(err("").contains("empty address"));
        assert!(err("65536").contains("out of range"));
        assert!(err(":99999999999999999999").contains("out of range"));
        assert!(err(":").contains("missing port"));
        assert!(err("127.0.0.1:").contains("missing port"));
        assert!(err("127.0.0.1").contains("missing port, e.g. 127.0.0.1:9464"));
        assert!(err("::1").contains("IPv6 in brackets"));
        assert!(err("fe80::1:x").contains("needs brackets"));
        assert!(err("[::1]").contains("missing port, e.g. [::1]:9464"));
        assert!(err("[nope]:80").contains("not an IPv6 address"));
        assert!(err("[127.0.0.1]:80").contains("not an IPv6 address"));
        assert!(err("example.com:80").contains("not looked up"));
        assert!(err("300.1.1.1:80").contains("not an IP address"));
        assert!(err(":http").contains("not a number"));
        assert!(err("1.2.3.4:-1").contains("not a number"));
        assert!(err(" 9464").contains("not an address"));
        assert!(err("9464 ").contains("not an address"));
        assert!(err("abc").contains("not an address"));
        // Control characters in the error are escaped, not printed.
        assert!(!err("\u{1b}[31m:80").contains('\u{1b}'));
    }
}
