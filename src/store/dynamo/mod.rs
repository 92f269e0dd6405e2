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
mod items;

pub use config::{BACKEND, DynamoOptions};

use crate::domain::{
    Append, AppendOutcome, JsonObject, ListPage, ListQuery, Message, NewMessage, Role, Session,
    SessionId, SessionSummary, StateOutcome, StateUpdate, StoreStats, Window, WriteOptions,
    WriteOutcome, tool_safe_start,
};
use crate::store::optimistic::{WriteLocks, new_generation};
use crate::store::records::{self, Record, RecordRange, RecordStream};
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

/// Sort-key prefix of record items; session items use `meta` and `c#`.
const RECORD_PREFIX: &str = "r#";

/// The partition of one day of a record stream. A session whose id happened to equal it
/// could not collide: its items have other sort keys.
fn record_partition(stream: &RecordStream, day: u64) -> String {
    format!("#rec#{}#{}", stream.name(), records::day_name(day))
}

fn sdk_error<E: ProvideErrorMetadata + std::fmt::Debug>(
    what: &str,
    error: SdkError<E>,
) -> StoreError {
    match &error {
        SdkError::TimeoutError(_) => {
            StoreError::Timeout(format!("DynamoDB timed out during {what}"))
        }
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            StoreError::Unavailable(format!("DynamoDB is unreachable during {what}: {error:?}"))
        }
        _ => {
            let code = error.code().unwrap_or("unknown").to_string();
            let message = error.message().unwrap_or("").to_string();
            match code.as_str() {
                "ProvisionedThroughputExceededException"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "InternalServerError"
                | "ServiceUnavailable" => StoreError::Unavailable(format!(
                    "DynamoDB is throttling or failing {what}: {code}: {message}"
                )),
                "ValidationException" if message.contains("size") => {
                    StoreError::LimitExceeded(format!(
                        "DynamoDB refused {what}: {message} (an item is limited to 400 KB: system messages, state \
                     and the last request ids share one item)"
                    ))
                }
                "ResourceNotFoundException" => StoreError::Unavailable(format!(
                    "DynamoDB table missing during {what}: {message}; create it (deploy/dynamodb-table.json) \
                     or set dynamo_create_table = true"
                )),
                _ => StoreError::Internal(format!("DynamoDB failed {what}: {code}: {message}")),
            }
        }
    }
}

/// True when a transaction was cancelled because a condition failed (another writer won).
fn lost_race<E: ProvideErrorMetadata>(error: &SdkError<E>) -> bool {
    matches!(
        error.code(),
        Some(
            "TransactionCanceledException"
                | "ConditionalCheckFailedException"
                | "TransactionConflictException"
        )
    )
}

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

    /// Checks that the table exists, or creates it when configured to, once.
    async fn ensure_ready(&self) -> StoreResult<()> {
        self.ready
            .get_or_try_init(|| async {
                let described = self
                    .client
                    .describe_table()
                    .table_name(&self.table)
                    .send()
                    .await;
                match described {
                    Ok(_) => Ok(()),
                    Err(error)
                        if error.code() == Some("ResourceNotFoundException")
                            && self.create_table =>
                    {
                        self.create_missing_table().await
                    }
                    Err(error) => Err(sdk_error("checking the table", error)),
                }
            })
            .await
            .map(|_| ())
    }

    async fn create_missing_table(&self) -> StoreResult<()> {
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(|e| StoreError::Internal(e.to_string()))
        };
        let attribute = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(|e| StoreError::Internal(e.to_string()))
        };
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .key_schema(key("pk", KeyType::Hash)?)
            .key_schema(key("sk", KeyType::Range)?)
            .attribute_definitions(attribute("pk")?)
            .attribute_definitions(attribute("sk")?)
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        match created {
            Ok(_) => {}
            // Another replica created it first.
            Err(error) if error.code() == Some("ResourceInUseException") => {}
            Err(error) => return Err(sdk_error("creating the table", error)),
        }
        for _ in 0..100 {
            let status = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(|e| sdk_error("waiting for the table", e))?
                .table()
                .and_then(|t| t.table_status().cloned());
            if status == Some(aws_sdk_dynamodb::types::TableStatus::Active) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let ttl = TimeToLiveSpecification::builder()
            .attribute_name("ttl")
            .enabled(true)
            .build()
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        self.client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(ttl)
            .send()
            .await
            .map_err(|e| sdk_error("enabling TTL", e))?;
        tracing::info!(table = %self.table, "created the DynamoDB table");
        Ok(())
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

    /// The meta item, if the session is live; an expired one counts as absent.
    async fn live_meta(&self, id: &SessionId) -> StoreResult<(Option<Meta>, Option<Meta>)> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(id.as_str()))
            .key("sk", s(META))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("reading a session", e))?;
        match output.item() {
            None => Ok((None, None)),
            Some(item) => {
                let meta = Meta::from_item(item)?;
                if meta.expire > now_ms() {
                    Ok((Some(meta), None))
                } else {
                    Ok((None, Some(meta)))
                }
            }
        }
    }

    /// The meta item for a write: the remembered one when `use_cache` allows and it is
    /// still live, else read. Returns (live, expired, from_cache).
    async fn meta_for_write(
        &self,
        id: &SessionId,
        use_cache: bool,
    ) -> StoreResult<(Option<Meta>, Option<Meta>, bool)> {
        if use_cache
            && let Some(meta) = self.written.lock().get(id).cloned()
            && meta.expire > now_ms()
        {
            return Ok((Some(meta), None, true));
        }
        let (live, expired) = self.live_meta(id).await?;
        Ok((live, expired, false))
    }

    /// Remembers the meta item this process just wrote.
    fn remember(&self, id: &SessionId, meta: &Meta) {
        let mut written = self.written.lock();
        if written.len() >= REMEMBERED_METAS && !written.contains_key(id) {
            written.clear();
        }
        written.insert(id.clone(), meta.clone());
    }

    /// Keys of every chunk of one incarnation.
    async fn chunk_keys(&self, id: &SessionId, generation: &str) -> StoreResult<Vec<String>> {
        let mut keys = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let output = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .expression_attribute_values(":pk", s(id.as_str()))
                .expression_attribute_values(":prefix", s(chunk_prefix(generation)))
                .projection_expression("sk")
                .set_exclusive_start_key(start)
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| sdk_error("listing chunks", e))?;
            for item in output.items() {
                keys.push(get_s(item, "sk")?.to_string());
            }
            match output.last_evaluated_key() {
                Some(key) => start = Some(key.clone()),
                None => return Ok(keys),
            }
        }
    }

    /// Deletes chunks (of a replaced, deleted or expired incarnation) in batches.
    async fn delete_chunks(&self, id: &SessionId, keys: Vec<String>) -> StoreResult<()> {
        let requests = keys
            .into_iter()
            .map(|sk| {
                let delete = DeleteRequest::builder()
                    .key("pk", s(id.as_str()))
                    .key("sk", s(sk))
                    .build()
                    .map_err(|e| StoreError::Internal(e.to_string()))?;
                Ok(WriteRequest::builder().delete_request(delete).build())
            })
            .collect::<StoreResult<Vec<_>>>()?;
        self.batch_write(requests).await
    }

    async fn batch_write(&self, requests: Vec<WriteRequest>) -> StoreResult<()> {
        write_in_batches(requests, |batch| async move {
            let output = self
                .client
                .batch_write_item()
                .request_items(&self.table, batch)
                .send()
                .await
                .map_err(|e| sdk_error("a batch write", e))?;
            Ok(output
                .unprocessed_items()
                .and_then(|items| items.get(&self.table))
                .cloned()
                .unwrap_or_default())
        })
        .await
    }

    /// Moves chunk expiry ahead when the session's expiry catches up with it.
    async fn advance_horizon(
        &self,
        id: &SessionId,
        meta: &mut Meta,
        existed: bool,
        expire: u64,
        ttl: Duration,
    ) -> StoreResult<()> {
        if expire <= meta.horizon {
            return Ok(());
        }
        meta.horizon = expire + horizon_lead_ms(ttl);
        if existed {
            // Chunks first: if this fails, the session's expiry is not moved either.
            for sk in self.chunk_keys(id, &meta.generation).await? {
                self.client
                    .update_item()
                    .table_name(&self.table)
                    .key("pk", s(id.as_str()))
                    .key("sk", s(sk))
                    .update_expression("SET #ttl = :ttl")
                    .expression_attribute_names("#ttl", "ttl")
                    .expression_attribute_values(":ttl", n(ttl_seconds(meta.horizon)))
                    .send()
                    .await
                    .map_err(|e| sdk_error("extending chunk expiry", e))?;
            }
        }
        Ok(())
    }

    /// The meta item's update: every field from `meta`, the open messages as `open` says,
    /// guarded by the version read (or by the item's absence).
    fn meta_update(
        &self,
        id: &SessionId,
        meta: &Meta,
        read_version: Option<u64>,
        open: OpenChange,
    ) -> StoreResult<Update> {
        let reqs =
            serde_json::to_string(&meta.reqs).map_err(|e| StoreError::Internal(e.to_string()))?;
        let mut sets = vec![
            ("gen", s(&meta.generation)),
            ("ver", n(meta.version)),
            ("cnt", n(meta.count)),
            ("chunk", n(meta.chunk)),
            ("obytes", n(meta.open_bytes)),
            ("mbytes", n(meta.message_bytes)),
            ("created", n(meta.created)),
            ("updated", n(meta.updated)),
            ("exp", n(meta.expire)),
            ("horizon", n(meta.horizon)),
            ("sys", s(&meta.system)),
            ("state", s(&meta.state)),
            ("reqs", s(reqs)),
            ("ttl", n(ttl_seconds(meta.expire))),
        ];
        let mut expression: Vec<String> = sets
            .iter()
            .map(|(name, _)| format!("#{name} = :{name}"))
            .collect();
        match open {
            OpenChange::Keep => {}
            OpenChange::Append(elements) => {
                expression.push("#open = list_append(if_not_exists(#open, :empty), :open)".into());
                sets.push(("open", AttributeValue::L(elements)));
                sets.push(("empty", AttributeValue::L(Vec::new())));
            }
            OpenChange::Set(elements) => {
                expression.push("#open = :open".into());
                sets.push(("open", AttributeValue::L(elements)));
            }
        }
        let mut update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(id.as_str()))
            .key("sk", s(META))
            .update_expression(format!("SET {}", expression.join(", ")));
        for (name, value) in sets {
            if name != "empty" {
                update = update.expression_attribute_names(format!("#{name}"), name);
            }
            update = update.expression_attribute_values(format!(":{name}"), value);
        }
        update = match read_version {
            Some(version) => update
                .condition_expression("#ver = :read")
                .expression_attribute_values(":read", n(version)),
            None => update.condition_expression("attribute_not_exists(pk)"),
        };
        update
            .build()
            .map_err(|e| StoreError::Internal(e.to_string()))
    }

    /// Writes the meta item alone (one conditional UpdateItem), or with sealed chunks (one
    /// transaction). `Retry` if another writer changed the session since it was read.
    async fn write_meta(
        &self,
        update: Update,
        chunks: Vec<TransactWriteItem>,
    ) -> StoreResult<Attempt<()>> {
        if chunks.is_empty() {
            let result = self
                .client
                .update_item()
                .table_name(update.table_name())
                .set_key(Some(update.key().clone()))
                .update_expression(update.update_expression())
                .set_condition_expression(update.condition_expression().map(String::from))
                .set_expression_attribute_names(update.expression_attribute_names().cloned())
                .set_expression_attribute_values(update.expression_attribute_values().cloned())
                .send()
                .await;
            return match result {
                Ok(_) => Ok(Attempt::Done(())),
                Err(error) if lost_race(&error) => Ok(Attempt::Retry),
                Err(error) => Err(sdk_error("writing a session", error)),
            };
        }
        let mut items = vec![TransactWriteItem::builder().update(update).build()];
        items.extend(chunks);
        self.commit(items).await
    }

    /// Commits meta and chunk updates together; `Retry` if another writer won the race.
    async fn commit(&self, items: Vec<TransactWriteItem>) -> StoreResult<Attempt<()>> {
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(Attempt::Done(())),
            Err(error) if lost_race(&error) => Ok(Attempt::Retry),
            Err(error) => Err(sdk_error("a transactional write", error)),
        }
    }

    /// A sealed chunk item, as a transaction's Put.
    fn chunk_transact_put(
        &self,
        id: &SessionId,
        meta: &Meta,
        group: ChunkGroup,
    ) -> StoreResult<TransactWriteItem> {
        let put = aws_sdk_dynamodb::types::Put::builder()
            .table_name(&self.table)
            .set_item(Some(self.chunk_item(id, meta, group)))
            .build()
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    fn chunk_item(&self, id: &SessionId, meta: &Meta, group: ChunkGroup) -> Item {
        Item::from([
            ("pk".to_string(), s(id.as_str())),
            (
                "sk".to_string(),
                s(chunk_key(&meta.generation, group.chunk)),
            ),
            ("msgs".to_string(), AttributeValue::L(group.elements)),
            ("first".to_string(), n(group.first)),
            ("last".to_string(), n(group.last)),
            ("ttl".to_string(), n(ttl_seconds(meta.horizon))),
        ])
    }

    /// A sealed chunk item, as a batch write request (for replace).
    fn chunk_put(
        &self,
        id: &SessionId,
        meta: &Meta,
        group: ChunkGroup,
    ) -> StoreResult<WriteRequest> {
        let put = PutRequest::builder()
            .set_item(Some(self.chunk_item(id, meta, group)))
            .build()
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        Ok(WriteRequest::builder().put_request(put).build())
    }

    /// Removes what an expired incarnation left behind (best effort: TTL would too).
    async fn clean_expired(&self, id: &SessionId, expired: Option<Meta>) {
        if let Some(expired) = expired {
            match self.chunk_keys(id, &expired.generation).await {
                Ok(keys) => {
                    if let Err(error) = self.delete_chunks(id, keys).await {
                        tracing::debug!(%error, "could not delete the chunks of an expired session");
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "could not list the chunks of an expired session")
                }
            }
        }
    }

    async fn append_attempt(
        &self,
        id: &SessionId,
        append: &Append,
        use_cache: bool,
    ) -> StoreResult<Attempt<AppendOutcome>> {
        let now = now_ms();
        let (live, expired, cached) = self.meta_for_write(id, use_cache).await?;
        let read_version = live
            .as_ref()
            .map(|m| m.version)
            .or(expired.as_ref().map(|m| m.version));
        if let (Some(meta), Some(request_id)) = (&live, &append.request_id)
            && let Some(earlier) = meta.reqs.iter().find(|r| &r.id == request_id)
        {
            return Ok(Attempt::Done(AppendOutcome {
                first_seq: earlier.first,
                count: earlier.count,
                version: earlier.version,
                expire_time: to_time(earlier.expire),
                deduplicated: true,
            }));
        }
        let existed = live.is_some();
        let mut meta = live.unwrap_or_else(|| Meta::fresh(now));
        if cached
            && append
                .options
                .expected_version
                .is_some_and(|v| v != meta.version)
        {
            // Another replica may have moved the version: decide on a fresh read.
            return Ok(Attempt::Retry);
        }
        check_version(append.options.expected_version, meta.version)?;
        let expire = now + append.options.ttl.as_millis() as u64;
        self.advance_horizon(id, &mut meta, existed, expire, append.options.ttl)
            .await?;
        let first_seq = meta.count + 1;
        let (open, groups) = place_messages(&mut meta, &append.messages, now)?;
        let chunks = groups
            .into_iter()
            .map(|group| self.chunk_transact_put(id, &meta, group))
            .collect::<StoreResult<Vec<_>>>()?;
        meta.version += 1;
        meta.updated = now;
        meta.expire = expire;
        if let Some(request_id) = &append.request_id {
            meta.reqs.push(RecentAppend {
                id: request_id.clone(),
                first: first_seq,
                count: append.messages.len() as u64,
                version: meta.version,
                expire,
            });
            let excess = meta.reqs.len().saturating_sub(REMEMBERED_REQUEST_IDS);
            meta.reqs.drain(..excess);
        }
        let update = self.meta_update(id, &meta, read_version, open)?;
        if let Attempt::Retry = self.write_meta(update, chunks).await? {
            return Ok(Attempt::Retry);
        }
        self.remember(id, &meta);
        self.clean_expired(id, expired).await;
        Ok(Attempt::Done(AppendOutcome {
            first_seq,
            count: append.messages.len() as u64,
            version: meta.version,
            expire_time: to_time(expire),
            deduplicated: false,
        }))
    }

    /// Changes only the meta item (system messages, state, expiry) under the version read.
    async fn meta_attempt(
        &self,
        id: &SessionId,
        options: &WriteOptions,
        use_cache: bool,
        change: impl Fn(&mut Meta, u64) -> StoreResult<()>,
    ) -> StoreResult<Attempt<(WriteOutcome, Meta)>> {
        let now = now_ms();
        let (live, expired, cached) = self.meta_for_write(id, use_cache).await?;
        let read_version = live
            .as_ref()
            .map(|m| m.version)
            .or(expired.as_ref().map(|m| m.version));
        let existed = live.is_some();
        let mut meta = live.unwrap_or_else(|| Meta::fresh(now));
        if cached && options.expected_version.is_some_and(|v| v != meta.version) {
            return Ok(Attempt::Retry);
        }
        check_version(options.expected_version, meta.version)?;
        let expire = now + options.ttl.as_millis() as u64;
        self.advance_horizon(id, &mut meta, existed, expire, options.ttl)
            .await?;
        change(&mut meta, now)?;
        meta.version += 1;
        meta.updated = now;
        meta.expire = expire;
        let update = self.meta_update(id, &meta, read_version, OpenChange::Keep)?;
        if let Attempt::Retry = self.write_meta(update, Vec::new()).await? {
            return Ok(Attempt::Retry);
        }
        self.remember(id, &meta);
        self.clean_expired(id, expired).await;
        Ok(Attempt::Done((
            WriteOutcome {
                version: meta.version,
                expire_time: to_time(expire),
            },
            meta,
        )))
    }

    async fn replace_attempt(
        &self,
        id: &SessionId,
        messages: &[NewMessage],
        options: &WriteOptions,
    ) -> StoreResult<Attempt<WriteOutcome>> {
        let now = now_ms();
        let (live, expired) = self.live_meta(id).await?;
        let read_version = live
            .as_ref()
            .map(|m| m.version)
            .or(expired.as_ref().map(|m| m.version));
        let old = live.clone().or(expired);
        let mut meta = live.unwrap_or_else(|| Meta::fresh(now));
        check_version(options.expected_version, meta.version)?;
        let expire = now + options.ttl.as_millis() as u64;
        meta.generation = new_generation();
        meta.count = 0;
        meta.chunk = 0;
        meta.open = Vec::new();
        meta.open_bytes = 0;
        meta.message_bytes = 0;
        meta.horizon = expire + horizon_lead_ms(options.ttl);
        // New chunks go in first (invisible until the meta item points to them)...
        let (_, groups) = place_messages(&mut meta, messages, now)?;
        let puts = groups
            .into_iter()
            .map(|group| self.chunk_put(id, &meta, group))
            .collect::<StoreResult<Vec<_>>>()?;
        self.batch_write(puts).await?;
        meta.version += 1;
        meta.updated = now;
        meta.expire = expire;
        // ...then the meta item switches to them, and the old ones go.
        let update =
            self.meta_update(id, &meta, read_version, OpenChange::Set(meta.open.clone()))?;
        if let Attempt::Retry = self.write_meta(update, Vec::new()).await? {
            let orphans = self.chunk_keys(id, &meta.generation).await?;
            self.delete_chunks(id, orphans).await?;
            return Ok(Attempt::Retry);
        }
        self.remember(id, &meta);
        if let Some(old) = old {
            let keys = self.chunk_keys(id, &old.generation).await?;
            self.delete_chunks(id, keys).await?;
        }
        Ok(Attempt::Done(WriteOutcome {
            version: meta.version,
            expire_time: to_time(expire),
        }))
    }

    async fn delete_attempt(
        &self,
        id: &SessionId,
        expected_version: Option<u64>,
    ) -> StoreResult<Attempt<bool>> {
        let (live, expired) = self.live_meta(id).await?;
        check_version(expected_version, live.as_ref().map_or(0, |m| m.version))?;
        let Some(meta) = live.or(expired.clone()) else {
            return Ok(Attempt::Done(false));
        };
        let deleted = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(id.as_str()))
            .key("sk", s(META))
            .condition_expression("#ver = :read")
            .expression_attribute_names("#ver", "ver")
            .expression_attribute_values(":read", n(meta.version))
            .send()
            .await;
        match deleted {
            Ok(_) => {}
            Err(error) if lost_race(&error) => return Ok(Attempt::Retry),
            Err(error) => return Err(sdk_error("deleting a session", error)),
        }
        self.written.lock().remove(id);
        let keys = self.chunk_keys(id, &meta.generation).await?;
        self.delete_chunks(id, keys).await?;
        Ok(Attempt::Done(expired.is_none()))
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
                    .expression_attribute_values(":meta", s(META))
                    .expression_attribute_values(":prefix", s(&query.prefix))
                    .expression_attribute_values(":now", n(now_ms()))
                    .projection_expression("pk, #ver, #cnt, #updated, #exp")
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
        self.bounded("stats", async {
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
                    .expression_attribute_values(":meta", s(META))
                    .expression_attribute_values(":now", n(now_ms()))
                    .projection_expression("pk, #cnt, #mbytes, #sys, #state")
                    .set_exclusive_start_key(start.take())
                    .send()
                    .await
                    .map_err(|e| sdk_error("counting sessions", e))?;
                for item in output.items() {
                    stats.active_sessions += 1;
                    stats.total_messages += get_n(item, "cnt")?;
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
        .await
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

#[async_trait]
impl RecordStore for DynamoStore {
    async fn put_record(&self, stream: &RecordStream, record: Record) -> StoreResult<()> {
        let day = records::day_of(record.time());
        let expire_ms = items::to_ms(record.expire_time);
        self.bounded("put record", async {
            self.client
                .put_item()
                .table_name(&self.table)
                .item("pk", s(record_partition(stream, day)))
                .item("sk", s(format!("{RECORD_PREFIX}{}", record.id)))
                .item("body", s(record.body))
                .item("exp", n(expire_ms))
                .item("ttl", n(expire_ms / 1000 + 1))
                .send()
                .await
                .map_err(|e| sdk_error("put record", e))?;
            Ok(())
        })
        .await
    }

    async fn list_records(
        &self,
        stream: &RecordStream,
        range: &RecordRange,
    ) -> StoreResult<Vec<Record>> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        self.bounded("list records", async {
            let now = items::now_ms();
            let mut found = Vec::new();
            for day in range.days() {
                let mut start: Option<Item> = None;
                loop {
                    let output = self
                        .client
                        .query()
                        .table_name(&self.table)
                        .key_condition_expression("pk = :pk AND sk BETWEEN :low AND :high")
                        .expression_attribute_values(":pk", s(record_partition(stream, day)))
                        .expression_attribute_values(
                            ":low",
                            s(format!("{RECORD_PREFIX}{}", range.low_id())),
                        )
                        .expression_attribute_values(
                            ":high",
                            s(format!("{RECORD_PREFIX}{}", range.high_id())),
                        )
                        .limit((range.limit - found.len()) as i32)
                        .set_exclusive_start_key(start)
                        .send()
                        .await
                        .map_err(|e| sdk_error("list records", e))?;
                    for item in output.items() {
                        let expire = get_n(item, "exp")?;
                        if expire <= now {
                            continue;
                        }
                        let id = get_s(item, "sk")?.trim_start_matches(RECORD_PREFIX);
                        found.push(Record {
                            id: id.to_string(),
                            expire_time: items::to_time(expire),
                            body: get_s(item, "body")?.to_string(),
                        });
                    }
                    if found.len() >= range.limit {
                        return Ok(found);
                    }
                    match output.last_evaluated_key() {
                        Some(key) => start = Some(key.clone()),
                        None => break,
                    }
                }
            }
            Ok(found)
        })
        .await
    }
}
