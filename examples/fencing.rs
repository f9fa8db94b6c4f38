//! Fencing tokens: each holder gets a number larger than every earlier holder's, and a resource
//! that remembers the largest it accepted refuses writes from a holder that lost the lock
//! without knowing it (paused, partitioned).
//!
//!     cargo run --example fencing        # against Azurite on 127.0.0.1:10000

use std::sync::atomic::{AtomicU64, Ordering};

use azmutex::{AzureMutex, Locker, StorageConfig};

/// The protected resource: accepts a write only with a token at least the largest seen.
struct Resource {
    highest: AtomicU64,
}

impl Resource {
    fn write(&self, token: u64, what: &str) -> bool {
        let seen = self.highest.fetch_max(token, Ordering::SeqCst);
        let accepted = token >= seen;
        println!(
            "  write {what:?} with token {token}: {}",
            if accepted { "accepted" } else { "REFUSED" }
        );
        accepted
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = StorageConfig::from_env()?.unwrap_or_else(StorageConfig::development);
    let mutex = AzureMutex::builder(config, azmutex::DEFAULT_CONTAINER)
        .fencing(true)
        .build()?;
    let locker = Locker::new(mutex, "example-fencing")?;
    let resource = Resource {
        highest: AtomicU64::new(0),
    };

    let mut first = locker.lock().await?;
    let old_token = first.fencing_token().expect("fencing is on");
    resource.write(old_token, "first holder");
    first.release().await?;

    let mut second = locker.lock().await?;
    let new_token = second.fencing_token().expect("fencing is on");
    resource.write(new_token, "second holder");
    // The first holder, had it been paused and come back, would still carry its old token:
    assert!(!resource.write(old_token, "first holder, late"));
    second.release().await?;
    Ok(())
}
