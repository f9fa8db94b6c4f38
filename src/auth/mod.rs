//! Credentials and request authorization: account keys (SharedKey), SAS tokens and bearer
//! tokens from a caller-supplied [`TokenProvider`].
//!
//! Secrets never leave this module in readable form: [`AccountKey`] and [`SasToken`] print as
//! redacted in `Debug` and `Display`, and errors never quote them.

pub mod signer;

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
    /// Accepts a SAS token with or without its leading `?`. It must contain a `sig` parameter.
    pub fn parse(token: &str) -> Result<Self, SasError> {
        let token = token.trim().trim_start_matches('?');
        if token.is_empty() {
            return Err(SasError::Empty);
        }
        if token.contains(['#', ' ', '\n']) {
            return Err(SasError::Malformed);
        }
        let has_sig = token
            .split('&')
            .any(|p| p.split_once('=').is_some_and(|(k, v)| k == "sig" && !v.is_empty()));
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

/// Replaces the value of every `sig` query parameter with `REDACTED`.
pub(crate) fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("sig") => format!("{k}=REDACTED"),
            _ => p.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
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
    #[error("the SAS token contains a space, newline or `#`: it must be a URL query string")]
    Malformed,
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

/// A source of Entra ID bearer tokens (scope `https://storage.azure.com/.default`), implemented
/// by the caller, so that environments that forbid account keys can use this crate without the
/// Azure SDK. It is called before every request: cache and refresh tokens inside it.
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
    }
}
