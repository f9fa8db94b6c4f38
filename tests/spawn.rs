//! How `run` starts its command (issue 23): straight into a cgroup of its own with `clone3`
//! (no move afterwards, which costs the kernel an RCU grace period), or, where the kernel
//! refuses that (`AZMUTEX_NO_CLONE3` takes the same path), started by tokio and moved in before
//! exec. Either way the command must get the same world: its own process group, the cgroup from
//! its first instruction, default signal dispositions (Rust ignores SIGPIPE for itself) and an
//! empty signal mask, the lock's variables, and the exit codes of a failed start.

#[path = "common/cli.rs"]
mod cli;
mod common;

use cli::*;

/// What the command reports about itself: `/proc/self/cgroup`, its signal masks, its process
/// group and the lease id it was given.
const REPORT: &str = r#"echo "cgroup $(grep '^0::' /proc/self/cgroup)"; grep -E '^Sig(Ign|Blk)' /proc/self/status; echo "pgid $(cut -d' ' -f5 /proc/$$/stat) pid $$"; echo "lease $AZMUTEX_LEASE_ID""#;

fn report(no_clone3: bool) -> (String, String) {
    let c = common::unique("spawn");
    let mut cmd = azmutex(&c);
    if no_clone3 {
        cmd.env("AZMUTEX_NO_CLONE3", "1");
    }
    cmd.args(["-vv", "run", "job", "--", "sh", "-c", REPORT]);
    let out = output(cmd);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    (stdout, stderr)
}

fn field<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name:?} in:\n{text}"))
        .trim()
}

#[test]
fn both_ways_of_starting_give_the_command_the_same_world() {
    let mut masks = Vec::new();
    for no_clone3 in [false, true] {
        let (stdout, stderr) = report(no_clone3);
        let how = if no_clone3 {
            "moved in (AZMUTEX_NO_CLONE3)"
        } else {
            "clone3"
        };
        // SIGPIPE is the default again (Rust ignores it for itself; std restores it), and the
        // rest is what azmutex was given: the same both ways.
        let ignored = u64::from_str_radix(field(&stdout, "SigIgn:"), 16).unwrap();
        assert_eq!(
            ignored & (1 << (libc_sigpipe() - 1)),
            0,
            "{how}: SIGPIPE ignored: {stdout}"
        );
        masks.push((
            field(&stdout, "SigIgn:").to_string(),
            field(&stdout, "SigBlk:").to_string(),
        ));
        // Its own process group.
        let ids: Vec<&str> = field(&stdout, "pgid").split(" pid ").collect();
        assert_eq!(ids.len(), 2, "{how}: {stdout}");
        assert_eq!(ids[0].trim(), ids[1].trim(), "{how}: not a group leader: {stdout}");
        assert_eq!(field(&stdout, "lease").len(), 36, "{how}: {stdout}");
        if stderr.contains("the command runs in a cgroup of its own") {
            // In its cgroup from the first instruction on.
            assert!(field(&stdout, "cgroup").contains("/azmutex-"), "{how}: {stdout}");
            // The direct start was used where it could be.
            assert!(
                no_clone3 || !stderr.contains("clone3 into the cgroup refused"),
                "{how}: {stderr}"
            );
        } else {
            eprintln!("{how}: no cgroup of its own on this machine (the /proc walk covers it)");
        }
    }
    assert_eq!(
        masks[0], masks[1],
        "signal masks differ between the two ways of starting"
    );
}

fn libc_sigpipe() -> u32 {
    13
}

#[test]
fn a_command_that_cannot_start_exits_127_or_126_either_way() {
    let dir = scratch("spawn-noexec");
    let not_executable = dir.join("script.sh");
    std::fs::write(&not_executable, "#!/bin/sh\nexit 0\n").unwrap();
    for no_clone3 in [false, true] {
        for (program, code) in [
            ("azmutex-no-such-command".to_string(), 127),
            (not_executable.display().to_string(), 126),
        ] {
            let c = common::unique("spawn-fail");
            let mut cmd = azmutex(&c);
            if no_clone3 {
                cmd.env("AZMUTEX_NO_CLONE3", "1");
            }
            cmd.args(["run", "job", "--", &program]);
            let out = output(cmd);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(code),
                "{program} (no_clone3 {no_clone3}): {stderr}"
            );
            assert!(stderr.contains("cannot run"), "{stderr}");
            // The lock was given back at once.
            let mut status = azmutex(&c);
            status.args(["status", "job", "--json"]);
            let s = String::from_utf8_lossy(&output(status).stdout).into_owned();
            assert!(s.contains("\"locked\":false"), "{s}");
        }
    }
}
