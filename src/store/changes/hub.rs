//! The in-process hub: this sidecar's watchers register here, and every change reaches
//! them here, whether written in this process, received from the bus or found by polling.
//!
//! Nothing in the hub grows with the rate of changes: a session's watchers share one
//! counter (a `watch` channel, so a watcher that has not looked yet sees "changed" once,
//! however many changes came), and a prefix watcher keeps at most one pending change per
//! session, up to its limit, past which it is told it fell behind.

use super::Change;
use crate::domain::Session;
use crate::store::StoreResult;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::SystemTime;
use tokio::sync::{Notify, OnceCell, watch};

/// A read of a session that the watchers woken by one signal share.
pub type SharedRead = Arc<Read>;
/// The outcome of one read, once made.
pub type Read = OnceCell<StoreResult<Session>>;

/// The watchers of one session: their wake-up counter, and the reads in flight per
/// (after_seq, counter), so that the N watchers of a session woken by one change make
/// one read of the backend, not N. A read is freed once its last reader is done.
struct Watched {
    changes: watch::Sender<u64>,
    reads: Mutex<HashMap<u64, (u64, Weak<Read>)>>,
}

/// The hub of one sidecar.
pub struct ChangeHub {
    origin: u64,
    sessions: Mutex<HashMap<String, Arc<Watched>>>,
    prefixes: Mutex<Vec<Weak<PrefixInbox>>>,
    closed: watch::Sender<bool>,
    watchers: AtomicUsize,
    max_watchers: usize,
}

/// Why a watcher was not registered.
#[derive(Debug, PartialEq, Eq)]
pub enum RegisterError {
    /// `max_watchers` streams are open.
    TooManyWatchers(usize),
    /// The sidecar is shutting down.
    Closed,
}

impl ChangeHub {
    /// A hub that admits at most `max_watchers` watchers at once.
    pub fn new(max_watchers: usize) -> Arc<Self> {
        // A replica's id only has to differ from the other replicas' on the bus.
        let origin = {
            use std::hash::{BuildHasher, RandomState};
            RandomState::new().hash_one((std::process::id(), std::time::SystemTime::now()))
        };
        Arc::new(Self {
            origin,
            sessions: Mutex::new(HashMap::new()),
            prefixes: Mutex::new(Vec::new()),
            closed: watch::channel(false).0,
            watchers: AtomicUsize::new(0),
            max_watchers,
        })
    }

    /// This replica's id on the bus.
    pub fn origin(&self) -> u64 {
        self.origin
    }

    /// Wakes the watchers of `change.id` and queues the change for the prefix watchers
    /// it falls under.
    pub fn deliver(&self, change: &Change) {
        self.wake(&change.id);
        let mut prefixes = self.prefixes.lock();
        prefixes.retain(|inbox| match inbox.upgrade() {
            Some(inbox) => {
                if change.id.starts_with(&inbox.prefix) {
                    inbox.push(change);
                }
                true
            }
            None => false,
        });
    }

    /// Wakes the watchers of the session stored as `id` to read it again.
    pub fn wake(&self, id: &str) {
        if let Some(watched) = self.sessions.lock().get(id) {
            watched.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Tells every watcher that changes may have been missed (the bus was down): session
    /// watchers read their session again, prefix watchers fall behind and resume.
    pub fn resync(&self) {
        for watched in self.sessions.lock().values() {
            watched.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
        for inbox in self.prefixes.lock().iter().filter_map(Weak::upgrade) {
            inbox.fall_behind();
        }
    }

    /// Ends every watcher's stream (the sidecar is shutting down).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Completes once [`close`](Self::close) was called.
    pub async fn closed(&self) {
        let mut closed = self.closed.subscribe();
        let _ = closed.wait_for(|closed| *closed).await;
    }

    fn admit(self: &Arc<Self>) -> Result<Admitted, RegisterError> {
        if *self.closed.borrow() {
            return Err(RegisterError::Closed);
        }
        let before = self.watchers.fetch_add(1, Ordering::AcqRel);
        if before >= self.max_watchers {
            self.watchers.fetch_sub(1, Ordering::AcqRel);
            return Err(RegisterError::TooManyWatchers(self.max_watchers));
        }
        Ok(Admitted(self.clone()))
    }

    /// Registers a watcher of the session stored as `id`.
    pub fn watch_session(self: &Arc<Self>, id: &str) -> Result<SessionSubscription, RegisterError> {
        let admitted = self.admit()?;
        let watched = match self.sessions.lock().entry(id.to_string()) {
            Entry::Occupied(entry) => entry.get().clone(),
            Entry::Vacant(entry) => entry
                .insert(Arc::new(Watched {
                    changes: watch::channel(0).0,
                    reads: Mutex::new(HashMap::new()),
                }))
                .clone(),
        };
        Ok(SessionSubscription {
            id: id.to_string(),
            changes: Some(watched.changes.subscribe()),
            watched,
            closed: self.closed.subscribe(),
            admitted,
        })
    }

    /// Registers a watcher of every session whose stored id starts with `prefix`, which
    /// falls behind once more than `limit` sessions have changes it has not taken.
    pub fn watch_prefix(
        self: &Arc<Self>,
        prefix: &str,
        limit: usize,
    ) -> Result<PrefixSubscription, RegisterError> {
        let admitted = self.admit()?;
        let inbox = Arc::new(PrefixInbox {
            prefix: prefix.to_string(),
            since: SystemTime::now(),
            limit,
            pending: Mutex::new(Pending::default()),
            notify: Notify::new(),
        });
        self.prefixes.lock().push(Arc::downgrade(&inbox));
        Ok(PrefixSubscription {
            inbox,
            closed: self.closed.subscribe(),
            admitted,
        })
    }

    /// The stored ids that have a watcher, for the poller.
    pub fn watched_sessions(&self) -> Vec<String> {
        self.sessions.lock().keys().cloned().collect()
    }

    /// The prefixes that have a watcher, each with when its first watcher came, for the
    /// poller.
    pub fn watched_prefixes(&self) -> Vec<(String, SystemTime)> {
        let mut prefixes: Vec<(String, SystemTime)> = self
            .prefixes
            .lock()
            .iter()
            .filter_map(|inbox| {
                inbox
                    .upgrade()
                    .map(|inbox| (inbox.prefix.clone(), inbox.since))
            })
            .collect();
        prefixes.sort();
        prefixes.dedup_by(|later, earlier| later.0 == earlier.0);
        prefixes
    }

    /// Watchers registered now.
    pub fn watchers(&self) -> usize {
        self.watchers.load(Ordering::Acquire)
    }
}

/// One admitted watcher; gives its place back when dropped.
struct Admitted(Arc<ChangeHub>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A watcher of one session.
pub struct SessionSubscription {
    id: String,
    changes: Option<watch::Receiver<u64>>,
    watched: Arc<Watched>,
    closed: watch::Receiver<bool>,
    admitted: Admitted,
}

impl SessionSubscription {
    /// Waits for a change of the session; false once the hub closes.
    pub async fn changed(&mut self) -> bool {
        let Some(changes) = self.changes.as_mut() else {
            return false;
        };
        tokio::select! {
            changed = changes.changed() => changed.is_ok(),
            _ = self.closed.wait_for(|closed| *closed) => false,
        }
    }

    /// The read of the session's messages after `after_seq` that every watcher woken by
    /// the latest change shares: the first to ask makes it (`OnceCell::get_or_init`), the
    /// others wait for it. A read begun after the change was signalled holds it.
    pub fn shared_read(&mut self, after_seq: u64) -> SharedRead {
        let generation = self.changes.as_mut().map_or(0, |c| *c.borrow_and_update());
        let mut reads = self.watched.reads.lock();
        if let Some((at, read)) = reads.get(&after_seq)
            && *at == generation
            && let Some(read) = read.upgrade()
        {
            return read;
        }
        let read = Arc::new(OnceCell::new());
        reads.retain(|_, (_, read)| read.strong_count() > 0);
        reads.insert(after_seq, (generation, Arc::downgrade(&read)));
        read
    }
}

impl Drop for SessionSubscription {
    fn drop(&mut self) {
        drop(self.changes.take());
        let mut sessions = self.admitted.0.sessions.lock();
        if let Some(watched) = sessions.get(&self.id)
            && watched.changes.receiver_count() == 0
        {
            sessions.remove(&self.id);
        }
    }
}

#[derive(Default)]
struct Pending {
    /// Per stored id: when it first came (to hand changes out in that order), the latest.
    changes: HashMap<String, (u64, Change)>,
    arrivals: u64,
    fell_behind: bool,
}

struct PrefixInbox {
    prefix: String,
    since: SystemTime,
    limit: usize,
    pending: Mutex<Pending>,
    notify: Notify,
}

impl PrefixInbox {
    fn push(&self, change: &Change) {
        let mut pending = self.pending.lock();
        if pending.fell_behind {
            return;
        }
        pending.arrivals += 1;
        let arrival = pending.arrivals;
        match pending.changes.entry(change.id.clone()) {
            Entry::Occupied(mut entry) => entry.get_mut().1 = change.clone(),
            Entry::Vacant(entry) => {
                entry.insert((arrival, change.clone()));
            }
        }
        let over = pending.changes.len() > self.limit;
        drop(pending);
        if over {
            self.fall_behind();
        }
        self.notify.notify_one();
    }

    /// Drops what is pending: the watcher resumes with a catch-up instead.
    fn fall_behind(&self) {
        let mut pending = self.pending.lock();
        pending.changes = HashMap::new();
        pending.fell_behind = true;
        drop(pending);
        self.notify.notify_one();
    }
}

/// What a prefix watcher takes from its inbox.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// The latest change of each session that changed, in the order they first changed.
    Changes(Vec<Change>),
    /// More than the limit of sessions changed before the watcher took them.
    FellBehind,
    /// The hub closed.
    Closed,
}

/// A watcher of every session under a prefix.
pub struct PrefixSubscription {
    inbox: Arc<PrefixInbox>,
    closed: watch::Receiver<bool>,
    #[allow(dead_code)] // held for its Drop
    admitted: Admitted,
}

impl PrefixSubscription {
    /// Waits until something changed, then takes it all.
    pub async fn take(&mut self) -> Taken {
        loop {
            if *self.closed.borrow() {
                return Taken::Closed;
            }
            let notified = self.inbox.notify.notified();
            {
                let mut pending = self.inbox.pending.lock();
                if pending.fell_behind {
                    return Taken::FellBehind;
                }
                if !pending.changes.is_empty() {
                    let mut changes: Vec<(u64, Change)> =
                        std::mem::take(&mut pending.changes).into_values().collect();
                    changes.sort_by_key(|(arrival, _)| *arrival);
                    return Taken::Changes(changes.into_iter().map(|(_, c)| c).collect());
                }
            }
            tokio::select! {
                _ = notified => {}
                _ = self.closed.wait_for(|closed| *closed) => return Taken::Closed,
            }
        }
    }

    /// Waits until something changed or `deadline` passes; None at the deadline.
    pub async fn take_until(&mut self, deadline: Option<tokio::time::Instant>) -> Option<Taken> {
        match deadline {
            None => Some(self.take().await),
            Some(deadline) => tokio::time::timeout_at(deadline, self.take()).await.ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::changes::ChangeKind;

    fn change(id: &str, version: u64) -> Change {
        Change {
            id: id.to_string(),
            kind: ChangeKind::Appended,
            version,
            message_count: Some(version),
            expire_ms: 0,
        }
    }

    #[tokio::test]
    async fn session_watchers_wake_once_and_their_entry_goes_with_the_last() {
        let hub = ChangeHub::new(10);
        let mut a = hub.watch_session("s").unwrap();
        let mut b = hub.watch_session("s").unwrap();
        for version in 1..=100 {
            hub.deliver(&change("s", version));
        }
        hub.deliver(&change("other", 1));
        assert!(a.changed().await);
        assert!(b.changed().await);
        // Coalesced: a hundred changes are one wake-up.
        let again = tokio::time::timeout(std::time::Duration::from_millis(20), a.changed()).await;
        assert!(again.is_err());
        assert_eq!(hub.watchers(), 2);
        drop(a);
        assert_eq!(hub.watched_sessions(), vec!["s".to_string()]);
        drop(b);
        assert!(hub.watched_sessions().is_empty());
        assert_eq!(hub.watchers(), 0);
    }

    #[tokio::test]
    async fn prefix_watchers_coalesce_by_session_and_fall_behind_past_their_limit() {
        let hub = ChangeHub::new(10);
        let mut watcher = hub.watch_prefix("t/", 3).unwrap();
        hub.deliver(&change("t/a", 1));
        hub.deliver(&change("t/b", 1));
        hub.deliver(&change("t/a", 2));
        hub.deliver(&change("u/a", 1));
        assert_eq!(
            watcher.take().await,
            Taken::Changes(vec![change("t/a", 2), change("t/b", 1)])
        );
        for id in ["t/1", "t/2", "t/3", "t/4"] {
            hub.deliver(&change(id, 1));
        }
        assert_eq!(watcher.take().await, Taken::FellBehind);
        hub.close();
        assert!(matches!(
            hub.watch_prefix("t/", 3),
            Err(RegisterError::Closed)
        ));
    }

    #[tokio::test]
    async fn the_watcher_limit_holds_and_frees_places() {
        let hub = ChangeHub::new(2);
        let a = hub.watch_session("a").unwrap();
        let _b = hub.watch_prefix("", 1).unwrap();
        assert_eq!(
            hub.watch_session("c").err(),
            Some(RegisterError::TooManyWatchers(2))
        );
        drop(a);
        assert!(hub.watch_session("c").is_ok());
    }

    #[tokio::test]
    async fn closing_ends_waiting_watchers() {
        let hub = ChangeHub::new(2);
        let mut session = hub.watch_session("a").unwrap();
        let mut prefix = hub.watch_prefix("", 5).unwrap();
        let closer = hub.clone();
        tokio::spawn(async move { closer.close() });
        assert!(!session.changed().await);
        assert_eq!(prefix.take().await, Taken::Closed);
    }
}
