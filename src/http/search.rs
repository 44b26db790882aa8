//! `GET /documents/search?q=…&limit=…&document_ids=…`: full-text search over
//! the caller's own chunks (SPEC §5), through [`crate::search`]; answers go
//! through the read cache ([`crate::stores::cache`]).

use std::sync::Arc;

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::documents::{JsonBody, encode};
use super::extract::{AppQuery, CurrentUser};
use crate::app::App;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::ids::DocumentId;
use crate::search::{MAX_LIMIT, SearchHit, SearchIndex};
use crate::stores::cache::Lookup;

/// Longest accepted query, in characters.
pub const MAX_QUERY_CHARS: usize = 200;

/// Most document ids accepted in one `document_ids` filter.
pub const MAX_FILTER_IDS: usize = 50;

const DEFAULT_LIMIT: i64 = 10;

pub fn router() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new().routes(routes!(search))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Params {
    /// The query (Chinese or English), 1 to 200 characters.
    #[param(required = true, min_length = 1, max_length = 200)]
    q: Option<String>,
    /// How many hits (1 to 100, default 10).
    #[param(minimum = 1)]
    limit: Option<i64>,
    /// Comma-separated document ids (at most 50): search only these.
    document_ids: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = SearchResults)]
struct Results {
    items: Vec<Item>,
}

/// One hit as SPEC §5 shows it.
#[derive(Serialize, ToSchema)]
#[schema(as = SearchHit)]
struct Item {
    document_id: String,
    chunk_id: String,
    heading_path: String,
    snippet: String,
    score: f64,
}

impl From<SearchHit> for Item {
    fn from(h: SearchHit) -> Self {
        Self {
            document_id: h.document_id,
            chunk_id: h.chunk_id,
            heading_path: h.heading_path,
            snippet: h.snippet,
            score: h.score,
        }
    }
}

/// Full-text search over the caller's own chunks.
#[utoipa::path(
    get,
    path = "/documents/search",
    tag = "documents",
    operation_id = "search_documents",
    security(("bearer" = [])),
    params(Params),
    responses(
        (status = 200, description = "The best hits, best first", body = Results),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 422, description = "An empty or too long `q`, a `limit` out of range, or a bad id list", body = ErrorBody),
        (status = 429, description = "Over the request rate (`Retry-After`)", body = ErrorBody),
        (status = 503, description = "The database is unavailable (`Retry-After`)", body = ErrorBody),
    ),
)]
async fn search(
    State(app): State<Arc<App>>,
    CurrentUser(user): CurrentUser,
    AppQuery(params): AppQuery<Params>,
) -> ApiResult<JsonBody> {
    let q = params.q.as_deref().map(str::trim).unwrap_or_default();
    if q.is_empty() {
        return Err(ApiError::unprocessable("invalid_query", "q must not be empty"));
    }
    if q.chars().count() > MAX_QUERY_CHARS {
        return Err(ApiError::unprocessable(
            "invalid_query",
            format!("q must be at most {MAX_QUERY_CHARS} characters"),
        ));
    }
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT as i64).contains(&limit) {
        return Err(ApiError::unprocessable("invalid_query", format!("limit must be between 1 and {MAX_LIMIT}")));
    }
    let ids = params.document_ids.as_deref().map(parse_ids).transpose()?;
    let body = app
        .cache
        .serve(&user, Lookup::search(q, limit, ids.as_deref()), || async {
            let hits =
                SearchIndex::for_database(&app.db).search(&app.db, &user, q, ids.as_deref(), limit as usize).await?;
            encode(&Results { items: hits.into_iter().map(Item::from).collect() })
        })
        .await?;
    Ok(JsonBody(body))
}

/// The ids of a `document_ids` parameter: comma-separated, blanks around
/// them and empty entries (a trailing comma) ignored, repeats dropped. A
/// present but empty list is refused rather than read as "no filter", which
/// would widen a search the client meant to narrow.
fn parse_ids(raw: &str) -> Result<Vec<DocumentId>, ApiError> {
    let mut ids: Vec<DocumentId> = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let id = DocumentId::parse(part).map_err(|_| ApiError::invalid_id("every id in document_ids"))?;
        if !ids.contains(&id) {
            ids.push(id);
        }
        if ids.len() > MAX_FILTER_IDS {
            return Err(ApiError::unprocessable(
                "invalid_query",
                format!("document_ids may list at most {MAX_FILTER_IDS} ids"),
            ));
        }
    }
    if ids.is_empty() {
        return Err(ApiError::unprocessable("invalid_query", "document_ids must list at least one id"));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_split_trimmed_and_deduplicated() {
        let ids = parse_ids(" a, b,,a ,").unwrap();
        assert_eq!(ids.iter().map(DocumentId::as_str).collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn a_bad_id_is_invalid_id() {
        for bad in ["a:b", "a,b c", "*", &"x".repeat(65), "é"] {
            assert_eq!(parse_ids(bad).unwrap_err().code, "invalid_id", "{bad}");
        }
    }

    #[test]
    fn too_many_or_no_ids_are_refused() {
        let many: Vec<String> = (0..=MAX_FILTER_IDS).map(|i| format!("d{i}")).collect();
        assert_eq!(parse_ids(&many.join(",")).unwrap_err().code, "invalid_query");
        assert_eq!(parse_ids(&many[..MAX_FILTER_IDS].join(",")).unwrap().len(), MAX_FILTER_IDS);
        assert_eq!(parse_ids(" , ").unwrap_err().code, "invalid_query");
    }
}
