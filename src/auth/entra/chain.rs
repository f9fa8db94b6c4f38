//! The default chain: each kind in order until one gives a token; that kind is then used for
//! every later refresh (its failures are its own, as with the SDKs' default credential).

use std::sync::OnceLock;

use super::{EntraError, EntraKind, FetchFuture, TokenSource};

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
                        Err(e) => {
                            tracing::debug!(kind = %kind, error = %e, "Entra ID credential failed");
                            tried.push((*kind, e));
                        }
                    },
                }
            }
            Err(EntraError::Chain { tried })
        })
    }
}
