//! Semaphore test helpers: clients with quick polling, the server's own count of held slots
//! (a raw List Blobs request, parsed here, not by the code under test), and a protected
//! resource that counts its concurrent users.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use azmutex::{LeaseDuration, LockerOptions, Semaphore, SemaphoreOptions};

/// Options for tests: `lease` seconds, quick polling.
pub fn options(lease: u64) -> SemaphoreOptions {
    SemaphoreOptions {
        locker: LockerOptions {
            lease: LeaseDuration::seconds(lease).unwrap(),
            report_holder: false,
            ..LockerOptions::default()
        },
        poll_min: Duration::from_millis(20),
        poll_max: Duration::from_secs(2),
        polls_per_second: 20,
        ..SemaphoreOptions::default()
    }
}

/// A semaphore client of its own (its own mutex and connection pool).
pub fn client(container: &str, name: &str, slots: u32) -> Semaphore {
    Semaphore::with_options(super::fenced(container), name, slots, options(15)).unwrap()
}

/// The server's view: how many of `name`'s slot blobs are leased (or breaking) now, from a raw
/// List Blobs answer.
pub async fn held_on_server(container: &str, name: &str) -> usize {
    let req = azmutex::rest::RestRequest::new("list", reqwest::Method::GET, container, None)
        .query("restype", "container")
        .query("comp", "list")
        .query("prefix", format!("{name}/slot-"))
        .max_body(16 * 1024 * 1024);
    let r = super::send(req).await;
    if r.status == 404 {
        return 0;
    }
    assert_eq!(r.status, 200, "{:?}", r.error());
    let body = String::from_utf8_lossy(r.body()).into_owned();
    body.split("<Blob>")
        .skip(1)
        .filter(|b| b.contains("<LeaseStatus>locked</LeaseStatus>"))
        .count()
}

/// Names of the blobs under `name/` whose names contain `part`.
pub async fn blobs_named(container: &str, name: &str, part: &str) -> Vec<String> {
    let req = azmutex::rest::RestRequest::new("list", reqwest::Method::GET, container, None)
        .query("restype", "container")
        .query("comp", "list")
        .query("prefix", format!("{name}/"))
        .max_body(16 * 1024 * 1024);
    let r = super::send(req).await;
    let body = String::from_utf8_lossy(r.body()).into_owned();
    body.split("<Name>")
        .skip(1)
        .filter_map(|b| b.split("</Name>").next())
        .filter(|n| n.contains(part))
        .map(str::to_string)
        .collect()
}

/// A resource that at most `limit` users may use at once: it counts them and remembers the
/// most it ever had, and the fencing tokens accepted per slot.
#[derive(Default)]
pub struct Resource {
    now: AtomicUsize,
    most: AtomicUsize,
    tokens: Mutex<std::collections::HashMap<u32, u64>>,
    pub rejected: AtomicUsize,
}

impl Resource {
    /// Enters with `slot`'s `token`: refused (false) if the slot already accepted a token at
    /// least as large (a repeated or stale token).
    pub fn enter(&self, slot: u32, token: u64) -> bool {
        {
            let mut tokens = self.tokens.lock().unwrap();
            let last = tokens.entry(slot).or_insert(0);
            if token <= *last {
                self.rejected.fetch_add(1, Ordering::SeqCst);
                return false;
            }
            *last = token;
        }
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(n, Ordering::SeqCst);
        true
    }

    pub fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }

    pub fn most(&self) -> usize {
        self.most.load(Ordering::SeqCst)
    }
}
