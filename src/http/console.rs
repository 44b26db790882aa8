//! The web console (SPEC §9): the files under `console/` at `/` and
//! `/assets/…`, embedded in the binary (rust-embed; a debug build reads them
//! from disk, so editing them needs no rebuild, a release build carries
//! them inside).
//!
//! Every answer carries a strict Content-Security-Policy: scripts, styles
//! and connections from this origin only, no inline script or style, no
//! frames. `index.html` names its assets with `?v={version}` (a digest of
//! every file), so those URLs are cached for a year and a new build is
//! fetched at once; anything else is revalidated with its `ETag`.

use std::sync::{Arc, OnceLock};

use axum::extract::{Path, Query};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rust_embed::Embed;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;
use crate::error::{ApiError, ErrorBody};

#[derive(Embed)]
#[folder = "console/"]
struct Assets;

/// The policy of every console answer. `img-src data:` is for the inline
/// SVG icons of the style sheet; nothing else leaves `'self'`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

pub fn router() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new().routes(routes!(index)).routes(routes!(asset))
}

/// A digest of every embedded file: the `?v=` of the asset URLs.
fn version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        let mut names: Vec<_> = Assets::iter().collect();
        names.sort();
        let mut h = Sha256::new();
        for name in names {
            if let Some(file) = Assets::get(&name) {
                h.update(name.as_bytes());
                h.update(file.metadata.sha256_hash());
            }
        }
        h.finalize()[..6].iter().map(|b| format!("{b:02x}")).collect()
    })
}

/// The web console's page.
#[utoipa::path(
    get,
    path = "/",
    tag = "console",
    operation_id = "console",
    responses(
        (status = 200, description = "The console (HTML)", body = String, content_type = "text/html"),
        (status = 304, description = "Not modified (`If-None-Match`)"),
    ),
)]
async fn index(headers: HeaderMap) -> Response {
    let Some(file) = Assets::get("index.html") else {
        return ApiError::not_found("not_found", "this build has no console").into_response();
    };
    let html = String::from_utf8_lossy(&file.data).replace("{{version}}", version());
    let etag = format!("\"{}\"", version());
    respond(&headers, html.into(), "text/html; charset=utf-8", &etag, "no-cache")
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AssetQuery {
    /// The console's version: with the current one, the answer is cached for a year.
    v: Option<String>,
}

/// A file of the web console (script, style sheet, icon …).
#[utoipa::path(
    get,
    path = "/assets/{*path}",
    tag = "console",
    operation_id = "console_asset",
    params(("path" = String, Path, description = "The file's path under the console's assets"), AssetQuery),
    responses(
        (status = 200, description = "The file", body = String, content_type = "application/octet-stream"),
        (status = 304, description = "Not modified (`If-None-Match`)"),
        (status = 404, description = "No such file", body = ErrorBody),
    ),
)]
async fn asset(Path(path): Path<String>, Query(q): Query<AssetQuery>, headers: HeaderMap) -> Response {
    // `index.html` is only served at `/`, where its version is filled in.
    let file = (path != "index.html").then(|| Assets::get(&path)).flatten();
    let Some(file) = file else {
        return ApiError::not_found("not_found", "no such console file").into_response();
    };
    let digest = file.metadata.sha256_hash();
    let etag = format!("\"{}\"", digest[..8].iter().map(|b| format!("{b:02x}")).collect::<String>());
    let cache = if q.v.as_deref() == Some(version()) { "public, max-age=31536000, immutable" } else { "no-cache" };
    let mime = file.metadata.mimetype();
    let mime = if mime.starts_with("text/") || mime.ends_with("javascript") || mime.ends_with("json") {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_owned()
    };
    // A release build's files are static: served without a copy.
    let body = match file.data {
        std::borrow::Cow::Borrowed(bytes) => bytes::Bytes::from_static(bytes),
        std::borrow::Cow::Owned(bytes) => bytes.into(),
    };
    respond(&headers, body, &mime, &etag, cache)
}

fn respond(request: &HeaderMap, body: bytes::Bytes, mime: &str, etag: &str, cache: &'static str) -> Response {
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { body.into_response() };
    let h = response.headers_mut();
    if !fresh {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(mime).unwrap_or(HeaderValue::from_static("application/octet-stream")),
        );
    }
    if let Ok(etag) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, etag);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_is_embedded_and_its_urls_carry_the_version() {
        let index = Assets::get("index.html").expect("console/index.html");
        let html = String::from_utf8_lossy(&index.data);
        assert!(html.contains("?v={{version}}"), "index.html names its assets with ?v={{{{version}}}}");
        assert!(!html.contains("<script>") && !html.contains(" style="), "no inline script or style");
        assert_eq!(version().len(), 12);
    }
}
