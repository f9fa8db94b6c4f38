//! A cgroup (v2) of the command's own, where the system allows it (root, or a delegated
//! subtree): every process the command starts stays in it, whatever it does to its process
//! group, session or parent, and `cgroup.kill` kills them all at once, in one write that no
//! fork can race. Without one (no cgroup v2, no permission), the `/proc` walk of
//! [`super::descendants`] is what finds them.
//!
//! The paths are made before fork; moving the command in (a write to `cgroup.procs` in the
//! forked child) and killing (a write to `cgroup.kill`, from the watchdog too) are
//! async-signal-safe.

use std::ffi::CString;
use std::path::{Path, PathBuf};

/// The cgroup paths the watchdog uses after fork.
pub struct WatchdogPaths {
    /// `cgroup.kill`.
    pub kill: CString,
    /// The cgroup's directory (removed once empty, if azmutex died).
    pub dir: CString,
}

impl WatchdogPaths {
    /// Kills everything in the cgroup. Async-signal-safe.
    pub fn kill(&self) {
        write_path(&self.kill, b"1");
    }

    /// Removes the (empty) cgroup: a few tries, 10 ms apart. Async-signal-safe.
    pub fn remove(&self) {
        let pause = libc::timespec {
            tv_sec: 0,
            tv_nsec: 10_000_000,
        };
        for _ in 0..100 {
            // SAFETY: rmdir on a NUL-terminated path; nanosleep with a valid timespec.
            unsafe {
                if libc::rmdir(self.dir.as_ptr()) == 0 {
                    return;
                }
                libc::nanosleep(&pause, std::ptr::null_mut());
            }
        }
    }
}

/// The command's cgroup.
pub struct Cgroup {
    dir: PathBuf,
    procs: CString,
    kill: CString,
    events: PathBuf,
}

impl Cgroup {
    /// Makes `azmutex-<pid>` beside azmutex in its own cgroup v2 hierarchy; `None` when that is
    /// not possible (no cgroup v2 mount, no permission, `AZMUTEX_NO_CGROUP` set).
    pub fn create() -> Option<Self> {
        if std::env::var_os("AZMUTEX_NO_CGROUP").is_some() {
            return None;
        }
        let mount = cgroup2_mount()?;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("0::").map(str::to_string))?;
        let parent = mount.join(own.trim().trim_start_matches('/'));
        let dir = parent.join(format!("azmutex-{}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        let c = |name: &str| CString::new(dir.join(name).into_os_string().into_encoded_bytes()).ok();
        let made = (|| {
            Some(Self {
                procs: c("cgroup.procs")?,
                kill: c("cgroup.kill")?,
                events: dir.join("cgroup.events"),
                dir: dir.clone(),
            })
        })();
        match made {
            Some(cg) if Path::new(cg.kill.to_str().unwrap_or("")).exists() => Some(cg),
            _ => {
                let _ = std::fs::remove_dir(&dir);
                None
            }
        }
    }

    /// Whether process `pid` is in this cgroup.
    pub fn contains(&self, pid: libc::pid_t) -> bool {
        let procs = Path::new(self.procs.to_str().unwrap_or(""));
        std::fs::read_to_string(procs)
            .map(|t| t.lines().any(|l| l.trim().parse::<libc::pid_t>() == Ok(pid)))
            .unwrap_or(false)
    }

    /// What the watchdog needs: `cgroup.kill` and the directory.
    pub fn watchdog_paths(&self) -> WatchdogPaths {
        WatchdogPaths {
            kill: self.kill.clone(),
            dir: CString::new(self.dir.clone().into_os_string().into_encoded_bytes()).unwrap_or_default(),
        }
    }

    /// The cgroup's directory, opened for `clone3`'s `CLONE_INTO_CGROUP`.
    pub fn open_dir(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        std::fs::File::open(&self.dir).map(std::os::fd::OwnedFd::from)
    }

    /// `cgroup.procs`, for [`move_self`] in the forked child.
    pub fn procs_path(&self) -> &CString {
        &self.procs
    }

    /// SIGKILL to every process in the cgroup, at once.
    pub fn kill(&self) {
        write_path(&self.kill, b"1");
    }

    /// Whether any process is left in the cgroup.
    pub fn populated(&self) -> bool {
        std::fs::read_to_string(&self.events)
            .map(|t| t.lines().any(|l| l.trim() == "populated 1"))
            .unwrap_or(false)
    }

    /// Removes the cgroup (it must be empty): at the end of `run`. A few tries, as the last
    /// processes leave it asynchronously after SIGKILL.
    pub fn remove(&self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
/// hybrid systems). Those two places are asked first (one `statfs` each), so that only a
/// hierarchy mounted elsewhere costs reading the mount table (hundreds of lines on a
/// Kubernetes node).
fn cgroup2_mount() -> Option<PathBuf> {
    cgroup2_mount_from(&["/sys/fs/cgroup", "/sys/fs/cgroup/unified"])
}

/// [`cgroup2_mount`], asking `usual` places first.
fn cgroup2_mount_from(usual: &[&str]) -> Option<PathBuf> {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    for dir in usual {
        let Ok(path) = CString::new(*dir) else { continue };
        // SAFETY: statfs on a NUL-terminated path into a zeroed struct we own.
        let is_cgroup2 = unsafe {
            let mut fs: libc::statfs = std::mem::zeroed();
            libc::statfs(path.as_ptr(), &mut fs) == 0 && fs.f_type as i64 == CGROUP2_SUPER_MAGIC
        };
        if is_cgroup2 {
            return Some(PathBuf::from(*dir));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, kind) = (f.next()?, f.next()?, f.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// Writes `bytes` to the file at `path`. Async-signal-safe; errors are ignored.
fn write_path(path: &CString, bytes: &[u8]) -> bool {
    // SAFETY: open/write/close on a NUL-terminated path and a buffer we own.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        libc::close(fd);
        n == bytes.len() as isize
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is `procs`. For the forked
/// child before exec: async-signal-safe.
pub fn move_self(procs: &CString) -> bool {
    write_path(procs, b"0")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The usual places and the mount table agree: where neither usual place is a cgroup v2
    /// hierarchy (here: `/proc`), the mount table finds the same one.
    #[test]
    fn the_usual_places_and_the_mount_table_agree() {
        let usual = cgroup2_mount();
        let from_table = cgroup2_mount_from(&["/proc", "/nonexistent"]);
        if let Some(dir) = &usual {
            let table = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
            assert!(
                table.lines().any(|l| l.split_whitespace().nth(1) == dir.to_str()),
                "{dir:?} is a mount point"
            );
            assert!(from_table.is_some(), "the mount table lists a cgroup2 hierarchy too");
        } else {
            assert_eq!(from_table, None);
        }
    }
}
