//! The test harness: a real `redis-server` per test, the service in-process
//! (`TestApp`) or as a child process (`TestProcess`), and an HTTP client
//! that speaks the service's API.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use reportd::{App, Cli};
use serde_json::{Value, json};
use tempfile::TempDir;

pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123456789";
pub const REDIS_PASSWORD: &str = "s3cret:pass@word";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

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

/// A private `redis-server` on a free port, with a password and no
/// persistence; killed when dropped.
pub struct TestRedis {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
}

impl TestRedis {
    pub async fn start() -> Self {
        let mut redis = Self { port: free_port(), child: None, dir: TempDir::new().unwrap() };
        redis.spawn().await;
        redis
    }

    async fn spawn(&mut self) {
        let binary = find_binary(&["redis-server", "valkey-server"])
            .expect("redis-server not found: run `bash scripts/test.sh`, which installs it");
        let child = Command::new(binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--requirepass", REDIS_PASSWORD])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = self.try_connect().await
                && redis::cmd("PING").query_async::<String>(&mut c).await.is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not answer on port {}", self.port);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn try_connect(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url())?.get_multiplexed_async_connection().await
    }

    pub fn url(&self) -> String {
        let pw: String = REDIS_PASSWORD
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        format!("redis://:{pw}@127.0.0.1:{}/0", self.port)
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        self.try_connect().await.expect("test redis reachable")
    }

    /// Kills the server (SIGKILL: as abrupt as a crash).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): the port stays open but nothing answers,
    /// the worst case for a client.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis running").id();
        assert!(Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
    }

    /// Starts it again on the same port (empty: nothing was persisted).
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// Every key with its remaining TTL in milliseconds (-1: none).
    pub async fn keys_with_ttl(&self) -> BTreeMap<String, i64> {
        let mut conn = self.conn().await;
        let mut keys: Vec<String> = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) =
                redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(1000).query_async(&mut conn).await.unwrap();
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let mut out = BTreeMap::new();
        for k in keys {
            let ttl: i64 = redis::cmd("PTTL").arg(&k).query_async(&mut conn).await.unwrap();
            // -2: the key expired between SCAN and PTTL (a rate-limit key
            // lives for milliseconds under generous test limits).
            if ttl != -2 {
                out.insert(k, ttl);
            }
        }
        out
    }

    /// Like [`keys_with_ttl`](Self::keys_with_ttl), without the rate-limit
    /// keys (`{p}:{env}:rl:rate:{limit}:{user|ip|name}:{id}`), which any request
    /// may leave for as long as its burst takes to drain. Each one removed
    /// is checked: it follows that template and expires.
    pub async fn state_keys_with_ttl(&self) -> BTreeMap<String, i64> {
        let mut keys = self.keys_with_ttl().await;
        keys.retain(|key, ttl| {
            let parts: Vec<&str> = key.split(':').collect();
            if parts.get(2..4) != Some(&["rl", "rate"][..]) {
                return true;
            }
            assert!(parts.len() >= 7 && ["user", "ip", "name"].contains(&parts[5]), "{key}");
            assert!(*ttl > 0, "{key} has TTL {ttl}");
            false
        });
        keys
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Settings by their environment names (`REDIS_ENABLED` …), the same for
/// in-process apps (as flags) and child processes (as environment).
#[derive(Clone, Debug)]
pub struct Settings(pub BTreeMap<String, String>);

impl Settings {
    /// The database of the pass (see [`postgres_pass`]): a private SQLite
    /// file in `dir`, or a PostgreSQL database of its own for `dir`. Settings
    /// made for one directory share that database (two instances of one
    /// service, or one instance restarted); other directories never do.
    /// Also a fixed JWT secret and `APP_ENV=test`.
    pub fn new(dir: &Path) -> Self {
        let settings = Self::sqlite(dir);
        if postgres_pass() { settings.set("DATABASE_URL", &postgres_database(dir)) } else { settings }
    }

    /// Like [`Settings::new`], but on SQLite in both passes: for tests of
    /// SQLite itself (its files, its locking).
    pub fn sqlite(dir: &Path) -> Self {
        let mut s = BTreeMap::new();
        s.insert("DATABASE_URL".into(), format!("sqlite://{}/reportd.db", dir.display()));
        s.insert("DATA_DIR".into(), dir.display().to_string());
        s.insert("JWT_SECRET".into(), JWT_SECRET.into());
        s.insert("APP_ENV".into(), "test".into());
        s.insert("REDIS_HEALTH_INTERVAL_MS".into(), "100".into());
        s.insert("FLAGS_REFRESH_MS".into(), "200".into());
        // In-process apps run in the test binary: parse workers are the real binary.
        s.insert("IMPORT_PARSER_EXE".into(), binary().into());
        // Tests register many users from 127.0.0.1 and poll fast; the limit
        // tests (limits.rs) set the limits they test.
        for (name, value) in [
            ("LIMIT_LOGINS_PER_MIN", "100000"),
            ("LIMIT_POLLS_PER_SEC", "10000"),
            ("LIMIT_POLLS_BURST", "10000"),
            ("LIMIT_REQUESTS_PER_SEC", "10000"),
            ("LIMIT_REQUESTS_BURST", "10000"),
            ("LIMIT_SSE_PER_USER", "1000"),
            ("LIMIT_IMPORTS_PER_USER", "1000"),
        ] {
            s.insert(name.into(), value.into());
        }
        Self(s)
    }

    /// The `DATABASE_URL` these settings give the service.
    pub fn database_url(&self) -> &str {
        &self.0["DATABASE_URL"]
    }

    /// Redis configured and every feature flag on.
    pub fn with_redis(self, redis: &TestRedis) -> Self {
        self.set("REDIS_URL", &redis.url())
            .set("REDIS_ENABLED", "1")
            .set("REDIS_TASK_STATUS_ENABLED", "1")
            .set("REDIS_CHAT_SESSION_ENABLED", "1")
            .set("REDIS_CACHE_ENABLED", "1")
            .set("REDIS_RATE_LIMIT_ENABLED", "1")
    }

    /// The model at `base_url` (a `FakeLlm`'s), with a test key, fast
    /// retries and fast delta merging.
    pub fn with_llm(self, base_url: &str) -> Self {
        self.set("LLM_BASE_URL", base_url)
            .set("LLM_API_KEY", "sk-test-secret-key")
            .set("LLM_MODEL", "fake-model")
            .set("LLM_RETRY_BASE_MS", "20")
            .set("AI_DELTA_INTERVAL_MS", "20")
    }

    pub fn set(mut self, name: &str, value: &str) -> Self {
        self.0.insert(name.into(), value.into());
        self
    }

    fn as_args(&self) -> Vec<String> {
        let mut args = vec!["reportd".to_string()];
        for (k, v) in &self.0 {
            args.push(format!("--{}", k.to_ascii_lowercase().replace('_', "-")));
            args.push(v.clone());
        }
        args
    }
}

/// True in the PostgreSQL pass of the suite (`REPORTD_TEST_DB=postgres`,
/// which `scripts/test.sh` sets together with `REPORTD_TEST_POSTGRES`).
pub fn postgres_pass() -> bool {
    match std::env::var("REPORTD_TEST_DB").as_deref() {
        Ok("postgres") => true,
        Ok("sqlite") | Ok("") | Err(_) => false,
        Ok(other) => panic!("REPORTD_TEST_DB must be `sqlite` or `postgres`, not {other:?}"),
    }
}

/// The URL of the PostgreSQL database that belongs to `dir`, created on the
/// `REPORTD_TEST_POSTGRES` server the first time it is asked for.
///
/// The database's URL is written into `dir`, so that it lives exactly as
/// long as the directory: asked again for the same directory it is the same
/// database, and a later directory that happens to get the same name gets a
/// new one. Once a directory is gone its test has ended, and its database is
/// dropped when the next one is created (so a run does not pile up a
/// database per test on the disk); the last few go with the throw-away
/// cluster of `scripts/test.sh`.
fn postgres_database(dir: &Path) -> String {
    /// The databases this process created, with the directory each belongs to.
    static CREATED: std::sync::Mutex<Vec<(PathBuf, String)>> = std::sync::Mutex::new(Vec::new());

    let marker = dir.join(".reportd-test-postgres-url");
    if let Ok(url) = std::fs::read_to_string(&marker) {
        return url;
    }
    let server = std::env::var("REPORTD_TEST_POSTGRES").expect(
        "REPORTD_TEST_DB=postgres needs REPORTD_TEST_POSTGRES (a server URL such as \
         postgres://postgres@127.0.0.1:5432/postgres): run `bash scripts/test.sh`, which starts one",
    );
    // Lower case letters and digits only, so the name needs no quoting.
    let name = format!("api_{}", uuid::Uuid::new_v4().simple());
    let ended: Vec<String> = {
        let mut created = CREATED.lock().unwrap_or_else(|e| e.into_inner());
        let (gone, live): (Vec<_>, Vec<_>) = created.drain(..).partition(|(dir, _)| !dir.exists());
        *created = live;
        created.push((dir.to_path_buf(), name.clone()));
        gone.into_iter().map(|(_, name)| name).collect()
    };
    let mut statements: Vec<String> =
        ended.iter().map(|old| format!("DROP DATABASE IF EXISTS {old} WITH (FORCE)")).collect();
    statements.push(format!("CREATE DATABASE {name}"));
    // Settings::new is synchronous and is called inside tokio runtimes,
    // which cannot be blocked on: the statements run on a thread of its own
    // with a small runtime of its own.
    let admin = server.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            use sqlx::Connection;
            let mut conn = sqlx::postgres::PgConnection::connect(&admin)
                .await
                .unwrap_or_else(|e| panic!("cannot connect to REPORTD_TEST_POSTGRES ({admin}): {e}"));
            let create = statements.pop().unwrap();
            for drop in statements {
                // Best effort: a database left behind only costs disk.
                let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut conn).await;
            }
            sqlx::query(sqlx::AssertSqlSafe(create)).execute(&mut conn).await.expect("CREATE DATABASE");
            let _ = conn.close().await;
        });
    })
    .join()
    .expect("creating the test database failed");
    let (base, query) = match server.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (server.as_str(), None),
    };
    let (root, _) = base.rsplit_once('/').expect("REPORTD_TEST_POSTGRES names a database");
    let url = match query {
        Some(query) => format!("{root}/{name}?{query}"),
        None => format!("{root}/{name}"),
    };
    std::fs::write(&marker, &url).unwrap();
    url
}

/// The service running inside the test process.
pub struct TestApp {
    pub app: Arc<App>,
    pub client: Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: Option<TempDir>,
}

impl TestApp {
    /// An app on the given settings (its directory is the caller's).
    pub async fn start(settings: Settings) -> Self {
        Self::start_inner(settings, None).await
    }

    /// An app with its own temporary directory (database, secret).
    pub async fn spawn(configure: impl FnOnce(Settings) -> Settings) -> Self {
        let dir = TempDir::new().unwrap();
        let settings = configure(Settings::new(dir.path()));
        Self::start_inner(settings, Some(dir)).await
    }

    async fn start_inner(settings: Settings, dir: Option<TempDir>) -> Self {
        let cli = Cli::try_parse_from(settings.as_args()).expect("test settings parse");
        let app = App::build(cli.config).await.expect("app builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let served = app.clone();
        tokio::spawn(async move {
            reportd::serve(listener, served, async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self { client: Client::new(&base), app, shutdown: Some(tx), _dir: dir }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.app.background.cancel();
    }
}

/// The service as a child process of the test (for SIGKILL and two-process tests).
pub struct TestProcess {
    child: Child,
    /// The port it listens on (the deployment tests point nginx at it).
    #[allow(dead_code)]
    pub port: u16,
    pub client: Client,
    pub log: PathBuf,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_reportd")
}

impl TestProcess {
    /// Starts `reportd serve` in `dir` with exactly `settings` as its environment.
    pub async fn start(settings: &Settings, dir: &Path, name: &str) -> Self {
        Self::start_on(settings, dir, name, free_port()).await
    }

    /// Like [`start`](Self::start), on a given port (a restart in place,
    /// behind a proxy that knows the port).
    pub async fn start_on(settings: &Settings, dir: &Path, name: &str, port: u16) -> Self {
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(binary())
            .env_clear()
            .envs(&settings.0)
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
                panic!("reportd exited with {status}: {}", std::fs::read_to_string(&process.log).unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "reportd did not start: {}", process.read_log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The resident memory of the process, in KiB.
    pub fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub fn read_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no chance to clean up, as in a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status (waits at most `within`).
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for TestProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTP client for one instance.
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
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        Self { base: base.to_owned(), http }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn register(&self, username: &str, password: &str) -> reqwest::Response {
        self.http
            .post(self.url("/auth/register"))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .unwrap()
    }

    pub async fn login(&self, username: &str, password: &str) -> String {
        let r = self
            .http
            .post(self.url("/auth/login"))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "login of {username}");
        r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned()
    }

    /// Registers a fresh user and returns a token.
    pub async fn user(&self, username: &str) -> String {
        let r = self.register(username, "correct horse battery").await;
        assert_eq!(r.status(), 201, "register {username}");
        self.login(username, "correct horse battery").await
    }

    /// `GET /ai/streams/{stream_id}` with `Last-Event-ID: last_id`: resumes
    /// an answer after the last event the client had.
    pub async fn resume(&self, token: &str, stream_id: &str, last_id: u64) -> reqwest::Response {
        self.http
            .get(self.url(&format!("/ai/streams/{stream_id}")))
            .bearer_auth(token)
            .header("Last-Event-ID", last_id.to_string())
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).bearer_auth(token).send().await.unwrap()
    }

    pub async fn upload(&self, token: &str, path: &str, filename: &str, bytes: Vec<u8>) -> reqwest::Response {
        let part = reqwest::multipart::Part::bytes(bytes).file_name(filename.to_owned());
        let form = reqwest::multipart::Form::new().part("file", part);
        self.http.post(self.url(path)).bearer_auth(token).multipart(form).send().await.unwrap()
    }

    /// Uploads through `POST /Import_Doc/`, expects 202 and returns the task id.
    pub async fn import(&self, token: &str, filename: &str, bytes: Vec<u8>) -> String {
        let r = self.upload(token, "/Import_Doc/", filename, bytes).await;
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["status"], "pending");
        body["task_id"].as_str().unwrap().to_owned()
    }

    pub async fn status(&self, token: &str, task: &str) -> (u16, Value) {
        let r = self.get(token, &format!("/check_import_status/{task}")).await;
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(Value::Null))
    }

    /// Polls until the task is terminal (at most 60 s) and returns it.
    pub async fn wait_done(&self, token: &str, task: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (code, body) = self.status(token, task).await;
            assert_eq!(code, 200, "{body}");
            if body["status"] == "completed" || body["status"] == "failed" {
                return body;
            }
            assert!(Instant::now() < deadline, "task {task} did not finish: {body}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Imports [`sample_text`], waits for it to complete and returns the task id.
    pub async fn imported(&self, token: &str) -> String {
        let task = self.import(token, "a.txt", sample_text()).await;
        let done = self.wait_done(token, &task).await;
        assert_eq!(done["status"], "completed", "{done}");
        task
    }

    pub async fn json(&self, token: &str, path: &str) -> Value {
        let r = self.get(token, path).await;
        assert_eq!(r.status(), 200, "{path}");
        r.json().await.unwrap()
    }

    pub async fn readyz(&self) -> (u16, Value) {
        let r = self.http.get(self.url("/readyz")).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }
}

/// A small text document that imports quickly.
pub fn sample_text() -> Vec<u8> {
    "第一章 背景\n\n火星是太阳系的第四颗行星。Mars is the fourth planet from the Sun.\n".repeat(20).into_bytes()
}

/// Waits (at most `within`) until `check` holds.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The shared corpus of real documents: `../shared/corpus` beside the
/// checkout, or wherever `REPORTD_CORPUS` points.
pub fn corpus_dir() -> PathBuf {
    std::env::var_os("REPORTD_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus"))
}

/// The corpus's MANIFEST.json.
pub fn corpus_manifest() -> Value {
    let dir = corpus_dir();
    let text = std::fs::read_to_string(dir.join("MANIFEST.json"))
        .unwrap_or_else(|e| panic!("the corpus must be at {} (or REPORTD_CORPUS): {e}", dir.display()));
    serde_json::from_str(&text).unwrap()
}

/// One file of the corpus.
pub fn corpus_file(name: &str) -> Vec<u8> {
    std::fs::read(corpus_dir().join(name)).unwrap_or_else(|e| panic!("corpus file {name}: {e}"))
}
