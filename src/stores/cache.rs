//! The read cache of `GET /documents`, `GET /documents/{id}` and
//! `GET /documents/search` (`REDIS_CACHE_ENABLED`, `CACHE_TTL_SECONDS`).
//!
//! **Where.** Cached responses live only in Redis, and only while the cache
//! is served by Redis ([`StateLayer::redis_for`]: `REDIS_ENABLED` and
//! `REDIS_CACHE_ENABLED` on, Redis reachable). Unlike the other features the
//! cache has no memory fallback: a per-process copy could answer one
//! instance's stale list after another instance's write, which is worse
//! than no cache at all. With the flag off or Redis down the cache is
//! bypassed and the database answers; a Redis error inside a request is
//! counted (`reportd_cache_errors_total`) and bypassed too, never a 500.
//!
//! **Keys.** A response is stored, as the exact JSON bytes of its body,
//! under `{p}:{env}:cache:{user_id}:{version}:{what}:{digest}`: the user id
//! comes from the verified token, `{what}` is `list`, `doc` or `search`, and
//! `{digest}` is the SHA-256 of the request's *normalised* parameters
//! ([`Lookup`]: defaults applied, `q` trimmed as the handler uses it, the
//! `document_ids` filter sorted), so that no client input reaches a key and
//! equivalent requests share an entry. Entries live `CACHE_TTL_SECONDS`.
//!
//! **Invalidation.** `{version}` is the integer in `{p}:{env}:cache:{user_id}:v`.
//! A change to the user's documents (an import stored, a delete) increments
//! it ([`ReadCache::invalidate`]) *before* the change is acknowledged (the
//! 204 of a delete, the `completed` status of an import), so the old entries
//! are never read again and the user never sees data older than a write they
//! were told about. A reader reads the version before it queries the
//! database, so an entry filled by a query that raced with a write is stored
//! under the old version, where nobody looks. The version key is created by
//! the first reader with a *random* value (and lives a day, refreshed by each
//! bump), and a bump of a missing version does nothing: if it expired or was
//! evicted, the next reader picks a fresh random version that no old entry
//! carries.
//!
//! **When a bump cannot be made** (Redis down, or the flag off, when nothing
//! may be written to Redis), the user id is remembered in a bounded
//! in-process set: this instance bypasses the cache for that user until a
//! later bump succeeds, retried at the next cache use and every second once
//! Redis serves the cache again. If the set overflows, this instance
//! bypasses the cache entirely until it can bump again, and then for one
//! more entry TTL. What remains: *another* instance that still reaches Redis
//! (a partition, or the flag refresh lag of `FLAGS_REFRESH_MS`) may serve an
//! entry older than that write until this instance's bump gets through, at
//! most `CACHE_TTL_SECONDS` later (the entry expires).
//!
//! **Single-flight.** Concurrent requests for one key on one instance share
//! a single Redis read and, on a miss, a single database query (a bounded
//! map of key → [`OnceCell`], removed when done). Across instances each may
//! run the query once.
//!
//! Metrics: `reportd_cache_requests_total{endpoint="list|doc|search",
//! outcome="hit|miss|bypass"}` (a request that waited for another's query
//! counts as a hit: the database was not asked) and `reportd_cache_errors_total`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use sha2::{Digest as _, Sha256};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::ids::{DocumentId, UserId};
use crate::keys::Key;
use crate::state::{
    AtomicUpdate, Backend, BackendError, Feature, RedisBackend, StateLayer, UpdateOutcome, spawn_periodic,
};

/// How long a user's version lives after its last bump (or its creation).
const VERSION_TTL: Duration = Duration::from_secs(24 * 3600);

/// Users remembered because their bump failed; past this, the whole
/// instance bypasses the cache until it can bump again.
const MAX_PENDING_USERS: usize = 10_000;

/// Keys with a query in flight; past this, requests are not coalesced (they
/// still use the cache).
const MAX_FLIGHTS: usize = 4_096;

/// Pending bumps retried by one request before it goes on (the background
/// retry takes the rest).
const FLUSH_PER_REQUEST: usize = 16;

/// Larger bodies (a document's page of up to 500 chunks can be) are
/// answered but not stored, so that one entry never costs Redis much.
const MAX_CACHED_BYTES: usize = 1024 * 1024;

/// A random first version stays below 10^12, so that versions stay exact
/// integers in Lua (whose numbers are doubles, printed with 14 digits).
const MAX_FIRST_VERSION: u64 = 1_000_000_000_000;

/// Which endpoint a cached response belongs to: `{what}` in the key and the
/// `endpoint` label of the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheView {
    List,
    Doc,
    Search,
}

impl CacheView {
    pub const ALL: [CacheView; 3] = [Self::List, Self::Doc, Self::Search];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::List => "list",
            Self::Doc => "doc",
            Self::Search => "search",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What happened to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    Bypass,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Bypass => "bypass",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The hex SHA-256 of a request's normalised parameters. It can only be
/// made by hashing, so a key never carries client input verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheDigest(String);

impl CacheDigest {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Each field is length-prefixed, so that no two different parameter
    /// lists hash the same bytes (`"ab","c"` against `"a","bc"`).
    fn of(view: CacheView, fields: &[&[u8]]) -> Self {
        let mut hasher = Sha256::new();
        // The response format's version: bump it when a cached body's shape
        // changes, so that a new binary never serves an old body.
        hasher.update(b"reportd-cache-v1\0");
        hasher.update(view.as_str().as_bytes());
        for field in fields {
            hasher.update((field.len() as u64).to_le_bytes());
            hasher.update(field);
        }
        Self(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// One cacheable read, by its normalised parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    view: CacheView,
    digest: CacheDigest,
}

impl Lookup {
    /// `GET /documents` with its limit and offset, defaults applied.
    pub fn list(limit: i64, offset: i64) -> Self {
        let view = CacheView::List;
        Self { view, digest: CacheDigest::of(view, &[&limit.to_le_bytes(), &offset.to_le_bytes()]) }
    }

    /// `GET /documents/{id}` with its chunk page, defaults applied.
    pub fn doc(id: &DocumentId, limit: i64, offset: i64) -> Self {
        let view = CacheView::Doc;
        let digest = CacheDigest::of(view, &[id.as_str().as_bytes(), &limit.to_le_bytes(), &offset.to_le_bytes()]);
        Self { view, digest }
    }

    /// `GET /documents/search` with the query as the handler searches it
    /// (trimmed), the limit with its default applied, and the filter (a set:
    /// its order and repeats do not change the answer).
    pub fn search(q: &str, limit: i64, document_ids: Option<&[DocumentId]>) -> Self {
        let view = CacheView::Search;
        let filter = document_ids.map(|ids| {
            let mut ids: Vec<&str> = ids.iter().map(DocumentId::as_str).collect();
            ids.sort_unstable();
            ids.dedup();
            // Ids never contain a comma (they are `[A-Za-z0-9_-]`).
            ids.join(",")
        });
        // "No filter" and "a filter" must differ even when the filter is empty.
        let (has_filter, filter) = match &filter {
            Some(f) => (&b"1"[..], f.as_bytes()),
            None => (&b"0"[..], &b""[..]),
        };
        let digest = CacheDigest::of(view, &[q.as_bytes(), &limit.to_le_bytes(), has_filter, filter]);
        Self { view, digest }
    }

    pub fn view(&self) -> CacheView {
        self.view
    }

    pub fn digest(&self) -> &CacheDigest {
        &self.digest
    }
}

/// `ARGV`: ttl-ms, a random first version. The user's version, created
/// with the random value when it does not exist.
const VERSION_READ_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if v then return {'found', v} end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
return {'created', ARGV[2]}
"#;

fn apply_version_read(current: Option<&str>, args: &[String]) -> (UpdateOutcome, Option<String>) {
    match current {
        Some(v) => (UpdateOutcome { verdict: "found".into(), value: Some(v.to_owned()) }, None),
        None => (UpdateOutcome { verdict: "created".into(), value: Some(args[0].clone()) }, Some(args[0].clone())),
    }
}

/// `ARGV`: ttl-ms. Increments the version and refreshes its TTL; a missing
/// version stays missing (its next reader picks a fresh random one).
const VERSION_BUMP_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing', false} end
redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return {'bumped', redis.call('GET', KEYS[1])}
"#;

fn apply_version_bump(current: Option<&str>, _args: &[String]) -> (UpdateOutcome, Option<String>) {
    match current.map(str::parse::<u64>) {
        None => (UpdateOutcome { verdict: "missing".into(), value: None }, None),
        Some(Ok(v)) => {
            let next = (v + 1).to_string();
            (UpdateOutcome { verdict: "bumped".into(), value: Some(next.clone()) }, Some(next))
        }
        // What Redis's INCR would refuse; the memory twin keeps the value.
        Some(Err(_)) => (UpdateOutcome { verdict: "rejected".into(), value: current.map(str::to_owned) }, None),
    }
}

pub static CACHE_VERSION_READ: AtomicUpdate = AtomicUpdate {
    name: "cache_version_read",
    script: LazyLock::new(|| redis::Script::new(VERSION_READ_LUA)),
    apply: apply_version_read,
};

pub static CACHE_VERSION_BUMP: AtomicUpdate = AtomicUpdate {
    name: "cache_version_bump",
    script: LazyLock::new(|| redis::Script::new(VERSION_BUMP_LUA)),
    apply: apply_version_bump,
};

/// Counts of one instance, by endpoint and outcome (the metrics are
/// process-wide; these are this cache's own, for tests and the bench).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    counts: [[u64; 3]; 3],
    pub errors: u64,
}

impl CacheStats {
    pub fn get(&self, view: CacheView, outcome: Outcome) -> u64 {
        self.counts[view.index()][outcome.index()]
    }
}

/// Users whose last bump failed, and what to do when there were too many.
#[derive(Default)]
struct Pending {
    users: HashSet<UserId>,
    /// A user could not be remembered: bypass everything until a bump
    /// gets through again.
    overflowed: bool,
    /// After an overflow: bypass everything until then (one entry TTL after
    /// Redis came back), when every entry that might predate a lost bump
    /// has expired.
    hold_until: Option<Instant>,
}

type Flight = Arc<OnceCell<Bytes>>;

struct Inner {
    state: Arc<StateLayer>,
    ttl: Duration,
    pending: Mutex<Pending>,
    /// Set while one task retries the pending bumps.
    flushing: AtomicBool,
    flights: Mutex<HashMap<Key, Flight>>,
    counts: [[AtomicU64; 3]; 3],
    errors: AtomicU64,
}

/// The per-user read cache (see the module doc).
#[derive(Clone)]
pub struct ReadCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache").field("ttl", &self.inner.ttl).finish_non_exhaustive()
    }
}

/// Takes a request's flight out of the map when it is over: when its value
/// is there, or when nobody else waits for it (its leader was cancelled or
/// failed and no follower is left to take over).
struct FlightGuard<'a> {
    flights: &'a Mutex<HashMap<Key, Flight>>,
    key: &'a Key,
    cell: Flight,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        let ours = flights.get(self.key).is_some_and(|f| Arc::ptr_eq(f, &self.cell));
        // Two references: the map's and this guard's.
        if ours && (self.cell.initialized() || Arc::strong_count(&self.cell) <= 2) {
            flights.remove(self.key);
        }
    }
}

impl ReadCache {
    pub fn new(state: Arc<StateLayer>, ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                state,
                ttl,
                pending: Mutex::new(Pending::default()),
                flushing: AtomicBool::new(false),
                flights: Mutex::new(HashMap::new()),
                counts: Default::default(),
                errors: AtomicU64::new(0),
            }),
        }
    }

    /// Retries the pending bumps every second while Redis serves the cache,
    /// so that the window in which another instance may serve an entry older
    /// than a write made here during an outage closes by itself.
    pub fn spawn_background(&self, cancel: CancellationToken) {
        let this = self.clone();
        spawn_periodic(Duration::from_secs(1), cancel, move || {
            let this = this.clone();
            async move {
                if let Some(redis) = this.redis() {
                    this.flush(&redis, usize::MAX).await;
                }
            }
        });
    }

    pub fn stats(&self) -> CacheStats {
        let mut stats = CacheStats { errors: self.inner.errors.load(Ordering::Relaxed), ..Default::default() };
        for view in CacheView::ALL {
            for outcome in [Outcome::Hit, Outcome::Miss, Outcome::Bypass] {
                stats.counts[view.index()][outcome.index()] =
                    self.inner.counts[view.index()][outcome.index()].load(Ordering::Relaxed);
            }
        }
        stats
    }

    /// True while this instance bypasses the cache for `user` because a
    /// bump of theirs has not reached Redis yet.
    pub fn is_pending(&self, user: &UserId) -> bool {
        self.pending().users.contains(user)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.inner.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn redis(&self) -> Option<Arc<RedisBackend>> {
        self.inner.state.redis_for(Feature::Cache).cloned()
    }

    fn count(&self, view: CacheView, outcome: Outcome) {
        self.inner.counts[view.index()][outcome.index()].fetch_add(1, Ordering::Relaxed);
        metrics::counter!("reportd_cache_requests_total", "endpoint" => view.as_str(), "outcome" => outcome.as_str())
            .increment(1);
    }

    fn error(&self, what: &'static str, e: &BackendError) {
        self.inner.errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("reportd_cache_errors_total").increment(1);
        tracing::debug!(error = %e, what, "cache bypassed after a Redis error");
    }

    /// The response of `lookup` for `user`: from the cache, or from `fill`
    /// (the database), which then fills the cache. `fill`'s errors are
    /// returned as they are and never cached.
    pub async fn serve<E, F, Fut>(&self, user: &UserId, lookup: Lookup, fill: F) -> Result<Bytes, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, E>>,
    {
        let view = lookup.view;
        let Some(redis) = self.usable(user).await else {
            self.count(view, Outcome::Bypass);
            return fill().await;
        };
        let version = match self.version(&redis, user).await {
            Ok(v) => v,
            Err(e) => {
                self.error("version read", &e);
                self.count(view, Outcome::Bypass);
                return fill().await;
            }
        };
        let key = self.inner.state.keys().cache_entry(user, version, view, &lookup.digest);
        let Some(cell) = self.join(&key) else {
            let (bytes, outcome) = self.read_or_fill(&redis, &key, fill).await?;
            self.count(view, outcome);
            return Ok(bytes);
        };
        let guard = FlightGuard { flights: &self.inner.flights, key: &key, cell };
        let mut led = None;
        let bytes = guard
            .cell
            .get_or_try_init(|| async {
                let (bytes, outcome) = self.read_or_fill(&redis, &key, fill).await?;
                led = Some(outcome);
                Ok(bytes)
            })
            .await?
            .clone();
        drop(guard);
        // A request that got the value of another's read or query did not
        // ask the database: a hit.
        self.count(view, led.unwrap_or(Outcome::Hit));
        Ok(bytes)
    }

    /// Redis when it serves the cache for `user` now: the flag is on, Redis
    /// is up, and no bump of this user's (or, after an overflow, of anyone's)
    /// is still owed.
    async fn usable(&self, user: &UserId) -> Option<Arc<RedisBackend>> {
        let redis = self.redis()?;
        let owed = {
            let pending = self.pending();
            !pending.users.is_empty() || pending.overflowed
        };
        if owed {
            self.flush(&redis, FLUSH_PER_REQUEST).await;
        }
        let pending = self.pending();
        let held = pending.hold_until.is_some_and(|t| Instant::now() < t);
        if pending.overflowed || held || pending.users.contains(user) {
            return None;
        }
        Some(redis)
    }

    /// The flight of `key`, joined or started; `None` when too many are in
    /// flight to track another.
    fn join(&self, key: &Key) -> Option<Flight> {
        let mut flights = self.inner.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cell) = flights.get(key) {
            return Some(cell.clone());
        }
        if flights.len() >= MAX_FLIGHTS {
            return None;
        }
        let cell = Flight::default();
        flights.insert(key.clone(), cell.clone());
        Some(cell)
    }

    async fn read_or_fill<E, F, Fut>(&self, redis: &RedisBackend, key: &Key, fill: F) -> Result<(Bytes, Outcome), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, E>>,
    {
        match redis.get(key).await {
            Ok(Some(found)) => return Ok((Bytes::from(found), Outcome::Hit)),
            Ok(None) => {}
            Err(e) => {
                self.error("read", &e);
                return Ok((fill().await?, Outcome::Bypass));
            }
        }
        let bytes = fill().await?;
        // A JSON body is always UTF-8; anything else is simply not cached.
        if bytes.len() <= MAX_CACHED_BYTES
            && let Ok(text) = std::str::from_utf8(&bytes)
            && let Err(e) = redis.set(key, text, self.inner.ttl).await
        {
            self.error("write", &e);
        }
        Ok((bytes, Outcome::Miss))
    }

    async fn version(&self, redis: &RedisBackend, user: &UserId) -> Result<u64, BackendError> {
        let key = self.inner.state.keys().cache_version(user);
        let first = rand::rng().random_range(1..MAX_FIRST_VERSION).to_string();
        let outcome = redis.update(&key, &CACHE_VERSION_READ, &[first], VERSION_TTL).await?;
        outcome
            .value
            .as_deref()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| BackendError::Command(format!("cache version is not an integer: {:?}", outcome.value)))
    }

    async fn bump(&self, redis: &RedisBackend, user: &UserId) -> Result<(), BackendError> {
        let key = self.inner.state.keys().cache_version(user);
        redis.update(&key, &CACHE_VERSION_BUMP, &[], VERSION_TTL).await.map(|_| ())
    }

    /// Makes every cached read of `user` stale: call it after a change to
    /// the user's documents is stored and before it is acknowledged. It
    /// never fails: a bump that cannot be made now is owed (see the module
    /// doc).
    pub async fn invalidate(&self, user: &UserId) {
        // Without Redis settings the cache can never serve (turning Redis on
        // needs a restart, which empties this instance's memory anyway).
        if self.inner.state.redis().is_none() {
            return;
        }
        if let Some(redis) = self.redis() {
            match self.bump(&redis, user).await {
                Ok(()) => {
                    self.pending().users.remove(user);
                    return;
                }
                Err(e) => self.error("bump", &e),
            }
        }
        let mut pending = self.pending();
        if pending.users.len() < MAX_PENDING_USERS {
            pending.users.insert(user.clone());
        } else if !pending.users.contains(user) {
            if !pending.overflowed {
                tracing::warn!("too many cache invalidations owed: the cache is bypassed until Redis serves it again");
            }
            pending.overflowed = true;
        }
    }

    /// Retries at most `limit` owed bumps (one task at a time); stops at the
    /// first failure. Once none is owed, an overflow turns into a hold of
    /// one entry TTL.
    async fn flush(&self, redis: &RedisBackend, limit: usize) {
        if self.inner.flushing.swap(true, Ordering::AcqRel) {
            return;
        }
        let batch: Vec<UserId> = self.pending().users.iter().take(limit).cloned().collect();
        let mut failed = false;
        for user in &batch {
            match self.bump(redis, user).await {
                Ok(()) => {
                    self.pending().users.remove(user);
                }
                Err(e) => {
                    self.error("bump retry", &e);
                    failed = true;
                    break;
                }
            }
        }
        {
            let mut pending = self.pending();
            if !failed && pending.users.is_empty() && pending.overflowed {
                pending.overflowed = false;
                pending.hold_until = Some(Instant::now() + self.inner.ttl);
            }
        }
        self.inner.flushing.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeySpace;

    fn id(s: &str) -> DocumentId {
        DocumentId::parse(s).unwrap()
    }

    #[test]
    fn keys_follow_the_templates() {
        let ks = KeySpace::new("langextract", "dev").unwrap();
        let u = UserId::parse("u1").unwrap();
        assert_eq!(ks.cache_version(&u).as_str(), "langextract:dev:cache:u1:v");
        let lookup = Lookup::search("火星", 10, None);
        let key = ks.cache_entry(&u, 42, lookup.view(), lookup.digest());
        let parts: Vec<&str> = key.as_str().split(':').collect();
        assert_eq!(&parts[..6], ["langextract", "dev", "cache", "u1", "42", "search"]);
        assert_eq!(parts.len(), 7);
        assert_eq!(parts[6].len(), 64);
        assert!(parts[6].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    #[test]
    fn client_input_never_reaches_a_key() {
        let ks = KeySpace::new("p", "e").unwrap();
        let u = UserId::parse("u").unwrap();
        for q in ["a:b", "*", "x\ny", "\0", "foo bar", "{p}:e:cache:u:v"] {
            let l = Lookup::search(q, 10, None);
            let key = ks.cache_entry(&u, 1, l.view(), l.digest());
            assert!(!key.as_str().contains(q), "{q:?} in {key}");
            assert_eq!(key.as_str().matches(':').count(), 6, "{key}");
        }
    }

    #[test]
    fn equivalent_requests_share_a_digest() {
        // The filter is a set: order and repeats do not matter.
        let a = Lookup::search("mars", 10, Some(&[id("b"), id("a")]));
        let b = Lookup::search("mars", 10, Some(&[id("a"), id("b"), id("a")]));
        assert_eq!(a, b);
        assert_eq!(Lookup::list(20, 0), Lookup::list(20, 0));
        assert_eq!(Lookup::doc(&id("d"), 50, 0), Lookup::doc(&id("d"), 50, 0));
    }

    #[test]
    fn different_requests_get_different_digests() {
        let all = [
            Lookup::list(20, 0),
            Lookup::list(20, 1),
            Lookup::list(21, 0),
            Lookup::doc(&id("d"), 20, 0),
            Lookup::doc(&id("e"), 20, 0),
            Lookup::doc(&id("d"), 20, 1),
            Lookup::search("mars", 10, None),
            Lookup::search("mars ", 10, None),
            Lookup::search("Mars", 10, None),
            Lookup::search("mars", 11, None),
            Lookup::search("mars", 10, Some(&[id("a")])),
            Lookup::search("mars", 10, Some(&[id("a"), id("b")])),
            Lookup::search("mars", 10, Some(&[])),
            // Length prefixes: moving bytes between fields changes the digest.
            Lookup::search("ab", 10, Some(&[id("c")])),
            Lookup::search("a", 10, Some(&[id("bc")])),
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a.digest(), b.digest(), "{a:?} / {b:?}");
            }
        }
    }

    #[test]
    fn the_memory_twins_follow_the_scripts() {
        let (o, store) = apply_version_read(None, &["7".into()]);
        assert_eq!((o.verdict.as_str(), o.value.as_deref(), store.as_deref()), ("created", Some("7"), Some("7")));
        let (o, store) = apply_version_read(Some("9"), &["7".into()]);
        assert_eq!((o.verdict.as_str(), o.value.as_deref(), store), ("found", Some("9"), None));
        let (o, store) = apply_version_bump(None, &[]);
        assert_eq!((o.verdict.as_str(), store), ("missing", None));
        let (o, store) = apply_version_bump(Some("9"), &[]);
        assert_eq!((o.verdict.as_str(), store.as_deref()), ("bumped", Some("10")));
    }
}
