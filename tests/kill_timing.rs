//! What protects the kill timing of `azmutex run`: when the lock may be lost, the command (and
//! everything it started) is dead before anyone else can acquire, whatever azmutex's own
//! stderr does. The SIGKILL instant is fixed in a watchdog process before any output, and every
//! line azmutex writes goes through a bounded queue that drops rather than waits.
//!
//! Against the built binary and a real Azurite behind `common::proxy` (a partition).

#[path = "common/cli.rs"]
mod cli;
mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use cli::*;
use common::proxy::Proxy;

/// A command that ignores SIGTERM and writes a timestamped heartbeat every 100 ms.
const STUBBORN: &str = r#"exec </dev/null >/dev/null 2>&1
trap '' TERM
echo $$ > "$BEAT.pid"
while :; do echo "p $(date +%s%N)" >> "$BEAT"; sleep 0.1; done"#;

/// Item 1 of issue 16: on main 5136815, with `run`'s stderr a full pipe, a loss sent SIGTERM,
/// then blocked writing its "lock lost" line, and the SIGKILL never came: a TERM-ignoring
/// command wrote for 6 s after a rival acquired. With `-vv` the log lines block the same way.
fn stalled_stderr_run(verbose: &[&str]) {
    let c = common::unique("stalled");
    let dir = scratch("stalled");
    let beat = dir.join("beat");
    let proxy = Proxy::start(common::azurite_addr());
    let (reader, writer) = full_pipe();
    let mut cmd = azmutex_with(&c, &connection_via(proxy.addr));
    cmd.env("BEAT", &beat)
        .args(verbose)
        .args(["run", "job", "--lease", "15", "--kill-grace", "2s", "--"])
        .args(["sh", "-c", STUBBORN])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(writer));
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    wait_until_leased(&c);
    std::thread::sleep(Duration::from_secs(1));
    let cut = Instant::now();
    proxy.drop_traffic();
    let acquired_at = acquire_as_soon_as_possible(&c, Duration::from_secs(45));
    // The command must be dead already; look for a while in case it is not.
    std::thread::sleep(Duration::from_millis(1500));
    let beats_after = last_beat(&beat);
    let leftover = kill_pid_in(&beat.with_extension("pid"));
    // Only now let stderr drain, so that azmutex can finish even on a build that blocks.
    let drain = std::thread::spawn(move || {
        let mut f = std::fs::File::from(reader);
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut f, &mut sink);
    });
    let status = child.wait().unwrap();
    let _ = drain.join();
    assert!(beats_after > 0, "no heartbeats");
    eprintln!(
        "measured ({verbose:?}): last heartbeat {:.2} s before another client's successful acquire was sent ({:.1} s after the cut)",
        (acquired_at as f64 - beats_after as f64) / 1e9,
        cut.elapsed().as_secs_f64()
    );
    assert!(!leftover, "the command outlived the lease's end");
    assert!(
        beats_after < acquired_at,
        "the command ran {} ms after another client could acquire",
        (beats_after - acquired_at) / 1_000_000
    );
    assert_eq!(status.code(), Some(70));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_stalled_stderr_cannot_hold_back_the_kill() {
    // Only the "lock lost" line is written (it blocked on 5136815 after the SIGTERM).
    stalled_stderr_run(&[]);
}

#[test]
fn a_stalled_stderr_with_debug_logs_cannot_hold_back_the_kill() {
    // Log lines too (on 5136815 the first one blocked azmutex before it even acquired).
    stalled_stderr_run(&["-vv"]);
}

/// A stderr that is closed (EPIPE) or full never changes the exit code of a command that ends
/// normally, and `run` still finishes promptly.
#[test]
fn a_full_stderr_does_not_hold_up_a_normal_run() {
    let c = common::unique("fullnormal");
    let (reader, writer) = full_pipe();
    let mut cmd = azmutex(&c);
    cmd.args(["-vv", "run", "job", "--", "sh", "-c", "exit 3"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(writer));
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    // Not a timing assertion of speed: a blocked stderr would hang here for ever.
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("run hung on a full stderr");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(reader);
    assert_eq!(status.code(), Some(3));
    assert_eq!(state(&c), azmutex::LeaseState::Available);
}
