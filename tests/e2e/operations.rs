//! Export/Import over gRPC, backup → restore between every pair of backends, corrupt
//! backup files, resumable migrations, and the commands of the binary.

use crate::common;

use crate::common::{TestServer, required_env, test_config};
use csai_sidecar::config::Config;
use csai_sidecar::domain::{
    Append, NewMessage, Role, Session, SessionId, StateUpdate, Window, WriteOptions,
};
use csai_sidecar::grpc::pb;
use csai_sidecar::operations::{self, Location};
use csai_sidecar::service::Policy;
use csai_sidecar::store::SessionStore;
use csai_sidecar::store::dynamo::{DynamoOptions, DynamoStore};
use csai_sidecar::store::memory::{MemoryLimits, MemoryStore};
use csai_sidecar::store::mongo::{MongoOptions, MongoStore};
use csai_sidecar::store::redis::RedisStore;
use csai_sidecar::transfer::{self, Existing};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

fn unique(name: &str) -> String {
    csai_sidecar::conformance::unique_id(name)
        .as_str()
        .replace(['-', ':'], "_")
}

async fn store(kind: &str) -> Arc<dyn SessionStore> {
    let namespace = unique(kind);
    match kind {
        "memory" => Arc::new(MemoryStore::new(MemoryLimits::default())),
        "redis" => Arc::new(
            RedisStore::new(&common::redis_options(
                required_env("CSAI_TEST_REDIS_URL"),
                format!("{namespace}:"),
            ))
            .expect("redis"),
        ),
        "sqlite" => common::sqlite_store().await,
        "postgres" => common::postgres_store(&common::fresh_table_prefix()).await,
        "mongo" => Arc::new(
            MongoStore::new(&MongoOptions {
                uri: required_env("CSAI_TEST_MONGO_URI"),
                database: namespace,
                collection: "sessions".into(),
                pool_size: 8,
                timeout: Duration::from_secs(10),
                max_retries: 3,
            })
            .await
            .expect("mongo"),
        ),
        _ => Arc::new(
            DynamoStore::new(&DynamoOptions {
                region: "us-east-1".into(),
                table: namespace,
                endpoint: Some(required_env("CSAI_TEST_DYNAMO_ENDPOINT")),
                create_table: true,
                timeout: Duration::from_secs(20),
                max_retries: 3,
            })
            .await
            .expect("dynamo"),
        ),
    }
}

/// Three sessions: a tool exchange with system messages and state, a plain one, and one
/// with only state.
async fn seed(store: &dyn SessionStore) -> Vec<Session> {
    let ids = [unique("a"), unique("b"), unique("c")];
    let ttl = WriteOptions::ttl(Duration::from_secs(3600));
    let mut calling = NewMessage::text(Role::Assistant, "");
    calling.tool_calls = vec![csai_sidecar::domain::ToolCall {
        id: "call_1".into(),
        kind: "function".into(),
        function: csai_sidecar::domain::FunctionCall {
            name: "lookup".into(),
            arguments: "{\"order\":7}".into(),
        },
        index: 0,
    }];
    let mut result = NewMessage::text(Role::Tool, "shipped ✓");
    result.tool_call_id = Some("call_1".into());
    let messages = vec![
        NewMessage::text(Role::User, "Where is order 7?"),
        calling,
        result,
    ];
    let append = |messages: Vec<NewMessage>| Append {
        messages,
        request_id: None,
        options: ttl.clone(),
    };
    store
        .append(&SessionId::new(ids[0].as_str()), append(messages))
        .await
        .unwrap();
    store
        .set_system_messages(
            &SessionId::new(ids[0].as_str()),
            vec![NewMessage::text(Role::System, "Be brief.")],
            ttl.clone(),
        )
        .await
        .unwrap();
    let state = serde_json::json!({"step": "tracking", "n": 7})
        .as_object()
        .cloned()
        .unwrap();
    store
        .update_state(
            &SessionId::new(ids[0].as_str()),
            StateUpdate::Replace(state.clone()),
            ttl.clone(),
        )
        .await
        .unwrap();
    store
        .append(
            &SessionId::new(ids[1].as_str()),
            append(vec![NewMessage::text(Role::User, "hi")]),
        )
        .await
        .unwrap();
    store
        .update_state(
            &SessionId::new(ids[2].as_str()),
            StateUpdate::Replace(state),
            ttl,
        )
        .await
        .unwrap();
    let mut sessions = Vec::new();
    for id in ids {
        sessions.push(
            store
                .get(&SessionId::new(id.as_str()), Window::All)
                .await
                .unwrap(),
        );
    }
    sessions
}

async fn assert_same(store: &dyn SessionStore, expected: &[Session]) {
    for session in expected {
        let copy = store.get(&session.id, Window::All).await.expect("copied");
        assert_eq!(
            transfer::checksum(&copy),
            transfer::checksum(session),
            "{:?}",
            session.id
        );
        assert_eq!(copy.messages.len(), session.messages.len());
        // Every message keeps its time, to the millisecond (some stores keep no finer).
        let ms = |m: &csai_sidecar::domain::Message| {
            m.create_time
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        };
        for (copied, original) in copy.messages.iter().zip(&session.messages) {
            assert_eq!(
                ms(copied),
                ms(original),
                "{:?} seq {}",
                session.id,
                original.seq
            );
        }
        let drift = copy
            .expire_time
            .duration_since(session.expire_time)
            .unwrap_or_else(|e| e.duration());
        assert!(drift < Duration::from_secs(5), "TTL kept: {drift:?}");
    }
}

fn policy() -> Policy {
    Policy::from_config(&Config::default())
}

/// Restores `file` into `target` with the default policy.
async fn restore(
    target: &Arc<dyn SessionStore>,
    file: &std::path::Path,
    existing: Existing,
) -> Result<operations::Report, String> {
    operations::restore(
        &mut Location::Store(target.clone()),
        &policy(),
        file,
        existing,
    )
    .await
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("csai-ops-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{}-{name}", unique("f")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_restore_between_every_pair_of_backends() {
    let kinds = ["memory", "redis", "mongo", "dynamo", "sqlite", "postgres"];
    for from in kinds {
        let source = store(from).await;
        let sessions = seed(source.as_ref()).await;
        let file = scratch(&format!("{from}.jsonl"));
        let report = operations::backup(&mut Location::Store(source), &policy(), &file)
            .await
            .expect("backup");
        assert_eq!((report.sessions, report.messages), (3, 4), "{from}");
        for to in kinds.into_iter().filter(|k| *k != from) {
            let target = store(to).await;
            let report = restore(&target, &file, Existing::Fail)
                .await
                .expect("restore");
            assert!(
                report.is_clean() && report.sessions == 3,
                "{from} -> {to}: {report}"
            );
            assert_same(target.as_ref(), &sessions).await;
            let again = restore(&target, &file, Existing::Skip)
                .await
                .expect("restore again");
            assert_eq!(
                (again.sessions, again.skipped),
                (0, 3),
                "{from} -> {to}: existing sessions are skipped"
            );
        }
    }
}

/// Regression: the backup file was truncated before the source was read, so a backup
/// whose source was down destroyed the previous backup; files were created 0644.
#[tokio::test]
async fn a_failed_backup_leaves_the_previous_one_untouched() {
    let memory = Arc::new(MemoryStore::new(MemoryLimits::default()));
    seed(memory.as_ref()).await;
    let faulty = Arc::new(common::FaultyStore::new(memory));
    let file = scratch("kept.jsonl.zst");
    operations::backup(&mut Location::Store(faulty.clone()), &policy(), &file)
        .await
        .expect("first backup");
    let first = std::fs::read(&file).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "a backup is readable by its owner only");
    }
    faulty.set_down(true);
    let error = operations::backup(&mut Location::Store(faulty), &policy(), &file)
        .await
        .expect_err("the source is down");
    assert!(error.contains("injected"), "{error}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        first,
        "the previous backup is intact"
    );
    let folder = file.parent().unwrap();
    let temporary = format!(".{}.", file.file_name().unwrap().to_string_lossy());
    let leftovers: Vec<_> = std::fs::read_dir(folder)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&temporary))
        .collect();
    assert!(
        leftovers.is_empty(),
        "no temporary file is left: {leftovers:?}"
    );
}

/// A session holding one message, "keep me", for an hour.
async fn live_session(target: &dyn SessionStore, name: &str) -> SessionId {
    let id = SessionId::new(unique(name));
    target
        .append(
            &id,
            Append {
                messages: vec![NewMessage::text(Role::User, "keep me")],
                request_id: None,
                options: WriteOptions::ttl(Duration::from_secs(3600)),
            },
        )
        .await
        .expect("a live session");
    id
}

/// A backup file of one session, written as `line`: for lines no backup would hold.
fn one_session_backup(name: &str, line: serde_json::Value) -> PathBuf {
    let file = scratch(name);
    let header = r#"{"format":"csai-sidecar-backup","version":1,"created_ms":0}"#;
    std::fs::write(&file, format!("{header}\n{line}\n")).unwrap();
    file
}

/// Regression: a line with `expire_time_ms = u64::MAX` restored with `--existing
/// overwrite` made the Redis script fail after it had deleted and rewritten the
/// messages: the live session read as absent. Every restored session is now validated
/// as ImportSessions validates it (the TTL is held to max_ttl) before any write.
#[tokio::test]
async fn a_corrupt_expiry_never_destroys_a_live_session() {
    let target = store("redis").await;
    let id = live_session(target.as_ref(), "live").await;
    let file = one_session_backup(
        "far-expiry.jsonl",
        serde_json::json!({
            "session_id": id.as_str(),
            "expire_time_ms": u64::MAX,
            "messages": [{"seq": 1, "time_ms": 1_700_000_000_000u64, "message": {"role": "user", "content": "replaced"}}],
            "system_messages": [],
            "state": {},
        }),
    );
    let report = restore(&target, &file, Existing::Overwrite)
        .await
        .expect("restore");
    assert!(report.is_clean(), "{report}");
    let session = target
        .get(&id, Window::All)
        .await
        .expect("the session lives");
    assert_eq!(session.messages[0].body.content, "replaced");
    let max_ttl = policy().limits.max_ttl;
    assert!(
        session.expire_time <= std::time::SystemTime::now() + max_ttl,
        "the expiry is held to max_ttl"
    );
}

/// A message time no backend stores exactly (past year 9999) is refused with the line,
/// before any write: the live session it would overwrite stays as it was.
#[tokio::test]
async fn a_corrupt_message_time_is_refused_before_any_write() {
    let target = store("redis").await;
    let id = live_session(target.as_ref(), "live-time").await;
    let file = one_session_backup(
        "far-message-time.jsonl",
        serde_json::json!({
            "session_id": id.as_str(),
            "expire_time_ms": 4_000_000_000_000u64,
            "messages": [{"seq": 1, "time_ms": u64::MAX, "message": {"role": "user", "content": "replaced"}}],
            "system_messages": [],
            "state": {},
        }),
    );
    let report = restore(&target, &file, Existing::Overwrite)
        .await
        .expect("restore");
    assert_eq!(report.failures.len(), 1, "{report}");
    assert!(
        report.failures[0].contains("create_time: must lie between 1970-01-01 and 9999-12-31"),
        "{report}"
    );
    let session = target.get(&id, Window::All).await.expect("still there");
    assert_eq!(session.messages[0].body.content, "keep me");
}

/// Restore writes only what ImportSessions accepts: the service's checks of any write
/// (here a tool result without its call id) refuse the line, nothing of it is written.
#[tokio::test]
async fn restore_refuses_what_the_service_refuses() {
    let target = store("memory").await;
    let file = one_session_backup(
        "refused.jsonl",
        serde_json::json!({
            "session_id": "refused",
            "expire_time_ms": 4_000_000_000_000u64,
            "messages": [{"seq": 1, "time_ms": 1_700_000_000_000u64, "message": {"role": "tool", "content": "42"}}],
            "system_messages": [],
            "state": {},
        }),
    );
    let report = restore(&target, &file, Existing::Fail)
        .await
        .expect("restore");
    assert_eq!(report.failures.len(), 1, "{report}");
    assert!(
        report.failures[0].contains("messages[0].tool_call_id: is required on tool messages"),
        "{report}"
    );
    assert!(
        target
            .get(&SessionId::new("refused"), Window::All)
            .await
            .is_err()
    );
}

/// Regression: one line that was not UTF-8 ended the restore there (501 of 1,004
/// sessions restored).
#[tokio::test]
async fn a_line_that_is_not_utf8_is_one_failure_and_the_rest_is_restored() {
    let source = store("memory").await;
    let sessions = seed(source.as_ref()).await;
    let file = scratch("not-utf8.jsonl");
    operations::backup(&mut Location::Store(source), &policy(), &file)
        .await
        .expect("backup");
    let text = std::fs::read(&file).unwrap();
    let mut lines: Vec<Vec<u8>> = text.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    // Line 3 (the second session) gets bytes that are not UTF-8 in its middle.
    let middle = lines[2].len() / 2;
    lines[2].splice(middle..middle, [0xff, 0xfe, 0x80]);
    std::fs::write(&file, lines.join(&b'\n')).unwrap();
    let target = store("memory").await;
    let report = restore(&target, &file, Existing::Fail)
        .await
        .expect("restore");
    assert_eq!(report.sessions, 2, "{report}");
    assert_eq!(report.failures.len(), 1, "{report}");
    assert!(
        report.failures[0].starts_with("line 3: not UTF-8"),
        "{report}"
    );
    assert_same(target.as_ref(), &[sessions[0].clone(), sessions[2].clone()]).await;
}

#[tokio::test]
async fn a_corrupt_backup_restores_every_intact_session_and_names_the_bad_lines() {
    let source = store("memory").await;
    let sessions = seed(source.as_ref()).await;
    let file = scratch("corrupt.jsonl");
    operations::backup(&mut Location::Store(source), &policy(), &file)
        .await
        .expect("backup");
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "header + 3 sessions");
    let broken_id = serde_json::from_str::<serde_json::Value>(lines[2]).unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let truncated = &lines[3][..lines[3].len() / 2];
    let truncated_id = serde_json::from_str::<serde_json::Value>(lines[3]).unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    lines[2] = "{\"session_id\": \"x\", \"messages\": [{\"seq\": 9";
    lines[3] = truncated;
    std::fs::write(&file, lines.join("\n")).unwrap();
    let target = store("memory").await;
    let report = restore(&target, &file, Existing::Fail)
        .await
        .expect("restore");
    assert_eq!(report.sessions, 1);
    assert_eq!(report.failures.len(), 2, "{report}");
    assert!(
        report.failures[0].starts_with("line 3:") && report.failures[1].starts_with("line 4:"),
        "{report}"
    );
    assert_same(target.as_ref(), &sessions[..1]).await;
    for id in [broken_id, truncated_id] {
        assert!(
            target
                .get(&SessionId::new(id.as_str()), Window::All)
                .await
                .is_err(),
            "nothing partial of {id}"
        );
    }
    std::fs::write(
        &file,
        "{\"format\": \"something else\", \"version\": 1, \"created_ms\": 0}\n",
    )
    .unwrap();
    let error = restore(&target, &file, Existing::Fail).await.unwrap_err();
    assert!(error.contains("line 1"), "{error}");
}

/// `migrate` to and from each SQL backend, from and to every other backend, verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrate_to_and_from_the_sql_backends() {
    let kinds = ["memory", "redis", "mongo", "dynamo", "sqlite", "postgres"];
    for from in kinds {
        for to in kinds {
            let involves_sql = ["sqlite", "postgres"]
                .iter()
                .any(|k| *k == from || *k == to);
            if from == to || !involves_sql {
                continue;
            }
            let source = store(from).await;
            let sessions = seed(source.as_ref()).await;
            let target = store(to).await;
            let report = operations::migrate(
                &mut Location::Store(source),
                &mut Location::Store(target.clone()),
                &policy(),
                None,
                false,
            )
            .await
            .expect("migrate");
            assert!(
                report.is_clean() && report.sessions == 3,
                "{from} -> {to}: {report}"
            );
            assert_same(target.as_ref(), &sessions).await;
        }
    }
}

#[tokio::test]
async fn an_interrupted_migration_resumes_and_ends_identical() {
    let source = store("redis").await;
    let sessions = seed(source.as_ref()).await;
    let target = store("mongo").await;
    // The interrupted run had copied the first session and written it to the checkpoint.
    transfer::import(
        target.as_ref(),
        &sessions[0],
        Duration::from_secs(3600),
        Existing::Overwrite,
    )
    .await;
    let checkpoint = scratch("checkpoint");
    std::fs::write(&checkpoint, format!("{}\n", sessions[0].id.as_str())).unwrap();

    let dry = operations::migrate(
        &mut Location::Store(source.clone()),
        &mut Location::Store(target.clone()),
        &policy(),
        Some(&checkpoint),
        true,
    )
    .await
    .expect("dry run");
    assert_eq!((dry.sessions, dry.skipped), (2, 1));
    assert!(
        target.get(&sessions[1].id, Window::All).await.is_err(),
        "a dry run writes nothing"
    );

    let report = operations::migrate(
        &mut Location::Store(source.clone()),
        &mut Location::Store(target.clone()),
        &policy(),
        Some(&checkpoint),
        false,
    )
    .await
    .expect("migrate");
    assert!(report.is_clean(), "{report}");
    assert_eq!((report.sessions, report.skipped), (2, 1));
    assert_same(target.as_ref(), &sessions).await;
    let done = std::fs::read_to_string(&checkpoint).unwrap();
    assert_eq!(done.lines().count(), 3, "{done}");

    // Safe to re-run: everything is in the checkpoint.
    let again = operations::migrate(
        &mut Location::Store(source),
        &mut Location::Store(target.clone()),
        &policy(),
        Some(&checkpoint),
        false,
    )
    .await
    .expect("re-run");
    assert_eq!((again.sessions, again.skipped), (0, 3));
    assert_same(target.as_ref(), &sessions).await;
}

#[tokio::test]
async fn export_and_import_over_grpc_with_each_policy_for_existing_sessions() {
    let memory = Arc::new(MemoryStore::new(MemoryLimits::default()));
    let sessions = seed(memory.as_ref()).await;
    let source = TestServer::start_serving(test_config(), memory).await;
    let target = TestServer::start().await;
    let mut exporter = source.sessions().await;
    let exported: Vec<pb::ExportedSession> = {
        use futures::TryStreamExt;
        exporter
            .export_sessions(pb::ExportSessionsRequest::default())
            .await
            .expect("ExportSessions")
            .into_inner()
            .try_collect()
            .await
            .expect("stream")
    };
    assert_eq!(exported.len(), 3);
    assert!(
        exported
            .iter()
            .all(|e| e.remaining_ttl.as_ref().is_some_and(|t| t.seconds > 3500))
    );
    let mut importer = target.sessions().await;
    let import = |existing: pb::ExistingSessions| {
        let requests: Vec<pb::ImportSessionsRequest> = exported
            .iter()
            .map(|session| pb::ImportSessionsRequest {
                session: Some(session.clone()),
                existing: existing as i32,
            })
            .collect();
        futures::stream::iter(requests)
    };
    let first = importer
        .import_sessions(import(pb::ExistingSessions::Fail))
        .await
        .expect("import")
        .into_inner();
    assert_eq!((first.imported, first.skipped, first.failed), (3, 0, 0));
    assert_same(target.store.as_ref(), &sessions).await;
    let failed = importer
        .import_sessions(import(pb::ExistingSessions::Fail))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(failed.failed, 3);
    assert!(failed.outcomes.iter().all(|o| o.error.contains("exists")));
    let skipped = importer
        .import_sessions(import(pb::ExistingSessions::Skip))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(skipped.skipped, 3);
    let overwritten = importer
        .import_sessions(import(pb::ExistingSessions::Overwrite))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(overwritten.imported, 3);
    assert_same(target.store.as_ref(), &sessions).await;
}

#[test]
fn the_commands_move_a_running_sidecars_memory_into_redis() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let memory = Arc::new(MemoryStore::new(MemoryLimits::default()));
    let sessions = runtime.block_on(seed(memory.as_ref()));
    let server = runtime.block_on(TestServer::start_serving(test_config(), memory));
    let sidecar = format!("grpc://{}", server.addr);
    let prefix = format!("{}:", unique("cli"));
    let run = |args: &[&str], prefix: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_csai-sidecar"))
            .args(args)
            .env("CSAI_STORAGE_TYPE", "redis")
            .env("CSAI_REDIS_ADDRESS", required_env("CSAI_TEST_REDIS_URL"))
            .env("CSAI_REDIS_KEY_PREFIX", prefix)
            .env("CSAI_PROGRESS_INTERVAL", "1ms")
            .output()
            .expect("run")
    };
    // stderr is a pipe, not a terminal: progress comes as lines, the last one "(done)".
    let progress = |output: &std::process::Output, expected: &str| {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(expected) && l.ends_with("(done)")),
            "{expected:?} missing from:\n{stderr}"
        );
    };
    let file = scratch("cli.jsonl");
    let file = file.to_str().unwrap();
    let backup = run(&["backup", "--from", &sidecar, "--file", file], &prefix);
    assert!(
        backup.status.success(),
        "{}",
        String::from_utf8_lossy(&backup.stderr)
    );
    assert!(String::from_utf8_lossy(&backup.stdout).contains("sessions  3"));
    progress(&backup, "backup: 3 of about 3 sessions (100%), ");
    let restore = run(&["restore", "--file", file], &prefix);
    assert!(
        restore.status.success(),
        "{}",
        String::from_utf8_lossy(&restore.stderr)
    );
    let size = std::fs::metadata(file).unwrap().len();
    progress(
        &restore,
        &format!("restore: {size} of about {size} bytes (100%), "),
    );
    let again = run(&["restore", "--file", file], &prefix);
    assert_eq!(
        again.status.code(),
        Some(1),
        "existing sessions fail by default"
    );
    let migrated_prefix = format!("{}:", unique("cli-migrated"));
    let migrate = run(&["migrate", "--from", &sidecar], &migrated_prefix);
    let stdout = String::from_utf8_lossy(&migrate.stdout);
    assert!(
        migrate.status.success() && stdout.contains("copied and verified"),
        "{stdout}"
    );
    progress(&migrate, "migrate: 3 of about 3 sessions (100%), ");
    let redis = |prefix: &str| {
        RedisStore::new(&common::redis_options(
            required_env("CSAI_TEST_REDIS_URL"),
            prefix,
        ))
        .unwrap()
    };
    runtime.block_on(async {
        assert_same(&redis(&prefix), &sessions).await;
        assert_same(&redis(&migrated_prefix), &sessions).await;
    });
    let memory_target = std::process::Command::new(env!("CARGO_BIN_EXE_csai-sidecar"))
        .args(["restore", "--file", file])
        .env("CSAI_STORAGE_TYPE", "memory")
        .output()
        .unwrap();
    assert_eq!(memory_target.status.code(), Some(2));
}

#[tokio::test]
async fn zstd_backups_round_trip() {
    let source = store("memory").await;
    let sessions = seed(source.as_ref()).await;
    let plain = scratch("plain.jsonl");
    let packed = scratch("packed.jsonl.zst");
    operations::backup(&mut Location::Store(source.clone()), &policy(), &plain)
        .await
        .expect("plain");
    operations::backup(&mut Location::Store(source), &policy(), &packed)
        .await
        .expect("zstd");
    let bytes = std::fs::read(&packed).unwrap();
    assert_eq!(bytes[..4], [0x28, 0xb5, 0x2f, 0xfd], "a zstd frame");
    assert!(bytes.len() < std::fs::metadata(&plain).unwrap().len() as usize);
    let target = store("memory").await;
    let report = restore(&target, &packed, Existing::Fail)
        .await
        .expect("restore");
    assert_eq!(report.sessions, 3, "{report}");
    assert_same(target.as_ref(), &sessions).await;
}

#[tokio::test]
async fn migrate_between_two_running_sidecars_verifies_over_grpc() {
    let memory = Arc::new(MemoryStore::new(MemoryLimits::default()));
    let sessions = seed(memory.as_ref()).await;
    let source = TestServer::start_serving(test_config(), memory).await;
    let target = TestServer::start().await;
    let mut from = Location::sidecar(&format!("grpc://{}", source.addr), &Default::default())
        .await
        .expect("source");
    let mut to = Location::sidecar(&format!("grpc://{}", target.addr), &Default::default())
        .await
        .expect("target");
    let report = operations::migrate(&mut from, &mut to, &policy(), None, false)
        .await
        .expect("migrate");
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.sessions, 3);
    assert_same(target.store.as_ref(), &sessions).await;
}
