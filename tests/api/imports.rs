//! Import: upload checks, the task life cycle, polling under load, isolation.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{TestApp, TestRedis, sample_text};

#[tokio::test]
async fn a_text_import_completes_and_its_document_is_listed() {
    let t = TestApp::spawn(|s| s).await;
    let c = &t.client;
    let token = c.user("erin").await;
    let task = c.import(&token, "notes.md", "# 第一章\n\n内容一。\n\n## 1.2 背景\n\nBackground text.\n".into()).await;
    let done = c.wait_done(&token, &task).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"], 100);
    assert_eq!(done["task_id"], task.as_str());
    assert!(done["error"].is_null());
    for field in ["stage", "message", "created_at", "updated_at"] {
        assert!(done[field].is_string(), "{field} in {done}");
    }
    let doc_id = done["document_id"].as_str().unwrap();

    // The alias answers the same.
    let alias = c.json(&token, &format!("/imports/{task}")).await;
    assert_eq!(alias["status"], "completed");

    let list = c.json(&token, "/documents").await;
    assert_eq!(list["total"], 1);
    let item = &list["items"][0];
    assert_eq!(item["id"], doc_id);
    assert_eq!(item["format"], "md");
    assert_eq!(item["filename"], "notes.md");
    assert_eq!(item["title"], "第一章");
    assert_eq!(item["chunk_count"], 2);

    let doc = c.json(&token, &format!("/documents/{doc_id}")).await;
    let paths: Vec<&str> =
        doc["chunks"].as_array().unwrap().iter().map(|c| c["heading_path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["第一章", "第一章 > 1.2 背景"]);

    // Another user sees none of it.
    let other = c.user("frank").await;
    assert_eq!(c.json(&other, "/documents").await["total"], 0);
    assert_eq!(c.get(&other, &format!("/documents/{doc_id}")).await.status(), 404);
    assert_eq!(
        c.http.delete(c.url(&format!("/documents/{doc_id}"))).bearer_auth(&other).send().await.unwrap().status(),
        404
    );

    let r = c.http.delete(c.url(&format!("/documents/{doc_id}"))).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(c.json(&token, "/documents").await["total"], 0);
}

#[tokio::test]
async fn the_imports_alias_accepts_a_title() {
    let t = TestApp::spawn(|s| s).await;
    let c = &t.client;
    let token = c.user("gina").await;
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(sample_text()).file_name("x.txt"))
        .text("title", "季度报告");
    let r = c.http.post(c.url("/imports")).bearer_auth(&token).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let task = r.json::<Value>().await.unwrap()["task_id"].as_str().unwrap().to_owned();
    assert_eq!(c.wait_done(&token, &task).await["status"], "completed");
    assert_eq!(c.json(&token, "/documents").await["items"][0]["title"], "季度报告");
}

/// A title with NUL and other control characters is accepted on both
/// databases (PostgreSQL's TEXT cannot hold a NUL) and stored cleaned.
#[tokio::test]
async fn a_title_with_control_characters_is_stored_cleaned() {
    let t = TestApp::spawn(|s| s).await;
    let c = &t.client;
    let token = c.user("nul-title").await;
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(sample_text()).file_name("x.txt"))
        .text("title", "季度\u{0}报告\u{7}\u{0}");
    let r = c.http.post(c.url("/imports")).bearer_auth(&token).multipart(form).send().await.unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 202, "{body}");
    let task = body["task_id"].as_str().unwrap().to_owned();
    assert_eq!(c.wait_done(&token, &task).await["status"], "completed");
    let title = c.json(&token, "/documents").await["items"][0]["title"].as_str().unwrap().to_owned();
    assert!(title.starts_with("季度") && title.ends_with("报告") && !title.chars().any(char::is_control), "{title:?}");
}

#[tokio::test]
async fn bad_uploads_get_clear_errors() {
    let t = TestApp::spawn(|s| s.set("MAX_UPLOAD_MB", "1")).await;
    let c = &t.client;
    let token = c.user("hank").await;

    let r = c.upload(&token, "/Import_Doc/", "big.txt", vec![b'a'; 1024 * 1024 + 1]).await;
    assert_eq!(r.status(), 413);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "file_too_large");
    let r = c.upload(&token, "/imports", "huge.txt", vec![b'a'; 3 * 1024 * 1024]).await;
    assert_eq!(r.status(), 413);

    for (name, bytes) in [
        ("report.txt", b"%PDF-1.7\n%binary".to_vec()),
        ("report.md", b"PK\x03\x04\x14\x00\x06\x00".to_vec()),
        ("program.exe", b"MZ\x90\x00".to_vec()),
        ("data.txt", vec![0u8, 1, 2, 3, 4, 5, 0, 0, 7]),
    ] {
        let r = c.upload(&token, "/Import_Doc/", name, bytes).await;
        assert_eq!(r.status(), 415, "{name}");
        assert_eq!(r.json::<Value>().await.unwrap()["code"], "unsupported_media_type");
    }

    let form = reqwest::multipart::Form::new().text("title", "no file");
    let r = c.http.post(c.url("/Import_Doc/")).bearer_auth(&token).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "missing_file");
    let r = c.http.post(c.url("/Import_Doc/")).bearer_auth(&token).json(&serde_json::json!({})).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "invalid_multipart");

    // Nothing above became a task or a document.
    assert_eq!(c.json(&token, "/documents").await["total"], 0);
}

#[tokio::test]
async fn an_unreadable_text_file_fails_with_a_readable_error() {
    let t = TestApp::spawn(|s| s).await;
    let c = &t.client;
    let token = c.user("ivy").await;
    // Only whitespace: a text file, but nothing to import.
    let task = c.import(&token, "blank.txt", b"   \n\n \t \n".to_vec()).await;
    let done = c.wait_done(&token, &task).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["error"], "the document contains no text");
    assert!(done["document_id"].is_null());
    // An empty file is accepted and fails the same way.
    let task = c.import(&token, "empty.txt", vec![]).await;
    let done = c.wait_done(&token, &task).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["error"], "the file is empty");
    assert_eq!(c.json(&token, "/documents").await["total"], 0);
}

/// Several clients poll one import as fast as they can; every answer is
/// correct and progress never goes backwards. Run on memory and on Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn polling_at_high_frequency_is_monotonic() {
    let redis = TestRedis::start().await;
    for on_redis in [false, true] {
        let t = TestApp::spawn(|s| {
            let s = s.set("IMPORT_STAGE_DELAY_MS", "60");
            if on_redis { s.with_redis(&redis) } else { s }
        })
        .await;
        let c = t.client.clone();
        let token = c.user("poller").await;
        let task = c.import(&token, "a.txt", sample_text()).await;
        let mut pollers = Vec::new();
        for _ in 0..6 {
            let (c, token, task) = (c.clone(), token.clone(), task.clone());
            pollers.push(tokio::spawn(async move {
                let rank = |s: &str| match s {
                    "pending" => 0,
                    "processing" => 1,
                    "completed" | "failed" => 2,
                    other => panic!("unknown status {other}"),
                };
                let mut seen = Vec::new();
                loop {
                    let (code, body) = c.status(&token, &task).await;
                    assert_eq!(code, 200, "{body}");
                    let state = (rank(body["status"].as_str().unwrap()), body["progress"].as_u64().unwrap());
                    assert!(state.1 <= 100);
                    if let Some(last) = seen.last() {
                        assert!(state >= *last, "went from {last:?} to {state:?}");
                    }
                    seen.push(state);
                    if state.0 == 2 {
                        assert_eq!(body["status"], "completed", "{body}");
                        assert_eq!(state.1, 100);
                        return seen.len();
                    }
                }
            }));
        }
        let mut polls = 0;
        for p in pollers {
            polls += p.await.unwrap();
        }
        assert!(polls > 50, "the pollers did poll ({polls} answers)");
        // After the end, the status never changes again.
        let final_state = c.status(&token, &task).await.1;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(c.status(&token, &task).await.1, final_state);
    }
}

/// SPEC §3: another user's task answers exactly what an unknown id answers.
#[tokio::test]
async fn another_users_task_is_indistinguishable_from_an_unknown_one() {
    let redis = TestRedis::start().await;
    for on_redis in [false, true] {
        let t = TestApp::spawn(|s| if on_redis { s.with_redis(&redis) } else { s }).await;
        let c = &t.client;
        let alice = c.user("alice").await;
        let bob = c.user("bob").await;
        let task = c.imported(&alice).await;
        for path in [format!("/check_import_status/{task}"), format!("/imports/{task}")] {
            let theirs = c.get(&bob, &path).await;
            let unknown = c.get(&bob, &path.replace(&task, "no-such-task")).await;
            assert_eq!(theirs.status(), 404);
            assert_eq!(unknown.status(), 404);
            let (a, b) = (theirs.bytes().await.unwrap(), unknown.bytes().await.unwrap());
            assert_eq!(a, b, "same body for someone else's task and an unknown one");
            assert_eq!(&a[..], br#"{"detail":"task not found","code":"task_not_found"}"#);
        }
    }
}
