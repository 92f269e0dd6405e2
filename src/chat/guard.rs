//! CS-AI's SecurityOptions: per-participant rate limits, and the per-session transcript log.
//! Both are kept per tenant: two tenants' participants or sessions of the same name never
//! share a counter or a file.

use crate::domain::{Message, SessionId};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
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

    /// Records a turn start of `participant` of `tenant`, or says which limit forbids it.
    pub fn check(&self, tenant: Option<&str>, participant: &str) -> Result<(), Limited> {
        self.check_at(tenant, participant, Instant::now())
    }

    fn check_at(
        &self,
        tenant: Option<&str>,
        participant: &str,
        now: Instant,
    ) -> Result<(), Limited> {
        let mut starts = self.starts.lock();
        if starts.len() > 10_000 {
            starts.retain(|_, times| times.back().is_some_and(|t| now.duration_since(*t) < DAY));
        }
        // Tenants are letters, digits, '_' and '-': the separator cannot occur in one.
        let key = format!("{}\u{1f}{participant}", tenant.unwrap_or_default());
        let times = starts.entry(key).or_default();
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

    /// The file of a session: under a folder of its tenant (if any), its id with every
    /// byte outside `[A-Za-z0-9_-]` as `%XX`, so no id can leave the folder and distinct
    /// ids never share a name. An encoded id longer than [`MAX_NAME`] is cut and followed
    /// by `~` and a hash of the whole id: file names stay within every file system's limit
    /// (255 bytes), and `~` never occurs in a whole encoded id.
    pub fn path(&self, tenant: Option<&str>, session: &SessionId) -> PathBuf {
        let mut name = String::new();
        for byte in session.as_str().bytes() {
            if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
                name.push(byte as char);
            } else {
                name.push_str(&format!("%{byte:02X}"));
            }
        }
        if name.len() > MAX_NAME {
            let mut cut = MAX_NAME - HASH_SUFFIX;
            // Never inside a %XX.
            while name[..cut].rfind('%').is_some_and(|i| i + 3 > cut) {
                cut -= 1;
            }
            let digest = Sha256::digest(session.as_str().as_bytes());
            let hash: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
            name = format!("{}~{hash}", &name[..cut]);
        }
        let dir = match tenant {
            Some(tenant) => self.dir.join(tenant),
            None => self.dir.clone(),
        };
        dir.join(format!("{name}.json"))
    }

    /// Adds the messages of a turn to the session's file.
    pub async fn record(
        &self,
        tenant: Option<&str>,
        session: &SessionId,
        messages: &[Message],
    ) -> std::io::Result<()> {
        let _one_writer = self.lock.lock().await;
        let path = self.path(tenant, session);
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
        let mut document = serde_json::json!({"session_id": session.as_str(), "messages": entries});
        if let Some(tenant) = tenant {
            document["tenant"] = tenant.into();
        }
        write_private_file(&path, serde_json::to_vec_pretty(&document)?).await
    }
}

/// The longest transcript file name before `.json`.
const MAX_NAME: usize = 200;
/// `~` and 32 hex digits.
const HASH_SUFFIX: usize = 33;

/// Writes `bytes` to `path` readable by this user only (0600, folders 0700), through a
/// temporary file renamed over it, so a reader never sees half a transcript.
async fn write_private_file(path: &std::path::Path, bytes: Vec<u8>) -> std::io::Result<()> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || crate::files::write_private_atomically(&path, &bytes))
        .await
        .map_err(std::io::Error::other)?
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
        assert!(limiter.check_at(None, "ana", start).is_ok());
        assert!(
            limiter
                .check_at(None, "ana", start + Duration::from_secs(10))
                .is_ok()
        );
        let limited = limiter
            .check_at(None, "ana", start + Duration::from_secs(20))
            .unwrap_err();
        assert_eq!(limited.window, "minute");
        assert_eq!(limited.retry_after, Duration::from_secs(40));
        assert!(
            limiter
                .check_at(None, "budi", start + Duration::from_secs(20))
                .is_ok(),
            "per participant"
        );
        assert!(
            limiter
                .check_at(None, "ana", start + Duration::from_secs(61))
                .is_ok()
        );
        let limited = limiter
            .check_at(None, "ana", start + Duration::from_secs(200))
            .unwrap_err();
        assert_eq!((limited.window, limited.limit), ("hour", 3));
        assert_eq!(limited.retry_after, Duration::from_secs(3400));
    }

    #[tokio::test]
    async fn transcripts_accumulate_in_one_file_per_session() {
        let dir = std::env::temp_dir().join(format!("csai-transcripts-{}", std::process::id()));
        let log = TranscriptLog::new(dir.clone());
        let id = SessionId::new("../escape/ü");
        let path = log.path(None, &id);
        assert_eq!(path.parent(), Some(dir.as_path()));
        let first = crate::domain::NewMessage::text(crate::domain::Role::User, "hi")
            .stored(1, std::time::SystemTime::now());
        let second = crate::domain::NewMessage::text(crate::domain::Role::Assistant, "hello")
            .stored(2, std::time::SystemTime::now());
        log.record(None, &id, &[first]).await.unwrap();
        log.record(None, &id, &[second]).await.unwrap();
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

    /// Regression: one file held two tenants' conversations, files were 0644, and a
    /// 256-byte non-ASCII id made a name too long to create (no transcript at all).
    #[tokio::test]
    async fn transcripts_are_private_per_tenant_and_never_too_long() {
        let dir = std::env::temp_dir().join(format!("csai-transcripts-t-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let log = TranscriptLog::new(dir.clone());
        let id = SessionId::new("chat-1");
        assert_ne!(log.path(Some("shop-a"), &id), log.path(Some("shop-b"), &id));
        assert_ne!(log.path(Some("shop-a"), &id), log.path(None, &id));
        let message = |text: &str| {
            crate::domain::NewMessage::text(crate::domain::Role::User, text)
                .stored(1, std::time::SystemTime::now())
        };
        log.record(Some("shop-a"), &id, &[message("from a")])
            .await
            .unwrap();
        log.record(Some("shop-b"), &id, &[message("from b")])
            .await
            .unwrap();
        let read = |path: PathBuf| -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
        };
        let a = read(log.path(Some("shop-a"), &id));
        assert_eq!(a["tenant"], "shop-a");
        assert_eq!(a["messages"].as_array().unwrap().len(), 1);
        assert_eq!(a["messages"][0]["content"], "from a");

        // 256 bytes of 'ü' (2 bytes each) encode to 768 characters; two such ids that
        // differ only at the end still get distinct names.
        let long_a = SessionId::new("ü".repeat(127) + "a0");
        let long_b = SessionId::new("ü".repeat(127) + "b0");
        let (path_a, path_b) = (log.path(None, &long_a), log.path(None, &long_b));
        assert_ne!(path_a, path_b);
        for path in [&path_a, &path_b] {
            assert!(path.file_name().unwrap().len() <= 255, "{path:?}");
        }
        log.record(None, &long_a, &[message("long")]).await.unwrap();
        assert_eq!(read(path_a.clone())["session_id"], long_a.as_str());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path_a).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
