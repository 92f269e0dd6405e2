//! Runs the shared conformance suite against the in-memory backend.

use csai_sidecar::conformance::TestStore;
use csai_sidecar::store::memory::{MemoryLimits, MemoryStore};
use std::sync::Arc;

async fn memory_store() -> TestStore {
    Arc::new(MemoryStore::new(MemoryLimits::default()))
}

csai_sidecar::conformance_tests!(memory_store());
