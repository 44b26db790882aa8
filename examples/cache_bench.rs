//! Read-cache benchmark (run by `bench/cache.sh`): `GET /documents/search`
//! answered from the cache against the same request answered by the
//! database, in one run.
//!
//! It talks to two running instances that share one database and one Redis:
//! `--cached` with `REDIS_CACHE_ENABLED=1`, `--uncached` with it off. It
//! registers a user, imports `--documents` generated documents (mixed
//! Chinese and English report text, a fixed seed) through the first, waits
//! for them, then drives each instance in turn with `--connections`
//! concurrent clients for `--seconds`, cycling through a few queries (so the
//! cached run serves a handful of hot entries, as a polling front end
//! would), after a one-second warm-up. It prints requests per second and
//! p50/p99 latency per instance, and the ratio cached / uncached.
//!
//! Usage: `cache_bench --cached URL --uncached URL [--documents 20] [--seconds 10] [--connections 32]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const QUERIES: &[&str] = &["development", "火星 探测", "market analysis", "数据", "energy policy", "人工智能"];

const ZH: &[&str] = &[
    "发展",
    "经济",
    "数据",
    "技术",
    "市场",
    "管理",
    "系统",
    "研究",
    "政策",
    "分析",
    "服务",
    "创新",
    "火星",
    "探测",
    "人工智能",
    "能源",
    "环境",
    "教育",
    "城市",
    "结构",
];
const EN: &[&str] = &[
    "development",
    "economy",
    "data",
    "technology",
    "market",
    "management",
    "system",
    "research",
    "policy",
    "analysis",
    "service",
    "innovation",
    "mars",
    "exploration",
    "energy",
    "environment",
    "education",
    "city",
    "structure",
    "report",
];

/// `{base}/documents/search?q=…` with `q` percent-encoded.
fn search_url(base: &str, q: &str) -> String {
    let q: String = q
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    format!("{base}/documents/search?q={q}")
}

struct Args {
    cached: String,
    uncached: String,
    documents: usize,
    seconds: u64,
    connections: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args { cached: String::new(), uncached: String::new(), documents: 20, seconds: 10, connections: 32 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--cached" => args.cached = value,
            "--uncached" => args.uncached = value,
            "--documents" => args.documents = value.parse()?,
            "--seconds" => args.seconds = value.parse()?,
            "--connections" => args.connections = value.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    if args.cached.is_empty() || args.uncached.is_empty() {
        bail!("usage: cache_bench --cached URL --uncached URL [--documents N] [--seconds N] [--connections N]");
    }
    Ok(args)
}

/// About 20 KB of report-like text with headings.
fn document(rng: &mut StdRng, n: usize) -> String {
    let mut text = format!("# Report {n}\n\n");
    for section in 0..8 {
        text.push_str(&format!("## 第{}节 Section {section}\n\n", section + 1));
        for _ in 0..6 {
            for _ in 0..30 {
                let word = if rng.random_bool(0.5) {
                    ZH[rng.random_range(0..ZH.len())]
                } else {
                    EN[rng.random_range(0..EN.len())]
                };
                text.push_str(word);
                text.push(' ');
            }
            text.push_str("。\n\n");
        }
    }
    text
}

async fn setup(http: &reqwest::Client, base: &str, documents: usize) -> anyhow::Result<String> {
    let name = format!("cache_bench_{}", std::process::id());
    let cred = json!({"username": name, "password": "bench-password-123"});
    let r = http.post(format!("{base}/auth/register")).json(&cred).send().await?;
    if r.status() != 201 {
        bail!("register answered {}: {}", r.status(), r.text().await?);
    }
    let login: Value = http.post(format!("{base}/auth/login")).json(&cred).send().await?.json().await?;
    let token = login["access_token"].as_str().context("no access_token")?.to_owned();
    let mut rng = StdRng::seed_from_u64(7);
    let mut tasks = Vec::new();
    for n in 0..documents {
        let part = reqwest::multipart::Part::bytes(document(&mut rng, n).into_bytes()).file_name(format!("r{n}.md"));
        let form = reqwest::multipart::Form::new().part("file", part);
        let r = http.post(format!("{base}/imports")).bearer_auth(&token).multipart(form).send().await?;
        let body: Value = r.json().await?;
        tasks.push(body["task_id"].as_str().with_context(|| format!("upload refused: {body}"))?.to_owned());
        // Stay under the per-user import limits, whatever they are.
        wait_done(http, base, &token, tasks.last().unwrap()).await?;
    }
    Ok(token)
}

async fn wait_done(http: &reqwest::Client, base: &str, token: &str, task: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = http.get(format!("{base}/imports/{task}")).bearer_auth(token).send().await?;
        if r.status() == 200 {
            let body: Value = r.json().await?;
            match body["status"].as_str() {
                Some("completed") => return Ok(()),
                Some("failed") => bail!("import failed: {body}"),
                _ => {}
            }
        }
        if Instant::now() > deadline {
            bail!("import {task} did not complete");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
}

/// `connections` clients sending searches back to back until `until`;
/// latencies in microseconds, and the count of non-200 answers.
async fn drive(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    connections: usize,
    until: Instant,
) -> (Vec<u32>, usize) {
    let urls: Arc<Vec<String>> = Arc::new(QUERIES.iter().map(|q| search_url(url, q)).collect());
    let token = Arc::new(token.to_owned());
    let clients = (0..connections).map(|c| {
        let (http, urls, token) = (http.clone(), urls.clone(), token.clone());
        tokio::spawn(async move {
            let (mut latencies, mut errors) = (Vec::new(), 0);
            let mut n = c;
            while Instant::now() < until {
                let url = &urls[n % urls.len()];
                n += 1;
                let started = Instant::now();
                match http.get(url).bearer_auth(&*token).send().await {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                        latencies.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        })
    });
    let mut all = Vec::new();
    let mut errors = 0;
    for done in futures::future::join_all(clients).await {
        let (latencies, e) = done.expect("a client task panicked");
        all.extend(latencies);
        errors += e;
    }
    (all, errors)
}

async fn measure(http: &reqwest::Client, url: &str, token: &str, args: &Args) -> Run {
    drive(http, url, token, args.connections, Instant::now() + Duration::from_secs(1)).await;
    let started = Instant::now();
    let (mut latencies, errors) =
        drive(http, url, token, args.connections, started + Duration::from_secs(args.seconds)).await;
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    Run { rps: latencies.len() as f64 / elapsed, p50_ms: pct(0.50), p99_ms: pct(0.99), errors }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    reportd::llm::install_tls_provider();
    let http = reqwest::Client::builder().pool_max_idle_per_host(args.connections).build()?;
    eprintln!("[cache_bench] importing {} documents", args.documents);
    let token = setup(&http, &args.cached, args.documents).await?;
    // The same answer from both, so that the comparison is fair.
    for q in QUERIES {
        let get = |base: &str| http.get(search_url(base, q)).bearer_auth(&token).send();
        let a = get(&args.cached).await?.text().await?;
        let b = get(&args.uncached).await?.text().await?;
        if a != b {
            bail!("the two instances answer {q:?} differently");
        }
        let hits = serde_json::from_str::<Value>(&a)?["items"].as_array().map_or(0, Vec::len);
        if hits == 0 {
            bail!("no hit for {q:?}: the benchmark would measure empty answers");
        }
    }
    eprintln!("[cache_bench] {} connections, {} s per run", args.connections, args.seconds);
    let uncached = measure(&http, &args.uncached, &token, &args).await;
    let cached = measure(&http, &args.cached, &token, &args).await;
    for (label, run) in [("uncached (database)", &uncached), ("cached (Redis)", &cached)] {
        println!(
            "search {label:<20} {:>9.0} req/s   p50 {:>7.2} ms   p99 {:>7.2} ms   errors {}",
            run.rps, run.p50_ms, run.p99_ms, run.errors
        );
    }
    println!("cached / uncached throughput: {:.2}x", cached.rps / uncached.rps.max(1e-9));
    Ok(())
}
