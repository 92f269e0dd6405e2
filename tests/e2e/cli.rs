//! Tests of the `csai-sidecar` binary: configuration sources and errors, and SIGTERM.

use crate::common;

use crate::common::{NOT_SERVING, SERVING, SidecarProcess, wait_for_status, watch_until};
use std::process::{Command, Output};
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic_health::pb::health_client::HealthClient;

const BINARY: &str = env!("CARGO_BIN_EXE_csai-sidecar");

/// The binary with a clean environment: no CSAI_* variable leaks in from the caller.
fn sidecar() -> Command {
    let mut command = Command::new(BINARY);
    for (name, _) in std::env::vars() {
        if name.starts_with("CSAI_") {
            command.env_remove(name);
        }
    }
    command
}

fn run(command: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().expect("run csai-sidecar");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn scratch_file(name: &str, contents: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("csai-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write scratch file");
    path
}

/// True/false settings are switches: the flag alone turns one on, `=false` turns it off,
/// and `--help` shows defaults and what a value looks like.
#[test]
fn boolean_flags_are_switches_and_help_shows_defaults() {
    let (code, stdout, stderr) =
        run(sidecar().args(["config", "--sliding-ttl-on-read", "--reflection=false"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("sliding_ttl_on_read = \"true\"  # flag --sliding-ttl-on-read"),
        "{stdout}"
    );
    assert!(
        stdout.contains("reflection = \"false\"  # flag --reflection"),
        "{stdout}"
    );

    // Each command's help fits a screen: its own arguments, the main settings with their
    // defaults and placeholders, and where the other settings are.
    for command in [
        "serve",
        "backup",
        "restore",
        "migrate",
        "rotate-keys",
        "health",
        "config",
    ] {
        let (code, stdout, stderr) = run(sidecar().args([command, "--help"]));
        assert_eq!(code, 0, "{stderr}");
        for shown in [
            "--session-ttl <DURATION>",
            "[default: 12h]",
            "--listen <HOST:PORT>",
            "--config <FILE>",
            "csai-sidecar config",
        ] {
            assert!(
                stdout.contains(shown),
                "{shown} missing from {command} --help:\n{stdout}"
            );
        }
        assert!(!stdout.contains("--tls-cert-file"), "{stdout}");
        let lines = stdout.lines().count();
        assert!(lines <= 40, "{command} --help has {lines} lines:\n{stdout}");
    }
    // The settings not shown are flags all the same.
    let (code, stdout, stderr) = run(sidecar().args(["config", "--max-ttl", "2d"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("max_ttl = \"2d\"  # flag --max-ttl"),
        "{stdout}"
    );
}

#[test]
fn config_prints_effective_values_with_their_sources() {
    let file = scratch_file(
        "layers.toml",
        "session_ttl = \"1h\"\ntimeout = \"2s\"\nredis_db = 3\nlog_format = \"json\"\n",
    );
    let (code, stdout, stderr) = run(sidecar()
        .arg("config")
        .arg("--config")
        .arg(&file)
        .env("CSAI_TIMEOUT", "4s")
        .env("CSAI_LOG_FORMAT", "text")
        .args(["--log-format", "json"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("session_ttl = \"1h\"  # file"), "{stdout}");
    assert!(
        stdout.contains("timeout = \"4s\"  # environment CSAI_TIMEOUT"),
        "{stdout}"
    );
    assert!(stdout.contains("redis_db = \"3\"  # file"), "{stdout}");
    assert!(
        stdout.contains("log_format = \"json\"  # flag --log-format"),
        "{stdout}"
    );
    assert!(
        stdout.contains("listen = \"127.0.0.1:50051\"  # default"),
        "{stdout}"
    );
}

#[test]
fn config_redacts_secrets() {
    let (code, stdout, _) = run(sidecar()
        .arg("config")
        .env("CSAI_REDIS_PASSWORD", "hunter2")
        .env("CSAI_MONGO_URI", "mongodb://bot:s3cret@mongo:27017/cs_ai")
        .env("CSAI_TRACE_SESSION_ID_KEY", "trace-key-hunter3-long"));
    assert_eq!(code, 0);
    assert!(
        !stdout.contains("hunter2") && !stdout.contains("s3cret") && !stdout.contains("hunter3"),
        "{stdout}"
    );
    assert!(
        stdout.contains("redis_password = \"<redacted>\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("mongodb://bot:<redacted>@mongo:27017/cs_ai"),
        "{stdout}"
    );
}

#[test]
fn invalid_values_exit_non_zero_naming_key_and_accepted_values() {
    let cases: [(&str, &str, &[&str]); 7] = [
        (
            "CSAI_STORAGE_TYPE",
            "cassandra",
            &["`type`", "memory, redis, mongo, dynamo"],
        ),
        ("CSAI_SESSION_TTL", "soon", &["`session_ttl`", "duration"]),
        ("CSAI_LISTEN", "nowhere", &["`listen`", "host:port"]),
        ("CSAI_LOG_FORMAT", "xml", &["`log_format`", "text or json"]),
        ("CSAI_MAX_RETRIES", "-1", &["`max_retries`", "whole number"]),
        (
            "CSAI_TRACE_SESSION_IDS",
            "sometimes",
            &["`trace_session_ids`", "plain, hashed or omitted"],
        ),
        (
            "CSAI_TRACE_SESSION_ID_KEY",
            "short",
            &["`trace_session_id_key`", "at least 16 characters"],
        ),
    ];
    for (var, value, mentions) in cases {
        let (code, _, stderr) = run(sidecar().env(var, value));
        assert_eq!(code, 2, "{var}={value}: {stderr}");
        assert!(stderr.contains(var), "{stderr}");
        for mention in mentions {
            assert!(
                stderr.contains(mention),
                "{var}: {stderr:?} should mention {mention}"
            );
        }
    }
}

#[test]
fn unknown_or_unreadable_config_files_are_errors() {
    let file = scratch_file("typo.toml", "sesion_ttl = \"1h\"\n");
    let (code, _, stderr) = run(sidecar().arg("config").arg("--config").arg(&file));
    assert_eq!(code, 2);
    assert!(stderr.contains("unknown key `sesion_ttl`"), "{stderr}");

    let (code, _, stderr) = run(sidecar().env("CSAI_CONFIG", "/nonexistent/csai.toml"));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("cannot read config file /nonexistent/csai.toml"),
        "{stderr}"
    );
}

/// SIGTERM: health turns NOT_SERVING, then the process exits 0.
#[tokio::test]
async fn sigterm_turns_health_not_serving_then_exits_zero() {
    let (mut sidecar, channel) = SidecarProcess::spawn(&[]).await;
    let mut health = HealthClient::new(channel);
    wait_for_status(&mut health, "", SERVING).await;
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(
        watch.next().await.expect("status").expect("ok").status,
        SERVING
    );

    let killed = Command::new("kill")
        .args(["-TERM", &sidecar.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    watch_until(&mut watch, NOT_SERVING).await;
    drop(watch);

    let status = tokio::task::spawn_blocking(move || {
        let status = sidecar.child.wait().expect("wait");
        let mut logs = String::new();
        if let Some(mut stderr) = sidecar.child.stderr.take() {
            use std::io::Read;
            let _ = stderr.read_to_string(&mut logs);
        }
        (status, logs)
    });
    let (status, logs) = tokio::time::timeout(Duration::from_secs(15), status)
        .await
        .expect("exits within the grace period")
        .expect("join");
    assert_eq!(status.code(), Some(0), "logs: {logs}");
    assert!(
        logs.contains("\"message\":\"shutting down"),
        "JSON logs expected: {logs}"
    );
}

#[test]
fn the_chat_api_key_is_read_from_the_environment_only() {
    let (code, stdout, stderr) = run(sidecar()
        .arg("config")
        .env("CSAI_CHAT_BASE_URL", "https://api.deepseek.com/v1")
        .env("CSAI_CHAT_API_KEY", "sk-live-secret"));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("chat_api_key = \"<redacted>\"  # environment CSAI_CHAT_API_KEY"),
        "{stdout}"
    );
    assert!(!stdout.contains("sk-live-secret"), "{stdout}");

    let (code, _, stderr) =
        run(sidecar().args(["config", "--chat-api-key", "sk-on-the-command-line"]));
    assert_eq!(code, 2, "there is no flag for the key: {stderr}");
}

/// The echo provider end to end through the binary: Chat is SERVING and answers.
#[tokio::test]
async fn the_binary_serves_chat_with_the_echo_provider() {
    let (_sidecar, channel) = SidecarProcess::spawn(&[("CSAI_CHAT_ECHO", "true".into())]).await;
    let mut health = HealthClient::new(channel.clone());
    wait_for_status(&mut health, "csai.v1.Chat", SERVING).await;
    let mut chat = csai_sidecar::grpc::pb::chat_client::ChatClient::new(channel);
    let response = chat
        .exec(common::chat_suite::ask("cli-echo", "hello from the bot"))
        .await
        .expect("Exec")
        .into_inner();
    assert_eq!(
        response.assistant_message.expect("answer").content,
        "hello from the bot"
    );
    assert_eq!(response.provider, "echo");
}

#[tokio::test]
async fn the_health_command_probes_a_running_sidecar() {
    let (process, _channel) = SidecarProcess::spawn(&[("CSAI_CHAT_ECHO", "false".into())]).await;
    let listen = format!("127.0.0.1:{}", process.port);
    let probe = |service: &str| {
        run(sidecar()
            .env("CSAI_LISTEN", &listen)
            .args(["health", "--service", service]))
    };
    let (code, stdout, stderr) = probe("");
    assert_eq!((code, stdout.trim()), (0, "SERVING"), "{stderr}");
    let (code, stdout, _) = probe("csai.v1.SessionStore");
    assert_eq!((code, stdout.trim()), (0, "SERVING"));
    // No chat provider (not even the echo model): Chat is not serving, and the probe says so.
    let (code, stdout, _) = probe("csai.v1.Chat");
    assert_eq!((code, stdout.trim()), (1, "NOT_SERVING"));
    drop(process);
    let (code, _, stderr) = probe("");
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot reach the sidecar"), "{stderr}");
}
