//! Locker against a real Azurite: mutual exclusion (tasks and processes), renewal, loss
//! detection (break, network outage), release on drop, timeouts and cancellation.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use azmutex::{
    AzureMutex, BreakPeriod, Error, LeaseDuration, LockError, Locker, LockerOptions, LostReason, StorageConfig,
};
use common::proxy::Proxy;

fn options(lease: u64) -> LockerOptions {
    LockerOptions {
        lease: LeaseDuration::seconds(lease).unwrap(),
        poll_initial: Duration::from_millis(20),
        poll_max: Duration::from_millis(200),
        ..LockerOptions::default()
    }
}

fn locker(container: &str, lock: &str, lease: u64) -> Locker {
    Locker::with_options(common::mutex(container), lock, options(lease)).unwrap()
}

/// Checks that no two [enter, exit] intervals overlap.
fn assert_no_overlap(mut spans: Vec<(u128, u128)>) {
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "critical sections overlap: {:?} and {:?}", w[0], w[1]);
    }
}

fn now_nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_tasks_never_overlap() {
    let c = common::unique("tasks");
    let counter = Arc::new(AtomicU64::new(0));
    let spans = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (counter, spans, locker) = (counter.clone(), spans.clone(), locker(&c, "counter", 15));
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                let mut guard = locker.lock().await.unwrap();
                let enter = now_nanos();
                // Read-modify-write with no protection but the lock.
                let v = counter.load(Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                counter.store(v + 1, Ordering::SeqCst);
                assert!(guard.is_held());
                let exit = now_nanos();
                spans.lock().unwrap().push((enter, exit));
                guard.release().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(counter.load(Ordering::SeqCst), 200);
    assert_no_overlap(spans.lock().unwrap().clone());
}

/// Not a test on its own: the body of each process in `four_processes_never_overlap`.
#[tokio::test]
#[ignore]
async fn worker_process() {
    let Ok(dir) = std::env::var("AZMUTEX_WORKER_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let container = std::env::var("AZMUTEX_WORKER_CONTAINER").unwrap();
    let locker = locker(&container, "counter", 15);
    let counter_file = dir.join("counter");
    let log = dir.join(format!("log-{}", std::process::id()));
    let mut lines = String::new();
    for _ in 0..25 {
        let mut guard = locker.lock().await.unwrap();
        let enter = now_nanos();
        let v: u64 = std::fs::read_to_string(&counter_file).unwrap().trim().parse().unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        std::fs::write(&counter_file, (v + 1).to_string()).unwrap();
        let exit = now_nanos();
        lines.push_str(&format!("{enter} {exit}\n"));
        guard.release().await.unwrap();
    }
    std::fs::write(log, lines).unwrap();
}

#[test]
fn four_processes_never_overlap() {
    let dir = std::env::temp_dir().join(common::unique("azmutex-procs"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("counter"), "0").unwrap();
    let container = common::unique("procs");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| {
            std::process::Command::new(&exe)
                .args(["--ignored", "--exact", "worker_process", "--quiet"])
                .env("AZMUTEX_TEST_CONNECTION_STRING", &common::service().connection_string)
                .env("AZMUTEX_WORKER_DIR", &dir)
                .env("AZMUTEX_WORKER_CONTAINER", &container)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success(), "a worker process failed");
    }
    let count: u64 = std::fs::read_to_string(dir.join("counter"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(count, 100);
    let mut spans = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with("log-") {
            for line in std::fs::read_to_string(path).unwrap().lines() {
                let (a, b) = line.split_once(' ').unwrap();
                spans.push((a.parse().unwrap(), b.parse().unwrap()));
            }
        }
    }
    assert_eq!(spans.len(), 100);
    assert_no_overlap(spans);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn renewal_holds_a_15s_lease_for_60s() {
    let c = common::unique("hold");
    let guard = locker(&c, "job", 15).lock().await.unwrap();
    let other = common::mutex(&c);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(
            guard.is_held(),
            "lost after {:?}: {:?}",
            started.elapsed(),
            guard.lost_reason()
        );
        let err = other.acquire("job", LeaseDuration::MIN).await.unwrap_err();
        assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    }
    assert!(guard.lost_reason().is_none());
}

#[tokio::test]
async fn a_broken_lease_fires_the_lost_signal_within_one_renewal_interval() {
    let c = common::unique("broken");
    let guard = locker(&c, "job", 15).lock().await.unwrap();
    let lost = guard.lost();
    common::mutex(&c)
        .break_lease("job", Some(BreakPeriod::NOW))
        .await
        .unwrap();
    let broke_at = Instant::now();
    let reason = tokio::time::timeout(Duration::from_secs(6), lost)
        .await
        .expect("lost signal within 5 s + slack");
    assert_eq!(reason, LostReason::Broken);
    assert!(!guard.is_held());
    assert!(broke_at.elapsed() <= Duration::from_secs(6));
}

#[tokio::test]
async fn an_outage_fires_the_lost_signal_before_anyone_else_can_acquire() {
    let c = common::unique("outage");
    let azurite: SocketAddr = format!(
        "127.0.0.1:{}",
        common::service()
            .port
            .expect("this test needs the local Azurite (unset AZMUTEX_TEST_CONNECTION_STRING)")
    )
    .parse()
    .unwrap();
    let proxy = Proxy::start(azurite);
    let client = azmutex::ClientOptions {
        request_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let mutex = AzureMutex::builder(common::config_via(proxy.addr), &c)
        .client_options(client)
        .build()
        .unwrap();
    let guard = Locker::with_options(mutex, "job", options(15))
        .unwrap()
        .lock()
        .await
        .unwrap();
    let lost = guard.lost();
    let outage = Instant::now();
    proxy.drop_traffic();

    // Another client, straight to Azurite, tries all along.
    let other = common::mutex(&c);
    let contender = tokio::spawn(async move {
        loop {
            match other.acquire("job", LeaseDuration::MIN).await {
                Ok(lease) => return (Instant::now(), lease),
                Err(Error::Conflict { .. }) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("{e}"),
            }
        }
    });
    let reason = tokio::time::timeout(Duration::from_secs(20), lost)
        .await
        .expect("lost signal");
    let lost_at = Instant::now();
    assert_eq!(reason, LostReason::Expired);
    assert!(!guard.is_held());
    // The last renewal was sent before the outage: loss is declared no later than that send
    // time + 15 s (the local deadline), so no later than outage + 15 s.
    assert!(
        lost_at - outage <= Duration::from_secs(15),
        "declared after {:?}",
        lost_at - outage
    );
    let (got_at, _lease) = contender.await.unwrap();
    assert!(
        got_at > lost_at,
        "another client got the lock {:?} before loss was declared",
        lost_at - got_at
    );
    proxy.heal();
}

#[tokio::test]
async fn dropping_a_guard_releases_the_lease() {
    let c = common::unique("drop");
    let guard = locker(&c, "job", 60).lock().await.unwrap();
    drop(guard);
    let other = locker(&c, "job", 15);
    let started = Instant::now();
    let g = other.lock_timeout(Duration::from_secs(10)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(g.is_held());
}

#[tokio::test]
async fn try_lock_and_timeouts_report_busy() {
    let c = common::unique("busy");
    let _held = locker(&c, "job", 15).lock().await.unwrap();
    let waiter = locker(&c, "job", 15);
    let err = waiter.try_lock().await.unwrap_err();
    assert!(matches!(err, LockError::Busy { .. }), "{err:?}");
    let started = Instant::now();
    let err = waiter.lock_timeout(Duration::from_secs(2)).await.unwrap_err();
    assert!(matches!(err, LockError::TimedOut { .. }), "{err:?}");
    assert!(started.elapsed() >= Duration::from_secs(2));
    let err = waiter
        .lock_until(None, tokio::time::sleep(Duration::from_millis(300)))
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Cancelled { .. }), "{err:?}");
}

#[tokio::test]
async fn cancelled_waits_leave_no_lease_behind() {
    let c = common::unique("cancel");
    let m = common::mutex(&c);
    for i in 0..6u64 {
        let mut held = locker(&c, "job", 15).lock().await.unwrap();
        let waiter = locker(&c, "job", 15);
        // Cancel at varied moments around the release, so some cancellations land while an
        // acquire is in flight or has just succeeded.
        let wait = tokio::spawn(async move {
            waiter
                .lock_until(None, tokio::time::sleep(Duration::from_millis(200 + 7 * i)))
                .await
        });
        tokio::time::sleep(Duration::from_millis(190)).await;
        held.release().await.unwrap();
        let result = wait.await.unwrap();
        drop(result); // a guard that made it out is dropped too
                      // Whatever happened, the lock comes free promptly (well before a 15 s expiry).
        let started = Instant::now();
        loop {
            match m.acquire("job", LeaseDuration::MIN).await {
                Ok(lease) => {
                    m.release(&lease).await.unwrap();
                    break;
                }
                Err(Error::Conflict { .. }) if started.elapsed() < Duration::from_secs(5) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("round {i}: lease left behind: {e}"),
            }
        }
    }
}

#[tokio::test]
async fn with_lock_cancels_work_on_loss() {
    let c = common::unique("withlock");
    let l = locker(&c, "job", 15);
    let breaker = common::mutex(&c);
    let result = l
        .with_lock(|info| async move {
            assert!(info.fencing_token.is_none());
            breaker.break_lease("job", Some(BreakPeriod::NOW)).await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            "finished"
        })
        .await;
    assert!(
        matches!(
            result,
            Err(LockError::Lost {
                reason: LostReason::Broken,
                ..
            })
        ),
        "{result:?}"
    );
    let ok = l.with_lock(|_| async { 7 }).await.unwrap();
    assert_eq!(ok, 7);
}

#[tokio::test]
async fn permanent_errors_end_the_wait_at_once() {
    let wrong = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==";
    let cs = format!(
        "AccountName=devstoreaccount1;AccountKey={wrong};BlobEndpoint={}",
        common::service().endpoint
    );
    let m = AzureMutex::builder(StorageConfig::parse_connection_string(&cs).unwrap(), "perm")
        .build()
        .unwrap();
    let l = Locker::new(m.clone(), "job").unwrap();
    let err = l.lock().await.unwrap_err();
    assert!(matches!(err, LockError::Storage(Error::Auth { .. })), "{err:?}");
    assert_eq!(m.client().requests_sent(), 1);
    assert!(Locker::with_options(
        m,
        "job",
        LockerOptions {
            renew_every: Some(Duration::from_secs(29)),
            ..LockerOptions::default()
        }
    )
    .is_err());
}
