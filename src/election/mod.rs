//! Leader election on a lock: [`Election`] campaigns and hands out a [`Leadership`] (a
//! [`LockGuard`] with an epoch and a value), [`Election::leader`] reads the current leader once,
//! and [`Observer`] follows it.
//!
//! A leadership is a lock held through a [`Locker`]: the same renewal, the same local deadline
//! counted from when each request was *sent*, the same final lost-lock signal. The leader
//! record (value, epoch, since) is metadata on the lock blob, written under the lease after
//! each acquire ([Set Blob Metadata](https://learn.microsoft.com/en-us/rest/api/storageservices/set-blob-metadata),
//! read back by [Get Blob Properties](https://learn.microsoft.com/en-us/rest/api/storageservices/get-blob-properties)),
//! beside the holder record; `azmutex status` shows it. The epoch is the lock's fencing token:
//! strictly greater for every new term.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use percent_encoding::{percent_decode_str, utf8_percent_encode, NON_ALPHANUMERIC};

use crate::error::{Error, InvalidInput, LostReason};
use crate::locker::{LockError, LockGuard, Locker, LockerOptions};
use crate::mutex::{AzureMutex, Holder, LockInfo};
use crate::types::LockName;

mod leadership;
mod observe;

pub use leadership::Leadership;
pub use observe::Observer;

/// Metadata item holding the leader's value (percent-encoded).
pub const META_VALUE: &str = "azmutexleader";
/// Metadata item holding the epoch (fencing token) the value was written for. A record whose
/// epoch is not the lock's current fencing token belongs to an earlier term and is ignored.
pub const META_EPOCH: &str = "azmutexepoch";
/// Metadata item holding when the term started (milliseconds since the Unix epoch, the
/// leader's clock).
pub const META_ELECTED: &str = "azmutexelected";

/// The longest value a leader may publish, in bytes of UTF-8 (blob metadata is limited to
/// 8 KiB in all, and the value is stored percent-encoded).
pub const MAX_VALUE_BYTES: usize = 1024;

/// How often an [`Observer`] reads the lock by default: one request per interval, shared by
/// the observers of one name in one process.
pub const DEFAULT_OBSERVE_INTERVAL: Duration = Duration::from_secs(1);

/// How long cleanup after a cancelled or failed campaign may take at most.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The current leader, as recorded on the lock blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// What the leader published ([`Election::campaign`], [`Leadership::proclaim`]).
    pub value: String,
    /// The term's epoch: the fencing token of its lease, strictly greater for every new term.
    pub epoch: u64,
    /// When the term started, on the leader's clock.
    pub since: Option<SystemTime>,
    /// The holder recorded by the leader's mutex ([`crate::AzureMutexBuilder::holder`]).
    pub holder: Option<Holder>,
}

impl Leader {
    /// The leader recorded in what [`AzureMutex::inspect`] read, or `None` when there is none:
    /// the lock is not leased (free, broken, expired), or its lease is not a term that has
    /// started (taken by a non-election client, or a campaign that has not yet written its
    /// record).
    pub fn from_lock_info(info: &LockInfo) -> Option<Leader> {
        if !info.locked {
            return None;
        }
        let epoch = info.fencing_token?;
        let recorded: u64 = info.metadata.get(META_EPOCH)?.parse().ok()?;
        if recorded != epoch {
            return None;
        }
        let value = percent_decode_str(info.metadata.get(META_VALUE)?)
            .decode_utf8_lossy()
            .into_owned();
        let since = info
            .metadata
            .get(META_ELECTED)
            .and_then(|v| v.parse::<u64>().ok())
            .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms)));
        Some(Leader {
            value,
            epoch,
            since,
            holder: info.holder.as_ref().map(|h| h.holder.clone()),
        })
    }
}

/// Campaigns for leadership of one name and reads who leads.
///
/// ```no_run
/// use azmutex::{election::Election, AzureMutex, StorageConfig};
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let mutex = AzureMutex::builder(StorageConfig::development(), azmutex::DEFAULT_CONTAINER)
///     .fencing(true) // the epoch is the fencing token
///     .build()?;
/// let election = Election::new(mutex, "scheduler")?;
/// let mut leadership = election.campaign("host-a:8080").await?;
/// println!("leading, epoch {}", leadership.epoch());
/// match leadership.run(async { /* lead */ }).await {
///     Ok(()) => { leadership.resign().await?; }
///     Err(reason) => eprintln!("stopped leading: {reason}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Election {
    locker: Locker,
    interval: Duration,
}

impl Election {
    /// An election on `name` with default [`LockerOptions`] (30 s lease). The mutex must have
    /// fencing tokens on ([`crate::AzureMutexBuilder::fencing`]): they are the epochs.
    pub fn new(mutex: AzureMutex, name: impl TryInto<LockName, Error = InvalidInput>) -> Result<Self, InvalidInput> {
        Self::with_options(mutex, name, LockerOptions::default())
    }

    /// An election on `name` whose leaderships are held with `options`.
    pub fn with_options(
        mutex: AzureMutex,
        name: impl TryInto<LockName, Error = InvalidInput>,
        options: LockerOptions,
    ) -> Result<Self, InvalidInput> {
        if !mutex.fencing() {
            return Err(InvalidInput::Option {
                option: "fencing",
                why: "an election needs fencing tokens (its epochs): build the mutex with `.fencing(true)`".into(),
            });
        }
        Ok(Self {
            locker: Locker::with_options(mutex, name, options)?,
            interval: DEFAULT_OBSERVE_INTERVAL,
        })
    }

    /// How often observers made from this election read the lock (default
    /// [`DEFAULT_OBSERVE_INTERVAL`]; at least 100 ms).
    pub fn observe_interval(mut self, every: Duration) -> Result<Self, InvalidInput> {
        if every < Duration::from_millis(100) {
            return Err(InvalidInput::Option {
                option: "observe_interval",
                why: format!("{every:?} is below the minimum of 100ms"),
            });
        }
        self.interval = every;
        Ok(self)
    }

    /// The name (lock) elected on.
    pub fn name(&self) -> &LockName {
        self.locker.lock_name()
    }

    /// The locker underneath.
    pub fn locker(&self) -> &Locker {
        &self.locker
    }

    /// Waits until elected, publishes `value` as the leader's value, and returns the
    /// [`Leadership`]. Permanent storage errors (authentication, invalid input) end the
    /// campaign; transient ones and a lease lost before the record was written are retried.
    ///
    /// Dropping the future leaves no lease behind (an attempt in flight is released in the
    /// background); [`Election::campaign_until`] also waits for that cleanup.
    pub async fn campaign(&self, value: impl Into<String>) -> Result<Leadership, LockError> {
        self.campaign_until(value, std::future::pending()).await
    }

    /// [`Election::campaign`] until `cancel` completes: then [`LockError::Cancelled`], after
    /// releasing (bounded) whatever lease the campaign had obtained, so that a caller about to
    /// exit leaves no lease and no background task behind. No term started, so nothing that
    /// signals the end of a term ever fires for it.
    pub async fn campaign_until(
        &self,
        value: impl Into<String>,
        cancel: impl Future<Output = ()>,
    ) -> Result<Leadership, LockError> {
        let value = value.into();
        check_value(&value)?;
        let mutex = self.locker.mutex();
        let lock = self.locker.lock_name().clone();
        let mut cancel = std::pin::pin!(cancel);
        let cancelled = || LockError::Cancelled { lock: lock.to_string() };
        loop {
            let mut guard = self.locker.lock_until(None, cancel.as_mut()).await?;
            let (Some(epoch), Some(until)) = (guard.fencing_token(), guard.valid_until()) else {
                // Lost already (or, impossibly, no token): nothing started; campaign again.
                cleanup(&mut guard).await;
                continue;
            };
            let since = SystemTime::now();
            let items = record(&value, epoch, since);
            let write = mutex.update_metadata(&lock, guard.lease_id(), &items, until);
            let written = tokio::select! {
                r = write => r,
                () = cancel.as_mut() => {
                    cleanup(&mut guard).await;
                    return Err(cancelled());
                }
            };
            match written {
                Ok(()) if guard.is_held() => {
                    tracing::info!(lock = %lock, epoch, "elected");
                    return Ok(Leadership::new(guard, mutex.clone(), value, epoch, since));
                }
                Ok(()) => {
                    tracing::info!(lock = %lock, "the lease ended before the term could start; campaigning again");
                }
                Err(e) if e.is_transient() || e.is_lost() => {
                    tracing::warn!(lock = %lock, error = %e, "could not record the leader; campaigning again");
                }
                Err(e) => {
                    cleanup(&mut guard).await;
                    return Err(e.into());
                }
            }
            cleanup(&mut guard).await;
        }
    }

    /// The current leader (one request), or `None` when nobody leads.
    pub async fn leader(&self) -> Result<Option<Leader>, Error> {
        let info = self.locker.mutex().inspect(self.locker.lock_name()).await?;
        Ok(Leader::from_lock_info(&info))
    }

    /// Follows the leader: see [`Observer`]. Call it within a Tokio runtime (the shared reader
    /// runs as a task on it).
    pub fn observe(&self) -> Observer {
        Observer::new(
            self.locker.mutex().clone(),
            self.locker.lock_name().clone(),
            self.interval,
        )
    }
}

/// Releases a guard that will not become a leadership, bounded.
async fn cleanup(guard: &mut LockGuard) {
    if tokio::time::timeout(CLEANUP_TIMEOUT, guard.release()).await.is_err() {
        tracing::warn!(lock = %guard.lock_name(), "releasing after a campaign did not finish in time; the lease will expire");
    }
}

/// Refuses values too long for blob metadata.
pub(crate) fn check_value(value: &str) -> Result<(), InvalidInput> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(InvalidInput::Option {
            option: "value",
            why: format!(
                "{} bytes is more than the {MAX_VALUE_BYTES} a leader's value may have",
                value.len()
            ),
        });
    }
    Ok(())
}

pub(crate) fn encode(value: &str) -> String {
    utf8_percent_encode(value, NON_ALPHANUMERIC).to_string()
}

/// The leader record of a new term.
fn record(value: &str, epoch: u64, since: SystemTime) -> Vec<(&'static str, Option<String>)> {
    let ms = since.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    vec![
        (META_VALUE, Some(encode(value))),
        (META_EPOCH, Some(epoch.to_string())),
        (META_ELECTED, Some(ms.to_string())),
    ]
}

pub(crate) fn lost(lock: &LockName, reason: LostReason) -> LockError {
    LockError::Lost {
        lock: lock.to_string(),
        reason,
    }
}
