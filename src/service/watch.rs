//! Change feeds: what WatchSession and WatchSessions send, derived from reads of the store
//! each time the hub says a session changed, so every event reflects stored data and a
//! client resumes from its last position without a gap or a repeated message.
//!
//! A feed is pulled: nothing is computed or buffered until the client takes the next
//! event, so a watcher that reads slowly costs a pending read, not memory; what changed
//! meanwhile reaches it collapsed into the next read's events.

use crate::domain::{JsonObject, ListQuery, Message, SessionId, Window};
use crate::service::ValidationError;
use crate::store::changes::hub::{RegisterError, Taken};
use crate::store::changes::{
    Change, ChangeHub, ChangeKind, PrefixSubscription, SessionSubscription, epoch_ms, time_of_ms,
};
use crate::store::{SessionStore, StoreError, StoreResult};
use futures::stream::{self, BoxStream, StreamExt};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Messages in one event at most: a long catch-up comes in several.
const CHUNK_MESSAGES: usize = 100;
/// Bytes of message content in one event, roughly, at most.
const CHUNK_BYTES: usize = 1 << 20;
/// How far back a WatchSessions resume lists, before its position: covers the clock
/// difference between this sidecar and the backend that stamps update times.
const RESUME_SKEW: Duration = Duration::from_secs(5);
/// Sessions whose expiry one WatchSessions stream keeps track of, at most.
const EXPIRIES_TRACKED: usize = 100_000;
/// How often a feed looks again at a session whose expiry has passed by this sidecar's
/// clock but not yet by the backend's.
const EXPIRY_RECHECK: Duration = Duration::from_millis(100);
/// Sessions per page of a WatchSessions catch-up listing.
const CATCH_UP_PAGE: u32 = 500;

/// Why a feed cannot start or go on.
#[derive(Debug)]
pub enum WatchError {
    Invalid(ValidationError),
    Register(RegisterError),
    Store(StoreError),
    /// The sidecar is shutting down; the position is where to resume.
    Closing,
    /// A WatchSessions stream fell behind; its last event says where to resume.
    FellBehind {
        limit: usize,
    },
}

impl From<StoreError> for WatchError {
    fn from(error: StoreError) -> Self {
        WatchError::Store(error)
    }
}

/// What changed in a watched session.
#[derive(Clone, Debug, PartialEq)]
pub enum SessionChange {
    /// Messages appended (seqs after the last the client has).
    Appended(Vec<Message>),
    /// The messages were replaced: these are the first of the new history (seqs from 1);
    /// more may follow as `Appended`.
    Replaced(Vec<Message>),
    SystemMessages(Vec<Message>),
    /// The whole state after the change.
    State(JsonObject),
    /// Only the expiry changed.
    Touched,
    Deleted,
    Expired,
    /// The catch-up is over: live changes follow.
    CaughtUp,
}

/// One event of a WatchSession feed.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionEvent {
    pub change: SessionChange,
    /// The session's version once the client has this event and those before it.
    pub version: u64,
    /// When the session expires, as of this event (None while it does not exist).
    pub expire_time: Option<SystemTime>,
    /// Where a new WatchSession resumes after this event.
    pub resume_token: String,
}

/// Where a WatchSession client stands: the version and messages it has, and what
/// identifies its last message and the session (to tell a replace or a re-creation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionPosition {
    pub version: u64,
    pub after_seq: u64,
    /// Create time (µs) of message `after_seq`; 0 when unknown.
    last_message_us: u64,
    /// Create time (µs) of the session; 0 when unknown.
    session_us: u64,
}

fn us(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl SessionPosition {
    /// A client that has messages up to `after_seq` and the session at `version` (0: none).
    pub fn new(version: u64, after_seq: u64) -> Self {
        Self {
            version,
            after_seq,
            ..Self::default()
        }
    }

    /// The opaque token events carry.
    pub fn token(&self) -> String {
        format!(
            "s1.{}.{}.{}.{}",
            self.version, self.after_seq, self.last_message_us, self.session_us
        )
    }

    /// Reads a token made by [`token`](Self::token).
    pub fn parse(token: &str) -> Result<Self, ValidationError> {
        let invalid = || {
            ValidationError::new(
                "resume_token",
                "not a token of WatchSession (pass the resume_token of an event as it came)",
            )
        };
        let parts: Vec<u64> = token
            .strip_prefix("s1.")
            .ok_or_else(invalid)?
            .split('.')
            .map(|p| p.parse().map_err(|_| invalid()))
            .collect::<Result<_, _>>()?;
        match parts[..] {
            [version, after_seq, last_message_us, session_us] => Ok(Self {
                version,
                after_seq,
                last_message_us,
                session_us,
            }),
            _ => Err(invalid()),
        }
    }
}

/// What identifies a value the client has, without keeping it.
fn digest<T: std::fmt::Debug>(value: &T) -> [u8; 32] {
    Sha256::digest(format!("{value:?}")).into()
}

/// The feed of one session. `stored_id` is how the hub knows it (tenant-prefixed).
pub fn watch_session(
    hub: &Arc<ChangeHub>,
    store: Arc<dyn SessionStore>,
    id: SessionId,
    stored_id: &str,
    from: SessionPosition,
) -> Result<BoxStream<'static, Result<SessionEvent, WatchError>>, WatchError> {
    let subscription = hub.watch_session(stored_id).map_err(WatchError::Register)?;
    let feed = SessionFeed {
        store,
        id,
        subscription,
        at: from,
        system: None,
        state: None,
        expire: None,
        queue: VecDeque::new(),
        started: false,
        ended: false,
        expiry_checked: tokio::time::Instant::now(),
    };
    Ok(stream::unfold(feed, |mut feed| async move {
        let next = feed.next().await?;
        Some((next, feed))
    })
    .boxed())
}

struct SessionFeed {
    store: Arc<dyn SessionStore>,
    id: SessionId,
    subscription: SessionSubscription,
    at: SessionPosition,
    /// Digests of what the client has, once known.
    system: Option<[u8; 32]>,
    state: Option<[u8; 32]>,
    expire: Option<SystemTime>,
    queue: VecDeque<SessionEvent>,
    started: bool,
    ended: bool,
    /// When the expiry timer last woke the feed.
    expiry_checked: tokio::time::Instant,
}

impl SessionFeed {
    async fn next(&mut self) -> Option<Result<SessionEvent, WatchError>> {
        if self.ended {
            return None;
        }
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(Ok(event));
            }
            if self.started {
                // A backend whose clock lags ours still has the session when its expiry
                // has passed here: look again at most every EXPIRY_RECHECK meanwhile.
                let expiry = self.expire.map(|at| {
                    let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
                    let due = tokio::time::Instant::now() + wait + Duration::from_millis(5);
                    due.max(self.expiry_checked + EXPIRY_RECHECK)
                });
                let changed = match expiry {
                    Some(deadline) => tokio::select! {
                        changed = self.subscription.changed() => changed,
                        _ = tokio::time::sleep_until(deadline) => {
                            self.expiry_checked = tokio::time::Instant::now();
                            true
                        }
                    },
                    None => self.subscription.changed().await,
                };
                if !changed {
                    self.ended = true;
                    return Some(Err(WatchError::Closing));
                }
            }
            if let Err(error) = self.refresh().await {
                self.ended = true;
                return Some(Err(error.into()));
            }
            if !self.started {
                self.started = true;
                self.push(SessionChange::CaughtUp, self.at);
            }
        }
    }

    /// Queues an event that leaves the client at `at`.
    fn push(&mut self, change: SessionChange, at: SessionPosition) {
        self.at = at;
        self.queue.push_back(SessionEvent {
            change,
            version: at.version,
            expire_time: self.expire,
            resume_token: at.token(),
        });
    }

    /// Reads the session and queues what differs from what the client has. Every event
    /// but the last keeps the version the client had, so resuming after any of them
    /// sends again what came after it.
    async fn refresh(&mut self) -> StoreResult<()> {
        let before = self.at;
        let window = Window::AfterSeq(before.after_seq.saturating_sub(1));
        let (store, id) = (&self.store, &self.id);
        let read = self
            .subscription
            .shared_read(before.after_seq)
            .get_or_init(|| store.get(id, window))
            .await
            .clone();
        let session = match read {
            Ok(session) => session,
            Err(StoreError::NotFound(_)) => {
                let expired = self.expire.is_some_and(|at| at <= SystemTime::now());
                // An absent session has what a new one starts with: a first write sends
                // its messages and expiry, not empty system messages and state.
                self.system = Some(digest(&Vec::<Message>::new()));
                self.state = Some(digest(&JsonObject::new()));
                self.expire = None;
                if before.version > 0 {
                    let gone = if expired {
                        SessionChange::Expired
                    } else {
                        SessionChange::Deleted
                    };
                    self.push(gone, SessionPosition::default());
                }
                return Ok(());
            }
            Err(error) => return Err(error),
        };
        let session_us = us(session.create_time);
        let recreated = before.session_us != 0 && before.session_us != session_us;
        let last_is_known = match session.messages.iter().find(|m| m.seq == before.after_seq) {
            _ if before.after_seq == 0 => true,
            Some(message) => {
                before.last_message_us == 0 || before.last_message_us == us(message.create_time)
            }
            None => false,
        };
        let unchanged = session.version == before.version && !recreated;
        if unchanged && self.system.is_none() {
            // Resumed at the current version: the client has everything.
            self.system = Some(digest(&session.system_messages));
            self.state = Some(digest(&session.state));
            self.expire = Some(session.expire_time);
            if last_is_known {
                return Ok(());
            }
        }
        let mut changes = Vec::new();
        let mut at = SessionPosition {
            version: before.version,
            session_us,
            ..before
        };
        let (messages, replaced) =
            if recreated || !last_is_known || session.message_count < before.after_seq {
                (self.store.get(&self.id, Window::All).await?.messages, true)
            } else {
                let new: Vec<Message> = session
                    .messages
                    .iter()
                    .filter(|m| m.seq > before.after_seq)
                    .cloned()
                    .collect();
                (new, false)
            };
        if replaced {
            at.after_seq = 0;
            at.last_message_us = 0;
        }
        let mut first = replaced;
        for chunk in chunks(messages) {
            let last = chunk.last().expect("chunks are never empty");
            at.after_seq = last.seq;
            at.last_message_us = us(last.create_time);
            let change = if std::mem::take(&mut first) {
                SessionChange::Replaced(chunk)
            } else {
                SessionChange::Appended(chunk)
            };
            changes.push((change, at));
        }
        if first {
            // Replaced by an empty history.
            changes.push((SessionChange::Replaced(Vec::new()), at));
        }
        let system = digest(&session.system_messages);
        if self.system != Some(system) {
            self.system = Some(system);
            changes.push((SessionChange::SystemMessages(session.system_messages), at));
        }
        let state = digest(&session.state);
        if self.state != Some(state) {
            self.state = Some(state);
            changes.push((SessionChange::State(session.state), at));
        }
        if self.expire != Some(session.expire_time) {
            self.expire = Some(session.expire_time);
            // Every event says the expiry: its own event only when nothing else changed.
            if changes.is_empty() {
                changes.push((SessionChange::Touched, at));
            }
        }
        let count = changes.len();
        for (i, (change, mut at)) in changes.into_iter().enumerate() {
            if i + 1 == count {
                at.version = session.version;
            }
            self.push(change, at);
        }
        // Nothing visible changed (a write of equal values): the client moves on anyway.
        self.at.version = session.version;
        self.at.session_us = session_us;
        Ok(())
    }
}

/// `messages` in events of at most [`CHUNK_MESSAGES`] and about [`CHUNK_BYTES`].
fn chunks(messages: Vec<Message>) -> Vec<Vec<Message>> {
    let mut chunks = Vec::new();
    let mut chunk = Vec::new();
    let mut bytes = 0;
    for message in messages {
        let size = message.body.content.len() + 64;
        if !chunk.is_empty() && (chunk.len() == CHUNK_MESSAGES || bytes + size > CHUNK_BYTES) {
            chunks.push(std::mem::take(&mut chunk));
            bytes = 0;
        }
        bytes += size;
        chunk.push(message);
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks
}

/// What happened to a session under a watched prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SummaryKind {
    Created,
    Appended,
    Replaced,
    SystemMessages,
    State,
    Touched,
    Deleted,
    Expired,
    /// Changed while the client was away (a resume's catch-up).
    Changed,
    /// The catch-up is over: live changes follow.
    CaughtUp,
    /// Too many sessions changed before the client read them: resume from this event.
    FellBehind,
}

/// One event of a WatchSessions feed.
#[derive(Clone, Debug, PartialEq)]
pub struct SummaryEvent {
    pub kind: SummaryKind,
    /// The session's id as the client knows it (empty for CaughtUp and FellBehind).
    pub session_id: String,
    pub version: u64,
    /// The seq of the session's last message, when known.
    pub message_count: Option<u64>,
    pub expire_time: Option<SystemTime>,
    /// Where a new WatchSessions resumes after this event.
    pub resume_token: String,
}

/// Reads a WatchSessions token: the time (ms) up to which the client has the changes.
pub fn parse_prefix_token(token: &str) -> Result<u64, ValidationError> {
    token
        .strip_prefix("p1.")
        .and_then(|ms| ms.parse().ok())
        .ok_or_else(|| {
            ValidationError::new(
                "resume_token",
                "not a token of WatchSessions (pass the resume_token of an event as it came)",
            )
        })
}

fn prefix_token(ms: u64) -> String {
    format!("p1.{ms}")
}

/// The feed of every session under `prefix`. `stored_prefix` is how the hub knows it
/// (tenant-prefixed); `unscoped` turns a stored id back into the client's. With a
/// `resume_from` time, sessions changed since (less a margin for clock skew) come first.
#[allow(clippy::too_many_arguments)]
pub fn watch_sessions(
    hub: &Arc<ChangeHub>,
    store: Arc<dyn SessionStore>,
    prefix: String,
    stored_prefix: &str,
    unscoped: Arc<dyn Fn(&str) -> String + Send + Sync>,
    resume_from: Option<u64>,
    buffer: usize,
) -> Result<BoxStream<'static, Result<SummaryEvent, WatchError>>, WatchError> {
    let subscription = hub
        .watch_prefix(stored_prefix, buffer)
        .map_err(WatchError::Register)?;
    let feed = PrefixFeed {
        store,
        prefix,
        unscoped,
        subscription,
        buffer,
        position: resume_from.unwrap_or_else(|| epoch_ms(SystemTime::now())),
        catch_up: resume_from,
        expiries: Expiries::default(),
        queue: VecDeque::new(),
        started: false,
        fell_behind: false,
        ended: false,
    };
    Ok(stream::unfold(feed, |mut feed| async move {
        let next = feed.next().await?;
        Some((next, feed))
    })
    .boxed())
}

/// When each reported session expires, soonest first, to report its expiry.
#[derive(Default)]
struct Expiries {
    by_time: BTreeSet<(u64, String)>,
    by_id: HashMap<String, u64>,
}

impl Expiries {
    fn set(&mut self, id: &str, expire_ms: u64) {
        if let Some(old) = self.by_id.remove(id) {
            self.by_time.remove(&(old, id.to_string()));
        }
        if expire_ms > 0 && self.by_id.len() < EXPIRIES_TRACKED {
            self.by_id.insert(id.to_string(), expire_ms);
            self.by_time.insert((expire_ms, id.to_string()));
        }
    }

    fn next(&self) -> Option<u64> {
        self.by_time.first().map(|(ms, _)| *ms)
    }

    fn due(&mut self, now_ms: u64) -> Vec<String> {
        let mut due = Vec::new();
        while let Some((ms, _)) = self.by_time.first()
            && *ms <= now_ms
        {
            let (_, id) = self.by_time.pop_first().expect("just seen");
            self.by_id.remove(&id);
            due.push(id);
        }
        due
    }
}

struct PrefixFeed {
    store: Arc<dyn SessionStore>,
    prefix: String,
    unscoped: Arc<dyn Fn(&str) -> String + Send + Sync>,
    subscription: PrefixSubscription,
    buffer: usize,
    /// Time (ms) up to which the client has the changes.
    position: u64,
    catch_up: Option<u64>,
    expiries: Expiries,
    queue: VecDeque<SummaryEvent>,
    started: bool,
    /// Its FELL_BEHIND marker is queued: the stream ends after it.
    fell_behind: bool,
    ended: bool,
}

impl PrefixFeed {
    async fn next(&mut self) -> Option<Result<SummaryEvent, WatchError>> {
        if self.ended {
            return None;
        }
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(Ok(event));
            }
            if self.fell_behind {
                self.ended = true;
                return Some(Err(WatchError::FellBehind { limit: self.buffer }));
            }
            if !self.started {
                self.started = true;
                if let Some(since) = self.catch_up.take()
                    && let Err(error) = self.list_changed_since(since).await
                {
                    self.ended = true;
                    return Some(Err(error.into()));
                }
                self.push_marker(SummaryKind::CaughtUp);
                continue;
            }
            let deadline = self.expiries.next().map(|ms| {
                let wait = time_of_ms(ms)
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                tokio::time::Instant::now() + wait + Duration::from_millis(5)
            });
            match self.subscription.take_until(deadline).await {
                Some(Taken::Changes(changes)) => {
                    for change in changes {
                        self.push_change(&change);
                    }
                }
                Some(Taken::FellBehind) => {
                    // What is queued goes out, the marker last, then the stream ends.
                    self.push_marker(SummaryKind::FellBehind);
                    self.fell_behind = true;
                }
                Some(Taken::Closed) => {
                    self.ended = true;
                    return Some(Err(WatchError::Closing));
                }
                None => {
                    if let Err(error) = self.check_expiries().await {
                        self.ended = true;
                        return Some(Err(error.into()));
                    }
                }
            }
        }
    }

    fn push_marker(&mut self, kind: SummaryKind) {
        self.queue.push_back(SummaryEvent {
            kind,
            session_id: String::new(),
            version: 0,
            message_count: None,
            expire_time: None,
            resume_token: prefix_token(self.position),
        });
    }

    fn push_change(&mut self, change: &Change) {
        let kind = match change.kind {
            ChangeKind::Deleted => SummaryKind::Deleted,
            ChangeKind::Expired => SummaryKind::Expired,
            ChangeKind::Touched => SummaryKind::Touched,
            _ if change.version == 1 => SummaryKind::Created,
            ChangeKind::Appended => SummaryKind::Appended,
            ChangeKind::Replaced => SummaryKind::Replaced,
            ChangeKind::SystemMessages => SummaryKind::SystemMessages,
            ChangeKind::State => SummaryKind::State,
        };
        self.expiries.set(&change.id, change.expire_ms);
        self.position = self.position.max(epoch_ms(SystemTime::now()));
        self.queue.push_back(SummaryEvent {
            kind,
            session_id: (self.unscoped)(&change.id),
            version: change.version,
            message_count: change.message_count,
            expire_time: (change.expire_ms > 0).then(|| time_of_ms(change.expire_ms)),
            resume_token: prefix_token(self.position),
        });
    }

    /// Reports the sessions whose expiry passed, unless a write extended them.
    async fn check_expiries(&mut self) -> StoreResult<()> {
        let now_ms = epoch_ms(SystemTime::now());
        for stored in self.expiries.due(now_ms) {
            let id = (self.unscoped)(&stored);
            match self
                .store
                .get(&SessionId::new(id.clone()), Window::HEADER)
                .await
            {
                Ok(session) => {
                    let again = now_ms + EXPIRY_RECHECK.as_millis() as u64;
                    self.expiries
                        .set(&stored, epoch_ms(session.expire_time).max(again));
                }
                Err(StoreError::NotFound(_)) => self.push_change(&Change {
                    id: stored,
                    kind: ChangeKind::Expired,
                    version: 0,
                    message_count: None,
                    expire_ms: 0,
                }),
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Queues a Changed event for every live session under the prefix updated since
    /// `since_ms` (less the skew margin).
    async fn list_changed_since(&mut self, since_ms: u64) -> StoreResult<()> {
        let since = time_of_ms(since_ms) - RESUME_SKEW;
        let mut page_token = None;
        loop {
            let page = self
                .store
                .list(ListQuery {
                    prefix: self.prefix.clone(),
                    page_size: CATCH_UP_PAGE,
                    page_token,
                })
                .await?;
            for summary in page.sessions {
                if summary.update_time < since {
                    continue;
                }
                self.queue.push_back(SummaryEvent {
                    kind: SummaryKind::Changed,
                    session_id: summary.id.as_str().to_string(),
                    version: summary.version,
                    message_count: Some(summary.message_count),
                    expire_time: Some(summary.expire_time),
                    resume_token: prefix_token(self.position),
                });
                if self.queue.len() > self.buffer.max(CATCH_UP_PAGE as usize) * 64 {
                    // A catch-up this large is a reload, not a resume: the dashboard
                    // lists the prefix itself.
                    break;
                }
            }
            match page.next_page_token {
                Some(token) => page_token = Some(token),
                None => break,
            }
        }
        self.position = self.position.max(epoch_ms(SystemTime::now()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{NewMessage, Role};

    #[test]
    fn tokens_round_trip_and_foreign_ones_are_refused() {
        let position = SessionPosition {
            version: 7,
            after_seq: 12,
            last_message_us: 1_700_000_000_123_456,
            session_us: 1_600_000_000_000_001,
        };
        assert_eq!(SessionPosition::parse(&position.token()), Ok(position));
        for foreign in [
            "",
            "p1.123",
            "s1.1.2.3",
            "s1.1.2.3.4.5",
            "s1.a.2.3.4",
            "s2.1.2.3.4",
        ] {
            let error = SessionPosition::parse(foreign).unwrap_err();
            assert_eq!(error.field, "resume_token", "{foreign:?}");
        }
        assert_eq!(parse_prefix_token(&prefix_token(42)), Ok(42));
        assert!(parse_prefix_token(&position.token()).is_err());
    }

    #[test]
    fn long_catch_ups_come_in_chunks_by_count_and_size() {
        let message = |seq: u64, bytes: usize| Message {
            seq,
            create_time: UNIX_EPOCH,
            body: NewMessage::text(Role::User, "x".repeat(bytes)),
        };
        let many: Vec<Message> = (1..=250).map(|seq| message(seq, 10)).collect();
        let sizes: Vec<usize> = chunks(many).iter().map(Vec::len).collect();
        assert_eq!(sizes, [100, 100, 50]);
        let big: Vec<Message> = (1..=5).map(|seq| message(seq, 400_000)).collect();
        let sizes: Vec<usize> = chunks(big).iter().map(Vec::len).collect();
        assert_eq!(sizes, [2, 2, 1]);
        assert!(chunks(Vec::new()).is_empty());
    }
}
