//! Runs the shared conformance suite against DynamoDB (moto in tests).

mod common;

use csai_sidecar::store::conformance::TestStore;
use csai_sidecar::store::dynamo::{DynamoOptions, DynamoStore};
use std::sync::Arc;
use std::time::Duration;

async fn dynamo_store() -> TestStore {
    let options = DynamoOptions {
        region: "us-east-1".into(),
        table: "csai_conformance".into(),
        endpoint: Some(common::required_env("CSAI_TEST_DYNAMO_ENDPOINT")),
        create_table: true,
        timeout: Duration::from_secs(20),
        max_retries: 3,
    };
    Arc::new(DynamoStore::new(&options).await.expect("dynamo store"))
}

csai_sidecar::conformance_tests!(dynamo_store());
