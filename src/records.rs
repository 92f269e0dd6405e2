//! Learning data and security logs (CS-AI's other StorageProvider records): their types,
//! and paged time-range reads over the stores' record streams.

use crate::domain::JsonObject;
use crate::store::records::{ID_LEN, new_id, time_of_id};
pub use crate::store::records::{Record, RecordRange, RecordStream};
use crate::store::{RecordStore, StoreError, StoreResult};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};

/// One learning record: CS-AI's learning data, optionally tied to a stored message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LearningRecord {
    #[serde(default)]
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub session_id: String,
    /// The seq of the assistant message the feedback is about (0 = none).
    #[serde(default)]
    pub message_seq: u64,
    #[serde(default)]
    pub query: String,
    #[serde(default)]
    pub response: String,
    #[serde(default)]
    pub tools: Vec<String>,
    #[serde(default)]
    pub context: JsonObject,
    #[serde(default)]
    pub feedback_score: f64,
    #[serde(default)]
    pub participant: String,
}

/// One security log: CS-AI's per-user record of a message and the decision about it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SecurityLog {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub user_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub session_id: String,
    /// SHA-256 of the message, hex; the message itself is not kept.
    #[serde(default)]
    pub message_hash: String,
    #[serde(default)]
    pub spam_score: f64,
    #[serde(default)]
    pub allowed: bool,
    /// Why the message was refused, or what failed.
    #[serde(default)]
    pub reason: String,
}

/// A page of records of one kind.
#[derive(Clone, Debug, PartialEq)]
pub struct Page<T> {
    pub records: Vec<(T, SystemTime)>,
    pub next_page_token: Option<String>,
}

/// The SHA-256 of a message, hex: security logs keep this, never the message.
pub fn message_hash(message: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(message.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Stores a record made at `time` in `stream`, kept for `retention` after it; returns its
/// id and time (to the microsecond, as the id keeps it).
pub async fn put<T: Serialize>(
    store: &dyn RecordStore,
    stream: &RecordStream,
    record: &T,
    time: SystemTime,
    retention: Duration,
) -> StoreResult<(String, SystemTime)> {
    let id = new_id(time);
    put_with_id(store, stream, record, &id, time + retention).await?;
    let time = time_of_id(&id).unwrap_or(time);
    Ok((id, time))
}

/// Stores a record under a given id (which carries its time) until `expire_time`.
pub async fn put_with_id<T: Serialize>(
    store: &dyn RecordStore,
    stream: &RecordStream,
    record: &T,
    id: &str,
    expire_time: SystemTime,
) -> StoreResult<()> {
    let mut body = serde_json::to_value(record)
        .map_err(|e| StoreError::Internal(format!("cannot encode a record: {e}")))?;
    body["id"] = id.into();
    store
        .put_record(
            stream,
            Record {
                id: id.to_string(),
                expire_time,
                body: body.to_string(),
            },
        )
        .await
}

/// One page of `stream`'s records made in `[from, to)`. The page token is the id of the
/// last record of the previous page.
pub async fn list<T: for<'de> Deserialize<'de>>(
    store: &dyn RecordStore,
    stream: &RecordStream,
    from: SystemTime,
    to: SystemTime,
    page_size: usize,
    page_token: Option<String>,
) -> StoreResult<Page<T>> {
    if let Some(token) = &page_token
        && (token.len() != ID_LEN || !token.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(StoreError::InvalidPageToken(
            "not a record page token".to_string(),
        ));
    }
    let range = RecordRange {
        from,
        to,
        after: page_token,
        limit: page_size + 1,
    };
    let mut found = store.list_records(stream, &range).await?;
    let more = found.len() > page_size;
    found.truncate(page_size);
    let next_page_token = if more {
        found.last().map(|r| r.id.clone())
    } else {
        None
    };
    let records = found
        .into_iter()
        .map(|record| {
            let time = record.time();
            serde_json::from_str::<T>(&record.body)
                .map(|value| (value, time))
                .map_err(|e| StoreError::Internal(format!("a stored record is corrupt: {e}")))
        })
        .collect::<StoreResult<_>>()?;
    Ok(Page {
        records,
        next_page_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_hash_to_sha256_hex() {
        assert_eq!(
            message_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
