use sqlx::FromRow;

use super::Database;
use crate::ids::{DocumentId, UserId};

#[derive(Debug, Clone, FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct Document {
    pub id: String,
    #[serde(skip)]
    pub user_id: String,
    pub title: String,
    pub filename: String,
    /// One of `txt`, `md`, `html`, `docx`, `pdf`.
    pub format: String,
    pub size_bytes: i64,
    pub chunk_count: i64,
    #[serde(skip)]
    pub created_at: i64,
}

#[derive(Debug, Clone, FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct Chunk {
    pub id: String,
    pub position: i64,
    pub heading_path: String,
    pub content: String,
}

/// A chunk about to be stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NewChunk {
    pub heading_path: String,
    pub content: String,
    /// What the search index holds for it ([`crate::search::index_text`]).
    pub search_text: String,
}

const DOCUMENT_COLUMNS: &str = "id, user_id, title, filename, format, size_bytes, chunk_count, created_at";

/// Rows per multi-row INSERT of chunks (7 parameters each, far below both
/// databases' parameter limits).
const CHUNK_BATCH: usize = 100;

impl Database {
    /// Stores a document and its chunks in one transaction, replacing the
    /// document of the same id and its chunks if a previous attempt stored
    /// them (an import that is run again after its worker died must not
    /// duplicate anything). `stored(n)` is called after every batch with the
    /// number of chunks written so far.
    pub async fn insert_document(
        &self,
        doc: &Document,
        chunks: &[NewChunk],
        stored: &mut (dyn FnMut(usize) + Send),
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.pool().begin().await?;
        for sql in ["DELETE FROM chunks WHERE document_id = $1", "DELETE FROM documents WHERE id = $1"] {
            sqlx::query(sql).bind(&doc.id).execute(&mut *tx).await?;
        }
        sqlx::query(
            "INSERT INTO documents (id, user_id, title, filename, format, size_bytes, chunk_count, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&doc.id)
        .bind(&doc.user_id)
        .bind(super::storable(&doc.title).into_owned())
        .bind(super::storable(&doc.filename).into_owned())
        .bind(&doc.format)
        .bind(doc.size_bytes)
        .bind(doc.chunk_count)
        .bind(doc.created_at)
        .execute(&mut *tx)
        .await?;
        for (batch_no, batch) in chunks.chunks(CHUNK_BATCH).enumerate() {
            let placeholders: Vec<String> = (0..batch.len())
                .map(|i| {
                    let b = i * 7;
                    format!("(${}, ${}, ${}, ${}, ${}, ${}, ${})", b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7)
                })
                .collect();
            let sql = format!(
                "INSERT INTO chunks (id, document_id, user_id, position, heading_path, content, search_text) VALUES {}",
                placeholders.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (i, c) in batch.iter().enumerate() {
                let position = (batch_no * CHUNK_BATCH + i) as i64;
                q = q
                    .bind(uuid::Uuid::new_v4().to_string())
                    .bind(&doc.id)
                    .bind(&doc.user_id)
                    .bind(position)
                    .bind(super::storable(&c.heading_path).into_owned())
                    .bind(super::storable(&c.content).into_owned())
                    .bind(super::storable(&c.search_text).into_owned());
            }
            q.execute(&mut *tx).await?;
            stored(batch_no * CHUNK_BATCH + batch.len());
        }
        tx.commit().await
    }

    pub async fn list_documents(
        &self,
        user: &UserId,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<Document>, i64), sqlx::Error> {
        let items = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {DOCUMENT_COLUMNS} FROM documents WHERE user_id = $1 ORDER BY created_at DESC, id LIMIT $2 OFFSET $3"
        )))
        .bind(user.as_str())
        .bind(limit)
        .bind(offset)
        .fetch_all(self.pool())
        .await?;
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM documents WHERE user_id = $1")
            .bind(user.as_str())
            .fetch_one(self.pool())
            .await?;
        Ok((items, total))
    }

    /// The document if it belongs to `user`.
    pub async fn document(&self, user: &UserId, id: &DocumentId) -> Result<Option<Document>, sqlx::Error> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {DOCUMENT_COLUMNS} FROM documents WHERE id = $1 AND user_id = $2"
        )))
        .bind(id.as_str())
        .bind(user.as_str())
        .fetch_optional(self.pool())
        .await
    }

    pub async fn chunks(
        &self,
        user: &UserId,
        id: &DocumentId,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<Chunk>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, position, heading_path, content FROM chunks \
             WHERE document_id = $1 AND user_id = $2 ORDER BY position LIMIT $3 OFFSET $4",
        )
        .bind(id.as_str())
        .bind(user.as_str())
        .bind(limit)
        .bind(offset)
        .fetch_all(self.pool())
        .await
    }

    /// Deletes the document (and its chunks) if it belongs to `user`.
    pub async fn delete_document(&self, user: &UserId, id: &DocumentId) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM chunks WHERE document_id = $1 AND user_id = $2")
            .bind(id.as_str())
            .bind(user.as_str())
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM documents WHERE id = $1 AND user_id = $2")
            .bind(id.as_str())
            .bind(user.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }
}
