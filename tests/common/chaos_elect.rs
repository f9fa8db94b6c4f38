//! The chaos checker's `azmutex elect` clients (a child module of `tests/chaos.rs`): several
//! `azmutex elect` processes campaign for one name of their own, each through its own fault
//! proxy (random faults, some outlasting the lease), some with `--once`, while the name's lease
//! is now and then broken to run out. Each leader's command (bash) appends heartbeats
//! (`EPOCH WALL-CLOCK-SECONDS`) to a file of its own. At the end:
//!
//! - E1: no two terms' commands ran at once (the last heartbeat of a term comes before the
//!   first of any term that started after it);
//! - E2: a later term always has a greater epoch;
//! - E3: every `azmutex elect` exited within the limit after SIGTERM, and the name is free
//!   again afterwards (SIGTERM resigns).

use super::*;

/// The name the elect clients campaign for (not the lock of the other clients).
pub const ELECT_LOCK: &str = "chaos-elect";

/// The elect clients' part of the run.
pub struct Elect {
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
    side: Vec<tokio::task::JoinHandle<()>>,
    dir: std::path::PathBuf,
    breaker: AzureMutex,
}

/// How many elect clients (`AZMUTEX_CHAOS_ELECT`, default 2).
pub fn count() -> usize {
    std::env::var("AZMUTEX_CHAOS_ELECT")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(2)
}

/// Starts `n` elect clients through proxies to `target`, until `stop`.
pub fn start(
    n: usize,
    seed: u64,
    target: SocketAddr,
    container: &str,
    breaker: AzureMutex,
    stop: watch::Receiver<bool>,
) -> Elect {
    let dir = std::env::temp_dir().join(common::unique("chaos-elect"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut tasks = Vec::new();
    let mut side = Vec::new();
    for i in 0..n {
        let proxy = Arc::new(FaultProxy::start(target, seed ^ (0xe1ec_0000 + i as u64)));
        let mut rng = fastrand::Rng::with_seed(seed.wrapping_mul(17).wrapping_add(i as u64));
        let faults_rng = fastrand::Rng::with_seed(rng.u64(..));
        side.push(tokio::spawn(faults(proxy.clone(), faults_rng, stop.clone())));
        tasks.push(tokio::spawn(client(
            i,
            proxy.addr,
            rng,
            container.to_string(),
            dir.clone(),
            stop.clone(),
        )));
    }
    let b = breaker.clone();
    let mut rng = fastrand::Rng::with_seed(seed ^ 0xb4ea_c000);
    let mut stop_breaks = stop.clone();
    side.push(tokio::spawn(async move {
        loop {
            let wait = Duration::from_secs(rng.u64(15..40));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop_breaks.wait_for(|s| *s) => return,
            }
            // Let the lease run out: nobody may overlap with the old leader.
            let _ = b.break_lease(ELECT_LOCK, None).await;
        }
    }));
    Elect {
        tasks,
        side,
        dir,
        breaker,
    }
}

/// Random faults on one proxy until `stop`; healthy at the end.
async fn faults(proxy: Arc<FaultProxy>, mut rng: fastrand::Rng, mut stop: watch::Receiver<bool>) {
    loop {
        let healthy = Duration::from_secs_f64(1.0 + 5.0 * rng.f64());
        tokio::select! {
            _ = tokio::time::sleep(healthy) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let long = rng.u8(..5) == 0;
        let (fault, len) = random_fault(&mut rng, long);
        proxy.set(fault);
        tokio::select! {
            _ = tokio::time::sleep(len) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        proxy.set(Fault::Healthy);
    }
    proxy.set(Fault::Healthy);
}

/// One elect client: `azmutex elect` again and again until `stop`; returns its notes.
async fn client(
    i: usize,
    proxy: SocketAddr,
    mut rng: fastrand::Rng,
    container: String,
    dir: std::path::PathBuf,
    stop: watch::Receiver<bool>,
) -> Vec<String> {
    let cs = format!(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={};BlobEndpoint=http://{proxy}/devstoreaccount1",
        common::DEV_KEY
    );
    let mut notes = Vec::new();
    let mut run = 0u64;
    while !*stop.borrow() {
        run += 1;
        let once = rng.u8(..3) == 0;
        let hb = dir.join(format!("hb-{i}-{run}"));
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .args([
                "-q",
                "--connection-string",
                &cs,
                "--container",
                &container,
                "--timeout",
                "10s",
            ])
            .args(["elect", ELECT_LOCK, "--lease", "15", "--kill-grace", "2s"])
            .args(["--value", &format!("elect client {i} run {run}")])
            .args(if once { &["--once"][..] } else { &[] })
            .args(["--", "bash", "-c"])
            .arg("while :; do printf '%s %s\\n' \"$AZMUTEX_EPOCH\" \"$EPOCHREALTIME\" >> \"$HB\"; sleep 0.05; done")
            .env("HB", &hb)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        // SAFETY: setsid is async-signal-safe; keeps it off the test runner's terminal.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        let pid = child.id().unwrap_or(0) as i32;
        let status = tokio::select! {
            s = child.wait() => s.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
            _ = stopped(stop.clone()) => {
                // SAFETY: kill(2) on our own, not yet reaped, child.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                match tokio::time::timeout(EXIT_LIMIT, child.wait()).await {
                    Ok(s) => s.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                    Err(_) => {
                        let _ = child.kill().await;
                        notes.push(format!("E3: elect client {i} run {run} did not exit within {EXIT_LIMIT:?} of SIGTERM"));
                        "killed".into()
                    }
                }
            }
        };
        notes.push(format!("outcome {status}"));
        tokio::time::sleep(Duration::from_millis(rng.u64(50..400))).await;
    }
    notes
}

/// One term as its heartbeats show it.
#[derive(Debug)]
struct Term {
    file: String,
    epoch: u64,
    first: f64,
    last: f64,
    beats: usize,
}

impl Elect {
    /// After `stop`: waits for the clients, checks E1–E3, and returns (violations, summary).
    pub async fn finish(self) -> (Vec<String>, String) {
        let mut violations = Vec::new();
        let mut outcomes: HashMap<String, usize> = HashMap::new();
        for t in self.tasks {
            for note in t.await.expect("elect client panicked") {
                match note.strip_prefix("outcome ") {
                    Some(o) => *outcomes.entry(o.to_string()).or_default() += 1,
                    None => violations.push(note),
                }
            }
        }
        for s in self.side {
            let _ = s.await;
        }
        // E3: free again (SIGTERM resigned; a killed one's lease runs out).
        let mut free = false;
        for _ in 0..((LEASE.as_millis() / 200) + 10) {
            match self.breaker.inspect(ELECT_LOCK).await {
                Ok(info) if !matches!(info.state, LeaseState::Leased | LeaseState::Breaking) => {
                    free = true;
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        if !free {
            violations.push(format!(
                "E3: {ELECT_LOCK} still leased a lease after all elect clients stopped"
            ));
        }
        let mut terms: Vec<Term> = Vec::new();
        for entry in std::fs::read_dir(&self.dir).unwrap().flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            for line in text.lines() {
                let mut f = line.split_whitespace();
                let (Some(Ok(epoch)), Some(Ok(t))) = (f.next().map(str::parse::<u64>), f.next().map(str::parse::<f64>))
                else {
                    continue; // a line cut short by a kill
                };
                match terms.iter_mut().find(|x| x.file == file && x.epoch == epoch) {
                    Some(x) => {
                        x.first = x.first.min(t);
                        x.last = x.last.max(t);
                        x.beats += 1;
                    }
                    None => terms.push(Term {
                        file: file.clone(),
                        epoch,
                        first: t,
                        last: t,
                        beats: 1,
                    }),
                }
            }
        }
        terms.sort_by(|a, b| a.first.total_cmp(&b.first));
        let mut min_gap: Option<f64> = None;
        for (k, a) in terms.iter().enumerate() {
            for b in &terms[k + 1..] {
                if a.last >= b.first {
                    violations.push(format!(
                        "E1: two leaders' commands at once: {} epoch {} beat until {:.3} and {} epoch {} from {:.3}",
                        a.file, a.epoch, a.last, b.file, b.epoch, b.first
                    ));
                }
                if b.epoch <= a.epoch {
                    violations.push(format!(
                        "E2: {} epoch {} started after {} epoch {}",
                        b.file, b.epoch, a.file, a.epoch
                    ));
                }
            }
            if let Some(b) = terms.get(k + 1) {
                let gap = b.first - a.last;
                min_gap = Some(min_gap.map_or(gap, |m: f64| m.min(gap)));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let summary = format!(
            "  elect clients: {} terms led ({} heartbeats), smallest gap between two terms' commands {}; outcomes {:?}",
            terms.len(),
            terms.iter().map(|t| t.beats).sum::<usize>(),
            min_gap.map_or("none observed".into(), |g| format!("{g:.3}s")),
            outcomes
        );
        (violations, summary)
    }
}
