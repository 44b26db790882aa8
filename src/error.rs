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

/// The body of every error answer (and of an SSE `error` event).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody<'a> {
    /// What went wrong, for a human (at most 300 characters).
    detail: &'a str,
    /// A stable snake_case code, for a program (`invalid_body`, `unauthorized`, `file_too_large` …).
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
        let body = ErrorBody { detail: &bounded(&self.detail), code: &self.code };
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
        // These are the service's conditions, not bugs: the request may
        // succeed later (so 503 with Retry-After), and the operator must hear
        // of them (so they are logged as errors).
        use crate::db::{DatabaseTrouble, database_trouble};
        match database_trouble(&e) {
            Some(DatabaseTrouble::Full) => {
                tracing::error!(error = %e, "the database is out of space");
                Self::unavailable("storage_full", "the service is out of storage space, retry later")
                    .with_retry_after(30)
            }
            Some(DatabaseTrouble::Unavailable) => {
                tracing::error!(error = %e, "the database is unavailable");
                Self::unavailable("database_unavailable", "the database is unavailable, retry shortly")
                    .with_retry_after(5)
            }
            Some(DatabaseTrouble::Busy) => {
                tracing::warn!(error = %e, "the database was busy");
                Self::unavailable("database_busy", "the database is busy, retry shortly").with_retry_after(1)
            }
            None => Self::internal(format!("database: {e}")),
        }
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

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use axum::http::StatusCode;

    use super::ApiError;

    /// A database error with just a code, as either driver reports one.
    #[derive(Debug)]
    struct Coded(&'static str);

    impl std::fmt::Display for Coded {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "error {}", self.0)
        }
    }

    impl std::error::Error for Coded {}

    impl sqlx::error::DatabaseError for Coded {
        fn message(&self) -> &str {
            "a database error"
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn answer(e: sqlx::Error) -> (StatusCode, String, Option<u64>) {
        let e = ApiError::from(e);
        (e.status, e.code.into_owned(), e.retry_after)
    }

    fn coded(code: &'static str) -> (StatusCode, String, Option<u64>) {
        answer(sqlx::Error::Database(Box::new(Coded(code))))
    }

    #[test]
    fn database_conditions_are_503_with_retry_after_on_both_databases() {
        let full = (StatusCode::SERVICE_UNAVAILABLE, "storage_full".to_owned(), Some(30));
        let down = (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable".to_owned(), Some(5));
        let busy = (StatusCode::SERVICE_UNAVAILABLE, "database_busy".to_owned(), Some(1));
        // SQLite: SQLITE_FULL; SQLITE_BUSY, SQLITE_BUSY_SNAPSHOT, SQLITE_LOCKED.
        assert_eq!(coded("13"), full);
        for code in ["5", "517", "6"] {
            assert_eq!(coded(code), busy, "{code}");
        }
        // PostgreSQL: disk_full; out of memory, too many connections, a
        // broken connection, shutting down; serialization, deadlock, lock.
        assert_eq!(coded("53100"), full);
        for code in ["53200", "53300", "08006", "57P01", "57P03"] {
            assert_eq!(coded(code), down, "{code}");
        }
        for code in ["40001", "40P01", "55P03"] {
            assert_eq!(coded(code), busy, "{code}");
        }
        assert_eq!(answer(sqlx::Error::PoolTimedOut), down);
    }

    #[test]
    fn other_database_errors_are_plain_500s() {
        let internal = (StatusCode::INTERNAL_SERVER_ERROR, "internal_error".to_owned(), None);
        // SQLite: a constraint (2067 is UNIQUE) and a syntax error; PostgreSQL:
        // unique violation, undefined table, invalid text (a NUL).
        for code in ["2067", "1", "23505", "42P01", "22021"] {
            assert_eq!(coded(code), internal, "{code}");
        }
        assert_eq!(answer(sqlx::Error::RowNotFound), internal);
    }
}
