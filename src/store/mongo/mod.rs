//! The MongoDB backend: a session document plus bounded message buckets, in transactions.
//!
//! `<collection>` holds one document per session (version, counters, times, system
//! messages, state, recent request ids); `<collection>_messages` holds the messages in
//! buckets of at most `BUCKET_MESSAGES` messages and about `BUCKET_BYTES` bytes. An
//! append pushes only its new messages onto the open bucket, so neither its cost nor the
//! documents' size grows with the session, and a session may grow far past 16 MB.
//!
//! Every write is one multi-document transaction (a replica set, or any server that
//! supports transactions, is required); a conflicting concurrent write aborts with a
//! transient error and the whole transaction is retried, which serialises writers of one
//! session without locks in the sidecar.
//!
//! `<collection>_records` holds learning data and security logs, one document per record,
//! found by the unique index `{s: stream, r: record id}` (ids sort by time).
//!
//! Expiry: every collection has a TTL index on `expire`. Bucket documents expire at the
//! session's `horizon`, which runs ahead of the session's expiry by the TTL (at most an
//! hour) and is moved, with one update of the session's buckets, only when the expiry
//! catches up with it: extending the TTL does not rewrite every bucket on every write,
//! and MongoDB removes a session's buckets at most that lead after the session. Buckets belong to one
//! incarnation (`gen`) of a session: a new session under an old id never sees old
//! buckets, and deleting, replacing or recreating a session deletes its old buckets in
//! the same transaction.

mod config;
mod documents;
mod record_items;
mod transactions;
mod writes;

pub use config::{BACKEND, MongoOptions};

use crate::domain::{
    Append, AppendOutcome, JsonObject, ListPage, ListQuery, Message, NewMessage, Session,
    SessionId, SessionSummary, StateOutcome, StateUpdate, StoreStats, UsageTotal, Window,
    WriteOptions, WriteOutcome,
};
use crate::store::optimistic::{WriteLocks, horizon_lead, new_generation};
use crate::store::records::{Record, RecordCounts, RecordRange, RecordStream};
use crate::store::{RecordStore, SessionStore, StoreError, StoreResult, check_version, page_token};
use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{Bson, DateTime, Document, doc};
use mongodb::error::{
    Error as MongoError, ErrorKind, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT,
};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, ClientSession, Collection, IndexModel};

use documents::*;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::OnceCell;

/// Most messages in one bucket document.
const BUCKET_MESSAGES: i64 = 200;
/// Approximate bytes after which a bucket is closed (MongoDB's limit is 16 MB).
const BUCKET_BYTES: i64 = 4 << 20;
/// Request ids remembered per session for idempotent appends.
const REMEMBERED_REQUEST_IDS: i32 = 64;
/// Conflicting transactions are retried this often before giving up.
const MAX_CONFLICT_RETRIES: u32 = 200;

/// The MongoDB session store.
pub struct MongoStore {
    client: Client,
    sessions: Collection<Document>,
    buckets: Collection<Document>,
    /// Learning data and security logs: `{s: stream, r: record id, expire, body}`.
    records: Collection<Document>,
    timeout: Duration,
    max_retries: u32,
    ready: OnceCell<()>,
    write_locks: WriteLocks,
}

fn is_transient(error: &MongoError) -> bool {
    error.contains_label(TRANSIENT_TRANSACTION_ERROR)
        || matches!(*error.kind, ErrorKind::Write(mongodb::error::WriteFailure::WriteError(ref e)) if e.code == 11000)
        || matches!(*error.kind, ErrorKind::Command(ref e) if e.code == 112 || e.code == 11000)
}

fn is_network(error: &MongoError) -> bool {
    matches!(
        *error.kind,
        ErrorKind::Io(_)
            | ErrorKind::ServerSelection { .. }
            | ErrorKind::ConnectionPoolCleared { .. }
    ) || error.contains_label("RetryableWriteError")
}

fn is_duplicate_key(error: &MongoError) -> bool {
    matches!(*error.kind, ErrorKind::Write(mongodb::error::WriteFailure::WriteError(ref e)) if e.code == 11000)
}

fn store_error(what: &str, error: MongoError) -> StoreError {
    if is_network(&error) {
        return StoreError::Unavailable(format!("MongoDB is unreachable during {what}: {error}"));
    }
    StoreError::Internal(format!("MongoDB failed {what}: {error}"))
}

/// What a write transaction decided: the change to make, or an answer without change.
enum Plan<T> {
    Write(T),
    Answer(T),
}

impl MongoStore {
    /// Connects (lazily: the driver dials on first use) to the database the options name.
    pub async fn new(options: &MongoOptions) -> StoreResult<Self> {
        let mut client_options = ClientOptions::parse(&options.uri)
            .await
            .map_err(|e| StoreError::Internal(format!("invalid mongo_uri: {e}")))?;
        client_options.max_pool_size = Some(options.pool_size);
        client_options.connect_timeout = Some(options.timeout);
        client_options.server_selection_timeout = Some(options.timeout);
        client_options.app_name = Some("csai-sidecar".into());
        let client = Client::with_options(client_options)
            .map_err(|e| StoreError::Internal(format!("invalid MongoDB options: {e}")))?;
        let database = client.database(&options.database);
        Ok(Self {
            sessions: database.collection(&options.collection),
            buckets: database.collection(&format!("{}_messages", options.collection)),
            records: database.collection(&format!("{}_records", options.collection)),
            client,
            timeout: options.timeout,
            max_retries: options.max_retries,
            ready: OnceCell::new(),
            write_locks: WriteLocks::new(),
        })
    }

    /// Creates the indexes (idempotently) and checks that transactions work, once.
    async fn ensure_ready(&self) -> StoreResult<()> {
        self.ready
            .get_or_try_init(|| async {
                let ttl = IndexOptions::builder().expire_after(Duration::ZERO).build();
                self.sessions
                    .create_index(IndexModel::builder().keys(doc! {"expire": 1}).options(ttl.clone()).build())
                    .await
                    .map_err(|e| store_error("creating indexes", e))?;
                self.buckets
                    .create_index(IndexModel::builder().keys(doc! {"expire": 1}).options(ttl.clone()).build())
                    .await
                    .map_err(|e| store_error("creating indexes", e))?;
                self.records
                    .create_index(IndexModel::builder().keys(doc! {"expire": 1}).options(ttl).build())
                    .await
                    .map_err(|e| store_error("creating indexes", e))?;
                self.records
                    .create_index(
                        IndexModel::builder()
                            .keys(doc! {"s": 1, "r": 1})
                            .options(IndexOptions::builder().unique(true).build())
                            .build(),
                    )
                    .await
                    .map_err(|e| store_error("creating indexes", e))?;
                self.buckets
                    .create_index(
                        IndexModel::builder()
                            .keys(doc! {"sid": 1, "gen": 1, "b": 1})
                            .options(IndexOptions::builder().unique(true).build())
                            .build(),
                    )
                    .await
                    .map_err(|e| store_error("creating indexes", e))?;
                let mut session = self.client.start_session().await.map_err(|e| store_error("starting a session", e))?;
                session.start_transaction().await.map_err(|e| store_error("starting a transaction", e))?;
                let probe = self.sessions.find_one(doc! {"_id": ""}).session(&mut session).await;
                if let Err(error) = probe {
                    let _ = session.abort_transaction().await;
                    if is_network(&error) {
                        return Err(store_error("probing transactions", error));
                    }
                    return Err(StoreError::Unavailable(format!(
                        "MongoDB refused a transaction ({error}); the mongo backend needs \
                         transactions: run MongoDB as a replica set (a single-node replica set is enough)"
                    )));
                }
                session
                    .commit_transaction()
                    .await
                    .map_err(|e| store_error("probing transactions", e))?;
                tracing::info!("MongoDB indexes ready");
                Ok(())
            })
            .await
            .map(|_| ())
    }
}

/// An error inside a transaction: a driver error (maybe transient) or a final store error.
enum TxError {
    Mongo(MongoError),
    Store(StoreError),
}

impl From<MongoError> for TxError {
    fn from(error: MongoError) -> Self {
        TxError::Mongo(error)
    }
}

impl From<StoreError> for TxError {
    fn from(error: StoreError) -> Self {
        TxError::Store(error)
    }
}

const TOKEN_TAG: &str = "g1";

impl MongoStore {
    /// Messages of one incarnation with seq >= `from`, in order.
    async fn messages_from(
        &self,
        session: &mut ClientSession,
        id: &SessionId,
        generation: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<Message>, TxError> {
        let mut cursor = self
            .buckets
            .find(doc! {"sid": id.as_str(), "gen": generation, "last": {"$gte": from}, "first": {"$lte": to}})
            .sort(doc! {"b": 1})
            .session(&mut *session)
            .await?;
        let mut messages = Vec::new();
        while let Some(bucket) = cursor.next(&mut *session).await.transpose()? {
            for message in messages_from(bucket.get("msgs"))? {
                let seq = message.seq as i64;
                if seq >= from && seq <= to {
                    messages.push(message);
                }
            }
        }
        Ok(messages)
    }

    async fn get_in(
        &self,
        session: &mut ClientSession,
        id: &SessionId,
        window: Window,
    ) -> Result<Plan<Session>, TxError> {
        let now = DateTime::now();
        let document = self
            .sessions
            .find_one(doc! {"_id": id.as_str()})
            .session(&mut *session)
            .await?
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        let head = Head::from_document(&document)?;
        if head.expire <= now {
            return Err(StoreError::NotFound(id.to_string()).into());
        }
        let count = head.count;
        let from = match window {
            Window::All => 1,
            Window::LastN(n) => (count - i64::from(n) + 1).max(1),
            Window::AfterSeq(seq) => i64::try_from(seq).unwrap_or(i64::MAX).saturating_add(1),
        };
        let mut messages = if from > count {
            Vec::new()
        } else {
            self.messages_from(session, id, &head.generation, from, count)
                .await?
        };
        if let Window::LastN(n) = window {
            // Tool-safe: grow backwards, a bucket at a time, past leading tool results.
            loop {
                let start = crate::domain::tool_safe_start(&messages, n as usize);
                let first = messages.first().map(|m| (m.seq as i64, m.body.role));
                match first {
                    Some((seq, crate::domain::Role::Tool)) if start == 0 && seq > 1 => {
                        let earlier_from = (seq - BUCKET_MESSAGES).max(1);
                        let earlier = self
                            .messages_from(session, id, &head.generation, earlier_from, seq - 1)
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
        Ok(Plan::Answer(Session {
            id: id.clone(),
            messages,
            system_messages: messages_from(document.get("system"))?,
            state: document_to_json(document.get_document("state").ok())?,
            version: head.version as u64,
            message_count: count as u64,
            usage_total: head.usage_total,
            create_time: to_system_time(head.created),
            update_time: to_system_time(get_time(&document, "updated")?),
            expire_time: to_system_time(head.expire),
        }))
    }
}

/// What `set_in` replaces: the system messages, or the state.
enum StateOrSystem<'a> {
    System(&'a [NewMessage]),
    State(&'a StateUpdate),
}

#[async_trait]
impl SessionStore for MongoStore {
    fn backend(&self) -> &'static str {
        "mongo"
    }

    async fn get(&self, id: &SessionId, window: Window) -> StoreResult<Session> {
        self.transaction("get session", None, |mut session| async move {
            let outcome = self.get_in(&mut session, id, window).await;
            (session, outcome)
        })
        .await
    }

    async fn append(&self, id: &SessionId, append: Append) -> StoreResult<AppendOutcome> {
        let append = &append;
        self.transaction("append", Some(id), |mut session| async move {
            let outcome = self.append_in(&mut session, id, append).await;
            (session, outcome)
        })
        .await
    }

    async fn replace(
        &self,
        id: &SessionId,
        messages: Vec<NewMessage>,
        options: WriteOptions,
    ) -> StoreResult<WriteOutcome> {
        let (messages, options) = (&messages, &options);
        self.transaction("replace messages", Some(id), |mut session| async move {
            let outcome = self.replace_in(&mut session, id, messages, options).await;
            (session, outcome)
        })
        .await
    }

    async fn set_system_messages(
        &self,
        id: &SessionId,
        messages: Vec<NewMessage>,
        options: WriteOptions,
    ) -> StoreResult<WriteOutcome> {
        let change = StateOrSystem::System(&messages);
        let (change, options) = (&change, &options);
        let (written, _) = self
            .transaction("set system messages", Some(id), |mut session| async move {
                let outcome = self.set_in(&mut session, id, options, change).await;
                (session, outcome)
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
        let change = StateOrSystem::State(&update);
        let (change, options) = (&change, &options);
        let (write, state) = self
            .transaction("update state", Some(id), |mut session| async move {
                let outcome = self.set_in(&mut session, id, options, change).await;
                (session, outcome)
            })
            .await?;
        Ok(StateOutcome { write, state })
    }

    async fn touch(&self, id: &SessionId, ttl: Duration) -> StoreResult<WriteOutcome> {
        self.transaction("touch", Some(id), |mut session| async move {
            let outcome = self.touch_in(&mut session, id, ttl).await;
            (session, outcome)
        })
        .await
    }

    async fn delete(&self, id: &SessionId, expected_version: Option<u64>) -> StoreResult<bool> {
        self.transaction("delete", Some(id), |mut session| async move {
            let outcome = self.delete_in(&mut session, id, expected_version).await;
            (session, outcome)
        })
        .await
    }

    async fn list(&self, query: ListQuery) -> StoreResult<ListPage> {
        self.ensure_ready().await?;
        let after = match &query.page_token {
            Some(token) => Some(
                String::from_utf8(page_token::decode(TOKEN_TAG, token)?).map_err(|_| {
                    StoreError::InvalidPageToken("the position is not UTF-8".into())
                })?,
            ),
            None => None,
        };
        let mut id_filter = doc! {"$regex": format!("^{}", regex_escape(&query.prefix))};
        if let Some(after) = &after {
            id_filter.insert("$gt", after);
        }
        let page_size = query.page_size.max(1) as i64;
        let find = async {
            let cursor = self
                .sessions
                .find(doc! {"_id": id_filter, "expire": {"$gt": DateTime::now()}})
                .projection(doc! {"version": 1, "count": 1, "updated": 1, "expire": 1, "usage": 1})
                .sort(doc! {"_id": 1})
                .limit(page_size + 1)
                .await?;
            cursor.try_collect::<Vec<Document>>().await
        };
        let documents = match tokio::time::timeout(self.timeout, find).await {
            Ok(result) => result.map_err(|e| store_error("list sessions", e))?,
            Err(_) => {
                return Err(StoreError::Timeout(
                    "MongoDB did not list sessions in time".into(),
                ));
            }
        };
        let mut sessions = documents
            .iter()
            .map(|d| {
                Ok(SessionSummary {
                    id: SessionId::new(d.get_str("_id").map_err(corrupt)?),
                    message_count: get_i64(d, "count")? as u64,
                    version: get_i64(d, "version")? as u64,
                    update_time: to_system_time(get_time(d, "updated")?),
                    expire_time: to_system_time(get_time(d, "expire")?),
                    usage_total: usage_of(d)?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let next_page_token = (sessions.len() as i64 > page_size).then(|| {
            sessions.truncate(page_size as usize);
            page_token::encode(
                TOKEN_TAG,
                sessions[sessions.len() - 1].id.as_str().as_bytes(),
            )
        });
        Ok(ListPage {
            sessions,
            next_page_token,
        })
    }

    async fn stats(&self) -> StoreResult<StoreStats> {
        self.ensure_ready().await?;
        let count = async {
            let mut group =
                doc! {"_id": Bson::Null, "sessions": {"$sum": 1}, "messages": {"$sum": "$count"}};
            for name in UsageTotal::NAMES {
                group.insert(name, doc! {"$sum": format!("$usage.{name}")});
            }
            let mut cursor = self
                .sessions
                .aggregate(vec![
                    doc! {"$match": {"expire": {"$gt": DateTime::now()}}},
                    doc! {"$group": group},
                ])
                .await?;
            cursor.try_next().await
        };
        let totals = match tokio::time::timeout(self.timeout, count).await {
            Ok(result) => result.map_err(|e| store_error("stats", e))?,
            Err(_) => {
                return Err(StoreError::Timeout(
                    "MongoDB did not count sessions in time".into(),
                ));
            }
        };
        let (sessions, messages, usage_total) = match totals {
            Some(t) => (
                get_i64(&t, "sessions")?,
                get_i64(&t, "messages")?,
                usage_counters(&t)?,
            ),
            None => (0, 0, UsageTotal::default()),
        };
        let mut bytes = 0;
        for collection in [self.sessions.name(), self.buckets.name()] {
            let size = self
                .sessions
                .client()
                .database(self.sessions.namespace().db.as_str())
                .run_command(doc! {"collStats": collection})
                .await
                .ok()
                .and_then(|reply| get_i64(&reply, "size").ok())
                .unwrap_or(0);
            bytes += size.max(0) as u64;
        }
        let records = self.count_records(None).await?;
        Ok(StoreStats {
            backend: self.backend().to_string(),
            active_sessions: sessions as u64,
            total_messages: messages as u64,
            approximate_bytes: bytes,
            usage_total,
            learning_records: records.learning,
            security_logs: records.security,
        })
    }

    async fn health_check(&self) -> StoreResult<()> {
        self.ensure_ready().await?;
        let admin = self.client.database("admin");
        match tokio::time::timeout(self.timeout, admin.run_command(doc! {"ping": 1})).await {
            Ok(result) => result.map(drop).map_err(|e| store_error("ping", e)),
            Err(_) => Err(StoreError::Timeout(
                "MongoDB did not answer ping in time".into(),
            )),
        }
    }
}
