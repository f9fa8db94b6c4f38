//! AKS workload identity: the federated service-account token in `AZURE_FEDERATED_TOKEN_FILE`
//! exchanged for an Entra token (client credentials grant with a client assertion). The file is
//! re-read for every exchange: the kubelet rotates it.
//! See [Workload identity](https://learn.microsoft.com/en-us/azure/aks/workload-identity-overview)
//! and [Client credentials flow, federated credential](https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow#third-case-access-token-request-with-a-federated-credential).

use std::io::Read as _;
use std::path::PathBuf;

use super::{required, EntraApp, EntraBuilder, EntraError, EntraKind, FetchFuture, TokenSource, CLIENT_ASSERTION_TYPE};

const KIND: EntraKind = EntraKind::WorkloadIdentity;

/// The largest federated token file read (a projected token is about 1 KiB).
const MAX_ASSERTION_BYTES: u64 = 64 * 1024;

/// `AZURE_FEDERATED_TOKEN_FILE` + `AZURE_CLIENT_ID` + `AZURE_TENANT_ID` -> a token.
pub(crate) struct WorkloadIdentity {
    app: EntraApp,
    file: PathBuf,
}

impl WorkloadIdentity {
    pub(crate) fn configure(b: &EntraBuilder) -> Result<Self, EntraError> {
        let file = match &b.federated_token_file {
            Some(f) => f.clone(),
            None => PathBuf::from(required(
                KIND,
                b.var("AZURE_FEDERATED_TOKEN_FILE"),
                "AZURE_FEDERATED_TOKEN_FILE",
            )?),
        };
        Ok(Self {
            app: EntraApp::configure(b, KIND)?,
            file,
        })
    }

    /// The current federated token (never quoted in errors).
    fn assertion(&self) -> Result<String, EntraError> {
        let bad = |why: String| EntraError::InvalidConfig { kind: KIND, why };
        // The value may be the token itself, put where its path belongs: never quoted then.
        let name = crate::auth::scrub::quote_or_describe(&self.file.to_string_lossy());
        // Read on a runtime worker, so it must not block: a FIFO (or device) here would hang
        // the open or the read for ever. Only a regular file is read (at most 64 KiB).
        let meta = std::fs::metadata(&self.file)
            .map_err(|e| bad(format!("cannot read the federated token file {name}: {e}")))?;
        if !meta.is_file() {
            return Err(bad(format!("the federated token file {name} is not a regular file")));
        }
        let file = std::fs::File::open(&self.file)
            .map_err(|e| bad(format!("cannot read the federated token file {name}: {e}")))?;
        let mut text = String::new();
        file.take(MAX_ASSERTION_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| bad(format!("cannot read the federated token file {name}: {e}")))?;
        if text.len() as u64 > MAX_ASSERTION_BYTES {
            return Err(bad(format!("the federated token file {name} is larger than 64 KiB")));
        }
        let token = text.trim();
        if token.is_empty() {
            return Err(bad(format!("the federated token file {name} is empty")));
        }
        Ok(token.to_string())
    }
}

impl TokenSource for WorkloadIdentity {
    fn fetch(&self) -> FetchFuture<'_> {
        Box::pin(async move {
            let assertion = self.assertion()?;
            self.app
                .token(
                    KIND,
                    &[
                        ("client_assertion_type", CLIENT_ASSERTION_TYPE),
                        ("client_assertion", &assertion),
                    ],
                )
                .await
        })
    }
}
