//! Logging and the Prometheus recorder, each set up once per process.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets of every `*_seconds` histogram: from a fast request to a long
/// AI answer.
const SECONDS_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

use crate::config::LogFormat;

/// Installs the tracing subscriber (`RUST_LOG`, default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,tower_http=info,redis=error"));
    // Colours only for a person at a terminal: a log file or a container's
    // log must not be full of escape codes.
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// A metric's kind, as Prometheus calls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// One metric of `/metrics`: its name, kind, label names and meaning.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn m(name: &'static str, kind: Kind, labels: &'static [&'static str], help: &'static str) -> Metric {
    Metric { name, kind, labels, help }
}

use Kind::{Counter, Gauge, Histogram};

/// Every metric the service exposes. It is the source of the `# HELP`
/// lines, of the zeros that unlabelled counters start from (so that a rate
/// is defined before the first event), and of the README's metrics table,
/// which a test keeps equal to it; another test checks that `/metrics`
/// shows nothing that is not here. Label values always come from closed
/// sets (route templates, feature names, outcomes): never an id or a raw
/// path.
pub const CATALOG: &[Metric] = &[
    // HTTP
    m(
        "reportd_http_requests_total",
        Counter,
        &["method", "route", "status"],
        "HTTP requests answered, by route template (`unmatched` for unknown paths) and status.",
    ),
    m(
        "reportd_http_request_duration_seconds",
        Histogram,
        &["method", "route"],
        "Time to answer an HTTP request (to the response head; a stream's body is not included).",
    ),
    m(
        "reportd_http_connections_refused_total",
        Counter,
        &[],
        "Connections closed at once because `MAX_CONNECTIONS` were open.",
    ),
    // Redis
    m(
        "reportd_redis_up",
        Gauge,
        &[],
        "1 when Redis is configured and its circuit breaker is closed (commands are sent), else 0.",
    ),
    m(
        "reportd_redis_breaker_trips_total",
        Counter,
        &[],
        "Times the circuit breaker opened (a timeout or a connection error); it closes when a probe succeeds.",
    ),
    m(
        "reportd_redis_topology",
        Gauge,
        &["mode", "master"],
        "1, labelled with how Redis is deployed (`single`, `sentinel`, `cluster`) and the master in use (single, sentinel).",
    ),
    m(
        "reportd_redis_nodes",
        Gauge,
        &["role", "healthy"],
        "Redis servers by role (`master`, `replica`) and health, as the last probe saw them (Sentinel, Cluster).",
    ),
    m(
        "reportd_redis_cluster_slots_covered",
        Gauge,
        &[],
        "Hash slots served by a healthy master (16384 when the cluster is whole; Cluster only).",
    ),
    m(
        "reportd_redis_failovers_seen_total",
        Counter,
        &[],
        "Changes of master this instance followed (Sentinel: a new master address; Cluster: a new set of masters).",
    ),
    m(
        "reportd_redis_replica_reads_available",
        Gauge,
        &[],
        "1 when reads can go to a replica while no master is reachable (Sentinel, Cluster, a replica answering).",
    ),
    m(
        "reportd_redis_command_duration_seconds",
        Histogram,
        &["op"],
        "Latency of one Redis command or script, by operation (`get`, `set`, `stream_add`, the atomic updates' names, …).",
    ),
    m(
        "reportd_redis_errors_total",
        Counter,
        &["op", "kind"],
        "Redis commands that failed, by operation and kind (`timeout`, `unavailable`, `command`, `circuit_open`).",
    ),
    // The state layer
    m(
        "reportd_state_op_duration_seconds",
        Histogram,
        &["feature", "op", "backend"],
        "Latency of a state read or write, by feature, `read`/`write` and the backend that served it.",
    ),
    m(
        "reportd_state_fallback_total",
        Counter,
        &["feature", "op"],
        "Reads and writes served from memory because Redis was wanted but down.",
    ),
    m(
        "reportd_state_replica_reads_total",
        Counter,
        &["feature"],
        "Reads served by a Redis replica because no master was reachable and memory did not have the answer.",
    ),
    m(
        "reportd_feature_backend",
        Gauge,
        &["feature", "backend"],
        "1 for the backend (`redis` or `memory`) that serves each feature now.",
    ),
    m(
        "reportd_feature_degraded",
        Gauge,
        &["feature"],
        "1 when a feature is served from its fallback (or refused) because Redis is down.",
    ),
    m(
        "reportd_feature_refusing",
        Gauge,
        &["feature"],
        "1 when a feature refuses requests (503) under `REDIS_FALLBACK=error`.",
    ),
    m("reportd_memory_keys", Gauge, &[], "Keys held by the process-memory backend."),
    m(
        "reportd_memory_evictions_total",
        Counter,
        &[],
        "Keys evicted from process memory because `MEMORY_MAX_KEYS` was reached.",
    ),
    // Imports
    m("reportd_imports_submitted_total", Counter, &["format"], "Uploads accepted as import tasks, by detected format."),
    m("reportd_imports_total", Counter, &["outcome"], "Imports ended, `completed` or `failed`."),
    m(
        "reportd_import_attempts_total",
        Counter,
        &[],
        "Times a worker started a job (more than the imports when a worker was lost and the job ran again).",
    ),
    m("reportd_import_takeovers_total", Counter, &[], "Jobs taken over from an instance that stopped or died."),
    m(
        "reportd_import_duration_seconds",
        Histogram,
        &["format", "outcome"],
        "Time from a worker's start on a job to its end, by format and outcome.",
    ),
    m("reportd_import_parse_failures_total", Counter, &["reason"], "Files that could not be parsed, by reason."),
    m(
        "reportd_parse_workers_killed_total",
        Counter,
        &["reason"],
        "Parse workers (child processes) killed or lost: over time, over memory, crashed.",
    ),
    m(
        "reportd_import_queue_length",
        Gauge,
        &[],
        "Imports accepted and not ended, on every instance (queued or running; from the database).",
    ),
    m("reportd_imports_in_flight", Gauge, &[], "Imports this instance is running now."),
    m(
        "reportd_uploads_refused_total",
        Counter,
        &[],
        "Uploads refused with 503 because `MAX_UPLOADS_IN_FLIGHT` were being received.",
    ),
    // Assistants and streams
    m("reportd_ai_active_streams", Gauge, &["kind"], "Answers being generated on this instance, by assistant."),
    m(
        "reportd_ai_stream_writes_total",
        Counter,
        &[],
        "Batches of answer events written to Redis (for resuming on any instance).",
    ),
    m(
        "reportd_ai_tool_calls_total",
        Counter,
        &["tool"],
        "Tool calls the model made (`web_search`, `search_documents`, `unknown`).",
    ),
    m("reportd_llm_requests_total", Counter, &["outcome"], "Model calls, by outcome."),
    m(
        "reportd_llm_errors_total",
        Counter,
        &["code"],
        "Model calls that failed, by error code (`llm_timeout`, `llm_unavailable`, …).",
    ),
    m("reportd_llm_tokens_total", Counter, &["kind"], "Tokens the model reported, `prompt` or `completion`."),
    m("reportd_llm_first_token_seconds", Histogram, &[], "Time from sending a model request to its first token."),
    m("reportd_llm_duration_seconds", Histogram, &[], "Time of a whole model call."),
    m("reportd_web_search_duration_seconds", Histogram, &[], "Time of one web search (SearXNG) request."),
    // Limits, cache, accounts
    m(
        "reportd_limit_decisions_total",
        Counter,
        &["limit", "outcome"],
        "Rate-limit and concurrency decisions, by limit and `allowed`/`rejected`.",
    ),
    m(
        "reportd_cache_requests_total",
        Counter,
        &["endpoint", "outcome"],
        "Cached reads (`list`, `doc`, `search`), by `hit`, `miss` or `bypass`.",
    ),
    m("reportd_cache_errors_total", Counter, &[], "Cache reads or writes that failed (the database answered instead)."),
    m(
        "reportd_password_hash_rejected_total",
        Counter,
        &[],
        "Logins or registrations refused because the password-hashing queue was full.",
    ),
    // The database and the build
    m("reportd_db_pool_connections", Gauge, &["state"], "Database pool connections, `idle` or `busy`."),
    m("reportd_db_pool_max_connections", Gauge, &[], "The pool's maximum (8 on SQLite, 16 on PostgreSQL)."),
    m("reportd_build_info", Gauge, &["version"], "1, labelled with the running version."),
];

/// The process-wide Prometheus recorder. The recorder can be installed only
/// once per process, and tests start several apps in one process.
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = || {
            // Durations are histograms (with buckets), so that they can be
            // aggregated across instances; the exporter's default would be
            // per-instance summaries.
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .expect("the buckets are not empty")
        };
        let handle = builder().install_recorder().unwrap_or_else(|_| builder().build_recorder().handle());
        for metric in CATALOG {
            match metric.kind {
                Kind::Counter => {
                    metrics::describe_counter!(metric.name, metric.help);
                    if metric.labels.is_empty() {
                        metrics::counter!(metric.name).absolute(0);
                    }
                }
                Kind::Gauge => metrics::describe_gauge!(metric.name, metric.help),
                Kind::Histogram => metrics::describe_histogram!(metric.name, metric.help),
            }
        }
        handle
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's metrics table is the catalog: the same metrics, kinds
    /// and label names, in the same order.
    #[test]
    fn the_readme_table_is_the_catalog() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let section = readme.split("### Metrics\n").nth(1).expect("README has a Metrics section");
        let rows: Vec<(String, String, Vec<String>)> = section
            .lines()
            .skip_while(|l| !l.starts_with("| `reportd_"))
            .take_while(|l| l.starts_with("| `reportd_"))
            .map(|l| {
                let cells: Vec<&str> = l.split(" | ").collect();
                let labels =
                    cells[2].split(", ").filter(|c| *c != "—").map(|c| c.trim_matches('`').to_owned()).collect();
                (cells[0].trim_start_matches("| ").trim_matches('`').to_owned(), cells[1].to_owned(), labels)
            })
            .collect();
        let catalog: Vec<(String, String, Vec<String>)> = CATALOG
            .iter()
            .map(|m| (m.name.to_owned(), m.kind.as_str().to_owned(), m.labels.iter().map(|l| l.to_string()).collect()))
            .collect();
        assert_eq!(rows, catalog);
    }

    #[test]
    fn names_are_unique_and_follow_the_conventions() {
        let mut names: Vec<&str> = CATALOG.iter().map(|m| m.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CATALOG.len(), "a metric is listed twice");
        for m in CATALOG {
            assert!(m.name.starts_with("reportd_"), "{}", m.name);
            match m.kind {
                Kind::Counter => assert!(m.name.ends_with("_total"), "{}", m.name),
                Kind::Histogram => assert!(m.name.ends_with("_seconds"), "{}", m.name),
                Kind::Gauge => assert!(!m.name.ends_with("_total"), "{}", m.name),
            }
        }
    }
}
