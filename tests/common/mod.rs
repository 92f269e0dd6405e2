//! Test harness: a real sidecar on an ephemeral port, and clients for it.
#![allow(dead_code)] // each test binary uses a different part of the harness

use csai_sidecar::config::Config;
use csai_sidecar::grpc::pb;
use csai_sidecar::grpc::pb::session_store_client::SessionStoreClient;
use csai_sidecar::model::{
    Append, AppendOutcome, ListPage, ListQuery, NewMessage, Session, SessionId, StateOutcome,
    StateUpdate, StoreStats, Window, WriteOptions, WriteOutcome,
};
use csai_sidecar::server::{self, ServeError};
use csai_sidecar::store::memory::{MemoryLimits, MemoryStore};
use csai_sidecar::store::{SessionStore, StoreError, StoreResult};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

/// A sidecar serving the in-memory store in this process, over a real TCP socket.
pub struct TestServer {
    pub addr: SocketAddr,
    pub store: Arc<MemoryStore>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), ServeError>>>,
}

/// A configuration for tests: ephemeral port, quick health checks.
pub fn test_config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("address"),
        health_interval: Duration::from_millis(100),
        shutdown_grace: Duration::from_secs(5),
        ..Config::default()
    }
}

impl TestServer {
    /// Starts a sidecar with the test configuration.
    pub async fn start() -> Self {
        Self::start_with(test_config(), MemoryLimits::default()).await
    }

    /// Starts a sidecar with this configuration and store limits.
    pub async fn start_with(config: Config, limits: MemoryLimits) -> Self {
        let store = Arc::new(MemoryStore::new(limits));
        Self::start_serving(config, store.clone(), store).await
    }

    /// Starts a sidecar that serves `serving`, a decorator around `store`.
    pub async fn start_serving(
        config: Config,
        store: Arc<MemoryStore>,
        serving_store: Arc<dyn SessionStore>,
    ) -> Self {
        let listener = server::bind(&config).await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(async move {
            server::serve(&config, serving_store, listener, async {
                let _ = rx.await;
            })
            .await
        });
        Self {
            addr,
            store,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// A new connection to the sidecar.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    /// A SessionStore client on a new connection.
    pub async fn sessions(&self) -> SessionStoreClient<Channel> {
        SessionStoreClient::new(self.channel().await)
    }

    /// A health client on a new connection.
    pub async fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel().await)
    }

    /// Starts the graceful shutdown.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Shuts down and waits for the server to return.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        self.begin_shutdown();
        let handle = self.handle.take().expect("running");
        handle.await.expect("server task")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}

/// Asks the health service for one service's status.
pub async fn health_status(health: &mut HealthClient<Channel>, service: &str) -> i32 {
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status
}

/// Waits until `service` reports `status` (health checks run every 100 ms in tests).
pub async fn wait_for_status(health: &mut HealthClient<Channel>, service: &str, status: i32) {
    for _ in 0..100 {
        if health_status(health, service).await == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{service:?} never reached status {status}");
}

/// Serving status codes of grpc.health.v1.
pub const SERVING: i32 = 1;
pub const NOT_SERVING: i32 = 2;

/// A text message of a role.
pub fn message(role: pb::Role, content: &str) -> pb::Message {
    pb::Message {
        role: role as i32,
        content: content.to_string(),
        ..Default::default()
    }
}

/// A user message.
pub fn user(content: &str) -> pb::Message {
    message(pb::Role::User, content)
}

/// A protobuf Duration of whole seconds.
pub fn seconds(secs: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: secs,
        nanos: 0,
    }
}

/// Fault injection around the real in-memory store: a slow backend (delayed appends) or a
/// backend that is down (every call, health check included, fails with UNAVAILABLE).
pub struct FaultyStore {
    inner: Arc<MemoryStore>,
    append_delay: Duration,
    down: AtomicBool,
}

impl FaultyStore {
    pub fn new(inner: Arc<MemoryStore>) -> Self {
        Self {
            inner,
            append_delay: Duration::ZERO,
            down: AtomicBool::new(false),
        }
    }

    pub fn with_append_delay(self, delay: Duration) -> Self {
        Self {
            append_delay: delay,
            ..self
        }
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn check(&self) -> StoreResult<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(
                "connection refused (injected)".into(),
            ));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl SessionStore for FaultyStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn get(&self, id: &SessionId, window: Window) -> StoreResult<Session> {
        self.check()?;
        self.inner.get(id, window).await
    }
    async fn append(&self, id: &SessionId, append: Append) -> StoreResult<AppendOutcome> {
        self.check()?;
        tokio::time::sleep(self.append_delay).await;
        self.inner.append(id, append).await
    }
    async fn replace(
        &self,
        id: &SessionId,
        messages: Vec<NewMessage>,
        options: WriteOptions,
    ) -> StoreResult<WriteOutcome> {
        self.check()?;
        self.inner.replace(id, messages, options).await
    }
    async fn set_system_messages(
        &self,
        id: &SessionId,
        messages: Vec<NewMessage>,
        options: WriteOptions,
    ) -> StoreResult<WriteOutcome> {
        self.check()?;
        self.inner.set_system_messages(id, messages, options).await
    }
    async fn update_state(
        &self,
        id: &SessionId,
        update: StateUpdate,
        options: WriteOptions,
    ) -> StoreResult<StateOutcome> {
        self.check()?;
        self.inner.update_state(id, update, options).await
    }
    async fn touch(&self, id: &SessionId, ttl: Duration) -> StoreResult<WriteOutcome> {
        self.check()?;
        self.inner.touch(id, ttl).await
    }
    async fn delete(&self, id: &SessionId, expected_version: Option<u64>) -> StoreResult<bool> {
        self.check()?;
        self.inner.delete(id, expected_version).await
    }
    async fn list(&self, query: ListQuery) -> StoreResult<ListPage> {
        self.check()?;
        self.inner.list(query).await
    }
    async fn stats(&self) -> StoreResult<StoreStats> {
        self.check()?;
        self.inner.stats().await
    }
    async fn health_check(&self) -> StoreResult<()> {
        self.check()?;
        self.inner.health_check().await
    }
}

/// A variable the test script (scripts/test.sh) sets; missing means the backend's server
/// was not started, which fails the test rather than skipping it.
pub fn required_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "{name} is not set: this test needs a real server. Run scripts/test.sh, which \
             starts the test servers and sets it"
        ),
    }
}
