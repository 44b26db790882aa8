//! `GET/PUT /admin/flags`: the run-time flag overrides (admins only).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::openapi::{ObjectBuilder, RefOr, Schema, Type};
use utoipa::{PartialSchema, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{AppJson, CurrentUser};
use crate::app::App;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::flags::encode_flag;
use crate::state::{BackendError, Flag};

pub fn router() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new().routes(routes!(show, update))
}

#[derive(Serialize, ToSchema)]
struct FlagsView {
    /// Every flag's value now.
    #[schema(value_type = FlagValues)]
    effective: BTreeMap<Flag, bool>,
    /// The flags set at run time (the others come from the environment).
    #[schema(value_type = FlagValues)]
    overrides: BTreeMap<Flag, bool>,
}

/// The schema of a map from flag names to values, its properties being
/// the names [`Flag::ALL`] has (`nullable`: a request body's `null` removes
/// an override).
fn flag_map(nullable: bool, description: &str) -> RefOr<Schema> {
    let value = || {
        let mut types = vec![Type::Boolean];
        if nullable {
            types.push(Type::Null);
        }
        ObjectBuilder::new().schema_type(utoipa::openapi::schema::SchemaType::from_iter(types))
    };
    Flag::ALL
        .into_iter()
        .fold(ObjectBuilder::new().description(Some(description)), |object, flag| object.property(flag.name(), value()))
        .additional_properties(Some(utoipa::openapi::schema::AdditionalProperties::FreeForm(false)))
        .into()
}

/// Flag names to their values. Documentation only (the views hold `Flag` keys).
struct FlagValues;

impl PartialSchema for FlagValues {
    fn schema() -> RefOr<Schema> {
        flag_map(false, "Flag names to their values")
    }
}

impl ToSchema for FlagValues {}

/// `PUT /admin/flags`'s body: flag names to a value to set, or `null` to
/// remove the override. Documentation only (the handler reads a map).
struct FlagChanges;

impl PartialSchema for FlagChanges {
    fn schema() -> RefOr<Schema> {
        flag_map(true, "Flag names to a value, or null to remove the override")
    }
}

impl ToSchema for FlagChanges {}

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

/// The feature flags: their values and the run-time overrides.
#[utoipa::path(
    get,
    path = "/admin/flags",
    tag = "admin",
    operation_id = "get_flags",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The flags", body = FlagsView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
        (status = 429, description = "Over the request rate (`Retry-After`)", body = ErrorBody),
        (status = 503, description = "The database is unavailable (`Retry-After`)", body = ErrorBody),
    ),
)]
async fn show(State(app): State<Arc<App>>, CurrentUser(user): CurrentUser) -> ApiResult<Json<FlagsView>> {
    require_admin(&app, &user).await?;
    Ok(view(&app))
}

/// Sets or removes flag overrides, for every instance, without a restart.
#[utoipa::path(
    put,
    path = "/admin/flags",
    tag = "admin",
    operation_id = "update_flags",
    security(("bearer" = [])),
    request_body = FlagChanges,
    responses(
        (status = 200, description = "The flags after the change", body = FlagsView),
        (status = 400, description = "The body is not valid JSON", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
        (status = 409, description = "No Redis is configured (`redis_not_configured`)", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 422, description = "An unknown flag or a value that is not a boolean or null", body = ErrorBody),
        (status = 429, description = "Over the request rate (`Retry-After`)", body = ErrorBody),
        (status = 503, description = "Redis or the database is unavailable (`Retry-After`)", body = ErrorBody),
    ),
)]
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
