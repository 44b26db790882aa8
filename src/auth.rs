//! Passwords (argon2) and access tokens (JWT, HS256 only).

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::ids::UserId;

/// Hashes a password. Argon2 is deliberately slow: call it from
/// `spawn_blocking` so it does not stall the async workers.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| anyhow::anyhow!("salt encoding failed: {e}"))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("password hashing failed: {e}"))
}

/// Checks a password against a stored hash (also slow: `spawn_blocking`).
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// Why a password could not be hashed or checked now.
#[derive(Debug, thiserror::Error)]
#[error("too many password checks at once")]
pub struct HashersBusy;

type HashJob = Box<dyn FnOnce() + Send>;

/// The threads that hash and check passwords, and their bounded queue.
///
/// An argon2id hash takes 19 MiB. On tokio's blocking pool (up to 512
/// threads) a flood of logins ran hundreds at once and left each thread's
/// allocator arena holding its 19 MiB: gigabytes, kept after the flood.
/// Here a fixed few threads (about the core count) do all of it, so the
/// memory is a few of those buffers whatever the traffic; requests beyond
/// the queue are refused at once (503) rather than piling up.
pub struct PasswordHashers {
    jobs: std::sync::mpsc::SyncSender<HashJob>,
    waiting: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl PasswordHashers {
    /// `threads` hashing threads with room for `queue` waiting jobs. The
    /// threads end when this is dropped.
    pub fn new(threads: usize, queue: usize) -> std::io::Result<Self> {
        let (jobs, rx) = std::sync::mpsc::sync_channel::<HashJob>(queue);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new().name(format!("argon2-{i}")).spawn(move || {
                loop {
                    // Holding the lock only to take a job: the others wait
                    // for the next one meanwhile.
                    let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    };
                    job();
                }
            })?;
        }
        Ok(Self { jobs, waiting: Default::default() })
    }

    /// Runs `f` on a hashing thread; [`HashersBusy`] at once when the queue
    /// is full.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, HashersBusy> {
        use std::sync::atomic::Ordering;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let waiting = self.waiting.clone();
        waiting.fetch_add(1, Ordering::AcqRel);
        let job: HashJob = Box::new(move || {
            waiting.fetch_sub(1, Ordering::AcqRel);
            let _ = tx.send(f());
        });
        if self.jobs.try_send(job).is_err() {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!("reportd_password_hash_rejected_total").increment(1);
            return Err(HashersBusy);
        }
        rx.await.map_err(|_| HashersBusy)
    }

    /// Jobs queued and not started.
    pub fn waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::Acquire)
    }

    pub async fn verify(&self, password: String, hash: String) -> Result<bool, HashersBusy> {
        self.run(move || verify_password(&password, &hash)).await
    }

    pub async fn hash(&self, password: String) -> Result<anyhow::Result<String>, HashersBusy> {
        self.run(move || hash_password(&password)).await
    }
}

/// Accounts seen to exist recently. A token stays valid until it expires,
/// but it is only as good as its account: a deleted user's token must stop
/// working. Looking the account up on every request would put a database
/// query on every poll, so a confirmed account is trusted for
/// [`AccountCheck::TRUST`].
pub struct AccountCheck {
    seen: std::sync::Mutex<std::collections::HashMap<UserId, std::time::Instant>>,
}

impl AccountCheck {
    /// How long a confirmed account is trusted: a deleted user's tokens stop
    /// working within this.
    pub const TRUST: std::time::Duration = std::time::Duration::from_secs(5);
    /// Accounts remembered at most (the map is emptied past it).
    const MAX: usize = 100_000;

    pub fn new() -> Self {
        Self { seen: Default::default() }
    }

    /// True when `user` was confirmed within [`Self::TRUST`].
    pub fn trusted(&self, user: &UserId) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(user).is_some_and(|at| at.elapsed() < Self::TRUST)
    }

    pub fn confirm(&self, user: &UserId) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= Self::MAX {
            seen.clear();
        }
        seen.insert(user.clone(), std::time::Instant::now());
    }
}

impl Default for AccountCheck {
    fn default() -> Self {
        Self::new()
    }
}

/// A valid hash of a random password, checked against when the user does not
/// exist so that a login takes as long for an unknown name as for a known one.
pub fn dummy_hash() -> &'static str {
    static HASH: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| hash_password(&uuid::Uuid::new_v4().to_string()).expect("hashing works"));
    &HASH
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

/// Signs and verifies access tokens.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    pub ttl_seconds: u64,
    /// Tokens verified already, with their user and expiry. A token's
    /// bytes are signed: the same bytes verify the same way until they
    /// expire, so the signature and claims need checking once, not on
    /// every poll (verifying was a tenth of a poll's CPU).
    verified: std::sync::Arc<std::sync::Mutex<HashMap<String, (UserId, u64)>>>,
}

/// Verified tokens remembered at most; the memory is cleared when full.
const VERIFIED_TOKENS_MAX: usize = 16_384;

impl TokenKeys {
    pub fn new(secret: &[u8], ttl_seconds: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl_seconds,
            verified: Default::default(),
        }
    }

    pub fn issue(&self, user: &UserId) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        let claims = Claims { sub: user.to_string(), iat: Some(now), exp: now + self.ttl_seconds };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).context("cannot sign a token")
    }

    /// The user a token was issued to, or `None` for any token that is not a
    /// valid, unexpired HS256 token signed with our secret.
    pub fn verify(&self, token: &str) -> Option<UserId> {
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        let verified = || self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((user, exp)) = verified().get(token)
            && now < *exp
        {
            return Some(user.clone());
        }
        if !is_plain_jws(token) {
            return None;
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok()?;
        let user = UserId::parse(&data.claims.sub).ok()?;
        let mut verified = verified();
        if verified.len() >= VERIFIED_TOKENS_MAX {
            verified.clear();
        }
        verified.insert(token.to_owned(), (user.clone(), data.claims.exp));
        Some(user)
    }
}

/// True when `token` is three canonical, unpadded base64url parts whose
/// header has no `crit` member. Decoders accept other spellings of the same
/// bytes (padding, stray bits in the last character), which would let one
/// token have many forms; and this service implements no extension that a
/// `crit` header could make mandatory (RFC 7515 §4.1.11), so it must refuse
/// any.
fn is_plain_jws(token: &str) -> bool {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 || token.len() > 8192 {
        return false;
    }
    let mut decoded = Vec::with_capacity(3);
    for part in &parts {
        let Ok(bytes) = URL_SAFE_NO_PAD.decode(part) else { return false };
        if URL_SAFE_NO_PAD.encode(&bytes) != *part {
            return false;
        }
        decoded.push(bytes);
    }
    match serde_json::from_slice::<serde_json::Value>(&decoded[0]) {
        Ok(serde_json::Value::Object(header)) => !header.contains_key("crit"),
        _ => false,
    }
}

/// The JWT secret: the configured one, else (dev only; `Config::validate`
/// refuses prod without one) a random secret generated once and kept in
/// `{data_dir}/jwt_secret` so tokens survive a restart.
pub fn load_or_create_secret(configured: Option<&str>, data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    if let Some(s) = configured {
        return Ok(s.as_bytes().to_vec());
    }
    let path = data_dir.join("jwt_secret");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim();
        if existing.len() >= 32 {
            return Ok(existing.as_bytes().to_vec());
        }
    }
    crate::db::create_private_dir(data_dir)?;
    let secret: String = {
        use rand::Rng;
        let mut rng = rand::rng();
        (0..64).map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)])).collect()
    };
    write_private(&path, &secret).with_context(|| format!("cannot write {}", path.display()))?;
    tracing::warn!(path = %path.display(), "no JWT_SECRET set: generated a development secret");
    Ok(secret.into_bytes())
}

fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(content.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_other_secrets() {
        let keys = TokenKeys::new(&[7; 32], 60);
        let user = UserId::parse("u-1").unwrap();
        let token = keys.issue(&user).unwrap();
        assert_eq!(keys.verify(&token), Some(user));
        assert_eq!(TokenKeys::new(&[8; 32], 60).verify(&token), None);
        assert_eq!(keys.verify("not.a.token"), None);
    }

    #[test]
    fn a_remembered_token_still_expires() {
        let keys = TokenKeys::new(&[7; 32], 1);
        let user = UserId::parse("u-1").unwrap();
        let token = keys.issue(&user).unwrap();
        assert_eq!(keys.verify(&token), Some(user.clone()));
        assert_eq!(keys.verify(&token), Some(user), "from memory");
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert_eq!(keys.verify(&token), None);
    }

    #[tokio::test]
    async fn hashing_runs_on_a_bounded_pool() {
        let pool = PasswordHashers::new(1, 2).unwrap();
        let h = pool.hash("correct horse".into()).await.unwrap().unwrap();
        assert!(pool.verify("correct horse".into(), h.clone()).await.unwrap());
        // One thread, room for two: a burst of ten gets some refusals at
        // once, and every accepted one completes.
        let results = futures::future::join_all((0..10).map(|_| pool.verify("wrong".into(), h.clone()))).await;
        let refused = results.iter().filter(|r| r.is_err()).count();
        assert!(refused >= 1, "{refused}");
        assert!(results.iter().filter_map(|r| r.as_ref().ok()).all(|ok| !ok));
        assert_eq!(pool.waiting(), 0);
    }

    #[test]
    fn only_plain_canonical_tokens_without_crit_are_accepted() {
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        let keys = TokenKeys::new(&[7; 32], 60);
        let user = UserId::parse("u-1").unwrap();
        let token = keys.issue(&user).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        // Padding, or a non-canonical last character, spells the same bytes.
        assert_eq!(keys.verify(&format!("{}=.{}.{}", parts[0], parts[1], parts[2])), None);
        let sig = parts[2];
        let last = sig.chars().last().unwrap();
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let sibling = alphabet
            .chars()
            .find(|c| *c != last && B64.decode(format!("{}{c}", &sig[..sig.len() - 1])).ok() == B64.decode(sig).ok());
        if let Some(c) = sibling {
            assert_eq!(keys.verify(&format!("{}.{}.{}{c}", parts[0], parts[1], &sig[..sig.len() - 1])), None);
        }
        // A signed token with a crit header is refused.
        let mut header = Header::new(Algorithm::HS256);
        header.crit = Some(vec!["exp".into()]);
        let now = chrono::Utc::now().timestamp() as u64;
        let claims = Claims { sub: "u-1".into(), exp: now + 60, iat: None };
        let crit = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&[7; 32])).unwrap();
        assert_eq!(keys.verify(&crit), None);
    }

    #[test]
    fn a_token_not_yet_valid_is_refused() {
        #[derive(Serialize)]
        struct WithNbf {
            sub: String,
            exp: u64,
            nbf: u64,
        }
        let keys = TokenKeys::new(&[7; 32], 60);
        let now = chrono::Utc::now().timestamp() as u64;
        let sign = |nbf: u64| {
            let claims = WithNbf { sub: "u-1".into(), exp: now + 600, nbf };
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(&[7; 32])).unwrap()
        };
        assert_eq!(keys.verify(&sign(now + 300)), None);
        assert!(keys.verify(&sign(now - 10)).is_some());
    }

    #[test]
    fn passwords_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("x", "not a hash"));
    }
}
