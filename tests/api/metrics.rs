//! `/metrics` after a short mixed workload (imports, polls, cached reads,
//! search, the assistants with a tool call, an upstream failure, a Redis
//! outage): every metric of the catalog is there, nothing outside it, and
//! every label value comes from a closed set.

use std::collections::{BTreeMap, BTreeSet};

use reportd::telemetry::{CATALOG, Kind};
use serde_json::json;

use crate::fakes::{FakeLlm, FakeSearx, Reply};
use crate::helpers::{TestApp, TestRedis, sample_text};
use crate::sse::SseReader;

/// Metrics whose series appear only on events a short test does not cause
/// (a parse worker killed for time or memory: `durability.rs` checks it).
/// Replica reads need a failover and slot coverage a cluster: the failover
/// tests (`ha.rs`) check those two.
const ON_RARE_EVENTS: &[&str] =
    &["reportd_parse_workers_killed_total", "reportd_state_replica_reads_total", "reportd_redis_cluster_slots_covered"];

/// One sample line: the metric family (a histogram's `_bucket`, `_sum`,
/// `_count` folded into it) and its labels.
fn parse(line: &str) -> (String, BTreeMap<String, String>) {
    let (name, rest) = match line.find('{') {
        Some(i) => (&line[..i], &line[i + 1..line.rfind('}').unwrap()]),
        None => (line.split(' ').next().unwrap(), ""),
    };
    let mut labels = BTreeMap::new();
    // Values are quoted and never contain `",` (closed sets of plain words
    // and route templates).
    for pair in rest.split("\",").filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("a label in {line}"));
        labels.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
    }
    let family = CATALOG
        .iter()
        .filter(|m| m.kind == Kind::Histogram)
        .find(|m| {
            [format!("{}_bucket", m.name), format!("{}_sum", m.name), format!("{}_count", m.name)]
                .contains(&name.to_owned())
        })
        .map_or(name.to_owned(), |m| m.name.to_owned());
    (family, labels)
}

fn looks_like_an_id(v: &str) -> bool {
    let hex = v.chars().filter(|c| c.is_ascii_hexdigit()).count();
    (v.len() >= 16 && hex * 10 >= v.len() * 8) || v.contains("generate-") || v.contains("search-")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_workload_shows_every_metric_with_bounded_labels() {
    let mut redis = TestRedis::start().await;
    let (llm, searx) = (FakeLlm::start().await, FakeSearx::start().await);
    let (llm_url, searx_url) = (llm.base_url.clone(), searx.base_url.clone());
    let t = TestApp::spawn(|s| {
        s.with_redis(&redis).with_llm(&llm_url).set("LLM_MAX_RETRIES", "0").set("SEARCH_URL", &searx_url)
    })
    .await;
    let c = &t.client;
    let name = "metrics-mixed-user";
    let token = c.user(name).await;
    let task = c.import(&token, "notes.txt", sample_text()).await;
    let done = c.wait_done(&token, &task).await;
    let document = done["document_id"].as_str().unwrap().to_owned();
    // A docx that is not one: a parse failure.
    let broken = c.import(&token, "broken.docx", b"PK\x03\x04 not really a zip archive".to_vec()).await;
    assert_eq!(c.wait_done(&token, &broken).await["status"], "failed");
    for _ in 0..2 {
        c.json(&token, "/documents").await;
        c.json(&token, &format!("/documents/{document}")).await;
        c.json(&token, "/documents/search?q=redis").await;
    }
    assert_eq!(c.get(&token, "/no/such/path/for/metrics").await.status(), 404);
    // The assistants: a generation, a search with a tool call, an upstream failure.
    llm.push(Reply::text("一段回答"));
    llm.push(Reply::ToolCalls { calls: vec![("web_search".into(), json!({"query": "q"}))], split: 1 });
    llm.push(Reply::text("答案"));
    llm.push(Reply::status(500, r#"{"error":{"message":"down"}}"#));
    for (kind, message) in [("generate", "写"), ("search", "搜"), ("generate", "失败")] {
        let r = c
            .http
            .post(c.url(&format!("/ai/{kind}")))
            .bearer_auth(&token)
            .json(&json!({"task_id": "metrics", "message": message}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        SseReader::new(r).rest().await;
    }
    // Redis goes away: a read falls back to memory.
    redis.stop();
    assert_eq!(c.status(&token, &task).await.0, 200);

    let text = c.http.get(c.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let catalog: BTreeMap<&str, &reportd::telemetry::Metric> = CATALOG.iter().map(|m| (m.name, m)).collect();
    let mut seen = BTreeSet::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (family, labels) = parse(line);
        let metric = catalog.get(family.as_str()).unwrap_or_else(|| panic!("{family} is not in the catalog: {line}"));
        for (k, v) in &labels {
            assert!(metric.labels.contains(&k.as_str()) || k == "le", "{family} has an undocumented label {k}: {line}");
            assert!(
                !looks_like_an_id(v) && !v.contains(name) && !v.contains(&task),
                "an unbounded label value: {line}"
            );
            if k == "route" {
                assert!(v == "unmatched" || v.starts_with('/'), "{line}");
                assert!(!v.contains("no/such"), "a raw path as a route: {line}");
            }
        }
        seen.insert(family);
    }
    for m in CATALOG {
        assert!(
            seen.contains(m.name) || ON_RARE_EVENTS.contains(&m.name),
            "{} is missing from /metrics after the workload",
            m.name
        );
    }
    for line in [
        r#"reportd_feature_degraded{feature="task_status"} 1"#,
        "reportd_redis_up 0",
        "reportd_imports_in_flight 0",
        "reportd_import_queue_length 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    for m in CATALOG.iter().filter(|m| seen.contains(m.name)) {
        assert!(text.contains(&format!("# HELP {} ", m.name)), "{} has no HELP line", m.name);
    }
}
