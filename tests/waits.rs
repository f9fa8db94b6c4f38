//! Waiting for a lock: a wait of zero is "do not wait", every wait makes at least one whole
//! attempt, a busy lock is a timeout (never a storage error), and a cancelled wait leaves no
//! lease behind even while the service version is still being negotiated. Against Azurite,
//! behind `common::http_proxy` where an answer must be slow or lost.

mod common;

use std::time::Duration;

use azmutex::{LeaseState, LockError, Locker};
use common::http_proxy::{Action, HttpProxy, Match};
use common::secs;

/// Item 5 of issue 16: on main 5136815 `lock_timeout(Duration::ZERO)` (and 1 ms, 10 ms) on a
/// *free* lock failed with "storage unreachable ... 1 attempts (request timed out)", and on a
/// busy lock with the same storage error instead of a timeout.
#[tokio::test]
async fn short_waits_make_one_whole_attempt() {
    let proxy = HttpProxy::start(common::azurite_addr());
    // Every acquire answer takes 300 ms, as a first acquire on real Azure may.
    proxy.add(
        Match::LeaseAction("acquire"),
        Action::Delay(Duration::from_millis(300)),
        None,
    );
    let container = common::unique("shortwait");
    let locker = Locker::with_options(
        common::via(proxy.addr, &container, true),
        "job",
        common::locker_options(secs(15)),
    )
    .unwrap();
    for wait in [Duration::ZERO, Duration::from_millis(1), Duration::from_millis(10)] {
        let mut guard = locker
            .lock_timeout(wait)
            .await
            .unwrap_or_else(|e| panic!("a free lock with a {wait:?} wait: {e}"));
        let other = Locker::with_options(
            common::via(proxy.addr, &container, true),
            "job",
            common::locker_options(secs(15)),
        )
        .unwrap();
        match other.lock_timeout(wait).await {
            Err(LockError::TimedOut { .. }) => {}
            other => panic!("a busy lock with a {wait:?} wait: {other:?}"),
        }
        guard.release().await.unwrap();
    }
}

/// Item 4 of issue 16: on main 5136815, cancelling a wait while the first acquire's answer was
/// lost (the version not settled yet) left the lease behind. The acquire held the version gate;
/// a status read started meanwhile (as `azmutex run` makes one after 300 ms to say who holds the
/// lock) queued at the gate first, took it when the acquire was abandoned, and held it for its
/// own lost answer; the cleanup release, queued behind it, was never sent within its 5 s.
#[tokio::test]
async fn a_cancelled_first_acquire_leaves_no_lease_while_the_version_is_unsettled() {
    let container = common::unique("gate");
    // The lock blob exists, so the client's very first request is the acquire.
    let direct = common::mutex(&container);
    let lease = direct.acquire("job", secs(15)).await.unwrap();
    direct.release(&lease).await.unwrap();

    let proxy = HttpProxy::start(common::azurite_addr());
    // The acquire and the status read are applied, their answers held back for 20 s (longer
    // than any request timeout).
    proxy.add(Match::Any, Action::Delay(Duration::from_secs(20)), Some(2));
    let mutex = common::via(proxy.addr, &container, false);
    let locker = Locker::with_options(mutex.clone(), "job", common::locker_options(secs(60))).unwrap();
    let status = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = mutex.inspect("job").await;
    });
    let cancel = tokio::time::sleep(Duration::from_millis(1000));
    let started = std::time::Instant::now();
    match locker.lock_until(None, cancel).await {
        Err(LockError::Cancelled { .. }) => {}
        other => panic!("expected a cancelled wait: {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "cleanup took {:?}",
        started.elapsed()
    );
    status.abort();
    let info = direct.inspect("job").await.unwrap();
    assert_ne!(
        info.state,
        LeaseState::Leased,
        "the cancelled wait left its lease behind (releases seen: {})",
        proxy.count("release")
    );
}

/// Issue 17 (medium): a wait honours `Retry-After` between its attempts too (on 5136815: 9
/// attempts in 8 s against `Retry-After: 3`).
#[tokio::test]
async fn a_wait_honours_retry_after_between_attempts() {
    let proxy = HttpProxy::start(common::azurite_addr());
    proxy.add(
        Match::LeaseAction("acquire"),
        Action::RespondRetryAfter(503, "ServerBusy", 3),
        None,
    );
    let container = common::unique("waitra");
    let locker = Locker::with_options(
        common::via(proxy.addr, &container, false),
        "job",
        common::locker_options(secs(15)),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let r = locker.lock_timeout(Duration::from_secs(8)).await;
    assert!(r.is_err(), "{r:?}");
    let attempts = proxy.count("acquire");
    eprintln!(
        "measured: {attempts} acquire requests in {:.1?} against Retry-After: 3",
        started.elapsed()
    );
    // One now, then at most one every 3 s within 8 s (and the client's own retries inside a
    // call honour it as well).
    assert!(
        attempts <= 4,
        "{attempts} acquire requests in 8 s against Retry-After: 3"
    );
}
