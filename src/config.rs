//! Where the storage account is and how to authorize: connection strings, the Azure CLI's
//! environment variables, and the local development storage (Azurite) defaults.
//!
//! Connection-string syntax: [Configure Azure Storage connection strings](https://learn.microsoft.com/en-us/azure/storage/common/storage-configure-connection-string).

use std::fmt;

use url::Url;

use crate::auth::{AccountKey, Credential, KeyError, SasError, SasToken};

/// The well-known account name of the storage emulator (Azurite).
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
/// The well-known, public key of the storage emulator (Azurite). Not a secret.
pub const DEV_ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// The emulator's blob endpoint (path-style: the account is the first path segment).
pub const DEV_BLOB_ENDPOINT: &str = "http://127.0.0.1:10000/devstoreaccount1";

/// A storage account's blob endpoint and credential.
#[derive(Clone)]
pub struct StorageConfig {
    /// The blob service endpoint, e.g. `https://acct.blob.core.windows.net` or, path-style,
    /// `http://127.0.0.1:10000/devstoreaccount1`. No query, no trailing slash.
    pub endpoint: Url,
    /// How requests are authorized.
    pub credential: Credential,
    /// An HTTP proxy for all requests (`DevelopmentStorageProxyUri`).
    pub proxy: Option<Url>,
}

impl fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageConfig")
            .field("endpoint", &printable_url(&self.endpoint, true))
            .field("credential", &self.credential)
            .field("proxy", &self.proxy.as_ref().map(redact_url))
            .finish()
    }
}

/// A URL fit for printing: user name and password replaced by `***`, a path other than `/`
/// shown as `/...`, the query redacted by [`crate::auth::redact_query`], no fragment, and a
/// host name that could be a piece of a key (one label of 8 or more characters, other than
/// `localhost`) shown as `<host>`.
pub fn redact_url(url: &Url) -> String {
    printable_url(url, false)
}

fn printable_url(url: &Url, show_path: bool) -> String {
    let mut out = format!("{}://", url.scheme());
    if !url.username().is_empty() || url.password().is_some() {
        out.push_str("***@");
    }
    match url.host() {
        Some(url::Host::Domain(d)) if !d.contains('.') && d.len() >= 8 && d != "localhost" => out.push_str("<host>"),
        Some(_) => out.push_str(url.host_str().unwrap_or_default()),
        None => {}
    }
    if let Some(port) = url.port() {
        out.push_str(&format!(":{port}"));
    }
    if show_path {
        out.push_str(url.path());
    } else if url.path() == "/" || url.path().is_empty() {
        out.push('/');
    } else {
        out.push_str("/...");
    }
    if let Some(q) = url.query() {
        out.push('?');
        out.push_str(&crate::auth::redact_query(q));
    }
    out
}

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

fn did_you_mean(s: &Option<&'static str>) -> String {
    s.map(|k| format!(" (did you mean `{k}`?)")).unwrap_or_default()
}

/// Canonical names of the keys we accept, matched case-insensitively.
const KEYS: [&str; 8] = [
    "AccountName",
    "AccountKey",
    "DefaultEndpointsProtocol",
    "EndpointSuffix",
    "BlobEndpoint",
    "SharedAccessSignature",
    "UseDevelopmentStorage",
    "DevelopmentStorageProxyUri",
];

/// Keys of other services that a portal connection string may carry; ignored.
const OTHER_SERVICE_KEYS: [&str; 8] = [
    "QueueEndpoint",
    "TableEndpoint",
    "FileEndpoint",
    "DfsEndpoint",
    "BlobSecondaryEndpoint",
    "QueueSecondaryEndpoint",
    "TableSecondaryEndpoint",
    "FileSecondaryEndpoint",
];

impl StorageConfig {
    /// Local development storage: Azurite's well-known account on `127.0.0.1:10000`.
    pub fn development() -> Self {
        Self::parse_connection_string("UseDevelopmentStorage=true").expect("the development storage defaults are valid")
    }

    /// Parses an Azure Storage connection string.
    ///
    /// ```
    /// use azmutex::StorageConfig;
    /// let cfg = StorageConfig::parse_connection_string(
    ///     "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.chinacloudapi.cn",
    /// ).unwrap();
    /// assert_eq!(cfg.endpoint.as_str(), "https://acct.blob.core.chinacloudapi.cn/");
    /// assert!(!format!("{cfg:?}").contains("a2V5"));
    /// ```
    pub fn parse_connection_string(s: &str) -> Result<Self, ConfigError> {
        let mut values: [Option<&str>; 8] = [None; 8];
        let mut any = false;
        for (i, part) in s.split(';').enumerate() {
            let part = part.trim();
            if part.is_empty() {
                continue; // tolerate `;;` and a trailing `;`
            }
            any = true;
            let (key, value) = part.split_once('=').ok_or(ConfigError::NotKeyValue { index: i + 1 })?;
            let key = key.trim();
            let value = value.trim();
            if key.is_empty() {
                return Err(ConfigError::NotKeyValue { index: i + 1 });
            }
            match KEYS.iter().position(|k| k.eq_ignore_ascii_case(key)) {
                Some(slot) => {
                    if values[slot].is_some() {
                        return Err(ConfigError::DuplicateKey { key: KEYS[slot] });
                    }
                    if value.is_empty() {
                        return Err(ConfigError::EmptyValue { key: KEYS[slot] });
                    }
                    values[slot] = Some(value);
                }
                None if OTHER_SERVICE_KEYS.iter().any(|k| k.eq_ignore_ascii_case(key)) => {}
                None => {
                    return Err(ConfigError::UnknownKey {
                        index: i + 1,
                        suggestion: suggest(key),
                    })
                }
            }
        }
        if !any {
            return Err(ConfigError::Empty);
        }
        let [account, key, protocol, suffix, blob_endpoint, sas, dev, proxy] = values;

        if let Some(dev) = dev {
            if !dev.eq_ignore_ascii_case("true") {
                return Err(ConfigError::InvalidValue {
                    key: "UseDevelopmentStorage",
                    reason: "the only accepted value is `true`".into(),
                });
            }
            for (k, v) in [
                ("AccountName", account),
                ("AccountKey", key),
                ("SharedAccessSignature", sas),
            ] {
                if v.is_some() {
                    return Err(ConfigError::Conflict {
                        a: "UseDevelopmentStorage",
                        b: k,
                    });
                }
            }
            let endpoint = match blob_endpoint {
                Some(e) => parse_endpoint("BlobEndpoint", e)?,
                None => parse_endpoint("BlobEndpoint", DEV_BLOB_ENDPOINT)?,
            };
            let proxy = proxy.map(parse_proxy).transpose()?;
            return Ok(Self {
                endpoint,
                credential: Credential::SharedKey {
                    account: DEV_ACCOUNT.into(),
                    key: AccountKey::from_base64(DEV_ACCOUNT_KEY).map_err(|source| ConfigError::InvalidKey {
                        key: "AccountKey",
                        source,
                    })?,
                },
                proxy,
            });
        }
        if proxy.is_some() {
            return Err(ConfigError::InvalidValue {
                key: "DevelopmentStorageProxyUri",
                reason: "it is only used together with `UseDevelopmentStorage=true`".into(),
            });
        }
        if let Some(a) = account {
            check_account_name("AccountName", a)?;
        }
        let scheme = match protocol {
            None => "https",
            Some(p) if p.eq_ignore_ascii_case("https") => "https",
            Some(p) if p.eq_ignore_ascii_case("http") => "http",
            Some(p) => {
                return Err(ConfigError::InvalidValue {
                    key: "DefaultEndpointsProtocol",
                    reason: format!("must be `http` or `https`{}", separator_hint(p)),
                })
            }
        };
        let endpoint = match (blob_endpoint, account) {
            (Some(e), _) => parse_endpoint("BlobEndpoint", e)?,
            (None, Some(a)) => {
                let suffix = suffix.unwrap_or("core.windows.net");
                let problem = dns_problem(suffix)
                    .or_else(|| (!suffix.contains('.')).then(|| "it has a single label (no `.`)".to_string()));
                if let Some(problem) = problem {
                    return Err(ConfigError::InvalidValue {
                        key: "EndpointSuffix",
                        reason: format!("{problem}: it must be a DNS suffix such as `core.windows.net`"),
                    });
                }
                parse_endpoint("EndpointSuffix", &format!("{scheme}://{a}.blob.{suffix}"))?
            }
            (None, None) => {
                return Err(ConfigError::Missing {
                    key: "AccountName",
                    why: "needed to build the endpoint when no `BlobEndpoint` is given",
                })
            }
        };
        let credential = credential(&CONNECTION_STRING_NAMES, account, key, sas)?;
        Ok(Self {
            endpoint,
            credential,
            proxy: None,
        })
    }

    /// Builds a configuration from the environment variables the Azure CLI reads:
    /// `AZURE_STORAGE_CONNECTION_STRING`, or `AZURE_STORAGE_ACCOUNT` with `AZURE_STORAGE_KEY` or
    /// `AZURE_STORAGE_SAS_TOKEN` (and optionally `AZURE_STORAGE_SERVICE_ENDPOINT` for a custom
    /// blob endpoint). `Ok(None)` when none of them is set.
    ///
    /// A variable that is set but empty is an error ([`ConfigError::EmptyVariable`]), never
    /// "not configured": a deployment whose secret did not arrive must not silently lock on
    /// local development storage.
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        Self::from_vars(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
    }

    /// [`StorageConfig::from_env`] reading variables through `var` (for tests and embedding).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, ConfigError> {
        let var = |name: &'static str| -> Result<Option<String>, ConfigError> {
            match var(name) {
                Some(v) if v.trim().is_empty() => Err(ConfigError::EmptyVariable { name }),
                other => Ok(other),
            }
        };
        if let Some(cs) = var("AZURE_STORAGE_CONNECTION_STRING")? {
            return Self::parse_connection_string(&cs).map(Some);
        }
        let account = var("AZURE_STORAGE_ACCOUNT")?;
        let key = var("AZURE_STORAGE_KEY")?;
        let sas = var("AZURE_STORAGE_SAS_TOKEN")?;
        let endpoint = var("AZURE_STORAGE_SERVICE_ENDPOINT")?;
        if account.is_none() && key.is_none() && sas.is_none() && endpoint.is_none() {
            return Ok(None);
        }
        let endpoint = env_endpoint(
            endpoint.as_deref(),
            account.as_deref(),
            "`AZURE_STORAGE_KEY`/`AZURE_STORAGE_SAS_TOKEN` need the account name",
        )?;
        let credential = credential(&ENV_NAMES, account.as_deref(), key.as_deref(), sas.as_deref())?;
        Ok(Some(Self {
            endpoint,
            credential,
            proxy: None,
        }))
    }

    /// [`StorageConfig::from_vars`] with the authorization chosen by `auth` (the CLI's `--auth`
    /// / `AZMUTEX_AUTH`). [`AuthChoice::Auto`] uses a key or SAS when one is given, and Entra ID
    /// (`entra(None)`: the default chain) when an account name or URL is given without either.
    /// `AuthChoice::Entra` (feature `entra`) needs an account name or URL and no key, SAS or connection string.
    /// `Ok(None)` when nothing at all is configured.
    pub fn from_vars_with_auth(
        var: impl Fn(&str) -> Option<String>,
        auth: AuthChoice,
        entra: impl FnOnce(AuthChoice) -> Result<Credential, ConfigError>,
    ) -> Result<Option<Self>, ConfigError> {
        let get = |name: &'static str| -> Result<Option<String>, ConfigError> {
            match var(name) {
                Some(v) if v.trim().is_empty() => Err(ConfigError::EmptyVariable { name }),
                other => Ok(other),
            }
        };
        let cs = get("AZURE_STORAGE_CONNECTION_STRING")?;
        let account = get("AZURE_STORAGE_ACCOUNT")?;
        let key = get("AZURE_STORAGE_KEY")?;
        let sas = get("AZURE_STORAGE_SAS_TOKEN")?;
        let endpoint = get("AZURE_STORAGE_SERVICE_ENDPOINT")?;
        let located = account.is_some() || endpoint.is_some();
        let entra_wanted = match auth {
            AuthChoice::Key | AuthChoice::Sas => false,
            AuthChoice::Auto => cs.is_none() && key.is_none() && sas.is_none() && located,
            #[cfg(feature = "entra")]
            AuthChoice::Entra(_) => true,
        };
        if !entra_wanted {
            let config = Self::from_vars(&var)?;
            let wrong = |reason: &str| ConfigError::InvalidValue {
                key: "AZMUTEX_AUTH",
                reason: reason.to_string(),
            };
            return match (&auth, config.as_ref().map(|c| &c.credential)) {
                (AuthChoice::Key, Some(Credential::Sas(_))) => {
                    Err(wrong("`key` was chosen but a SAS token is configured"))
                }
                (AuthChoice::Sas, Some(Credential::SharedKey { .. })) => {
                    Err(wrong("`sas` was chosen but an account key is configured"))
                }
                _ => Ok(config),
            };
        }
        for (name, value) in [
            ("AZURE_STORAGE_CONNECTION_STRING", &cs),
            ("AZURE_STORAGE_KEY", &key),
            ("AZURE_STORAGE_SAS_TOKEN", &sas),
        ] {
            if value.is_some() {
                return Err(ConfigError::Conflict {
                    a: name,
                    b: "AZMUTEX_AUTH",
                });
            }
        }
        let endpoint_key = if endpoint.is_some() {
            "AZURE_STORAGE_SERVICE_ENDPOINT"
        } else {
            "AZURE_STORAGE_ACCOUNT"
        };
        let endpoint = env_endpoint(
            endpoint.as_deref(),
            account.as_deref(),
            "Entra ID authorization needs the storage account's name or URL",
        )?;
        // Before any token is asked for: a bearer token never goes over plain http.
        check_bearer_endpoint(endpoint_key, &endpoint, false)?;
        Ok(Some(Self {
            endpoint,
            credential: entra(auth)?,
            proxy: None,
        }))
    }

    /// A configuration from an explicit endpoint URL and an Entra ID credential (the crate's
    /// own, cached and refreshed in the background).
    #[cfg(feature = "entra")]
    #[cfg_attr(docsrs, doc(cfg(feature = "entra")))]
    ///
    /// The endpoint must be `https://`: a bearer token is never sent in clear text (as the
    /// Azure SDKs refuse to).
    pub fn entra(endpoint: &str, credential: crate::auth::entra::EntraCredential) -> Result<Self, ConfigError> {
        let url = parse_endpoint("endpoint", endpoint)?;
        check_bearer_endpoint("endpoint", &url, false)?;
        Ok(Self {
            endpoint: url,
            credential: Credential::Bearer(std::sync::Arc::new(credential)),
            proxy: None,
        })
    }

    /// A configuration from an explicit endpoint URL (host-style or path-style, e.g. for Azure
    /// Stack or a custom domain) and a credential.
    ///
    /// A [`Credential::Bearer`] needs an `https://` endpoint (a bearer token is never sent in
    /// clear text), except on a loopback address (`127.0.0.0/8`, `::1`, `localhost`), where
    /// the traffic does not leave the machine (a caller's own provider against a local emulator).
    pub fn new(endpoint: &str, credential: Credential) -> Result<Self, ConfigError> {
        let url = parse_endpoint("endpoint", endpoint)?;
        if matches!(credential, Credential::Bearer(_)) {
            check_bearer_endpoint("endpoint", &url, true)?;
        }
        Ok(Self {
            endpoint: url,
            credential,
            proxy: None,
        })
    }

    /// Whether this is the well-known development storage account.
    pub fn is_development(&self) -> bool {
        matches!(&self.credential, Credential::SharedKey { account, .. } if account == DEV_ACCOUNT)
    }
}

/// How requests are to be authorized, as the user chose (the CLI's `--auth` / `AZMUTEX_AUTH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthChoice {
    /// SharedKey with the account key.
    Key,
    /// A SAS token.
    Sas,
    /// One kind of Entra ID credential.
    #[cfg(feature = "entra")]
    #[cfg_attr(docsrs, doc(cfg(feature = "entra")))]
    Entra(crate::auth::entra::EntraKind),
    /// A key or SAS token if one is given, else Entra ID's default chain.
    Auto,
}

/// The blob endpoint from `AZURE_STORAGE_SERVICE_ENDPOINT`, else the account name's public
/// endpoint; `why` says what needs it when neither is given.
fn env_endpoint(endpoint: Option<&str>, account: Option<&str>, why: &'static str) -> Result<Url, ConfigError> {
    match (endpoint, account) {
        (Some(e), _) => parse_endpoint("AZURE_STORAGE_SERVICE_ENDPOINT", e),
        (None, Some(a)) => {
            check_account_name("AZURE_STORAGE_ACCOUNT", a)?;
            parse_endpoint("AZURE_STORAGE_ACCOUNT", &format!("https://{a}.blob.core.windows.net"))
        }
        (None, None) => Err(ConfigError::Missing {
            key: "AZURE_STORAGE_ACCOUNT",
            why,
        }),
    }
}

/// Refuses an `http://` endpoint for bearer tokens (they would travel in clear text; the Azure
/// SDKs refuse this too). `loopback_ok`: a loopback host is accepted (nothing leaves the machine).
fn check_bearer_endpoint(key: &'static str, url: &Url, loopback_ok: bool) -> Result<(), ConfigError> {
    if url.scheme() == "https" {
        return Ok(());
    }
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    if loopback_ok && loopback {
        return Ok(());
    }
    Err(ConfigError::InvalidValue {
        key,
        reason: "Entra ID bearer tokens are never sent over plain `http://` (anyone on the path could \
                 read and reuse them): use the `https://` endpoint"
            .into(),
    })
}

/// What the account, key and SAS settings are called where they came from, for error messages.
struct Names {
    account: &'static str,
    key: &'static str,
    sas: &'static str,
}

const CONNECTION_STRING_NAMES: Names = Names {
    account: "AccountName",
    key: "AccountKey",
    sas: "SharedAccessSignature",
};
const ENV_NAMES: Names = Names {
    account: "AZURE_STORAGE_ACCOUNT",
    key: "AZURE_STORAGE_KEY",
    sas: "AZURE_STORAGE_SAS_TOKEN",
};

/// The credential from an account name, key and SAS token: exactly one of key and SAS.
fn credential(
    names: &Names,
    account: Option<&str>,
    key: Option<&str>,
    sas: Option<&str>,
) -> Result<Credential, ConfigError> {
    match (key, sas) {
        (Some(_), Some(_)) => Err(ConfigError::Conflict {
            a: names.key,
            b: names.sas,
        }),
        (Some(key), None) => {
            let account = account.ok_or(ConfigError::Missing {
                key: names.account,
                why: "SharedKey signing with an account key needs the account name",
            })?;
            check_account_name(names.account, account)?;
            let key =
                AccountKey::from_base64(key).map_err(|source| ConfigError::InvalidKey { key: names.key, source })?;
            Ok(Credential::SharedKey {
                account: account.to_string(),
                key,
            })
        }
        (None, Some(sas)) => {
            Ok(Credential::Sas(SasToken::parse(sas).map_err(|source| {
                ConfigError::InvalidSas { key: names.sas, source }
            })?))
        }
        (None, None) => Err(ConfigError::Missing {
            key: names.key,
            why: "a lock needs write access: give an account key or a SAS token",
        }),
    }
}

/// Storage account names: 3–24 lower-case letters and digits.
/// See [Storage account name](https://learn.microsoft.com/en-us/azure/azure-resource-manager/management/resource-name-rules#microsoftstorage).
/// The error names the first bad character's position and kind, never the name (a swapped
/// `--account-name`/`--account-key` puts the key here).
fn check_account_name(key: &'static str, name: &str) -> Result<(), ConfigError> {
    let bad = name
        .chars()
        .enumerate()
        .find(|(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit()));
    let n = name.chars().count();
    let problem = match bad {
        Some((i, c)) => format!("character {} is {}", i + 1, describe_char(c)),
        None if !(3..=24).contains(&n) => format!("it has {n} characters"),
        None => return Ok(()),
    };
    Err(ConfigError::InvalidValue {
        key,
        reason: format!(
            "{problem}; an account name is 3-24 lower-case letters and digits{}",
            separator_hint(name)
        ),
    })
}

/// A character, described without quoting more than itself (and only when it is harmless
/// punctuation: a single character of a secret tells nothing).
fn describe_char(c: char) -> String {
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
fn separator_hint(value: &str) -> &'static str {
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
fn suggest(key: &str) -> Option<&'static str> {
    let lower = key.to_ascii_lowercase();
    KEYS.iter().copied().find(|k| {
        let k = k.to_ascii_lowercase();
        lower.starts_with(&k) || k.starts_with(&lower) && lower.len() >= 4 || edit_distance(&k, &lower) <= 2
    })
}

fn edit_distance(a: &str, b: &str) -> usize {
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

/// What is wrong with a DNS name (labels of lower-case letters, digits, `-` and `_`, 1-63
/// characters, separated by dots), or `None`.
///
/// Upper case is refused although DNS ignores case: Azure account names and endpoint suffixes
/// are lower-case, and a mixed-case "host" is what a pasted account key looks like once a
/// separator is mistyped — which a URL parser would lower-case into a valid host and print.
fn dns_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 253 {
        return Some(format!("it has {} characters", name.chars().count()));
    }
    let mut pos = 0;
    for label in name.split('.') {
        if label.is_empty() {
            return Some(format!("it has an empty label at character {}", pos + 1));
        }
        if label.len() > 63 {
            return Some(format!(
                "the label at character {} is longer than 63 characters",
                pos + 1
            ));
        }
        if let Some((i, c)) = label
            .chars()
            .enumerate()
            .find(|(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
        {
            return Some(format!("character {} is {}", pos + i + 1, describe_char(c)));
        }
        pos += label.chars().count() + 1;
    }
    None
}

fn parse_url(key: &'static str, value: &str) -> Result<Url, ConfigError> {
    let lower = value.get(..8).unwrap_or(value).to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(ConfigError::InvalidValue {
            key,
            reason: format!("it must start with `http://` or `https://`{}", separator_hint(value)),
        });
    }
    let url = Url::parse(value).map_err(|e| ConfigError::InvalidValue {
        key,
        reason: format!("not an absolute URL ({e}){}", separator_hint(value)),
    })?;
    match url.host() {
        None => {
            return Err(ConfigError::InvalidValue {
                key,
                reason: "the URL has no host".into(),
            })
        }
        Some(url::Host::Domain(_)) => {
            // Check the host as written (the parser has lower-cased and IDNA-mapped it).
            let rest = &value[value.find("://").map_or(0, |i| i + 3)..];
            let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
            let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let raw_host = host_port.split_once(':').map_or(host_port, |(h, _)| h);
            if let Some(problem) = dns_problem(raw_host) {
                return Err(ConfigError::InvalidValue {
                    key,
                    reason: format!("the host name is not a DNS name: {problem}{}", separator_hint(value)),
                });
            }
        }
        Some(_) => {} // an IP address
    }
    if url.port() == Some(0) {
        return Err(ConfigError::InvalidValue {
            key,
            reason: "port 0 is not a port to connect to".into(),
        });
    }
    Ok(url)
}

/// Parses a proxy URL: `http(s)://[user:password@]host[:port]`, nothing after the host.
fn parse_proxy(value: &str) -> Result<Url, ConfigError> {
    let key = "DevelopmentStorageProxyUri";
    let url = parse_url(key, value)?;
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::InvalidValue {
            key,
            reason: format!(
                "a proxy URL is `http://host:port`, with nothing after the port{}",
                separator_hint(value)
            ),
        });
    }
    Ok(url)
}

/// Parses a blob endpoint: http(s), a host, no query (a SAS goes in `SharedAccessSignature`),
/// no fragment, no credentials; a trailing `/` is dropped.
pub(crate) fn parse_endpoint(key: &'static str, value: &str) -> Result<Url, ConfigError> {
    let mut url = parse_url(key, value)?;
    if url.query().is_some() {
        return Err(ConfigError::InvalidValue {
            key,
            reason: "the endpoint must not have a query string (put a SAS token in `SharedAccessSignature`)".into(),
        });
    }
    if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::InvalidValue {
            key,
            reason: "the endpoint must not contain a `#fragment` or `user:password@`".into(),
        });
    }
    // A path-style endpoint's path is an account name (`/devstoreaccount1`: lower-case letters
    // and digits) or a few plain segments; anything else is most likely a pasted-together
    // connection string or a key, and would be printed wherever the endpoint is.
    if let Some((i, c)) = url
        .path()
        .chars()
        .enumerate()
        .find(|(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '/' | '-' | '.' | '_' | '~')))
    {
        return Err(ConfigError::InvalidValue {
            key,
            reason: format!(
                "character {} of the endpoint's path is {}: the path may hold lower-case letters, digits, `-._~` and `/`{}",
                i + 1,
                describe_char(c),
                separator_hint(value)
            ),
        });
    }
    let path = url.path().trim_end_matches('/').to_string();
    url.set_path(&path);
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "a2V5MTIzNDU2Nzg5MA==";

    fn parse(s: &str) -> Result<StorageConfig, ConfigError> {
        StorageConfig::parse_connection_string(s)
    }

    fn account_of(c: &StorageConfig) -> &str {
        match &c.credential {
            Credential::SharedKey { account, .. } => account,
            other => panic!("not SharedKey: {other:?}"),
        }
    }

    #[test]
    fn every_key() {
        let c = parse(&format!(
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={KEY};EndpointSuffix=core.usgovcloudapi.net"
        ))
        .unwrap();
        assert_eq!(c.endpoint.as_str(), "https://acct.blob.core.usgovcloudapi.net/");
        assert_eq!(account_of(&c), "acct");

        let c = parse(&format!(
            "defaultendpointsprotocol=HTTP;ACCOUNTNAME=acct;accountkey={KEY};"
        ))
        .unwrap();
        assert_eq!(c.endpoint.as_str(), "http://acct.blob.core.windows.net/");

        let c = parse(&format!(
            "BlobEndpoint=https://azs.local:8443/acct/;AccountName=acct;AccountKey={KEY};QueueEndpoint=https://q"
        ))
        .unwrap();
        assert_eq!(c.endpoint.as_str(), "https://azs.local:8443/acct");

        let c = parse(
            "BlobEndpoint=https://acct.blob.core.windows.net;SharedAccessSignature=sv=2025-11-05&sp=rw&sig=SECRETSIG",
        )
        .unwrap();
        assert!(matches!(c.credential, Credential::Sas(_)));
        assert!(!format!("{c:?}").contains("SECRETSIG"));

        let c = parse("AccountName=acct;SharedAccessSignature=?sv=1&sig=x").unwrap();
        assert_eq!(c.endpoint.as_str(), "https://acct.blob.core.windows.net/");
    }

    #[test]
    fn development_storage() {
        let c = parse("UseDevelopmentStorage=true").unwrap();
        assert_eq!(c.endpoint.as_str(), DEV_BLOB_ENDPOINT);
        assert_eq!(account_of(&c), DEV_ACCOUNT);
        assert!(c.is_development());
        assert!(c.proxy.is_none());
        let c = parse("UseDevelopmentStorage=true;DevelopmentStorageProxyUri=http://proxy:8080").unwrap();
        assert_eq!(c.proxy.unwrap().as_str(), "http://proxy:8080/");
        let c = parse("UseDevelopmentStorage=true;BlobEndpoint=http://azurite:10000/devstoreaccount1").unwrap();
        assert_eq!(c.endpoint.as_str(), "http://azurite:10000/devstoreaccount1");
        assert_eq!(StorageConfig::development().endpoint.as_str(), DEV_BLOB_ENDPOINT);
    }

    #[test]
    fn malformed_strings_each_get_their_own_error() {
        use ConfigError::*;
        let secret = "c2VjcmV0LWtleS12YWx1ZQ==";
        let cases: Vec<(String, ConfigError)> = vec![
            ("".into(), Empty),
            ("AccountName".into(), NotKeyValue { index: 1 }),
            (format!("AccountKey={secret};=x"), NotKeyValue { index: 2 }),
            (
                "AccountName=a;AccountName=b".into(),
                DuplicateKey { key: "AccountName" },
            ),
            (
                "AccountNme=acct".into(),
                UnknownKey {
                    index: 1,
                    suggestion: Some("AccountName"),
                },
            ),
            ("AccountName=;AccountKey=x".into(), EmptyValue { key: "AccountName" }),
            (
                "AccountName=acct;AccountKey=not*base64".into(),
                InvalidKey {
                    key: "AccountKey",
                    source: KeyError::NotBase64,
                },
            ),
            (
                format!("DefaultEndpointsProtocol=ftp;AccountName=acct;AccountKey={secret}"),
                InvalidValue {
                    key: "DefaultEndpointsProtocol",
                    reason: "must be `http` or `https`".into(),
                },
            ),
            (
                format!("AccountKey={secret}"),
                Missing {
                    key: "AccountName",
                    why: "needed to build the endpoint when no `BlobEndpoint` is given",
                },
            ),
            (
                "AccountName=acct".into(),
                Missing {
                    key: "AccountKey",
                    why: "a lock needs write access: give an account key or a SAS token",
                },
            ),
            (
                "UseDevelopmentStorage=false".into(),
                InvalidValue {
                    key: "UseDevelopmentStorage",
                    reason: "the only accepted value is `true`".into(),
                },
            ),
            (
                "DevelopmentStorageProxyUri=http://p".into(),
                InvalidValue {
                    key: "DevelopmentStorageProxyUri",
                    reason: "it is only used together with `UseDevelopmentStorage=true`".into(),
                },
            ),
            (
                format!("AccountName=Bad_Name;AccountKey={secret}"),
                InvalidValue {
                    key: "AccountName",
                    reason:
                        "character 1 is an upper-case letter; an account name is 3-24 lower-case letters and digits"
                            .into(),
                },
            ),
            (
                format!("AccountName=acct;AccountKey={secret};SharedAccessSignature=sv=1&sig=x"),
                Conflict {
                    a: "AccountKey",
                    b: "SharedAccessSignature",
                },
            ),
            (
                "AccountName=acct;SharedAccessSignature=sv=1&sp=r".into(),
                InvalidSas {
                    key: "SharedAccessSignature",
                    source: SasError::MissingSignature,
                },
            ),
            (
                format!("AccountName=acct;AccountKey={secret};EndpointSuffix=/evil"),
                InvalidValue {
                    key: "EndpointSuffix",
                    reason: "character 1 is `/`: it must be a DNS suffix such as `core.windows.net`".into(),
                },
            ),
            (
                format!("BlobEndpoint=ftp://x;AccountName=acct;AccountKey={secret}"),
                InvalidValue {
                    key: "BlobEndpoint",
                    reason: "it must start with `http://` or `https://`".into(),
                },
            ),
            (
                format!("BlobEndpoint=https://x/?sv=1&sig=y;AccountName=acct;AccountKey={secret}"),
                InvalidValue {
                    key: "BlobEndpoint",
                    reason: "the endpoint must not have a query string (put a SAS token in `SharedAccessSignature`)"
                        .into(),
                },
            ),
            (
                format!("UseDevelopmentStorage=true;AccountKey={secret}"),
                Conflict {
                    a: "UseDevelopmentStorage",
                    b: "AccountKey",
                },
            ),
            (
                format!("BlobEndpoint=https://x;AccountKey={secret}"),
                Missing {
                    key: "AccountName",
                    why: "SharedKey signing with an account key needs the account name",
                },
            ),
        ];
        assert!(cases.len() >= 10);
        assert_eq!(parse(" ; ;").unwrap_err(), Empty);
        let mut messages = std::collections::HashSet::new();
        for (input, expected) in cases {
            let err = parse(&input).unwrap_err();
            assert_eq!(err, expected, "input {input:?}");
            let msg = err.to_string();
            assert!(!msg.contains(secret) && !msg.contains("c2VjcmV0"), "{msg}");
            assert!(messages.insert(msg.clone()), "message not distinct: {msg}");
        }
    }

    #[test]
    fn endpoints_are_checked() {
        let bad = [
            format!("AccountName=acct;AccountKey={KEY};EndpointSuffix=core\\windows.net"),
            format!("AccountName=acct;AccountKey={KEY};EndpointSuffix=core..net"),
            format!("AccountName=acct;AccountKey={KEY};BlobEndpoint=http://127.0.0.1:0/acct"),
            format!("AccountName=acct;AccountKey={KEY};BlobEndpoint=https://a.b:0"),
            format!("AccountName=acct;AccountKey={KEY};BlobEndpoint=https://a.b/x,AccountKey=y"),
            format!("AccountName=acct;AccountKey={KEY};BlobEndpoint=https://a=b.c"),
            format!(
                "AccountName=acct;AccountKey={KEY};BlobEndpoint=https://{}.c",
                "a".repeat(64)
            ),
        ];
        for cs in bad {
            let e = parse(&cs).unwrap_err();
            assert!(matches!(e, ConfigError::InvalidValue { .. }), "{cs}: {e:?}");
        }
        // A pasted SAS URL gives its query.
        let c = parse("BlobEndpoint=https://a.b;SharedAccessSignature=https://a.b/c?sv=1&sig=SIGSECRET").unwrap();
        assert!(matches!(c.credential, Credential::Sas(_)));
        assert!(!format!("{c:?}").contains("SIGSECRET"));
        // A proxy's password is not printed.
        let c = parse("UseDevelopmentStorage=true;DevelopmentStorageProxyUri=http://u:PROXYSECRET@p:8080").unwrap();
        assert!(!format!("{c:?}").contains("PROXYSECRET"), "{c:?}");
    }

    #[test]
    fn empty_variables_are_errors_not_development_storage() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        for name in [
            "AZURE_STORAGE_CONNECTION_STRING",
            "AZURE_STORAGE_ACCOUNT",
            "AZURE_STORAGE_KEY",
        ] {
            let pairs: &'static [(&'static str, &'static str)] = Box::leak(Box::new([(name, " ")]));
            assert_eq!(
                StorageConfig::from_vars(env(pairs)).unwrap_err(),
                ConfigError::EmptyVariable { name }
            );
        }
    }

    #[test]
    fn typos_get_a_suggestion_not_a_quote() {
        let e = parse(&format!("AccountName=acct;AccountKey:{KEY}")).unwrap_err();
        assert_eq!(
            e,
            ConfigError::UnknownKey {
                index: 2,
                suggestion: Some("AccountKey")
            }
        );
        let e = parse(&format!("AccountName=acct;{KEY}")).unwrap_err();
        assert!(!format!("{e} {e:?}").contains("a2V5MTIz"), "{e}");
    }

    #[test]
    fn key_never_in_debug() {
        let secret = "c2VjcmV0LWtleS12YWx1ZQ==";
        let c = parse(&format!("AccountName=acct;AccountKey={secret}")).unwrap();
        let dbg = format!("{c:?} {:?}", c.credential);
        assert!(!dbg.contains(secret) && !dbg.contains("c2VjcmV0"), "{dbg}");
        assert!(dbg.contains("acct"));
    }

    #[test]
    fn environment_variables() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        assert!(StorageConfig::from_vars(env(&[])).unwrap().is_none());
        let c = StorageConfig::from_vars(env(&[(
            "AZURE_STORAGE_CONNECTION_STRING",
            "UseDevelopmentStorage=true",
        )]))
        .unwrap()
        .unwrap();
        assert!(c.is_development());
        let c = StorageConfig::from_vars(env(&[("AZURE_STORAGE_ACCOUNT", "acct"), ("AZURE_STORAGE_KEY", KEY)]))
            .unwrap()
            .unwrap();
        assert_eq!(c.endpoint.as_str(), "https://acct.blob.core.windows.net/");
        let c = StorageConfig::from_vars(env(&[
            ("AZURE_STORAGE_ACCOUNT", "acct"),
            ("AZURE_STORAGE_SAS_TOKEN", "sv=1&sig=abc"),
            ("AZURE_STORAGE_SERVICE_ENDPOINT", "http://127.0.0.1:10000/acct"),
        ]))
        .unwrap()
        .unwrap();
        assert!(matches!(c.credential, Credential::Sas(_)));
        assert_eq!(c.endpoint.as_str(), "http://127.0.0.1:10000/acct");
        let e = StorageConfig::from_vars(env(&[("AZURE_STORAGE_ACCOUNT", "acct")])).unwrap_err();
        assert!(matches!(
            e,
            ConfigError::Missing {
                key: "AZURE_STORAGE_KEY",
                ..
            }
        ));
        let e = StorageConfig::from_vars(env(&[("AZURE_STORAGE_ACCOUNT", "acct"), ("AZURE_STORAGE_KEY", "!!")]))
            .unwrap_err();
        assert!(matches!(
            e,
            ConfigError::InvalidKey {
                key: "AZURE_STORAGE_KEY",
                ..
            }
        ));
    }
}
