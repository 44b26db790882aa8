//! The AI assistants end to end: SSE as SPEC §5 says, sessions across
//! turns, restarts and instances, leases, the search tool loop, resuming
//! and cancelling on another instance, upstream failures, the offline
//! provider, and the SPEC §6 stages and rollbacks with chat turns.
//!
//! The model and the web search are the fakes of `fakes.rs`, which speak
//! the real wire protocols; Redis is a real `redis-server`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fakes::{FakeLlm, FakeSearx, Reply};
use crate::helpers::{Client, Settings, TestApp, TestProcess, TestRedis, eventually};
use crate::sse::{Ev, SseReader, text_of};

/// POSTs to an assistant; returns the response (status not checked).
async fn ask(c: &Client, token: &str, kind: &str, body: Value) -> reqwest::Response {
    c.http.post(c.url(&format!("/ai/{kind}"))).bearer_auth(token).json(&body).send().await.unwrap()
}

/// A whole turn: 200, every event, and checks that hold for every stream.
async fn turn(c: &Client, token: &str, kind: &str, body: Value) -> Vec<Ev> {
    let r = ask(c, token, kind, body).await;
    let status = r.status();
    assert_eq!(status, 200, "{}", r.text().await.unwrap_or_default());
    let events = SseReader::new(r).rest().await;
    check_stream(&events);
    events
}

/// Ids are 1, 2, 3 …; `start` first; exactly one of `done`/`error`, last.
fn check_stream(events: &[Ev]) {
    assert!(!events.is_empty());
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.id, Some(i as u64 + 1), "ids are sequence numbers: {events:?}");
    }
    assert_eq!(events[0].event, "start");
    let last = events.last().unwrap();
    assert!(last.event == "done" || last.event == "error", "{events:?}");
    let terminal = events.iter().filter(|e| e.event == "done" || e.event == "error").count();
    assert_eq!(terminal, 1, "{events:?}");
}

fn last(events: &[Ev]) -> &Ev {
    events.last().unwrap()
}

/// The messages the fake model received in its `n`-th request, as (role, content).
fn sent(llm: &FakeLlm, n: usize) -> Vec<(String, String)> {
    let requests = llm.requests();
    requests[n]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap().to_owned(), m["content"].as_str().unwrap_or_default().to_owned()))
        .collect()
}

/// The names of the tools offered in a request.
fn tool_names(request: &Value) -> Vec<String> {
    request["tools"].as_array().unwrap().iter().map(|t| t["function"]["name"].as_str().unwrap().to_owned()).collect()
}

fn with_llm(s: Settings, llm: &FakeLlm) -> Settings {
    s.with_llm(&llm.base_url)
}

/// Two instances of one service (one Redis, one database) on one fake model.
struct Pair {
    redis: TestRedis,
    llm: FakeLlm,
    a: TestApp,
    b: TestApp,
    _dir: tempfile::TempDir,
}

impl Pair {
    async fn start() -> Self {
        let redis = TestRedis::start().await;
        let llm = FakeLlm::start().await;
        let dir = tempfile::TempDir::new().unwrap();
        let settings = with_llm(Settings::new(dir.path()).with_redis(&redis), &llm);
        let a = TestApp::start(settings.clone()).await;
        let b = TestApp::start(settings).await;
        Self { redis, llm, a, b, _dir: dir }
    }
}

async fn session(c: &Client, token: &str, kind: &str, task: &str) -> (u16, Value) {
    let r = c.get(token, &format!("/ai/sessions/{kind}/{task}")).await;
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// SSE as SPEC §5 says: headers, event names, ids, the `start` event, and
/// a round stored in the session; the model receives the system prompt in
/// Chinese and the user's message.
#[tokio::test]
async fn a_turn_streams_as_the_spec_says() {
    let llm = FakeLlm::start().await;
    let t = TestApp::spawn(|s| with_llm(s, &llm)).await;
    let c = &t.client;
    let token = c.user("sse").await;
    llm.push(Reply::Text { chunks: vec!["第一段".into(), "，第二段".into(), "。".into()], delay_ms: 5 });
    let r =
        ask(c, &token, "optimize", json!({"task_id": "report-1", "text": "原来的文字", "instruction": "更正式"})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    assert_eq!(r.headers()["cache-control"], "no-cache");
    assert_eq!(r.headers()["x-accel-buffering"], "no");
    let events = SseReader::new(r).rest().await;
    check_stream(&events);
    let start = &events[0].data;
    assert_eq!(start["kind"], "optimize");
    assert_eq!(start["task_id"], "report-1");
    assert_eq!(start["provider"], "openai_compatible");
    let stream_id = start["stream_id"].as_str().unwrap();
    assert!(stream_id.starts_with("optimize-"));
    assert_eq!(text_of(&events), "第一段，第二段。");
    assert_eq!(last(&events).event, "done");
    assert_eq!(last(&events).data["finish_reason"], "stop");
    assert!(last(&events).data["usage"]["total_tokens"].as_u64().is_some(), "usage is passed on");

    let messages = sent(&llm, 0);
    assert_eq!(messages[0].0, "system");
    assert!(messages[0].1.contains("润色"), "the default optimize prompt: {}", messages[0].1);
    assert_eq!(messages.last().unwrap(), &("user".to_owned(), "修改要求：更正式\n\n原文：\n原来的文字".to_owned()));
    assert_eq!(llm.requests()[0]["model"], "fake-model");
    assert_eq!(llm.requests()[0]["stream"], true);

    let (code, s) = session(c, &token, "optimize", "report-1").await;
    assert_eq!(code, 200);
    assert_eq!(s["messages"].as_array().unwrap().len(), 2);
    assert_eq!(s["messages"][1], json!({"role": "assistant", "content": "第一段，第二段。"}));
    let ttl = s["ttl_seconds"].as_u64().unwrap();
    assert!(ttl > 7000 && ttl <= 7200, "{ttl}");
}

/// The same user and task continue one conversation (the model receives
/// the earlier rounds); other users, other tasks and other kinds do not.
#[tokio::test]
async fn sessions_continue_and_never_mix() {
    let llm = FakeLlm::start().await;
    let t = TestApp::spawn(|s| with_llm(s, &llm)).await;
    let c = &t.client;
    let alice = c.user("alice-ai").await;
    let bob = c.user("bob-ai").await;
    turn(c, &alice, "generate", json!({"task_id": "t1", "message": "第一问"})).await;
    turn(c, &alice, "generate", json!({"task_id": "t1", "message": "第二问"})).await;
    let second = sent(&llm, 1);
    let convo: Vec<&(String, String)> = second.iter().filter(|(r, _)| r != "system").collect();
    assert_eq!(convo.len(), 3, "{second:?}");
    assert_eq!(convo[0], &("user".into(), "第一问".into()));
    assert_eq!(convo[1], &("assistant".into(), "收到：第一问".into()));
    assert_eq!(convo[2], &("user".into(), "第二问".into()));

    // Bob, same task id: a conversation of his own.
    turn(c, &bob, "generate", json!({"task_id": "t1", "message": "鲍勃的问题"})).await;
    let bobs: Vec<(String, String)> = sent(&llm, 2).into_iter().filter(|(r, _)| r != "system").collect();
    assert_eq!(bobs, vec![("user".to_owned(), "鲍勃的问题".to_owned())]);
    // Alice, same task, other kind: a conversation of its own.
    turn(c, &alice, "search", json!({"task_id": "t1", "message": "检索"})).await;
    let search: Vec<(String, String)> = sent(&llm, 3).into_iter().filter(|(r, _)| r != "system").collect();
    assert_eq!(search, vec![("user".to_owned(), "检索".to_owned())]);

    assert_eq!(session(c, &alice, "generate", "t1").await.1["messages"].as_array().unwrap().len(), 4);
    assert_eq!(session(c, &bob, "generate", "t1").await.1["messages"].as_array().unwrap().len(), 2);
    assert_eq!(session(c, &bob, "optimize", "t1").await.0, 404);
    let (code, body) = session(c, &bob, "search", "t1").await;
    assert_eq!(code, 404);
    assert_eq!(body, json!({"detail": "session not found", "code": "session_not_found"}));

    // Clearing is per user too, and idempotent.
    let r = c.http.delete(c.url("/ai/sessions/generate/t1")).bearer_auth(&bob).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = c.http.delete(c.url("/ai/sessions/generate/t1")).bearer_auth(&bob).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(session(c, &bob, "generate", "t1").await.0, 404);
    assert_eq!(session(c, &alice, "generate", "t1").await.0, 200);
}

/// The 21st round pushes out the oldest, the history never starts with an
/// orphan answer, and the TTL is refreshed on each turn (in Redis, with
/// the key template of SPEC §2).
#[tokio::test]
async fn the_twenty_first_round_pushes_out_the_oldest_and_the_ttl_is_refreshed() {
    let redis = TestRedis::start().await;
    let llm = FakeLlm::start().await;
    let t = TestApp::spawn(|s| with_llm(s.with_redis(&redis), &llm).set("CHAT_SESSION_TTL_SECONDS", "600")).await;
    let c = &t.client;
    let token = c.user("rounds").await;
    let user = c.json(&token, "/auth/me").await["id"].as_str().unwrap().to_owned();
    let key = format!("langextract:test:chat:generate:{user}:long");
    for i in 1..=21 {
        llm.push(Reply::Text { chunks: vec![format!("答{i}")], delay_ms: 0 });
        turn(c, &token, "generate", json!({"task_id": "long", "message": format!("问{i}")})).await;
        if i == 20 {
            let mut conn = redis.conn().await;
            redis::cmd("PEXPIRE").arg(&key).arg(5000).query_async::<()>(&mut conn).await.unwrap();
        }
    }
    let (_, s) = session(c, &token, "generate", "long").await;
    let messages = s["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 40);
    assert_eq!(messages[0], json!({"role": "user", "content": "问2"}));
    assert_eq!(messages[39], json!({"role": "assistant", "content": "答21"}));
    let keys = redis.keys_with_ttl().await;
    let ttl = keys[&key];
    assert!(ttl > 590_000 && ttl <= 600_000, "the TTL was refreshed by the 21st turn: {ttl}");
    // The model saw at most the kept history plus the new message.
    let last: Vec<(String, String)> = sent(&llm, 20).into_iter().filter(|(r, _)| r != "system").collect();
    assert_eq!(last.len(), 41);
    assert_eq!(last[0], ("user".to_owned(), "问1".to_owned()));

    // Lone messages never leave an orphan at the front: with room for 3
    // messages, the history is trimmed to whole rounds from a user message.
    let t2 = TestApp::spawn(|s| with_llm(s.with_redis(&redis), &llm).set("CHAT_MAX_MESSAGES", "3")).await;
    let token = t2.client.user("three").await;
    for i in 1..=3 {
        turn(&t2.client, &token, "search", json!({"task_id": "odd", "message": format!("q{i}")})).await;
    }
    let (_, s) = session(&t2.client, &token, "search", "odd").await;
    let roles: Vec<&str> = s["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant"], "trimmed to a user message first");
    assert_eq!(s["messages"][0]["content"], "q3");
}

/// A second concurrent turn on a session gets 409; other sessions are not
/// held up; the lease is free again when the first turn ends.
#[tokio::test]
async fn a_second_concurrent_turn_gets_409() {
    let llm = FakeLlm::start().await;
    let t = TestApp::spawn(|s| with_llm(s, &llm)).await;
    let c = &t.client;
    let token = c.user("busy").await;
    llm.push(Reply::Text { chunks: (0..20).map(|i| format!("{i} ")).collect(), delay_ms: 50 });
    let first = ask(c, &token, "generate", json!({"task_id": "b", "message": "慢一点"})).await;
    assert_eq!(first.status(), 200);
    let mut first = SseReader::new(first);
    assert_eq!(first.next().await.unwrap().event, "start");
    let r = ask(c, &token, "generate", json!({"task_id": "b", "message": "插队"})).await;
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "session_busy");
    // Another kind on the same task is another session.
    turn(c, &token, "optimize", json!({"task_id": "b", "text": "别的"})).await;
    let rest = first.rest().await;
    assert_eq!(last(&rest).event, "done");
    turn(c, &token, "generate", json!({"task_id": "b", "message": "现在可以了"})).await;
}

/// The lock left by a killed instance expires (CHAT_LOCK_TTL_SECONDS), a
/// client resuming its answer elsewhere learns that the answer is lost, and
/// the conversation goes on on another instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_of_a_killed_instance_expires() {
    let redis = TestRedis::start().await;
    let llm = FakeLlm::start().await;
    let dir = tempfile::TempDir::new().unwrap();
    let settings = with_llm(Settings::new(dir.path()).with_redis(&redis), &llm).set("CHAT_LOCK_TTL_SECONDS", "5");
    let mut p = TestProcess::start(&settings, dir.path(), "doomed").await;
    let token = p.client.user("crash").await;
    llm.push(Reply::Hang { chunks: vec!["写到一半".into()] });
    let r = ask(&p.client, &token, "generate", json!({"task_id": "lk", "message": "开始"})).await;
    assert_eq!(r.status(), 200);
    let mut reader = SseReader::new(r);
    let start = reader.next().await.unwrap();
    let stream_id = start.data["stream_id"].as_str().unwrap().to_owned();
    let delta = tokio::time::timeout(Duration::from_secs(30), reader.next()).await.unwrap().unwrap();
    assert_eq!(delta.event, "delta");
    p.kill();

    let b = TestApp::start(settings.clone()).await;
    let r = ask(&b.client, &token, "generate", json!({"task_id": "lk", "message": "还锁着吗"})).await;
    assert_eq!(r.status(), 409, "the dead instance's lease is still there");
    // A client resuming the dead instance's answer is told it is lost once
    // the answer's lease has expired, not left waiting.
    let r = b.client.resume(&token, &stream_id, delta.id.unwrap()).await;
    assert_eq!(r.status(), 200);
    let rest = SseReader::new(r).rest().await;
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!(rest[0].event, "error");
    assert_eq!(rest[0].data["code"], "stream_lost");
    assert_eq!(rest[0].id, Some(delta.id.unwrap() + 1));

    let started = Instant::now();
    eventually(Duration::from_secs(20), "the lease expires", || async {
        ask(&b.client, &token, "generate", json!({"task_id": "lk", "message": "继续"})).await.status() == 200
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// The search assistant's tool loop end to end: tool calls split across
/// deltas, `tool_call`/`tool_result` events, the results sent back to the
/// model as tool messages, sources on the stored answer; and the limit on
/// tool rounds.
#[tokio::test]
async fn the_search_tool_loop_runs_and_is_bounded() {
    let llm = FakeLlm::start().await;
    let searx = FakeSearx::start().await;
    let t =
        TestApp::spawn(|s| with_llm(s, &llm).set("SEARCH_URL", &searx.base_url).set("AI_MAX_TOOL_ROUNDS", "2")).await;
    let c = &t.client;
    let token = c.user("searcher").await;
    c.imported(&token).await;

    llm.push(Reply::ToolCalls {
        calls: vec![
            ("web_search".into(), json!({"query": "火星 探测"})),
            ("search_documents".into(), json!({"query": "火星"})),
        ],
        split: 4,
    });
    llm.push(Reply::text("根据检索结果，火星是第四颗行星 [1]。"));
    let events = turn(c, &token, "search", json!({"task_id": "s1", "message": "火星是什么？"})).await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(&names[..5], ["start", "tool_call", "tool_result", "tool_call", "tool_result"], "{names:?}");
    assert_eq!(events[1].data, json!({"name": "web_search", "arguments": {"query": "火星 探测"}}));
    let web = events[2].data["results"].as_array().unwrap();
    assert_eq!(web.len(), 3);
    assert!(web[0]["url"].as_str().unwrap().starts_with("https://example.org/"));
    assert_eq!(searx.queries(), ["火星 探测"]);
    assert_eq!(events[3].data["arguments"], json!({"query": "火星"}));
    let docs = events[4].data["results"].as_array().unwrap();
    assert!(!docs.is_empty() && docs[0]["snippet"].as_str().unwrap().contains("火星"), "{docs:?}");
    assert_eq!(text_of(&events), "根据检索结果，火星是第四颗行星 [1]。");
    assert_eq!(last(&events).data["finish_reason"], "stop");
    assert_eq!(last(&events).data["usage"]["total_tokens"].as_u64().map(|t| t > 0), Some(true), "usage of both calls");

    // The metrics of the issue (the recorder is shared by the tests of this
    // process: only presence is checked).
    let metrics = c.http.get(c.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for name in [
        "reportd_ai_active_streams{kind=\"search\"}",
        "reportd_ai_tool_calls_total{tool=\"web_search\"}",
        "reportd_ai_tool_calls_total{tool=\"search_documents\"}",
        "reportd_llm_first_token_seconds_bucket",
        "reportd_llm_duration_seconds_bucket",
        "reportd_llm_tokens_total{kind=\"completion\"}",
    ] {
        assert!(metrics.contains(name), "{name} in /metrics");
    }

    // The second request carries the calls and their results.
    let second = &llm.requests()[1];
    let msgs = second["messages"].as_array().unwrap();
    let assistant = msgs.iter().find(|m| m["role"] == "assistant").unwrap();
    assert_eq!(assistant["tool_calls"].as_array().unwrap().len(), 2);
    assert_eq!(assistant["tool_calls"][0]["function"]["arguments"], json!({"query": "火星 探测"}).to_string());
    let tool_msgs: Vec<&Value> = msgs.iter().filter(|m| m["role"] == "tool").collect();
    assert_eq!(tool_msgs.len(), 2);
    assert_eq!(tool_msgs[0]["tool_call_id"], "call_0");
    assert!(tool_msgs[0]["content"].as_str().unwrap().contains("example.org"));
    let tools = tool_names(&llm.requests()[0]);
    assert_eq!(tools, ["search_documents", "web_search"]);

    let (_, s) = session(c, &token, "search", "s1").await;
    let stored = s["messages"].as_array().unwrap();
    assert_eq!(stored.len(), 2, "tool messages are not kept: {stored:?}");
    assert!(stored[1]["sources"].as_array().unwrap().len() >= 4, "the sources ride on the answer");

    // A model that keeps calling tools: two rounds, then no tools offered.
    for _ in 0..3 {
        llm.push(Reply::ToolCalls { calls: vec![("search_documents".into(), json!({"query": "行星"}))], split: 2 });
    }
    let before = llm.requests().len();
    let events = turn(c, &token, "search", json!({"task_id": "s2", "message": "一直查"})).await;
    assert_eq!(events.iter().filter(|e| e.event == "tool_call").count(), 2);
    assert_eq!(events.iter().filter(|e| e.event == "tool_result").count(), 2);
    let requests = llm.requests();
    assert_eq!(requests.len(), before + 3);
    assert!(requests[before + 2].get("tools").is_none(), "the last call offers no tools");
    assert_eq!(last(&events).event, "done");
}

/// Without SEARCH_URL, web_search is not offered to the model.
#[tokio::test]
async fn without_search_url_web_search_is_not_offered() {
    let llm = FakeLlm::start().await;
    let t = TestApp::spawn(|s| with_llm(s, &llm)).await;
    let token = t.client.user("noweb").await;
    turn(&t.client, &token, "search", json!({"task_id": "w", "message": "查一下"})).await;
    let tools = tool_names(&llm.requests()[0]);
    assert_eq!(tools, ["search_documents"]);
}

/// A client that disconnects mid-stream resumes with Last-Event-ID on the
/// other instance and receives every delta exactly once, in order; the
/// stream belongs to its owner only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_resumes_on_the_other_instance() {
    let Pair { redis, llm, a, b, _dir } = Pair::start().await;
    let token = a.client.user("resumer").await;
    let other = a.client.user("snoop").await;
    let chunks: Vec<String> = (0..40).map(|i| format!("片段{i:02}；")).collect();
    llm.push(Reply::Text { chunks: chunks.clone(), delay_ms: 25 });
    let r = ask(&a.client, &token, "generate", json!({"task_id": "r", "message": "长文"})).await;
    let mut reader = SseReader::new(r);
    let mut got = Vec::new();
    while got.iter().filter(|e: &&Ev| e.event == "delta").count() < 3 {
        got.push(tokio::time::timeout(Duration::from_secs(30), reader.next()).await.unwrap().unwrap());
    }
    drop(reader); // the client goes away; the answer goes on
    let stream_id = got[0].data["stream_id"].as_str().unwrap().to_owned();
    let last_id = got.last().unwrap().id.unwrap();

    // Someone else's stream is a stream that does not exist.
    let r = b.client.get(&other, &format!("/ai/streams/{stream_id}")).await;
    assert_eq!(r.status(), 404);
    let snooped: Value = r.json().await.unwrap();
    let r = b.client.get(&token, "/ai/streams/generate-0123456789abcdef0123456789abcdef").await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap(), snooped);

    let r = b.client.resume(&token, &stream_id, last_id).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let rest = SseReader::new(r).rest().await;
    assert_eq!(rest[0].id, Some(last_id + 1), "the resume starts right after the last event the client had");
    let mut all = got.clone();
    all.extend(rest);
    check_stream(&all);
    assert_eq!(text_of(&all), chunks.concat(), "every delta exactly once, in order");
    assert_eq!(last(&all).event, "done");

    // Replaying from the start on either instance gives the same events.
    let full = SseReader::new(b.client.get(&token, &format!("/ai/streams/{stream_id}")).await).rest().await;
    assert_eq!(full.len(), all.len());
    assert_eq!(text_of(&full), chunks.concat());
    // The stream's events are in Redis under the SPEC key, with a TTL of an hour.
    let user = a.client.json(&token, "/auth/me").await["id"].as_str().unwrap().to_owned();
    let keys = redis.keys_with_ttl().await;
    let ttl = keys[&format!("langextract:test:stream:generate:{user}:{stream_id}")];
    assert!(ttl > 3_500_000 && ttl <= 3_600_000, "{ttl}");
    // Deltas are merged: far fewer events than upstream chunks is fine, but
    // never more.
    assert!(all.iter().filter(|e| e.event == "delta").count() <= chunks.len());
}

/// Cancel on the other instance stops the generation (and the upstream
/// call); the stream ends with `done`/`cancelled`; the partial answer is
/// kept, marked; cancelling again, or a finished stream, is still 204.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_on_the_other_instance_stops_the_upstream_call() {
    let Pair { redis: _redis, llm, a, b, _dir } = Pair::start().await;
    let token = a.client.user("canceller").await;
    let other = a.client.user("stranger").await;
    llm.push(Reply::Hang { chunks: vec!["已经写了".into()] });
    let r = ask(&a.client, &token, "generate", json!({"task_id": "c", "message": "写"})).await;
    let mut reader = SseReader::new(r);
    let start = reader.next().await.unwrap();
    let stream_id = start.data["stream_id"].as_str().unwrap().to_owned();
    assert_eq!(reader.next().await.unwrap().event, "delta");
    assert_eq!(llm.open_streams(), 1);

    let cancel = |c: &Client, tok: &str| {
        let url = c.url(&format!("/ai/streams/{stream_id}/cancel"));
        let req = c.http.post(url).bearer_auth(tok.to_owned());
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(cancel(&b.client, &other).await, 404, "not someone else's");
    assert_eq!(cancel(&b.client, &token).await, 204);
    let rest = tokio::time::timeout(Duration::from_secs(30), reader.rest()).await.unwrap();
    assert_eq!(last(&rest).event, "done");
    assert_eq!(last(&rest).data["finish_reason"], "cancelled");
    eventually(Duration::from_secs(10), "the upstream call is dropped", || async { llm.dropped_streams() == 1 }).await;
    assert_eq!(cancel(&b.client, &token).await, 204, "a finished stream: still 204");
    assert_eq!(cancel(&a.client, &token).await, 204);
    let (_, s) = session(&b.client, &token, "generate", "c").await;
    assert_eq!(s["messages"][1]["content"], "已经写了");
    assert_eq!(s["messages"][1]["finish_reason"], "cancelled");
    // The session is free again.
    turn(&b.client, &token, "generate", json!({"task_id": "c", "message": "再来"})).await;
}

/// Upstream errors, hangs and 429s end in an `error` event with a clear
/// code; nothing is stored for them and the session stays usable.
#[tokio::test]
async fn upstream_failures_end_in_an_error_event_and_the_session_goes_on() {
    let llm = FakeLlm::start().await;
    let t = TestApp::spawn(|s| {
        with_llm(s, &llm)
            .set("LLM_MAX_RETRIES", "1")
            // Three keep-alive periods before the first-token deadline, so
            // at least one comment flows however the two timers line up.
            .set("LLM_FIRST_TOKEN_TIMEOUT_SECONDS", "3")
            .set("LLM_IDLE_TIMEOUT_SECONDS", "1")
            .set("SSE_KEEPALIVE_SECONDS", "1")
    })
    .await;
    let c = &t.client;
    let token = c.user("failures").await;
    turn(c, &token, "generate", json!({"task_id": "f", "message": "正常的一轮"})).await;

    let cases: Vec<(Vec<Reply>, &str)> = vec![
        (
            vec![
                Reply::Status { code: 429, body: "slow down".into(), retry_after: Some(0) },
                Reply::Status { code: 429, body: "slow down".into(), retry_after: Some(0) },
            ],
            "llm_rate_limited",
        ),
        (
            vec![
                Reply::Status { code: 503, body: "overloaded".into(), retry_after: None },
                Reply::Status { code: 500, body: "boom".into(), retry_after: None },
            ],
            "llm_upstream_error",
        ),
        (
            vec![Reply::Status { code: 401, body: "bad key sk-test-secret-key".into(), retry_after: None }],
            "llm_upstream_error",
        ),
        (vec![Reply::FailMidStream { chunks: vec!["半".into()] }], "llm_incomplete"),
        (vec![Reply::Hang { chunks: vec![] }], "llm_timeout"),
        (vec![Reply::Hang { chunks: vec!["停住".into()] }], "llm_idle_timeout"),
    ];
    for (replies, code) in cases {
        for r in replies {
            llm.push(r);
        }
        let r = ask(c, &token, "generate", json!({"task_id": "f", "message": format!("会失败：{code}")})).await;
        assert_eq!(r.status(), 200, "upstream failures arrive as events");
        let mut reader = SseReader::new(r);
        let events = reader.rest().await;
        check_stream(&events);
        let end = last(&events);
        assert_eq!(end.event, "error", "{code}: {events:?}");
        assert_eq!(end.data["code"], code, "{events:?}");
        assert!(!end.data["detail"].as_str().unwrap().contains("sk-test-secret-key"), "the key never leaks");
        if code == "llm_timeout" {
            assert!(reader.comments >= 1, "keep-alive comments flow while the model is silent");
        }
        // The session is as it was and usable.
        turn(c, &token, "generate", json!({"task_id": "f", "message": "再试一次"})).await;
    }
    let metrics = c.http.get(c.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for code in ["llm_rate_limited", "llm_upstream_error", "llm_incomplete", "llm_timeout", "llm_idle_timeout"] {
        assert!(metrics.contains(&format!("reportd_llm_errors_total{{code=\"{code}\"}}")), "{code} is counted");
    }
    let (_, s) = session(c, &token, "generate", "f").await;
    let contents: Vec<&str> =
        s["messages"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap()).collect();
    assert_eq!(contents.len(), 14, "only the rounds that completed: {contents:?}");
    assert!(contents.iter().all(|c| !c.contains("会失败")));
}

/// The offline provider works end to end for all three assistants: it says
/// what it is, drafts only from the user's own documents, with citations,
/// and keeps the conversation like any other.
#[tokio::test]
async fn the_offline_provider_works_end_to_end() {
    let searx = FakeSearx::start().await;
    let t = TestApp::spawn(|s| s.set("SEARCH_URL", &searx.base_url)).await;
    let c = &t.client;
    let token = c.user("offline").await;
    let other = c.user("offline-other").await;
    c.imported(&token).await;
    c.import(&other, "secret.txt", "机密：木星计划的预算是一百亿。".repeat(5).into_bytes()).await;

    let events = turn(c, &token, "generate", json!({"task_id": "o", "message": "介绍火星"})).await;
    assert_eq!(events[0].data["provider"], "offline");
    let draft = text_of(&events);
    assert!(draft.starts_with("（离线模式"), "{draft}");
    assert!(draft.contains("火星是太阳系的第四颗行星") && draft.contains("[1]"), "{draft}");
    assert!(draft.contains("参考来源"));
    assert!(!draft.contains("木星计划"), "never another user's documents");
    let done = &last(&events).data;
    assert_eq!(done["finish_reason"], "stop");
    assert!(done["sources"][0]["url"].as_str().unwrap().starts_with("/documents/"));

    let events = turn(c, &token, "optimize", json!({"task_id": "o", "text": "我们  今天 讨论,明天继续。。"})).await;
    let tidied = text_of(&events);
    assert!(tidied.starts_with("（离线模式") && tidied.ends_with("我们今天讨论，明天继续。"), "{tidied}");

    let events = turn(c, &token, "search", json!({"task_id": "o", "message": "火星"})).await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(&names[..5], ["start", "tool_call", "tool_result", "tool_call", "tool_result"]);
    assert_eq!(events[3].data["name"], "web_search");
    assert_eq!(searx.queries(), ["火星"]);
    assert!(text_of(&events).contains("example.org"));

    for kind in ["generate", "optimize", "search"] {
        let (code, s) = session(c, &token, kind, "o").await;
        assert_eq!(code, 200);
        assert_eq!(s["messages"].as_array().unwrap().len(), 2, "{kind}");
    }
}

/// Bad requests get clear 4xx JSON errors before anything streams.
#[tokio::test]
async fn bad_requests_are_refused_before_streaming() {
    let t = TestApp::spawn(|s| s.set("AI_MAX_INPUT_CHARS", "100")).await;
    let c = &t.client;
    let token = c.user("strict").await;
    let cases = [
        ("generate", json!({"task_id": "a:b", "message": "x"}), 422, "invalid_id"),
        ("generate", json!({"task_id": "ok", "message": "   "}), 422, "invalid_body"),
        ("generate", json!({"task_id": "ok", "message": "长".repeat(101)}), 422, "input_too_long"),
        ("generate", json!({"task_id": "ok", "message": "x", "document_ids": ["*"]}), 422, "invalid_id"),
        ("generate", json!({"task_id": "ok"}), 422, "invalid_body"),
        ("optimize", json!({"task_id": "ok", "text": "x", "instruction": "长".repeat(2001)}), 422, "input_too_long"),
        ("search", json!({"task_id": "ok", "message": 5}), 422, "invalid_body"),
    ];
    for (kind, body, status, code) in cases {
        let r = ask(c, &token, kind, body.clone()).await;
        assert_eq!(r.status(), status, "{kind} {body}");
        let got: Value = r.json().await.unwrap();
        assert_eq!(got["code"], code, "{kind} {body}: {got}");
    }
    let r = c.http.post(c.url("/ai/generate")).bearer_auth(&token).body("{").send().await.unwrap();
    assert_eq!(r.status(), 415);
    let r = c.http.post(c.url("/ai/generate")).json(&json!({"task_id": "a", "message": "x"})).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(c.get(&token, "/ai/sessions/chat/t").await.status(), 422);
    assert_eq!(c.get(&token, "/ai/sessions/generate/a%3Ab").await.status(), 422);
    assert_eq!(c.get(&token, "/ai/streams/a:b").await.status(), 422);
    assert_eq!(c.get(&token, "/ai/streams/nope").await.status(), 404);
    let r =
        c.http.get(c.url("/ai/streams/nope")).bearer_auth(&token).header("Last-Event-ID", "x").send().await.unwrap();
    assert_eq!(r.status(), 422);
    let r = c.http.post(c.url("/ai/streams/nope/cancel")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

/// Stage 0 with chat turns: Redis deployed and reachable but
/// `REDIS_ENABLED=0`: conversations work and nothing is written to Redis.
#[tokio::test]
async fn stage0_chat_turns_write_nothing_to_redis() {
    let redis = TestRedis::start().await;
    let llm = FakeLlm::start().await;
    let t = TestApp::spawn(|s| with_llm(s.with_redis(&redis).set("REDIS_ENABLED", "0"), &llm)).await;
    let c = &t.client;
    let token = c.user("stage0-chat").await;
    turn(c, &token, "generate", json!({"task_id": "s0", "message": "一"})).await;
    turn(c, &token, "generate", json!({"task_id": "s0", "message": "二"})).await;
    assert_eq!(sent(&llm, 1).iter().filter(|(r, _)| r != "system").count(), 3);
    assert!(redis.keys_with_ttl().await.is_empty(), "nothing is written to Redis");
}

/// Restart and a second instance: with sessions in Redis, the conversation
/// continues on a new process and on another instance; every key carries
/// the user id and a TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_survives_a_restart_and_moves_between_instances() {
    let redis = TestRedis::start().await;
    let llm = FakeLlm::start().await;
    let dir = tempfile::TempDir::new().unwrap();
    let settings = with_llm(Settings::new(dir.path()).with_redis(&redis), &llm);
    let a = TestApp::start(settings.clone()).await;
    let token = a.client.user("traveller").await;
    turn(&a.client, &token, "search", json!({"task_id": "x", "message": "在A上"})).await;
    drop(a); // a restart: process memory is gone
    let b = TestApp::start(settings.clone()).await;
    turn(&b.client, &token, "search", json!({"task_id": "x", "message": "在B上"})).await;
    let c2 = TestApp::start(settings).await;
    turn(&c2.client, &token, "search", json!({"task_id": "x", "message": "在C上"})).await;
    let convo: Vec<String> = sent(&llm, 2).into_iter().filter(|(r, _)| r != "system").map(|(_, c)| c).collect();
    assert_eq!(convo, ["在A上", "收到：在A上", "在B上", "收到：在B上", "在C上"]);
    let user = b.client.json(&token, "/auth/me").await["id"].as_str().unwrap().to_owned();
    for (key, ttl) in redis.keys_with_ttl().await {
        assert!(key.starts_with("langextract:test:"), "{key}");
        assert!(ttl > 0, "{key} has a TTL");
        if key.contains(":chat:") || key.contains(":stream:") {
            assert!(key.contains(&user), "{key}");
        }
    }
}

/// Rollback at run time: an admin turns REDIS_CHAT_SESSION_ENABLED off; the
/// conversation goes on from memory with nothing lost (dual write, and the
/// shared state carried over), and back on it is served by Redis again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_chat_sessions_off_at_run_time_loses_no_conversation() {
    let redis = TestRedis::start().await;
    let llm = FakeLlm::start().await;
    let t = TestApp::spawn(|s| with_llm(s.with_redis(&redis), &llm)).await;
    let c = &t.client;
    t.app.create_user("chatroot", "root password 1".into(), true).await.unwrap();
    let admin = c.login("chatroot", "root password 1").await;
    let token = c.user("rollback-chat").await;
    turn(c, &token, "generate", json!({"task_id": "rb", "message": "开关前"})).await;
    let put = |flag: Option<bool>| {
        let req =
            c.http.put(c.url("/admin/flags")).bearer_auth(&admin).json(&json!({"REDIS_CHAT_SESSION_ENABLED": flag}));
        async move { assert_eq!(req.send().await.unwrap().status(), 200) }
    };
    put(Some(false)).await;
    assert_eq!(c.readyz().await.1["features"]["chat_session"]["backend"], "memory");
    turn(c, &token, "generate", json!({"task_id": "rb", "message": "关掉以后"})).await;
    let convo: Vec<String> = sent(&llm, 1).into_iter().filter(|(r, _)| r != "system").map(|(_, c)| c).collect();
    assert_eq!(convo, ["开关前", "收到：开关前", "关掉以后"]);
    put(None).await;
    assert_eq!(c.readyz().await.1["features"]["chat_session"]["backend"], "redis");
    // Back on: Redis lacks the round made in memory, which is newer: the
    // read merges it and carries it back.
    let (_, s) = session(c, &token, "generate", "rb").await;
    assert_eq!(s["messages"].as_array().unwrap().len(), 4);
    turn(c, &token, "generate", json!({"task_id": "rb", "message": "又开了"})).await;
    assert_eq!(sent(&llm, 2).iter().filter(|(r, _)| r != "system").count(), 5);
    let user = c.json(&token, "/auth/me").await["id"].as_str().unwrap().to_owned();
    let raw: String = redis::cmd("GET")
        .arg(format!("langextract:test:chat:generate:{user}:rb"))
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    assert_eq!(serde_json::from_str::<Value>(&raw).unwrap()["messages"].as_array().unwrap().len(), 6);
}

/// A Redis outage mid-conversation (REDIS_FALLBACK=memory): the next turns
/// are served from memory, with the history dual write kept; when Redis
/// returns it is used again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_mid_conversation_is_served_from_memory() {
    let mut redis = TestRedis::start().await;
    let llm = FakeLlm::start().await;
    let t = TestApp::spawn(|s| with_llm(s.with_redis(&redis), &llm)).await;
    let c = &t.client;
    let token = c.user("outage-chat").await;
    turn(c, &token, "optimize", json!({"task_id": "o", "text": "停电前"})).await;
    redis.stop();
    let events = turn(c, &token, "optimize", json!({"task_id": "o", "text": "停电中"})).await;
    assert_eq!(last(&events).event, "done");
    let convo = sent(&llm, 1);
    assert!(convo.iter().any(|(_, c)| c.contains("停电前")), "history from memory: {convo:?}");
    let (_, ready) = c.readyz().await;
    assert_eq!(ready["features"]["chat_session"]["degraded"], true);
    redis.restart().await;
    eventually(Duration::from_secs(10), "Redis is used again", || async {
        c.readyz().await.1["features"]["chat_session"]["backend"] == "redis"
    })
    .await;
    let (_, s) = session(c, &token, "optimize", "o").await;
    assert_eq!(s["messages"].as_array().unwrap().len(), 4, "nothing lost across the outage");
    turn(c, &token, "optimize", json!({"task_id": "o", "text": "恢复后"})).await;
    assert_eq!(sent(&llm, 2).iter().filter(|(r, _)| r != "system").count(), 5);
}

/// The chat append script (Redis) and its Rust twin (memory) agree: the
/// same appends, lone messages and seeds give the same stored sessions.
#[test]
fn lua_and_rust_chat_appends_agree() {
    use proptest::prelude::*;
    use reportd::ids::{SessionKind, TaskId, UserId};
    use reportd::state::{Backend, MemoryBackend};
    use reportd::stores::chat::CHAT_APPEND;

    let rt = tokio::runtime::Runtime::new().unwrap();
    let redis = rt.block_on(TestRedis::start());
    let (state, backend) = rt.block_on(async { crate::state::layer(&redis) });
    let memory = MemoryBackend::new(1000);
    let user = UserId::parse("u").unwrap();
    let case = std::cell::Cell::new(0u32);
    let message = prop_oneof![
        "[a-z火星 ]{0,12}".prop_map(|t| json!({"role": "user", "content": t})),
        "[a-z火星 ]{0,12}".prop_map(|t| json!({"role": "assistant", "content": t})),
        "[a-z]{1,5}".prop_map(|t| json!({"role": "assistant", "content": t, "sources": [{"title": t, "url": "https://x", "snippet": "s"}]})),
    ];
    let step = (prop::collection::vec(message, 0..4), 2usize..8, any::<bool>());
    proptest!(ProptestConfig::with_cases(40), |(steps in prop::collection::vec(step, 1..12))| {
        case.set(case.get() + 1);
        let key = state.keys().chat_session(SessionKind::Generate, &user, &TaskId::parse(&format!("c{}", case.get())).unwrap());
        rt.block_on(async {
            let mut now = 1_700_000_000_000i64;
            for (msgs, max, seeded) in &steps {
                now += 1000;
                // A seed newer than the stored value stands for a memory copy
                // made during an outage.
                let seed = if *seeded {
                    json!({"messages": [{"role": "user", "content": "seed"}], "updated_at": now - 1}).to_string()
                } else {
                    String::new()
                };
                let args = vec![Value::Array(msgs.clone()).to_string(), max.to_string(), now.to_string(), seed];
                let r = backend.update(&key, &CHAT_APPEND, &args, Duration::from_secs(60)).await.unwrap();
                let m = memory.update(&key, &CHAT_APPEND, &args, Duration::from_secs(60)).await.unwrap();
                assert_eq!(r.verdict, m.verdict, "{args:?}");
                let parse = |v: &Option<String>| v.as_ref().map(|v| serde_json::from_str::<Value>(v).unwrap());
                assert_eq!(parse(&r.value), parse(&m.value), "{args:?}");
                assert_eq!(parse(&backend.get(&key).await.unwrap()), parse(&memory.get(&key).await.unwrap()));
            }
        });
    });
}

/// SIGTERM with an answer that never ends: the instance ends its open SSE
/// response at once with an `instance_stopping` notice (no id: not an
/// event of the answer), gives the answer its grace period, then stops it
/// with an `instance_stopped` error, and exits by itself.
#[tokio::test]
async fn sigterm_tells_open_streams_to_resume_and_stops_answers_past_the_grace_period() {
    let llm = FakeLlm::start().await;
    let dir = tempfile::TempDir::new().unwrap();
    let settings = with_llm(Settings::new(dir.path()), &llm).set("SHUTDOWN_GRACE_SECONDS", "2");
    let mut p = TestProcess::start(&settings, dir.path(), "stopping").await;
    let token = p.client.user("stopper").await;
    llm.push(Reply::Hang { chunks: vec!["一直写".into()] });
    let r = ask(&p.client, &token, "generate", json!({"task_id": "st", "message": "写"})).await;
    let mut reader = SseReader::new(r);
    let start = reader.next().await.unwrap();
    assert_eq!(start.event, "start");
    let stream_id = start.data["stream_id"].as_str().unwrap().to_owned();
    // A second reader of the same answer, on the same instance.
    let r = p.client.get(&token, &format!("/ai/streams/{stream_id}")).await;
    let mut resumed = SseReader::new(r);
    assert_eq!(resumed.next().await.unwrap().event, "start");
    let started = Instant::now();
    let stopped = tokio::task::spawn_blocking(move || {
        let status = p.terminate(Duration::from_secs(60));
        (status, p)
    });
    for reader in [&mut reader, &mut resumed] {
        let rest = tokio::time::timeout(Duration::from_secs(10), reader.rest()).await.unwrap();
        let last = rest.last().expect("a notice");
        assert_eq!((last.event.as_str(), &last.data["code"]), ("error", &json!("instance_stopping")), "{rest:?}");
        assert_eq!(last.id, None, "the notice is not an event of the answer");
        assert!(rest.iter().all(|e| e.event != "done"), "{rest:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(2), "the responses ended at once, not after the grace period");
    let (status, p) = stopped.await.unwrap();
    assert!(status.is_some_and(|s| s.success()), "exited by itself: {}", p.read_log());
    assert!(p.read_log().contains("answers still running after the shutdown grace period were stopped"));
}

/// A rolling restart mid-answer: SIGTERM on A while it streams; A's
/// response ends with `instance_stopping`; the client resumes on B with
/// `Last-Event-ID` and receives the rest of the answer, which A goes on
/// generating within its grace period (its events reach B through Redis).
/// The whole text arrives once, the ids continue, and the round is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_answer_the_client_resumes_on_the_other_instance() {
    let redis = TestRedis::start().await;
    let llm = FakeLlm::start().await;
    let dir = tempfile::TempDir::new().unwrap();
    let settings = with_llm(Settings::new(dir.path()).with_redis(&redis), &llm).set("SHUTDOWN_GRACE_SECONDS", "30");
    let mut a = TestProcess::start(&settings, dir.path(), "a").await;
    let b = TestProcess::start(&settings, dir.path(), "b").await;
    let token = a.client.user("roller").await;
    let full: String = (0..40).map(|i| format!("段{i:02}")).collect();
    llm.push(Reply::Text { chunks: crate::fakes::split_chars(&full, 3), delay_ms: 60 });
    let r = ask(&a.client, &token, "generate", json!({"task_id": "roll", "message": "写"})).await;
    let mut reader = SseReader::new(r);
    let start = reader.next_within().await;
    let stream_id = start.data["stream_id"].as_str().unwrap().to_owned();
    let mut seen = vec![start, reader.next_within().await];
    assert_eq!(seen[1].event, "delta");
    let stopped = tokio::task::spawn_blocking(move || {
        let status = a.terminate(Duration::from_secs(60));
        (status, a)
    });
    let mut rest = reader.rest().await;
    let notice = rest.pop().expect("the stopping notice");
    assert_eq!(notice.data["code"], "instance_stopping", "{notice:?}");
    assert!(
        rest.iter().all(|e| e.event != "done" && e.event != "error"),
        "A's response ended before the answer: {rest:?}"
    );
    seen.extend(rest);
    let last_id = seen.last().unwrap().id.unwrap();
    let r = b.client.resume(&token, &stream_id, last_id).await;
    assert_eq!(r.status(), 200);
    let resumed = SseReader::new(r).rest().await;
    assert_eq!(resumed.last().map(|e| e.event.as_str()), Some("done"), "{resumed:?}");
    seen.extend(resumed);
    check_stream(&seen);
    assert_eq!(text_of(&seen), full, "the whole answer, once");
    let (status, a) = stopped.await.unwrap();
    assert!(status.is_some_and(|s| s.success()), "{}", a.read_log());
    let session = b.client.json(&token, "/ai/sessions/generate/roll").await;
    assert_eq!(session["messages"][1]["content"], full.as_str(), "A stored the round before exiting");
}

/// A process of its own with web search and no model (the offline
/// provider): it starts (TLS is set up for every HTTP client, not only the
/// model's) and its search turn queries the web.
#[tokio::test]
async fn an_offline_instance_with_web_search_starts_and_searches() {
    let searx = FakeSearx::start().await;
    let dir = tempfile::TempDir::new().unwrap();
    let settings = Settings::new(dir.path()).set("SEARCH_URL", &searx.base_url);
    let p = TestProcess::start(&settings, dir.path(), "offline-web").await;
    let token = p.client.user("offline-web").await;
    let events = turn(&p.client, &token, "search", json!({"task_id": "w", "message": "火星"})).await;
    assert_eq!(events[0].data["provider"], "offline");
    assert!(events.iter().any(|e| e.event == "tool_result" && e.data["name"] == "web_search"));
    assert_eq!(searx.queries(), ["火星"]);
    assert!(p.read_log().contains("OFFLINE provider"), "the start-up log says so");
}

/// The cancel marker alone stops an answer: a cancel whose pub/sub notice
/// the running instance missed is seen at its next write to the stream.
#[tokio::test]
async fn a_cancel_marker_in_the_stream_stops_the_answer() {
    let redis = TestRedis::start().await;
    let llm = FakeLlm::start().await;
    let t = TestApp::spawn(|s| with_llm(s.with_redis(&redis), &llm)).await;
    let c = &t.client;
    let token = c.user("marker").await;
    let user = c.json(&token, "/auth/me").await["id"].as_str().unwrap().to_owned();
    llm.push(Reply::Text { chunks: (0..400).map(|i| format!("{i},")).collect(), delay_ms: 25 });
    let mut reader = SseReader::new(ask(c, &token, "generate", json!({"task_id": "m", "message": "长"})).await);
    let start = reader.next().await.unwrap();
    let stream_id = start.data["stream_id"].as_str().unwrap().to_owned();
    assert_eq!(reader.next().await.unwrap().event, "delta");
    // What the cancel endpoint writes, without its pub/sub notice.
    let key = format!("langextract:test:stream:generate:{user}:{stream_id}");
    let _: String = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("ctl")
        .arg("cancel")
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(30), reader.rest()).await.unwrap();
    assert_eq!(last(&rest).data["finish_reason"], "cancelled", "{rest:?}");
    assert!(text_of(&rest).len() < (0..400).map(|i| format!("{i},")).collect::<String>().len());
    eventually(Duration::from_secs(10), "the upstream call is dropped", || async { llm.dropped_streams() == 1 }).await;
}
