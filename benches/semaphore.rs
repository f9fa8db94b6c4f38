//! Semaphores: the figures of issue 21.
//!
//! 1. Requests per acquire with a free slot: N = 100, half the slots held, each acquire by a
//!    client that has not listed the semaphore before (and, for comparison, with holder
//!    records on, as `azmutex run` writes them).
//! 2. Never more than N holders: 20 clients on N = 5 for 20 s, counted by a protected resource
//!    and by the server's lease states (a raw listing every 100 ms).
//! 3. Hand-off when a slot frees: N = 1, 20 waiters; the delay from a holder starting its
//!    release to the next holder's successful acquire (p50, p99).
//! 4. Requests per second of one full semaphore (N = 2, held throughout) with W = 10 and
//!    W = 100 waiters, waiters recording themselves (the default) and not (polling like a
//!    `Locker`), over 20 s after a 10 s start.
//!
//!     cargo bench --bench semaphore
//!
//! Not criterion: it prints its own figures. Runs against a local Azurite it starts itself.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use azmutex::{AzureMutex, Holder, LockerOptions, Semaphore, SemaphoreOptions};

fn mutex(container: &str, holder: bool) -> AzureMutex {
    let mut b = AzureMutex::builder(common::config(), container).fencing(true);
    if holder {
        b = b.holder(Holder {
            owner: Some("bench".into()),
            host: Some("localhost".into()),
            pid: Some(std::process::id()),
        });
    }
    b.build().unwrap()
}

fn semaphore(container: &str, name: &str, slots: u32, options: SemaphoreOptions) -> Semaphore {
    Semaphore::with_options(mutex(container, false), name, slots, options).unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list`
    }
    let container = common::unique("sembench");
    let only = std::env::var("AZMUTEX_BENCH_ONLY").unwrap_or_default();
    let run = |part: &str| only.is_empty() || only.split(',').any(|p| p == part);
    println!("semaphore benchmark (Azurite on loopback)");
    if run("cost") {
        cost(&container).await;
    }
    if run("limit") {
        limit(&container).await;
    }
    if run("handoff") {
        handoff(&container).await;
    }
    if run("rate") {
        for register in [true, false] {
            for w in [10, 100] {
                rate(&container, w, register).await;
            }
        }
    }
}

/// 1. Requests per acquire with a free slot, N = 100, half held.
async fn cost(container: &str) {
    const N: u32 = 100;
    let name = "cost";
    // Every slot blob exists (first use creates it), then half are held.
    let setup = semaphore(container, name, N, SemaphoreOptions::default());
    let mut all = Vec::new();
    for _ in 0..N {
        all.push(setup.try_acquire().await.unwrap());
    }
    let mut kept = Vec::new();
    for (i, mut p) in all.into_iter().enumerate() {
        if i % 2 == 0 {
            p.release().await.unwrap();
        } else {
            kept.push(p);
        }
    }
    for holder in [false, true] {
        let trials = 50;
        let mut total = 0u64;
        for _ in 0..trials {
            let sem = Semaphore::new(mutex(container, holder), name, N).unwrap();
            let before = sem.mutex().client().requests_sent();
            let mut p = sem.try_acquire().await.unwrap();
            total += sem.mutex().client().requests_sent() - before;
            p.release().await.unwrap();
        }
        let avg = total as f64 / f64::from(trials);
        println!(
            "  acquire with a free slot (N = {N}, half held, {trials} fresh clients{}): {avg:.2} requests on average \
             = 1 List Blobs + {:.2} lease-layer requests",
            if holder { ", holder records on" } else { "" },
            avg - 1.0
        );
    }
    assert!(
        kept.iter().all(|p| p.is_held()),
        "a held slot was lost during the measurement"
    );
}

/// 2. Holders never above N under contention.
async fn limit(container: &str) {
    const N: usize = 5;
    let name = "limit";
    let now = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let server_most = Arc::new(AtomicUsize::new(0));
    let acquired = Arc::new(AtomicUsize::new(0));
    let monitor = {
        let (c, done, server_most) = (container.to_string(), done.clone(), server_most.clone());
        tokio::spawn(async move {
            let mut polls = 0;
            while !done.load(Ordering::SeqCst) {
                let held = common::semaphore::held_on_server(&c, name).await;
                server_most.fetch_max(held, Ordering::SeqCst);
                polls += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            polls
        })
    };
    let end = Instant::now() + Duration::from_secs(20);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let sem = semaphore(container, name, N as u32, SemaphoreOptions::default());
        let (now, most, acquired) = (now.clone(), most.clone(), acquired.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let Ok(mut p) = sem.acquire_timeout(end.saturating_duration_since(Instant::now())).await else {
                    break;
                };
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(n, Ordering::SeqCst);
                acquired.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50 + fastrand::u64(..100))).await;
                now.fetch_sub(1, Ordering::SeqCst);
                p.release().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let polls = monitor.await.unwrap();
    println!(
        "  holders at once, 20 clients on N = {N} for 20 s ({} permits): at most {} at the protected resource, \
         at most {} leased slots on the server ({polls} listings)",
        acquired.load(Ordering::SeqCst),
        most.load(Ordering::SeqCst),
        server_most.load(Ordering::SeqCst)
    );
}

/// 3. Hand-off delay with 20 waiters on one slot.
async fn handoff(container: &str) {
    let name = "handoff";
    let waiters = 20;
    let rounds_each = 4;
    let hold = Duration::from_millis(200);
    let last_release: Arc<Mutex<Option<(usize, Instant)>>> = Arc::new(Mutex::new(None));
    let delays = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for me in 0..waiters {
        let sem = semaphore(container, name, 1, SemaphoreOptions::default());
        let (last_release, delays) = (last_release.clone(), delays.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..rounds_each {
                let mut p = sem.acquire().await.unwrap();
                let acquired = Instant::now();
                if let Some((who, released)) = last_release.lock().unwrap().take() {
                    if who != me {
                        delays.lock().unwrap().push(acquired - released);
                    }
                }
                tokio::time::sleep(hold).await;
                *last_release.lock().unwrap() = Some((me, Instant::now()));
                p.release().await.unwrap();
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut delays = delays.lock().unwrap().clone();
    delays.sort();
    let pct = |p: f64| delays[((delays.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "  hand-off, N = 1, {waiters} waiters, {} hand-offs: release -> next acquire p50 {:?}, p99 {:?}, max {:?}",
        delays.len(),
        pct(0.5),
        pct(0.99),
        delays[delays.len() - 1]
    );
}

/// 4. Requests per second of one full semaphore with `w` waiters.
async fn rate(container: &str, w: usize, register: bool) {
    let name = format!("rate-{w}-{register}");
    let options = SemaphoreOptions {
        register_waiters: register,
        locker: LockerOptions {
            report_holder: false,
            ..LockerOptions::default()
        },
        ..SemaphoreOptions::default()
    };
    // Two holders for the whole run.
    let holders: Vec<_> = (0..2)
        .map(|_| semaphore(container, &name, 2, options.clone()))
        .collect();
    let mut held = Vec::new();
    for h in &holders {
        held.push(h.try_acquire().await.unwrap());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..w {
        let sem = semaphore(container, &name, 2, options.clone());
        clients.push(sem.clone());
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let cancel = async move {
                while !stop.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            let _ = sem.acquire_until(None, cancel).await;
        }));
    }
    let count = |clients: &[Semaphore]| -> u64 { clients.iter().map(|c| c.mutex().client().requests_sent()).sum() };
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (from, t) = (count(&clients), Instant::now());
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (to, secs) = (count(&clients), t.elapsed().as_secs_f64());
    let holder_requests: u64 = holders.iter().map(|h| h.mutex().client().requests_sent()).sum();
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    drop(held);
    println!(
        "  full semaphore (N = 2), W = {w:>3} waiters{}: {:.1} requests/s from all waiters ({:.2} per waiter); \
         holders' requests (acquire, renewals): {holder_requests}",
        if register {
            ", recording themselves"
        } else {
            ", not recording themselves (Locker-style polling)"
        },
        (to - from) as f64 / secs,
        (to - from) as f64 / secs / w as f64
    );
}
