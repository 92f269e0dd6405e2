//! The conformance suite through the encryption decorator, over memory, Redis, SQLite and
//! PostgreSQL.

use crate::common;

use base64::Engine;
use csai_sidecar::conformance::TestStore;
use csai_sidecar::store::decorators::encrypted::{EncryptedStore, Keyring};
use csai_sidecar::store::memory::{MemoryLimits, MemoryStore};
use csai_sidecar::store::redis::RedisStore;
use std::sync::Arc;

fn keys() -> Arc<Keyring> {
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    Arc::new(Keyring::parse(&format!("k1:{key}")).expect("key"))
}

async fn memory() -> TestStore {
    let inner = Arc::new(MemoryStore::new(MemoryLimits::default()));
    Arc::new(EncryptedStore::new(inner, keys()))
}

async fn redis() -> TestStore {
    let inner = RedisStore::new(&common::redis_options(
        common::required_env("CSAI_TEST_REDIS_URL"),
        "csai-encrypted-test:",
    ))
    .expect("redis store");
    Arc::new(EncryptedStore::new(Arc::new(inner), keys()))
}

mod over_memory {
    csai_sidecar::conformance_tests!(super::memory());
}

mod over_redis {
    csai_sidecar::conformance_tests!(super::redis());
}

async fn sqlite() -> TestStore {
    Arc::new(EncryptedStore::new(common::sqlite_store().await, keys()))
}

async fn postgres() -> TestStore {
    Arc::new(EncryptedStore::new(
        common::postgres_store("encrypted_").await,
        keys(),
    ))
}

mod over_sqlite {
    csai_sidecar::conformance_tests!(super::sqlite());
}

mod over_postgres {
    csai_sidecar::conformance_tests!(super::postgres());
}
