//! Whole sessions in and out of a store: export, import with a policy for existing
//! sessions, the backup file format, and checksums for verifying copies.

use crate::domain::{
    JsonObject, ListQuery, Message, NewMessage, Session, SessionId, StateUpdate, UsageTotal,
    Window, WriteOptions,
};
use crate::store::{SessionStore, StoreError, StoreResult};
use futures::Stream;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Sessions read per listing page during an export.
const EXPORT_PAGE: u32 = 100;

/// Every live session of `store` whose id starts with `prefix`, whole, in listing order.
/// A session that expires or is deleted while the export runs is left out.
pub fn export(
    store: Arc<dyn SessionStore>,
    prefix: String,
) -> impl Stream<Item = StoreResult<Session>> + Send + 'static {
    futures::stream::try_unfold(
        (Some(None::<String>), Vec::<SessionId>::new()),
        move |(mut token, mut pending)| {
            let prefix = prefix.clone();
            let store = store.clone();
            async move {
                loop {
                    if let Some(id) = pending.pop() {
                        match store.get(&id, Window::All).await {
                            Ok(session) => return Ok(Some((session, (token, pending)))),
                            Err(StoreError::NotFound(_)) => continue,
                            Err(error) => return Err(error),
                        }
                    }
                    let Some(page_token) = token else {
                        return Ok(None);
                    };
                    let page = store
                        .list(ListQuery {
                            prefix: prefix.clone(),
                            page_size: EXPORT_PAGE,
                            page_token,
                        })
                        .await?;
                    pending = page.sessions.into_iter().rev().map(|s| s.id).collect();
                    token = page.next_page_token.map(Some);
                }
            }
        },
    )
}

/// What an import does with a session that already exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    Skip,
    Overwrite,
    Fail,
}

/// How importing one session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Imported {
    Written,
    Skipped(String),
    Failed(String),
}

/// Writes a whole session with the given TTL, keeping its seqs (they are 1..n in every
/// store). Three writes: messages (checked against `existing`), system messages, state.
pub async fn import(
    store: &dyn SessionStore,
    session: &Session,
    ttl: Duration,
    existing: Existing,
) -> Imported {
    if ttl.is_zero() {
        return Imported::Skipped("expired".into());
    }
    let expected_version = match existing {
        Existing::Overwrite => None,
        Existing::Skip | Existing::Fail => Some(0),
    };
    // Copies keep each message's time.
    let bodies = |messages: &[Message]| {
        messages
            .iter()
            .map(NewMessage::copy_of)
            .collect::<Vec<NewMessage>>()
    };
    let first = store
        .replace(
            &session.id,
            bodies(&session.messages),
            WriteOptions {
                expected_version,
                ttl,
            },
        )
        .await;
    match (first, existing) {
        (Ok(_), _) => {}
        (Err(StoreError::VersionMismatch { .. }), Existing::Skip) => {
            return Imported::Skipped("the session exists".into());
        }
        (Err(StoreError::VersionMismatch { .. }), _) => {
            return Imported::Failed("the session exists".into());
        }
        (Err(error), _) => return Imported::Failed(error.to_string()),
    }
    let rest = async {
        store
            .set_system_messages(
                &session.id,
                bodies(&session.system_messages),
                WriteOptions::ttl(ttl),
            )
            .await?;
        store
            .update_state(
                &session.id,
                StateUpdate::Replace(session.state.clone()),
                WriteOptions::ttl(ttl),
            )
            .await
    };
    match rest.await {
        Ok(_) => Imported::Written,
        Err(error) => Imported::Failed(format!("messages written, then: {error}")),
    }
}

/// The time to live a session has left.
pub fn remaining_ttl(session: &Session) -> Duration {
    session
        .expire_time
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
}

/// A stable checksum of what a copy must preserve: seqs, messages, system messages and
/// state (not versions or times, which a store assigns).
pub fn checksum(session: &Session) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &byte in bytes {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    for message in session.messages.iter().chain(&session.system_messages) {
        feed(&message.seq.to_le_bytes());
        let body = serde_json::to_value(&message.body).unwrap_or_default();
        feed(canonical(body).to_string().as_bytes());
    }
    feed(
        canonical(serde_json::Value::Object(session.state.clone()))
            .to_string()
            .as_bytes(),
    );
    hash
}

/// JSON with every object's keys sorted: stores and protobuf's Struct do not keep the
/// order keys were written in.
fn canonical(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(object) => {
            let mut entries: Vec<_> = object.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, canonical(v)))
                    .collect(),
            )
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(canonical).collect())
        }
        other => other,
    }
}

/// The first line of a backup file.
#[derive(Debug, Serialize, Deserialize)]
pub struct BackupHeader {
    pub format: String,
    pub version: u32,
    pub created_ms: u64,
}

/// The format name in a backup's header.
pub const BACKUP_FORMAT: &str = "csai-sidecar-backup";
/// The format version this build writes and reads.
pub const BACKUP_VERSION: u32 = 1;

/// One session line of a backup file.
#[derive(Debug, Serialize, Deserialize)]
pub struct BackupSession {
    pub session_id: String,
    pub expire_time_ms: u64,
    pub messages: Vec<BackupMessage>,
    pub system_messages: Vec<BackupMessage>,
    #[serde(default)]
    pub state: JsonObject,
}

/// One message of a backup line.
#[derive(Debug, Serialize, Deserialize)]
pub struct BackupMessage {
    pub seq: u64,
    pub time_ms: u64,
    pub message: NewMessage,
}

fn to_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl BackupHeader {
    /// The header of a backup made now.
    pub fn now() -> Self {
        Self {
            format: BACKUP_FORMAT.into(),
            version: BACKUP_VERSION,
            created_ms: to_ms(SystemTime::now()),
        }
    }
}

impl From<&Session> for BackupSession {
    fn from(session: &Session) -> Self {
        let messages = |list: &[Message]| {
            list.iter()
                .map(|m| BackupMessage {
                    seq: m.seq,
                    time_ms: to_ms(m.create_time),
                    message: m.body.clone(),
                })
                .collect()
        };
        Self {
            session_id: session.id.as_str().to_string(),
            expire_time_ms: to_ms(session.expire_time),
            messages: messages(&session.messages),
            system_messages: messages(&session.system_messages),
            state: session.state.clone(),
        }
    }
}

impl BackupSession {
    /// The session this line describes (version and create/update times are not kept).
    pub fn into_session(self) -> Result<Session, String> {
        let messages = |list: Vec<BackupMessage>| -> Result<Vec<Message>, String> {
            list.into_iter()
                .enumerate()
                .map(|(i, m)| {
                    if m.seq != i as u64 + 1 {
                        return Err(format!("message {i} has seq {}, expected {}", m.seq, i + 1));
                    }
                    Ok(m.message.stored(m.seq, from_ms(m.time_ms)))
                })
                .collect()
        };
        if self.session_id.is_empty() {
            return Err("no session_id".into());
        }
        let messages = messages(self.messages)?;
        let now = SystemTime::now();
        Ok(Session {
            id: SessionId::new(self.session_id),
            message_count: messages.len() as u64,
            usage_total: UsageTotal::of(messages.iter().map(|m| &m.body)),
            messages,
            system_messages: messages_or_empty(self.system_messages)?,
            state: self.state,
            version: 0,
            create_time: now,
            update_time: now,
            expire_time: from_ms(self.expire_time_ms),
        })
    }
}

fn messages_or_empty(list: Vec<BackupMessage>) -> Result<Vec<Message>, String> {
    Ok(list
        .into_iter()
        .map(|m| m.message.stored(m.seq, from_ms(m.time_ms)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Role;

    #[test]
    fn backup_lines_round_trip_and_checksums_ignore_versions() {
        let now = SystemTime::now();
        let session = Session {
            id: SessionId::new("s"),
            messages: vec![
                NewMessage::text(Role::User, "hi").stored(1, now),
                NewMessage::text(Role::Assistant, "hello").stored(2, now),
            ],
            system_messages: vec![NewMessage::text(Role::System, "be brief").stored(1, now)],
            state: serde_json::json!({"step": 2}).as_object().cloned().unwrap(),
            version: 7,
            message_count: 2,
            usage_total: UsageTotal::default(),
            create_time: now,
            update_time: now,
            expire_time: now + Duration::from_secs(60),
        };
        let line = serde_json::to_string(&BackupSession::from(&session)).unwrap();
        let back: BackupSession = serde_json::from_str(&line).unwrap();
        let restored = back.into_session().unwrap();
        assert_eq!(checksum(&restored), checksum(&session));
        assert_eq!(restored.messages[1].body.content, "hello");
        let mut changed = restored.clone();
        changed.messages[1].body.content = "hullo".into();
        assert_ne!(checksum(&changed), checksum(&session));

        let mut gap: BackupSession = serde_json::from_str(&line).unwrap();
        gap.messages[1].seq = 5;
        assert!(gap.into_session().unwrap_err().contains("seq 5"));
    }
}
