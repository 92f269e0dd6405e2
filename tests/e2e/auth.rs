//! Bearer tokens and tenants: no token, no access; one tenant never sees, lists, deletes
//! or overwrites another's sessions; health stays open; reflection needs a token, has its
//! own small limit and can be turned off.

use crate::common;

use crate::common::{SERVING, TestServer, health_status, message, test_config, user};
use csai_sidecar::chat::completion::Sampling;
use csai_sidecar::chat::provider::{Endpoint, ProviderSettings};
use csai_sidecar::config::{Config, Secret};
use csai_sidecar::grpc::pb;
use csai_sidecar::grpc::pb::chat_client::ChatClient;
use csai_sidecar::grpc::pb::session_store_client::SessionStoreClient;
use std::time::Duration;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

const TOKEN_A: &str = "token-of-shop-a-0123456789";
const TOKEN_B: &str = "token-of-shop-b-9876543210";

fn config() -> Config {
    let mut config = test_config();
    config.auth_tokens = Some(Secret(format!("shop-a:{TOKEN_A},shop-b:{TOKEN_B}")));
    config.chat.providers.push(ProviderSettings {
        name: "echo".into(),
        endpoint: Endpoint::Echo,
        model: "echo".into(),
        context_tokens: 0,
        defaults: Sampling::default(),
        timeout: Duration::from_secs(5),
        max_retries: 0,
    });
    config.chat.default_provider = Some("echo".into());
    config
}

/// Adds the bearer token to every request.
type Attach =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
type Authed = InterceptedService<Channel, Attach>;

fn with_token(channel: Channel, token: &'static str) -> Authed {
    let attach: Attach = Box::new(move |mut request: tonic::Request<()>| {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        Ok(request)
    });
    InterceptedService::new(channel, attach)
}

async fn sessions(server: &TestServer, token: &'static str) -> SessionStoreClient<Authed> {
    SessionStoreClient::new(with_token(server.channel().await, token))
}

fn get(id: &str) -> pb::GetSessionRequest {
    pb::GetSessionRequest {
        session_id: id.into(),
        window: None,
        ..Default::default()
    }
}

#[tokio::test]
async fn requests_without_a_valid_token_are_unauthenticated_but_health_is_open() {
    let server = TestServer::start_serving(config(), common::memory_store()).await;
    let mut anonymous = server.sessions().await;
    let status = anonymous.get_session(get("s")).await.expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = SessionStoreClient::new(with_token(
        server.channel().await,
        "not-a-valid-token-at-all",
    ))
    .get_session(get("s"))
    .await
    .expect_err("wrong token");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        !status.message().contains("token-of"),
        "{}",
        status.message()
    );
    let status = ChatClient::new(server.channel().await)
        .exec(pb::ExecRequest::default())
        .await
        .expect_err("chat needs a token too");
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut health = server.health().await;
    common::wait_for_status(&mut health, "csai.v1.SessionStore", SERVING).await;
    assert_eq!(health_status(&mut health, "").await, SERVING);
}

#[tokio::test]
async fn one_tenant_never_reaches_anothers_sessions() {
    let server = TestServer::start_serving(config(), common::memory_store()).await;
    let mut a = sessions(&server, TOKEN_A).await;
    let mut b = sessions(&server, TOKEN_B).await;
    let append = |content: &str| pb::AppendMessagesRequest {
        session_id: "customer-1".into(),
        messages: vec![user(content), message(pb::Role::Assistant, "ok")],
        ..Default::default()
    };
    a.append_messages(append("A's secret"))
        .await
        .expect("A writes");

    let status = b
        .get_session(get("customer-1"))
        .await
        .expect_err("B cannot read it");
    assert_eq!(
        status.code(),
        Code::NotFound,
        "another tenant's session reads as absent"
    );
    // Regression: the message showed the stored id, tenant prefix and all.
    assert_eq!(
        status.message(),
        "session \"customer-1\" does not exist or has expired"
    );
    let listed = b
        .list_sessions(pb::ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.sessions.is_empty(), "{listed:?}");
    let deleted = b
        .delete_session(pb::DeleteSessionRequest {
            session_id: "customer-1".into(),
            expected_version: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!deleted.deleted);
    b.append_messages(append("B's own"))
        .await
        .expect("B writes its own customer-1");
    b.replace_messages(pb::ReplaceMessagesRequest {
        session_id: "customer-1".into(),
        messages: vec![user("B replaced")],
        ..Default::default()
    })
    .await
    .expect("B replaces its own");

    let a_session = a
        .get_session(get("customer-1"))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(
        a_session.messages[0].content, "A's secret",
        "A's session is untouched"
    );
    assert_eq!(
        a_session.session_id, "customer-1",
        "ids come back without the tenant"
    );
    let b_session = b
        .get_session(get("customer-1"))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(b_session.messages[0].content, "B replaced");

    let a_list = a
        .list_sessions(pb::ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a_list.sessions.len(), 1);
    assert_eq!(a_list.sessions[0].session_id, "customer-1");
    let a_stats = a
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((a_stats.active_sessions, a_stats.total_messages), (1, 2));
    let exported: Vec<pb::ExportedSession> = {
        use futures::TryStreamExt;
        b.export_sessions(pb::ExportSessionsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .try_collect()
            .await
            .unwrap()
    };
    assert_eq!(exported.len(), 1);
    assert_eq!(
        exported[0].session.as_ref().unwrap().messages[0].content,
        "B replaced"
    );

    // Records and chat turns are scoped too.
    a.record_security_log(pb::RecordSecurityLogRequest {
        user_id: "u1".into(),
        message: "hi".into(),
        allowed: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let logs = b
        .list_security_logs(pb::ListSecurityLogsRequest {
            user_id: "u1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(logs.logs.is_empty(), "B sees none of A's records");
    let records = |stats: pb::GetStatsResponse| (stats.learning_records, stats.security_logs);
    let a_stats = a.get_stats(pb::GetStatsRequest::default()).await.unwrap();
    let b_stats = b.get_stats(pb::GetStatsRequest::default()).await.unwrap();
    assert_eq!(records(a_stats.into_inner()), (0, 1), "A counts its log");
    assert_eq!(
        records(b_stats.into_inner()),
        (0, 0),
        "B counts none of A's"
    );
    let mut chat_b = ChatClient::new(with_token(server.channel().await, TOKEN_B));
    let turn = chat_b
        .exec(pb::ExecRequest {
            session_id: "customer-1".into(),
            user_message: Some(pb::UserMessage {
                content: "next".into(),
                participant_name: String::new(),
            }),
            ..Default::default()
        })
        .await
        .expect("B's turn")
        .into_inner();
    assert_eq!(turn.first_seq, 2, "B's turn continues B's session, not A's");
    let a_after = a
        .get_session(get("customer-1"))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(a_after.message_count, 2);
}

#[tokio::test]
async fn reflection_can_be_turned_off() {
    let mut config = test_config();
    config.reflection = false;
    let server = TestServer::start_serving(config, common::memory_store()).await;
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
            server.channel().await,
        );
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let result = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await;
    let code = match result {
        Err(status) => status.code(),
        Ok(response) => {
            use futures::StreamExt;
            let mut stream = response.into_inner();
            match stream.next().await {
                Some(Err(status)) => status.code(),
                other => panic!("reflection answered: {other:?}"),
            }
        }
    };
    assert_eq!(code, Code::Unimplemented);
}

type ReflectionClient<T> =
    tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient<T>;

fn list_services() -> tonic_reflection::pb::v1::ServerReflectionRequest {
    tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    }
}

/// The first answer of a reflection stream: its status code, or OK with an answer.
async fn first_reflection_answer<T>(mut client: ReflectionClient<T>) -> Code
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    use futures::StreamExt;
    match client
        .server_reflection_info(futures::stream::iter([list_services()]))
        .await
    {
        Err(status) => status.code(),
        Ok(response) => match response.into_inner().next().await {
            Some(Ok(_)) => Code::Ok,
            Some(Err(status)) => status.code(),
            None => Code::Unknown,
        },
    }
}

#[tokio::test]
async fn reflection_needs_a_token_when_tokens_are_configured() {
    let server = TestServer::start_serving(config(), common::memory_store()).await;
    let anonymous = ReflectionClient::new(server.channel().await);
    assert_eq!(
        first_reflection_answer(anonymous).await,
        Code::Unauthenticated
    );
    let authenticated = ReflectionClient::new(with_token(server.channel().await, TOKEN_A));
    assert_eq!(first_reflection_answer(authenticated).await, Code::Ok);
}

/// Regression: eight idle reflection streams used to take the whole
/// `max_concurrent_requests = 8`, and a tenant's RPCs were shed while health said SERVING.
#[tokio::test]
async fn idle_reflection_and_health_watch_streams_never_take_the_rpc_capacity() {
    use csai_sidecar::server::load_shed::{MAX_HEALTH_WATCHES, MAX_REFLECTION_STREAMS};
    let mut config = test_config();
    config.max_concurrent_requests = 8;
    let server = TestServer::start_serving(config, common::memory_store()).await;
    let channel = server.channel().await;

    // Streams that send nothing and never end, held open for the whole test.
    let mut held = Vec::new();
    for _ in 0..MAX_REFLECTION_STREAMS {
        let stream = ReflectionClient::new(channel.clone())
            .server_reflection_info(futures::stream::pending())
            .await
            .expect("a reflection stream within its own limit opens");
        held.push(stream);
    }
    let over = ReflectionClient::new(channel.clone())
        .server_reflection_info(futures::stream::pending())
        .await
        .expect_err("one reflection stream past its limit is shed");
    assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");

    let mut watches = Vec::new();
    for _ in 0..MAX_HEALTH_WATCHES {
        let watch = tonic_health::pb::health_client::HealthClient::new(channel.clone())
            .watch(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("a watch within its limit opens");
        watches.push(watch);
    }
    let over = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect_err("one watch past its limit is shed");
    assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");

    // The csai services keep their whole capacity, and probes still answer.
    let mut sessions = SessionStoreClient::new(channel.clone());
    for _ in 0..16 {
        sessions
            .get_stats(pb::GetStatsRequest::default())
            .await
            .expect("GetStats is not shed by other streams");
    }
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    common::wait_for_status(&mut health, "", SERVING).await;
    drop((held, watches));
}
