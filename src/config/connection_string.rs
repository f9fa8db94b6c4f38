//! Connection strings: `Key=Value;` pairs, development storage, the credential they name.
//! See [Configure Azure Storage connection strings](https://learn.microsoft.com/en-us/azure/storage/common/storage-configure-connection-string).

use crate::auth::{AccountKey, Credential, SasToken};

use super::*;

/// Canonical names of the keys we accept, matched case-insensitively.
pub(super) const KEYS: [&str; 8] = [
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
pub(super) const OTHER_SERVICE_KEYS: [&str; 8] = [
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
}

/// What the account, key and SAS settings are called where they came from, for error messages.
pub(super) struct Names {
    account: &'static str,
    key: &'static str,
    sas: &'static str,
}

pub(super) const CONNECTION_STRING_NAMES: Names = Names {
    account: "AccountName",
    key: "AccountKey",
    sas: "SharedAccessSignature",
};
pub(super) const ENV_NAMES: Names = Names {
    account: "AZURE_STORAGE_ACCOUNT",
    key: "AZURE_STORAGE_KEY",
    sas: "AZURE_STORAGE_SAS_TOKEN",
};

/// The credential from an account name, key and SAS token: exactly one of key and SAS.
pub(super) fn credential(
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
            why: "a lock needs write access: give an account key or a SAS token, or authorize with Entra ID \
                  (feature `entra`: `StorageConfig::from_env`, `StorageConfig::entra`, the CLI's `--auth`)",
        }),
    }
}

/// Storage account names: 3–24 lower-case letters and digits.
/// See [Storage account name](https://learn.microsoft.com/en-us/azure/azure-resource-manager/management/resource-name-rules#microsoftstorage).
/// The error names the first bad character's position and kind, never the name (a swapped
/// `--account-name`/`--account-key` puts the key here).
pub(super) fn check_account_name(key: &'static str, name: &str) -> Result<(), ConfigError> {
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
