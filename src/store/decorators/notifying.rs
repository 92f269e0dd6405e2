//! Change signals of writes: a store decorator that tells the hub (this sidecar's
//! watchers) and the backend's bus (the other replicas') what each successful write did.
//!
//! It wraps the store the server serves, below the per-request tenant view, so it sees
//! stored ids; it never reads the content. Publishing to the bus happens on a background task fed by a bounded
//! queue: a write waits for the queue only when the bus is slower than the writes.

use crate::domain::{
    Append, AppendOutcome, ListPage, ListQuery, NewMessage, Session, SessionId, StateOutcome,
    StateUpdate, StoreStats, Window, WriteOptions, WriteOutcome,
};
use crate::store::changes::{Change, ChangeBus, ChangeHub, ChangeKind, Mechanism, epoch_ms};
use crate::store::records::{Record, RecordCounts, RecordRange, RecordStream};
use crate::store::{RecordStore, SessionStore, StoreResult};
use async_trait::async_trait;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// Changes waiting for the bus before writes wait for it.
const QUEUE: usize = 4096;
/// Changes published in one message at most.
const BATCH: usize = 64;

/// A store whose writes signal their changes.
pub struct NotifyingStore {
    inner: Arc<dyn SessionStore>,
    hub: Arc<ChangeHub>,
    bus: Option<mpsc::Sender<Change>>,
}

impl NotifyingStore {
    /// Signals `inner`'s writes to `hub`, and to `bus` when it reaches other replicas
    /// (its publisher runs until the hub closes).
    pub fn new(inner: Arc<dyn SessionStore>, hub: Arc<ChangeHub>, bus: Arc<dyn ChangeBus>) -> Self {
        let bus = matches!(bus.mechanism(), Mechanism::Bus(_)).then(|| {
            let (sender, receiver) = mpsc::channel(QUEUE);
            tokio::spawn(publish(bus, hub.clone(), receiver));
            sender
        });
        Self { inner, hub, bus }
    }

    async fn signal(
        &self,
        id: &SessionId,
        kind: ChangeKind,
        version: u64,
        count: Option<u64>,
        expire: Option<SystemTime>,
    ) {
        let change = Change {
            id: id.as_str().to_string(),
            kind,
            version,
            message_count: count,
            expire_ms: expire.map_or(0, epoch_ms),
        };
        self.hub.deliver(&change);
        if let Some(bus) = &self.bus {
            // Closed only when the publisher ended with the hub: nothing listens any more.
            let _ = bus.send(change).await;
        }
    }
}

async fn publish(bus: Arc<dyn ChangeBus>, hub: Arc<ChangeHub>, mut queue: mpsc::Receiver<Change>) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            received = queue.recv_many(&mut batch, BATCH) => if received == 0 { return },
            _ = hub.closed() => return,
        }
        if let Err(error) = bus.publish(hub.origin(), &batch).await {
            // Watchers on other replicas see these changes with their next signal or
            // resume; a bus outage must not fail the writes.
            tracing::warn!(%error, changes = batch.len(), "cannot publish change signals");
        }
        batch.clear();
    }
}

#[async_trait]
impl SessionStore for NotifyingStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn get(&self, id: &SessionId, window: Window) -> StoreResult<Session> {
        self.inner.get(id, window).await
    }

    async fn append(&self, id: &SessionId, append: Append) -> StoreResult<AppendOutcome> {
        let outcome = self.inner.append(id, append).await?;
        if !outcome.deduplicated {
            let count = outcome.first_seq + outcome.count - 1;
            self.signal(
                id,
                ChangeKind::Appended,
                outcome.version,
                Some(count),
                Some(outcome.expire_time),
            )
            .await;
        }
        Ok(outcome)
    }

    async fn replace(
        &self,
        id: &SessionId,
        messages: Vec<NewMessage>,
        options: WriteOptions,
    ) -> StoreResult<WriteOutcome> {
        let count = messages.len() as u64;
        let outcome = self.inner.replace(id, messages, options).await?;
        self.signal(
            id,
            ChangeKind::Replaced,
            outcome.version,
            Some(count),
            Some(outcome.expire_time),
        )
        .await;
        Ok(outcome)
    }

    async fn set_system_messages(
        &self,
        id: &SessionId,
        messages: Vec<NewMessage>,
        options: WriteOptions,
    ) -> StoreResult<WriteOutcome> {
        let outcome = self
            .inner
            .set_system_messages(id, messages, options)
            .await?;
        self.signal(
            id,
            ChangeKind::SystemMessages,
            outcome.version,
            None,
            Some(outcome.expire_time),
        )
        .await;
        Ok(outcome)
    }

    async fn update_state(
        &self,
        id: &SessionId,
        update: StateUpdate,
        options: WriteOptions,
    ) -> StoreResult<StateOutcome> {
        let outcome = self.inner.update_state(id, update, options).await?;
        self.signal(
            id,
            ChangeKind::State,
            outcome.write.version,
            None,
            Some(outcome.write.expire_time),
        )
        .await;
        Ok(outcome)
    }

    async fn touch(&self, id: &SessionId, ttl: Duration) -> StoreResult<WriteOutcome> {
        let outcome = self.inner.touch(id, ttl).await?;
        self.signal(
            id,
            ChangeKind::Touched,
            outcome.version,
            None,
            Some(outcome.expire_time),
        )
        .await;
        Ok(outcome)
    }

    async fn delete(&self, id: &SessionId, expected_version: Option<u64>) -> StoreResult<bool> {
        let deleted = self.inner.delete(id, expected_version).await?;
        if deleted {
            self.signal(id, ChangeKind::Deleted, 0, None, None).await;
        }
        Ok(deleted)
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
impl RecordStore for NotifyingStore {
    async fn put_record(&self, stream: &RecordStream, record: Record) -> StoreResult<()> {
        self.inner.put_record(stream, record).await
    }

    async fn list_records(
        &self,
        stream: &RecordStream,
        range: &RecordRange,
    ) -> StoreResult<Vec<Record>> {
        self.inner.list_records(stream, range).await
    }

    async fn count_records(&self, tenant: Option<&str>) -> StoreResult<RecordCounts> {
        self.inner.count_records(tenant).await
    }
}
