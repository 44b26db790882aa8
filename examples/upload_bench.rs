//! Upload memory (run by `bench/uploads.sh`, which builds this and reportd
//! in release mode): `upload_bench REPORTD_BINARY [UPLOADS] [SIZE_MIB]`.
//!
//! Starts one reportd with the default settings (SQLite in a temporary
//! directory), registers one user per upload, then sends UPLOADS uploads of
//! SIZE_MIB MiB each at once (default 50 × 50 MiB) and prints:
//!
//! - how many were accepted (202) and refused (503, `MAX_UPLOADS_IN_FLIGHT`);
//! - the service's resident memory before, at its peak while the uploads
//!   were received, at its peak while the accepted files were imported, and
//!   after, once idle. Parse workers are separate processes with their own
//!   limit (`IMPORT_PARSE_MEMORY_MB`) and are not counted.
//!
//! The files are valid text (Chinese and English lines), generated as they
//! are sent from one shared 256 KiB piece, so this process stays small.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

const BOUNDARY: &str = "upload-bench-boundary";
const PIECE: usize = 256 * 1024;

struct Service {
    child: Child,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    async fn start(binary: &str) -> Self {
        let dir = tempfile::TempDir::new().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(binary)
            .current_dir(dir.path())
            .env("PORT", port.to_string())
            .env("DATA_DIR", dir.path())
            .env("APP_ENV", "bench")
            .env("RUST_LOG", "warn")
            .env("JWT_SECRET", "bench-secret-bench-secret-bench-secret-0123")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start reportd");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(900)).build().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while http.get(format!("{base}/healthz")).send().await.is_err() {
            assert!(Instant::now() < deadline, "reportd did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { child, base, http, _dir: dir }
    }

    async fn user(&self, name: &str) -> String {
        let creds = json!({"username": name, "password": "bench password 1"});
        let r = self.http.post(format!("{}/auth/register", self.base)).json(&creds).send().await.unwrap();
        assert_eq!(r.status(), 201, "register {name}");
        let login: Value = self
            .http
            .post(format!("{}/auth/login", self.base))
            .json(&creds)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        login["access_token"].as_str().unwrap().to_owned()
    }

    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Sends one upload of `pieces` × 256 KiB; returns the status (0 when
    /// the request failed) and the task id when accepted.
    async fn upload(&self, token: &str, piece: bytes::Bytes, pieces: usize) -> (u16, Option<String>) {
        let head = format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"bench.txt\"\r\n\
             Content-Type: text/plain\r\n\r\n"
        );
        let tail = format!("\r\n--{BOUNDARY}--\r\n");
        let body = futures::stream::once(async move { bytes::Bytes::from(head) })
            .chain(futures::stream::iter(std::iter::repeat_n(piece, pieces)))
            .chain(futures::stream::once(async move { bytes::Bytes::from(tail) }))
            .map(Ok::<_, std::io::Error>);
        let sent = self
            .http
            .post(format!("{}/Import_Doc/", self.base))
            .bearer_auth(token)
            .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await;
        match sent {
            Ok(r) => {
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                (status, body["task_id"].as_str().map(str::to_owned))
            }
            Err(_) => (0, None),
        }
    }

    async fn metric(&self, name: &str) -> u64 {
        let text = self.http.get(format!("{}/metrics", self.base)).send().await.unwrap().text().await.unwrap();
        text.lines().filter_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok()).sum::<f64>()
            as u64
    }

    async fn status(&self, token: &str, task: &str) -> Value {
        let r = self.http.get(format!("{}/check_import_status/{task}", self.base)).bearer_auth(token).send().await;
        match r {
            Ok(r) => r.json::<Value>().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }
}

/// 256 KiB of text: lines of Chinese and English, each padded to 1 KiB.
fn piece() -> bytes::Bytes {
    let mut out = Vec::with_capacity(PIECE);
    for n in 0..PIECE / 1024 {
        let mut line =
            format!("第{n}段 火星是太阳系的第四颗行星，表面呈红色。Mars is the fourth planet from the Sun. ");
        line.extend(std::iter::repeat_n(' ', 1023 - line.len()));
        line.push('\n');
        out.extend_from_slice(line.as_bytes());
    }
    out.into()
}

/// The peak of `rss` sampled every 10 ms until `stop` is set.
async fn peak_while(service: &Service, stop: &AtomicBool) -> u64 {
    let mut peak = 0;
    while !stop.load(Ordering::Relaxed) {
        peak = peak.max(service.rss_kb());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    peak.max(service.rss_kb())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let binary = args.get(1).expect("usage: upload_bench REPORTD_BINARY [UPLOADS] [SIZE_MIB]");
    let uploads: usize = args.get(2).map_or(50, |a| a.parse().expect("UPLOADS"));
    let size_mib: usize = args.get(3).map_or(50, |a| a.parse().expect("SIZE_MIB"));
    // reqwest is built without a bundled TLS provider: building a client
    // without one installed panics.
    reportd::llm::install_tls_provider();
    let service = Service::start(binary).await;

    // One user per upload, so that only the per-instance bound decides.
    // Two at a time: password hashing is bounded by design.
    let tokens: Vec<String> = futures::stream::iter(0..uploads)
        .map(|i| {
            let s = &service;
            async move { s.user(&format!("bench{i}")).await }
        })
        .buffered(2)
        .collect()
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = service.rss_kb();

    let piece = piece();
    let pieces = size_mib * 1024 * 1024 / PIECE;
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let sending = async {
        let results = futures::future::join_all(tokens.iter().map(|t| service.upload(t, piece.clone(), pieces))).await;
        stop.store(true, Ordering::Relaxed);
        results
    };
    let (results, upload_peak) = tokio::join!(sending, peak_while(&service, &stop));
    let upload_time = started.elapsed();
    let accepted: Vec<(&String, String)> =
        tokens.iter().zip(&results).filter_map(|(t, (_, task))| Some((t, task.clone()?))).collect();
    let answered_503 = results.iter().filter(|(s, _)| *s == 503).count();
    let other: Vec<u16> = results.iter().map(|(s, _)| *s).filter(|s| *s != 202 && *s != 503).collect();
    // A refusal is answered before the body is read and the connection is
    // closed under a client still sending, which may see the reset before
    // the 503: the service's own count says how many it refused.
    let refused = service.metric("reportd_uploads_refused_total").await;

    // The accepted files are imported: the service's own memory is watched
    // meanwhile (parsing happens in the workers' processes).
    let stop = Arc::new(AtomicBool::new(false));
    let started_imports = Instant::now();
    let importing = async {
        let mut outcomes = Vec::new();
        for (token, task) in &accepted {
            loop {
                let status = service.status(token, task).await;
                if status["status"] == "failed" {
                    println!("import failed: {}", status["error"]);
                }
                if status["status"] == "completed" || status["status"] == "failed" {
                    outcomes.push(status["status"].as_str().unwrap_or_default().to_owned());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        stop.store(true, Ordering::Relaxed);
        outcomes
    };
    let (outcomes, import_peak) = tokio::join!(importing, peak_while(&service, &stop));
    let import_time = started_imports.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = service.rss_kb();

    let mib = |kb: u64| kb as f64 / 1024.0;
    println!("uploads: {uploads} x {size_mib} MiB at once");
    println!(
        "answers: {} accepted (202), {refused} refused by the service ({answered_503} 503s read by the client, \
         {} requests reset while sending); received in {:.1} s",
        accepted.len(),
        other.len(),
        upload_time.as_secs_f64()
    );
    println!(
        "imports: {} completed, {} failed, in {:.1} s",
        outcomes.iter().filter(|o| *o == "completed").count(),
        outcomes.iter().filter(|o| *o == "failed").count(),
        import_time.as_secs_f64()
    );
    println!("rss before:            {:8.1} MiB", mib(before));
    println!(
        "rss peak, uploads:     {:8.1} MiB (+{:.1} MiB)",
        mib(upload_peak),
        mib(upload_peak.saturating_sub(before))
    );
    println!(
        "rss peak, imports:     {:8.1} MiB (+{:.1} MiB)",
        mib(import_peak),
        mib(import_peak.saturating_sub(before))
    );
    println!("rss after, idle 3 s:   {:8.1} MiB", mib(after));
}
