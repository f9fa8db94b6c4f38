//! Azure Stack Hub's service versions: against Azurite behind a proxy that answers every
//! `x-ms-version` newer than 2017-11-09 as Azure Stack Hub does (400 `InvalidHeaderValue`, the
//! header named in the body), the library and the CLI work with no configuration, and the
//! negotiation costs at most one extra request per client, however many calls start together.

#[path = "common/cli.rs"]
mod cli;
mod common;

use std::sync::Arc;
use std::time::Duration;

use azmutex::rest::{API_VERSIONS, DEFAULT_API_VERSION, FALLBACK_API_VERSION};
use azmutex::{AzureMutex, ClientOptions, Error, InvalidInput, LeaseId, Locker};
use common::http_proxy::{Action, HttpProxy, Match};
use common::secs;

/// A "Stack Hub" in front of Azurite: refuses versions newer than 2017-11-09.
fn stack_hub() -> HttpProxy {
    let proxy = HttpProxy::start(common::azurite_addr());
    proxy.add(
        Match::VersionNewerThan(FALLBACK_API_VERSION),
        Action::RefuseVersion,
        None,
    );
    proxy
}

fn refused(proxy: &HttpProxy) -> usize {
    proxy
        .seen()
        .iter()
        .filter(|s| matches!(s.action, Some(Action::RefuseVersion)))
        .count()
}

#[tokio::test]
async fn locker_negotiates_once_and_every_feature_works_at_the_fallback_version() {
    let hub = stack_hub();
    let container = common::unique("hub");
    let mutex = common::via(hub.addr, &container, true);
    assert_eq!(mutex.client().api_version(), DEFAULT_API_VERSION);
    let mut options = common::locker_options(secs(15));
    options.renew_every = Some(Duration::from_secs(2));
    let locker = Locker::with_options(mutex.clone(), "job", options).unwrap();

    let mut guard = locker.lock().await.unwrap();
    let first_token = guard.fencing_token().expect("a fencing token");
    // Renewals go through at the fallback version too.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(guard.is_held());
    guard.release().await.unwrap();
    let mut guard = locker.lock().await.unwrap();
    assert!(guard.fencing_token().unwrap() > first_token);
    guard.release().await.unwrap();

    // Change, break and inspect at the fallback version.
    let mut lease = mutex.acquire("other", secs(15)).await.unwrap();
    mutex.change(&mut lease, LeaseId::new_random()).await.unwrap();
    let info = mutex.inspect("other").await.unwrap();
    assert_eq!(info.state, azmutex::LeaseState::Leased);
    mutex.break_lease("other", None).await.unwrap();

    let seen = hub.seen();
    assert_eq!(refused(&hub), 1, "one refusal for the client: {seen:#?}");
    assert_eq!(mutex.client().api_version(), FALLBACK_API_VERSION);
    let renewals = seen
        .iter()
        .filter(|s| s.lease_action.as_deref() == Some("renew"))
        .count();
    assert!(renewals >= 2, "renewals went through: {renewals}");
    for s in seen.iter().filter(|s| s.action.is_none()) {
        assert_eq!(s.version.as_deref(), Some(FALLBACK_API_VERSION), "{s:?}");
    }
}

#[tokio::test]
async fn many_calls_starting_together_cost_one_extra_request() {
    let hub = stack_hub();
    let container = common::unique("hub-many");
    let mutex = common::via(hub.addr, &container, false);
    // Make the container first through a separate client, so that the 50 calls below start
    // on a client that has sent nothing yet.
    common::via(hub.addr, &container, false)
        .acquire("warm", secs(15))
        .await
        .unwrap();
    let before = refused(&hub);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let m = mutex.clone();
        tasks.push(tokio::spawn(async move {
            m.acquire(format!("lock-{i}").as_str(), secs(15)).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(refused(&hub) - before, 1, "50 concurrent first calls, one refusal");
}

#[tokio::test]
async fn a_pinned_version_is_never_changed() {
    let hub = stack_hub();
    let container = common::unique("hub-pinned");
    // Pinned to a version the endpoint refuses: the refusal is the answer, typed, once.
    let options = ClientOptions {
        api_version: Some(DEFAULT_API_VERSION.into()),
        ..common::fast_options()
    };
    let pinned = AzureMutex::builder(common::config_via(hub.addr), &container)
        .client_options(options)
        .build()
        .unwrap();
    let err = pinned.acquire("job", secs(15)).await.unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    assert_eq!(err.error_code(), Some("InvalidHeaderValue"));
    assert!(matches!(err, Error::Unexpected { .. }), "{err:?}");
    assert_eq!(pinned.client().api_version(), DEFAULT_API_VERSION);
    assert_eq!(hub.seen().len(), 1);

    // Pinned to the fallback: no refusal at all.
    let options = ClientOptions {
        api_version: Some(FALLBACK_API_VERSION.into()),
        ..common::fast_options()
    };
    let ok = AzureMutex::builder(common::config_via(hub.addr), &container)
        .client_options(options)
        .build()
        .unwrap();
    ok.acquire("job", secs(15)).await.unwrap();
    assert_eq!(refused(&hub), 1);
}

#[tokio::test]
async fn a_refused_fallback_is_the_answer_not_a_loop() {
    // An endpoint that refuses every version: two requests, then the typed refusal.
    let proxy = HttpProxy::start(common::azurite_addr());
    proxy.add(Match::Any, Action::RefuseVersion, None);
    let mutex = common::via(proxy.addr, &common::unique("hub-none"), false);
    let err = mutex.acquire("job", secs(15)).await.unwrap_err();
    assert_eq!(err.error_code(), Some("InvalidHeaderValue"), "{err}");
    assert_eq!(proxy.seen().len(), API_VERSIONS.len());
    let err = mutex.acquire("job", secs(15)).await.unwrap_err();
    assert_eq!(err.error_code(), Some("InvalidHeaderValue"), "{err}");
    assert_eq!(
        proxy.seen().len(),
        API_VERSIONS.len() + 1,
        "settled: no more negotiation"
    );
}

#[tokio::test]
async fn other_invalid_header_values_do_not_step_down() {
    // 400 InvalidHeaderValue about another header (as Azure answers a bad lease duration):
    // not a version problem, so the version stays.
    let proxy = HttpProxy::start(common::azurite_addr());
    proxy.add(
        Match::LeaseAction("acquire"),
        Action::Respond(400, "InvalidHeaderValue"),
        Some(1),
    );
    let mutex = common::via(proxy.addr, &common::unique("hub-other"), false);
    let err = mutex.acquire("job", secs(15)).await.unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    assert_eq!(mutex.client().api_version(), DEFAULT_API_VERSION);
    mutex.acquire("job", secs(15)).await.unwrap();
    assert_eq!(mutex.client().api_version(), DEFAULT_API_VERSION);
}

#[test]
fn bad_pinned_versions_are_refused_before_the_network() {
    let config = common::config_via("127.0.0.1:9".parse().unwrap());
    for (v, why) in [
        ("2017-11-9", "a date"),
        ("latest", "a date"),
        ("2017-11-09\r\nx: y", "a date"),
        ("2012-02-12", "older than 2015-02-21"),
    ] {
        let options = ClientOptions {
            api_version: Some(v.into()),
            ..Default::default()
        };
        let err = AzureMutex::builder(config.clone(), "ccc")
            .client_options(options)
            .build()
            .unwrap_err();
        assert!(
            matches!(&err, InvalidInput::Option { option: "api_version", why: w } if w.contains(why)),
            "{v}: {err}"
        );
    }
    // Bearer tokens need 2017-11-09 or later.
    struct NoToken;
    impl azmutex::TokenProvider for NoToken {
        fn token(&self) -> azmutex::TokenFuture<'_> {
            Box::pin(async { Err("unused".into()) })
        }
    }
    let bearer = azmutex::StorageConfig::new(
        "https://acct.blob.core.windows.net",
        azmutex::Credential::Bearer(Arc::new(NoToken)),
    )
    .unwrap();
    let options = ClientOptions {
        api_version: Some("2017-04-17".into()),
        ..Default::default()
    };
    let err = AzureMutex::builder(bearer, "ccc")
        .client_options(options)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("bearer"), "{err}");
}

// --- the CLI ---

#[test]
fn cli_run_and_status_work_behind_a_stack_hub_with_one_extra_request_each() {
    let hub = stack_hub();
    let container = common::unique("hub-cli");
    let conn = cli::connection_via(hub.addr);
    let out = cli::azmutex_with(&container, &conn)
        .args(["run", "--lease", "15", "job", "--", "sh", "-c", "sleep 6; echo ran"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{:#?}",
        String::from_utf8_lossy(&out.stderr),
        hub.seen()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ran");
    assert_eq!(refused(&hub), 1, "{:#?}", hub.seen());
    let renewals = hub
        .seen()
        .iter()
        .filter(|s| s.lease_action.as_deref() == Some("renew"))
        .count();
    assert!(renewals >= 1, "the run renewed at the fallback version");

    let out = cli::azmutex_with(&container, &conn)
        .args(["status", "job"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(refused(&hub), 2, "one per process (each is a new client)");
}

#[test]
fn cli_api_version_pins_the_version() {
    let hub = stack_hub();
    let container = common::unique("hub-pin");
    let conn = cli::connection_via(hub.addr);
    // AZMUTEX_API_VERSION=2017-11-09: no refusal at all.
    let out = cli::azmutex_with(&container, &conn)
        .env("AZMUTEX_API_VERSION", FALLBACK_API_VERSION)
        .args(["status", "job"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(refused(&hub), 0);
    // --api-version of a version the endpoint refuses: the refusal, named, not negotiated away.
    let out = cli::azmutex_with(&container, &conn)
        .args(["--api-version", DEFAULT_API_VERSION, "status", "job"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("InvalidHeaderValue"), "{stderr}");
    assert_eq!(refused(&hub), 1);
    // A malformed version: a configuration error before the network, naming the flag.
    let before = hub.seen().len();
    let out = cli::azmutex_with(&container, &conn)
        .args(["--api-version", "2017-11-9", "status", "job"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("--api-version"), "{stderr}");
    assert_eq!(hub.seen().len(), before);
}
