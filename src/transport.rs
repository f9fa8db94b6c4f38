//! How requests reach the service: one HTTP client builder (TLS trust, proxies, timeouts, limits)
//! shared by the Blob REST client and by token requests, and the classification of transport
//! failures (TLS problems, error chains).
//!
//! It knows connections, not the Blob service: [`crate::rest`] gives meaning to the answers.

use std::time::Duration;

use url::Url;

use crate::error::{sanitize_text, InvalidInput, TlsProblem};
use crate::rest::ClientOptions;

/// The most response headers accepted (8 KiB of metadata is at most a few hundred items).
const MAX_RESPONSE_HEADERS: usize = 1024;

/// The HTTP client for `options`, with an explicit `proxy` if one is configured (e.g.
/// `DevelopmentStorageProxyUri`). Installs rustls's `ring` provider as the process default if no
/// provider is installed yet.
pub(crate) fn http_client(options: &ClientOptions, proxy: Option<&Url>) -> Result<reqwest::Client, InvalidInput> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(options.connect_timeout)
        // A lock blob may carry many metadata items (Azure allows 8 KiB of them), each one
        // response header: hyper's default of 100 headers would make it look like an outage.
        .http1_max_headers(MAX_RESPONSE_HEADERS)
        .pool_idle_timeout(Duration::from_secs(50))
        .user_agent(concat!("azmutex/", env!("CARGO_PKG_VERSION")));
    for pem in &options.ca_certificates_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| InvalidInput::CaCertificate(e.without_url().to_string()))?;
        if certs.is_empty() {
            return Err(InvalidInput::CaCertificate("no PEM certificate found".into()));
        }
        builder = builder.tls_certs_merge(certs);
    }
    if let Some(proxy) = proxy {
        let proxy = reqwest::Proxy::all(proxy.as_str()).map_err(|e| InvalidInput::Option {
            option: "DevelopmentStorageProxyUri",
            why: e.without_url().to_string(),
        })?;
        builder = builder.proxy(proxy);
    }
    builder.build().map_err(|e| InvalidInput::Option {
        option: "http client",
        why: e.without_url().to_string(),
    })
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
