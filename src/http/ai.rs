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

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::extract::{AppJson, AppPath, CurrentUser, IdPath};
use crate::app::App;
use crate::assist::{Input, stream_kind};
use crate::error::{ApiError, ApiResult};
use crate::ids::{DocumentId, SessionKind, StreamId, TaskId};
use crate::stores::chat::ChatMessage;
use crate::stores::limits::{Concurrency, Lease};
use crate::stores::streams::EventSource;

/// Characters of a polishing instruction.
const MAX_INSTRUCTION_CHARS: usize = 2000;
/// Document ids one `generate` request may name.
const MAX_DOCUMENT_IDS: usize = 50;

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/ai/generate", post(generate))
        .route("/ai/optimize", post(optimize))
        .route("/ai/search", post(search))
        .route("/ai/streams/{stream_id}", get(resume))
        .route("/ai/streams/{stream_id}/cancel", post(cancel))
        .route("/ai/sessions/{kind}/{task_id}", get(get_session).delete(delete_session))
}

#[derive(Deserialize)]
struct GenerateBody {
    task_id: String,
    message: String,
    #[serde(default)]
    document_ids: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct OptimizeBody {
    task_id: String,
    text: String,
    #[serde(default)]
    instruction: Option<String>,
}

#[derive(Deserialize)]
struct SearchBody {
    task_id: String,
    message: String,
}

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

#[derive(Serialize)]
struct SessionView {
    messages: Vec<ChatMessage>,
    ttl_seconds: u64,
}

fn session_path(kind: &str, task: &str) -> ApiResult<(SessionKind, TaskId)> {
    let kind = SessionKind::parse(kind)
        .map_err(|_| ApiError::unprocessable("invalid_kind", "kind must be generate, optimize or search"))?;
    Ok((kind, task_id(task)?))
}

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

async fn delete_session(
    State(app): State<Arc<App>>,
    CurrentUser(user): CurrentUser,
    AppPath((kind, task)): AppPath<(String, String)>,
) -> ApiResult<StatusCode> {
    let (kind, task) = session_path(&kind, &task)?;
    app.assistants.sessions.clear(kind, &user, &task).await?;
    Ok(StatusCode::NO_CONTENT)
}
