//! Encryption at rest: a store decorator that seals message contents, tool-call
//! arguments, reasoning, system messages, state values and records with AES-256-GCM.
//!
//! Each value becomes `csai-enc:1:<key id>:<base64 of nonce, ciphertext and tag>`, with
//! a random 96-bit nonce per value and the key id as associated data. Writes use the
//! primary key; reads accept every configured key, so keys rotate without downtime
//! (`csai-sidecar rotate-keys` re-encrypts everything under the primary). A value that is
//! not sealed (written before encryption was turned on) is read as it is.

use crate::model::{
    Append, AppendOutcome, JsonObject, ListPage, ListQuery, Message, NewMessage, Session,
    SessionId, StateOutcome, StateUpdate, StoreStats, Window, WriteOptions, WriteOutcome,
};
use crate::records::{Record, RecordRange, RecordStream};
use crate::store::{SessionStore, StoreError, StoreResult};
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::Value;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

const PREFIX: &str = "csai-enc:1:";

/// One AES-256 key and its id.
pub struct Key {
    pub id: String,
    key: LessSafeKey,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({}, <redacted>)", self.id)
    }
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
            keys.push(Key {
                id: id.to_string(),
                key: LessSafeKey::new(unbound),
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

    /// Seals `plaintext` with the primary key.
    pub fn seal(&self, plaintext: &str) -> StoreResult<String> {
        let primary = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| StoreError::Internal("no randomness for a nonce".into()))?;
        let mut data = plaintext.as_bytes().to_vec();
        primary
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(primary.id.as_bytes()),
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

    /// Opens a sealed value; a value that is not sealed is returned as it is.
    pub fn open(&self, value: &str) -> StoreResult<String> {
        let Some(rest) = value.strip_prefix(PREFIX) else {
            return Ok(value.to_string());
        };
        let (id, encoded) = rest
            .split_once(':')
            .ok_or_else(|| StoreError::Internal("a sealed value without its key id".into()))?;
        let key = self.keys.iter().find(|k| k.id == id).ok_or_else(|| {
            StoreError::Internal(format!(
                "a value is encrypted with key {id:?}, which is not configured (encryption_keys); configured: {}",
                self.keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>().join(", ")
            ))
        })?;
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
            .key
            .open_in_place(nonce, Aad::from(id.as_bytes()), &mut data)
            .map_err(|_| {
                StoreError::Internal(format!(
                    "a value sealed with key {id:?} does not decrypt: the key with that id is not the one it was sealed with, or the data was altered"
                ))
            })?;
        String::from_utf8(plaintext.to_vec())
            .map_err(|_| StoreError::Internal("a decrypted value is not UTF-8".into()))
    }

    /// True if `value` is sealed with the primary key.
    pub fn is_primary(&self, value: &str) -> bool {
        value.starts_with(&format!("{PREFIX}{}:", self.keys[0].id))
    }
}

/// A store whose sensitive values are encrypted before they reach `inner`.
pub struct EncryptedStore {
    inner: Arc<dyn SessionStore>,
    keys: Arc<Keyring>,
}

impl EncryptedStore {
    /// Encrypts what `inner` stores with `keys`.
    pub fn new(inner: Arc<dyn SessionStore>, keys: Arc<Keyring>) -> Self {
        Self { inner, keys }
    }

    fn seal_message(&self, mut message: NewMessage) -> StoreResult<NewMessage> {
        message.content = self.keys.seal(&message.content)?;
        if let Some(reasoning) = &message.reasoning_content {
            message.reasoning_content = Some(self.keys.seal(reasoning)?);
        }
        for call in &mut message.tool_calls {
            call.function.arguments = self.keys.seal(&call.function.arguments)?;
        }
        Ok(message)
    }

    fn open_message(&self, mut message: Message) -> StoreResult<Message> {
        let body = &mut message.body;
        body.content = self.keys.open(&body.content)?;
        if let Some(reasoning) = &body.reasoning_content {
            body.reasoning_content = Some(self.keys.open(reasoning)?);
        }
        for call in &mut body.tool_calls {
            call.function.arguments = self.keys.open(&call.function.arguments)?;
        }
        Ok(message)
    }

    fn seal_messages(&self, messages: Vec<NewMessage>) -> StoreResult<Vec<NewMessage>> {
        messages.into_iter().map(|m| self.seal_message(m)).collect()
    }

    /// Each top-level state value becomes a sealed string of its JSON; null stays null,
    /// so a merge still removes keys.
    fn seal_state(&self, state: JsonObject) -> StoreResult<JsonObject> {
        state
            .into_iter()
            .map(|(key, value)| {
                let sealed = match value {
                    Value::Null => Value::Null,
                    value => Value::String(self.keys.seal(&value.to_string())?),
                };
                Ok((key, sealed))
            })
            .collect()
    }

    fn open_state(&self, state: JsonObject) -> StoreResult<JsonObject> {
        state
            .into_iter()
            .map(|(key, value)| {
                let opened = match value {
                    Value::String(text) if text.starts_with(PREFIX) => {
                        serde_json::from_str(&self.keys.open(&text)?).map_err(|e| {
                            StoreError::Internal(format!(
                                "a decrypted state value is not JSON: {e}"
                            ))
                        })?
                    }
                    other => other,
                };
                Ok((key, opened))
            })
            .collect()
    }

    fn open_session(&self, mut session: Session) -> StoreResult<Session> {
        session.messages = session
            .messages
            .into_iter()
            .map(|m| self.open_message(m))
            .collect::<StoreResult<_>>()?;
        session.system_messages = session
            .system_messages
            .into_iter()
            .map(|m| self.open_message(m))
            .collect::<StoreResult<_>>()?;
        session.state = self.open_state(session.state)?;
        Ok(session)
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
        append.messages = self.seal_messages(append.messages)?;
        self.inner.append(id, append).await
    }

    async fn replace(
        &self,
        id: &SessionId,
        messages: Vec<NewMessage>,
        options: WriteOptions,
    ) -> StoreResult<WriteOutcome> {
        self.inner
            .replace(id, self.seal_messages(messages)?, options)
            .await
    }

    async fn set_system_messages(
        &self,
        id: &SessionId,
        messages: Vec<NewMessage>,
        options: WriteOptions,
    ) -> StoreResult<WriteOutcome> {
        self.inner
            .set_system_messages(id, self.seal_messages(messages)?, options)
            .await
    }

    async fn update_state(
        &self,
        id: &SessionId,
        update: StateUpdate,
        options: WriteOptions,
    ) -> StoreResult<StateOutcome> {
        let update = match update {
            StateUpdate::Replace(state) => StateUpdate::Replace(self.seal_state(state)?),
            StateUpdate::Merge(patch) => StateUpdate::Merge(self.seal_state(patch)?),
        };
        let mut outcome = self.inner.update_state(id, update, options).await?;
        outcome.state = self.open_state(outcome.state)?;
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
        record.body = self.keys.seal(&record.body)?;
        self.inner.put_record(stream, record).await
    }

    async fn list_records(
        &self,
        stream: &RecordStream,
        range: &RecordRange,
    ) -> StoreResult<Vec<Record>> {
        self.inner
            .list_records(stream, range)
            .await?
            .into_iter()
            .map(|mut record| {
                record.body = self.keys.open(&record.body)?;
                Ok(record)
            })
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
/// keeping its remaining TTL. Records expire within their retention and are not rewritten.
pub async fn rotate(inner: Arc<dyn SessionStore>, keys: Arc<Keyring>) -> Rotation {
    use futures::StreamExt;
    let encrypted = EncryptedStore::new(inner.clone(), keys);
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

    #[test]
    fn sealed_values_open_with_any_configured_key_and_never_with_a_wrong_one() {
        let old = Keyring::parse(&format!("k1:{}", key(1))).unwrap();
        let sealed = old.seal("hello").unwrap();
        assert!(sealed.starts_with("csai-enc:1:k1:") && !sealed.contains("hello"));
        assert_ne!(
            sealed,
            old.seal("hello").unwrap(),
            "a fresh nonce per value"
        );
        assert_eq!(old.open(&sealed).unwrap(), "hello");
        let rotated = Keyring::parse(&format!("k2:{},k1:{}", key(2), key(1))).unwrap();
        assert_eq!(rotated.open(&sealed).unwrap(), "hello");
        assert!(rotated.seal("x").unwrap().starts_with("csai-enc:1:k2:"));
        let missing = Keyring::parse(&format!("k2:{}", key(2))).unwrap();
        assert!(
            missing
                .open(&sealed)
                .unwrap_err()
                .to_string()
                .contains("not configured")
        );
        let wrong = Keyring::parse(&format!("k1:{}", key(9))).unwrap();
        assert!(
            wrong
                .open(&sealed)
                .unwrap_err()
                .to_string()
                .contains("does not decrypt")
        );
        assert_eq!(old.open("plain text").unwrap(), "plain text");
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
