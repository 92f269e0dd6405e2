//! CS-AI's SecurityOptions: per-participant rate limits, and the per-session transcript log.

use crate::model::{Message, SessionId};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Most turns one participant may start per minute, hour and day (0 = no limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    pub per_minute: u32,
    pub per_hour: u32,
    pub per_day: u32,
}

impl Default for RateLimits {
    /// CS-AI's defaults.
    fn default() -> Self {
        Self {
            per_minute: 10,
            per_hour: 100,
            per_day: 1000,
        }
    }
}

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Sliding-window counters of turn starts per participant, kept in this process.
#[derive(Debug)]
pub struct RateLimiter {
    limits: RateLimits,
    starts: Mutex<HashMap<String, VecDeque<Instant>>>,
}

/// A limit that was reached, and when the next turn is allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limited {
    pub limit: u32,
    pub window: &'static str,
    pub retry_after: Duration,
}

impl RateLimiter {
    /// A limiter with these limits.
    pub fn new(limits: RateLimits) -> Self {
        Self {
            limits,
            starts: Mutex::new(HashMap::new()),
        }
    }

    /// Records a turn start of `participant`, or says which limit forbids it.
    pub fn check(&self, participant: &str) -> Result<(), Limited> {
        self.check_at(participant, Instant::now())
    }

    fn check_at(&self, participant: &str, now: Instant) -> Result<(), Limited> {
        let mut starts = self.starts.lock();
        if starts.len() > 10_000 {
            starts.retain(|_, times| times.back().is_some_and(|t| now.duration_since(*t) < DAY));
        }
        let times = starts.entry(participant.to_string()).or_default();
        while times.front().is_some_and(|t| now.duration_since(*t) >= DAY) {
            times.pop_front();
        }
        let windows = [
            (self.limits.per_minute, MINUTE, "minute"),
            (self.limits.per_hour, HOUR, "hour"),
            (self.limits.per_day, DAY, "day"),
        ];
        for (limit, window, name) in windows {
            if limit == 0 {
                continue;
            }
            let inside = times
                .iter()
                .rev()
                .take_while(|t| now.duration_since(**t) < window)
                .count();
            if inside >= limit as usize {
                // The start that frees a slot is the limit-th most recent one.
                let freeing = times[times.len() - limit as usize];
                return Err(Limited {
                    limit,
                    window: name,
                    retry_after: window.saturating_sub(now.duration_since(freeing)),
                });
            }
        }
        times.push_back(now);
        Ok(())
    }
}

/// CS-AI's LogChatFile: one JSON file per session with every stored message of its turns.
#[derive(Debug)]
pub struct TranscriptLog {
    dir: PathBuf,
    /// One writer at a time, so read-modify-write of a file never loses a turn.
    lock: tokio::sync::Mutex<()>,
}

impl TranscriptLog {
    /// Writes transcripts into `dir` (created when missing).
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The file of a session: its id with every byte outside `[A-Za-z0-9_-]` as `%XX`,
    /// so no id can leave the folder.
    pub fn path(&self, session: &SessionId) -> PathBuf {
        let mut name = String::new();
        for byte in session.as_str().bytes() {
            if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
                name.push(byte as char);
            } else {
                name.push_str(&format!("%{byte:02X}"));
            }
        }
        self.dir.join(format!("{name}.json"))
    }

    /// Adds the messages of a turn to the session's file.
    pub async fn record(&self, session: &SessionId, messages: &[Message]) -> std::io::Result<()> {
        let _one_writer = self.lock.lock().await;
        let path = self.path(session);
        let mut entries: Vec<serde_json::Value> = match tokio::fs::read(&path).await {
            Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("messages").and_then(|m| m.as_array()).cloned())
                .unwrap_or_default(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        for message in messages {
            let mut entry = serde_json::to_value(&message.body)?;
            entry["seq"] = message.seq.into();
            entry["create_time"] = humantime::format_rfc3339_millis(message.create_time)
                .to_string()
                .into();
            entries.push(entry);
        }
        let document = serde_json::json!({"session_id": session.as_str(), "messages": entries});
        write_atomically(&self.dir, &path, &serde_json::to_vec_pretty(&document)?).await
    }
}

async fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    tokio::fs::create_dir_all(dir).await?;
    let temporary = path.with_extension("json.tmp");
    tokio::fs::write(&temporary, bytes).await?;
    tokio::fs::rename(&temporary, path).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_window_limits_and_says_when_to_retry() {
        let limiter = RateLimiter::new(RateLimits {
            per_minute: 2,
            per_hour: 3,
            per_day: 0,
        });
        let start = Instant::now();
        assert!(limiter.check_at("ana", start).is_ok());
        assert!(
            limiter
                .check_at("ana", start + Duration::from_secs(10))
                .is_ok()
        );
        let limited = limiter
            .check_at("ana", start + Duration::from_secs(20))
            .unwrap_err();
        assert_eq!(limited.window, "minute");
        assert_eq!(limited.retry_after, Duration::from_secs(40));
        assert!(
            limiter
                .check_at("budi", start + Duration::from_secs(20))
                .is_ok(),
            "per participant"
        );
        assert!(
            limiter
                .check_at("ana", start + Duration::from_secs(61))
                .is_ok()
        );
        let limited = limiter
            .check_at("ana", start + Duration::from_secs(200))
            .unwrap_err();
        assert_eq!((limited.window, limited.limit), ("hour", 3));
        assert_eq!(limited.retry_after, Duration::from_secs(3400));
    }

    #[tokio::test]
    async fn transcripts_accumulate_in_one_file_per_session() {
        let dir = std::env::temp_dir().join(format!("csai-transcripts-{}", std::process::id()));
        let log = TranscriptLog::new(dir.clone());
        let id = SessionId::new("../escape/ü");
        let path = log.path(&id);
        assert_eq!(path.parent(), Some(dir.as_path()));
        let first = crate::model::NewMessage::text(crate::model::Role::User, "hi")
            .stored(1, std::time::SystemTime::now());
        let second = crate::model::NewMessage::text(crate::model::Role::Assistant, "hello")
            .stored(2, std::time::SystemTime::now());
        log.record(&id, &[first]).await.unwrap();
        log.record(&id, &[second]).await.unwrap();
        let document: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(document["session_id"], "../escape/ü");
        let messages = document["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(
            (messages[1]["seq"].as_u64(), messages[1]["content"].as_str()),
            (Some(2), Some("hello"))
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
