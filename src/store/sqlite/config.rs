//! The SQLite section of the configuration: the database file, its durability and sweeper,
//! and the registry entry that opens the store.

use crate::settings::{ConfigError, Key, Values, key};
use crate::store::open::{Backend, Configured, Shared};
use crate::store::{SessionStore, StoreResult};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The registry entry (src/store/open.rs).
pub static BACKEND: Backend = Backend {
    name: "sqlite",
    aliases: &["sqlite3"],
    persistent: true,
    keys: KEYS,
    configure: |values, shared| Ok(Box::new(SqliteOptions::read(values, shared)?)),
};

/// The SQLite store's keys.
pub const KEYS: &[Key] = &[
    key(
        "sqlite_path",
        "CSAI_SQLITE_PATH",
        "csai-sessions.sqlite3",
        "SQLite: the database file (created with its folder's permissions; one sidecar process per file)",
    ),
    key(
        "sqlite_synchronous",
        "CSAI_SQLITE_SYNCHRONOUS",
        "full",
        "SQLite: full (every acknowledged write survives a power loss) or normal (survives a crash of the sidecar; the last writes may be lost with the machine)",
    ),
    key(
        "sqlite_readers",
        "CSAI_SQLITE_READERS",
        "4",
        "SQLite: connections for reads beside the one writer",
    ),
    key(
        "sqlite_sweep_interval",
        "CSAI_SQLITE_SWEEP_INTERVAL",
        "10s",
        "SQLite: how often expired sessions and records are deleted",
    ),
];

/// How hard a commit waits for the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Synchronous {
    /// The WAL is synced at every commit.
    Full,
    /// The WAL is synced at checkpoints only.
    Normal,
}

/// The SQLite store's section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqliteOptions {
    pub path: PathBuf,
    pub synchronous: Synchronous,
    pub readers: usize,
    pub sweep_interval: Duration,
    /// Bound of one operation (`timeout`), also how long a write waits for the file lock.
    pub timeout: Duration,
}

impl SqliteOptions {
    /// Reads the section.
    pub fn read(values: &Values, shared: &Shared) -> Result<Self, ConfigError> {
        Ok(Self {
            path: values.get("sqlite_path", "a file path", |s| {
                (!s.is_empty()).then(|| PathBuf::from(s))
            })?,
            synchronous: values.get("sqlite_synchronous", "full or normal", |s| match s {
                "full" => Some(Synchronous::Full),
                "normal" => Some(Synchronous::Normal),
                _ => None,
            })?,
            readers: values.get("sqlite_readers", "a whole number from 1 to 64", |s| {
                s.parse().ok().filter(|n| (1..=64).contains(n))
            })?,
            sweep_interval: values.positive_duration("sqlite_sweep_interval")?,
            timeout: shared.timeout,
        })
    }
}

#[async_trait::async_trait]
impl Configured for SqliteOptions {
    async fn open(&self) -> StoreResult<Arc<dyn SessionStore>> {
        let store = Arc::new(super::SqliteStore::open(self.clone()).await?);
        store.spawn_sweeper(self.sweep_interval);
        Ok(store)
    }
}
