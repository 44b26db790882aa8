//! Redis as a [`Backend`], made to fail fast, on one server, Sentinel or
//! Cluster alike.
//!
//! redis-rs on its defaults waits seconds for a dead server on every command
//! (NOTES.md). Here connections are opened lazily with short connection and
//! response timeouts, every command is bounded by `REDIS_COMMAND_TIMEOUT_MS`,
//! and a circuit breaker opens on the first failure that means "Redis is not
//! there for now" ([`is_unavailability`]): while it is open no request
//! touches Redis at all and callers fall back at once. A monitor task probes
//! Redis every `REDIS_HEALTH_INTERVAL_MS` ([`RedisBackend::probe`]: the
//! master found again through the sentinels, or every cluster slot served);
//! the first good probe closes the breaker, so the service uses Redis again
//! by itself when it returns or has failed over. Which servers commands go
//! to is [`super::topology`]'s business; with Sentinel or Cluster, a second
//! backend of the replica role serves reads while no master can
//! ([`RedisBackend::replica`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use redis::AsyncCommands;

use super::backend::{AtomicUpdate, Backend, BackendError, UpdateOutcome};
pub use super::topology::is_unavailability;
use super::topology::{Conn, RedisTopology, Role, Topology, TopologyReport};
use crate::keys::Key;

/// Where the Redis deployment is and the client's timeouts.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// The server (single mode); with Sentinel or Cluster it only carries the
    /// credentials and the database of the data nodes.
    pub url: String,
    pub topology: RedisTopology,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub health_interval: Duration,
}

/// Open = Redis is considered down and is not called.
#[derive(Default)]
pub struct CircuitBreaker {
    open: AtomicBool,
    /// The replicas' breaker: logged at debug level and not counted.
    replica: bool,
}

impl CircuitBreaker {
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    fn trip(&self, why: &str) {
        if !self.open.swap(true, Ordering::AcqRel) {
            if self.replica {
                tracing::debug!(reason = why, "redis replicas unreachable");
                return;
            }
            metrics::counter!("reportd_redis_breaker_trips_total").increment(1);
            tracing::warn!(reason = why, "redis unreachable: circuit opened, serving from fallback");
        }
    }

    fn close(&self) {
        if self.open.swap(false, Ordering::AcqRel) && !self.replica {
            tracing::info!("redis reachable again: circuit closed");
        }
    }
}

pub struct RedisBackend {
    topology: Topology,
    /// Reads while no master is reachable (Sentinel, Cluster).
    replica: Option<Arc<RedisBackend>>,
    settings: RedisSettings,
    breaker: CircuitBreaker,
    command_timeout: Duration,
}

impl RedisBackend {
    /// Builds the client without connecting: the service starts (and serves
    /// from its fallback) even when Redis is down at start.
    pub fn new(settings: &RedisSettings) -> anyhow::Result<Self> {
        let invalid = |e: redis::RedisError| anyhow::anyhow!("invalid Redis connection settings: {e}");
        let topology = Topology::new(settings, Role::Primary).map_err(invalid)?.expect("a primary always exists");
        let replica = Topology::new(settings, Role::Replica).map_err(invalid)?.map(|topology| {
            Arc::new(Self {
                topology,
                replica: None,
                settings: settings.clone(),
                // Closed by the first probe that finds a replica.
                breaker: CircuitBreaker { open: AtomicBool::new(true), replica: true },
                command_timeout: settings.command_timeout,
            })
        });
        Ok(Self {
            topology,
            replica,
            settings: settings.clone(),
            breaker: CircuitBreaker::default(),
            command_timeout: settings.command_timeout,
        })
    }

    /// `single`, `sentinel` or `cluster`.
    pub fn mode(&self) -> &'static str {
        self.topology.kind().mode()
    }

    /// What the last probe learned of the deployment.
    pub fn topology(&self) -> TopologyReport {
        self.topology.report()
    }

    /// The replicas' read-only backend, when it may be asked now: there are
    /// replicas (Sentinel, Cluster) and the last probe found one answering.
    pub fn replica(&self) -> Option<Arc<RedisBackend>> {
        self.replica.clone().filter(|r| r.is_available())
    }

    /// A connection of its own for blocking reads (`XREADGROUP BLOCK`), which
    /// would hold up every other command on a shared connection and outlast
    /// the normal command timeout (NOTES.md). It goes to the current master.
    pub async fn blocking_reader(&self, block: Duration) -> Result<StreamReader, BackendError> {
        if self.breaker.is_open() {
            return Err(BackendError::Unavailable("circuit open".into()));
        }
        let open = self.topology.dedicated(block + self.command_timeout);
        match tokio::time::timeout(self.settings.connect_timeout * 2 + self.command_timeout, open).await {
            Ok(Ok(conn)) => Ok(StreamReader { conn, block }),
            Ok(Err(e)) => Err(BackendError::Unavailable(e.to_string())),
            Err(_) => Err(BackendError::Unavailable("connect timed out".into())),
        }
    }

    /// True unless the breaker is open.
    pub fn is_available(&self) -> bool {
        !self.breaker.is_open()
    }

    /// Runs one command under the breaker and the command timeout. `op`
    /// names it in the metrics (a closed set: this module's operations and
    /// the names of the atomic updates): `reportd_redis_command_duration_seconds{op}`
    /// and `reportd_redis_errors_total{op,kind}`.
    async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, BackendError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let error = |kind: &'static str| metrics::counter!("reportd_redis_errors_total", "op" => op, "kind" => kind);
        if self.breaker.is_open() {
            error("circuit_open").increment(1);
            return Err(BackendError::Unavailable("circuit open".into()));
        }
        let started = std::time::Instant::now();
        let command = async { f(self.topology.conn().await?).await };
        let result = tokio::time::timeout(self.command_timeout, command).await;
        metrics::histogram!("reportd_redis_command_duration_seconds", "op" => op)
            .record(started.elapsed().as_secs_f64());
        match result {
            Err(_) => {
                error("timeout").increment(1);
                self.unavailable("command timed out");
                Err(BackendError::Unavailable("command timed out".into()))
            }
            Ok(Err(e)) if is_unavailability(&e) => {
                error("unavailable").increment(1);
                self.unavailable(&e.to_string());
                Err(BackendError::Unavailable(e.to_string()))
            }
            Ok(Err(e)) => {
                error("command").increment(1);
                Err(BackendError::Command(e.to_string()))
            }
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// After a failure that says Redis is not there: the connection is
    /// looked up again next time (Sentinel), and the breaker opens — but
    /// not the replicas' breaker, which only probes move: a replica whose
    /// connection was cut (a promotion kills client connections) is asked
    /// again at once, on a new connection.
    fn unavailable(&self, why: &str) {
        self.topology.forget();
        if !self.breaker.replica {
            self.breaker.trip(why);
        }
    }

    /// Looks at the deployment, ignoring the breaker, and closes or opens
    /// the breaker by what it finds ([`Topology::check`]): the master answers
    /// as a master (a demoted master counts as down, or the breaker would
    /// close on every probe and trip again on every write; with Sentinel the
    /// master is looked up again first), or every cluster slot is served.
    /// The replicas (Sentinel, Cluster) are probed too.
    pub async fn probe(&self) -> bool {
        let limit = self.settings.connect_timeout * 2 + self.command_timeout * 4;
        let checked = match tokio::time::timeout(limit, self.topology.check()).await {
            Ok(result) => result,
            Err(_) => Err("probe timed out".to_owned()),
        };
        // The replicas are probed always, so that reads can go to them the
        // moment the master fails.
        if let Some(replica) = &self.replica {
            Box::pin(replica.probe()).await;
        }
        match checked {
            Ok(()) => {
                self.breaker.close();
                true
            }
            Err(why) => {
                self.breaker.trip(&why);
                false
            }
        }
    }

    // Streams with a consumer group (the import queue).

    /// Adds an entry to the stream `key` unless it already holds `max_len`
    /// live entries (`Ok(None)`: the queue is full), creating the stream and
    /// its consumer `group` if needed, and refreshing the stream's TTL.
    pub async fn stream_add(
        &self,
        key: &Key,
        group: &str,
        fields: &[(&str, &str)],
        max_len: u64,
        ttl: Duration,
    ) -> Result<Option<String>, BackendError> {
        let k = key.as_str().to_owned();
        let group = group.to_owned();
        let fields: Vec<String> = fields.iter().flat_map(|(f, v)| [f.to_string(), v.to_string()]).collect();
        self.call("stream_add", |mut c| async move {
            let mut inv = STREAM_ADD.key(k);
            inv.arg(group).arg(max_len).arg(millis(ttl));
            for f in &fields {
                inv.arg(f);
            }
            inv.invoke_async(&mut c).await
        })
        .await
    }

    /// Creates the stream `key` (empty) and its consumer `group` if missing,
    /// with a TTL.
    pub async fn stream_create_group(&self, key: &Key, group: &str, ttl: Duration) -> Result<(), BackendError> {
        let k = key.as_str().to_owned();
        let group = group.to_owned();
        self.call("stream_create_group", |mut c| async move {
            let mut inv = STREAM_CREATE_GROUP.key(k);
            inv.arg(group).arg(millis(ttl));
            inv.invoke_async::<()>(&mut c).await
        })
        .await
    }

    /// Takes over at most `count` entries that their consumers have not
    /// touched for `min_idle` (their worker died), for `consumer`.
    pub async fn stream_autoclaim(
        &self,
        key: &Key,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<StreamEntry>, BackendError> {
        let k = key.as_str().to_owned();
        let (group_name, consumer) = (group.to_owned(), consumer.to_owned());
        let reply: redis::streams::StreamAutoClaimReply = self
            .call("stream_autoclaim", |mut c| async move {
                redis::cmd("XAUTOCLAIM")
                    .arg(&k)
                    .arg(&group_name)
                    .arg(&consumer)
                    .arg(millis(min_idle))
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        if !reply.deleted_ids.is_empty() {
            // Pending entries whose data is gone cannot be run: forget them.
            for id in &reply.deleted_ids {
                let _ = self.stream_done(key, group, id).await;
            }
        }
        Ok(reply.claimed.iter().map(StreamEntry::from).collect())
    }

    /// The heartbeat of a running entry: resets its idle time, so that no
    /// other instance takes it over while its worker lives.
    pub async fn stream_touch(&self, key: &Key, group: &str, consumer: &str, id: &str) -> Result<(), BackendError> {
        let k = key.as_str().to_owned();
        let (group, consumer, id) = (group.to_owned(), consumer.to_owned(), id.to_owned());
        self.call("stream_touch", |mut c| async move {
            redis::cmd("XCLAIM")
                .arg(&k)
                .arg(&group)
                .arg(&consumer)
                .arg(0)
                .arg(&id)
                .arg("JUSTID")
                .query_async::<redis::Value>(&mut c)
                .await
        })
        .await
        .map(|_| ())
    }

    /// Acknowledges an entry and deletes it: the job has ended.
    pub async fn stream_done(&self, key: &Key, group: &str, id: &str) -> Result<(), BackendError> {
        let k = key.as_str().to_owned();
        let (group, id) = (group.to_owned(), id.to_owned());
        self.call("stream_done", |mut c| async move {
            let mut pipe = redis::pipe();
            pipe.atomic().xack(&k, &group, &[&id]).ignore().xdel(&k, &[&id]).ignore();
            pipe.query_async::<()>(&mut c).await
        })
        .await
    }

    /// Every key matching `pattern` (at most `limit`), from every data node
    /// (each cluster master answers SCAN for its own keys only); SCAN, so
    /// Redis is never blocked for long.
    pub async fn scan_keys(&self, pattern: &str, limit: usize) -> Result<Vec<String>, BackendError> {
        let nodes = self.call("scan", |_| async { self.topology.data_nodes().await }).await?;
        let mut out = Vec::new();
        for node in &nodes {
            let mut cursor = 0u64;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(500);
                let (next, keys): (u64, Vec<String>) =
                    self.call("scan", |_| async { self.topology.on_node(node, &scan).await }).await?;
                out.extend(keys);
                if out.len() >= limit {
                    out.truncate(limit);
                    return Ok(out);
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(out)
    }

    /// Every string key matching `pattern` with its value and remaining TTL
    /// (at most `limit` keys). One script per key, many at a time: each
    /// touches one key, so it runs on any topology.
    pub async fn scan_strings(&self, pattern: &str, limit: usize) -> Result<Vec<StringEntry>, BackendError> {
        let keys = self.scan_keys(pattern, limit).await?;
        let found: Vec<Result<Option<StringEntry>, BackendError>> = futures::stream::iter(keys)
            .map(|key| async move {
                let k = key.clone();
                let found: Option<(String, i64)> = self
                    .call("scan_strings", |mut c| async move { STRING_WITH_TTL.key(k).invoke_async(&mut c).await })
                    .await?;
                Ok(found.filter(|(_, ttl)| *ttl > 0).map(|(v, ttl)| (key, v, Duration::from_millis(ttl as u64))))
            })
            .buffer_unordered(64)
            .collect()
            .await;
        found.into_iter().filter_map(Result::transpose).collect()
    }

    // Event logs of answer streams (for resuming on any instance).

    /// Appends `(seq, event, data)` entries to the log `key`, capped at
    /// about `max_len` entries and kept `ttl` after this write. True when a
    /// cancel was requested since the previous append.
    pub async fn events_append(
        &self,
        key: &Key,
        entries: &[(u64, &str, &str)],
        max_len: usize,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let k = key.as_str().to_owned();
        let args: Vec<String> = entries
            .iter()
            .flat_map(|(seq, event, data)| [seq.to_string(), event.to_string(), data.to_string()])
            .collect();
        let cancelled: i64 = self
            .call("events_append", |mut c| async move {
                let mut inv = EVENTS_APPEND.key(k);
                inv.arg(max_len).arg(millis(ttl));
                for a in &args {
                    inv.arg(a);
                }
                inv.invoke_async(&mut c).await
            })
            .await?;
        Ok(cancelled == 1)
    }

    /// Adds a cancel marker to the log `key` if it exists; false when it does not.
    pub async fn events_cancel(&self, key: &Key, max_len: usize, ttl: Duration) -> Result<bool, BackendError> {
        let k = key.as_str().to_owned();
        let found: i64 = self
            .call("events_cancel", |mut c| async move {
                EVENTS_CANCEL.key(k).arg(max_len).arg(millis(ttl)).invoke_async(&mut c).await
            })
            .await?;
        Ok(found == 1)
    }

    /// At most `count` entries of the log `key` after the entry id `after`
    /// (from the start when `None`).
    pub async fn events_range(
        &self,
        key: &Key,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<StreamEntry>, BackendError> {
        let k = key.as_str().to_owned();
        let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        let reply: redis::streams::StreamRangeReply = self
            .call("events_range", |mut c| async move {
                redis::cmd("XRANGE").arg(&k).arg(&start).arg("+").arg("COUNT").arg(count).query_async(&mut c).await
            })
            .await?;
        Ok(reply.ids.iter().map(StreamEntry::from).collect())
    }

    pub async fn exists(&self, key: &Key) -> Result<bool, BackendError> {
        let k = key.as_str().to_owned();
        self.call("exists", |mut c| async move { c.exists(k).await }).await
    }

    // Pub/sub: notices between instances (a channel is not a key: it holds
    // nothing and needs no TTL).

    pub async fn publish(&self, channel: &str, message: &str) -> Result<(), BackendError> {
        let (ch, msg) = (channel.to_owned(), message.to_owned());
        self.call("publish", |mut c| async move { c.publish::<_, _, ()>(ch, msg).await }).await
    }

    /// A subscription to `channel` on a connection of its own; its stream
    /// ends when the connection is lost (the caller subscribes again).
    pub async fn subscribe(&self, channel: &str) -> Result<redis::aio::PubSubStream, BackendError> {
        if self.breaker.is_open() {
            return Err(BackendError::Unavailable("circuit open".into()));
        }
        let connect = async {
            let mut pubsub = self.topology.node_client().await?.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok::<_, redis::RedisError>(pubsub.into_on_message())
        };
        match tokio::time::timeout(self.settings.connect_timeout * 3 + self.command_timeout * 2, connect).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(BackendError::Unavailable(e.to_string())),
            Err(_) => Err(BackendError::Unavailable("subscribe timed out".into())),
        }
    }

    // Hash commands, used only for the flags hash (configuration, no TTL).

    pub async fn hgetall(&self, key: &Key) -> Result<HashMap<String, String>, BackendError> {
        let k = key.as_str().to_owned();
        self.call("hgetall", |mut c| async move { c.hgetall(k).await }).await
    }

    pub async fn hset_many(&self, key: &Key, set: &[(String, String)], del: &[String]) -> Result<(), BackendError> {
        let k = key.as_str().to_owned();
        let (set, del) = (set.to_vec(), del.to_vec());
        self.call("hset_many", |mut c| async move {
            let mut pipe = redis::pipe();
            pipe.atomic();
            if !set.is_empty() {
                pipe.hset_multiple(&k, &set).ignore();
            }
            if !del.is_empty() {
                pipe.hdel(&k, &del).ignore();
            }
            pipe.query_async::<()>(&mut c).await
        })
        .await
    }
}

/// `XADD` with a bound and a TTL, in one step: the length check and the
/// add cannot be separated by another instance's add, and the stream never
/// exists without a TTL. The group is created with the stream (`MKSTREAM`);
/// `BUSYGROUP` means it exists. `ARGV`: group, max length, TTL in ms, then
/// field/value pairs. Returns the entry id, or false when the stream is full.
const STREAM_ADD_LUA: &str = r#"
local ok = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
if type(ok) == 'table' and ok.err and not string.find(ok.err, 'BUSYGROUP') then
  return redis.error_reply(ok.err)
end
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return false
end
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], '*', unpack(fields))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return id
"#;

/// The group creation of [`STREAM_ADD_LUA`] alone. `ARGV`: group, TTL in ms.
const STREAM_CREATE_GROUP_LUA: &str = r#"
local ok = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
if type(ok) == 'table' and ok.err and not string.find(ok.err, 'BUSYGROUP') then
  return redis.error_reply(ok.err)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return true
"#;

static STREAM_CREATE_GROUP: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(STREAM_CREATE_GROUP_LUA));

static STREAM_ADD: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| redis::Script::new(STREAM_ADD_LUA));

/// A string key's value and PTTL, or nil for a key of another type.
static STRING_WITH_TTL: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('TYPE', KEYS[1]).ok == 'string' then return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])} end return false",
    )
});

/// Compare-and-delete: `ARGV[1]` is the value the key must hold.
static DELETE_IF: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0")
});

/// Appends events to an answer's event log (a stream without consumer
/// groups), capped and kept `ttl` after its last event, in one step.
/// `ARGV`: max length, TTL in ms, then (seq, event, data) triples. Returns 1
/// when the entry before them is a cancel marker ([`EVENTS_CANCEL_LUA`]):
/// the generator learns of a cancel at its next write even if it missed
/// the pub/sub notice.
const EVENTS_APPEND_LUA: &str = r#"
local cancelled = 0
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if last[1] then
  local f = last[1][2]
  for i = 1, #f, 2 do
    if f[i] == 'ctl' and f[i + 1] == 'cancel' then cancelled = 1 end
  end
end
for i = 3, #ARGV, 3 do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'seq', ARGV[i], 'event', ARGV[i + 1], 'data', ARGV[i + 2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return cancelled
"#;

/// Marks an existing event log as cancelled. `ARGV`: max length, TTL in ms.
/// Returns 0 when the log does not exist.
const EVENTS_CANCEL_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'ctl', 'cancel')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;

static EVENTS_APPEND: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(EVENTS_APPEND_LUA));
static EVENTS_CANCEL: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(EVENTS_CANCEL_LUA));

/// A string key, its value and its remaining TTL.
pub type StringEntry = (String, String, Duration);

/// One stream entry: its id and its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    pub id: String,
    pub fields: HashMap<String, String>,
}

impl From<&redis::streams::StreamId> for StreamEntry {
    fn from(s: &redis::streams::StreamId) -> Self {
        let fields = s
            .map
            .iter()
            .filter_map(|(k, v)| redis::from_redis_value_ref::<String>(v).ok().map(|v| (k.clone(), v)))
            .collect();
        Self { id: s.id.clone(), fields }
    }
}

/// A dedicated connection for blocking stream reads ([`RedisBackend::blocking_reader`]).
pub struct StreamReader {
    conn: Conn,
    block: Duration,
}

impl StreamReader {
    /// Waits (at most the block time) for one new entry for `consumer`.
    /// A missing stream or group (`NOGROUP`: the stream expired, or Redis
    /// lost its data) is reported as [`ReadError::NoGroup`], so that the
    /// caller can recreate it.
    pub async fn read_one(&mut self, key: &Key, group: &str, consumer: &str) -> Result<Option<StreamEntry>, ReadError> {
        let reply: redis::RedisResult<Option<redis::streams::StreamReadReply>> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(millis(self.block))
            .arg("STREAMS")
            .arg(key.as_str())
            .arg(">")
            .query_async(&mut self.conn)
            .await;
        match reply {
            Ok(reply) => {
                Ok(reply.and_then(|r| r.keys.into_iter().next()).and_then(|k| k.ids.first().map(StreamEntry::from)))
            }
            Err(e) if e.code() == Some("NOGROUP") => Err(ReadError::NoGroup),
            Err(e) => Err(ReadError::Unavailable(e.to_string())),
        }
    }
}

/// Why a blocking stream read returned nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the stream or its consumer group does not exist")]
    NoGroup,
    #[error("redis unavailable: {0}")]
    Unavailable(String),
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[async_trait]
impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn get(&self, key: &Key) -> Result<Option<String>, BackendError> {
        let k = key.as_str().to_owned();
        self.call("get", |mut c| async move { c.get(k).await }).await
    }

    async fn set(&self, key: &Key, value: &str, ttl: Duration) -> Result<(), BackendError> {
        let (k, v) = (key.as_str().to_owned(), value.to_owned());
        self.call("set", |mut c| async move { c.pset_ex(k, v, millis(ttl)).await }).await
    }

    async fn delete(&self, key: &Key) -> Result<bool, BackendError> {
        let k = key.as_str().to_owned();
        let n: u64 = self.call("delete", |mut c| async move { c.del(k).await }).await?;
        Ok(n > 0)
    }

    async fn delete_if(&self, key: &Key, expected: &str) -> Result<bool, BackendError> {
        let (k, v) = (key.as_str().to_owned(), expected.to_owned());
        let n: i64 =
            self.call("delete_if", |mut c| async move { DELETE_IF.key(k).arg(v).invoke_async(&mut c).await }).await?;
        Ok(n > 0)
    }

    async fn ttl(&self, key: &Key) -> Result<Option<Duration>, BackendError> {
        let k = key.as_str().to_owned();
        let ms: i64 = self.call("ttl", |mut c| async move { c.pttl(k).await }).await?;
        // -2: no such key; -1: no TTL, which this service never writes.
        Ok((ms >= 0).then(|| Duration::from_millis(ms as u64)))
    }

    async fn update(
        &self,
        key: &Key,
        op: &'static AtomicUpdate,
        args: &[String],
        ttl: Duration,
    ) -> Result<UpdateOutcome, BackendError> {
        let k = key.as_str().to_owned();
        let args = args.to_vec();
        let (verdict, value): (String, Option<String>) = self
            .call(op.name, |mut c| async move {
                let mut inv = op.script.key(k);
                inv.arg(millis(ttl));
                for a in &args {
                    inv.arg(a);
                }
                inv.invoke_async(&mut c).await
            })
            .await
            .map_err(|e| match e {
                BackendError::Command(m) => BackendError::Command(format!("{}: {m}", op.name)),
                other => other,
            })?;
        Ok(UpdateOutcome { verdict, value })
    }
}
