//! Chat requests and results between proto and domain, with the validation of what bots send.

use crate::chat::completion::{ResponseFormat, ToolChoice, ToolSpec};
use crate::chat::turn::{Overrides, ToolResult, TurnInput, TurnOutcome, TurnRequest};
use crate::domain::{JsonObject, NewMessage, Role};
use crate::grpc::convert::{
    self, invalid, long_text, message_to_proto, short_text, tool_call_to_proto, usage_to_proto,
};
use crate::grpc::pb;
use crate::service::Policy;
use std::collections::HashSet;
use tonic::Status;

/// Longest function or schema name, as the OpenAI API allows.
const MAX_FUNCTION_NAME: usize = 64;

/// Which RPC a request arrived on: only Exec may continue a turn with tool_results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    Unary,
    Streaming,
}

/// Checks an ExecRequest (or the `start` of ExecStream) and turns it into a turn request.
pub fn turn_request(
    raw: pb::ExecRequest,
    policy: &Policy,
    form: Form,
) -> Result<TurnRequest, Status> {
    let limits = &policy.limits;
    let session = convert::session_id(&raw.session_id, "session_id")?;
    let user = raw
        .user_message
        .filter(|u| !u.content.is_empty() || !u.participant_name.is_empty());
    let input = match (user, raw.tool_results.is_empty(), form) {
        (Some(_), false, _) => {
            return Err(invalid(
                "tool_results",
                "a request either starts a turn (user_message) or continues one (tool_results), not both",
            ));
        }
        (None, false, Form::Streaming) => {
            return Err(invalid(
                "start.tool_results",
                "ExecStream receives tool results as tool_result messages on the stream; start needs user_message",
            ));
        }
        (None, false, Form::Unary) => TurnInput::ToolResults(
            raw.tool_results
                .into_iter()
                .enumerate()
                .map(|(i, r)| tool_result(r, policy, &format!("tool_results[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        (Some(user), true, _) => {
            if user.content.is_empty() {
                return Err(invalid("user_message.content", "is required"));
            }
            let mut message = NewMessage::text(
                Role::User,
                long_text(user.content, limits, "user_message.content")?,
            );
            message.name = short_text(user.participant_name, "user_message.participant_name")?;
            if message
                .name
                .as_deref()
                .is_some_and(|n| n.chars().any(char::is_control))
            {
                return Err(invalid(
                    "user_message.participant_name",
                    "must not contain control characters",
                ));
            }
            TurnInput::User(Box::new(message))
        }
        (None, true, _) => {
            return Err(invalid(
                "user_message.content",
                "is required (or tool_results, to continue a turn that is waiting for them)",
            ));
        }
    };
    let tools = tools(raw.tools)?;
    let tool_choice = tool_choice(raw.tool_choice, &tools)?;
    let additional_system = raw
        .additional_system_messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let field = format!("additional_system_messages[{i}]");
            let message = convert::new_message(m, limits, &field)?;
            if !matches!(message.role, Role::System | Role::Developer) {
                return Err(invalid(
                    &format!("{field}.role"),
                    "must be ROLE_SYSTEM or ROLE_DEVELOPER",
                ));
            }
            Ok(message)
        })
        .collect::<Result<_, _>>()?;
    Ok(TurnRequest {
        session,
        tenant: None,
        input,
        tools,
        tool_choice,
        additional_system,
        overrides: overrides(raw.parameters.unwrap_or_default())?,
        provider: Some(raw.provider).filter(|p| !p.is_empty()),
        history_window: Some(raw.history_window).filter(|&w| w > 0),
        request_id: convert::request_id(raw.request_id, "request_id")?,
        ttl: convert::ttl(raw.ttl, policy.default_ttl, limits, "ttl")?,
        response_format: response_format(raw.response_format)?,
    })
}

/// Checks one tool result of the bot.
pub fn tool_result(
    raw: pb::ToolResult,
    policy: &Policy,
    field: &str,
) -> Result<ToolResult, Status> {
    let tool_call_id = short_text(raw.tool_call_id, &format!("{field}.tool_call_id"))?
        .ok_or_else(|| invalid(&format!("{field}.tool_call_id"), "is required"))?;
    Ok(ToolResult {
        tool_call_id,
        content: long_text(raw.content, &policy.limits, &format!("{field}.content"))?,
        is_error: raw.is_error,
    })
}

fn function_name(name: &str, field: &str) -> Result<(), Status> {
    let valid = !name.is_empty()
        && name.len() <= MAX_FUNCTION_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{name:?} must be 1 to {MAX_FUNCTION_NAME} letters, digits, '_' or '-'"),
        ))
    }
}

fn tools(raw: Vec<pb::Tool>) -> Result<Vec<ToolSpec>, Status> {
    let mut names = HashSet::new();
    raw.into_iter()
        .enumerate()
        .map(|(i, tool)| {
            let field = format!("tools[{i}]");
            function_name(&tool.name, &format!("{field}.name"))?;
            if !names.insert(tool.name.clone()) {
                return Err(invalid(
                    &format!("{field}.name"),
                    format!("{:?} is declared twice", tool.name),
                ));
            }
            let parameters = match tool.parameters {
                Some(schema) => convert::struct_to_json(schema, &format!("{field}.parameters"))?,
                None => empty_object_schema(),
            };
            Ok(ToolSpec {
                name: tool.name,
                description: tool.description,
                parameters,
                strict: tool.strict,
            })
        })
        .collect()
}

/// The schema of a tool without arguments.
fn empty_object_schema() -> JsonObject {
    let mut schema = JsonObject::new();
    schema.insert("type".into(), "object".into());
    schema.insert("properties".into(), JsonObject::new().into());
    schema
}

fn tool_choice(raw: Option<pb::ToolChoice>, tools: &[ToolSpec]) -> Result<ToolChoice, Status> {
    use pb::tool_choice::{Choice, Mode};
    let choice = match raw.and_then(|c| c.choice) {
        None => ToolChoice::Auto,
        Some(Choice::Mode(mode)) => match Mode::try_from(mode) {
            Ok(Mode::Unspecified | Mode::Auto) => ToolChoice::Auto,
            Ok(Mode::None) => ToolChoice::None,
            Ok(Mode::Required) => ToolChoice::Required,
            Err(_) => return Err(invalid("tool_choice.mode", format!("unknown mode {mode}"))),
        },
        Some(Choice::FunctionName(name)) => {
            if !tools.iter().any(|t| t.name == name) {
                return Err(invalid(
                    "tool_choice.function_name",
                    format!("{name:?} is not one of the declared tools"),
                ));
            }
            ToolChoice::Function(name)
        }
    };
    if choice == ToolChoice::Required && tools.is_empty() {
        return Err(invalid(
            "tool_choice.mode",
            "MODE_REQUIRED needs at least one tool",
        ));
    }
    Ok(choice)
}

/// Checks the parameter overrides against the ranges CS-AI enforces.
fn overrides(raw: pb::ModelParameters) -> Result<Overrides, Status> {
    let range = |value: Option<f64>, low: f64, high: f64, field: &str| match value {
        Some(v) if !(low..=high).contains(&v) => {
            Err(invalid(field, format!("{v} is outside {low} to {high}")))
        }
        other => Ok(other),
    };
    if raw.max_tokens == Some(0) {
        return Err(invalid("parameters.max_tokens", "must be at least 1"));
    }
    if raw.stop.len() > 4 {
        return Err(invalid(
            "parameters.stop",
            "at most 4 stop sequences are allowed",
        ));
    }
    Ok(Overrides {
        model: short_text(raw.model.unwrap_or_default(), "parameters.model")?,
        temperature: range(raw.temperature, 0.0, 2.0, "parameters.temperature")?,
        top_p: range(raw.top_p, 0.0, 1.0, "parameters.top_p")?,
        max_tokens: raw.max_tokens,
        frequency_penalty: range(
            raw.frequency_penalty,
            -2.0,
            2.0,
            "parameters.frequency_penalty",
        )?,
        presence_penalty: range(
            raw.presence_penalty,
            -2.0,
            2.0,
            "parameters.presence_penalty",
        )?,
        stop: raw.stop,
        seed: raw.seed,
    })
}

fn response_format(raw: Option<pb::ResponseFormat>) -> Result<ResponseFormat, Status> {
    use pb::response_format::Format;
    Ok(match raw.and_then(|f| f.format) {
        None | Some(Format::JsonObject(false)) => ResponseFormat::Text,
        Some(Format::JsonObject(true)) => ResponseFormat::JsonObject,
        Some(Format::JsonSchema(schema)) => {
            function_name(&schema.name, "response_format.json_schema.name")?;
            let Some(body) = schema.schema else {
                return Err(invalid("response_format.json_schema.schema", "is required"));
            };
            ResponseFormat::JsonSchema {
                name: schema.name,
                schema: convert::struct_to_json(body, "response_format.json_schema.schema")?,
                strict: schema.strict,
            }
        }
    })
}

/// A turn's result as proto.
pub fn exec_response(outcome: TurnOutcome) -> pb::ExecResponse {
    let status = if outcome.pending.is_empty() {
        pb::TurnStatus::Completed
    } else {
        pb::TurnStatus::RequiresAction
    };
    pb::ExecResponse {
        assistant_message: Some(message_to_proto(outcome.assistant)),
        pending_tool_calls: outcome
            .pending
            .into_iter()
            .map(tool_call_to_proto)
            .collect(),
        usage: Some(usage_to_proto(outcome.usage)),
        finish_reason: outcome.finish_reason,
        tool_rounds: outcome.tool_rounds,
        version: outcome.version,
        provider: outcome.provider,
        status: status as i32,
        first_seq: outcome.first_seq,
        last_seq: outcome.last_seq,
    }
}
