//! The conformance suite through one tenant's view, over memory, Redis, MongoDB, SQLite
//! and PostgreSQL: the
//! tenant prefix must not change any behaviour.

use crate::common;

use csai_sidecar::conformance::TestStore;
use csai_sidecar::store::decorators::tenant::TenantStore;
use csai_sidecar::store::memory::{MemoryLimits, MemoryStore};
use csai_sidecar::store::mongo::{MongoOptions, MongoStore};
use csai_sidecar::store::redis::RedisStore;
use std::sync::Arc;
use std::time::Duration;

async fn memory() -> TestStore {
    Arc::new(TenantStore::new(
        Arc::new(MemoryStore::new(MemoryLimits::default())),
        "shop-a",
    ))
}

async fn redis() -> TestStore {
    let inner = RedisStore::new(&common::redis_options(
        common::required_env("CSAI_TEST_REDIS_URL"),
        "csai-tenant-test:",
    ))
    .expect("redis store");
    Arc::new(TenantStore::new(Arc::new(inner), "shop-a"))
}

/// A wide bound, as for DynamoDB: the shared test server slows down under the suite's
/// parallel load and as a long-lived server's data grows (on a server kept through many
/// local runs, a 400-writer churn step took over 20 s).
async fn mongo() -> TestStore {
    let inner = MongoStore::new(&MongoOptions {
        uri: common::required_env("CSAI_TEST_MONGO_URI"),
        database: "csai_tenant_test".into(),
        collection: "sessions".into(),
        pool_size: 16,
        timeout: Duration::from_secs(60),
        max_retries: 3,
    })
    .await
    .expect("mongo store");
    Arc::new(TenantStore::new(Arc::new(inner), "shop-a"))
}

mod over_memory {
    csai_sidecar::conformance_tests!(super::memory());
}

mod over_redis {
    csai_sidecar::conformance_tests!(super::redis());
}

mod over_mongo {
    csai_sidecar::conformance_tests!(super::mongo());
}

async fn sqlite() -> TestStore {
    Arc::new(TenantStore::new(common::sqlite_store().await, "shop-a"))
}

mod over_sqlite {
    csai_sidecar::conformance_tests!(super::sqlite());
}

async fn postgres() -> TestStore {
    Arc::new(TenantStore::new(
        common::postgres_store("tenant_").await,
        "shop-a",
    ))
}

mod over_postgres {
    csai_sidecar::conformance_tests!(super::postgres());
}
