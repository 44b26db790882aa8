//! The streaming client for an OpenAI-compatible chat-completions endpoint
//! (OpenAI, DeepSeek, Qwen, vLLM, Ollama …), used by the AI assistants.
//!
//! [`LlmClient::start`] sends one `POST {base_url}/chat/completions` with
//! `stream: true`, retrying connect errors, 429 and 5xx answers (only before
//! any body byte was read, so a retry never duplicates an answer the caller
//! has seen), and returns an [`LlmStream`] once the headers said 200.
//! [`LlmStream::next`] then yields [`Chunk::Delta`]s and exactly one final
//! [`Chunk::Finished`] with the accumulated tool calls and the usage.
//!
//! Decisions worth knowing:
//! - Parsing is lenient and done with this module's own serde types
//!   ([`wire`]): compatible servers send `finish_reason: ""`, `usage: {}`,
//!   chunks without `choices` and so on.
//! - Timeouts: `first_token_timeout` bounds the wait from sending the request
//!   to the first SSE data event (headers included), as an absolute deadline
//!   that keep-alive comments do not extend. After the first data event,
//!   `idle_timeout` bounds the silence of the connection: **any bytes**,
//!   SSE comments such as `: keep-alive` included, reset the idle timer,
//!   because a server that sends them is alive (reasoning models and busy
//!   proxies send them while they think). The caller bounds the total time
//!   (and cancels by dropping the stream).
//! - An answer is complete when `[DONE]` arrives, or when the body ends, the
//!   connection breaks or goes idle *after* a `finish_reason` was seen (some
//!   servers omit `[DONE]`; usage may come in a chunk after the finish
//!   reason). Without either, the answer is [`LlmErrorCode::Incomplete`].
//! - The API key is sent only as the `Authorization` header. It never appears
//!   in an error (upstream excerpts are scrubbed of it), a log line, or Debug
//!   output.
//! - TLS is rustls with the *ring* provider, installed as the process default
//!   by [`LlmClient::new`] if no provider was installed before.
//! - Metrics are recorded here: `reportd_llm_first_token_seconds`,
//!   `reportd_llm_duration_seconds`, `reportd_llm_errors_total{code}`,
//!   `reportd_llm_tokens_total{kind}` and `reportd_llm_requests_total{outcome}`
//!   (`ok`, an error code, or `cancelled` when a stream is dropped unfinished).

mod wire;

use std::collections::BTreeMap;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::{Stream, StreamExt};
use rand::Rng;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Value, json};
use tokio::time::Instant;

/// The longest wait a `Retry-After` header may impose.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);
/// The longest exponential backoff between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How much of an upstream body an error detail may quote.
const EXCERPT_CHARS: usize = 200;
/// How much of a non-200 body is read to quote from it.
const ERROR_BODY_BYTES: usize = 8 * 1024;

/// Makes TLS usable by every HTTP client of the process. reqwest is built
/// without a bundled crypto provider (see Cargo.toml), and building a
/// client without one panics: ring is installed as the process default,
/// unless something else installed one first, in which case that one is
/// used. Call it before building any `reqwest::Client`; it is idempotent.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Settings (built by the caller from config; no clap here).
#[derive(Clone)]
pub struct LlmSettings {
    /// Includes `/v1`, e.g. `https://api.openai.com/v1`; requests go to
    /// `{base_url}/chat/completions` (a trailing `/` is trimmed).
    pub base_url: String,
    /// Sent as `Authorization: Bearer`; never in logs, errors or Debug output.
    pub api_key: Option<String>,
    pub model: String,
    pub connect_timeout: Duration,
    /// From sending the request to the first SSE data event (also bounds
    /// waiting for headers).
    pub first_token_timeout: Duration,
    /// Longest silence of the connection after the first SSE data event.
    pub idle_timeout: Duration,
    /// Retries on connect errors, 429 and 5xx, only before any body byte was read.
    pub max_retries: u32,
    /// Backoff base: `base * 2^attempt` with jitter; `Retry-After` (seconds)
    /// is honoured, capped at 10 s.
    pub retry_base_delay: Duration,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    /// Bound on the bytes read from one upstream response.
    pub max_response_bytes: usize,
}

impl fmt::Debug for LlmSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmSettings")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("model", &self.model)
            .field("connect_timeout", &self.connect_timeout)
            .field("first_token_timeout", &self.first_token_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_retries", &self.max_retries)
            .field("retry_base_delay", &self.retry_base_delay)
            .field("max_tokens", &self.max_tokens)
            .field("temperature", &self.temperature)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish()
    }
}

/// An OpenAI chat message as sent upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub content: Option<String>,
    /// Serialised in OpenAI's shape: `{"id","type":"function","function":{"name","arguments"}}`.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub tool_calls: Vec<ToolCall>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tool_call_id: Option<String>,
}

impl Message {
    fn new(role: &str, content: impl Into<String>) -> Self {
        Message { role: role.to_string(), content: Some(content.into()), tool_calls: Vec::new(), tool_call_id: None }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }

    /// The answer to the tool call `call_id`.
    pub fn tool(call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Message { tool_call_id: Some(call_id.into()), ..Self::new("tool", content) }
    }
}

/// A tool call requested by the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The raw JSON text as accumulated from the deltas (not validated).
    pub arguments: String,
}

#[derive(Serialize, Deserialize)]
struct ToolCallWire {
    #[serde(default)]
    id: String,
    #[serde(rename = "type", default = "function_type")]
    kind: String,
    function: FunctionWire,
}

#[derive(Serialize, Deserialize)]
struct FunctionWire {
    #[serde(default)]
    name: String,
    #[serde(default)]
    arguments: String,
}

fn function_type() -> String {
    "function".to_string()
}

impl Serialize for ToolCall {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        ToolCallWire {
            id: self.id.clone(),
            kind: function_type(),
            function: FunctionWire { name: self.name.clone(), arguments: self.arguments.clone() },
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ToolCall {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = ToolCallWire::deserialize(deserializer)?;
        Ok(ToolCall { id: wire.id, name: wire.function.name, arguments: wire.function.arguments })
    }
}

/// A function the model may call.
#[derive(Debug, Clone)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// A JSON schema of the arguments.
    pub parameters: Value,
}

/// One chat-completions request.
#[derive(Debug, Clone, Default)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    /// Empty: no `tools` field is sent.
    pub tools: Vec<ToolSpec>,
}

/// Token counts as reported by the server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Usage {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub total_tokens: Option<u64>,
}

/// What an [`LlmStream`] yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Chunk {
    /// A piece of assistant content (never empty).
    Delta(String),
    /// Exactly once, last.
    Finished { finish_reason: String, tool_calls: Vec<ToolCall>, usage: Option<Usage> },
}

/// What went wrong, as a stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmErrorCode {
    Unreachable,
    Timeout,
    IdleTimeout,
    RateLimited,
    Upstream,
    BadResponse,
    Incomplete,
    TooLarge,
}

impl LlmErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            LlmErrorCode::Unreachable => "llm_unreachable",
            LlmErrorCode::Timeout => "llm_timeout",
            LlmErrorCode::IdleTimeout => "llm_idle_timeout",
            LlmErrorCode::RateLimited => "llm_rate_limited",
            LlmErrorCode::Upstream => "llm_upstream_error",
            LlmErrorCode::BadResponse => "llm_bad_response",
            LlmErrorCode::Incomplete => "llm_incomplete",
            LlmErrorCode::TooLarge => "llm_response_too_large",
        }
    }
}

/// An error of the LLM call. `detail` is safe to show a user: it never holds
/// the API key nor more than ~200 characters of an upstream body.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{detail}")]
pub struct LlmError {
    pub code: LlmErrorCode,
    pub detail: String,
}

impl LlmError {
    fn new(code: LlmErrorCode, detail: impl Into<String>) -> Self {
        LlmError { code, detail: detail.into() }
    }
}

/// The client: cheap to clone, one pooled `reqwest::Client` inside.
#[derive(Clone)]
pub struct LlmClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    url: String,
    settings: LlmSettings,
}

impl fmt::Debug for LlmClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmClient").field("settings", &self.inner.settings).finish()
    }
}

impl LlmClient {
    pub fn new(settings: LlmSettings) -> anyhow::Result<Self> {
        let base = settings.base_url.trim().trim_end_matches('/');
        let parsed = reqwest::Url::parse(base).map_err(|e| anyhow::anyhow!("LLM base URL {base:?} is invalid: {e}"))?;
        anyhow::ensure!(
            matches!(parsed.scheme(), "http" | "https"),
            "LLM base URL must be http or https, not {}",
            parsed.scheme()
        );
        anyhow::ensure!(!settings.model.trim().is_empty(), "LLM model must not be empty");
        anyhow::ensure!(settings.max_response_bytes > 0, "LLM max_response_bytes must be positive");
        install_tls_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            // Chat-completions endpoints do not redirect; following one could
            // turn the POST into a GET or send the prompt somewhere unexpected.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("reportd/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let url = format!("{base}/chat/completions");
        Ok(LlmClient { inner: Arc::new(Inner { http, url, settings }) })
    }

    pub fn model(&self) -> &str {
        &self.inner.settings.model
    }

    fn body(&self, request: &ChatRequest) -> Value {
        let s = &self.inner.settings;
        let mut body = json!({
            "model": s.model,
            "messages": request.messages,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if let Some(max_tokens) = s.max_tokens {
            body["max_tokens"] = json!(max_tokens);
        }
        if let Some(temperature) = s.temperature {
            body["temperature"] = json!(temperature);
        }
        if !request.tools.is_empty() {
            let tools: Vec<Value> = request
                .tools
                .iter()
                .map(|t| {
                    json!({"type": "function", "function": {
                        "name": t.name, "description": t.description, "parameters": t.parameters,
                    }})
                })
                .collect();
            body["tools"] = Value::Array(tools);
            body["tool_choice"] = json!("auto");
        }
        body
    }

    /// Sends the request (`stream: true`, `stream_options.include_usage`,
    /// tools with `tool_choice: "auto"` when given), retrying per the
    /// settings, and returns once the response headers said 200.
    pub async fn start(&self, request: &ChatRequest) -> Result<LlmStream, LlmError> {
        let started = Instant::now();
        let result = self.start_inner(request, started).await;
        if let Err(e) = &result {
            record_end(started, Err(e.code));
        }
        result
    }

    async fn start_inner(&self, request: &ChatRequest, started: Instant) -> Result<LlmStream, LlmError> {
        let s = &self.inner.settings;
        let body = self.body(request);
        let mut attempt: u32 = 0;
        loop {
            let sent_at = Instant::now();
            let first_deadline = sent_at + s.first_token_timeout;
            let mut builder = self.inner.http.post(&self.inner.url).json(&body);
            if let Some(key) = s.api_key.as_deref().filter(|k| !k.is_empty()) {
                builder = builder.bearer_auth(key);
            }
            let (error, retryable, retry_after) = match tokio::time::timeout_at(first_deadline, builder.send()).await {
                Err(_) => {
                    return Err(LlmError::new(
                        LlmErrorCode::Timeout,
                        format!("the LLM server did not answer within {}", secs(s.first_token_timeout)),
                    ));
                }
                Ok(Err(e)) if e.is_timeout() && !e.is_connect() => {
                    return Err(LlmError::new(LlmErrorCode::Timeout, "the LLM server did not answer in time"));
                }
                Ok(Err(e)) => {
                    let detail = self.redact(&format!("cannot reach the LLM server: {}", describe(&e)));
                    (LlmError::new(LlmErrorCode::Unreachable, detail), e.is_connect(), None)
                }
                Ok(Ok(response)) if response.status().is_success() => {
                    return self.open_stream(response, started, first_deadline).await;
                }
                Ok(Ok(response)) => {
                    let status = response.status();
                    let retry_after = retry_after(&response);
                    let excerpt = self.excerpt(read_bounded(response, ERROR_BODY_BYTES, first_deadline).await);
                    let detail = if excerpt.is_empty() {
                        format!("the LLM server answered {status}")
                    } else {
                        format!("the LLM server answered {status}: {excerpt}")
                    };
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        (LlmError::new(LlmErrorCode::RateLimited, detail), true, retry_after)
                    } else {
                        (LlmError::new(LlmErrorCode::Upstream, detail), status.is_server_error(), retry_after)
                    }
                }
            };
            if !retryable || attempt >= s.max_retries {
                return Err(error);
            }
            let delay =
                retry_after.map(|d| d.min(MAX_RETRY_AFTER)).unwrap_or_else(|| backoff(s.retry_base_delay, attempt));
            tracing::warn!(
                attempt = attempt + 1,
                max_retries = s.max_retries,
                code = error.code.as_str(),
                delay_ms = delay.as_millis() as u64,
                "LLM request failed, retrying"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// Turns a 2xx response into a stream. A server that ignored
    /// `stream: true` (or reports an error with 200) answers JSON: that is
    /// read and reported, not parsed as SSE.
    async fn open_stream(
        &self,
        response: reqwest::Response,
        started: Instant,
        first_deadline: Instant,
    ) -> Result<LlmStream, LlmError> {
        let s = &self.inner.settings;
        let is_json = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/json"));
        if is_json {
            let text = read_bounded(response, ERROR_BODY_BYTES, first_deadline).await;
            let message = serde_json::from_str::<wire::StreamChunk>(&text).ok().and_then(|c| c.upstream_error());
            return Err(match message {
                Some(message) => LlmError::new(
                    LlmErrorCode::Upstream,
                    format!("the LLM server reported an error: {}", self.excerpt(message)),
                ),
                None => {
                    LlmError::new(LlmErrorCode::BadResponse, "the LLM server answered JSON instead of an event stream")
                }
            });
        }
        let activity = Arc::new(Mutex::new(Instant::now()));
        let body = BoundedBody {
            inner: Box::pin(response.bytes_stream()),
            read: 0,
            limit: s.max_response_bytes,
            activity: activity.clone(),
            done: false,
        };
        Ok(LlmStream {
            events: Box::pin(body.eventsource()),
            activity,
            started,
            first_deadline,
            idle_timeout: s.idle_timeout,
            first_token_timeout: s.first_token_timeout,
            secret: s.api_key.clone().filter(|k| !k.is_empty()),
            got_data: false,
            emitted: false,
            done: false,
            finish_reason: None,
            usage: None,
            calls: BTreeMap::new(),
        })
    }

    fn redact(&self, text: &str) -> String {
        redact(text, self.inner.settings.api_key.as_deref())
    }

    fn excerpt(&self, text: String) -> String {
        excerpt(&text, self.inner.settings.api_key.as_deref())
    }
}

/// An answer being streamed. Dropping it closes the upstream connection,
/// which is how a cancel stops the upstream call.
pub struct LlmStream {
    events: Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<BodyError>>> + Send>>,
    activity: Arc<Mutex<Instant>>,
    started: Instant,
    first_deadline: Instant,
    idle_timeout: Duration,
    first_token_timeout: Duration,
    secret: Option<String>,
    /// Whether an SSE data event has arrived (the first-token deadline is over).
    got_data: bool,
    /// Whether a chunk was handed out (for the first-token metric).
    emitted: bool,
    /// After `Finished` or an error: `next` answers `Ok(None)`.
    done: bool,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    calls: BTreeMap<u64, ToolCall>,
}

impl fmt::Debug for LlmStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmStream")
            .field("got_data", &self.got_data)
            .field("done", &self.done)
            .field("finish_reason", &self.finish_reason)
            .finish_non_exhaustive()
    }
}

impl LlmStream {
    /// The next chunk; `Ok(None)` after `Finished` (or after an error).
    /// First-token and idle timeouts apply here.
    pub async fn next(&mut self) -> Result<Option<Chunk>, LlmError> {
        if self.done {
            return Ok(None);
        }
        let result = self.next_inner().await;
        if !self.emitted && result.is_ok() {
            self.emitted = true;
            metrics::histogram!("reportd_llm_first_token_seconds").record(self.started.elapsed().as_secs_f64());
        }
        match &result {
            Ok(Chunk::Finished { usage, .. }) => {
                self.done = true;
                if let Some(usage) = usage {
                    if let Some(n) = usage.prompt_tokens {
                        metrics::counter!("reportd_llm_tokens_total", "kind" => "prompt").increment(n);
                    }
                    if let Some(n) = usage.completion_tokens {
                        metrics::counter!("reportd_llm_tokens_total", "kind" => "completion").increment(n);
                    }
                }
                record_end(self.started, Ok(()));
            }
            Ok(Chunk::Delta(_)) => {}
            Err(e) => {
                self.done = true;
                record_end(self.started, Err(e.code));
            }
        }
        if self.done {
            // Close the connection now rather than when the caller drops us.
            self.events = Box::pin(futures::stream::empty());
        }
        result.map(Some)
    }

    async fn next_inner(&mut self) -> Result<Chunk, LlmError> {
        loop {
            let deadline = if self.got_data { self.idle_deadline() } else { self.first_deadline };
            let item = match tokio::time::timeout_at(deadline, self.events.next()).await {
                Ok(item) => item,
                Err(_) => {
                    if !self.got_data {
                        return Err(LlmError::new(
                            LlmErrorCode::Timeout,
                            format!("the LLM sent nothing within {}", secs(self.first_token_timeout)),
                        ));
                    }
                    if self.idle_deadline() > Instant::now() {
                        // Bytes (e.g. a keep-alive comment) arrived meanwhile.
                        continue;
                    }
                    if self.finish_reason.is_some() {
                        return Ok(self.finish());
                    }
                    return Err(LlmError::new(
                        LlmErrorCode::IdleTimeout,
                        format!("the LLM stopped sending for {}", secs(self.idle_timeout)),
                    ));
                }
            };
            let event = match item {
                None if self.finish_reason.is_some() => return Ok(self.finish()),
                None => {
                    return Err(LlmError::new(
                        LlmErrorCode::Incomplete,
                        "the LLM's answer ended before it was complete",
                    ));
                }
                Some(Err(EventStreamError::Transport(BodyError::TooLarge(limit)))) => {
                    return Err(LlmError::new(
                        LlmErrorCode::TooLarge,
                        format!("the LLM's answer exceeded {limit} bytes"),
                    ));
                }
                Some(Err(EventStreamError::Transport(BodyError::Transport(_)))) if self.finish_reason.is_some() => {
                    return Ok(self.finish());
                }
                Some(Err(EventStreamError::Transport(BodyError::Transport(e)))) => {
                    return Err(LlmError::new(
                        LlmErrorCode::Incomplete,
                        redact(&format!("the connection to the LLM broke mid-answer: {e}"), self.secret.as_deref()),
                    ));
                }
                Some(Err(e)) => {
                    return Err(LlmError::new(
                        LlmErrorCode::BadResponse,
                        format!("the LLM sent a malformed event stream: {}", kind_of(&e)),
                    ));
                }
                Some(Ok(event)) => event,
            };
            self.got_data = true;
            if let Some(chunk) = self.handle(event)? {
                return Ok(chunk);
            }
        }
    }

    fn idle_deadline(&self) -> Instant {
        *self.activity.lock().unwrap_or_else(|e| e.into_inner()) + self.idle_timeout
    }

    /// Handles one SSE event; `Some` when it yields a chunk to hand out.
    fn handle(&mut self, event: Event) -> Result<Option<Chunk>, LlmError> {
        let data = event.data.trim();
        if event.event == "error" {
            let message = match serde_json::from_str::<Value>(data) {
                Ok(value) => wire::error_message(&value),
                Err(_) => data.to_string(),
            };
            return Err(self.upstream_error(&message));
        }
        if data.is_empty() {
            return Ok(None);
        }
        if data == "[DONE]" {
            return Ok(Some(self.finish()));
        }
        let chunk: wire::StreamChunk = serde_json::from_str(data).map_err(|e| {
            LlmError::new(LlmErrorCode::BadResponse, format!("the LLM sent an event that is not a JSON chunk ({e})"))
        })?;
        if let Some(message) = chunk.upstream_error() {
            return Err(self.upstream_error(&message));
        }
        if let Some(usage) = chunk.usage.as_ref().and_then(wire::parse_usage) {
            self.usage = Some(usage);
        }
        let mut content = String::new();
        for choice in chunk.choices.unwrap_or_default() {
            // Only the first choice is asked for (no `n`); others are ignored.
            if choice.index.unwrap_or(0) != 0 {
                continue;
            }
            if let Some(reason) = choice.finish_reason() {
                self.finish_reason = Some(reason);
            }
            let Some(delta) = choice.delta else { continue };
            if let Some(text) = delta.content {
                content.push_str(&text);
            }
            for (position, call) in delta.tool_calls.unwrap_or_default().into_iter().enumerate() {
                // Some servers omit `index` when they send one call per chunk:
                // the position in the array is the best guess then.
                let index = call.index.unwrap_or(position as u64);
                let entry = self.calls.entry(index).or_insert_with(|| ToolCall {
                    id: String::new(),
                    name: String::new(),
                    arguments: String::new(),
                });
                if let Some(id) = call.id.filter(|id| !id.is_empty())
                    && entry.id.is_empty()
                {
                    entry.id = id;
                }
                if let Some(function) = call.function {
                    // The name comes whole in the first delta of an index;
                    // servers that repeat it later must not double it.
                    if let Some(name) = function.name.filter(|n| !n.is_empty())
                        && entry.name.is_empty()
                    {
                        entry.name = name;
                    }
                    if let Some(arguments) = function.arguments {
                        entry.arguments.push_str(&arguments);
                    }
                }
            }
        }
        Ok(if content.is_empty() { None } else { Some(Chunk::Delta(content)) })
    }

    fn upstream_error(&self, message: &str) -> LlmError {
        LlmError::new(
            LlmErrorCode::Upstream,
            format!("the LLM reported an error: {}", excerpt(message, self.secret.as_deref())),
        )
    }

    fn finish(&mut self) -> Chunk {
        let calls = std::mem::take(&mut self.calls);
        let tool_calls: Vec<ToolCall> = calls
            .into_iter()
            .map(|(index, mut call)| {
                if call.id.is_empty() {
                    call.id = format!("call_{index}");
                }
                call
            })
            .collect();
        let finish_reason = self
            .finish_reason
            .take()
            .unwrap_or_else(|| if tool_calls.is_empty() { "stop" } else { "tool_calls" }.to_string());
        Chunk::Finished { finish_reason, tool_calls, usage: self.usage.take() }
    }
}

impl Drop for LlmStream {
    fn drop(&mut self) {
        if !self.done {
            metrics::counter!("reportd_llm_requests_total", "outcome" => "cancelled").increment(1);
        }
    }
}

/// Records the end of one call: its duration, its outcome, and the error.
fn record_end(started: Instant, outcome: Result<(), LlmErrorCode>) {
    metrics::histogram!("reportd_llm_duration_seconds").record(started.elapsed().as_secs_f64());
    let label = match outcome {
        Ok(()) => "ok",
        Err(code) => {
            metrics::counter!("reportd_llm_errors_total", "code" => code.as_str()).increment(1);
            code.as_str()
        }
    };
    metrics::counter!("reportd_llm_requests_total", "outcome" => label).increment(1);
}

/// Why the body stream stopped early.
#[derive(Debug)]
enum BodyError {
    Transport(String),
    TooLarge(usize),
}

/// The response body, counted against `max_response_bytes` and stamping the
/// time of every byte received (the idle timer's notion of activity).
struct BoundedBody {
    inner: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    read: usize,
    limit: usize,
    activity: Arc<Mutex<Instant>>,
    done: bool,
}

impl Stream for BoundedBody {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match this.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(bytes))) => {
                *this.activity.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                this.read = this.read.saturating_add(bytes.len());
                if this.read > this.limit {
                    this.done = true;
                    return Poll::Ready(Some(Err(BodyError::TooLarge(this.limit))));
                }
                Poll::Ready(Some(Ok(bytes)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                Poll::Ready(Some(Err(BodyError::Transport(describe(&e)))))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Reads at most `limit` bytes of a body (lossy UTF-8) before `deadline`;
/// whatever could not be read is left out.
async fn read_bounded(mut response: reqwest::Response, limit: usize, deadline: Instant) -> String {
    let mut buf = Vec::new();
    while buf.len() < limit {
        match tokio::time::timeout_at(deadline, response.chunk()).await {
            Ok(Ok(Some(bytes))) => buf.extend_from_slice(&bytes[..bytes.len().min(limit - buf.len())]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(RETRY_AFTER)?.to_str().ok()?.trim().parse::<f64>().ok()?;
    (value.is_finite() && value >= 0.0).then(|| Duration::from_secs_f64(value.min(MAX_RETRY_AFTER.as_secs_f64())))
}

/// `base * 2^attempt`, times a jitter factor in [0.5, 1.5), capped.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(2u32.saturating_pow(attempt.min(16)));
    let jitter = rand::rng().random_range(0.5..1.5);
    exp.mul_f64(jitter).min(MAX_BACKOFF)
}

/// The error chain of a reqwest error without its URL (which could carry
/// credentials in its user-info or query).
fn describe(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let kind = if e.is_connect() {
        "connection failed"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_body() || e.is_decode() {
        "error reading the body"
    } else {
        "request failed"
    };
    parts.push(kind.to_string());
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        let text = err.to_string();
        if !parts.iter().any(|p| p == &text) {
            parts.push(text);
        }
        source = err.source();
    }
    parts.join(": ")
}

fn kind_of(e: &EventStreamError<BodyError>) -> &'static str {
    match e {
        EventStreamError::Utf8(_) => "not UTF-8",
        EventStreamError::Parser(_) => "unparsable line",
        EventStreamError::Transport(_) => "transport error",
    }
}

/// Replaces every occurrence of the API key with a marker.
fn redact(text: &str, secret: Option<&str>) -> String {
    match secret.map(str::trim).filter(|s| !s.is_empty()) {
        Some(secret) => text.replace(secret, "[redacted]"),
        None => text.to_string(),
    }
}

/// A short, single-line, key-free quote of an upstream text.
fn excerpt(text: &str, secret: Option<&str>) -> String {
    let flat = redact(text, secret).split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= EXCERPT_CHARS {
        return flat;
    }
    let mut short: String = flat.chars().take(EXCERPT_CHARS).collect();
    short.push('…');
    // Cutting may split the key; the cut text is scrubbed of any prefix of
    // it long enough to matter.
    redact_prefixes(&short, secret)
}

/// Removes a trailing partial copy of the key (at least 4 characters) left by
/// truncation.
fn redact_prefixes(text: &str, secret: Option<&str>) -> String {
    let Some(secret) = secret.map(str::trim).filter(|s| s.len() >= 4) else { return text.to_string() };
    let body = text.trim_end_matches('…');
    for len in (4..secret.len()).rev() {
        if secret.is_char_boundary(len) && body.ends_with(&secret[..len]) {
            return format!("{}[redacted]…", &body[..body.len() - len]);
        }
    }
    text.to_string()
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LlmSettings {
        LlmSettings {
            base_url: "http://127.0.0.1:9/v1/".into(),
            api_key: Some("sk-very-secret-key".into()),
            model: "m".into(),
            connect_timeout: Duration::from_secs(1),
            first_token_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_retries: 0,
            retry_base_delay: Duration::from_millis(10),
            max_tokens: Some(100),
            temperature: Some(0.2),
            max_response_bytes: 1000,
        }
    }

    #[test]
    fn debug_redacts_the_key() {
        let s = settings();
        let text = format!("{s:?}");
        assert!(!text.contains("sk-very-secret-key"), "{text}");
        assert!(text.contains("[redacted]"));
        let client = LlmClient::new(s).unwrap();
        assert!(!format!("{client:?}").contains("sk-very"));
        assert_eq!(client.inner.url, "http://127.0.0.1:9/v1/chat/completions");
    }

    #[test]
    fn excerpts_are_short_and_key_free() {
        let secret = Some("sk-very-secret-key");
        let long = format!("{} Bearer sk-very-secret-key", "x".repeat(500));
        let e = excerpt(&long, secret);
        assert!(e.chars().count() <= EXCERPT_CHARS + 1);
        assert!(!e.contains("sk-very-secret-key"));
        let cut = format!("{}sk-very-secret-key", "y".repeat(EXCERPT_CHARS - 8));
        let e = excerpt(&cut, secret);
        assert!(!e.contains("sk-very-s"), "{e}");
        assert_eq!(excerpt("a\n  b", None), "a b");
    }

    #[test]
    fn request_body_shape() {
        let client = LlmClient::new(settings()).unwrap();
        let request = ChatRequest {
            messages: vec![
                Message::system("s"),
                Message::user("u"),
                Message {
                    tool_calls: vec![ToolCall { id: "c1".into(), name: "f".into(), arguments: "{}".into() }],
                    content: None,
                    ..Message::assistant("")
                },
                Message::tool("c1", "r"),
            ],
            tools: vec![ToolSpec { name: "f".into(), description: "d".into(), parameters: json!({"type": "object"}) }],
        };
        let body = client.body(&request);
        assert_eq!(body["stream"], json!(true));
        assert_eq!(body["stream_options"]["include_usage"], json!(true));
        assert_eq!(body["tool_choice"], json!("auto"));
        assert_eq!(body["tools"][0]["function"]["name"], json!("f"));
        assert_eq!(body["max_tokens"], json!(100));
        assert_eq!(
            body["messages"][2],
            json!({"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]})
        );
        assert_eq!(body["messages"][3], json!({"role": "tool", "content": "r", "tool_call_id": "c1"}));
        let back: Message = serde_json::from_value(body["messages"][2].clone()).unwrap();
        assert_eq!(back, request.messages[2]);
        let plain = client.body(&ChatRequest { messages: vec![Message::user("u")], tools: vec![] });
        assert!(plain.get("tools").is_none() && plain.get("tool_choice").is_none());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(100);
        assert!(backoff(base, 0) < Duration::from_millis(150));
        assert!(backoff(base, 3) >= Duration::from_millis(400));
        assert!(backoff(base, 30) <= MAX_BACKOFF);
    }
}
