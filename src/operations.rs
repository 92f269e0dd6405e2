//! The operations commands of the binary: backup, restore, store-to-store migrate and
//! key rotation.

use crate::domain::{Message, NewMessage, Session, SessionId, StateUpdate, Window, WriteOptions};
use crate::grpc::dial::DialOptions;
use crate::grpc::sidecar_client::{Sessions, SidecarClient};
use crate::progress::{Progress, Unit};
use crate::service::{Policy, import};
use crate::store::decorators::encrypted::{EncryptedStore, Keyring};
use crate::store::{SessionStore, StoreError, StoreResult};
use crate::transfer::{self, BackupHeader, BackupSession, Existing, Imported};
use futures::StreamExt;
use std::collections::HashSet;
use std::fmt;
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Where sessions are read from or written to: a backend, or a running sidecar.
pub enum Location {
    Store(Arc<dyn SessionStore>),
    /// `grpc://` or `grpcs://host:port`: the only way to reach a sidecar's in-memory store.
    Sidecar(SidecarClient),
}

impl Location {
    /// Connects to `grpc://host:port` (or `grpcs://` for TLS) with `dial`'s token and TLS.
    pub async fn sidecar(url: &str, dial: &DialOptions) -> Result<Self, String> {
        Ok(Location::Sidecar(SidecarClient::connect(url, dial).await?))
    }

    /// How many live sessions it holds, for a progress total (one counting pass of the
    /// backend, as GetStats makes); None when it cannot say.
    async fn session_count(&mut self) -> Option<u64> {
        match self {
            Location::Store(store) => store.stats().await.ok().map(|s| s.active_sessions),
            Location::Sidecar(client) => client.session_count().await,
        }
    }

    /// Every live session, whole.
    async fn sessions<'a>(&'a mut self, policy: &'a Policy) -> Result<Sessions<'a>, String> {
        match self {
            Location::Store(store) => Ok(Box::pin(
                transfer::export(store.clone(), String::new())
                    .map(|r| r.map_err(|e| e.to_string())),
            )),
            Location::Sidecar(client) => client.sessions(policy).await,
        }
    }

    /// Writes one session. Into a store, the session is first checked by the service's
    /// import rules, the same ImportSessions applies (ids, messages, sizes, times, a TTL
    /// within max_ttl), so a corrupt backup line can never reach a backend.
    async fn import(&mut self, session: &Session, existing: Existing, policy: &Policy) -> Imported {
        let ttl = transfer::remaining_ttl(session);
        match self {
            Location::Store(store) => {
                match import::checked_session(session.clone(), ttl, policy, "session") {
                    Ok((valid, ttl)) => {
                        transfer::import(store.as_ref(), &valid, ttl, existing).await
                    }
                    Err(error) => Imported::Failed(error.to_string()),
                }
            }
            Location::Sidecar(client) => client.import(session, ttl, existing).await,
        }
    }

    /// The session with this id as the endpoint holds it now, if it exists.
    async fn get(&mut self, session: &Session, policy: &Policy) -> Result<Option<Session>, String> {
        match self {
            Location::Store(store) => match store.get(&session.id, Window::All).await {
                Ok(found) => Ok(Some(found)),
                Err(StoreError::NotFound(_)) => Ok(None),
                Err(error) => Err(error.to_string()),
            },
            Location::Sidecar(client) => client.get(&session.id, policy).await,
        }
    }
}

/// What a backup, restore or migration did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub sessions: u64,
    pub messages: u64,
    pub bytes: u64,
    pub skipped: u64,
    pub failures: Vec<String>,
    /// Sessions whose copy differs from the source (migrate's verification pass).
    pub mismatches: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "sessions  {}", self.sessions)?;
        writeln!(f, "messages  {}", self.messages)?;
        writeln!(f, "bytes     {}", self.bytes)?;
        writeln!(f, "skipped   {}", self.skipped)?;
        write!(f, "failed    {}", self.failures.len())?;
        for failure in &self.failures {
            write!(f, "\n  {failure}")?;
        }
        for mismatch in &self.mismatches {
            write!(f, "\n  differs after copy: {mismatch}")?;
        }
        Ok(())
    }
}

impl Report {
    /// True when nothing failed and every copy matched.
    pub fn is_clean(&self) -> bool {
        self.failures.is_empty() && self.mismatches.is_empty()
    }

    fn count(&mut self, session: &Session, outcome: Imported, bytes: u64) {
        match outcome {
            Imported::Written => {
                self.sessions += 1;
                self.messages += session.messages.len() as u64;
                self.bytes += bytes;
            }
            Imported::Skipped(_) => self.skipped += 1,
            Imported::Failed(why) => self
                .failures
                .push(format!("session {:?}: {why}", session.id.as_str())),
        }
    }
}

/// Writes every live session of `source` to a backup file (JSON Lines, a header first;
/// zstd-compressed when the name ends in `.zst`). The file is written under a temporary
/// name beside `path`, readable by this user only, and renamed over `path` only when
/// complete: a backup that fails halfway leaves the previous one as it was.
pub async fn backup(source: &mut Location, policy: &Policy, path: &Path) -> Result<Report, String> {
    let write_error = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut file = crate::files::AtomicFile::create(path).map_err(write_error)?;
    // A name ending in .zst asks for zstd compression.
    let compressed = path.extension().is_some_and(|e| e == "zst");
    let mut out: Box<dyn Write + '_> = if compressed {
        let encoder = zstd::Encoder::new(file.file(), 3).map_err(|e| format!("zstd: {e}"))?;
        Box::new(std::io::BufWriter::new(encoder.auto_finish()))
    } else {
        Box::new(std::io::BufWriter::new(file.file()))
    };
    let header = serde_json::to_string(&BackupHeader::now()).map_err(|e| e.to_string())?;
    writeln!(out, "{header}").map_err(write_error)?;
    let mut report = Report::default();
    let total = source.session_count().await;
    let mut progress = Progress::start("backup", Unit::Sessions, total);
    let mut sessions = source.sessions(policy).await?;
    while let Some(session) = sessions.next().await {
        let session = session?;
        let line =
            serde_json::to_string(&BackupSession::from(&session)).map_err(|e| e.to_string())?;
        writeln!(out, "{line}").map_err(write_error)?;
        report.count(&session, Imported::Written, line.len() as u64 + 1);
        progress.add(1);
    }
    drop(sessions);
    out.flush().map_err(write_error)?;
    // Dropping the encoder writes the end of the zstd frame.
    drop(out);
    file.commit().map_err(write_error)?;
    progress.finish();
    Ok(report)
}

/// The first bytes of a zstd frame: restore detects compressed backups by them.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Restores a backup file (plain or zstd-compressed) into `target`. A line that cannot be read is reported with its
/// number and restores nothing of its session; the other sessions are restored.
pub async fn restore(
    target: &mut Location,
    policy: &Policy,
    path: &Path,
    existing: Existing,
) -> Result<Report, String> {
    let open =
        || std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()));
    let mut magic = [0u8; 4];
    let compressed =
        std::io::Read::read_exact(&mut open()?, &mut magic).is_ok() && magic == ZSTD_MAGIC;
    // Progress is the share of the file read, compressed or not.
    let file_size = std::fs::metadata(path).map(|m| m.len()).ok();
    let read = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let file = CountingReader(open()?, read.clone());
    let reader: Box<dyn BufRead> = if compressed {
        let decoder = zstd::Decoder::new(file).map_err(|e| format!("zstd: {e}"))?;
        Box::new(std::io::BufReader::new(decoder))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let mut lines = RawLines(reader);
    let header = lines
        .next()
        .ok_or("the file is empty: not a csai-sidecar backup")?
        .map_err(|e| e.to_string())?;
    let header: BackupHeader = serde_json::from_slice(&header)
        .map_err(|_| "line 1 is not a csai-sidecar backup header".to_string())?;
    if header.format != transfer::BACKUP_FORMAT || header.version != transfer::BACKUP_VERSION {
        return Err(format!(
            "line 1: format {:?} version {} is not {} version {}",
            header.format,
            header.version,
            transfer::BACKUP_FORMAT,
            transfer::BACKUP_VERSION
        ));
    }
    let mut report = Report::default();
    let mut progress = Progress::start("restore", Unit::Bytes, file_size);
    for (index, line) in lines.enumerate() {
        let number = index + 2;
        // A read error (a truncated zstd frame) ends the file: nothing after it can be
        // read, but everything before it is restored and the report says where it broke.
        let line = match line {
            Ok(line) => line,
            Err(error) => {
                report.failures.push(format!(
                    "line {number}: {error} (the rest of the file cannot be read)"
                ));
                break;
            }
        };
        if line.trim_ascii().is_empty() {
            continue;
        }
        let session = std::str::from_utf8(&line)
            .map_err(|e| format!("not UTF-8 ({e})"))
            .and_then(|line| serde_json::from_str::<BackupSession>(line).map_err(|e| e.to_string()))
            .and_then(BackupSession::into_session);
        match session {
            Ok(session) => {
                let outcome = target.import(&session, existing, policy).await;
                report.count(&session, outcome, line.len() as u64 + 1);
            }
            Err(problem) => report.failures.push(format!(
                "line {number}: {problem} (truncated or corrupt; nothing of it restored)"
            )),
        }
        progress.set_position(read.load(std::sync::atomic::Ordering::Relaxed));
    }
    progress.finish();
    Ok(report)
}

/// A file that counts the bytes read from it, for restore's progress.
struct CountingReader(std::fs::File, Arc<std::sync::atomic::AtomicU64>);

impl std::io::Read for CountingReader {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buffer)?;
        self.1
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// The lines of a reader as bytes, without their line feed: a line that is not UTF-8
/// is one bad line, not the end of the file (as with `BufRead::lines`).
struct RawLines(Box<dyn BufRead>);

impl Iterator for RawLines {
    type Item = std::io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut line = Vec::new();
        match self.0.read_until(b'\n', &mut line) {
            Ok(0) => None,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                Some(Ok(line))
            }
            Err(error) => Some(Err(error)),
        }
    }
}

/// Copies every live session from `source` to `target`. With a checkpoint file, sessions
/// copied by an earlier, interrupted run are skipped, and each copied session is added to
/// it, so a re-run resumes. Each copy is read back and compared by checksum as soon as it
/// is written, so memory stays bounded by one session however many are copied.
pub async fn migrate(
    source: &mut Location,
    target: &mut Location,
    policy: &Policy,
    checkpoint: Option<&Path>,
    dry_run: bool,
) -> Result<Report, String> {
    let done: HashSet<String> = match checkpoint {
        Some(path) if path.exists() => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the checkpoint {}: {e}", path.display()))?
            .lines()
            .map(String::from)
            .collect(),
        _ => HashSet::new(),
    };
    let mut checkpoint_file = match checkpoint {
        Some(path) if !dry_run => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot write the checkpoint {}: {e}", path.display()))?,
        ),
        _ => None,
    };
    let mut report = Report::default();
    let total = source.session_count().await;
    let mut progress = Progress::start("migrate", Unit::Sessions, total);
    let mut sessions = source.sessions(policy).await?;
    while let Some(session) = sessions.next().await {
        let session = session?;
        progress.add(1);
        if done.contains(session.id.as_str()) {
            report.skipped += 1;
            continue;
        }
        let bytes =
            serde_json::to_string(&BackupSession::from(&session)).map_or(0, |l| l.len() as u64);
        let outcome = if dry_run {
            Imported::Written
        } else {
            target.import(&session, Existing::Overwrite, policy).await
        };
        if outcome == Imported::Written && !dry_run {
            let id = session.id.as_str();
            match target.get(&session, policy).await {
                Ok(Some(copy)) if transfer::checksum(&copy) == transfer::checksum(&session) => {}
                Ok(Some(_)) => report.mismatches.push(format!("{id:?}: contents differ")),
                Ok(None) => report.mismatches.push(format!("{id:?}: missing")),
                Err(problem) => report.mismatches.push(format!("{id:?}: {problem}")),
            }
            if let Some(file) = &mut checkpoint_file {
                writeln!(file, "{id}").map_err(|e| format!("checkpoint: {e}"))?;
            }
        }
        report.count(&session, outcome, bytes);
    }
    drop(sessions);
    progress.finish();
    Ok(report)
}

/// What `rotate-keys` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rotation {
    pub sessions: u64,
    pub failures: Vec<String>,
}

/// Re-encrypts every live session under the primary key: each session is read and
/// written back with version checks (a concurrent write makes it start that session over),
/// keeping its remaining TTL. With `accept_unsealed`, values stored in plaintext or by
/// older versions are read and sealed; without it a session holding one is a failure.
/// Records expire within their retention and are not rewritten.
pub async fn rotate_keys(
    inner: Arc<dyn SessionStore>,
    keys: Arc<Keyring>,
    accept_unsealed: bool,
) -> Rotation {
    use futures::StreamExt;
    let encrypted = if accept_unsealed {
        EncryptedStore::accepting_unsealed(inner.clone(), keys)
    } else {
        EncryptedStore::new(inner.clone(), keys)
    };
    let mut rotation = Rotation::default();
    let ids: Vec<SessionId> = {
        let sessions = transfer::export(inner, String::new());
        futures::pin_mut!(sessions);
        let mut ids = Vec::new();
        while let Some(session) = sessions.next().await {
            match session {
                Ok(session) => ids.push(session.id),
                Err(error) => {
                    rotation.failures.push(format!("listing: {error}"));
                    return rotation;
                }
            }
        }
        ids
    };
    let mut progress = Progress::start("rotate-keys", Unit::Sessions, Some(ids.len() as u64));
    for id in ids {
        progress.add(1);
        let mut attempts = 0;
        loop {
            attempts += 1;
            match rewrite(&encrypted, &id).await {
                Ok(()) => {
                    rotation.sessions += 1;
                    break;
                }
                Err(StoreError::NotFound(_)) => break,
                Err(StoreError::VersionMismatch { .. }) if attempts < 5 => continue,
                Err(error) => {
                    rotation
                        .failures
                        .push(format!("session {:?}: {error}", id.as_str()));
                    break;
                }
            }
        }
    }
    progress.finish();
    rotation
}

async fn rewrite(store: &EncryptedStore, id: &SessionId) -> StoreResult<()> {
    let session = store.get(id, Window::All).await?;
    let ttl = transfer::remaining_ttl(&session).max(Duration::from_secs(1));
    let version = |v| WriteOptions {
        expected_version: Some(v),
        ttl,
    };
    // Rewritten messages keep their times.
    let bodies = |list: Vec<Message>| list.iter().map(NewMessage::copy_of).collect::<Vec<_>>();
    let written = store
        .replace(id, bodies(session.messages), version(session.version))
        .await?;
    let written = store
        .set_system_messages(
            id,
            bodies(session.system_messages),
            version(written.version),
        )
        .await?;
    store
        .update_state(
            id,
            StateUpdate::Replace(session.state),
            version(written.version),
        )
        .await?;
    Ok(())
}
