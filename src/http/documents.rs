//! `GET /documents`, `GET /documents/{id}`, `DELETE /documents/{id}`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::extract::{AppQuery, CurrentUser, IdPath};
use crate::app::App;
use crate::db::{Chunk, Document};
use crate::error::{ApiError, ApiResult};
use crate::ids::DocumentId;

pub fn router() -> Router<Arc<App>> {
    Router::new().route("/documents", get(list)).route("/documents/{id}", get(show).delete(remove))
}

#[derive(Deserialize)]
struct Page {
    limit: Option<i64>,
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

#[derive(Serialize)]
struct DocumentView {
    #[serde(flatten)]
    doc: Document,
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

#[derive(Serialize)]
struct DocumentList {
    items: Vec<DocumentView>,
    total: i64,
}

#[derive(Serialize)]
struct DocumentDetail {
    #[serde(flatten)]
    doc: DocumentView,
    chunks: Vec<Chunk>,
}

fn not_found() -> ApiError {
    ApiError::not_found("document_not_found", "document not found")
}

async fn list(
    State(app): State<Arc<App>>,
    CurrentUser(user): CurrentUser,
    AppQuery(page): AppQuery<Page>,
) -> ApiResult<Json<DocumentList>> {
    let (limit, offset) = page.bounds(20, 100)?;
    let (docs, total) = app.db.list_documents(&user, limit, offset).await?;
    Ok(Json(DocumentList { items: docs.into_iter().map(Into::into).collect(), total }))
}

async fn show(
    State(app): State<Arc<App>>,
    CurrentUser(user): CurrentUser,
    IdPath(id): IdPath<DocumentId>,
    AppQuery(page): AppQuery<Page>,
) -> ApiResult<Json<DocumentDetail>> {
    let (limit, offset) = page.bounds(50, 500)?;
    let doc = app.db.document(&user, &id).await?.ok_or_else(not_found)?;
    let chunks = app.db.chunks(&user, &id, limit, offset).await?;
    Ok(Json(DocumentDetail { doc: doc.into(), chunks }))
}

async fn remove(
    State(app): State<Arc<App>>,
    CurrentUser(user): CurrentUser,
    IdPath(id): IdPath<DocumentId>,
) -> ApiResult<StatusCode> {
    if app.db.delete_document(&user, &id).await? { Ok(StatusCode::NO_CONTENT) } else { Err(not_found()) }
}
