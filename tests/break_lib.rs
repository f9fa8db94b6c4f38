//! Hostile review of issue 8 (library side), against a real Azurite. Each test is an attack that
//! broke a safety promise of the first implementation (commit c0e243f), named after what went
//! wrong then; it passes when the promise holds. Kept as regression tests.

mod common;

use std::time::{Duration, Instant};

use azmutex::rest::RestRequest;
use azmutex::{AzureMutex, BreakPeriod, ClientOptions, Locker};
use common::http_proxy::{Action, HttpProxy, Match};
use common::{create_container, delete_blob, fenced, locker_options, secs, send, via};
use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A zero-length page blob created by someone other than this crate version (an operator, a
/// script, azmutex 747e99b), with the given initial sequence number (none: 0).
async fn put_page_blob(container: &str, blob: &str, sequence: Option<&str>) {
    create_container(container).await;
    let mut req = RestRequest::new("put", Method::PUT, container, Some(blob))
        .header("x-ms-blob-type", "PageBlob")
        .header("x-ms-blob-content-length", "0");
    if let Some(s) = sequence {
        req = req.header_owned("x-ms-blob-sequence-number", s).unwrap();
    }
    let r = send(req).await;
    assert_eq!(r.status, 201, "{:?}", r.error());
}

/// Promise 3. The lock is broken and taken by a thief while the work runs. The first release
/// attempt is answered 500 by something in front of the service WITHOUT being forwarded (never
/// applied); the retry gets "lease id mismatch". `AzureMutex::release` calls that
/// `Released::Unconfirmed` (by design), but `Locker::with_lock` throws the `Released` value away
/// and returns plain `Ok(value)`: the caller is told the work ran under the lock to the end,
/// although another client held the lock while it ran, and has no way to tell.
#[tokio::test]
async fn break_with_lock_reports_ok_for_work_done_under_a_stolen_lock() {
    let c = common::unique("brk-unconf");
    let proxy = HttpProxy::start(common::azurite_addr());
    let locker = Locker::with_options(via(proxy.addr, &c, false), "job", locker_options(secs(15))).unwrap();
    let thief = common::mutex(&c);
    let result = locker
        .with_lock(|_| async {
            thief.break_lease("job", Some(BreakPeriod::NOW)).await.unwrap();
            thief.acquire("job", secs(60)).await.unwrap();
            // A gateway answers 500 without forwarding (outcome unknown to the client).
            proxy.add(
                Match::LeaseAction("release"),
                Action::Respond(500, "InternalError"),
                Some(1),
            );
            "work done"
        })
        .await;
    // Since a release is confirmed by a renewal first (issue 16's review), the theft shows in
    // that renewal and no release is sent to a lease that is not ours; before, the 500 and the
    // retry's mismatch were the only signal (2 release requests).
    let releases = proxy.count("release");
    assert!(releases == 0 || releases == 2, "{releases}: {:?}", proxy.seen());
    assert!(
        result.is_err(),
        "with_lock returned {result:?} although another client held the lock while the work ran \
         (the release was Unconfirmed, and with_lock cannot say so)"
    );
}

/// Promise 5: `lock_timeout` with an absurd (huge) limit panics ("overflow when adding duration
/// to instant") instead of waiting or returning an error. Same for `lock_until` and
/// `lock_detached` (`Instant::now() + t` in src/locker.rs).
#[tokio::test]
async fn break_huge_wait_limits_panic() {
    let c = common::unique("brk-huge");
    let mk = || Locker::with_options(common::mutex(&c), "job", locker_options(secs(15))).unwrap();
    let mut panics = Vec::new();
    let l = mk();
    let r = tokio::spawn(async move { l.lock_timeout(Duration::MAX).await.map(|_| ()) }).await;
    if matches!(&r, Err(e) if e.is_panic()) {
        panics.push("lock_timeout(Duration::MAX)");
    }
    let l = mk();
    let r = tokio::spawn(async move {
        l.lock_until(Some(Duration::MAX), std::future::pending())
            .await
            .map(|_| ())
    })
    .await;
    if matches!(&r, Err(e) if e.is_panic()) {
        panics.push("lock_until(Some(Duration::MAX))");
    }
    let l = mk();
    let r = tokio::spawn(async move { l.lock_detached(Some(Duration::MAX)).await.map(|_| ()) }).await;
    if matches!(&r, Err(e) if e.is_panic()) {
        panics.push("lock_detached(Some(Duration::MAX))");
    }
    assert!(panics.is_empty(), "panicked: {panics:?}");
}

/// Promise 5: an absurd `ClientOptions::retry.call_timeout` is accepted by the builder and then
/// panics on the first call (`BlobClient::default_deadline`: `Instant::now() + call_timeout`).
#[tokio::test]
async fn break_huge_call_timeout_panics() {
    let c = common::unique("brk-calltimeout");
    let mut options = ClientOptions::default();
    options.retry.call_timeout = Duration::MAX;
    let built = AzureMutex::builder(common::config(), &c)
        .client_options(options)
        .build();
    let Ok(m) = built else {
        return; // refused up front: fine
    };
    let r = tokio::spawn(async move { m.acquire("job", secs(15)).await.map(|_| ()) }).await;
    assert!(
        !matches!(&r, Err(e) if e.is_panic()),
        "acquire panicked with call_timeout = Duration::MAX"
    );
}

/// A server that answers every request `503 ServerBusy` with `Retry-After: <value>`.
async fn retry_after_server(value: &'static str) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let _ = conn.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 503 Busy\r\nx-ms-error-code: ServerBusy\r\nRetry-After: {value}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

/// Promise 5 ("nothing panics"): one answer with a huge `Retry-After` (from a buggy gateway or a
/// hostile endpoint) panics the caller: `Instant::now() + wait` in `BlobClient::send`
/// (`parse_retry_after` accepts any u64 of seconds). A renewal task hitting it dies; a direct
/// `acquire`/`release` call panics.
#[tokio::test]
async fn break_huge_retry_after_panics() {
    let addr = retry_after_server("18446744073709551615").await;
    let c = common::unique("brk-retryafter");
    let m = via(addr, &c, false);
    let r = tokio::spawn(async move { m.acquire("job", secs(15)).await.map(|_| ()) }).await;
    assert!(
        !matches!(&r, Err(e) if e.is_panic()),
        "acquire panicked on `Retry-After: 18446744073709551615`"
    );
}

/// Promise 5: `lock_timeout` returns within its limit (at least one whole attempt: one request
/// timeout) plus ONE bounded cleanup request. With
/// fencing on, the acquire succeeds and then everything else is swallowed: the fencing write
/// runs to the limit, `acquire_until` spends up to 5 s in `release_quietly`, and then the
/// Locker's own `cleanup` spends another 5 s releasing the same lease: limit + 10 s.
#[tokio::test]
async fn break_lock_timeout_pays_two_cleanups() {
    let c = common::unique("brk-2cleanups");
    // The lock blob exists (a fresh mutex has no page cache: its first stamp request is a HEAD).
    fenced(&c)
        .release(&fenced(&c).acquire("job", secs(15)).await.unwrap())
        .await
        .unwrap();
    let proxy = HttpProxy::start(common::azurite_addr());
    // Acquire passes (a no-op rewrite); every other request is swallowed.
    proxy.add(
        Match::LeaseAction("acquire"),
        Action::RewriteHeader("x-break-test", None),
        None,
    );
    proxy.add(Match::Any, Action::Blackhole, None);
    let mut options = ClientOptions::default();
    options.retry.call_timeout = Duration::from_secs(30);
    let m = AzureMutex::builder(common::config_via(proxy.addr), &c)
        .client_options(options)
        .fencing(true)
        .build()
        .unwrap();
    let locker = Locker::with_options(m, "job", locker_options(secs(15))).unwrap();
    let limit = Duration::from_secs(2);
    let started = Instant::now();
    let r = locker.lock_timeout(limit).await;
    let took = started.elapsed();
    let releases = proxy.count("release");
    assert!(r.is_err());
    // Since issue 16 a wait's first attempt is a whole one (at least one request timeout, 5 s,
    // however short the limit): the bound is max(limit, 5 s) plus one cleanup (5 s), where two
    // cleanups would take 5 s more.
    let first_attempt = limit.max(Duration::from_secs(5));
    assert!(
        took < first_attempt + Duration::from_secs(7),
        "lock_timeout({limit:?}) took {took:?} ({releases} release requests sent)"
    );
}

/// Promise 4 (page-blob limit): on Azurite a sequence number at 2^63 - 1 is a JS double;
/// `increment` adds 1 and gets the same value back. `fence::sequence_number` takes whatever the
/// answer says (no check against MAX_SEQUENCE_NUMBER or against the value it read), so two
/// acquisitions get the SAME token, above the documented limit, instead of
/// `Error::FencingExhausted`. (Any sequence number >= 2^53 does this on Azurite.)
#[tokio::test]
async fn break_page_blob_tokens_repeat_at_the_limit() {
    let c = common::unique("brk-seqmax");
    put_page_blob(&c, "job", Some("9223372036854775807")).await;
    let m = fenced(&c);
    let mut tokens = Vec::new();
    for _ in 0..2 {
        match m.acquire("job", secs(15)).await {
            Ok(lease) => {
                tokens.push(lease.fencing_token().unwrap());
                m.release(&lease).await.unwrap();
            }
            Err(e) => {
                // An error (FencingExhausted) is the promised outcome; the lease must be gone.
                assert!(!m.inspect("job").await.unwrap().locked, "{e}");
                return;
            }
        }
    }
    assert!(
        tokens[1] > tokens[0] && tokens[1] < (1u64 << 63),
        "tokens {tokens:?}: repeated and/or beyond the page-blob limit 2^63-1"
    );
}

/// Promise 4 (deletion and recreation as a page blob): the metadata path floors a counter at the
/// clock (`max(previous + 1, clock)`), but the page-blob path takes the sequence number as it is.
/// A lock blob deleted and recreated as a page blob by anything but this crate version (an
/// operator's script, `az storage blob upload --type page`, or a not-yet-upgraded azmutex
/// 747e99b, which created page blobs at sequence 0) restarts the tokens at 1.
#[tokio::test]
async fn break_page_blob_recreated_elsewhere_restarts_tokens() {
    let c = common::unique("brk-pagereset");
    let m = fenced(&c);
    let lease = m.acquire("job", secs(15)).await.unwrap();
    let before = lease.fencing_token().unwrap();
    m.release(&lease).await.unwrap();
    delete_blob(&c, "job").await;
    put_page_blob(&c, "job", None).await;
    let lease = fenced(&c).acquire("job", secs(15)).await.unwrap();
    let after = lease.fencing_token().unwrap();
    assert!(
        after > before,
        "token {after} after {before}: went back after recreation"
    );
}
