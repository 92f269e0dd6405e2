//! Whole-store figures (sessions, messages, bytes) for the metrics gauges and tenants'
//! stats: on Redis and DynamoDB they cost a scan of the whole store, so one runs at most
//! once per `stats_refresh_interval`, and never two at once.

use crate::domain::StoreStats;
use crate::store::{SessionStore, StoreResult};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The last figures and when they were read.
pub struct StatsCache {
    store: Arc<dyn SessionStore>,
    max_age: Duration,
    latest: parking_lot::Mutex<Option<(Instant, StoreStats)>>,
    /// Held for the length of a scan: callers that come meanwhile wait and share it.
    scanning: tokio::sync::Mutex<()>,
}

impl StatsCache {
    /// Figures of `store`, scanned again once they are `max_age` old.
    pub fn new(store: Arc<dyn SessionStore>, max_age: Duration) -> Arc<Self> {
        Arc::new(Self {
            store,
            max_age,
            latest: parking_lot::Mutex::new(None),
            scanning: tokio::sync::Mutex::new(()),
        })
    }

    /// The last figures read, however old; None before the first scan finished.
    pub fn latest(&self) -> Option<StoreStats> {
        self.latest.lock().as_ref().map(|(_, stats)| stats.clone())
    }

    fn fresh(&self) -> Option<StoreStats> {
        self.latest
            .lock()
            .as_ref()
            .filter(|(at, _)| at.elapsed() < self.max_age)
            .map(|(_, stats)| stats.clone())
    }

    /// Figures at most `max_age` old, scanning if they are older.
    pub async fn get(&self) -> StoreResult<StoreStats> {
        if let Some(stats) = self.fresh() {
            return Ok(stats);
        }
        let _one_scan = self.scanning.lock().await;
        if let Some(stats) = self.fresh() {
            return Ok(stats);
        }
        let stats = self.store.stats().await?;
        *self.latest.lock() = Some((Instant::now(), stats.clone()));
        Ok(stats)
    }

    /// Keeps the figures fresh in the background: a scan, then `max_age` of rest, until
    /// the task is dropped. `after_each` sees every new figure (the OTLP gauges).
    pub async fn refresh_forever(self: Arc<Self>, after_each: impl Fn(&StoreStats)) {
        loop {
            match self.get().await {
                Ok(stats) => after_each(&stats),
                Err(error) => tracing::debug!(%error, "store stats for the gauges failed"),
            }
            tokio::time::sleep(self.max_age).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Append, NewMessage, Role, SessionId, WriteOptions};
    use crate::store::memory::{MemoryLimits, MemoryStore};

    #[tokio::test]
    async fn figures_are_read_again_only_once_they_are_old() {
        let store = Arc::new(MemoryStore::new(MemoryLimits::default()));
        let cache = StatsCache::new(store.clone(), Duration::from_millis(300));
        assert!(cache.latest().is_none());
        let callers: Vec<_> = (0..20).map(|_| cache.get()).collect();
        for result in futures::future::join_all(callers).await {
            assert_eq!(result.expect("stats").active_sessions, 0);
        }
        let append = Append {
            messages: vec![NewMessage::text(Role::User, "hi")],
            request_id: None,
            options: WriteOptions::ttl(Duration::from_secs(60)),
        };
        store.append(&SessionId::new("s"), append).await.unwrap();
        assert_eq!(cache.get().await.unwrap().active_sessions, 0, "still fresh");
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(
            cache.get().await.unwrap().active_sessions,
            1,
            "old: read again"
        );
        assert_eq!(cache.latest().map(|s| s.active_sessions), Some(1));
    }
}
