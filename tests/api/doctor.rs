//! `reportd doctor`: the real binary against a real Redis (with a password),
//! a real database (SQLite, or PostgreSQL in that pass) migrated by the real
//! service, and the fake LLM and SearXNG servers.

use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::fakes::{FakeLlm, FakeSearx};
use crate::helpers::{
    REDIS_PASSWORD, SENTINEL_PASSWORD, Settings, TestApp, TestCluster, TestRedis, TestSentinels, binary, free_port,
};

const API_KEY: &str = "sk-doctor-test-key-0123456789";

/// What one run of the doctor gave.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("--json is not JSON ({e}): {}", self.stdout))
    }
}

/// The check `name` of a JSON report.
fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report:#}"))
}

/// Runs `reportd doctor` (with `--json` when asked) with exactly `settings`
/// as its environment; it must finish within 30 s whatever it finds.
async fn doctor(settings: &Settings, dir: &std::path::Path, json: bool) -> Run {
    let mut command = tokio::process::Command::new(binary());
    command.arg("doctor");
    if json {
        command.arg("--json");
    }
    command.env_clear().envs(&settings.0).current_dir(dir).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("the doctor finishes within 30 s")
        .expect("the doctor runs");
    let run = Run {
        code: out.status.code().expect("the doctor exits by itself"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    };
    for text in [&run.stdout, &run.stderr] {
        assert!(!text.contains(API_KEY), "the API key leaked:\n{text}");
        assert!(!text.contains(REDIS_PASSWORD), "the Redis password leaked:\n{text}");
    }
    run
}

async fn config_set(redis: &TestRedis, name: &str, value: &str) {
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("CONFIG").arg("SET").arg(name).arg(value).query_async(&mut conn).await.unwrap();
}

/// A healthy deployment: Redis with AOF on and `noeviction`, the database
/// migrated by the service itself (which also ran an import, so real keys
/// of several namespaces are in Redis), the LLM and SearXNG fakes.
async fn deployment() -> (TempDir, TestRedis, Settings) {
    let dir = TempDir::new().unwrap();
    let redis = TestRedis::start().await;
    config_set(&redis, "appendonly", "yes").await;
    config_set(&redis, "maxmemory-policy", "noeviction").await;
    let llm = FakeLlm::start().await;
    let searx = FakeSearx::start().await;
    let settings = Settings::new(dir.path())
        .with_redis(&redis)
        .set("LLM_BASE_URL", &llm.base_url)
        .set("LLM_API_KEY", API_KEY)
        .set("LLM_MODEL", "fake-model")
        .set("SEARCH_URL", &searx.base_url);
    let app = TestApp::start(settings.clone()).await;
    let token = app.client.user("doctor-alice").await;
    app.client.imported(&token).await;
    drop(app);
    (dir, redis, settings)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_deployment_passes_and_the_flags_show_their_source() {
    let (dir, redis, settings) = deployment().await;
    // A run-time override (as PUT /admin/flags writes it) wins over the environment.
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("HSET")
        .arg("langextract:test:flags")
        .arg("REDIS_CACHE_ENABLED")
        .arg("0")
        .query_async(&mut conn)
        .await
        .unwrap();

    let text = doctor(&settings, dir.path(), false).await;
    assert_eq!(text.code, 0, "{}{}", text.stdout, text.stderr);
    for line in ["configuration", "database", "redis", "flags", "upstreams"] {
        assert!(text.stdout.lines().any(|l| l == line), "section {line}:\n{}", text.stdout);
    }
    assert!(!text.stdout.contains("FAIL"), "{}", text.stdout);
    assert!(text.stdout.contains("REDIS_CACHE_ENABLED"), "{}", text.stdout);

    let run = doctor(&settings, dir.path(), true).await;
    assert_eq!(run.code, 0, "{}", run.stdout);
    let report = run.json();
    assert!(report["status"] == "ok" || report["status"] == "warn", "{report:#}");
    for name in [
        "config",
        "database.connection",
        "database.migrations",
        "redis.connection",
        "redis.aof",
        "redis.maxmemory_policy",
        "redis.keys_without_ttl",
        "redis.namespaces",
        "llm",
        "search",
    ] {
        assert_eq!(check(&report, name)["status"], "ok", "{name}: {:#}", check(&report, name));
    }
    assert_eq!(check(&report, "database.migrations")["pending"], serde_json::json!([]));
    assert_eq!(check(&report, "llm")["model_listed"], true);
    // The import left a task status and the service its import stream.
    let namespaces = &check(&report, "redis.namespaces")["namespaces"];
    for namespace in ["task", "queue", "flags"] {
        assert!(namespaces[namespace]["keys"].as_u64().unwrap() >= 1, "{namespace}: {namespaces}");
        assert!(namespaces[namespace]["bytes"].as_u64().unwrap() > 0, "{namespace}: {namespaces}");
    }
    let flags = &check(&report, "flags")["flags"];
    assert_eq!(
        flags["REDIS_CACHE_ENABLED"],
        serde_json::json!({"value": false, "source": "override", "environment": true})
    );
    assert_eq!(
        flags["REDIS_ENABLED"],
        serde_json::json!({"value": true, "source": "environment", "environment": true})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_without_a_ttl_fails_by_name() {
    let (dir, redis, settings) = deployment().await;
    let mut conn = redis.conn().await;
    for key in ["langextract:test:task:import:u1:forever", "someone-else:key"] {
        let _: () = redis::cmd("SET").arg(key).arg("x").query_async(&mut conn).await.unwrap();
    }
    let run = doctor(&settings, dir.path(), true).await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    let report = run.json();
    assert_eq!(report["status"], "fail");
    let ttl = check(&report, "redis.keys_without_ttl");
    assert_eq!(ttl["status"], "fail");
    // Only keys of the namespace count, and the flags hash is no offence.
    assert_eq!(ttl["keys"], serde_json::json!(["langextract:test:task:import:u1:forever"]), "{ttl}");
    let text = doctor(&settings, dir.path(), false).await;
    assert_eq!(text.code, 1);
    let line = text.stdout.lines().find(|l| l.contains("redis.keys_without_ttl")).unwrap();
    assert!(line.contains("FAIL") && line.contains("langextract:test:task:import:u1:forever"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_redis_password_fails_clearly() {
    let (dir, redis, settings) = deployment().await;
    let settings = settings.set("REDIS_URL", &format!("redis://:wrong-password-42@127.0.0.1:{}/0", redis.port));
    let run = doctor(&settings, dir.path(), true).await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    let report = run.json();
    let connection = check(&report, "redis.connection");
    assert_eq!(connection["status"], "fail");
    assert!(connection["detail"].as_str().unwrap().contains("authentication failed"), "{connection}");
    assert!(!run.stdout.contains("wrong-password-42"), "{}", run.stdout);
    // The flags fall back to the environment, and say why.
    assert_eq!(check(&report, "flags")["status"], "warn");
    // The rest is still checked.
    assert_eq!(check(&report, "database.migrations")["status"], "ok");
    assert_eq!(check(&report, "llm")["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aof_off_fails_and_an_evicting_policy_warns() {
    let (dir, redis, settings) = deployment().await;
    config_set(&redis, "appendonly", "no").await;
    let run = doctor(&settings, dir.path(), true).await;
    assert_eq!(run.code, 1, "a Redis without AOF fails: {}", run.stdout);
    let aof = check(&run.json(), "redis.aof").clone();
    assert_eq!(aof["status"], "fail", "{aof}");
    config_set(&redis, "appendonly", "yes").await;
    config_set(&redis, "maxmemory-policy", "allkeys-lru").await;
    let run = doctor(&settings, dir.path(), true).await;
    assert_eq!(run.code, 0, "warnings alone exit 0: {}", run.stdout);
    let report = run.json();
    assert_eq!(report["status"], "warn");
    let policy = check(&report, "redis.maxmemory_policy");
    assert_eq!(policy["status"], "warn", "{policy}");
    assert_eq!(policy["policy"], "allkeys-lru");
    config_set(&redis, "maxmemory-policy", "volatile-ttl").await;
    let report = doctor(&settings, dir.path(), true).await.json();
    assert_eq!(check(&report, "redis.maxmemory_policy")["status"], "warn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_model_warns_and_an_unreachable_or_refusing_llm_fails() {
    let (dir, _redis, settings) = deployment().await;
    let unknown = settings.clone().set("LLM_MODEL", "gpt-unknown");
    let run = doctor(&unknown, dir.path(), true).await;
    assert_eq!(run.code, 0, "{}", run.stdout);
    let llm = check(&run.json(), "llm").clone();
    assert_eq!(llm["status"], "warn", "{llm}");
    assert!(llm["detail"].as_str().unwrap().contains("fake-model"), "the models listed are named: {llm}");

    let dead = settings.clone().set("LLM_BASE_URL", &format!("http://127.0.0.1:{}/v1", free_port()));
    let run = doctor(&dead, dir.path(), true).await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert_eq!(check(&run.json(), "llm")["status"], "fail");

    // The fake echoes a refused key in its 401 body: the report must not.
    let refused_key = "sk-invalid-doctor-key-987654";
    let refused = settings.set("LLM_API_KEY", refused_key);
    let run = doctor(&refused, dir.path(), false).await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    let line = run.stdout.lines().find(|l| l.contains(" llm ")).unwrap();
    assert!(line.contains("FAIL") && line.contains("401"), "{line}");
    assert!(line.contains("[redacted]"), "the echoed key is quoted redacted: {line}");
    assert!(!run.stdout.contains(refused_key) && !run.stdout.contains("987654"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_migrations_fail_by_name_and_are_not_applied() {
    let dir = TempDir::new().unwrap();
    let settings = Settings::new(dir.path());
    // An empty database: the PostgreSQL pass's is created empty; on SQLite
    // an empty file (a missing one is reported as missing, not created).
    if !crate::helpers::postgres_pass() {
        std::fs::write(dir.path().join("reportd.db"), b"").unwrap();
    }
    for _ in 0..2 {
        let run = doctor(&settings, dir.path(), true).await;
        assert_eq!(run.code, 1, "{}", run.stdout);
        let migrations = check(&run.json(), "database.migrations").clone();
        assert_eq!(migrations["status"], "fail", "{migrations}");
        let pending = migrations["pending"].as_array().unwrap();
        assert!(pending.len() >= 5 && pending[0].as_str().unwrap().starts_with("0001_"), "{migrations}");
    }
    // Without Redis, LLM or search settings those are "not configured", not failures.
    let report = doctor(&settings, dir.path(), true).await.json();
    for name in ["redis", "llm", "search"] {
        assert_eq!(check(&report, name)["status"], "ok", "{name}");
    }
    assert_eq!(check(&report, "flags")["flags"]["REDIS_ENABLED"]["source"], "environment");
}

/// A database that does not answer (PostgreSQL on a port nobody listens
/// on): a failure, within the doctor's timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_fails() {
    let (dir, _redis, settings) = deployment().await;
    let url = format!("postgres://reportd:secret-db-pass@127.0.0.1:{}/reportd", free_port());
    let started = std::time::Instant::now();
    let run = doctor(&settings.set("DATABASE_URL", &url), dir.path(), true).await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    let report = run.json();
    let failed: Vec<&Value> = report["checks"].as_array().unwrap().iter().filter(|c| c["status"] == "fail").collect();
    assert!(failed.iter().any(|c| c["name"].as_str().unwrap().starts_with("database")), "{report}");
    assert!(!run.stdout.contains("secret-db-pass"), "the password is not printed: {}", run.stdout);
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "bounded by timeouts");
}

/// Migrates the database and leaves real keys in Redis, as `deployment` does.
async fn used_by_the_service(settings: &Settings) {
    let app = TestApp::start(settings.clone()).await;
    let token = app.client.user("doctor-ha").await;
    app.client.imported(&token).await;
}

async fn aof_on(conn: &mut redis::aio::MultiplexedConnection) {
    let _: () = redis::cmd("CONFIG").arg("SET").arg("appendonly").arg("yes").query_async(conn).await.unwrap();
}

/// Under Sentinel the doctor checks the master the sentinels name and says
/// whether a failover has somewhere to go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_sentinel_the_master_is_found_and_checked() {
    let sentinels = TestSentinels::start().await;
    let dir = TempDir::new().unwrap();
    let settings = Settings::new(dir.path()).with_sentinels(&sentinels);
    used_by_the_service(&settings).await;
    let master = sentinels.master_port().await;
    aof_on(&mut sentinels.conn_to(master).await).await;

    let run = doctor(&settings, dir.path(), true).await;
    assert!(!run.stdout.contains(SENTINEL_PASSWORD), "the sentinels' password leaked: {}", run.stdout);
    assert_eq!(run.code, 0, "{}", run.stdout);
    let report = run.json();
    let topology = check(&report, "redis.topology");
    assert_eq!(topology["status"], "ok", "{topology:#}");
    assert_eq!(topology["mode"], "sentinel");
    let detail = topology["detail"].as_str().unwrap();
    assert!(detail.contains(&format!("127.0.0.1:{master}")) && detail.contains("1 healthy replica"), "{detail}");
    assert!(check(&report, "redis.connection")["detail"].as_str().unwrap().contains(&master.to_string()));
    assert_eq!(check(&report, "redis.aof")["status"], "ok");
    let keys = check(&report, "redis.keys_without_ttl");
    assert_eq!(keys["status"], "ok");
    assert!(keys["examined"].as_u64() > Some(0), "{keys:#}");
}

/// On a cluster the doctor checks every master, scans every master's keys
/// and reports the slots; a master left without a replica is a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_every_master_is_checked() {
    let mut cluster = TestCluster::start().await;
    let dir = TempDir::new().unwrap();
    let settings = Settings::new(dir.path()).with_cluster(&cluster);
    used_by_the_service(&settings).await;
    for port in cluster.masters().await {
        aof_on(&mut cluster.conn_to(port).await).await;
    }

    let run = doctor(&settings, dir.path(), true).await;
    assert_eq!(run.code, 0, "{}", run.stdout);
    let report = run.json();
    let topology = check(&report, "redis.topology");
    assert_eq!(topology["status"], "ok", "{topology:#}");
    assert_eq!(topology["detail"], "3 masters, 3 replicas, all 16384 slots served");
    assert_eq!(topology["topology"]["slots_covered"], 16384);
    let aof = check(&report, "redis.aof");
    assert_eq!(aof["status"], "ok");
    assert!(aof["detail"].as_str().unwrap().ends_with("(on all 3 masters)"), "{aof:#}");
    assert_eq!(aof["nodes"].as_array().unwrap().len(), 3);
    // The keys of every master are scanned: the import's task status, the
    // queue, the user's cache version … land on different masters.
    let namespaces = check(&report, "redis.namespaces");
    assert!(namespaces["examined"].as_u64() >= Some(2), "{namespaces:#}");

    let killed = cluster.kill_master(0).await;
    cluster.wait_for_promotion(killed, Duration::from_secs(30)).await;
    let run = doctor(&settings, dir.path(), true).await;
    let report = run.json();
    let topology = check(&report, "redis.topology");
    assert_eq!(topology["status"], "warn", "{topology:#}");
    assert!(topology["detail"].as_str().unwrap().contains("3 masters but 2 replicas"), "{topology:#}");
}
