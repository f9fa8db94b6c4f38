//! Leader election with `azmutex elect` (lease 15 s, the shortest Azure allows): crash
//! failover (SIGKILL the leader's azmutex; the standby's command starts), graceful hand-over
//! (SIGTERM the leader), overlap of leaders' commands (heartbeat files), and `azmutex observe`
//! (how long after a new leader's command starts it prints the new epoch; its request rate).
//!
//!     cargo bench --features cli --bench election      # AZMUTEX_BENCH_TRIALS=N (default 10)
//!
//! Not criterion: it prints its own figures. Runs against a local Azurite it starts itself.
//! Azurite frees an expired lease to the millisecond; Azure may take up to a minute more.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::faults::FaultProxy;

const BIN: &str = env!("CARGO_BIN_EXE_azmutex");
const NAME: &str = "bench-leader";
const BEAT: &str = "while :; do printf '%s %s\\n' \"$AZMUTEX_EPOCH\" \"$EPOCHREALTIME\" >> \"$HB\"; sleep 0.02; done";

fn wall() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn connection(endpoint: &str) -> String {
    format!(
        "AccountName=devstoreaccount1;AccountKey={};BlobEndpoint={endpoint}",
        common::DEV_KEY
    )
}

fn azmutex(container: &str, endpoint: &str) -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AZURE_STORAGE_CONNECTION_STRING", connection(endpoint))
        .args(["-q", "--container", container])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

fn elect(container: &str, endpoint: &str, hb: &Path) -> Child {
    let mut c = azmutex(container, endpoint);
    c.args([
        "elect",
        NAME,
        "--lease",
        "15",
        "--kill-grace",
        "2s",
        "--",
        "bash",
        "-c",
        BEAT,
    ])
    .env("HB", hb);
    c.spawn().unwrap()
}

/// (epoch, first beat, last beat) of a heartbeat file.
fn beats(hb: &Path) -> Option<(u64, f64, f64)> {
    let text = std::fs::read_to_string(hb).ok()?;
    let mut out: Option<(u64, f64, f64)> = None;
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(Ok(e)), Some(Ok(t))) = (f.next().map(str::parse::<u64>), f.next().map(str::parse::<f64>)) else {
            continue;
        };
        out = Some(match out {
            None => (e, t, t),
            Some((e0, a, b)) => (e0, a.min(t), b.max(t)),
        });
    }
    out
}

fn first_beat(hb: &Path) -> (u64, f64) {
    let started = Instant::now();
    loop {
        if let Some((e, first, _)) = beats(hb) {
            return (e, first);
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no heartbeat in {hb:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, sig) };
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list`
    }
    let trials: usize = std::env::var("AZMUTEX_BENCH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let endpoint = common::service().endpoint.clone();
    let container = common::unique("elect-bench");
    let dir: PathBuf = std::env::temp_dir().join(common::unique("elect-bench"));
    std::fs::create_dir_all(&dir).unwrap();

    // The observer, through a proxy that counts its requests.
    let proxy = FaultProxy::start(common::azurite_addr(), 1);
    let mut obs = azmutex(&container, &format!("http://{}/devstoreaccount1", proxy.addr));
    obs.args(["observe", NAME, "--json"]).stdout(Stdio::piped());
    let mut observer = obs.spawn().unwrap();
    let observed_from = Instant::now();
    let lines: Arc<Mutex<Vec<(f64, String)>>> = Arc::default();
    {
        let stdout = observer.stdout.take().unwrap();
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().unwrap().push((wall(), line));
            }
        });
    }

    let mut rng = fastrand::Rng::with_seed(20);
    let mut n = 0;
    let mut next_hb = || {
        n += 1;
        dir.join(format!("hb-{n}"))
    };
    let mut hb = next_hb();
    let mut leader = elect(&container, &endpoint, &hb);
    first_beat(&hb);
    let mut terms = vec![hb.clone()];
    let mut crash = Vec::new();
    let mut graceful = Vec::new();
    for kind in ["crash", "graceful"] {
        for _ in 0..trials {
            let standby_hb = next_hb();
            let standby = elect(&container, &endpoint, &standby_hb);
            // Campaigning; a crash comes at a random point of the leader's renewal cycle
            // (every 5 s), so the lease left when it dies is sampled, not always the same.
            let phase = if kind == "crash" { rng.u64(0..5000) } else { 0 };
            std::thread::sleep(Duration::from_millis(1500 + phase));
            let sig = if kind == "crash" { libc::SIGKILL } else { libc::SIGTERM };
            let at = wall();
            signal(&leader, sig);
            let (_, started) = first_beat(&standby_hb);
            let took = started - at;
            if kind == "crash" {
                crash.push(took);
            } else {
                graceful.push(took);
            }
            let _ = leader.wait();
            leader = standby;
            hb = standby_hb;
            terms.push(hb.clone());
        }
    }
    std::thread::sleep(Duration::from_millis(1500)); // the observer sees the last term too
    signal(&leader, libc::SIGTERM);
    let _ = leader.wait();
    std::thread::sleep(Duration::from_secs(3));
    signal(&observer, libc::SIGTERM);
    let _ = observer.wait();
    let observed_for = observed_from.elapsed();
    let requests = proxy.requests().len();

    // Overlap: a term's last beat at or after a later term's first.
    let spans: Vec<(u64, f64, f64)> = terms.iter().filter_map(|t| beats(t)).collect();
    let mut overlaps = 0;
    for (i, a) in spans.iter().enumerate() {
        for b in &spans[i + 1..] {
            if a.2 >= b.1 {
                overlaps += 1;
            }
        }
    }
    // Observe: from a term's first beat to the observer's first line with its epoch.
    let lines = lines.lock().unwrap().clone();
    let mut seen = Vec::new();
    for (epoch, first, _) in &spans {
        let needle = format!("\"epoch\":{epoch},");
        if let Some((t, _)) = lines.iter().find(|(_, l)| l.contains(&needle)) {
            seen.push((t - first).max(0.0));
        }
    }
    let nulls = lines.iter().filter(|(_, l)| l == "{\"leader\":null}").count();
    let _ = std::fs::remove_dir_all(&dir);

    println!("leader election, azmutex elect --lease 15 --kill-grace 2s, Azurite on loopback");
    println!(
        "  crash failover (SIGKILL leader -> standby's command starts), {} trials: p50 {:.2}s, p99 {:.2}s, max {:.2}s (goal: lease + 2 s = 17 s)",
        crash.len(),
        pct(&mut crash, 0.5),
        pct(&mut crash, 0.99),
        pct(&mut crash, 1.0)
    );
    println!(
        "  graceful hand-over (SIGTERM leader -> standby's command starts), {} trials: p50 {:.3}s, p99 {:.3}s, max {:.3}s (goal: 1 s)",
        graceful.len(),
        pct(&mut graceful, 0.5),
        pct(&mut graceful, 0.99),
        pct(&mut graceful, 1.0)
    );
    println!(
        "  overlap: {overlaps} pairs of leaders' commands running at once, over {} terms",
        spans.len()
    );
    println!(
        "  observe (1 s interval): new epoch printed {:.3}s p50, {:.3}s p99, {:.3}s max after the new leader's command started ({} of {} terms seen; {} `null` lines); {requests} requests in {:.1}s = {:.2}/s",
        pct(&mut seen.clone(), 0.5),
        pct(&mut seen.clone(), 0.99),
        pct(&mut seen, 1.0),
        seen.len(),
        spans.len(),
        nulls,
        observed_for.as_secs_f64(),
        requests as f64 / observed_for.as_secs_f64()
    );
}
