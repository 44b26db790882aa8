//! Import task status: a small state machine kept in the state layer.
//!
//! `pending → processing → completed | failed`; progress never goes down and
//! a terminal status is final. Every change is an [`AtomicUpdate`]
//! ([`TASK_TRANSITION`]): one Lua script in Redis, the same rules in Rust for
//! memory, so a late, duplicated or reordered write can never move a task
//! backwards, whichever store serves it and however many workers write.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::{TaskId, UserId};
use crate::state::{AtomicUpdate, Backend, BackendError, Feature, StateError, StateLayer, UpdateOutcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Pending,
    Processing,
    Completed,
    Failed,
}

impl TaskStatus {
    /// Position in the state machine; both terminal states share the top rank.
    pub fn rank(self) -> u8 {
        match self {
            Self::Pending => 0,
            Self::Processing => 1,
            Self::Completed | Self::Failed => 2,
        }
    }

    pub fn is_terminal(self) -> bool {
        self.rank() == 2
    }
}

/// What is stored per task (times are Unix milliseconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task_id: TaskId,
    pub status: TaskStatus,
    pub progress: u8,
    pub stage: String,
    pub message: String,
    pub document_id: Option<String>,
    pub error: Option<String>,
    pub filename: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl TaskRecord {
    /// True when `self` is strictly further along than `other`.
    pub fn is_ahead_of(&self, other: &TaskRecord) -> bool {
        if other.status.is_terminal() {
            return false;
        }
        (self.status.rank(), self.progress) > (other.status.rank(), other.progress)
    }
}

/// One step of a task. Absent optional fields leave the stored ones alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskPatch {
    pub status: TaskStatus,
    pub progress: u8,
    pub stage: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub updated_at: i64,
}

impl TaskPatch {
    pub fn new(status: TaskStatus, progress: u8, stage: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            progress: progress.min(100),
            stage: stage.to_owned(),
            message: message.into(),
            document_id: None,
            error: None,
            updated_at: now_ms(),
        }
    }

    /// The patch that carries `record` over as it is (used to repair Redis
    /// from memory after an outage).
    pub fn from_record(record: &TaskRecord) -> Self {
        Self {
            status: record.status,
            progress: record.progress,
            stage: record.stage.clone(),
            message: record.message.clone(),
            document_id: record.document_id.clone(),
            error: record.error.clone(),
            updated_at: record.updated_at,
        }
    }
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `ARGV`: ttl-ms, update-json, `create`|`update`, seed-json-or-empty. The
/// seed stands in for a missing key (and is stored whatever the verdict).
const TRANSITION_LUA: &str = r#"
local raw = redis.call('GET', KEYS[1])
local ttl, update, mode, seed = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local seeded = false
if not raw and seed ~= '' then raw = seed; seeded = true end
if not raw then
  if mode == 'create' then
    redis.call('SET', KEYS[1], update, 'PX', ttl)
    return {'applied', update}
  end
  return {'missing', false}
end
local function keep(verdict)
  if seeded then redis.call('SET', KEYS[1], raw, 'PX', ttl) end
  return {verdict, raw}
end
if mode == 'create' then return keep('exists') end
local cur = cjson.decode(raw)
local patch = cjson.decode(update)
local rank = {pending = 0, processing = 1, completed = 2, failed = 2}
local r_cur, r_new = rank[cur.status], rank[patch.status]
if r_cur == nil or r_new == nil then return redis.error_reply('task status unknown') end
if r_cur == 2 or r_new < r_cur or (r_new == r_cur and patch.progress < cur.progress) then
  return keep('rejected')
end
cur.status = patch.status
if patch.progress > cur.progress then cur.progress = patch.progress end
cur.stage = patch.stage
cur.message = patch.message
cur.updated_at = patch.updated_at
if patch.document_id ~= nil then cur.document_id = patch.document_id end
if patch.error ~= nil then cur.error = patch.error end
local out = cjson.encode(cur)
redis.call('SET', KEYS[1], out, 'PX', ttl)
return {'applied', out}
"#;

/// The same rules as [`TRANSITION_LUA`], for the memory backend. `args` are
/// `[update-json, "create"|"update", seed-json-or-empty]`.
fn apply_transition(current: Option<&str>, args: &[String]) -> (UpdateOutcome, Option<String>) {
    let (update, mode, seed) = (&args[0], args[1].as_str(), args[2].as_str());
    let seeded = current.is_none() && !seed.is_empty();
    let Some(raw) = current.or(seeded.then_some(seed)) else {
        if mode == "create" {
            return (outcome("applied", update), Some(update.clone()));
        }
        return (UpdateOutcome { verdict: "missing".into(), value: None }, None);
    };
    let keep = |verdict: &str| (outcome(verdict, raw), seeded.then(|| raw.to_owned()));
    if mode == "create" {
        return keep("exists");
    }
    let (Ok(mut cur), Ok(patch)) = (serde_json::from_str::<TaskRecord>(raw), serde_json::from_str::<TaskPatch>(update))
    else {
        return keep("rejected");
    };
    let (r_cur, r_new) = (cur.status.rank(), patch.status.rank());
    if r_cur == 2 || r_new < r_cur || (r_new == r_cur && patch.progress < cur.progress) {
        return keep("rejected");
    }
    cur.status = patch.status;
    cur.progress = cur.progress.max(patch.progress);
    cur.stage = patch.stage;
    cur.message = patch.message;
    cur.updated_at = patch.updated_at;
    if patch.document_id.is_some() {
        cur.document_id = patch.document_id;
    }
    if patch.error.is_some() {
        cur.error = patch.error;
    }
    let out = serde_json::to_string(&cur).expect("a task record always serialises");
    (outcome("applied", &out), Some(out))
}

fn outcome(verdict: &str, value: &str) -> UpdateOutcome {
    UpdateOutcome { verdict: verdict.into(), value: Some(value.to_owned()) }
}

pub static TASK_TRANSITION: AtomicUpdate = AtomicUpdate {
    name: "task_transition",
    script: LazyLock::new(|| redis::Script::new(TRANSITION_LUA)),
    apply: apply_transition,
};

/// The result of [`TaskStatusStore::advance`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Applied(TaskRecord),
    /// The patch would have moved the task backwards; the stored record is kept.
    Rejected(TaskRecord),
    Missing,
}

/// Task status per user, on the state layer (feature `task_status`).
#[derive(Clone)]
pub struct TaskStatusStore {
    state: Arc<StateLayer>,
    ttl: Duration,
}

fn parse_record(value: Option<String>) -> Result<Option<TaskRecord>, BackendError> {
    value
        .map(|v| serde_json::from_str(&v).map_err(|e| BackendError::Command(format!("bad task record: {e}"))))
        .transpose()
}

impl TaskStatusStore {
    pub fn new(state: Arc<StateLayer>, ttl: Duration) -> Self {
        // A status written to memory during an outage (an import that went
        // on, or ended) is carried to Redis when it is back, through the
        // same transition, so that polls on every instance see it.
        let weak = Arc::downgrade(&state);
        state.on_recovery(
            Feature::TaskStatus,
            Arc::new(move |key| {
                let weak = weak.clone();
                Box::pin(async move {
                    let Some(state) = weak.upgrade() else { return };
                    let Ok(Some(local)) = state.memory().get(&key).await else { return };
                    let Some(redis) = state.redis_for(Feature::TaskStatus) else { return };
                    let Ok(Some(record)) = parse_record(Some(local.clone())) else { return };
                    let patch = serde_json::to_string(&TaskPatch::from_record(&record)).expect("a patch serialises");
                    let args = [patch, "update".to_owned(), local];
                    if let Err(e) = redis.update(&key, &TASK_TRANSITION, &args, ttl).await {
                        tracing::debug!(error = %e, "task status repair deferred to the next read");
                    }
                })
            }),
        );
        Self { state, ttl }
    }

    /// True while task status wants Redis and Redis is down.
    pub fn degraded(&self) -> bool {
        self.state.degraded(Feature::TaskStatus)
    }

    async fn run(
        &self,
        user: &UserId,
        task: &TaskId,
        update: String,
        mode: &'static str,
    ) -> Result<UpdateOutcome, StateError> {
        let key = self.state.keys().import_task(user, task);
        // The memory copy seeds Redis when Redis lacks the task: it was
        // written before the flag was turned on, or during an outage.
        // During a failover, memory that never had the task is seeded from
        // a replica.
        let mut seed = self.state.memory().get(&key).await.ok().flatten();
        if seed.is_none() {
            seed = self.state.replica_copy(Feature::TaskStatus, &key).await;
        }
        let args = vec![update, mode.to_owned(), seed.unwrap_or_default()];
        let ttl = self.ttl;
        let outcome = self
            .state
            .write(Feature::TaskStatus, |b: Arc<dyn Backend>| {
                let (key, args) = (key.clone(), args.clone());
                async move { b.update(&key, &TASK_TRANSITION, &args, ttl).await }
            })
            .await;
        if self.state.degraded(Feature::TaskStatus) {
            self.state.written_during_outage(Feature::TaskStatus, &key);
        }
        outcome
    }

    /// Records a new task as `pending`.
    pub async fn create(&self, user: &UserId, task: &TaskId, filename: &str) -> Result<TaskRecord, StateError> {
        self.create_at(user, task, filename, now_ms()).await
    }

    /// Records a task created at `created_at` (Unix ms) as `pending`, unless
    /// it exists: used to make an unfinished import pollable again.
    pub async fn create_at(
        &self,
        user: &UserId,
        task: &TaskId,
        filename: &str,
        created_at: i64,
    ) -> Result<TaskRecord, StateError> {
        let now = now_ms();
        let record = TaskRecord {
            task_id: task.clone(),
            status: TaskStatus::Pending,
            progress: 0,
            stage: "queued".into(),
            message: "waiting for a worker".into(),
            document_id: None,
            error: None,
            filename: filename.to_owned(),
            created_at,
            updated_at: now,
        };
        let json = serde_json::to_string(&record).expect("a task record always serialises");
        let outcome = self.run(user, task, json, "create").await?;
        parse_record(outcome.value)
            .map_err(|e| StateError::Internal(e.to_string()))?
            .ok_or_else(|| StateError::Internal("task creation returned nothing".into()))
    }

    /// Applies one step; never moves a task backwards.
    pub async fn advance(&self, user: &UserId, task: &TaskId, patch: &TaskPatch) -> Result<Transition, StateError> {
        let json = serde_json::to_string(patch).expect("a patch always serialises");
        let outcome = self.run(user, task, json, "update").await?;
        let record = parse_record(outcome.value).map_err(|e| StateError::Internal(e.to_string()))?;
        Ok(match (outcome.verdict.as_str(), record) {
            ("applied", Some(r)) => Transition::Applied(r),
            ("rejected", Some(r)) => Transition::Rejected(r),
            _ => Transition::Missing,
        })
    }

    /// The task of `user`, or `None` (also when it belongs to someone else:
    /// the key carries the user id, so another user's task is simply absent).
    pub async fn get(&self, user: &UserId, task: &TaskId) -> Result<Option<TaskRecord>, StateError> {
        let key = self.state.keys().import_task(user, task);
        // Set when memory holds progress that Redis lacks: made during an
        // outage, or before the flag was turned on.
        let mut memory_ahead = false;
        let found = self
            .state
            .read(
                Feature::TaskStatus,
                |b: Arc<dyn Backend>| {
                    let key = key.clone();
                    async move { parse_record(b.get(&key).await?) }
                },
                |redis, memory| match (redis, memory) {
                    (Some(r), Some(m)) if m.is_ahead_of(&r) => {
                        memory_ahead = true;
                        Some(m)
                    }
                    (None, Some(m)) => {
                        memory_ahead = true;
                        Some(m)
                    }
                    (r, m) => r.or(m),
                },
            )
            .await?;
        if memory_ahead && let Some(record) = &found {
            // Carry it to Redis so that other instances see it too. Best
            // effort: the next read tries again.
            if let Err(e) = self.advance(user, task, &TaskPatch::from_record(record)).await {
                tracing::debug!(error = %e, "task status repair deferred");
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(status: TaskStatus, progress: u8) -> TaskRecord {
        TaskRecord {
            task_id: TaskId::parse("t").unwrap(),
            status,
            progress,
            stage: "s".into(),
            message: "m".into(),
            document_id: None,
            error: None,
            filename: "f.txt".into(),
            created_at: 1,
            updated_at: 1,
        }
    }

    fn status() -> impl Strategy<Value = TaskStatus> {
        prop_oneof![
            Just(TaskStatus::Pending),
            Just(TaskStatus::Processing),
            Just(TaskStatus::Completed),
            Just(TaskStatus::Failed)
        ]
    }

    fn step(current: Option<String>, patch: &TaskPatch) -> (UpdateOutcome, Option<String>) {
        let args = vec![serde_json::to_string(patch).unwrap(), "update".into(), String::new()];
        apply_transition(current.as_deref(), &args)
    }

    proptest! {
        /// Whatever order the writes arrive in, the observed states only move
        /// forward and a terminal state never changes again.
        #[test]
        fn transitions_never_regress(steps in prop::collection::vec((status(), 0u8..=100), 1..40)) {
            let mut stored = Some(serde_json::to_string(&record(TaskStatus::Pending, 0)).unwrap());
            let mut last = record(TaskStatus::Pending, 0);
            for (st, p) in steps {
                let patch = TaskPatch::new(st, p, "x", "y");
                let (outcome, store) = step(stored.clone(), &patch);
                if let Some(s) = store { stored = Some(s); }
                let now: TaskRecord = serde_json::from_str(stored.as_ref().unwrap()).unwrap();
                prop_assert!(now.status.rank() >= last.status.rank());
                prop_assert!(now.progress >= last.progress);
                if last.status.is_terminal() {
                    prop_assert_eq!(now.status, last.status);
                    prop_assert_eq!(outcome.verdict.as_str(), "rejected");
                }
                last = now;
            }
        }
    }

    #[test]
    fn missing_task_is_not_created_by_an_update() {
        let (o, store) = step(None, &TaskPatch::new(TaskStatus::Processing, 10, "a", "b"));
        assert_eq!(o.verdict, "missing");
        assert!(store.is_none());
    }

    #[test]
    fn optional_fields_are_kept_unless_given() {
        let mut done = TaskPatch::new(TaskStatus::Processing, 50, "a", "b");
        done.document_id = Some("doc".into());
        let (_, s) = step(Some(serde_json::to_string(&record(TaskStatus::Processing, 10)).unwrap()), &done);
        let (_, s) = step(s, &TaskPatch::new(TaskStatus::Completed, 100, "done", "ok"));
        let r: TaskRecord = serde_json::from_str(&s.unwrap()).unwrap();
        assert_eq!(r.document_id.as_deref(), Some("doc"));
        assert_eq!(r.status, TaskStatus::Completed);
    }

    #[test]
    fn ahead_of_is_a_strict_order_that_respects_terminal_states() {
        assert!(record(TaskStatus::Processing, 50).is_ahead_of(&record(TaskStatus::Processing, 40)));
        assert!(!record(TaskStatus::Processing, 40).is_ahead_of(&record(TaskStatus::Processing, 40)));
        assert!(record(TaskStatus::Completed, 100).is_ahead_of(&record(TaskStatus::Processing, 90)));
        assert!(!record(TaskStatus::Failed, 100).is_ahead_of(&record(TaskStatus::Completed, 100)));
    }
}
