//! The example bots of the Python and Go clients (`clients/`) run against a real sidecar
//! process and the scripted model, and what they print and store is checked.
//! `scripts/clients.sh` installs the Python client and builds the Go bot; `scripts/test.sh`
//! passes their paths in CSAI_TEST_CLIENT_PYTHON and CSAI_TEST_GO_BOT.

use crate::common::llm_server::{Reply, ScriptedModel, call};
use crate::common::{SidecarProcess, required_env};
use csai_sidecar::grpc::pb;
use csai_sidecar::grpc::pb::session_store_client::SessionStoreClient;
use serde_json::json;

/// How a bot is told where the sidecar is.
enum Address {
    /// `bot HOST:PORT SESSION_ID`, as the README runs it.
    Argument,
    /// `bot SESSION_ID` with CSAI_SIDECAR_ADDRESS, as the Kubernetes example sets it.
    Environment,
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
    let (sidecar, channel) = SidecarProcess::spawn(&[
        ("CSAI_CHAT_BASE_URL", model.base_url.clone()),
        ("CSAI_CHAT_MODEL", "scripted-model".into()),
    ])
    .await;
    let session = "bot-customer-42";
    let target = format!("127.0.0.1:{}", sidecar.port);
    let mut command = tokio::process::Command::new(program);
    command
        .args(leading_args)
        .env_remove("CSAI_SIDECAR_ADDRESS");
    match address {
        Address::Argument => command.arg(&target),
        Address::Environment => command.env("CSAI_SIDECAR_ADDRESS", &target),
    };
    let output = command
        .arg(session)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
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
        })
        .await
        .expect("the bot's session")
        .into_inner()
        .session
        .expect("session");
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

    // What the sidecar stored: the bot's three messages, then the turn.
    let roles: Vec<i32> = stored.messages.iter().map(|m| m.role).collect();
    use pb::Role::*;
    assert_eq!(
        roles,
        [User, Assistant, User, User, Assistant, Tool, Assistant].map(|r| r as i32),
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
