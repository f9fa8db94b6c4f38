//! [`SemaphoreStatus`]: what `azmutex status` shows of a semaphore.

use crate::mutex::{AzureMutex, HolderInfo, LeaseState};
use crate::types::LockName;

use super::layout::Layout;
use super::{list_all, Semaphore, SemaphoreError};

/// One slot as listed.
#[derive(Debug, Clone)]
pub struct SlotStatus {
    /// The slot's number.
    pub slot: u32,
    /// Whether its lock blob exists (a slot never used has none).
    pub exists: bool,
    /// Its lease state.
    pub state: LeaseState,
    /// Whether it is held (locked).
    pub locked: bool,
    /// The holder recorded by its last acquire that recorded one, while held.
    pub holder: Option<HolderInfo>,
    /// The last fencing token handed out with it.
    pub fencing_token: Option<u64>,
}

/// A semaphore's slots and waiters, from one listing.
#[derive(Debug, Clone)]
pub struct SemaphoreStatus {
    /// The semaphore's name.
    pub name: LockName,
    /// Its number of slots, from its manifest.
    pub slots: u32,
    /// Every slot, in order.
    pub slot_states: Vec<SlotStatus>,
    /// How many clients are recorded as waiting.
    pub waiters: usize,
}

impl SemaphoreStatus {
    /// How many slots are held.
    pub fn held(&self) -> usize {
        self.slot_states.iter().filter(|s| s.locked).count()
    }
}

impl Semaphore {
    /// Reads the semaphore `name`'s slots (one List Blobs request): `None` when there is no
    /// semaphore of that name (no manifest). The number of slots comes from the manifest.
    pub async fn status_of(
        mutex: &AzureMutex,
        name: impl TryInto<LockName, Error = crate::error::InvalidInput>,
    ) -> Result<Option<SemaphoreStatus>, SemaphoreError> {
        let name = name.try_into()?;
        let layout = Layout::new(name.clone(), 1)?;
        let mut view = layout.view(list_all(mutex, &layout.prefix).await?);
        let Some(slots) = view.recorded(name.as_str())? else {
            return Ok(None);
        };
        // Every slot, and any held beyond the recorded number (shown, so that the
        // inconsistency is visible).
        let last = view.slots.keys().next_back().map_or(0, |n| n + 1);
        let mut slot_states = Vec::new();
        for n in 0..slots.max(last) {
            let blob = view.slots.remove(&n);
            if n >= slots && !blob.as_ref().is_some_and(|b| b.locked) {
                continue;
            }
            slot_states.push(match blob {
                Some(b) => SlotStatus {
                    slot: n,
                    exists: true,
                    state: b.state,
                    locked: b.locked,
                    holder: b.holder,
                    fencing_token: b.fencing_token,
                },
                None => SlotStatus {
                    slot: n,
                    exists: false,
                    state: LeaseState::Available,
                    locked: false,
                    holder: None,
                    fencing_token: None,
                },
            });
        }
        Ok(Some(SemaphoreStatus {
            name,
            slots,
            slot_states,
            waiters: view.waiters,
        }))
    }

    /// This semaphore's status (see [`Semaphore::status_of`]).
    pub async fn status(&self) -> Result<Option<SemaphoreStatus>, SemaphoreError> {
        Self::status_of(&self.mutex, &self.layout.name).await
    }
}
