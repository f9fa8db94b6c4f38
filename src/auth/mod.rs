//! Credentials and request authorization: account keys (SharedKey), SAS tokens and bearer
//! tokens from a caller-supplied [`TokenProvider`].
//!
//! Secrets never leave this module in readable form: [`AccountKey`] and [`SasToken`] print as
//! redacted in `Debug` and `Display`, and errors never quote them.

#[cfg(feature = "entra")]
#[cfg_attr(docsrs, doc(cfg(feature = "entra")))]
pub mod entra;
pub use crate::scrub;
pub mod signer;

use crate::redact::param_name;
pub use crate::redact::redact_query;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

/// A storage account key, decoded from its base64 form. Never printed.
#[derive(Clone)]
pub struct AccountKey(Arc<[u8]>);

impl AccountKey {
    /// Decodes a base64 account key (as shown in the portal or a connection string).
    ///
    /// The error says what is wrong without quoting the value.
    pub fn from_base64(key: &str) -> Result<Self, KeyError> {
        let key = key.trim();
        if key.is_empty() {
            return Err(KeyError::Empty);
        }
        let bytes = BASE64.decode(key).map_err(|_| KeyError::NotBase64)?;
        if bytes.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Self(bytes.into()))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccountKey(<redacted>)")
    }
}

/// Why an account key was refused. Carries no part of the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key is empty.
    #[error("the account key is empty")]
    Empty,
    /// The key is not valid base64 (the portal shows keys in base64).
    #[error("the account key is not valid base64")]
    NotBase64,
}

/// A shared access signature: the query string appended to every request. Never printed with
/// its `sig`.
///
/// See [Create a service SAS](https://learn.microsoft.com/en-us/rest/api/storageservices/create-service-sas)
/// and [Create an account SAS](https://learn.microsoft.com/en-us/rest/api/storageservices/create-account-sas).
#[derive(Clone)]
pub struct SasToken(Arc<str>);

impl SasToken {
    /// Accepts a SAS token with or without its leading `?`, or a whole SAS URL (as the portal's
    /// "Blob SAS URL"), of which the query is taken. It must contain a `sig` parameter.
    pub fn parse(token: &str) -> Result<Self, SasError> {
        let mut token = token.trim();
        let lower = token.get(..8).unwrap_or(token).to_ascii_lowercase();
        if lower.starts_with("https://") || lower.starts_with("http://") {
            token = match token.split_once('?') {
                Some((_, query)) => query,
                None => return Err(SasError::UrlWithoutQuery),
            };
        }
        let token = token.trim_start_matches('?');
        if token.is_empty() {
            return Err(SasError::Empty);
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control() || c == '#') {
            return Err(SasError::Malformed);
        }
        let has_sig = token.split('&').any(|p| {
            p.split_once('=')
                .is_some_and(|(k, v)| param_name(k) == "sig" && !v.is_empty())
        });
        if !has_sig {
            return Err(SasError::MissingSignature);
        }
        Ok(Self(token.into()))
    }

    /// The token as it goes on the URL (secret).
    pub(crate) fn query(&self) -> &str {
        &self.0
    }

    /// The token with the value of `sig` replaced by `REDACTED`, fit for logs.
    pub fn redacted(&self) -> String {
        redact_query(&self.0)
    }
}

impl fmt::Debug for SasToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SasToken({})", self.redacted())
    }
}

/// Why a SAS token was refused. Carries no part of the signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SasError {
    /// The token is empty.
    #[error("the SAS token is empty")]
    Empty,
    /// The token has no `sig=` parameter.
    #[error("the SAS token has no `sig` parameter (copy the whole query string, e.g. `sv=...&sig=...`)")]
    MissingSignature,
    /// The token contains characters a query string cannot hold.
    #[error("the SAS token contains whitespace, a control character or `#`: it must be a URL query string")]
    Malformed,
    /// A SAS URL was given that has no query string.
    #[error("a URL was given where a SAS token is expected, and it has no `?sv=...&sig=...` query: pass the token (the part after `?`)")]
    UrlWithoutQuery,
}

/// A bearer token for Microsoft Entra ID authorization.
///
/// See [Authorize with Microsoft Entra ID](https://learn.microsoft.com/en-us/rest/api/storageservices/authorize-with-azure-active-directory).
#[derive(Clone)]
pub struct AccessToken(pub String);

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

/// The error type a [`TokenProvider`] returns.
pub type TokenError = Box<dyn std::error::Error + Send + Sync>;

/// The future a [`TokenProvider`] returns.
pub type TokenFuture<'a> = Pin<Box<dyn Future<Output = Result<AccessToken, TokenError>> + Send + 'a>>;

/// A source of Entra ID bearer tokens (scope `https://storage.azure.com/.default`), so that
/// environments that forbid account keys can use this crate without the Azure SDK. The crate's
/// own is `auth::entra::EntraCredential` (feature `entra`); a caller may implement another. It is
/// called before every request, bounded by that request's timeout: cache and refresh tokens
/// inside it, and answer at once while a valid token is cached.
///
/// An error is taken as a definite refusal ([`Error::Auth`](crate::Error::Auth)) unless it is a
/// [`TransientTokenError`] (or a transient `EntraError`): those, like a provider that does not
/// answer within the request's timeout, are retried until the call's deadline, as network
/// errors are.
///
/// ```
/// use azmutex::{AccessToken, TokenFuture, TokenProvider};
///
/// struct Fixed(String);
/// impl TokenProvider for Fixed {
///     fn token(&self) -> TokenFuture<'_> {
///         Box::pin(async move { Ok(AccessToken(self.0.clone())) })
///     }
/// }
/// ```
pub trait TokenProvider: Send + Sync {
    /// Returns a currently valid token.
    fn token(&self) -> TokenFuture<'_>;
}

/// A token provider's failure that may pass (network, throttling, endpoint down): the request
/// is retried until its call's deadline instead of failing as an authentication error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct TransientTokenError(pub String);

/// How a token provider's failure is treated by the request that needed the token.
pub(crate) enum TokenFailure {
    /// Retrying cannot help: an authentication error.
    Definite(String),
    /// May pass: retried until the call's deadline.
    Transient(String),
    /// The token endpoint's TLS certificate was refused.
    #[cfg_attr(not(feature = "entra"), allow(dead_code))]
    Tls(crate::error::TlsProblem),
}

/// Classifies a [`TokenProvider`]'s error (see its documentation).
pub(crate) fn classify_token_error(e: &(dyn std::error::Error + Send + Sync + 'static)) -> TokenFailure {
    #[cfg(feature = "entra")]
    if let Some(e) = e.downcast_ref::<entra::EntraError>() {
        if let Some(problem) = e.tls_problem() {
            return TokenFailure::Tls(problem.clone());
        }
        return if e.is_definite() {
            TokenFailure::Definite(e.to_string())
        } else {
            TokenFailure::Transient(e.to_string())
        };
    }
    if let Some(e) = e.downcast_ref::<TransientTokenError>() {
        return TokenFailure::Transient(e.to_string());
    }
    TokenFailure::Definite(format!("the token provider failed: {e}"))
}

/// How requests are authorized.
#[derive(Clone)]
pub enum Credential {
    /// SharedKey: every request signed with the account key.
    /// See [Authorize with Shared Key](https://learn.microsoft.com/en-us/rest/api/storageservices/authorize-with-shared-key).
    SharedKey {
        /// The storage account name.
        account: String,
        /// The account key.
        key: AccountKey,
    },
    /// A SAS token appended to every request's query string.
    Sas(SasToken),
    /// `Authorization: Bearer` with tokens from the caller's provider.
    Bearer(Arc<dyn TokenProvider>),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::SharedKey { account, key } => f
                .debug_struct("SharedKey")
                .field("account", account)
                .field("key", key)
                .finish(),
            Credential::Sas(sas) => f.debug_tuple("Sas").field(sas).finish(),
            Credential::Bearer(_) => f.write_str("Bearer(<token provider>)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    #[test]
    fn secrets_are_redacted() {
        let key = AccountKey::from_base64(KEY).unwrap();
        let cred = Credential::SharedKey {
            account: "a".into(),
            key,
        };
        let dbg = format!("{cred:?}");
        assert!(!dbg.contains("Eby8"), "{dbg}");
        let sas = SasToken::parse("?sv=2025-11-05&sp=rw&sig=abc%2Fdef").unwrap();
        let dbg = format!("{:?}", Credential::Sas(sas.clone()));
        assert!(!dbg.contains("abc"), "{dbg}");
        assert!(dbg.contains("sig=REDACTED"), "{dbg}");
        assert_eq!(sas.query(), "sv=2025-11-05&sp=rw&sig=abc%2Fdef");
    }

    #[test]
    fn bad_keys_and_tokens() {
        assert_eq!(AccountKey::from_base64("").unwrap_err(), KeyError::Empty);
        assert_eq!(AccountKey::from_base64("not base64!").unwrap_err(), KeyError::NotBase64);
        assert_eq!(SasToken::parse("?").unwrap_err(), SasError::Empty);
        assert_eq!(SasToken::parse("sv=1&sp=r").unwrap_err(), SasError::MissingSignature);
        assert_eq!(SasToken::parse("sv=1 &sig=x").unwrap_err(), SasError::Malformed);
        assert_eq!(SasToken::parse("sv=1&\tsig=x").unwrap_err(), SasError::Malformed);
        assert_eq!(
            SasToken::parse("https://a.blob.core.windows.net/c").unwrap_err(),
            SasError::UrlWithoutQuery
        );
    }

    #[test]
    fn sas_urls_give_their_query() {
        let sas = SasToken::parse("https://a.blob.core.windows.net/c/b?sv=2025-11-05&sp=rw&sig=abc").unwrap();
        assert_eq!(sas.query(), "sv=2025-11-05&sp=rw&sig=abc");
    }

    #[test]
    fn redaction_is_an_allow_list() {
        for (q, shown) in [
            ("sv=2025-11-05&sig=SECRETSIG1", "sv=2025-11-05&sig=REDACTED"),
            ("si%67=SECRETSIG1&sp=rw", "sig=REDACTED&sp=rw"),
            ("SIG=SECRETSIG1", "sig=REDACTED"),
            ("%20sig=SECRETSIG1", "sig=REDACTED"),
            (
                "se=2026-01-01T00%3A00%3A00Z&spr=https,http",
                "se=2026-01-01T00:00:00Z&spr=https,http",
            ),
            ("sp=SECRETSIG1", "sp=REDACTED"),
            ("xyzSECRETSIG1=1", "?=REDACTED"),
        ] {
            assert_eq!(redact_query(q), shown, "{q}");
        }
        // The tab form the issue found is refused outright; the rule still hides it.
        assert!(!redact_query("sv=1&\tsig=SECRETSIG1").contains("SECRETSIG1"));
    }
}
