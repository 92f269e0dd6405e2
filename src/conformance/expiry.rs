//! Conformance of expiry: TTLs, touch, millisecond TTLs, and what an expired session is.

use super::*;

/// A session expires after its TTL; touch extends it; expired sessions read as absent.
pub async fn ttl_expires_sessions_and_touch_extends(store: TestStore) {
    let short = Duration::from_secs(1);
    let id = unique_id("ttl");
    let kept = unique_id("ttl-touched");
    for session in [&id, &kept] {
        store
            .append(
                session,
                Append {
                    options: WriteOptions::ttl(short),
                    ..append_of(vec![user("soon gone")])
                },
            )
            .await
            .expect("append");
    }
    let read = store
        .get(&id, Window::All)
        .await
        .expect("get before expiry");
    assert_between(
        read.expire_time,
        read.update_time + short,
        read.update_time + short,
        "expire_time is update_time + ttl",
    );

    tokio::time::sleep(Duration::from_millis(400)).await;
    let before_touch = SystemTime::now();
    let touched = store
        .touch(&kept, Duration::from_secs(60))
        .await
        .expect("touch");
    assert_between(
        touched.expire_time,
        before_touch + Duration::from_secs(60),
        SystemTime::now() + Duration::from_secs(60),
        "expire_time after touch",
    );
    let kept_before = store.get(&kept, Window::All).await.expect("get");
    assert_eq!(
        touched.version, kept_before.version,
        "touch must not change the version"
    );

    tokio::time::sleep(Duration::from_millis(1000)).await;
    must_be_absent(&store, &id).await;
    assert!(matches!(
        store.touch(&id, TTL).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(!store.delete(&id, None).await.expect("delete of expired"));
    let listed = store
        .list(ListQuery {
            prefix: id.as_str().to_string(),
            page_size: 10,
            page_token: None,
        })
        .await
        .expect("list");
    assert!(listed.sessions.is_empty(), "an expired session was listed");
    let kept_after = store
        .get(&kept, Window::All)
        .await
        .expect("touched session lives");
    assert_eq!(contents(&kept_after.messages), vec!["soon gone"]);

    // A write to an expired session starts a new one.
    let fresh = store
        .append(&id, append_of(vec![user("new")]))
        .await
        .expect("append");
    assert_eq!(fresh.first_seq, 1);
}

/// A TTL of a few hundred milliseconds (CS-AI's storage tests use 100 ms) is kept to the
/// millisecond: the expiry is the write's time + ttl, and the session is gone soon after.
pub async fn millisecond_ttls_expire_on_time(store: TestStore) {
    let ttl = Duration::from_millis(250);
    let id = unique_id("ttl-ms");
    let before = SystemTime::now();
    let outcome = store
        .append(
            &id,
            Append {
                options: WriteOptions::ttl(ttl),
                ..append_of(vec![user("brief")])
            },
        )
        .await
        .expect("append");
    let after = SystemTime::now();
    assert_between(
        outcome.expire_time,
        before + ttl,
        after + ttl,
        "expire_time is the write's time + 250 ms",
    );
    let remaining = outcome
        .expire_time
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(remaining + Duration::from_millis(100)).await;
    must_be_absent(&store, &id).await;
}
