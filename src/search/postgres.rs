//! Search on PostgreSQL: a generated `tsvector` column over
//! `chunks.search_text` with a GIN index, ranked by `ts_rank`.
//!
//! The column is `to_tsvector('simple', search_text)` (migration
//! `0003_search.sql`): `search_text` is already segmented and lower-cased,
//! so the `simple` configuration (no stemming, no stop words) indexes the
//! words as they are, Chinese included. Being a generated column, it is
//! written and deleted with its row.

use super::Row;
use crate::db::Database;
use crate::ids::UserId;

/// `ts_rank` with normalization 1 divides by 1 + log(length), which, like
/// BM25, keeps long chunks from winning by length alone. The user filter is
/// on the chunk row itself, so another user's chunk can never come back.
const SEARCH: &str = "\
SELECT c.id AS chunk_id, c.document_id, d.title AS document_title, c.position, c.heading_path, c.content, \
       ts_rank(c.search_tsv, q.query, 1)::float8 AS score \
FROM chunks c \
JOIN documents d ON d.id = c.document_id \
CROSS JOIN (SELECT to_tsquery('simple', $1) AS query) q \
WHERE c.search_tsv @@ q.query AND c.user_id = $2 \
  AND ($4::text IS NULL OR c.document_id IN (SELECT jsonb_array_elements_text($4::jsonb))) \
ORDER BY score DESC, c.document_id, c.position \
LIMIT $3";

pub(super) async fn search(
    db: &Database,
    user: &UserId,
    terms: &[String],
    document_ids: Option<String>,
    limit: i64,
) -> Result<Vec<Row>, sqlx::Error> {
    let Some(expression) = super::query::pg_tsquery(terms) else { return Ok(Vec::new()) };
    sqlx::query_as(SEARCH)
        .bind(expression)
        .bind(user.as_str())
        .bind(limit)
        .bind(document_ids)
        .fetch_all(db.pool())
        .await
}
