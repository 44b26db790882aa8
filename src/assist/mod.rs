//! The three AI assistants: writing (`generate`), polishing (`optimize`)
//! and web search (`search`), each a multi-turn conversation per report task.
//!
//! A turn goes like this ([`Assistants::start`]):
//!
//! 1. The session's lease is taken ([`ChatSessionStore::lease`]): one turn
//!    at a time per session; a second one answers 409. The lease is renewed
//!    while the turn runs, so the lock of a crashed instance expires.
//! 2. The history is read, the answer is registered in the
//!    [`StreamLog`] (this instance runs at most `AI_MAX_STREAMS`), and the
//!    turn runs in a task of its own ([`turn`]), independent of the client
//!    connection: a client that goes away can resume with `Last-Event-ID`
//!    on any instance, and a cancel stops it wherever it runs.
//! 3. The answer comes from the configured model ([`crate::llm`]) or, without
//!    `LLM_BASE_URL`, from the built-in [`offline`] provider, which drafts
//!    from the user's own documents and says so.
//! 4. When the answer ends, the round is stored (the rule for failed and
//!    cancelled answers is in [`turn`]), the lease released, and the last
//!    event (`done` or `error`) sent.

pub mod offline;
pub mod prompts;
pub mod tools;
mod turn;

use std::sync::Arc;
use std::time::Duration;

use crate::db::Database;
use crate::error::ApiError;
use crate::ids::{DocumentId, SessionKind, StreamId, TaskId, UserId};
use crate::llm::LlmClient;
use crate::stores::chat::ChatSessionStore;
use crate::stores::streams::{EventSource, StreamLog};

pub use prompts::Prompts;
pub use tools::WebSearch;

/// Limits of a turn.
#[derive(Debug, Clone, Copy)]
pub struct AssistSettings {
    /// Tool rounds of a search turn before the model must answer.
    pub max_tool_rounds: u32,
    /// Characters of one answer before it is cut.
    pub max_answer_chars: usize,
    /// Shortest interval between two `delta` events.
    pub delta_interval: Duration,
    /// Longest a whole turn may take.
    pub turn_timeout: Duration,
}

/// Where answers come from.
pub enum Provider {
    /// An OpenAI-compatible chat-completions endpoint.
    Llm(LlmClient),
    /// The built-in extractive drafts (no model configured).
    Offline,
}

impl Provider {
    /// The `provider` of the `start` event.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Llm(_) => "openai_compatible",
            Self::Offline => "offline",
        }
    }
}

/// What the user asked, validated by the HTTP layer.
#[derive(Debug, Clone)]
pub enum Input {
    Generate { message: String, document_ids: Option<Vec<DocumentId>> },
    Optimize { text: String, instruction: Option<String> },
    Search { message: String },
}

impl Input {
    pub fn kind(&self) -> SessionKind {
        match self {
            Self::Generate { .. } => SessionKind::Generate,
            Self::Optimize { .. } => SessionKind::Optimize,
            Self::Search { .. } => SessionKind::Search,
        }
    }

    /// The user's message as the conversation keeps it.
    pub fn user_message(&self) -> String {
        match self {
            Self::Generate { message, .. } | Self::Search { message } => message.clone(),
            Self::Optimize { text, instruction } => {
                let instruction = instruction.as_deref().unwrap_or(prompts::DEFAULT_OPTIMIZE_INSTRUCTION);
                format!("修改要求：{instruction}\n\n原文：\n{text}")
            }
        }
    }
}

pub struct Assistants {
    pub db: Database,
    pub sessions: ChatSessionStore,
    pub streams: Arc<StreamLog>,
    pub provider: Provider,
    pub prompts: Prompts,
    pub web: Option<WebSearch>,
    pub settings: AssistSettings,
    /// The turns running on this instance (waited for on shutdown).
    pub turns: tokio_util::task::TaskTracker,
    /// Fired past the shutdown grace period: the turns still running end
    /// with an `instance_stopped` error.
    pub interrupt: tokio_util::sync::CancellationToken,
}

impl Assistants {
    /// Starts a turn of `user` on `task` and returns the answer's stream id
    /// with its events (from the first). Errors are what must be answered
    /// before streaming: 409 when the session is busy, 503 when this
    /// instance runs too many answers or the session store refuses.
    pub async fn start(
        self: &Arc<Self>,
        user: UserId,
        task: TaskId,
        input: Input,
    ) -> Result<(StreamId, EventSource), ApiError> {
        let kind = input.kind();
        let id = new_stream_id(kind);
        if !self.sessions.lease(kind, &user, &task, id.as_str()).await? {
            return Err(ApiError::conflict(
                "session_busy",
                "another answer is running in this conversation; wait for it to finish or cancel it",
            ));
        }
        let release = async |this: &Self| {
            if let Err(e) = this.sessions.release(kind, &user, &task, id.as_str()).await {
                tracing::warn!(error = %e, "session lease not released (it expires by itself)");
            }
        };
        let history = match self.sessions.get(kind, &user, &task).await {
            Ok(session) => session.map(|s| s.messages).unwrap_or_default(),
            Err(e) => {
                release(self).await;
                return Err(e.into());
            }
        };
        let live = match self.streams.open(kind, &user, &id) {
            Ok(live) => live,
            Err(full) => {
                release(self).await;
                return Err(ApiError::unavailable("too_many_streams", full.to_string()).with_retry_after(5));
            }
        };
        let source = EventSource::from_live(live.clone(), 0);
        let turn = turn::Turn { app: self.clone(), user, task, stream_id: id.clone(), input, history, live };
        self.turns.spawn(turn.run());
        Ok((id, source))
    }

    /// On shutdown: lets the running turns finish within `grace`, then
    /// stops the rest (each ends with an `instance_stopped` error event, so
    /// that a client reading its stream anywhere sees the end at once).
    /// Returns how many had to be stopped.
    pub async fn drain(&self, grace: std::time::Duration) -> usize {
        self.turns.close();
        if tokio::time::timeout(grace, self.turns.wait()).await.is_ok() {
            return 0;
        }
        let stopped = self.turns.len();
        self.interrupt.cancel();
        // Their last events and the release of their leases take a moment.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.turns.wait()).await;
        stopped
    }
}

/// A new stream id: `{kind}-{uuid}`, so that the kind (part of the stream's
/// key) can be told from the id alone.
fn new_stream_id(kind: SessionKind) -> StreamId {
    StreamId::parse(&format!("{}-{}", kind.as_str(), uuid::Uuid::new_v4().simple()))
        .expect("a kind and a uuid make a valid id")
}

/// The kind of a stream id made by [`new_stream_id`]; `None` for any other id.
pub fn stream_kind(id: &StreamId) -> Option<SessionKind> {
    let (kind, rest) = id.as_str().split_once('-')?;
    (rest.len() == 32).then_some(())?;
    SessionKind::parse(kind).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_id_carries_its_kind() {
        for kind in SessionKind::ALL {
            let id = new_stream_id(kind);
            assert_eq!(stream_kind(&id), Some(kind));
            assert!(id.as_str().len() <= 64);
        }
        for other in ["x", "generate", "generate-123", "chat-0123456789abcdef0123456789abcdef"] {
            assert_eq!(stream_kind(&StreamId::parse(other).unwrap()), None, "{other}");
        }
    }

    #[test]
    fn an_optimize_turn_keeps_its_instruction_and_text() {
        let input = Input::Optimize { text: "原文".into(), instruction: Some("更正式".into()) };
        assert_eq!(input.user_message(), "修改要求：更正式\n\n原文：\n原文");
        assert_eq!(input.kind(), SessionKind::Optimize);
    }
}
