//! [`Semaphore`]: at most N holders at once, each holding one of N slots.
//!
//! Each slot is a lock blob leased like any other lock, so a [`Permit`] is a [`LockGuard`]
//! (background renewal, `lost()`, release) plus the slot number. Acquiring is one
//! [List Blobs](https://learn.microsoft.com/en-us/rest/api/storageservices/list-blobs) request
//! (every slot's lease state and the manifest's slot count at once), then acquire attempts on
//! the free slots in random order (no herd on slot 0); a slot lost to a race moves on to the
//! next. Never more than N holders: there are N slot blobs, each with at most one lease, and
//! every client checks the manifest's N before it takes one (a different N is refused with
//! both numbers, [`SemaphoreError::SlotsMismatch`]).
//!
//! A full semaphore is polled by its waiters with one listing each per interval; the interval
//! grows with the number of waiters (each waiter records itself, see [`layout`]), so the
//! requests per second on one semaphore stay near [`SemaphoreOptions::polls_per_second`]
//! however many wait.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::error::{Error, InvalidInput};
use crate::locker::{LockError, LockGuard, Locker, LockerOptions};
use crate::mutex::{AzureMutex, Lease, Listing};
use crate::types::LockName;

mod error;
pub mod layout;
mod permit;
mod status;
mod wait;

pub use error::SemaphoreError;
pub use layout::MAX_SLOTS;
pub use permit::Permit;
pub use status::{SemaphoreStatus, SlotStatus};

use layout::{Layout, META_SLOTS};

/// How many pages of a listing are read at most (each up to 5,000 blobs).
const MAX_PAGES: usize = 3;

/// How a [`Semaphore`] acquires, renews and waits.
#[derive(Debug, Clone)]
pub struct SemaphoreOptions {
    /// Lease, renewal and safety margin of each slot (as for a [`Locker`]; its polling
    /// settings are not used).
    pub locker: LockerOptions,
    /// The shortest pause between two listings of one waiter (default 100 ms).
    pub poll_min: Duration,
    /// The longest pause between two listings of one waiter (default 60 s).
    pub poll_max: Duration,
    /// About how many listings per second all waiters of one semaphore make together (default
    /// 10): each waiter pauses `waiters / polls_per_second` (jittered by ±50 %, within
    /// `poll_min`..`poll_max`).
    pub polls_per_second: u32,
    /// Whether waiters record themselves (one small blob each, written when the wait first
    /// finds the semaphore full, refreshed every 20 s or more, deleted when it ends) so that
    /// every waiter can count them (default true). Without it each waiter polls as a [`Locker`]
    /// does (`locker.poll_initial`, growing ×1.5 up to `locker.poll_max`), and the total rate
    /// grows with the number of waiters.
    pub register_waiters: bool,
}

impl Default for SemaphoreOptions {
    fn default() -> Self {
        Self {
            locker: LockerOptions {
                report_holder: false,
                ..LockerOptions::default()
            },
            poll_min: Duration::from_millis(100),
            poll_max: Duration::from_secs(60),
            polls_per_second: 10,
            register_waiters: true,
        }
    }
}

impl SemaphoreOptions {
    fn check(&self) -> Result<(), InvalidInput> {
        self.locker.check()?;
        if self.poll_min.is_zero() || self.poll_max < self.poll_min || self.poll_max > Duration::from_secs(3600) {
            return Err(InvalidInput::Option {
                option: "poll_min",
                why: "must be non-zero and at most poll_max, itself at most one hour".into(),
            });
        }
        if self.polls_per_second == 0 {
            return Err(InvalidInput::Option {
                option: "polls_per_second",
                why: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

/// A semaphore of N slots on lock blobs under one name: at most N [`Permit`]s at once.
///
/// ```no_run
/// use azmutex::{AzureMutex, Semaphore, StorageConfig};
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let mutex = AzureMutex::builder(StorageConfig::development(), azmutex::DEFAULT_CONTAINER)
///     .fencing(true) // required: every permit carries its slot's fencing token
///     .build()?;
/// let semaphore = Semaphore::new(mutex, "test-database", 3)?;
/// let mut permit = semaphore.acquire().await?;
/// println!("slot {} (token {})", permit.slot(), permit.fencing_token());
/// match permit.run(async { /* at most 3 of these at once */ }).await {
///     Ok(()) => {}
///     Err(reason) => eprintln!("slot lost ({reason}); work cancelled"),
/// }
/// permit.release().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Semaphore {
    mutex: AzureMutex,
    layout: Layout,
    slots: u32,
    options: SemaphoreOptions,
}

/// What one acquire attempt found when it got no slot.
pub(super) struct Full {
    /// Waiter records still counting.
    waiters: usize,
    /// Waiter records of clients that are gone.
    stale: Vec<String>,
}

impl Semaphore {
    /// A semaphore `name` of `slots` slots with default options. The mutex must have fencing
    /// on. Checked here, before any request: 1 ≤ `slots` ≤ [`MAX_SLOTS`], and every blob name
    /// of the semaphore valid.
    pub fn new(
        mutex: AzureMutex,
        name: impl TryInto<LockName, Error = InvalidInput>,
        slots: u32,
    ) -> Result<Self, InvalidInput> {
        Self::with_options(mutex, name, slots, SemaphoreOptions::default())
    }

    /// [`Semaphore::new`] with `options` (checked here).
    pub fn with_options(
        mutex: AzureMutex,
        name: impl TryInto<LockName, Error = InvalidInput>,
        slots: u32,
        options: SemaphoreOptions,
    ) -> Result<Self, InvalidInput> {
        options.check()?;
        if !mutex.fencing() {
            return Err(InvalidInput::Option {
                option: "fencing",
                why: "a semaphore hands out a fencing token per slot: build the mutex with .fencing(true)".into(),
            });
        }
        let layout = Layout::new(name.try_into()?, slots)?;
        Ok(Self {
            mutex,
            layout,
            slots,
            options,
        })
    }

    /// The semaphore's name.
    pub fn name(&self) -> &LockName {
        &self.layout.name
    }

    /// The number of slots.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// The mutex underneath.
    pub fn mutex(&self) -> &AzureMutex {
        &self.mutex
    }

    /// Slot `n`'s lock blob.
    pub fn slot_lock(&self, n: u32) -> Result<LockName, InvalidInput> {
        self.layout.slot(n)
    }

    /// One attempt: a permit, or [`SemaphoreError::Full`] at once.
    pub async fn try_acquire(&self) -> Result<Permit, SemaphoreError> {
        match self.attempt(&Guarded).await? {
            Ok((guard, slot)) => self.permit(guard, slot).await,
            Err(_) => Err(self.full()),
        }
    }

    /// Waits until a slot is ours. Permanent errors end the wait; transient ones are retried.
    pub async fn acquire(&self) -> Result<Permit, SemaphoreError> {
        self.acquire_until(None, std::future::pending()).await
    }

    /// Waits at most `timeout`, then [`SemaphoreError::TimedOut`].
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<Permit, SemaphoreError> {
        self.acquire_until(Some(timeout), std::future::pending()).await
    }

    /// Waits (at most `timeout`, if given) until a slot is ours or `cancel` completes
    /// ([`SemaphoreError::Cancelled`]). Cancelling leaves no lease behind: an attempt in flight
    /// releases what it got.
    pub async fn acquire_until(
        &self,
        timeout: Option<Duration>,
        cancel: impl Future<Output = ()>,
    ) -> Result<Permit, SemaphoreError> {
        let limit = timeout.and_then(|t| Instant::now().checked_add(t));
        let (guard, slot) = self.wait(&Guarded, limit, cancel).await?;
        self.permit(guard, slot).await
    }

    /// Waits (at most `timeout`; `Some(Duration::ZERO)`: one attempt) for a slot and returns
    /// its bare [`Lease`] and number, with no renewal and no release on drop: for callers that
    /// manage the lease themselves, such as `azmutex acquire --slots` in a script.
    /// [`SemaphoreError::Full`] when one attempt found every slot held.
    pub async fn acquire_detached(&self, timeout: Option<Duration>) -> Result<(Lease, u32), SemaphoreError> {
        match timeout {
            Some(t) if t.is_zero() => match self.attempt(&Detached).await? {
                Ok(got) => Ok(got),
                Err(_) => Err(self.full()),
            },
            _ => {
                let limit = timeout.and_then(|t| Instant::now().checked_add(t));
                self.wait(&Detached, limit, std::future::pending()).await
            }
        }
    }

    fn full(&self) -> SemaphoreError {
        SemaphoreError::Full {
            semaphore: self.layout.name.to_string(),
            slots: self.slots,
        }
    }

    /// Every blob under the semaphore's prefix (at most [`MAX_PAGES`] pages).
    async fn list(&self) -> Result<Listing, Error> {
        list_all(&self.mutex, &self.layout.prefix).await
    }

    /// One List Blobs request (more only for a prefix crowded past 5,000 blobs), the manifest
    /// written if missing, then the free slots in random order until one is ours.
    async fn attempt<K: Take>(&self, take: &K) -> Result<Result<(K::Out, u32), Full>, SemaphoreError> {
        let name = self.layout.name.as_str();
        let mut view = self.layout.view(self.list().await?);
        let mut recorded = view.recorded(name)?;
        if recorded.is_none() {
            // Held slots past our N say the manifest was lost, not that the semaphore is new:
            // refuse before writing one, or a wrong N would lock out every rightful user.
            view.check_held_within(name, self.slots)?;
            let metadata = [(META_SLOTS.to_string(), self.slots.to_string())].into();
            let manifest = self.layout.manifest()?;
            if self.mutex.put_record(&manifest, &metadata, true).await? {
                tracing::info!(semaphore = %name, slots = self.slots, "created the semaphore's manifest");
                recorded = Some(self.slots);
            } else {
                // Someone else wrote it meanwhile: read what they wrote.
                view = self.layout.view(self.list().await?);
                recorded = view.recorded(name)?;
            }
        }
        match recorded {
            Some(n) if n == self.slots => {}
            Some(n) => {
                return Err(SemaphoreError::SlotsMismatch {
                    semaphore: name.to_string(),
                    recorded: n,
                    requested: self.slots,
                    manifest: self.layout.manifest()?.to_string(),
                })
            }
            None => {
                return Err(SemaphoreError::Inconsistent {
                    semaphore: name.to_string(),
                    why: "its manifest was written but cannot be read back".into(),
                })
            }
        }
        view.check_held_within(name, self.slots)?;
        let mut free = view.free(self.slots);
        fastrand::shuffle(&mut free);
        // A few tries per attempt: each lost race is one request, and many lost races mean
        // many contenders, who are better spread out by the wait's pauses.
        for n in free.into_iter().take(8) {
            let locker = Locker::with_options(self.mutex.clone(), &self.layout.slot(n)?, self.options.locker.clone())?;
            match take.take(&locker).await {
                Ok(Some(got)) => return Ok(Ok((got, n))),
                Ok(None) => tracing::debug!(semaphore = %name, slot = n, "slot taken meanwhile"),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Err(Full {
            waiters: view.waiters,
            stale: view.stale_waiters,
        }))
    }

    async fn permit(&self, mut guard: LockGuard, slot: u32) -> Result<Permit, SemaphoreError> {
        let Some(token) = guard.fencing_token() else {
            let _ = guard.release().await;
            return Err(SemaphoreError::Inconsistent {
                semaphore: self.layout.name.to_string(),
                why: format!("slot {slot} was acquired without a fencing token"),
            });
        };
        tracing::info!(semaphore = %self.layout.name, slot, fencing_token = token, "slot acquired");
        Ok(Permit {
            guard,
            slot,
            token,
            semaphore: self.layout.name.clone(),
        })
    }
}

/// How an attempt takes one slot: `Ok(None)` when it is busy.
pub(super) trait Take: Sync {
    type Out: Send;
    /// Whether the caller is likely to exit right after (a detached lease for a script): then
    /// the waiter record is deleted before returning, not in the background.
    const SHORT_LIVED: bool = false;
    fn take(&self, locker: &Locker) -> impl Future<Output = Result<Option<Self::Out>, LockError>> + Send;
}

/// A [`LockGuard`] (renewed, released on drop).
pub(super) struct Guarded;
impl Take for Guarded {
    type Out = LockGuard;
    async fn take(&self, locker: &Locker) -> Result<Option<LockGuard>, LockError> {
        match locker.try_lock().await {
            Ok(g) => Ok(Some(g)),
            Err(LockError::Busy { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A bare [`Lease`].
pub(super) struct Detached;
impl Take for Detached {
    type Out = Lease;
    const SHORT_LIVED: bool = true;
    async fn take(&self, locker: &Locker) -> Result<Option<Lease>, LockError> {
        match locker.lock_detached(Some(Duration::ZERO)).await {
            Ok(l) => Ok(Some(l)),
            Err(LockError::Busy { .. } | LockError::TimedOut { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Every blob under `prefix`, following at most [`MAX_PAGES`] pages.
async fn list_all(mutex: &AzureMutex, prefix: &str) -> Result<Listing, Error> {
    let mut all = mutex.list(prefix, None).await?;
    for _ in 1..MAX_PAGES {
        let Some(marker) = all.next_marker.take() else {
            break;
        };
        let page = mutex.list(prefix, Some(&marker)).await?;
        all.blobs.extend(page.blobs);
        all.next_marker = page.next_marker;
    }
    Ok(all)
}
