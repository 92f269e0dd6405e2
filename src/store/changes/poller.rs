//! The polling fallback of backends without a usable change feed (MongoDB, DynamoDB):
//! every interval, one task per sidecar reads the header of each watched session and
//! lists each watched prefix, and delivers what differs from its last look to the hub.
//!
//! Its cost is bounded by what is watched, not by the write rate: one header read per
//! watched session (however many watch it) and one listing of each watched prefix per
//! interval, at most [`CONCURRENT_READS`] at a time.

use super::{Change, ChangeHub, ChangeKind, epoch_ms};
use crate::domain::{ListQuery, SessionId, Window};
use crate::store::{SessionStore, StoreError};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Header reads in flight at once.
const CONCURRENT_READS: usize = 16;
/// Sessions per listing page.
const PAGE: u32 = 500;

/// What the poller last saw of a session: (version, message count, expiry in ms).
type Seen = (u64, u64, u64);

/// Polls `store` (the backend as it is: stored ids) every `interval` until the hub closes.
pub async fn run(store: Arc<dyn SessionStore>, hub: Arc<ChangeHub>, interval: Duration) {
    let mut sessions: HashMap<String, Option<Seen>> = HashMap::new();
    let mut prefixes = HashMap::new();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = hub.closed() => return,
        }
        poll_sessions(store.as_ref(), &hub, &mut sessions).await;
        poll_prefixes(store.as_ref(), &hub, &mut prefixes).await;
    }
}

async fn poll_sessions(
    store: &dyn SessionStore,
    hub: &ChangeHub,
    seen: &mut HashMap<String, Option<Seen>>,
) {
    let watched = hub.watched_sessions();
    // A set: thousands of watched sessions would make a list's `contains` quadratic.
    let still: std::collections::HashSet<&String> = watched.iter().collect();
    seen.retain(|id, _| still.contains(id));
    let reads = futures::stream::iter(watched)
        .map(|id| async move {
            let header = store.get(&SessionId::new(id.clone()), Window::HEADER).await;
            (id, header)
        })
        .buffer_unordered(CONCURRENT_READS)
        .collect::<Vec<_>>()
        .await;
    for (id, header) in reads {
        let now = match header {
            Ok(session) => Some((
                session.version,
                session.message_count,
                epoch_ms(session.expire_time),
            )),
            Err(StoreError::NotFound(_)) => None,
            Err(error) => {
                tracing::debug!(%error, "polling a watched session failed; next interval");
                continue;
            }
        };
        match seen.insert(id.clone(), now) {
            Some(before) => {
                if let Some(change) = difference(&id, before, now) {
                    hub.deliver(&change);
                }
            }
            // A first look cannot tell what changed since the watcher read the session:
            // its watchers are woken to compare (one read per new watcher).
            None => hub.wake(&id),
        }
    }
}

async fn poll_prefixes(
    store: &dyn SessionStore,
    hub: &ChangeHub,
    seen: &mut HashMap<String, HashMap<String, (Seen, u64)>>,
) {
    let watched = hub.watched_prefixes();
    seen.retain(|prefix, _| watched.iter().any(|(p, _)| p == prefix));
    for (prefix, since) in watched {
        let Some(listed) = list_all(store, &prefix).await else {
            continue;
        };
        let Some(before) = seen.insert(prefix, listed.clone()) else {
            // A first listing: what changed since the prefix was first watched (and a
            // second before, for the clocks) is reported, the rest is the baseline.
            let since = epoch_ms(since).saturating_sub(1000);
            for (id, (now, updated_ms)) in &listed {
                if *updated_ms >= since
                    && let Some(change) = difference(id, None, Some(*now))
                {
                    hub.deliver(&change);
                }
            }
            continue;
        };
        let (before, listed): (HashMap<String, Seen>, HashMap<String, Seen>) = (
            before.into_iter().map(|(id, (s, _))| (id, s)).collect(),
            listed.into_iter().map(|(id, (s, _))| (id, s)).collect(),
        );
        for (id, now) in &listed {
            if let Some(change) = difference(id, before.get(id).copied(), Some(*now)) {
                hub.deliver(&change);
            }
        }
        for (id, was) in &before {
            if !listed.contains_key(id)
                && let Some(change) = difference(id, Some(*was), None)
            {
                hub.deliver(&change);
            }
        }
    }
}

/// Every live session under `prefix`: what the poller compares, and its update time (ms).
async fn list_all(store: &dyn SessionStore, prefix: &str) -> Option<HashMap<String, (Seen, u64)>> {
    let mut listed = HashMap::new();
    let mut page_token = None;
    loop {
        let page = match store
            .list(ListQuery {
                prefix: prefix.to_string(),
                page_size: PAGE,
                page_token,
            })
            .await
        {
            Ok(page) => page,
            Err(error) => {
                tracing::debug!(%error, "polling a watched prefix failed; next interval");
                return None;
            }
        };
        for s in page.sessions {
            listed.insert(
                s.id.as_str().to_string(),
                (
                    (s.version, s.message_count, epoch_ms(s.expire_time)),
                    epoch_ms(s.update_time),
                ),
            );
        }
        match page.next_page_token {
            Some(token) => page_token = Some(token),
            None => return Some(listed),
        }
    }
}

/// The change between two looks at a session, if any. What kind it was is a guess from
/// the counters (a watcher reads the session anyway): more messages is an append, a
/// vanished session expired if its expiry has passed, else it was deleted.
fn difference(id: &str, before: Option<Seen>, now: Option<Seen>) -> Option<Change> {
    let change = |kind, (version, message_count, expire_ms): Seen| Change {
        id: id.to_string(),
        kind,
        version,
        message_count: Some(message_count),
        expire_ms,
    };
    match (before, now) {
        (None, None) => None,
        (Some(before), Some(now)) if before == now => None,
        (Some((_, _, expire_ms)), None) => {
            let expired = expire_ms <= epoch_ms(SystemTime::now());
            let kind = if expired {
                ChangeKind::Expired
            } else {
                ChangeKind::Deleted
            };
            Some(change(kind, (0, 0, 0)))
        }
        (None, Some(now)) => Some(change(ChangeKind::Appended, now)),
        (Some(before), Some(now)) => {
            let kind = if now.1 > before.1 {
                ChangeKind::Appended
            } else if now.1 < before.1 {
                ChangeKind::Replaced
            } else if now.0 == before.0 {
                ChangeKind::Touched
            } else {
                ChangeKind::State
            };
            Some(change(kind, now))
        }
    }
}
