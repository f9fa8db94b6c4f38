//! The in-process `metrics` recorder behind `--metrics`, and its Prometheus text rendering.
//!
//! Counters and gauges are `Arc<AtomicU64>` (the `metrics` crate implements `CounterFn` and
//! `GaugeFn` for it: a gauge keeps its `f64` bits); histograms are [`Buckets`] with fixed
//! bounds. A key is registered once: later `counter!()` calls with the same name and labels (in
//! any order) get the same storage. Rendering follows the
//! [text exposition format 0.0.4](https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use metrics::{Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit};

/// Upper bounds (seconds) of the histogram buckets: Prometheus's default buckets for request
/// latencies, and 30 s for renewals retried for most of a lease's third. `+Inf` is implied.
pub(crate) const BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The most series (name and label set) kept: later new ones are dropped (their handles do
/// nothing), so a label fed with unbounded values cannot grow the process without end.
pub(crate) const MAX_SERIES: usize = 10_000;

/// What a metric is, as its `# TYPE` line says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Only goes up (`increment`, `absolute`); rendered as an integer.
    Counter,
    /// Goes up and down; rendered as a float.
    Gauge,
    /// Observations counted in [`BUCKETS`], with their sum and count.
    Histogram,
}

impl Kind {
    /// The word on the `# TYPE` line.
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A series' labels: sanitized names, sorted by name, each name once.
type Labels = Vec<(String, String)>;

/// The storage of one series.
#[derive(Clone)]
enum Storage {
    /// A counter's value.
    Counter(Arc<AtomicU64>),
    /// A gauge's value, as `f64` bits.
    Gauge(Arc<AtomicU64>),
    /// A histogram's buckets, sum and count.
    Histogram(Arc<Buckets>),
}

/// Every series of one metric name, which has one kind.
struct Family {
    /// The kind the name was first registered as; registering it as another kind gets a handle
    /// that does nothing (one name, one `# TYPE`).
    kind: Kind,
    /// The series by label set, in the order they are rendered.
    series: BTreeMap<Labels, Storage>,
}

/// One family as [`Registry::render`] copies it out of the lock.
struct Snapshot {
    /// The metric name.
    name: String,
    /// Its kind.
    kind: Kind,
    /// Its `# HELP` text, if described.
    help: Option<String>,
    /// Its series (the handles, read after the lock is let go).
    series: Vec<(Labels, Storage)>,
}

/// What the recorder holds.
#[derive(Default)]
struct State {
    /// Metric families by (sanitized) name, in the order they are rendered.
    families: BTreeMap<String, Family>,
    /// `describe_*` texts by (sanitized) name, for `# HELP`.
    help: HashMap<String, String>,
    /// How many series `families` holds (bounded by [`MAX_SERIES`]).
    series: usize,
}

/// The recorder: install it with [`Registry::install`], read it with [`Registry::render`].
/// Clones share the same metrics.
#[derive(Clone, Default)]
pub(crate) struct Registry {
    /// Shared by every clone; locked briefly to register or to take a snapshot, never while
    /// formatting or doing I/O.
    state: Arc<Mutex<State>>,
}

impl Registry {
    /// An empty registry.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Makes this registry the process's `metrics` recorder (a clone of it: this one keeps
    /// reading the same metrics). Fails if a recorder was installed before.
    pub(crate) fn install(&self) -> Result<(), String> {
        metrics::set_global_recorder(self.clone()).map_err(|_| "a metrics recorder is already installed".to_string())
    }

    /// The state, even if a thread panicked while holding it (every update leaves it whole).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The storage for `key` as `kind`, made on first use; `None` if the name is registered as
    /// another kind or the registry is full.
    fn register(&self, key: &Key, kind: Kind) -> Option<Storage> {
        let name = metric_name(key.name());
        let labels = labels_of(key, kind);
        let mut state = self.lock();
        let state = &mut *state;
        let full = state.series >= MAX_SERIES;
        let family = match state.families.get_mut(&name) {
            Some(family) => family,
            None if full => return None,
            None => state.families.entry(name).or_insert_with(|| Family {
                kind,
                series: BTreeMap::new(),
            }),
        };
        if family.kind != kind {
            return None;
        }
        if let Some(storage) = family.series.get(&labels) {
            return Some(storage.clone());
        }
        if full {
            return None;
        }
        let storage = match kind {
            Kind::Counter => Storage::Counter(Arc::default()),
            Kind::Gauge => Storage::Gauge(Arc::default()),
            Kind::Histogram => Storage::Histogram(Arc::default()),
        };
        family.series.insert(labels, storage.clone());
        state.series += 1;
        Some(storage)
    }

    /// Keeps `description` as the `# HELP` text of `key` (the last description wins; at most
    /// [`MAX_SERIES`] names are described).
    fn describe(&self, key: KeyName, description: SharedString) {
        let name = metric_name(key.as_str());
        let mut state = self.lock();
        if state.help.len() < MAX_SERIES || state.help.contains_key(&name) {
            state.help.insert(name, description.into_owned());
        }
    }

    /// Every metric in the Prometheus text format 0.0.4: per name (sorted) `# HELP` (if
    /// described) and `# TYPE`, then its series sorted by labels; histograms as cumulative
    /// `_bucket` lines up to `le="+Inf"`, then `_sum` and `_count`.
    pub(crate) fn render(&self) -> String {
        // A snapshot of the handles, so that formatting never holds up a `counter!()` call.
        let families: Vec<Snapshot> = {
            let state = self.lock();
            state
                .families
                .iter()
                .filter(|(_, family)| !family.series.is_empty())
                .map(|(name, family)| Snapshot {
                    name: name.clone(),
                    kind: family.kind,
                    help: state.help.get(name).cloned(),
                    series: family.series.iter().map(|(l, s)| (l.clone(), s.clone())).collect(),
                })
                .collect()
        };
        let mut out = String::new();
        for Snapshot {
            name,
            kind,
            help,
            series,
        } in families
        {
            if let Some(help) = help {
                let _ = writeln!(out, "# HELP {name} {}", escape_help(&help));
            }
            let _ = writeln!(out, "# TYPE {name} {}", kind.name());
            for (labels, storage) in series {
                match storage {
                    Storage::Counter(value) => sample(&mut out, &name, &labels, None, value.load(Ordering::Acquire)),
                    Storage::Gauge(bits) => {
                        let value = float(f64::from_bits(bits.load(Ordering::Acquire)));
                        sample(&mut out, &name, &labels, None, value)
                    }
                    Storage::Histogram(buckets) => buckets.render(&mut out, &name, &labels),
                }
            }
        }
        out
    }
}

impl Recorder for Registry {
    fn describe_counter(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.describe(key, description);
    }

    fn describe_gauge(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.describe(key, description);
    }

    fn describe_histogram(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.describe(key, description);
    }

    fn register_counter(&self, key: &Key, _metadata: &Metadata<'_>) -> Counter {
        match self.register(key, Kind::Counter) {
            Some(Storage::Counter(value)) => Counter::from_arc(value),
            _ => Counter::noop(),
        }
    }

    fn register_gauge(&self, key: &Key, _metadata: &Metadata<'_>) -> Gauge {
        match self.register(key, Kind::Gauge) {
            Some(Storage::Gauge(value)) => Gauge::from_arc(value),
            _ => Gauge::noop(),
        }
    }

    fn register_histogram(&self, key: &Key, _metadata: &Metadata<'_>) -> Histogram {
        match self.register(key, Kind::Histogram) {
            Some(Storage::Histogram(buckets)) => Histogram::from_arc(buckets),
            _ => Histogram::noop(),
        }
    }
}

/// A histogram: observations per bucket of [`BUCKETS`] (not cumulative: each in the first
/// bucket that holds it), with their count and sum, under one lock so that a scrape sees them
/// agree.
#[derive(Default)]
pub(crate) struct Buckets {
    /// Counts per bucket, the count of all observations and their sum.
    state: Mutex<BucketState>,
}

/// What a [`Buckets`] holds.
#[derive(Default)]
struct BucketState {
    /// Observations per bucket of [`BUCKETS`]; larger ones are only in `count`.
    counts: [u64; BUCKETS.len()],
    /// Every observation (the `+Inf` bucket).
    count: u64,
    /// The sum of the observations.
    sum: f64,
}

impl Buckets {
    /// The state, even after a panic elsewhere (every update leaves it whole).
    fn lock(&self) -> MutexGuard<'_, BucketState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes the `_bucket`, `_sum` and `_count` lines of the series `name{labels}`.
    fn render(&self, out: &mut String, name: &str, labels: &Labels) {
        let (counts, count, sum) = {
            let state = self.lock();
            (state.counts, state.count, state.sum)
        };
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0u64;
        for (le, n) in BUCKETS.iter().zip(counts) {
            cumulative = cumulative.saturating_add(n);
            sample(out, &bucket, labels, Some(&float(*le)), cumulative);
        }
        sample(out, &bucket, labels, Some("+Inf"), count);
        sample(out, &format!("{name}_sum"), labels, None, float(sum));
        sample(out, &format!("{name}_count"), labels, None, count);
    }
}

impl HistogramFn for Buckets {
    fn record(&self, value: f64) {
        self.record_many(value, 1);
    }

    fn record_many(&self, value: f64, count: usize) {
        if value.is_nan() {
            return; // it would turn the sum into NaN for good
        }
        let times = u64::try_from(count).unwrap_or(u64::MAX);
        let bucket = BUCKETS.iter().position(|le| value <= *le);
        let mut state = self.lock();
        if let Some(i) = bucket {
            state.counts[i] = state.counts[i].saturating_add(times);
        }
        state.count = state.count.saturating_add(times);
        state.sum += value * times as f64;
    }
}

/// Writes one sample line: `name{labels,le="..."} value`.
fn sample(out: &mut String, name: &str, labels: &Labels, le: Option<&str>, value: impl std::fmt::Display) {
    out.push_str(name);
    let mut first = true;
    let extra = le.map(|le| ("le", le));
    for (label, text) in labels.iter().map(|(l, v)| (l.as_str(), v.as_str())).chain(extra) {
        out.push(if first { '{' } else { ',' });
        first = false;
        let _ = write!(out, "{label}=\"{}\"", escape_label(text));
    }
    if !first {
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A float as Prometheus writes it: `NaN`, `+Inf`, `-Inf`, or the shortest decimal that reads
/// back the same (`1`, `0.005`, `2.5`).
pub(crate) fn float(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        value.to_string()
    }
}

/// A label value escaped for the text format: `\` → `\\`, `"` → `\"`, newline → `\n`.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A `# HELP` text escaped for the text format: `\` → `\\`, newline → `\n`.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A metric name fit for Prometheus (`[a-zA-Z_:][a-zA-Z0-9_:]*`): other characters become `_`,
/// and a leading digit (or nothing at all) gets a `_` before it.
fn metric_name(name: &str) -> String {
    sanitize(name, |c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// A label name fit for Prometheus (`[a-zA-Z_][a-zA-Z0-9_]*`), as [`metric_name`] without `:`.
fn label_name(name: &str) -> String {
    sanitize(name, |c| c.is_ascii_alphanumeric() || c == '_')
}

/// `name` with every character `allowed` refuses replaced by `_`, and a `_` before a leading
/// digit or in place of an empty name.
fn sanitize(name: &str, allowed: impl Fn(char) -> bool) -> String {
    let mut out = String::with_capacity(name.len() + 1);
    if name.chars().next().is_none_or(|c| c.is_ascii_digit()) {
        out.push('_');
    }
    out.extend(name.chars().map(|c| if allowed(c) { c } else { '_' }));
    out
}

/// The label set of `key`: sanitized names, sorted by name (the same set in another order is
/// the same series), the first of repeated names kept; a histogram's own `le` label is renamed
/// `exported_le` (as Prometheus renames clashing labels), so that it cannot clash with buckets.
fn labels_of(key: &Key, kind: Kind) -> Labels {
    let mut labels = Labels::with_capacity(key.labels().len());
    for label in key.labels() {
        let mut name = label_name(label.key());
        if kind == Kind::Histogram && name == "le" {
            name = "exported_le".to_string();
        }
        // Insertion into the sorted list (a handful of labels): no sort routine in the binary.
        if let Err(at) = labels.binary_search_by(|(other, _)| other.as_str().cmp(&name)) {
            labels.insert(at, (name, label.value().to_string()));
        }
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` with `registry` as the recorder of this thread (the global one stays unset).
    fn with(registry: &Registry, f: impl FnOnce()) {
        metrics::with_local_recorder(registry, f);
    }

    #[test]
    fn counters_gauges_and_help_render_in_the_text_format() {
        let registry = Registry::new();
        with(&registry, || {
            metrics::describe_counter!("azmutex_requests_total", "Requests by operation and outcome.");
            metrics::counter!("azmutex_requests_total", "operation" => "renew", "outcome" => "success").increment(3);
            metrics::counter!("azmutex_requests_total", "operation" => "acquire", "outcome" => "conflict").increment(1);
            metrics::gauge!("azmutex_leases_held").set(2.0);
            metrics::gauge!("azmutex_leader", "election" => "sched").set(0.5);
            metrics::counter!("azmutex_acquisitions_total").absolute(7);
        });
        assert_eq!(
            registry.render(),
            "# TYPE azmutex_acquisitions_total counter\n\
             azmutex_acquisitions_total 7\n\
             # TYPE azmutex_leader gauge\n\
             azmutex_leader{election=\"sched\"} 0.5\n\
             # TYPE azmutex_leases_held gauge\n\
             azmutex_leases_held 2\n\
             # HELP azmutex_requests_total Requests by operation and outcome.\n\
             # TYPE azmutex_requests_total counter\n\
             azmutex_requests_total{operation=\"acquire\",outcome=\"conflict\"} 1\n\
             azmutex_requests_total{operation=\"renew\",outcome=\"success\"} 3\n"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let registry = Registry::new();
        with(&registry, || {
            metrics::describe_gauge!("g", "a \\ back\nslash");
            metrics::gauge!("g", "election" => "a\"b\\c\nd").set(1.0);
        });
        assert_eq!(
            registry.render(),
            "# HELP g a \\\\ back\\nslash\n# TYPE g gauge\ng{election=\"a\\\"b\\\\c\\nd\"} 1\n"
        );
    }

    #[test]
    fn histograms_have_cumulative_buckets_sum_and_count() {
        let registry = Registry::new();
        with(&registry, || {
            let h = metrics::histogram!("azmutex_renewal_latency_seconds");
            h.record(0.003); // first bucket
            h.record(0.005); // on a bound: that bucket (le is "less or equal")
            h.record(0.7);
            h.record(45.0); // only in +Inf
            h.record(f64::NAN); // ignored
        });
        let text = registry.render();
        let expected = "# TYPE azmutex_renewal_latency_seconds histogram\n\
            azmutex_renewal_latency_seconds_bucket{le=\"0.005\"} 2\n\
            azmutex_renewal_latency_seconds_bucket{le=\"0.01\"} 2\n\
            azmutex_renewal_latency_seconds_bucket{le=\"0.025\"} 2\n\
            azmutex_renewal_latency_seconds_bucket{le=\"0.05\"} 2\n\
            azmutex_renewal_latency_seconds_bucket{le=\"0.1\"} 2\n\
            azmutex_renewal_latency_seconds_bucket{le=\"0.25\"} 2\n\
            azmutex_renewal_latency_seconds_bucket{le=\"0.5\"} 2\n\
            azmutex_renewal_latency_seconds_bucket{le=\"1\"} 3\n\
            azmutex_renewal_latency_seconds_bucket{le=\"2.5\"} 3\n\
            azmutex_renewal_latency_seconds_bucket{le=\"5\"} 3\n\
            azmutex_renewal_latency_seconds_bucket{le=\"10\"} 3\n\
            azmutex_renewal_latency_seconds_bucket{le=\"30\"} 3\n\
            azmutex_renewal_latency_seconds_bucket{le=\"+Inf\"} 4\n\
            azmutex_renewal_latency_seconds_sum 45.708\n\
            azmutex_renewal_latency_seconds_count 4\n";
        assert_eq!(text, expected);
    }

    #[test]
    fn histogram_labels_come_before_le_and_an_own_le_is_renamed() {
        let registry = Registry::new();
        with(&registry, || {
            metrics::histogram!("h", "op" => "renew", "le" => "x").record(1.0);
        });
        let text = registry.render();
        assert!(
            text.contains("h_bucket{exported_le=\"x\",op=\"renew\",le=\"1\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("h_sum{exported_le=\"x\",op=\"renew\"} 1\n"), "{text}");
    }

    #[test]
    fn the_same_key_gets_the_same_storage() {
        let registry = Registry::new();
        with(&registry, || {
            let a = metrics::counter!("c", "x" => "1", "y" => "2");
            let b = metrics::counter!("c", "y" => "2", "x" => "1"); // labels in another order
            a.increment(1);
            b.increment(2);
            metrics::counter!("c", "x" => "1", "y" => "2").increment(4);
            let g1 = metrics::gauge!("g");
            let g2 = metrics::gauge!("g");
            g1.increment(1.5);
            g2.decrement(0.5);
            metrics::histogram!("h").record(0.1);
            metrics::histogram!("h").record(0.2);
        });
        let text = registry.render();
        assert!(text.contains("c{x=\"1\",y=\"2\"} 7\n"), "{text}");
        assert!(text.contains("\ng 1\n"), "{text}");
        assert!(text.contains("h_count 2\n"), "{text}");
        assert_eq!(text.matches("# TYPE").count(), 3, "{text}");
    }

    #[test]
    fn a_name_keeps_its_first_kind_and_odd_names_are_made_valid() {
        let registry = Registry::new();
        with(&registry, || {
            metrics::counter!("dual").increment(1);
            metrics::gauge!("dual").set(5.0); // ignored: `dual` is a counter
            metrics::counter!("9bad.name-x", "a-b" => "v", "a-b" => "w").increment(1);
            metrics::counter!("").increment(1);
        });
        let text = registry.render();
        assert!(text.contains("# TYPE dual counter\ndual 1\n"), "{text}");
        assert!(!text.contains("gauge"), "{text}");
        assert!(text.contains("_9bad_name_x{a_b=\"v\"} 1\n"), "{text}");
        assert!(text.contains("# TYPE _ counter\n_ 1\n"), "{text}");
    }

    #[test]
    fn gauges_render_special_floats_and_describe_alone_renders_nothing() {
        let registry = Registry::new();
        with(&registry, || {
            metrics::describe_counter!("never_registered", "nothing");
            metrics::gauge!("inf").set(f64::INFINITY);
            metrics::gauge!("nan").set(f64::NAN);
            metrics::gauge!("neg").set(-0.25);
        });
        assert_eq!(
            registry.render(),
            "# TYPE inf gauge\ninf +Inf\n# TYPE nan gauge\nnan NaN\n# TYPE neg gauge\nneg -0.25\n"
        );
    }

    #[test]
    fn increments_from_many_threads_are_all_counted() {
        let registry = Registry::new();
        let metadata = Metadata::new("test", metrics::Level::INFO, None);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        let key = Key::from_parts("c", vec![metrics::Label::new("x", "1")]);
                        registry.register_counter(&key, &metadata).increment(1);
                        registry.register_gauge(&Key::from_name("g"), &metadata).increment(1.0);
                        registry.register_histogram(&Key::from_name("h"), &metadata).record(0.5);
                    }
                });
            }
        });
        let text = registry.render();
        assert!(text.contains("c{x=\"1\"} 4000\n"), "{text}");
        assert!(text.contains("\ng 4000\n"), "{text}");
        assert!(text.contains("h_bucket{le=\"0.5\"} 4000\n"), "{text}");
        assert!(text.contains("h_sum 2000\nh_count 4000\n"), "{text}");
    }

    #[test]
    fn series_beyond_the_cap_do_nothing() {
        let registry = Registry::new();
        with(&registry, || {
            for i in 0..MAX_SERIES + 5 {
                metrics::counter!("many", "i" => i.to_string()).increment(1);
            }
            metrics::counter!("other").increment(1);
        });
        let text = registry.render();
        assert_eq!(text.lines().filter(|l| l.starts_with("many{")).count(), MAX_SERIES);
        assert!(!text.contains("other"));
    }
}
