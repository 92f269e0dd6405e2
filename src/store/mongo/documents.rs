//! How a session is laid out in MongoDB documents: the session document's fields, and
//! messages, metadata and state as BSON.

use crate::domain::{JsonObject, Message, NewMessage, UsageTotal};
use crate::store::optimistic::new_generation;
use crate::store::{StoreError, StoreResult};
use mongodb::bson::{self, Bson, DateTime, Document};
use std::time::{Duration, SystemTime};

/// The parts of a session document that writes need.
#[derive(Clone, Debug)]
pub(super) struct Head {
    pub(super) generation: String,
    pub(super) version: i64,
    pub(super) count: i64,
    pub(super) bucket: i64,
    pub(super) bucket_messages: i64,
    pub(super) bucket_bytes: i64,
    pub(super) created: DateTime,
    pub(super) expire: DateTime,
    pub(super) horizon: DateTime,
    pub(super) reqs: Vec<Document>,
    /// The provider usage of the session's messages (the `usage` subdocument).
    pub(super) usage_total: UsageTotal,
}

pub(super) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("unexpected data in MongoDB: {what}"))
}

pub(super) fn to_system_time(time: DateTime) -> SystemTime {
    time.to_system_time()
}

pub(super) fn from_system_time(time: SystemTime) -> DateTime {
    DateTime::from_system_time(time)
}

pub(super) fn get_i64(document: &Document, key: &str) -> StoreResult<i64> {
    match document.get(key) {
        Some(Bson::Int64(n)) => Ok(*n),
        Some(Bson::Int32(n)) => Ok(i64::from(*n)),
        Some(Bson::Double(n)) => Ok(*n as i64),
        other => Err(corrupt(format!("field {key} is {other:?}"))),
    }
}

pub(super) fn get_time(document: &Document, key: &str) -> StoreResult<DateTime> {
    document
        .get_datetime(key)
        .copied()
        .map_err(|_| corrupt(format!("field {key} is not a date")))
}

impl Head {
    pub(super) fn from_document(document: &Document) -> StoreResult<Self> {
        Ok(Self {
            generation: document.get_str("gen").map_err(corrupt)?.to_string(),
            version: get_i64(document, "version")?,
            count: get_i64(document, "count")?,
            bucket: get_i64(document, "bucket")?,
            bucket_messages: get_i64(document, "bucket_messages")?,
            bucket_bytes: get_i64(document, "bucket_bytes")?,
            created: get_time(document, "created")?,
            expire: get_time(document, "expire")?,
            horizon: get_time(document, "horizon")?,
            reqs: document
                .get_array("reqs")
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|i| i.as_document().cloned())
                        .collect()
                })
                .unwrap_or_default(),
            usage_total: usage_of(document)?,
        })
    }

    pub(super) fn fresh(now: DateTime) -> Self {
        Self {
            generation: new_generation(),
            version: 0,
            count: 0,
            bucket: 0,
            bucket_messages: 0,
            bucket_bytes: 0,
            created: now,
            expire: now,
            horizon: now,
            reqs: Vec::new(),
            usage_total: UsageTotal::default(),
        }
    }
}

/// A usage total as the session document's `usage` subdocument.
pub(super) fn usage_document(usage: &UsageTotal) -> Document {
    let mut document = Document::new();
    for (name, n) in UsageTotal::NAMES.iter().zip(usage.counters()) {
        document.insert(*name, n.min(i64::MAX as u64) as i64);
    }
    document
}

/// The session document's usage total (zero for documents stored before it was kept).
pub(super) fn usage_of(document: &Document) -> StoreResult<UsageTotal> {
    match document.get_document("usage") {
        Ok(usage) => usage_counters(usage),
        Err(_) => Ok(UsageTotal::default()),
    }
}

/// A usage total from the counters named as its fields in `document` (absent ones are 0).
pub(super) fn usage_counters(document: &Document) -> StoreResult<UsageTotal> {
    let mut counters = [0u64; 6];
    for (n, name) in counters.iter_mut().zip(UsageTotal::NAMES) {
        if document.contains_key(name) {
            *n = get_i64(document, name)?.max(0) as u64;
        }
    }
    Ok(UsageTotal::from_counters(counters))
}

/// A message as a BSON document: CS-AI's JSON shape plus `seq` and `t` (its time).
pub(super) fn message_document(
    message: &NewMessage,
    seq: i64,
    now: DateTime,
) -> StoreResult<Document> {
    let mut document =
        bson::to_document(message).map_err(|e| StoreError::Internal(e.to_string()))?;
    document.insert("seq", seq);
    document.insert("t", message.create_time.map_or(now, from_system_time));
    Ok(document)
}

pub(super) fn message_from_document(document: &Document) -> StoreResult<Message> {
    let seq = get_i64(document, "seq")?;
    let time = get_time(document, "t")?;
    let body: NewMessage = bson::from_document(document.clone()).map_err(corrupt)?;
    Ok(body.stored(seq as u64, to_system_time(time)))
}

pub(super) fn messages_from(array: Option<&Bson>) -> StoreResult<Vec<Message>> {
    match array {
        Some(Bson::Array(items)) => items
            .iter()
            .map(|item| {
                message_from_document(
                    item.as_document()
                        .ok_or_else(|| corrupt("message is not a document"))?,
                )
            })
            .collect(),
        None => Ok(Vec::new()),
        Some(other) => Err(corrupt(format!("messages are {other:?}"))),
    }
}

pub(super) fn json_to_document(object: &JsonObject) -> StoreResult<Document> {
    bson::to_document(object)
        .map_err(|e| StoreError::Internal(format!("state is not storable: {e}")))
}

pub(super) fn document_to_json(document: Option<&Document>) -> StoreResult<JsonObject> {
    match document {
        None => Ok(JsonObject::new()),
        Some(document) => match Bson::Document(document.clone()).into_relaxed_extjson() {
            serde_json::Value::Object(object) => Ok(object),
            other => Err(corrupt(format!("state is {other}"))),
        },
    }
}

pub(super) fn ttl_expiry(now: DateTime, ttl: Duration) -> DateTime {
    from_system_time(to_system_time(now) + ttl)
}

/// Escapes a literal for use in a regular expression.
pub(super) fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\^$.|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Role;

    #[test]
    fn messages_round_trip_through_bson() {
        let mut message = NewMessage::text(Role::User, "hello");
        message.metadata = serde_json::json!({"n": 3, "ratio": 0.5, "tags": ["a"]})
            .as_object()
            .cloned()
            .expect("object");
        let now = DateTime::now();
        let document = message_document(&message, 7, now).expect("document");
        assert_eq!(document.get_i64("seq"), Ok(7));
        let back = message_from_document(&document).expect("message");
        assert_eq!(back.seq, 7);
        assert_eq!(back.body, message);
    }

    #[test]
    fn regex_metacharacters_are_escaped() {
        assert_eq!(regex_escape("a.b*c"), r"a\.b\*c");
        assert_eq!(regex_escape("tenant/1"), "tenant/1");
    }
}
