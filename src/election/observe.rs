//! [`Observer`]: the leader now and at every change, read by one task per name in a process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;

use tokio::sync::watch;

use super::*;

/// What the shared reader last saw.
#[derive(Debug, Clone)]
enum Seen {
    /// Nothing read yet.
    Unknown,
    /// The leader, or nobody.
    Known(Option<Leader>),
    /// A permanent error (authentication, permission, invalid input): the reader stopped.
    Failed(Error),
}

/// One reader task, shared by the observers of one name (same endpoint, container, lock and
/// interval) in this process; it stops when the last of them is dropped.
struct Shared {
    seen: watch::Receiver<Seen>,
    task: tokio::task::AbortHandle,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Key = (String, String, String, Duration);

fn readers() -> &'static Mutex<HashMap<Key, Weak<Shared>>> {
    static READERS: OnceLock<Mutex<HashMap<Key, Weak<Shared>>>> = OnceLock::new();
    READERS.get_or_init(Default::default)
}

/// Follows the leader of one name: [`next`](Observer::next) returns the current state first,
/// then each change, and says `None` when nobody leads (the lease is free, broken or expired).
///
/// The lock is read once per interval ([`Election::observe_interval`], default 1 s), one
/// request per interval for all observers of the name in this process while the service
/// answers, so a change is seen within about one interval. Transient failures are logged and
/// the last state kept; a permanent one (authentication, permission) ends the observation with
/// an error. Dropping the last observer of a name stops its reader.
#[derive(Debug)]
pub struct Observer {
    shared: Arc<Shared>,
    seen: watch::Receiver<Seen>,
    last: Option<Option<Leader>>,
    lock: LockName,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Observer {
    pub(super) fn new(mutex: AzureMutex, lock: LockName, every: Duration) -> Self {
        let key = (
            mutex.client().endpoint().to_string(),
            mutex.container().as_str().to_string(),
            lock.as_str().to_string(),
            every,
        );
        let mut map = readers().lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        let shared = match map.get(&key).and_then(Weak::upgrade) {
            Some(shared) => shared,
            None => {
                let (tx, rx) = watch::channel(Seen::Unknown);
                let task = tokio::spawn(read(mutex, lock.clone(), every, tx)).abort_handle();
                let shared = Arc::new(Shared { seen: rx, task });
                map.insert(key, Arc::downgrade(&shared));
                shared
            }
        };
        drop(map);
        let mut seen = shared.seen.clone();
        seen.mark_changed();
        Self {
            shared,
            seen,
            last: None,
            lock,
        }
    }

    /// The leader now (on the first call, after the first read) or at the next change:
    /// `Ok(None)` when nobody leads. Returns only when the state differs from what the last
    /// call returned. [`LockError::Storage`] when the reader stopped on a permanent error.
    pub async fn next(&mut self) -> Result<Option<Leader>, LockError> {
        loop {
            let seen = self.seen.borrow_and_update().clone();
            match seen {
                Seen::Known(leader) if self.last.as_ref() != Some(&leader) => {
                    self.last = Some(leader.clone());
                    return Ok(leader);
                }
                Seen::Failed(e) => return Err(e.into()),
                _ => {}
            }
            if self.seen.changed().await.is_err() {
                // The reader is gone (its runtime shut down).
                return Err(LockError::Cancelled {
                    lock: self.lock.to_string(),
                });
            }
        }
    }

    /// What [`next`](Observer::next) returned last (`None` before its first call returned).
    pub fn last(&self) -> Option<&Option<Leader>> {
        self.last.as_ref()
    }

    /// How many observers share this one's reader (this one included).
    pub fn sharing(&self) -> usize {
        Arc::strong_count(&self.shared)
    }
}

/// The shared reader: one read per interval, published when it changed.
async fn read(mutex: AzureMutex, lock: LockName, every: Duration, tx: watch::Sender<Seen>) {
    let mut failing = false;
    loop {
        let started = Instant::now();
        // One interval (at least a second) per read, so reads never pile up.
        let deadline = started
            .checked_add(every.max(Duration::from_secs(1)))
            .unwrap_or(started);
        let result = tokio::time::timeout_at(deadline.into(), mutex.inspect_until(&lock, deadline)).await;
        match result {
            Ok(Ok(info)) => {
                if failing {
                    tracing::info!(lock = %lock, "observing again");
                    failing = false;
                }
                let leader = Leader::from_lock_info(&info);
                tx.send_if_modified(|seen| match seen {
                    Seen::Known(l) if *l == leader => false,
                    _ => {
                        *seen = Seen::Known(leader);
                        true
                    }
                });
            }
            Ok(Err(e)) if !e.is_transient() => {
                tracing::warn!(lock = %lock, error = %e, "observing stopped");
                tx.send_replace(Seen::Failed(e));
                return;
            }
            Ok(Err(e)) => {
                if !failing {
                    tracing::warn!(lock = %lock, error = %e, "reading the leader failed; retrying");
                }
                failing = true;
            }
            Err(_) => {
                if !failing {
                    tracing::warn!(lock = %lock, "reading the leader timed out; retrying");
                }
                failing = true;
            }
        }
        let next = started.checked_add(every).unwrap_or(started).max(Instant::now());
        tokio::time::sleep_until(next.into()).await;
    }
}
