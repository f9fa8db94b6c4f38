//! HTTPS to an endpoint whose certificate comes from a private CA (as on Azure Stack or behind
//! a corporate proxy): refused by default, accepted once the CA is added. Over the same HTTPS
//! Azurite (started with `--oauth basic`), bearer tokens from a caller's `TokenProvider`.

mod common;
#[path = "common/token_server.rs"]
mod token_server;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use azmutex::{
    AccessToken, AzureMutex, ClientOptions, Credential, Error, InvalidInput, LeaseDuration, StorageConfig, TokenFuture,
    TokenProvider,
};
use base64::Engine as _;

use token_server::{https_oauth_azurite as https_azurite, Pki};

fn trusting_options(pki: &Pki) -> ClientOptions {
    let mut options = ClientOptions::default();
    options.ca_certificates_pem.push(pki.ca_pem.clone().into_bytes());
    options
}

#[tokio::test]
async fn private_ca_is_refused_by_default_and_accepted_when_added() {
    let (pki, azurite) = https_azurite();
    assert!(azurite.endpoint.starts_with("https://localhost:"));
    let config = StorageConfig::parse_connection_string(&azurite.connection_string).unwrap();
    let container = common::unique("tls");
    let duration = LeaseDuration::seconds(15).unwrap();

    // System roots only: the TLS handshake fails, named, at once (not retried as an outage).
    let mut options = ClientOptions::default();
    options.retry.call_timeout = std::time::Duration::from_secs(2);
    let strict = AzureMutex::builder(config.clone(), &container)
        .client_options(options.clone())
        .build()
        .unwrap();
    let err = strict.acquire("job", duration).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Tls {
                problem: azmutex::error::TlsProblem::UnknownIssuer
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");

    // With the private CA: works.
    let m = AzureMutex::builder(config.clone(), &container)
        .client_options(trusting_options(pki))
        .build()
        .unwrap();
    let lease = m.acquire("job", duration).await.unwrap();
    m.release(&lease).await.unwrap();

    // A file that is not PEM is refused before the network.
    let mut bad = options;
    bad.ca_certificates_pem.push(b"not a certificate".to_vec());
    let err = AzureMutex::builder(config, &container)
        .client_options(bad)
        .build()
        .unwrap_err();
    assert!(matches!(err, InvalidInput::CaCertificate(_)), "{err:?}");
}

/// Hands out an unsigned JWT with the claims Azurite's basic OAuth checks (audience, issuer,
/// lifetime), counting calls. Azure would check the signature too: this tests our plumbing.
struct FakeEntra {
    calls: AtomicU32,
}

impl TokenProvider for FakeEntra {
    fn token(&self) -> TokenFuture<'_> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let header = b64.encode(r#"{"alg":"RS256","typ":"JWT"}"#);
            let claims = format!(
                r#"{{"aud":"https://storage.azure.com","iss":"https://sts.windows.net/ab1f708d-50f6-404c-a006-d71b2ac7a606/","iat":{0},"nbf":{0},"exp":{1},"oid":"00000000-0000-0000-0000-000000000001"}}"#,
                now - 60,
                now + 3600,
            );
            Ok(AccessToken(format!(
                "{header}.{}.{}",
                b64.encode(claims),
                b64.encode("not-a-signature")
            )))
        })
    }
}

#[tokio::test]
async fn bearer_tokens_from_a_token_provider() {
    let (pki, azurite) = https_azurite();
    let provider = Arc::new(FakeEntra {
        calls: AtomicU32::new(0),
    });
    let config = StorageConfig::new(&azurite.endpoint, Credential::Bearer(provider.clone())).unwrap();
    let m = AzureMutex::builder(config, common::unique("bearer"))
        .client_options(trusting_options(pki))
        .build()
        .unwrap();
    let mut lease = m.acquire("job", LeaseDuration::seconds(15).unwrap()).await.unwrap();
    m.renew(&mut lease).await.unwrap();
    m.release(&lease).await.unwrap();
    assert!(
        provider.calls.load(Ordering::Relaxed) >= 3,
        "called before every request"
    );
    assert!(!format!("{config_dbg:?}", config_dbg = Credential::Bearer(provider)).contains("eyJ"));
}
