//! Change signals: what a write changed, delivered to this sidecar's watchers (the hub)
//! and, through the backend's bus, to every other replica sharing the backend.
//!
//! A signal is a hint, never the data: a watcher that gets one reads the store (through
//! the tenant and encryption decorators) and derives its events from what it reads. So a
//! lost, repeated or reordered signal costs a read or a delay, never a wrong event, and
//! nothing a client wrote travels over the bus but session ids and counters.

pub mod hub;
pub mod poller;

pub use hub::{ChangeHub, PrefixSubscription, SessionSubscription};

use crate::store::StoreResult;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a write did to a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Appended,
    Replaced,
    SystemMessages,
    State,
    Touched,
    Deleted,
    Expired,
}

/// One change of one session, by its stored id (tenant-prefixed where tenants apply).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub id: String,
    pub kind: ChangeKind,
    /// The session's version after the change; 0 once deleted or expired.
    pub version: u64,
    /// Messages in the session after the change (the seq of the last one), when the
    /// write knows it (appends, replaces, polling).
    pub message_count: Option<u64>,
    /// When the session expires after the change, in ms since the epoch (0 when gone).
    pub expire_ms: u64,
}

/// Milliseconds since the epoch (0 before it).
pub fn epoch_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The time `ms` milliseconds after the epoch.
pub fn time_of_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// How changes written through one replica reach the watchers of another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// One process holds the data (in-memory, SQLite): the hub is the whole feed.
    InProcess,
    /// The backend carries the signals (Redis Pub/Sub, PostgreSQL LISTEN/NOTIFY).
    Bus(&'static str),
    /// The backend has no usable feed: each replica polls the watched sessions and
    /// prefixes every interval (MongoDB, DynamoDB).
    Polling,
}

impl Mechanism {
    /// How it is named in logs and docs.
    pub fn describe(&self) -> &'static str {
        match self {
            Mechanism::InProcess => "in-process",
            Mechanism::Bus(name) => name,
            Mechanism::Polling => "polling",
        }
    }
}

/// A backend's carrier of change signals between replicas.
#[async_trait]
pub trait ChangeBus: Send + Sync + 'static {
    /// How this bus reaches other replicas.
    fn mechanism(&self) -> Mechanism;

    /// Sends `changes` (from `origin`, this replica) to every replica listening.
    async fn publish(&self, origin: u64, changes: &[Change]) -> StoreResult<()>;

    /// Delivers other replicas' changes into `hub` until the hub closes, reconnecting
    /// after failures.
    async fn listen(&self, hub: Arc<ChangeHub>);
}

/// The bus of a backend that carries no signal itself: its data lives in one process
/// (`Mechanism::InProcess`: in-memory, SQLite), or replicas poll it
/// (`Mechanism::Polling`: MongoDB, DynamoDB; see [`poller`]).
pub struct NoBus(pub Mechanism);

#[async_trait]
impl ChangeBus for NoBus {
    fn mechanism(&self) -> Mechanism {
        self.0
    }

    async fn publish(&self, _origin: u64, _changes: &[Change]) -> StoreResult<()> {
        Ok(())
    }

    async fn listen(&self, hub: Arc<ChangeHub>) {
        hub.closed().await;
    }
}

/// What goes over a bus: a batch of changes and the replica that made them (so that a
/// replica skips its own, already delivered in process).
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(rename = "o")]
    pub origin: u64,
    #[serde(rename = "c")]
    pub changes: Vec<Change>,
}

impl Envelope {
    /// `changes` as payloads of at most `max_bytes` each (PostgreSQL's NOTIFY takes
    /// under 8000 bytes); a single change larger than that still goes alone.
    pub fn encode(origin: u64, changes: &[Change], max_bytes: usize) -> Vec<String> {
        let mut payloads = Vec::new();
        let mut start = 0;
        while start < changes.len() {
            let mut end = changes.len();
            let mut payload = Self::json(origin, &changes[start..end]);
            while payload.len() > max_bytes && end - start > 1 {
                end = start + (end - start).div_ceil(2);
                payload = Self::json(origin, &changes[start..end]);
            }
            payloads.push(payload);
            start = end;
        }
        payloads
    }

    fn json(origin: u64, changes: &[Change]) -> String {
        serde_json::to_string(&Envelope {
            origin,
            changes: changes.to_vec(),
        })
        .unwrap_or_default()
    }

    /// Delivers a received payload into `hub`, unless it is this replica's own or
    /// malformed (logged: a foreign writer on the channel must not stop the feed).
    pub fn deliver(payload: &str, hub: &ChangeHub) {
        match serde_json::from_str::<Envelope>(payload) {
            Ok(envelope) if envelope.origin == hub.origin() => {}
            Ok(envelope) => {
                for change in &envelope.changes {
                    hub.deliver(change);
                }
            }
            Err(error) => tracing::warn!(%error, "ignoring a malformed change signal on the bus"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(id: &str) -> Change {
        Change {
            id: id.to_string(),
            kind: ChangeKind::Appended,
            version: 3,
            message_count: Some(7),
            expire_ms: 1,
        }
    }

    #[test]
    fn payloads_stay_under_the_limit_and_keep_every_change() {
        let changes: Vec<Change> = (0..100).map(|i| change(&"x".repeat(i * 3))).collect();
        let payloads = Envelope::encode(9, &changes, 2000);
        assert!(payloads.len() > 1);
        let mut back = Vec::new();
        for payload in &payloads {
            assert!(payload.len() <= 2000, "{}", payload.len());
            let envelope: Envelope = serde_json::from_str(payload).unwrap();
            assert_eq!(envelope.origin, 9);
            back.extend(envelope.changes);
        }
        assert_eq!(back, changes);
    }
}
