//! The audit trail: every run-time flag change is logged with who made it
//! and the values before and after, and log lines carry the request id
//! (the proxy's, or one the service makes), in JSON and in text logs.

use serde_json::{Value, json};

use crate::helpers::{Settings, TestProcess, TestRedis, binary};

/// A process on Redis (logging in `format`), with an admin logged in.
async fn with_admin(redis: &TestRedis, dir: &std::path::Path, format: &str) -> (TestProcess, String) {
    let settings = Settings::new(dir).with_redis(redis).set("LOG_FORMAT", format);
    let p = TestProcess::start(&settings, dir, format).await;
    let token = admin_token(&settings, dir, &p).await;
    (p, token)
}

/// `PUT /admin/flags` with `body`, as the request `request_id` when given.
async fn put_flags(p: &TestProcess, token: &str, request_id: Option<&str>, body: Value) -> reqwest::Response {
    let c = &p.client;
    let mut r = c.http.put(c.url("/admin/flags")).bearer_auth(token).json(&body);
    if let Some(id) = request_id {
        r = r.header("x-request-id", id);
    }
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), 200);
    r
}

async fn admin_token(settings: &Settings, dir: &std::path::Path, p: &TestProcess) -> String {
    let out = std::process::Command::new(binary())
        .args(["user", "add", "--admin", "auditor"])
        .env_clear()
        .envs(&settings.0)
        .env("REPORTD_PASSWORD", "auditor password 1")
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    p.client.login("auditor", "auditor password 1").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flag_changes_are_logged_with_who_and_what_and_the_request_id() {
    let redis = TestRedis::start().await;
    let dir = tempfile::TempDir::new().unwrap();
    let (p, token) = with_admin(&redis, dir.path(), "json").await;
    let r = put_flags(&p, &token, Some("audit-req-42"), json!({"REDIS_CACHE_ENABLED": false})).await;
    assert_eq!(r.headers()["x-request-id"], "audit-req-42", "the proxy's id is kept");
    // A request without one gets a fresh id, which its log lines carry.
    let r = put_flags(&p, &token, None, json!({"REDIS_CACHE_ENABLED": null})).await;
    let fresh = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(fresh.len(), 36, "a UUID: {fresh}");

    let lines: Vec<Value> = p.read_log().lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let audit: Vec<&Value> = lines.iter().filter(|l| l["fields"]["message"] == "run-time flag changed").collect();
    assert_eq!(audit.len(), 2, "one line per change: {audit:?}");
    let (off, reset) = (audit[0], audit[1]);
    assert_eq!(off["fields"]["by"], "auditor");
    assert_eq!(off["fields"]["flag"], "REDIS_CACHE_ENABLED");
    assert_eq!(off["fields"]["override_before"], "none");
    assert_eq!(off["fields"]["override_after"], "off");
    assert_eq!(off["fields"]["effective_before"], "on");
    assert_eq!(off["fields"]["effective_after"], "off");
    assert_eq!(off["span"]["request_id"], "audit-req-42", "{off}");
    assert_eq!(off["span"]["route"], "/admin/flags");
    assert_eq!(reset["fields"]["override_before"], "off");
    assert_eq!(reset["fields"]["override_after"], "none");
    assert_eq!(reset["fields"]["effective_after"], "on");
    assert_eq!(reset["span"]["request_id"], fresh.as_str());
}

/// Text logs carry the request id and the audit fields too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_log_lines_carry_the_request_id() {
    let redis = TestRedis::start().await;
    let dir = tempfile::TempDir::new().unwrap();
    let (p, token) = with_admin(&redis, dir.path(), "text").await;
    put_flags(&p, &token, Some("text-req-8"), json!({"REDIS_RATE_LIMIT_ENABLED": false})).await;
    let log = p.read_log();
    let line = log.lines().find(|l| l.contains("run-time flag changed")).unwrap_or_else(|| panic!("{log}"));
    for part in ["request_id=text-req-8", "by=auditor", "flag=\"REDIS_RATE_LIMIT_ENABLED\"", "effective_after=\"off\""]
    {
        assert!(line.contains(part), "{part} in {line}");
    }
}
