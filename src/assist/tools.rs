//! The tools of the web-search assistant: `web_search`, against a
//! SearXNG-compatible JSON endpoint (`SEARCH_URL`), and `search_documents`,
//! over the user's own chunks. Both answer a short list of
//! [`Source`]s, which the model reads as the tool's result and the client
//! sees in the `tool_result` event.

use std::time::Duration;

use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::db::Database;
use crate::ids::{DocumentId, UserId};
use crate::llm::ToolSpec;
use crate::search::SearchHit;
use crate::stores::chat::Source;

/// Results a tool call returns at most.
pub const MAX_RESULTS: usize = 5;
/// Characters of a result's snippet.
pub const SNIPPET_CHARS: usize = 300;
/// Characters of a query sent to a search.
pub const MAX_QUERY_CHARS: usize = 200;
/// Bytes read from one search response.
const MAX_RESPONSE_BYTES: usize = 2 * 1024 * 1024;

pub const WEB_SEARCH: &str = "web_search";
pub const SEARCH_DOCUMENTS: &str = "search_documents";

/// The tools offered to the model (`web_search` only when configured).
pub fn specs(web: bool) -> Vec<ToolSpec> {
    let query = |what: &str| {
        json!({
            "type": "object",
            "properties": {"query": {"type": "string", "description": what}},
            "required": ["query"]
        })
    };
    let mut tools = vec![ToolSpec {
        name: SEARCH_DOCUMENTS.into(),
        description: "在用户自己导入的文档中检索相关段落（中文或英文关键词）。".into(),
        parameters: query("检索词，简短具体"),
    }];
    if web {
        tools.push(ToolSpec {
            name: WEB_SEARCH.into(),
            description: "在互联网上检索公开信息，返回网页标题、链接和摘要。".into(),
            parameters: query("检索词，简短具体"),
        });
    }
    tools
}

/// `text` cut to at most `max` characters, on a character boundary, with
/// whitespace runs collapsed.
pub fn clip(text: &str, max: usize) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match collapsed.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &collapsed[..at]),
        None => collapsed,
    }
}

/// A chunk of the user's documents as a source: where it is, and its text.
pub fn chunk_source(hit: &SearchHit) -> Source {
    let title = if hit.heading_path.is_empty() {
        hit.document_title.clone()
    } else {
        format!("{} > {}", hit.document_title, hit.heading_path)
    };
    Source {
        title,
        url: format!("/documents/{}#chunk-{}", hit.document_id, hit.chunk_id),
        snippet: clip(&hit.content, SNIPPET_CHARS),
        document_id: Some(hit.document_id.clone()),
        chunk_id: Some(hit.chunk_id.clone()),
    }
}

/// The best chunks of `user`'s documents for `query`.
pub async fn search_documents(
    db: &Database,
    user: &UserId,
    query: &str,
    document_ids: Option<&[DocumentId]>,
    limit: usize,
) -> Result<Vec<SearchHit>, String> {
    let query = clip(query, MAX_QUERY_CHARS);
    crate::search::search(db, user, &query, document_ids, limit).await.map_err(|e| {
        tracing::error!(error = %e, "document search failed");
        "document search failed".to_owned()
    })
}

/// A SearXNG-compatible search endpoint.
#[derive(Clone)]
pub struct WebSearch {
    http: reqwest::Client,
    url: String,
}

#[derive(Deserialize)]
struct SearxResponse {
    #[serde(default)]
    results: Vec<SearxResult>,
}

#[derive(Deserialize)]
struct SearxResult {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    content: Option<String>,
}

impl WebSearch {
    pub fn new(base: &str, timeout: Duration) -> anyhow::Result<Self> {
        crate::llm::install_tls_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .timeout(timeout)
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the web search client: {e}"))?;
        Ok(Self { http, url: format!("{}/search", base.trim_end_matches('/')) })
    }

    /// The first [`MAX_RESULTS`] results for `query`.
    pub async fn search(&self, query: &str) -> Result<Vec<Source>, String> {
        let query = clip(query, MAX_QUERY_CHARS);
        let started = std::time::Instant::now();
        let result = self.fetch(&query).await;
        metrics::histogram!("reportd_web_search_duration_seconds").record(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            tracing::warn!(error = %e, "web search failed");
        }
        result
    }

    async fn fetch(&self, query: &str) -> Result<Vec<Source>, String> {
        let url = reqwest::Url::parse_with_params(&self.url, &[("q", query), ("format", "json")])
            .map_err(|_| "SEARCH_URL is not a valid URL".to_owned())?;
        let response = self.http.get(url).send().await.map_err(|e| {
            if e.is_timeout() { "web search timed out".to_owned() } else { "web search unreachable".to_owned() }
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("web search answered HTTP {}", status.as_u16()));
        }
        let mut body = Vec::new();
        let mut chunks = response.bytes_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|_| "web search response broken off".to_owned())?;
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err("web search response too large".into());
            }
            body.extend_from_slice(&chunk);
        }
        let parsed: SearxResponse = serde_json::from_slice(&body)
            .map_err(|_| "web search answered something other than SearXNG JSON".to_owned())?;
        Ok(parsed
            .results
            .into_iter()
            .filter_map(|r| {
                let url = r.url.filter(|u| u.starts_with("http://") || u.starts_with("https://"))?;
                Some(Source {
                    title: clip(r.title.as_deref().unwrap_or(&url), 200),
                    snippet: clip(r.content.as_deref().unwrap_or_default(), SNIPPET_CHARS),
                    url: clip(&url, 2000),
                    document_id: None,
                    chunk_id: None,
                })
            })
            .take(MAX_RESULTS)
            .collect())
    }
}

/// The `arguments` of a tool call as a JSON object (what the `tool_call`
/// event shows), and the query in it. Arguments that are not a JSON object
/// are shown as `{"raw": …}`.
pub fn parse_arguments(raw: &str) -> (Value, Option<String>) {
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(map)) => {
            let query = map.get("query").and_then(Value::as_str).map(str::trim).filter(|q| !q.is_empty());
            let query = query.map(|q| clip(q, MAX_QUERY_CHARS));
            (Value::Object(map), query)
        }
        _ => (json!({ "raw": clip(raw, 500) }), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_read_leniently() {
        let (v, q) = parse_arguments(r#"{"query":"  火星 "}"#);
        assert_eq!(v["query"], "  火星 ");
        assert_eq!(q.as_deref(), Some("火星"));
        let (v, q) = parse_arguments("not json");
        assert_eq!(v["raw"], "not json");
        assert!(q.is_none());
        assert!(parse_arguments(r#"{"q":"x"}"#).1.is_none());
        assert!(parse_arguments(r#"["query"]"#).0.is_object());
    }

    #[test]
    fn clipping_counts_characters() {
        assert_eq!(clip("火星  是\n行星", 3), "火星 …");
        assert_eq!(clip("abc", 3), "abc");
    }

    #[test]
    fn web_search_is_offered_only_when_configured() {
        assert_eq!(specs(false).len(), 1);
        let both: Vec<String> = specs(true).into_iter().map(|t| t.name).collect();
        assert_eq!(both, [SEARCH_DOCUMENTS, WEB_SEARCH]);
    }
}
