//! csai-bench runs every mode end to end and reports what it did; its figures are for
//! BENCHMARKS.md, so only counts and shapes are checked here, never timings.

use crate::common;

use serde_json::Value;
use std::process::Command;

fn bench(arguments: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_csai-bench"))
        .args(arguments)
        .arg("--json")
        .env_remove("CSAI_REDIS_ADDRESS")
        .output()
        .expect("run csai-bench");
    assert!(
        output.status.success(),
        "csai-bench {arguments:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("csai-bench prints JSON")
}

fn row<'a>(rows: &'a Value, name: &str) -> &'a Value {
    rows.as_array()
        .expect("rows")
        .iter()
        .find(|row| row["name"] == name)
        .unwrap_or_else(|| panic!("no row {name:?} in {rows:#}"))
}

#[test]
fn every_operation_runs_beside_its_floors_without_errors() {
    let report = bench(&[
        "--ops",
        "append,get,replace,chat",
        "--mix",
        "append:3,get:1,chat:1",
        "--concurrency",
        "4",
        "--requests",
        "200",
    ]);
    let rows = &report["rows"];
    let mut names = vec!["grpc floor: health Check".to_string()];
    for op in ["append", "get", "replace"] {
        names.push(format!("{op} via sidecar"));
        names.push(format!("{op} direct to memory"));
    }
    names.extend(["chat via sidecar".into(), "chat direct to model".into()]);
    names.extend([
        "mix via sidecar".into(),
        "mix direct to store and model".into(),
    ]);
    for name in &names {
        let row = row(rows, name);
        assert_eq!(row["requests"], 200, "{name}");
        assert_eq!(row["errors"], 0, "{name}: {row}");
        assert!(row["p50_ms"].as_f64().unwrap() > 0.0, "{name}");
    }
    assert_eq!(rows.as_array().unwrap().len(), names.len());
    let note = row(rows, "append direct to memory")["note"]
        .as_str()
        .unwrap();
    assert!(note.starts_with("sidecar adds p50 +"), "{note}");
}

#[test]
fn the_unix_socket_rows_run_beside_the_tcp_ones_in_and_out_of_process() {
    for mode in [&[][..], &["--sidecar-process"][..]] {
        let mut arguments = vec!["--unix-socket", "--ops", "append,get", "--requests", "100"];
        arguments.extend(mode);
        let rows = &bench(&arguments)["rows"];
        for name in [
            "grpc floor: health Check",
            "grpc floor over unix socket",
            "append via sidecar",
            "append via sidecar over unix socket",
            "get via sidecar",
            "get via sidecar over unix socket",
        ] {
            let row = row(rows, name);
            // Five slices per transport, each a fifth of the requests.
            assert_eq!(row["requests"], 100, "{mode:?} {name}");
            assert_eq!(row["errors"], 0, "{mode:?} {name}: {row}");
        }
        let note = row(rows, "grpc floor over unix socket")["note"]
            .as_str()
            .unwrap();
        assert!(note.contains("vs TCP"), "{note}");
    }
}

#[test]
fn lengths_and_the_cs_ai_layout_run_on_redis() {
    let url = common::required_env("CSAI_TEST_REDIS_URL");
    let address = url.trim_start_matches("redis://");
    let report = bench(&[
        "--backend",
        "redis",
        "--redis-address",
        address,
        "--ops",
        "append",
        "--requests",
        "100",
        "--concurrency",
        "4",
        "--sessions",
        "5",
        "--lengths",
        "10,100",
        "--cs-ai-layout",
        "--no-floors",
    ]);
    let rows = &report["rows"];
    for name in [
        "append via sidecar",
        "append at 10 messages",
        "cs-ai layout at 10 messages",
        "append at 100 messages",
        "cs-ai layout at 100 messages",
    ] {
        assert_eq!(row(rows, name)["requests"], 100, "{name}");
        assert_eq!(row(rows, name)["errors"], 0, "{name}");
    }
    assert_eq!(rows.as_array().unwrap().len(), 5);
}

#[test]
fn the_memory_run_stores_what_it_says() {
    let report = bench(&["--memory-messages", "20000", "--payload", "200"]);
    assert_eq!(report["messages"], 20000);
    assert_eq!(report["content_bytes"], 4_000_000);
    assert!(report["start_to_serving_ms"].as_f64().unwrap() > 0.0);
    assert!(report["store_approximate_bytes"].as_u64().unwrap() >= 4_000_000);
    assert!(
        report["loaded_rss_bytes"].as_u64().unwrap() > report["idle_rss_bytes"].as_u64().unwrap(),
        "{report:#}"
    );
}

#[test]
fn overload_sheds_only_with_a_limit() {
    let rows = bench(&[
        "--overload-limit",
        "2",
        "--concurrency",
        "20",
        "--requests",
        "200",
        "--payload",
        "16384",
        "--window",
        "20",
        "--sessions",
        "10",
    ]);
    let limited = row(&rows, "replace, limit 2");
    let shed = limited["errors_by_kind"]["ResourceExhausted"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        shed > 0,
        "20 callers against a limit of 2 shed nothing: {limited}"
    );
    assert_eq!(limited["errors"], shed, "only shedding fails: {limited}");
    let unlimited = row(&rows, "replace, no limit");
    assert_eq!(unlimited["requests"], 200);
    assert_eq!(unlimited["errors"], 0, "{unlimited}");
    assert!(unlimited["note"].as_str().unwrap().contains("peak"));
}

/// Regression: against a `--target` on Redis with the default key prefix, `get` failed
/// with NOT_FOUND on every request: the bench prefilled its sessions in its own store,
/// under its own prefix. It prefills the target through AppendMessages now.
#[tokio::test(flavor = "multi_thread")]
async fn a_target_reads_the_sessions_the_bench_prefilled_through_it() {
    let url = common::required_env("CSAI_TEST_REDIS_URL");
    let (sidecar, _channel) = common::SidecarProcess::spawn(&[
        ("CSAI_STORAGE_TYPE", "redis".into()),
        ("CSAI_REDIS_ADDRESS", url.clone()),
    ])
    .await;
    let target = format!("127.0.0.1:{}", sidecar.port);
    let address = url.trim_start_matches("redis://").to_string();
    let report = tokio::task::spawn_blocking(move || {
        bench(&[
            "--target",
            &target,
            "--backend",
            "redis",
            "--redis-address",
            &address,
            "--ops",
            "get",
            "--window",
            "5",
            "--requests",
            "50",
        ])
    })
    .await
    .expect("bench");
    let get = row(&report["rows"], "get via sidecar");
    assert_eq!(get["requests"], 50, "{get}");
    assert_eq!(get["errors"], 0, "{get}");
}
