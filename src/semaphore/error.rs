//! [`SemaphoreError`]: the semaphore layer's errors.

use std::time::Duration;

use crate::error::{Error, InvalidInput, LostReason};
use crate::locker::LockError;

/// Errors of the [`Semaphore`](super::Semaphore) layer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SemaphoreError {
    /// Every slot is held ([`Semaphore::try_acquire`](super::Semaphore::try_acquire)).
    #[error("semaphore {semaphore:?} is full ({slots} of {slots} slots held)")]
    Full {
        /// The semaphore.
        semaphore: String,
        /// Its number of slots.
        slots: u32,
    },
    /// The wait timed out while every slot stayed held.
    #[error("timed out after {:.1}s waiting for a slot of semaphore {semaphore:?} ({slots} slots, all held)", .waited.as_secs_f64())]
    TimedOut {
        /// The semaphore.
        semaphore: String,
        /// Its number of slots.
        slots: u32,
        /// How long we waited.
        waited: Duration,
    },
    /// The wait was cancelled.
    #[error("waiting for a slot of semaphore {semaphore:?} was cancelled")]
    Cancelled {
        /// The semaphore.
        semaphore: String,
    },
    /// The semaphore was made with another number of slots than this client's: refused, never
    /// silently obeyed.
    #[error(
        "semaphore {semaphore:?} has {recorded} slots, but this client asked for {requested}: every user of \
         one semaphore must give the same number (delete its manifest blob {manifest:?} only when no slot is held)"
    )]
    SlotsMismatch {
        /// The semaphore.
        semaphore: String,
        /// The number recorded in its manifest.
        recorded: u32,
        /// The number this client asked for.
        requested: u32,
        /// The manifest blob's name.
        manifest: String,
    },
    /// The semaphore's blobs contradict each other or cannot be read (a manifest without a
    /// readable number, a slot held beyond the recorded number).
    #[error("semaphore {semaphore:?} is inconsistent: {why}")]
    Inconsistent {
        /// The semaphore.
        semaphore: String,
        /// What is wrong.
        why: String,
    },
    /// The permit was lost while the caller's work ran, or its release could not confirm it
    /// was ours to the end.
    #[error("slot {slot} of semaphore {semaphore:?} was lost: {reason}")]
    Lost {
        /// The semaphore.
        semaphore: String,
        /// The slot.
        slot: u32,
        /// Why.
        reason: LostReason,
    },
    /// An error of the lock layer underneath (for one slot).
    #[error(transparent)]
    Lock(#[from] LockError),
    /// A permanent error from the lease layer (authentication, invalid input, …).
    #[error(transparent)]
    Storage(#[from] Error),
}

impl From<InvalidInput> for SemaphoreError {
    fn from(e: InvalidInput) -> Self {
        SemaphoreError::Storage(Error::InvalidInput(e))
    }
}

impl SemaphoreError {
    /// Whether this error is transient storage trouble (network, timeouts, throttling).
    pub fn is_transient(&self) -> bool {
        match self {
            SemaphoreError::Storage(e) | SemaphoreError::Lock(LockError::Storage(e)) => e.is_transient(),
            _ => false,
        }
    }
}
