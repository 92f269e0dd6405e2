//! CS-AI's response-type check: does an answer have the format the request asked for?

use crate::chat::completion::ResponseFormat;
use serde_json::Value;

/// Why `content` does not match `format`, or None when it does. A JSON Schema is checked
/// for what matters most to a bot parsing the answer: a JSON object with every
/// `required` top-level property.
pub fn mismatch(format: &ResponseFormat, content: &str) -> Option<String> {
    let schema = match format {
        ResponseFormat::Text => return None,
        ResponseFormat::JsonObject => None,
        ResponseFormat::JsonSchema { schema, .. } => Some(schema),
    };
    let value: Value = match serde_json::from_str(strip_code_fence(content)) {
        Ok(value) => value,
        Err(e) => return Some(format!("the answer is not valid JSON ({e})")),
    };
    let Some(object) = value.as_object() else {
        return Some("the answer is JSON but not an object".into());
    };
    let required = schema
        .and_then(|s| s.get("required"))
        .and_then(Value::as_array);
    let missing: Vec<&str> = required
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|key| !object.contains_key(*key))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "the answer lacks the required properties {}",
            missing.join(", ")
        )
    })
}

/// Models often wrap JSON in a Markdown code fence; the JSON inside is what counts.
fn strip_code_fence(content: &str) -> &str {
    let trimmed = content.trim();
    trimmed
        .strip_prefix("```json")
        .or_else(|| trimmed.strip_prefix("```"))
        .and_then(|rest| rest.strip_suffix("```"))
        .map_or(trimmed, str::trim)
}

/// The message that asks the model to try again.
pub fn correction(problem: &str) -> String {
    format!(
        "Your previous answer did not have the required format: {problem}. \
         Answer again with only the JSON object, nothing else."
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_formats_are_checked() {
        let object = ResponseFormat::JsonObject;
        assert_eq!(mismatch(&object, "{\"a\": 1}"), None);
        assert_eq!(mismatch(&object, "```json\n{\"a\": 1}\n```"), None);
        assert!(mismatch(&object, "Sure! {\"a\": 1}").is_some());
        assert!(mismatch(&object, "[1, 2]").is_some());
        assert_eq!(mismatch(&ResponseFormat::Text, "anything"), None);

        let schema = ResponseFormat::JsonSchema {
            name: "answer".into(),
            schema: json!({"type": "object", "required": ["intent", "reply"]})
                .as_object()
                .unwrap()
                .clone(),
            strict: true,
        };
        assert_eq!(
            mismatch(&schema, r#"{"intent": "refund", "reply": "ok"}"#),
            None
        );
        let problem = mismatch(&schema, r#"{"intent": "refund"}"#).unwrap();
        assert!(problem.contains("reply"), "{problem}");
    }
}
