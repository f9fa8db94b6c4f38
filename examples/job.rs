//! A job under a lock: wait for the lock, run the work, stop it the moment the lock may be lost,
//! release.
//!
//!     cargo run --example job            # against Azurite on 127.0.0.1:10000
//!     AZURE_STORAGE_CONNECTION_STRING=... cargo run --example job
//!
//! Start two at once: the second waits for the first.

use std::time::Duration;

use azmutex::{AzureMutex, Locker, StorageConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = StorageConfig::from_env()?.unwrap_or_else(StorageConfig::development);
    let mutex = AzureMutex::builder(config, azmutex::DEFAULT_CONTAINER).build()?;
    let locker = Locker::new(mutex, "example-job")?;

    let mut guard = locker.lock_timeout(Duration::from_secs(60)).await?;
    println!("pid {} holds the lock; working for 3 s", std::process::id());
    let work = async {
        for step in 1..=3 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            println!("  step {step}");
        }
    };
    match guard.run(work).await {
        Ok(()) => {
            guard.release().await?;
            println!("done; lock released");
        }
        Err(reason) => println!("lock lost ({reason}); work stopped"),
    }
    Ok(())
}
