//! Redis as a [`Backend`], made to fail fast.
//!
//! redis-rs on its defaults waits seconds for a dead server on every command
//! (NOTES.md). Here the connection manager connects lazily with short
//! connection and response timeouts, every command is bounded by
//! `REDIS_COMMAND_TIMEOUT_MS`, and a circuit breaker opens on the first
//! connection-level failure: while it is open no request touches Redis at all
//! and callers fall back at once. A monitor task pings Redis every
//! `REDIS_HEALTH_INTERVAL_MS`; the first successful ping closes the breaker,
//! so the service uses Redis again by itself when it returns.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::backend::{AtomicUpdate, Backend, BackendError, UpdateOutcome};
use crate::keys::Key;

/// Timeouts of the Redis client.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub health_interval: Duration,
}

/// Open = Redis is considered down and is not called.
#[derive(Default)]
pub struct CircuitBreaker {
    open: AtomicBool,
}

impl CircuitBreaker {
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    fn trip(&self, why: &str) {
        if !self.open.swap(true, Ordering::AcqRel) {
            metrics::counter!("reportd_redis_breaker_trips_total").increment(1);
            tracing::warn!(reason = why, "redis unreachable: circuit opened, serving from fallback");
        }
    }

    fn close(&self) {
        if self.open.swap(false, Ordering::AcqRel) {
            tracing::info!("redis reachable again: circuit closed");
        }
    }
}

pub struct RedisBackend {
    conn: ConnectionManager,
    breaker: CircuitBreaker,
    command_timeout: Duration,
}

/// A failure that says nothing about the data, only that Redis is not there.
fn is_unavailability(e: &redis::RedisError) -> bool {
    use redis::ErrorKind;
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
                | ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
                | ErrorKind::Server(redis::ServerErrorKind::MasterDown)
                | ErrorKind::Server(redis::ServerErrorKind::TryAgain)
                | ErrorKind::AuthenticationFailed
        )
}

impl RedisBackend {
    /// Builds the client without connecting: the service starts (and serves
    /// from its fallback) even when Redis is down at start.
    pub fn new(settings: &RedisSettings) -> anyhow::Result<Self> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| anyhow::anyhow!("invalid Redis connection settings: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(Some(settings.command_timeout))
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| anyhow::anyhow!("cannot create the Redis client: {e}"))?;
        Ok(Self { conn, breaker: CircuitBreaker::default(), command_timeout: settings.command_timeout })
    }

    /// True unless the breaker is open.
    pub fn is_available(&self) -> bool {
        !self.breaker.is_open()
    }

    /// Runs one command under the breaker and the command timeout.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, BackendError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if self.breaker.is_open() {
            return Err(BackendError::Unavailable("circuit open".into()));
        }
        match tokio::time::timeout(self.command_timeout, f(self.conn.clone())).await {
            Err(_) => {
                self.breaker.trip("command timed out");
                Err(BackendError::Unavailable("command timed out".into()))
            }
            Ok(Err(e)) if is_unavailability(&e) => {
                self.breaker.trip(&e.to_string());
                Err(BackendError::Unavailable(e.to_string()))
            }
            Ok(Err(e)) => Err(BackendError::Command(e.to_string())),
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// One PING, ignoring the breaker; closes or opens it by the result.
    pub async fn probe(&self) -> bool {
        let mut conn = self.conn.clone();
        let ping = async move { redis::cmd("PING").query_async::<String>(&mut conn).await };
        match tokio::time::timeout(self.command_timeout, ping).await {
            Ok(Ok(_)) => {
                self.breaker.close();
                true
            }
            Ok(Err(e)) => {
                self.breaker.trip(&e.to_string());
                false
            }
            Err(_) => {
                self.breaker.trip("ping timed out");
                false
            }
        }
    }

    // Hash commands, used only for the flags hash (configuration, no TTL).

    pub async fn hgetall(&self, key: &Key) -> Result<HashMap<String, String>, BackendError> {
        let k = key.as_str().to_owned();
        self.call(|mut c| async move { c.hgetall(k).await }).await
    }

    pub async fn hset_many(&self, key: &Key, set: &[(String, String)], del: &[String]) -> Result<(), BackendError> {
        let k = key.as_str().to_owned();
        let (set, del) = (set.to_vec(), del.to_vec());
        self.call(|mut c| async move {
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
        self.call(|mut c| async move { c.get(k).await }).await
    }

    async fn set(&self, key: &Key, value: &str, ttl: Duration) -> Result<(), BackendError> {
        let (k, v) = (key.as_str().to_owned(), value.to_owned());
        self.call(|mut c| async move { c.pset_ex(k, v, millis(ttl)).await }).await
    }

    async fn delete(&self, key: &Key) -> Result<bool, BackendError> {
        let k = key.as_str().to_owned();
        let n: u64 = self.call(|mut c| async move { c.del(k).await }).await?;
        Ok(n > 0)
    }

    async fn ttl(&self, key: &Key) -> Result<Option<Duration>, BackendError> {
        let k = key.as_str().to_owned();
        let ms: i64 = self.call(|mut c| async move { c.pttl(k).await }).await?;
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
            .call(|mut c| async move {
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
