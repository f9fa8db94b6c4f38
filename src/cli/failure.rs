//! What the CLI reports when a command fails: a message and an exit code (see [`super::exit`]),
//! from the library's errors, with a hint where one helps.

use azmutex::{ConfigError, Error, InvalidInput, LockError};

use super::exit;

/// A failure the CLI reports: message and exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::new(exit::CONFIG, format!("invalid configuration: {e}"))
    }
}

impl From<InvalidInput> for Failure {
    fn from(e: InvalidInput) -> Self {
        let code = match e {
            InvalidInput::CaCertificate(_) | InvalidInput::Option { .. } | InvalidInput::ContainerName { .. } => {
                exit::CONFIG
            }
            _ => exit::USAGE,
        };
        let mut message = e.to_string();
        // A key or SAS typed where a name belongs is described, never quoted.
        if let InvalidInput::ContainerName { name } | InvalidInput::LockName { name, .. } = &e {
            if azmutex::auth::scrub::looks_like_secret(name) {
                message = message.replace(&format!("{name:?}"), &azmutex::auth::scrub::quote_or_describe(name));
            }
        }
        Failure::new(code, message)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let (code, hint) = match &e {
            // A token source configured wrongly (an unreadable token file, a bad setting) is
            // a configuration error, not a refused key.
            Error::Auth { service: None, detail } if detail.contains("invalid configuration:") => (
                exit::CONFIG,
                "fix the Entra ID setting named above (see --auth and the AZURE_* variables)",
            ),
            Error::Auth { service: None, detail } if detail.contains("proxy") => (
                exit::AUTH,
                "fix the proxy's user and password (percent-encode special characters)",
            ),
            Error::Auth { .. } => (
                exit::AUTH,
                "check the account key or SAS token (permissions r,w,c; not expired), or the Entra ID identity \
                 (see --auth) and its data role (e.g. Storage Blob Data Contributor), and this machine's clock",
            ),
            Error::Transient { cause, .. } if cause.to_string().contains("the proxy ") => (
                exit::UNAVAILABLE,
                "the proxy is failing, not the storage endpoint: check --proxy / HTTPS_PROXY / NO_PROXY and \
                 what the proxy allows",
            ),
            Error::Transient { .. } | Error::Throttled { .. } => (
                exit::UNAVAILABLE,
                "check the endpoint URL, network and proxy settings, or raise --timeout",
            ),
            Error::Conflict { .. } => (exit::BUSY, "someone else holds the lock; see `azmutex status`"),
            Error::LeaseLost { .. } => (exit::LOST, "the lease is no longer ours"),
            Error::Tls { .. } => (exit::CONFIG, "fix the endpoint URL or trust its CA with --ca-cert FILE"),
            Error::InvalidInput(i) => return Failure::from(i.clone()),
            _ => (exit::OTHER, ""),
        };
        let mut message = e.to_string();
        if !hint.is_empty() {
            message.push_str(&format!("\n  hint: {hint}"));
        }
        Failure::new(code, message)
    }
}

impl From<LockError> for Failure {
    fn from(e: LockError) -> Self {
        match e {
            LockError::Storage(e) => e.into(),
            LockError::Busy { .. } | LockError::TimedOut { .. } => Failure::new(exit::BUSY, e.to_string()),
            LockError::Lost { .. } => Failure::new(exit::LOST, e.to_string()),
            LockError::Cancelled { .. } => Failure::new(exit::OTHER, e.to_string()),
            _ => Failure::new(exit::OTHER, e.to_string()),
        }
    }
}
