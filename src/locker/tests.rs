//! Unit tests of the guard and renewer state machine.

use super::*;
use crate::config::StorageConfig;

fn renewer(state: watch::Sender<State>) -> Renewer {
    let mutex = AzureMutex::builder(StorageConfig::development(), "unit")
        .build()
        .expect("no request is sent");
    let lock = LockName::new("job").expect("valid");
    let lease = Lease::resume(lock, LeaseId::new_random(), LeaseDuration::MIN);
    Renewer {
        mutex,
        lease,
        state,
        options: LockerOptions::default(),
        lapsed: Arc::default(),
        last_attempt: None,
        holding: Arc::new(Holding::start()),
    }
}

fn held_for(d: Duration) -> State {
    State::Held(Validity {
        until: Instant::now() + d,
        wall_until: SystemTime::now() + d,
        lease_end: None,
    })
}

fn bare_guard(state: watch::Receiver<State>) -> LockGuard {
    LockGuard {
        lock: LockName::new("job").expect("valid"),
        lease_id: LeaseId::new_random(),
        fencing_token: None,
        state,
        commands: None,
        released: None,
        lapsed: Arc::default(),
        holding: Arc::new(Holding::start()),
    }
}

#[test]
fn lost_is_final() {
    let (tx, rx) = watch::channel(held_for(Duration::from_secs(10)));
    let r = renewer(tx);
    r.publish(held_for(Duration::from_secs(20)));
    assert!(matches!(*rx.borrow(), State::Held(_)));
    r.publish(State::Lost(LostReason::Broken));
    // A renewal answer that arrives late must not bring the lock back.
    r.publish(held_for(Duration::from_secs(30)));
    assert_eq!(*rx.borrow(), State::Lost(LostReason::Broken));
    r.publish(State::Lost(LostReason::Expired));
    assert_eq!(*rx.borrow(), State::Lost(LostReason::Broken), "the first reason stays");
    r.publish(State::Released);
    assert_eq!(*rx.borrow(), State::Released);
    r.publish(held_for(Duration::from_secs(30)));
    assert_eq!(*rx.borrow(), State::Released);
}

#[test]
fn a_guard_whose_renewer_died_is_not_held() {
    let (tx, rx) = watch::channel(held_for(Duration::from_secs(30)));
    let guard = bare_guard(rx);
    assert!(guard.is_held());
    drop(tx); // the renewal task ended (panicked) without a verdict
    assert!(!guard.is_held());
    assert_eq!(guard.lost_reason(), Some(LostReason::Expired));
}

#[tokio::test]
async fn lost_fires_when_the_renewer_dies() {
    let (tx, rx) = watch::channel(held_for(Duration::from_secs(30)));
    let guard = bare_guard(rx);
    let lost = guard.lost();
    drop(tx);
    assert_eq!(lost.await, LostReason::Expired);
}

#[test]
fn a_lapse_once_seen_is_final() {
    let (_tx, rx) = watch::channel(held_for(Duration::from_millis(30)));
    let guard = bare_guard(rx);
    assert!(guard.is_held());
    std::thread::sleep(Duration::from_millis(40));
    assert!(!guard.is_held());
    // The wall clock stepping back (modelled by a validity that holds again) changes nothing.
    let (tx2, rx2) = watch::channel(held_for(Duration::from_secs(30)));
    let mut again = bare_guard(rx2);
    again.lapsed = guard.lapsed.clone();
    assert!(!again.is_held());
    drop(tx2);
}

#[test]
fn absurd_options_are_errors_not_panics() {
    let base = LockerOptions::default();
    let cases = [
        LockerOptions {
            renew_every: Some(Duration::MAX),
            ..base.clone()
        },
        LockerOptions {
            safety_margin: Duration::MAX,
            ..base.clone()
        },
        LockerOptions {
            safety_margin: Duration::ZERO,
            ..base.clone()
        },
        LockerOptions {
            safety_margin: Duration::from_millis(999),
            ..base.clone()
        },
        LockerOptions {
            renew_every: Some(Duration::ZERO),
            ..base.clone()
        },
        LockerOptions {
            renew_every: Some(Duration::from_secs(28)),
            ..base.clone()
        },
        LockerOptions {
            poll_max: Duration::MAX,
            ..base.clone()
        },
        LockerOptions {
            lease: LeaseDuration::Infinite,
            renew_every: Some(Duration::from_secs(58)),
            ..base.clone()
        },
    ];
    for options in cases {
        assert!(options.check().is_err(), "{options:?}");
    }
    assert!(base.check().is_ok());
    let infinite = LockerOptions {
        lease: LeaseDuration::Infinite,
        ..base
    };
    assert!(infinite.check().is_ok());
    assert_eq!(infinite.renew_interval(), Duration::from_secs(20));
}

#[test]
fn validity_counts_from_the_send_time_on_both_clocks() {
    let options = LockerOptions::default();
    let sent = Instant::now();
    let wall = SystemTime::now();
    let grant = Grant {
        sent_at: sent,
        sent_at_wall: wall,
        deadline: Some(sent + Duration::from_secs(30)),
        wall_deadline: Some(wall + Duration::from_secs(30)),
    };
    let v = Validity::of(grant, &options);
    assert_eq!(v.until, sent + Duration::from_secs(28));
    assert!(v.holds(sent + Duration::from_secs(27), wall));
    assert!(!v.holds(sent + Duration::from_secs(28), wall));
    // Suspended: the monotonic clock stood still, the wall clock did not.
    assert!(!v.holds(sent + Duration::from_secs(1), wall + Duration::from_secs(29)));
}

/// A holder record is written by whoever takes the lock: the busy and timed-out errors print it
/// inert (escapes, bidi overrides) and short (on a0ecc2f a busy `acquire --wait` printed a
/// terminal title sequence and 5,000 characters as they were).
#[test]
fn a_hostile_holder_record_is_printed_inert_and_short() {
    use crate::mutex::{Holder, HolderInfo};
    let owner = format!("\u{1b}]0;PWNED\u{7}\u{1b}[31mRED\u{202e}XYZ{}", "x".repeat(5000));
    let err = LockError::TimedOut {
        lock: "job".into(),
        waited: std::time::Duration::from_secs(1),
        holder: Some(HolderInfo {
            holder: Holder {
                owner: Some(owner),
                host: Some("h\u{1b}[2J".into()),
                pid: Some(7),
            },
            since: None,
        }),
    };
    let text = err.to_string();
    assert!(
        !text.chars().any(crate::error::is_unsafe_char),
        "raw control or formatting characters: {text:?}"
    );
    assert!(text.contains("\\u{1b}]0;PWNED"), "{text}");
    assert!(text.chars().count() < 400, "{} characters", text.chars().count());
}

#[test]
fn first_renewals_are_spread_only_among_other_leases() {
    let every = Duration::from_secs(20);
    // Alone: at the end of the interval, as always.
    assert_eq!(first_renewal(every, false), every);
    // Among others: anywhere in it, at least a second in.
    let firsts: Vec<Duration> = (0..1000).map(|_| first_renewal(every, true)).collect();
    assert!(firsts.iter().all(|d| *d >= MIN_RENEWAL_GAP && *d <= every));
    let early = firsts.iter().filter(|d| **d < every / 2).count();
    assert!((300..700).contains(&early), "{early} of 1000 in the first half");
    // An interval too short to spread is left alone.
    assert_eq!(first_renewal(MIN_RENEWAL_GAP, true), MIN_RENEWAL_GAP);
}
