//! Runs the shared conformance suite against the SQLite backend, each test on a file of its
//! own (one process may hold a file once), and what is particular to it: the file lock,
//! the schema steps, the sweeper, and sessions surviving a reopen.

use csai_sidecar::conformance::{TestStore, unique_id};
use csai_sidecar::domain::{Append, NewMessage, Role, SessionId, Window, WriteOptions};
use csai_sidecar::store::SessionStore;
use csai_sidecar::store::sqlite::{SqliteOptions, SqliteStore, Synchronous};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

fn scratch_file() -> PathBuf {
    let folder = std::env::temp_dir().join(format!("csai-sqlite-{}", std::process::id()));
    std::fs::create_dir_all(&folder).expect("scratch folder");
    folder.join(format!("{}.sqlite3", unique_id("db").as_str()))
}

fn options(path: PathBuf) -> SqliteOptions {
    SqliteOptions {
        path,
        synchronous: Synchronous::Full,
        readers: 4,
        sweep_interval: Duration::from_secs(1),
        timeout: Duration::from_secs(30),
    }
}

async fn sqlite_store() -> TestStore {
    Arc::new(
        SqliteStore::open(options(scratch_file()))
            .await
            .expect("open"),
    )
}

csai_sidecar::conformance_tests!(sqlite_store());

fn append(text: &str, ttl: Duration) -> Append {
    Append {
        messages: vec![NewMessage::text(Role::User, text)],
        request_id: None,
        options: WriteOptions::ttl(ttl),
    }
}

#[tokio::test]
async fn sessions_survive_a_reopen_and_a_second_opener_is_refused() {
    let path = scratch_file();
    let id = SessionId::new("kept");
    {
        let store = SqliteStore::open(options(path.clone()))
            .await
            .expect("open");
        store
            .append(&id, append("hello", Duration::from_secs(3600)))
            .await
            .unwrap();
        let error = SqliteStore::open(options(path.clone()))
            .await
            .err()
            .expect("the file is in use")
            .to_string();
        assert!(
            error.contains("another csai-sidecar process uses"),
            "{error}"
        );
    }
    // Dropped: the lock is released, the session is still there.
    let store = SqliteStore::open(options(path)).await.expect("reopen");
    let session = store.get(&id, Window::All).await.unwrap();
    assert_eq!(session.messages[0].body.content, "hello");
}

#[tokio::test]
async fn a_database_from_a_newer_sidecar_is_refused() {
    let path = scratch_file();
    drop(
        SqliteStore::open(options(path.clone()))
            .await
            .expect("create"),
    );
    let connection = rusqlite::Connection::open(&path).unwrap();
    connection
        .execute("UPDATE csai_schema SET steps = steps + 1", [])
        .unwrap();
    drop(connection);
    let error = SqliteStore::open(options(path))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("newer than this sidecar's"), "{error}");
}

#[tokio::test]
async fn the_sweeper_deletes_expired_sessions_and_their_messages() {
    let path = scratch_file();
    let store = SqliteStore::open(options(path.clone()))
        .await
        .expect("open");
    for i in 0..1200 {
        let ttl = if i % 2 == 0 {
            Duration::from_millis(1)
        } else {
            Duration::from_secs(3600)
        };
        store
            .append(&SessionId::new(format!("s{i}")), append("x", ttl))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    // More than one batch of expired sessions goes.
    assert_eq!(store.sweep().await.unwrap(), 600);
    let connection = rusqlite::Connection::open(&path).unwrap();
    let count = |sql: &str| -> i64 { connection.query_row(sql, [], |row| row.get(0)).unwrap() };
    assert_eq!(count("SELECT COUNT(*) FROM sessions"), 600);
    assert_eq!(count("SELECT COUNT(*) FROM messages"), 600);
    assert_eq!(store.stats().await.unwrap().active_sessions, 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_writers_lose_nothing() {
    csai_sidecar::conformance::appends_from_many_writers(&[sqlite_store().await], 64, 50).await;
}
