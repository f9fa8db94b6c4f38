//! Entra ID credentials end to end: an HTTPS Azurite with `--oauth basic` (it checks each
//! token's audience, issuer and times) and a local token endpoint speaking the documented
//! protocols (tests/common/token_server.rs). Each kind acquires, renews and releases through
//! `Locker`; tokens are refreshed ahead of expiry, once for all leases; a token endpoint that
//! hangs or fails does not lose a lock while its token is valid; the chain fails fast.
#![cfg(feature = "entra")]

mod common;
#[path = "common/token_server.rs"]
mod token_server;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use azmutex::auth::entra::{EntraBuilder, EntraCredential, UserAssigned};
use azmutex::{
    AccessToken, AzureMutex, ClientOptions, Credential, Error, Locker, LockerOptions, LostReason, StorageConfig,
    TokenFuture, TokenProvider,
};
use token_server::{Mode, TokenServer, CLIENT_ID, IDENTITY_HEADER, SECRET, TENANT};

fn azurite() -> &'static (token_server::Pki, common::Service) {
    token_server::https_oauth_azurite()
}

fn trusting() -> ClientOptions {
    let mut o = ClientOptions::default();
    o.ca_certificates_pem.push(azurite().0.ca_pem.clone().into_bytes());
    o.retry.call_timeout = Duration::from_secs(10);
    o
}

/// The token endpoints: Entra over HTTPS (same private CA), IMDS/App Service over HTTP.
struct Endpoints {
    entra: Arc<TokenServer>,
    local: Arc<TokenServer>,
}

async fn endpoints(lifetime: u64) -> Endpoints {
    let pki = &azurite().0;
    Endpoints {
        entra: TokenServer::start(Some((&pki.cert_pem, &pki.key_pem)), lifetime).await,
        local: TokenServer::start(None, lifetime).await,
    }
}

/// A builder reading only `vars` (never this process's environment).
fn builder(vars: &[(&str, String)]) -> EntraBuilder {
    let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    EntraCredential::builder()
        .client_options(&trusting())
        .vars(move |name| map.get(name).cloned())
}

fn config(credential: Arc<dyn TokenProvider>) -> StorageConfig {
    StorageConfig::new(&azurite().1.endpoint, Credential::Bearer(credential)).unwrap()
}

fn mutex(credential: Arc<dyn TokenProvider>, container: &str) -> AzureMutex {
    AzureMutex::builder(config(credential), container)
        .client_options(trusting())
        .build()
        .unwrap()
}

/// Wraps a provider and checks every token it hands to a request: the token's `exp` must be
/// in the future (it is sent at once). Counts violations and hand-outs.
struct Checking {
    inner: Arc<dyn TokenProvider>,
    handed: AtomicU64,
    expired: AtomicU64,
    least_left: AtomicU64,
}

impl Checking {
    fn new(inner: Arc<dyn TokenProvider>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            handed: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            least_left: AtomicU64::new(u64::MAX),
        })
    }
}

impl TokenProvider for Checking {
    fn token(&self) -> TokenFuture<'_> {
        Box::pin(async move {
            let token: AccessToken = self.inner.token().await?;
            let exp = token_server::jwt_exp(&token.0).expect("a token we minted");
            let now = token_server::now();
            self.handed.fetch_add(1, Ordering::Relaxed);
            if exp <= now + 1 {
                self.expired.fetch_add(1, Ordering::Relaxed);
            }
            self.least_left.fetch_min(exp.saturating_sub(now), Ordering::Relaxed);
            Ok(token)
        })
    }
}

fn entra_vars(e: &Endpoints) -> Vec<(&'static str, String)> {
    vec![
        ("AZURE_TENANT_ID", TENANT.to_string()),
        ("AZURE_CLIENT_ID", CLIENT_ID.to_string()),
        ("AZURE_AUTHORITY_HOST", e.entra.base.clone()),
    ]
}

/// One acquire and release with `credential`.
async fn acquire_release(credential: Arc<dyn TokenProvider>) {
    let m = mutex(credential, &common::unique("entra-once"));
    m.release(&m.acquire("job", common::secs(15)).await.unwrap())
        .await
        .unwrap();
}

/// The query of the last GET the local (managed identity) endpoint answered.
fn last_query(server: &TokenServer) -> String {
    server.queries.lock().unwrap().last().cloned().unwrap_or_default()
}

/// Acquire, renew (twice, in the background) and release through `Locker`.
async fn lock_renew_release(credential: Arc<dyn TokenProvider>, hold: Duration) {
    let container = common::unique("entra");
    let m = mutex(credential, &container);
    let options = LockerOptions {
        lease: common::secs(15),
        renew_every: Some(Duration::from_millis(700)),
        ..LockerOptions::default()
    };
    let locker = Locker::with_options(m.clone(), "job", options).unwrap();
    let mut guard = locker.lock_timeout(Duration::from_secs(20)).await.unwrap();
    tokio::time::sleep(hold).await;
    assert!(guard.is_held(), "{:?}", guard.lost_reason());
    guard.release().await.unwrap();
    // And once more with AzureMutex's own calls.
    let mut lease = m.acquire("job", common::secs(15)).await.unwrap();
    m.renew(&mut lease).await.unwrap();
    m.release(&lease).await.unwrap();
}

#[tokio::test]
async fn client_secret_acquires_renews_and_releases() {
    let e = endpoints(3600).await;
    let mut vars = entra_vars(&e);
    vars.push(("AZURE_CLIENT_SECRET", SECRET.to_string()));
    let b = builder(&vars);
    assert!(!format!("{b:?}").contains(SECRET), "{b:?}");
    let cred = b.client_secret_credential().unwrap();
    lock_renew_release(Arc::new(cred.clone()), Duration::from_secs(2)).await;
    assert_eq!(e.entra.requests(), 1, "one token for every request");
    assert_eq!(cred.token_requests(), 1);
}

#[tokio::test]
async fn workload_identity_rereads_the_rotated_token_file() {
    // 8 s tokens: refreshed after 4 s, so the hold below sees a second exchange.
    let e = endpoints(8).await;
    let dir = std::env::temp_dir().join(common::unique("azmutex-wi"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, "federated-assertion-1\n").unwrap();
    let mut vars = entra_vars(&e);
    vars.push(("AZURE_FEDERATED_TOKEN_FILE", file.display().to_string()));
    let cred = builder(&vars).workload_identity().unwrap();
    let checking = Checking::new(Arc::new(cred.clone()));
    let rotate = async {
        // Rotate once the first exchange is done: the next exchange must use the new file.
        while e.entra.requests() == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        *e.entra.assertion.lock().unwrap() = "federated-assertion-2".into();
        std::fs::write(&file, "federated-assertion-2").unwrap();
    };
    tokio::join!(lock_renew_release(checking.clone(), Duration::from_secs(9)), rotate);
    assert!(e.entra.requests() >= 2, "{}", e.entra.requests());
    assert_eq!(checking.expired.load(Ordering::Relaxed), 0);
}

/// A federated token file that is a FIFO (or a device) is refused, never opened: the read
/// happens on a runtime worker, and on main 5136815 `open` blocked it for ever (no writer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_as_the_federated_token_file_is_refused_not_waited_on() {
    let e = endpoints(3600).await;
    let dir = std::env::temp_dir().join(common::unique("azmutex-wi-fifo"));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("token");
    let path = std::ffi::CString::new(fifo.display().to_string()).unwrap();
    // SAFETY: mkfifo with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let mut vars = entra_vars(&e);
    vars.push(("AZURE_FEDERATED_TOKEN_FILE", fifo.display().to_string()));
    let cred = builder(&vars).workload_identity().unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), cred.token()).await;
    let err = match got {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(_)) => panic!("a token from a FIFO"),
        Err(_) => panic!("reading a FIFO as the federated token file hung"),
    };
    assert!(err.contains("not a regular file"), "{err}");
    assert_eq!(e.entra.requests(), 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn managed_identity_on_a_vm_user_assigned_three_ways() {
    let e = endpoints(3600).await;
    let imds = format!("{}/metadata/identity/oauth2/token", e.local.base);
    // System-assigned through AZURE_POD_IDENTITY_AUTHORITY_HOST (the endpoint override).
    let cred = builder(&[("AZURE_POD_IDENTITY_AUTHORITY_HOST", e.local.base.clone())])
        .managed_identity()
        .unwrap();
    lock_renew_release(Arc::new(cred), Duration::from_secs(2)).await;
    for (id, param) in [
        (UserAssigned::ClientId("cid".into()), "client_id=cid"),
        (UserAssigned::ObjectId("oid".into()), "object_id=oid"),
        (
            UserAssigned::ResourceId("/subscriptions/s/rg/id".into()),
            "msi_res_id=%2Fsubscriptions%2Fs%2Frg%2Fid",
        ),
    ] {
        let cred = builder(&[])
            .imds_endpoint(&imds)
            .user_assigned(id)
            .managed_identity()
            .unwrap();
        acquire_release(Arc::new(cred)).await;
        let last = last_query(&e.local);
        assert!(last.contains(param), "{last}");
    }
    // AZURE_CLIENT_ID selects a user-assigned identity by client id, as the SDKs do.
    let cred = builder(&[("AZURE_CLIENT_ID", "from-env".into())])
        .imds_endpoint(&imds)
        .managed_identity()
        .unwrap();
    acquire_release(Arc::new(cred)).await;
    assert!(last_query(&e.local).contains("client_id=from-env"));
}

#[tokio::test]
async fn managed_identity_on_app_service() {
    let e = endpoints(3600).await;
    let vars = [
        ("IDENTITY_ENDPOINT", format!("{}/msi/token", e.local.base)),
        ("IDENTITY_HEADER", IDENTITY_HEADER.to_string()),
    ];
    let cred = builder(&vars).managed_identity().unwrap();
    assert!(!format!("{cred:?}").contains(IDENTITY_HEADER));
    lock_renew_release(Arc::new(cred), Duration::from_secs(2)).await;
    let cred = builder(&vars)
        .user_assigned(UserAssigned::ObjectId("oid".into()))
        .managed_identity()
        .unwrap();
    acquire_release(Arc::new(cred)).await;
    assert!(last_query(&e.local).contains("principal_id=oid"));
}

#[tokio::test]
async fn azure_cli_both_output_forms_and_signed_out() {
    for newer in [true, false] {
        let dir = std::env::temp_dir().join(common::unique("azmutex-az"));
        token_server::fake_az(&dir, 3600, newer, true);
        let cred = builder(&[("PATH", dir.display().to_string())]).azure_cli().unwrap();
        lock_renew_release(Arc::new(cred), Duration::from_secs(2)).await;
        let calls = std::fs::read_to_string(dir.join("az.calls")).unwrap();
        assert_eq!(calls.lines().count(), 1, "newer={newer}");
    }
    let dir = std::env::temp_dir().join(common::unique("azmutex-az"));
    token_server::fake_az(&dir, 3600, true, false);
    let cred = builder(&[("PATH", dir.display().to_string())]).azure_cli().unwrap();
    let err = mutex(Arc::new(cred), &common::unique("entra-az"))
        .acquire("job", common::secs(15))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    assert!(err.to_string().contains("az login"), "{err}");
    // No `az` at all: not configured, before the network.
    let err = builder(&[("PATH", "/nonexistent".into())]).azure_cli().unwrap_err();
    assert!(err.to_string().contains("not on PATH"), "{err}");
}

#[tokio::test]
async fn refusals_are_auth_errors_at_once_and_secrets_never_show() {
    let e = endpoints(3600).await;
    let mut vars = entra_vars(&e);
    vars.push(("AZURE_CLIENT_SECRET", "wrong-secret-NEVER-printed".into()));
    let cred = builder(&vars).client_secret_credential().unwrap();
    let started = Instant::now();
    let err = mutex(Arc::new(cred), &common::unique("entra-no"))
        .acquire("job", common::secs(15))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    let text = format!("{err} {err:?}");
    assert!(
        text.contains("AADSTS7000215") && text.contains("invalid_client"),
        "{text}"
    );
    assert!(!text.contains("NEVER-printed"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "not retried until the deadline"
    );
    // Missing configuration is named before the network.
    let err = builder(&entra_vars(&e)).client_secret_credential().unwrap_err();
    assert!(err.to_string().contains("AZURE_CLIENT_SECRET"), "{err}");
    let err = builder(&[("AZURE_CLIENT_SECRET", " ".into())])
        .client_secret_credential()
        .unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
}

#[tokio::test]
async fn a_token_endpoint_with_an_untrusted_certificate_is_a_tls_error() {
    let e = endpoints(3600).await;
    let mut vars = entra_vars(&e);
    vars.push(("AZURE_CLIENT_SECRET", SECRET.to_string()));
    // System roots only for the token request (the storage client trusts the CA).
    let cred = builder(&vars)
        .client_options(&ClientOptions::default())
        .client_secret_credential()
        .unwrap();
    let err = mutex(Arc::new(cred), &common::unique("entra-tls"))
        .acquire("job", common::secs(15))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Tls {
                problem: azmutex::error::TlsProblem::UnknownIssuer
            }
        ),
        "{err:?}"
    );
}

/// Holds a lock with 40 s tokens, then the token endpoint misbehaves (`mode`): the lock stays
/// held while the current token is usable (it is handed out until 10 s before expiry), then is
/// lost by the usual deadline rule (`Expired`, not an authentication refusal), and not late:
/// when loss is declared, the service still holds the lease.
async fn misbehaving_endpoint_keeps_the_lock_while_the_token_is_valid(mode: Mode) {
    let e = endpoints(40).await;
    let mut vars = entra_vars(&e);
    vars.push(("AZURE_CLIENT_SECRET", SECRET.to_string()));
    let cred = builder(&vars).client_secret_credential().unwrap();
    let checking = Checking::new(Arc::new(cred));
    let container = common::unique("entra-bad");
    // A wider safety margin than the default leaves time for the check below on a busy machine.
    let options = LockerOptions {
        lease: common::secs(15),
        safety_margin: Duration::from_secs(4),
        ..LockerOptions::default()
    };
    let locker = Locker::with_options(mutex(checking.clone(), &container), "job", options).unwrap();
    let guard = locker.lock_timeout(Duration::from_secs(20)).await.unwrap();
    let got_token = Instant::now();
    e.entra.set_mode(mode);
    // Refreshes start at 20 s and fail; the token is usable until 30 s.
    tokio::time::sleep(Duration::from_secs(27).saturating_sub(got_token.elapsed())).await;
    assert!(
        guard.is_held(),
        "lost while the token was valid: {:?}",
        guard.lost_reason()
    );
    assert!(e.entra.requests() >= 2, "refreshes were attempted");
    let reason = tokio::time::timeout(Duration::from_secs(120), guard.lost())
        .await
        .expect("loss declared");
    assert_eq!(reason, LostReason::Expired);
    // Not late: the service still holds the lease when we declare it lost.
    let key = AzureMutex::builder(
        StorageConfig::parse_connection_string(&azurite().1.connection_string).unwrap(),
        &container,
    )
    .client_options(trusting())
    .build()
    .unwrap();
    let err = key.acquire("job", common::secs(15)).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    assert_eq!(checking.expired.load(Ordering::Relaxed), 0, "an expired token was sent");
}

#[tokio::test]
async fn hanging_token_endpoint_does_not_lose_a_valid_lock() {
    misbehaving_endpoint_keeps_the_lock_while_the_token_is_valid(Mode::Hang).await;
}

#[tokio::test]
async fn failing_token_endpoint_does_not_lose_a_valid_lock() {
    misbehaving_endpoint_keeps_the_lock_while_the_token_is_valid(Mode::Fail).await;
}

#[tokio::test]
async fn chain_with_nothing_configured_fails_fast_listing_every_kind() {
    // An instance metadata endpoint that accepts connections and never answers, and one that
    // refuses them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // Port 1: nothing listens there, and unlike a port freed by dropping a listener, no test
    // server or Azurite can be given it meanwhile (it is outside the ephemeral range).
    let refusing = 1;
    for port in [silent.local_addr().unwrap().port(), refusing] {
        let cred = builder(&[("PATH", "/nonexistent".into())])
            .imds_endpoint(format!("http://127.0.0.1:{port}/metadata/identity/oauth2/token"))
            .chain()
            .unwrap();
        let started = Instant::now();
        let err = mutex(Arc::new(cred), &common::unique("entra-chain"))
            .acquire("job", common::secs(15))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
        assert!(matches!(err, Error::Auth { .. }), "{err:?}");
        let text = err.to_string();
        for kind in ["client secret", "workload identity", "managed identity", "Azure CLI"] {
            assert!(text.contains(kind), "{kind} missing from: {text}");
        }
        assert!(
            text.contains("AZURE_CLIENT_SECRET") && text.contains("AZURE_FEDERATED_TOKEN_FILE"),
            "{text}"
        );
        assert!(
            text.contains("no instance metadata endpoint") && text.contains("not on PATH"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn chain_uses_the_first_configured_kind_and_sticks_to_it() {
    let e = endpoints(3600).await;
    let mut vars = entra_vars(&e);
    vars.push(("AZURE_CLIENT_SECRET", SECRET.to_string()));
    vars.push(("AZURE_POD_IDENTITY_AUTHORITY_HOST", e.local.base.clone()));
    let cred = builder(&vars).chain().unwrap();
    lock_renew_release(Arc::new(cred), Duration::from_secs(1)).await;
    assert_eq!(e.entra.requests(), 1);
    assert_eq!(e.local.requests(), 0, "managed identity not asked");
    // With the secret wrong, the configured kind's refusal is the chain's answer: it does not
    // go on to the managed identity (as the SDKs' chain does not: that would lock as another
    // identity).
    let mut vars = entra_vars(&e);
    vars.push(("AZURE_CLIENT_SECRET", "wrong".into()));
    vars.push(("AZURE_POD_IDENTITY_AUTHORITY_HOST", e.local.base.clone()));
    let cred = builder(&vars).chain().unwrap();
    let m = mutex(Arc::new(cred), &common::unique("entra-wrong"));
    let err = m.acquire("job", common::secs(15)).await.unwrap_err();
    assert!(matches!(err, azmutex::Error::Auth { .. }), "{err:?}");
    assert!(err.to_string().contains("AADSTS7000215"), "{err}");
    assert!(!err.to_string().contains("wrong"), "the secret is not quoted: {err}");
    assert_eq!(e.local.requests(), 0, "managed identity not asked");
}

/// 90 s tokens, 1,000 leases held for 5 minutes by one client: no request is sent with an
/// expired token (checked on every hand-out, and Azurite would answer 401), and the token
/// endpoint sees one request per refresh, not one per lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_refresh_ahead_of_expiry_once_for_a_thousand_leases() {
    const LEASES: usize = 1000;
    const HOLD: Duration = Duration::from_secs(300);
    let e = endpoints(90).await;
    let mut vars = entra_vars(&e);
    vars.push(("AZURE_CLIENT_SECRET", SECRET.to_string()));
    let cred = builder(&vars).client_secret_credential().unwrap();
    let checking = Checking::new(Arc::new(cred.clone()));
    let m = mutex(checking.clone(), &common::unique("entra-many"));
    let options = LockerOptions {
        lease: common::secs(60),
        ..LockerOptions::default()
    };
    let started = Instant::now();
    let mut guards = Vec::new();
    for chunk in 0..LEASES / 100 {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..100 {
            let locker = Locker::with_options(m.clone(), format!("lock-{}", chunk * 100 + i), options.clone()).unwrap();
            set.spawn(async move { locker.lock_timeout(Duration::from_secs(60)).await });
        }
        while let Some(r) = set.join_next().await {
            guards.push(r.unwrap().unwrap());
        }
    }
    while started.elapsed() < HOLD {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let lost = guards.iter().filter(|g| !g.is_held()).count();
        assert_eq!(
            lost,
            0,
            "leases lost: {:?}",
            guards.iter().find_map(|g| g.lost_reason())
        );
    }
    let elapsed = started.elapsed().as_secs();
    let mut set = tokio::task::JoinSet::new();
    for g in guards {
        set.spawn(async move {
            let mut g = g;
            g.release().await
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap().unwrap();
    }
    let handed = checking.handed.load(Ordering::Relaxed);
    let requests = e.entra.requests();
    eprintln!(
        "{handed} requests authorized, {requests} token requests in {elapsed} s, least life left at hand-out {} s",
        checking.least_left.load(Ordering::Relaxed)
    );
    assert_eq!(checking.expired.load(Ordering::Relaxed), 0, "an expired token was sent");
    assert!(handed > 10 * LEASES as u64, "renewals happened: {handed}");
    // One refresh per half-life (45 s), plus the first token and a spare.
    assert!(requests <= elapsed / 45 + 2, "{requests} token requests in {elapsed} s");
    assert!(requests >= 5, "tokens were refreshed: {requests}");
    assert_eq!(cred.token_requests(), requests);
}

/// A provider that never answers, and one that fails with `TransientTokenError`: each request
/// is bounded by the call's deadline and retried, ending as a transient error (the old code
/// waited on the provider without bound, or gave up at once as an authentication error).
#[tokio::test]
async fn token_waits_are_bounded_by_the_call_deadline() {
    struct Never;
    impl TokenProvider for Never {
        fn token(&self) -> TokenFuture<'_> {
            Box::pin(std::future::pending())
        }
    }
    struct Flaky;
    impl TokenProvider for Flaky {
        fn token(&self) -> TokenFuture<'_> {
            Box::pin(async { Err(azmutex::TransientTokenError("endpoint busy".into()).into()) })
        }
    }
    for provider in [Arc::new(Never) as Arc<dyn TokenProvider>, Arc::new(Flaky)] {
        let mut options = trusting();
        options.retry.call_timeout = Duration::from_secs(3);
        options.request_timeout = Duration::from_secs(1);
        let m = AzureMutex::builder(config(provider), common::unique("entra-never"))
            .client_options(options)
            .build()
            .unwrap();
        let started = Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(30), m.acquire("job", common::secs(15)))
            .await
            .expect("bounded")
            .unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    }
}

/// The client's proxy carries token requests to the Entra endpoint (CONNECT), while the
/// managed identity endpoints, local to the machine, are reached directly.
#[tokio::test]
async fn token_requests_use_the_proxy_except_for_managed_identity() {
    let e = endpoints(3600).await;
    let proxy = common::forward_proxy::ForwardProxy::start();
    let mut options = trusting();
    options.proxy = azmutex::rest::ProxyConfig::Explicit(azmutex::rest::Proxies::all(&proxy.url(None)).unwrap());
    let mut vars = entra_vars(&e);
    vars.push(("AZURE_CLIENT_SECRET", SECRET.to_string()));
    let cred = builder(&vars)
        .client_options(&options)
        .client_secret_credential()
        .unwrap();
    let m = AzureMutex::builder(config(Arc::new(cred)), common::unique("entra-proxy"))
        .client_options(options.clone())
        .build()
        .unwrap();
    m.release(&m.acquire("job", common::secs(15)).await.unwrap())
        .await
        .unwrap();
    let entra_target = format!("localhost:{}", e.entra.port);
    assert!(
        proxy
            .seen()
            .iter()
            .any(|s| s.method == "CONNECT" && s.target == entra_target),
        "{:?}",
        proxy.seen()
    );
    let cred = builder(&[("AZURE_POD_IDENTITY_AUTHORITY_HOST", e.local.base.clone())])
        .client_options(&options)
        .managed_identity()
        .unwrap();
    let m = AzureMutex::builder(config(Arc::new(cred)), common::unique("entra-proxy"))
        .client_options(options)
        .build()
        .unwrap();
    m.release(&m.acquire("job", common::secs(15)).await.unwrap())
        .await
        .unwrap();
    assert_eq!(e.local.requests(), 1);
    let local = format!("127.0.0.1:{}", e.local.port);
    assert!(
        !proxy.seen().iter().any(|s| s.target.contains(&local)),
        "{:?}",
        proxy.seen()
    );
}

/// A hostile metadata endpoint: an endless body, deep nesting, a number of 60,000 digits, a
/// token with a newline. Each is refused with a transient error naming the problem, memory
/// bounded by the 64 KiB cap, never a panic or a hang; nothing of the body is quoted.
#[tokio::test]
async fn hostile_token_answers_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deep = format!("{{\"access_token\":\"x\",\"a\":{}", "[".repeat(60_000));
    let huge = format!(
        "{{\"access_token\":\"SECRETTOKEN\",\"expires_in\":{}}}",
        "9".repeat(60_000)
    );
    let newline = r#"{"access_token":"SECRET\nTOKEN","expires_in":3600}"#.to_string();
    for (body, endless, expect) in [
        (String::new(), true, "longer than 65536 bytes"),
        (deep, false, "unreadable answer"),
        (huge, false, "no readable `expires_in`"),
        (newline, false, "not printable ASCII"),
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let body = body.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    if endless {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000000\r\n\r\n")
                            .await;
                        let chunk = vec![b'['; 1 << 20];
                        while s.write_all(&chunk).await.is_ok() {}
                    } else {
                        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                        let _ = s.write_all(head.as_bytes()).await;
                        let _ = s.write_all(body.as_bytes()).await;
                    }
                });
            }
        });
        let cred = builder(&[])
            .imds_endpoint(format!("http://127.0.0.1:{port}/metadata/identity/oauth2/token"))
            .managed_identity()
            .unwrap();
        let err = tokio::time::timeout(Duration::from_secs(30), cred.token())
            .await
            .expect("bounded")
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains(expect), "{expect}: {text}");
        assert!(!text.contains("SECRET") && text.len() < 1000, "{text}");
    }
}
