//! Token counts of messages as OpenAI-family models count them: the tiktoken encodings
//! `o200k_base` and `cl100k_base` (chosen by model name, else by configuration), an
//! estimate for other models, and a cache so that a stored message is counted once.

use crate::domain::{Message, NewMessage};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::UNIX_EPOCH;

/// Tokens every message of a chat request costs beyond its fields (OpenAI's rule for its
/// chat models: `<|start|>role ... <|end|>`).
pub const PER_MESSAGE: u32 = 3;
/// Tokens a `name` costs beyond its text.
pub const PER_NAME: u32 = 1;
/// Tokens that prime the reply, once per request.
pub const REPLY_PRIMING: u32 = 3;

/// How text becomes tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// GPT-4o, GPT-4.1, GPT-5, the o-series.
    O200k,
    /// GPT-4, GPT-3.5.
    Cl100k,
    /// Other models: one token per 4 bytes of UTF-8, rounded up (close for English prose
    /// on most BPE tokenizers; an over-estimate for code, an under-estimate for CJK).
    Estimate,
}

impl Encoding {
    /// The encoding a configuration names: `o200k_base`, `cl100k_base` or `estimate`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "o200k_base" => Some(Encoding::O200k),
            "cl100k_base" => Some(Encoding::Cl100k),
            "estimate" => Some(Encoding::Estimate),
            _ => None,
        }
    }

    /// Its configuration name.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::O200k => "o200k_base",
            Encoding::Cl100k => "cl100k_base",
            Encoding::Estimate => "estimate",
        }
    }

    /// The encoding of `model` when its name says it (OpenAI's models), else `default`.
    pub fn for_model(model: &str, default: Encoding) -> Encoding {
        let model = model.rsplit('/').next().unwrap_or(model);
        let o200k = [
            "gpt-4o",
            "gpt-4.1",
            "gpt-4.5",
            "gpt-5",
            "o1",
            "o3",
            "o4",
            "chatgpt-4o",
        ];
        if o200k.iter().any(|prefix| model.starts_with(prefix)) {
            Encoding::O200k
        } else if model.starts_with("gpt-4") || model.starts_with("gpt-3.5") {
            Encoding::Cl100k
        } else {
            default
        }
    }

    /// The tokens of `text`.
    pub fn count(self, text: &str) -> u32 {
        let tokens = match self {
            Encoding::O200k => tiktoken_rs::o200k_base_singleton()
                .encode_ordinary(text)
                .len(),
            Encoding::Cl100k => tiktoken_rs::cl100k_base_singleton()
                .encode_ordinary(text)
                .len(),
            Encoding::Estimate => text.len().div_ceil(4),
        };
        tokens.min(u32::MAX as usize) as u32
    }

    /// The tokens `message` costs in a chat request: its role, content, name, tool calls
    /// (function names and arguments) and the tool call it answers, plus [`PER_MESSAGE`].
    pub fn message(self, message: &NewMessage) -> u32 {
        let mut tokens =
            PER_MESSAGE + self.count(message.role.as_str()) + self.count(&message.content);
        if let Some(name) = &message.name {
            tokens += PER_NAME + self.count(name);
        }
        for call in &message.tool_calls {
            tokens += self.count(&call.function.name) + self.count(&call.function.arguments);
        }
        if let Some(id) = &message.tool_call_id {
            tokens += self.count(id);
        }
        tokens
    }
}

/// The most recent of a window whose message `i` costs `costs[i]` that fit `budget`
/// tokens beside `spent` already counted, never before `floor`.
#[derive(Debug, PartialEq, Eq)]
pub struct Fit {
    /// The first message kept.
    pub start: usize,
    /// `spent` plus the kept messages' tokens.
    pub tokens: u32,
    /// A message before `start` (and after `floor`) did not fit.
    pub exhausted: bool,
}

/// Walks back from the end while the messages fit; a window never starts with tool
/// results (`is_tool`), which go with their call when it does not fit.
pub fn fit(
    costs: &[u32],
    floor: usize,
    spent: u32,
    budget: u32,
    is_tool: impl Fn(usize) -> bool,
) -> Fit {
    let mut tokens = spent;
    let mut start = costs.len();
    let mut exhausted = spent > budget;
    while !exhausted && start > floor {
        if tokens + costs[start - 1] > budget {
            exhausted = true;
        } else {
            tokens += costs[start - 1];
            start -= 1;
        }
    }
    while start < costs.len() && is_tool(start) {
        tokens -= costs[start];
        start += 1;
    }
    Fit {
        start,
        tokens,
        exhausted,
    }
}

/// Entries the cache keeps before it forgets the older half.
const CACHE_ENTRIES: usize = 1 << 20;

/// What identifies a stored message for its count: whose session (a hash of its stored
/// id), which seq, when it was stored and how long its content is (a replaced history has
/// new times), and the encoding.
type Key = (u64, u64, u128, usize, Encoding);

/// Counts of stored messages, so that the window of a long conversation is not tokenized
/// again on every read. Two generations: when the young one is full, the old one is
/// dropped and the young one becomes old, so memory stays bounded and recent counts stay.
#[derive(Default)]
pub struct TokenCache {
    generations: Mutex<(HashMap<Key, u32>, HashMap<Key, u32>)>,
}

impl TokenCache {
    /// The tokens of each of `messages` of the session stored as `session`: one lock to
    /// look them up, the ones not known counted outside it.
    pub fn messages(&self, encoding: Encoding, session: &str, messages: &[Message]) -> Vec<u32> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let session = BuildHasherDefault::<DefaultHasher>::default().hash_one(session);
        let keys: Vec<Key> = messages
            .iter()
            .map(|m| {
                let stored = m
                    .create_time
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros());
                (session, m.seq, stored, m.body.content.len(), encoding)
            })
            .collect();
        let mut counts: Vec<Option<u32>> = {
            let generations = self.generations.lock();
            keys.iter()
                .map(|key| {
                    generations
                        .0
                        .get(key)
                        .or_else(|| generations.1.get(key))
                        .copied()
                })
                .collect()
        };
        let mut counted = Vec::new();
        for (i, count) in counts.iter_mut().enumerate() {
            if count.is_none() {
                let tokens = encoding.message(&messages[i].body);
                *count = Some(tokens);
                counted.push((keys[i], tokens));
            }
        }
        if !counted.is_empty() {
            let mut generations = self.generations.lock();
            for (key, tokens) in counted {
                if generations.0.len() >= CACHE_ENTRIES / 2 {
                    generations.1 = std::mem::take(&mut generations.0);
                }
                generations.0.insert(key, tokens);
            }
        }
        counts.into_iter().map(|c| c.unwrap_or_default()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Role;

    fn message(role: Role, name: Option<&str>, content: &str) -> NewMessage {
        NewMessage {
            name: name.map(String::from),
            ..NewMessage::text(role, content)
        }
    }

    /// OpenAI's cookbook ("How to count tokens with tiktoken"): these six messages are 129
    /// prompt tokens for gpt-4 / gpt-3.5-turbo (cl100k_base) and 124 for gpt-4o
    /// (o200k_base), as the API's own usage reports them.
    #[test]
    fn counts_match_the_tokenizers_own_on_the_cookbook_example() {
        let messages = [
            message(
                Role::System,
                None,
                "You are a helpful, pattern-following assistant that translates corporate jargon into plain English.",
            ),
            message(
                Role::System,
                Some("example_user"),
                "New synergies will help drive top-line growth.",
            ),
            message(
                Role::System,
                Some("example_assistant"),
                "Things working well together will increase revenue.",
            ),
            message(
                Role::System,
                Some("example_user"),
                "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage.",
            ),
            message(
                Role::System,
                Some("example_assistant"),
                "Let's talk later when we're less busy about how to do better.",
            ),
            message(
                Role::User,
                None,
                "This late pivot means we don't have time to boil the ocean for the client deliverable.",
            ),
        ];
        let prompt = |encoding: Encoding| {
            messages.iter().map(|m| encoding.message(m)).sum::<u32>() + REPLY_PRIMING
        };
        assert_eq!(prompt(Encoding::Cl100k), 129);
        assert_eq!(prompt(Encoding::O200k), 124);
        assert_eq!(Encoding::Cl100k.count("tiktoken is great!"), 6);
        assert_eq!(Encoding::Estimate.count("12345"), 2);
    }

    #[test]
    fn models_choose_their_encoding() {
        for (model, encoding) in [
            ("gpt-4o-mini", Encoding::O200k),
            ("openai/gpt-4.1", Encoding::O200k),
            ("o3-mini", Encoding::O200k),
            ("gpt-4-turbo", Encoding::Cl100k),
            ("gpt-3.5-turbo", Encoding::Cl100k),
            ("deepseek-chat", Encoding::Estimate),
        ] {
            assert_eq!(
                Encoding::for_model(model, Encoding::Estimate),
                encoding,
                "{model}"
            );
        }
    }
}
