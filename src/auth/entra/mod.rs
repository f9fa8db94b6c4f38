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

mod azure_cli;
mod cache;
mod chain;
mod client_secret;
pub(crate) mod json;
mod managed_identity;
mod workload_identity;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

// tokio's clock (the same as std's unless paused in tests).
use tokio::time::Instant;

use url::Url;

use crate::auth::{AccessToken, TokenFuture, TokenProvider};
use crate::error::{sanitize_text, TlsProblem};
use crate::rest::{ClientOptions, MAX_BODY_BYTES};

pub use self::azure_cli::AZURE_CLI_TIMEOUT;
pub use self::cache::RefreshPolicy;
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

/// Why no token could be had. Never contains a secret or a token; texts from endpoints are cut
/// and stripped of control characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntraError {
    /// The kind is not configured here (variables unset, no endpoint answering, `az` absent).
    #[error("{kind}: not configured: {why}")]
    NotConfigured {
        /// The kind.
        kind: EntraKind,
        /// What is missing.
        why: String,
    },
    /// The configuration is present but unusable (bad tenant id, unreadable token file).
    #[error("{kind}: invalid configuration: {why}")]
    InvalidConfig {
        /// The kind.
        kind: EntraKind,
        /// What is wrong.
        why: String,
    },
    /// The endpoint definitively refused (wrong secret, unknown client, identity not assigned,
    /// `az` not signed in). Retrying does not help.
    #[error("{kind}: refused{}: {description}", status.map(|s| format!(" (HTTP {s}{})", code.as_ref().map(|c| format!(", {c}")).unwrap_or_default())).unwrap_or_default())]
    Refused {
        /// The kind.
        kind: EntraKind,
        /// The HTTP status, if there was one.
        status: Option<u16>,
        /// The OAuth `error` code, if given.
        code: Option<String>,
        /// The endpoint's description (cut, sanitized).
        description: String,
    },
    /// A failure that may pass: network error, timeout, throttling, 5xx, an unreadable answer.
    #[error("{kind}: token request failed: {why}")]
    Transient {
        /// The kind.
        kind: EntraKind,
        /// What happened.
        why: String,
    },
    /// The token endpoint's TLS certificate or handshake was refused (trust its CA with
    /// `ClientOptions::ca_certificates_pem` / `--ca-cert`).
    #[error("{kind}: TLS problem with the token endpoint: {problem}")]
    Tls {
        /// The kind.
        kind: EntraKind,
        /// The problem.
        problem: TlsProblem,
    },
    /// The cache holds no valid token and is waiting before it asks again (after a failure),
    /// or a refresh was interrupted.
    #[error("no valid Entra ID token: {why}")]
    NoToken {
        /// Why.
        why: String,
    },
    /// The default chain found no credential that worked: each kind and why.
    #[error("no Entra ID credential worked (tried, in order: {})", tried.iter().map(|(k, e)| format!("{k}: {}", e.reason())).collect::<Vec<_>>().join("; "))]
    Chain {
        /// Each kind tried, with its error.
        tried: Vec<(EntraKind, EntraError)>,
    },
}

impl EntraError {
    /// Whether retrying cannot help (configuration missing or refused), as opposed to a
    /// failure that may pass (network, timeout, throttling). A chain's failure is definite
    /// unless one of its configured kinds failed transiently.
    pub fn is_definite(&self) -> bool {
        match self {
            EntraError::Transient { .. } | EntraError::NoToken { .. } => false,
            EntraError::Chain { tried } => tried.iter().all(|(_, e)| {
                e.is_definite() || matches!(e, EntraError::Transient { why, .. } if why.starts_with(PROBE_PREFIX))
            }),
            _ => true,
        }
    }

    /// The text without the kind prefix.
    fn reason(&self) -> String {
        match self {
            EntraError::NotConfigured { why, .. } => format!("skipped, {why}"),
            EntraError::InvalidConfig { why, .. } => format!("invalid configuration: {why}"),
            EntraError::Transient { why, .. } => format!("failed: {why}"),
            EntraError::Tls { problem, .. } => format!("TLS problem: {problem}"),
            other => {
                let s = other.to_string();
                s.split_once(": ").map(|(_, r)| r.to_string()).unwrap_or(s)
            }
        }
    }

    /// The TLS problem, if this is one.
    pub fn tls_problem(&self) -> Option<&TlsProblem> {
        match self {
            EntraError::Tls { problem, .. } => Some(problem),
            _ => None,
        }
    }
}

/// The start of a transient error that only says the instance metadata probe got no answer
/// (which in a chain means "no managed identity here").
pub(crate) const PROBE_PREFIX: &str = "no instance metadata endpoint";

/// A token and how long it lives, counted from when its request was sent.
#[derive(Clone, Debug)]
pub(crate) struct Fetched {
    pub token: AccessToken,
    /// When the request that got it was sent (before connecting).
    pub sent_at: Instant,
    /// Its lifetime from `sent_at` (the endpoint's `expires_in`, or `expires_on` minus the
    /// wall clock at sending).
    pub lifetime: Duration,
}

/// The future a source returns.
pub(crate) type FetchFuture<'a> = Pin<Box<dyn Future<Output = Result<Fetched, EntraError>> + Send + 'a>>;

/// A token source: configuration -> one token request -> a token and its lifetime. Knows
/// nothing of caching.
pub(crate) trait TokenSource: Send + Sync + 'static {
    /// Asks for a new token. Bounded: every request has a timeout.
    fn fetch(&self) -> FetchFuture<'_>;
}

/// An answer from a token endpoint, its body capped at [`MAX_BODY_BYTES`].
pub(crate) struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub sent_at: Instant,
    pub sent_wall: SystemTime,
}

/// The HTTP side of token requests: a client from [`crate::transport::http_client`] (so a
/// private CA and proxies apply), and the timeout of one request.
#[derive(Clone)]
pub(crate) struct TokenHttp {
    client: reqwest::Client,
    timeout: Duration,
    /// The options and explicit proxy the client was built with, to name a failing proxy.
    options: ClientOptions,
    proxy: Option<Url>,
}

impl TokenHttp {
    pub(crate) fn new(options: &ClientOptions, proxy: Option<&Url>) -> Result<Self, crate::error::InvalidInput> {
        Ok(Self {
            client: crate::transport::http_client(options, proxy)?,
            timeout: options.request_timeout.max(Duration::from_millis(1)),
            options: options.clone(),
            proxy: proxy.cloned(),
        })
    }

    /// A failed tunnel explained: the proxy (without credentials) and the status its
    /// `CONNECT` answered. The failure is the proxy's, not the token endpoint's.
    async fn tunnel_failure(&self, url: &Url) -> Option<String> {
        let proxy = crate::transport::proxy_for(&self.options, self.proxy.as_ref(), url)?;
        let shown = crate::config::redact_url(&proxy);
        Some(match crate::transport::connect_status(&proxy, url).await {
            Some(status) => format!(
                "the proxy {shown} refused to open a tunnel to the token endpoint (CONNECT answered HTTP {status})"
            ),
            None => format!("the proxy {shown} did not open a tunnel to the token endpoint (CONNECT failed)"),
        })
    }

    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends `request`, bounded by `timeout` (or the client's request timeout), and reads the
    /// answer. Errors are classified: TLS, timeout/network (transient).
    pub(crate) async fn send(
        &self,
        kind: EntraKind,
        request: reqwest::RequestBuilder,
        timeout: Option<Duration>,
    ) -> Result<Answer, EntraError> {
        let timeout = timeout.unwrap_or(self.timeout);
        let sent_at = Instant::now();
        let sent_wall = SystemTime::now();
        let run = async {
            let mut response = request.timeout(timeout).send().await?;
            let status = response.status().as_u16();
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    return Ok(None);
                }
                body.extend_from_slice(&chunk);
            }
            Ok::<_, reqwest::Error>(Some((status, body)))
        };
        match tokio::time::timeout(timeout + Duration::from_millis(100), run).await {
            Err(_) => Err(EntraError::Transient {
                kind,
                why: format!("no answer within {} ms", timeout.as_millis()),
            }),
            Ok(Err(e)) => {
                let mut error = classify(kind, &e, timeout);
                if let (EntraError::Transient { why, .. }, Some(url)) = (&mut error, e.url()) {
                    if why.contains("tunnel error") {
                        if let Some(explained) = self.tunnel_failure(url).await {
                            *why = explained;
                        }
                    }
                }
                Err(error)
            }
            Ok(Ok(None)) => Err(EntraError::Transient {
                kind,
                why: format!("the answer is longer than {MAX_BODY_BYTES} bytes"),
            }),
            Ok(Ok(Some((status, body)))) => Ok(Answer {
                status,
                body,
                sent_at,
                sent_wall,
            }),
        }
    }
}

/// A request error as an [`EntraError`]: TLS problems named, the rest transient (no URL: it
/// may carry a client id, never a secret, but keep logs short).
fn classify(kind: EntraKind, e: &reqwest::Error, timeout: Duration) -> EntraError {
    if let Some(problem) = crate::transport::tls_problem(e) {
        return EntraError::Tls { kind, problem };
    }
    let why = if e.is_timeout() {
        format!("no answer within {} ms", timeout.as_millis())
    } else {
        sanitize_text(&e.without_url_ref(), 300)
    };
    EntraError::Transient { kind, why }
}

/// `reqwest::Error::without_url` on a reference.
trait WithoutUrlRef {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrlRef for reqwest::Error {
    fn without_url_ref(&self) -> String {
        let mut s = self.to_string();
        if let Some(url) = self.url() {
            s = s.replace(url.as_str(), "<url>");
        }
        let mut source = std::error::Error::source(self);
        while let Some(inner) = source {
            s.push_str(": ");
            s.push_str(&inner.to_string());
            source = inner.source();
        }
        s
    }
}

/// Seconds as the endpoints write them: a JSON number or a string holding one (IMDS and App
/// Service send strings): digits, possibly with a fraction and an exponent (`3.5e3` is 3500
/// seconds; a fraction of a second is dropped). `None` if not that, negative, or past `u64`.
pub(crate) fn parse_secs(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() || text.len() > 64 {
        return None;
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok();
    }
    // The JSON number grammar (without a sign), then its value.
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (text, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || (mantissa.contains('.') && !digits(frac)) {
        return None;
    }
    if let Some(e) = exponent {
        if !digits(e.strip_prefix(['+', '-']).unwrap_or(e)) {
            return None;
        }
    }
    let value: f64 = text.parse().ok()?;
    // u64::MAX as f64 rounds up to 2^64: anything at or past it is not a number of seconds.
    (value.is_finite() && value >= 0.0 && value < u64::MAX as f64).then(|| value.floor() as u64)
}

/// The longest lifetime believed (anything longer is clamped; no arithmetic overflows).
const MAX_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// A token's lifetime from `expires_in` (relative, preferred: immune to clock skew) or
/// `expires_on` (epoch seconds, minus the wall clock when the request was sent).
pub(crate) fn lifetime(members: &[(String, json::Value)], sent_wall: SystemTime) -> Option<Duration> {
    if let Some(secs) = json::get(members, "expires_in").and_then(|v| parse_secs(v.text())) {
        return Some(Duration::from_secs(secs).min(MAX_LIFETIME));
    }
    let on = json::get(members, "expires_on").and_then(|v| parse_secs(v.text()))?;
    Some(until_epoch(on, sent_wall))
}

/// The time from `wall` to the epoch second `secs` (zero if past), clamped.
pub(crate) fn until_epoch(secs: u64, wall: SystemTime) -> Duration {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(secs.min(1 << 40));
    at.duration_since(wall).unwrap_or_default().min(MAX_LIFETIME)
}

/// Checks a token is fit for an `Authorization` header (visible ASCII, not empty).
pub(crate) fn checked_token(kind: EntraKind, token: &str) -> Result<AccessToken, EntraError> {
    if token.is_empty() || token.len() > MAX_BODY_BYTES || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(EntraError::Transient {
            kind,
            why: "the answer's token is empty or not printable ASCII".into(),
        });
    }
    Ok(AccessToken(token.to_string()))
}

/// Text from an endpoint or from `az`, fit for an error: every run of 12 or more characters
/// shared with a value we sent (client id, client secret, client assertion, identity header,
/// user-assigned identity), in any encoding an endpoint may echo it in, replaced by
/// `<redacted>` ([`crate::auth::scrub::scrub_secrets`]), and every JWT-shaped run (`eyJ...`, an
/// access or federated token) by `<token>`. Then cut to `max` characters and stripped of
/// control characters. Applied before the cut, so a secret cannot survive in part.
pub(crate) fn scrub(text: &str, secrets: &[&str], max: usize) -> String {
    let text = crate::auth::scrub::scrub_secrets(text, secrets);
    // JWT-shaped runs: `eyJ` (base64url of `{"`) followed by base64url characters and dots.
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find("eyJ") {
        out.push_str(&rest[..i]);
        let run = rest[i..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '%')))
            .unwrap_or(rest.len() - i);
        if run >= 16 {
            out.push_str("<token>");
        } else {
            out.push_str(&rest[i..i + run]);
        }
        rest = &rest[i + run..];
    }
    out.push_str(rest);
    sanitize_text(&out, max)
}

/// A token answer (`access_token` + `expires_in`/`expires_on`) or the endpoint's error.
///
/// Statuses that may pass are transient: 404 and 410 (the instance metadata endpoint while an
/// identity is being assigned or the service updates), 408, 429 and 5xx; see
/// [IMDS retry guidance](https://learn.microsoft.com/en-us/entra/identity/managed-identities-azure-resources/how-to-use-vm-token#retry-guidance).
/// Other 4xx are refusals.
///
/// `secrets` are what the request carried that an endpoint might echo in its error text; they
/// never reach the error (see [`scrub`]).
pub(crate) fn token_from_answer(kind: EntraKind, secrets: &[&str], answer: &Answer) -> Result<Fetched, EntraError> {
    if (300..400).contains(&answer.status) {
        // Never followed (the request's secret would go wherever `Location` says).
        return Err(EntraError::Refused {
            kind,
            status: Some(answer.status),
            code: None,
            description: format!(
                "the token endpoint answered with a redirect (HTTP {}), which token requests never follow: \
                 point the configuration at the real endpoint",
                answer.status
            ),
        });
    }
    let parsed = json::parse_object(&answer.body);
    if !(200..300).contains(&answer.status) {
        let members = parsed.unwrap_or_default();
        let field = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| json::get(&members, n))
                .map(|v| scrub(v.text(), secrets, 300))
                .filter(|s| !s.is_empty())
        };
        let code = field(&["error"]);
        let description =
            field(&["error_description", "message", "Message"]).unwrap_or_else(|| "no description".to_string());
        if matches!(answer.status, 404 | 408 | 410 | 429 | 500..=599) {
            return Err(EntraError::Transient {
                kind,
                why: format!(
                    "HTTP {}{}: {description}",
                    answer.status,
                    code.map(|c| format!(" {c}")).unwrap_or_default()
                ),
            });
        }
        return Err(EntraError::Refused {
            kind,
            status: Some(answer.status),
            code,
            description,
        });
    }
    let members = parsed.map_err(|e| EntraError::Transient {
        kind,
        why: format!("unreadable answer ({e})"),
    })?;
    let token = json::get(&members, "access_token").ok_or_else(|| EntraError::Transient {
        kind,
        why: "the answer has no `access_token`".into(),
    })?;
    let token = checked_token(kind, token.text())?;
    let lifetime = lifetime(&members, answer.sent_wall).ok_or_else(|| EntraError::Transient {
        kind,
        why: "the answer has no readable `expires_in` or `expires_on`".into(),
    })?;
    Ok(Fetched {
        token,
        sent_at: answer.sent_at,
        lifetime,
    })
}

/// Entry points for the fuzz targets (`tests/fuzz.rs`, `fuzz/`): the JSON reader, token
/// endpoint answers and `az` output, each checked for its promises. Not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    use std::time::SystemTime;

    use tokio::time::Instant;

    use super::{azure_cli, json, token_from_answer, Answer, EntraError, EntraKind};

    /// A secret the fuzzed answers may echo; it must never reach an error.
    pub const SECRET: &str = "Fz9Q~secretValue.ThatMustNotLeak42";

    /// Panics if an error text breaks its promises: bounded, one line, no secret.
    fn check(e: &EntraError) {
        let text = e.to_string();
        assert!(text.len() < 4096, "error text of {} bytes", text.len());
        assert!(!text.contains('\n') && !text.contains('\r'), "{text:?}");
        assert!(!text.contains(&SECRET[4..16]), "{text:?}");
    }

    /// The JSON reader on `data`: never panics; members are scalars, names unique.
    pub fn json(data: &[u8]) {
        if let Ok(members) = json::parse_object(data) {
            let mut names = std::collections::HashSet::new();
            for (k, _) in &members {
                assert!(names.insert(k.clone()), "duplicate {k:?}");
            }
        }
    }

    /// A token endpoint answer: the first byte picks the status, the rest is the body (with
    /// `SECRET` spliced in where the body says `$S`).
    pub fn token_answer(data: &[u8]) {
        let Some((&first, body)) = data.split_first() else {
            return;
        };
        let status = [200u16, 201, 301, 307, 400, 401, 403, 404, 408, 429, 500, 503][usize::from(first) % 12];
        let body = String::from_utf8_lossy(body).replace("$S", SECRET).into_bytes();
        let answer = Answer {
            status,
            body,
            sent_at: Instant::now(),
            sent_wall: SystemTime::now(),
        };
        for kind in [EntraKind::ClientSecret, EntraKind::ManagedIdentity] {
            match token_from_answer(kind, &[SECRET], &answer) {
                Ok(f) => {
                    assert!((200..300).contains(&status));
                    assert!(!f.token.0.is_empty() && f.token.0.bytes().all(|b| b.is_ascii_graphic()));
                    assert!(f.lifetime <= std::time::Duration::from_secs(7 * 24 * 3600));
                }
                Err(e) => check(&e),
            }
        }
    }

    /// `az` output: `data` as its stdout (success) and as its stderr (failure).
    pub fn az_output(data: &[u8]) {
        match azure_cli::parse_output(data, Instant::now(), SystemTime::now()) {
            Ok(f) => assert!(!f.token.0.is_empty() && f.token.0.bytes().all(|b| b.is_ascii_graphic())),
            Err(e) => check(&e),
        }
        let e = azure_cli::failure(data);
        let text = e.to_string();
        assert!(text.len() < 4096 && !text.contains('\n'), "{text:?}");
    }
}

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
    cache: Arc<cache::TokenCache>,
    what: &'static str,
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

type VarFn = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Builds an [`EntraCredential`] of one kind, or the default chain. Every setting not given
/// here is read from the environment variables the Azure SDKs read (see each method).
#[derive(Clone)]
#[cfg_attr(docsrs, doc(cfg(feature = "entra")))]
pub struct EntraBuilder {
    var: VarFn,
    options: ClientOptions,
    authority_host: Option<String>,
    tenant_id: Option<String>,
    client_id: Option<String>,
    client_secret: Option<Secret>,
    federated_token_file: Option<PathBuf>,
    user_assigned: Option<UserAssigned>,
    imds_endpoint: Option<String>,
    az_command: Option<PathBuf>,
    refresh: RefreshPolicy,
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
    fn var(&self, name: &'static str) -> Result<Option<String>, String> {
        match (self.var)(name) {
            Some(v) if v.trim().is_empty() => Err(format!("`{name}` is set but empty")),
            Some(v) => Ok(Some(v.trim().to_string())),
            None => Ok(None),
        }
    }

    fn setting(&self, given: &Option<String>, name: &'static str) -> Result<Option<String>, String> {
        match given {
            Some(v) if v.trim().is_empty() => Err(format!("the {name} given is empty")),
            Some(v) => Ok(Some(v.trim().to_string())),
            None => self.var(name),
        }
    }

    fn authority(&self) -> Result<String, String> {
        Ok(self
            .setting(&self.authority_host, "AZURE_AUTHORITY_HOST")?
            .unwrap_or_else(|| DEFAULT_AUTHORITY_HOST.to_string()))
    }

    /// The HTTP side of token requests; `direct` for endpoints local to the machine.
    fn http(&self, kind: EntraKind, direct: bool) -> Result<TokenHttp, EntraError> {
        let mut options = self.options.clone();
        if direct {
            options.proxy = crate::rest::ProxyConfig::Direct;
        }
        TokenHttp::new(&options, None).map_err(|e| EntraError::InvalidConfig {
            kind,
            why: e.to_string(),
        })
    }

    fn source(&self, kind: EntraKind, probe: bool) -> Result<Box<dyn TokenSource>, EntraError> {
        Ok(match kind {
            EntraKind::ClientSecret => Box::new(client_secret::ClientSecret::configure(self)?),
            EntraKind::WorkloadIdentity => Box::new(workload_identity::WorkloadIdentity::configure(self)?),
            EntraKind::ManagedIdentity => Box::new(managed_identity::ManagedIdentity::configure(self, probe)?),
            EntraKind::AzureCli => Box::new(azure_cli::AzureCli::configure(self)?),
        })
    }

    fn finish(self, source: Box<dyn TokenSource>, what: &'static str) -> EntraCredential {
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

/// The Entra v2 token endpoint: `{authority}/{tenant}/oauth2/v2.0/token`.
/// See [Client credentials flow](https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow#get-a-token).
/// The authority must be `https` (as the SDKs require); the tenant a GUID or domain name.
fn entra_token_url(kind: EntraKind, authority: &str, tenant: &str) -> Result<Url, EntraError> {
    let bad = |why: String| EntraError::InvalidConfig { kind, why };
    if tenant.is_empty()
        || tenant.len() > 256
        || !tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(bad(
            "the tenant id (`AZURE_TENANT_ID`) must be a GUID or a domain name".into()
        ));
    }
    let base = Url::parse(authority.trim_end_matches('/'))
        .map_err(|e| bad(format!("the authority host (`AZURE_AUTHORITY_HOST`) is not a URL: {e}")))?;
    if !base.username().is_empty() || base.password().is_some() {
        return Err(bad(
            "the authority host (`AZURE_AUTHORITY_HOST`) must not contain `user:password@` (not shown)".into(),
        ));
    }
    if base.scheme() != "https" || base.host_str().is_none() || base.query().is_some() {
        return Err(bad(
            "the authority host (`AZURE_AUTHORITY_HOST`) must be an https:// URL without a query".into(),
        ));
    }
    let url = format!("{}/{tenant}/oauth2/v2.0/token", base.as_str().trim_end_matches('/'));
    Url::parse(&url).map_err(|e| bad(format!("the token endpoint URL is invalid: {e}")))
}

/// An Entra application as a client of the token endpoint: where client-credentials requests
/// go (`AZURE_AUTHORITY_HOST`, `AZURE_TENANT_ID`) and as whom (`AZURE_CLIENT_ID`). Shared by the
/// client secret and workload identity sources, which differ only in their proof.
pub(crate) struct EntraApp {
    http: TokenHttp,
    url: Url,
    client_id: String,
    tenant: String,
}

impl EntraApp {
    pub(crate) fn configure(b: &EntraBuilder, kind: EntraKind) -> Result<Self, EntraError> {
        let tenant = required(kind, b.setting(&b.tenant_id, "AZURE_TENANT_ID"), "AZURE_TENANT_ID")?;
        let client_id = required(kind, b.setting(&b.client_id, "AZURE_CLIENT_ID"), "AZURE_CLIENT_ID")?;
        let authority = b.authority().map_err(|why| EntraError::InvalidConfig { kind, why })?;
        Ok(Self {
            http: b.http(kind, false)?,
            url: entra_token_url(kind, &authority, &tenant)?,
            client_id,
            tenant,
        })
    }

    /// One token request with the client's `proof`.
    pub(crate) async fn token(&self, kind: EntraKind, proof: &[(&str, &str)]) -> Result<Fetched, EntraError> {
        client_credentials(&self.http, kind, &self.url, &self.client_id, &self.tenant, proof).await
    }
}

/// One client-credentials token request (`grant_type=client_credentials`) to `url` with the
/// client's proof (`client_secret`, or `client_assertion_type` + `client_assertion`).
async fn client_credentials(
    http: &TokenHttp,
    kind: EntraKind,
    url: &Url,
    client_id: &str,
    tenant: &str,
    proof: &[(&str, &str)],
) -> Result<Fetched, EntraError> {
    let body = {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("client_id", client_id)
            .append_pair("scope", STORAGE_SCOPE)
            .append_pair("grant_type", "client_credentials");
        for (k, v) in proof {
            form.append_pair(k, v);
        }
        form.finish()
    };
    let request = http
        .client()
        .post(url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(reqwest::header::ACCEPT, "application/json")
        .body(body);
    let answer = http.send(kind, request, None).await?;
    // Every value we sent: a client id swapped with the secret is quoted back by Entra
    // (AADSTS700016 names the client id it got).
    let secrets: Vec<&str> = [client_id, tenant]
        .into_iter()
        .chain(
            proof
                .iter()
                .filter(|(k, _)| *k != "client_assertion_type")
                .map(|(_, v)| *v),
        )
        .collect();
    token_from_answer(kind, &secrets, &answer)
}

/// A required setting, or `NotConfigured` naming it.
pub(crate) fn required(
    kind: EntraKind,
    value: Result<Option<String>, String>,
    name: &str,
) -> Result<String, EntraError> {
    match value {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(EntraError::NotConfigured {
            kind,
            why: format!("`{name}` is not set"),
        }),
        // Set but empty: an error, as for storage keys (never a silent move down the chain).
        Err(why) => Err(EntraError::InvalidConfig { kind, why }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_urls_are_checked() {
        let k = EntraKind::ClientSecret;
        assert_eq!(
            entra_token_url(k, "https://login.microsoftonline.us/", "contoso.onmicrosoft.com")
                .unwrap()
                .as_str(),
            "https://login.microsoftonline.us/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        for (host, tenant) in [
            ("http://login.microsoftonline.com", "t"),
            ("https://login.microsoftonline.com?x=1", "t"),
            ("https://user:Secret99@login.microsoftonline.com", "t"),
            ("login.microsoftonline.com", "t"),
            (DEFAULT_AUTHORITY_HOST, "../evil"),
            (DEFAULT_AUTHORITY_HOST, "a/b"),
            (DEFAULT_AUTHORITY_HOST, ""),
        ] {
            assert!(entra_token_url(k, host, tenant).is_err(), "{host} {tenant}");
        }
    }

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            body: body.as_bytes().to_vec(),
            sent_at: Instant::now(),
            sent_wall: SystemTime::now(),
        }
    }

    #[test]
    fn token_answers_and_errors() {
        let k = EntraKind::ManagedIdentity;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let f = token_from_answer(
            k,
            &[],
            &answer(200, r#"{"access_token":"abc","expires_in":"3599","expires_on":"1"}"#),
        )
        .unwrap();
        assert_eq!(f.lifetime, Duration::from_secs(3599));
        let body = format!(r#"{{"access_token":"abc","expires_on":"{}"}}"#, now + 100);
        let f = token_from_answer(k, &[], &answer(200, &body)).unwrap();
        assert!(f.lifetime <= Duration::from_secs(100) && f.lifetime >= Duration::from_secs(98));
        let huge = token_from_answer(
            k,
            &[],
            &answer(200, r#"{"access_token":"a","expires_in":99999999999999999999}"#),
        );
        assert!(huge.is_err(), "a number past u64 is not a lifetime");
        let far = token_from_answer(
            k,
            &[],
            &answer(200, r#"{"access_token":"a","expires_in":9999999999999}"#),
        )
        .unwrap();
        assert_eq!(far.lifetime, MAX_LIFETIME);
        for (text, secs) in [
            ("3.5e3", Some(3500)),
            ("3599", Some(3599)),
            ("3599.9", Some(3599)),
            ("1E2", Some(100)),
            ("36e-1", Some(3)),
            ("1e30", None),
            ("-5", None),
            ("1e", None),
            (".5", None),
            ("0x10", None),
            ("inf", None),
            ("NaN", None),
        ] {
            assert_eq!(parse_secs(text), secs, "{text}");
        }
        let exp = token_from_answer(k, &[], &answer(200, r#"{"access_token":"a","expires_in":3.5e3}"#)).unwrap();
        assert_eq!(exp.lifetime, Duration::from_secs(3500));
        for bad in [
            r#"{"access_token":"a"}"#,
            r#"{"access_token":"a b","expires_in":1}"#,
            r#"{"access_token":"","expires_in":1}"#,
            r#"{"expires_in":1}"#,
            r#"{"access_token":"a","expires_in":"-5"}"#,
            "<html>",
        ] {
            let e = token_from_answer(k, &[], &answer(200, bad)).unwrap_err();
            assert!(!e.is_definite(), "{bad}: {e}");
        }
        let e = token_from_answer(
            EntraKind::ClientSecret,
            &[],
            &answer(401, r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x","error_codes":[7000215]}"#),
        )
        .unwrap_err();
        assert!(e.is_definite());
        let text = e.to_string();
        assert!(
            text.contains("invalid_client") && text.contains("AADSTS7000215") && text.contains("401"),
            "{text}"
        );
        assert!(!text.contains('\n') && !text.contains('\r'), "{text}");
        for status in [404, 410, 429, 500, 503] {
            assert!(
                !token_from_answer(k, &[], &answer(status, ""))
                    .unwrap_err()
                    .is_definite(),
                "{status}"
            );
        }
        assert!(token_from_answer(k, &[], &answer(400, "not json"))
            .unwrap_err()
            .is_definite());
    }

    #[test]
    fn endpoint_text_never_carries_what_we_sent_or_a_token() {
        let secret = "s3cr3t+Val~ue/with \"quotes\"";
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJ4In0.c2lnbmF0dXJl";
        for echoed in [
            secret.to_string(),
            url::form_urlencoded::byte_serialize(secret.as_bytes()).collect::<String>(),
            percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC).to_string(),
            secret.replace('"', "\\\"").replace('/', "\\/"),
        ] {
            let text = format!("AADSTS900144: malformed request: client_secret={echoed}&assertion={jwt}");
            let out = scrub(&text, &[secret], 300);
            assert!(!out.contains("s3cr3t") && !out.contains("eyJhbGci"), "{out}");
            assert!(out.contains("AADSTS900144"), "{out}");
        }
        // Before the cut: a secret straddling the limit does not survive in part.
        let long = format!("{}{secret}", "x".repeat(290));
        assert!(!scrub(&long, &[secret], 300).contains("s3cr3t"));
        // Short `eyJ` words are left alone; empty secrets are ignored.
        assert_eq!(scrub("eyJ is short", &[""], 300), "eyJ is short");
    }
}
