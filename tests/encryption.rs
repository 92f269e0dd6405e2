//! Encryption at rest on Redis, MongoDB and DynamoDB: the raw data holds no plaintext, a
//! wrong or missing key is a clear error, and a key rotation re-encrypts everything.

mod common;

use base64::Engine;
use common::required_env;
use csai_sidecar::model::{
    Append, FunctionCall, NewMessage, Role, SessionId, StateUpdate, ToolCall, Window, WriteOptions,
};
use csai_sidecar::records::{self, RecordStream};
use csai_sidecar::store::SessionStore;
use csai_sidecar::store::dynamo::{DynamoOptions, DynamoStore};
use csai_sidecar::store::encrypted::{self, EncryptedStore, Keyring};
use csai_sidecar::store::mongo::{MongoOptions, MongoStore};
use csai_sidecar::store::redis::RedisStore;
use std::sync::Arc;
use std::time::Duration;

const SECRET: &str = "card 4111-1111-1111-1111";

fn keyring(entries: &[(&str, u8)]) -> Arc<Keyring> {
    let text: Vec<String> = entries
        .iter()
        .map(|(id, byte)| {
            format!(
                "{id}:{}",
                base64::engine::general_purpose::STANDARD.encode([*byte; 32])
            )
        })
        .collect();
    Arc::new(Keyring::parse(&text.join(",")).expect("keys"))
}

fn unique(name: &str) -> String {
    csai_sidecar::store::conformance::unique_id(name)
        .as_str()
        .replace(['-', ':'], "_")
}

/// Writes the secret into every encrypted place: content, reasoning, tool arguments,
/// system messages, state, a record.
async fn write_secrets(store: &dyn SessionStore, id: &SessionId) {
    let ttl = WriteOptions::ttl(Duration::from_secs(600));
    let mut calling = NewMessage::text(Role::Assistant, format!("checking {SECRET}"));
    calling.reasoning_content = Some(format!("the user gave {SECRET}"));
    calling.tool_calls = vec![ToolCall {
        id: "c1".into(),
        kind: "function".into(),
        function: FunctionCall {
            name: "charge".into(),
            arguments: format!("{{\"card\":\"{SECRET}\"}}"),
        },
        index: 0,
    }];
    store
        .append(
            id,
            Append {
                messages: vec![NewMessage::text(Role::User, SECRET), calling],
                request_id: None,
                options: ttl.clone(),
            },
        )
        .await
        .expect("append");
    store
        .set_system_messages(
            id,
            vec![NewMessage::text(
                Role::System,
                format!("never repeat {SECRET}"),
            )],
            ttl.clone(),
        )
        .await
        .expect("system");
    let state = serde_json::json!({"card": SECRET, "nested": {"again": SECRET}})
        .as_object()
        .cloned()
        .unwrap();
    store
        .update_state(id, StateUpdate::Replace(state), ttl)
        .await
        .expect("state");
    let log = serde_json::json!({"reason": SECRET});
    records::put(
        store,
        &RecordStream::Security {
            user: id.as_str().into(),
        },
        &log,
        Duration::from_secs(600),
    )
    .await
    .expect("record");
}

async fn read_back(store: &dyn SessionStore, id: &SessionId) -> Result<String, String> {
    let session = store
        .get(id, Window::All)
        .await
        .map_err(|e| e.to_string())?;
    // Sorted: backends do not keep the order state keys were written in.
    let state: std::collections::BTreeMap<_, _> = session.state.iter().collect();
    Ok(format!(
        "{} {} {} {:?}",
        session.messages[0].body.content,
        session.messages[1].body.tool_calls[0].function.arguments,
        session.system_messages[0].body.content,
        state
    ))
}

/// The whole test for one backend: `raw` dumps everything the backend holds as text.
async fn check_backend<F, Fut>(backend: Arc<dyn SessionStore>, raw: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let id = SessionId::new(unique("enc"));
    let k1 = keyring(&[("k1", 1)]);
    let store = EncryptedStore::new(backend.clone(), k1.clone());
    write_secrets(&store, &id).await;
    let text = read_back(&store, &id).await.expect("reads back");
    assert_eq!(text.matches(SECRET).count(), 5, "{text}");
    let dump = raw().await;
    assert!(dump.contains("csai-enc:1:k1:"), "the data is sealed");
    assert!(!dump.contains("4111"), "plaintext in the backend: {dump}");

    let wrong = EncryptedStore::new(backend.clone(), keyring(&[("k1", 9)]));
    let error = read_back(&wrong, &id).await.unwrap_err();
    assert!(error.contains("does not decrypt"), "{error}");
    let missing = EncryptedStore::new(backend.clone(), keyring(&[("k9", 1)]));
    let error = read_back(&missing, &id).await.unwrap_err();
    assert!(error.contains("\"k1\", which is not configured"), "{error}");

    let rotated = encrypted::rotate(backend.clone(), keyring(&[("k2", 2), ("k1", 1)])).await;
    assert!(rotated.failures.is_empty(), "{:?}", rotated.failures);
    assert!(rotated.sessions >= 1);
    let only_k2 = EncryptedStore::new(backend.clone(), keyring(&[("k2", 2)]));
    assert_eq!(
        read_back(&only_k2, &id)
            .await
            .expect("k2 alone reads the session"),
        text
    );
    let session = backend.get(&id, Window::All).await.expect("raw session");
    assert!(
        session.messages[0]
            .body
            .content
            .starts_with("csai-enc:1:k2:")
    );
    assert!(
        session
            .state
            .values()
            .all(|v| v.as_str().is_some_and(|s| s.starts_with("csai-enc:1:k2:")))
    );
}

#[tokio::test]
async fn redis_holds_no_plaintext() {
    let prefix = format!("{}:", unique("enc-redis"));
    let url = required_env("CSAI_TEST_REDIS_URL");
    let backend = Arc::new(RedisStore::new(&common::redis_options(&url, &prefix)).expect("redis"));
    let raw = || async {
        let mut redis = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(keys.len() >= 4, "{keys:?}");
        let mut dump = String::new();
        for key in keys {
            let value: redis::Value = redis::cmd("DUMP")
                .arg(&key)
                .query_async(&mut redis)
                .await
                .unwrap();
            dump.push_str(&format!("{key} {value:?}\n"));
            for command in ["HGETALL", "LRANGE", "ZRANGE"] {
                let mut cmd = redis::cmd(command);
                cmd.arg(&key);
                if command != "HGETALL" {
                    cmd.arg(0).arg(-1);
                }
                if let Ok(values) = cmd.query_async::<Vec<String>>(&mut redis).await {
                    dump.push_str(&values.join("\n"));
                }
            }
        }
        dump
    };
    check_backend(backend, raw).await;
}

#[tokio::test]
async fn mongodb_holds_no_plaintext() {
    let database = unique("enc_mongo");
    let uri = required_env("CSAI_TEST_MONGO_URI");
    let backend = Arc::new(
        MongoStore::new(&MongoOptions {
            uri: uri.clone(),
            database: database.clone(),
            collection: "sessions".into(),
            pool_size: 8,
            timeout: Duration::from_secs(10),
            max_retries: 3,
        })
        .await
        .expect("mongo"),
    );
    let raw = || async {
        use futures::TryStreamExt;
        let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
        let db = client.database(&database);
        let mut dump = String::new();
        for name in ["sessions", "sessions_messages", "sessions_records"] {
            let documents: Vec<mongodb::bson::Document> = db
                .collection(name)
                .find(mongodb::bson::doc! {})
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            for document in documents {
                dump.push_str(&format!("{document}\n"));
            }
        }
        dump
    };
    check_backend(backend, raw).await;
}

#[tokio::test]
async fn dynamodb_holds_no_plaintext() {
    let table = unique("enc_dynamo");
    let endpoint = required_env("CSAI_TEST_DYNAMO_ENDPOINT");
    let backend = Arc::new(
        DynamoStore::new(&DynamoOptions {
            region: "us-east-1".into(),
            table: table.clone(),
            endpoint: Some(endpoint.clone()),
            create_table: true,
            timeout: Duration::from_secs(20),
            max_retries: 3,
        })
        .await
        .expect("dynamo"),
    );
    let raw = || async {
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
            .endpoint_url(&endpoint)
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .build();
        let items = aws_sdk_dynamodb::Client::from_conf(config)
            .scan()
            .table_name(&table)
            .send()
            .await
            .unwrap();
        format!("{:?}", items.items())
    };
    check_backend(backend, raw).await;
}

#[test]
fn rotate_keys_runs_from_the_command_line() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let prefix = format!("{}:", unique("enc-cli"));
    let url = required_env("CSAI_TEST_REDIS_URL");
    let id = SessionId::new(unique("enc-cli"));
    let options = common::redis_options(&url, &prefix);
    runtime.block_on(async {
        let backend = Arc::new(RedisStore::new(&options).unwrap());
        write_secrets(&EncryptedStore::new(backend, keyring(&[("k1", 1)])), &id).await;
    });
    let k = |byte: u8| base64::engine::general_purpose::STANDARD.encode([byte; 32]);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_csai-sidecar"))
        .arg("rotate-keys")
        .env("CSAI_STORAGE_TYPE", "redis")
        .env("CSAI_REDIS_ADDRESS", &url)
        .env("CSAI_REDIS_KEY_PREFIX", &prefix)
        .env("CSAI_ENCRYPTION_KEYS", format!("k2:{},k1:{}", k(2), k(1)))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("re-encrypted 1 sessions under key \"k2\""),
        "{stdout}"
    );
    assert!(!stdout.contains(&k(2)), "keys never show");
    runtime.block_on(async {
        let backend = Arc::new(RedisStore::new(&options).unwrap());
        let session = backend.get(&id, Window::All).await.unwrap();
        assert!(
            session.messages[0]
                .body
                .content
                .starts_with("csai-enc:1:k2:")
        );
    });
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_csai-sidecar"))
        .arg("config")
        .env("CSAI_ENCRYPTION_KEYS", "k1:c2hvcnQ=")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "a bad key stops the sidecar");
    assert!(!String::from_utf8_lossy(&bad.stderr).contains("c2hvcnQ="));
}
