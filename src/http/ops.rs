//! `/healthz`, `/readyz`, `/metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;
use crate::state::{Feature, FeatureStatus};

pub fn router() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz)).routes(routes!(metrics))
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "ops",
    operation_id = "healthz",
    responses((status = 200, description = "Alive", body = super::openapi::Health)),
)]
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

#[derive(Serialize, ToSchema)]
struct RedisView {
    configured: bool,
    connected: bool,
}

#[derive(Serialize, ToSchema)]
struct DatabaseView {
    ok: bool,
}

#[derive(Serialize, ToSchema)]
struct Readiness {
    #[schema(value_type = String, examples("ready", "degraded", "unavailable"))]
    status: &'static str,
    redis: RedisView,
    database: DatabaseView,
    features: BTreeMap<&'static str, FeatureStatus>,
}

impl App {
    async fn readiness(&self) -> Readiness {
        let database_ok = self.db.ping().await;
        let features: BTreeMap<_, _> =
            Feature::ALL.into_iter().map(|f| (f.as_str(), self.state.feature_status(f))).collect();
        let status = if !database_ok || features.values().any(|f| f.refusing) {
            "unavailable"
        } else if features.values().any(|f| f.degraded) {
            "degraded"
        } else {
            "ready"
        };
        let redis = self.state.redis();
        Readiness {
            status,
            redis: RedisView { configured: redis.is_some(), connected: redis.is_some_and(|r| r.is_available()) },
            database: DatabaseView { ok: database_ok },
            features,
        }
    }
}

/// Readiness: `ready`, `degraded` (some feature serving from its fallback)
/// or `unavailable`.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    operation_id = "readyz",
    responses(
        (status = 200, description = "Ready or degraded", body = Readiness),
        (status = 503, description = "Unavailable: the database is unreachable, or a feature refuses requests \
            (the body is the same readiness report, not an `Error`)", body = Readiness),
    ),
)]
async fn readyz(State(app): State<Arc<App>>) -> impl IntoResponse {
    let r = app.readiness().await;
    let code = if r.status == "unavailable" { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    (code, Json(r))
}

/// Prometheus metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    operation_id = "metrics",
    responses((status = 200, description = "The Prometheus text format", body = String, content_type = "text/plain; version=0.0.4")),
)]
async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    let mut text = crate::telemetry::metrics_handle().render();
    text.push_str(&app.state_gauges());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

impl App {
    /// Gauges that describe this app's present state, rendered at scrape
    /// time from the app itself (not the process-wide recorder, which
    /// several apps share in tests).
    fn state_gauges(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(out, "# TYPE reportd_feature_backend gauge");
        let statuses: Vec<_> = Feature::ALL.into_iter().map(|f| (f, self.state.feature_status(f))).collect();
        for (feature, s) in &statuses {
            for backend in ["redis", "memory"] {
                let v = u8::from(s.backend == backend);
                let _ = writeln!(
                    out,
                    "reportd_feature_backend{{feature=\"{}\",backend=\"{backend}\"}} {v}",
                    feature.as_str()
                );
            }
        }
        let _ = writeln!(out, "# TYPE reportd_feature_degraded gauge");
        for (feature, s) in &statuses {
            let _ =
                writeln!(out, "reportd_feature_degraded{{feature=\"{}\"}} {}", feature.as_str(), u8::from(s.degraded));
        }
        let redis_up = self.state.redis().is_some_and(|r| r.is_available());
        let _ = writeln!(out, "# TYPE reportd_redis_up gauge\nreportd_redis_up {}", u8::from(redis_up));
        let _ = writeln!(out, "# TYPE reportd_memory_keys gauge\nreportd_memory_keys {}", self.state.memory().len());
        out
    }
}
