//! `migrate` from CS-AI's Redis layout, written here exactly as the Go library writes it,
//! into every backend; idempotent re-runs, dry runs, and the command itself.

use crate::common;

use crate::common::required_env;
use csai_sidecar::cs_ai::{self, Options};
use csai_sidecar::domain::{Role, SessionId, Window};
use csai_sidecar::records::{self, LearningRecord, RecordStream, SecurityLog};
use csai_sidecar::store::dynamo::{DynamoOptions, DynamoStore};
use csai_sidecar::store::memory::{MemoryLimits, MemoryStore};
use csai_sidecar::store::mongo::{MongoOptions, MongoStore};
use csai_sidecar::store::redis::RedisStore;
use csai_sidecar::store::{SessionStore, StoreError};
use redis::AsyncCommands;
use serde_json::json;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const DAY: Duration = Duration::from_secs(86_400);

/// What the test wrote in CS-AI's layout.
struct Seeded {
    url: String,
    sessions: [String; 2],
    user: String,
    learning_times: Vec<SystemTime>,
    /// In every learning query, since the learning stream is shared by all runs.
    run: u128,
}

/// Go's `time.Time` JSON: RFC 3339 with nanoseconds and the zone offset (+07:00 here).
fn go_time(time: SystemTime) -> String {
    let local = time + Duration::from_secs(7 * 3600);
    let text = humantime::format_rfc3339_nanos(local).to_string();
    format!("{}+07:00", text.trim_end_matches('Z'))
}

/// Writes two sessions, learning data and security logs into Redis database `db`, as
/// CS-AI's RedisStorageProvider does (SET with TTL, RPUSH per day).
async fn seed(db: u32) -> Seeded {
    let url = format!("{}/{db}", required_env("CSAI_TEST_REDIS_URL"));
    let mut redis = redis::Client::open(url.as_str())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let _: () = redis::cmd("FLUSHDB")
        .query_async(&mut redis)
        .await
        .expect("FLUSHDB");
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let sessions = [format!("cs-ai-{run}-a"), format!("cs-ai-{run}-b")];
    let conversation = json!([
        {"content": "Where is order 7?", "id": 1, "name": "Budi", "role": "user", "tool_calls": null, "tool_call_id": ""},
        {"content": "", "id": 2, "name": "", "role": "assistant", "tool_call_id": "", "model": "deepseek-chat",
         "tool_calls": [{"index": 0, "id": "call_0", "type": "function", "function": {"name": "lookup_order", "arguments": "{\"order\":7}"}}],
         "usage": {"prompt_tokens": 120, "completion_tokens": 20, "total_tokens": 140, "prompt_cache_hit_tokens": 64,
                   "prompt_tokens_details": {"cached_tokens": 64}, "prompt_cache_miss_tokens": 56}},
        {"content": "{\"status\":\"shipped\"}", "content_map": {"status": "shipped"}, "id": 3, "name": "", "role": "tool",
         "tool_calls": null, "tool_call_id": "call_0"},
        {"content": "Order 7 has shipped.", "id": 4, "name": "", "role": "assistant", "tool_calls": null, "tool_call_id": ""}
    ]);
    let system = json!([{"content": "You are a support bot.", "name": "", "role": "system", "tool_calls": null, "tool_call_id": ""}]);
    let _: () = redis
        .set_ex(
            format!("ai:session:{}", sessions[0]),
            conversation.to_string(),
            3600,
        )
        .await
        .unwrap();
    let _: () = redis
        .set_ex(
            format!("ai:system:{}", sessions[0]),
            system.to_string(),
            3600,
        )
        .await
        .unwrap();
    let _: () = redis
        .set_ex(
            format!("ai:state:{}", sessions[0]),
            json!({"step": "tracking", "order": 7}).to_string(),
            3600,
        )
        .await
        .unwrap();
    // A session with only a state, and no TTL (the default applies).
    let _: () = redis
        .set(
            format!("ai:state:{}", sessions[1]),
            json!({"lang": "id"}).to_string(),
        )
        .await
        .unwrap();

    let base = SystemTime::now() - DAY * 5 + Duration::from_micros((run % 3_600_000_000) as u64);
    let learning_times: Vec<SystemTime> = (0..3u32)
        .map(|i| base + DAY * i + Duration::from_secs(60))
        .collect();
    for (i, time) in learning_times.iter().enumerate() {
        let date = &humantime::format_rfc3339(*time).to_string()[..10];
        let item = json!({"query": format!("q{i} {run}"), "response": format!("a{i}"), "tools": ["lookup_order"],
                          "context": {"channel": "web"}, "timestamp": go_time(*time), "feedback": 1 - i as i64});
        let _: () = redis
            .rpush(format!("ai:learning:{date}"), item.to_string())
            .await
            .unwrap();
    }
    let old = SystemTime::now() - DAY * 40;
    let old_item = json!({"query": "too old", "response": "", "tools": [], "context": {}, "timestamp": go_time(old), "feedback": 0});
    let _: () = redis
        .rpush("ai:learning:2000-01-01", old_item.to_string())
        .await
        .unwrap();

    let user = format!("user:{run}");
    for (i, allowed) in [true, false].into_iter().enumerate() {
        let time = base + Duration::from_secs(600 * i as u64);
        let date = &humantime::format_rfc3339(time).to_string()[..10];
        let log = json!({"SessionID": sessions[0], "UserID": user, "MessageHash": format!("{i:064x}"),
                         "Timestamp": go_time(time), "SpamScore": 0.25 * i as f64, "Allowed": allowed,
                         "Error": if allowed { "" } else { "rate limit: per-minute limit exceeded (10 requests)" }});
        let _: () = redis
            .rpush(format!("ai:security:{user}:{date}"), log.to_string())
            .await
            .unwrap();
    }
    Seeded {
        url,
        sessions,
        user,
        learning_times,
        run,
    }
}

fn options(dry_run: bool) -> Options {
    Options {
        dry_run,
        default_ttl: Duration::from_secs(12 * 3600),
        record_retention: DAY * 30,
        limits: crate::common::test_config().limits,
    }
}

async fn check(store: &dyn SessionStore, seeded: &Seeded) {
    let first = store
        .get(&SessionId::new(seeded.sessions[0].as_str()), Window::All)
        .await
        .expect("the first session");
    let roles: Vec<Role> = first.messages.iter().map(|m| m.body.role).collect();
    assert_eq!(
        roles,
        [Role::User, Role::Assistant, Role::Tool, Role::Assistant]
    );
    let seqs: Vec<u64> = first.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    assert_eq!(first.messages[0].body.name.as_deref(), Some("Budi"));
    assert_eq!(first.messages[1].body.name, None);
    let call = &first.messages[1].body.tool_calls[0];
    assert_eq!(
        (
            call.id.as_str(),
            call.function.name.as_str(),
            call.function.arguments.as_str()
        ),
        ("call_0", "lookup_order", "{\"order\":7}")
    );
    let usage = first.messages[1].body.usage.expect("usage");
    assert_eq!((usage.total_tokens, usage.cached_tokens), (140, 64));
    assert_eq!(
        first.messages[2].body.tool_call_id.as_deref(),
        Some("call_0")
    );
    assert_eq!(first.messages[3].body.content, "Order 7 has shipped.");
    assert_eq!(
        first.system_messages[0].body.content,
        "You are a support bot."
    );
    assert_eq!(first.state.get("order"), Some(&json!(7)));
    let left = first
        .expire_time
        .duration_since(SystemTime::now())
        .expect("live");
    assert!(
        left > Duration::from_secs(3500) && left <= Duration::from_secs(3600),
        "{left:?}"
    );

    let second = store
        .get(&SessionId::new(seeded.sessions[1].as_str()), Window::All)
        .await
        .expect("the state-only session");
    assert!(second.messages.is_empty());
    assert_eq!(second.state.get("lang"), Some(&json!("id")));
    let left = second
        .expire_time
        .duration_since(SystemTime::now())
        .expect("live");
    assert!(
        left > Duration::from_secs(11 * 3600),
        "the default TTL: {left:?}"
    );

    let from = seeded.learning_times[0];
    let to = *seeded.learning_times.last().unwrap() + Duration::from_micros(1);
    let page: records::Page<LearningRecord> =
        records::list(store, &RecordStream::Learning, from, to, 100, None)
            .await
            .expect("learning");
    let marker = format!(" {}", seeded.run);
    let ours: Vec<&(LearningRecord, SystemTime)> = page
        .records
        .iter()
        .filter(|(r, _)| r.query.ends_with(&marker))
        .collect();
    let learned: Vec<(&str, f64)> = ours
        .iter()
        .map(|(r, _)| (r.query.trim_end_matches(&marker), r.feedback_score))
        .collect();
    assert_eq!(
        learned,
        [("q0", 1.0), ("q1", 0.0), ("q2", -1.0)],
        "each record exactly once"
    );
    let times: Vec<u128> = ours
        .iter()
        .map(|(_, t)| t.duration_since(UNIX_EPOCH).unwrap().as_micros())
        .collect();
    let expected: Vec<u128> = seeded
        .learning_times
        .iter()
        .map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_micros())
        .collect();
    assert_eq!(times, expected, "each record keeps CS-AI's timestamp");

    let logs: records::Page<SecurityLog> = records::list(
        store,
        &RecordStream::Security {
            user: seeded.user.clone(),
        },
        SystemTime::now() - DAY * 30,
        SystemTime::now(),
        100,
        None,
    )
    .await
    .expect("security logs");
    let decisions: Vec<(bool, f64)> = logs
        .records
        .iter()
        .map(|(l, _)| (l.allowed, l.spam_score))
        .collect();
    assert_eq!(decisions, [(true, 0.0), (false, 0.25)]);
    assert!(logs.records[1].0.reason.contains("per-minute"));
    assert_eq!(logs.records[0].0.session_id, seeded.sessions[0]);
}

/// Dry run writes nothing; the migration copies everything; a re-run changes nothing.
async fn migrate_into(store: &dyn SessionStore, db: u32) {
    let seeded = seed(db).await;
    let dry = cs_ai::copy_from_redis(&seeded.url, store, &options(true))
        .await
        .expect("dry run");
    assert_eq!(
        (
            dry.sessions,
            dry.messages,
            dry.learning_records,
            dry.security_logs
        ),
        (2, 4, 3, 2)
    );
    let absent = store
        .get(&SessionId::new(seeded.sessions[0].as_str()), Window::All)
        .await;
    assert!(
        matches!(absent, Err(StoreError::NotFound(_))),
        "a dry run writes nothing"
    );

    let summary = cs_ai::copy_from_redis(&seeded.url, store, &options(false))
        .await
        .expect("migrate");
    assert_eq!(
        (
            summary.sessions,
            summary.messages,
            summary.learning_records,
            summary.security_logs,
            summary.expired_records
        ),
        (2, 4, 3, 2, 1)
    );
    assert!(summary.failures.is_empty(), "{summary}");
    check(store, &seeded).await;

    let again = cs_ai::copy_from_redis(&seeded.url, store, &options(false))
        .await
        .expect("re-run");
    assert_eq!(again, summary);
    check(store, &seeded).await;
}

#[tokio::test]
async fn into_memory() {
    migrate_into(&MemoryStore::new(MemoryLimits::default()), 10).await;
}

#[tokio::test]
async fn into_redis() {
    let store = RedisStore::new(&common::redis_options(
        required_env("CSAI_TEST_REDIS_URL"),
        "csai-migrated:",
    ))
    .expect("redis store");
    migrate_into(&store, 11).await;
}

#[tokio::test]
async fn into_mongo() {
    let store = MongoStore::new(&MongoOptions {
        uri: required_env("CSAI_TEST_MONGO_URI"),
        database: "csai_migrated".into(),
        collection: "sessions".into(),
        pool_size: 8,
        timeout: Duration::from_secs(10),
        max_retries: 3,
    })
    .await
    .expect("mongo store");
    migrate_into(&store, 12).await;
}

#[tokio::test]
async fn into_dynamo() {
    let store = DynamoStore::new(&DynamoOptions {
        region: "us-east-1".into(),
        table: format!("csai_migrated_{}", std::process::id()),
        endpoint: Some(required_env("CSAI_TEST_DYNAMO_ENDPOINT")),
        create_table: true,
        timeout: Duration::from_secs(20),
        max_retries: 3,
    })
    .await
    .expect("dynamo store");
    migrate_into(&store, 13).await;
}

#[test]
fn the_command_migrates_into_the_configured_backend() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let seeded = runtime.block_on(seed(14));
    let from = seeded.url.replacen("redis://", "cs-ai-redis://", 1);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_csai-sidecar"))
        .args(["migrate", "--from", &from])
        .env("CSAI_STORAGE_TYPE", "redis")
        .env("CSAI_REDIS_ADDRESS", required_env("CSAI_TEST_REDIS_URL"))
        .env("CSAI_REDIS_KEY_PREFIX", "csai-migrated-cli:")
        .output()
        .expect("run migrate");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("sessions         2"), "{stdout}");
    assert!(stdout.contains("failed           0"), "{stdout}");

    let memory = std::process::Command::new(env!("CARGO_BIN_EXE_csai-sidecar"))
        .args(["migrate", "--from", &from])
        .env("CSAI_STORAGE_TYPE", "memory")
        .output()
        .expect("run migrate");
    assert_eq!(
        memory.status.code(),
        Some(2),
        "the in-memory store is refused"
    );
}

/// A CS-AI session the service would refuse (a content over max_content_bytes) is a
/// counted failure, in a dry run too, and nothing of it is written: a migration writes
/// only what a bot could have written through the API.
#[tokio::test]
async fn sessions_the_service_would_refuse_are_failures() {
    let url = format!("{}/9", required_env("CSAI_TEST_REDIS_URL"));
    let mut redis = redis::Client::open(url.as_str())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let _: () = redis::cmd("FLUSHDB").query_async(&mut redis).await.unwrap();
    let refused = json!([
        {"content": "hi", "role": "user", "tool_calls": null, "tool_call_id": ""},
        {"content": "a content longer than the limit", "role": "assistant", "tool_calls": null, "tool_call_id": ""}
    ]);
    let fine = json!([{"content": "hi", "role": "user", "tool_calls": null, "tool_call_id": ""}]);
    for (id, messages) in [("refused", &refused), ("fine", &fine)] {
        let _: () = redis
            .set_ex(format!("ai:session:{id}"), messages.to_string(), 3600)
            .await
            .unwrap();
    }
    let store = MemoryStore::new(MemoryLimits::default());
    for dry_run in [true, false] {
        let mut options = options(dry_run);
        options.limits.max_content_bytes = 16;
        let summary = cs_ai::copy_from_redis(&url, &store, &options)
            .await
            .expect("migrate");
        assert_eq!(summary.sessions, 1, "{summary}");
        assert_eq!(summary.failures.len(), 1, "{summary}");
        assert!(
            summary.failures[0]
                .contains("messages[1].content: 31 bytes is more than the limit of 16 bytes"),
            "{summary}"
        );
    }
    assert!(matches!(
        store.get(&SessionId::new("refused"), Window::All).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        store
            .get(&SessionId::new("fine"), Window::All)
            .await
            .unwrap()
            .messages
            .len(),
        1
    );
}
