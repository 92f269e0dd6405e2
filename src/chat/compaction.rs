//! Compaction of long conversations: the oldest part of the history, in what a model is
//! sent, replaced by a summary the model wrote. The summary is kept beside the messages,
//! never instead of them, in the session's state under [`SUMMARY_KEY`], with the seqs it
//! covers (1 through `through_seq`); the messages stay readable by seq, export and backup.

use crate::domain::{JsonObject, Message, NewMessage, Role};
use crate::tokens::{self, Encoding};
use serde_json::{Value, json};

/// The state key of a session's summary.
pub const SUMMARY_KEY: &str = "csai.summary";

/// What the model is told when it writes a summary.
pub const PROMPT: &str = "You summarise a customer-service conversation for the assistant that \
continues it, which will see your summary instead of these messages. Keep every fact it \
needs: who the customer is and what they said about themselves, order and ticket numbers, \
amounts and dates, what was asked, what tools returned, what was promised, what is resolved \
and what is still open. Merge the previous summary, if there is one, with the new messages. \
Write plain prose of at most 250 words, in the language of the conversation, and nothing else.";

/// A session's summary.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub text: String,
    /// The summary covers the messages with seqs 1 through this.
    pub through_seq: u64,
}

impl Summary {
    /// The summary kept in `state`, if any.
    pub fn of_state(state: &JsonObject) -> Option<Summary> {
        let value = state.get(SUMMARY_KEY)?;
        Some(Summary {
            text: value.get("text")?.as_str()?.to_string(),
            through_seq: value.get("through_seq")?.as_u64()?,
        })
    }

    /// Its value under [`SUMMARY_KEY`].
    pub fn to_state(&self) -> Value {
        json!({ "text": self.text, "through_seq": self.through_seq })
    }

    /// How a model is sent it: a system message before the history after it.
    pub fn as_message(&self) -> NewMessage {
        NewMessage::text(
            Role::System,
            format!(
                "Summary of the conversation before the messages that follow (messages 1 to {}): {}",
                self.through_seq, self.text
            ),
        )
    }

    /// Its tokens in a request, as [`as_message`](Self::as_message).
    pub fn tokens(&self, encoding: Encoding) -> u32 {
        encoding.message(&self.as_message())
    }
}

/// Where a summary of `messages` (in seq order, all after the current summary) must end
/// so that the most recent ones, which fit `budget` tokens, stay: the index of the first
/// message kept. Tool results stay with their call: the cut never falls inside a tool
/// exchange. 0 means nothing needs summarising.
pub fn cut(messages: &[Message], budget: u32, encoding: Encoding) -> usize {
    let costs: Vec<u32> = messages.iter().map(|m| encoding.message(&m.body)).collect();
    // Results whose call would be summarised go into the summary with it.
    tokens::fit(&costs, 0, 0, budget, |i| {
        messages[i].body.role == Role::Tool
    })
    .start
}

/// The request that asks the model for a summary of `messages`, merged with `previous`.
pub fn request(previous: Option<&Summary>, messages: &[Message]) -> Vec<NewMessage> {
    let mut text = String::new();
    if let Some(previous) = previous {
        text.push_str(&format!(
            "Previous summary (messages 1 to {}):\n{}\n\n",
            previous.through_seq, previous.text
        ));
    }
    if let (Some(first), Some(last)) = (messages.first(), messages.last()) {
        text.push_str(&format!("Messages {} to {}:\n", first.seq, last.seq));
    }
    for message in messages {
        let body = &message.body;
        let mut line = format!("{}: {}", body.role.as_str(), body.content);
        for call in &body.tool_calls {
            line.push_str(&format!(
                " [calls {}({})]",
                call.function.name, call.function.arguments
            ));
        }
        text.push_str(&line);
        text.push('\n');
    }
    vec![
        NewMessage::text(Role::System, PROMPT),
        NewMessage::text(Role::User, text),
    ]
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

    #[test]
    fn the_cut_keeps_what_fits_and_never_splits_a_tool_exchange() {
        let mut call = NewMessage::text(Role::Assistant, "");
        call.tool_calls = vec![ToolCall {
            id: "c1".into(),
            kind: "function".into(),
            function: FunctionCall {
                name: "lookup".into(),
                arguments: "{}".into(),
            },
            index: 0,
        }];
        let mut result = NewMessage::text(Role::Tool, "{\"status\":\"shipped\"}");
        result.tool_call_id = Some("c1".into());
        let messages = stored(vec![
            NewMessage::text(Role::User, "Where is my order?"),
            call,
            result.clone(),
            result,
            NewMessage::text(Role::Assistant, "It has shipped."),
        ]);
        let e = Encoding::O200k;
        let last = e.message(&messages[4].body);
        assert_eq!(cut(&messages, last, e), 4);
        // A budget that would keep only the results keeps none of them.
        let results = e.message(&messages[2].body) + e.message(&messages[3].body);
        assert_eq!(cut(&messages, last + results, e), 4);
        assert_eq!(cut(&messages, 1_000_000, e), 0);
        let summary = Summary {
            text: "The customer asked about order 7.".into(),
            through_seq: 3,
        };
        let mut state = JsonObject::new();
        state.insert(SUMMARY_KEY.into(), summary.to_state());
        assert_eq!(Summary::of_state(&state), Some(summary.clone()));
        let asked = request(Some(&summary), &messages[3..]);
        assert!(
            asked[1]
                .content
                .contains("Previous summary (messages 1 to 3)")
        );
        assert!(asked[1].content.contains("Messages 4 to 5:"));
    }
}
