//! Encryption at rest on memory, Redis, MongoDB and DynamoDB: the raw data holds no
//! plaintext, a sealed value opens only where it was sealed, unsealed values are refused,
//! a wrong or missing key is a clear error, and a key rotation re-encrypts everything.

use crate::common;

use crate::common::required_env;
use base64::Engine;
use csai_sidecar::domain::{
    Append, FunctionCall, NewMessage, Role, SessionId, StateUpdate, ToolCall, Window, WriteOptions,
};
use csai_sidecar::operations;
use csai_sidecar::records::{self, RecordRange, RecordStream};
use csai_sidecar::store::SessionStore;
use csai_sidecar::store::decorators::encrypted::{EncryptedStore, Keyring};
use csai_sidecar::store::dynamo::{DynamoOptions, DynamoStore};
use csai_sidecar::store::memory::{MemoryLimits, MemoryStore};
use csai_sidecar::store::mongo::{MongoOptions, MongoStore};
use csai_sidecar::store::redis::RedisStore;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Every value the bot writes below contains this, so the raw dump must not. Not digits
/// alone: "4111" turned up inside a stored millisecond timestamp.
const MARK: &str = "41x11";
const SECRET: &str = "card 41x11-1111-1111-1111";

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
    csai_sidecar::conformance::unique_id(name)
        .as_str()
        .replace(['-', ':'], "_")
}

fn ttl() -> WriteOptions {
    WriteOptions::ttl(Duration::from_secs(600))
}

fn security_stream(id: &SessionId) -> RecordStream {
    RecordStream::Security {
        user: id.as_str().into(),
    }
}

/// Writes the secret into every field the bot can fill: content, name, metadata,
/// reasoning, tool call id, tool name and arguments, system messages, state keys and
/// values, a record.
async fn write_secrets(store: &dyn SessionStore, id: &SessionId) {
    let mut user = NewMessage::text(Role::User, SECRET);
    user.name = Some(format!("customer_{MARK}"));
    user.metadata = serde_json::json!({ "phone": SECRET })
        .as_object()
        .cloned()
        .unwrap();
    let mut calling = NewMessage::text(Role::Assistant, format!("checking {SECRET}"));
    calling.reasoning_content = Some(format!("the user gave {SECRET}"));
    calling.tool_calls = vec![ToolCall {
        id: format!("call_{MARK}"),
        kind: "function".into(),
        function: FunctionCall {
            name: format!("charge_{MARK}"),
            arguments: format!("{{\"card\":\"{SECRET}\"}}"),
        },
        index: 0,
    }];
    let mut result = NewMessage::text(Role::Tool, format!("charged {SECRET}"));
    result.tool_call_id = Some(format!("call_{MARK}"));
    store
        .append(
            id,
            Append {
                messages: vec![user, calling, result],
                request_id: None,
                options: ttl(),
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
            ttl(),
        )
        .await
        .expect("system");
    let state = serde_json::json!({"card": SECRET, "nested": {"again": SECRET}, "key_41x11": 1})
        .as_object()
        .cloned()
        .unwrap();
    store
        .update_state(id, StateUpdate::Replace(state), ttl())
        .await
        .expect("state");
    let merged = serde_json::json!({"merged_41x11": SECRET, "nested": null})
        .as_object()
        .cloned()
        .unwrap();
    store
        .update_state(id, StateUpdate::Merge(merged), ttl())
        .await
        .expect("merge");
    let log = serde_json::json!({"reason": SECRET});
    records::put(
        store,
        &security_stream(id),
        &log,
        std::time::SystemTime::now(),
        Duration::from_secs(600),
    )
    .await
    .expect("record");
}

/// Everything `write_secrets` wrote, as text (state sorted: backends do not keep the
/// order keys were written in).
async fn read_back(store: &dyn SessionStore, id: &SessionId) -> Result<String, String> {
    let session = store
        .get(id, Window::All)
        .await
        .map_err(|e| e.to_string())?;
    let state: std::collections::BTreeMap<_, _> = session.state.iter().collect();
    let bodies = |list: &[csai_sidecar::domain::Message]| {
        list.iter().map(|m| m.body.clone()).collect::<Vec<_>>()
    };
    let records = all_records(store, id).await?;
    Ok(format!(
        "{:?} {:?} {:?} {:?}",
        bodies(&session.messages),
        bodies(&session.system_messages),
        state,
        records
    ))
}

async fn all_records(store: &dyn SessionStore, id: &SessionId) -> Result<Vec<String>, String> {
    let range = RecordRange {
        from: SystemTime::now() - Duration::from_secs(600),
        to: SystemTime::now() + Duration::from_secs(60),
        after: None,
        limit: 100,
    };
    let records = store
        .list_records(&security_stream(id), &range)
        .await
        .map_err(|e| e.to_string())?;
    Ok(records.into_iter().map(|r| r.body).collect())
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
    for expected in [
        "customer_41x11",
        "\"phone\": String(\"card 41x11",
        "call_41x11",
        "charge_41x11",
        "the user gave card 41x11",
        "\"key_41x11\"",
        "\"merged_41x11\"",
        "never repeat card 41x11",
        "{\\\"reason\\\":\\\"card 41x11",
    ] {
        assert!(text.contains(expected), "{expected} missing from {text}");
    }
    assert!(
        !text.contains("nested"),
        "a merged null removes the key: {text}"
    );
    let dump = raw().await;
    assert!(dump.contains("csai-enc:2:k1:"), "the data is sealed");
    assert!(!dump.contains(MARK), "plaintext in the backend: {dump}");

    let wrong = EncryptedStore::new(backend.clone(), keyring(&[("k1", 9)]));
    let error = read_back(&wrong, &id).await.unwrap_err();
    assert!(error.contains("does not decrypt"), "{error}");
    let missing = EncryptedStore::new(backend.clone(), keyring(&[("k9", 1)]));
    let error = read_back(&missing, &id).await.unwrap_err();
    assert!(error.contains("\"k1\", which is not configured"), "{error}");

    let rotated =
        operations::rotate_keys(backend.clone(), keyring(&[("k2", 2), ("k1", 1)]), false).await;
    assert!(rotated.failures.is_empty(), "{:?}", rotated.failures);
    assert!(rotated.sessions >= 1);
    let k2 = keyring(&[("k2", 2)]);
    let only_k2 = EncryptedStore::new(backend.clone(), k2.clone());
    let session = backend.get(&id, Window::All).await.expect("raw session");
    assert!(
        session.messages[0]
            .body
            .content
            .starts_with("csai-enc:2:k2:")
    );
    assert!(
        session
            .state
            .values()
            .all(|v| v.as_str().is_some_and(|s| s.starts_with("csai-enc:2:k2:"))),
        "{:?}",
        session.state
    );
    // Records are not rewritten: they stay readable while k1 is configured.
    let both = EncryptedStore::new(backend.clone(), keyring(&[("k2", 2), ("k1", 1)]));
    assert_eq!(read_back(&both, &id).await.expect("k2 and k1"), text);
    let rotated = only_k2
        .get(&id, Window::All)
        .await
        .expect("k2 alone reads it");
    let original = both.get(&id, Window::All).await.unwrap();
    assert_eq!(rotated.messages, original.messages);
    assert_eq!(rotated.state, original.state);

    check_binding(backend, k2).await;
}

fn append(messages: Vec<NewMessage>) -> Append {
    Append {
        messages,
        request_id: None,
        options: ttl(),
    }
}

/// Someone with write access to the raw store moves sealed values to where they do not
/// belong, or writes plaintext: every such read fails, and only the explicit migration
/// path seals plaintext.
async fn check_binding(backend: Arc<dyn SessionStore>, keys: Arc<Keyring>) {
    let store = EncryptedStore::new(backend.clone(), keys.clone());
    let source = SessionId::new(unique("enc-source"));
    write_secrets(&store, &source).await;
    let raw = backend.get(&source, Window::All).await.expect("raw source");
    let victim = || async {
        let id = SessionId::new(unique("enc-victim"));
        store
            .append(&id, append(vec![NewMessage::text(Role::User, "mine")]))
            .await
            .expect("victim");
        id
    };
    let raw_append = |id: SessionId, message: NewMessage| {
        let backend = backend.clone();
        async move {
            backend
                .append(&id, append(vec![message]))
                .await
                .expect("raw append");
            id
        }
    };
    let expect_refused = |error: String, why: &str| {
        assert!(error.contains(why), "{error}");
    };

    // A message of one session copied into another.
    let other = raw_append(victim().await, NewMessage::copy_of(&raw.messages[0])).await;
    expect_refused(
        read_back(&store, &other).await.unwrap_err(),
        "does not decrypt",
    );
    // A system message moved into the messages list of its own session.
    let moved = raw_append(source.clone(), NewMessage::copy_of(&raw.system_messages[0])).await;
    expect_refused(
        read_back(&store, &moved).await.unwrap_err(),
        "does not decrypt",
    );
    // A state entry copied into another session.
    let stolen = victim().await;
    backend
        .update_state(&stolen, StateUpdate::Merge(raw.state.clone()), ttl())
        .await
        .expect("raw state");
    expect_refused(
        read_back(&store, &stolen).await.unwrap_err(),
        "does not decrypt",
    );
    // A record copied into another stream.
    let records_of = |id: SessionId| {
        let backend = backend.clone();
        async move {
            let range = RecordRange {
                from: SystemTime::now() - Duration::from_secs(600),
                to: SystemTime::now() + Duration::from_secs(60),
                after: None,
                limit: 100,
            };
            backend
                .list_records(&security_stream(&id), &range)
                .await
                .expect("raw records")
        }
    };
    let record = records_of(source.clone()).await.remove(0);
    let forged = victim().await;
    backend
        .put_record(&security_stream(&forged), record)
        .await
        .expect("raw record");
    let error = all_records(&store, &forged).await.unwrap_err();
    expect_refused(error, "does not decrypt");

    // Plaintext written around the decorator is refused, not passed off as sealed data.
    let injected = raw_append(victim().await, NewMessage::text(Role::User, "injected")).await;
    expect_refused(
        read_back(&store, &injected).await.unwrap_err(),
        "is not sealed",
    );
    let plain_state = victim().await;
    let plain = serde_json::json!({"plain": "value"})
        .as_object()
        .cloned()
        .unwrap();
    backend
        .update_state(&plain_state, StateUpdate::Merge(plain), ttl())
        .await
        .expect("raw state");
    expect_refused(
        read_back(&store, &plain_state).await.unwrap_err(),
        "is not sealed",
    );

    // rotate-keys seals plaintext only when asked; moved values stay failures.
    let strict = operations::rotate_keys(backend.clone(), keys.clone(), false).await;
    let failed = |rotation: &operations::Rotation, id: &SessionId| {
        rotation.failures.iter().any(|f| f.contains(id.as_str()))
    };
    assert!(
        failed(&strict, &injected) && failed(&strict, &plain_state),
        "{strict:?}"
    );
    assert!(
        strict
            .failures
            .iter()
            .any(|f| f.contains("--accept-unsealed"))
    );
    let sealing = operations::rotate_keys(backend.clone(), keys.clone(), true).await;
    assert!(
        !failed(&sealing, &injected) && !failed(&sealing, &plain_state),
        "{sealing:?}"
    );
    for attacked in [&other, &moved, &stolen] {
        assert!(failed(&sealing, attacked), "{attacked:?}: {sealing:?}");
    }
    let session = store.get(&injected, Window::All).await.expect("sealed now");
    assert_eq!(session.messages[1].body.content, "injected");
    let session = store
        .get(&plain_state, Window::All)
        .await
        .expect("sealed now");
    assert_eq!(session.state["plain"], "value");
    let raw = backend.get(&injected, Window::All).await.unwrap();
    assert!(raw.messages[1].body.content.starts_with("csai-enc:2:"));
}

#[tokio::test]
async fn memory_holds_no_plaintext() {
    let backend = Arc::new(MemoryStore::new(MemoryLimits::default()));
    let raw = {
        let backend = backend.clone();
        move || {
            let backend = backend.clone();
            async move {
                let mut dump = String::new();
                let page = backend
                    .list(csai_sidecar::domain::ListQuery {
                        prefix: String::new(),
                        page_size: 1000,
                        page_token: None,
                    })
                    .await
                    .unwrap();
                for summary in page.sessions {
                    let session = backend.get(&summary.id, Window::All).await.unwrap();
                    dump.push_str(&format!("{session:?}\n"));
                    dump.push_str(&format!(
                        "{:?}\n",
                        all_records(backend.as_ref(), &summary.id).await.unwrap()
                    ));
                }
                dump
            }
        }
    };
    check_backend(backend, raw).await;
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
    // One session sealed under k1, one written in plaintext before encryption was on.
    let plain = SessionId::new(unique("enc-cli-plain"));
    runtime.block_on(async {
        let backend = Arc::new(RedisStore::new(&options).unwrap());
        write_secrets(
            &EncryptedStore::new(backend.clone(), keyring(&[("k1", 1)])),
            &id,
        )
        .await;
        backend
            .append(
                &plain,
                append(vec![NewMessage::text(Role::User, "from before")]),
            )
            .await
            .unwrap();
    });
    let k = |byte: u8| base64::engine::general_purpose::STANDARD.encode([byte; 32]);
    let rotate_keys = |flags: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_csai-sidecar"))
            .arg("rotate-keys")
            .args(flags)
            .env("CSAI_STORAGE_TYPE", "redis")
            .env("CSAI_REDIS_ADDRESS", &url)
            .env("CSAI_REDIS_KEY_PREFIX", &prefix)
            .env("CSAI_ENCRYPTION_KEYS", format!("k2:{},k1:{}", k(2), k(1)))
            .output()
            .unwrap()
    };
    let strict = rotate_keys(&[]);
    let stderr = String::from_utf8_lossy(&strict.stderr);
    assert_eq!(strict.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("re-encrypted 1 sessions") && stderr.contains("--accept-unsealed"),
        "the plaintext session is a failure that names the way out: {stderr}"
    );
    let output = rotate_keys(&["--accept-unsealed"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("re-encrypted 2 sessions under key \"k2\""),
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
                .starts_with("csai-enc:2:k2:")
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
