//! Runs the shared conformance suite against MongoDB (SecantusDB in tests).

use crate::common;

use csai_sidecar::conformance::TestStore;
use csai_sidecar::store::mongo::{MongoOptions, MongoStore};
use std::sync::Arc;
use std::time::Duration;

async fn mongo_store() -> TestStore {
    let options = MongoOptions {
        uri: common::required_env("CSAI_TEST_MONGO_URI"),
        database: "csai_conformance".into(),
        collection: "sessions".into(),
        pool_size: 16,
        timeout: Duration::from_secs(20),
        max_retries: 3,
    };
    Arc::new(MongoStore::new(&options).await.expect("mongo store"))
}

csai_sidecar::conformance_tests!(mongo_store());
