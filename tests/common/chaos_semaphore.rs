//! Semaphore clients for the chaos checker (`tests/chaos.rs`, included there with `#[path]`).
//!
//! Beside the lock's clients, `clients` [`Semaphore`] clients take turns on one semaphore of
//! `slots` slots in the same Azurite, each through a fault proxy of its own whose faults follow
//! a seeded schedule (partitions, lost answers, delays, resets, 500/503, 500 after the server
//! applied the request), while the harness breaks slot leases (at once, or when they run out)
//! and now and then deletes a slot's blob. Every permit's work writes to a protected resource
//! every 100 ms while `is_held()`, with its slot and token. They run on a thread and runtime
//! of their own, with a timer-lag monitor. The checks (S for semaphore):
//!
//! - S1 (server): a listing of the slot blobs every 250 ms never shows more than `slots` locked
//!   slots, nor a locked slot numbered `slots` or more.
//! - S2 (resource): at every accepted write, at most `slots` sections were open, leaving out
//!   sections whose slot was broken at once while they ran or during which the runtime's
//!   timers ran more than 2 s late; at most one such section per slot.
//! - S3 (tokens): per slot, tokens never repeat and grow in the order sections started; only
//!   an exempt section (slot broken at once) ever had a write rejected.
//! - S4: once the clients stop, every slot is free within one lease duration.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use azmutex::rest::RestRequest;
use azmutex::{AzureMutex, BreakPeriod, ClientOptions, LeaseDuration, LockerOptions, Semaphore, SemaphoreOptions};
use tokio::sync::watch;

use crate::common::faults::{Fault, FaultProxy, UpstreamTls};

const NAME: &str = "chaos-sem";
const LEASE: Duration = Duration::from_secs(15);
const LAG_LIMIT: Duration = Duration::from_secs(2);

/// What the run found: violations (empty: passed) and a summary for the log.
pub struct Report {
    pub violations: Vec<String>,
    pub summary: String,
}

/// The semaphore clients, running.
pub struct Running {
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<Report>,
}

impl Running {
    /// Stops the clients and returns the verdict.
    pub async fn finish(self) -> Report {
        let _ = self.stop.send(true);
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join().expect("semaphore chaos thread panicked"))
            .await
            .unwrap()
    }
}

#[derive(Debug, Clone)]
struct Section {
    client: usize,
    slot: u32,
    token: u64,
    start: Instant,
    end: Option<Instant>,
    writes: usize,
    rejected: usize,
    lost: Option<String>,
}

#[derive(Default)]
struct Records {
    sections: Vec<Section>,
    /// Per accepted write: when, and which sections were open then.
    snapshots: Vec<(Instant, Vec<usize>)>,
    highest: HashMap<u32, u64>,
    /// (when, slot, at once, deleted)
    breaks: Vec<(Instant, u32, bool, bool)>,
    /// (from, to) of timer lags over the limit.
    lags: Vec<(Instant, Instant)>,
    server_most: usize,
    server_stray: Vec<String>,
    errors: Vec<String>,
    acquired: usize,
}

type Shared = Arc<Mutex<Records>>;

fn connection_via(addr: SocketAddr) -> azmutex::StorageConfig {
    crate::common::config_via(addr)
}

fn client_options() -> ClientOptions {
    let mut o = ClientOptions::default();
    o.retry.call_timeout = Duration::from_secs(10);
    o
}

/// Starts `clients` semaphore clients on `slots` slots, for `chaos` of faults.
pub fn start(
    target: SocketAddr,
    tls: Option<UpstreamTls>,
    container: &str,
    seed: u64,
    clients: usize,
    slots: u32,
    chaos: Duration,
) -> Running {
    let (stop_tx, stop_rx) = watch::channel(false);
    let container = container.to_string();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run(target, tls, container, seed, clients, slots, chaos, stop_rx))
    });
    Running { stop: stop_tx, thread }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    target: SocketAddr,
    tls: Option<UpstreamTls>,
    container: String,
    seed: u64,
    clients: usize,
    slots: u32,
    chaos: Duration,
    stop: watch::Receiver<bool>,
) -> Report {
    let records: Shared = Arc::default();
    let t0 = Instant::now();
    let proxies: Vec<Arc<FaultProxy>> = (0..clients)
        .map(|i| {
            Arc::new(FaultProxy::start_with(
                target,
                seed ^ (0x5e3a_0000 + i as u64),
                tls.clone(),
            ))
        })
        .collect();
    // The harness's own way in: a proxy that stays healthy.
    let direct = FaultProxy::start_with(target, seed ^ 0x5e3a_ffff, tls.clone());
    let breaker = AzureMutex::builder(connection_via(direct.addr), container.as_str())
        .client_options(client_options())
        .fencing(true)
        .build()
        .unwrap();

    let lag = {
        let records = records.clone();
        tokio::spawn(async move {
            loop {
                let d = Duration::from_millis(50 + fastrand::u64(..50));
                let due = Instant::now() + d;
                tokio::time::sleep(d).await;
                let late = Instant::now().saturating_duration_since(due);
                if late > LAG_LIMIT {
                    records.lock().unwrap().lags.push((due, Instant::now()));
                }
            }
        })
    };
    let monitor = {
        let (records, breaker, container) = (records.clone(), breaker.clone(), container.clone());
        tokio::spawn(async move {
            loop {
                server_check(&records, &breaker, &container, slots).await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let mut tasks = Vec::new();
    for (i, proxy) in proxies.iter().enumerate() {
        let mutex = AzureMutex::builder(connection_via(proxy.addr), container.as_str())
            .client_options(client_options())
            .fencing(true)
            .build()
            .unwrap();
        let options = SemaphoreOptions {
            locker: LockerOptions {
                lease: LeaseDuration::seconds(LEASE.as_secs()).unwrap(),
                report_holder: false,
                ..LockerOptions::default()
            },
            poll_min: Duration::from_millis(50),
            ..SemaphoreOptions::default()
        };
        let sem = Semaphore::with_options(mutex, NAME, slots, options).unwrap();
        let rng = fastrand::Rng::with_seed(seed.wrapping_mul(17).wrapping_add(i as u64));
        tasks.push(tokio::spawn(client(i, sem, records.clone(), rng, stop.clone())));
    }

    // The director: faults on the clients' proxies, breaks and deletions of slots.
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x5e3a_5e3a);
    let mut next_fault: Vec<Duration> = (0..clients)
        .map(|_| Duration::from_secs_f64(1.0 + 9.0 * rng.f64()))
        .collect();
    let mut next_break = Duration::from_secs_f64(5.0 + 10.0 * rng.f64());
    let mut heal: Vec<Option<Duration>> = vec![None; clients];
    let mut episodes = 0usize;
    loop {
        let now = t0.elapsed();
        if now >= chaos {
            break;
        }
        for i in 0..clients {
            if heal[i].is_some_and(|h| now >= h) {
                proxies[i].set(Fault::Healthy);
                heal[i] = None;
            }
            if now >= next_fault[i] {
                let len = Duration::from_secs_f64(0.5 + 12.0 * rng.f64());
                let fault = match rng.u8(..7) {
                    0 => Fault::Blackhole,
                    1 => Fault::DropAnswers,
                    2 => Fault::Delay(Duration::from_secs_f64(0.2 + 3.8 * rng.f64())),
                    3 => Fault::Reset,
                    4 => Fault::Answer500,
                    5 => Fault::Answer503,
                    _ => Fault::Fail500AfterForward,
                };
                proxies[i].set(fault);
                episodes += 1;
                heal[i] = Some(now + len);
                next_fault[i] = now + len + Duration::from_secs_f64(4.0 + 16.0 * rng.f64());
            }
        }
        if now >= next_break {
            let slot = rng.u32(..slots);
            let (at_once, delete) = match rng.u8(..10) {
                0..=2 => (true, false),
                3 => (true, true),
                _ => (false, false),
            };
            tokio::spawn(break_slot(
                records.clone(),
                breaker.clone(),
                container.clone(),
                slot,
                at_once,
                delete,
            ));
            next_break = now + Duration::from_secs_f64(6.0 + 14.0 * rng.f64());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for p in &proxies {
        p.set(Fault::Healthy);
    }
    // Run on until the harness stops us.
    let mut stop_wait = stop.clone();
    let _ = stop_wait.wait_for(|s| *s).await;
    for t in tasks {
        if tokio::time::timeout(Duration::from_secs(60), t).await.is_err() {
            records
                .lock()
                .unwrap()
                .errors
                .push("a client did not stop within 60 s".into());
        }
    }
    let stopped = Instant::now();
    // S4: every slot free within one lease.
    let mut free_after = None;
    while stopped.elapsed() <= LEASE + Duration::from_secs(5) {
        if held_now(&breaker, &container).await.is_some_and(|h| h.is_empty()) {
            free_after = Some(stopped.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    monitor.abort();
    lag.abort();
    let r = records.lock().unwrap();
    verdict(&r, slots, clients, episodes, free_after)
}

/// The locked slot numbers on the server now (a raw listing), or `None` if it failed.
async fn held_now(breaker: &AzureMutex, container: &str) -> Option<Vec<String>> {
    let req = RestRequest::new("list", reqwest::Method::GET, container, None)
        .query("restype", "container")
        .query("comp", "list")
        .query("prefix", format!("{NAME}/slot-"))
        .max_body(16 * 1024 * 1024);
    let resp = breaker
        .client()
        .send(&req, Instant::now() + Duration::from_secs(5))
        .await
        .ok()?;
    if resp.status == 404 {
        return Some(Vec::new());
    }
    let body = String::from_utf8_lossy(resp.body()).into_owned();
    Some(
        body.split("<Blob>")
            .skip(1)
            .filter(|b| b.contains("<LeaseStatus>locked</LeaseStatus>"))
            .filter_map(|b| b.split("<Name>").nth(1)?.split("</Name>").next().map(str::to_string))
            .collect(),
    )
}

/// S1: the server's own count of locked slots.
async fn server_check(records: &Shared, breaker: &AzureMutex, container: &str, slots: u32) {
    let Some(held) = held_now(breaker, container).await else {
        return;
    };
    let mut r = records.lock().unwrap();
    r.server_most = r.server_most.max(held.len());
    for name in &held {
        let n: u32 = name.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(u32::MAX);
        if n >= slots && r.server_stray.len() < 10 {
            r.server_stray.push(name.clone());
        }
    }
}

async fn break_slot(records: Shared, breaker: AzureMutex, container: String, slot: u32, at_once: bool, delete: bool) {
    let lock = format!("{NAME}/slot-{slot:04}");
    let at = Instant::now();
    let period = at_once.then_some(BreakPeriod::NOW);
    let _ = breaker.break_lease(lock.as_str(), period).await;
    let mut deleted = false;
    if delete {
        let req = RestRequest::new("delete", reqwest::Method::DELETE, &container, Some(&lock));
        deleted = matches!(
            breaker.client().send(&req, Instant::now() + Duration::from_secs(5)).await,
            Ok(resp) if resp.status == 202
        );
    }
    records.lock().unwrap().breaks.push((at, slot, at_once, deleted));
}

async fn client(i: usize, sem: Semaphore, records: Shared, mut rng: fastrand::Rng, stop: watch::Receiver<bool>) {
    let mut stop_wait = stop.clone();
    loop {
        if *stop.borrow() {
            return;
        }
        let cancel = {
            let mut s = stop.clone();
            async move {
                let _ = s.wait_for(|s| *s).await;
            }
        };
        let mut permit = match sem.acquire_until(None, cancel).await {
            Ok(p) => p,
            Err(azmutex::SemaphoreError::Cancelled { .. }) => return,
            Err(e) => {
                {
                    let mut r = records.lock().unwrap();
                    if r.errors.len() < 20 {
                        r.errors.push(format!("client {i}: {e}"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let id = {
            let mut r = records.lock().unwrap();
            r.acquired += 1;
            r.sections.push(Section {
                client: i,
                slot: permit.slot(),
                token: permit.fencing_token(),
                start: Instant::now(),
                end: None,
                writes: 0,
                rejected: 0,
                lost: None,
            });
            r.sections.len() - 1
        };
        let writes = if rng.u8(..10) < 3 {
            rng.u32(100..=200)
        } else {
            rng.u32(2..=40)
        };
        let lost = permit.lost();
        tokio::pin!(lost);
        for _ in 0..writes {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                reason = &mut lost => {
                    records.lock().unwrap().sections[id].lost = Some(reason.to_string());
                    break;
                }
                _ = stop_wait.wait_for(|s| *s) => break,
            }
            if !permit.is_held() {
                break;
            }
            write(&records, id);
        }
        records.lock().unwrap().sections[id].end = Some(Instant::now());
        let released = permit.release().await;
        if let Err(e) = released {
            let mut r = records.lock().unwrap();
            if r.sections[id].lost.is_none() {
                r.sections[id].lost = Some(format!("at release: {e}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(..300))).await;
    }
}

/// A write of section `id` at the resource: accepted if its token is at least the highest its
/// slot accepted.
fn write(records: &Shared, id: usize) {
    let mut r = records.lock().unwrap();
    let (slot, token) = (r.sections[id].slot, r.sections[id].token);
    let highest = r.highest.entry(slot).or_insert(0);
    if token < *highest {
        r.sections[id].rejected += 1;
        return;
    }
    *highest = token;
    r.sections[id].writes += 1;
    let open: Vec<usize> = r
        .sections
        .iter()
        .enumerate()
        .filter(|(_, s)| s.end.is_none())
        .map(|(n, _)| n)
        .collect();
    r.snapshots.push((Instant::now(), open));
}

fn verdict(r: &Records, slots: u32, clients: usize, episodes: usize, free_after: Option<Duration>) -> Report {
    let mut v = Vec::new();
    let end_of = |s: &Section| s.end.unwrap_or_else(Instant::now);
    let exempt = |s: &Section| {
        let broken = r
            .breaks
            .iter()
            .any(|(at, slot, now, _)| *now && *slot == s.slot && *at >= s.start && *at <= end_of(s));
        let lagged = r.lags.iter().any(|(from, to)| *to >= s.start && *from <= end_of(s));
        broken || lagged
    };
    // S1
    if r.server_most > slots as usize {
        v.push(format!(
            "(S1) the server showed {} locked slots of {slots}",
            r.server_most
        ));
    }
    if !r.server_stray.is_empty() {
        v.push(format!("(S1) locked slots beyond {slots}: {:?}", r.server_stray));
    }
    // S2
    let mut s2 = 0;
    for (at, open) in &r.snapshots {
        let counted: Vec<&Section> = open.iter().map(|&n| &r.sections[n]).filter(|s| !exempt(s)).collect();
        let mut per_slot: BTreeMap<u32, usize> = BTreeMap::new();
        for s in &counted {
            *per_slot.entry(s.slot).or_default() += 1;
        }
        if counted.len() > slots as usize || per_slot.values().any(|n| *n > 1) {
            s2 += 1;
            if s2 <= 3 {
                v.push(format!(
                    "(S2) at a write {:?} before the end, {} sections were open: {:?}",
                    at.elapsed(),
                    counted.len(),
                    counted.iter().map(|s| (s.client, s.slot, s.token)).collect::<Vec<_>>()
                ));
            }
        }
    }
    // S3
    let mut per_slot: BTreeMap<u32, Vec<&Section>> = BTreeMap::new();
    for s in &r.sections {
        per_slot.entry(s.slot).or_default().push(s);
    }
    for (slot, mut list) in per_slot {
        list.sort_by_key(|s| s.start);
        for w in list.windows(2) {
            if w[1].token <= w[0].token {
                v.push(format!(
                    "(S3) slot {slot}: token {} (client {}) after {} (client {})",
                    w[1].token, w[1].client, w[0].token, w[0].client
                ));
            }
        }
    }
    for s in r.sections.iter().filter(|s| s.rejected > 0 && !exempt(s)) {
        v.push(format!(
            "(S3) client {} had {} writes rejected on slot {} (token {}) without a break at once",
            s.client, s.rejected, s.slot, s.token
        ));
    }
    // S4
    match free_after {
        Some(d) if d <= LEASE + Duration::from_millis(500) => {}
        other => v.push(format!(
            "(S4) slots not free within one lease after the clients stopped: {other:?}"
        )),
    }
    if r.sections.len() < 2 {
        v.push(format!(
            "(S) only {} semaphore sections ran: nothing checked",
            r.sections.len()
        ));
    }
    let mut summary = String::new();
    let exempted = r.sections.iter().filter(|s| exempt(s)).count();
    let _ = writeln!(
        summary,
        "  semaphore: {clients} clients on {slots} slots; sections: {} ({exempted} exempt: slot broken at once or timer lag); \
         writes accepted: {}, rejected: {}; losses declared: {}; fault episodes: {episodes}; breaks: {} at once, {} at lease end, {} slot blobs deleted",
        r.sections.len(),
        r.snapshots.len(),
        r.sections.iter().map(|s| s.rejected).sum::<usize>(),
        r.sections.iter().filter(|s| s.lost.is_some()).count(),
        r.breaks.iter().filter(|b| b.2).count(),
        r.breaks.iter().filter(|b| !b.2).count(),
        r.breaks.iter().filter(|b| b.3).count(),
    );
    let most_open = r
        .snapshots
        .iter()
        .map(|(_, open)| open.iter().filter(|&&n| !exempt(&r.sections[n])).count())
        .max()
        .unwrap_or(0);
    let _ = writeln!(
        summary,
        "  semaphore: most holders at once: {most_open} at the resource, {} on the server (limit {slots}); free {} after the clients stopped; client errors: {}",
        r.server_most,
        free_after.map_or("never".into(), |d| format!("{:.1}s", d.as_secs_f64())),
        r.errors.len()
    );
    for e in r.errors.iter().take(3) {
        let _ = writeln!(summary, "    {e}");
    }
    Report { violations: v, summary }
}
