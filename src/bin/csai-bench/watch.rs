//! Change-feed runs: delivery latency of WatchSession events (append acknowledged ->
//! event received) while appends run at a fixed rate, in one sidecar and across two
//! sharing a backend; and the memory an idle watcher costs a sidecar child process.

use crate::load::Samples;
use crate::memory;
use crate::report::Row;
use csai_sidecar::grpc::dial::DialOptions;
use csai_sidecar::grpc::pb;
use csai_sidecar::grpc::pb::session_event::Change;
use csai_sidecar::grpc::pb::session_store_client::SessionStoreClient;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Watch streams per gRPC connection (HTTP/2 servers cap concurrent streams).
const STREAMS_PER_CONNECTION: usize = 100;
/// How long the run waits after the last append for its events.
const STRAGGLERS: Duration = Duration::from_secs(3);

/// One delivery run.
pub struct Plan {
    pub watchers: usize,
    pub sessions: usize,
    pub rate: f64,
    pub duration: Duration,
    pub payload: usize,
}

/// Watchers on `watch_channels`, appends through `write_channel` at the plan's rate: one
/// row of delivery latencies (every event of every watcher).
pub async fn delivery(
    name: &str,
    watch_channels: &[Channel],
    write_channel: Channel,
    plan: &Plan,
    run_id: &str,
) -> Result<Row, String> {
    let sessions: Vec<String> = (0..plan.sessions.max(1))
        .map(|i| format!("{run_id}-watch-{i}"))
        .collect();
    let received: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let (ready, mut caught_up) = tokio::sync::mpsc::channel::<()>(plan.watchers.max(1));
    let mut watchers = Vec::new();
    for w in 0..plan.watchers {
        let mut client = SessionStoreClient::new(watch_channels[w % watch_channels.len()].clone());
        let request = pb::WatchSessionRequest {
            session_id: sessions[w % sessions.len()].clone(),
            ..Default::default()
        };
        let (received, ready) = (received.clone(), ready.clone());
        watchers.push(tokio::spawn(async move {
            let mut stream = client.watch_session(request).await?.into_inner();
            while let Some(event) = stream.message().await? {
                let at = Instant::now();
                match event.change {
                    Some(Change::CaughtUp(_)) => {
                        let _ = ready.send(()).await;
                    }
                    Some(Change::Appended(list)) => {
                        let mut received = received.lock();
                        for message in list.messages {
                            if let Some(n) = message
                                .content
                                .split(' ')
                                .next()
                                .and_then(|n| n.parse().ok())
                            {
                                received.push((n, at));
                            }
                        }
                    }
                    _ => {}
                }
            }
            Ok::<(), tonic::Status>(())
        }));
    }
    for _ in 0..plan.watchers {
        tokio::time::timeout(Duration::from_secs(30), caught_up.recv())
            .await
            .map_err(|_| "the watchers did not all start within 30 s".to_string())?;
    }

    let acks: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let padding = "x".repeat(plan.payload.saturating_sub(12));
    let interval = Duration::from_secs_f64(1.0 / plan.rate.max(0.001));
    let started = Instant::now();
    let mut appends = Vec::new();
    let mut n = 0u64;
    while started.elapsed() < plan.duration {
        tokio::time::sleep_until((started + interval * n as u32).into()).await;
        let mut client = SessionStoreClient::new(write_channel.clone());
        let request = pb::AppendMessagesRequest {
            session_id: sessions[n as usize % sessions.len()].clone(),
            messages: vec![pb::Message {
                role: pb::Role::User as i32,
                content: format!("{n} {padding}"),
                ..Default::default()
            }],
            ..Default::default()
        };
        let acks = acks.clone();
        appends.push(tokio::spawn(async move {
            client.append_messages(request).await.map(|_| {
                acks.lock().insert(n, Instant::now());
            })
        }));
        n += 1;
    }
    let mut failed: HashMap<String, u64> = HashMap::new();
    for append in appends {
        match append.await {
            Ok(Ok(())) => {}
            Ok(Err(status)) => {
                *failed
                    .entry(format!("append {:?}", status.code()))
                    .or_default() += 1
            }
            Err(error) => *failed.entry(error.to_string()).or_default() += 1,
        }
    }
    let appended = n;
    let per_session = |s: usize| {
        (0..plan.watchers)
            .filter(|w| w % sessions.len() == s)
            .count()
    };
    let expected: usize = (0..appended)
        .map(|n| per_session(n as usize % sessions.len()))
        .sum();
    let waiting = Instant::now();
    while received.lock().len() < expected && waiting.elapsed() < STRAGGLERS {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for watcher in &watchers {
        watcher.abort();
    }

    let acks = acks.lock();
    let received = received.lock();
    let mut samples = Samples {
        elapsed: plan.duration,
        ..Samples::default()
    };
    for (n, at) in received.iter() {
        // An event can beat the append's own response: it counts as 0.
        if let Some(ack) = acks.get(n) {
            samples
                .latencies_us
                .push(at.saturating_duration_since(*ack).as_micros() as u64);
        }
    }
    samples.latencies_us.sort_unstable();
    let missing = expected.saturating_sub(received.len()) as u64;
    if missing > 0 {
        samples.errors.insert("not delivered".into(), missing);
    }
    samples.errors.extend(failed);
    let mut row = Row::new(name, &samples);
    row.note = format!(
        "{} watchers on {} sessions, {:.0} appends/s: append acknowledged -> event received",
        plan.watchers,
        sessions.len(),
        plan.rate
    );
    Ok(row)
}

/// `count` connections to `url`.
pub async fn channels(url: &str, watchers: usize) -> Result<Vec<Channel>, String> {
    let mut channels = Vec::new();
    for _ in 0..watchers.div_ceil(STREAMS_PER_CONNECTION).max(1) {
        channels.push(DialOptions::default().connect(url).await?);
    }
    Ok(channels)
}

/// RSS of a sidecar child process (in-memory store) before and with `count` idle
/// watchers, each on its own session: the line for the report.
pub async fn idle_memory(binary: &PathBuf, count: usize) -> Result<String, String> {
    let sidecar = memory::Sidecar::start(
        binary,
        &[("CSAI_WATCH_MAX_WATCHERS", (count + 10).to_string())],
    )
    .await?;
    let channels = channels(&sidecar.url, count).await?;
    // One watcher first, so the feed code and its buffers are part of the baseline.
    let mut streams = Vec::new();
    let mut open = async |i: usize| -> Result<(), String> {
        let mut client = SessionStoreClient::new(channels[i % channels.len()].clone());
        let mut stream = client
            .watch_session(pb::WatchSessionRequest {
                session_id: format!("idle-{i}"),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        stream.message().await.map_err(|e| e.to_string())?;
        streams.push(stream);
        Ok(())
    };
    open(count).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = memory::rss_bytes(sidecar.pid())?;
    for i in 0..count {
        open(i).await?;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = memory::rss_bytes(sidecar.pid())?;
    let each = after.saturating_sub(before) as f64 / count.max(1) as f64;
    Ok(format!(
        "idle watchers: {count} WatchSession streams on one sidecar ({} connections): \
         RSS {:.1} MiB -> {:.1} MiB, {:.1} KiB per watcher\n",
        channels.len(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        each / 1024.0
    ))
}
