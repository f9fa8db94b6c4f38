//! Many leases in one process under attack (written by an outside review of the schedule):
//! waiters abandoned in bulk, acquisitions cancelled while paced, a bulk acquisition blackholed
//! beside 300 held guards, renewals of some leases hung beside the others.

mod common;

use std::time::{Duration, Instant};

use azmutex::rest::{BlobClient, RestRequest};
use azmutex::{ClientOptions, StorageConfig};
use reqwest::Method;

/// A loopback server that accepts connections and never answers.
fn blackhole() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut keep = Vec::new();
        for s in l.incoming().flatten() {
            keep.push(s);
        }
    });
    addr
}

fn client(addr: std::net::SocketAddr, max_connections: usize) -> BlobClient {
    let cs = format!(
        "AccountName=devstoreaccount1;AccountKey={};BlobEndpoint=http://{addr}/devstoreaccount1",
        common::DEV_KEY
    );
    let config = StorageConfig::parse_connection_string(&cs).unwrap();
    let mut o = ClientOptions {
        api_version: Some("2021-12-02".into()),
        max_connections,
        acquire_rate: 0,
        request_timeout: Duration::from_secs(120),
        ..ClientOptions::default()
    };
    o.retry.call_timeout = Duration::from_secs(120);
    BlobClient::new(&config, o).unwrap()
}

fn get(i: usize) -> RestRequest {
    RestRequest::new("get-properties", Method::HEAD, "c", Some(&format!("b{i}")))
}

/// Waiters that gave up (cancelled, or their deadline passed) stay queued until a dispatch
/// skips them. On 6042258 each skip handed the turn back through `Turn::drop`, which
/// dispatched again: one stack frame chain per abandoned waiter, and with many of them (a bulk
/// acquisition cancelled or timed out behind a hung request) the next freed turn overflowed the
/// stack: the whole process aborted, every lease it held included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_abandoned_waiters_do_not_overflow_the_stack() {
    let n: usize = std::env::var("REVIEW22_WAITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let c = client(blackhole(), 1);
    let far = Instant::now() + Duration::from_secs(120);
    // Takes the only connection and hangs.
    let first = {
        let c = c.clone();
        tokio::spawn(async move { c.send(&get(0), far).await.map(|_| ()) })
    };
    while c.load().0 < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A bulk of requests queue behind it...
    let mut waiters = Vec::with_capacity(n);
    for i in 1..=n {
        let c = c.clone();
        waiters.push(tokio::spawn(async move { c.send(&get(i), far).await.map(|_| ()) }));
    }
    let t0 = Instant::now();
    while c.load().1 < n && t0.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(c.load(), (1, n));
    // ...and are given up (a caller's timeout, a cancelled batch).
    for w in &waiters {
        w.abort();
    }
    for w in waiters {
        let _ = w.await;
    }
    assert_eq!(c.load(), (1, 0), "abandoned waiters are not counted");
    // The hung request ends: its turn goes looking for the next live waiter.
    first.abort();
    let _ = first.await;
    assert_eq!(c.load(), (0, 0));
    // The client still works (a turn is handed out at once).
    let again = {
        let c = c.clone();
        tokio::spawn(async move {
            c.send(&get(0), Instant::now() + Duration::from_secs(1))
                .await
                .map(|_| ())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(c.load().0, 1);
    again.abort();
}

/// A loopback server that counts the connections it accepts and never answers.
fn counting_blackhole() -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = n.clone();
    std::thread::spawn(move || {
        let mut keep = Vec::new();
        for s in l.incoming().flatten() {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            keep.push(s);
        }
    });
    (addr, n)
}

fn acquire_req(i: usize) -> RestRequest {
    RestRequest::new("acquire", Method::PUT, "c", Some(&format!("b{i}")))
        .query("comp", "lease")
        .header("x-ms-lease-action", "acquire")
}

/// Acquisitions that are cancelled while they wait for their pace slot keep the slot: a bulk
/// acquisition given up (a caller's `timeout`, a cancelled batch) leaves the pace clock far in
/// the future, and the next acquisition, on an idle client, waits for every slot the
/// cancelled ones took although none of them was ever sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_acquisitions_give_back_their_pace_slots() {
    let (addr, accepted) = counting_blackhole();
    let mut c = client(addr, 64);
    // 10 a second (the default is 500 a second; the same at 50x the count).
    c = {
        let mut o = c.options().clone();
        o.acquire_rate = 10;
        let cs = format!(
            "AccountName=devstoreaccount1;AccountKey={};BlobEndpoint=http://{addr}/devstoreaccount1",
            common::DEV_KEY
        );
        BlobClient::new(&StorageConfig::parse_connection_string(&cs).unwrap(), o).unwrap()
    };
    let far = Instant::now() + Duration::from_secs(120);
    // 100 acquisitions start; a second later the batch is given up.
    let mut batch = Vec::new();
    for i in 0..100 {
        let c = c.clone();
        batch.push(tokio::spawn(
            async move { c.send(&acquire_req(i), far).await.map(|_| ()) },
        ));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for t in &batch {
        t.abort();
    }
    for t in batch {
        let _ = t.await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent_by_batch = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(sent_by_batch <= 20, "{sent_by_batch}");
    // Nothing is waiting or in flight... except the batch's hung requests (at most 20).
    assert_eq!(c.load().1, 0);
    // One more acquisition on the otherwise idle client: sent within its pace (0.1 s), not
    // after the 80 slots nobody used (8 s).
    let t0 = Instant::now();
    let one = {
        let c = c.clone();
        tokio::spawn(async move { c.send(&acquire_req(1000), far).await.map(|_| ()) })
    };
    while accepted.load(std::sync::atomic::Ordering::SeqCst) == sent_by_batch && t0.elapsed() < Duration::from_secs(15)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let waited = t0.elapsed();
    one.abort();
    assert!(
        waited < Duration::from_secs(1),
        "the next acquisition was sent after {waited:?}"
    );
}

/// Takes `n` locks `{prefix}-{i}` with `Locker` guards (15 s leases renewed every 5 s), all
/// at once.
async fn hold_many(mutex: &azmutex::AzureMutex, prefix: &'static str, n: usize) -> Vec<azmutex::LockGuard> {
    let options = azmutex::LockerOptions {
        lease: common::secs(15),
        renew_every: Some(Duration::from_secs(5)),
        ..azmutex::LockerOptions::default()
    };
    let mut tasks = Vec::new();
    for i in 0..n {
        let (m, o) = (mutex.clone(), options.clone());
        tasks.push(tokio::spawn(async move {
            azmutex::Locker::with_options(m, format!("{prefix}-{i}").as_str(), o)
                .unwrap()
                .lock()
                .await
                .unwrap()
        }));
    }
    let mut guards = Vec::new();
    for t in tasks {
        guards.push(t.await.unwrap());
    }
    guards
}

/// 300 Locker guards (15 s leases, renewed every 5 s) while a bulk acquisition of 1,000 more
/// runs through a proxy that swallows every acquisition: no guard is lost, and once the bulk
/// is given up the schedule is empty again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_guards_survive_a_blackholed_bulk_acquisition() {
    use azmutex::AzureMutex;
    use common::http_proxy::{Action, HttpProxy, Match};
    let proxy = HttpProxy::start(common::azurite_addr());
    let container = common::unique("mlmany");
    let mutex = AzureMutex::builder(common::config_via(proxy.addr), &container)
        .client_options(common::fast_options())
        .build()
        .unwrap();
    let mut guards = hold_many(&mutex, "held", 300).await;
    proxy.add(Match::LeaseAction("acquire"), Action::Blackhole, None);
    let mut bulk = Vec::new();
    for i in 0..1000 {
        let m = mutex.clone();
        bulk.push(tokio::spawn(async move {
            let _ = m.acquire(format!("bulk-{i}").as_str(), common::secs(15)).await;
        }));
    }
    let t0 = Instant::now();
    let mut worst = (0usize, 0usize);
    while t0.elapsed() < Duration::from_secs(20) {
        let l = mutex.client().load();
        worst = (worst.0.max(l.0), worst.1.max(l.1));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let lost = guards.iter().filter(|g| !g.is_held()).count();
        assert_eq!(lost, 0, "{lost} guards lost after {:?} (load {:?})", t0.elapsed(), l);
    }
    assert!(worst.0 <= 64, "{worst:?}");
    for b in &bulk {
        b.abort();
    }
    for b in bulk {
        let _ = b.await;
    }
    proxy.clear();
    for g in &mut guards {
        assert!(g.is_held());
        g.release().await.unwrap();
    }
    drop(guards);
    let t0 = Instant::now();
    while mutex.client().load() != (0, 0) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "turns leaked: {:?}",
            mutex.client().load()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The stack overflow of `many_abandoned_waiters_do_not_overflow_the_stack`, with the public
/// API only and default options except `acquire_rate: 0` ("no pace", documented): acquisitions
/// swallowed by the network hold every turn for their 5 s request timeout; a bulk acquisition
/// queued behind them is given up by its caller after 3 s (`tokio::time::timeout`, the usual
/// way). When the hung requests' turns come back, each skips the run of abandoned waiters
/// one stack frame chain per waiter: the process aborts (SIGABRT, "has overflowed its
/// stack"), taking its held lease (renewed by this very test) with it. With the default pace
/// (500/s) a run is at most about 500 x the time the bulk waited, so the same happens with a
/// bulk that waits longer; unpaced `Other` requests (status reads, observers, listings) need no
/// option at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_acquisition_given_up_in_the_queue_does_not_abort_the_process() {
    use azmutex::AzureMutex;
    use common::http_proxy::{Action, HttpProxy, Match};
    let n: usize = std::env::var("REVIEW22_BULK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let proxy = HttpProxy::start(common::azurite_addr());
    let container = common::unique("mlbulk");
    let mutex = AzureMutex::builder(common::config_via(proxy.addr), &container)
        .client_options(ClientOptions {
            acquire_rate: std::env::var("REVIEW22_RATE")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            ..ClientOptions::default()
        })
        .build()
        .unwrap();
    let give_up = Duration::from_secs(
        std::env::var("REVIEW22_GIVE_UP")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3),
    );
    let mut held = mutex.acquire("held", common::secs(60)).await.unwrap();
    proxy.add(Match::LeaseAction("acquire"), Action::Blackhole, None);
    let mut bulk = Vec::new();
    for i in 0..n {
        let m = mutex.clone();
        bulk.push(tokio::spawn(async move {
            let _ = tokio::time::timeout(give_up, m.acquire(format!("bulk-{i}").as_str(), common::secs(15))).await;
        }));
    }
    let t0 = Instant::now();
    while t0.elapsed() < give_up + Duration::from_secs(17) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        eprintln!("{:?}: load {:?}", t0.elapsed(), mutex.client().load());
        mutex.renew(&mut held).await.unwrap();
    }
    for b in bulk {
        b.await.unwrap();
    }
    mutex.release(&held).await.unwrap();
}

/// Renewals that hang (a partition server that stops answering for some lock names, the very
/// case `spread_names` is for) are upkeep: they may take every connection, the reserve
/// included, and the renewals of every other lease of the client queue behind them. With
/// default options, 200 leases on the sick names and 300 healthy ones: the healthy leases
/// must all stay held (each of their renewals, sent, would be answered at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_renewals_of_some_leases_do_not_cost_the_others() {
    use azmutex::AzureMutex;
    use common::http_proxy::{Action, HttpProxy, Match};
    let proxy = HttpProxy::start(common::azurite_addr());
    let container = common::unique("mlsick");
    let mutex = AzureMutex::builder(common::config_via(proxy.addr), &container)
        .client_options(ClientOptions::default())
        .build()
        .unwrap();
    let n_sick: usize = std::env::var("REVIEW22_SICK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let sick = hold_many(&mutex, "sick", n_sick).await;
    let well = hold_many(&mutex, "well", 300).await;
    // The partition holding the `sick-*` names stops answering renewals.
    proxy.add(Match::LeaseActionOn("renew", "/sick-"), Action::Blackhole, None);
    let t0 = Instant::now();
    let mut first_loss = None;
    while t0.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let lost = well.iter().filter(|g| !g.is_held()).count();
        if t0.elapsed().as_millis() % 2000 < 250 {
            eprintln!("{:?}: load {:?}", t0.elapsed(), mutex.client().load());
        }
        if lost > 0 && first_loss.is_none() {
            first_loss = Some((t0.elapsed(), lost, mutex.client().load()));
        }
    }
    let lost_well = well.iter().filter(|g| !g.is_held()).count();
    let lost_sick = sick.iter().filter(|g| !g.is_held()).count();
    proxy.clear();
    eprintln!(
        "sick lost {lost_sick}, well lost {lost_well}, first loss {first_loss:?}, blackholed renewals seen {}",
        proxy
            .seen()
            .iter()
            .filter(|s| s.lease_action.as_deref() == Some("renew"))
            .count()
    );
    assert_eq!(
        lost_well, 0,
        "{lost_well} of 300 healthy leases lost (first at {first_loss:?}: elapsed, lost, load) \
         because 200 others' renewals hung; sick lost: {lost_sick}"
    );
}
