//! A service principal's client secret: the client credentials grant.
//! See [Client credentials flow, first case](https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow#first-case-access-token-request-with-a-shared-secret).

use super::{required, EntraApp, EntraBuilder, EntraError, EntraKind, FetchFuture, Secret, TokenSource};

const KIND: EntraKind = EntraKind::ClientSecret;

/// `AZURE_TENANT_ID` + `AZURE_CLIENT_ID` + `AZURE_CLIENT_SECRET` -> a token.
pub(crate) struct ClientSecret {
    app: EntraApp,
    secret: Secret,
}

impl ClientSecret {
    pub(crate) fn configure(b: &EntraBuilder) -> Result<Self, EntraError> {
        let secret = match &b.client_secret {
            Some(s) if s.0.trim().is_empty() => {
                return Err(EntraError::InvalidConfig {
                    kind: KIND,
                    why: "the client secret given is empty".into(),
                })
            }
            Some(s) => s.clone(),
            None => Secret(required(KIND, b.var("AZURE_CLIENT_SECRET"), "AZURE_CLIENT_SECRET")?),
        };
        Ok(Self {
            app: EntraApp::configure(b, KIND)?,
            secret,
        })
    }
}

impl TokenSource for ClientSecret {
    fn fetch(&self) -> FetchFuture<'_> {
        Box::pin(async move { self.app.token(KIND, &[("client_secret", &self.secret.0)]).await })
    }
}
