//! Many leases held in one process with background renewal, against a local Azurite it starts
//! itself: lost leases, requests per lease per renewal period, connections, CPU, peak RSS, the
//! busiest second against the mean rate, and the time to acquire them all under the default
//! acquisition pace. Not criterion: it prints its own figures, ending with one summary line.
//!
//!     cargo bench --bench many_leases                                   # 10,000 leases, 10 min
//!     AZMUTEX_HOLD_SECS=3600 cargo bench --bench many_leases            # an hour
//!     AZMUTEX_FAULTS=1 cargo bench --bench many_leases                  # 1 % 503, a 2 s stall a minute
//!     AZMUTEX_LEASES=1000 AZMUTEX_HOLD_SECS=120 cargo bench --bench many_leases   # shorter
//!
//! Variables: `AZMUTEX_LEASES` (10000), `AZMUTEX_HOLD_SECS` (600), `AZMUTEX_LEASE_SECS` (60),
//! `AZMUTEX_RENEW_SECS` (20), `AZMUTEX_ACQUIRE_RATE` (the client's default pace),
//! `AZMUTEX_FAULTS` (off). With faults the client talks to Azurite through a fault proxy in
//! this process: 1 % of requests are answered `503 ServerBusy` by the proxy, and once a minute
//! every answer is held back 2 s for 2 s. CPU and RSS then include the proxy's.
//!
//! The lock blobs are created first (unpaced); the timed acquisition is of existing locks, as
//! a restarting scheduler takes its partitions back. Steady-state figures (requests per lease
//! per period, connections, rates) are taken after the first renewal interval that follows the
//! last acquisition, when every lease has its phase.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use azmutex::{AzureMutex, ClientOptions, Locker, LockerOptions, StorageConfig};
use common::faults::{Fault, FaultProxy};

/// CPU time (user + system) of this process, and its peak RSS in KiB.
///
/// The peak comes from `VmHWM` in /proc/self/status, not from `getrusage`: `ru_maxrss` survives
/// `execve`, so under `cargo bench` it reports cargo's own footprint (about 68 MiB here).
fn usage() -> (Duration, u64) {
    let (cpu, hwm, _) = usage_now();
    (cpu, hwm)
}

/// CPU time, peak RSS and current RSS (KiB).
fn usage_now() -> (Duration, u64, u64) {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let hwm = field("VmHWM:").unwrap_or(ru.ru_maxrss as u64);
    (tv(ru.ru_utime) + tv(ru.ru_stime), hwm, field("VmRSS:").unwrap_or(0))
}

fn var<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Sockets this process has open (each HTTP connection is one; read from /proc/self/fd, which
/// costs little, unlike a walk of /proc/net/tcp, which took 40 % of the CPU measured here).
fn open_sockets() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.to_string_lossy().starts_with("socket:"))
        .count()
}

/// What a sampler thread saw: the peak of requests in flight and of connections, and requests
/// sent in each whole second.
#[derive(Default)]
struct Samples {
    peak_in_flight: usize,
    peak_connections: usize,
    per_second: Vec<u64>,
}

/// Samples every 20 ms: requests in flight, connections (every 200 ms: client connections the
/// fault proxy holds open, or this process's sockets beyond `baseline` without it), and the
/// requests sent in each second.
fn sample(
    mutex: AzureMutex,
    proxy: Option<Arc<FaultProxy>>,
    baseline: usize,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Samples>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut last_second = Instant::now();
        let mut last_count = mutex.client().requests_sent();
        let mut tick = 0u64;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
            tick += 1;
            let (in_flight, _) = mutex.client().load();
            let conns = if tick % 10 != 0 {
                0
            } else {
                match &proxy {
                    Some(p) => p.live_connections() as usize,
                    None => open_sockets().saturating_sub(baseline),
                }
            };
            let mut s = out.lock().unwrap();
            s.peak_in_flight = s.peak_in_flight.max(in_flight);
            s.peak_connections = s.peak_connections.max(conns);
            if last_second.elapsed() >= Duration::from_secs(1) {
                let now = mutex.client().requests_sent();
                s.per_second.push(now - last_count);
                last_count = now;
                last_second += Duration::from_secs(1);
            }
        }
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = var("AZMUTEX_LEASES", 10_000);
    let hold = Duration::from_secs(var("AZMUTEX_HOLD_SECS", 600));
    let lease_secs: u64 = var("AZMUTEX_LEASE_SECS", 60);
    let every = Duration::from_secs(var("AZMUTEX_RENEW_SECS", 20));
    let faults = std::env::var("AZMUTEX_FAULTS").is_ok_and(|v| !v.is_empty() && v != "0");
    let mut client = ClientOptions::default();
    client.acquire_rate = var("AZMUTEX_ACQUIRE_RATE", client.acquire_rate);
    let container = common::unique("many");

    // The lock blobs, created first (not timed, unpaced).
    let t = Instant::now();
    {
        let creator = AzureMutex::builder(common::config(), &container)
            .client_options(ClientOptions {
                acquire_rate: 0,
                ..ClientOptions::default()
            })
            .build()
            .unwrap();
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (m, next) = (creator.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let lease = m
                        .acquire(format!("job-{i:05}").as_str(), common::secs(15))
                        .await
                        .unwrap();
                    m.release(&lease).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
    println!("created {n} lock blobs in {:.1?}", t.elapsed());

    let azurite = common::azurite_addr();
    let proxy = faults.then(|| {
        let p = FaultProxy::start(azurite, 22);
        p.stop_recording();
        p.answer_503_per_million(10_000);
        Arc::new(p)
    });
    let config = match &proxy {
        Some(p) => common::config_via(p.addr),
        None => StorageConfig::parse_connection_string(&common::service().connection_string).unwrap(),
    };
    let mutex = AzureMutex::builder(config, &container)
        .client_options(client.clone())
        .build()
        .unwrap();
    let options = LockerOptions {
        lease: common::secs(lease_secs),
        renew_every: Some(every),
        ..LockerOptions::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Samples::default()));
    // The creator's idle connections are closed with it; what is left is not ours to count.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline = open_sockets();
    let sampler = sample(mutex.clone(), proxy.clone(), baseline, stop.clone(), samples.clone());
    let stall_stop = Arc::new(AtomicBool::new(false));
    let staller = proxy.clone().map(|p| {
        let stall_stop = stall_stop.clone();
        // One 2 s stall a minute, the first 30 s in.
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut next = Duration::from_secs(30);
            while !stall_stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if start.elapsed() >= next {
                    p.set(Fault::Delay(Duration::from_secs(2)));
                    std::thread::sleep(Duration::from_secs(2));
                    p.set(Fault::Healthy);
                    next += Duration::from_secs(60);
                }
            }
        })
    });

    // All acquired at once, as a scheduler starting up does: the client's pace spreads them.
    let (cpu0, _) = usage();
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let locker = Locker::with_options(mutex.clone(), format!("job-{i:05}").as_str(), options.clone()).unwrap();
        tasks.push(tokio::spawn(async move { locker.lock().await }));
    }
    let mut guards = Vec::with_capacity(n);
    for t in tasks {
        guards.push(t.await.unwrap().unwrap());
    }
    let acquired_in = t0.elapsed();
    let req_acquired = mutex.client().requests_sent();
    let (_, peak_acquiring, _) = usage_now();
    println!(
        "acquired {n} existing locks in {acquired_in:.1?} at a pace of {} a second ({req_acquired} requests; peak RSS so far {:.1} MiB)",
        client.acquire_rate,
        peak_acquiring as f64 / 1024.0
    );

    // The steady state starts one renewal interval after the last acquisition.
    tokio::time::sleep(every).await;
    let (cpu1, _) = usage();
    let req1 = mutex.client().requests_sent();
    let seconds_before = samples.lock().unwrap().per_second.len();
    {
        let mut s = samples.lock().unwrap();
        s.peak_in_flight = 0;
        s.peak_connections = 0;
    }
    let t1 = Instant::now();
    let steady = hold.saturating_sub(every);
    let mut reported = Instant::now();
    while t1.elapsed() < steady {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if reported.elapsed() >= Duration::from_secs(60) {
            reported = Instant::now();
            let lost = guards.iter().filter(|g| !g.is_held()).count();
            println!(
                "  {:>4.0} s: {lost} lost, {} requests",
                t0.elapsed().as_secs_f64(),
                mutex.client().requests_sent()
            );
        }
    }
    let held_for = t1.elapsed();
    let req2 = mutex.client().requests_sent();
    let (cpu2, rss, rss_now) = usage_now();
    let lost = guards.iter().filter(|g| !g.is_held()).count();
    let reasons: Vec<String> = guards
        .iter()
        .filter_map(|g| g.lost_reason().map(|r| format!("{} {r}", g.lock_name())))
        .take(5)
        .collect();
    stop.store(true, Ordering::Relaxed);
    stall_stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    if let Some(s) = staller {
        s.join().unwrap();
    }
    let s = std::mem::take(&mut *samples.lock().unwrap());
    let window: Vec<u64> = s.per_second[seconds_before.min(s.per_second.len())..].to_vec();
    let requests = req2 - req1;
    let periods = held_for.as_secs_f64() / every.as_secs_f64();
    let per_lease_period = requests as f64 / n as f64 / periods;
    let mean = requests as f64 / held_for.as_secs_f64();
    let peak_second = window.iter().copied().max().unwrap_or(0);
    let cpu = (cpu2 - cpu1).as_secs_f64() / held_for.as_secs_f64() * 100.0;
    println!(
        "steady state: {requests} requests in {held_for:.1?}; per second: min {} max {peak_second}; RSS now {:.1} MiB",
        window.iter().min().unwrap_or(&0),
        rss_now as f64 / 1024.0
    );
    if let Some(p) = &proxy {
        let (hits, forwarded) = p.stats();
        println!(
            "fault proxy: {forwarded} forwarded, {} answered 503, {} delayed by stalls",
            hits[5], hits[2]
        );
    }
    if !reasons.is_empty() {
        println!("lost: {reasons:?}");
    }
    println!(
        "SUMMARY many_leases leases={n} hold_s={:.0} lease_s={lease_secs} renew_s={} faults={} lost={lost} \
         requests_per_lease_per_period={per_lease_period:.3} peak_connections={} peak_in_flight={} \
         cpu_pct_of_one_core={cpu:.1} peak_rss_mib={:.1} mean_requests_per_s={mean:.1} peak_1s_requests={peak_second} \
         peak_to_mean={:.2} acquire_all_s={:.1} acquire_rate={}",
        hold.as_secs_f64(),
        every.as_secs(),
        if faults { "on" } else { "off" },
        s.peak_connections,
        s.peak_in_flight,
        rss as f64 / 1024.0,
        peak_second as f64 / mean.max(f64::MIN_POSITIVE),
        acquired_in.as_secs_f64(),
        client.acquire_rate,
    );
    let _ = cpu0;
    for mut g in guards {
        let _ = g.release().await;
    }
    assert_eq!(lost, 0, "leases were lost");
}
