//! Holds 1,000 leases in one process for 2 minutes with background renewal (30 s leases,
//! renewed every 10 s) and reports lost leases, CPU time and peak RSS of this process.
//!
//!     cargo bench --bench many_leases
//!     AZMUTEX_LEASES=200 AZMUTEX_HOLD_SECS=30 cargo bench --bench many_leases   # shorter
//!
//! Not criterion: it prints its own figures. Runs against a local Azurite it starts itself.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use azmutex::{AzureMutex, Locker};

/// CPU time (user + system) of this process, and its peak RSS in KiB.
///
/// The peak comes from `VmHWM` in /proc/self/status, not from `getrusage`: `ru_maxrss` survives
/// `execve`, so under `cargo bench` it reports cargo's own footprint (about 68 MiB here).
fn usage() -> (Duration, u64) {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_string();
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(ru.ru_maxrss as u64);
    (tv(ru.ru_utime) + tv(ru.ru_stime), hwm)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("AZMUTEX_LEASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let hold = Duration::from_secs(
        std::env::var("AZMUTEX_HOLD_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(120),
    );
    let container = common::unique("many");
    let mutex = AzureMutex::builder(common::config(), &container).build().unwrap();
    let (cpu0, _) = usage();
    let t0 = Instant::now();
    let mut guards = Vec::with_capacity(n);
    for i in 0..n {
        let locker = Locker::new(mutex.clone(), format!("lease-{i}")).unwrap();
        guards.push(locker.lock().await.unwrap());
    }
    let acquired_in = t0.elapsed();
    let (cpu1, _) = usage();
    let req1 = mutex.client().requests_sent();
    println!(
        "acquired {n} leases in {acquired_in:.1?} ({} requests, CPU {:.2?})",
        req1,
        cpu1 - cpu0
    );
    tokio::time::sleep(hold).await;
    let lost = guards.iter().filter(|g| !g.is_held()).count();
    let (cpu2, rss) = usage();
    let req2 = mutex.client().requests_sent();
    println!(
        "held {n} leases for {hold:?}: {lost} lost; {} renewals ({:.1}/s); CPU while holding {:.2?} ({:.2}% of one core); peak RSS {:.1} MiB",
        req2 - req1,
        (req2 - req1) as f64 / hold.as_secs_f64(),
        cpu2 - cpu1,
        (cpu2 - cpu1).as_secs_f64() / hold.as_secs_f64() * 100.0,
        rss as f64 / 1024.0
    );
    for mut g in guards {
        g.release().await.unwrap();
    }
    assert_eq!(lost, 0, "leases were lost");
}
