//! Leader election with `Election`: campaign, lead while the term holds, step down the moment
//! it may be lost, campaign again; Ctrl-C resigns so that a standby takes over at once.
//!
//!     cargo run --example leader            # against Azurite on 127.0.0.1:10000
//!     AZURE_STORAGE_CONNECTION_STRING=... cargo run --example leader
//!
//! Start several; exactly one leads at a time, and every one prints who leads (an observer).
//! Stop the leader (Ctrl-C) and another takes over within about a second; kill it with SIGKILL
//! and another takes over when its lease expires (15 s here; on Azure up to a minute more).

use std::time::Duration;

use azmutex::{AzureMutex, Election, Holder, LeaseDuration, LockerOptions, StorageConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = StorageConfig::from_env()?.unwrap_or_else(StorageConfig::development);
    let me = format!("candidate-{}", std::process::id());
    let mutex = AzureMutex::builder(config, azmutex::DEFAULT_CONTAINER)
        .fencing(true) // the epochs
        .holder(Holder::current())
        .build()?;
    let options = LockerOptions {
        lease: LeaseDuration::seconds(15)?,
        ..LockerOptions::default()
    };
    let election = Election::with_options(mutex, "leader", options)?;

    // Who leads, at every change (one request a second, shared by observers of the name).
    let mut observer = election.observe();
    let watcher = me.clone();
    tokio::spawn(async move {
        while let Ok(leader) = observer.next().await {
            match leader {
                Some(l) => println!("{watcher}: sees leader {} (epoch {})", l.value, l.epoch),
                None => println!("{watcher}: sees no leader"),
            }
        }
    });

    loop {
        // Campaign until elected; Ctrl-C cancels and leaves nothing behind.
        let mut term = match election
            .campaign_until(format!("{me} at {}", std::process::id()), async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
        {
            Ok(term) => term,
            Err(azmutex::LockError::Cancelled { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let epoch = term.epoch();
        println!("{me}: elected (epoch {epoch})");

        // Lead while the term holds. `lost()` fires at once on a definite loss and, with no
        // confirmed renewal, before the lease could have ended on the server.
        tokio::select! {
            reason = term.lost() => {
                // Step down at once: all leader work has stopped; campaign again.
                println!("{me}: lost leadership ({reason}); campaigning again");
            }
            _ = lead(&me, epoch) => {}
            _ = tokio::signal::ctrl_c() => {
                println!("{me}: resigning");
                term.resign().await?;
                return Ok(());
            }
        }
    }
}

/// The leader's work. Writes to shared resources carry the epoch, so that a deposed leader's
/// late writes can be refused by the resource.
async fn lead(me: &str, epoch: u64) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        println!("{me}: leading (epoch {epoch})");
    }
}
