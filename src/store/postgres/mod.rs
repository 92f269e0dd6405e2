//! The PostgreSQL backend: sessions in the database teams already run, shared by any
//! number of sidecar replicas.
//!
//! Layout (schema.rs): a sessions row per session (version, counts, times, system messages,
//! state as `jsonb`, the recent request ids) and a messages row per message keyed by
//! (session, seq), so an append inserts its rows and updates one session row. Every write
//! is one transaction that first locks the session's row (`INSERT ... ON CONFLICT DO
//! UPDATE ... RETURNING`: an expired placeholder for a new session, a no-op update of an
//! existing one): concurrent writers on any replica queue on that lock, never lose a
//! message and never duplicate a seq. Times come from the database's clock, so replicas
//! agree on expiry. Expired sessions read as absent; a sweeper on each replica deletes
//! them in bounded batches (`FOR UPDATE SKIP LOCKED`: concurrent sweepers take different
//! rows).

mod bus;
mod config;
mod record_items;
mod schema;

pub use config::{BACKEND, KEYS, PostgresOptions};

use crate::domain::JsonObject;
use crate::domain::{
    Append, AppendOutcome, ListPage, ListQuery, MAX_WINDOW_GROWTH, NewMessage, Session, SessionId,
    SessionSummary, StateOutcome, StateUpdate, StoreStats, UsageTotal, Window, WriteOptions,
    WriteOutcome, tool_safe_start_by,
};
use crate::store::sql_rows::{
    SessionRow, corrupt, message_of, micros, micros_of, role_of, time_of, usage_of, usage_sums,
};
use crate::store::sweeper;
use crate::store::{RecordStore, SessionStore, StoreError, StoreResult, check_version, page_token};
use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use deadpool_postgres::{Object, Transaction};
use schema::Tables;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

/// Sessions (or records) one sweep transaction deletes.
const SWEEP_BATCH: i64 = 200;

/// The database's clock in microseconds since the epoch, as SQL.
pub(crate) const NOW_US: &str = "(extract(epoch from clock_timestamp()) * 1000000)::bigint";

/// The PostgreSQL store.
pub struct PostgresStore {
    pool: Pool,
    tables: Tables,
    timeout: Duration,
    /// The schema, migrated once by the first operation that reaches the database.
    ready: OnceCell<()>,
}

impl PostgresStore {
    /// A store on `options.url`; connections are made when first needed, so a database
    /// that is down at start makes the sidecar NOT_SERVING rather than stopping it.
    pub fn open(options: PostgresOptions) -> StoreResult<Self> {
        let pool = Connecting::new(&options)?.pool(options.pool_size)?;
        Ok(Self {
            pool,
            tables: Tables::new(&options.table_prefix),
            timeout: options.timeout,
            ready: OnceCell::new(),
        })
    }

    /// Opens the store and migrates the schema now: a database written by a newer sidecar
    /// stops the start with a clear message (an unreachable one does not).
    pub async fn open_and_migrate(options: PostgresOptions) -> StoreResult<Self> {
        let store = Self::open(options)?;
        match store.client().await {
            Ok(_) => Ok(store),
            Err(StoreError::Internal(message)) => Err(StoreError::Internal(message)),
            Err(error) => {
                tracing::warn!(%error, "PostgreSQL is not reachable yet; the schema is migrated on first use");
                Ok(store)
            }
        }
    }

    /// A pooled connection, the schema migrated.
    async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        let client = tokio::time::timeout(self.timeout, self.pool.get())
            .await
            .map_err(|_| StoreError::Timeout("no PostgreSQL connection within the timeout".into()))?
            .map_err(|e| StoreError::Unavailable(format!("PostgreSQL: {e}")))?;
        self.ready
            .get_or_try_init(|| async {
                let mut connection = self
                    .pool
                    .get()
                    .await
                    .map_err(|e| StoreError::Unavailable(format!("PostgreSQL: {e}")))?;
                schema::migrate(&mut connection, &self.tables)
                    .await
                    .map_err(StoreError::Internal)
            })
            .await?;
        Ok(client)
    }

    /// `work` within the store's timeout.
    async fn bounded<T>(&self, work: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| {
                StoreError::Timeout("PostgreSQL did not answer within the timeout".into())
            })?
    }

    /// Starts a write on the session's locked row: its live row (None when absent or
    /// expired; an expired one's messages are deleted first, so the write starts afresh)
    /// and the database's now. Dropping the transaction without commit rolls it back.
    async fn lock_session<'c>(&self, client: &'c mut Object, id: &str) -> StoreResult<Write<'c>> {
        let tx = client.transaction().await.map_err(sql_error)?;
        let (row, now) = lock_row(&tx, &self.tables, id).await?;
        let row = if row.expire_us <= now {
            if row.version > 0 {
                tx.execute(
                    &format!("DELETE FROM {} WHERE session_id = $1", self.tables.messages),
                    &[&id],
                )
                .await
                .map_err(sql_error)?;
            }
            None
        } else {
            Some(row)
        };
        Ok(Write { tx, row, now })
    }

    /// Replace, system messages and state: version check, the change, then the new
    /// version and expiry; the state after the write.
    async fn write_row(
        &self,
        id: &SessionId,
        options: WriteOptions,
        change: Change,
    ) -> StoreResult<(JsonObject, WriteOutcome)> {
        let name = id.as_str();
        self.bounded(async {
            let mut client = self.client().await?;
            let Write { tx, row, now } = self.lock_session(&mut client, name).await?;
            let mut row = SessionRow::for_write(row, options.expected_version, now)?;
            match change {
                Change::Messages(messages) => {
                    tx.execute(
                        &format!("DELETE FROM {} WHERE session_id = $1", self.tables.messages),
                        &[&name],
                    )
                    .await
                    .map_err(sql_error)?;
                    row.replaced(&messages);
                    insert_messages(&tx, &self.tables, name, 1, messages, now).await?;
                }
                Change::SystemMessages(messages) => row.set_system_messages(messages, now)?,
                Change::State(update) => update.apply(&mut row.state),
            }
            row.written(options.ttl, now);
            save(&tx, &self.tables, name, &row).await?;
            tx.commit().await.map_err(sql_error)?;
            Ok((row.state.clone(), row.outcome()))
        })
        .await
    }

    /// Starts a task that deletes expired sessions and records every `interval`; it ends
    /// with the store.
    pub fn spawn_sweeper(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        sweeper::spawn(self, interval, "postgres", |store: Arc<Self>| async move {
            store.sweep().await
        })
    }

    /// Deletes what has expired, a batch per transaction; returns how many sessions and
    /// records went. Concurrent sweepers (other replicas) skip the rows one has locked.
    pub async fn sweep(&self) -> StoreResult<u64> {
        let t = &self.tables;
        let mut deleted = 0;
        loop {
            let batch = self
                .bounded(async {
                    let mut client = self.client().await?;
                    let tx = client.transaction().await.map_err(sql_error)?;
                    let sessions = tx
                        .execute(
                            &format!(
                                "WITH gone AS (SELECT id FROM {s} WHERE expire_us <= {NOW_US} \
                                 ORDER BY expire_us LIMIT $1 FOR UPDATE SKIP LOCKED), \
                                 messages AS (DELETE FROM {m} WHERE session_id IN \
                                 (SELECT id FROM gone)) \
                                 DELETE FROM {s} WHERE id IN (SELECT id FROM gone)",
                                s = t.sessions,
                                m = t.messages
                            ),
                            &[&SWEEP_BATCH],
                        )
                        .await
                        .map_err(sql_error)?;
                    let records = tx
                        .execute(
                            &format!(
                                "DELETE FROM {r} WHERE (stream, id) IN (SELECT stream, id FROM {r} \
                                 WHERE expire_us <= {NOW_US} LIMIT $1 FOR UPDATE SKIP LOCKED)",
                                r = t.records
                            ),
                            &[&SWEEP_BATCH],
                        )
                        .await
                        .map_err(sql_error)?;
                    tx.commit().await.map_err(sql_error)?;
                    Ok(sessions + records)
                })
                .await?;
            deleted += batch;
            if batch < SWEEP_BATCH as u64 {
                return Ok(deleted);
            }
        }
    }
}

/// A write in progress: its transaction, the session's live row, the database's now.
struct Write<'c> {
    tx: Transaction<'c>,
    row: Option<SessionRow>,
    now: i64,
}

/// What `write_row` changes.
enum Change {
    Messages(Vec<NewMessage>),
    SystemMessages(Vec<NewMessage>),
    State(StateUpdate),
}

/// The TLS connector: the configured CA, else the public web roots. Whether TLS is used
/// is the URL's `sslmode` (disable, prefer: the default, require).
/// How to reach the database: the parsed URL and the TLS connector, for the store's pool
/// and the change bus's connections.
pub(super) struct Connecting {
    pub config: tokio_postgres::Config,
    pub tls: tokio_postgres_rustls::MakeRustlsConnect,
}

impl Connecting {
    pub fn new(options: &PostgresOptions) -> StoreResult<Self> {
        let mut config: tokio_postgres::Config = options
            .url
            .parse()
            .map_err(|e| StoreError::Unavailable(format!("postgres_url: {e}")))?;
        config.connect_timeout(options.timeout);
        let tls = tls(options.ca_file.as_deref())?;
        Ok(Self { config, tls })
    }

    /// A pool of at most `size` connections, made when first needed.
    pub fn pool(&self, size: usize) -> StoreResult<Pool> {
        let manager = Manager::from_config(
            self.config.clone(),
            self.tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(manager)
            .max_size(size)
            .build()
            .map_err(|e| StoreError::Internal(format!("PostgreSQL pool: {e}")))
    }
}

fn tls(ca_file: Option<&std::path::Path>) -> StoreResult<tokio_postgres_rustls::MakeRustlsConnect> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            use rustls::pki_types::pem::PemObject;
            let certificates =
                rustls::pki_types::CertificateDer::pem_file_iter(path).map_err(|e| {
                    StoreError::Unavailable(format!("postgres_ca_file {}: {e}", path.display()))
                })?;
            for certificate in certificates {
                let certificate = certificate.map_err(|e| {
                    StoreError::Unavailable(format!("postgres_ca_file {}: {e}", path.display()))
                })?;
                roots.add(certificate).map_err(|e| {
                    StoreError::Unavailable(format!("postgres_ca_file {}: {e}", path.display()))
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Internal(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// A store error for a PostgreSQL failure: connection problems, serialization failures and
/// a database shutting down may pass; anything else is not a retry's business.
pub(crate) fn sql_error(error: tokio_postgres::Error) -> StoreError {
    use tokio_postgres::error::SqlState;
    match error.code() {
        None => StoreError::Unavailable(format!("PostgreSQL: {error}")),
        Some(code)
            if [
                SqlState::T_R_SERIALIZATION_FAILURE,
                SqlState::T_R_DEADLOCK_DETECTED,
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::TOO_MANY_CONNECTIONS,
            ]
            .contains(code) =>
        {
            StoreError::Unavailable(format!("PostgreSQL: {error}"))
        }
        Some(code) if *code == SqlState::DISK_FULL => {
            StoreError::LimitExceeded(format!("PostgreSQL: the disk is full: {error}"))
        }
        Some(_) => StoreError::Internal(format!("PostgreSQL: {error}")),
    }
}

/// Locks the session's row and reads it with the database's now, in one statement: an
/// absent session gets an expired placeholder row (rolled back with a failed write), an
/// existing one is locked by a no-op update. Either way the row is this transaction's
/// until it ends, whatever other writers or sweepers do.
async fn lock_row(tx: &Transaction<'_>, t: &Tables, id: &str) -> StoreResult<(SessionRow, i64)> {
    let statement = tx
        .prepare_cached(&format!(
            "INSERT INTO {} AS s (id, version, message_count, create_us, update_us, expire_us, \
             system_messages, state, recent_appends) \
             VALUES ($1, 0, 0, 0, 0, 0, '[]', '{{}}', '[]') \
             ON CONFLICT (id) DO UPDATE SET id = s.id \
             RETURNING version, message_count, create_us, update_us, expire_us, \
             system_messages, state::text, recent_appends::text, usage_total::text, {NOW_US}",
            t.sessions
        ))
        .await
        .map_err(sql_error)?;
    let found = tx.query_one(&statement, &[&id]).await.map_err(sql_error)?;
    Ok((row_of(&found)?, found.get(9)))
}

fn row_of(found: &tokio_postgres::Row) -> StoreResult<SessionRow> {
    Ok(SessionRow {
        version: found.get::<_, i64>(0) as u64,
        message_count: found.get::<_, i64>(1) as u64,
        create_us: found.get(2),
        update_us: found.get(3),
        expire_us: found.get(4),
        system_messages: found.get(5),
        state: serde_json::from_str(found.get::<_, &str>(6)).map_err(|e| corrupt("a state", e))?,
        recent_appends: serde_json::from_str(found.get::<_, &str>(7))
            .map_err(|e| corrupt("the recent appends", e))?,
        usage_total: usage_of(found.get::<_, &str>(8))?,
    })
}

/// Writes the (locked) row back.
async fn save(tx: &Transaction<'_>, t: &Tables, id: &str, row: &SessionRow) -> StoreResult<()> {
    let state = serde_json::to_string(&row.state).map_err(|e| corrupt("a state", e))?;
    let recent =
        serde_json::to_string(&row.recent_appends).map_err(|e| corrupt("the recent appends", e))?;
    let statement = tx
        .prepare_cached(&format!(
            "UPDATE {} SET version = $2, message_count = $3, create_us = $4, update_us = $5, \
             expire_us = $6, system_messages = $7, state = $8::text::jsonb, \
             recent_appends = $9::text::jsonb, usage_total = $10::text::jsonb WHERE id = $1",
            t.sessions
        ))
        .await
        .map_err(sql_error)?;
    tx.execute(
        &statement,
        &[
            &id,
            &(row.version as i64),
            &(row.message_count as i64),
            &row.create_us,
            &row.update_us,
            &row.expire_us,
            &row.system_messages,
            &state,
            &recent,
            &row.usage_json()?,
        ],
    )
    .await
    .map_err(sql_error)?;
    Ok(())
}

/// Inserts `messages` with seqs from `first_seq`, in one statement.
async fn insert_messages(
    tx: &Transaction<'_>,
    t: &Tables,
    id: &str,
    first_seq: u64,
    messages: Vec<NewMessage>,
    now: i64,
) -> StoreResult<()> {
    if messages.is_empty() {
        return Ok(());
    }
    let mut seqs = Vec::with_capacity(messages.len());
    let mut roles = Vec::with_capacity(messages.len());
    let mut times = Vec::with_capacity(messages.len());
    let mut bodies = Vec::with_capacity(messages.len());
    for (seq, mut message) in (first_seq..).zip(messages) {
        seqs.push(seq as i64);
        roles.push(message.role.as_str());
        times.push(message.create_time.take().map_or(now, micros_of));
        bodies.push(
            serde_json::to_string(&message)
                .map_err(|e| StoreError::Internal(format!("a message as JSON: {e}")))?,
        );
    }
    let statement = tx
        .prepare_cached(&format!(
            "INSERT INTO {} (session_id, seq, role, create_us, body) \
             SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::bigint[], $5::text[])",
            t.messages
        ))
        .await
        .map_err(sql_error)?;
    tx.execute(&statement, &[&id, &seqs, &roles, &times, &bodies])
        .await
        .map_err(sql_error)?;
    Ok(())
}

#[async_trait]
impl SessionStore for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn get(&self, id: &SessionId, window: Window) -> StoreResult<Session> {
        // One statement, one snapshot: the row and the tail a window can reach.
        let (reach, after) = match window {
            Window::All => (i64::MAX, 0),
            Window::AfterSeq(seq) => (i64::MAX, seq.min(i64::MAX as u64) as i64),
            Window::LastN(n) => (i64::from(n) + MAX_WINDOW_GROWTH as i64 + 1, 0),
        };
        let t = &self.tables;
        let rows = self
            .bounded(async {
                self.client()
                    .await?
                    .query(
                        &format!(
                            "SELECT s.version, s.message_count, s.create_us, s.update_us, \
                             s.expire_us, s.system_messages, s.state::text, \
                             s.recent_appends::text, s.usage_total::text, \
                             m.seq, m.role, m.create_us, m.body \
                             FROM {s} s LEFT JOIN {m} m ON m.session_id = s.id \
                             AND m.seq > GREATEST(s.message_count - $2, $3) \
                             WHERE s.id = $1 AND s.expire_us > {NOW_US} ORDER BY m.seq",
                            s = t.sessions,
                            m = t.messages
                        ),
                        &[&id.as_str(), &reach, &after],
                    )
                    .await
                    .map_err(sql_error)
            })
            .await?;
        let first = rows
            .first()
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        let row = row_of(first)?;
        let tail: Vec<&tokio_postgres::Row> = rows
            .iter()
            .filter(|r| r.get::<_, Option<i64>>(9).is_some())
            .collect();
        let start = match window {
            Window::LastN(n) => tool_safe_start_by(tail.len(), n as usize, |i| {
                role_of(tail[i].get::<_, &str>(10))
            }),
            _ => 0,
        };
        let messages = tail[start..]
            .iter()
            .map(|r| message_of(r.get(9), r.get(11), r.get(12)))
            .collect::<StoreResult<Vec<_>>>()?;
        row.session(id.clone(), messages)
    }

    async fn append(&self, id: &SessionId, append: Append) -> StoreResult<AppendOutcome> {
        let name = id.as_str();
        self.bounded(async {
            let mut client = self.client().await?;
            let Write { tx, row, now } = self.lock_session(&mut client, name).await?;
            if let (Some(request_id), Some(row)) = (&append.request_id, &row)
                && let Some(earlier) = row.remembered(request_id)
            {
                return Ok(earlier);
            }
            let mut row = SessionRow::for_write(row, append.options.expected_version, now)?;
            let outcome =
                row.appended(&append.messages, append.options.ttl, append.request_id, now);
            let first_seq = outcome.first_seq;
            // Both statements go out together (tokio-postgres pipelines them).
            tokio::try_join!(
                insert_messages(&tx, &self.tables, name, first_seq, append.messages, now),
                save(&tx, &self.tables, name, &row),
            )?;
            tx.commit().await.map_err(sql_error)?;
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
            .write_row(id, options, Change::Messages(messages))
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
            .write_row(id, options, Change::SystemMessages(messages))
            .await?;
        Ok(outcome)
    }

    async fn update_state(
        &self,
        id: &SessionId,
        update: StateUpdate,
        options: WriteOptions,
    ) -> StoreResult<StateOutcome> {
        let (state, write) = self.write_row(id, options, Change::State(update)).await?;
        Ok(StateOutcome { write, state })
    }

    async fn touch(&self, id: &SessionId, ttl: Duration) -> StoreResult<WriteOutcome> {
        let name = id.as_str();
        self.bounded(async {
            let mut client = self.client().await?;
            let Write { tx, row, now } = self.lock_session(&mut client, name).await?;
            let mut row = row.ok_or_else(|| StoreError::NotFound(name.to_string()))?;
            row.expire_us = now + micros(ttl);
            tx.execute(
                &format!(
                    "UPDATE {} SET expire_us = $2 WHERE id = $1",
                    self.tables.sessions
                ),
                &[&name, &row.expire_us],
            )
            .await
            .map_err(sql_error)?;
            tx.commit().await.map_err(sql_error)?;
            Ok(row.outcome())
        })
        .await
    }

    async fn delete(&self, id: &SessionId, expected_version: Option<u64>) -> StoreResult<bool> {
        let name = id.as_str();
        self.bounded(async {
            let mut client = self.client().await?;
            let Write { tx, row, .. } = self.lock_session(&mut client, name).await?;
            check_version(expected_version, row.as_ref().map_or(0, |r| r.version))?;
            // An absent session's placeholder row goes too.
            tx.execute(
                &format!("DELETE FROM {} WHERE session_id = $1", self.tables.messages),
                &[&name],
            )
            .await
            .map_err(sql_error)?;
            tx.execute(
                &format!("DELETE FROM {} WHERE id = $1", self.tables.sessions),
                &[&name],
            )
            .await
            .map_err(sql_error)?;
            tx.commit().await.map_err(sql_error)?;
            Ok(row.is_some())
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
        // Keyset pagination by id: a session that lives through the listing is listed
        // exactly once, whatever is created or deleted meanwhile.
        let from = match &after {
            Some(after) if after.as_str() >= query.prefix.as_str() => after.clone(),
            _ => query.prefix.clone(),
        };
        let rows = self
            .bounded(async {
                self.client()
                    .await?
                    .query(
                        &format!(
                            "SELECT id, message_count, version, update_us, expire_us, \
                             usage_total::text FROM {} \
                             WHERE id >= $1 AND ($2::text IS NULL OR id > $2) \
                             AND expire_us > {NOW_US} ORDER BY id LIMIT $3",
                            self.tables.sessions
                        ),
                        &[&from, &after, &(page_size as i64 + 1)],
                    )
                    .await
                    .map_err(sql_error)
            })
            .await?;
        let mut sessions: Vec<SessionSummary> = rows
            .iter()
            .map(|row| {
                Ok(SessionSummary {
                    id: SessionId::new(row.get::<_, String>(0)),
                    message_count: row.get::<_, i64>(1) as u64,
                    version: row.get::<_, i64>(2) as u64,
                    update_time: time_of(row.get(3)),
                    expire_time: time_of(row.get(4)),
                    usage_total: usage_of(row.get(5))?,
                })
            })
            .take_while(|s| {
                s.as_ref()
                    .map_or(true, |s| s.id.as_str().starts_with(&query.prefix))
            })
            .collect::<StoreResult<_>>()?;
        let next_page_token = (sessions.len() > page_size).then(|| {
            sessions.truncate(page_size);
            page_token::encode(TOKEN_TAG, sessions[page_size - 1].id.as_str().as_bytes())
        });
        Ok(ListPage {
            sessions,
            next_page_token,
        })
    }

    /// Live sessions and messages counted over the expiry index (exact, in proportion to
    /// the live sessions); bytes are the three tables' total relation size.
    async fn stats(&self) -> StoreResult<StoreStats> {
        let t = &self.tables;
        let row = self
            .bounded(async {
                self.client()
                    .await?
                    .query_one(
                        &format!(
                            "SELECT COUNT(*), COALESCE(SUM(message_count), 0)::bigint, \
                             (pg_total_relation_size('{s}') + pg_total_relation_size('{m}') \
                             + pg_total_relation_size('{r}'))::bigint, {usage} \
                             FROM {s} WHERE expire_us > {NOW_US}",
                            s = t.sessions,
                            m = t.messages,
                            r = t.records,
                            usage = usage_sums("(usage_total->>'{}')::bigint", "::bigint"),
                        ),
                        &[],
                    )
                    .await
                    .map_err(sql_error)
            })
            .await?;
        let records = self.count_records(None).await?;
        Ok(StoreStats {
            backend: self.backend().to_string(),
            active_sessions: row.get::<_, i64>(0) as u64,
            total_messages: row.get::<_, i64>(1) as u64,
            approximate_bytes: row.get::<_, i64>(2) as u64,
            usage_total: UsageTotal::from_counters(std::array::from_fn(|i| {
                row.get::<_, i64>(3 + i).max(0) as u64
            })),
            learning_records: records.learning,
            security_logs: records.security,
        })
    }

    async fn health_check(&self) -> StoreResult<()> {
        self.bounded(async {
            self.client()
                .await?
                .execute("SELECT 1", &[])
                .await
                .map(drop)
                .map_err(sql_error)
        })
        .await
    }
}

/// Page tokens hold the last listed id.
const TOKEN_TAG: &str = "p1";
