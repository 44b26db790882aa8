//! Process memory as a [`Backend`]: the embedded default and the fallback.
//!
//! Entries carry their expiry; an expired entry is never returned, and a
//! sweeper removes expired entries in the background so that memory stays
//! bounded by what is live. A hard cap (`MEMORY_MAX_KEYS`) evicts the entries
//! closest to expiry first if the live set ever grows past it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::backend::{AtomicUpdate, Backend, BackendError, UpdateOutcome};
use crate::keys::Key;

struct Entry {
    value: String,
    expires_at: Instant,
}

#[derive(Default)]
struct Inner {
    map: HashMap<String, Entry>,
    /// (expiry, key) for every entry: sweeping and eviction take from the front.
    by_expiry: BTreeSet<(Instant, String)>,
}

impl Inner {
    fn live(&mut self, key: &str, now: Instant) -> Option<&Entry> {
        let expired = self.map.get(key).is_some_and(|e| e.expires_at <= now);
        if expired {
            self.remove(key);
        }
        self.map.get(key)
    }

    fn remove(&mut self, key: &str) -> bool {
        match self.map.remove(key) {
            Some(e) => {
                self.by_expiry.remove(&(e.expires_at, key.to_owned()));
                true
            }
            None => false,
        }
    }

    fn insert(&mut self, key: &str, value: String, expires_at: Instant, max_keys: usize) {
        self.remove(key);
        self.by_expiry.insert((expires_at, key.to_owned()));
        self.map.insert(key.to_owned(), Entry { value, expires_at });
        if self.map.len() > max_keys {
            self.sweep(Instant::now());
        }
        while self.map.len() > max_keys {
            let Some((_, victim)) = self.by_expiry.pop_first() else {
                break;
            };
            self.map.remove(&victim);
            metrics::counter!("reportd_memory_evictions_total").increment(1);
        }
    }

    fn sweep(&mut self, now: Instant) -> usize {
        let mut removed = 0;
        while let Some((at, _)) = self.by_expiry.first() {
            if *at > now {
                break;
            }
            let (_, key) = self.by_expiry.pop_first().expect("checked above");
            self.map.remove(&key);
            removed += 1;
        }
        removed
    }
}

pub struct MemoryBackend {
    inner: Mutex<Inner>,
    max_keys: usize,
}

impl MemoryBackend {
    pub fn new(max_keys: usize) -> Self {
        Self { inner: Mutex::new(Inner::default()), max_keys: max_keys.max(1) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave a half-written entry
        // (every mutation is a single map operation), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most entries it holds (`MEMORY_MAX_KEYS`).
    pub fn capacity(&self) -> usize {
        self.max_keys
    }

    /// Number of entries held, expired or not yet swept.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every expired entry now; returns how many.
    pub fn sweep(&self) -> usize {
        self.lock().sweep(Instant::now())
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn get(&self, key: &Key) -> Result<Option<String>, BackendError> {
        Ok(self.lock().live(key.as_str(), Instant::now()).map(|e| e.value.clone()))
    }

    async fn set(&self, key: &Key, value: &str, ttl: Duration) -> Result<(), BackendError> {
        let expires_at = Instant::now() + ttl;
        self.lock().insert(key.as_str(), value.to_owned(), expires_at, self.max_keys);
        Ok(())
    }

    async fn delete(&self, key: &Key) -> Result<bool, BackendError> {
        Ok(self.lock().remove(key.as_str()))
    }

    async fn delete_if(&self, key: &Key, expected: &str) -> Result<bool, BackendError> {
        let mut inner = self.lock();
        let matches = inner.live(key.as_str(), Instant::now()).is_some_and(|e| e.value == expected);
        Ok(matches && inner.remove(key.as_str()))
    }

    async fn ttl(&self, key: &Key) -> Result<Option<Duration>, BackendError> {
        let now = Instant::now();
        Ok(self.lock().live(key.as_str(), now).map(|e| e.expires_at - now))
    }

    async fn update(
        &self,
        key: &Key,
        op: &'static AtomicUpdate,
        args: &[String],
        ttl: Duration,
    ) -> Result<UpdateOutcome, BackendError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let current = inner.live(key.as_str(), now).map(|e| e.value.clone());
        let (outcome, store) = (op.apply)(current.as_deref(), args);
        if let Some(value) = store {
            inner.insert(key.as_str(), value, now + ttl, self.max_keys);
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{TaskId, UserId};
    use crate::keys::KeySpace;

    fn key(n: usize) -> Key {
        let ks = KeySpace::new("t", "test").unwrap();
        ks.import_task(&UserId::parse("u").unwrap(), &TaskId::parse(&format!("k{n}")).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_and_are_swept() {
        let m = MemoryBackend::new(100);
        m.set(&key(1), "a", Duration::from_secs(10)).await.unwrap();
        m.set(&key(2), "b", Duration::from_secs(30)).await.unwrap();
        assert_eq!(m.get(&key(1)).await.unwrap().as_deref(), Some("a"));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(m.get(&key(1)).await.unwrap(), None, "expired entries are never served");
        assert_eq!(m.ttl(&key(2)).await.unwrap(), Some(Duration::from_secs(19)));
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(m.sweep(), 1);
        assert!(m.is_empty());
    }

    #[tokio::test]
    async fn the_cap_evicts_what_expires_first() {
        let m = MemoryBackend::new(3);
        for n in 0..5 {
            m.set(&key(n), "v", Duration::from_secs(100 + n as u64)).await.unwrap();
        }
        assert_eq!(m.len(), 3);
        assert_eq!(m.get(&key(0)).await.unwrap(), None);
        assert_eq!(m.get(&key(1)).await.unwrap(), None);
        assert!(m.get(&key(4)).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn overwriting_resets_the_expiry_index() {
        let m = MemoryBackend::new(10);
        m.set(&key(1), "a", Duration::from_millis(1)).await.unwrap();
        m.set(&key(1), "b", Duration::from_secs(60)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(m.sweep(), 0);
        assert_eq!(m.get(&key(1)).await.unwrap().as_deref(), Some("b"));
        assert!(m.delete(&key(1)).await.unwrap());
        assert!(!m.delete(&key(1)).await.unwrap());
    }
}
