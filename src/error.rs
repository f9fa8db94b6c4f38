//! Errors of the lease layer ([`AzureMutex`](crate::AzureMutex) and the REST client under it).
//!
//! [`Error`] separates what a caller must decide on; every variant that came from the service
//! carries a [`ServiceError`] with the HTTP status, `x-ms-error-code` and request id.
//! Error codes: [Blob service error codes](https://learn.microsoft.com/en-us/rest/api/storageservices/blob-service-error-codes).

use std::fmt;
use std::time::Duration;

/// What the service said when a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    /// The HTTP status code.
    pub status: u16,
    /// The `x-ms-error-code` header (or `<Code>` of the XML body), when given.
    pub code: Option<String>,
    /// The `x-ms-request-id` header, to quote to Azure support.
    pub request_id: Option<String>,
    /// The `<Message>` of the XML body, first line, when given.
    pub message: Option<String>,
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        if let Some(code) = &self.code {
            write!(f, " {code}")?;
        }
        if let Some(msg) = &self.message {
            write!(f, ": {msg}")?;
        }
        if let Some(id) = &self.request_id {
            write!(f, " (request id {id})")?;
        }
        Ok(())
    }
}

impl ServiceError {
    /// Whether the error code equals `code`.
    pub fn is(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }
}

/// Why a lease is no longer ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LostReason {
    /// The lock is leased under another id (`LeaseIdMismatchWithLeaseOperation`): someone else
    /// holds it, or our lease expired and was re-acquired.
    IdMismatch,
    /// The lease was broken (`LeaseIsBrokenAndCannotBeRenewed`, `LeaseIsBreaking…`).
    Broken,
    /// There is no lease on the lock any more (`LeaseNotPresentWithLeaseOperation`).
    NotPresent,
    /// The lock blob (or its container) was deleted.
    Deleted,
    /// The service answered a renewal with a different lease id than ours.
    ReturnedOtherId,
    /// No renewal was confirmed before the local deadline (counted from the send time of the last
    /// successful request, minus the safety margin).
    Expired,
    /// A renewal was refused for good (authentication, permission): the lease will expire.
    RenewalRefused,
    /// The release's answer was lost and a retry found the lease gone: most likely the lost
    /// attempt released it, but it cannot be confirmed that the lease was ours until then (it
    /// may have been broken and taken). Counted as a loss where success must mean "held to the
    /// end".
    Unconfirmed,
}

impl LostReason {
    /// A short machine-readable name (`id_mismatch`, `broken`, `not_present`, `deleted`,
    /// `returned_other_id`, `expired`, `renewal_refused`, `unconfirmed`): the `reason` label of
    /// `azmutex_losses_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::IdMismatch => "id_mismatch",
            Self::Broken => "broken",
            Self::NotPresent => "not_present",
            Self::Deleted => "deleted",
            Self::ReturnedOtherId => "returned_other_id",
            Self::Expired => "expired",
            Self::RenewalRefused => "renewal_refused",
            Self::Unconfirmed => "unconfirmed",
        }
    }
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::IdMismatch => "the lock is leased under another lease id",
            Self::Broken => "the lease was broken",
            Self::NotPresent => "there is no lease on the lock any more",
            Self::Deleted => "the lock blob or its container was deleted",
            Self::ReturnedOtherId => "the service answered with another lease id",
            Self::Expired => "no renewal was confirmed before the local deadline",
            Self::RenewalRefused => "renewal was refused (authentication or permission)",
            Self::Unconfirmed => {
                "the release's answer was lost, so it cannot be confirmed that the lease was ours to the end"
            }
        })
    }
}

/// What made a transient failure transient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransientCause {
    /// The service answered 408, 500, 502 or 504.
    Service(ServiceError),
    /// The connection failed or broke (the message has no URL, so no SAS signature).
    Network(String),
    /// The request timed out.
    Timeout,
}

impl fmt::Display for TransientCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Service(e) => write!(f, "{e}"),
            Self::Network(e) => write!(f, "network error: {e}"),
            Self::Timeout => f.write_str("request timed out"),
        }
    }
}

/// What was wrong with the server's TLS certificate or handshake. Not transient: retrying does
/// not help, the configuration must change (`--ca-cert`, the endpoint's host name or scheme).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsProblem {
    /// The certificate was issued by a CA this client does not trust.
    UnknownIssuer,
    /// The certificate is not valid for the endpoint's host name.
    NameMismatch,
    /// The certificate has expired (or is not valid yet: check this machine's clock).
    Expired,
    /// The endpoint does not speak TLS (an `http://` server behind an `https://` URL?).
    NotTls,
    /// The server presents a CA certificate as its own (a self-signed certificate made with
    /// `CA:TRUE`, as `openssl req -x509` does by default) that was not named as trusted: name
    /// that very certificate with `--ca-cert` / [`ClientOptions::ca_certificates_pem`](crate::ClientOptions::ca_certificates_pem)
    /// (or `SSL_CERT_FILE`) to trust it.
    CaAsServerCertificate,
    /// Another certificate or handshake failure (the text is rustls's, without any URL).
    Other(String),
}

impl fmt::Display for TlsProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownIssuer => f.write_str(
                "the server's certificate is issued by an unknown (untrusted) CA; add the CA with --ca-cert / ClientOptions::ca_certificates_pem",
            ),
            Self::NameMismatch => f.write_str(
                "the server's certificate is not valid for the endpoint's host name; use the name the certificate was issued for",
            ),
            Self::Expired => f.write_str(
                "the server's certificate has expired or is not yet valid; renew it or check this machine's clock",
            ),
            Self::NotTls => f.write_str(
                "the server does not speak TLS; use http:// if the endpoint is plain HTTP (e.g. a local emulator)",
            ),
            Self::CaAsServerCertificate => f.write_str(
                "the server's certificate is self-signed (a CA certificate, CA:TRUE) and not trusted; to trust it, pass that certificate with --ca-cert / ClientOptions::ca_certificates_pem",
            ),
            Self::Other(detail) => write!(f, "TLS handshake failed: {detail}"),
        }
    }
}

/// Makes server- or user-controlled text safe to print on a terminal: control characters
/// (C0, DEL, C1, including ESC and CSI) and bidirectional/invisible formatting characters are
/// replaced by `\u{..}` escapes, and the text is cut to at most `max_chars` characters (with
/// `…` when cut). Used for the service's `<Message>`, holder records and anything else a server
/// or another lock user can set.
///
/// ```
/// assert_eq!(azmutex::error::sanitize_text("a\x1b[2Jb", 80), "a\\u{1b}[2Jb");
/// assert_eq!(azmutex::error::sanitize_text("abcdef", 3), "abc…");
/// ```
pub fn sanitize_text(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars.saturating_mul(4)));
    let mut used = 0usize;
    for c in text.chars() {
        let piece = if is_unsafe_char(c) {
            format!("\\u{{{:x}}}", c as u32)
        } else {
            c.to_string()
        };
        let n = piece.chars().count();
        if used + n > max_chars {
            out.push('…');
            break;
        }
        used += n;
        out.push_str(&piece);
    }
    out
}

/// Whether `c` is a control character or an invisible formatting character that can reorder or
/// hide text on a terminal (the characters [`sanitize_text`] escapes).
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}' | '\u{061c}')
}

/// Input refused before any request was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidInput {
    /// The lock name breaks the blob naming rules.
    #[error("invalid lock name {name:?}: {why}")]
    LockName {
        /// The name.
        name: String,
        /// Which rule.
        why: String,
    },
    /// The container name breaks the container naming rules.
    #[error("invalid container name {name:?}: use 3-63 lower-case letters, digits and single hyphens, starting and ending with a letter or digit")]
    ContainerName {
        /// The name.
        name: String,
    },
    /// A lease duration outside 15–60 s.
    #[error("invalid lease duration {seconds}s: a lease lasts 15-60 seconds or is infinite")]
    LeaseDuration {
        /// The seconds given.
        seconds: u64,
    },
    /// A break period over 60 s.
    #[error("invalid break period {seconds}s: it must be 0-60 seconds")]
    BreakPeriod {
        /// The seconds given.
        seconds: u64,
    },
    /// A lease id that is not a GUID. The value is not quoted: a secret pasted into the wrong
    /// option (an account key as `--lease-id`) must not be printed.
    #[error(
        "invalid lease id ({chars} characters): a lease id is a GUID such as 3f2504e0-4f89-41d3-9a0c-0305e82c3301"
    )]
    LeaseId {
        /// How many characters were given.
        chars: usize,
    },
    /// A CA certificate that could not be read as PEM.
    #[error("invalid CA certificate: {0}")]
    CaCertificate(String),
    /// Some other option is out of range.
    #[error("invalid option `{option}`: {why}")]
    Option {
        /// The option.
        option: &'static str,
        /// Why.
        why: String,
    },
}

/// `; <detail>` when an `Auth` error has both a service answer and more to say (e.g. a clock
/// off by minutes).
fn auth_detail(service: &Option<ServiceError>, detail: &str) -> String {
    if service.is_some() && !detail.is_empty() {
        format!("; {detail}")
    } else {
        String::new()
    }
}

/// An error of the lease layer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The lock is held by another lease (`LeaseAlreadyPresent`,
    /// `LeaseIsBreakingAndCannotBeAcquired`).
    #[error("lock {lock:?} is held by another client ({service})")]
    Conflict {
        /// The lock.
        lock: String,
        /// The service's answer.
        service: ServiceError,
    },
    /// Our lease is lost, mismatched or broken.
    #[error("lease on lock {lock:?} is lost: {reason}{}", opt(.service))]
    LeaseLost {
        /// The lock.
        lock: String,
        /// Why.
        reason: LostReason,
        /// The service's answer, when one said so.
        service: Option<ServiceError>,
    },
    /// The container or blob does not exist (and the crate was not allowed to create it).
    #[error("{what} not found ({service})")]
    NotFound {
        /// `container "x"` or `lock blob "y"`.
        what: String,
        /// The service's answer.
        service: ServiceError,
    },
    /// Authentication failed or permission was refused (403, 401). Not retried: check the key,
    /// SAS permissions and expiry, or the client's clock (Azure refuses requests dated more than
    /// 15 minutes off).
    #[error("authentication or permission refused ({}){}", match .service { Some(s) => s.to_string(), None => .detail.clone() }, auth_detail(.service, .detail))]
    Auth {
        /// The service's answer (none when the token provider failed).
        service: Option<ServiceError>,
        /// More detail.
        detail: String,
    },
    /// Input refused before the network.
    #[error(transparent)]
    InvalidInput(#[from] InvalidInput),
    /// The service kept throttling (503 `ServerBusy`, 429) until the call's deadline.
    #[error("storage is throttling requests; gave up after {attempts} attempts ({service})")]
    Throttled {
        /// Requests made.
        attempts: u32,
        /// The last answer.
        service: ServiceError,
        /// How long the service asked to wait before the next try (`Retry-After`), if it did.
        retry_after: Option<Duration>,
    },
    /// Network failures, timeouts or transient server errors until the call's deadline.
    #[error("storage unreachable or failing; gave up after {attempts} attempts ({cause})")]
    Transient {
        /// Requests made.
        attempts: u32,
        /// The last failure.
        cause: TransientCause,
        /// How long the service asked to wait before the next try (`Retry-After`), if it did.
        retry_after: Option<Duration>,
    },
    /// The lock's fencing counter reached the end of its range: no larger token can be handed
    /// out, so no lease is kept. Reset it by deleting the lock blob (a new one starts from the
    /// clock).
    #[error("fencing counter of lock {lock:?} is exhausted (at its maximum); no lease kept")]
    FencingExhausted {
        /// The lock.
        lock: String,
    },
    /// The TLS handshake failed: an untrusted, mismatched or expired certificate, or a server
    /// that does not speak TLS. Not retried: it is a configuration problem.
    #[error("TLS failure: {problem}")]
    Tls {
        /// What was wrong.
        problem: TlsProblem,
    },
    /// An answer this crate did not expect.
    #[error("unexpected response: {service}{}", if .detail.is_empty() { String::new() } else { format!(" ({})", .detail) })]
    Unexpected {
        /// The answer.
        service: ServiceError,
        /// What was unexpected.
        detail: String,
    },
}

fn opt(s: &Option<ServiceError>) -> String {
    s.as_ref().map(|s| format!(" ({s})")).unwrap_or_default()
}

impl Error {
    /// The service's answer behind this error, if there was one.
    pub fn service(&self) -> Option<&ServiceError> {
        match self {
            Error::Conflict { service, .. }
            | Error::NotFound { service, .. }
            | Error::Throttled { service, .. }
            | Error::Unexpected { service, .. } => Some(service),
            Error::LeaseLost { service, .. } | Error::Auth { service, .. } => service.as_ref(),
            Error::Transient {
                cause: TransientCause::Service(s),
                ..
            } => Some(s),
            _ => None,
        }
    }

    /// The HTTP status, when the service answered.
    pub fn status(&self) -> Option<u16> {
        self.service().map(|s| s.status)
    }

    /// The `x-ms-error-code`, when the service gave one.
    pub fn error_code(&self) -> Option<&str> {
        self.service().and_then(|s| s.code.as_deref())
    }

    /// The `x-ms-request-id`, when the service gave one.
    pub fn request_id(&self) -> Option<&str> {
        self.service().and_then(|s| s.request_id.as_deref())
    }

    /// Whether trying again later may succeed (throttling, network, transient server errors).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Throttled { .. } | Error::Transient { .. })
    }

    /// Whether this error says the lease is lost: [`Error::LeaseLost`], whatever the reason
    /// (one way to ask across [`Error`], [`crate::LockError`] and [`LostReason`]).
    pub fn is_lost(&self) -> bool {
        self.lost_reason().is_some()
    }

    /// Why the lease was lost, if this error says it was.
    pub fn lost_reason(&self) -> Option<LostReason> {
        match self {
            Error::LeaseLost { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    /// How long the service asked to wait before trying again (`Retry-After` on the last
    /// answer of a throttled or transiently failing call), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Throttled { retry_after, .. } | Error::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
