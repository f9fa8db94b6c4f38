//! HTTPS to an endpoint whose certificate comes from a private CA (as on Azure Stack or behind
//! a corporate proxy): refused by default, accepted once the CA is added.

mod common;

use azmutex::{AzureMutex, ClientOptions, Error, InvalidInput, LeaseDuration, StorageConfig};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

struct Pki {
    ca_pem: String,
    dir: std::path::PathBuf,
}

fn make_pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "azmutex test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let dir = std::env::temp_dir().join(common::unique("azmutex-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        dir,
    }
}

#[tokio::test]
async fn private_ca_is_refused_by_default_and_accepted_when_added() {
    let pki = make_pki();
    let cert = pki.dir.join("cert.pem");
    let key = pki.dir.join("key.pem");
    let azurite = common::start_azurite(
        "https",
        &["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()],
    );
    assert!(azurite.endpoint.starts_with("https://localhost:"));
    let config = StorageConfig::parse_connection_string(&azurite.connection_string).unwrap();
    let container = common::unique("tls");
    let duration = LeaseDuration::seconds(15).unwrap();

    // System roots only: the TLS handshake fails (a network-level failure, after retries).
    let mut options = ClientOptions::default();
    options.retry.call_timeout = std::time::Duration::from_secs(2);
    let strict = AzureMutex::builder(config.clone(), &container)
        .client_options(options.clone())
        .build()
        .unwrap();
    let err = strict.acquire("job", duration).await.unwrap_err();
    assert!(matches!(err, Error::Transient { .. }), "{err:?}");
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");

    // With the private CA: works.
    let mut trusting = options.clone();
    trusting.ca_certificates_pem.push(pki.ca_pem.clone().into_bytes());
    let m = AzureMutex::builder(config.clone(), &container)
        .client_options(trusting)
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
    let _ = std::fs::remove_dir_all(pki.dir);
}
