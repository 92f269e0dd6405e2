//! Test harness: a real sidecar on an ephemeral port, and clients for it.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod chat_suite;
pub mod llm_server;

use csai_sidecar::config::{Config, Listen};
use csai_sidecar::domain::{
    Append, AppendOutcome, ListPage, ListQuery, NewMessage, Session, SessionId, StateOutcome,
    StateUpdate, StoreStats, Window, WriteOptions, WriteOutcome,
};
use csai_sidecar::grpc::dial::DialOptions;
use csai_sidecar::grpc::pb;
use csai_sidecar::grpc::pb::session_store_client::SessionStoreClient;
use csai_sidecar::server::{self, ServeError};
use csai_sidecar::store::memory::{MemoryLimits, MemoryStore};
use csai_sidecar::store::records::{Record, RecordCounts, RecordRange, RecordStream};
use csai_sidecar::store::redis::RedisOptions;
use csai_sidecar::store::{RecordStore, SessionStore, StoreError, StoreResult};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

/// Options for a standalone redis-server at `address`, keys under `key_prefix`.
pub fn redis_options(address: impl Into<String>, key_prefix: impl Into<String>) -> RedisOptions {
    RedisOptions {
        address: address.into(),
        cluster_nodes: Vec::new(),
        tls_ca_file: None,
        username: None,
        password: None,
        db: 0,
        key_prefix: key_prefix.into(),
        timeout: Duration::from_secs(5),
        max_retries: 3,
    }
}

/// A sidecar serving a store in this process, over a real TCP socket.
pub struct TestServer {
    pub addr: SocketAddr,
    pub store: Arc<dyn SessionStore>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), ServeError>>>,
}

/// A configuration for tests: ephemeral port, quick health checks.
pub fn test_config() -> Config {
    Config {
        listen: Listen::Tcp("127.0.0.1:0".parse().expect("address")),
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
        Self::start_serving(config, Arc::new(MemoryStore::new(limits))).await
    }

    /// Starts a sidecar that serves `store`.
    pub async fn start_serving(config: Config, store: Arc<dyn SessionStore>) -> Self {
        let listener = server::bind(&config).await.expect("bind");
        let addr = listener.tcp_address().expect("a TCP listener");
        let (tx, rx) = oneshot::channel();
        let serving_store = store.clone();
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

#[async_trait::async_trait]
impl RecordStore for FaultyStore {
    async fn put_record(&self, stream: &RecordStream, record: Record) -> StoreResult<()> {
        self.check()?;
        self.inner.put_record(stream, record).await
    }

    async fn list_records(
        &self,
        stream: &RecordStream,
        range: &RecordRange,
    ) -> StoreResult<Vec<Record>> {
        self.check()?;
        self.inner.list_records(stream, range).await
    }

    async fn count_records(&self, tenant: Option<&str>) -> StoreResult<RecordCounts> {
        self.check()?;
        self.inner.count_records(tenant).await
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

/// A redis-server of this test's own, so that stopping it disturbs no other test.
pub struct OwnRedis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    /// Starts redis-server on `port`. With `persist_in`, every write is in the
    /// append-only file of that folder, fsynced before it is acknowledged, and a restart
    /// in the same folder finds it again; without, nothing is persisted.
    pub fn start(port: u16, persist_in: Option<&std::path::Path>) -> Self {
        let mut command = std::process::Command::new(required_env("CSAI_TEST_REDIS_SERVER"));
        command.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ]);
        match persist_in {
            Some(dir) => command
                .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
                .arg(dir),
            None => command.args(["--appendonly", "no"]),
        };
        let child = command
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server");
        let started = Self {
            port,
            child: Some(child),
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return started;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start on port {port}");
    }

    /// Kills it (SIGKILL): a crash, not a shutdown.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `csai-sidecar` binary running as a child process on a free port.
pub struct SidecarProcess {
    pub child: std::process::Child,
    pub port: u16,
}

impl SidecarProcess {
    /// Starts `csai-sidecar serve` with these variables (and no CSAI_* of the caller's),
    /// and waits until it accepts connections.
    pub async fn spawn(vars: &[(&str, String)]) -> (Self, Channel) {
        Self::spawn_listening(Listening::FreePort, vars).await
    }

    /// Like [`spawn`](Self::spawn), listening where told.
    pub async fn spawn_listening(listening: Listening, vars: &[(&str, String)]) -> (Self, Channel) {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_csai-sidecar"));
        command.arg("serve");
        Self::spawn_command(command, listening, vars).await
    }

    /// Like [`spawn`](Self::spawn), with at most `limit` open file descriptors
    /// (`RLIMIT_NOFILE`, set by the shell's `ulimit -n`).
    pub async fn spawn_with_open_file_limit(
        vars: &[(&str, String)],
        limit: u32,
    ) -> (Self, Channel) {
        let mut command = std::process::Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -n {limit} && exec \"$0\" serve"))
            .arg(env!("CARGO_BIN_EXE_csai-sidecar"));
        Self::spawn_command(command, Listening::FreePort, vars).await
    }

    /// Kills the sidecar and returns everything it logged.
    pub fn stop_and_read_logs(&mut self) -> String {
        use std::io::Read;
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut logs = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            stderr.read_to_string(&mut logs).expect("read the logs");
        }
        logs
    }

    async fn spawn_command(
        mut command: std::process::Command,
        listening: Listening,
        vars: &[(&str, String)],
    ) -> (Self, Channel) {
        let port = match &listening {
            Listening::Port(port) => *port,
            _ => free_port(),
        };
        let listen = match &listening {
            Listening::UnixSocket(path) => format!("unix://{}", path.display()),
            _ => format!("127.0.0.1:{port}"),
        };
        for (name, _) in std::env::vars() {
            if name.starts_with("CSAI_") {
                command.env_remove(name);
            }
        }
        command
            .env("CSAI_LISTEN", &listen)
            .env("CSAI_HEALTH_INTERVAL", "100ms")
            .env("CSAI_LOG_FORMAT", "json")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for (name, value) in vars {
            command.env(name, value);
        }
        let child = command.spawn().expect("start csai-sidecar");
        let process = Self { child, port };
        let url = match &listening {
            Listening::UnixSocket(_) => listen.clone(),
            _ => format!("grpc://{listen}"),
        };
        for _ in 0..200 {
            if let Ok(channel) = DialOptions::default().connect(&url).await {
                return (process, channel);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("csai-sidecar did not listen on {listen}");
    }
}

/// Where a [`SidecarProcess`] listens.
pub enum Listening {
    FreePort,
    Port(u16),
    UnixSocket(std::path::PathBuf),
}

/// A loopback TCP port nothing listens on (at the time of asking).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// `GET path` on the metrics port; the whole HTTP response.
pub fn scrape(port: u16, path: &str) -> String {
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    use std::io::{Read, Write};
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// Reads the sidecar's log until it names the metrics address, then keeps draining the
/// log in the background so the sidecar never blocks on a full pipe.
pub fn logged_metrics_port(sidecar: &mut SidecarProcess) -> u16 {
    use std::io::BufRead;
    let stderr = sidecar.child.stderr.take().expect("stderr");
    let mut lines = std::io::BufReader::new(stderr).lines();
    let port = loop {
        let line = lines
            .next()
            .expect("the sidecar logs the metrics address")
            .unwrap();
        if line.contains("Prometheus metrics") {
            let address = line
                .split("\"address\":\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .expect("an address field");
            break address.rsplit(':').next().unwrap().parse().expect("a port");
        }
    };
    std::thread::spawn(move || for _ in lines {});
    port
}

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Calls every SessionStore RPC once on a fresh session and checks each answer; used to
/// prove a backend end to end through the real server.
pub async fn exercise_every_rpc(channel: Channel, session_prefix: &str) {
    use tonic::Code;
    let mut client = SessionStoreClient::new(channel);
    let id = format!(
        "{session_prefix}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let get = |window| pb::GetSessionRequest {
        session_id: id.clone(),
        window,
        ..Default::default()
    };

    let appended = client
        .append_messages(pb::AppendMessagesRequest {
            session_id: id.clone(),
            messages: vec![user("hi"), message(pb::Role::Assistant, "hello")],
            request_id: "first".into(),
            ttl: Some(seconds(600)),
            ..Default::default()
        })
        .await
        .expect("AppendMessages")
        .into_inner();
    assert_eq!(appended.seqs, vec![1, 2]);
    let retried = client
        .append_messages(pb::AppendMessagesRequest {
            session_id: id.clone(),
            messages: vec![user("hi"), message(pb::Role::Assistant, "hello")],
            request_id: "first".into(),
            ..Default::default()
        })
        .await
        .expect("AppendMessages retry")
        .into_inner();
    assert!(retried.deduplicated);

    let session = client
        .get_session(get(Some(pb::get_session_request::Window::LastN(1))))
        .await
        .expect("GetSession")
        .into_inner()
        .session
        .expect("session");
    assert_eq!(session.message_count, 2);
    assert_eq!(session.messages.len(), 1);
    assert_eq!(session.messages[0].content, "hello");

    let stale = client
        .append_messages(pb::AppendMessagesRequest {
            session_id: id.clone(),
            messages: vec![user("lost")],
            expected_version: Some(session.version + 5),
            ..Default::default()
        })
        .await
        .expect_err("stale version");
    assert_eq!(stale.code(), Code::Aborted);

    let replaced = client
        .replace_messages(pb::ReplaceMessagesRequest {
            session_id: id.clone(),
            messages: vec![user("only")],
            expected_version: Some(session.version),
            ..Default::default()
        })
        .await
        .expect("ReplaceMessages")
        .into_inner();
    client
        .set_system_messages(pb::SetSystemMessagesRequest {
            session_id: id.clone(),
            system_messages: vec![message(pb::Role::System, "Be brief.")],
            expected_version: Some(replaced.version),
            ..Default::default()
        })
        .await
        .expect("SetSystemMessages");
    let state = prost_types::Struct {
        fields: [(
            "step".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue("pay".into())),
            },
        )]
        .into_iter()
        .collect(),
    };
    let updated = client
        .update_state(pb::UpdateStateRequest {
            session_id: id.clone(),
            state: Some(state.clone()),
            mode: pb::StateUpdateMode::Merge as i32,
            ..Default::default()
        })
        .await
        .expect("UpdateState")
        .into_inner();
    assert_eq!(updated.state.as_ref(), Some(&state));

    let touched = client
        .touch_session(pb::TouchSessionRequest {
            session_id: id.clone(),
            ttl: Some(seconds(7200)),
        })
        .await
        .expect("TouchSession")
        .into_inner();
    assert_eq!(touched.version, updated.version);

    let full = client
        .get_session(get(None))
        .await
        .expect("GetSession")
        .into_inner()
        .session
        .expect("session");
    assert_eq!(full.messages.len(), 1);
    assert_eq!(full.messages[0].content, "only");
    assert_eq!(full.system_messages[0].content, "Be brief.");
    assert_eq!(full.state.as_ref(), Some(&state));
    assert_eq!(full.expire_time, touched.expire_time);

    // A page may be empty while the listing goes on (a shared test Redis holds many other
    // keys, and one page scans a bounded number): follow the tokens to the end.
    let mut listed = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_sessions(pb::ListSessionsRequest {
                page_size: 10,
                id_prefix: id.clone(),
                page_token,
            })
            .await
            .expect("ListSessions")
            .into_inner();
        listed.extend(page.sessions);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].session_id, id);

    let stats = client
        .get_stats(pb::GetStatsRequest {})
        .await
        .expect("GetStats")
        .into_inner();
    assert!(
        stats.active_sessions >= 1 && stats.total_messages >= 1,
        "{stats:?}"
    );

    let deleted = client
        .delete_session(pb::DeleteSessionRequest {
            session_id: id.clone(),
            expected_version: Some(full.version),
        })
        .await
        .expect("DeleteSession")
        .into_inner();
    assert!(deleted.deleted);
    let gone = client.get_session(get(None)).await.expect_err("deleted");
    assert_eq!(gone.code(), Code::NotFound);

    exercise_records(&mut client, &format!("{id}-records")).await;
}

/// RecordFeedback on a stored answer, and security logs paged by user and time.
pub async fn exercise_records(client: &mut SessionStoreClient<Channel>, id: &str) {
    let mut calling = message(pb::Role::Assistant, "");
    calling.tool_calls = vec![pb::ToolCall {
        id: "c1".into(),
        r#type: "function".into(),
        function: Some(pb::FunctionCall {
            name: "lookup_order".into(),
            arguments: "{}".into(),
        }),
        index: 0,
    }];
    let mut result = message(pb::Role::Tool, "shipped");
    result.tool_call_id = "c1".into();
    client
        .append_messages(pb::AppendMessagesRequest {
            session_id: id.to_string(),
            messages: vec![
                user("Where is my order?"),
                calling,
                result,
                message(pb::Role::Assistant, "It has shipped."),
            ],
            ..Default::default()
        })
        .await
        .expect("AppendMessages");
    let record = client
        .record_feedback(pb::RecordFeedbackRequest {
            session_id: id.to_string(),
            message_seq: 4,
            feedback_score: 1.0,
            participant: "Budi".into(),
            ..Default::default()
        })
        .await
        .expect("RecordFeedback")
        .into_inner();
    assert_eq!(record.query, "Where is my order?");
    assert_eq!(record.response, "It has shipped.");
    assert_eq!(record.tools, ["lookup_order"]);
    let not_an_answer = client
        .record_feedback(pb::RecordFeedbackRequest {
            session_id: id.to_string(),
            message_seq: 1,
            ..Default::default()
        })
        .await
        .expect_err("seq 1 is the user's message");
    assert_eq!(not_an_answer.code(), tonic::Code::InvalidArgument);

    // The learning stream is shared by every test of this server: find ours by id.
    let mut found = None;
    let mut token = String::new();
    loop {
        let page = client
            .list_learning_data(pb::ListLearningDataRequest {
                range: Some(pb::TimeRange {
                    days: 1,
                    ..Default::default()
                }),
                page_size: 50,
                page_token: token,
            })
            .await
            .expect("ListLearningData")
            .into_inner();
        found = found.or_else(|| page.records.into_iter().find(|r| r.id == record.id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let found = found.expect("the record is listed");
    assert_eq!(
        (found.feedback_score, found.participant.as_str()),
        (1.0, "Budi")
    );
    assert_eq!(found.create_time, record.create_time);

    let user_id = format!("{id}-user");
    for (i, allowed) in [true, false, true].into_iter().enumerate() {
        client
            .record_security_log(pb::RecordSecurityLogRequest {
                user_id: user_id.clone(),
                session_id: id.to_string(),
                message: format!("message {i}"),
                allowed,
                reason: if allowed {
                    String::new()
                } else {
                    "spam".into()
                },
                spam_score: i as f64 / 2.0,
                ..Default::default()
            })
            .await
            .expect("RecordSecurityLog");
    }
    let mut logs = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_security_logs(pb::ListSecurityLogsRequest {
                user_id: user_id.clone(),
                range: None,
                page_size: 2,
                page_token: token,
            })
            .await
            .expect("ListSecurityLogs")
            .into_inner();
        pages += 1;
        logs.extend(page.logs);
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(pages, 2);
    let allowed: Vec<bool> = logs.iter().map(|l| l.allowed).collect();
    assert_eq!(allowed, [true, false, true]);
    assert_eq!(logs[1].reason, "spam");
    assert_eq!(logs[2].spam_score, 1.0);
    assert_eq!(
        logs[0].message_hash.len(),
        64,
        "a SHA-256, never the message"
    );
    assert!(logs.iter().all(|l| !l.message_hash.contains("message")));
}

/// Reads a health Watch stream until it reports `status`, for at most 5 seconds.
pub async fn watch_until(
    watch: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
    status: i32,
) {
    let wait = async {
        while let Some(update) = watch.message().await.expect("watch stream") {
            if update.status == status {
                return;
            }
        }
        panic!("the watch stream ended before status {status}");
    };
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .unwrap_or_else(|_| panic!("no status {status} within 5 s"));
}

/// `writers` clients append `appends` messages each, one per RPC, to one session: exactly
/// writers × appends messages end up stored, seqs 1..=N, each writer's in its order.
pub async fn concurrent_appenders_through_the_sidecar(
    server: &TestServer,
    writers: usize,
    appends: usize,
) {
    let session_id = format!(
        "appenders-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let mut client = server.sessions().await;
        let session_id = session_id.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..appends {
                client
                    .append_messages(pb::AppendMessagesRequest {
                        session_id: session_id.clone(),
                        messages: vec![user(&format!("{writer}:{n}"))],
                        ..Default::default()
                    })
                    .await
                    .expect("append");
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer");
    }
    let total = writers * appends;
    let session = server
        .sessions()
        .await
        .get_session(pb::GetSessionRequest {
            session_id: session_id.clone(),
            window: None,
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner()
        .session
        .expect("session");
    assert_eq!(session.messages.len(), total);
    assert_eq!(session.message_count, total as u64);
    let seqs: Vec<u64> = session.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=total as u64).collect::<Vec<u64>>());
    let mut next = vec![0usize; writers];
    for message in &session.messages {
        let (writer, n) = message.content.split_once(':').expect("writer:n");
        let (writer, n): (usize, usize) = (writer.parse().expect("writer"), n.parse().expect("n"));
        assert_eq!(n, next[writer], "writer {writer} out of order");
        next[writer] += 1;
    }
    server
        .sessions()
        .await
        .delete_session(pb::DeleteSessionRequest {
            session_id,
            expected_version: None,
        })
        .await
        .expect("clean up");
}

/// Appends about `total_bytes` of content in 512 KiB messages through the sidecar, reads
/// the last two back over gRPC, and the whole session from the store (a 4 MiB gRPC
/// response cannot carry it), checking every message.
pub async fn large_session_round_trips(server: &TestServer, total_bytes: usize) {
    const PIECE: usize = 512 << 10;
    let id = format!(
        "large-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let piece = |n: usize| format!("{n:08}{}", "x".repeat(PIECE - 8));
    let mut client = server.sessions().await;
    let pieces = total_bytes.div_ceil(PIECE);
    for n in 0..pieces {
        client
            .append_messages(pb::AppendMessagesRequest {
                session_id: id.clone(),
                messages: vec![user(&piece(n))],
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("append {n}: {e:?}"));
    }
    let last_two = client
        .get_session(pb::GetSessionRequest {
            session_id: id.clone(),
            window: Some(pb::get_session_request::Window::LastN(2)),
            ..Default::default()
        })
        .await
        .expect("last 2")
        .into_inner()
        .session
        .expect("session");
    assert_eq!(last_two.message_count, pieces as u64);
    assert_eq!(last_two.messages.len(), 2);
    assert_eq!(last_two.messages[1].content, piece(pieces - 1));

    let whole = server
        .store
        .get(&SessionId::new(id.clone()), Window::All)
        .await
        .expect("whole session");
    assert_eq!(whole.messages.len(), pieces);
    for (n, message) in whole.messages.iter().enumerate() {
        assert_eq!(message.seq, n as u64 + 1);
        assert!(message.body.content == piece(n), "message {n} changed");
    }
    server
        .store
        .delete(&SessionId::new(id), None)
        .await
        .expect("clean up");
}

/// A fresh in-memory store.
pub fn memory_store() -> Arc<dyn SessionStore> {
    Arc::new(MemoryStore::new(MemoryLimits::default()))
}

/// An SQLite store on a file of its own (one process may open a file once).
pub async fn sqlite_store() -> Arc<dyn SessionStore> {
    use csai_sidecar::store::sqlite::{SqliteOptions, SqliteStore, Synchronous};
    let folder = std::env::temp_dir().join(format!("csai-sqlite-{}", std::process::id()));
    std::fs::create_dir_all(&folder).expect("scratch folder");
    let path = folder.join(format!(
        "{}.sqlite3",
        csai_sidecar::conformance::unique_id("db").as_str()
    ));
    Arc::new(
        SqliteStore::open(SqliteOptions {
            path,
            synchronous: Synchronous::Full,
            readers: 4,
            sweep_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(30),
        })
        .await
        .expect("sqlite store"),
    )
}

/// A table prefix no other test (or earlier run) uses.
pub fn fresh_table_prefix() -> String {
    let id = csai_sidecar::conformance::unique_id("t");
    let digits: String = id
        .as_str()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    format!("t{}_", &digits[digits.len().saturating_sub(24)..])
}

/// A PostgreSQL store on the test server, its tables under `table_prefix`.
pub async fn postgres_store(table_prefix: &str) -> Arc<dyn SessionStore> {
    use csai_sidecar::store::postgres::{PostgresOptions, PostgresStore};
    Arc::new(
        PostgresStore::open_and_migrate(PostgresOptions {
            url: required_env("CSAI_TEST_POSTGRES_URL"),
            ca_file: None,
            pool_size: 8,
            table_prefix: table_prefix.to_string(),
            sweep_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(30),
        })
        .await
        .expect("postgres store"),
    )
}
