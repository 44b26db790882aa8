//! The five feature flags of SPEC §4: their environment values, the run-time
//! overrides kept in the Redis hash `{p}:{env}:flags`, and the effective view.
//!
//! Every instance refreshes the overrides from Redis every
//! `FLAGS_REFRESH_MS` (whenever Redis connection settings are given, even
//! with `REDIS_ENABLED=0`, so that Redis can be turned on at run time); the
//! instance that takes a `PUT /admin/flags` applies it at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use serde::Serialize;

use super::Feature;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Flag {
    #[serde(rename = "REDIS_ENABLED")]
    RedisEnabled,
    #[serde(rename = "REDIS_TASK_STATUS_ENABLED")]
    TaskStatus,
    #[serde(rename = "REDIS_CHAT_SESSION_ENABLED")]
    ChatSession,
    #[serde(rename = "REDIS_CACHE_ENABLED")]
    Cache,
    #[serde(rename = "REDIS_RATE_LIMIT_ENABLED")]
    RateLimit,
}

impl Flag {
    pub const ALL: [Flag; 5] = [Self::RedisEnabled, Self::TaskStatus, Self::ChatSession, Self::Cache, Self::RateLimit];

    /// The environment variable, which is also the field name in the hash.
    pub fn name(self) -> &'static str {
        match self {
            Self::RedisEnabled => "REDIS_ENABLED",
            Self::TaskStatus => "REDIS_TASK_STATUS_ENABLED",
            Self::ChatSession => "REDIS_CHAT_SESSION_ENABLED",
            Self::Cache => "REDIS_CACHE_ENABLED",
            Self::RateLimit => "REDIS_RATE_LIMIT_ENABLED",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    pub fn for_feature(feature: Feature) -> Self {
        match feature {
            Feature::TaskStatus => Self::TaskStatus,
            Feature::ChatSession => Self::ChatSession,
            Feature::Cache => Self::Cache,
            Feature::RateLimit => Self::RateLimit,
        }
    }
}

/// A value of one flag, as the hash stores it.
pub fn encode_flag(value: bool) -> &'static str {
    if value { "1" } else { "0" }
}

fn decode_flag(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

pub struct Flags {
    env: BTreeMap<Flag, bool>,
    overrides: RwLock<BTreeMap<Flag, bool>>,
}

impl Flags {
    pub fn new(env: BTreeMap<Flag, bool>) -> Self {
        Self { env, overrides: RwLock::new(BTreeMap::new()) }
    }

    /// What the flags would be after `change`, without changing them.
    pub fn preview(&self, change: impl Fn(&Flags)) -> Flags {
        let copy = Flags { env: self.env.clone(), overrides: RwLock::new(self.overrides()) };
        change(&copy);
        copy
    }

    pub fn overrides(&self) -> BTreeMap<Flag, bool> {
        self.overrides.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn effective(&self) -> BTreeMap<Flag, bool> {
        let overrides = self.overrides();
        Flag::ALL.into_iter().map(|f| (f, overrides.get(&f).or(self.env.get(&f)).copied().unwrap_or(false))).collect()
    }

    pub fn get(&self, flag: Flag) -> bool {
        let overrides = self.overrides.read().unwrap_or_else(|p| p.into_inner());
        overrides.get(&flag).or(self.env.get(&flag)).copied().unwrap_or(false)
    }

    /// The master switch and the feature's own flag are both on.
    pub fn redis_wanted(&self, feature: Feature) -> bool {
        self.get(Flag::RedisEnabled) && self.get(Flag::for_feature(feature))
    }

    /// Replaces the overrides with the content of the flags hash. Unknown
    /// fields and unreadable values are ignored with a warning.
    pub fn load_hash(&self, hash: &HashMap<String, String>) {
        let mut parsed = BTreeMap::new();
        for (name, value) in hash {
            match (Flag::parse(name), decode_flag(value)) {
                (Some(flag), Some(v)) => {
                    parsed.insert(flag, v);
                }
                _ => {
                    tracing::warn!(field = %name, value = %value, "ignoring unknown flag override")
                }
            }
        }
        *self.overrides.write().unwrap_or_else(|p| p.into_inner()) = parsed;
    }

    /// Applies a change locally (the hash has already been written).
    pub fn apply(&self, changes: &BTreeMap<Flag, Option<bool>>) {
        let mut current = self.overrides.write().unwrap_or_else(|p| p.into_inner());
        for (flag, value) in changes {
            match value {
                Some(v) => current.insert(*flag, *v),
                None => current.remove(flag),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_win_over_the_environment() {
        let flags = Flags::new(BTreeMap::from([(Flag::RedisEnabled, true), (Flag::TaskStatus, true)]));
        assert!(flags.redis_wanted(Feature::TaskStatus));
        assert!(!flags.redis_wanted(Feature::Cache));
        flags.load_hash(&HashMap::from([
            ("REDIS_TASK_STATUS_ENABLED".to_string(), "0".to_string()),
            ("REDIS_CACHE_ENABLED".to_string(), "1".to_string()),
            ("BOGUS".to_string(), "1".to_string()),
        ]));
        assert!(!flags.redis_wanted(Feature::TaskStatus));
        assert!(flags.redis_wanted(Feature::Cache));
        flags.apply(&BTreeMap::from([(Flag::TaskStatus, None)]));
        assert!(flags.redis_wanted(Feature::TaskStatus));
        assert_eq!(flags.overrides().len(), 1);
    }
}
