//! What the lease operations return: leases and grants, lock states, holder records.

use super::*;

/// How a release ended (see [`AzureMutex::release`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// The service released the lease: it was ours until then.
    Confirmed,
    /// An earlier attempt's answer was lost and a retry found the lease no longer ours. The lost
    /// attempt most likely released it, but the service cannot rule out that the lease was
    /// broken (and the lock taken) before.
    Unconfirmed,
}

/// When a request was sent and how long its lease is therefore valid locally.
///
/// Validity is checked on two clocks: the monotonic clock (immune to clock changes, but stopped
/// while the machine is suspended) and the wall clock (which keeps counting through a suspend).
/// A lease is valid only while both say so, so a process that slept through its deadline never
/// wakes up believing it still holds the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// When the acquire/renew request that got this answer was *sent*. The server started the
    /// lease clock no earlier than this.
    pub sent_at: Instant,
    /// The wall-clock time at `sent_at`.
    pub sent_at_wall: SystemTime,
    /// `sent_at + duration`; `None` for an infinite lease. Never trust the lease past it.
    pub deadline: Option<Instant>,
    /// The same deadline on the wall clock; `None` for an infinite lease.
    pub wall_deadline: Option<SystemTime>,
}

impl Grant {
    pub(super) fn new(sent_at: Instant, sent_at_wall: SystemTime, duration: LeaseDuration) -> Self {
        let d = duration.as_duration();
        Self {
            sent_at,
            sent_at_wall,
            deadline: d.map(|d| sent_at + d),
            wall_deadline: d.map(|d| sent_at_wall + d),
        }
    }

    /// Whether the grant is still valid at `now` and, on the wall clock, `wall_now`, keeping
    /// `margin` in hand on both.
    pub fn is_valid(&self, now: Instant, wall_now: SystemTime, margin: Duration) -> bool {
        let mono = self.deadline.is_none_or(|d| now + margin < d);
        let wall = self.wall_deadline.is_none_or(|d| wall_now + margin < d);
        mono && wall
    }
}

/// A lease we were granted on a lock.
#[derive(Debug, Clone)]
pub struct Lease {
    pub(super) lock: LockName,
    pub(super) id: LeaseId,
    pub(super) duration: LeaseDuration,
    pub(super) grant: Grant,
    pub(super) fencing_token: Option<u64>,
}

impl Lease {
    /// A lease known only by its id (e.g. from `azmutex acquire` in a script), to renew, change
    /// or release it. It is not valid locally until renewed.
    pub fn resume(lock: LockName, id: LeaseId, duration: LeaseDuration) -> Self {
        let now = Instant::now();
        Self {
            lock,
            id,
            duration,
            grant: Grant {
                sent_at: now,
                sent_at_wall: SystemTime::now(),
                deadline: Some(now),
                wall_deadline: Some(SystemTime::now()),
            },
            fencing_token: None,
        }
    }

    /// The lock.
    pub fn lock(&self) -> &LockName {
        &self.lock
    }

    /// The lease id.
    pub fn id(&self) -> LeaseId {
        self.id
    }

    /// The lease duration.
    pub fn duration(&self) -> LeaseDuration {
        self.duration
    }

    /// The latest grant (acquire or renewal).
    pub fn grant(&self) -> Grant {
        self.grant
    }

    /// The local deadline: the lease must not be trusted at or after it. `None` if infinite.
    pub fn deadline(&self) -> Option<Instant> {
        self.grant.deadline
    }

    /// Whether the lease is still valid locally at `now` (before its deadline), also checked on
    /// the wall clock (see [`Grant`]).
    pub fn is_valid_at(&self, now: Instant) -> bool {
        self.grant.is_valid(now, SystemTime::now(), Duration::ZERO)
    }

    /// The fencing token, when fencing is enabled.
    pub fn fencing_token(&self) -> Option<u64> {
        self.fencing_token
    }
}

/// Who holds a lock, recorded in the lock blob's metadata when configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holder {
    /// A caller-chosen description (e.g. a job name).
    pub owner: Option<String>,
    /// The host name.
    pub host: Option<String>,
    /// The process id.
    pub pid: Option<u32>,
}

impl Holder {
    /// This process as a holder: the program's name as the owner (never its arguments, which
    /// may hold secrets), the host name, and the pid.
    ///
    /// ```
    /// let me = azmutex::Holder::current();
    /// assert_eq!(me.pid, Some(std::process::id()));
    /// ```
    pub fn current() -> Self {
        let owner = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().chars().take(200).collect()));
        Self {
            owner,
            host: host_name(),
            pid: Some(std::process::id()),
        }
    }
}

/// The host name: the kernel's (Linux), else `HOSTNAME` / `COMPUTERNAME`.
fn host_name() -> Option<String> {
    let from_kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    from_kernel
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|h| h.trim().chars().take(255).collect::<String>())
        .filter(|h| !h.is_empty())
}

/// A recorded holder, as read back by [`AzureMutex::inspect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderInfo {
    /// What the holder recorded.
    pub holder: Holder,
    /// When it acquired the lock (its own clock).
    pub since: Option<SystemTime>,
}

/// `x-ms-lease-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Not leased.
    Available,
    /// Leased.
    Leased,
    /// The lease ran out.
    Expired,
    /// Broken, but still locking until the break period ends.
    Breaking,
    /// Broken.
    Broken,
}

impl LeaseState {
    pub(super) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "available" => Self::Available,
            "leased" => Self::Leased,
            "expired" => Self::Expired,
            "breaking" => Self::Breaking,
            "broken" => Self::Broken,
            _ => return None,
        })
    }

    /// The service's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::Leased => "leased",
            Self::Expired => "expired",
            Self::Breaking => "breaking",
            Self::Broken => "broken",
        }
    }
}

/// What [`AzureMutex::inspect`] found.
#[derive(Debug, Clone)]
pub struct LockInfo {
    /// The lock.
    pub lock: LockName,
    /// Whether the lock blob exists (a lock never used has none).
    pub exists: bool,
    /// `x-ms-lease-state`.
    pub state: LeaseState,
    /// `x-ms-lease-status`: `true` when `locked`.
    pub locked: bool,
    /// `x-ms-lease-duration` while leased: `Some(None)` infinite, `Some(Some(()))` fixed.
    pub duration: Option<LeaseKind>,
    /// The last fencing token handed out, when fencing was used on this lock.
    pub fencing_token: Option<u64>,
    /// The holder recorded by the last acquire that recorded one; `None` when not locked.
    pub holder: Option<HolderInfo>,
    /// All metadata on the blob, including this crate's own `azmutex*` names.
    pub metadata: BTreeMap<String, String>,
    /// The blob's ETag.
    pub etag: Option<String>,
}

/// `x-ms-lease-duration` of an active lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseKind {
    /// A lease of 15–60 s.
    Fixed,
    /// An infinite lease.
    Infinite,
}
