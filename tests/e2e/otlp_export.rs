//! Traces and metrics over OTLP: an in-test OTLP/gRPC collector receives what a real
//! sidecar process exports, and the bot's trace must continue through the sidecar into the
//! backend and model-provider spans, with no message content in any attribute.

use crate::common::llm_server::{Reply, ScriptedModel};
use crate::common::{SidecarProcess, message, user};
use csai_sidecar::grpc::pb;
use csai_sidecar::grpc::pb::chat_client::ChatClient;
use csai_sidecar::grpc::pb::session_store_client::SessionStoreClient;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric, number_data_point};
use opentelemetry_proto::tonic::trace::v1::{Span, span};
use sha2::{Digest, Sha256};

/// The key of hashed session ids the sidecar under test is given.
const TRACE_KEY: &str = "otlp-test-trace-session-id-key";
use std::collections::HashMap;
use std::io::BufRead;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::{Request, Response, Status};

/// What the collector received.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    service_names: Arc<Mutex<Vec<String>>>,
    metrics: Arc<Mutex<Vec<Metric>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        for resource_spans in request.into_inner().resource_spans {
            if let Some(resource) = &resource_spans.resource
                && let Some(name) = text_attribute(&resource.attributes, "service.name")
            {
                self.service_names.lock().unwrap().push(name);
            }
            for scope in resource_spans.scope_spans {
                self.spans.lock().unwrap().extend(scope.spans);
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        for resource_metrics in request.into_inner().resource_metrics {
            for scope in resource_metrics.scope_metrics {
                self.metrics.lock().unwrap().extend(scope.metrics);
            }
        }
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

impl Collector {
    /// Starts an OTLP/gRPC collector on an ephemeral port; returns its endpoint.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let router = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(self.clone()))
            .add_service(MetricsServiceServer::new(self.clone()));
        tokio::spawn(
            router.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        endpoint
    }
}

fn value_text(value: &Option<AnyValue>) -> Option<String> {
    match value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(text) => Some(text.clone()),
        any_value::Value::IntValue(n) => Some(n.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        any_value::Value::DoubleValue(d) => Some(d.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn text_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| value_text(&kv.value))
}

fn attribute(span: &Span, key: &str) -> String {
    text_attribute(&span.attributes, key)
        .unwrap_or_else(|| panic!("span {} has no attribute {key}: {span:?}", span.name))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const BOT_SPAN_ID: &str = "b7ad6b7169203331";

fn traced<T>(body: T) -> Request<T> {
    let mut request = Request::new(body);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{BOT_SPAN_ID}-01").parse().unwrap(),
    );
    request
}

/// Keeps reading the sidecar's log so it never blocks on a full pipe.
fn collect_log(sidecar: &mut SidecarProcess) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stderr = sidecar.child.stderr.take().expect("stderr");
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// Stops the sidecar as Kubernetes does (SIGTERM) and waits for it to exit, flushing
/// what it still holds.
fn terminate(sidecar: &mut SidecarProcess) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &sidecar.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = sidecar.child.wait().expect("wait");
    assert!(exit.success(), "the sidecar exited with {exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bots_trace_continues_through_the_sidecar_into_backend_and_provider_spans() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let model = ScriptedModel::start(vec![Reply::Text("SECRET-ANSWER-3".into())]).await;
    let (mut sidecar, channel) = SidecarProcess::spawn(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_SERVICE_NAME", "csai-otlp-test".into()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "200".into()),
        ("CSAI_CHAT_BASE_URL", model.base_url.clone()),
        ("CSAI_CHAT_MODEL", "scripted-model".into()),
        ("CSAI_LOG_LEVEL", "info,csai_sidecar=debug".into()),
        ("CSAI_TRACE_SESSION_ID_KEY", TRACE_KEY.into()),
    ])
    .await;
    let log = collect_log(&mut sidecar);

    let session = "otlp-session-1";
    let mut sessions = SessionStoreClient::new(channel.clone());
    sessions
        .append_messages(traced(pb::AppendMessagesRequest {
            session_id: session.into(),
            messages: vec![
                user("SECRET-CONTENT-1"),
                message(pb::Role::Assistant, "SECRET-CONTENT-2"),
            ],
            ..Default::default()
        }))
        .await
        .expect("append");
    let missing = sessions
        .get_session(traced(pb::GetSessionRequest {
            session_id: "otlp-absent".into(),
            window: None,
            ..Default::default()
        }))
        .await
        .expect_err("no such session");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let answer = ChatClient::new(channel)
        .exec(traced(pb::ExecRequest {
            session_id: session.into(),
            user_message: Some(pb::UserMessage {
                content: "SECRET-QUESTION-4".into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .expect("chat turn")
        .into_inner();
    assert_eq!(answer.assistant_message.unwrap().content, "SECRET-ANSWER-3");
    drop(sessions);
    terminate(&mut sidecar);

    let spans = collector.spans.lock().unwrap().clone();
    let named = |name: &str| -> Vec<&Span> { spans.iter().filter(|s| s.name == name).collect() };
    let by_id: HashMap<Vec<u8>, &Span> = spans.iter().map(|s| (s.span_id.clone(), s)).collect();
    assert_eq!(
        collector
            .service_names
            .lock()
            .unwrap()
            .first()
            .map(String::as_str),
        Some("csai-otlp-test"),
        "{:#?}",
        log.lock().unwrap()
    );

    // The RPC span continues the bot's trace, as a child of the bot's span.
    let append = named("csai.v1.SessionStore/AppendMessages");
    assert_eq!(append.len(), 1, "{spans:#?}");
    let append = append[0];
    assert_eq!(hex(&append.trace_id), TRACE_ID);
    assert_eq!(hex(&append.parent_span_id), BOT_SPAN_ID);
    assert_eq!(append.kind, span::SpanKind::Server as i32);
    assert_eq!(attribute(append, "rpc.system"), "grpc");
    assert_eq!(attribute(append, "rpc.service"), "csai.v1.SessionStore");
    assert_eq!(attribute(append, "rpc.method"), "AppendMessages");
    assert_eq!(attribute(append, "rpc.grpc.status_code"), "0");
    assert!(
        attribute(append, "rpc.request.size")
            .parse::<u64>()
            .unwrap()
            > 0
    );
    // Session ids are hashed by default, keyed: the spans of a session join, the id stays
    // hidden, and hashing guessed ids without the key finds nothing.
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, TRACE_KEY.as_bytes()),
        session.as_bytes(),
    );
    let hashed = hex(&tag.as_ref()[..8]);
    assert_ne!(hashed, hex(&Sha256::digest(session.as_bytes())[..8]));
    assert_eq!(attribute(append, "csai.session_id"), hashed);

    // The backend operation is a client span under the RPC.
    let backend: Vec<&Span> = named("memory append")
        .into_iter()
        .filter(|s| s.parent_span_id == append.span_id)
        .collect();
    assert_eq!(backend.len(), 1, "{spans:#?}");
    assert_eq!(backend[0].kind, span::SpanKind::Client as i32);
    assert_eq!(attribute(backend[0], "db.system.name"), "memory");
    assert_eq!(attribute(backend[0], "db.operation.name"), "append");

    // A NOT_FOUND is the caller's answer, not a server error.
    let get = named("csai.v1.SessionStore/GetSession");
    assert_eq!(attribute(get[0], "rpc.grpc.status_code"), "5");
    assert_ne!(
        get[0].status.as_ref().map_or(0, |s| s.code),
        2,
        "NOT_FOUND must not mark the span as an error"
    );

    // The chat turn: RPC span, then the provider's client span, whose traceparent the
    // model server received.
    let exec = named("csai.v1.Chat/Exec");
    assert_eq!(exec.len(), 1, "{spans:#?}");
    assert_eq!(hex(&exec[0].trace_id), TRACE_ID);
    let provider = named("chat scripted-model");
    assert_eq!(provider.len(), 1, "{spans:#?}");
    let provider = provider[0];
    let mut ancestor = provider;
    while ancestor.span_id != exec[0].span_id {
        ancestor = by_id
            .get(&ancestor.parent_span_id)
            .unwrap_or_else(|| panic!("the provider span is not under the Exec span: {spans:#?}"));
    }
    assert_eq!(attribute(provider, "gen_ai.provider.name"), "default");
    assert_eq!(
        attribute(provider, "gen_ai.request.model"),
        "scripted-model"
    );
    assert_eq!(attribute(provider, "http.response.status_code"), "200");
    assert!(
        attribute(provider, "gen_ai.usage.input_tokens")
            .parse::<u64>()
            .unwrap()
            > 0
    );
    let requests = model.requests().await;
    assert_eq!(
        requests[0].traceparent.as_deref(),
        Some(format!("00-{TRACE_ID}-{}-01", hex(&provider.span_id)).as_str()),
        "the model provider receives the trace"
    );
    // The turn's own backend calls (load the session, store the turn) are in the trace.
    for name in ["memory get", "memory append"] {
        assert!(
            named(name)
                .iter()
                .any(|s| s.parent_span_id == exec[0].span_id),
            "no {name} under Exec: {spans:#?}"
        );
    }
    assert!(
        spans.iter().all(|s| hex(&s.trace_id) == TRACE_ID),
        "a span outside the bot's trace (background work must not start traces): {spans:#?}"
    );

    // No message content anywhere in the spans.
    for span in &spans {
        for kv in &span.attributes {
            let value = value_text(&kv.value).unwrap_or_default();
            assert!(
                !value.contains("SECRET") && !value.contains(session),
                "span {} attribute {} = {value}",
                span.name,
                kv.key
            );
        }
    }

    // The metrics arrived over OTLP too.
    let metrics = collector.metrics.lock().unwrap().clone();
    let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
    for expected in [
        "csai.rpc.requests",
        "csai.rpc.duration",
        "csai.backend.operation.duration",
        "csai.chat.turns",
        "csai.chat.tokens",
        "csai.provider.request.duration",
        "csai.sessions.active",
    ] {
        assert!(names.contains(&expected), "no {expected} in {names:?}");
    }
    let points_of = |name: &str, labels: &[(&str, &str)]| -> Vec<f64> {
        metrics
            .iter()
            .filter(|m| m.name == name)
            .filter_map(|m| match &m.data {
                Some(metric::Data::Sum(sum)) => Some(sum.data_points.clone()),
                _ => None,
            })
            .flatten()
            .filter(|point| {
                labels.iter().all(|(key, value)| {
                    text_attribute(&point.attributes, key).as_deref() == Some(*value)
                })
            })
            .filter_map(|point| match point.value {
                Some(number_data_point::Value::AsDouble(value)) => Some(value),
                _ => None,
            })
            .collect()
    };
    let appended = points_of(
        "csai.rpc.requests",
        &[
            ("method", "/csai.v1.SessionStore/AppendMessages"),
            ("code", "OK"),
        ],
    );
    assert_eq!(appended.last(), Some(&1.0), "{metrics:#?}");
    let turns = points_of(
        "csai.chat.turns",
        &[
            ("provider", "default"),
            ("model", "scripted-model"),
            ("outcome", "stop"),
        ],
    );
    assert_eq!(turns.last(), Some(&1.0), "{metrics:#?}");
    let input_tokens = points_of("csai.chat.tokens", &[("type", "input")]);
    assert!(
        input_tokens.last().is_some_and(|n| *n > 0.0),
        "{metrics:#?}"
    );

    // Every log line of a traced request carries the trace id.
    let log = log.lock().unwrap();
    let finished: Vec<&String> = log.iter().filter(|l| l.contains("rpc finished")).collect();
    assert!(finished.len() >= 3, "{log:#?}");
    assert!(
        finished.iter().all(|line| line.contains(TRACE_ID)),
        "{finished:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_never_fails_or_blocks_an_rpc() {
    // A port nothing listens on: every export fails.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (mut sidecar, channel) = SidecarProcess::spawn(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".into()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "100".into()),
    ])
    .await;
    let _log = collect_log(&mut sidecar);
    let mut client = SessionStoreClient::new(channel);
    for i in 0..50 {
        let appended = tokio::time::timeout(
            Duration::from_secs(5),
            client.append_messages(traced(pb::AppendMessagesRequest {
                session_id: format!("unreachable-{i}"),
                messages: vec![user("hi")],
                ..Default::default()
            })),
        )
        .await
        .expect("an append waited on the exporter");
        appended.expect("append");
    }
    let started = std::time::Instant::now();
    terminate(&mut sidecar);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "shutdown waited {:?} on the exporter",
        started.elapsed()
    );
}
