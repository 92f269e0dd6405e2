//! The sidecar on SQLite and on PostgreSQL, end to end: every RPC through the binary, 64
//! concurrent appenders through gRPC, two sidecar processes on one PostgreSQL database,
//! and an SQLite sidecar killed with SIGKILL under load that keeps every acknowledged
//! append.

use crate::common::{
    Listening, SERVING, SidecarProcess, TestServer, concurrent_appenders_through_the_sidecar,
    exercise_every_rpc, required_env, test_config, wait_for_status,
};
use csai_sidecar::grpc::pb;
use csai_sidecar::grpc::pb::session_store_client::SessionStoreClient;
use csai_sidecar::store::postgres::{PostgresOptions, PostgresStore};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn scratch_db(name: &str) -> String {
    let folder = std::env::temp_dir().join(format!("csai-sql-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&folder).unwrap();
    let path = folder.join(format!(
        "{name}-{}.sqlite3",
        csai_sidecar::conformance::unique_id("db").as_str()
    ));
    path.to_string_lossy().into_owned()
}

fn sqlite_vars(path: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CSAI_STORAGE_TYPE", "sqlite".into()),
        ("CSAI_SQLITE_PATH", path.into()),
    ]
}

fn postgres_vars(prefix: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CSAI_STORAGE_TYPE", "postgres".into()),
        ("CSAI_POSTGRES_URL", required_env("CSAI_TEST_POSTGRES_URL")),
        ("CSAI_POSTGRES_TABLE_PREFIX", prefix.into()),
    ]
}

async fn serving(vars: &[(&str, String)]) -> (SidecarProcess, tonic::transport::Channel) {
    let (sidecar, channel) = SidecarProcess::spawn(vars).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    wait_for_status(&mut health, "csai.v1.SessionStore", SERVING).await;
    (sidecar, channel)
}

#[tokio::test]
async fn every_rpc_through_the_binary_on_sqlite_and_postgres() {
    let (_sqlite, channel) = serving(&sqlite_vars(&scratch_db("rpcs"))).await;
    exercise_every_rpc(channel, "e2e-sqlite").await;
    let (_postgres, channel) = serving(&postgres_vars("e2e_")).await;
    exercise_every_rpc(channel, "e2e-postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_appenders_lose_nothing_on_postgres() {
    let store = PostgresStore::open_and_migrate(PostgresOptions {
        url: required_env("CSAI_TEST_POSTGRES_URL"),
        ca_file: None,
        pool_size: 16,
        table_prefix: "e2e_".into(),
        sweep_interval: Duration::from_secs(10),
        timeout: Duration::from_secs(30),
    })
    .await
    .expect("store");
    let server = TestServer::start_serving(test_config(), Arc::new(store)).await;
    concurrent_appenders_through_the_sidecar(&server, 64, 50).await;
}

/// Two sidecar processes on one database: an append through one is read through the
/// other, and their concurrent appends to one session interleave without loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_sidecar_processes_share_a_postgres_database() {
    let vars = postgres_vars("replicas_");
    let (_a, a) = serving(&vars).await;
    let (_b, b) = serving(&vars).await;
    let session = csai_sidecar::conformance::unique_id("replicas")
        .as_str()
        .to_string();
    let append = |channel: tonic::transport::Channel, text: String| {
        let session = session.clone();
        async move {
            SessionStoreClient::new(channel)
                .append_messages(pb::AppendMessagesRequest {
                    session_id: session,
                    messages: vec![pb::Message {
                        role: pb::Role::User as i32,
                        content: text,
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .await
                .expect("append")
                .into_inner()
        }
    };
    let mut writers = Vec::new();
    for n in 0..100 {
        let channel = if n % 2 == 0 { a.clone() } else { b.clone() };
        writers.push(tokio::spawn(append(channel, format!("m{n}"))));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let read = SessionStoreClient::new(b)
        .get_session(pb::GetSessionRequest {
            session_id: session.clone(),
            window: None,
            ..Default::default()
        })
        .await
        .expect("read through the other replica")
        .into_inner()
        .session
        .unwrap();
    let seqs: Vec<u64> = read.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
    let mut texts: Vec<&str> = read.messages.iter().map(|m| m.content.as_str()).collect();
    texts.sort();
    texts.dedup();
    assert_eq!(texts.len(), 100, "every append once");
}

/// Writers append until the sidecar is killed with SIGKILL; a new sidecar on the same
/// file has every append that was acknowledged (synchronous = FULL).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_sqlite_sidecar_killed_under_load_keeps_every_acknowledged_append() {
    let path = scratch_db("sigkill");
    let (mut sidecar, channel) = serving(&sqlite_vars(&path)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..8 {
        let (channel, stop) = (channel.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut client = SessionStoreClient::new(channel);
            let mut acknowledged = Vec::new();
            for n in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let sent = client
                    .append_messages(pb::AppendMessagesRequest {
                        session_id: format!("kill-{writer}"),
                        messages: vec![pb::Message {
                            role: pb::Role::User as i32,
                            content: format!("{writer}:{n}"),
                            ..Default::default()
                        }],
                        ..Default::default()
                    })
                    .await;
                match sent {
                    Ok(reply) => acknowledged.push(reply.into_inner().seqs[0]),
                    Err(_) => break, // the sidecar died under this call
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    sidecar.child.kill().expect("SIGKILL"); // Child::kill sends SIGKILL
    let _ = sidecar.child.wait();
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.push(writer.await.unwrap());
    }
    let total: usize = acknowledged.iter().map(Vec::len).sum();
    assert!(total > 50, "the load ran ({total} appends acknowledged)");

    let (_again, channel) =
        SidecarProcess::spawn_listening(Listening::FreePort, &sqlite_vars(&path)).await;
    let mut client = SessionStoreClient::new(channel);
    for (writer, seqs) in acknowledged.iter().enumerate() {
        let stored = client
            .get_session(pb::GetSessionRequest {
                session_id: format!("kill-{writer}"),
                window: None,
                ..Default::default()
            })
            .await
            .expect("the session survived")
            .into_inner()
            .session
            .unwrap();
        let last = seqs.last().copied().unwrap_or(0);
        assert!(
            stored.message_count >= last,
            "writer {writer}: {} stored, {last} acknowledged",
            stored.message_count
        );
        for (index, message) in stored.messages.iter().take(seqs.len()).enumerate() {
            assert_eq!(message.content, format!("{writer}:{index}"));
        }
    }
}
