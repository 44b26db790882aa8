//! `/auth/register`, `/auth/login`, `/auth/me`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::extract::{AppJson, CurrentUser, JsonOrForm};
use crate::app::App;
use crate::auth::{dummy_hash, hash_password, verify_password};
use crate::db::is_unique_violation;
use crate::error::{ApiError, ApiResult};
use crate::ids::UserId;

pub fn router() -> Router<Arc<App>> {
    Router::new().route("/auth/register", post(register)).route("/auth/login", post(login)).route("/auth/me", get(me))
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

#[derive(Serialize)]
struct UserView {
    id: String,
    username: String,
}

#[derive(Serialize)]
struct TokenView {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
}

#[derive(Serialize)]
struct MeView {
    id: String,
    username: String,
    is_admin: bool,
}

/// A username: 1 to 64 characters once trimmed, no control characters.
pub fn check_username(name: &str) -> Result<&str, ApiError> {
    let name = name.trim();
    let ok = (1..=64).contains(&name.chars().count()) && !name.chars().any(char::is_control);
    if ok {
        Ok(name)
    } else {
        Err(ApiError::unprocessable("invalid_username", "username must be 1 to 64 printable characters"))
    }
}

pub fn check_password(password: &str) -> Result<(), ApiError> {
    if (8..=1024).contains(&password.chars().count()) {
        Ok(())
    } else {
        Err(ApiError::unprocessable("invalid_password", "password must be 8 to 1024 characters"))
    }
}

async fn register(
    State(app): State<Arc<App>>,
    AppJson(c): AppJson<Credentials>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    let username = check_username(&c.username)?.to_owned();
    check_password(&c.password)?;
    let user = app.create_user(&username, c.password, false).await?;
    Ok((StatusCode::CREATED, Json(UserView { id: user.id, username: user.username })))
}

async fn login(State(app): State<Arc<App>>, JsonOrForm(c): JsonOrForm<Credentials>) -> ApiResult<Json<TokenView>> {
    let user = app.db.user_by_name(c.username.trim()).await?;
    // Verify against a dummy hash for unknown names so that timing does not
    // tell which usernames exist.
    let hash = user.as_ref().map_or_else(|| dummy_hash().to_owned(), |u| u.password_hash.clone());
    let ok =
        tokio::task::spawn_blocking(move || verify_password(&c.password, &hash)).await.map_err(ApiError::internal)?;
    let user = user.filter(|_| ok).ok_or_else(|| {
        ApiError::new(StatusCode::UNAUTHORIZED, "invalid_credentials", "invalid username or password")
    })?;
    let id = UserId::parse(&user.id).map_err(ApiError::internal)?;
    let access_token = app.tokens.issue(&id)?;
    Ok(Json(TokenView { access_token, token_type: "bearer", expires_in: app.tokens.ttl_seconds }))
}

async fn me(State(app): State<Arc<App>>, CurrentUser(user): CurrentUser) -> ApiResult<Json<MeView>> {
    let found =
        app.db.user_by_id(&user).await?.ok_or_else(|| ApiError::unauthorized("the account no longer exists"))?;
    Ok(Json(MeView { is_admin: found.is_admin(), id: found.id, username: found.username }))
}

impl App {
    /// Creates an account (HTTP registration and `reportd user add`).
    pub async fn create_user(&self, username: &str, password: String, admin: bool) -> ApiResult<crate::db::User> {
        let hash =
            tokio::task::spawn_blocking(move || hash_password(&password)).await.map_err(ApiError::internal)??;
        match self.db.create_user(&UserId::generate(), username, &hash, admin).await {
            Ok(user) => Ok(user),
            Err(e) if is_unique_violation(&e) => Err(ApiError::conflict("username_taken", "this username is taken")),
            Err(e) => Err(e.into()),
        }
    }
}
