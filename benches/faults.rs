//! What the safety rules of issue 16 cost and keep, measured against a local Azurite:
//!
//! 1. **Renewal rate under throttling**: one `Locker` lease (15 s, renewed every 5 s) whose
//!    renewals are all answered `503 ServerBusy` with `Retry-After: N`, until the lock is lost:
//!    renewal requests sent, and the most in any one-second window (goal: at most 1 per second).
//! 2. **Kill margin with a stalled stderr**: `azmutex -vv run --lease 15 --kill-grace 2s` with
//!    its stderr a full pipe nobody reads, a command that ignores SIGTERM and writes a heartbeat
//!    every 100 ms, and a partition: the time from the command's last heartbeat to the send time
//!    of another client's successful acquire, the earliest moment the lock could be someone
//!    else's (goal: at least 1 s). The same with a stderr that is read, for comparison.
//!
//!     cargo bench --features cli --bench faults
//!
//! Not criterion: it prints its own figures.

#[path = "../tests/common/cli.rs"]
mod cli;
#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use azmutex::Locker;
use common::http_proxy::{peak_rate, Action, HttpProxy, Match};
use common::proxy::Proxy;

const STUBBORN: &str = r#"exec </dev/null >/dev/null 2>&1
trap '' TERM
echo $$ > "$BEAT.pid"
while :; do echo "p $(date +%s%N)" >> "$BEAT"; sleep 0.1; done"#;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list`
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("renewals of one 15 s lease answered 503 ServerBusy + Retry-After until it is lost:");
    for retry_after in [0u64, 1, 5, 30] {
        let (n, peak, took) = rt.block_on(renewals_under_503(retry_after));
        println!(
            "  Retry-After {retry_after:>2} s: {n:>3} renewals in {:>5.1} s ({:.2}/s), at most {peak} in any 1 s",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64()
        );
    }
    println!("kill margin: last heartbeat of a TERM-ignoring command -> another client's acquire sent:");
    for stalled in [true, false] {
        let mut margins: Vec<f64> = (0..3).map(|_| kill_margin(stalled)).collect();
        margins.sort_by(f64::total_cmp);
        println!(
            "  stderr {}: min {:.2} s, median {:.2} s, max {:.2} s (3 runs)",
            if stalled { "a full pipe nobody reads" } else { "read" },
            margins[0],
            margins[1],
            margins[2]
        );
    }
}

async fn renewals_under_503(retry_after: u64) -> (usize, usize, Duration) {
    let proxy = HttpProxy::start(common::azurite_addr());
    let container = common::unique("bench-503");
    let mutex = common::via(proxy.addr, &container, false);
    let locker = Locker::with_options(mutex, "job", common::locker_options(common::secs(15))).unwrap();
    let guard = locker.lock().await.unwrap();
    let before = proxy.count("renew");
    proxy.add(
        Match::LeaseAction("renew"),
        Action::RespondRetryAfter(503, "ServerBusy", retry_after),
        None,
    );
    let started = Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(40), guard.lost()).await;
    let took = started.elapsed();
    let seen = proxy.seen();
    (
        proxy.count("renew") - before,
        peak_rate(&seen, "renew", Duration::from_secs(1)),
        took,
    )
}

fn kill_margin(stalled: bool) -> f64 {
    let c = common::unique("bench-kill");
    let dir = cli::scratch("bench-kill");
    let beat = dir.join("beat");
    let proxy = Proxy::start(common::azurite_addr());
    let (reader, writer) = cli::full_pipe();
    let mut cmd = cli::azmutex_with(&c, &cli::connection_via(proxy.addr));
    cmd.env("BEAT", &beat)
        .args(["-vv", "run", "job", "--lease", "15", "--kill-grace", "2s", "--"])
        .args(["sh", "-c", STUBBORN])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if stalled {
        cmd.stderr(Stdio::from(writer));
    } else {
        drop(writer);
        cmd.stderr(Stdio::null());
    }
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    cli::wait_until_leased(&c);
    std::thread::sleep(Duration::from_secs(1));
    proxy.drop_traffic();
    let acquired_at = cli::acquire_as_soon_as_possible(&c, Duration::from_secs(45));
    std::thread::sleep(Duration::from_millis(1000));
    let last = cli::last_beat(&beat);
    cli::kill_pid_in(&beat.with_extension("pid"));
    let drain = std::thread::spawn(move || {
        let mut f = std::fs::File::from(reader);
        let _ = std::io::Read::read_to_end(&mut f, &mut Vec::new());
    });
    let _ = child.wait();
    let _ = drain.join();
    let _ = std::fs::remove_dir_all(dir);
    (acquired_at as f64 - last as f64) / 1e9
}
