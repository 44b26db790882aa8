//! The lenient serde types for what an OpenAI-compatible server streams back.
//!
//! Compatible servers (vLLM, Ollama, DeepSeek, Qwen, proxies) differ in small
//! ways that strict types reject: `finish_reason: ""`, `usage: {}` or `null`,
//! chunks without `choices`, `content: null`, numbers where strings are
//! expected, extra fields. Every field here is optional, and the parts whose
//! shape varies most (`usage`, `error`) are read from a [`serde_json::Value`]
//! so that an odd type in them never fails the whole chunk.

use serde::Deserialize;
use serde_json::Value;

use super::Usage;

/// One `data:` payload of the stream.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamChunk {
    #[serde(default)]
    pub choices: Option<Vec<ChoiceChunk>>,
    #[serde(default)]
    pub usage: Option<Value>,
    #[serde(default)]
    pub error: Option<Value>,
    /// vLLM reports errors inside the stream as `{"object":"error","message":…}`.
    #[serde(default)]
    pub object: Option<Value>,
    #[serde(default)]
    pub message: Option<Value>,
}

impl StreamChunk {
    /// The upstream error this chunk carries, in OpenAI's shape (`error`) or
    /// vLLM's (`object: "error"` with a top-level `message`).
    pub fn upstream_error(&self) -> Option<String> {
        match &self.error {
            Some(Value::Null) | None => {}
            Some(e) => return Some(error_message(e)),
        }
        if self.object.as_ref().and_then(Value::as_str) == Some("error") {
            return Some(self.message.as_ref().map(error_message).unwrap_or_else(|| "unknown error".into()));
        }
        None
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ChoiceChunk {
    #[serde(default)]
    pub index: Option<u64>,
    #[serde(default)]
    pub delta: Option<Delta>,
    #[serde(default)]
    pub finish_reason: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Delta {
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ToolCallDelta {
    #[serde(default)]
    pub index: Option<u64>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub function: Option<FunctionDelta>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct FunctionDelta {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub arguments: Option<String>,
}

impl ChoiceChunk {
    /// The finish reason, or `None` for the forms servers use to say "not
    /// yet": absent, `null`, `""`, or anything that is not a string.
    pub fn finish_reason(&self) -> Option<String> {
        match &self.finish_reason {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
            _ => None,
        }
    }
}

/// Reads a `usage` object; `None` when it is absent, `null`, not an object,
/// or has none of the three counts (`{}` is sent by some servers on every
/// chunk and means "nothing to report").
pub(crate) fn parse_usage(value: &Value) -> Option<Usage> {
    let obj = value.as_object()?;
    let count = |key: &str| -> Option<u64> {
        match obj.get(key)? {
            Value::Number(n) => n.as_u64().or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    };
    let usage = Usage {
        prompt_tokens: count("prompt_tokens"),
        completion_tokens: count("completion_tokens"),
        total_tokens: count("total_tokens"),
    };
    if usage == Usage::default() { None } else { Some(usage) }
}

/// The human message of an upstream error, from the usual shapes:
/// `{"message": …}` (OpenAI's `error` object), a bare string, or anything
/// else rendered as JSON text. The caller truncates it.
pub(crate) fn error_message(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Object(obj) => match obj.get("message") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => match obj.get("error") {
                Some(inner) => error_message(inner),
                None => value.to_string(),
            },
            Some(other) => other.to_string(),
        },
        Value::Null => "unknown error".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lenient_chunks_parse() {
        let c: StreamChunk = serde_json::from_str(
            r#"{"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":null,"role":"assistant"},"finish_reason":""}],"usage":{},"extra":[1,2]}"#,
        )
        .unwrap();
        let choices = c.choices.unwrap();
        assert_eq!(choices[0].finish_reason(), None);
        assert_eq!(choices[0].delta.as_ref().unwrap().content, None);
        assert_eq!(parse_usage(c.usage.as_ref().unwrap()), None);

        let c: StreamChunk = serde_json::from_str(r#"{"choices":null,"usage":null}"#).unwrap();
        assert!(c.choices.is_none());
        assert!(c.usage.is_none());

        let c: StreamChunk = serde_json::from_str(r#"{}"#).unwrap();
        assert!(c.choices.is_none() && c.usage.is_none() && c.error.is_none());
    }

    #[test]
    fn usage_and_errors() {
        assert_eq!(
            parse_usage(&json!({"prompt_tokens": 3, "completion_tokens": "4", "total_tokens": 7.0})),
            Some(Usage { prompt_tokens: Some(3), completion_tokens: Some(4), total_tokens: Some(7) })
        );
        assert_eq!(error_message(&json!({"message": "quota", "type": "x"})), "quota");
        assert_eq!(error_message(&json!("plain")), "plain");
        assert_eq!(error_message(&json!({"error": {"message": "nested"}})), "nested");
    }
}
