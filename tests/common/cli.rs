//! Helpers for the tests that run the built `azmutex` binary (included with `#[path]` by
//! those tests only: the binary exists only with the `cli` feature).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use azmutex::{LeaseDuration, LeaseState};

use crate::common;

const BUILT: &str = env!("CARGO_BIN_EXE_azmutex");

/// The binary under test: this build's, or `AZMUTEX_TEST_BIN` (e.g. an older build, to check
/// that these tests catch what they are about).
pub fn bin() -> String {
    std::env::var("AZMUTEX_TEST_BIN").unwrap_or_else(|_| BUILT.to_string())
}

pub fn connection_via(addr: std::net::SocketAddr) -> String {
    format!(
        "AccountName=devstoreaccount1;AccountKey={};BlobEndpoint=http://{addr}/devstoreaccount1",
        common::DEV_KEY
    )
}

/// `azmutex --container <container>` talking to `connection`.
pub fn azmutex_with(container: &str, connection: &str) -> Command {
    let mut c = Command::new(bin());
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AZURE_STORAGE_CONNECTION_STRING", connection)
        .args(["--container", container]);
    // `AZMUTEX_NO_CGROUP=1 cargo test` runs every CLI test on the /proc-walk fallback.
    if let Some(v) = std::env::var_os("AZMUTEX_NO_CGROUP") {
        c.env("AZMUTEX_NO_CGROUP", v);
    }
    c
}

pub fn azmutex(container: &str) -> Command {
    azmutex_with(container, &common::service().connection_string)
}

pub fn output(mut c: Command) -> Output {
    c.stdin(Stdio::null()).output().unwrap()
}

pub fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(common::unique(name));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn state(container: &str) -> LeaseState {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(common::mutex(container).inspect("job")).unwrap().state
}

pub fn wait_until_leased(container: &str) {
    let started = Instant::now();
    while state(container) != LeaseState::Leased {
        assert!(started.elapsed() < Duration::from_secs(20), "lock never became leased");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Tries to acquire directly (no proxy) every 100 ms; returns the send time (ns since the
/// epoch) of the attempt that succeeded: the service cannot have granted it earlier.
pub fn acquire_as_soon_as_possible(container: &str, limit: Duration) -> u128 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let m = common::mutex(container);
    let started = Instant::now();
    loop {
        let sent = now_ns();
        match rt.block_on(m.acquire("job", LeaseDuration::seconds(15).unwrap())) {
            Ok(lease) => {
                rt.block_on(m.release(&lease)).unwrap();
                return sent;
            }
            Err(e) => assert!(matches!(e, azmutex::Error::Conflict { .. }), "{e}"),
        }
        assert!(started.elapsed() < limit, "never acquired");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A small runtime for blocking tests.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The latest timestamp (ns) among the `<who> <ns>` heartbeat lines of `file`.
pub fn last_beat(file: &std::path::Path) -> u128 {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' ')?.1.trim().parse::<u128>().ok())
        .max()
        .unwrap_or(0)
}

/// Kills the process whose pid `file` holds, if it still runs; returns whether it did.
pub fn kill_pid_in(file: &std::path::Path) -> bool {
    let pid: i32 = std::fs::read_to_string(file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    // SAFETY: probing and killing a process the test started.
    pid > 0 && unsafe { libc::kill(pid, 0) == 0 && libc::kill(pid, libc::SIGKILL) == 0 }
}

/// A process's state letter from /proc (`R`, `S`, `T`, …), `-` if it is gone.
pub fn proc_state(pid: i32) -> char {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, r)| r.trim().chars().next()))
        .unwrap_or('-')
}

/// A pipe whose buffer is full and that nobody reads: (read end, write end). The write end is
/// blocking again when returned, so a writer blocks as on a stalled log shipper.
pub fn full_pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills `fds`; fcntl/write on descriptors we own.
    unsafe {
        assert_eq!(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC), 0);
        let w = fds[1];
        let flags = libc::fcntl(w, libc::F_GETFL);
        libc::fcntl(w, libc::F_SETFL, flags | libc::O_NONBLOCK);
        let chunk = [b'x'; 4096];
        while libc::write(w, chunk.as_ptr().cast(), chunk.len()) > 0 {}
        libc::fcntl(w, libc::F_SETFL, flags);
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(w),
        )
    }
}

/// Waits for `child` to exit, at most `limit` (then kills it and fails the test).
pub fn wait_exit(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let s = child.wait().unwrap();
            panic!("azmutex did not exit within {limit:?} (killed: {s:?})");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
