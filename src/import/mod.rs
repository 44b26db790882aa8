//! Document import: accepting an upload, and the worker that turns it into a
//! document with chunks while its task status moves from `pending` to
//! `completed` or `failed`.
//!
//! An accepted upload is staged in the database and queued in a bounded
//! in-process queue served by `IMPORT_WORKERS` workers; parsing runs on the
//! blocking pool under a timeout, and a parser panic fails the task instead
//! of the process.

pub mod chunk;
pub mod decode;
pub mod docx;
pub mod html;
pub mod parse;
pub mod pdf;
pub mod text;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::db::{Database, Document, NewChunk, StagedUpload};
use crate::ids::{TaskId, UserId};
use crate::state::StateError;
use crate::tasks::{TaskPatch, TaskRecord, TaskStatus, TaskStatusStore, Transition, now_ms};
use chunk::ChunkSettings;
use parse::{Format, ParseError, Unsupported};

#[derive(Debug, Clone)]
pub struct ImportSettings {
    pub workers: usize,
    pub queue_capacity: usize,
    pub parse_timeout: Duration,
    pub stage_delay: Duration,
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
}

#[derive(Debug)]
struct ImportJob {
    user: UserId,
    task: TaskId,
}

pub struct ImportService {
    db: Database,
    tasks: TaskStatusStore,
    queue: mpsc::Sender<ImportJob>,
    settings: ImportSettings,
    workers: TaskTracker,
}

/// The outcome of the CPU-bound part of an import.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Prepared {
    pub title: Option<String>,
    pub chunks: Vec<NewChunk>,
}

impl ImportService {
    /// Starts the workers; they stop when `cancel` fires.
    pub fn start(
        db: Database,
        tasks: TaskStatusStore,
        settings: ImportSettings,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(settings.queue_capacity);
        let this = Arc::new(Self { db, tasks, queue: tx, settings, workers: TaskTracker::new() });
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..this.settings.workers {
            let (worker, rx, cancel) = (this.clone(), rx.clone(), cancel.clone());
            this.workers.spawn(async move {
                loop {
                    let job = tokio::select! {
                        _ = cancel.cancelled() => break,
                        job = async { rx.lock().await.recv().await } => job,
                    };
                    let Some(job) = job else { break };
                    worker.run(job).await;
                }
            });
        }
        this
    }

    /// Waits (at most `grace`) for the imports in progress to finish once
    /// the workers have been told to stop; returns false if some did not.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.workers.close();
        tokio::time::timeout(grace, self.workers.wait()).await.is_ok()
    }

    /// Accepts an upload: checks its type, stages it, records the task as
    /// `pending` and queues it.
    pub async fn submit(
        &self,
        user: &UserId,
        filename: &str,
        title: Option<&str>,
        bytes: Vec<u8>,
    ) -> Result<TaskRecord, SubmitError> {
        let format = parse::sniff(filename, &bytes)?;
        let permit = self.queue.try_reserve().map_err(|_| SubmitError::QueueFull)?;
        let task = TaskId::generate();
        let upload = StagedUpload {
            task_id: task.to_string(),
            user_id: user.to_string(),
            filename: filename.to_owned(),
            title: title.map(str::trim).unwrap_or_default().chars().take(200).collect(),
            format: format.as_str().to_owned(),
            content: bytes,
            created_at: now_ms(),
        };
        self.db.stage_upload(&upload).await?;
        let record = match self.tasks.create(user, &task, filename).await {
            Ok(r) => r,
            Err(e) => {
                let _ = self.db.drop_staged_upload(user, &task).await;
                return Err(e.into());
            }
        };
        permit.send(ImportJob { user: user.clone(), task });
        Ok(record)
    }

    async fn run(&self, job: ImportJob) {
        let outcome = self.process(&job).await;
        let patch = match outcome {
            Ok(document_id) => {
                metrics::counter!("reportd_imports_total", "outcome" => "completed").increment(1);
                let mut p = TaskPatch::new(TaskStatus::Completed, 100, "completed", "import completed");
                p.document_id = Some(document_id);
                p
            }
            Err(error) => {
                metrics::counter!("reportd_imports_total", "outcome" => "failed").increment(1);
                tracing::info!(task = %job.task, %error, "import failed");
                let mut p = TaskPatch::new(TaskStatus::Failed, 0, "failed", "import failed");
                p.error = Some(error);
                p
            }
        };
        if let Err(e) = self.db.drop_staged_upload(&job.user, &job.task).await {
            tracing::warn!(task = %job.task, error = %e, "staged upload not removed");
        }
        // The final status must not be lost to a short outage: retry it.
        for attempt in 1..=20 {
            match self.tasks.advance(&job.user, &job.task, &patch).await {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(task = %job.task, attempt, error = %e, "final task status not written yet");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        tracing::error!(task = %job.task, "final task status could not be written");
    }

    /// Records progress; a failure to record it does not stop the import.
    async fn step(&self, job: &ImportJob, progress: u8, stage: &str, message: impl Into<String>) {
        if !self.settings.stage_delay.is_zero() {
            tokio::time::sleep(self.settings.stage_delay).await;
        }
        let patch = TaskPatch::new(TaskStatus::Processing, progress, stage, message);
        match self.tasks.advance(&job.user, &job.task, &patch).await {
            Ok(Transition::Applied(_)) => {}
            Ok(other) => tracing::debug!(task = %job.task, ?other, "progress not applied"),
            Err(e) => tracing::warn!(task = %job.task, error = %e, "progress not recorded"),
        }
    }

    /// Runs one import; `Err` carries the text shown to the user.
    async fn process(&self, job: &ImportJob) -> Result<String, String> {
        self.step(job, 5, "loading", "reading the upload").await;
        let upload = self
            .db
            .staged_upload(&job.user, &job.task)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "cannot read a staged upload");
                "the upload could not be read back".to_string()
            })?
            .ok_or("the upload is no longer available")?;
        let format = Format::parse(&upload.format).ok_or("unknown document format")?;
        self.step(job, 15, "parsing", format!("parsing the {} file", format.as_str())).await;
        let size_bytes = upload.content.len() as i64;
        let content = upload.content;
        let work =
            tokio::task::spawn_blocking(move || prepare(format, &content, &ChunkSettings::default(), &mut |_| {}));
        let prepared = match tokio::time::timeout(self.settings.parse_timeout, work).await {
            Err(_) => return Err("the document took too long to parse".into()),
            Ok(Err(join)) if join.is_panic() => {
                tracing::error!(task = %job.task, "parser panicked");
                return Err("the document could not be parsed (it may be corrupt)".into());
            }
            Ok(Err(_)) => return Err("the import was interrupted".into()),
            Ok(Ok(result)) => result.map_err(|e| e.message)?,
        };
        self.step(job, 60, "chunking", format!("{} chunks", prepared.chunks.len())).await;
        let title = Some(upload.title.clone())
            .filter(|t| !t.is_empty())
            .or_else(|| prepared.title.clone())
            .unwrap_or_else(|| file_stem(&upload.filename));
        let doc = Document {
            id: uuid::Uuid::new_v4().to_string(),
            user_id: job.user.to_string(),
            title,
            filename: upload.filename.clone(),
            format: format.as_str().to_owned(),
            size_bytes,
            chunk_count: prepared.chunks.len() as i64,
            created_at: now_ms(),
        };
        self.step(job, 75, "storing", "saving the document").await;
        self.db.insert_document(&doc, &prepared.chunks).await.map_err(|e| {
            tracing::error!(error = %e, "cannot store a document");
            "the document could not be saved".to_string()
        })?;
        Ok(doc.id)
    }
}

/// Parsing, chunking and segmenting for search: the CPU-bound part of an
/// import, run in a parse worker. `progress` gets the fraction of parsing done.
pub fn prepare(
    format: Format,
    bytes: &[u8],
    settings: &ChunkSettings,
    progress: parse::Progress<'_>,
) -> Result<Prepared, ParseError> {
    let doc = chunk::bound(parse::parse_document(format, bytes, progress)?);
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

fn file_stem(filename: &str) -> String {
    let name = filename.rsplit(['/', '\\']).next().unwrap_or(filename);
    let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
    if stem.is_empty() { "untitled".into() } else { stem.chars().take(200).collect() }
}
