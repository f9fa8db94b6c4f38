//! The command's processes: `azmutex run` puts the command in a group of its own, hands it the
//! terminal when azmutex has one, and makes the command die with azmutex (Linux:
//! `PR_SET_PDEATHSIG`). azmutex is a subreaper (Linux: `PR_SET_CHILD_SUBREAPER`), so every
//! descendant stays one even after it leaves the group (`setsid`, `setpgid`, a double fork):
//! signals go to the group *and* to every descendant found by a walk of `/proc`
//! ([`descendants`]).
//!
//! A watchdog process (see [`Group::start_watchdog`]) enforces the kill deadline on its own: it
//! kills every descendant when the deadline passes, whatever azmutex is doing (blocked on a full
//! stderr, starved, stopped, or dead).
//!
//! Unix only; the descendant walk and the watchdog's deadline are Linux only. Out of reach:
//! processes started on the command's behalf by someone else (a service manager, `at`, a
//! container engine, a remote shell), which were never azmutex's descendants.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI64, Ordering};

use super::cgroup::Cgroup;
use super::descendants::{descendants, own_children, signal_descendants, signal_subtree, ProcEntry};
use super::watchdog::{boottime_ns, shared_deadline, watchdog, NO_DEADLINE, WATCHDOG_KNOWN, WATCHDOG_TABLE};
use std::time::{Duration, Instant};

use super::spawn::Child;

/// The terminal on which azmutex runs in the foreground, if any: a standard stream that is a
/// terminal whose foreground process group is ours.
pub fn foreground_terminal() -> Option<RawFd> {
    (0..3).find(|&fd| {
        // SAFETY: isatty, tcgetpgrp and getpgrp only read process and descriptor state.
        unsafe { libc::isatty(fd) == 1 && libc::tcgetpgrp(fd) == libc::getpgrp() }
    })
}

/// The command's process group, and every other descendant of azmutex.
pub struct Group {
    pgid: libc::pid_t,
    terminal: Option<RawFd>,
    watchdog: Option<libc::pid_t>,
    /// The kill deadline shared with the watchdog (see [`Group::set_kill_deadline`]).
    kill_at: &'static AtomicI64,
    /// The command's own cgroup, when the system allows one.
    cgroup: Option<Cgroup>,
}

impl Group {
    /// The group led by `child` (set up by `spawn::own_group` or the direct start).
    pub fn new(child: &Child, terminal: Option<RawFd>, cgroup: Option<Cgroup>) -> Self {
        let pgid = child.id().and_then(|id| libc::pid_t::try_from(id).ok()).unwrap_or(0);
        if pgid > 0 {
            // SAFETY: plain syscalls on our own child. Both sides set the group (the classic
            // race-free idiom); the child has exec'd already, so EACCES here is expected.
            unsafe {
                libc::setpgid(pgid, pgid);
                if let Some(fd) = terminal {
                    libc::tcsetpgrp(fd, pgid);
                }
            }
        }
        // The command moved itself into the cgroup before exec; if it could not, the /proc
        // walk alone finds its descendants.
        let cgroup = cgroup.and_then(|cg| {
            if pgid > 0 && cg.contains(pgid) {
                tracing::debug!("the command runs in a cgroup of its own");
                Some(cg)
            } else {
                cg.remove();
                None
            }
        });
        Self {
            pgid,
            terminal,
            watchdog: None,
            kill_at: shared_deadline(),
            cgroup,
        }
    }

    /// Removes the command's cgroup (at the end of `run`, once everything in it is dead).
    pub fn remove_cgroup(&mut self) {
        if let Some(cg) = self.cgroup.take() {
            cg.remove();
        }
    }

    /// Sends `sig` to every process of the group and to every other descendant of azmutex
    /// (those that left the group), except the watchdog.
    pub fn signal(&self, sig: libc::c_int) {
        if self.pgid > 0 {
            // SAFETY: kill(2) on our command's process group (negative pid).
            unsafe { libc::kill(-self.pgid, sig) };
        }
        if let Some(cg) = &self.cgroup {
            if sig == libc::SIGKILL {
                // All at once: no fork can race it.
                cg.kill();
            }
        }
        // Those that left the group: first the ones our descendants' `children` files show (a
        // few reads), then every one a walk of all of `/proc` finds (the rest, if any; a large
        // part of a second on a host with tens of thousands of processes).
        let mut subtree = vec![ProcEntry::default(); WATCHDOG_KNOWN];
        signal_subtree(&mut subtree, own_pid(), self.exclude(), sig);
        let mut table = Vec::new();
        signal_descendants(&mut table, own_pid(), self.exclude(), sig);
    }

    /// Whether any process of the group, or any other descendant of azmutex but the watchdog,
    /// is left (zombies do not count). Reaps those that were reparented to us. Call only after
    /// the command itself was waited for.
    pub fn alive(&self) -> bool {
        if self.pgid <= 0 {
            return false;
        }
        // SAFETY: waitpid with WNOHANG on our own process group and on our own children; kill
        // with signal 0 (a probe).
        let group_alive = unsafe {
            let mut status = 0;
            while libc::waitpid(-self.pgid, &mut status, libc::WNOHANG) > 0 {}
            libc::kill(-self.pgid, 0) == 0
        };
        let populated = self.cgroup.as_ref().is_some_and(Cgroup::populated);
        // The common end: nothing in the group or the cgroup, and no child of ours but the
        // watchdog. azmutex is a subreaper and the command was waited for, so every descendant
        // left has an ancestor among our children: none means nothing is left, and the walk of
        // all of /proc (thousands of files on a busy host) is not needed.
        if !group_alive && !populated && own_children(self.exclude()).is_some_and(|c| c.is_empty()) {
            return false;
        }
        let mut table = Vec::new();
        let mut others = false;
        for e in descendants(&mut table, own_pid(), self.exclude()) {
            if e.ppid == own_pid() && e.zombie {
                // An orphan reparented to us that has exited: reap it.
                // SAFETY: waitpid on one of our own children, WNOHANG.
                unsafe { libc::waitpid(e.pid, std::ptr::null_mut(), libc::WNOHANG) };
            } else if !e.zombie {
                others = true;
            }
        }
        group_alive || others || populated
    }

    /// Reaps the orphans reparented to azmutex (the subreaper) that have exited, leaving the
    /// command itself (tokio waits for it) and the watchdog alone: a command that starts many
    /// short-lived background processes must not fill the process table with zombies while it
    /// runs.
    pub fn reap_orphans(&self) {
        let me = own_pid();
        let reap = |e: &ProcEntry| {
            if e.ppid == me && e.zombie && e.pid != self.pgid {
                // SAFETY: waitpid with WNOHANG on one of our own exited children.
                unsafe { libc::waitpid(e.pid, std::ptr::null_mut(), libc::WNOHANG) };
            }
        };
        // Only our own children can be reaped: their list is enough where the kernel has it.
        if let Some(children) = own_children(self.exclude()) {
            children.iter().for_each(reap);
            return;
        }
        let mut table = Vec::new();
        descendants(&mut table, me, self.exclude()).for_each(reap);
    }

    /// Waits until the group and every other descendant are gone, at most `limit`.
    pub async fn wait_gone(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.alive() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL to the group and every descendant, again until none is left (a process may fork
    /// between a walk and its kill), then waits (briefly) until they are reaped.
    pub async fn kill_and_reap(&self) {
        for _ in 0..50 {
            if !self.alive() {
                return;
            }
            self.signal(libc::SIGKILL);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.wait_gone(Duration::from_secs(2)).await;
    }

    /// Processes the descendant walk leaves alone: the watchdog.
    fn exclude(&self) -> libc::pid_t {
        self.watchdog.unwrap_or(0)
    }

    /// Tells the watchdog when to kill every descendant if azmutex has not made them stop by
    /// then (`None`: no deadline). Cheap: one atomic store in memory shared with the watchdog.
    pub fn set_kill_deadline(&self, at: Option<Instant>) {
        let value = match at {
            None => NO_DEADLINE,
            Some(at) => {
                let now = Instant::now();
                let ahead = at.saturating_duration_since(now);
                let ahead = i64::try_from(ahead.as_nanos()).unwrap_or(NO_DEADLINE);
                boottime_ns().saturating_add(ahead)
            }
        };
        self.kill_at.store(value, Ordering::SeqCst);
    }

    /// Gives the terminal back to azmutex's own group.
    pub fn restore_terminal(&self) {
        if let Some(fd) = self.terminal {
            // SAFETY: tcsetpgrp on our terminal; SIGTTOU is ignored (see `spawn::own_group`).
            unsafe { libc::tcsetpgrp(fd, libc::getpgrp()) };
        }
    }
}

impl Group {
    /// The signal that stopped the command (the group's leader), if it is stopped: SIGTSTP
    /// (Ctrl-Z), SIGTTIN/SIGTTOU (terminal job control) or SIGSTOP. Consumes the stop report;
    /// the command stays waitable for its exit.
    pub fn leader_stopped(&self) -> Option<libc::c_int> {
        if self.pgid <= 0 {
            return None;
        }
        // SAFETY: waitid on our own child with WSTOPPED | WNOHANG (no exit is consumed: WEXITED
        // is not asked for); `info` is plain data, zeroed as the man page asks.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let rc = libc::waitid(
                libc::P_PID,
                self.pgid as libc::id_t,
                &mut info,
                libc::WSTOPPED | libc::WNOHANG,
            );
            (rc == 0 && info.si_pid() != 0 && info.si_code == libc::CLD_STOPPED).then(|| info.si_status())
        }
    }

    /// The command stopped: stop azmutex's own job with it, the way a shell expects a job to
    /// stop. Returns once azmutex is continued (`fg`/`bg`); the caller then decides whether the
    /// command may go on ([`Group::resume`]) or must die (the lease ran out meanwhile).
    pub fn suspend_with_leader(&self) {
        // SAFETY: tcsetpgrp/getpgrp/kill on our own terminal, group and pid.
        unsafe {
            match self.terminal {
                Some(fd) => {
                    libc::tcsetpgrp(fd, libc::getpgrp());
                    // Our group is the shell's job: stop all of it.
                    libc::kill(0, libc::SIGSTOP);
                }
                // No terminal, no job control: stop only ourselves (never the caller's group).
                None => {
                    libc::kill(libc::getpid(), libc::SIGSTOP);
                }
            }
        }
    }

    /// Lets the group go on after a stop: gives it the terminal again (if azmutex has the
    /// foreground) and sends SIGCONT.
    pub fn resume(&self) {
        if let Some(fd) = self.terminal {
            // SAFETY: tcgetpgrp/tcsetpgrp on our own terminal.
            unsafe {
                if libc::tcgetpgrp(fd) == libc::getpgrp() {
                    libc::tcsetpgrp(fd, self.pgid);
                }
            }
        }
        self.signal(libc::SIGCONT);
    }

    /// Starts the watchdog: a copy of azmutex forked (without exec) into a process group of its
    /// own. Every 50 ms it looks at azmutex and the clock:
    /// - the kill deadline ([`Group::set_kill_deadline`]) has passed → it SIGKILLs the group and
    ///   every descendant of azmutex, again at every tick: nothing azmutex does (a write blocked
    ///   on a full stderr, a starved runtime) can hold the kill back;
    /// - azmutex is stopped (SIGSTOP, a debugger) → it stops the group and every descendant, so
    ///   that nothing runs on while its supervisor cannot renew or stop it (azmutex continues
    ///   them, or kills them if the lease ran out meanwhile);
    /// - azmutex is gone (even by SIGKILL, even while stopped) → it kills the group and every
    ///   descendant it last saw (and what those started since), and exits.
    ///
    /// Being outside that group, it is never stopped by its own signal; the descendant walks
    /// leave it out.
    pub fn start_watchdog(&mut self) {
        if self.pgid <= 0 {
            return;
        }
        let parent = own_pid();
        // Everything the child needs is made before fork: after it, only async-signal-safe
        // calls (no allocation, no locks), as fork in a threaded process requires.
        let Ok(path) = std::ffi::CString::new(format!("/proc/{parent}/stat")) else {
            return;
        };
        let mut table = vec![ProcEntry::default(); WATCHDOG_TABLE];
        let mut known = vec![0 as libc::pid_t; WATCHDOG_KNOWN];
        let pgid = self.pgid;
        let kill_at = self.kill_at;
        let cgroup = self.cgroup.as_ref().map(Cgroup::watchdog_paths);
        // SAFETY: the child branch below only makes async-signal-safe syscalls and never returns.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: see above; `path`, `table`, `known` and the cgroup paths were allocated
            // before fork and are only read and written in place.
            unsafe {
                watchdog(
                    parent,
                    pgid,
                    path.as_ptr(),
                    kill_at,
                    &mut table,
                    &mut known,
                    cgroup.as_ref(),
                )
            }
        }
        if pid > 0 {
            self.watchdog = Some(pid);
        }
    }

    /// Stops the watchdog (before checking whether the command left processes behind).
    pub fn stop_watchdog(&mut self) {
        if let Some(pid) = self.watchdog.take() {
            // SAFETY: killing and reaping our own forked child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                let mut status = 0;
                libc::waitpid(pid, &mut status, 0);
            }
        }
    }
}

fn own_pid() -> libc::pid_t {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}
