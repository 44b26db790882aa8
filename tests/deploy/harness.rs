//! The parts of the API test harness (`tests/api/helpers.rs`) that the
//! deployment tests need, copied so that this target does not depend on
//! that file's changes: a real `redis-server`, reportd as a child process,
//! an HTTP client, an SSE reader, and finding the repository's files.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tempfile::TempDir;

pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123456789";
pub const REDIS_PASSWORD: &str = "s3cret-pass-word";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A file of the repository (the crate root).
pub fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

pub fn read_repo_file(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// An executable by name on PATH (or /usr/sbin, where Debian puts nginx).
pub fn find_binary(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")]) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_reportd")
}

/// A private `redis-server` on a free port with a password and no
/// persistence, killed when dropped (the deployment's own Redis command line
/// is tested in `redis.rs`).
pub struct TestRedis {
    pub port: u16,
    child: Child,
    _dir: TempDir,
}

impl TestRedis {
    pub async fn start() -> Self {
        let dir = TempDir::new().unwrap();
        let port = free_port();
        let binary = find_binary(&["redis-server", "valkey-server"])
            .expect("redis-server not found: install it (Debian: apt-get install redis-server)");
        let child = Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--requirepass", REDIS_PASSWORD])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start redis-server");
        let redis = Self { port, child, _dir: dir };
        wait_for_redis(&redis.url(), Duration::from_secs(10)).await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{}/0", self.port)
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

/// Settings by their environment names, for a child process.
#[derive(Clone, Debug)]
pub struct Settings(pub Vec<(String, String)>);

impl Settings {
    /// A SQLite file in `dir` (shared by every instance given the same
    /// `dir`), a fixed JWT secret, `APP_ENV=test`, no Redis, and generous
    /// limits (a test that needs a limit sets it).
    pub fn new(dir: &Path) -> Self {
        let mut s = Self(Vec::new());
        for (name, value) in [
            ("DATABASE_URL", format!("sqlite://{}/reportd.db", dir.display())),
            ("DATA_DIR", dir.display().to_string()),
            ("JWT_SECRET", JWT_SECRET.to_owned()),
            ("APP_ENV", "test".to_owned()),
            ("REDIS_HEALTH_INTERVAL_MS", "100".to_owned()),
            ("FLAGS_REFRESH_MS", "200".to_owned()),
        ] {
            s = s.set(name, &value);
        }
        for (name, value) in [
            ("LIMIT_LOGINS_PER_MIN", "100000"),
            ("LIMIT_POLLS_PER_SEC", "10000"),
            ("LIMIT_POLLS_BURST", "10000"),
            ("LIMIT_REQUESTS_PER_SEC", "10000"),
            ("LIMIT_REQUESTS_BURST", "10000"),
            ("LIMIT_SSE_PER_USER", "1000"),
            ("LIMIT_IMPORTS_PER_USER", "1000"),
        ] {
            s = s.set(name, value);
        }
        s
    }

    /// Redis configured, with every feature flag on: the state the replicas
    /// share (task status, sessions, answer events, limits, cache).
    pub fn with_redis(self, redis: &TestRedis) -> Self {
        let mut s = self.set("REDIS_URL", &redis.url());
        for flag in [
            "REDIS_ENABLED",
            "REDIS_TASK_STATUS_ENABLED",
            "REDIS_CHAT_SESSION_ENABLED",
            "REDIS_CACHE_ENABLED",
            "REDIS_RATE_LIMIT_ENABLED",
        ] {
            s = s.set(flag, "1");
        }
        s
    }

    pub fn set(mut self, name: &str, value: &str) -> Self {
        self.0.retain(|(k, _)| k != name);
        self.0.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// `reportd serve` as a child process on a free port; killed when dropped.
pub struct TestProcess {
    child: Child,
    pub port: u16,
    pub client: Client,
    pub log: PathBuf,
}

impl TestProcess {
    pub async fn start(settings: &Settings, dir: &Path, name: &str) -> Self {
        let port = free_port();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(binary())
            .env_clear()
            .envs(settings.0.iter().map(|(k, v)| (k, v)))
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("RUST_LOG", "info")
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("cannot start reportd");
        let client = Client::new(&format!("http://127.0.0.1:{port}"));
        let mut process = Self { child, port, client, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = process.client.http.get(process.client.url("/healthz")).send().await
                && r.status() == 200
            {
                return process;
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("reportd exited with {status}: {}", process.read_log());
            }
            assert!(Instant::now() < deadline, "reportd did not start: {}", process.read_log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn read_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// This instance's Prometheus text.
    pub async fn metrics(&self) -> String {
        self.client.http.get(self.client.url("/metrics")).send().await.unwrap().text().await.unwrap()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTP client for one base URL (an instance, or nginx).
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str) -> Self {
        // reqwest is built without a bundled TLS provider: building a client
        // without one installed panics.
        reportd::llm::install_tls_provider();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        Self { base: base.to_owned(), http }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Registers a fresh user and returns a token.
    pub async fn user(&self, username: &str) -> String {
        let r = self
            .http
            .post(self.url("/auth/register"))
            .json(&json!({"username": username, "password": "correct horse battery"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "register {username}");
        self.login(username, "correct horse battery").await
    }

    pub async fn login(&self, username: &str, password: &str) -> String {
        let r = self.try_login(username, password, None).await;
        assert_eq!(r.status(), 200, "login of {username}");
        r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned()
    }

    /// A login attempt, with an `X-Forwarded-For` of the client's own when given.
    pub async fn try_login(&self, username: &str, password: &str, forwarded_for: Option<&str>) -> reqwest::Response {
        let mut request =
            self.http.post(self.url("/auth/login")).json(&json!({"username": username, "password": password}));
        if let Some(address) = forwarded_for {
            request = request.header("X-Forwarded-For", address);
        }
        request.send().await.unwrap()
    }

    pub async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).bearer_auth(token).send().await.unwrap()
    }

    pub async fn json(&self, token: &str, path: &str) -> Value {
        let r = self.get(token, path).await;
        assert_eq!(r.status(), 200, "{path}");
        r.json().await.unwrap()
    }

    pub async fn upload(&self, token: &str, filename: &str, bytes: Vec<u8>) -> reqwest::Response {
        let part = reqwest::multipart::Part::bytes(bytes).file_name(filename.to_owned());
        let form = reqwest::multipart::Form::new().part("file", part);
        self.http.post(self.url("/Import_Doc/")).bearer_auth(token).multipart(form).send().await.unwrap()
    }

    /// Uploads, expects 202 and returns the task id.
    pub async fn import(&self, token: &str, filename: &str, bytes: Vec<u8>) -> String {
        let r = self.upload(token, filename, bytes).await;
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 202, "{body}");
        body["task_id"].as_str().unwrap().to_owned()
    }

    pub async fn status(&self, token: &str, task: &str) -> (u16, Value) {
        let r = self.get(token, &format!("/check_import_status/{task}")).await;
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(Value::Null))
    }
}

/// A small text document that imports quickly.
pub fn sample_text() -> Vec<u8> {
    "第一章 背景\n\n火星是太阳系的第四颗行星。Mars is the fourth planet from the Sun.\n".repeat(20).into_bytes()
}

/// One SSE event as received.
#[derive(Debug, Clone)]
pub struct Ev {
    pub id: Option<u64>,
    pub event: String,
    pub data: Value,
}

/// Reads an SSE response event by event.
pub struct SseReader {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl SseReader {
    pub fn new(response: reqwest::Response) -> Self {
        Self { body: Box::pin(response.bytes_stream()), buf: String::new() }
    }

    /// The next event (comments skipped); `None` when the body ends.
    pub async fn next(&mut self) -> Option<Ev> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, "message".to_owned(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if !data.is_empty() {
                            data.push('\n');
                        }
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if data.is_empty() {
                    continue;
                }
                let data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                return Some(Ev { id, event, data });
            }
            let chunk = self.body.next().await?.ok()?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The next event within 30 s (a failure otherwise).
    pub async fn next_within(&mut self) -> Ev {
        tokio::time::timeout(Duration::from_secs(30), self.next())
            .await
            .expect("no event within 30 s")
            .expect("the stream ended early")
    }

    /// Every event until the body ends (at most 60 s).
    pub async fn rest(&mut self) -> Vec<Ev> {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline.into(), self.next()).await {
            out.push(ev);
        }
        assert!(Instant::now() < deadline, "the stream did not end within 60 s: {out:?}");
        out
    }
}

/// The text of the deltas among `events`.
pub fn text_of(events: &[Ev]) -> String {
    events.iter().filter(|e| e.event == "delta").map(|e| e.data["content"].as_str().unwrap().to_owned()).collect()
}
