//! Tests of [`super::SearchIndex`] against a real database: a temporary
//! SQLite file, or, when `REPORTD_TEST_POSTGRES` holds the URL of a
//! PostgreSQL server (e.g. `postgres://postgres@127.0.0.1:5432/postgres`),
//! a fresh database on that server, so that the same tests check both
//! implementations.

use super::{SearchIndex, index_text};
use crate::db::{Database, Document, NewChunk};
use crate::ids::{DocumentId, UserId};

/// A fresh database (SQLite in a temporary directory, dropped with it).
pub(super) async fn database() -> (Database, tempfile::TempDir) {
    let dir = tempfile::TempDir::new().unwrap();
    let url = match std::env::var("REPORTD_TEST_POSTGRES") {
        Ok(admin) => {
            sqlx::any::install_default_drivers();
            let name = format!("search_{}", uuid::Uuid::new_v4().simple());
            let pool = sqlx::AnyPool::connect(&admin).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&pool).await.unwrap();
            pool.close().await;
            let (base, _) = admin.rsplit_once('/').unwrap();
            format!("{base}/{name}")
        }
        Err(_) => format!("sqlite://{}/t.db", dir.path().display()),
    };
    (Database::connect(&url).await.unwrap(), dir)
}

pub(super) async fn user(db: &Database, name: &str) -> UserId {
    let id = UserId::generate();
    db.create_user(&id, name, "x", false).await.unwrap();
    id
}

/// Stores a document whose chunks are `(heading_path, content)`.
pub(super) async fn document(db: &Database, user: &UserId, title: &str, chunks: &[(&str, &str)]) -> DocumentId {
    let id = DocumentId::generate();
    let doc = Document {
        id: id.to_string(),
        user_id: user.to_string(),
        title: title.into(),
        filename: format!("{title}.txt"),
        format: "txt".into(),
        size_bytes: 1,
        chunk_count: chunks.len() as i64,
        created_at: 0,
    };
    let chunks: Vec<NewChunk> = chunks
        .iter()
        .map(|(h, c)| NewChunk { heading_path: h.to_string(), content: c.to_string(), search_text: index_text(h, c) })
        .collect();
    db.insert_document(&doc, &chunks, &mut |_| {}).await.unwrap();
    id
}

#[tokio::test]
async fn query_syntax_in_user_input_is_only_ever_text() {
    let (db, _dir) = database().await;
    let u = user(&db, "u").await;
    document(&db, &u, "d", &[("", "Mars NEAR Jupiter AND Saturn: \"quoted\" (paren) star* it's a\\b 火星")]).await;
    let index = SearchIndex::for_database(&db);
    // FTS5 and tsquery operators and quoting, and SQL for good measure.
    for q in [
        "\"",
        "\"\"",
        "mars\"",
        "*",
        "mars*",
        ":",
        "search_text:mars",
        "(",
        ")",
        "(mars",
        "NEAR",
        "NEAR(mars jupiter)",
        "AND",
        "OR",
        "NOT",
        "mars AND",
        "- mars",
        "^mars",
        "+",
        "{search_text}: mars",
        "'",
        "it's",
        "a\\b",
        "\\",
        "!mars",
        "mars & jupiter | !saturn",
        "mars:*",
        "mars <-> jupiter",
        "'; DROP TABLE chunks; --",
    ] {
        let hits = index.search(&db, &u, q, None, 10).await;
        assert!(hits.is_ok(), "{q:?}: {hits:?}");
    }
    // Words that happen to be operators are searched as words.
    let hits = index.search(&db, &u, "NEAR", None, 10).await.unwrap();
    assert_eq!(hits.len(), 1);
    assert!(hits[0].snippet.contains("<mark>NEAR</mark>"), "{}", hits[0].snippet);
    // NOT is a word here, not an operator that would exclude the chunk.
    assert_eq!(index.search(&db, &u, "NOT mars", None, 10).await.unwrap().len(), 1);
    assert_eq!(index.search(&db, &u, "!mars", None, 10).await.unwrap().len(), 1);
    // The one word that exists nowhere is found nowhere.
    assert!(index.search(&db, &u, "\"venus\" OR *", None, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_index_follows_updates_and_deletes() {
    let (db, _dir) = database().await;
    let u = user(&db, "u").await;
    let doc = document(&db, &u, "d", &[("", "火星探测"), ("", "月球基地")]).await;
    let index = SearchIndex::for_database(&db);
    assert_eq!(index.search(&db, &u, "火星", None, 10).await.unwrap().len(), 1);

    sqlx::query("UPDATE chunks SET content = 'Venus', search_text = 'venus' WHERE content = '火星探测'")
        .execute(db.pool())
        .await
        .unwrap();
    assert!(index.search(&db, &u, "火星", None, 10).await.unwrap().is_empty());
    assert_eq!(index.search(&db, &u, "venus", None, 10).await.unwrap().len(), 1);

    assert!(db.delete_document(&u, &doc).await.unwrap());
    assert!(index.search(&db, &u, "venus", None, 10).await.unwrap().is_empty());
    assert!(index.search(&db, &u, "月球", None, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_cascading_delete_also_leaves_the_index() {
    let (db, _dir) = database().await;
    let keep = user(&db, "keep").await;
    let gone = user(&db, "gone").await;
    document(&db, &keep, "k", &[("", "月球基地")]).await;
    document(&db, &gone, "g", &[("", "火星探测")]).await;
    sqlx::query("DELETE FROM documents WHERE user_id = $1").bind(gone.as_str()).execute(db.pool()).await.unwrap();
    // The chunks went with their document (ON DELETE CASCADE), and with
    // them their index entries.
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM chunks").fetch_one(db.pool()).await.unwrap();
    assert_eq!(left, 1);
    let index = SearchIndex::for_database(&db);
    assert!(index.search(&db, &gone, "火星", None, 10).await.unwrap().is_empty());
    assert_eq!(index.search(&db, &keep, "月球", None, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn results_are_the_users_own_and_respect_the_filter_and_limit() {
    let (db, _dir) = database().await;
    let a = user(&db, "a").await;
    let b = user(&db, "b").await;
    let a1 = document(&db, &a, "a1", &[("", "火星 one"), ("", "火星 two")]).await;
    let a2 = document(&db, &a, "a2", &[("", "火星 three")]).await;
    let b1 = document(&db, &b, "b1", &[("", "火星 four")]).await;
    let index = SearchIndex::for_database(&db);

    let all = index.search(&db, &a, "火星", None, 10).await.unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|h| h.document_id != b1.as_str()));
    assert!(all.iter().all(|h| h.score > 0.0), "{all:?}");
    assert!(all.windows(2).all(|w| w[0].score >= w[1].score));

    let only_a2 = index.search(&db, &a, "火星", Some(std::slice::from_ref(&a2)), 10).await.unwrap();
    assert_eq!(only_a2.len(), 1);
    assert_eq!(only_a2[0].document_id, a2.as_str());
    assert_eq!(only_a2[0].document_title, "a2");
    assert_eq!(only_a2[0].content, "火星 three");
    assert_eq!(only_a2[0].snippet, "<mark>火星</mark> three");

    let both = index.search(&db, &a, "火星", Some(&[a1.clone(), a2.clone()]), 10).await.unwrap();
    assert_eq!(both.len(), 3);

    // Another user's document id matches nothing, alone or with one's own.
    assert!(index.search(&db, &a, "火星", Some(std::slice::from_ref(&b1)), 10).await.unwrap().is_empty());
    assert_eq!(index.search(&db, &a, "火星", Some(&[b1.clone(), a2.clone()]), 10).await.unwrap().len(), 1);
    assert!(index.search(&db, &a, "火星", Some(&[]), 10).await.unwrap().is_empty());

    assert_eq!(index.search(&db, &a, "火星", None, 2).await.unwrap().len(), 2);
    assert_eq!(index.search(&db, &a, "火星", None, 0).await.unwrap().len(), 1, "limit is clamped to 1");
    assert!(index.search(&db, &a, "？！", None, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_chunk_with_more_and_rarer_terms_ranks_first() {
    let (db, _dir) = database().await;
    let u = user(&db, "u").await;
    document(
        &db,
        &u,
        "d",
        &[
            ("", "The rover landed on Mars in 2021."),
            ("", "Mars has a thin atmosphere of carbon dioxide."),
            ("", "Jupiter is the largest planet."),
            ("", "Saturn has rings."),
        ],
    )
    .await;
    let index = SearchIndex::for_database(&db);
    let hits = index.search(&db, &u, "mars atmosphere", None, 10).await.unwrap();
    assert_eq!(hits.len(), 2);
    assert!(hits[0].content.contains("atmosphere"), "{hits:?}");
    assert_eq!(hits[0].position, 1);
    assert!(hits[0].score > hits[1].score);
}

#[tokio::test]
async fn tokens_the_database_would_split_still_match() {
    let (db, _dir) = database().await;
    let u = user(&db, "u").await;
    document(&db, &u, "d", &[("", "Upgrade to GPT-4o and WES-5.4.5 at user@example.com today.")]).await;
    let index = SearchIndex::for_database(&db);
    for q in ["gpt-4o", "GPT", "wes-5.4.5", "wes", "user@example.com"] {
        assert_eq!(index.search(&db, &u, q, None, 10).await.unwrap().len(), 1, "{q}");
    }
}

#[tokio::test]
async fn user_ids_that_a_tokenizer_would_confuse_stay_apart() {
    let (db, _dir) = database().await;
    let mut users = Vec::new();
    for (i, id) in ["ab", "AB", "a-b", "a_b", "a", "b"].into_iter().enumerate() {
        let user = UserId::parse(id).unwrap();
        db.create_user(&user, &format!("user{i}"), "x", false).await.unwrap();
        document(&db, &user, id, &[("", &format!("火星 note of {id}"))]).await;
        users.push(user);
    }
    let index = SearchIndex::for_database(&db);
    for user in &users {
        let hits = index.search(&db, user, "火星", None, 10).await.unwrap();
        assert_eq!(hits.len(), 1, "{user}: {hits:?}");
        assert_eq!(hits[0].document_title, user.as_str());
    }
}
