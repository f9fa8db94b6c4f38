//! A throttled or refusing account is not flooded and does not change how a client talks to it
//! for life: renewals back off (the retry policy's backoff, or what `Retry-After` asks, never
//! more than one renewal request per second per lease), and a stray `x-ms-version` refusal after
//! the version settled is that request's error only. Against Azurite behind
//! `common::http_proxy`, which injects the answers.

mod common;

use std::time::{Duration, Instant};

use azmutex::locker::MIN_RENEWAL_GAP;
use azmutex::rest::DEFAULT_API_VERSION;
use azmutex::{Locker, LostReason};
use common::http_proxy::{peak_rate, Action, HttpProxy, Match};
use common::secs;

/// Holds a 15 s lease renewed every 2 s, then makes every renewal answer `answer` until the
/// lock is lost; returns the renew requests sent meanwhile, the peak in any 1 s window, how
/// long it took and the reason.
async fn renewals_under(answer: Action) -> (usize, usize, Duration, LostReason) {
    let proxy = HttpProxy::start(common::azurite_addr());
    let container = common::unique("backoff");
    let mutex = common::via(proxy.addr, &container, false);
    let mut options = common::locker_options(secs(15));
    options.renew_every = Some(Duration::from_secs(2));
    let locker = Locker::with_options(mutex, "job", options).unwrap();
    let guard = locker.lock().await.unwrap();
    let before = proxy.count("renew");
    proxy.add(Match::LeaseAction("renew"), answer, None);
    let started = Instant::now();
    let reason = tokio::time::timeout(Duration::from_secs(30), guard.lost())
        .await
        .expect("the lock is lost once no renewal goes through");
    let took = started.elapsed();
    let seen = proxy.seen();
    let renewals = proxy.count("renew") - before;
    (
        renewals,
        peak_rate(&seen, "renew", Duration::from_secs(1)),
        took,
        reason,
    )
}

/// Item 6 of issue 16: on main 5136815 a renewal answered `503` with a `Retry-After` longer than
/// the time left was retried at once, again and again: 257 renewals in 7 s against a 15 s lease.
#[tokio::test]
async fn a_renewal_told_to_retry_after_30s_is_not_retried_in_a_loop() {
    let (renewals, peak, took, reason) = renewals_under(Action::RespondRetryAfter(503, "ServerBusy", 30)).await;
    eprintln!("measured: 503 Retry-After 30: {renewals} renewals in {took:.1?}, at most {peak} in any 1 s");
    assert_eq!(reason, LostReason::Expired);
    let limit = took.as_secs() as usize + 2;
    assert!(
        renewals <= limit,
        "{renewals} renewals in {took:?} (at most {limit} allowed)"
    );
    assert!(peak <= 2, "{peak} renewals within one second");
}

/// The same with 503 and a short `Retry-After`, and with plain 500s: backoff, never more than
/// one renewal request a second (`MIN_RENEWAL_GAP`).
#[tokio::test]
async fn renewals_failing_fast_back_off() {
    assert_eq!(MIN_RENEWAL_GAP, Duration::from_secs(1));
    for answer in [
        Action::RespondRetryAfter(503, "ServerBusy", 0),
        Action::Respond(500, "InternalError"),
        Action::Respond(429, "TooManyRequests"),
    ] {
        let (renewals, peak, took, _) = renewals_under(answer.clone()).await;
        eprintln!("measured: {answer:?}: {renewals} renewals in {took:.1?}, at most {peak} in any 1 s");
        // Inside one call the client's own retries, and between calls the renewer, wait at
        // least a second. (The peak allows 2: the proxy timestamps arrivals, which jitter.)
        let limit = took.as_secs() as usize + 2;
        assert!(renewals <= limit, "{answer:?}: {renewals} renewals in {took:?}");
        assert!(peak <= 2, "{answer:?}: {peak} renewals within one second");
    }
}

/// Item 7 of issue 16: on main 5136815 one `400 InvalidHeaderValue` naming `x-ms-version`,
/// after the version had settled, stepped the client (and its clones) down to 2017-11-09 for
/// good.
#[tokio::test]
async fn a_stray_version_refusal_after_settling_does_not_downgrade_the_client() {
    let proxy = HttpProxy::start(common::azurite_addr());
    let container = common::unique("stray");
    let mutex = common::via(proxy.addr, &container, false);
    let lease = mutex.acquire("job", secs(15)).await.unwrap();
    assert_eq!(mutex.client().api_version(), DEFAULT_API_VERSION);
    proxy.add(Match::Any, Action::RefuseVersion, Some(1));
    let mut lease2 = lease.clone();
    // Refused at the door: retried like a transient failure, at the same version.
    mutex.renew(&mut lease2).await.unwrap();
    assert_eq!(
        mutex.client().api_version(),
        DEFAULT_API_VERSION,
        "one stray refusal downgraded the client"
    );
    let renewals: Vec<_> = proxy
        .seen()
        .into_iter()
        .filter(|s| s.lease_action.as_deref() == Some("renew"))
        .collect();
    assert_eq!(renewals.len(), 2, "{renewals:?}");
    assert!(renewals
        .iter()
        .all(|s| s.version.as_deref() == Some(DEFAULT_API_VERSION)));
    mutex.release(&lease2).await.unwrap();

    // A wait is not ended by stray refusals either (on the first fix it failed at once with
    // "unexpected response").
    let locker = azmutex::Locker::with_options(mutex.clone(), "job", common::locker_options(secs(15))).unwrap();
    proxy.add(Match::LeaseAction("acquire"), Action::RefuseVersion, Some(3));
    let mut guard = locker.lock_timeout(std::time::Duration::from_secs(20)).await.unwrap();
    guard.release().await.unwrap();
    assert_eq!(mutex.client().api_version(), DEFAULT_API_VERSION);
}
