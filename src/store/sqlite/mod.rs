//! The SQLite backend: sessions in one embedded file, for a single sidecar that must keep
//! its sessions across restarts without a database server.
//!
//! Layout (src/store/sqlite/schema.rs): a `sessions` row per session (version, counts,
//! times, system messages, state and the recent request ids as JSON) and a `messages` row
//! per message keyed by (session, seq), so an append inserts its rows and updates one
//! session row: its cost does not grow with the session. Every write is one IMMEDIATE
//! transaction on the one writer connection; reads are snapshots on reader connections.
//! An expired session reads as absent; a write to one starts afresh; the sweeper deletes
//! expired sessions, their messages and expired records in bounded batches.

mod config;
mod connections;
mod record_items;
mod rows;
mod schema;

pub use config::{BACKEND, KEYS, SqliteOptions, Synchronous};

use crate::domain::{
    Append, AppendOutcome, ListPage, ListQuery, MAX_WINDOW_GROWTH, NewMessage, Session, SessionId,
    SessionSummary, StateOutcome, StateUpdate, StoreStats, UsageTotal, Window, WriteOptions,
    WriteOutcome, tool_safe_start_by,
};
use crate::store::sql_rows::{
    SessionRow, micros, micros_of, now_us, time_of, usage_of, usage_sums,
};
use crate::store::sweeper;
use crate::store::{RecordStore, SessionStore, StoreError, StoreResult, check_version, page_token};
use async_trait::async_trait;
use connections::{Connections, sql_error};
use rusqlite::{OptionalExtension, Transaction, params};
use std::sync::Arc;
use std::time::Duration;

/// Sessions (or records) one sweep transaction deletes, so writers are never held up long.
const SWEEP_BATCH: usize = 500;

/// The SQLite store.
pub struct SqliteStore {
    db: Arc<Connections>,
}

impl SqliteStore {
    /// Opens (creating and migrating) the database file. Fails when another process holds
    /// it, or when a newer sidecar wrote its schema.
    pub async fn open(options: SqliteOptions) -> StoreResult<Self> {
        let db = tokio::task::spawn_blocking(move || Connections::open(options))
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))?
            .map_err(StoreError::Unavailable)?;
        Ok(Self { db: Arc::new(db) })
    }

    /// Starts a task that deletes expired sessions and records every `interval`; it ends
    /// with the store.
    pub fn spawn_sweeper(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        sweeper::spawn(self, interval, "sqlite", |store: Arc<Self>| async move {
            store.sweep().await
        })
    }

    /// Deletes what has expired, a batch per transaction; returns how many sessions and
    /// records went.
    pub async fn sweep(&self) -> StoreResult<u64> {
        let mut deleted = 0;
        loop {
            let batch = self
                .db
                .write(|tx| {
                    let now = now_us();
                    let ids: Vec<String> = tx
                        .prepare_cached("SELECT id FROM sessions WHERE expire_us <= ?1 LIMIT ?2")
                        .and_then(|mut statement| {
                            statement
                                .query_map(params![now, SWEEP_BATCH as i64], |row| row.get(0))?
                                .collect()
                        })
                        .map_err(sql_error)?;
                    for id in &ids {
                        delete_session(tx, id)?;
                    }
                    let records = tx
                        .execute(
                            "DELETE FROM records WHERE (stream, id) IN (SELECT stream, id \
                             FROM records WHERE expire_us <= ?1 LIMIT ?2)",
                            params![now, SWEEP_BATCH as i64],
                        )
                        .map_err(sql_error)?;
                    Ok((ids.len() + records) as u64)
                })
                .await?;
            deleted += batch;
            if batch < SWEEP_BATCH as u64 {
                return Ok(deleted);
            }
        }
    }

    /// Runs a write on the session's live row (None when absent or expired; an expired
    /// one is deleted first, so the write starts afresh).
    async fn on_session<T, F>(&self, id: &SessionId, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, &str, Option<SessionRow>, i64) -> StoreResult<T>
            + Send
            + 'static,
    {
        let id = id.as_str().to_string();
        self.db
            .write(move |tx| {
                let now = now_us();
                let row = live_row(tx, &id, now)?;
                work(tx, &id, row, now)
            })
            .await
    }

    /// The common path of replace, system messages and state: version check, `change`,
    /// then the new version and expiry.
    async fn write_row<T, F>(
        &self,
        id: &SessionId,
        options: WriteOptions,
        change: F,
    ) -> StoreResult<(T, WriteOutcome)>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, &str, &mut SessionRow, i64) -> StoreResult<T> + Send + 'static,
    {
        self.on_session(id, move |tx, id, row, now| {
            let mut row = SessionRow::for_write(row, options.expected_version, now)?;
            let value = change(tx, id, &mut row, now)?;
            row.written(options.ttl, now);
            rows::save(&row, tx, id)?;
            Ok((value, row.outcome()))
        })
        .await
    }
}

/// The session's row if it is live; an expired one is deleted with its messages.
fn live_row(tx: &Transaction<'_>, id: &str, now: i64) -> StoreResult<Option<SessionRow>> {
    match rows::load(tx, id)? {
        Some(row) if row.expire_us <= now => {
            delete_session(tx, id)?;
            Ok(None)
        }
        row => Ok(row),
    }
}

fn delete_session(tx: &Transaction<'_>, id: &str) -> StoreResult<()> {
    tx.execute("DELETE FROM messages WHERE session_id = ?1", [id])
        .map_err(sql_error)?;
    tx.execute("DELETE FROM sessions WHERE id = ?1", [id])
        .map_err(sql_error)?;
    Ok(())
}

/// Inserts `messages` with seqs from `first_seq`.
fn insert_messages(
    tx: &Transaction<'_>,
    id: &str,
    first_seq: u64,
    messages: Vec<NewMessage>,
    now: i64,
) -> StoreResult<()> {
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO messages (session_id, seq, role, create_us, body) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(sql_error)?;
    for (seq, mut message) in (first_seq..).zip(messages) {
        let created = message.create_time.take().map_or(now, micros_of);
        let body = serde_json::to_string(&message)
            .map_err(|e| StoreError::Internal(format!("a message as JSON: {e}")))?;
        insert
            .execute(params![
                id,
                seq as i64,
                message.role.as_str(),
                created,
                body
            ])
            .map_err(sql_error)?;
    }
    Ok(())
}

#[async_trait]
impl SessionStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn get(&self, id: &SessionId, window: Window) -> StoreResult<Session> {
        let session = id.clone();
        self.db
            .read(move |tx| {
                let id = session.as_str().to_string();
                let id = id.as_str();
                let row = rows::load(tx, id)?
                    .filter(|row| row.expire_us > now_us())
                    .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
                let count = row.message_count;
                let first_seq = match window {
                    Window::All => 1,
                    Window::AfterSeq(seq) => seq.min(count) + 1,
                    Window::LastN(n) => {
                        // Only the tail a tool-safe window can reach is looked at.
                        let reach = (n as u64 + MAX_WINDOW_GROWTH as u64 + 1).min(count);
                        let offset = count - reach;
                        let roles = rows::roles(tx, id, offset + 1)?;
                        offset
                            + tool_safe_start_by(roles.len(), n as usize, |i| roles[i]) as u64
                            + 1
                    }
                };
                row.session(session, rows::messages(tx, id, first_seq)?)
            })
            .await
    }

    async fn append(&self, id: &SessionId, append: Append) -> StoreResult<AppendOutcome> {
        self.on_session(id, move |tx, id, row, now| {
            if let (Some(request_id), Some(row)) = (&append.request_id, &row)
                && let Some(earlier) = row.remembered(request_id)
            {
                return Ok(earlier);
            }
            let mut row = SessionRow::for_write(row, append.options.expected_version, now)?;
            let outcome =
                row.appended(&append.messages, append.options.ttl, append.request_id, now);
            insert_messages(tx, id, outcome.first_seq, append.messages, now)?;
            rows::save(&row, tx, id)?;
            Ok(outcome)
        })
        .await
    }

    async fn replace(
        &self,
        id: &SessionId,
        messages: Vec<NewMessage>,
        options: WriteOptions,
    ) -> StoreResult<WriteOutcome> {
        let (_, outcome) = self
            .write_row(id, options, move |tx, id, row, now| {
                tx.execute("DELETE FROM messages WHERE session_id = ?1", [id])
                    .map_err(sql_error)?;
                row.replaced(&messages);
                insert_messages(tx, id, 1, messages, now)
            })
            .await?;
        Ok(outcome)
    }

    async fn set_system_messages(
        &self,
        id: &SessionId,
        messages: Vec<NewMessage>,
        options: WriteOptions,
    ) -> StoreResult<WriteOutcome> {
        let (_, outcome) = self
            .write_row(id, options, move |_, _, row, now| {
                row.set_system_messages(messages, now)
            })
            .await?;
        Ok(outcome)
    }

    async fn update_state(
        &self,
        id: &SessionId,
        update: StateUpdate,
        options: WriteOptions,
    ) -> StoreResult<StateOutcome> {
        let (state, write) = self
            .write_row(id, options, move |_, _, row, _| {
                update.apply(&mut row.state);
                Ok(row.state.clone())
            })
            .await?;
        Ok(StateOutcome { write, state })
    }

    async fn touch(&self, id: &SessionId, ttl: Duration) -> StoreResult<WriteOutcome> {
        self.on_session(id, move |tx, id, row, now| {
            let mut row = row.ok_or_else(|| StoreError::NotFound(id.to_string()))?;
            row.expire_us = now + micros(ttl);
            tx.execute(
                "UPDATE sessions SET expire_us = ?2 WHERE id = ?1",
                params![id, row.expire_us],
            )
            .map_err(sql_error)?;
            Ok(row.outcome())
        })
        .await
    }

    async fn delete(&self, id: &SessionId, expected_version: Option<u64>) -> StoreResult<bool> {
        self.on_session(id, move |tx, id, row, _| {
            check_version(expected_version, row.as_ref().map_or(0, |r| r.version))?;
            if row.is_none() {
                return Ok(false);
            }
            delete_session(tx, id)?;
            Ok(true)
        })
        .await
    }

    async fn list(&self, query: ListQuery) -> StoreResult<ListPage> {
        let after = query
            .page_token
            .as_deref()
            .map(|token| {
                String::from_utf8(page_token::decode(TOKEN_TAG, token)?)
                    .map_err(|_| StoreError::InvalidPageToken("the position is not UTF-8".into()))
            })
            .transpose()?;
        let page_size = query.page_size.max(1) as usize;
        self.db
            .read(move |tx| {
                // Keyset pagination by id: a session that lives through the listing is
                // listed exactly once, whatever is created or deleted meanwhile.
                let from = match &after {
                    Some(after) if after.as_str() >= query.prefix.as_str() => after.clone(),
                    _ => query.prefix.clone(),
                };
                let mut statement = tx
                    .prepare_cached(
                        "SELECT id, message_count, version, update_us, expire_us, usage_total \
                         FROM sessions \
                         WHERE id >= ?1 AND (?2 IS NULL OR id > ?2) AND expire_us > ?3 \
                         ORDER BY id LIMIT ?4",
                    )
                    .map_err(sql_error)?;
                let found: Vec<(SessionSummary, String)> = statement
                    .query_map(
                        params![from, after, now_us(), page_size as i64 + 1],
                        |row| {
                            let summary = SessionSummary {
                                id: SessionId::new(row.get::<_, String>(0)?),
                                message_count: row.get::<_, i64>(1)? as u64,
                                version: row.get::<_, i64>(2)? as u64,
                                update_time: time_of(row.get(3)?),
                                expire_time: time_of(row.get(4)?),
                                usage_total: UsageTotal::default(),
                            };
                            Ok((summary, row.get::<_, String>(5)?))
                        },
                    )
                    .and_then(|rows| rows.collect())
                    .map_err(sql_error)?;
                let mut sessions = found
                    .into_iter()
                    .take_while(|(s, _)| s.id.as_str().starts_with(&query.prefix))
                    .map(|(summary, usage)| {
                        Ok(SessionSummary {
                            usage_total: usage_of(&usage)?,
                            ..summary
                        })
                    })
                    .collect::<StoreResult<Vec<_>>>()?;
                let next_page_token = (sessions.len() > page_size).then(|| {
                    sessions.truncate(page_size);
                    page_token::encode(TOKEN_TAG, sessions[page_size - 1].id.as_str().as_bytes())
                });
                Ok(ListPage {
                    sessions,
                    next_page_token,
                })
            })
            .await
    }

    async fn stats(&self) -> StoreResult<StoreStats> {
        let (sessions, messages, bytes, usage_total) = self
            .db
            .read(|tx| {
                let (sessions, messages, usage): (i64, i64, [i64; 6]) = tx
                    .query_row(
                        &format!(
                            "SELECT COUNT(*), COALESCE(SUM(message_count), 0), {} FROM sessions \
                             WHERE expire_us > ?1",
                            usage_sums("json_extract(usage_total, '$.{}')", "")
                        ),
                        [now_us()],
                        |row| {
                            let mut usage = [0i64; 6];
                            for (i, n) in usage.iter_mut().enumerate() {
                                *n = row.get(i + 2)?;
                            }
                            Ok((row.get(0)?, row.get(1)?, usage))
                        },
                    )
                    .map_err(sql_error)?;
                let pages: i64 = tx
                    .query_row("PRAGMA page_count", [], |row| row.get(0))
                    .map_err(sql_error)?;
                let page_size: i64 = tx
                    .query_row("PRAGMA page_size", [], |row| row.get(0))
                    .map_err(sql_error)?;
                let usage = UsageTotal::from_counters(usage.map(|n| n.max(0) as u64));
                Ok((
                    sessions as u64,
                    messages as u64,
                    (pages * page_size) as u64,
                    usage,
                ))
            })
            .await?;
        let records = self.count_records(None).await?;
        Ok(StoreStats {
            backend: self.backend().to_string(),
            active_sessions: sessions,
            total_messages: messages,
            approximate_bytes: bytes,
            usage_total,
            learning_records: records.learning,
            security_logs: records.security,
        })
    }

    async fn health_check(&self) -> StoreResult<()> {
        self.db
            .read(|tx| {
                tx.query_row("SELECT 1", [], |_| Ok(()))
                    .optional()
                    .map(drop)
                    .map_err(sql_error)
            })
            .await
    }
}

/// Page tokens hold the last listed id.
const TOKEN_TAG: &str = "s1";
