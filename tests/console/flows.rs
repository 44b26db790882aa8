//! The console's flows, as a person uses them: accounts, documents,
//! search, the three assistants, the admin page.

use std::time::Duration;

use serde_json::{Value, json};

use crate::browser::Browser;
use crate::fakes::{FakeLlm, FakeSearx, Reply, split_chars};
use crate::helpers::{TestApp, TestRedis, corpus_dir};

/// The service as the console tests use it: Redis, the fake model and the
/// fake web search, fast deltas.
async fn service(redis: &TestRedis, llm: &FakeLlm, searx: &FakeSearx, extra: &[(&str, &str)]) -> TestApp {
    let mut extra: Vec<(String, String)> = extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let (base, search) = (llm.base_url.clone(), searx.base_url.clone());
    TestApp::spawn(move |s| {
        let mut s = s.with_redis(redis).with_llm(&base).set("LLM_MAX_RETRIES", "0").set("SEARCH_URL", &search);
        for (k, v) in extra.drain(..) {
            s = s.set(&k, &v);
        }
        s
    })
    .await
}

/// Registers `name` through the form (which logs in at once) and waits for
/// the signed-in shell.
async fn sign_up(b: &Browser, name: &str, password: &str) {
    b.open("/").await;
    b.fill("#login-username", name).await;
    b.fill("#login-password", password).await;
    b.click("#register-submit").await;
    signed_in_as(b, name).await;
}

async fn log_in(b: &Browser, name: &str, password: &str) {
    b.fill("#login-username", name).await;
    b.fill("#login-password", password).await;
    b.click("#login-submit").await;
    signed_in_as(b, name).await;
}

async fn signed_in_as(b: &Browser, name: &str) {
    b.until(
        &format!("signed in as {name}"),
        "const e = document.querySelector('#user-name'); return !!e && e.textContent.includes(arguments[0]) \
         && e.getClientRects().length > 0;",
        vec![json!(name)],
    )
    .await;
}

/// The API token the console keeps for the tab: taken from a fresh login
/// over HTTP (the console's own is in its storage, not ours to read).
async fn token(app: &TestApp, name: &str, password: &str) -> String {
    app.client.login(name, password).await
}

/// A pane's selector: `generate`, `optimize` or `search`.
fn pane(kind: &str) -> String {
    format!(".pane[data-kind={kind}]")
}

/// Sends `message` in `kind`'s pane.
async fn send(b: &Browser, kind: &str, message: &str) {
    b.fill(&format!("{} .pane-input", pane(kind)), message).await;
    b.click(&format!("{} .pane-send", pane(kind))).await;
}

/// Waits for the last answer of `kind`'s pane to end with `finish`; returns
/// its text.
async fn answer_finished(b: &Browser, kind: &str, finish: &str) -> String {
    let css = format!("{} .msg[data-role=assistant]", pane(kind));
    b.until(
        &format!("the {kind} answer to end with {finish}"),
        "const all = document.querySelectorAll(arguments[0]); const m = all[all.length - 1]; \
         return !!m && m.getAttribute('data-finish') === arguments[1] && !m.classList.contains('streaming');",
        vec![json!(css), json!(finish)],
    )
    .await;
    last_answer(b, kind).await
}

/// The text of the last answer in `kind`'s pane (`""` when none).
async fn last_answer(b: &Browser, kind: &str) -> String {
    let css = format!("{} .msg[data-role=assistant] .msg-body", pane(kind));
    let v = b.js("const all = document.querySelectorAll(arguments[0]); return all.length ? all[all.length - 1].textContent : '';", vec![json!(css)]).await;
    v.as_str().unwrap_or_default().trim().to_owned()
}

/// Waits until the last answer of `kind`'s pane shows some of the answer
/// (text that begins as [`slow_answer`]'s do) while it is still streaming;
/// returns that text.
async fn streaming_text(b: &Browser, kind: &str) -> String {
    let css = format!("{} .msg.streaming[data-role=assistant] .msg-body", pane(kind));
    let v = b
        .until(
            &format!("text streaming in the {kind} pane"),
            "const e = document.querySelector(arguments[0]); const t = e ? e.textContent.trim() : ''; \
             return t.startsWith('w00') ? t : '';",
            vec![json!(css)],
        )
        .await;
    v.as_str().unwrap().to_owned()
}

/// A plain answer (no Markdown syntax, so its rendered text is itself) in
/// `n` pieces of 3 characters, `delay_ms` apart.
fn slow_answer(n: usize, delay_ms: u64) -> (String, Reply) {
    let text: String = (0..n).map(|i| format!("w{:02} ", i % 100)).collect::<String>().trim_end().to_owned();
    let reply = Reply::Text { chunks: split_chars(&text, 4), delay_ms };
    (text, reply)
}

/// Register and log in; upload a docx and watch its bar reach 100 %; see
/// it in the list; open it; search it and see a highlighted hit; a 415
/// upload shows its message; delete with a confirmation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_upload_list_open_search_and_delete() {
    let (redis, llm, searx) = (TestRedis::start().await, FakeLlm::start().await, FakeSearx::start().await);
    let app = service(&redis, &llm, &searx, &[]).await;
    let b = Browser::start(&app.client.base, "en-US").await;
    b.open("/").await;
    b.visible("#login-form").await;
    b.screenshots("login").await;
    b.assert_labelled().await;
    sign_up(&b, "alice", "alice password 1").await;

    b.click("#nav-documents").await;
    b.find("#drop-zone").await;
    let docx = std::fs::canonicalize(corpus_dir().join("markitdown-test.docx")).unwrap();
    b.find("#file-input").await.send_keys(docx.to_str().unwrap()).await.expect("a file is chosen");
    b.until(
        "the upload to complete with its bar at 100",
        "const u = document.querySelector('#uploads .upload'); if (!u) return false; \
         const bar = u.querySelector('progress.upload-bar'); \
         return u.getAttribute('data-status') === 'completed' && !!bar && Number(bar.value) === 100;",
        vec![],
    )
    .await;
    assert!(b.text("#uploads .upload .upload-name").await.contains("markitdown-test.docx"));
    b.visible("#doc-list .doc-row").await;
    assert_eq!(b.all("#doc-list .doc-row").await.len(), 1);
    assert!(b.text("#doc-list .doc-row .doc-format").await.to_lowercase().contains("docx"));
    assert!(b.text("#doc-list .doc-row .doc-title").await.contains("AutoGen"));
    b.screenshots("documents").await;
    b.assert_labelled().await;

    // Open it: its chunks, with their heading paths.
    b.click("#doc-list .doc-row .doc-title").await;
    b.visible("#doc-view .chunk").await;
    assert!(b.text("#doc-view-title").await.contains("AutoGen"));
    let headings = b.js("return [...document.querySelectorAll('#doc-view .chunk .chunk-heading')].map(e => e.textContent).join('\\n');", vec![]).await;
    assert!(headings.as_str().unwrap().contains("Introduction"), "{headings}");
    let content = b.js("return [...document.querySelectorAll('#doc-view .chunk .chunk-content')].map(e => e.textContent).join('\\n');", vec![]).await;
    assert!(content.as_str().unwrap().contains("AutoGen is an open-source framework"), "the chunks are shown");
    b.screenshots("document").await;

    // Search: a highlighted hit with its heading path, linked to its chunk.
    b.click("#doc-back").await;
    b.fill("#search-input", "open-source framework").await;
    b.find("#search-input").await.send_keys("\u{E007}").await.unwrap();
    b.visible("#search-results .hit .hit-snippet mark").await;
    let marked = b.text("#search-results .hit .hit-snippet mark").await.to_lowercase();
    assert!(marked.contains("open") || marked.contains("framework"), "{marked}");
    let href = b.find("#search-results .hit a.hit-link").await.attr("href").await.unwrap().unwrap_or_default();
    assert!(href.contains("/chunk-"), "the hit links to its chunk: {href}");
    b.screenshots("search").await;

    // A file that is not a document: refused, with the service's message.
    let dir = tempfile::TempDir::new().unwrap();
    let png = dir.path().join("photo.txt");
    std::fs::write(&png, b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89\0\0\0\x00")
        .unwrap();
    let token = token(&app, "alice", "alice password 1").await;
    let refused: Value = app
        .client
        .upload(&token, "/Import_Doc/", "photo.txt", std::fs::read(&png).unwrap())
        .await
        .json()
        .await
        .unwrap();
    b.find("#file-input").await.send_keys(png.to_str().unwrap()).await.unwrap();
    let shown = b
        .until(
            "the refused upload's message",
            "const u = [...document.querySelectorAll('#uploads .upload')].find(u => u.textContent.includes('photo.txt')); \
             return u && u.getAttribute('data-status') === 'refused' ? u.querySelector('.upload-error').textContent : '';",
            vec![],
        )
        .await;
    assert!(shown.as_str().unwrap().contains(refused["detail"].as_str().unwrap()), "{shown} / {refused}");

    // Delete, after a confirmation; cancelling keeps it.
    b.click("#nav-documents").await;
    b.click("#doc-list .doc-row .doc-delete").await;
    b.visible("dialog#confirm").await;
    b.click("#confirm-cancel").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.all("#doc-list .doc-row").await.len(), 1, "cancel keeps the document");
    b.click("#doc-list .doc-row .doc-delete").await;
    b.click("#confirm-ok").await;
    b.until("the list to be empty", "return document.querySelectorAll('#doc-list .doc-row').length === 0;", vec![])
        .await;
    assert_eq!(app.client.json(&token, "/documents").await["total"], 0);
    b.assert_clean(&["/Import_Doc/"]).await;
}

/// A turn with each assistant, its text appearing progressively; the
/// citations of `generate` link to the cited chunk; `search` shows its tool
/// calls and sources; model output with HTML and script renders as text;
/// the history loads again after a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_assistants_stream_cite_and_show_tool_calls() {
    let (redis, llm, searx) = (TestRedis::start().await, FakeLlm::start().await, FakeSearx::start().await);
    let app = service(&redis, &llm, &searx, &[]).await;
    let b = Browser::start(&app.client.base, "en-US").await;
    sign_up(&b, "bob", "bob password 1").await;
    let token = token(&app, "bob", "bob password 1").await;
    let task = app
        .client
        .import(&token, "mars.md", "# 火星\n\n## 地貌\n\n火星表面有巨大的峡谷和火山。\n".as_bytes().to_vec())
        .await;
    let document = app.client.wait_done(&token, &task).await["document_id"].as_str().unwrap().to_owned();

    b.click("#nav-assistants").await;
    b.click("#task-new").await;
    b.visible("dialog#task-dialog").await;
    b.fill("#task-name", "Mars report").await;
    b.click("#task-create").await;
    b.until(
        "the new task to be selected",
        "const s = document.querySelector('#task-select'); return !!s && s.selectedOptions.length > 0 \
         && s.selectedOptions[0].textContent.includes('Mars report');",
        vec![],
    )
    .await;

    // generate: progressive text, then citations linked to the chunk.
    let (full, reply) = slow_answer(30, 100);
    llm.push(reply);
    send(&b, "generate", "火星 峡谷").await;
    let early = streaming_text(&b, "generate").await;
    let done = answer_finished(&b, "generate", "stop").await;
    assert_eq!(done, full);
    assert!(early.len() < full.len() && full.starts_with(&early), "text arrived progressively: {early:?}");
    let citation = b.find(&format!("{} .citations a.citation", pane("generate"))).await;
    let href = citation.attr("href").await.unwrap().unwrap_or_default();
    assert!(href.contains(&format!("#/documents/{document}/chunk-")), "{href}");
    assert!(citation.text().await.unwrap().contains("火星"), "the citation names the document");
    b.screenshots("assistants").await;
    b.assert_labelled().await;

    // optimize
    llm.push(Reply::text("A polished sentence."));
    b.fill(&format!("{} .pane-instruction", pane("optimize")), "make it formal").await;
    send(&b, "optimize", "a rough sentence").await;
    assert_eq!(answer_finished(&b, "optimize", "stop").await, "A polished sentence.");
    let sent = llm.requests().last().cloned().unwrap();
    assert!(sent.to_string().contains("a rough sentence") && sent.to_string().contains("make it formal"));

    // search: the tool call and its sources.
    llm.push(Reply::ToolCalls { calls: vec![("web_search".into(), json!({"query": "mars canyons"}))], split: 2 });
    llm.push(Reply::text("Valles Marineris is the largest canyon."));
    send(&b, "search", "largest canyon on Mars?").await;
    assert_eq!(answer_finished(&b, "search", "stop").await, "Valles Marineris is the largest canyon.");
    assert!(b.text(&format!("{} .tool-call", pane("search"))).await.contains("mars canyons"));
    let sources = b.all(&format!("{} .tool-result a.source", pane("search"))).await;
    assert_eq!(sources.len(), 3);
    for s in &sources {
        let href = s.attr("href").await.unwrap().unwrap_or_default();
        assert!(href.starts_with("https://example.org/"), "{href}");
        assert!(s.attr("rel").await.unwrap().unwrap_or_default().contains("noopener"));
    }
    assert_eq!(searx.queries(), ["mars canyons"]);
    assert!(!b.visible_now(&format!("{} .pane-offline", pane("search"))).await, "a real model answered");
    b.screenshots("assistants-search").await;

    // Model output with HTML and script is text, never markup.
    let hostile = "<img src=x onerror=\"window.__xss=1\"> and <script>window.__xss=2</script> \
                   [link](javascript:window.__xss=3)";
    llm.push(Reply::text(hostile));
    send(&b, "generate", "show me html").await;
    let shown = answer_finished(&b, "generate", "stop").await;
    assert!(shown.contains("<img src=x onerror=") && shown.contains("<script>"), "{shown}");
    let injected = b
        .js(
            "const log = document.querySelector(arguments[0]); \
             return { img: log.querySelectorAll('img').length, script: log.querySelectorAll('script').length, \
                      js: [...log.querySelectorAll('a')].filter(a => /^\\s*javascript:/i.test(a.getAttribute('href') || '')).length, \
                      xss: window.__xss === undefined ? null : window.__xss };",
            vec![json!(format!("{} .pane-log", pane("generate")))],
        )
        .await;
    assert_eq!(injected, json!({"img": 0, "script": 0, "js": 0, "xss": null}));

    // Reload: every pane's history comes back from the session.
    b.client.refresh().await.unwrap();
    b.until(
        "the history to load",
        "return document.querySelectorAll(arguments[0]).length === 4;",
        vec![json!(format!("{} .msg", pane("generate")))],
    )
    .await;
    assert_eq!(b.all(&format!("{} .msg", pane("optimize"))).await.len(), 2);
    assert!(!b.all(&format!("{} .citations a.citation", pane("generate"))).await.is_empty(), "history keeps citations");

    // Following a citation opens the document at the cited chunk.
    let link = b.find(&format!("{} .citations a.citation", pane("generate"))).await;
    let chunk = link.attr("href").await.unwrap().unwrap().rsplit("chunk-").next().unwrap().to_owned();
    link.click().await.unwrap();
    b.visible(&format!("#doc-view #chunk-{chunk}")).await;
    b.assert_clean(&["/ai/sessions/"]).await;
}

/// Reload in the middle of a stream, and the answer completes without
/// duplicated text; stop a generation; clear a session; an upstream error
/// shows as a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_resumes_stop_cancels_clear_empties() {
    let (redis, llm, searx) = (TestRedis::start().await, FakeLlm::start().await, FakeSearx::start().await);
    let app = service(&redis, &llm, &searx, &[]).await;
    let b = Browser::start(&app.client.base, "en-US").await;
    sign_up(&b, "carol", "carol password 1").await;
    b.click("#nav-assistants").await;
    b.visible(&pane("generate")).await;

    let (full, reply) = slow_answer(40, 100);
    llm.push(reply);
    send(&b, "generate", "a long answer").await;
    let early = streaming_text(&b, "generate").await;
    assert!(early.len() < full.len());
    b.client.refresh().await.unwrap();
    let done = answer_finished(&b, "generate", "stop").await;
    assert_eq!(done, full, "the answer completes once, without duplicated text");
    assert_eq!(b.all(&format!("{} .msg[data-role=assistant]", pane("generate"))).await.len(), 1);

    // Stop: the partial answer stays, marked cancelled.
    let (full, reply) = slow_answer(80, 100);
    llm.push(reply);
    send(&b, "generate", "another long answer").await;
    streaming_text(&b, "generate").await;
    b.click(&format!("{} .pane-stop", pane("generate"))).await;
    let stopped = answer_finished(&b, "generate", "cancelled").await;
    assert!(!stopped.is_empty() && stopped.len() < full.len() && full.starts_with(&stopped), "{stopped:?}");
    b.screenshots("assistants-stopped").await;

    // An upstream failure is a message in the pane.
    llm.push(Reply::status(500, r#"{"error":{"message":"upstream exploded"}}"#));
    send(&b, "generate", "fail please").await;
    let error = b
        .until(
            "the pane's error message",
            "const e = document.querySelector(arguments[0]); return e && e.getClientRects().length ? e.textContent.trim() : '';",
            vec![json!(format!("{} .pane-error", pane("generate")))],
        )
        .await;
    assert!(!error.as_str().unwrap().is_empty());

    // Clear: the pane empties and the session is gone.
    b.click(&format!("{} .pane-clear", pane("generate"))).await;
    b.click("#confirm-ok").await;
    b.until(
        "the pane to empty",
        "return document.querySelectorAll(arguments[0]).length === 0;",
        vec![json!(format!("{} .msg", pane("generate")))],
    )
    .await;
    let task = b.js("return document.querySelector('#task-select').value;", vec![]).await;
    let token = token(&app, "carol", "carol password 1").await;
    let r = app.client.get(&token, &format!("/ai/sessions/generate/{}", task.as_str().unwrap())).await;
    assert_eq!(r.status(), 404, "the session was deleted");
    b.assert_clean(&["/ai/sessions/"]).await;
}

/// Chinese from the browser's language, and the switch to English; errors
/// in the login form, up to the login rate limit (429); an expired token
/// returns to the login form and what was typed is still there; the
/// offline provider says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chinese_login_errors_expiry_and_the_offline_provider() {
    let redis = TestRedis::start().await;
    let app =
        TestApp::spawn(|s| s.with_redis(&redis).set("JWT_TTL_SECONDS", "4").set("LIMIT_LOGINS_PER_MIN", "6")).await;
    let b = Browser::start(&app.client.base, "zh-CN").await;
    b.open("/").await;
    b.visible("#login-form").await;
    let lang = b.js("return document.documentElement.lang;", vec![]).await;
    assert!(lang.as_str().unwrap().starts_with("zh"), "{lang}");
    let label = b.text("#login-submit").await;
    assert!(label.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c)), "a Chinese label: {label}");
    b.screenshots("login-zh").await;

    sign_up(&b, "dora", "dora password 1").await;
    // The offline provider answers and the pane says so.
    b.click("#nav-assistants").await;
    send(&b, "generate", "写一段介绍").await;
    answer_finished(&b, "generate", "stop").await;
    b.visible(&format!("{} .pane-offline", pane("generate"))).await;
    b.screenshots("assistants-zh").await;

    // The token expires: the next request returns to the login form, and
    // the draft survives the new login.
    b.fill(&format!("{} .pane-input", pane("optimize")), "未完成的草稿").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    b.click(&format!("{} .pane-send", pane("generate"))).await;
    b.click("#nav-documents").await;
    b.visible("#login-form").await;
    log_in(&b, "dora", "dora password 1").await;
    b.click("#nav-assistants").await;
    let draft = b.find(&format!("{} .pane-input", pane("optimize"))).await.prop("value").await.unwrap();
    assert_eq!(draft.as_deref(), Some("未完成的草稿"));

    // English by the switch, kept across a reload.
    b.find("#lang-switch").await.select_by_value("en").await.unwrap();
    b.until("the page in English", "return document.documentElement.lang.startsWith('en');", vec![]).await;
    b.client.refresh().await.unwrap();
    b.until("still English", "return document.documentElement.lang.startsWith('en');", vec![]).await;
    b.click("#logout").await;
    b.visible("#login-form").await;

    // Wrong passwords: the service's message, then its 429.
    b.fill("#login-username", "dora").await;
    b.fill("#login-password", "wrong password").await;
    b.click("#login-submit").await;
    b.until("the login error", "return document.querySelector('#login-error').textContent.trim();", vec![]).await;
    // Use up the limit (per address and per name) over HTTP; the form then
    // says so, with the wait the service asked for. The budget refills one
    // login every 10 s: on a slow machine the click may come after that,
    // so the limit is used up again and the form tried again.
    let too_many = "const t = document.querySelector('#login-error').textContent; return /too many/i.test(t) ? t : '';";
    let mut limited = Value::Null;
    for _ in 0..5 {
        loop {
            let r = app
                .client
                .http
                .post(app.client.url("/auth/login"))
                .json(&json!({"username": "x", "password": "y"}))
                .send()
                .await
                .unwrap();
            if r.status() == 429 {
                break;
            }
        }
        b.click("#login-submit").await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            limited = b.js(too_many, vec![]).await;
            if limited.as_str().is_some_and(|t| !t.is_empty()) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        if limited.as_str().is_some_and(|t| !t.is_empty()) {
            break;
        }
    }
    assert!(limited.as_str().is_some_and(|t| !t.is_empty()), "the 429 message: {}", b.page_text().await);
    assert!(limited.as_str().unwrap().chars().any(|c| c.is_ascii_digit()), "it says how long to wait: {limited}");
    b.assert_clean(&["/auth/login", "/ai/", "/documents", "/auth/me"]).await;
}

/// The admin sees the flags and the readiness of each feature, toggles a
/// flag (after a confirmation) and sees `/readyz` change; a writer has no
/// admin page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_toggles_a_flag_and_readyz_follows() {
    let redis = TestRedis::start().await;
    let app = TestApp::spawn(|s| s.with_redis(&redis)).await;
    app.app.create_user("root", "root password 1".into(), true).await.unwrap();
    let b = Browser::start(&app.client.base, "en-US").await;
    sign_up(&b, "writer", "writer password 1").await;
    assert!(!b.visible_now("#nav-admin").await, "no admin page for a writer");
    b.click("#logout").await;
    log_in(&b, "root", "root password 1").await;
    b.click("#nav-admin").await;
    let flag = ".flag[data-name=REDIS_TASK_STATUS_ENABLED]";
    b.visible(&format!("{flag} .flag-effective[data-value=true]")).await;
    b.visible(".feature[data-name=task_status] .feature-backend[data-value=redis]").await;
    b.visible("#readyz-status[data-status=ready]").await;
    b.screenshots("admin").await;
    b.assert_labelled().await;

    b.click(&format!("{flag} .flag-toggle")).await;
    b.visible("dialog#confirm").await;
    b.click("#confirm-ok").await;
    b.visible(&format!("{flag} .flag-effective[data-value=false]")).await;
    b.visible(".feature[data-name=task_status] .feature-backend[data-value=memory]").await;
    let token = token(&app, "root", "root password 1").await;
    let flags = app.client.json(&token, "/admin/flags").await;
    assert_eq!(flags["overrides"], json!({"REDIS_TASK_STATUS_ENABLED": false}));
    assert!(!b.text(&format!("{flag} .flag-override")).await.trim().is_empty());

    b.click(&format!("{flag} .flag-reset")).await;
    b.click("#confirm-ok").await;
    b.visible(".feature[data-name=task_status] .feature-backend[data-value=redis]").await;
    assert_eq!(app.client.json(&token, "/admin/flags").await["overrides"], json!({}));
    b.assert_clean(&[]).await;
}
