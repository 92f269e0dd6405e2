//! The in-memory store's own tests: compact messages, byte accounting, the sweeper and
//! limits (the shared semantics are in the conformance suite).

use super::*;
use serde_json::json;

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn a_stored_message_is_compact_and_reads_back_whole() {
    assert_eq!(std::mem::size_of::<Compact>(), 48);
    let now = SystemTime::now();
    let plain = NewMessage::text(Role::User, "hello");
    let compact = Compact::new(plain.clone(), now);
    assert!(compact.rest.is_none());
    assert_eq!(compact.message(3), plain.stored(3, now));
    let mut rich = NewMessage::text(Role::Assistant, "with a model");
    rich.model = Some("m".into());
    rich.metadata.insert("k".into(), json!(1));
    let compact = Compact::new(rich.clone(), now);
    assert!(compact.rest.is_some());
    assert_eq!(compact.message(7), rich.stored(7, now));
}

fn append(content: &str, ttl: Duration) -> Append {
    Append {
        messages: vec![NewMessage::text(Role::User, content)],
        request_id: None,
        options: WriteOptions::ttl(ttl),
    }
}

fn counters(store: &MemoryStore) -> (u64, u64, u64) {
    (
        store.sessions.load(Ordering::Relaxed),
        store.messages.load(Ordering::Relaxed),
        store.bytes.load(Ordering::Relaxed),
    )
}

#[tokio::test]
async fn accounting_returns_to_zero_after_every_kind_of_write() {
    let store = MemoryStore::new(MemoryLimits::default());
    let id = SessionId::new("acc");
    store.append(&id, append("hello", HOUR)).await.unwrap();
    store
        .replace(
            &id,
            vec![
                NewMessage::text(Role::User, "a"),
                NewMessage::text(Role::User, "b"),
            ],
            WriteOptions::ttl(HOUR),
        )
        .await
        .unwrap();
    store
        .set_system_messages(
            &id,
            vec![NewMessage::text(Role::System, "sys")],
            WriteOptions::ttl(HOUR),
        )
        .await
        .unwrap();
    let state = json!({"k": "v"}).as_object().cloned().unwrap();
    store
        .update_state(&id, StateUpdate::Replace(state), WriteOptions::ttl(HOUR))
        .await
        .unwrap();
    let (sessions, messages, bytes) = counters(&store);
    assert_eq!((sessions, messages), (1, 2));
    let expected = SESSION_OVERHEAD_BYTES
        + 3
        + 2 * NewMessage::text(Role::User, "a").approx_bytes()
        + NewMessage::text(Role::System, "sys").approx_bytes()
        + r#"{"k":"v"}"#.len() as u64;
    assert_eq!(bytes, expected);
    assert!(store.delete(&id, None).await.unwrap());
    assert_eq!(counters(&store), (0, 0, 0));
}

#[tokio::test]
async fn sweeper_frees_only_expired_sessions() {
    let store = Arc::new(MemoryStore::new(MemoryLimits::default()));
    for n in 0..50 {
        let ttl = if n % 2 == 0 {
            Duration::from_millis(50)
        } else {
            HOUR
        };
        store
            .append(&SessionId::new(format!("s{n}")), append("x", ttl))
            .await
            .unwrap();
    }
    let sweeper = store.spawn_sweeper(Duration::from_millis(20));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (sessions, messages, _) = counters(&store);
    assert_eq!(
        (sessions, messages),
        (25, 25),
        "the sweeper must free the 25 expired sessions"
    );
    let index_len: usize = store.shards.iter().map(|s| s.lock().by_expiry.len()).sum();
    assert_eq!(
        index_len, 25,
        "the expiry index keeps one entry per live session"
    );
    drop(store);
    tokio::time::timeout(Duration::from_secs(1), sweeper)
        .await
        .expect("the sweeper ends with its store")
        .unwrap();
}

#[tokio::test]
async fn max_bytes_refuses_and_changes_nothing() {
    let store = MemoryStore::new(MemoryLimits {
        max_sessions: None,
        max_bytes: Some(4_000),
    });
    let id = SessionId::new("full");
    store
        .append(&id, append(&"x".repeat(2_000), HOUR))
        .await
        .unwrap();
    let before = counters(&store);
    let refused = store.append(&id, append(&"y".repeat(2_000), HOUR)).await;
    assert!(
        matches!(refused, Err(StoreError::LimitExceeded(ref m)) if m.contains("max_bytes = 4000"))
    );
    assert_eq!(counters(&store), before);
    assert_eq!(store.get(&id, Window::All).await.unwrap().messages.len(), 1);
}

#[tokio::test]
async fn a_full_store_sweeps_expired_sessions_to_make_room() {
    let store = MemoryStore::new(MemoryLimits {
        max_sessions: Some(1),
        max_bytes: None,
    });
    store
        .append(
            &SessionId::new("old"),
            append("x", Duration::from_millis(10)),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    store
        .append(&SessionId::new("new"), append("x", HOUR))
        .await
        .expect("the expired session makes room");
    assert_eq!(counters(&store).0, 1);
}
