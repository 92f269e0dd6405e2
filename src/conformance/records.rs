//! Conformance of record streams: time order, ranges, pages and expiry.

use super::*;
use crate::records;
use crate::store::RecordStore;
use crate::store::records::{Record, RecordRange, RecordStream, new_id};

/// A moment no other test (or earlier run) puts records near: a unique hour in the years
/// 2001 to about 7000, so the shared learning stream can be tested too.
fn unique_epoch() -> SystemTime {
    let salt = unique_id("epoch")
        .as_str()
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    UNIX_EPOCH + Duration::from_secs((11_400 + salt % 1_800_000) * 86_400)
}

fn record_at(time: SystemTime, body: serde_json::Value) -> Record {
    Record {
        id: new_id(time),
        expire_time: SystemTime::now() + TTL,
        body: body.to_string(),
    }
}

/// Records come back oldest first, with their bodies, per stream.
pub async fn records_round_trip_in_time_order(store: TestStore) {
    let epoch = unique_epoch();
    let hour = Duration::from_secs(3600);
    let user = RecordStream::Security {
        user: unique_id("user").as_str().to_string(),
    };
    let other = RecordStream::Security {
        user: unique_id("other-user").as_str().to_string(),
    };
    let mut written = Vec::new();
    for i in [3u32, 0, 4, 1, 2] {
        let record = record_at(epoch + hour * i, json!({"n": i, "text": "héllo ✓"}));
        store.put_record(&user, record.clone()).await.expect("put");
        written.push(record);
    }
    store
        .put_record(&other, record_at(epoch, json!({"other": true})))
        .await
        .expect("put other");
    store
        .put_record(
            &RecordStream::Learning,
            record_at(epoch + hour, json!({"learning": true})),
        )
        .await
        .expect("put learning");
    written.sort_by(|a, b| a.id.cmp(&b.id));
    let all = RecordRange {
        from: epoch,
        to: epoch + hour * 24,
        after: None,
        limit: 100,
    };
    let read = store.list_records(&user, &all).await.expect("list");
    let ids: Vec<&str> = read.iter().map(|r| r.id.as_str()).collect();
    let expected: Vec<&str> = written.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, expected);
    for (got, want) in read.iter().zip(&written) {
        assert_eq!(got.body, want.body);
        assert_eq!(got.time(), want.time());
    }
    let learning = store
        .list_records(&RecordStream::Learning, &all)
        .await
        .expect("list learning");
    assert_eq!(learning.len(), 1);
    assert_eq!(learning[0].body, json!({"learning": true}).to_string());
    let limited = store
        .list_records(&user, &RecordRange { limit: 2, ..all })
        .await
        .expect("limit");
    assert_eq!(limited.len(), 2);
    assert_eq!(limited[0].id, written[0].id);
}

/// Time ranges over several days return exactly the records inside, page after page.
pub async fn record_ranges_and_pages_are_exact(store: TestStore) {
    let epoch = unique_epoch();
    let stream = RecordStream::Security {
        user: unique_id("ranges").as_str().to_string(),
    };
    let step = Duration::from_secs(8640); // 10 records a day, over 3 days
    let records: Vec<Record> = (0..30u32)
        .map(|i| record_at(epoch + step * i, json!({"i": i})))
        .collect();
    let puts = records.iter().map(|r| store.put_record(&stream, r.clone()));
    for result in futures::future::join_all(puts).await {
        result.expect("put");
    }
    let hour = Duration::from_secs(3600);
    let micro = Duration::from_micros(1);
    for (from, to) in [
        (epoch, epoch + step * 30),
        (epoch + hour * 5, epoch + hour * 51),
        (epoch + step * 10, epoch + step * 20),
        (epoch + step * 10 + micro, epoch + step * 20 + micro),
        (epoch - hour * 48, epoch),
    ] {
        let expected: Vec<u64> = (0..30u64)
            .filter(|&i| {
                let time = epoch + step * i as u32;
                time >= from && time < to
            })
            .collect();
        for page_size in [1, 4, 10, 100] {
            let mut seen = Vec::new();
            let mut token = None;
            loop {
                let page: records::Page<serde_json::Value> =
                    records::list(store.as_ref(), &stream, from, to, page_size, token)
                        .await
                        .expect("page");
                assert!(page.records.len() <= page_size);
                seen.extend(
                    page.records
                        .iter()
                        .map(|(body, _)| body["i"].as_u64().unwrap()),
                );
                token = page.next_page_token;
                if token.is_none() {
                    break;
                }
            }
            assert_eq!(seen, expected, "page size {page_size}, {from:?}..{to:?}");
        }
    }
    let bad = records::list::<serde_json::Value>(
        store.as_ref(),
        &stream,
        epoch,
        epoch + step,
        5,
        Some("nope".into()),
    )
    .await;
    assert!(
        matches!(bad, Err(StoreError::InvalidPageToken(_))),
        "{bad:?}"
    );
}

/// A record past its retention is gone for every read.
pub async fn expired_records_are_never_returned(store: TestStore) {
    let stream = RecordStream::Security {
        user: unique_id("retention").as_str().to_string(),
    };
    let now = SystemTime::now();
    let short = Record {
        id: new_id(now),
        expire_time: now + Duration::from_secs(1),
        body: "{\"short\":true}".into(),
    };
    let long = Record {
        id: new_id(now),
        expire_time: now + TTL,
        body: "{\"long\":true}".into(),
    };
    store.put_record(&stream, short).await.expect("put short");
    store
        .put_record(&stream, long.clone())
        .await
        .expect("put long");
    let range = RecordRange {
        from: now - Duration::from_secs(60),
        to: now + Duration::from_secs(60),
        after: None,
        limit: 10,
    };
    assert_eq!(
        store
            .list_records(&stream, &range)
            .await
            .expect("list")
            .len(),
        2
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let left = store.list_records(&stream, &range).await.expect("list");
    let left: Vec<(&str, &str)> = left
        .iter()
        .map(|r| (r.id.as_str(), r.body.as_str()))
        .collect();
    assert_eq!(left, [(long.id.as_str(), long.body.as_str())]);
}

/// Stats count the live learning records and security logs; a tenant's, its own only.
pub async fn stats_count_records(store: TestStore) {
    use crate::store::decorators::tenant::TenantStore;
    let tenant = TenantStore::new(store.clone(), unique_id("counted").as_str());
    let other = TenantStore::new(store.clone(), unique_id("other").as_str());
    let stats = tenant.stats().await.expect("stats");
    assert_eq!((stats.learning_records, stats.security_logs), (0, 0));
    let now = SystemTime::now();
    for _ in 0..3 {
        tenant
            .put_record(&RecordStream::Learning, record_at(now, json!({"q": "?"})))
            .await
            .expect("put learning");
    }
    for user in ["ana", "budi"] {
        let stream = RecordStream::Security { user: user.into() };
        tenant
            .put_record(&stream, record_at(now, json!({"e": "login"})))
            .await
            .expect("put security log");
    }
    other
        .put_record(&RecordStream::Learning, record_at(now, json!({"q": "!"})))
        .await
        .expect("put the other tenant's");
    let stats = tenant.stats().await.expect("stats");
    assert_eq!((stats.learning_records, stats.security_logs), (3, 2));
    let stats = other.stats().await.expect("stats");
    assert_eq!((stats.learning_records, stats.security_logs), (1, 0));
    // The whole store counts every tenant's (and whatever other tests put meanwhile).
    let whole = store.stats().await.expect("stats");
    assert!(
        whole.learning_records >= 4 && whole.security_logs >= 2,
        "{whole:?}"
    );
}
