//! The checks of what a client writes, on domain types: ids, TTLs, messages, tool results.
//! Each failure names the offending field, as the client spelled it.

use crate::config::RequestLimits;
use crate::domain::{MAX_WINDOW_GROWTH, NewMessage, Role, SessionId};
use crate::settings::format_duration;
use std::fmt;
use std::time::{Duration, SystemTime};

/// Longest session id, in bytes.
pub const MAX_SESSION_ID_BYTES: usize = 256;
/// Longest idempotency key, in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 128;
/// Longest participant name, tool call id, function name or model name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Shortest TTL a request may ask for: every backend keeps expiries to the millisecond
/// (CS-AI's own storage tests use 100 ms).
pub const MIN_TTL: Duration = Duration::from_millis(1);

/// A request value the service refuses: which field, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationError {
    pub field: String,
    pub problem: String,
}

impl ValidationError {
    /// `field` has `problem`.
    pub fn new(field: impl Into<String>, problem: impl fmt::Display) -> Self {
        Self {
            field: field.into(),
            problem: problem.to_string(),
        }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl std::error::Error for ValidationError {}

/// A checked value, or the field that is wrong and why.
pub type Checked<T> = Result<T, ValidationError>;

fn has_control_chars(text: &str) -> bool {
    text.chars().any(char::is_control)
}

/// A session id: 1 to 256 bytes of UTF-8 without control characters.
pub fn session_id(raw: &str, field: &str) -> Checked<SessionId> {
    if raw.is_empty() {
        return Err(ValidationError::new(field, "is required"));
    }
    if raw.len() > MAX_SESSION_ID_BYTES {
        return Err(ValidationError::new(
            field,
            format!(
                "is {} bytes; at most {MAX_SESSION_ID_BYTES} are allowed",
                raw.len()
            ),
        ));
    }
    if has_control_chars(raw) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(SessionId::new(raw))
}

/// A listing's or a feed's id prefix: empty (every session) or at most as long as an id.
pub fn id_prefix(prefix: &str, field: &str) -> Checked<()> {
    if prefix.len() > MAX_SESSION_ID_BYTES {
        return Err(ValidationError::new(
            field,
            format!("at most {MAX_SESSION_ID_BYTES} bytes are allowed"),
        ));
    }
    Ok(())
}

/// An optional idempotency key (empty means none).
pub fn request_id(raw: String, field: &str) -> Checked<Option<String>> {
    if raw.len() > MAX_REQUEST_ID_BYTES {
        return Err(ValidationError::new(
            field,
            format!("at most {MAX_REQUEST_ID_BYTES} bytes are allowed"),
        ));
    }
    if has_control_chars(&raw) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(Some(raw).filter(|r| !r.is_empty()))
}

/// The error of a TTL outside 1ms..=max_ttl (or negative).
pub fn ttl_out_of_range(limits: &RequestLimits, field: &str) -> ValidationError {
    ValidationError::new(
        field,
        format!(
            "must be between {} and {}",
            format_duration(MIN_TTL),
            format_duration(limits.max_ttl)
        ),
    )
}

/// A request's TTL: the default when unset, else within 1ms..=max_ttl.
pub fn ttl(
    requested: Option<Duration>,
    default: Duration,
    limits: &RequestLimits,
    field: &str,
) -> Checked<Duration> {
    match requested {
        None => Ok(default),
        Some(ttl) if (MIN_TTL..=limits.max_ttl).contains(&ttl) => Ok(ttl),
        Some(_) => Err(ttl_out_of_range(limits, field)),
    }
}

/// How far ahead of the sidecar's clock a caller's record time may be (clock skew).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The time of a record (learning data, a security log): now when the caller gives none;
/// a caller's time (an import of history) must lie within `retention` before now, where
/// it would not have expired yet, and not in the future beyond [`MAX_CLOCK_SKEW`].
pub fn record_time(
    requested: Option<SystemTime>,
    retention: Duration,
    field: &str,
) -> Checked<SystemTime> {
    let now = SystemTime::now();
    let Some(time) = requested else {
        return Ok(now);
    };
    if time > now + MAX_CLOCK_SKEW {
        return Err(ValidationError::new(field, "is in the future"));
    }
    if now.duration_since(time).is_ok_and(|age| age >= retention) {
        return Err(ValidationError::new(
            field,
            format!(
                "is older than record_retention ({}): the record would be expired already",
                format_duration(retention)
            ),
        ));
    }
    Ok(time)
}

/// A name-like text: at most 256 bytes.
pub fn short_text(text: &str, field: &str) -> Checked<()> {
    if text.len() > MAX_NAME_BYTES {
        return Err(ValidationError::new(
            field,
            format!("at most {MAX_NAME_BYTES} bytes are allowed"),
        ));
    }
    Ok(())
}

/// A content-like text: at most max_content_bytes.
pub fn long_text(text: &str, limits: &RequestLimits, field: &str) -> Checked<()> {
    if text.len() > limits.max_content_bytes {
        return Err(ValidationError::new(
            field,
            format!(
                "{} bytes is more than the limit of {} bytes (max_content_bytes)",
                text.len(),
                limits.max_content_bytes
            ),
        ));
    }
    Ok(())
}

/// Tool calls are only allowed on assistant messages.
pub fn tool_calls_allowed(role: Role, field: &str) -> Checked<()> {
    if role != Role::Assistant {
        return Err(ValidationError::new(
            field,
            "only assistant messages may carry tool calls",
        ));
    }
    Ok(())
}

/// One message a client writes: tool calls only on assistant messages, `tool_call_id`
/// exactly on tool messages, every text within its limit.
pub fn message(message: &NewMessage, limits: &RequestLimits, field: &str) -> Checked<()> {
    if !message.tool_calls.is_empty() {
        tool_calls_allowed(message.role, &format!("{field}.tool_calls"))?;
    }
    let tool_call_id = message.tool_call_id.as_deref().filter(|id| !id.is_empty());
    if let Some(id) = tool_call_id {
        short_text(id, &format!("{field}.tool_call_id"))?;
    }
    match (message.role, tool_call_id) {
        (Role::Tool, None) => {
            return Err(ValidationError::new(
                format!("{field}.tool_call_id"),
                "is required on tool messages: the id of the call it answers",
            ));
        }
        (Role::Tool, Some(_)) | (_, None) => {}
        (_, Some(_)) => {
            return Err(ValidationError::new(
                format!("{field}.tool_call_id"),
                "is only allowed on tool messages",
            ));
        }
    }
    for (i, call) in message.tool_calls.iter().enumerate() {
        let field = format!("{field}.tool_calls[{i}]");
        if call.id.is_empty() {
            return Err(ValidationError::new(format!("{field}.id"), "is required"));
        }
        short_text(&call.id, &format!("{field}.id"))?;
        if call.function.name.is_empty() {
            return Err(ValidationError::new(
                format!("{field}.function.name"),
                "is required",
            ));
        }
        short_text(&call.function.name, &format!("{field}.function.name"))?;
        short_text(&call.kind, &format!("{field}.type"))?;
        long_text(
            &call.function.arguments,
            limits,
            &format!("{field}.function.arguments"),
        )?;
    }
    long_text(&message.content, limits, &format!("{field}.content"))?;
    if let Some(name) = &message.name {
        short_text(name, &format!("{field}.name"))?;
    }
    if let Some(model) = &message.model {
        short_text(model, &format!("{field}.model"))?;
    }
    if let Some(reasoning) = &message.reasoning_content {
        long_text(reasoning, limits, &format!("{field}.reasoning_content"))?;
    }
    Ok(())
}

/// The messages of one write: at most max_messages_per_request, each valid.
pub fn messages(list: &[NewMessage], limits: &RequestLimits, field: &str) -> Checked<()> {
    if list.len() > limits.max_messages_per_request {
        return Err(ValidationError::new(
            field,
            format!(
                "{} messages is more than the limit of {} per request (max_messages_per_request); split the write",
                list.len(),
                limits.max_messages_per_request
            ),
        ));
    }
    for (i, m) in list.iter().enumerate() {
        message(m, limits, &format!("{field}[{i}]"))?;
    }
    Ok(())
}

/// The tool results in `messages` whose call is neither among `earlier_calls` (how many
/// messages back, and the call id) nor in a message before them in the list, within
/// [`MAX_WINDOW_GROWTH`] messages: each as its index and `tool_call_id`.
pub fn unanswered_tool_results<'m>(
    messages: &'m [NewMessage],
    earlier_calls: &[(usize, String)],
) -> Vec<(usize, &'m str)> {
    // Positions counted from the start of `messages`; earlier ones are negative.
    let mut calls: std::collections::HashMap<&str, isize> = earlier_calls
        .iter()
        .map(|(back, id)| (id.as_str(), -(*back as isize)))
        .collect();
    let mut unanswered = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        for call in &message.tool_calls {
            calls.insert(call.id.as_str(), i as isize);
        }
        if message.role == Role::Tool
            && let Some(id) = message.tool_call_id.as_deref()
        {
            let near = calls
                .get(id)
                .is_some_and(|&at| (i as isize - at) as usize <= MAX_WINDOW_GROWTH);
            if !near {
                unanswered.push((i, id));
            }
        }
    }
    unanswered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_checked_on_domain_types() {
        let limits = RequestLimits {
            max_messages_per_request: 10,
            max_content_bytes: 100,
            max_ttl: Duration::from_secs(3600),
            max_page_size: 10,
        };
        let mut stray = NewMessage::text(Role::User, "hi");
        stray.tool_call_id = Some("call_1".into());
        assert_eq!(
            message(&stray, &limits, "messages[0]")
                .unwrap_err()
                .to_string(),
            "messages[0].tool_call_id: is only allowed on tool messages"
        );
        let mut result = NewMessage::text(Role::Tool, "42");
        result.tool_call_id = Some(String::new());
        assert!(
            message(&result, &limits, "m")
                .unwrap_err()
                .problem
                .starts_with("is required on tool messages")
        );
        let long = NewMessage::text(Role::User, "x".repeat(limits.max_content_bytes + 1));
        assert_eq!(message(&long, &limits, "m").unwrap_err().field, "m.content");
        assert!(session_id("a\nb", "session_id").is_err());
        assert_eq!(
            ttl(Some(Duration::from_millis(100)), MIN_TTL, &limits, "ttl"),
            Ok(Duration::from_millis(100))
        );
        assert!(ttl(Some(Duration::ZERO), MIN_TTL, &limits, "ttl").is_err());
        assert!(ttl(Some(Duration::from_micros(999)), MIN_TTL, &limits, "ttl").is_err());
    }
}
