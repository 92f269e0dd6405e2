//! Encryption at rest: a store decorator that seals everything the bot wrote, except what
//! a backend must read, with AES-256-GCM bound to where each value belongs.
//!
//! A sealed value is `csai-enc:2:<key id>:<base64 of nonce, ciphertext and tag>`, with a
//! random 96-bit nonce per value. Its associated data names the format, the key id and the
//! value's place: the (tenant-qualified) session id and the field (message list, state
//! key) or the record stream and id. A value copied into another session, list, state key
//! or record therefore does not open. A message is stored as its role (the tool-safe
//! window needs it) and one sealed JSON of everything else; a state entry as a keyed hash
//! of its key and one sealed JSON of key and value; a record as its sealed body.
//!
//! Writes use the primary key; reads accept every configured key, so keys rotate without
//! downtime. Reads refuse values that are not sealed this way (plaintext, or the older
//! `csai-enc:1` format that bound only the key id): `rotate-keys --accept-unsealed` is the
//! explicit path that seals them.

use crate::model::{
    Append, AppendOutcome, JsonObject, ListPage, ListQuery, Message, NewMessage, Session,
    SessionId, StateOutcome, StateUpdate, StoreStats, Window, WriteOptions, WriteOutcome,
};
use crate::records::{Record, RecordRange, RecordStream};
use crate::store::{SessionStore, StoreError, StoreResult};
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::Value;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

const VERSION: &str = "csai-enc:2";
const PREFIX: &str = "csai-enc:2:";
/// Values sealed by versions before the binding: the key id was their only associated data.
const V1_PREFIX: &str = "csai-enc:1:";

/// One AES-256 key, its id, and the HMAC key derived from it that hides state keys.
pub struct Key {
    pub id: String,
    aead: LessSafeKey,
    names: hmac::Key,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({}, <redacted>)", self.id)
    }
}

/// Where a sealed value belongs, as the parts of its associated data.
#[derive(Clone, Copy, Debug)]
pub enum Place<'a> {
    /// The body of a message in a session's `messages` or `system` list.
    Message {
        session: &'a SessionId,
        list: MessageList,
    },
    /// One state entry, under its stored (hashed) name.
    State {
        session: &'a SessionId,
        name: &'a str,
    },
    /// The body of one record.
    Record { stream: &'a str, id: &'a str },
}

/// A session's two message lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageList {
    Messages,
    System,
}

impl Place<'_> {
    fn parts(&self) -> [&str; 3] {
        match self {
            Place::Message { session, list } => [
                "message",
                session.as_str(),
                match list {
                    MessageList::Messages => "messages",
                    MessageList::System => "system",
                },
            ],
            Place::State { session, name } => ["state", session.as_str(), name],
            Place::Record { stream, id } => ["record", stream, id],
        }
    }
}

/// Length-prefixed parts, so no choice of ids can make two places' bytes equal.
fn framed<'a>(parts: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let mut bytes = Vec::new();
    for part in parts {
        bytes.extend_from_slice(&(part.len() as u64).to_be_bytes());
        bytes.extend_from_slice(part.as_bytes());
    }
    bytes
}

fn associated_data(key_id: &str, place: &Place<'_>) -> Vec<u8> {
    framed([VERSION, key_id].into_iter().chain(place.parts()))
}

/// The error of a value that is not sealed the current way.
fn unsealed(what: &str) -> StoreError {
    StoreError::Internal(format!(
        "a stored {what} is not sealed (plaintext, or sealed by an older version without its \
         place bound); it is refused while encryption is on. `csai-sidecar rotate-keys \
         --accept-unsealed` seals such values"
    ))
}

/// The primary key (first) and the older keys that may still be read.
#[derive(Debug)]
pub struct Keyring {
    keys: Vec<Key>,
    random: SystemRandom,
}

impl Keyring {
    /// Parses `id:base64-of-32-bytes` entries (comma- or newline-separated), the first
    /// being the primary. Errors never contain key material.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (i, entry) in text
            .split([',', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty() && !e.starts_with('#'))
            .enumerate()
        {
            let (id, encoded) = entry
                .split_once(':')
                .ok_or_else(|| format!("key {}: expected id:base64, without the id", i + 1))?;
            if id.is_empty() || id.contains(':') || !id.is_ascii() {
                return Err(format!(
                    "key {}: the id must be non-empty ASCII without ':'",
                    i + 1
                ));
            }
            let bytes = STANDARD
                .decode(encoded.trim())
                .map_err(|_| format!("key {id}: not valid base64"))?;
            if bytes.len() != 32 {
                return Err(format!("key {id}: {} bytes; AES-256 needs 32", bytes.len()));
            }
            if keys.iter().any(|k: &Key| k.id == id) {
                return Err(format!("key {id} is given twice"));
            }
            let unbound =
                UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| format!("key {id}: rejected"))?;
            let names = hmac::sign(
                &hmac::Key::new(hmac::HMAC_SHA256, &bytes),
                b"csai-enc state key names",
            );
            keys.push(Key {
                id: id.to_string(),
                aead: LessSafeKey::new(unbound),
                names: hmac::Key::new(hmac::HMAC_SHA256, names.as_ref()),
            });
        }
        if keys.is_empty() {
            return Err("no encryption key is given".into());
        }
        Ok(Self {
            keys,
            random: SystemRandom::new(),
        })
    }

    /// The id of the key new values are sealed with.
    pub fn primary_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Seals `plaintext` with the primary key, bound to `place`.
    pub fn seal(&self, plaintext: &str, place: &Place<'_>) -> StoreResult<String> {
        let primary = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| StoreError::Internal("no randomness for a nonce".into()))?;
        let mut data = plaintext.as_bytes().to_vec();
        primary
            .aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated_data(&primary.id, place)),
                &mut data,
            )
            .map_err(|_| StoreError::Internal("encryption failed".into()))?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&data);
        Ok(format!(
            "{PREFIX}{}:{}",
            primary.id,
            STANDARD.encode(sealed)
        ))
    }

    /// Opens a value sealed for `place`; anything else is an error (`what` names the value
    /// in it).
    pub fn open(&self, value: &str, place: &Place<'_>, what: &str) -> StoreResult<String> {
        let rest = value.strip_prefix(PREFIX).ok_or_else(|| unsealed(what))?;
        self.open_with(rest, |id| associated_data(id, place))
    }

    /// Opens a value stored before the binding: `csai-enc:1` or plaintext.
    fn open_unbound(&self, value: &str) -> StoreResult<String> {
        match value.strip_prefix(V1_PREFIX) {
            Some(rest) => self.open_with(rest, |id| id.as_bytes().to_vec()),
            None => Ok(value.to_string()),
        }
    }

    /// Opens `<key id>:<base64>` with the associated data `aad` gives for the key id.
    fn open_with(&self, rest: &str, aad: impl Fn(&str) -> Vec<u8>) -> StoreResult<String> {
        let (id, encoded) = rest
            .split_once(':')
            .ok_or_else(|| StoreError::Internal("a sealed value without its key id".into()))?;
        let key = self.key(id)?;
        let sealed = STANDARD.decode(encoded).map_err(|_| {
            StoreError::Internal(format!("a value sealed with key {id:?} is not base64"))
        })?;
        if sealed.len() < NONCE_LEN {
            return Err(StoreError::Internal(format!(
                "a value sealed with key {id:?} is truncated"
            )));
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| StoreError::Internal("a bad nonce".into()))?;
        let mut data = ciphertext.to_vec();
        let plaintext = key
            .aead
            .open_in_place(nonce, Aad::from(aad(id)), &mut data)
            .map_err(|_| {
                StoreError::Internal(format!(
                    "a value sealed with key {id:?} does not decrypt: the key with that id is not the one it was sealed with, the value was moved from where it was sealed, or the data was altered"
                ))
            })?;
        String::from_utf8(plaintext.to_vec())
            .map_err(|_| StoreError::Internal("a decrypted value is not UTF-8".into()))
    }

    fn key(&self, id: &str) -> StoreResult<&Key> {
        self.keys.iter().find(|k| k.id == id).ok_or_else(|| {
            StoreError::Internal(format!(
                "a value is encrypted with key {id:?}, which is not configured (encryption_keys); configured: {}",
                self.keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// The stored name of state key `key` under each configured key, the primary's first:
    /// a keyed hash, so the backend can merge by key without learning the keys.
    fn state_names(&self, session: &SessionId, key: &str) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| {
                let tag = hmac::sign(&k.names, &framed([session.as_str(), key]));
                format!("~{}", URL_SAFE_NO_PAD.encode(&tag.as_ref()[..16]))
            })
            .collect()
    }
}

/// A store whose sensitive values are encrypted before they reach `inner`.
pub struct EncryptedStore {
    inner: Arc<dyn SessionStore>,
    keys: Arc<Keyring>,
    /// Read plaintext and `csai-enc:1` values instead of refusing them (`rotate-keys
    /// --accept-unsealed` only).
    accept_unsealed: bool,
}

impl EncryptedStore {
    /// Encrypts what `inner` stores with `keys`.
    pub fn new(inner: Arc<dyn SessionStore>, keys: Arc<Keyring>) -> Self {
        Self {
            inner,
            keys,
            accept_unsealed: false,
        }
    }

    /// Like [`EncryptedStore::new`], but values stored in plaintext or by older versions
    /// are read instead of refused, so a rewrite seals them.
    pub fn accepting_unsealed(inner: Arc<dyn SessionStore>, keys: Arc<Keyring>) -> Self {
        Self {
            accept_unsealed: true,
            ..Self::new(inner, keys)
        }
    }

    /// The message as stored: its role (backends need it) and one sealed JSON of the rest.
    fn seal_message(&self, message: NewMessage, place: &Place<'_>) -> StoreResult<NewMessage> {
        let json = serde_json::to_string(&message)
            .map_err(|e| StoreError::Internal(format!("a message does not encode: {e}")))?;
        let mut stored = NewMessage::text(message.role, self.keys.seal(&json, place)?);
        stored.create_time = message.create_time;
        Ok(stored)
    }

    fn open_message(&self, mut message: Message, place: &Place<'_>) -> StoreResult<Message> {
        let stored = &message.body;
        if !stored.content.starts_with(PREFIX) && self.accept_unsealed {
            return self.open_unbound_message(message);
        }
        let json = self.keys.open(&stored.content, place, "message")?;
        let mut body: NewMessage = serde_json::from_str(&json).map_err(|e| {
            StoreError::Internal(format!("a decrypted message is not a message: {e}"))
        })?;
        if body.role != stored.role {
            return Err(StoreError::Internal(
                "a sealed message's role differs from its stored role: the data was altered".into(),
            ));
        }
        body.create_time = stored.create_time;
        message.body = body;
        Ok(message)
    }

    /// A message stored in plaintext, or by versions that sealed only some fields.
    fn open_unbound_message(&self, mut message: Message) -> StoreResult<Message> {
        let body = &mut message.body;
        body.content = self.keys.open_unbound(&body.content)?;
        if let Some(reasoning) = &body.reasoning_content {
            body.reasoning_content = Some(self.keys.open_unbound(reasoning)?);
        }
        for call in &mut body.tool_calls {
            call.function.arguments = self.keys.open_unbound(&call.function.arguments)?;
        }
        Ok(message)
    }

    fn seal_messages(
        &self,
        id: &SessionId,
        list: MessageList,
        messages: Vec<NewMessage>,
    ) -> StoreResult<Vec<NewMessage>> {
        let place = Place::Message { session: id, list };
        messages
            .into_iter()
            .map(|m| self.seal_message(m, &place))
            .collect()
    }

    fn open_messages(
        &self,
        id: &SessionId,
        list: MessageList,
        messages: Vec<Message>,
    ) -> StoreResult<Vec<Message>> {
        let place = Place::Message { session: id, list };
        messages
            .into_iter()
            .map(|m| self.open_message(m, &place))
            .collect()
    }

    /// One stored entry for a state key: its hashed name under the primary key and the
    /// sealed JSON of key and value.
    fn seal_entry(&self, id: &SessionId, key: &str, value: Value) -> StoreResult<(String, Value)> {
        let name = self.keys.state_names(id, key).swap_remove(0);
        let entry = serde_json::json!({ "k": key, "v": value }).to_string();
        let place = Place::State {
            session: id,
            name: &name,
        };
        let sealed = self.keys.seal(&entry, &place)?;
        Ok((name, Value::String(sealed)))
    }

    /// A replace stores every entry under the primary's names; a merge also removes the
    /// key's entries under the other keys' names and in plaintext, so no stale copy stays.
    fn seal_state(&self, id: &SessionId, update: StateUpdate) -> StoreResult<StateUpdate> {
        Ok(match update {
            StateUpdate::Replace(state) => StateUpdate::Replace(
                state
                    .into_iter()
                    .map(|(key, value)| self.seal_entry(id, &key, value))
                    .collect::<StoreResult<_>>()?,
            ),
            StateUpdate::Merge(patch) => {
                let mut stored = JsonObject::new();
                for (key, value) in patch {
                    for name in self.keys.state_names(id, &key) {
                        stored.insert(name, Value::Null);
                    }
                    if !value.is_null() {
                        let (name, sealed) = self.seal_entry(id, &key, value)?;
                        stored.insert(name, sealed);
                    }
                    stored.insert(key, Value::Null);
                }
                StateUpdate::Merge(stored)
            }
        })
    }

    fn open_state(&self, id: &SessionId, stored: JsonObject) -> StoreResult<JsonObject> {
        // Several entries can hold one key only after an interrupted rotation: the one
        // under the primary's name wins, then any sealed one, then an unbound one.
        let mut best: std::collections::HashMap<String, (u8, Value)> = Default::default();
        for (name, value) in stored {
            let (key, value, rank) = match value {
                Value::String(text) if text.starts_with(PREFIX) => {
                    let place = Place::State {
                        session: id,
                        name: &name,
                    };
                    let entry: Value =
                        serde_json::from_str(&self.keys.open(&text, &place, "state entry")?)
                            .map_err(|e| {
                                StoreError::Internal(format!(
                                    "a decrypted state entry is not JSON: {e}"
                                ))
                            })?;
                    let Some(key) = entry.get("k").and_then(Value::as_str).map(str::to_string)
                    else {
                        return Err(StoreError::Internal(
                            "a decrypted state entry has no key".into(),
                        ));
                    };
                    let rank = if self.keys.state_names(id, &key)[0] == name {
                        2
                    } else {
                        1
                    };
                    (key, entry.get("v").cloned().unwrap_or(Value::Null), rank)
                }
                value if self.accept_unsealed => {
                    let value = match value {
                        Value::String(text) if text.starts_with(V1_PREFIX) => {
                            serde_json::from_str(&self.keys.open_unbound(&text)?).map_err(|e| {
                                StoreError::Internal(format!(
                                    "a decrypted state value is not JSON: {e}"
                                ))
                            })?
                        }
                        other => other,
                    };
                    (name, value, 0)
                }
                _ => return Err(unsealed("state entry")),
            };
            if best.get(&key).is_none_or(|(held, _)| rank > *held) {
                best.insert(key, (rank, value));
            }
        }
        Ok(best
            .into_iter()
            .map(|(key, (_, value))| (key, value))
            .collect())
    }

    fn open_session(&self, mut session: Session) -> StoreResult<Session> {
        let id = session.id.clone();
        session.messages = self.open_messages(&id, MessageList::Messages, session.messages)?;
        session.system_messages =
            self.open_messages(&id, MessageList::System, session.system_messages)?;
        session.state = self.open_state(&id, session.state)?;
        Ok(session)
    }

    fn open_record(&self, stream: &str, mut record: Record) -> StoreResult<Record> {
        record.body = if !record.body.starts_with(PREFIX) && self.accept_unsealed {
            self.keys.open_unbound(&record.body)?
        } else {
            let place = Place::Record {
                stream,
                id: &record.id,
            };
            self.keys.open(&record.body, &place, "record")?
        };
        Ok(record)
    }
}

#[async_trait]
impl SessionStore for EncryptedStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn get(&self, id: &SessionId, window: Window) -> StoreResult<Session> {
        let session = self.inner.get(id, window).await?;
        self.open_session(session)
    }

    async fn append(&self, id: &SessionId, mut append: Append) -> StoreResult<AppendOutcome> {
        append.messages = self.seal_messages(id, MessageList::Messages, append.messages)?;
        self.inner.append(id, append).await
    }

    async fn replace(
        &self,
        id: &SessionId,
        messages: Vec<NewMessage>,
        options: WriteOptions,
    ) -> StoreResult<WriteOutcome> {
        let messages = self.seal_messages(id, MessageList::Messages, messages)?;
        self.inner.replace(id, messages, options).await
    }

    async fn set_system_messages(
        &self,
        id: &SessionId,
        messages: Vec<NewMessage>,
        options: WriteOptions,
    ) -> StoreResult<WriteOutcome> {
        let messages = self.seal_messages(id, MessageList::System, messages)?;
        self.inner.set_system_messages(id, messages, options).await
    }

    async fn update_state(
        &self,
        id: &SessionId,
        update: StateUpdate,
        options: WriteOptions,
    ) -> StoreResult<StateOutcome> {
        let update = self.seal_state(id, update)?;
        let mut outcome = self.inner.update_state(id, update, options).await?;
        outcome.state = self.open_state(id, outcome.state)?;
        Ok(outcome)
    }

    async fn touch(&self, id: &SessionId, ttl: Duration) -> StoreResult<WriteOutcome> {
        self.inner.touch(id, ttl).await
    }

    async fn delete(&self, id: &SessionId, expected_version: Option<u64>) -> StoreResult<bool> {
        self.inner.delete(id, expected_version).await
    }

    async fn list(&self, query: ListQuery) -> StoreResult<ListPage> {
        self.inner.list(query).await
    }

    async fn stats(&self) -> StoreResult<StoreStats> {
        self.inner.stats().await
    }

    async fn health_check(&self) -> StoreResult<()> {
        self.inner.health_check().await
    }

    async fn put_record(&self, stream: &RecordStream, mut record: Record) -> StoreResult<()> {
        let name = stream.name();
        let place = Place::Record {
            stream: &name,
            id: &record.id,
        };
        record.body = self.keys.seal(&record.body, &place)?;
        self.inner.put_record(stream, record).await
    }

    async fn list_records(
        &self,
        stream: &RecordStream,
        range: &RecordRange,
    ) -> StoreResult<Vec<Record>> {
        let name = stream.name();
        self.inner
            .list_records(stream, range)
            .await?
            .into_iter()
            .map(|record| self.open_record(&name, record))
            .collect()
    }
}

/// What `rotate-keys` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rotation {
    pub sessions: u64,
    pub failures: Vec<String>,
}

/// Re-encrypts every live session under the primary key: each session is read and
/// written back with version checks (a concurrent write makes it start that session over),
/// keeping its remaining TTL. With `accept_unsealed`, values stored in plaintext or by
/// older versions are read and sealed; without it a session holding one is a failure.
/// Records expire within their retention and are not rewritten.
pub async fn rotate(
    inner: Arc<dyn SessionStore>,
    keys: Arc<Keyring>,
    accept_unsealed: bool,
) -> Rotation {
    use futures::StreamExt;
    let encrypted = if accept_unsealed {
        EncryptedStore::accepting_unsealed(inner.clone(), keys)
    } else {
        EncryptedStore::new(inner.clone(), keys)
    };
    let mut rotation = Rotation::default();
    let ids: Vec<SessionId> = {
        let sessions = crate::transfer::export(inner, String::new());
        futures::pin_mut!(sessions);
        let mut ids = Vec::new();
        while let Some(session) = sessions.next().await {
            match session {
                Ok(session) => ids.push(session.id),
                Err(error) => {
                    rotation.failures.push(format!("listing: {error}"));
                    return rotation;
                }
            }
        }
        ids
    };
    for id in ids {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match rewrite(&encrypted, &id).await {
                Ok(()) => {
                    rotation.sessions += 1;
                    break;
                }
                Err(StoreError::NotFound(_)) => break,
                Err(StoreError::VersionMismatch { .. }) if attempts < 5 => continue,
                Err(error) => {
                    rotation
                        .failures
                        .push(format!("session {:?}: {error}", id.as_str()));
                    break;
                }
            }
        }
    }
    rotation
}

async fn rewrite(store: &EncryptedStore, id: &SessionId) -> StoreResult<()> {
    let session = store.get(id, Window::All).await?;
    let ttl = crate::transfer::remaining_ttl(&session).max(Duration::from_secs(1));
    let version = |v| WriteOptions {
        expected_version: Some(v),
        ttl,
    };
    // Rewritten messages keep their times.
    let bodies = |list: Vec<Message>| list.iter().map(NewMessage::copy_of).collect::<Vec<_>>();
    let written = store
        .replace(id, bodies(session.messages), version(session.version))
        .await?;
    let written = store
        .set_system_messages(
            id,
            bodies(session.system_messages),
            version(written.version),
        )
        .await?;
    store
        .update_state(
            id,
            StateUpdate::Replace(session.state),
            version(written.version),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> String {
        STANDARD.encode([byte; 32])
    }

    fn place(session: &SessionId) -> Place<'_> {
        Place::Message {
            session,
            list: MessageList::Messages,
        }
    }

    #[test]
    fn sealed_values_open_with_any_configured_key_and_never_with_a_wrong_one() {
        let a = SessionId::new("a");
        let old = Keyring::parse(&format!("k1:{}", key(1))).unwrap();
        let sealed = old.seal("hello", &place(&a)).unwrap();
        assert!(sealed.starts_with("csai-enc:2:k1:") && !sealed.contains("hello"));
        assert_ne!(
            sealed,
            old.seal("hello", &place(&a)).unwrap(),
            "a fresh nonce per value"
        );
        assert_eq!(old.open(&sealed, &place(&a), "x").unwrap(), "hello");
        let rotated = Keyring::parse(&format!("k2:{},k1:{}", key(2), key(1))).unwrap();
        assert_eq!(rotated.open(&sealed, &place(&a), "x").unwrap(), "hello");
        assert!(
            rotated
                .seal("x", &place(&a))
                .unwrap()
                .starts_with("csai-enc:2:k2:")
        );
        let missing = Keyring::parse(&format!("k2:{}", key(2))).unwrap();
        let error = missing.open(&sealed, &place(&a), "x").unwrap_err();
        assert!(error.to_string().contains("not configured"), "{error}");
        let wrong = Keyring::parse(&format!("k1:{}", key(9))).unwrap();
        let error = wrong.open(&sealed, &place(&a), "x").unwrap_err();
        assert!(error.to_string().contains("does not decrypt"), "{error}");
    }

    #[test]
    fn a_sealed_value_opens_only_in_the_place_it_was_sealed_for() {
        let keys = Keyring::parse(&format!("k1:{}", key(1))).unwrap();
        let (a, b) = (SessionId::new("t1/a"), SessionId::new("t2/a"));
        let sealed = keys.seal("hello", &place(&a)).unwrap();
        let elsewhere = [
            place(&b),
            Place::Message {
                session: &a,
                list: MessageList::System,
            },
            Place::State {
                session: &a,
                name: "messages",
            },
            Place::Record {
                stream: "t1/a",
                id: "messages",
            },
        ];
        for other in elsewhere {
            let error = keys.open(&sealed, &other, "x").unwrap_err();
            assert!(error.to_string().contains("does not decrypt"), "{other:?}");
        }
    }

    #[test]
    fn unsealed_and_v1_values_are_refused_but_read_by_the_migration_path() {
        let keys = Keyring::parse(&format!("k1:{}", key(1))).unwrap();
        let a = SessionId::new("a");
        // A value as versions before the binding sealed it: the key id as associated data.
        let mut data = b"old secret".to_vec();
        let nonce = [7u8; NONCE_LEN];
        keys.keys[0]
            .aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(b"k1"),
                &mut data,
            )
            .unwrap();
        let v1 = format!(
            "csai-enc:1:k1:{}",
            STANDARD.encode([nonce.as_slice(), &data].concat())
        );
        for value in ["plain text", v1.as_str()] {
            let error = keys.open(value, &place(&a), "message").unwrap_err();
            assert!(error.to_string().contains("is not sealed"), "{error}");
        }
        assert_eq!(keys.open_unbound(&v1).unwrap(), "old secret");
        assert_eq!(keys.open_unbound("plain text").unwrap(), "plain text");
    }

    #[test]
    fn state_names_are_keyed_hashes_that_differ_by_session_and_key() {
        let keys = Keyring::parse(&format!("k2:{},k1:{}", key(2), key(1))).unwrap();
        let (a, b) = (SessionId::new("a"), SessionId::new("b"));
        let names = keys.state_names(&a, "phone");
        assert_eq!(names.len(), 2);
        assert_ne!(names[0], names[1], "one name per key");
        assert!(
            names
                .iter()
                .all(|n| n.starts_with('~') && !n.contains("phone"))
        );
        assert_ne!(names, keys.state_names(&b, "phone"));
        assert_ne!(names, keys.state_names(&a, "phone2"));
        assert_eq!(
            names,
            keys.state_names(&a, "phone"),
            "stable, so merges find them"
        );
    }

    #[test]
    fn bad_keys_are_refused_without_showing_them() {
        for text in [
            "",
            "nocolon",
            "k1:not-base64!",
            &format!("k1:{}", STANDARD.encode([1u8; 16])),
            &format!("k1:{0},k1:{0}", key(1)),
        ] {
            let error = Keyring::parse(text).unwrap_err();
            assert!(!error.contains(&key(1)), "{error}");
        }
    }
}
