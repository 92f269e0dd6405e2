//! The rules of whole sessions copied in (ImportSessions, restore, migrations): the same
//! checks as any write, seqs 1..n, message times a backend stores exactly, and a TTL held
//! to `max_ttl`. Every path that copies sessions into a store goes through here.

use crate::domain::{Message, Session};
use crate::service::Policy;
use crate::service::validate::{self, ValidationError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// 9999-12-31T23:59:59Z, the last second a protobuf Timestamp may hold.
const LAST_TIME_SECONDS: u64 = 253_402_300_799;

/// `session` (named `field` in errors) checked for import, with its TTL held to max_ttl.
pub fn checked_session(
    session: Session,
    ttl: Duration,
    policy: &Policy,
    field: &str,
) -> Result<(Session, Duration), ValidationError> {
    validate::session_id(session.id.as_str(), &format!("{field}.session.session_id"))?;
    checked_messages(
        &session.messages,
        policy,
        &format!("{field}.session.messages"),
    )?;
    checked_messages(
        &session.system_messages,
        policy,
        &format!("{field}.session.system_messages"),
    )?;
    Ok((session, ttl.min(policy.limits.max_ttl)))
}

/// Stored messages: seqs 1..n, each a valid write, each time within 1970..=9999.
fn checked_messages(list: &[Message], policy: &Policy, field: &str) -> Result<(), ValidationError> {
    for (i, message) in list.iter().enumerate() {
        let seq = i as u64 + 1;
        if message.seq != seq {
            return Err(ValidationError::new(
                format!("{field}[{i}].seq"),
                format!(
                    "is {}, expected {seq}: seqs of a session are 1..n",
                    message.seq
                ),
            ));
        }
        if !time_in_range(message.create_time) {
            return Err(ValidationError::new(
                format!("{field}[{i}].create_time"),
                "must lie between 1970-01-01 and 9999-12-31",
            ));
        }
        validate::message(&message.body, &policy.limits, &format!("{field}[{i}]"))?;
    }
    Ok(())
}

/// True for times every backend stores exactly (milliseconds since 1970, up to year 9999).
pub fn time_in_range(time: SystemTime) -> bool {
    time.duration_since(UNIX_EPOCH)
        .is_ok_and(|since| since.as_secs() <= LAST_TIME_SECONDS)
}
