//! The script-facing commands: acquire, renew, release, status, break.

use std::time::Duration;

use azmutex::{
    BreakPeriod, Lease, LeaseDuration, LeaseId, LeaseKind, LockError, LockName, Locker, LockerOptions, LostReason,
    Released,
};
use clap::Args;

use super::output::{json_str, out, parse_duration, printable, rfc3339, say, wall_clock};
use super::{Context, Failure};

/// `acquire` options.
#[derive(Args, Debug)]
pub struct AcquireArgs {
    /// The lock's name (a blob name in the container).
    pub lock: String,
    /// Lease duration in seconds (15-60).
    #[arg(long, default_value_t = 60, conflicts_with = "infinite")]
    pub lease: u64,
    /// An infinite lease (until released or broken).
    #[arg(long)]
    pub infinite: bool,
    /// Wait at most this long for the lock (default: do not wait), e.g. 30s, 5m, 1h30m; a
    /// bare number is seconds.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub wait: Option<std::time::Duration>,
    /// Print JSON: lease id, fencing token, deadline.
    #[arg(long)]
    pub json: bool,
    /// Who holds the lock, as shown by `azmutex status` and to waiting clients (default: none;
    /// the host is recorded, the pid of this short-lived process is not).
    #[arg(long)]
    pub owner: Option<String>,
    /// Take one of N slots of the semaphore NAME (1-1000; every user must give the same N).
    /// Prints the lease id and the slot's lock name (renew or release that lock with that id),
    /// or with --json also the slot number.
    #[arg(long, value_name = "N", value_parser = super::slots::parse_slots)]
    pub slots: Option<u32>,
}

/// `renew` / `release` options.
#[derive(Args, Debug)]
pub struct LeaseArgs {
    /// The lock's name.
    pub lock: String,
    /// The lease id printed by `azmutex acquire`.
    #[arg(long)]
    pub lease_id: String,
    /// The lease duration in seconds, as given to `acquire`. The printed deadline is how long
    /// the renewed lease lasts at least, counted from when the renewal was sent; the default,
    /// 15 (the shortest lease Azure grants), never prints a deadline later than the real one.
    #[arg(long, default_value_t = 15)]
    pub lease: u64,
    /// Print JSON (lock, lease id, deadline) instead of the deadline alone.
    #[arg(long)]
    pub json: bool,
}

/// `release` options.
#[derive(Args, Debug)]
pub struct ReleaseArgs {
    /// The lock's name.
    pub lock: String,
    /// The lease id printed by `azmutex acquire`.
    #[arg(long)]
    pub lease_id: String,
}

/// `status` options.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The lock's (or semaphore's) name. A semaphore shows its number of slots, the held slots
    /// with holder and fencing token, and how many clients wait.
    pub lock: String,
    /// Print JSON with keys lock, locked, state, status, duration, holder, fencing_token, leader.
    #[arg(long)]
    pub json: bool,
}

/// `break` options.
#[derive(Args, Debug)]
pub struct BreakArgs {
    /// The lock's name.
    pub lock: String,
    /// Seconds (0-60) the broken lease keeps locking. Default: a fixed lease runs out (nobody
    /// overlaps with the old holder), an infinite one breaks at once. `--period 0` frees the
    /// lock at once, while the old holder (or leader, `elect`) may still act until its next
    /// renewal (up to a third of its lease), and under `azmutex run` or `elect` a command that
    /// ignores SIGTERM up to the kill grace longer (`--kill-grace`, 5 s by default): writes made
    /// meanwhile are refused only by resources that check the fencing token (a leader's epoch).
    /// Deleting the lock blob or its container does the same as `--period 0`.
    #[arg(long)]
    pub period: Option<u64>,
}

fn duration(secs: u64, infinite: bool) -> Result<LeaseDuration, Failure> {
    if infinite {
        Ok(LeaseDuration::Infinite)
    } else {
        Ok(LeaseDuration::seconds(secs)?)
    }
}

/// Prints the lease; `false` if stdout is closed.
fn print_lease(lease: &Lease, json: bool) -> bool {
    if json {
        let deadline = match lease.deadline() {
            Some(d) => json_str(&rfc3339(wall_clock(d))),
            None => "null".into(),
        };
        let token = lease.fencing_token().map_or("null".to_string(), |t| t.to_string());
        out(format_args!(
            "{{\"lock\":{},\"lease_id\":\"{}\",\"fencing_token\":{token},\"deadline\":{deadline}}}",
            json_str(lease.lock().as_str()),
            lease.id()
        ))
    } else {
        out(format_args!("{}", lease.id()))
    }
}

pub async fn acquire(ctx: &Context, args: AcquireArgs) -> Result<u8, Failure> {
    let lease_duration = duration(args.lease, args.infinite)?;
    if let Some(slots) = args.slots {
        let ask = super::slots::Ask {
            name: &args.lock,
            slots,
            no_wait: args.wait.is_none(),
            wait: args.wait,
        };
        let holder = azmutex::Holder {
            pid: None,
            ..super::run::holder(args.owner.clone())
        };
        return super::slots::acquire(ctx, ask, holder, lease_duration, args.json).await;
    }
    let lock = LockName::new(args.lock)?;
    // This process exits right after printing the lease id: its pid would name a process that
    // is gone, so only the owner and the host are recorded.
    let holder = azmutex::Holder {
        pid: None,
        ..super::run::holder(args.owner.clone())
    };
    let mutex = ctx.mutex(true, Some(holder))?;
    let options = LockerOptions {
        lease: lease_duration,
        ..LockerOptions::default()
    };
    let locker = Locker::with_options(mutex.clone(), &lock, options)?;
    // SIGINT, SIGTERM or SIGHUP while acquiring: the attempt in flight is stopped and a lease
    // it may have got released (its id was never printed), then exit 128 + the signal.
    let signal = super::signals::Signals::terminating()?;
    let mut caught = None;
    let cancel = async {
        caught = Some(signal.await);
    };
    let got = match args.wait {
        None => locker.try_lock_detached(cancel).await,
        Some(wait) => locker.lock_detached_until(Some(wait), cancel).await,
    };
    let lease = match got {
        Ok(lease) => lease,
        Err(LockError::Busy { .. }) if args.wait.is_none() => {
            let info = mutex.inspect(&lock).await.ok();
            let who = info.as_ref().map(super::run::describe_holder).unwrap_or_default();
            return Err(Failure::new(
                super::exit::BUSY,
                format!("lock {:?} is busy{who}", lock.as_str()),
            ));
        }
        Err(LockError::Cancelled { .. }) => return Ok(128 + caught.unwrap_or(libc::SIGTERM) as u8),
        Err(e) => return Err(e.into()),
    };
    tracing::info!(
        lock = %lease.lock(),
        fencing_token = lease.fencing_token().map_or("-".into(), |t| t.to_string()),
        "lock acquired"
    );
    if !print_lease(&lease, args.json) {
        // Nobody got the lease id: give the lease back rather than strand it.
        let released = ctx.mutex(false, None)?.release(&lease).await;
        return Err(Failure::new(
            super::exit::OTHER,
            format!(
                "could not print the lease id (stdout is closed); the lease was {}",
                if released.is_ok() {
                    "released"
                } else {
                    "not released and will expire"
                }
            ),
        ));
    }
    Ok(0)
}

/// Renews and prints the new deadline (RFC 3339, counted from the renewal's send time), or
/// JSON with `--json`.
pub async fn renew(ctx: &Context, args: LeaseArgs) -> Result<u8, Failure> {
    let mut lease = resume(&args)?;
    match ctx.mutex(false, None)?.renew(&mut lease).await {
        Ok(_) => {}
        Err(azmutex::Error::LeaseLost { reason, .. }) => return Err(not_ours(&args.lock, reason)),
        Err(e) => return Err(e.into()),
    }
    let deadline = lease.deadline().map(|d| rfc3339(wall_clock(d)));
    tracing::info!(lock = %lease.lock(), deadline = deadline.as_deref().unwrap_or("infinite"), "lease renewed");
    if args.json {
        out(format_args!(
            "{{\"lock\":{},\"lease_id\":\"{}\",\"deadline\":{}}}",
            json_str(lease.lock().as_str()),
            lease.id(),
            deadline.as_deref().map_or("null".to_string(), json_str)
        ));
    } else {
        out(format_args!("{}", deadline.as_deref().unwrap_or("infinite")));
    }
    Ok(0)
}

/// A renew or release that found the lease not (or no longer) ours. Which of the causes it
/// was, the service does not say (a lease released, expired or broken is simply not this id's),
/// so none is guessed.
fn not_ours(lock: &str, _reason: LostReason) -> Failure {
    Failure::new(
        super::exit::LOST,
        format!("lock {lock:?} is not leased with this id (already released, expired or broken)"),
    )
}

/// Exits 0 only when the service confirmed the release (the lease was ours until then). An
/// unconfirmed release (an earlier attempt's answer was lost and the retry found the lease
/// gone: most likely released by that attempt, but possibly broken and taken by another client
/// meanwhile) exits 70, with the message `run` prints for the same case.
pub async fn release(ctx: &Context, args: ReleaseArgs) -> Result<u8, Failure> {
    // The duration only matters for deadlines, which a release does not print.
    let mut lease = Lease::resume(
        LockName::new(args.lock.as_str())?,
        LeaseId::parse(&args.lease_id)?,
        LeaseDuration::MIN,
    );
    let mutex = ctx.mutex(false, None)?;
    // A release is answered 200 on a broken lease too: a renewal first shows that the lease
    // was still ours (not broken, not taken) when the script let go of it.
    let mut probe = lease.clone();
    if let Err(e) = mutex.renew(&mut probe).await {
        // Free it anyway if it is still under our id (a broken lease is), then report.
        let _ = mutex.release(&lease).await;
        return Err(match e {
            azmutex::Error::LeaseLost { reason, .. } => not_ours(&args.lock, reason),
            e => e.into(),
        });
    }
    lease = probe;
    let released = match mutex.release(&lease).await {
        Ok(r) => r,
        Err(azmutex::Error::LeaseLost { reason, .. }) => return Err(not_ours(&args.lock, reason)),
        Err(e) => return Err(e.into()),
    };
    match released {
        Released::Confirmed => {
            tracing::info!(lock = %lease.lock(), "lock released");
            Ok(0)
        }
        Released::Unconfirmed => Err(Failure::new(
            super::exit::LOST,
            format!(
                "lock {:?} lost ({}): the release's answer was lost and its retry found the lease gone",
                args.lock,
                LostReason::Unconfirmed
            ),
        )),
    }
}

fn resume(args: &LeaseArgs) -> Result<Lease, Failure> {
    Ok(Lease::resume(
        LockName::new(args.lock.as_str())?,
        LeaseId::parse(&args.lease_id)?,
        LeaseDuration::seconds(args.lease)?,
    ))
}

pub async fn status(ctx: &Context, args: StatusArgs) -> Result<u8, Failure> {
    let info = ctx.mutex(false, None)?.inspect(args.lock.as_str()).await?;
    // No lock blob of that name: it may be a semaphore's.
    if !info.exists {
        if let Some(code) = super::slots::status(ctx, &args.lock, args.json).await? {
            return Ok(code);
        }
    }
    let duration = match info.duration {
        Some(LeaseKind::Fixed) => Some("fixed"),
        Some(LeaseKind::Infinite) => Some("infinite"),
        None => None,
    };
    let status = if info.locked { "locked" } else { "unlocked" };
    let leader = azmutex::election::Leader::from_lock_info(&info);
    if args.json {
        let opt = |s: Option<String>| s.map_or("null".to_string(), |s| json_str(&s));
        let holder = match &info.holder {
            Some(h) => format!(
                "{{\"owner\":{},\"host\":{},\"pid\":{},\"since\":{}}}",
                opt(h.holder.owner.clone()),
                opt(h.holder.host.clone()),
                h.holder.pid.map_or("null".into(), |p| p.to_string()),
                opt(h.since.map(rfc3339)),
            ),
            None => "null".into(),
        };
        out(format_args!(
            "{{\"lock\":{},\"locked\":{},\"state\":\"{}\",\"status\":\"{status}\",\"duration\":{},\"holder\":{holder},\"fencing_token\":{},\"leader\":{}}}",
            json_str(info.lock.as_str()),
            info.locked,
            info.state.as_str(),
            opt(duration.map(str::to_string)),
            info.fencing_token.map_or("null".into(), |t| t.to_string()),
            super::observe::leader_json(&leader),
        ));
    } else {
        out(format_args!("lock:          {}", info.lock));
        out(format_args!("locked:        {}", info.locked));
        out(format_args!("state:         {} ({status})", info.state.as_str()));
        if let Some(d) = duration {
            out(format_args!("duration:      {d}"));
        }
        if let Some(h) = &info.holder {
            let since = h.since.map(|s| {
                let ago = s.elapsed().unwrap_or_default().as_secs();
                format!("{} ({ago}s ago)", rfc3339(s))
            });
            // Any lock user sets these (`--owner`): never print them raw.
            out(format_args!(
                "holder:        {}{}{}",
                printable(h.holder.owner.as_deref().unwrap_or("-"), 200),
                h.holder
                    .host
                    .as_ref()
                    .map(|x| format!(" on {}", printable(x, 100)))
                    .unwrap_or_default(),
                h.holder.pid.map(|p| format!(" pid {p}")).unwrap_or_default()
            ));
            if let Some(since) = since {
                out(format_args!("since:         {since}"));
            }
        }
        if let Some(t) = info.fencing_token {
            out(format_args!("fencing token: {t}"));
        }
        if leader.is_some() {
            out(format_args!("{}", super::observe::line(&leader, false)));
        }
        if !info.exists {
            out(format_args!("(no lock blob yet: never acquired)"));
        }
    }
    Ok(0)
}

pub async fn break_lease(ctx: &Context, args: BreakArgs) -> Result<u8, Failure> {
    let period = args.period.map(BreakPeriod::seconds).transpose()?;
    let left = match ctx.mutex(false, None)?.break_lease(args.lock.as_str(), period).await {
        Ok(left) => left,
        // Nothing to break: the lock was never acquired (or its blob was deleted).
        Err(azmutex::Error::NotFound { .. }) => {
            if !ctx.quiet {
                say(format_args!(
                    "azmutex: lock {:?} does not exist (never acquired): nothing to break",
                    args.lock
                ));
            }
            return Ok(0);
        }
        Err(e) => return Err(e.into()),
    };
    if !ctx.quiet {
        if left == Duration::ZERO {
            say(format_args!("azmutex: lock {:?} is free now", args.lock));
        } else {
            say(format_args!(
                "azmutex: lock {:?} breaks in {}s",
                args.lock,
                left.as_secs()
            ));
        }
    }
    Ok(0)
}
