//! End-to-end tests of csai.v1.SessionStore over a real socket: every RPC and error code.

use crate::common;

use crate::common::{TestServer, message, seconds, test_config, user};
use csai_sidecar::grpc::pb;
use csai_sidecar::store::memory::MemoryLimits;
use prost_types::value::Kind;
use std::time::{Duration, SystemTime};
use tonic::Code;

fn append(session_id: &str, messages: Vec<pb::Message>) -> pb::AppendMessagesRequest {
    pb::AppendMessagesRequest {
        session_id: session_id.to_string(),
        messages,
        ..Default::default()
    }
}

fn number(n: f64) -> prost_types::Value {
    prost_types::Value {
        kind: Some(Kind::NumberValue(n)),
    }
}

fn text(s: &str) -> prost_types::Value {
    prost_types::Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

fn object(fields: &[(&str, prost_types::Value)]) -> prost_types::Struct {
    prost_types::Struct {
        fields: fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    }
}

fn to_system_time(ts: &Option<prost_types::Timestamp>) -> SystemTime {
    SystemTime::try_from(ts.expect("timestamp")).expect("valid timestamp")
}

#[tokio::test]
async fn append_get_and_windows() {
    let server = TestServer::start().await;
    let mut client = server.sessions().await;
    let before = SystemTime::now();
    let first = client
        .append_messages(append(
            "s1",
            vec![user("hi"), message(pb::Role::Assistant, "hello")],
        ))
        .await
        .expect("append")
        .into_inner();
    assert_eq!(first.seqs, vec![1, 2]);
    assert!(!first.deduplicated);
    let expire = to_system_time(&first.expire_time);
    let ttl = expire.duration_since(before).expect("expiry in the future");
    assert!(
        ttl >= Duration::from_secs(12 * 3600) && ttl < Duration::from_secs(12 * 3600 + 5),
        "default TTL is 12h, got {ttl:?}"
    );

    let second = client
        .append_messages(pb::AppendMessagesRequest {
            ttl: Some(seconds(60)),
            ..append("s1", vec![user("how are you?")])
        })
        .await
        .expect("append")
        .into_inner();
    assert_eq!(second.seqs, vec![3]);
    assert!(second.version > first.version);

    let session = client
        .get_session(pb::GetSessionRequest {
            session_id: "s1".into(),
            window: None,
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner()
        .session
        .expect("session");
    assert_eq!(session.session_id, "s1");
    assert_eq!(session.message_count, 3);
    assert_eq!(session.version, second.version);
    let contents: Vec<_> = session
        .messages
        .iter()
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(contents, vec!["hi", "hello", "how are you?"]);
    assert_eq!(session.messages[1].role, pb::Role::Assistant as i32);
    assert!(session.messages.iter().all(|m| m.create_time.is_some()));
    let remaining = to_system_time(&session.expire_time)
        .duration_since(SystemTime::now())
        .expect("future");
    assert!(
        remaining <= Duration::from_secs(60),
        "the append's TTL applies: {remaining:?}"
    );

    let last = client
        .get_session(pb::GetSessionRequest {
            session_id: "s1".into(),
            window: Some(pb::get_session_request::Window::LastN(1)),
            ..Default::default()
        })
        .await
        .expect("get last 1")
        .into_inner()
        .session
        .expect("session");
    assert_eq!(last.messages.len(), 1);
    assert_eq!(last.messages[0].seq, 3);
    assert_eq!(last.message_count, 3);

    let after = client
        .get_session(pb::GetSessionRequest {
            session_id: "s1".into(),
            window: Some(pb::get_session_request::Window::AfterSeq(1)),
            ..Default::default()
        })
        .await
        .expect("get after 1")
        .into_inner()
        .session
        .expect("session");
    assert_eq!(
        after.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![2, 3]
    );
}

#[tokio::test]
async fn tool_calls_round_trip_and_window_keeps_them_together() {
    let server = TestServer::start().await;
    let mut client = server.sessions().await;
    let assistant = pb::Message {
        tool_calls: vec![pb::ToolCall {
            id: "call_1".into(),
            r#type: "function".into(),
            function: Some(pb::FunctionCall {
                name: "get_order".into(),
                arguments: r#"{"id":"A-1"}"#.into(),
            }),
            index: 0,
        }],
        model: "deepseek-chat".into(),
        usage: Some(pb::Usage {
            prompt_tokens: 10,
            completion_tokens: 5,
            total_tokens: 15,
            cached_tokens: 4,
            reasoning_tokens: 2,
            cache_miss_tokens: 6,
        }),
        reasoning_content: "look it up".into(),
        metadata: Some(object(&[
            ("latency_ms", number(812.0)),
            ("ratio", number(0.5)),
        ])),
        ..message(pb::Role::Assistant, "")
    };
    let tool = pb::Message {
        tool_call_id: "call_1".into(),
        ..message(pb::Role::Tool, r#"{"status":"shipped"}"#)
    };
    let named = pb::Message {
        name: "Budi".into(),
        ..user("where is my order?")
    };
    client
        .append_messages(append("tools", vec![named, assistant.clone(), tool]))
        .await
        .expect("append");
    let window = client
        .get_session(pb::GetSessionRequest {
            session_id: "tools".into(),
            window: Some(pb::get_session_request::Window::LastN(1)),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner()
        .session
        .expect("session");
    assert_eq!(
        window.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![2, 3],
        "the tool result must come with its assistant message"
    );
    let stored = &window.messages[0];
    assert_eq!(stored.tool_calls, assistant.tool_calls);
    assert_eq!(stored.model, "deepseek-chat");
    assert_eq!(stored.usage, assistant.usage);
    assert_eq!(stored.reasoning_content, "look it up");
    assert_eq!(stored.metadata, assistant.metadata);
    assert_eq!(window.messages[1].tool_call_id, "call_1");
}

#[tokio::test]
async fn replace_system_state_touch_delete() {
    let server = TestServer::start().await;
    let mut client = server.sessions().await;
    client
        .append_messages(append("s", vec![user("old")]))
        .await
        .expect("append");
    let replaced = client
        .replace_messages(pb::ReplaceMessagesRequest {
            session_id: "s".into(),
            messages: vec![user("new1"), user("new2")],
            ..Default::default()
        })
        .await
        .expect("replace")
        .into_inner();
    client
        .set_system_messages(pb::SetSystemMessagesRequest {
            session_id: "s".into(),
            system_messages: vec![message(pb::Role::System, "You are helpful.")],
            expected_version: Some(replaced.version),
            ..Default::default()
        })
        .await
        .expect("system");
    let state = client
        .update_state(pb::UpdateStateRequest {
            session_id: "s".into(),
            state: Some(object(&[("step", text("greet")), ("count", number(1.0))])),
            ..Default::default()
        })
        .await
        .expect("state")
        .into_inner();
    assert_eq!(state.state.as_ref().map(|s| s.fields.len()), Some(2));
    let merged = client
        .update_state(pb::UpdateStateRequest {
            session_id: "s".into(),
            state: Some(object(&[
                ("step", text("pay")),
                (
                    "count",
                    prost_types::Value {
                        kind: Some(Kind::NullValue(0)),
                    },
                ),
            ])),
            mode: pb::StateUpdateMode::Merge as i32,
            ..Default::default()
        })
        .await
        .expect("merge")
        .into_inner();
    assert_eq!(merged.state, Some(object(&[("step", text("pay"))])));

    let session = client
        .get_session(pb::GetSessionRequest {
            session_id: "s".into(),
            window: None,
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner()
        .session
        .expect("session");
    assert_eq!(
        session.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(session.system_messages[0].content, "You are helpful.");
    assert_eq!(session.state, Some(object(&[("step", text("pay"))])));
    assert_eq!(session.version, merged.version);

    let touched = client
        .touch_session(pb::TouchSessionRequest {
            session_id: "s".into(),
            ttl: Some(seconds(7 * 24 * 3600)),
        })
        .await
        .expect("touch")
        .into_inner();
    assert_eq!(touched.version, session.version, "touch keeps the version");
    let remaining = to_system_time(&touched.expire_time)
        .duration_since(SystemTime::now())
        .expect("future");
    assert!(remaining > Duration::from_secs(6 * 24 * 3600));

    let deleted = client
        .delete_session(pb::DeleteSessionRequest {
            session_id: "s".into(),
            expected_version: Some(session.version),
        })
        .await
        .expect("delete")
        .into_inner();
    assert!(deleted.deleted);
    let again = client
        .delete_session(pb::DeleteSessionRequest {
            session_id: "s".into(),
            expected_version: None,
        })
        .await
        .expect("delete again")
        .into_inner();
    assert!(!again.deleted);
}

#[tokio::test]
async fn idempotent_append_over_grpc() {
    let server = TestServer::start().await;
    let mut client = server.sessions().await;
    let request = pb::AppendMessagesRequest {
        request_id: "retry-me".into(),
        ..append("idem", vec![user("once")])
    };
    let first = client
        .append_messages(request.clone())
        .await
        .expect("first")
        .into_inner();
    let retry = client
        .append_messages(request)
        .await
        .expect("retry")
        .into_inner();
    assert!(retry.deduplicated);
    assert_eq!(retry.seqs, first.seqs);
    let stats = client
        .get_stats(pb::GetStatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.total_messages, 1);
}

#[tokio::test]
async fn list_sessions_pages_and_stats() {
    let server = TestServer::start().await;
    let mut client = server.sessions().await;
    for n in 0..12 {
        client
            .append_messages(append(
                &format!("tenant-a/{n:02}"),
                vec![user("x"), user("y")],
            ))
            .await
            .expect("append");
    }
    client
        .append_messages(append("tenant-b/1", vec![user("z")]))
        .await
        .expect("append");
    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_sessions(pb::ListSessionsRequest {
                page_size: 5,
                page_token: token.clone(),
                id_prefix: "tenant-a/".into(),
            })
            .await
            .expect("list")
            .into_inner();
        assert!(page.sessions.len() <= 5);
        ids.extend(page.sessions.iter().map(|s| s.session_id.clone()));
        assert!(page.sessions.iter().all(|s| s.message_count == 2));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let expected: Vec<String> = (0..12).map(|n| format!("tenant-a/{n:02}")).collect();
    assert_eq!(ids, expected);

    let all = client
        .list_sessions(pb::ListSessionsRequest::default())
        .await
        .expect("list all")
        .into_inner();
    assert_eq!(all.sessions.len(), 13);
    assert!(all.next_page_token.is_empty());

    let stats = client
        .get_stats(pb::GetStatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.backend, "memory");
    assert_eq!(stats.active_sessions, 13);
    assert_eq!(stats.total_messages, 25);
    assert!(stats.approximate_bytes > 13 * 256, "{stats:?}");
}

async fn expect_code<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    mentions: &str,
) {
    match result {
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            assert!(
                status.message().contains(mentions),
                "message {:?} should mention {mentions:?}",
                status.message()
            );
        }
        Ok(response) => panic!("expected {code:?}, got {response:?}"),
    }
}

#[tokio::test]
async fn not_found_and_aborted() {
    let server = TestServer::start().await;
    let mut client = server.sessions().await;
    expect_code(
        client
            .get_session(pb::GetSessionRequest {
                session_id: "nobody".into(),
                window: None,
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "nobody",
    )
    .await;
    expect_code(
        client
            .touch_session(pb::TouchSessionRequest {
                session_id: "nobody".into(),
                ttl: None,
            })
            .await,
        Code::NotFound,
        "nobody",
    )
    .await;

    let created = client
        .append_messages(append("occ", vec![user("a")]))
        .await
        .expect("append")
        .into_inner();
    expect_code(
        client
            .append_messages(pb::AppendMessagesRequest {
                expected_version: Some(created.version + 1),
                ..append("occ", vec![user("b")])
            })
            .await,
        Code::Aborted,
        "re-read the session",
    )
    .await;
    expect_code(
        client
            .append_messages(pb::AppendMessagesRequest {
                expected_version: Some(0),
                ..append("occ", vec![user("b")])
            })
            .await,
        Code::Aborted,
        "version mismatch",
    )
    .await;
    expect_code(
        client
            .delete_session(pb::DeleteSessionRequest {
                session_id: "occ".into(),
                expected_version: Some(99),
            })
            .await,
        Code::Aborted,
        "expected_version is 99",
    )
    .await;
    let stats = client
        .get_stats(pb::GetStatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.total_messages, 1, "failed writes changed nothing");
}

#[tokio::test]
async fn invalid_arguments_name_the_field() {
    let server = TestServer::start().await;
    let mut client = server.sessions().await;
    let cases: Vec<(pb::AppendMessagesRequest, &str)> = vec![
        (append("", vec![user("x")]), "session_id: is required"),
        (
            append(&"x".repeat(257), vec![user("x")]),
            "session_id: is 257 bytes",
        ),
        (
            append("bad\u{7}id", vec![user("x")]),
            "session_id: must not contain control",
        ),
        (append("s", vec![]), "messages: at least one"),
        (
            append("s", vec![pb::Message::default()]),
            "messages[0].role: is required",
        ),
        (
            append(
                "s",
                vec![
                    user("ok"),
                    pb::Message {
                        role: 42,
                        ..Default::default()
                    },
                ],
            ),
            "messages[1].role: unknown role 42",
        ),
        (
            append("s", vec![message(pb::Role::Tool, "result")]),
            "messages[0].tool_call_id: is required",
        ),
        (
            append(
                "s",
                vec![pb::Message {
                    tool_calls: vec![pb::ToolCall::default()],
                    ..user("x")
                }],
            ),
            "messages[0].tool_calls: only assistant",
        ),
        (
            append(
                "s",
                vec![pb::Message {
                    tool_calls: vec![pb::ToolCall {
                        id: "c".into(),
                        ..Default::default()
                    }],
                    ..message(pb::Role::Assistant, "")
                }],
            ),
            "messages[0].tool_calls[0].function: is required",
        ),
        (
            append("s", vec![user(&"x".repeat((1 << 20) + 1))]),
            "messages[0].content: 1048577 bytes",
        ),
        (
            append("s", (0..1001).map(|_| user("x")).collect()),
            "messages: 1001 messages is more than the limit of 1000",
        ),
        (
            pb::AppendMessagesRequest {
                ttl: Some(seconds(0)),
                ..append("s", vec![user("x")])
            },
            "ttl: must be between 1ms and 365d",
        ),
        (
            pb::AppendMessagesRequest {
                ttl: Some(seconds(400 * 24 * 3600)),
                ..append("s", vec![user("x")])
            },
            "ttl: must be between",
        ),
        (
            pb::AppendMessagesRequest {
                ttl: Some(seconds(-5)),
                ..append("s", vec![user("x")])
            },
            "ttl: must be between",
        ),
        (
            pb::AppendMessagesRequest {
                request_id: "r".repeat(129),
                ..append("s", vec![user("x")])
            },
            "request_id: at most 128 bytes",
        ),
        (
            append(
                "s",
                vec![pb::Message {
                    metadata: Some(object(&[("bad", number(f64::NAN))])),
                    ..user("x")
                }],
            ),
            "messages[0].metadata.bad: NaN",
        ),
    ];
    for (request, mentions) in cases {
        expect_code(
            client.append_messages(request).await,
            Code::InvalidArgument,
            mentions,
        )
        .await;
    }

    expect_code(
        client
            .get_session(pb::GetSessionRequest {
                session_id: "s".into(),
                window: Some(pb::get_session_request::Window::LastN(0)),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "last_n",
    )
    .await;
    expect_code(
        client
            .list_sessions(pb::ListSessionsRequest {
                page_size: 1001,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "page_size: 1001",
    )
    .await;
    expect_code(
        client
            .list_sessions(pb::ListSessionsRequest {
                page_token: "garbage".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "page_token",
    )
    .await;
    expect_code(
        client
            .update_state(pb::UpdateStateRequest {
                session_id: "s".into(),
                mode: 7,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "mode: unknown value 7",
    )
    .await;
    expect_code(
        client
            .replace_messages(pb::ReplaceMessagesRequest {
                session_id: "s".into(),
                messages: vec![pb::Message::default()],
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "messages[0].role",
    )
    .await;
    expect_code(
        client
            .set_system_messages(pb::SetSystemMessagesRequest {
                session_id: "s".into(),
                system_messages: vec![pb::Message::default()],
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "system_messages[0].role",
    )
    .await;
    // A prefix longer than any id would match nothing: refused by every RPC that takes one.
    let long_prefix = "p".repeat(257);
    let refused = "id_prefix: at most 256 bytes are allowed";
    let list = pb::ListSessionsRequest {
        id_prefix: long_prefix.clone(),
        ..Default::default()
    };
    expect_code(
        client.list_sessions(list).await,
        Code::InvalidArgument,
        refused,
    )
    .await;
    let export = pb::ExportSessionsRequest {
        id_prefix: long_prefix.clone(),
    };
    expect_code(
        client.export_sessions(export).await,
        Code::InvalidArgument,
        refused,
    )
    .await;
    let watch = pb::WatchSessionsRequest {
        id_prefix: long_prefix,
        ..Default::default()
    };
    expect_code(
        client.watch_sessions(watch).await,
        Code::InvalidArgument,
        refused,
    )
    .await;
    let stats = client
        .get_stats(pb::GetStatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(
        stats.active_sessions, 0,
        "no invalid request may store anything"
    );
}

#[tokio::test]
async fn a_full_store_refuses_with_resource_exhausted() {
    let limits = MemoryLimits {
        max_sessions: Some(2),
        max_bytes: None,
    };
    let server = TestServer::start_with(test_config(), limits).await;
    let mut client = server.sessions().await;
    for id in ["a", "b"] {
        client
            .append_messages(append(id, vec![user("x")]))
            .await
            .expect("append");
    }
    expect_code(
        client.append_messages(append("c", vec![user("x")])).await,
        Code::ResourceExhausted,
        "max_sessions = 2",
    )
    .await;
    // Existing sessions still take writes, and deleting one makes room.
    client
        .append_messages(append("a", vec![user("y")]))
        .await
        .expect("append to existing");
    client
        .delete_session(pb::DeleteSessionRequest {
            session_id: "b".into(),
            expected_version: None,
        })
        .await
        .expect("delete");
    client
        .append_messages(append("c", vec![user("x")]))
        .await
        .expect("room again");
}

#[tokio::test]
async fn oversized_grpc_messages_are_refused() {
    let config = csai_sidecar::config::Config {
        max_grpc_message_size: 64 << 10,
        ..test_config()
    };
    let server = TestServer::start_with(config, MemoryLimits::default()).await;
    let mut client = server.sessions().await;
    let result = client
        .append_messages(append("big", vec![user(&"x".repeat(100 << 10))]))
        .await;
    match result {
        Err(status) => assert_eq!(status.code(), Code::OutOfRange, "{status:?}"),
        Ok(_) => panic!("a 100 KiB request must exceed a 64 KiB limit"),
    }
}

#[tokio::test]
async fn records_round_trip_on_the_memory_store() {
    let server = TestServer::start().await;
    common::exercise_records(&mut server.sessions().await, "memory-records").await;
}

/// Regression: a tool result that answered no call was accepted, and a session of them
/// made every tool-safe read walk back through all of them.
#[tokio::test]
async fn tool_results_must_answer_a_call_before_them() {
    let server = TestServer::start().await;
    let mut client = server.sessions().await;
    let calling = |id: &str| pb::Message {
        tool_calls: vec![pb::ToolCall {
            id: id.into(),
            r#type: "function".into(),
            function: Some(pb::FunctionCall {
                name: "lookup".into(),
                arguments: "{}".into(),
            }),
            index: 0,
        }],
        ..message(pb::Role::Assistant, "")
    };
    let result = |id: &str| pb::Message {
        tool_call_id: id.into(),
        ..message(pb::Role::Tool, "ok")
    };
    expect_code(
        client
            .append_messages(append("orphans", vec![user("hi"), result("call_x")]))
            .await,
        Code::FailedPrecondition,
        "messages[1].tool_call_id",
    )
    .await;
    // The call in the same request, or earlier in the session, is what a result answers.
    client
        .append_messages(append(
            "answered",
            vec![calling("call_1"), result("call_1")],
        ))
        .await
        .expect("call and result together");
    client
        .append_messages(append("answered", vec![calling("call_2")]))
        .await
        .expect("a call");
    client
        .append_messages(append("answered", vec![result("call_2")]))
        .await
        .expect("its result in a later append");
    expect_code(
        client
            .append_messages(append("answered", vec![result("call_9")]))
            .await,
        Code::FailedPrecondition,
        "call_9",
    )
    .await;
    expect_code(
        client
            .replace_messages(pb::ReplaceMessagesRequest {
                session_id: "answered".into(),
                messages: vec![result("call_1"), calling("call_1")],
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "messages[0].tool_call_id",
    )
    .await;
}

/// Regression: learning data and security logs ignored `memory_max_bytes` (thirty 1 MB
/// security logs were accepted under a 4 MiB limit) and GetStats did not count them.
#[tokio::test]
async fn records_count_toward_the_memory_limit_and_the_stats() {
    let limits = MemoryLimits {
        max_sessions: None,
        max_bytes: Some(4 << 20),
    };
    let server = TestServer::start_with(test_config(), limits).await;
    let mut client = server.sessions().await;
    let empty = client
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .approximate_bytes;
    let feedback = |i: usize| pb::RecordFeedbackRequest {
        query: format!("question {i}"),
        response: "r".repeat(500_000),
        ..Default::default()
    };
    client
        .record_feedback(feedback(0))
        .await
        .expect("one record fits");
    let one = client
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .approximate_bytes;
    assert!(
        one >= empty + 500_000,
        "GetStats counts the record: {empty} -> {one}"
    );
    let mut accepted = 1;
    let refused = loop {
        match client.record_feedback(feedback(accepted)).await {
            Ok(_) => accepted += 1,
            Err(status) => break status,
        }
        assert!(accepted < 30, "thirty 500 KB records under a 4 MiB limit");
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("max_bytes"), "{refused:?}");
    assert!(
        (7..=8).contains(&accepted),
        "{accepted} records of 500 KB fit in 4 MiB"
    );
}

/// The codes the README's error table gives for the edge cases a client author hit.
#[tokio::test]
async fn edge_requests_get_the_documented_codes() {
    let server = TestServer::start().await;
    let mut client = server.sessions().await;
    client
        .append_messages(append(
            "edges",
            vec![user("hi"), message(pb::Role::Assistant, "hello")],
        ))
        .await
        .expect("append");
    let expect = |result: Result<_, tonic::Status>, code: Code, text: &str| {
        let status = result.expect_err("refused");
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(text), "{}", status.message());
    };

    let mut stray = message(pb::Role::User, "a user message with a call id");
    stray.tool_call_id = "call_1".into();
    expect(
        client
            .append_messages(append("edges", vec![stray]))
            .await
            .map(|_| ()),
        Code::InvalidArgument,
        "messages[0].tool_call_id: is only allowed on tool messages",
    );
    expect(
        client
            .get_session(pb::GetSessionRequest {
                session_id: "edges".into(),
                window: Some(pb::get_session_request::Window::LastN(0)),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        Code::InvalidArgument,
        "last_n: must be at least 1",
    );
    let feedback = |seq: u64| pb::RecordFeedbackRequest {
        session_id: "edges".into(),
        message_seq: seq,
        feedback_score: 1.0,
        ..Default::default()
    };
    expect(
        client.record_feedback(feedback(1)).await.map(|_| ()),
        Code::InvalidArgument,
        "message_seq: message 1 is a user message, not an assistant message",
    );
    expect(
        client.record_feedback(feedback(9)).await.map(|_| ()),
        Code::NotFound,
        "session \"edges\" has no message 9 (it has 2)",
    );
    let recorded = client
        .record_feedback(feedback(2))
        .await
        .expect("feedback on the assistant message")
        .into_inner();
    assert_eq!(
        (recorded.query.as_str(), recorded.response.as_str()),
        ("hi", "hello")
    );
}

/// History can be imported: a record keeps the caller's `create_time` (within the
/// retention), lists under that time, and expires `record_retention` after it; a time in
/// the future or past the retention is refused.
#[tokio::test]
async fn records_keep_the_callers_time() {
    let server = TestServer::start().await;
    let mut client = server.sessions().await;
    let two_days_ago = SystemTime::now() - Duration::from_secs(2 * 86_400);
    let stamp = |time: SystemTime| Some(prost_types::Timestamp::from(time));
    let feedback = client
        .record_feedback(pb::RecordFeedbackRequest {
            query: "where is my order?".into(),
            response: "shipped".into(),
            feedback_score: 1.0,
            create_time: stamp(two_days_ago),
            ..Default::default()
        })
        .await
        .expect("feedback from two days ago")
        .into_inner();
    let kept = SystemTime::try_from(feedback.create_time.expect("create_time")).unwrap();
    let drift = kept
        .duration_since(two_days_ago)
        .unwrap_or_else(|e| e.duration());
    assert!(
        drift < Duration::from_millis(1),
        "kept {kept:?}, sent {two_days_ago:?}"
    );

    let listed = |days: u32| pb::ListLearningDataRequest {
        range: Some(pb::TimeRange {
            days,
            ..Default::default()
        }),
        ..Default::default()
    };
    let ids = |response: pb::ListLearningDataResponse| -> Vec<String> {
        response.records.into_iter().map(|r| r.id).collect()
    };
    let last_three_days = client
        .list_learning_data(listed(3))
        .await
        .unwrap()
        .into_inner();
    assert!(ids(last_three_days).contains(&feedback.id));
    let last_day = client
        .list_learning_data(listed(1))
        .await
        .unwrap()
        .into_inner();
    assert!(!ids(last_day).contains(&feedback.id));

    let log = client
        .record_security_log(pb::RecordSecurityLogRequest {
            user_id: "u-1".into(),
            message: "hi".into(),
            allowed: true,
            create_time: stamp(two_days_ago),
            ..Default::default()
        })
        .await
        .expect("a security log from two days ago")
        .into_inner();
    assert!(
        SystemTime::try_from(log.create_time.unwrap())
            .unwrap()
            .duration_since(two_days_ago)
            .unwrap_or_else(|e| e.duration())
            < Duration::from_millis(1)
    );

    let in_an_hour = SystemTime::now() + Duration::from_secs(3600);
    let forty_days_ago = SystemTime::now() - Duration::from_secs(40 * 86_400);
    for (time, problem) in [
        (in_an_hour, "is in the future"),
        (forty_days_ago, "is older than record_retention (30d)"),
    ] {
        expect_code(
            client
                .record_feedback(pb::RecordFeedbackRequest {
                    query: "q".into(),
                    create_time: stamp(time),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            &format!("create_time: {problem}"),
        )
        .await;
    }
}
