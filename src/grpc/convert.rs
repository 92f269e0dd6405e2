//! Conversions between proto types and domain types. What a client sends is checked by
//! the service layer (`service::validate`) once converted; only what cannot be
//! represented fails here. Each failure is INVALID_ARGUMENT naming the offending field.

use crate::config::RequestLimits;
use crate::domain::{
    FunctionCall, JsonObject, ListPage, Message, NewMessage, Role, Session, SessionId,
    SessionSummary, ToolCall, Usage, UsageTotal,
};
use crate::grpc::pb;
use crate::service::validate;
use prost_types::value::Kind;
use serde_json::Value;
use std::time::{Duration, SystemTime};
use tonic::Status;

/// INVALID_ARGUMENT naming the offending field.
pub fn invalid(field: &str, problem: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {problem}"))
}

/// Checks a session id (see [`validate::session_id`]). The request's own `session_id` is
/// recorded on the RPC's span (as `trace_session_ids` allows).
pub fn session_id(raw: &str, field: &str) -> Result<SessionId, Status> {
    let id = validate::session_id(raw, field)?;
    if field == "session_id" {
        crate::observability::telemetry::record_session_id(raw);
    }
    Ok(id)
}

/// Checks an optional idempotency key.
pub fn request_id(raw: String, field: &str) -> Result<Option<String>, Status> {
    Ok(validate::request_id(raw, field)?)
}

/// Resolves a request's TTL: the default when unset, else within 1s..=max_ttl.
pub fn ttl(
    raw: Option<prost_types::Duration>,
    default: Duration,
    limits: &RequestLimits,
    field: &str,
) -> Result<Duration, Status> {
    let requested = raw
        .map(|raw| Duration::try_from(raw).map_err(|_| validate::ttl_out_of_range(limits, field)))
        .transpose()?;
    Ok(validate::ttl(requested, default, limits, field)?)
}

/// A checked name-like text (see [`validate::short_text`]); None when empty.
pub fn short_text(raw: String, field: &str) -> Result<Option<String>, Status> {
    validate::short_text(&raw, field)?;
    Ok(optional(raw))
}

/// A checked content-like text (see [`validate::long_text`]).
pub fn long_text(raw: String, limits: &RequestLimits, field: &str) -> Result<String, Status> {
    validate::long_text(&raw, limits, field)?;
    Ok(raw)
}

/// A proto string field: None when empty.
fn optional(raw: String) -> Option<String> {
    Some(raw).filter(|s| !s.is_empty())
}

fn role(raw: i32, field: &str) -> Result<Role, Status> {
    match pb::Role::try_from(raw) {
        Ok(pb::Role::System) => Ok(Role::System),
        Ok(pb::Role::Developer) => Ok(Role::Developer),
        Ok(pb::Role::User) => Ok(Role::User),
        Ok(pb::Role::Assistant) => Ok(Role::Assistant),
        Ok(pb::Role::Tool) => Ok(Role::Tool),
        Ok(pb::Role::Unspecified) => Err(invalid(
            field,
            "is required: ROLE_SYSTEM, ROLE_DEVELOPER, ROLE_USER, ROLE_ASSISTANT or ROLE_TOOL",
        )),
        Err(_) => Err(invalid(field, format!("unknown role {raw}"))),
    }
}

fn role_to_proto(role: Role) -> pb::Role {
    match role {
        Role::System => pb::Role::System,
        Role::Developer => pb::Role::Developer,
        Role::User => pb::Role::User,
        Role::Assistant => pb::Role::Assistant,
        Role::Tool => pb::Role::Tool,
    }
}

/// Checks and converts one message a client writes (its seq and create_time are ignored).
pub fn new_message(
    raw: pb::Message,
    limits: &RequestLimits,
    field: &str,
) -> Result<NewMessage, Status> {
    let message = message_body(raw, field)?;
    validate::message(&message, limits, field)?;
    Ok(message)
}

/// One proto message as a domain message, converted but not yet validated: only what
/// cannot be represented (an unknown role, a tool call without its function, a metadata
/// value that is not JSON) fails here.
pub fn message_body(raw: pb::Message, field: &str) -> Result<NewMessage, Status> {
    let role = role(raw.role, &format!("{field}.role"))?;
    if !raw.tool_calls.is_empty() && role != Role::Assistant {
        // Before the calls are converted: their role is the first thing wrong with them.
        validate::tool_calls_allowed(role, &format!("{field}.tool_calls"))?;
    }
    let tool_calls = raw
        .tool_calls
        .into_iter()
        .enumerate()
        .map(|(i, call)| tool_call(call, &format!("{field}.tool_calls[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(NewMessage {
        role,
        content: raw.content,
        name: optional(raw.name),
        tool_calls,
        tool_call_id: optional(raw.tool_call_id),
        model: optional(raw.model),
        usage: raw.usage.map(|u| Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens,
            cached_tokens: u.cached_tokens,
            reasoning_tokens: u.reasoning_tokens,
            cache_miss_tokens: u.cache_miss_tokens,
        }),
        reasoning_content: optional(raw.reasoning_content),
        metadata: raw
            .metadata
            .map(|m| struct_to_json(m, &format!("{field}.metadata")))
            .transpose()?
            .unwrap_or_default(),
        // A client's write is new: the store stamps it (copies set this themselves).
        create_time: None,
    })
}

fn tool_call(raw: pb::ToolCall, field: &str) -> Result<ToolCall, Status> {
    let function = raw
        .function
        .ok_or_else(|| invalid(&format!("{field}.function"), "is required"))?;
    Ok(ToolCall {
        id: raw.id,
        kind: optional(raw.r#type).unwrap_or_else(|| "function".into()),
        function: FunctionCall {
            name: function.name,
            arguments: function.arguments,
        },
        index: raw.index,
    })
}

/// Checks and converts the messages of a write request.
pub fn new_messages(
    raw: Vec<pb::Message>,
    limits: &RequestLimits,
    field: &str,
) -> Result<Vec<NewMessage>, Status> {
    let messages = raw
        .into_iter()
        .enumerate()
        .map(|(i, m)| message_body(m, &format!("{field}[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    validate::messages(&messages, limits, field)?;
    Ok(messages)
}

/// A stored message as proto.
pub fn message_to_proto(message: Message) -> pb::Message {
    let body = message.body;
    pb::Message {
        seq: message.seq,
        role: role_to_proto(body.role) as i32,
        content: body.content,
        name: body.name.unwrap_or_default(),
        tool_calls: body
            .tool_calls
            .into_iter()
            .map(tool_call_to_proto)
            .collect(),
        tool_call_id: body.tool_call_id.unwrap_or_default(),
        model: body.model.unwrap_or_default(),
        usage: body.usage.map(usage_to_proto),
        reasoning_content: body.reasoning_content.unwrap_or_default(),
        metadata: (!body.metadata.is_empty()).then(|| json_to_struct(body.metadata)),
        create_time: Some(timestamp(message.create_time)),
    }
}

/// A tool call as proto.
pub fn tool_call_to_proto(call: ToolCall) -> pb::ToolCall {
    pb::ToolCall {
        id: call.id,
        r#type: call.kind,
        function: Some(pb::FunctionCall {
            name: call.function.name,
            arguments: call.function.arguments,
        }),
        index: call.index,
    }
}

/// Token usage as proto.
pub fn usage_to_proto(usage: Usage) -> pb::Usage {
    pb::Usage {
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        total_tokens: usage.total_tokens,
        cached_tokens: usage.cached_tokens,
        reasoning_tokens: usage.reasoning_tokens,
        cache_miss_tokens: usage.cache_miss_tokens,
    }
}

/// A usage total as proto.
pub fn usage_total_to_proto(usage: UsageTotal) -> pb::UsageTotal {
    pb::UsageTotal {
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        total_tokens: usage.total_tokens,
        cached_tokens: usage.cached_tokens,
        reasoning_tokens: usage.reasoning_tokens,
        cache_miss_tokens: usage.cache_miss_tokens,
    }
}

/// A session as proto.
pub fn session_to_proto(session: Session) -> pb::Session {
    pb::Session {
        session_id: session.id.as_str().to_string(),
        messages: session.messages.into_iter().map(message_to_proto).collect(),
        system_messages: session
            .system_messages
            .into_iter()
            .map(message_to_proto)
            .collect(),
        state: Some(json_to_struct(session.state)),
        version: session.version,
        message_count: session.message_count,
        create_time: Some(timestamp(session.create_time)),
        update_time: Some(timestamp(session.update_time)),
        expire_time: Some(timestamp(session.expire_time)),
    }
}

fn summary_to_proto(summary: SessionSummary) -> pb::SessionSummary {
    pb::SessionSummary {
        session_id: summary.id.as_str().to_string(),
        message_count: summary.message_count,
        version: summary.version,
        update_time: Some(timestamp(summary.update_time)),
        expire_time: Some(timestamp(summary.expire_time)),
        usage_total: Some(usage_total_to_proto(summary.usage_total)),
    }
}

/// A listing page as proto.
pub fn list_page_to_proto(page: ListPage) -> pb::ListSessionsResponse {
    pb::ListSessionsResponse {
        sessions: page.sessions.into_iter().map(summary_to_proto).collect(),
        next_page_token: page.next_page_token.unwrap_or_default(),
    }
}

/// A time as a proto Timestamp.
pub fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

/// Converts a Struct to a JSON object. Numbers that are whole and exactly representable
/// become JSON integers, so `{"n": 3}` is stored as written.
pub fn struct_to_json(raw: prost_types::Struct, field: &str) -> Result<JsonObject, Status> {
    raw.fields
        .into_iter()
        .map(|(key, value)| {
            let inner = format!("{field}.{key}");
            Ok((key, value_to_json(value, &inner)?))
        })
        .collect()
}

fn value_to_json(raw: prost_types::Value, field: &str) -> Result<Value, Status> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    Ok(match raw.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < EXACT => Value::from(n as i64),
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(n)
            .map(Value::Number)
            .ok_or_else(|| invalid(field, "NaN and infinity are not valid JSON numbers"))?,
        Some(Kind::StructValue(s)) => Value::Object(struct_to_json(s, field)?),
        Some(Kind::ListValue(list)) => Value::Array(
            list.values
                .into_iter()
                .enumerate()
                .map(|(i, v)| value_to_json(v, &format!("{field}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// Converts a JSON object to a Struct.
pub fn json_to_struct(object: JsonObject) -> prost_types::Struct {
    prost_types::Struct {
        fields: object
            .into_iter()
            .map(|(key, value)| (key, json_to_value(value)))
            .collect(),
    }
}

fn json_to_value(value: Value) -> prost_types::Value {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(values) => Kind::ListValue(prost_types::ListValue {
            values: values.into_iter().map(json_to_value).collect(),
        }),
        Value::Object(object) => Kind::StructValue(json_to_struct(object)),
    };
    prost_types::Value { kind: Some(kind) }
}
