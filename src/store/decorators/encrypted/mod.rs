//! Encryption at rest: a store decorator that seals everything the bot wrote, except what
//! a backend must read, with AES-256-GCM bound to where each value belongs.
//!
//! A sealed value is `csai-enc:2:<key id>:<base64 of nonce, ciphertext and tag>`, with a
//! random 96-bit nonce per value. Its associated data names the format, the key id and the
//! value's place: the (tenant-qualified) session id and the field (message list, state
//! key) or the record stream and id. A value copied into another session, list, state key
//! or record therefore does not open. A message is stored as its role and usage counters
//! (the tool-safe window and the usage total need them) and one sealed JSON of everything
//! else; a state entry as a keyed hash of its key and one sealed JSON of key and value; a
//! record as its sealed body.
//!
//! Writes use the primary key; reads accept every configured key, so keys rotate without
//! downtime. Reads refuse values that are not sealed this way (plaintext, or the older
//! `csai-enc:1` format that bound only the key id): `rotate-keys --accept-unsealed` is the
//! explicit path that seals them.

mod keyring;

pub use keyring::{Keyring, MessageList, Place};

use crate::domain::{
    Append, AppendOutcome, JsonObject, ListPage, ListQuery, Message, NewMessage, Session,
    SessionId, StateOutcome, StateUpdate, StoreStats, Window, WriteOptions, WriteOutcome,
};
use crate::store::records::{Record, RecordCounts, RecordRange, RecordStream};
use crate::store::{RecordStore, SessionStore, StoreError, StoreResult};
use async_trait::async_trait;
use keyring::{PREFIX, V1_PREFIX, unsealed};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

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

    /// The message as stored: its role and provider usage (backends need them: the
    /// tool-safe window, the session's usage total) and one sealed JSON of the rest.
    fn seal_message(&self, message: NewMessage, place: &Place<'_>) -> StoreResult<NewMessage> {
        let json = serde_json::to_string(&message)
            .map_err(|e| StoreError::Internal(format!("a message does not encode: {e}")))?;
        let mut stored = NewMessage::text(message.role, self.keys.seal(&json, place)?);
        stored.create_time = message.create_time;
        stored.usage = message.usage;
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

    /// The sealed JSON of a state key and its value, stored under `name` (the key's hashed
    /// name under the primary key).
    fn seal_entry(
        &self,
        id: &SessionId,
        name: &str,
        key: &str,
        value: Value,
    ) -> StoreResult<Value> {
        let entry = serde_json::json!({ "k": key, "v": value }).to_string();
        let place = Place::State { session: id, name };
        Ok(Value::String(self.keys.seal(&entry, &place)?))
    }

    /// A replace stores every entry under the primary's names; a merge also removes the
    /// key's entries under the other keys' names and in plaintext, so no stale copy stays.
    fn seal_state(&self, id: &SessionId, update: StateUpdate) -> StoreResult<StateUpdate> {
        Ok(match update {
            StateUpdate::Replace(state) => StateUpdate::Replace(
                state
                    .into_iter()
                    .map(|(key, value)| {
                        let name = self.keys.state_name(id, &key);
                        let sealed = self.seal_entry(id, &name, &key, value)?;
                        Ok((name, sealed))
                    })
                    .collect::<StoreResult<_>>()?,
            ),
            StateUpdate::Merge(patch) => {
                let mut stored = JsonObject::new();
                for (key, value) in patch {
                    let mut names = self.keys.state_names(id, &key).into_iter();
                    let primary = names.next().expect("a keyring has a primary key");
                    for older in names {
                        stored.insert(older, Value::Null);
                    }
                    let sealed = match value {
                        Value::Null => Value::Null,
                        value => self.seal_entry(id, &primary, &key, value)?,
                    };
                    stored.insert(primary, sealed);
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
                    let rank = if self.keys.state_name(id, &key) == name {
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
}

#[async_trait]
impl RecordStore for EncryptedStore {
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

    /// Counting reads no record body, so nothing is opened.
    async fn count_records(&self, tenant: Option<&str>) -> StoreResult<RecordCounts> {
        self.inner.count_records(tenant).await
    }
}
