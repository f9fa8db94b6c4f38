//! Whose request goes next when a client is busy: a bound on requests in flight (with
//! HTTP/1.1, each one is a connection), served upkeep first, and a pace for acquisitions.
//!
//! A process that holds thousands of leases and acquires thousands more must not let a renewal
//! wait behind the acquisitions: a renewal that waits too long loses its lease. So:
//! - at most [`ClientOptions::max_connections`] requests are in flight per client (and its
//!   clones); the rest wait for a turn;
//! - a turn goes to upkeep first ([`Class::Upkeep`]: renew, release, change, the requests that
//!   keep or end a held lease), then to everything else in arrival order (acquisitions, waiter
//!   polls, observers, reads);
//! - acquisitions are paced ([`ClientOptions::acquire_rate`] requests a second, in bursts of
//!   at most a tenth of a second's worth) before they queue for a turn, so a bulk acquisition
//!   neither floods the account nor fills the queue ahead of upkeep. Upkeep is never paced.
//!
//! The wait for a turn happens before a request is signed and sent: the send time from which a
//! lease's validity is counted is taken after it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::ClientOptions;

/// The priority of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Keeps or ends a held lease (renew, release, change): served first, never paced.
    Upkeep,
    /// An acquisition: paced, then served in arrival order.
    Acquire,
    /// Everything else: served in arrival order.
    Other,
}

impl Class {
    /// The class of an operation (the `op` name of a [`RestRequest`](super::RestRequest)).
    pub(crate) fn of(op: &str) -> Self {
        match op {
            "renew" | "release" | "change" => Class::Upkeep,
            "acquire" => Class::Acquire,
            _ => Class::Other,
        }
    }
}

/// The turns of one client (shared by its clones).
pub(crate) struct Schedule {
    limit: usize,
    queues: Mutex<Queues>,
    pace: Option<Pace>,
}

#[derive(Default)]
struct Queues {
    in_flight: usize,
    upkeep: VecDeque<oneshot::Sender<Turn>>,
    other: VecDeque<oneshot::Sender<Turn>>,
}

/// The right to have one request in flight; the next waiter gets it when this is dropped.
pub(crate) struct Turn {
    schedule: Option<std::sync::Arc<Schedule>>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(schedule) = self.schedule.take() {
            Schedule::pass_on(schedule);
        }
    }
}

/// Acquisitions a second, as a "next free slot" clock (GCRA): each request takes the next
/// slot, one interval after the last, but never earlier than a burst's length ago.
struct Pace {
    interval: Duration,
    /// How far behind now a slot may be (the burst, less one request).
    burst: Duration,
    next: Mutex<Option<Instant>>,
}

impl Pace {
    fn new(per_second: u32) -> Option<Self> {
        if per_second == 0 {
            return None;
        }
        let interval = Duration::from_secs(1) / per_second;
        // A tenth of a second's worth at once (at least one request): slots may lag this far
        // behind now.
        let burst = (per_second / 10).max(1);
        Some(Self {
            interval,
            burst: interval * (burst - 1),
            next: Mutex::new(None),
        })
    }

    /// Reserves the next slot, unless it is at or after `deadline` (then nothing is reserved
    /// and `None` returned). The slot may be now.
    fn reserve(&self, deadline: Instant) -> Option<Instant> {
        let now = Instant::now();
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let earliest = now.checked_sub(self.burst).unwrap_or(now);
        let slot = next.map_or(earliest, |n| n.max(earliest));
        if slot > now && slot >= deadline {
            return None;
        }
        *next = Some(slot.checked_add(self.interval).unwrap_or(slot));
        Some(slot.max(now))
    }
}

impl Schedule {
    pub(crate) fn new(options: &ClientOptions) -> Self {
        Self {
            limit: options.max_connections.max(1),
            queues: Mutex::new(Queues::default()),
            pace: Pace::new(options.acquire_rate),
        }
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a turn to send a request of `class`, until `deadline`. `None` if the deadline
    /// came first (nothing may be sent).
    pub(crate) async fn turn(self: &std::sync::Arc<Self>, class: Class, deadline: Instant) -> Option<Turn> {
        if class == Class::Acquire {
            if let Some(pace) = &self.pace {
                let slot = pace.reserve(deadline)?;
                if slot > Instant::now() {
                    tokio::time::sleep_until(slot.into()).await;
                }
            }
        }
        let rx = {
            let mut q = self.queues();
            if q.in_flight < self.limit {
                q.in_flight += 1;
                return Some(Turn {
                    schedule: Some(self.clone()),
                });
            }
            let (tx, rx) = oneshot::channel();
            match class {
                Class::Upkeep => q.upkeep.push_back(tx),
                Class::Acquire | Class::Other => q.other.push_back(tx),
            }
            rx
        };
        // A turn handed to a waiter that has gone (deadline, cancelled) comes back through the
        // Turn's drop and goes to the next one.
        tokio::time::timeout_at(deadline.into(), rx).await.ok()?.ok()
    }

    /// A turn ended: hand it to the next waiter (upkeep first), or free it.
    fn pass_on(schedule: std::sync::Arc<Self>) {
        loop {
            let next = {
                let mut q = schedule.queues();
                match q.upkeep.pop_front().or_else(|| q.other.pop_front()) {
                    Some(tx) => tx,
                    None => {
                        q.in_flight = q.in_flight.saturating_sub(1);
                        return;
                    }
                }
            };
            let turn = Turn {
                schedule: Some(schedule.clone()),
            };
            match next.send(turn) {
                Ok(()) => return,
                // The waiter is gone: take the turn back (without running its drop) and try
                // the next one.
                Err(mut turn) => {
                    turn.schedule = None;
                }
            }
        }
    }

    /// Requests in flight now, and requests waiting for a turn.
    pub(crate) fn load(&self) -> (usize, usize) {
        let q = self.queues();
        (q.in_flight, q.upkeep.len() + q.other.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn schedule(limit: usize, rate: u32) -> Arc<Schedule> {
        Arc::new(Schedule::new(&ClientOptions {
            max_connections: limit,
            acquire_rate: rate,
            ..ClientOptions::default()
        }))
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn classes() {
        assert_eq!(Class::of("renew"), Class::Upkeep);
        assert_eq!(Class::of("release"), Class::Upkeep);
        assert_eq!(Class::of("change"), Class::Upkeep);
        assert_eq!(Class::of("acquire"), Class::Acquire);
        assert_eq!(Class::of("get-properties"), Class::Other);
        assert_eq!(Class::of("list-blobs"), Class::Other);
        assert_eq!(Class::of("break"), Class::Other);
    }

    /// The order the issue asks for: with every connection busy and acquisitions queued, a
    /// renewal that arrives last is served first.
    #[tokio::test]
    async fn upkeep_is_never_queued_behind_acquisitions() {
        let s = schedule(2, 0);
        let a = s.turn(Class::Acquire, far()).await.unwrap();
        let b = s.turn(Class::Acquire, far()).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..20 {
            let (s, order) = (s.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let t = s
                    .turn(if i % 2 == 0 { Class::Acquire } else { Class::Other }, far())
                    .await
                    .unwrap();
                order.lock().unwrap().push(format!("bulk{i}"));
                tokio::task::yield_now().await;
                drop(t);
            }));
            tokio::task::yield_now().await;
        }
        // Everything is queued now.
        while s.load().1 < 20 {
            tokio::task::yield_now().await;
        }
        let renewal = {
            let (s, order) = (s.clone(), order.clone());
            tokio::spawn(async move {
                let t = s.turn(Class::Upkeep, far()).await.unwrap();
                order.lock().unwrap().push("renew".to_string());
                drop(t);
            })
        };
        while s.load().1 < 21 {
            tokio::task::yield_now().await;
        }
        drop(a);
        renewal.await.unwrap();
        drop(b);
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap();
        assert_eq!(order[0], "renew", "the renewal went first: {order:?}");
        assert_eq!(order.len(), 21);
        // The rest in arrival order.
        let rest: Vec<String> = (0..20).map(|i| format!("bulk{i}")).collect();
        assert_eq!(&order[1..], &rest[..]);
        assert_eq!(s.load(), (0, 0));
    }

    #[tokio::test]
    async fn never_more_in_flight_than_the_limit() {
        let s = schedule(3, 0);
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let now = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (s, peak, now) = (s.clone(), peak.clone(), now.clone());
            tasks.push(tokio::spawn(async move {
                let _t = s.turn(Class::Other, far()).await.unwrap();
                let n = now.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                peak.fetch_max(n, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                now.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert_eq!(s.load(), (0, 0));
    }

    /// A waiter that gives up (deadline) or is cancelled does not take a turn with it.
    #[tokio::test]
    async fn abandoned_waiters_lose_no_turn() {
        let s = schedule(1, 0);
        let held = s.turn(Class::Other, far()).await.unwrap();
        // Gives up at its deadline.
        assert!(s
            .turn(Class::Other, Instant::now() + Duration::from_millis(20))
            .await
            .is_none());
        // Cancelled while waiting.
        let cancelled = {
            let s = s.clone();
            tokio::spawn(async move { s.turn(Class::Upkeep, far()).await.map(|_| ()) })
        };
        while s.load().1 < 2 {
            tokio::task::yield_now().await;
        }
        cancelled.abort();
        let _ = cancelled.await;
        drop(held);
        let again = tokio::time::timeout(Duration::from_secs(5), s.turn(Class::Other, far()))
            .await
            .expect("the turn came back")
            .unwrap();
        drop(again);
        assert_eq!(s.load(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn acquisitions_are_paced_and_upkeep_is_not() {
        let s = schedule(64, 100);
        let t0 = tokio::time::Instant::now();
        for _ in 0..110 {
            drop(s.turn(Class::Acquire, far()).await.unwrap());
        }
        // 100 a second with a burst of 10: the 110th waits about a second.
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(990), "{took:?}");
        assert!(took <= Duration::from_millis(1100), "{took:?}");
        let t1 = tokio::time::Instant::now();
        for _ in 0..1000 {
            drop(s.turn(Class::Upkeep, far()).await.unwrap());
            drop(s.turn(Class::Other, far()).await.unwrap());
        }
        assert_eq!(t1.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_past_the_deadline_is_not_reserved() {
        let s = schedule(64, 1);
        drop(s.turn(Class::Acquire, far()).await.unwrap());
        // The next slot is a second away; a deadline before it sends nothing and takes nothing.
        for _ in 0..5 {
            assert!(s
                .turn(Class::Acquire, Instant::now() + Duration::from_millis(500))
                .await
                .is_none());
        }
        // Had the five reserved their slots, this one would wait six seconds.
        let t0 = tokio::time::Instant::now();
        drop(s.turn(Class::Acquire, far()).await.unwrap());
        assert!(t0.elapsed() <= Duration::from_millis(1500), "{:?}", t0.elapsed());
    }
}
