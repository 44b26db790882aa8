//! The service as real processes: two instances on one Redis and one
//! database, SIGKILL mid-import, SIGTERM, the command line.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::helpers::{Settings, TestProcess, TestRedis, binary, eventually, sample_text};

/// Stage 1: an import started on one instance is polled on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_redis_and_one_database() {
    let redis = TestRedis::start().await;
    let dir = TempDir::new().unwrap();
    let settings = Settings::new(dir.path()).with_redis(&redis).set("IMPORT_STAGE_DELAY_MS", "100");
    let a = TestProcess::start(&settings, dir.path(), "a").await;
    let b = TestProcess::start(&settings, dir.path(), "b").await;

    let token = a.client.user("shared").await;
    // A token from one instance is good on the other (same secret).
    assert_eq!(b.client.json(&token, "/auth/me").await["username"], "shared");
    let task = a.client.import(&token, "a.txt", sample_text()).await;
    // B sees the task while it runs on A, and to its end.
    let (code, body) = b.client.status(&token, &task).await;
    assert_eq!(code, 200, "{body}");
    let done = b.client.wait_done(&token, &task).await;
    assert_eq!(done["status"], "completed");
    let doc = done["document_id"].as_str().unwrap();
    assert_eq!(b.client.json(&token, "/documents").await["items"][0]["id"], doc);

    // And the other way round.
    let task = b.client.import(&token, "b.md", b"# Title\n\nbody\n".to_vec()).await;
    assert_eq!(a.client.wait_done(&token, &task).await["status"], "completed");
}

/// Stage 1: the instance running an import is killed with SIGKILL; a
/// restarted instance still answers the poll, and works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_import_then_restart_polling_still_answers() {
    let redis = TestRedis::start().await;
    let dir = TempDir::new().unwrap();
    let settings = Settings::new(dir.path()).with_redis(&redis).set("IMPORT_STAGE_DELAY_MS", "1500");
    let mut first = TestProcess::start(&settings, dir.path(), "first").await;
    let token = first.client.user("crash").await;
    let task = first.client.import(&token, "a.txt", sample_text()).await;
    let c = first.client.clone();
    eventually(Duration::from_secs(20), "the import is processing", || async {
        c.status(&token, &task).await.1["status"] == "processing"
    })
    .await;
    let seen = first.client.status(&token, &task).await.1;
    first.kill();

    let second = TestProcess::start(&settings, dir.path(), "second").await;
    let (code, body) = second.client.status(&token, &task).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["task_id"], task.as_str());
    assert_eq!(body["status"], "processing");
    assert!(body["progress"].as_u64() >= seen["progress"].as_u64());
    // The restarted instance serves new work.
    let fast = Settings::new(dir.path()).with_redis(&redis);
    drop(second);
    let third = TestProcess::start(&fast, dir.path(), "third").await;
    let again = third.client.import(&token, "b.txt", sample_text()).await;
    assert_eq!(third.client.wait_done(&token, &again).await["status"], "completed");
}

/// SIGTERM: the import in progress is finished before the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_running_import_then_exits() {
    let redis = TestRedis::start().await;
    let dir = TempDir::new().unwrap();
    let settings = Settings::new(dir.path()).with_redis(&redis).set("IMPORT_STAGE_DELAY_MS", "300");
    let mut p = TestProcess::start(&settings, dir.path(), "term").await;
    let token = p.client.user("term").await;
    let task = p.client.import(&token, "a.txt", sample_text()).await;
    let c = p.client.clone();
    eventually(Duration::from_secs(20), "the import is processing", || async {
        c.status(&token, &task).await.1["status"] == "processing"
    })
    .await;
    let status = p.terminate(Duration::from_secs(20)).expect("exits within 20 s of SIGTERM");
    assert!(status.success(), "{status}: {}", p.read_log());
    assert!(p.read_log().contains("shutdown signal received"));

    let q = TestProcess::start(&settings, dir.path(), "after").await;
    let (code, body) = q.client.status(&token, &task).await;
    assert_eq!(code, 200);
    assert_eq!(body["status"], "completed", "the running import was finished before exit: {body}");
}

#[tokio::test]
async fn user_add_makes_an_admin_from_the_command_line() {
    let dir = TempDir::new().unwrap();
    let settings = Settings::new(dir.path());
    let out = Command::new(binary())
        .args(["user", "add", "--admin", "boss"])
        .env_clear()
        .envs(&settings.0)
        .env("REPORTD_PASSWORD", "boss password 1")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Password from standard input, and a taken name is an error.
    let mut child = Command::new(binary())
        .args(["user", "add", "boss"])
        .env_clear()
        .envs(&settings.0)
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"another password\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("taken"));

    let p = TestProcess::start(&settings, dir.path(), "admin").await;
    let token = p.client.login("boss", "boss password 1").await;
    let me: Value = p.client.json(&token, "/auth/me").await;
    assert_eq!(me["is_admin"], true);
    assert_eq!(p.client.get(&token, "/admin/flags").await.status(), 200);
}

#[test]
fn bad_configuration_is_a_clear_start_up_error() {
    let dir = TempDir::new().unwrap();
    let run = |env: &[(&str, &str)]| {
        Command::new(binary())
            .env_clear()
            .envs(env.iter().copied())
            .env("DATA_DIR", dir.path())
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = run(&[("APP_ENV", "prod")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("JWT_SECRET"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&[("REDIS_FALLBACK", "sometimes")]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("REDIS_FALLBACK")
            || String::from_utf8_lossy(&out.stderr).contains("redis-fallback")
    );
    let out = run(&[("PORT", "http")]);
    assert!(!out.status.success());

    let help = Command::new(binary()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for name in [
        "REDIS_ENABLED",
        "REDIS_FALLBACK",
        "REDIS_DUAL_WRITE",
        "DATABASE_URL",
        "JWT_SECRET",
        "MAX_UPLOAD_MB",
        "REDIS_PREFIX",
    ] {
        assert!(help.contains(name), "--help lists {name}");
    }
}

/// Settings may come from a `.env` file in the working directory; the
/// environment wins over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dotenv_file_is_read() {
    let redis = TestRedis::start().await;
    let dir = TempDir::new().unwrap();
    std::fs::write(dir.path().join(".env"), "REDIS_PREFIX=fromdotenv\nAPP_ENV=overridden\n").unwrap();
    let settings = Settings::new(dir.path()).with_redis(&redis);
    let p = TestProcess::start(&settings, dir.path(), "dotenv").await;
    let token = p.client.user("dotenv").await;
    let task = p.client.imported(&token).await;
    // The import's slot (`rl:lease:imports:…`) is let go of just after the
    // task shows completed, not before: wait for it to go.
    eventually(Duration::from_secs(10), "the import slot is freed", || async {
        !redis.keys_with_ttl().await.keys().any(|k| k.contains(":rl:lease:imports:"))
    })
    .await;
    let keys = redis.state_keys_with_ttl().await;
    let names: Vec<&String> = keys.keys().collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(names[0], "fromdotenv:test:queue:import");
    assert!(names[1].starts_with("fromdotenv:test:task:import:"), "{names:?}");
    assert!(names[1].ends_with(&task));
}

/// Two instances on one database (PostgreSQL in the PostgreSQL pass, one
/// SQLite file in the other) and one Redis form one service: a document
/// imported on A is found by a search on B, and a conversation begun on A
/// continues on B (the offline provider answers; the session lives in Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_are_one_service_for_search_and_conversations() {
    let redis = TestRedis::start().await;
    let dir = TempDir::new().unwrap();
    let settings = Settings::new(dir.path()).with_redis(&redis);
    let a = TestProcess::start(&settings, dir.path(), "a").await;
    let b = TestProcess::start(&settings, dir.path(), "b").await;
    let token = a.client.user("one-service").await;

    let task = a.client.import(&token, "mars.txt", sample_text()).await;
    let done = a.client.wait_done(&token, &task).await;
    assert_eq!(done["status"], "completed", "{done}");
    let doc = done["document_id"].as_str().unwrap();
    for (query, word) in [("火星", "火星"), ("mars", "Mars")] {
        let url = reqwest::Url::parse_with_params(&b.client.url("/documents/search"), [("q", query)]).unwrap();
        let r = b.client.http.get(url).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let found: Value = r.json().await.unwrap();
        let items = found["items"].as_array().unwrap();
        assert!(!items.is_empty(), "B finds what A imported for {query:?}: {found}");
        assert!(items.iter().all(|hit| hit["document_id"] == doc), "{found}");
        let snippet = items[0]["snippet"].as_str().unwrap();
        assert!(snippet.contains(&format!("<mark>{word}</mark>")), "{snippet}");
    }

    // A turn on each instance, one conversation.
    let ask = |c: &crate::helpers::Client, message: &str| {
        let request = c
            .http
            .post(c.url("/ai/generate"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"task_id": "report", "message": message}));
        async move {
            let r = request.send().await.unwrap();
            assert_eq!(r.status(), 200);
            let stream = r.text().await.unwrap();
            assert!(stream.contains("event: done"), "{stream}");
        }
    };
    let session = |c: &crate::helpers::Client| {
        let request = c.http.get(c.url("/ai/sessions/generate/report")).bearer_auth(&token);
        async move {
            let r = request.send().await.unwrap();
            assert_eq!(r.status(), 200);
            let body: Value = r.json().await.unwrap();
            body["messages"].as_array().unwrap().clone()
        }
    };
    ask(&a.client, "介绍火星").await;
    assert_eq!(session(&b.client).await.len(), 2, "B sees the turn taken on A");
    ask(&b.client, "火星的更多细节").await;
    let messages = session(&a.client).await;
    let roles: Vec<&str> = messages.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant"], "{messages:?}");
    assert_eq!(messages[0]["content"], "介绍火星");
    assert_eq!(messages[2]["content"], "火星的更多细节");
    let draft = messages[3]["content"].as_str().unwrap();
    assert!(draft.contains("火星是太阳系的第四颗行星") && draft.contains("[1]"), "B drafts from A's import: {draft}");
}

/// SIGTERM during an import whose grace period is too short for it: the
/// stopping instance hands the job back (released in the database, queued
/// again on the shared stream), and the other instance takes it at once
/// and finishes it, long before the heartbeat timeout would have let it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_a_running_import_to_the_other_instance() {
    let redis = TestRedis::start().await;
    let dir = TempDir::new().unwrap();
    let settings = Settings::new(dir.path())
        .with_redis(&redis)
        .set("IMPORT_STAGE_DELAY_MS", "3000")
        .set("IMPORT_HEARTBEAT_TIMEOUT_SECONDS", "120")
        .set("SHUTDOWN_GRACE_SECONDS", "1");
    let mut a = TestProcess::start(&settings, dir.path(), "a").await;
    let token = a.client.user("handover").await;
    let task = a.client.import(&token, "a.txt", sample_text()).await;
    let c = a.client.clone();
    eventually(Duration::from_secs(20), "A runs the import", || async {
        c.status(&token, &task).await.1["status"] == "processing"
    })
    .await;
    let b = TestProcess::start(&settings, dir.path(), "b").await;
    let status = tokio::task::block_in_place(|| a.terminate(Duration::from_secs(30))).expect("A exits");
    assert!(status.success(), "{}", a.read_log());
    assert!(a.read_log().contains("handed imports back to the queue"), "{}", a.read_log());
    let stopped = std::time::Instant::now();
    let c = b.client.clone();
    eventually(Duration::from_secs(30), "B finishes the import", || async {
        c.status(&token, &task).await.1["status"] == "completed"
    })
    .await;
    assert!(stopped.elapsed() < Duration::from_secs(60), "taken over at once, not after the heartbeat timeout");
    let documents = b.client.json(&token, "/documents").await;
    assert_eq!(documents["total"], 1, "imported once: {documents}");
}
