//! The command's process group: `azmutex run` puts the command in a group of its own, signals
//! the whole group (so grandchildren stop too), hands it the terminal when azmutex has one, and
//! makes the command die with azmutex (Linux: `PR_SET_PDEATHSIG`).
//!
//! Unix only. Processes that leave the group on purpose (`setsid`, daemons) are out of reach.

use std::os::fd::RawFd;
use std::time::Duration;

use tokio::process::{Child, Command};

/// The terminal on which azmutex runs in the foreground, if any: a standard stream that is a
/// terminal whose foreground process group is ours.
pub fn foreground_terminal() -> Option<RawFd> {
    (0..3).find(|&fd| {
        // SAFETY: isatty, tcgetpgrp and getpgrp only read process and descriptor state.
        unsafe { libc::isatty(fd) == 1 && libc::tcgetpgrp(fd) == libc::getpgrp() }
    })
}

/// Sets `command` up to start in a new process group, in the foreground of `terminal` if
/// given, and to be killed when azmutex dies.
pub fn own_group(command: &mut Command, terminal: Option<RawFd>) {
    // SAFETY: getpid/prctl/signal are plain syscalls.
    let parent = unsafe { libc::getpid() };
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with an integer argument. Orphaned grandchildren are reparented to us, so
    // that `Group::alive` sees (and reaps) them.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    if terminal.is_some() {
        // A background process that touches the terminal (tcsetpgrp, or writes with TOSTOP)
        // would be stopped by SIGTTOU once the command has the foreground.
        // SAFETY: setting a signal disposition to "ignore".
        unsafe { libc::signal(libc::SIGTTOU, libc::SIG_IGN) };
    }
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe syscalls.
    unsafe {
        command.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(fd) = terminal {
                // SIGTTOU is ignored (inherited), so this works from the background.
                libc::tcsetpgrp(fd, libc::getpid());
                libc::signal(libc::SIGTTOU, libc::SIG_DFL);
            }
            #[cfg(target_os = "linux")]
            {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                if libc::getppid() != parent {
                    // azmutex died before the line above: do not run unlocked.
                    libc::_exit(125);
                }
            }
            #[cfg(not(target_os = "linux"))]
            let _ = parent;
            Ok(())
        });
    }
}

/// The command's process group.
pub struct Group {
    pgid: libc::pid_t,
    terminal: Option<RawFd>,
    watchdog: Option<libc::pid_t>,
}

impl Group {
    /// The group led by `child` (set up by [`own_group`]).
    pub fn new(child: &Child, terminal: Option<RawFd>) -> Self {
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
        Self {
            pgid,
            terminal,
            watchdog: None,
        }
    }

    /// Sends `sig` to every process of the group.
    pub fn signal(&self, sig: libc::c_int) {
        if self.pgid > 0 {
            // SAFETY: kill(2) on our command's process group (negative pid).
            unsafe { libc::kill(-self.pgid, sig) };
        }
    }

    /// Whether any process of the group is left. Reaps those that were reparented to us.
    /// Call only after the command itself was waited for.
    pub fn alive(&self) -> bool {
        if self.pgid <= 0 {
            return false;
        }
        // SAFETY: waitpid on our own process group with WNOHANG, and kill with signal 0 (a probe).
        unsafe {
            let mut status = 0;
            while libc::waitpid(-self.pgid, &mut status, libc::WNOHANG) > 0 {}
            libc::kill(-self.pgid, 0) == 0
        }
    }

    /// Waits until the group is empty, at most `limit`.
    pub async fn wait_gone(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.alive() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL to the group, then waits (briefly) until it is gone.
    pub async fn kill_and_reap(&self) {
        if self.alive() {
            self.signal(libc::SIGKILL);
            self.wait_gone(Duration::from_secs(2)).await;
        }
    }

    /// Gives the terminal back to azmutex's own group.
    pub fn restore_terminal(&self) {
        if let Some(fd) = self.terminal {
            // SAFETY: tcsetpgrp on our terminal; SIGTTOU is ignored (see `own_group`).
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
    /// own. Every 50 ms it looks at azmutex: stopped (SIGSTOP, a debugger) → it stops the
    /// command's group, so that the command never runs on while its supervisor cannot renew or
    /// stop it (azmutex continues the group, or kills it if the lease ran out meanwhile); gone
    /// (even by SIGKILL, even while stopped) → it kills the command's group and exits. Being
    /// outside that group, it is never stopped by its own signal and never counted as a
    /// process the command left behind.
    pub fn start_watchdog(&mut self) {
        if self.pgid <= 0 {
            return;
        }
        // SAFETY: getpid is a plain syscall.
        let parent = unsafe { libc::getpid() };
        // Everything the child needs is made before fork: after it, only async-signal-safe
        // calls (no allocation, no locks), as fork in a threaded process requires.
        let Ok(path) = std::ffi::CString::new(format!("/proc/{parent}/stat")) else {
            return;
        };
        let pgid = self.pgid;
        // SAFETY: the child branch below only makes async-signal-safe syscalls and never returns.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: see above; `path` was allocated before fork and is only read.
            unsafe { watchdog(parent, pgid, path.as_ptr()) }
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

/// The watchdog's loop (see [`Group::start_watchdog`]). Async-signal-safe calls only.
///
/// # Safety
/// Call only in a freshly forked child; `path` must be a NUL-terminated `/proc/<pid>/stat`.
unsafe fn watchdog(parent: libc::pid_t, pgid: libc::pid_t, path: *const libc::c_char) -> ! {
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
    let pause = libc::timespec {
        tv_sec: 0,
        tv_nsec: 50_000_000,
    };
    let mut buf = [0u8; 512];
    loop {
        if libc::getppid() != parent {
            libc::kill(-pgid, libc::SIGKILL);
            libc::_exit(0);
        }
        let fd = libc::open(path, libc::O_RDONLY);
        if fd >= 0 {
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            libc::close(fd);
            if n > 0 {
                let text = &buf[..n as usize];
                // `pid (comm) S ...`: the state follows the last ')'.
                if let Some(close) = text.iter().rposition(|&b| b == b')') {
                    if matches!(text.get(close + 2), Some(b'T') | Some(b't')) {
                        libc::kill(-pgid, libc::SIGSTOP);
                    }
                }
            }
        }
        libc::nanosleep(&pause, std::ptr::null_mut());
    }
}
