//! Every descendant of `azmutex run`'s command dies with the lock: not only its process group,
//! but workers that called `setsid`, double-forked daemons reparented to azmutex (a subreaper),
//! and commands wrapped in `timeout` (which moves itself to a group of its own). On a loss they
//! are dead before anyone else can acquire; after a normal exit, before the release.
//!
//! Against the built binary and a real Azurite, with `common::proxy` for partitions.

#[path = "common/cli.rs"]
mod cli;
mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use cli::*;
use common::proxy::Proxy;

/// A worker that ignores SIGTERM, records its pid and writes a heartbeat every 100 ms.
const WORKER: &str =
    r#"trap '' TERM; echo $$ > "$BEAT.pid"; while :; do echo "w $(date +%s%N)" >> "$BEAT"; sleep 0.1; done"#;

/// How the command starts the worker outside its own process group.
const ESCAPES: [(&str, &str); 3] = [
    // A new session: out of the group, still a child of `sh`.
    (
        "setsid",
        r#"setsid sh -c "$WORKER" </dev/null >/dev/null 2>&1 & sleep 1000"#,
    ),
    // A double fork: the worker is orphaned and reparented to azmutex (the subreaper).
    (
        "daemon",
        r#"( setsid sh -c "$WORKER" </dev/null >/dev/null 2>&1 & ) ; sleep 1000"#,
    ),
    // `timeout` puts itself (and the job) in a process group of its own.
    (
        "timeout",
        r#"timeout 600 sh -c "$WORKER" </dev/null >/dev/null 2>&1; true"#,
    ),
];

fn wait_for(path: &std::path::Path) {
    let started = Instant::now();
    while !path.exists() {
        assert!(started.elapsed() < Duration::from_secs(20), "{path:?} never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
}

/// Item 2 of issue 16: on main 5136815 a worker that left the command's process group was
/// still writing after azmutex exited 70 and after a rival acquired.
#[test]
fn workers_outside_the_group_die_before_anyone_else_can_acquire() {
    for (name, script) in ESCAPES {
        let c = common::unique(name);
        let dir = scratch(name);
        let beat = dir.join("beat");
        let proxy = Proxy::start(common::azurite_addr());
        let mut cmd = azmutex_with(&c, &connection_via(proxy.addr));
        if name == "daemon" {
            // One case on the /proc-walk fallback (no cgroup), whatever the system allows.
            cmd.env("AZMUTEX_NO_CGROUP", "1");
        }
        cmd.env("BEAT", &beat)
            .env("WORKER", WORKER)
            .args([
                "run",
                "job",
                "--lease",
                "15",
                "--kill-grace",
                "2s",
                "--",
                "sh",
                "-c",
                script,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = cmd.spawn().unwrap();
        wait_for(&beat.with_extension("pid"));
        proxy.drop_traffic();
        let acquired_at = acquire_as_soon_as_possible(&c, Duration::from_secs(45));
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        std::thread::sleep(Duration::from_millis(500));
        let last = last_beat(&beat);
        let leftover = kill_pid_in(&beat.with_extension("pid"));
        assert!(!leftover, "{name}: the worker outlived azmutex\n{stderr}");
        assert!(
            last < acquired_at,
            "{name}: the worker ran {} ms after another client could acquire\n{stderr}",
            (last - acquired_at) / 1_000_000
        );
        assert_eq!(out.status.code(), Some(70), "{name}: {stderr}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Item 2 of issue 16, normal exit: on main 5136815 `run` exited 0 and released while a worker
/// that had called `setsid` ran on.
#[test]
fn workers_outside_the_group_die_before_a_normal_release() {
    let scripts = [
        (
            "setsid",
            r#"setsid sh -c "$WORKER" </dev/null >/dev/null 2>&1 & sleep 1"#,
        ),
        (
            "daemon",
            r#"( setsid sh -c "$WORKER" </dev/null >/dev/null 2>&1 & ) ; sleep 1"#,
        ),
    ];
    for (name, script) in scripts {
        let c = common::unique(name);
        let dir = scratch(name);
        let beat = dir.join("beat");
        let mut cmd = azmutex(&c);
        if name == "setsid" {
            // On the /proc-walk fallback (no cgroup), whatever the system allows.
            cmd.env("AZMUTEX_NO_CGROUP", "1");
        }
        cmd.env("BEAT", &beat)
            .env("WORKER", WORKER)
            .args(["run", "job", "--kill-grace", "1s", "--", "sh", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let out = cmd.output().unwrap();
        let exited = now_ns();
        let stderr = String::from_utf8_lossy(&out.stderr);
        std::thread::sleep(Duration::from_millis(500));
        let last = last_beat(&beat);
        let leftover = kill_pid_in(&beat.with_extension("pid"));
        assert!(last > 0, "{name}: the worker never ran\n{stderr}");
        assert!(!leftover, "{name}: the worker outlived the release\n{stderr}");
        assert!(last < exited, "{name}: the worker wrote after azmutex exited\n{stderr}");
        assert!(
            stderr.contains("left processes behind"),
            "{name}: no word about the leftovers\n{stderr}"
        );
        assert_eq!(out.status.code(), Some(0), "{name}: {stderr}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
