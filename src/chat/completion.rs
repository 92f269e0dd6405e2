//! One call of a model as the chat engine sees it: the request, the answer and streamed
//! text; providers and the wire format both speak these.

use crate::domain::{JsonObject, NewMessage};

/// Sampling parameters of a completion. The default is CS-AI's.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    pub temperature: f64,
    pub top_p: f64,
    pub max_tokens: u32,
    pub frequency_penalty: f64,
    pub presence_penalty: f64,
    pub stop: Vec<String>,
    pub seed: Option<i64>,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 0.2,
            top_p: 0.7,
            max_tokens: 1200,
            frequency_penalty: 0.0,
            presence_penalty: -1.5,
            stop: Vec::new(),
            seed: None,
        }
    }
}

/// A function tool offered to the model.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments.
    pub parameters: JsonObject,
    pub strict: bool,
}

/// How the model may use tools.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum ToolChoice {
    #[default]
    Auto,
    None,
    Required,
    Function(String),
}

/// The format the answer must have.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum ResponseFormat {
    #[default]
    Text,
    JsonObject,
    JsonSchema {
        name: String,
        schema: JsonObject,
        strict: bool,
    },
}

/// One call of the model.
#[derive(Clone, Debug, PartialEq)]
pub struct CompletionRequest {
    pub model: String,
    pub messages: Vec<NewMessage>,
    pub tools: Vec<ToolSpec>,
    pub tool_choice: ToolChoice,
    pub sampling: Sampling,
    pub response_format: ResponseFormat,
}

/// The model's answer: an assistant message (text, tool calls, reasoning, model, usage).
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    pub message: NewMessage,
    pub finish_reason: String,
}

/// Receives streamed text.
pub type DeltaSink<'a> = dyn FnMut(Delta) + Send + 'a;

/// Text as the model streams it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delta {
    Content(String),
    Reasoning(String),
}
