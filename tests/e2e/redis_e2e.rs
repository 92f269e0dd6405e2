//! The sidecar on real Redis, end to end: every RPC through the binary (standalone and
//! Cluster), 64 concurrent appenders, and an outage with recovery.

use crate::common;

use crate::common::{
    NOT_SERVING, SERVING, SidecarProcess, TestServer, concurrent_appenders_through_the_sidecar,
    exercise_every_rpc, health_status, large_session_round_trips, required_env, test_config, user,
    wait_for_status,
};
use csai_sidecar::config::Config;
use csai_sidecar::grpc::pb;
use csai_sidecar::store::redis::{RedisOptions, RedisStore};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;

#[tokio::test]
async fn every_rpc_through_the_binary_on_standalone_redis() {
    let (_sidecar, channel) = SidecarProcess::spawn(&[
        ("CSAI_STORAGE_TYPE", "redis".into()),
        ("CSAI_REDIS_ADDRESS", required_env("CSAI_TEST_REDIS_URL")),
    ])
    .await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    wait_for_status(&mut health, "csai.v1.SessionStore", SERVING).await;
    exercise_every_rpc(channel.clone(), "e2e-redis").await;
    let stats = pb::session_store_client::SessionStoreClient::new(channel)
        .get_stats(pb::GetStatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.backend, "redis");
    assert!(
        stats.approximate_bytes > 0,
        "memory comes from Redis INFO: {stats:?}"
    );
}

#[tokio::test]
async fn every_rpc_through_the_binary_on_redis_cluster() {
    let (_sidecar, channel) = SidecarProcess::spawn(&[
        ("CSAI_STORAGE_TYPE", "redis".into()),
        (
            "CSAI_REDIS_CLUSTER_NODES",
            required_env("CSAI_TEST_REDIS_CLUSTER"),
        ),
    ])
    .await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    wait_for_status(&mut health, "csai.v1.SessionStore", SERVING).await;
    exercise_every_rpc(channel, "e2e-cluster").await;
}

/// rediss:// with the test CA and an ACL user: every RPC works through the binary.
#[tokio::test]
async fn every_rpc_over_tls_with_an_acl_user() {
    let (_sidecar, channel) = SidecarProcess::spawn(&[
        ("CSAI_STORAGE_TYPE", "redis".into()),
        (
            "CSAI_REDIS_ADDRESS",
            required_env("CSAI_TEST_REDIS_TLS_URL"),
        ),
        (
            "CSAI_REDIS_TLS_CA_FILE",
            required_env("CSAI_TEST_REDIS_TLS_CA"),
        ),
        (
            "CSAI_REDIS_USERNAME",
            required_env("CSAI_TEST_REDIS_TLS_USER"),
        ),
        (
            "CSAI_REDIS_PASSWORD",
            required_env("CSAI_TEST_REDIS_TLS_PASSWORD"),
        ),
    ])
    .await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    wait_for_status(&mut health, "csai.v1.SessionStore", SERVING).await;
    exercise_every_rpc(channel, "e2e-tls").await;
}

/// A wrong password or an untrusted certificate keeps the sidecar NOT_SERVING, and RPCs
/// say why with UNAVAILABLE instead of hanging.
#[tokio::test]
async fn wrong_credentials_or_untrusted_certificates_are_reported() {
    let tls_url = required_env("CSAI_TEST_REDIS_TLS_URL");
    let cases = [
        (
            "wrong password",
            vec![
                (
                    "CSAI_REDIS_TLS_CA_FILE",
                    required_env("CSAI_TEST_REDIS_TLS_CA"),
                ),
                (
                    "CSAI_REDIS_USERNAME",
                    required_env("CSAI_TEST_REDIS_TLS_USER"),
                ),
                ("CSAI_REDIS_PASSWORD", "not-the-password".to_string()),
            ],
        ),
        (
            "untrusted certificate",
            vec![
                (
                    "CSAI_REDIS_USERNAME",
                    required_env("CSAI_TEST_REDIS_TLS_USER"),
                ),
                (
                    "CSAI_REDIS_PASSWORD",
                    required_env("CSAI_TEST_REDIS_TLS_PASSWORD"),
                ),
            ],
        ),
    ];
    for (case, mut vars) in cases {
        vars.push(("CSAI_STORAGE_TYPE", "redis".into()));
        vars.push(("CSAI_REDIS_ADDRESS", tls_url.clone()));
        vars.push(("CSAI_TIMEOUT", "2s".into()));
        vars.push(("CSAI_MAX_RETRIES", "1".into()));
        let (_sidecar, channel) = SidecarProcess::spawn(&vars).await;
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            health_status(&mut health, "csai.v1.SessionStore").await,
            NOT_SERVING,
            "{case}"
        );
        let started = Instant::now();
        let status = pb::session_store_client::SessionStoreClient::new(channel)
            .get_session(pb::GetSessionRequest {
                session_id: "any".into(),
                window: None,
                ..Default::default()
            })
            .await
            .expect_err(case);
        assert!(
            matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded),
            "{case}: {status:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{case}: took {:?}",
            started.elapsed()
        );
    }
}

fn redis_options(address: String) -> RedisOptions {
    // Short timeout and few retries: these tests stop the server on purpose.
    RedisOptions {
        timeout: Duration::from_secs(1),
        max_retries: 2,
        ..common::redis_options(address, "csai-e2e:")
    }
}

#[tokio::test]
async fn sixty_four_concurrent_appenders_lose_nothing() {
    let store =
        RedisStore::new(&redis_options(required_env("CSAI_TEST_REDIS_URL"))).expect("store");
    let server = TestServer::start_serving(test_config(), Arc::new(store)).await;
    concurrent_appenders_through_the_sidecar(&server, 64, 50).await;
}

#[tokio::test]
async fn a_session_larger_than_a_mongodb_document_round_trips() {
    let store =
        RedisStore::new(&redis_options(required_env("CSAI_TEST_REDIS_URL"))).expect("store");
    let server = TestServer::start_serving(test_config(), Arc::new(store)).await;
    large_session_round_trips(&server, 20 << 20).await;
}

async fn append_one(server: &TestServer, n: usize) -> Result<(), tonic::Status> {
    let mut client = server.sessions().await;
    client
        .append_messages(pb::AppendMessagesRequest {
            session_id: format!("outage-{}", n % 8),
            messages: vec![user("under load")],
            ..Default::default()
        })
        .await
        .map(drop)
}

/// Redis stops under load: RPCs fail fast with UNAVAILABLE or DEADLINE_EXCEEDED, health
/// turns NOT_SERVING within two intervals; Redis returns: SERVING within two intervals
/// and appends work again, with no restart of the sidecar.
#[tokio::test]
async fn redis_outage_under_load_and_recovery() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut redis = common::OwnRedis::start(port, None);
    let interval = Duration::from_secs(1);
    let mut config = Config {
        health_interval: interval,
        ..test_config()
    };
    config.storage.shared.timeout = Duration::from_secs(1);
    let store =
        RedisStore::new(&redis_options(format!("127.0.0.1:{}", redis.port))).expect("store");
    let server = Arc::new(TestServer::start_serving(config.clone(), Arc::new(store)).await);
    let mut health = server.health().await;
    wait_for_status(&mut health, "csai.v1.SessionStore", SERVING).await;

    // Load: 8 writers appending in a loop until told to stop; each failure is recorded
    // with its code and how long the RPC took.
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut writers = Vec::new();
    for writer in 0..8 {
        let (server, running) = (server.clone(), running.clone());
        writers.push(tokio::spawn(async move {
            let (mut ok, mut failures) = (0usize, Vec::new());
            let mut n = writer;
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                match append_one(&server, n).await {
                    Ok(()) => ok += 1,
                    Err(status) => failures.push((status.code(), started.elapsed())),
                }
                n += 8;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failures)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let stopped_at = Instant::now();
    redis.stop();
    wait_for_status(&mut health, "csai.v1.SessionStore", NOT_SERVING).await;
    let to_not_serving = stopped_at.elapsed();
    // Liveness (`""`) stays SERVING: the sidecar recovers by itself, a restart would not help.
    assert_eq!(health_status(&mut health, "").await, SERVING);
    assert_eq!(
        health_status(&mut health, "csai.v1.Chat").await,
        NOT_SERVING
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let restarted_at = Instant::now();
    let _redis_again = common::OwnRedis::start(port, None);
    wait_for_status(&mut health, "csai.v1.SessionStore", SERVING).await;
    let to_serving = restarted_at.elapsed();
    assert_eq!(health_status(&mut health, "").await, SERVING);
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.store(false, std::sync::atomic::Ordering::Relaxed);

    let (mut ok, mut failures) = (0, Vec::new());
    for writer in writers {
        let (writer_ok, writer_failures) = writer.await.expect("writer");
        ok += writer_ok;
        failures.extend(writer_failures);
    }
    eprintln!(
        "outage: {ok} appends ok, {} failed; NOT_SERVING after {to_not_serving:?}, SERVING again after {to_serving:?}",
        failures.len()
    );
    assert!(
        !failures.is_empty(),
        "the outage must be visible to callers"
    );
    for (code, took) in &failures {
        assert!(
            matches!(code, Code::Unavailable | Code::DeadlineExceeded),
            "an outage must be UNAVAILABLE or DEADLINE_EXCEEDED, got {code:?}"
        );
        assert!(
            *took < config.storage.shared.timeout + Duration::from_millis(500),
            "an RPC hung for {took:?} (timeout {:?})",
            config.storage.shared.timeout
        );
    }
    assert!(
        to_not_serving <= 2 * interval,
        "NOT_SERVING after {to_not_serving:?}"
    );
    assert!(
        to_serving <= 2 * interval,
        "SERVING again after {to_serving:?}"
    );
    append_one(&server, 0)
        .await
        .expect("appends work again after recovery");
}

/// The database number and key prefix are honoured, every key of a session carries the
/// session's expiry, and the scripts are reloaded after Redis forgets them (NOSCRIPT).
#[tokio::test]
async fn layout_database_prefix_expiry_and_script_reload() {
    use csai_sidecar::domain::{
        Append, NewMessage, Role, SessionId, StateUpdate, Window, WriteOptions,
    };
    use csai_sidecar::store::SessionStore;
    use redis::AsyncCommands;

    let url = required_env("CSAI_TEST_REDIS_URL");
    let mut options = redis_options(url.clone());
    options.db = 5;
    options.key_prefix = "layout-test:".into();
    let store = RedisStore::new(&options).expect("store");
    let id = SessionId::new(format!("layout-{}", std::process::id()));
    let ttl = Duration::from_secs(600);
    store
        .append(
            &id,
            Append {
                messages: vec![NewMessage::text(Role::User, "hi")],
                request_id: Some("r1".into()),
                options: WriteOptions::ttl(ttl),
            },
        )
        .await
        .expect("append");
    let state = serde_json::json!({"step": 1})
        .as_object()
        .cloned()
        .expect("object");
    store
        .update_state(&id, StateUpdate::Replace(state), WriteOptions::ttl(ttl))
        .await
        .expect("state");

    let client = redis::Client::open(format!("{url}/5")).expect("client");
    let mut db5 = client
        .get_multiplexed_async_connection()
        .await
        .expect("db 5");
    for suffix in ["meta", "msgs", "reqs", "state"] {
        let key = format!("layout-test:{{{}}}:{suffix}", id.as_str());
        let pttl: i64 = db5.pttl(&key).await.expect("pttl");
        assert!(
            pttl > 590_000 && pttl <= 600_000,
            "{key} must expire with the session, PTTL {pttl}"
        );
    }
    let client0 = redis::Client::open(format!("{url}/0")).expect("client");
    let mut db0 = client0
        .get_multiplexed_async_connection()
        .await
        .expect("db 0");
    let in_db0: bool = db0
        .exists(format!("layout-test:{{{}}}:meta", id.as_str()))
        .await
        .expect("exists");
    assert!(!in_db0, "the session must live in database 5 only");

    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut db5)
        .await
        .expect("SCRIPT FLUSH");
    let session = store
        .get(&id, Window::All)
        .await
        .expect("get after SCRIPT FLUSH");
    assert_eq!(session.messages.len(), 1);
    assert!(store.delete(&id, None).await.expect("delete"));
    let left: Vec<String> = db5
        .keys(format!("layout-test:{{{}}}:*", id.as_str()))
        .await
        .expect("keys");
    assert!(left.is_empty(), "delete must remove every key: {left:?}");
}

/// Records live in one sorted set per stream and day, which expires with its
/// longest-lived record (the retention).
#[tokio::test]
async fn records_are_per_day_sorted_sets_that_expire() {
    use csai_sidecar::records::{self, RecordStream, SecurityLog};
    use redis::AsyncCommands;

    let url = required_env("CSAI_TEST_REDIS_URL");
    let mut options = redis_options(url.clone());
    options.key_prefix = "records-test:".into();
    let store = RedisStore::new(&options).expect("store");
    let user = format!("u{{{}}}", std::process::id());
    let stream = RecordStream::Security { user: user.clone() };
    let log = SecurityLog {
        id: String::new(),
        user_id: user.clone(),
        session_id: String::new(),
        message_hash: records::message_hash("hi"),
        spam_score: 0.0,
        allowed: true,
        reason: String::new(),
    };
    let (id, time) = records::put(
        &store,
        &stream,
        &log,
        std::time::SystemTime::now(),
        Duration::from_secs(600),
    )
    .await
    .expect("put");
    let day = csai_sidecar::store::records::day_name(csai_sidecar::store::records::day_of(time));
    let key = format!(
        "records-test:{{rec:security:u%7B{}%7D:{day}}}",
        std::process::id()
    );
    let mut redis = redis::Client::open(url)
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let kind: String = redis::cmd("TYPE")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .expect("TYPE");
    assert_eq!(kind, "zset", "{key}");
    let members: Vec<String> = redis.zrange(&key, 0, -1).await.expect("ZRANGE");
    assert_eq!(members.len(), 1);
    assert!(members[0].starts_with(&format!("{id}|")), "{}", members[0]);
    let pttl: i64 = redis.pttl(&key).await.expect("PTTL");
    assert!(pttl > 590_000 && pttl <= 600_000, "PTTL {pttl}");
}
