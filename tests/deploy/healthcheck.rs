//! `reportd healthcheck`, the image's HEALTHCHECK: 0 against a running
//! instance (also when it is told the wildcard address it listens on), 1
//! against a closed port and against a port that never answers.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::helpers::{Settings, TestProcess, binary, free_port};

fn healthcheck(host: &str, port: u16) -> (Option<i32>, Duration) {
    let started = Instant::now();
    let status = Command::new(binary())
        .args(["healthcheck", "--timeout-ms", "1000"])
        .env_clear()
        .env("HOST", host)
        .env("PORT", port.to_string())
        .status()
        .unwrap();
    (status.code(), started.elapsed())
}

#[tokio::test]
async fn healthcheck_exits_0_on_a_running_instance_and_1_otherwise() {
    let dir = tempfile::TempDir::new().unwrap();
    let app = TestProcess::start(&Settings::new(dir.path()), dir.path(), "app").await;
    // Run off the runtime's threads: the child blocks until it exits.
    let port = app.port;
    let (code, _) = tokio::task::spawn_blocking(move || healthcheck("127.0.0.1", port)).await.unwrap();
    assert_eq!(code, Some(0));
    // In a container HOST is 0.0.0.0: the check goes through the loopback.
    let (code, _) = tokio::task::spawn_blocking(move || healthcheck("0.0.0.0", port)).await.unwrap();
    assert_eq!(code, Some(0));

    let closed = free_port();
    let (code, _) = tokio::task::spawn_blocking(move || healthcheck("127.0.0.1", closed)).await.unwrap();
    assert_eq!(code, Some(1), "nothing listens");

    // A port that accepts and never answers: 1 within the timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let (code, took) = tokio::task::spawn_blocking(move || healthcheck("127.0.0.1", silent_port)).await.unwrap();
    assert_eq!(code, Some(1), "no answer");
    assert!(took < Duration::from_secs(5), "{took:?}");
    drop(silent);
}
