//! Findings of the probe from outside (issue #7, item 7), each reproduced
//! as it was found, with its bound checked.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{Settings, TestApp, TestProcess};

/// Login floods: 64 connections sending wrong passwords took the process
/// to 7.4 GB (argon2id takes 19 MiB a hash, on an unbounded blocking
/// pool). Now a fixed few threads hash, the rest wait in a bounded queue
/// or get 503 at once: the memory stays flat, nothing fails with a 500,
/// and the service answers a valid login afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_flood_keeps_memory_flat() {
    let dir = tempfile::TempDir::new().unwrap();
    let p = TestProcess::start(&Settings::new(dir.path()), dir.path(), "flood").await;
    p.client.user("victim").await;
    let before = p.rss_kb();
    let deadline = Instant::now() + Duration::from_secs(4);
    let flood = (0..64).map(|i| {
        let c = p.client.clone();
        async move {
            let mut codes = Vec::new();
            while Instant::now() < deadline {
                let r = c
                    .http
                    .post(c.url("/auth/login"))
                    .json(&json!({"username": "victim", "password": format!("wrong guess {i}")}))
                    .send()
                    .await
                    .unwrap();
                codes.push(r.status().as_u16());
            }
            codes
        }
    });
    let sampler = async {
        let mut peak = 0;
        while Instant::now() < deadline {
            peak = peak.max(p.rss_kb());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        peak
    };
    let (codes, peak) = tokio::join!(futures::future::join_all(flood), sampler);
    let codes: Vec<u16> = codes.into_iter().flatten().collect();
    assert!(codes.iter().all(|c| *c == 401 || *c == 503), "only 401 or 503: {codes:?}");
    assert!(codes.contains(&401));
    let growth_mb = peak.saturating_sub(before) / 1024;
    let refused = codes.iter().filter(|c| **c == 503).count();
    eprintln!(
        "flood: {} logins in 4 s ({refused} refused with 503), RSS {} MiB before, peak {} MiB",
        codes.len(),
        before / 1024,
        peak / 1024
    );
    assert!(growth_mb < 300, "the flood grew the process by {growth_mb} MiB (from {} MiB)", before / 1024);
    tokio::time::sleep(Duration::from_secs(1)).await;
    p.client.login("victim", "correct horse battery").await;
}

/// `/metrics` grew with invented HTTP methods (one scrape was 1.24 GB):
/// methods outside the standard ones are one label value, `other`.
#[tokio::test]
async fn invented_methods_do_not_grow_the_metrics() {
    let t = TestApp::spawn(|s| s).await;
    let c = &t.client;
    for i in 0..30 {
        let method = reqwest::Method::from_bytes(format!("M{i}{}", "X".repeat(2000)).as_bytes()).unwrap();
        let r = c.http.request(method, c.url("/documents")).send().await.unwrap();
        assert!(r.status().is_client_error(), "{}", r.status());
    }
    let metrics = c.http.get(c.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("XXXXXXXX"), "no label value comes from client input");
    assert!(metrics.contains("method=\"other\""));
}

/// Every response says `X-Content-Type-Options: nosniff`; a 401 says
/// `WWW-Authenticate: Bearer`.
#[tokio::test]
async fn security_headers_are_set() {
    let t = TestApp::spawn(|s| s).await;
    let c = &t.client;
    for path in ["/healthz", "/documents", "/nowhere"] {
        let r = c.http.get(c.url(path)).send().await.unwrap();
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{path}");
    }
    let r = c.http.get(c.url("/documents")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
}

/// Error bodies quoted input without bound (a 1 MB flag value came back in
/// a 1 MB 422). Details are now at most a short excerpt.
#[tokio::test]
async fn errors_quote_at_most_a_short_excerpt() {
    let t = TestApp::spawn(|s| s).await;
    let c = &t.client;
    let token = c.user("echo").await;
    let huge = "x".repeat(1024 * 1024);
    let r = c
        .http
        .put(c.url("/admin/flags"))
        .bearer_auth(&token)
        .json(&json!({"REDIS_ENABLED": huge}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
    let body = r.text().await.unwrap();
    assert!(body.len() < 1024, "{} bytes", body.len());
    let parsed: Value = serde_json::from_str(&body).unwrap();
    assert!(parsed["code"].is_string());
    // And with control characters in the quoted part.
    let r = c
        .http
        .post(c.url("/ai/generate"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(format!("{{\"task_id\": 5, \"message\": \"{}\"}}", "y".repeat(100_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().len() < 1024);
}

/// A client's `x-request-id` is kept only if it is short and plain.
#[tokio::test]
async fn request_ids_from_clients_are_kept_only_when_plain() {
    let t = TestApp::spawn(|s| s).await;
    let c = &t.client;
    let r = c.http.get(c.url("/healthz")).header("x-request-id", "abc-123_x.y").send().await.unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123_x.y");
    for bad in ["x".repeat(500), "a b".into(), "<script>".into(), "é".into()] {
        let r = c.http.get(c.url("/healthz")).header("x-request-id", bad.as_bytes()).send().await.unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_ne!(id.as_bytes(), bad.as_bytes());
        assert_eq!(id.len(), 36, "a generated id: {id}");
    }
}

/// Ambiguous requests: two `file` fields are refused, not "the first
/// wins"; a JSON array where an object is expected is a 422.
#[tokio::test]
async fn ambiguous_requests_are_refused() {
    let t = TestApp::spawn(|s| s).await;
    let c = &t.client;
    let token = c.user("ambiguous").await;
    let part = |name: &str| reqwest::multipart::Part::bytes(b"hello".to_vec()).file_name(name.to_owned());
    let form = reqwest::multipart::Form::new().part("file", part("a.txt")).part("file", part("b.txt"));
    let r = c.http.post(c.url("/Import_Doc/")).bearer_auth(&token).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "duplicate_file");
    assert_eq!(c.json(&token, "/documents").await["total"], 0, "nothing was imported");
    let r =
        c.http.post(c.url("/ai/generate")).bearer_auth(&token).json(&json!([{"task_id": "a"}])).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let r = c.http.post(c.url("/auth/register")).json(&json!(["alice", "password1"])).send().await.unwrap();
    assert_eq!(r.status(), 422);
}

/// The SQLite database and its WAL hold password hashes: the files are
/// `0600` and a data directory the service creates is `0700`.
#[tokio::test]
async fn the_database_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::TempDir::new().unwrap();
    let data = dir.path().join("fresh").join("data");
    let db = data.join("reportd.db");
    let t = TestApp::start(
        Settings::sqlite(dir.path())
            .set("DATA_DIR", data.to_str().unwrap())
            .set("DATABASE_URL", &format!("sqlite://{}", db.display())),
    )
    .await;
    t.client.user("private").await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&db), 0o600);
    let wal = data.join("reportd.db-wal");
    if wal.exists() {
        assert_eq!(mode(&wal), 0o600);
    }
}

/// A token response is never cached on the way.
#[tokio::test]
async fn a_token_response_is_not_stored() {
    let t = TestApp::spawn(|s| s).await;
    let c = &t.client;
    c.user("nostore").await;
    let r = c
        .http
        .post(c.url("/auth/login"))
        .json(&json!({"username": "nostore", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
}

/// A deleted user's token answers 401 everywhere (it answered 200 on
/// reads and 500 on upload), and a token for a user who never existed
/// answers exactly like a bad signature.
#[tokio::test]
async fn tokens_of_accounts_that_do_not_exist_are_401_like_a_bad_signature() {
    use jsonwebtoken::{EncodingKey, Header, encode};
    let t = TestApp::spawn(|s| s).await;
    let c = &t.client;
    let token = c.user("doomed").await;
    let task = c.imported(&token).await;
    let bad_sig = c.get(&format!("{token}x"), "/documents").await;
    assert_eq!(bad_sig.status(), 401);
    let bad_sig: Value = bad_sig.json().await.unwrap();

    let exp = chrono_now() + 3600;
    let ghost = encode(
        &Header::default(),
        &json!({"sub": "ghost-user", "exp": exp}),
        &EncodingKey::from_secret(crate::helpers::JWT_SECRET.as_bytes()),
    )
    .unwrap();
    let r = c.get(&ghost, "/documents").await;
    assert_eq!(r.status(), 401, "a well-signed token for nobody");
    assert_eq!(r.json::<Value>().await.unwrap(), bad_sig);

    let id = c.json(&token, "/auth/me").await["id"].as_str().unwrap().to_owned();
    sqlx::query("DELETE FROM users WHERE id = $1").bind(&id).execute(t.app.db.pool()).await.unwrap();
    crate::helpers::eventually(Duration::from_secs(15), "the deleted account's token stops working", || async {
        c.get(&token, "/documents").await.status() == 401
    })
    .await;
    assert_eq!(c.status(&token, &task).await.0, 401);
    let r = c.upload(&token, "/Import_Doc/", "late.txt", b"hello".to_vec()).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap(), bad_sig);
}

fn chrono_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Slow clients: connections that send half a request stayed open forever,
/// and enough of them exhausted the file descriptors so that `/healthz`
/// stopped answering. Now a request's headers must arrive within
/// HTTP_HEADER_TIMEOUT_SECONDS, and connections beyond MAX_CONNECTIONS are
/// closed at once; `/healthz` answers once the slow ones are cut.
#[tokio::test]
async fn half_sent_requests_are_cut_and_connections_are_capped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = TestApp::spawn(|s| s.set("HTTP_HEADER_TIMEOUT_SECONDS", "1").set("MAX_CONNECTIONS", "40")).await;
    let addr = t.client.base.trim_start_matches("http://").to_owned();
    let mut slow = Vec::new();
    for _ in 0..60 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap(); // never finished
        slow.push(s);
    }
    // Every one of them is closed by the server: the 20 over the cap at
    // once, the others when their header time runs out.
    let started = Instant::now();
    for s in &mut slow {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await;
        assert!(matches!(n, Ok(Ok(_)) | Ok(Err(_))), "the server closed the connection");
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    let r = t.client.http.get(t.client.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let metrics = t.client.http.get(t.client.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("reportd_http_connections_refused_total"));
}

/// Uploads in flight are bounded per instance (each is held in memory
/// and staged): past MAX_UPLOADS_IN_FLIGHT, 503 with Retry-After; the
/// slot comes back when the upload ends.
#[tokio::test]
async fn uploads_in_flight_are_bounded() {
    let t = TestApp::spawn(|s| s.set("MAX_UPLOADS_IN_FLIGHT", "1")).await;
    let c = &t.client;
    let token = c.user("uploader").await;
    // A multipart body sent slowly, held open until `release` fires.
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let boundary = "XyZbOuNdArY";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"slow.txt\"\r\nContent-Type: text/plain\r\n\r\nhello slow world\r\n"
    );
    let tail = format!("--{boundary}--\r\n");
    let body = futures::stream::once(async move { Ok::<_, std::io::Error>(head.into_bytes()) }).chain(
        futures::stream::once(async move {
            let _ = released.await;
            Ok::<_, std::io::Error>(tail.into_bytes())
        }),
    );
    use futures::StreamExt;
    let slow = c
        .http
        .post(c.url("/Import_Doc/"))
        .bearer_auth(&token)
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let slow = tokio::spawn(slow);
    crate::helpers::eventually(Duration::from_secs(10), "the slow upload holds the slot", || async {
        t.app.uploads.available_permits() == 0
    })
    .await;
    let r = c.upload(&token, "/Import_Doc/", "quick.txt", b"quick".to_vec()).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "2");
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "too_many_uploads");
    let _ = release.send(());
    let r = slow.await.unwrap().unwrap();
    assert_eq!(r.status(), 202);
    let r = c.upload(&token, "/Import_Doc/", "quick.txt", b"quick".to_vec()).await;
    assert_eq!(r.status(), 202, "the slot came back");
}
