//! Fake upstream services for the tests: an OpenAI-compatible LLM
//! ([`FakeLlm`]) and a SearXNG search endpoint ([`FakeSearx`]).
//!
//! Both are real HTTP servers on `127.0.0.1:0` (axum apps spawned on the
//! test's runtime) speaking the real wire protocol, so that the client code
//! under test runs exactly as against the real thing: paced SSE bodies,
//! status codes, `Retry-After`, abrupt disconnects. Each `start()` makes an
//! independent instance with its own state; nothing is global, so tests in
//! this one binary can run in parallel. A fake lives as long as the test's
//! runtime (dropping the handle does not stop the server, so a test may keep
//! only its `base_url`).

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde_json::{Value, json};

/// How a [`FakeLlm`] answers one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Deltas `chunks`, `delay_ms` apart (also before the first), then
    /// finish_reason "stop", a usage chunk, `[DONE]`.
    Text { chunks: Vec<String>, delay_ms: u64 },
    /// Tool calls: each (name, arguments JSON) gets index i and id "call_i";
    /// the arguments text is split into `split` pieces sent as separate
    /// deltas, with the calls' pieces interleaved; then finish_reason
    /// "tool_calls", `[DONE]`.
    ToolCalls { calls: Vec<(String, Value)>, split: usize },
    /// Sends `chunks` (as deltas) and then breaks the connection (the body
    /// stream fails, so the client sees a transport error mid-body): no
    /// finish_reason, no `[DONE]`.
    FailMidStream { chunks: Vec<String> },
    /// Sends 200 headers and `chunks`, then nothing ever again (the body
    /// never ends).
    Hang { chunks: Vec<String> },
    /// Answers `code` with `body` (and `Retry-After` when given), no stream.
    /// The text `{auth}` in `body` is replaced by the request's
    /// Authorization header, to play an upstream that echoes it. The body is
    /// sent as `application/json` when it parses as JSON, else as text (so
    /// `code: 200` with a JSON body plays a server that ignored `stream`).
    Status { code: u16, body: String, retry_after: Option<u64> },
    /// A 200 `text/event-stream` whose body is `pieces`, each written
    /// verbatim as one body chunk (no newline added), `delay_ms` apart (also
    /// before the first); then the body ends cleanly. For lenient-parsing
    /// cases, comments, `event: error`, missing `[DONE]`.
    Raw { pieces: Vec<String>, delay_ms: u64 },
    /// The default reply: "收到：" followed by the content of the last user
    /// message, as [`Reply::text`] would send it.
    Echo,
}

impl Reply {
    /// The marker for the default reply (see [`FakeLlm::push`]).
    pub fn echo() -> Self {
        Reply::Echo
    }

    /// `s` in chunks of ~4 characters, 5 ms apart.
    pub fn text(s: &str) -> Self {
        Reply::Text { chunks: split_chars(s, 4), delay_ms: 5 }
    }

    /// A status reply without `Retry-After`.
    pub fn status(code: u16, body: &str) -> Self {
        Reply::Status { code, body: body.to_string(), retry_after: None }
    }
}

/// Splits `s` into pieces of `n` characters (the last may be shorter).
pub fn split_chars(s: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    chars.chunks(n.max(1)).map(|c| c.iter().collect()).collect()
}

/// Splits `s` into `parts` pieces of nearly equal length (fewer when `s`
/// has fewer characters); none is empty unless `s` is.
fn split_into(s: &str, parts: usize) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let parts = parts.max(1).min(chars.len().max(1));
    let size = chars.len().div_ceil(parts).max(1);
    let pieces = split_chars(s, size);
    if pieces.is_empty() { vec![String::new()] } else { pieces }
}

#[derive(Default)]
struct LlmState {
    script: Mutex<VecDeque<Reply>>,
    requests: Mutex<Vec<Value>>,
    auth: Mutex<Vec<Option<String>>>,
    dropped: AtomicUsize,
    open: AtomicUsize,
}

/// A fake OpenAI-compatible chat-completions server.
pub struct FakeLlm {
    /// `http://127.0.0.1:PORT/v1`
    pub base_url: String,
    state: Arc<LlmState>,
}

impl FakeLlm {
    pub async fn start() -> Self {
        let state = Arc::new(LlmState::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/models", get(models))
            .with_state(state.clone());
        let addr = spawn(app).await;
        FakeLlm { base_url: format!("http://{addr}/v1"), state }
    }

    /// Scripts the next replies, in order (FIFO). When the script is empty
    /// the reply is the default, [`Reply::echo`].
    pub fn push(&self, reply: Reply) {
        self.state.script.lock().unwrap().push_back(reply);
    }

    /// The JSON bodies received, in order (a body that is not JSON is
    /// recorded as a JSON string of its text).
    pub fn requests(&self) -> Vec<Value> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Authorization headers received, in order.
    pub fn auth_headers(&self) -> Vec<Option<String>> {
        self.state.auth.lock().unwrap().clone()
    }

    /// Number of response bodies the client dropped before the fake
    /// finished writing them.
    pub fn dropped_streams(&self) -> usize {
        self.state.dropped.load(Ordering::SeqCst)
    }

    /// Number of response bodies currently being streamed.
    pub fn open_streams(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }
}

async fn spawn(app: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a fake server");
    let addr = listener.local_addr().unwrap();
    // As real model servers do: without TCP_NODELAY a chunk written soon
    // after the headers waits for the client's delayed ACK.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

async fn chat(State(state): State<Arc<LlmState>>, headers: HeaderMap, body: Bytes) -> Response {
    let request: Value =
        serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    let auth = headers.get(header::AUTHORIZATION).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    state.requests.lock().unwrap().push(request.clone());
    state.auth.lock().unwrap().push(auth.clone());
    let reply = state.script.lock().unwrap().pop_front().unwrap_or(Reply::Echo);
    let model = request.get("model").and_then(Value::as_str).unwrap_or("fake-model").to_string();

    let steps = match reply {
        Reply::Status { code, body, retry_after } => {
            let body = body.replace("{auth}", auth.as_deref().unwrap_or(""));
            let content_type = if serde_json::from_str::<Value>(&body).is_ok() {
                "application/json"
            } else {
                "text/plain; charset=utf-8"
            };
            let mut response =
                (StatusCode::from_u16(code).unwrap(), [(header::CONTENT_TYPE, content_type)], body).into_response();
            if let Some(secs) = retry_after {
                response.headers_mut().insert(header::RETRY_AFTER, secs.to_string().parse().unwrap());
            }
            return response;
        }
        Reply::Echo => {
            let text = format!("收到：{}", last_user_message(&request));
            text_steps(&model, &request, &split_chars(&text, 4), 5)
        }
        Reply::Text { chunks, delay_ms } => text_steps(&model, &request, &chunks, delay_ms),
        Reply::ToolCalls { calls, split } => tool_call_steps(&model, &calls, split),
        Reply::FailMidStream { chunks } => {
            let mut steps = delta_steps(&model, &chunks, 5);
            // A pause first, so that hyper flushes the last delta before it
            // aborts the connection.
            steps.push(Step::Sleep(50));
            steps.push(Step::Fail);
            steps
        }
        Reply::Hang { chunks } => {
            let mut steps = delta_steps(&model, &chunks, 5);
            steps.push(Step::Hang);
            steps
        }
        Reply::Raw { pieces, delay_ms } => {
            pieces.into_iter().flat_map(|p| [Step::Sleep(delay_ms), Step::Send(p)]).collect()
        }
    };
    sse_response(state, steps)
}

/// `GET /v1/models`: the one model, `fake-model`. A bearer token containing
/// `invalid` is refused with a 401 that echoes the Authorization header, as
/// some upstreams do (for tests that the key is never repeated).
async fn models(headers: HeaderMap) -> Response {
    let auth = headers.get(header::AUTHORIZATION).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    if let Some(auth) = auth.filter(|a| a.contains("invalid")) {
        let body =
            json!({"error": {"message": format!("Incorrect API key provided: {auth}"), "code": "invalid_api_key"}});
        return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    }
    axum::Json(json!({"object": "list", "data": [{"id": "fake-model", "object": "model", "owned_by": "fake"}]}))
        .into_response()
}

/// One thing a streamed body does.
enum Step {
    Sleep(u64),
    Send(String),
    /// Fail the body stream: hyper aborts the connection.
    Fail,
    /// Never send anything again.
    Hang,
}

fn event(data: &Value) -> Step {
    Step::Send(format!("data: {data}\n\n"))
}

fn chunk(model: &str, delta: Value, finish_reason: Value) -> Value {
    json!({
        "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    })
}

fn delta_steps(model: &str, chunks: &[String], delay_ms: u64) -> Vec<Step> {
    let mut steps = Vec::new();
    for (i, text) in chunks.iter().enumerate() {
        let delta = if i == 0 { json!({"role": "assistant", "content": text}) } else { json!({"content": text}) };
        steps.push(Step::Sleep(delay_ms));
        steps.push(event(&chunk(model, delta, Value::Null)));
    }
    steps
}

fn text_steps(model: &str, request: &Value, chunks: &[String], delay_ms: u64) -> Vec<Step> {
    let mut steps = delta_steps(model, chunks, delay_ms);
    steps.push(event(&chunk(model, json!({}), json!("stop"))));
    // Token counts are stand-ins: characters of the prompt, chunks of the answer.
    let prompt = request.get("messages").map(|m| m.to_string().chars().count() as u64).unwrap_or(0);
    let completion = chunks.len() as u64;
    steps.push(event(&json!({
        "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": model, "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    })));
    steps.push(Step::Send("data: [DONE]\n\n".to_string()));
    steps
}

fn tool_call_steps(model: &str, calls: &[(String, Value)], split: usize) -> Vec<Step> {
    let mut steps = Vec::new();
    let pieces: Vec<Vec<String>> = calls.iter().map(|(_, args)| split_into(&args.to_string(), split)).collect();
    for (i, (name, _)) in calls.iter().enumerate() {
        let delta = json!({"role": "assistant", "content": null, "tool_calls": [{
            "index": i, "id": format!("call_{i}"), "type": "function", "function": {"name": name, "arguments": ""},
        }]});
        steps.push(Step::Sleep(2));
        steps.push(event(&chunk(model, delta, Value::Null)));
    }
    let rounds = pieces.iter().map(Vec::len).max().unwrap_or(0);
    for round in 0..rounds {
        for (i, call_pieces) in pieces.iter().enumerate() {
            if let Some(piece) = call_pieces.get(round) {
                let delta = json!({"tool_calls": [{"index": i, "function": {"arguments": piece}}]});
                steps.push(Step::Sleep(2));
                steps.push(event(&chunk(model, delta, Value::Null)));
            }
        }
    }
    steps.push(event(&chunk(model, json!({}), json!("tool_calls"))));
    steps.push(Step::Send("data: [DONE]\n\n".to_string()));
    steps
}

fn last_user_message(request: &Value) -> String {
    request
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|messages| messages.iter().rev().find(|m| m.get("role").and_then(Value::as_str) == Some("user")))
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// Counts open bodies, and the ones dropped before they were finished: the
/// guard lives inside the body stream, so it is dropped exactly when hyper
/// drops the body (the client went away, or the body ended).
struct StreamGuard {
    state: Arc<LlmState>,
    finished: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.state.open.fetch_sub(1, Ordering::SeqCst);
        if !self.finished {
            self.state.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn sse_response(state: Arc<LlmState>, steps: Vec<Step>) -> Response {
    state.open.fetch_add(1, Ordering::SeqCst);
    let guard = StreamGuard { state, finished: false };
    let steps: VecDeque<Step> = steps.into();
    let body = futures::stream::unfold((steps, guard), |(mut steps, mut guard)| async move {
        loop {
            let step = steps.pop_front()?;
            // The body counts as finished once its last piece is handed to
            // hyper (or its deliberate failure), not when hyper polls again.
            let last = steps.is_empty();
            match step {
                Step::Sleep(ms) => {
                    if ms > 0 {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    if last {
                        guard.finished = true;
                        drop(guard);
                        return None;
                    }
                }
                Step::Send(text) => {
                    if last {
                        guard.finished = true;
                    }
                    return Some((Ok::<_, std::io::Error>(Bytes::from(text)), (steps, guard)));
                }
                Step::Fail => {
                    guard.finished = true;
                    return Some((Err(std::io::Error::other("fake upstream broke the connection")), (steps, guard)));
                }
                Step::Hang => std::future::pending::<()>().await,
            }
        }
    });
    // After a failure the stream must not be polled for more.
    let body = body.scan(false, |failed, item| {
        let out = if *failed { None } else { Some(item) };
        if out.as_ref().is_some_and(|i| i.is_err()) {
            *failed = true;
        }
        futures::future::ready(out)
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap()
}

/// A fake SearXNG instance with its JSON API enabled.
pub struct FakeSearx {
    /// `http://127.0.0.1:PORT`
    pub base_url: String,
    queries: Arc<Mutex<Vec<String>>>,
}

impl FakeSearx {
    pub async fn start() -> Self {
        let queries = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new().route("/search", get(searx)).with_state(queries.clone());
        let addr = spawn(app).await;
        FakeSearx { base_url: format!("http://{addr}"), queries }
    }

    /// The `q` of every `/search` request, in order (also those refused for
    /// lack of `format=json`).
    pub fn queries(&self) -> Vec<String> {
        self.queries.lock().unwrap().clone()
    }
}

/// `GET /search?q=…&format=json`: three results derived from `q`. Without
/// `format=json` it answers 403, as SearXNG does when JSON is not enabled.
async fn searx(
    State(queries): State<Arc<Mutex<Vec<String>>>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let q = params.get("q").cloned().unwrap_or_default();
    queries.lock().unwrap().push(q.clone());
    if params.get("format").map(String::as_str) != Some("json") {
        return (StatusCode::FORBIDDEN, "403 Forbidden").into_response();
    }
    let results: Vec<Value> = (1..=3)
        .map(|i| {
            let url = reqwest::Url::parse_with_params(&format!("https://example.org/{i}"), &[("q", &q)]).unwrap();
            json!({
                "url": url.as_str(),
                "title": format!("结果 {i}：{q}"),
                "content": format!("关于 {q} 的第 {i} 条结果"),
                "engine": "fake",
                "score": 1.0 / i as f64,
            })
        })
        .collect();
    axum::Json(json!({"query": q, "number_of_results": results.len(), "results": results})).into_response()
}
