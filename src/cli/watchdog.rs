//! The watchdog: a copy of azmutex forked (without exec) beside the command, which enforces the
//! kill deadline and follows azmutex's own state (stopped, gone) on its own. See
//! [`super::process::Group::start_watchdog`].

use std::sync::atomic::{AtomicI64, Ordering};

use super::cgroup::WatchdogPaths;
use super::descendants::{fill, fill_subtree, mark_descendants, signal_descendants_in, signal_subtree, ProcEntry};

/// How many processes the watchdog's walk can see at once (larger tables are cut short; the
/// walk in azmutex itself has no limit).
pub(super) const WATCHDOG_TABLE: usize = 1 << 15;

/// How many descendants the watchdog remembers for the case that azmutex dies.
pub(super) const WATCHDOG_KNOWN: usize = 1 << 12;

/// "No deadline" in the shared kill deadline.
pub(super) const NO_DEADLINE: i64 = i64::MAX;

/// The kill deadline shared with the watchdog: `CLOCK_BOOTTIME` nanoseconds (a clock that keeps
/// counting while the machine sleeps, as the lease does on the server), in a page mapped shared
/// before fork. One per process, made on first use and never unmapped.
pub(super) fn shared_deadline() -> &'static AtomicI64 {
    static SHARED: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    static FALLBACK: AtomicI64 = AtomicI64::new(NO_DEADLINE);
    let addr = *SHARED.get_or_init(|| {
        // SAFETY: an anonymous shared mapping of one page; checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return 0;
        }
        // SAFETY: the page is fresh, aligned, writable and lives as long as the process.
        unsafe { (*(p as *const AtomicI64)).store(NO_DEADLINE, Ordering::SeqCst) };
        p as usize
    });
    if addr == 0 {
        // Without shared memory the watchdog cannot see the deadline: azmutex enforces it alone.
        return &FALLBACK;
    }
    // SAFETY: `addr` is the page mapped above, initialised, never unmapped.
    unsafe { &*(addr as *const AtomicI64) }
}

/// `CLOCK_BOOTTIME` in nanoseconds. Async-signal-safe.
pub(super) fn boottime_ns() -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    #[cfg(target_os = "linux")]
    let clock = libc::CLOCK_BOOTTIME;
    #[cfg(not(target_os = "linux"))]
    let clock = libc::CLOCK_MONOTONIC;
    // SAFETY: clock_gettime writes into `ts`.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec.saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec)
}

/// The watchdog's loop (see [`Group::start_watchdog`]). Async-signal-safe calls only.
///
/// # Safety
/// Call only in a freshly forked child; `path` must be a NUL-terminated `/proc/<pid>/stat`.
pub(super) unsafe fn watchdog(
    parent: libc::pid_t,
    pgid: libc::pid_t,
    path: *const libc::c_char,
    kill_at: &AtomicI64,
    table: &mut [ProcEntry],
    known: &mut [libc::pid_t],
    cgroup: Option<&WatchdogPaths>,
) -> ! {
    libc::setpgid(0, 0);
    // Signals forwarded to the group are for the command; the watchdog stays until killed.
    for sig in [
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGTSTP,
        libc::SIGTTIN,
        libc::SIGTTOU,
        libc::SIGPIPE,
    ] {
        libc::signal(sig, libc::SIG_IGN);
    }
    // Hold no descriptor of azmutex's (a pipe held open would keep a reader waiting).
    for fd in 0..1024 {
        libc::close(fd);
    }
    let me = libc::getpid();
    let mut known_len = 0usize;
    let mut tick = 0u64;
    let mut buf = [0u8; 512];
    loop {
        if libc::getppid() != parent {
            // azmutex is gone: its children were reparented away, so the walk from it finds
            // nothing. Kill the group, what was last seen to descend from it, and (a few
            // rounds) whatever those started since.
            libc::kill(-pgid, libc::SIGKILL);
            if let Some(cg) = cgroup {
                // Everything in the cgroup, however it hopped, at once.
                cg.kill();
            }
            for _ in 0..5 {
                for &pid in &known[..known_len] {
                    libc::kill(pid, libc::SIGKILL);
                }
                let n = fill(table);
                for e in &table[..n] {
                    if e.pid != me && known[..known_len].contains(&e.ppid) && !known[..known_len].contains(&e.pid) {
                        libc::kill(e.pid, libc::SIGKILL);
                        if known_len < known.len() {
                            known[known_len] = e.pid;
                            known_len += 1;
                        }
                    }
                }
            }
            if let Some(cg) = cgroup {
                cg.remove();
            }
            libc::_exit(0);
        }
        let deadline = kill_at.load(Ordering::SeqCst);
        let now = boottime_ns();
        if now >= deadline {
            // Past the kill deadline: nothing of the command's may run, whatever azmutex does.
            libc::kill(-pgid, libc::SIGKILL);
            if let Some(cg) = cgroup {
                cg.kill();
            }
            // Those the children files show at once, then everything the walk of /proc finds.
            signal_subtree(table, parent, me, libc::SIGKILL);
            signal_descendants_in(table, parent, me, libc::SIGKILL);
        } else {
            let mut stopped = false;
            let fd = libc::open(path, libc::O_RDONLY);
            if fd >= 0 {
                let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                libc::close(fd);
                if n > 0 {
                    let text = &buf[..n as usize];
                    // `pid (comm) S ...`: the state follows the last ')'.
                    if let Some(close) = text.iter().rposition(|&b| b == b')') {
                        stopped = matches!(text.get(close + 2), Some(b'T') | Some(b't'));
                    }
                }
            }
            if stopped {
                libc::kill(-pgid, libc::SIGSTOP);
                signal_descendants_in(table, parent, me, libc::SIGSTOP);
            } else if tick % 5 == 0 {
                // Remember who descends from azmutex, for the case that it dies.
                // The children files of azmutex's descendants, not all of /proc, where the
                // kernel has them (a few reads instead of thousands on a busy host).
                let n = match fill_subtree(table, parent, me) {
                    Some(n) => n,
                    None => {
                        let n = fill(table);
                        mark_descendants(&mut table[..n], parent, me);
                        n
                    }
                };
                known_len = 0;
                for e in &table[..n] {
                    if e.mark && !e.zombie && known_len < known.len() {
                        known[known_len] = e.pid;
                        known_len += 1;
                    }
                }
            }
        }
        tick += 1;
        // Sleep 50 ms, or less when the deadline comes sooner.
        let left = deadline.saturating_sub(boottime_ns());
        let left = if left <= 0 {
            50_000_000
        } else {
            left.clamp(1_000_000, 50_000_000)
        };
        let pause = libc::timespec {
            tv_sec: 0,
            tv_nsec: left as libc::c_long,
        };
        libc::nanosleep(&pause, std::ptr::null_mut());
    }
}
