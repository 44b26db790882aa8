//! The LLM client ([`reportd::llm`]) against [`FakeLlm`], a real HTTP
//! server speaking the OpenAI streaming protocol. No service, no Redis.
//!
//! Timing assertions are hang guards (a call must return within 10 s) or
//! lower bounds that a loaded machine can only make larger, never tight
//! upper bounds.

use std::future::Future;
use std::time::{Duration, Instant};

use reportd::llm::{ChatRequest, Chunk, LlmClient, LlmError, LlmErrorCode, LlmSettings, LlmStream, Message, ToolSpec};
use serde_json::json;

use crate::fakes::{FakeLlm, Reply, split_chars};
use crate::helpers::eventually;

const KEY: &str = "sk-test-0123456789abcdef";
const HANG_GUARD: Duration = Duration::from_secs(10);

fn settings(base_url: &str) -> LlmSettings {
    LlmSettings {
        base_url: format!("{base_url}/"),
        api_key: Some(KEY.to_string()),
        model: "fake-model".to_string(),
        connect_timeout: Duration::from_secs(2),
        first_token_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        max_retries: 2,
        retry_base_delay: Duration::from_millis(10),
        max_tokens: Some(256),
        temperature: Some(0.3),
        max_response_bytes: 1 << 20,
    }
}

fn client(settings: LlmSettings) -> LlmClient {
    LlmClient::new(settings).expect("client")
}

fn ask(text: &str) -> ChatRequest {
    ChatRequest { messages: vec![Message::system("你是写作助手。"), Message::user(text)], tools: vec![] }
}

/// Fails the test if `fut` does not finish within the hang guard.
async fn guarded<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG_GUARD, fut).await.expect("the call hung past the guard")
}

/// What a stream produced: its deltas, then either its final chunk or the
/// error that ended it.
struct Outcome {
    deltas: Vec<String>,
    end: Result<Chunk, LlmError>,
}

async fn drain(mut stream: LlmStream) -> Outcome {
    let mut deltas = Vec::new();
    loop {
        match guarded(stream.next()).await {
            Ok(Some(Chunk::Delta(d))) => {
                assert!(!d.is_empty(), "a delta is never empty");
                deltas.push(d);
            }
            Ok(Some(finished @ Chunk::Finished { .. })) => {
                assert_eq!(guarded(stream.next()).await.unwrap(), None, "nothing after Finished");
                return Outcome { deltas, end: Ok(finished) };
            }
            Ok(None) => panic!("the stream ended without Finished"),
            Err(e) => {
                assert_eq!(guarded(stream.next()).await.unwrap(), None, "nothing after an error");
                return Outcome { deltas, end: Err(e) };
            }
        }
    }
}

async fn run(client: &LlmClient, request: &ChatRequest) -> Outcome {
    drain(guarded(client.start(request)).await.expect("start")).await
}

fn finished(outcome: &Outcome) -> (&str, &[reportd::llm::ToolCall], Option<&reportd::llm::Usage>) {
    match &outcome.end {
        Ok(Chunk::Finished { finish_reason, tool_calls, usage }) => (finish_reason, tool_calls, usage.as_ref()),
        other => panic!("expected Finished, got {other:?}"),
    }
}

fn error_code(outcome: &Outcome) -> LlmErrorCode {
    match &outcome.end {
        Err(e) => e.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn paced_text_arrives_in_order_with_usage() {
    let fake = FakeLlm::start().await;
    let chunks: Vec<String> = ["你好", "，这是", "一段", "分段的", "回答。"].iter().map(|s| s.to_string()).collect();
    fake.push(Reply::Text { chunks: chunks.clone(), delay_ms: 40 });
    let llm = client(settings(&fake.base_url));
    assert_eq!(llm.model(), "fake-model");

    let mut stream = guarded(llm.start(&ask("写一段话"))).await.unwrap();
    let mut deltas = Vec::new();
    let mut first_at = None;
    let end = loop {
        match guarded(stream.next()).await.unwrap().expect("a chunk") {
            Chunk::Delta(d) => {
                first_at.get_or_insert_with(Instant::now);
                deltas.push(d);
            }
            f @ Chunk::Finished { .. } => break f,
        }
    };
    // Four 40 ms gaps lie between the first and the last delta: a client
    // that buffered the body would see them all at once.
    assert!(first_at.unwrap().elapsed() >= Duration::from_millis(120), "deltas were not streamed");
    assert_eq!(deltas, chunks);
    let Chunk::Finished { finish_reason, tool_calls, usage } = end else { unreachable!() };
    assert_eq!(finish_reason, "stop");
    assert!(tool_calls.is_empty());
    let usage = usage.expect("usage reported");
    assert_eq!(usage.completion_tokens, Some(5));
    assert!(usage.prompt_tokens.unwrap() > 0);
    assert_eq!(usage.total_tokens, Some(usage.prompt_tokens.unwrap() + 5));
    assert_eq!(guarded(stream.next()).await.unwrap(), None);

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let body = &requests[0];
    assert_eq!(body["model"], "fake-model");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(body["max_tokens"], 256);
    assert_eq!(
        body["messages"],
        json!([{"role": "system", "content": "你是写作助手。"}, {"role": "user", "content": "写一段话"}])
    );
    assert!(body.get("tools").is_none() && body.get("tool_choice").is_none());
    assert_eq!(fake.auth_headers(), vec![Some(format!("Bearer {KEY}"))]);
}

#[tokio::test]
async fn default_reply_echoes_the_last_user_message() {
    let fake = FakeLlm::start().await;
    let llm = client(LlmSettings { api_key: None, ..settings(&fake.base_url) });
    let request = ChatRequest {
        messages: vec![Message::user("第一个问题"), Message::assistant("答"), Message::user("第二个问题 with English")],
        tools: vec![],
    };
    let outcome = run(&llm, &request).await;
    assert_eq!(outcome.deltas.concat(), "收到：第二个问题 with English");
    assert_eq!(outcome.deltas, split_chars("收到：第二个问题 with English", 4));
    assert_eq!(finished(&outcome).0, "stop");
    assert!(finished(&outcome).2.is_some());
    assert_eq!(fake.auth_headers(), vec![None], "no key, no Authorization header");
}

#[tokio::test]
async fn tool_calls_split_and_interleaved_are_reassembled() {
    let fake = FakeLlm::start().await;
    let search_args = json!({"query": "2024 年 北京 GDP \"增速\"", "limit": 5});
    let fetch_args = json!({"url": "https://example.org/a?b=c", "lang": "zh"});
    fake.push(Reply::ToolCalls {
        calls: vec![("web_search".into(), search_args.clone()), ("fetch_page".into(), fetch_args.clone())],
        split: 7,
    });
    let llm = client(settings(&fake.base_url));
    let request = ChatRequest {
        messages: vec![Message::user("查一下")],
        tools: vec![ToolSpec {
            name: "web_search".into(),
            description: "Search the web".into(),
            parameters: json!({"type": "object", "properties": {"query": {"type": "string"}}}),
        }],
    };
    let outcome = run(&llm, &request).await;
    assert!(outcome.deltas.is_empty(), "{:?}", outcome.deltas);
    let (reason, calls, _) = finished(&outcome);
    assert_eq!(reason, "tool_calls");
    assert_eq!(calls.len(), 2);
    assert_eq!((calls[0].id.as_str(), calls[0].name.as_str()), ("call_0", "web_search"));
    assert_eq!((calls[1].id.as_str(), calls[1].name.as_str()), ("call_1", "fetch_page"));
    // Exactly the text that was sent, piece by piece.
    assert_eq!(calls[0].arguments, search_args.to_string());
    assert_eq!(calls[1].arguments, fetch_args.to_string());

    let body = &fake.requests()[0];
    assert_eq!(body["tool_choice"], "auto");
    assert_eq!(body["tools"][0]["type"], "function");
    assert_eq!(body["tools"][0]["function"]["name"], "web_search");
    assert_eq!(body["tools"][0]["function"]["parameters"]["type"], "object");

    // The assistant's tool calls and the tool's answer go back upstream in
    // OpenAI's shape.
    let follow_up = ChatRequest {
        messages: vec![
            Message::user("查一下"),
            Message { tool_calls: calls.to_vec(), content: None, ..Message::assistant("") },
            Message::tool("call_0", "结果"),
        ],
        tools: vec![],
    };
    run(&llm, &follow_up).await;
    let sent = &fake.requests()[1]["messages"];
    assert_eq!(sent[1]["tool_calls"][0]["type"], "function");
    assert_eq!(sent[1]["tool_calls"][0]["function"]["arguments"], search_args.to_string());
    assert!(sent[1].get("content").is_none());
    assert_eq!(sent[2], json!({"role": "tool", "content": "结果", "tool_call_id": "call_0"}));
}

#[tokio::test]
async fn lenient_chunks_are_accepted() {
    let fake = FakeLlm::start().await;
    let pieces = [
        ": keep-alive\n\n",
        r#"data: {"id":"a","choices":[{"index":0,"delta":{"role":"assistant","content":null},"finish_reason":""}],"usage":{}}"#,
        "\n\n",
        r#"data: {"choices":[{"index":0,"delta":{"content":"Hi","reasoning_content":null},"finish_reason":null,"logprobs":null}],"system_fingerprint":"x"}"#,
        "\n\n",
        // One event split across body chunks, without `index`, CRLF line ends.
        "data: {\"choices\":[{\"delta\":{\"content\":\" th",
        "ere\"}}]}\r\n\r\n",
        // No space after the colon, `usage: null`, an empty delta.
        "data:{\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"no-choices\"}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n",
        "data: [DONE]\n\n",
    ];
    fake.push(Reply::Raw { pieces: pieces.iter().map(|s| s.to_string()).collect(), delay_ms: 2 });
    let outcome = run(&client(settings(&fake.base_url)), &ask("hi")).await;
    assert_eq!(outcome.deltas, vec!["Hi", " there"]);
    let (reason, calls, usage) = finished(&outcome);
    assert_eq!(reason, "stop");
    assert!(calls.is_empty());
    let usage = usage.unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens, usage.total_tokens), (Some(5), Some(2), Some(7)));
}

#[tokio::test]
async fn data_that_is_not_json_is_a_bad_response() {
    let fake = FakeLlm::start().await;
    fake.push(Reply::Raw {
        pieces: vec![
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\"}}]}\n\n".into(),
            "data: <html>oops</html>\n\n".into(),
        ],
        delay_ms: 0,
    });
    let outcome = run(&client(settings(&fake.base_url)), &ask("hi")).await;
    assert_eq!(outcome.deltas, vec!["ok"]);
    assert_eq!(error_code(&outcome), LlmErrorCode::BadResponse);
}

#[tokio::test]
async fn upstream_errors_in_the_stream_carry_their_message() {
    let fake = FakeLlm::start().await;
    let long = "x".repeat(5000);
    fake.push(Reply::Raw {
        pieces: vec![format!("event: error\ndata: {{\"error\":{{\"message\":\"model overloaded {long}\"}}}}\n\n")],
        delay_ms: 0,
    });
    fake.push(Reply::Raw {
        pieces: vec![
            "data: {\"error\":{\"message\":\"context length exceeded\",\"type\":\"invalid_request_error\"}}\n\n".into(),
        ],
        delay_ms: 0,
    });
    let llm = client(settings(&fake.base_url));

    let outcome = run(&llm, &ask("a")).await;
    let err = outcome.end.unwrap_err();
    assert_eq!(err.code, LlmErrorCode::Upstream);
    assert!(err.detail.contains("model overloaded"), "{}", err.detail);
    assert!(err.detail.chars().count() < 300, "the upstream text is truncated: {} chars", err.detail.len());

    let outcome = run(&llm, &ask("b")).await;
    let err = outcome.end.unwrap_err();
    assert_eq!(err.code, LlmErrorCode::Upstream);
    assert!(err.detail.contains("context length exceeded"), "{}", err.detail);
    assert_eq!(err.code.as_str(), "llm_upstream_error");
}

#[tokio::test]
async fn a_connection_broken_mid_stream_is_incomplete_and_not_retried() {
    let fake = FakeLlm::start().await;
    fake.push(Reply::FailMidStream { chunks: vec!["一半".into(), "的回答".into()] });
    let outcome = run(&client(settings(&fake.base_url)), &ask("hi")).await;
    assert_eq!(outcome.deltas, vec!["一半", "的回答"]);
    assert_eq!(error_code(&outcome), LlmErrorCode::Incomplete);
    assert_eq!(fake.requests().len(), 1, "no retry once the body was read");
}

#[tokio::test]
async fn a_body_ending_without_finish_reason_or_done_is_incomplete() {
    let fake = FakeLlm::start().await;
    fake.push(Reply::Raw {
        pieces: vec![
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"partial\"},\"finish_reason\":null}]}\n\n".into(),
        ],
        delay_ms: 0,
    });
    let outcome = run(&client(settings(&fake.base_url)), &ask("hi")).await;
    assert_eq!(outcome.deltas, vec!["partial"]);
    assert_eq!(error_code(&outcome), LlmErrorCode::Incomplete);
}

#[tokio::test]
async fn a_body_ending_after_finish_reason_without_done_is_finished() {
    let fake = FakeLlm::start().await;
    fake.push(Reply::Raw {
        pieces: vec![
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"done\"},\"finish_reason\":null}]}\n\n".into(),
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n".into(),
            // Usage after the finish reason, then the body just ends.
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n".into(),
        ],
        delay_ms: 5,
    });
    let outcome = run(&client(settings(&fake.base_url)), &ask("hi")).await;
    assert_eq!(outcome.deltas, vec!["done"]);
    let (reason, _, usage) = finished(&outcome);
    assert_eq!(reason, "length");
    assert_eq!(usage.unwrap().prompt_tokens, Some(3));
    assert_eq!(usage.unwrap().total_tokens, None);
}

#[tokio::test]
async fn a_hang_before_the_first_token_times_out() {
    let fake = FakeLlm::start().await;
    fake.push(Reply::Hang { chunks: vec![] });
    let llm = client(LlmSettings { first_token_timeout: Duration::from_millis(300), ..settings(&fake.base_url) });
    let started = Instant::now();
    let outcome = run(&llm, &ask("hi")).await;
    assert!(outcome.deltas.is_empty());
    assert_eq!(error_code(&outcome), LlmErrorCode::Timeout);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(fake.requests().len(), 1, "a timeout is not retried");
}

#[tokio::test]
async fn a_server_that_never_sends_headers_times_out() {
    // Accepts connections and never answers: the worst case for a client.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            sockets.push(socket);
        }
    });
    let llm = client(LlmSettings {
        first_token_timeout: Duration::from_millis(300),
        ..settings(&format!("http://{addr}/v1"))
    });
    let err = guarded(llm.start(&ask("hi"))).await.unwrap_err();
    assert_eq!(err.code, LlmErrorCode::Timeout);
    assert_eq!(err.code.as_str(), "llm_timeout");
    held.abort();
}

#[tokio::test]
async fn a_hang_after_some_chunks_is_an_idle_timeout() {
    let fake = FakeLlm::start().await;
    fake.push(Reply::Hang { chunks: vec!["开始".into(), "写".into()] });
    let llm = client(LlmSettings { idle_timeout: Duration::from_millis(300), ..settings(&fake.base_url) });
    let outcome = run(&llm, &ask("hi")).await;
    assert_eq!(outcome.deltas, vec!["开始", "写"]);
    assert_eq!(error_code(&outcome), LlmErrorCode::IdleTimeout);
    assert_eq!(LlmErrorCode::IdleTimeout.as_str(), "llm_idle_timeout");
}

#[tokio::test]
async fn keep_alive_comments_reset_the_idle_timer() {
    let fake = FakeLlm::start().await;
    let mut pieces = vec!["data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"think\"}}]}\n\n".to_string()];
    // 1.5 s of comments only, 150 ms apart, against a 1 s idle timeout.
    pieces.extend(std::iter::repeat_n(": keep-alive\n\n".to_string(), 10));
    pieces.push(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ing\"},\"finish_reason\":\"stop\"}]}\n\n".into(),
    );
    pieces.push("data: [DONE]\n\n".into());
    fake.push(Reply::Raw { pieces, delay_ms: 150 });
    let llm = client(LlmSettings { idle_timeout: Duration::from_secs(1), ..settings(&fake.base_url) });
    let outcome = run(&llm, &ask("hi")).await;
    assert_eq!(outcome.deltas, vec!["think", "ing"]);
    assert_eq!(finished(&outcome).0, "stop");
}

#[tokio::test]
async fn rate_limited_twice_then_success() {
    let fake = FakeLlm::start().await;
    fake.push(Reply::Status { code: 429, body: r#"{"error":{"message":"slow down"}}"#.into(), retry_after: None });
    fake.push(Reply::Status { code: 429, body: "slow down".into(), retry_after: Some(0) });
    fake.push(Reply::text("好的"));
    let outcome = run(&client(settings(&fake.base_url)), &ask("hi")).await;
    assert_eq!(outcome.deltas.concat(), "好的");
    assert_eq!(finished(&outcome).0, "stop");
    assert_eq!(fake.requests().len(), 3);
    // Every attempt sends the same request, with the key.
    assert_eq!(fake.requests()[0], fake.requests()[2]);
    assert!(fake.auth_headers().iter().all(|h| h.as_deref() == Some(&format!("Bearer {KEY}") as &str)));
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let fake = FakeLlm::start().await;
    fake.push(Reply::Status { code: 429, body: String::new(), retry_after: Some(1) });
    fake.push(Reply::text("ok"));
    let started = Instant::now();
    let outcome = run(&client(settings(&fake.base_url)), &ask("hi")).await;
    assert_eq!(outcome.deltas.concat(), "ok");
    assert!(started.elapsed() >= Duration::from_millis(900), "Retry-After: 1 was not waited for");
}

#[tokio::test]
async fn rate_limited_always_gives_up_after_max_retries() {
    let fake = FakeLlm::start().await;
    for _ in 0..5 {
        fake.push(Reply::Status { code: 429, body: "too many requests".into(), retry_after: None });
    }
    let llm = client(LlmSettings { max_retries: 3, ..settings(&fake.base_url) });
    let err = guarded(llm.start(&ask("hi"))).await.unwrap_err();
    assert_eq!(err.code, LlmErrorCode::RateLimited);
    assert_eq!(err.code.as_str(), "llm_rate_limited");
    assert!(err.detail.contains("429"), "{}", err.detail);
    assert_eq!(fake.requests().len(), 4, "max_retries + 1 requests");
}

#[tokio::test]
async fn server_errors_are_retried() {
    let fake = FakeLlm::start().await;
    fake.push(Reply::status(500, "internal error"));
    fake.push(Reply::status(503, "overloaded"));
    fake.push(Reply::text("third time lucky"));
    let outcome = run(&client(settings(&fake.base_url)), &ask("hi")).await;
    assert_eq!(outcome.deltas.concat(), "third time lucky");
    assert_eq!(fake.requests().len(), 3);

    let fake = FakeLlm::start().await;
    for _ in 0..3 {
        fake.push(Reply::status(502, "bad gateway"));
    }
    let llm = client(LlmSettings { max_retries: 1, ..settings(&fake.base_url) });
    let err = guarded(llm.start(&ask("hi"))).await.unwrap_err();
    assert_eq!(err.code, LlmErrorCode::Upstream);
    assert!(err.detail.contains("502") && err.detail.contains("bad gateway"), "{}", err.detail);
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn client_errors_are_not_retried_and_never_leak_the_key() {
    let fake = FakeLlm::start().await;
    // An upstream that echoes the Authorization header it received.
    fake.push(Reply::Status {
        code: 401,
        body: r#"{"error":{"message":"Incorrect API key provided: {auth}","type":"invalid_request_error"}}"#.into(),
        retry_after: None,
    });
    fake.push(Reply::status(400, "bad request: {auth}"));
    fake.push(Reply::status(404, "no such model"));
    let llm = client(settings(&fake.base_url));
    for (status, n) in [("401", 1), ("400", 2), ("404", 3)] {
        let err = guarded(llm.start(&ask("hi"))).await.unwrap_err();
        assert_eq!(err.code, LlmErrorCode::Upstream);
        assert!(err.detail.contains(status), "{}", err.detail);
        for text in [err.detail.clone(), err.to_string(), format!("{err:?}")] {
            assert!(!text.contains(KEY), "the key leaked: {text}");
            assert!(!text.contains(&KEY[..12]), "part of the key leaked: {text}");
        }
        assert_eq!(fake.requests().len(), n, "no retry on {status}");
    }
    assert!(fake.auth_headers()[0].as_deref().unwrap().contains(KEY), "the fake did receive the key");
    assert!(!format!("{:?}", settings(&fake.base_url)).contains(KEY));
    assert!(!format!("{llm:?}").contains(KEY));
}

#[tokio::test]
async fn an_unreachable_server_is_reported_after_retries() {
    let port = crate::helpers::free_port();
    let llm = client(settings(&format!("http://127.0.0.1:{port}/v1")));
    let err = guarded(llm.start(&ask("hi"))).await.unwrap_err();
    assert_eq!(err.code, LlmErrorCode::Unreachable);
    assert_eq!(err.code.as_str(), "llm_unreachable");
    assert!(!err.detail.contains(KEY));
}

#[tokio::test]
async fn dropping_the_stream_closes_the_upstream_body() {
    let fake = FakeLlm::start().await;
    fake.push(Reply::Text { chunks: (0..200).map(|i| format!("片段{i} ")).collect(), delay_ms: 20 });
    let llm = client(settings(&fake.base_url));
    let mut stream = guarded(llm.start(&ask("hi"))).await.unwrap();
    for _ in 0..2 {
        assert!(matches!(guarded(stream.next()).await.unwrap(), Some(Chunk::Delta(_))));
    }
    assert_eq!(fake.open_streams(), 1);
    assert_eq!(fake.dropped_streams(), 0);
    drop(stream);
    eventually(HANG_GUARD, "the fake sees the body dropped", || {
        let dropped = fake.dropped_streams();
        async move { dropped == 1 }
    })
    .await;
    assert_eq!(fake.open_streams(), 0);
}

#[tokio::test]
async fn dropping_a_hanging_stream_closes_the_upstream_body() {
    let fake = FakeLlm::start().await;
    fake.push(Reply::Hang { chunks: vec!["a".into()] });
    let llm = client(settings(&fake.base_url));
    let mut stream = guarded(llm.start(&ask("hi"))).await.unwrap();
    assert_eq!(guarded(stream.next()).await.unwrap(), Some(Chunk::Delta("a".into())));
    drop(stream);
    eventually(HANG_GUARD, "the fake sees the hanging body dropped", || {
        let dropped = fake.dropped_streams();
        async move { dropped == 1 }
    })
    .await;
    assert_eq!(fake.open_streams(), 0);
}

#[tokio::test]
async fn a_finished_stream_is_not_counted_as_dropped() {
    let fake = FakeLlm::start().await;
    run(&client(settings(&fake.base_url)), &ask("完整")).await;
    eventually(HANG_GUARD, "the body is closed", || {
        let open = fake.open_streams();
        async move { open == 0 }
    })
    .await;
    assert_eq!(fake.dropped_streams(), 0);
}

#[tokio::test]
async fn an_oversized_answer_is_cut_off() {
    let fake = FakeLlm::start().await;
    fake.push(Reply::Text { chunks: vec!["0123456789".to_string(); 200], delay_ms: 0 });
    let llm = client(LlmSettings { max_response_bytes: 4096, ..settings(&fake.base_url) });
    let outcome = run(&llm, &ask("hi")).await;
    assert_eq!(error_code(&outcome), LlmErrorCode::TooLarge);
    assert_eq!(LlmErrorCode::TooLarge.as_str(), "llm_response_too_large");
    assert!(outcome.deltas.concat().len() < 4096);
}

#[tokio::test]
async fn fake_searx_answers_json_and_refuses_other_formats() {
    let searx = crate::fakes::FakeSearx::start().await;
    reportd::llm::install_tls_provider();
    let http = reqwest::Client::new();
    let url = |params: &[(&str, &str)]| {
        reqwest::Url::parse_with_params(&format!("{}/search", searx.base_url), params).unwrap()
    };
    let response = http.get(url(&[("q", "北京 天气"), ("format", "json")])).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["query"], "北京 天气");
    assert_eq!(body["number_of_results"], 3);
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["title"], "结果 1：北京 天气");
    assert_eq!(results[1]["content"], "关于 北京 天气 的第 2 条结果");
    assert!(results[2]["url"].as_str().unwrap().starts_with("https://example.org/3?q="));
    let refused = http.get(url(&[("q", "x")])).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(searx.queries(), vec!["北京 天气".to_string(), "x".to_string()]);
}

#[tokio::test]
async fn a_json_answer_instead_of_a_stream_is_reported() {
    let fake = FakeLlm::start().await;
    // Some servers report errors with 200 and a JSON body, or ignore `stream`.
    fake.push(Reply::Status {
        code: 200,
        body: r#"{"error":{"message":"quota exhausted"}}"#.into(),
        retry_after: None,
    });
    fake.push(Reply::Status {
        code: 200,
        body: r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"whole"}}]}"#.into(),
        retry_after: None,
    });
    let llm = client(settings(&fake.base_url));
    let err = guarded(llm.start(&ask("hi"))).await.unwrap_err();
    assert_eq!(err.code, LlmErrorCode::Upstream);
    assert!(err.detail.contains("quota exhausted"), "{}", err.detail);
    let err = guarded(llm.start(&ask("hi"))).await.unwrap_err();
    assert_eq!(err.code, LlmErrorCode::BadResponse);
    assert_eq!(fake.requests().len(), 2, "neither is retried");
}
