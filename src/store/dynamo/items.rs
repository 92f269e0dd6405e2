//! How a session is laid out in DynamoDB items: the meta item, message elements (split
//! into fragments when large), and the placement of new messages into the open list or
//! sealed chunks.

use crate::domain::{Message, NewMessage, UsageTotal};
use crate::store::optimistic::new_generation;
use crate::store::{StoreError, StoreResult};
use aws_sdk_dynamodb::types::AttributeValue;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Most bytes of message data in one chunk item (DynamoDB's item limit is 400 KB).
pub(super) const CHUNK_BYTES: usize = 300_000;
/// Most bytes and elements of the newest messages kept in the meta item before they are
/// sealed into a chunk: appends that fit are one conditional UpdateItem, without a
/// transaction. Small, so that the meta item stays cheap to read and rewrite.
const OPEN_BYTES: u64 = 16_000;
pub(super) const OPEN_ELEMENTS: usize = 32;
/// A message's JSON longer than this is split into fragments.
const FRAGMENT_BYTES: usize = 200_000;
/// The sort key of a session's meta item.
pub(super) const META: &str = "meta";

pub(super) type Item = HashMap<String, AttributeValue>;

/// The meta item, decoded.
#[derive(Clone, Debug)]
pub(super) struct Meta {
    pub(super) generation: String,
    pub(super) version: u64,
    pub(super) count: u64,
    /// Number of sealed chunk items.
    pub(super) chunk: u64,
    /// The newest messages, kept in the meta item until they fill `OPEN_BYTES`.
    pub(super) open: Vec<AttributeValue>,
    pub(super) open_bytes: u64,
    /// Bytes of all message elements, for stats.
    pub(super) message_bytes: u64,
    pub(super) created: u64,
    pub(super) updated: u64,
    pub(super) expire: u64,
    pub(super) horizon: u64,
    pub(super) system: String,
    pub(super) state: String,
    pub(super) reqs: Vec<RecentAppend>,
    /// The provider usage of the session's messages (`usage`, JSON).
    pub(super) usage_total: UsageTotal,
}

/// An append remembered for idempotency.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct RecentAppend {
    pub(super) id: String,
    pub(super) first: u64,
    pub(super) count: u64,
    pub(super) version: u64,
    pub(super) expire: u64,
}

/// A message element as stored: seq, time (ms) and the message, or a fragment of it.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredMessage {
    pub(super) s: u64,
    pub(super) t: u64,
    pub(super) m: NewMessage,
}

pub(super) fn now_ms() -> u64 {
    to_ms(SystemTime::now())
}

pub(super) fn to_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(super) fn to_time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

pub(super) fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

pub(super) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(super) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("unexpected data in DynamoDB: {what}"))
}

pub(super) fn get_n(item: &Item, key: &str) -> StoreResult<u64> {
    match item.get(key) {
        Some(AttributeValue::N(text)) => {
            text.parse().map_err(|_| corrupt(format!("{key} = {text}")))
        }
        other => Err(corrupt(format!("{key} is {other:?}"))),
    }
}

pub(super) fn get_s<'a>(item: &'a Item, key: &str) -> StoreResult<&'a str> {
    match item.get(key) {
        Some(AttributeValue::S(text)) => Ok(text),
        other => Err(corrupt(format!("{key} is {other:?}"))),
    }
}

pub(super) fn chunk_prefix(generation: &str) -> String {
    format!("c#{generation}#")
}

pub(super) fn chunk_key(generation: &str, chunk: u64) -> String {
    format!("c#{generation}#{chunk:010}")
}

pub(super) fn horizon_lead_ms(ttl: Duration) -> u64 {
    crate::store::optimistic::horizon_lead(ttl).as_millis() as u64
}

/// DynamoDB's TTL attribute: whole seconds, rounded up so items never go early.
pub(super) fn ttl_seconds(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

impl Meta {
    pub(super) fn from_item(item: &Item) -> StoreResult<Self> {
        Ok(Self {
            generation: get_s(item, "gen")?.to_string(),
            version: get_n(item, "ver")?,
            count: get_n(item, "cnt")?,
            chunk: get_n(item, "chunk")?,
            open: match item.get("open") {
                Some(AttributeValue::L(elements)) => elements.clone(),
                None => Vec::new(),
                Some(other) => return Err(corrupt(format!("open is {other:?}"))),
            },
            open_bytes: get_n(item, "obytes").unwrap_or(0),
            // Absent on items written before it was kept.
            message_bytes: get_n(item, "mbytes").unwrap_or(0),
            created: get_n(item, "created")?,
            updated: get_n(item, "updated")?,
            expire: get_n(item, "exp")?,
            horizon: get_n(item, "horizon")?,
            system: get_s(item, "sys")?.to_string(),
            state: get_s(item, "state")?.to_string(),
            reqs: serde_json::from_str(get_s(item, "reqs")?).map_err(corrupt)?,
            usage_total: usage_of(item)?,
        })
    }

    pub(super) fn fresh(now: u64) -> Self {
        Self {
            generation: new_generation(),
            version: 0,
            count: 0,
            chunk: 0,
            open: Vec::new(),
            open_bytes: 0,
            message_bytes: 0,
            created: now,
            updated: now,
            expire: now,
            horizon: 0,
            system: "[]".into(),
            state: "{}".into(),
            reqs: Vec::new(),
            usage_total: UsageTotal::default(),
        }
    }
}

/// An item's usage total (zero on items written before it was kept).
pub(super) fn usage_of(item: &Item) -> StoreResult<UsageTotal> {
    match item.get("usage") {
        None => Ok(UsageTotal::default()),
        Some(_) => serde_json::from_str(get_s(item, "usage")?).map_err(corrupt),
    }
}

/// One stored list element: a whole message, or fragment `p` of `n`.
pub(super) fn elements_of(
    message: &NewMessage,
    seq: u64,
    now: u64,
) -> StoreResult<Vec<AttributeValue>> {
    let json = serde_json::to_string(&StoredMessage {
        s: seq,
        t: message.create_time.map_or(now, to_ms),
        m: message.clone(),
    })
    .map_err(|e| StoreError::Internal(e.to_string()))?;
    if json.len() <= FRAGMENT_BYTES {
        return Ok(vec![AttributeValue::M(HashMap::from([
            ("s".to_string(), n(seq)),
            ("d".to_string(), s(json)),
        ]))]);
    }
    let mut pieces = Vec::new();
    let mut rest = json.as_str();
    while !rest.is_empty() {
        let mut cut = rest.len().min(FRAGMENT_BYTES);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        pieces.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    let total = pieces.len() as u64;
    Ok(pieces
        .into_iter()
        .enumerate()
        .map(|(part, data)| {
            AttributeValue::M(HashMap::from([
                ("s".to_string(), n(seq)),
                ("p".to_string(), n(part as u64)),
                ("n".to_string(), n(total)),
                ("d".to_string(), s(data)),
            ]))
        })
        .collect())
}

pub(super) fn element_size(element: &AttributeValue) -> usize {
    match element {
        AttributeValue::M(map) => {
            map.iter()
                .map(|(k, v)| {
                    k.len()
                        + if let AttributeValue::S(t) = v {
                            t.len()
                        } else {
                            24
                        }
                })
                .sum::<usize>()
                + 8
        }
        _ => 64,
    }
}

/// Reassembles messages from chunk elements in order (fragments joined).
pub(super) fn messages_of(elements: &[AttributeValue]) -> StoreResult<Vec<Message>> {
    let mut messages = Vec::new();
    let mut partial: Option<(u64, String)> = None;
    for element in elements {
        let AttributeValue::M(map) = element else {
            return Err(corrupt("message element is not a map"));
        };
        let seq = get_n(map, "s")?;
        let data = get_s(map, "d")?;
        let json = match (map.get("p"), map.get("n")) {
            (Some(_), Some(_)) => {
                let (part, total) = (get_n(map, "p")?, get_n(map, "n")?);
                let text = match partial.take() {
                    Some((s, mut text)) if s == seq => {
                        text.push_str(data);
                        text
                    }
                    _ if part == 0 => data.to_string(),
                    _ => {
                        return Err(corrupt(format!(
                            "fragment {part} of message {seq} without its start"
                        )));
                    }
                };
                if part + 1 < total {
                    partial = Some((seq, text));
                    continue;
                }
                text
            }
            _ => data.to_string(),
        };
        let stored: StoredMessage = serde_json::from_str(&json).map_err(corrupt)?;
        messages.push(stored.m.stored(stored.s, to_time(stored.t)));
    }
    Ok(messages)
}

/// Consecutive elements sealed into one chunk item.
pub(super) struct ChunkGroup {
    pub(super) chunk: u64,
    pub(super) first: u64,
    pub(super) last: u64,
    pub(super) elements: Vec<AttributeValue>,
}

/// How a write changes the open messages of the meta item.
pub(super) enum OpenChange {
    /// Not touched.
    Keep,
    /// These elements are appended (`list_append`): only the new messages travel.
    Append(Vec<AttributeValue>),
    /// Replaced by this list (after sealing, or for a replace).
    Set(Vec<AttributeValue>),
}

pub(super) fn seq_of(element: &AttributeValue) -> u64 {
    match element {
        AttributeValue::M(map) => get_n(map, "s").unwrap_or(0),
        _ => 0,
    }
}

/// Numbers the messages after `meta.count` and places them: into the open list if they
/// fit, else the open list and the new messages are sealed into chunk items.
pub(super) fn place_messages(
    meta: &mut Meta,
    messages: &[NewMessage],
    now: u64,
) -> StoreResult<(OpenChange, Vec<ChunkGroup>)> {
    let mut elements = Vec::new();
    for message in messages {
        meta.count += 1;
        elements.extend(elements_of(message, meta.count, now)?);
    }
    let added: u64 = elements.iter().map(|e| element_size(e) as u64).sum();
    meta.message_bytes += added;
    if meta.open_bytes + added <= OPEN_BYTES && meta.open.len() + elements.len() <= OPEN_ELEMENTS {
        meta.open.extend(elements.iter().cloned());
        meta.open_bytes += added;
        return Ok((OpenChange::Append(elements), Vec::new()));
    }
    let mut groups: Vec<ChunkGroup> = Vec::new();
    let mut bytes = 0;
    for element in std::mem::take(&mut meta.open).into_iter().chain(elements) {
        let size = element_size(&element);
        let seq = seq_of(&element);
        match groups.last_mut() {
            Some(group) if bytes + size <= CHUNK_BYTES => {
                group.last = seq;
                group.elements.push(element);
                bytes += size;
            }
            _ => {
                groups.push(ChunkGroup {
                    chunk: meta.chunk,
                    first: seq,
                    last: seq,
                    elements: vec![element],
                });
                meta.chunk += 1;
                bytes = size;
            }
        }
    }
    meta.open_bytes = 0;
    Ok((OpenChange::Set(Vec::new()), groups))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Role;

    #[test]
    fn large_messages_are_split_and_joined_back() {
        let mut message = NewMessage::text(Role::User, "é".repeat(400_000));
        message.name = Some("Budi".into());
        let elements = elements_of(&message, 7, 1_700_000_000_000).expect("elements");
        assert!(elements.len() >= 4, "{} fragments", elements.len());
        assert!(elements.iter().all(|e| element_size(e) < CHUNK_BYTES));
        let small = elements_of(&NewMessage::text(Role::User, "hi"), 8, 1).expect("small");
        let all: Vec<AttributeValue> = elements.into_iter().chain(small).collect();
        let messages = messages_of(&all).expect("joined");
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].seq, 7);
        assert_eq!(messages[0].body, message);
        assert_eq!(messages[1].body.content, "hi");
    }
}
