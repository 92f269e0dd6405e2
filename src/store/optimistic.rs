//! Helpers of the backends whose writes are optimistic and whose messages live in
//! documents of their own (MongoDB, DynamoDB): per-session write queues, incarnation
//! tokens, and how far message expiry runs ahead.

use crate::domain::SessionId;
use std::time::Duration;

/// Striped async locks by session id, so that one process's writes to one session queue
/// up instead of colliding: backends whose writes are optimistic (MongoDB transactions,
/// DynamoDB conditions) stay correct without them, but retry storms under many concurrent
/// writers of one session are avoided. Writers in other processes still meet only in the
/// backend's own concurrency control.
pub struct WriteLocks {
    stripes: Vec<tokio::sync::Mutex<()>>,
    hasher: std::hash::RandomState,
}

impl WriteLocks {
    /// 1024 stripes: contention between different sessions is rare.
    pub fn new() -> Self {
        Self {
            stripes: (0..1024).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: std::hash::RandomState::new(),
        }
    }

    /// Waits for this process's earlier writes to the session to finish.
    pub async fn lock(&self, id: &SessionId) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::BuildHasher;
        let stripe = self.hasher.hash_one(id) as usize % self.stripes.len();
        self.stripes[stripe].lock().await
    }
}

impl Default for WriteLocks {
    fn default() -> Self {
        Self::new()
    }
}

/// A token unique to this moment, process and call: names one incarnation of a session in
/// backends whose message documents outlive a delete for a while (MongoDB, DynamoDB).
pub fn new_generation() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{nanos:x}-{:x}-{:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// How far the expiry of message buckets runs ahead of their session's expiry (MongoDB,
/// DynamoDB): the TTL, at most an hour. Moving it rewrites every bucket, so it moves only
/// when the session's expiry catches up with it.
pub fn horizon_lead(ttl: Duration) -> Duration {
    ttl.min(Duration::from_secs(3600))
}
