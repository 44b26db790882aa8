//! Upload (`POST /Import_Doc/`, `POST /imports`) and status polling
//! (`GET /check_import_status/{task_id}`, `GET /imports/{task_id}`).
//!
//! An upload's file is streamed to a temporary file under
//! `{DATA_DIR}/uploads-tmp/` as it arrives ([`crate::import::Spool`]) and
//! `MAX_UPLOAD_MB` is enforced while it streams, so that an upload costs
//! this process a bounded amount of memory whatever its size.

use std::sync::Arc;

use axum::Json;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use super::extract::{CurrentUser, IdPath, PollingUser};
use crate::app::App;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::ids::TaskId;
use crate::import::{Spool, SubmitError};
use crate::keys::LimitSubject;
use crate::stores::limits::RateLimit;
use crate::stores::tasks::{TaskRecord, TaskStatus};

/// Where uploads are spooled while they arrive, under `DATA_DIR`.
pub const SPOOL_DIR: &str = "uploads-tmp";

pub fn router(max_upload_bytes: usize) -> OpenApiRouter<Arc<App>> {
    // Room for the multipart envelope and a title around the file itself.
    let body_limit = max_upload_bytes.saturating_add(256 * 1024);
    let upload = routes!(upload).layer(DefaultBodyLimit::max(body_limit));
    let status = routes!(status);
    OpenApiRouter::new()
        .routes(alias(&upload, "/Import_Doc/", "import_doc", "the legacy path of the existing front end"))
        .routes(alias(&upload, "/Import_Doc", "import_doc_no_slash", "the legacy path without its trailing slash"))
        .routes(upload)
        .routes(alias(&status, "/check_import_status/{task_id}", "check_import_status", "the legacy path"))
        .routes(status)
}

/// The routes of `routes` (one path) served at `path` as well: the same
/// handler and the same documentation, under another operation id, with a
/// line in the description naming the path it is an alias of.
fn alias(
    routes: &UtoipaMethodRouter<Arc<App>>,
    path: &str,
    operation_id: &str,
    why: &str,
) -> UtoipaMethodRouter<Arc<App>> {
    let (schemas, paths, method_router) = routes.clone();
    let mut aliased = utoipa::openapi::path::Paths::new();
    for (original, mut item) in paths.paths {
        for method in [&mut item.get, &mut item.post, &mut item.put, &mut item.delete] {
            if let Some(operation) = method.as_mut() {
                operation.operation_id = Some(operation_id.to_owned());
                let note = format!("An alias of `{original}`: {why}.");
                operation.description = Some(match operation.description.take() {
                    Some(description) if !description.is_empty() => format!("{description}\n\n{note}"),
                    _ => note,
                });
            }
        }
        aliased.paths.insert(path.to_owned(), item);
    }
    (schemas, aliased, method_router)
}

/// An upload accepted: its import runs in the background.
#[derive(Serialize, ToSchema)]
#[schema(as = ImportAccepted)]
struct Accepted {
    task_id: TaskId,
    /// Always `pending`.
    status: TaskStatus,
}

/// The form of an upload. The handler reads the multipart stream itself;
/// this type only documents it.
#[derive(ToSchema)]
#[allow(dead_code)]
struct UploadForm {
    /// The document: txt, md, html, docx or pdf (judged by content, not
    /// only by name), at most `MAX_UPLOAD_MB` (default 50) MB.
    #[schema(value_type = String, format = Binary, content_media_type = "application/octet-stream")]
    file: Vec<u8>,
    /// A title (default: the document's own, else the file name); at most 1000 characters are kept.
    title: Option<String>,
}

/// A task as the front end polls it (times in RFC 3339).
#[derive(Serialize, ToSchema)]
pub struct TaskView {
    task_id: TaskId,
    status: TaskStatus,
    /// 0 to 100, never going backwards.
    progress: u8,
    stage: String,
    message: String,
    /// Set once the import has completed.
    document_id: Option<String>,
    /// Why the import failed, for a human.
    error: Option<String>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
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

/// Uploads a document to import: answers at once with the task to poll.
#[utoipa::path(
    post,
    path = "/imports",
    tag = "imports",
    operation_id = "create_import",
    security(("bearer" = [])),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 202, description = "Accepted: poll the task for its progress", body = Accepted),
        (status = 400, description = "A malformed multipart body (`invalid_multipart`)", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 413, description = "The file is larger than `MAX_UPLOAD_MB` (`file_too_large`)", body = ErrorBody),
        (status = 415, description = "Not a supported type, judged by content (`unsupported_media_type`)", body = ErrorBody),
        (status = 422, description = "No `file` field, or a duplicated field", body = ErrorBody),
        (status = 429, description = "Over the request rate, or too many imports running for this user (`Retry-After`)", body = ErrorBody),
        (status = 503, description = "Too many uploads arriving or imports queued, or a store unavailable (`Retry-After`)", body = ErrorBody),
    ),
)]
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

/// The progress of an import.
#[utoipa::path(
    get,
    path = "/imports/{task_id}",
    tag = "imports",
    operation_id = "get_import",
    security(("bearer" = [])),
    params(("task_id" = TaskId, Path, description = "The task id an upload answered")),
    responses(
        (status = 200, description = "The task", body = TaskView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such task of this user (`task_not_found`)", body = ErrorBody),
        (status = 422, description = "Not a valid id (`invalid_id`)", body = ErrorBody),
        (status = 429, description = "Over the polling rate (`Retry-After`)", body = ErrorBody),
        (status = 503, description = "The task store is unavailable (`Retry-After`)", body = ErrorBody),
    ),
)]
async fn status(
    State(app): State<Arc<App>>,
    PollingUser(user): PollingUser,
    IdPath(task): IdPath<TaskId>,
) -> ApiResult<Json<TaskView>> {
    // The limit and the read at once: over the limit, what was read is
    // dropped (a read changes nothing).
    let subject = LimitSubject::User(user.clone());
    let (allowed, record) =
        tokio::join!(app.limits.check(RateLimit::Polls, &subject), app.imports.status(&user, &task));
    allowed?;
    // The key carries the user id: another user's task is simply not found,
    // with the same answer as an unknown id.
    let record = record?.ok_or_else(|| ApiError::not_found("task_not_found", "task not found"))?;
    Ok(Json(record.into()))
}
