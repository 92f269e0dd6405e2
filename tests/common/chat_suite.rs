//! Chat turn tests that every store must pass, run by `chat_turn_tests!` over memory and Redis.

use super::llm_server::{Reply, ScriptedModel, call};
use super::{TestServer, test_config};
use csai_sidecar::chat::completion::Sampling;
use csai_sidecar::chat::provider::{ApiKey, Endpoint, ProviderSettings};
use csai_sidecar::chat::{ChatSettings, TurnLimits};
use csai_sidecar::config::Config;
use csai_sidecar::domain::{Append, NewMessage, Role, Session, SessionId, Window, WriteOptions};
use csai_sidecar::grpc::pb;
use csai_sidecar::grpc::pb::chat_client::ChatClient;
use csai_sidecar::grpc::pb::exec_stream_request::Kind as Inbound;
use csai_sidecar::grpc::pb::exec_stream_response::Kind as Outbound;
use csai_sidecar::store::{SessionStore, StoreError};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

/// The store a suite function runs on.
pub type Store = Arc<dyn SessionStore>;

/// A provider that talks to the scripted model.
pub fn provider(name: &str, model: &ScriptedModel) -> ProviderSettings {
    ProviderSettings {
        name: name.to_string(),
        endpoint: Endpoint::OpenAi {
            base_url: model.base_url.clone(),
            api_key: Some(ApiKey {
                value: "sk-test-key".into(),
                source: "CSAI_CHAT_API_KEY".into(),
            }),
        },
        model: "scripted-model".into(),
        context_tokens: 0,
        defaults: Sampling::default(),
        timeout: Duration::from_secs(10),
        max_retries: 2,
    }
}

/// A test configuration whose default provider is the scripted model.
pub fn chat_config(model: &ScriptedModel) -> Config {
    Config {
        chat: ChatSettings {
            providers: vec![provider("default", model)],
            default_provider: Some("default".into()),
            limits: TurnLimits {
                tool_timeout: Duration::from_secs(5),
                ..TurnLimits::default()
            },
            ..ChatSettings::default()
        },
        ..test_config()
    }
}

/// A sidecar over `store` with the chat configuration, and a Chat client.
pub async fn start(config: Config, store: &Store) -> (TestServer, ChatClient<Channel>) {
    let server = TestServer::start_serving(config, store.clone()).await;
    let client = ChatClient::new(server.channel().await);
    (server, client)
}

/// A session id no other test uses.
pub fn unique(name: &str) -> String {
    csai_sidecar::conformance::unique_id(name)
        .as_str()
        .to_string()
}

/// A turn that starts with `text`.
pub fn ask(session: &str, text: &str) -> pb::ExecRequest {
    pb::ExecRequest {
        session_id: session.to_string(),
        user_message: Some(pb::UserMessage {
            content: text.to_string(),
            participant_name: String::new(),
        }),
        ..Default::default()
    }
}

/// The same turn with the bot's tools declared.
pub fn with_tools(mut request: pb::ExecRequest) -> pb::ExecRequest {
    request.tools = ["lookup_order", "refund"]
        .into_iter()
        .map(|name| pb::Tool {
            name: name.to_string(),
            description: format!("{name} for the customer"),
            parameters: None,
            strict: false,
        })
        .collect();
    request
}

/// A unary continuation with these tool results.
pub fn answer(session: &str, results: &[(&str, &str)]) -> pb::ExecRequest {
    with_tools(pb::ExecRequest {
        session_id: session.to_string(),
        tool_results: results
            .iter()
            .map(|(id, content)| pb::ToolResult {
                tool_call_id: id.to_string(),
                content: content.to_string(),
                is_error: false,
            })
            .collect(),
        ..Default::default()
    })
}

/// The whole stored session.
pub async fn stored(store: &Store, session: &str) -> Session {
    store
        .get(&SessionId::new(session), Window::All)
        .await
        .expect("the session is stored")
}

fn roles(session: &Session) -> Vec<Role> {
    session.messages.iter().map(|m| m.body.role).collect()
}

/// An open ExecStream.
pub struct StreamTurn {
    pub requests: mpsc::Sender<pb::ExecStreamRequest>,
    pub responses: Streaming<pb::ExecStreamResponse>,
}

impl StreamTurn {
    /// Opens the stream and sends `start`.
    pub async fn open(client: &mut ChatClient<Channel>, start: pb::ExecRequest) -> Self {
        let (requests, rx) = mpsc::channel(16);
        requests
            .send(pb::ExecStreamRequest {
                kind: Some(Inbound::Start(start)),
            })
            .await
            .expect("send start");
        let responses = client
            .exec_stream(ReceiverStream::new(rx))
            .await
            .expect("ExecStream opens")
            .into_inner();
        Self {
            requests,
            responses,
        }
    }

    /// The next message from the sidecar.
    pub async fn next(&mut self) -> Result<Outbound, tonic::Status> {
        let message = tokio::time::timeout(Duration::from_secs(20), self.responses.message())
            .await
            .expect("the sidecar answers within 20 s")?;
        Ok(message.expect("the stream goes on").kind.expect("a kind"))
    }

    /// Sends a tool result.
    pub async fn answer(&self, id: &str, content: &str) {
        self.requests
            .send(pb::ExecStreamRequest {
                kind: Some(Inbound::ToolResult(pb::ToolResult {
                    tool_call_id: id.to_string(),
                    content: content.to_string(),
                    is_error: false,
                })),
            })
            .await
            .expect("send tool result");
    }

    /// Reads to the end of the turn, answering every tool call with `tool:<name>:<args>`.
    /// Returns the text deltas, the tool calls asked and the final response.
    pub async fn run_to_end(&mut self) -> (String, Vec<pb::ToolCall>, pb::ExecResponse) {
        let mut text = String::new();
        let mut calls = Vec::new();
        loop {
            match self.next().await.expect("the turn succeeds") {
                Outbound::Delta(delta) => text.push_str(&delta.content),
                Outbound::ToolCall(call) => {
                    let function = call.function.clone().expect("function");
                    let result = format!("tool:{}:{}", function.name, function.arguments);
                    self.answer(&call.id, &result).await;
                    calls.push(call);
                }
                Outbound::Done(done) => return (text, calls, done),
            }
        }
    }
}

fn pending_ids(response: &pb::ExecResponse) -> Vec<&str> {
    response
        .pending_tool_calls
        .iter()
        .map(|c| c.id.as_str())
        .collect()
}

/// A plain answer: the request carries CS-AI's defaults and the key; the turn is stored.
pub async fn plain_answer(store: Store) {
    let model = ScriptedModel::start(vec![Reply::Text("Your order ships today.".into())]).await;
    let (_server, mut chat) = start(chat_config(&model), &store).await;
    let session = unique("plain");
    let mut request = ask(&session, "Where is my order?");
    request.user_message.as_mut().unwrap().participant_name = "Budi".into();
    let response = chat.exec(request).await.expect("Exec").into_inner();

    let assistant = response.assistant_message.expect("assistant message");
    assert_eq!(assistant.content, "Your order ships today.");
    assert_eq!(response.status, pb::TurnStatus::Completed as i32);
    assert_eq!(response.finish_reason, "stop");
    assert_eq!(
        (response.first_seq, response.last_seq, assistant.seq),
        (1, 2, 2)
    );
    assert_eq!(response.provider, "default");
    let usage = response.usage.expect("usage");
    assert_eq!(
        (
            usage.total_tokens,
            usage.cached_tokens,
            usage.reasoning_tokens
        ),
        (15, 4, 2)
    );

    let requests = model.requests().await;
    assert_eq!(requests.len(), 1);
    let body = &requests[0].body;
    assert_eq!(
        requests[0].authorization.as_deref(),
        Some("Bearer sk-test-key")
    );
    assert_eq!(body["model"], "scripted-model");
    assert_eq!(
        (&body["temperature"], &body["top_p"], &body["max_tokens"]),
        (&json!(0.2), &json!(0.7), &json!(1200))
    );
    assert_eq!(
        (&body["frequency_penalty"], &body["presence_penalty"]),
        (&json!(0.0), &json!(-1.5))
    );
    assert_eq!(
        body["messages"],
        json!([{"role": "user", "content": "Where is my order?", "name": "Budi"}])
    );

    let session = stored(&store, &session).await;
    assert_eq!(roles(&session), [Role::User, Role::Assistant]);
    assert_eq!(session.messages[0].body.name.as_deref(), Some("Budi"));
    assert_eq!(session.messages[1].body.content, "Your order ships today.");
    assert_eq!(session.version, response.version);
}

/// Unary form: two rounds of tools, each continued by a new Exec, the second on another
/// sidecar over the same store (as after a restart or on another replica).
pub async fn unary_two_round_tool_loop(store: Store) {
    let model = ScriptedModel::start(vec![
        Reply::ToolCalls(vec![call("call_1", "lookup_order", json!({"order": 7}))]),
        Reply::ToolCalls(vec![call("call_2", "refund", json!({"order": 7}))]),
        Reply::Text("Refunded order 7.".into()),
    ])
    .await;
    let session = unique("unary-tools");
    let (first_server, mut chat) = start(chat_config(&model), &store).await;
    let first = chat
        .exec(with_tools(ask(&session, "Refund order 7")))
        .await
        .expect("first Exec")
        .into_inner();
    assert_eq!(first.status, pb::TurnStatus::RequiresAction as i32);
    assert_eq!(pending_ids(&first), ["call_1"]);
    assert_eq!((first.first_seq, first.last_seq), (1, 2));
    assert_eq!(first.tool_rounds, 1);

    let mut step = answer(&session, &[("call_1", "{\"status\":\"delivered\"}")]);
    step.request_id = "step-2".into();
    let second = chat
        .exec(step.clone())
        .await
        .expect("second Exec")
        .into_inner();
    assert_eq!(pending_ids(&second), ["call_2"]);
    assert_eq!(second.tool_rounds, 2);
    // A retried step answers as the step did: tool_rounds counts the whole turn.
    let retried = chat.exec(step).await.expect("retried").into_inner();
    assert_eq!(
        (retried.tool_rounds, retried.first_seq, retried.last_seq),
        (2, second.first_seq, second.last_seq)
    );
    drop(chat);
    first_server.stop().await.expect("first sidecar stops");

    let (_second_server, mut chat) = start(chat_config(&model), &store).await;
    let done = chat
        .exec(answer(&session, &[("call_2", "{\"refunded\":true}")]))
        .await
        .expect("third Exec on another sidecar")
        .into_inner();
    assert_eq!(done.status, pb::TurnStatus::Completed as i32);
    assert_eq!(done.assistant_message.unwrap().content, "Refunded order 7.");
    assert_eq!(done.tool_rounds, 2);
    assert_eq!((done.first_seq, done.last_seq), (5, 6));

    let session = stored(&store, &session).await;
    assert_eq!(
        roles(&session),
        [
            Role::User,
            Role::Assistant,
            Role::Tool,
            Role::Assistant,
            Role::Tool,
            Role::Assistant
        ]
    );
    assert_eq!(
        session.messages[2].body.tool_call_id.as_deref(),
        Some("call_1")
    );
    assert_eq!(
        session.messages[2].body.content,
        "{\"status\":\"delivered\"}"
    );

    let requests = model.requests().await;
    assert_eq!(requests.len(), 3);
    let last = &requests[2].body["messages"];
    assert_eq!(last.as_array().unwrap().len(), 5, "{last}");
    assert_eq!(last[1]["tool_calls"][0]["id"], "call_1");
    assert_eq!(
        last[2],
        json!({"role": "tool", "content": "{\"status\":\"delivered\"}", "tool_call_id": "call_1"})
    );
    assert_eq!(last[4]["tool_call_id"], "call_2");
    assert_eq!(
        requests[0].body["tools"][0]["function"]["name"],
        "lookup_order"
    );
    assert_eq!(requests[0].body["tool_choice"], "auto");
}

/// Streaming form: the bot answers tool calls on the stream; one append stores the turn.
pub async fn streaming_two_round_tool_loop(store: Store) {
    let model = ScriptedModel::start(vec![
        Reply::ToolCalls(vec![call("call_1", "lookup_order", json!({"order": 7}))]),
        Reply::ToolCalls(vec![call("call_2", "refund", json!({"order": 7}))]),
        Reply::Text("Refunded order 7.".into()),
    ])
    .await;
    let (_server, mut chat) = start(chat_config(&model), &store).await;
    let session = unique("stream-tools");
    let mut turn = StreamTurn::open(&mut chat, with_tools(ask(&session, "Refund order 7"))).await;
    let (text, calls, done) = turn.run_to_end().await;
    assert_eq!(text, "Refunded order 7.");
    let asked: Vec<&str> = calls.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(asked, ["call_1", "call_2"]);
    assert_eq!(
        calls[0].function.as_ref().unwrap().arguments,
        "{\"order\":7}"
    );
    assert_eq!(done.status, pb::TurnStatus::Completed as i32);
    assert_eq!(done.tool_rounds, 2);
    assert_eq!((done.first_seq, done.last_seq), (1, 6));
    assert_eq!(
        done.usage.unwrap().total_tokens,
        45,
        "three model calls of 15 tokens"
    );

    let stored = stored(&store, &session).await;
    assert_eq!(stored.version, 1, "the whole turn is one append");
    assert_eq!(
        roles(&stored),
        [
            Role::User,
            Role::Assistant,
            Role::Tool,
            Role::Assistant,
            Role::Tool,
            Role::Assistant
        ]
    );
    assert_eq!(stored.messages[4].body.content, "tool:refund:{\"order\":7}");
    let requests = model.requests().await;
    assert!(requests.iter().all(|r| r.body["stream"] == json!(true)));
    assert_eq!(requests[2].body["messages"].as_array().unwrap().len(), 5);
}

/// Parallel calls in one round; identical calls are asked of the bot once per turn.
pub async fn parallel_and_identical_tool_calls(store: Store) {
    let model = ScriptedModel::start(vec![
        Reply::ToolCalls(vec![
            call("a", "lookup_order", json!({"order": 1})),
            call("b", "lookup_order", json!({"order": 1})),
            call("c", "refund", json!({"order": 2})),
        ]),
        Reply::ToolCalls(vec![call("d", "lookup_order", json!({"order": 1}))]),
        Reply::Text("done".into()),
    ])
    .await;
    let (_server, mut chat) = start(chat_config(&model), &store).await;
    let session = unique("parallel");
    let mut turn = StreamTurn::open(&mut chat, with_tools(ask(&session, "two things"))).await;
    let (_, calls, done) = turn.run_to_end().await;
    let asked: Vec<&str> = calls.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        asked,
        ["a", "c"],
        "b and d repeat a and are answered from the turn's cache"
    );
    assert_eq!(done.tool_rounds, 2);

    let stored = stored(&store, &session).await;
    let tool_answers: Vec<(&str, &str)> = stored
        .messages
        .iter()
        .filter(|m| m.body.role == Role::Tool)
        .map(|m| {
            (
                m.body.tool_call_id.as_deref().unwrap(),
                m.body.content.as_str(),
            )
        })
        .collect();
    let lookup = "tool:lookup_order:{\"order\":1}";
    assert_eq!(
        tool_answers,
        [
            ("a", lookup),
            ("b", lookup),
            ("c", "tool:refund:{\"order\":2}"),
            ("d", lookup)
        ]
    );
    let second = &model.requests().await[1].body["messages"];
    assert_eq!(
        second.as_array().unwrap().len(),
        5,
        "user, assistant, three tool results"
    );
}

/// At most max_tool_rounds rounds: the next call forbids tools, and calls a model still
/// makes are dropped with finish_reason "max_tool_rounds".
pub async fn tool_rounds_are_limited(store: Store) {
    let model = ScriptedModel::start(vec![
        Reply::ToolCalls(vec![call("r1", "lookup_order", json!({"n": 1}))]),
        Reply::ToolCalls(vec![call("r2", "lookup_order", json!({"n": 2}))]),
        Reply::ToolCalls(vec![call("r3", "lookup_order", json!({"n": 3}))]),
    ])
    .await;
    let mut config = chat_config(&model);
    config.chat.limits.max_tool_rounds = 2;
    let (_server, mut chat) = start(config, &store).await;
    let session = unique("rounds");
    let mut turn = StreamTurn::open(&mut chat, with_tools(ask(&session, "loop forever"))).await;
    let (_, calls, done) = turn.run_to_end().await;
    assert_eq!(calls.len(), 2);
    assert_eq!(done.finish_reason, "max_tool_rounds");
    assert_eq!(done.tool_rounds, 2);
    assert!(done.assistant_message.unwrap().tool_calls.is_empty());
    let requests = model.requests().await;
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[1].body["tool_choice"], "auto");
    assert_eq!(requests[2].body["tool_choice"], "none");
    let stored = stored(&store, &session).await;
    assert!(stored.messages.last().unwrap().body.tool_calls.is_empty());
}

/// 429 with Retry-After is retried after the delay; then the turn succeeds.
pub async fn rate_limited_provider_is_retried_after_its_delay(store: Store) {
    let model = ScriptedModel::start(vec![
        Reply::Status(429, Some("1")),
        Reply::Text("ok after waiting".into()),
    ])
    .await;
    let (_server, mut chat) = start(chat_config(&model), &store).await;
    let started = std::time::Instant::now();
    let response = chat
        .exec(ask(&unique("retry-after"), "hi"))
        .await
        .expect("Exec succeeds on the retry")
        .into_inner();
    assert_eq!(
        response.assistant_message.unwrap().content,
        "ok after waiting"
    );
    assert_eq!(model.requests().await.len(), 2);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the retry waited for Retry-After"
    );
}

/// 5xx answers are retried with backoff; when retries run out the bot gets UNAVAILABLE.
pub async fn server_errors_are_retried(store: Store) {
    let model = ScriptedModel::start(vec![
        Reply::Status(503, None),
        Reply::Status(502, None),
        Reply::Text("third time lucky".into()),
        Reply::Status(500, None),
        Reply::Status(500, None),
        Reply::Status(500, None),
    ])
    .await;
    let (_server, mut chat) = start(chat_config(&model), &store).await;
    let response = chat
        .exec(ask(&unique("5xx"), "hi"))
        .await
        .expect("Exec")
        .into_inner();
    assert_eq!(
        response.assistant_message.unwrap().content,
        "third time lucky"
    );
    let session = unique("5xx-fails");
    let status = chat
        .exec(ask(&session, "hi"))
        .await
        .expect_err("retries run out");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("provider default"),
        "{}",
        status.message()
    );
    assert_eq!(model.requests().await.len(), 6, "1 + 2 retries, twice");
    assert_not_stored(&store, &session).await;
}

/// A model slower than chat_timeout ends the turn with DEADLINE_EXCEEDED, nothing stored.
pub async fn slow_provider_times_out(store: Store) {
    let model = ScriptedModel::start(vec![Reply::Delayed(
        Duration::from_secs(3),
        Box::new(Reply::Text("too late".into())),
    )])
    .await;
    let mut config = chat_config(&model);
    config.chat.providers[0].timeout = Duration::from_millis(300);
    let (_server, mut chat) = start(config, &store).await;
    let session = unique("timeout");
    let status = chat.exec(ask(&session, "hi")).await.expect_err("times out");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(
        model.requests().await.len(),
        1,
        "a timeout is not retried on the same provider"
    );
    assert_not_stored(&store, &session).await;
}

/// A 200 that is not a chat completion is INTERNAL, naming the provider and the status.
pub async fn malformed_provider_output_is_internal(store: Store) {
    let model = ScriptedModel::start(vec![Reply::Malformed("{\"choices\": 42")]).await;
    let (_server, mut chat) = start(chat_config(&model), &store).await;
    let session = unique("malformed");
    let status = chat.exec(ask(&session, "hi")).await.expect_err("malformed");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(
        status.message().contains("provider default") && status.message().contains("HTTP 200"),
        "{}",
        status.message()
    );
    assert_not_stored(&store, &session).await;
}

/// Deltas reach the bot while the model is still answering.
pub async fn deltas_arrive_before_the_model_finishes(store: Store) {
    let model = ScriptedModel::start(vec![Reply::Gated {
        first: "Hello ".into(),
        rest: "there.".into(),
    }])
    .await;
    let (_server, mut chat) = start(chat_config(&model), &store).await;
    let session = unique("deltas");
    let mut turn = StreamTurn::open(&mut chat, ask(&session, "hi")).await;
    match turn.next().await.expect("a delta") {
        Outbound::Delta(delta) => assert_eq!(delta.content, "Hello "),
        other => panic!("expected a delta first, got {other:?}"),
    }
    // The model has not finished: its answer waits for this release.
    model.release();
    let (rest, _, done) = turn.run_to_end().await;
    assert_eq!(rest, "there.");
    assert_eq!(done.assistant_message.unwrap().content, "Hello there.");
}

/// A bot that leaves mid-answer stops the model request, and nothing is stored.
pub async fn cancellation_mid_stream_stores_nothing(store: Store) {
    let model = ScriptedModel::start(vec![Reply::Gated {
        first: "Partial ".into(),
        rest: "never sent".into(),
    }])
    .await;
    let (_server, mut chat) = start(chat_config(&model), &store).await;
    let session = unique("cancel");
    let mut turn = StreamTurn::open(&mut chat, ask(&session, "hi")).await;
    assert!(matches!(turn.next().await, Ok(Outbound::Delta(_))));
    drop(turn);
    assert!(
        model.wait_until_abandoned().await,
        "the sidecar must drop the model request when the bot leaves"
    );
    model.release();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_not_stored(&store, &session).await;
}

/// Two turns at once on one session: one is stored, the other gets ABORTED.
pub async fn concurrent_turns_on_one_session(store: Store) {
    let slow = |text: &str| {
        Reply::Delayed(
            Duration::from_millis(300),
            Box::new(Reply::Text(text.into())),
        )
    };
    let model = ScriptedModel::start(vec![Reply::Text("first".into()), slow("a"), slow("b")]).await;
    let (_server, chat) = start(chat_config(&model), &store).await;
    let session = unique("concurrent");
    chat.clone()
        .exec(ask(&session, "start"))
        .await
        .expect("first turn");
    let (mut first, mut second) = (chat.clone(), chat.clone());
    let (one, two) = tokio::join!(
        first.exec(ask(&session, "one")),
        second.exec(ask(&session, "two"))
    );
    let results = [one, two];
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let aborted = results
        .iter()
        .filter(|r| r.as_ref().is_err_and(|s| s.code() == Code::Aborted))
        .count();
    assert_eq!((ok, aborted), (1, 1), "{results:?}");
    let stored = stored(&store, &session).await;
    assert_eq!(
        stored.messages.len(),
        4,
        "exactly one of the two turns is stored"
    );
    assert_eq!(stored.messages[2].body.role, Role::User);
    assert_eq!(stored.messages[3].body.role, Role::Assistant);
}

/// The provider gets the session's system messages, the request's, a history window of
/// exactly the requested size, and the user's message, in that order.
pub async fn system_messages_and_history_window_are_exact(store: Store) {
    let model = ScriptedModel::start(vec![Reply::Text("ok".into())]).await;
    let (_server, mut chat) = start(chat_config(&model), &store).await;
    let session = unique("window");
    let id = SessionId::new(session.as_str());
    let options = WriteOptions::ttl(Duration::from_secs(600));
    store
        .set_system_messages(
            &id,
            vec![
                NewMessage::text(Role::System, "You are a support bot."),
                NewMessage::text(Role::System, "Be brief."),
            ],
            options.clone(),
        )
        .await
        .expect("system messages");
    let history: Vec<NewMessage> = (1..=6)
        .map(|i| {
            let role = if i % 2 == 1 {
                Role::User
            } else {
                Role::Assistant
            };
            NewMessage::text(role, format!("history {i}"))
        })
        .collect();
    store
        .append(
            &id,
            Append {
                messages: history,
                request_id: None,
                options,
            },
        )
        .await
        .expect("history");
    let mut request = ask(&session, "new question");
    request.history_window = 2;
    request.additional_system_messages = vec![super::message(pb::Role::System, "Today is Monday.")];
    chat.exec(request).await.expect("Exec");

    let sent = model.requests().await[0].roles_and_contents();
    let expected = [
        ("system", "You are a support bot."),
        ("system", "Be brief."),
        ("system", "Today is Monday."),
        ("user", "history 5"),
        ("assistant", "history 6"),
        ("user", "new question"),
    ];
    let sent: Vec<(&str, &str)> = sent.iter().map(|(r, c)| (r.as_str(), c.as_str())).collect();
    assert_eq!(sent, expected);
    let stored = stored(&store, &session).await;
    assert_eq!(
        stored.system_messages.len(),
        2,
        "additional system messages are not stored"
    );
    assert_eq!(stored.messages.len(), 8);
}

/// A window that would start with tool results grows back to their assistant message.
pub async fn history_window_is_tool_safe(store: Store) {
    let model = ScriptedModel::start(vec![
        Reply::ToolCalls(vec![
            call("t1", "lookup_order", json!({"order": 1})),
            call("t2", "lookup_order", json!({"order": 2})),
        ]),
        Reply::Text("both found".into()),
        Reply::Text("next answer".into()),
    ])
    .await;
    let (_server, mut chat) = start(chat_config(&model), &store).await;
    let session = unique("tool-safe");
    let mut turn = StreamTurn::open(&mut chat, with_tools(ask(&session, "two orders"))).await;
    turn.run_to_end().await;
    // Stored: user, assistant(t1, t2), tool t1, tool t2, assistant. A window of 2 would
    // start at "tool t2" and orphan it.
    let mut request = ask(&session, "thanks");
    request.history_window = 2;
    chat.exec(request).await.expect("Exec");
    let sent = &model.requests().await[2].body["messages"];
    let roles: Vec<&str> = sent
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        ["assistant", "tool", "tool", "assistant", "user"],
        "{sent}"
    );
    assert_eq!(sent[0]["tool_calls"].as_array().unwrap().len(), 2);
}

/// A retried request_id returns the stored answer without calling the model again.
pub async fn request_id_replays_the_stored_turn(store: Store) {
    let model = ScriptedModel::start(vec![Reply::Text("only once".into())]).await;
    let (_server, mut chat) = start(chat_config(&model), &store).await;
    let session = unique("idempotent");
    let mut request = ask(&session, "hi");
    request.request_id = "turn-1".into();
    let first = chat
        .exec(request.clone())
        .await
        .expect("first")
        .into_inner();
    let retry = chat.exec(request).await.expect("retry").into_inner();
    assert_eq!(retry.assistant_message, first.assistant_message);
    assert_eq!(
        (retry.first_seq, retry.last_seq),
        (first.first_seq, first.last_seq)
    );
    assert_eq!(retry.finish_reason, "stop");
    assert_eq!(model.requests().await.len(), 1);
    assert_eq!(stored(&store, &session).await.messages.len(), 2);
}

/// A bot that does not answer a tool call in time ends the turn; nothing is stored.
pub async fn unanswered_tool_call_times_out(store: Store) {
    let model = ScriptedModel::start(vec![Reply::ToolCalls(vec![call(
        "slow",
        "lookup_order",
        json!({}),
    )])])
    .await;
    let mut config = chat_config(&model);
    config.chat.limits.tool_timeout = Duration::from_millis(300);
    let (_server, mut chat) = start(config, &store).await;
    let session = unique("tool-timeout");
    let mut turn = StreamTurn::open(&mut chat, with_tools(ask(&session, "hi"))).await;
    assert!(matches!(turn.next().await, Ok(Outbound::ToolCall(_))));
    let status = turn.next().await.expect_err("the turn ends");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("slow"), "{}", status.message());
    assert_not_stored(&store, &session).await;
}

/// A failed or cancelled turn leaves no trace.
pub async fn assert_not_stored(store: &Store, session: &str) {
    match store.get(&SessionId::new(session), Window::All).await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("session {session} must not exist, got {other:?}"),
    }
}

/// Defines one test per suite function over the store built by `$store`.
#[macro_export]
macro_rules! chat_turn_tests {
    ($store:expr) => {
        $crate::chat_turn_tests!(@tests $store;
            plain_answer,
            unary_two_round_tool_loop,
            streaming_two_round_tool_loop,
            parallel_and_identical_tool_calls,
            tool_rounds_are_limited,
            rate_limited_provider_is_retried_after_its_delay,
            server_errors_are_retried,
            slow_provider_times_out,
            malformed_provider_output_is_internal,
            deltas_arrive_before_the_model_finishes,
            cancellation_mid_stream_stores_nothing,
            concurrent_turns_on_one_session,
            system_messages_and_history_window_are_exact,
            history_window_is_tool_safe,
            request_id_replays_the_stored_turn,
            unanswered_tool_call_times_out,
        );
    };
    (@tests $store:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                $crate::common::chat_suite::$name($store).await;
            }
        )*
    };
}
