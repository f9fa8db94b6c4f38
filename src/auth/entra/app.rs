//! The Entra v2 token endpoint and the client-credentials request (secret or assertion).

use url::Url;

use super::*;

/// The Entra v2 token endpoint: `{authority}/{tenant}/oauth2/v2.0/token`.
/// See [Client credentials flow](https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow#get-a-token).
/// The authority must be `https` (as the SDKs require); the tenant a GUID or domain name.
pub(crate) fn entra_token_url(kind: EntraKind, authority: &str, tenant: &str) -> Result<Url, EntraError> {
    let bad = |why: String| EntraError::InvalidConfig { kind, why };
    if tenant.is_empty()
        || tenant.len() > 256
        || !tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(bad(
            "the tenant id (`AZURE_TENANT_ID`) must be a GUID or a domain name".into()
        ));
    }
    let base = Url::parse(authority.trim_end_matches('/'))
        .map_err(|e| bad(format!("the authority host (`AZURE_AUTHORITY_HOST`) is not a URL: {e}")))?;
    if !base.username().is_empty() || base.password().is_some() {
        return Err(bad(
            "the authority host (`AZURE_AUTHORITY_HOST`) must not contain `user:password@` (not shown)".into(),
        ));
    }
    if base.scheme() != "https" || base.host_str().is_none() || base.query().is_some() {
        return Err(bad(
            "the authority host (`AZURE_AUTHORITY_HOST`) must be an https:// URL without a query".into(),
        ));
    }
    let url = format!("{}/{tenant}/oauth2/v2.0/token", base.as_str().trim_end_matches('/'));
    Url::parse(&url).map_err(|e| bad(format!("the token endpoint URL is invalid: {e}")))
}

/// An Entra application as a client of the token endpoint: where client-credentials requests
/// go (`AZURE_AUTHORITY_HOST`, `AZURE_TENANT_ID`) and as whom (`AZURE_CLIENT_ID`). Shared by the
/// client secret and workload identity sources, which differ only in their proof.
pub(crate) struct EntraApp {
    pub(super) http: TokenHttp,
    pub(super) url: Url,
    pub(super) client_id: String,
    pub(super) tenant: String,
}

impl EntraApp {
    pub(crate) fn configure(b: &EntraBuilder, kind: EntraKind) -> Result<Self, EntraError> {
        let tenant = required(kind, b.setting(&b.tenant_id, "AZURE_TENANT_ID"), "AZURE_TENANT_ID")?;
        let client_id = required(kind, b.setting(&b.client_id, "AZURE_CLIENT_ID"), "AZURE_CLIENT_ID")?;
        let authority = b.authority().map_err(|why| EntraError::InvalidConfig { kind, why })?;
        Ok(Self {
            http: b.http(kind, false)?,
            url: entra_token_url(kind, &authority, &tenant)?,
            client_id,
            tenant,
        })
    }

    /// One token request with the client's `proof`.
    pub(crate) async fn token(&self, kind: EntraKind, proof: &[(&str, &str)]) -> Result<Fetched, EntraError> {
        client_credentials(&self.http, kind, &self.url, &self.client_id, &self.tenant, proof).await
    }
}

/// One client-credentials token request (`grant_type=client_credentials`) to `url` with the
/// client's proof (`client_secret`, or `client_assertion_type` + `client_assertion`).
pub(crate) async fn client_credentials(
    http: &TokenHttp,
    kind: EntraKind,
    url: &Url,
    client_id: &str,
    tenant: &str,
    proof: &[(&str, &str)],
) -> Result<Fetched, EntraError> {
    let body = {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("client_id", client_id)
            .append_pair("scope", STORAGE_SCOPE)
            .append_pair("grant_type", "client_credentials");
        for (k, v) in proof {
            form.append_pair(k, v);
        }
        form.finish()
    };
    let request = http
        .client()
        .post(url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(reqwest::header::ACCEPT, "application/json")
        .body(body);
    let answer = http.send(kind, request, None).await?;
    // Every value we sent: a client id swapped with the secret is quoted back by Entra
    // (AADSTS700016 names the client id it got).
    let secrets: Vec<&str> = [client_id, tenant]
        .into_iter()
        .chain(
            proof
                .iter()
                .filter(|(k, _)| *k != "client_assertion_type")
                .map(|(_, v)| *v),
        )
        .collect();
    token_from_answer(kind, &secrets, &answer)
}

/// A required setting, or `NotConfigured` naming it.
pub(crate) fn required(
    kind: EntraKind,
    value: Result<Option<String>, String>,
    name: &str,
) -> Result<String, EntraError> {
    match value {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(EntraError::NotConfigured {
            kind,
            why: format!("`{name}` is not set"),
        }),
        // Set but empty: an error, as for storage keys (never a silent move down the chain).
        Err(why) => Err(EntraError::InvalidConfig { kind, why }),
    }
}
