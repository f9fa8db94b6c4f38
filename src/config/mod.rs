//! Where the storage account is and how to authorize: connection strings, the Azure CLI's
//! environment variables, and the local development storage (Azurite) defaults.
//!
//! Connection-string syntax: [Configure Azure Storage connection strings](https://learn.microsoft.com/en-us/azure/storage/common/storage-configure-connection-string).

mod connection_string;
mod endpoint;
mod env;
mod error;
#[cfg(test)]
mod tests;

use std::fmt;

use url::Url;

use self::connection_string::*;
pub(crate) use self::endpoint::*;
pub use self::error::ConfigError;
use self::error::*;
use crate::auth::Credential;
use crate::redact::printable_url;
pub use crate::redact::redact_url;

/// The well-known account name of the storage emulator (Azurite).
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
/// The well-known, public key of the storage emulator (Azurite). Not a secret.
pub const DEV_ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// The emulator's blob endpoint (path-style: the account is the first path segment).
pub const DEV_BLOB_ENDPOINT: &str = "http://127.0.0.1:10000/devstoreaccount1";

/// A storage account's blob endpoint and credential.
#[derive(Clone)]
pub struct StorageConfig {
    /// The blob service endpoint, e.g. `https://acct.blob.core.windows.net` or, path-style,
    /// `http://127.0.0.1:10000/devstoreaccount1`. No query, no trailing slash.
    pub endpoint: Url,
    /// How requests are authorized.
    pub credential: Credential,
    /// An HTTP proxy for all requests (`DevelopmentStorageProxyUri`).
    pub proxy: Option<Url>,
}

impl fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageConfig")
            .field("endpoint", &printable_url(&self.endpoint, true))
            .field("credential", &self.credential)
            .field("proxy", &self.proxy.as_ref().map(redact_url))
            .finish()
    }
}

impl StorageConfig {
    /// Local development storage: Azurite's well-known account on `127.0.0.1:10000`.
    pub fn development() -> Self {
        Self::parse_connection_string("UseDevelopmentStorage=true").expect("the development storage defaults are valid")
    }

    /// A configuration from an explicit endpoint URL and an Entra ID credential (the crate's
    /// own, cached and refreshed in the background).
    #[cfg(feature = "entra")]
    #[cfg_attr(docsrs, doc(cfg(feature = "entra")))]
    ///
    /// The endpoint must be `https://`: a bearer token is never sent in clear text (as the
    /// Azure SDKs refuse to).
    pub fn entra(endpoint: &str, credential: crate::auth::entra::EntraCredential) -> Result<Self, ConfigError> {
        let url = parse_endpoint("endpoint", endpoint)?;
        check_bearer_endpoint("endpoint", &url, false)?;
        Ok(Self {
            endpoint: url,
            credential: Credential::Bearer(std::sync::Arc::new(credential)),
            proxy: None,
        })
    }

    /// A configuration from an explicit endpoint URL (host-style or path-style, e.g. for Azure
    /// Stack or a custom domain) and a credential.
    ///
    /// A [`Credential::Bearer`] needs an `https://` endpoint (a bearer token is never sent in
    /// clear text), except on a loopback address (`127.0.0.0/8`, `::1`, `localhost`), where
    /// the traffic does not leave the machine (a caller's own provider against a local emulator).
    pub fn new(endpoint: &str, credential: Credential) -> Result<Self, ConfigError> {
        let url = parse_endpoint("endpoint", endpoint)?;
        if matches!(credential, Credential::Bearer(_)) {
            check_bearer_endpoint("endpoint", &url, true)?;
        }
        Ok(Self {
            endpoint: url,
            credential,
            proxy: None,
        })
    }

    /// Whether this is the well-known development storage account.
    pub fn is_development(&self) -> bool {
        matches!(&self.credential, Credential::SharedKey { account, .. } if account == DEV_ACCOUNT)
    }
}

/// How requests are to be authorized, as the user chose (the CLI's `--auth` / `AZMUTEX_AUTH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthChoice {
    /// SharedKey with the account key.
    Key,
    /// A SAS token.
    Sas,
    /// One kind of Entra ID credential.
    #[cfg(feature = "entra")]
    #[cfg_attr(docsrs, doc(cfg(feature = "entra")))]
    Entra(crate::auth::entra::EntraKind),
    /// A key or SAS token if one is given, else Entra ID's default chain.
    Auto,
}
