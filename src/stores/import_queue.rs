//! The import job queue.
//!
//! When import task status is served by Redis, jobs go through the Redis
//! stream `{p}:{env}:queue:import` with the consumer group
//! [`GROUP`]: any instance's worker may take a new job (`XREADGROUP`, on a
//! connection of its own), a running job's entry is touched by its worker's
//! heartbeat (`XCLAIM … JUSTID` resets its idle time), and an entry idle for
//! longer than the heartbeat timeout — its worker died — is taken over by any
//! live worker (`XAUTOCLAIM`), the restarted instance included. A finished
//! job's entry is acknowledged and deleted. The stream is capped (a full
//! stream answers "queue full", it never trims a live job) and its TTL is
//! refreshed on every add.
//!
//! Otherwise (Redis off, or down), jobs go to this instance's bounded
//! in-process queue. Either way the durable record of a job is its staged
//! upload in SQL ([`crate::db::jobs`]), whose lease decides who runs it: a
//! queue may deliver a job twice, never run it twice.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use crate::db::{Database, JobRef};
use crate::ids::{TaskId, UserId};
use crate::state::redis::{ReadError, StreamEntry, StreamReader};
use crate::state::{BackendError, Feature, RedisBackend, StateLayer};

/// The consumer group of the import stream.
pub const GROUP: &str = "importers";

/// How long a blocking read waits for a new job before looking again.
const BLOCK: Duration = Duration::from_secs(1);

/// A job handed to a worker: whose task, and the stream entry it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedJob {
    pub user: UserId,
    pub task: TaskId,
    /// The stream entry id, for jobs delivered by the Redis stream.
    pub entry: Option<String>,
}

/// A queue that has no room: the upload answers 503.
#[derive(Debug, thiserror::Error)]
#[error("the import queue is full")]
pub struct QueueFull;

#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// Waiting jobs in this instance's in-process queue.
    pub local_capacity: usize,
    /// Live entries in the shared stream.
    pub stream_max_len: u64,
    /// TTL of the stream, refreshed on every add.
    pub stream_ttl: Duration,
    /// A running job not touched for this long has lost its worker.
    pub heartbeat_timeout: Duration,
}

pub struct ImportQueue {
    state: Arc<StateLayer>,
    db: Database,
    settings: QueueSettings,
    local_tx: mpsc::Sender<QueuedJob>,
    local_rx: Mutex<mpsc::Receiver<QueuedJob>>,
}

/// What one worker keeps between calls to [`ImportQueue::next`]: its name in
/// the consumer group and its own connection for blocking reads.
pub struct Consumer {
    name: String,
    reader: Option<StreamReader>,
}

impl Consumer {
    /// `name` must be unique among live workers (instance id + worker number).
    pub fn new(name: String) -> Self {
        Self { name, reader: None }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl ImportQueue {
    pub fn new(state: Arc<StateLayer>, db: Database, settings: QueueSettings) -> Self {
        let (local_tx, local_rx) = mpsc::channel(settings.local_capacity.max(1));
        Self { state, db, settings, local_tx, local_rx: Mutex::new(local_rx) }
    }

    /// The Redis client when new jobs go to the shared stream right now.
    pub fn stream(&self) -> Option<&Arc<RedisBackend>> {
        self.state.redis_for(Feature::TaskStatus)
    }

    /// True when this instance's in-process queue has room for one more job.
    pub fn local_has_room(&self) -> bool {
        self.local_tx.capacity() > 0
    }

    /// Puts a job on the shared stream. `Ok(false)`: the stream is full.
    pub async fn push_stream(&self, redis: &RedisBackend, user: &UserId, task: &TaskId) -> Result<bool, BackendError> {
        let key = self.state.keys().import_queue();
        let fields = [("user", user.as_str()), ("task", task.as_str())];
        let added =
            redis.stream_add(&key, GROUP, &fields, self.settings.stream_max_len, self.settings.stream_ttl).await?;
        Ok(added.is_some())
    }

    /// Puts a job on this instance's in-process queue.
    pub fn push_local(&self, user: &UserId, task: &TaskId) -> Result<(), QueueFull> {
        self.local_tx.try_send(QueuedJob { user: user.clone(), task: task.clone(), entry: None }).map_err(|_| QueueFull)
    }

    /// The next job for the worker `consumer`: a local one if any, else a
    /// stream entry whose worker died, else a new stream entry; waits until
    /// there is one or `cancel` fires (then `None`).
    pub async fn next(&self, consumer: &mut Consumer, cancel: &CancellationToken) -> Option<QueuedJob> {
        loop {
            if cancel.is_cancelled() {
                return None;
            }
            if let Ok(mut rx) = self.local_rx.try_lock()
                && let Ok(job) = rx.try_recv()
            {
                return Some(job);
            }
            if let Some(redis) = self.stream().cloned() {
                match self.next_from_stream(&redis, consumer, cancel).await {
                    Ok(Some(job)) => return Some(job),
                    Ok(None) => continue,
                    Err(e) => tracing::debug!(error = %e, "import stream not readable, waiting on the local queue"),
                }
            }
            // No stream to read (or it failed): wait for a local job, and look
            // at the stream again in a while.
            tokio::select! {
                _ = cancel.cancelled() => return None,
                job = async { self.local_rx.lock().await.recv().await } => {
                    if let Some(job) = job {
                        return Some(job);
                    }
                }
                _ = tokio::time::sleep(BLOCK) => {}
            }
        }
    }

    async fn next_from_stream(
        &self,
        redis: &RedisBackend,
        consumer: &mut Consumer,
        cancel: &CancellationToken,
    ) -> Result<Option<QueuedJob>, BackendError> {
        let key = self.state.keys().import_queue();
        let stale = redis.stream_autoclaim(&key, GROUP, &consumer.name, self.settings.heartbeat_timeout, 1).await;
        match stale {
            Ok(entries) => {
                if let Some(entry) = entries.into_iter().next() {
                    metrics::counter!("reportd_import_takeovers_total").increment(1);
                    tracing::info!(entry = %entry.id, "taking over an import whose worker stopped");
                    return Ok(self.job_of(redis, entry).await);
                }
            }
            // No group yet: the read below finds out and repairs it.
            Err(BackendError::Command(e)) if e.contains("NOGROUP") => {}
            Err(e) => return Err(e),
        }
        if consumer.reader.is_none() {
            consumer.reader = Some(redis.blocking_reader(BLOCK).await?);
        }
        let reader = consumer.reader.as_mut().expect("set above");
        let read = tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            read = reader.read_one(&key, GROUP, &consumer.name) => read,
        };
        match read {
            Ok(Some(entry)) => Ok(self.job_of(redis, entry).await),
            Ok(None) => Ok(None),
            Err(ReadError::NoGroup) => {
                self.rebuild_stream(redis).await?;
                Ok(None)
            }
            Err(ReadError::Unavailable(e)) => {
                // Drop the connection: the next read opens a fresh one.
                consumer.reader = None;
                Err(BackendError::Unavailable(e))
            }
        }
    }

    /// The job an entry names; an entry that names none (not written by this
    /// service) is dropped.
    async fn job_of(&self, redis: &RedisBackend, entry: StreamEntry) -> Option<QueuedJob> {
        let user = entry.fields.get("user").and_then(|u| UserId::parse(u).ok());
        let task = entry.fields.get("task").and_then(|t| TaskId::parse(t).ok());
        match (user, task) {
            (Some(user), Some(task)) => Some(QueuedJob { user, task, entry: Some(entry.id) }),
            _ => {
                tracing::warn!(entry = %entry.id, "dropping a malformed import stream entry");
                let _ = redis.stream_done(&self.state.keys().import_queue(), GROUP, &entry.id).await;
                None
            }
        }
    }

    /// The stream or its group is gone (it expired, or Redis restarted
    /// without its data): creates both and adds again every stream job that
    /// nobody runs, so that none waits forever. A job added twice is run once
    /// (the SQL lease decides).
    async fn rebuild_stream(&self, redis: &RedisBackend) -> Result<(), BackendError> {
        let orphans: Vec<JobRef> = match self.db.unclaimed_stream_jobs(self.settings.stream_max_len as i64).await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list stream jobs to rebuild the import stream");
                Vec::new()
            }
        };
        tracing::warn!(jobs = orphans.len(), "import stream missing: recreating it");
        let key = self.state.keys().import_queue();
        redis.stream_create_group(&key, GROUP, self.settings.stream_ttl).await?;
        for job in &orphans {
            let (Ok(user), Ok(task)) = (UserId::parse(&job.user_id), TaskId::parse(&job.task_id)) else { continue };
            self.push_stream(redis, &user, &task).await?;
        }
        Ok(())
    }

    /// The heartbeat of a running stream job (see the module documentation).
    pub async fn touch(&self, consumer_name: &str, job: &QueuedJob) {
        let (Some(entry), Some(redis)) = (&job.entry, self.state.redis()) else { return };
        if !redis.is_available() {
            return;
        }
        let key = self.state.keys().import_queue();
        if let Err(e) = redis.stream_touch(&key, GROUP, consumer_name, entry).await {
            tracing::debug!(error = %e, "import heartbeat not recorded in the stream");
        }
    }

    /// Removes a stream job's entry: the job has ended for good (or is not
    /// this service's to run).
    pub async fn done(&self, job: &QueuedJob) {
        let (Some(entry), Some(redis)) = (&job.entry, self.state.redis()) else { return };
        let key = self.state.keys().import_queue();
        if let Err(e) = redis.stream_done(&key, GROUP, entry).await {
            // The entry will be taken over later, found finished, and removed then.
            tracing::debug!(error = %e, "import stream entry not removed yet");
        }
    }
}
