//! Learning data and security logs over gRPC: validation, time ranges, proto conversion.

use crate::domain::{Role, SessionId, Window};
use crate::grpc::convert::{self, invalid, json_to_struct, long_text, short_text, timestamp};
use crate::grpc::errors::status_of;
use crate::grpc::pb;
use crate::records::{self, LearningRecord, RecordStream, SecurityLog};
use crate::service::{Policy, validate};
use crate::store::{SessionStore, StoreError};
use std::time::{Duration, SystemTime};
use tonic::Status;

/// Most tool names on one learning record.
const MAX_TOOLS: usize = 64;
/// How far before the rated message RecordFeedback looks for the user's question.
const QUESTION_LOOKBACK: u64 = 50;

/// Stores learning data, filling in the question and answer from the session when the
/// record is feedback on a stored assistant message.
pub async fn record_feedback(
    store: &dyn SessionStore,
    policy: &Policy,
    raw: pb::RecordFeedbackRequest,
) -> Result<pb::LearningRecord, Status> {
    let limits = &policy.limits;
    if raw.tools.len() > MAX_TOOLS {
        return Err(invalid("tools", format!("at most {MAX_TOOLS} are allowed")));
    }
    if !raw.feedback_score.is_finite() {
        return Err(invalid("feedback_score", "must be a finite number"));
    }
    let mut record = LearningRecord {
        id: String::new(),
        session_id: String::new(),
        message_seq: raw.message_seq,
        query: long_text(raw.query, limits, "query")?,
        response: long_text(raw.response, limits, "response")?,
        tools: raw
            .tools
            .into_iter()
            .enumerate()
            .map(|(i, t)| short_text(t, &format!("tools[{i}]")).map(Option::unwrap_or_default))
            .collect::<Result<_, _>>()?,
        context: raw
            .context
            .map(|c| convert::struct_to_json(c, "context"))
            .transpose()?
            .unwrap_or_default(),
        feedback_score: raw.feedback_score,
        participant: short_text(raw.participant, "participant")?.unwrap_or_default(),
    };
    if !raw.session_id.is_empty() {
        record.session_id = convert::session_id(&raw.session_id, "session_id")?
            .as_str()
            .to_string();
    }
    if record.message_seq > 0 {
        if record.session_id.is_empty() {
            return Err(invalid("session_id", "is required with message_seq"));
        }
        fill_from_session(store, &mut record).await?;
    }
    let time = record_time(raw.create_time, policy)?;
    let (id, time) = records::put(
        store,
        &RecordStream::Learning,
        &record,
        time,
        policy.record_retention,
    )
    .await
    .map_err(status_of)?;
    record.id = id;
    Ok(learning_to_proto(record, time))
}

/// Checks that `message_seq` is an assistant message of the session, and takes the
/// answer and the question before it from the session where the request left them empty.
async fn fill_from_session(
    store: &dyn SessionStore,
    record: &mut LearningRecord,
) -> Result<(), Status> {
    let id = SessionId::new(record.session_id.as_str());
    let seq = record.message_seq;
    let after = seq.saturating_sub(QUESTION_LOOKBACK);
    let session = store
        .get(&id, Window::AfterSeq(after))
        .await
        .map_err(status_of)?;
    let Some(position) = session.messages.iter().position(|m| m.seq == seq) else {
        return Err(Status::not_found(format!(
            "session {:?} has no message {seq} (it has {})",
            id.as_str(),
            session.message_count
        )));
    };
    let message = &session.messages[position].body;
    if message.role != Role::Assistant {
        return Err(invalid(
            "message_seq",
            format!(
                "message {seq} is a {} message, not an assistant message",
                message.role.as_str()
            ),
        ));
    }
    if record.response.is_empty() {
        record.response = message.content.clone();
    }
    if record.tools.is_empty() {
        record.tools = session.messages[..position]
            .iter()
            .rev()
            .take_while(|m| m.body.role != Role::User)
            .flat_map(|m| m.body.tool_calls.iter().map(|c| c.function.name.clone()))
            .collect();
        record.tools.reverse();
        record.tools.dedup();
    }
    if record.query.is_empty()
        && let Some(question) = session.messages[..position]
            .iter()
            .rev()
            .find(|m| m.body.role == Role::User)
    {
        record.query = question.body.content.clone();
    }
    Ok(())
}

/// A record's `create_time`: the caller's (checked by the service) or now.
fn record_time(raw: Option<prost_types::Timestamp>, policy: &Policy) -> Result<SystemTime, Status> {
    let requested = raw
        .map(|t| SystemTime::try_from(t).map_err(|_| invalid("create_time", "is not a valid time")))
        .transpose()?;
    Ok(validate::record_time(
        requested,
        policy.record_retention,
        "create_time",
    )?)
}

/// Lists learning data in a time range.
pub async fn list_learning(
    store: &dyn SessionStore,
    policy: &Policy,
    raw: pb::ListLearningDataRequest,
) -> Result<pb::ListLearningDataResponse, Status> {
    let (from, to) = time_range(raw.range, policy.record_retention)?;
    let page = records::list::<LearningRecord>(
        store,
        &RecordStream::Learning,
        from,
        to,
        policy.page_size(raw.page_size)? as usize,
        Some(raw.page_token).filter(|t| !t.is_empty()),
    )
    .await
    .map_err(list_error)?;
    Ok(pb::ListLearningDataResponse {
        records: page
            .records
            .into_iter()
            .map(|(record, time)| learning_to_proto(record, time))
            .collect(),
        next_page_token: page.next_page_token.unwrap_or_default(),
    })
}

/// Stores a security log; the message, if given, is kept only as its SHA-256.
pub async fn record_security(
    store: &dyn SessionStore,
    policy: &Policy,
    raw: pb::RecordSecurityLogRequest,
) -> Result<pb::SecurityLog, Status> {
    let user_id = user_id(raw.user_id)?;
    if !raw.spam_score.is_finite() {
        return Err(invalid("spam_score", "must be a finite number"));
    }
    let message_hash = if raw.message.is_empty() {
        short_text(raw.message_hash, "message_hash")?.unwrap_or_default()
    } else {
        records::message_hash(&long_text(raw.message, &policy.limits, "message")?)
    };
    let mut log = SecurityLog {
        id: String::new(),
        user_id,
        session_id: String::new(),
        message_hash,
        spam_score: raw.spam_score,
        allowed: raw.allowed,
        reason: long_text(raw.reason, &policy.limits, "reason")?,
    };
    if !raw.session_id.is_empty() {
        log.session_id = convert::session_id(&raw.session_id, "session_id")?
            .as_str()
            .to_string();
    }
    let stream = RecordStream::Security {
        user: log.user_id.clone(),
    };
    let time = record_time(raw.create_time, policy)?;
    let (id, time) = records::put(store, &stream, &log, time, policy.record_retention)
        .await
        .map_err(status_of)?;
    log.id = id;
    Ok(security_to_proto(log, time))
}

/// Lists one user's security logs in a time range.
pub async fn list_security(
    store: &dyn SessionStore,
    policy: &Policy,
    raw: pb::ListSecurityLogsRequest,
) -> Result<pb::ListSecurityLogsResponse, Status> {
    let stream = RecordStream::Security {
        user: user_id(raw.user_id)?,
    };
    let (from, to) = time_range(raw.range, policy.record_retention)?;
    let page = records::list::<SecurityLog>(
        store,
        &stream,
        from,
        to,
        policy.page_size(raw.page_size)? as usize,
        Some(raw.page_token).filter(|t| !t.is_empty()),
    )
    .await
    .map_err(list_error)?;
    Ok(pb::ListSecurityLogsResponse {
        logs: page
            .records
            .into_iter()
            .map(|(log, time)| security_to_proto(log, time))
            .collect(),
        next_page_token: page.next_page_token.unwrap_or_default(),
    })
}

fn user_id(raw: String) -> Result<String, Status> {
    convert::session_id(&raw, "user_id").map(|id| id.as_str().to_string())
}

fn list_error(error: StoreError) -> Status {
    match error {
        StoreError::InvalidPageToken(_) => invalid(
            "page_token",
            "not a token of this listing; pass the next_page_token of the previous page unchanged",
        ),
        other => status_of(other),
    }
}

/// Resolves a listing's range: `[start_time, end_time)`, end defaulting to now and start
/// to `days` (at least 1) before the end. The start is moved up to the retention horizon:
/// nothing older exists, and per-day layouts need not read the days before it.
fn time_range(
    raw: Option<pb::TimeRange>,
    retention: Duration,
) -> Result<(SystemTime, SystemTime), Status> {
    let raw = raw.unwrap_or_default();
    let time = |t: prost_types::Timestamp, field: &str| {
        SystemTime::try_from(t).map_err(|_| invalid(field, "is not a valid time"))
    };
    let now = SystemTime::now();
    let end = match raw.end_time {
        Some(t) => time(t, "range.end_time")?,
        None => now,
    };
    let start = match raw.start_time {
        Some(t) => time(t, "range.start_time")?,
        None => {
            let days = Duration::from_secs(86_400) * raw.days.max(1);
            end.checked_sub(days).unwrap_or(SystemTime::UNIX_EPOCH)
        }
    };
    if start > end {
        return Err(invalid("range", "start_time is after end_time"));
    }
    let horizon = now.checked_sub(retention).unwrap_or(SystemTime::UNIX_EPOCH);
    Ok((start.max(horizon).min(end), end))
}

fn learning_to_proto(record: LearningRecord, time: SystemTime) -> pb::LearningRecord {
    pb::LearningRecord {
        id: record.id,
        session_id: record.session_id,
        message_seq: record.message_seq,
        query: record.query,
        response: record.response,
        tools: record.tools,
        context: Some(json_to_struct(record.context)),
        feedback_score: record.feedback_score,
        participant: record.participant,
        create_time: Some(timestamp(time)),
    }
}

fn security_to_proto(log: SecurityLog, time: SystemTime) -> pb::SecurityLog {
    pb::SecurityLog {
        id: log.id,
        user_id: log.user_id,
        session_id: log.session_id,
        message_hash: log.message_hash,
        spam_score: log.spam_score,
        allowed: log.allowed,
        reason: log.reason,
        create_time: Some(timestamp(time)),
    }
}
