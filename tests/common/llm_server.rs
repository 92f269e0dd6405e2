//! A scripted OpenAI-compatible model on a local port: it answers from a script and
//! records every request it receives. The one stand-in the tests use: no real model is
//! reachable here, and the sidecar's real HTTP client talks to it over a real socket.
//!
//! It is served by hyper directly (the sidecar's own HTTP stack): a web framework among the
//! test dependencies would change the features of crates the sidecar shares with it, and
//! `cargo run` after the tests would rebuild them.

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, Notify};

type Response = http::Response<BoxBody<Bytes, Infallible>>;

/// One scripted answer.
#[derive(Clone)]
pub enum Reply {
    /// A text answer (streamed word by word when the request asks for a stream).
    Text(String),
    /// Tool calls: (id, function name, arguments JSON).
    ToolCalls(Vec<(String, String, String)>),
    /// An HTTP error with an OpenAI-style error body and an optional Retry-After.
    Status(u16, Option<&'static str>),
    /// A whole JSON answer even when the request asks for a stream, as some servers do.
    WholeEvenIfStreamed(String),
    /// A 200 whose body is not a chat completion.
    Malformed(&'static str),
    /// Waits, then answers.
    Delayed(Duration, Box<Reply>),
    /// Streams `first`, waits until the test calls [`ScriptedModel::release`], then
    /// streams `rest`. Shows whether deltas reach the bot before the model has finished.
    Gated { first: String, rest: String },
}

/// Shorthand for a tool call of a [`Reply::ToolCalls`].
pub fn call(id: &str, name: &str, arguments: Value) -> (String, String, String) {
    (id.to_string(), name.to_string(), arguments.to_string())
}

/// A request the model received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub body: Value,
    pub authorization: Option<String>,
    pub traceparent: Option<String>,
}

impl Recorded {
    /// The (role, content) of each message sent.
    pub fn roles_and_contents(&self) -> Vec<(String, String)> {
        self.body["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| {
                (
                    m["role"].as_str().unwrap_or_default().to_string(),
                    m["content"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }
}

#[derive(Default)]
struct Shared {
    script: Mutex<VecDeque<Reply>>,
    requests: Mutex<Vec<Recorded>>,
    gate: Notify,
    /// Set when a streamed answer's body was dropped before it was finished: the
    /// sidecar went away mid-answer.
    abandoned: AtomicBool,
}

/// The running scripted model.
pub struct ScriptedModel {
    pub base_url: String,
    shared: Arc<Shared>,
}

impl ScriptedModel {
    /// Starts the model on an ephemeral port with this script.
    pub async fn start(script: Vec<Reply>) -> Self {
        let shared = Arc::new(Shared::default());
        *shared.script.lock().await = script.into();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the scripted model");
        let base_url = format!("http://{}/v1", listener.local_addr().expect("address"));
        let serving = shared.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = serving.clone();
                let service = service_fn(move |request| route(shared.clone(), request));
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        Self { base_url, shared }
    }

    /// Every request received so far.
    pub async fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().await.clone()
    }

    /// Lets a [`Reply::Gated`] answer finish.
    pub fn release(&self) {
        self.shared.gate.notify_one();
    }

    /// Waits (up to 3 s, well under the providers' 10 s timeout in tests) until a
    /// streamed answer was abandoned by the sidecar.
    pub async fn wait_until_abandoned(&self) -> bool {
        for _ in 0..60 {
            if self.shared.abandoned.load(Ordering::SeqCst) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

/// POST /v1/chat/completions is the one route.
async fn route(
    shared: Arc<Shared>,
    request: http::Request<Incoming>,
) -> Result<Response, Infallible> {
    if request.uri().path() != "/v1/chat/completions" {
        return Ok(plain(StatusCode::NOT_FOUND, "no such route".into()));
    }
    if request.method() != Method::POST {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "POST only".into()));
    }
    let (parts, body) = request.into_parts();
    let response = match body.collect().await {
        Ok(body) => complete(shared, parts.headers, body.to_bytes()).await,
        Err(e) => plain(StatusCode::BAD_REQUEST, format!("unreadable body: {e}")),
    };
    Ok(response)
}

async fn complete(shared: Arc<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("bad JSON: {e}")),
    };
    let stream = body["stream"] == json!(true);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    shared.requests.lock().await.push(Recorded {
        body,
        authorization: header("authorization"),
        traceparent: header("traceparent"),
    });
    let Some(mut reply) = shared.script.lock().await.pop_front() else {
        return error(500, None, "the test script has no more replies");
    };
    while let Reply::Delayed(delay, inner) = reply {
        tokio::time::sleep(delay).await;
        reply = *inner;
    }
    match reply {
        Reply::Status(code, retry_after) => error(code, retry_after, "scripted failure"),
        Reply::Malformed(text) => plain(StatusCode::OK, text.to_string()),
        Reply::Text(text) if stream => {
            let mut chunks: Vec<Value> = text
                .split_inclusive(' ')
                .map(|word| json!({"choices": [{"index": 0, "delta": {"content": word}}]}))
                .collect();
            chunks.extend(ending("stop"));
            sse(chunks, None, shared)
        }
        Reply::Text(text) | Reply::WholeEvenIfStreamed(text) => {
            whole(json!({"role": "assistant", "content": text}), "stop")
        }
        Reply::ToolCalls(calls) if stream => {
            let mut chunks = Vec::new();
            for (index, (id, name, arguments)) in calls.iter().enumerate() {
                // Arguments arrive in two pieces, as real providers split them.
                let (head, tail) = arguments.split_at(arguments.len() / 2);
                chunks.push(json!({"choices": [{"index": 0, "delta": {"tool_calls": [
                    {"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": head}}]}}]}));
                chunks.push(json!({"choices": [{"index": 0, "delta": {"tool_calls": [
                    {"index": index, "function": {"arguments": tail}}]}}]}));
            }
            chunks.extend(ending("tool_calls"));
            sse(chunks, None, shared)
        }
        Reply::ToolCalls(calls) => {
            let calls: Vec<Value> = calls
                .iter()
                .map(|(id, name, arguments)| {
                    json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}})
                })
                .collect();
            whole(
                json!({"role": "assistant", "content": null, "tool_calls": calls}),
                "tool_calls",
            )
        }
        Reply::Gated { first, rest } => {
            let delta = |text: &str| json!({"choices": [{"index": 0, "delta": {"content": text}}]});
            let mut after = vec![delta(&rest)];
            after.extend(ending("stop"));
            sse(vec![delta(&first)], Some(after), shared)
        }
        Reply::Delayed(..) => unreachable!("unwrapped above"),
    }
}

fn usage() -> Value {
    json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
           "prompt_tokens_details": {"cached_tokens": 4},
           "completion_tokens_details": {"reasoning_tokens": 2}})
}

fn ending(finish_reason: &str) -> Vec<Value> {
    vec![
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": finish_reason}]}),
        json!({"choices": [], "usage": usage()}),
    ]
}

fn whole(message: Value, finish_reason: &str) -> Response {
    let body = json!({
        "id": "chatcmpl-test", "object": "chat.completion", "model": "scripted-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": usage(),
    });
    json_response(StatusCode::OK, body.to_string())
}

fn plain(status: StatusCode, text: String) -> Response {
    http::Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(text)).boxed())
        .expect("response")
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut response = plain(status, body);
    let json = http::HeaderValue::from_static("application/json");
    response.headers_mut().insert("content-type", json);
    response
}

fn error(code: u16, retry_after: Option<&'static str>, message: &str) -> Response {
    let status = StatusCode::from_u16(code).expect("status code");
    let body = json!({"error": {"message": message, "type": "scripted"}}).to_string();
    let mut response = json_response(status, body);
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert("retry-after", seconds.parse().expect("header"));
    }
    response
}

/// Marks the answer abandoned if its body is dropped before the end.
struct AbandonGuard {
    shared: Arc<Shared>,
    finished: bool,
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.shared.abandoned.store(true, Ordering::SeqCst);
        }
    }
}

/// A server-sent-events answer: `before`, then (after the gate opens) `after`, then [DONE].
fn sse(before: Vec<Value>, after: Option<Vec<Value>>, shared: Arc<Shared>) -> Response {
    let frame = |chunk: &Value| Bytes::from(format!("data: {chunk}\n\n"));
    let stream = async_stream(before, after, shared, frame);
    let body = StreamBody::new(stream.map(|chunk| chunk.map(Frame::data)));
    http::Response::builder()
        .header("content-type", "text/event-stream")
        .body(BodyExt::boxed(body))
        .expect("response")
}

fn async_stream(
    before: Vec<Value>,
    after: Option<Vec<Value>>,
    shared: Arc<Shared>,
    frame: impl Fn(&Value) -> Bytes + Send + 'static,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> + Send {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let mut guard = AbandonGuard {
            shared: shared.clone(),
            finished: false,
        };
        for chunk in &before {
            if tx.send(frame(chunk)).await.is_err() {
                return;
            }
        }
        if let Some(after) = after {
            // Wait for the gate, noticing if the sidecar hangs up meanwhile.
            tokio::select! {
                () = shared.gate.notified() => {}
                () = tx.closed() => return,
            }
            for chunk in &after {
                if tx.send(frame(chunk)).await.is_err() {
                    return;
                }
            }
        }
        if tx.send(Bytes::from("data: [DONE]\n\n")).await.is_ok() {
            guard.finished = true;
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|bytes| (Ok(bytes), rx))
    })
}
