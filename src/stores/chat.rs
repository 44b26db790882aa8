//! Chat sessions: one conversation per user, assistant kind and report task
//! (SPEC §2), and the lease that lets one turn at a time run on it.
//!
//! A session is one string key, `{p}:{env}:chat:{kind}:{user}:{task}`, holding
//! `{"messages":[…],"updated_at":ms}`. Every change is an [`AtomicUpdate`]
//! ([`CHAT_APPEND`]): append the round, trim to `CHAT_MAX_MESSAGES`, drop
//! whatever would leave the history starting with something other than a
//! `user` message, and refresh the TTL, all in one Lua script (the same rules
//! in Rust for memory). So the history is never half-written, never starts
//! with an orphan answer, and two instances appending at once both land.
//!
//! Reads go through the state layer like task status: Redis first, memory
//! too, and the newer of the two wins (`updated_at`), so that a conversation
//! continued in memory during a Redis outage, or before the flag was on, is
//! not lost; the newer memory copy is carried back to Redis on read and on
//! the next append (the script takes it as a seed). Deleting writes a
//! tombstone rather than removing the key, so that an older copy kept in
//! some instance's memory by dual write cannot bring a deleted conversation
//! back.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::ids::{SessionKind, TaskId, UserId};
use crate::state::{AtomicUpdate, Backend, BackendError, Feature, StateError, StateLayer, UpdateOutcome};
use crate::stores::tasks::now_ms;

/// A source an answer used: a chunk of the user's documents or a web page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Source {
    pub title: String,
    pub url: String,
    pub snippet: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_id: Option<String>,
}

/// One message of a session: what the user asked, or the answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatMessage {
    /// `user` or `assistant` (tool messages are not kept: their results ride
    /// on the answer as `sources`).
    pub role: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "list_or_empty")]
    pub sources: Vec<Source>,
    /// Set on an answer that did not end normally (`cancelled`, `length`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
}

impl ChatMessage {
    pub fn user(content: impl Into<String>) -> Self {
        Self { role: "user".into(), content: content.into(), sources: Vec::new(), finish_reason: None }
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self { role: "assistant".into(), content: content.into(), sources: Vec::new(), finish_reason: None }
    }
}

/// The stored form of a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stored {
    #[serde(default, deserialize_with = "list_or_empty")]
    messages: Vec<ChatMessage>,
    #[serde(default)]
    updated_at: i64,
    /// A tombstone: the session was cleared.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
}

/// Lua's cjson encodes an empty array as `{}`: read that as an empty list.
fn list_or_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrMap<T> {
        List(Vec<T>),
        Map(#[allow(dead_code)] serde_json::Map<String, serde_json::Value>),
    }
    Ok(match ListOrMap::<T>::deserialize(d)? {
        ListOrMap::List(v) => v,
        ListOrMap::Map(_) => Vec::new(),
    })
}

/// A session as a reader sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub messages: Vec<ChatMessage>,
    pub ttl: Option<Duration>,
}

/// `ARGV`: ttl-ms, messages-json (an array), max messages, now-ms,
/// seed-json-or-empty. The seed (this instance's memory copy) replaces the
/// stored value when it is newer. An append that would leave no user
/// message (never a whole round) changes nothing and answers `empty`.
const APPEND_LUA: &str = r#"
local raw = redis.call('GET', KEYS[1])
local cur = nil
if raw then cur = cjson.decode(raw) end
if ARGV[5] ~= '' then
  local seed = cjson.decode(ARGV[5])
  if cur == nil or (tonumber(seed.updated_at) or 0) > (tonumber(cur.updated_at) or 0) then cur = seed end
end
local msgs = {}
local updated = 0
if cur ~= nil and not cur.deleted then
  msgs = cur.messages or {}
  updated = tonumber(cur.updated_at) or 0
end
local added = cjson.decode(ARGV[2])
for _, m in ipairs(added) do msgs[#msgs + 1] = m end
local max = tonumber(ARGV[3])
local first = 1
if #msgs > max then first = #msgs - max + 1 end
while first <= #msgs and msgs[first].role ~= 'user' do first = first + 1 end
local kept = {}
for i = first, #msgs do kept[#kept + 1] = msgs[i] end
if #added > 0 or tonumber(ARGV[4]) > updated then updated = tonumber(ARGV[4]) end
if #kept == 0 then return {'empty', false} end
local out = cjson.encode({messages = kept, updated_at = updated})
redis.call('SET', KEYS[1], out, 'PX', ARGV[1])
return {'applied', out}
"#;

/// The rules of [`APPEND_LUA`] for the memory backend.
fn apply_append(current: Option<&str>, args: &[String]) -> (UpdateOutcome, Option<String>) {
    let parse = |raw: &str| serde_json::from_str::<Stored>(raw).ok();
    let mut cur = current.and_then(parse);
    if let Some(seed) = args.get(3).filter(|s| !s.is_empty()).and_then(|s| parse(s))
        && cur.as_ref().is_none_or(|c| seed.updated_at > c.updated_at)
    {
        cur = Some(seed);
    }
    let (mut msgs, mut updated) = match cur {
        Some(c) if !c.deleted => (c.messages, c.updated_at),
        _ => (Vec::new(), 0),
    };
    let added: Vec<ChatMessage> = serde_json::from_str(&args[0]).unwrap_or_default();
    let now: i64 = args[2].parse().unwrap_or(0);
    let max: usize = args[1].parse().unwrap_or(usize::MAX);
    let any_added = !added.is_empty();
    msgs.extend(added);
    let mut first = msgs.len().saturating_sub(max);
    while first < msgs.len() && msgs[first].role != "user" {
        first += 1;
    }
    msgs.drain(..first);
    if any_added || now > updated {
        updated = now;
    }
    if msgs.is_empty() {
        return (UpdateOutcome { verdict: "empty".into(), value: None }, None);
    }
    let out = serde_json::to_string(&Stored { messages: msgs, updated_at: updated, deleted: false })
        .expect("a session always serialises");
    (UpdateOutcome { verdict: "applied".into(), value: Some(out.clone()) }, Some(out))
}

pub static CHAT_APPEND: AtomicUpdate =
    AtomicUpdate { name: "chat_append", script: LazyLock::new(|| redis::Script::new(APPEND_LUA)), apply: apply_append };

/// `ARGV`: ttl-ms, owner. Takes the lease when it is free or already ours
/// (which renews it).
const LEASE_LUA: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[2] then return {'busy', cur} end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
return {'acquired', ARGV[2]}
"#;

fn apply_lease(current: Option<&str>, args: &[String]) -> (UpdateOutcome, Option<String>) {
    let owner = &args[0];
    match current {
        Some(cur) if cur != owner => (UpdateOutcome { verdict: "busy".into(), value: Some(cur.to_owned()) }, None),
        _ => (UpdateOutcome { verdict: "acquired".into(), value: Some(owner.clone()) }, Some(owner.clone())),
    }
}

pub static SESSION_LEASE: AtomicUpdate =
    AtomicUpdate { name: "session_lease", script: LazyLock::new(|| redis::Script::new(LEASE_LUA)), apply: apply_lease };

/// Settings of the session store.
#[derive(Debug, Clone, Copy)]
pub struct ChatSettings {
    /// Kept this long after the last turn (`CHAT_SESSION_TTL_SECONDS`).
    pub ttl: Duration,
    /// `CHAT_MAX_MESSAGES`.
    pub max_messages: usize,
    /// Lease of a running turn (`CHAT_LOCK_TTL_SECONDS`).
    pub lease_ttl: Duration,
}

/// The three assistants' sessions, on the state layer (feature `chat_session`).
#[derive(Clone)]
pub struct ChatSessionStore {
    state: Arc<StateLayer>,
    settings: ChatSettings,
}

fn parse_stored(raw: Option<String>) -> Result<Option<Stored>, BackendError> {
    raw.map(|v| serde_json::from_str(&v).map_err(|e| BackendError::Command(format!("bad chat session: {e}"))))
        .transpose()
}

impl ChatSessionStore {
    pub fn new(state: Arc<StateLayer>, settings: ChatSettings) -> Self {
        Self { state, settings }
    }

    pub fn settings(&self) -> ChatSettings {
        self.settings
    }

    /// Appends `messages` (a round: the user's message and the answer),
    /// trims, and refreshes the TTL, atomically.
    pub async fn append(
        &self,
        kind: SessionKind,
        user: &UserId,
        task: &TaskId,
        messages: &[ChatMessage],
    ) -> Result<(), StateError> {
        let json = serde_json::to_string(messages).expect("messages always serialise");
        self.update(kind, user, task, json, now_ms()).await
    }

    async fn update(
        &self,
        kind: SessionKind,
        user: &UserId,
        task: &TaskId,
        messages: String,
        now: i64,
    ) -> Result<(), StateError> {
        let key = self.state.keys().chat_session(kind, user, task);
        let seed = self.state.memory().get(&key).await.ok().flatten().unwrap_or_default();
        let args = vec![messages, self.settings.max_messages.to_string(), now.to_string(), seed];
        let ttl = self.settings.ttl;
        self.state
            .write(Feature::ChatSession, |b: Arc<dyn Backend>| {
                let (key, args) = (key.clone(), args.clone());
                async move { b.update(&key, &CHAT_APPEND, &args, ttl).await }
            })
            .await
            .map(|_| ())
    }

    /// The session, or `None` when there is none (never started, expired,
    /// cleared, or another user's: the key carries the user id).
    pub async fn get(&self, kind: SessionKind, user: &UserId, task: &TaskId) -> Result<Option<Session>, StateError> {
        let key = self.state.keys().chat_session(kind, user, task);
        let mut memory_newer = None;
        let found = self
            .state
            .read(
                Feature::ChatSession,
                |b: Arc<dyn Backend>| {
                    let key = key.clone();
                    async move {
                        let Some(stored) = parse_stored(b.get(&key).await?)? else { return Ok(None) };
                        Ok(Some((stored, b.ttl(&key).await?)))
                    }
                },
                |redis, memory| match (redis, memory) {
                    (Some(r), Some(m)) if m.0.updated_at > r.0.updated_at => {
                        memory_newer = Some(m.0.updated_at);
                        Some(m)
                    }
                    (None, Some(m)) => {
                        memory_newer = Some(m.0.updated_at);
                        Some(m)
                    }
                    (r, m) => r.or(m),
                },
            )
            .await?;
        if let Some(at) = memory_newer
            && self.state.redis_for(Feature::ChatSession).is_some()
        {
            // Carry the newer memory copy to Redis for the other instances
            // (best effort: the next append carries it too).
            if let Err(e) = self.update(kind, user, task, "[]".into(), at).await {
                tracing::debug!(error = %e, "chat session repair deferred");
            }
        }
        Ok(found
            .filter(|(s, _)| !s.deleted && !s.messages.is_empty())
            .map(|(s, ttl)| Session { messages: s.messages, ttl }))
    }

    /// Clears the session: a tombstone that outlives any copy of it.
    pub async fn clear(&self, kind: SessionKind, user: &UserId, task: &TaskId) -> Result<(), StateError> {
        let key = self.state.keys().chat_session(kind, user, task);
        let tomb = serde_json::to_string(&Stored { messages: Vec::new(), updated_at: now_ms(), deleted: true })
            .expect("a tombstone serialises");
        let ttl = self.settings.ttl;
        self.state
            .write(Feature::ChatSession, |b: Arc<dyn Backend>| {
                let (key, tomb) = (key.clone(), tomb.clone());
                async move { b.set(&key, &tomb, ttl).await }
            })
            .await?;
        // Without dual write, memory may still hold a copy from before the
        // flag was on: it must not come back either.
        let _ = self.state.memory().set(&key, &tomb, ttl).await;
        Ok(())
    }

    /// Takes (or renews) the lease on a session for `owner`; false when
    /// another turn holds it.
    pub async fn lease(
        &self,
        kind: SessionKind,
        user: &UserId,
        task: &TaskId,
        owner: &str,
    ) -> Result<bool, StateError> {
        let key = self.state.keys().session_lease(kind, user, task);
        let args = vec![owner.to_owned()];
        let ttl = self.settings.lease_ttl;
        let outcome = self
            .state
            .write(Feature::ChatSession, |b: Arc<dyn Backend>| {
                let (key, args) = (key.clone(), args.clone());
                async move { b.update(&key, &SESSION_LEASE, &args, ttl).await }
            })
            .await?;
        Ok(outcome.verdict == "acquired")
    }

    /// Releases the lease if `owner` still holds it.
    pub async fn release(
        &self,
        kind: SessionKind,
        user: &UserId,
        task: &TaskId,
        owner: &str,
    ) -> Result<(), StateError> {
        let key = self.state.keys().session_lease(kind, user, task);
        self.state
            .write(Feature::ChatSession, |b: Arc<dyn Backend>| {
                let key = key.clone();
                async move { b.delete_if(&key, owner).await }
            })
            .await?;
        // A lease taken in memory during an outage is released there too.
        let _ = self.state.memory().delete_if(&key, owner).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round(i: usize) -> Vec<ChatMessage> {
        vec![ChatMessage::user(format!("q{i}")), ChatMessage::assistant(format!("a{i}"))]
    }

    fn append(cur: Option<String>, msgs: &[ChatMessage], max: usize, now: i64) -> Option<String> {
        let args = vec![serde_json::to_string(msgs).unwrap(), max.to_string(), now.to_string(), String::new()];
        apply_append(cur.as_deref(), &args).1.or(cur)
    }

    fn messages(raw: &Option<String>) -> Vec<ChatMessage> {
        serde_json::from_str::<Stored>(raw.as_ref().unwrap()).unwrap().messages
    }

    #[test]
    fn the_twenty_first_round_pushes_out_the_oldest() {
        let mut s = None;
        for i in 0..21 {
            s = append(s, &round(i), 40, i as i64 + 1);
        }
        let m = messages(&s);
        assert_eq!(m.len(), 40);
        assert_eq!(m[0].content, "q1");
        assert_eq!(m[39].content, "a20");
    }

    proptest! {
        /// Whatever arrives (rounds, lone messages) and whatever the bound,
        /// the history is bounded and starts with a user message.
        #[test]
        fn history_is_bounded_and_starts_with_user(
            steps in prop::collection::vec(prop::collection::vec(any::<bool>(), 1..4), 1..40),
            max in 2usize..12,
        ) {
            let mut s: Option<String> = None;
            for (n, roles) in steps.iter().enumerate() {
                let msgs: Vec<ChatMessage> = roles
                    .iter()
                    .map(|u| if *u { ChatMessage::user("u") } else { ChatMessage::assistant("a") })
                    .collect();
                s = append(s, &msgs, max, n as i64 + 1);
                if s.is_some() {
                    let m = messages(&s);
                    prop_assert!(m.len() <= max);
                    prop_assert!(m.is_empty() || m[0].role == "user");
                }
            }
        }
    }

    #[test]
    fn a_newer_seed_wins_and_a_tombstone_starts_afresh() {
        let old = append(None, &round(1), 40, 10);
        let newer = append(append(None, &round(1), 40, 10), &round(2), 40, 20);
        let args = vec![serde_json::to_string(&round(3)).unwrap(), "40".into(), "30".into(), newer.clone().unwrap()];
        let merged = apply_append(old.as_deref(), &args).1;
        assert_eq!(messages(&merged).len(), 6, "the seed's rounds are kept");
        let tomb = serde_json::to_string(&Stored { messages: vec![], updated_at: 40, deleted: true }).unwrap();
        let fresh = append(Some(tomb), &round(4), 40, 50);
        assert_eq!(messages(&fresh).len(), 2);
    }

    #[test]
    fn lua_style_empty_lists_are_read() {
        let s: Stored = serde_json::from_str(r#"{"messages":{},"updated_at":3}"#).unwrap();
        assert!(s.messages.is_empty());
        let m: ChatMessage = serde_json::from_str(r#"{"role":"user","content":"x","sources":{}}"#).unwrap();
        assert!(m.sources.is_empty());
    }

    #[test]
    fn a_lease_is_exclusive_and_renewable() {
        let (o, store) = apply_lease(None, &["a".into()]);
        assert_eq!(o.verdict, "acquired");
        assert_eq!(apply_lease(store.as_deref(), &["b".into()]).0.verdict, "busy");
        assert_eq!(apply_lease(store.as_deref(), &["a".into()]).0.verdict, "acquired");
    }
}
