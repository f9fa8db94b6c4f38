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
mod options;

pub use options::{ClientOptions, RetryPolicy, MAX_BODY_BYTES};

/// The most response headers accepted (8 KiB of metadata is at most a few hundred items).
const MAX_RESPONSE_HEADERS: usize = 1024;

/// Which proxies requests go through.
///
/// The default, [`ProxyConfig::FromEnvironment`], reads `HTTPS_PROXY`, `HTTP_PROXY`,
/// `ALL_PROXY` and `NO_PROXY` (each also in lower case, which wins, as in curl) when the client
/// is built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ProxyConfig {
    /// Proxies from the environment variables, as curl reads them except that upper-case
    /// `HTTP_PROXY` counts too ([`Proxies::from_env`]).
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
            .field("http", &self.http.as_ref().map(crate::redact::redact_url))
            .field("https", &self.https.as_ref().map(crate::redact::redact_url))
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
    /// Unlike curl, upper-case `HTTP_PROXY` is read too (curl ignores it because CGI programs
    /// get a request's `Proxy:` header under that name; this crate never runs as one).
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

/// The proxy a request to `url` goes through under `options` (an explicit `proxy`, e.g.
/// `DevelopmentStorageProxyUri`, wins), if any. `NO_PROXY` is not consulted: this only names
/// the proxy after a tunnel through it failed.
pub(crate) fn proxy_for(options: &ClientOptions, proxy: Option<&Url>, url: &Url) -> Option<Url> {
    if let Some(p) = proxy {
        return Some(p.clone());
    }
    let proxies = match &options.proxy {
        ProxyConfig::FromEnvironment => Proxies::from_env().ok()?,
        ProxyConfig::Direct => return None,
        ProxyConfig::Explicit(p) => p.clone(),
    };
    if url.scheme() == "https" {
        proxies.https
    } else {
        proxies.http
    }
}

/// Asks `proxy` to open a tunnel to `url`'s host and port, as the client did, and returns the
/// status code it answers (`None`: no answer within 3 s, or not HTTP). Used only to explain a
/// failed tunnel ("CONNECT answered 403"), which the HTTP client reports without the status.
pub(crate) async fn connect_status(proxy: &Url, url: &Url) -> Option<u16> {
    use base64::Engine as _;
    use std::io::{Read as _, Write as _};
    let target = format!("{}:{}", url.host_str()?, url.port_or_known_default()?);
    let proxy_addr = format!("{}:{}", proxy.host_str()?, proxy.port_or_known_default()?);
    let auth = (!proxy.username().is_empty()).then(|| {
        let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
        let pair = format!(
            "{}:{}",
            decode(proxy.username()),
            decode(proxy.password().unwrap_or(""))
        );
        format!(
            "Proxy-Authorization: Basic {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    });
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("azmutex-proxy-probe".into())
        .spawn(move || {
            let probe = || -> Option<u16> {
                use std::net::ToSocketAddrs as _;
                let addr = proxy_addr.to_socket_addrs().ok()?.next()?;
                let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()?;
                stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
                stream.set_write_timeout(Some(Duration::from_secs(3))).ok()?;
                // One write (a CONNECT split over several segments may be answered early), then
                // read until the status line is whole.
                let request = format!(
                    "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{}\r\n",
                    auth.unwrap_or_default()
                );
                stream.write_all(request.as_bytes()).ok()?;
                let mut head = Vec::with_capacity(64);
                let mut chunk = [0u8; 64];
                while !head.contains(&b'\n') && head.len() < 256 {
                    let n = stream.read(&mut chunk).ok()?;
                    if n == 0 {
                        break;
                    }
                    head.extend_from_slice(&chunk[..n]);
                }
                let line = String::from_utf8_lossy(&head).into_owned();
                let mut words = line.split(' ');
                words.next().filter(|w| w.starts_with("HTTP/"))?;
                words.next()?.parse().ok()
            };
            let _ = tx.send(probe());
        })
        .ok()?;
    tokio::time::timeout(Duration::from_secs(4), rx).await.ok()?.ok()?
}

/// The rustls configuration: the system's roots plus the named certificates, which are also
/// pinned. Installs rustls's `ring` provider as the process default if no provider is installed
/// yet.
///
/// On Linux and the other Unix systems that keep their roots in PEM files, the roots are read
/// here, bounded ([`system_roots`]), once per process, instead of by the platform verifier
/// (which reads `SSL_CERT_DIR` whole, with no limits, for every client). With no roots at all,
/// `https://` endpoints fail their handshake as untrusted and `http://` ones still work.
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
    let roots = system_roots()?;
    // SSL_CERT_FILE names certificates explicitly too (OpenSSL accepts a self-signed server
    // certificate listed there).
    pinned.extend(roots.from_cert_file.iter().cloned());
    let inner = chain_verifier(named, &roots, provider.clone())?;
    let verifier = PinningVerifier {
        inner,
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

/// Whether the system's roots are PEM files this module reads itself (as rustls-native-certs
/// would), rather than an OS store the platform verifier asks.
const ROOTS_FROM_FILES: bool = cfg!(all(unix, not(target_vendor = "apple"), not(target_os = "android")));

/// The chain verifier: webpki over the system roots read here plus `named`; or, where the OS
/// keeps the roots, the platform verifier with `named` as extra roots. `None`: no roots at all.
fn chain_verifier(
    named: Vec<CertificateDer<'static>>,
    roots: &SystemRoots,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Option<Arc<dyn ServerCertVerifier>>, InvalidInput> {
    if !ROOTS_FROM_FILES {
        let platform = rustls_platform_verifier::Verifier::new_with_extra_roots(named, provider)
            .map_err(|e| InvalidInput::CaCertificate(sanitize_text(&e.to_string(), 200)))?;
        return Ok(Some(Arc::new(platform)));
    }
    let mut store = RootCertStore::empty();
    for cert in named {
        store
            .add(cert)
            .map_err(|e| InvalidInput::CaCertificate(sanitize_text(&format!("unusable certificate: {e}"), 200)))?;
    }
    let (_, ignored) = store.add_parsable_certificates(roots.certs.iter().cloned());
    if ignored > 0 {
        tracing::debug!(ignored, "system CA certificates ignored (unparsable)");
    }
    if store.is_empty() {
        tracing::warn!("no CA certificates on this machine: https:// endpoints will be untrusted (add --ca-cert)");
        return Ok(None);
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
        .build()
        .map_err(|e| InvalidInput::CaCertificate(sanitize_text(&e.to_string(), 200)))?;
    Ok(Some(verifier))
}

/// The most certificate files read from `SSL_CERT_DIR` (or the system directory).
pub const MAX_CERTIFICATE_DIR_FILES: usize = 10_000;

/// The most bytes read from all certificate files together.
pub const MAX_CERTIFICATE_BYTES_TOTAL: u64 = 64 * 1024 * 1024;

/// How long reading certificate files (or any file named in the configuration) may take before
/// it is given up: a special file that blocks (a FIFO, `/proc/kmsg`) must not hang the process.
pub const FILE_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The system's roots, read once per process for each `SSL_CERT_FILE`/`SSL_CERT_DIR` setting.
#[derive(Default)]
struct SystemRoots {
    certs: Vec<CertificateDer<'static>>,
    /// Those from `SSL_CERT_FILE` (pinned as well).
    from_cert_file: Vec<CertificateDer<'static>>,
}

/// The system roots: `SSL_CERT_FILE` and/or `SSL_CERT_DIR` when set (they replace the system's,
/// as in OpenSSL), else the first system bundle found, else the system directory. Only regular
/// files, each at most [`MAX_CERTIFICATE_FILE_BYTES`] (a larger one in a directory is skipped),
/// at most [`MAX_CERTIFICATE_DIR_FILES`] files and [`MAX_CERTIFICATE_BYTES_TOTAL`] bytes, read
/// on a thread of their own and given up after [`FILE_READ_TIMEOUT`]; read once per process.
fn system_roots() -> Result<Arc<SystemRoots>, InvalidInput> {
    type Key = (Option<std::ffi::OsString>, Option<std::ffi::OsString>);
    static CACHE: std::sync::Mutex<Vec<(Key, Arc<SystemRoots>)>> = std::sync::Mutex::new(Vec::new());
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let key: Key = (var("SSL_CERT_FILE"), var("SSL_CERT_DIR"));
    let cached = |cache: &Vec<(Key, Arc<SystemRoots>)>| cache.iter().find(|(k, _)| *k == key).map(|(_, r)| r.clone());
    if let Some(roots) = CACHE.lock().ok().and_then(|c| cached(&c)) {
        return Ok(roots);
    }
    let (file, dir) = key.clone();
    let roots = Arc::new(off_thread("the system's CA certificates", move || {
        load_roots(file, dir)
    })?);
    if let Ok(mut cache) = CACHE.lock() {
        if cached(&cache).is_none() {
            cache.push((key, roots.clone()));
        }
    }
    Ok(roots)
}

/// Reads the roots (see [`system_roots`]).
fn load_roots(file: Option<std::ffi::OsString>, dir: Option<std::ffi::OsString>) -> Result<SystemRoots, InvalidInput> {
    let mut roots = SystemRoots::default();
    if !ROOTS_FROM_FILES && file.is_none() {
        return Ok(roots);
    }
    let mut budget = MAX_CERTIFICATE_BYTES_TOTAL;
    if let Some(file) = &file {
        let pem = read_file_capped(std::path::Path::new(file), MAX_CERTIFICATE_FILE_BYTES)
            .map_err(|e| InvalidInput::CaCertificate(format!("SSL_CERT_FILE {e}")))?;
        budget = budget.saturating_sub(pem.len() as u64);
        roots.from_cert_file = parse_pem_certificates(&pem).unwrap_or_default();
        roots.certs.extend(roots.from_cert_file.iter().cloned());
    }
    if !ROOTS_FROM_FILES {
        return Ok(roots);
    }
    let dirs: Vec<std::path::PathBuf> = match (&file, &dir) {
        (_, Some(dir)) => std::env::split_paths(dir).collect(),
        (Some(_), None) => Vec::new(),
        (None, None) => {
            const BUNDLES: [&str; 8] = [
                "/etc/ssl/certs/ca-certificates.crt",
                "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
                "/etc/pki/tls/certs/ca-bundle.crt",
                "/etc/ssl/ca-bundle.pem",
                "/etc/pki/tls/cacert.pem",
                "/etc/ssl/cert.pem",
                "/usr/local/share/certs/ca-root-nss.crt",
                "/usr/local/etc/ssl/cert.pem",
            ];
            let bundle = BUNDLES
                .iter()
                .map(std::path::Path::new)
                .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file()));
            match bundle {
                Some(bundle) => {
                    match read_file_capped(bundle, MAX_CERTIFICATE_FILE_BYTES) {
                        Ok(pem) => roots.certs.extend(parse_pem_certificates(&pem).unwrap_or_default()),
                        Err(e) => tracing::warn!(error = %e, "system CA bundle skipped"),
                    }
                    Vec::new()
                }
                None => vec!["/etc/ssl/certs".into(), "/etc/pki/tls/certs".into()],
            }
        }
    };
    let mut files = 0usize;
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            files += 1;
            if files > MAX_CERTIFICATE_DIR_FILES {
                tracing::warn!(
                    "more than {MAX_CERTIFICATE_DIR_FILES} files in the certificate directories: the rest is skipped"
                );
                return Ok(roots);
            }
            let path = entry.path();
            // Symbolic links are followed (the hashed names are links), but only to regular files.
            if !std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                continue;
            }
            match read_file_capped(&path, MAX_CERTIFICATE_FILE_BYTES.min(budget)) {
                Ok(pem) => {
                    budget = budget.saturating_sub(pem.len() as u64);
                    roots.certs.extend(parse_pem_certificates(&pem).unwrap_or_default());
                }
                Err(e) => tracing::warn!(error = %e, "certificate file skipped"),
            }
            if budget == 0 {
                tracing::warn!(
                    "the certificate files hold more than {MAX_CERTIFICATE_BYTES_TOTAL} bytes: the rest is skipped"
                );
                return Ok(roots);
            }
        }
    }
    Ok(roots)
}

/// Runs `f` (file reads) on a thread of its own, waiting at most [`FILE_READ_TIMEOUT`]: a read
/// that blocks (a special file) is abandoned, not waited for; the thread does not keep the
/// process alive.
fn off_thread<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T, InvalidInput> + Send + 'static,
) -> Result<T, InvalidInput> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("azmutex-file-read".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| InvalidInput::CaCertificate(format!("cannot start a thread to read certificates: {e}")))?;
    rx.recv_timeout(FILE_READ_TIMEOUT).unwrap_or_else(|_| {
        Err(InvalidInput::CaCertificate(format!(
            "{what}: reading it took more than {} s (a special file that blocks?)",
            FILE_READ_TIMEOUT.as_secs()
        )))
    })
}

/// The most a certificate file may hold (a system bundle is a few hundred KiB).
pub const MAX_CERTIFICATE_FILE_BYTES: u64 = 10 * 1024 * 1024;

/// Reads a PEM certificate file (`--ca-cert`, `SSL_CERT_FILE`) safely: only a regular file (a
/// FIFO or device would block or never end), at most [`MAX_CERTIFICATE_FILE_BYTES`], on a thread
/// of its own given up after [`FILE_READ_TIMEOUT`] (a special file under `/proc` may block on
/// read). The error says what is wrong with the file, never its contents; the file name is
/// quoted only if it does not look like a key or token.
pub fn read_certificate_file(path: &std::path::Path) -> Result<Vec<u8>, InvalidInput> {
    let owned = path.to_path_buf();
    let name = crate::auth::scrub::quote_or_describe(&path.to_string_lossy());
    off_thread(&name, move || read_file_capped(&owned, MAX_CERTIFICATE_FILE_BYTES))
}

/// Reads `path` if it is a regular file of at most `max` bytes (checked before opening and
/// again on the opened file, so that a swap in between is caught), as [`InvalidInput::CaCertificate`]
/// errors naming the file (unless it looks like a secret).
pub(crate) fn read_file_capped(path: &std::path::Path, max: u64) -> Result<Vec<u8>, InvalidInput> {
    read_regular_file(path, max).map_err(|why| {
        let name = crate::auth::scrub::quote_or_describe(&path.to_string_lossy());
        InvalidInput::CaCertificate(format!("{name}: {why}"))
    })
}

/// Reads `path` if it is a regular file of at most `max` bytes; the error says why not (without
/// the file name). Blocking: call it off the async runtime (see [`off_thread`]).
pub(crate) fn read_regular_file(path: &std::path::Path, max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let check = |meta: &std::fs::Metadata| -> Result<(), String> {
        if !meta.is_file() {
            return Err("not a regular file".into());
        }
        if meta.len() > max {
            return Err(format!("{} bytes, more than the {max} allowed", meta.len()));
        }
        Ok(())
    };
    check(&std::fs::metadata(path).map_err(|e| format!("cannot read it ({e})"))?)?;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read it ({e})"))?;
    check(&file.metadata().map_err(|e| format!("cannot read it ({e})"))?)?;
    let mut data = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("cannot read it ({e})"))?;
    if data.len() as u64 > max {
        return Err("it grew past the size limit while being read".into());
    }
    Ok(data)
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
    /// The chain check; `None` when there are no roots at all (everything is untrusted).
    inner: Option<Arc<dyn ServerCertVerifier>>,
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
            return match &self.inner {
                Some(inner) => inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now),
                None => Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)),
            };
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
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
