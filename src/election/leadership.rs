//! [`Leadership`]: a term, held as a [`LockGuard`].

use std::ops::{Deref, DerefMut};

use super::*;
use crate::mutex::Released;

/// A term as leader: a [`LockGuard`] (it derefs to one: [`lost`](LockGuard::lost),
/// [`is_held`](LockGuard::is_held), [`lost_reason`](LockGuard::lost_reason),
/// [`valid_until`](LockGuard::valid_until), [`changed`](LockGuard::changed),
/// [`run`](LockGuard::run)) with its epoch and the value it published.
///
/// The term ends for good when the guard's lock is lost (`lost()` fires once, with the reason;
/// it never fires for a campaign that did not return a `Leadership`), on
/// [`resign`](Leadership::resign), or on drop (released in the background).
#[must_use = "dropping a Leadership resigns at once; bind it (`let leadership = ...`) for as long as you lead"]
#[derive(Debug)]
pub struct Leadership {
    guard: LockGuard,
    mutex: AzureMutex,
    value: String,
    epoch: u64,
    since: SystemTime,
}

impl Leadership {
    pub(super) fn new(guard: LockGuard, mutex: AzureMutex, value: String, epoch: u64, since: SystemTime) -> Self {
        guard.mark_leader(format!("{}/{}", mutex.container(), guard.lock_name()));
        Self {
            guard,
            mutex,
            value,
            epoch,
            since,
        }
    }

    /// The term's epoch: the lease's fencing token, strictly greater than any earlier term's.
    /// Pass it with every write to resources that can refuse a deposed leader.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The value published last (by the campaign or [`proclaim`](Leadership::proclaim)).
    pub fn value(&self) -> &str {
        &self.value
    }

    /// When the term started (this process's clock).
    pub fn since(&self) -> SystemTime {
        self.since
    }

    /// The guard underneath.
    pub fn guard(&self) -> &LockGuard {
        &self.guard
    }

    /// Publishes a new value without a new election: one read and one metadata write under the
    /// lease, visible to [`Election::leader`] and observers. [`LockError::Lost`] if the term
    /// has ended (or ends while writing: the write is refused unless our lease is the blob's).
    pub async fn proclaim(&mut self, value: impl Into<String>) -> Result<(), LockError> {
        let value = value.into();
        check_value(&value)?;
        let lock = self.guard.lock_name().clone();
        if let Some(reason) = self.guard.lost_reason() {
            return Err(lost(&lock, reason));
        }
        let Some(until) = self.guard.valid_until() else {
            return Err(lost(&lock, LostReason::Expired));
        };
        let items = [(META_VALUE, Some(encode(&value)))];
        match self
            .mutex
            .update_metadata(&lock, self.guard.lease_id(), &items, until)
            .await
        {
            Ok(()) => {}
            Err(Error::LeaseLost { reason, .. }) => return Err(lost(&lock, reason)),
            Err(e) => return Err(e.into()),
        }
        self.value = value;
        match self.guard.lost_reason() {
            Some(reason) => Err(lost(&lock, reason)),
            None => Ok(()),
        }
    }

    /// Ends the term: releases the lease (after the caller has drained its work), so that a
    /// standby is elected at once instead of after the lease runs out. The same as
    /// [`LockGuard::release`]: `Ok` only if the lease was ours until the release.
    pub async fn resign(&mut self) -> Result<Released, Error> {
        self.guard.release().await
    }
}

impl Deref for Leadership {
    type Target = LockGuard;
    fn deref(&self) -> &LockGuard {
        &self.guard
    }
}

impl DerefMut for Leadership {
    fn deref_mut(&mut self) -> &mut LockGuard {
        &mut self.guard
    }
}
