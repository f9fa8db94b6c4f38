//! [`Locker`]: waiting acquisition, background renewal and a lost-lock signal.
//!
//! A [`LockGuard`] owns a lease. A tokio task renews it (by default every third of the lease
//! duration); the guard's [`lost`](LockGuard::lost) future completes the moment the lock may no
//! longer be ours: at once on a definite answer (id mismatch, broken, deleted), or when no
//! renewal was confirmed by the local deadline minus a safety margin, counted from the *send*
//! time of the last successful request. Thousands of guards cost thousands of tasks, not threads.

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{oneshot, watch};
use tokio::time::sleep_until;

use crate::error::{Error, InvalidInput, LostReason};
use crate::mutex::{AzureMutex, Grant, HolderInfo, Lease};
use crate::types::{LeaseDuration, LeaseId, LockName};

/// How a [`Locker`] acquires and renews.
#[derive(Debug, Clone)]
pub struct LockerOptions {
    /// The lease duration (default 30 s). An infinite lease is never renewed and never expires
    /// locally: it is only lost through a definite answer.
    pub lease: LeaseDuration,
    /// How often to renew (default: a third of the lease).
    pub renew_every: Option<Duration>,
    /// How long before the local deadline the lock counts as lost when no renewal was confirmed
    /// (default 2 s). Covers timer lateness and clock-rate differences.
    pub safety_margin: Duration,
    /// First pause between attempts while waiting (default 100 ms).
    pub poll_initial: Duration,
    /// Longest pause between attempts while waiting (default 1 s). Each pause is jittered
    /// down to half of its value. See the `handoff` bench for what these defaults cost.
    pub poll_max: Duration,
    /// When the lock is busy, read the recorded holder once per wait and log it (default true;
    /// one extra request).
    pub report_holder: bool,
}

impl Default for LockerOptions {
    fn default() -> Self {
        Self {
            lease: LeaseDuration::seconds(30).unwrap_or(LeaseDuration::MIN),
            renew_every: None,
            safety_margin: Duration::from_secs(2),
            poll_initial: Duration::from_millis(100),
            poll_max: Duration::from_secs(1),
            report_holder: true,
        }
    }
}

impl LockerOptions {
    fn renew_interval(&self) -> Option<Duration> {
        let lease = self.lease.as_duration()?;
        Some(self.renew_every.unwrap_or(lease / 3))
    }

    fn check(&self) -> Result<(), InvalidInput> {
        if let Some(lease) = self.lease.as_duration() {
            let every = self.renew_interval().unwrap_or(lease);
            if every.is_zero() || every + self.safety_margin >= lease {
                return Err(InvalidInput::Option {
                    option: "renew_every",
                    why: format!(
                        "renewing every {every:?} with a {:?} safety margin leaves no time to renew a {lease:?} lease",
                        self.safety_margin
                    ),
                });
            }
        }
        if self.poll_initial.is_zero() || self.poll_max < self.poll_initial {
            return Err(InvalidInput::Option {
                option: "poll_initial",
                why: "must be non-zero and at most poll_max".into(),
            });
        }
        Ok(())
    }
}

/// Errors of the [`Locker`] layer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// The lock is held by someone else ([`Locker::try_lock`]).
    #[error("lock {lock:?} is busy{}", holder_suffix(.holder))]
    Busy {
        /// The lock.
        lock: String,
        /// The recorded holder, when known.
        holder: Option<HolderInfo>,
    },
    /// The wait timed out while the lock stayed busy.
    #[error("timed out after {:.1}s waiting for lock {lock:?}{}", .waited.as_secs_f64(), holder_suffix(.holder))]
    TimedOut {
        /// The lock.
        lock: String,
        /// How long we waited.
        waited: Duration,
        /// The recorded holder, when known.
        holder: Option<HolderInfo>,
    },
    /// The wait was cancelled.
    #[error("waiting for lock {lock:?} was cancelled")]
    Cancelled {
        /// The lock.
        lock: String,
    },
    /// The lock was lost while the caller's work ran.
    #[error("lock {lock:?} was lost: {reason}")]
    Lost {
        /// The lock.
        lock: String,
        /// Why.
        reason: LostReason,
    },
    /// A permanent error from the lease layer (authentication, invalid input, not found, …).
    #[error(transparent)]
    Storage(#[from] Error),
}

impl From<InvalidInput> for LockError {
    fn from(e: InvalidInput) -> Self {
        LockError::Storage(Error::InvalidInput(e))
    }
}

fn holder_suffix(h: &Option<HolderInfo>) -> String {
    match h {
        Some(h) => {
            let mut parts = Vec::new();
            if let Some(o) = &h.holder.owner {
                parts.push(o.clone());
            }
            if let Some(host) = &h.holder.host {
                parts.push(format!("host {host}"));
            }
            if let Some(pid) = h.holder.pid {
                parts.push(format!("pid {pid}"));
            }
            format!(" (held by {})", parts.join(", "))
        }
        None => String::new(),
    }
}

/// Acquires one named lock, waiting if asked, and hands out [`LockGuard`]s.
///
/// ```no_run
/// use azmutex::{AzureMutex, Locker, StorageConfig};
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let mutex = AzureMutex::builder(StorageConfig::development(), "locks").build()?;
/// let locker = Locker::new(mutex, "nightly-report")?;
/// let mut guard = locker.lock().await?;
/// // Stop working the moment the lock may be lost:
/// match guard.run(async { /* critical section */ 42 }).await {
///     Ok(answer) => println!("done: {answer}"),
///     Err(reason) => eprintln!("lock lost ({reason}); work cancelled"),
/// }
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Locker {
    mutex: AzureMutex,
    lock: LockName,
    options: LockerOptions,
}

enum Limit {
    Once,
    Until(Option<Instant>),
}

impl Locker {
    /// A locker for `lock` with default options.
    pub fn new(mutex: AzureMutex, lock: impl TryInto<LockName, Error = InvalidInput>) -> Result<Self, InvalidInput> {
        Self::with_options(mutex, lock, LockerOptions::default())
    }

    /// A locker for `lock` with `options` (checked here).
    pub fn with_options(
        mutex: AzureMutex,
        lock: impl TryInto<LockName, Error = InvalidInput>,
        options: LockerOptions,
    ) -> Result<Self, InvalidInput> {
        options.check()?;
        Ok(Self {
            mutex,
            lock: lock.try_into()?,
            options,
        })
    }

    /// The lock.
    pub fn lock_name(&self) -> &LockName {
        &self.lock
    }

    /// The mutex underneath.
    pub fn mutex(&self) -> &AzureMutex {
        &self.mutex
    }

    /// One attempt: the guard, or [`LockError::Busy`] at once. A transient failure (after the
    /// call's own retries) is returned as [`LockError::Storage`].
    pub async fn try_lock(&self) -> Result<LockGuard, LockError> {
        self.acquire(Limit::Once, std::future::pending()).await
    }

    /// Waits until the lock is ours. Permanent errors end the wait; transient ones are retried.
    pub async fn lock(&self) -> Result<LockGuard, LockError> {
        self.acquire(Limit::Until(None), std::future::pending()).await
    }

    /// Waits at most `timeout`, then [`LockError::TimedOut`].
    pub async fn lock_timeout(&self, timeout: Duration) -> Result<LockGuard, LockError> {
        self.acquire(Limit::Until(Some(Instant::now() + timeout)), std::future::pending())
            .await
    }

    /// Waits until the lock is ours or `cancel` completes ([`LockError::Cancelled`]).
    ///
    /// Cancelling (or dropping any of these futures) leaves no lease behind: an attempt in
    /// flight finishes in the background and releases what it got.
    pub async fn lock_until(
        &self,
        timeout: Option<Duration>,
        cancel: impl Future<Output = ()>,
    ) -> Result<LockGuard, LockError> {
        self.acquire(Limit::Until(timeout.map(|t| Instant::now() + t)), cancel)
            .await
    }

    /// Acquires the lock, runs `work` while it is held, and releases it. If the lock is lost
    /// first, `work` is dropped (cancelled) and the result is [`LockError::Lost`].
    pub async fn with_lock<T, Fut: Future<Output = T>>(
        &self,
        work: impl FnOnce(LeaseInfo) -> Fut,
    ) -> Result<T, LockError> {
        let mut guard = self.lock().await?;
        let info = LeaseInfo {
            lease_id: guard.lease_id(),
            fencing_token: guard.fencing_token(),
        };
        let result = guard.run(work(info)).await;
        let released = guard.release().await;
        let value = result.map_err(|reason| LockError::Lost {
            lock: self.lock.to_string(),
            reason,
        })?;
        released?;
        Ok(value)
    }

    /// Waits (at most `timeout`, if given) for the lock and returns the bare [`Lease`], with no
    /// renewal and no release on drop: for callers that manage the lease themselves, such as
    /// `azmutex acquire` in a script.
    pub async fn lock_detached(&self, timeout: Option<Duration>) -> Result<Lease, LockError> {
        let limit = Limit::Until(timeout.map(|t| Instant::now() + t));
        self.wait(limit, std::future::pending(), Detached).await
    }

    async fn acquire(&self, limit: Limit, cancel: impl Future<Output = ()>) -> Result<LockGuard, LockError> {
        self.wait(limit, cancel, Guarded).await
    }

    async fn wait<H: Handout>(
        &self,
        limit: Limit,
        cancel: impl Future<Output = ()>,
        handout: H,
    ) -> Result<H::Out, LockError> {
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter {
            mutex: self.mutex.clone(),
            lock: self.lock.clone(),
            options: self.options.clone(),
        };
        // The attempts run in their own task so that dropping this future never abandons a
        // request whose lease we would not hear of: the task releases what it gets if nobody
        // is listening any more.
        tokio::spawn(waiter.run(limit, tx, handout));
        tokio::select! {
            result = rx => result.unwrap_or_else(|_| Err(LockError::Cancelled { lock: self.lock.to_string() })),
            _ = cancel => Err(LockError::Cancelled { lock: self.lock.to_string() }),
        }
    }
}

/// The lease id and fencing token handed to [`Locker::with_lock`]'s work.
#[derive(Debug, Clone, Copy)]
pub struct LeaseInfo {
    /// The lease id.
    pub lease_id: LeaseId,
    /// The fencing token, when fencing is on.
    pub fencing_token: Option<u64>,
}

struct Waiter {
    mutex: AzureMutex,
    lock: LockName,
    options: LockerOptions,
}

/// What a wait hands out once the lease is ours.
trait Handout: Send + 'static {
    type Out: Send + 'static;
    fn wrap(&self, mutex: &AzureMutex, lease: Lease, options: &LockerOptions) -> Self::Out;
    /// Called when nobody takes the result any more.
    fn unclaimed(out: Self::Out, mutex: &AzureMutex) -> impl Future<Output = ()> + Send;
}

struct Guarded;
impl Handout for Guarded {
    type Out = LockGuard;
    fn wrap(&self, mutex: &AzureMutex, lease: Lease, options: &LockerOptions) -> LockGuard {
        LockGuard::start(mutex.clone(), lease, options)
    }
    async fn unclaimed(out: LockGuard, _: &AzureMutex) {
        drop(out); // its Drop releases the lease
    }
}

struct Detached;
impl Handout for Detached {
    type Out = Lease;
    fn wrap(&self, _: &AzureMutex, lease: Lease, _: &LockerOptions) -> Lease {
        lease
    }
    async fn unclaimed(out: Lease, mutex: &AzureMutex) {
        let _ = mutex.release(&out).await;
    }
}

impl Waiter {
    async fn run<H: Handout>(self, limit: Limit, mut tx: oneshot::Sender<Result<H::Out, LockError>>, handout: H) {
        let result = self.attempts(limit, &mut tx).await;
        let result = result.map(|lease| handout.wrap(&self.mutex, lease, &self.options));
        // If the receiver is gone, the result comes back here: give the lease back.
        if let Err(Ok(out)) = tx.send(result) {
            H::unclaimed(out, &self.mutex).await;
        }
    }

    async fn attempts<T>(
        &self,
        limit: Limit,
        tx: &mut oneshot::Sender<Result<T, LockError>>,
    ) -> Result<Lease, LockError> {
        let started = Instant::now();
        // One lease id for the whole wait: a retry whose first answer was lost is idempotent.
        let id = LeaseId::new_random();
        let mut holder: Option<HolderInfo> = None;
        let mut reported = false;
        let mut pause = self.options.poll_initial;
        loop {
            let call_deadline = self.mutex.client().default_deadline();
            let result = self
                .mutex
                .acquire_until(&self.lock, self.options.lease, id, call_deadline)
                .await;
            let failure = match result {
                Ok(lease) => return Ok(lease),
                Err(Error::Conflict { .. }) => {
                    if self.options.report_holder && !reported {
                        reported = true;
                        holder = self.mutex.inspect(&self.lock).await.ok().and_then(|i| i.holder);
                        tracing::info!(lock = %self.lock, holder = ?holder, "lock is busy; waiting");
                    }
                    None
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(lock = %self.lock, error = %e, "acquire failed; will retry");
                    Some(e)
                }
                Err(e) => return Err(e.into()),
            };
            // A transient failure may hide a lease granted to us whose answer never came.
            let maybe_granted = failure.is_some();
            let deadline = match limit {
                Limit::Once => {
                    self.cleanup(id, maybe_granted).await;
                    return Err(match failure {
                        Some(e) => e.into(),
                        None => LockError::Busy {
                            lock: self.lock.to_string(),
                            holder,
                        },
                    });
                }
                Limit::Until(d) => d,
            };
            let wake = Instant::now() + pause / 2 + (pause / 2).mul_f64(fastrand::f64());
            pause = (pause.mul_f64(1.5)).min(self.options.poll_max);
            let wake = deadline.map_or(wake, |d| wake.min(d));
            tokio::select! {
                _ = sleep_until(wake.into()) => {}
                _ = tx.closed() => {
                    self.cleanup(id, maybe_granted).await;
                    return Err(LockError::Cancelled { lock: self.lock.to_string() });
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                self.cleanup(id, maybe_granted).await;
                return Err(LockError::TimedOut {
                    lock: self.lock.to_string(),
                    waited: started.elapsed(),
                    holder,
                });
            }
        }
    }

    /// After a failed attempt whose answer never came, the lease may exist on the server:
    /// release it under our id (a mismatch answer just means it never did).
    async fn cleanup(&self, id: LeaseId, maybe_granted: bool) {
        if maybe_granted {
            let lease = Lease::resume(self.lock.clone(), id, self.options.lease);
            let _ = self.mutex.release(&lease).await;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Held under this grant, valid until its deadlines minus `margin` on both clocks.
    Held {
        grant: Grant,
        margin: Duration,
    },
    Lost(LostReason),
    Released,
}

enum Command {
    Release(Option<oneshot::Sender<Result<(), Error>>>),
}

/// Owns a lease: renews it in the background, tells when it is lost, releases it on
/// [`release`](LockGuard::release) or drop.
///
/// Dropping the guard stops renewal and releases the lease in the background on the runtime
/// that created it. If that runtime is gone, nothing is sent and the lease expires by itself
/// (after at most the lease duration; an infinite lease stays until broken).
pub struct LockGuard {
    lock: LockName,
    lease_id: LeaseId,
    fencing_token: Option<u64>,
    state: watch::Receiver<State>,
    commands: Option<oneshot::Sender<Command>>,
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("lock", &self.lock)
            .field("lease_id", &self.lease_id)
            .field("fencing_token", &self.fencing_token)
            .field("state", &*self.state.borrow())
            .finish()
    }
}

impl LockGuard {
    fn start(mutex: AzureMutex, lease: Lease, options: &LockerOptions) -> Self {
        let margin = options.safety_margin;
        let (state_tx, state_rx) = watch::channel(State::Held {
            grant: lease.grant(),
            margin,
        });
        let (cmd_tx, cmd_rx) = oneshot::channel();
        let guard = Self {
            lock: lease.lock().clone(),
            lease_id: lease.id(),
            fencing_token: lease.fencing_token(),
            state: state_rx,
            commands: Some(cmd_tx),
        };
        let renewer = Renewer {
            mutex,
            lease,
            state: state_tx,
            every: options.renew_interval(),
            margin,
        };
        tokio::spawn(renewer.run(cmd_rx));
        guard
    }

    /// The lock.
    pub fn lock_name(&self) -> &LockName {
        &self.lock
    }

    /// The lease id.
    pub fn lease_id(&self) -> LeaseId {
        self.lease_id
    }

    /// The fencing token, when the mutex has fencing on.
    pub fn fencing_token(&self) -> Option<u64> {
        self.fencing_token
    }

    /// Whether the lock is still ours: not lost, not released, and before the local deadline.
    /// Cheap (no I/O).
    pub fn is_held(&self) -> bool {
        match *self.state.borrow() {
            State::Held { grant, margin } => grant.is_valid(Instant::now(), SystemTime::now(), margin),
            _ => false,
        }
    }

    /// Why the lock was lost, if it was (including a passed local deadline).
    pub fn lost_reason(&self) -> Option<LostReason> {
        match *self.state.borrow() {
            State::Lost(r) => Some(r),
            State::Held { grant, margin } if !grant.is_valid(Instant::now(), SystemTime::now(), margin) => {
                Some(LostReason::Expired)
            }
            _ => None,
        }
    }

    /// A future that completes when the lock is lost, with the reason. It does not borrow the
    /// guard, so it can sit in a `tokio::select!` beside work that uses it. It never completes
    /// after a release.
    pub fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        let mut state = self.state.clone();
        async move {
            loop {
                let current = *state.borrow_and_update();
                match current {
                    State::Lost(r) => return r,
                    State::Released => std::future::pending::<()>().await,
                    State::Held { grant, margin } => {
                        // Fire at the local deadline even if the renewal task is late, and check
                        // the wall clock every second in case the machine slept.
                        let expiry = async {
                            let mut tick = tokio::time::interval(Duration::from_secs(1));
                            let monotonic = grant.deadline.map(|d| d.checked_sub(margin).unwrap_or(d));
                            loop {
                                tokio::select! {
                                    _ = async {
                                        match monotonic {
                                            Some(d) => sleep_until(d.into()).await,
                                            None => std::future::pending().await,
                                        }
                                    } => return,
                                    _ = tick.tick() => {
                                        if !grant.is_valid(Instant::now(), SystemTime::now(), margin) {
                                            return;
                                        }
                                    }
                                }
                            }
                        };
                        tokio::select! {
                            changed = state.changed() => {
                                if changed.is_err() {
                                    // The renewal task ended without a verdict: treat as lost.
                                    return LostReason::Expired;
                                }
                            }
                            _ = expiry => return LostReason::Expired,
                        }
                    }
                }
            }
        }
    }

    /// Runs `work` while the lock is held; if the lock is lost first, `work` is dropped
    /// (cancelled) and the reason returned.
    pub async fn run<F: Future>(&self, work: F) -> Result<F::Output, LostReason> {
        let lost = self.lost();
        tokio::select! {
            biased;
            reason = lost => Err(reason),
            out = work => Ok(out),
        }
    }

    /// Stops renewal and releases the lease (one request). Idempotent: later calls return
    /// `Ok(())`. After a loss it still tries to release (the lease may be ours on the server),
    /// and reports no error.
    pub async fn release(&mut self) -> Result<(), Error> {
        let Some(commands) = self.commands.take() else {
            return Ok(());
        };
        let (tx, rx) = oneshot::channel();
        if commands.send(Command::Release(Some(tx))).is_err() {
            return Ok(());
        }
        rx.await.unwrap_or(Ok(()))
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(commands) = self.commands.take() {
            let _ = commands.send(Command::Release(None));
        }
    }
}

struct Renewer {
    mutex: AzureMutex,
    lease: Lease,
    state: watch::Sender<State>,
    every: Option<Duration>,
    margin: Duration,
}

impl Renewer {
    async fn run(mut self, mut commands: oneshot::Receiver<Command>) {
        let command = loop {
            let current = *self.state.borrow();
            if let State::Lost(_) = current {
                // Lost: wait for the owner to release or drop.
                break (&mut commands).await.ok();
            }
            let Some(every) = self.every else {
                break (&mut commands).await.ok();
            };
            let next = self.lease.grant().sent_at + every;
            tokio::select! {
                _ = sleep_until(next.into()) => {}
                c = &mut commands => break c.ok(),
            }
            // Slept through the deadline (machine suspended)? Then the lock may be gone.
            if !self
                .lease
                .grant()
                .is_valid(Instant::now(), SystemTime::now(), self.margin)
            {
                tracing::warn!(lock = %self.lease.lock(), "lock lost: the local deadline passed before renewal");
                self.state.send_replace(State::Lost(LostReason::Expired));
                continue;
            }
            // Renew; give up at the local deadline minus the margin.
            let valid_until = self.lease.deadline().map(|d| d - self.margin).unwrap_or(next + every);
            let outcome = tokio::select! {
                r = self.mutex.renew_until(&mut self.lease, valid_until) => Some(r),
                _ = sleep_until(valid_until.into()) => None,
                c = &mut commands => break c.ok(),
            };
            match outcome {
                Some(Ok(grant)) => {
                    self.state.send_replace(State::Held {
                        grant,
                        margin: self.margin,
                    });
                }
                Some(Err(e)) => {
                    let reason = match &e {
                        Error::LeaseLost { reason, .. } => *reason,
                        Error::NotFound { .. } => LostReason::Deleted,
                        Error::Transient { .. } | Error::Throttled { .. } => LostReason::Expired,
                        _ => LostReason::RenewalRefused,
                    };
                    tracing::warn!(lock = %self.lease.lock(), error = %e, "lock lost");
                    self.state.send_replace(State::Lost(reason));
                }
                None => {
                    tracing::warn!(lock = %self.lease.lock(), "lock lost: no renewal confirmed before the local deadline");
                    self.state.send_replace(State::Lost(LostReason::Expired));
                }
            }
        };
        let Some(Command::Release(reply)) = command else {
            // The guard vanished without a word (cannot happen: Drop sends). Let it expire.
            return;
        };
        let current = *self.state.borrow();
        let lost = match current {
            State::Lost(r) => Some(r),
            _ => None,
        };
        let definitely_not_ours = matches!(
            lost,
            Some(LostReason::IdMismatch | LostReason::NotPresent | LostReason::Deleted | LostReason::ReturnedOtherId)
        );
        let result = if definitely_not_ours {
            Ok(())
        } else {
            let result = self.mutex.release(&self.lease).await;
            match (result, lost) {
                // After a loss, releasing is a courtesy: report nothing.
                (Err(e), Some(_)) => {
                    tracing::debug!(lock = %self.lease.lock(), error = %e, "release after loss failed (ignored)");
                    Ok(())
                }
                (result, _) => result,
            }
        };
        self.state.send_replace(State::Released);
        if let Some(reply) = reply {
            let _ = reply.send(result);
        } else if let Err(e) = result {
            tracing::warn!(lock = %self.lease.lock(), error = %e, "release on drop failed; the lease will expire");
        }
    }
}
