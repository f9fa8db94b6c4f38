//! [`EntraCredential`] and its builder: one kind of source, or the default chain.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use super::*;

/// A secret string (client secret): never printed.
#[derive(Clone)]
pub(crate) struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Entra ID tokens for storage, cached and refreshed ahead of expiry in the background: a
/// [`TokenProvider`] to put in [`Credential::Bearer`](crate::Credential::Bearer), or use
/// [`StorageConfig::entra`](crate::StorageConfig::entra). Cheap to clone: clones share the
/// cache, so one refresh serves every request of every client that holds it.
///
/// ```no_run
/// use azmutex::auth::entra::EntraCredential;
/// use azmutex::{AzureMutex, ClientOptions, StorageConfig};
///
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let options = ClientOptions::default();
/// // The default chain: environment secret, workload identity, managed identity, Azure CLI.
/// let credential = EntraCredential::builder().client_options(&options).chain()?;
/// let config = StorageConfig::entra("https://acct.blob.core.windows.net", credential)?;
/// let mutex = AzureMutex::builder(config, "locks").client_options(options).build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[cfg_attr(docsrs, doc(cfg(feature = "entra")))]
pub struct EntraCredential {
    pub(super) cache: Arc<cache::TokenCache>,
    pub(super) what: &'static str,
}

impl fmt::Debug for EntraCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntraCredential({})", self.what)
    }
}

impl TokenProvider for EntraCredential {
    fn token(&self) -> TokenFuture<'_> {
        Box::pin(async move {
            self.cache
                .token()
                .await
                .map_err(|e| Box::new(e) as crate::auth::TokenError)
        })
    }
}

impl EntraCredential {
    /// A builder: settings from the environment (`AZURE_*`) unless set on it.
    pub fn builder() -> EntraBuilder {
        EntraBuilder::default()
    }

    /// Token requests made so far (successful or not): one per refresh, however many requests
    /// use the credential.
    pub fn token_requests(&self) -> u64 {
        self.cache.fetches()
    }
}

pub(crate) type VarFn = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Builds an [`EntraCredential`] of one kind, or the default chain. Every setting not given
/// here is read from the environment variables the Azure SDKs read (see each method).
#[derive(Clone)]
#[cfg_attr(docsrs, doc(cfg(feature = "entra")))]
pub struct EntraBuilder {
    pub(super) var: VarFn,
    pub(super) options: ClientOptions,
    pub(super) authority_host: Option<String>,
    pub(super) tenant_id: Option<String>,
    pub(super) client_id: Option<String>,
    pub(super) client_secret: Option<Secret>,
    pub(super) federated_token_file: Option<PathBuf>,
    pub(super) user_assigned: Option<UserAssigned>,
    pub(super) imds_endpoint: Option<String>,
    pub(super) az_command: Option<PathBuf>,
    pub(super) refresh: RefreshPolicy,
}

impl Default for EntraBuilder {
    fn default() -> Self {
        Self {
            var: Arc::new(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())),
            options: ClientOptions::default(),
            authority_host: None,
            tenant_id: None,
            client_id: None,
            client_secret: None,
            federated_token_file: None,
            user_assigned: None,
            imds_endpoint: None,
            az_command: None,
            refresh: RefreshPolicy::default(),
        }
    }
}

impl fmt::Debug for EntraBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntraBuilder")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("user_assigned", &self.user_assigned)
            .finish_non_exhaustive()
    }
}

impl EntraBuilder {
    /// Reads "environment variables" through `var` instead of the process environment (tests,
    /// embedding).
    pub fn vars(mut self, var: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        self.var = Arc::new(var);
        self
    }

    /// HTTP options for token requests: extra trusted CA certificates (a private CA applies to
    /// the token endpoint too), proxies, connect and request timeouts. Use the same options as
    /// the storage client. The managed identity endpoints, local to the machine, are always
    /// reached directly (never through a proxy), as the SDKs do.
    pub fn client_options(mut self, options: &ClientOptions) -> Self {
        self.options = options.clone();
        self
    }

    /// The authority host (default `AZURE_AUTHORITY_HOST`, else [`DEFAULT_AUTHORITY_HOST`]).
    pub fn authority_host(mut self, host: impl Into<String>) -> Self {
        self.authority_host = Some(host.into());
        self
    }

    /// The tenant (default `AZURE_TENANT_ID`).
    pub fn tenant_id(mut self, tenant: impl Into<String>) -> Self {
        self.tenant_id = Some(tenant.into());
        self
    }

    /// The application (client) id (default `AZURE_CLIENT_ID`). For a managed identity it
    /// selects a user-assigned identity by client id, as the SDKs' default credential does.
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }

    /// The client secret (default `AZURE_CLIENT_SECRET`). Never printed.
    pub fn client_secret(mut self, secret: impl Into<String>) -> Self {
        self.client_secret = Some(Secret(secret.into()));
        self
    }

    /// The federated token file of workload identity (default `AZURE_FEDERATED_TOKEN_FILE`);
    /// re-read for every exchange (the kubelet rotates it).
    pub fn federated_token_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.federated_token_file = Some(path.into());
        self
    }

    /// A user-assigned managed identity (default: `AZURE_CLIENT_ID` as its client id, else the
    /// system-assigned identity).
    pub fn user_assigned(mut self, identity: UserAssigned) -> Self {
        self.user_assigned = Some(identity);
        self
    }

    /// The instance metadata token endpoint (default
    /// `AZURE_POD_IDENTITY_AUTHORITY_HOST` + `/metadata/identity/oauth2/token`, else
    /// [`IMDS_ENDPOINT`]). Tests point it at loopback.
    pub fn imds_endpoint(mut self, url: impl Into<String>) -> Self {
        self.imds_endpoint = Some(url.into());
        self
    }

    /// The Azure CLI program (default `az` on `PATH`).
    pub fn azure_cli_command(mut self, program: impl Into<PathBuf>) -> Self {
        self.az_command = Some(program.into());
        self
    }

    /// When tokens are refreshed and how failures back off.
    pub fn refresh_policy(mut self, policy: RefreshPolicy) -> Self {
        self.refresh = policy;
        self
    }

    /// A variable, trimmed; `Err` names it when set but empty.
    pub(super) fn var(&self, name: &'static str) -> Result<Option<String>, String> {
        match (self.var)(name) {
            Some(v) if v.trim().is_empty() => Err(format!("`{name}` is set but empty")),
            Some(v) => Ok(Some(v.trim().to_string())),
            None => Ok(None),
        }
    }

    pub(super) fn setting(&self, given: &Option<String>, name: &'static str) -> Result<Option<String>, String> {
        match given {
            Some(v) if v.trim().is_empty() => Err(format!("the {name} given is empty")),
            Some(v) => Ok(Some(v.trim().to_string())),
            None => self.var(name),
        }
    }

    pub(super) fn authority(&self) -> Result<String, String> {
        Ok(self
            .setting(&self.authority_host, "AZURE_AUTHORITY_HOST")?
            .unwrap_or_else(|| DEFAULT_AUTHORITY_HOST.to_string()))
    }

    /// The HTTP side of token requests; `direct` for endpoints local to the machine.
    pub(super) fn http(&self, kind: EntraKind, direct: bool) -> Result<TokenHttp, EntraError> {
        let mut options = self.options.clone();
        if direct {
            options.proxy = crate::transport::ProxyConfig::Direct;
        }
        TokenHttp::new(&options, None).map_err(|e| EntraError::InvalidConfig {
            kind,
            why: e.to_string(),
        })
    }

    pub(super) fn source(&self, kind: EntraKind, probe: bool) -> Result<Box<dyn TokenSource>, EntraError> {
        Ok(match kind {
            EntraKind::ClientSecret => Box::new(client_secret::ClientSecret::configure(self)?),
            EntraKind::WorkloadIdentity => Box::new(workload_identity::WorkloadIdentity::configure(self)?),
            EntraKind::ManagedIdentity => Box::new(managed_identity::ManagedIdentity::configure(self, probe)?),
            EntraKind::AzureCli => Box::new(azure_cli::AzureCli::configure(self)?),
        })
    }

    pub(super) fn finish(self, source: Box<dyn TokenSource>, what: &'static str) -> EntraCredential {
        EntraCredential {
            cache: Arc::new(cache::TokenCache::new(source, self.refresh)),
            what,
        }
    }

    /// One kind, explicitly. Fails before the network if it is not configured.
    pub fn build(self, kind: EntraKind) -> Result<EntraCredential, EntraError> {
        let source = self.source(kind, false)?;
        let what = match kind {
            EntraKind::ClientSecret => "client secret",
            EntraKind::WorkloadIdentity => "workload identity",
            EntraKind::ManagedIdentity => "managed identity",
            EntraKind::AzureCli => "Azure CLI",
        };
        Ok(self.finish(source, what))
    }

    /// A managed identity: App Service / Functions / Container Apps when `IDENTITY_ENDPOINT`
    /// and `IDENTITY_HEADER` are set, else the instance metadata endpoint (VM, VMSS, AKS).
    pub fn managed_identity(self) -> Result<EntraCredential, EntraError> {
        self.build(EntraKind::ManagedIdentity)
    }

    /// AKS workload identity (`AZURE_FEDERATED_TOKEN_FILE`, `AZURE_CLIENT_ID`,
    /// `AZURE_TENANT_ID`, `AZURE_AUTHORITY_HOST`).
    pub fn workload_identity(self) -> Result<EntraCredential, EntraError> {
        self.build(EntraKind::WorkloadIdentity)
    }

    /// A service principal's secret (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`,
    /// `AZURE_CLIENT_SECRET`, `AZURE_AUTHORITY_HOST`).
    pub fn client_secret_credential(self) -> Result<EntraCredential, EntraError> {
        self.build(EntraKind::ClientSecret)
    }

    /// `az account get-access-token --resource https://storage.azure.com/`.
    pub fn azure_cli(self) -> Result<EntraCredential, EntraError> {
        self.build(EntraKind::AzureCli)
    }

    /// The default chain, in the order of [`EntraKind::CHAIN`]: environment secret, workload
    /// identity, managed identity (the instance metadata endpoint is probed with a short,
    /// bounded request), Azure CLI. The first *available* kind is used from then on: the chain
    /// moves past a kind only when it is not configured, finds no metadata endpoint, or is told
    /// this machine has no such identity; a configured kind that fails ends the chain with its
    /// error (retried if it may pass), never a switch to another identity, and a kind configured
    /// wrongly (a variable set but empty, a bad tenant id) is an error here. When none is
    /// available, the error lists each kind and why it was skipped or failed.
    pub fn chain(self) -> Result<EntraCredential, EntraError> {
        let mut sources = Vec::new();
        for kind in EntraKind::CHAIN {
            let source = self.source(kind, true);
            // A kind that is configured but wrongly (a variable set but empty, a bad tenant
            // id) is an error now, not a reason to try the next identity.
            if let Err(e @ EntraError::InvalidConfig { .. }) = &source {
                return Err(e.clone());
            }
            sources.push((kind, source));
        }
        let source = chain::Chain::new(sources);
        Ok(self.finish(Box::new(source), "default chain"))
    }
}
