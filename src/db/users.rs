use sqlx::FromRow;

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

impl Database {
    /// Inserts a user; a taken name is a unique violation (see [`super::is_unique_violation`]).
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
            "INSERT INTO users (id, username, password_hash, is_admin, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&user.id)
        .bind(&user.username)
        .bind(&user.password_hash)
        .bind(user.is_admin)
        .bind(user.created_at)
        .execute(self.pool())
        .await?;
        Ok(user)
    }

    pub async fn user_by_name(&self, username: &str) -> Result<Option<User>, sqlx::Error> {
        sqlx::query_as("SELECT id, username, password_hash, is_admin, created_at FROM users WHERE username = $1")
            .bind(username)
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
