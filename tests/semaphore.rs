//! Semaphore against a real Azurite: never more than N holders (by a protected resource and by
//! the server's lease states) under contention; N and no fewer when free; a different N
//! refused with both numbers; bad input refused before any request; fencing tokens per slot
//! that never repeat, also after the slot's blob is deleted and recreated; permits renewed and
//! lost like guards; waiting, timing out, cancelling; status.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use azmutex::{
    AzureMutex, BreakPeriod, InvalidInput, LostReason, Semaphore, SemaphoreError, SemaphoreOptions, StorageConfig,
};
use common::semaphore::{blobs_named, client, held_on_server, options, Resource};

/// 12 clients (each its own connection pool) take turns on 3 slots, 6 times each, as fast as
/// they can. A protected resource counts concurrent users and checks the per-slot fencing
/// tokens; a monitor reads the server's lease states all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn never_more_than_n_holders_under_contention() {
    let c = common::unique("sem-contend");
    const N: u32 = 3;
    let resource = Arc::new(Resource::default());
    let done = Arc::new(AtomicUsize::new(0));
    let server_most = Arc::new(AtomicUsize::new(0));
    let monitor = {
        let (c, done, server_most) = (c.clone(), done.clone(), server_most.clone());
        tokio::spawn(async move {
            while done.load(Ordering::SeqCst) < 12 {
                let held = held_on_server(&c, "db").await;
                server_most.fetch_max(held, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (sem, resource, done) = (client(&c, "db", N), resource.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..6 {
                let mut permit = sem.acquire_timeout(Duration::from_secs(120)).await.unwrap();
                assert!(permit.slot() < N);
                assert!(
                    resource.enter(permit.slot(), permit.fencing_token()),
                    "stale or repeated token"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
                assert!(permit.is_held());
                resource.leave();
                permit.release().await.unwrap();
            }
            done.fetch_add(1, Ordering::SeqCst);
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(300), t)
            .await
            .unwrap()
            .unwrap();
    }
    monitor.await.unwrap();
    assert!(resource.most() <= N as usize, "{} holders at once", resource.most());
    assert!(
        server_most.load(Ordering::SeqCst) <= N as usize,
        "the server showed more leased slots than N"
    );
    assert_eq!(resource.rejected.load(Ordering::SeqCst), 0);
    // Every permit was given back.
    assert_eq!(held_on_server(&c, "db").await, 0);
}

/// N different clients get N different slots at once; the next one finds it full; a released
/// slot goes to the next client.
#[tokio::test]
async fn exactly_n_permits_then_full() {
    let c = common::unique("sem-full");
    let mut permits = Vec::new();
    for _ in 0..4 {
        permits.push(client(&c, "pool", 4).try_acquire().await.unwrap());
    }
    let mut slots: Vec<u32> = permits.iter().map(|p| p.slot()).collect();
    slots.sort();
    assert_eq!(slots, [0, 1, 2, 3]);
    assert_eq!(held_on_server(&c, "pool").await, 4);
    let late = client(&c, "pool", 4);
    match late.try_acquire().await {
        Err(SemaphoreError::Full { slots: 4, .. }) => {}
        other => panic!("expected Full, got {other:?}"),
    }
    let freed = permits[2].slot();
    permits[2].release().await.unwrap();
    let p = late.try_acquire().await.unwrap();
    assert_eq!(p.slot(), freed);
    assert_eq!(held_on_server(&c, "pool").await, 4);
}

/// A client with another N is refused with both numbers, whoever wrote the manifest first, also
/// when two clients with different N race to create the semaphore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_n_is_refused_with_both_numbers() {
    let c = common::unique("sem-mismatch");
    let _p = client(&c, "jobs", 3).try_acquire().await.unwrap();
    match client(&c, "jobs", 4).try_acquire().await {
        Err(
            e @ SemaphoreError::SlotsMismatch {
                recorded: 3,
                requested: 4,
                ..
            },
        ) => {
            let text = e.to_string();
            assert!(text.contains('3') && text.contains('4'), "{text}");
        }
        other => panic!("expected SlotsMismatch, got {other:?}"),
    }
    // Waiting does not turn a mismatch into a wait.
    assert!(matches!(
        client(&c, "jobs", 2).acquire_timeout(Duration::from_secs(30)).await,
        Err(SemaphoreError::SlotsMismatch {
            recorded: 3,
            requested: 2,
            ..
        })
    ));
    // Creation races: exactly one number wins, the other is refused.
    for round in 0..5 {
        let name = format!("race-{round}");
        let (a, b) = (client(&c, &name, 2), client(&c, &name, 5));
        let (ra, rb) = tokio::join!(a.try_acquire(), b.try_acquire());
        let refused = [&ra, &rb]
            .iter()
            .filter(|r| matches!(r, Err(SemaphoreError::SlotsMismatch { .. })))
            .count();
        assert_eq!(refused, 1, "{ra:?} / {rb:?}");
    }
}

/// A manifest lost while slots are held: a client with a smaller N is refused *before* it
/// writes a manifest of its own (on 066b881 it wrote it first, and from then on every rightful
/// user was refused with 78, and `status` said 3 held out of 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_manifest_is_not_rewritten_with_a_smaller_count() {
    let c = common::unique("sem-lostman");
    let holders = client(&c, "m3", 3);
    let mut permits = Vec::new();
    for _ in 0..3 {
        permits.push(holders.try_acquire().await.unwrap());
    }
    let mutex = common::fenced(&c);
    let manifest = azmutex::LockName::new("m3/semaphore").unwrap();
    mutex.delete_record(&manifest).await.unwrap();
    assert!(matches!(
        client(&c, "m3", 2).try_acquire().await,
        Err(SemaphoreError::Inconsistent { .. })
    ));
    // No manifest was written by the refused client: the rightful N is still accepted (full).
    assert!(blobs_named(&c, "m3", "semaphore").await.is_empty());
    assert!(matches!(
        client(&c, "m3", 3).try_acquire().await,
        Err(SemaphoreError::Full { .. })
    ));
    for mut p in permits {
        p.release().await.unwrap();
    }
}

/// Bad counts, names and mutexes are typed errors before any request (the endpoint here does
/// not exist).
#[tokio::test]
async fn bad_input_is_refused_before_any_request() {
    let cs = format!(
        "AccountName=devstoreaccount1;AccountKey={};BlobEndpoint=http://127.0.0.1:9/devstoreaccount1",
        common::DEV_KEY
    );
    let config = StorageConfig::parse_connection_string(&cs).unwrap();
    let fenced = AzureMutex::builder(config.clone(), "c1c")
        .fencing(true)
        .build()
        .unwrap();
    let plain = AzureMutex::builder(config, "c1c").build().unwrap();
    for n in [0, azmutex::semaphore::MAX_SLOTS + 1, u32::MAX] {
        assert!(matches!(
            Semaphore::new(fenced.clone(), "s", n),
            Err(InvalidInput::Option { option: "slots", .. })
        ));
    }
    assert!(Semaphore::new(fenced.clone(), "s", azmutex::semaphore::MAX_SLOTS).is_ok());
    assert!(matches!(
        Semaphore::new(plain, "s", 3),
        Err(InvalidInput::Option { option: "fencing", .. })
    ));
    for bad in ["", "a//b", "../x", "a\\b", &"x".repeat(1015)] {
        assert!(Semaphore::new(fenced.clone(), bad, 3).is_err(), "{bad:?} accepted");
    }
    let bad_options = SemaphoreOptions {
        polls_per_second: 0,
        ..SemaphoreOptions::default()
    };
    assert!(Semaphore::with_options(fenced.clone(), "s", 3, bad_options).is_err());
    assert_eq!(fenced.client().requests_sent(), 0);
}

/// A slot's fencing token grows with every permit, also after the slot's blob was deleted,
/// and after it was recreated by someone else as a page blob starting at 0 or as a block blob.
#[tokio::test]
async fn a_recreated_slot_never_repeats_a_token() {
    let c = common::unique("sem-fence");
    let sem = client(&c, "one", 1);
    let mut last = 0;
    for recreate in ["none", "delete", "page-zero", "block"] {
        match recreate {
            "none" => {}
            "delete" => common::delete_blob(&c, "one/slot-0000").await,
            "page-zero" => {
                common::delete_blob(&c, "one/slot-0000").await;
                let r = common::send(
                    azmutex::rest::RestRequest::new("put", reqwest::Method::PUT, &c, Some("one/slot-0000"))
                        .header("x-ms-blob-type", "PageBlob")
                        .header("x-ms-blob-content-length", "0")
                        .header("x-ms-blob-sequence-number", "0"),
                )
                .await;
                assert_eq!(r.status, 201, "{:?}", r.error());
            }
            _ => {
                common::delete_blob(&c, "one/slot-0000").await;
                let r = common::send(
                    azmutex::rest::RestRequest::new("put", reqwest::Method::PUT, &c, Some("one/slot-0000"))
                        .header("x-ms-blob-type", "BlockBlob"),
                )
                .await;
                assert_eq!(r.status, 201, "{:?}", r.error());
            }
        }
        // Two permits per round: the second one reuses what the listing showed.
        for _ in 0..2 {
            let mut p = sem.try_acquire().await.unwrap();
            assert_eq!(p.slot(), 0);
            assert!(
                p.fencing_token() > last,
                "{recreate}: token {} after {last}",
                p.fencing_token()
            );
            last = p.fencing_token();
            p.release().await.unwrap();
        }
    }
}

/// A permit's lease is renewed in the background like a guard's, and a broken lease is
/// reported through `lost()`; the slot then goes to someone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permits_are_renewed_and_lost_like_guards() {
    let c = common::unique("sem-lost");
    let mut o = options(15);
    o.locker.renew_every = Some(Duration::from_secs(1));
    let sem = Semaphore::with_options(common::fenced(&c), "renewed", 1, o).unwrap();
    let mut permit = sem.try_acquire().await.unwrap();
    let first = permit.valid_until().unwrap();
    // Two confirmed renewals move the deadline.
    for _ in 0..2 {
        let changed = permit.changed();
        tokio::time::timeout(Duration::from_secs(30), changed).await.unwrap();
    }
    assert!(permit.valid_until().unwrap() > first);
    assert!(permit.is_held());
    // Broken from outside: lost, with the reason.
    let lost = permit.lost();
    common::fenced(&c)
        .break_lease(permit.lock_name(), Some(BreakPeriod::NOW))
        .await
        .unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(30), lost).await.unwrap();
    assert!(
        matches!(
            reason,
            LostReason::Broken | LostReason::NotPresent | LostReason::IdMismatch
        ),
        "{reason:?}"
    );
    assert!(!permit.is_held());
    assert!(permit.lost_reason().is_some());
    assert!(
        permit.release().await.is_err(),
        "a lost permit's release must not report success"
    );
    // The slot is free for the next client.
    let other = client(&c, "renewed", 1).try_acquire().await.unwrap();
    assert!(other.fencing_token() > permit.fencing_token());
}

/// A waiter gets the slot that frees; a wait times out while the semaphore stays full; a
/// cancelled wait ends; waiter records are cleaned up; dropping a permit releases its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_timing_out_cancelling_and_dropping() {
    let c = common::unique("sem-wait");
    let holder = client(&c, "w", 1).try_acquire().await.unwrap();
    let waiter = client(&c, "w", 1);
    let waiting = tokio::spawn(async move { waiter.acquire_timeout(Duration::from_secs(60)).await });
    // The waiter records itself while it waits.
    let mut recorded = false;
    for _ in 0..200 {
        if !blobs_named(&c, "w", "waiter-").await.is_empty() {
            recorded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recorded, "no waiter record appeared");
    let status = Semaphore::status_of(&common::fenced(&c), "w").await.unwrap().unwrap();
    assert_eq!(status.waiters, 1);
    drop(holder); // releases in the background
    let permit = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(permit.slot(), 0);
    // Full: a short wait times out, a cancelled one is cancelled.
    match client(&c, "w", 1).acquire_timeout(Duration::from_millis(300)).await {
        Err(SemaphoreError::TimedOut { slots: 1, .. }) => {}
        other => panic!("expected TimedOut, got {other:?}"),
    }
    let cancel = tokio::time::sleep(Duration::from_millis(300));
    assert!(matches!(
        client(&c, "w", 1).acquire_until(None, cancel).await,
        Err(SemaphoreError::Cancelled { .. })
    ));
    // Every waiter record goes away once the waits are over.
    let mut left = Vec::new();
    for _ in 0..200 {
        left = blobs_named(&c, "w", "waiter-").await;
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(left.is_empty(), "waiter records left behind: {left:?}");
    drop(permit);
    for _ in 0..200 {
        if held_on_server(&c, "w").await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(held_on_server(&c, "w").await, 0, "a dropped permit kept its slot");
}

/// Status lists N, which slots are held and by whom, and no semaphore where there is none.
#[tokio::test]
async fn status_shows_slots_and_holders() {
    let c = common::unique("sem-status");
    let holder = azmutex::Holder {
        owner: Some("builder".into()),
        host: Some("ci-7".into()),
        pid: Some(42),
    };
    let mutex = AzureMutex::builder(common::config(), &c)
        .client_options(common::fast_options())
        .fencing(true)
        .holder(holder)
        .build()
        .unwrap();
    let sem = Semaphore::with_options(mutex.clone(), "st", 3, options(15)).unwrap();
    let p = sem.try_acquire().await.unwrap();
    let status = sem.status().await.unwrap().unwrap();
    assert_eq!(status.slots, 3);
    assert_eq!(status.slot_states.len(), 3);
    assert_eq!(status.held(), 1);
    let held = &status.slot_states[p.slot() as usize];
    assert!(held.locked);
    assert_eq!(held.fencing_token, Some(p.fencing_token()));
    let h = held.holder.as_ref().unwrap();
    assert_eq!(h.holder.owner.as_deref(), Some("builder"));
    assert_eq!(h.holder.pid, Some(42));
    assert!(Semaphore::status_of(&mutex, "nothing-here").await.unwrap().is_none());
}

/// With a free slot, a client that has listed the semaphore acquires with one List Blobs and
/// two lease-layer requests (acquire, fencing token): the listing tells the sequence number.
#[tokio::test]
async fn a_free_slot_costs_one_list_and_two_requests() {
    let c = common::unique("sem-cost");
    // Make every slot blob exist (first use creates it).
    let warm = client(&c, "cost", 4);
    let mut ps = Vec::new();
    for _ in 0..4 {
        ps.push(warm.try_acquire().await.unwrap());
    }
    for mut p in ps {
        p.release().await.unwrap();
    }
    let _held = client(&c, "cost", 4).try_acquire().await.unwrap();
    let fresh = client(&c, "cost", 4);
    let before = fresh.mutex().client().requests_sent();
    let _p = fresh.try_acquire().await.unwrap();
    assert_eq!(fresh.mutex().client().requests_sent() - before, 3);
}

/// A server (or something in its place) answering List Blobs with an endless body, a cut
/// listing or garbage: an error, never a permit, a "full" or a shorter list, and no hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_listings_are_errors() {
    use std::io::{Read, Write};
    fn serve(body: &'static str, endless: bool) -> std::net::SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                std::thread::spawn(move || loop {
                    // One request head, then the answer.
                    let mut seen = Vec::new();
                    let mut byte = [0u8; 1];
                    while !seen.ends_with(b"\r\n\r\n") {
                        if conn.read(&mut byte).unwrap_or(0) == 0 {
                            return;
                        }
                        seen.push(byte[0]);
                    }
                    if endless {
                        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
                        let chunk = format!("{:x}\r\n{body}\r\n", body.len());
                        while conn.write_all(chunk.as_bytes()).is_ok() {}
                        return;
                    }
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                    if conn.write_all(head.as_bytes()).is_err() || conn.write_all(body.as_bytes()).is_err() {
                        return;
                    }
                });
            }
        });
        addr
    }
    let cases = [
        ("<Blob><Name>s/slot-0000</Name></Blob>", true),
        (
            "<?xml version=\"1.0\"?><EnumerationResults><Blobs><Blob><Name>s/semaphore</Name>\
             <Metadata><azmutexslots>2</azmutexslots></Metadata></Blob><Blob><Name>s/slot-0000</Name>",
            false,
        ),
        ("not xml at all <<<>>>", false),
    ];
    for (body, endless) in cases {
        let addr = serve(body, endless);
        let mutex = common::via(addr, "c1c", true);
        let sem = Semaphore::with_options(mutex, "s", 2, options(15)).unwrap();
        let result = tokio::time::timeout(Duration::from_secs(60), sem.try_acquire())
            .await
            .expect("a hostile listing hung the acquire");
        // Not a listing (Unexpected), or, for the endless body on a busy machine, a timeout
        // while reading its first 8 MiB: either way an error, never a permit or "full".
        match result {
            Err(SemaphoreError::Storage(azmutex::Error::Unexpected { .. })) => {}
            Err(SemaphoreError::Storage(e)) if endless && e.is_transient() => {}
            other => panic!("{body:?}: expected an error, got {other:?}"),
        }
    }
}
