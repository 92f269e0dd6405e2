//! Replays: a retried turn (same request_id) answers from what the first one stored,
//! without calling the model again.

use super::*;

/// Tool rounds of the turn up to the end of the step with this request_id, as the step
/// first reported them: the whole turn's, not only the step's.
fn turn_rounds(messages: &[Message], request_id: &str) -> u32 {
    let Some(last) = messages.iter().rposition(|m| {
        m.body
            .metadata
            .get(META_REQUEST_ID)
            .and_then(|v| v.as_str())
            == Some(request_id)
    }) else {
        return 0;
    };
    let start = window::turn_start(&messages[..=last]).unwrap_or(0);
    messages[start..=last]
        .iter()
        .filter(|m| !m.body.tool_calls.is_empty())
        .count() as u32
}

/// The outcome of an earlier step with this request_id, from the stored messages of its
/// turn (the step's own and the turn's earlier steps, for `tool_rounds`).
pub(super) fn replay(messages: &[Message], request_id: &str, version: u64) -> Option<TurnOutcome> {
    let tagged = |m: &&Message| {
        m.body
            .metadata
            .get(META_REQUEST_ID)
            .and_then(|v| v.as_str())
            == Some(request_id)
    };
    let step: Vec<&Message> = messages.iter().filter(tagged).collect();
    let assistant = step.iter().rev().find(|m| m.body.role == Role::Assistant)?;
    let answered: Vec<&str> = step
        .iter()
        .filter_map(|m| m.body.tool_call_id.as_deref())
        .collect();
    let mut pending: Vec<ToolCall> = Vec::new();
    for call in &assistant.body.tool_calls {
        if !answered.contains(&call.id.as_str())
            && !pending.iter().any(|p| key_of(p) == key_of(call))
        {
            pending.push(call.clone());
        }
    }
    let mut usage = Usage::default();
    for message in &step {
        if let Some(u) = message.body.usage {
            usage += u;
        }
    }
    let text = |key: &str| {
        assistant
            .body
            .metadata
            .get(key)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    Some(TurnOutcome {
        assistant: (*assistant).clone(),
        pending,
        usage,
        finish_reason: text(META_FINISH_REASON),
        tool_rounds: turn_rounds(messages, request_id),
        version,
        provider: text(META_PROVIDER),
        first_seq: step.first().map_or(0, |m| m.seq),
        last_seq: step.last().map_or(0, |m| m.seq),
    })
}
