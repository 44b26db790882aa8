//! `/healthz`, `/readyz`, `/metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::app::App;
use crate::state::{Feature, FeatureStatus};

pub fn router() -> Router<Arc<App>> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).route("/metrics", get(metrics))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

#[derive(Serialize)]
struct RedisView {
    configured: bool,
    connected: bool,
}

#[derive(Serialize)]
struct DatabaseView {
    ok: bool,
}

#[derive(Serialize)]
struct Readiness {
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

async fn readyz(State(app): State<Arc<App>>) -> impl IntoResponse {
    let r = app.readiness().await;
    let code = if r.status == "unavailable" { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    (code, Json(r))
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    // Gauges that describe the present are set at scrape time.
    for feature in Feature::ALL {
        let s = app.state.feature_status(feature);
        for backend in ["redis", "memory"] {
            metrics::gauge!("reportd_feature_backend", "feature" => feature.as_str(), "backend" => backend)
                .set(if s.backend == backend { 1.0 } else { 0.0 });
        }
        metrics::gauge!("reportd_feature_degraded", "feature" => feature.as_str()).set(f64::from(u8::from(s.degraded)));
    }
    let redis_up = app.state.redis().is_some_and(|r| r.is_available());
    metrics::gauge!("reportd_redis_up").set(f64::from(u8::from(redis_up)));
    metrics::gauge!("reportd_memory_keys").set(app.state.memory().len() as f64);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::telemetry::metrics_handle().render())
}
