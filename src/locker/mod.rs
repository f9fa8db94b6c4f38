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

mod guard;
mod options;
mod renewer;
#[cfg(test)]
mod tests;
mod wait;

pub use guard::{LockGuard, LockStatus};
pub use options::{LockerOptions, INFINITE_LEASE_WINDOW, MIN_RENEWAL_GAP, MIN_SAFETY_MARGIN};

use guard::*;
use options::*;
use renewer::*;
use wait::*;

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

impl LockError {
    /// Whether this error says the lock was lost (or not confirmed ours until the release):
    /// [`LockError::Lost`], or a storage error that is a loss (see [`Error::is_lost`]).
    pub fn is_lost(&self) -> bool {
        self.lost_reason().is_some()
    }

    /// Why the lock was lost, if this error says it was.
    pub fn lost_reason(&self) -> Option<LostReason> {
        match self {
            LockError::Lost { reason, .. } => Some(*reason),
            LockError::Storage(e) => e.lost_reason(),
            _ => None,
        }
    }
}

impl From<InvalidInput> for LockError {
    fn from(e: InvalidInput) -> Self {
        LockError::Storage(Error::InvalidInput(e))
    }
}

/// ` (held by …)`: the recorded holder. Anyone who can take the lock can write the record, so
/// every text in it is printed inert (control and formatting characters escaped) and short.
fn holder_suffix(h: &Option<HolderInfo>) -> String {
    match h {
        Some(h) => {
            let mut parts = Vec::new();
            if let Some(o) = &h.holder.owner {
                parts.push(format!("\"{}\"", crate::error::sanitize_text(o, 200)));
            }
            if let Some(host) = &h.holder.host {
                parts.push(format!("host {}", crate::error::sanitize_text(host, 100)));
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
/// let mutex = AzureMutex::builder(StorageConfig::development(), azmutex::DEFAULT_CONTAINER).build()?;
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

    /// [`Locker::lock_detached`] that `cancel` can end: then the attempt in flight is stopped
    /// and a lease it may have got is released (bounded, as [`Locker::lock_until`] does) before
    /// [`LockError::Cancelled`] is returned, so that a process about to exit on a signal leaves
    /// no lease behind whose id nobody knows.
    pub async fn lock_detached_until(
        &self,
        timeout: Option<Duration>,
        cancel: impl Future<Output = ()>,
    ) -> Result<Lease, LockError> {
        self.wait(Limit::Until(timeout.and_then(deadline_in)), cancel, Detached)
            .await
    }

    /// One attempt, as [`Locker::try_lock`], handing out the lease without renewing it, as
    /// [`Locker::lock_detached`]; `cancel` ends it as in [`Locker::lock_detached_until`].
    /// [`LockError::Busy`] when someone else holds the lock.
    pub async fn try_lock_detached(&self, cancel: impl Future<Output = ()>) -> Result<Lease, LockError> {
        self.wait(Limit::Once, cancel, Detached).await
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
