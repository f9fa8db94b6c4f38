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
}

impl Proxy {
    /// Starts a proxy to `target` on its own thread and runtime.
    pub fn start(target: SocketAddr) -> Proxy {
        let dropping = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let flag = dropping.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                loop {
                    let Ok((client, _)) = listener.accept().await else { return };
                    let flag = flag.clone();
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(target).await else { return };
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        tokio::spawn(pipe(cr, sw, flag.clone()));
                        pipe(sr, cw, flag).await;
                    });
                }
            });
        });
        Proxy { addr: rx.recv().unwrap(), dropping }
    }

    /// Drops every byte from now on, in both directions, on old and new connections.
    pub fn drop_traffic(&self) {
        self.dropping.store(true, Ordering::SeqCst);
    }

    /// Forwards again.
    pub fn heal(&self) {
        self.dropping.store(false, Ordering::SeqCst);
    }
}

async fn pipe(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, dropping: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if dropping.load(Ordering::SeqCst) {
            continue; // swallowed
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
