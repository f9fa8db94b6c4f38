//! [`LockerOptions`] and the limits they are checked against.

use super::*;

/// How a [`Locker`] acquires and renews.
#[derive(Debug, Clone)]
pub struct LockerOptions {
    /// The lease duration (default 30 s). An infinite lease is probed (renewed) like a fixed one
    /// and counts as held for [`INFINITE_LEASE_WINDOW`] after its last confirmed probe, so a
    /// break is noticed within one renewal interval.
    pub lease: LeaseDuration,
    /// How often to renew (default: a third of the lease, or of [`INFINITE_LEASE_WINDOW`]).
    pub renew_every: Option<Duration>,
    /// How long before the local deadline the lock counts as lost when no renewal was confirmed
    /// (default 2 s, at least [`MIN_SAFETY_MARGIN`]). Covers timer lateness and clock-rate
    /// differences.
    pub safety_margin: Duration,
    /// First pause between attempts while waiting (default 100 ms).
    pub poll_initial: Duration,
    /// Longest pause between attempts while waiting (default 1 s). Each pause is jittered
    /// down to half of its value. See the `handoff` bench for what these defaults cost.
    pub poll_max: Duration,
    /// When the lock is busy, read the recorded holder once per wait and log it (default true;
    /// one extra request).
    pub report_holder: bool,
    /// Stop waiting with the storage error once acquire attempts have been failing (network,
    /// timeouts, throttling) for this long without a break (default `None`: keep trying until
    /// the wait's own limit).
    pub give_up_after: Option<Duration>,
}

impl Default for LockerOptions {
    fn default() -> Self {
        Self {
            lease: LeaseDuration::seconds(30).unwrap_or(LeaseDuration::MIN),
            renew_every: None,
            safety_margin: Duration::from_secs(2),
            poll_initial: Duration::from_millis(100),
            poll_max: Duration::from_secs(1),
            report_holder: true,
            give_up_after: None,
        }
    }
}

impl LockerOptions {
    /// How long a grant is trusted locally: the lease duration, or [`INFINITE_LEASE_WINDOW`]
    /// after the last confirmed probe of an infinite lease.
    pub(super) fn window(&self) -> Duration {
        self.lease.as_duration().unwrap_or(INFINITE_LEASE_WINDOW)
    }

    /// How often to renew (or probe an infinite lease).
    pub(super) fn renew_interval(&self) -> Duration {
        self.renew_every.unwrap_or(self.window() / 3)
    }

    /// Checks that the numbers fit together: renewing at `renew_every` must leave time before
    /// the local deadline (`lease - safety_margin`), and the margin must be at least
    /// [`MIN_SAFETY_MARGIN`].
    pub fn check(&self) -> Result<(), InvalidInput> {
        let window = self.window();
        let every = self.renew_interval();
        let margin = self.safety_margin;
        if margin < MIN_SAFETY_MARGIN {
            return Err(InvalidInput::Option {
                option: "safety_margin",
                why: format!(
                    "{margin:?} is below the minimum of {MIN_SAFETY_MARGIN:?} \
                     (timer lateness and clock-rate differences need room)"
                ),
            });
        }
        let fits = every.checked_add(margin).is_some_and(|used| used < window);
        if every.is_zero() || !fits {
            return Err(InvalidInput::Option {
                option: "renew_every",
                why: format!(
                    "renewing every {every:?} with a {margin:?} safety margin leaves no time to renew a \
                     {window:?} lease (need 0 < renew_every + safety_margin < lease)"
                ),
            });
        }
        if self.poll_initial.is_zero() || self.poll_max < self.poll_initial || self.poll_max > MAX_POLL {
            return Err(InvalidInput::Option {
                option: "poll_initial",
                why: format!("must be non-zero and at most poll_max, itself at most {MAX_POLL:?}"),
            });
        }
        Ok(())
    }
}

/// How long an infinite lease counts as held after its last confirmed probe (a renew request,
/// which the service accepts on infinite leases): the longest fixed lease. A [`Locker`] probes
/// infinite leases every third of this by default, so a break is noticed within one interval.
pub const INFINITE_LEASE_WINDOW: Duration = Duration::from_secs(60);

/// The smallest [`LockerOptions::safety_margin`] accepted.
pub const MIN_SAFETY_MARGIN: Duration = Duration::from_secs(1);

/// The longest pause between attempts accepted in [`LockerOptions::poll_max`].
pub(super) const MAX_POLL: Duration = Duration::from_secs(3600);

pub use crate::mutex::MIN_RENEWAL_GAP;

/// How long cancelling a wait may spend releasing a lease the abandoned attempt may have got.
pub(super) const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);
