//! [`Locker`]: waiting acquisition, background renewal and a lost-lock signal.
//!
//! A [`LockGuard`] owns a lease. A tokio task renews it (by default every third of the lease
//! duration); the guard's [`lost`](LockGuard::lost) future completes the moment the lock may no
//! longer be ours: at once on a definite answer (id mismatch, broken, deleted), or when no
//! renewal was confirmed by the local deadline minus a safety margin, counted from the *send*
//! time of the last successful request. Thousands of guards cost thousands of tasks, not threads.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{oneshot, watch};
use tokio::time::sleep_until;

use crate::error::{Error, InvalidInput, LostReason};
use crate::mutex::{AzureMutex, Grant, HolderInfo, Lease, Released};
use crate::types::{LeaseDuration, LeaseId, LockName};

/// How a [`Locker`] acquires and renews.
#[derive(Debug, Clone)]
pub struct LockerOptions {
    /// The lease duration (default 30 s). An infinite lease is probed (renewed) like a fixed one
    /// and counts as held for [`INFINITE_LEASE_WINDOW`] after its last confirmed probe, so a
    /// break is noticed within one renewal interval.
    pub lease: LeaseDuration,
    /// How often to renew (default: a third of the lease, or of [`INFINITE_LEASE_WINDOW`]).
    pub renew_every: Option<Duration>,
    /// How long before the local deadline the lock counts as lost when no renewal was confirmed
    /// (default 2 s, at least [`MIN_SAFETY_MARGIN`]). Covers timer lateness and clock-rate
    /// differences.
    pub safety_margin: Duration,
    /// First pause between attempts while waiting (default 100 ms).
    pub poll_initial: Duration,
    /// Longest pause between attempts while waiting (default 1 s). Each pause is jittered
    /// down to half of its value. See the `handoff` bench for what these defaults cost.
    pub poll_max: Duration,
    /// When the lock is busy, read the recorded holder once per wait and log it (default true;
    /// one extra request).
    pub report_holder: bool,
    /// Stop waiting with the storage error once acquire attempts have been failing (network,
    /// timeouts, throttling) for this long without a break (default `None`: keep trying until
    /// the wait's own limit).
    pub give_up_after: Option<Duration>,
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
            give_up_after: None,
        }
    }
}

impl LockerOptions {
    /// How long a grant is trusted locally: the lease duration, or [`INFINITE_LEASE_WINDOW`]
    /// after the last confirmed probe of an infinite lease.
    fn window(&self) -> Duration {
        self.lease.as_duration().unwrap_or(INFINITE_LEASE_WINDOW)
    }

    /// How often to renew (or probe an infinite lease).
    fn renew_interval(&self) -> Duration {
        self.renew_every.unwrap_or(self.window() / 3)
    }

    /// Checks that the numbers fit together: renewing at `renew_every` must leave time before
    /// the local deadline (`lease - safety_margin`), and the margin must be at least
    /// [`MIN_SAFETY_MARGIN`].
    pub fn check(&self) -> Result<(), InvalidInput> {
        let window = self.window();
        let every = self.renew_interval();
        let margin = self.safety_margin;
        if margin < MIN_SAFETY_MARGIN {
            return Err(InvalidInput::Option {
                option: "safety_margin",
                why: format!(
                    "{margin:?} is below the minimum of {MIN_SAFETY_MARGIN:?} \
                     (timer lateness and clock-rate differences need room)"
                ),
            });
        }
        let fits = every.checked_add(margin).is_some_and(|used| used < window);
        if every.is_zero() || !fits {
            return Err(InvalidInput::Option {
                option: "renew_every",
                why: format!(
                    "renewing every {every:?} with a {margin:?} safety margin leaves no time to renew a \
                     {window:?} lease (need 0 < renew_every + safety_margin < lease)"
                ),
            });
        }
        if self.poll_initial.is_zero() || self.poll_max < self.poll_initial || self.poll_max > MAX_POLL {
            return Err(InvalidInput::Option {
                option: "poll_initial",
                why: format!("must be non-zero and at most poll_max, itself at most {MAX_POLL:?}"),
            });
        }
        Ok(())
    }
}

/// How long an infinite lease counts as held after its last confirmed probe (a renew request,
/// which the service accepts on infinite leases): the longest fixed lease. A [`Locker`] probes
/// infinite leases every third of this by default, so a break is noticed within one interval.
pub const INFINITE_LEASE_WINDOW: Duration = Duration::from_secs(60);

/// The smallest [`LockerOptions::safety_margin`] accepted.
pub const MIN_SAFETY_MARGIN: Duration = Duration::from_secs(1);

/// The longest pause between attempts accepted in [`LockerOptions::poll_max`].
const MAX_POLL: Duration = Duration::from_secs(3600);

pub use crate::mutex::MIN_RENEWAL_GAP;

/// When the service asks a renewal to wait (`Retry-After`) past the local deadline, one last
/// attempt starts this long before the deadline instead of none.
const FINAL_TRY_LEAD: Duration = Duration::from_secs(1);

/// How long cancelling a wait may spend releasing a lease the abandoned attempt may have got.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

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
        self.acquire(Limit::Until(deadline_in(timeout)), std::future::pending())
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
        self.acquire(Limit::Until(timeout.and_then(deadline_in)), cancel).await
    }

    /// Acquires the lock, runs `work` while it is held, and releases it. If the lock is lost
    /// first, `work` is dropped (cancelled) and the result is [`LockError::Lost`]. `Ok` means
    /// the lock was ours until `work` ended: if the release shows it was not (someone else
    /// holds it), or cannot confirm it ([`Released::Unconfirmed`]), the result is
    /// [`LockError::Lost`] too, although `work` completed.
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
        let lost = |reason| LockError::Lost {
            lock: self.lock.to_string(),
            reason,
        };
        let value = result.map_err(lost)?;
        match released {
            Ok(Released::Confirmed) => Ok(value),
            // (The guard reports an unconfirmed release as a loss already.)
            Ok(Released::Unconfirmed) => Err(lost(LostReason::Unconfirmed)),
            Err(Error::LeaseLost { reason, .. }) => Err(lost(reason)),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits (at most `timeout`, if given) for the lock and returns the bare [`Lease`], with no
    /// renewal and no release on drop: for callers that manage the lease themselves, such as
    /// `azmutex acquire` in a script.
    pub async fn lock_detached(&self, timeout: Option<Duration>) -> Result<Lease, LockError> {
        let limit = Limit::Until(timeout.and_then(deadline_in));
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
        let (tx, mut rx) = oneshot::channel();
        let waiter = Waiter {
            mutex: self.mutex.clone(),
            lock: self.lock.clone(),
            options: self.options.clone(),
        };
        // The attempts run in their own task so that dropping this future never abandons a
        // request whose lease we would not hear of: the task releases what it gets if nobody
        // is listening any more.
        let task = tokio::spawn(waiter.run(limit, tx, handout));
        let cancelled = || LockError::Cancelled {
            lock: self.lock.to_string(),
        };
        tokio::select! {
            result = &mut rx => result.unwrap_or_else(|_| Err(cancelled())),
            _ = cancel => {
                // Stop the waiter and wait (bounded) until it has released whatever its attempt in
                // flight may have got, so that a caller about to exit leaves no lease behind.
                rx.close();
                let cleanup = async {
                    let _ = task.await;
                    if let Ok(Ok(out)) = rx.try_recv() {
                        H::unclaimed(out, &self.mutex).await;
                    }
                };
                if tokio::time::timeout(CLEANUP_TIMEOUT + Duration::from_secs(1), cleanup).await.is_err() {
                    tracing::warn!(lock = %self.lock, "cleanup after a cancelled wait did not finish in time; a lease may expire by itself");
                }
                Err(cancelled())
            }
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
    /// Called when nobody takes the result any more: gives the lease back (bounded).
    fn unclaimed(out: Self::Out, mutex: &AzureMutex) -> impl Future<Output = ()> + Send;
}

struct Guarded;
impl Handout for Guarded {
    type Out = LockGuard;
    fn wrap(&self, mutex: &AzureMutex, lease: Lease, options: &LockerOptions) -> LockGuard {
        LockGuard::start(mutex.clone(), lease, options)
    }
    async fn unclaimed(mut out: LockGuard, _: &AzureMutex) {
        let _ = tokio::time::timeout(CLEANUP_TIMEOUT, out.release()).await;
    }
}

struct Detached;
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
fn deadline_in(d: Duration) -> Option<Instant> {
    Instant::now().checked_add(d)
}

/// The deadline of a cleanup release started now: a few seconds, and never more than a few
/// seconds past the wait's own limit (so that a wait overruns its limit by one bounded request
/// at most, however many cleanups it needs).
fn cleanup_deadline(mutex: &AzureMutex, limit: Option<Instant>) -> Instant {
    let now = Instant::now();
    let budget = CLEANUP_TIMEOUT.min(mutex.client().options().retry.call_timeout);
    let soon = now.checked_add(budget).unwrap_or(now);
    match limit.and_then(|l| l.checked_add(budget)) {
        Some(end) => soon.min(end),
        None => soon,
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
            let attempt = self
                .mutex
                .acquire_until(&self.lock, self.options.lease, id, call_deadline);
            let result = tokio::select! {
                r = attempt => r,
                _ = tx.closed() => {
                    // Abandoned in flight: the lease may be ours on the server.
                    self.cleanup(id, true, limit_deadline).await;
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
    fn patience(&self, since: Instant) -> Option<(Instant, Instant)> {
        let patience = self.options.give_up_after?;
        let end = since.checked_add(patience)?;
        let reserve = (patience / 4).min(CLEANUP_TIMEOUT);
        Some((end.checked_sub(reserve).unwrap_or(end), end))
    }

    /// After a failed attempt whose answer never came, the lease may exist on the server:
    /// release it under our id (a mismatch answer just means it never did). Bounded.
    async fn cleanup(&self, id: LeaseId, maybe_granted: bool, limit: Option<Instant>) {
        if maybe_granted {
            let lease = Lease::resume(self.lock.clone(), id, self.options.lease);
            let _ = self
                .mutex
                .release_until(&lease, cleanup_deadline(&self.mutex, limit))
                .await;
        }
    }
}

/// Until when a grant is trusted locally: its send time plus the lease (or, for an infinite
/// lease, [`INFINITE_LEASE_WINDOW`]) minus the safety margin, on the monotonic clock and on the
/// wall clock (which keeps counting while the machine sleeps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Validity {
    until: Instant,
    wall_until: SystemTime,
    /// The server-side end of the lease: no request for it is useful after this.
    lease_end: Option<Instant>,
}

impl Validity {
    fn of(grant: Grant, options: &LockerOptions) -> Self {
        let span = options.window().saturating_sub(options.safety_margin);
        Self {
            // On overflow the grant counts as already invalid: never trust what cannot be computed.
            until: grant.sent_at.checked_add(span).unwrap_or(grant.sent_at),
            wall_until: grant.sent_at_wall.checked_add(span).unwrap_or(grant.sent_at_wall),
            lease_end: grant.deadline,
        }
    }

    fn holds(&self, now: Instant, wall_now: SystemTime) -> bool {
        now < self.until && wall_now < self.wall_until
    }
}

/// The renewer's state. Transitions: `Held → Held` (a renewal confirmed in time),
/// `Held → Lost` (a definite answer, or the local deadline), `Held | Lost → Released`.
/// `Lost` is final: nothing turns it back into `Held`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Held(Validity),
    Lost(LostReason),
    Released,
}

enum Command {
    Release(Option<oneshot::Sender<Result<Released, Error>>>),
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
    released: Option<Result<Released, Error>>,
    /// Set by whoever first sees the local deadline pass (the guard, a `lost()` future, the
    /// renewer): from then on the lock counts as lost even if a clock steps back.
    lapsed: Arc<AtomicBool>,
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
        let (state_tx, state_rx) = watch::channel(State::Held(Validity::of(lease.grant(), options)));
        let (cmd_tx, cmd_rx) = oneshot::channel();
        let guard = Self {
            lock: lease.lock().clone(),
            lease_id: lease.id(),
            fencing_token: lease.fencing_token(),
            state: state_rx,
            commands: Some(cmd_tx),
            released: None,
            lapsed: Arc::default(),
        };
        let renewer = Renewer {
            mutex,
            lease,
            state: state_tx,
            options: options.clone(),
            lapsed: guard.lapsed.clone(),
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

    /// Whether the lock is still ours: not lost, not released, before the local deadline on
    /// both clocks, and the renewal task alive. Cheap (no I/O).
    pub fn is_held(&self) -> bool {
        self.lost_reason().is_none() && matches!(*self.state.borrow(), State::Held(_))
    }

    /// Why the lock was lost, if it was (including a passed local deadline and a renewal task
    /// that stopped without a verdict, both [`LostReason::Expired`]).
    pub fn lost_reason(&self) -> Option<LostReason> {
        let renewer_gone = self.state.has_changed().is_err();
        match *self.state.borrow() {
            State::Lost(r) => Some(r),
            State::Held(v)
                if self.lapsed.load(Ordering::SeqCst)
                    || renewer_gone
                    || !v.holds(Instant::now(), SystemTime::now()) =>
            {
                self.lapsed.store(true, Ordering::SeqCst);
                Some(LostReason::Expired)
            }
            _ => None,
        }
    }

    /// The local deadline: until when the lock counts as held unless a renewal is confirmed
    /// first (the lease's end counted from the *send* time of the last confirmed request, minus
    /// the safety margin). It moves forward with every confirmed renewal; `None` once the lock
    /// is lost or released. A supervisor that must stop work by the lease's end can arm its
    /// own timer with it (see [`LockGuard::changed`]).
    pub fn valid_until(&self) -> Option<Instant> {
        if self.lost_reason().is_some() {
            return None;
        }
        match *self.state.borrow() {
            State::Held(v) => Some(v.until),
            _ => None,
        }
    }

    /// A future that completes at the guard's next change: a renewal confirmed (a new
    /// [`valid_until`](LockGuard::valid_until)), the lock lost, or released. Changes before
    /// this call do not count: call it, then read `valid_until`, then await it, and no change
    /// is missed. It does not borrow the guard.
    pub fn changed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut state = self.state.clone();
        state.borrow_and_update();
        async move {
            // An ended renewal task is a change too (the lock counts as lost).
            let _ = state.changed().await;
        }
    }

    /// A future that completes when the lock is lost, with the reason. It does not borrow the
    /// guard, so it can sit in a `tokio::select!` beside work that uses it. It never completes
    /// after a release.
    pub fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        let mut state = self.state.clone();
        let lapsed = self.lapsed.clone();
        async move {
            loop {
                let current = *state.borrow_and_update();
                if lapsed.load(Ordering::SeqCst) && matches!(current, State::Held(_)) {
                    return LostReason::Expired;
                }
                let validity = match current {
                    State::Lost(r) => return r,
                    State::Released => std::future::pending::<Validity>().await,
                    State::Held(v) => v,
                };
                // Fire at the local deadline even if the renewal task is late, and check the
                // wall clock every second in case the machine slept.
                let expiry = async {
                    let mut tick = tokio::time::interval(Duration::from_secs(1));
                    loop {
                        tokio::select! {
                            _ = sleep_until(validity.until.into()) => return,
                            _ = tick.tick() => {
                                if !validity.holds(Instant::now(), SystemTime::now()) {
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
                    _ = expiry => {
                        lapsed.store(true, Ordering::SeqCst);
                        return LostReason::Expired;
                    }
                }
            }
        }
    }

    /// Runs `work` while the lock is held; if the lock is lost first, `work` is dropped
    /// (cancelled) and the reason returned. Also `Err` if `work` completed but the lock was no
    /// longer held when it did.
    pub async fn run<F: Future>(&self, work: F) -> Result<F::Output, LostReason> {
        let lost = self.lost();
        let out = tokio::select! {
            biased;
            reason = lost => return Err(reason),
            out = work => out,
        };
        match self.lost_reason() {
            Some(reason) => Err(reason),
            None => Ok(out),
        }
    }

    /// Stops renewal and releases the lease (one request, bounded by the lease's own end).
    ///
    /// `Ok` (always [`Released::Confirmed`]) only if the service confirmed that the lock was
    /// ours until the release. [`Error::LeaseLost`] when the lock had been lost (noticed before,
    /// or shown by the release's answer), or with [`LostReason::Unconfirmed`] when an earlier
    /// attempt's answer was lost and the retry found the lease gone (see
    /// [`AzureMutex::release`]); a lease that may still be ours on the server is released all
    /// the same. Other errors (network) mean the lease will expire by itself. Idempotent: later
    /// calls return the first call's result.
    pub async fn release(&mut self) -> Result<Released, Error> {
        if let Some(done) = &self.released {
            return done.clone();
        }
        let result = match self.commands.take() {
            None => Ok(Released::Confirmed),
            Some(commands) => {
                let (tx, rx) = oneshot::channel();
                if commands.send(Command::Release(Some(tx))).is_err() {
                    Err(self.lost_error(LostReason::Expired))
                } else {
                    rx.await.unwrap_or_else(|_| Err(self.lost_error(LostReason::Expired)))
                }
            }
        };
        self.released = Some(result.clone());
        result
    }

    fn lost_error(&self, reason: LostReason) -> Error {
        Error::LeaseLost {
            lock: self.lock.to_string(),
            reason,
            service: None,
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(commands) = self.commands.take() {
            let _ = commands.send(Command::Release(None));
        }
    }
}

/// The background task of a [`LockGuard`]: the state machine of [`State`].
struct Renewer {
    mutex: AzureMutex,
    lease: Lease,
    state: watch::Sender<State>,
    options: LockerOptions,
    lapsed: Arc<AtomicBool>,
}

impl Renewer {
    /// Publishes `next` unless the state is final for it (lost stays lost; released stays).
    fn publish(&self, next: State) {
        self.state.send_if_modified(|current| {
            let allowed = match (*current, next) {
                (State::Released, _) => false,
                (State::Lost(_), State::Released) => true,
                (State::Lost(_), _) => false,
                _ => true,
            };
            if allowed {
                *current = next;
            }
            allowed
        });
    }

    fn lose(&self, reason: LostReason, why: &dyn fmt::Display) {
        tracing::warn!(lock = %self.lease.lock(), %reason, "lock lost: {why}");
        self.publish(State::Lost(reason));
    }

    async fn run(mut self, mut commands: oneshot::Receiver<Command>) {
        let every = self.options.renew_interval();
        // After a transient failure: when to try again, and how many failed in a row.
        let mut retry_at: Option<Instant> = None;
        let mut failures = 0u32;
        let command = loop {
            let current = *self.state.borrow();
            let State::Held(validity) = current else {
                // Lost: wait for the owner to release or drop.
                break (&mut commands).await.ok();
            };
            let next = match retry_at {
                Some(at) => at,
                None => self.lease.grant().sent_at.checked_add(every).unwrap_or(validity.until),
            };
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
            // Renew; give up at the local deadline.
            let outcome = tokio::select! {
                r = self.mutex.renew_until(&mut self.lease, validity.until) => Some(r),
                _ = sleep_until(validity.until.into()) => None,
                c = &mut commands => break c.ok(),
            };
            let in_time = !self.lapsed.load(Ordering::SeqCst) && validity.holds(Instant::now(), SystemTime::now());
            if !in_time {
                self.lapsed.store(true, Ordering::SeqCst);
            }
            match outcome {
                // A confirmation counts only if it came while the previous grant still held:
                // otherwise `lost()` may already have fired.
                Some(Ok(grant)) if in_time => {
                    retry_at = None;
                    failures = 0;
                    self.publish(State::Held(Validity::of(grant, &self.options)));
                }
                Some(Ok(_)) | None => self.lose(
                    LostReason::Expired,
                    &"no renewal was confirmed before the local deadline",
                ),
                // Gave up early on a transient failure with time left: try again.
                Some(Err(e)) if e.is_transient() && in_time => {
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
        let result = self.release().await;
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
    /// longer, and never less than [`MIN_RENEWAL_GAP`] after the failed call's last request: a
    /// throttled account must not see a retry storm from every holder at once. A wait that would
    /// run past the deadline is cut so that one last try starts [`FINAL_TRY_LEAD`] before it.
    fn retry_at(&self, e: &Error, failures: u32, until: Instant) -> Instant {
        let now = Instant::now();
        let wait = self
            .mutex
            .client()
            .options()
            .retry
            .backoff(failures)
            .max(e.retry_after().unwrap_or_default());
        // The call may have made several requests (its own retries); the last one started no
        // later than now.
        let earliest = now.checked_add(MIN_RENEWAL_GAP).unwrap_or(until);
        let wanted = now.checked_add(wait).unwrap_or(until).max(earliest);
        let last_try = until.checked_sub(FINAL_TRY_LEAD).unwrap_or(until);
        if wanted > last_try {
            last_try.max(earliest)
        } else {
            wanted
        }
    }

    /// The release at the owner's request: a real one while held; after a loss a courtesy
    /// (bounded by the lease's own end) that reports the loss.
    async fn release(&self) -> Result<Released, Error> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StorageConfig;

    fn renewer(state: watch::Sender<State>) -> Renewer {
        let mutex = AzureMutex::builder(StorageConfig::development(), "unit")
            .build()
            .expect("no request is sent");
        let lock = LockName::new("job").expect("valid");
        let lease = Lease::resume(lock, LeaseId::new_random(), LeaseDuration::MIN);
        Renewer {
            mutex,
            lease,
            state,
            options: LockerOptions::default(),
            lapsed: Arc::default(),
        }
    }

    fn held_for(d: Duration) -> State {
        State::Held(Validity {
            until: Instant::now() + d,
            wall_until: SystemTime::now() + d,
            lease_end: None,
        })
    }

    fn bare_guard(state: watch::Receiver<State>) -> LockGuard {
        LockGuard {
            lock: LockName::new("job").expect("valid"),
            lease_id: LeaseId::new_random(),
            fencing_token: None,
            state,
            commands: None,
            released: None,
            lapsed: Arc::default(),
        }
    }

    #[test]
    fn lost_is_final() {
        let (tx, rx) = watch::channel(held_for(Duration::from_secs(10)));
        let r = renewer(tx);
        r.publish(held_for(Duration::from_secs(20)));
        assert!(matches!(*rx.borrow(), State::Held(_)));
        r.publish(State::Lost(LostReason::Broken));
        // A renewal answer that arrives late must not bring the lock back.
        r.publish(held_for(Duration::from_secs(30)));
        assert_eq!(*rx.borrow(), State::Lost(LostReason::Broken));
        r.publish(State::Lost(LostReason::Expired));
        assert_eq!(*rx.borrow(), State::Lost(LostReason::Broken), "the first reason stays");
        r.publish(State::Released);
        assert_eq!(*rx.borrow(), State::Released);
        r.publish(held_for(Duration::from_secs(30)));
        assert_eq!(*rx.borrow(), State::Released);
    }

    #[test]
    fn a_guard_whose_renewer_died_is_not_held() {
        let (tx, rx) = watch::channel(held_for(Duration::from_secs(30)));
        let guard = bare_guard(rx);
        assert!(guard.is_held());
        drop(tx); // the renewal task ended (panicked) without a verdict
        assert!(!guard.is_held());
        assert_eq!(guard.lost_reason(), Some(LostReason::Expired));
    }

    #[tokio::test]
    async fn lost_fires_when_the_renewer_dies() {
        let (tx, rx) = watch::channel(held_for(Duration::from_secs(30)));
        let guard = bare_guard(rx);
        let lost = guard.lost();
        drop(tx);
        assert_eq!(lost.await, LostReason::Expired);
    }

    #[test]
    fn a_lapse_once_seen_is_final() {
        let (_tx, rx) = watch::channel(held_for(Duration::from_millis(30)));
        let guard = bare_guard(rx);
        assert!(guard.is_held());
        std::thread::sleep(Duration::from_millis(40));
        assert!(!guard.is_held());
        // The wall clock stepping back (modelled by a validity that holds again) changes nothing.
        let (tx2, rx2) = watch::channel(held_for(Duration::from_secs(30)));
        let mut again = bare_guard(rx2);
        again.lapsed = guard.lapsed.clone();
        assert!(!again.is_held());
        drop(tx2);
    }

    #[test]
    fn absurd_options_are_errors_not_panics() {
        let base = LockerOptions::default();
        let cases = [
            LockerOptions {
                renew_every: Some(Duration::MAX),
                ..base.clone()
            },
            LockerOptions {
                safety_margin: Duration::MAX,
                ..base.clone()
            },
            LockerOptions {
                safety_margin: Duration::ZERO,
                ..base.clone()
            },
            LockerOptions {
                safety_margin: Duration::from_millis(999),
                ..base.clone()
            },
            LockerOptions {
                renew_every: Some(Duration::ZERO),
                ..base.clone()
            },
            LockerOptions {
                renew_every: Some(Duration::from_secs(28)),
                ..base.clone()
            },
            LockerOptions {
                poll_max: Duration::MAX,
                ..base.clone()
            },
            LockerOptions {
                lease: LeaseDuration::Infinite,
                renew_every: Some(Duration::from_secs(58)),
                ..base.clone()
            },
        ];
        for options in cases {
            assert!(options.check().is_err(), "{options:?}");
        }
        assert!(base.check().is_ok());
        let infinite = LockerOptions {
            lease: LeaseDuration::Infinite,
            ..base
        };
        assert!(infinite.check().is_ok());
        assert_eq!(infinite.renew_interval(), Duration::from_secs(20));
    }

    #[test]
    fn validity_counts_from_the_send_time_on_both_clocks() {
        let options = LockerOptions::default();
        let sent = Instant::now();
        let wall = SystemTime::now();
        let grant = Grant {
            sent_at: sent,
            sent_at_wall: wall,
            deadline: Some(sent + Duration::from_secs(30)),
            wall_deadline: Some(wall + Duration::from_secs(30)),
        };
        let v = Validity::of(grant, &options);
        assert_eq!(v.until, sent + Duration::from_secs(28));
        assert!(v.holds(sent + Duration::from_secs(27), wall));
        assert!(!v.holds(sent + Duration::from_secs(28), wall));
        // Suspended: the monotonic clock stood still, the wall clock did not.
        assert!(!v.holds(sent + Duration::from_secs(1), wall + Duration::from_secs(29)));
    }
}
