//! Search on SQLite: FTS5 over `chunks.search_text`, ranked by BM25.
//!
//! `chunks_fts` is an external-content FTS5 table (migration
//! `0003_search.sql`): it stores only the index, reads the text from
//! `chunks`, and triggers on `chunks` keep it in sync, so deleting a
//! document's chunks removes them from the index in the same transaction.

use super::{Row, query};
use crate::db::Database;
use crate::ids::UserId;

/// The query in two steps. The inner one ranks the matching chunks of the
/// user and keeps the best `limit`; only those are then joined with their
/// row and document, so the large `content` column is read for the results
/// alone, not for every candidate.
///
/// The user filter is part of the full-text query (`$1`, see
/// [`query::fts5_match`]): the index holds an owner token per chunk, so FTS5
/// intersects the query's words with the user's chunks and ranks only
/// those. Filtering afterwards on `chunks.user_id` would rank every user's
/// matches and read each candidate's whole row (several kilobytes) just to
/// compare its owner; with a common word that was slower than the ranking
/// itself. The outer query checks `user_id` again on the rows it returns, so
/// another user's chunk can never come back, whatever the query or
/// `document_ids` say.
///
/// The document filter is a set of rowids from the `chunks_by_user` index,
/// built only when ids are given. The unary `+` keeps SQLite from handing
/// that list to FTS5 as lookup keys, which would run the full-text query
/// once per rowid.
///
/// `bm25()` weighs the owner column 0, so only the words count. It is
/// lower-is-better (negative), so its negation is the score. Ties are broken
/// by rowid so that results are stable.
const SEARCH: &str = "\
SELECT c.id AS chunk_id, c.document_id, d.title AS document_title, c.position, c.heading_path, c.content, \
       -best.raw_bm25 AS score \
FROM ( \
    SELECT rowid AS chunk_rowid, bm25(chunks_fts, 1.0, 0.0) AS raw_bm25 \
    FROM chunks_fts \
    WHERE chunks_fts MATCH $1 \
      AND ($4 IS NULL OR +rowid IN ( \
          SELECT rowid FROM chunks \
          WHERE user_id = $2 AND document_id IN (SELECT value FROM json_each($4)))) \
    ORDER BY raw_bm25, rowid \
    LIMIT $3 \
) AS best \
JOIN chunks c ON c.rowid = best.chunk_rowid \
JOIN documents d ON d.id = c.document_id \
WHERE c.user_id = $2 \
ORDER BY best.raw_bm25, best.chunk_rowid";

pub(super) async fn search(
    db: &Database,
    user: &UserId,
    terms: &[String],
    document_ids: Option<String>,
    limit: i64,
) -> Result<Vec<Row>, sqlx::Error> {
    let Some(expression) = query::fts5_match(user, terms) else { return Ok(Vec::new()) };
    sqlx::query_as(SEARCH)
        .bind(expression)
        .bind(user.as_str())
        .bind(limit)
        .bind(document_ids)
        .fetch_all(db.pool())
        .await
}

#[cfg(test)]
mod tests {
    use super::super::tests::{database, document, user};
    use super::super::{SearchIndex, query};
    use crate::db::Database;
    use crate::ids::UserId;

    async fn fts_rows(db: &Database) -> i64 {
        // The FTS5 "docsize" shadow table has one row per indexed chunk.
        sqlx::query_scalar("SELECT COUNT(*) FROM chunks_fts_docsize").fetch_one(db.pool()).await.unwrap()
    }

    #[tokio::test]
    async fn the_fts_table_follows_inserts_updates_and_deletes() {
        let (db, _dir) = database().await;
        if SearchIndex::for_database(&db) != SearchIndex::Sqlite {
            return;
        }
        let u = user(&db, "u").await;
        let doc = document(&db, &u, "d", &[("", "火星探测"), ("", "月球基地")]).await;
        assert_eq!(fts_rows(&db).await, 2);
        sqlx::query("UPDATE chunks SET search_text = 'venus' WHERE content = '火星探测'")
            .execute(db.pool())
            .await
            .unwrap();
        assert_eq!(fts_rows(&db).await, 2);
        // FTS5's integrity check compares the index with the content table.
        sqlx::query("INSERT INTO chunks_fts (chunks_fts) VALUES ('integrity-check')").execute(db.pool()).await.unwrap();
        assert!(db.delete_document(&u, &doc).await.unwrap());
        assert_eq!(fts_rows(&db).await, 0);
        sqlx::query("INSERT INTO chunks_fts (chunks_fts) VALUES ('integrity-check')").execute(db.pool()).await.unwrap();
    }

    #[tokio::test]
    async fn the_full_text_query_alone_keeps_to_the_owner() {
        // The outer `user_id` check is a second line of defence; this checks
        // the first one, the owner token inside the FTS5 query.
        let (db, _dir) = database().await;
        if SearchIndex::for_database(&db) != SearchIndex::Sqlite {
            return;
        }
        let mut users = Vec::new();
        for (i, id) in ["ab", "AB", "a-b", "a_b"].into_iter().enumerate() {
            let u = UserId::parse(id).unwrap();
            db.create_user(&u, &format!("user{i}"), "x", false).await.unwrap();
            document(&db, &u, id, &[("", "火星"), ("", "火星 mars")]).await;
            users.push(u);
        }
        for u in &users {
            let expression = query::fts5_match(u, &["火星".to_string()]).unwrap();
            let owners: Vec<String> = sqlx::query_scalar(
                "SELECT c.user_id FROM chunks_fts JOIN chunks c ON c.rowid = chunks_fts.rowid WHERE chunks_fts MATCH $1",
            )
            .bind(expression)
            .fetch_all(db.pool())
            .await
            .unwrap();
            assert_eq!(owners, [u.as_str(), u.as_str()], "{u}");
        }
    }
}
