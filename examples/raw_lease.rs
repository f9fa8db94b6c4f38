//! The thin layer: one Lease Blob request per call (acquire, renew, change, release, break) and
//! one Get Blob Properties for `inspect`.
//!
//!     cargo run --example raw_lease      # against Azurite on 127.0.0.1:10000

use std::time::Instant;

use azmutex::{AzureMutex, BreakPeriod, LeaseDuration, LeaseId, StorageConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = StorageConfig::from_env()?.unwrap_or_else(StorageConfig::development);
    let mutex = AzureMutex::builder(config, azmutex::DEFAULT_CONTAINER).build()?;

    let mut lease = mutex.acquire("example-raw", LeaseDuration::seconds(15)?).await?;
    let left = |d: Option<Instant>| d.map(|d| d.saturating_duration_since(Instant::now()));
    println!("acquired {}: valid for {:?} more", lease.id(), left(lease.deadline()));
    let grant = mutex.renew(&mut lease).await?;
    println!("renewed: valid for {:?} more", left(grant.deadline));
    mutex.change(&mut lease, LeaseId::new_random()).await?;
    println!("changed the lease id to {}", lease.id());
    let info = mutex.inspect("example-raw").await?;
    println!("state {:?}, locked {}", info.state, info.locked);
    mutex.release(&lease).await?;
    println!("released");

    // Breaking needs no lease id: an operator's tool for a stuck lock.
    let lease = mutex.acquire("example-raw", LeaseDuration::Infinite).await?;
    let left = mutex.break_lease("example-raw", Some(BreakPeriod::seconds(0)?)).await?;
    println!("broke lease {}: free in {left:?}", lease.id());
    Ok(())
}
