//! The checks of a chat turn request, on domain types: the user message or tool results,
//! the tools and tool choice, extra system messages, parameter overrides and the answer's
//! format. Each failure names the field as the client spelled it.

use crate::chat::completion::{ResponseFormat, ToolChoice, ToolSpec};
use crate::chat::turn::{Overrides, ToolResult, TurnInput, TurnRequest};
use crate::config::RequestLimits;
use crate::domain::Role;
use crate::service::validate::{self, Checked, ValidationError};
use std::collections::HashSet;

/// Longest function or schema name, as the OpenAI API allows.
const MAX_FUNCTION_NAME: usize = 64;
/// Most stop sequences, as the OpenAI API allows.
const MAX_STOP_SEQUENCES: usize = 4;

/// Checks a whole turn request (converted from an ExecRequest or ExecStream's `start`).
pub fn turn_request(request: &TurnRequest, limits: &RequestLimits) -> Checked<()> {
    match &request.input {
        TurnInput::User(message) => {
            if message.content.is_empty() {
                return Err(ValidationError::new("user_message.content", "is required"));
            }
            validate::long_text(&message.content, limits, "user_message.content")?;
            let name = message.name.as_deref().unwrap_or_default();
            validate::short_text(name, "user_message.participant_name")?;
            if name.chars().any(char::is_control) {
                return Err(ValidationError::new(
                    "user_message.participant_name",
                    "must not contain control characters",
                ));
            }
        }
        TurnInput::ToolResults(results) => {
            for (i, result) in results.iter().enumerate() {
                tool_result(result, limits, &format!("tool_results[{i}]"))?;
            }
        }
    }
    tools(&request.tools)?;
    tool_choice(&request.tool_choice, &request.tools)?;
    for (i, message) in request.additional_system.iter().enumerate() {
        let field = format!("additional_system_messages[{i}]");
        validate::message(message, limits, &field)?;
        if !matches!(message.role, Role::System | Role::Developer) {
            return Err(ValidationError::new(
                format!("{field}.role"),
                "must be ROLE_SYSTEM or ROLE_DEVELOPER",
            ));
        }
    }
    overrides(&request.overrides)?;
    if let ResponseFormat::JsonSchema { name, .. } = &request.response_format {
        function_name(name, "response_format.json_schema.name")?;
    }
    Ok(())
}

/// Checks one tool result of the bot.
pub fn tool_result(result: &ToolResult, limits: &RequestLimits, field: &str) -> Checked<()> {
    let id_field = format!("{field}.tool_call_id");
    if result.tool_call_id.is_empty() {
        return Err(ValidationError::new(id_field, "is required"));
    }
    validate::short_text(&result.tool_call_id, &id_field)?;
    validate::long_text(&result.content, limits, &format!("{field}.content"))
}

fn function_name(name: &str, field: &str) -> Checked<()> {
    let valid = !name.is_empty()
        && name.len() <= MAX_FUNCTION_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            format!("{name:?} must be 1 to {MAX_FUNCTION_NAME} letters, digits, '_' or '-'"),
        ))
    }
}

fn tools(tools: &[ToolSpec]) -> Checked<()> {
    let mut names = HashSet::new();
    for (i, tool) in tools.iter().enumerate() {
        let field = format!("tools[{i}].name");
        function_name(&tool.name, &field)?;
        if !names.insert(tool.name.as_str()) {
            return Err(ValidationError::new(
                field,
                format!("{:?} is declared twice", tool.name),
            ));
        }
    }
    Ok(())
}

fn tool_choice(choice: &ToolChoice, tools: &[ToolSpec]) -> Checked<()> {
    match choice {
        ToolChoice::Function(name) if !tools.iter().any(|t| &t.name == name) => {
            Err(ValidationError::new(
                "tool_choice.function_name",
                format!("{name:?} is not one of the declared tools"),
            ))
        }
        ToolChoice::Required if tools.is_empty() => Err(ValidationError::new(
            "tool_choice.mode",
            "MODE_REQUIRED needs at least one tool",
        )),
        _ => Ok(()),
    }
}

/// The parameter overrides, within the ranges CS-AI enforces.
fn overrides(overrides: &Overrides) -> Checked<()> {
    let range = |value: Option<f64>, low: f64, high: f64, field: &str| match value {
        Some(v) if !(low..=high).contains(&v) => Err(ValidationError::new(
            field,
            format!("{v} is outside {low} to {high}"),
        )),
        _ => Ok(()),
    };
    if overrides.max_tokens == Some(0) {
        return Err(ValidationError::new(
            "parameters.max_tokens",
            "must be at least 1",
        ));
    }
    if overrides.stop.len() > MAX_STOP_SEQUENCES {
        return Err(ValidationError::new(
            "parameters.stop",
            format!("at most {MAX_STOP_SEQUENCES} stop sequences are allowed"),
        ));
    }
    validate::short_text(
        overrides.model.as_deref().unwrap_or_default(),
        "parameters.model",
    )?;
    range(overrides.temperature, 0.0, 2.0, "parameters.temperature")?;
    range(overrides.top_p, 0.0, 1.0, "parameters.top_p")?;
    range(
        overrides.frequency_penalty,
        -2.0,
        2.0,
        "parameters.frequency_penalty",
    )?;
    range(
        overrides.presence_penalty,
        -2.0,
        2.0,
        "parameters.presence_penalty",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{NewMessage, SessionId};
    use std::time::Duration;

    fn limits() -> RequestLimits {
        crate::config::Config::default().limits
    }

    fn request() -> TurnRequest {
        TurnRequest {
            session: SessionId::new("s"),
            tenant: None,
            input: TurnInput::User(Box::new(NewMessage::text(Role::User, "hi"))),
            tools: vec![tool("lookup_order")],
            tool_choice: ToolChoice::Auto,
            additional_system: Vec::new(),
            overrides: Overrides::default(),
            provider: None,
            history_window: None,
            history_tokens: None,
            request_id: None,
            ttl: Duration::from_secs(60),
            response_format: ResponseFormat::Text,
        }
    }

    fn tool(name: &str) -> ToolSpec {
        ToolSpec {
            name: name.into(),
            description: String::new(),
            parameters: Default::default(),
            strict: false,
        }
    }

    /// The field the first problem of `request` is reported on.
    fn refused_field(request: TurnRequest) -> String {
        turn_request(&request, &limits())
            .expect_err("refused")
            .field
    }

    #[test]
    fn a_plain_request_passes() {
        assert_eq!(turn_request(&request(), &limits()), Ok(()));
    }

    #[test]
    fn each_rule_names_its_field() {
        let mut twice = request();
        twice.tools.push(tool("lookup_order"));
        assert_eq!(refused_field(twice), "tools[1].name");

        let mut required = request();
        required.tools.clear();
        required.tool_choice = ToolChoice::Required;
        assert_eq!(refused_field(required), "tool_choice.mode");

        let mut stops = request();
        stops.overrides.stop = vec!["a".into(); 5];
        assert_eq!(refused_field(stops), "parameters.stop");

        let mut zero = request();
        zero.overrides.max_tokens = Some(0);
        assert_eq!(refused_field(zero), "parameters.max_tokens");

        let mut user_role = request();
        user_role
            .additional_system
            .push(NewMessage::text(Role::User, "not a system message"));
        assert_eq!(
            refused_field(user_role),
            "additional_system_messages[0].role"
        );

        let mut named = request();
        let mut user = NewMessage::text(Role::User, "hi");
        user.name = Some("ana\u{7}".into());
        named.input = TurnInput::User(Box::new(user));
        assert_eq!(refused_field(named), "user_message.participant_name");

        let mut unnamed_result = request();
        unnamed_result.input = TurnInput::ToolResults(vec![ToolResult {
            tool_call_id: String::new(),
            content: "42".into(),
            is_error: false,
        }]);
        assert_eq!(
            refused_field(unnamed_result),
            "tool_results[0].tool_call_id"
        );

        let mut schema = request();
        schema.response_format = ResponseFormat::JsonSchema {
            name: "has space".into(),
            schema: Default::default(),
            strict: true,
        };
        assert_eq!(refused_field(schema), "response_format.json_schema.name");
    }
}
