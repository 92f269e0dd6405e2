//! The Prometheus endpoint after real traffic, and slow-operation warnings from a paused
//! redis-server.

use crate::common;

use crate::common::{SidecarProcess, logged_metrics_port, message, required_env, scrape, user};
use csai_sidecar::grpc::pb;
use csai_sidecar::grpc::pb::session_store_client::SessionStoreClient;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn append(session: &str, text: &str) -> pb::AppendMessagesRequest {
    pb::AppendMessagesRequest {
        session_id: session.into(),
        messages: vec![user(text), message(pb::Role::Assistant, "ok")],
        ..Default::default()
    }
}

#[tokio::test]
async fn metrics_endpoint_serves_backend_series_after_traffic() {
    // Port 0: the sidecar binds a free port and logs it (a port picked here could be
    // taken by a parallel test before the sidecar binds it).
    let (mut sidecar, channel) = SidecarProcess::spawn(&[
        ("CSAI_METRICS_LISTEN", "127.0.0.1:0".into()),
        ("CSAI_STATS_REFRESH_INTERVAL", "100ms".into()),
    ])
    .await;
    let metrics_port = logged_metrics_port(&mut sidecar);
    let mut client = SessionStoreClient::new(channel);
    for i in 0..3 {
        client
            .append_messages(append(&format!("m{i}"), "hi"))
            .await
            .expect("append");
    }
    let missing = client
        .get_session(pb::GetSessionRequest {
            session_id: "absent".into(),
            window: None,
            ..Default::default()
        })
        .await;
    assert!(missing.is_err());

    // The store gauges come from a background read every stats_refresh_interval.
    let waiting = std::time::Instant::now();
    let response = loop {
        let response = scrape(metrics_port, "/metrics");
        if response.contains("\ncsai_active_sessions 3\n") {
            break response;
        }
        assert!(waiting.elapsed() < Duration::from_secs(5), "{response}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(
        response.contains("content-type: text/plain; version=0.0.4"),
        "{response}"
    );
    let count = |series: &str| -> f64 {
        response
            .lines()
            .find(|line| line.starts_with(series))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no series {series} in\n{response}"))
    };
    assert_eq!(
        count(
            "csai_backend_operation_duration_seconds_count{backend=\"memory\",operation=\"append\"}"
        ),
        3.0
    );
    assert_eq!(
        count("csai_backend_errors_total{backend=\"memory\",operation=\"get\",kind=\"not_found\"}"),
        1.0
    );
    assert_eq!(count("csai_active_sessions"), 3.0);
    assert_eq!(
        count(
            "csai_rpc_requests_total{method=\"/csai.v1.SessionStore/AppendMessages\",code=\"OK\"}"
        ),
        3.0
    );
    assert_eq!(
        count(
            "csai_rpc_requests_total{method=\"/csai.v1.SessionStore/GetSession\",code=\"NOT_FOUND\"}"
        ),
        1.0
    );
    assert!(
        count("csai_rpc_duration_seconds_count{method=\"/csai.v1.SessionStore/AppendMessages\"}")
            >= 3.0
    );
    assert!(count("csai_stored_bytes") > 0.0);
    assert!(response.contains("# TYPE csai_backend_operation_duration_seconds histogram"));
    assert!(scrape(metrics_port, "/other").starts_with("HTTP/1.1 404"));
}

/// Regression: every scrape called the store's stats (on Redis one script per session, on
/// DynamoDB a full table scan). Scrapes now read figures a background task refreshes
/// once per `stats_refresh_interval`.
#[tokio::test]
async fn scrapes_never_scan_the_store() {
    let (mut sidecar, _channel) = SidecarProcess::spawn(&[
        ("CSAI_METRICS_LISTEN", "127.0.0.1:0".into()),
        ("CSAI_STATS_REFRESH_INTERVAL", "1h".into()),
    ])
    .await;
    let metrics_port = logged_metrics_port(&mut sidecar);
    let mut page = String::new();
    for _ in 0..20 {
        page = scrape(metrics_port, "/metrics");
    }
    let scans: f64 = page
        .lines()
        .find_map(|line| {
            line.strip_prefix(
                "csai_backend_operation_duration_seconds_count{backend=\"memory\",operation=\"stats\"} ",
            )
        })
        .map_or(0.0, |value| value.parse().unwrap());
    assert!(scans <= 1.0, "{scans} scans for 20 scrapes\n{page}");
    assert!(page.contains("\ncsai_active_sessions 0\n"), "{page}");
}

/// Every line of a scraped page is a comment or `name{label="value",...} number`, with
/// label values escaped as the text format requires: what Prometheus' parser accepts.
fn assert_parsable(page: &str) {
    for line in page.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        assert!(value.parse::<f64>().is_ok(), "value of {line:?}");
        let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "name of {line:?}"
        );
        let mut rest = labels
            .strip_suffix('}')
            .unwrap_or_else(|| panic!("{line:?}"));
        while !rest.is_empty() {
            let (label, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("{line:?}"));
            assert!(label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => {
                        let escaped = chars.next().map(|(_, c)| c);
                        assert!(matches!(escaped, Some('\\' | '"' | 'n')), "{line:?}");
                    }
                    Some((i, '"')) => break i,
                    Some(_) => {}
                    None => panic!("unterminated label value in {line:?}"),
                }
            };
            rest = after[end + 1..]
                .strip_prefix(',')
                .unwrap_or(&after[end + 1..]);
        }
    }
}

/// Regression: the `method` label was the raw request path (1,000 calls to random 2 KB
/// paths grew the page from 150 KB to 33 MB) and a newline in a requested model name made
/// the page unparsable until restart.
#[tokio::test]
async fn request_values_never_grow_or_break_the_metrics_page() {
    let (mut sidecar, channel) = SidecarProcess::spawn(&[
        ("CSAI_METRICS_LISTEN", "127.0.0.1:0".into()),
        ("CSAI_CHAT_ECHO", "true".into()),
    ])
    .await;
    let metrics_port = logged_metrics_port(&mut sidecar);
    let mut chat = csai_sidecar::grpc::pb::chat_client::ChatClient::new(channel.clone());
    let turn = |session: &str, model: &str| pb::ExecRequest {
        session_id: session.into(),
        user_message: Some(pb::UserMessage {
            content: "hello".into(),
            ..Default::default()
        }),
        parameters: Some(pb::ModelParameters {
            model: Some(model.into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    chat.exec(turn("metrics-0", "echo")).await.expect("a turn");
    let before = scrape(metrics_port, "/metrics");

    let mut grpc = tonic::client::Grpc::new(channel);
    for i in 0..200 {
        grpc.ready().await.expect("ready");
        let path = format!("/csai.v1.SessionStore/{}{i}", "x".repeat(2048));
        let status = grpc
            .unary(
                tonic::Request::new(pb::GetStatsRequest::default()),
                path.parse().unwrap(),
                tonic_prost::ProstCodec::<pb::GetStatsRequest, pb::GetStatsResponse>::default(),
            )
            .await
            .expect_err("no such method");
        assert_eq!(status.code(), tonic::Code::Unimplemented);
    }
    for i in 0..50 {
        let model = format!("evil\nmodel\"{i}\\ {}", "y".repeat(200));
        chat.exec(turn(&format!("metrics-{i}"), &model))
            .await
            .expect("the echo provider answers any model");
    }

    let after = scrape(metrics_port, "/metrics");
    assert!(after.starts_with("HTTP/1.1 200 OK"), "{after}");
    let page = after.split_once("\r\n\r\n").unwrap().1;
    assert_parsable(page);
    assert!(!page.contains("xxxx") && !page.contains("evil"), "{page}");
    assert!(
        page.contains(r#"csai_rpc_requests_total{method="unknown",code="UNIMPLEMENTED"} 200"#),
        "{page}"
    );
    assert!(page.contains(r#"model="other""#), "{page}");
    // 250 hostile calls added a handful of series, not 250.
    assert!(
        after.len() < before.len() + 8 * 1024,
        "the page grew from {} to {} bytes",
        before.len(),
        after.len()
    );
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(page.contains(&format!("\n{name} ")), "{name} missing");
    }

    // Scrapers that add a query string, and HEAD, get the page too.
    assert!(scrape(metrics_port, "/metrics?name[]=up").starts_with("HTTP/1.1 200 OK"));
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
    use std::io::Write;
    stream
        .write_all(b"HEAD /metrics HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .unwrap();
    let mut head = String::new();
    stream.read_to_string(&mut head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
}

#[tokio::test]
async fn a_paused_redis_server_shows_up_as_slow_operations() {
    let redis_port = free_port();
    let mut redis = Command::new(required_env("CSAI_TEST_REDIS_SERVER"))
        .args([
            "--port",
            &redis_port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("start redis-server");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", redis_port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (mut sidecar, channel) = SidecarProcess::spawn(&[
        ("CSAI_STORAGE_TYPE", "redis".into()),
        (
            "CSAI_REDIS_ADDRESS",
            format!("redis://127.0.0.1:{redis_port}"),
        ),
        ("CSAI_SLOW_OP_THRESHOLD", "100ms".into()),
        ("CSAI_HEALTH_INTERVAL", "1h".into()),
    ])
    .await;
    let mut client = SessionStoreClient::new(channel);
    client
        .append_messages(append("slow", "warm up"))
        .await
        .expect("first append");

    let pid = redis.id().to_string();
    let signal = |name: &str| {
        let status = Command::new("kill")
            .args([name, &pid])
            .status()
            .expect("kill");
        assert!(status.success());
    };
    signal("-STOP");
    let pending =
        tokio::spawn(async move { client.append_messages(append("slow", "while paused")).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    signal("-CONT");
    pending
        .await
        .unwrap()
        .expect("the append completes once redis-server resumes");

    let logs = sidecar.stop_and_read_logs();
    let _ = redis.kill();
    let _ = redis.wait();
    let warning = logs
        .lines()
        .find(|line| {
            line.contains("slow backend operation") && line.contains("\"operation\":\"append\"")
        })
        .unwrap_or_else(|| panic!("no slow-operation warning in:\n{logs}"));
    assert!(warning.contains("\"level\":\"WARN\""), "{warning}");
    assert!(warning.contains("\"backend\":\"redis\""), "{warning}");
    let duration: u64 = warning
        .split("\"duration_ms\":")
        .nth(1)
        .and_then(|rest| rest.split([',', '}']).next())
        .and_then(|n| n.parse().ok())
        .expect("duration_ms");
    assert!(
        duration >= 300,
        "the paused call took about 400 ms: {warning}"
    );
}

#[tokio::test]
async fn log_lines_show_session_ids_only_as_a_keyed_hash() {
    use common::chat_suite::ask;
    use common::llm_server::{Reply, ScriptedModel};
    use csai_sidecar::grpc::pb::chat_client::ChatClient;
    let model = ScriptedModel::start(vec![
        Reply::Text("not JSON".into()),
        Reply::Text("{\"ok\": true}".into()),
    ])
    .await;
    let key = "a-trace-key-of-32-characters-ok!";
    let (mut sidecar, channel) = SidecarProcess::spawn(&[
        ("CSAI_CHAT_BASE_URL", model.base_url.clone()),
        ("CSAI_TRACE_SESSION_ID_KEY", key.into()),
    ])
    .await;
    // A phone number: the kind of id an unkeyed hash would give away to a dictionary.
    let session = "whatsapp:+15550001234";
    let mut request = ask(session, "classify");
    request.response_format = Some(pb::ResponseFormat {
        format: Some(pb::response_format::Format::JsonObject(true)),
    });
    ChatClient::new(channel)
        .exec(request)
        .await
        .expect("a corrected answer");
    let logs = sidecar.stop_and_read_logs();
    let line = logs
        .lines()
        .find(|line| line.contains("answer has the wrong format"))
        .unwrap_or_else(|| panic!("no format retry logged:\n{logs}"));
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes()),
        session.as_bytes(),
    );
    let hashed: String = tag.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        line.contains(&format!("\"session\":\"{hashed}\"")),
        "{line}"
    );
    assert!(
        !logs.contains("15550001234"),
        "a raw id in the logs:\n{logs}"
    );
}
