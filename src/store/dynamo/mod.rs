//! The DynamoDB backend: one meta item plus bounded chunk items per session, one table.
//!
//! Items (partition key `pk` = session id, sort key `sk`):
//! - `sk = "meta"`: version, message count, times, expiry, system messages and state (JSON
//!   text), the last 64 request ids, and the newest messages (`open`, at most 32 elements
//!   or 16 KB);
//! - `sk = "c#<gen>#<chunk>"`: a sealed list `msgs` of older messages, at most
//!   `CHUNK_BYTES`, far below DynamoDB's 400 KB item limit however long the session grows.
//!   A message larger than a fragment is split over several elements (and chunks).
//!
//! An append whose messages fit in `open` is one `UpdateItem` of the meta item that
//! `list_append`s them, on the condition that the version is the one read: atomic under
//! concurrent writers and sending only the new messages. When `open` is full, it and the
//! new messages are sealed into chunk items in one `TransactWriteItems` with the same
//! condition. A lost race (another writer changed the session) is retried from a fresh
//! read. This process remembers the meta item it last wrote, so a steady writer skips the
//! read; the condition still catches writes of other replicas.
//!
//! - `pk = "#rec#<stream>#<YYYY-MM-DD>"`, `sk = "r#<record id>"`: one learning record or
//!   security log, with `body` (JSON), `exp` (ms) and `ttl`. A time range is one Query per
//!   day, on the sort key (record ids sort by time).
//!
//! Expiry: reads compare the stored expiry (ms) with the clock, because DynamoDB deletes
//! expired items up to 48 hours late. Every item carries the TTL attribute `ttl` (epoch
//! seconds); chunks expire at the session's `horizon`, which leads its expiry by the TTL
//! (at most an hour) and is moved, with one update per chunk, only when the expiry catches
//! up with it. Chunks belong to one incarnation (`gen`) of a session, so a recreated
//! session never sees old chunks.

mod batch;
mod config;
mod errors;
mod items;
mod record_items;
mod table;
mod writes;

pub use config::{BACKEND, DynamoOptions};

use crate::domain::{
    Append, AppendOutcome, JsonObject, ListPage, ListQuery, Message, NewMessage, Role, Session,
    SessionId, SessionSummary, StateOutcome, StateUpdate, StoreStats, UsageTotal, Window,
    WriteOptions, WriteOutcome, tool_safe_start,
};
use crate::store::optimistic::{WriteLocks, new_generation};
use crate::store::records::{self, Record, RecordCounts, RecordRange, RecordStream};
use crate::store::{RecordStore, SessionStore, StoreError, StoreResult, check_version, page_token};
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::{Credentials, Region};
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, DeleteRequest, KeySchemaElement, KeyType,
    PutRequest, ScalarAttributeType, TimeToLiveSpecification, TransactWriteItem, Update,
    WriteRequest,
};
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;
use tokio::sync::OnceCell;

use batch::write_in_batches;
use errors::{lost_race, sdk_error};
use items::*;

/// Request ids remembered per session for idempotent appends.
const REMEMBERED_REQUEST_IDS: usize = 64;
/// Cancelled transactions (lost races with another writer) are retried this often.
const MAX_CONFLICT_RETRIES: u32 = 100;
/// Scan calls one ListSessions page may make before it returns what it has.
const MAX_SCANS_PER_PAGE: usize = 50;
/// Bytes counted per session for the meta item's fixed attributes.
const META_OVERHEAD_BYTES: u64 = 200;

/// The DynamoDB session store.
pub struct DynamoStore {
    client: Client,
    table: String,
    create_table: bool,
    timeout: Duration,
    ready: OnceCell<()>,
    write_locks: WriteLocks,
    /// The meta item as this process last wrote it, per session: the next write of the
    /// session skips the read (its condition still catches writes by other replicas).
    written: parking_lot::Mutex<HashMap<SessionId, Meta>>,
}

/// Most sessions whose meta item is remembered.
const REMEMBERED_METAS: usize = 10_000;

/// The outcome of one optimistic attempt.
enum Attempt<T> {
    Done(T),
    Retry,
}

impl DynamoStore {
    /// A store on the table the options name; the table is checked (or created) lazily.
    pub async fn new(options: &DynamoOptions) -> StoreResult<Self> {
        let timeouts = aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
            .operation_timeout(options.timeout)
            .connect_timeout(options.timeout)
            .build();
        let retries = aws_sdk_dynamodb::config::retry::RetryConfig::standard()
            .with_max_attempts(options.max_retries + 1);
        let config = match &options.endpoint {
            Some(endpoint) => {
                let key =
                    std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "csai-local".into());
                let secret =
                    std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "csai-local".into());
                aws_sdk_dynamodb::Config::builder()
                    .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
                    .region(Region::new(options.region.clone()))
                    .endpoint_url(endpoint)
                    .credentials_provider(Credentials::new(key, secret, None, None, "csai-static"))
                    .timeout_config(timeouts)
                    .retry_config(retries)
                    .build()
            }
            None => {
                let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(Region::new(options.region.clone()))
                    .load()
                    .await;
                aws_sdk_dynamodb::config::Builder::from(&shared)
                    .timeout_config(timeouts)
                    .retry_config(retries)
                    .build()
            }
        };
        Ok(Self {
            client: Client::from_conf(config),
            table: options.table.clone(),
            create_table: options.create_table,
            timeout: options.timeout,
            ready: OnceCell::new(),
            write_locks: WriteLocks::new(),
            written: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    /// Runs an operation within the timeout after the table is ready.
    async fn bounded<T>(
        &self,
        what: &str,
        operation: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let run = async {
            self.ensure_ready().await?;
            operation.await
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(format!(
                "DynamoDB did not complete {what} within {:?} (timeout)",
                self.timeout
            ))),
        }
    }

    /// Retries an optimistic write until it wins (or is answered without a write). The
    /// first attempt may start from the remembered meta item; after a lost race every
    /// attempt reads it afresh.
    async fn optimistic<T, F, Fut>(
        &self,
        id: &SessionId,
        what: &str,
        mut attempt: F,
    ) -> StoreResult<T>
    where
        F: FnMut(bool) -> Fut,
        Fut: Future<Output = StoreResult<Attempt<T>>>,
    {
        self.bounded(what, async {
            let _serialised = self.write_locks.lock(id).await;
            for round in 0..MAX_CONFLICT_RETRIES {
                let outcome = attempt(round == 0).await;
                if !matches!(outcome, Ok(Attempt::Done(_))) {
                    self.written.lock().remove(id);
                }
                match outcome? {
                    Attempt::Done(value) => return Ok(value),
                    Attempt::Retry => {
                        tokio::time::sleep(Duration::from_millis(u64::from(round.min(20)) * 5)).await;
                    }
                }
            }
            Err(StoreError::Unavailable(format!(
                "{what} lost {MAX_CONFLICT_RETRIES} races with other writers of the session; retry later"
            )))
        })
        .await
    }

    /// Messages with seq in `from..=to` of one incarnation, reading chunks from the end
    /// backwards only as far as needed.
    async fn messages_between(
        &self,
        id: &SessionId,
        meta: &Meta,
        from: u64,
        to: u64,
    ) -> StoreResult<Vec<Message>> {
        let generation = &meta.generation;
        let mut chunks: Vec<Vec<AttributeValue>> = Vec::new();
        let mut start: Option<Item> = None;
        // The newest messages are in the meta item: chunks are read only for older ones.
        let open_first = meta.open.first().map(seq_of);
        // As many chunks per page as the window needs if they are full, then twice as
        // many: a query without a limit reads (and bills) up to 1 MB of the session
        // however small the window, which made every window read O(session).
        let wanted = open_first.unwrap_or(to + 1).saturating_sub(from);
        let mut limit = (wanted / items::OPEN_ELEMENTS as u64 + 2).min(1_000) as i32;
        'pages: loop {
            if open_first.is_some_and(|first| first <= from) || meta.chunk == 0 {
                break;
            }
            let output = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .expression_attribute_values(":pk", s(id.as_str()))
                .expression_attribute_values(":prefix", s(chunk_prefix(generation)))
                .scan_index_forward(false)
                .consistent_read(true)
                .limit(limit)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| sdk_error("reading messages", e))?;
            for item in output.items() {
                let first = get_n(item, "first")?;
                if first > to {
                    continue;
                }
                match item.get("msgs") {
                    Some(AttributeValue::L(elements)) => chunks.push(elements.clone()),
                    other => return Err(corrupt(format!("msgs is {other:?}"))),
                }
                // A chunk that starts inside a split message needs the chunk before it.
                let starts_inside = matches!(
                    item.get("msgs"),
                    Some(AttributeValue::L(elements))
                        if matches!(elements.first(), Some(AttributeValue::M(m)) if m.get("p").is_some_and(|p| p.as_n().is_ok_and(|p| p != "0")))
                );
                if first <= from && !starts_inside {
                    break 'pages;
                }
            }
            match output.last_evaluated_key() {
                Some(key) => start = Some(key.clone()),
                None => break,
            }
            limit = limit.saturating_mul(2).min(1_000);
        }
        let elements: Vec<AttributeValue> = chunks
            .into_iter()
            .rev()
            .flatten()
            .chain(meta.open.iter().cloned())
            .collect();
        Ok(messages_of(&elements)?
            .into_iter()
            .filter(|m| m.seq >= from && m.seq <= to)
            .collect())
    }

    async fn read(&self, id: &SessionId, window: Window) -> StoreResult<Session> {
        let (live, _) = self.live_meta(id).await?;
        let meta = live.ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        let count = meta.count;
        let from = match window {
            Window::All => 1,
            Window::LastN(n) => count.saturating_sub(u64::from(n)) + 1,
            Window::AfterSeq(seq) => seq.saturating_add(1),
        };
        let mut messages = if from > count {
            Vec::new()
        } else {
            self.messages_between(id, &meta, from, count).await?
        };
        if let Window::LastN(n) = window {
            // Tool-safe: read further back while the window starts with tool results.
            loop {
                let start = tool_safe_start(&messages, n as usize);
                match messages.first() {
                    Some(first) if start == 0 && first.seq > 1 && first.body.role == Role::Tool => {
                        let earlier_to = first.seq - 1;
                        let earlier = self
                            .messages_between(
                                id,
                                &meta,
                                earlier_to.saturating_sub(50).max(1),
                                earlier_to,
                            )
                            .await?;
                        if earlier.is_empty() {
                            break;
                        }
                        messages.splice(0..0, earlier);
                    }
                    _ => {
                        messages.drain(..start);
                        break;
                    }
                }
            }
        }
        let system: Vec<StoredMessage> = serde_json::from_str(&meta.system).map_err(corrupt)?;
        Ok(Session {
            id: id.clone(),
            messages,
            system_messages: system
                .into_iter()
                .map(|m| m.m.stored(m.s, to_time(m.t)))
                .collect(),
            state: serde_json::from_str(&meta.state).map_err(corrupt)?,
            version: meta.version,
            message_count: count,
            usage_total: meta.usage_total,
            create_time: to_time(meta.created),
            update_time: to_time(meta.updated),
            expire_time: to_time(meta.expire),
        })
    }
}

#[async_trait]
impl SessionStore for DynamoStore {
    fn backend(&self) -> &'static str {
        "dynamo"
    }

    async fn get(&self, id: &SessionId, window: Window) -> StoreResult<Session> {
        self.bounded("get session", self.read(id, window)).await
    }

    async fn append(&self, id: &SessionId, append: Append) -> StoreResult<AppendOutcome> {
        self.optimistic(id, "append", |use_cache| {
            self.append_attempt(id, &append, use_cache)
        })
        .await
    }

    async fn replace(
        &self,
        id: &SessionId,
        messages: Vec<NewMessage>,
        options: WriteOptions,
    ) -> StoreResult<WriteOutcome> {
        self.optimistic(id, "replace messages", |_| {
            self.replace_attempt(id, &messages, &options)
        })
        .await
    }

    async fn set_system_messages(
        &self,
        id: &SessionId,
        messages: Vec<NewMessage>,
        options: WriteOptions,
    ) -> StoreResult<WriteOutcome> {
        let set = |meta: &mut Meta, now: u64| {
            let stored: Vec<StoredMessage> = messages
                .iter()
                .enumerate()
                .map(|(i, m)| StoredMessage {
                    s: i as u64 + 1,
                    t: m.create_time.map_or(now, items::to_ms),
                    m: m.clone(),
                })
                .collect();
            meta.system =
                serde_json::to_string(&stored).map_err(|e| StoreError::Internal(e.to_string()))?;
            Ok(())
        };
        let (written, _) = self
            .optimistic(id, "set system messages", |use_cache| {
                self.meta_attempt(id, &options, use_cache, set)
            })
            .await?;
        Ok(written)
    }

    async fn update_state(
        &self,
        id: &SessionId,
        update: StateUpdate,
        options: WriteOptions,
    ) -> StoreResult<StateOutcome> {
        let apply = |meta: &mut Meta, _now: u64| {
            let mut state: JsonObject = serde_json::from_str(&meta.state).map_err(corrupt)?;
            update.clone().apply(&mut state);
            meta.state =
                serde_json::to_string(&state).map_err(|e| StoreError::Internal(e.to_string()))?;
            Ok(())
        };
        let (write, meta) = self
            .optimistic(id, "update state", |use_cache| {
                self.meta_attempt(id, &options, use_cache, apply)
            })
            .await?;
        Ok(StateOutcome {
            write,
            state: serde_json::from_str(&meta.state).map_err(corrupt)?,
        })
    }

    async fn touch(&self, id: &SessionId, ttl: Duration) -> StoreResult<WriteOutcome> {
        self.optimistic(id, "touch", |use_cache| async move {
            let (live, _, _) = self.meta_for_write(id, use_cache).await?;
            let mut meta = live.ok_or_else(|| StoreError::NotFound(id.to_string()))?;
            let read_version = meta.version;
            let expire = now_ms() + ttl.as_millis() as u64;
            self.advance_horizon(id, &mut meta, true, expire, ttl)
                .await?;
            meta.expire = expire;
            let update = self.meta_update(id, &meta, Some(read_version), OpenChange::Keep)?;
            if let Attempt::Retry = self.write_meta(update, Vec::new()).await? {
                return Ok(Attempt::Retry);
            }
            Ok(Attempt::Done(WriteOutcome {
                version: meta.version,
                expire_time: to_time(expire),
            }))
        })
        .await
    }

    async fn delete(&self, id: &SessionId, expected_version: Option<u64>) -> StoreResult<bool> {
        self.optimistic(id, "delete", |_| self.delete_attempt(id, expected_version))
            .await
    }

    async fn list(&self, query: ListQuery) -> StoreResult<ListPage> {
        self.bounded("list sessions", async {
            let mut start: Option<Item> = match &query.page_token {
                Some(token) => {
                    let keys: HashMap<String, String> =
                        serde_json::from_slice(&page_token::decode("d1", token)?).map_err(
                            |_| StoreError::InvalidPageToken("the position is not readable".into()),
                        )?;
                    Some(keys.into_iter().map(|(k, v)| (k, s(v))).collect())
                }
                None => None,
            };
            let page_size = query.page_size.max(1) as usize;
            let mut sessions = Vec::new();
            for _ in 0..MAX_SCANS_PER_PAGE {
                // Limit bounds what one call evaluates, so that its LastEvaluatedKey never
                // skips a match this page has no room for.
                let output = self
                    .client
                    .scan()
                    .table_name(&self.table)
                    .filter_expression("sk = :meta AND begins_with(pk, :prefix) AND #exp > :now")
                    .expression_attribute_names("#exp", "exp")
                    .expression_attribute_names("#ver", "ver")
                    .expression_attribute_names("#cnt", "cnt")
                    .expression_attribute_names("#updated", "updated")
                    .expression_attribute_names("#usage", "usage")
                    .expression_attribute_values(":meta", s(META))
                    .expression_attribute_values(":prefix", s(&query.prefix))
                    .expression_attribute_values(":now", n(now_ms()))
                    .projection_expression("pk, #ver, #cnt, #updated, #exp, #usage")
                    .limit((page_size - sessions.len()) as i32)
                    .set_exclusive_start_key(start.take())
                    .send()
                    .await
                    .map_err(|e| sdk_error("listing sessions", e))?;
                for item in output.items() {
                    sessions.push(SessionSummary {
                        id: SessionId::new(get_s(item, "pk")?),
                        message_count: get_n(item, "cnt")?,
                        version: get_n(item, "ver")?,
                        update_time: to_time(get_n(item, "updated")?),
                        expire_time: to_time(get_n(item, "exp")?),
                        usage_total: items::usage_of(item)?,
                    });
                }
                start = output.last_evaluated_key().cloned();
                if start.is_none() || sessions.len() >= page_size {
                    break;
                }
            }
            let next_page_token = match start {
                None => None,
                Some(key) => {
                    let keys: HashMap<String, String> = key
                        .into_iter()
                        .filter_map(|(k, v)| v.as_s().ok().map(|v| (k, v.clone())))
                        .collect();
                    let json = serde_json::to_vec(&keys)
                        .map_err(|e| StoreError::Internal(e.to_string()))?;
                    Some(page_token::encode("d1", &json))
                }
            };
            Ok(ListPage {
                sessions,
                next_page_token,
            })
        })
        .await
    }

    async fn stats(&self) -> StoreResult<StoreStats> {
        let stats = self
            .bounded("stats", async {
                let mut stats = StoreStats {
                    backend: self.backend().to_string(),
                    ..StoreStats::default()
                };
                let mut start: Option<Item> = None;
                loop {
                    let output = self
                        .client
                        .scan()
                        .table_name(&self.table)
                        .filter_expression("sk = :meta AND #exp > :now")
                        .expression_attribute_names("#exp", "exp")
                        .expression_attribute_names("#cnt", "cnt")
                        .expression_attribute_names("#mbytes", "mbytes")
                        .expression_attribute_names("#sys", "sys")
                        .expression_attribute_names("#state", "state")
                        .expression_attribute_names("#usage", "usage")
                        .expression_attribute_values(":meta", s(META))
                        .expression_attribute_values(":now", n(now_ms()))
                        .projection_expression("pk, #cnt, #mbytes, #sys, #state, #usage")
                        .set_exclusive_start_key(start.take())
                        .send()
                        .await
                        .map_err(|e| sdk_error("counting sessions", e))?;
                    for item in output.items() {
                        stats.active_sessions += 1;
                        stats.total_messages += get_n(item, "cnt")?;
                        stats.usage_total += items::usage_of(item)?;
                        stats.approximate_bytes += get_n(item, "mbytes").unwrap_or(0)
                            + (get_s(item, "pk")?.len()
                                + get_s(item, "sys")?.len()
                                + get_s(item, "state")?.len()) as u64
                            + META_OVERHEAD_BYTES;
                    }
                    match output.last_evaluated_key() {
                        Some(key) => start = Some(key.clone()),
                        None => break,
                    }
                }
                Ok(stats)
            })
            .await?;
        let records = self.count_records(None).await?;
        Ok(StoreStats {
            learning_records: records.learning,
            security_logs: records.security,
            ..stats
        })
    }

    async fn health_check(&self) -> StoreResult<()> {
        self.bounded("health check", async {
            self.client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map(drop)
                .map_err(|e| sdk_error("health check", e))
        })
        .await
    }
}
