//! The tool-calling loop's bookkeeping: which calls a turn already answered (the tool
//! cache), the tool messages of results, and what the model is sent next.

use super::*;

pub(super) fn key_of(call: &ToolCall) -> CallKey {
    (call.function.name.clone(), call.function.arguments.clone())
}

/// Answers of the tool calls in `turn`, by function and arguments.
pub(super) fn answered_calls(turn: &[NewMessage]) -> HashMap<CallKey, (String, bool)> {
    let mut keys: HashMap<&str, CallKey> = HashMap::new();
    let mut answers = HashMap::new();
    for message in turn {
        for call in &message.tool_calls {
            keys.insert(&call.id, key_of(call));
        }
        if let Some(key) = message.tool_call_id.as_deref().and_then(|id| keys.get(id)) {
            let is_error = message.metadata.get(META_IS_ERROR) == Some(&true.into());
            answers.insert(key.clone(), (message.content.clone(), is_error));
        }
    }
    answers
}

/// Tool messages for `calls`, in their order, from the answers known so far.
pub(super) fn tool_messages(
    calls: &[ToolCall],
    answers: &HashMap<CallKey, (String, bool)>,
) -> Vec<NewMessage> {
    calls
        .iter()
        .filter_map(|call| {
            let (content, is_error) = answers.get(&key_of(call))?;
            let mut message = NewMessage::text(Role::Tool, content.clone());
            message.tool_call_id = Some(call.id.clone());
            if *is_error {
                message.metadata.insert(META_IS_ERROR.into(), true.into());
            }
            Some(message)
        })
        .collect()
}

/// The tool messages that answer the open turn's pending calls with `results`.
pub(super) fn continue_with(
    session: &SessionId,
    turn: &[NewMessage],
    results: Vec<ToolResult>,
    cache: &mut HashMap<CallKey, (String, bool)>,
) -> Result<Vec<NewMessage>, TurnError> {
    let Some(last_call) = turn.iter().rposition(|m| !m.tool_calls.is_empty()) else {
        return Err(no_pending(session));
    };
    let answered: Vec<&str> = turn[last_call + 1..]
        .iter()
        .filter_map(|m| m.tool_call_id.as_deref())
        .collect();
    let pending: Vec<&ToolCall> = turn[last_call]
        .tool_calls
        .iter()
        .filter(|c| !answered.contains(&c.id.as_str()))
        .collect();
    if pending.is_empty() {
        return Err(no_pending(session));
    }
    for (i, result) in results.iter().enumerate() {
        let Some(call) = pending.iter().find(|c| c.id == result.tool_call_id) else {
            return Err(TurnError::Invalid(format!(
                "tool_results[{i}].tool_call_id: {:?} is not a pending tool call of session {session}; pending: {}",
                result.tool_call_id,
                pending
                    .iter()
                    .map(|c| c.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        cache.insert(key_of(call), (result.content.clone(), result.is_error));
    }
    let missing: Vec<&str> = pending
        .iter()
        .filter(|c| !cache.contains_key(&key_of(c)))
        .map(|c| c.id.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(TurnError::Invalid(format!(
            "tool_results: the pending tool calls {} have no result; answer every pending call in one request",
            missing.join(", ")
        )));
    }
    let pending: Vec<ToolCall> = pending.into_iter().cloned().collect();
    Ok(tool_messages(&pending, cache))
}
