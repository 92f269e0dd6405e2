//! The chat turn suite over the in-memory store.

use crate::common;

use csai_sidecar::store::memory::{MemoryLimits, MemoryStore};
use std::sync::Arc;

fn memory_store() -> common::chat_suite::Store {
    Arc::new(MemoryStore::new(MemoryLimits::default()))
}

crate::chat_turn_tests!(memory_store());
