//! The background task of a [`LockGuard`]: renewal, backoff, the verdict, release.

use std::sync::atomic::AtomicUsize;

use super::*;
use crate::telemetry;

/// Leases held by `Locker` guards in this process. With more than one, each new lease renews
/// first at a random point of its first renewal interval instead of at its end, so that leases
/// acquired together do not renew together for as long as they are held.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// One lease counted as held (in [`HELD`] and the `azmutex_leases_held` gauge) until it is
/// released, lost or its renewer dropped.
pub(super) struct Holding {
    counted: AtomicBool,
    /// The election this lease leads (see [`LockGuard::mark_leader`]): its leader gauge goes
    /// to 0 when the count ends.
    leads: std::sync::Mutex<Option<String>>,
}

impl Holding {
    pub(super) fn start() -> Self {
        HELD.fetch_add(1, Ordering::Relaxed);
        telemetry::acquired();
        Self {
            counted: AtomicBool::new(true),
            leads: std::sync::Mutex::new(None),
        }
    }

    fn leads(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.leads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends the count (once): released (`None`) or lost.
    pub(super) fn end(&self, lost: Option<LostReason>) {
        let mut leads = self.leads();
        if self.counted.swap(false, Ordering::Relaxed) {
            HELD.fetch_sub(1, Ordering::Relaxed);
            telemetry::ended(lost.map(|r| r.label()));
        }
        if let Some(election) = leads.take() {
            telemetry::leader(&election, false);
        }
    }

    /// Marks the lease as leading `election` (its leader gauge at 1) while it is counted.
    pub(super) fn lead(&self, election: String) {
        let mut leads = self.leads();
        if self.counted.load(Ordering::Relaxed) {
            telemetry::leader(&election, true);
            *leads = Some(election);
        }
    }

    /// Whether other leases are held in this process.
    fn among_others() -> bool {
        HELD.load(Ordering::Relaxed) > 1
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        self.end(None);
    }
}

/// How long after the acquisition the first renewal is due: the renewal interval `every`, or
/// (when other leases are held in this process) a uniformly random point of it, at least
/// [`MIN_RENEWAL_GAP`] in. Renewing early is always safe; the phases it gives stay, since each
/// later renewal is due one interval after the previous one was sent.
pub(super) fn first_renewal(every: Duration, among_others: bool) -> Duration {
    if !among_others || every <= MIN_RENEWAL_GAP {
        return every;
    }
    every.mul_f64(fastrand::f64()).clamp(MIN_RENEWAL_GAP, every)
}

/// The background task of a [`LockGuard`]: the state machine of [`State`].
pub(super) struct Renewer {
    pub(super) mutex: AzureMutex,
    pub(super) lease: Lease,
    pub(super) state: watch::Sender<State>,
    pub(super) options: LockerOptions,
    pub(super) lapsed: Arc<AtomicBool>,
    /// When the last renewal call ended (or was dropped): its last request started no later
    /// (the confirming renewal of a release keeps its distance from it too).
    pub(super) last_attempt: Option<Instant>,
    /// This lease in the count of leases held.
    pub(super) holding: Arc<Holding>,
}

impl Renewer {
    /// Publishes `next` unless the state is final for it (lost stays lost; released stays).
    pub(super) fn publish(&self, next: State) {
        self.state.send_if_modified(|current| {
            let allowed = match (*current, next) {
                (State::Released, _) => false,
                (State::Lost(_), State::Released) => true,
                (State::Lost(_), _) => false,
                _ => true,
            };
            if allowed {
                *current = next;
                // Counted before anyone waiting on the state hears of it.
                match next {
                    State::Lost(reason) => self.holding.end(Some(reason)),
                    State::Released => self.holding.end(None),
                    State::Held(_) => {}
                }
            }
            allowed
        });
    }

    pub(super) fn lose(&self, reason: LostReason, why: &dyn fmt::Display) {
        tracing::warn!(lock = %self.lease.lock(), %reason, "lock lost: {why}");
        self.publish(State::Lost(reason));
    }

    pub(super) async fn run(mut self, mut commands: oneshot::Receiver<Command>) {
        let every = self.options.renew_interval();
        // After a transient failure: when to try again, and how many failed in a row.
        let mut retry_at: Option<Instant> = None;
        let mut failures = 0u32;
        // The first renewal's distance from the acquisition (spread among many leases).
        let mut first = Some(first_renewal(every, Holding::among_others()));
        let command = loop {
            let current = *self.state.borrow();
            let State::Held(validity) = current else {
                // Lost: wait for the owner to release or drop.
                break (&mut commands).await.ok();
            };
            // When this renewal is due (retries keep the time it was first due).
            let due = self
                .lease
                .grant()
                .sent_at
                .checked_add(first.unwrap_or(every))
                .unwrap_or(validity.until);
            let next = retry_at.unwrap_or(due);
            tokio::select! {
                _ = sleep_until(next.min(validity.until).into()) => {}
                c = &mut commands => break c.ok(),
            }
            // Slept through the deadline (machine suspended, runtime starved)? Then the lock
            // may be gone. So it is if anyone saw the deadline pass.
            if self.lapsed.load(Ordering::SeqCst) || !validity.holds(Instant::now(), SystemTime::now()) {
                self.lapsed.store(true, Ordering::SeqCst);
                self.lose(LostReason::Expired, &"the local deadline passed before renewal");
                continue;
            }
            // Renew; give up on this call after its own budget (a stalled request is retried
            // while time is left), and on the lock at the local deadline.
            // The call may retry inside (each request at least MIN_RENEWAL_GAP apart): the last
            // request it sent started no later than when it ended or was dropped, which is what
            // `last_attempt` records for the confirming renewal of a release.
            let outcome = tokio::select! {
                r = Box::pin(self.mutex.renew_until(&mut self.lease, attempt_deadline(&self.mutex, validity.until))) => Some(r),
                _ = sleep_until(validity.until.into()) => None,
                c = &mut commands => {
                    self.last_attempt = Some(Instant::now());
                    break c.ok();
                }
            };
            self.last_attempt = Some(Instant::now());
            let in_time = !self.lapsed.load(Ordering::SeqCst) && validity.holds(Instant::now(), SystemTime::now());
            if !in_time {
                self.lapsed.store(true, Ordering::SeqCst);
            }
            match outcome {
                // A confirmation counts only if it came while the previous grant still held:
                // otherwise `lost()` may already have fired.
                Some(Ok(grant)) if in_time => {
                    tracing::info!(lock = %self.lease.lock(), "lease renewed");
                    let latency = Instant::now().saturating_duration_since(due);
                    telemetry::renewed(latency, latency > every);
                    first = None;
                    retry_at = None;
                    failures = 0;
                    self.publish(State::Held(Validity::of(grant, &self.options)));
                }
                Some(Ok(_)) | None => {
                    telemetry::renewal_missed();
                    self.lose(
                        LostReason::Expired,
                        &"no renewal was confirmed before the local deadline",
                    )
                }
                // Gave up early on a transient failure with time left: try again.
                Some(Err(e)) if e.is_transient() && in_time => {
                    telemetry::renewal_missed();
                    failures = failures.saturating_add(1);
                    let at = self.retry_at(&e, failures, validity.until);
                    tracing::debug!(
                        lock = %self.lease.lock(),
                        error = %e,
                        retry_in_ms = at.saturating_duration_since(Instant::now()).as_millis() as u64,
                        "renewal failed; retrying"
                    );
                    retry_at = Some(at);
                }
                Some(Err(e)) => {
                    telemetry::renewal_missed();
                    let reason = match &e {
                        Error::LeaseLost { reason, .. } => *reason,
                        Error::NotFound { .. } => LostReason::Deleted,
                        Error::Transient { .. } | Error::Throttled { .. } => LostReason::Expired,
                        _ => LostReason::RenewalRefused,
                    };
                    self.lose(reason, &e);
                }
            }
        };
        let Some(Command::Release(reply)) = command else {
            // The guard vanished without a word (cannot happen: Drop sends). Let it expire.
            return;
        };
        // Boxed, as the renewal above: a sleeping renewer stays small.
        let result = Box::pin(self.release()).await;
        if matches!(result, Ok(Released::Confirmed)) {
            tracing::info!(lock = %self.lease.lock(), "lock released");
        }
        self.publish(State::Released);
        if let Some(reply) = reply {
            let _ = reply.send(result);
        } else if let Err(e) = result {
            tracing::warn!(lock = %self.lease.lock(), error = %e, "release on drop failed");
        }
    }

    /// When to try renewing again after `failures` transient failures in a row, the last one
    /// `e` (a call that just ended), with the local deadline `until`.
    ///
    /// The wait is the retry policy's backoff, or what the service asked for (`Retry-After`) if
    /// longer, but never more than half the time left before the deadline (so that a long
    /// `Retry-After` still leaves several tries, each further apart than the service's pace
    /// would need, rather than one last try a moment before the deadline), and never less than
    /// [`MIN_RENEWAL_GAP`] after the failed call's last request: a throttled account never sees
    /// more than one renewal per second per lease.
    pub(super) fn retry_at(&self, e: &Error, failures: u32, until: Instant) -> Instant {
        let now = Instant::now();
        let wait = self
            .mutex
            .client()
            .options()
            .retry
            .backoff(failures)
            .max(e.retry_after().unwrap_or_default());
        let left = until.saturating_duration_since(now);
        let wait = wait.min((left / 2).max(MIN_RENEWAL_GAP));
        now.checked_add(wait.max(MIN_RENEWAL_GAP)).unwrap_or(until)
    }

    /// The release at the owner's request: a real one while held; after a loss a courtesy
    /// (bounded by the lease's own end) that reports the loss.
    pub(super) async fn release(&self) -> Result<Released, Error> {
        let lost_error = |reason| Error::LeaseLost {
            lock: self.lease.lock().to_string(),
            reason,
            service: None,
        };
        let now = Instant::now();
        let (validity, lost) = match *self.state.borrow() {
            State::Held(v) if v.holds(now, SystemTime::now()) => (v, None),
            State::Held(v) => (v, Some(LostReason::Expired)),
            State::Lost(r) => (Validity::of(self.lease.grant(), &self.options), Some(r)),
            State::Released => return Ok(Released::Confirmed),
        };
        let default = self.mutex.client().default_deadline();
        let deadline = validity.lease_end.map_or(default, |end| end.min(default));
        let definitely_not_ours = matches!(
            lost,
            Some(LostReason::IdMismatch | LostReason::NotPresent | LostReason::Deleted | LostReason::ReturnedOtherId)
        );
        if definitely_not_ours || deadline <= now {
            return Err(lost_error(lost.unwrap_or(LostReason::Expired)));
        }
        // A release is answered 200 on a *broken* lease too: only a renewal, sent after the
        // owner's work ended, shows that the lease was still ours (not broken, not taken) by
        // then. One request more per release; without it a break while the work ran would go
        // unnoticed.
        let lost = match lost {
            Some(reason) => Some(reason),
            None => {
                // No faster than one renewal request a second, the confirming one included.
                if let Some(gap_end) = self.last_attempt.and_then(|t| t.checked_add(MIN_RENEWAL_GAP)) {
                    sleep_until(gap_end.min(validity.until).into()).await;
                }
                let mut probe = self.lease.clone();
                match self.mutex.renew_until(&mut probe, validity.until).await {
                    Ok(_) => None,
                    Err(Error::LeaseLost { reason, .. }) => Some(reason),
                    Err(Error::NotFound { .. }) => Some(LostReason::Deleted),
                    Err(e) => {
                        tracing::debug!(lock = %self.lease.lock(), error = %e, "the renewal before the release failed");
                        Some(LostReason::Unconfirmed)
                    }
                }
            }
        };
        if matches!(
            lost,
            Some(LostReason::IdMismatch | LostReason::NotPresent | LostReason::Deleted | LostReason::ReturnedOtherId)
        ) {
            return Err(lost_error(lost.unwrap_or(LostReason::Expired)));
        }
        let result = self.mutex.release_until(&self.lease, deadline).await;
        // At this layer `Ok` means "held to the end": an unconfirmed release cannot say so.
        let result = match result {
            Ok(Released::Unconfirmed) => Err(lost_error(LostReason::Unconfirmed)),
            other => other,
        };
        match (result, lost) {
            (Ok(_), Some(reason)) => Err(lost_error(reason)),
            (Err(e), Some(reason)) => {
                tracing::debug!(lock = %self.lease.lock(), error = %e, "courtesy release after loss failed");
                Err(lost_error(reason))
            }
            (result, None) => result,
        }
    }
}

/// The deadline of one renewal call started now, with the local deadline `until`: one request
/// timeout, but never more than half the time left (at least a second, or what is left), so
/// that a request that stalls (an answer held up in the network) is abandoned and sent again
/// while the lease still holds, instead of using up the whole renewal budget. Abandoning a
/// renewal is safe: a renew is idempotent, and only a confirmed one extends the local deadline.
pub(super) fn attempt_deadline(mutex: &AzureMutex, until: Instant) -> Instant {
    let now = Instant::now();
    let left = until.saturating_duration_since(now);
    let budget = mutex
        .client()
        .options()
        .request_timeout
        .min((left / 2).max(left.min(Duration::from_secs(1))));
    now.checked_add(budget).unwrap_or(until).min(until)
}
