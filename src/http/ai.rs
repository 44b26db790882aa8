//! The AI assistants over Server-Sent Events (SPEC §5):
//! `POST /ai/generate`, `/ai/optimize`, `/ai/search`; resuming
//! (`GET /ai/streams/{id}` with `Last-Event-ID`) and cancelling
//! (`POST /ai/streams/{id}/cancel`) on any instance; and the sessions
//! (`GET`/`DELETE /ai/sessions/{kind}/{task_id}`).
//!
//! Only what is wrong before streaming begins is an HTTP error; once a
//! stream is open, failures arrive as its `error` event.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{ToResponse, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{AppJson, AppPath, CurrentUser, IdPath};
use crate::app::App;
use crate::assist::{Input, stream_kind};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::ids::{DocumentId, SessionKind, StreamId, TaskId};
use crate::llm::Usage;
use crate::stores::chat::{ChatMessage, Source};
use crate::stores::limits::{Concurrency, Lease};
use crate::stores::streams::EventSource;

/// Characters of a polishing instruction.
const MAX_INSTRUCTION_CHARS: usize = 2000;
/// Document ids one `generate` request may name.
const MAX_DOCUMENT_IDS: usize = 50;

pub fn router() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(generate))
        .routes(routes!(optimize))
        .routes(routes!(search))
        .routes(routes!(resume))
        .routes(routes!(cancel))
        .routes(routes!(get_session, delete_session))
}

/// A question to the report-writing assistant, answered from the user's documents.
#[derive(Deserialize, ToSchema)]
struct GenerateBody {
    /// The client's id of the conversation (a session per task and kind).
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    task_id: String,
    /// Not blank, at most `AI_MAX_INPUT_CHARS` characters.
    message: String,
    /// Search only these documents (at most 50; empty or absent: all of them).
    #[serde(default)]
    document_ids: Option<Vec<String>>,
}

/// A text to polish.
#[derive(Deserialize, ToSchema)]
struct OptimizeBody {
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    task_id: String,
    /// Not blank, at most `AI_MAX_INPUT_CHARS` characters.
    text: String,
    /// How to polish it (at most 2000 characters).
    #[serde(default)]
    instruction: Option<String>,
}

/// A question to the web-search assistant.
#[derive(Deserialize, ToSchema)]
struct SearchBody {
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    task_id: String,
    /// Not blank, at most `AI_MAX_INPUT_CHARS` characters.
    message: String,
}

// The types below document the events of an answer stream. The events are
// built as JSON by the assistant (`crate::assist`), so these are never
// constructed; the stream tests check the events against SPEC §5.

/// One message of an answer stream, as `event` (its SSE event name) and
/// `data` (its JSON). On the wire each is an SSE message whose `id:` is its
/// sequence number in the stream (1, 2, 3 …), for `Last-Event-ID`.
#[derive(Serialize, ToSchema)]
#[serde(tag = "event", content = "data", rename_all = "snake_case")]
#[allow(dead_code)]
pub(super) enum StreamEvent {
    Start(StartEvent),
    Delta(DeltaEvent),
    ToolCall(ToolCallEvent),
    ToolResult(ToolResultEvent),
    Done(DoneEvent),
    Error(ErrorBody<'static>),
}

/// `start`: the first event of a stream.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub(super) struct StartEvent {
    /// The stream's id, for `GET /ai/streams/{stream_id}` and its cancel.
    stream_id: StreamId,
    task_id: TaskId,
    kind: SessionKind,
    /// `offline` for the built-in provider (no `LLM_BASE_URL`), else `llm`.
    provider: String,
    /// The LLM's model, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
}

/// `delta`: a piece of the answer (Markdown).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub(super) struct DeltaEvent {
    content: String,
}

/// `tool_call`: the search assistant calls a tool.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub(super) struct ToolCallEvent {
    name: String,
    /// The tool's arguments (a JSON object).
    #[schema(value_type = Object)]
    arguments: serde_json::Value,
}

/// `tool_result`: what a tool call found.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub(super) struct ToolResultEvent {
    name: String,
    results: Vec<ToolResultItem>,
}

/// One result of a tool call.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub(super) struct ToolResultItem {
    title: String,
    url: String,
    snippet: String,
}

/// `done`: the last event of a stream that ended normally or was cancelled.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub(super) struct DoneEvent {
    /// `stop`, `length`, `cancelled` …
    finish_reason: String,
    /// Token counts, when the LLM reported them.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
    /// The sources the answer used.
    #[serde(skip_serializing_if = "Option::is_none")]
    sources: Option<Vec<Source>>,
}

/// The answer as Server-Sent Events (`text/event-stream`). Each message has
/// an `id` (its sequence number: 1, 2, 3 …), an `event` name and JSON
/// `data` (schema `StreamEvent`):
///
/// | event | data |
/// | --- | --- |
/// | `start` | `StartEvent`: `{"stream_id","task_id","kind","provider"}` |
/// | `delta` | `DeltaEvent`: `{"content"}`, a piece of the answer |
/// | `tool_call` | `ToolCallEvent`: `{"name","arguments"}` (search only) |
/// | `tool_result` | `ToolResultEvent`: `{"name","results":[{"title","url","snippet"}]}` (search only) |
/// | `done` | `DoneEvent`: `{"finish_reason","usage"?}` |
/// | `error` | `Error`: `{"detail","code"}`, a failure after streaming began |
///
/// The stream ends after `done` or `error`. Keep-alive comments come in
/// between. A client that lost the connection resumes with
/// `GET /ai/streams/{stream_id}` and `Last-Event-ID`.
#[derive(ToResponse)]
#[response(
    content_type = "text/event-stream",
    headers(
        ("Cache-Control" = String, description = "`no-cache`"),
        ("X-Accel-Buffering" = String, description = "`no`: proxies must not buffer the stream"),
    )
)]
#[allow(dead_code)]
pub(super) struct EventStream(StreamEvent);

fn task_id(raw: &str) -> ApiResult<TaskId> {
    TaskId::parse(raw).map_err(|_| ApiError::invalid_id("task_id"))
}

/// A required text field: not blank, at most `max` characters.
fn text(field: &str, value: String, max: usize) -> ApiResult<String> {
    if value.trim().is_empty() {
        return Err(ApiError::unprocessable("invalid_body", format!("{field} must not be empty")));
    }
    if value.chars().count() > max {
        return Err(ApiError::unprocessable("input_too_long", format!("{field} must be at most {max} characters")));
    }
    Ok(value)
}

/// What the three assistants answer instead of a stream, before it
/// begins (documentation only: the handlers return [`ApiError`]s).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum TurnRefused {
    #[response(status = 400, description = "The body is not valid JSON")]
    BadJson(ErrorBody<'static>),
    #[response(status = 401, description = "No valid token")]
    Unauthorized(ErrorBody<'static>),
    #[response(status = 409, description = "An answer in this session is still running (`session_busy`)")]
    Busy(ErrorBody<'static>),
    #[response(status = 415, description = "The body is not `application/json`")]
    NotJson(ErrorBody<'static>),
    #[response(status = 422, description = "A missing, blank or too long field, or an invalid id")]
    Invalid(ErrorBody<'static>),
    #[response(status = 429, description = "Over the request rate, or too many open streams (`Retry-After`)")]
    Limited(ErrorBody<'static>),
    #[response(status = 503, description = "A store is unavailable (`Retry-After`)")]
    Unavailable(ErrorBody<'static>),
}

/// Drafts report text from the user's documents (streamed).
#[utoipa::path(
    post,
    path = "/ai/generate",
    tag = "ai",
    operation_id = "ai_generate",
    security(("bearer" = [])),
    request_body = GenerateBody,
    responses(
        (status = 200, response = EventStream),
        TurnRefused,
    ),
)]
async fn generate(
    State(app): State<Arc<App>>,
    CurrentUser(user): CurrentUser,
    AppJson(body): AppJson<GenerateBody>,
) -> ApiResult<Response> {
    let task = task_id(&body.task_id)?;
    let message = text("message", body.message, app.config.ai_max_input_chars)?;
    let document_ids = match body.document_ids {
        None => None,
        Some(raw) => {
            if raw.len() > MAX_DOCUMENT_IDS {
                return Err(ApiError::unprocessable(
                    "invalid_body",
                    format!("document_ids may list at most {MAX_DOCUMENT_IDS} ids"),
                ));
            }
            let ids = raw
                .iter()
                .map(|id| DocumentId::parse(id).map_err(|_| ApiError::invalid_id("every id in document_ids")))
                .collect::<ApiResult<Vec<_>>>()?;
            // An empty list means no filter, as when it is absent.
            (!ids.is_empty()).then_some(ids)
        }
    };
    start(&app, user, task, Input::Generate { message, document_ids }).await
}

/// Polishes a text (streamed).
#[utoipa::path(
    post,
    path = "/ai/optimize",
    tag = "ai",
    operation_id = "ai_optimize",
    security(("bearer" = [])),
    request_body = OptimizeBody,
    responses(
        (status = 200, response = EventStream),
        TurnRefused,
    ),
)]
async fn optimize(
    State(app): State<Arc<App>>,
    CurrentUser(user): CurrentUser,
    AppJson(body): AppJson<OptimizeBody>,
) -> ApiResult<Response> {
    let task = task_id(&body.task_id)?;
    let text_ = text("text", body.text, app.config.ai_max_input_chars)?;
    let instruction = match body.instruction {
        Some(i) if !i.trim().is_empty() => Some(text("instruction", i, MAX_INSTRUCTION_CHARS)?),
        _ => None,
    };
    start(&app, user, task, Input::Optimize { text: text_, instruction }).await
}

/// Answers with web search (streamed): the assistant may call its search tool.
#[utoipa::path(
    post,
    path = "/ai/search",
    tag = "ai",
    operation_id = "ai_search",
    security(("bearer" = [])),
    request_body = SearchBody,
    responses(
        (status = 200, response = EventStream),
        TurnRefused,
    ),
)]
async fn search(
    State(app): State<Arc<App>>,
    CurrentUser(user): CurrentUser,
    AppJson(body): AppJson<SearchBody>,
) -> ApiResult<Response> {
    let task = task_id(&body.task_id)?;
    let message = text("message", body.message, app.config.ai_max_input_chars)?;
    start(&app, user, task, Input::Search { message }).await
}

async fn start(app: &Arc<App>, user: crate::ids::UserId, task: TaskId, input: Input) -> ApiResult<Response> {
    // The slot is taken before the turn starts: over the limit, nothing runs.
    let slot = stream_slot(app, &user).await?;
    let (_, events) = app.assistants.start(user, task, input).await?;
    Ok(sse(app, events, slot))
}

/// One of the user's `LIMIT_SSE_PER_USER` open streams, held by the
/// response: it is released when the response ends or its client goes.
async fn stream_slot(app: &Arc<App>, user: &crate::ids::UserId) -> ApiResult<Lease> {
    let holder = uuid::Uuid::new_v4().simple().to_string();
    Ok(app.limits.acquire(Concurrency::Streams, user, &holder).await?)
}

/// The SSE response of a stream: one event per recorded event, its `id`
/// the sequence number, keep-alive comments in between. It ends with the
/// stream, or when the server shuts down (the answer goes on; the client
/// resumes elsewhere with `Last-Event-ID`).
fn sse(app: &App, source: EventSource, slot: Lease) -> Response {
    let stopping = app.stopping.clone();
    let state = (source, stopping, Some(slot));
    let events = futures::stream::unfold(state, |(mut source, stopping, slot)| async move {
        // `slot` is `None` once the stopping notice has gone out: the end.
        slot.as_ref()?;
        let event = tokio::select! {
            _ = stopping.cancelled() => {
                // Not an event of the answer (no id, not recorded): the
                // client keeps its Last-Event-ID and resumes elsewhere.
                let notice = serde_json::json!({
                    "code": "instance_stopping",
                    "detail": "this instance is stopping: resume with GET /ai/streams/{stream_id} and Last-Event-ID",
                });
                let sse = SseEvent::default().event("error").data(notice.to_string());
                return Some((Ok::<_, Infallible>(sse), (source, stopping, None)));
            }
            event = source.next() => event,
        }?;
        let sse = SseEvent::default().id(event.seq.to_string()).event(event.event).data(event.data);
        Some((Ok::<_, Infallible>(sse), (source, stopping, slot)))
    });
    let keep_alive = Duration::from_secs(app.config.sse_keepalive_seconds);
    let mut response = Sse::new(events).keep_alive(KeepAlive::new().interval(keep_alive)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

fn stream_not_found() -> ApiError {
    ApiError::not_found("stream_not_found", "stream not found")
}

/// The kind of a stream id; an id this service did not make is a stream
/// that does not exist.
fn kind_of(id: &StreamId) -> ApiResult<SessionKind> {
    stream_kind(id).ok_or_else(stream_not_found)
}

/// The `Last-Event-ID` header: the seq of the last event the client has
/// (0 or absent: from the start).
fn last_event_id(headers: &HeaderMap) -> ApiResult<u64> {
    let Some(raw) = headers.get("last-event-id") else { return Ok(0) };
    let raw = raw.to_str().unwrap_or_default().trim();
    if raw.is_empty() {
        return Ok(0);
    }
    raw.parse::<u64>().map_err(|_| {
        ApiError::unprocessable("invalid_last_event_id", "Last-Event-ID must be an event id of this stream")
    })
}

/// Replays what the client missed of a stream, then follows it live, on any instance.
#[utoipa::path(
    get,
    path = "/ai/streams/{stream_id}",
    tag = "ai",
    operation_id = "ai_resume_stream",
    security(("bearer" = [])),
    params(
        ("stream_id" = StreamId, Path, description = "The `stream_id` of the stream's `start` event"),
        ("Last-Event-ID" = Option<u64>, Header,
            description = "The `id` of the last event the client has; absent or 0: from the start"),
    ),
    responses(
        (status = 200, response = EventStream),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such stream of this user (`stream_not_found`)", body = ErrorBody),
        (status = 422, description = "Not a valid id, or a `Last-Event-ID` that is not a number", body = ErrorBody),
        (status = 429, description = "Over the request rate, or too many open streams (`Retry-After`)", body = ErrorBody),
        (status = 503, description = "The stream store is unavailable (`Retry-After`)", body = ErrorBody),
    ),
)]
async fn resume(
    State(app): State<Arc<App>>,
    CurrentUser(user): CurrentUser,
    IdPath(id): IdPath<StreamId>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let after = last_event_id(&headers)?;
    let kind = kind_of(&id)?;
    let slot = stream_slot(&app, &user).await?;
    let source = app.assistants.streams.subscribe(kind, &user, &id, after).await?.ok_or_else(stream_not_found)?;
    Ok(sse(&app, source, slot))
}

/// Stops a running answer on whichever instance runs it; the stream's last
/// event is then `done` with `"finish_reason":"cancelled"`.
#[utoipa::path(
    post,
    path = "/ai/streams/{stream_id}/cancel",
    tag = "ai",
    operation_id = "ai_cancel_stream",
    security(("bearer" = [])),
    params(("stream_id" = StreamId, Path, description = "The `stream_id` of the stream's `start` event")),
    responses(
        (status = 204, description = "Cancelled (also when it had already ended)"),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such stream of this user (`stream_not_found`)", body = ErrorBody),
        (status = 422, description = "Not a valid id (`invalid_id`)", body = ErrorBody),
        (status = 429, description = "Over the request rate (`Retry-After`)", body = ErrorBody),
        (status = 503, description = "The stream store is unavailable (`Retry-After`)", body = ErrorBody),
    ),
)]
async fn cancel(
    State(app): State<Arc<App>>,
    CurrentUser(user): CurrentUser,
    IdPath(id): IdPath<StreamId>,
) -> ApiResult<StatusCode> {
    let kind = kind_of(&id)?;
    if app.assistants.streams.cancel(kind, &user, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(stream_not_found())
    }
}

#[derive(Serialize, ToSchema)]
struct SessionView {
    messages: Vec<ChatMessage>,
    /// Seconds until the session expires (0: no expiry).
    ttl_seconds: u64,
}

fn session_path(kind: &str, task: &str) -> ApiResult<(SessionKind, TaskId)> {
    let kind = SessionKind::parse(kind)
        .map_err(|_| ApiError::unprocessable("invalid_kind", "kind must be generate, optimize or search"))?;
    Ok((kind, task_id(task)?))
}

/// A conversation: its messages, oldest first.
#[utoipa::path(
    get,
    path = "/ai/sessions/{kind}/{task_id}",
    tag = "ai",
    operation_id = "ai_get_session",
    security(("bearer" = [])),
    params(
        ("kind" = SessionKind, Path, description = "Which assistant"),
        ("task_id" = TaskId, Path, description = "The conversation's task id"),
    ),
    responses(
        (status = 200, description = "The session", body = SessionView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such session (`session_not_found`)", body = ErrorBody),
        (status = 422, description = "An unknown kind or an invalid task id", body = ErrorBody),
        (status = 429, description = "Over the request rate (`Retry-After`)", body = ErrorBody),
        (status = 503, description = "The session store is unavailable (`Retry-After`)", body = ErrorBody),
    ),
)]
async fn get_session(
    State(app): State<Arc<App>>,
    CurrentUser(user): CurrentUser,
    AppPath((kind, task)): AppPath<(String, String)>,
) -> ApiResult<Json<SessionView>> {
    let (kind, task) = session_path(&kind, &task)?;
    let session = app
        .assistants
        .sessions
        .get(kind, &user, &task)
        .await?
        .ok_or_else(|| ApiError::not_found("session_not_found", "session not found"))?;
    let ttl_seconds = session.ttl.map_or(0, |t| t.as_secs());
    Ok(Json(SessionView { messages: session.messages, ttl_seconds }))
}

/// Clears a conversation (also when there was none).
#[utoipa::path(
    delete,
    path = "/ai/sessions/{kind}/{task_id}",
    tag = "ai",
    operation_id = "ai_delete_session",
    security(("bearer" = [])),
    params(
        ("kind" = SessionKind, Path, description = "Which assistant"),
        ("task_id" = TaskId, Path, description = "The conversation's task id"),
    ),
    responses(
        (status = 204, description = "Cleared"),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 422, description = "An unknown kind or an invalid task id", body = ErrorBody),
        (status = 429, description = "Over the request rate (`Retry-After`)", body = ErrorBody),
        (status = 503, description = "The session store is unavailable (`Retry-After`)", body = ErrorBody),
    ),
)]
async fn delete_session(
    State(app): State<Arc<App>>,
    CurrentUser(user): CurrentUser,
    AppPath((kind, task)): AppPath<(String, String)>,
) -> ApiResult<StatusCode> {
    let (kind, task) = session_path(&kind, &task)?;
    app.assistants.sessions.clear(kind, &user, &task).await?;
    Ok(StatusCode::NO_CONTENT)
}
