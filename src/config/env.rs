//! The Azure CLI's environment variables (`AZURE_STORAGE_*`), with the authorization the user chose.

use url::Url;

use crate::auth::Credential;

use super::*;

impl StorageConfig {
    /// Builds a configuration from the environment variables the Azure CLI reads, as the
    /// `azmutex` CLI does with `--auth auto`: `AZURE_STORAGE_CONNECTION_STRING`, or
    /// `AZURE_STORAGE_ACCOUNT` with `AZURE_STORAGE_KEY` or `AZURE_STORAGE_SAS_TOKEN` (and
    /// optionally `AZURE_STORAGE_SERVICE_ENDPOINT` for a custom blob endpoint). With the `entra`
    /// feature (on by default), an account name or endpoint without a key or SAS token means
    /// Entra ID's default chain (see [`crate::EntraCredential`]); a token error then says first
    /// that no key or SAS token was found, and names any `AZURE_STORAGE_*` variable that is set
    /// but not one of these (a misspelt variable is the usual cause). `Ok(None)` when none of
    /// them is set, unless a variable close to one of them is (`AZURE_STORAGE_CONNECTON_STRING`):
    /// that is an error ([`StorageConfig::misspelt_env_variables`]).
    ///
    /// A variable that is set but empty is an error ([`ConfigError::EmptyVariable`]), never
    /// "not configured": a deployment whose secret did not arrive must not silently lock on
    /// local development storage.
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        let found = Self::from_env_unchecked()?;
        let misspelt = Self::misspelt_env_variables();
        if found.is_none() && !misspelt.is_empty() {
            // A deployment whose variable name has a typo must not lock on development storage.
            return Err(ConfigError::InvalidValue {
                key: "AZURE_STORAGE_*",
                reason: format!(
                    "nothing is configured, but {} is set: a misspelt variable? (refused rather than \
                     falling back to local development storage)",
                    misspelt.join(", ")
                ),
            });
        }
        Ok(found)
    }

    fn from_env_unchecked() -> Result<Option<Self>, ConfigError> {
        let var = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
        #[cfg(feature = "entra")]
        {
            Self::from_vars_with_auth(var, AuthChoice::Auto, |choice| {
                let builder = crate::auth::entra::EntraCredential::builder();
                let credential = match choice {
                    AuthChoice::Entra(kind) => builder.build(kind)?,
                    _ => builder.chain()?,
                };
                Ok(Credential::Bearer(std::sync::Arc::new(credential)))
            })
        }
        #[cfg(not(feature = "entra"))]
        {
            Self::from_vars(var)
        }
    }

    /// The `AZURE_STORAGE_*` variables set in this process that no Azure tool reads, each named
    /// with the variable it was probably meant to be (`` `AZURE_STORAGE_ACCESS_KEY` (did you
    /// mean `AZURE_STORAGE_KEY`?) ``). Only names are read, never values; a name that looks like
    /// a secret is described instead of quoted.
    pub fn unknown_env_variables() -> Vec<String> {
        unknown_storage_variables(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()))
    }

    /// Those of [`StorageConfig::unknown_env_variables`] that are close to a variable this crate
    /// reads (`AZURE_STORAGE_CONNECTON_STRING`): most likely a misspelling. [`StorageConfig::from_env`]
    /// refuses to report "nothing configured" while one is set.
    pub fn misspelt_env_variables() -> Vec<String> {
        Self::unknown_env_variables()
            .into_iter()
            .filter(|v| v.contains("(did you mean"))
            .collect()
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
        let credential = entra(auth)?;
        #[cfg(feature = "entra")]
        let credential = match (auth, credential) {
            // No key or SAS was found, so `Auto` fell through to Entra ID: its errors say so first.
            (AuthChoice::Auto, Credential::Bearer(inner)) => Credential::Bearer(std::sync::Arc::new(FellThrough {
                inner,
                note: fall_through_note(&StorageConfig::unknown_env_variables()),
            })),
            (_, credential) => credential,
        };
        Ok(Some(Self {
            endpoint,
            credential,
            proxy: None,
        }))
    }
}

/// The blob endpoint from `AZURE_STORAGE_SERVICE_ENDPOINT`, else the account name's public
/// endpoint; `why` says what needs it when neither is given.
pub(super) fn env_endpoint(
    endpoint: Option<&str>,
    account: Option<&str>,
    why: &'static str,
) -> Result<Url, ConfigError> {
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

/// The `AZURE_STORAGE_*` variables the Azure CLI reads (this crate reads all but the last).
const STORAGE_VARIABLES: [&str; 6] = [
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_SERVICE_ENDPOINT",
    "AZURE_STORAGE_AUTH_MODE",
];

/// [`StorageConfig::unknown_env_variables`] among `names`.
pub(super) fn unknown_storage_variables(names: impl Iterator<Item = String>) -> Vec<String> {
    const PREFIX: &str = "AZURE_STORAGE_";
    let mut found: Vec<String> = names
        .filter(|n| n.starts_with(PREFIX) && !STORAGE_VARIABLES.contains(&n.as_str()))
        .map(|n| {
            if crate::scrub::looks_like_secret(&n) {
                return format!(
                    "a variable whose name looks like a secret ({} characters)",
                    n.chars().count()
                );
            }
            let tail = &n[PREFIX.len()..];
            let last = |s: &str| s.rsplit('_').next().unwrap_or(s).to_string();
            let meant = STORAGE_VARIABLES[..5]
                .iter()
                .find(|k| edit_distance(&k[PREFIX.len()..], tail) <= 2)
                .or_else(|| {
                    STORAGE_VARIABLES[..5]
                        .iter()
                        .find(|k| last(&k[PREFIX.len()..]) == last(tail))
                })
                .or_else(|| {
                    STORAGE_VARIABLES[..5].iter().find(|k| {
                        let k = &k[PREFIX.len()..];
                        tail.len() >= 3 && (k.contains(tail) || tail.contains(k))
                    })
                });
            match meant {
                Some(k) => format!("`{n}` (did you mean `{k}`?)"),
                None => format!("`{n}`"),
            }
        })
        .collect();
    found.sort();
    found
}

/// What an error says first when `Auto` fell through to Entra ID.
#[cfg(feature = "entra")]
pub(super) fn fall_through_note(unknown: &[String]) -> String {
    let mut note = "no account key, SAS token or connection string was found (AZURE_STORAGE_KEY, \
                    AZURE_STORAGE_SAS_TOKEN, AZURE_STORAGE_CONNECTION_STRING), so Entra ID was tried"
        .to_string();
    if !unknown.is_empty() {
        note.push_str(&format!("; set but not read: {}", unknown.join(", ")));
    }
    note
}

/// A token provider whose errors begin with why Entra ID was used at all.
#[cfg(feature = "entra")]
struct FellThrough {
    inner: std::sync::Arc<dyn crate::auth::TokenProvider>,
    note: String,
}

#[cfg(feature = "entra")]
impl crate::auth::TokenProvider for FellThrough {
    fn token(&self) -> crate::auth::TokenFuture<'_> {
        use crate::auth::entra::EntraError;
        use crate::auth::{TokenError, TransientTokenError};
        Box::pin(async move {
            self.inner.token().await.map_err(|e| -> TokenError {
                let note = self.note.clone();
                match e.downcast::<EntraError>() {
                    Ok(source) => Box::new(EntraError::Explained { note, source }),
                    Err(e) => match e.downcast::<TransientTokenError>() {
                        Ok(t) => Box::new(TransientTokenError(format!("{note}; {}", t.0))),
                        Err(e) => format!("{note}; {e}").into(),
                    },
                }
            })
        })
    }
}
