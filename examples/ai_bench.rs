//! The assistants' figures (run by `bench/ai.sh`, which builds this in
//! release mode, starts a private redis-server and raises the open-file
//! limit):
//!
//! 1. `latency`: the latency reportd adds to the first delta, over the
//!    model's own: the time to the first token asked of the fake model
//!    directly, and through `POST /ai/generate`, interleaved, same fake.
//! 2. `writes`: Redis commands per streamed answer of 1,000 tokens, with
//!    sessions in Redis, at two model speeds.
//! 3. `streams`: SSE streams held open at once by one instance (each
//!    mid-answer, its model call open), and the memory per stream (growth of
//!    the instance's resident set divided by the streams).
//!
//! The fake model is the test suite's (`tests/api/fakes.rs`): a real HTTP
//! server speaking OpenAI's SSE.

#[path = "../tests/api/fakes.rs"]
mod fakes;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fakes::{FakeLlm, Reply};
use futures::StreamExt;
use serde_json::{Value, json};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Service {
    child: Child,
    base: String,
    http: reqwest::Client,
    token: String,
    _dir: tempfile::TempDir,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    async fn start(binary: &str, env: &[(&str, String)]) -> Self {
        let dir = tempfile::TempDir::new().unwrap();
        let port = free_port();
        let mut cmd = Command::new(binary);
        cmd.current_dir(dir.path())
            .env("PORT", port.to_string())
            .env("APP_ENV", "bench")
            .env("RUST_LOG", "warn")
            .env("JWT_SECRET", "bench-secret-bench-secret-bench-secret-0123")
            .stdout(Stdio::null())
            // Not inherited: a reportd left behind must not hold the
            // caller's pipe open.
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start reportd");
        let http = reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while http.get(format!("{base}/healthz")).send().await.is_err() {
            assert!(Instant::now() < deadline, "reportd did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let creds = json!({"username": "bench", "password": "bench password 1"});
        http.post(format!("{base}/auth/register")).json(&creds).send().await.unwrap();
        let login: Value =
            http.post(format!("{base}/auth/login")).json(&creds).send().await.unwrap().json().await.unwrap();
        let token = login["access_token"].as_str().unwrap().to_owned();
        Self { child, base, http, token, _dir: dir }
    }

    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    async fn open(&self, task: &str) -> reqwest::Response {
        let r = self
            .http
            .post(format!("{}/ai/generate", self.base))
            .bearer_auth(&self.token)
            .json(&json!({"task_id": task, "message": "写一段关于火星的介绍"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
        r
    }

    /// Fifty short answers before measuring memory (allocator arenas, the
    /// search dictionary, connection pools).
    async fn warm_up(&self, llm: &FakeLlm) {
        for i in 0..50 {
            llm.push(Reply::Text { chunks: vec!["热身".into()], delay_ms: 1 });
            let r = self.open(&format!("warm{i}")).await;
            until_block(r, |b| b.contains("event: done")).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = self.http.get(format!("{}/metrics", self.base)).send().await.unwrap().text().await.unwrap();
        text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    }
}

/// Reads an SSE body until `pred` holds for a received block; returns when.
async fn until_block(response: reqwest::Response, pred: impl Fn(&str) -> bool) -> Option<Instant> {
    let mut body = response.bytes_stream();
    let mut buf = String::new();
    while let Some(Ok(chunk)) = body.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if pred(&block) {
                return Some(Instant::now());
            }
        }
    }
    None
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn latency(binary: &str, runs: usize) {
    let llm = FakeLlm::start().await;
    let svc = Service::start(binary, &[("LLM_BASE_URL", llm.base_url.clone())]).await;
    let reply = || Reply::Text { chunks: (0..10).map(|i| format!("第{i}句。")).collect(), delay_ms: 20 };
    let http = reqwest::Client::new();
    let (mut direct, mut through) = (Vec::new(), Vec::new());
    for i in 0..runs + 5 {
        llm.push(reply());
        let started = Instant::now();
        let r = http
            .post(format!("{}/chat/completions", llm.base_url))
            .json(&json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "x"}]}))
            .send()
            .await
            .unwrap();
        let first = until_block(r, |b| b.contains("\"content\"")).await.unwrap();
        let d = first.duration_since(started).as_secs_f64() * 1000.0;

        llm.push(reply());
        let started = Instant::now();
        let r = svc.open(&format!("lat{i}")).await;
        let first = until_block(r, |b| b.contains("event: delta")).await.unwrap();
        let t = first.duration_since(started).as_secs_f64() * 1000.0;
        if i >= 5 {
            direct.push(d);
            through.push(t);
        }
    }
    direct.sort_by(f64::total_cmp);
    through.sort_by(f64::total_cmp);
    println!("latency to the first delta over {runs} runs (the fake model waits 20 ms before its first token):");
    println!("  model directly:      p50 {:.2} ms  p95 {:.2} ms", percentile(&direct, 0.5), percentile(&direct, 0.95));
    println!(
        "  through reportd:     p50 {:.2} ms  p95 {:.2} ms",
        percentile(&through, 0.5),
        percentile(&through, 0.95)
    );
    println!(
        "  added by reportd:    p50 {:.2} ms  p95 {:.2} ms",
        percentile(&through, 0.5) - percentile(&direct, 0.5),
        percentile(&through, 0.95) - percentile(&direct, 0.95)
    );
}

/// (round trips, commands executed): calls reportd sent, and every command
/// Redis ran, those inside Lua scripts included (`INFO commandstats` counts
/// both). Health pings and the bench's own INFO are left out.
async fn redis_commands(redis: &mut redis::aio::MultiplexedConnection) -> (u64, u64) {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(redis).await.unwrap();
    let calls = |l: &str| l.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok();
    let stats: Vec<(String, u64)> = info
        .lines()
        .filter_map(|l| Some((l.strip_prefix("cmdstat_")?.split(':').next()?.to_owned(), calls(l)?)))
        .filter(|(name, _)| !["ping", "info", "hello", "client"].contains(&name.as_str()))
        .collect();
    // What reportd sends itself; XADD, XREVRANGE and PEXPIRE run only
    // inside its scripts (SET and DEL inside scripts too, but also alone).
    let sent = ["evalsha", "eval", "get", "set", "pttl", "del", "exists", "xrange", "publish", "script"];
    let trips = stats.iter().filter(|(n, _)| sent.contains(&n.as_str())).map(|(_, c)| c).sum();
    (trips, stats.iter().map(|(_, c)| c).sum())
}

async fn writes(binary: &str, redis_url: &str) {
    let llm = FakeLlm::start().await;
    let mut redis = redis::Client::open(redis_url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let env = [
        ("LLM_BASE_URL", llm.base_url.clone()),
        ("REDIS_URL", redis_url.to_owned()),
        ("REDIS_ENABLED", "1".into()),
        ("REDIS_CHAT_SESSION_ENABLED", "1".into()),
        // The flag-refresh reads are configuration, not the stream's cost.
        ("FLAGS_REFRESH_MS", "3600000".into()),
    ];
    let svc = Service::start(binary, &env).await;
    println!("Redis commands per streamed answer of 1,000 tokens (sessions in Redis):");
    for (pace_ms, label) in [(1u64, "1,000 tokens/s"), (10, "100 tokens/s"), (40, "25 tokens/s")] {
        let tokens: Vec<String> = (0..1000).map(|i| format!("字{}", i % 10)).collect();
        llm.push(Reply::Text { chunks: tokens, delay_ms: pace_ms });
        let writes_before = svc.metric("reportd_ai_stream_writes_total").await;
        let before = redis_commands(&mut redis).await;
        let started = Instant::now();
        let r = svc.open(&format!("w{pace_ms}")).await;
        until_block(r, |b| b.contains("event: done")).await.expect("the answer completes");
        let took = started.elapsed().as_secs_f64();
        let after = redis_commands(&mut redis).await;
        let writes_after = svc.metric("reportd_ai_stream_writes_total").await;
        let log_writes = writes_after - writes_before;
        println!(
            "  model at {label:>15}: answer took {took:5.1} s; event-log writes {log_writes:4.0} ({:.1}/s); \
             Redis round trips {} in all (lease, session, events); commands run incl. inside scripts {}",
            log_writes / took,
            after.0 - before.0,
            after.1 - before.1
        );
    }
}

/// The SSE side alone, on an instance of its own: clients following one
/// running answer (resumes), each an open SSE response and nothing else.
async fn followers(binary: &str, n: usize) {
    let llm = FakeLlm::start().await;
    let env = [
        ("LLM_BASE_URL", llm.base_url.clone()),
        ("LLM_IDLE_TIMEOUT_SECONDS", "3600".into()),
        ("AI_TURN_TIMEOUT_SECONDS", "3600".into()),
    ];
    let svc = Service::start(binary, &env).await;
    svc.warm_up(&llm).await;
    llm.push(Reply::Hang { chunks: vec!["正在写".into()] });
    let first = svc.open("followed").await;
    let mut first_body = first.bytes_stream();
    let head = String::from_utf8_lossy(&first_body.next().await.unwrap().unwrap()).into_owned();
    let stream_id = head.split("\"stream_id\":\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let base_rss = svc.rss_kb();
    let mut followers = Vec::with_capacity(n);
    for b in 0..n.div_ceil(250) {
        let opens = (b * 250..((b + 1) * 250).min(n)).map(|_| {
            let (svc, url) = (&svc, format!("{}/ai/streams/{stream_id}", svc.base));
            async move {
                let r = svc.http.get(url).bearer_auth(&svc.token).send().await.unwrap();
                assert_eq!(r.status(), 200);
                let mut body = r.bytes_stream();
                body.next().await.expect("the replay").unwrap();
                body
            }
        });
        followers.extend(futures::future::join_all(opens).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = svc.rss_kb();
    println!("SSE responses alone ({} clients following one answer, Last-Event-ID resumes):", followers.len());
    println!(
        "  resident memory: {:.1} MiB before, {:.1} MiB with them: {:.1} KiB per SSE response",
        base_rss as f64 / 1024.0,
        rss as f64 / 1024.0,
        (rss.saturating_sub(base_rss)) as f64 / followers.len() as f64
    );
    drop(followers);
    drop(first_body);
}

async fn streams(binary: &str, n: usize) {
    let llm = FakeLlm::start().await;
    let env = [
        ("LLM_BASE_URL", llm.base_url.clone()),
        ("AI_MAX_STREAMS", (n + 100).to_string()),
        ("LLM_IDLE_TIMEOUT_SECONDS", "3600".into()),
        ("LLM_FIRST_TOKEN_TIMEOUT_SECONDS", "3600".into()),
        ("AI_TURN_TIMEOUT_SECONDS", "3600".into()),
        ("SSE_KEEPALIVE_SECONDS", "15".into()),
    ];
    let svc = Service::start(binary, &env).await;
    svc.warm_up(&llm).await;

    let base_rss = svc.rss_kb();
    for _ in 0..n {
        llm.push(Reply::Hang { chunks: vec!["正在写".into()] });
    }
    let started = Instant::now();
    let mut held = Vec::with_capacity(n);
    let batch = 250;
    for b in 0..n.div_ceil(batch) {
        let opens = (b * batch..((b + 1) * batch).min(n)).map(|i| {
            let svc = &svc;
            async move {
                let r = svc.open(&format!("s{i}")).await;
                let mut body = r.bytes_stream();
                let mut buf = String::new();
                // Hold the stream once its first delta has arrived.
                while !buf.contains("event: delta") {
                    let chunk = body.next().await.expect("stream open").unwrap();
                    buf.push_str(&String::from_utf8_lossy(&chunk));
                }
                body
            }
        });
        held.extend(futures::future::join_all(opens).await);
    }
    let opened = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = svc.rss_kb();
    let active = svc.metric("reportd_ai_active_streams").await;
    println!("SSE streams held by one instance (memory mode, each mid-answer with its model call open):");
    println!("  streams open: {} (reportd_ai_active_streams = {active:.0}), opened in {opened:.1} s", held.len());
    println!(
        "  resident memory: {:.1} MiB before, {:.1} MiB with them: {:.1} KiB per stream",
        base_rss as f64 / 1024.0,
        rss as f64 / 1024.0,
        (rss.saturating_sub(base_rss)) as f64 / held.len() as f64
    );
    drop(held);
}

#[tokio::main]
async fn main() {
    reportd::llm::install_tls_provider();
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: ai_bench REPORTD_BINARY latency [RUNS] | writes REDIS_URL | streams [N]";
    let binary = args.get(1).expect(usage);
    match args.get(2).map(String::as_str) {
        Some("latency") => latency(binary, args.get(3).map_or(200, |n| n.parse().unwrap())).await,
        Some("writes") => writes(binary, args.get(3).expect(usage)).await,
        Some("streams") => {
            let n = args.get(3).map_or(10_000, |n| n.parse().unwrap());
            streams(binary, n).await;
            followers(binary, n).await;
        }
        _ => panic!("{usage}"),
    }
}
