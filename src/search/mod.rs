//! Full-text search over a user's chunks, in Chinese and English.
//!
//! How it fits together:
//!
//! - At import, [`index_text`] segments each chunk (heading path and
//!   content) with jieba into lower-cased words and stores them space-joined
//!   in `chunks.search_text` ([`tokenize`]).
//! - The database indexes that column by itself, so inserting and deleting
//!   chunks needs no search code: SQLite keeps an FTS5 external-content
//!   table (`chunks_fts`, `unicode61` tokenizer) in sync through triggers,
//!   with the chunk's owner as a second indexed column so that the user
//!   filter happens inside the full-text query; PostgreSQL keeps a generated
//!   `tsvector` column with a GIN index (migration `0003_search.sql` of
//!   each).
//! - At query time the query goes through the same segmentation, its words
//!   are quoted and ORed ([`query`]), the database ranks the user's matching
//!   chunks (BM25 in SQLite, `ts_rank` in PostgreSQL), and a highlighted
//!   snippet is cut from each chunk's original text ([`snippet`]).
//!
//! [`SearchIndex`] is the one interface, for the HTTP endpoint and for the
//! AI assistants alike; it picks the implementation from the database kind.

mod postgres;
pub mod query;
pub mod snippet;
mod sqlite;
#[cfg(test)]
mod tests;
pub mod tokenize;

use serde::Serialize;

use crate::db::Database;
use crate::ids::{DocumentId, UserId};

pub use tokenize::{index_text, query_tokens, warm_up};

/// At most this many hits are returned by one search, whatever `limit` says.
pub const MAX_LIMIT: usize = 100;

/// One chunk that matched a search, best first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchHit {
    pub document_id: String,
    /// The title of the chunk's document (for citing it).
    pub document_title: String,
    pub chunk_id: String,
    /// The chunk's position within its document (0-based).
    pub position: i64,
    /// The headings above the chunk, `" > "`-joined; plain text, not HTML.
    pub heading_path: String,
    /// The chunk's whole text (for the assistants to quote or draft from).
    pub content: String,
    /// About [`snippet::SNIPPET_CHARS`] characters of `content` around the
    /// matches, HTML-escaped, with the matches in `<mark>…</mark>`.
    pub snippet: String,
    /// Relevance, higher is better. Only comparable within one search.
    pub score: f64,
}

/// The search implementation of a database kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchIndex {
    /// FTS5 with BM25 ranking.
    Sqlite,
    /// A `tsvector` column with a GIN index, ranked by `ts_rank`.
    Postgres,
}

impl SearchIndex {
    /// The implementation that fits `db`.
    pub fn for_database(db: &Database) -> Self {
        match db.pool().connect_options().database_url.scheme() {
            "postgres" | "postgresql" => Self::Postgres,
            _ => Self::Sqlite,
        }
    }

    /// The chunks of `user` that match `query`, best first, at most `limit`
    /// of them (clamped to 1..=[`MAX_LIMIT`]). With `document_ids`, only
    /// chunks of those documents are searched; an id that is not one of the
    /// user's documents simply matches nothing. A query without any word
    /// (only punctuation, or empty) finds nothing.
    pub async fn search(
        &self,
        db: &Database,
        user: &UserId,
        query: &str,
        document_ids: Option<&[DocumentId]>,
        limit: usize,
    ) -> Result<Vec<SearchHit>, sqlx::Error> {
        if !tokenize::is_warm() {
            // The first search of a process loads jieba's dictionary, which
            // takes a fraction of a second: off the async worker threads. Had
            // that task failed, segmenting below would load it in place.
            let _ = tokio::task::spawn_blocking(warm_up).await;
        }
        let terms = query_tokens(query);
        if terms.is_empty() || document_ids.is_some_and(|ids| ids.is_empty()) {
            return Ok(Vec::new());
        }
        let limit = limit.clamp(1, MAX_LIMIT) as i64;
        // The filter travels as one JSON array parameter, so any number of
        // ids costs one bind and the SQL text stays fixed.
        let filter = document_ids
            .map(|ids| serde_json::to_string(&ids.iter().map(DocumentId::as_str).collect::<Vec<_>>()))
            .transpose()
            .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let rows = match self {
            Self::Sqlite => sqlite::search(db, user, &terms, filter, limit).await?,
            Self::Postgres => postgres::search(db, user, &terms, filter, limit).await?,
        };
        Ok(rows
            .into_iter()
            .map(|row| SearchHit {
                snippet: snippet::snippet(&row.content, &terms),
                document_id: row.document_id,
                document_title: row.document_title,
                chunk_id: row.chunk_id,
                position: row.position,
                heading_path: row.heading_path,
                content: row.content,
                score: row.score,
            })
            .collect())
    }
}

/// Searches `db` with the implementation that fits it (see
/// [`SearchIndex::search`]).
pub async fn search(
    db: &Database,
    user: &UserId,
    query: &str,
    document_ids: Option<&[DocumentId]>,
    limit: usize,
) -> Result<Vec<SearchHit>, sqlx::Error> {
    SearchIndex::for_database(db).search(db, user, query, document_ids, limit).await
}

/// A matching chunk as the database returns it, before its snippet is cut.
#[derive(Debug, sqlx::FromRow)]
struct Row {
    chunk_id: String,
    document_id: String,
    document_title: String,
    position: i64,
    heading_path: String,
    content: String,
    score: f64,
}
