//! `GET/PUT /admin/flags`: the run-time flag overrides (admins only).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::extract::{AppJson, CurrentUser};
use crate::app::App;
use crate::error::{ApiError, ApiResult};
use crate::state::flags::encode_flag;
use crate::state::{BackendError, Flag};

pub fn router() -> Router<Arc<App>> {
    Router::new().route("/admin/flags", get(show).put(update))
}

#[derive(Serialize)]
struct FlagsView {
    effective: BTreeMap<Flag, bool>,
    overrides: BTreeMap<Flag, bool>,
}

/// The admin's account, or 403 for anyone else.
async fn require_admin(app: &App, user: &crate::ids::UserId) -> ApiResult<crate::db::User> {
    match app.db.user_by_id(user).await? {
        Some(u) if u.is_admin() => Ok(u),
        Some(_) => Err(ApiError::forbidden("this needs the admin role")),
        None => Err(ApiError::unauthorized("the account no longer exists")),
    }
}

fn view(app: &App) -> Json<FlagsView> {
    let flags = app.state.flags();
    Json(FlagsView { effective: flags.effective(), overrides: flags.overrides() })
}

async fn show(State(app): State<Arc<App>>, CurrentUser(user): CurrentUser) -> ApiResult<Json<FlagsView>> {
    require_admin(&app, &user).await?;
    Ok(view(&app))
}

async fn update(
    State(app): State<Arc<App>>,
    CurrentUser(user): CurrentUser,
    AppJson(body): AppJson<BTreeMap<String, Option<bool>>>,
) -> ApiResult<Json<FlagsView>> {
    let admin = require_admin(&app, &user).await?;
    let mut changes = BTreeMap::new();
    for (name, value) in body {
        let flag = Flag::parse(&name).ok_or_else(|| {
            ApiError::unprocessable(
                "unknown_flag",
                format!("unknown flag {name:?}; known: {:?}", Flag::ALL.map(Flag::name)),
            )
        })?;
        changes.insert(flag, value);
    }
    let redis = app.state.redis().ok_or_else(|| {
        ApiError::conflict("redis_not_configured", "flag overrides live in Redis; no Redis connection is configured")
    })?;
    let set: Vec<(String, String)> =
        changes.iter().filter_map(|(f, v)| v.map(|v| (f.name().to_owned(), encode_flag(v).to_owned()))).collect();
    let del: Vec<String> = changes.iter().filter(|(_, v)| v.is_none()).map(|(f, _)| f.name().to_owned()).collect();
    redis.hset_many(&app.state.keys().flags(), &set, &del).await.map_err(|e| match e {
        BackendError::Unavailable(_) => {
            ApiError::unavailable("redis_unavailable", "Redis is unreachable; flags unchanged").with_retry_after(1)
        }
        BackendError::Command(m) => ApiError::internal(m),
    })?;
    let flags = app.state.flags();
    let (effective_before, overrides_before) = (flags.effective(), flags.overrides());
    app.state.change_flags(|flags| flags.apply(&changes)).await;
    let (effective_after, overrides_after) = (flags.effective(), flags.overrides());
    // The audit trail: one line per flag named in the request, with who
    // asked and what changed (inside the request's span, so it carries the
    // request id too).
    for flag in changes.keys() {
        let show = |v: Option<&bool>| v.map_or("none", |b| if *b { "on" } else { "off" });
        tracing::info!(
            audit = true,
            by_id = %user,
            by = %admin.username,
            flag = flag.name(),
            override_before = show(overrides_before.get(flag)),
            override_after = show(overrides_after.get(flag)),
            effective_before = show(effective_before.get(flag)),
            effective_after = show(effective_after.get(flag)),
            "run-time flag changed"
        );
    }
    Ok(view(&app))
}
