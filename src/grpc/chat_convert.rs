//! Chat requests and results between proto and domain; the service's chat rules check
//! what bots send (src/service/chat_rules.rs).

use crate::chat::completion::{ResponseFormat, ToolChoice, ToolSpec};
use crate::chat::turn::{Overrides, ToolResult, TurnInput, TurnOutcome, TurnRequest};
use crate::domain::{JsonObject, NewMessage, Role};
use crate::grpc::convert::{self, invalid, message_to_proto, tool_call_to_proto, usage_to_proto};
use crate::grpc::pb;
use crate::service::{Policy, chat_rules};
use tonic::Status;

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
        (None, false, Form::Unary) => {
            TurnInput::ToolResults(raw.tool_results.into_iter().map(tool_result_of).collect())
        }
        (Some(user), true, _) => {
            let mut message = NewMessage::text(Role::User, user.content);
            message.name = Some(user.participant_name).filter(|n| !n.is_empty());
            TurnInput::User(Box::new(message))
        }
        (None, true, _) => {
            return Err(invalid(
                "user_message.content",
                "is required (or tool_results, to continue a turn that is waiting for them)",
            ));
        }
    };
    let additional_system = raw
        .additional_system_messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| convert::message_body(m, &format!("additional_system_messages[{i}]")))
        .collect::<Result<_, _>>()?;
    let request = TurnRequest {
        session,
        tenant: None,
        input,
        tools: tools(raw.tools)?,
        tool_choice: tool_choice(raw.tool_choice)?,
        additional_system,
        overrides: overrides(raw.parameters.unwrap_or_default()),
        provider: Some(raw.provider).filter(|p| !p.is_empty()),
        history_window: Some(raw.history_window).filter(|&w| w > 0),
        history_tokens: Some(raw.max_history_tokens).filter(|&t| t > 0),
        request_id: convert::request_id(raw.request_id, "request_id")?,
        ttl: convert::ttl(raw.ttl, policy.default_ttl, limits, "ttl")?,
        response_format: response_format(raw.response_format)?,
    };
    chat_rules::turn_request(&request, limits)?;
    Ok(request)
}

/// Checks one tool result of ExecStream.
pub fn tool_result(
    raw: pb::ToolResult,
    policy: &Policy,
    field: &str,
) -> Result<ToolResult, Status> {
    let result = tool_result_of(raw);
    chat_rules::tool_result(&result, &policy.limits, field)?;
    Ok(result)
}

fn tool_result_of(raw: pb::ToolResult) -> ToolResult {
    ToolResult {
        tool_call_id: raw.tool_call_id,
        content: raw.content,
        is_error: raw.is_error,
    }
}

fn tools(raw: Vec<pb::Tool>) -> Result<Vec<ToolSpec>, Status> {
    raw.into_iter()
        .enumerate()
        .map(|(i, tool)| {
            let parameters = match tool.parameters {
                Some(schema) => convert::struct_to_json(schema, &format!("tools[{i}].parameters"))?,
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

fn tool_choice(raw: Option<pb::ToolChoice>) -> Result<ToolChoice, Status> {
    use pb::tool_choice::{Choice, Mode};
    Ok(match raw.and_then(|c| c.choice) {
        None => ToolChoice::Auto,
        Some(Choice::Mode(mode)) => match Mode::try_from(mode) {
            Ok(Mode::Unspecified | Mode::Auto) => ToolChoice::Auto,
            Ok(Mode::None) => ToolChoice::None,
            Ok(Mode::Required) => ToolChoice::Required,
            Err(_) => return Err(invalid("tool_choice.mode", format!("unknown mode {mode}"))),
        },
        Some(Choice::FunctionName(name)) => ToolChoice::Function(name),
    })
}

fn overrides(raw: pb::ModelParameters) -> Overrides {
    Overrides {
        model: raw.model.filter(|m| !m.is_empty()),
        temperature: raw.temperature,
        top_p: raw.top_p,
        max_tokens: raw.max_tokens,
        frequency_penalty: raw.frequency_penalty,
        presence_penalty: raw.presence_penalty,
        stop: raw.stop,
        seed: raw.seed,
    }
}

fn response_format(raw: Option<pb::ResponseFormat>) -> Result<ResponseFormat, Status> {
    use pb::response_format::Format;
    Ok(match raw.and_then(|f| f.format) {
        None | Some(Format::JsonObject(false)) => ResponseFormat::Text,
        Some(Format::JsonObject(true)) => ResponseFormat::JsonObject,
        Some(Format::JsonSchema(schema)) => {
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
