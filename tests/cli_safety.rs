//! Safety at the edges, CLI side: the built `azmutex` against a real Azurite, with faults from
//! `common::proxy` (blackholes, lost answers) and `common::http_proxy` (targeted answers).
//! Each test tries to make `azmutex run` let its command (or anything it started) run while
//! another client could hold the lock, report success for a stolen lock, or leave a lease
//! behind.

#[path = "common/cli.rs"]
mod cli;
mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use azmutex::{LeaseDuration, LeaseState};
use cli::*;
use common::http_proxy::{Action, HttpProxy, Match};
use common::proxy::Proxy;

fn stderr_of(child: Child) -> (Option<i32>, String, Instant) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        Instant::now(),
    )
}

/// Last heartbeat time (ns) written by `p`/`g` lines in `file`, and how many of each.
fn last_heartbeat(file: &PathBuf) -> (u128, usize, usize) {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut last = 0;
    let (mut p, mut g) = (0, 0);
    for line in text.lines() {
        let Some((who, t)) = line.split_once(' ') else { continue };
        let Ok(t) = t.trim().parse::<u128>() else { continue };
        last = last.max(t);
        match who {
            "p" => p += 1,
            "g" => g += 1,
            _ => {}
        }
    }
    (last, p, g)
}

/// A command that ignores SIGTERM and starts a grandchild that ignores it too; both write a
/// timestamped heartbeat every 100 ms.
/// It records the grandchild's pid, so that the test can clean up after a failure.
const STUBBORN: &str = r#"exec </dev/null >/dev/null 2>&1
trap '' TERM
( trap '' TERM; while :; do echo "g $(date +%s%N)" >> "$BEAT"; sleep 0.1; done ) &
echo $! > "$BEAT.pid"
while :; do echo "p $(date +%s%N)" >> "$BEAT"; sleep 0.1; done"#;

/// Items 1, 2 and 9 with default options (30 s lease): under a blackhole, a command that ignores
/// SIGTERM, and its grandchild, are dead before anyone else can acquire, and `run` exits 70
/// within the lease duration + 5 s of the cut.
#[test]
fn a_stubborn_command_and_its_children_die_before_anyone_else_can_acquire() {
    let c = common::unique("stubborn");
    let dir = scratch("stubborn");
    let beat = dir.join("beat");
    let proxy = Proxy::start(common::azurite_addr());
    let mut cmd = azmutex_with(&c, &connection_via(proxy.addr));
    cmd.env("BEAT", &beat)
        .args(["run", "job", "--", "sh", "-c", STUBBORN])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    wait_until_leased(&c);
    std::thread::sleep(Duration::from_secs(1));
    let cut = Instant::now();
    proxy.drop_traffic();
    let acquired_at = acquire_as_soon_as_possible(&c, Duration::from_secs(45));
    let (code, stderr, exited) = stderr_of(child);
    std::thread::sleep(Duration::from_millis(500));
    let leftover = kill_pid_in(&beat.with_extension("pid"));
    let (last, p, g) = last_heartbeat(&beat);
    assert!(p > 0 && g > 0, "no heartbeats: {p} {g}");
    assert!(!leftover, "the grandchild outlived azmutex\n{stderr}");
    assert!(
        last < acquired_at,
        "the command ran {} ms after another client could acquire\n{stderr}",
        (last - acquired_at) / 1_000_000
    );
    assert_eq!(code, Some(70), "{stderr}");
    let took = exited - cut;
    eprintln!(
        "measured: last heartbeat {:.2} s before another client's successful acquire was sent; exit 70 {:.2} s after the cut",
        (acquired_at - last) as f64 / 1e9,
        took.as_secs_f64()
    );
    assert!(
        took < Duration::from_secs(35),
        "exit 70 came {took:?} after the cut\n{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Item 9 with a 15 s lease: the courtesy release after a loss is bounded by the lease's own
/// end, not by `--timeout` through a dead network.
#[test]
fn after_a_partition_run_exits_within_the_lease() {
    let c = common::unique("partition");
    let dir = scratch("partition");
    let started = dir.join("started");
    let proxy = Proxy::start(common::azurite_addr());
    let mut cmd = azmutex_with(&c, &connection_via(proxy.addr));
    cmd.env("STARTED", &started)
        .args(["--timeout", "30s", "run", "job", "--lease", "15", "--"])
        .args(["sh", "-c", r#"touch "$STARTED"; exec sleep 1000"#])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    // Cut only once the command runs (a cut between the acquire and the holder record would
    // rightly end in 69: nothing ran).
    let waiting = Instant::now();
    while !started.exists() {
        assert!(waiting.elapsed() < Duration::from_secs(20), "the command never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(&dir);
    let cut = Instant::now();
    proxy.drop_traffic();
    let (code, stderr, exited) = stderr_of(child);
    assert_eq!(code, Some(70), "{stderr}");
    let took = exited - cut;
    eprintln!(
        "measured: exit 70 {:.2} s after the cut (15 s lease)",
        took.as_secs_f64()
    );
    assert!(
        took < Duration::from_secs(20),
        "exit 70 came {took:?} after the cut\n{stderr}"
    );
}

/// Item 2: a forwarded SIGTERM reaches the whole process group, so a grandchild holding the
/// output open does not survive (and the caller reading the output is not left hanging).
#[test]
fn forwarded_signals_reach_grandchildren_and_the_output_closes() {
    let c = common::unique("grandchild");
    let dir = scratch("grandchild");
    let pidfile = dir.join("pid");
    let mut cmd = azmutex(&c);
    cmd.env("PIDFILE", &pidfile)
        .args([
            "-q",
            "run",
            "job",
            "--",
            "sh",
            "-c",
            r#"sleep 300 & echo $! > "$PIDFILE"; wait"#,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    wait_until_leased(&c);
    while !pidfile.exists() {
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        let _ = tx.send(());
    });
    let closed = rx.recv_timeout(Duration::from_secs(10)).is_ok();
    let grandchild: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    // SAFETY: probing (signal 0), then killing what the test started.
    let survived = unsafe { libc::kill(grandchild, 0) == 0 };
    if survived {
        unsafe { libc::kill(grandchild, libc::SIGKILL) };
    }
    assert!(!survived, "the grandchild survived the forwarded SIGTERM");
    assert!(closed, "the output stayed open");
    assert_eq!(child.wait().unwrap().code(), Some(128 + 15));
    let _ = std::fs::remove_dir_all(dir);
}

/// Item 2: processes the command leaves behind run under the lock too; they are stopped
/// before the lock is released.
#[test]
fn processes_left_behind_are_stopped_before_the_release() {
    let c = common::unique("leftover");
    let dir = scratch("leftover");
    let pidfile = dir.join("pid");
    let mut cmd = azmutex(&c);
    cmd.env("PIDFILE", &pidfile).args([
        "-q",
        "run",
        "job",
        "--kill-grace",
        "1s",
        "--",
        "sh",
        "-c",
        r#"sleep 300 </dev/null >/dev/null 2>&1 & echo $! > "$PIDFILE""#,
    ]);
    let out = output(cmd);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
    if alive {
        // SAFETY: killing what the test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert!(!alive, "a process the command left behind still runs after the release");
    let _ = std::fs::remove_dir_all(dir);
}

/// Item 2: under a terminal (a pty made by `script`), the command's own group is the
/// terminal's foreground group: interactive input reaches it, and Ctrl-C reaches it once
/// (azmutex, in another group, does not get it to forward a second time).
#[test]
fn interactive_commands_get_the_terminal() {
    let c = common::unique("pty");
    let dir = scratch("pty");
    let report = dir.join("report");
    let inner = r#"set -- $(cat /proc/$$/stat); mine=$5; fg=$8
set -- $(cat /proc/$PPID/stat); parent=$5
echo "groups $mine $fg $parent" >> "$REPORT"
read line
echo "got:$line" >> "$REPORT"
sleep 30"#;
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let line = format!(
        "{} --container {} -q run job -- sh -c {}",
        quote(&bin()),
        quote(&c),
        quote(inner)
    );
    let mut script = Command::new("script");
    script
        .args(["-qfec", &line, "/dev/null"])
        .env("AZURE_STORAGE_CONNECTION_STRING", &common::service().connection_string)
        .env("REPORT", &report)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = script
        .spawn()
        .expect("`script` (util-linux) runs this test under a pty");
    let mut stdin = child.stdin.take().unwrap();
    let started = Instant::now();
    while !std::fs::read_to_string(&report).unwrap_or_default().contains("groups") {
        assert!(started.elapsed() < Duration::from_secs(20), "the command never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    stdin.write_all(b"hello\n").unwrap();
    while !std::fs::read_to_string(&report).unwrap_or_default().contains("got:") {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "input never reached the command"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stdin.write_all(b"\x03").unwrap();
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&report).unwrap();
    let groups: Vec<&str> = text.lines().next().unwrap().split(' ').collect();
    assert_eq!(
        groups[1], groups[2],
        "the command is not the terminal's foreground group: {text}"
    );
    assert_ne!(groups[1], groups[3], "the command shares azmutex's group: {text}");
    assert!(text.contains("got:hello"), "{text}");
    assert_eq!(
        status.code(),
        Some(128 + 2),
        "Ctrl-C ends the command, and run passes it on"
    );
    assert_ne!(state(&c), LeaseState::Leased, "released after Ctrl-C");
    let _ = std::fs::remove_dir_all(dir);
}

/// Item 3: the lease is broken and taken between two renewals, and the command ends before the
/// next renewal: the release shows the lock was not ours to the end, so `run` exits 70.
#[test]
fn a_lock_stolen_between_renewals_exits_70() {
    let c = common::unique("stolen");
    let thief = r#""$AZMUTEX" --container "$C" -q break job --period 0 && "$AZMUTEX" --container "$C" -q acquire job --lease 60 >/dev/null"#;
    let mut cmd = azmutex(&c);
    cmd.env("AZMUTEX", bin())
        .env("C", &c)
        .args(["run", "job", "--lease", "15", "--", "sh", "-c", thief]);
    let out = output(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(70), "{stderr}");
    assert!(stderr.contains("lost"), "{stderr}");
}

/// Item 7: Ctrl-C while an acquire is in flight and its answer is lost: `run` releases the
/// lease that attempt got before exiting (bounded), instead of leaving the lock leased.
#[test]
fn interrupting_a_wait_releases_what_the_attempt_in_flight_got() {
    let c = common::unique("cancel");
    // Create the lock blob first, so the in-flight request is the acquire itself.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let m = common::mutex(&c);
    rt.block_on(async {
        m.release(&m.acquire("job", LeaseDuration::seconds(15).unwrap()).await.unwrap())
            .await
    })
    .unwrap();
    let proxy = Proxy::start(common::azurite_addr());
    proxy.drop_responses();
    let mut cmd = azmutex_with(&c, &connection_via(proxy.addr));
    cmd.args(["-q", "run", "job", "--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    wait_until_leased(&c);
    let interrupted = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let (code, stderr, exited) = stderr_of(child);
    assert_eq!(code, Some(130), "{stderr}");
    eprintln!(
        "measured: exit 130 {:.2} s after SIGINT",
        (exited - interrupted).as_secs_f64()
    );
    assert!(
        exited - interrupted < Duration::from_secs(10),
        "{:?}",
        exited - interrupted
    );
    assert_ne!(state(&c), LeaseState::Leased, "a lease was left behind\n{stderr}");
}

/// Item 8: `run --wait` keeps trying through storage failures until the wait ends (it used to
/// exit 69 when the first attempt failed), then exits 69.
#[test]
fn run_wait_retries_storage_failures_until_the_wait_ends() {
    let c = common::unique("wait-busy");
    let busy = common::proxy::busy_server();
    let mut cmd = azmutex_with(&c, &connection_via(busy));
    cmd.args(["-q", "--timeout", "2s", "run", "job", "--wait", "6s", "--", "true"]);
    let started = Instant::now();
    let out = output(cmd);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(69), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(took >= Duration::from_secs(5), "gave up after {took:?}, before --wait");
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

/// Item 1: lease, renewal interval, safety margin and kill grace that do not fit are refused
/// before anything runs, with the numbers.
#[test]
fn a_kill_grace_that_does_not_fit_the_lease_is_refused() {
    let c = common::unique("nofit");
    let mut cmd = azmutex(&c);
    cmd.args(["run", "job", "--lease", "15", "--kill-grace", "10s", "--", "true"]);
    let out = output(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--kill-grace") && stderr.contains("15s") && stderr.contains("10s"),
        "{stderr}"
    );
    let mut cmd = azmutex(&c);
    cmd.args(["-q", "run", "job", "--lease", "15", "--kill-grace", "5s", "--", "true"]);
    assert_eq!(output(cmd).status.code(), Some(0));
}

/// Issue 9 item 7: an acquire answered 201 without our lease id runs nothing, is not reported
/// as "lost while the command ran", and leaves no lease behind.
#[test]
fn an_acquire_without_our_id_runs_nothing() {
    let c = common::unique("noid");
    let dir = scratch("noid");
    let marker = dir.join("ran");
    let proxy = HttpProxy::start(common::azurite_addr());
    proxy.add(
        Match::LeaseAction("acquire"),
        Action::RewriteHeader("x-ms-lease-id", None),
        None,
    );
    let mut cmd = azmutex_with(&c, &connection_via(proxy.addr));
    cmd.args(["run", "job", "--no-wait", "--", "touch"]).arg(&marker);
    let out = output(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!marker.exists(), "the command ran");
    assert!(proxy.count("release") >= 1);
    assert_ne!(state(&c), LeaseState::Leased);
    let _ = std::fs::remove_dir_all(dir);
}

/// Item 3 of issue 16: on main 5136815 `azmutex release` exited 0 when its first attempt got a
/// 500 (applied, answer lost) and the retry a 409 mismatch: `Released::Unconfirmed` was mapped
/// to success, while `run` says 70 for the same case. Success means confirmed.
#[test]
fn release_exits_70_when_the_release_cannot_be_confirmed() {
    let c = common::unique("unconfirmed");
    let rt = rt();
    let lease = rt
        .block_on(common::mutex(&c).acquire("job", LeaseDuration::seconds(30).unwrap()))
        .unwrap();
    let proxy = HttpProxy::start(common::azurite_addr());
    proxy.add(
        Match::LeaseAction("release"),
        Action::ForwardThenRespond(500, "InternalError"),
        Some(1),
    );
    let mut cmd = azmutex_with(&c, &connection_via(proxy.addr));
    cmd.args(["release", "job", "--lease-id", &lease.id().to_string()]);
    let out = output(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(proxy.count("release"), 2, "{stderr}");
    assert_eq!(out.status.code(), Some(70), "{stderr}");
    assert!(
        stderr.contains("lost (") && stderr.contains("answer was lost"),
        "{stderr}"
    );
}

/// Item 5 of issue 16: on main 5136815 `run --wait 0` on a free lock exited 69 ("storage
/// unreachable ... request timed out"), and 69 instead of 75 on a busy one. `--wait 0` is
/// `--no-wait`, as `flock -w 0` is.
#[test]
fn wait_zero_means_do_not_wait() {
    let c = common::unique("waitzero");
    let mut cmd = azmutex(&c);
    cmd.args(["run", "job", "--wait", "0", "--", "true"]);
    let out = output(cmd);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let rt = rt();
    let m = common::mutex(&c);
    let lease = rt
        .block_on(m.acquire("job", LeaseDuration::seconds(30).unwrap()))
        .unwrap();
    for wait in ["0", "0s", "1ms"] {
        let mut cmd = azmutex(&c);
        cmd.args(["run", "job", "--wait", wait, "--", "true"]);
        let out = output(cmd);
        assert_eq!(
            out.status.code(),
            Some(75),
            "--wait {wait}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    rt.block_on(m.release(&lease)).unwrap();
}
