//! The library's metrics (feature `metrics`), read through a recorder installed here, after
//! known operations against Azurite: names, labels and values.
//!
//! One test function: the recorder is process-wide, and the values are exact.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use azmutex::election::Election;
use azmutex::{Locker, LockerOptions, LostReason};
use metrics::{Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit};

/// Every series by `name{label="value",…}` (labels in the order given).
#[derive(Default)]
struct Rec {
    series: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    histograms: Mutex<BTreeMap<String, Arc<Samples>>>,
    described: Mutex<Vec<String>>,
}

#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value);
    }
}

fn id(key: &Key) -> String {
    let labels: Vec<String> = key.labels().map(|l| format!("{}=\"{}\"", l.key(), l.value())).collect();
    if labels.is_empty() {
        key.name().to_string()
    } else {
        format!("{}{{{}}}", key.name(), labels.join(","))
    }
}

impl Rec {
    fn slot(&self, key: &Key) -> Arc<AtomicU64> {
        self.series.lock().unwrap().entry(id(key)).or_default().clone()
    }
    fn counter(&self, id: &str) -> u64 {
        self.series
            .lock()
            .unwrap()
            .get(id)
            .map_or(0, |v| v.load(Ordering::Relaxed))
    }
    fn gauge(&self, id: &str) -> f64 {
        self.series
            .lock()
            .unwrap()
            .get(id)
            .map_or(0.0, |v| f64::from_bits(v.load(Ordering::Relaxed)))
    }
    fn histogram(&self, id: &str) -> Vec<f64> {
        self.histograms
            .lock()
            .unwrap()
            .get(id)
            .map(|h| h.0.lock().unwrap().clone())
            .unwrap_or_default()
    }
    fn names(&self) -> Vec<String> {
        self.series.lock().unwrap().keys().cloned().collect()
    }
}

impl Recorder for &'static Rec {
    fn describe_counter(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.described.lock().unwrap().push(key.as_str().to_string());
    }
    fn describe_gauge(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.described.lock().unwrap().push(key.as_str().to_string());
    }
    fn describe_histogram(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.described.lock().unwrap().push(key.as_str().to_string());
    }
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.slot(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.slot(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.histograms.lock().unwrap().entry(id(key)).or_default().clone())
    }
}

fn recorder() -> &'static Rec {
    static REC: OnceLock<&'static Rec> = OnceLock::new();
    REC.get_or_init(|| {
        let rec: &'static Rec = Box::leak(Box::default());
        metrics::set_global_recorder(rec).expect("the only recorder");
        azmutex::telemetry::describe();
        rec
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_known_operations() {
    let rec = recorder();
    // Described up front: every name the crate lists.
    let described = rec.described.lock().unwrap().clone();
    for name in azmutex::telemetry::METRIC_NAMES {
        assert!(
            described.iter().any(|d| d == name),
            "{name} not described: {described:?}"
        );
    }

    let container = common::unique("metrics");
    let mutex = common::fenced(&container);
    let ok = |op: &str| format!("azmutex_requests_total{{operation=\"{op}\",outcome=\"success\"}}");

    // A fresh container: acquire 404, create container, acquire 404, create blob, acquire,
    // then the fencing token (a page blob this crate created: one request).
    let lease = mutex.acquire("job", common::secs(15)).await.unwrap();
    assert_eq!(
        rec.counter("azmutex_requests_total{operation=\"acquire\",outcome=\"not_found\"}"),
        2
    );
    assert_eq!(rec.counter(&ok("create-container")), 1);
    assert_eq!(rec.counter(&ok("create-blob")), 1);
    assert_eq!(rec.counter(&ok("acquire")), 1);
    // A second acquire while held: a conflict, one request.
    let err = mutex.acquire("job", common::secs(15)).await.unwrap_err();
    assert!(err.to_string().contains("held"), "{err}");
    assert_eq!(
        rec.counter("azmutex_requests_total{operation=\"acquire\",outcome=\"conflict\"}"),
        1
    );
    mutex.release(&lease).await.unwrap();
    assert_eq!(rec.counter(&ok("release")), 1);
    assert!(!rec
        .histogram("azmutex_request_duration_seconds{operation=\"release\"}")
        .is_empty());
    // The lease layer alone holds nothing the gauge counts (Locker guards do).
    assert_eq!(rec.gauge("azmutex_leases_held"), 0.0);

    // Locker: held, renewed (15 s lease renewed every 5 s), released.
    let options = LockerOptions {
        lease: common::secs(15),
        renew_every: Some(Duration::from_secs(5)),
        ..LockerOptions::default()
    };
    let locker = Locker::with_options(mutex.clone(), "job", options.clone()).unwrap();
    let mut guard = locker.lock().await.unwrap();
    assert_eq!(rec.counter("azmutex_acquisitions_total"), 1);
    assert_eq!(rec.gauge("azmutex_leases_held"), 1.0);
    tokio::time::sleep(Duration::from_millis(5600)).await;
    assert!(rec.counter(&ok("renew")) >= 1, "{:?}", rec.names());
    let latencies = rec.histogram("azmutex_renewal_latency_seconds");
    assert!(
        !latencies.is_empty() && latencies.iter().all(|l| *l < 5.0),
        "{latencies:?}"
    );
    assert_eq!(rec.counter("azmutex_renewals_late_total"), 0);
    assert_eq!(rec.counter("azmutex_renewals_missed_total"), 0);
    guard.release().await.unwrap();
    assert_eq!(rec.gauge("azmutex_leases_held"), 0.0);
    assert_eq!(
        rec.names()
            .iter()
            .filter(|n| n.starts_with("azmutex_losses_total"))
            .count(),
        0
    );

    // A loss: the lease broken behind the guard's back; the next renewal is refused.
    let mut guard = locker.lock().await.unwrap();
    assert_eq!(rec.gauge("azmutex_leases_held"), 1.0);
    mutex.break_lease("job", None).await.unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(15), guard.lost())
        .await
        .unwrap();
    assert_eq!(reason, LostReason::Broken);
    assert_eq!(rec.counter("azmutex_losses_total{reason=\"broken\"}"), 1);
    assert_eq!(rec.gauge("azmutex_leases_held"), 0.0);
    assert!(rec.counter("azmutex_renewals_missed_total") >= 1);
    assert!(rec.counter("azmutex_requests_total{operation=\"renew\",outcome=\"conflict\"}") >= 1);
    let _ = guard.release().await;
    assert_eq!(
        rec.gauge("azmutex_leases_held"),
        0.0,
        "a loss and its release count once"
    );

    // Leadership: the gauge per election, 1 while leading, 0 after resigning.
    let election = Election::with_options(mutex.clone(), "leader", options).unwrap();
    let mut term = election.campaign("me").await.unwrap();
    let series = format!("azmutex_leader{{election=\"{container}/leader\"}}");
    assert_eq!(rec.gauge(&series), 1.0, "{:?}", rec.names());
    assert_eq!(rec.gauge("azmutex_leases_held"), 1.0);
    term.resign().await.unwrap();
    assert_eq!(rec.gauge(&series), 0.0);
    assert_eq!(rec.gauge("azmutex_leases_held"), 0.0);

    // Every series is one of the documented names, with labels from the documented lists.
    for series in rec.names() {
        let name = series.split('{').next().unwrap();
        assert!(azmutex::telemetry::METRIC_NAMES.contains(&name), "{series}");
    }
}
