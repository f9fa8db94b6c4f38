//! Starting `run`'s command. Where the command gets a cgroup of its own, it is created inside
//! it (`clone3` with `CLONE_INTO_CGROUP`, Linux 5.7 and later) instead of moving itself there
//! before exec: a move makes the kernel wait for an RCU grace period (10–20 ms here, more than
//! half of a one-shot `azmutex run -- true`), a clone into the cgroup does not. Everywhere else,
//! or when the kernel refuses the clone (old kernels, seccomp filters that hide `clone3`), the
//! command is started by tokio and moves itself in (`process::own_group`'s pre-exec step).
//!
//! The directly started child does what `std::process::Command` does between fork and exec, and
//! only with async-signal-safe calls on memory prepared before the clone: default signal mask
//! and SIGPIPE, its own process group (the terminal's foreground if azmutex has it), SIGKILL
//! when azmutex dies, then `execve`; a failed exec reports its errno through a close-on-exec
//! pipe, as `std` does.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use tokio::signal::unix::{signal, Signal, SignalKind};

use super::cgroup::Cgroup;

/// The running command: started by tokio, or directly into its cgroup.
pub enum Child {
    /// Started by tokio (no cgroup, or the clone into it was refused).
    Tokio(tokio::process::Child),
    /// Started directly in its cgroup.
    Direct(Direct),
}

/// A command started with `clone3` into its cgroup, waited for on SIGCHLD.
pub struct Direct {
    pid: libc::pid_t,
    sigchld: Signal,
    status: Option<ExitStatus>,
}

impl Child {
    /// The command's process id (`None` once tokio has reaped it).
    pub fn id(&self) -> Option<u32> {
        match self {
            Child::Tokio(c) => c.id(),
            Child::Direct(d) => u32::try_from(d.pid).ok(),
        }
    }

    /// Waits for the command to exit and reaps it. Cancel-safe.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        match self {
            Child::Tokio(c) => c.wait().await,
            Child::Direct(d) => loop {
                if let Some(status) = d.status {
                    return Ok(status);
                }
                let mut raw = 0;
                // SAFETY: waitpid with WNOHANG on our own child.
                let rc = unsafe { libc::waitpid(d.pid, &mut raw, libc::WNOHANG) };
                if rc == d.pid {
                    d.status = Some(ExitStatus::from_raw(raw));
                    continue;
                }
                if rc < 0 {
                    return Err(io::Error::last_os_error());
                }
                // Registered before the clone, so no exit goes unnoticed.
                d.sigchld.recv().await;
            },
        }
    }
}

/// What `spawn` starts.
pub struct Spec<'a> {
    /// The program (searched on `PATH` if it has no `/`) and its arguments.
    pub command: &'a [OsString],
    /// Variables added to (or replacing in) azmutex's own environment.
    pub env: &'a [(&'a str, String)],
    /// The terminal whose foreground the command gets, if azmutex has it.
    pub terminal: Option<RawFd>,
}

/// Starts the command in its own process group: directly into `cgroup` when there is one and
/// the kernel allows it, else through tokio (with the move into `cgroup` before exec).
pub fn spawn(spec: &Spec<'_>, cgroup: Option<&Cgroup>) -> io::Result<Child> {
    // `AZMUTEX_NO_CLONE3` (for tests) takes the path a kernel that refuses `clone3` takes.
    let direct = std::env::var_os("AZMUTEX_NO_CLONE3").is_none();
    if let Some(cg) = cgroup.filter(|_| direct) {
        match spawn_into(spec, cg) {
            Ok(direct) => return Ok(Child::Direct(direct)),
            Err(Refused(e)) => {
                tracing::debug!(error = %e, "clone3 into the cgroup refused; moving the command in instead");
            }
        }
    }
    let mut command = tokio::process::Command::new(&spec.command[0]);
    command.args(&spec.command[1..]);
    for (k, v) in spec.env {
        command.env(k, v);
    }
    super::process::own_group(&mut command, spec.terminal, cgroup);
    command.spawn().map(Child::Tokio)
}

/// The direct start failed in a way the tokio path may not (the clone itself was refused).
struct Refused(io::Error);

/// `clone_args` of `clone3(2)`, up to `cgroup` (version 2 of the structure, 88 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

fn spawn_into(spec: &Spec<'_>, cg: &Cgroup) -> Result<Direct, Refused> {
    // Everything the child touches is made here, before the clone.
    let fail = |e: io::Error| Refused(e);
    let program = find_program(&spec.command[0]).map_err(fail)?;
    let argv_owned: Vec<CString> = spec
        .command
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|e| fail(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let mut argv: Vec<*const libc::c_char> = argv_owned.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let envp_owned = environment(spec.env).map_err(fail)?;
    let mut envp: Vec<*const libc::c_char> = envp_owned.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let dir = cg.open_dir().map_err(fail)?;
    let (report_read, report_write) = pipe().map_err(fail)?;
    let sigchld = signal(SignalKind::child()).map_err(fail)?;
    let terminal = spec.terminal;
    // SAFETY: getpid and prctl are plain syscalls. Orphaned grandchildren are reparented to
    // azmutex, so that `Group::alive` sees (and reaps) them (as in `own_group`).
    let parent = unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        libc::getpid()
    };
    if terminal.is_some() {
        // As in `own_group`: a background process touching the terminal would be stopped.
        // SAFETY: setting a signal disposition to "ignore".
        unsafe { libc::signal(libc::SIGTTOU, libc::SIG_IGN) };
    }
    let mut args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: dir.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 with fork semantics (no CLONE_VM): the child gets a copy of this address
    // space with only this thread, and runs `child_exec` alone, which makes only
    // async-signal-safe calls on the buffers prepared above, then execs or exits.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid == 0 {
        // SAFETY: see above; never returns.
        unsafe { child_exec(&program, &argv, &envp, terminal, parent, report_write.as_raw_fd()) }
    }
    if pid < 0 {
        return Err(Refused(io::Error::last_os_error()));
    }
    let pid = pid as libc::pid_t;
    drop(report_write);
    drop(dir);
    // The classic race-free idiom: the parent sets the group too.
    // SAFETY: setpgid/tcsetpgrp on our own child.
    unsafe {
        libc::setpgid(pid, pid);
        if let Some(fd) = terminal {
            libc::tcsetpgrp(fd, pid);
        }
    }
    // The child execs (the pipe closes, nothing read) or reports why it could not.
    let mut errno = [0u8; 4];
    if read_full(&report_read, &mut errno) == 4 {
        // SAFETY: reaping our own child, which has exited (it wrote its errno, then _exit).
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        // The command itself is the problem: the tokio path then gives the same error.
        return Err(Refused(io::Error::from_raw_os_error(i32::from_ne_bytes(errno))));
    }
    Ok(Direct {
        pid,
        sigchld,
        status: None,
    })
}

/// In the cloned child: set up and exec, or report the errno and exit 127.
///
/// # Safety
/// Only in the child of a fork-like clone; every pointer must be valid (prepared before it).
unsafe fn child_exec(
    program: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    terminal: Option<RawFd>,
    parent: libc::pid_t,
    report: RawFd,
) -> ! {
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    // Rust ignores SIGPIPE in its own process; a command expects the default (as std restores).
    libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    if libc::setpgid(0, 0) != 0 {
        report_and_exit(report);
    }
    if let Some(fd) = terminal {
        // SIGTTOU is ignored (inherited), so this works from the background.
        libc::tcsetpgrp(fd, libc::getpid());
        libc::signal(libc::SIGTTOU, libc::SIG_DFL);
    }
    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
    if libc::getppid() != parent {
        // azmutex died before the line above: do not run unlocked.
        libc::_exit(125);
    }
    libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr());
    report_and_exit(report)
}

/// Writes errno to the report pipe and exits 127. Async-signal-safe.
unsafe fn report_and_exit(report: RawFd) -> ! {
    let errno = *libc::__errno_location();
    let bytes = errno.to_ne_bytes();
    libc::write(report, bytes.as_ptr().cast(), bytes.len());
    libc::_exit(127)
}

/// The program's path: as given if it has a `/`, else the first executable file of that name
/// on `PATH` (as `execvp` searches). `NotFound` otherwise, as tokio's spawn says.
fn find_program(name: &OsStr) -> io::Result<CString> {
    let as_c = |p: &OsStr| CString::new(p.as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
    if name.as_bytes().contains(&b'/') {
        return as_c(name);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
    for dir in std::env::split_paths(&path) {
        let candidate = if dir.as_os_str().is_empty() {
            std::path::PathBuf::from(name)
        } else {
            dir.join(name)
        };
        let c = as_c(candidate.as_os_str())?;
        // SAFETY: access(2) on a NUL-terminated path.
        let executable = unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0;
        if executable && candidate.is_file() {
            return Ok(c);
        }
    }
    Err(io::Error::from(io::ErrorKind::NotFound))
}

/// azmutex's environment with `extra` added or replacing, as `NAME=value` strings.
fn environment(extra: &[(&str, String)]) -> io::Result<Vec<CString>> {
    let mut out = Vec::new();
    for (k, v) in std::env::vars_os() {
        if extra.iter().any(|(name, _)| OsStr::new(name) == k) {
            continue;
        }
        let mut entry = k.into_vec();
        entry.push(b'=');
        entry.extend(v.as_bytes());
        out.push(CString::new(entry).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?);
    }
    for (k, v) in extra {
        out.push(CString::new(format!("{k}={v}")).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?);
    }
    Ok(out)
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both were just opened and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Reads until `buf` is full or end of file; the number of bytes read.
fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        // SAFETY: reading into the rest of `buf` from a descriptor we own.
        let r = unsafe { libc::read(fd.as_raw_fd(), buf[n..].as_mut_ptr().cast(), buf.len() - n) };
        if r > 0 {
            n += r as usize;
        } else if r == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
    n
}
