//! The PostgreSQL section of the configuration: the connection URL (TLS by its sslmode),
//! the pool, the table prefix and the sweeper, and the registry entry that opens the
//! store.

use crate::settings::{ConfigError, Key, Values, key};
use crate::store::open::{Backend, Configured, Shared};
use crate::store::{SessionStore, StoreResult};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The registry entry (src/store/open.rs).
pub static BACKEND: Backend = Backend {
    name: "postgres",
    aliases: &["postgresql"],
    persistent: true,
    keys: KEYS,
    configure: |values, shared| Ok(Box::new(PostgresOptions::read(values, shared)?)),
};

/// The PostgreSQL store's keys.
pub const KEYS: &[Key] = &[
    // A password inside the URL is redacted like every URL's (src/settings).
    key(
        "postgres_url",
        "CSAI_POSTGRES_URL",
        "postgres://csai@127.0.0.1:5432/csai",
        "PostgreSQL: connection URL (postgres://user:password@host:port/db?sslmode=require for TLS)",
    ),
    key(
        "postgres_ca_file",
        "CSAI_POSTGRES_CA_FILE",
        "",
        "PostgreSQL: PEM CA the server's certificate must chain to (default: the public web roots)",
    ),
    key(
        "postgres_pool_size",
        "CSAI_POSTGRES_POOL_SIZE",
        "16",
        "PostgreSQL: most connections this sidecar opens",
    ),
    key(
        "postgres_table_prefix",
        "CSAI_POSTGRES_TABLE_PREFIX",
        "csai_",
        "PostgreSQL: prefix of the tables (sessions, messages, records, schema)",
    ),
    key(
        "postgres_sweep_interval",
        "CSAI_POSTGRES_SWEEP_INTERVAL",
        "10s",
        "PostgreSQL: how often expired sessions and records are deleted",
    ),
];

/// The PostgreSQL store's section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostgresOptions {
    pub url: String,
    pub ca_file: Option<PathBuf>,
    pub pool_size: usize,
    pub table_prefix: String,
    pub sweep_interval: Duration,
    /// Bound of one operation (`timeout`), also the connect timeout.
    pub timeout: Duration,
}

impl PostgresOptions {
    /// Reads the section.
    pub fn read(values: &Values, shared: &Shared) -> Result<Self, ConfigError> {
        Ok(Self {
            url: values.get("postgres_url", "a postgres:// URL", |s| {
                (s.starts_with("postgres://") || s.starts_with("postgresql://"))
                    .then(|| s.to_string())
            })?,
            ca_file: values.optional_text("postgres_ca_file").map(PathBuf::from),
            pool_size: values.get("postgres_pool_size", "a whole number from 1 to 1000", |s| {
                s.parse().ok().filter(|n| (1..=1000).contains(n))
            })?,
            table_prefix: values.get(
                "postgres_table_prefix",
                "letters, digits and _ (starting with a letter or _)",
                |s| {
                    let valid = s
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        && s.len() <= 40;
                    valid.then(|| s.to_string())
                },
            )?,
            sweep_interval: values.positive_duration("postgres_sweep_interval")?,
            timeout: shared.timeout,
        })
    }
}

#[async_trait::async_trait]
impl Configured for PostgresOptions {
    async fn open(&self) -> StoreResult<Arc<dyn SessionStore>> {
        let store = Arc::new(super::PostgresStore::open_and_migrate(self.clone()).await?);
        store.spawn_sweeper(self.sweep_interval);
        Ok(store)
    }

    fn bus(&self) -> StoreResult<Arc<dyn crate::store::changes::ChangeBus>> {
        Ok(Arc::new(super::bus::PostgresBus::new(self)?))
    }
}
