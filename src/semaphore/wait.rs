//! Waiting for a slot: polls spaced by the number of waiters, waiter records, giving up.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use crate::mutex::AzureMutex;
use crate::types::LockName;

use super::layout::{unix_now, META_UNTIL};
use super::{Full, Semaphore, SemaphoreError, Take};

/// The shortest time between two refreshes of one waiter record.
const REFRESH_MIN: Duration = Duration::from_secs(20);

/// About how many waiter-record refreshes per second all waiters of one semaphore make
/// together once there are more than 20 of them.
const REFRESHES_PER_SECOND: u64 = 1;

/// How many stale waiter records one poll deletes at most.
const STALE_PER_POLL: usize = 2;

/// How long a cleanup request may take.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// This client's waiter record: written when the wait finds the semaphore full, refreshed while
/// it waits, deleted (in the background) when dropped.
struct Record {
    mutex: AzureMutex,
    name: LockName,
    refreshed: Instant,
    every: Duration,
    /// Deleted already (by [`Record::remove`]): nothing to do on drop.
    removed: bool,
}

impl Record {
    /// Writes (or rewrites) the record, valid for a little more than two refresh intervals.
    async fn write(mutex: &AzureMutex, name: &LockName, every: Duration) -> bool {
        let until = unix_now() + 2 * every.as_secs() + 15;
        let metadata: BTreeMap<String, String> = [(META_UNTIL.to_string(), until.to_string())].into();
        match mutex.put_record(name, &metadata, false).await {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(record = %name, error = %e, "could not record this waiter");
                false
            }
        }
    }
}

impl Record {
    /// Deletes the record now (bounded), for a wait that ends without a slot: the caller may
    /// exit right after, before a background deletion would run.
    async fn remove(mut self) {
        self.removed = true;
        let _ = tokio::time::timeout(CLEANUP_TIMEOUT, self.mutex.delete_record(&self.name)).await;
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let (mutex, name) = (self.mutex.clone(), self.name.clone());
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = tokio::time::timeout(CLEANUP_TIMEOUT, mutex.delete_record(&name)).await;
            });
        }
    }
}

/// How often a waiter among `waiters` refreshes its record.
fn refresh_every(waiters: usize) -> Duration {
    REFRESH_MIN.max(Duration::from_secs(waiters as u64 / REFRESHES_PER_SECOND))
}

impl Semaphore {
    /// The pause of one waiter among `waiters` before its next listing: `waiters /
    /// polls_per_second`, within `poll_min..poll_max`, jittered by ±50 %.
    pub(super) fn pause(&self, waiters: usize) -> Duration {
        let o = &self.options;
        let spread = Duration::from_secs_f64(waiters.max(1) as f64 / f64::from(o.polls_per_second));
        let base = spread.clamp(o.poll_min, o.poll_max);
        base.mul_f64(0.5 + fastrand::f64())
    }

    pub(super) async fn wait<K: Take>(
        &self,
        take: &K,
        limit: Option<Instant>,
        cancel: impl Future<Output = ()>,
    ) -> Result<(K::Out, u32), SemaphoreError> {
        let mut record: Option<Record> = None;
        let result = self.wait_with(take, limit, cancel, &mut record).await;
        // Without a slot (or for a caller about to exit) the record is deleted now; with a
        // permit, in the background as it drops here.
        if result.is_err() || K::SHORT_LIVED {
            if let Some(r) = record.take() {
                r.remove().await;
            }
        }
        result
    }

    async fn wait_with<K: Take>(
        &self,
        take: &K,
        limit: Option<Instant>,
        cancel: impl Future<Output = ()>,
        record: &mut Option<Record>,
    ) -> Result<(K::Out, u32), SemaphoreError> {
        tokio::pin!(cancel);
        let started = Instant::now();
        let name = self.layout.name.to_string();
        let cancelled = || SemaphoreError::Cancelled {
            semaphore: name.clone(),
        };
        let mut failing_since: Option<Instant> = None;
        let mut backoff = self.options.poll_min;
        let mut deleted: Vec<String> = Vec::new();
        let mut unregistered: Option<Duration> = None;
        loop {
            let outcome = tokio::select! {
                r = self.attempt(take) => r,
                _ = &mut cancel => return Err(cancelled()),
            };
            let pause = match outcome {
                Ok(Ok(got)) => return Ok(got),
                Ok(Err(Full { waiters, stale })) => {
                    failing_since = None;
                    backoff = self.options.poll_min;
                    let counted = waiters + usize::from(record.is_none());
                    self.keep_record(record, counted).await;
                    self.delete_stale(stale, &mut deleted).await;
                    if self.options.register_waiters {
                        self.pause(counted)
                    } else {
                        // As a Locker polls: first pause poll_initial, ×1.5 up to poll_max,
                        // each jittered down to half.
                        let locker = &self.options.locker;
                        let p = unregistered.unwrap_or(locker.poll_initial);
                        unregistered = Some(p.mul_f64(1.5).min(locker.poll_max));
                        p.mul_f64(0.5 + fastrand::f64() / 2.0)
                    }
                }
                Err(e) if e.is_transient() => {
                    let since = *failing_since.get_or_insert(started.max(Instant::now()));
                    if let Some(patience) = self.options.locker.give_up_after {
                        if since.elapsed() >= patience {
                            return Err(e);
                        }
                    }
                    // Out of time while storage fails: say that, not "full" (nothing was listed).
                    if limit.is_some_and(|l| Instant::now() >= l) {
                        return Err(e);
                    }
                    tracing::warn!(semaphore = %name, error = %e, "acquire attempt failed; will retry");
                    backoff = (backoff * 2).min(self.options.poll_max.min(Duration::from_secs(4)));
                    backoff.mul_f64(0.5 + fastrand::f64() / 2.0)
                }
                Err(e) => return Err(e),
            };
            let now = Instant::now();
            let wake = match limit {
                Some(l) if now >= l => {
                    return Err(SemaphoreError::TimedOut {
                        semaphore: name.clone(),
                        slots: self.slots,
                        waited: started.elapsed(),
                    })
                }
                Some(l) => (now + pause).min(l),
                None => now + pause,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = &mut cancel => return Err(cancelled()),
            }
        }
    }

    /// Writes this waiter's record when the wait first finds the semaphore full, and rewrites
    /// it when due. Failures only cost accuracy of the count.
    async fn keep_record(&self, record: &mut Option<Record>, waiters: usize) {
        if !self.options.register_waiters {
            return;
        }
        let every = refresh_every(waiters);
        match record {
            Some(r) if r.refreshed.elapsed() < r.every => {}
            Some(r) => {
                r.every = every;
                r.refreshed = Instant::now();
                Record::write(&r.mutex, &r.name, every).await;
            }
            None => {
                let Ok(name) = self.layout.waiter(&uuid::Uuid::new_v4().simple().to_string()) else {
                    return;
                };
                if Record::write(&self.mutex, &name, every).await {
                    *record = Some(Record {
                        mutex: self.mutex.clone(),
                        name,
                        refreshed: Instant::now(),
                        every,
                        removed: false,
                    });
                }
            }
        }
    }

    /// Deletes a few records of waiters that are gone (each once per wait).
    async fn delete_stale(&self, stale: Vec<String>, deleted: &mut Vec<String>) {
        let todo = stale.into_iter().filter(|s| !deleted.contains(s)).take(STALE_PER_POLL);
        for blob in todo.collect::<Vec<_>>() {
            if let Ok(name) = LockName::new(blob.as_str()) {
                let _ = self.mutex.delete_record(&name).await;
            }
            if deleted.len() < 1000 {
                deleted.push(blob);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refreshes_stay_bounded_as_waiters_grow() {
        assert_eq!(refresh_every(1), REFRESH_MIN);
        assert_eq!(refresh_every(20), REFRESH_MIN);
        // 1,000 waiters refresh every 1,000 s: one refresh a second in all.
        assert_eq!(refresh_every(1000), Duration::from_secs(1000));
    }
}
