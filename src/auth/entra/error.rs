//! What can go wrong getting a token, typed, with the source that failed.

use super::*;

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
    /// An error with what led to Entra ID first: e.g. that no account key or SAS token was
    /// found, so the configuration fell through to the default chain (a misspelt variable is the
    /// usual cause). Classified as its source is.
    #[error("{note}; {source}")]
    Explained {
        /// What led here (never a secret: names of variables and settings only).
        note: String,
        /// The error itself.
        source: Box<EntraError>,
    },
}

impl EntraError {
    /// Whether retrying cannot help (configuration missing or refused), as opposed to a
    /// failure that may pass (network, timeout, throttling). A chain's failure is definite
    /// unless one of its configured kinds failed transiently.
    pub fn is_definite(&self) -> bool {
        match self {
            EntraError::Transient { .. } | EntraError::NoToken { .. } => false,
            EntraError::Explained { source, .. } => source.is_definite(),
            EntraError::Chain { tried } => tried.iter().all(|(_, e)| {
                e.is_definite() || matches!(e, EntraError::Transient { why, .. } if why.starts_with(PROBE_PREFIX))
            }),
            _ => true,
        }
    }

    /// The text without the kind prefix.
    pub(super) fn reason(&self) -> String {
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
            EntraError::Explained { source, .. } => source.tls_problem(),
            _ => None,
        }
    }
}
