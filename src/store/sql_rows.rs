//! What the SQL backends (SQLite, PostgreSQL) share of their rows: the session row and
//! its JSON parts, times as microseconds since the epoch, roles by name.

use crate::domain::{
    AppendOutcome, JsonObject, Message, NewMessage, Role, Session, SessionId, UsageTotal,
    WriteOutcome,
};
use crate::store::{StoreError, StoreResult};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Microseconds since the epoch of a time.
pub fn micros_of(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Now, in microseconds since the epoch.
pub fn now_us() -> i64 {
    micros_of(SystemTime::now())
}

/// A duration in microseconds.
pub fn micros(duration: Duration) -> i64 {
    duration.as_micros().min(i64::MAX as u128) as i64
}

/// The time of microseconds since the epoch.
pub fn time_of(micros: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(micros.max(0) as u64)
}

/// A remembered append: what a retry of its request_id reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Remembered {
    request_id: String,
    first_seq: u64,
    count: u64,
    version: u64,
    expire_us: i64,
}

/// A system message as stored in the session row's JSON array.
#[derive(Serialize, Deserialize)]
struct StoredSystemMessage {
    time_us: i64,
    message: NewMessage,
}

/// One `sessions` row.
#[derive(Clone, Debug)]
pub struct SessionRow {
    pub version: u64,
    pub message_count: u64,
    pub create_us: i64,
    pub update_us: i64,
    pub expire_us: i64,
    pub system_messages: String,
    pub state: JsonObject,
    pub recent_appends: Vec<Remembered>,
    /// The provider usage of the session's messages, kept as JSON in `usage_total`.
    pub usage_total: UsageTotal,
}

pub fn corrupt(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("{what} is not valid JSON: {error}"))
}

impl SessionRow {
    /// A session about to be created.
    pub fn new(now: i64) -> Self {
        Self {
            version: 0,
            message_count: 0,
            create_us: now,
            update_us: now,
            expire_us: now,
            system_messages: "[]".into(),
            state: JsonObject::new(),
            recent_appends: Vec::new(),
            usage_total: UsageTotal::default(),
        }
    }

    /// Its `usage_total` column.
    pub fn usage_json(&self) -> StoreResult<String> {
        serde_json::to_string(&self.usage_total).map_err(|e| corrupt("a usage total", e))
    }

    /// The row a write goes on: the live one, its version checked against `expected`,
    /// else a new one.
    pub fn for_write(row: Option<Self>, expected: Option<u64>, now: i64) -> StoreResult<Self> {
        crate::store::check_version(expected, row.as_ref().map_or(0, |r| r.version))?;
        Ok(row.unwrap_or_else(|| Self::new(now)))
    }

    /// After a write: the next version, the update time, the expiry `ttl` from now.
    pub fn written(&mut self, ttl: Duration, now: i64) {
        self.version += 1;
        self.update_us = now;
        self.expire_us = now + micros(ttl);
    }

    /// After an append of `messages` (seqs from the old count + 1): the write's
    /// bookkeeping, their usage added, the request id remembered; what the append reports.
    pub fn appended(
        &mut self,
        messages: &[NewMessage],
        ttl: Duration,
        request_id: Option<String>,
        now: i64,
    ) -> AppendOutcome {
        let count = messages.len() as u64;
        let first_seq = self.message_count + 1;
        self.message_count += count;
        self.usage_total += UsageTotal::of(messages);
        self.written(ttl, now);
        let outcome = AppendOutcome {
            first_seq,
            count,
            version: self.version,
            expire_time: time_of(self.expire_us),
            deduplicated: false,
        };
        if let Some(request_id) = request_id {
            self.remember(request_id, &outcome, crate::store::REMEMBERED_REQUEST_IDS);
        }
        outcome
    }

    /// After the messages were replaced by `messages`: their count and usage.
    pub fn replaced(&mut self, messages: &[NewMessage]) {
        self.message_count = messages.len() as u64;
        self.usage_total = UsageTotal::of(messages);
    }

    /// What an earlier append with this request_id reported, as a deduplicated outcome.
    pub fn remembered(&self, request_id: &str) -> Option<AppendOutcome> {
        self.recent_appends
            .iter()
            .find(|r| r.request_id == request_id)
            .map(|r| AppendOutcome {
                first_seq: r.first_seq,
                count: r.count,
                version: r.version,
                expire_time: time_of(r.expire_us),
                deduplicated: true,
            })
    }

    /// Remembers an append's outcome under its request_id, keeping the last `keep`.
    pub fn remember(&mut self, request_id: String, outcome: &AppendOutcome, keep: usize) {
        self.recent_appends.push(Remembered {
            request_id,
            first_seq: outcome.first_seq,
            count: outcome.count,
            version: outcome.version,
            expire_us: micros_of(outcome.expire_time),
        });
        let excess = self.recent_appends.len().saturating_sub(keep);
        self.recent_appends.drain(..excess);
    }

    /// Replaces the system messages, numbered from 1, stamped `now` unless they carry
    /// their own time (copies).
    pub fn set_system_messages(&mut self, messages: Vec<NewMessage>, now: i64) -> StoreResult<()> {
        let stored: Vec<StoredSystemMessage> = messages
            .into_iter()
            .map(|mut message| StoredSystemMessage {
                time_us: message.create_time.take().map_or(now, micros_of),
                message,
            })
            .collect();
        self.system_messages =
            serde_json::to_string(&stored).map_err(|e| corrupt("system messages", e))?;
        Ok(())
    }

    /// What a write reports.
    pub fn outcome(&self) -> WriteOutcome {
        WriteOutcome {
            version: self.version,
            expire_time: time_of(self.expire_us),
        }
    }

    /// The session, with these messages as its window.
    pub fn session(&self, id: SessionId, messages: Vec<Message>) -> StoreResult<Session> {
        let system: Vec<StoredSystemMessage> = serde_json::from_str(&self.system_messages)
            .map_err(|e| corrupt("system messages", e))?;
        Ok(Session {
            id,
            messages,
            system_messages: (1..)
                .zip(system)
                .map(|(seq, s)| s.message.stored(seq, time_of(s.time_us)))
                .collect(),
            state: self.state.clone(),
            version: self.version,
            message_count: self.message_count,
            usage_total: self.usage_total,
            create_time: time_of(self.create_us),
            update_time: time_of(self.update_us),
            expire_time: time_of(self.expire_us),
        })
    }
}

/// The six `COALESCE(SUM(...), 0)` of a usage total's counters, in the order of
/// [`UsageTotal::counters`], for a stats query; `field` has a `{}` for the counter's name,
/// and each sum is followed by `cast`.
pub fn usage_sums(field: &str, cast: &str) -> String {
    UsageTotal::NAMES
        .map(|name| format!("COALESCE(SUM({}), 0){cast}", field.replace("{}", name)))
        .join(", ")
}

/// A `usage_total` column's value.
pub fn usage_of(json: &str) -> StoreResult<UsageTotal> {
    serde_json::from_str(json).map_err(|e| corrupt("a usage total", e))
}

/// The role of its OpenAI name (an unknown name reads as user).
pub fn role_of(name: &str) -> Role {
    match name {
        "system" => Role::System,
        "developer" => Role::Developer,
        "assistant" => Role::Assistant,
        "tool" => Role::Tool,
        _ => Role::User,
    }
}

/// A stored message from its row's parts.
pub fn message_of(seq: i64, created_us: i64, body: &str) -> StoreResult<Message> {
    let message: NewMessage = serde_json::from_str(body).map_err(|e| corrupt("a message", e))?;
    Ok(message.stored(seq as u64, time_of(created_us)))
}
