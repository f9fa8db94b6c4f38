//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`): what
//! the client does, for a dashboard or an alert. Without the feature these functions are empty
//! and nothing is compiled in; with it, nothing is recorded until the application installs a
//! recorder (any `metrics` exporter; the CLI's `--metrics` serves them as Prometheus text).
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `azmutex_requests_total` | counter | `operation`, `outcome` | HTTP requests sent, by operation (`acquire`, `renew`, `release`, `change`, `break`, `get-properties`, `fence`, `set-metadata`, `list-blobs`, …) and outcome (`success`, `conflict`, `precondition_failed`, `not_found`, `throttled`, `server_error`, `client_error`, `auth`, `network`, `timeout`) |
//! | `azmutex_request_duration_seconds` | histogram | `operation` | from send to the whole answer read |
//! | `azmutex_renewal_latency_seconds` | histogram | | a renewal call, retries included, from its due time to its confirmation |
//! | `azmutex_renewals_late_total` | counter | | renewals confirmed more than one renewal interval after they were due |
//! | `azmutex_renewals_missed_total` | counter | | renewal calls that did not confirm (each one retried while the lease holds) |
//! | `azmutex_leases_held` | gauge | | leases held by `Locker` guards in this process |
//! | `azmutex_acquisitions_total` | counter | | locks acquired by `Locker` |
//! | `azmutex_losses_total` | counter | `reason` | locks lost, by [`LostReason`](crate::LostReason) (`expired`, `broken`, `deleted`, …) |
//! | `azmutex_leader` | gauge | `election` | 1 while this process leads the election (container/name), else 0 |
//!
//! Label values come from fixed lists, except `election` (one per election the process takes
//! part in): the number of series stays small however many locks are held.

use std::time::Duration;

/// Every metric's name, for exporters that want to describe them up front.
pub const METRIC_NAMES: [&str; 9] = [
    "azmutex_requests_total",
    "azmutex_request_duration_seconds",
    "azmutex_renewal_latency_seconds",
    "azmutex_renewals_late_total",
    "azmutex_renewals_missed_total",
    "azmutex_leases_held",
    "azmutex_acquisitions_total",
    "azmutex_losses_total",
    "azmutex_leader",
];

/// Registers the help texts of every metric with the installed recorder (call once, after
/// installing it). Does nothing without the `metrics` feature.
pub fn describe() {
    #[cfg(feature = "metrics")]
    {
        use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
        describe_counter!(
            "azmutex_requests_total",
            "HTTP requests sent to storage, by operation and outcome"
        );
        describe_histogram!(
            "azmutex_request_duration_seconds",
            Unit::Seconds,
            "Time from sending a request to reading its whole answer"
        );
        describe_histogram!(
            "azmutex_renewal_latency_seconds",
            Unit::Seconds,
            "Time from a renewal's due time to its confirmation, retries included"
        );
        describe_counter!(
            "azmutex_renewals_late_total",
            "Renewals confirmed more than one renewal interval after they were due"
        );
        describe_counter!(
            "azmutex_renewals_missed_total",
            "Renewal calls that did not confirm the lease (retried while it holds)"
        );
        describe_gauge!("azmutex_leases_held", "Leases held by Locker guards in this process");
        describe_counter!("azmutex_acquisitions_total", "Locks acquired by Locker");
        describe_counter!("azmutex_losses_total", "Locks lost, by reason");
        describe_gauge!("azmutex_leader", "1 while this process leads the election, else 0");
    }
}

/// One HTTP request answered (or failed) with `outcome`, `took` after it was sent.
#[inline]
pub(crate) fn request(op: &'static str, outcome: &'static str, took: Duration) {
    #[cfg(feature = "metrics")]
    {
        metrics::counter!("azmutex_requests_total", "operation" => op, "outcome" => outcome).increment(1);
        metrics::histogram!("azmutex_request_duration_seconds", "operation" => op).record(took.as_secs_f64());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (op, outcome, took);
}

/// The outcome label of an answer with HTTP `status` (and `x-ms-error-code`, if any).
pub(crate) fn outcome_of(status: u16, code: Option<&str>) -> &'static str {
    match status {
        200..=299 => "success",
        404 => "not_found",
        409 => "conflict",
        412 => "precondition_failed",
        429 => "throttled",
        503 if code.is_none_or(|c| c == "ServerBusy") => "throttled",
        401 | 403 => "auth",
        500..=599 => "server_error",
        _ => "client_error",
    }
}

/// A renewal confirmed `latency` after it was due; `late` if that was more than one renewal
/// interval.
#[inline]
pub(crate) fn renewed(latency: Duration, late: bool) {
    #[cfg(feature = "metrics")]
    {
        metrics::histogram!("azmutex_renewal_latency_seconds").record(latency.as_secs_f64());
        if late {
            metrics::counter!("azmutex_renewals_late_total").increment(1);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (latency, late);
}

/// A renewal call that did not confirm the lease.
#[inline]
pub(crate) fn renewal_missed() {
    #[cfg(feature = "metrics")]
    metrics::counter!("azmutex_renewals_missed_total").increment(1);
}

/// A lock acquired by a `Locker` (and now held).
#[inline]
pub(crate) fn acquired() {
    #[cfg(feature = "metrics")]
    {
        metrics::counter!("azmutex_acquisitions_total").increment(1);
        metrics::gauge!("azmutex_leases_held").increment(1.0);
    }
}

/// A lock no longer held: released (`reason` `None`) or lost.
#[inline]
pub(crate) fn ended(reason: Option<&'static str>) {
    #[cfg(feature = "metrics")]
    {
        metrics::gauge!("azmutex_leases_held").decrement(1.0);
        if let Some(reason) = reason {
            metrics::counter!("azmutex_losses_total", "reason" => reason).increment(1);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = reason;
}

/// Whether this process leads `election` (its container/name) now.
#[inline]
pub(crate) fn leader(election: &str, leads: bool) {
    #[cfg(feature = "metrics")]
    metrics::gauge!("azmutex_leader", "election" => election.to_string()).set(if leads { 1.0 } else { 0.0 });
    #[cfg(not(feature = "metrics"))]
    let _ = (election, leads);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes() {
        assert_eq!(outcome_of(200, None), "success");
        assert_eq!(outcome_of(201, None), "success");
        assert_eq!(outcome_of(202, None), "success");
        assert_eq!(outcome_of(404, Some("BlobNotFound")), "not_found");
        assert_eq!(outcome_of(409, Some("LeaseAlreadyPresent")), "conflict");
        assert_eq!(outcome_of(412, Some("ConditionNotMet")), "precondition_failed");
        assert_eq!(outcome_of(429, None), "throttled");
        assert_eq!(outcome_of(503, Some("ServerBusy")), "throttled");
        assert_eq!(outcome_of(503, None), "throttled");
        assert_eq!(outcome_of(503, Some("Other")), "server_error");
        assert_eq!(outcome_of(500, None), "server_error");
        assert_eq!(outcome_of(403, Some("AuthenticationFailed")), "auth");
        assert_eq!(outcome_of(400, Some("InvalidHeaderValue")), "client_error");
    }
}
