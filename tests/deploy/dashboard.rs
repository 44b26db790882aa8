//! The Grafana dashboard uses only metrics that exist: every `reportd_*`
//! name in its PromQL is in the `/metrics` of replicas that served real
//! traffic (see `nginx.rs`), except a few that only failures produce, which
//! must at least be recorded by the source.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use crate::harness::{read_repo_file, repo_file};

/// Counted only when something fails (Redis down, an instance dying, a
/// full upload slot, a model error, a cache error): not produced by the
/// traffic of a healthy test, so checked against the source.
const FAILURE_ONLY: [&str; 6] = [
    "reportd_state_fallback_total",
    "reportd_redis_breaker_trips_total",
    "reportd_import_takeovers_total",
    "reportd_uploads_refused_total",
    "reportd_llm_errors_total",
    "reportd_cache_errors_total",
];

/// redis_exporter's metrics (its documented names; the exporter does not
/// run here). `redis_stream_length` needs REDIS_EXPORTER_CHECK_SINGLE_STREAMS,
/// which docker-compose.yml sets.
const EXPORTER: [&str; 4] = ["redis_up", "redis_memory_used_bytes", "redis_connected_clients", "redis_stream_length"];

/// Every metric name in the dashboard's PromQL expressions.
pub fn dashboard_metrics() -> BTreeSet<String> {
    let dashboard: Value =
        serde_json::from_str(&read_repo_file("deploy/grafana/dashboards/reportd-rollout.json")).unwrap();
    let mut names = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            // Label values are quoted: drop them, then take identifiers.
            let unquoted: String = expr.split('"').step_by(2).collect::<Vec<_>>().join(" ");
            for word in unquoted.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
                if word.starts_with("reportd_") || word.starts_with("redis_") {
                    names.insert(word.to_owned());
                }
            }
        }
    }
    names
}

fn source_text(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            source_text(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

/// Checks the dashboard against `exported` (the Prometheus text of the
/// replicas after traffic).
pub fn check_dashboard_metrics(exported: &str) {
    let mut source = String::new();
    source_text(&repo_file("src"), &mut source);
    let is_histogram = |name: &str| exported.contains(&format!("# TYPE {name} histogram"));
    let in_output = |name: &str| {
        exported.lines().any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
    };
    let names = dashboard_metrics();
    assert!(names.len() >= 15, "{names:?}");
    for name in &names {
        if let Some(exporter) = EXPORTER.iter().find(|e| *e == name) {
            let _ = exporter;
            continue;
        }
        assert!(name.starts_with("reportd_"), "{name} is neither reportd's nor redis_exporter's");
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| is_histogram(b)))
            .unwrap_or(name);
        if FAILURE_ONLY.contains(&base) {
            assert!(source.contains(&format!("\"{base}\"")), "{base} is not recorded anywhere in src/");
        } else {
            assert!(in_output(name), "{name} is not in the replicas' /metrics after traffic");
        }
    }
    // The rollout's essentials are on the dashboard.
    for needed in [
        "reportd_feature_backend",
        "reportd_state_fallback_total",
        "reportd_http_request_duration_seconds_bucket",
        "reportd_ai_active_streams",
        "reportd_import_duration_seconds_bucket",
        "reportd_limit_decisions_total",
        "reportd_cache_requests_total",
    ] {
        assert!(names.contains(needed), "the dashboard shows {needed}");
    }
}

#[test]
fn the_dashboard_names_only_known_metrics() {
    // Without traffic: every reportd metric is at least in the source.
    let mut source = String::new();
    source_text(&repo_file("src"), &mut source);
    for name in dashboard_metrics().iter().filter(|n| n.starts_with("reportd_")) {
        let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        assert!(source.contains(base), "{name} is not in src/");
    }
}
