//! What every HTTP request of this crate is made with: the client's options (timeouts,
//! retries, trusted certificates, proxies, a pinned service version) and the body limit. Blob
//! requests and token requests alike take them from here.

use std::time::Duration;

use super::ProxyConfig;

/// The most of a response body this client reads. Lease operations answer with no body, errors
/// with a few hundred bytes of XML; anything longer is cut here, so a hostile or broken server
/// cannot make the client buffer more than this.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The default of [`ClientOptions::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// The default of [`ClientOptions::acquire_rate`]: 500 acquire requests a second per client.
/// Enough to take 10,000 locks in 20 s, and a small share of an account's
/// [scalability targets](https://learn.microsoft.com/en-us/azure/storage/common/scalability-targets-standard-account)
/// (20,000 requests a second); lock names that sort together (`job-00001`, `job-00002`, …)
/// land in one partition range, which a burst would hit all at once.
pub const DEFAULT_ACQUIRE_RATE: u32 = 500;

/// How transient failures are retried: capped, jittered exponential backoff.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// The first backoff.
    pub initial_backoff: Duration,
    /// The largest backoff.
    pub max_backoff: Duration,
    /// How long one call (with all its retries) may take unless the caller sets a deadline.
    pub call_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(4),
            call_timeout: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The backoff before retry number `retry` (1-based): exponential, capped, with jitter in
    /// `[d/2, d]` so that clients that failed together do not retry together.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16));
        let capped = exp.min(self.max_backoff);
        let half = capped / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// Options of the HTTP client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The `x-ms-version` to send. `None` (the default): [`DEFAULT_API_VERSION`](crate::rest::DEFAULT_API_VERSION), stepping down
    /// once to [`FALLBACK_API_VERSION`](crate::rest::FALLBACK_API_VERSION) if the endpoint refuses it, and remembering that for
    /// this client and its clones. `Some(v)`: always `v` (a `YYYY-MM-DD` date, at least
    /// [`MIN_API_VERSION`](crate::rest::MIN_API_VERSION), and `2017-11-09` or later with bearer tokens).
    pub api_version: Option<String>,
    /// The timeout of one HTTP request (default 5 s); a call's retries share its own deadline.
    pub request_timeout: Duration,
    /// The TCP connect timeout (default 3 s).
    pub connect_timeout: Duration,
    /// Retry behaviour.
    pub retry: RetryPolicy,
    /// Extra trusted certificates (PEM; each entry may be a bundle), for endpoints with a
    /// private CA. The system roots stay trusted. A server presenting exactly one of these
    /// certificates, self-signed, is trusted as that server even with `CA:TRUE`; its dates and
    /// host name are still checked. A server certificate issued by another CA is checked as a
    /// chain: name that CA.
    pub ca_certificates_pem: Vec<Vec<u8>>,
    /// Proxies (default: from `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`).
    pub proxy: ProxyConfig,
    /// The most requests in flight at once for this client and its clones (default 64). Blob
    /// storage speaks HTTP/1.1, so this bounds the connections in use too. Requests over it
    /// wait for a turn, lease upkeep (renew, release, change) first; an eighth of them (at least
    /// one, from 2 on) is kept for upkeep, so requests that hang cannot hold up a renewal.
    pub max_connections: usize,
    /// Acquire requests a second for this client and its clones (default 500; 0: no pace).
    /// A bulk acquisition is spread out at this rate (bursts of a tenth of a second's worth);
    /// renewals and releases are never held back by it.
    pub acquire_rate: u32,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            api_version: None,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            retry: RetryPolicy::default(),
            ca_certificates_pem: Vec::new(),
            proxy: ProxyConfig::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            acquire_rate: DEFAULT_ACQUIRE_RATE,
        }
    }
}
