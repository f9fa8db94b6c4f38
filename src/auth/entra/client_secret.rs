//! A service principal's client secret: the client credentials grant.
//! See [Client credentials flow, first case](https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow#first-case-access-token-request-with-a-shared-secret).

use url::Url;

use super::{
    client_credentials, entra_token_url, required, EntraBuilder, EntraError, EntraKind, FetchFuture, Secret, TokenHttp,
    TokenSource,
};

const KIND: EntraKind = EntraKind::ClientSecret;

/// `AZURE_TENANT_ID` + `AZURE_CLIENT_ID` + `AZURE_CLIENT_SECRET` -> a token.
pub(crate) struct ClientSecret {
    http: TokenHttp,
    url: Url,
    client_id: String,
    secret: Secret,
}

impl ClientSecret {
    pub(crate) fn configure(b: &EntraBuilder) -> Result<Self, EntraError> {
        let secret = match &b.client_secret {
            Some(s) if s.0.is_empty() => {
                return Err(EntraError::NotConfigured {
                    kind: KIND,
                    why: "the client secret given is empty".into(),
                })
            }
            Some(s) => s.clone(),
            None => Secret(required(KIND, b.var("AZURE_CLIENT_SECRET"), "AZURE_CLIENT_SECRET")?),
        };
        let tenant = required(KIND, b.setting(&b.tenant_id, "AZURE_TENANT_ID"), "AZURE_TENANT_ID")?;
        let client_id = required(KIND, b.setting(&b.client_id, "AZURE_CLIENT_ID"), "AZURE_CLIENT_ID")?;
        let authority = b
            .authority()
            .map_err(|why| EntraError::InvalidConfig { kind: KIND, why })?;
        Ok(Self {
            http: b.http(KIND, false)?,
            url: entra_token_url(KIND, &authority, &tenant)?,
            client_id,
            secret,
        })
    }
}

impl TokenSource for ClientSecret {
    fn fetch(&self) -> FetchFuture<'_> {
        Box::pin(async move {
            client_credentials(
                &self.http,
                KIND,
                &self.url,
                &self.client_id,
                &[("client_secret", &self.secret.0)],
            )
            .await
        })
    }
}
