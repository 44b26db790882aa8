//! Extractors that answer every malformed request with a JSON [`ApiError`].

use std::sync::Arc;

use axum::extract::rejection::{FormRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::app::App;
use crate::error::ApiError;
use crate::ids::{ParseId, UserId};
use crate::keys::LimitSubject;
use crate::stores::limits::RateLimit;

/// The user of a request: the `sub` of a valid bearer token. Extracting
/// it also counts the request against the user's request rate
/// (`LIMIT_REQUESTS_PER_SEC`).
#[derive(Debug, Clone)]
pub struct CurrentUser(pub UserId);

impl FromRequestParts<Arc<App>> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let user = authenticate(parts, app).await?;
        app.limits.check(RateLimit::Requests, &LimitSubject::User(user.clone())).await?;
        Ok(CurrentUser(user))
    }
}

/// The user of a status poll: authenticated like [`CurrentUser`], but the
/// poll handler counts the poll against `LIMIT_POLLS_PER_SEC` itself, at
/// the same time as it reads the task (one round trip to Redis instead of
/// two on the most frequent request).
#[derive(Debug, Clone)]
pub struct PollingUser(pub UserId);

impl FromRequestParts<Arc<App>> for PollingUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        authenticate(parts, app).await.map(PollingUser)
    }
}

/// The user whose valid bearer token the request carries.
async fn authenticate(parts: &Parts, app: &App) -> Result<UserId, ApiError> {
    let header =
        parts.headers.get(AUTHORIZATION).ok_or_else(|| ApiError::unauthorized("missing Authorization header"))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(|| ApiError::unauthorized("expected 'Authorization: Bearer <token>'"))?;
    // A token of an account that does not exist (deleted, or a forged
    // token for a user who never was) answers exactly as a bad signature
    // does, so that it reveals nothing.
    let invalid = || ApiError::unauthorized("invalid or expired token");
    let user = app.tokens.verify(token).ok_or_else(invalid)?;
    if !app.accounts.trusted(&user) {
        if app.db.user_by_id(&user).await?.is_none() {
            return Err(invalid());
        }
        app.accounts.confirm(&user);
    }
    Ok(user)
}

/// The client's IP address: the peer's, or what a trusted proxy says in
/// `X-Forwarded-For` (see [`crate::net`]).
pub struct ClientIp(pub std::net::IpAddr);

impl FromRequestParts<Arc<App>> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip())
            .ok_or_else(|| ApiError::internal("the peer address is not known"))?;
        Ok(ClientIp(app.config.trusted_proxies.client_ip(peer, &parts.headers)))
    }
}

/// A path made of one id (`/imports/{task_id}`), parsed per SPEC §3.
pub struct IdPath<T>(pub T);

impl<S: Send + Sync, T: ParseId> FromRequestParts<S> for IdPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state).await?;
        T::parse_id(&raw).map(IdPath).map_err(|_| ApiError::invalid_id(T::WHAT))
    }
}

/// A JSON object body (`axum::Json` with JSON errors). Anything but an
/// object at the top is refused: serde would read an array as a struct's
/// fields in order (`["alice","pw"]` as a login), an ambiguity no client
/// means.
pub struct AppJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for AppJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let mime = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        if !(mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))) {
            // The body is read (within the body limit) before refusing it:
            // answering while the client still sends makes hyper close the
            // connection, and the client sees a reset instead of the 415.
            let _ = axum::body::Bytes::from_request(req, state).await;
            return Err(JsonRejection::MissingJsonContentType(Default::default()).into());
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::new(e.status(), "invalid_body", e.body_text()))?;
        json_object(&bytes).map(AppJson)
    }
}

/// `bytes` as a `T`, if they hold a JSON object.
fn json_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some() && first != Some(&b'{') {
        return Err(ApiError::unprocessable("invalid_body", "the body must be a JSON object"));
    }
    let axum::Json(value) = axum::Json::<T>::from_bytes(bytes)?;
    Ok(value)
}

/// `axum::extract::Query` with JSON errors.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct AppQuery<T>(pub T);

/// `axum::extract::Path` with JSON errors.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct AppPath<T>(pub T);

/// A body sent as JSON or as an HTML form (FastAPI's OAuth2 password form).
pub struct JsonOrForm<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequest<S> for JsonOrForm<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        if content_type.starts_with("application/x-www-form-urlencoded") {
            let axum::Form(value) = axum::Form::<T>::from_request(req, state).await?;
            Ok(Self(value))
        } else if content_type.starts_with("application/json") {
            let AppJson(value) = AppJson::<T>::from_request(req, state).await?;
            Ok(Self(value))
        } else {
            Err(ApiError::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send application/json or application/x-www-form-urlencoded",
            ))
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => Self::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected Content-Type: application/json",
            ),
            JsonRejection::JsonSyntaxError(_) => Self::bad_request("invalid_json", r.body_text()),
            JsonRejection::JsonDataError(_) => Self::unprocessable("invalid_body", r.body_text()),
            _ => Self::new(r.status(), "invalid_body", r.body_text()),
        }
    }
}

impl From<FormRejection> for ApiError {
    fn from(r: FormRejection) -> Self {
        Self::new(r.status(), "invalid_body", r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::unprocessable("invalid_query", r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::unprocessable("invalid_path", r.body_text())
    }
}
