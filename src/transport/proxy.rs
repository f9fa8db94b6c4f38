//! Proxies: which one a request goes through (configuration or `HTTPS_PROXY`/`NO_PROXY`), and
//! what a refused `CONNECT` answered.

use std::fmt;
use std::time::Duration;

use url::Url;

use crate::error::InvalidInput;

use super::*;

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
pub(super) fn parse_proxy_url(name: &'static str, value: &str) -> Result<Url, InvalidInput> {
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
    if crate::scrub::looks_like_secret(host_port) || after_scheme.contains("sig=") {
        return Err(refuse(
            "its host looks like a key or token, not a host name (not shown)",
        ));
    }
    if url.path() != "/" && !url.path().is_empty() || url.query().is_some() || url.fragment().is_some() {
        return Err(refuse("it has something after the host and port"));
    }
    Ok(url)
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
