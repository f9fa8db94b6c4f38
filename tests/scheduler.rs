//! Many leases in one process, against Azurite: the client's schedule (a bound on requests in
//! flight, upkeep first, paced acquisitions) and spread renewal phases.
//!
//! Each test makes the old behaviour visible through a proxy that sees every request: all
//! requests at once (no bound), a renewal waiting behind a queue of acquisitions (a plain FIFO
//! bound), acquisitions in one burst (no pace), every lease renewing at the same moment (no
//! spread).

mod common;

use std::time::{Duration, Instant};

use azmutex::{AzureMutex, ClientOptions, Locker, LockerOptions};
use common::http_proxy::{peak_rate, Action, HttpProxy, Match};

fn mutex_via(proxy: &HttpProxy, container: &str, options: ClientOptions) -> AzureMutex {
    AzureMutex::builder(common::config_via(proxy.addr), container)
        .client_options(options)
        .build()
        .unwrap()
}

/// The most requests the proxy saw start within any `window` (each held there for at least
/// `window` by a delay rule, so this is how many were in flight together).
fn peak_in_flight(seen: &[common::http_proxy::Seen], action: &str, window: Duration) -> usize {
    peak_rate(seen, action, window)
}

/// The requests the proxy saw from `since` on.
fn seen_since(proxy: &HttpProxy, since: Instant) -> Vec<common::http_proxy::Seen> {
    proxy.seen().into_iter().filter(|s| s.at >= since).collect()
}

/// Creates the lock blobs `prefix-0` … `prefix-{n-1}` (an acquisition and a release each,
/// through an unpaced, unbounded client), so that later acquisitions are one request each.
async fn create_locks(container: &str, prefix: &str, n: usize) {
    let m = AzureMutex::builder(common::config(), container)
        .client_options(ClientOptions {
            acquire_rate: 0,
            max_connections: 16,
            ..common::fast_options()
        })
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..n {
        let m = m.clone();
        let name = format!("{prefix}-{i}");
        tasks.push(tokio::spawn(async move {
            let lease = m.acquire(name.as_str(), common::secs(15)).await.unwrap();
            m.release(&lease).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// With every connection busy on slow acquisitions and dozens more queued, a renewal is sent
/// at the next free turn, ahead of the queue; and no more requests are ever in flight than
/// `max_connections`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_is_never_queued_behind_bulk_acquisitions() {
    let proxy = HttpProxy::start(common::azurite_addr());
    let container = common::unique("sched");
    let options = ClientOptions {
        max_connections: 4,
        acquire_rate: 0,
        ..common::fast_options()
    };
    let mutex = mutex_via(&proxy, &container, options);
    create_locks(&container, "bulk", 40).await;
    let mut held = mutex.acquire("held", common::secs(60)).await.unwrap();
    // Every acquisition from now on takes 300 ms at the service.
    let delay = Duration::from_millis(300);
    proxy.add(Match::LeaseAction("acquire"), Action::Delay(delay), None);
    let since = Instant::now();
    let mut bulk = Vec::new();
    for i in 0..40 {
        let m = mutex.clone();
        bulk.push(tokio::spawn(async move {
            m.acquire(format!("bulk-{i}").as_str(), common::secs(60)).await.unwrap();
            Instant::now()
        }));
    }
    // Let the queue form: 3 in flight (the fourth connection is kept for upkeep), 37 waiting.
    let t0 = Instant::now();
    while mutex.client().load() != (3, 37) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "queue: {:?}",
            mutex.client().load()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let asked = Instant::now();
    mutex.renew(&mut held).await.unwrap();
    let renewed = Instant::now();
    let mut done = Vec::new();
    for b in bulk {
        done.push(b.await.unwrap());
    }
    // Behind a FIFO queue the renewal would wait for 37 acquisitions (13 rounds of 300 ms).
    let waited = renewed - asked;
    let after = done.iter().filter(|t| **t > renewed).count();
    assert!(
        after >= 30,
        "the renewal took {waited:?} and was served after {} of 40 acquisitions",
        40 - after
    );
    // Never more than 3 acquisitions in flight at once (old code: all 40).
    let seen = seen_since(&proxy, since);
    let peak = peak_in_flight(&seen, "acquire", delay - Duration::from_millis(50));
    assert!(peak <= 3, "{peak} acquisitions in flight at once");
    assert_eq!(mutex.client().load(), (0, 0));
}

/// Acquisitions that hang (their requests swallowed, each waiting out its timeout) never take
/// every connection: a renewal still goes at once on the one kept for upkeep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_acquisitions_never_starve_a_renewal() {
    let proxy = HttpProxy::start(common::azurite_addr());
    let container = common::unique("hung");
    let options = ClientOptions {
        max_connections: 8,
        acquire_rate: 0,
        ..common::fast_options()
    };
    let mutex = mutex_via(&proxy, &container, options);
    create_locks(&container, "bulk", 20).await;
    let mut held = mutex.acquire("held", common::secs(60)).await.unwrap();
    proxy.add(Match::LeaseAction("acquire"), Action::Blackhole, None);
    let mut bulk = Vec::new();
    for i in 0..20 {
        let m = mutex.clone();
        bulk.push(tokio::spawn(async move {
            let _ = m.acquire(format!("bulk-{i}").as_str(), common::secs(60)).await;
        }));
    }
    let t0 = Instant::now();
    while mutex.client().load().0 < 7 {
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", mutex.client().load());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let asked = Instant::now();
    mutex.renew(&mut held).await.unwrap();
    let took = asked.elapsed();
    // Without the kept connection it would wait for a hung request's 5 s timeout.
    assert!(
        took < Duration::from_secs(2),
        "the renewal waited {took:?} behind hung acquisitions"
    );
    for b in bulk {
        b.abort();
    }
}

/// A bulk acquisition is paced at `acquire_rate` (bursts of a tenth of a second's worth),
/// while renewals of held leases go out at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_acquisition_is_paced_and_renewals_are_not() {
    let proxy = HttpProxy::start(common::azurite_addr());
    let container = common::unique("pace");
    let options = ClientOptions {
        acquire_rate: 40,
        ..common::fast_options()
    };
    let mutex = mutex_via(&proxy, &container, options);
    create_locks(&container, "bulk", 120).await;
    let mut held = Vec::new();
    for i in 0..4 {
        held.push(
            mutex
                .acquire(format!("held-{i}").as_str(), common::secs(60))
                .await
                .unwrap(),
        );
    }
    let t0 = Instant::now();
    let mut bulk = Vec::new();
    for i in 0..120 {
        let m = mutex.clone();
        bulk.push(tokio::spawn(async move {
            m.acquire(format!("bulk-{i}").as_str(), common::secs(60)).await.unwrap();
        }));
    }
    // Renewals while the bulk acquisition is under way: each one at once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for lease in &mut held {
        let asked = Instant::now();
        mutex.renew(lease).await.unwrap();
        let took = asked.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "a renewal waited {took:?} behind the pace"
        );
    }
    for b in bulk {
        b.await.unwrap();
    }
    let took = t0.elapsed();
    // 120 at 40 a second, the first 4 at once: about 2.9 s (old code: one burst).
    assert!(took >= Duration::from_millis(2500), "120 acquisitions in {took:?}");
    let peak = peak_rate(&seen_since(&proxy, t0), "acquire", Duration::from_secs(1));
    assert!(peak <= 40 + 4, "{peak} acquisitions in one second");
}

/// Leases acquired together do not renew together: the first renewals spread over the renewal
/// interval, and each lease then keeps its phase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_acquired_together_renew_at_spread_times() {
    let proxy = HttpProxy::start(common::azurite_addr());
    let container = common::unique("phase");
    let mutex = mutex_via(&proxy, &container, common::fast_options());
    let options = LockerOptions {
        lease: common::secs(15),
        renew_every: Some(Duration::from_secs(5)),
        ..LockerOptions::default()
    };
    let t0 = Instant::now();
    let mut guards = Vec::new();
    for i in 0..30 {
        let locker = Locker::with_options(mutex.clone(), format!("job-{i:05}").as_str(), options.clone()).unwrap();
        guards.push(locker.lock().await.unwrap());
    }
    let acquired_in = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(5500) - acquired_in.min(Duration::from_millis(500))).await;
    let renewals: Vec<Duration> = proxy
        .seen()
        .iter()
        .filter(|s| s.lease_action.as_deref() == Some("renew") && s.at >= t0)
        .map(|s| s.at - t0)
        .collect();
    for g in &mut guards {
        assert!(g.is_held());
        g.release().await.unwrap();
    }
    // Every lease renewed in its first interval; without spreading they would all renew in
    // the same moment, 5 s after acquiring (old code: within acquired_in of each other).
    assert!(renewals.len() >= 29, "{} renewals: {renewals:?}", renewals.len());
    let first = renewals.iter().min().unwrap();
    let last = renewals.iter().max().unwrap();
    assert!(
        *last - *first >= Duration::from_millis(2500),
        "the first renewals came between {first:?} and {last:?} (acquired in {acquired_in:?})"
    );
    let early = renewals.iter().filter(|d| **d < Duration::from_millis(3000)).count();
    assert!(
        early >= 5,
        "only {early} of {} renewals in the first 3 s",
        renewals.len()
    );
}

fn spread_mutex(container: &str, spread: bool) -> AzureMutex {
    AzureMutex::builder(common::config(), container)
        .client_options(common::fast_options())
        .fencing(true)
        .spread_names(spread)
        .build()
        .unwrap()
}

/// With spread names a lock lives in a blob behind a hash prefix (Python:
/// `hashlib.sha256(b"job-1").hexdigest()[:3]` is `026`); lock names keep their meaning in
/// listings, and a client without the setting is on another blob (documented: all clients of a
/// lock must agree).
#[tokio::test]
async fn spread_names_put_each_lock_behind_a_hash_prefix() {
    let container = common::unique("spread");
    let spread = spread_mutex(&container, true);
    let plain = spread_mutex(&container, false);
    let lease = spread.acquire("job-1", common::secs(15)).await.unwrap();
    assert!(lease.fencing_token().is_some());
    // The blob behind it, seen without the setting.
    let info = plain.inspect("026-job-1").await.unwrap();
    assert!(info.locked, "{info:?}");
    let mine = spread.inspect("job-1").await.unwrap();
    assert!(mine.locked);
    assert_eq!(mine.fencing_token, lease.fencing_token());
    // Without the setting, "job-1" is another blob, free.
    let other = plain.acquire("job-1", common::secs(15)).await.unwrap();
    plain.release(&other).await.unwrap();
    // Listings give lock names; foreign blobs (the plain "job-1") are left out.
    let listed: Vec<String> = spread
        .list("job", None)
        .await
        .unwrap()
        .blobs
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(listed, vec!["job-1".to_string()]);
    let all: Vec<String> = plain
        .list("", None)
        .await
        .unwrap()
        .blobs
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(all, vec!["026-job-1".to_string(), "job-1".to_string()]);
    spread.release(&lease).await.unwrap();
    // A name too long for the prefix is refused before the network.
    let long = "a".repeat(1022);
    let err = spread.acquire(long.as_str(), common::secs(15)).await.unwrap_err();
    assert!(matches!(err, azmutex::Error::InvalidInput(_)), "{err:?}");
}

/// A semaphore's blobs share one prefix, so it still finds its slots by listing.
#[tokio::test]
async fn semaphores_work_with_spread_names() {
    let container = common::unique("spreadsem");
    let spread = spread_mutex(&container, true);
    let sem = azmutex::semaphore::Semaphore::new(spread.clone(), "db", 2).unwrap();
    let a = sem.try_acquire().await.unwrap();
    let b = sem.try_acquire().await.unwrap();
    assert_ne!(a.slot(), b.slot());
    assert!(sem.try_acquire().await.is_err(), "a third holder in two slots");
    let status = sem.status().await.unwrap().unwrap();
    assert_eq!((status.slots, status.held()), (2, 2));
    // Every blob of it behind the prefix of "db" (Python: sha256(b"db")[:3] is 7bd).
    let plain = spread_mutex(&container, false);
    let blobs: Vec<String> = plain
        .list("", None)
        .await
        .unwrap()
        .blobs
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert!(
        !blobs.is_empty() && blobs.iter().all(|n| n.starts_with("7bd-db/")),
        "{blobs:?}"
    );
    drop((a, b));
}
