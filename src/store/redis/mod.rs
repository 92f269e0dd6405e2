//! The Redis backend (standalone or Cluster): Lua scripts over four keys per session.
//!
//! Every write is one script, so version checks, idempotency, seq assignment and the TTL
//! of all keys change together in one round trip. An append sends only the new messages
//! and pushes them onto a list: its cost does not depend on the session's length.

mod bus;
mod config;
mod connection;
mod keys;
mod record_items;
mod scripts;

pub use config::{BACKEND, RedisOptions};

use crate::domain::{
    Append, AppendOutcome, JsonObject, ListPage, ListQuery, Message, NewMessage, Session,
    SessionId, SessionSummary, StateOutcome, StateUpdate, StoreStats, UsageTotal, Window,
    WriteOptions, WriteOutcome,
};
use crate::store::records::{self, Record, RecordCounts, RecordRange, RecordStream};
use crate::store::{RecordStore, SessionStore, StoreError, StoreResult, page_token};
use async_trait::async_trait;
use connection::{Node, Redis};
use redis::{Script, Value};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Keys examined per SCAN call.
const SCAN_COUNT: usize = 200;
/// SCAN calls one ListSessions page may make before it returns what it has.
const MAX_SCANS_PER_PAGE: usize = 50;

/// The Redis session store.
pub struct RedisStore {
    redis: Redis,
    prefix: String,
}

/// A stored message element, as the scripts build it.
#[derive(Deserialize)]
struct StoredMessage {
    s: u64,
    t: u64,
    m: NewMessage,
}

fn to_time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

fn to_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A TTL in milliseconds for the scripts. The service keeps TTLs within `max_ttl`; this
/// cap only makes sure no caller can hand a script a number that Lua's `%d` cannot
/// format (about 2^63), which would fail the script after it had started to write.
fn ttl_ms(ttl: Duration) -> u64 {
    const MAX_TTL_MS: u128 = 1 << 50; // about 35,000 years
    ttl.as_millis().clamp(1, MAX_TTL_MS) as u64
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("unexpected data in Redis: {what}"))
}

fn text(value: &Value) -> StoreResult<String> {
    match value {
        Value::BulkString(bytes) => {
            String::from_utf8(bytes.clone()).map_err(|_| corrupt("non-UTF-8 text"))
        }
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Int(n) => Ok(n.to_string()),
        other => Err(corrupt(format!("expected text, got {other:?}"))),
    }
}

fn int(value: &Value) -> StoreResult<i64> {
    match value {
        Value::Int(n) => Ok(*n),
        other => text(other)?
            .parse()
            .map_err(|_| corrupt(format!("expected a number, got {other:?}"))),
    }
}

/// Which messages a write replaces.
#[derive(PartialEq)]
enum Messages {
    History,
    System,
}

/// The usage counters of a script's reply (absent ones, on sessions stored before they
/// were kept, are 0).
fn usage_of(value: &Value) -> StoreResult<UsageTotal> {
    let mut counters = [0u64; 6];
    for (n, value) in counters.iter_mut().zip(array(value)?) {
        if *value != Value::Nil {
            *n = int(value)?.max(0) as u64;
        }
    }
    Ok(UsageTotal::from_counters(counters))
}

/// The usage counters of `messages`, as an append's or replace's arguments.
fn usage_args(messages: &[NewMessage]) -> impl Iterator<Item = String> + use<> {
    UsageTotal::of(messages)
        .counters()
        .into_iter()
        .map(|n| n.to_string())
}

fn array(value: &Value) -> StoreResult<&[Value]> {
    match value {
        Value::Array(items) => Ok(items),
        other => Err(corrupt(format!("expected an array, got {other:?}"))),
    }
}

/// Splits a script reply into its status and the rest.
fn reply(value: &Value) -> StoreResult<(String, &[Value])> {
    let items = array(value)?;
    let (status, rest) = items
        .split_first()
        .ok_or_else(|| corrupt("empty script reply"))?;
    Ok((text(status)?, rest))
}

fn version_mismatch(expected: Option<u64>, rest: &[Value]) -> StoreError {
    let actual = rest.first().and_then(|v| int(v).ok()).unwrap_or(0) as u64;
    StoreError::VersionMismatch {
        expected: expected.unwrap_or(0),
        actual,
    }
}

fn expected_arg(expected: Option<u64>) -> String {
    expected.map(|v| v.to_string()).unwrap_or_default()
}

/// Role, time (empty: the server's clock; a copy's own time in ms) and JSON of each message.
fn message_args(messages: &[NewMessage]) -> StoreResult<Vec<String>> {
    let mut args = Vec::with_capacity(messages.len() * 3);
    for message in messages {
        args.push(message.role.as_str().to_string());
        args.push(
            message
                .create_time
                .map(|time| to_ms(time).to_string())
                .unwrap_or_default(),
        );
        args.push(serde_json::to_string(message).map_err(|e| StoreError::Internal(e.to_string()))?);
    }
    Ok(args)
}

impl StoredMessage {
    fn into_message(self) -> Message {
        self.m.stored(self.s, to_time(self.t as i64))
    }
}

fn parse_messages(elements: &[Value]) -> StoreResult<Vec<Message>> {
    elements
        .iter()
        .map(|element| {
            let stored: StoredMessage = serde_json::from_str(&text(element)?).map_err(corrupt)?;
            Ok(stored.into_message())
        })
        .collect()
}

fn parse_state(value: &Value) -> StoreResult<JsonObject> {
    array(value)?
        .chunks(2)
        .map(|pair| match pair {
            [key, value] => Ok((
                text(key)?,
                serde_json::from_str(&text(value)?).map_err(corrupt)?,
            )),
            _ => Err(corrupt("odd HGETALL reply")),
        })
        .collect()
}

fn write_outcome(rest: &[Value]) -> StoreResult<WriteOutcome> {
    match rest {
        [version, expire, ..] => Ok(WriteOutcome {
            version: int(version)? as u64,
            expire_time: to_time(int(expire)?),
        }),
        _ => Err(corrupt("short write reply")),
    }
}

/// Where a listing stands: the ids of the last SCAN batch not returned yet, then the node
/// and the cursor of the next SCAN call (`node` None: every node is scanned).
///
/// A page that fills in the middle of a batch keeps the rest of the batch here rather
/// than running the same SCAN cursor again for the next page: after sessions were added
/// or removed, the same cursor covers a different range, which listed some sessions
/// twice and others never. So every SCAN call runs exactly once per listing, and SCAN's
/// own guarantee holds: a key present for the whole iteration is returned.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
struct ListPosition {
    pending: Vec<String>,
    node: Option<String>,
    cursor: u64,
}

/// "r1" tokens (a cursor to run again) are refused: they are what listed sessions twice.
const TOKEN_TAG: &str = "r2";

fn encode_token(position: &ListPosition) -> String {
    page_token::encode(TOKEN_TAG, &serde_json::to_vec(position).unwrap_or_default())
}

fn decode_token(token: &str) -> StoreResult<ListPosition> {
    serde_json::from_slice(&page_token::decode(TOKEN_TAG, token)?)
        .map_err(|_| StoreError::InvalidPageToken("the position is not readable".into()))
}

impl RedisStore {
    /// A store on the Redis (or Cluster) the options describe. Does not dial yet.
    pub fn new(options: &RedisOptions) -> StoreResult<Self> {
        if options.key_prefix.contains(['{', '}']) {
            return Err(StoreError::Internal(
                "redis_key_prefix must not contain '{' or '}' (they delimit the Cluster hash tag)"
                    .into(),
            ));
        }
        Ok(Self {
            redis: Redis::new(options)?,
            prefix: options.key_prefix.clone(),
        })
    }

    /// Runs a script on one session's keys.
    async fn eval(
        &self,
        what: &str,
        idempotent: bool,
        script: &Script,
        id: &SessionId,
        args: &[String],
    ) -> StoreResult<Value> {
        let keys = keys::session_keys(&self.prefix, id.as_str());
        self.redis
            .run(what, idempotent, |mut connection| {
                let mut invocation = script.prepare_invoke();
                for key in &keys {
                    invocation.key(key);
                }
                for arg in args {
                    invocation.arg(arg);
                }
                async move { invocation.invoke_async(&mut connection).await }
            })
            .await
    }

    /// Replaces the history (with its usage total) or the system messages.
    async fn write_messages(
        &self,
        kind: Messages,
        id: &SessionId,
        messages: &[NewMessage],
        options: WriteOptions,
    ) -> StoreResult<WriteOutcome> {
        let (what, script) = match kind {
            Messages::History => ("replace messages", &*scripts::REPLACE),
            Messages::System => ("set system messages", &*scripts::SET_SYSTEM),
        };
        let mut args = vec![
            ttl_ms(options.ttl).to_string(),
            expected_arg(options.expected_version),
        ];
        if kind == Messages::History {
            args.extend(usage_args(messages));
        }
        args.extend(message_args(messages)?);
        let value = self.eval(what, false, script, id, &args).await?;
        match reply(&value)? {
            (status, rest) if status == "OK" => write_outcome(rest),
            (status, rest) if status == "VERSION" => {
                Err(version_mismatch(options.expected_version, rest))
            }
            (status, _) => Err(corrupt(format!("{what} replied {status}"))),
        }
    }

    /// Summary of one session found by SCAN, or None if it expired or went meanwhile.
    async fn summary(&self, id: SessionId) -> StoreResult<Option<SessionSummary>> {
        let value = self
            .eval("session summary", true, &scripts::SUMMARY, &id, &[])
            .await?;
        match reply(&value)? {
            (status, [version, updated, expire, count, usage]) if status == "OK" => {
                Ok(Some(SessionSummary {
                    id,
                    message_count: int(count)? as u64,
                    usage_total: usage_of(usage)?,
                    version: int(version)? as u64,
                    update_time: to_time(int(updated)?),
                    expire_time: to_time(int(expire)?),
                }))
            }
            (status, _) if status == "NOTFOUND" => Ok(None),
            (status, _) => Err(corrupt(format!("summary replied {status}"))),
        }
    }

    /// One SCAN call on one node: the next cursor and the session ids found, sorted.
    async fn scan(
        &self,
        node: &Node,
        cursor: u64,
        pattern: &str,
    ) -> StoreResult<(u64, Vec<String>)> {
        let (next, found) = self.scan_keys(node, cursor, pattern).await?;
        let mut ids: Vec<String> = found
            .iter()
            .filter_map(|key| keys::id_of_meta_key(&self.prefix, key))
            .collect();
        ids.sort();
        ids.dedup();
        Ok((next, ids))
    }

    /// One SCAN step on `node`: the next cursor and the keys matching `pattern`.
    async fn scan_keys(
        &self,
        node: &Node,
        cursor: u64,
        pattern: &str,
    ) -> StoreResult<(u64, Vec<String>)> {
        let mut command = redis::cmd("SCAN");
        command
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT);
        self.redis.on_node(node, "SCAN", command).await
    }

    async fn summaries(&self, ids: Vec<String>) -> StoreResult<Vec<SessionSummary>> {
        let found = futures::future::try_join_all(
            ids.into_iter().map(|id| self.summary(SessionId::new(id))),
        )
        .await?;
        Ok(found.into_iter().flatten().collect())
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn get(&self, id: &SessionId, window: Window) -> StoreResult<Session> {
        let args = match window {
            Window::All => vec!["all".to_string(), "0".to_string()],
            Window::LastN(n) => vec![
                "last".to_string(),
                n.to_string(),
                crate::domain::MAX_WINDOW_GROWTH.to_string(),
            ],
            Window::AfterSeq(seq) => vec!["after".to_string(), seq.to_string()],
        };
        let value = self
            .eval("get session", true, &scripts::GET, id, &args)
            .await?;
        match reply(&value)? {
            (
                status,
                [
                    version,
                    created,
                    updated,
                    expire,
                    system,
                    count,
                    state,
                    messages,
                    usage,
                ],
            ) if status == "OK" => {
                let system: Vec<StoredMessage> =
                    serde_json::from_str(&text(system)?).map_err(corrupt)?;
                Ok(Session {
                    id: id.clone(),
                    messages: parse_messages(array(messages)?)?,
                    system_messages: system
                        .into_iter()
                        .map(StoredMessage::into_message)
                        .collect(),
                    state: parse_state(state)?,
                    version: int(version)? as u64,
                    message_count: int(count)? as u64,
                    usage_total: usage_of(usage)?,
                    create_time: to_time(int(created)?),
                    update_time: to_time(int(updated)?),
                    expire_time: to_time(int(expire)?),
                })
            }
            (status, _) if status == "NOTFOUND" => Err(StoreError::NotFound(id.to_string())),
            (status, _) => Err(corrupt(format!("get replied {status}"))),
        }
    }

    async fn append(&self, id: &SessionId, append: Append) -> StoreResult<AppendOutcome> {
        let mut args = vec![
            ttl_ms(append.options.ttl).to_string(),
            expected_arg(append.options.expected_version),
            append.request_id.clone().unwrap_or_default(),
        ];
        args.extend(usage_args(&append.messages));
        args.extend(message_args(&append.messages)?);
        // With a request id a repeat is harmless, so lost replies may be retried.
        let idempotent = append.request_id.is_some();
        let value = self
            .eval("append", idempotent, &scripts::APPEND, id, &args)
            .await?;
        let (status, rest) = reply(&value)?;
        if status == "VERSION" {
            return Err(version_mismatch(append.options.expected_version, rest));
        }
        let outcome = rest.first().map(text).transpose()?.unwrap_or_default();
        let numbers: Vec<i64> = outcome.split(' ').filter_map(|n| n.parse().ok()).collect();
        match (status.as_str(), numbers.as_slice()) {
            ("OK" | "DUP", [first, count, version, expire]) => Ok(AppendOutcome {
                first_seq: *first as u64,
                count: *count as u64,
                version: *version as u64,
                expire_time: to_time(*expire),
                deduplicated: status == "DUP",
            }),
            _ => Err(corrupt(format!("append replied {status} {outcome}"))),
        }
    }

    async fn replace(
        &self,
        id: &SessionId,
        messages: Vec<NewMessage>,
        options: WriteOptions,
    ) -> StoreResult<WriteOutcome> {
        self.write_messages(Messages::History, id, &messages, options)
            .await
    }

    async fn set_system_messages(
        &self,
        id: &SessionId,
        messages: Vec<NewMessage>,
        options: WriteOptions,
    ) -> StoreResult<WriteOutcome> {
        self.write_messages(Messages::System, id, &messages, options)
            .await
    }

    async fn update_state(
        &self,
        id: &SessionId,
        update: StateUpdate,
        options: WriteOptions,
    ) -> StoreResult<StateOutcome> {
        let (mode, fields) = match update {
            StateUpdate::Replace(fields) => ("replace", fields),
            StateUpdate::Merge(fields) => ("merge", fields),
        };
        let mut args = vec![
            ttl_ms(options.ttl).to_string(),
            expected_arg(options.expected_version),
            mode.to_string(),
        ];
        for (key, value) in fields {
            args.push(key);
            // An empty value tells the script to remove the key (JSON text is never empty).
            args.push(if value.is_null() {
                String::new()
            } else {
                value.to_string()
            });
        }
        let value = self
            .eval("update state", false, &scripts::UPDATE_STATE, id, &args)
            .await?;
        match reply(&value)? {
            (status, rest) if status == "OK" => Ok(StateOutcome {
                write: write_outcome(rest)?,
                state: parse_state(rest.get(2).ok_or_else(|| corrupt("state missing"))?)?,
            }),
            (status, rest) if status == "VERSION" => {
                Err(version_mismatch(options.expected_version, rest))
            }
            (status, _) => Err(corrupt(format!("update state replied {status}"))),
        }
    }

    async fn touch(&self, id: &SessionId, ttl: Duration) -> StoreResult<WriteOutcome> {
        let value = self
            .eval(
                "touch",
                true,
                &scripts::TOUCH,
                id,
                &[ttl_ms(ttl).to_string()],
            )
            .await?;
        match reply(&value)? {
            (status, rest) if status == "OK" => write_outcome(rest),
            (status, _) if status == "NOTFOUND" => Err(StoreError::NotFound(id.to_string())),
            (status, _) => Err(corrupt(format!("touch replied {status}"))),
        }
    }

    async fn delete(&self, id: &SessionId, expected_version: Option<u64>) -> StoreResult<bool> {
        let value = self
            .eval(
                "delete",
                true,
                &scripts::DELETE,
                id,
                &[expected_arg(expected_version)],
            )
            .await?;
        match reply(&value)? {
            (status, [deleted]) if status == "OK" => Ok(int(deleted)? == 1),
            (status, rest) if status == "VERSION" => Err(version_mismatch(expected_version, rest)),
            (status, _) => Err(corrupt(format!("delete replied {status}"))),
        }
    }

    async fn list(&self, query: ListQuery) -> StoreResult<ListPage> {
        let page_size = query.page_size.max(1) as usize;
        let pattern = keys::meta_pattern(&self.prefix, &query.prefix);
        let nodes = self.redis.nodes().await?;
        let mut position = match query.page_token.as_deref() {
            Some(token) => decode_token(token)?,
            None => ListPosition {
                pending: Vec::new(),
                node: Some(nodes[0].name()),
                cursor: 0,
            },
        };
        // The node being scanned; a node that left the Cluster since the last page is
        // skipped for the next one.
        let mut node_index = match &position.node {
            None => nodes.len(),
            Some(name) => match nodes.iter().position(|n| &n.name() == name) {
                Some(index) => index,
                None => {
                    position.cursor = 0;
                    nodes
                        .iter()
                        .position(|n| &n.name() > name)
                        .unwrap_or(nodes.len())
                }
            },
        };

        let mut sessions: Vec<SessionSummary> = Vec::new();
        let mut seen = HashSet::new();
        let mut pending = std::collections::VecDeque::from(std::mem::take(&mut position.pending));
        let mut scans = 0;
        loop {
            // The rest of the last batch first, in its (sorted) order.
            while sessions.len() < page_size && !pending.is_empty() {
                let room = page_size - sessions.len();
                let taken: Vec<String> = pending
                    .drain(..room.min(pending.len()))
                    .filter(|id| seen.insert(id.clone()))
                    .collect();
                sessions.extend(self.summaries(taken).await?);
            }
            let finished = pending.is_empty() && node_index >= nodes.len();
            if sessions.len() == page_size || finished || scans == MAX_SCANS_PER_PAGE {
                let next_page_token = (!finished).then(|| {
                    encode_token(&ListPosition {
                        pending: pending.into_iter().collect(),
                        node: nodes.get(node_index).map(Node::name),
                        cursor: position.cursor,
                    })
                });
                return Ok(ListPage {
                    sessions,
                    next_page_token,
                });
            }
            let (next_cursor, ids) = self
                .scan(&nodes[node_index], position.cursor, &pattern)
                .await?;
            scans += 1;
            pending.extend(ids);
            position.cursor = next_cursor;
            if next_cursor == 0 {
                node_index += 1;
            }
        }
    }

    async fn stats(&self) -> StoreResult<StoreStats> {
        let pattern = keys::meta_pattern(&self.prefix, "");
        let mut stats = StoreStats {
            backend: self.backend().to_string(),
            ..StoreStats::default()
        };
        for node in self.redis.nodes().await? {
            let mut cursor = 0;
            loop {
                let (next, ids) = self.scan(&node, cursor, &pattern).await?;
                for summary in self.summaries(ids).await? {
                    stats.active_sessions += 1;
                    stats.total_messages += summary.message_count;
                    stats.usage_total += summary.usage_total;
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
            let mut info = redis::cmd("INFO");
            info.arg("memory");
            let text: String = self.redis.on_node(&node, "INFO memory", info).await?;
            stats.approximate_bytes += text
                .lines()
                .find_map(|line| line.strip_prefix("used_memory:"))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
        let records = self.count_records(None).await?;
        stats.learning_records = records.learning;
        stats.security_logs = records.security;
        Ok(stats)
    }

    async fn health_check(&self) -> StoreResult<()> {
        for node in self.redis.nodes().await? {
            let pong: String = self
                .redis
                .on_node(&node, "PING", redis::cmd("PING"))
                .await?;
            if pong != "PONG" {
                return Err(StoreError::Unavailable(format!(
                    "{} answered PING with {pong:?}",
                    node.name()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let position = ListPosition {
            pending: vec!["tenant/ü".into(), "z".into()],
            node: Some("127.0.0.1:7000".into()),
            cursor: 1234,
        };
        assert_eq!(decode_token(&encode_token(&position)).unwrap(), position);
        for bad in ["", "r2.zz", "r2.7b", "m1.00", "r2.é"] {
            assert!(decode_token(bad).is_err(), "{bad:?}");
        }
    }
}
