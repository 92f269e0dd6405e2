//! In-process metrics (counters, gauges, latency histograms) and the Prometheus text
//! endpoint that serves them.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

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

/// Help texts of the series, for the exposition.
const HELP: &[(&str, &str)] = &[
    (
        "csai_rpc_requests_total",
        "gRPC calls by method and status code.",
    ),
    (
        "csai_rpc_duration_seconds",
        "Duration of gRPC calls up to their response headers.",
    ),
    (
        "csai_backend_operation_duration_seconds",
        "Duration of storage backend operations.",
    ),
    (
        "csai_backend_errors_total",
        "Failed storage backend operations, by kind of error.",
    ),
    (
        "csai_backend_slow_operations_total",
        "Backend operations slower than slow_op_threshold.",
    ),
    (
        "csai_active_sessions",
        "Live sessions in the store (at scrape time).",
    ),
    (
        "csai_stored_bytes",
        "Approximate bytes the store holds (at scrape time).",
    ),
];

/// The metrics of this process.
pub fn global() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);
    &METRICS
}

impl Metrics {
    /// Adds `by` to a counter.
    pub fn count(&self, name: &'static str, labels: Labels, by: f64) {
        *self.counters.lock().entry((name, labels)).or_default() += by;
    }

    /// Records one duration in a histogram.
    pub fn observe(&self, name: &'static str, labels: Labels, duration: Duration) {
        let seconds = duration.as_secs_f64();
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
                let help = HELP.iter().find(|(n, _)| *n == name).map_or("", |(_, h)| h);
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

fn label_text(labels: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
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

/// Serves `GET /metrics` on `listener` until the task is dropped. `gauges` is called at
/// every scrape (for store-wide figures such as active sessions).
pub async fn serve<F, Fut>(listener: TcpListener, gauges: Arc<F>)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Vec<(&'static str, Labels, f64)>> + Send,
{
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let gauges = gauges.clone();
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let read = stream.read(&mut request).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&request[..read]);
            let (status, body) = if head.starts_with("GET /metrics ") {
                ("200 OK", global().render(&gauges().await))
            } else {
                (
                    "404 Not Found",
                    "only /metrics is served here\n".to_string(),
                )
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
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
}

/// A tower layer that counts every RPC by method and gRPC status code and times it up to
/// the response headers (for a unary RPC, the whole call). Errors sent in trailers of a
/// stream that already started are counted as OK.
#[derive(Clone, Copy, Debug, Default)]
pub struct RpcMetricsLayer;

impl<S> tower_layer::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner }
    }
}

/// The service [`RpcMetricsLayer`] wraps around the server's routes.
#[derive(Clone, Debug)]
pub struct RpcMetrics<S> {
    inner: S,
}

impl<S, B, R> tower_service::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    R: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_string();
        let started = std::time::Instant::now();
        let call = self.inner.call(request);
        Box::pin(async move {
            let result = call.await;
            if let Ok(response) = &result {
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from);
                let registry = global();
                registry.count(
                    "csai_rpc_requests_total",
                    vec![
                        ("method", method.clone()),
                        ("code", code_name(code).to_string()),
                    ],
                    1.0,
                );
                registry.observe(
                    "csai_rpc_duration_seconds",
                    vec![("method", method)],
                    started.elapsed(),
                );
            }
            result
        })
    }
}

/// The conventional upper-case name of a gRPC status code.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
