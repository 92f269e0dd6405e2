//! Overload: RPCs past `max_concurrent_requests` are refused at once with
//! RESOURCE_EXHAUSTED (no queueing), health checks never are, and the sidecar serves
//! again as soon as load drops; a request's deadline stops its work in the sidecar.

use crate::common::llm_server::{Reply, ScriptedModel};
use crate::common::{SidecarProcess, logged_metrics_port, scrape, user};
use csai_sidecar::grpc::pb;
use csai_sidecar::grpc::pb::chat_client::ChatClient;
use csai_sidecar::grpc::pb::session_store_client::SessionStoreClient;
use std::time::{Duration, Instant};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

fn append(session: &str) -> pb::AppendMessagesRequest {
    pb::AppendMessagesRequest {
        session_id: session.into(),
        messages: vec![user("hi")],
        ..Default::default()
    }
}

#[tokio::test]
async fn rpcs_past_the_limit_are_shed_and_health_checks_never_are() {
    // Two slow model answers keep two Exec calls in flight: the whole limit.
    let slow = || Reply::Delayed(Duration::from_secs(2), Box::new(Reply::Text("done".into())));
    let model = ScriptedModel::start(vec![slow(), slow()]).await;
    let (_sidecar, channel) = SidecarProcess::spawn(&[
        ("CSAI_MAX_CONCURRENT_REQUESTS", "2".into()),
        ("CSAI_CHAT_BASE_URL", model.base_url.clone()),
    ])
    .await;
    let turns: Vec<_> = (0..2)
        .map(|i| {
            let mut chat = ChatClient::new(channel.clone());
            tokio::spawn(async move {
                chat.exec(pb::ExecRequest {
                    session_id: format!("overload-turn-{i}"),
                    user_message: Some(pb::UserMessage {
                        content: "hello".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
            })
        })
        .collect();
    let waiting = Instant::now();
    while model.requests().await.len() < 2 {
        assert!(
            waiting.elapsed() < Duration::from_secs(5),
            "the turns never reached the model"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut sessions = SessionStoreClient::new(channel.clone());
    let shed = sessions
        .append_messages(append("overload-shed"))
        .await
        .expect_err("a third RPC is over the limit");
    assert_eq!(shed.code(), tonic::Code::ResourceExhausted, "{shed:?}");
    assert!(
        shed.message().contains("max_concurrent_requests"),
        "{shed:?}"
    );
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health checks are never shed");
    assert_eq!(health.into_inner().status, 1, "SERVING");

    for turn in turns {
        turn.await
            .unwrap()
            .expect("the turns in flight finish normally");
    }
    sessions
        .append_messages(append("overload-after"))
        .await
        .expect("served again once load dropped");
    let refused = sessions
        .get_session(pb::GetSessionRequest {
            session_id: "overload-shed".into(),
            window: None,
            ..Default::default()
        })
        .await
        .expect_err("the shed append stored nothing");
    assert_eq!(refused.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn a_requests_deadline_stops_its_work_and_counts_as_deadline_exceeded() {
    let model = ScriptedModel::start(vec![Reply::Delayed(
        Duration::from_secs(1),
        Box::new(Reply::Text("too late".into())),
    )])
    .await;
    let (mut sidecar, channel) = SidecarProcess::spawn(&[
        ("CSAI_CHAT_BASE_URL", model.base_url.clone()),
        ("CSAI_METRICS_LISTEN", "127.0.0.1:0".into()),
    ])
    .await;
    let metrics_port = logged_metrics_port(&mut sidecar);
    let mut request = tonic::Request::new(pb::ExecRequest {
        session_id: "deadline-turn".into(),
        user_message: Some(pb::UserMessage {
            content: "hello".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    request.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let status = ChatClient::new(channel.clone())
        .exec(request)
        .await
        .expect_err("the model answers after the deadline");
    // tonic's client reports its own deadline as CANCELLED "Timeout expired" (grpc-go
    // and grpcio say DEADLINE_EXCEEDED).
    assert!(
        status.code() == tonic::Code::DeadlineExceeded
            || (status.code() == tonic::Code::Cancelled && status.message() == "Timeout expired"),
        "{status:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // The sidecar dropped the turn at the deadline: well after the model's answer would
    // have come, nothing is stored, and the call is counted as DEADLINE_EXCEEDED.
    tokio::time::sleep_until((started + Duration::from_millis(1500)).into()).await;
    let stored = SessionStoreClient::new(channel)
        .get_session(pb::GetSessionRequest {
            session_id: "deadline-turn".into(),
            window: None,
            ..Default::default()
        })
        .await
        .expect_err("nothing of the turn is stored");
    assert_eq!(stored.code(), tonic::Code::NotFound);
    let series =
        "csai_rpc_requests_total{method=\"/csai.v1.Chat/Exec\",code=\"DEADLINE_EXCEEDED\"} 1";
    let waiting = Instant::now();
    while !scrape(metrics_port, "/metrics").contains(series) {
        assert!(
            waiting.elapsed() < Duration::from_secs(5),
            "{}",
            scrape(metrics_port, "/metrics")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Regression: with every file descriptor in use, the accept loops retried at once
/// forever (2.2 CPU-seconds in 2 s) and a health call on an open connection took 2.7 s.
#[tokio::test]
async fn accept_loops_pause_when_file_descriptors_run_out() {
    let (mut sidecar, channel) = SidecarProcess::spawn_with_open_file_limit(
        &[("CSAI_METRICS_LISTEN", "127.0.0.1:0".into())],
        128,
    )
    .await;
    let metrics_port = logged_metrics_port(&mut sidecar);
    let mut health = HealthClient::new(channel);
    let check = HealthCheckRequest {
        service: String::new(),
    };
    health.check(check.clone()).await.expect("health answers");

    // Idle connections until the sidecar cannot accept any more; then one more on each
    // listener, left waiting in its backlog, so both accept loops meet EMFILE.
    let mut hogs = Vec::new();
    for _ in 0..160 {
        hogs.push(std::net::TcpStream::connect(("127.0.0.1", sidecar.port)).unwrap());
    }
    hogs.push(std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let before = cpu_seconds(sidecar.child.id());
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_seconds(sidecar.child.id()) - before;
    let wall = started.elapsed().as_secs_f64();
    assert!(
        used < 0.25 * wall,
        "the sidecar used {used:.2} CPU-seconds in {wall:.2} s with no descriptor left"
    );
    health
        .check(check.clone())
        .await
        .expect("an open connection is still served");

    drop(hogs);
    let waiting = Instant::now();
    loop {
        let response = std::panic::catch_unwind(|| scrape(metrics_port, "/metrics"));
        if response.is_ok_and(|r| r.starts_with("HTTP/1.1 200")) {
            break;
        }
        assert!(
            waiting.elapsed() < Duration::from_secs(5),
            "metrics never recovered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
