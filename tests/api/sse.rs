//! Reading Server-Sent Events as a client does, for the API and deployment
//! tests: events with their ids, and keep-alive comments counted.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;

/// One SSE event as received.
#[derive(Debug, Clone)]
pub struct Ev {
    pub id: Option<u64>,
    pub event: String,
    pub data: Value,
}

/// Reads an SSE response event by event (and counts keep-alive comments).
pub struct SseReader {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
    pub comments: usize,
}

impl SseReader {
    pub fn new(response: reqwest::Response) -> Self {
        Self { body: Box::pin(response.bytes_stream()), buf: String::new(), comments: 0 }
    }

    /// The next event; `None` when the body ends. Hangs are bounded by the
    /// caller's guard (every test wraps waits in timeouts).
    pub async fn next(&mut self) -> Option<Ev> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, "message".to_owned(), String::new());
                let mut comment = false;
                for line in block.lines() {
                    if let Some(rest) = line.strip_prefix(':') {
                        let _ = rest;
                        comment = true;
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if !data.is_empty() {
                            data.push('\n');
                        }
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if data.is_empty() && comment {
                    self.comments += 1;
                    continue;
                }
                let data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                return Some(Ev { id, event, data });
            }
            let chunk = self.body.next().await?.ok()?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The next event within 30 s (a failure otherwise; used by the
    /// deployment tests).
    #[allow(dead_code)]
    pub async fn next_within(&mut self) -> Ev {
        tokio::time::timeout(Duration::from_secs(30), self.next())
            .await
            .expect("no event within 30 s")
            .expect("the stream ended early")
    }

    /// Every event until the body ends (at most 60 s).
    pub async fn rest(&mut self) -> Vec<Ev> {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline.into(), self.next()).await {
            out.push(ev);
        }
        assert!(Instant::now() < deadline, "the stream did not end within 60 s: {out:?}");
        out
    }
}

pub fn text_of(events: &[Ev]) -> String {
    events.iter().filter(|e| e.event == "delta").map(|e| e.data["content"].as_str().unwrap().to_owned()).collect()
}
