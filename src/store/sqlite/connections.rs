//! The SQLite file's connections: one writer (SQLite runs one write transaction at a time,
//! so writes queue here rather than spin on the file lock), a pool of readers (WAL mode
//! lets them read beside the writer), every call on the blocking thread pool so that no
//! SQLite call stalls the async runtime, and the lock that keeps a second process away.

use super::config::{SqliteOptions, Synchronous};
use crate::store::{StoreError, StoreResult};
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};
use std::fs::File;
use std::sync::Arc;

/// The connections to one database file.
pub struct Connections {
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    options: SqliteOptions,
    /// Held (flock) for the life of the store: a second process opening the same file is
    /// refused instead of sharing it.
    _lock: File,
}

impl Connections {
    /// Opens the file (creating it), takes its lock, and migrates the schema.
    pub fn open(options: SqliteOptions) -> Result<Self, String> {
        let path = &options.path;
        let lock_path = path.with_extension(match path.extension() {
            Some(extension) => format!("{}.lock", extension.to_string_lossy()),
            None => "lock".into(),
        });
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("cannot open the lock file {}: {e}", lock_path.display()))?;
        lock.try_lock().map_err(|_| {
            format!(
                "another csai-sidecar process uses {} (it holds {}): one process per SQLite \
                 file; reach that one over gRPC (grpc:// or unix://) instead",
                path.display(),
                lock_path.display()
            )
        })?;
        let mut writer = connect(&options).map_err(|e| format!("{}: {e}", path.display()))?;
        super::schema::migrate(&mut writer).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self {
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            options,
            _lock: lock,
        })
    }

    /// Runs `work` in one write transaction (BEGIN IMMEDIATE), committed when it returns
    /// Ok, rolled back otherwise.
    pub async fn write<T, F>(self: &Arc<Self>, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        let connections = self.clone();
        self.blocking(move || {
            let mut writer = connections.writer.lock();
            let transaction = writer
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql_error)?;
            let value = work(&transaction)?;
            transaction.commit().map_err(sql_error)?;
            Ok(value)
        })
        .await
    }

    /// Runs `work` in one read transaction on a reader: a consistent snapshot.
    pub async fn read<T, F>(self: &Arc<Self>, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        let connections = self.clone();
        self.blocking(move || {
            let taken = connections.readers.lock().pop();
            let mut reader = match taken {
                Some(reader) => reader,
                None => connect(&connections.options).map_err(sql_error)?,
            };
            let result = reader
                .transaction_with_behavior(TransactionBehavior::Deferred)
                .map_err(sql_error)
                .and_then(|transaction| work(&transaction));
            let mut readers = connections.readers.lock();
            if readers.len() < connections.options.readers {
                readers.push(reader);
            }
            result
        })
        .await
    }

    /// Runs `work` on the blocking pool within the store's timeout. A write that times out
    /// may still commit (as on every backend): a retry with the same request_id is safe.
    async fn blocking<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce() -> StoreResult<T> + Send + 'static,
    {
        let task = tokio::task::spawn_blocking(work);
        match tokio::time::timeout(self.options.timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(panicked)) => Err(StoreError::Internal(format!(
                "an SQLite call panicked: {panicked}"
            ))),
            Err(_) => Err(StoreError::Timeout(format!(
                "SQLite did not answer within {:?}",
                self.options.timeout
            ))),
        }
    }
}

/// A connection with the store's settings: WAL, the chosen durability, and a busy
/// timeout for the moments a checkpoint holds the file.
fn connect(options: &SqliteOptions) -> rusqlite::Result<Connection> {
    let connection = Connection::open_with_flags(
        &options.path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(options.timeout)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(
        None,
        "synchronous",
        match options.synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        },
    )?;
    connection.pragma_update(None, "foreign_keys", "OFF")?;
    Ok(connection)
}

/// A store error for an SQLite failure: a busy or locked file and a full disk may pass,
/// anything else is not a retry's business.
pub fn sql_error(error: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::*;
    match error.sqlite_error_code() {
        Some(DatabaseBusy | DatabaseLocked) => {
            StoreError::Unavailable(format!("SQLite is busy: {error}"))
        }
        Some(DiskFull) => StoreError::LimitExceeded(format!("SQLite: the disk is full: {error}")),
        Some(CannotOpen | ReadOnly | SystemIoFailure) => {
            StoreError::Unavailable(format!("SQLite: {error}"))
        }
        _ => StoreError::Internal(format!("SQLite: {error}")),
    }
}
