//! Upload (`POST /Import_Doc/`, `POST /imports`) and status polling
//! (`GET /check_import_status/{task_id}`, `GET /imports/{task_id}`).
//!
//! An upload's file is streamed to a temporary file under
//! `{DATA_DIR}/uploads-tmp/` as it arrives ([`crate::import::Spool`]) and
//! `MAX_UPLOAD_MB` is enforced while it streams, so that an upload costs
//! this process a bounded amount of memory whatever its size.

use std::sync::Arc;

use axum::extract::multipart::MultipartRejection;
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use super::extract::{CurrentUser, IdPath, PollingUser};
use crate::app::App;
use crate::error::{ApiError, ApiResult};
use crate::ids::TaskId;
use crate::import::{Spool, SubmitError};
use crate::keys::LimitSubject;
use crate::stores::limits::RateLimit;
use crate::stores::tasks::{TaskRecord, TaskStatus};

/// Where uploads are spooled while they arrive, under `DATA_DIR`.
pub const SPOOL_DIR: &str = "uploads-tmp";

pub fn router(max_upload_bytes: usize) -> Router<Arc<App>> {
    // Room for the multipart envelope and a title around the file itself.
    let body_limit = max_upload_bytes.saturating_add(256 * 1024);
    let upload = post(upload).layer(DefaultBodyLimit::max(body_limit));
    Router::new()
        .route("/Import_Doc/", upload.clone())
        .route("/Import_Doc", upload.clone())
        .route("/imports", upload)
        .route("/check_import_status/{task_id}", get(status))
        .route("/imports/{task_id}", get(status))
}

#[derive(Serialize)]
struct Accepted {
    task_id: TaskId,
    status: TaskStatus,
}

/// A task as the front end polls it (times in RFC 3339).
#[derive(Serialize)]
pub struct TaskView {
    task_id: TaskId,
    status: TaskStatus,
    progress: u8,
    stage: String,
    message: String,
    document_id: Option<String>,
    error: Option<String>,
    created_at: String,
    updated_at: String,
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl From<TaskRecord> for TaskView {
    fn from(r: TaskRecord) -> Self {
        Self {
            task_id: r.task_id,
            status: r.status,
            progress: r.progress,
            stage: r.stage,
            message: r.message,
            document_id: r.document_id,
            error: r.error,
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
        }
    }
}

fn too_large(max_bytes: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "file_too_large",
        format!("the file is larger than {} MB", max_bytes / (1024 * 1024)),
    )
}

fn multipart_error(e: axum::extract::multipart::MultipartError, max_bytes: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large(max_bytes)
    } else {
        ApiError::bad_request("invalid_multipart", e.body_text())
    }
}

/// Keeps the last path component, without control characters, at most 255 characters.
fn clean_filename(raw: &str) -> String {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let clean: String = base.chars().filter(|c| !c.is_control()).take(255).collect();
    if clean.trim().is_empty() { "upload".into() } else { clean }
}

async fn upload(
    State(app): State<Arc<App>>,
    CurrentUser(user): CurrentUser,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    // Taken before the body is read, held until the upload is staged.
    let _slot = app.uploads.clone().try_acquire_owned().map_err(|_| {
        metrics::counter!("reportd_uploads_refused_total").increment(1);
        ApiError::unavailable("too_many_uploads", "too many uploads are arriving at once, retry shortly")
            .with_retry_after(2)
    })?;
    // The user's import slot, also before the body: over
    // `LIMIT_IMPORTS_PER_USER`, nothing is read.
    let (task, slot) = app.imports.reserve(&user).await?;
    let max = app.config.max_upload_bytes();
    let mut multipart = multipart.map_err(|r| ApiError::new(r.status(), "invalid_multipart", r.body_text()))?;
    let mut file: Option<(String, Spool)> = None;
    let mut title: Option<String> = None;
    while let Some(mut field) = multipart.next_field().await.map_err(|e| multipart_error(e, max))? {
        match field.name() {
            Some("file") if file.is_some() => {
                return Err(ApiError::unprocessable("duplicate_file", "the form must have exactly one 'file' field"));
            }
            Some("file") => {
                let name = clean_filename(field.file_name().unwrap_or("upload"));
                let mut spool =
                    Spool::create(&app.config.data_dir.join(SPOOL_DIR)).await.map_err(ApiError::internal)?;
                while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, max))? {
                    // Refused as soon as the limit is passed: the rest of
                    // the body is not read, and the spool goes away with
                    // this function's locals.
                    if spool.len().saturating_add(chunk.len() as u64) > max as u64 {
                        return Err(too_large(max));
                    }
                    spool.write(&chunk).await.map_err(ApiError::internal)?;
                }
                file = Some((name, spool));
            }
            Some("title") if title.is_some() => {
                return Err(ApiError::unprocessable("duplicate_field", "the form must have at most one 'title' field"));
            }
            Some("title") => {
                let text = field.text().await.map_err(|e| multipart_error(e, max))?;
                title = Some(text.chars().take(1000).collect());
            }
            // Unknown fields are read and dropped.
            _ => while field.chunk().await.map_err(|e| multipart_error(e, max))?.is_some() {},
        }
    }
    let (filename, spool) =
        file.ok_or_else(|| ApiError::unprocessable("missing_file", "the form needs a 'file' field"))?;
    // An empty file is accepted: its task fails with a readable error, as
    // for any other supported file that cannot be read.
    let record =
        app.imports.submit(&user, task, slot, &filename, title.as_deref(), spool).await.map_err(|e| match e {
            SubmitError::Unsupported(u) => {
                ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", u.to_string())
            }
            SubmitError::QueueFull => {
                ApiError::unavailable("import_queue_full", "too many imports are waiting, retry shortly")
                    .with_retry_after(5)
            }
            SubmitError::State(s) => s.into(),
            SubmitError::Database(d) => d.into(),
            SubmitError::Spool(e) => ApiError::internal(e),
        })?;
    Ok((StatusCode::ACCEPTED, Json(Accepted { task_id: record.task_id, status: record.status })))
}

async fn status(
    State(app): State<Arc<App>>,
    PollingUser(user): PollingUser,
    IdPath(task): IdPath<TaskId>,
) -> ApiResult<Json<TaskView>> {
    // The limit and the read at once: over the limit, what was read is
    // dropped (a read changes nothing).
    let subject = LimitSubject::User(user.clone());
    let (allowed, record) = tokio::join!(app.limits.check(RateLimit::Polls, &subject), app.tasks.get(&user, &task));
    allowed?;
    // The key carries the user id: another user's task is simply not found,
    // with the same answer as an unknown id.
    let record = record?.ok_or_else(|| ApiError::not_found("task_not_found", "task not found"))?;
    Ok(Json(record.into()))
}
