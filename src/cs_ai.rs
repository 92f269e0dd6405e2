//! `csai-sidecar migrate`: copies CS-AI's own Redis data (sessions, system messages, state,
//! learning data and security logs) into the configured store, idempotently.

use crate::config::RequestLimits;
use crate::domain::{
    FunctionCall, JsonObject, NewMessage, Role, StateUpdate, ToolCall, Usage, WriteOptions,
};
use crate::progress::{Progress, Unit};
use crate::records::{self, LearningRecord, RecordStream, SecurityLog};
use crate::service::validate;
use crate::store::{SessionStore, StoreError};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use serde_json::Value;
use std::fmt;
use std::time::{Duration, SystemTime};

/// How a migration runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Read and convert everything, write nothing.
    pub dry_run: bool,
    /// TTL of sessions whose CS-AI keys have none.
    pub default_ttl: Duration,
    /// Retention of learning data and security logs, counted from their timestamps.
    pub record_retention: Duration,
    /// What a message may hold: each is checked as the service checks any write.
    pub limits: RequestLimits,
}

/// What a migration did (or, in a dry run, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub sessions: u64,
    pub messages: u64,
    pub learning_records: u64,
    pub security_logs: u64,
    /// Records older than the retention: they would expire at once.
    pub expired_records: u64,
    /// What could not be migrated, one line each; the rest was migrated.
    pub failures: Vec<String>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "sessions         {}", self.sessions)?;
        writeln!(f, "messages         {}", self.messages)?;
        writeln!(f, "learning records {}", self.learning_records)?;
        writeln!(f, "security logs    {}", self.security_logs)?;
        writeln!(
            f,
            "expired records  {} (older than record_retention; not copied)",
            self.expired_records
        )?;
        write!(f, "failed           {}", self.failures.len())?;
        for failure in &self.failures {
            write!(f, "\n  {failure}")?;
        }
        Ok(())
    }
}

/// Why a migration could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot read the CS-AI Redis at {url}: {message}")]
    Source { url: String, message: String },
    #[error(transparent)]
    Target(#[from] StoreError),
}

/// Copies CS-AI's Redis layout at `url` (`redis://host:port/db`) into `target`:
/// `ai:session:{id}` (a JSON array of messages), `ai:system:{id}` and `ai:state:{id}`
/// with their remaining TTL, `ai:learning:{date}` and `ai:security:{user}:{date}` lists.
/// Re-running it gives the same result: sessions are replaced whole, and records get ids
/// derived from their time and content.
pub async fn copy_from_redis(
    url: &str,
    target: &dyn SessionStore,
    options: &Options,
) -> Result<Summary, MigrateError> {
    let source_error = |e: redis::RedisError| MigrateError::Source {
        url: without_password(url),
        message: e.to_string(),
    };
    let client = redis::Client::open(url).map_err(source_error)?;
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .map_err(source_error)?;
    let mut summary = Summary::default();

    // Sorted and each id once, however many of its three keys exist.
    let mut ids = std::collections::BTreeSet::new();
    for pattern in ["ai:session:*", "ai:system:*", "ai:state:*"] {
        for key in scan(&mut redis, pattern).await.map_err(source_error)? {
            let id = key.splitn(3, ':').nth(2).unwrap_or_default().to_string();
            if !id.is_empty() {
                ids.insert(id);
            }
        }
    }
    let mut progress = Progress::start("cs-ai import", Unit::Sessions, Some(ids.len() as u64));
    for id in ids {
        progress.add(1);
        match copy_session(&mut redis, target, &id, options).await {
            Ok(Some(messages)) => {
                summary.sessions += 1;
                summary.messages += messages;
            }
            Ok(None) => {}
            Err(problem) => summary.failures.push(format!("session {id:?}: {problem}")),
        }
    }
    progress.finish();

    for key in scan(&mut redis, "ai:learning:*")
        .await
        .map_err(source_error)?
    {
        let items: Vec<String> = redis.lrange(&key, 0, -1).await.map_err(source_error)?;
        for (i, item) in items.iter().enumerate() {
            let result = copy_learning(target, item, options).await;
            count(&mut summary, result, &key, i, |s| &mut s.learning_records);
        }
    }
    for key in scan(&mut redis, "ai:security:*")
        .await
        .map_err(source_error)?
    {
        let items: Vec<String> = redis.lrange(&key, 0, -1).await.map_err(source_error)?;
        for (i, item) in items.iter().enumerate() {
            let result = copy_security(target, &key, item, options).await;
            count(&mut summary, result, &key, i, |s| &mut s.security_logs);
        }
    }
    Ok(summary)
}

/// The URL with any password replaced, for messages.
fn without_password(url: &str) -> String {
    match url
        .split_once("://")
        .and_then(|(scheme, rest)| Some((scheme, rest.split_once('@')?)))
    {
        Some((scheme, (userinfo, host))) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:<redacted>@{host}")
        }
        None => url.to_string(),
    }
}

/// What copying one record did.
enum Copied {
    Yes,
    Expired,
}

fn count(
    summary: &mut Summary,
    result: Result<Copied, String>,
    key: &str,
    index: usize,
    counter: impl Fn(&mut Summary) -> &mut u64,
) {
    match result {
        Ok(Copied::Yes) => *counter(summary) += 1,
        Ok(Copied::Expired) => summary.expired_records += 1,
        Err(problem) => summary
            .failures
            .push(format!("{key} item {index}: {problem}")),
    }
}

async fn scan(redis: &mut MultiplexedConnection, pattern: &str) -> redis::RedisResult<Vec<String>> {
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(500)
            .query_async(redis)
            .await?;
        keys.extend(batch);
        if next == 0 {
            keys.sort();
            keys.dedup();
            return Ok(keys);
        }
        cursor = next;
    }
}

/// A key's JSON value and its remaining TTL (None: no TTL), or None if absent.
async fn read_key(
    redis: &mut MultiplexedConnection,
    key: &str,
) -> Result<Option<(Value, Option<Duration>)>, String> {
    let text: Option<String> = redis.get(key).await.map_err(|e| e.to_string())?;
    let Some(text) = text else {
        return Ok(None);
    };
    let pttl: i64 = redis.pttl(key).await.map_err(|e| e.to_string())?;
    let value = serde_json::from_str(&text).map_err(|e| format!("{key} is not JSON: {e}"))?;
    let ttl = u64::try_from(pttl).ok().map(Duration::from_millis);
    Ok(Some((value, ttl)))
}

/// Copies one session; returns its message count, or None if all its keys expired meanwhile.
async fn copy_session(
    redis: &mut MultiplexedConnection,
    target: &dyn SessionStore,
    id: &str,
    options: &Options,
) -> Result<Option<u64>, String> {
    let messages = read_key(redis, &format!("ai:session:{id}")).await?;
    let system = read_key(redis, &format!("ai:system:{id}")).await?;
    let state = read_key(redis, &format!("ai:state:{id}")).await?;
    let ttls: Vec<Option<Duration>> = [&messages, &system, &state]
        .iter()
        .filter_map(|key| key.as_ref().map(|(_, ttl)| *ttl))
        .collect();
    if ttls.is_empty() {
        return Ok(None);
    }
    // The session lives as long as its longest-lived key; keys without a TTL take the default.
    let ttl = ttls
        .iter()
        .map(|ttl| ttl.unwrap_or(options.default_ttl))
        .max()
        .unwrap_or(options.default_ttl)
        .max(Duration::from_secs(1));
    let messages = messages
        .map(|(v, _)| messages_of(v))
        .transpose()?
        .unwrap_or_default();
    let system = system
        .map(|(v, _)| messages_of(v))
        .transpose()?
        .unwrap_or_default();
    let state = match state {
        Some((Value::Object(object), _)) => object,
        Some((Value::Null, _)) | None => JsonObject::new(),
        Some(_) => return Err("ai:state is not a JSON object".into()),
    };
    // The service's own checks, so a migration never writes what a bot could not.
    let session = validate::session_id(id, "session id").map_err(|e| e.to_string())?;
    for (list, field) in [(&messages, "messages"), (&system, "system messages")] {
        for (i, message) in list.iter().enumerate() {
            validate::message(message, &options.limits, &format!("{field}[{i}]"))
                .map_err(|e| e.to_string())?;
        }
    }
    let count = messages.len() as u64;
    if options.dry_run {
        return Ok(Some(count));
    }
    let write = WriteOptions::ttl(ttl);
    let fail = |e: StoreError| e.to_string();
    if !messages.is_empty() {
        target
            .replace(&session, messages, write.clone())
            .await
            .map_err(fail)?;
    }
    if !system.is_empty() {
        target
            .set_system_messages(&session, system, write.clone())
            .await
            .map_err(fail)?;
    }
    if !state.is_empty() {
        target
            .update_state(&session, StateUpdate::Replace(state), write)
            .await
            .map_err(fail)?;
    }
    Ok(Some(count))
}

/// CS-AI's messages (a JSON array, or null) in the sidecar's shape.
fn messages_of(value: Value) -> Result<Vec<NewMessage>, String> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| message_of(item).map_err(|e| format!("message {i}: {e}")))
            .collect(),
        _ => Err("not a JSON array of messages".into()),
    }
}

fn text(value: &Value, key: &str) -> Option<String> {
    value
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(String::from)
}

fn number(value: &Value, key: &str) -> u32 {
    value.get(key).and_then(Value::as_u64).unwrap_or(0) as u32
}

/// One CS-AI message: empty `name` and `tool_call_id` mean none, `tool_calls` may be
/// null, `usage` is DeepSeek's; `id`, `content_map` and `aggregated_usage` are dropped
/// (the store assigns seqs).
fn message_of(value: &Value) -> Result<NewMessage, String> {
    let role: Role = serde_json::from_value(value.get("role").cloned().unwrap_or(Value::Null))
        .map_err(|_| format!("unknown role {}", value.get("role").unwrap_or(&Value::Null)))?;
    let mut message = NewMessage::text(role, text(value, "content").unwrap_or_default());
    message.name = text(value, "name");
    message.tool_call_id = text(value, "tool_call_id").filter(|_| role == Role::Tool);
    message.model = text(value, "model");
    if let Some(calls) = value.get("tool_calls").and_then(Value::as_array) {
        message.tool_calls = calls
            .iter()
            .map(|call| {
                let function = call.get("function").cloned().unwrap_or(Value::Null);
                Ok(ToolCall {
                    id: text(call, "id").ok_or("a tool call without an id")?,
                    kind: text(call, "type").unwrap_or_else(|| "function".into()),
                    function: FunctionCall {
                        name: text(&function, "name")
                            .ok_or("a tool call without a function name")?,
                        arguments: text(&function, "arguments").unwrap_or_else(|| "{}".into()),
                    },
                    index: number(call, "index"),
                })
            })
            .collect::<Result<_, &str>>()?;
    }
    if role == Role::Tool && message.tool_call_id.is_none() {
        return Err("a tool message without tool_call_id".into());
    }
    if let Some(usage) = value.get("usage").filter(|u| u.is_object()) {
        let cached = usage
            .pointer("/prompt_tokens_details/cached_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0) as u32;
        message.usage = Some(Usage {
            prompt_tokens: number(usage, "prompt_tokens"),
            completion_tokens: number(usage, "completion_tokens"),
            total_tokens: number(usage, "total_tokens"),
            cached_tokens: cached.max(number(usage, "prompt_cache_hit_tokens")),
            reasoning_tokens: 0,
            cache_miss_tokens: number(usage, "prompt_cache_miss_tokens"),
        });
    }
    // CS-AI's `reasoning` (summaries, effort, its own reasoning usage counters) and
    // `aggregated_usage` (a turn's sum) have no field of their own: they are kept whole in
    // the metadata. The summary is the reasoning content, its token count the reasoning
    // tokens.
    if let Some(reasoning) = value.get("reasoning").filter(|r| r.is_object()) {
        message.reasoning_content = text(reasoning, "summary_text");
        let tokens = reasoning
            .pointer("/usage/tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0) as u32;
        if tokens > 0 {
            message
                .usage
                .get_or_insert_with(Usage::default)
                .reasoning_tokens = tokens;
        }
        message
            .metadata
            .insert("cs_ai_reasoning".into(), reasoning.clone());
    }
    if let Some(aggregated) = value.get("aggregated_usage").filter(|u| u.is_object()) {
        message
            .metadata
            .insert("cs_ai_aggregated_usage".into(), aggregated.clone());
    }
    Ok(message)
}

/// A timestamp of CS-AI's JSON (RFC 3339, as Go writes `time.Time`).
fn timestamp(value: &Value, key: &str) -> Result<SystemTime, String> {
    let raw = value
        .get(key)
        .and_then(Value::as_str)
        .ok_or(format!("no {key}"))?;
    parse_go_time(raw).map_err(|_| format!("{key} {raw:?} is not a time"))
}

/// Go writes fractional seconds and zone offsets (`2025-04-17T10:00:00.123456789+07:00`);
/// humantime reads the time as UTC (its lenient parser even skips the offset), so the
/// offset is split off and applied here. Corrupt input (an offset of a million hours, a
/// time past what the clock can hold) is an error, never a panic.
fn parse_go_time(raw: &str) -> Result<SystemTime, ()> {
    let (base, offset_seconds) = match raw.rfind(['+', '-']).filter(|&at| at > 18) {
        Some(at) => {
            let (hours, minutes) = raw[at + 1..].split_once(':').ok_or(())?;
            let hours = hours.parse::<i64>().ok().filter(|h| (0..=99).contains(h));
            let minutes = minutes.parse::<i64>().ok().filter(|m| (0..60).contains(m));
            let seconds = hours.ok_or(())? * 3600 + minutes.ok_or(())? * 60;
            let sign = if raw[at..].starts_with('-') { -1 } else { 1 };
            (&raw[..at], sign * seconds)
        }
        None => (raw.trim_end_matches('Z'), 0),
    };
    let local = humantime::parse_rfc3339_weak(base).map_err(|_| ())?;
    let shift = Duration::from_secs(offset_seconds.unsigned_abs());
    if offset_seconds >= 0 {
        local.checked_sub(shift)
    } else {
        local.checked_add(shift)
    }
    .ok_or(())
}

/// A salt from a record's bytes (FNV-1a), so a re-run writes the same id.
fn content_salt(raw: &str) -> u32 {
    raw.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

async fn copy_learning(
    target: &dyn SessionStore,
    raw: &str,
    options: &Options,
) -> Result<Copied, String> {
    let value: Value = serde_json::from_str(raw).map_err(|e| format!("not JSON: {e}"))?;
    let time = timestamp(&value, "timestamp")?;
    let record = LearningRecord {
        id: String::new(),
        session_id: String::new(),
        message_seq: 0,
        query: text(&value, "query").unwrap_or_default(),
        response: text(&value, "response").unwrap_or_default(),
        tools: value
            .get("tools")
            .and_then(Value::as_array)
            .map(|tools| {
                tools
                    .iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default(),
        context: value
            .get("context")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
        feedback_score: value.get("feedback").and_then(Value::as_f64).unwrap_or(0.0),
        participant: String::new(),
    };
    put(target, &RecordStream::Learning, &record, raw, time, options).await
}

async fn copy_security(
    target: &dyn SessionStore,
    key: &str,
    raw: &str,
    options: &Options,
) -> Result<Copied, String> {
    let value: Value = serde_json::from_str(raw).map_err(|e| format!("not JSON: {e}"))?;
    let time = timestamp(&value, "Timestamp")?;
    // The key is ai:security:{user}:{date}; a user id may contain ':', the JSON knows it.
    let from_key = key
        .strip_prefix("ai:security:")
        .and_then(|rest| rest.rsplit_once(':'))
        .map(|(user, _)| user.to_string());
    let user_id = text(&value, "UserID").or(from_key).ok_or("no UserID")?;
    let log = SecurityLog {
        id: String::new(),
        user_id: user_id.clone(),
        session_id: text(&value, "SessionID").unwrap_or_default(),
        message_hash: text(&value, "MessageHash").unwrap_or_default(),
        spam_score: value
            .get("SpamScore")
            .and_then(Value::as_f64)
            .unwrap_or(0.0),
        allowed: value
            .get("Allowed")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        reason: text(&value, "Error").unwrap_or_default(),
    };
    put(
        target,
        &RecordStream::Security { user: user_id },
        &log,
        raw,
        time,
        options,
    )
    .await
}

async fn put<T: serde::Serialize>(
    target: &dyn SessionStore,
    stream: &RecordStream,
    record: &T,
    raw: &str,
    time: SystemTime,
    options: &Options,
) -> Result<Copied, String> {
    let expire_time = time
        .checked_add(options.record_retention)
        .ok_or_else(|| "the timestamp is too far in the future".to_string())?;
    if expire_time <= SystemTime::now() {
        return Ok(Copied::Expired);
    }
    if !options.dry_run {
        let id = crate::store::records::id_at(time, content_salt(raw));
        records::put_with_id(target, stream, record, &id, expire_time)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(Copied::Yes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cs_ai_messages_convert_field_by_field() {
        let assistant = json!({
            "content": "", "name": "", "role": "assistant", "id": 2, "tool_call_id": "",
            "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                            "function": {"name": "lookup", "arguments": "{\"id\":7}"}}],
            "model": "deepseek-chat",
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                      "prompt_cache_hit_tokens": 4, "prompt_cache_miss_tokens": 6}
        });
        let message = message_of(&assistant).unwrap();
        assert_eq!(message.name, None);
        assert_eq!(message.tool_call_id, None);
        assert_eq!(message.tool_calls[0].function.arguments, "{\"id\":7}");
        let usage = message.usage.unwrap();
        assert_eq!((usage.cached_tokens, usage.cache_miss_tokens), (4, 6));

        let reasoning = json!({"summary_text": "checks the order first", "effort_used": "high",
                               "usage": {"tokens": 42, "cached_context_tokens": 7}});
        let mut thinking = json!({"content": "Shipped.", "role": "assistant",
                                  "usage": {"prompt_tokens": 10, "completion_tokens": 50,
                                            "total_tokens": 60},
                                  "aggregated_usage": {"total_tokens": 90}});
        thinking["reasoning"] = reasoning.clone();
        let message = message_of(&thinking).unwrap();
        assert_eq!(
            message.reasoning_content.as_deref(),
            Some("checks the order first")
        );
        assert_eq!(message.usage.unwrap().reasoning_tokens, 42);
        assert_eq!(message.metadata["cs_ai_reasoning"], reasoning);
        assert_eq!(
            message.metadata["cs_ai_aggregated_usage"]["total_tokens"],
            90
        );
        let user = json!({"content": "hi", "name": "Budi", "role": "user", "tool_calls": null, "tool_call_id": ""});
        let message = message_of(&user).unwrap();
        assert_eq!(
            (message.name.as_deref(), message.tool_calls.len()),
            (Some("Budi"), 0)
        );
        assert!(message_of(&json!({"role": "tool", "content": "x", "tool_call_id": ""})).is_err());
        assert!(message_of(&json!({"role": "wizard"})).is_err());
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            without_password("redis://app:s3cret@db:6379/2"),
            "redis://app:<redacted>@db:6379/2"
        );
        assert_eq!(without_password("redis://db:6379"), "redis://db:6379");
    }

    #[test]
    fn go_times_with_offsets_parse() {
        let utc = humantime::parse_rfc3339("2025-04-17T03:00:00Z").unwrap();
        assert_eq!(
            timestamp(&json!({"t": "2025-04-17T10:00:00+07:00"}), "t").unwrap(),
            utc
        );
        assert_eq!(
            timestamp(&json!({"t": "2025-04-17T03:00:00Z"}), "t").unwrap(),
            utc
        );
        let fractional = timestamp(&json!({"t": "2025-04-16T22:00:00.5-05:00"}), "t").unwrap();
        assert_eq!(fractional, utc + Duration::from_millis(500));
        assert!(timestamp(&json!({"t": "yesterday"}), "t").is_err());
    }

    /// Regression: an offset past i64 seconds panicked (overflow) instead of being a
    /// counted, reported skip.
    #[test]
    fn corrupt_go_times_are_errors_not_panics() {
        for corrupt in [
            "2025-04-17T10:00:00+9999999999999999:00",
            "2025-04-17T10:00:00-99999999999:99",
            "2025-04-17T10:00:00+07:75",
            "1970-01-01T00:00:00+",
        ] {
            assert!(timestamp(&json!({"t": corrupt}), "t").is_err(), "{corrupt}");
        }
    }
}
