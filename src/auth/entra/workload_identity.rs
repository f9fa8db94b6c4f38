//! AKS workload identity: the federated service-account token in `AZURE_FEDERATED_TOKEN_FILE`
//! exchanged for an Entra token (client credentials grant with a client assertion). The file is
//! re-read for every exchange: the kubelet rotates it.
//! See [Workload identity](https://learn.microsoft.com/en-us/azure/aks/workload-identity-overview)
//! and [Client credentials flow, federated credential](https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow#third-case-access-token-request-with-a-federated-credential).

use std::path::PathBuf;

use crate::transport::{read_regular_file, FILE_READ_TIMEOUT};

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

    /// The current federated token (never quoted in errors). Read on a thread of its own,
    /// never on a runtime worker: only a regular file of at most 64 KiB (checked before and
    /// after opening), given up after [`FILE_READ_TIMEOUT`] (a file system that hangs, a
    /// special file).
    async fn assertion(&self) -> Result<String, EntraError> {
        let bad = |why: String| EntraError::InvalidConfig { kind: KIND, why };
        // The value may be the token itself, put where its path belongs: never quoted then.
        let name = crate::auth::scrub::quote_or_describe(&self.file.to_string_lossy());
        let path = self.file.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("azmutex-token-file".into())
            .spawn(move || {
                let _ = tx.send(read_regular_file(&path, MAX_ASSERTION_BYTES));
            })
            .map_err(|e| bad(format!("cannot start a thread to read the federated token file: {e}")))?;
        let bytes = match tokio::time::timeout(FILE_READ_TIMEOUT, rx).await {
            Ok(Ok(Ok(bytes))) => bytes,
            Ok(Ok(Err(why))) => return Err(bad(format!("the federated token file {name}: {why}"))),
            Ok(Err(_)) => return Err(bad(format!("the federated token file {name} could not be read"))),
            Err(_) => {
                return Err(bad(format!(
                    "the federated token file {name} could not be read within {} s",
                    FILE_READ_TIMEOUT.as_secs()
                )))
            }
        };
        let text =
            String::from_utf8(bytes).map_err(|_| bad(format!("the federated token file {name} is not UTF-8")))?;
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
            let assertion = self.assertion().await?;
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
