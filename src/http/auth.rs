//! `/auth/register`, `/auth/login`, `/auth/me`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{AppJson, ClientIp, CurrentUser, JsonOrForm};
use crate::app::App;
use crate::auth::dummy_hash;
use crate::db::is_unique_violation;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::ids::UserId;
use crate::keys::LimitSubject;
use crate::stores::limits::RateLimit;

pub fn router() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new().routes(routes!(register)).routes(routes!(login)).routes(routes!(me))
}

/// A username and a password (registration, login).
#[derive(Deserialize, ToSchema)]
struct Credentials {
    /// 1 to 64 printable characters once NFKC-normalised; case-insensitively unique.
    #[schema(examples("alice"))]
    username: String,
    /// 8 to 1024 characters.
    #[schema(examples("correct horse battery"))]
    password: String,
}

#[derive(Serialize, ToSchema)]
struct UserView {
    id: String,
    username: String,
}

#[derive(Serialize, ToSchema)]
struct TokenView {
    /// A JWT to send as `Authorization: Bearer <access_token>`.
    access_token: String,
    /// Always `bearer`.
    #[schema(value_type = String, examples("bearer"))]
    token_type: &'static str,
    /// Seconds until the token expires.
    expires_in: u64,
}

#[derive(Serialize, ToSchema)]
struct MeView {
    id: String,
    username: String,
    is_admin: bool,
}

/// The most characters a username may have once normalised.
const MAX_USERNAME_CHARS: usize = 64;

/// A bound on the raw input checked before normalising it, so that a huge
/// name is refused without first being normalised. NFKC shrinks text by at
/// most three to one (a decomposed Hangul syllable, L + V + T jamo), so no
/// name longer than this can fit in [`MAX_USERNAME_CHARS`] afterwards.
const MAX_RAW_USERNAME_CHARS: usize = 4 * MAX_USERNAME_CHARS;

/// Checks a username and returns the form to store and display: the input
/// trimmed and NFKC-normalised (so fullwidth `ａｌｉｃｅ` is stored as
/// `alice`), 1 to 64 characters long, with no control, format, invisible,
/// line-separating or private-use character.
///
/// Uniqueness is not decided here but on the case-folded key the database
/// derives from this form (see `Database::create_user`), so `ALICE` and
/// `alice` are one account.
pub fn check_username(name: &str) -> Result<String, ApiError> {
    let invalid = || ApiError::unprocessable("invalid_username", "username must be 1 to 64 printable characters");
    let raw = name.trim();
    if raw.chars().count() > MAX_RAW_USERNAME_CHARS {
        return Err(invalid());
    }
    // Normalise first and check afterwards: what is stored (and later
    // compared) is the normalised text, so that is what must be clean. NFKC
    // can turn a non-breaking or ideographic space into a plain one, hence
    // the second trim.
    let normalised: String = raw.nfkc().collect();
    let normalised = normalised.trim();
    let ok = (1..=MAX_USERNAME_CHARS).contains(&normalised.chars().count())
        && !normalised.chars().any(is_forbidden_in_username);
    if ok { Ok(normalised.to_owned()) } else { Err(invalid()) }
}

/// Characters a username may not contain: those that render as nothing, or
/// that change how the characters around them render, so that two names
/// which look the same would otherwise be different accounts.
///
/// Rust's standard library knows only the control characters (category Cc);
/// the rest is listed here by hand from Unicode 15.1: every format character
/// (category Cf: zero-width space, joiners, BOM, bidirectional marks,
/// embeddings, overrides and isolates, ...), the other default-ignorable code
/// points (variation selectors, Hangul fillers, the combining grapheme joiner,
/// ...), the line and paragraph separators, and the private-use areas, whose
/// glyphs depend on the font. Unassigned code points are accepted: telling
/// them apart needs the full character database, and NFKC leaves them alone.
fn is_forbidden_in_username(c: char) -> bool {
    if c.is_control() {
        return true;
    }
    matches!(
        u32::from(c),
        0x00AD // soft hyphen
            | 0x034F // combining grapheme joiner
            | 0x0600..=0x0605 // Arabic prepended concatenation marks
            | 0x061C // Arabic letter mark
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x115F..=0x1160 // Hangul choseong and jungseong fillers
            | 0x17B4..=0x17B5 // Khmer inherent vowels
            | 0x180B..=0x180F // Mongolian variation selectors and vowel separator
            | 0x200B..=0x200F // zero-width space, ZWNJ, ZWJ, LRM, RLM
            | 0x2028..=0x2029 // line and paragraph separators
            | 0x202A..=0x202E // bidirectional embeddings and overrides
            | 0x2060..=0x206F // word joiner, invisible operators, bidirectional isolates, deprecated formats
            | 0x3164 // Hangul filler
            | 0xE000..=0xF8FF // private use
            | 0xFE00..=0xFE0F // variation selectors
            | 0xFEFF // zero-width no-break space (BOM)
            | 0xFFA0 // halfwidth Hangul filler
            | 0xFFF0..=0xFFFB // reserved default-ignorables and interlinear annotation
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F // Egyptian hieroglyph format controls
            | 0x1BCA0..=0x1BCA3 // shorthand format controls
            | 0x1D173..=0x1D17A // musical symbol format controls
            | 0xE0000..=0xE0FFF // tags and variation selectors supplement
            | 0xF0000..=0x10FFFF // supplementary private use areas
    )
}

pub fn check_password(password: &str) -> Result<(), ApiError> {
    if (8..=1024).contains(&password.chars().count()) {
        Ok(())
    } else {
        Err(ApiError::unprocessable("invalid_password", "password must be 8 to 1024 characters"))
    }
}

/// Creates an account.
#[utoipa::path(
    post,
    path = "/auth/register",
    tag = "auth",
    operation_id = "register",
    request_body = Credentials,
    responses(
        (status = 201, description = "The account was created", body = UserView),
        (status = 400, description = "The body is not valid JSON", body = ErrorBody),
        (status = 409, description = "The username is taken (`username_taken`)", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 422, description = "An invalid username or password, or a body of the wrong shape", body = ErrorBody),
        (status = 429, description = "Too many attempts from this address (`Retry-After`)", body = ErrorBody),
        (status = 503, description = "The password hashers or the database are busy (`Retry-After`)", body = ErrorBody),
    ),
)]
async fn register(
    State(app): State<Arc<App>>,
    ClientIp(ip): ClientIp,
    AppJson(c): AppJson<Credentials>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    // A registration costs a password hash, as a login does.
    app.limits.check(RateLimit::LoginsPerIp, &LimitSubject::Ip(ip)).await?;
    let username = check_username(&c.username)?;
    check_password(&c.password)?;
    let user = app.create_user(&username, c.password, false).await?;
    Ok((StatusCode::CREATED, Json(UserView { id: user.id, username: user.username })))
}

/// The answer when every hashing thread is busy and the queue is full.
fn hashers_busy(_: crate::auth::HashersBusy) -> ApiError {
    ApiError::unavailable("auth_busy", "too many logins at once, retry shortly").with_retry_after(1)
}

/// Logs in: answers an access token. The body is JSON or an HTML form
/// (FastAPI's OAuth2 password form).
#[utoipa::path(
    post,
    path = "/auth/login",
    tag = "auth",
    operation_id = "login",
    request_body(content(
        (Credentials = "application/json"),
        (Credentials = "application/x-www-form-urlencoded"),
    )),
    responses(
        (status = 200, description = "The access token (sent with `Cache-Control: no-store`)", body = TokenView),
        (status = 400, description = "The body is not valid JSON", body = ErrorBody),
        (status = 401, description = "Wrong username or password (`invalid_credentials`)", body = ErrorBody),
        (status = 415, description = "The body is neither JSON nor a form", body = ErrorBody),
        (status = 422, description = "A body of the wrong shape", body = ErrorBody),
        (status = 429, description = "Too many attempts from this address or for this username (`Retry-After`)", body = ErrorBody),
        (status = 503, description = "The password hashers or the database are busy (`Retry-After`)", body = ErrorBody),
    ),
)]
async fn login(
    State(app): State<Arc<App>>,
    ClientIp(ip): ClientIp,
    JsonOrForm(c): JsonOrForm<Credentials>,
) -> ApiResult<([(axum::http::HeaderName, &'static str); 1], Json<TokenView>)> {
    // Guessing is slowed per address and per account: many addresses
    // guessing one password still meet the second limit. Every attempt
    // counts, so that a limit is met before the hash is paid for.
    app.limits.check(RateLimit::LoginsPerIp, &LimitSubject::Ip(ip)).await?;
    app.limits.check(RateLimit::LoginsPerName, &LimitSubject::username(&c.username)).await?;
    // The lookup is by the canonical key, so `ALICE` or fullwidth `ａｌｉｃｅ`
    // logs in as `alice`: the same spellings that registration refuses as
    // taken (see `Database::user_for_login`).
    let user = app.db.user_for_login(&c.username).await?;
    // Verify against a dummy hash for unknown names so that timing does not
    // tell which usernames exist.
    let hash = user.as_ref().map_or_else(|| dummy_hash().to_owned(), |u| u.password_hash.clone());
    let ok = app.passwords.verify(c.password, hash).await.map_err(hashers_busy)?;
    let user = user.filter(|_| ok).ok_or_else(|| {
        ApiError::new(StatusCode::UNAUTHORIZED, "invalid_credentials", "invalid username or password")
    })?;
    let id = UserId::parse(&user.id).map_err(ApiError::internal)?;
    let access_token = app.tokens.issue(&id)?;
    // A token must not be kept by any cache on the way.
    let no_store = [(axum::http::header::CACHE_CONTROL, "no-store")];
    Ok((no_store, Json(TokenView { access_token, token_type: "bearer", expires_in: app.tokens.ttl_seconds })))
}

/// The account of the token.
#[utoipa::path(
    get,
    path = "/auth/me",
    tag = "auth",
    operation_id = "me",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's account", body = MeView),
        (status = 401, description = "No valid token, or its account no longer exists", body = ErrorBody),
        (status = 429, description = "Over the request rate (`Retry-After`)", body = ErrorBody),
        (status = 503, description = "The database or the state store is unavailable (`Retry-After`)", body = ErrorBody),
    ),
)]
async fn me(State(app): State<Arc<App>>, CurrentUser(user): CurrentUser) -> ApiResult<Json<MeView>> {
    let found =
        app.db.user_by_id(&user).await?.ok_or_else(|| ApiError::unauthorized("the account no longer exists"))?;
    Ok(Json(MeView { is_admin: found.is_admin(), id: found.id, username: found.username }))
}

impl App {
    /// Creates an account (HTTP registration and `reportd user add`).
    pub async fn create_user(&self, username: &str, password: String, admin: bool) -> ApiResult<crate::db::User> {
        let hash = self.passwords.hash(password).await.map_err(hashers_busy)?.map_err(ApiError::internal)?;
        match self.db.create_user(&UserId::generate(), username, &hash, admin).await {
            Ok(user) => Ok(user),
            Err(e) if is_unique_violation(&e) => Err(ApiError::conflict("username_taken", "this username is taken")),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_normalised_and_invisible_characters_refused() {
        assert_eq!(check_username("  alice ").unwrap(), "alice");
        assert_eq!(check_username("ａｌｉｃｅ").unwrap(), "alice");
        assert_eq!(check_username("ALICE").unwrap(), "ALICE", "the displayed name keeps its case");
        assert_eq!(check_username("cafe\u{301}").unwrap(), "café");
        assert_eq!(check_username("\u{3000}bob\u{a0}").unwrap(), "bob");
        assert_eq!(check_username("alice smith").unwrap(), "alice smith");
        assert_eq!(check_username("张伟").unwrap(), "张伟");
        for bad in [
            "",
            "   ",
            "ali\u{200B}ce",
            "\u{FEFF}alice",
            "alice\u{200D}",
            "ali\u{200C}ce",
            "\u{202E}ecila",
            "\u{2066}alice\u{2069}",
            "alice\u{200E}",
            "alice\u{61C}",
            "alice\u{AD}",
            "alice\u{FE0F}",
            "\u{3164}",
            "alice\u{E000}",
            "alice\u{E0041}",
            "bad\nname",
            "a\u{2028}b",
        ] {
            let err = check_username(bad).unwrap_err();
            assert_eq!(err.code, "invalid_username", "{bad:?}");
        }
        // The length limit applies to the normalised name: 16 × ㍿ is 64
        // characters once expanded, 17 × ㍿ is 68.
        assert_eq!(check_username(&"a".repeat(64)).unwrap().len(), 64);
        assert!(check_username(&"a".repeat(65)).is_err());
        assert_eq!(check_username(&"㍿".repeat(16)).unwrap().chars().count(), 64);
        assert!(check_username(&"㍿".repeat(17)).is_err());
        assert!(check_username(&"a".repeat(1 << 20)).is_err());
    }
}
