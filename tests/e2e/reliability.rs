//! Faults under load lose no acknowledged write: Redis crashing (SIGKILL) and coming back
//! with its append-only file, and the sidecar stopped with SIGTERM mid-load.

use crate::common;

use crate::common::{
    OwnRedis, SERVING, SidecarProcess, TestServer, required_env, test_config, user, wait_for_status,
};
use csai_sidecar::config::Config;
use csai_sidecar::domain::{SessionId, Window};
use csai_sidecar::grpc::pb;
use csai_sidecar::grpc::pb::session_store_client::SessionStoreClient;
use csai_sidecar::store::SessionStore;
use csai_sidecar::store::redis::{RedisOptions, RedisStore};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const WRITERS: usize = 8;

/// What the writers saw: per session, the acknowledged (seq, content) pairs, and the
/// codes of the failed appends.
#[derive(Default)]
struct Outcome {
    acknowledged: BTreeMap<String, Vec<(u64, String)>>,
    failures: HashMap<tonic::Code, usize>,
}

/// `WRITERS` writers, one session each, appending numbered messages until `running`
/// turns false. Each append carries a request id, so the store's own retries cannot
/// append it twice.
async fn load(channel: Channel, prefix: &str, running: Arc<AtomicBool>) -> Outcome {
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (mut client, running) = (SessionStoreClient::new(channel.clone()), running.clone());
            let session = format!("{prefix}-{writer}");
            tokio::spawn(async move {
                let (mut acknowledged, mut failures) = (Vec::new(), Vec::new());
                let mut n = 0;
                while running.load(Ordering::Relaxed) {
                    let content = format!("{session}-m{n}");
                    n += 1;
                    let mut request = tonic::Request::new(pb::AppendMessagesRequest {
                        session_id: session.clone(),
                        messages: vec![user(&content)],
                        request_id: content.clone(),
                        ..Default::default()
                    });
                    request.set_timeout(Duration::from_secs(3));
                    match client.append_messages(request).await {
                        Ok(response) => acknowledged.push((response.into_inner().seqs[0], content)),
                        Err(status) => failures.push(status.code()),
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                (session, acknowledged, failures)
            })
        })
        .collect();
    let mut outcome = Outcome::default();
    for writer in writers {
        let (session, acknowledged, failures) = writer.await.expect("writer");
        outcome.acknowledged.insert(session, acknowledged);
        for code in failures {
            *outcome.failures.entry(code).or_default() += 1;
        }
    }
    outcome
}

/// Every acknowledged message is stored at the seq it was acknowledged with, and the
/// seqs have no gaps.
async fn assert_nothing_lost(store: &dyn SessionStore, outcome: &Outcome) {
    let mut total = 0;
    for (session, acknowledged) in &outcome.acknowledged {
        let stored = store
            .get(&SessionId::new(session.as_str()), Window::All)
            .await
            .expect("the session is there");
        let by_seq: BTreeMap<u64, &str> = stored
            .messages
            .iter()
            .map(|m| (m.seq, m.body.content.as_str()))
            .collect();
        let seqs: Vec<u64> = by_seq.keys().copied().collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "gaps in {session}"
        );
        for (seq, content) in acknowledged {
            assert_eq!(
                by_seq.get(seq),
                Some(&content.as_str()),
                "{session} lost seq {seq}"
            );
        }
        total += acknowledged.len();
    }
    assert!(total > 0, "no append was acknowledged");
    eprintln!(
        "{total} acknowledged appends all stored; failures {:?}",
        outcome.failures
    );
}

fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "csai-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_redis_with_an_append_only_file_loses_no_acknowledged_append() {
    let dir = scratch_dir("aof");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut redis = OwnRedis::start(port, Some(&dir));
    let options = RedisOptions {
        timeout: Duration::from_secs(1),
        max_retries: 2,
        ..common::redis_options(format!("127.0.0.1:{port}"), "csai-crash:")
    };
    let store: Arc<dyn SessionStore> = Arc::new(RedisStore::new(&options).expect("store"));
    let config = Config {
        health_interval: Duration::from_millis(200),
        ..test_config()
    };
    let server = TestServer::start_serving(config, store.clone()).await;
    let running = Arc::new(AtomicBool::new(true));
    let load = tokio::spawn(load(server.channel().await, "crash", running.clone()));

    tokio::time::sleep(Duration::from_millis(400)).await;
    redis.stop();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let _restarted = OwnRedis::start(port, Some(&dir));
    let mut health = server.health().await;
    wait_for_status(&mut health, "csai.v1.SessionStore", SERVING).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    running.store(false, Ordering::Relaxed);
    let outcome = load.await.expect("load");

    // Failures during the outage are UNAVAILABLE or DEADLINE_EXCEEDED, nothing else.
    for code in outcome.failures.keys() {
        assert!(
            matches!(
                code,
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
            ),
            "{:?}",
            outcome.failures
        );
    }
    assert!(!outcome.failures.is_empty(), "the crash was not felt");
    assert_nothing_lost(store.as_ref(), &outcome).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_acknowledged_write_and_exits_within_the_grace() {
    let redis_url = required_env("CSAI_TEST_REDIS_URL");
    let prefix = format!("csai-sigterm-{}:", std::process::id());
    let grace = Duration::from_secs(2);
    let (mut sidecar, channel) = SidecarProcess::spawn(&[
        ("CSAI_STORAGE_TYPE", "redis".into()),
        ("CSAI_REDIS_ADDRESS", redis_url.clone()),
        ("CSAI_REDIS_KEY_PREFIX", prefix.clone()),
        ("CSAI_SHUTDOWN_GRACE", "2s".into()),
    ])
    .await;
    let stderr = sidecar.child.stderr.take().expect("stderr");
    std::thread::spawn(move || std::io::copy(&mut { stderr }, &mut std::io::sink()));
    let running = Arc::new(AtomicBool::new(true));
    let load = tokio::spawn(load(channel, "sigterm", running.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let signalled = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &sidecar.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || {
        let exit = sidecar.child.wait().expect("wait");
        (exit, sidecar)
    })
    .await
    .expect("wait");
    let stopped_after = signalled.elapsed();
    running.store(false, Ordering::Relaxed);
    let outcome = load.await.expect("load");
    assert!(exit.0.success(), "exit status {}", exit.0);
    assert!(
        stopped_after < grace + Duration::from_secs(1),
        "exited {stopped_after:?} after SIGTERM; the grace is {grace:?}"
    );

    let store = RedisStore::new(&common::redis_options(redis_url, prefix)).expect("store");
    assert_nothing_lost(&store, &outcome).await;
}
