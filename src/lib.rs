//! # azmutex
//!
//! Distributed locks on [Azure Blob Storage leases](https://learn.microsoft.com/en-us/rest/api/storageservices/lease-blob):
//! a small REST-level client with its own SharedKey signer and no Azure SDK.
//!
//! Two layers:
//! - [`AzureMutex`]: one request per lease operation (acquire, renew, change, release, break,
//!   inspect) on named locks in one container, with optional fencing tokens and holder records.
//! - [`Locker`]: waiting acquisition, background renewal and a lost-lock signal on the
//!   [`LockGuard`].
//!
//! **Safety.** A lease's local validity is counted from when its acquire/renew request was
//! *sent*, never from when the answer came: the server started its clock no earlier. A guard
//! counts the lock as lost at that deadline minus a safety margin unless a renewal was
//! confirmed, and tells you through [`LockGuard::lost`].
//!
//! ```no_run
//! use azmutex::{AzureMutex, Locker, StorageConfig};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // `UseDevelopmentStorage=true` (Azurite) unless AZURE_STORAGE_* variables say otherwise.
//! let config = StorageConfig::from_env()?.unwrap_or_else(StorageConfig::development);
//! let mutex = AzureMutex::builder(config, azmutex::DEFAULT_CONTAINER).fencing(true).build()?;
//! let locker = Locker::new(mutex, "nightly-report")?;
//!
//! let mut guard = locker.lock().await?;
//! println!("fencing token {:?}", guard.fencing_token());
//! tokio::select! {
//!     reason = guard.lost() => eprintln!("lock lost: {reason}"),
//!     _ = async { /* the critical section */ } => {}
//! }
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! ## Leader election
//!
//! [`Election`] campaigns for a name and hands out a [`Leadership`]: a [`LockGuard`] with the
//! term's epoch (the fencing token), [`Leadership::proclaim`] and [`Leadership::resign`].
//! [`Election::leader`] and [`Election::observe`] say who leads (`None` when nobody does).
//! See the [`election`] module and `examples/leader.rs`.
//!
//! ## Semaphores
//!
//! [`Semaphore`]: at most N holders at once. Each of the N slots is a lock blob; a [`Permit`]
//! is a [`LockGuard`] on one of them plus the slot number and the slot's own fencing token.
//! One [List Blobs](https://learn.microsoft.com/en-us/rest/api/storageservices/list-blobs)
//! request per attempt finds the free slots; waiters space their polls by their number.
//!
//! ## Fencing tokens
//!
//! With [`AzureMutexBuilder::fencing`], every acquire returns a number strictly greater than
//! any number handed to an earlier holder of that lock. On lock blobs this crate creates
//! without a holder record it is the sequence number of a zero-length page blob, incremented
//! under the lease
//! ([Set Blob Properties](https://learn.microsoft.com/en-us/rest/api/storageservices/set-blob-properties),
//! one request). On a block blob (created when the mutex also records its holder, so that token
//! and record are one write; or existing; or on accounts without page blobs) it is a metadata
//! counter `azmutexfence` written under the lease with `If-Match` (two requests). A protected
//! resource should store the highest token it accepted and refuse writes carrying a lower one.
//!
//! ## Cargo features
//!
//! - `cli`: the `azmutex` command-line tool (`cargo install azmutex --features cli`). It builds
//!   the binary only and adds nothing to this library's API; off by default, so library users
//!   do not compile clap and the CLI's other dependencies.
//! - `entra`: Entra ID token credentials (managed identity, workload identity, client secret,
//!   Azure CLI); on by default.
//! - `metrics`: counters, gauges and histograms through the [`metrics`](https://docs.rs/metrics)
//!   facade ([`telemetry`] lists them); off by default, and without it nothing is compiled in.
//!
//! ## Many locks in one process
//!
//! Clones of an [`AzureMutex`] share one connection pool and one schedule: at most
//! [`ClientOptions::max_connections`] requests in flight, renewals and releases served before
//! anything else, acquisitions paced at [`ClientOptions::acquire_rate`] a second; among several
//! leases, first renewals are spread over the renewal interval. A process can hold 10,000 leases
//! this way (see the README's capacity table for what they cost an account).
//!
//! Items that need a feature say so in these docs.

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod auth;
pub mod config;
pub mod election;
pub mod error;
pub mod locker;
pub mod mutex;
mod redact;
pub mod rest;
#[doc(hidden)]
pub mod scrub;
pub mod semaphore;
pub mod telemetry;
pub mod transport;
pub mod types;

#[cfg(feature = "entra")]
#[cfg_attr(docsrs, doc(cfg(feature = "entra")))]
pub use auth::entra::{EntraCredential, EntraError, EntraKind};
pub use auth::{
    AccessToken, AccountKey, Credential, SasToken, TokenError, TokenFuture, TokenProvider, TransientTokenError,
};
pub use config::{AuthChoice, ConfigError, StorageConfig};
pub use election::{Election, Leader, Leadership, Observer};
pub use error::{Error, InvalidInput, LostReason, ServiceError, TransientCause};
pub use locker::{LeaseInfo, LockError, LockGuard, LockStatus, Locker, LockerOptions};
pub use mutex::{
    AzureMutex, AzureMutexBuilder, Grant, Holder, HolderInfo, Lease, LeaseKind, LeaseState, ListedBlob, Listing,
    LockInfo, Released,
};
pub use rest::{BlobClient, ClientOptions, Proxies, ProxyConfig, RetryPolicy};
pub use semaphore::{Permit, Semaphore, SemaphoreError, SemaphoreOptions, SemaphoreStatus, SlotStatus};
pub use types::{BreakPeriod, ContainerName, LeaseDuration, LeaseId, LockName};

/// The container the `azmutex` CLI uses unless told otherwise (`--container`). Use it in
/// programs too, so that `azmutex status NAME` finds the locks they take.
pub const DEFAULT_CONTAINER: &str = "azmutex";

/// The README's examples, compiled as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
