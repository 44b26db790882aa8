//! The one error type of the HTTP layer.
//!
//! Every failure a client sees is an [`ApiError`]: a status, a stable
//! snake_case `code` and a human `detail`, rendered as
//! `{"detail": …, "code": …}`. Internal errors are logged with their cause and
//! answered with a generic text, so nothing internal leaks to a client.

use std::borrow::Cow;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Cow<'static, str>,
    pub detail: Cow<'static, str>,
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    detail: &'a str,
    code: &'a str,
}

type Text = Cow<'static, str>;

impl ApiError {
    pub fn new(status: StatusCode, code: impl Into<Text>, detail: impl Into<Text>) -> Self {
        Self { status, code: code.into(), detail: detail.into(), retry_after: None }
    }

    pub fn bad_request(code: impl Into<Text>, detail: impl Into<Text>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }
    pub fn unauthorized(detail: impl Into<Text>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }
    pub fn forbidden(detail: impl Into<Text>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }
    pub fn not_found(code: impl Into<Text>, detail: impl Into<Text>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, detail)
    }
    pub fn conflict(code: impl Into<Text>, detail: impl Into<Text>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }
    pub fn unprocessable(code: impl Into<Text>, detail: impl Into<Text>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
    }
    pub fn unavailable(code: impl Into<Text>, detail: impl Into<Text>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
    }
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// An id in a path or body that does not match SPEC §3.
    pub fn invalid_id(what: &str) -> Self {
        Self::unprocessable("invalid_id", format!("{what} must be 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'"))
    }

    /// Logs the real cause and answers a 500 that reveals nothing of it.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "internal server error")
    }
}

/// Characters of a `detail` sent to a client. Details can quote input (a
/// JSON error names the value it could not read): a client's megabyte must
/// not come back as a megabyte.
pub const MAX_DETAIL_CHARS: usize = 300;

/// `detail` cut to [`MAX_DETAIL_CHARS`], control characters replaced.
fn bounded(detail: &str) -> Cow<'_, str> {
    let clean = |c: char| if c.is_control() { ' ' } else { c };
    if detail.chars().count() <= MAX_DETAIL_CHARS && !detail.chars().any(char::is_control) {
        return Cow::Borrowed(detail);
    }
    let mut out: String = detail.chars().take(MAX_DETAIL_CHARS).map(clean).collect();
    if detail.chars().count() > MAX_DETAIL_CHARS {
        out.push('…');
    }
    Cow::Owned(out)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body { detail: &bounded(&self.detail), code: &self.code };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        // A full disk (SQLite `SQLITE_FULL`, PostgreSQL class 53 "insufficient
        // resources") is the service's condition, not a bug: the request
        // may succeed later, and the operator must hear of it.
        if let sqlx::Error::Database(d) = &e {
            let code = d.code().unwrap_or_default();
            if code == "13" || code.starts_with("53") {
                tracing::error!(error = %e, "the database is out of space or resources");
                return Self::unavailable("storage_full", "the service is out of storage space, retry later")
                    .with_retry_after(30);
            }
        }
        Self::internal(format!("database: {e}"))
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        Self::internal(format!("{e:#}"))
    }
}

impl From<crate::state::StateError> for ApiError {
    fn from(e: crate::state::StateError) -> Self {
        use crate::state::StateError;
        match e {
            StateError::Unavailable { feature } => Self::unavailable(
                "state_unavailable",
                format!("{} is temporarily unavailable, retry shortly", feature.label()),
            )
            .with_retry_after(1),
            StateError::ReadOnly { feature } => Self::unavailable(
                "state_read_only",
                format!("{} is read-only while its store recovers, retry shortly", feature.label()),
            )
            .with_retry_after(1),
            StateError::Internal(msg) => Self::internal(msg),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
