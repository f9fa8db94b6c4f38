//! The one client for token requests: built on the transport layer (never on the Blob REST
//! client), bounded bodies, request errors classified.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use url::Url;

use super::*;

/// The start of a transient error that only says the instance metadata probe got no answer
/// (which in a chain means "no managed identity here").
pub(crate) const PROBE_PREFIX: &str = "no instance metadata endpoint";

/// A token and how long it lives, counted from when its request was sent.
#[derive(Clone, Debug)]
pub(crate) struct Fetched {
    pub token: AccessToken,
    /// When the request that got it was sent (before connecting).
    pub sent_at: Instant,
    /// Its lifetime from `sent_at` (the endpoint's `expires_in`, or `expires_on` minus the
    /// wall clock at sending).
    pub lifetime: Duration,
}

/// The future a source returns.
pub(crate) type FetchFuture<'a> = Pin<Box<dyn Future<Output = Result<Fetched, EntraError>> + Send + 'a>>;

/// A token source: configuration -> one token request -> a token and its lifetime. Knows
/// nothing of caching.
pub(crate) trait TokenSource: Send + Sync + 'static {
    /// Asks for a new token. Bounded: every request has a timeout.
    fn fetch(&self) -> FetchFuture<'_>;
}

/// An answer from a token endpoint, its body capped at [`MAX_BODY_BYTES`].
pub(crate) struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub sent_at: Instant,
    pub sent_wall: SystemTime,
}

/// The HTTP side of token requests: a client from [`crate::transport::http_client`] (so a
/// private CA and proxies apply), and the timeout of one request.
#[derive(Clone)]
pub(crate) struct TokenHttp {
    pub(super) client: reqwest::Client,
    pub(super) timeout: Duration,
    /// The options and explicit proxy the client was built with, to name a failing proxy.
    pub(super) options: ClientOptions,
    pub(super) proxy: Option<Url>,
}

impl TokenHttp {
    pub(crate) fn new(options: &ClientOptions, proxy: Option<&Url>) -> Result<Self, crate::error::InvalidInput> {
        Ok(Self {
            client: crate::transport::http_client(options, proxy, true)?,
            timeout: options.request_timeout.max(Duration::from_millis(1)),
            options: options.clone(),
            proxy: proxy.cloned(),
        })
    }

    /// A failed tunnel explained: the proxy (without credentials) and the status its
    /// `CONNECT` answered. The failure is the proxy's, not the token endpoint's.
    pub(super) async fn tunnel_failure(&self, url: &Url) -> Option<String> {
        let proxy = crate::transport::proxy_for(&self.options, self.proxy.as_ref(), url)?;
        let shown = crate::redact::redact_url(&proxy);
        Some(match crate::transport::connect_status(&proxy, url).await {
            Some(status) => format!(
                "the proxy {shown} refused to open a tunnel to the token endpoint (CONNECT answered HTTP {status})"
            ),
            None => format!("the proxy {shown} did not open a tunnel to the token endpoint (CONNECT failed)"),
        })
    }

    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends `request`, bounded by `timeout` (or the client's request timeout), and reads the
    /// answer. Errors are classified: TLS, timeout/network (transient).
    pub(crate) async fn send(
        &self,
        kind: EntraKind,
        request: reqwest::RequestBuilder,
        timeout: Option<Duration>,
    ) -> Result<Answer, EntraError> {
        let timeout = timeout.unwrap_or(self.timeout);
        let sent_at = Instant::now();
        let sent_wall = SystemTime::now();
        let run = async {
            let mut response = request.timeout(timeout).send().await?;
            let status = response.status().as_u16();
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    return Ok(None);
                }
                body.extend_from_slice(&chunk);
            }
            Ok::<_, reqwest::Error>(Some((status, body)))
        };
        match tokio::time::timeout(timeout + Duration::from_millis(100), run).await {
            Err(_) => Err(EntraError::Transient {
                kind,
                why: format!("no answer within {} ms", timeout.as_millis()),
            }),
            Ok(Err(e)) => {
                let mut error = classify(kind, &e, timeout);
                if let (EntraError::Transient { why, .. }, Some(url)) = (&mut error, e.url()) {
                    if why.contains("tunnel error") {
                        if let Some(explained) = self.tunnel_failure(url).await {
                            *why = explained;
                        }
                    }
                }
                Err(error)
            }
            Ok(Ok(None)) => Err(EntraError::Transient {
                kind,
                why: format!("the answer is longer than {MAX_BODY_BYTES} bytes"),
            }),
            Ok(Ok(Some((status, body)))) => Ok(Answer {
                status,
                body,
                sent_at,
                sent_wall,
            }),
        }
    }
}

/// A request error as an [`EntraError`]: TLS problems named, the rest transient (no URL: it
/// may carry a client id, never a secret, but keep logs short).
pub(crate) fn classify(kind: EntraKind, e: &reqwest::Error, timeout: Duration) -> EntraError {
    if let Some(problem) = crate::transport::tls_problem(e) {
        return EntraError::Tls { kind, problem };
    }
    let why = if e.is_timeout() {
        format!("no answer within {} ms", timeout.as_millis())
    } else {
        sanitize_text(&e.without_url_ref(), 300)
    };
    EntraError::Transient { kind, why }
}

/// `reqwest::Error::without_url` on a reference.
pub(crate) trait WithoutUrlRef {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrlRef for reqwest::Error {
    fn without_url_ref(&self) -> String {
        let mut s = self.to_string();
        if let Some(url) = self.url() {
            s = s.replace(url.as_str(), "<url>");
        }
        let mut source = std::error::Error::source(self);
        while let Some(inner) = source {
            s.push_str(": ");
            s.push_str(&inner.to_string());
            source = inner.source();
        }
        s
    }
}
