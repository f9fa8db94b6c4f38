//! Semaphores in the CLI: `run --slots N`, `acquire --slots N`, and `status` of a semaphore.

use std::future::Future;
use std::time::{Duration, Instant};

use azmutex::semaphore::{SemaphoreStatus, MAX_SLOTS};
use azmutex::{AzureMutex, LeaseDuration, LockGuard, LockerOptions, Semaphore, SemaphoreError, SemaphoreOptions};

use super::output::{json_str, out, printable, rfc3339, say};
use super::{exit, Context, Failure};

/// What `run --slots` and `acquire --slots` were asked (this file uses neither command's
/// module: they use it).
pub struct Ask<'a> {
    /// The semaphore's name.
    pub name: &'a str,
    /// The number of slots.
    pub slots: u32,
    /// `--no-wait` (`run`).
    pub no_wait: bool,
    /// `--wait`.
    pub wait: Option<Duration>,
}

/// What `--slots` accepts: 1 to 1,000.
pub fn parse_slots(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_SLOTS).contains(&n) => Ok(n),
        _ => Err(format!("expected a number of slots from 1 to {MAX_SLOTS}")),
    }
}

/// How `run --slots` got on.
pub enum Got {
    /// A slot: its guard and number.
    Slot(Box<LockGuard>, u32),
    /// Full (`--no-wait`) or the wait timed out.
    Busy,
    /// A signal ended the wait.
    Cancelled,
}

fn semaphore(mutex: AzureMutex, name: &str, slots: u32, locker: LockerOptions) -> Result<Semaphore, Failure> {
    let options = SemaphoreOptions {
        locker,
        ..SemaphoreOptions::default()
    };
    Ok(Semaphore::with_options(mutex, name, slots, options)?)
}

/// The CLI's failure for a semaphore error (busy and cancelled are handled by the callers).
fn failure(e: SemaphoreError) -> Failure {
    match e {
        SemaphoreError::Storage(e) => e.into(),
        SemaphoreError::Lock(e) => e.into(),
        e @ (SemaphoreError::SlotsMismatch { .. } | SemaphoreError::Inconsistent { .. }) => {
            Failure::new(exit::CONFIG, e.to_string())
        }
        e @ (SemaphoreError::Full { .. } | SemaphoreError::TimedOut { .. }) => Failure::new(exit::BUSY, e.to_string()),
        e @ SemaphoreError::Lost { .. } => Failure::new(exit::LOST, e.to_string()),
        e => Failure::new(exit::OTHER, e.to_string()),
    }
}

/// ` (held by "a" on h pid 1, …)` for a full semaphore: its holders, printed inert and short.
async fn describe_holders(sem: &Semaphore) -> String {
    let Ok(Some(status)) = sem.status().await else {
        return String::new();
    };
    let who: Vec<String> = status
        .slot_states
        .iter()
        .filter(|s| s.locked)
        .take(5)
        .map(|s| format!("slot {}: {}", s.slot, holder_text(s.holder.as_ref())))
        .collect();
    if who.is_empty() {
        String::new()
    } else {
        format!(
            "; held: {}{}",
            who.join("; "),
            if status.held() > 5 { "; …" } else { "" }
        )
    }
}

fn holder_text(h: Option<&azmutex::HolderInfo>) -> String {
    let Some(h) = h else {
        return "holder not recorded".into();
    };
    let mut parts = Vec::new();
    if let Some(o) = &h.holder.owner {
        parts.push(format!("\"{}\"", printable(o, 200)));
    }
    if let Some(host) = &h.holder.host {
        parts.push(format!("on {}", printable(host, 100)));
    }
    if let Some(pid) = h.holder.pid {
        parts.push(format!("pid {pid}"));
    }
    if parts.is_empty() {
        "holder not recorded".into()
    } else {
        parts.join(" ")
    }
}

/// `run --slots N`: a slot's guard, with the messages and exit codes of `run`.
pub async fn acquire_for_run(
    ctx: &Context,
    args: Ask<'_>,
    mutex: AzureMutex,
    options: LockerOptions,
    cancel: impl Future<Output = ()>,
) -> Result<Got, Failure> {
    let slots = args.slots;
    let sem = semaphore(mutex, args.name, slots, options)?;
    let started = Instant::now();
    let result = if args.no_wait {
        sem.try_acquire().await
    } else {
        let acquire = sem.acquire_until(args.wait, cancel);
        let notice = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if !ctx.quiet {
                let limit = args.wait.map(|w| format!(", up to {w:?}")).unwrap_or_default();
                say(format_args!(
                    "azmutex: waiting for a slot of semaphore {:?} ({slots} slots{}){limit}",
                    args.name,
                    describe_holders(&sem).await
                ));
            }
            std::future::pending::<std::convert::Infallible>().await
        };
        tokio::select! {
            r = acquire => r,
            never = notice => match never {},
        }
    };
    match result {
        Ok(permit) => {
            let (guard, slot) = permit.into_parts();
            if !ctx.quiet && started.elapsed() > Duration::from_millis(500) {
                say(format_args!(
                    "azmutex: acquired slot {slot} of semaphore {:?} after waiting {:.1}s (fencing token {})",
                    args.name,
                    started.elapsed().as_secs_f64(),
                    guard.fencing_token().map_or("-".into(), |t| t.to_string())
                ));
            }
            Ok(Got::Slot(Box::new(guard), slot))
        }
        Err(SemaphoreError::Full { .. }) => {
            if !ctx.quiet {
                say(format_args!(
                    "azmutex: semaphore {:?} is full ({slots} of {slots} slots held{}); not waiting (--no-wait)",
                    args.name,
                    describe_holders(&sem).await
                ));
            }
            Ok(Got::Busy)
        }
        Err(SemaphoreError::TimedOut { waited, .. }) => {
            if !ctx.quiet {
                say(format_args!(
                    "azmutex: gave up waiting for a slot of semaphore {:?} after {:.1}s",
                    args.name,
                    waited.as_secs_f64()
                ));
            }
            Ok(Got::Busy)
        }
        Err(SemaphoreError::Cancelled { .. }) => Ok(Got::Cancelled),
        Err(e) => Err(failure(e)),
    }
}

/// `acquire --slots N`: prints the lease id and the slot's lock name (renew and release it
/// with those), or JSON with the slot number too.
pub async fn acquire(
    ctx: &Context,
    args: Ask<'_>,
    holder: azmutex::Holder,
    lease: LeaseDuration,
    json: bool,
) -> Result<u8, Failure> {
    let mutex = ctx.mutex(true, Some(holder))?;
    let options = LockerOptions {
        lease,
        report_holder: false,
        ..LockerOptions::default()
    };
    let sem = semaphore(mutex, args.name, args.slots, options)?;
    let (lease, slot) = match sem.acquire_detached(Some(args.wait.unwrap_or(Duration::ZERO))).await {
        Ok(got) => got,
        Err(e @ (SemaphoreError::Full { .. } | SemaphoreError::TimedOut { .. })) => {
            return Err(Failure::new(exit::BUSY, format!("{e}{}", describe_holders(&sem).await)))
        }
        Err(e) => return Err(failure(e)),
    };
    let printed = if json {
        let deadline = match lease.deadline() {
            Some(d) => json_str(&rfc3339(super::output::wall_clock(d))),
            None => "null".into(),
        };
        out(format_args!(
            "{{\"semaphore\":{},\"slot\":{slot},\"lock\":{},\"lease_id\":\"{}\",\"fencing_token\":{},\"deadline\":{deadline}}}",
            json_str(args.name),
            json_str(lease.lock().as_str()),
            lease.id(),
            lease.fencing_token().map_or("null".to_string(), |t| t.to_string()),
        ))
    } else {
        out(format_args!("{} {}", lease.id(), lease.lock()))
    };
    if !printed {
        let released = ctx.mutex(false, None)?.release(&lease).await;
        return Err(Failure::new(
            exit::OTHER,
            format!(
                "could not print the lease id (stdout is closed); the slot was {}",
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

/// `status NAME` of a semaphore: `Ok(None)` when there is none of that name (or listing is not
/// allowed: then `status` shows the lock as before).
pub async fn status(ctx: &Context, name: &str, json: bool) -> Result<Option<u8>, Failure> {
    let mutex = ctx.mutex(false, None)?;
    let status = match Semaphore::status_of(&mutex, name).await {
        Ok(Some(s)) => s,
        Ok(None) => return Ok(None),
        Err(SemaphoreError::Storage(azmutex::Error::Auth { .. })) => return Ok(None),
        Err(e) => return Err(failure(e)),
    };
    print_status(&status, json);
    Ok(Some(0))
}

fn print_status(s: &SemaphoreStatus, json: bool) {
    if json {
        let opt = |s: Option<String>| s.map_or("null".to_string(), |s| json_str(&s));
        let slots: Vec<String> = s
            .slot_states
            .iter()
            .map(|st| {
                let holder = match &st.holder {
                    Some(h) => format!(
                        "{{\"owner\":{},\"host\":{},\"pid\":{},\"since\":{}}}",
                        opt(h.holder.owner.clone()),
                        opt(h.holder.host.clone()),
                        h.holder.pid.map_or("null".into(), |p| p.to_string()),
                        opt(h.since.map(rfc3339)),
                    ),
                    None => "null".into(),
                };
                format!(
                    "{{\"slot\":{},\"locked\":{},\"state\":\"{}\",\"holder\":{holder},\"fencing_token\":{}}}",
                    st.slot,
                    st.locked,
                    st.state.as_str(),
                    st.fencing_token.map_or("null".into(), |t| t.to_string())
                )
            })
            .collect();
        out(format_args!(
            "{{\"semaphore\":{},\"slots\":{},\"held\":{},\"waiters\":{},\"slot_states\":[{}]}}",
            json_str(s.name.as_str()),
            s.slots,
            s.held(),
            s.waiters,
            slots.join(",")
        ));
    } else {
        out(format_args!("semaphore:     {}", s.name));
        out(format_args!("slots:         {}", s.slots));
        out(format_args!("held:          {}", s.held()));
        out(format_args!("waiting:       {}", s.waiters));
        for st in s.slot_states.iter().filter(|st| st.locked) {
            let since = st
                .holder
                .as_ref()
                .and_then(|h| h.since)
                .map(|t| format!(" since {}", rfc3339(t)))
                .unwrap_or_default();
            out(format_args!(
                "slot {:>4}:     {} ({}){since}{}",
                st.slot,
                holder_text(st.holder.as_ref()),
                st.state.as_str(),
                st.fencing_token
                    .map(|t| format!(", fencing token {t}"))
                    .unwrap_or_default()
            ));
        }
    }
}
