//! The HTTP interface: one module per resource, each with a `router()`,
//! merged here with the middleware every request passes through.
//!
//! Every route is registered through utoipa-axum's `OpenApiRouter` with
//! `routes!`, which takes the path and methods from the handler's
//! `#[utoipa::path]` annotation: the router and the OpenAPI document
//! (`GET /openapi.json`, see [`openapi`]) come from that one place and
//! cannot disagree.

mod admin;
mod ai;
mod auth;
mod console;
mod documents;
pub mod extract;
mod imports;
pub mod openapi;
mod ops;
mod search;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;

use crate::app::App;
use crate::error::ApiError;

pub use auth::{check_password, check_username};

/// Every route of the service but Swagger UI's, with its documentation.
/// `max_upload_bytes` sets the body limit of the upload routes (it is not
/// part of the document).
pub fn api(max_upload_bytes: usize) -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::with_openapi(openapi::base())
        .merge(auth::router())
        .merge(ai::router())
        .merge(imports::router(max_upload_bytes))
        .merge(documents::router())
        .merge(search::router())
        .merge(admin::router())
        .merge(ops::router())
        .merge(console::router())
        .merge(openapi::router())
}

pub fn router(app: Arc<App>) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let (api, _) = api(app.config.max_upload_bytes()).split_for_parts();
    api.merge(openapi::swagger_ui())
        .fallback(|| async { ApiError::not_found("not_found", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this endpoint")
        })
        .layer(middleware::from_fn(record_metrics))
        // A request body (an upload) that pauses longer than this fails:
        // a slow client cannot hold an upload slot forever.
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(std::time::Duration::from_secs(
            app.config.http_body_timeout_seconds,
        )))
        .layer(CatchPanicLayer::custom(|_: Box<dyn std::any::Any + Send>| {
            ApiError::internal("a request handler panicked").into_response()
        }))
        // Every log line of a request carries its id (the proxy's
        // `x-request-id` when plain, else a fresh one: see `edge`) and its
        // route template, in text and JSON logs alike.
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
            let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str());
            tracing::info_span!("request", request_id = %id, method = %req.method(), route = %route)
        }))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .layer(middleware::from_fn(edge))
        .with_state(app)
}

/// The longest request target the service reads. Longer ones are refused
/// with 414 and a JSON body, before hyper's own (bodiless) limit is reached.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// The largest header block (names, values and their separators) the
/// service reads, refused past this with 431 and a JSON body. hyper's read
/// buffer (`max_buf_size`, set in `app::serve`) is above this and
/// [`MAX_URI_BYTES`] together, so that hyper's bodiless 431 only answers
/// heads far beyond both.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The outermost step: refuses an over-long URI (414) or an over-large
/// header block (431) with a JSON body, drops a client's `x-request-id`
/// unless it is short and plain (a fresh one is made then), and marks every
/// response `X-Content-Type-Options: nosniff`.
async fn edge(mut req: Request, next: Next) -> Response {
    let uri = req.uri();
    let uri_len = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    // Each header line is `name: value\r\n` on the wire.
    let header_len: usize = req.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
    let refused = if uri_len > MAX_URI_BYTES {
        Some(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request URI must be at most {MAX_URI_BYTES} bytes"),
        ))
    } else if header_len > MAX_HEADER_BYTES {
        Some(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the request headers must be at most {MAX_HEADER_BYTES} bytes in all"),
        ))
    } else {
        None
    };
    if let Some(error) = refused {
        let mut response = error.into_response();
        response.headers_mut().insert("x-content-type-options", axum::http::HeaderValue::from_static("nosniff"));
        return response;
    }
    let plain = |v: &axum::http::HeaderValue| {
        let b = v.as_bytes();
        !b.is_empty() && b.len() <= 64 && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
    };
    if req.headers().get("x-request-id").is_some_and(|v| !plain(v)) {
        req.headers_mut().remove("x-request-id");
    }
    let mut response = next.run(req).await;
    response.headers_mut().insert("x-content-type-options", axum::http::HeaderValue::from_static("nosniff"));
    response
}

/// A method as a metric label: the standard ones, else `other` (a client
/// can send any token as a method; labels must not grow with them).
fn method_label(method: &axum::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

/// Counts requests and their latency per route template (never per raw
/// path, which would let clients create unbounded label values).
async fn record_metrics(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_owned();
    let method = method_label(req.method());
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("reportd_http_requests_total", "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("reportd_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}
