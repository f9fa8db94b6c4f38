//! `azmutex run`: hold a lock while a child command runs.

use std::ffi::OsString;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use azmutex::{Holder, LeaseDuration, LockError, LockGuard, Locker, LockerOptions, LostReason};
use clap::Args;
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::output::{parse_duration, rfc3339};
use super::{exit, Context, Failure};

/// `run` options.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The lock's name (a blob name in the container).
    pub lock: String,
    /// Wait at most this long for the lock (default: forever).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, conflicts_with = "no_wait")]
    pub wait: Option<Duration>,
    /// Do not wait: exit 75 (or --conflict-exit-code) at once if the lock is busy.
    #[arg(long)]
    pub no_wait: bool,
    /// Lease duration in seconds (15-60); renewed every third of it.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub lease: u64,
    /// After the lock is lost the command gets SIGTERM, then SIGKILL after this long.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub kill_grace: Duration,
    /// Exit code when the lock is busy or the wait times out.
    #[arg(long, default_value_t = exit::BUSY, value_name = "N")]
    pub conflict_exit_code: u8,
    /// Who holds the lock, as shown by `azmutex status` (default: the command).
    #[arg(long)]
    pub owner: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// This process as a lock holder.
pub fn holder(owner: Option<String>) -> Holder {
    Holder {
        owner,
        host: hostname(),
        pid: Some(std::process::id()),
    }
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..end].to_vec()).ok().filter(|h| !h.is_empty())
}

struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn new() -> Result<Self, Failure> {
        let make = |k| signal(k).map_err(|e| Failure::new(exit::OTHER, format!("cannot handle signals: {e}")));
        Ok(Self {
            term: make(SignalKind::terminate())?,
            int: make(SignalKind::interrupt())?,
            hup: make(SignalKind::hangup())?,
        })
    }

    /// The next of SIGTERM, SIGINT, SIGHUP.
    async fn next(&mut self) -> i32 {
        tokio::select! {
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.int.recv() => libc::SIGINT,
            _ = self.hup.recv() => libc::SIGHUP,
        }
    }
}

fn describe_holder(info: &azmutex::LockInfo) -> String {
    let Some(h) = &info.holder else {
        return if info.locked {
            " (holder not recorded)".into()
        } else {
            String::new()
        };
    };
    let mut parts = Vec::new();
    if let Some(o) = &h.holder.owner {
        parts.push(format!("{o:?}"));
    }
    if let Some(host) = &h.holder.host {
        parts.push(format!("on {host}"));
    }
    if let Some(pid) = h.holder.pid {
        parts.push(format!("pid {pid}"));
    }
    if let Some(since) = h.since {
        parts.push(format!("since {}", rfc3339(since)));
    }
    format!(" (held by {})", parts.join(" "))
}

pub async fn run(ctx: &Context, args: RunArgs) -> Result<u8, Failure> {
    let lease = LeaseDuration::seconds(args.lease)?;
    let owner = args.owner.clone().unwrap_or_else(|| {
        let cmd: Vec<String> = args.command.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        cmd.join(" ").chars().take(200).collect()
    });
    let mutex = ctx.mutex(true, Some(holder(Some(owner))))?;
    let options = LockerOptions {
        lease,
        report_holder: false,
        ..LockerOptions::default()
    };
    let locker = Locker::with_options(mutex.clone(), args.lock.as_str(), options)?;
    let mut signals = Signals::new()?;

    let started = Instant::now();
    let mut guard = match locker.try_lock().await {
        Ok(g) => g,
        Err(LockError::Busy { .. }) => {
            let info = mutex.inspect(locker.lock_name()).await.ok();
            let who = info.as_ref().map(describe_holder).unwrap_or_default();
            if args.no_wait {
                if !ctx.quiet {
                    eprintln!("azmutex: lock {:?} is busy{who}; not waiting (--no-wait)", args.lock);
                }
                return Ok(args.conflict_exit_code);
            }
            if !ctx.quiet {
                let limit = args.wait.map(|w| format!(", up to {w:?}")).unwrap_or_default();
                eprintln!("azmutex: waiting for lock {:?}{who}{limit}", args.lock);
            }
            let mut caught = None;
            let cancel = async {
                caught = Some(signals.next().await);
            };
            match locker.lock_until(args.wait, cancel).await {
                Ok(g) => g,
                Err(LockError::TimedOut { waited, .. }) => {
                    if !ctx.quiet {
                        eprintln!(
                            "azmutex: gave up waiting for lock {:?} after {:.1}s",
                            args.lock,
                            waited.as_secs_f64()
                        );
                    }
                    return Ok(args.conflict_exit_code);
                }
                Err(LockError::Cancelled { .. }) => return Ok(128 + caught.unwrap_or(libc::SIGTERM) as u8),
                Err(e) => return Err(e.into()),
            }
        }
        Err(e) => return Err(e.into()),
    };
    if !ctx.quiet && started.elapsed() > Duration::from_millis(500) {
        eprintln!(
            "azmutex: acquired lock {:?} after waiting {:.1}s (fencing token {})",
            args.lock,
            started.elapsed().as_secs_f64(),
            guard.fencing_token().map_or("-".into(), |t| t.to_string())
        );
    }

    let child = Command::new(&args.command[0])
        .args(&args.command[1..])
        .env("AZMUTEX_LOCK", &args.lock)
        .env("AZMUTEX_LEASE_ID", guard.lease_id().to_string())
        .env(
            "AZMUTEX_FENCING_TOKEN",
            guard.fencing_token().map(|t| t.to_string()).unwrap_or_default(),
        )
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            let _ = guard.release().await;
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            return Err(Failure::new(code, format!("cannot run {:?}: {e}", args.command[0])));
        }
    };
    supervise(ctx, &args, child, &mut guard, &mut signals).await
}

async fn supervise(
    ctx: &Context,
    args: &RunArgs,
    mut child: Child,
    guard: &mut LockGuard,
    signals: &mut Signals,
) -> Result<u8, Failure> {
    let lost = guard.lost();
    tokio::pin!(lost);
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            reason = &mut lost => return stop_on_loss(ctx, args, child, guard, reason).await,
            sig = signals.next() => {
                if let Some(pid) = child.id() {
                    // SAFETY: plain kill(2) on our own child's pid.
                    unsafe { libc::kill(pid as libc::pid_t, sig) };
                }
            }
        }
    };
    let status = status.map_err(|e| Failure::new(exit::OTHER, format!("waiting for the command failed: {e}")))?;
    if let Err(e) = guard.release().await {
        eprintln!("azmutex: warning: releasing lock {:?} failed: {e}", args.lock);
    }
    Ok(exit_code(status))
}

async fn stop_on_loss(
    ctx: &Context,
    args: &RunArgs,
    mut child: Child,
    guard: &mut LockGuard,
    reason: LostReason,
) -> Result<u8, Failure> {
    eprintln!("azmutex: lock {:?} lost ({reason}); stopping the command", args.lock);
    if let Some(pid) = child.id() {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }
    if tokio::time::timeout(args.kill_grace, child.wait()).await.is_err() {
        if !ctx.quiet {
            eprintln!(
                "azmutex: the command did not stop within {:?}; killing it",
                args.kill_grace
            );
        }
        let _ = child.kill().await;
    }
    let _ = guard.release().await;
    Ok(exit::LOST)
}

fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(sig)) => 128u8.saturating_add(sig as u8),
        _ => exit::OTHER,
    }
}
