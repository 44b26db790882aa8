//! Bounded, streaming uploads (issue #7, item 3): a file is spooled to a
//! temporary file as it arrives and `MAX_UPLOAD_MB` is enforced while it
//! streams; staged uploads are stored and fed to the parse worker in parts,
//! so that many large uploads at once keep the process's memory bounded.
//!
//! The bodies here are generated lazily (streamed reqwest bodies), so that
//! the test itself never holds a whole file either.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;

use crate::helpers::{Client, Settings, TestApp, TestProcess, eventually};

const MIB: usize = 1024 * 1024;
const BOUNDARY: &str = "uploads-test-boundary-7b1f";

/// One 1024-byte line of mixed Chinese and English text, padded with
/// spaces so that any number of them makes a file of a known size.
fn line(n: usize, marker: &str) -> Vec<u8> {
    let mut s =
        format!("{marker}第{n}段 火星是太阳系的第四颗行星，表面呈红色。Mars is the fourth planet from the Sun. ");
    assert!(s.len() < 1024, "the line is too long");
    s.extend(std::iter::repeat_n(' ', 1023 - s.len()));
    s.push('\n');
    s.into_bytes()
}

/// Lines in one piece of a streamed file (256 KiB).
const PER_PIECE: usize = 256;

/// One piece of `PER_PIECE` lines, the first carrying `marker` (if any).
fn piece(marker: &str) -> bytes::Bytes {
    (0..PER_PIECE).flat_map(|n| line(n, if n == 0 { marker } else { "" })).collect::<Vec<u8>>().into()
}

/// A text file of `pieces` × 256 KiB, sent as it is made: the first piece
/// starts with `first`, the last with `last`, and the ones between are one
/// shared buffer, so that fifty of these cost the test almost nothing.
/// `sent` counts the file bytes handed to the client so far.
fn text_file(
    pieces: usize,
    first: &str,
    last: &str,
    sent: Arc<AtomicU64>,
) -> impl futures::Stream<Item = bytes::Bytes> + Send + 'static {
    let (first, middle, last) = (piece(first), piece(""), piece(last));
    futures::stream::iter(0..pieces).map(move |n| {
        let p = match n {
            0 => first.clone(),
            n if n == pieces - 1 => last.clone(),
            _ => middle.clone(),
        };
        sent.fetch_add(p.len() as u64, Ordering::Relaxed);
        p
    })
}

/// A client without the harness's 30 s timeout: a 50 MiB upload among
/// fifty may take longer on a loaded 2-core host.
fn patient(c: &Client) -> Client {
    Client { base: c.base.clone(), http: reqwest::Client::builder().timeout(Duration::from_secs(600)).build().unwrap() }
}

/// `POST /Import_Doc/` with a multipart body around `file`, streamed.
async fn upload_stream(
    c: &Client,
    token: &str,
    filename: &str,
    file: impl futures::Stream<Item = bytes::Bytes> + Send + 'static,
) -> Result<reqwest::Response, reqwest::Error> {
    let head = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
         Content-Type: text/plain\r\n\r\n"
    )
    .into();
    let tail = format!("\r\n--{BOUNDARY}--\r\n").into();
    let body = futures::stream::once(async { head })
        .chain(file)
        .chain(futures::stream::once(async { tail }))
        .map(Ok::<_, std::io::Error>);
    c.http
        .post(c.url("/Import_Doc/"))
        .bearer_auth(token)
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
}

fn spool_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("uploads-tmp")
}

/// The names in the spool directory (none when it does not exist).
fn spooled(data_dir: &Path) -> Vec<String> {
    std::fs::read_dir(spool_dir(data_dir))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

async fn wait_terminal(c: &Client, token: &str, task: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (code, body) = c.status(token, task).await;
        assert_eq!(code, 200, "{body}");
        if body["status"] == "completed" || body["status"] == "failed" {
            return body;
        }
        assert!(Instant::now() < deadline, "task {task} did not finish: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn count(t: &TestApp, table: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
        .fetch_one(t.app.db.pool())
        .await
        .unwrap()
}

/// A body past `MAX_UPLOAD_MB` gets 413 `file_too_large` as soon as the
/// limit is passed: the server stops reading (a 40 MiB body is not read to
/// its end), nothing is staged, and the spool directory is left empty
/// and private.
#[tokio::test]
async fn oversize_bodies_answer_413_while_streaming() {
    let t = TestApp::spawn(|s| s.set("MAX_UPLOAD_MB", "1")).await;
    let c = &t.client;
    let token = c.user("big-sender").await;
    let data_dir = t.app.config.data_dir.clone();

    // Just past the limit (and within the body limit's envelope allowance,
    // so that it is the streaming check that answers).
    let sent = Arc::new(AtomicU64::new(0));
    let r = upload_stream(c, &token, "over.txt", text_file(4 + 1, "", "", sent.clone())).await.unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "file_too_large");

    // Far past it: the answer comes long before the body is all sent.
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let r = upload_stream(c, &token, "huge.txt", text_file(40 * 4, "", "", sent.clone())).await;
    let produced = sent.load(Ordering::Relaxed);
    eprintln!(
        "413 after {} KiB of a 40 MiB body were produced, in {:?} ({})",
        produced / 1024,
        started.elapsed(),
        match &r {
            Ok(r) => r.status().to_string(),
            Err(e) => format!("client error: {e}"),
        }
    );
    if let Ok(r) = r {
        assert_eq!(r.status(), 413);
    }
    // The sender may have been a few socket buffers ahead of the server.
    assert!(produced < 16 * MIB as u64, "the server read {produced} bytes of an oversize body");

    assert_eq!(count(&t, "staged_uploads").await, 0);
    assert_eq!(count(&t, "staged_upload_parts").await, 0);
    assert!(spooled(&data_dir).is_empty(), "left in the spool: {:?}", spooled(&data_dir));
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(spool_dir(&data_dir)).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700, "the spool directory is private");

    // A file within the limit is still accepted.
    let task = c.import(&token, "small.txt", crate::helpers::sample_text()).await;
    assert_eq!(wait_terminal(c, &token, &task, Duration::from_secs(60)).await["status"], "completed");
}

/// A client that goes away in the middle of its body frees its upload slot
/// and leaves nothing behind.
#[tokio::test]
async fn a_client_gone_mid_upload_leaves_nothing() {
    let t = TestApp::spawn(|s| s).await;
    let c = &t.client;
    let token = c.user("quitter").await;
    let permits = t.app.uploads.available_permits();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sent = Arc::new(AtomicU64::new(0));
    // 2 MiB, then a body that never ends until the request is dropped.
    let file = text_file(8, "", "", sent.clone()).chain(futures::stream::pending());
    let upload = tokio::spawn({
        let (c, token) = (c.clone(), token.clone());
        async move {
            tokio::select! {
                _ = upload_stream(&c, &token, "gone.txt", file) => {}
                _ = stopped => {}
            }
        }
    });
    eventually(Duration::from_secs(10), "the upload is being received", || async {
        t.app.uploads.available_permits() < permits && sent.load(Ordering::Relaxed) >= 2 * MIB as u64
    })
    .await;
    let _ = stop.send(());
    upload.await.unwrap();
    eventually(Duration::from_secs(10), "the slot comes back", || async {
        t.app.uploads.available_permits() == permits
    })
    .await;
    assert!(spooled(&t.app.config.data_dir).is_empty());
    assert_eq!(count(&t, "staged_uploads").await, 0);
}

/// A 30 MiB text file imports whole: its size is recorded, its first and
/// last lines are found by search, and once it is done neither its spool
/// nor its staged parts are left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30_mib_text_imports_whole() {
    let t = TestApp::spawn(|s| s).await;
    let c = &t.client;
    let token = c.user("bulk").await;
    let size = 30 * MIB;
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let file = text_file(size / (PER_PIECE * 1024), "qwertyfirst ", "zxcvblast ", sent);
    let r = upload_stream(&patient(c), &token, "bulk.txt", file).await.unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 202, "{body}");
    let uploaded = started.elapsed();
    assert!(spooled(&t.app.config.data_dir).is_empty());
    let task = body["task_id"].as_str().unwrap();
    let done = wait_terminal(c, &token, task, Duration::from_secs(300)).await;
    eprintln!("30 MiB: uploaded in {uploaded:?}, imported in {:?}", started.elapsed());
    assert_eq!(done["status"], "completed", "{done}");
    let doc_id = done["document_id"].as_str().unwrap();

    let list = c.json(&token, "/documents").await;
    let item = &list["items"][0];
    assert_eq!(item["id"], doc_id);
    assert_eq!(item["size_bytes"], size as u64);
    assert_eq!(item["format"], "txt");
    // About 1000 characters a chunk: thousands of chunks.
    assert!(item["chunk_count"].as_u64().unwrap() > 5_000, "{item}");
    for word in ["qwertyfirst", "zxcvblast"] {
        let hits = c.json(&token, &format!("/documents/search?q={word}&limit=5")).await;
        let hits = hits["items"].as_array().unwrap();
        assert!(hits.iter().any(|h| h["document_id"] == doc_id), "{word} not found: {hits:?}");
    }
    // The staged upload is deleted just after the final status is written.
    eventually(Duration::from_secs(10), "the staged upload and its parts are deleted", || async {
        count(&t, "staged_uploads").await == 0 && count(&t, "staged_upload_parts").await == 0
    })
    .await;
    assert!(spooled(&t.app.config.data_dir).is_empty());
}

/// Fifty concurrent 50 MiB uploads, with the default settings: eight are
/// received at once (`MAX_UPLOADS_IN_FLIGHT`), the rest get 503, and the
/// server's resident memory stays within 400 MiB of where it started
/// (twenty 40 MB uploads once peaked at 1.9 GB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_50_mib_uploads_keep_memory_bounded() {
    let dir = tempfile::TempDir::new().unwrap();
    let p = TestProcess::start(&Settings::new(dir.path()), dir.path(), "uploads").await;
    let users = 50;
    // One user each, so that no per-user limit has a say: this measures
    // the uploads in flight only. Two at a time: password hashing is
    // bounded (a flood of registrations gets 503).
    let tokens: Vec<String> = futures::stream::iter(0..users)
        .map(|i| {
            let c = p.client.clone();
            async move { c.user(&format!("up{i}")).await }
        })
        .buffered(2)
        .collect()
        .await;
    let before = p.rss_kb();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let uploads = tokens.iter().map(|token| {
        let c = patient(&p.client);
        async move {
            let sent = Arc::new(AtomicU64::new(0));
            let r = upload_stream(&c, token, "big.txt", text_file(50 * 4, "", "", sent.clone())).await;
            match r {
                Ok(r) => r.status().as_u16(),
                Err(e) => {
                    eprintln!("upload failed after {} KiB: {e}", sent.load(Ordering::Relaxed) / 1024);
                    0
                }
            }
        }
    });
    let sampler = {
        let done = done.clone();
        let p = &p;
        async move {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(p.rss_kb());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        }
    };
    let started = Instant::now();
    let (codes, peak) = tokio::join!(
        async {
            let codes = futures::future::join_all(uploads).await;
            done.store(true, Ordering::Relaxed);
            codes
        },
        sampler
    );
    let elapsed = started.elapsed();
    let accepted = codes.iter().filter(|c| **c == 202).count();
    let answered_503 = codes.iter().filter(|c| **c == 503).count();
    // A refusal is answered before the body is read, and the connection is
    // then closed under a client still sending: the client may see that
    // reset before it reads the 503. The server's own count says how many
    // it refused.
    let metrics = p.client.http.get(p.client.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let refused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("reportd_uploads_refused_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as usize;
    eprintln!(
        "50 x 50 MiB uploads in {elapsed:?}: {accepted} accepted (202), {refused} refused ({answered_503} answers \
         503 read, the others reset while sending); RSS {} MiB before, peak {} MiB (+{} MiB)",
        before / 1024,
        peak / 1024,
        peak.saturating_sub(before) / 1024,
    );
    assert!(codes.iter().all(|c| [0, 202, 503].contains(c)), "only 202 or 503: {codes:?}");
    assert_eq!(accepted + refused, users, "every upload is accepted or refused: {codes:?}");
    assert!(answered_503 <= refused);
    assert!(accepted >= 8, "at least MAX_UPLOADS_IN_FLIGHT uploads get in: {codes:?}");
    assert!(refused > 0, "some uploads are refused: {codes:?}");
    let growth_mb = peak.saturating_sub(before) / 1024;
    assert!(growth_mb < 400, "the uploads grew the process by {growth_mb} MiB");
    assert!(spooled(dir.path()).is_empty(), "left in the spool: {:?}", spooled(dir.path()));
}
