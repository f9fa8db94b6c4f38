//! The REST client: builds, authorizes and sends Blob service requests, retries transient
//! failures inside a per-call deadline, and reads error answers.
//!
//! It knows HTTP and the service's conventions (headers, error bodies, retryable statuses), not
//! leases: [`AzureMutex`](crate::AzureMutex) gives meaning to the answers.
//! Conventions: [Versioning](https://learn.microsoft.com/en-us/rest/api/storageservices/versioning-for-the-azure-storage-services),
//! [Common REST API error codes](https://learn.microsoft.com/en-us/rest/api/storageservices/common-rest-api-error-codes).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use reqwest::Method;
use url::Url;

use crate::auth::{signer, Credential};
use crate::config::StorageConfig;
use crate::error::{sanitize_text, Error, InvalidInput, ServiceError, TransientCause};
use crate::transport::{error_chain, tls_problem};
pub use crate::transport::{Proxies, ProxyConfig};

/// The `x-ms-version` sent first when no version is pinned ([`ClientOptions::api_version`]).
///
/// `2025-11-05` is accepted by Azure and by Azurite 3.35 and later (Azurite accepts only the
/// versions it knows, up to `2026-06-06` in 3.37). Endpoints that refuse it (Azure Stack Hub,
/// older Azurite) answer `400 InvalidHeaderValue` naming `x-ms-version`, and the client steps
/// down to [`FALLBACK_API_VERSION`] once, for good.
/// See [Versioning for the Azure Storage services](https://learn.microsoft.com/en-us/rest/api/storageservices/versioning-for-the-azure-storage-services).
pub const DEFAULT_API_VERSION: &str = "2025-11-05";

/// The version a client steps down to when the endpoint refuses [`DEFAULT_API_VERSION`].
///
/// `2017-11-09` is the oldest version that carries every feature this crate uses: lease
/// actions with proposed lease ids and page blob sequence numbers (both `2012-02-12`), the
/// `Content-Length: 0` signing rule (`2015-02-21`), `x-ms-error-code` on every failure
/// (`2017-07-29`) and bearer tokens (`2017-11-09`). Azure Stack Hub and every Azurite release
/// of recent years accept it.
pub const FALLBACK_API_VERSION: &str = "2017-11-09";

/// The versions a client without a pinned version tries, in order: one step down at most.
pub const API_VERSIONS: [&str; 2] = [DEFAULT_API_VERSION, FALLBACK_API_VERSION];

/// The oldest version that may be pinned: older versions sign `Content-Length: 0` differently
/// and lack error codes in headers.
pub const MIN_API_VERSION: &str = "2015-02-21";

/// The most of a response body this client reads. Lease operations answer with no body, errors
/// with a few hundred bytes of XML; anything longer is cut here, so a hostile or broken server
/// cannot make the client buffer more than this.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The longest `<Message>` kept from an error body (characters), after control characters are
/// escaped.
pub const MAX_MESSAGE_CHARS: usize = 300;

/// The longest error code or request id kept from an answer (characters).
const MAX_CODE_CHARS: usize = 128;

/// The longest wait a `Retry-After` can ask for; larger values (up to 2^64 seconds, or dates
/// far away) are clamped to this before any time arithmetic.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Characters left unencoded in a blob path: unreserved characters and `/`.
const PATH_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

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
    /// The `x-ms-version` to send. `None` (the default): [`DEFAULT_API_VERSION`], stepping down
    /// once to [`FALLBACK_API_VERSION`] if the endpoint refuses it, and remembering that for
    /// this client and its clones. `Some(v)`: always `v` (a `YYYY-MM-DD` date, at least
    /// [`MIN_API_VERSION`], and `2017-11-09` or later with bearer tokens).
    pub api_version: Option<String>,
    /// The timeout of one HTTP request (default 5 s); a call's retries share its own deadline.
    pub request_timeout: Duration,
    /// The TCP connect timeout (default 3 s).
    pub connect_timeout: Duration,
    /// Retry behaviour.
    pub retry: RetryPolicy,
    /// Extra trusted certificates (PEM; each entry may be a bundle), for endpoints with a
    /// private CA. The system roots stay trusted. A server presenting exactly one of these
    /// certificates is trusted as that server even if it is self-signed with `CA:TRUE`; its
    /// dates and host name are still checked.
    pub ca_certificates_pem: Vec<Vec<u8>>,
    /// Proxies (default: from `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`).
    pub proxy: ProxyConfig,
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
        }
    }
}

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
        }
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

/// The service's error from an answer's status, headers and (possibly cut) body. Every text in
/// it is server-controlled: cut to a bounded length and stripped of control characters.
#[doc(hidden)]
pub fn service_error(status: u16, headers: &HeaderMap, body: &[u8]) -> ServiceError {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(|v| sanitize_text(v.trim(), MAX_CODE_CHARS))
            .filter(|v| !v.is_empty())
    };
    let (xml_code, message) = parse_error_body(body);
    ServiceError {
        status,
        code: h("x-ms-error-code").or(xml_code),
        request_id: h("x-ms-request-id"),
        message,
    }
}

/// Reads `<Error><Code>…</Code><Message>…</Message></Error>`; tolerant of empty, cut or non-XML
/// bodies, namespaced elements, entities, character references and CDATA. The code is cut to
/// 128 characters; the message to its first line and [`MAX_MESSAGE_CHARS`]; both have control
/// characters escaped.
/// See [Status and error codes](https://learn.microsoft.com/en-us/rest/api/storageservices/status-and-error-codes2).
#[doc(hidden)]
pub fn parse_error_body(body: &[u8]) -> (Option<String>, Option<String>) {
    use quick_xml::events::Event;
    #[derive(PartialEq)]
    enum Field {
        Code,
        Message,
    }
    // Enough of the raw text to cut from (a message's first line, a code).
    const KEEP: usize = 4 * MAX_MESSAGE_CHARS;
    let mut reader = quick_xml::Reader::from_reader(body);
    let (mut code, mut message) = (None, None);
    let mut depth = 0usize;
    let mut current: Option<(Field, usize)> = None;
    let mut text = String::new();
    let push = |text: &mut String, s: &str| {
        if text.len() < KEEP {
            let room = KEEP - text.len();
            let mut end = s.len().min(room);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            text.push_str(&s[..end]);
        }
    };
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                depth += 1;
                let field = match e.local_name().as_ref() {
                    b"Code" if code.is_none() => Some(Field::Code),
                    b"Message" if message.is_none() => Some(Field::Message),
                    _ => None,
                };
                if current.is_none() {
                    if let Some(f) = field {
                        current = Some((f, depth));
                        text.clear();
                    }
                }
            }
            Ok(Event::Text(t)) if current.is_some() => push(&mut text, &t.decode().unwrap_or_default()),
            Ok(Event::CData(t)) if current.is_some() => push(&mut text, &t.decode().unwrap_or_default()),
            Ok(Event::GeneralRef(r)) if current.is_some() => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => Some(c.to_string()),
                    Ok(None) => match r.as_ref() {
                        b"lt" => Some("<".into()),
                        b"gt" => Some(">".into()),
                        b"amp" => Some("&".into()),
                        b"apos" => Some("'".into()),
                        b"quot" => Some("\"".into()),
                        _ => None,
                    },
                    Err(_) => None,
                };
                if let Some(s) = resolved {
                    push(&mut text, &s);
                }
            }
            Ok(Event::End(_)) => {
                if let Some((field, d)) = &current {
                    if *d == depth {
                        let value = text.trim();
                        match field {
                            Field::Code => code = Some(sanitize_text(value, MAX_CODE_CHARS)).filter(|s| !s.is_empty()),
                            Field::Message => {
                                let first = value.lines().next().unwrap_or_default().trim();
                                message = Some(sanitize_text(first, MAX_MESSAGE_CHARS)).filter(|s| !s.is_empty())
                            }
                        }
                        current = None;
                    }
                }
                depth = depth.saturating_sub(1);
            }
            Ok(Event::Eof) | Err(_) => break,
            _ => {}
        }
        if code.is_some() && message.is_some() {
            break;
        }
    }
    (code, message)
}

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
        let http = crate::transport::http_client(&options, config.proxy.as_ref())?;
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

    /// Sends `req`, retrying transient failures (connection errors, timeouts, 408, 429, 500,
    /// 502, 503, 504, honouring `Retry-After`) until `deadline`.
    ///
    /// Returns every other answer, success or not, as a [`RestResponse`], except 401/403 which
    /// become [`Error::Auth`].
    pub async fn send(&self, req: &RestRequest, deadline: Instant) -> Result<RestResponse, Error> {
        let url = self.url(&req.container, req.blob.as_deref(), &req.query)?;
        let client_request_id = uuid::Uuid::new_v4().to_string();
        let mut attempts = 0u32;
        let mut earlier_outcome_unknown = false;
        loop {
            attempts += 1;
            // While the version is not settled, wait for the request trying it, bounded by this
            // call's deadline. A call whose deadline passes there sends nothing: an unsettled
            // version is only ever tried while holding the gate.
            let mut gate_closed = false;
            let trying = if req.bypass_version_gate || self.inner.settled.load(Ordering::Acquire) {
                None
            } else {
                let guard = tokio::time::timeout_at(deadline.into(), self.inner.negotiation.lock())
                    .await
                    .ok();
                gate_closed = guard.is_none() && !self.inner.settled.load(Ordering::Acquire);
                guard
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let timeout = self.inner.options.request_timeout.min(remaining);
            let version = self.api_version().to_string();
            let synthetic = timeout.is_zero() || gate_closed;
            let attempt = if synthetic {
                Attempt::Retry {
                    cause: TransientCause::Timeout,
                    throttled: None,
                    retry_after: None,
                    maybe_applied: false,
                }
            } else {
                self.attempt(req, &url, &client_request_id, &version, timeout, attempts)
                    .await?
            };
            let (cause, throttled, retry_after) = match attempt {
                Attempt::Done(resp) if self.step_down(&resp, &version, req.method == Method::HEAD) => {
                    // Refused at the door (nothing applied): the same request again, at once,
                    // with the older version; not counted against the retries.
                    tracing::info!(
                        op = req.op,
                        refused = %version,
                        now = self.api_version(),
                        "the endpoint refuses this x-ms-version; stepping down for this client"
                    );
                    attempts -= 1;
                    continue;
                }
                // A refusal after the endpoint has answered this client's version: a stray (a
                // node behind the endpoint that does not know the version yet, a proxy's
                // hiccup). Refused at the door, so retried like a transient failure, never a
                // downgrade and never a permanent error.
                Attempt::Done(resp)
                    if self.inner.options.api_version.is_none()
                        && self.inner.answered.load(Ordering::Acquire)
                        && resp.status == 400
                        && refuses_version(&resp, req.method == Method::HEAD) =>
                {
                    tracing::info!(op = req.op, version = %version, "a stray x-ms-version refusal; retrying");
                    let cause = TransientCause::Service(resp.error());
                    let mut streak = self.failures();
                    streak.attempts = streak.attempts.saturating_add(1);
                    streak.last = Some((cause.clone(), None, None));
                    drop(streak);
                    (cause, None, None)
                }
                Attempt::Done(mut resp) => {
                    // The endpoint answered this version: it is the one from now on.
                    self.inner.settled.store(true, Ordering::Release);
                    if !(resp.status == 400 && refuses_version(&resp, req.method == Method::HEAD)) {
                        self.inner.answered.store(true, Ordering::Release);
                    }
                    *self.failures() = FailureStreak::default();
                    if resp.status == 400
                        && refuses_version(&resp, req.method == Method::HEAD)
                        && (self.inner.options.api_version.is_some()
                            || API_VERSIONS.last().is_some_and(|last| *last == version))
                    {
                        // No version left to try: say so, and how to pick one.
                        let detail = if self.inner.options.api_version.is_some() {
                            format!(
                                "the endpoint refuses the service version {version} given with --api-version \
                                 (ClientOptions::api_version); give one it accepts, or none to negotiate"
                            )
                        } else {
                            format!(
                                "the endpoint refuses both service versions this client sends ({}); if it \
                                 accepts another, give it with --api-version YYYY-MM-DD (ClientOptions::api_version)",
                                API_VERSIONS.join(" and ")
                            )
                        };
                        return Err(Error::Unexpected {
                            service: resp.error(),
                            detail,
                        });
                    }
                    resp.attempts = attempts;
                    resp.earlier_outcome_unknown = earlier_outcome_unknown;
                    if resp.status == 401 || resp.status == 403 {
                        return Err(Error::Auth {
                            service: Some(resp.error()),
                            detail: clock_skew(&resp, SystemTime::now()).unwrap_or_default(),
                        });
                    }
                    return Ok(resp);
                }
                Attempt::Retry {
                    cause,
                    throttled,
                    retry_after,
                    maybe_applied,
                } => {
                    earlier_outcome_unknown |= maybe_applied;
                    if synthetic {
                        // Nothing was sent: not an attempt.
                        attempts -= 1;
                    } else {
                        let mut streak = self.failures();
                        streak.attempts = streak.attempts.saturating_add(1);
                        streak.last = Some((cause.clone(), throttled.clone(), retry_after));
                    }
                    (cause, throttled, retry_after)
                }
            };
            drop(trying);
            let wait = self
                .inner
                .options
                .retry
                .backoff(attempts)
                .max(retry_after.unwrap_or_default())
                .max(req.min_retry_gap);
            let wake = Instant::now().checked_add(wait);
            if wake.is_none_or(|w| w >= deadline) {
                // The report: the attempts in a row (this call's and the caller's earlier
                // calls'), and the last answer or error actually received, not a last attempt
                // that had no time left to be sent.
                let (attempts, cause, throttled, retry_after) = {
                    let streak = self.failures();
                    match (&streak.last, synthetic) {
                        (Some((c, t, r)), true) => (streak.attempts.max(attempts), c.clone(), t.clone(), *r),
                        _ => (streak.attempts.max(attempts), cause, throttled, retry_after),
                    }
                };
                tracing::warn!(op = req.op, attempts, cause = %cause, "giving up: call deadline reached");
                return Err(match throttled {
                    Some(service) => Error::Throttled {
                        attempts,
                        service,
                        retry_after,
                    },
                    None => Error::Transient {
                        attempts,
                        cause,
                        retry_after,
                    },
                });
            }
            tracing::debug!(op = req.op, attempts, cause = %cause, wait_ms = wait.as_millis() as u64, "retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// A failed tunnel explained: the proxy (printed without credentials) and the status its
    /// `CONNECT` answered (asked again, as the HTTP client does not report it). The failure is
    /// the proxy's, not the storage endpoint's.
    async fn tunnel_failure(&self, url: &Url) -> Option<String> {
        let proxy = crate::transport::proxy_for(&self.inner.options, self.inner.proxy.as_ref(), url)?;
        let shown = crate::config::redact_url(&proxy);
        Some(match crate::transport::connect_status(&proxy, url).await {
            Some(status) => {
                format!("the proxy {shown} refused to open a tunnel to the endpoint (CONNECT answered HTTP {status})")
            }
            None => format!("the proxy {shown} did not open a tunnel to the endpoint (CONNECT failed)"),
        })
    }

    /// The failure streak (see `Inner::failures`).
    fn failures(&self) -> std::sync::MutexGuard<'_, FailureStreak> {
        self.inner.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `resp` refuses `version` (400 `InvalidHeaderValue` naming `x-ms-version`, as
    /// Azure Stack Hub and Azurite answer) and this client stepped down to an older version
    /// for it. A pinned version is never changed; concurrent refusals step down once; and once
    /// the endpoint has answered a version (settled), a stray refusal is only that request's
    /// error: one odd answer (a misrouted request, a proxy's hiccup) must not downgrade the
    /// client and its clones for life.
    fn step_down(&self, resp: &RestResponse, version: &str, head: bool) -> bool {
        if self.inner.options.api_version.is_some()
            || self.inner.settled.load(Ordering::Acquire)
            || resp.status != 400
            || !refuses_version(resp, head)
        {
            return false;
        }
        let Some(from) = API_VERSIONS.iter().position(|v| *v == version) else {
            return false;
        };
        if from + 1 >= API_VERSIONS.len() {
            return false;
        }
        // Another request may have stepped down already: then just retry with its choice.
        let _ = self
            .inner
            .version
            .compare_exchange(from, from + 1, Ordering::Relaxed, Ordering::Relaxed);
        if from + 2 >= API_VERSIONS.len() {
            self.inner.settled.store(true, Ordering::Release);
        }
        true
    }

    async fn attempt(
        &self,
        req: &RestRequest,
        url: &Url,
        client_request_id: &str,
        version: &str,
        mut timeout: Duration,
        attempt: u32,
    ) -> Result<Attempt, Error> {
        let date = httpdate::fmt_http_date(SystemTime::now());
        let mut headers = HeaderMap::with_capacity(req.headers.len() + 6);
        let put = |headers: &mut HeaderMap, name: HeaderName, value: &str| -> Result<(), Error> {
            let value = HeaderValue::from_str(value).map_err(|_| InvalidInput::Option {
                option: "header",
                why: format!("the value of {name} is not a valid header value"),
            })?;
            headers.append(name, value);
            Ok(())
        };
        put(&mut headers, HeaderName::from_static("x-ms-date"), &date)?;
        put(&mut headers, HeaderName::from_static("x-ms-version"), version)?;
        put(
            &mut headers,
            HeaderName::from_static("x-ms-client-request-id"),
            client_request_id,
        )?;
        for (name, value) in &req.headers {
            put(&mut headers, name.clone(), value)?;
        }
        if req.method == Method::PUT || !req.body.is_empty() {
            put(
                &mut headers,
                reqwest::header::CONTENT_LENGTH,
                &req.body.len().to_string(),
            )?;
        }
        match &self.inner.credential {
            Credential::SharedKey { account, key } => {
                // Header values are bytes; the service (like HTTP/1.1's obs-text rule) reads bytes
                // outside ASCII as ISO-8859-1, so sign them that way instead of skipping them.
                let owned: Vec<(&str, std::borrow::Cow<'_, str>)> = headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), signer::latin1(v.as_bytes())))
                    .collect();
                let pairs: Vec<(&str, &str)> = owned.iter().map(|(n, v)| (*n, v.as_ref())).collect();
                let auth = signer::authorization(req.method.as_str(), url, pairs.iter().copied(), account, key);
                put(&mut headers, AUTHORIZATION, &auth)?;
            }
            Credential::Bearer(provider) => {
                // The token wait shares this request's timeout (so the call's deadline holds):
                // a provider that hangs or fails transiently is retried like a network error;
                // only a definite refusal is an authentication error.
                use crate::auth::{classify_token_error, TokenFailure};
                let asked = Instant::now();
                let retry = |why: String| Attempt::Retry {
                    cause: TransientCause::Network(why),
                    throttled: None,
                    retry_after: None,
                    maybe_applied: false,
                };
                let token = match tokio::time::timeout(timeout, provider.token()).await {
                    Ok(Ok(token)) => token,
                    Ok(Err(e)) => match classify_token_error(&*e) {
                        TokenFailure::Definite(detail) => return Err(Error::Auth { service: None, detail }),
                        TokenFailure::Tls(problem) => return Err(Error::Tls { problem }),
                        TokenFailure::Transient(why) => {
                            tracing::debug!(op = req.op, attempt, error = %why, "no token");
                            return Ok(retry(format!("no token: {why}")));
                        }
                    },
                    Err(_) => {
                        return Ok(retry(format!(
                            "no token within the request timeout ({} ms)",
                            timeout.as_millis()
                        )))
                    }
                };
                timeout = timeout.saturating_sub(asked.elapsed());
                if timeout.is_zero() {
                    return Ok(retry("no time left after waiting for a token".into()));
                }
                put(&mut headers, AUTHORIZATION, &format!("Bearer {}", token.0))?;
            }
            Credential::Sas(_) => {}
        }

        let request = self
            .inner
            .http
            .request(req.method.clone(), url.clone())
            .headers(headers)
            .timeout(timeout)
            .body(req.body.clone());
        let sent_at = Instant::now();
        let sent_at_wall = SystemTime::now();
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
        let result = request.send().await;
        let mut response = match result {
            Ok(r) => r,
            Err(e) => {
                if let Some(problem) = tls_problem(&e) {
                    tracing::debug!(op = req.op, attempt, problem = %problem, "TLS failure");
                    return Err(Error::Tls { problem });
                }
                let e = e.without_url();
                let chain = error_chain(&e);
                if chain.contains("proxy authorization required") {
                    return Err(proxy_refused());
                }
                // A failure to connect means nothing was sent; anything later may have been
                // applied by the service.
                let maybe_applied = !e.is_connect();
                let cause = if e.is_timeout() {
                    TransientCause::Timeout
                } else if chain.contains("tunnel error") {
                    TransientCause::Network(self.tunnel_failure(url).await.unwrap_or(chain))
                } else {
                    TransientCause::Network(chain)
                };
                tracing::debug!(op = req.op, attempt, cause = %cause, "request failed");
                return Ok(Attempt::Retry {
                    cause,
                    throttled: None,
                    retry_after: None,
                    maybe_applied,
                });
            }
        };
        let status = response.status().as_u16();
        if status == 407 {
            // A plain-HTTP request through a proxy that wants (other) credentials.
            return Err(proxy_refused());
        }
        let headers = response.headers().clone();
        let body = match read_capped(&mut response, MAX_BODY_BYTES).await {
            Ok((b, cut)) => {
                if cut {
                    tracing::debug!(
                        op = req.op,
                        attempt,
                        status,
                        "response body cut at {MAX_BODY_BYTES} bytes"
                    );
                }
                b
            }
            Err(e) => {
                let cause = if e.is_timeout() {
                    TransientCause::Timeout
                } else {
                    TransientCause::Network(error_chain(&e.without_url()))
                };
                return Ok(Attempt::Retry {
                    cause,
                    throttled: None,
                    retry_after: None,
                    maybe_applied: true,
                });
            }
        };
        tracing::debug!(
            op = req.op,
            attempt,
            status,
            request_id = %crate::error::sanitize_text(
                headers.get("x-ms-request-id").and_then(|v| v.to_str().ok()).unwrap_or(""),
                100
            ),
            error_code = %crate::error::sanitize_text(
                headers.get("x-ms-error-code").and_then(|v| v.to_str().ok()).unwrap_or(""),
                100
            ),
            elapsed_ms = sent_at.elapsed().as_millis() as u64,
            "response"
        );
        match status {
            408 | 429 | 500 | 502 | 503 | 504 => {
                let service = service_error(status, &headers, &body);
                let retry_after = headers
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after);
                let throttled = (status == 503 || status == 429).then(|| service.clone());
                Ok(Attempt::Retry {
                    cause: TransientCause::Service(service),
                    // 503 ServerBusy and 429 are refusals: the request was not carried out.
                    maybe_applied: throttled.is_none(),
                    throttled,
                    retry_after,
                })
            }
            _ => Ok(Attempt::Done(RestResponse {
                status,
                headers,
                sent_at,
                sent_at_wall,
                attempts: attempt,
                earlier_outcome_unknown: false,
                body,
            })),
        }
    }
}

/// How far apart the service's clock (its `Date` header) and ours are, if more than
/// [`SKEW_WORTH_SAYING`]: a refusal then most likely comes from the clock, since Shared Key and
/// SAS requests dated more than 15 minutes off are refused (users meet it as a bare
/// `AuthenticationFailed`).
fn clock_skew(resp: &RestResponse, now: SystemTime) -> Option<String> {
    let server = httpdate::parse_http_date(resp.header("date")?).ok()?;
    let (ahead, secs) = match now.duration_since(server) {
        Ok(d) => (true, d.as_secs()),
        Err(e) => (false, e.duration().as_secs()),
    };
    (secs > SKEW_WORTH_SAYING.as_secs()).then(|| {
        format!(
            "this machine's clock is {secs} s {} the service's (its Date header); requests dated more \
             than 15 minutes off are refused: fix the clock (NTP)",
            if ahead { "ahead of" } else { "behind" }
        )
    })
}

/// A clock difference below this is not mentioned in an authentication error.
const SKEW_WORTH_SAYING: Duration = Duration::from_secs(300);

/// The proxy refused the request for want of (valid) credentials: not transient.
fn proxy_refused() -> Error {
    Error::Auth {
        service: None,
        detail: "the proxy refused the request (407 Proxy Authentication Required): check the user and \
                 password in the proxy URL (--proxy, HTTPS_PROXY, HTTP_PROXY)"
            .into(),
    }
}

/// Whether an answer says the `x-ms-version` is not accepted: error code `InvalidHeaderValue`
/// with `<HeaderName>x-ms-version</HeaderName>` in the body (Azure, Azure Stack Hub), with a
/// message about the API version (Azurite), or any `InvalidHeaderValue` answer to a `HEAD`
/// (which has no body to say which header; every other header this client sends is checked
/// before the network, and a wrong guess only costs the step down to a version that also works).
fn refuses_version(resp: &RestResponse, head: bool) -> bool {
    let e = resp.error();
    if e.code.as_deref() != Some("InvalidHeaderValue") {
        return false;
    }
    if head {
        return true;
    }
    match error_body_field(resp.body(), b"HeaderName") {
        Some(h) => h.trim().eq_ignore_ascii_case("x-ms-version"),
        None => e.message.is_some_and(|m| m.contains("API version")),
    }
}

/// The text of the first element named `name` in an XML error body (bounded, like every body).
fn error_body_field(body: &[u8], name: &[u8]) -> Option<String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(body);
    let mut inside = false;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) if e.local_name().as_ref() == name => inside = true,
            Ok(Event::Text(t)) if inside => return Some(sanitize_text(&t.decode().ok()?, MAX_CODE_CHARS)),
            Ok(Event::End(_)) if inside => return Some(String::new()),
            Ok(Event::Eof) | Err(_) => return None,
            _ => {}
        }
    }
}

/// Checks a pinned `x-ms-version`: a `YYYY-MM-DD` date no older than [`MIN_API_VERSION`] (and
/// `2017-11-09` for bearer tokens).
fn check_api_version(v: &str, bearer: bool) -> Result<(), InvalidInput> {
    let refuse = |why: String| InvalidInput::Option {
        option: "api_version",
        why,
    };
    let b = v.as_bytes();
    let shape = b.len() == 10
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            _ => c.is_ascii_digit(),
        });
    let number = |r: std::ops::Range<usize>| v.get(r).and_then(|d| d.parse::<u32>().ok()).unwrap_or(0);
    if !shape || !(1..=12).contains(&number(5..7)) || !(1..=31).contains(&number(8..10)) {
        return Err(refuse(format!(
            "a service version is a date such as {DEFAULT_API_VERSION} ({} characters given)",
            v.chars().count()
        )));
    }
    if v < MIN_API_VERSION {
        return Err(refuse(format!(
            "{v} is older than {MIN_API_VERSION}, the oldest version this client can sign for"
        )));
    }
    if bearer && v < FALLBACK_API_VERSION {
        return Err(refuse(format!(
            "{v} does not accept bearer tokens (Entra ID needs {FALLBACK_API_VERSION} or later)"
        )));
    }
    Ok(())
}

/// Reads at most `cap` bytes of a body, chunk by chunk, and stops there (the rest is never read;
/// dropping the response closes the connection). Returns the bytes and whether the body was cut.
async fn read_capped(response: &mut reqwest::Response, cap: usize) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = cap - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// `Retry-After`: seconds or an HTTP date, clamped to [`MAX_RETRY_AFTER`].
#[doc(hidden)]
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Any run of digits, however long: a number past u64 is "very long" too.
        let secs = v.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    httpdate::parse_http_date(v).ok().map(|t| {
        t.duration_since(SystemTime::now())
            .unwrap_or_default()
            .min(MAX_RETRY_AFTER)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies() {
        let body = br#"<?xml version="1.0" encoding="utf-8"?><Error><Code>LeaseAlreadyPresent</Code><Message>There is already a lease present.
RequestId:abc
Time:2026-11-23T01:00:00Z</Message></Error>"#;
        let (code, msg) = parse_error_body(body);
        assert_eq!(code.as_deref(), Some("LeaseAlreadyPresent"));
        assert_eq!(msg.as_deref(), Some("There is already a lease present."));
        assert_eq!(parse_error_body(b""), (None, None));
        assert_eq!(parse_error_body(b"not xml <<"), (None, None));
    }

    #[test]
    fn error_bodies_with_entities_cdata_and_namespaces() {
        let (code, msg) = parse_error_body(
            br#"<e:Error xmlns:e="urn:x"><e:Code>Lease&#65;lready&amp;Present</e:Code><e:Message>a &lt;b&gt; <![CDATA[c & d]]> &quot;e&apos; &#x263A;</e:Message></e:Error>"#,
        );
        assert_eq!(code.as_deref(), Some("LeaseAlready&Present"));
        assert_eq!(msg.as_deref(), Some("a <b> c & d \"e' \u{263A}"));
        // Nested elements inside <Message> do not end it early; unknown entities are dropped.
        let (_, msg) = parse_error_body(b"<Error><Message>x<b>y</b>z &bogus; w</Message></Error>");
        assert_eq!(msg.as_deref(), Some("xyz  w"));
        // A cut body still gives the code.
        let (code, msg) = parse_error_body(b"<Error><Code>ServerBusy</Code><Message>abc");
        assert_eq!((code.as_deref(), msg), (Some("ServerBusy"), None));
    }

    #[test]
    fn server_text_is_bounded_and_inert() {
        let mut body = b"<Error><Code>X</Code><Message>".to_vec();
        body.extend(std::iter::repeat_n(b"\x1b[2J\xc2\x9b".as_slice(), 100_000).flatten());
        body.extend_from_slice(b"</Message></Error>");
        let (_, msg) = parse_error_body(&body);
        let msg = msg.unwrap();
        assert!(msg.chars().count() <= MAX_MESSAGE_CHARS + 1, "{}", msg.len());
        assert!(!msg.chars().any(crate::error::is_unsafe_char));
        let mut headers = HeaderMap::new();
        headers.insert("x-ms-error-code", HeaderValue::from_str(&"C".repeat(10_000)).unwrap());
        let e = service_error(500, &headers, b"");
        assert!(e.code.unwrap().chars().count() <= MAX_CODE_CHARS + 1);
    }

    #[test]
    fn retry_after_is_clamped() {
        for huge in [
            "9223372036854775808",
            "18446744073709551615",
            "184467440737095516150000",
        ] {
            assert_eq!(parse_retry_after(huge), Some(MAX_RETRY_AFTER), "{huge}");
        }
        assert_eq!(parse_retry_after(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT"),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let p = RetryPolicy::default();
        for i in 1..40 {
            let d = p.backoff(i);
            assert!(d <= p.max_backoff && d >= p.initial_backoff / 2, "{i}: {d:?}");
        }
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn version_refusals_are_recognised_and_nothing_else() {
        let resp = |code: &str, body: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("x-ms-error-code", HeaderValue::from_str(code).unwrap());
            RestResponse {
                status: 400,
                headers,
                sent_at: Instant::now(),
                sent_at_wall: SystemTime::now(),
                attempts: 1,
                earlier_outcome_unknown: false,
                body: body.as_bytes().to_vec(),
            }
        };
        // Azure / Azure Stack Hub (with the byte-order mark Azure puts before error bodies).
        let hub = "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>InvalidHeaderValue</Code><Message>The value for one of the HTTP headers is not in the correct format.\nRequestId:x</Message><HeaderName>x-ms-version</HeaderName><HeaderValue>2025-11-05</HeaderValue></Error>";
        assert!(refuses_version(&resp("InvalidHeaderValue", hub), false));
        // Azurite's wording.
        let azurite = "<Error><Code>InvalidHeaderValue</Code><Message>The API version 2099-01-01 is not supported by Azurite. Please upgrade Azurite</Message></Error>";
        assert!(refuses_version(&resp("InvalidHeaderValue", azurite), false));
        // Another header, or no body on a PUT: not a version problem.
        let lease = hub.replace("x-ms-version", "x-ms-lease-duration");
        assert!(!refuses_version(&resp("InvalidHeaderValue", &lease), false));
        assert!(!refuses_version(&resp("InvalidHeaderValue", ""), false));
        assert!(!refuses_version(&resp("InvalidQueryParameterValue", hub), false));
        // A HEAD answer has no body: the code alone.
        assert!(refuses_version(&resp("InvalidHeaderValue", ""), true));
        assert!(!refuses_version(&resp("LeaseNotPresentWithLeaseOperation", ""), true));
    }

    #[test]
    fn pinned_versions_are_checked() {
        for ok in ["2015-02-21", "2017-11-09", "2025-11-05", "2099-12-31"] {
            assert!(check_api_version(ok, false).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "2017-11-9",
            "2017_11_09",
            "20171109",
            "2017-11-09 ",
            "2015-02-20",
            "２０１７-11-09",
        ] {
            assert!(check_api_version(bad, false).is_err(), "{bad:?}");
        }
        assert!(check_api_version("2017-04-17", false).is_ok());
        assert!(check_api_version("2017-04-17", true).is_err());
        assert!(check_api_version("2017-11-09", true).is_ok());
    }

    #[test]
    fn urls_are_encoded_and_sas_appended() {
        let cfg = StorageConfig::parse_connection_string(
            "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;SharedAccessSignature=sv=1&sig=a%2Bb",
        )
        .unwrap();
        let c = BlobClient::new(&cfg, ClientOptions::default()).unwrap();
        let url = c
            .url("locks", Some("nightly job/é"), &[("comp", "lease".into())])
            .unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:10000/devstoreaccount1/locks/nightly%20job/%C3%A9?comp=lease&sv=1&sig=a%2Bb"
        );
        assert!(!format!("{c:?}").contains("a%2Bb"));
    }
}
