//! [`AzureMutex`]: the thin lease layer. Each operation on a named lock is one
//! [Lease Blob](https://learn.microsoft.com/en-us/rest/api/storageservices/lease-blob) request in
//! the steady state; nothing runs in the background.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use percent_encoding::{percent_decode_str, utf8_percent_encode, NON_ALPHANUMERIC};
use reqwest::Method;

use crate::config::StorageConfig;
use crate::error::{Error, InvalidInput, LostReason, ServiceError};

use crate::rest::{BlobClient, ClientOptions, RestRequest, RestResponse};
use crate::types::{BreakPeriod, ContainerName, LeaseDuration, LeaseId, LockName};

/// The shortest time between the starts of two renewal requests of one lease after a failure,
/// inside one call ([`AzureMutex::renew_until`] retries no faster) and between calls (a
/// `LockGuard`'s renewer waits at least this long): at most one renewal request per second per
/// lease, however the service answers.
pub const MIN_RENEWAL_GAP: Duration = Duration::from_secs(1);

mod create;
mod fence;
mod lease;
mod list;
mod names;
mod record;
mod stamp;
#[cfg(test)]
mod tests;

pub use lease::{Grant, Holder, HolderInfo, Lease, LeaseKind, LeaseState, LockInfo, Released};
pub use list::{ListedBlob, Listing, MAX_LISTED, MAX_LISTED_METADATA, MAX_LIST_BODY_BYTES};
use stamp::*;

/// How long cleanup after a failed or abandoned acquire may take at most.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds an [`AzureMutex`].
#[derive(Debug)]
pub struct AzureMutexBuilder {
    config: StorageConfig,
    container: String,
    options: ClientOptions,
    create_container: bool,
    fencing: bool,
    holder: Option<Holder>,
    spread_names: bool,
}

impl AzureMutexBuilder {
    /// Whether each lock's blob name starts with a short hash of the lock name (default
    /// `false`): `job-00001` is kept in the blob `5fc-job-00001`. Blob storage serves names that
    /// sort together from one partition; a process that holds thousands of locks named
    /// `job-00001`, `job-00002`, … sends all its renewals there. The prefix spreads them from the
    /// first request (see [the partitioning advice](https://learn.microsoft.com/en-us/azure/storage/blobs/storage-performance-checklist#partitioning)).
    ///
    /// Every client of a lock must agree on this setting: with and without it, the same lock
    /// name is two different blobs, so two locks. Lock names keep their meaning everywhere else
    /// (`status`, listings and semaphores show and take lock names, not blob names). Off by
    /// default so that blobs keep the names users and other tools see.
    pub fn spread_names(mut self, yes: bool) -> Self {
        self.spread_names = yes;
        self
    }

    /// Whether acquire may create the container when it is missing (default `true`).
    pub fn create_container(mut self, yes: bool) -> Self {
        self.create_container = yes;
        self
    }

    /// Whether every acquire returns a fencing token (default `false`): one extra request per
    /// acquire on a lock blob this crate created, at most two on another blob.
    pub fn fencing(mut self, yes: bool) -> Self {
        self.fencing = yes;
        self
    }

    /// Records `holder` in the lock blob's metadata on every acquire (one HEAD and one Set Blob
    /// Metadata request; other metadata is preserved).
    pub fn holder(mut self, holder: Holder) -> Self {
        self.holder = Some(holder);
        self
    }

    /// HTTP client options (timeouts, retries, `x-ms-version`, extra CA certificates).
    pub fn client_options(mut self, options: ClientOptions) -> Self {
        self.options = options;
        self
    }

    /// Checks the options and makes the client. No request is sent.
    pub fn build(self) -> Result<AzureMutex, InvalidInput> {
        let container = ContainerName::new(self.container)?;
        let client = BlobClient::new(&self.config, self.options)?;
        Ok(AzureMutex {
            inner: Arc::new(Inner {
                client,
                container,
                create_container: self.create_container,
                fencing: self.fencing,
                holder: self.holder,
                pages: fence::PageCache::default(),
                spread_names: self.spread_names,
            }),
        })
    }
}

/// Leases on named locks (blobs) in one container. Cheap to clone; clones share one connection
/// pool.
///
/// ```no_run
/// use azmutex::{AzureMutex, LeaseDuration, StorageConfig};
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let mutex = AzureMutex::builder(StorageConfig::development(), azmutex::DEFAULT_CONTAINER).build()?;
/// let mut lease = mutex.acquire("nightly-report", LeaseDuration::seconds(30)?).await?;
/// mutex.renew(&mut lease).await?;
/// mutex.release(&lease).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct AzureMutex {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: BlobClient,
    container: ContainerName,
    create_container: bool,
    fencing: bool,
    holder: Option<Holder>,
    pages: fence::PageCache,
    spread_names: bool,
}

fn name(lock: impl TryInto<LockName, Error = InvalidInput>) -> Result<LockName, InvalidInput> {
    lock.try_into()
}

impl AzureMutex {
    /// Starts building a mutex for locks in `container`.
    pub fn builder(config: StorageConfig, container: impl Into<String>) -> AzureMutexBuilder {
        AzureMutexBuilder {
            config,
            container: container.into(),
            options: ClientOptions::default(),
            create_container: true,
            fencing: false,
            holder: None,
            spread_names: false,
        }
    }

    /// The REST client (for its request counter and options).
    pub fn client(&self) -> &BlobClient {
        &self.inner.client
    }

    /// The container.
    pub fn container(&self) -> &ContainerName {
        &self.inner.container
    }

    /// Whether fencing tokens are on.
    pub fn fencing(&self) -> bool {
        self.inner.fencing
    }

    fn lease_request(&self, lock: &LockName, action: &'static str) -> Result<RestRequest, InvalidInput> {
        Ok(RestRequest::new(
            action,
            Method::PUT,
            self.inner.container.as_str(),
            Some(&self.blob(lock)?),
        )
        .query("comp", "lease")
        .header("x-ms-lease-action", action))
    }

    /// Acquires `lock` for `duration` under a fresh random lease id
    /// ([Lease Blob](https://learn.microsoft.com/en-us/rest/api/storageservices/lease-blob), `x-ms-lease-action: acquire`).
    ///
    /// Creates the container (if allowed) and an empty lock blob when missing; never
    /// overwrites an existing blob. [`Error::Conflict`] when someone else holds the lock.
    pub async fn acquire(
        &self,
        lock: impl TryInto<LockName, Error = InvalidInput>,
        duration: LeaseDuration,
    ) -> Result<Lease, Error> {
        let lock = name(lock)?;
        self.acquire_until(
            &lock,
            duration,
            LeaseId::new_random(),
            self.inner.client.default_deadline(),
        )
        .await
    }

    /// Acquires `lock` proposing lease id `id`. Repeating it while the lease is ours succeeds
    /// again (and restarts the lease clock); a holder can also change the duration this way.
    pub async fn acquire_with_id(
        &self,
        lock: impl TryInto<LockName, Error = InvalidInput>,
        duration: LeaseDuration,
        id: LeaseId,
    ) -> Result<Lease, Error> {
        let lock = name(lock)?;
        self.acquire_until(&lock, duration, id, self.inner.client.default_deadline())
            .await
    }

    /// [`AzureMutex::acquire_with_id`] with retries bounded by `deadline`.
    pub async fn acquire_until(
        &self,
        lock: &LockName,
        duration: LeaseDuration,
        id: LeaseId,
        deadline: Instant,
    ) -> Result<Lease, Error> {
        self.acquire_attempt(lock, duration, id, deadline, false).await
    }

    /// [`AzureMutex::acquire_until`]; with `prefetch`, and a holder record to write, the blob's
    /// properties (Get Blob Properties) are read beside the acquire instead of after it: the
    /// record needs them, and the token and the record then follow the acquire at once. Once the
    /// client has settled its service version the two go out together (over a second
    /// connection); a client's first request tries the version alone, so in a new process (a
    /// one-shot `azmutex run`) they go one after the other over one connection, which on
    /// loopback is as fast as a second connection. The read is used only if its ETag is the
    /// acquire's (see `stamp`); if the lock is busy it was one request for nothing, so callers
    /// ask for it on a first attempt only.
    pub(crate) async fn acquire_attempt(
        &self,
        lock: &LockName,
        duration: LeaseDuration,
        id: LeaseId,
        deadline: Instant,
        prefetch: bool,
    ) -> Result<Lease, Error> {
        let req = self
            .lease_request(lock, "acquire")?
            .header("x-ms-lease-duration", duration.header())
            .header("x-ms-proposed-lease-id", id.to_string());
        let mut head = (prefetch && self.inner.holder.is_some()).then(|| Box::pin(self.head(lock, deadline)));
        let mut prefetched: Option<Result<RestResponse, Error>> = None;
        // Steady state: one request. Only a 404 leads to creating what is missing (bounded).
        let mut creations = 0;
        let resp = loop {
            let send = self.inner.client.send(&req, deadline);
            let resp = match head.as_mut() {
                Some(read) if prefetched.is_none() => {
                    tokio::pin!(send);
                    loop {
                        tokio::select! {
                            r = &mut send => break r,
                            r = read.as_mut(), if prefetched.is_none() => prefetched = Some(r),
                        }
                    }
                }
                _ => send.await,
            }?;
            if resp.status == 201 {
                break resp;
            }
            // Busy, or created below: the read says nothing about the lease we may get.
            head = None;
            prefetched = None;
            match (resp.status, resp.error().code.as_deref()) {
                (404, Some("ContainerNotFound")) if self.inner.create_container && creations < 3 => {
                    Box::pin(self.create_container(deadline)).await?;
                }
                (404, Some("BlobNotFound")) if creations < 3 => Box::pin(self.create_blob(lock, deadline)).await?,
                _ => return Err(self.classify(lock, &resp, Op::Acquire)),
            }
            creations += 1;
        };
        let grant = Grant::new(resp.sent_at, resp.sent_at_wall, duration);
        let mut lease = Lease {
            lock: lock.clone(),
            id,
            duration,
            grant,
            fencing_token: None,
        };
        if let Err(e) = self.check_returned_id(lock, &resp, id) {
            // 201 without our id: the service (or something in between) did not confirm that
            // the lease is ours. Nothing may run under it; release what may be ours.
            Box::pin(self.release_quietly(&lease, deadline)).await;
            return Err(Error::Unexpected {
                service: e.service().cloned().unwrap_or_else(|| resp.error()),
                detail: format!(
                    "acquire answered 201 with lease id {:?} instead of ours; released ours",
                    crate::error::sanitize_text(resp.header("x-ms-lease-id").unwrap_or("(none)"), 60)
                ),
            });
        }
        tracing::debug!(lock = %lock, lease_id = %id, "acquired");
        if self.inner.fencing || self.inner.holder.is_some() {
            // The stamp must not outlive the lease it is written under.
            let stamp_deadline = grant.deadline.map_or(deadline, |d| d.min(deadline));
            let acquired_etag = resp.header("etag").map(str::to_string);
            let prefetched = match (prefetched, head) {
                (Some(read), _) => read.ok(),
                (None, Some(read)) => tokio::time::timeout_at(stamp_deadline.into(), read)
                    .await
                    .ok()
                    .and_then(Result::ok),
                (None, None) => None,
            };
            // Boxed, as the creations above: an acquisition waiting for its turn (thousands may,
            // paced) holds only what its first request needs.
            match Box::pin(self.stamp(lock, id, acquired_etag, prefetched, stamp_deadline)).await {
                Ok(token) => lease.fencing_token = token,
                Err(e) => {
                    // Do not keep a lease the caller will never hear of.
                    Box::pin(self.release_quietly(&lease, deadline)).await;
                    return Err(e);
                }
            }
        }
        Ok(lease)
    }

    /// Releases `lease` after a failed acquire whose call deadline was `call_deadline`: for a
    /// few seconds, and never more than a few seconds past that deadline. Failures are logged.
    async fn release_quietly(&self, lease: &Lease, call_deadline: Instant) {
        let now = Instant::now();
        let budget = CLEANUP_TIMEOUT.min(self.inner.client.options().retry.call_timeout);
        let soon = now.checked_add(budget).unwrap_or(now);
        let deadline = call_deadline.checked_add(budget).map_or(soon, |end| soon.min(end));
        if let Err(e) = self.release_until(lease, deadline).await {
            tracing::warn!(lock = %lease.lock, error = %e, "could not release after a failed acquire; the lease will expire");
        }
    }

    /// Renews `lease` (one [Lease Blob](https://learn.microsoft.com/en-us/rest/api/storageservices/lease-blob) request, `renew`) and updates its grant. A lost lease is
    /// [`Error::LeaseLost`]; the returned id is checked against ours.
    pub async fn renew(&self, lease: &mut Lease) -> Result<Grant, Error> {
        self.renew_until(lease, self.inner.client.default_deadline()).await
    }

    /// [`AzureMutex::renew`] with retries bounded by `deadline`.
    pub async fn renew_until(&self, lease: &mut Lease, deadline: Instant) -> Result<Grant, Error> {
        let req = self
            .lease_request(&lease.lock, "renew")?
            .header("x-ms-lease-id", lease.id.to_string())
            .min_retry_gap(MIN_RENEWAL_GAP);
        let resp = self.inner.client.send(&req, deadline).await?;
        if resp.status != 200 {
            return Err(self.classify(&lease.lock, &resp, Op::Renew));
        }
        // Azurite renews an expired lease whatever id is sent, under the old id: check.
        self.check_returned_id(&lease.lock, &resp, lease.id)?;
        lease.grant = Grant::new(resp.sent_at, resp.sent_at_wall, lease.duration);
        Ok(lease.grant)
    }

    /// Changes the lease id of `lease` to `new_id` (one [Lease Blob](https://learn.microsoft.com/en-us/rest/api/storageservices/lease-blob) request, `change`). The lease clock is not
    /// restarted. Safe to retry.
    pub async fn change(&self, lease: &mut Lease, new_id: LeaseId) -> Result<(), Error> {
        let req = self
            .lease_request(&lease.lock, "change")?
            .header("x-ms-lease-id", lease.id.to_string())
            .header("x-ms-proposed-lease-id", new_id.to_string());
        let resp = self
            .inner
            .client
            .send(&req, self.inner.client.default_deadline())
            .await?;
        if resp.status != 200 {
            return Err(self.classify(&lease.lock, &resp, Op::Renew));
        }
        self.check_returned_id(&lease.lock, &resp, new_id)?;
        lease.id = new_id;
        Ok(())
    }

    /// Releases `lease` (one [Lease Blob](https://learn.microsoft.com/en-us/rest/api/storageservices/lease-blob) request, `release`): the lock is free at once.
    ///
    /// [`Released::Confirmed`] when the service confirmed it. A "lease id mismatch" answer is
    /// [`Error::LeaseLost`] (someone else holds the lock: ours was lost before), except after
    /// an earlier attempt of this call whose outcome is unknown (its answer was lost): that
    /// attempt most likely released the lease, and the result is [`Released::Unconfirmed`].
    pub async fn release(&self, lease: &Lease) -> Result<Released, Error> {
        self.release_until(lease, self.inner.client.default_deadline()).await
    }

    /// [`AzureMutex::release`] with retries bounded by `deadline`.
    pub async fn release_until(&self, lease: &Lease, deadline: Instant) -> Result<Released, Error> {
        // A release never waits behind version negotiation: it is often cleanup, due within a
        // few seconds, after the very request that holds the negotiation gate was abandoned.
        let req = self
            .lease_request(&lease.lock, "release")?
            .header("x-ms-lease-id", lease.id.to_string())
            .bypassing_version_gate();
        let resp = self.inner.client.send(&req, deadline).await?;
        match resp.status {
            200 => Ok(Released::Confirmed),
            409 if resp.earlier_outcome_unknown && resp.error().is("LeaseIdMismatchWithLeaseOperation") => {
                tracing::warn!(
                    lock = %lease.lock,
                    "release unconfirmed: an earlier attempt's answer was lost and the retry found the lease gone"
                );
                Ok(Released::Unconfirmed)
            }
            _ => Err(self.classify(&lease.lock, &resp, Op::Release)),
        }
    }

    /// Breaks whatever lease is on `lock` ([Lease Blob](https://learn.microsoft.com/en-us/rest/api/storageservices/lease-blob), `break`); no lease id needed. Returns how long until the lock is
    /// free (zero: free now; also when there was no lease). `period` `None` lets a fixed lease run
    /// out and breaks an infinite one at once.
    pub async fn break_lease(
        &self,
        lock: impl TryInto<LockName, Error = InvalidInput>,
        period: Option<BreakPeriod>,
    ) -> Result<Duration, Error> {
        let lock = name(lock)?;
        let mut req = self.lease_request(&lock, "break")?;
        if let Some(p) = period {
            req = req.header("x-ms-lease-break-period", p.get().to_string());
        }
        let resp = self
            .inner
            .client
            .send(&req, self.inner.client.default_deadline())
            .await?;
        match resp.status {
            202 => {
                let secs = resp
                    .header("x-ms-lease-time")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0)
                    // The service never says more than the longest lease (60 s).
                    .min(60);
                Ok(Duration::from_secs(secs))
            }
            409 if resp.error().is("LeaseNotPresentWithLeaseOperation") => Ok(Duration::ZERO),
            _ => Err(self.classify(&lock, &resp, Op::Inspect)),
        }
    }

    /// Reads the lock's lease state, holder and fencing token (one
    /// [Get Blob Properties](https://learn.microsoft.com/en-us/rest/api/storageservices/get-blob-properties)
    /// request).
    pub async fn inspect(&self, lock: impl TryInto<LockName, Error = InvalidInput>) -> Result<LockInfo, Error> {
        let lock = name(lock)?;
        self.inspect_until(&lock, self.inner.client.default_deadline()).await
    }

    /// [`AzureMutex::inspect`] with retries bounded by `deadline`.
    pub async fn inspect_until(&self, lock: &LockName, deadline: Instant) -> Result<LockInfo, Error> {
        let lock = lock.clone();
        let resp = self.head(&lock, deadline).await?;
        if resp.status == 404 {
            return Ok(LockInfo {
                lock,
                exists: false,
                state: LeaseState::Available,
                locked: false,
                duration: None,
                fencing_token: None,
                holder: None,
                metadata: BTreeMap::new(),
                etag: None,
            });
        }
        let props = Props::from(&resp);
        let state = resp
            .header("x-ms-lease-state")
            .and_then(LeaseState::parse)
            .unwrap_or(LeaseState::Available);
        let locked = resp.header("x-ms-lease-status") == Some("locked");
        let duration = match resp.header("x-ms-lease-duration") {
            Some("infinite") => Some(LeaseKind::Infinite),
            Some("fixed") => Some(LeaseKind::Fixed),
            _ => None,
        };
        let holder = if locked { props.holder() } else { None };
        Ok(LockInfo {
            lock,
            exists: true,
            state,
            locked,
            duration,
            fencing_token: props.fencing_token(),
            holder,
            metadata: props.metadata,
            etag: props.etag,
        })
    }

    // ---- helpers -------------------------------------------------------------------------

    /// [Get Blob Properties](https://learn.microsoft.com/en-us/rest/api/storageservices/get-blob-properties)
    /// (HEAD); a 404 is an answer, not an error.
    async fn head(&self, lock: &LockName, deadline: Instant) -> Result<RestResponse, Error> {
        let req = RestRequest::new(
            "get-properties",
            Method::HEAD,
            self.inner.container.as_str(),
            Some(&self.blob(lock)?),
        );
        let resp = self.inner.client.send(&req, deadline).await?;
        match resp.status {
            200 | 404 => Ok(resp),
            _ => Err(self.classify(lock, &resp, Op::Inspect)),
        }
    }
    fn check_returned_id(&self, lock: &LockName, resp: &RestResponse, ours: LeaseId) -> Result<(), Error> {
        match resp.header("x-ms-lease-id").map(LeaseId::parse) {
            Some(Ok(id)) if id == ours => Ok(()),
            _ => Err(Error::LeaseLost {
                lock: lock.to_string(),
                reason: LostReason::ReturnedOtherId,
                service: Some(resp.error()),
            }),
        }
    }

    /// Turns a failed answer into the error kind a caller decides on.
    fn classify(&self, lock: &LockName, resp: &RestResponse, op: Op) -> Error {
        let service = resp.error();
        let lost = |reason| Error::LeaseLost {
            lock: lock.to_string(),
            reason,
            service: Some(service.clone()),
        };
        let code = service.code.as_deref().unwrap_or("");
        match (resp.status, code) {
            (409, "LeaseAlreadyPresent") | (409, "LeaseIsBreakingAndCannotBeAcquired") => Error::Conflict {
                lock: lock.to_string(),
                service,
            },
            (409, "LeaseIdMismatchWithLeaseOperation") | (412, "LeaseIdMismatchWithBlobOperation") => {
                lost(LostReason::IdMismatch)
            }
            (409, "LeaseNotPresentWithLeaseOperation") | (412, "LeaseNotPresentWithBlobOperation") => {
                lost(LostReason::NotPresent)
            }
            (412, "LeaseIdMissing") => lost(LostReason::IdMismatch),
            (409, "LeaseIsBrokenAndCannotBeRenewed") | (409, "LeaseIsBreakingAndCannotBeChanged") => {
                lost(LostReason::Broken)
            }
            (404, _) if matches!(op, Op::Renew | Op::Release | Op::Write) => lost(LostReason::Deleted),
            (404, "ContainerNotFound") => Error::NotFound {
                what: format!("container {:?}", self.inner.container.as_str()),
                service,
            },
            (404, _) => Error::NotFound {
                what: format!("lock blob {:?}", lock.as_str()),
                service,
            },
            _ => Error::Unexpected {
                service,
                detail: String::new(),
            },
        }
    }
}

#[derive(Clone, Copy)]
enum Op {
    Acquire,
    Renew,
    Release,
    Write,
    Inspect,
}
