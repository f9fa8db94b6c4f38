//! The chaos checker: several clients — `azmutex run` processes and `Locker` clients, each
//! in a process of its own — take turns on ONE lock in one Azurite, each through its own fault
//! proxy, while the harness pauses CLI processes (SIGSTOP/SIGCONT) and breaks the lease from
//! outside. Every critical section writes to a protected resource (a loopback server here)
//! that checks fencing tokens. At the end a checker asserts:
//!
//! 1. no two sections of unpaused holders overlapped in real time (server-side arrival times);
//! 2. the resource never accepted a lower token after a higher one, tokens never repeat and
//!    follow real-time order, and only a paused, broken or already-declared-lost holder ever had
//!    a write rejected;
//! 3. every loss was declared before another client acquired (the smallest margin is reported),
//!    and ended the section at once (`Locker`) or within `--kill-grace` (`azmutex run`, the
//!    command and all its descendants);
//! 4. once faults and clients stop, the lock is free again within one lease duration;
//! 5. a client that reported success (`run` exited 0, a clean release) held the lock to the end
//!    of its section: no other client acquired meanwhile;
//! 6. no write reaches the resource from a holder's worker (however it was started: in the
//!    command's group, under `sh`, `setsid`, a daemonizing double fork, `timeout`) after another
//!    client acquired, and the worker is dead by then; and none after its `azmutex run` exited
//!    (or its `Locker` release returned);
//! 7. while a proxy answers 503 with `Retry-After`, a holder renews one lease at most once a
//!    second.
//!
//! Semaphore clients (`AZMUTEX_CHAOS_SEMAPHORES`, default 3, on 2 slots) run beside them on a
//! semaphore of their own, with checks S1–S4 (never more than N holders, on the server and at
//! a protected resource; per-slot tokens; slots free at the end): see
//! `tests/common/chaos_semaphore.rs`.
//!
//! Faults at the proxies: partitions, lost answers, delays, resets, 500 and 503 (also with
//! `Retry-After: 1..=30`) before or after forwarding, and Azure Stack Hub's refusal of
//! `x-ms-version` (400 `InvalidHeaderValue`). One CLI run in four has its stderr stalled (a
//! full pipe nobody reads, with `-vv`): its loss line arrives late or never, so rule 6, not
//! rule 3, judges it. Outside the clients, the harness also breaks the lease (at once, or when
//! it runs out) and now and then removes the lock blob (break at once, then delete), as an
//! operator might.
//!
//! Timer lag: the harness and every Locker worker process run a monitor that sleeps 50–100 ms
//! in a loop and records how late it woke. A section during which its observer's timers ran
//! more than the safety margin (2 s) late is exempt from the real-time checks like a paused
//! one (and counted in the summary), so that a violation means a defect, not a starved runtime.
//!
//! The seed is printed first; `AZMUTEX_CHAOS_SEED=<n>` replays the same schedule.
//! `AZMUTEX_CHAOS_MINUTES` (default 1), `AZMUTEX_CHAOS_CLI` (2) and `AZMUTEX_CHAOS_LOCKERS` (2)
//! size the run; `AZMUTEX_CHAOS_ENTRA=1` adds a Locker client authenticating with Entra ID
//! whose token endpoint goes down now and then (the run then uses an HTTPS Azurite; see
//! [`entra`]); `scripts/chaos` wraps them.

#[path = "common/chaos_elect.rs"]
mod chaos_elect;
#[path = "common/chaos_semaphore.rs"]
mod chaos_semaphore;
mod common;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use azmutex::rest::RestRequest;
use azmutex::{AzureMutex, BreakPeriod, ClientOptions, LeaseDuration, LeaseState, LockError, Locker, LockerOptions};
use common::faults::{Fault, FaultProxy};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;

const BIN: &str = env!("CARGO_BIN_EXE_azmutex");
const LOCK: &str = "chaos";
/// The lease every client takes.
const LEASE: Duration = Duration::from_secs(15);
/// The library's default timeout of one HTTP request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// `azmutex run --kill-grace`.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// Scheduling and signal latency allowed between a deadline and its effect at the resource.
const SLACK: Duration = Duration::from_secs(1);
/// How long a client may take to exit once told to stop.
const EXIT_LIMIT: Duration = Duration::from_secs(40);
/// The safety margin between a holder's local deadline and the lease's end at the service: a
/// section during which its observer's timers ran later than this is exempt from the
/// real-time checks (like a paused one), since no client can keep its promises then.
const LAG_LIMIT: Duration = Duration::from_secs(2);
/// Timer lags from this size on are recorded one by one (smaller ones only count to the max).
const LAG_NOTE: Duration = Duration::from_millis(100);
/// Arrival-time noise allowed between two observations at the harness (a write, an exit).
const ARRIVAL_SLACK: Duration = Duration::from_millis(250);
/// Whether "at most one renewal per second of one lease while the service answers 503 with
/// Retry-After" is a checked property (rule 7), or only reported.
const RENEWAL_RATE_CHECKED: bool = true;

// ---------------------------------------------------------------------------------------------
// One clock for all processes

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process on this machine, so the
/// Locker worker processes can timestamp their events for the harness.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// An `Instant` and the CLOCK_MONOTONIC reading taken with it, in this process.
fn clock_base() -> (Instant, u64) {
    static BASE: std::sync::OnceLock<(Instant, u64)> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| {
        let before = Instant::now();
        let ns = mono_ns();
        let after = Instant::now();
        (before + (after - before) / 2, ns)
    })
}

/// The harness `Instant` of a CLOCK_MONOTONIC reading (from any process).
fn instant_of(ns: u64) -> Instant {
    let (base, base_ns) = clock_base();
    if ns >= base_ns {
        base + Duration::from_nanos(ns - base_ns)
    } else {
        base.checked_sub(Duration::from_nanos(base_ns - ns)).unwrap_or(base)
    }
}

/// Sleeps 50–100 ms in a loop and reports how late each wake-up was (CLOCK_MONOTONIC of the
/// wake-up, lag). Runs until dropped.
async fn lag_monitor(mut report: impl FnMut(u64, Duration)) {
    let mut rng = fastrand::Rng::new();
    loop {
        let nap = Duration::from_millis(rng.u64(50..=100));
        let due = mono_ns() + nap.as_nanos() as u64;
        tokio::time::sleep(nap).await;
        let now = mono_ns();
        report(now, Duration::from_nanos(now.saturating_sub(due)));
    }
}

// ---------------------------------------------------------------------------------------------
// Settings and schedule

/// The run's size and seed, from the environment.
#[derive(Debug, Clone)]
struct Settings {
    seed: u64,
    chaos: Duration,
    cli: usize,
    lockers: usize,
    /// One more Locker client, authenticating with Entra ID (see [`entra`]).
    entra: bool,
    /// Semaphore clients beside them (on a semaphore of their own).
    semaphores: usize,
}

impl Settings {
    fn from_env() -> Settings {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let seed = var("AZMUTEX_CHAOS_SEED")
            .map(|s| s.trim().parse().expect("AZMUTEX_CHAOS_SEED: an unsigned integer"))
            .unwrap_or_else(|| fastrand::u64(..) % 1_000_000_000);
        let minutes: f64 = var("AZMUTEX_CHAOS_MINUTES")
            .map(|s| s.trim().parse().expect("AZMUTEX_CHAOS_MINUTES: a number"))
            .unwrap_or(1.0);
        let count = |name: &str, default: usize| {
            var(name).map_or(default, |s| s.trim().parse().expect("client count: an integer"))
        };
        Settings {
            seed,
            chaos: Duration::from_secs_f64((minutes * 60.0).max(10.0)),
            cli: count("AZMUTEX_CHAOS_CLI", 2),
            lockers: count("AZMUTEX_CHAOS_LOCKERS", 2),
            entra: var("AZMUTEX_CHAOS_ENTRA").is_some_and(|v| v.trim() == "1"),
            semaphores: count("AZMUTEX_CHAOS_SEMAPHORES", 3),
        }
    }

    /// Every client: CLI clients first, then Locker clients, then the Entra client.
    fn clients(&self) -> usize {
        self.cli + self.lockers + usize::from(self.entra)
    }
}

/// One scheduled step, at an offset from the start of the chaos period.
#[derive(Debug, Clone)]
enum Action {
    /// Switch a proxy to `fault` for `len`: the proxy of whichever client holds the lock at that
    /// moment when `holder` (most faults only matter to a holder), else (or when nobody
    /// visibly holds it) client `client`'s.
    Fault {
        client: usize,
        holder: bool,
        fault: Fault,
        len: Duration,
    },
    /// SIGSTOP CLI client `.0` (its `azmutex` and its command) for `.1`.
    Pause(usize, Duration),
    /// Break the lease straight on Azurite: at once (`true`) or when it runs out (`false`).
    Break(bool),
    /// An operator removes the lock: breaks the lease at once and deletes the lock blob.
    Delete,
    /// The Entra client's token endpoint hangs (`true`) or fails (`false`) for `.1`.
    TokenOutage(bool, Duration),
}

/// A random fault and its length; `long` episodes are long enough to outlast a lease.
fn random_fault(rng: &mut fastrand::Rng, long: bool) -> (Fault, Duration) {
    let secs = |rng: &mut fastrand::Rng, lo: f64, hi: f64| Duration::from_secs_f64(lo + (hi - lo) * rng.f64());
    let (lo, hi) = if long { (6.0, 20.0) } else { (0.5, 8.0) };
    let len = secs(rng, lo, hi);
    let fault = match rng.u8(..9) {
        0 => Fault::Blackhole,
        1 => Fault::DropAnswers,
        2 => Fault::Delay(secs(rng, 0.2, 4.0)),
        3 => return (Fault::Reset, secs(rng, 0.5, 5.0)),
        4 => Fault::Answer500,
        5 => Fault::Answer503,
        // Retry-After 1..=30 s: sometimes more than the lease has left.
        6 => Fault::Answer503RetryAfter(rng.u32(1..=30)),
        7 => Fault::RefuseVersion,
        _ => Fault::Fail500AfterForward,
    };
    (fault, len)
}

/// The whole schedule, derived from the seed alone: background faults on every proxy, faults
/// aimed at the current holder, pauses of CLI clients and breaks.
fn schedule(s: &Settings) -> Vec<(Duration, Action)> {
    let mut rng = fastrand::Rng::with_seed(s.seed);
    let secs = |rng: &mut fastrand::Rng, lo: f64, hi: f64| Duration::from_secs_f64(lo + (hi - lo) * rng.f64());
    let end = s.chaos;
    let mut plan = Vec::new();
    for client in 0..s.clients() {
        let mut t = secs(&mut rng, 1.0, 10.0);
        while t < end {
            let (fault, len) = random_fault(&mut rng, false);
            plan.push((
                t,
                Action::Fault {
                    client,
                    holder: false,
                    fault,
                    len: len.min(end - t),
                },
            ));
            t += len + secs(&mut rng, 5.0, 20.0);
        }
    }
    let mut t = secs(&mut rng, 2.0, 8.0);
    while t < end {
        let long = rng.u8(..10) < 7;
        let (fault, len) = random_fault(&mut rng, long);
        let client = rng.usize(..s.clients());
        plan.push((
            t,
            Action::Fault {
                client,
                holder: true,
                fault,
                len: len.min(end - t),
            },
        ));
        t += len + secs(&mut rng, 3.0, 12.0);
    }
    for client in 0..s.cli {
        let mut t = secs(&mut rng, 3.0, 15.0);
        loop {
            let len = secs(&mut rng, 2.0, 14.0);
            if t + len >= end {
                break;
            }
            plan.push((t, Action::Pause(client, len)));
            t += len + secs(&mut rng, 5.0, 25.0);
        }
    }
    let mut t = secs(&mut rng, 5.0, 20.0);
    while t < end {
        let action = match rng.u8(..20) {
            0..=5 => Action::Break(true),
            6..=16 => Action::Break(false),
            _ => Action::Delete,
        };
        plan.push((t, action));
        t += secs(&mut rng, 8.0, 25.0);
    }
    if s.entra {
        let mut t = secs(&mut rng, 10.0, 40.0);
        while t < end {
            let len = secs(&mut rng, 5.0, 60.0).min(end - t);
            plan.push((t, Action::TokenOutage(rng.bool(), len)));
            t += len + secs(&mut rng, 20.0, 90.0);
        }
    }
    plan.sort_by_key(|(t, _)| *t);
    plan
}

/// Which client visibly holds the lock now: the newest open section, else a Locker between
/// `lock()` and the end of its work.
fn current_holder(r: &Records) -> Option<usize> {
    r.sections
        .iter()
        .filter(|s| s.end.is_none())
        .max_by_key(|s| s.start)
        .map(|s| s.client)
        .or_else(|| {
            r.holdings
                .iter()
                .rev()
                .find(|h| h.acquired.is_some() && h.outcome.is_none())
                .map(|h| h.client)
        })
}

// ---------------------------------------------------------------------------------------------
// Records

/// A critical section as the protected resource saw it: from the connection's arrival to its
/// close (a killed worker's section ends when the kernel closes its socket).
#[derive(Debug, Clone)]
struct Section {
    client: usize,
    run: u64,
    token: u64,
    pid: i32,
    ppid: i32,
    pgid: i32,
    start: Instant,
    end: Option<Instant>,
    writes: usize,
    rejected: usize,
}

/// One write as it arrived at the resource, in arrival order.
#[derive(Debug, Clone)]
struct WriteRecord {
    at: Instant,
    section: usize,
    token: u64,
    accepted: bool,
}

/// One acquisition attempt by a client: an `azmutex run` process, or one `Locker::lock` call.
#[derive(Debug, Clone)]
struct Holding {
    client: usize,
    run: u64,
    cli: bool,
    /// When the process was spawned or the `lock()` call began.
    spawned: Instant,
    /// When `lock()` returned (Locker clients only).
    acquired: Option<Instant>,
    /// When `azmutex run` said `acquired lock … after waiting` (it says so after waits over
    /// 0.5 s; a shorter wait ended near `spawned`).
    acquired_line: Option<Instant>,
    /// When the client declared the lock lost: the `lost` line on stderr, or `lost()` firing.
    lost_at: Option<Instant>,
    lost_reason: Option<String>,
    /// How it ended (exit status, error).
    outcome: Option<String>,
    /// The client reported success: `azmutex run` exited 0, or the `Locker` guard was
    /// released without a loss or an error.
    succeeded: bool,
    /// `azmutex run` exited 70 (lock lost).
    exited_lost: bool,
    /// When `azmutex run` exited (as the harness saw it), or the `Locker` guard's release
    /// returned: the holder's tree must have stopped writing by then.
    exited: Option<Instant>,
    /// The harness stalled this `azmutex run`'s stderr (how, for messages): its lines arrived
    /// late or never, so their times say nothing.
    stalled: Option<String>,
    /// How the command started the worker (`direct`, `sh`, `setsid`, …).
    launch: &'static str,
    stderr: Vec<(Instant, String)>,
}

impl Holding {
    fn new(client: usize, run: u64, cli: bool, spawned: Instant, acquired: Option<Instant>) -> Self {
        Self {
            client,
            run,
            cli,
            spawned,
            acquired,
            acquired_line: None,
            lost_at: None,
            lost_reason: None,
            outcome: None,
            succeeded: false,
            exited_lost: false,
            exited: None,
            stalled: None,
            launch: "direct",
            stderr: Vec::new(),
        }
    }
}

/// A wake-up of a timer-lag monitor that came at least [`LAG_NOTE`] late.
#[derive(Debug, Clone)]
struct LagRecord {
    /// The Locker client whose worker process saw it; `None`: the harness.
    client: Option<usize>,
    /// When the wake-up was due, and when it came.
    from: Instant,
    to: Instant,
}

/// A SIGSTOP/SIGCONT episode of a CLI client.
#[derive(Debug, Clone)]
struct PauseRecord {
    client: usize,
    start: Instant,
    end: Instant,
    targets: Vec<i32>,
}

/// A break sent straight to Azurite.
#[derive(Debug, Clone)]
struct BreakRecord {
    at: Instant,
    now: bool,
    /// The lock blob was deleted right after the break.
    delete: bool,
    /// Fencing tokens that may have been the holder's when an immediate break landed.
    tokens: Option<(u64, u64)>,
    outcome: String,
}

/// Everything the harness observed, on the harness's monotonic clock.
#[derive(Default)]
struct Records {
    sections: Vec<Section>,
    writes: Vec<WriteRecord>,
    holdings: Vec<Holding>,
    pauses: Vec<PauseRecord>,
    breaks: Vec<BreakRecord>,
    /// Proxy fault episodes started, per kind.
    episodes: HashMap<&'static str, u64>,
    notes: Vec<String>,
    /// Timer lags of [`LAG_NOTE`] or more, and the largest lag per process (`None`: the
    /// harness; `Some(client)`: that Locker client's worker process).
    lags: Vec<LagRecord>,
    max_lag: HashMap<Option<usize>, Duration>,
}

impl Records {
    fn lag(&mut self, client: Option<usize>, wake_ns: u64, lag: Duration) {
        let max = self.max_lag.entry(client).or_default();
        *max = (*max).max(lag);
        if lag >= LAG_NOTE {
            let to = instant_of(wake_ns);
            self.lags.push(LagRecord {
                client,
                from: to.checked_sub(lag).unwrap_or(to),
                to,
            });
        }
    }
}

type Shared = Arc<Mutex<Records>>;

// ---------------------------------------------------------------------------------------------
// The protected resource

/// Starts the protected resource on a thread and runtime of its own. Protocol, one line each:
/// `HELLO <client> <run> <token> <pid> <ppid> <pgid>`, then `W` per write; close ends the section.
/// A write is accepted when its token is at least the highest token accepted so far.
fn start_resource(records: Shared) -> SocketAddr {
    let highest = Arc::new(Mutex::new(0u64));
    common::proxy::serve(move |conn| serve_section(conn, Instant::now(), records.clone(), highest.clone()))
}

async fn serve_section(conn: tokio::net::TcpStream, start: Instant, records: Shared, highest: Arc<Mutex<u64>>) {
    let mut lines = BufReader::new(conn).lines();
    let Ok(Some(hello)) = lines.next_line().await else {
        return;
    };
    let f: Vec<&str> = hello.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    if f.first() != Some(&"HELLO") {
        return;
    }
    let index = {
        let mut r = records.lock().unwrap();
        r.sections.push(Section {
            client: num(1) as usize,
            run: num(2) as u64,
            token: num(3) as u64,
            pid: num(4) as i32,
            ppid: num(5) as i32,
            pgid: num(6) as i32,
            start,
            end: None,
            writes: 0,
            rejected: 0,
        });
        r.sections.len() - 1
    };
    let token = num(3) as u64;
    loop {
        let line = lines.next_line().await;
        let at = Instant::now();
        let mut r = records.lock().unwrap();
        match line {
            Ok(Some(_)) => {
                let mut h = highest.lock().unwrap();
                let accepted = token >= *h;
                if accepted {
                    *h = token;
                }
                r.writes.push(WriteRecord {
                    at,
                    section: index,
                    token,
                    accepted,
                });
                let s = &mut r.sections[index];
                s.writes += 1;
                if !accepted {
                    s.rejected += 1;
                }
            }
            _ => {
                r.sections[index].end = Some(at);
                return;
            }
        }
    }
}

/// The critical section's work: connect, introduce, write every 100 ms `writes` times, close.
/// With `held`, asks it before each write and stops when it says no: then returns true.
async fn protected_work(
    resource: SocketAddr,
    client: usize,
    run: u64,
    token: u64,
    writes: u64,
    held: Option<&(dyn Fn() -> bool + Sync)>,
) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(resource).await else {
        return false;
    };
    let _ = s.set_nodelay(true);
    let pid = std::process::id();
    // SAFETY: getpgrp has no preconditions.
    let pgid = unsafe { libc::getpgrp() };
    let hello = format!("HELLO {client} {run} {token} {pid} {pid} {pgid}\n");
    if s.write_all(hello.as_bytes()).await.is_err() {
        return false;
    }
    for _ in 0..writes {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if held.is_some_and(|held| !held()) {
            return true;
        }
        if s.write_all(b"W\n").await.is_err() {
            return false;
        }
    }
    false
}

/// The CLI clients' command: this test binary re-executed as this ignored test. Without the
/// harness's environment it does nothing.
#[test]
#[ignore = "the chaos checker's critical section, started by `azmutex run`"]
fn chaos_worker() {
    use std::io::Write;
    let Ok(addr) = std::env::var("AZMUTEX_CHAOS_WORKER") else {
        return;
    };
    let var = |n: &str| std::env::var(n).unwrap_or_default();
    if var("AZMUTEX_CHAOS_IGNORE_TERM") == "1" {
        // SAFETY: installs SIG_IGN; no handler code runs.
        unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    }
    let token = var("AZMUTEX_FENCING_TOKEN");
    let writes: u64 = var("AZMUTEX_CHAOS_WRITES").parse().unwrap_or(10);
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return;
    };
    let _ = s.set_nodelay(true);
    // SAFETY: these calls have no preconditions.
    let (ppid, pgid) = unsafe { (libc::getppid(), libc::getpgrp()) };
    let hello = format!(
        "HELLO {} {} {} {} {ppid} {pgid}\n",
        var("AZMUTEX_CHAOS_CLIENT"),
        var("AZMUTEX_CHAOS_RUN"),
        if token.is_empty() { "0" } else { &token },
        std::process::id()
    );
    if s.write_all(hello.as_bytes()).is_err() {
        return;
    }
    for _ in 0..writes {
        std::thread::sleep(Duration::from_millis(100));
        if s.write_all(b"W\n").is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

/// What every client task needs.
struct Ctx {
    records: Shared,
    resource: SocketAddr,
    container: String,
    /// Per CLI client: the pid of its running `azmutex` (0 when none).
    cli_pids: Vec<std::sync::atomic::AtomicI32>,
}

fn options() -> ClientOptions {
    let mut o = ClientOptions::default();
    o.retry.call_timeout = Duration::from_secs(10);
    o
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// How many writes (100 ms apart) a critical section makes: mostly 0.2–5 s of work, and three
/// sections in ten 14–25 s, long enough for a fault to outlast the lease under them (a loss is
/// declared no sooner than 13 s after the last confirmed request).
fn section_writes(rng: &mut fastrand::Rng) -> u64 {
    if rng.u8(..10) < 3 {
        rng.u64(140..=250)
    } else {
        rng.u64(2..=50)
    }
}

/// How a CLI run's command starts the worker: `(name, command prefix before the worker)`.
/// Besides a direct start and `sh` in between, workers leave the command's process group:
/// `setsid` under a waiting `sh`, a daemonizing double fork (the worker is orphaned and
/// reparented to `azmutex`, a subreaper, while the command exits 0 after 0.2 s), `setsid`
/// itself (it forks when started as a group leader, and its parent exits at once), and
/// `timeout` (which moves itself into a group of its own).
fn launch(rng: &mut fastrand::Rng) -> (&'static str, &'static [&'static str]) {
    match rng.u8(..12) {
        0..=4 => ("direct", &[]),
        // The worker is a grandchild: signalling only `sh` leaves it running.
        5 | 6 => ("sh", &["sh", "-c", "\"$0\" \"$@\"; :"]),
        7 => ("setsid-wait", &["sh", "-c", "setsid \"$0\" \"$@\" & wait"]),
        8 => ("double-fork", &["sh", "-c", "( setsid \"$0\" \"$@\" & ) ; sleep 0.2"]),
        9 => ("setsid", &["setsid"]),
        10 => ("timeout", &["timeout", "600"]),
        _ => ("sh-timeout", &["sh", "-c", "timeout 600 \"$0\" \"$@\"; :"]),
    }
}

/// Whether (and how) the harness stalls a CLI run's stderr: from `.0` after the start, for
/// `.1` (`None`: until `azmutex` exits). One run in four; those run with `-vv`, and the harness
/// fills the pipe when the stall begins (a whole-run stall: before `azmutex` starts).
fn stall(rng: &mut fastrand::Rng) -> Option<(Duration, Option<Duration>)> {
    if rng.u8(..4) != 0 {
        return None;
    }
    if rng.bool() {
        Some((Duration::ZERO, None))
    } else {
        let after = Duration::from_secs_f64(5.0 * rng.f64());
        let len = Duration::from_secs_f64(2.0 + 38.0 * rng.f64());
        Some((after, Some(len)))
    }
}

/// A pipe for `azmutex run`'s stderr: (the harness's read end, the child's write end).
fn stderr_pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills in two new descriptors, which we then own.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are fresh and owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Fills the pipe whose read end is `read` (with empty lines) until a write would block,
/// through a write end of its own (opened from /proc, with O_NONBLOCK on that open file
/// description only: the child's stderr stays blocking).
fn fill_pipe(read: &impl AsRawFd) {
    let path = format!("/proc/self/fd/{}\0", read.as_raw_fd());
    // SAFETY: open/write/close on a descriptor we open and close here.
    unsafe {
        let fd = libc::open(
            path.as_ptr().cast(),
            libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        );
        assert!(fd >= 0, "open {path}: {}", std::io::Error::last_os_error());
        let chunk = [b'\n'; 4096];
        while libc::write(fd, chunk.as_ptr().cast(), chunk.len()) > 0 {}
        while libc::write(fd, chunk.as_ptr().cast(), 1) > 0 {}
        libc::close(fd);
    }
}

/// A CLI client: `azmutex run` processes one after another, through `proxy`.
async fn cli_client(ctx: Arc<Ctx>, client: usize, proxy: SocketAddr, seed: u64, stop: watch::Receiver<bool>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let exe = std::env::current_exe().unwrap();
    let cs = format!(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={};BlobEndpoint=http://{proxy}/devstoreaccount1",
        common::DEV_KEY
    );
    let mut run = 0u64;
    while !*stop.borrow() {
        run += 1;
        let writes = section_writes(&mut rng);
        let ignore_term = rng.u8(..4) == 0;
        let (launch_name, prefix) = launch(&mut rng);
        let stall = stall(&mut rng);
        let (stderr_read, stderr_write) = stderr_pipe();
        if stall.is_some_and(|(after, _)| after.is_zero()) {
            // Full before azmutex writes its first line.
            fill_pipe(&stderr_read);
        }
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .args(if stall.is_some() { &["-vv"][..] } else { &[] })
            .args([
                "--connection-string",
                &cs,
                "--container",
                &ctx.container,
                "--timeout",
                "10s",
            ])
            .args(["run", LOCK, "--lease", "15", "--kill-grace"])
            .arg(format!("{}s", KILL_GRACE.as_secs()))
            .arg("--owner")
            .arg(format!("chaos client {client} run {run}"))
            .arg("--")
            .args(prefix)
            .arg(&exe)
            .args([
                "--exact",
                "chaos_worker",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
                "-q",
            ])
            .env("AZMUTEX_CHAOS_WORKER", ctx.resource.to_string())
            .env("AZMUTEX_CHAOS_CLIENT", client.to_string())
            .env("AZMUTEX_CHAOS_RUN", run.to_string())
            .env("AZMUTEX_CHAOS_WRITES", writes.to_string())
            .env("AZMUTEX_CHAOS_IGNORE_TERM", if ignore_term { "1" } else { "0" })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr_write))
            .kill_on_drop(true);
        // SAFETY: setsid is async-signal-safe. A session of its own keeps `azmutex` (and what it
        // starts) off the terminal of whoever runs the tests.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let spawned = Instant::now();
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => panic!("cannot start {BIN}: {e}"),
        };
        drop(cmd); // our copy of the pipe's write end
        let pid = child.id().unwrap_or(0) as i32;
        let index = {
            let mut r = ctx.records.lock().unwrap();
            let mut h = Holding::new(client, run, true, spawned, None);
            h.launch = launch_name;
            h.stalled = stall.map(|(after, len)| match len {
                None => "stderr stalled for the whole run".to_string(),
                Some(len) => format!(
                    "stderr stalled from {:.1}s for {:.1}s",
                    after.as_secs_f64(),
                    len.as_secs_f64()
                ),
            });
            r.holdings.push(h);
            r.holdings.len() - 1
        };
        ctx.cli_pids[client].store(pid, std::sync::atomic::Ordering::SeqCst);
        let stderr = tokio::net::unix::pipe::Receiver::from_owned_fd(stderr_read).expect("stderr pipe");
        let records = ctx.records.clone();
        let (exit_tx, exit_rx) = tokio::sync::oneshot::channel::<()>();
        // Not awaited: an orphaned grandchild may keep the pipe open.
        tokio::spawn(async move {
            let record = |line: String| {
                if line.is_empty() {
                    return; // the filler of a stalled pipe
                }
                let at = Instant::now();
                let mut r = records.lock().unwrap();
                let h = &mut r.holdings[index];
                // A stalled pipe's lines arrive late: their times say nothing.
                if h.stalled.is_none() && h.acquired_line.is_none() && line.starts_with("azmutex: acquired lock ") {
                    h.acquired_line = Some(at);
                }
                if h.lost_at.is_none() && line.starts_with("azmutex: lock ") && line.contains(" lost (") {
                    h.lost_at = Some(at);
                    h.lost_reason = Some(line.clone());
                }
                h.stderr.push((at, line));
            };
            let mut lines = BufReader::new(stderr).lines();
            if let Some((after, len)) = stall {
                let from = tokio::time::Instant::now() + after;
                loop {
                    tokio::select! {
                        biased;
                        _ = tokio::time::sleep_until(from) => break,
                        line = lines.next_line() => match line {
                            Ok(Some(line)) => record(line),
                            _ => return,
                        },
                    }
                }
                // Full from now on: azmutex's next line finds no room.
                fill_pipe(lines.get_ref().get_ref());
                match len {
                    Some(len) => tokio::time::sleep(len).await,
                    None => {
                        let _ = exit_rx.await;
                    }
                }
            }
            while let Ok(Some(line)) = lines.next_line().await {
                record(line);
            }
        });
        let status = tokio::select! {
            status = child.wait() => status.map_err(|e| e.to_string()),
            _ = stopped(stop.clone()) => {
                // SAFETY: kill(2) on our own, not yet reaped, child.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                match tokio::time::timeout(EXIT_LIMIT, child.wait()).await {
                    Ok(status) => status.map_err(|e| e.to_string()),
                    Err(_) => {
                        let _ = child.kill().await;
                        Err(format!("did not exit within {EXIT_LIMIT:?} of SIGTERM; killed"))
                    }
                }
            }
        };
        let exited = Instant::now();
        let _ = exit_tx.send(());
        ctx.cli_pids[client].store(0, std::sync::atomic::Ordering::SeqCst);
        let succeeded = matches!(&status, Ok(s) if s.success());
        let exited_lost = matches!(&status, Ok(s) if s.code() == Some(70));
        let outcome = match status {
            Ok(s) => s.to_string(),
            Err(e) => {
                ctx.records
                    .lock()
                    .unwrap()
                    .notes
                    .push(format!("client {client} run {run}: {e}"));
                e
            }
        };
        {
            let mut r = ctx.records.lock().unwrap();
            let h = &mut r.holdings[index];
            h.outcome = Some(outcome);
            h.succeeded = succeeded;
            h.exited_lost = exited_lost;
            h.exited = Some(exited);
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(50..400))).await;
    }
}

/// A library client: a worker process of its own (this test binary re-executed as the ignored
/// test `chaos_locker`) runs a `Locker` loop through `proxy` and reports its events on stdout,
/// timestamped with CLOCK_MONOTONIC. Closing its stdin tells it to stop.
async fn locker_client(
    ctx: Arc<Ctx>,
    client: usize,
    proxy: SocketAddr,
    seed: u64,
    env: Vec<(&'static str, String)>,
    stop: watch::Receiver<bool>,
) {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.envs(env);
    cmd.args([
        "--exact",
        "chaos_locker",
        "--ignored",
        "--nocapture",
        "--test-threads",
        "1",
        "-q",
    ])
    .env("AZMUTEX_CHAOS_LOCKER", ctx.resource.to_string())
    .env("AZMUTEX_CHAOS_PROXY", proxy.to_string())
    .env("AZMUTEX_CHAOS_CONTAINER", &ctx.container)
    .env("AZMUTEX_CHAOS_CLIENT", client.to_string())
    .env("AZMUTEX_CHAOS_CLIENT_SEED", seed.to_string())
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe: the worker dies with the harness.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("cannot start the Locker worker process");
    let mut stdin = child.stdin.take();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut index: HashMap<u64, usize> = HashMap::new();
    let mut stop_wait = Box::pin(stopped(stop.clone()));
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let line = tokio::select! {
            line = lines.next_line() => line,
            _ = &mut stop_wait, if stdin.is_some() => {
                stdin = None; // EOF on its stdin: stop
                deadline = Some(tokio::time::Instant::now() + EXIT_LIMIT);
                continue;
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                let _ = child.kill().await;
                ctx.records.lock().unwrap().notes.push(format!(
                    "client {client} (Locker worker) did not exit within {EXIT_LIMIT:?} of being told to stop; killed"
                ));
                break;
            }
        };
        let Ok(Some(line)) = line else { break };
        let Some(event) = line.strip_prefix("@chaos ") else {
            continue;
        };
        let mut f = event.splitn(2, ' ');
        let (kind, rest) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
        let num = |i: usize| rest.split(' ').nth(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let tail = |n: usize| rest.splitn(n + 1, ' ').nth(n).unwrap_or("").to_string();
        let mut r = ctx.records.lock().unwrap();
        match kind {
            "acq" => {
                let run = num(0);
                let mut h = Holding::new(client, run, false, instant_of(num(1)), Some(instant_of(num(2))));
                h.launch = "locker";
                r.holdings.push(h);
                index.insert(run, r.holdings.len() - 1);
            }
            "lost" => {
                if let Some(&i) = index.get(&num(0)) {
                    r.holdings[i].lost_at = Some(instant_of(num(1)));
                    r.holdings[i].lost_reason = Some(tail(2));
                }
            }
            "out" => {
                if let Some(&i) = index.get(&num(0)) {
                    let h = &mut r.holdings[i];
                    h.exited = Some(instant_of(num(1)));
                    h.succeeded = num(2) == 1;
                    h.outcome = Some(tail(3));
                }
            }
            "lag" => r.lag(Some(client), num(0), Duration::from_nanos(num(1))),
            "note" => r.notes.push(rest.to_string()),
            _ => {}
        }
    }
    drop(stdin);
    match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
        Ok(Ok(status)) if status.success() => {}
        Ok(Ok(status)) => ctx
            .records
            .lock()
            .unwrap()
            .notes
            .push(format!("client {client} (Locker worker) failed: {status}")),
        _ => {
            let _ = child.kill().await;
        }
    }
}

/// The Locker clients' worker process: this test binary re-executed as this ignored test.
/// Without the harness's environment it does nothing.
#[test]
#[ignore = "a chaos checker Locker client, started by the harness"]
fn chaos_locker() {
    let var = |n: &str| std::env::var(n).ok();
    let Some(resource) = var("AZMUTEX_CHAOS_LOCKER") else {
        return;
    };
    let resource: SocketAddr = resource.parse().unwrap();
    let proxy: SocketAddr = var("AZMUTEX_CHAOS_PROXY").unwrap().parse().unwrap();
    let container = var("AZMUTEX_CHAOS_CONTAINER").unwrap();
    let client: usize = var("AZMUTEX_CHAOS_CLIENT").unwrap().parse().unwrap();
    let seed: u64 = var("AZMUTEX_CHAOS_CLIENT_SEED").unwrap().parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let (stop_tx, stop_rx) = watch::channel(false);
        // Stop when the harness closes our stdin (or dies).
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 64];
            while matches!(tokio::io::AsyncReadExt::read(&mut stdin, &mut buf).await, Ok(n) if n > 0) {}
            let _ = stop_tx.send(true);
        });
        // Every lag of LAG_NOTE or more, and each new maximum.
        let mut max = Duration::ZERO;
        let monitor = tokio::spawn(lag_monitor(move |wake, lag| {
            if lag >= LAG_NOTE || lag > max {
                println!("@chaos lag {wake} {}", lag.as_nanos());
            }
            max = max.max(lag);
        }));
        // The Entra client talks to an HTTPS Azurite directly; the others through their proxy.
        let (config, client_options) = entra::worker_config().unwrap_or_else(|| (common::config_via(proxy), options()));
        locker_loop(resource, config, client_options, &container, client, seed, stop_rx).await;
        monitor.abort();
    });
}

/// One Locker client's loop, in its worker process: `Locker` with fencing, doing the work
/// inside `tokio::select!` with `guard.lost()`; events go to stdout for the harness.
async fn locker_loop(
    resource: SocketAddr,
    config: azmutex::StorageConfig,
    client_options: ClientOptions,
    container: &str,
    client: usize,
    seed: u64,
    stop: watch::Receiver<bool>,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mutex = AzureMutex::builder(config, container)
        .fencing(true)
        .client_options(client_options)
        .build()
        .unwrap();
    let lockopts = LockerOptions {
        lease: LeaseDuration::seconds(LEASE.as_secs()).unwrap(),
        report_holder: false,
        ..LockerOptions::default()
    };
    let locker = Locker::with_options(mutex, LOCK, lockopts).unwrap();
    let mut run = 0u64;
    while !*stop.borrow() {
        run += 1;
        let spawned = mono_ns();
        let mut guard = match locker.lock_until(None, stopped(stop.clone())).await {
            Ok(g) => g,
            Err(LockError::Cancelled { .. }) => break,
            Err(e) => {
                println!("@chaos note client {client} run {run}: lock() failed: {e}");
                tokio::time::sleep(Duration::from_millis(rng.u64(100..500))).await;
                continue;
            }
        };
        let token = guard.fencing_token().unwrap_or(0);
        println!("@chaos acq {run} {spawned} {} {token}", mono_ns());
        let writes = section_writes(&mut rng);
        // Half the sections also ask `is_held()` before each write, as the README advises
        // (it reads the clocks, so it stays right when the runtime runs `lost()` late).
        let check_held = rng.bool();
        let held = || guard.is_held();
        let lost = guard.lost();
        let lost = tokio::select! {
            biased;
            reason = lost => Some(reason.to_string()),
            unheld = protected_work(resource, client, run, token, writes, check_held.then_some(&held)) => {
                unheld.then(|| format!("is_held() said no before a write ({:?})", guard.lost_reason()))
            }
            _ = stopped(stop.clone()) => None,
        };
        if let Some(reason) = &lost {
            let reason = reason.replace('\n', " ");
            println!("@chaos lost {run} {} {reason}", mono_ns());
        }
        let released = guard.release().await;
        let succeeded = lost.is_none() && released.is_ok();
        let outcome = match (&lost, released) {
            (Some(_), _) => "lost".to_string(),
            (None, Err(e)) => format!("release failed: {e}").replace('\n', " "),
            (None, Ok(_)) => "released".to_string(),
        };
        println!("@chaos out {run} {} {} {outcome}", mono_ns(), u8::from(succeeded));
        tokio::time::sleep(Duration::from_millis(rng.u64(50..400))).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Pauses and breaks

/// Sends SIGCONT to everything it stopped when dropped, even on a panic.
struct Stopped(Vec<i32>);

impl Stopped {
    fn stop(&mut self, target: i32) {
        if target == 0 || self.0.contains(&target) {
            return;
        }
        // SAFETY: kill(2); a negative target is a process group.
        unsafe { libc::kill(target, libc::SIGSTOP) };
        self.0.push(target);
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        for t in self.0.iter().rev() {
            // SAFETY: kill(2) on a process (group) we stopped.
            unsafe { libc::kill(*t, libc::SIGCONT) };
        }
    }
}

/// Stops CLI client `client`'s `azmutex` and its command for `len`.
async fn pause(ctx: Arc<Ctx>, client: usize, len: Duration) {
    let azmutex_pid = ctx.cli_pids[client].load(std::sync::atomic::Ordering::SeqCst);
    if azmutex_pid == 0 {
        ctx.records
            .lock()
            .unwrap()
            .notes
            .push(format!("pause of client {client} skipped: no process"));
        return;
    }
    // SAFETY: getpgrp has no preconditions.
    let own_group = unsafe { libc::getpgrp() };
    let start = Instant::now();
    let mut stopped = Stopped(Vec::new());
    stopped.stop(azmutex_pid);
    let until = start + len;
    loop {
        // Workers that show up during the pause (spawned just before it) are stopped too.
        let workers: Vec<(i32, i32, i32)> = {
            let r = ctx.records.lock().unwrap();
            r.sections
                .iter()
                .filter(|s| s.client == client && s.end.is_none())
                .map(|s| (s.pid, s.ppid, s.pgid))
                .collect()
        };
        for (pid, ppid, pgid) in workers {
            stopped.stop(pid);
            if ppid != azmutex_pid && ppid > 1 && ppid != std::process::id() as i32 {
                stopped.stop(ppid); // the `sh` between azmutex and the worker
            }
            if pgid > 0 && pgid != own_group {
                stopped.stop(-pgid);
            }
        }
        let now = Instant::now();
        if now >= until {
            break;
        }
        tokio::time::sleep((until - now).min(Duration::from_millis(100))).await;
    }
    let targets = stopped.0.clone();
    drop(stopped);
    ctx.records.lock().unwrap().pauses.push(PauseRecord {
        client,
        start,
        end: Instant::now(),
        targets,
    });
}

/// The lowest fencing token an immediate break may take from its holder, given the lock's
/// state and token just before: a lease that is leased **or breaking** (a break at lease end
/// earlier, whose period has not run out: the holder still holds it) is its current token's;
/// otherwise nobody held it then, and only a later acquisition (the next token) can be hit.
fn first_victim(state: LeaseState, token: Option<u64>) -> u64 {
    match state {
        LeaseState::Leased | LeaseState::Breaking => token.unwrap_or(0),
        _ => token.map_or(0, |t| t + 1),
    }
}

/// Breaks the lease straight on Azurite (then deletes the lock blob when `delete`), reading
/// the fencing counter before and after so that an immediate break's victims can be named.
async fn break_lease(ctx: Arc<Ctx>, breaker: AzureMutex, now: bool, delete: bool) {
    let before = breaker.inspect(LOCK).await.ok();
    let at = Instant::now();
    let period = if now { Some(BreakPeriod::NOW) } else { None };
    let mut outcome = match breaker.break_lease(LOCK, period).await {
        Ok(d) => format!("ok, free in {}s", d.as_secs()),
        Err(e) => format!("error: {e}"),
    };
    let after = breaker.inspect(LOCK).await.ok();
    if delete {
        let req = RestRequest::new("delete", reqwest::Method::DELETE, &ctx.container, Some(LOCK));
        outcome += &match breaker
            .client()
            .send(&req, Instant::now() + Duration::from_secs(5))
            .await
        {
            Ok(resp) if resp.status == 202 => "; lock blob deleted".to_string(),
            Ok(resp) => format!("; delete answered {}", resp.status),
            Err(e) => format!("; delete failed: {e}"),
        };
    }
    let tokens = now.then(|| {
        let lo = before.as_ref().map(|i| first_victim(i.state, i.fencing_token));
        let hi = after.as_ref().and_then(|i| i.fencing_token);
        let lo = lo.or(hi).unwrap_or(0);
        (lo, hi.filter(|h| *h >= lo).unwrap_or(lo))
    });
    ctx.records.lock().unwrap().breaks.push(BreakRecord {
        at,
        now,
        delete,
        tokens,
        outcome,
    });
}

// ---------------------------------------------------------------------------------------------
// The Entra ID client (AZMUTEX_CHAOS_ENTRA=1)

/// With `AZMUTEX_CHAOS_ENTRA=1` one more Locker client authenticates with Entra ID (a client
/// secret, tokens from a local token endpoint that the schedule takes down now and then: it
/// hangs or fails). Azurite checks bearer tokens only over HTTPS (`--oauth basic`), so the
/// whole run then uses an HTTPS Azurite: the fault proxies speak TLS to it (clients still
/// speak plain HTTP and SharedKey to their proxies), and the Entra client, whose tokens must
/// travel over HTTPS, talks to Azurite directly: its faults are the token endpoint's.
#[cfg(feature = "entra")]
#[path = "common/token_server.rs"]
mod token_server;

#[cfg(feature = "entra")]
mod entra {
    use super::token_server::{Mode, TokenServer, CLIENT_ID, SECRET, TENANT};
    use super::*;
    use azmutex::auth::entra::EntraCredential;
    use azmutex::{Credential, StorageConfig};

    /// Lifetime of the Entra client's tokens: refreshed after half of it, handed out until 10 s
    /// before expiry, so outages of 20 s or more around a refresh leave it without a token.
    const TOKEN_LIFETIME: u64 = 60;

    pub struct Setup {
        pub endpoint: String,
        pub connection_string: String,
        pub ca_pem: String,
        ca_path: std::path::PathBuf,
        token: Arc<TokenServer>,
    }

    pub async fn start() -> Setup {
        let (pki, service) = token_server::https_oauth_azurite();
        let token = TokenServer::start(Some((&pki.cert_pem, &pki.key_pem)), TOKEN_LIFETIME).await;
        Setup {
            endpoint: service.endpoint.clone(),
            connection_string: service.connection_string.clone(),
            ca_pem: pki.ca_pem.clone(),
            ca_path: pki.dir.join("ca.pem"),
            token,
        }
    }

    impl Setup {
        /// The Entra worker process's environment.
        pub fn worker_env(&self) -> Vec<(&'static str, String)> {
            vec![
                ("AZMUTEX_CHAOS_ENTRA_ENDPOINT", self.endpoint.clone()),
                ("AZMUTEX_CHAOS_ENTRA_CA", self.ca_path.display().to_string()),
                ("AZMUTEX_CHAOS_ENTRA_AUTHORITY", self.token.base.clone()),
            ]
        }

        /// Takes the token endpoint down (`Some(true)`: it hangs, `Some(false)`: it fails) or
        /// brings it back (`None`).
        pub fn outage(&self, hang: Option<bool>) {
            self.token.set_mode(match hang {
                Some(true) => Mode::Hang,
                Some(false) => Mode::Fail,
                None => Mode::Normal,
            });
        }

        pub fn token_requests(&self) -> u64 {
            self.token.requests()
        }
    }

    /// In the Entra worker process: its storage configuration and client options, from the
    /// environment `worker_env` set.
    pub fn worker_config() -> Option<(StorageConfig, ClientOptions)> {
        let endpoint = std::env::var("AZMUTEX_CHAOS_ENTRA_ENDPOINT").ok()?;
        let ca = std::fs::read(std::env::var("AZMUTEX_CHAOS_ENTRA_CA").unwrap()).unwrap();
        let authority = std::env::var("AZMUTEX_CHAOS_ENTRA_AUTHORITY").unwrap();
        let mut o = options();
        o.ca_certificates_pem.push(ca);
        let vars: HashMap<&str, String> = [
            ("AZURE_TENANT_ID", TENANT.to_string()),
            ("AZURE_CLIENT_ID", CLIENT_ID.to_string()),
            ("AZURE_CLIENT_SECRET", SECRET.to_string()),
            ("AZURE_AUTHORITY_HOST", authority),
        ]
        .into_iter()
        .collect();
        let credential = EntraCredential::builder()
            .client_options(&o)
            .vars(move |name| vars.get(name).cloned())
            .client_secret_credential()
            .unwrap();
        let config = StorageConfig::new(&endpoint, Credential::Bearer(Arc::new(credential))).unwrap();
        Some((config, o))
    }
}

#[cfg(not(feature = "entra"))]
mod entra {
    use super::*;

    pub struct Setup {
        pub endpoint: String,
        pub connection_string: String,
        pub ca_pem: String,
    }

    pub async fn start() -> Setup {
        panic!("AZMUTEX_CHAOS_ENTRA=1 needs the `entra` feature");
    }

    impl Setup {
        pub fn worker_env(&self) -> Vec<(&'static str, String)> {
            Vec::new()
        }

        pub fn outage(&self, _hang: Option<bool>) {}

        pub fn token_requests(&self) -> u64 {
            0
        }
    }

    pub fn worker_config() -> Option<(azmutex::StorageConfig, ClientOptions)> {
        None
    }
}

/// TLS from the fault proxies to an HTTPS Azurite whose certificate (for `localhost`) the
/// test CA `ca_pem` signed.
fn upstream_tls(ca_pem: &str) -> common::faults::UpstreamTls {
    use rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (
        tokio_rustls::TlsConnector::from(Arc::new(config)),
        rustls::pki_types::ServerName::try_from("localhost").unwrap(),
    )
}

// ---------------------------------------------------------------------------------------------
// The checker

/// The checker's verdict and the numbers for the summary.
#[derive(Default)]
struct Verdict {
    violations: Vec<String>,
    /// Smallest (margin, description) between a declared loss and the next acquisition.
    min_margin: Option<(Duration, String)>,
    losses_checked: usize,
    excluded: HashMap<&'static str, usize>,
}

/// Seconds since `t0`, for messages.
fn at(t0: Instant, t: Instant) -> String {
    if t >= t0 {
        format!("{:.3}s", (t - t0).as_secs_f64())
    } else {
        format!("-{:.3}s", (t0 - t).as_secs_f64())
    }
}

/// Why a section is exempt from the real-time checks, if it is: its holder was paused during
/// it or while its successful acquire was in flight, an immediate break hit its lease, or the
/// timers of the process that observes it ran more than [`LAG_LIMIT`] late meanwhile.
///
/// That acquire was sent at most one request timeout (5 s) before `run` reported the lock
/// acquired (or before it was spawned, when it did not wait); a pause that ended earlier
/// happened while `run` was merely waiting, and excuses nothing.
///
/// Timer lag: a Locker client's section is observed by its worker process (its loss
/// declaration) and the harness (the resource's arrival times); an `azmutex run` section by
/// the harness (the times of its stderr lines). The window runs from the spawn (or the start
/// of `lock()`) to the section's end or the declared loss, whichever is later.
fn exemption(r: &Records, s: &Section, end_of_run: Instant) -> Option<&'static str> {
    let holding = r.holdings.iter().find(|h| h.client == s.client && h.run == s.run);
    let spawned = holding.map_or(s.start, |h| h.spawned);
    let reported = holding.and_then(|h| h.acquired_line).unwrap_or(spawned);
    let from = spawned.max(reported.checked_sub(REQUEST_TIMEOUT).unwrap_or(spawned));
    let to = s.end.unwrap_or(end_of_run);
    if r.pauses
        .iter()
        .any(|p| p.client == s.client && p.start <= to && p.end >= from)
    {
        return Some("paused");
    }
    if r.breaks
        .iter()
        .any(|b| b.tokens.is_some_and(|(lo, hi)| lo <= s.token && s.token <= hi))
    {
        return Some("broken");
    }
    let cli = holding.is_none_or(|h| h.cli);
    let lag_to = to.max(holding.and_then(|h| h.lost_at).unwrap_or(to));
    if r.lags.iter().any(|l| {
        (l.client.is_none() || (!cli && l.client == Some(s.client)))
            && l.to - l.from > LAG_LIMIT
            && l.from <= lag_to
            && l.to >= spawned
    }) {
        return Some("timer lag");
    }
    None
}

fn describe(r: &Records, t0: Instant, s: &Section) -> String {
    let kind = if r.holdings.iter().any(|h| h.client == s.client && h.cli) {
        "cli"
    } else {
        "locker"
    };
    let how = r
        .holdings
        .iter()
        .find(|h| h.client == s.client && h.run == s.run && h.cli)
        .map_or(String::new(), |h| {
            format!(
                " ({}{})",
                h.launch,
                if h.stalled.is_some() { ", stderr stalled" } else { "" }
            )
        });
    format!(
        "{kind} client {} run {}{how} token {} [{} .. {}] writes {} rejected {}",
        s.client,
        s.run,
        s.token,
        at(t0, s.start),
        s.end.map_or("never closed".into(), |e| at(t0, e)),
        s.writes,
        s.rejected
    )
}

/// When a section's holder acquired, as near as the harness knows: `lock()`'s return for a
/// Locker, the section's start for a CLI process.
fn acquired(r: &Records, s: &Section) -> Instant {
    r.holdings
        .iter()
        .find(|h| h.client == s.client && h.run == s.run)
        .and_then(|h| h.acquired)
        .unwrap_or(s.start)
}

fn check(r: &Records, t0: Instant, end_of_run: Instant) -> Verdict {
    let mut v = Verdict::default();
    let exempt: Vec<Option<&'static str>> = r.sections.iter().map(|s| exemption(r, s, end_of_run)).collect();
    for e in exempt.iter().flatten() {
        *v.excluded.entry(e).or_default() += 1;
    }
    let mut strict: Vec<usize> = (0..r.sections.len()).filter(|i| exempt[*i].is_none()).collect();
    strict.sort_by_key(|i| r.sections[*i].start);

    // (1) no overlap between sections of unpaused, unbroken holders.
    for (n, &a) in strict.iter().enumerate() {
        let sa = &r.sections[a];
        for &b in &strict[n + 1..] {
            let sb = &r.sections[b];
            if sa.end.is_none_or(|end| sb.start < end) {
                v.violations.push(format!(
                    "(1) overlap: {} and {}",
                    describe(r, t0, sa),
                    describe(r, t0, sb)
                ));
            }
        }
    }

    // (2) fencing at the resource.
    let mut highest = 0;
    // Per section: rejected writes not excused, and when the first arrived.
    let mut unexcused: HashMap<usize, (usize, Instant)> = HashMap::new();
    for w in &r.writes {
        if w.accepted {
            if w.token < highest {
                v.violations.push(format!(
                    "(2) accepted token {} after {highest} at {}",
                    w.token,
                    at(t0, w.at)
                ));
            }
            highest = highest.max(w.token);
        } else {
            let s = &r.sections[w.section];
            let holding = r.holdings.iter().find(|h| h.client == s.client && h.run == s.run);
            let lost_before = holding.and_then(|h| h.lost_at).is_some_and(|l| l <= w.at);
            // A stalled stderr's loss line arrives late or never: rule 6 judges these writes.
            let stalled = holding.is_some_and(|h| h.stalled.is_some());
            if exempt[w.section].is_none() && !lost_before && !stalled {
                unexcused.entry(w.section).or_insert((0, w.at)).0 += 1;
            }
        }
    }
    let mut unexcused: Vec<_> = unexcused.into_iter().collect();
    unexcused.sort_by_key(|(_, (_, first))| *first);
    for (section, (count, first)) in unexcused {
        v.violations.push(format!(
            "(2) {count} write(s) rejected, the first at {}, from a holder neither paused, broken nor declared lost: {}",
            at(t0, first),
            describe(r, t0, &r.sections[section])
        ));
    }
    let mut by_token: HashMap<u64, Vec<&Section>> = HashMap::new();
    for s in &r.sections {
        by_token.entry(s.token).or_default().push(s);
    }
    for (token, list) in &by_token {
        if *token == 0 {
            for s in list {
                v.violations
                    .push(format!("(2) section without a fencing token: {}", describe(r, t0, s)));
            }
        } else if list.len() > 1 {
            let all: Vec<String> = list.iter().map(|s| describe(r, t0, s)).collect();
            v.violations.push(format!(
                "(2) fencing token {token} handed out twice: {}",
                all.join("; ")
            ));
        }
    }
    for pair in strict.windows(2) {
        let (a, b) = (&r.sections[pair[0]], &r.sections[pair[1]]);
        if b.token <= a.token {
            v.violations.push(format!(
                "(2) tokens out of real-time order: {} then {}",
                describe(r, t0, a),
                describe(r, t0, b)
            ));
        }
    }

    // The harness recognizes `run`'s loss line; if its wording changes, say so rather than
    // silently checking less.
    for h in r
        .holdings
        .iter()
        .filter(|h| h.exited_lost && h.lost_at.is_none() && h.stalled.is_none())
    {
        v.violations.push(format!(
            "(3) client {} run {}: `azmutex run` exited 70 but the harness saw no `azmutex: lock \"…\" lost (…)` line on its stderr",
            h.client, h.run
        ));
    }

    // (3) a declared loss ends the section: at once in a Locker, within --kill-grace for `run`
    // (its command and all its descendants), unless a pause stretched that time.
    for s in &r.sections {
        let Some(h) = r.holdings.iter().find(|h| h.client == s.client && h.run == s.run) else {
            continue;
        };
        let Some(lost_at) = h.lost_at else { continue };
        let end = s.end.unwrap_or(end_of_run);
        // Time spent stopped after the loss was declared does not count.
        let paused: Duration = r
            .pauses
            .iter()
            .filter(|p| p.client == s.client)
            .map(|p| p.end.min(end).saturating_duration_since(p.start.max(lost_at)))
            .sum();
        let allowed = if h.cli { KILL_GRACE + SLACK } else { SLACK } + paused;
        if end > lost_at + allowed {
            v.violations.push(format!(
                "(3) section went on {:.1}s after its loss was declared at {} (allowed {allowed:?}): {}",
                (end - lost_at).as_secs_f64(),
                at(t0, lost_at),
                describe(r, t0, s)
            ));
        }
    }

    // (5) success means the lock was held to the end: a client that reported success (exit 0,
    // a clean release) had no other client acquire during its section.
    for s in &r.sections {
        let Some(h) = r.holdings.iter().find(|h| h.client == s.client && h.run == s.run) else {
            continue;
        };
        if !h.succeeded {
            continue;
        }
        let end = s.end.unwrap_or(end_of_run);
        let mine = acquired(r, s);
        if let Some(o) = r
            .sections
            .iter()
            .filter(|o| o.client != s.client)
            .find(|o| (mine..end).contains(&acquired(r, o)))
        {
            v.violations.push(format!(
                "(5) {} reported success although another client acquired during its section: {} / {}",
                if h.cli {
                    "`azmutex run` (exit 0)"
                } else {
                    "Locker (clean release)"
                },
                describe(r, t0, s),
                describe(r, t0, o)
            ));
        }
    }

    // (3) every loss declared before another client acquired.
    for (i, s) in r.sections.iter().enumerate() {
        if exempt[i].is_some() {
            continue;
        }
        let Some(h) = r.holdings.iter().find(|h| h.client == s.client && h.run == s.run) else {
            continue;
        };
        // A stalled stderr's loss line arrives late or never: rule 6 judges these sections.
        if h.stalled.is_some() {
            continue;
        }
        let Some(lost_at) = h.lost_at else { continue };
        // A verdict given only by the release, after the section had ended ("lost
        // (unconfirmed)": the release's answer was lost, or it failed), declares nothing while
        // the work ran; the work itself stopped at the section's end, so that is what must come
        // before the next acquisition (rules 1 and 5 judge the section itself).
        let lost_at = match s.end {
            Some(end) if lost_at > end && h.lost_reason.as_deref().is_some_and(|r| r.contains("confirm")) => end,
            _ => lost_at,
        };
        let mine = acquired(r, s);
        let next = strict
            .iter()
            .map(|&j| &r.sections[j])
            .filter(|o| o.client != s.client)
            .map(|o| (acquired(r, o), o))
            .filter(|(t, _)| *t > mine)
            .min_by_key(|(t, _)| *t);
        let Some((theirs, other)) = next else { continue };
        v.losses_checked += 1;
        if lost_at >= theirs {
            v.violations.push(format!(
                "(3) loss declared at {} ({}) after another client acquired at {}: {} / {}",
                at(t0, lost_at),
                h.lost_reason.as_deref().unwrap_or("?"),
                at(t0, theirs),
                describe(r, t0, s),
                describe(r, t0, other)
            ));
        } else {
            let margin = theirs - lost_at;
            if v.min_margin.as_ref().is_none_or(|(m, _)| margin < *m) {
                v.min_margin = Some((
                    margin,
                    format!(
                        "client {} run {} → client {} run {}; {}",
                        s.client,
                        s.run,
                        other.client,
                        other.run,
                        h.lost_reason.as_deref().unwrap_or("?")
                    ),
                ));
            }
        }
    }

    // (6) no write reaches the resource from a holder's tree (the worker, however it was
    // started: in the command's group, `setsid`, daemonized, under `timeout`) after another
    // client acquired, and the worker is dead by then (its connection closed) — for every
    // unexempted section, whatever its stderr did; and none at all after the holder's
    // `azmutex run` exited (or its `Locker` release returned), exempt or not.
    for (i, s) in r.sections.iter().enumerate() {
        let h = r.holdings.iter().find(|h| h.client == s.client && h.run == s.run);
        let writes = || r.writes.iter().filter(move |w| w.section == i);
        if exempt[i].is_none() {
            let mine = acquired(r, s);
            let next = r
                .sections
                .iter()
                .filter(|o| o.client != s.client)
                .map(|o| (acquired(r, o), o))
                .filter(|(t, _)| *t > mine)
                .min_by_key(|(t, _)| *t);
            if let Some((theirs, other)) = next {
                let limit = theirs + ARRIVAL_SLACK;
                let late = writes().filter(|w| w.at > limit).count();
                let end = s.end.unwrap_or(end_of_run);
                if late > 0 || end > limit {
                    v.violations.push(format!(
                        "(6) {late} write(s) after another client acquired at {}, connection closed at {}{}: {} / {}",
                        at(t0, theirs),
                        s.end.map_or("never".into(), |e| at(t0, e)),
                        h.and_then(|h| h.stalled.as_deref())
                            .map_or(String::new(), |st| format!(" ({st})")),
                        describe(r, t0, s),
                        describe(r, t0, other)
                    ));
                }
            }
        }
        let Some(h) = h else { continue };
        let Some(exited) = h.exited else { continue };
        if exempt[i] == Some("timer lag") || h.outcome.as_deref().is_some_and(|o| o.starts_with("did not exit")) {
            continue;
        }
        let limit = exited + SLACK;
        let late = writes().filter(|w| w.at > limit).count();
        if late > 0 || s.end.is_none_or(|e| e > limit) {
            v.violations.push(format!(
                "(6) {late} write(s) after {} at {}, connection closed at {} (worker started {}): {}",
                if h.cli {
                    "`azmutex run` exited"
                } else {
                    "the Locker's release returned"
                },
                at(t0, exited),
                s.end.map_or("never".into(), |e| at(t0, e)),
                h.launch,
                describe(r, t0, s)
            ));
        }
    }
    v
}

/// Request rates seen at one client's fault proxy.
#[derive(Debug, Default, Clone, PartialEq)]
struct Rates {
    /// The most requests that arrived in any 1-second window.
    max_per_second: usize,
    /// The most `renew` requests of one lease in any 1-second window while the proxy answered
    /// 503 with Retry-After.
    max_renewals_retry_after: usize,
    /// `renew` requests that arrived while the proxy answered 503 with Retry-After.
    renewals_retry_after: usize,
}

/// The most of these (sorted) times in any window [t, t + 1 s).
fn max_per_second(times: &[Instant]) -> usize {
    let mut best = 0;
    let mut first = 0;
    for (last, t) in times.iter().enumerate() {
        while *t - times[first] >= Duration::from_secs(1) {
            first += 1;
        }
        best = best.max(last + 1 - first);
    }
    best
}

fn rates(requests: &[common::faults::RequestRecord]) -> Rates {
    let mut all: Vec<Instant> = requests.iter().map(|q| q.at).collect();
    all.sort();
    let mut renewals: HashMap<&str, Vec<Instant>> = HashMap::new();
    for q in requests {
        if q.fault == Fault::Answer503RetryAfter(0).kind() && q.lease_action.as_deref() == Some("renew") {
            renewals
                .entry(q.lease_id.as_deref().unwrap_or(""))
                .or_default()
                .push(q.at);
        }
    }
    Rates {
        max_per_second: max_per_second(&all),
        max_renewals_retry_after: renewals
            .values_mut()
            .map(|t| {
                t.sort();
                max_per_second(t)
            })
            .max()
            .unwrap_or(0),
        renewals_retry_after: renewals.values().map(Vec::len).sum(),
    }
}

/// For a rule 7 violation: the lease renewed most often in one second under 503 Retry-After,
/// and every request of that lease (any action) from 3 s before that second to 3 s after.
fn renewal_detail(requests: &[common::faults::RequestRecord], t0: Instant) -> String {
    let mut renewals: HashMap<&str, Vec<Instant>> = HashMap::new();
    for q in requests {
        if q.fault == Fault::Answer503RetryAfter(0).kind() && q.lease_action.as_deref() == Some("renew") {
            renewals
                .entry(q.lease_id.as_deref().unwrap_or(""))
                .or_default()
                .push(q.at);
        }
    }
    let Some((lease, times)) = renewals.into_iter().max_by_key(|(_, t)| {
        let mut t = t.clone();
        t.sort();
        max_per_second(&t)
    }) else {
        return String::new();
    };
    let mut times = times;
    times.sort();
    // The start of the densest window.
    let best = max_per_second(&times);
    let start = (0..times.len())
        .find(|&i| {
            times[i..]
                .iter()
                .take_while(|t| **t - times[i] < Duration::from_secs(1))
                .count()
                == best
        })
        .map_or(times[0], |i| times[i]);
    let from = start.checked_sub(Duration::from_secs(3)).unwrap_or(start);
    let to = start + Duration::from_secs(4);
    let lines: Vec<String> = requests
        .iter()
        .filter(|q| q.lease_id.as_deref() == Some(lease) && q.at >= from && q.at <= to)
        .map(|q| {
            format!(
                "{} {} ({})",
                at(t0, q.at),
                q.lease_action.as_deref().unwrap_or("-"),
                q.fault
            )
        })
        .collect();
    format!("lease {lease}: {}", lines.join(", "))
}

// ---------------------------------------------------------------------------------------------
// The run

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos() {
    let settings = Settings::from_env();
    println!(
        "chaos: AZMUTEX_CHAOS_SEED={} ({:?} of chaos, {} CLI + {} Locker clients{}; {} semaphore clients on 2 slots)",
        settings.seed,
        settings.chaos,
        settings.cli,
        settings.lockers,
        if settings.entra { " + 1 Entra Locker client" } else { "" },
        settings.semaphores
    );
    let entra = if settings.entra {
        Some(entra::start().await)
    } else {
        None
    };
    let (endpoint, connection_string) = match &entra {
        Some(e) => (e.endpoint.clone(), e.connection_string.clone()),
        None => {
            let service = common::service();
            (service.endpoint.clone(), service.connection_string.clone())
        }
    };
    let target: SocketAddr = endpoint
        .trim_start_matches("http://")
        .trim_start_matches("https://localhost:")
        .split('/')
        .next()
        .map(|t| {
            if t.contains(':') {
                t.to_string()
            } else {
                format!("127.0.0.1:{t}")
            }
        })
        .unwrap()
        .parse()
        .expect("the chaos checker needs a loopback Azurite (AZMUTEX_TEST_CONNECTION_STRING is not supported)");
    let container = common::unique("chaos");
    let records: Shared = Arc::default();
    let resource = start_resource(records.clone());
    let tls = entra.as_ref().map(|e| upstream_tls(&e.ca_pem));
    let proxies: Vec<Arc<FaultProxy>> = (0..settings.clients())
        .map(|i| {
            let seed = settings.seed ^ (0x5eed_0000 + i as u64);
            Arc::new(FaultProxy::start_with(target, seed, tls.clone()))
        })
        .collect();
    let mut breaker_options = options();
    if let Some(e) = &entra {
        breaker_options.ca_certificates_pem.push(e.ca_pem.clone().into_bytes());
    }
    let breaker = AzureMutex::builder(
        azmutex::StorageConfig::parse_connection_string(&connection_string).unwrap(),
        container.as_str(),
    )
    .fencing(true)
    .client_options(breaker_options)
    .build()
    .unwrap();
    let entra = entra.map(Arc::new);
    let ctx = Arc::new(Ctx {
        records: records.clone(),
        resource,
        container: container.clone(),
        cli_pids: (0..settings.cli)
            .map(|_| std::sync::atomic::AtomicI32::new(0))
            .collect(),
    });
    let plan = schedule(&settings);
    let semaphores = (settings.semaphores > 0).then(|| {
        chaos_semaphore::start(
            target,
            tls.clone(),
            &container,
            settings.seed,
            settings.semaphores,
            2,
            settings.chaos,
        )
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let t0 = Instant::now();
    let monitor = {
        let records = records.clone();
        tokio::spawn(lag_monitor(move |wake, lag| {
            records.lock().unwrap().lag(None, wake, lag)
        }))
    };
    let mut clients = Vec::new();
    for (i, proxy) in proxies.iter().enumerate() {
        let seed = settings.seed.wrapping_mul(31).wrapping_add(1000 + i as u64);
        let task = if i < settings.cli {
            tokio::spawn(cli_client(ctx.clone(), i, proxy.addr, seed, stop_rx.clone()))
        } else {
            let env = match &entra {
                Some(e) if i == settings.cli + settings.lockers => e.worker_env(),
                _ => Vec::new(),
            };
            tokio::spawn(locker_client(ctx.clone(), i, proxy.addr, seed, env, stop_rx.clone()))
        };
        clients.push(task);
    }

    let elect = chaos_elect::start(
        chaos_elect::count(),
        settings.seed,
        target,
        &container,
        breaker.clone(),
        stop_rx.clone(),
    );

    // The director: faults, pauses and breaks on schedule.
    let mut side = tokio::task::JoinSet::new();
    // Per proxy, the episode in force; and the last episode number.
    let episodes = Arc::new(Mutex::new((vec![0u64; proxies.len()], 0u64)));
    for (offset, action) in plan {
        tokio::time::sleep_until((t0 + offset).into()).await;
        match action {
            Action::Fault {
                client,
                holder,
                fault,
                len,
            } => {
                let i = if holder {
                    current_holder(&records.lock().unwrap()).unwrap_or(client)
                } else {
                    client
                };
                let id = {
                    let mut e = episodes.lock().unwrap();
                    e.1 += 1;
                    let id = e.1;
                    e.0[i] = id;
                    id
                };
                proxies[i].set(fault);
                *records.lock().unwrap().episodes.entry(fault.kind()).or_default() += 1;
                let (episodes, proxy) = (episodes.clone(), proxies[i].clone());
                side.spawn(async move {
                    tokio::time::sleep(len).await;
                    // Heal unless a later episode took this proxy over.
                    if episodes.lock().unwrap().0[i] == id {
                        proxy.set(Fault::Healthy);
                    }
                });
            }
            Action::Pause(i, len) => {
                side.spawn(pause(ctx.clone(), i, len));
            }
            Action::Break(now) => {
                side.spawn(break_lease(ctx.clone(), breaker.clone(), now, false));
            }
            Action::Delete => {
                side.spawn(break_lease(ctx.clone(), breaker.clone(), true, true));
            }
            Action::TokenOutage(hang, len) => {
                if let Some(e) = entra.clone() {
                    *records
                        .lock()
                        .unwrap()
                        .episodes
                        .entry(if hang { "token-hang" } else { "token-fail" })
                        .or_default() += 1;
                    e.outage(Some(hang));
                    side.spawn(async move {
                        tokio::time::sleep(len).await;
                        e.outage(None);
                    });
                }
            }
        }
    }
    tokio::time::sleep_until((t0 + settings.chaos).into()).await;
    for p in &proxies {
        p.set(Fault::Healthy);
    }
    while side.join_next().await.is_some() {}
    let faults_over = Instant::now();

    // Stop the clients and wait for them (each bounds its own exit).
    stop_tx.send(true).unwrap();
    for task in clients {
        task.await.expect("client task panicked");
    }
    let all_stopped = Instant::now();
    monitor.abort();
    let semaphore_report = match semaphores {
        Some(s) => Some(s.finish().await),
        None => None,
    };

    // (4) the lock is free again within one lease duration.
    let mut free_after = None;
    let mut last_state = String::new();
    while all_stopped.elapsed() <= LEASE + Duration::from_secs(5) {
        match breaker.inspect(LOCK).await {
            Ok(info) if !matches!(info.state, LeaseState::Leased | LeaseState::Breaking) => {
                free_after = Some(all_stopped.elapsed());
                break;
            }
            Ok(info) => last_state = info.state.as_str().to_string(),
            Err(e) => last_state = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (elect_violations, elect_summary) = elect.finish().await;
    let r = records.lock().unwrap();
    let mut verdict = check(&r, t0, all_stopped);
    verdict.violations.extend(elect_violations);
    match free_after {
        Some(d) if d <= LEASE + Duration::from_millis(500) => {}
        Some(d) => verdict.violations.push(format!(
            "(4) the lock became free {:.1}s after all clients stopped (more than the {LEASE:?} lease)",
            d.as_secs_f64()
        )),
        None => verdict.violations.push(format!(
            "(4) the lock was still not free {:?} after all clients stopped (last: {last_state})",
            LEASE + Duration::from_secs(5)
        )),
    }
    for note in r.notes.iter().filter(|n| n.contains("did not exit")) {
        verdict.violations.push(format!("(4) {note}"));
    }
    // (7) while the service answers 503 with Retry-After, a holder renews one lease at most
    // once a second.
    let client_rates: Vec<Rates> = proxies.iter().map(|p| rates(&p.requests())).collect();
    let (worst_client, worst) = client_rates
        .iter()
        .enumerate()
        .max_by_key(|(_, r)| r.max_renewals_retry_after)
        .map(|(i, r)| (i, r.clone()))
        .unwrap_or_default();
    if RENEWAL_RATE_CHECKED && worst.max_renewals_retry_after > 1 {
        verdict.violations.push(format!(
            "(7) client {worst_client} renewed one lease {} times within one second while the service answered 503 with Retry-After; {}",
            worst.max_renewals_retry_after,
            renewal_detail(&proxies[worst_client].requests(), t0)
        ));
    }

    // The summary.
    let mut out = String::new();
    let _ = writeln!(out, "chaos summary (AZMUTEX_CHAOS_SEED={}):", settings.seed);
    let cli_sections = r.sections.iter().filter(|s| s.client < settings.cli).count();
    let _ = writeln!(
        out,
        "  critical sections: {} ({} CLI, {} Locker); exempt from real-time checks: {:?}",
        r.sections.len(),
        cli_sections,
        r.sections.len() - cli_sections,
        verdict.excluded
    );
    let mut hits = [0u64; Fault::KINDS.len()];
    let mut forwarded = 0;
    for p in &proxies {
        let (h, f) = p.stats();
        for (a, b) in hits.iter_mut().zip(h) {
            *a += b;
        }
        forwarded += f;
    }
    let kinds: Vec<String> = Fault::KINDS
        .iter()
        .zip(hits)
        .map(|(k, h)| format!("{k} {}×/{h} req", r.episodes.get(k).copied().unwrap_or(0)))
        .collect();
    let _ = writeln!(
        out,
        "  faults (episodes/requests hit): {}; requests forwarded: {forwarded}",
        kinds.join(", ")
    );
    let _ = writeln!(
        out,
        "  pauses: {} ({} skipped: no process); breaks: {} now, {} at lease end; lock blob deleted: {}",
        r.pauses.len(),
        r.notes.iter().filter(|n| n.starts_with("pause of")).count(),
        r.breaks.iter().filter(|b| b.now).count(),
        r.breaks.iter().filter(|b| !b.now).count(),
        r.breaks.iter().filter(|b| b.outcome.ends_with("deleted")).count()
    );
    let losses = r.holdings.iter().filter(|h| h.lost_at.is_some()).count();
    let rejected: usize = r.sections.iter().map(|s| s.rejected).sum();
    let _ = writeln!(
        out,
        "  losses declared: {losses} ({} checked against the next acquisition); writes: {} ({rejected} rejected)",
        verdict.losses_checked,
        r.writes.len()
    );
    let _ = writeln!(
        out,
        "  smallest margin between \"declared lost\" and \"another client acquired\": {}",
        verdict
            .min_margin
            .as_ref()
            .map_or("none observed".into(), |(m, d)| format!(
                "{:.3}s ({d})",
                m.as_secs_f64()
            ))
    );
    let _ = writeln!(
        out,
        "  faults over at {}, clients stopped at {}, lock free {}",
        at(t0, faults_over),
        at(t0, all_stopped),
        free_after.map_or("never".into(), |d| format!("{:.1}s later", d.as_secs_f64()))
    );
    let errors: Vec<&String> = r.notes.iter().filter(|n| !n.starts_with("pause of")).collect();
    let _ = writeln!(out, "  client errors noted: {}", errors.len());
    for e in errors.iter().take(5) {
        let _ = writeln!(out, "    {e}");
    }
    let mut exits: HashMap<&str, usize> = HashMap::new();
    for h in &r.holdings {
        *exits.entry(h.outcome.as_deref().unwrap_or("-")).or_default() += 1;
    }
    let _ = writeln!(out, "  client outcomes: {exits:?}");
    // What `azmutex run` said when it failed otherwise than by losing the lock or being stopped.
    let mut failures: Vec<(String, usize)> = Vec::new();
    for h in r.holdings.iter().filter(|h| h.cli) {
        let code = h.outcome.as_deref().unwrap_or("-");
        if ["exit status: 0", "exit status: 70", "exit status: 143"].contains(&code) {
            continue;
        }
        let said = h
            .stderr
            .iter()
            .rev()
            .find(|(_, l)| l.starts_with("azmutex: "))
            .map_or("(no azmutex: line)", |(_, l)| l.as_str());
        // Request ids and times differ from run to run: keep the message's start.
        let said: String = said.chars().take(140).collect();
        let key = format!("{code}: {said}");
        match failures.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => failures.push((key, 1)),
        }
    }
    failures.sort_by_key(|f| std::cmp::Reverse(f.1));
    let _ = writeln!(
        out,
        "  CLI runs that failed (other than exit 0, 70 or 143): {}",
        failures.iter().map(|(_, n)| n).sum::<usize>()
    );
    for (said, n) in failures.iter().take(6) {
        let _ = writeln!(out, "    {n}× {said}");
    }
    let lag_of = |c: Option<usize>| r.max_lag.get(&c).copied().unwrap_or_default().as_secs_f64();
    let workers: Vec<String> = (settings.cli..settings.clients())
        .map(|c| format!("client {c} {:.3}s", lag_of(Some(c))))
        .collect();
    let big = |harness: bool| {
        r.lags
            .iter()
            .filter(|l| l.client.is_none() == harness && l.to - l.from > LAG_LIMIT)
            .count()
    };
    let _ = writeln!(
        out,
        "  max timer lag: harness {:.3}s, Locker workers: {}; lags over {LAG_LIMIT:?}: {} harness, {} workers; sections exempted for timer lag: {}",
        lag_of(None),
        if workers.is_empty() { "none".to_string() } else { workers.join(", ") },
        big(true),
        big(false),
        verdict.excluded.get("timer lag").copied().unwrap_or(0)
    );
    let cli_runs: Vec<&Holding> = r.holdings.iter().filter(|h| h.cli).collect();
    let mut launches: Vec<(&str, usize)> = Vec::new();
    for h in &cli_runs {
        match launches.iter_mut().find(|(l, _)| *l == h.launch) {
            Some((_, n)) => *n += 1,
            None => launches.push((h.launch, 1)),
        }
    }
    let whole = cli_runs
        .iter()
        .filter(|h| h.stalled.as_deref().is_some_and(|s| s.contains("whole")))
        .count();
    let stalled = cli_runs.iter().filter(|h| h.stalled.is_some()).count();
    let _ = writeln!(
        out,
        "  CLI runs: {}; stderr stalled: {stalled} ({whole} for the whole run, {} for a while); workers started: {}",
        cli_runs.len(),
        stalled - whole,
        launches
            .iter()
            .map(|(l, n)| format!("{l} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let kind_hits = |kind: &str| Fault::KINDS.iter().position(|k| *k == kind).map_or(0, |i| hits[i]);
    if let Some(e) = &entra {
        let _ = writeln!(
            out,
            "  Entra client {}: token endpoint outages: {} hanging, {} failing; token requests: {}",
            settings.cli + settings.lockers,
            r.episodes.get("token-hang").copied().unwrap_or(0),
            r.episodes.get("token-fail").copied().unwrap_or(0),
            e.token_requests()
        );
    }
    let _ = writeln!(
        out,
        "  version refusals injected: {}; 503 Retry-After answers: {}",
        kind_hits("refuse-version"),
        kind_hits("503-retry-after")
    );
    let _ = writeln!(
        out,
        "  request rates (most requests in any 1 s at each client's proxy): {}",
        client_rates
            .iter()
            .enumerate()
            .map(|(i, q)| format!("client {i} {}", q.max_per_second))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        out,
        "  renewals under 503 Retry-After: {} in all; most of one lease in any 1 s: {}{} (per client: {}) — goal ≤ 1, {}",
        client_rates.iter().map(|q| q.renewals_retry_after).sum::<usize>(),
        worst.max_renewals_retry_after,
        if worst.max_renewals_retry_after > 0 {
            format!(" by client {worst_client}")
        } else {
            String::new()
        },
        client_rates
            .iter()
            .map(|q| q.max_renewals_retry_after.to_string())
            .collect::<Vec<_>>()
            .join("/"),
        if RENEWAL_RATE_CHECKED { "checked (rule 7)" } else { "reported only" }
    );
    let _ = writeln!(out, "{elect_summary}");
    if let Some(report) = &semaphore_report {
        out.push_str(&report.summary);
        verdict.violations.extend(report.violations.iter().cloned());
    }
    println!("{out}");
    if r.sections.len() < 2 {
        verdict.violations.push(format!(
            "only {} critical sections ran: the run checked nothing",
            r.sections.len()
        ));
    }

    let verbose = std::env::var("AZMUTEX_CHAOS_VERBOSE").is_ok_and(|v| v == "1");
    if !verdict.violations.is_empty() || verbose {
        let mut msg = format!(
            "chaos checker: {} violation(s) with AZMUTEX_CHAOS_SEED={}:\n",
            verdict.violations.len(),
            settings.seed
        );
        // Up to 10 of each rule, in rule order.
        let mut shown: Vec<&String> = verdict.violations.iter().collect();
        shown.sort_by_key(|v| v.get(..3).unwrap_or_default().to_string());
        let mut per_rule: HashMap<&str, usize> = HashMap::new();
        for v in shown {
            let n = per_rule.entry(v.get(..3).unwrap_or_default()).or_default();
            *n += 1;
            if *n <= 10 {
                let _ = writeln!(msg, "  {v}");
            } else if *n == 11 {
                let _ = writeln!(msg, "  … more {} violations", v.get(..3).unwrap_or_default());
            }
        }
        let _ = writeln!(msg, "sections (seconds since start):");
        for s in &r.sections {
            let why = exemption(&r, s, all_stopped).unwrap_or("");
            let _ = writeln!(msg, "  {} {why}", describe(&r, t0, s));
        }
        let _ = writeln!(msg, "events (seconds since start):");
        for p in &r.pauses {
            let _ = writeln!(
                msg,
                "  pause client {} [{} .. {}] {:?}",
                p.client,
                at(t0, p.start),
                at(t0, p.end),
                p.targets
            );
        }
        for b in &r.breaks {
            let _ = writeln!(
                msg,
                "  break{} at {}: {} tokens {:?}",
                if b.delete {
                    " now + delete"
                } else if b.now {
                    " now"
                } else {
                    ""
                },
                at(t0, b.at),
                b.outcome,
                b.tokens
            );
        }
        for h in r.holdings.iter().filter(|h| h.lost_at.is_some() || h.cli) {
            for (t, line) in &h.stderr {
                let _ = writeln!(
                    msg,
                    "  client {} run {} stderr at {}: {line}",
                    h.client,
                    h.run,
                    at(t0, *t)
                );
            }
            if !h.cli {
                let _ = writeln!(
                    msg,
                    "  client {} run {} lost at {}: {}",
                    h.client,
                    h.run,
                    h.lost_at.map_or("-".into(), |t| at(t0, t)),
                    h.lost_reason.as_deref().unwrap_or("")
                );
            }
        }
        drop(r); // not poisoned for the resource thread
        if verdict.violations.is_empty() {
            println!("{msg}");
        } else {
            panic!("{msg}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The checker on hand-made histories (no Azurite): each rule fires when it should.

#[cfg(test)]
mod checker {
    use super::*;

    struct History {
        t0: Instant,
        r: Records,
    }

    impl History {
        fn new() -> History {
            History {
                t0: Instant::now(),
                r: Records::default(),
            }
        }

        fn t(&self, secs: f64) -> Instant {
            self.t0 + Duration::from_secs_f64(secs)
        }

        /// A section of `client` with `token` from `start` to `end` (seconds), one accepted
        /// write at its start, and its holding.
        fn section(&mut self, client: usize, cli: bool, token: u64, start: f64, end: f64) -> usize {
            let run = self.r.holdings.iter().filter(|h| h.client == client).count() as u64 + 1;
            let acquired = (!cli).then(|| self.t(start - 0.05));
            let mut holding = Holding::new(client, run, cli, self.t(start - 0.1), acquired);
            holding.exited = Some(self.t(end + 0.1));
            self.r.holdings.push(holding);
            self.r.sections.push(Section {
                client,
                run,
                token,
                pid: 1,
                ppid: 1,
                pgid: 1,
                start: self.t(start),
                end: Some(self.t(end)),
                writes: 1,
                rejected: 0,
            });
            let index = self.r.sections.len() - 1;
            self.write(index, start + 0.01, true);
            index
        }

        fn write(&mut self, section: usize, at: f64, accepted: bool) {
            let token = self.r.sections[section].token;
            let at = self.t(at);
            self.r.writes.push(WriteRecord {
                at,
                section,
                token,
                accepted,
            });
        }

        fn lost(&mut self, section: usize, at: f64) {
            let t = self.t(at);
            let s = &self.r.sections[section];
            let (client, run) = (s.client, s.run);
            let h = self
                .r
                .holdings
                .iter_mut()
                .find(|h| h.client == client && h.run == run)
                .unwrap();
            h.lost_at = Some(t);
            h.lost_reason = Some("test".into());
        }

        fn succeeded(&mut self, section: usize) {
            let s = &self.r.sections[section];
            let (client, run) = (s.client, s.run);
            let h = self
                .r
                .holdings
                .iter_mut()
                .find(|h| h.client == client && h.run == run)
                .unwrap();
            h.succeeded = true;
        }

        fn pause(&mut self, client: usize, from: f64, to: f64) {
            let (start, end) = (self.t(from), self.t(to));
            self.r.pauses.push(PauseRecord {
                client,
                start,
                end,
                targets: vec![],
            });
        }

        fn violations(&self) -> Vec<String> {
            check(&self.r, self.t0, self.t(1000.0)).violations
        }

        /// Each of `rules` fired, and no other.
        fn assert_only(&self, rules: &[&str]) {
            let v = self.violations();
            for rule in rules {
                assert!(
                    v.iter().any(|m| m.starts_with(rule)),
                    "expected a {rule} violation: {v:#?}"
                );
            }
            assert!(
                v.iter().all(|m| rules.iter().any(|r| m.starts_with(r))),
                "expected only {rules:?}: {v:#?}"
            );
        }
    }

    #[test]
    fn a_clean_history_passes_and_reports_its_margin() {
        let mut h = History::new();
        let a = h.section(0, false, 1, 1.0, 14.0);
        h.lost(a, 14.0);
        let b = h.section(1, true, 2, 16.5, 18.0);
        h.succeeded(b);
        let v = check(&h.r, h.t0, h.t(20.0));
        assert!(v.violations.is_empty(), "{:#?}", v.violations);
        let (margin, _) = v.min_margin.unwrap();
        assert!((margin.as_secs_f64() - 2.5).abs() < 0.01, "{margin:?}");
    }

    #[test]
    fn overlapping_unpaused_holders_are_flagged() {
        let mut h = History::new();
        h.section(0, true, 1, 1.0, 5.0);
        h.section(1, false, 2, 4.0, 6.0);
        // The first went on writing after the second acquired (3.95 s): rule 6 too.
        h.assert_only(&["(1)", "(6)"]);
    }

    #[test]
    fn a_paused_holder_is_exempt_from_overlap_but_must_stop_after_its_loss() {
        let mut h = History::new();
        let a = h.section(0, true, 1, 1.0, 21.0);
        h.pause(0, 2.0, 18.0);
        h.lost(a, 18.1);
        let b = h.section(1, false, 2, 17.0, 19.0);
        h.write(a, 18.5, false);
        assert!(h.violations().is_empty(), "{:#?}", h.violations());
        let _ = b;
        // Writing on for 3 s after the loss (a grandchild left running) is not.
        h.r.sections[a].end = Some(h.t(21.2));
        h.assert_only(&["(3)"]);
    }

    #[test]
    fn a_pause_while_merely_waiting_excuses_nothing() {
        // Seen on main with seed 77: `run` waited (and was paused) for 15 s, acquired, lost the
        // lock to a break, released it, and its command's child wrote on for 4 s.
        let mut h = History::new();
        let a = h.section(0, true, 4, 18.4, 33.2);
        h.r.holdings[0].spawned = h.t(3.5);
        h.r.holdings[0].acquired_line = Some(h.t(18.39));
        h.pause(0, 6.2, 11.1);
        h.lost(a, 28.8);
        h.section(1, false, 5, 28.9, 50.0);
        let v = h.violations();
        assert!(v.iter().any(|m| m.starts_with("(1) overlap")), "{v:#?}");
        assert!(v.iter().any(|m| m.starts_with("(3) section went on")), "{v:#?}");
        // Paused after acquiring, it would be exempt from (1).
        h.r.pauses[0].start = h.t(18.0);
        h.r.pauses[0].end = h.t(24.0);
        let v = h.violations();
        assert!(!v.iter().any(|m| m.starts_with("(1)")), "{v:#?}");
    }

    #[test]
    fn repeated_and_decreasing_tokens_are_flagged() {
        let mut h = History::new();
        h.section(0, false, 5, 1.0, 2.0);
        h.section(1, false, 5, 3.0, 4.0);
        let v = h.violations();
        assert!(v.iter().any(|m| m.contains("handed out twice")), "{v:#?}");
        let mut h = History::new();
        h.section(0, false, 5, 1.0, 2.0);
        let late = h.section(1, false, 1, 3.0, 4.0);
        h.r.writes.last_mut().unwrap().accepted = false;
        h.write(late, 3.5, false);
        let v = h.violations();
        assert!(v.iter().any(|m| m.contains("rejected, the first")), "{v:#?}");
        assert!(v.iter().any(|m| m.contains("out of real-time order")), "{v:#?}");
    }

    #[test]
    fn a_loss_declared_after_another_acquired_is_flagged() {
        let mut h = History::new();
        let a = h.section(0, false, 1, 1.0, 5.0);
        h.section(1, false, 2, 5.5, 7.0);
        h.lost(a, 6.0);
        let v = h.violations();
        assert!(v.iter().any(|m| m.starts_with("(3) loss declared")), "{v:#?}");
    }

    #[test]
    fn success_after_a_stolen_lease_is_flagged() {
        let mut h = History::new();
        let a = h.section(0, true, 1, 1.0, 5.0);
        h.succeeded(a);
        // B acquired during A's section (say, after an immediate break) and started after it.
        let b = h.section(1, false, 2, 5.5, 7.0);
        h.r.holdings[1].acquired = Some(h.t(4.0));
        let _ = b;
        // Its worker was still alive when B acquired: rule 6 too.
        h.assert_only(&["(5)", "(6)"]);
    }

    #[test]
    fn a_section_under_timer_lag_is_exempt_and_only_then() {
        // A Locker declares its loss 0.4 s after another client acquired (issue 24).
        let mut h = History::new();
        let a = h.section(2, false, 1, 1.0, 14.0);
        h.lost(a, 14.0);
        h.section(0, true, 2, 13.6, 15.0);
        let v = h.violations();
        assert!(v.iter().any(|m| m.starts_with("(3) loss declared")), "{v:#?}");
        // Its worker's timers ran 1.5 s late meanwhile: still a defect.
        let lag = |h: &mut History, client, from: f64, to: f64| {
            let (from, to) = (h.t(from), h.t(to));
            h.r.lags.push(LagRecord { client, from, to });
        };
        lag(&mut h, Some(2), 11.0, 12.5);
        assert!(!h.violations().is_empty());
        // Another worker's lag excuses nothing.
        lag(&mut h, Some(3), 10.0, 12.5);
        assert!(!h.violations().is_empty());
        // 2.5 s late in its own process: exempt, and counted.
        lag(&mut h, Some(2), 10.0, 12.5);
        let v = check(&h.r, h.t0, h.t(20.0));
        assert!(v.violations.is_empty(), "{:#?}", v.violations);
        assert_eq!(v.excluded.get("timer lag"), Some(&1));
        // The harness's lag exempts a CLI section too; a worker's does not.
        let mut h = History::new();
        h.section(0, true, 1, 1.0, 5.0);
        h.section(1, true, 2, 4.0, 6.0);
        lag(&mut h, Some(0), 0.0, 3.0);
        assert!(!h.violations().is_empty());
        lag(&mut h, None, 2.0, 4.5);
        assert!(h.violations().is_empty(), "{:#?}", h.violations());
    }

    #[test]
    fn a_stalled_holder_is_judged_by_its_writes_not_its_lines() {
        // Its loss line was read late (after the other acquired): not a violation by itself.
        let mut h = History::new();
        let a = h.section(0, true, 1, 1.0, 10.0);
        h.r.holdings[0].stalled = Some("test".into());
        h.lost(a, 30.0);
        h.section(1, false, 2, 12.0, 14.0);
        assert!(h.violations().is_empty(), "{:#?}", h.violations());
        // A write that arrives after the other acquired is.
        h.write(a, 12.1, false);
        h.assert_only(&["(6)"]);
        // So is a worker that is still alive (connection open) then.
        let mut h = History::new();
        h.section(0, true, 1, 1.0, 12.5);
        h.r.holdings[0].stalled = Some("test".into());
        h.section(1, false, 2, 12.0, 14.0);
        h.assert_only(&["(1)", "(6)"]);
    }

    #[test]
    fn a_worker_writing_after_its_holder_exited_is_flagged_even_when_paused() {
        // A daemonized worker outlives `azmutex run`, which exited at 5.1 s.
        let mut h = History::new();
        let a = h.section(0, true, 1, 1.0, 5.0);
        h.pause(0, 2.0, 3.0);
        h.write(a, 7.0, true);
        h.assert_only(&["(6)"]);
        // Closed 2 s after the exit, without writing: still alive then.
        let mut h = History::new();
        h.section(0, true, 1, 1.0, 5.0);
        h.r.holdings[0].exited = Some(h.t(3.0));
        h.assert_only(&["(6)"]);
    }

    #[test]
    fn request_rates_count_one_second_windows() {
        use common::faults::RequestRecord;
        let t0 = Instant::now();
        let req = |at: f64, action: Option<&str>, id: &str, fault: &'static str| RequestRecord {
            at: t0 + Duration::from_secs_f64(at),
            lease_action: action.map(str::to_string),
            lease_id: Some(id.to_string()),
            fault,
        };
        let ra = Fault::Answer503RetryAfter(5).kind();
        let reqs = vec![
            req(0.0, Some("renew"), "a", ra),
            req(1.0, Some("renew"), "a", ra),
            req(1.5, Some("renew"), "b", ra),
            req(1.9, Some("renew"), "b", "healthy"),
            req(2.2, Some("acquire"), "a", ra),
            req(2.3, Some("renew"), "b", ra),
        ];
        let r = rates(&reqs);
        assert_eq!(
            r,
            Rates {
                max_per_second: 4,
                max_renewals_retry_after: 2,
                renewals_retry_after: 4
            }
        );
        assert_eq!(max_per_second(&[]), 0);
        let detail = renewal_detail(&reqs, t0);
        assert!(
            detail.starts_with("lease b: 1.500s renew (503-retry-after), 1.900s renew (healthy), 2.300s renew"),
            "{detail}"
        );
    }

    #[test]
    fn an_immediate_break_of_a_breaking_lease_takes_it_from_its_holder() {
        // Seen in long run 3 (seed 841275829): a break at lease end left the lease breaking for
        // 14 s, an immediate break 8.5 s later took it from its holder (token 716), and the
        // checker took 717 for the first victim.
        assert_eq!(first_victim(LeaseState::Breaking, Some(716)), 716);
        assert_eq!(first_victim(LeaseState::Leased, Some(716)), 716);
        assert_eq!(first_victim(LeaseState::Broken, Some(716)), 717);
        assert_eq!(first_victim(LeaseState::Available, None), 0);
        // Its section is then exempt as broken.
        let mut h = History::new();
        let a = h.section(1, true, 716, 1.0, 17.0);
        h.lost(a, 17.0);
        h.section(5, false, 717, 15.2, 19.0);
        assert!(!h.violations().is_empty());
        let at = h.t(15.0);
        h.r.breaks.push(BreakRecord {
            at,
            now: true,
            delete: false,
            tokens: Some((first_victim(LeaseState::Breaking, Some(716)), 717)),
            outcome: "ok".into(),
        });
        assert!(h.violations().is_empty(), "{:#?}", h.violations());
    }
}
