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
use crate::state::{Feature, FeatureStatus, TopologyReport};

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
    /// How Redis is deployed and what the last health probe saw of it
    /// (absent when Redis is not configured).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    topology: Option<TopologyReport>,
    /// Reads of shared state can go to a replica now (Sentinel, Cluster).
    replica_reads: bool,
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
            redis: RedisView {
                configured: redis.is_some(),
                connected: redis.is_some_and(|r| r.is_available()),
                topology: redis.map(|r| r.topology()),
                replica_reads: redis.is_some_and(|r| r.replica().is_some()),
            },
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
    text.push_str(&app.state_gauges().await);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// The `# HELP` and `# TYPE` lines of a metric of the catalog.
fn head(out: &mut String, name: &str) {
    use std::fmt::Write;
    if let Some(m) = crate::telemetry::CATALOG.iter().find(|m| m.name == name) {
        let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} {}", m.help, m.kind.as_str());
    }
}

impl App {
    /// Gauges that describe this app's present state, rendered at scrape
    /// time from the app itself (not the process-wide recorder, which
    /// several apps share in tests).
    async fn state_gauges(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        head(&mut out, "reportd_feature_backend");
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
        head(&mut out, "reportd_feature_degraded");
        for (feature, s) in &statuses {
            let _ =
                writeln!(out, "reportd_feature_degraded{{feature=\"{}\"}} {}", feature.as_str(), u8::from(s.degraded));
        }
        head(&mut out, "reportd_feature_refusing");
        for (feature, s) in &statuses {
            let _ =
                writeln!(out, "reportd_feature_refusing{{feature=\"{}\"}} {}", feature.as_str(), u8::from(s.refusing));
        }
        let redis_up = self.state.redis().is_some_and(|r| r.is_available());
        head(&mut out, "reportd_redis_up");
        let _ = writeln!(out, "reportd_redis_up {}", u8::from(redis_up));
        if let Some(redis) = self.state.redis() {
            let topology = redis.topology();
            head(&mut out, "reportd_redis_topology");
            let master = topology.master.as_deref().unwrap_or("");
            let _ = writeln!(out, "reportd_redis_topology{{mode=\"{}\",master=\"{master}\"}} 1", topology.mode);
            head(&mut out, "reportd_redis_nodes");
            for role in ["master", "replica"] {
                for healthy in [true, false] {
                    let n = topology.nodes.iter().filter(|n| n.role == role && n.healthy == healthy).count();
                    let _ = writeln!(out, "reportd_redis_nodes{{role=\"{role}\",healthy=\"{healthy}\"}} {n}");
                }
            }
            if let Some(covered) = topology.slots_covered {
                head(&mut out, "reportd_redis_cluster_slots_covered");
                let _ = writeln!(out, "reportd_redis_cluster_slots_covered {covered}");
            }
            head(&mut out, "reportd_redis_replica_reads_available");
            let _ = writeln!(out, "reportd_redis_replica_reads_available {}", u8::from(redis.replica().is_some()));
        }
        head(&mut out, "reportd_memory_keys");
        let _ = writeln!(out, "reportd_memory_keys {}", self.state.memory().len());
        head(&mut out, "reportd_imports_in_flight");
        let _ = writeln!(out, "reportd_imports_in_flight {}", self.imports.in_flight());
        // One COUNT over the staged uploads; a scrape never waits long on a
        // busy database (the gauge is left out then).
        let unfinished = tokio::time::timeout(std::time::Duration::from_secs(2), self.imports.unfinished()).await;
        match unfinished {
            Ok(Ok(n)) => {
                head(&mut out, "reportd_import_queue_length");
                let _ = writeln!(out, "reportd_import_queue_length {n}");
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "no import queue length for this scrape"),
            Err(_) => tracing::debug!("no import queue length for this scrape: the database is slow"),
        }
        let pool = self.db.pool();
        let (size, idle) = (pool.size(), pool.num_idle() as u32);
        head(&mut out, "reportd_db_pool_connections");
        let _ = writeln!(out, "reportd_db_pool_connections{{state=\"idle\"}} {idle}");
        let _ = writeln!(out, "reportd_db_pool_connections{{state=\"busy\"}} {}", size.saturating_sub(idle));
        head(&mut out, "reportd_db_pool_max_connections");
        let _ = writeln!(out, "reportd_db_pool_max_connections {}", pool.options().get_max_connections());
        head(&mut out, "reportd_build_info");
        let _ = writeln!(out, "reportd_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
        out
    }
}
