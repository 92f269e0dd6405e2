//! GetSession's token-budgeted window on every backend: the most recent messages that fit,
//! tool-safe, with the system messages counted when asked, and the tokens reported.

use crate::common::{SidecarProcess, message, user};
use crate::watch::{backend_vars, serving, unique};
use csai_sidecar::domain::{NewMessage, Role};
use csai_sidecar::grpc::pb;
use csai_sidecar::grpc::pb::session_store_client::SessionStoreClient;
use csai_sidecar::tokens::Encoding;
use tonic::Code;
use tonic::transport::Channel;

/// What the sidecar counts for a stored message (the rule the unit tests prove against
/// the tokenizer's own figures).
fn cost(m: &pb::Message) -> u32 {
    let role = match pb::Role::try_from(m.role).unwrap() {
        pb::Role::User => Role::User,
        pb::Role::Assistant => Role::Assistant,
        pb::Role::Tool => Role::Tool,
        _ => Role::System,
    };
    let mut body = NewMessage::text(role, &m.content);
    body.tool_call_id = (!m.tool_call_id.is_empty()).then(|| m.tool_call_id.clone());
    body.tool_calls = m
        .tool_calls
        .iter()
        .map(|c| {
            let f = c.function.clone().unwrap_or_default();
            csai_sidecar::domain::ToolCall {
                id: c.id.clone(),
                kind: "function".into(),
                function: csai_sidecar::domain::FunctionCall {
                    name: f.name,
                    arguments: f.arguments,
                },
                index: 0,
            }
        })
        .collect();
    Encoding::O200k.message(&body)
}

async fn window(
    client: &mut SessionStoreClient<Channel>,
    id: &str,
    budget: u32,
    count_system: bool,
) -> (Vec<u64>, u32) {
    let response = client
        .get_session(pb::GetSessionRequest {
            session_id: id.into(),
            window: Some(pb::get_session_request::Window::MaxTokens(budget)),
            count_system_messages: count_system,
            model: "gpt-4o".into(),
            ..Default::default()
        })
        .await
        .expect("a budgeted read")
        .into_inner();
    let seqs = response
        .session
        .unwrap()
        .messages
        .iter()
        .map(|m| m.seq)
        .collect();
    (seqs, response.tokens)
}

async fn budgets_pick_what_fits(client: &mut SessionStoreClient<Channel>) {
    let id = unique("tokens");
    // 60 turns, then a tool exchange at the very end: seq 121 calls, 122 and 123 answer.
    let mut history = Vec::new();
    for n in 0..60 {
        history.push(user(&format!(
            "Question {n}: where is my parcel number {}?",
            n * 7919
        )));
        history.push(message(
            pb::Role::Assistant,
            &format!("Answer {n}: it ships on day {n}."),
        ));
    }
    let mut call = message(pb::Role::Assistant, "");
    call.tool_calls = vec![pb::ToolCall {
        id: "call_1".into(),
        function: Some(pb::FunctionCall {
            name: "lookup_order".into(),
            arguments: "{\"order_id\": 7}".into(),
        }),
        ..Default::default()
    }];
    let mut result = message(pb::Role::Tool, "{\"status\": \"shipped\"}");
    result.tool_call_id = "call_1".into();
    let mut second = result.clone();
    second.content = "{\"eta\": \"tomorrow\"}".into();
    history.extend([call, result, second]);
    for chunk in history.chunks(50) {
        client
            .append_messages(pb::AppendMessagesRequest {
                session_id: id.clone(),
                messages: chunk.to_vec(),
                ..Default::default()
            })
            .await
            .expect("append");
    }
    let stored = client
        .get_session(pb::GetSessionRequest {
            session_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    let costs: Vec<u32> = stored.messages.iter().map(cost).collect();
    let suffix = |from: usize| costs[from..].iter().sum::<u32>();

    // A budget that ends inside the history: the longest suffix that fits.
    for budget in [50, 400, 1000, 2500] {
        let from = (0..costs.len()).find(|&i| suffix(i) <= budget).unwrap();
        let expected: Vec<u64> = stored.messages[from..].iter().map(|m| m.seq).collect();
        assert_eq!(
            window(client, &id, budget, false).await,
            (expected, suffix(from)),
            "budget {budget}"
        );
    }
    // A budget that would start at the tool results (the call does not fit): they go too.
    let just_results = suffix(121);
    let (seqs, tokens) = window(client, &id, just_results, false).await;
    assert!(seqs.is_empty(), "no tool result without its call: {seqs:?}");
    assert_eq!(tokens, 0);
    let with_call = suffix(120);
    assert_eq!(
        window(client, &id, with_call, false).await,
        (vec![121, 122, 123], with_call)
    );
    // Everything fits.
    let (seqs, tokens) = window(client, &id, 1_000_000, false).await;
    assert_eq!((seqs.len(), tokens), (123, suffix(0)));

    // System messages count first when asked.
    let system = message(
        pb::Role::System,
        "You are the parcel bot of a shop; be brief and kind.",
    );
    let system_cost = cost(&system);
    client
        .set_system_messages(pb::SetSystemMessagesRequest {
            session_id: id.clone(),
            system_messages: vec![system],
            ..Default::default()
        })
        .await
        .expect("system messages");
    let budget = 1000;
    let from = (0..costs.len())
        .find(|&i| suffix(i) + system_cost <= budget)
        .unwrap();
    let expected: Vec<u64> = stored.messages[from..].iter().map(|m| m.seq).collect();
    assert_eq!(
        window(client, &id, budget, true).await,
        (expected, suffix(from) + system_cost)
    );

    let status = client
        .get_session(pb::GetSessionRequest {
            session_id: id.clone(),
            window: Some(pb::get_session_request::Window::MaxTokens(0)),
            ..Default::default()
        })
        .await
        .expect_err("max_tokens 0");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("max_tokens"), "{status:?}");
}

async fn on(backend: &str) {
    let (_sidecar, channel) = SidecarProcess::spawn(&backend_vars(backend)).await;
    budgets_pick_what_fits(&mut serving(channel).await).await;
}

#[tokio::test]
async fn memory_windows_by_tokens() {
    on("memory").await;
}

#[tokio::test]
async fn sqlite_windows_by_tokens() {
    on("sqlite").await;
}

#[tokio::test]
async fn redis_windows_by_tokens() {
    on("redis").await;
}

#[tokio::test]
async fn redis_cluster_windows_by_tokens() {
    on("redis-cluster").await;
}

#[tokio::test]
async fn postgres_windows_by_tokens() {
    on("postgres").await;
}

#[tokio::test]
async fn mongo_windows_by_tokens() {
    on("mongo").await;
}

#[tokio::test]
async fn dynamo_windows_by_tokens() {
    on("dynamo").await;
}
