//! The in-memory section of the configuration: its limits, its sweeper, and the registry
//! entry that opens the store.

use crate::settings::{ConfigError, Key, Values, key, parse_size};
use crate::store::open::{Backend, Configured, Shared};
use crate::store::{SessionStore, StoreResult};
use std::sync::Arc;
use std::time::Duration;

/// The registry entry (src/store/open.rs).
pub static BACKEND: Backend = Backend {
    name: "memory",
    aliases: &["inmemory", "in-memory"],
    persistent: false,
    keys: KEYS,
    configure: |values, _: &Shared| Ok(Box::new(MemoryOptions::read(values)?)),
};

/// The in-memory store's keys.
pub const KEYS: &[Key] = &[
    key(
        "memory_max_sessions",
        "CSAI_MEMORY_MAX_SESSIONS",
        "0",
        "in-memory store: most live sessions (0 = no limit)",
    ),
    key(
        "memory_max_bytes",
        "CSAI_MEMORY_MAX_BYTES",
        "0",
        "in-memory store: most stored bytes, e.g. 512MiB (0 = no limit)",
    ),
    key(
        "memory_sweep_interval",
        "CSAI_MEMORY_SWEEP_INTERVAL",
        "1s",
        "in-memory store: how often expired sessions are freed",
    ),
];

/// Optional limits of the in-memory store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryLimits {
    pub max_sessions: Option<u64>,
    pub max_bytes: Option<u64>,
}

/// The in-memory store's section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryOptions {
    pub limits: MemoryLimits,
    /// How often expired sessions are freed.
    pub sweep_interval: Duration,
}

impl MemoryOptions {
    /// Reads the section.
    pub fn read(values: &Values) -> Result<Self, ConfigError> {
        let limit = |s: &str| s.parse::<u64>().ok().map(|n| Some(n).filter(|&n| n > 0));
        let size_limit = |s: &str| parse_size(s).map(|n| Some(n).filter(|&n| n > 0));
        Ok(Self {
            limits: MemoryLimits {
                max_sessions: values.get(
                    "memory_max_sessions",
                    "a whole number (0 = no limit)",
                    limit,
                )?,
                max_bytes: values.get(
                    "memory_max_bytes",
                    "a size such as 512MiB or 1GB (0 = no limit)",
                    size_limit,
                )?,
            },
            sweep_interval: values.positive_duration("memory_sweep_interval")?,
        })
    }
}

#[async_trait::async_trait]
impl Configured for MemoryOptions {
    async fn open(&self) -> StoreResult<Arc<dyn SessionStore>> {
        let store = Arc::new(super::MemoryStore::new(self.limits));
        store.spawn_sweeper(self.sweep_interval);
        Ok(store)
    }
}
