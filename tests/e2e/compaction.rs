//! A 500-turn conversation under a token budget with automatic compaction, on every
//! backend: every request fits, every message is kept, and the model is asked for exactly
//! the summaries the documented rule calls for, usage adds up; then CompactSession by RPC. MongoDB and
//! DynamoDB hold 200 turns: their Python test servers take 80 and 190 ms a turn, and CI
//! runs every test in under 30 minutes.

use crate::common::chat_suite::ask;
use crate::common::llm_server::{Recorded, Reply, ScriptedModel};
use crate::common::{SERVING, SidecarProcess, wait_for_status};
use crate::watch::{backend_vars, unique};
use csai_sidecar::chat::compaction::{PROMPT, Summary};
use csai_sidecar::domain::{NewMessage, Role};
use csai_sidecar::grpc::pb;
use csai_sidecar::tokens::Encoding;

const BUDGET: u32 = 400;
const EVERY: u32 = 200;
/// Every answer of the model, summaries included.
const ANSWER: &str = "Noted: parcels on their way.";

fn question(n: usize) -> String {
    format!("Question {n}: where is parcel {}?", n * 17)
}

fn cost(role: Role, content: &str) -> u32 {
    Encoding::O200k.message(&NewMessage::text(role, content))
}

/// What docs/chat.md#compaction says, step by step: a turn sends the summary and the most
/// recent history that fits the budget beside it; once the history left out of a turn
/// reaches EVERY tokens, the oldest messages after the summary are summarised so that the
/// rest fits the budget beside the previous summary. Returns the number of summaries and
/// the seq the last one reaches.
fn expected_summaries(turns: usize) -> (usize, u64) {
    let mut costs: Vec<u32> = Vec::new();
    let (mut through, mut summary_tokens, mut summaries) = (0usize, 0u32, 0usize);
    // The most recent of costs[from..] that fit `room`: the index of the first kept.
    let fit = |costs: &[u32], from: usize, room: u32| {
        let mut start = costs.len();
        let mut spent = 0;
        while start > from && spent + costs[start - 1] <= room {
            spent += costs[start - 1];
            start -= 1;
        }
        start
    };
    for n in 0..turns {
        let room = BUDGET - summary_tokens;
        let kept = fit(&costs, through, room);
        let left_out: u32 = costs[through..kept].iter().sum();
        costs.push(cost(Role::User, &question(n)));
        costs.push(cost(Role::Assistant, ANSWER));
        if left_out >= EVERY {
            let cut = fit(&costs, through, room);
            if cut > through {
                through = cut;
                summaries += 1;
                summary_tokens = Summary {
                    text: ANSWER.into(),
                    through_seq: through as u64,
                }
                .tokens(Encoding::O200k);
            }
        }
    }
    (summaries, through as u64)
}

fn is_summary(request: &Recorded) -> bool {
    request.roles_and_contents()[0].1 == PROMPT
}

async fn converse(backend: &str, turns: usize) {
    let model = ScriptedModel::start(vec![Reply::Text(ANSWER.into()); 2 * turns]).await;
    let mut vars = backend_vars(backend);
    vars.extend([
        ("CSAI_CHAT_BASE_URL", model.base_url.clone()),
        ("CSAI_CHAT_MODEL", "gpt-4o".to_string()),
        ("CSAI_CHAT_HISTORY_WINDOW", "0".to_string()),
        ("CSAI_CHAT_HISTORY_TOKENS", BUDGET.to_string()),
        ("CSAI_CHAT_COMPACT_AFTER_TOKENS", EVERY.to_string()),
    ]);
    let (_sidecar, channel) = SidecarProcess::spawn(&vars).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    wait_for_status(&mut health, "csai.v1.Chat", SERVING).await;
    let mut chat = pb::chat_client::ChatClient::new(channel.clone());
    let id = unique("compaction");
    for n in 0..turns {
        chat.exec(ask(&id, &question(n)))
            .await
            .unwrap_or_else(|e| panic!("{backend}: turn {n}: {e:?}"));
    }

    let requests = model.requests().await;
    let sent_turns: Vec<&Recorded> = requests.iter().filter(|r| !is_summary(r)).collect();
    let summaries = requests.len() - sent_turns.len();
    assert_eq!(sent_turns.len(), turns, "{backend}");
    let (expected, through) = expected_summaries(turns);
    assert_eq!(summaries, expected, "{backend}: summarisation calls");
    for (n, request) in sent_turns.iter().enumerate() {
        let sent = request.roles_and_contents();
        // Everything but the turn's own user message: the summary and the history.
        let history: u32 = sent[..sent.len() - 1]
            .iter()
            .map(|(role, content)| {
                let role = match role.as_str() {
                    "user" => Role::User,
                    "system" => Role::System,
                    _ => Role::Assistant,
                };
                cost(role, content)
            })
            .sum();
        assert!(
            history <= BUDGET,
            "{backend}: turn {n} sent {history} tokens"
        );
        assert_eq!(sent.last().unwrap().1, question(n), "{backend}: turn {n}");
    }

    let mut sessions = pb::session_store_client::SessionStoreClient::new(channel.clone());
    let window = sessions
        .get_session(pb::GetSessionRequest {
            session_id: id.clone(),
            window: Some(pb::get_session_request::Window::MaxTokens(BUDGET)),
            model: "gpt-4o".into(),
            ..Default::default()
        })
        .await
        .expect("a budgeted read")
        .into_inner();
    let summary = window.summary.expect("a summary");
    assert_eq!(summary.through_seq, through, "{backend}");
    let session = window.session.expect("a session");
    assert_eq!(
        session.message_count,
        2 * turns as u64,
        "{backend}: all kept"
    );
    let first_seq = session.messages.first().map_or(0, |m| m.seq);
    assert!(
        first_seq > through,
        "{backend}: only messages after the summary"
    );
    assert!(
        window.tokens <= BUDGET,
        "{backend}: {} tokens",
        window.tokens
    );
    let first = sessions
        .get_session(pb::GetSessionRequest {
            session_id: id.clone(),
            window: Some(pb::get_session_request::Window::LastN(2 * turns as u32)),
            ..Default::default()
        })
        .await
        .expect("the whole transcript")
        .into_inner()
        .session
        .unwrap();
    assert_eq!(first.messages.len(), 2 * turns, "{backend}");
    // The provider's usage of every turn, added up (the scripted model reports 15 tokens,
    // 4 of them cached, 2 reasoning; summaries are not messages and add nothing).
    let usage = sessions
        .get_session(pb::GetSessionRequest {
            session_id: id.clone(),
            window: Some(pb::get_session_request::Window::LastN(1)),
            include_usage: true,
            ..Default::default()
        })
        .await
        .expect("usage")
        .into_inner()
        .usage_total
        .expect("usage_total");
    let n = turns as u64;
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens
        ),
        (10 * n, 5 * n, 15 * n),
        "{backend}"
    );
    assert_eq!(
        (usage.cached_tokens, usage.reasoning_tokens),
        (4 * n, 2 * n)
    );
    let stats = sessions
        .get_stats(pb::GetStatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    let whole = stats.usage_total.expect("the store's usage total");
    assert!(whole.total_tokens >= 15 * n, "{backend}: {whole:?}");
    assert_eq!(first.messages[0].content, question(0), "{backend}");

    // By RPC, with a smaller budget: one more summary, further on.
    let compacted = chat
        .compact_session(pb::CompactSessionRequest {
            session_id: id.clone(),
            max_tokens: BUDGET / 2,
            provider: String::new(),
        })
        .await
        .expect("CompactSession")
        .into_inner();
    assert!(compacted.compacted, "{backend}");
    assert!(compacted.through_seq > through, "{backend}");
    assert_eq!(compacted.summary, ANSWER);
    assert_eq!(
        model.requests().await.len(),
        requests.len() + 1,
        "{backend}"
    );
}

#[tokio::test]
async fn memory_compacts_a_long_conversation() {
    converse("memory", 500).await;
}

#[tokio::test]
async fn sqlite_compacts_a_long_conversation() {
    converse("sqlite", 500).await;
}

#[tokio::test]
async fn redis_compacts_a_long_conversation() {
    converse("redis", 500).await;
}

#[tokio::test]
async fn redis_cluster_compacts_a_long_conversation() {
    converse("redis-cluster", 500).await;
}

#[tokio::test]
async fn postgres_compacts_a_long_conversation() {
    converse("postgres", 500).await;
}

#[tokio::test]
async fn mongo_compacts_a_long_conversation() {
    converse("mongo", 200).await;
}

#[tokio::test]
async fn dynamo_compacts_a_long_conversation() {
    converse("dynamo", 200).await;
}
