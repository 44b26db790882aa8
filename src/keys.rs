//! Every Redis key this service writes is built here, and only here.
//!
//! The templates are exact (SPEC §2, operators grep for them); every part of a
//! key is either configuration validated at start-up or a parsed id
//! ([`crate::ids`]), so no request can build a key outside `{prefix}:{env}:`.

use std::fmt;

use crate::ids::{SessionKind, StreamId, TaskId, UserId};
use crate::state::Feature;
use crate::stores::cache::{CacheDigest, CacheView};

/// A complete Redis key. It can only be made by [`KeySpace`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String);

impl Key {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whom a rate limit counts. A username is typed by the client, so it
/// enters a key only as a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitSubject {
    User(UserId),
    Ip(std::net::IpAddr),
    /// A digest of a normalised username.
    Name(String),
}

impl LimitSubject {
    /// The subject for a username as typed (normalised first, so that
    /// `ALICE` and `alice` share a limit).
    pub fn username(typed: &str) -> Self {
        use sha2::Digest;
        // No name is longer than 64 characters; a longer one is refused
        // anyway and need not cost more than this to count.
        let typed: String = typed.chars().take(256).collect();
        let digest = sha2::Sha256::digest(crate::db::username_key(&typed).as_bytes());
        Self::Name(digest[..16].iter().map(|b| format!("{b:02x}")).collect())
    }
}

impl fmt::Display for LimitSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::User(u) => write!(f, "user:{u}"),
            // `::` of IPv6 is harmless in a key; Display of a parsed
            // address never holds anything else.
            Self::Ip(ip) => write!(f, "ip:{ip}"),
            Self::Name(digest) => write!(f, "name:{digest}"),
        }
    }
}

/// The `{REDIS_PREFIX}:{APP_ENV}` namespace and the key templates under it.
#[derive(Debug, Clone)]
pub struct KeySpace {
    base: String,
}

/// A prefix or environment name that would make keys ambiguous.
#[derive(Debug, thiserror::Error)]
#[error("{name} must be 1 to 64 characters of A-Z, a-z, 0-9, '_', '-' or '.', got {value:?}")]
pub struct InvalidNamespace {
    pub name: &'static str,
    pub value: String,
}

fn check_namespace(name: &'static str, value: &str) -> Result<(), InvalidNamespace> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if ok { Ok(()) } else { Err(InvalidNamespace { name, value: value.to_owned() }) }
}

impl KeySpace {
    pub fn new(prefix: &str, env: &str) -> Result<Self, InvalidNamespace> {
        check_namespace("REDIS_PREFIX", prefix)?;
        check_namespace("APP_ENV", env)?;
        Ok(Self { base: format!("{prefix}:{env}") })
    }

    /// `{p}:{env}:task:import:{user_id}:{task_id}`
    pub fn import_task(&self, user: &UserId, task: &TaskId) -> Key {
        Key(format!("{}:task:import:{user}:{task}", self.base))
    }

    /// `{p}:{env}:chat:{kind}:{user_id}:{task_id}`
    pub fn chat_session(&self, kind: SessionKind, user: &UserId, task: &TaskId) -> Key {
        Key(format!("{}:chat:{}:{user}:{task}", self.base, kind.as_str()))
    }

    /// `{p}:{env}:stream:{kind}:{user_id}:{stream_id}`
    pub fn ai_stream(&self, kind: SessionKind, user: &UserId, stream: &StreamId) -> Key {
        Key(format!("{}:stream:{}:{user}:{stream}", self.base, kind.as_str()))
    }

    /// `{p}:{env}:rl:session:{kind}:{user_id}:{task_id}`: the lease of the
    /// turn running on a chat session (a concurrency lease, SPEC §2).
    pub fn session_lease(&self, kind: SessionKind, user: &UserId, task: &TaskId) -> Key {
        Key(format!("{}:rl:session:{}:{user}:{task}", self.base, kind.as_str()))
    }

    /// `{p}:{env}:events:cancel`: the pub/sub channel on which a cancel is
    /// announced to the instance running the stream. A channel holds nothing
    /// and has no TTL; it is named here so that it shares the namespace.
    pub fn cancel_channel(&self) -> String {
        format!("{}:events:cancel", self.base)
    }

    /// `{p}:{env}:queue:import`
    pub fn import_queue(&self) -> Key {
        Key(format!("{}:queue:import", self.base))
    }

    /// The SCAN pattern of every key of `feature` that holds state worth
    /// carrying into memory when the feature is rolled back to memory
    /// (`None`: caches and counters, which are rebuilt by themselves).
    pub fn feature_pattern(&self, feature: Feature) -> Option<String> {
        match feature {
            Feature::TaskStatus => Some(format!("{}:task:import:*", self.base)),
            Feature::ChatSession => Some(format!("{}:chat:*", self.base)),
            Feature::Cache | Feature::RateLimit => None,
        }
    }

    /// A key read back from Redis (a SCAN), if it is in this namespace.
    pub fn existing(&self, raw: &str) -> Option<Key> {
        let rest = raw.strip_prefix(&self.base)?.strip_prefix(':')?;
        (!rest.is_empty() && !raw.chars().any(|c| c.is_whitespace() || c.is_control())).then(|| Key(raw.to_owned()))
    }

    /// `{p}:{env}:rl:rate:{limit}:{subject}`: the state of one rate limit
    /// for one user, client IP or username.
    pub fn rate_limit(&self, limit: &'static str, subject: &LimitSubject) -> Key {
        Key(format!("{}:rl:rate:{limit}:{subject}", self.base))
    }

    /// `{p}:{env}:rl:lease:{limit}:{user_id}`: a user's concurrency leases
    /// (a sorted set of holders scored by expiry).
    pub fn leases(&self, limit: &'static str, user: &UserId) -> Key {
        Key(format!("{}:rl:lease:{limit}:{user}", self.base))
    }

    /// `{p}:{env}:flags` — the one key without a TTL.
    pub fn flags(&self) -> Key {
        Key(format!("{}:flags", self.base))
    }

    /// `{p}:{env}:cache:{user_id}:v`: the version of a user's cached reads
    /// (an integer; a change to the user's documents increments it).
    pub fn cache_version(&self, user: &UserId) -> Key {
        Key(format!("{}:cache:{user}:v", self.base))
    }

    /// `{p}:{env}:cache:{user_id}:{version}:{what}:{digest}`: one cached
    /// response. The request's parameters reach the key only as a hex digest
    /// ([`CacheDigest`]), never verbatim.
    pub fn cache_entry(&self, user: &UserId, version: u64, view: CacheView, digest: &CacheDigest) -> Key {
        Key(format!("{}:cache:{user}:{version}:{}:{}", self.base, view.as_str(), digest.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_exact() {
        let ks = KeySpace::new("langextract", "dev").unwrap();
        let u = UserId::parse("u1").unwrap();
        let t = TaskId::parse("t1").unwrap();
        assert_eq!(ks.import_task(&u, &t).as_str(), "langextract:dev:task:import:u1:t1");
        assert_eq!(ks.chat_session(SessionKind::Optimize, &u, &t).as_str(), "langextract:dev:chat:optimize:u1:t1");
        let s = StreamId::parse("s1").unwrap();
        assert_eq!(ks.ai_stream(SessionKind::Search, &u, &s).as_str(), "langextract:dev:stream:search:u1:s1");
        assert_eq!(ks.import_queue().as_str(), "langextract:dev:queue:import");
        assert_eq!(ks.flags().as_str(), "langextract:dev:flags");
    }

    #[test]
    fn only_keys_of_the_namespace_are_read_back() {
        let ks = KeySpace::new("langextract", "dev").unwrap();
        assert!(ks.existing("langextract:dev:task:import:u:t").is_some());
        assert!(ks.existing("langextract:prod:task:import:u:t").is_none());
        assert!(ks.existing("langextract:devx:task").is_none());
        assert!(ks.existing("langextract:dev:").is_none());
        assert_eq!(ks.feature_pattern(Feature::TaskStatus).unwrap(), "langextract:dev:task:import:*");
    }

    #[test]
    fn namespace_parts_are_validated() {
        assert!(KeySpace::new("a:b", "dev").is_err());
        assert!(KeySpace::new("p", "de v").is_err());
        assert!(KeySpace::new("p", "").is_err());
        assert!(KeySpace::new("p", "prod").is_ok());
    }
}
