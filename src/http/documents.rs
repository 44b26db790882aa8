//! `GET /documents`, `GET /documents/{id}`, `DELETE /documents/{id}`.
//!
//! The two reads go through the read cache ([`crate::stores::cache`]), which
//! holds their exact JSON bodies; a delete invalidates the caller's cached
//! reads before it is acknowledged.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{AppQuery, CurrentUser, IdPath};
use crate::app::App;
use crate::db::{Chunk, Document};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::ids::DocumentId;
use crate::stores::cache::Lookup;

pub fn router() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new().routes(routes!(list)).routes(routes!(show, remove))
}

/// A page of a list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Page {
    /// How many items (documents: 1 to 100, default 20; a document's chunks: 1 to 500, default 50).
    #[param(minimum = 1)]
    limit: Option<i64>,
    /// How many items to skip (default 0).
    #[param(minimum = 0)]
    offset: Option<i64>,
}

impl Page {
    fn bounds(&self, default: i64, max: i64) -> Result<(i64, i64), ApiError> {
        let limit = self.limit.unwrap_or(default);
        let offset = self.offset.unwrap_or(0);
        if !(1..=max).contains(&limit) {
            return Err(ApiError::unprocessable("invalid_query", format!("limit must be between 1 and {max}")));
        }
        if offset < 0 {
            return Err(ApiError::unprocessable("invalid_query", "offset must not be negative"));
        }
        Ok((limit, offset))
    }
}

#[derive(Serialize, ToSchema)]
struct DocumentView {
    #[serde(flatten)]
    doc: Document,
    #[schema(format = DateTime)]
    created_at: String,
}

impl From<Document> for DocumentView {
    fn from(doc: Document) -> Self {
        let created_at = chrono::DateTime::from_timestamp_millis(doc.created_at)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        Self { doc, created_at }
    }
}

#[derive(Serialize, ToSchema)]
struct DocumentList {
    items: Vec<DocumentView>,
    /// How many documents the user has in all.
    total: i64,
}

#[derive(Serialize, ToSchema)]
struct DocumentDetail {
    #[serde(flatten)]
    doc: DocumentView,
    chunks: Vec<Chunk>,
}

fn not_found() -> ApiError {
    ApiError::not_found("document_not_found", "document not found")
}

/// A JSON body already encoded (possibly read back from the cache): answered
/// as `axum::Json` would answer it.
pub(super) struct JsonBody(pub Bytes);

impl IntoResponse for JsonBody {
    fn into_response(self) -> Response {
        ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], self.0).into_response()
    }
}

/// The body `axum::Json(value)` would send.
pub(super) fn encode<T: Serialize>(value: &T) -> Result<Bytes, ApiError> {
    serde_json::to_vec(value).map(Bytes::from).map_err(|e| ApiError::internal(format!("encoding a response: {e}")))
}

/// The caller's documents, newest first.
#[utoipa::path(
    get,
    path = "/documents",
    tag = "documents",
    operation_id = "list_documents",
    security(("bearer" = [])),
    params(Page),
    responses(
        (status = 200, description = "A page of documents", body = DocumentList),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 422, description = "`limit` or `offset` out of range (`invalid_query`)", body = ErrorBody),
        (status = 429, description = "Over the request rate (`Retry-After`)", body = ErrorBody),
        (status = 503, description = "The database is unavailable (`Retry-After`)", body = ErrorBody),
    ),
)]
async fn list(
    State(app): State<Arc<App>>,
    CurrentUser(user): CurrentUser,
    AppQuery(page): AppQuery<Page>,
) -> ApiResult<JsonBody> {
    let (limit, offset) = page.bounds(20, 100)?;
    let body = app
        .cache
        .serve(&user, Lookup::list(limit, offset), || async {
            let (docs, total) = app.db.list_documents(&user, limit, offset).await?;
            encode(&DocumentList { items: docs.into_iter().map(Into::into).collect(), total })
        })
        .await?;
    Ok(JsonBody(body))
}

/// A document with a page of its chunks, in order.
#[utoipa::path(
    get,
    path = "/documents/{id}",
    tag = "documents",
    operation_id = "get_document",
    security(("bearer" = [])),
    params(("id" = DocumentId, Path, description = "The document's id"), Page),
    responses(
        (status = 200, description = "The document", body = DocumentDetail),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such document of this user (`document_not_found`)", body = ErrorBody),
        (status = 422, description = "Not a valid id, or `limit`/`offset` out of range", body = ErrorBody),
        (status = 429, description = "Over the request rate (`Retry-After`)", body = ErrorBody),
        (status = 503, description = "The database is unavailable (`Retry-After`)", body = ErrorBody),
    ),
)]
async fn show(
    State(app): State<Arc<App>>,
    CurrentUser(user): CurrentUser,
    IdPath(id): IdPath<DocumentId>,
    AppQuery(page): AppQuery<Page>,
) -> ApiResult<JsonBody> {
    let (limit, offset) = page.bounds(50, 500)?;
    // A 404 is an error of the fill: never cached, so a document is found
    // as soon as its import has completed.
    let body = app
        .cache
        .serve(&user, Lookup::doc(&id, limit, offset), || async {
            let doc = app.db.document(&user, &id).await?.ok_or_else(not_found)?;
            let chunks = app.db.chunks(&user, &id, limit, offset).await?;
            encode(&DocumentDetail { doc: doc.into(), chunks })
        })
        .await?;
    Ok(JsonBody(body))
}

/// Deletes a document, its chunks and its search entries.
#[utoipa::path(
    delete,
    path = "/documents/{id}",
    tag = "documents",
    operation_id = "delete_document",
    security(("bearer" = [])),
    params(("id" = DocumentId, Path, description = "The document's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such document of this user (`document_not_found`)", body = ErrorBody),
        (status = 422, description = "Not a valid id (`invalid_id`)", body = ErrorBody),
        (status = 429, description = "Over the request rate (`Retry-After`)", body = ErrorBody),
        (status = 503, description = "The database is unavailable (`Retry-After`)", body = ErrorBody),
    ),
)]
async fn remove(
    State(app): State<Arc<App>>,
    CurrentUser(user): CurrentUser,
    IdPath(id): IdPath<DocumentId>,
) -> ApiResult<StatusCode> {
    if !app.db.delete_document(&user, &id).await? {
        return Err(not_found());
    }
    // Before the 204: a list the client sends after it must not come from
    // the cache filled before the delete.
    app.cache.invalidate(&user).await;
    Ok(StatusCode::NO_CONTENT)
}
