//! Per-RPC telemetry: a tower layer that opens a span for every gRPC call (continuing the
//! caller's W3C trace), counts the call by method and status code, and times it to the end
//! of its response stream.

use crate::observability::{metrics, telemetry};
use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::Code;
use tracing::Instrument;
use tracing::field::Empty;

/// Wraps the server's routes in [`RpcTelemetry`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RpcTelemetryLayer;

impl<S> tower_layer::Layer<S> for RpcTelemetryLayer {
    type Service = RpcTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcTelemetry { inner }
    }
}

/// The service [`RpcTelemetryLayer`] wraps around the server's routes.
#[derive(Clone, Debug)]
pub struct RpcTelemetry<S> {
    inner: S,
}

impl<S, R> tower_service::Service<http::Request<tonic::body::Body>> for RpcTelemetry<S>
where
    S: tower_service::Service<http::Request<tonic::body::Body>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    R: Body + Unpin + Send + 'static,
{
    type Response = http::Response<ObservedBody<R>>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let path = method_label(request.uri().path()).to_string();
        let full_method = path.trim_start_matches('/');
        let (service, method) = full_method.split_once('/').unwrap_or(("", full_method));
        let span = tracing::info_span!(
            "rpc",
            otel.name = full_method,
            otel.kind = "server",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = Empty,
            rpc.request.size = Empty,
            rpc.response.size = Empty,
            csai.session_id = Empty,
            trace_id = Empty,
        );
        if let Some(trace_id) = telemetry::continue_trace(&span, request.headers()) {
            span.record("trace_id", trace_id);
        }
        let received = Arc::new(AtomicU64::new(0));
        let request = request.map(|body| {
            tonic::body::Body::new(CountedBody {
                inner: body,
                count: received.clone(),
            })
        });
        let mut unanswered = Unanswered {
            deadline: grpc_timeout(request.headers()),
            call: Some(Call {
                span: span.clone(),
                path,
                started: Instant::now(),
                received,
                sent: 0,
            }),
        };
        let call = self.inner.call(request).instrument(span);
        Box::pin(async move {
            let response = call.await?;
            let call = unanswered.call.take().expect("answered once");
            // A trailers-only response (every error) carries its status in the headers.
            let finished = match grpc_status(response.headers()) {
                Some(code) => {
                    call.finish(code);
                    None
                }
                None => Some(call),
            };
            Ok(response.map(|inner| ObservedBody {
                inner,
                call: finished,
            }))
        })
    }
}

/// What a path's calls are counted and traced as: the path of a method this server
/// serves, else [`UNKNOWN_METHOD`]. The path is the caller's to choose, so using it as it
/// came would let anyone grow /metrics without bound.
pub fn method_label(path: &str) -> &str {
    static KNOWN: std::sync::LazyLock<std::collections::HashSet<String>> =
        std::sync::LazyLock::new(|| {
            [
                crate::grpc::pb::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            ]
            .into_iter()
            .filter_map(|bytes| {
                <prost_types::FileDescriptorSet as prost::Message>::decode(bytes).ok()
            })
            .flat_map(|set| set.file)
            .flat_map(|file| {
                let package = file.package().to_string();
                file.service.into_iter().flat_map(move |service| {
                    let prefix = format!("/{package}.{}/", service.name());
                    service
                        .method
                        .into_iter()
                        .map(move |method| format!("{prefix}{}", method.name()))
                })
            })
            .collect()
        });
    if KNOWN.contains(path) {
        path
    } else {
        UNKNOWN_METHOD
    }
}

/// The method label of every path this server does not serve.
pub const UNKNOWN_METHOD: &str = "unknown";

/// One call until its status is known.
struct Call {
    span: tracing::Span,
    path: String,
    started: Instant,
    received: Arc<AtomicU64>,
    sent: u64,
}

impl Call {
    fn finish(self, code: Code) {
        let elapsed = self.started.elapsed();
        let span = &self.span;
        span.record("rpc.grpc.status_code", code as i64);
        span.record("rpc.request.size", self.received.load(Ordering::Relaxed));
        span.record("rpc.response.size", self.sent);
        // The server-side errors of the OpenTelemetry gRPC conventions; the others are
        // the caller's.
        if matches!(
            code,
            Code::Unknown
                | Code::DeadlineExceeded
                | Code::Unimplemented
                | Code::Internal
                | Code::Unavailable
                | Code::DataLoss
        ) {
            span.record("otel.status_code", "error");
        }
        span.in_scope(|| {
            tracing::debug!(
                method = %self.path,
                code = code_name(code),
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                "rpc finished"
            )
        });
        let registry = metrics::global();
        registry.count(
            "csai_rpc_requests_total",
            vec![
                ("method", self.path.clone()),
                ("code", code_name(code).to_string()),
            ],
            1.0,
        );
        registry.observe(
            "csai_rpc_duration_seconds",
            vec![("method", self.path)],
            elapsed,
        );
    }
}

/// A call whose handler has not answered yet. Dropped unanswered, it was cut off: by its
/// deadline (tonic then answers CANCELLED "Timeout expired"; it is counted as the
/// DEADLINE_EXCEEDED it is), or by the caller going away (CANCELLED). The caller's clock
/// starts before ours, so its own deadline often cancels the call just before ours
/// fires: a cut-off within [`DEADLINE_SLACK`] (or a tenth of the deadline, if longer) of
/// the deadline counts as the deadline.
const DEADLINE_SLACK: std::time::Duration = std::time::Duration::from_millis(100);

struct Unanswered {
    deadline: Option<std::time::Duration>,
    call: Option<Call>,
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            let expired = self.deadline.is_some_and(|deadline| {
                call.started.elapsed() + DEADLINE_SLACK.max(deadline / 10) >= deadline
            });
            call.finish(if expired {
                Code::DeadlineExceeded
            } else {
                Code::Cancelled
            });
        }
    }
}

/// The `grpc-timeout` of a request: digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(headers: &http::HeaderMap) -> Option<std::time::Duration> {
    use std::time::Duration;
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from)
}

/// A response body that finishes its call's telemetry at the trailers (or, when the
/// caller goes away first, on drop, as CANCELLED).
pub struct ObservedBody<B> {
    inner: B,
    call: Option<Call>,
}

impl<B> ObservedBody<B> {
    fn finish(&mut self, code: Code) {
        if let Some(call) = self.call.take() {
            call.finish(code);
        }
    }
}

impl<B> Drop for ObservedBody<B> {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

impl<B: Body + Unpin> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(call)) = (frame.data_ref(), this.call.as_mut()) {
                    call.sent += data.remaining() as u64;
                }
                if let Some(trailers) = frame.trailers_ref() {
                    this.finish(grpc_status(trailers).unwrap_or(Code::Unknown));
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(Code::Internal),
            Poll::Ready(None) => this.finish(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that counts the bytes it delivers.
struct CountedBody<B> {
    inner: B,
    count: Arc<AtomicU64>,
}

impl<B: Body + Unpin> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.count
                .fetch_add(data.remaining() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        let timeout = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("grpc-timeout", value.parse().unwrap());
            grpc_timeout(&headers)
        };
        assert_eq!(timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(timeout("9n"), Some(Duration::from_nanos(9)));
        assert_eq!(timeout("5"), None);
        assert_eq!(timeout("S"), None);
        assert_eq!(timeout("1x"), None);
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }

    #[test]
    fn only_served_methods_are_labels() {
        for served in [
            "/csai.v1.SessionStore/AppendMessages",
            "/csai.v1.Chat/ExecStream",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(method_label(served), served);
        }
        for unknown in ["/csai.v1.SessionStore/Nope", "/x/y", "", &"a".repeat(2048)] {
            assert_eq!(method_label(unknown), UNKNOWN_METHOD);
        }
    }
}
