//! Hand-off with 8 waiters on one lock: the delay from a holder starting its release to the
//! next holder's successful acquire (p50, p99), and the request rate per waiter, with the
//! default `LockerOptions` (first pause 100 ms, ×1.5 up to 1 s, each jittered to 50–100 %).
//! Each waiter holds the lock 200 ms, then does 2 s of other work (longer than the longest poll
//! pause) before contending again, so hand-offs go to tasks that were already waiting.
//!
//!     cargo bench --bench handoff
//!
//! Not criterion: it prints its own figures. Runs against a local Azurite it starts itself.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use azmutex::{AzureMutex, Locker, LockerOptions};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list`
    }
    let container = common::unique("handoff");
    let waiters = 8;
    let rounds_each = 8;
    let hold = Duration::from_millis(200);
    let last_release: Arc<Mutex<Option<(usize, Instant)>>> = Arc::new(Mutex::new(None));
    let delays = Arc::new(Mutex::new(Vec::new()));
    let mut mutexes = Vec::new();
    let mut tasks = Vec::new();
    let started = Instant::now();
    for me in 0..waiters {
        let mutex = AzureMutex::builder(common::config(), &container).build().unwrap();
        mutexes.push(mutex.clone());
        let options = LockerOptions {
            report_holder: false,
            ..LockerOptions::default()
        };
        let locker = Locker::with_options(mutex, "lock", options).unwrap();
        let (last_release, delays) = (last_release.clone(), delays.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..rounds_each {
                let mut guard = locker.lock().await.unwrap();
                let acquired = Instant::now();
                let previous = last_release.lock().unwrap().take();
                if let Some((who, released)) = previous {
                    if who != me {
                        delays.lock().unwrap().push(acquired - released);
                    }
                }
                tokio::time::sleep(hold).await;
                *last_release.lock().unwrap() = Some((me, Instant::now()));
                guard.release().await.unwrap();
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let wall = started.elapsed();
    let mut delays = delays.lock().unwrap().clone();
    delays.sort();
    let pct = |p: f64| delays[((delays.len() as f64 - 1.0) * p).round() as usize];
    let requests: u64 = mutexes.iter().map(|m| m.client().requests_sent()).sum();
    println!(
        "hand-off, {waiters} waiters, {} hand-offs, hold {hold:?} each",
        delays.len()
    );
    println!(
        "  delay release -> next acquire: p50 {:?}, p99 {:?}, max {:?}",
        pct(0.5),
        pct(0.99),
        delays[delays.len() - 1]
    );
    println!(
        "  requests: {requests} in {:.1}s = {:.2} requests/s per waiter ({:.1}/s in all)",
        wall.as_secs_f64(),
        requests as f64 / wall.as_secs_f64() / waiters as f64,
        requests as f64 / wall.as_secs_f64()
    );
}
