//! Runs the shared conformance suite against DynamoDB (moto in tests).

use crate::common;

use csai_sidecar::conformance::TestStore;
use csai_sidecar::store::dynamo::{DynamoOptions, DynamoStore};
use std::sync::Arc;
use std::time::Duration;

/// A table of its own for every test: moto copies a whole table on every transaction,
/// so a shared, growing table would make each test slower than the last.
async fn dynamo_store() -> TestStore {
    let table = csai_sidecar::conformance::unique_id("table");
    let options = DynamoOptions {
        region: "us-east-1".into(),
        table: table.as_str().replace('-', "_"),
        endpoint: Some(common::required_env("CSAI_TEST_DYNAMO_ENDPOINT")),
        create_table: true,
        // moto is one Python process: on a loaded 2-core machine one call of the churn
        // test (500 sessions in one table) took over 20 s. A guard, not a measurement.
        timeout: Duration::from_secs(60),
        max_retries: 3,
    };
    Arc::new(DynamoStore::new(&options).await.expect("dynamo store"))
}

csai_sidecar::conformance_tests!(dynamo_store());
