//! Signed requests against a real Azurite: SharedKey, SAS, and refusals.

mod common;

use std::time::{Duration, Instant};

use azmutex::rest::{BlobClient, ClientOptions, RestRequest};
use azmutex::{AccessToken, Credential, Error, StorageConfig, TokenFuture, TokenProvider};
use reqwest::Method;

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

async fn create_put_head(client: &BlobClient, container: &str) {
    let create = RestRequest::new("create-container", Method::PUT, container, None).query("restype", "container");
    let resp = client.send(&create, deadline()).await.unwrap();
    assert_eq!(resp.status, 201, "{:?}", resp.error());

    let mut put = RestRequest::new("put", Method::PUT, container, Some("dir/hello world.txt"))
        .header("x-ms-blob-type", "BlockBlob")
        .header("content-type", "text/plain")
        .header("x-ms-meta-color", "blue");
    put.body = b"hello world".to_vec();
    let resp = client.send(&put, deadline()).await.unwrap();
    assert_eq!(resp.status, 201, "{:?}", resp.error());

    let head = RestRequest::new("head", Method::HEAD, container, Some("dir/hello world.txt"));
    let resp = client.send(&head, deadline()).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-length"), Some("11"));
    assert_eq!(resp.header("x-ms-meta-color"), Some("blue"));
    assert_eq!(resp.header("x-ms-lease-state"), Some("available"));
}

#[tokio::test]
async fn shared_key_requests_are_accepted() {
    let client = BlobClient::new(&common::config(), ClientOptions::default()).unwrap();
    create_put_head(&client, &common::unique("sk")).await;
}

#[tokio::test]
async fn sas_requests_are_accepted() {
    let cs = format!(
        "BlobEndpoint={};SharedAccessSignature={}",
        common::service().endpoint,
        common::sas("account_sas_rwdlac")
    );
    let cfg = StorageConfig::parse_connection_string(&cs).unwrap();
    assert!(matches!(cfg.credential, Credential::Sas(_)));
    let client = BlobClient::new(&cfg, ClientOptions::default()).unwrap();
    create_put_head(&client, &common::unique("sas")).await;
}

#[tokio::test]
async fn wrong_key_is_a_typed_auth_error_without_retries() {
    let wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ==";
    let cs = format!(
        "AccountName=devstoreaccount1;AccountKey={wrong};BlobEndpoint={}",
        common::service().endpoint
    );
    let client = BlobClient::new(
        &StorageConfig::parse_connection_string(&cs).unwrap(),
        ClientOptions::default(),
    )
    .unwrap();
    let req =
        RestRequest::new("create-container", Method::PUT, &common::unique("wk"), None).query("restype", "container");
    let err = client.send(&req, deadline()).await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    assert_eq!(err.status(), Some(403));
    assert_eq!(err.error_code(), Some("AuthorizationFailure"));
    assert!(err.request_id().is_some());
    assert_eq!(client.requests_sent(), 1, "a refused signature must not be retried");
    let text = format!("{err} {err:?}");
    assert!(!text.contains(wrong) && !text.contains("d3Jvbmc"), "{text}");
}

#[tokio::test]
async fn read_only_sas_cannot_write() {
    let cs = format!(
        "BlobEndpoint={};SharedAccessSignature={}",
        common::service().endpoint,
        common::sas("account_sas_read_only")
    );
    let client = BlobClient::new(
        &StorageConfig::parse_connection_string(&cs).unwrap(),
        ClientOptions::default(),
    )
    .unwrap();
    let req =
        RestRequest::new("create-container", Method::PUT, &common::unique("ro"), None).query("restype", "container");
    let err = client.send(&req, deadline()).await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    assert_eq!(err.status(), Some(403));
    let text = format!("{err} {err:?}");
    let sig = common::sas("account_sas_read_only");
    let sig = sig.split("sig=").nth(1).unwrap();
    assert!(!text.contains(sig), "{text}");
}

struct FailingProvider;
impl TokenProvider for FailingProvider {
    fn token(&self) -> TokenFuture<'_> {
        Box::pin(async { Err::<AccessToken, _>("no managed identity here".into()) })
    }
}

#[tokio::test]
async fn failing_token_provider_is_an_auth_error() {
    let cfg = StorageConfig::new(
        &common::service().endpoint,
        Credential::Bearer(std::sync::Arc::new(FailingProvider)),
    )
    .unwrap();
    let client = BlobClient::new(&cfg, ClientOptions::default()).unwrap();
    let req = RestRequest::new("head", Method::HEAD, "c", Some("b"));
    let err = client.send(&req, deadline()).await.unwrap_err();
    assert!(matches!(err, Error::Auth { service: None, .. }), "{err:?}");
    assert!(err.to_string().contains("no managed identity here"));
}

#[tokio::test]
async fn unreachable_endpoint_gives_up_at_the_deadline() {
    // A port nobody listens on: connection refused, retried until the call deadline.
    // Port 1: outside the ephemeral range, so no test server can be given it meanwhile.
    let port = 1;
    let cs = format!(
        "AccountName=devstoreaccount1;AccountKey={};BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1",
        common::DEV_KEY
    );
    let client = BlobClient::new(
        &StorageConfig::parse_connection_string(&cs).unwrap(),
        ClientOptions::default(),
    )
    .unwrap();
    let req = RestRequest::new("head", Method::HEAD, "c", Some("b"));
    let err = client
        .send(&req, Instant::now() + Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Transient { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(client.requests_sent() > 1, "connection errors are retried");
}

/// Issue 17: a bearer credential over plain `http://` is refused by `BlobClient::new` too, for a
/// `StorageConfig` made as a struct literal (past the constructors' checks); loopback is fine.
#[test]
fn a_struct_literal_config_cannot_send_a_bearer_token_over_http() {
    let literal = |endpoint: &str| StorageConfig {
        endpoint: endpoint.parse().unwrap(),
        credential: Credential::Bearer(std::sync::Arc::new(FailingProvider)),
        proxy: None,
    };
    let err = BlobClient::new(&literal("http://acct.blob.core.windows.net"), ClientOptions::default()).unwrap_err();
    assert!(err.to_string().contains("never sent over plain `http://`"), "{err}");
    assert!(BlobClient::new(&literal("https://acct.blob.core.windows.net"), ClientOptions::default()).is_ok());
    assert!(BlobClient::new(
        &literal("http://127.0.0.1:10000/devstoreaccount1"),
        ClientOptions::default()
    )
    .is_ok());
}
