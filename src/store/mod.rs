//! The `SessionStore` trait every backend implements, and the errors it returns.

pub mod changes;
pub mod decorators;
#[cfg(feature = "dynamo")]
pub mod dynamo;
pub mod memory;
#[cfg(feature = "mongo")]
pub mod mongo;
pub mod open;
pub mod optimistic;
pub mod page_token;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod records;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod sql_rows;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod stats_cache;
pub mod sweeper;

use crate::domain::{
    Append, AppendOutcome, ListPage, ListQuery, NewMessage, Session, SessionId, StateOutcome,
    StateUpdate, StoreStats, Window, WriteOptions, WriteOutcome,
};
use crate::store::records::{Record, RecordCounts, RecordRange, RecordStream};
use async_trait::async_trait;
use std::time::Duration;

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The session does not exist or has expired.
    #[error("session {0:?} not found (absent or expired)")]
    NotFound(String),
    /// `expected_version` did not match; nothing was changed.
    #[error("version mismatch: expected {expected}, session is at {actual}")]
    VersionMismatch { expected: u64, actual: u64 },
    /// A configured limit of the store would be exceeded.
    #[error("{0}")]
    LimitExceeded(String),
    /// The page token was not produced by this store.
    #[error("invalid page token: {0}")]
    InvalidPageToken(String),
    /// The backend cannot be reached or refused the operation for now; retrying may work.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The backend did not answer within the configured timeout.
    #[error("backend timed out: {0}")]
    Timeout(String),
    /// A bug or corrupt data: retrying will not help.
    #[error("internal store error: {0}")]
    Internal(String),
}

impl StoreError {
    /// True for errors a retry may cure (outages and timeouts).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Timeout(_))
    }
}

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// How many of a session's latest request ids every backend remembers: a retry of an
/// append within its last this-many appends is recognised and stores nothing.
pub const REMEMBERED_REQUEST_IDS: usize = 64;

/// Storage of chat sessions. Every backend implements this with the same semantics,
/// proved by the functions in [`conformance`](crate::conformance):
///
/// - writes create the session if absent and set its expiry to now + `ttl`;
/// - `expected_version` mismatches fail with [`StoreError::VersionMismatch`] and change
///   nothing (`Some(0)` means "must not exist");
/// - appends are atomic, assign gap-free seqs, cost the same however long the session is,
///   and are idempotent per `request_id`;
/// - an expired session is indistinguishable from an absent one.
///
/// Stores never decide policy (default TTL, limits on input): the service layer does.
#[async_trait]
pub trait SessionStore: RecordStore {
    /// The backend's name, as reported in stats ("memory", "redis", ...).
    fn backend(&self) -> &'static str;

    /// Reads a session with a window of its messages.
    async fn get(&self, id: &SessionId, window: Window) -> StoreResult<Session>;

    /// Appends messages at the end of the session.
    async fn append(&self, id: &SessionId, append: Append) -> StoreResult<AppendOutcome>;

    /// Replaces all messages; seqs restart at 1.
    async fn replace(
        &self,
        id: &SessionId,
        messages: Vec<NewMessage>,
        options: WriteOptions,
    ) -> StoreResult<WriteOutcome>;

    /// Replaces the system messages.
    async fn set_system_messages(
        &self,
        id: &SessionId,
        messages: Vec<NewMessage>,
        options: WriteOptions,
    ) -> StoreResult<WriteOutcome>;

    /// Replaces or merges the state object.
    async fn update_state(
        &self,
        id: &SessionId,
        update: StateUpdate,
        options: WriteOptions,
    ) -> StoreResult<StateOutcome>;

    /// Sets the expiry of a live session to now + `ttl`; the version does not change.
    async fn touch(&self, id: &SessionId, ttl: Duration) -> StoreResult<WriteOutcome>;

    /// Deletes a session; `Ok(false)` if there was no live session.
    async fn delete(&self, id: &SessionId, expected_version: Option<u64>) -> StoreResult<bool>;

    /// Lists live sessions one page at a time, in the backend's own order.
    async fn list(&self, query: ListQuery) -> StoreResult<ListPage>;

    /// Counts what the store holds.
    async fn stats(&self) -> StoreResult<StoreStats>;

    /// Checks that the backend answers.
    async fn health_check(&self) -> StoreResult<()>;
}

/// Storage of records: learning data and security logs, each in a stream, kept until
/// their expiry. Split off [`SessionStore`] because most callers never touch records and
/// records ask less of a backend (no versions, no seqs); every backend implements both,
/// proved by [`conformance`](crate::conformance)'s record functions.
#[async_trait]
pub trait RecordStore: Send + Sync + 'static {
    /// Stores a record (learning data, a security log) in its stream until its expiry.
    async fn put_record(&self, stream: &RecordStream, record: Record) -> StoreResult<()>;

    /// Reads a stream's live records in `range`, oldest first, at most `range.limit`,
    /// without reading the records outside the range.
    async fn list_records(
        &self,
        stream: &RecordStream,
        range: &RecordRange,
    ) -> StoreResult<Vec<Record>>;

    /// Counts the live records of every stream (`tenant` None: every tenant's too) or of
    /// one tenant's streams, by kind. For GetStats, so it may scan; docs/backends.md says
    /// where a backend's count is approximate.
    async fn count_records(&self, tenant: Option<&str>) -> StoreResult<RecordCounts>;
}

/// Checks `expected_version` against the session's current version (0 when absent).
pub fn check_version(expected: Option<u64>, actual: u64) -> StoreResult<()> {
    match expected {
        Some(expected) if expected != actual => {
            Err(StoreError::VersionMismatch { expected, actual })
        }
        _ => Ok(()),
    }
}
