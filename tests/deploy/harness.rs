//! What the deployment tests need beyond the API tests' harness
//! (`tests/api/helpers.rs` and `tests/api/sse.rs`, which `tests/deploy.rs`
//! includes as they are): the repository's files, waiting for a Redis
//! started from the compose file's command line, and a few client calls
//! of their own.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{Client, TestProcess};

/// A file of the repository (the crate root).
pub fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

pub fn read_repo_file(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Waits until a Redis at `url` answers PING.
pub async fn wait_for_redis(url: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(client) = redis::Client::open(url)
            && let Ok(mut c) = client.get_multiplexed_async_connection().await
            && redis::cmd("PING").query_async::<String>(&mut c).await.is_ok()
        {
            return;
        }
        assert!(Instant::now() < deadline, "redis at {url} did not answer");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An instance's Prometheus text.
pub async fn metrics(process: &TestProcess) -> String {
    let c = &process.client;
    c.http.get(c.url("/metrics")).send().await.unwrap().text().await.unwrap()
}

/// A login attempt, with an `X-Forwarded-For` of the client's own when given.
pub async fn try_login(c: &Client, username: &str, password: &str, forwarded_for: Option<&str>) -> reqwest::Response {
    let mut request = c.http.post(c.url("/auth/login")).json(&json!({"username": username, "password": password}));
    if let Some(address) = forwarded_for {
        request = request.header("X-Forwarded-For", address);
    }
    request.send().await.unwrap()
}
