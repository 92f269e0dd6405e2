//! The periodic sweep of expired sessions and records, for the backends that delete them
//! themselves (in-memory, SQLite, PostgreSQL); Redis, MongoDB and DynamoDB expire data
//! on the server.

use crate::store::StoreResult;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Runs `sweep` on `store` every `interval` until the store is dropped; a failed sweep is
/// logged and the next one tries again.
pub fn spawn<S, F, Fut>(
    store: &Arc<S>,
    interval: Duration,
    backend: &'static str,
    sweep: F,
) -> tokio::task::JoinHandle<()>
where
    S: Send + Sync + 'static,
    F: Fn(Arc<S>) -> Fut + Send + 'static,
    Fut: Future<Output = StoreResult<u64>> + Send,
{
    let store = Arc::downgrade(store);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(store) = store.upgrade() else { return };
            if let Err(error) = sweep(store).await {
                tracing::warn!(%error, backend, "sweeping expired sessions failed");
            }
        }
    })
}
