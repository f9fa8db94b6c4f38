//! `--auth`: how the CLI authorizes (account key, SAS, or a kind of Entra ID credential), and
//! the Entra ID credential built from the flags.

use azmutex::{AuthChoice, ClientOptions, ConfigError, Credential};
use clap::ValueEnum;

use super::Connection;

/// The `--auth` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthArg {
    /// The account key (SharedKey).
    Key,
    /// A SAS token.
    Sas,
    /// A managed identity (App Service/Functions/Container Apps, or the VM/AKS metadata endpoint).
    ManagedIdentity,
    /// AKS workload identity (AZURE_FEDERATED_TOKEN_FILE, AZURE_CLIENT_ID, AZURE_TENANT_ID).
    WorkloadIdentity,
    /// A service principal's secret (AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET).
    ClientSecret,
    /// `az account get-access-token` (after `az login`).
    AzureCli,
    /// A key or SAS token if given, else Entra ID: environment secret, workload identity,
    /// managed identity, Azure CLI, in that order.
    Auto,
}

/// The library's choice for an `--auth` value.
pub fn choice(auth: AuthArg) -> Result<AuthChoice, ConfigError> {
    #[cfg(feature = "entra")]
    {
        use azmutex::EntraKind;
        Ok(match auth {
            AuthArg::Key => AuthChoice::Key,
            AuthArg::Sas => AuthChoice::Sas,
            AuthArg::Auto => AuthChoice::Auto,
            AuthArg::ManagedIdentity => AuthChoice::Entra(EntraKind::ManagedIdentity),
            AuthArg::WorkloadIdentity => AuthChoice::Entra(EntraKind::WorkloadIdentity),
            AuthArg::ClientSecret => AuthChoice::Entra(EntraKind::ClientSecret),
            AuthArg::AzureCli => AuthChoice::Entra(EntraKind::AzureCli),
        })
    }
    #[cfg(not(feature = "entra"))]
    match auth {
        AuthArg::Key => Ok(AuthChoice::Key),
        AuthArg::Sas => Ok(AuthChoice::Sas),
        AuthArg::Auto => Ok(AuthChoice::Auto),
        _ => Err(ConfigError::InvalidValue {
            key: "AZMUTEX_AUTH",
            reason: "this azmutex was built without Entra ID support (cargo feature `entra`)".into(),
        }),
    }
}

/// The Entra ID credential for `choice` (`Auto`: the default chain), from the flags and the
/// environment.
#[cfg(feature = "entra")]
pub fn entra_credential(
    conn: &Connection,
    options: &ClientOptions,
    choice: AuthChoice,
) -> Result<Credential, ConfigError> {
    use azmutex::auth::entra::{EntraCredential, UserAssigned};
    // The storage requests' options: the same private CA (`--ca-cert`), proxy and timeouts.
    let mut builder = EntraCredential::builder().client_options(options);
    if let Some(v) = &conn.client_id {
        builder = builder.client_id(v);
    }
    if let Some(v) = &conn.tenant_id {
        builder = builder.tenant_id(v);
    }
    if let Some(v) = &conn.authority_host {
        builder = builder.authority_host(v);
    }
    if let Some(v) = &conn.object_id {
        builder = builder.user_assigned(UserAssigned::ObjectId(v.clone()));
    }
    if let Some(v) = &conn.resource_id {
        builder = builder.user_assigned(UserAssigned::ResourceId(v.clone()));
    }
    let credential = match choice {
        AuthChoice::Entra(kind) => builder.build(kind)?,
        _ => builder.chain()?,
    };
    Ok(Credential::Bearer(std::sync::Arc::new(credential)))
}

/// Without the `entra` feature there is no Entra ID credential.
#[cfg(not(feature = "entra"))]
pub fn entra_credential(
    _conn: &Connection,
    _options: &ClientOptions,
    _choice: AuthChoice,
) -> Result<Credential, ConfigError> {
    Err(ConfigError::Missing {
        key: "AZURE_STORAGE_KEY",
        why:
            "this azmutex was built without Entra ID support (cargo feature `entra`): give an account key or SAS token",
    })
}
