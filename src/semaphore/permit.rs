//! [`Permit`]: one held slot of a semaphore, a [`LockGuard`] on the slot's lock blob.

use std::future::Future;
use std::time::Instant;

use crate::error::{Error, LostReason};
use crate::locker::LockGuard;
use crate::mutex::Released;
use crate::types::{LeaseId, LockName};

/// One held slot of a [`Semaphore`](super::Semaphore): the slot's number, its fencing token,
/// and the [`LockGuard`] that renews the slot's lease in the background and tells of its loss.
/// Dropping it releases the slot (in the background); [`Permit::release`] says whether the
/// slot was ours until then.
#[must_use = "dropping a permit releases its slot at once"]
#[derive(Debug)]
pub struct Permit {
    pub(super) guard: LockGuard,
    pub(super) slot: u32,
    pub(super) token: u64,
    pub(super) semaphore: LockName,
}

impl Permit {
    /// The slot's number, from 0 to the number of slots − 1.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// The semaphore's name.
    pub fn semaphore(&self) -> &LockName {
        &self.semaphore
    }

    /// The slot's fencing token: larger than every token handed out with this slot before,
    /// also across a deletion of the slot's blob. Tokens of different slots are unrelated: a
    /// protected resource keeps the highest token per slot.
    pub fn fencing_token(&self) -> u64 {
        self.token
    }

    /// The slot's lock blob.
    pub fn lock_name(&self) -> &LockName {
        self.guard.lock_name()
    }

    /// The lease id on the slot's lock blob.
    pub fn lease_id(&self) -> LeaseId {
        self.guard.lease_id()
    }

    /// Whether the slot is still ours (see [`LockGuard::is_held`]).
    pub fn is_held(&self) -> bool {
        self.guard.is_held()
    }

    /// Why the slot was lost, if it was (see [`LockGuard::lost_reason`]).
    pub fn lost_reason(&self) -> Option<LostReason> {
        self.guard.lost_reason()
    }

    /// Until when the slot counts as held unless a renewal is confirmed first (see
    /// [`LockGuard::valid_until`]).
    pub fn valid_until(&self) -> Option<Instant> {
        self.guard.valid_until()
    }

    /// Completes at the next change: a renewal confirmed, the slot lost, or released (see
    /// [`LockGuard::changed`]).
    pub fn changed(&self) -> impl Future<Output = ()> + Send + 'static {
        self.guard.changed()
    }

    /// Completes when the slot is lost, with the reason (see [`LockGuard::lost`]).
    pub fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        self.guard.lost()
    }

    /// Runs `work` while the slot is held; cancels it if the slot is lost first (see
    /// [`LockGuard::run`]).
    pub async fn run<F: Future>(&self, work: F) -> Result<F::Output, LostReason> {
        self.guard.run(work).await
    }

    /// Stops renewal and releases the slot (see [`LockGuard::release`]).
    pub async fn release(&mut self) -> Result<Released, Error> {
        self.guard.release().await
    }

    /// The guard underneath.
    pub fn guard(&self) -> &LockGuard {
        &self.guard
    }

    /// The guard underneath, mutably (to release it, or to supervise work with it).
    pub fn guard_mut(&mut self) -> &mut LockGuard {
        &mut self.guard
    }

    /// The guard and the slot number, for callers that manage the guard themselves.
    pub fn into_parts(self) -> (LockGuard, u32) {
        (self.guard, self.slot)
    }
}
