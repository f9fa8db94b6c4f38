//! How requests reach the service: one HTTP client builder (TLS trust, proxies, timeouts, limits)
//! shared by the Blob REST client and by token requests, and the classification of transport
//! failures (TLS problems, error chains).
//!
//! It knows connections, not the Blob service: [`crate::rest`] gives meaning to the answers.

use std::time::Duration;

use url::Url;

use crate::error::{sanitize_text, InvalidInput};

mod files;
mod options;
mod proxy;
mod roots;
mod tls;

use files::off_thread;
pub(crate) use files::read_file_capped;
#[cfg(feature = "entra")]
pub(crate) use files::read_regular_file;
pub use files::{read_certificate_file, FILE_READ_TIMEOUT, MAX_CERTIFICATE_FILE_BYTES};
pub use options::{ClientOptions, RetryPolicy, DEFAULT_ACQUIRE_RATE, DEFAULT_MAX_CONNECTIONS, MAX_BODY_BYTES};
pub(crate) use proxy::{connect_status, proxy_for};
pub use proxy::{Proxies, ProxyConfig};
use roots::{system_roots, SystemRoots};
pub use roots::{MAX_CERTIFICATE_BYTES_TOTAL, MAX_CERTIFICATE_DIR_FILES};
pub(crate) use tls::tls_problem;
use tls::*;

/// The most response headers accepted (8 KiB of metadata is at most a few hundred items).
const MAX_RESPONSE_HEADERS: usize = 1024;

/// The HTTP client for `options`, with an explicit `proxy` if one is configured (e.g.
/// `DevelopmentStorageProxyUri`, which wins over [`ClientOptions::proxy`]).
///
/// TLS: the system's roots (or `SSL_CERT_FILE`/`SSL_CERT_DIR`, which replace them, as in
/// OpenSSL) plus [`ClientOptions::ca_certificates_pem`]; a server presenting exactly one of
/// those named certificates (or one from `SSL_CERT_FILE`), self-signed, is trusted as that
/// server even with `CA:TRUE` (pinning), after its dates and host name are checked. A server
/// certificate issued by another CA is checked as a chain: name its CA.
///
/// The system's roots are read only when a TLS connection may be made: `tls_endpoint` (the
/// endpoint is `https://`, or the client serves token requests) or a proxy reached over
/// `https://`. A client for an `http://` endpoint reads no certificate file (it costs a few
/// milliseconds per process, a third of a one-shot command's time); the named certificates are
/// still checked, as the user gave them.
pub(crate) fn http_client(
    options: &ClientOptions,
    proxy: Option<&Url>,
    tls_endpoint: bool,
) -> Result<reqwest::Client, InvalidInput> {
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
    let tls_proxy = [&proxies.http, &proxies.https]
        .into_iter()
        .flatten()
        .any(|u| u.scheme() == "https");
    let mut builder = reqwest::Client::builder()
        .connect_timeout(options.connect_timeout)
        // A lock blob may carry many metadata items (Azure allows 8 KiB of them), each one
        // response header: hyper's default of 100 headers would make it look like an outage.
        .http1_max_headers(MAX_RESPONSE_HEADERS)
        .pool_idle_timeout(Duration::from_secs(50))
        // No more idle connections kept than may be in use at once (`max_connections`).
        .pool_max_idle_per_host(options.max_connections.max(1))
        .user_agent(concat!("azmutex/", env!("CARGO_PKG_VERSION")))
        // Never follow a redirect: Blob operations are never redirected, and a token request
        // re-sent elsewhere would carry its client secret, assertion or identity header there.
        // A 3xx comes back as an answer, and is refused by whoever reads it.
        .redirect(reqwest::redirect::Policy::none())
        .tls_backend_preconfigured(tls_config(&options.ca_certificates_pem, tls_endpoint || tls_proxy)?)
        // Proxies are ours to choose (below), never reqwest's own reading of the environment.
        .no_proxy();
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
