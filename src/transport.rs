//! How requests reach the service: one HTTP client builder (TLS trust, proxies, timeouts, limits)
//! shared by the Blob REST client and by token requests, and the classification of transport
//! failures (TLS problems, error chains).
//!
//! It knows connections, not the Blob service: [`crate::rest`] gives meaning to the answers.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use url::Url;

use crate::error::{sanitize_text, InvalidInput, TlsProblem};
use crate::rest::ClientOptions;

/// The most response headers accepted (8 KiB of metadata is at most a few hundred items).
const MAX_RESPONSE_HEADERS: usize = 1024;

/// Which proxies requests go through.
///
/// The default, [`ProxyConfig::FromEnvironment`], reads `HTTPS_PROXY`, `HTTP_PROXY`,
/// `ALL_PROXY` and `NO_PROXY` (each also in lower case, which wins, as in curl) when the client
/// is built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ProxyConfig {
    /// Proxies from the environment variables, as curl reads them ([`Proxies::from_env`]).
    #[default]
    FromEnvironment,
    /// No proxy, whatever the environment says.
    Direct,
    /// These proxies.
    Explicit(Proxies),
}

/// Proxy URLs by the scheme of the request they carry, and the hosts that bypass them.
///
/// `http://[user:password@]host:port` proxies are supported (HTTPS requests go through them
/// with `CONNECT`); credentials in the URL are sent as `Proxy-Authorization: Basic` and are
/// never printed ([`fmt::Debug`] shows `***`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Proxies {
    /// The proxy for `http://` endpoints.
    pub http: Option<Url>,
    /// The proxy for `https://` endpoints.
    pub https: Option<Url>,
    /// Hosts that bypass the proxies, as in `NO_PROXY`: comma-separated host names (a name
    /// matches itself and its subdomains; a leading `.` or `*.` is ignored), IP addresses,
    /// CIDR blocks, or `*` for all.
    pub no_proxy: Option<String>,
}

impl fmt::Debug for Proxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxies")
            .field("http", &self.http.as_ref().map(crate::config::redact_url))
            .field("https", &self.https.as_ref().map(crate::config::redact_url))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

impl Proxies {
    /// One proxy for every request (as `--proxy` or `DevelopmentStorageProxyUri`), with no
    /// exceptions.
    pub fn all(proxy: &str) -> Result<Self, InvalidInput> {
        let url = parse_proxy_url("proxy", proxy)?;
        Ok(Self {
            http: Some(url.clone()),
            https: Some(url),
            no_proxy: None,
        })
    }

    /// The proxies the environment names, read as curl reads them: `https_proxy`/`HTTPS_PROXY`
    /// for `https://` endpoints, `http_proxy`/`HTTP_PROXY` for `http://` ones, `all_proxy`/
    /// `ALL_PROXY` for either when the specific one is not set, and `no_proxy`/`NO_PROXY` for the
    /// exceptions. The lower-case form wins when both are set; empty variables count as unset.
    pub fn from_env() -> Result<Self, InvalidInput> {
        Self::from_vars(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
    }

    /// [`Proxies::from_env`] reading variables through `var` (for tests and embedding).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, InvalidInput> {
        let get = |lower: &'static str, upper: &'static str| -> Option<(&'static str, String)> {
            [lower, upper]
                .into_iter()
                .find_map(|n| var(n).map(|v| (n, v.trim().to_string())).filter(|(_, v)| !v.is_empty()))
        };
        let url = |found: Option<(&'static str, String)>| -> Result<Option<Url>, InvalidInput> {
            found.map(|(name, v)| parse_proxy_url(name, &v)).transpose()
        };
        let all = url(get("all_proxy", "ALL_PROXY"))?;
        let http = url(get("http_proxy", "HTTP_PROXY"))?.or_else(|| all.clone());
        let https = url(get("https_proxy", "HTTPS_PROXY"))?.or(all);
        let no_proxy = get("no_proxy", "NO_PROXY").map(|(_, v)| v);
        Ok(Self { http, https, no_proxy })
    }

    /// Whether no proxy is set.
    pub fn is_empty(&self) -> bool {
        self.http.is_none() && self.https.is_none()
    }
}

/// Checks a proxy URL: `http://` (or `https://`) with a host, an optional port and credentials,
/// and nothing else. The error never quotes the URL (it may carry a password).
fn parse_proxy_url(name: &'static str, value: &str) -> Result<Url, InvalidInput> {
    let refuse = |why: &str| InvalidInput::Option {
        option: name,
        why: format!("{why}; a proxy is `http://[user:password@]host:port`"),
    };
    // curl accepts a bare `host:port`; so do we.
    let value = value.trim();
    let with_scheme = if value.contains("://") {
        value.to_string()
    } else {
        format!("http://{value}")
    };
    let url = Url::parse(&with_scheme).map_err(|e| refuse(&format!("it is not a URL ({e})")))?;
    match url.scheme() {
        "http" | "https" => {}
        "socks4" | "socks4a" | "socks5" | "socks5h" => return Err(refuse("SOCKS proxies are not supported")),
        _ => return Err(refuse("the scheme must be http or https")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(refuse("it has no host"));
    }
    // A key, SAS or token given where the proxy belongs parses as a host name: refused here,
    // before any log line or connection error can show that "host".
    let after_scheme = with_scheme.split_once("://").map_or(with_scheme.as_str(), |(_, r)| r);
    let authority = after_scheme.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if crate::auth::scrub::looks_like_secret(host_port) || after_scheme.contains("sig=") {
        return Err(refuse(
            "its host looks like a key or token, not a host name (not shown)",
        ));
    }
    if url.path() != "/" && !url.path().is_empty() || url.query().is_some() || url.fragment().is_some() {
        return Err(refuse("it has something after the host and port"));
    }
    Ok(url)
}

/// The HTTP client for `options`, with an explicit `proxy` if one is configured (e.g.
/// `DevelopmentStorageProxyUri`, which wins over [`ClientOptions::proxy`]).
///
/// TLS: the system's roots (or `SSL_CERT_FILE`/`SSL_CERT_DIR`, which replace them, as in
/// OpenSSL) plus [`ClientOptions::ca_certificates_pem`]; a server presenting exactly one of
/// those named certificates (or one from `SSL_CERT_FILE`) is trusted as that server even if
/// the certificate is self-signed with `CA:TRUE` (pinning), after its dates and host name are
/// checked.
pub(crate) fn http_client(options: &ClientOptions, proxy: Option<&Url>) -> Result<reqwest::Client, InvalidInput> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(options.connect_timeout)
        // A lock blob may carry many metadata items (Azure allows 8 KiB of them), each one
        // response header: hyper's default of 100 headers would make it look like an outage.
        .http1_max_headers(MAX_RESPONSE_HEADERS)
        .pool_idle_timeout(Duration::from_secs(50))
        .user_agent(concat!("azmutex/", env!("CARGO_PKG_VERSION")))
        // Never follow a redirect: Blob operations are never redirected, and a token request
        // re-sent elsewhere would carry its client secret, assertion or identity header there.
        // A 3xx comes back as an answer, and is refused by whoever reads it.
        .redirect(reqwest::redirect::Policy::none())
        .tls_backend_preconfigured(tls_config(&options.ca_certificates_pem)?)
        // Proxies are ours to choose (below), never reqwest's own reading of the environment.
        .no_proxy();
    let proxies = match (proxy, &options.proxy) {
        (Some(url), _) => Proxies {
            http: Some(url.clone()),
            https: Some(url.clone()),
            no_proxy: None,
        },
        (None, ProxyConfig::FromEnvironment) => Proxies::from_env()?,
        (None, ProxyConfig::Direct) => Proxies::default(),
        (None, ProxyConfig::Explicit(p)) => p.clone(),
    };
    let no_proxy = proxies.no_proxy.as_deref().and_then(reqwest::NoProxy::from_string);
    let proxy_error = |e: reqwest::Error| InvalidInput::Option {
        option: "proxy",
        why: sanitize_text(&e.without_url().to_string(), 200),
    };
    if let Some(url) = &proxies.http {
        builder = builder.proxy(
            reqwest::Proxy::http(url.as_str())
                .map_err(proxy_error)?
                .no_proxy(no_proxy.clone()),
        );
    }
    if let Some(url) = &proxies.https {
        builder = builder.proxy(
            reqwest::Proxy::https(url.as_str())
                .map_err(proxy_error)?
                .no_proxy(no_proxy),
        );
    }
    builder.build().map_err(|e| InvalidInput::Option {
        option: "http client",
        why: sanitize_text(&e.without_url().to_string(), 200),
    })
}

/// The rustls configuration: platform roots plus the named certificates, which are also pinned.
/// Installs rustls's `ring` provider as the process default if no provider is installed yet.
fn tls_config(ca_certificates_pem: &[Vec<u8>]) -> Result<rustls::ClientConfig, InvalidInput> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let mut named = Vec::new();
    for pem in ca_certificates_pem {
        let certs = parse_pem_certificates(pem)?;
        if certs.is_empty() {
            return Err(InvalidInput::CaCertificate("no PEM certificate found".into()));
        }
        named.extend(certs);
    }
    let mut pinned = named.clone();
    // SSL_CERT_FILE names certificates explicitly too (OpenSSL accepts a self-signed server
    // certificate listed there); the platform verifier reads it as its roots.
    // The platform verifier reads it as well, with no limits: a FIFO or device there is refused
    // here first, so that nothing blocks.
    if let Some(file) = std::env::var_os("SSL_CERT_FILE").filter(|f| !f.is_empty()) {
        let pem = read_certificate_file(std::path::Path::new(&file))
            .map_err(|e| InvalidInput::CaCertificate(format!("SSL_CERT_FILE {e}")))?;
        pinned.extend(parse_pem_certificates(&pem).unwrap_or_default());
    }
    let platform = rustls_platform_verifier::Verifier::new_with_extra_roots(named, provider.clone())
        .map_err(|e| InvalidInput::CaCertificate(sanitize_text(&e.to_string(), 200)))?;
    let verifier = PinningVerifier {
        platform,
        pinned,
        algorithms: provider.signature_verification_algorithms,
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| InvalidInput::Option {
            option: "tls",
            why: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(config)
}

/// The most a certificate file may hold (a system bundle is a few hundred KiB).
pub const MAX_CERTIFICATE_FILE_BYTES: u64 = 10 * 1024 * 1024;

/// Reads a PEM certificate file (`--ca-cert`, `SSL_CERT_FILE`) safely: only a regular file (a
/// FIFO or device would block or never end), at most [`MAX_CERTIFICATE_FILE_BYTES`]. The error
/// says what is wrong with the file, never its contents.
pub fn read_certificate_file(path: &std::path::Path) -> Result<Vec<u8>, InvalidInput> {
    use std::io::Read as _;
    // A key or SAS typed where the file name belongs is described, never quoted.
    let name = crate::auth::scrub::quote_or_describe(&path.to_string_lossy());
    let refuse = |why: String| InvalidInput::CaCertificate(format!("{name}: {why}"));
    let meta = std::fs::metadata(path).map_err(|e| refuse(format!("cannot read it ({e})")))?;
    if !meta.is_file() {
        return Err(refuse("not a regular file".into()));
    }
    if meta.len() > MAX_CERTIFICATE_FILE_BYTES {
        return Err(refuse(format!(
            "{} bytes, more than the {MAX_CERTIFICATE_FILE_BYTES} a certificate file may hold",
            meta.len()
        )));
    }
    let file = std::fs::File::open(path).map_err(|e| refuse(format!("cannot read it ({e})")))?;
    let mut pem = Vec::new();
    file.take(MAX_CERTIFICATE_FILE_BYTES + 1)
        .read_to_end(&mut pem)
        .map_err(|e| refuse(format!("cannot read it ({e})")))?;
    if pem.len() as u64 > MAX_CERTIFICATE_FILE_BYTES {
        return Err(refuse("it grew past the size limit while being read".into()));
    }
    Ok(pem)
}

/// Every certificate in a PEM text (other PEM sections, such as keys, are skipped).
fn parse_pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, InvalidInput> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| InvalidInput::CaCertificate(sanitize_text(&format!("not a PEM certificate: {e}"), 200)))
}

/// The normal chain check (platform roots plus the named CAs), except that a server presenting
/// exactly one of the named certificates is trusted as that server: its validity dates and host
/// name are checked, its `CA:TRUE` flag is not held against it, and the handshake signature must
/// still be made with its key (so only the holder of that certificate's private key passes).
#[derive(Debug)]
struct PinningVerifier {
    platform: rustls_platform_verifier::Verifier,
    pinned: Vec<CertificateDer<'static>>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !self.pinned.iter().any(|p| p.as_ref() == end_entity.as_ref()) {
            return self
                .platform
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        }
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        let mut roots = RootCertStore::empty();
        roots.add(end_entity.clone().into_owned())?;
        // The certificate as its own trust anchor: webpki checks its dates before its basic
        // constraints, so "CA used as end entity" means everything before it passed.
        match rustls::client::verify_server_cert_signed_by_trust_anchor(&parsed, &roots, &[], now, self.algorithms.all)
        {
            Ok(()) => {}
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(other)))
                if format!("{other:?}").contains("CaUsedAsEndEntity") => {}
            Err(e) => return Err(e),
        }
        rustls::client::verify_server_name(&parsed, server_name)?;
        tracing::debug!("the server presented a certificate named with --ca-cert: trusted as pinned");
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.platform.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.platform.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.platform.supported_verify_schemes()
    }
}

/// The TLS problem behind a request error, if it was one: rustls's error is found in the source
/// chain (inside `std::io::Error`s, whose `source()` skips the wrapped error).
pub(crate) fn tls_problem(e: &reqwest::Error) -> Option<TlsProblem> {
    fn find(e: &(dyn std::error::Error + 'static)) -> Option<TlsProblem> {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cur {
            if let Some(t) = err.downcast_ref::<rustls::Error>() {
                return Some(classify_tls(t));
            }
            if let Some(inner) = err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
                if let Some(p) = find(inner) {
                    return Some(p);
                }
            }
            cur = err.source();
        }
        None
    }
    find(e)
}

fn classify_tls(e: &rustls::Error) -> TlsProblem {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => TlsProblem::UnknownIssuer,
            C::NotValidForName | C::NotValidForNameContext { .. } => TlsProblem::NameMismatch,
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => {
                TlsProblem::Expired
            }
            other => {
                let detail = format!("{other:?}");
                if detail.contains("CaUsedAsEndEntity") {
                    TlsProblem::CaAsServerCertificate
                } else {
                    TlsProblem::Other(sanitize_text(&format!("invalid certificate: {detail}"), 200))
                }
            }
        },
        rustls::Error::InvalidMessage(_) => TlsProblem::NotTls,
        other => TlsProblem::Other(sanitize_text(&other.to_string(), 200)),
    }
}

/// An error and its sources on one line (reqwest hides the useful part in the sources).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
