//! The state layer: which store serves each kind of state, decided in one place.
//!
//! Every kind of state (import task status, chat sessions, cache, rate
//! limits) is one [`Feature`]. A feature is served by Redis when Redis
//! connection settings are given, `REDIS_ENABLED` and the feature's own flag
//! are on (environment or run-time override), and the circuit breaker is
//! closed; otherwise by process memory. [`StateLayer::read`] and
//! [`StateLayer::write`] implement the flag matrix of SPEC §4 once for all
//! features:
//!
//! | situation | read | write |
//! | --- | --- | --- |
//! | flag off | memory | memory |
//! | Redis healthy | Redis, then memory, merged (memory holds what was written before the flag was on, or during an outage) | Redis, and memory too when `REDIS_DUAL_WRITE=1` |
//! | Redis down, `REDIS_FALLBACK=memory` | memory merged with a replica (counted, logged once) | memory |
//! | Redis down, `error` | a replica, else 503 | 503 |
//! | Redis down, `readonly` | memory merged with a replica | 503 |
//!
//! "A replica" exists with Sentinel and Cluster ([`RedisBackend::replica`]):
//! during a failover it still holds the last shared state, so reads of what
//! another instance wrote keep answering.
//!
//! The typed stores (e.g. [`crate::stores::tasks::TaskStatusStore`]) only say *what*
//! to do with a [`Backend`]; this module says *which* backend does it.

pub mod backend;
pub mod flags;
pub mod memory;
pub mod redis;
pub mod topology;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use backend::{AtomicUpdate, Backend, BackendError, UpdateOutcome};
pub use flags::{Flag, Flags};
pub use memory::MemoryBackend;
pub use redis::{RedisBackend, RedisSettings};
pub use topology::{RedisTopology, TopologyReport};

use crate::keys::{Key, KeySpace};

/// Carries one key a store wrote to memory during an outage back to Redis
/// once Redis is back ([`StateLayer::on_recovery`]).
pub type Repair = Arc<dyn Fn(Key) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// At most this many keys written during an outage are remembered for
/// repair (the rest are repaired by the stores' merge on read).
const MAX_OUTAGE_KEYS: usize = 100_000;

/// A kind of state with its own flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    TaskStatus,
    ChatSession,
    Cache,
    RateLimit,
}

impl Feature {
    pub const ALL: [Feature; 4] = [Self::TaskStatus, Self::ChatSession, Self::Cache, Self::RateLimit];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::TaskStatus => "task_status",
            Self::ChatSession => "chat_session",
            Self::Cache => "cache",
            Self::RateLimit => "rate_limit",
        }
    }

    /// Words for an error message.
    pub fn label(self) -> &'static str {
        match self {
            Self::TaskStatus => "task status",
            Self::ChatSession => "the chat session store",
            Self::Cache => "the cache",
            Self::RateLimit => "rate limiting",
        }
    }
}

/// What to do when Redis fails (`REDIS_FALLBACK`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FallbackMode {
    /// Serve reads and writes from memory, log a warning, count it.
    Memory,
    /// Answer 503.
    Error,
    /// Serve reads from memory, answer 503 to writes.
    Readonly,
}

/// A state operation that could not be served.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{} unavailable", feature.as_str())]
    Unavailable { feature: Feature },
    #[error("{} read-only", feature.as_str())]
    ReadOnly { feature: Feature },
    #[error("{0}")]
    Internal(String),
}

/// Where a feature's calls go right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Flag off (or no Redis configured): memory, as designed.
    Memory,
    Redis,
    /// Redis wanted but down: the fallback mode decides.
    Fallback,
}

/// A feature's serving backend for `/readyz` and `/metrics`.
#[derive(Debug, Clone, Serialize)]
pub struct FeatureStatus {
    /// `redis` or `memory`: where reads are served from now.
    pub backend: &'static str,
    /// Serving from a fallback (or refusing) because Redis is down.
    pub degraded: bool,
    /// `shared` when every instance sees the same state, `instance` when each
    /// instance has its own (memory).
    pub scope: &'static str,
    /// Requests are refused (503) under `REDIS_FALLBACK=error`.
    pub refusing: bool,
}

pub struct StateLayer {
    keys: KeySpace,
    memory: Arc<MemoryBackend>,
    redis: Option<Arc<RedisBackend>>,
    flags: Arc<Flags>,
    dual_write: bool,
    fallback: FallbackMode,
    /// Keys written to memory while Redis was down, by feature.
    outage_writes: std::sync::Mutex<HashMap<Feature, std::collections::BTreeSet<String>>>,
    repairs: std::sync::RwLock<HashMap<Feature, Repair>>,
}

impl StateLayer {
    pub fn new(
        keys: KeySpace,
        memory: Arc<MemoryBackend>,
        redis: Option<Arc<RedisBackend>>,
        flags: Arc<Flags>,
        dual_write: bool,
        fallback: FallbackMode,
    ) -> Self {
        Self {
            keys,
            memory,
            redis,
            flags,
            dual_write,
            fallback,
            outage_writes: Default::default(),
            repairs: Default::default(),
        }
    }

    pub fn keys(&self) -> &KeySpace {
        &self.keys
    }
    pub fn flags(&self) -> &Arc<Flags> {
        &self.flags
    }
    pub fn memory(&self) -> &Arc<MemoryBackend> {
        &self.memory
    }
    pub fn redis(&self) -> Option<&Arc<RedisBackend>> {
        self.redis.as_ref()
    }

    fn route(&self, feature: Feature) -> Route {
        match &self.redis {
            Some(redis) if self.flags.redis_wanted(feature) => {
                if redis.is_available() {
                    Route::Redis
                } else {
                    Route::Fallback
                }
            }
            _ => Route::Memory,
        }
    }

    /// The Redis client when `feature` is served by Redis right now (its
    /// flags are on and Redis is reachable), for the stores whose Redis form
    /// has no memory twin (the import stream: its fallback is an in-process
    /// queue, chosen by the store).
    pub fn redis_for(&self, feature: Feature) -> Option<&Arc<RedisBackend>> {
        match self.route(feature) {
            Route::Redis => self.redis.as_ref(),
            _ => None,
        }
    }

    /// True while `feature` wants Redis and Redis is down (its calls go to
    /// the fallback).
    pub fn degraded(&self, feature: Feature) -> bool {
        self.route(feature) == Route::Fallback
    }

    /// While `feature` is degraded: the shared value of `key` as a replica
    /// holds it (Sentinel, Cluster), for a write that needs the state it
    /// changes — the instance whose memory never had a task can still
    /// advance it during a failover.
    pub async fn replica_copy(&self, feature: Feature, key: &Key) -> Option<String> {
        if !self.degraded(feature) {
            return None;
        }
        let replica = self.redis.as_ref()?.replica()?;
        Self::timed(feature, "read", "replica", replica.get(key)).await.ok().flatten()
    }

    /// Notes that `key` of `feature` was written to memory during an outage:
    /// when Redis is back, the repair registered for `feature` carries it
    /// there, so that every instance sees it (not only the next read on this
    /// one).
    pub fn written_during_outage(&self, feature: Feature, key: &Key) {
        let mut pending = self.outage_writes.lock().expect("lock");
        if pending.values().map(|keys| keys.len()).sum::<usize>() < MAX_OUTAGE_KEYS {
            pending.entry(feature).or_default().insert(key.as_str().to_owned());
        }
    }

    /// Registers how `feature` carries a key written during an outage back
    /// to Redis (see [`Self::written_during_outage`]).
    pub fn on_recovery(&self, feature: Feature, repair: Repair) {
        self.repairs.write().expect("lock").insert(feature, repair);
    }

    /// Redis is back: every key written to memory meanwhile is repaired, one
    /// at a time, for the features that are served by Redis again.
    async fn recovered(&self) {
        let pending = std::mem::take(&mut *self.outage_writes.lock().expect("lock"));
        for (feature, keys) in pending {
            let repair = self.repairs.read().expect("lock").get(&feature).cloned();
            let Some(repair) = repair else { continue };
            let count = keys.len();
            for raw in keys {
                if let Some(key) = self.keys.existing(&raw) {
                    repair(key).await;
                }
            }
            tracing::info!(
                feature = feature.as_str(),
                keys = count,
                "redis back: state written during the outage carried to it"
            );
        }
    }

    pub fn feature_status(&self, feature: Feature) -> FeatureStatus {
        let memory = FeatureStatus { backend: "memory", degraded: false, scope: "instance", refusing: false };
        match self.route(feature) {
            Route::Memory => memory,
            Route::Redis => FeatureStatus { backend: "redis", scope: "shared", ..memory },
            Route::Fallback => match self.fallback {
                FallbackMode::Memory | FallbackMode::Readonly => FeatureStatus { degraded: true, ..memory },
                FallbackMode::Error => {
                    FeatureStatus { backend: "redis", degraded: true, scope: "shared", refusing: true }
                }
            },
        }
    }

    pub fn all_feature_status(&self) -> HashMap<Feature, FeatureStatus> {
        Feature::ALL.into_iter().map(|f| (f, self.feature_status(f))).collect()
    }

    fn memory_backend(&self) -> Arc<dyn Backend> {
        self.memory.clone()
    }

    /// Runs one state operation, timed into
    /// `reportd_state_op_duration_seconds{feature,op,backend}`.
    async fn timed<T>(feature: Feature, op: &'static str, backend: &'static str, call: impl Future<Output = T>) -> T {
        let started = std::time::Instant::now();
        let out = call.await;
        metrics::histogram!(
            "reportd_state_op_duration_seconds",
            "feature" => feature.as_str(),
            "op" => op,
            "backend" => backend
        )
        .record(started.elapsed().as_secs_f64());
        out
    }

    fn count_fallback(feature: Feature, op: &'static str) {
        metrics::counter!("reportd_state_fallback_total", "feature" => feature.as_str(), "op" => op).increment(1);
    }

    /// Reads through the flag matrix. When Redis serves, memory is read too
    /// and `merge(redis, memory)` decides what to answer (usually Redis's
    /// value, else memory's: state written before the flag was turned on or
    /// during an outage).
    pub async fn read<T, F, Fut>(
        &self,
        feature: Feature,
        op: F,
        merge: impl FnOnce(Option<T>, Option<T>) -> Option<T>,
    ) -> Result<Option<T>, StateError>
    where
        F: Fn(Arc<dyn Backend>) -> Fut,
        Fut: Future<Output = Result<Option<T>, BackendError>>,
    {
        let from_memory = || async {
            Self::timed(feature, "read", "memory", op(self.memory_backend()))
                .await
                .map_err(|e| StateError::Internal(e.to_string()))
        };
        let route = self.route(feature);
        if route == Route::Redis {
            let redis: Arc<dyn Backend> = self.redis.clone().expect("route is Redis only with a client");
            match Self::timed(feature, "read", "redis", op(redis)).await {
                Ok(found) => {
                    let local = from_memory().await?;
                    return Ok(merge(found, local));
                }
                Err(BackendError::Command(e)) => return Err(StateError::Internal(e)),
                Err(BackendError::Unavailable(_)) => {}
            }
        }
        if route == Route::Memory {
            return from_memory().await;
        }
        // No master reachable: this instance's memory (what it wrote during
        // the outage) merged with a replica's copy, which holds the shared
        // state as it was when the master went away — a task another
        // instance created or advanced is still found, and a stale copy
        // left in memory by dual write does not win over a newer shared one.
        let local = match self.fallback {
            FallbackMode::Error => None,
            _ => {
                Self::count_fallback(feature, "read");
                from_memory().await?
            }
        };
        if let Some(replica) = self.redis.as_ref().and_then(|r| r.replica()) {
            let replica: Arc<dyn Backend> = replica;
            // Twice: a promotion cuts the replica's connections, and the
            // second try opens a new one.
            for _ in 0..2 {
                match Self::timed(feature, "read", "replica", op(replica.clone())).await {
                    Ok(found) => {
                        metrics::counter!("reportd_state_replica_reads_total", "feature" => feature.as_str())
                            .increment(1);
                        return Ok(merge(found, local));
                    }
                    Err(e) => tracing::debug!(feature = feature.as_str(), error = %e, "replica read failed"),
                }
            }
            // The shared state exists but could not be read: "unknown", not
            // "absent".
            if local.is_none() {
                return Err(StateError::Unavailable { feature });
            }
        }
        match self.fallback {
            FallbackMode::Error => Err(StateError::Unavailable { feature }),
            _ => Ok(local),
        }
    }

    /// Writes through the flag matrix (see the module table).
    pub async fn write<T, F, Fut>(&self, feature: Feature, op: F) -> Result<T, StateError>
    where
        F: Fn(Arc<dyn Backend>) -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        let to_memory = || async {
            Self::timed(feature, "write", "memory", op(self.memory_backend()))
                .await
                .map_err(|e| StateError::Internal(e.to_string()))
        };
        let route = self.route(feature);
        if route == Route::Redis {
            let redis: Arc<dyn Backend> = self.redis.clone().expect("route is Redis only with a client");
            match Self::timed(feature, "write", "redis", op(redis)).await {
                Ok(value) => {
                    if self.dual_write {
                        to_memory().await?;
                    }
                    return Ok(value);
                }
                Err(BackendError::Command(e)) => return Err(StateError::Internal(e)),
                Err(BackendError::Unavailable(_)) => {}
            }
        }
        if route != Route::Memory {
            match self.fallback {
                FallbackMode::Error => return Err(StateError::Unavailable { feature }),
                FallbackMode::Readonly => return Err(StateError::ReadOnly { feature }),
                FallbackMode::Memory => Self::count_fallback(feature, "write"),
            }
        }
        to_memory().await
    }

    /// A write for state that must always be decided somewhere (rate
    /// limits, leases): Redis when the feature is served by Redis, else, and
    /// whenever Redis fails, this process's memory, whatever
    /// `REDIS_FALLBACK` says (a limit is never lifted, and never a 503).
    pub async fn write_or_local<T, F, Fut>(&self, feature: Feature, op: F) -> Result<T, StateError>
    where
        F: Fn(Arc<dyn Backend>) -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        let route = self.route(feature);
        if route == Route::Redis {
            let redis: Arc<dyn Backend> = self.redis.clone().expect("route is Redis only with a client");
            match Self::timed(feature, "write", "redis", op(redis)).await {
                Ok(value) => return Ok(value),
                Err(e) => tracing::debug!(feature = feature.as_str(), error = %e, "served from memory"),
            }
        }
        if route != Route::Memory {
            Self::count_fallback(feature, "write");
        }
        Self::timed(feature, "write", "memory", op(self.memory_backend()))
            .await
            .map_err(|e| StateError::Internal(e.to_string()))
    }

    /// Starts the background work: memory sweeping, Redis health probing and
    /// flag refreshing. All of it stops when `cancel` fires.
    pub fn spawn_background(
        self: &Arc<Self>,
        health_every: Duration,
        flags_every: Duration,
        cancel: CancellationToken,
    ) {
        let memory = self.memory.clone();
        spawn_periodic(Duration::from_secs(5), cancel.clone(), move || {
            memory.sweep();
            async {}
        });
        let Some(redis) = self.redis.clone() else { return };
        let this = self.clone();
        spawn_periodic(health_every, cancel.clone(), move || {
            let (redis, this) = (redis.clone(), this.clone());
            async move {
                let was_up = redis.is_available();
                if redis.probe().await && !was_up {
                    this.recovered().await;
                }
            }
        });
        let this = self.clone();
        spawn_periodic(flags_every, cancel, move || {
            let this = this.clone();
            async move { this.refresh_flags().await }
        });
    }

    /// Reloads the run-time overrides from the flags hash. Keeps the last
    /// known overrides while Redis cannot be read.
    pub async fn refresh_flags(&self) {
        let Some(redis) = &self.redis else { return };
        match redis.hgetall(&self.keys.flags()).await {
            Ok(hash) => self.change_flags(|flags| flags.load_hash(&hash)).await,
            Err(e) => tracing::debug!(error = %e, "flag overrides not refreshed"),
        }
    }

    /// Applies a change of the flags. A feature about to move from Redis to
    /// memory (a run-time rollback) first gets the shared state it served
    /// carried into this instance's memory, so that nothing another instance
    /// wrote is lost to this one (dual write only kept what each instance
    /// wrote itself); until the flag flips, writes still reach both.
    pub async fn change_flags(&self, change: impl Fn(&Flags)) {
        let preview = self.flags.preview(&change);
        if preview.overrides() == self.flags.overrides() {
            return;
        }
        for feature in Feature::ALL {
            if self.flags.redis_wanted(feature) && !preview.redis_wanted(feature) {
                self.carry_to_memory(feature).await;
            }
        }
        change(&self.flags);
        tracing::info!(overrides = ?self.flags.overrides(), "flag overrides changed");
    }

    /// Copies `feature`'s keys from Redis into memory, keeping their TTLs
    /// (at most `MEMORY_MAX_KEYS`); what memory holds already is kept when
    /// Redis has nothing newer to say (the typed stores merge on read).
    async fn carry_to_memory(&self, feature: Feature) {
        let (Some(redis), Some(pattern)) = (&self.redis, self.keys.feature_pattern(feature)) else { return };
        match redis.scan_strings(&pattern, self.memory.capacity()).await {
            Ok(found) => {
                let mut carried = 0;
                for (raw, value, ttl) in found {
                    if let Some(key) = self.keys.existing(&raw)
                        && self.memory.set(&key, &value, ttl).await.is_ok()
                    {
                        carried += 1;
                    }
                }
                tracing::info!(
                    feature = feature.as_str(),
                    keys = carried,
                    "rolled back to memory: shared state carried over"
                );
            }
            Err(e) => {
                tracing::warn!(feature = feature.as_str(), error = %e, "rolled back to memory without the shared state")
            }
        }
    }
}

/// Runs `tick` every `every` (never two at once: a slow tick delays the
/// next) until `cancel` fires.
pub fn spawn_periodic<F, Fut>(every: Duration, cancel: CancellationToken, mut tick: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = interval.tick() => tick().await,
            }
        }
    });
}
