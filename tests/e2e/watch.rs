//! Change feeds: WatchSession and WatchSessions on every backend, across two sidecar
//! processes sharing one backend, resumed after a forced disconnect, cut off when slow,
//! scoped to tenants, ended at shutdown.

use crate::common::{
    SERVING, SidecarProcess, TestServer, free_port, required_env, test_config, user,
    wait_for_status,
};
use csai_sidecar::config::Secret;
use csai_sidecar::grpc::pb;
use csai_sidecar::grpc::pb::session_event::Change;
use csai_sidecar::grpc::pb::session_store_client::SessionStoreClient;
use pb::SessionChangeKind as Kind;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

/// Longest wait for one event: polling backends poll every 200 ms here.
const EVENT_WITHIN: Duration = Duration::from_secs(10);

pub fn unique(name: &str) -> String {
    format!("{name}-{}-{}", std::process::id(), free_port())
}

/// The settings of two replicas sharing one backend (None: the backend is one process's).
pub fn backend_vars(backend: &str) -> Vec<(&'static str, String)> {
    let mut vars = vec![
        ("CSAI_STORAGE_TYPE", backend.to_string()),
        ("CSAI_WATCH_POLL_INTERVAL", "200ms".to_string()),
    ];
    match backend {
        "redis" => vars.extend([
            ("CSAI_REDIS_ADDRESS", required_env("CSAI_TEST_REDIS_URL")),
            ("CSAI_REDIS_KEY_PREFIX", format!("{}:", unique("watch"))),
        ]),
        "redis-cluster" => {
            vars[0].1 = "redis".into();
            vars.extend([
                (
                    "CSAI_REDIS_CLUSTER_NODES",
                    required_env("CSAI_TEST_REDIS_CLUSTER"),
                ),
                ("CSAI_REDIS_KEY_PREFIX", format!("{}:", unique("watch"))),
            ])
        }
        "postgres" => vars.extend([
            ("CSAI_POSTGRES_URL", required_env("CSAI_TEST_POSTGRES_URL")),
            (
                "CSAI_POSTGRES_TABLE_PREFIX",
                unique("watch").replace('-', "_") + "_",
            ),
        ]),
        "mongo" => vars.extend([
            ("CSAI_MONGO_URI", required_env("CSAI_TEST_MONGO_URI")),
            ("CSAI_MONGO_DATABASE", unique("watch")),
        ]),
        "dynamo" => vars.extend([
            (
                "CSAI_DYNAMO_ENDPOINT",
                required_env("CSAI_TEST_DYNAMO_ENDPOINT"),
            ),
            ("CSAI_DYNAMO_TABLE", unique("watch")),
            ("CSAI_DYNAMO_CREATE_TABLE", "true".into()),
        ]),
        "sqlite" => {
            let dir = std::env::temp_dir().join(unique("csai-watch"));
            std::fs::create_dir_all(&dir).unwrap();
            vars.push((
                "CSAI_SQLITE_PATH",
                dir.join("sessions.db").display().to_string(),
            ));
        }
        _ => {}
    }
    vars
}

async fn next_event(stream: &mut Streaming<pb::SessionEvent>) -> pb::SessionEvent {
    tokio::time::timeout(EVENT_WITHIN, stream.message())
        .await
        .expect("an event in time")
        .expect("the stream goes on")
        .expect("the stream is open")
}

async fn next_summary(stream: &mut Streaming<pb::SessionSummaryEvent>) -> pb::SessionSummaryEvent {
    tokio::time::timeout(EVENT_WITHIN, stream.message())
        .await
        .expect("a summary in time")
        .expect("the stream goes on")
        .expect("the stream is open")
}

/// What a client keeps of a watched session.
#[derive(Default)]
struct Mirror {
    seqs: Vec<u64>,
    contents: Vec<String>,
    state: Option<prost_types::Struct>,
    version: u64,
    token: String,
    gone: Option<&'static str>,
    expire_time: Option<prost_types::Timestamp>,
    touches: usize,
}

impl Mirror {
    fn apply(&mut self, event: pb::SessionEvent) -> Change {
        let change = event.change.clone().expect("every event says what changed");
        match &change {
            Change::Appended(list) | Change::Replaced(list) => {
                if matches!(change, Change::Replaced(_)) {
                    self.seqs.clear();
                    self.contents.clear();
                }
                for message in &list.messages {
                    self.seqs.push(message.seq);
                    self.contents.push(message.content.clone());
                }
                self.gone = None;
            }
            Change::State(state) => self.state = Some(state.clone()),
            Change::Touched(_) => self.touches += 1,
            Change::Deleted(_) | Change::Expired(_) => {
                self.seqs.clear();
                self.contents.clear();
                self.gone = Some(if matches!(change, Change::Deleted(_)) {
                    "deleted"
                } else {
                    "expired"
                });
            }
            _ => {}
        }
        self.version = event.version;
        self.token = event.resume_token;
        self.expire_time = event.expire_time;
        change
    }

    /// Applies events until `done` holds.
    async fn follow(
        &mut self,
        stream: &mut Streaming<pb::SessionEvent>,
        done: impl Fn(&Mirror) -> bool,
    ) {
        while !done(self) {
            let event = next_event(stream).await;
            self.apply(event);
        }
    }
}

async fn append(client: &mut SessionStoreClient<Channel>, id: &str, contents: &[&str]) -> u64 {
    client
        .append_messages(pb::AppendMessagesRequest {
            session_id: id.into(),
            messages: contents.iter().map(|c| user(c)).collect(),
            ..Default::default()
        })
        .await
        .expect("append")
        .into_inner()
        .version
}

async fn watch(
    client: &mut SessionStoreClient<Channel>,
    id: &str,
    token: &str,
) -> Streaming<pb::SessionEvent> {
    client
        .watch_session(pb::WatchSessionRequest {
            session_id: id.into(),
            resume_token: token.into(),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner()
}

/// The feed contract on `backend`: writes through `writer` reach a watcher on `reader`.
async fn feeds_follow_writes(
    writer: &mut SessionStoreClient<Channel>,
    reader: &mut SessionStoreClient<Channel>,
) {
    let id = unique("feed");
    let mut dashboard = reader
        .watch_sessions(pb::WatchSessionsRequest {
            id_prefix: id.clone(),
            resume_token: String::new(),
        })
        .await
        .expect("watch sessions")
        .into_inner();
    assert_eq!(
        next_summary(&mut dashboard).await.kind,
        Kind::CaughtUp as i32
    );

    // Absent at first: the catch-up is empty.
    let mut stream = watch(reader, &id, "").await;
    let mut mirror = Mirror::default();
    assert!(matches!(
        mirror.apply(next_event(&mut stream).await),
        Change::CaughtUp(_)
    ));

    append(writer, &id, &["one", "two", "three"]).await;
    mirror.follow(&mut stream, |m| m.seqs.len() == 3).await;
    assert_eq!(mirror.seqs, [1, 2, 3]);
    let created = next_summary(&mut dashboard).await;
    assert_eq!(
        (created.kind, created.session_id.as_str()),
        (Kind::Created as i32, id.as_str())
    );
    assert_eq!(created.message_count, 3);

    // A forced disconnect, then writes the watcher does not see, then a resume.
    drop(stream);
    append(writer, &id, &["four"]).await;
    append(writer, &id, &["five"]).await;
    let state = prost_types::Struct {
        fields: [(
            "stage".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue("refund".into())),
            },
        )]
        .into(),
    };
    let updated = writer
        .update_state(pb::UpdateStateRequest {
            session_id: id.clone(),
            state: Some(state.clone()),
            ..Default::default()
        })
        .await
        .expect("state")
        .into_inner();
    let mut stream = watch(reader, &id, &mirror.token).await;
    let mut caught_up = false;
    while !caught_up {
        caught_up = matches!(
            mirror.apply(next_event(&mut stream).await),
            Change::CaughtUp(_)
        );
    }
    assert_eq!(mirror.seqs, [1, 2, 3, 4, 5], "no gap, no message twice");
    assert_eq!(mirror.contents[3..], ["four", "five"]);
    assert_eq!(mirror.state.as_ref(), Some(&state));
    assert_eq!(mirror.version, updated.version);

    // Live again.
    let six = writer
        .append_messages(pb::AppendMessagesRequest {
            session_id: id.clone(),
            messages: vec![user("six")],
            ..Default::default()
        })
        .await
        .expect("append")
        .into_inner();
    mirror.follow(&mut stream, |m| m.seqs.len() == 6).await;
    assert_eq!(mirror.seqs, [1, 2, 3, 4, 5, 6]);
    assert_eq!(
        mirror.expire_time, six.expire_time,
        "every event says the expiry"
    );

    // Only the expiry changes: one touched event, the version unchanged.
    let touched = writer
        .touch_session(pb::TouchSessionRequest {
            session_id: id.clone(),
            ttl: Some(prost_types::Duration {
                seconds: 7200,
                nanos: 0,
            }),
        })
        .await
        .expect("touch")
        .into_inner();
    mirror.follow(&mut stream, |m| m.touches == 1).await;
    assert_eq!(mirror.expire_time, touched.expire_time);
    assert_eq!(mirror.version, six.version);

    // The dashboard saw the appends (latest per session) and the state change.
    let mut last_count = 0;
    while last_count < 6 {
        let summary = next_summary(&mut dashboard).await;
        assert_eq!(summary.session_id, id);
        if summary.message_count > 0 {
            last_count = summary.message_count;
        }
    }

    // Deleted, then written again: the stream goes on.
    writer
        .delete_session(pb::DeleteSessionRequest {
            session_id: id.clone(),
            expected_version: None,
        })
        .await
        .expect("delete");
    mirror.follow(&mut stream, |m| m.gone.is_some()).await;
    assert_eq!(mirror.gone, Some("deleted"));
    assert_eq!(mirror.version, 0);
    loop {
        let summary = next_summary(&mut dashboard).await;
        if summary.kind == Kind::Deleted as i32 {
            assert_eq!(summary.session_id, id);
            break;
        }
    }
    append(writer, &id, &["again"]).await;
    mirror
        .follow(&mut stream, |m| m.gone.is_none() && m.seqs == [1])
        .await;
    assert_eq!(mirror.contents, ["again"]);

    // Expiry, seen by both feeds.
    let short = unique("feed-expiring");
    let short = format!("{id}{short}");
    let mut expiring = watch(reader, &short, "").await;
    let mut expiring_mirror = Mirror::default();
    expiring_mirror.apply(next_event(&mut expiring).await);
    writer
        .append_messages(pb::AppendMessagesRequest {
            session_id: short.clone(),
            messages: vec![user("brief")],
            ttl: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .expect("append with a short ttl");
    expiring_mirror
        .follow(&mut expiring, |m| m.seqs == [1])
        .await;
    expiring_mirror
        .follow(&mut expiring, |m| m.gone.is_some())
        .await;
    assert_eq!(expiring_mirror.gone, Some("expired"));
    loop {
        let summary = next_summary(&mut dashboard).await;
        if summary.session_id == short && summary.kind == Kind::Expired as i32 {
            break;
        }
    }
}

async fn on_two_replicas(backend: &str) {
    let vars = backend_vars(backend);
    let (mut sidecar_a, channel_a) = SidecarProcess::spawn(&vars).await;
    let (mut sidecar_b, channel_b) = SidecarProcess::spawn(&vars).await;
    let mut a = serving(channel_a).await;
    let mut b = serving(channel_b).await;
    let run = tokio::spawn(async move { feeds_follow_writes(&mut a, &mut b).await });
    if let Err(failure) = run.await {
        eprintln!("writer's log:\n{}", sidecar_a.stop_and_read_logs());
        eprintln!("watcher's log:\n{}", sidecar_b.stop_and_read_logs());
        std::panic::resume_unwind(failure.into_panic());
    }
}

async fn on_one_process(backend: &str) {
    let (_sidecar, channel) = SidecarProcess::spawn(&backend_vars(backend)).await;
    let mut client = serving(channel).await;
    feeds_follow_writes(&mut client.clone(), &mut client).await;
}

pub async fn serving(channel: Channel) -> SessionStoreClient<Channel> {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    wait_for_status(&mut health, "csai.v1.SessionStore", SERVING).await;
    SessionStoreClient::new(channel)
}

#[tokio::test]
async fn memory_feeds_follow_writes() {
    on_one_process("memory").await;
}

#[tokio::test]
async fn sqlite_feeds_follow_writes() {
    on_one_process("sqlite").await;
}

#[tokio::test]
async fn redis_feeds_cross_replicas() {
    on_two_replicas("redis").await;
}

#[tokio::test]
async fn redis_cluster_feeds_cross_replicas() {
    on_two_replicas("redis-cluster").await;
}

#[tokio::test]
async fn postgres_feeds_cross_replicas() {
    on_two_replicas("postgres").await;
}

#[tokio::test]
async fn mongo_feeds_cross_replicas_by_polling() {
    on_two_replicas("mongo").await;
}

#[tokio::test]
async fn dynamo_feeds_cross_replicas_by_polling() {
    on_two_replicas("dynamo").await;
}

/// A watcher that does not read while 500 appends land gets every one of them once it
/// reads, in order; a dashboard that does not read while more than `watch_buffer`
/// sessions change (past what its HTTP/2 window holds) is cut off with a resumable
/// position, and the resume lists them all.
#[tokio::test]
async fn slow_watchers_lose_nothing_and_dashboards_resume_after_falling_behind() {
    let mut config = test_config();
    config.watch_buffer = 4;
    let server = TestServer::start_with(config, Default::default()).await;
    let mut client = server.sessions().await;

    let mut stream = watch(&mut client, "slow", "").await;
    let mut mirror = Mirror::default();
    mirror.apply(next_event(&mut stream).await);
    for n in 0..500 {
        append(&mut client, "slow", &[&format!("m{n}")]).await;
    }
    mirror.follow(&mut stream, |m| m.seqs.len() >= 500).await;
    assert_eq!(mirror.seqs, (1..=500).collect::<Vec<u64>>());

    // A client that reads nothing: its HTTP/2 window (1 KiB here) fills, the sidecar
    // stops pulling the feed, and changes pile up until more than watch_buffer sessions.
    let slow_channel = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .initial_stream_window_size(1024)
        .connect()
        .await
        .expect("connect");
    let mut dashboard = SessionStoreClient::new(slow_channel)
        .watch_sessions(pb::WatchSessionsRequest {
            id_prefix: "busy-".into(),
            resume_token: String::new(),
        })
        .await
        .expect("watch sessions")
        .into_inner();
    let caught_up = next_summary(&mut dashboard).await;
    assert_eq!(caught_up.kind, Kind::CaughtUp as i32);
    const SESSIONS: usize = 1000;
    for n in 0..SESSIONS {
        append(&mut client, &format!("busy-{n:04}"), &["hello"]).await;
    }
    append(&mut client, "elsewhere", &["not under the prefix"]).await;
    let mut seen = Vec::new();
    let fell_behind = loop {
        let summary = next_summary(&mut dashboard).await;
        if summary.kind == Kind::FellBehind as i32 {
            break summary;
        }
        seen.push(summary.session_id);
    };
    let status = dashboard
        .message()
        .await
        .expect_err("the stream ends after FELL_BEHIND");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("watch_buffer"), "{status:?}");

    let mut resumed = client
        .watch_sessions(pb::WatchSessionsRequest {
            id_prefix: "busy-".into(),
            resume_token: fell_behind.resume_token,
        })
        .await
        .expect("resume")
        .into_inner();
    loop {
        let summary = next_summary(&mut resumed).await;
        if summary.kind == Kind::CaughtUp as i32 {
            break;
        }
        assert_eq!(summary.kind, Kind::Changed as i32);
        seen.push(summary.session_id);
    }
    seen.sort();
    seen.dedup();
    let expected: Vec<String> = (0..SESSIONS).map(|n| format!("busy-{n:04}")).collect();
    assert_eq!(
        seen, expected,
        "every session that changed, none from elsewhere"
    );
}

/// A tenant's feeds see only its own sessions, under the ids it knows.
#[tokio::test]
async fn a_tenants_feeds_see_only_its_sessions() {
    const TOKEN_A: &str = "token-of-shop-a-0123456789";
    const TOKEN_B: &str = "token-of-shop-b-9876543210";
    let mut config = test_config();
    config.auth_tokens = Some(Secret(format!("shop-a:{TOKEN_A},shop-b:{TOKEN_B}")));
    let server = TestServer::start_with(config, Default::default()).await;
    let channel = server.channel().await;
    let with = |token: &'static str| {
        SessionStoreClient::with_interceptor(
            channel.clone(),
            move |mut request: tonic::Request<()>| {
                request
                    .metadata_mut()
                    .insert("authorization", format!("Bearer {token}").parse().unwrap());
                Ok(request)
            },
        )
    };
    let (mut a, mut b) = (with(TOKEN_A), with(TOKEN_B));
    let mut a_feed = a
        .watch_session(pb::WatchSessionRequest {
            session_id: "shared-name".into(),
            ..Default::default()
        })
        .await
        .expect("a watches")
        .into_inner();
    let mut a_dashboard = a
        .watch_sessions(pb::WatchSessionsRequest::default())
        .await
        .expect("a's dashboard")
        .into_inner();
    assert!(matches!(
        next_event(&mut a_feed).await.change,
        Some(Change::CaughtUp(_))
    ));
    assert_eq!(
        next_summary(&mut a_dashboard).await.kind,
        Kind::CaughtUp as i32
    );
    b.append_messages(pb::AppendMessagesRequest {
        session_id: "shared-name".into(),
        messages: vec![user("b's secret")],
        ..Default::default()
    })
    .await
    .expect("b appends");
    a.append_messages(pb::AppendMessagesRequest {
        session_id: "shared-name".into(),
        messages: vec![user("a's own")],
        ..Default::default()
    })
    .await
    .expect("a appends");
    let event = next_event(&mut a_feed).await;
    let Some(Change::Appended(list)) = event.change else {
        panic!("a's append first: {event:?}");
    };
    assert_eq!(list.messages.len(), 1);
    assert_eq!(list.messages[0].content, "a's own");
    let summary = next_summary(&mut a_dashboard).await;
    assert_eq!(
        summary.session_id, "shared-name",
        "the id a knows, without the tenant"
    );
    assert_eq!(summary.message_count, 1);
    // Nothing of b's reaches a's dashboard.
    let more = tokio::time::timeout(Duration::from_millis(300), a_dashboard.message()).await;
    assert!(more.is_err(), "a's dashboard got {more:?}");
    // Without a token, no feed.
    let status = SessionStoreClient::new(channel)
        .watch_sessions(pb::WatchSessionsRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);
}

/// Shutdown ends open feeds at once with UNAVAILABLE (they would hold it for its whole
/// grace), bad tokens are refused, and the watcher limit holds.
#[tokio::test]
async fn feeds_end_at_shutdown_refuse_bad_tokens_and_respect_the_limit() {
    let mut config = test_config();
    config.watch_max_watchers = 2;
    config.shutdown_grace = Duration::from_secs(30);
    let server = TestServer::start_with(config, Default::default()).await;
    let mut client = server.sessions().await;
    let status = client
        .watch_session(pb::WatchSessionRequest {
            session_id: "s".into(),
            resume_token: "p1.123".into(),
            ..Default::default()
        })
        .await
        .expect_err("a WatchSessions token");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("resume_token"), "{status:?}");
    let mut first = watch(&mut client, "s", "").await;
    let _second = watch(&mut client, "t", "").await;
    let status = client
        .watch_session(pb::WatchSessionRequest {
            session_id: "u".into(),
            ..Default::default()
        })
        .await
        .expect_err("a third watcher");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(matches!(
        next_event(&mut first).await.change,
        Some(Change::CaughtUp(_))
    ));
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(server.stop());
    let status = tokio::time::timeout(Duration::from_secs(5), first.message())
        .await
        .expect("the feed ends at once")
        .expect_err("with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    drop(_second);
    stopping.await.unwrap().expect("the sidecar stops");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}
