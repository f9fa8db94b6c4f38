//! Lock names and blob names: the same, or (with [`AzureMutexBuilder::spread_names`]) the blob
//! name behind a short hash prefix that spreads lock names over the service's partitions.
//!
//! Blob storage partitions a container's blobs by name *ranges*: names that sort together
//! (`job-00001`, `job-00002`, …) are served by one partition server until the service splits
//! the range, which it does only under sustained load. A process that acquires or renews
//! thousands of such locks at once sends all of it to one partition. With the prefix, the blob of
//! `job-00001` is `5fc-job-00001`, that of `job-00009` is `3a6-job-00009`: the load is spread
//! from the first request. See
//! [Performance and scalability checklist for Blob storage](https://learn.microsoft.com/en-us/azure/storage/blobs/storage-performance-checklist#partitioning).
//!
//! The prefix is three hex digits of the SHA-256 of the name's first `/`-separated segment, so
//! that the blobs of one semaphore (`db/slot-0001`, `db/semaphore`) share it and can still be
//! listed together.

use std::borrow::Cow;

use sha2::{Digest, Sha256};

use super::*;

/// The length of the prefix: three hex digits and `-`.
pub(crate) const SPREAD_PREFIX_LEN: usize = 4;

/// The prefix of `name`'s blob when names are spread: three hex digits and `-`.
pub(crate) fn spread_prefix(name: &str) -> String {
    let first = name.split('/').next().unwrap_or(name);
    let h = Sha256::digest(first.as_bytes());
    format!("{:02x}{:x}-", h[0], h[1] >> 4)
}

impl AzureMutex {
    /// The blob that holds `lock`'s lease. [`InvalidInput::LockName`] when the prefix would
    /// make the blob name longer than the service allows (1,024 characters).
    pub(crate) fn blob<'a>(&self, lock: &'a LockName) -> Result<Cow<'a, str>, InvalidInput> {
        if !self.inner.spread_names {
            return Ok(Cow::Borrowed(lock.as_str()));
        }
        if lock.as_str().chars().count() + SPREAD_PREFIX_LEN > 1024 {
            return Err(InvalidInput::LockName {
                name: crate::error::sanitize_text(lock.as_str(), 100),
                why: format!(
                    "with spread names (a {SPREAD_PREFIX_LEN}-character prefix) it is longer than the 1024 characters of a blob name"
                ),
            });
        }
        Ok(Cow::Owned(format!("{}{}", spread_prefix(lock.as_str()), lock.as_str())))
    }

    /// The lock name behind a listed blob name: the same name, or with spread names the name
    /// after a prefix that matches it (`None`: a blob that is not one of this mutex's locks).
    pub(crate) fn lock_of_blob<'a>(&self, blob: &'a str) -> Option<&'a str> {
        if !self.inner.spread_names {
            return Some(blob);
        }
        let name = blob.get(SPREAD_PREFIX_LEN..)?;
        (!name.is_empty() && blob.get(..SPREAD_PREFIX_LEN)? == spread_prefix(name)).then_some(name)
    }

    /// The listing prefix for lock names starting with `prefix`: itself, or with spread names
    /// the blob prefix when `prefix` names a whole first segment (it contains `/`); otherwise
    /// `None`: list everything and filter by lock name.
    pub(crate) fn blob_prefix(&self, prefix: &str) -> Option<String> {
        if !self.inner.spread_names {
            return Some(prefix.to_string());
        }
        prefix
            .contains('/')
            .then(|| format!("{}{prefix}", spread_prefix(prefix)))
    }

    /// Whether lock names are spread over partitions (see [`AzureMutexBuilder::spread_names`]).
    pub fn spreads_names(&self) -> bool {
        self.inner.spread_names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StorageConfig;

    fn mutex(spread: bool) -> AzureMutex {
        AzureMutex::builder(StorageConfig::development(), "unit")
            .spread_names(spread)
            .build()
            .expect("no request is sent")
    }

    #[test]
    fn names_are_spread_only_when_asked() {
        let lock = LockName::new("job-00001").unwrap();
        assert_eq!(mutex(false).blob(&lock).unwrap(), "job-00001");
        let spread = mutex(true);
        let blob = spread.blob(&lock).unwrap().into_owned();
        assert_eq!(blob.len(), "job-00001".len() + SPREAD_PREFIX_LEN);
        assert!(blob.ends_with("-job-00001"));
        assert!(blob[..3].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(spread.lock_of_blob(&blob), Some("job-00001"));
        // Stable: the same name, the same blob, in every process and version.
        assert_eq!(spread_prefix("job-00001"), spread_prefix("job-00001"));
        assert_eq!(spread_prefix("db/slot-0001"), spread_prefix("db"));
        assert_eq!(spread_prefix("db/semaphore"), spread_prefix("db"));
    }

    /// Vectors from Python: `hashlib.sha256(b"job-00001").hexdigest()[:3]`.
    #[test]
    fn prefix_vectors() {
        for (name, hex) in [
            ("job-00001", "5fc"),
            ("job-00002", "5ea"),
            ("job-00009", "3a6"),
            ("db", "7bd"),
        ] {
            assert_eq!(spread_prefix(name), format!("{hex}-"), "{name}");
        }
    }

    #[test]
    fn spread_names_scatter_neighbours() {
        let prefixes: std::collections::BTreeSet<String> =
            (0..1000).map(|i| spread_prefix(&format!("job-{i:05}"))).collect();
        // 1,000 neighbouring names over 4,096 prefixes: nearly all different.
        assert!(prefixes.len() > 850, "{}", prefixes.len());
    }

    #[test]
    fn foreign_blobs_are_not_locks() {
        let spread = mutex(true);
        assert_eq!(spread.lock_of_blob("job-00001"), None);
        assert_eq!(spread.lock_of_blob("000-job-00001"), None);
        assert_eq!(spread.lock_of_blob("abc-"), None);
        assert_eq!(spread.lock_of_blob("ab"), None);
        assert_eq!(spread.lock_of_blob("é"), None);
    }

    #[test]
    fn too_long_with_the_prefix_is_refused_before_the_network() {
        let lock = LockName::new("a".repeat(1022)).unwrap();
        assert!(mutex(false).blob(&lock).is_ok());
        assert!(matches!(mutex(true).blob(&lock), Err(InvalidInput::LockName { .. })));
    }

    #[test]
    fn listing_prefixes() {
        assert_eq!(mutex(false).blob_prefix("job-").as_deref(), Some("job-"));
        assert_eq!(mutex(true).blob_prefix("job-"), None);
        assert_eq!(
            mutex(true).blob_prefix("db/").unwrap(),
            format!("{}db/", spread_prefix("db"))
        );
    }
}
