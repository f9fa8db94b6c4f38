//! Where a semaphore lives: its blobs' names, and what one listing of them says.
//!
//! A semaphore `NAME` with `N` slots is, in the mutex's container:
//! - `NAME/semaphore`: the manifest, an empty block blob whose metadata `azmutexslots` records
//!   `N` (written once, with `If-None-Match: *`; never changed by this crate);
//! - `NAME/slot-0000` … `NAME/slot-{N-1}`: one lock blob per slot, leased by its holder, with
//!   the slot's fencing token (created on first use; never deleted by this crate);
//! - `NAME/waiter-<uuid>`: one empty block blob per client waiting for a slot, whose metadata
//!   `azmutexuntil` says until when (Unix seconds) it counts as waiting. Waiters read how many
//!   there are to space their polls; the records are deleted when the wait ends.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::InvalidInput;
use crate::mutex::{ListedBlob, Listing};
use crate::types::LockName;

use super::SemaphoreError;

/// The most slots a semaphore may have: one listing (at most 5,000 blobs) must show every slot,
/// the manifest and the waiters.
pub const MAX_SLOTS: u32 = 1000;

/// Metadata name of the manifest's slot count.
pub(super) const META_SLOTS: &str = "azmutexslots";
/// Metadata name of a waiter record's expiry (Unix seconds).
pub(super) const META_UNTIL: &str = "azmutexuntil";

const MANIFEST: &str = "semaphore";
const SLOT: &str = "slot-";
const WAITER: &str = "waiter-";

/// The names of one semaphore's blobs.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    pub(super) name: LockName,
    pub(super) prefix: String,
}

impl Layout {
    /// Checks `name` and that every blob name of a semaphore of `slots` slots under it is valid.
    pub(super) fn new(name: LockName, slots: u32) -> Result<Self, InvalidInput> {
        if slots == 0 || slots > MAX_SLOTS {
            return Err(InvalidInput::Option {
                option: "slots",
                why: format!("{slots} is not between 1 and {MAX_SLOTS}"),
            });
        }
        let layout = Self {
            prefix: format!("{}/", name.as_str()),
            name,
        };
        layout.manifest()?;
        layout.slot(slots - 1)?;
        layout.waiter(&"f".repeat(32))?;
        Ok(layout)
    }

    /// The manifest blob.
    pub(super) fn manifest(&self) -> Result<LockName, InvalidInput> {
        LockName::new(format!("{}{MANIFEST}", self.prefix))
    }

    /// Slot `n`'s lock blob.
    pub(super) fn slot(&self, n: u32) -> Result<LockName, InvalidInput> {
        LockName::new(format!("{}{SLOT}{n:04}", self.prefix))
    }

    /// A waiter record.
    pub(super) fn waiter(&self, id: &str) -> Result<LockName, InvalidInput> {
        LockName::new(format!("{}{WAITER}{id}", self.prefix))
    }

    /// What one listing of the prefix says.
    pub(super) fn view(&self, listing: Listing) -> View {
        let mut view = View::default();
        let now = unix_now();
        for blob in listing.blobs {
            let Some(rest) = blob.name.strip_prefix(&self.prefix) else {
                continue;
            };
            if rest == MANIFEST {
                view.manifest = Some(blob.metadata.get(META_SLOTS).and_then(|v| v.trim().parse::<u32>().ok()));
            } else if let Some(n) = rest.strip_prefix(SLOT) {
                // Exactly four digits (or more for no one): `slot-0003`, never `slot-3` or `slot-0003x`.
                if n.len() == 4 && n.bytes().all(|b| b.is_ascii_digit()) {
                    if let Ok(n) = n.parse::<u32>() {
                        view.slots.insert(n, blob);
                    }
                }
            } else if is_waiter_id(rest.strip_prefix(WAITER)) {
                let until = blob.metadata.get(META_UNTIL).and_then(|v| v.trim().parse::<u64>().ok());
                // Clocks differ between machines: a record counts until its time, and is
                // deleted as stale only two minutes after. A blob of that name without a
                // readable time is not a record this crate wrote: left alone, never deleted.
                match until {
                    Some(u) if u >= now => view.waiters += 1,
                    Some(u) if u.saturating_add(120) >= now => {}
                    Some(_) => view.stale_waiters.push(blob.name),
                    None => {}
                }
            }
        }
        view
    }
}

/// Whether `id` is a waiter record's id as [`Layout::waiter`] is given them: 32 lower-case hex
/// digits and nothing more. Anything else under the prefix (`waiter-nightly`, a lock or another
/// semaphore nested under `NAME/waiter-x/…`) is someone else's blob, never counted or deleted.
fn is_waiter_id(id: Option<&str>) -> bool {
    id.is_some_and(|id| id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// One listing of a semaphore's blobs.
#[derive(Debug, Default)]
pub(super) struct View {
    /// The manifest: `None` missing, `Some(None)` unreadable, `Some(Some(n))` n slots.
    pub(super) manifest: Option<Option<u32>>,
    /// Slot blobs by number (missing ones were never used).
    pub(super) slots: BTreeMap<u32, ListedBlob>,
    /// Waiter records still counting.
    pub(super) waiters: usize,
    /// Waiter records past their time (their clients are gone).
    pub(super) stale_waiters: Vec<String>,
}

impl View {
    /// The recorded number of slots; `Ok(None)` when there is no manifest yet.
    pub(super) fn recorded(&self, semaphore: &str) -> Result<Option<u32>, SemaphoreError> {
        match self.manifest {
            None => Ok(None),
            Some(Some(n)) if (1..=MAX_SLOTS).contains(&n) => Ok(Some(n)),
            Some(_) => Err(SemaphoreError::Inconsistent {
                semaphore: semaphore.to_string(),
                why: format!("its manifest has no readable slot count (metadata {META_SLOTS}, 1 to {MAX_SLOTS})"),
            }),
        }
    }

    /// Checks that no slot at or beyond `slots` is held (a manifest deleted and written again
    /// with a smaller number while slots were held): that would make more holders than slots.
    pub(super) fn check_held_within(&self, semaphore: &str, slots: u32) -> Result<(), SemaphoreError> {
        match self.slots.range(slots..).find(|(_, b)| b.locked) {
            Some((n, _)) => Err(SemaphoreError::Inconsistent {
                semaphore: semaphore.to_string(),
                why: format!(
                    "slot {n} is held but the manifest says {slots} slots (was the manifest deleted and \
                     rewritten while slots were held?); wait until it is free"
                ),
            }),
            None => Ok(()),
        }
    }

    /// Slots below `slots` that are not locked (including never-used ones).
    pub(super) fn free(&self, slots: u32) -> Vec<u32> {
        (0..slots)
            .filter(|n| !self.slots.get(n).is_some_and(|b| b.locked))
            .collect()
    }
}

/// Seconds since the Unix epoch on this machine's clock.
pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_counts_and_names_are_refused_before_any_request() {
        let name = || LockName::new("db").unwrap();
        assert!(Layout::new(name(), 0).is_err());
        assert!(Layout::new(name(), MAX_SLOTS + 1).is_err());
        assert!(Layout::new(name(), u32::MAX).is_err());
        let l = Layout::new(name(), MAX_SLOTS).unwrap();
        assert_eq!(l.slot(7).unwrap().as_str(), "db/slot-0007");
        assert_eq!(l.manifest().unwrap().as_str(), "db/semaphore");
        // A name that fits as a lock but leaves no room for the slot names.
        let long = LockName::new("a".repeat(1020)).unwrap();
        assert!(Layout::new(long, 1).is_err());
    }

    /// Only this semaphore's own records count: a lock or another semaphore nested under
    /// `NAME/waiter-…` is neither a waiter nor stale (on 066b881 waiters of `q` deleted
    /// `q/waiter-db/semaphore`, and a second N came in: two holders on N = 1).
    #[test]
    fn only_own_waiter_records_are_counted_or_deleted() {
        let layout = Layout::new(LockName::new("q").unwrap(), 1).unwrap();
        let blob = |name: &str, until: Option<u64>| {
            let mut metadata = BTreeMap::new();
            if let Some(u) = until {
                metadata.insert(META_UNTIL.to_string(), u.to_string());
            }
            ListedBlob {
                name: name.to_string(),
                state: crate::mutex::LeaseState::Available,
                locked: false,
                fencing_token: None,
                holder: None,
                metadata,
                etag: None,
            }
        };
        let id = "0123456789abcdef0123456789abcdef";
        let listing = Listing {
            blobs: vec![
                blob("q/waiter-db/semaphore", None),
                blob("q/waiter-db/slot-0000", Some(1)),
                blob("q/waiter-nightly", Some(1)),
                blob(&format!("q/waiter-{id}/x"), Some(1)),
                blob(&format!("q/waiter-{}", id.to_uppercase()), Some(1)),
                blob(&format!("q/waiter-{id}"), None),
                blob(&format!("q/waiter-{}", "f".repeat(32)), Some(1)),
                blob(&format!("q/waiter-{}", "e".repeat(32)), Some(u64::MAX)),
            ],
            next_marker: None,
        };
        let view = layout.view(listing);
        assert_eq!(view.stale_waiters, [format!("q/waiter-{}", "f".repeat(32))]);
        assert_eq!(view.waiters, 1);
    }
}
