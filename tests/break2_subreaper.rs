//! Second hostile review (issues 8 and 9), against a real Azurite. Each test is an attack that
//! broke a promise at commit b8af6ac, named after what went wrong then; it passes when the
//! promise holds. Kept as regression tests.

#[path = "common/cli.rs"]
mod cli;
mod common;

use std::process::Stdio;
use std::time::Duration;

use cli::*;

/// (pid, state, ppid) of every process in group `pgid`.
fn members(pgid: i32) -> Vec<(i32, char, i32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 2 && f[2].parse::<i32>() == Ok(pgid) {
            out.push((pid, f[0].chars().next().unwrap_or('?'), f[1].parse().unwrap_or(0)));
        }
    }
    out
}

/// README `run`: the watchdog "kills the group if azmutex dies, even by SIGKILL". If azmutex is
/// stopped first (SIGSTOP: the watchdog then stops the group, itself included) and then killed,
/// the stopped watchdog can never act. When the orphans are reparented to a subreaper in the
/// same session, the group is not "orphaned" in the POSIX sense, so the kernel sends no
/// SIGHUP/SIGCONT either: the command's grandchildren and the watchdog stay in the process table,
/// stopped, after azmutex is gone (and run on unlocked if anything continues them).
#[test]
fn break2_killed_while_stopped_leaves_the_group_behind_under_a_subreaper() {
    // SAFETY: prctl with integer arguments.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }, 0);
    let c = common::unique("b2-subreaper");
    let dir = scratch("b2-subreaper");
    let pidfile = dir.join("pid");
    let mut run = azmutex(&c);
    run.env("PIDFILE", &pidfile)
        .args([
            "-q",
            "run",
            "job",
            "--",
            "sh",
            "-c",
            "( while :; do sleep 0.05; done ) & echo $! > \"$PIDFILE\"; wait",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = run.spawn().unwrap();
    wait_until_leased(&c);
    std::thread::sleep(Duration::from_millis(500));
    let grandchild: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    // SAFETY: getpgid on a process of ours.
    let pgid = unsafe { libc::getpgid(grandchild) };
    assert!(pgid > 0);
    // SAFETY: signals to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_millis(300));
    let before = members(pgid);
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    std::thread::sleep(Duration::from_secs(2));
    // Reap zombies reparented to us, then look at who is left.
    // SAFETY: waitpid on any child, non-blocking.
    unsafe { while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {} }
    let left: Vec<_> = members(pgid).into_iter().filter(|m| m.1 != 'Z').collect();
    for (pid, _, _) in &left {
        // SAFETY: killing leftovers of this test.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        left.is_empty(),
        "2 s after azmutex died, its command's group still has (pid, state, ppid): {left:?} (stopped before the kill: {before:?}; this test is pid {})",
        std::process::id()
    );
}
