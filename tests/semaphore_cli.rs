//! `azmutex run --slots N`, `acquire --slots N` and `status` of a semaphore, with the built
//! binary against Azurite: never more than N commands at once, AZMUTEX_SLOT and per-slot
//! tokens, 75 when full with `--no-wait`, 78 (both numbers) for another N, usage errors for a
//! bad N, a broken slot lease stopping the command with 70, status in text and JSON.

#[path = "common/cli.rs"]
mod cli;
mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use cli::*;
use common::semaphore::held_on_server;

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits (hang guard only) until the server shows `n` held slots of `name`.
fn wait_held(container: &str, name: &str, n: usize) {
    let rt = rt();
    let start = Instant::now();
    while rt.block_on(held_on_server(container, name)) != n {
        assert!(start.elapsed() < Duration::from_secs(60), "never saw {n} held slots");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn run_slots_end_to_end() {
    let c = common::unique("semcli-run");
    let dir = scratch("semcli");
    let log = dir.join("log");
    // Five commands on two slots: each logs its start and end with its slot and token.
    let script = format!(
        "echo start $(date +%s%N) $AZMUTEX_SLOT $AZMUTEX_FENCING_TOKEN >> {0}; sleep 1; echo end $(date +%s%N) $AZMUTEX_SLOT >> {0}",
        log.display()
    );
    let children: Vec<_> = (0..5)
        .map(|_| {
            let mut cmd = azmutex(&c);
            cmd.args([
                "-q", "run", "--slots", "2", "pool", "--wait", "120s", "--", "sh", "-c", &script,
            ])
            .stdin(Stdio::null());
            cmd.spawn().unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let mut events = Vec::new();
    let mut tokens: HashMap<u32, Vec<u64>> = HashMap::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let t: u128 = parts[1].parse().unwrap();
        let slot: u32 = parts[2].parse().unwrap();
        assert!(slot < 2, "AZMUTEX_SLOT {slot}");
        match parts[0] {
            "start" => {
                events.push((t, 1i32));
                tokens.entry(slot).or_default().push(parts[3].parse().unwrap());
            }
            _ => events.push((t, -1)),
        }
    }
    assert_eq!(events.len(), 10, "{text}");
    events.sort();
    let (mut now, mut most) = (0, 0);
    for (_, d) in events {
        now += d;
        most = most.max(now);
    }
    assert!(most <= 2, "{most} commands ran at once:\n{text}");
    // Each slot's tokens grow in the order its holders started.
    for (slot, t) in tokens {
        assert!(t.windows(2).all(|w| w[0] < w[1]), "slot {slot}: {t:?}");
    }
}

#[test]
fn full_no_wait_mismatch_and_status() {
    let c = common::unique("semcli-full");
    let dir = scratch("semcli-full");
    let stop = dir.join("stop");
    let script = format!("while [ ! -e {} ]; do sleep 0.1; done", stop.display());
    let holders: Vec<_> = (0..2)
        .map(|i| {
            let mut cmd = azmutex(&c);
            cmd.args([
                "-q",
                "run",
                "--slots",
                "2",
                "--owner",
                &format!("holder-{i}"),
                "db",
                "--",
            ])
            .args(["sh", "-c", &script])
            .stdin(Stdio::null());
            cmd.spawn().unwrap()
        })
        .collect();
    wait_held(&c, "db", 2);

    // Full: --no-wait exits 75 at once and never runs the command.
    let marker = dir.join("ran");
    let mut cmd = azmutex(&c);
    cmd.args(["run", "--slots", "2", "--no-wait", "db", "--", "touch"])
        .arg(&marker);
    let out = output(cmd);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(75), "{err}");
    assert!(err.contains("full"), "{err}");
    assert!(!marker.exists());
    // --wait that runs out: 75 too.
    let mut cmd = azmutex(&c);
    cmd.args(["run", "--slots", "2", "--wait", "1s", "db", "--", "touch"])
        .arg(&marker);
    assert_eq!(output(cmd).status.code(), Some(75));
    assert!(!marker.exists());
    // It recorded itself while it waited, and took its record away before exiting.
    let left = rt().block_on(common::semaphore::blobs_named(&c, "db", "waiter-"));
    assert!(left.is_empty(), "waiter records left behind: {left:?}");

    // Another N: refused with both numbers, 78.
    let mut cmd = azmutex(&c);
    cmd.args(["run", "--slots", "3", "db", "--", "touch"]).arg(&marker);
    let out = output(cmd);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("has 2 slots") && err.contains("asked for 3"), "{err}");
    assert!(!marker.exists());

    // Status, text: N, held slots, holders.
    let mut cmd = azmutex(&c);
    cmd.args(["status", "db"]);
    let out = output(cmd);
    let (o, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(o.contains("slots:         2"), "{o}");
    assert!(o.contains("held:          2"), "{o}");
    assert!(o.contains("holder-0") && o.contains("holder-1"), "{o}");
    // Status, JSON.
    let mut cmd = azmutex(&c);
    cmd.args(["status", "db", "--json"]);
    let out = output(cmd);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["semaphore"], "db");
    assert_eq!(v["slots"], 2);
    assert_eq!(v["held"], 2);
    let states = v["slot_states"].as_array().unwrap();
    assert_eq!(states.len(), 2);
    let mut owners: Vec<String> = states
        .iter()
        .map(|s| {
            assert_eq!(s["locked"], true);
            assert!(s["fencing_token"].as_u64().unwrap() > 0);
            s["holder"]["owner"].as_str().unwrap().to_string()
        })
        .collect();
    owners.sort();
    assert_eq!(owners, ["holder-0", "holder-1"]);

    std::fs::write(&stop, "").unwrap();
    for mut h in holders {
        assert!(h.wait().unwrap().success());
    }
    // Free again: status says so, and a --no-wait run gets a slot.
    let mut cmd = azmutex(&c);
    cmd.args(["status", "db", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&output(cmd).stdout).unwrap();
    assert_eq!(v["held"], 0);
    let mut cmd = azmutex(&c);
    cmd.args([
        "-q",
        "run",
        "--slots",
        "2",
        "--no-wait",
        "db",
        "--",
        "sh",
        "-c",
        "test -n \"$AZMUTEX_SLOT\"",
    ]);
    assert_eq!(output(cmd).status.code(), Some(0));
}

#[test]
fn bad_slot_counts_are_usage_errors() {
    let c = common::unique("semcli-bad");
    for n in ["0", "1001", "-1", "x"] {
        let mut cmd = azmutex(&c);
        cmd.args(["run", "--slots", n, "db", "--", "true"]);
        assert_eq!(output(cmd).status.code(), Some(2), "--slots {n}");
        let mut cmd = azmutex(&c);
        cmd.args(["acquire", "--slots", n, "db"]);
        assert_eq!(output(cmd).status.code(), Some(2), "--slots {n}");
    }
}

#[test]
fn acquire_slots_for_scripts() {
    let c = common::unique("semcli-acq");
    let mut cmd = azmutex(&c);
    cmd.args(["acquire", "--slots", "1", "--lease", "30", "one", "--json"]);
    let out = output(cmd);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["slot"], 0);
    let lock = v["lock"].as_str().unwrap().to_string();
    let id = v["lease_id"].as_str().unwrap().to_string();
    assert_eq!(lock, "one/slot-0000");
    // Full: 75, naming the semaphore.
    let mut cmd = azmutex(&c);
    cmd.args(["acquire", "--slots", "1", "one"]);
    let out = output(cmd);
    assert_eq!(out.status.code(), Some(75), "{:?}", text(&out));
    // Released with the printed lock name and id, the slot is free again; text output is
    // "LEASE_ID LOCK".
    let mut cmd = azmutex(&c);
    cmd.args(["release", &lock, "--lease-id", &id]);
    assert_eq!(output(cmd).status.code(), Some(0));
    let mut cmd = azmutex(&c);
    cmd.args(["acquire", "--slots", "1", "one"]);
    let out = output(cmd);
    let (o, _) = text(&out);
    assert_eq!(out.status.code(), Some(0));
    let words: Vec<&str> = o.split_whitespace().collect();
    assert_eq!(words.len(), 2, "{o}");
    assert_eq!(words[1], "one/slot-0000");
}

/// A slot's lease broken from outside stops the command (its whole group) and exits 70, as
/// for a lock.
#[test]
fn a_broken_slot_stops_the_command_with_70() {
    let c = common::unique("semcli-lost");
    let dir = scratch("semcli-lost");
    let beat = dir.join("beat");
    let script = format!("while true; do date +%s%N > {}; sleep 0.1; done", beat.display());
    let mut cmd = azmutex(&c);
    cmd.args([
        "-q",
        "run",
        "--slots",
        "1",
        "--lease",
        "15",
        "--kill-grace",
        "1s",
        "x",
        "--",
        "sh",
        "-c",
        &script,
    ])
    .stdin(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    wait_held(&c, "x", 1);
    let rt = rt();
    rt.block_on(async {
        common::mutex(&c)
            .break_lease("x/slot-0000", Some(azmutex::BreakPeriod::NOW))
            .await
            .unwrap();
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "run did not stop");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(70));
    // The command is gone: no heartbeat after run exited.
    let last = std::fs::read_to_string(&beat).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(std::fs::read_to_string(&beat).unwrap(), last);
}

/// Storage down while waiting for a slot is "storage unreachable" (69), as for a lock, not
/// "full" (75): nothing was listed (on 066b881: 75 and "gave up waiting for a slot").
#[test]
fn storage_down_while_waiting_for_a_slot_is_69_not_75() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let mut cmd = azmutex_with(&common::unique("sem-down"), &connection_via(addr));
    cmd.args([
        "run",
        "down",
        "--slots",
        "2",
        "--wait",
        "2s",
        "--timeout",
        "3s",
        "--",
        "true",
    ]);
    let out = output(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(!stderr.contains("all held"), "{stderr}");
}
