//! Memory of the in-memory backend, measured on a sidecar child process: time from start
//! to SERVING, idle RSS, and RSS per byte of stored message content.

use csai_sidecar::grpc::dial::DialOptions;
use csai_sidecar::grpc::pb;
use csai_sidecar::grpc::pb::session_store_client::SessionStoreClient;
use serde::Serialize;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// What the memory run measured.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryReport {
    pub start_to_serving_ms: f64,
    pub idle_rss_bytes: u64,
    pub messages: u64,
    pub content_bytes: u64,
    pub loaded_rss_bytes: u64,
    /// (loaded RSS - idle RSS) / content bytes.
    pub rss_per_content_byte: f64,
    /// What the store itself counts (GetStats approximate_bytes).
    pub store_approximate_bytes: u64,
}

/// A sidecar child process on the in-memory store, killed when dropped.
pub struct Sidecar {
    child: Child,
    /// grpc://host:port or unix:///path, for more connections.
    pub url: String,
    pub channel: Channel,
    pub start_to_serving: Duration,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The process's resident memory now.
pub fn rss_bytes(pid: u32) -> Result<u64, String> {
    proc_status_bytes(pid, "VmRSS")
}

/// The most resident memory the process ever had, as the kernel counts it.
pub fn peak_rss_bytes(pid: u32) -> Result<u64, String> {
    proc_status_bytes(pid, "VmHWM")
}

fn proc_status_bytes(pid: u32, field: &str) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read the sidecar's memory: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| format!("no {field} in /proc status"))
}

/// The `csai-sidecar` binary next to this one.
pub fn default_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("csai-sidecar")))
        .unwrap_or_else(|| PathBuf::from("csai-sidecar"))
}

impl Sidecar {
    /// Starts `binary` on the in-memory store with these extra variables, on a free
    /// loopback port, and waits until it is SERVING.
    pub async fn start(binary: &PathBuf, vars: &[(&str, String)]) -> Result<Self, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        Self::start_on(binary, &format!("127.0.0.1:{port}"), vars).await
    }

    /// Like [`start`](Self::start), listening on `listen` (host:port or unix:///path).
    pub async fn start_on(
        binary: &PathBuf,
        listen: &str,
        vars: &[(&str, String)],
    ) -> Result<Self, String> {
        let started = Instant::now();
        let mut child = Command::new(binary)
            .arg("serve")
            .env("CSAI_LISTEN", listen)
            .env("CSAI_STORAGE_TYPE", "memory")
            .env("CSAI_LOG_LEVEL", "warn")
            .envs(vars.iter().map(|(name, value)| (name, value)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let url = match listen.starts_with("unix:") {
            true => listen.to_string(),
            false => format!("grpc://{listen}"),
        };
        let channel = loop {
            if let Ok(channel) = DialOptions::default().connect(&url).await {
                let serving = HealthClient::new(channel.clone())
                    .check(HealthCheckRequest::default())
                    .await
                    .is_ok_and(|r| r.into_inner().status == 1);
                if serving {
                    break channel;
                }
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                return Err("the sidecar was not SERVING within 10 s".into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        Ok(Self {
            child,
            url,
            channel,
            start_to_serving: started.elapsed(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Starts `binary` on the in-memory store, then fills it with `messages` messages of
/// `payload` bytes over 1,000 sessions.
pub async fn measure(
    binary: &PathBuf,
    messages: u64,
    payload: usize,
) -> Result<MemoryReport, String> {
    let sidecar = Sidecar::start(binary, &[]).await?;
    let pid = sidecar.pid();
    let start_to_serving_ms = sidecar.start_to_serving.as_secs_f64() * 1000.0;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss_bytes = rss_bytes(pid)?;

    let mut client = SessionStoreClient::new(sidecar.channel.clone());
    let content = "x".repeat(payload);
    let sessions = 1000u64;
    let per_request = 100u64;
    let mut sent = 0u64;
    while sent < messages {
        let batch = per_request.min(messages - sent);
        client
            .append_messages(pb::AppendMessagesRequest {
                session_id: format!("memory-{}", (sent / per_request) % sessions),
                messages: vec![
                    pb::Message {
                        role: pb::Role::User as i32,
                        content: content.clone(),
                        ..Default::default()
                    };
                    batch as usize
                ],
                ..Default::default()
            })
            .await
            .map_err(|s| format!("append: {}", s.message()))?;
        sent += batch;
    }
    let stats = client
        .get_stats(pb::GetStatsRequest::default())
        .await
        .map_err(|s| format!("stats: {}", s.message()))?
        .into_inner();
    // Let the allocator settle after the burst.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loaded_rss_bytes = rss_bytes(pid)?;
    let content_bytes = messages * payload as u64;
    Ok(MemoryReport {
        start_to_serving_ms,
        idle_rss_bytes,
        messages,
        content_bytes,
        loaded_rss_bytes,
        rss_per_content_byte: loaded_rss_bytes.saturating_sub(idle_rss_bytes) as f64
            / content_bytes.max(1) as f64,
        store_approximate_bytes: stats.approximate_bytes,
    })
}

/// The report as text lines.
pub fn text(report: &MemoryReport) -> String {
    format!(
        "in-memory backend (sidecar child process)\n  start to SERVING      {:.1} ms\n  idle RSS              {:.1} MiB\n  after {} messages of {} bytes ({:.1} MiB of content; the store counts {:.1} MiB)\n  loaded RSS            {:.1} MiB\n  RSS per content byte  {:.2}\n",
        report.start_to_serving_ms,
        report.idle_rss_bytes as f64 / 1048576.0,
        report.messages,
        report.content_bytes / report.messages.max(1),
        report.content_bytes as f64 / 1048576.0,
        report.store_approximate_bytes as f64 / 1048576.0,
        report.loaded_rss_bytes as f64 / 1048576.0,
        report.rss_per_content_byte,
    )
}
