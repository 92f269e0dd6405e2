//! The sidecar on DynamoDB (moto in tests), end to end: every RPC through the binary,
//! 64 concurrent appenders, a 2 MB session of messages larger than an item, and the
//! table, TTL and item layout the backend creates.

use crate::common::{
    SERVING, SidecarProcess, TestServer, concurrent_appenders_through_the_sidecar,
    exercise_every_rpc, large_session_round_trips, required_env, test_config, wait_for_status,
};
use aws_sdk_dynamodb::types::AttributeValue;
use csai_sidecar::conformance::unique_id;
use csai_sidecar::domain::{Append, NewMessage, Role, SessionId, WriteOptions};
use csai_sidecar::store::SessionStore;
use csai_sidecar::store::dynamo::{DynamoOptions, DynamoStore};
use std::sync::Arc;
use std::time::Duration;

/// A fresh table per test (moto copies a whole table on every transaction).
fn options() -> DynamoOptions {
    DynamoOptions {
        region: "us-east-1".into(),
        table: unique_id("e2e").as_str().replace('-', "_"),
        endpoint: Some(required_env("CSAI_TEST_DYNAMO_ENDPOINT")),
        create_table: true,
        timeout: Duration::from_secs(30),
        max_retries: 3,
    }
}

async fn server() -> TestServer {
    let store = DynamoStore::new(&options()).await.expect("store");
    let mut config = test_config();
    config.storage.shared.timeout = Duration::from_secs(30);
    TestServer::start_serving(config, Arc::new(store)).await
}

#[tokio::test]
async fn every_rpc_through_the_binary() {
    let (_sidecar, channel) = SidecarProcess::spawn(&[
        ("CSAI_STORAGE_TYPE", "dynamo".into()),
        (
            "CSAI_DYNAMO_ENDPOINT",
            required_env("CSAI_TEST_DYNAMO_ENDPOINT"),
        ),
        ("CSAI_DYNAMO_TABLE", options().table),
        ("CSAI_DYNAMO_CREATE_TABLE", "true".into()),
    ])
    .await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    wait_for_status(&mut health, "csai.v1.SessionStore", SERVING).await;
    exercise_every_rpc(channel, "e2e-dynamo").await;
}

#[tokio::test]
async fn sixty_four_concurrent_appenders_lose_nothing() {
    // 64 writers racing as on the other backends; 15 appends each (not 50): each
    // append costs the Python test server tens of milliseconds; the race is the same.
    concurrent_appenders_through_the_sidecar(&server().await, 64, 15).await;
}

#[tokio::test]
async fn a_two_megabyte_session_of_large_messages_round_trips() {
    large_session_round_trips(&server().await, 2 << 20).await;
}

/// The created table has TTL on `ttl`; every item of a session carries it, no later than
/// the session's expiry; no item comes near the 400 KB limit.
#[tokio::test]
async fn table_ttl_and_item_layout() {
    let options = options();
    let store = DynamoStore::new(&options).await.expect("store");
    let id = SessionId::new("layout");
    let big = "x".repeat(150_000);
    for _ in 0..6 {
        store
            .append(
                &id,
                Append {
                    messages: vec![NewMessage::text(Role::User, big.clone())],
                    request_id: None,
                    options: WriteOptions::ttl(Duration::from_secs(600)),
                },
            )
            .await
            .expect("append");
    }
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .endpoint_url(required_env("CSAI_TEST_DYNAMO_ENDPOINT"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .build();
    let client = aws_sdk_dynamodb::Client::from_conf(config);
    let ttl = client
        .describe_time_to_live()
        .table_name(&options.table)
        .send()
        .await
        .expect("describe TTL");
    let description = ttl.time_to_live_description().expect("TTL description");
    assert_eq!(description.attribute_name(), Some("ttl"));
    let items = client
        .query()
        .table_name(&options.table)
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(":pk", AttributeValue::S("layout".into()))
        .send()
        .await
        .expect("query");
    let items = items.items();
    assert!(
        items.len() >= 4,
        "a meta item and several chunks: {}",
        items.len()
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    for item in items {
        let sk = item.get("sk").and_then(|v| v.as_s().ok()).expect("sk");
        let expires: u64 = item
            .get("ttl")
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("item {sk} has no ttl attribute"));
        assert!(
            expires >= now + 590,
            "item {sk} expires too early: {expires}"
        );
        let size: usize = item
            .iter()
            .map(|(k, v)| k.len() + format!("{v:?}").len())
            .sum();
        assert!(size < 350_000, "item {sk} is {size} bytes");
    }
}

/// Records are items of a per-day partition, sorted by id, with the TTL attribute.
#[tokio::test]
async fn records_are_per_day_items_with_a_ttl() {
    use csai_sidecar::records::{self, RecordStream};

    let options = options();
    let store = DynamoStore::new(&options).await.expect("store");
    let user = unique_id("records-user").as_str().to_string();
    let stream = RecordStream::Security { user: user.clone() };
    let body = serde_json::json!({"allowed": true});
    let (id, time) = records::put(
        &store,
        &stream,
        &body,
        std::time::SystemTime::now(),
        Duration::from_secs(600),
    )
    .await
    .expect("put");
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .endpoint_url(required_env("CSAI_TEST_DYNAMO_ENDPOINT"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .build();
    let client = aws_sdk_dynamodb::Client::from_conf(config);
    let partition = format!(
        "#rec#security:{user}#{}",
        csai_sidecar::store::records::day_name(csai_sidecar::store::records::day_of(time))
    );
    let items = client
        .query()
        .table_name(&options.table)
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(":pk", AttributeValue::S(partition.clone()))
        .send()
        .await
        .expect("query");
    let items = items.items();
    assert_eq!(items.len(), 1, "{partition}");
    assert_eq!(
        items[0].get("sk"),
        Some(&AttributeValue::S(format!("r#{id}")))
    );
    let ttl: u64 = items[0]
        .get("ttl")
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse().ok())
        .expect("a ttl attribute");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(ttl >= now + 590 && ttl <= now + 602, "ttl {ttl}, now {now}");
}
