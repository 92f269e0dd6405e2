//! The OpenAI chat-completions JSON: request bodies, answers and streamed chunks.

use crate::chat::completion::{Completion, CompletionRequest, Delta, ResponseFormat, ToolChoice};
use crate::domain::{FunctionCall, NewMessage, Role, ToolCall, Usage};
use serde::Deserialize;
use serde_json::{Value, json};

/// The body of a `POST /chat/completions`.
pub fn request_body(request: &CompletionRequest, stream: bool) -> Value {
    let sampling = &request.sampling;
    let mut body = json!({
        "model": request.model,
        "messages": request.messages.iter().map(message).collect::<Vec<_>>(),
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
        "frequency_penalty": sampling.frequency_penalty,
        "presence_penalty": sampling.presence_penalty,
    });
    let fields = body.as_object_mut().expect("a JSON object");
    if !sampling.stop.is_empty() {
        fields.insert("stop".into(), json!(sampling.stop));
    }
    if let Some(seed) = sampling.seed {
        fields.insert("seed".into(), json!(seed));
    }
    if !request.tools.is_empty() {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|tool| {
                let mut function = json!({
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.parameters,
                });
                if tool.strict {
                    function["strict"] = json!(true);
                }
                json!({"type": "function", "function": function})
            })
            .collect();
        fields.insert("tools".into(), json!(tools));
        let choice = match &request.tool_choice {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Function(name) => json!({"type": "function", "function": {"name": name}}),
        };
        fields.insert("tool_choice".into(), choice);
    }
    match &request.response_format {
        ResponseFormat::Text => {}
        ResponseFormat::JsonObject => {
            fields.insert("response_format".into(), json!({"type": "json_object"}));
        }
        ResponseFormat::JsonSchema {
            name,
            schema,
            strict,
        } => {
            fields.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": strict}}),
            );
        }
    }
    if stream {
        fields.insert("stream".into(), json!(true));
        fields.insert("stream_options".into(), json!({"include_usage": true}));
    }
    body
}

/// One message as a provider expects it: only the OpenAI fields. Stored extras (model,
/// usage, metadata) stay out, and so does `reasoning_content`, which DeepSeek rejects
/// in requests.
fn message(message: &NewMessage) -> Value {
    let mut wire = json!({"role": message.role.as_str()});
    let fields = wire.as_object_mut().expect("a JSON object");
    let content = if message.content.is_empty() && !message.tool_calls.is_empty() {
        Value::Null
    } else {
        json!(message.content)
    };
    fields.insert("content".into(), content);
    if let Some(name) = &message.name {
        fields.insert("name".into(), json!(name));
    }
    if !message.tool_calls.is_empty() {
        let calls: Vec<Value> = message
            .tool_calls
            .iter()
            .map(|call| {
                json!({
                    "id": call.id,
                    "type": call.kind,
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                })
            })
            .collect();
        fields.insert("tool_calls".into(), json!(calls));
    }
    if let Some(id) = &message.tool_call_id {
        fields.insert("tool_call_id".into(), json!(id));
    }
    wire
}

#[derive(Deserialize)]
struct WireAnswer {
    model: Option<String>,
    #[serde(default)]
    choices: Vec<WireChoice>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: Option<WireMessage>,
    delta: Option<WireMessage>,
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct WireMessage {
    content: Option<String>,
    reasoning_content: Option<String>,
    tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Deserialize)]
struct WireToolCall {
    index: Option<u32>,
    id: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    function: Option<WireFunction>,
}

#[derive(Deserialize)]
struct WireFunction {
    name: Option<String>,
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
    #[serde(default)]
    total_tokens: u32,
    prompt_tokens_details: Option<PromptDetails>,
    completion_tokens_details: Option<CompletionDetails>,
    /// DeepSeek's name for cached prompt tokens.
    prompt_cache_hit_tokens: Option<u32>,
    /// DeepSeek's prompt tokens that missed its cache.
    #[serde(default)]
    prompt_cache_miss_tokens: u32,
}

#[derive(Deserialize)]
struct PromptDetails {
    cached_tokens: Option<u32>,
}

#[derive(Deserialize)]
struct CompletionDetails {
    reasoning_tokens: Option<u32>,
}

impl From<WireUsage> for Usage {
    fn from(wire: WireUsage) -> Self {
        Usage {
            prompt_tokens: wire.prompt_tokens,
            completion_tokens: wire.completion_tokens,
            total_tokens: wire.total_tokens,
            cached_tokens: wire
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .or(wire.prompt_cache_hit_tokens)
                .unwrap_or(0),
            reasoning_tokens: wire
                .completion_tokens_details
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
            cache_miss_tokens: wire.prompt_cache_miss_tokens,
        }
    }
}

/// Parses a whole (non-streamed) answer.
pub fn parse_answer(body: &[u8]) -> Result<Completion, String> {
    let answer: WireAnswer =
        serde_json::from_slice(body).map_err(|e| format!("not a chat completion: {e}"))?;
    let mut accumulator = Accumulator {
        model: answer.model,
        usage: answer.usage.map(Usage::from),
        ..Accumulator::default()
    };
    let choice = answer
        .choices
        .into_iter()
        .next()
        .ok_or("the answer has no choices")?;
    let message = choice.message.ok_or("the first choice has no message")?;
    accumulator.finish_reason = choice.finish_reason;
    accumulator.add(message, &mut |_| {});
    accumulator.finish()
}

/// Builds a completion from streamed chunks.
#[derive(Default)]
pub struct Accumulator {
    model: Option<String>,
    content: String,
    reasoning: String,
    calls: Vec<PartialCall>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
}

#[derive(Default)]
struct PartialCall {
    index: u32,
    id: String,
    kind: String,
    name: String,
    arguments: String,
}

impl Accumulator {
    /// Adds one streamed chunk (the JSON of a `data:` line), passing new text to `on_delta`.
    pub fn chunk(&mut self, data: &str, on_delta: &mut dyn FnMut(Delta)) -> Result<(), String> {
        let chunk: WireAnswer =
            serde_json::from_str(data).map_err(|e| format!("not a chat completion chunk: {e}"))?;
        if chunk.model.is_some() {
            self.model = chunk.model;
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage.into());
        }
        for choice in chunk.choices {
            if let Some(delta) = choice.delta {
                self.add(delta, on_delta);
            }
            if choice.finish_reason.is_some() {
                self.finish_reason = choice.finish_reason;
            }
        }
        Ok(())
    }

    fn add(&mut self, message: WireMessage, on_delta: &mut dyn FnMut(Delta)) {
        if let Some(text) = message.content.filter(|t| !t.is_empty()) {
            self.content.push_str(&text);
            on_delta(Delta::Content(text));
        }
        if let Some(text) = message.reasoning_content.filter(|t| !t.is_empty()) {
            self.reasoning.push_str(&text);
            on_delta(Delta::Reasoning(text));
        }
        for (position, call) in message
            .tool_calls
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            // Streamed calls arrive in pieces keyed by index; whole answers may omit it.
            let index = call.index.unwrap_or(position as u32);
            let slot = match self.calls.iter().position(|c| c.index == index) {
                Some(i) => &mut self.calls[i],
                None => {
                    self.calls.push(PartialCall {
                        index,
                        ..PartialCall::default()
                    });
                    self.calls.last_mut().expect("just pushed")
                }
            };
            if let Some(id) = call.id.filter(|id| !id.is_empty()) {
                slot.id = id;
            }
            if let Some(kind) = call.kind {
                slot.kind = kind;
            }
            if let Some(function) = call.function {
                if let Some(name) = function.name {
                    slot.name.push_str(&name);
                }
                if let Some(arguments) = function.arguments {
                    slot.arguments.push_str(&arguments);
                }
            }
        }
    }

    /// The completed answer; fails if a tool call lacks its id or function name.
    pub fn finish(self) -> Result<Completion, String> {
        let tool_calls = self
            .calls
            .into_iter()
            .map(|call| {
                if call.id.is_empty() || call.name.is_empty() {
                    return Err(format!(
                        "tool call {} has no id or no function name",
                        call.index
                    ));
                }
                Ok(ToolCall {
                    id: call.id,
                    kind: if call.kind.is_empty() {
                        "function".into()
                    } else {
                        call.kind
                    },
                    function: FunctionCall {
                        name: call.name,
                        arguments: if call.arguments.trim().is_empty() {
                            "{}".into()
                        } else {
                            call.arguments
                        },
                    },
                    index: call.index,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let finish_reason = self.finish_reason.unwrap_or_else(|| {
            if tool_calls.is_empty() {
                "stop".into()
            } else {
                "tool_calls".into()
            }
        });
        let mut message = NewMessage::text(Role::Assistant, self.content);
        message.tool_calls = tool_calls;
        message.reasoning_content = Some(self.reasoning).filter(|r| !r.is_empty());
        message.model = self.model;
        message.usage = self.usage;
        Ok(Completion {
            message,
            finish_reason,
        })
    }
}

/// The provider's own explanation in an error body (`{"error": {"message": ...}}`), or
/// the start of the body.
pub fn error_message(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let message = parsed.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("message"))
            .or_else(|| v.get("error"))
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    message.unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        text.chars()
            .take(300)
            .collect::<String>()
            .trim()
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::completion::{Sampling, ToolSpec};

    #[test]
    fn a_whole_answer_with_tool_calls_and_usage_parses() {
        let body = br#"{"model":"deepseek-chat","choices":[{"index":0,"message":{"role":"assistant","content":null,
            "tool_calls":[{"id":"call_1","type":"function","function":{"name":"order_status","arguments":"{\"id\":7}"}}]},
            "finish_reason":"tool_calls"}],"usage":{"prompt_tokens":20,"completion_tokens":5,"total_tokens":25,
            "prompt_cache_hit_tokens":16,"prompt_cache_miss_tokens":4,"completion_tokens_details":{"reasoning_tokens":3}}}"#;
        let completion = parse_answer(body).unwrap();
        assert_eq!(completion.finish_reason, "tool_calls");
        assert_eq!(completion.message.content, "");
        assert_eq!(
            completion.message.tool_calls[0].function.name,
            "order_status"
        );
        assert_eq!(
            completion.message.tool_calls[0].function.arguments,
            "{\"id\":7}"
        );
        let usage = completion.message.usage.unwrap();
        assert_eq!(
            (
                usage.total_tokens,
                usage.cached_tokens,
                usage.reasoning_tokens,
                usage.cache_miss_tokens
            ),
            (25, 16, 3, 4)
        );
    }

    #[test]
    fn streamed_tool_call_pieces_are_joined_by_index() {
        let mut accumulator = Accumulator::default();
        let mut deltas = Vec::new();
        for data in [
            r#"{"choices":[{"delta":{"role":"assistant","content":"Checking"}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"a","type":"function","function":{"name":"look","arguments":"{\"q\":"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":1,"id":"b","function":{"name":"other","arguments":""}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"1}"}}]}}]}"#,
            r#"{"choices":[{"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
        ] {
            accumulator.chunk(data, &mut |d| deltas.push(d)).unwrap();
        }
        let completion = accumulator.finish().unwrap();
        assert_eq!(deltas, vec![Delta::Content("Checking".into())]);
        let calls = &completion.message.tool_calls;
        assert_eq!(calls.len(), 2);
        assert_eq!(
            (calls[0].id.as_str(), calls[0].function.arguments.as_str()),
            ("a", "{\"q\":1}")
        );
        assert_eq!(
            (
                calls[1].function.name.as_str(),
                calls[1].function.arguments.as_str()
            ),
            ("other", "{}")
        );
        assert_eq!(completion.message.usage.unwrap().total_tokens, 3);
    }

    #[test]
    fn garbage_and_incomplete_calls_are_errors() {
        assert!(parse_answer(b"<html>").is_err());
        assert!(parse_answer(br#"{"choices":[]}"#).is_err());
        let mut accumulator = Accumulator::default();
        accumulator
            .chunk(
                r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"x"}}]}}]}"#,
                &mut |_| {},
            )
            .unwrap();
        assert!(accumulator.finish().is_err(), "a call without an id");
    }

    #[test]
    fn request_bodies_carry_only_openai_fields() {
        let mut assistant = NewMessage::text(Role::Assistant, "");
        assistant.reasoning_content = Some("thinking".into());
        assistant.model = Some("m".into());
        assistant.tool_calls = vec![ToolCall {
            id: "c".into(),
            kind: "function".into(),
            function: FunctionCall {
                name: "f".into(),
                arguments: "{}".into(),
            },
            index: 0,
        }];
        let request = CompletionRequest {
            model: "deepseek-chat".into(),
            messages: vec![assistant],
            tools: vec![ToolSpec {
                name: "f".into(),
                description: "does f".into(),
                parameters: serde_json::Map::new(),
                strict: false,
            }],
            tool_choice: ToolChoice::Required,
            sampling: Sampling::default(),
            response_format: ResponseFormat::JsonObject,
        };
        let body = request_body(&request, true);
        assert_eq!(
            body["messages"][0],
            json!({"role": "assistant", "content": null,
                   "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]})
        );
        assert_eq!(body["tool_choice"], json!("required"));
        assert_eq!(body["presence_penalty"], json!(-1.5));
        assert_eq!(body["response_format"], json!({"type": "json_object"}));
        assert_eq!(body["stream_options"], json!({"include_usage": true}));
    }
}
