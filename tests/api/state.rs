//! The Redis/memory state layer under the SPEC §6 checklist: stage 0, keys
//! and TTLs, outages under each fallback mode, run-time rollback, and the
//! task state machine in both backends.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use reportd::ids::{TaskId, UserId};
use reportd::keys::KeySpace;
use reportd::state::{Backend, FallbackMode, Flags, MemoryBackend, RedisBackend, RedisSettings, StateLayer};
use reportd::stores::tasks::{TASK_TRANSITION, TaskPatch, TaskRecord, TaskStatus, TaskStatusStore, Transition};
use serde_json::{Value, json};

use crate::helpers::{Settings, TestApp, TestRedis, cluster_pass, eventually, sample_text};

/// Stage 0: Redis deployed and reachable, `REDIS_ENABLED=0` (even with every
/// feature flag on): the service works and writes nothing to Redis.
#[tokio::test]
async fn stage0_redis_deployed_but_disabled_writes_nothing() {
    let redis = TestRedis::start().await;
    let t = TestApp::spawn(|s| s.with_redis(&redis).set("REDIS_ENABLED", "0")).await;
    let c = &t.client;
    let token = c.user("stage0").await;
    let task = c.imported(&token).await;
    assert_eq!(c.status(&token, &task).await.0, 200);
    assert_eq!(c.json(&token, "/documents").await["total"], 1);
    let (code, ready) = c.readyz().await;
    assert_eq!(code, 200);
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["redis"]["configured"], true);
    assert_eq!(ready["redis"]["connected"], true);
    assert_eq!(ready["redis"]["topology"]["mode"], if cluster_pass() { "cluster" } else { "single" });
    assert_eq!(ready["redis"]["topology"]["failovers_seen"], 0);
    for feature in ["task_status", "chat_session", "cache", "rate_limit"] {
        assert_eq!(ready["features"][feature]["backend"], "memory", "{feature}");
        assert_eq!(ready["features"][feature]["degraded"], false);
    }
    assert!(redis.keys_with_ttl().await.is_empty(), "nothing is written to Redis");
}

fn is_uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

/// Every key written follows the exact template and carries a TTL: 24 h for
/// task status, 7 days for the import stream (which is empty once every
/// import has ended: finished jobs are acknowledged and deleted).
#[tokio::test]
async fn keys_match_the_templates_and_carry_a_ttl() {
    let redis = TestRedis::start().await;
    let t = TestApp::spawn(|s| s.with_redis(&redis)).await;
    let c = &t.client;
    let mut expected = Vec::new();
    for name in ["keys-a", "keys-b"] {
        let token = c.user(name).await;
        let user = c.json(&token, "/auth/me").await["id"].as_str().unwrap().to_owned();
        for _ in 0..2 {
            let task = c.imported(&token).await;
            expected.push(format!("langextract:test:task:import:{user}:{task}"));
        }
    }
    let mut keys = redis.state_keys_with_ttl().await;
    let stream_ttl = keys.remove("langextract:test:queue:import").expect("the import stream");
    assert!(stream_ttl > (7 * 86_400 - 120) * 1000 && stream_ttl <= 7 * 86_400 * 1000, "stream TTL {stream_ttl}");
    let mut conn = redis.conn().await;
    let len: u64 = redis::cmd("XLEN").arg("langextract:test:queue:import").query_async(&mut conn).await.unwrap();
    assert_eq!(len, 0, "finished jobs leave the stream");
    assert_eq!(keys.keys().cloned().collect::<Vec<_>>(), {
        expected.sort();
        expected
    });
    for (key, ttl) in &keys {
        let parts: Vec<&str> = key.split(':').collect();
        assert_eq!(parts.len(), 6, "{key}");
        assert_eq!(&parts[..4], ["langextract", "test", "task", "import"]);
        assert!(is_uuid_like(parts[4]) && is_uuid_like(parts[5]), "{key}");
        assert!(*ttl > (86_400 - 120) * 1000 && *ttl <= 86_400 * 1000, "{key} has TTL {ttl} ms");
    }
}

/// Redis dies mid-test under `REDIS_FALLBACK=memory`: polls and new imports
/// keep working, each answer within a second; Redis returns: it is used
/// again by itself, and what was done meanwhile reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_falls_back_to_memory_and_recovers() {
    let mut redis = TestRedis::start().await;
    let t = TestApp::spawn(|s| s.with_redis(&redis).set("REDIS_FALLBACK", "memory")).await;
    let c = &t.client;
    let token = c.user("outage").await;
    let user = c.json(&token, "/auth/me").await["id"].as_str().unwrap().to_owned();
    let before = c.imported(&token).await;
    assert_eq!(c.readyz().await.1["features"]["task_status"]["backend"], "redis");

    redis.stop();
    for _ in 0..5 {
        let started = Instant::now();
        let (code, body) = c.status(&token, &before).await;
        assert!(started.elapsed() < Duration::from_secs(1), "poll took {:?}", started.elapsed());
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["status"], "completed", "dual write kept it in memory");
    }
    let started = Instant::now();
    let during = c.import(&token, "b.txt", sample_text()).await;
    assert!(started.elapsed() < Duration::from_secs(1), "upload took {:?}", started.elapsed());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let started = Instant::now();
        let (code, body) = c.status(&token, &during).await;
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(code, 200);
        if body["status"] == "completed" {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, ready) = c.readyz().await;
    assert_eq!(code, 200);
    assert_eq!(ready["status"], "degraded");
    assert_eq!(ready["redis"]["connected"], false);
    assert_eq!(
        ready["features"]["task_status"],
        json!({"backend": "memory", "degraded": true, "scope": "instance", "refusing": false})
    );
    let metrics = c.http.get(c.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("reportd_state_fallback_total"), "fallbacks are counted");

    redis.restart().await;
    // What was written to memory during the outage is carried to Redis as
    // soon as it is back, before anyone reads it (Redis came back empty).
    let key = format!("langextract:test:task:import:{user}:{during}");
    eventually(Duration::from_secs(10), "the outage's task status repaired to Redis", || async {
        let found: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut redis.conn().await).await.unwrap();
        found.is_some_and(|v| serde_json::from_str::<Value>(&v).unwrap()["status"] == "completed")
    })
    .await;
    eventually(Duration::from_secs(10), "redis used again", || async { c.readyz().await.1["status"] == "ready" }).await;
    let after = c.import(&token, "c.txt", sample_text()).await;
    c.wait_done(&token, &after).await;
    assert_eq!(c.status(&token, &during).await.1["status"], "completed");
    let keys = redis.keys_with_ttl().await;
    for task in [&during, &after] {
        let key = format!("langextract:test:task:import:{user}:{task}");
        assert!(keys.contains_key(&key), "{key} in {keys:?}");
    }
}

/// A Redis that accepts connections but never answers (frozen with
/// SIGSTOP) costs one command timeout, once; then the service answers from
/// memory at once until Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_hangs_is_detected_once() {
    let redis = TestRedis::start().await;
    let t = TestApp::spawn(|s| s.with_redis(&redis).set("REDIS_COMMAND_TIMEOUT_MS", "300")).await;
    let c = &t.client;
    let token = c.user("hang").await;
    let task = c.imported(&token).await;

    redis.freeze();
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let (code, body) = c.status(&token, &task).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["status"], "completed");
    }
    assert!(slowest < Duration::from_secs(1), "slowest poll took {slowest:?}");
    let again = c.import(&token, "b.txt", sample_text()).await;
    assert_eq!(c.wait_done(&token, &again).await["status"], "completed");
    assert_eq!(c.readyz().await.1["status"], "degraded");

    redis.thaw();
    eventually(Duration::from_secs(10), "redis used again", || async { c.readyz().await.1["status"] == "ready" }).await;
    assert_eq!(c.status(&token, &again).await.1["status"], "completed");
}

/// Rollback by environment: restarted with `REDIS_ENABLED=0`, the service
/// works on memory as the original did (and has forgotten in-memory state);
/// restarted with it on again, the tasks kept in Redis are found again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_by_environment_and_back() {
    let redis = TestRedis::start().await;
    let dir = tempfile::TempDir::new().unwrap();
    let on = crate::helpers::Settings::new(dir.path()).with_redis(&redis);
    let (token, task) = {
        let t = TestApp::start(on.clone()).await;
        let token = t.client.user("rollback").await;
        let task = t.client.imported(&token).await;
        (token, task)
    };
    {
        let t = TestApp::start(on.clone().set("REDIS_ENABLED", "0")).await;
        let (code, _) = t.client.status(&token, &task).await;
        assert_eq!(code, 404, "process memory starts empty, as before Redis existed");
        let fresh = t.client.import(&token, "b.txt", sample_text()).await;
        assert_eq!(t.client.wait_done(&token, &fresh).await["status"], "completed");
        assert_eq!(t.client.json(&token, "/documents").await["total"], 2);
    }
    let t = TestApp::start(on).await;
    let (code, body) = t.client.status(&token, &task).await;
    assert_eq!(code, 200);
    assert_eq!(body["status"], "completed", "found again in Redis");
}

/// `REDIS_FALLBACK=error`: with Redis down, task status answers 503 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_under_error_mode_answers_503_quickly() {
    let mut redis = TestRedis::start().await;
    let t = TestApp::spawn(|s| s.with_redis(&redis).set("REDIS_FALLBACK", "error")).await;
    let c = &t.client;
    let token = c.user("strict").await;
    let task = c.imported(&token).await;

    redis.stop();
    for _ in 0..5 {
        let started = Instant::now();
        let (code, body) = c.status(&token, &task).await;
        assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
        assert_eq!(code, 503, "{body}");
        assert_eq!(body["code"], "state_unavailable");
    }
    let started = Instant::now();
    let r = c.upload(&token, "/Import_Doc/", "b.txt", sample_text()).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let (code, ready) = c.readyz().await;
    assert_eq!(code, 503);
    assert_eq!(ready["status"], "unavailable");
    assert_eq!(ready["features"]["task_status"]["refusing"], true);

    redis.restart().await;
    eventually(Duration::from_secs(10), "redis used again", || async { c.readyz().await.0 == 200 }).await;
    // The restarted Redis is empty; the dual-written copy still answers.
    assert_eq!(c.status(&token, &task).await.1["status"], "completed");
    let again = c.import(&token, "c.txt", sample_text()).await;
    assert_eq!(c.wait_done(&token, &again).await["status"], "completed");
}

/// `REDIS_FALLBACK=readonly`: reads from memory, writes 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_under_readonly_mode_serves_reads_only() {
    let mut redis = TestRedis::start().await;
    let t = TestApp::spawn(|s| s.with_redis(&redis).set("REDIS_FALLBACK", "readonly")).await;
    let c = &t.client;
    let token = c.user("reader").await;
    let task = c.imported(&token).await;
    redis.stop();
    let (code, body) = c.status(&token, &task).await;
    assert_eq!(code, 200);
    assert_eq!(body["status"], "completed");
    let r = c.upload(&token, "/Import_Doc/", "b.txt", sample_text()).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "state_read_only");
    let (code, ready) = c.readyz().await;
    assert_eq!(code, 200);
    assert_eq!(ready["status"], "degraded");
}

/// Redis down when the service starts: it starts anyway, degraded, and
/// picks Redis up when it appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_with_redis_down_is_a_degraded_start() {
    let mut redis = TestRedis::start().await;
    redis.stop();
    let t = TestApp::spawn(|s| s.with_redis(&redis)).await;
    let c = &t.client;
    let (code, ready) = c.readyz().await;
    assert_eq!(code, 200);
    assert_eq!(ready["status"], "degraded");
    let token = c.user("early").await;
    let task = c.imported(&token).await;
    redis.restart().await;
    eventually(Duration::from_secs(10), "redis picked up", || async { c.readyz().await.1["status"] == "ready" }).await;
    // The task done before Redis came is still found, and carried over to it.
    assert_eq!(c.status(&token, &task).await.1["status"], "completed");
    // The task's key, and (once a worker has looked at it) the empty import
    // stream: both with a TTL.
    let keys = redis.state_keys_with_ttl().await;
    assert!(keys.keys().any(|k| k.ends_with(&task)), "{keys:?}");
    assert!(keys.keys().all(|k| k.ends_with(&task) || k == "langextract:test:queue:import"), "{keys:?}");
    assert!(keys.values().all(|ttl| *ttl > 0), "{keys:?}");
}

/// Rollback at run time: an admin turns the task-status flag off; the task
/// written to Redis is still there (dual write), on this instance at once and
/// on another within the refresh interval. Back on: served by Redis again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_the_flag_off_at_run_time_loses_nothing() {
    let redis = TestRedis::start().await;
    // Two instances of one service: one Redis, one database.
    let dir = tempfile::TempDir::new().unwrap();
    let a = TestApp::start(Settings::new(dir.path()).with_redis(&redis)).await;
    let b = TestApp::start(Settings::new(dir.path()).with_redis(&redis)).await;
    let c = &a.client;
    a.app.create_user("root", "root password 1".into(), true).await.unwrap();
    let admin = c.login("root", "root password 1").await;
    let token = c.user("writer").await;
    let task = c.imported(&token).await;

    // Non-admins may not touch flags.
    assert_eq!(c.get(&token, "/admin/flags").await.status(), 403);

    let flags = c.json(&admin, "/admin/flags").await;
    assert_eq!(flags["effective"]["REDIS_TASK_STATUS_ENABLED"], true);
    assert_eq!(flags["overrides"], json!({}));

    let r = c
        .http
        .put(c.url("/admin/flags"))
        .bearer_auth(&admin)
        .json(&json!({"REDIS_TASK_STATUS_ENABLED": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["effective"]["REDIS_TASK_STATUS_ENABLED"], false);
    assert_eq!(body["overrides"], json!({"REDIS_TASK_STATUS_ENABLED": false}));

    assert_eq!(c.readyz().await.1["features"]["task_status"]["backend"], "memory");
    let (code, status) = c.status(&token, &task).await;
    assert_eq!(code, 200, "dual write kept the task in memory");
    assert_eq!(status["status"], "completed");
    eventually(Duration::from_secs(5), "the other instance sees the override", || async {
        b.client.readyz().await.1["features"]["task_status"]["backend"] == "memory"
    })
    .await;
    // Whichever instance ran the import, both have its final state: the
    // shared state was carried into each one's memory as it rolled back.
    let (code, status) = b.client.status(&token, &task).await;
    assert_eq!(code, 200, "{status}");
    assert_eq!(status["status"], "completed");

    let keys = redis.keys_with_ttl().await;
    assert_eq!(keys.get("langextract:test:flags"), Some(&-1), "the flags hash is the one key without a TTL");

    // Unknown flags and environment-only settings are refused.
    for bad in [json!({"REDIS_DUAL_WRITE": false}), json!({"NOPE": true}), json!({"REDIS_ENABLED": "yes"})] {
        let r = c.http.put(c.url("/admin/flags")).bearer_auth(&admin).json(&bad).send().await.unwrap();
        assert_eq!(r.status(), 422, "{bad}");
    }

    let r = c
        .http
        .put(c.url("/admin/flags"))
        .bearer_auth(&admin)
        .json(&json!({"REDIS_TASK_STATUS_ENABLED": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["overrides"], json!({}));
    assert_eq!(c.readyz().await.1["features"]["task_status"]["backend"], "redis");
    assert_eq!(c.status(&token, &task).await.1["status"], "completed");
}

/// Turning Redis on at run time: a task written to memory before is still
/// found (read Redis, then memory), and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_the_flag_on_mid_import_loses_nothing() {
    let redis = TestRedis::start().await;
    let t =
        TestApp::spawn(|s| s.with_redis(&redis).set("REDIS_ENABLED", "0").set("IMPORT_STAGE_DELAY_MS", "150")).await;
    let c = &t.client;
    t.app.create_user("root", "root password 1".into(), true).await.unwrap();
    let admin = c.login("root", "root password 1").await;
    let token = c.user("early-bird").await;
    let task = c.import(&token, "a.txt", sample_text()).await;
    let r = c
        .http
        .put(c.url("/admin/flags"))
        .bearer_auth(&admin)
        .json(&json!({"REDIS_ENABLED": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(c.readyz().await.1["features"]["task_status"]["backend"], "redis");
    let done = c.wait_done(&token, &task).await;
    assert_eq!(done["status"], "completed");
    let user = c.json(&token, "/auth/me").await["id"].as_str().unwrap().to_owned();
    let keys = redis.keys_with_ttl().await;
    assert!(keys.contains_key(&format!("langextract:test:task:import:{user}:{task}")), "{keys:?}");
}

pub fn layer(redis: &TestRedis) -> (Arc<StateLayer>, Arc<RedisBackend>) {
    let backend = Arc::new(
        RedisBackend::new(&RedisSettings {
            url: redis.url(),
            topology: redis.topology(),
            connect_timeout: Duration::from_millis(300),
            command_timeout: Duration::from_millis(2000),
            health_interval: Duration::from_millis(100),
        })
        .unwrap(),
    );
    let flags = Arc::new(Flags::new(BTreeMap::from([
        (reportd::state::Flag::RedisEnabled, true),
        (reportd::state::Flag::TaskStatus, true),
    ])));
    let state = StateLayer::new(
        KeySpace::new("langextract", "test").unwrap(),
        Arc::new(MemoryBackend::new(10_000)),
        Some(backend.clone()),
        flags,
        true,
        FallbackMode::Memory,
    );
    (Arc::new(state), backend)
}

fn patch_strategy() -> impl Strategy<Value = TaskPatch> {
    let status = prop_oneof![
        Just(TaskStatus::Pending),
        Just(TaskStatus::Processing),
        Just(TaskStatus::Completed),
        Just(TaskStatus::Failed)
    ];
    (status, 0u8..=100, prop::option::of("[a-z]{1,3}"), prop::option::of("[a-z]{1,3}")).prop_map(
        |(status, progress, document_id, error)| {
            let mut p = TaskPatch::new(status, progress, "stage", "message");
            p.document_id = document_id;
            p.error = error;
            p
        },
    )
}

/// The Lua script (Redis) and the Rust function (memory) are one state
/// machine: the same writes give the same verdicts and the same records.
#[test]
fn lua_and_rust_transitions_agree() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let redis = rt.block_on(TestRedis::start());
    let (state, backend) = rt.block_on(async { layer(&redis) });
    let memory = MemoryBackend::new(100);
    let keys = state.keys().clone();
    let user = UserId::parse("u").unwrap();
    let case = std::cell::Cell::new(0u32);
    proptest!(ProptestConfig::with_cases(48), |(patches in prop::collection::vec(patch_strategy(), 1..25), seeded in any::<bool>())| {
        case.set(case.get() + 1);
        let key = keys.import_task(&user, &TaskId::parse(&format!("t{}", case.get())).unwrap());
        let ttl = Duration::from_secs(60);
        let initial = TaskRecord {
            task_id: TaskId::parse("t").unwrap(), status: TaskStatus::Pending, progress: 0, stage: "queued".into(),
            message: "m".into(), document_id: None, error: None, filename: "f".into(), created_at: 1, updated_at: 1,
        };
        let initial_json = serde_json::to_string(&initial).unwrap();
        // The task is either created in place or carried over from a seed
        // (the memory copy of a task Redis lacks).
        let first = if seeded {
            vec![serde_json::to_string(&TaskPatch::from_record(&initial)).unwrap(), "update".into(), initial_json.clone()]
        } else {
            vec![initial_json.clone(), "create".into(), String::new()]
        };
        let steps = std::iter::once(first)
            .chain(patches.iter().map(|p| vec![serde_json::to_string(p).unwrap(), "update".into(), String::new()]));
        rt.block_on(async {
            let parse = |v: &Option<String>| v.as_ref().map(|v| serde_json::from_str::<TaskRecord>(v).unwrap());
            for args in steps {
                let r = backend.update(&key, &TASK_TRANSITION, &args, ttl).await.unwrap();
                let m = memory.update(&key, &TASK_TRANSITION, &args, ttl).await.unwrap();
                assert_eq!(r.verdict, m.verdict, "{args:?}");
                assert_eq!(parse(&r.value), parse(&m.value), "{args:?}");
            }
            assert_eq!(parse(&backend.get(&key).await.unwrap()), parse(&memory.get(&key).await.unwrap()));
        });
    });
}

/// Many writers racing on one task in Redis, in random order, while a reader
/// polls: the reader never sees it move backwards, and it ends terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reordered_writes_never_regress() {
    let redis = TestRedis::start().await;
    let (state, _) = layer(&redis);
    let store = TaskStatusStore::new(state, Duration::from_secs(600));
    let user = UserId::parse("racer").unwrap();
    for round in 0..10 {
        let task = TaskId::parse(&format!("race{round}")).unwrap();
        store.create(&user, &task, "f.txt").await.unwrap();
        let mut patches: Vec<TaskPatch> =
            (0..=100).step_by(5).map(|p| TaskPatch::new(TaskStatus::Processing, p as u8, "s", "m")).collect();
        patches.push(TaskPatch::new(TaskStatus::Completed, 100, "done", "ok"));
        patches.push(TaskPatch::new(TaskStatus::Pending, 0, "late", "duplicate of the first write"));
        // A deterministic shuffle per round.
        let n = patches.len();
        for i in 0..n {
            patches.swap(i, (i * 7 + round * 13 + 3) % n);
        }
        let reader = {
            let (store, user, task) = (store.clone(), user.clone(), task.clone());
            tokio::spawn(async move {
                let mut last = (0u8, 0u8);
                for _ in 0..200 {
                    let r = store.get(&user, &task).await.unwrap().unwrap();
                    let now = (r.status.rank(), r.progress);
                    assert!(now >= last, "regressed from {last:?} to {now:?}");
                    last = now;
                    if r.status.is_terminal() {
                        break;
                    }
                }
            })
        };
        let writers: Vec<_> = patches
            .into_iter()
            .map(|p| {
                let (store, user, task) = (store.clone(), user.clone(), task.clone());
                tokio::spawn(async move { store.advance(&user, &task, &p).await.unwrap() })
            })
            .collect();
        let mut applied_terminal = 0;
        for w in writers {
            if let Transition::Applied(r) = w.await.unwrap()
                && r.status.is_terminal()
            {
                applied_terminal += 1;
            }
        }
        reader.await.unwrap();
        assert_eq!(applied_terminal, 1, "exactly one terminal write wins");
        let end = store.get(&user, &task).await.unwrap().unwrap();
        assert_eq!(end.status, TaskStatus::Completed);
        assert_eq!(end.progress, 100);
    }
}

/// `/metrics` says which backend each feature uses and counts requests.
#[tokio::test]
async fn metrics_report_backends_and_requests() {
    let redis = TestRedis::start().await;
    let t = TestApp::spawn(|s| s.with_redis(&redis).set("REDIS_CACHE_ENABLED", "0")).await;
    let c = &t.client;
    let token = c.user("metrics").await;
    c.json(&token, "/documents").await;
    let r = c.http.get(c.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = r.text().await.unwrap();
    for line in [
        r#"reportd_feature_backend{feature="task_status",backend="redis"} 1"#,
        r#"reportd_feature_backend{feature="cache",backend="memory"} 1"#,
        r#"reportd_feature_degraded{feature="task_status"} 0"#,
        "reportd_redis_up 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    assert!(text.contains(r#"reportd_http_requests_total{method="GET",route="/documents",status="200"}"#), "{text}");
}

/// A Redis that has become a replica (a demoted master after a failover)
/// answers writes with `READONLY`, and its `ROLE` says so: that is Redis
/// being unavailable for now, not a refused command. Writes go to the
/// fallback (never a 500), the import completes and is polled, and
/// `/readyz` says Redis is not connected and the feature is degraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_replica_is_an_outage_not_an_error() {
    let redis = TestRedis::start().await;
    let mut conn = redis.conn().await;
    let dead_master = crate::helpers::free_port();
    let _: () = redis::cmd("REPLICAOF").arg("127.0.0.1").arg(dead_master).query_async(&mut conn).await.unwrap();
    let t = TestApp::spawn(|s| s.with_redis(&redis)).await;
    let c = &t.client;
    let token = c.user("readonly").await;
    let task = c.import(&token, "a.txt", sample_text()).await;
    let done = c.wait_done(&token, &task).await;
    assert_eq!(done["status"], "completed", "{done}");
    let (code, ready) = c.readyz().await;
    assert_eq!(code, 200, "{ready}");
    assert_eq!(ready["features"]["task_status"]["degraded"], true, "{ready}");
    assert_eq!(ready["redis"]["connected"], false, "the health probe sees a replica: {ready}");
    // Every answer was a success (a refused command would have been a 500).
    assert_eq!(c.status(&token, &task).await.0, 200);
    assert_eq!(c.json(&token, "/documents").await["total"], 1);
}

/// A master with `min-replicas-to-write` and too few replicas refuses
/// writes with `NOREPLICAS`: an outage for writes (they fall back), not a
/// refused command (a 500).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_without_enough_replicas_is_an_outage_not_an_error() {
    let redis = TestRedis::start().await;
    let mut conn = redis.conn().await;
    let _: () =
        redis::cmd("CONFIG").arg("SET").arg("min-replicas-to-write").arg("1").query_async(&mut conn).await.unwrap();
    let t = TestApp::spawn(|s| s.with_redis(&redis)).await;
    let c = &t.client;
    let token = c.user("noreplicas").await;
    let task = c.import(&token, "a.txt", sample_text()).await;
    let done = c.wait_done(&token, &task).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(c.status(&token, &task).await.0, 200);
    assert_eq!(c.json(&token, "/documents").await["total"], 1);
}
