//! Logging and tracing setup: structured logs (text or JSON), OpenTelemetry traces and
//! metrics over OTLP configured by the standard `OTEL_*` variables, W3C trace context in
//! and out, and how session ids may appear in spans.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::runtime::Tokio;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use std::fmt::{self, Write};
use std::sync::OnceLock;
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// How a session id appears in span attributes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SessionIdInTraces {
    Plain,
    /// The first 16 hex digits of its HMAC-SHA256 under `trace_session_id_key` (a random
    /// key per process when unset): joins the spans of one session without showing the
    /// id, and cannot be reversed by hashing guessed ids (phone numbers, say).
    #[default]
    Hashed,
    Omitted,
}

static SESSION_IDS: OnceLock<SessionIdInTraces> = OnceLock::new();
static HASH_KEY: OnceLock<hmac::Key> = OnceLock::new();

/// The key of hashed session ids: the configured one, else random for this process.
fn hash_key() -> &'static hmac::Key {
    HASH_KEY.get_or_init(|| {
        let mut bytes = [0u8; 32];
        // Without randomness the hash is still keyed, by a fixed key: weaker, never plain.
        let _ = SystemRandom::new().fill(&mut bytes);
        hmac::Key::new(hmac::HMAC_SHA256, &bytes)
    })
}

/// The exporters of this process, flushed by [`Telemetry::shutdown`].
#[derive(Default)]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
}

/// The OTLP endpoint variable that turns a signal on, when one is set.
fn otlp_endpoint(signal: &str) -> Option<String> {
    if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
        return None;
    }
    [
        format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"),
        "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
    ]
    .into_iter()
    .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
}

/// Installs the global subscriber: logs to stderr filtered by `level` (or `RUST_LOG`),
/// and, when an OTLP endpoint is set, spans and metrics exported over OTLP/gRPC. Must run
/// inside the Tokio runtime (the exporters' channels live there).
pub fn init(
    format: LogFormat,
    level: &str,
    session_ids: SessionIdInTraces,
    session_id_key: Option<&str>,
) -> Result<Telemetry, String> {
    let _ = SESSION_IDS.set(session_ids);
    if let Some(key) = session_id_key {
        let _ = HASH_KEY.set(hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes()));
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = match std::env::var("RUST_LOG") {
        Ok(from_env) if !from_env.is_empty() => EnvFilter::try_new(&from_env)
            .map_err(|e| format!("invalid RUST_LOG {from_env:?}: {e}"))?,
        _ => EnvFilter::try_new(level).map_err(|e| {
            format!("invalid value {level:?} for `log_level` (CSAI_LOG_LEVEL): {e}")
        })?,
    };
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().flatten_event(true).boxed(),
    };

    let mut telemetry = Telemetry::default();
    let resource = || opentelemetry_sdk::Resource::builder().build();
    let traces = match otlp_endpoint("TRACES") {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()
                .map_err(|e| format!("cannot set up the OTLP trace exporter ({endpoint}): {e}"))?;
            // Exports run as tasks on this runtime (the gRPC channel needs its reactor);
            // the queue drops spans when full: exporting never blocks or fails an RPC.
            let processor = BatchSpanProcessor::builder(exporter, Tokio).build();
            let provider = SdkTracerProvider::builder()
                .with_span_processor(processor)
                .with_resource(resource())
                .build();
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("csai-sidecar"))
                .with_filter(EnvFilter::new("csai_sidecar=info"));
            telemetry.tracer = Some(provider);
            Some(layer)
        }
        None => None,
    };
    if let Some(endpoint) = otlp_endpoint("METRICS") {
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| format!("cannot set up the OTLP metric exporter ({endpoint}): {e}"))?;
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter, Tokio).build())
            .with_resource(resource())
            .build();
        crate::observability::metrics::export_over_otlp(&provider);
        telemetry.meter = Some(provider);
    }
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(traces)
        .try_init()
        .map_err(|e| format!("cannot install the logger: {e}"))?;
    if let Some(endpoint) = otlp_endpoint("TRACES") {
        tracing::info!(%endpoint, "exporting traces over OTLP");
    }
    Ok(telemetry)
}

impl Telemetry {
    /// Exports what is still buffered, waiting at most `within`.
    pub async fn shutdown(self, within: Duration) {
        let flush = tokio::task::spawn_blocking(move || {
            if let Some(tracer) = self.tracer {
                let _ = tracer.shutdown();
            }
            if let Some(meter) = self.meter {
                let _ = meter.shutdown();
            }
        });
        if tokio::time::timeout(within, flush).await.is_err() {
            tracing::warn!(
                ?within,
                "telemetry not flushed in time; some spans are lost"
            );
        }
    }
}

/// The session id as span attributes may show it, or `None` when they must not.
pub fn session_id_for_traces(id: &str) -> Option<String> {
    SESSION_IDS.get().copied().unwrap_or_default().show(id)
}

impl SessionIdInTraces {
    fn show(self, id: &str) -> Option<String> {
        match self {
            SessionIdInTraces::Plain => Some(id.to_string()),
            SessionIdInTraces::Hashed => {
                let digest = hmac::sign(hash_key(), id.as_bytes());
                let mut hex = String::with_capacity(16);
                for byte in &digest.as_ref()[..8] {
                    let _ = write!(hex, "{byte:02x}");
                }
                Some(hex)
            }
            SessionIdInTraces::Omitted => None,
        }
    }
}

/// A session id in a log line, as `trace_session_ids` says (computed only when the line
/// is written): `tracing::warn!(session = %telemetry::logged(id), ...)`.
pub struct Logged<'a>(&'a str);

/// See [`Logged`].
pub fn logged(id: &str) -> Logged<'_> {
    Logged(id)
}

impl fmt::Display for Logged<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match session_id_for_traces(self.0) {
            Some(shown) => f.write_str(&shown),
            None => f.write_str("<omitted>"),
        }
    }
}

/// Records the session id on the current span (the RPC's), as configured.
pub fn record_session_id(id: &str) {
    let span = tracing::Span::current();
    // Nothing records spans (no logs at this level, no export): skip the hash.
    if span.is_disabled() {
        return;
    }
    if let Some(value) = session_id_for_traces(id) {
        span.record("csai.session_id", value);
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Makes the W3C `traceparent` in `headers` (gRPC metadata) the parent of `span`, and
/// returns the trace id the span belongs to: the exported trace's when tracing is on, else
/// the caller's, so logs can still be joined with the bot's trace.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) -> Option<String> {
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let _ = span.set_parent(parent.clone());
    [span.context(), parent]
        .iter()
        .map(|cx| cx.span().span_context().clone())
        .find(|context| context.is_valid())
        .map(|context| context.trace_id().to_string())
}

/// Adds the `traceparent` of `span` to an outgoing HTTP request's headers.
pub fn inject_trace(span: &tracing::Span, headers: &mut http::HeaderMap) {
    let context = span.context();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
    }
}

/// Replaces every secret in `text` with `<redacted>`.
pub fn redact(text: &str, secrets: &[String]) -> String {
    secrets.iter().fold(text.to_string(), |text, secret| {
        text.replace(secret.as_str(), "<redacted>")
    })
}

/// Makes panic messages go through [`redact`]: a panic must not print a password, token
/// or key that reached its message.
pub fn redact_panics(secrets: Vec<String>) {
    // Very short values would redact ordinary text; no real secret is that short.
    let secrets: Vec<String> = secrets.into_iter().filter(|s| s.len() >= 6).collect();
    std::panic::set_hook(Box::new(move |info| {
        eprintln!("{}", redact(&info.to_string(), &secrets));
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_replaced_wherever_they_appear() {
        let secrets = vec!["hunter22".to_string(), "sk-live-0123".to_string()];
        assert_eq!(
            redact(
                "password hunter22 and key sk-live-0123, again hunter22",
                &secrets
            ),
            "password <redacted> and key <redacted>, again <redacted>"
        );
    }

    #[test]
    fn session_ids_show_as_configured() {
        let id = "user-42:chat";
        assert_eq!(SessionIdInTraces::Plain.show(id).as_deref(), Some(id));
        // Hashed: 16 hex digits, stable for one id, different for another.
        let hashed = SessionIdInTraces::Hashed.show(id).unwrap();
        assert_eq!(hashed.len(), 16);
        assert!(hashed.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(SessionIdInTraces::Hashed.show(id), Some(hashed.clone()));
        assert_ne!(
            SessionIdInTraces::Hashed.show("user-43:chat"),
            Some(hashed.clone())
        );
        assert_eq!(SessionIdInTraces::Omitted.show(id), None);
        // Keyed: not the plain SHA-256 prefix anyone could compute from a guessed id.
        use sha2::{Digest, Sha256};
        let unkeyed: String = Sha256::digest(id.as_bytes())[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_ne!(hashed, unkeyed);
    }

    #[test]
    fn the_callers_trace_id_is_kept_without_an_exporter() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let span = tracing::info_span!("test");
        assert_eq!(
            continue_trace(&span, &headers).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(continue_trace(&span, &http::HeaderMap::new()), None);
        headers.insert("traceparent", "00-garbage".parse().unwrap());
        assert_eq!(continue_trace(&span, &headers), None);
    }
}
