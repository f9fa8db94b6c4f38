//! The default chain: each kind in order until one is available; that kind is then used for
//! every later refresh (its failures are its own, as with the SDKs' default credential).
//!
//! As in the SDKs' chained credential, the chain moves on only from a kind that is
//! *unavailable* here (not configured, no instance metadata endpoint, no identity assigned to
//! this machine). A configured kind that fails or is refused ends the chain with its error, so
//! a passing failure of the configured service principal never makes the process lock as
//! another identity.

use std::sync::OnceLock;

use super::{EntraError, EntraKind, FetchFuture, TokenSource, PROBE_PREFIX};

/// Whether a kind's failure means "not available here" (move on) rather than "failed" (stop):
/// not configured, no instance metadata endpoint answering the probe, or the metadata endpoint
/// refusing because this machine has no (such) identity (400), as the SDKs treat it.
fn unavailable(e: &EntraError) -> bool {
    match e {
        EntraError::NotConfigured { .. } => true,
        EntraError::Transient { why, .. } => why.starts_with(PROBE_PREFIX),
        EntraError::Refused {
            kind: EntraKind::ManagedIdentity,
            status: Some(400),
            ..
        } => true,
        _ => false,
    }
}

/// A kind's source, or why it is not configured.
pub(crate) type Candidate = (EntraKind, Result<Box<dyn TokenSource>, EntraError>);

/// Kinds in order, each configured or with the reason it is not.
pub(crate) struct Chain {
    sources: Vec<Candidate>,
    chosen: OnceLock<usize>,
}

impl Chain {
    pub(crate) fn new(sources: Vec<Candidate>) -> Self {
        Self {
            sources,
            chosen: OnceLock::new(),
        }
    }
}

impl TokenSource for Chain {
    fn fetch(&self) -> FetchFuture<'_> {
        Box::pin(async move {
            if let Some(&i) = self.chosen.get() {
                if let (_, Ok(source)) = &self.sources[i] {
                    return source.fetch().await;
                }
            }
            let mut tried = Vec::new();
            for (i, (kind, source)) in self.sources.iter().enumerate() {
                match source {
                    Err(e) => tried.push((*kind, e.clone())),
                    Ok(source) => match source.fetch().await {
                        Ok(token) => {
                            tracing::info!(kind = %kind, "Entra ID credential chosen");
                            let _ = self.chosen.set(i);
                            return Ok(token);
                        }
                        Err(e) if unavailable(&e) => {
                            tracing::debug!(kind = %kind, error = %e, "Entra ID credential unavailable");
                            tried.push((*kind, e));
                        }
                        Err(e) => {
                            tracing::debug!(kind = %kind, error = %e, "Entra ID credential failed");
                            tried.push((*kind, e));
                            return Err(EntraError::Chain { tried });
                        }
                    },
                }
            }
            Err(EntraError::Chain { tried })
        })
    }
}
