//! What `/healthz` says for `run` and `elect`: healthy while waiting for the lock, standing by
//! in an election, or holding the lock with renewals on time; failing (503) when renewal is
//! behind (no renewal confirmed for one and a half renewal intervals), when the lock was lost,
//! and after the command ended.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use azmutex::LockStatus;

use super::Registry;
use crate::cli::{exit, say, Failure};

/// Where a command is.
pub(crate) enum Phase {
    /// Waiting for the lock.
    Waiting,
    /// Campaigning in an election, another process leading (or nobody yet).
    Standby,
    /// Holding the lock (or leading).
    Held(LockStatus),
    /// The command ended; the process is about to exit.
    Done,
}

/// The health of one command, shared with the server (cheap to clone).
#[derive(Clone)]
pub(crate) struct Health {
    phase: Arc<Mutex<Phase>>,
    /// The local validity right after a confirmed renewal (lease less the safety margin).
    fresh: Duration,
    /// The renewal interval.
    every: Duration,
}

impl Health {
    /// Health for a lock renewed every `every`, whose validity after a renewal is `fresh`.
    pub(crate) fn new(fresh: Duration, every: Duration) -> Self {
        Self {
            phase: Arc::new(Mutex::new(Phase::Waiting)),
            fresh,
            every,
        }
    }

    /// Moves to `phase`.
    pub(crate) fn set(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase;
    }

    /// The answer of `/healthz`: `Ok` (200) with what is going on, or `Err` (503) with why not.
    pub(crate) fn check(&self) -> Result<String, String> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Result<String, String> {
        match &*self.phase.lock().unwrap_or_else(|e| e.into_inner()) {
            Phase::Waiting => Ok("waiting for the lock".into()),
            Phase::Standby => Ok("standing by (another process leads, or nobody yet)".into()),
            Phase::Done => Err("the command has ended".into()),
            Phase::Held(status) => match status.valid_until() {
                None if status.is_released() => Err("the lock was released".into()),
                None => Err(format!(
                    "the lock was lost: {}",
                    status
                        .lost_reason()
                        .map_or_else(|| "unknown".to_string(), |r| r.to_string())
                )),
                Some(until) => {
                    let left = until.saturating_duration_since(now);
                    // How long ago the last confirmed request was sent.
                    let since = self.fresh.saturating_sub(left);
                    let limit = self.every + self.every / 2;
                    if since > limit {
                        Err(format!(
                            "renewal is behind: the last confirmed renewal was sent {:.1}s ago (renewed every {:.0}s); \
                             the lock counts as held for {:.1}s more",
                            since.as_secs_f64(),
                            self.every.as_secs_f64(),
                            left.as_secs_f64()
                        ))
                    } else {
                        Ok(format!(
                            "holding the lock; renewed {:.1}s ago, valid for {:.1}s more",
                            since.as_secs_f64(),
                            left.as_secs_f64()
                        ))
                    }
                }
            },
        }
    }
}

/// Starts serving `/metrics` and `/healthz` on `addr` when `--metrics` was given (before any
/// metric is recorded), and says where unless `quiet`. The task is aborted when the returned
/// guard is dropped.
pub(crate) async fn serve_if(addr: Option<SocketAddr>, health: &Health, quiet: bool) -> Result<Serving, Failure> {
    let Some(addr) = addr else {
        return Ok(Serving(None));
    };
    let registry = Registry::new();
    let h = health.clone();
    let (bound, task) = super::start(addr, registry, move || h.check())
        .await
        .map_err(|e| Failure::new(exit::CONFIG, e))?;
    azmutex::telemetry::describe();
    tracing::info!(%bound, "serving metrics");
    if !quiet {
        say(format_args!(
            "azmutex: metrics on http://{bound}/metrics, health on http://{bound}/healthz"
        ));
    }
    Ok(Serving(Some(task)))
}

/// The metrics server while it runs (stopped on drop).
pub(crate) struct Serving(Option<tokio::task::JoinHandle<()>>);

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_and_standby_are_healthy_done_is_not() {
        let h = Health::new(Duration::from_secs(13), Duration::from_secs(5));
        assert!(h.check().is_ok());
        h.set(Phase::Standby);
        assert!(h.check().unwrap().contains("standing by"));
        h.set(Phase::Done);
        assert!(h.check().is_err());
    }
}
