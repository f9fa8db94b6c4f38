//! Fencing tokens: numbers that never repeat or decrease for a lock name.
//!
//! Two counters, both written under the lease that the token is handed out with:
//! - the sequence number of a zero-length page blob, set in one request
//!   ([Set Blob Properties](https://learn.microsoft.com/en-us/rest/api/storageservices/set-blob-properties),
//!   `x-ms-sequence-number-action: max`);
//! - a metadata counter `azmutexfence` on other blobs, written with `If-Match`.
//!
//! Either way the next value is `max(previous + 1, clock_seed())` ([`next_token`]), the wall
//! clock in microseconds, so a lock blob deleted and recreated (by an operator, a lifecycle rule,
//! or a tool that starts the sequence number at 0) or a corrupt counter restarts above every
//! token its predecessor handed out. The answer is checked: the service must have stored at
//! least the proposed value.
//!
//! Either way the guarantee rests on the clocks of the machines that create lock blobs being
//! roughly right (within the age of the lock blob): a token is a count of microseconds since
//! 1970 plus the number of acquisitions since. At `u64::MAX` (or the service's own limit,
//! 2^63 - 1 for sequence numbers) acquiring fails with [`Error::FencingExhausted`]; it never
//! wraps.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::Error;
use crate::rest::RestResponse;
use crate::types::LockName;

/// The largest sequence number a page blob may carry
/// ([Put Blob](https://learn.microsoft.com/en-us/rest/api/storageservices/put-blob), `x-ms-blob-sequence-number`).
pub(crate) const MAX_SEQUENCE_NUMBER: u64 = (1 << 63) - 1;

/// How many page blobs a mutex remembers (their ETag and content headers) before forgetting all.
const PAGE_CACHE_LIMIT: usize = 1024;

/// The starting point of a new counter: microseconds since the Unix epoch on this machine's
/// clock (about 1.8 × 10^15 in 2026, far below the limit).
pub(crate) fn clock_seed() -> u64 {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    u64::try_from(micros)
        .unwrap_or(MAX_SEQUENCE_NUMBER)
        .min(MAX_SEQUENCE_NUMBER)
}

/// The next token after `previous` (none: a new counter): `max(previous + 1, clock_seed())`,
/// at most `limit`.
pub(crate) fn next_token(lock: &LockName, previous: Option<u64>, limit: u64) -> Result<u64, Error> {
    let exhausted = || Error::FencingExhausted { lock: lock.to_string() };
    let next = match previous {
        None => clock_seed(),
        Some(n) => n.checked_add(1).ok_or_else(exhausted)?.max(clock_seed()),
    };
    if next > limit {
        return Err(exhausted());
    }
    Ok(next)
}

/// The next metadata counter after `previous` (the `azmutexfence` value, if any). An unreadable
/// value restarts from the clock.
pub(crate) fn next_counter(lock: &LockName, previous: Option<&str>) -> Result<u64, Error> {
    let previous = match previous.map(|v| v.trim().parse::<u64>()) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            tracing::warn!(lock = %lock, "fencing counter unreadable; restarting it from the clock");
            None
        }
    };
    next_token(lock, previous, u64::MAX)
}

/// What a sequence-number update did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Advanced {
    /// Stored exactly the proposed token; the new ETag.
    To(u64, Option<String>),
    /// The blob already held a larger number (written by someone after we read it). That number
    /// may have been handed out to another holder, so it is never ours: read again.
    Overtaken(u64),
}

/// The outcome of a sequence-number update (`max`) that proposed `proposed`. The service must
/// have stored exactly that: less means a store that cannot hold the number (Azurite keeps it
/// as a JavaScript double, exact only up to 2^53), which would repeat tokens; more means
/// someone else's number, possibly already handed out.
pub(crate) fn advanced(lock: &LockName, proposed: u64, resp: &RestResponse) -> Result<Advanced, Error> {
    let n = resp
        .header("x-ms-blob-sequence-number")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| Error::Unexpected {
            service: resp.error(),
            detail: "no valid x-ms-blob-sequence-number in the answer".into(),
        })?;
    if n < proposed || n > MAX_SEQUENCE_NUMBER {
        tracing::warn!(lock = %lock, proposed, stored = n, "the service did not store the fencing token");
        return Err(Error::FencingExhausted { lock: lock.to_string() });
    }
    if n > proposed {
        tracing::info!(lock = %lock, proposed, stored = n, "fencing counter moved past our proposal; reading it again");
        return Ok(Advanced::Overtaken(n));
    }
    Ok(Advanced::To(n, resp.header("etag").map(str::to_string)))
}

/// Whether a failed write's error code is about the lease (ours lost), as opposed to the blob
/// (wrong type, changed).
pub(crate) fn is_lease_error(resp: &RestResponse) -> bool {
    resp.error().code.as_deref().is_some_and(|c| c.starts_with("Lease"))
}

/// The content headers of a HEAD answer, named as Set Blob Properties takes them.
pub(crate) fn content_headers(head: &RestResponse) -> ContentHeaders {
    [
        ("content-type", "x-ms-blob-content-type"),
        ("content-encoding", "x-ms-blob-content-encoding"),
        ("content-language", "x-ms-blob-content-language"),
        ("content-disposition", "x-ms-blob-content-disposition"),
        ("cache-control", "x-ms-blob-cache-control"),
        ("content-md5", "x-ms-blob-content-md5"),
    ]
    .into_iter()
    .filter_map(|(from, to)| {
        let v = head.header(from)?.trim();
        (!v.is_empty()).then(|| (to, v.to_string()))
    })
    .collect()
}

/// Page blobs whose state this mutex wrote last: their ETag then, their content headers and
/// the token written. An acquire answer with the same ETag proves nothing changed since, so the
/// next token can go out at once with those headers (one request instead of three). Bounded.
#[derive(Debug, Default)]
pub(crate) struct PageCache {
    known: Mutex<HashMap<LockName, Known>>,
}

/// What [`PageCache`] knows of one page blob.
#[derive(Debug, Clone)]
pub(crate) struct Known {
    /// The ETag after our last write.
    pub(crate) etag: String,
    /// Its content headers (sent back with every Set Blob Properties).
    pub(crate) content: ContentHeaders,
    /// The sequence number we wrote (`None`: not written by us yet, e.g. just created).
    pub(crate) token: Option<u64>,
}

/// Content headers named as Set Blob Properties takes them (`x-ms-blob-content-type`, …).
pub(crate) type ContentHeaders = Vec<(&'static str, String)>;

impl PageCache {
    /// What is known of `lock` if its ETag is still `etag`.
    pub(crate) fn get(&self, lock: &LockName, etag: &str) -> Option<Known> {
        let known = self.known.lock().ok()?;
        known.get(lock).filter(|k| k.etag == etag).cloned()
    }

    /// Remembers `lock` after our own write.
    pub(crate) fn remember(&self, lock: &LockName, entry: Known) {
        if let Ok(mut known) = self.known.lock() {
            if known.len() >= PAGE_CACHE_LIMIT && !known.contains_key(lock) {
                known.clear();
            }
            known.insert(lock.clone(), entry);
        }
    }

    /// Forgets `lock` (after an answer showed the cache wrong).
    pub(crate) fn forget(&self, lock: &LockName) {
        if let Ok(mut known) = self.known.lock() {
            known.remove(lock);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.known.lock().map(|k| k.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(n: usize) -> LockName {
        LockName::new(format!("lock-{n}")).unwrap()
    }

    #[test]
    fn counters_never_repeat_or_wrap() {
        let l = lock(0);
        let seed = clock_seed();
        // Missing or corrupt: restart from the clock, above any earlier counter of this era.
        assert!(next_counter(&l, None).unwrap() >= seed);
        assert!(next_counter(&l, Some("garbage")).unwrap() >= seed);
        assert!(next_counter(&l, Some("-1")).unwrap() >= seed);
        // An old small counter jumps to the clock; a counter ahead of the clock goes on by one.
        assert!(next_counter(&l, Some("5")).unwrap() >= seed);
        let ahead = seed + 1_000_000_000;
        assert_eq!(next_counter(&l, Some(&ahead.to_string())).unwrap(), ahead + 1);
        // The end of the range is an error, never a wrap.
        let max = u64::MAX.to_string();
        assert!(matches!(
            next_counter(&l, Some(&max)),
            Err(Error::FencingExhausted { .. })
        ));
        assert_eq!(next_counter(&l, Some(&(u64::MAX - 1).to_string())).unwrap(), u64::MAX);
        assert!(clock_seed() <= MAX_SEQUENCE_NUMBER);
        // Page blobs: the service's limit is the limit.
        assert!(matches!(
            next_token(&l, Some(MAX_SEQUENCE_NUMBER), MAX_SEQUENCE_NUMBER),
            Err(Error::FencingExhausted { .. })
        ));
        assert_eq!(
            next_token(&l, Some(MAX_SEQUENCE_NUMBER - 1), MAX_SEQUENCE_NUMBER).unwrap(),
            MAX_SEQUENCE_NUMBER
        );
        // A page blob recreated by someone else starts at 0 or 1: the clock takes over.
        assert!(next_token(&l, Some(1), MAX_SEQUENCE_NUMBER).unwrap() >= seed);
    }

    fn answer(sequence_number: &str) -> RestResponse {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("x-ms-blob-sequence-number", sequence_number.parse().unwrap());
        headers.insert("etag", "\"e\"".parse().unwrap());
        RestResponse {
            status: 200,
            headers,
            sent_at: std::time::Instant::now(),
            sent_at_wall: SystemTime::now(),
            attempts: 1,
            earlier_outcome_unknown: false,
            body: Vec::new(),
        }
    }

    /// Only the proposed number is ours: a larger one stored by someone else may have been
    /// handed out already (main 5136815 returned it as our token).
    #[test]
    fn only_the_proposed_sequence_number_is_ours() {
        let l = lock(0);
        assert_eq!(
            advanced(&l, 1000, &answer("1000")).unwrap(),
            Advanced::To(1000, Some("\"e\"".into()))
        );
        assert_eq!(advanced(&l, 1000, &answer("1001")).unwrap(), Advanced::Overtaken(1001));
        assert!(matches!(
            advanced(&l, 1000, &answer("999")),
            Err(Error::FencingExhausted { .. })
        ));
        let beyond = (MAX_SEQUENCE_NUMBER + 1).to_string();
        assert!(matches!(
            advanced(&l, 1000, &answer(&beyond)),
            Err(Error::FencingExhausted { .. })
        ));
        assert!(matches!(
            advanced(&l, 1000, &answer("x")),
            Err(Error::Unexpected { .. })
        ));
    }

    #[test]
    fn page_cache_is_bounded_and_checks_the_etag() {
        let c = PageCache::default();
        let known = |etag: &str| Known {
            etag: etag.into(),
            content: vec![("x-ms-blob-content-type", "text/plain".into())],
            token: Some(7),
        };
        c.remember(&lock(0), known("\"e1\""));
        assert!(c.get(&lock(0), "\"e2\"").is_none());
        assert_eq!(c.get(&lock(0), "\"e1\"").unwrap().token, Some(7));
        for n in 0..3 * PAGE_CACHE_LIMIT {
            c.remember(&lock(n), known("e"));
            assert!(c.len() <= PAGE_CACHE_LIMIT);
        }
        c.forget(&lock(3 * PAGE_CACHE_LIMIT - 1));
        assert!(c.get(&lock(3 * PAGE_CACHE_LIMIT - 1), "e").is_none());
    }
}
