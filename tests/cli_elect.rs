//! `azmutex elect` and `azmutex observe` against a real Azurite: the command's environment and
//! exit code, loss (campaign again, or exit 70 with `--once`), SIGTERM handing over to a
//! standby, a standby stopped before it leads, and `observe --json` lines. Timeouts only guard
//! against hangs.

#[path = "common/cli.rs"]
mod cli;
mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use azmutex::BreakPeriod;
use cli::azmutex;

const GUARD: Duration = Duration::from_secs(60);

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn break_now(container: &str, name: &str) {
    block_on(common::mutex(container).break_lease(name, Some(BreakPeriod::NOW))).unwrap();
}

fn leader(container: &str, name: &str) -> Option<azmutex::election::Leader> {
    let info = block_on(common::mutex(container).inspect(name)).unwrap();
    azmutex::election::Leader::from_lock_info(&info)
}

/// Lines of a child's stdout, read on a thread.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn next_line(rx: &mpsc::Receiver<String>, what: &str) -> String {
    rx.recv_timeout(GUARD)
        .unwrap_or_else(|_| panic!("hang guard: no line ({what}) within {GUARD:?}"))
}

/// Waits (hang guard) until `path` has at least `n` lines; returns them.
fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(started.elapsed() < GUARD, "hang guard: {path:?} has {lines:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, sig) };
}

fn wait(mut child: Child) -> (Option<i32>, String) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return (status.code(), err);
        }
        if started.elapsed() > GUARD {
            let _ = child.kill();
            panic!("hang guard: azmutex did not exit");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `sh -c SCRIPT` as the command, recording to `log` (`start EPOCH` when it starts).
fn elect(container: &str, name: &str, extra: &[&str], script: &str, log: &Path) -> Child {
    let mut cmd = azmutex(container);
    cmd.args(["elect", name, "--lease", "15", "--kill-grace", "2s"])
        .args(extra)
        .args(["--", "sh", "-c", script])
        .env("LOG", log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd.spawn().unwrap()
}

const HOLD: &str = "echo start $AZMUTEX_EPOCH >> \"$LOG\"; trap '' TERM; while :; do sleep 0.1; done";

#[test]
fn the_command_gets_the_term_and_its_exit_code_ends_the_term() {
    let c = common::unique("el-cli");
    let mut cmd = azmutex(&c);
    cmd.args(["-q", "elect", "n", "--value", "v1", "--", "sh", "-c"])
        .arg("echo \"$AZMUTEX_EPOCH $AZMUTEX_FENCING_TOKEN $AZMUTEX_LOCK $AZMUTEX_LEASE_ID\"; exit 3");
    let out = cli::output(cmd);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(words.len(), 4, "{stdout}");
    let epoch: u64 = words[0].parse().unwrap();
    assert_eq!(words[1], words[0], "AZMUTEX_FENCING_TOKEN is the epoch");
    assert_eq!(words[2], "n");
    // Resigned when the command exited: nobody leads, the lock is free.
    let info = block_on(common::mutex(&c).inspect("n")).unwrap();
    assert!(!info.locked, "{:?}", info.state);
    assert_eq!(info.fencing_token, Some(epoch));
}

#[test]
fn a_loss_stops_the_command_and_campaigns_again() {
    let c = common::unique("el-cli");
    let dir = cli::scratch("el-loss");
    let log = dir.join("log");
    let child = elect(&c, "n", &[], HOLD, &log);
    let first = wait_lines(&log, 1);
    break_now(&c, "n");
    // The command (which ignores SIGTERM) is killed, and a new term starts it again.
    let both = wait_lines(&log, 2);
    let epoch = |l: &str| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap();
    assert_eq!(both[0], first[0]);
    assert!(epoch(&both[1]) > epoch(&both[0]), "{both:?}");
    signal(&child, libc::SIGTERM);
    let (code, err) = wait(child);
    // SIGTERM ignored by the command: SIGKILL after the kill grace; resigned.
    assert_eq!(code, Some(128 + 9), "{err}");
    assert!(err.contains("lost"), "{err}");
    assert!(err.contains("campaigning again"), "{err}");
    assert!(!block_on(common::mutex(&c).inspect("n")).unwrap().locked);
}

#[test]
fn once_exits_70_on_a_loss() {
    let c = common::unique("el-cli");
    let dir = cli::scratch("el-once");
    let log = dir.join("log");
    let child = elect(&c, "n", &["--once"], HOLD, &log);
    wait_lines(&log, 1);
    break_now(&c, "n");
    let (code, err) = wait(child);
    assert_eq!(code, Some(70), "{err}");
    assert_eq!(wait_lines(&log, 1).len(), 1, "--once: no second term");
}

/// SIGTERM to the leader: its command stops, it resigns, and the standby's command starts
/// long before the leader's 60 s lease could have run out; the two commands never overlap.
/// `break --period 0` deposes the leader: with a standby waiting, the next term is the
/// standby's. A reviewer saw the deposed leader of 6b33f73 campaign again at once and win, 30 ms
/// later, every time; this machine did not reproduce that, so this test guards the 1 s pause a
/// deposed leader now takes rather than proving the old failure.
#[test]
fn a_break_hands_the_next_term_to_the_standby() {
    let c = common::unique("el-cli");
    let dir = cli::scratch("el-depose");
    let (a_log, b_log) = (dir.join("a"), dir.join("b"));
    // Commands that stop at SIGTERM: the deposed leader is free to campaign again at once.
    let quick = "echo start $AZMUTEX_EPOCH >> \"$LOG\"; while :; do sleep 0.1; done";
    let a = elect(&c, "n", &["--value", "a"], quick, &a_log);
    wait_lines(&a_log, 1);
    let b = elect(&c, "n", &["--value", "b"], quick, &b_log);
    // The standby is campaigning (polling) before the break.
    std::thread::sleep(Duration::from_secs(2));
    assert!(std::fs::read_to_string(&b_log).is_err(), "the standby ran while a led");
    break_now(&c, "n");
    let b_started = wait_lines(&b_log, 1);
    let a_lines = std::fs::read_to_string(&a_log).unwrap();
    assert_eq!(
        a_lines.lines().count(),
        1,
        "the deposed leader took the next term: {a_lines}"
    );
    let epoch = |l: &str| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap();
    assert!(epoch(&b_started[0]) > epoch(a_lines.lines().next().unwrap()));
    assert_eq!(leader(&c, "n").map(|l| l.value), Some("b".to_string()));
    for child in [a, b] {
        signal(&child, libc::SIGTERM);
        let _ = wait(child);
    }
}

#[test]
fn sigterm_hands_over_to_the_standby() {
    let c = common::unique("el-cli");
    let dir = cli::scratch("el-term");
    let (a_log, b_log) = (dir.join("a"), dir.join("b"));
    let beat = "echo start $AZMUTEX_EPOCH >> \"$LOG\"; trap 'echo end >> \"$LOG\"; exit 0' TERM INT; \
                while :; do sleep 0.05; done";
    let mut a_cmd = azmutex(&c);
    a_cmd
        .args(["elect", "n", "--value", "a", "--lease", "60", "--", "sh", "-c", beat])
        .env("LOG", &a_log)
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    let a = a_cmd.spawn().unwrap();
    wait_lines(&a_log, 1);
    let mut b_cmd = azmutex(&c);
    b_cmd
        .args(["elect", "n", "--value", "b", "--lease", "60", "--", "sh", "-c", beat])
        .env("LOG", &b_log)
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    let b = b_cmd.spawn().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(std::fs::read_to_string(&b_log).is_err(), "the standby ran while a led");
    let termed = Instant::now();
    signal(&a, libc::SIGTERM);
    let (code, err) = wait(a);
    assert_eq!(code, Some(0), "the command's own exit code: {err}");
    assert_eq!(wait_lines(&a_log, 2)[1], "end", "a's command ended before it resigned");
    let b_started = wait_lines(&b_log, 1);
    assert!(
        termed.elapsed() < Duration::from_secs(45),
        "the standby waited for the lease to run out instead of a resignation"
    );
    let epoch = |l: &str| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap();
    let a_epoch = epoch(&wait_lines(&a_log, 1)[0]);
    assert!(epoch(&b_started[0]) > a_epoch);
    assert_eq!(leader(&c, "n").map(|l| l.value), Some("b".to_string()));
    signal(&b, libc::SIGINT);
    let (code, err) = wait(b);
    assert_eq!(code, Some(0), "{err}");
}

/// A standby stopped before it is elected never ran its command and never says it lost
/// anything; the leader is untouched.
#[test]
fn a_standby_stopped_before_it_leads_reports_no_loss() {
    let c = common::unique("el-cli");
    let dir = cli::scratch("el-standby");
    let (a_log, b_log) = (dir.join("a"), dir.join("b"));
    // Commands that stop at SIGTERM: the deposed leader is free to campaign again at once.
    let quick = "echo start $AZMUTEX_EPOCH >> \"$LOG\"; while :; do sleep 0.1; done";
    let a = elect(&c, "n", &["--value", "a"], quick, &a_log);
    wait_lines(&a_log, 1);
    let b = elect(&c, "n", &["--value", "b"], quick, &b_log);
    std::thread::sleep(Duration::from_secs(1));
    signal(&b, libc::SIGTERM);
    let (code, err) = wait(b);
    assert_eq!(code, Some(128 + 15), "{err}");
    assert!(
        !err.contains("lost"),
        "a loss reported for a term that never started: {err}"
    );
    assert!(!err.contains("elected"), "{err}");
    assert!(std::fs::read_to_string(&b_log).is_err(), "b's command ran");
    assert_eq!(leader(&c, "n").map(|l| l.value), Some("a".to_string()));
    signal(&a, libc::SIGKILL);
    let _ = wait(a);
}

/// `observe --json`: one line now and one per change (elected, then a break); `status` shows
/// the leader record; SIGINT ends it with 0.
#[test]
fn observe_json_lines_and_status() {
    let c = common::unique("el-cli");
    let mut obs = azmutex(&c);
    obs.args(["observe", "n", "--json", "--interval", "200ms"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut observer = obs.spawn().unwrap();
    let seen = lines(&mut observer);
    assert_eq!(next_line(&seen, "first state"), "{\"leader\":null}");

    // Without a command: prints the epoch when elected and leads until a signal.
    let mut lead = azmutex(&c);
    lead.args([
        "elect",
        "n",
        "--value",
        "x \"quoted\"",
        "--once",
        "--lease",
        "15",
        "--kill-grace",
        "2s",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut leader_proc = lead.spawn().unwrap();
    let printed = lines(&mut leader_proc);
    let epoch: u64 = next_line(&printed, "epoch").parse().unwrap();
    let line = next_line(&seen, "elected");
    assert!(
        line.starts_with(&format!(
            "{{\"leader\":{{\"value\":\"x \\\"quoted\\\"\",\"epoch\":{epoch},\"since\":\""
        )),
        "{line}"
    );
    assert!(line.contains("\"holder\":{\"owner\":\"azmutex\""), "{line}");

    let mut status = azmutex(&c);
    status.args(["status", "n", "--json"]);
    let out = String::from_utf8(cli::output(status).stdout).unwrap();
    assert!(
        out.contains(&format!(
            "\"leader\":{{\"value\":\"x \\\"quoted\\\"\",\"epoch\":{epoch}"
        )),
        "{out}"
    );

    break_now(&c, "n");
    assert_eq!(next_line(&seen, "broken"), "{\"leader\":null}");
    let (code, err) = wait(leader_proc);
    assert_eq!(code, Some(70), "--once after a loss: {err}");

    signal(&observer, libc::SIGINT);
    let (code, err) = wait(observer);
    assert_eq!(code, Some(0), "{err}");
}
