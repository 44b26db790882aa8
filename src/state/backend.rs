//! The storage operations every kind of state is built from, and the two
//! implementations' shared vocabulary.
//!
//! A [`Backend`] is either Redis ([`super::redis::RedisBackend`]) or process
//! memory ([`super::memory::MemoryBackend`]). Both honour TTLs, and both run
//! an [`AtomicUpdate`] atomically: Redis as one Lua script, memory as the
//! equivalent Rust function under its lock. Tests check that the two agree.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;

use crate::keys::Key;

/// Why a backend call did not complete.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The store cannot be reached now (connection refused, timeout, circuit
    /// open). The caller may fall back to another store.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store answered, but with an error (bad script, wrong type …).
    #[error("store error: {0}")]
    Command(String),
}

/// What an atomic update decided, with the value it left (or found).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateOutcome {
    /// A short word chosen by the update (`applied`, `rejected`, …).
    pub verdict: String,
    pub value: Option<String>,
}

/// A read-modify-write of one key that must be atomic, given twice: as Lua for
/// Redis and as a pure function for memory.
///
/// The Lua script receives `KEYS[1]` = the key, `ARGV[1]` = the TTL in
/// milliseconds, `ARGV[2..]` = `args`; it writes the key itself (always with
/// `PX` ARGV[1]) and returns `{verdict, value-or-false}`. The Rust function
/// receives the current value and `args` and returns the outcome plus the
/// value to store, if any.
pub struct AtomicUpdate {
    pub name: &'static str,
    pub script: LazyLock<redis::Script>,
    pub apply: ApplyFn,
}

/// The memory side of an [`AtomicUpdate`]: (current value, args) → (outcome,
/// value to store if any).
pub type ApplyFn = fn(current: Option<&str>, args: &[String]) -> (UpdateOutcome, Option<String>);

#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// `redis` or `memory`.
    fn name(&self) -> &'static str;
    async fn get(&self, key: &Key) -> Result<Option<String>, BackendError>;
    async fn set(&self, key: &Key, value: &str, ttl: Duration) -> Result<(), BackendError>;
    /// True when something was deleted.
    async fn delete(&self, key: &Key) -> Result<bool, BackendError>;
    /// Deletes `key` only if it holds `expected` (releasing a lease that is
    /// still ours); true when it did.
    async fn delete_if(&self, key: &Key, expected: &str) -> Result<bool, BackendError>;
    /// Remaining time to live; `None` when the key does not exist.
    async fn ttl(&self, key: &Key) -> Result<Option<Duration>, BackendError>;
    async fn update(
        &self,
        key: &Key,
        op: &'static AtomicUpdate,
        args: &[String],
        ttl: Duration,
    ) -> Result<UpdateOutcome, BackendError>;
}
