//! Accounts: creation, and lookup by id or by the name typed at login.
//!
//! A username is unique by its canonical key (`username_key`, migration
//! 0004), not by its spelling, so that names which look alike cannot be two
//! accounts.

use sqlx::FromRow;
use unicode_normalization::UnicodeNormalization;

use super::Database;
use crate::ids::UserId;

#[derive(Debug, Clone, FromRow)]
pub struct User {
    pub id: String,
    pub username: String,
    pub password_hash: String,
    pub is_admin: i64,
    pub created_at: i64,
}

impl User {
    pub fn is_admin(&self) -> bool {
        self.is_admin != 0
    }
}

/// The most characters of a typed login name worth looking up: longer input
/// cannot be a stored name (see `http::check_username`), and skipping it
/// bounds the normalising work that a login does.
const MAX_LOOKUP_CHARS: usize = 256;

/// The key that decides whether two usernames are the same account: the
/// trimmed name, NFKC-normalised (compatibility forms such as fullwidth
/// letters become their plain forms, and NFC/NFD spellings become one),
/// lower-cased with Rust's full Unicode lowercase mapping, then normalised
/// again because lower-casing may leave text that is not in NFKC.
///
/// Lower-casing stands in for Unicode case folding, which the standard
/// library lacks; the two differ on a few letters only (`ß` stays `ß` rather
/// than folding to `ss`; a final `ς` stays distinct from `σ`), which then
/// remain distinct names, as they are in most spellings anyway.
pub fn username_key(name: &str) -> String {
    let lower = name.trim().nfkc().collect::<String>().to_lowercase();
    lower.nfkc().collect()
}

impl Database {
    /// Inserts a user, with the canonical key of its name; a name that is
    /// taken, in any spelling that has the same key, is a unique violation
    /// (see [`super::is_unique_violation`]).
    pub async fn create_user(
        &self,
        id: &UserId,
        username: &str,
        password_hash: &str,
        is_admin: bool,
    ) -> Result<User, sqlx::Error> {
        let user = User {
            id: id.to_string(),
            username: username.to_owned(),
            password_hash: password_hash.to_owned(),
            is_admin: i64::from(is_admin),
            created_at: crate::stores::tasks::now_ms(),
        };
        sqlx::query(
            "INSERT INTO users (id, username, username_key, password_hash, is_admin, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&user.id)
        .bind(&user.username)
        .bind(username_key(&user.username))
        .bind(&user.password_hash)
        .bind(user.is_admin)
        .bind(user.created_at)
        .execute(self.pool())
        .await?;
        Ok(user)
    }

    /// The account a login names: the one whose canonical key matches the
    /// typed name's, so that `ALICE` logs in as `alice`.
    ///
    /// The account whose stored name is exactly the typed (trimmed) name wins
    /// over a key match. That matters only for accounts created before
    /// migration 0004: their keys were filled in by SQL, which cannot apply
    /// NFKC (and SQLite lower-cases ASCII only), and of earlier names that
    /// collided on the key all but the oldest got a placeholder key. Each of
    /// them can still log in by typing its name exactly as registered.
    pub async fn user_for_login(&self, typed: &str) -> Result<Option<User>, sqlx::Error> {
        let typed = typed.trim();
        // No stored name holds a control character; refusing them here also
        // keeps a typed name from matching the placeholder keys of 0004.
        if typed.chars().count() > MAX_LOOKUP_CHARS || typed.chars().any(char::is_control) {
            return Ok(None);
        }
        sqlx::query_as(
            "SELECT id, username, password_hash, is_admin, created_at FROM users \
             WHERE username = $1 OR username_key = $2 \
             ORDER BY CASE WHEN username = $1 THEN 0 ELSE 1 END LIMIT 1",
        )
        .bind(typed)
        .bind(username_key(typed))
        .fetch_optional(self.pool())
        .await
    }

    pub async fn user_by_id(&self, id: &UserId) -> Result<Option<User>, sqlx::Error> {
        sqlx::query_as("SELECT id, username, password_hash, is_admin, created_at FROM users WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(self.pool())
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS};

    #[test]
    fn the_key_unifies_look_alikes_and_only_them() {
        let alice = username_key("alice");
        for variant in ["ALICE", "Alice", " alice ", "ａｌｉｃｅ", "ＡＬＩＣＥ"] {
            assert_eq!(username_key(variant), alice, "{variant:?}");
        }
        // NFC and NFD spellings of é, in either case.
        assert_eq!(username_key("cafe\u{301}"), username_key("café"));
        assert_eq!(username_key("CAFE\u{301}"), "café");
        // Compatibility forms expand; distinct names stay distinct.
        assert_eq!(username_key("㍿"), "株式会社");
        assert_ne!(username_key("alice"), username_key("alicia"));
        assert_ne!(username_key("alice"), username_key("ali\u{200B}ce"));
    }

    /// Users created before migration 0004, some of them colliding on the
    /// new key, survive it: the unique index is built, each can still log
    /// in by its exact name, and a new look-alike is refused.
    #[tokio::test]
    async fn existing_users_survive_the_key_migration() {
        let dir = tempfile::TempDir::new().unwrap();
        sqlx::any::install_default_drivers();
        let (url, migrator) = match std::env::var("REPORTD_TEST_POSTGRES") {
            Ok(admin) => {
                let name = format!("users_{}", uuid::Uuid::new_v4().simple());
                let pool = sqlx::AnyPool::connect(&admin).await.unwrap();
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&pool).await.unwrap();
                pool.close().await;
                let (base, _) = admin.rsplit_once('/').unwrap();
                (format!("{base}/{name}"), &POSTGRES_MIGRATIONS)
            }
            Err(_) => (format!("sqlite://{}/t.db?mode=rwc", dir.path().display()), &SQLITE_MIGRATIONS),
        };
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        migrator.run_to(3, &pool).await.unwrap();
        for (i, name) in ["alice", "Alice", "ALICE", "bob"].into_iter().enumerate() {
            sqlx::query(
                "INSERT INTO users (id, username, password_hash, is_admin, created_at) VALUES ($1, $2, $3, 0, $4)",
            )
            .bind(format!("id{i}"))
            .bind(name)
            .bind(format!("hash of {name}"))
            .bind(i64::try_from(i).unwrap())
            .execute(&pool)
            .await
            .unwrap();
        }
        migrator.run(&pool).await.unwrap();
        let db = Database { pool };

        for (typed, id) in [("alice", "id0"), ("Alice", "id1"), ("ALICE", "id2"), ("aLiCe", "id0"), ("BOB", "id3")] {
            let found = db.user_for_login(typed).await.unwrap().unwrap();
            assert_eq!(found.id, id, "{typed:?}");
        }
        assert!(db.user_for_login("carol").await.unwrap().is_none());
        // The placeholder keys of the later duplicates are not a way in.
        assert!(db.user_for_login("\u{1}id1").await.unwrap().is_none());

        let err = db.create_user(&UserId::generate(), "ａｌｉｃｅ", "x", false).await.unwrap_err();
        assert!(super::super::is_unique_violation(&err), "{err}");
        let err = db.create_user(&UserId::generate(), "Bob", "x", false).await.unwrap_err();
        assert!(super::super::is_unique_violation(&err), "{err}");
        db.create_user(&UserId::generate(), "carol", "x", false).await.unwrap();
        assert_eq!(db.user_for_login("CAROL").await.unwrap().unwrap().username, "carol");
    }
}
