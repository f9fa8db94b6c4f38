//! `azmutex run`: hold a lock while a child command runs.

use std::ffi::OsString;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use azmutex::{Error, LeaseDuration, LockError, LockGuard, Locker, LockerOptions, LostReason, Released};
use clap::Args;

pub(super) use super::holder::{describe_holder, holder};
use super::metrics::{serve_if, Health, Phase};
use super::spawn::Child;

use super::output::{parse_duration, say};
use super::process;
use super::signals::{Event, Signals};
use super::{exit, Context, Failure};

/// What `run --help` and azmutex-run(1) add after the options.
pub const RUN_AFTER_HELP: &str = "\
The command gets:
  AZMUTEX_LOCK            the lock's name
  AZMUTEX_LEASE_ID        the lease id
  AZMUTEX_FENCING_TOKEN   a number larger than any earlier holder's: pass it to resources
                          that can refuse stale writers
  AZMUTEX_SLOT            with --slots: the slot's number (0 to N-1); the fencing token is
                          then the slot's own

The command runs in a process group of its own; when the lock may be lost, it and every other
descendant (also those that left the group: setsid, daemons) get SIGTERM, then SIGKILL 2 s
before the lease can end.

Exit codes:
  the command's own (128+N if killed by signal N); 75 busy or wait timed out
  (--conflict-exit-code); 70 lock lost while the command ran, or the release could not confirm
  it was ours; 69 storage unreachable; 77 auth refused; 78 bad configuration (also --slots N
  other than the semaphore's); 126/127 the command cannot be run / was not found; 2 usage error

Examples:
  azmutex run nightly-report -- ./make-report.sh
  azmutex run deploy --wait 10m --lease 60 -- sh -c 'terraform apply -auto-approve'
  azmutex run backup --no-wait -- ./backup.sh || echo \"another backup is running\"
  azmutex run test-db --slots 3 -- ./integration-tests.sh   # at most 3 at once
  azmutex run partner-api --slots 10 --no-wait -- ./sync.sh  # 75 when all 10 are taken";

/// `run` options.
#[derive(Args, Debug)]
#[command(after_help = RUN_AFTER_HELP)]
pub struct RunArgs {
    /// The lock's name (a blob name in the container).
    pub lock: String,
    /// Wait at most this long for the lock (default: forever), e.g. 30s, 5m, 1h30m; a bare
    /// number is seconds. 0 is --no-wait.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, conflicts_with = "no_wait")]
    pub wait: Option<Duration>,
    /// Do not wait: exit 75 (or --conflict-exit-code) at once if the lock is busy.
    #[arg(long)]
    pub no_wait: bool,
    /// Lease duration in seconds (15-60); renewed every third of it.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub lease: u64,
    /// When the lock may be lost (no renewal confirmed in time) the command's process group gets
    /// SIGTERM, then SIGKILL after this long, timed so that SIGKILL lands 2 s before the lease
    /// can end (it is sent 2.1 s before). Renewal interval (lease/3) + kill grace + 2.1 s must
    /// stay below the lease.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub kill_grace: Duration,
    /// Exit code when the lock is busy or the wait times out.
    #[arg(long, default_value_t = exit::BUSY, value_name = "N")]
    pub conflict_exit_code: u8,
    /// Who holds the lock, as shown by `azmutex status` and to waiting clients (default: the
    /// command's program name; its arguments are never shown, as they may hold secrets).
    #[arg(long)]
    pub owner: Option<String>,
    /// Hold one of N slots of the semaphore NAME instead of a lock: at most N commands run at
    /// once (1-1000; every user must give the same N, or is refused with exit 78). The command
    /// also gets AZMUTEX_SLOT.
    #[arg(long, value_name = "N", value_parser = super::slots::parse_slots)]
    pub slots: Option<u32>,
    /// Serve Prometheus metrics on http://ADDR/metrics and a health check on /healthz (503 when
    /// renewal is behind or the lock is lost) while the command runs. ADDR: PORT or :PORT
    /// (loopback), IP:PORT, [IPv6]:PORT; port 0 picks a free one (printed).
    #[arg(long, value_name = "ADDR", value_parser = super::metrics::parse_addr)]
    pub metrics: Option<std::net::SocketAddr>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// A hint for a usage error of `run`: the command given without `--` before it (clap then
/// sees `./job.sh` as an unexpected argument, or misses the command).
pub fn usage_hint(args: &[String]) -> Option<&'static str> {
    let run = args.iter().skip(1).position(|a| a == "run")?;
    let dashed = args.iter().skip(run + 2).any(|a| a == "--");
    (!dashed)
        .then_some("  hint: put `--` between the lock name and the command: azmutex run LOCK -- COMMAND [ARGS...]\n")
}

/// Safety margin kept before the lease's local deadline (the library's default).
const SAFETY_MARGIN: Duration = Duration::from_secs(2);

/// Time allowed for the SIGKILL to land: it is sent this much before deadline − margin. A
/// process that left the command's group is reached only after the walk of the `children`
/// files (and, on a host without a cgroup for the command, of `/proc`), a millisecond or more
/// after the group's own signal.
const KILL_DELIVERY: Duration = Duration::from_millis(100);

/// Checks that lease, renewal interval, safety margin and kill grace fit together: the command
/// must be dead (SIGKILL sent) by deadline − margin, and renewals need time before that.
fn locker_options(args: &RunArgs, timeout: Duration) -> Result<LockerOptions, Failure> {
    supervised_options(args.lease, args.kill_grace, args.wait.is_none().then_some(timeout))
}

/// [`LockerOptions`] for a lease of `lease` seconds whose command is killed `kill_grace` after
/// SIGTERM, 2 s before the lease can end; `give_up_after` as in [`LockerOptions`]. Refused
/// (usage error) when renewal interval, kill grace and margin do not fit in the lease.
pub(super) fn supervised_options(
    lease_secs: u64,
    kill_grace: Duration,
    give_up_after: Option<Duration>,
) -> Result<LockerOptions, Failure> {
    let lease = LeaseDuration::seconds(lease_secs)?;
    let lease_len = Duration::from_secs(lease_secs);
    let every = lease_len / 3;
    let budget = every
        .checked_add(SAFETY_MARGIN + KILL_DELIVERY)
        .and_then(|d| d.checked_add(kill_grace))
        .filter(|used| *used < lease_len);
    if budget.is_none() {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "--lease {}s and --kill-grace {:?} do not fit: the lease is renewed every {:?}, and a command \
                 that is not confirmed renewed must get SIGTERM {:?} + {:?} (kill grace + safety margin) before the \
                 lease ends, so renewal interval + kill grace + safety margin must stay below the lease \
                 ({:?} + {:?} + {:?} >= {:?}); lower --kill-grace or raise --lease",
                lease_secs,
                kill_grace,
                every,
                kill_grace,
                SAFETY_MARGIN + KILL_DELIVERY,
                every,
                kill_grace,
                SAFETY_MARGIN + KILL_DELIVERY,
                lease_len
            ),
        ));
    }
    let options = LockerOptions {
        lease,
        // `lost()` fires kill_grace (and the SIGKILL's delivery) before the margin, so that
        // SIGKILL lands by deadline − margin.
        safety_margin: SAFETY_MARGIN + KILL_DELIVERY + kill_grace,
        report_holder: false,
        // Without --wait, storage failing for a whole --timeout ends the wait (exit 69); with
        // --wait, failures are retried until the wait ends.
        give_up_after,
        ..LockerOptions::default()
    };
    options.check()?;
    Ok(options)
}

pub async fn run(ctx: &Context, mut args: RunArgs) -> Result<u8, Failure> {
    // `--wait 0` means "do not wait", as `flock -w 0` does.
    if args.wait.is_some_and(|w| w.is_zero()) {
        args.wait = None;
        args.no_wait = true;
    }
    let options = locker_options(&args, ctx.conn.timeout)?;
    // Serving first: the recorder must be in place before the first request is counted.
    let health = Health::new(
        // The validity a confirmed renewal gives: the lease less the margin `lost()` keeps.
        Duration::from_secs(args.lease).saturating_sub(options.safety_margin),
        Duration::from_secs(args.lease) / 3,
    );
    let _serving = serve_if(args.metrics, &health, ctx.quiet).await?;
    // The default owner is the program's name only: its arguments may hold secrets, and the
    // owner is shown to every other user of the lock.
    let owner = args.owner.clone().unwrap_or_else(|| {
        let program = std::path::Path::new(&args.command[0]);
        let name = program.file_name().unwrap_or(program.as_os_str());
        name.to_string_lossy().chars().take(200).collect()
    });
    let mutex = ctx.mutex(true, Some(holder(Some(owner))))?;
    let locker = Locker::with_options(mutex.clone(), args.lock.as_str(), options.clone())?;
    let mut signals = Signals::new()?;

    let started = Instant::now();
    let mut slot = None;
    let mut guard = if let Some(slots) = args.slots {
        let mut caught = None;
        let cancel = async {
            caught = Some(signals.next().await);
        };
        let ask = super::slots::Ask {
            name: &args.lock,
            slots,
            no_wait: args.no_wait,
            wait: args.wait,
        };
        match super::slots::acquire_for_run(ctx, ask, mutex.clone(), options, cancel).await? {
            super::slots::Got::Slot(g, n) => {
                slot = Some(n);
                *g
            }
            super::slots::Got::Busy => return Ok(args.conflict_exit_code),
            super::slots::Got::Cancelled => return Ok(128 + caught.unwrap_or(libc::SIGTERM) as u8),
        }
    } else if args.no_wait {
        match locker.try_lock().await {
            Ok(g) => g,
            Err(LockError::Busy { .. }) => {
                if !ctx.quiet {
                    let info = mutex.inspect(locker.lock_name()).await.ok();
                    let who = info.as_ref().map(describe_holder).unwrap_or_default();
                    say(format_args!(
                        "azmutex: lock {:?} is busy{who}; not waiting (--no-wait)",
                        args.lock
                    ));
                }
                return Ok(args.conflict_exit_code);
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        let mut caught = None;
        let cancel = async {
            caught = Some(signals.next().await);
        };
        let acquire = locker.lock_until(args.wait, cancel);
        // If the lock is not ours soon, say who holds it (one extra request). Only once the
        // lock was found busy, that is while waiting between attempts with nothing in flight
        // (twice in a row, 20 ms apart): a first answer that is merely slow (a loaded service)
        // is not a busy lock, and asking then would cost a request for nothing.
        let notice = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut idle = 0;
            while idle < 2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                idle = if mutex.client().load() == (0, 0) { idle + 1 } else { 0 };
            }
            if !ctx.quiet {
                if let Ok(info) = mutex.inspect(locker.lock_name()).await {
                    if info.locked {
                        let limit = args.wait.map(|w| format!(", up to {w:?}")).unwrap_or_default();
                        say(format_args!(
                            "azmutex: waiting for lock {:?}{}{limit}",
                            args.lock,
                            describe_holder(&info)
                        ));
                    }
                }
            }
            std::future::pending::<std::convert::Infallible>().await
        };
        let result = tokio::select! {
            r = acquire => r,
            never = notice => match never {},
        };
        match result {
            Ok(g) => g,
            Err(LockError::TimedOut { waited, .. }) => {
                if !ctx.quiet {
                    say(format_args!(
                        "azmutex: gave up waiting for lock {:?} after {:.1}s",
                        args.lock,
                        waited.as_secs_f64()
                    ));
                }
                return Ok(args.conflict_exit_code);
            }
            Err(LockError::Cancelled { .. }) => return Ok(128 + caught.unwrap_or(libc::SIGTERM) as u8),
            Err(e) => return Err(e.into()),
        }
    };
    health.set(Phase::Held(guard.status()));
    if slot.is_none() && !ctx.quiet && started.elapsed() > Duration::from_millis(500) {
        say(format_args!(
            "azmutex: acquired lock {:?} after waiting {:.1}s (fencing token {})",
            args.lock,
            started.elapsed().as_secs_f64(),
            guard.fencing_token().map_or("-".into(), |t| t.to_string())
        ));
    }

    let spec = Spec {
        lock: &args.lock,
        kill_grace: args.kill_grace,
        signals_end: false,
    };
    let mut env = vec![
        ("AZMUTEX_LOCK", args.lock.clone()),
        ("AZMUTEX_LEASE_ID", guard.lease_id().to_string()),
        (
            "AZMUTEX_FENCING_TOKEN",
            guard.fencing_token().map(|t| t.to_string()).unwrap_or_default(),
        ),
    ];
    if let Some(n) = slot {
        env.push(("AZMUTEX_SLOT", n.to_string()));
    }
    let outcome = supervised(ctx, &spec, &args.command, &env, &mut guard, &mut signals).await;
    health.set(Phase::Done);
    match outcome? {
        Outcome::Exited(code) => Ok(code),
        Outcome::Lost => Ok(exit::LOST),
    }
}

/// How a command runs under a lock (`run`, `elect`).
pub(super) struct Spec<'a> {
    /// The lock's name, for messages.
    pub lock: &'a str,
    /// SIGTERM to SIGKILL when the lock may be lost.
    pub kill_grace: Duration,
    /// Whether SIGTERM and SIGINT end the command for good (forwarded, then SIGKILL after the
    /// kill grace), as `elect` needs; `run` only forwards them.
    pub signals_end: bool,
}

/// How a supervised command ended.
pub(super) enum Outcome {
    /// It exited (this code: its own, or 70 when the release showed the lock was not ours to
    /// the end); the lease is released.
    Exited(u8),
    /// The lock may have been lost while it ran: it and every descendant were stopped.
    Lost,
}

/// Runs `argv` with `env` under `guard`'s lock: in a process group (and cgroup) of its own,
/// with the watchdog holding the kill deadline, stopped with every descendant when the lock
/// may be lost; releases the lease when the command is done.
pub(super) async fn supervised(
    ctx: &Context,
    spec: &Spec<'_>,
    argv: &[OsString],
    env: &[(&str, String)],
    guard: &mut LockGuard,
    signals: &mut Signals,
) -> Result<Outcome, Failure> {
    let Some(program) = argv.first() else {
        return Err(Failure::new(exit::USAGE, "no command given"));
    };
    let terminal = process::foreground_terminal();
    let cgroup = super::cgroup::Cgroup::create();
    let how = super::spawn::Spec {
        command: argv,
        env,
        terminal,
    };
    let child = match super::spawn::spawn(&how, cgroup.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            if let Some(cg) = &cgroup {
                cg.remove();
            }
            let _ = guard.release().await;
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            return Err(Failure::new(code, format!("cannot run {program:?}: {e}")));
        }
    };
    let mut group = process::Group::new(&child, terminal, cgroup);
    // The watchdog kills everything at the deadline even if azmutex cannot (see supervise).
    group.set_kill_deadline(kill_deadline(guard, spec.kill_grace));
    group.start_watchdog();
    let outcome = supervise(ctx, spec, child, &mut group, guard, signals).await;
    group.stop_watchdog();
    group.restore_terminal();
    group.remove_cgroup();
    outcome
}

/// When the command and everything it started must be dead: the local deadline (when `lost()`
/// fires and SIGTERM goes out) plus the kill grace, which is the lease's end counted from the
/// send time of the last confirmed request minus the 2 s safety margin. Now, if the lock is
/// already lost.
fn kill_deadline(guard: &LockGuard, grace: Duration) -> Option<Instant> {
    let until = guard.valid_until().unwrap_or_else(Instant::now);
    Some(until.checked_add(grace).unwrap_or(until))
}

/// Waits for the command while the lock is held; stops it (its process group and every other
/// descendant) when the lock may be lost; forwards signals to them once. Each confirmed renewal
/// moves the watchdog's kill deadline; a loss leaves the last one in force, so the SIGKILL
/// comes on time even if this task is held up.
async fn supervise(
    ctx: &Context,
    args: &Spec<'_>,
    mut child: Child,
    group: &mut process::Group,
    guard: &mut LockGuard,
    signals: &mut Signals,
) -> Result<Outcome, Failure> {
    // With `signals_end`: when the command must be dead after SIGTERM/SIGINT.
    let mut ending: Option<tokio::time::Instant> = None;
    let lost = guard.lost();
    tokio::pin!(lost);
    let mut changed: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = Box::pin(guard.changed());
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            () = sleep_until_some(ending) => {
                group.signal(libc::SIGKILL);
                ending = None;
            }
            () = &mut changed => {
                changed = Box::pin(guard.changed());
                if guard.valid_until().is_some() {
                    group.set_kill_deadline(kill_deadline(guard, args.kill_grace));
                } else {
                    // Lost or ended: the last deadline stays in force; `lost` handles the rest.
                    changed = Box::pin(std::future::pending());
                }
            }
            reason = &mut lost => return stop_on_loss(ctx, args, child, group, guard, reason, args.kill_grace).await,
            event = signals.event() => match event {
                Event::Forward(sig) => {
                    group.signal(sig);
                    if args.signals_end && matches!(sig, libc::SIGTERM | libc::SIGINT) && ending.is_none() {
                        ending = Some(tokio::time::Instant::now() + args.kill_grace);
                    }
                }
                // The command stopped (Ctrl-Z reaches only its group, which has the terminal):
                // stop azmutex's job with it, so that the shell sees a stopped job.
                Event::Child => {
                    group.reap_orphans();
                    match group.leader_stopped() {
                    // Job control (Ctrl-Z, a terminal read in the background, a forwarded
                    // SIGTSTP): stop azmutex's job with the command, as a shell expects.
                    Some(libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU) => {
                        group.suspend_with_leader();
                        // Continued. The lease may have run out meanwhile: then the command
                        // must not go on.
                        if let Some(reason) = guard.lost_reason() {
                            return stop_on_loss(ctx, args, child, group, guard, reason, Duration::ZERO).await;
                        }
                        group.resume();
                    }
                    // SIGSTOP: the watchdog's (it saw azmutex stopped; a late one may land
                    // after azmutex was continued), or someone's who stopped the command
                    // alone. azmutex runs and holds the lock: let the command go on.
                    Some(_) => {
                        if let Some(reason) = guard.lost_reason() {
                            return stop_on_loss(ctx, args, child, group, guard, reason, Duration::ZERO).await;
                        }
                        group.resume();
                    }
                    None => {}
                    }
                }
                // azmutex was stopped (the watchdog then stopped the command's group too) and
                // is running again: continue the group only if the lock is still ours.
                Event::Continued => {
                    if let Some(reason) = guard.lost_reason() {
                        return stop_on_loss(ctx, args, child, group, guard, reason, Duration::ZERO).await;
                    }
                    group.resume();
                }
            },
        }
    };
    let status = status.map_err(|e| Failure::new(exit::OTHER, format!("waiting for the command failed: {e}")))?;
    // Whatever the command left behind (in its group, or outside it after `setsid`) runs
    // under the lock too: stop it first. The watchdog keeps watching meanwhile.
    if group.alive() {
        if !ctx.quiet {
            say(format_args!(
                "azmutex: the command left processes behind; stopping them before releasing the lock"
            ));
        }
        group.signal(libc::SIGTERM);
        tokio::select! {
            _ = group.wait_gone(args.kill_grace) => {}
            _ = &mut lost => {}
        }
        group.kill_and_reap().await;
    }
    group.stop_watchdog();
    if let Some(reason) = guard.lost_reason() {
        let _ = guard.release().await;
        say(format_args!(
            "azmutex: lock {:?} lost ({reason}) before the command ended",
            args.lock
        ));
        return Ok(Outcome::Exited(exit::LOST));
    }
    match guard.release().await {
        Ok(Released::Confirmed) => {}
        Ok(Released::Unconfirmed)
        | Err(Error::LeaseLost {
            reason: LostReason::Unconfirmed,
            ..
        }) => {
            say(format_args!(
                "azmutex: lock {:?} lost ({}): the release's answer was lost and its retry found the lease gone",
                args.lock,
                LostReason::Unconfirmed
            ));
            return Ok(Outcome::Exited(exit::LOST));
        }
        Err(Error::LeaseLost { reason, .. }) => {
            say(format_args!(
                "azmutex: lock {:?} lost ({reason}): the release showed that the lease was not ours until the command ended",
                args.lock
            ));
            return Ok(Outcome::Exited(exit::LOST));
        }
        // Not confirmed that the lease was ours to the end: it may have been broken and taken
        // while the command ran, and the release was the one request that could have said so.
        Err(e) => {
            say(format_args!(
                "azmutex: lock {:?} lost ({}): releasing failed ({e}); it stays locked until the lease expires",
                args.lock,
                LostReason::Unconfirmed
            ));
            return Ok(Outcome::Exited(exit::LOST));
        }
    }
    Ok(Outcome::Exited(exit_code(status)))
}

/// After a loss: SIGTERM to the command's group, SIGKILL after `grace` (the kill grace, which
/// lands by the lease's deadline minus the safety margin; zero when the lease ran out while the
/// group was stopped, so that it dies before it can run again), then a courtesy release bounded
/// by the lease's own end. Exits 70.
async fn stop_on_loss(
    ctx: &Context,
    args: &Spec<'_>,
    mut child: Child,
    group: &mut process::Group,
    guard: &mut LockGuard,
    reason: LostReason,
    grace: Duration,
) -> Result<Outcome, Failure> {
    // The SIGKILL is due `grace` from now, not from the end of the SIGTERM's walk of `/proc`
    // (a good part of a second on a host with tens of thousands of processes).
    let deadline = tokio::time::Instant::now() + grace;
    // Signal first: nothing (not even a failing stderr) may delay stopping the command.
    group.signal(if grace.is_zero() { libc::SIGKILL } else { libc::SIGTERM });
    say(format_args!(
        "azmutex: lock {:?} lost ({reason}); stopping the command",
        args.lock
    ));
    if !grace.is_zero() {
        let main_done = tokio::time::timeout_at(deadline, child.wait()).await.is_ok();
        let all_done = main_done && tokio::time::timeout_at(deadline, group.wait_gone(grace)).await.is_ok();
        if !all_done && !ctx.quiet {
            say(format_args!(
                "azmutex: the command did not stop within {grace:?}; killing it"
            ));
        }
    }
    group.signal(libc::SIGKILL);
    let _ = child.wait().await;
    group.stop_watchdog();
    group.kill_and_reap().await;
    let _ = guard.release().await;
    Ok(Outcome::Lost)
}

fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(sig)) => 128u8.saturating_add(sig as u8),
        _ => exit::OTHER,
    }
}

/// Completes at `at`, never when `None`.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 23's review: SIGKILL was sent exactly at deadline − 2 s, and a process that had left
    /// the command's group got it a millisecond later, inside the last 2 s. The loss now fires
    /// kill grace + 2 s + the delivery allowance before the deadline, so that the SIGKILL is sent
    /// 2.1 s before it; and a lease that cannot fit that is refused before anything runs.
    #[test]
    fn the_sigkill_is_sent_early_enough_to_land_two_seconds_before_the_lease_ends() {
        let grace = Duration::from_secs(2);
        let options = supervised_options(15, grace, None).expect("fits");
        // SIGKILL goes out at deadline − safety_margin + grace.
        let sent_before_end = options.safety_margin - grace;
        assert_eq!(sent_before_end, Duration::from_millis(2100));
        assert!(sent_before_end >= SAFETY_MARGIN + KILL_DELIVERY);
        // 5 s renewals + 2 s margin + 0.1 s delivery + 7.9 s grace = 15 s: no room left.
        assert!(supervised_options(15, Duration::from_millis(7900), None).is_err());
        assert!(supervised_options(15, Duration::from_millis(7800), None).is_ok());
    }
}
