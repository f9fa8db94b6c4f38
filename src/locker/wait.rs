//! Waiting for a lock: attempts, polling, giving up, and cleanup after a cancelled wait.

use super::*;

pub(super) struct Waiter {
    pub(super) mutex: AzureMutex,
    pub(super) lock: LockName,
    pub(super) options: LockerOptions,
}

/// What a wait hands out once the lease is ours.
pub(super) trait Handout: Send + 'static {
    type Out: Send + 'static;
    fn wrap(&self, mutex: &AzureMutex, lease: Lease, options: &LockerOptions) -> Self::Out;
    /// Called when nobody takes the result any more: gives the lease back (bounded).
    fn unclaimed(out: Self::Out, mutex: &AzureMutex) -> impl Future<Output = ()> + Send;
}

pub(super) struct Guarded;
impl Handout for Guarded {
    type Out = LockGuard;
    fn wrap(&self, mutex: &AzureMutex, lease: Lease, options: &LockerOptions) -> LockGuard {
        LockGuard::start(mutex.clone(), lease, options)
    }
    async fn unclaimed(mut out: LockGuard, _: &AzureMutex) {
        let _ = tokio::time::timeout(CLEANUP_TIMEOUT, out.release()).await;
    }
}

pub(super) struct Detached;
impl Handout for Detached {
    type Out = Lease;
    fn wrap(&self, _: &AzureMutex, lease: Lease, _: &LockerOptions) -> Lease {
        lease
    }
    async fn unclaimed(out: Lease, mutex: &AzureMutex) {
        let _ = mutex.release_until(&out, cleanup_deadline(mutex, None)).await;
    }
}

/// `now + d`, or `None` (no limit) when that is beyond what the clock can represent.
pub(super) fn deadline_in(d: Duration) -> Option<Instant> {
    Instant::now().checked_add(d)
}

/// The deadline of a cleanup release started now: a few seconds, and never more than a few
/// seconds past the wait's own limit (so that a wait overruns its limit by one bounded request
/// at most, however many cleanups it needs).
pub(super) fn cleanup_deadline(mutex: &AzureMutex, limit: Option<Instant>) -> Instant {
    let now = Instant::now();
    let budget = CLEANUP_TIMEOUT.min(mutex.client().options().retry.call_timeout);
    let soon = now.checked_add(budget).unwrap_or(now);
    match limit.and_then(|l| l.checked_add(budget)) {
        Some(end) => soon.min(end),
        None => soon,
    }
}

impl Waiter {
    pub(super) async fn run<H: Handout>(
        self,
        limit: Limit,
        mut tx: oneshot::Sender<Result<H::Out, LockError>>,
        handout: H,
    ) {
        let result = self.attempts(limit, &mut tx).await;
        let result = result.map(|lease| handout.wrap(&self.mutex, lease, &self.options));
        // If the receiver is gone, the result comes back here: give the lease back.
        if let Err(Ok(out)) = tx.send(result) {
            H::unclaimed(out, &self.mutex).await;
        }
    }

    pub(super) async fn attempts<T>(
        &self,
        limit: Limit,
        tx: &mut oneshot::Sender<Result<T, LockError>>,
    ) -> Result<Lease, LockError> {
        let started = Instant::now();
        // One lease id for the whole wait: a retry whose first answer was lost is idempotent,
        // so only the last attempt can have left a lease we did not hear of.
        let id = LeaseId::new_random();
        let limit_deadline = match limit {
            Limit::Once => None,
            Limit::Until(d) => d,
        };
        let mut holder: Option<HolderInfo> = None;
        let mut reported = false;
        let mut pause = self.options.poll_initial;
        let mut failing_since: Option<Instant> = None;
        let mut attempts_made = 0u32;
        // Whether the last attempt that got an answer found the lock busy: an attempt cut short
        // by the wait's own limit then says nothing about storage (the wait timed out).
        let mut last_answer_busy = false;
        loop {
            let attempt_started = Instant::now();
            // The first attempt is a whole one, whatever the limit: it may run for one normal
            // request timeout (a first acquire may take several requests: container, blob,
            // fencing token), so that a wait of zero is "do not wait", not "fail". Later
            // attempts do not run past the limit.
            let default = self.mutex.client().default_deadline();
            let whole = attempt_started
                .checked_add(self.mutex.client().options().request_timeout)
                .unwrap_or(default)
                .min(default);
            let mut call_deadline = match limit_deadline {
                Some(d) if attempts_made == 0 => d.max(whole).min(default),
                Some(d) => d.min(default),
                None => default,
            };
            // With `give_up_after`, giving up (attempt and cleanup together) happens within it:
            // the attempt leaves a quarter of it (at most the cleanup timeout) for the cleanup.
            let patience = self.patience(failing_since.unwrap_or(attempt_started));
            if let Some((stop_trying, _)) = patience {
                call_deadline = call_deadline.min(stop_trying);
            }
            let attempt =
                self.mutex
                    .acquire_attempt(&self.lock, self.options.lease, id, call_deadline, attempts_made == 0);
            let result = tokio::select! {
                r = attempt => r,
                _ = tx.closed() => {
                    // Abandoned in flight: the lease may be ours on the server, or become ours
                    // when a request still on its way arrives.
                    self.cleanup_in_flight(id, attempt_started, limit_deadline).await;
                    return Err(LockError::Cancelled { lock: self.lock.to_string() });
                }
            };
            attempts_made += 1;
            let cut_by_limit = limit_deadline.is_some_and(|d| call_deadline >= d && Instant::now() >= d);
            let failure = match result {
                Ok(lease) => {
                    // Hand out only a lease that is still valid with the margin in hand (the
                    // fencing/holder write after the acquire took time).
                    let validity = Validity::of(lease.grant(), &self.options);
                    if validity.holds(Instant::now(), SystemTime::now()) {
                        tracing::info!(
                            lock = %self.lock,
                            fencing_token = lease.fencing_token().map_or("-".into(), |t| t.to_string()),
                            waited_ms = started.elapsed().as_millis() as u64,
                            "lock acquired"
                        );
                        return Ok(lease);
                    }
                    tracing::warn!(lock = %self.lock, "acquired too late to use (past the local deadline); releasing");
                    let _ = self
                        .mutex
                        .release_until(&lease, cleanup_deadline(&self.mutex, limit_deadline))
                        .await;
                    None
                }
                Err(Error::Conflict { .. }) => {
                    last_answer_busy = true;
                    if self.options.report_holder && !reported {
                        reported = true;
                        let left = call_deadline.saturating_duration_since(Instant::now());
                        holder = tokio::time::timeout(left, self.mutex.inspect(&self.lock))
                            .await
                            .ok()
                            .and_then(|r| r.ok())
                            .and_then(|i| i.holder);
                        tracing::info!(lock = %self.lock, holder = ?holder, "lock is busy; waiting");
                    }
                    None
                }
                Err(e) if e.is_transient() => {
                    if !cut_by_limit {
                        last_answer_busy = false;
                        tracing::warn!(lock = %self.lock, error = %e, "acquire failed; will retry");
                    }
                    Some(e)
                }
                // Lost between the acquire and its fencing/holder write (broken, taken,
                // deleted): nothing ran under it; someone else has the lock, as if busy.
                Err(e @ Error::LeaseLost { .. }) => {
                    tracing::info!(lock = %self.lock, error = %e, "lost while acquiring; waiting");
                    None
                }
                Err(e) => return Err(e.into()),
            };
            // A transient failure may hide a lease granted to us whose answer never came.
            let maybe_granted = failure.is_some();
            failing_since = failure.as_ref().map(|_| failing_since.unwrap_or(attempt_started));
            let patience = failing_since.and_then(|since| self.patience(since));
            if let (Some((stop_trying, end)), Some(e)) = (patience, &failure) {
                if Instant::now() >= stop_trying {
                    if maybe_granted {
                        let lease = Lease::resume(self.lock.clone(), id, self.options.lease);
                        let until = cleanup_deadline(&self.mutex, limit_deadline).min(end);
                        let _ = self.mutex.release_until(&lease, until).await;
                    }
                    return Err(e.clone().into());
                }
            }
            let Limit::Until(deadline) = limit else {
                self.cleanup(id, maybe_granted, limit_deadline).await;
                return Err(match failure {
                    Some(e) => e.into(),
                    None => LockError::Busy {
                        lock: self.lock.to_string(),
                        holder,
                    },
                });
            };
            let now = Instant::now();
            let jittered = pause / 2 + (pause / 2).mul_f64(fastrand::f64());
            pause = pause.mul_f64(1.5).min(self.options.poll_max);
            // A service that asked to wait (`Retry-After` on the last answer) is not asked again
            // sooner, whatever the polling pace (the wait's own limit still wins).
            let jittered = jittered.max(failure.as_ref().and_then(Error::retry_after).unwrap_or_default());
            let wake = now.checked_add(jittered).unwrap_or(now);
            let wake = deadline.map_or(wake, |d| wake.min(d));
            // Failing storage: wake no later than when patience runs out.
            let wake = patience.map_or(wake, |(stop_trying, _)| wake.min(stop_trying));
            tokio::select! {
                _ = sleep_until(wake.into()) => {}
                _ = tx.closed() => {
                    self.cleanup(id, maybe_granted, limit_deadline).await;
                    return Err(LockError::Cancelled { lock: self.lock.to_string() });
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                self.cleanup(id, maybe_granted, limit_deadline).await;
                // Storage failing at the end is a storage error, not a busy lock; an attempt cut
                // short by the limit after a busy answer is the wait timing out.
                return Err(match failure {
                    Some(e) if !(cut_by_limit && last_answer_busy) => e.into(),
                    _ => LockError::TimedOut {
                        lock: self.lock.to_string(),
                        waited: started.elapsed(),
                        holder,
                    },
                });
            }
        }
    }

    /// With [`LockerOptions::give_up_after`] and storage failing since `since`: when to stop
    /// trying, and when giving up (the cleanup included) must be over. The cleanup keeps a
    /// quarter of the patience, at most the cleanup timeout.
    pub(super) fn patience(&self, since: Instant) -> Option<(Instant, Instant)> {
        let patience = self.options.give_up_after?;
        let end = since.checked_add(patience)?;
        let reserve = (patience / 4).min(CLEANUP_TIMEOUT);
        Some((end.checked_sub(reserve).unwrap_or(end), end))
    }

    /// After a failed attempt whose answer never came, the lease may exist on the server:
    /// release it under our id (a mismatch answer just means it never did). Bounded.
    /// Cleanup after a wait abandoned while an attempt was in flight: release at once, and, if
    /// the attempt's request may still be on its way (sent less than one request timeout ago:
    /// held by a slow network or a proxy), release again once that window has passed, so that
    /// an acquire arriving after the first release does not strand a lease nobody holds. Bounded
    /// by the cleanup deadline.
    pub(super) async fn cleanup_in_flight(&self, id: LeaseId, attempt_started: Instant, limit: Option<Instant>) {
        let deadline = cleanup_deadline(&self.mutex, limit);
        let lease = Lease::resume(self.lock.clone(), id, self.options.lease);
        let _ = self.mutex.release_until(&lease, deadline).await;
        let window_end = attempt_started
            .checked_add(self.mutex.client().options().request_timeout)
            .unwrap_or(attempt_started);
        if Instant::now() < window_end {
            // Leave room for the second release itself.
            let room = Duration::from_millis(500);
            let wake = window_end.min(deadline.checked_sub(room).unwrap_or(deadline));
            tokio::time::sleep_until(wake.into()).await;
            let _ = self.mutex.release_until(&lease, deadline).await;
        }
    }

    pub(super) async fn cleanup(&self, id: LeaseId, maybe_granted: bool, limit: Option<Instant>) {
        if maybe_granted {
            let lease = Lease::resume(self.lock.clone(), id, self.options.lease);
            let _ = self
                .mutex
                .release_until(&lease, cleanup_deadline(&self.mutex, limit))
                .await;
        }
    }
}
