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
        Self { pgid, terminal }
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
