//! The in-memory backend: sharded maps, an expiry index per shard, and byte accounting.
//!
//! Sessions live in `SHARDS` independently locked maps, so calls on different sessions
//! rarely wait for each other. Each shard keeps its sessions ordered by expiry in a
//! `BTreeSet`, so the sweeper frees expired sessions by looking only at the ones due.
//! Messages sit in a `Vec` per session: an append pushes the new messages (amortised
//! O(1)) and never copies or re-serialises the existing ones. Each is kept compact
//! ([`Compact`]): its seq is its index, and only messages with more than a role and text
//! pay for the full structure.
//!
//! When `max_sessions` or `max_bytes` would be exceeded, expired sessions are swept first;
//! if that does not free enough, the write is refused with
//! [`StoreError::LimitExceeded`] (RESOURCE_EXHAUSTED). Nothing is ever evicted early.

use crate::domain::{
    Append, AppendOutcome, JsonObject, ListPage, ListQuery, Message, NewMessage, Role, Session,
    SessionId, SessionSummary, StateOutcome, StateUpdate, StoreStats, UsageTotal, Window,
    WriteOptions, WriteOutcome, json_bytes, tool_safe_start_by,
};
use crate::store::records::{Record, RecordCounts, RecordRange, RecordStream};
use crate::store::sweeper;
use crate::store::{
    REMEMBERED_REQUEST_IDS, RecordStore, SessionStore, StoreError, StoreResult, check_version,
    page_token,
};
use async_trait::async_trait;
use parking_lot::{Mutex, MutexGuard};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

mod config;
mod record_items;

use record_items::record_bytes;

pub use config::{BACKEND, MemoryLimits, MemoryOptions};

const SHARDS: usize = 64;
/// Request ids remembered per session for idempotent appends.
/// Bytes counted for a session besides its messages and state.
const SESSION_OVERHEAD_BYTES: u64 = 256;

/// The in-memory session store.
pub struct MemoryStore {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
    limits: MemoryLimits,
    sessions: AtomicU64,
    messages: AtomicU64,
    bytes: AtomicU64,
    records: Mutex<Records>,
}

/// Learning data and security logs: each stream's records by id (which sorts by time).
#[derive(Default)]
struct Records {
    streams: HashMap<RecordStream, BTreeMap<String, Record>>,
    by_expiry: BTreeSet<(SystemTime, RecordStream, String)>,
}

#[derive(Default)]
struct Shard {
    sessions: HashMap<SessionId, Entry>,
    by_expiry: BTreeSet<(SystemTime, SessionId)>,
}

/// A message as this store keeps it. Most messages are a role and text, and this struct
/// is paid once per message: 48 bytes instead of the ~270 of [`Message`], so at
/// 200-byte messages RSS stays near the content's size. The seq is the index + 1.
#[derive(Clone, Debug)]
struct Compact {
    create_time: SystemTime,
    content: Box<str>,
    /// Everything else, with empty content, when the message has more than role and text.
    rest: Option<Box<NewMessage>>,
    role: Role,
}

impl Compact {
    fn new(mut message: NewMessage, now: SystemTime) -> Self {
        let create_time = message.create_time.take().unwrap_or(now);
        let content = std::mem::take(&mut message.content).into_boxed_str();
        let role = message.role;
        let rest = (message != NewMessage::text(role, String::new())).then(|| Box::new(message));
        Self {
            create_time,
            content,
            rest,
            role,
        }
    }

    fn message(&self, seq: u64) -> Message {
        let mut body = match &self.rest {
            Some(rest) => NewMessage::clone(rest),
            None => NewMessage::text(self.role, String::new()),
        };
        body.content = self.content.to_string();
        body.stored(seq, self.create_time)
    }
}

struct Entry {
    messages: Vec<Compact>,
    system_messages: Vec<Message>,
    state: JsonObject,
    version: u64,
    create_time: SystemTime,
    update_time: SystemTime,
    expire_time: SystemTime,
    message_bytes: u64,
    system_bytes: u64,
    state_bytes: u64,
    usage_total: UsageTotal,
    recent_appends: VecDeque<(String, AppendOutcome)>,
}

impl Entry {
    fn new(now: SystemTime) -> Self {
        Self {
            messages: Vec::new(),
            system_messages: Vec::new(),
            state: JsonObject::new(),
            version: 0,
            create_time: now,
            update_time: now,
            expire_time: now,
            message_bytes: 0,
            system_bytes: 0,
            state_bytes: 0,
            usage_total: UsageTotal::default(),
            recent_appends: VecDeque::new(),
        }
    }

    fn bytes(&self, id: &SessionId) -> u64 {
        SESSION_OVERHEAD_BYTES
            + id.as_str().len() as u64
            + self.message_bytes
            + self.system_bytes
            + self.state_bytes
    }

    fn summary(&self, id: &SessionId) -> SessionSummary {
        SessionSummary {
            id: id.clone(),
            message_count: self.messages.len() as u64,
            usage_total: self.usage_total,
            version: self.version,
            update_time: self.update_time,
            expire_time: self.expire_time,
        }
    }

    fn outcome(&self) -> WriteOutcome {
        WriteOutcome {
            version: self.version,
            expire_time: self.expire_time,
        }
    }
}

fn messages_bytes(messages: &[NewMessage]) -> u64 {
    messages.iter().map(NewMessage::approx_bytes).sum()
}

fn compact(messages: Vec<NewMessage>, now: SystemTime) -> Vec<Compact> {
    messages
        .into_iter()
        .map(|message| Compact::new(message, now))
        .collect()
}

fn numbered(messages: Vec<NewMessage>, first_seq: u64, now: SystemTime) -> Vec<Message> {
    (first_seq..)
        .zip(messages)
        .map(|(seq, message)| message.stored(seq, now))
        .collect()
}

impl MemoryStore {
    /// An empty store with these limits.
    pub fn new(limits: MemoryLimits) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            limits,
            sessions: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            records: Mutex::new(Records::default()),
        }
    }

    /// Starts a task that frees expired sessions every `interval`; it ends with the store.
    pub fn spawn_sweeper(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        sweeper::spawn(self, interval, "memory", |store: Arc<Self>| async move {
            Ok(store.sweep_expired() as u64)
        })
    }

    /// Frees every session and record whose expiry has passed; returns how many.
    pub fn sweep_expired(&self) -> usize {
        let now = SystemTime::now();
        let mut freed = 0;
        for shard in &self.shards {
            let mut shard = shard.lock();
            while let Some((expire_time, id)) = shard.by_expiry.first().cloned() {
                if expire_time > now {
                    break;
                }
                self.remove(&mut shard, &id);
                freed += 1;
            }
        }
        let mut records = self.records.lock();
        while let Some((expire_time, stream, id)) = records.by_expiry.first().cloned() {
            if expire_time > now {
                break;
            }
            records.by_expiry.pop_first();
            if let Some(stream_records) = records.streams.get_mut(&stream) {
                if let Some(record) = stream_records.remove(&id) {
                    self.bytes
                        .fetch_sub(record_bytes(&stream, &record), Ordering::Relaxed);
                    freed += 1;
                }
                if stream_records.is_empty() {
                    records.streams.remove(&stream);
                }
            }
        }
        freed
    }

    fn shard(&self, id: &SessionId) -> MutexGuard<'_, Shard> {
        let index = self.hasher.hash_one(id) as usize % self.shards.len();
        self.shards[index].lock()
    }

    /// Removes a session and its accounting.
    fn remove(&self, shard: &mut Shard, id: &SessionId) -> Option<Entry> {
        let entry = shard.sessions.remove(id)?;
        shard.by_expiry.remove(&(entry.expire_time, id.clone()));
        self.sessions.fetch_sub(1, Ordering::Relaxed);
        self.messages
            .fetch_sub(entry.messages.len() as u64, Ordering::Relaxed);
        self.bytes.fetch_sub(entry.bytes(id), Ordering::Relaxed);
        Some(entry)
    }

    /// Drops the session if it has expired, so that it reads as absent.
    fn expire_if_due(&self, shard: &mut Shard, id: &SessionId, now: SystemTime) {
        if shard
            .sessions
            .get(id)
            .is_some_and(|entry| entry.expire_time <= now)
        {
            self.remove(shard, id);
        }
    }

    /// Reserves room for `extra_bytes` more (and a new session if `new_session`), or
    /// refuses without reserving anything.
    fn reserve(&self, extra_bytes: i64, new_session: bool) -> StoreResult<()> {
        if new_session {
            let before = self.sessions.fetch_add(1, Ordering::Relaxed);
            if let Some(max) = self.limits.max_sessions
                && before >= max
            {
                self.sessions.fetch_sub(1, Ordering::Relaxed);
                return Err(StoreError::LimitExceeded(format!(
                    "the in-memory store is full: max_sessions = {max}; delete sessions or raise the limit"
                )));
            }
        }
        if extra_bytes >= 0 {
            let extra = extra_bytes as u64;
            let before = self.bytes.fetch_add(extra, Ordering::Relaxed);
            if let Some(max) = self.limits.max_bytes
                && before + extra > max
            {
                self.bytes.fetch_sub(extra, Ordering::Relaxed);
                if new_session {
                    self.sessions.fetch_sub(1, Ordering::Relaxed);
                }
                return Err(StoreError::LimitExceeded(format!(
                    "the in-memory store is full: max_bytes = {max}, {before} in use, this write needs {extra} more; delete sessions or raise the limit"
                )));
            }
        } else {
            self.bytes
                .fetch_sub(extra_bytes.unsigned_abs(), Ordering::Relaxed);
        }
        Ok(())
    }

    /// Runs a write; if it hits a limit, sweeps expired sessions and tries once more.
    fn with_sweep_retry<T>(&self, mut write: impl FnMut() -> StoreResult<T>) -> StoreResult<T> {
        match write() {
            Err(StoreError::LimitExceeded(_)) if self.sweep_expired() > 0 => write(),
            result => result,
        }
    }

    /// The common path of every write except append: expiry, version check, room for the
    /// new size, then `change` on the (possibly new) entry, then version and expiry.
    ///
    /// `prepare` sees the current entry and returns the change in bytes plus whatever
    /// `change` needs; `change` runs only once the room is reserved.
    fn write_entry<P, T>(
        &self,
        id: &SessionId,
        options: &WriteOptions,
        prepare: impl FnOnce(Option<&Entry>) -> (i64, P),
        change: impl FnOnce(&mut Entry, P, SystemTime) -> T,
    ) -> StoreResult<(T, WriteOutcome)> {
        let now = SystemTime::now();
        let mut shard = self.shard(id);
        self.expire_if_due(&mut shard, id, now);
        let existing = shard.sessions.get(id);
        check_version(options.expected_version, existing.map_or(0, |e| e.version))?;
        let is_new = existing.is_none();
        let (mut delta, prepared) = prepare(existing);
        if is_new {
            delta += (SESSION_OVERHEAD_BYTES + id.as_str().len() as u64) as i64;
        }
        self.reserve(delta, is_new)?;

        let shard = &mut *shard;
        let entry = shard
            .sessions
            .entry(id.clone())
            .or_insert_with(|| Entry::new(now));
        let old_expiry = entry.expire_time;
        let result = change(entry, prepared, now);
        entry.version += 1;
        entry.update_time = now;
        entry.expire_time = now + options.ttl;
        let outcome = entry.outcome();
        shard.by_expiry.remove(&(old_expiry, id.clone()));
        shard.by_expiry.insert((outcome.expire_time, id.clone()));
        Ok((result, outcome))
    }

    fn append_once(&self, id: &SessionId, append: &mut Append) -> StoreResult<AppendOutcome> {
        let now = SystemTime::now();
        let mut shard = self.shard(id);
        self.expire_if_due(&mut shard, id, now);
        let existing = shard.sessions.get(id);
        if let (Some(request_id), Some(entry)) = (&append.request_id, existing)
            && let Some((_, earlier)) = entry.recent_appends.iter().find(|(r, _)| r == request_id)
        {
            return Ok(AppendOutcome {
                deduplicated: true,
                ..earlier.clone()
            });
        }
        check_version(
            append.options.expected_version,
            existing.map_or(0, |e| e.version),
        )?;
        let is_new = existing.is_none();
        let added_bytes = messages_bytes(&append.messages);
        let mut delta = added_bytes;
        if is_new {
            delta += SESSION_OVERHEAD_BYTES + id.as_str().len() as u64;
        }
        self.reserve(delta as i64, is_new)?;

        let shard = &mut *shard;
        let entry = shard
            .sessions
            .entry(id.clone())
            .or_insert_with(|| Entry::new(now));
        let first_seq = entry.messages.len() as u64 + 1;
        let new_messages = std::mem::take(&mut append.messages);
        let count = new_messages.len() as u64;
        entry.usage_total += UsageTotal::of(&new_messages);
        entry.messages.extend(compact(new_messages, now));
        entry.message_bytes += added_bytes;
        self.messages.fetch_add(count, Ordering::Relaxed);
        let old_expiry = entry.expire_time;
        entry.version += 1;
        entry.update_time = now;
        entry.expire_time = now + append.options.ttl;
        let outcome = AppendOutcome {
            first_seq,
            count,
            version: entry.version,
            expire_time: entry.expire_time,
            deduplicated: false,
        };
        if let Some(request_id) = append.request_id.take() {
            if entry.recent_appends.len() == REMEMBERED_REQUEST_IDS {
                entry.recent_appends.pop_front();
            }
            entry
                .recent_appends
                .push_back((request_id, outcome.clone()));
        }
        shard.by_expiry.remove(&(old_expiry, id.clone()));
        shard.by_expiry.insert((outcome.expire_time, id.clone()));
        Ok(outcome)
    }

    fn replace_messages(
        &self,
        id: &SessionId,
        messages: &mut Vec<NewMessage>,
        options: &WriteOptions,
        system: bool,
    ) -> StoreResult<WriteOutcome> {
        let new_bytes = messages_bytes(messages);
        let (message_delta, outcome) = self.write_entry(
            id,
            options,
            |existing| {
                let old = existing.map_or(0, |e| {
                    if system {
                        e.system_bytes
                    } else {
                        e.message_bytes
                    }
                });
                (new_bytes as i64 - old as i64, ())
            },
            |entry, (), now| {
                if system {
                    entry.system_messages = numbered(std::mem::take(messages), 1, now);
                    entry.system_bytes = new_bytes;
                    0
                } else {
                    entry.usage_total = UsageTotal::of(messages.iter());
                    let stored = compact(std::mem::take(messages), now);
                    let delta = stored.len() as i64 - entry.messages.len() as i64;
                    entry.messages = stored;
                    entry.message_bytes = new_bytes;
                    delta
                }
            },
        )?;
        if message_delta >= 0 {
            self.messages
                .fetch_add(message_delta as u64, Ordering::Relaxed);
        } else {
            self.messages
                .fetch_sub(message_delta.unsigned_abs(), Ordering::Relaxed);
        }
        Ok(outcome)
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn get(&self, id: &SessionId, window: Window) -> StoreResult<Session> {
        let now = SystemTime::now();
        let mut shard = self.shard(id);
        self.expire_if_due(&mut shard, id, now);
        let entry = shard
            .sessions
            .get(id)
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        let start = match window {
            Window::All => 0,
            Window::LastN(n) => {
                tool_safe_start_by(entry.messages.len(), n as usize, |i| entry.messages[i].role)
            }
            // Seqs are 1..=len, so the message after `seq` sits at index `seq`.
            Window::AfterSeq(seq) => (seq.min(entry.messages.len() as u64)) as usize,
        };
        Ok(Session {
            id: id.clone(),
            messages: (start..entry.messages.len())
                .map(|i| entry.messages[i].message(i as u64 + 1))
                .collect(),
            system_messages: entry.system_messages.clone(),
            state: entry.state.clone(),
            version: entry.version,
            message_count: entry.messages.len() as u64,
            usage_total: entry.usage_total,
            create_time: entry.create_time,
            update_time: entry.update_time,
            expire_time: entry.expire_time,
        })
    }

    async fn append(&self, id: &SessionId, mut append: Append) -> StoreResult<AppendOutcome> {
        self.with_sweep_retry(|| self.append_once(id, &mut append))
    }

    async fn replace(
        &self,
        id: &SessionId,
        mut messages: Vec<NewMessage>,
        options: WriteOptions,
    ) -> StoreResult<WriteOutcome> {
        self.with_sweep_retry(|| self.replace_messages(id, &mut messages, &options, false))
    }

    async fn set_system_messages(
        &self,
        id: &SessionId,
        mut messages: Vec<NewMessage>,
        options: WriteOptions,
    ) -> StoreResult<WriteOutcome> {
        self.with_sweep_retry(|| self.replace_messages(id, &mut messages, &options, true))
    }

    async fn update_state(
        &self,
        id: &SessionId,
        update: StateUpdate,
        options: WriteOptions,
    ) -> StoreResult<StateOutcome> {
        self.with_sweep_retry(|| {
            let (state, write) = self.write_entry(
                id,
                &options,
                |existing| {
                    let mut new_state = existing.map(|e| e.state.clone()).unwrap_or_default();
                    update.clone().apply(&mut new_state);
                    let new_bytes = json_bytes(&new_state);
                    let delta = new_bytes as i64 - existing.map_or(0, |e| e.state_bytes) as i64;
                    (delta, (new_state, new_bytes))
                },
                |entry, (new_state, new_bytes), _| {
                    entry.state = new_state;
                    entry.state_bytes = new_bytes;
                    entry.state.clone()
                },
            )?;
            Ok(StateOutcome { write, state })
        })
    }

    async fn touch(&self, id: &SessionId, ttl: Duration) -> StoreResult<WriteOutcome> {
        let now = SystemTime::now();
        let mut shard = self.shard(id);
        self.expire_if_due(&mut shard, id, now);
        let shard = &mut *shard;
        let entry = shard
            .sessions
            .get_mut(id)
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        shard.by_expiry.remove(&(entry.expire_time, id.clone()));
        entry.expire_time = now + ttl;
        shard.by_expiry.insert((entry.expire_time, id.clone()));
        Ok(entry.outcome())
    }

    async fn delete(&self, id: &SessionId, expected_version: Option<u64>) -> StoreResult<bool> {
        let now = SystemTime::now();
        let mut shard = self.shard(id);
        self.expire_if_due(&mut shard, id, now);
        let version = shard.sessions.get(id).map_or(0, |e| e.version);
        check_version(expected_version, version)?;
        Ok(self.remove(&mut shard, id).is_some())
    }

    async fn list(&self, query: ListQuery) -> StoreResult<ListPage> {
        let after = query.page_token.as_deref().map(decode_token).transpose()?;
        let now = SystemTime::now();
        let mut found: Vec<SessionSummary> = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock();
            found.extend(
                shard
                    .sessions
                    .iter()
                    .filter(|(id, entry)| {
                        entry.expire_time > now
                            && id.as_str().starts_with(&query.prefix)
                            && after.as_deref().is_none_or(|after| id.as_str() > after)
                    })
                    .map(|(id, entry)| entry.summary(id)),
            );
        }
        found.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        let page_size = query.page_size.max(1) as usize;
        let next_page_token =
            (found.len() > page_size).then(|| encode_token(&found[page_size - 1].id));
        found.truncate(page_size);
        Ok(ListPage {
            sessions: found,
            next_page_token,
        })
    }

    async fn stats(&self) -> StoreResult<StoreStats> {
        self.sweep_expired();
        let records = self.count_records(None).await?;
        let now = SystemTime::now();
        let mut usage_total = UsageTotal::default();
        for shard in &self.shards {
            for entry in shard.lock().sessions.values() {
                if entry.expire_time > now {
                    usage_total += entry.usage_total;
                }
            }
        }
        Ok(StoreStats {
            usage_total,
            backend: self.backend().to_string(),
            active_sessions: self.sessions.load(Ordering::Relaxed),
            total_messages: self.messages.load(Ordering::Relaxed),
            approximate_bytes: self.bytes.load(Ordering::Relaxed),
            learning_records: records.learning,
            security_logs: records.security,
        })
    }

    async fn health_check(&self) -> StoreResult<()> {
        Ok(())
    }
}

/// Page tokens hold the last listed id.
const TOKEN_TAG: &str = "m1";

fn encode_token(id: &SessionId) -> String {
    page_token::encode(TOKEN_TAG, id.as_str().as_bytes())
}

fn decode_token(token: &str) -> StoreResult<String> {
    String::from_utf8(page_token::decode(TOKEN_TAG, token)?)
        .map_err(|_| StoreError::InvalidPageToken("the position is not UTF-8".into()))
}

#[cfg(test)]
mod tests;
