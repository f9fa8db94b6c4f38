//! Whose request goes next when a client is busy: a bound on requests in flight (with
//! HTTP/1.1, each one is a connection), served upkeep first, and a pace for acquisitions.
//!
//! A process that holds thousands of leases and acquires thousands more must not let a renewal
//! wait behind the acquisitions: a renewal that waits too long loses its lease. So:
//! - at most [`ClientOptions::max_connections`] requests are in flight per client (and its
//!   clones); the rest wait for a turn. An eighth of them (at least one, when there are two or
//!   more) is kept for upkeep: requests that hang (a blackholed acquisition waits out its whole
//!   request timeout) can never take every connection a renewal needs;
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
    /// The most requests in flight.
    limit: usize,
    /// The most requests in flight that are not upkeep (`limit` less the reserve).
    others_limit: usize,
    queues: Mutex<Queues>,
    pace: Option<Pace>,
}

#[derive(Default)]
struct Queues {
    in_flight: usize,
    /// Of `in_flight`, those that are not upkeep.
    others_in_flight: usize,
    upkeep: VecDeque<oneshot::Sender<Turn>>,
    other: VecDeque<oneshot::Sender<Turn>>,
}

/// The right to have one request in flight; the next waiter gets one when this is dropped.
pub(crate) struct Turn {
    schedule: Option<std::sync::Arc<Schedule>>,
    upkeep: bool,
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(schedule) = self.schedule.take() {
            {
                let mut q = schedule.queues();
                q.in_flight = q.in_flight.saturating_sub(1);
                if !self.upkeep {
                    q.others_in_flight = q.others_in_flight.saturating_sub(1);
                }
            }
            Schedule::dispatch(&schedule);
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

    /// Gives back a slot reserved but not used (its waiter was cancelled before it came): the
    /// clock steps back one interval, so that acquisitions given up in bulk do not hold up the
    /// next ones for as long as they would have taken. Never behind a burst's length ago.
    fn give_back(&self) {
        let now = Instant::now();
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = *next {
            let earliest = now.checked_sub(self.burst).unwrap_or(now);
            *next = Some(n.checked_sub(self.interval).unwrap_or(n).max(earliest));
        }
    }
}

/// A reserved pace slot while its waiter sleeps towards it: given back if the waiter is
/// dropped first.
struct Reserved<'a> {
    pace: &'a Pace,
    used: bool,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if !self.used {
            self.pace.give_back();
        }
    }
}

impl Schedule {
    pub(crate) fn new(options: &ClientOptions) -> Self {
        let limit = options.max_connections.max(1);
        let reserve = if limit >= 2 { (limit / 8).max(1) } else { 0 };
        Self {
            limit,
            others_limit: limit - reserve,
            queues: Mutex::new(Queues::default()),
            pace: Pace::new(options.acquire_rate),
        }
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a request (`upkeep` or not) may start now, given `q`.
    fn fits(&self, q: &Queues, upkeep: bool) -> bool {
        q.in_flight < self.limit && (upkeep || q.others_in_flight < self.others_limit)
    }

    /// Counts a request of `upkeep` or not as started.
    fn start(self: &std::sync::Arc<Self>, q: &mut Queues, upkeep: bool) -> Turn {
        q.in_flight += 1;
        if !upkeep {
            q.others_in_flight += 1;
        }
        Turn {
            schedule: Some(self.clone()),
            upkeep,
        }
    }

    /// Waits for a turn to send a request of `class`, until `deadline`. `None` if the deadline
    /// came first (nothing may be sent).
    pub(crate) async fn turn(self: &std::sync::Arc<Self>, class: Class, deadline: Instant) -> Option<Turn> {
        if class == Class::Acquire {
            if let Some(pace) = &self.pace {
                let slot = pace.reserve(deadline)?;
                if slot > Instant::now() {
                    let mut reserved = Reserved { pace, used: false };
                    tokio::time::sleep_until(slot.into()).await;
                    reserved.used = true;
                }
            }
        }
        let upkeep = class == Class::Upkeep;
        let rx = {
            let mut q = self.queues();
            // Nobody overtakes a waiter of the same class (or upkeep at all).
            let queued_before = !q.upkeep.is_empty() || (!upkeep && !q.other.is_empty());
            if !queued_before && self.fits(&q, upkeep) {
                return Some(self.start(&mut q, upkeep));
            }
            let (tx, rx) = oneshot::channel();
            let queue = if upkeep { &mut q.upkeep } else { &mut q.other };
            // Waiters that gave up stay queued until a dispatch skips them; drop them now and
            // then (amortized: when the queue doubles) so that they cannot pile up.
            if queue.len() >= 64 && queue.len().is_power_of_two() {
                queue.retain(|w| !w.is_closed());
            }
            queue.push_back(tx);
            rx
        };
        // A turn handed to a waiter that has gone (deadline, cancelled) comes back through the
        // Turn's drop and goes to the next one.
        tokio::time::timeout_at(deadline.into(), rx).await.ok()?.ok()
    }

    /// Hands out turns to waiters while they fit: upkeep first, then the others in order.
    fn dispatch(schedule: &std::sync::Arc<Self>) {
        loop {
            let (tx, turn) = {
                let mut q = schedule.queues();
                let upkeep = if !q.upkeep.is_empty() && schedule.fits(&q, true) {
                    true
                } else if !q.other.is_empty() && schedule.fits(&q, false) {
                    false
                } else {
                    return;
                };
                let tx = if upkeep {
                    q.upkeep.pop_front()
                } else {
                    q.other.pop_front()
                };
                let Some(tx) = tx else { return };
                (tx, schedule.start(&mut q, upkeep))
            };
            // A waiter that is gone: take the turn back here (not through its drop, which would
            // dispatch again, one stack frame per gone waiter) and look for the next one.
            if let Err(mut turn) = tx.send(turn) {
                turn.schedule = None;
                let mut q = schedule.queues();
                q.in_flight = q.in_flight.saturating_sub(1);
                if !turn.upkeep {
                    q.others_in_flight = q.others_in_flight.saturating_sub(1);
                }
            }
        }
    }

    /// Requests in flight now, and requests waiting for a turn.
    pub(crate) fn load(&self) -> (usize, usize) {
        let q = self.queues();
        let waiting = q.upkeep.iter().chain(&q.other).filter(|w| !w.is_closed()).count();
        (q.in_flight, waiting)
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
        // Two connections: one for anything, one kept for upkeep.
        let s = schedule(2, 0);
        let a = s.turn(Class::Acquire, far()).await.unwrap();
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
        while s.load().1 < 20 {
            tokio::task::yield_now().await;
        }
        // The kept connection: a renewal goes at once, queue or not.
        let first = tokio::time::timeout(Duration::from_secs(5), s.turn(Class::Upkeep, far()))
            .await
            .expect("the reserve serves upkeep at once")
            .unwrap();
        assert_eq!(s.load(), (2, 20));
        // Both busy now: the next renewal waits, and goes before all 20.
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
        drop(first);
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

    /// Requests that hang (each one waits out its timeout) never take the connections upkeep
    /// needs: an eighth of them is kept for it.
    #[tokio::test]
    async fn hung_requests_never_take_every_connection() {
        let s = schedule(8, 0);
        let mut hung = Vec::new();
        for _ in 0..7 {
            hung.push(s.turn(Class::Acquire, far()).await.unwrap());
        }
        // An eighth acquisition waits (and gives up at its deadline)...
        assert!(s
            .turn(Class::Other, Instant::now() + Duration::from_millis(50))
            .await
            .is_none());
        // ...but a renewal goes at once.
        let renewal = tokio::time::timeout(Duration::from_secs(5), s.turn(Class::Upkeep, far()))
            .await
            .expect("upkeep is not starved")
            .unwrap();
        assert_eq!(s.load(), (8, 0));
        drop(renewal);
        drop(hung);
        assert_eq!(s.load(), (0, 0));
    }

    #[tokio::test]
    async fn never_more_in_flight_than_the_limit() {
        for (mix, most) in [(false, 7), (true, 8)] {
            let s = schedule(8, 0);
            let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let now = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let mut tasks = Vec::new();
            for i in 0..60 {
                let (s, peak, now) = (s.clone(), peak.clone(), now.clone());
                let class = if mix && i % 2 == 0 { Class::Upkeep } else { Class::Other };
                tasks.push(tokio::spawn(async move {
                    let _t = s.turn(class, far()).await.unwrap();
                    let n = now.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    peak.fetch_max(n, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    now.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            // Others alone never use the kept connection.
            assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), most, "mix {mix}");
            assert_eq!(s.load(), (0, 0));
        }
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
        while s.load().1 < 1 {
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

    /// Thousands of waiters that gave up, all skipped at once when a turn frees: no deep
    /// recursion, and the turn reaches the live waiter behind them.
    #[tokio::test]
    async fn a_turn_passes_over_thousands_of_gone_waiters() {
        let s = schedule(1, 0);
        let held = s.turn(Class::Other, far()).await.unwrap();
        let mut gone = Vec::new();
        for _ in 0..50_000 {
            let s = s.clone();
            gone.push(tokio::spawn(
                async move { s.turn(Class::Other, far()).await.map(|_| ()) },
            ));
        }
        while s.queues().other.len() < 50_000 {
            tokio::task::yield_now().await;
        }
        for g in &gone {
            g.abort();
        }
        for g in gone {
            let _ = g.await;
        }
        let live = {
            let s = s.clone();
            tokio::spawn(async move { s.turn(Class::Other, far()).await.map(|_| ()) })
        };
        drop(held);
        tokio::time::timeout(Duration::from_secs(10), live)
            .await
            .expect("the live waiter got the turn")
            .unwrap()
            .unwrap();
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

    /// Acquisitions cancelled while they wait for their slot give it back: the next one is not
    /// held up by slots nobody used.
    #[tokio::test]
    async fn cancelled_acquisitions_give_back_their_slots() {
        let s = schedule(64, 20);
        let mut waiting = Vec::new();
        for _ in 0..40 {
            let s = s.clone();
            waiting.push(tokio::spawn(
                async move { s.turn(Class::Acquire, far()).await.map(|_| ()) },
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        for w in &waiting {
            w.abort();
        }
        for w in waiting {
            let _ = w.await;
        }
        // Had the 40 kept their slots (at 20 a second), this one would wait about 2 s.
        let t0 = Instant::now();
        drop(s.turn(Class::Acquire, far()).await.unwrap());
        assert!(t0.elapsed() < Duration::from_millis(500), "{:?}", t0.elapsed());
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
