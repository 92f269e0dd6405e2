//! The Chat service's edges over the in-memory store: health, validation, provider
//! errors and fallback, response formats, abuse controls and transcripts.

use crate::common;

use crate::common::chat_suite::{
    Store, StreamTurn, answer, ask, chat_config, provider, start, stored, unique, with_tools,
};
use crate::common::llm_server::{Reply, ScriptedModel, call};
use crate::common::{FaultyStore, NOT_SERVING, SERVING, TestServer, test_config, wait_for_status};
use csai_sidecar::chat::completion::Sampling;
use csai_sidecar::chat::guard::RateLimits;
use csai_sidecar::chat::provider::{Endpoint, ProviderSettings};
use csai_sidecar::config::{self, Config};
use csai_sidecar::domain::Role;
use csai_sidecar::grpc::pb;
use csai_sidecar::grpc::pb::exec_stream_request::Kind as Inbound;
use csai_sidecar::grpc::pb::exec_stream_response::Kind as Outbound;
use csai_sidecar::settings::Source;
use csai_sidecar::store::memory::{MemoryLimits, MemoryStore};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;
use tonic_types::StatusExt;

fn memory() -> Store {
    Arc::new(MemoryStore::new(MemoryLimits::default()))
}

#[tokio::test]
async fn chat_answers_with_echo_out_of_the_box_and_serves_only_with_a_provider() {
    // The defaults: no model configured, so turns go to the built-in echo model.
    let server = TestServer::start().await;
    let mut health = server.health().await;
    wait_for_status(&mut health, "csai.v1.Chat", SERVING).await;
    let mut chat = pb::chat_client::ChatClient::new(server.channel().await);
    let reply = chat
        .exec(ask(&unique("echo"), "Where is my order?"))
        .await
        .expect("the echo model answers")
        .into_inner();
    let answer = reply.assistant_message.expect("an assistant message");
    assert!(
        answer.content.contains("Where is my order?"),
        "{}",
        answer.content
    );

    // chat_echo = false: no provider, so Chat is NOT_SERVING and turns are refused.
    let mut values = config::defaults();
    values.set("chat_echo", "false".into(), Source::Default);
    let no_model = Config {
        chat: config::parse(&values).expect("valid").chat,
        ..test_config()
    };
    let server = TestServer::start_with(no_model, MemoryLimits::default()).await;
    let mut health = server.health().await;
    wait_for_status(&mut health, "", SERVING).await;
    assert_eq!(
        common::health_status(&mut health, "csai.v1.Chat").await,
        NOT_SERVING
    );
    let mut chat = pb::chat_client::ChatClient::new(server.channel().await);
    let status = chat.exec(ask("s", "hi")).await.expect_err("no provider");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("CSAI_CHAT_BASE_URL"),
        "{}",
        status.message()
    );

    let model = ScriptedModel::start(vec![]).await;
    let faulty = Arc::new(FaultyStore::new(Arc::new(MemoryStore::new(
        MemoryLimits::default(),
    ))));
    let server = TestServer::start_serving(chat_config(&model), faulty.clone()).await;
    let mut health = server.health().await;
    wait_for_status(&mut health, "csai.v1.Chat", SERVING).await;
    faulty.set_down(true);
    wait_for_status(&mut health, "csai.v1.Chat", NOT_SERVING).await;
    faulty.set_down(false);
    wait_for_status(&mut health, "csai.v1.Chat", SERVING).await;
}

#[tokio::test]
async fn invalid_requests_name_their_field() {
    let model = ScriptedModel::start(vec![]).await;
    let (_server, mut chat) = start(chat_config(&model), &memory()).await;
    let parameters = |p: pb::ModelParameters| {
        let mut request = ask("s", "hi");
        request.parameters = Some(p);
        request
    };
    let mut bad_tool = with_tools(ask("s", "hi"));
    bad_tool.tools[0].name = "has space".into();
    let mut unknown_choice = with_tools(ask("s", "hi"));
    unknown_choice.tool_choice = Some(pb::ToolChoice {
        choice: Some(pb::tool_choice::Choice::FunctionName("nope".into())),
    });
    let mut both = answer("s", &[("c", "r")]);
    both.user_message = ask("s", "hi").user_message;
    let cases = [
        (
            parameters(pb::ModelParameters {
                temperature: Some(2.5),
                ..Default::default()
            }),
            "parameters.temperature",
        ),
        (
            parameters(pb::ModelParameters {
                top_p: Some(1.5),
                ..Default::default()
            }),
            "parameters.top_p",
        ),
        (
            parameters(pb::ModelParameters {
                presence_penalty: Some(-3.0),
                ..Default::default()
            }),
            "parameters.presence_penalty",
        ),
        (
            parameters(pb::ModelParameters {
                frequency_penalty: Some(2.1),
                ..Default::default()
            }),
            "parameters.frequency_penalty",
        ),
        (bad_tool, "tools[0].name"),
        (unknown_choice, "tool_choice.function_name"),
        (both, "tool_results"),
        (ask("", "hi"), "session_id"),
        (ask("s", ""), "user_message.content"),
    ];
    for (request, field) in cases {
        let status = chat.exec(request).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().starts_with(field),
            "{field}: {}",
            status.message()
        );
    }
    assert!(
        model.requests().await.is_empty(),
        "nothing invalid reaches the model"
    );

    // ExecStream: the first message must be `start`, and `start` cannot carry tool results.
    let status = chat
        .exec_stream(futures::stream::iter(vec![pb::ExecStreamRequest {
            kind: Some(Inbound::ToolResult(pb::ToolResult::default())),
        }]))
        .await
        .expect_err("no start");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = chat
        .exec_stream(futures::stream::iter(vec![pb::ExecStreamRequest {
            kind: Some(Inbound::Start(answer("s", &[("c", "r")]))),
        }]))
        .await
        .expect_err("tool results in start");
    assert!(
        status.message().contains("start.tool_results"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn unary_continuations_must_answer_the_pending_calls() {
    let model = ScriptedModel::start(vec![
        Reply::ToolCalls(vec![
            call("a", "lookup_order", json!({"order": 1})),
            call("b", "refund", json!({"order": 1})),
        ]),
        Reply::Text("new topic answered".into()),
    ])
    .await;
    let store = memory();
    let (_server, mut chat) = start(chat_config(&model), &store).await;
    let session = unique("continuation");
    let status = chat
        .exec(answer(&session, &[("a", "x")]))
        .await
        .expect_err("no turn");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");

    chat.exec(with_tools(ask(&session, "two tools")))
        .await
        .expect("first step");
    let status = chat
        .exec(answer(&session, &[("zzz", "x")]))
        .await
        .expect_err("unknown id");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("pending: a, b"),
        "{}",
        status.message()
    );
    let status = chat
        .exec(answer(&session, &[("a", "x")]))
        .await
        .expect_err("b is missing");
    assert!(
        status.message().contains("b have no result"),
        "{}",
        status.message()
    );

    // A new user message abandons the pending calls: the model never sees them.
    chat.exec(ask(&session, "never mind"))
        .await
        .expect("new turn");
    let sent = &model.requests().await[1].body["messages"];
    let roles: Vec<&str> = sent
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "user"], "{sent}");
    let stored = stored(&store, &session).await;
    assert_eq!(
        stored.messages.len(),
        4,
        "the abandoned call stays in the store"
    );
}

#[tokio::test]
async fn provider_auth_failure_names_the_key_variable() {
    let model = ScriptedModel::start(vec![Reply::Status(401, None)]).await;
    let (_server, mut chat) = start(chat_config(&model), &memory()).await;
    let status = chat
        .exec(ask(&unique("auth"), "hi"))
        .await
        .expect_err("401");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("provider default")
            && status.message().contains("CSAI_CHAT_API_KEY"),
        "{}",
        status.message()
    );
    assert!(
        !status.message().contains("sk-test-key"),
        "the key itself never shows"
    );
}

#[tokio::test]
async fn exhausted_rate_limit_retries_pass_the_delay_on() {
    let model = ScriptedModel::start(vec![Reply::Status(429, Some("7")); 3]).await;
    let mut config = chat_config(&model);
    config.chat.providers[0].max_retries = 0;
    let (_server, mut chat) = start(config, &memory()).await;
    let status = chat.exec(ask(&unique("429"), "hi")).await.expect_err("429");
    assert_eq!(status.code(), Code::ResourceExhausted);
    let retry = status.get_details_retry_info().expect("RetryInfo detail");
    assert_eq!(retry.retry_delay, Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn fallback_provider_answers_when_the_primary_fails() {
    let primary = ScriptedModel::start(vec![Reply::Status(503, None)]).await;
    let backup = ScriptedModel::start(vec![Reply::Text("from the backup".into())]).await;
    let mut config = chat_config(&primary);
    config.chat.providers[0].max_retries = 0;
    let mut fallback = provider("backup", &backup);
    fallback.model = "backup-model".into();
    config.chat.providers.push(fallback);
    config.chat.fallback_provider = Some("backup".into());
    let (_server, mut chat) = start(config, &memory()).await;
    let mut request = ask(&unique("fallback"), "hi");
    request.parameters = Some(pb::ModelParameters {
        model: Some("primary-large".into()),
        temperature: Some(1.1),
        ..Default::default()
    });
    let response = chat
        .exec(request)
        .await
        .expect("the fallback answers")
        .into_inner();
    assert_eq!(response.provider, "backup");
    assert_eq!(
        response.assistant_message.unwrap().content,
        "from the backup"
    );
    assert_eq!(primary.requests().await[0].body["model"], "primary-large");
    let sent = &backup.requests().await[0].body;
    assert_eq!(
        sent["model"], "backup-model",
        "a model override names a model of the primary"
    );
    assert_eq!(sent["temperature"], json!(1.1));
}

#[tokio::test]
async fn echo_provider_answers_with_the_users_message() {
    let mut config = test_config();
    config.chat.providers.push(ProviderSettings {
        name: "echo".into(),
        endpoint: Endpoint::Echo,
        model: "echo".into(),
        context_tokens: 0,
        defaults: Sampling::default(),
        timeout: Duration::from_secs(5),
        max_retries: 0,
    });
    config.chat.default_provider = Some("echo".into());
    let (_server, mut chat) = start(config, &memory()).await;
    let response = chat
        .exec(ask(&unique("echo"), "ping"))
        .await
        .expect("echo")
        .into_inner();
    assert_eq!(response.assistant_message.unwrap().content, "ping");
    let mut turn = StreamTurn::open(&mut chat, ask(&unique("echo"), "pong")).await;
    let (text, _, done) = turn.run_to_end().await;
    assert_eq!((text.as_str(), done.provider.as_str()), ("pong", "echo"));
}

fn json_format(request: &mut pb::ExecRequest) {
    request.response_format = Some(pb::ResponseFormat {
        format: Some(pb::response_format::Format::JsonSchema(
            pb::response_format::JsonSchema {
                name: "reply".into(),
                schema: Some(prost_types::Struct {
                    fields: [(
                        "required".to_string(),
                        prost_types::Value {
                            kind: Some(prost_types::value::Kind::ListValue(
                                prost_types::ListValue {
                                    values: vec![prost_types::Value {
                                        kind: Some(prost_types::value::Kind::StringValue(
                                            "intent".into(),
                                        )),
                                    }],
                                },
                            )),
                        },
                    )]
                    .into(),
                }),
                strict: true,
            },
        )),
    });
}

#[tokio::test]
async fn a_wrong_format_gets_one_corrective_retry() {
    let model = ScriptedModel::start(vec![
        Reply::Text("Sure! The intent is refund.".into()),
        Reply::Text("{\"intent\": \"refund\"}".into()),
        Reply::Text("{\"other\": 1}".into()),
        Reply::Text("still not it".into()),
    ])
    .await;
    let store = memory();
    let (_server, mut chat) = start(chat_config(&model), &store).await;
    let session = unique("format");
    let mut request = ask(&session, "classify");
    json_format(&mut request);
    let response = chat.exec(request).await.expect("corrected").into_inner();
    assert_eq!(
        response.assistant_message.unwrap().content,
        "{\"intent\": \"refund\"}"
    );
    let requests = model.requests().await;
    assert_eq!(requests[0].body["response_format"]["type"], "json_schema");
    assert_eq!(
        requests[0].body["response_format"]["json_schema"]["name"],
        "reply"
    );
    let retry = requests[1].roles_and_contents();
    assert_eq!(retry.len(), 3, "user, the rejected answer, the correction");
    assert!(retry[2].1.contains("not valid JSON"), "{retry:?}");
    let stored_turn = stored(&store, &session).await;
    assert_eq!(
        stored_turn.messages.len(),
        2,
        "the rejected answer is not stored"
    );

    // Two wrong answers in a row: the turn fails and stores nothing.
    let session = unique("format-fails");
    let mut request = ask(&session, "classify");
    json_format(&mut request);
    let status = chat
        .exec(request)
        .await
        .expect_err("still wrong after the retry");
    assert_eq!(status.code(), Code::Internal);
    assert!(
        status.message().contains("after one corrective retry"),
        "{}",
        status.message()
    );
    assert_eq!(model.requests().await.len(), 4);
    common::chat_suite::assert_not_stored(&store, &session).await;
}

#[tokio::test]
async fn participants_are_rate_limited_with_a_retry_delay() {
    let model = ScriptedModel::start(vec![Reply::Text("ok".into()); 4]).await;
    let mut config = chat_config(&model);
    config.chat.rate_limits = Some(RateLimits {
        per_minute: 2,
        per_hour: 100,
        per_day: 1000,
    });
    config.chat.limits.max_user_message_chars = 10;
    let (server, mut chat) = start(config, &memory()).await;
    let as_ana = |text: &str| {
        let mut request = ask(&unique("limits"), text);
        request.user_message.as_mut().unwrap().participant_name = "ana".into();
        request
    };
    let status = chat
        .exec(as_ana("far too long to accept"))
        .await
        .expect_err("too long");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("chat_max_user_message_length"),
        "{}",
        status.message()
    );
    chat.exec(as_ana("one")).await.expect("first");
    chat.exec(as_ana("two")).await.expect("second");
    let status = chat
        .exec(as_ana("three"))
        .await
        .expect_err("third in a minute");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("per minute"),
        "{}",
        status.message()
    );
    let delay = status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("delay");
    assert!(
        delay > Duration::from_secs(50) && delay <= Duration::from_secs(60),
        "{delay:?}"
    );
    chat.exec(ask(&unique("limits"), "hello"))
        .await
        .expect("other participants go on");

    // Each decision is a security log of the participant, oldest first.
    let logs = server
        .sessions()
        .await
        .list_security_logs(pb::ListSecurityLogsRequest {
            user_id: "ana".into(),
            ..Default::default()
        })
        .await
        .expect("ListSecurityLogs")
        .into_inner()
        .logs;
    let decisions: Vec<(bool, bool)> = logs
        .iter()
        .map(|l| (l.allowed, l.reason.is_empty()))
        .collect();
    assert_eq!(
        decisions,
        [(false, false), (true, true), (true, true), (false, false)]
    );
    assert!(logs[0].reason.contains("characters"), "{}", logs[0].reason);
    assert!(logs[3].reason.contains("per minute"), "{}", logs[3].reason);
    assert_eq!(
        logs[1].message_hash,
        csai_sidecar::records::message_hash("one")
    );
}

#[tokio::test]
async fn transcripts_hold_every_stored_message() {
    let model = ScriptedModel::start(vec![
        Reply::ToolCalls(vec![call("t", "lookup_order", json!({"order": 3}))]),
        Reply::Text("Order 3 is on its way.".into()),
    ])
    .await;
    let dir = std::env::temp_dir().join(format!("csai-transcripts-e2e-{}", std::process::id()));
    let mut config = chat_config(&model);
    config.chat.transcript_dir = Some(dir.clone());
    let (_server, mut chat) = start(config, &memory()).await;
    let session = unique("transcript");
    let mut turn = StreamTurn::open(&mut chat, with_tools(ask(&session, "order 3?"))).await;
    turn.run_to_end().await;
    let file = std::fs::read_dir(&dir)
        .expect("the folder exists")
        .map(|e| e.expect("entry").path())
        .find(|p| p.to_string_lossy().contains("transcript"))
        .expect("a transcript file");
    let document: serde_json::Value =
        serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    assert_eq!(document["session_id"], session.as_str());
    let roles: Vec<&str> = document["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "tool", "assistant"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_tool_error_reaches_the_model_and_is_marked() {
    let model = ScriptedModel::start(vec![
        Reply::ToolCalls(vec![call("e", "refund", json!({}))]),
        Reply::Text("Sorry, refunds are down.".into()),
    ])
    .await;
    let store = memory();
    let (_server, mut chat) = start(chat_config(&model), &store).await;
    let session = unique("tool-error");
    let mut turn = StreamTurn::open(&mut chat, with_tools(ask(&session, "refund"))).await;
    let Outbound::ToolCall(asked) = turn.next().await.expect("tool call") else {
        panic!("expected a tool call");
    };
    turn.requests
        .send(pb::ExecStreamRequest {
            kind: Some(Inbound::ToolResult(pb::ToolResult {
                tool_call_id: asked.id,
                content: "refund service timed out".into(),
                is_error: true,
            })),
        })
        .await
        .unwrap();
    let (_, _, done) = turn.run_to_end().await;
    assert_eq!(
        done.assistant_message.unwrap().content,
        "Sorry, refunds are down."
    );
    let stored = stored(&store, &session).await;
    let tool = &stored.messages[2].body;
    assert_eq!(
        (tool.role, tool.content.as_str()),
        (Role::Tool, "refund service timed out")
    );
    assert_eq!(tool.metadata.get("is_error"), Some(&json!(true)));
}

#[tokio::test]
async fn a_bot_deadline_stops_the_model_request() {
    let model = ScriptedModel::start(vec![Reply::Gated {
        first: "never ".into(),
        rest: "finished".into(),
    }])
    .await;
    let store = memory();
    let (_server, mut chat) = start(chat_config(&model), &store).await;
    let session = unique("deadline");
    let mut request = tonic::Request::new(ask(&session, "hi"));
    request.set_timeout(Duration::from_millis(300));
    let status = chat.exec(request).await.expect_err("the deadline passes");
    // tonic's client reports its own timeout as CANCELLED, a server-side one as
    // DEADLINE_EXCEEDED; either way the bot stopped waiting.
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    assert!(
        model.wait_until_abandoned().await,
        "the sidecar must drop the model request when the bot's deadline passes"
    );
    model.release();
    tokio::time::sleep(Duration::from_millis(200)).await;
    common::chat_suite::assert_not_stored(&store, &session).await;
}

#[tokio::test]
async fn a_server_that_ignores_stream_still_streams_its_answer() {
    let model = ScriptedModel::start(vec![Reply::WholeEvenIfStreamed("all at once".into())]).await;
    let (_server, mut chat) = start(chat_config(&model), &memory()).await;
    let mut turn = StreamTurn::open(&mut chat, ask(&unique("no-sse"), "hi")).await;
    let (text, _, done) = turn.run_to_end().await;
    assert_eq!(text, "all at once");
    assert_eq!(done.assistant_message.unwrap().content, "all at once");
    assert_eq!(model.requests().await[0].body["stream"], json!(true));
}

/// Handoff: a human agent's client sets the state's "csai.handoff"; a bot turn already
/// running is refused when it would store (nothing of it is stored), new turns are
/// refused with FAILED_PRECONDITION naming the holder, and a release lets turns run again.
#[tokio::test]
async fn a_handed_off_session_refuses_bot_turns_until_released() {
    let model = ScriptedModel::start(vec![
        Reply::Text("first answer".into()),
        Reply::Delayed(
            Duration::from_millis(800),
            Box::new(Reply::Text("too late".into())),
        ),
        Reply::Text("after the release".into()),
    ])
    .await;
    let store = memory();
    let (server, mut chat) = start(chat_config(&model), &store).await;
    let mut sessions = server.sessions().await;
    let id = unique("handoff");
    chat.exec(ask(&id, "hello")).await.expect("a bot turn");

    let take_over = |holder: serde_json::Value| pb::UpdateStateRequest {
        session_id: id.clone(),
        state: Some(csai_sidecar::grpc::convert::json_to_struct(
            json!({ "csai.handoff": holder })
                .as_object()
                .unwrap()
                .clone(),
        )),
        mode: pb::StateUpdateMode::Merge as i32,
        ..Default::default()
    };
    // A turn is running (its model answers in 800 ms) when the agent takes over.
    let mut running = chat.clone();
    let turn = tokio::spawn({
        let id = id.clone();
        async move { running.exec(ask(&id, "are you there?")).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    sessions
        .update_state(take_over(json!({ "agent": "alice" })))
        .await
        .expect("take over");
    let status = turn
        .await
        .unwrap()
        .expect_err("the running turn is refused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("alice"), "{status:?}");
    let stored = sessions
        .get_session(pb::GetSessionRequest {
            session_id: id.clone(),
            window: None,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(
        stored.messages.len(),
        2,
        "nothing of the refused turn is stored"
    );

    // The agent writes; new bot turns are refused without calling the model.
    sessions
        .append_messages(pb::AppendMessagesRequest {
            session_id: id.clone(),
            messages: vec![common::message(
                pb::Role::Assistant,
                "Alice here, I'll help.",
            )],
            ..Default::default()
        })
        .await
        .expect("the agent's message");
    let status = chat.exec(ask(&id, "thanks")).await.expect_err("refused");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("csai.handoff"), "{status:?}");
    assert_eq!(
        model.requests().await.len(),
        2,
        "no model call while handed off"
    );

    sessions
        .update_state(take_over(serde_json::Value::Null))
        .await
        .expect("release");
    let answer = chat
        .exec(ask(&id, "bot again?"))
        .await
        .expect("turns run again");
    assert_eq!(
        answer.into_inner().assistant_message.unwrap().content,
        "after the release"
    );
}

/// A token budget on the history: the model gets the most recent messages that fit
/// (counted like GetSession's max_tokens), whatever the message-count window allows.
#[tokio::test]
async fn a_turns_history_fits_its_token_budget() {
    use csai_sidecar::domain::{NewMessage, Role};
    use csai_sidecar::tokens::Encoding;
    let model = ScriptedModel::start(vec![
        Reply::Text("first".into()),
        Reply::Text("second".into()),
    ])
    .await;
    let (server, mut chat) = start(chat_config(&model), &memory()).await;
    let mut sessions = server.sessions().await;
    let id = unique("budget");
    let mut history = Vec::new();
    for n in 0..10 {
        history.push(("user", format!("Question {n} about parcel {}", n * 31)));
        history.push((
            "assistant",
            format!("Answer {n}: it left the depot on day {n}."),
        ));
    }
    sessions
        .append_messages(pb::AppendMessagesRequest {
            session_id: id.clone(),
            messages: history
                .iter()
                .map(|(role, content)| match *role {
                    "user" => common::user(content),
                    _ => common::message(pb::Role::Assistant, content),
                })
                .collect(),
            ..Default::default()
        })
        .await
        .expect("history");
    let cost = |(role, content): &(&str, String)| {
        let role = if *role == "user" {
            Role::User
        } else {
            Role::Assistant
        };
        Encoding::O200k.message(&NewMessage::text(role, content))
    };
    // Exactly the last five messages fit.
    let budget: u32 = history[15..].iter().map(cost).sum();
    let mut request = ask(&id, "And parcel 7?");
    request.max_history_tokens = budget;
    let first = chat
        .exec(request)
        .await
        .expect("a budgeted turn")
        .into_inner();
    let sent = model.requests().await[0].roles_and_contents();
    let expected: Vec<(String, String)> = history[15..]
        .iter()
        .map(|(role, content)| (role.to_string(), content.clone()))
        .chain([("user".to_string(), "And parcel 7?".to_string())])
        .collect();
    assert_eq!(sent, expected);

    // Without a budget, the message window (50) sends everything.
    let second = chat
        .exec(ask(&id, "Thanks"))
        .await
        .expect("an unbudgeted turn")
        .into_inner();
    assert_eq!(
        model.requests().await[1].roles_and_contents().len(),
        20 + 2 + 1
    );

    // The session's usage: what both turns' model calls reported, kept on their messages.
    let read = sessions
        .get_session(pb::GetSessionRequest {
            session_id: id.clone(),
            window: Some(pb::get_session_request::Window::LastN(1)),
            include_usage: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (a, b) = (first.usage.unwrap(), second.usage.unwrap());
    let total = read.usage_total.expect("usage_total");
    assert!(a.total_tokens > 0);
    let sum = |x: u32, y: u32| u64::from(x) + u64::from(y);
    assert_eq!(total.total_tokens, sum(a.total_tokens, b.total_tokens));
    assert_eq!(total.prompt_tokens, sum(a.prompt_tokens, b.prompt_tokens));
    assert_eq!(
        total.completion_tokens,
        sum(a.completion_tokens, b.completion_tokens)
    );
}

/// 500 turns under a token budget: every model request's history fits the budget, the
/// history is the most recent that fits, and the store keeps every message.
#[tokio::test]
async fn five_hundred_turns_stay_within_their_token_budget() {
    use csai_sidecar::domain::{NewMessage, Role};
    use csai_sidecar::tokens::Encoding;
    const TURNS: usize = 500;
    const BUDGET: u32 = 300;
    let answers: Vec<Reply> = (0..TURNS)
        .map(|n| Reply::Text(format!("Answer {n}: your parcel {} is on its way.", n * 17)))
        .collect();
    let model = ScriptedModel::start(answers).await;
    let mut config = chat_config(&model);
    config.chat.limits.history_window = 0;
    config.chat.limits.history_tokens = BUDGET;
    let (server, mut chat) = start(config, &memory()).await;
    let id = unique("long");
    for n in 0..TURNS {
        chat.exec(ask(
            &id,
            &format!("Question {n}: where is parcel {}?", n * 17),
        ))
        .await
        .expect("a turn");
    }
    let requests = model.requests().await;
    assert_eq!(requests.len(), TURNS, "one model call per turn");
    let cost = |(role, content): &(String, String)| {
        let role = if role == "user" {
            Role::User
        } else {
            Role::Assistant
        };
        Encoding::O200k.message(&NewMessage::text(role, content.clone()))
    };
    let mut fuller = 0;
    for (n, request) in requests.iter().enumerate() {
        let sent = request.roles_and_contents();
        let (history, turn) = sent.split_at(sent.len() - 1);
        assert_eq!(
            turn[0].1,
            format!("Question {n}: where is parcel {}?", n * 17)
        );
        let tokens: u32 = history.iter().map(cost).sum();
        assert!(tokens <= BUDGET, "turn {n}: {tokens} tokens of history");
        // The most recent that fit: the message before the window would not have.
        if 2 * n > history.len() {
            fuller += 1;
            let earlier = 2 * n - history.len() - 1;
            let turn_of = |i: usize| i / 2;
            let role = if earlier % 2 == 0 {
                "user"
            } else {
                "assistant"
            };
            let content = if role == "user" {
                format!(
                    "Question {}: where is parcel {}?",
                    turn_of(earlier),
                    turn_of(earlier) * 17
                )
            } else {
                format!(
                    "Answer {}: your parcel {} is on its way.",
                    turn_of(earlier),
                    turn_of(earlier) * 17
                )
            };
            assert!(
                tokens + cost(&(role.to_string(), content)) > BUDGET,
                "turn {n}: one more message would have fit"
            );
        }
    }
    assert!(
        fuller > TURNS - 20,
        "the budget cut the history on most turns: {fuller}"
    );
    let stored = server
        .sessions()
        .await
        .get_session(pb::GetSessionRequest {
            session_id: id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(
        stored.message_count,
        2 * TURNS as u64,
        "every message is kept"
    );
}

/// A model's context sets the budget: each request's messages, the reply priming and the
/// room for the answer fit `context_tokens`, with the most history that does; a request's
/// smaller `max_history_tokens` wins.
#[tokio::test]
async fn a_models_context_window_sets_the_history_budget() {
    use csai_sidecar::domain::{NewMessage, Role};
    use csai_sidecar::tokens::{Encoding, REPLY_PRIMING};
    const TURNS: usize = 40;
    const CONTEXT: u32 = 500;
    const ANSWER_ROOM: u32 = 150;
    let model =
        ScriptedModel::start(vec![Reply::Text("Your parcel is on its way.".into()); 41]).await;
    let mut config = chat_config(&model);
    config.chat.limits.history_window = 0;
    config.chat.providers[0].context_tokens = CONTEXT;
    config.chat.providers[0].defaults.max_tokens = ANSWER_ROOM;
    let (server, mut chat) = start(config, &memory()).await;
    let id = unique("context");
    let system = "You are the parcel service's assistant. Answer in one sentence.";
    server
        .sessions()
        .await
        .set_system_messages(pb::SetSystemMessagesRequest {
            session_id: id.clone(),
            system_messages: vec![pb::Message {
                role: pb::Role::System as i32,
                content: system.into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect("system messages");
    let question = |n: usize| format!("Question {n}: where is parcel {}?", n * 17);
    for n in 0..TURNS {
        chat.exec(ask(&id, &question(n))).await.expect("a turn");
    }
    let cost = |role: &str, content: &str| {
        let role = match role {
            "user" => Role::User,
            "system" => Role::System,
            _ => Role::Assistant,
        };
        Encoding::O200k.message(&NewMessage::text(role, content))
    };
    let requests = model.requests().await;
    let mut cut = 0;
    for (n, request) in requests.iter().enumerate() {
        let sent = request.roles_and_contents();
        assert_eq!(sent[0].1, system);
        let history = sent.len() - 2;
        let used: u32 =
            sent.iter().map(|(r, c)| cost(r, c)).sum::<u32>() + REPLY_PRIMING + ANSWER_ROOM;
        assert!(
            used <= CONTEXT,
            "turn {n}: {used} tokens with the answer's room"
        );
        if history < 2 * n {
            cut += 1;
            // The message before the window would not have fitted.
            let earlier = 2 * n - history - 1;
            let (role, content) = if earlier % 2 == 0 {
                ("user", question(earlier / 2))
            } else {
                ("assistant", "Your parcel is on its way.".to_string())
            };
            assert!(
                used + cost(role, &content) > CONTEXT,
                "turn {n}: one more fits"
            );
        }
    }
    assert!(cut > 20, "the context cut the history on most turns: {cut}");

    // A smaller budget in the request wins over the context's.
    let mut request = ask(&id, &question(TURNS));
    request.max_history_tokens = 60;
    chat.exec(request).await.expect("a turn");
    let sent = model.requests().await.pop().unwrap().roles_and_contents();
    let history: u32 = sent[1..sent.len() - 1]
        .iter()
        .map(|(r, c)| cost(r, c))
        .sum();
    assert!(history <= 60 && history > 0, "{history} tokens of history");
}

fn history_of(turns: usize) -> Vec<pb::Message> {
    (0..turns)
        .flat_map(|n| {
            [
                common::user(&format!("Question {n} about parcel {}", n * 31)),
                common::message(
                    pb::Role::Assistant,
                    &format!("Answer {n}: it left the depot on day {n}."),
                ),
            ]
        })
        .collect()
}

/// CompactSession: the oldest messages summarised by the model, the summary kept in the
/// state beside every message, budgeted reads and turns sending "summary + recent", and
/// two concurrent compactions storing one summary.
#[tokio::test]
async fn compaction_keeps_a_summary_beside_every_message() {
    let delayed = |text: &str| {
        Reply::Delayed(
            Duration::from_millis(300),
            Box::new(Reply::Text(text.into())),
        )
    };
    let model = ScriptedModel::start(vec![
        Reply::Text("The customer asked about parcels 0 to 7; all left the depot.".into()),
        Reply::Text("Parcel 42 is on its way.".into()),
        delayed("first summary"),
        delayed("second summary"),
    ])
    .await;
    let (server, mut chat) = start(chat_config(&model), &memory()).await;
    let mut sessions = server.sessions().await;
    let id = unique("compact");
    sessions
        .append_messages(pb::AppendMessagesRequest {
            session_id: id.clone(),
            messages: history_of(10),
            ..Default::default()
        })
        .await
        .expect("history");
    let budget = 150;
    let compact = |session: &str, max_tokens: u32| pb::CompactSessionRequest {
        session_id: session.to_string(),
        max_tokens,
        provider: String::new(),
    };
    let first = chat
        .compact_session(compact(&id, budget))
        .await
        .expect("compact")
        .into_inner();
    assert!(first.compacted);
    let through = first.through_seq;
    assert!((1..20).contains(&through), "{first:?}");
    let asked = model.requests().await[0].roles_and_contents();
    assert_eq!(asked[0].0, "system");
    assert!(
        asked[0]
            .1
            .starts_with("You summarise a customer-service conversation")
    );
    assert!(
        asked[1].1.starts_with(&format!("Messages 1 to {through}:")),
        "{}",
        asked[1].1
    );

    // Every message is still there; a budgeted read is the summary and what follows it.
    let all = sessions
        .get_session(pb::GetSessionRequest {
            session_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.session.unwrap().messages.len(), 20);
    let window = sessions
        .get_session(pb::GetSessionRequest {
            session_id: id.clone(),
            window: Some(pb::get_session_request::Window::MaxTokens(budget)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let summary = window.summary.expect("the window says it holds a summary");
    assert_eq!(
        (summary.text.as_str(), summary.through_seq),
        (first.summary.as_str(), through)
    );
    let seqs: Vec<u64> = window
        .session
        .unwrap()
        .messages
        .iter()
        .map(|m| m.seq)
        .collect();
    assert!(
        !seqs.is_empty() && seqs.iter().all(|&s| s > through),
        "{seqs:?}"
    );
    assert!(
        window.tokens <= budget && window.tokens > summary.tokens,
        "{}",
        window.tokens
    );

    // Nothing left to summarise: no model call, the same summary.
    let again = chat
        .compact_session(compact(&id, 1_000_000))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.compacted);
    assert_eq!(
        (again.summary, again.through_seq),
        (first.summary.clone(), through)
    );
    assert_eq!(model.requests().await.len(), 1);

    // A turn sends the summary, then only messages after it.
    let mut request = ask(&id, "And parcel 42?");
    request.max_history_tokens = budget;
    chat.exec(request).await.expect("a turn");
    let sent = model.requests().await[1].roles_and_contents();
    assert_eq!(sent[0].0, "system");
    assert!(
        sent[0]
            .1
            .contains(&format!("(messages 1 to {through}): {}", first.summary)),
        "{}",
        sent[0].1
    );
    assert!(!sent.iter().any(|(_, c)| c == "Question 0 about parcel 0"));

    // Two compactions at once store one summary.
    let other = unique("compact-race");
    sessions
        .append_messages(pb::AppendMessagesRequest {
            session_id: other.clone(),
            messages: history_of(10),
            ..Default::default()
        })
        .await
        .expect("history");
    let (mut a, mut b) = (chat.clone(), chat.clone());
    let (ra, rb) = tokio::join!(
        a.compact_session(compact(&other, budget)),
        b.compact_session(compact(&other, budget))
    );
    let (ra, rb) = (ra.unwrap().into_inner(), rb.unwrap().into_inner());
    assert_eq!(ra.compacted as u8 + rb.compacted as u8, 1, "{ra:?} {rb:?}");
    assert_eq!(ra.summary, rb.summary, "both report the one stored");
}
