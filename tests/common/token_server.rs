//! A local token endpoint for the tests, speaking the documented protocols: the instance
//! metadata endpoint (`GET .../metadata/identity/oauth2/token`, header `Metadata: true`), App
//! Service (`GET /msi/token`, header `X-IDENTITY-HEADER`), and the Entra v2 token endpoint
//! (`POST /{tenant}/oauth2/v2.0/token`, client secret or client assertion). It mints unsigned
//! JWTs with the claims Azurite's `--oauth basic` checks (audience, issuer, times), with a
//! configurable lifetime, and can be told to hang, fail (500) or refuse (401). Over HTTPS when
//! given a certificate (the Entra endpoint must be `https://`). Included with `#[path]` by the
//! tests that need it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const TENANT: &str = "ab1f708d-50f6-404c-a006-d71b2ac7a606";
pub const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
pub const SECRET: &str = "s3cr3t-Val~ue.NEVER-printed";
pub const IDENTITY_HEADER: &str = "identity-header-NEVER-printed";

/// What the server does with token requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Normal = 0,
    /// Accept the connection, never answer.
    Hang = 1,
    /// 500 with an error body.
    Fail = 2,
    /// 401 `invalid_client`.
    Refuse = 3,
}

pub struct TokenServer {
    pub port: u16,
    /// `https://localhost:PORT` or `http://127.0.0.1:PORT`.
    pub base: String,
    mode: AtomicU8,
    lifetime: AtomicU64,
    requests: AtomicU64,
    /// The expected federated assertion (workload identity); rotated by the test.
    pub assertion: Mutex<String>,
    /// Every issued token's `exp`, by token.
    pub issued: Mutex<HashMap<String, u64>>,
    /// The query of every GET (IMDS / App Service), for checking parameters.
    pub queries: Mutex<Vec<String>>,
}

impl TokenServer {
    /// Starts on a free loopback port, over TLS with `cert`/`key` (PEM) if given.
    pub async fn start(tls: Option<(&str, &str)>, lifetime_secs: u64) -> Arc<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let base = match tls {
            Some(_) => format!("https://localhost:{port}"),
            None => format!("http://127.0.0.1:{port}"),
        };
        let server = Arc::new(Self {
            port,
            base,
            mode: AtomicU8::new(0),
            lifetime: AtomicU64::new(lifetime_secs),
            requests: AtomicU64::new(0),
            assertion: Mutex::new("federated-assertion-1".into()),
            issued: Mutex::new(HashMap::new()),
            queries: Mutex::new(Vec::new()),
        });
        let acceptor = tls.map(|(cert, key)| {
            use rustls::pki_types::pem::PemObject as _;
            let certs = rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            let config =
                rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_no_client_auth()
                    .with_single_cert(certs, key)
                    .unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let s = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        Some(a) => {
                            if let Ok(tls) = a.accept(stream).await {
                                s.serve(tls).await;
                            }
                        }
                        None => s.serve(stream).await,
                    }
                });
            }
        });
        server
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    pub fn set_lifetime(&self, secs: u64) {
        self.lifetime.store(secs, Ordering::SeqCst);
    }

    /// Token requests received (all kinds, all outcomes).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// The `exp` of a token this server issued.
    pub fn exp_of(&self, token: &str) -> Option<u64> {
        self.issued.lock().unwrap().get(token).copied()
    }

    /// An unsigned JWT Azurite's basic OAuth accepts, valid for the configured lifetime.
    pub fn mint(&self) -> (String, u64) {
        let lifetime = self.lifetime.load(Ordering::SeqCst);
        let (token, exp) = mint_jwt(lifetime);
        self.issued.lock().unwrap().insert(token.clone(), exp);
        (token, lifetime)
    }

    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(&self, mut stream: S) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            let Ok(n) = stream.read(&mut chunk).await else { return };
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.lines();
        let request_line = lines.next().unwrap_or_default().to_string();
        let headers: HashMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let length: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        while buf.len() < head_end + length {
            let Ok(n) = stream.read(&mut chunk).await else { return };
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).to_string();
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let (status, answer) = self.answer(&method, path, query, &headers, &body).await;
        let response = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
            answer.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    async fn answer(
        &self,
        method: &str,
        path: &str,
        query: &str,
        headers: &HashMap<String, String>,
        body: &str,
    ) -> (u16, String) {
        let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes()).into_owned().collect();
        let q: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        // Protocol checks first (a probe without `Metadata: true` gets IMDS's 400).
        let refusal = |code: &str, why: &str| {
            (
                400,
                format!(r#"{{"error":"{code}","error_description":"{why}","error_codes":[1]}}"#),
            )
        };
        let expires_style;
        if method == "GET" && path == "/metadata/identity/oauth2/token" {
            if headers.get("metadata").map(String::as_str) != Some("true") {
                return refusal("invalid_request", "Required metadata header not specified");
            }
            if q.get("api-version").map(String::as_str) != Some("2018-02-01")
                || q.get("resource").map(String::as_str) != Some("https://storage.azure.com/")
            {
                return refusal("invalid_request", "bad api-version or resource");
            }
            self.queries.lock().unwrap().push(query.to_string());
            expires_style = "imds";
        } else if method == "GET" && path == "/msi/token" {
            if headers.get("x-identity-header").map(String::as_str) != Some(IDENTITY_HEADER)
                || q.get("api-version").map(String::as_str) != Some("2019-08-01")
                || q.get("resource").map(String::as_str) != Some("https://storage.azure.com/")
            {
                return refusal("invalid_request", "bad identity header, api-version or resource");
            }
            self.queries.lock().unwrap().push(query.to_string());
            expires_style = "appservice";
        } else if method == "POST" && path == format!("/{TENANT}/oauth2/v2.0/token") {
            if form.get("scope").map(String::as_str) != Some("https://storage.azure.com/.default")
                || form.get("grant_type").map(String::as_str) != Some("client_credentials")
                || form.get("client_id").map(String::as_str) != Some(CLIENT_ID)
            {
                return refusal("invalid_request", "bad scope, grant type or client id");
            }
            let ok = match (form.get("client_secret"), form.get("client_assertion")) {
                (Some(secret), None) => secret == SECRET,
                (None, Some(assertion)) => {
                    form.get("client_assertion_type").map(String::as_str)
                        == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
                        && *assertion == *self.assertion.lock().unwrap()
                }
                _ => false,
            };
            if !ok {
                return (
                    401,
                    r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided."}"#
                        .into(),
                );
            }
            expires_style = "entra";
        } else {
            return (404, r#"{"error":"not_found"}"#.into());
        }
        self.requests.fetch_add(1, Ordering::SeqCst);
        match self.mode.load(Ordering::SeqCst) {
            1 => {
                tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                return (500, String::new());
            }
            2 => return (500, r#"{"error":"temporarily_unavailable"}"#.into()),
            3 => return refusal("invalid_client", "AADSTS700016: Application not found"),
            _ => {}
        }
        let (token, lifetime) = self.mint();
        let now = now();
        let body = match expires_style {
            "imds" => format!(
                r#"{{"access_token":"{token}","expires_in":"{lifetime}","expires_on":"{}","resource":"https://storage.azure.com/","token_type":"Bearer"}}"#,
                now + lifetime
            ),
            "appservice" => format!(
                r#"{{"access_token":"{token}","expires_on":"{}","resource":"https://storage.azure.com/","token_type":"Bearer","client_id":"{CLIENT_ID}"}}"#,
                now + lifetime
            ),
            _ => format!(
                r#"{{"token_type":"Bearer","expires_in":{lifetime},"ext_expires_in":{lifetime},"access_token":"{token}"}}"#
            ),
        };
        (200, body)
    }
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// An unsigned JWT with Azurite's basic OAuth claims, expiring in `lifetime` seconds; and its
/// `exp`.
pub fn mint_jwt(lifetime: u64) -> (String, u64) {
    static N: AtomicU64 = AtomicU64::new(0);
    let now = now();
    let exp = now + lifetime;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(r#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = format!(
        r#"{{"aud":"https://storage.azure.com","iss":"https://sts.windows.net/{TENANT}/","iat":{0},"nbf":{0},"exp":{exp},"oid":"00000000-0000-0000-0000-000000000001","n":{1}}}"#,
        now - 60,
        N.fetch_add(1, Ordering::Relaxed)
    );
    (
        format!("{header}.{}.{}", b64.encode(claims), b64.encode("not-a-signature")),
        exp,
    )
}

/// The `exp` claim of a JWT minted by [`mint_jwt`].
pub fn jwt_exp(token: &str) -> Option<u64> {
    let claims = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&json).ok()?;
    v["exp"].as_u64()
}

/// One HTTPS Azurite with `--oauth basic` (certificate from a test CA) per test binary, and
/// its PKI, which the token server's HTTPS endpoint shares.
pub fn https_oauth_azurite() -> &'static (Pki, crate::common::Service) {
    static AZURITE: std::sync::OnceLock<(Pki, crate::common::Service)> = std::sync::OnceLock::new();
    AZURITE.get_or_init(|| {
        let pki = make_pki(std::env::temp_dir().join(crate::common::unique("azmutex-entra")));
        let cert = pki.dir.join("cert.pem");
        let key = pki.dir.join("key.pem");
        let args = [
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--oauth",
            "basic",
        ];
        let azurite = crate::common::start_azurite("https", &args);
        (pki, azurite)
    })
}

/// A test PKI: a CA and a `localhost` certificate it signed (PEM), written to a directory.
pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub dir: std::path::PathBuf,
}

pub fn make_pki(dir: std::path::PathBuf) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "azmutex entra test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        cert_pem: leaf.pem(),
        key_pem: leaf_key.serialize_pem(),
        dir,
    }
}

/// Writes a fake `az` into `dir` that answers `account get-access-token --resource
/// https://storage.azure.com/ --output json` with a token minted like the server's (its `exp`
/// `lifetime` seconds away), in the newer (`expires_on`) or older (`expiresOn`, UTC under
/// `TZ=UTC`) form; or fails like a signed-out CLI when `signed_in` is false.
pub fn fake_az(dir: &std::path::Path, lifetime: u64, newer: bool, signed_in: bool) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("az");
    let (token, exp) = mint_jwt(lifetime);
    let expires = if newer {
        format!(r#""expiresOn": "2000-01-01 00:00:00.000000", "expires_on": {exp}"#)
    } else {
        let out = std::process::Command::new("date")
            .env("TZ", "UTC")
            .args(["-d", &format!("@{exp}"), "+%Y-%m-%d %H:%M:%S.000000"])
            .output()
            .unwrap();
        format!(r#""expiresOn": "{}""#, String::from_utf8_lossy(&out.stdout).trim())
    };
    let script = if signed_in {
        format!(
            r#"#!/bin/sh
[ "$1 $2 $3 $4 $5 $6" = "account get-access-token --resource https://storage.azure.com/ --output json" ] || {{ echo "ERROR: unexpected arguments: $*" >&2; exit 2; }}
[ "$TZ" = "UTC" ] || {{ echo "ERROR: TZ is not UTC" >&2; exit 2; }}
echo "$(date +%s)" >> "$0.calls"
cat <<'JSON'
{{
  "accessToken": "{token}",
  {expires},
  "subscription": "00000000-0000-0000-0000-000000000000",
  "tenant": "{TENANT}",
  "tokenType": "Bearer"
}}
JSON
"#
        )
    } else {
        "#!/bin/sh\necho \"ERROR: Please run 'az login' to setup account.\" >&2\nexit 1\n".to_string()
    };
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}
