//! The keys of encryption at rest and the `csai-enc:2` envelope: AES-256-GCM sealing bound
//! to a value's place, opening with any configured key, and the keyed names of state keys.

use crate::domain::SessionId;
use crate::store::{StoreError, StoreResult};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use std::fmt;

const VERSION: &str = "csai-enc:2";
pub(super) const PREFIX: &str = "csai-enc:2:";
/// Values sealed by versions before the binding: the key id was their only associated data.
pub(super) const V1_PREFIX: &str = "csai-enc:1:";

/// One AES-256 key, its id, and the HMAC key derived from it that hides state keys.
pub struct EncryptionKey {
    pub id: String,
    aead: LessSafeKey,
    names: hmac::Key,
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncryptionKey({}, <redacted>)", self.id)
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
pub(super) fn unsealed(what: &str) -> StoreError {
    StoreError::Internal(format!(
        "a stored {what} is not sealed (plaintext, or sealed by an older version without its \
         place bound); it is refused while encryption is on. `csai-sidecar rotate-keys \
         --accept-unsealed` seals such values"
    ))
}

/// The primary key (first) and the older keys that may still be read.
#[derive(Debug)]
pub struct Keyring {
    keys: Vec<EncryptionKey>,
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
            if keys.iter().any(|k: &EncryptionKey| k.id == id) {
                return Err(format!("key {id} is given twice"));
            }
            let unbound =
                UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| format!("key {id}: rejected"))?;
            let names = hmac::sign(
                &hmac::Key::new(hmac::HMAC_SHA256, &bytes),
                b"csai-enc state key names",
            );
            keys.push(EncryptionKey {
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
    pub(super) fn open_unbound(&self, value: &str) -> StoreResult<String> {
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

    fn key(&self, id: &str) -> StoreResult<&EncryptionKey> {
        self.keys.iter().find(|k| k.id == id).ok_or_else(|| {
            StoreError::Internal(format!(
                "a value is encrypted with key {id:?}, which is not configured (encryption_keys); configured: {}",
                self.keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// The stored name of state key `key` under the primary key: a keyed hash, so the
    /// backend can merge by key without learning the keys.
    pub(super) fn state_name(&self, session: &SessionId, key: &str) -> String {
        self.keys[0].state_name(session, key)
    }

    /// The stored names of state key `key` under every configured key, the primary's
    /// first (a merge clears the others).
    pub(super) fn state_names(&self, session: &SessionId, key: &str) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| k.state_name(session, key))
            .collect()
    }
}

impl EncryptionKey {
    fn state_name(&self, session: &SessionId, key: &str) -> String {
        let tag = hmac::sign(&self.names, &framed([session.as_str(), key]));
        format!("~{}", URL_SAFE_NO_PAD.encode(&tag.as_ref()[..16]))
    }
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
