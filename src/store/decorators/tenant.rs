//! Tenant isolation: a per-request store view that keeps one tenant's sessions and records
//! apart from every other tenant's, in any backend.
//!
//! A session id `s` of tenant `t` is stored as `t` + U+001F + `s`. Clients cannot send
//! control characters, so no id a client writes can reach into another tenant's space, and
//! another tenant's session reads exactly like an absent one (no existence is leaked).

use crate::domain::{
    Append, AppendOutcome, ListPage, ListQuery, NewMessage, Session, SessionId, StateOutcome,
    StateUpdate, StoreStats, Window, WriteOptions, WriteOutcome,
};
use crate::store::records::{Record, RecordCounts, RecordRange, RecordStream};
use crate::store::stats_cache::StatsCache;
use crate::store::{RecordStore, SessionStore, StoreError, StoreResult};
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

/// Separates a tenant from a session id in the backend.
const SEPARATOR: char = '\u{1f}';
/// Sessions counted per listing page for a tenant's stats.
const STATS_PAGE: u32 = 500;

/// How the backend (and the change hub) knows session `id` of `tenant` (None: no tenant).
pub fn stored_id(tenant: Option<&str>, id: &str) -> String {
    match tenant {
        Some(tenant) => format!("{tenant}{SEPARATOR}{id}"),
        None => id.to_string(),
    }
}

/// The id `tenant`'s client knows for the stored id `stored`.
pub fn unscoped_id(tenant: Option<&str>, stored: &str) -> String {
    match tenant {
        Some(tenant) => stored
            .strip_prefix(tenant)
            .and_then(|rest| rest.strip_prefix(SEPARATOR))
            .unwrap_or(stored)
            .to_string(),
        None => stored.to_string(),
    }
}

/// One tenant's view of a store.
pub struct TenantStore {
    inner: Arc<dyn SessionStore>,
    tenant: String,
    prefix: String,
    /// The whole store's figures, to pro-rate the bytes of a tenant's stats without a
    /// scan of every tenant's sessions.
    whole_stats: Option<Arc<StatsCache>>,
}

impl TenantStore {
    /// `tenant`'s view of `inner`.
    pub fn new(inner: Arc<dyn SessionStore>, tenant: &str) -> Self {
        Self {
            inner,
            tenant: tenant.to_string(),
            prefix: format!("{tenant}{SEPARATOR}"),
            whole_stats: None,
        }
    }

    /// Takes the whole store's figures for [`stats`](SessionStore::stats) from `cache`
    /// (else from the store, a scan of every tenant's sessions each time).
    pub fn with_whole_stats(mut self, cache: Arc<StatsCache>) -> Self {
        self.whole_stats = Some(cache);
        self
    }

    fn scoped(&self, id: &SessionId) -> SessionId {
        SessionId::new(stored_id(Some(&self.tenant), id.as_str()))
    }

    fn unscoped(&self, id: &SessionId) -> SessionId {
        SessionId::new(
            id.as_str()
                .strip_prefix(&self.prefix)
                .unwrap_or(id.as_str()),
        )
    }

    fn stream(&self, stream: &RecordStream) -> RecordStream {
        RecordStream::Tenant {
            tenant: self.tenant.clone(),
            stream: Box::new(stream.clone()),
        }
    }
}

/// An error as the tenant's caller must see it: naming the id it sent, never the stored,
/// tenant-prefixed one.
fn own_id(error: StoreError, id: &SessionId) -> StoreError {
    match error {
        StoreError::NotFound(_) => StoreError::NotFound(id.as_str().to_string()),
        other => other,
    }
}

#[async_trait]
impl SessionStore for TenantStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn get(&self, id: &SessionId, window: Window) -> StoreResult<Session> {
        let mut session = self
            .inner
            .get(&self.scoped(id), window)
            .await
            .map_err(|e| own_id(e, id))?;
        session.id = id.clone();
        Ok(session)
    }

    async fn append(&self, id: &SessionId, append: Append) -> StoreResult<AppendOutcome> {
        self.inner
            .append(&self.scoped(id), append)
            .await
            .map_err(|e| own_id(e, id))
    }

    async fn replace(
        &self,
        id: &SessionId,
        messages: Vec<NewMessage>,
        options: WriteOptions,
    ) -> StoreResult<WriteOutcome> {
        self.inner
            .replace(&self.scoped(id), messages, options)
            .await
            .map_err(|e| own_id(e, id))
    }

    async fn set_system_messages(
        &self,
        id: &SessionId,
        messages: Vec<NewMessage>,
        options: WriteOptions,
    ) -> StoreResult<WriteOutcome> {
        self.inner
            .set_system_messages(&self.scoped(id), messages, options)
            .await
            .map_err(|e| own_id(e, id))
    }

    async fn update_state(
        &self,
        id: &SessionId,
        update: StateUpdate,
        options: WriteOptions,
    ) -> StoreResult<StateOutcome> {
        self.inner
            .update_state(&self.scoped(id), update, options)
            .await
            .map_err(|e| own_id(e, id))
    }

    async fn touch(&self, id: &SessionId, ttl: Duration) -> StoreResult<WriteOutcome> {
        self.inner
            .touch(&self.scoped(id), ttl)
            .await
            .map_err(|e| own_id(e, id))
    }

    async fn delete(&self, id: &SessionId, expected_version: Option<u64>) -> StoreResult<bool> {
        self.inner
            .delete(&self.scoped(id), expected_version)
            .await
            .map_err(|e| own_id(e, id))
    }

    async fn list(&self, mut query: ListQuery) -> StoreResult<ListPage> {
        query.prefix = format!("{}{}", self.prefix, query.prefix);
        let mut page = self.inner.list(query).await?;
        for session in &mut page.sessions {
            session.id = self.unscoped(&session.id);
        }
        Ok(page)
    }

    /// Sessions, messages and records are counted over the tenant's own; bytes are not
    /// tracked per tenant, so they are the store's bytes pro-rated by the tenant's share
    /// of the messages.
    async fn stats(&self) -> StoreResult<StoreStats> {
        let whole = match &self.whole_stats {
            Some(cache) => cache.get().await?,
            None => self.inner.stats().await?,
        };
        let mut stats = StoreStats {
            backend: whole.backend.clone(),
            ..StoreStats::default()
        };
        let mut page_token = None;
        loop {
            let page = self
                .list(ListQuery {
                    prefix: String::new(),
                    page_size: STATS_PAGE,
                    page_token,
                })
                .await?;
            stats.active_sessions += page.sessions.len() as u64;
            for session in &page.sessions {
                stats.total_messages += session.message_count;
                stats.usage_total += session.usage_total;
            }
            match page.next_page_token {
                Some(token) => page_token = Some(token),
                None => break,
            }
        }
        if whole.total_messages > 0 {
            let share = stats.total_messages.min(whole.total_messages) as u128;
            stats.approximate_bytes = (u128::from(whole.approximate_bytes) * share
                / u128::from(whole.total_messages)) as u64;
        }
        let records = self.count_records(None).await?;
        stats.learning_records = records.learning;
        stats.security_logs = records.security;
        Ok(stats)
    }

    async fn health_check(&self) -> StoreResult<()> {
        self.inner.health_check().await
    }
}

#[async_trait]
impl RecordStore for TenantStore {
    async fn put_record(&self, stream: &RecordStream, record: Record) -> StoreResult<()> {
        self.inner.put_record(&self.stream(stream), record).await
    }

    async fn list_records(
        &self,
        stream: &RecordStream,
        range: &RecordRange,
    ) -> StoreResult<Vec<Record>> {
        self.inner.list_records(&self.stream(stream), range).await
    }

    /// The tenant's own streams; a tenant named by a decorator above this one is nested
    /// inside it, as its stream names are.
    async fn count_records(&self, tenant: Option<&str>) -> StoreResult<RecordCounts> {
        let scope = match tenant {
            Some(inner) => format!("{}:tenant:{inner}", self.tenant),
            None => self.tenant.clone(),
        };
        self.inner.count_records(Some(&scope)).await
    }
}
