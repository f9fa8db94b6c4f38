//! Sending: authorization, per-attempt timeouts inside the call's deadline, retries of
//! transient failures (honouring `Retry-After`), and the reports a give-up carries.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use url::Url;

use super::schedule::Class;
use super::version::refuses_version;
use super::*;
use crate::telemetry;

impl BlobClient {
    /// Sends `req`, retrying transient failures (connection errors, timeouts, 408, 429, 500,
    /// 502, 503, 504, honouring `Retry-After`) until `deadline`.
    ///
    /// Returns every other answer, success or not, as a [`RestResponse`], except 401/403 which
    /// become [`Error::Auth`].
    pub async fn send(&self, req: &RestRequest, deadline: Instant) -> Result<RestResponse, Error> {
        let url = self.url(&req.container, req.blob.as_deref(), &req.query)?;
        let client_request_id = uuid::Uuid::new_v4().to_string();
        let mut attempts = 0u32;
        let mut earlier_outcome_unknown = false;
        loop {
            attempts += 1;
            // While the version is not settled, wait for the request trying it, bounded by this
            // call's deadline. A call whose deadline passes there sends nothing: an unsettled
            // version is only ever tried while holding the gate.
            let mut gate_closed = false;
            let trying = if req.bypass_version_gate || self.inner.settled.load(Ordering::Acquire) {
                None
            } else {
                let guard = tokio::time::timeout_at(deadline.into(), self.inner.negotiation.lock())
                    .await
                    .ok();
                gate_closed = guard.is_none() && !self.inner.settled.load(Ordering::Acquire);
                guard
            };
            // A turn to send (see `schedule`): waited for before the request is signed, so the
            // send time taken in `attempt` is the real one.
            let turn = if gate_closed || Instant::now() >= deadline {
                None
            } else {
                self.inner.schedule.turn(Class::of(req.op), deadline).await
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let timeout = self.inner.options.request_timeout.min(remaining);
            let version = self.api_version().to_string();
            let synthetic = timeout.is_zero() || gate_closed || turn.is_none();
            let attempt = if synthetic {
                Attempt::Retry {
                    cause: TransientCause::Timeout,
                    throttled: None,
                    retry_after: None,
                    maybe_applied: false,
                }
            } else {
                let started = Instant::now();
                // Boxed: the request in flight (reqwest's future, a kilobyte or more) is
                // allocated only while it is; a call waiting for its turn or its next retry, as
                // thousands of renewals and paced acquisitions may, stays small.
                let attempt = Box::pin(self.attempt(req, &url, &client_request_id, &version, timeout, attempts)).await;
                let outcome = match &attempt {
                    Ok(Attempt::Done(resp)) => telemetry::outcome_of(resp.status, resp.header("x-ms-error-code")),
                    Ok(Attempt::Retry { throttled: Some(_), .. }) => "throttled",
                    Ok(Attempt::Retry {
                        cause: TransientCause::Service(_),
                        ..
                    }) => "server_error",
                    Ok(Attempt::Retry {
                        cause: TransientCause::Timeout,
                        ..
                    }) => "timeout",
                    Ok(Attempt::Retry { .. }) => "network",
                    Err(Error::Auth { .. }) => "auth",
                    Err(_) => "network",
                };
                telemetry::request(req.op, outcome, started.elapsed());
                attempt?
            };
            let (cause, throttled, retry_after) = match attempt {
                Attempt::Done(resp) if self.step_down(&resp, &version, req.method == Method::HEAD) => {
                    // Refused at the door (nothing applied): the same request again, at once,
                    // with the older version; not counted against the retries.
                    tracing::info!(
                        op = req.op,
                        refused = %version,
                        now = self.api_version(),
                        "the endpoint refuses this x-ms-version; stepping down for this client"
                    );
                    attempts -= 1;
                    continue;
                }
                // A refusal after the endpoint has answered this client's version: a stray (a
                // node behind the endpoint that does not know the version yet, a proxy's
                // hiccup). Refused at the door, so retried like a transient failure, never a
                // downgrade and never a permanent error.
                Attempt::Done(resp)
                    if self.inner.options.api_version.is_none()
                        && self.inner.answered.load(Ordering::Acquire)
                        && resp.status == 400
                        && refuses_version(&resp, req.method == Method::HEAD) =>
                {
                    tracing::info!(op = req.op, version = %version, "a stray x-ms-version refusal; retrying");
                    let cause = TransientCause::Service(resp.error());
                    let mut streak = self.failures();
                    streak.attempts = streak.attempts.saturating_add(1);
                    streak.last = Some((cause.clone(), None, None));
                    drop(streak);
                    (cause, None, None)
                }
                Attempt::Done(mut resp) => {
                    // The endpoint answered this version: it is the one from now on.
                    self.inner.settled.store(true, Ordering::Release);
                    if !(resp.status == 400 && refuses_version(&resp, req.method == Method::HEAD)) {
                        self.inner.answered.store(true, Ordering::Release);
                    }
                    *self.failures() = FailureStreak::default();
                    if resp.status == 400
                        && refuses_version(&resp, req.method == Method::HEAD)
                        && (self.inner.options.api_version.is_some()
                            || API_VERSIONS.last().is_some_and(|last| *last == version))
                    {
                        // No version left to try: say so, and how to pick one.
                        let detail = if self.inner.options.api_version.is_some() {
                            format!(
                                "the endpoint refuses the service version {version} given with --api-version \
                                 (ClientOptions::api_version); give one it accepts, or none to negotiate"
                            )
                        } else {
                            format!(
                                "the endpoint refuses both service versions this client sends ({}); if it \
                                 accepts another, give it with --api-version YYYY-MM-DD (ClientOptions::api_version)",
                                API_VERSIONS.join(" and ")
                            )
                        };
                        return Err(Error::Unexpected {
                            service: resp.error(),
                            detail,
                        });
                    }
                    resp.attempts = attempts;
                    resp.earlier_outcome_unknown = earlier_outcome_unknown;
                    if resp.status == 401 || resp.status == 403 {
                        return Err(Error::Auth {
                            service: Some(resp.error()),
                            detail: clock_skew(&resp, SystemTime::now()).unwrap_or_default(),
                        });
                    }
                    return Ok(resp);
                }
                Attempt::Retry {
                    cause,
                    throttled,
                    retry_after,
                    maybe_applied,
                } => {
                    earlier_outcome_unknown |= maybe_applied;
                    if synthetic {
                        // Nothing was sent: not an attempt.
                        attempts -= 1;
                    } else {
                        let mut streak = self.failures();
                        streak.attempts = streak.attempts.saturating_add(1);
                        streak.last = Some((cause.clone(), throttled.clone(), retry_after));
                    }
                    (cause, throttled, retry_after)
                }
            };
            drop(turn);
            drop(trying);
            let wait = self
                .inner
                .options
                .retry
                .backoff(attempts)
                .max(retry_after.unwrap_or_default())
                .max(req.min_retry_gap);
            let wake = Instant::now().checked_add(wait);
            if wake.is_none_or(|w| w >= deadline) {
                // The report: the attempts in a row (this call's and the caller's earlier
                // calls'), and the last answer or error actually received, not a last attempt
                // that had no time left to be sent.
                let (attempts, cause, throttled, retry_after) = {
                    let streak = self.failures();
                    match (&streak.last, synthetic) {
                        (Some((c, t, r)), true) => (streak.attempts.max(attempts), c.clone(), t.clone(), *r),
                        _ => (streak.attempts.max(attempts), cause, throttled, retry_after),
                    }
                };
                tracing::warn!(op = req.op, attempts, cause = %cause, "giving up: call deadline reached");
                return Err(match throttled {
                    Some(service) => Error::Throttled {
                        attempts,
                        service,
                        retry_after,
                    },
                    None => Error::Transient {
                        attempts,
                        cause,
                        retry_after,
                    },
                });
            }
            tracing::debug!(op = req.op, attempts, cause = %cause, wait_ms = wait.as_millis() as u64, "retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// A failed tunnel explained: the proxy (printed without credentials) and the status its
    /// `CONNECT` answered (asked again, as the HTTP client does not report it). The failure is
    /// the proxy's, not the storage endpoint's.
    async fn tunnel_failure(&self, url: &Url) -> Option<String> {
        let proxy = crate::transport::proxy_for(&self.inner.options, self.inner.proxy.as_ref(), url)?;
        let shown = crate::config::redact_url(&proxy);
        Some(match crate::transport::connect_status(&proxy, url).await {
            Some(status) => {
                format!("the proxy {shown} refused to open a tunnel to the endpoint (CONNECT answered HTTP {status})")
            }
            None => format!("the proxy {shown} did not open a tunnel to the endpoint (CONNECT failed)"),
        })
    }

    /// The failure streak (see `Inner::failures`).
    fn failures(&self) -> std::sync::MutexGuard<'_, FailureStreak> {
        self.inner.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn attempt(
        &self,
        req: &RestRequest,
        url: &Url,
        client_request_id: &str,
        version: &str,
        mut timeout: Duration,
        attempt: u32,
    ) -> Result<Attempt, Error> {
        let date = httpdate::fmt_http_date(SystemTime::now());
        let mut headers = HeaderMap::with_capacity(req.headers.len() + 6);
        let put = |headers: &mut HeaderMap, name: HeaderName, value: &str| -> Result<(), Error> {
            let value = HeaderValue::from_str(value).map_err(|_| InvalidInput::Option {
                option: "header",
                why: format!("the value of {name} is not a valid header value"),
            })?;
            headers.append(name, value);
            Ok(())
        };
        put(&mut headers, HeaderName::from_static("x-ms-date"), &date)?;
        put(&mut headers, HeaderName::from_static("x-ms-version"), version)?;
        put(
            &mut headers,
            HeaderName::from_static("x-ms-client-request-id"),
            client_request_id,
        )?;
        for (name, value) in &req.headers {
            put(&mut headers, name.clone(), value)?;
        }
        if req.method == Method::PUT || !req.body.is_empty() {
            put(
                &mut headers,
                reqwest::header::CONTENT_LENGTH,
                &req.body.len().to_string(),
            )?;
        }
        match &self.inner.credential {
            Credential::SharedKey { account, key } => {
                // Header values are bytes; the service (like HTTP/1.1's obs-text rule) reads bytes
                // outside ASCII as ISO-8859-1, so sign them that way instead of skipping them.
                let owned: Vec<(&str, std::borrow::Cow<'_, str>)> = headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), signer::latin1(v.as_bytes())))
                    .collect();
                let pairs: Vec<(&str, &str)> = owned.iter().map(|(n, v)| (*n, v.as_ref())).collect();
                let auth = signer::authorization(req.method.as_str(), url, pairs.iter().copied(), account, key);
                put(&mut headers, AUTHORIZATION, &auth)?;
            }
            Credential::Bearer(provider) => {
                // The token wait shares this request's timeout (so the call's deadline holds):
                // a provider that hangs or fails transiently is retried like a network error;
                // only a definite refusal is an authentication error.
                use crate::auth::{classify_token_error, TokenFailure};
                let asked = Instant::now();
                let retry = |why: String| Attempt::Retry {
                    cause: TransientCause::Network(why),
                    throttled: None,
                    retry_after: None,
                    maybe_applied: false,
                };
                let token = match tokio::time::timeout(timeout, provider.token()).await {
                    Ok(Ok(token)) => token,
                    Ok(Err(e)) => match classify_token_error(&*e) {
                        TokenFailure::Definite(detail) => return Err(Error::Auth { service: None, detail }),
                        TokenFailure::Tls(problem) => return Err(Error::Tls { problem }),
                        TokenFailure::Transient(why) => {
                            tracing::debug!(op = req.op, attempt, error = %why, "no token");
                            return Ok(retry(format!("no token: {why}")));
                        }
                    },
                    Err(_) => {
                        return Ok(retry(format!(
                            "no token within the request timeout ({} ms)",
                            timeout.as_millis()
                        )))
                    }
                };
                timeout = timeout.saturating_sub(asked.elapsed());
                if timeout.is_zero() {
                    return Ok(retry("no time left after waiting for a token".into()));
                }
                put(&mut headers, AUTHORIZATION, &format!("Bearer {}", token.0))?;
            }
            Credential::Sas(_) => {}
        }

        let request = self
            .inner
            .http
            .request(req.method.clone(), url.clone())
            .headers(headers)
            .timeout(timeout)
            .body(req.body.clone());
        let sent_at = Instant::now();
        let sent_at_wall = SystemTime::now();
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
        let result = request.send().await;
        let mut response = match result {
            Ok(r) => r,
            Err(e) => {
                if let Some(problem) = tls_problem(&e) {
                    tracing::debug!(op = req.op, attempt, problem = %problem, "TLS failure");
                    return Err(Error::Tls { problem });
                }
                let e = e.without_url();
                let chain = error_chain(&e);
                if chain.contains("proxy authorization required") {
                    return Err(proxy_refused());
                }
                // A failure to connect means nothing was sent; anything later may have been
                // applied by the service.
                let maybe_applied = !e.is_connect();
                let cause = if e.is_timeout() {
                    TransientCause::Timeout
                } else if chain.contains("tunnel error") {
                    TransientCause::Network(self.tunnel_failure(url).await.unwrap_or(chain))
                } else {
                    TransientCause::Network(chain)
                };
                tracing::debug!(op = req.op, attempt, cause = %cause, "request failed");
                return Ok(Attempt::Retry {
                    cause,
                    throttled: None,
                    retry_after: None,
                    maybe_applied,
                });
            }
        };
        let status = response.status().as_u16();
        if status == 407 {
            // A plain-HTTP request through a proxy that wants (other) credentials.
            return Err(proxy_refused());
        }
        let headers = response.headers().clone();
        let body = match read_capped(&mut response, req.max_body).await {
            Ok((b, cut)) => {
                if cut {
                    tracing::debug!(
                        op = req.op,
                        attempt,
                        status,
                        "response body cut at {} bytes",
                        req.max_body
                    );
                }
                b
            }
            Err(e) => {
                let cause = if e.is_timeout() {
                    TransientCause::Timeout
                } else {
                    TransientCause::Network(error_chain(&e.without_url()))
                };
                return Ok(Attempt::Retry {
                    cause,
                    throttled: None,
                    retry_after: None,
                    maybe_applied: true,
                });
            }
        };
        tracing::debug!(
            op = req.op,
            attempt,
            status,
            request_id = %crate::error::sanitize_text(
                headers.get("x-ms-request-id").and_then(|v| v.to_str().ok()).unwrap_or(""),
                100
            ),
            error_code = %crate::error::sanitize_text(
                headers.get("x-ms-error-code").and_then(|v| v.to_str().ok()).unwrap_or(""),
                100
            ),
            elapsed_ms = sent_at.elapsed().as_millis() as u64,
            "response"
        );
        match status {
            408 | 429 | 500 | 502 | 503 | 504 => {
                let service = service_error(status, &headers, &body);
                let retry_after = headers
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after);
                let throttled = (status == 503 || status == 429).then(|| service.clone());
                Ok(Attempt::Retry {
                    cause: TransientCause::Service(service),
                    // 503 ServerBusy and 429 are refusals: the request was not carried out.
                    maybe_applied: throttled.is_none(),
                    throttled,
                    retry_after,
                })
            }
            _ => Ok(Attempt::Done(RestResponse {
                status,
                headers,
                sent_at,
                sent_at_wall,
                attempts: attempt,
                earlier_outcome_unknown: false,
                body,
            })),
        }
    }
}

/// How far apart the service's clock (its `Date` header) and ours are, if more than
/// [`SKEW_WORTH_SAYING`]: a refusal then most likely comes from the clock, since Shared Key and
/// SAS requests dated more than 15 minutes off are refused (users meet it as a bare
/// `AuthenticationFailed`).
fn clock_skew(resp: &RestResponse, now: SystemTime) -> Option<String> {
    let server = httpdate::parse_http_date(resp.header("date")?).ok()?;
    let (ahead, secs) = match now.duration_since(server) {
        Ok(d) => (true, d.as_secs()),
        Err(e) => (false, e.duration().as_secs()),
    };
    (secs > SKEW_WORTH_SAYING.as_secs()).then(|| {
        format!(
            "this machine's clock is {secs} s {} the service's (its Date header); requests dated more \
             than 15 minutes off are refused: fix the clock (NTP)",
            if ahead { "ahead of" } else { "behind" }
        )
    })
}

/// A clock difference below this is not mentioned in an authentication error.
const SKEW_WORTH_SAYING: Duration = Duration::from_secs(300);

/// The proxy refused the request for want of (valid) credentials: not transient.
fn proxy_refused() -> Error {
    Error::Auth {
        service: None,
        detail: "the proxy refused the request (407 Proxy Authentication Required): check the user and \
                 password in the proxy URL (--proxy, HTTPS_PROXY, HTTP_PROXY)"
            .into(),
    }
}

/// Reads at most `cap` bytes of a body, chunk by chunk, and stops there (the rest is never read;
/// dropping the response closes the connection). Returns the bytes and whether the body was cut.
async fn read_capped(response: &mut reqwest::Response, cap: usize) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = cap - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}
