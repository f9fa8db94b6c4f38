//! [`ConfigError`] and the hints it gives: the key meant by a typo, the kind of a bad character,
//! the separator that was probably mistyped.

use crate::auth::{KeyError, SasError};

use super::*;

/// Why a connection string or environment could not be used. Names the offending key and the
/// position and kind of the problem; never contains a value (a mistyped separator can put the
/// account key inside any value, or inside a key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The connection string is empty.
    #[error("the connection string is empty")]
    Empty,
    /// A `;`-separated part has no `=`.
    #[error("connection string part {index} is not `Key=Value` (parts are separated by `;`, keys and values by `=`)")]
    NotKeyValue {
        /// 1-based position of the part.
        index: usize,
    },
    /// A key is given twice.
    #[error("connection string key `{key}` is given more than once")]
    DuplicateKey {
        /// The key's canonical spelling.
        key: &'static str,
    },
    /// A key is not one this crate knows. The key is not quoted: with a mistyped separator it
    /// can hold a secret.
    #[error("connection string part {index} has an unknown key{}; expected AccountName, AccountKey, DefaultEndpointsProtocol, EndpointSuffix, BlobEndpoint, SharedAccessSignature, UseDevelopmentStorage or DevelopmentStorageProxyUri (parts are separated by `;`, keys and values by `=`)", did_you_mean(.suggestion))]
    UnknownKey {
        /// 1-based position of the part.
        index: usize,
        /// A known key the written one is close to.
        suggestion: Option<&'static str>,
    },
    /// An environment variable (or the flag standing for it) is set but empty. Development
    /// storage is used only when nothing at all is configured.
    #[error("`{name}` is set but empty: give it a value, or unset it (local development storage is used only when nothing is configured)")]
    EmptyVariable {
        /// The variable.
        name: &'static str,
    },
    /// A key has an empty value.
    #[error("connection string key `{key}` has an empty value")]
    EmptyValue {
        /// The key.
        key: &'static str,
    },
    /// A key's value is not acceptable.
    #[error("`{key}` is invalid: {reason}")]
    InvalidValue {
        /// The key (or environment variable).
        key: &'static str,
        /// What is wrong with it (never the secret itself).
        reason: String,
    },
    /// The account key is not usable.
    #[error("`{key}` is invalid: {source}")]
    InvalidKey {
        /// `AccountKey` or `AZURE_STORAGE_KEY`.
        key: &'static str,
        /// Why.
        source: KeyError,
    },
    /// The SAS token is not usable.
    #[error("`{key}` is invalid: {source}")]
    InvalidSas {
        /// `SharedAccessSignature` or `AZURE_STORAGE_SAS_TOKEN`.
        key: &'static str,
        /// Why.
        source: SasError,
    },
    /// A required key is missing.
    #[error("`{key}` is missing: {why}")]
    Missing {
        /// The missing key.
        key: &'static str,
        /// What needs it.
        why: &'static str,
    },
    /// No Entra ID credential could be set up (see [`crate::auth::entra`]).
    #[cfg(feature = "entra")]
    #[cfg_attr(docsrs, doc(cfg(feature = "entra")))]
    #[error(transparent)]
    Entra(#[from] crate::auth::entra::EntraError),
    /// Two keys exclude each other.
    #[error("`{a}` and `{b}` cannot both be given")]
    Conflict {
        /// One key.
        a: &'static str,
        /// The other.
        b: &'static str,
    },
}

pub(super) fn did_you_mean(s: &Option<&'static str>) -> String {
    s.map(|k| format!(" (did you mean `{k}`?)")).unwrap_or_default()
}

/// A character, described without quoting more than itself (and only when it is harmless
/// punctuation: a single character of a secret tells nothing).
pub(super) fn describe_char(c: char) -> String {
    match c {
        ' ' => "a space".into(),
        '\t' => "a tab".into(),
        '\n' | '\r' => "a line break".into(),
        c if c.is_control() => "a control character".into(),
        c if c.is_ascii_uppercase() => "an upper-case letter".into(),
        c if c.is_ascii_punctuation() => format!("`{c}`"),
        c if !c.is_ascii() => "a non-ASCII character".into(),
        _ => "not allowed here".into(),
    }
}

/// A hint for values that look like several parts run together (a mistyped `;`).
pub(super) fn separator_hint(value: &str) -> &'static str {
    let lower = value.to_ascii_lowercase();
    let base64ish = value.len() >= 40
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
    if value.contains(';') && value.contains('=') {
        " (this looks like a connection string: give it as one)"
    } else if base64ish {
        " (this looks like an account key: are the account name and key swapped?)"
    } else if KEYS.iter().any(|k| lower.contains(&k.to_ascii_lowercase())) || value.contains([',', '\n', ' ', '\t']) {
        " (parts of a connection string are separated by `;`, keys and values by `=`)"
    } else {
        ""
    }
}

/// The known key a mistyped one is close to (case-insensitive edit distance at most 2, or a
/// known key followed by stray characters, as in `AccountKey:...`).
pub(super) fn suggest(key: &str) -> Option<&'static str> {
    let lower = key.to_ascii_lowercase();
    KEYS.iter().copied().find(|k| {
        let k = k.to_ascii_lowercase();
        lower.starts_with(&k) || k.starts_with(&lower) && lower.len() >= 4 || edit_distance(&k, &lower) <= 2
    })
}

pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len().abs_diff(b.len()) > 2 {
        return 3;
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
