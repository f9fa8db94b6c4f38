//! Managed identity: App Service / Functions / Container Apps (`IDENTITY_ENDPOINT` +
//! `IDENTITY_HEADER`), else the instance metadata endpoint (VM, VMSS, AKS node identity).
//! System-assigned, or user-assigned by client id, object id or resource id.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use url::Url;

use super::{
    token_from_answer, EntraBuilder, EntraError, EntraKind, FetchFuture, Secret, TokenHttp, TokenSource, UserAssigned,
    PROBE_PREFIX, STORAGE_RESOURCE,
};

const KIND: EntraKind = EntraKind::ManagedIdentity;

/// The instance metadata service's token endpoint (link-local; VMs, VMSS, AKS nodes).
/// See [Get a token using HTTP](https://learn.microsoft.com/en-us/entra/identity/managed-identities-azure-resources/how-to-use-vm-token#get-a-token-using-http).
pub const IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";

/// The instance metadata token API version.
/// See [Get a token using HTTP](https://learn.microsoft.com/en-us/entra/identity/managed-identities-azure-resources/how-to-use-vm-token#get-a-token-using-http).
pub const IMDS_API_VERSION: &str = "2018-02-01";

/// The App Service / Functions / Container Apps identity API version (header
/// `X-IDENTITY-HEADER`).
/// See [REST endpoint reference](https://learn.microsoft.com/en-us/azure/app-service/overview-managed-identity#rest-endpoint-reference).
pub const APP_SERVICE_API_VERSION: &str = "2019-08-01";

/// How long the default chain waits for the instance metadata endpoint to answer its probe
/// before concluding there is none (a machine without one must not make the chain hang).
pub const IMDS_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The path appended to `AZURE_POD_IDENTITY_AUTHORITY_HOST` (as the SDKs do).
const IMDS_PATH: &str = "/metadata/identity/oauth2/token";

enum Endpoint {
    AppService { url: Url, header: Secret },
    Imds { url: Url },
}

/// Managed identity configuration -> a token.
pub(crate) struct ManagedIdentity {
    http: TokenHttp,
    endpoint: Endpoint,
    identity: Option<UserAssigned>,
    /// Probe the instance metadata endpoint once, briefly, before the first real request.
    probe: AtomicBool,
}

impl ManagedIdentity {
    pub(crate) fn configure(b: &EntraBuilder, probe: bool) -> Result<Self, EntraError> {
        let bad = |why: String| EntraError::InvalidConfig { kind: KIND, why };
        let identity = match &b.user_assigned {
            Some(id) => Some(id.clone()),
            None => b
                .setting(&b.client_id, "AZURE_CLIENT_ID")
                .map_err(bad)?
                .map(UserAssigned::ClientId),
        };
        if let Some(UserAssigned::ClientId(v) | UserAssigned::ObjectId(v) | UserAssigned::ResourceId(v)) = &identity {
            if v.trim().is_empty() || v.chars().any(|c| c.is_control()) {
                return Err(bad(
                    "the user-assigned identity is empty or has control characters".into()
                ));
            }
        }
        // Set but empty: an error, never a silent switch to another endpoint or kind.
        let endpoint_var = b.var("IDENTITY_ENDPOINT").map_err(bad)?;
        let header_var = b.var("IDENTITY_HEADER").map_err(bad)?;
        let endpoint = match (endpoint_var, header_var) {
            (Some(url), Some(header)) => Endpoint::AppService {
                url: Url::parse(&url).map_err(|e| bad(format!("`IDENTITY_ENDPOINT` is not a URL: {e}")))?,
                header: Secret(header),
            },
            _ => {
                let url = match &b.imds_endpoint {
                    Some(u) => u.clone(),
                    None => match b.var("AZURE_POD_IDENTITY_AUTHORITY_HOST").map_err(bad)? {
                        Some(host) => format!("{}{IMDS_PATH}", host.trim_end_matches('/')),
                        None => IMDS_ENDPOINT.to_string(),
                    },
                };
                Endpoint::Imds {
                    url: Url::parse(&url)
                        .map_err(|e| bad(format!("the instance metadata endpoint is not a URL: {e}")))?,
                }
            }
        };
        Ok(Self {
            // Local endpoints: never through the configured proxy.
            http: b.http(KIND, true)?,
            probe: AtomicBool::new(probe && matches!(endpoint, Endpoint::Imds { .. })),
            endpoint,
            identity,
        })
    }

    /// The token URL with its query: api-version, resource and the user-assigned identity
    /// (whose parameter names differ between the two endpoints).
    fn url(&self) -> Url {
        let (mut url, version, [client, object, resource]) = match &self.endpoint {
            Endpoint::AppService { url, .. } => (
                url.clone(),
                APP_SERVICE_API_VERSION,
                ["client_id", "principal_id", "mi_res_id"],
            ),
            Endpoint::Imds { url } => (url.clone(), IMDS_API_VERSION, ["client_id", "object_id", "msi_res_id"]),
        };
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("api-version", version)
                .append_pair("resource", STORAGE_RESOURCE);
            match &self.identity {
                Some(UserAssigned::ClientId(v)) => q.append_pair(client, v),
                Some(UserAssigned::ObjectId(v)) => q.append_pair(object, v),
                Some(UserAssigned::ResourceId(v)) => q.append_pair(resource, v),
                None => &mut q,
            };
        }
        url
    }
}

impl TokenSource for ManagedIdentity {
    fn fetch(&self) -> FetchFuture<'_> {
        Box::pin(async move {
            let url = self.url();
            if self.probe.load(Ordering::Relaxed) {
                // Any answer (IMDS refuses a request without `Metadata: true` with 400) means
                // an endpoint is there; none within the probe timeout means there is none.
                let probe = self.http.client().get(url.clone());
                match self.http.send(KIND, probe, Some(IMDS_PROBE_TIMEOUT)).await {
                    Ok(_) => self.probe.store(false, Ordering::Relaxed),
                    Err(e) => {
                        let detail = match &e {
                            EntraError::Transient { why, .. } => why.clone(),
                            other => other.to_string(),
                        };
                        return Err(EntraError::Transient {
                            kind: KIND,
                            why: format!(
                                "{PROBE_PREFIX} answered within {} ms ({detail})",
                                IMDS_PROBE_TIMEOUT.as_millis()
                            ),
                        });
                    }
                }
            }
            let request = match &self.endpoint {
                Endpoint::AppService { header, .. } => {
                    self.http.client().get(url).header("X-IDENTITY-HEADER", &header.0)
                }
                Endpoint::Imds { .. } => self.http.client().get(url).header("Metadata", "true"),
            };
            let answer = self.http.send(KIND, request, None).await?;
            // Every value we sent that a user gave (the header, the identity) is kept out of
            // the endpoint's words.
            let header = match &self.endpoint {
                Endpoint::AppService { header, .. } => header.0.as_str(),
                Endpoint::Imds { .. } => "",
            };
            let identity = match &self.identity {
                Some(UserAssigned::ClientId(v) | UserAssigned::ObjectId(v) | UserAssigned::ResourceId(v)) => v.as_str(),
                None => "",
            };
            token_from_answer(KIND, &[header, identity], &answer)
        })
    }
}
