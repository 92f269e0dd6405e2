//! The example bots of the Python and Go clients (`clients/`), over TCP and a Unix socket,
//! and the Python client's retries, deadlines, typed errors and asyncio client, run
//! against a real sidecar process and the scripted model; what they print and store is
//! checked.
//! `scripts/clients.sh` installs the Python client and builds the Go bot; `scripts/test.sh`
//! passes their paths in CSAI_TEST_CLIENT_PYTHON and CSAI_TEST_GO_BOT.

use crate::common::llm_server::{Reply, ScriptedModel, call};
use crate::common::{Listening, SidecarProcess, free_port, required_env};
use csai_sidecar::grpc::pb;
use csai_sidecar::grpc::pb::session_store_client::SessionStoreClient;
use serde_json::json;

/// How a bot is told where the sidecar is.
enum Address {
    /// `bot HOST:PORT SESSION_ID`, as the README runs it.
    Argument,
    /// The same, the bot started 1.5 s before the sidecar listens: its retries carry it.
    ArgumentBeforeTheSidecar,
    /// `bot SESSION_ID` with CSAI_SIDECAR_ADDRESS, as the Kubernetes example sets it.
    Environment,
    /// `bot unix:///path SESSION_ID`, the sidecar listening on that Unix socket.
    UnixSocket,
}

/// Runs one example bot against a fresh sidecar; returns what it printed and the session
/// as the sidecar stored it.
async fn run_bot(
    program: &str,
    leading_args: &[&str],
    address: Address,
) -> (String, pb::Session, ScriptedModel) {
    let model = ScriptedModel::start(vec![
        Reply::ToolCalls(vec![call("call_1", "lookup_order", json!({"order_id": 7}))]),
        Reply::Text("Order 7 has shipped and arrives tomorrow.".into()),
    ])
    .await;
    let folder = std::env::temp_dir().join(format!(
        "csai-bot-{}-{}",
        std::process::id(),
        csai_sidecar::conformance::unique_id("uds").as_str()
    ));
    std::fs::create_dir_all(&folder).expect("socket folder");
    let socket = folder.join("sidecar.sock");
    let port = free_port();
    let (listening, target) = match address {
        Address::UnixSocket => (
            Listening::UnixSocket(socket.clone()),
            format!("unix://{}", socket.display()),
        ),
        _ => (Listening::Port(port), format!("127.0.0.1:{port}")),
    };
    let session = "bot-customer-42";
    let mut command = tokio::process::Command::new(program);
    command
        .args(leading_args)
        .env_remove("CSAI_SIDECAR_ADDRESS")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    match address {
        Address::Environment => command.env("CSAI_SIDECAR_ADDRESS", &target),
        _ => command.arg(&target),
    };
    command.arg(session);
    let vars = [
        ("CSAI_CHAT_BASE_URL", model.base_url.clone()),
        ("CSAI_CHAT_MODEL", "scripted-model".into()),
    ];
    let spawn_sidecar = || SidecarProcess::spawn_listening(listening, &vars);
    let (bot, (_sidecar, channel)) = if let Address::ArgumentBeforeTheSidecar = address {
        let bot = command.spawn();
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        (bot, spawn_sidecar().await)
    } else {
        let sidecar = spawn_sidecar().await;
        (command.spawn(), sidecar)
    };
    let output = bot
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
        .wait_with_output()
        .await
        .expect("the bot's output");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    println!("{program}:\n{stdout}");
    assert!(
        output.status.success(),
        "{program} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let stored = SessionStoreClient::new(channel)
        .get_session(pb::GetSessionRequest {
            session_id: session.into(),
            window: None,
            ..Default::default()
        })
        .await
        .expect("the bot's session")
        .into_inner()
        .session
        .expect("session");
    let _ = std::fs::remove_dir_all(&folder);
    (stdout, stored, model)
}

/// The lines both example bots print, in order, for the same conversation.
fn check(stdout: &str, stored: &pb::Session) {
    let lines: Vec<&str> = stdout.lines().collect();
    let expected_prefixes = [
        "health SERVING SERVING",
        "services ",
        "appended seqs 1..2 version 1",
        "read 2 messages, last: Hello! How can I help?",
        "not found bot-customer-42-absent",
        "aborted, retried at version 1 -> 2",
        "tool lookup_order",
        "answer Order 7 has shipped and arrives tomorrow.",
        "done finish=stop rounds=1 seqs 4..7 tokens ",
        "watched seq 8: Is anyone watching?",
    ];
    assert_eq!(lines.len(), expected_prefixes.len(), "{stdout}");
    for (line, prefix) in lines.iter().zip(expected_prefixes) {
        assert!(
            line.starts_with(prefix),
            "{line:?} should start with {prefix:?}\n{stdout}"
        );
    }
    for service in [
        "csai.v1.Chat",
        "csai.v1.SessionStore",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(lines[1].contains(service), "{}", lines[1]);
    }
    let tokens: u32 = lines[8]
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .expect("tokens");
    assert!(tokens > 0, "{}", lines[8]);

    // What the sidecar stored: the bot's three messages, the turn, the watched append.
    let roles: Vec<i32> = stored.messages.iter().map(|m| m.role).collect();
    use pb::Role::*;
    assert_eq!(
        roles,
        [
            User, Assistant, User, User, Assistant, Tool, Assistant, User
        ]
        .map(|r| r as i32),
        "{stored:#?}"
    );
    let tool_result: serde_json::Value =
        serde_json::from_str(&stored.messages[5].content).expect("the tool result is JSON");
    assert_eq!(tool_result["status"], "shipped");
    assert_eq!(tool_result["order_id"], 7);
}

#[tokio::test]
async fn the_python_example_bot_runs() {
    let python = required_env("CSAI_TEST_CLIENT_PYTHON");
    let bot = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/clients/python/examples/bot.py"
    );
    let (stdout, stored, model) = run_bot(&python, &[bot], Address::Argument).await;
    check(&stdout, &stored);
    assert_eq!(model.requests().await.len(), 2);
}

#[tokio::test]
async fn the_go_example_bot_runs() {
    let bot = required_env("CSAI_TEST_GO_BOT");
    let (stdout, stored, model) = run_bot(&bot, &[], Address::Environment).await;
    check(&stdout, &stored);
    assert_eq!(model.requests().await.len(), 2);
}

#[tokio::test]
async fn the_go_example_bot_waits_for_a_sidecar_that_starts_late() {
    let bot = required_env("CSAI_TEST_GO_BOT");
    let (stdout, stored, _) = run_bot(&bot, &[], Address::ArgumentBeforeTheSidecar).await;
    check(&stdout, &stored);
}

#[tokio::test]
async fn both_example_bots_reach_a_sidecar_on_a_unix_socket() {
    let python = required_env("CSAI_TEST_CLIENT_PYTHON");
    let bot = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/clients/python/examples/bot.py"
    );
    let (stdout, stored, _) = run_bot(&python, &[bot], Address::UnixSocket).await;
    check(&stdout, &stored);
    let (stdout, stored, _) =
        run_bot(&required_env("CSAI_TEST_GO_BOT"), &[], Address::UnixSocket).await;
    check(&stdout, &stored);
}

/// Runs `clients/python/tests/check_client.py MODE TARGET`; its output, checked to succeed.
async fn check_client(mode: &str, target: &str) -> tokio::process::Child {
    check_client_with(&[mode, target])
}

fn check_client_with(args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(required_env("CSAI_TEST_CLIENT_PYTHON"))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/clients/python/tests/check_client.py"
        ))
        .args(args)
        .env_remove("CSAI_SIDECAR_ADDRESS")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run check_client.py")
}

async fn lines_of(child: tokio::process::Child) -> Vec<String> {
    let output = child.wait_with_output().await.expect("check_client.py");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "check_client.py failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.lines().map(String::from).collect()
}

#[tokio::test]
async fn the_python_client_retries_until_the_sidecar_listens() {
    // The client starts first: its first attempts meet a closed port (UNAVAILABLE).
    let port = free_port();
    let client = check_client("retry", &format!("127.0.0.1:{port}")).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (_sidecar, _) = SidecarProcess::spawn_listening(Listening::Port(port), &[]).await;
    let lines = lines_of(client).await;
    let retried: u32 = lines[0]
        .strip_prefix("health SERVING retried ")
        .unwrap_or_else(|| panic!("{lines:?}"))
        .parse()
        .expect("a count");
    assert!(retried >= 1, "{lines:?}");
}

/// `Sidecar.watch` follows a session across a sidecar restart (SQLite keeps the data):
/// the stream breaks, the client watches again from its last token, and gets the message
/// written after the restart, with no gap and none twice.
#[tokio::test]
async fn the_python_clients_feed_resumes_across_a_sidecar_restart() {
    let folder = std::env::temp_dir().join(format!(
        "csai-py-feed-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&folder).unwrap();
    let vars = [
        ("CSAI_STORAGE_TYPE", "sqlite".to_string()),
        (
            "CSAI_SQLITE_PATH",
            folder.join("sessions.db").display().to_string(),
        ),
    ];
    let (mut first, _) = SidecarProcess::spawn(&vars).await;
    let target = format!("127.0.0.1:{}", first.port);
    let client = check_client_with(&["watch", &target, &folder.display().to_string()]);
    let ready = folder.join("ready");
    for _ in 0..600 {
        if ready.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        ready.exists(),
        "the client did not read its first two messages"
    );
    first.stop_and_read_logs();
    let (_second, _) = SidecarProcess::spawn_listening(Listening::Port(first.port), &vars).await;
    std::fs::write(folder.join("restarted"), b"").unwrap();
    let lines = lines_of(client).await;
    assert_eq!(lines, ["seqs 1 2 3 resumed True"]);
    let _ = std::fs::remove_dir_all(&folder);
}

#[tokio::test]
async fn the_python_client_types_errors_bounds_streams_and_runs_on_asyncio() {
    let model = ScriptedModel::start(vec![
        Reply::ToolCalls(vec![call("call_1", "refund", json!({"order_id": 7}))]),
        Reply::Text("Sorry, order 7 cannot be refunded.".into()),
        Reply::Delayed(
            std::time::Duration::from_secs(5),
            Box::new(Reply::Text("too late".into())),
        ),
        Reply::ToolCalls(vec![call("call_2", "lookup_order", json!({"order_id": 9}))]),
        Reply::Text("Order 9 has shipped.".into()),
    ])
    .await;
    let (sidecar, channel) = SidecarProcess::spawn(&[
        ("CSAI_CHAT_BASE_URL", model.base_url.clone()),
        ("CSAI_CHAT_RATE_LIMIT", "true".into()),
        ("CSAI_CHAT_RATE_LIMIT_PER_MINUTE", "1".into()),
    ])
    .await;
    let lines =
        lines_of(check_client("behaviour", &format!("127.0.0.1:{}", sidecar.port)).await).await;
    assert_eq!(
        lines,
        [
            "aborted ABORTED",
            "not found NOT_FOUND",
            "absent is None True",
            "turn after a raising tool stop",
            "rate limited RESOURCE_EXHAUSTED",
            "deadline DEADLINE_EXCEEDED within True",
            "async health SERVING",
            "async append once True",
            "async aborted",
            "async not found",
            "async answer Order 9 has shipped. stop",
            "async stored 5",
        ]
    );
    // The raising tool reached the model as an error result, and is stored as one.
    let requests = model.requests().await;
    let sent = requests[1].body["messages"].to_string();
    assert!(
        sent.contains("ValueError: order 7 cannot be refunded"),
        "{sent}"
    );
    let stored = SessionStoreClient::new(channel)
        .get_session(pb::GetSessionRequest {
            session_id: "py-a".into(),
            window: None,
            ..Default::default()
        })
        .await
        .expect("py-a")
        .into_inner()
        .session
        .expect("session");
    let tool_message = stored
        .messages
        .iter()
        .find(|m| m.role == pb::Role::Tool as i32)
        .expect("the tool result");
    assert!(
        tool_message.content.starts_with("ValueError"),
        "{tool_message:?}"
    );
    assert_eq!(
        tool_message
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get("is_error"))
            .and_then(|v| v.kind.clone()),
        Some(prost_types::value::Kind::BoolValue(true)),
        "{tool_message:?}"
    );
}
