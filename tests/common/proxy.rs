//! A local TCP proxy between a client and Azurite that can start dropping all traffic
//! (a network outage: nothing is refused, nothing arrives), and heal again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct Proxy {
    pub addr: SocketAddr,
    dropping: Arc<AtomicBool>,
    dropping_responses: Arc<AtomicBool>,
}

impl Proxy {
    /// Starts a proxy to `target` on its own thread and runtime.
    pub fn start(target: SocketAddr) -> Proxy {
        let dropping = Arc::new(AtomicBool::new(false));
        let dropping_responses = Arc::new(AtomicBool::new(false));
        let (flag, rflag) = (dropping.clone(), dropping_responses.clone());
        let addr = serve(move |client| {
            let (flag, rflag) = (flag.clone(), rflag.clone());
            async move {
                let Ok(server) = TcpStream::connect(target).await else {
                    return;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, flag.clone(), None));
                pipe(sr, cw, flag, Some(rflag)).await;
            }
        });
        Proxy {
            addr,
            dropping,
            dropping_responses,
        }
    }

    /// Drops every byte from now on, in both directions, on old and new connections.
    pub fn drop_traffic(&self) {
        self.dropping.store(true, Ordering::SeqCst);
    }

    /// Forwards requests to the server but swallows its answers (lost responses).
    pub fn drop_responses(&self) {
        self.dropping_responses.store(true, Ordering::SeqCst);
    }

    /// Forwards again.
    pub fn heal(&self) {
        self.dropping.store(false, Ordering::SeqCst);
        self.dropping_responses.store(false, Ordering::SeqCst);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    dropping: Arc<AtomicBool>,
    also: Option<Arc<AtomicBool>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if dropping.load(Ordering::SeqCst) || also.as_ref().is_some_and(|f| f.load(Ordering::SeqCst)) {
            continue; // swallowed
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A server that answers every request `503 ServerBusy` with `Retry-After: 1` (throttling), to
/// test the retry policy; it knows nothing of leases.
pub fn busy_server() -> SocketAddr {
    serve(|mut conn| async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut seen = Vec::new();
        loop {
            let Ok(n) = conn.read(&mut buf).await else { return };
            if n == 0 {
                return;
            }
            seen.extend_from_slice(&buf[..n]);
            while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                seen.drain(..end + 4);
                let answer = "HTTP/1.1 503 Service Unavailable\r\nx-ms-error-code: ServerBusy\r\nx-ms-request-id: busy-1\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n";
                if conn.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
}

/// Serves loopback connections with `handle` on a thread and runtime of its own, so the server
/// outlives each test's runtime. Returns the address.
pub fn serve<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            loop {
                let Ok((conn, _)) = listener.accept().await else { return };
                tokio::spawn(handle(conn));
            }
        });
    });
    rx.recv().unwrap()
}
