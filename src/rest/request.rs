//! A request before authorization, and an answer with its (bounded) body.

use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, HeaderName};

use super::*;

/// One request to the Blob service, before authorization.
#[derive(Debug, Clone)]
pub struct RestRequest {
    /// The HTTP method.
    pub method: Method,
    /// The container.
    pub container: String,
    /// The blob, or `None` for a container request.
    pub blob: Option<String>,
    /// Query parameters (not yet encoded), e.g. `("comp", "lease")`.
    pub query: Vec<(&'static str, String)>,
    /// Headers other than the ones the client adds (`x-ms-date`, `x-ms-version`,
    /// `x-ms-client-request-id`, `Authorization`, `Content-Length`).
    pub headers: Vec<(HeaderName, String)>,
    /// The body (empty for every lease operation).
    pub body: Vec<u8>,
    /// A short name for logs, e.g. `acquire`.
    pub op: &'static str,
    /// Send at once even while the service version is being negotiated, with the version
    /// known so far, instead of waiting behind the request that is trying it. For cleanup
    /// (releasing a lease that an abandoned attempt may have got): it must go out within its
    /// own short deadline whatever else is in flight.
    pub bypass_version_gate: bool,
    /// The least time between this request's retries (default zero: the retry policy alone
    /// decides). Renewals use one second, so that one lease never costs a throttled account more
    /// than one request a second.
    pub min_retry_gap: Duration,
    /// The most of the answer's body read (default [`MAX_BODY_BYTES`](crate::transport::MAX_BODY_BYTES));
    /// only listings ask for more.
    pub max_body: usize,
}

impl RestRequest {
    /// A request without query, headers or body.
    pub fn new(op: &'static str, method: Method, container: &str, blob: Option<&str>) -> Self {
        Self {
            method,
            container: container.to_string(),
            blob: blob.map(str::to_string),
            query: Vec::new(),
            headers: Vec::new(),
            body: Vec::new(),
            op,
            bypass_version_gate: false,
            min_retry_gap: Duration::ZERO,
            max_body: crate::transport::MAX_BODY_BYTES,
        }
    }

    /// Sets [`RestRequest::max_body`].
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Sets [`RestRequest::min_retry_gap`].
    pub fn min_retry_gap(mut self, gap: Duration) -> Self {
        self.min_retry_gap = gap;
        self
    }

    /// Marks the request as cleanup: see [`RestRequest::bypass_version_gate`].
    pub fn bypassing_version_gate(mut self) -> Self {
        self.bypass_version_gate = true;
        self
    }

    /// Adds a query parameter.
    pub fn query(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.query.push((name, value.into()));
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((HeaderName::from_static(name), value.into()));
        self
    }

    /// Adds a header with a name made at run time (e.g. `x-ms-meta-*`), lower-cased.
    pub fn header_owned(mut self, name: &str, value: impl Into<String>) -> Result<Self, InvalidInput> {
        let name = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).map_err(|_| InvalidInput::Option {
            option: "header",
            why: format!("{name:?} is not a valid header name"),
        })?;
        self.headers.push((name, value.into()));
        Ok(self)
    }
}

/// A response that was not retried away: success or a definite (non-transient) failure.
#[derive(Debug)]
pub struct RestResponse {
    /// The HTTP status.
    pub status: u16,
    /// The headers.
    pub headers: HeaderMap,
    /// When the request that got this answer was sent (before connecting).
    pub sent_at: Instant,
    /// The wall-clock time at `sent_at` (a second clock, which keeps counting while the machine
    /// sleeps: the monotonic clock does not).
    pub sent_at_wall: SystemTime,
    /// How many requests this call made (1 if not retried).
    pub attempts: u32,
    /// Whether an earlier attempt of this call may have been applied by the service although
    /// its answer never came (a timeout, a connection broken after sending, 500, 502, 504 or
    /// 408). `false` when every earlier attempt is known not to have been applied (connection
    /// refused, 503 `ServerBusy`, 429) or there was none. A retry's answer must be read in that
    /// light: e.g. a release whose first attempt was applied gets "lease id mismatch" on retry.
    pub earlier_outcome_unknown: bool,
    pub(crate) body: Vec<u8>,
}

impl RestResponse {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The service's error: status, `x-ms-error-code` (or the XML `<Code>`), request id and message.
    pub fn error(&self) -> ServiceError {
        service_error(self.status, &self.headers, &self.body)
    }

    /// The response body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}
