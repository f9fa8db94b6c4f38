//! Leader election against a real Azurite: each promise of `Election`, `Leadership` and
//! `Observer` attacked (cancelled campaigns, breaks, expiries, a stalled renewal, a lease lost
//! between the acquire and the leader record). No timed assertions: timeouts only guard
//! against hangs.

mod common;

use std::future::Future;
use std::time::Duration;

use azmutex::{AzureMutex, BreakPeriod, Election, LeaseDuration, LockError, Locker, LockerOptions};
use common::faults::{Fault, FaultProxy};

/// A hang guard, never a measurement.
const GUARD: Duration = Duration::from_secs(90);

async fn guarded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("hang guard: {what} did not finish within {GUARD:?}"))
}

fn options() -> LockerOptions {
    LockerOptions {
        lease: LeaseDuration::seconds(15).unwrap(),
        poll_initial: Duration::from_millis(20),
        poll_max: Duration::from_millis(200),
        ..LockerOptions::default()
    }
}

fn election(mutex: AzureMutex, name: &str) -> Election {
    Election::with_options(mutex, name, options())
        .unwrap()
        .observe_interval(Duration::from_millis(200))
        .unwrap()
}

#[tokio::test]
async fn needs_fencing_and_bounded_values() {
    let container = common::unique("el");
    assert!(
        Election::new(common::mutex(&container), "x").is_err(),
        "no fencing, no epochs"
    );
    let e = election(common::fenced(&container), "x");
    let long = "v".repeat(azmutex::election::MAX_VALUE_BYTES + 1);
    assert!(matches!(e.campaign(long).await, Err(LockError::Storage(_))));
    // Nothing was acquired for it.
    assert!(!common::fenced(&container).inspect("x").await.unwrap().locked);
}

#[tokio::test]
async fn leader_record_epochs_and_resign() {
    let container = common::unique("el");
    let a = election(common::fenced(&container), "lead");
    let b = election(common::fenced(&container), "lead");
    assert_eq!(a.leader().await.unwrap(), None, "never used: nobody leads");

    let mut la = guarded("campaign a", a.campaign("a:1 ünïcode; x=y")).await.unwrap();
    let seen = b.leader().await.unwrap().expect("a leads");
    assert_eq!(seen.value, "a:1 ünïcode; x=y");
    assert_eq!(seen.epoch, la.epoch());
    assert!(seen.since.is_some());
    assert_eq!(Some(la.epoch()), la.fencing_token(), "the epoch is the fencing token");

    // b waits while a leads, and is elected once a resigns, with a greater epoch.
    let b_campaign = tokio::spawn(async move { b.campaign("b:2").await.map(|l| (l, b)) });
    la.resign().await.unwrap();
    assert!(!la.is_held());
    let (mut lb, b) = guarded("campaign b", b_campaign).await.unwrap().unwrap();
    assert!(lb.epoch() > la.epoch(), "{} then {}", la.epoch(), lb.epoch());
    let now = a.leader().await.unwrap().expect("b leads");
    assert_eq!((now.value.as_str(), now.epoch), ("b:2", lb.epoch()));
    lb.resign().await.unwrap();
    assert_eq!(b.leader().await.unwrap(), None, "resigned: nobody leads");
}

/// A campaign cancelled while it waits leaves nothing: no lease (the lock stays free after the
/// leader resigns), no background task (its client sends nothing more).
#[tokio::test]
async fn cancelled_campaign_leaves_nothing() {
    let container = common::unique("el");
    let a = election(common::fenced(&container), "c");
    let mut la = a.campaign("a").await.unwrap();

    // Cancelled through campaign_until, and dropped mid-wait (a timeout around campaign).
    let b_mutex = common::fenced(&container);
    let b = election(b_mutex.clone(), "c");
    let r = b
        .campaign_until("b", tokio::time::sleep(Duration::from_millis(700)))
        .await;
    assert!(matches!(r, Err(LockError::Cancelled { .. })), "{r:?}");
    let c_mutex = common::fenced(&container);
    let c = election(c_mutex.clone(), "c");
    assert!(tokio::time::timeout(Duration::from_millis(700), c.campaign("c"))
        .await
        .is_err());

    la.resign().await.unwrap();
    let (b_sent, c_sent) = (b_mutex.client().requests_sent(), c_mutex.client().requests_sent());
    // Watch for three seconds (well past the polling pace of 200 ms): nobody takes the lock,
    // and neither cancelled campaign sends another request.
    let observer_mutex = common::fenced(&container);
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let info = observer_mutex.inspect("c").await.unwrap();
        assert!(!info.locked, "a cancelled campaign holds the lock: {:?}", info.state);
    }
    assert_eq!(b_mutex.client().requests_sent(), b_sent, "b's campaign still runs");
    assert_eq!(c_mutex.client().requests_sent(), c_sent, "c's campaign still runs");
    assert_eq!(a.leader().await.unwrap(), None);
}

/// The observer starts with the current state, reports a proclaimed value, and says `None`
/// after a break at once and after an expiry (a leader whose process vanished).
#[tokio::test]
async fn observe_proclaim_break_and_expiry() {
    let container = common::unique("el");
    let watcher = election(common::fenced(&container), "o");
    let mut observer = watcher.observe();
    let second = watcher.observe();
    assert_eq!(second.sharing(), 2, "observers of one name share one reader");
    drop(second);
    assert_eq!(guarded("first state", observer.next()).await.unwrap(), None);

    let a = election(common::fenced(&container), "o");
    let mut la = a.campaign("one").await.unwrap();
    let seen = guarded("elected", observer.next()).await.unwrap().expect("a leads");
    assert_eq!((seen.value.as_str(), seen.epoch), ("one", la.epoch()));

    la.proclaim("two").await.unwrap();
    assert_eq!(la.value(), "two");
    let seen = guarded("proclaimed", observer.next()).await.unwrap().expect("a leads");
    assert_eq!(
        (seen.value.as_str(), seen.epoch),
        ("two", la.epoch()),
        "same term, new value"
    );
    assert_eq!(watcher.leader().await.unwrap(), Some(seen));

    // Broken at once: nobody leads, and the deposed leader cannot proclaim.
    common::fenced(&container)
        .break_lease("o", Some(BreakPeriod::NOW))
        .await
        .unwrap();
    assert_eq!(guarded("broken", observer.next()).await.unwrap(), None);
    guarded("loss noticed", la.lost()).await;
    assert!(la.proclaim("three").await.is_err(), "proclaim after the term ended");
    drop(la);

    // A leader whose runtime vanished (as a killed process): its lease expires on the server.
    let mutex = common::fenced(&container);
    let epoch = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let e = election(mutex, "o");
        let l = rt.block_on(e.campaign("crashed")).unwrap();
        let epoch = l.epoch();
        drop(rt); // its renewal task dies with it; the guard's release has nowhere to run
        drop(l);
        epoch
    })
    .join()
    .unwrap();
    let seen = guarded("crashed leader seen", observer.next())
        .await
        .unwrap()
        .expect("it leads");
    assert_eq!((seen.value.as_str(), seen.epoch), ("crashed", epoch));
    assert_eq!(guarded("expiry", observer.next()).await.unwrap(), None);
    let info = common::fenced(&container).inspect("o").await.unwrap();
    assert_eq!(info.state, azmutex::LeaseState::Expired);
}

/// One renewal answer held up for a third of the lease does not end the term: the stalled
/// request is abandoned and sent again within the renewal budget.
#[tokio::test]
async fn one_slow_renewal_is_not_a_loss() {
    let container = common::unique("el");
    let proxy = FaultProxy::start(common::azurite_addr(), 7);
    let e = election(common::via(proxy.addr, &container, true), "slow");
    let mut l = e.campaign("slow").await.unwrap();
    let lost = l.lost();
    tokio::pin!(lost);

    let before = proxy.requests().len();
    proxy.set(Fault::Delay(Duration::from_secs(5))); // a third of the 15 s lease
                                                     // Exactly one renewal answer is held up: heal as soon as it has arrived.
    guarded("a renewal arrives", async {
        loop {
            let renewals = proxy.requests()[before..]
                .iter()
                .filter(|r| r.lease_action.as_deref() == Some("renew"))
                .count();
            if renewals > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    proxy.set(Fault::Healthy);
    let delayed_at = std::time::Instant::now();
    // Two renewals confirmed after the stall, the term going on all the while.
    let mut confirmed = 0;
    while confirmed < 2 {
        let changed = l.changed();
        tokio::select! {
            reason = &mut lost => panic!("a single slow renewal ended the term: {reason}"),
            () = guarded("renewal", changed) => {}
        }
        assert!(l.is_held(), "{:?}", l.lost_reason());
        if l.valid_until().is_some_and(|u| u > delayed_at + Duration::from_secs(5)) {
            confirmed += 1;
        }
    }
    let renewals = proxy
        .requests()
        .iter()
        .filter(|r| r.lease_action.as_deref() == Some("renew"))
        .count();
    assert!(
        renewals >= 3,
        "the stalled renewal was sent again ({renewals} renewals)"
    );
    l.resign().await.unwrap();
}

/// A lease lost between the acquire and the leader record is no term: the campaign goes on
/// and returns a later term, whose end signal has not fired; the lost lease never showed as a
/// leader to observers.
#[tokio::test]
async fn lost_before_the_record_is_no_term() {
    let container = common::unique("el");
    let direct = common::fenced(&container);
    let other = Locker::with_options(direct.clone(), "pre", options()).unwrap();
    // The lock blob exists, with a token, before b comes.
    let mut g = other.try_lock().await.unwrap();
    let base = g.fencing_token();
    g.release().await.unwrap();
    let mut observer = election(direct.clone(), "pre").observe();
    assert_eq!(observer.next().await.unwrap(), None);
    let proxy = FaultProxy::start(common::azurite_addr(), 11);
    proxy.set(Fault::Delay(Duration::from_secs(2)));
    let b = election(common::via(proxy.addr, &container, true), "pre");
    let campaign = tokio::spawn(async move { b.campaign("b").await });

    // Wait until b's acquire has taken the lock and its fencing token has advanced; b's
    // record write comes only after two more slow answers.
    let mut first = None;
    guarded("b acquires", async {
        loop {
            let info = direct.inspect("pre").await.unwrap();
            if info.locked && info.fencing_token > base {
                first = info.fencing_token;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // An operator breaks it, and another client takes the lock before b writes its record.
    direct.break_lease("pre", Some(BreakPeriod::NOW)).await.unwrap();
    let mut guard = other.try_lock().await.unwrap();
    assert!(guard.fencing_token() > first);
    proxy.set(Fault::Healthy);
    // b's record write is refused; b waits again. The non-election holder is no leader.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!campaign.is_finished(), "b was handed a term whose lease it had lost");
    assert_eq!(
        direct.inspect("pre").await.unwrap().fencing_token,
        guard.fencing_token()
    );
    guard.release().await.unwrap();

    let lb = guarded("b elected", campaign).await.unwrap().unwrap();
    assert!(lb.epoch() > guard.fencing_token().unwrap());
    assert!(lb.is_held());
    let lost = lb.lost();
    tokio::select! {
        biased;
        reason = lost => panic!("a new term's end fired at its start: {reason}"),
        () = std::future::ready(()) => {}
    }
    // Observers saw nobody, then b's term: never b's lost lease.
    let seen = guarded("b seen", observer.next()).await.unwrap().expect("b leads");
    assert_eq!(seen.epoch, lb.epoch());
}
