//! Backend timing: a store decorator that gives every operation a span, records its
//! latency and errors, and warns about operations slower than `slow_op_threshold`, at most
//! once per operation every 10 seconds.

use crate::domain::{
    Append, AppendOutcome, ListPage, ListQuery, NewMessage, Session, SessionId, StateOutcome,
    StateUpdate, StoreStats, Window, WriteOptions, WriteOutcome,
};
use crate::observability::metrics::{self, Labels};
use crate::store::records::{Record, RecordCounts, RecordRange, RecordStream};
use crate::store::{RecordStore, SessionStore, StoreError, StoreResult};
use async_trait::async_trait;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;
use tracing::field::Empty;

/// How often one operation may be warned about.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// A store whose operations are timed.
pub struct MeteredStore {
    inner: Arc<dyn SessionStore>,
    slow: Duration,
    /// Per operation: when it was last warned about, and the slow calls since.
    warned: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl MeteredStore {
    /// Times `inner`; operations of `slow` or longer are logged.
    pub fn new(inner: Arc<dyn SessionStore>, slow: Duration) -> Self {
        Self {
            inner,
            slow,
            warned: Mutex::new(HashMap::new()),
        }
    }

    async fn timed<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let backend = self.inner.backend();
        // Only operations inside a traced request get a span: background health checks
        // and gauge reads would otherwise start a new trace every few seconds.
        let span = if tracing::Span::current().is_none() {
            tracing::Span::none()
        } else {
            tracing::info_span!(
                "backend",
                otel.name = format!("{backend} {operation}"),
                otel.kind = "client",
                otel.status_code = Empty,
                db.system.name = backend,
                db.operation.name = operation,
                error.type = Empty,
            )
        };
        let started = Instant::now();
        let result = call.instrument(span.clone()).await;
        let elapsed = started.elapsed();
        let labels = || -> Labels {
            vec![
                ("backend", backend.to_string()),
                ("operation", operation.to_string()),
            ]
        };
        let registry = metrics::global();
        registry.observe("csai_backend_operation_duration_seconds", labels(), elapsed);
        if let Err(error) = &result {
            span.record("error.type", kind(error));
            // Not found and version conflicts are answers, not failures of the backend.
            if !matches!(
                error,
                StoreError::NotFound(_) | StoreError::VersionMismatch { .. }
            ) {
                span.record("otel.status_code", "error");
            }
            let mut with_kind = labels();
            with_kind.push(("kind", kind(error).to_string()));
            registry.count("csai_backend_errors_total", with_kind, 1.0);
        }
        if elapsed >= self.slow {
            registry.count("csai_backend_slow_operations_total", labels(), 1.0);
            span.in_scope(|| self.warn(operation, backend, elapsed));
        }
        result
    }

    fn warn(&self, operation: &'static str, backend: &str, elapsed: Duration) {
        let mut warned = self.warned.lock();
        let now = Instant::now();
        let entry = warned
            .entry(operation)
            .or_insert((now - WARNING_INTERVAL * 2, 0));
        if now.duration_since(entry.0) < WARNING_INTERVAL {
            entry.1 += 1;
            return;
        }
        let suppressed = std::mem::take(&mut entry.1);
        entry.0 = now;
        tracing::warn!(
            backend,
            operation,
            duration_ms = elapsed.as_millis() as u64,
            threshold_ms = self.slow.as_millis() as u64,
            suppressed,
            "slow backend operation"
        );
    }
}

fn kind(error: &StoreError) -> &'static str {
    match error {
        StoreError::NotFound(_) => "not_found",
        StoreError::VersionMismatch { .. } => "version_mismatch",
        StoreError::LimitExceeded(_) => "limit_exceeded",
        StoreError::InvalidPageToken(_) => "invalid_page_token",
        StoreError::Unavailable(_) => "unavailable",
        StoreError::Timeout(_) => "timeout",
        StoreError::Internal(_) => "internal",
    }
}

#[async_trait]
impl SessionStore for MeteredStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn get(&self, id: &SessionId, window: Window) -> StoreResult<Session> {
        self.timed("get", self.inner.get(id, window)).await
    }

    async fn append(&self, id: &SessionId, append: Append) -> StoreResult<AppendOutcome> {
        self.timed("append", self.inner.append(id, append)).await
    }

    async fn replace(
        &self,
        id: &SessionId,
        messages: Vec<NewMessage>,
        options: WriteOptions,
    ) -> StoreResult<WriteOutcome> {
        self.timed("replace", self.inner.replace(id, messages, options))
            .await
    }

    async fn set_system_messages(
        &self,
        id: &SessionId,
        messages: Vec<NewMessage>,
        options: WriteOptions,
    ) -> StoreResult<WriteOutcome> {
        self.timed(
            "set_system_messages",
            self.inner.set_system_messages(id, messages, options),
        )
        .await
    }

    async fn update_state(
        &self,
        id: &SessionId,
        update: StateUpdate,
        options: WriteOptions,
    ) -> StoreResult<StateOutcome> {
        self.timed("update_state", self.inner.update_state(id, update, options))
            .await
    }

    async fn touch(&self, id: &SessionId, ttl: Duration) -> StoreResult<WriteOutcome> {
        self.timed("touch", self.inner.touch(id, ttl)).await
    }

    async fn delete(&self, id: &SessionId, expected_version: Option<u64>) -> StoreResult<bool> {
        self.timed("delete", self.inner.delete(id, expected_version))
            .await
    }

    async fn list(&self, query: ListQuery) -> StoreResult<ListPage> {
        self.timed("list", self.inner.list(query)).await
    }

    async fn stats(&self) -> StoreResult<StoreStats> {
        self.timed("stats", self.inner.stats()).await
    }

    async fn health_check(&self) -> StoreResult<()> {
        self.timed("health_check", self.inner.health_check()).await
    }
}

#[async_trait]
impl RecordStore for MeteredStore {
    async fn put_record(&self, stream: &RecordStream, record: Record) -> StoreResult<()> {
        self.timed("put_record", self.inner.put_record(stream, record))
            .await
    }

    async fn list_records(
        &self,
        stream: &RecordStream,
        range: &RecordRange,
    ) -> StoreResult<Vec<Record>> {
        self.timed("list_records", self.inner.list_records(stream, range))
            .await
    }

    async fn count_records(&self, tenant: Option<&str>) -> StoreResult<RecordCounts> {
        self.timed("count_records", self.inner.count_records(tenant))
            .await
    }
}
