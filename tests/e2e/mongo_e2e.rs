//! The sidecar on MongoDB (SecantusDB in tests), end to end: every RPC through the binary,
//! 64 concurrent appenders, a session larger than a MongoDB document, two sidecars
//! writing one session, indexes, and TTL removal by the server.

use crate::common::{
    SERVING, SidecarProcess, TestServer, concurrent_appenders_through_the_sidecar,
    exercise_every_rpc, large_session_round_trips, required_env, test_config, wait_for_status,
};
use csai_sidecar::domain::{Append, NewMessage, Role, SessionId, Window, WriteOptions};
use csai_sidecar::store::SessionStore;
use csai_sidecar::store::mongo::{MongoOptions, MongoStore};
use mongodb::bson::{Document, doc};
use std::sync::Arc;
use std::time::Duration;

fn options(database: &str) -> MongoOptions {
    MongoOptions {
        uri: required_env("CSAI_TEST_MONGO_URI"),
        database: database.into(),
        collection: "sessions".into(),
        pool_size: 16,
        timeout: Duration::from_secs(30),
        max_retries: 3,
    }
}

async fn server(database: &str) -> TestServer {
    let store = MongoStore::new(&options(database)).await.expect("store");
    let mut config = test_config();
    config.storage.shared.timeout = Duration::from_secs(30);
    TestServer::start_serving(config, Arc::new(store)).await
}

#[tokio::test]
async fn every_rpc_through_the_binary() {
    let (_sidecar, channel) = SidecarProcess::spawn(&[
        ("CSAI_STORAGE_TYPE", "mongo".into()),
        ("CSAI_MONGO_URI", required_env("CSAI_TEST_MONGO_URI")),
        ("CSAI_MONGO_DATABASE", "csai_e2e".into()),
    ])
    .await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    wait_for_status(&mut health, "csai.v1.SessionStore", SERVING).await;
    exercise_every_rpc(channel, "e2e-mongo").await;
}

#[tokio::test]
async fn sixty_four_concurrent_appenders_lose_nothing() {
    let server = server("csai_appenders").await;
    // 64 writers racing as on the other backends; 15 appends each (not 50): each
    // append costs the Python test server tens of milliseconds; the race is the same.
    concurrent_appenders_through_the_sidecar(&server, 64, 15).await;
}

#[tokio::test]
async fn a_session_larger_than_a_mongodb_document_round_trips() {
    let server = server("csai_large").await;
    large_session_round_trips(&server, 20 << 20).await;
}

/// Two stores stand for two sidecar replicas: their writes to one session meet only in
/// MongoDB's transactions, which must still lose nothing and keep each writer's order.
#[tokio::test]
async fn two_replicas_appending_to_one_session() {
    let first = Arc::new(
        MongoStore::new(&options("csai_replicas"))
            .await
            .expect("store"),
    );
    let second = Arc::new(
        MongoStore::new(&options("csai_replicas"))
            .await
            .expect("store"),
    );
    let id = SessionId::new(format!("replicas-{}", std::process::id()));
    let mut writers = Vec::new();
    for writer in 0..8 {
        let store = if writer % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        let id = id.clone();
        writers.push(tokio::spawn(async move {
            for n in 0..10 {
                store
                    .append(
                        &id,
                        Append {
                            messages: vec![NewMessage::text(Role::User, format!("{writer}:{n}"))],
                            request_id: None,
                            options: WriteOptions::ttl(Duration::from_secs(600)),
                        },
                    )
                    .await
                    .expect("append");
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    let session = first.get(&id, Window::All).await.expect("get");
    assert_eq!(session.messages.len(), 80);
    let mut next = [0; 8];
    for (i, message) in session.messages.iter().enumerate() {
        assert_eq!(message.seq, i as u64 + 1);
        let (writer, n) = message.body.content.split_once(':').expect("writer:n");
        let (writer, n): (usize, usize) = (writer.parse().unwrap(), n.parse().unwrap());
        assert_eq!(n, next[writer]);
        next[writer] += 1;
    }
}

/// The indexes exist, messages are real BSON documents, and once a session has expired
/// the server's TTL sweep removes its session document and its message buckets.
#[tokio::test]
async fn indexes_bson_layout_and_ttl_removal() {
    let store = MongoStore::new(&options("csai_layout"))
        .await
        .expect("store");
    let id = SessionId::new(format!("ttl-{}", std::process::id()));
    let mut message = NewMessage::text(Role::User, "expiring");
    message.metadata = serde_json::json!({"channel": "web", "score": 3})
        .as_object()
        .cloned()
        .expect("object");
    store
        .append(
            &id,
            Append {
                messages: vec![message],
                request_id: None,
                options: WriteOptions::ttl(Duration::from_secs(1)),
            },
        )
        .await
        .expect("append");

    let client = mongodb::Client::with_uri_str(required_env("CSAI_TEST_MONGO_URI"))
        .await
        .expect("client");
    let database = client.database("csai_layout");
    let sessions = database.collection::<Document>("sessions");
    let buckets = database.collection::<Document>("sessions_messages");

    let bucket = buckets
        .find_one(doc! {"sid": id.as_str()})
        .await
        .expect("find bucket")
        .expect("a bucket");
    let stored = bucket.get_array("msgs").expect("msgs")[0]
        .as_document()
        .expect("a BSON document");
    assert_eq!(stored.get_str("role"), Ok("user"));
    assert_eq!(stored.get_str("content"), Ok("expiring"));
    assert_eq!(
        stored
            .get_document("metadata")
            .expect("metadata is a document")
            .get_str("channel"),
        Ok("web")
    );

    for (collection, name) in [(&sessions, "sessions"), (&buckets, "sessions_messages")] {
        let names: Vec<String> = collection
            .list_index_names()
            .await
            .unwrap_or_else(|e| panic!("indexes of {name}: {e}"));
        assert!(
            names.iter().any(|n| n.starts_with("expire")),
            "{name}: {names:?}"
        );
    }

    // The session expires after 1 s, its buckets one TTL later (the horizon lead).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        store.get(&id, Window::All).await.is_err(),
        "expired data was returned"
    );
    client
        .database("admin")
        .run_command(doc! {"secantusAdmin.pruneTtl": 1})
        .await
        .expect("TTL sweep");
    let left_sessions = sessions
        .count_documents(doc! {"_id": id.as_str()})
        .await
        .expect("count");
    let left_buckets = buckets
        .count_documents(doc! {"sid": id.as_str()})
        .await
        .expect("count");
    assert_eq!(
        (left_sessions, left_buckets),
        (0, 0),
        "the TTL sweep must remove the whole session"
    );
}

/// Records are documents of `<collection>_records` with a TTL index on `expire` and the
/// index a time range reads.
#[tokio::test]
async fn records_have_a_ttl_index_and_a_range_index() {
    use csai_sidecar::records::{self, RecordStream};

    let store = MongoStore::new(&options("csai_records_layout"))
        .await
        .expect("store");
    let body = serde_json::json!({"query": "q"});
    let (id, _) = records::put(
        &store,
        &RecordStream::Learning,
        &body,
        std::time::SystemTime::now(),
        Duration::from_secs(600),
    )
    .await
    .expect("put");
    let client = mongodb::Client::with_uri_str(required_env("CSAI_TEST_MONGO_URI"))
        .await
        .expect("client");
    let collection = client
        .database("csai_records_layout")
        .collection::<Document>("sessions_records");
    let names = collection.list_index_names().await.expect("indexes");
    assert!(names.iter().any(|n| n.starts_with("expire")), "{names:?}");
    assert!(names.iter().any(|n| n == "s_1_r_1"), "{names:?}");
    let stored = collection
        .find_one(doc! {"r": &id})
        .await
        .expect("find")
        .expect("the record");
    assert_eq!(stored.get_str("s"), Ok("learning"));
    let expire = stored.get_datetime("expire").expect("expire is a date");
    let left = expire
        .to_system_time()
        .duration_since(std::time::SystemTime::now());
    assert!(left.is_ok_and(|d| d > Duration::from_secs(590)), "{expire}");
}
