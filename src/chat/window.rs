//! What a turn sends the model: system messages, a tool-safe history window, the turn.

use crate::chat::completion::ToolSpec;
use crate::domain::{Message, NewMessage, Role, tool_safe_start};
use crate::tokens::{self, Encoding};

/// Index of the first message of the last turn: the last user message.
pub fn turn_start(messages: &[Message]) -> Option<usize> {
    messages.iter().rposition(|m| m.body.role == Role::User)
}

/// The last `window` messages of `before` (0 = all), grown backwards so tool results keep
/// their assistant message, with unanswered tool calls left out: a turn abandoned while
/// waiting for tool results must not make the provider reject every later request.
pub fn history(before: &[Message], window: u32) -> Vec<NewMessage> {
    let start = if window == 0 {
        0
    } else {
        tool_safe_start(before, window as usize)
    };
    let messages: Vec<NewMessage> = before[start..].iter().map(|m| m.body.clone()).collect();
    answered_calls_only(messages)
}

/// The most recent messages of `history` whose tokens add up to at most `budget`: the
/// oldest go first, and tool results left without their call go with it. Also the tokens
/// of the messages left out.
pub fn fit_tokens(
    mut history: Vec<NewMessage>,
    budget: u32,
    encoding: Encoding,
) -> (Vec<NewMessage>, u32) {
    let costs: Vec<u32> = history.iter().map(|m| encoding.message(m)).collect();
    let fit = tokens::fit(&costs, 0, 0, budget, |i| history[i].role == Role::Tool);
    history.drain(..fit.start);
    (history, costs[..fit.start].iter().sum())
}

/// The tokens a turn's history (its summary included) may take: the `requested` budget
/// (0 = none) and what the model's `context` (0 = not configured) leaves after `rest`,
/// the other tokens of the request and the room for the answer. None: no budget.
pub fn history_budget(requested: u32, context: u32, rest: u32) -> Option<u32> {
    let left = (context > 0).then(|| context.saturating_sub(rest));
    match (requested, left) {
        (0, left) => left,
        (requested, None) => Some(requested),
        (requested, Some(left)) => Some(requested.min(left)),
    }
}

/// The tokens of the tools' definitions, counted as their JSON (name, description,
/// parameters): a little more than OpenAI bills for them, which is the safe side of a
/// context budget.
pub fn tools_tokens(tools: &[ToolSpec], encoding: Encoding) -> u32 {
    tools
        .iter()
        .map(|tool| {
            let parameters = serde_json::to_string(&tool.parameters).unwrap_or_default();
            encoding.count(&tool.name)
                + encoding.count(&tool.description)
                + encoding.count(&parameters)
        })
        .sum()
}

/// Drops tool calls that no tool message right after them answers, assistant messages
/// left with nothing, and tool messages that answer no call before them.
fn answered_calls_only(messages: Vec<NewMessage>) -> Vec<NewMessage> {
    let mut kept: Vec<NewMessage> = Vec::with_capacity(messages.len());
    let mut open_calls: Vec<String> = Vec::new();
    for (i, mut message) in messages.iter().cloned().enumerate() {
        match message.role {
            Role::Assistant if !message.tool_calls.is_empty() => {
                let answered: Vec<&str> = messages[i + 1..]
                    .iter()
                    .take_while(|m| m.role == Role::Tool)
                    .filter_map(|m| m.tool_call_id.as_deref())
                    .collect();
                message
                    .tool_calls
                    .retain(|call| answered.contains(&call.id.as_str()));
                open_calls = message.tool_calls.iter().map(|c| c.id.clone()).collect();
                if message.tool_calls.is_empty() && message.content.is_empty() {
                    continue;
                }
            }
            Role::Tool => {
                let id = message.tool_call_id.as_deref().unwrap_or_default();
                if !open_calls.iter().any(|open| open == id) {
                    continue;
                }
            }
            _ => open_calls.clear(),
        }
        kept.push(message);
    }
    kept
}

/// The messages of one model call, in the order the provider needs them.
pub fn prompt(
    system: &[Message],
    additional_system: &[NewMessage],
    history: &[NewMessage],
    turn: &[NewMessage],
) -> Vec<NewMessage> {
    system
        .iter()
        .map(|m| m.body.clone())
        .chain(additional_system.iter().cloned())
        .chain(history.iter().cloned())
        .chain(turn.iter().cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{FunctionCall, ToolCall};
    use std::time::SystemTime;

    fn stored(messages: Vec<NewMessage>) -> Vec<Message> {
        messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| m.stored(i as u64 + 1, SystemTime::now()))
            .collect()
    }

    fn calling(ids: &[&str]) -> NewMessage {
        let mut message = NewMessage::text(Role::Assistant, "");
        message.tool_calls = ids
            .iter()
            .map(|id| ToolCall {
                id: id.to_string(),
                kind: "function".into(),
                function: FunctionCall {
                    name: "f".into(),
                    arguments: "{}".into(),
                },
                index: 0,
            })
            .collect();
        message
    }

    fn result(id: &str) -> NewMessage {
        let mut message = NewMessage::text(Role::Tool, "ok");
        message.tool_call_id = Some(id.into());
        message
    }

    #[test]
    fn a_window_never_starts_inside_a_tool_exchange() {
        let messages = stored(vec![
            NewMessage::text(Role::User, "q1"),
            calling(&["a", "b"]),
            result("a"),
            result("b"),
            NewMessage::text(Role::Assistant, "answer"),
        ]);
        let window = history(&messages, 2);
        assert_eq!(
            window.len(),
            4,
            "grown back to the assistant that called: {window:?}"
        );
        assert_eq!(window[0].tool_calls.len(), 2);
        assert_eq!(history(&messages, 0).len(), 5);
    }

    #[test]
    fn unanswered_tool_calls_are_left_out() {
        let messages = stored(vec![
            NewMessage::text(Role::User, "q1"),
            calling(&["a", "b"]),
            result("a"),
            NewMessage::text(Role::User, "q2, abandoning b"),
            calling(&["c"]),
        ]);
        let window = history(&messages, 0);
        let roles: Vec<Role> = window.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [Role::User, Role::Assistant, Role::Tool, Role::User],
            "{window:?}"
        );
        assert_eq!(window[1].tool_calls.len(), 1);
        assert_eq!(window[1].tool_calls[0].id, "a");
    }

    #[test]
    fn the_smaller_budget_wins_and_a_full_context_leaves_none() {
        assert_eq!(history_budget(0, 0, 500), None);
        assert_eq!(history_budget(300, 0, 500), Some(300));
        assert_eq!(history_budget(0, 1000, 400), Some(600));
        assert_eq!(history_budget(300, 1000, 400), Some(300));
        assert_eq!(history_budget(900, 1000, 400), Some(600));
        assert_eq!(history_budget(0, 1000, 1400), Some(0));
    }

    #[test]
    fn the_turn_starts_at_the_last_user_message() {
        let messages = stored(vec![
            NewMessage::text(Role::User, "q1"),
            NewMessage::text(Role::Assistant, "a1"),
            NewMessage::text(Role::User, "q2"),
            calling(&["x"]),
        ]);
        assert_eq!(turn_start(&messages), Some(2));
        assert_eq!(turn_start(&[]), None);
    }
}
