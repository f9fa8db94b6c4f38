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
use crate::fence;
use crate::rest::{BlobClient, ClientOptions, RestRequest, RestResponse};
use crate::types::{BreakPeriod, ContainerName, LeaseDuration, LeaseId, LockName};

/// The shortest time between the starts of two renewal requests of one lease after a failure,
/// inside one call ([`AzureMutex::renew_until`] retries no faster) and between calls (a
/// `LockGuard`'s renewer waits at least this long): at most one renewal request per second per
/// lease, however the service answers.
pub const MIN_RENEWAL_GAP: Duration = Duration::from_secs(1);

/// Metadata names this crate writes on a lock blob (lower-case letters only: they sort the same
/// under the service's collation and byte order).
const META_FENCE: &str = "azmutexfence";
const META_OWNER: &str = "azmutexowner";
const META_HOST: &str = "azmutexhost";
const META_PID: &str = "azmutexpid";
const META_SINCE: &str = "azmutexsince";

/// How long cleanup after a failed or abandoned acquire may take at most.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// How a release ended (see [`AzureMutex::release`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// The service released the lease: it was ours until then.
    Confirmed,
    /// An earlier attempt's answer was lost and a retry found the lease no longer ours. The lost
    /// attempt most likely released it, but the service cannot rule out that the lease was
    /// broken (and the lock taken) before.
    Unconfirmed,
}

/// When a request was sent and how long its lease is therefore valid locally.
///
/// Validity is checked on two clocks: the monotonic clock (immune to clock changes, but stopped
/// while the machine is suspended) and the wall clock (which keeps counting through a suspend).
/// A lease is valid only while both say so, so a process that slept through its deadline never
/// wakes up believing it still holds the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// When the acquire/renew request that got this answer was *sent*. The server started the
    /// lease clock no earlier than this.
    pub sent_at: Instant,
    /// The wall-clock time at `sent_at`.
    pub sent_at_wall: SystemTime,
    /// `sent_at + duration`; `None` for an infinite lease. Never trust the lease past it.
    pub deadline: Option<Instant>,
    /// The same deadline on the wall clock; `None` for an infinite lease.
    pub wall_deadline: Option<SystemTime>,
}

impl Grant {
    fn new(sent_at: Instant, sent_at_wall: SystemTime, duration: LeaseDuration) -> Self {
        let d = duration.as_duration();
        Self {
            sent_at,
            sent_at_wall,
            deadline: d.map(|d| sent_at + d),
            wall_deadline: d.map(|d| sent_at_wall + d),
        }
    }

    /// Whether the grant is still valid at `now` and, on the wall clock, `wall_now`, keeping
    /// `margin` in hand on both.
    pub fn is_valid(&self, now: Instant, wall_now: SystemTime, margin: Duration) -> bool {
        let mono = self.deadline.is_none_or(|d| now + margin < d);
        let wall = self.wall_deadline.is_none_or(|d| wall_now + margin < d);
        mono && wall
    }
}

/// A lease we were granted on a lock.
#[derive(Debug, Clone)]
pub struct Lease {
    lock: LockName,
    id: LeaseId,
    duration: LeaseDuration,
    grant: Grant,
    fencing_token: Option<u64>,
}

impl Lease {
    /// A lease known only by its id (e.g. from `azmutex acquire` in a script), to renew, change
    /// or release it. It is not valid locally until renewed.
    pub fn resume(lock: LockName, id: LeaseId, duration: LeaseDuration) -> Self {
        let now = Instant::now();
        Self {
            lock,
            id,
            duration,
            grant: Grant {
                sent_at: now,
                sent_at_wall: SystemTime::now(),
                deadline: Some(now),
                wall_deadline: Some(SystemTime::now()),
            },
            fencing_token: None,
        }
    }

    /// The lock.
    pub fn lock(&self) -> &LockName {
        &self.lock
    }

    /// The lease id.
    pub fn id(&self) -> LeaseId {
        self.id
    }

    /// The lease duration.
    pub fn duration(&self) -> LeaseDuration {
        self.duration
    }

    /// The latest grant (acquire or renewal).
    pub fn grant(&self) -> Grant {
        self.grant
    }

    /// The local deadline: the lease must not be trusted at or after it. `None` if infinite.
    pub fn deadline(&self) -> Option<Instant> {
        self.grant.deadline
    }

    /// Whether the lease is still valid locally at `now` (before its deadline), also checked on
    /// the wall clock (see [`Grant`]).
    pub fn is_valid_at(&self, now: Instant) -> bool {
        self.grant.is_valid(now, SystemTime::now(), Duration::ZERO)
    }

    /// The fencing token, when fencing is enabled.
    pub fn fencing_token(&self) -> Option<u64> {
        self.fencing_token
    }
}

/// Who holds a lock, recorded in the lock blob's metadata when configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holder {
    /// A caller-chosen description (e.g. a job name).
    pub owner: Option<String>,
    /// The host name.
    pub host: Option<String>,
    /// The process id.
    pub pid: Option<u32>,
}

/// A recorded holder, as read back by [`AzureMutex::inspect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderInfo {
    /// What the holder recorded.
    pub holder: Holder,
    /// When it acquired the lock (its own clock).
    pub since: Option<SystemTime>,
}

/// `x-ms-lease-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Not leased.
    Available,
    /// Leased.
    Leased,
    /// The lease ran out.
    Expired,
    /// Broken, but still locking until the break period ends.
    Breaking,
    /// Broken.
    Broken,
}

impl LeaseState {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "available" => Self::Available,
            "leased" => Self::Leased,
            "expired" => Self::Expired,
            "breaking" => Self::Breaking,
            "broken" => Self::Broken,
            _ => return None,
        })
    }

    /// The service's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::Leased => "leased",
            Self::Expired => "expired",
            Self::Breaking => "breaking",
            Self::Broken => "broken",
        }
    }
}

/// What [`AzureMutex::inspect`] found.
#[derive(Debug, Clone)]
pub struct LockInfo {
    /// The lock.
    pub lock: LockName,
    /// Whether the lock blob exists (a lock never used has none).
    pub exists: bool,
    /// `x-ms-lease-state`.
    pub state: LeaseState,
    /// `x-ms-lease-status`: `true` when `locked`.
    pub locked: bool,
    /// `x-ms-lease-duration` while leased: `Some(None)` infinite, `Some(Some(()))` fixed.
    pub duration: Option<LeaseKind>,
    /// The last fencing token handed out, when fencing was used on this lock.
    pub fencing_token: Option<u64>,
    /// The holder recorded by the last acquire that recorded one; `None` when not locked.
    pub holder: Option<HolderInfo>,
    /// All metadata on the blob, including this crate's own `azmutex*` names.
    pub metadata: BTreeMap<String, String>,
    /// The blob's ETag.
    pub etag: Option<String>,
}

/// `x-ms-lease-duration` of an active lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseKind {
    /// A lease of 15–60 s.
    Fixed,
    /// An infinite lease.
    Infinite,
}

/// Builds an [`AzureMutex`].
#[derive(Debug)]
pub struct AzureMutexBuilder {
    config: StorageConfig,
    container: String,
    options: ClientOptions,
    create_container: bool,
    fencing: bool,
    holder: Option<Holder>,
}

impl AzureMutexBuilder {
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
/// let mutex = AzureMutex::builder(StorageConfig::development(), "locks").build()?;
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

    fn lease_request(&self, lock: &LockName, action: &'static str) -> RestRequest {
        RestRequest::new(action, Method::PUT, self.inner.container.as_str(), Some(lock.as_str()))
            .query("comp", "lease")
            .header("x-ms-lease-action", action)
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
        let req = self
            .lease_request(lock, "acquire")
            .header("x-ms-lease-duration", duration.header())
            .header("x-ms-proposed-lease-id", id.to_string());
        // Steady state: one request. Only a 404 leads to creating what is missing (bounded).
        let mut creations = 0;
        let resp = loop {
            let resp = self.inner.client.send(&req, deadline).await?;
            if resp.status == 201 {
                break resp;
            }
            match (resp.status, resp.error().code.as_deref()) {
                (404, Some("ContainerNotFound")) if self.inner.create_container && creations < 3 => {
                    self.create_container(deadline).await?;
                }
                (404, Some("BlobNotFound")) if creations < 3 => self.create_blob(lock, deadline).await?,
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
            self.release_quietly(&lease, deadline).await;
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
            match self.stamp(lock, id, acquired_etag, stamp_deadline).await {
                Ok(token) => lease.fencing_token = token,
                Err(e) => {
                    // Do not keep a lease the caller will never hear of.
                    self.release_quietly(&lease, deadline).await;
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
            .lease_request(&lease.lock, "renew")
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
            .lease_request(&lease.lock, "change")
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
            .lease_request(&lease.lock, "release")
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
        let mut req = self.lease_request(&lock, "break");
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
        let resp = self.head(&lock, self.inner.client.default_deadline()).await?;
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
            Some(lock.as_str()),
        );
        let resp = self.inner.client.send(&req, deadline).await?;
        match resp.status {
            200 | 404 => Ok(resp),
            _ => Err(self.classify(lock, &resp, Op::Inspect)),
        }
    }

    /// [Create Container](https://learn.microsoft.com/en-us/rest/api/storageservices/create-container);
    /// "already exists" is success.
    async fn create_container(&self, deadline: Instant) -> Result<(), Error> {
        let req = RestRequest::new("create-container", Method::PUT, self.inner.container.as_str(), None)
            .query("restype", "container");
        let resp = self.inner.client.send(&req, deadline).await?;
        match resp.status {
            201 => {
                tracing::info!(container = %self.inner.container, "created container");
                Ok(())
            }
            409 if resp.error().is("ContainerAlreadyExists") => Ok(()),
            _ => Err(Error::Unexpected {
                service: resp.error(),
                detail: "creating the container".into(),
            }),
        }
    }

    /// [Put Blob](https://learn.microsoft.com/en-us/rest/api/storageservices/put-blob) of an empty
    /// lock blob with `If-None-Match: *`: never overwrites. A zero-length page blob when fencing
    /// (its sequence number is the token, seeded from the clock so that a deleted and recreated
    /// lock blob never hands out a token again), falling back to a block blob where page blobs
    /// are not supported.
    async fn create_blob(&self, lock: &LockName, deadline: Instant) -> Result<(), Error> {
        let mut page = self.inner.fencing;
        loop {
            let mut req = RestRequest::new(
                "create-blob",
                Method::PUT,
                self.inner.container.as_str(),
                Some(lock.as_str()),
            )
            .header("if-none-match", "*");
            req = if page {
                req.header("x-ms-blob-type", "PageBlob")
                    .header("x-ms-blob-content-length", "0")
                    .header("x-ms-blob-sequence-number", fence::clock_seed().to_string())
            } else {
                req.header("x-ms-blob-type", "BlockBlob")
            };
            let resp = self.inner.client.send(&req, deadline).await?;
            let err = resp.error();
            match resp.status {
                201 => {
                    if let (true, Some(etag)) = (page, resp.header("etag")) {
                        // Created by us: no content headers to keep; this ETag is the blob's
                        // until someone changes it.
                        let known = fence::Known {
                            etag: etag.to_string(),
                            content: Vec::new(),
                            token: None,
                        };
                        self.inner.pages.remember(lock, known);
                    }
                    tracing::debug!(lock = %lock, page, "created lock blob");
                    return Ok(());
                }
                // Someone else created it first (409 on a plain blob, 412 on a leased one on Azure).
                409 if err.is("BlobAlreadyExists") => return Ok(()),
                412 if err.is("LeaseIdMissing") || err.is("ConditionNotMet") => return Ok(()),
                404 => return Err(self.classify(lock, &resp, Op::Acquire)),
                400 | 409 if page => {
                    tracing::info!(lock = %lock, error = %err, "page blobs unsupported here: using a block blob");
                    page = false;
                }
                _ => {
                    return Err(Error::Unexpected {
                        service: err,
                        detail: "creating the lock blob".into(),
                    })
                }
            }
        }
    }

    /// After an acquire: bumps the fencing token and/or records the holder, under our lease.
    /// `acquired_etag` is the ETag the acquire answer carried.
    async fn stamp(
        &self,
        lock: &LockName,
        id: LeaseId,
        acquired_etag: Option<String>,
        deadline: Instant,
    ) -> Result<Option<u64>, Error> {
        let fencing = self.inner.fencing;
        if fencing && self.inner.holder.is_none() {
            // Fast path: a page blob unchanged since our own last write to it (same ETag), so
            // its content headers and sequence number are known.
            if let Some(known) = acquired_etag.and_then(|etag| self.inner.pages.get(lock, &etag)) {
                let next = fence::next_token(lock, known.token, fence::MAX_SEQUENCE_NUMBER)?;
                let resp = self.advance(lock, id, next, &known.content, deadline).await?;
                match resp.status {
                    200 => match fence::advanced(lock, next, &resp)? {
                        fence::Advanced::To(token, etag) => {
                            if let Some(etag) = etag {
                                let known = fence::Known {
                                    etag,
                                    token: Some(token),
                                    ..known
                                };
                                self.inner.pages.remember(lock, known);
                            }
                            return Ok(Some(token));
                        }
                        // Someone wrote a larger number than we proposed: it may have been handed
                        // out already. Forget what we knew and take the slow path.
                        fence::Advanced::Overtaken(_) => self.inner.pages.forget(lock),
                    },
                    // Not a page blob any more (deleted and recreated), or changed: forget it.
                    400 | 409 | 412 if !fence::is_lease_error(&resp) => self.inner.pages.forget(lock),
                    _ => {
                        self.inner.pages.forget(lock);
                        return Err(self.classify(lock, &resp, Op::Write));
                    }
                }
            }
        }
        for _ in 0..3 {
            let resp = self.head(lock, deadline).await?;
            if resp.status == 404 {
                return Err(Error::LeaseLost {
                    lock: lock.to_string(),
                    reason: LostReason::Deleted,
                    service: Some(resp.error()),
                });
            }
            let props = Props::from(&resp);
            let page = props.page;
            let mut metadata = props.metadata.clone();
            let mut etag = props.etag.clone();
            let mut token = None;
            if fencing && page {
                let content = fence::content_headers(&resp);
                let next = fence::next_token(lock, props.sequence_number, fence::MAX_SEQUENCE_NUMBER)?;
                let set = self.advance(lock, id, next, &content, deadline).await?;
                if set.status != 200 {
                    return Err(self.classify(lock, &set, Op::Write));
                }
                let (n, new_etag) = match fence::advanced(lock, next, &set)? {
                    fence::Advanced::To(n, etag) => (n, etag),
                    // A larger number than ours was there already (written after our read): it
                    // may have been handed out. Read again and propose past it.
                    fence::Advanced::Overtaken(_) => {
                        self.inner.pages.forget(lock);
                        continue;
                    }
                };
                token = Some(n);
                if let (Some(new_etag), None) = (&new_etag, &self.inner.holder) {
                    let known = fence::Known {
                        etag: new_etag.clone(),
                        content,
                        token: Some(n),
                    };
                    self.inner.pages.remember(lock, known);
                }
                etag = new_etag.or(etag);
            } else if fencing {
                let n = fence::next_counter(lock, metadata.get(META_FENCE).map(String::as_str))?;
                metadata.insert(META_FENCE.into(), n.to_string());
                token = Some(n);
            }
            if let Some(holder) = &self.inner.holder {
                for k in [META_OWNER, META_HOST, META_PID] {
                    metadata.remove(k);
                }
                let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
                if let Some(o) = &holder.owner {
                    metadata.insert(META_OWNER.into(), enc(o));
                }
                if let Some(h) = &holder.host {
                    metadata.insert(META_HOST.into(), enc(h));
                }
                if let Some(p) = holder.pid {
                    metadata.insert(META_PID.into(), p.to_string());
                }
                let since = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                metadata.insert(META_SINCE.into(), since.to_string());
            } else if page || !fencing {
                return Ok(token); // fenced by the sequence number alone
            }
            match self
                .set_metadata(lock, id, &metadata, etag.as_deref(), deadline)
                .await?
            {
                true => return Ok(token),
                false => continue, // ETag moved (our own retried write, most likely): read again.
            }
        }
        Err(Error::Unexpected {
            service: ServiceError {
                status: 412,
                code: Some("ConditionNotMet".into()),
                request_id: None,
                message: None,
            },
            detail: "the lock blob kept changing while recording the fencing token/holder".into(),
        })
    }

    /// [Set Blob Properties](https://learn.microsoft.com/en-us/rest/api/storageservices/set-blob-properties)
    /// with `x-ms-sequence-number-action: max` and `x-ms-blob-sequence-number: to`: one request,
    /// under our lease, idempotent when retried. This call sets every content header, clearing
    /// those it does not send: `content` carries the blob's current ones
    /// (`x-ms-blob-content-*` names) so that nothing is lost.
    async fn advance(
        &self,
        lock: &LockName,
        id: LeaseId,
        to: u64,
        content: &[(&'static str, String)],
        deadline: Instant,
    ) -> Result<RestResponse, Error> {
        let mut req = RestRequest::new("fence", Method::PUT, self.inner.container.as_str(), Some(lock.as_str()))
            .query("comp", "properties")
            .header("x-ms-lease-id", id.to_string())
            .header("x-ms-sequence-number-action", "max")
            .header("x-ms-blob-sequence-number", to.to_string());
        for (name, value) in content {
            req = req.header(name, value.clone());
        }
        self.inner.client.send(&req, deadline).await
    }

    /// [Set Blob Metadata](https://learn.microsoft.com/en-us/rest/api/storageservices/set-blob-metadata)
    /// under our lease and `If-Match`. `Ok(false)` when the ETag no longer matches.
    async fn set_metadata(
        &self,
        lock: &LockName,
        id: LeaseId,
        metadata: &BTreeMap<String, String>,
        etag: Option<&str>,
        deadline: Instant,
    ) -> Result<bool, Error> {
        let mut req = RestRequest::new(
            "set-metadata",
            Method::PUT,
            self.inner.container.as_str(),
            Some(lock.as_str()),
        )
        .query("comp", "metadata")
        .header("x-ms-lease-id", id.to_string());
        if let Some(etag) = etag {
            req = req.header("if-match", etag.to_string());
        }
        for (k, v) in metadata {
            // Props::from marks values it could not read faithfully (bytes that are not UTF-8)
            // with U+FFFD; writing them back would change them, so refuse instead.
            if v.contains(char::REPLACEMENT_CHARACTER) {
                return Err(Error::InvalidInput(InvalidInput::Option {
                    option: "lock blob metadata",
                    why: format!(
                        "the value of `{}` is not UTF-8 text, and recording the holder or fencing token \
                         rewrites all metadata: remove that item or use another lock blob",
                        crate::error::sanitize_text(k, 64)
                    ),
                }));
            }
            req = req.header_owned(&format!("x-ms-meta-{k}"), v.clone())?;
        }
        let resp = self.inner.client.send(&req, deadline).await?;
        match resp.status {
            200 => Ok(true),
            412 if resp.error().is("ConditionNotMet") => Ok(false),
            _ => Err(self.classify(lock, &resp, Op::Write)),
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

/// Blob properties this crate reads from a HEAD answer.
struct Props {
    page: bool,
    sequence_number: Option<u64>,
    metadata: BTreeMap<String, String>,
    etag: Option<String>,
}

impl From<&RestResponse> for Props {
    fn from(resp: &RestResponse) -> Self {
        // Every item is kept, because Set Blob Metadata replaces the whole set: a value that is not
        // visible ASCII (Azurite stores UTF-8 bytes) is kept as UTF-8 text and sent back as the
        // same bytes; bytes that are not UTF-8 become U+FFFD, which `set_metadata` refuses to
        // write. Names arrive lower-cased (HTTP header names are case-insensitive, and so are
        // metadata names); they are written back lower-case.
        let metadata = resp
            .headers
            .iter()
            .filter_map(|(n, v)| {
                let name = n.as_str().strip_prefix("x-ms-meta-")?;
                Some((name.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            })
            .collect();
        Self {
            page: resp.header("x-ms-blob-type") == Some("PageBlob"),
            sequence_number: resp.header("x-ms-blob-sequence-number").and_then(|v| v.parse().ok()),
            metadata,
            etag: resp.header("etag").map(str::to_string),
        }
    }
}

impl Props {
    fn fencing_token(&self) -> Option<u64> {
        if self.page {
            self.sequence_number
        } else {
            self.metadata.get(META_FENCE).and_then(|v| v.parse().ok())
        }
    }

    fn holder(&self) -> Option<HolderInfo> {
        let dec = |k: &str| {
            self.metadata
                .get(k)
                .map(|v| percent_decode_str(v).decode_utf8_lossy().into_owned())
        };
        let since = self
            .metadata
            .get(META_SINCE)
            .and_then(|v| v.parse::<u64>().ok())
            // Anyone who can write the blob's metadata sets this: never panic on it.
            .and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s)));
        let holder = Holder {
            owner: dec(META_OWNER),
            host: dec(META_HOST),
            pid: self.metadata.get(META_PID).and_then(|v| v.parse().ok()),
        };
        (holder != Holder::default() || since.is_some()).then_some(HolderInfo { holder, since })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_needs_both_clocks() {
        let now = Instant::now();
        let wall = SystemTime::now();
        let g = Grant::new(now, wall, LeaseDuration::seconds(15).unwrap());
        assert_eq!(g.deadline, Some(now + Duration::from_secs(15)));
        assert!(g.is_valid(now, wall, Duration::from_secs(2)));
        assert!(!g.is_valid(now + Duration::from_secs(14), wall, Duration::from_secs(2)));
        // The machine slept: the monotonic clock did not move, the wall clock did.
        assert!(!g.is_valid(
            now + Duration::from_secs(1),
            wall + Duration::from_secs(60),
            Duration::ZERO
        ));
        let infinite = Grant::new(now, wall, LeaseDuration::Infinite);
        assert!(infinite.is_valid(
            now + Duration::from_secs(3600),
            wall + Duration::from_secs(3600),
            Duration::ZERO
        ));
    }
}
