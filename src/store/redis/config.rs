//! The Redis section of the configuration: its keys, the options they give, and the
//! registry entry that opens the store.

use crate::settings::{ConfigError, Key, Values, key, secret};
use crate::store::open::{Backend, Configured, Shared};
use crate::store::{SessionStore, StoreResult};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The registry entry (src/store/open.rs).
pub static BACKEND: Backend = Backend {
    name: "redis",
    aliases: &[],
    persistent: true,
    keys: KEYS,
    configure: |values, shared| Ok(Box::new(RedisOptions::read(values, shared)?)),
};

/// The Redis keys.
pub const KEYS: &[Key] = &[
    key(
        "redis_address",
        "CSAI_REDIS_ADDRESS",
        "localhost:6379",
        "Redis host:port, redis:// URL or rediss:// URL (TLS)",
    ),
    key(
        "redis_username",
        "CSAI_REDIS_USERNAME",
        "",
        "Redis ACL username",
    ),
    secret("redis_password", "CSAI_REDIS_PASSWORD", "Redis password"),
    key(
        "redis_db",
        "CSAI_REDIS_DB",
        "0",
        "Redis database number (standalone only)",
    ),
    key(
        "redis_cluster_nodes",
        "CSAI_REDIS_CLUSTER_NODES",
        "",
        "comma-separated Redis Cluster seed nodes; setting it selects Cluster mode",
    ),
    key(
        "redis_tls_ca_file",
        "CSAI_REDIS_TLS_CA_FILE",
        "",
        "PEM file of the CA that signed Redis's TLS certificate (rediss://); system roots when unset",
    ),
    key(
        "redis_key_prefix",
        "CSAI_REDIS_KEY_PREFIX",
        "csai:",
        "prefix of every Redis key (no '{' or '}')",
    ),
];

/// How to reach Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisOptions {
    /// `host:port`, `redis://...` or `rediss://...` (TLS) of a standalone server.
    pub address: String,
    /// Seed nodes of a Cluster; when not empty, Cluster mode is used and `address` ignored.
    pub cluster_nodes: Vec<String>,
    /// PEM file of the CA to trust for `rediss://` instead of the system roots.
    pub tls_ca_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Database number (standalone only; a Cluster has only database 0).
    pub db: i64,
    /// Prepended to every key; must not contain `{` or `}`.
    pub key_prefix: String,
    /// Bound of one operation, retries included.
    pub timeout: Duration,
    /// Retries of a transient failure.
    pub max_retries: u32,
}

impl RedisOptions {
    /// Reads the section.
    pub fn read(values: &Values, shared: &Shared) -> Result<Self, ConfigError> {
        Ok(Self {
            address: values.text("redis_address"),
            username: values.optional_text("redis_username"),
            password: values.optional_text("redis_password"),
            db: values.get("redis_db", "a whole number from 0", |s| {
                s.parse().ok().filter(|&n| n >= 0)
            })?,
            cluster_nodes: values
                .text("redis_cluster_nodes")
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(String::from)
                .collect(),
            tls_ca_file: values.optional_text("redis_tls_ca_file").map(PathBuf::from),
            key_prefix: values.get(
                "redis_key_prefix",
                "text without '{' or '}' (they delimit the Redis Cluster hash tag)",
                |s| Some(s.to_string()).filter(|s| !s.contains(['{', '}'])),
            )?,
            timeout: shared.timeout,
            max_retries: shared.max_retries,
        })
    }
}

#[async_trait::async_trait]
impl Configured for RedisOptions {
    async fn open(&self) -> StoreResult<Arc<dyn SessionStore>> {
        Ok(Arc::new(super::RedisStore::new(self)?))
    }

    fn bus(&self) -> StoreResult<Arc<dyn crate::store::changes::ChangeBus>> {
        Ok(Arc::new(super::bus::RedisBus::new(self)?))
    }
}
