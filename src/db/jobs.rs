//! Staged uploads, which are also the durable record of every import job.
//!
//! An accepted upload is stored here until its import has ended for good;
//! its row says which queue dispatches it (`redis`: the shared stream,
//! `local`: one instance's in-process queue), who holds it (`claimed_by`, an
//! instance id) and until when (`lease_until`, renewed by the holder's
//! heartbeat), and how many times it was started (`attempts`).
//!
//! The lease is the one authority on who runs a job: a worker runs a job
//! only after [`Database::claim_job`] succeeded, which it can only do while
//! nobody else holds a live lease. Queues may deliver a job twice (a stream
//! entry claimed by two instances, a sweep that races a delivery): the claim
//! makes that harmless. A job whose holder died is found by
//! [`Database::orphaned_jobs`] once its lease has run out.
//!
//! The bytes of an upload are stored in parts of at most
//! [`UPLOAD_PART_BYTES`] (`staged_upload_parts`, ordered by `seq`), never as
//! one value: staging copies the spooled file part by part and the worker
//! reads it back part by part, so that an upload of any size costs the
//! service about one part of memory at a time.

use sqlx::FromRow;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::Database;
use crate::ids::{TaskId, UserId};

/// The largest part of a staged upload, in bytes.
pub const UPLOAD_PART_BYTES: usize = 1024 * 1024;

/// An upload waiting for (or being processed by) its import job; its bytes
/// are read with [`Database::staged_upload_part`].
#[derive(Debug, Clone, FromRow)]
pub struct StagedUpload {
    pub task_id: String,
    pub user_id: String,
    pub filename: String,
    pub title: String,
    pub format: String,
    pub size_bytes: i64,
    pub created_at: i64,
}

/// Which queue dispatches a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobQueue {
    /// The shared Redis stream: any instance's worker may take it.
    Redis,
    /// The in-process queue of the instance that holds it.
    Local,
}

impl JobQueue {
    fn as_str(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Local => "local",
        }
    }
}

/// The outcome of [`Database::claim_job`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This worker holds the job now; it is its `attempts`-th start.
    Claimed { attempts: i64 },
    /// Another live worker holds it.
    Held,
    /// The job has ended (its upload is gone).
    Gone,
}

/// Which jobs a sweep may adopt (see [`Database::orphaned_jobs`]).
#[derive(Debug, Clone, Copy)]
pub struct Orphans {
    /// Jobs whose lease ends before this (ms since the epoch).
    pub now: i64,
    /// Stream jobs too (the stream cannot deliver them now).
    pub include_stream: bool,
    /// Stream jobs never started and staged before this have lost their entry.
    pub unstarted_before: i64,
}

/// A job found by a sweep.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct JobRef {
    pub user_id: String,
    pub task_id: String,
}

/// A job not yet ended, as [`Database::pending_jobs`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct PendingJob {
    pub user_id: String,
    pub task_id: String,
    pub filename: String,
    pub created_at: i64,
}

impl Database {
    /// Stages an upload as a job of `queue`, held by `holder` until
    /// `lease_until` when given (local jobs are held by the instance whose
    /// queue has them; stream jobs by nobody until a worker claims them).
    ///
    /// Its bytes are read from `content` (exactly `upload.size_bytes` of
    /// them) and stored in parts, all in one transaction: no worker can see
    /// the job before its last part is there.
    pub async fn stage_upload<R: AsyncRead + Unpin + Send>(
        &self,
        upload: &StagedUpload,
        content: &mut R,
        queue: JobQueue,
        holder: Option<(&str, i64)>,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO staged_uploads \
             (task_id, user_id, filename, title, format, size_bytes, created_at, queue, claimed_by, lease_until) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&upload.task_id)
        .bind(&upload.user_id)
        // The filename and title are the client's; the title is cleaned
        // when the import ends, but must be storable until then.
        .bind(super::storable(&upload.filename).into_owned())
        .bind(super::storable(&upload.title).into_owned())
        .bind(&upload.format)
        .bind(upload.size_bytes)
        .bind(upload.created_at)
        .bind(queue.as_str())
        .bind(holder.map(|(h, _)| h.to_owned()))
        .bind(holder.map_or(0, |(_, until)| until))
        .execute(&mut *tx)
        .await?;
        let mut stored: i64 = 0;
        for seq in 0i64.. {
            let part = read_part(content).await.map_err(sqlx::Error::Io)?;
            if part.is_empty() {
                break;
            }
            stored += part.len() as i64;
            sqlx::query("INSERT INTO staged_upload_parts (user_id, task_id, seq, data) VALUES ($1, $2, $3, $4)")
                .bind(&upload.user_id)
                .bind(&upload.task_id)
                .bind(seq)
                .bind(part)
                .execute(&mut *tx)
                .await?;
        }
        // A spool that does not hold what was received must not become a
        // job: its import would parse a different file.
        if stored != upload.size_bytes {
            return Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the upload has {stored} bytes, {} were received", upload.size_bytes),
            )));
        }
        tx.commit().await
    }

    /// Part `seq` (from 0) of a staged upload, or `None` past its last part.
    pub async fn staged_upload_part(
        &self,
        user: &UserId,
        task: &TaskId,
        seq: i64,
    ) -> Result<Option<Vec<u8>>, sqlx::Error> {
        sqlx::query_scalar("SELECT data FROM staged_upload_parts WHERE user_id = $1 AND task_id = $2 AND seq = $3")
            .bind(user.as_str())
            .bind(task.as_str())
            .bind(seq)
            .fetch_optional(self.pool())
            .await
    }

    /// Moves a job to another queue (a stream job whose enqueue failed goes
    /// to the local queue of `holder`).
    pub async fn requeue_job(
        &self,
        user: &UserId,
        task: &TaskId,
        queue: JobQueue,
        holder: Option<(&str, i64)>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE staged_uploads SET queue = $1, claimed_by = $2, lease_until = $3 \
             WHERE user_id = $4 AND task_id = $5",
        )
        .bind(queue.as_str())
        .bind(holder.map(|(h, _)| h.to_owned()))
        .bind(holder.map_or(0, |(_, until)| until))
        .bind(user.as_str())
        .bind(task.as_str())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn staged_upload(&self, user: &UserId, task: &TaskId) -> Result<Option<StagedUpload>, sqlx::Error> {
        sqlx::query_as(
            "SELECT task_id, user_id, filename, title, format, size_bytes, created_at FROM staged_uploads \
             WHERE user_id = $1 AND task_id = $2",
        )
        .bind(user.as_str())
        .bind(task.as_str())
        .fetch_optional(self.pool())
        .await
    }

    /// Takes the job for `me` until `lease_until` if nobody else holds a live
    /// lease on it (`now` decides what is live), counting one more attempt.
    pub async fn claim_job(
        &self,
        user: &UserId,
        task: &TaskId,
        me: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Claim, sqlx::Error> {
        let attempts: Option<i64> = sqlx::query_scalar(
            "UPDATE staged_uploads SET claimed_by = $1, lease_until = $2, attempts = attempts + 1 \
             WHERE user_id = $3 AND task_id = $4 AND (claimed_by IS NULL OR claimed_by = $1 OR lease_until < $5) \
             RETURNING attempts",
        )
        .bind(me)
        .bind(lease_until)
        .bind(user.as_str())
        .bind(task.as_str())
        .bind(now)
        .fetch_optional(self.pool())
        .await?;
        if let Some(attempts) = attempts {
            return Ok(Claim::Claimed { attempts });
        }
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT attempts FROM staged_uploads WHERE user_id = $1 AND task_id = $2")
                .bind(user.as_str())
                .bind(task.as_str())
                .fetch_optional(self.pool())
                .await?;
        Ok(if exists.is_some() { Claim::Held } else { Claim::Gone })
    }

    /// The heartbeat of an instance: extends the lease of every job it holds
    /// (queued locally or running). Returns how many it holds.
    pub async fn renew_leases(&self, me: &str, lease_until: i64) -> Result<u64, sqlx::Error> {
        let done = sqlx::query("UPDATE staged_uploads SET lease_until = $1 WHERE claimed_by = $2")
            .bind(lease_until)
            .bind(me)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }

    /// Lets go of one job, so that any instance may take it at once.
    pub async fn release_job(&self, user: &UserId, task: &TaskId, me: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE staged_uploads SET claimed_by = NULL, lease_until = 0 \
             WHERE user_id = $1 AND task_id = $2 AND claimed_by = $3",
        )
        .bind(user.as_str())
        .bind(task.as_str())
        .bind(me)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The jobs `me` holds that came from the shared stream.
    pub async fn held_stream_jobs(&self, me: &str) -> Result<Vec<JobRef>, sqlx::Error> {
        sqlx::query_as("SELECT user_id, task_id FROM staged_uploads WHERE claimed_by = $1 AND queue = 'redis'")
            .bind(me)
            .fetch_all(self.pool())
            .await
    }

    /// Lets go of every job `me` holds (on shutdown).
    pub async fn release_jobs(&self, me: &str) -> Result<u64, sqlx::Error> {
        let done = sqlx::query("UPDATE staged_uploads SET claimed_by = NULL, lease_until = 0 WHERE claimed_by = $1")
            .bind(me)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }

    /// Jobs that nobody runs and no queue will deliver: local jobs whose
    /// holder's lease ran out (it died) or that were let go of; with
    /// `include_stream`, also stream jobs whose lease ran out (while the
    /// stream cannot deliver them; otherwise the stream's own take-over
    /// handles them); and stream jobs never started although staged before
    /// `unstarted_before` — their entry was lost (a Redis failover drops
    /// what the old master had not replicated yet). Oldest first.
    pub async fn orphaned_jobs(&self, which: &Orphans, limit: i64) -> Result<Vec<JobRef>, sqlx::Error> {
        sqlx::query_as(
            "SELECT user_id, task_id FROM staged_uploads \
             WHERE lease_until < $1 AND (queue = 'local' OR $2 = 1 OR (attempts = 0 AND created_at < $3)) \
             ORDER BY created_at LIMIT $4",
        )
        .bind(which.now)
        .bind(i64::from(which.include_stream))
        .bind(which.unstarted_before)
        .bind(limit)
        .fetch_all(self.pool())
        .await
    }

    /// Takes an orphaned job (see [`Self::orphaned_jobs`]) into `me`'s local
    /// queue, if it is still orphaned: true when this instance has it now.
    pub async fn adopt_job(
        &self,
        user: &UserId,
        task: &TaskId,
        me: &str,
        lease_until: i64,
        which: &Orphans,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE staged_uploads SET queue = 'local', claimed_by = $1, lease_until = $2 \
             WHERE user_id = $3 AND task_id = $4 AND lease_until < $5 \
             AND (queue = 'local' OR $6 = 1 OR (attempts = 0 AND created_at < $7))",
        )
        .bind(me)
        .bind(lease_until)
        .bind(user.as_str())
        .bind(task.as_str())
        .bind(which.now)
        .bind(i64::from(which.include_stream))
        .bind(which.unstarted_before)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// How many jobs have not ended (on every instance).
    pub async fn unfinished_jobs(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT COUNT(*) FROM staged_uploads").fetch_one(self.pool()).await
    }

    /// The job of one task, if it has not ended.
    pub async fn pending_job(&self, user: &UserId, task: &TaskId) -> Result<Option<PendingJob>, sqlx::Error> {
        sqlx::query_as(
            "SELECT user_id, task_id, filename, created_at FROM staged_uploads WHERE user_id = $1 AND task_id = $2",
        )
        .bind(user.as_str())
        .bind(task.as_str())
        .fetch_optional(self.pool())
        .await
    }

    /// Every job not yet ended (at most `limit`), oldest first.
    pub async fn pending_jobs(&self, limit: i64) -> Result<Vec<PendingJob>, sqlx::Error> {
        sqlx::query_as("SELECT user_id, task_id, filename, created_at FROM staged_uploads ORDER BY created_at LIMIT $1")
            .bind(limit)
            .fetch_all(self.pool())
            .await
    }

    /// Stream jobs that no worker holds: after Redis lost its stream (a
    /// restart without persistence), they are added to it again.
    pub async fn unclaimed_stream_jobs(&self, limit: i64) -> Result<Vec<JobRef>, sqlx::Error> {
        sqlx::query_as(
            "SELECT user_id, task_id FROM staged_uploads WHERE queue = 'redis' AND claimed_by IS NULL \
             ORDER BY created_at LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await
    }

    /// Ends a job for good: its upload is no longer needed. Its parts go
    /// first and explicitly (the foreign key would cascade too, but only
    /// where SQLite's `foreign_keys` pragma is on).
    pub async fn drop_staged_upload(&self, user: &UserId, task: &TaskId) -> Result<(), sqlx::Error> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM staged_upload_parts WHERE user_id = $1 AND task_id = $2")
            .bind(user.as_str())
            .bind(task.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM staged_uploads WHERE user_id = $1 AND task_id = $2")
            .bind(user.as_str())
            .bind(task.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }
}

/// Reads the next part of `content`: up to [`UPLOAD_PART_BYTES`], fewer only
/// at its end, nothing past it.
async fn read_part<R: AsyncRead + Unpin>(content: &mut R) -> std::io::Result<Vec<u8>> {
    let mut part = vec![0u8; UPLOAD_PART_BYTES];
    let mut filled = 0;
    while filled < part.len() {
        match content.read(&mut part[filled..]).await? {
            0 => break,
            n => filled += n,
        }
    }
    part.truncate(filled);
    Ok(part)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS};

    /// A database migrated up to `version`: SQLite in `dir`, or a fresh
    /// PostgreSQL database when `REPORTD_TEST_POSTGRES` names a server.
    async fn database_at(dir: &std::path::Path, version: i64) -> (sqlx::AnyPool, &'static sqlx::migrate::Migrator) {
        sqlx::any::install_default_drivers();
        let (url, migrator) = match std::env::var("REPORTD_TEST_POSTGRES") {
            Ok(admin) => {
                let name = format!("jobs_{}", uuid::Uuid::new_v4().simple());
                let pool = sqlx::AnyPool::connect(&admin).await.unwrap();
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&pool).await.unwrap();
                pool.close().await;
                let (base, _) = admin.rsplit_once('/').unwrap();
                (format!("{base}/{name}"), &POSTGRES_MIGRATIONS)
            }
            Err(_) => (format!("sqlite://{}/t.db?mode=rwc", dir.display()), &SQLITE_MIGRATIONS),
        };
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        migrator.run_to(version, &pool).await.unwrap();
        (pool, migrator)
    }

    async fn add_user(pool: &sqlx::AnyPool, id: &str) {
        sqlx::query(
            "INSERT INTO users (id, username, username_key, password_hash, is_admin, created_at) \
             VALUES ($1, $1, $1, 'x', 0, 0)",
        )
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
    }

    /// Bytes that differ from part to part, so that a part read in the
    /// wrong place does not compare equal.
    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ (i / UPLOAD_PART_BYTES) as u8).collect()
    }

    async fn read_back(db: &Database, user: &UserId, task: &TaskId) -> (Vec<usize>, Vec<u8>) {
        let (mut sizes, mut all) = (Vec::new(), Vec::new());
        for seq in 0.. {
            let Some(part) = db.staged_upload_part(user, task, seq).await.unwrap() else { break };
            sizes.push(part.len());
            all.extend_from_slice(&part);
        }
        (sizes, all)
    }

    /// A migrated database in `dir` with one user.
    async fn with_a_user(dir: &std::path::Path) -> (Database, UserId) {
        let (pool, migrator) = database_at(dir, 0).await;
        migrator.run(&pool).await.unwrap();
        let db = Database { pool };
        let user = UserId::generate();
        add_user(db.pool(), user.as_str()).await;
        (db, user)
    }

    fn staged(user: &UserId, task: &TaskId, size: usize, created_at: i64) -> StagedUpload {
        StagedUpload {
            task_id: task.to_string(),
            user_id: user.to_string(),
            filename: "f.txt".into(),
            title: String::new(),
            format: "txt".into(),
            size_bytes: size as i64,
            created_at,
        }
    }

    /// A stream job that was never started long after it was staged lost
    /// its entry and is adopted; a recent one is left to the stream, and a
    /// local job under a live lease to its holder.
    #[tokio::test]
    async fn stream_jobs_that_never_started_are_orphans_after_a_while() {
        let dir = tempfile::TempDir::new().unwrap();
        let (db, user) = with_a_user(dir.path()).await;
        let (lost, recent, held) = (TaskId::generate(), TaskId::generate(), TaskId::generate());
        let upload = |task: &TaskId, created_at: i64| staged(&user, task, 1, created_at);
        db.stage_upload(&upload(&lost, 1_000), &mut &b"x"[..], JobQueue::Redis, None).await.unwrap();
        db.stage_upload(&upload(&recent, 90_000), &mut &b"x"[..], JobQueue::Redis, None).await.unwrap();
        db.stage_upload(&upload(&held, 1_000), &mut &b"x"[..], JobQueue::Local, Some(("a", 500_000))).await.unwrap();
        let which = Orphans { now: 100_000, include_stream: false, unstarted_before: 40_000 };
        let found: Vec<String> = db.orphaned_jobs(&which, 10).await.unwrap().into_iter().map(|j| j.task_id).collect();
        assert_eq!(found, [lost.to_string()]);
        assert!(!db.adopt_job(&user, &recent, "b", 200_000, &which).await.unwrap());
        assert!(!db.adopt_job(&user, &held, "b", 200_000, &which).await.unwrap());
        assert!(db.adopt_job(&user, &lost, "b", 200_000, &which).await.unwrap());
        assert!(db.orphaned_jobs(&which, 10).await.unwrap().is_empty(), "adopted: leased now");
        // While the stream cannot deliver, every stream job without a live lease is an orphan.
        let gap = Orphans { include_stream: true, ..which };
        let found: Vec<String> = db.orphaned_jobs(&gap, 10).await.unwrap().into_iter().map(|j| j.task_id).collect();
        assert_eq!(found, [recent.to_string()]);
    }

    /// Staging stores an upload in parts of at most 1 MiB, in order, that
    /// read back to the same bytes; a reader that ends early stages nothing;
    /// dropping the upload drops its parts.
    #[tokio::test]
    async fn uploads_are_staged_in_parts() {
        let dir = tempfile::TempDir::new().unwrap();
        let (db, user) = with_a_user(dir.path()).await;
        let len = 2 * UPLOAD_PART_BYTES + 12_345;
        let bytes = content(len);
        let (task, empty) = (TaskId::generate(), TaskId::generate());
        let upload = |task: &TaskId, size: usize| staged(&user, task, size, 1);
        db.stage_upload(&upload(&task, len), &mut bytes.as_slice(), JobQueue::Local, Some(("me", 10))).await.unwrap();
        db.stage_upload(&upload(&empty, 0), &mut &b""[..], JobQueue::Redis, None).await.unwrap();

        let staged = db.staged_upload(&user, &task).await.unwrap().unwrap();
        assert_eq!(staged.size_bytes, len as i64);
        let (sizes, back) = read_back(&db, &user, &task).await;
        assert_eq!(sizes, [UPLOAD_PART_BYTES, UPLOAD_PART_BYTES, 12_345]);
        assert!(back == bytes, "the parts read back to the upload");
        assert_eq!(read_back(&db, &user, &empty).await.0, Vec::<usize>::new());

        // Fewer bytes than announced: nothing of it is kept.
        let short = TaskId::generate();
        let err =
            db.stage_upload(&upload(&short, len + 1), &mut bytes.as_slice(), JobQueue::Local, None).await.unwrap_err();
        assert!(matches!(err, sqlx::Error::Io(_)), "{err}");
        assert!(db.staged_upload(&user, &short).await.unwrap().is_none());
        assert!(db.staged_upload_part(&user, &short, 0).await.unwrap().is_none());

        db.drop_staged_upload(&user, &task).await.unwrap();
        assert!(db.staged_upload(&user, &task).await.unwrap().is_none());
        let parts: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM staged_upload_parts").fetch_one(db.pool()).await.unwrap();
        assert_eq!(parts, 0);
    }

    /// Uploads staged as one BLOB before migration 0005 are cut into parts
    /// by it and read back whole; an empty one has no part.
    #[tokio::test]
    async fn uploads_staged_before_the_parts_migration_survive_it() {
        let dir = tempfile::TempDir::new().unwrap();
        let (pool, migrator) = database_at(dir.path(), 4).await;
        let user = UserId::generate();
        add_user(&pool, user.as_str()).await;
        let sizes = [0, 10, UPLOAD_PART_BYTES, 3 * UPLOAD_PART_BYTES + 1];
        let tasks: Vec<TaskId> = sizes.iter().map(|_| TaskId::generate()).collect();
        for (task, size) in tasks.iter().zip(sizes) {
            sqlx::query(
                "INSERT INTO staged_uploads (task_id, user_id, filename, title, format, content, created_at) \
                 VALUES ($1, $2, 'f.txt', '', 'txt', $3, 1)",
            )
            .bind(task.as_str())
            .bind(user.as_str())
            .bind(content(size))
            .execute(&pool)
            .await
            .unwrap();
        }
        migrator.run(&pool).await.unwrap();
        let db = Database { pool };
        for (task, size) in tasks.iter().zip(sizes) {
            let staged = db.staged_upload(&user, task).await.unwrap().unwrap();
            assert_eq!(staged.size_bytes, size as i64);
            let (parts, back) = read_back(&db, &user, task).await;
            assert!(parts.iter().all(|p| *p <= UPLOAD_PART_BYTES && *p > 0), "{parts:?}");
            assert_eq!(parts.len(), size.div_ceil(UPLOAD_PART_BYTES));
            assert!(back == content(size), "{size} bytes read back");
        }
    }
}
