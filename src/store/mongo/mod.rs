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

pub use config::{BACKEND, MongoOptions};

use crate::domain::{
    Append, AppendOutcome, JsonObject, ListPage, ListQuery, Message, NewMessage, Session,
    SessionId, SessionSummary, StateOutcome, StateUpdate, StoreStats, Window, WriteOptions,
    WriteOutcome,
};
use crate::store::optimistic::{WriteLocks, horizon_lead, new_generation};
use crate::store::records::{Record, RecordRange, RecordStream};
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

    /// Runs `body` in a transaction within the timeout, retrying conflicts (transient
    /// transaction errors) and, up to `max_retries`, network failures. `body` gets the
    /// session with a started transaction and hands it back with its result.
    async fn transaction<T, F, Fut>(
        &self,
        what: &str,
        writes_to: Option<&SessionId>,
        mut body: F,
    ) -> StoreResult<T>
    where
        F: FnMut(ClientSession) -> Fut,
        Fut: Future<Output = (ClientSession, Result<Plan<T>, TxError>)>,
    {
        let run = async {
            self.ensure_ready().await?;
            let _serialised = match writes_to {
                Some(id) => Some(self.write_locks.lock(id).await),
                None => None,
            };
            let mut network_failures = 0;
            let mut conflicts = 0;
            loop {
                let mut session = self
                    .client
                    .start_session()
                    .await
                    .map_err(|e| store_error(what, e))?;
                let attempt = match session.start_transaction().await {
                    Ok(()) => {
                        let (mut session, outcome) = body(session).await;
                        finish(&mut session, outcome).await
                    }
                    Err(error) => Err(TxError::Mongo(error)),
                };
                match attempt {
                    Ok(value) => return Ok(value),
                    Err(TxError::Store(error)) => return Err(error),
                    Err(TxError::Mongo(error))
                        if is_transient(&error) && conflicts < MAX_CONFLICT_RETRIES =>
                    {
                        conflicts += 1;
                        // Jitter keeps colliding writers from colliding again.
                        let jitter = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map_or(0, |d| d.subsec_nanos())
                            % 2_000;
                        let pause = u64::from(jitter) + 200 * u64::from(conflicts.min(25));
                        tokio::time::sleep(Duration::from_micros(pause)).await;
                    }
                    Err(TxError::Mongo(error))
                        if is_network(&error) && network_failures < self.max_retries =>
                    {
                        network_failures += 1;
                        tokio::time::sleep(Duration::from_millis(25 << network_failures.min(4)))
                            .await;
                    }
                    Err(TxError::Mongo(error)) => return Err(store_error(what, error)),
                }
            }
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(format!(
                "MongoDB did not complete {what} within {:?} (timeout)",
                self.timeout
            ))),
        }
    }
}

/// Commits a transaction whose body planned a write, aborts one that only answered.
async fn finish<T>(
    session: &mut ClientSession,
    outcome: Result<Plan<T>, TxError>,
) -> Result<T, TxError> {
    match outcome {
        Ok(Plan::Answer(value)) => {
            let _ = session.abort_transaction().await;
            Ok(value)
        }
        Ok(Plan::Write(value)) => loop {
            match session.commit_transaction().await {
                Ok(()) => return Ok(value),
                Err(e) if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) => continue,
                Err(e) => return Err(TxError::Mongo(e)),
            }
        },
        Err(error) => {
            let _ = session.abort_transaction().await;
            Err(error)
        }
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
    /// The session document for a write: the live one, or a fresh head when it is absent
    /// or expired (then the expired one and its buckets are deleted in this transaction).
    async fn head_for_write(
        &self,
        session: &mut ClientSession,
        id: &SessionId,
        now: DateTime,
    ) -> Result<(Head, bool, Document), TxError> {
        let found = self
            .sessions
            .find_one(doc! {"_id": id.as_str()})
            .projection(doc! {"system": 0})
            .session(&mut *session)
            .await?;
        match found {
            Some(document) => {
                let head = Head::from_document(&document)?;
                if head.expire > now {
                    return Ok((head, true, document));
                }
                self.remove(session, id, &head.generation).await?;
                Ok((Head::fresh(now), false, Document::new()))
            }
            None => Ok((Head::fresh(now), false, Document::new())),
        }
    }

    /// Deletes a session document and the buckets of its incarnation.
    async fn remove(
        &self,
        session: &mut ClientSession,
        id: &SessionId,
        generation: &str,
    ) -> Result<(), TxError> {
        self.buckets
            .delete_many(doc! {"sid": id.as_str(), "gen": generation})
            .session(&mut *session)
            .await?;
        self.sessions
            .delete_one(doc! {"_id": id.as_str()})
            .session(&mut *session)
            .await?;
        Ok(())
    }

    /// Moves the buckets' expiry ahead of the session's when the session catches up with
    /// it; returns the horizon new buckets must carry.
    async fn horizon(
        &self,
        session: &mut ClientSession,
        id: &SessionId,
        head: &mut Head,
        exists: bool,
        expire: DateTime,
        ttl: Duration,
    ) -> Result<DateTime, TxError> {
        if expire > head.horizon {
            head.horizon = ttl_expiry(expire, horizon_lead(ttl));
            if exists {
                self.buckets
                    .update_many(
                        doc! {"sid": id.as_str(), "gen": &head.generation},
                        doc! {"$set": {"expire": head.horizon}},
                    )
                    .session(&mut *session)
                    .await?;
            }
        }
        Ok(head.horizon)
    }

    /// Appends messages to the open bucket (opening new ones when it is full).
    async fn push_messages(
        &self,
        session: &mut ClientSession,
        id: &SessionId,
        head: &mut Head,
        messages: &[NewMessage],
        now: DateTime,
    ) -> Result<(), TxError> {
        let mut groups: Vec<(i64, i64, Vec<Document>)> = Vec::new();
        for message in messages {
            let size = message.approx_bytes() as i64;
            if head.bucket_messages >= BUCKET_MESSAGES
                || (head.bucket_messages > 0 && head.bucket_bytes + size > BUCKET_BYTES)
            {
                head.bucket += 1;
                head.bucket_messages = 0;
                head.bucket_bytes = 0;
            }
            head.count += 1;
            head.bucket_messages += 1;
            head.bucket_bytes += size;
            let document = message_document(message, head.count, now)?;
            match groups.last_mut() {
                Some((bucket, _, documents)) if *bucket == head.bucket => documents.push(document),
                _ => groups.push((head.bucket, head.count, vec![document])),
            }
        }
        for (bucket, first, documents) in groups {
            let last = first + documents.len() as i64 - 1;
            self.buckets
                .update_one(
                    doc! {"sid": id.as_str(), "gen": &head.generation, "b": bucket},
                    doc! {
                        "$push": {"msgs": {"$each": documents}},
                        "$set": {"last": last, "expire": head.horizon},
                        "$setOnInsert": {"first": first},
                    },
                )
                .upsert(true)
                .session(&mut *session)
                .await?;
        }
        Ok(())
    }

    /// Writes the session document after a change: next version, times, counters.
    #[allow(clippy::too_many_arguments)]
    async fn save_head(
        &self,
        session: &mut ClientSession,
        id: &SessionId,
        head: &Head,
        exists: bool,
        now: DateTime,
        expire: DateTime,
        mut set: Document,
        request: Option<Document>,
    ) -> Result<WriteOutcome, TxError> {
        let version = head.version + 1;
        set.insert("gen", &head.generation);
        set.insert("version", version);
        set.insert("count", head.count);
        set.insert("bucket", head.bucket);
        set.insert("bucket_messages", head.bucket_messages);
        set.insert("bucket_bytes", head.bucket_bytes);
        set.insert("updated", now);
        set.insert("expire", expire);
        set.insert("horizon", head.horizon);
        if exists {
            let mut update = doc! {"$set": set};
            if let Some(request) = request {
                update.insert(
                    "$push",
                    doc! {"reqs": {"$each": [request], "$slice": -REMEMBERED_REQUEST_IDS}},
                );
            }
            self.sessions
                .update_one(doc! {"_id": id.as_str()}, update)
                .session(&mut *session)
                .await?;
        } else {
            let mut document = doc! {
                "_id": id.as_str(),
                "created": now,
                "system": [],
                "state": {},
                "reqs": request.map(|r| vec![r]).unwrap_or_default(),
            };
            document.extend(set);
            self.sessions
                .insert_one(document)
                .session(&mut *session)
                .await?;
        }
        Ok(WriteOutcome {
            version: version as u64,
            expire_time: to_system_time(expire),
        })
    }

    async fn append_in(
        &self,
        session: &mut ClientSession,
        id: &SessionId,
        append: &Append,
    ) -> Result<Plan<AppendOutcome>, TxError> {
        let now = DateTime::now();
        let (mut head, exists, _) = self.head_for_write(session, id, now).await?;
        if let Some(request_id) = &append.request_id
            && let Some(earlier) = head
                .reqs
                .iter()
                .find(|r| r.get_str("id").is_ok_and(|r| r == request_id))
        {
            return Ok(Plan::Answer(AppendOutcome {
                first_seq: get_i64(earlier, "first")? as u64,
                count: get_i64(earlier, "count")? as u64,
                version: get_i64(earlier, "version")? as u64,
                expire_time: to_system_time(get_time(earlier, "expire")?),
                deduplicated: true,
            }));
        }
        check_version(append.options.expected_version, head.version as u64)?;
        let expire = ttl_expiry(now, append.options.ttl);
        self.horizon(session, id, &mut head, exists, expire, append.options.ttl)
            .await?;
        let first_seq = head.count + 1;
        self.push_messages(session, id, &mut head, &append.messages, now)
            .await?;
        let count = append.messages.len() as i64;
        let request = append.request_id.as_ref().map(|request_id| {
            doc! {
                "id": request_id,
                "first": first_seq,
                "count": count,
                "version": head.version + 1,
                "expire": expire,
            }
        });
        let written = self
            .save_head(
                session,
                id,
                &head,
                exists,
                now,
                expire,
                Document::new(),
                request,
            )
            .await?;
        Ok(Plan::Write(AppendOutcome {
            first_seq: first_seq as u64,
            count: count as u64,
            version: written.version,
            expire_time: written.expire_time,
            deduplicated: false,
        }))
    }

    async fn replace_in(
        &self,
        session: &mut ClientSession,
        id: &SessionId,
        messages: &[NewMessage],
        options: &WriteOptions,
    ) -> Result<Plan<WriteOutcome>, TxError> {
        let now = DateTime::now();
        let (mut head, exists, _) = self.head_for_write(session, id, now).await?;
        check_version(options.expected_version, head.version as u64)?;
        if exists {
            self.buckets
                .delete_many(doc! {"sid": id.as_str(), "gen": &head.generation})
                .session(&mut *session)
                .await?;
        }
        // A new incarnation: readers holding the old one never mix old and new buckets.
        let expire = ttl_expiry(now, options.ttl);
        head.generation = new_generation();
        head.count = 0;
        head.bucket = 0;
        head.bucket_messages = 0;
        head.bucket_bytes = 0;
        head.horizon = ttl_expiry(expire, horizon_lead(options.ttl));
        self.push_messages(session, id, &mut head, messages, now)
            .await?;
        let written = self
            .save_head(
                session,
                id,
                &head,
                exists,
                now,
                expire,
                Document::new(),
                None,
            )
            .await?;
        Ok(Plan::Write(written))
    }

    async fn set_in(
        &self,
        session: &mut ClientSession,
        id: &SessionId,
        options: &WriteOptions,
        change: &StateOrSystem<'_>,
    ) -> Result<Plan<(WriteOutcome, JsonObject)>, TxError> {
        let now = DateTime::now();
        let (mut head, exists, document) = self.head_for_write(session, id, now).await?;
        check_version(options.expected_version, head.version as u64)?;
        let expire = ttl_expiry(now, options.ttl);
        self.horizon(session, id, &mut head, exists, expire, options.ttl)
            .await?;
        let (set, state) = match change {
            StateOrSystem::System(messages) => {
                let documents = messages
                    .iter()
                    .enumerate()
                    .map(|(i, m)| message_document(m, i as i64 + 1, now))
                    .collect::<StoreResult<Vec<_>>>()?;
                (doc! {"system": documents}, JsonObject::new())
            }
            StateOrSystem::State(update) => {
                let mut state = document_to_json(document.get_document("state").ok())?;
                (*update).clone().apply(&mut state);
                (doc! {"state": json_to_document(&state)?}, state)
            }
        };
        let written = self
            .save_head(session, id, &head, exists, now, expire, set, None)
            .await?;
        Ok(Plan::Write((written, state)))
    }

    async fn touch_in(
        &self,
        session: &mut ClientSession,
        id: &SessionId,
        ttl: Duration,
    ) -> Result<Plan<WriteOutcome>, TxError> {
        let now = DateTime::now();
        let (mut head, exists, _) = self.head_for_write(session, id, now).await?;
        if !exists {
            return Err(StoreError::NotFound(id.to_string()).into());
        }
        let expire = ttl_expiry(now, ttl);
        self.horizon(session, id, &mut head, exists, expire, ttl)
            .await?;
        self.sessions
            .update_one(
                doc! {"_id": id.as_str()},
                doc! {"$set": {"expire": expire, "horizon": head.horizon}},
            )
            .session(&mut *session)
            .await?;
        Ok(Plan::Write(WriteOutcome {
            version: head.version as u64,
            expire_time: to_system_time(expire),
        }))
    }

    async fn delete_in(
        &self,
        session: &mut ClientSession,
        id: &SessionId,
        expected_version: Option<u64>,
    ) -> Result<Plan<bool>, TxError> {
        let now = DateTime::now();
        let (head, exists, _) = self.head_for_write(session, id, now).await?;
        check_version(expected_version, head.version as u64)?;
        if exists {
            self.remove(session, id, &head.generation).await?;
        }
        // An expired session was already removed by head_for_write: commit that too.
        Ok(Plan::Write(exists))
    }

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
            Window::AfterSeq(seq) => (seq as i64).saturating_add(1),
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
                .projection(doc! {"version": 1, "count": 1, "updated": 1, "expire": 1})
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
            let mut cursor = self
                .sessions
                .aggregate(vec![
                    doc! {"$match": {"expire": {"$gt": DateTime::now()}}},
                    doc! {"$group": {"_id": Bson::Null, "sessions": {"$sum": 1}, "messages": {"$sum": "$count"}}},
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
        let (sessions, messages) = match totals {
            Some(t) => (get_i64(&t, "sessions")?, get_i64(&t, "messages")?),
            None => (0, 0),
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
        Ok(StoreStats {
            backend: self.backend().to_string(),
            active_sessions: sessions as u64,
            total_messages: messages as u64,
            approximate_bytes: bytes,
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

#[async_trait]
impl RecordStore for MongoStore {
    async fn put_record(&self, stream: &RecordStream, record: Record) -> StoreResult<()> {
        self.ensure_ready().await?;
        let document = doc! {
            "s": stream.name(),
            "r": &record.id,
            "expire": DateTime::from_system_time(record.expire_time),
            "body": &record.body,
        };
        match tokio::time::timeout(self.timeout, self.records.insert_one(document)).await {
            Ok(Ok(_)) => Ok(()),
            // The unique (s, r) index: a retried insert that had landed changes nothing.
            Ok(Err(error)) if is_duplicate_key(&error) => Ok(()),
            Ok(Err(error)) => Err(store_error("put record", error)),
            Err(_) => Err(StoreError::Timeout(
                "MongoDB did not store a record in time".into(),
            )),
        }
    }

    async fn list_records(
        &self,
        stream: &RecordStream,
        range: &RecordRange,
    ) -> StoreResult<Vec<Record>> {
        self.ensure_ready().await?;
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let filter = doc! {
            "s": stream.name(),
            "r": {"$gte": range.low_id(), "$lt": range.high_id()},
            "expire": {"$gt": DateTime::now()},
        };
        let read = async {
            let documents: Vec<Document> = self
                .records
                .find(filter)
                .sort(doc! {"r": 1})
                .limit(range.limit as i64)
                .await?
                .try_collect()
                .await?;
            Ok::<_, MongoError>(documents)
        };
        let documents = match tokio::time::timeout(self.timeout, read).await {
            Ok(result) => result.map_err(|e| store_error("list records", e))?,
            Err(_) => {
                return Err(StoreError::Timeout(
                    "MongoDB did not list records in time".into(),
                ));
            }
        };
        documents
            .iter()
            .map(|document| {
                let field = |name: &str| {
                    document
                        .get_str(name)
                        .map(str::to_string)
                        .map_err(|_| StoreError::Internal(format!("a record lacks `{name}`")))
                };
                Ok(Record {
                    id: field("r")?,
                    body: field("body")?,
                    expire_time: document
                        .get_datetime("expire")
                        .map_err(|_| StoreError::Internal("a record lacks `expire`".into()))?
                        .to_system_time(),
                })
            })
            .collect()
    }
}
