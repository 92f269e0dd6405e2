//! The registry of storage backends: each one's name, config section and constructor.
//!
//! A backend lives in its own folder, which declares a [`Backend`] (its keys, how it
//! reads them, how it opens); adding one is that folder, one line in [`BACKENDS`] and one
//! in the conformance list (tests/conformance/main.rs). Backends other than the in-memory
//! one are Cargo features, all on by default.

use crate::settings::{ConfigError, Key, Values};
use crate::store::changes::{ChangeBus, Mechanism, NoBus};
use crate::store::{SessionStore, StoreResult};
use async_trait::async_trait;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Every backend compiled into this build.
pub static BACKENDS: &[&Backend] = &[
    &crate::store::memory::BACKEND,
    #[cfg(feature = "redis")]
    &crate::store::redis::BACKEND,
    #[cfg(feature = "mongo")]
    &crate::store::mongo::BACKEND,
    #[cfg(feature = "dynamo")]
    &crate::store::dynamo::BACKEND,
    #[cfg(feature = "sqlite")]
    &crate::store::sqlite::BACKEND,
    #[cfg(feature = "postgres")]
    &crate::store::postgres::BACKEND,
];

/// One storage backend.
pub struct Backend {
    /// The value of `type` that selects it, and its name in stats and metrics.
    pub name: &'static str,
    /// Other accepted spellings of `type`.
    pub aliases: &'static [&'static str],
    /// False for the in-memory store, whose sessions end with the sidecar's process.
    pub persistent: bool,
    /// Its config section.
    pub keys: &'static [Key],
    /// Reads its section; an error names the key. The result opens the store.
    pub configure: fn(&Values, &Shared) -> Configuring,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl PartialEq for Backend {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

/// A backend's section read, or the first bad value in it.
pub type Configuring = Result<Box<dyn Configured>, ConfigError>;

/// The core settings every backend obeys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shared {
    /// Bound of one operation, retries included.
    pub timeout: Duration,
    /// Retries of a transient failure.
    pub max_retries: u32,
}

/// A backend's section, read and checked, ready to open the store.
#[async_trait]
pub trait Configured: Send + Sync {
    /// Opens the store. Connections are made lazily where the driver allows, so a
    /// backend that is down at start makes the sidecar NOT_SERVING rather than stopping it.
    async fn open(&self) -> StoreResult<Arc<dyn SessionStore>>;

    /// The carrier of change signals between replicas sharing this backend (none for a
    /// backend held by one process).
    fn bus(&self) -> StoreResult<Arc<dyn ChangeBus>> {
        Ok(Arc::new(NoBus(Mechanism::InProcess)))
    }
}

/// The backend `type` names, or None.
pub fn find(name: &str) -> Option<&'static Backend> {
    BACKENDS
        .iter()
        .copied()
        .find(|b| b.name == name || b.aliases.contains(&name))
}

/// The names `type` accepts in this build, for error messages.
pub fn names() -> String {
    BACKENDS
        .iter()
        .map(|b| b.name)
        .collect::<Vec<_>>()
        .join(", ")
}
