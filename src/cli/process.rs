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
use std::time::{Duration, Instant};

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

/// The command's process group, and every other descendant of azmutex.
pub struct Group {
    pgid: libc::pid_t,
    terminal: Option<RawFd>,
    watchdog: Option<libc::pid_t>,
    /// The kill deadline shared with the watchdog (see [`Group::set_kill_deadline`]).
    kill_at: &'static AtomicI64,
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
            kill_at: shared_deadline(),
        }
    }

    /// Sends `sig` to every process of the group and to every other descendant of azmutex
    /// (those that left the group), except the watchdog.
    pub fn signal(&self, sig: libc::c_int) {
        if self.pgid > 0 {
            // SAFETY: kill(2) on our command's process group (negative pid).
            unsafe { libc::kill(-self.pgid, sig) };
        }
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
        group_alive || others
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
        // SAFETY: the child branch below only makes async-signal-safe syscalls and never returns.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: see above; `path`, `table` and `known` were allocated before fork and are
            // only read and written in place.
            unsafe { watchdog(parent, pgid, path.as_ptr(), kill_at, &mut table, &mut known) }
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

/// How many processes the watchdog's walk can see at once (larger tables are cut short; the
/// walk in azmutex itself has no limit).
const WATCHDOG_TABLE: usize = 1 << 15;

/// How many descendants the watchdog remembers for the case that azmutex dies.
const WATCHDOG_KNOWN: usize = 1 << 12;

/// "No deadline" in the shared kill deadline.
const NO_DEADLINE: i64 = i64::MAX;

/// The kill deadline shared with the watchdog: `CLOCK_BOOTTIME` nanoseconds (a clock that keeps
/// counting while the machine sleeps, as the lease does on the server), in a page mapped shared
/// before fork. One per process, made on first use and never unmapped.
fn shared_deadline() -> &'static AtomicI64 {
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
fn boottime_ns() -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    #[cfg(target_os = "linux")]
    let clock = libc::CLOCK_BOOTTIME;
    #[cfg(not(target_os = "linux"))]
    let clock = libc::CLOCK_MONOTONIC;
    // SAFETY: clock_gettime writes into `ts`.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec.saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec)
}

fn own_pid() -> libc::pid_t {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

/// One process as `/proc/<pid>/stat` shows it.
#[derive(Clone, Copy, Default, Debug)]
pub struct ProcEntry {
    /// Its pid.
    pub pid: libc::pid_t,
    /// Its parent's pid.
    pub ppid: libc::pid_t,
    /// Whether it has exited and waits to be reaped.
    pub zombie: bool,
    /// Whether the walk found it to descend from the root.
    mark: bool,
}

/// Calls `each` for every process listed in `/proc`. Async-signal-safe (raw syscalls, stack
/// buffers, no allocation), so that the watchdog can use it after fork.
fn scan_proc(mut each: impl FnMut(ProcEntry)) {
    #[cfg(target_os = "linux")]
    // SAFETY: open/getdents64/read/close on buffers owned here; the records are parsed within
    // the byte count the kernel returned.
    unsafe {
        let dir = libc::open(c"/proc".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC);
        if dir < 0 {
            return;
        }
        let mut buf = [0u8; 8192];
        loop {
            let got = libc::syscall(libc::SYS_getdents64, dir, buf.as_mut_ptr(), buf.len());
            if got <= 0 {
                break;
            }
            let got = got as usize;
            let mut off = 0;
            // struct linux_dirent64 { u64 ino; i64 off; u16 reclen; u8 type; char name[]; }
            while off + 19 < got {
                let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
                if reclen == 0 || off + reclen > got {
                    break;
                }
                if let Some(pid) = parse_pid(&buf[off + 19..off + reclen]) {
                    if let Some(entry) = read_stat(pid) {
                        each(entry);
                    }
                }
                off += reclen;
            }
        }
        libc::close(dir);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = &mut each;
}

/// A NUL-terminated all-digit name as a pid.
fn parse_pid(name: &[u8]) -> Option<libc::pid_t> {
    let mut pid: libc::pid_t = 0;
    let mut digits = 0;
    for &b in name {
        match b {
            0 => break,
            b'0'..=b'9' => {
                pid = pid.checked_mul(10)?.checked_add((b - b'0') as libc::pid_t)?;
                digits += 1;
            }
            _ => return None,
        }
    }
    (digits > 0 && pid > 0).then_some(pid)
}

/// Reads `/proc/<pid>/stat`: parent and state. Async-signal-safe.
fn read_stat(pid: libc::pid_t) -> Option<ProcEntry> {
    let mut path = [0u8; 32];
    let mut len = 0;
    for &b in b"/proc/" {
        path[len] = b;
        len += 1;
    }
    let mut digits = [0u8; 12];
    let mut d = 0;
    let mut n = pid;
    while n > 0 && d < digits.len() {
        digits[d] = b'0' + (n % 10) as u8;
        n /= 10;
        d += 1;
    }
    while d > 0 {
        d -= 1;
        path[len] = digits[d];
        len += 1;
    }
    for &b in b"/stat\0" {
        path[len] = b;
        len += 1;
    }
    let mut buf = [0u8; 512];
    // SAFETY: `path` is NUL-terminated; read into a buffer we own.
    let n = unsafe {
        let fd = libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return None;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    if n <= 0 {
        return None;
    }
    let text = &buf[..n as usize];
    // `pid (comm) S ppid ...`: the state follows the last ')'.
    let close = text.iter().rposition(|&b| b == b')')?;
    let state = *text.get(close + 2)?;
    let mut ppid: libc::pid_t = 0;
    let mut seen = false;
    for &b in text.get(close + 4..)? {
        match b {
            b'0'..=b'9' => {
                ppid = ppid.checked_mul(10)?.checked_add((b - b'0') as libc::pid_t)?;
                seen = true;
            }
            _ => break,
        }
    }
    seen.then_some(ProcEntry {
        pid,
        ppid,
        zombie: state == b'Z' || state == b'X',
        mark: false,
    })
}

/// Marks in `table` every process that descends from `root`, leaving out `exclude` and what
/// descends from it. Allocation-free. Returns how many are marked.
fn mark_descendants(table: &mut [ProcEntry], root: libc::pid_t, exclude: libc::pid_t) -> usize {
    let mut marked = 0;
    for e in table.iter_mut() {
        e.mark = e.ppid == root && e.pid != exclude && e.pid != root;
        marked += usize::from(e.mark);
    }
    // Each pass marks one more generation; stops when a pass marks nothing.
    loop {
        let mut more = 0;
        for i in 0..table.len() {
            if table[i].mark || table[i].pid == exclude || table[i].pid == root {
                continue;
            }
            let parent = table[i].ppid;
            if table.iter().any(|p| p.mark && p.pid == parent) {
                table[i].mark = true;
                more += 1;
            }
        }
        if more == 0 {
            return marked;
        }
        marked += more;
    }
}

/// Every living or zombie descendant of `root` but `exclude` (and what descends from it).
pub fn descendants(
    table: &mut Vec<ProcEntry>,
    root: libc::pid_t,
    exclude: libc::pid_t,
) -> impl Iterator<Item = &ProcEntry> {
    table.clear();
    scan_proc(|e| table.push(e));
    mark_descendants(table, root, exclude);
    table.iter().filter(|e| e.mark)
}

/// Sends `sig` to every living descendant of `root` but `exclude`; returns how many it signalled.
fn signal_descendants(table: &mut Vec<ProcEntry>, root: libc::pid_t, exclude: libc::pid_t, sig: libc::c_int) -> usize {
    let mut n = 0;
    for e in descendants(table, root, exclude) {
        if !e.zombie {
            // SAFETY: kill(2) on a descendant of ours.
            unsafe { libc::kill(e.pid, sig) };
            n += 1;
        }
    }
    n
}

/// [`signal_descendants`] on a fixed table (the watchdog's: no allocation after fork).
fn signal_descendants_in(table: &mut [ProcEntry], root: libc::pid_t, exclude: libc::pid_t, sig: libc::c_int) {
    let n = fill(table);
    mark_descendants(&mut table[..n], root, exclude);
    for e in &table[..n] {
        if e.mark && !e.zombie {
            // SAFETY: kill(2) on a descendant of azmutex.
            unsafe { libc::kill(e.pid, sig) };
        }
    }
}

/// Fills `table` from `/proc` (as much as fits); returns how many entries it holds.
fn fill(table: &mut [ProcEntry]) -> usize {
    let mut n = 0;
    scan_proc(|e| {
        if n < table.len() {
            table[n] = e;
            n += 1;
        }
    });
    n
}

/// The watchdog's loop (see [`Group::start_watchdog`]). Async-signal-safe calls only.
///
/// # Safety
/// Call only in a freshly forked child; `path` must be a NUL-terminated `/proc/<pid>/stat`.
unsafe fn watchdog(
    parent: libc::pid_t,
    pgid: libc::pid_t,
    path: *const libc::c_char,
    kill_at: &AtomicI64,
    table: &mut [ProcEntry],
    known: &mut [libc::pid_t],
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
            libc::_exit(0);
        }
        let deadline = kill_at.load(Ordering::SeqCst);
        let now = boottime_ns();
        if now >= deadline {
            // Past the kill deadline: nothing of the command's may run, whatever azmutex does.
            libc::kill(-pgid, libc::SIGKILL);
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
                let n = fill(table);
                mark_descendants(&mut table[..n], parent, me);
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
