//! Microsoft Entra ID tokens for the storage resource without the Azure SDK: managed identity
//! (App Service / Functions / Container Apps, and the VM/VMSS/AKS instance metadata endpoint),
//! workload identity (AKS), a client secret (service principal), the Azure CLI, and a default
//! chain of them.
//!
//! One small source per kind turns configuration into a token and its lifetime; a cache wraps
//! any source and owns refresh timing (ahead of expiry, in the background, one at a time, with
//! backoff: [`RefreshPolicy`]); [`EntraCredential`] is that cache as a
//! [`TokenProvider`], shared by every request of a client.
//!
//! Protocol pages: [managed identity](https://learn.microsoft.com/en-us/entra/identity/managed-identities-azure-resources/how-to-use-vm-token#get-a-token-using-http),
//! [App Service](https://learn.microsoft.com/en-us/azure/app-service/overview-managed-identity#rest-endpoint-reference),
//! [client credentials](https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow),
//! [workload identity](https://learn.microsoft.com/en-us/azure/aks/workload-identity-overview).

mod answer;
mod app;
mod azure_cli;
mod builder;
mod cache;
mod chain;
mod client_secret;
mod error;
mod http;
pub(crate) mod json;
mod managed_identity;
#[cfg(test)]
mod tests;
mod workload_identity;

use std::fmt;

// tokio's clock (the same as std's unless paused in tests).

use crate::auth::{AccessToken, TokenFuture, TokenProvider};
use crate::error::{sanitize_text, TlsProblem};
use crate::transport::{ClientOptions, MAX_BODY_BYTES};

pub use self::answer::*;
pub(crate) use self::app::*;
pub use self::azure_cli::AZURE_CLI_TIMEOUT;
pub use self::builder::*;
pub use self::cache::RefreshPolicy;
pub use self::error::*;
pub(crate) use self::http::*;
pub use self::managed_identity::{APP_SERVICE_API_VERSION, IMDS_API_VERSION, IMDS_ENDPOINT, IMDS_PROBE_TIMEOUT};

/// The scope asked of the Entra token endpoint (v2): the storage resource's default scope.
/// See [Authorize access with Microsoft Entra ID](https://learn.microsoft.com/en-us/rest/api/storageservices/authorize-with-azure-active-directory#microsoft-entra-authorization-scopes).
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";

/// The resource asked of managed identity endpoints and the Azure CLI (v1 style).
/// See [Authorize access with Microsoft Entra ID](https://learn.microsoft.com/en-us/rest/api/storageservices/authorize-with-azure-active-directory).
pub const STORAGE_RESOURCE: &str = "https://storage.azure.com/";

/// The public cloud's authority host; sovereign clouds set `AZURE_AUTHORITY_HOST` (e.g.
/// `https://login.microsoftonline.us`, `https://login.chinacloudapi.cn`).
/// See [National clouds](https://learn.microsoft.com/en-us/entra/identity-platform/authentication-national-cloud#microsoft-entra-authentication-endpoints).
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";

/// The client assertion type of a federated (workload identity) token exchange.
/// See [Certificate credentials / client assertions](https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow#third-case-access-token-request-with-a-federated-credential).
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Which kind of Entra ID credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EntraKind {
    /// A service principal's secret: `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`.
    ClientSecret,
    /// AKS workload identity: `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`.
    WorkloadIdentity,
    /// A managed identity: App Service's `IDENTITY_ENDPOINT`/`IDENTITY_HEADER`, else the
    /// instance metadata endpoint.
    ManagedIdentity,
    /// `az account get-access-token` (a developer signed in with `az login`).
    AzureCli,
}

impl EntraKind {
    /// The default chain's order (as the Azure SDKs' default credential).
    pub const CHAIN: [EntraKind; 4] = [
        EntraKind::ClientSecret,
        EntraKind::WorkloadIdentity,
        EntraKind::ManagedIdentity,
        EntraKind::AzureCli,
    ];
}

impl fmt::Display for EntraKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntraKind::ClientSecret => "client secret",
            EntraKind::WorkloadIdentity => "workload identity",
            EntraKind::ManagedIdentity => "managed identity",
            EntraKind::AzureCli => "Azure CLI",
        })
    }
}

/// A user-assigned managed identity, named one of the three ways the endpoints accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserAssigned {
    /// Its client (application) id.
    ClientId(String),
    /// Its object (principal) id.
    ObjectId(String),
    /// Its Azure resource id (`/subscriptions/.../userAssignedIdentities/NAME`).
    ResourceId(String),
}
