//! Overload: a sidecar child process offered far more concurrent requests than its
//! `max_concurrent_requests`, with its peak RSS, beside the same load on a sidecar without
//! the limit.

use crate::load::{self, Plan, Samples};
use crate::memory::{Sidecar, peak_rss_bytes, rss_bytes};
use crate::report::Row;
use csai_sidecar::grpc::dial::DialOptions;
use csai_sidecar::grpc::pb;
use csai_sidecar::grpc::pb::session_store_client::SessionStoreClient;
use std::path::PathBuf;
use std::time::Duration;

/// How long a shed caller waits before its next request: the initial backoff of the
/// retry policy in gRPC's retry design (A6).
const BACKOFF: Duration = Duration::from_millis(100);

/// One overload run: the load's samples and the sidecar's memory.
pub struct Overload {
    pub limit: usize,
    pub samples: Samples,
    pub idle_rss_bytes: u64,
    pub peak_rss_bytes: u64,
}

impl Overload {
    pub fn row(&self) -> Row {
        let limit = match self.limit {
            0 => "no limit".to_string(),
            n => format!("limit {n}"),
        };
        let mut row = Row::new(format!("replace, {limit}"), &self.samples);
        let shed = self.samples.errors.get("ResourceExhausted").unwrap_or(&0);
        row.note = format!(
            "RSS idle {:.1} MiB, peak {:.1} MiB; {shed} shed",
            self.idle_rss_bytes as f64 / 1048576.0,
            self.peak_rss_bytes as f64 / 1048576.0
        );
        row
    }
}

/// Runs `plan` (ReplaceMessages of `window` messages of `payload` bytes over `sessions`
/// sessions, so the stored data stays the same size) against a fresh sidecar whose
/// `max_concurrent_requests` is `limit` (0: none); its peak RSS is the kernel's count.
pub async fn run(
    binary: &PathBuf,
    limit: usize,
    plan: &Plan,
    payload: usize,
    window: u32,
    sessions: usize,
    connections: usize,
) -> Result<Overload, String> {
    let sidecar = Sidecar::start(
        binary,
        &[("CSAI_MAX_CONCURRENT_REQUESTS", limit.to_string())],
    )
    .await?;
    let pid = sidecar.pid();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss_bytes = rss_bytes(pid)?;
    let message = pb::Message {
        role: pb::Role::User as i32,
        content: "x".repeat(payload),
        ..Default::default()
    };
    let mut channels = Vec::new();
    for _ in 0..connections.max(1) {
        channels.push(DialOptions::default().connect(&sidecar.url).await?);
    }
    let samples = load::run(&format!("overload, limit {limit}"), plan, move |i| {
        let mut client = SessionStoreClient::new(channels[i as usize % channels.len()].clone());
        let request = pb::ReplaceMessagesRequest {
            session_id: format!("overload-{}", i % sessions.max(1) as u64),
            messages: vec![message.clone(); window as usize],
            ..Default::default()
        };
        async move {
            let result = client.replace_messages(request).await;
            if let Err(status) = &result
                && status.code() == tonic::Code::ResourceExhausted
            {
                // A shed caller backs off before trying again, as a retry policy does.
                tokio::time::sleep(BACKOFF).await;
            }
            result.map(drop).map_err(|s| format!("{:?}", s.code()))
        }
    })
    .await;
    Ok(Overload {
        limit,
        samples,
        idle_rss_bytes,
        peak_rss_bytes: peak_rss_bytes(pid)?,
    })
}
