//! The SQL store: users, documents, chunks and staged uploads (which are
//! also the durable record of import jobs, see [`jobs`]).
//!
//! One pool type ([`sqlx::AnyPool`]) serves SQLite (the embedded default) and
//! PostgreSQL (several instances). Queries are written once, with `$N`
//! placeholders that both accept; ids are TEXT and times are Unix
//! milliseconds (BIGINT) so that no driver-specific type is needed. Each
//! backend has its own migration folder, applied at start.

mod documents;
pub mod jobs;
mod users;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

pub use documents::{Chunk, Document, NewChunk};
pub use jobs::{Claim, JobQueue, JobRef, Orphans, PendingJob, StagedUpload, UPLOAD_PART_BYTES};
pub use users::{User, username_key};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// The migrations embedded in this binary for SQLite (`true`) or
/// PostgreSQL: what [`Database::connect`] applies, and what `reportd doctor`
/// compares with a database's applied ones.
pub fn migrator(sqlite: bool) -> &'static sqlx::migrate::Migrator {
    if sqlite { &SQLITE_MIGRATIONS } else { &POSTGRES_MIGRATIONS }
}

#[derive(Clone)]
pub struct Database {
    pool: AnyPool,
}

impl Database {
    /// Connects, creating the SQLite file (and its directory) if needed, and
    /// applies the migrations.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let is_sqlite = url.starts_with("sqlite:");
        let url = if is_sqlite { prepare_sqlite(url)? } else { url.to_owned() };
        let options = AnyConnectOptions::from_str(&url).context("invalid DATABASE_URL")?;
        let pool = AnyPoolOptions::new()
            .max_connections(if is_sqlite { 8 } else { 16 })
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if is_sqlite {
                        // WAL lets two instances on one host share the file;
                        // busy_timeout makes a writer wait for the other
                        // instead of failing at once.
                        conn.execute("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .context("cannot open the database")?;
        migrator(is_sqlite).run(&pool).await.context("database migration failed")?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// True when the database answers within a second.
    pub async fn ping(&self) -> bool {
        let q = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&self.pool);
        matches!(tokio::time::timeout(Duration::from_secs(1), q).await, Ok(Ok(1)))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Makes sure the SQLite file can be created: its directory exists and the
/// URL asks for `mode=rwc`.
fn prepare_sqlite(url: &str) -> anyhow::Result<String> {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(url.to_owned());
    }
    if let Some(dir) = std::path::Path::new(path).parent()
        && !dir.as_os_str().is_empty()
    {
        create_private_dir(dir)?;
    }
    // The file holds password hashes: readable by this user only. SQLite
    // gives its -wal and -shm files the mode of the database file.
    restrict_file(std::path::Path::new(path))?;
    Ok(if url.contains("mode=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    })
}

/// Creates `dir` (and its parents) if missing; a directory created here is
/// `0700`, as it holds the database or the generated secret. An existing
/// directory is left as its owner set it.
pub fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).with_context(|| format!("cannot create {}", dir.display()))
}

/// Creates the SQLite file `0600` if missing, and takes away group and
/// other access from it and its -wal/-shm files if they have any.
fn restrict_file(path: &std::path::Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        if !path.exists() {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
        }
        for suffix in ["", "-wal", "-shm"] {
            let file = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
            if let Ok(meta) = std::fs::metadata(&file)
                && meta.permissions().mode() & 0o077 != 0
            {
                let mode = meta.permissions().mode() & 0o700;
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode))
                    .with_context(|| format!("cannot restrict {}", file.display()))?;
            }
        }
    }
    Ok(())
}

/// `text` as both databases can store it: PostgreSQL's TEXT cannot hold a
/// NUL character (the insert fails, where SQLite stores it), so NULs are
/// dropped before text a client sent is written. Borrowed when there is none.
pub(crate) fn storable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') { std::borrow::Cow::Owned(text.replace('\0', "")) } else { std::borrow::Cow::Borrowed(text) }
}

/// What a database error says about the database itself (by its own code,
/// on both databases): errors the client may retry, and the operator must
/// hear of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseTrouble {
    /// Out of disk: SQLite `SQLITE_FULL` (13), PostgreSQL `53100 disk_full`.
    Full,
    /// The database cannot serve now but may soon: PostgreSQL out of memory
    /// or connections (the rest of class 53), a lost or refused connection
    /// (class 08, `57P01`–`57P03` shutting down or starting), or no pooled
    /// connection within the pool's timeout.
    Unavailable,
    /// Another writer held what was needed past the wait: SQLite `BUSY` (5)
    /// and `LOCKED` (6) with their extended codes, PostgreSQL serialization
    /// failures and deadlocks (class 40) and `55P03 lock_not_available`.
    Busy,
}

pub fn database_trouble(e: &sqlx::Error) -> Option<DatabaseTrouble> {
    match e {
        // Not `Io`: the staging of an upload reports its spool's read
        // errors as that, and those are not the database's.
        sqlx::Error::PoolTimedOut => Some(DatabaseTrouble::Unavailable),
        sqlx::Error::Database(d) => {
            let code = d.code().unwrap_or_default();
            // SQLite codes are numbers (extended codes keep the primary
            // code in their low byte); PostgreSQL's are five-character
            // SQLSTATEs, which never parse as a number below 256 here.
            if let Ok(n) = code.parse::<u32>()
                && code.len() < 5
            {
                return match n & 0xff {
                    13 => Some(DatabaseTrouble::Full),
                    5 | 6 => Some(DatabaseTrouble::Busy),
                    _ => None,
                };
            }
            match code.as_ref() {
                "53100" => Some(DatabaseTrouble::Full),
                "57P01" | "57P02" | "57P03" => Some(DatabaseTrouble::Unavailable),
                "55P03" => Some(DatabaseTrouble::Busy),
                c if c.starts_with("53") || c.starts_with("08") => Some(DatabaseTrouble::Unavailable),
                c if c.starts_with("40") => Some(DatabaseTrouble::Busy),
                _ => None,
            }
        }
        _ => None,
    }
}

/// True when another writer held what `e`'s statement needed (SQLite busy
/// or locked, a PostgreSQL serialization failure, deadlock or lock wait).
pub fn is_busy(e: &sqlx::Error) -> bool {
    database_trouble(e) == Some(DatabaseTrouble::Busy)
}

/// True when `e` is a unique-constraint violation (both databases).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}
