//! Validated values: lock and container names, lease durations, break periods and lease ids.
//! Each is checked when it is made, so bad input is refused before any request is sent.

use std::fmt;
use std::time::Duration;

use crate::error::InvalidInput;

/// The most path segments a blob name may have ("The number of path segments comprising the
/// blob name cannot exceed 254", [Blob names](https://learn.microsoft.com/en-us/rest/api/storageservices/naming-and-referencing-containers--blobs--and-metadata#blob-names)).
const MAX_SEGMENTS: usize = 254;

/// A lock's name: the name of its blob inside the container.
///
/// Rules checked (a subset of [Naming and referencing containers, blobs, and
/// metadata](https://learn.microsoft.com/en-us/rest/api/storageservices/naming-and-referencing-containers--blobs--and-metadata#blob-names)
/// that keeps names portable): 1–1024 characters, no control characters or `\`, `/` only
/// between non-empty segments, at most 254 segments, no `.`/`..` segments, not ending in `.`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockName(String);

impl LockName {
    /// Checks a lock name.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidInput> {
        let name = name.into();
        let bad = |why: &str| InvalidInput::LockName {
            name: crate::error::sanitize_text(&name, 100),
            why: why.to_string(),
        };
        if name.is_empty() {
            return Err(bad("it is empty"));
        }
        if name.chars().count() > 1024 {
            return Err(bad("it is longer than 1024 characters"));
        }
        if name.chars().any(|c| c.is_control() || c == '\\') {
            return Err(bad("it contains a control character or `\\`"));
        }
        if name.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") {
            return Err(bad(
                "it has an empty, `.` or `..` path segment (leading, trailing or double `/`)",
            ));
        }
        if name.ends_with('.') {
            return Err(bad("it ends with `.`"));
        }
        if name.split('/').count() > MAX_SEGMENTS {
            return Err(bad("it has more than 254 `/`-separated segments"));
        }
        Ok(Self(name))
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl TryFrom<&str> for LockName {
    type Error = InvalidInput;
    fn try_from(s: &str) -> Result<Self, InvalidInput> {
        Self::new(s)
    }
}

impl TryFrom<String> for LockName {
    type Error = InvalidInput;
    fn try_from(s: String) -> Result<Self, InvalidInput> {
        Self::new(s)
    }
}

impl TryFrom<&String> for LockName {
    type Error = InvalidInput;
    fn try_from(s: &String) -> Result<Self, InvalidInput> {
        Self::new(s.as_str())
    }
}

impl TryFrom<&LockName> for LockName {
    type Error = InvalidInput;
    fn try_from(s: &LockName) -> Result<Self, InvalidInput> {
        Ok(s.clone())
    }
}

/// A container name: 3–63 characters, lower-case letters, digits and single hyphens, starting
/// and ending with a letter or digit.
/// See [Container names](https://learn.microsoft.com/en-us/rest/api/storageservices/naming-and-referencing-containers--blobs--and-metadata#container-names).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ContainerName(String);

impl ContainerName {
    /// Checks a container name.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidInput> {
        let name = name.into();
        let b = name.as_bytes();
        let ok = (3..=63).contains(&b.len())
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
            && !name.contains("--");
        if ok {
            Ok(Self(name))
        } else {
            Err(InvalidInput::ContainerName { name })
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ContainerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A lease duration: 15–60 seconds, or infinite. The only values the service accepts
/// ([Lease Blob](https://learn.microsoft.com/en-us/rest/api/storageservices/lease-blob#request-headers)).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum LeaseDuration {
    /// A lease that expires unless renewed; seconds in 15..=60.
    Fixed(FixedSeconds),
    /// A lease that never expires (until released or broken).
    Infinite,
}

/// Seconds of a fixed lease, always in 15..=60.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct FixedSeconds(u8);

impl FixedSeconds {
    /// The seconds.
    pub fn get(self) -> u64 {
        u64::from(self.0)
    }
}

impl LeaseDuration {
    /// The shortest lease the service grants.
    pub const MIN: LeaseDuration = LeaseDuration::Fixed(FixedSeconds(15));
    /// The longest fixed lease the service grants.
    pub const MAX: LeaseDuration = LeaseDuration::Fixed(FixedSeconds(60));

    /// A fixed lease of `secs` seconds (15..=60).
    pub fn seconds(secs: u64) -> Result<Self, InvalidInput> {
        if (15..=60).contains(&secs) {
            Ok(Self::Fixed(FixedSeconds(secs as u8)))
        } else {
            Err(InvalidInput::LeaseDuration { seconds: secs })
        }
    }

    /// The duration, or `None` for an infinite lease.
    pub fn as_duration(self) -> Option<Duration> {
        match self {
            Self::Fixed(s) => Some(Duration::from_secs(s.get())),
            Self::Infinite => None,
        }
    }

    /// The `x-ms-lease-duration` header value.
    pub(crate) fn header(self) -> String {
        match self {
            Self::Fixed(s) => s.get().to_string(),
            Self::Infinite => "-1".into(),
        }
    }
}

impl fmt::Display for LeaseDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(s) => write!(f, "{}s", s.get()),
            Self::Infinite => f.write_str("infinite"),
        }
    }
}

/// How long a broken lease keeps locking the blob: 0–60 seconds
/// ([Lease Blob](https://learn.microsoft.com/en-us/rest/api/storageservices/lease-blob#request-headers)).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct BreakPeriod(u8);

impl BreakPeriod {
    /// Break at once.
    pub const NOW: BreakPeriod = BreakPeriod(0);

    /// A break period of `secs` seconds (0..=60).
    pub fn seconds(secs: u64) -> Result<Self, InvalidInput> {
        if secs <= 60 {
            Ok(Self(secs as u8))
        } else {
            Err(InvalidInput::BreakPeriod { seconds: secs })
        }
    }

    /// The seconds.
    pub fn get(self) -> u64 {
        u64::from(self.0)
    }
}

/// A lease id: a GUID, always sent lower-case and hyphenated, compared case-insensitively
/// (Azurite compares lease ids case-sensitively, Azure parses them as GUIDs).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseId(uuid::Uuid);

impl LeaseId {
    /// A fresh random (v4) lease id.
    pub fn new_random() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    /// Parses a GUID in any common form (hyphenated or not, any case, optional braces).
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        uuid::Uuid::parse_str(s.trim())
            .map(Self)
            .map_err(|_| InvalidInput::LeaseId {
                chars: s.chars().count(),
            })
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeaseId({self})")
    }
}

impl std::str::FromStr for LeaseId {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, InvalidInput> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let segments = |n: usize| vec!["a"; n].join("/");
        LockName::new(segments(254)).unwrap();
        assert!(LockName::new(segments(255)).is_err());
        for ok in ["a", "jobs/nightly", "ünï cødé", "x.y", &"a".repeat(1024)] {
            LockName::new(ok).unwrap();
        }
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "a/./b",
            "..",
            "a.",
            "a\\b",
            "a\nb",
            &"a".repeat(1025),
        ] {
            assert!(
                matches!(LockName::new(bad), Err(InvalidInput::LockName { .. })),
                "{bad:?}"
            );
        }
        for ok in ["abc", "a-b-c", "azmutex", &"a".repeat(63)] {
            ContainerName::new(ok).unwrap();
        }
        for bad in ["ab", "Abc", "-ab", "ab-", "a--b", "a_b", &"a".repeat(64)] {
            assert!(ContainerName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations() {
        assert!(LeaseDuration::seconds(14).is_err());
        assert!(LeaseDuration::seconds(61).is_err());
        assert_eq!(LeaseDuration::seconds(15).unwrap(), LeaseDuration::MIN);
        assert_eq!(LeaseDuration::seconds(60).unwrap().header(), "60");
        assert_eq!(LeaseDuration::Infinite.header(), "-1");
        assert!(BreakPeriod::seconds(61).is_err());
        assert_eq!(BreakPeriod::seconds(0).unwrap(), BreakPeriod::NOW);
    }

    #[test]
    fn lease_ids_compare_case_insensitively() {
        let a = LeaseId::parse("3F2504E0-4F89-41D3-9A0C-0305E82C3301").unwrap();
        let b = LeaseId::parse("3f2504e0-4f89-41d3-9a0c-0305e82c3301").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "3f2504e0-4f89-41d3-9a0c-0305e82c3301");
        assert!(LeaseId::parse("not-a-guid").is_err());
    }
}
