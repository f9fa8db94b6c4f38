//! The token cache: wraps any [`TokenSource`] and owns refresh timing. It knows nothing of
//! protocols.
//!
//! - A token is refreshed ahead of expiry ([`RefreshPolicy::refresh_before`], or at half its
//!   life if it is shorter), in a background task: callers keep getting the current token
//!   meanwhile, so a lease renewal never waits on the token endpoint while that token is valid.
//! - One refresh at a time, however many callers ask.
//! - After a failure, the next attempt waits (capped, jittered exponential backoff); callers
//!   holding no valid token then get the last error at once (their own retry loop and deadline
//!   decide what to do).
//! - A token is handed out only until [`RefreshPolicy::expiry_margin`] before its expiry (a
//!   quarter of its life for short tokens), which covers the time a request takes to arrive
//!   and clock skew: an expired token is never sent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

// tokio's clock (the same as std's unless paused in tests).
use tokio::time::Instant;

use tokio::sync::Notify;

use super::{EntraError, Fetched, TokenSource};
use crate::auth::AccessToken;

/// When tokens are refreshed and how failures back off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(docsrs, doc(cfg(feature = "entra")))]
pub struct RefreshPolicy {
    /// Refresh this long before expiry (default 5 minutes), or at half the token's life if
    /// that is earlier.
    pub refresh_before: Duration,
    /// Stop handing a token out this long before its expiry (default 30 s), or a quarter of
    /// its life if that is shorter.
    pub expiry_margin: Duration,
    /// The first wait after a failed refresh (default 500 ms); doubled per failure.
    pub initial_backoff: Duration,
    /// The longest wait after failed refreshes (default 10 s).
    pub max_backoff: Duration,
    /// The least time between the starts of two token requests (default 1 s), so that an
    /// endpoint handing out very short tokens is not hammered.
    pub min_interval: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            refresh_before: Duration::from_secs(300),
            expiry_margin: Duration::from_secs(30),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            min_interval: Duration::from_secs(1),
        }
    }
}

impl RefreshPolicy {
    /// When a token of `lifetime` obtained by a request sent at `sent_at` is refreshed, and
    /// until when it is handed out.
    fn schedule(&self, sent_at: Instant, lifetime: Duration) -> (Instant, Instant) {
        let ahead = self.refresh_before.min(lifetime / 2);
        let margin = self.expiry_margin.min(lifetime / 4);
        let at = |before: Duration| sent_at.checked_add(lifetime - before).unwrap_or(sent_at);
        (at(ahead), at(margin))
    }

    fn backoff(&self, failures: u32) -> Duration {
        let d = self
            .initial_backoff
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
            .min(self.max_backoff);
        d / 2 + (d / 2).mul_f64(fastrand::f64())
    }
}

#[derive(Clone)]
struct Cached {
    token: AccessToken,
    refresh_at: Instant,
    usable_until: Instant,
}

#[derive(Default)]
struct State {
    current: Option<Cached>,
    refreshing: bool,
    failures: u32,
    /// No refresh starts before this (backoff, or the minimum interval).
    not_before: Option<Instant>,
    last_error: Option<EntraError>,
}

struct Shared {
    source: Box<dyn TokenSource>,
    policy: RefreshPolicy,
    state: Mutex<State>,
    notify: Notify,
    fetches: AtomicU64,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a refresh's outcome and wakes every waiter.
    fn complete(&self, started: Instant, result: Result<Fetched, EntraError>) {
        let mut st = self.state();
        st.refreshing = false;
        let now = Instant::now();
        match result {
            Ok(f) => {
                let (refresh_at, usable_until) = self.policy.schedule(f.sent_at, f.lifetime);
                tracing::debug!(
                    lifetime_s = f.lifetime.as_secs(),
                    usable_for_ms = usable_until.saturating_duration_since(now).as_millis() as u64,
                    "Entra ID token refreshed"
                );
                st.failures = 0;
                st.last_error = None;
                st.not_before = started.checked_add(self.policy.min_interval);
                if usable_until > now {
                    st.current = Some(Cached {
                        token: f.token,
                        refresh_at,
                        usable_until,
                    });
                } else {
                    st.last_error = Some(EntraError::NoToken {
                        why: "the token endpoint answered with a token that expires too soon".into(),
                    });
                }
            }
            Err(e) => {
                st.failures = st.failures.saturating_add(1);
                let wait = self.policy.backoff(st.failures);
                tracing::warn!(failures = st.failures, retry_in_ms = wait.as_millis() as u64, error = %e, "Entra ID token refresh failed");
                st.not_before = now.checked_add(wait);
                st.last_error = Some(e);
            }
        }
        drop(st);
        self.notify.notify_waiters();
    }
}

/// Ends a refresh even if its task is dropped (runtime shut down) or panics, so that the
/// cache never waits for a refresh that will not come.
struct RefreshGuard {
    shared: Arc<Shared>,
    started: Instant,
    done: bool,
}

impl Drop for RefreshGuard {
    fn drop(&mut self) {
        if !self.done {
            self.shared.complete(
                self.started,
                Err(EntraError::NoToken {
                    why: "the token refresh was interrupted".into(),
                }),
            );
        }
    }
}

async fn refresh(mut guard: RefreshGuard) {
    guard.shared.fetches.fetch_add(1, Ordering::Relaxed);
    let result = guard.shared.source.fetch().await;
    guard.done = true;
    guard.shared.complete(guard.started, result);
}

/// A cache of one source's tokens, shared by every request of the clients holding it.
pub(crate) struct TokenCache {
    shared: Arc<Shared>,
}

impl TokenCache {
    pub(crate) fn new(source: Box<dyn TokenSource>, policy: RefreshPolicy) -> Self {
        Self {
            shared: Arc::new(Shared {
                source,
                policy,
                state: Mutex::new(State::default()),
                notify: Notify::new(),
                fetches: AtomicU64::new(0),
            }),
        }
    }

    /// Token requests started so far.
    pub(crate) fn fetches(&self) -> u64 {
        self.shared.fetches.load(Ordering::Relaxed)
    }

    /// A token valid for at least the expiry margin. Returns the current one at once while it
    /// is valid (starting a background refresh when one is due); otherwise waits for the
    /// refresh under way, or returns the last error while backing off. Not bounded by itself
    /// beyond the source's own timeouts: callers bound it by their deadline.
    pub(crate) async fn token(&self) -> Result<AccessToken, EntraError> {
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            // (a token to return, a refresh to run in this future) - decided under the lock.
            let (ready, inline) = {
                let mut st = self.shared.state();
                let now = Instant::now();
                let valid = st.current.as_ref().filter(|c| now < c.usable_until).cloned();
                let due = valid.as_ref().is_none_or(|c| now >= c.refresh_at);
                let waiting = st.not_before.is_some_and(|t| now < t);
                let mut inline = None;
                if due && !st.refreshing && !waiting {
                    st.refreshing = true;
                    let guard = RefreshGuard {
                        shared: self.shared.clone(),
                        started: now,
                        done: false,
                    };
                    match tokio::runtime::Handle::try_current() {
                        Ok(handle) => {
                            handle.spawn(refresh(guard));
                        }
                        // Not on a tokio runtime: refresh in this future instead.
                        Err(_) => inline = Some(guard),
                    }
                }
                let ready = match valid {
                    Some(c) => Some(Ok(c.token)),
                    None if !st.refreshing => Some(Err(st.last_error.clone().unwrap_or(EntraError::NoToken {
                        why: "waiting before the next token request".into(),
                    }))),
                    None => {
                        notified.as_mut().enable();
                        None
                    }
                };
                (ready, inline)
            };
            if let Some(guard) = inline {
                refresh(guard).await;
            }
            if let Some(result) = ready {
                return result;
            }
            notified.as_mut().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::entra::{EntraKind, FetchFuture};
    use std::sync::atomic::AtomicU32;

    /// A source whose answers the test scripts: lifetime, delay, failure.
    struct Scripted {
        calls: AtomicU32,
        lifetime: Duration,
        delay: Duration,
        fail: std::sync::atomic::AtomicBool,
    }

    impl TokenSource for Scripted {
        fn fetch(&self) -> FetchFuture<'_> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst);
                let sent_at = Instant::now();
                tokio::time::sleep(self.delay).await;
                if self.fail.load(Ordering::SeqCst) {
                    return Err(EntraError::Transient {
                        kind: EntraKind::ManagedIdentity,
                        why: "scripted".into(),
                    });
                }
                Ok(Fetched {
                    token: AccessToken(format!("t{n}")),
                    sent_at,
                    lifetime: self.lifetime,
                })
            })
        }
    }

    fn cache(lifetime: u64, delay_ms: u64) -> (TokenCache, Arc<Scripted>) {
        let s = Arc::new(Scripted {
            calls: AtomicU32::new(0),
            lifetime: Duration::from_secs(lifetime),
            delay: Duration::from_millis(delay_ms),
            fail: false.into(),
        });
        struct Share(Arc<Scripted>);
        impl TokenSource for Share {
            fn fetch(&self) -> FetchFuture<'_> {
                self.0.fetch()
            }
        }
        (TokenCache::new(Box::new(Share(s.clone())), RefreshPolicy::default()), s)
    }

    #[tokio::test(start_paused = true)]
    async fn many_waiters_one_request() {
        let (cache, source) = cache(90, 200);
        let cache = Arc::new(cache);
        let tasks: Vec<_> = (0..1000)
            .map(|_| {
                let c = cache.clone();
                tokio::spawn(async move { c.token().await.map(|t| t.0) })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), "t0");
        }
        assert_eq!(source.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_in_the_background_and_never_hands_out_expired_tokens() {
        let (cache, source) = cache(90, 5_000);
        let start = Instant::now();
        assert_eq!(cache.token().await.unwrap().0, "t0");
        // Before the half-life: no refresh.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(cache.token().await.unwrap().0, "t0");
        assert_eq!(source.calls.load(Ordering::SeqCst), 1);
        // Past it: the old token at once, a refresh in the background.
        tokio::time::sleep(Duration::from_secs(20)).await;
        let asked = Instant::now();
        assert_eq!(cache.token().await.unwrap().0, "t0");
        assert_eq!(asked.elapsed(), Duration::ZERO, "did not wait on the endpoint");
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(cache.token().await.unwrap().0, "t1");
        // Over 10 minutes, asking every second: every token handed out has life left.
        source.fail.store(false, Ordering::SeqCst);
        let mut last = String::new();
        let mut issued_at = std::collections::HashMap::new();
        while start.elapsed() < Duration::from_secs(600) {
            let t = cache.token().await.unwrap().0;
            if t != last {
                issued_at.insert(t.clone(), Instant::now() - Duration::from_secs(5));
                last = t.clone();
            }
            let age = issued_at[&t].elapsed();
            assert!(age < Duration::from_secs(90 - 20), "{t} handed out at age {age:?}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_and_keep_the_valid_token_then_stop_at_expiry() {
        let (cache, source) = cache(90, 10);
        assert_eq!(cache.token().await.unwrap().0, "t0");
        source.fail.store(true, Ordering::SeqCst);
        // Refreshes fail from the half-life on; the token is still handed out until its margin.
        let mut handed = 0;
        for _ in 0..66 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if cache.token().await.is_ok() {
                handed += 1;
            }
        }
        assert_eq!(handed, 66);
        let calls = source.calls.load(Ordering::SeqCst);
        assert!(calls > 2 && calls < 20, "backoff: {calls} requests in 20 s");
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Past 90 - 22.5 s: no token, the error instead.
        let err = cache.token().await.unwrap_err();
        assert!(!err.is_definite(), "{err}");
        source.fail.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(cache.token().await.unwrap().0.starts_with('t'));
    }
}
