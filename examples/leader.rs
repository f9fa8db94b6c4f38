//! Leader election: campaign for a lock, lead while it is held, step down the moment it may be
//! lost, and campaign again.
//!
//!     cargo run --example leader            # against Azurite on 127.0.0.1:10000
//!     AZURE_STORAGE_CONNECTION_STRING=... cargo run --example leader
//!
//! Start several; exactly one leads at a time. Stop the leader (Ctrl-C) and another takes over
//! within about a second; kill it with SIGKILL and another takes over when its lease expires.

use std::time::Duration;

use azmutex::{AzureMutex, Holder, LeaseDuration, Locker, LockerOptions, StorageConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = StorageConfig::from_env()?.unwrap_or_else(StorageConfig::development);
    let me = format!("candidate-{}", std::process::id());
    let mutex = AzureMutex::builder(config, azmutex::DEFAULT_CONTAINER)
        .fencing(true)
        .holder(Holder {
            owner: Some(me.clone()),
            host: None,
            pid: Some(std::process::id()),
        })
        .build()?;
    let options = LockerOptions {
        lease: LeaseDuration::seconds(15)?,
        ..LockerOptions::default()
    };
    let election = Locker::with_options(mutex, "leader", options)?;

    loop {
        // Campaign: wait until we are elected (Ctrl-C ends the program).
        let mut term = tokio::select! {
            guard = election.lock() => guard?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let token = term.fencing_token().unwrap_or_default();
        println!("{me}: elected (term {token})");

        // Lead while the lock is held. `lost()` fires at once on a definite loss and, with no
        // confirmed renewal, before the lease could have expired on the server.
        let outcome = tokio::select! {
            reason = term.lost() => Some(reason),
            _ = lead(&me, token) => None,
            _ = tokio::signal::ctrl_c() => {
                println!("{me}: stepping down");
                term.release().await?;
                return Ok(());
            }
        };
        if let Some(reason) = outcome {
            // Step down at once: stop all leader work, then campaign again.
            println!("{me}: lost leadership ({reason}); campaigning again");
        }
        term.release().await?;
    }
}

/// The leader's work. Writes to shared resources carry the fencing token, so a deposed leader's
/// late writes can be refused by the resource.
async fn lead(me: &str, token: u64) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        println!("{me}: leading (term {token})");
    }
}
