//! The MongoDB section of the configuration: its keys, the options they give, and the
//! registry entry that opens the store.

use crate::settings::{ConfigError, Key, Values, key, secret};
use crate::store::open::{Backend, Configured, Shared};
use crate::store::{SessionStore, StoreResult};
use std::sync::Arc;
use std::time::Duration;

/// The registry entry (src/store/open.rs).
pub static BACKEND: Backend = Backend {
    name: "mongo",
    aliases: &["mongodb"],
    persistent: true,
    keys: KEYS,
    configure: |values, shared| Ok(Box::new(MongoOptions::read(values, shared)?)),
};

/// The MongoDB keys.
pub const KEYS: &[Key] = &[
    secret(
        "mongo_uri",
        "CSAI_MONGO_URI",
        "MongoDB connection string (default mongodb://localhost:27017)",
    ),
    key(
        "mongo_database",
        "CSAI_MONGO_DATABASE",
        "cs_ai",
        "MongoDB database",
    ),
    key(
        "mongo_collection",
        "CSAI_MONGO_COLLECTION",
        "sessions",
        "MongoDB collection of sessions; messages go to <collection>_messages",
    ),
    key(
        "mongo_pool_size",
        "CSAI_MONGO_POOL_SIZE",
        "32",
        "most connections in the MongoDB driver's pool",
    ),
];

/// How to reach MongoDB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MongoOptions {
    /// Connection string; auth, TLS and replica-set options go here.
    pub uri: String,
    pub database: String,
    /// Session documents; messages go to `<collection>_messages`.
    pub collection: String,
    /// Most connections in the driver's pool.
    pub pool_size: u32,
    /// Bound of one operation, retries included; also the connect and server-selection timeout.
    pub timeout: Duration,
    /// Retries of a transient network failure.
    pub max_retries: u32,
}

impl MongoOptions {
    /// Reads the section.
    pub fn read(values: &Values, shared: &Shared) -> Result<Self, ConfigError> {
        Ok(Self {
            uri: values
                .optional_text("mongo_uri")
                .unwrap_or_else(|| "mongodb://localhost:27017".to_string()),
            database: values.text("mongo_database"),
            collection: values.text("mongo_collection"),
            pool_size: values.get("mongo_pool_size", "a whole number from 1 to 1000", |s| {
                s.parse().ok().filter(|n| (1..=1000).contains(n))
            })?,
            timeout: shared.timeout,
            max_retries: shared.max_retries,
        })
    }
}

#[async_trait::async_trait]
impl Configured for MongoOptions {
    async fn open(&self) -> StoreResult<Arc<dyn SessionStore>> {
        Ok(Arc::new(super::MongoStore::new(self).await?))
    }

    fn bus(&self) -> StoreResult<Arc<dyn crate::store::changes::ChangeBus>> {
        use crate::store::changes::{Mechanism, NoBus};
        Ok(Arc::new(NoBus(Mechanism::Polling)))
    }
}
