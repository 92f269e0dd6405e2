//! In-process metrics (counters, gauges, latency histograms), their Prometheus text
//! rendering and their export over OTLP (server/metrics_page.rs serves the page).

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Labels of one series, in a fixed order.
pub type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The series of one process.
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, Labels), f64>>,
    histograms: Mutex<BTreeMap<(&'static str, Labels), Histogram>>,
}

/// Every series: Prometheus name, OpenTelemetry name, unit and help text.
const SERIES: &[(&str, &str, &str, &str)] = &[
    (
        "csai_rpc_requests_total",
        "csai.rpc.requests",
        "{request}",
        "gRPC calls by method and status code.",
    ),
    (
        "csai_rpc_duration_seconds",
        "csai.rpc.duration",
        "s",
        "Duration of gRPC calls, up to the end of the response stream.",
    ),
    (
        "csai_backend_operation_duration_seconds",
        "csai.backend.operation.duration",
        "s",
        "Duration of storage backend operations.",
    ),
    (
        "csai_backend_errors_total",
        "csai.backend.errors",
        "{error}",
        "Failed storage backend operations, by kind of error.",
    ),
    (
        "csai_backend_slow_operations_total",
        "csai.backend.slow_operations",
        "{operation}",
        "Backend operations slower than slow_op_threshold.",
    ),
    (
        "csai_active_sessions",
        "csai.sessions.active",
        "{session}",
        "Live sessions in the store.",
    ),
    (
        "csai_stored_bytes",
        "csai.store.size",
        "By",
        "Approximate bytes the store holds.",
    ),
    (
        "csai_chat_turns_total",
        "csai.chat.turns",
        "{turn}",
        "Chat turns (or unary steps of them), by provider, model and outcome.",
    ),
    (
        "csai_chat_tool_rounds_total",
        "csai.chat.tool_rounds",
        "{round}",
        "Tool-calling rounds the model asked for.",
    ),
    (
        "csai_chat_tokens_total",
        "csai.chat.tokens",
        "{token}",
        "Tokens the providers reported, by provider, model and type.",
    ),
    (
        "csai_provider_request_duration_seconds",
        "csai.provider.request.duration",
        "s",
        "Duration of HTTP calls to model providers.",
    ),
    (
        "csai_provider_retries_total",
        "csai.provider.retries",
        "{retry}",
        "Retried model calls, by reason.",
    ),
    (
        "csai_provider_errors_total",
        "csai.provider.errors",
        "{error}",
        "Failed model calls (after retries), by kind.",
    ),
];

fn series(name: &str) -> (&'static str, &'static str, &'static str) {
    SERIES
        .iter()
        .find(|(n, ..)| *n == name)
        .map_or(("", "", ""), |(_, otel, unit, help)| (*otel, *unit, *help))
}

/// The OpenTelemetry instruments the series are also recorded into, when metrics are
/// exported over OTLP.
struct Otlp {
    meter: opentelemetry::metrics::Meter,
    counters: Mutex<HashMap<&'static str, opentelemetry::metrics::Counter<f64>>>,
    histograms: Mutex<HashMap<&'static str, opentelemetry::metrics::Histogram<f64>>>,
    gauges: Mutex<HashMap<&'static str, opentelemetry::metrics::Gauge<f64>>>,
}

static OTLP: OnceLock<Otlp> = OnceLock::new();

/// Records every series into `provider` too, from now on.
pub fn export_over_otlp(provider: &opentelemetry_sdk::metrics::SdkMeterProvider) {
    use opentelemetry::metrics::MeterProvider as _;
    let _ = OTLP.set(Otlp {
        meter: provider.meter("csai-sidecar"),
        counters: Mutex::default(),
        histograms: Mutex::default(),
        gauges: Mutex::default(),
    });
}

/// Whether metrics are exported over OTLP.
pub fn exporting_over_otlp() -> bool {
    OTLP.get().is_some()
}

fn attributes(labels: &Labels) -> Vec<opentelemetry::KeyValue> {
    labels
        .iter()
        .map(|(k, v)| opentelemetry::KeyValue::new(*k, v.clone()))
        .collect()
}

/// Sets a gauge in the OTLP export (the Prometheus endpoint reads gauges at scrape time).
pub fn set_otlp_gauge(name: &'static str, value: f64) {
    if let Some(otlp) = OTLP.get() {
        let (otel, unit, help) = series(name);
        otlp.gauges
            .lock()
            .entry(name)
            .or_insert_with(|| {
                otlp.meter
                    .f64_gauge(otel)
                    .with_unit(unit)
                    .with_description(help)
                    .build()
            })
            .record(value, &[]);
    }
}

/// The metrics of this process.
pub fn global() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);
    &METRICS
}

impl Metrics {
    /// Adds `by` to a counter.
    pub fn count(&self, name: &'static str, labels: Labels, by: f64) {
        if let Some(otlp) = OTLP.get() {
            let (otel, unit, help) = series(name);
            otlp.counters
                .lock()
                .entry(name)
                .or_insert_with(|| {
                    otlp.meter
                        .f64_counter(otel)
                        .with_unit(unit)
                        .with_description(help)
                        .build()
                })
                .add(by, &attributes(&labels));
        }
        *self.counters.lock().entry((name, labels)).or_default() += by;
    }

    /// Records one duration in a histogram.
    pub fn observe(&self, name: &'static str, labels: Labels, duration: Duration) {
        let seconds = duration.as_secs_f64();
        if let Some(otlp) = OTLP.get() {
            let (otel, unit, help) = series(name);
            otlp.histograms
                .lock()
                .entry(name)
                .or_insert_with(|| {
                    otlp.meter
                        .f64_histogram(otel)
                        .with_unit(unit)
                        .with_description(help)
                        .with_boundaries(BUCKETS.to_vec())
                        .build()
                })
                .record(seconds, &attributes(&labels));
        }
        let mut histograms = self.histograms.lock();
        let histogram = histograms.entry((name, labels)).or_default();
        for (bucket, bound) in histogram.buckets.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        histogram.count += 1;
        histogram.sum += seconds;
    }

    /// The Prometheus text exposition of every series, plus `gauges` read at scrape time.
    pub fn render(&self, gauges: &[(&'static str, Labels, f64)]) -> String {
        let mut out = String::new();
        let mut described = Vec::new();
        let mut describe = |out: &mut String, name: &'static str, kind: &str| {
            if !described.contains(&name) {
                let (_, _, help) = series(name);
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                described.push(name);
            }
        };
        for (name, labels, value) in gauges {
            describe(&mut out, name, "gauge");
            let _ = writeln!(out, "{name}{} {value}", label_text(labels, None));
        }
        for ((name, labels), value) in self.counters.lock().iter() {
            describe(&mut out, name, "counter");
            let _ = writeln!(out, "{name}{} {value}", label_text(labels, None));
        }
        for ((name, labels), histogram) in self.histograms.lock().iter() {
            describe(&mut out, name, "histogram");
            for (count, bound) in histogram.buckets.iter().zip(BUCKETS) {
                let le = bound.to_string();
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {count}",
                    label_text(labels, Some(&le))
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{} {}",
                label_text(labels, Some("+Inf")),
                histogram.count
            );
            let _ = writeln!(
                out,
                "{name}_sum{} {}",
                label_text(labels, None),
                histogram.sum
            );
            let _ = writeln!(
                out,
                "{name}_count{} {}",
                label_text(labels, None),
                histogram.count
            );
        }
        out
    }
}

/// A label value escaped as the text exposition format requires: backslash, double quote
/// and line feed (a raw line feed would end the sample line and break the whole page).
fn escape_label_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str(r"\\"),
            '"' => escaped.push_str(r#"\""#),
            '\n' => escaped.push_str(r"\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

fn label_text(labels: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label_value(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// The store-wide gauges of these figures: active sessions and stored bytes (none before
/// the first figures are read).
pub fn store_gauges(stats: Option<crate::domain::StoreStats>) -> Vec<(&'static str, Labels, f64)> {
    match stats {
        Some(stats) => vec![
            ("csai_active_sessions", vec![], stats.active_sessions as f64),
            ("csai_stored_bytes", vec![], stats.approximate_bytes as f64),
        ],
        None => Vec::new(),
    }
}

/// Sets the OTLP copies of the store gauges.
pub fn export_store_gauges(stats: &crate::domain::StoreStats) {
    for (name, _, value) in store_gauges(Some(stats.clone())) {
        set_otlp_gauge(name, value);
    }
}

/// The standard `process_*` series of the Prometheus client libraries, read from
/// `/proc/self` at scrape time (empty where there is no `/proc`).
pub fn process_metrics() -> String {
    // USER_HZ: the unit of /proc's CPU times, 100 on every Linux ABI.
    const TICKS_PER_SECOND: f64 = 100.0;
    let mut out = String::new();
    let mut gauge = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    // Fields after the command name, which may itself hold spaces and parentheses.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
    if let (Some(user), Some(system)) = (field(14), field(15)) {
        gauge(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            (user + system) / TICKS_PER_SECOND,
        );
    }
    let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|line| line.strip_prefix("btime ")?.trim().parse::<f64>().ok())
    });
    if let (Some(boot), Some(start)) = (boot_time, field(22)) {
        gauge(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            boot + start / TICKS_PER_SECOND,
        );
    }
    if let Some(bytes) = field(23) {
        gauge(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            bytes,
        );
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let resident_kib = status.lines().find_map(|line| {
        line.strip_prefix("VmRSS:")?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<f64>()
            .ok()
    });
    if let Some(kib) = resident_kib {
        gauge(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            kib * 1024.0,
        );
    }
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        gauge(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            entries.count() as f64,
        );
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let max_fds = limits.lines().find_map(|line| {
        line.strip_prefix("Max open files")?
            .split_whitespace()
            .next()?
            .parse::<f64>()
            .ok()
    });
    if let Some(max) = max_fds {
        gauge(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_render_in_the_prometheus_text_format() {
        let metrics = Metrics::default();
        let labels = vec![
            ("backend", "redis".to_string()),
            ("operation", "append".to_string()),
        ];
        metrics.observe(
            "csai_backend_operation_duration_seconds",
            labels.clone(),
            Duration::from_millis(30),
        );
        metrics.observe(
            "csai_backend_operation_duration_seconds",
            labels.clone(),
            Duration::from_millis(300),
        );
        metrics.count(
            "csai_backend_errors_total",
            vec![("kind", "timeout".into())],
            1.0,
        );
        let text = metrics.render(&[("csai_active_sessions", vec![], 4.0)]);
        assert!(
            text.contains("# TYPE csai_backend_operation_duration_seconds histogram"),
            "{text}"
        );
        assert!(text.contains("csai_backend_operation_duration_seconds_bucket{backend=\"redis\",operation=\"append\",le=\"0.05\"} 1"), "{text}");
        assert!(text.contains("csai_backend_operation_duration_seconds_bucket{backend=\"redis\",operation=\"append\",le=\"+Inf\"} 2"), "{text}");
        assert!(text.contains("csai_backend_operation_duration_seconds_count{backend=\"redis\",operation=\"append\"} 2"), "{text}");
        assert!(
            text.contains("csai_backend_errors_total{kind=\"timeout\"} 1"),
            "{text}"
        );
        assert!(text.contains("csai_active_sessions 4"), "{text}");
    }

    #[test]
    fn label_values_are_escaped_so_the_page_stays_parsable() {
        let metrics = Metrics::default();
        metrics.count(
            "csai_chat_turns_total",
            vec![("model", "a\nb\"c\\d".to_string())],
            1.0,
        );
        let text = metrics.render(&[]);
        assert!(
            text.contains(r#"csai_chat_turns_total{model="a\nb\"c\\d"} 1"#),
            "{text}"
        );
        assert!(
            text.lines()
                .all(|line| line.starts_with('#') || line.starts_with("csai_"))
        );
    }

    #[test]
    fn process_series_are_read_from_proc() {
        let text = process_metrics();
        for name in [
            "process_cpu_seconds_total",
            "process_start_time_seconds",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
        ] {
            let value: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing: {text}"))
                .parse()
                .unwrap();
            assert!(value >= 0.0, "{name} {value}");
        }
    }
}
