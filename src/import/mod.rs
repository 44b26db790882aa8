//! Document import: accepting an upload, and the workers that turn it into
//! a document with chunks while its task status moves through the stages
//! `queued → parsing → chunking → indexing → completed` (or `failed`).
//!
//! - An accepted upload is staged in SQL: that row is the job's durable
//!   record and lease ([`crate::db::jobs`]). The job is dispatched by the
//!   import queue ([`crate::stores::import_queue`]): the shared Redis stream
//!   when task status is served by Redis, else this instance's bounded
//!   in-process queue.
//! - A worker runs a job only after claiming its lease; this instance renews
//!   the leases of every job it holds (its heartbeat) and a running stream
//!   job's entry, so a job whose instance died is taken over by another
//!   instance (or by the same one, restarted) once the heartbeat timeout has
//!   passed: from the stream (`XAUTOCLAIM`), or from SQL by the sweeper when
//!   it was a local job. Each start counts one attempt; past
//!   `IMPORT_MAX_ATTEMPTS` the task fails, saying that its worker was lost.
//! - Parsing and chunking run in a parse worker, a child process with a
//!   wall-clock and a memory limit ([`isolate`]); whatever a file does to
//!   the parser, the service only sees a failed task.
//! - Storing is idempotent by task: the document id is derived from the
//!   task id and a re-run replaces what an earlier attempt stored.
//! - The staged upload is deleted once the task's final status is written.
//! - An upload is never whole in the service's memory: the HTTP handler
//!   spools it to an unnamed temporary file as it arrives ([`Spool`]),
//!   staging copies that file into SQL in parts, and the worker streams the
//!   parts to the parse worker's standard input.

pub mod chunk;
#[cfg(test)]
mod corpus_check;
pub mod decode;
pub mod docx;
pub mod html;
pub mod isolate;
pub mod parse;
pub mod pdf;
pub mod text;

use std::io::SeekFrom;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::db::{Claim, Database, Document, JobQueue, NewChunk, Orphans, StagedUpload};
use crate::ids::{TaskId, UserId};
use crate::state::{StateError, spawn_periodic};
use crate::stores::import_queue::{Consumer, ImportQueue, QueuedJob};
use crate::stores::limits::{Concurrency, Lease, Limited, Limits};
use crate::stores::tasks::{TaskPatch, TaskRecord, TaskStatus, TaskStatusStore, Transition, now_ms};
use chunk::ChunkSettings;
use isolate::{ParserConfig, WorkerEvent};
use parse::{Format, ParseError, Unsupported};

#[derive(Debug, Clone)]
pub struct ImportSettings {
    pub workers: usize,
    /// A running import not heard from for this long has lost its worker.
    pub heartbeat_timeout: Duration,
    pub parser: ParserConfig,
    /// Starts of one job before its task fails (its worker kept dying).
    pub max_attempts: i64,
    pub stage_delay: Duration,
    /// Told when a document is stored, before its task completes.
    pub cache: crate::stores::cache::ReadCache,
    /// Each job holds one of its user's `LIMIT_IMPORTS_PER_USER` slots
    /// from its upload to its end (on whichever instance runs it).
    pub limits: Arc<Limits>,
}

/// Why an upload was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Unsupported(#[from] Unsupported),
    #[error("the import queue is full")]
    QueueFull,
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("the spooled upload could not be read: {0}")]
    Spool(#[from] std::io::Error),
}

/// The bytes an upload's content type is judged by ([`parse::sniff`] looks
/// at the first 16 KiB at most).
const SNIFF_BYTES: usize = 64 * 1024;

/// An upload as it arrives: spooled to a temporary file, with its first
/// bytes kept in memory to judge its type.
///
/// The file has no name (`O_TMPFILE` on Linux, else it is unlinked as soon
/// as it is created): it goes away when this is dropped, on every path (an
/// error, a 413, a client that went away mid-body), and even when the
/// process is killed, nothing is left in the directory. It is created
/// `0600`, in a directory created `0700` when missing.
pub struct Spool {
    file: tokio::fs::File,
    len: u64,
    head: Vec<u8>,
}

impl Spool {
    /// A new, empty spool in `dir` (created if missing).
    pub async fn create(dir: &Path) -> std::io::Result<Self> {
        let dir = dir.to_owned();
        let file = tokio::task::spawn_blocking(move || {
            crate::db::create_private_dir(&dir).map_err(std::io::Error::other)?;
            tempfile::tempfile_in(&dir)
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(Self { file: tokio::fs::File::from_std(file), len: 0, head: Vec::new() })
    }

    /// Appends `bytes` to the file.
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let keep = SNIFF_BYTES.saturating_sub(self.head.len()).min(bytes.len());
        self.head.extend_from_slice(&bytes[..keep]);
        self.file.write_all(bytes).await?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// How many bytes were written.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first bytes of the file (all of it when it is short).
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// The whole file, from its start, to be read.
    async fn rewind(&mut self) -> std::io::Result<&mut tokio::fs::File> {
        // Writes through a tokio file complete in the background: flush
        // waits for the last one before the position is moved.
        self.file.flush().await?;
        self.file.seek(SeekFrom::Start(0)).await?;
        Ok(&mut self.file)
    }
}

pub struct ImportService {
    db: Database,
    tasks: TaskStatusStore,
    queue: ImportQueue,
    settings: ImportSettings,
    /// This instance's name in leases and in the stream's consumer group.
    instance: String,
    workers: TaskTracker,
    /// Stops the lease heartbeat, which must outlive the workers' drain.
    heartbeat: CancellationToken,
    /// Jobs this instance runs right now (`reportd_imports_in_flight`).
    running: Arc<std::sync::atomic::AtomicUsize>,
}

/// Counts one running job in [`ImportService::running`] while it lives.
struct Running(Arc<std::sync::atomic::AtomicUsize>);

impl Running {
    fn start(count: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Where a running import is, for its task status.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    Parsing(f32),
    Chunking,
    Indexing { stored: usize, total: usize },
}

impl Stage {
    fn progress(self) -> u8 {
        match self {
            Self::Parsing(f) => 5 + (f.clamp(0.0, 1.0) * 55.0) as u8,
            Self::Chunking => 62,
            Self::Indexing { stored, total } => 70 + (29 * stored / total.max(1)) as u8,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Parsing(_) => "parsing",
            Self::Chunking => "chunking",
            Self::Indexing { .. } => "indexing",
        }
    }

    fn message(self, format: Format) -> String {
        match self {
            Self::Parsing(f) => format!("parsing the {} file ({:.0}%)", format.as_str(), f * 100.0),
            Self::Chunking => "cutting the text into chunks".into(),
            Self::Indexing { stored, total } => format!("indexing: {stored} of {total} chunks stored"),
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl ImportService {
    /// Starts the workers, the lease heartbeat and the sweeper that adopts
    /// jobs whose instance died; the workers stop when `cancel` fires.
    pub fn start(
        db: Database,
        tasks: TaskStatusStore,
        queue: ImportQueue,
        settings: ImportSettings,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let instance = format!("{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let this = Arc::new(Self {
            db,
            tasks,
            queue,
            settings,
            instance,
            workers: TaskTracker::new(),
            heartbeat: CancellationToken::new(),
            running: Arc::default(),
        });
        for n in 0..this.settings.workers {
            let (worker, cancel) = (this.clone(), cancel.clone());
            this.workers.spawn(async move {
                let mut consumer = Consumer::new(format!("{}-{n}", worker.instance));
                while let Some(job) = worker.queue.next(&mut consumer, &cancel).await {
                    worker.run(job, &consumer).await;
                }
            });
        }
        let timeout = this.settings.heartbeat_timeout;
        let beat = this.clone();
        spawn_periodic(timeout / 3, this.heartbeat.clone(), move || {
            let beat = beat.clone();
            async move { beat.renew_leases().await }
        });
        let sweeper = this.clone();
        spawn_periodic(timeout / 2, cancel, move || {
            let sweeper = sweeper.clone();
            async move { sweeper.sweep().await }
        });
        this
    }

    /// Makes every job that has not ended pollable again: after a restart
    /// on process memory (or a Redis that lost its data) its task status is
    /// gone, but its staged upload in SQL says it exists; it is recorded as
    /// queued until a worker resumes it.
    pub async fn recover_statuses(&self) {
        let jobs = match self.db.pending_jobs(100_000).await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list unfinished imports");
                return;
            }
        };
        let mut recovered = 0;
        for job in jobs {
            let (Ok(user), Ok(task)) = (UserId::parse(&job.user_id), TaskId::parse(&job.task_id)) else { continue };
            if let Ok(None) = self.tasks.get(&user, &task).await
                && self.tasks.create_at(&user, &task, &job.filename, job.created_at).await.is_ok()
            {
                recovered += 1;
            }
        }
        if recovered > 0 {
            tracing::info!(tasks = recovered, "unfinished imports found at start: they will be resumed");
        }
    }

    /// The status of `user`'s `task` for a poll. While Redis is down, a task
    /// created on another instance meanwhile is in neither this instance's
    /// memory nor a replica, but its job is staged in SQL before its id is
    /// answered: it is recorded here as queued (the recovery after the
    /// outage carries the real progress to Redis, and a status never moves
    /// backwards).
    pub async fn status(&self, user: &UserId, task: &TaskId) -> Result<Option<TaskRecord>, StateError> {
        let found = self.tasks.get(user, task).await?;
        if found.is_some() || !self.tasks.degraded() {
            return Ok(found);
        }
        match self.db.pending_job(user, task).await {
            Ok(Some(job)) => self.tasks.create_at(user, task, &job.filename, job.created_at).await.map(Some),
            Ok(None) => Ok(None),
            Err(e) => {
                tracing::debug!(error = %e, "task not looked up in the database");
                Ok(None)
            }
        }
    }

    fn lease_until(&self) -> i64 {
        now_ms() + millis(self.settings.heartbeat_timeout)
    }

    async fn renew_leases(&self) {
        if let Err(e) = self.db.renew_leases(&self.instance, self.lease_until()).await {
            tracing::warn!(error = %e, "import leases not renewed");
        }
    }

    /// Adopts jobs that no live instance holds: local jobs of an instance
    /// that died or let go of them, stream jobs whose entry was lost, and,
    /// while the stream cannot be used, stream jobs whose worker died. They
    /// join this instance's queue.
    async fn sweep(&self) {
        let include_stream = self.queue.stream().is_none();
        // A stream job not started after four heartbeat timeouts has lost
        // its entry (a healthy stream hands a job out within seconds).
        let now = now_ms();
        let which = Orphans {
            now,
            include_stream,
            unstarted_before: now.saturating_sub(4 * millis(self.settings.heartbeat_timeout)),
        };
        let orphans = match self.db.orphaned_jobs(&which, 16).await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for abandoned imports");
                return;
            }
        };
        for job in orphans {
            if !self.queue.local_has_room() {
                break;
            }
            let (Ok(user), Ok(task)) = (UserId::parse(&job.user_id), TaskId::parse(&job.task_id)) else { continue };
            let adopted = self.db.adopt_job(&user, &task, &self.instance, self.lease_until(), &which).await;
            match adopted {
                Ok(true) => {
                    tracing::info!(%task, "adopting an import whose instance stopped");
                    metrics::counter!("reportd_import_takeovers_total").increment(1);
                    if self.queue.push_local(&user, &task).is_err() {
                        let _ = self.db.release_job(&user, &task, &self.instance).await;
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot adopt an abandoned import"),
            }
        }
    }

    /// How many jobs this instance runs right now.
    pub fn in_flight(&self) -> usize {
        self.running.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many accepted imports have not ended yet, on every instance (the
    /// staged uploads in the database: queued, waiting for a worker, or
    /// running).
    pub async fn unfinished(&self) -> Result<i64, sqlx::Error> {
        self.db.unfinished_jobs().await
    }

    /// Waits (at most `grace`) for the imports in progress to finish once
    /// the workers have been told to stop, then lets go of every job this
    /// instance still holds, so that another instance takes them at once.
    /// Returns false if some did not finish in time.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.workers.close();
        let finished = tokio::time::timeout(grace, self.workers.wait()).await.is_ok();
        // Jobs from the shared stream stay pending under this instance's
        // consumer until they have been idle for the heartbeat timeout: each
        // is added to the stream again, so that another instance reads it
        // at once (the old entry, claimed later, finds the job taken or
        // done and is acknowledged).
        let from_stream = self.db.held_stream_jobs(&self.instance).await.unwrap_or_default();
        match self.db.release_jobs(&self.instance).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "handed imports back to the queue"),
            Err(e) => {
                tracing::warn!(error = %e, "imports not handed back; they are taken over after the heartbeat timeout")
            }
        }
        if let Some(redis) = self.queue.stream() {
            for job in from_stream {
                let (Ok(user), Ok(task)) = (UserId::parse(&job.user_id), TaskId::parse(&job.task_id)) else { continue };
                if let Err(e) = self.queue.push_stream(redis, &user, &task).await {
                    tracing::warn!(%task, error = %e, "import not queued again; it is taken over after the heartbeat timeout");
                }
            }
        }
        self.heartbeat.cancel();
        finished
    }

    /// Accepts an upload: checks its type, stages it (copying the spooled
    /// file into SQL part by part), records the task as `pending` and
    /// queues it.
    /// Accepts an upload as the import task `task`, whose user's import
    /// slot `slot` holds (taken before the body was read; see
    /// [`Self::reserve`]). The slot is freed if the upload is refused, and
    /// kept by the job otherwise, until it ends.
    pub async fn submit(
        &self,
        user: &UserId,
        task: TaskId,
        slot: Lease,
        filename: &str,
        title: Option<&str>,
        spool: Spool,
    ) -> Result<TaskRecord, SubmitError> {
        let record = self.stage(user, &task, filename, title, spool).await?;
        slot.detach();
        Ok(record)
    }

    /// One of `user`'s import slots for a new task, or 429 when they have
    /// `LIMIT_IMPORTS_PER_USER` imports waiting or running: one user's many
    /// uploads cannot fill the queue ahead of everyone else's.
    pub async fn reserve(&self, user: &UserId) -> Result<(TaskId, Lease), Limited> {
        let task = TaskId::generate();
        let slot = self.settings.limits.acquire(Concurrency::Imports, user, task.as_str()).await?;
        Ok((task, slot))
    }

    async fn stage(
        &self,
        user: &UserId,
        task: &TaskId,
        filename: &str,
        title: Option<&str>,
        mut spool: Spool,
    ) -> Result<TaskRecord, SubmitError> {
        let task = task.clone();
        let format = parse::sniff(filename, spool.head())?;
        let stream = self.queue.stream().cloned();
        if stream.is_none() && !self.queue.local_has_room() {
            return Err(SubmitError::QueueFull);
        }
        let upload = StagedUpload {
            task_id: task.to_string(),
            user_id: user.to_string(),
            filename: filename.to_owned(),
            title: title.map(str::trim).unwrap_or_default().chars().take(200).collect(),
            format: format.as_str().to_owned(),
            size_bytes: i64::try_from(spool.len()).unwrap_or(i64::MAX),
            created_at: now_ms(),
        };
        let (queue, holder) = match stream {
            Some(_) => (JobQueue::Redis, None),
            None => (JobQueue::Local, Some((self.instance.as_str(), self.lease_until()))),
        };
        self.db.stage_upload(&upload, spool.rewind().await?, queue, holder).await?;
        // The spool is not needed past this point: its file goes away now.
        drop(spool);
        let record = match self.tasks.create(user, &task, filename).await {
            Ok(r) => r,
            Err(e) => {
                let _ = self.db.drop_staged_upload(user, &task).await;
                return Err(e.into());
            }
        };
        let queued = match stream {
            Some(redis) => match self.queue.push_stream(&redis, user, &task).await {
                Ok(added) => added,
                Err(e) => {
                    // Redis failed between the routing decision and the add:
                    // the job goes to this instance's queue instead.
                    tracing::warn!(error = %e, "import stream unavailable, queueing locally");
                    self.db
                        .requeue_job(user, &task, JobQueue::Local, Some((&self.instance, self.lease_until())))
                        .await?;
                    self.queue.push_local(user, &task).is_ok()
                }
            },
            None => self.queue.push_local(user, &task).is_ok(),
        };
        if !queued {
            let mut patch = TaskPatch::new(TaskStatus::Failed, 0, "failed", "import refused");
            patch.error = Some("the import queue was full".into());
            let _ = self.tasks.advance(user, &task, &patch).await;
            let _ = self.db.drop_staged_upload(user, &task).await;
            return Err(SubmitError::QueueFull);
        }
        metrics::counter!("reportd_imports_submitted_total", "format" => format.as_str()).increment(1);
        Ok(record)
    }

    /// Runs one delivered job, if this worker can claim it.
    async fn run(&self, job: QueuedJob, consumer: &Consumer) {
        let now = now_ms();
        let attempts = match self.db.claim_job(&job.user, &job.task, &self.instance, now, self.lease_until()).await {
            Ok(Claim::Claimed { attempts }) => attempts,
            Ok(Claim::Gone) => {
                // Normally a second delivery of a job that has ended. But a
                // job whose task is still running somewhere and that this
                // database does not know belongs to instances on another
                // database sharing this Redis: leave it to them.
                if let Ok(Some(record)) = self.tasks.get(&job.user, &job.task).await
                    && !record.status.is_terminal()
                {
                    tracing::warn!(
                        task = %job.task,
                        "an import in the shared queue is unknown to this database: \
                         do all instances sharing this Redis share one DATABASE_URL?"
                    );
                    return;
                }
                self.queue.done(&job).await;
                self.settings.limits.release(Concurrency::Imports, &job.user, job.task.as_str()).await;
                return;
            }
            // Another worker runs it; its own delivery will be acknowledged.
            Ok(Claim::Held) => return,
            Err(e) => {
                tracing::warn!(task = %job.task, error = %e, "cannot claim an import; it will be retried");
                return;
            }
        };
        metrics::counter!("reportd_import_attempts_total").increment(1);
        let _running = Running::start(&self.running);
        // The job's slot, renewed while it runs here (its submitter may be
        // gone); freed in `finish`.
        let _slot = self.settings.limits.adopt(Concurrency::Imports, &job.user, job.task.as_str()).await;
        if attempts > self.settings.max_attempts {
            tracing::warn!(task = %job.task, attempts, "import abandoned: its worker was lost too often");
            let error =
                format!("the import was interrupted: its worker stopped {} times before it could finish", attempts - 1);
            self.finish(&job, "unknown", Instant::now(), Err(error)).await;
            return;
        }
        let started = Instant::now();
        let heartbeat = async {
            let mut every = tokio::time::interval(self.settings.heartbeat_timeout / 3);
            loop {
                every.tick().await;
                self.queue.touch(consumer.name(), &job).await;
            }
        };
        let (format, outcome) = tokio::select! {
            outcome = self.process(&job) => outcome,
            _ = heartbeat => unreachable!("the heartbeat never ends"),
        };
        self.finish(&job, format, started, outcome).await;
    }

    /// Writes the final status, then ends the job for good. If the status
    /// cannot be written, the job is let go of instead, to be run again.
    async fn finish(&self, job: &QueuedJob, format: &'static str, started: Instant, outcome: Result<String, String>) {
        let label = if outcome.is_ok() { "completed" } else { "failed" };
        metrics::counter!("reportd_imports_total", "outcome" => label).increment(1);
        metrics::histogram!("reportd_import_duration_seconds", "format" => format, "outcome" => label)
            .record(started.elapsed().as_secs_f64());
        let patch = match outcome {
            Ok(document_id) => {
                let mut p = TaskPatch::new(TaskStatus::Completed, 100, "completed", "import completed");
                p.document_id = Some(document_id);
                p
            }
            Err(error) => {
                tracing::info!(task = %job.task, %error, "import failed");
                let mut p = TaskPatch::new(TaskStatus::Failed, 0, "failed", "import failed");
                p.error = Some(error);
                p
            }
        };
        // The user's import slot is free before the task says it ended, so
        // that a client that sees the end may upload again at once (a job
        // whose status cannot be written runs again and takes it back).
        self.settings.limits.release(Concurrency::Imports, &job.user, job.task.as_str()).await;
        // The final status must not be lost to a short outage: retry it.
        let mut written = false;
        for attempt in 1..=20 {
            match self.tasks.advance(&job.user, &job.task, &patch).await {
                Ok(_) => {
                    written = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!(task = %job.task, attempt, error = %e, "final task status not written yet");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        if !written {
            tracing::error!(task = %job.task, "final task status could not be written; the import will run again");
            let _ = self.db.release_job(&job.user, &job.task, &self.instance).await;
            return;
        }
        if let Err(e) = self.db.drop_staged_upload(&job.user, &job.task).await {
            tracing::warn!(task = %job.task, error = %e, "staged upload not removed");
        }
        self.queue.done(job).await;
    }

    /// Records a stage change; a failure to record it does not stop the import.
    async fn step(&self, job: &QueuedJob, progress: u8, stage: &str, message: impl Into<String>) {
        if !self.settings.stage_delay.is_zero() {
            tokio::time::sleep(self.settings.stage_delay).await;
        }
        self.report(job, progress, stage, message.into()).await;
    }

    async fn report(&self, job: &QueuedJob, progress: u8, stage: &str, message: String) {
        let patch = TaskPatch::new(TaskStatus::Processing, progress, stage, message);
        match self.tasks.advance(&job.user, &job.task, &patch).await {
            Ok(Transition::Applied(_)) => {}
            Ok(other) => tracing::debug!(task = %job.task, ?other, "progress not applied"),
            Err(e) => tracing::warn!(task = %job.task, error = %e, "progress not recorded"),
        }
    }

    /// Forwards progress within a stage to the task status, at most a few
    /// times a second, until the sender is dropped.
    async fn follow(&self, job: &QueuedJob, format: Format, mut stages: watch::Receiver<Option<Stage>>) {
        let mut last: Option<(u8, &'static str)> = None;
        while stages.changed().await.is_ok() {
            let Some(stage) = *stages.borrow_and_update() else { continue };
            let now = (stage.progress(), stage.name());
            if last != Some(now) {
                last = Some(now);
                self.report(job, now.0, now.1, stage.message(format)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs one import; returns the format and the document id, or the
    /// text shown to the user.
    async fn process(&self, job: &QueuedJob) -> (&'static str, Result<String, String>) {
        let upload = match self.db.staged_upload(&job.user, &job.task).await {
            Ok(Some(upload)) => upload,
            Ok(None) => return ("unknown", Err("the upload is no longer available".into())),
            Err(e) => {
                tracing::error!(error = %e, "cannot read a staged upload");
                return ("unknown", Err("the upload could not be read back".into()));
            }
        };
        let Some(format) = Format::parse(&upload.format) else {
            return ("unknown", Err("unknown document format".into()));
        };
        (format.as_str(), self.import(job, format, upload).await)
    }

    async fn import(&self, job: &QueuedJob, format: Format, upload: StagedUpload) -> Result<String, String> {
        // A task whose status was lost (memory after a restart, or a Redis
        // that lost its data) is recorded again, so that it can be polled.
        if let Ok(None) = self.tasks.get(&job.user, &job.task).await {
            let _ = self.tasks.create_at(&job.user, &job.task, &upload.filename, upload.created_at).await;
        }
        self.step(job, 5, "parsing", format!("parsing the {} file", format.as_str())).await;
        let size_bytes = upload.size_bytes;
        // The parts are read one at a time, as the parse worker takes them:
        // one part of the file is in this process at once.
        let (db, user, task) = (self.db.clone(), job.user.clone(), job.task.clone());
        let parts = futures::stream::try_unfold(0i64, move |seq| {
            let (db, user, task) = (db.clone(), user.clone(), task.clone());
            async move { Ok::<_, sqlx::Error>(db.staged_upload_part(&user, &task, seq).await?.map(|p| (p, seq + 1))) }
        });
        let len = u64::try_from(size_bytes).unwrap_or(0);
        let (tx, rx) = watch::channel(None);
        let work = async {
            let tx = tx;
            let prepared = isolate::parse_isolated(&self.settings.parser, format, len, parts, &mut |e| {
                tx.send_replace(Some(match e {
                    WorkerEvent::Parsing(f) => Stage::Parsing(f),
                    WorkerEvent::Chunking => Stage::Chunking,
                }));
            })
            .await
            .map_err(|e| {
                metrics::counter!("reportd_import_parse_failures_total", "reason" => e.label()).increment(1);
                e.to_string()
            })?;
            Ok::<_, String>(prepared)
        };
        let (prepared, ()) = tokio::join!(work, self.follow(job, format, rx));
        let prepared = prepared?;
        self.step(job, 70, "indexing", format!("indexing {} chunks", prepared.chunks.len())).await;
        // Every title goes through the same cleaning as headings: one line,
        // no control characters, bounded.
        let title = [Some(upload.title.as_str()), prepared.title.as_deref(), Some(file_stem(&upload.filename))]
            .into_iter()
            .flatten()
            .map(|t| chunk::clean_line(t, chunk::MAX_HEADING_CHARS))
            .find(|t| !t.is_empty())
            .unwrap_or_else(|| "untitled".into());
        let doc = Document {
            id: document_id(&job.user, &job.task),
            user_id: job.user.to_string(),
            title,
            filename: upload.filename.clone(),
            format: format.as_str().to_owned(),
            size_bytes,
            chunk_count: prepared.chunks.len() as i64,
            created_at: now_ms(),
        };
        let total = prepared.chunks.len();
        let (tx, rx) = watch::channel(None);
        let store = async {
            let tx = tx;
            let mut stored = |n: usize| {
                tx.send_replace(Some(Stage::Indexing { stored: n, total }));
            };
            // Storing is idempotent (one transaction that replaces the
            // document), so a write that lost to another writer (SQLite's
            // busy or locked, past its busy timeout on a loaded host) is
            // simply tried again, a few times (on PostgreSQL too: a
            // serialization failure or deadlock).
            let mut attempt = 0;
            loop {
                match self.db.insert_document(&doc, &prepared.chunks, &mut stored).await {
                    Err(e) if attempt < 3 && crate::db::is_busy(&e) => {
                        attempt += 1;
                        tracing::warn!(error = %e, attempt, "storing a document met a busy database, retrying");
                        tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                    }
                    other => break other,
                }
            }
        };
        let (stored, ()) = tokio::join!(store, self.follow(job, format, rx));
        stored.map_err(|e| {
            tracing::error!(error = %e, "cannot store a document");
            "the document could not be saved".to_string()
        })?;
        self.settings.cache.invalidate(&job.user).await;
        Ok(doc.id)
    }
}

/// What a parse worker produces: the CPU-bound part of an import.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Prepared {
    pub title: Option<String>,
    pub chunks: Vec<NewChunk>,
}

/// The id of the document an import task makes: derived from the task, so
/// that an import run twice stores one document.
pub fn document_id(user: &UserId, task: &TaskId) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("reportd:document:{user}:{task}").as_bytes()).to_string()
}

/// Parsing, chunking and segmenting for search: the CPU-bound part of an
/// import, run in a parse worker. `progress` gets the fraction of parsing done.
pub fn prepare(
    format: Format,
    bytes: &[u8],
    settings: &ChunkSettings,
    progress: parse::Progress<'_>,
) -> Result<Prepared, ParseError> {
    chunk_document(parse::parse_document(format, bytes, progress)?, settings)
}

/// The second half of [`prepare`]: bounding, chunking and segmenting a parsed document.
pub fn chunk_document(doc: parse::ParsedDocument, settings: &ChunkSettings) -> Result<Prepared, ParseError> {
    let doc = chunk::bound(doc);
    let chunks: Vec<NewChunk> = chunk::chunk(&doc, settings)
        .into_iter()
        .map(|c| NewChunk {
            search_text: crate::search::index_text(&c.heading_path, &c.content),
            heading_path: c.heading_path,
            content: c.content,
        })
        .collect();
    if chunks.is_empty() {
        return Err(ParseError::new(parse::ParseErrorKind::NoText, "the document contains no text"));
    }
    Ok(Prepared { title: doc.title, chunks })
}

fn file_stem(filename: &str) -> &str {
    let name = filename.rsplit(['/', '\\']).next().unwrap_or(filename);
    name.rsplit_once('.').map_or(name, |(stem, _)| stem)
}
