//! One turn of an assistant, run in a task of its own.
//!
//! The events it emits, in order: `start`; `delta`s (and, for search,
//! `tool_call` / `tool_result` pairs); then exactly one of `done` or
//! `error`, always last, whatever happens (an upstream failure, a timeout,
//! a cancel, a panic).
//!
//! Deltas are merged: a `delta` event goes out at once when none went out in
//! the last `AI_DELTA_INTERVAL_MS`, else when that interval has passed, so
//! the first token is not delayed and a stream costs at most ~20 events (and
//! Redis writes) a second, however fast the model.
//!
//! What is stored in the session when the answer ends:
//!
//! | end | stored |
//! | --- | --- |
//! | `done` (`stop`, `length`, …) | the user's message and the answer (with its sources) |
//! | `done` with `cancelled` | the user's message and the partial answer, marked `"finish_reason":"cancelled"`, when any text was streamed; nothing otherwise |
//! | `error` (upstream error, timeout, lost connection) | nothing: the turn did not happen, and the session is as it was, ready for a retry |
//!
//! The round is stored and the lease released *before* the last event is
//! sent, so a client that starts the next turn on `done` finds both.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::{Assistants, Input, Provider, offline, tools};
use crate::ids::{StreamId, TaskId, UserId};
use crate::llm::{ChatRequest, Chunk, LlmClient, LlmError, Message, ToolCall, Usage};
use crate::stores::chat::{ChatMessage, Source};
use crate::stores::streams::{Event, LiveStream};

/// Chunks of the user's documents a `generate` turn grounds its draft in.
const GROUNDING_CHUNKS: usize = 6;
/// Characters of one chunk given to the model.
const GROUNDING_CHUNK_CHARS: usize = 1500;
/// Tool calls of one round that are run (more are answered with an error).
const MAX_CALLS_PER_ROUND: usize = 5;

pub(super) struct Turn {
    pub app: Arc<Assistants>,
    pub user: UserId,
    pub task: TaskId,
    pub stream_id: StreamId,
    pub input: Input,
    pub history: Vec<ChatMessage>,
    pub live: Arc<LiveStream>,
}

/// How an answer ended.
enum Outcome {
    Done { finish_reason: String, usage: Option<Usage> },
    Cancelled,
    Failed { code: String, detail: String },
}

impl From<LlmError> for Outcome {
    fn from(e: LlmError) -> Self {
        Self::Failed { code: e.code.as_str().to_owned(), detail: e.detail }
    }
}

/// Emits a turn's events: numbers them, merges deltas, records them.
struct Emitter {
    app: Arc<Assistants>,
    live: Arc<LiveStream>,
    seq: u64,
    pending: String,
    last_delta: Option<Instant>,
    /// The whole answer so far (what is stored).
    answer: String,
    answer_chars: usize,
    sources: Vec<Source>,
}

impl Emitter {
    async fn push(&mut self, event: &str, data: String) {
        self.seq += 1;
        let event = Event { seq: self.seq, event: event.to_owned(), data };
        if self.app.streams.record(&self.live, vec![event]).await {
            // A cancel requested on another instance, seen in Redis.
            self.live.cancel.cancel();
        }
    }

    async fn emit(&mut self, event: &str, data: Value) {
        self.flush().await;
        self.push(event, data.to_string()).await;
    }

    /// The `tool_result` event of a tool call: what SPEC §5 shows of each
    /// source (its ids stay on the stored answer).
    async fn tool_result(&mut self, name: &str, results: &[Source]) {
        let shown: Vec<Value> =
            results.iter().map(|s| json!({"title": s.title, "url": s.url, "snippet": s.snippet})).collect();
        self.emit("tool_result", json!({ "name": name, "results": shown })).await;
    }

    /// Adds answer text; false when the answer reached its length limit
    /// (the text beyond it is dropped).
    async fn delta(&mut self, text: &str) -> bool {
        let room = self.app.settings.max_answer_chars.saturating_sub(self.answer_chars);
        let (taken, whole) = match text.char_indices().nth(room) {
            Some((at, _)) => (&text[..at], false),
            None => (text, true),
        };
        self.answer.push_str(taken);
        self.answer_chars += taken.chars().count();
        self.pending.push_str(taken);
        if self.last_delta.is_none_or(|at| at.elapsed() >= self.app.settings.delta_interval) {
            self.flush().await;
        }
        whole
    }

    /// When the merged text waiting must go out.
    fn deadline(&self) -> Option<Instant> {
        (!self.pending.is_empty())
            .then(|| self.last_delta.unwrap_or_else(Instant::now) + self.app.settings.delta_interval)
    }

    async fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let content = std::mem::take(&mut self.pending);
        self.last_delta = Some(Instant::now());
        self.push("delta", json!({ "content": content }).to_string()).await;
    }
}

/// Sleeps until `at`, or forever.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The end of one model call.
struct Finished {
    finish_reason: String,
    tool_calls: Vec<ToolCall>,
    usage: Option<Usage>,
}

impl Turn {
    pub(super) async fn run(self) {
        let kind = self.input.kind();
        let gauge = metrics::gauge!("reportd_ai_active_streams", "kind" => kind.as_str());
        gauge.increment(1.0);
        let lease = self.keep_lease();
        let mut em = Emitter {
            app: self.app.clone(),
            live: self.live.clone(),
            seq: 0,
            pending: String::new(),
            last_delta: None,
            answer: String::new(),
            answer_chars: 0,
            sources: Vec::new(),
        };
        let mut start = json!({
            "stream_id": self.stream_id,
            "task_id": self.task,
            "kind": kind.as_str(),
            "provider": self.app.provider.name(),
        });
        if let Provider::Llm(client) = &self.app.provider {
            start["model"] = json!(client.model());
        }
        em.emit("start", start).await;

        let timeout = self.app.settings.turn_timeout;
        let interrupt = self.app.interrupt.clone();
        let answered = tokio::select! {
            answered = AssertUnwindSafe(tokio::time::timeout(timeout, self.answer(&mut em))).catch_unwind() => Some(answered),
            _ = interrupt.cancelled() => None,
        };
        let outcome = match answered {
            // The instance stops (past its shutdown grace period): the turn
            // did not happen, as for any error; the user asks again.
            None => Outcome::Failed {
                code: "instance_stopped".into(),
                detail: "the instance answering stopped before the answer was finished; ask again".into(),
            },
            Some(answered) => match answered {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => Outcome::Failed {
                    code: "turn_timeout".into(),
                    detail: format!("the answer took longer than {} s", timeout.as_secs()),
                },
                Err(_) => {
                    tracing::error!(stream = %self.stream_id, "an assistant turn panicked");
                    Outcome::Failed { code: "internal_error".into(), detail: "internal server error".into() }
                }
            },
        };
        em.flush().await;

        let last = match outcome {
            Outcome::Done { finish_reason, usage } => {
                let mut answer = ChatMessage::assistant(em.answer.clone());
                answer.sources = em.sources.clone();
                if finish_reason != "stop" {
                    answer.finish_reason = Some(finish_reason.clone());
                }
                match self.store(answer).await {
                    Ok(()) => {
                        let mut done = json!({ "finish_reason": finish_reason });
                        if let Some(usage) = usage {
                            done["usage"] = json!(usage);
                        }
                        if !em.sources.is_empty() {
                            done["sources"] = json!(em.sources);
                        }
                        ("done", done)
                    }
                    Err(e) => ("error", e),
                }
            }
            Outcome::Cancelled => {
                let stored = if em.answer.is_empty() {
                    Ok(())
                } else {
                    let mut partial = ChatMessage::assistant(em.answer.clone());
                    partial.sources = em.sources.clone();
                    partial.finish_reason = Some("cancelled".into());
                    self.store(partial).await
                };
                match stored {
                    Ok(()) => ("done", json!({ "finish_reason": "cancelled" })),
                    Err(e) => ("error", e),
                }
            }
            Outcome::Failed { code, detail } => {
                tracing::info!(stream = %self.stream_id, code = %code, "answer failed");
                ("error", json!({ "detail": detail, "code": code }))
            }
        };
        lease.cancel();
        if let Err(e) = self.app.sessions.release(kind, &self.user, &self.task, self.stream_id.as_str()).await {
            tracing::warn!(error = %e, "session lease not released (it expires by itself)");
        }
        em.emit(last.0, last.1).await;
        self.app.streams.finish(&self.live);
        gauge.decrement(1.0);
    }

    /// Stores the round; an error event's data when that failed.
    async fn store(&self, answer: ChatMessage) -> Result<(), Value> {
        let round = [ChatMessage::user(self.input.user_message()), answer];
        self.app.sessions.append(self.input.kind(), &self.user, &self.task, &round).await.map_err(|e| {
            tracing::error!(error = %e, "chat round not stored");
            json!({ "detail": "the answer could not be saved to the conversation", "code": "session_not_saved" })
        })
    }

    /// Renews the session lease while the turn runs; stops when the
    /// returned token is cancelled.
    fn keep_lease(&self) -> CancellationToken {
        let stop = CancellationToken::new();
        let (app, user, task, owner) =
            (self.app.clone(), self.user.clone(), self.task.clone(), self.stream_id.as_str().to_owned());
        let kind = self.input.kind();
        let every = (app.sessions.settings().lease_ttl / 3).max(Duration::from_millis(100));
        crate::state::spawn_periodic(every, stop.clone(), move || {
            let (app, user, task, owner) = (app.clone(), user.clone(), task.clone(), owner.clone());
            async move {
                match app.sessions.lease(kind, &user, &task, &owner).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(stream = %owner, "session lease lost to another turn"),
                    Err(e) => tracing::warn!(error = %e, "session lease not renewed"),
                }
            }
        });
        stop
    }

    async fn answer(&self, em: &mut Emitter) -> Outcome {
        match &self.app.provider {
            Provider::Offline => self.offline(em).await,
            Provider::Llm(client) => {
                let mut messages = vec![Message::system(self.app.prompts.system(self.input.kind()))];
                if let Input::Generate { message, document_ids } = &self.input {
                    match self.ground(message, document_ids.as_deref()).await {
                        Ok((context, sources)) => {
                            em.sources = sources;
                            if let Some(context) = context {
                                messages.push(Message::system(context));
                            }
                        }
                        Err(detail) => return Outcome::Failed { code: "document_search_failed".into(), detail },
                    }
                }
                for m in &self.history {
                    messages.push(if m.role == "user" {
                        Message::user(m.content.clone())
                    } else {
                        Message::assistant(m.content.clone())
                    });
                }
                messages.push(Message::user(self.input.user_message()));
                if matches!(self.input, Input::Search { .. }) {
                    self.tool_loop(em, client, messages).await
                } else {
                    match self.call(em, client, ChatRequest { messages, tools: Vec::new() }).await {
                        Ok(f) => Outcome::Done { finish_reason: f.finish_reason, usage: f.usage },
                        Err(outcome) => outcome,
                    }
                }
            }
        }
    }

    /// The user's best chunks for a `generate` request, as a numbered
    /// reference list for the model, and as the sources of the answer.
    async fn ground(
        &self,
        message: &str,
        ids: Option<&[crate::ids::DocumentId]>,
    ) -> Result<(Option<String>, Vec<Source>), String> {
        let hits = tools::search_documents(&self.app.db, &self.user, message, ids, GROUNDING_CHUNKS).await?;
        if hits.is_empty() {
            return Ok((Some("参考资料：用户的文档中没有找到与本次请求相关的内容。".into()), Vec::new()));
        }
        let mut context = String::from("参考资料（引用时用方括号标注编号）：\n");
        let mut sources = Vec::new();
        for (i, hit) in hits.iter().enumerate() {
            let source = tools::chunk_source(hit);
            context.push_str(&format!(
                "\n[{}] {}\n{}\n",
                i + 1,
                source.title,
                tools::clip(&hit.content, GROUNDING_CHUNK_CHARS)
            ));
            sources.push(source);
        }
        Ok((Some(context), sources))
    }

    /// One model call, its text streamed as deltas.
    async fn call(&self, em: &mut Emitter, client: &LlmClient, request: ChatRequest) -> Result<Finished, Outcome> {
        let cancel = self.live.cancel.clone();
        let mut stream = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(Outcome::Cancelled),
            started = client.start(&request) => started.map_err(Outcome::from)?,
        };
        // The upstream stream is read by a task of its own, so that waiting
        // for it can be raced against the delta timer and a cancel without
        // ever dropping a half-read chunk; dropping the pump (on any return)
        // drops the stream, which closes the upstream connection.
        // Chunks travel boxed: a channel allocates its slots 32 at a time,
        // and with 10,000 answers running the slot size adds up.
        let (tx, mut rx) = mpsc::channel::<Result<Box<Chunk>, LlmError>>(64);
        let _pump = AbortOnDropHandle::new(tokio::spawn(async move {
            loop {
                let next = stream.next().await;
                let last = !matches!(next, Ok(Some(Chunk::Delta(_))));
                match next {
                    Ok(Some(chunk)) => {
                        if tx.send(Ok(Box::new(chunk))).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
                if last {
                    return;
                }
            }
        }));
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(Outcome::Cancelled),
                _ = until(em.deadline()) => em.flush().await,
                next = rx.recv() => match next.map(|r| r.map(|chunk| *chunk)) {
                    Some(Ok(Chunk::Delta(text))) => {
                        if !em.delta(&text).await {
                            return Err(Outcome::Done { finish_reason: "length".into(), usage: None });
                        }
                    }
                    Some(Ok(Chunk::Finished { finish_reason, tool_calls, usage })) => {
                        return Ok(Finished { finish_reason, tool_calls, usage });
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => {
                        return Err(Outcome::Failed {
                            code: "llm_incomplete".into(),
                            detail: "the model's answer broke off".into(),
                        });
                    }
                },
            }
        }
    }

    /// The search assistant: model calls with tools, at most
    /// `AI_MAX_TOOL_ROUNDS` rounds of tool calls, then an answer without tools.
    async fn tool_loop(&self, em: &mut Emitter, client: &LlmClient, mut messages: Vec<Message>) -> Outcome {
        let specs = tools::specs(self.app.web.is_some());
        let mut usage_total: Option<Usage> = None;
        let mut round = 0;
        loop {
            let offer = round < self.app.settings.max_tool_rounds;
            let request =
                ChatRequest { messages: messages.clone(), tools: if offer { specs.clone() } else { Vec::new() } };
            let finished = match self.call(em, client, request).await {
                Ok(f) => f,
                Err(outcome) => return outcome,
            };
            usage_total = add_usage(usage_total, finished.usage.clone());
            if finished.tool_calls.is_empty() || !offer {
                return Outcome::Done { finish_reason: finished.finish_reason, usage: usage_total };
            }
            round += 1;
            let mut assistant = Message::assistant(String::new());
            assistant.content = None;
            assistant.tool_calls = finished.tool_calls.clone();
            messages.push(assistant);
            for (i, call) in finished.tool_calls.iter().enumerate() {
                let (arguments, query) = tools::parse_arguments(&call.arguments);
                em.emit("tool_call", json!({ "name": call.name, "arguments": arguments })).await;
                let result = if i >= MAX_CALLS_PER_ROUND {
                    Err(format!("at most {MAX_CALLS_PER_ROUND} tool calls are run per round"))
                } else {
                    tokio::select! {
                        biased;
                        _ = self.live.cancel.cancelled() => return Outcome::Cancelled,
                        r = self.run_tool(&call.name, query.as_deref()) => r,
                    }
                };
                let (results, content) = match result {
                    Ok(results) => {
                        let content = serde_json::to_string(&results).expect("sources serialise");
                        (results, content)
                    }
                    Err(error) => (Vec::new(), json!({ "error": error }).to_string()),
                };
                em.tool_result(&call.name, &results).await;
                for s in results {
                    if !em.sources.iter().any(|k| k.url == s.url) {
                        em.sources.push(s);
                    }
                }
                messages.push(Message::tool(call.id.clone(), content));
            }
        }
    }

    /// Runs one tool call.
    async fn run_tool(&self, name: &str, query: Option<&str>) -> Result<Vec<Source>, String> {
        metrics::counter!("reportd_ai_tool_calls_total", "tool" => tool_label(name)).increment(1);
        let query = query.ok_or_else(|| "the arguments must be a JSON object with a non-empty \"query\"".to_owned())?;
        match name {
            tools::SEARCH_DOCUMENTS => {
                let hits = tools::search_documents(&self.app.db, &self.user, query, None, tools::MAX_RESULTS).await?;
                Ok(hits.iter().map(tools::chunk_source).collect())
            }
            tools::WEB_SEARCH => match &self.app.web {
                Some(web) => web.search(query).await,
                None => Err("web_search is not available".into()),
            },
            _ => Err(format!("unknown tool {:?}", tools::clip(name, 64))),
        }
    }

    /// The offline provider (see [`offline`]).
    async fn offline(&self, em: &mut Emitter) -> Outcome {
        let pieces = match &self.input {
            Input::Generate { message, document_ids } => {
                let hits = match tools::search_documents(
                    &self.app.db,
                    &self.user,
                    message,
                    document_ids.as_deref(),
                    GROUNDING_CHUNKS,
                )
                .await
                {
                    Ok(hits) => hits,
                    Err(detail) => return Outcome::Failed { code: "document_search_failed".into(), detail },
                };
                em.sources = hits.iter().map(tools::chunk_source).collect();
                offline::draft(message, &hits, &em.sources)
            }
            Input::Optimize { text, .. } => offline::tidy_pieces(text),
            Input::Search { message } => {
                let query = tools::clip(message, tools::MAX_QUERY_CHARS);
                let mut names = vec![tools::SEARCH_DOCUMENTS];
                if self.app.web.is_some() {
                    names.push(tools::WEB_SEARCH);
                }
                for name in names {
                    em.emit("tool_call", json!({ "name": name, "arguments": { "query": query } })).await;
                    let results = self.run_tool(name, Some(&query)).await.unwrap_or_default();
                    em.tool_result(name, &results).await;
                    em.sources.extend(results);
                }
                offline::digest(message, &em.sources)
            }
        };
        for piece in pieces {
            if self.live.cancel.is_cancelled() {
                return Outcome::Cancelled;
            }
            if !em.delta(&piece).await {
                return Outcome::Done { finish_reason: "length".into(), usage: None };
            }
        }
        Outcome::Done { finish_reason: "stop".into(), usage: None }
    }
}

/// A bounded label for the tool metric (the model may name any tool).
fn tool_label(name: &str) -> &'static str {
    match name {
        tools::SEARCH_DOCUMENTS => tools::SEARCH_DOCUMENTS,
        tools::WEB_SEARCH => tools::WEB_SEARCH,
        _ => "unknown",
    }
}

fn add_usage(total: Option<Usage>, more: Option<Usage>) -> Option<Usage> {
    let Some(more) = more else { return total };
    let Some(total) = total else { return Some(more) };
    let add = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    };
    Some(Usage {
        prompt_tokens: add(total.prompt_tokens, more.prompt_tokens),
        completion_tokens: add(total.completion_tokens, more.completion_tokens),
        total_tokens: add(total.total_tokens, more.total_tokens),
    })
}
