//! End-to-end tests of the server around the services: health, reflection, shutdown.

use crate::common::{
    FaultyStore, NOT_SERVING, SERVING, TestServer, health_status, test_config, user,
    wait_for_status, watch_until,
};
use csai_sidecar::domain::{SessionId, Window};
use csai_sidecar::grpc::pb;
use csai_sidecar::store::SessionStore;
use csai_sidecar::store::memory::{MemoryLimits, MemoryStore};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::Code;

#[tokio::test]
async fn health_reports_each_service() {
    let server = TestServer::start().await;
    let mut health = server.health().await;
    wait_for_status(&mut health, "", SERVING).await;
    assert_eq!(
        health_status(&mut health, "csai.v1.SessionStore").await,
        SERVING
    );
    // The defaults configure no model: the built-in echo model serves Chat.
    assert_eq!(health_status(&mut health, "csai.v1.Chat").await, SERVING);
    let unknown = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(unknown.code(), Code::NotFound);
}

/// When the backend fails its health check, csai.v1.SessionStore (readiness) turns
/// NOT_SERVING and RPCs fail with UNAVAILABLE while "" (liveness) stays SERVING: a
/// restart would not bring the backend back. Readiness returns with the backend.
#[tokio::test]
async fn health_follows_the_backend_check() {
    let memory = Arc::new(MemoryStore::new(MemoryLimits::default()));
    let faulty = Arc::new(FaultyStore::new(memory.clone()));
    let server = TestServer::start_serving(test_config(), faulty.clone()).await;
    let mut health = server.health().await;
    let mut sessions = server.sessions().await;
    wait_for_status(&mut health, "csai.v1.SessionStore", SERVING).await;

    faulty.set_down(true);
    wait_for_status(&mut health, "csai.v1.SessionStore", NOT_SERVING).await;
    assert_eq!(health_status(&mut health, "").await, SERVING);
    assert_eq!(
        health_status(&mut health, "csai.v1.Chat").await,
        NOT_SERVING
    );
    let status = sessions
        .get_session(pb::GetSessionRequest {
            session_id: "any".into(),
            window: None,
            ..Default::default()
        })
        .await
        .expect_err("backend down");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("retry with backoff"),
        "{status:?}"
    );

    faulty.set_down(false);
    wait_for_status(&mut health, "csai.v1.SessionStore", SERVING).await;
    assert_eq!(health_status(&mut health, "").await, SERVING);
    assert_eq!(health_status(&mut health, "csai.v1.Chat").await, SERVING);
}

#[tokio::test]
async fn health_watch_sees_shutdown() {
    let mut server = TestServer::start().await;
    let mut health = server.health().await;
    wait_for_status(&mut health, "csai.v1.SessionStore", SERVING).await;
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: "csai.v1.SessionStore".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.next().await.expect("first status").expect("status");
    assert_eq!(first.status, SERVING);
    server.begin_shutdown();
    watch_until(&mut watch, NOT_SERVING).await;
    drop(watch);
    server.stop().await.expect("clean stop");
}

/// The services a reflection client of one protocol version (`v1` or `v1alpha`) lists.
macro_rules! reflected_services {
    ($server:expr, $version:ident) => {{
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new($server.channel().await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = client
            .server_reflection_info(futures::stream::iter(vec![request]))
            .await
            .expect("reflection")
            .into_inner();
        match responses
            .next()
            .await
            .expect("one response")
            .expect("ok")
            .message_response
        {
            Some(MessageResponse::ListServicesResponse(list)) => list
                .service
                .into_iter()
                .map(|s| s.name)
                .collect::<HashSet<String>>(),
            other => panic!("unexpected reflection answer {other:?}"),
        }
    }};
}

#[tokio::test]
async fn reflection_lists_both_services_in_v1_and_v1alpha() {
    let server = TestServer::start().await;
    for services in [
        reflected_services!(server, v1),
        reflected_services!(server, v1alpha),
    ] {
        for name in [
            "csai.v1.SessionStore",
            "csai.v1.Chat",
            "grpc.health.v1.Health",
        ] {
            assert!(services.contains(name), "{name} missing from {services:?}");
        }
    }
}

#[tokio::test]
async fn reflection_describes_the_session_store_file() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let server = TestServer::start().await;
    let mut client = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "csai.v1.SessionStore".into(),
        )),
    };
    let mut responses = client
        .server_reflection_info(futures::stream::iter(vec![request]))
        .await
        .expect("reflection")
        .into_inner();
    match responses
        .next()
        .await
        .expect("one response")
        .expect("ok")
        .message_response
    {
        Some(MessageResponse::FileDescriptorResponse(files)) => {
            assert!(!files.file_descriptor_proto.is_empty());
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

/// Appends in flight when shutdown begins complete before `serve` returns (the binary
/// exits right after it), and their callers get their answers.
#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_appends() {
    let memory = Arc::new(MemoryStore::new(MemoryLimits::default()));
    let slow =
        Arc::new(FaultyStore::new(memory.clone()).with_append_delay(Duration::from_millis(300)));
    let mut server = TestServer::start_serving(test_config(), slow).await;
    let mut in_flight = Vec::new();
    for n in 0..16 {
        let mut client = server.sessions().await;
        in_flight.push(tokio::spawn(async move {
            client
                .append_messages(pb::AppendMessagesRequest {
                    session_id: format!("slow-{n}"),
                    messages: vec![user("in flight")],
                    ..Default::default()
                })
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.begin_shutdown();
    server.stop().await.expect("clean stop");
    let stats = memory.stats().await.expect("stats");
    assert_eq!(
        stats.total_messages, 16,
        "serve returned before the in-flight appends finished"
    );
    for request in in_flight {
        let response = request
            .await
            .expect("task")
            .expect("an in-flight append completes");
        assert_eq!(response.into_inner().seqs, vec![1]);
    }
}

/// Appends keep flowing from 8 writers while the server shuts down: every append the server
/// acknowledged is in the store afterwards, and the writers see clean errors, not hangs.
#[tokio::test]
async fn graceful_shutdown_loses_no_acknowledged_append() {
    let mut server = TestServer::start().await;
    let store = server.store.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..8 {
        let mut client = server.sessions().await;
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for n in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let content = format!("w{writer}-{n}");
                let request = pb::AppendMessagesRequest {
                    session_id: format!("writer-{writer}"),
                    messages: vec![user(&content)],
                    ..Default::default()
                };
                match client.append_messages(request).await {
                    Ok(response) => acknowledged.push((response.into_inner().seqs[0], content)),
                    Err(status) => {
                        assert!(
                            matches!(
                                status.code(),
                                Code::Unavailable | Code::Cancelled | Code::Unknown
                            ),
                            "unexpected error during shutdown: {status:?}"
                        );
                        break;
                    }
                }
            }
            (writer, acknowledged)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.begin_shutdown();
    let stopped = tokio::time::timeout(Duration::from_secs(10), server.stop())
        .await
        .expect("the server stops within the grace period");
    stopped.expect("clean stop");
    stop.store(true, Ordering::Relaxed);

    let mut total = 0;
    for writer in writers {
        let (writer, acknowledged) = writer.await.expect("writer");
        assert!(
            !acknowledged.is_empty(),
            "writer {writer} never got through"
        );
        let session = store
            .get(&SessionId::new(format!("writer-{writer}")), Window::All)
            .await
            .expect("the session of an acknowledged append exists");
        for (seq, content) in &acknowledged {
            let stored = &session.messages[(*seq - 1) as usize];
            assert_eq!(
                &stored.body.content, content,
                "acknowledged append {seq} lost"
            );
        }
        assert!(session.messages.len() >= acknowledged.len());
        total += acknowledged.len();
    }
    assert!(total > 8, "too few appends to test anything: {total}");
}
