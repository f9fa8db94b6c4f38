//! The REST client: builds, authorizes and sends Blob service requests, retries transient
//! failures inside a per-call deadline, and reads error answers.
//!
//! It knows HTTP and the service's conventions (headers, error bodies, retryable statuses), not
//! leases: [`AzureMutex`](crate::AzureMutex) gives meaning to the answers.
//! Conventions: [Versioning](https://learn.microsoft.com/en-us/rest/api/storageservices/versioning-for-the-azure-storage-services),
//! [Common REST API error codes](https://learn.microsoft.com/en-us/rest/api/storageservices/common-rest-api-error-codes).

mod error_body;
mod request;
mod schedule;
mod send;
#[cfg(test)]
mod tests;
mod version;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::Method;
use url::Url;

use crate::auth::{signer, Credential};
use crate::config::StorageConfig;
use crate::error::{sanitize_text, Error, InvalidInput, ServiceError, TransientCause};
use crate::transport::{error_chain, tls_problem};
pub use crate::transport::{
    ClientOptions, Proxies, ProxyConfig, RetryPolicy, DEFAULT_ACQUIRE_RATE, DEFAULT_MAX_CONNECTIONS, MAX_BODY_BYTES,
};
pub(crate) use error_body::xml_entity;
pub use error_body::{parse_error_body, parse_retry_after, service_error, MAX_MESSAGE_CHARS, MAX_RETRY_AFTER};
pub use request::{RestRequest, RestResponse};
use version::check_api_version;
pub use version::{API_VERSIONS, DEFAULT_API_VERSION, FALLBACK_API_VERSION, MIN_API_VERSION};

/// Characters left unencoded in a blob path: unreserved characters and `/`.
const PATH_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');
/// The Blob service REST client. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct BlobClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    endpoint: Url,
    /// The configuration's own proxy (`DevelopmentStorageProxyUri`), to name a failing proxy.
    proxy: Option<Url>,
    credential: Credential,
    options: ClientOptions,
    requests: AtomicU64,
    /// Index into [`API_VERSIONS`] of the version sent (unused when a version is pinned).
    version: AtomicUsize,
    /// Whether the version is settled: pinned, answered by the endpoint, or the last one.
    settled: AtomicBool,
    /// Until the version is settled, one request at a time tries it, so that a refusal costs
    /// one extra request per client however many calls start together.
    negotiation: tokio::sync::Mutex<()>,
    /// Whether the endpoint has answered a version with anything but a refusal: a refusal
    /// after that is a stray, retried (see [`BlobClient::send`]).
    answered: AtomicBool,
    /// For give-up reports: failed attempts in a row across calls (a caller retrying with
    /// calls of its own, as a wait or a renewal loop does), and the last real failure (an
    /// attempt that was sent), so that a last call left with no time to send anything does not
    /// report "1 attempts (request timed out)" after dozens of service answers.
    failures: std::sync::Mutex<FailureStreak>,
    /// Whose request goes next when the client is busy (see [`schedule`]).
    schedule: Arc<schedule::Schedule>,
}

/// Failed attempts in a row and the last one's cause (see `Inner::failures`).
#[derive(Default)]
struct FailureStreak {
    attempts: u32,
    last: Option<(TransientCause, Option<ServiceError>, Option<Duration>)>,
}

impl std::fmt::Debug for BlobClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobClient")
            .field("endpoint", &self.inner.endpoint.as_str())
            .field("credential", &self.inner.credential)
            .finish()
    }
}

enum Attempt {
    Done(RestResponse),
    Retry {
        cause: TransientCause,
        throttled: Option<ServiceError>,
        retry_after: Option<Duration>,
        /// Whether the service may have applied the request.
        maybe_applied: bool,
    },
}

impl BlobClient {
    /// Makes a client for `config`. Installs rustls's `ring` provider as the process default if
    /// no provider is installed yet.
    pub fn new(config: &StorageConfig, options: ClientOptions) -> Result<Self, InvalidInput> {
        if let Some(v) = &options.api_version {
            check_api_version(v, matches!(config.credential, Credential::Bearer(_)))?;
        }
        // Also for a `StorageConfig` made as a struct literal, past its constructors' checks:
        // a bearer token never travels in clear text beyond this machine.
        if matches!(config.credential, Credential::Bearer(_)) {
            crate::config::check_bearer_endpoint("endpoint", &config.endpoint, true).map_err(|e| {
                InvalidInput::Option {
                    option: "endpoint",
                    why: e.to_string(),
                }
            })?;
        }
        let http = crate::transport::http_client(&options, config.proxy.as_ref(), config.endpoint.scheme() == "https")?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                endpoint: config.endpoint.clone(),
                proxy: config.proxy.clone(),
                credential: config.credential.clone(),
                requests: AtomicU64::new(0),
                version: AtomicUsize::new(0),
                settled: AtomicBool::new(options.api_version.is_some()),
                negotiation: tokio::sync::Mutex::new(()),
                answered: AtomicBool::new(false),
                failures: std::sync::Mutex::new(FailureStreak::default()),
                schedule: Arc::new(schedule::Schedule::new(&options)),
                options,
            }),
        })
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Url {
        &self.inner.endpoint
    }

    /// The options.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// The `x-ms-version` this client sends now: the pinned one, or the one negotiated so far.
    pub fn api_version(&self) -> &str {
        match &self.inner.options.api_version {
            Some(v) => v,
            None => API_VERSIONS[self.inner.version.load(Ordering::Relaxed).min(API_VERSIONS.len() - 1)],
        }
    }

    /// HTTP requests sent so far by this client and its clones (retries included).
    pub fn requests_sent(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// Requests of this client (and its clones) in flight now, and requests waiting for a
    /// turn (see [`ClientOptions::max_connections`]).
    pub fn load(&self) -> (usize, usize) {
        self.inner.schedule.load()
    }

    /// The deadline of a call started now with the default call timeout.
    pub fn default_deadline(&self) -> Instant {
        let now = Instant::now();
        // An absurd call timeout (Duration::MAX) means "a very long time", never a panic.
        now.checked_add(self.inner.options.retry.call_timeout)
            .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
            .unwrap_or(now)
    }

    /// The URL of a container or blob, with `query` (and the SAS token, if any) appended.
    pub fn url(
        &self,
        container: &str,
        blob: Option<&str>,
        query: &[(&'static str, String)],
    ) -> Result<Url, InvalidInput> {
        let mut s = String::with_capacity(128);
        s.push_str(self.inner.endpoint.as_str().trim_end_matches('/'));
        s.push('/');
        s.push_str(container);
        if let Some(blob) = blob {
            s.push('/');
            s.extend(utf8_percent_encode(blob, PATH_SET));
        }
        let mut sep = '?';
        for (k, v) in query {
            s.push(sep);
            sep = '&';
            s.push_str(k);
            s.push('=');
            s.extend(utf8_percent_encode(v, NON_ALPHANUMERIC));
        }
        if let Credential::Sas(sas) = &self.inner.credential {
            s.push(sep);
            s.push_str(sas.query());
        }
        Url::parse(&s).map_err(|e| InvalidInput::Option {
            option: "url",
            why: e.to_string(),
        })
    }
}
