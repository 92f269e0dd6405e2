//! Domain types the stores speak: sessions, messages, windows, write options and outcomes.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::{Duration, SystemTime};

/// A JSON object: session state and message metadata.
pub type JsonObject = serde_json::Map<String, serde_json::Value>;

/// The key of a session. Validated by the service layer before it reaches a store.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionId(String);

impl SessionId {
    /// Wraps an already validated id.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Author of a message (OpenAI chat roles).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

impl Role {
    /// The OpenAI name of the role.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// One tool call of an assistant message (OpenAI's JSON shape).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionCall,
    #[serde(default)]
    pub index: u32,
}

/// The function a tool call invokes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// The JSON text of the arguments, as the model produced it.
    pub arguments: String,
}

/// Token usage of one completion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    /// Prompt tokens served from the provider's cache, where it reports them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached_tokens: u32,
    /// Completion tokens spent on reasoning, where the provider reports them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reasoning_tokens: u32,
    /// Prompt tokens the provider did not find in its cache, where it reports them
    /// (DeepSeek's `prompt_cache_miss_tokens`, which CS-AI keeps).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_miss_tokens: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The provider usage of many messages added up: a session's (CS-AI's
/// `session_total_usage`), kept by every backend beside the session's messages, and the
/// store's. Counted in u64: a store's total outgrows u32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageTotal {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
    #[serde(default)]
    pub cached_tokens: u64,
    #[serde(default)]
    pub reasoning_tokens: u64,
    #[serde(default)]
    pub cache_miss_tokens: u64,
}

impl UsageTotal {
    /// The names of its counters, in the order of [`counters`](Self::counters): its
    /// field names, which the backends also store them under.
    pub const NAMES: [&'static str; 6] = [
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cached_tokens",
        "reasoning_tokens",
        "cache_miss_tokens",
    ];

    /// The usage of `messages` added up.
    pub fn of<'a>(messages: impl IntoIterator<Item = &'a NewMessage>) -> Self {
        let mut total = UsageTotal::default();
        for usage in messages.into_iter().filter_map(|m| m.usage) {
            total += UsageTotal::from(usage);
        }
        total
    }

    /// Its six counters, in the order of the fields.
    pub fn counters(&self) -> [u64; 6] {
        [
            self.prompt_tokens,
            self.completion_tokens,
            self.total_tokens,
            self.cached_tokens,
            self.reasoning_tokens,
            self.cache_miss_tokens,
        ]
    }

    /// The total of six counters in the order of [`counters`](Self::counters).
    pub fn from_counters(c: [u64; 6]) -> Self {
        UsageTotal {
            prompt_tokens: c[0],
            completion_tokens: c[1],
            total_tokens: c[2],
            cached_tokens: c[3],
            reasoning_tokens: c[4],
            cache_miss_tokens: c[5],
        }
    }
}

impl From<Usage> for UsageTotal {
    fn from(u: Usage) -> Self {
        UsageTotal {
            prompt_tokens: u64::from(u.prompt_tokens),
            completion_tokens: u64::from(u.completion_tokens),
            total_tokens: u64::from(u.total_tokens),
            cached_tokens: u64::from(u.cached_tokens),
            reasoning_tokens: u64::from(u.reasoning_tokens),
            cache_miss_tokens: u64::from(u.cache_miss_tokens),
        }
    }
}

impl std::ops::AddAssign for UsageTotal {
    fn add_assign(&mut self, other: UsageTotal) {
        let (a, b) = (self.counters(), other.counters());
        *self = UsageTotal::from_counters(std::array::from_fn(|i| a[i].saturating_add(b[i])));
    }
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
        self.cached_tokens += other.cached_tokens;
        self.reasoning_tokens += other.reasoning_tokens;
        self.cache_miss_tokens += other.cache_miss_tokens;
    }
}

/// A message as the caller writes it: no seq or time yet.
///
/// Its JSON form (CS-AI's field names; absent fields omitted) is how backends store it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewMessage {
    pub role: Role,
    #[serde(default)]
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub metadata: JsonObject,
    /// When the message was first stored, set only by copies (import, restore, migrate,
    /// rotate-keys) so a message keeps its time through them; a store stamps every other
    /// message with its own clock. Never part of the stored JSON.
    #[serde(skip)]
    pub create_time: Option<SystemTime>,
}

impl NewMessage {
    /// A plain text message with nothing else set.
    pub fn text(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            name: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
            model: None,
            usage: None,
            reasoning_content: None,
            metadata: JsonObject::new(),
            create_time: None,
        }
    }

    /// Approximate bytes this message occupies, for stats and size limits.
    pub fn approx_bytes(&self) -> u64 {
        const FIXED: usize = 64;
        let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        let calls: usize = self
            .tool_calls
            .iter()
            .map(|c| {
                c.id.len() + c.kind.len() + c.function.name.len() + c.function.arguments.len() + 16
            })
            .sum();
        (FIXED
            + self.content.len()
            + opt(&self.name)
            + opt(&self.tool_call_id)
            + opt(&self.model)
            + opt(&self.reasoning_content)
            + calls) as u64
            + json_bytes(&self.metadata)
    }

    /// Turns the message into a stored one with its seq and time: the time it carries
    /// (a copy), else `now`.
    pub fn stored(mut self, seq: u64, now: SystemTime) -> Message {
        Message {
            seq,
            create_time: self.create_time.take().unwrap_or(now),
            body: self,
        }
    }

    /// The message of `stored`, carrying its time, for writing a copy of it.
    pub fn copy_of(stored: &Message) -> Self {
        Self {
            create_time: Some(stored.create_time),
            ..stored.body.clone()
        }
    }
}

/// A stored message: the caller's message plus the seq and time the store assigned.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// 1-based, gap-free position in the session.
    pub seq: u64,
    pub create_time: SystemTime,
    pub body: NewMessage,
}

/// Which messages a read returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Window {
    /// Every message.
    #[default]
    All,
    /// The last N messages, grown backwards so tool results keep their assistant message.
    LastN(u32),
    /// Messages with a seq greater than this.
    AfterSeq(u64),
}

impl Window {
    /// No message: a read of the session's header (version, counts, times, state).
    pub const HEADER: Window = Window::AfterSeq(i64::MAX as u64);
}

/// A session as read from a store (messages limited to the requested window).
#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    pub id: SessionId,
    pub messages: Vec<Message>,
    pub system_messages: Vec<Message>,
    pub state: JsonObject,
    pub version: u64,
    /// Messages in the whole session, which is also the seq of the last one.
    pub message_count: u64,
    /// The provider usage of all its messages.
    pub usage_total: UsageTotal,
    pub create_time: SystemTime,
    pub update_time: SystemTime,
    pub expire_time: SystemTime,
}

/// Options every write carries. The service layer fills in the TTL default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteOptions {
    /// Write only if the session is at this version; 0 means "must not exist".
    pub expected_version: Option<u64>,
    /// The session expires this long after the write.
    pub ttl: Duration,
}

impl WriteOptions {
    /// Unconditional write with this TTL.
    pub fn ttl(ttl: Duration) -> Self {
        Self {
            expected_version: None,
            ttl,
        }
    }
}

/// An append: messages plus options, and an optional idempotency key.
#[derive(Clone, Debug, PartialEq)]
pub struct Append {
    pub messages: Vec<NewMessage>,
    pub request_id: Option<String>,
    pub options: WriteOptions,
}

/// What an append did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Seq of the first appended message; the others follow consecutively.
    pub first_seq: u64,
    pub count: u64,
    pub version: u64,
    pub expire_time: SystemTime,
    /// True if a retried request_id was recognised and nothing was appended.
    pub deduplicated: bool,
}

impl AppendOutcome {
    /// The seqs of the appended messages, in order.
    pub fn seqs(&self) -> impl Iterator<Item = u64> + use<> {
        self.first_seq..self.first_seq + self.count
    }
}

/// What any other write did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteOutcome {
    pub version: u64,
    pub expire_time: SystemTime,
}

/// How a state update combines with the stored state.
#[derive(Clone, Debug, PartialEq)]
pub enum StateUpdate {
    Replace(JsonObject),
    /// Top-level keys overwrite; a null value removes the key.
    Merge(JsonObject),
}

impl StateUpdate {
    /// Applies the update to a stored state.
    pub fn apply(self, state: &mut JsonObject) {
        match self {
            StateUpdate::Replace(new) => *state = new,
            StateUpdate::Merge(patch) => {
                for (key, value) in patch {
                    if value.is_null() {
                        state.remove(&key);
                    } else {
                        state.insert(key, value);
                    }
                }
            }
        }
    }
}

/// Result of a state update.
#[derive(Clone, Debug, PartialEq)]
pub struct StateOutcome {
    pub write: WriteOutcome,
    pub state: JsonObject,
}

/// A page request of a listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub prefix: String,
    pub page_size: u32,
    /// The opaque token of the previous page, as the store produced it.
    pub page_token: Option<String>,
}

/// One session in a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSummary {
    pub id: SessionId,
    pub message_count: u64,
    pub usage_total: UsageTotal,
    pub version: u64,
    pub update_time: SystemTime,
    pub expire_time: SystemTime,
}

/// One page of a listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListPage {
    pub sessions: Vec<SessionSummary>,
    pub next_page_token: Option<String>,
}

/// Size of what a store holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub backend: String,
    pub active_sessions: u64,
    pub total_messages: u64,
    pub approximate_bytes: u64,
    /// Live learning records and security logs.
    pub learning_records: u64,
    pub security_logs: u64,
    /// The provider usage of the messages of live sessions.
    pub usage_total: UsageTotal,
}

/// Index of the first message of a tool-safe "last N" window over `messages`.
///
/// If the plain window would start with tool results, it grows backwards over them and
/// takes in the assistant message that called the tools: a provider rejects tool results
/// whose call is missing. `last_n = 0` is the empty window.
pub fn tool_safe_start(messages: &[Message], last_n: usize) -> usize {
    tool_safe_start_by(messages.len(), last_n, |i| messages[i].body.role)
}

/// How far a tool result may be from the assistant message whose call it answers, in
/// messages: the service refuses results further away, and a window grows backwards by at
/// most this much. A read never does work proportional to the session's length, whatever
/// an older writer stored.
pub const MAX_WINDOW_GROWTH: usize = 128;

/// [`tool_safe_start`] over `len` messages whose roles `role_at` gives by index. Tool
/// results whose call is more than [`MAX_WINDOW_GROWTH`] messages back (only data written
/// around the service's validation has them) are left out instead: the window starts
/// after them.
pub fn tool_safe_start_by(len: usize, last_n: usize, role_at: impl Fn(usize) -> Role) -> usize {
    let plain = len.saturating_sub(last_n);
    let mut start = plain;
    while start > 0 && start < len && role_at(start) == Role::Tool {
        if plain - start >= MAX_WINDOW_GROWTH {
            let mut after = plain;
            while after < len && role_at(after) == Role::Tool {
                after += 1;
            }
            return after;
        }
        start -= 1;
    }
    start
}

/// Approximate bytes of a JSON object, for stats and size limits.
pub fn json_bytes(object: &JsonObject) -> u64 {
    if object.is_empty() {
        return 0;
    }
    serde_json::to_vec(object).map_or(0, |bytes| bytes.len() as u64)
}

/// The tenant a request was authenticated as; services scope every store access to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant(pub String);
