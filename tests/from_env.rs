//! `StorageConfig::from_env` does what the CLI does with the same environment (issue 18): an
//! account or endpoint without a key or SAS token means Entra ID's default chain, and when that
//! fails, the error says first that no key or SAS was found and names the misspelt variable.
//!
//! One test in a binary of its own: it sets process environment variables, which no other
//! thread may read meanwhile. Every address is loopback (the managed identity endpoint is
//! pointed at a closed local port; `az` is kept off `PATH`).
#![cfg(feature = "entra")]

use azmutex::auth::Credential;
use azmutex::StorageConfig;

#[tokio::test(flavor = "current_thread")]
async fn from_env_falls_through_to_entra_id_and_says_why_when_it_fails() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let secret_looking = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("AZURE_") || k.starts_with("IDENTITY_") || k.starts_with("MSI_") {
            std::env::remove_var(k);
        }
    }
    std::env::set_var("PATH", "/nonexistent");
    std::env::set_var("AZURE_STORAGE_SERVICE_ENDPOINT", "https://127.0.0.1:1/devstoreaccount1");
    std::env::set_var("AZURE_STORAGE_ACCESS_KEY", secret_looking);
    std::env::set_var(
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        format!("http://127.0.0.1:{closed_port}"),
    );

    // The same environment the CLI turns into Entra ID: so does the library.
    let config = StorageConfig::from_env()
        .expect("a configuration")
        .expect("not 'nothing configured'");
    let Credential::Bearer(provider) = &config.credential else {
        panic!("expected Entra ID (a bearer credential), got {:?}", config.credential);
    };
    let err = provider
        .token()
        .await
        .expect_err("no Entra ID source can work here")
        .to_string();
    assert!(
        err.starts_with("no account key, SAS token or connection string was found"),
        "the reason Entra ID was tried comes first: {err}"
    );
    assert!(
        err.contains("`AZURE_STORAGE_ACCESS_KEY` (did you mean `AZURE_STORAGE_KEY`?)"),
        "{err}"
    );
    assert!(err.contains("no Entra ID credential worked"), "{err}");
    assert!(!err.contains("Eby8vdM02x"), "a value leaked: {err}");

    // With the key under its right name, the same call gives SharedKey, as before.
    std::env::remove_var("AZURE_STORAGE_ACCESS_KEY");
    std::env::remove_var("AZURE_STORAGE_SERVICE_ENDPOINT");
    std::env::set_var("AZURE_STORAGE_ACCOUNT", "devstoreaccount1");
    std::env::set_var("AZURE_STORAGE_KEY", secret_looking);
    let config = StorageConfig::from_env().unwrap().unwrap();
    assert!(
        matches!(config.credential, Credential::SharedKey { .. }),
        "{:?}",
        config.credential
    );
    assert!(StorageConfig::unknown_env_variables().is_empty());

    // Nothing configured but a misspelt connection string: an error, not development storage.
    for k in ["AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_KEY"] {
        std::env::remove_var(k);
    }
    std::env::set_var(
        "AZURE_STORAGE_CONNECTON_STRING",
        format!("AccountName=x;AccountKey={secret_looking}"),
    );
    let err = StorageConfig::from_env().expect_err("a misspelt variable is not 'nothing configured'");
    let text = err.to_string();
    assert!(
        text.contains("`AZURE_STORAGE_CONNECTON_STRING` (did you mean `AZURE_STORAGE_CONNECTION_STRING`?)"),
        "{text}"
    );
    assert!(!text.contains("Eby8vdM02x"), "{text}");
    // A variable no tool reads and nothing like ours is only named, not refused.
    std::env::remove_var("AZURE_STORAGE_CONNECTON_STRING");
    std::env::set_var("AZURE_STORAGE_SOMETHING_ELSE", "1");
    assert!(StorageConfig::from_env().unwrap().is_none());
}
