//! AzureMutex against a real Azurite: lease semantics, request counts, fencing, error kinds.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use azmutex::rest::{BlobClient, ClientOptions, RestRequest};
use azmutex::{
    AzureMutex, BreakPeriod, Error, Holder, LeaseDuration, LeaseId, LeaseKind, LeaseState, LostReason, StorageConfig,
};
use common::proxy::{busy_server, Proxy};
use reqwest::Method;

fn secs(n: u64) -> LeaseDuration {
    LeaseDuration::seconds(n).unwrap()
}

fn azurite_addr() -> SocketAddr {
    format!(
        "127.0.0.1:{}",
        common::service().port.expect("these tests need the local Azurite")
    )
    .parse()
    .unwrap()
}

/// A second, independent client: a bare reqwest request authorized by an account SAS made by
/// the Python SDK (no code of ours on the request path).
async fn raw_lease(container: &str, blob: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let url = format!(
        "{}/{container}/{blob}?comp=lease&{}",
        common::service().endpoint,
        common::sas("account_sas_rwdlac")
    );
    let mut req = reqwest::Client::new()
        .put(url)
        .header("x-ms-version", "2025-11-05")
        .header("content-length", "0");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

/// The error says the lease is lost, for `reason`.
fn assert_lost(err: &Error, reason: LostReason) {
    assert!(
        matches!(err, Error::LeaseLost { reason: r, .. } if *r == reason),
        "expected lost ({reason:?}): {err:?}"
    );
}

async fn raw_acquire(container: &str, blob: &str, id: &str) -> reqwest::Response {
    let headers = [
        ("x-ms-lease-action", "acquire"),
        ("x-ms-lease-duration", "15"),
        ("x-ms-proposed-lease-id", id),
    ];
    raw_lease(container, blob, &headers).await
}

#[tokio::test]
async fn lease_operations_behave_as_documented() {
    let c = common::unique("ops");
    let a = common::mutex(&c);
    let b = common::mutex(&c);

    let mut lease = a.acquire("job", secs(20)).await.unwrap();
    assert!(lease.is_valid_at(Instant::now()));
    let deadline = lease.deadline().unwrap();
    assert_eq!(deadline, lease.grant().sent_at + Duration::from_secs(20));

    // Held: another acquire conflicts.
    let err = b.acquire("job", secs(15)).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    assert_eq!(err.status(), Some(409));
    assert_eq!(err.error_code(), Some("LeaseAlreadyPresent"));
    assert!(err.request_id().is_some());

    // Re-acquire with our own id is accepted (idempotent) and restarts the clock.
    let again = a.acquire_with_id("job", secs(20), lease.id()).await.unwrap();
    assert_eq!(again.id(), lease.id());
    assert!(again.grant().sent_at > lease.grant().sent_at);

    // Renew: new grant from the send time.
    let before = Instant::now();
    let grant = a.renew(&mut lease).await.unwrap();
    assert!(grant.sent_at >= before && grant.sent_at <= Instant::now());

    // Wrong ids: renew and release report a lost lease.
    let mut wrong = azmutex::Lease::resume(lease.lock().clone(), LeaseId::new_random(), secs(20));
    let err = b.renew(&mut wrong).await.unwrap_err();
    assert_lost(&err, LostReason::IdMismatch);
    let err = b.release(&wrong).await.unwrap_err();
    assert_lost(&err, LostReason::IdMismatch);

    // Inspect sees it leased.
    let info = b.inspect("job").await.unwrap();
    assert!(info.exists && info.locked);
    assert_eq!(info.state, LeaseState::Leased);
    assert_eq!(info.duration, Some(LeaseKind::Fixed));

    // Change the id: the new one works, the old one no longer does.
    let old = lease.clone();
    let new_id = LeaseId::new_random();
    a.change(&mut lease, new_id).await.unwrap();
    assert_eq!(lease.id(), new_id);
    let mut stale = old.clone();
    assert!(matches!(a.renew(&mut stale).await, Err(Error::LeaseLost { .. })));
    a.renew(&mut lease).await.unwrap();

    // Release frees it at once.
    a.release(&lease).await.unwrap();
    let info = b.inspect("job").await.unwrap();
    assert_eq!(info.state, LeaseState::Available);
    let other = b.acquire("job", LeaseDuration::Infinite).await.unwrap();
    assert_eq!(other.deadline(), None);
    assert_eq!(b.inspect("job").await.unwrap().duration, Some(LeaseKind::Infinite));

    // Break with period 0 frees it at once; the holder learns on its next renew.
    let left = a.break_lease("job", Some(BreakPeriod::NOW)).await.unwrap();
    assert_eq!(left, Duration::ZERO);
    assert_eq!(a.inspect("job").await.unwrap().state, LeaseState::Broken);
    let mut broken = other.clone();
    let err = b.renew(&mut broken).await.unwrap_err();
    assert_lost(&err, LostReason::Broken);
    a.acquire("job", secs(15)).await.unwrap();

    // Break with a period: breaking, still locked; lease time reported.
    let left = a
        .break_lease("job", Some(BreakPeriod::seconds(10).unwrap()))
        .await
        .unwrap();
    assert!(left > Duration::ZERO && left <= Duration::from_secs(10), "{left:?}");
    let info = a.inspect("job").await.unwrap();
    assert_eq!(info.state, LeaseState::Breaking);
    assert!(info.locked);
    assert!(matches!(b.acquire("job", secs(15)).await, Err(Error::Conflict { .. })));

    // Breaking an unleased lock: nothing to wait for.
    let free_lease = a.acquire("free", secs(15)).await.unwrap();
    a.release(&free_lease).await.unwrap();
    assert_eq!(a.break_lease("free", None).await.unwrap(), Duration::ZERO);
    let free = a.inspect("never-used").await.unwrap();
    assert!(!free.exists);
    assert_eq!(free.state, LeaseState::Available);
}

#[tokio::test]
async fn an_expired_lease_frees_the_lock() {
    let c = common::unique("exp");
    let a = common::mutex(&c);
    let mut lease = a.acquire("job", secs(15)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(15_500)).await;
    assert!(!lease.is_valid_at(Instant::now()));
    let info = a.inspect("job").await.unwrap();
    assert_eq!(info.state, LeaseState::Expired);
    let b = common::mutex(&c);
    let other = b.acquire("job", secs(15)).await.unwrap();
    // The first holder learns it is lost (Azurite would renew an expired lease under any id, so
    // the returned id is checked too).
    let err = a.renew(&mut lease).await.unwrap_err();
    assert!(matches!(err, Error::LeaseLost { .. }), "{err:?}");
    b.release(&other).await.unwrap();
}

#[tokio::test]
async fn steady_state_is_one_request_per_operation() {
    let c = common::unique("count");
    let m = common::mutex(&c);
    let client = m.client().clone();

    // First acquire on a fresh container: 404 container, create it, 404 blob, create it, acquire.
    let n0 = client.requests_sent();
    let lease = m.acquire("job", secs(15)).await.unwrap();
    assert_eq!(client.requests_sent() - n0, 5);
    m.release(&lease).await.unwrap();

    for _ in 0..3 {
        let n = client.requests_sent();
        let mut lease = m.acquire("job", secs(15)).await.unwrap();
        assert_eq!(client.requests_sent() - n, 1, "acquire");
        let n = client.requests_sent();
        m.renew(&mut lease).await.unwrap();
        assert_eq!(client.requests_sent() - n, 1, "renew");
        let n = client.requests_sent();
        m.release(&lease).await.unwrap();
        assert_eq!(client.requests_sent() - n, 1, "release");
    }

    // A fresh AzureMutex on the existing lock: still one request.
    let m2 = common::mutex(&c);
    let lease = m2.acquire("job", secs(15)).await.unwrap();
    assert_eq!(m2.client().requests_sent(), 1);
    m2.release(&lease).await.unwrap();
}

async fn put_block_blob(client: &BlobClient, container: &str, blob: &str, body: &[u8]) {
    let create = RestRequest::new("cc", Method::PUT, container, None).query("restype", "container");
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = client.send(&create, deadline).await.unwrap();
    assert!(r.status == 201 || r.status == 409);
    let mut put = RestRequest::new("put", Method::PUT, container, Some(blob))
        .header("x-ms-blob-type", "BlockBlob")
        .header("content-type", "application/json")
        .header("x-ms-meta-team", "payments")
        .header("x-ms-meta-build", "1234");
    put.body = body.to_vec();
    assert_eq!(client.send(&put, deadline).await.unwrap().status, 201);
}

async fn get_blob(client: &BlobClient, container: &str, blob: &str) -> (Vec<u8>, BTreeMap<String, String>) {
    let get = RestRequest::new("get", Method::GET, container, Some(blob));
    let r = client
        .send(&get, Instant::now() + Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let meta = r
        .headers
        .iter()
        .filter_map(|(n, v)| {
            Some((
                n.as_str().strip_prefix("x-ms-meta-")?.to_string(),
                v.to_str().ok()?.to_string(),
            ))
        })
        .collect();
    (r.body().to_vec(), meta)
}

#[tokio::test]
async fn existing_blob_content_and_metadata_survive() {
    let c = common::unique("keep");
    let client = BlobClient::new(&common::config(), ClientOptions::default()).unwrap();
    put_block_blob(&client, &c, "config.json", br#"{"keep":"me"}"#).await;

    let m = AzureMutex::builder(common::config(), &c)
        .fencing(true)
        .holder(Holder {
            owner: Some("deploy job #7".into()),
            host: Some("build-01".into()),
            pid: Some(4242),
        })
        .build()
        .unwrap();
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let n = m.client().requests_sent();
        let mut lease = m.acquire("config.json", secs(15)).await.unwrap();
        // A pre-existing block blob: acquire + HEAD + Set Blob Metadata.
        assert_eq!(m.client().requests_sent() - n, 3);
        tokens.push(lease.fencing_token().unwrap());
        let info = m.inspect("config.json").await.unwrap();
        let holder = info.holder.unwrap();
        assert_eq!(holder.holder.owner.as_deref(), Some("deploy job #7"));
        assert_eq!(holder.holder.host.as_deref(), Some("build-01"));
        assert_eq!(holder.holder.pid, Some(4242));
        assert!(holder.since.is_some());
        assert_eq!(info.fencing_token, lease.fencing_token());
        m.renew(&mut lease).await.unwrap();
        m.release(&lease).await.unwrap();
    }
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");

    let (body, meta) = get_blob(&client, &c, "config.json").await;
    assert_eq!(body, br#"{"keep":"me"}"#);
    assert_eq!(meta.get("team").map(String::as_str), Some("payments"));
    assert_eq!(meta.get("build").map(String::as_str), Some("1234"));
    // Not locked any more: no holder reported.
    assert!(m.inspect("config.json").await.unwrap().holder.is_none());
}

#[tokio::test]
async fn fencing_tokens_strictly_increase_across_mutexes() {
    let c = common::unique("fence");
    let mut last = 0;
    for i in 0..50 {
        let m = AzureMutex::builder(common::config(), &c).fencing(true).build().unwrap();
        let lease = m.acquire("job", secs(15)).await.unwrap();
        let token = lease.fencing_token().unwrap();
        assert!(token > last, "acquisition {i}: token {token} after {last}");
        last = token;
        if i == 0 {
            // The crate created a page blob: acquire (+ creations) + one increment.
            assert_eq!(m.client().requests_sent(), 6);
        } else {
            // A blob it did not create in this process: acquire + HEAD + increment.
            assert_eq!(m.client().requests_sent(), 3);
        }
        // Same mutex, lock blob known: one extra request.
        m.release(&lease).await.unwrap();
        let n = m.client().requests_sent();
        let lease = m.acquire("job", secs(15)).await.unwrap();
        assert_eq!(m.client().requests_sent() - n, 2);
        assert!(lease.fencing_token().unwrap() > last);
        last = lease.fencing_token().unwrap();
        m.release(&lease).await.unwrap();
    }
    assert_eq!(
        common::mutex(&c).inspect("job").await.unwrap().fencing_token,
        Some(last)
    );
}

#[tokio::test]
async fn a_second_client_and_ours_exclude_each_other() {
    let c = common::unique("second");
    let m = common::mutex(&c);
    // Ours first: the second client's acquire is refused.
    let lease = m.acquire("job", secs(15)).await.unwrap();
    let other_id = LeaseId::new_random().to_string();
    let r = raw_acquire(&c, "job", &other_id).await;
    assert_eq!(r.status(), 409);
    m.release(&lease).await.unwrap();
    // Theirs first: ours is refused, with the service's code kept.
    let r = raw_acquire(&c, "job", &other_id).await;
    assert_eq!(r.status(), 201);
    let err = m.acquire("job", secs(15)).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    let r = raw_lease(
        &c,
        "job",
        &[("x-ms-lease-action", "release"), ("x-ms-lease-id", &other_id)],
    )
    .await;
    assert_eq!(r.status(), 200);
    m.release(&m.acquire("job", secs(15)).await.unwrap()).await.unwrap();
}

#[tokio::test]
async fn lost_answers_are_handled_idempotently() {
    let c = common::unique("lost");
    common::mutex(&c)
        .release(&common::mutex(&c).acquire("job", secs(15)).await.unwrap())
        .await
        .unwrap();
    let proxy = Proxy::start(azurite_addr());
    let options = ClientOptions {
        request_timeout: Duration::from_millis(700),
        ..Default::default()
    };
    let m = AzureMutex::builder(common::config_via(proxy.addr), &c)
        .client_options(options)
        .build()
        .unwrap();

    // Acquire whose answer is lost: the retry with the same proposed id succeeds.
    proxy.drop_responses();
    let healer = {
        let p = std::sync::Arc::new(proxy);
        let p2 = p.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            p2.heal();
        });
        p
    };
    let lease = m.acquire("job", secs(15)).await.unwrap();
    healer.heal();
    assert!(m.client().requests_sent() >= 2, "the acquire was retried");
    let info = common::mutex(&c).inspect("job").await.unwrap();
    assert_eq!(info.state, LeaseState::Leased);

    // Release whose answer is lost: the retry sees a mismatch and counts it as released.
    healer.drop_responses();
    let p2 = healer.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        p2.heal();
    });
    let n = m.client().requests_sent();
    m.release(&lease).await.unwrap();
    assert!(m.client().requests_sent() - n >= 2, "the release was retried");
    assert_eq!(
        common::mutex(&c).inspect("job").await.unwrap().state,
        LeaseState::Available
    );
}

#[tokio::test]
async fn every_error_kind() {
    let c = common::unique("kinds");
    // InvalidInput, before the network.
    let m = common::mutex(&c);
    for err in [
        m.acquire("bad//name", secs(15)).await.unwrap_err(),
        m.inspect("").await.unwrap_err(),
        m.break_lease("x.", None).await.unwrap_err(),
    ] {
        assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
        assert_eq!(err.status(), None);
    }
    assert!(LeaseDuration::seconds(10).is_err());
    assert!(BreakPeriod::seconds(61).is_err());
    assert!(AzureMutex::builder(common::config(), "Bad_Container").build().is_err());
    assert_eq!(m.client().requests_sent(), 0);

    // NotFound: container missing and creation not allowed.
    let no_create = AzureMutex::builder(common::config(), common::unique("absent"))
        .create_container(false)
        .build()
        .unwrap();
    let err = no_create.acquire("job", secs(15)).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    assert_eq!(err.status(), Some(404));
    assert_eq!(err.error_code(), Some("ContainerNotFound"));

    // Conflict and LeaseLost.
    let lease = m.acquire("job", secs(15)).await.unwrap();
    assert!(matches!(
        common::mutex(&c).acquire("job", secs(15)).await,
        Err(Error::Conflict { .. })
    ));
    let mut wrong = azmutex::Lease::resume(lease.lock().clone(), LeaseId::new_random(), secs(15));
    assert!(matches!(m.renew(&mut wrong).await, Err(Error::LeaseLost { .. })));

    // LeaseLost because the blob was deleted (break, then delete it).
    m.break_lease("job", Some(BreakPeriod::NOW)).await.unwrap();
    let del = RestRequest::new("delete", Method::DELETE, &c, Some("job"));
    let r = m
        .client()
        .send(&del, Instant::now() + Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(r.status, 202);
    let mut gone = lease.clone();
    let err = m.renew(&mut gone).await.unwrap_err();
    assert_lost(&err, LostReason::Deleted);

    // Auth.
    let wrong_key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==";
    let cs = format!(
        "AccountName=devstoreaccount1;AccountKey={wrong_key};BlobEndpoint={}",
        common::service().endpoint
    );
    let bad = AzureMutex::builder(StorageConfig::parse_connection_string(&cs).unwrap(), &c)
        .build()
        .unwrap();
    let err = bad.acquire("job", secs(15)).await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    assert_eq!(err.status(), Some(403));
    assert_eq!(bad.client().requests_sent(), 1);
    assert!(!format!("{err:?}{err}").contains("AAECAwQF"));

    // Unexpected: a version the service does not accept (400 InvalidHeaderValue).
    let options = ClientOptions {
        api_version: Some("2099-01-01".into()),
        ..Default::default()
    };
    let odd = AzureMutex::builder(common::config(), &c)
        .client_options(options)
        .build()
        .unwrap();
    let err = odd.acquire("job", secs(15)).await.unwrap_err();
    assert!(matches!(err, Error::Unexpected { .. }), "{err:?}");
    assert_eq!(err.status(), Some(400));

    // Throttled: 503 ServerBusy with Retry-After until the call deadline.
    let mut options = ClientOptions::default();
    options.retry.call_timeout = Duration::from_millis(2500);
    let busy = AzureMutex::builder(common::config_via(busy_server()), &c)
        .client_options(options.clone())
        .build()
        .unwrap();
    let err = busy.acquire("job", secs(15)).await.unwrap_err();
    assert!(matches!(err, Error::Throttled { .. }), "{err:?}");
    assert_eq!(err.error_code(), Some("ServerBusy"));
    assert_eq!(err.request_id(), Some("busy-1"));
    let sent = busy.client().requests_sent();
    assert!((2..=3).contains(&sent), "Retry-After: 1 paces the retries: {sent}");

    // Transient: nothing listening.
    // Port 1: nothing listens there (a freed ephemeral port could be given to another server).
    let dead: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
    let down = AzureMutex::builder(common::config_via(dead), &c)
        .client_options(options)
        .build()
        .unwrap();
    let err = down.acquire("job", secs(15)).await.unwrap_err();
    assert!(matches!(err, Error::Transient { .. }), "{err:?}");
    assert!(err.is_transient());
}
