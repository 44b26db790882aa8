//! The API reference: `GET /openapi.json`, an OpenAPI 3.1 document generated
//! from the handlers' `#[utoipa::path]` annotations as [`super::api`] builds
//! the router, and `GET /docs`, Swagger UI over it.
//!
//! Swagger UI's files are vendored into the binary (utoipa-swagger-ui's
//! `vendored` feature) and its configuration names no other origin, so the
//! page works with no network. Its online validator badge, which would load
//! an image from swagger.io, is turned off.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ObjectBuilder, RefOr, Schema, Type};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::{Config, SwaggerUi};

use crate::app::App;
use crate::ids::{DocumentId, SessionKind, StreamId, TaskId};
use crate::state::FeatureStatus;

/// The name of the security scheme every authenticated operation requires.
pub const BEARER: &str = "bearer";

/// Where Swagger UI is served.
pub const DOCS_PATH: &str = "/docs";

/// Where the document is served.
pub const DOCUMENT_PATH: &str = "/openapi.json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "reportd",
        description = "The backend of an AI report-writing application: accounts, document import, \
            search, and three AI assistants answering over Server-Sent Events.\n\n\
            Every error answers `{\"detail\", \"code\"}` (schema `Error`). Authenticated operations need \
            `Authorization: Bearer <JWT>` (from `POST /auth/login`); a missing, malformed, expired or \
            wrongly signed token answers 401. Over a rate limit: 429 with `Retry-After`."
    ),
    modifiers(&BearerScheme),
    // The ids and kinds of path parameters, which the operations refer to.
    components(
        schemas(TaskId, DocumentId, StreamId, SessionKind, super::ai::StreamEvent),
        responses(super::ai::EventStream),
    ),
    tags(
        (name = "auth", description = "Accounts and tokens"),
        (name = "imports", description = "Uploading documents and following their import"),
        (name = "documents", description = "Imported documents and full-text search over them"),
        (name = "ai", description = "The AI assistants (Server-Sent Events), their streams and sessions"),
        (name = "admin", description = "Run-time feature flags (admins only)"),
        (name = "ops", description = "Liveness, readiness and metrics"),
        (name = "console", description = "The built-in web console"),
        (name = "docs", description = "This reference"),
    )
)]
struct ApiDoc;

/// Adds the HTTP bearer (JWT) scheme the operations refer to.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("An access token from `POST /auth/login` (HS256, claims `sub` and `exp`)."))
                    .build(),
            ),
        );
    }
}

/// The document's fixed part (information, security scheme, tags), which
/// the routes' operations are merged into.
pub fn base() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The complete document, as served.
pub fn document() -> utoipa::openapi::OpenApi {
    // The upload body limit is a layer of the upload routes only; the
    // document is the same whatever it is.
    let (_, mut doc) = super::api(0).split_for_parts();
    // axum writes a catch-all segment `{*path}`; OpenAPI knows only `{path}`.
    doc.paths.paths =
        std::mem::take(&mut doc.paths.paths).into_iter().map(|(path, item)| (path.replace("{*", "{"), item)).collect();
    doc
}

/// [`document`] as JSON, computed once: it depends on the code only.
fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| serde_json::to_string(&document()).expect("the OpenAPI document serialises"))
}

pub(super) fn router() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new().routes(routes!(openapi_json))
}

/// Swagger UI at [`DOCS_PATH`] (`/docs` redirects to `/docs/`), reading
/// [`DOCUMENT_PATH`].
pub(super) fn swagger_ui() -> axum::Router<Arc<App>> {
    let config = Config::from(DOCUMENT_PATH)
        .try_it_out_enabled(true)
        .persist_authorization(false)
        .display_operation_id(true)
        // "none" turns the validator badge off: it would send the document
        // to, and load an image from, validator.swagger.io.
        .validator_url("none");
    SwaggerUi::new(DOCS_PATH).config(config).into()
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "docs",
    operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI 3.1 document of this service", body = Object)),
)]
async fn openapi_json() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document_json())
}

/// `GET /healthz`'s answer. The handler builds it as JSON; this type only
/// documents it.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct Health {
    /// Always `ok`: the process answers.
    #[schema(examples("ok"))]
    status: String,
}

/// A feature's state in `GET /readyz`. The type is `crate::state`'s; its
/// schema is written here, next to the rest of the document.
impl PartialSchema for FeatureStatus {
    fn schema() -> RefOr<Schema> {
        let string = |description: &str, values: &[&str]| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(description))
                .enum_values(Some(values.iter().copied()))
        };
        let boolean =
            |description: &str| ObjectBuilder::new().schema_type(Type::Boolean).description(Some(description));
        ObjectBuilder::new()
            .property("backend", string("Where reads are served from now", &["redis", "memory"]))
            .property("degraded", boolean("Serving from a fallback (or refusing) because Redis is down"))
            .property(
                "scope",
                string(
                    "`shared` when every instance sees the same state, `instance` otherwise",
                    &["shared", "instance"],
                ),
            )
            .property("refusing", boolean("Requests are refused (503) under `REDIS_FALLBACK=error`"))
            .required("backend")
            .required("degraded")
            .required("scope")
            .required("refusing")
            .into()
    }
}

impl ToSchema for FeatureStatus {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("FeatureStatus")
    }
}
