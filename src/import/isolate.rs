//! Parsing in a child process: the parse worker.
//!
//! Parsers meet whatever users upload, and some inputs make a parser panic,
//! loop for minutes or allocate without bound (NOTES.md: pdf-extract panics
//! by design and once took 15 minutes on one PDF). A thread cannot be
//! stopped, so the service never parses on its own threads: the binary
//! re-executes itself as `reportd parse-worker` ([`WORKER_ARG`]), hands it the
//! file on standard input (streamed from the staged upload's parts, so that
//! the service never holds the whole file) and reads newline-delimited JSON
//! messages ([`Message`]) from its standard output: progress while it
//! parses, then the result. The child runs under
//!
//! - a memory limit (`RLIMIT_DATA`, `IMPORT_PARSE_MEMORY_MB`): an allocation
//!   past it fails and the child aborts;
//! - a wall-clock limit (`IMPORT_PARSE_TIMEOUT_SECONDS`): the parent kills it
//!   (SIGKILL) when it passes; `RLIMIT_CPU` backs this up;
//! - its parent's life: it is killed when the service dies
//!   (`PR_SET_PDEATHSIG`), and when the import that started it is dropped
//!   (`kill_on_drop`), so when a task ends, its work has stopped.
//!
//! Whatever the child does, the service only sees a failed import with a
//! readable error, and the next import starts a fresh child.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::{FramedRead, LinesCodec};

use super::chunk::ChunkSettings;
use super::parse::{Format, ParseError, ParseErrorKind};
use super::{Prepared, chunk_document};
use crate::import::parse::parse_document;

/// The first argument that turns the binary into a parse worker.
pub const WORKER_ARG: &str = "parse-worker";

/// How the service runs its parse workers.
#[derive(Debug, Clone)]
pub struct ParserConfig {
    /// The `reportd` binary (the running one by default).
    pub exe: PathBuf,
    pub timeout: Duration,
    pub memory_bytes: u64,
    pub chunk: ChunkSettings,
}

/// One line of a parse worker's output.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Message {
    /// The fraction of parsing done (0.0–1.0).
    Progress(f32),
    /// Parsing is done; the text is being cut into chunks and segmented.
    Chunking,
    Done(Prepared),
    Failed(ParseError),
}

/// What the parent learns while a worker runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WorkerEvent {
    Parsing(f32),
    Chunking,
}

/// Why a parse worker gave no document. Its `Display` is the text shown to
/// the user as the task's `error`.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("{0}")]
    Parse(ParseError),
    #[error("the document took too long to parse (more than {0} s); it may be damaged or too complex")]
    Timeout(u64),
    #[error("the document needs more memory to parse than an import may use ({0} MB); it may be damaged")]
    Memory(u64),
    #[error("the document could not be parsed: the parser failed on it (the file may be damaged)")]
    Crashed,
    #[error("the document could not be parsed: the parser could not be run")]
    Spawn,
    #[error("the upload could not be read back")]
    Input,
}

impl WorkerError {
    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Parse(_) => "parse_error",
            Self::Timeout(_) => "timeout",
            Self::Memory(_) => "memory",
            Self::Crashed => "crashed",
            Self::Spawn => "spawn",
            Self::Input => "input",
        }
    }
}

/// Runs one parse in a fresh child process and returns what it produced.
/// The file is `len` bytes, read from `input` part by part as the child
/// takes them in, so that the whole file only exists in the child.
/// `on_event` hears progress as it arrives.
pub async fn parse_isolated<S, E>(
    config: &ParserConfig,
    format: Format,
    len: u64,
    input: S,
    on_event: &mut (dyn FnMut(WorkerEvent) + Send),
) -> Result<Prepared, WorkerError>
where
    S: Stream<Item = Result<Vec<u8>, E>> + Send,
    E: std::fmt::Display,
{
    let mut command = tokio::process::Command::new(&config.exe);
    command
        .arg(WORKER_ARG)
        .arg(format.as_str())
        .arg(config.chunk.size.to_string())
        .arg(config.chunk.overlap.to_string())
        .arg(len.to_string())
        // The worker needs nothing from the service's environment (secrets
        // included).
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let limits = Limits { memory_bytes: config.memory_bytes, cpu_seconds: config.timeout.as_secs() + 5 };
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (setrlimit, prctl).
    unsafe {
        command.pre_exec(move || limits.apply());
    }
    let mut child = command.spawn().map_err(|e| {
        tracing::error!(exe = %config.exe.display(), error = %e, "cannot start a parse worker");
        WorkerError::Spawn
    })?;
    let mut stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");

    // Feeding the input, reading the messages and collecting the worker's
    // complaints happen at once, so that no pipe fills up and blocks it.
    // Input that cannot be read whole must not be parsed as if it were the
    // file: the feed says so on `unreadable`, and the child is stopped.
    let (unreadable, input_failed) = tokio::sync::oneshot::channel::<()>();
    let feed = async move {
        let mut input = std::pin::pin!(input);
        let mut fed = 0u64;
        while let Some(part) = input.next().await {
            match part {
                Ok(part) => {
                    fed += part.len() as u64;
                    // A worker that dies early closes its end: that is
                    // reported by its exit status, not here.
                    if stdin.write_all(&part).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read a staged upload");
                    let _ = unreadable.send(());
                    return;
                }
            }
        }
        if fed != len {
            tracing::error!(fed, len, "a staged upload is not complete");
            let _ = unreadable.send(());
            return;
        }
        let _ = stdin.shutdown().await;
    };
    let complaints = async move {
        let mut kept = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if kept.len() < 16 * 1024 {
                kept.extend_from_slice(&buf[..n]);
            }
        }
        String::from_utf8_lossy(&kept).into_owned()
    };
    // The result is a JSON line of the chunks: a bounded multiple of the input.
    let max_line = (config.memory_bytes as usize).max(1 << 20);
    let read = async {
        let mut lines = FramedRead::new(stdout, LinesCodec::new_with_max_length(max_line));
        let mut outcome = None;
        while let Some(line) = lines.next().await {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Message>(&line) {
                Ok(Message::Progress(p)) => on_event(WorkerEvent::Parsing(p.clamp(0.0, 1.0))),
                Ok(Message::Chunking) => on_event(WorkerEvent::Chunking),
                Ok(Message::Done(p)) => outcome = Some(Ok(p)),
                Ok(Message::Failed(e)) => outcome = Some(Err(e)),
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable message from a parse worker");
                    break;
                }
            }
        }
        outcome
    };
    let run = tokio::time::timeout(config.timeout, async { tokio::join!(feed, read, complaints, child.wait()) });
    let ended = tokio::select! {
        ended = run => ended.map_err(|_| WorkerError::Timeout(config.timeout.as_secs())),
        // A feed that ends well drops its sender: this branch is then
        // disabled and the run goes on.
        Ok(()) = input_failed => Err(WorkerError::Input),
    };
    let (_, outcome, complaints, status) = match ended {
        Ok(done) => done,
        Err(e) => {
            // kill_on_drop would do it too; doing it here also reaps it.
            let _ = child.kill().await;
            metrics::counter!("reportd_parse_workers_killed_total", "reason" => e.label()).increment(1);
            return Err(e);
        }
    };
    match outcome {
        Some(Ok(prepared)) => Ok(prepared),
        Some(Err(e)) => Err(WorkerError::Parse(e)),
        None => {
            let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            tracing::warn!(%status, stderr = %complaints.trim(), "parse worker gave no result");
            if complaints.contains("memory allocation") || complaints.contains("capacity overflow") {
                metrics::counter!("reportd_parse_workers_killed_total", "reason" => "memory").increment(1);
                Err(WorkerError::Memory(config.memory_bytes / (1024 * 1024)))
            } else {
                metrics::counter!("reportd_parse_workers_killed_total", "reason" => "crashed").increment(1);
                Err(WorkerError::Crashed)
            }
        }
    }
}

/// The resource limits of a parse worker, applied between fork and exec.
#[derive(Clone, Copy)]
struct Limits {
    memory_bytes: u64,
    cpu_seconds: u64,
}

impl Limits {
    fn apply(self) -> std::io::Result<()> {
        fn set(resource: libc::__rlimit_resource_t, value: u64) -> std::io::Result<()> {
            let limit = libc::rlimit { rlim_cur: value, rlim_max: value };
            // SAFETY: setrlimit reads a valid struct; no memory is shared.
            if unsafe { libc::setrlimit(resource, &limit) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        }
        // RLIMIT_DATA counts what the parser allocates (heap and anonymous
        // mappings) but not the mapped binary, so the limit means the same
        // for a debug and a release build.
        set(libc::RLIMIT_DATA, self.memory_bytes)?;
        set(libc::RLIMIT_CPU, self.cpu_seconds)?;
        set(libc::RLIMIT_CORE, 0)?;
        // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number only.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The parse worker itself: `reportd parse-worker FORMAT CHUNK_SIZE
/// CHUNK_OVERLAP MAX_BYTES`, the file on standard input. Runs without an
/// async runtime; see the module documentation for the protocol.
pub fn worker_main(args: &[String]) -> ExitCode {
    let parsed = (|| {
        let format = Format::parse(args.first()?)?;
        let size = args.get(1)?.parse().ok()?;
        let overlap = args.get(2)?.parse().ok()?;
        let max_bytes: u64 = args.get(3)?.parse().ok()?;
        Some((format, ChunkSettings { size, overlap }, max_bytes))
    })();
    let Some((format, chunk, max_bytes)) = parsed else {
        eprintln!("usage: reportd {WORKER_ARG} FORMAT CHUNK_SIZE CHUNK_OVERLAP MAX_BYTES < file");
        return ExitCode::from(2);
    };
    // The parent says how long the file is: room for all of it at once
    // saves growing the buffer by doubling (which would need up to twice the
    // file's size for a moment).
    let mut bytes = Vec::new();
    if bytes.try_reserve_exact(usize::try_from(max_bytes).unwrap_or(usize::MAX)).is_err() {
        eprintln!("memory allocation of {max_bytes} bytes for the input failed");
        return ExitCode::FAILURE;
    }
    if let Err(e) = std::io::stdin().lock().take(max_bytes).read_to_end(&mut bytes) {
        eprintln!("cannot read the input: {e}");
        return ExitCode::FAILURE;
    }
    let stdout = std::io::stdout();
    let send = |message: &Message| {
        let mut out = stdout.lock();
        // A parent that went away will kill this process anyway.
        let _ = serde_json::to_writer(&mut out, message);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    };
    let mut last = -1.0f32;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let doc = parse_document(format, &bytes, &mut |p: f32| {
            // At most a hundred progress messages, whatever the parser reports.
            if p >= 1.0 || p - last >= 0.01 {
                last = p;
                send(&Message::Progress(p));
            }
        })?;
        drop(bytes);
        send(&Message::Chunking);
        chunk_document(doc, &chunk)
    }));
    let message = match outcome {
        Ok(Ok(prepared)) => Message::Done(prepared),
        Ok(Err(e)) => Message::Failed(e),
        Err(_) => Message::Failed(ParseError::new(
            ParseErrorKind::Corrupt,
            format!("the {} file could not be parsed (it may be damaged)", format.as_str()),
        )),
    };
    send(&message);
    ExitCode::SUCCESS
}
