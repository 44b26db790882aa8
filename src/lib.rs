//! reportd — the backend of an AI report-writing application.
//!
//! A map of the crate, from the edge inwards:
//!
//! - [`config`]: the command line and every setting (flags and environment
//!   variables, one clap struct), checked at start-up.
//! - [`app`]: builds the service from a [`config::Config`] ([`app::App`]
//!   holds what handlers need) and [`app::serve`]s it on a listener until a
//!   shutdown signal; tests call it with `127.0.0.1:0`.
//! - [`http`]: the HTTP interface, one module per resource (`auth`,
//!   `imports`, `documents`, `search`, `ai`, `admin`, `ops`, and `console`,
//!   which serves the web console embedded from `console/` at `/`), plus
//!   [`http::extract`], the extractors that turn malformed requests into
//!   JSON errors.
//! - [`error`]: [`error::ApiError`], the one error type a client sees
//!   (`{"detail","code"}` with the right status).
//! - [`ids`] and [`keys`]: parsed ids (`UserId`, `TaskId`, …) and the only
//!   module that formats Redis keys, so that no client input can build a key
//!   outside `{REDIS_PREFIX}:{APP_ENV}:`.
//! - [`state`]: the state layer. One [`state::Backend`] abstraction with a
//!   Redis implementation (fail-fast client, circuit breaker, health monitor)
//!   and a memory implementation (TTLs, sweeping, a cap), the feature flags
//!   with their run-time overrides, and [`state::StateLayer`], the one place
//!   that decides per feature which backend serves a call (SPEC §4), and
//!   what happens during and after an outage (replica reads, the repair of
//!   what was written to memory). [`state::topology`] is where one server,
//!   Sentinel and Cluster differ: which server a command goes to, how a
//!   failover is followed, what the deployment looks like.
//! - [`stores`]: the typed stores on the state layer, which say *what* to do
//!   with each kind of state: [`stores::tasks::TaskStatusStore`] (the
//!   import-task state machine, enforced atomically in both backends),
//!   [`stores::import_queue::ImportQueue`] (the Redis stream with a consumer
//!   group, or this instance's bounded queue),
//!   [`stores::chat::ChatSessionStore`] (conversations and their leases),
//!   [`stores::streams::StreamLog`] (answer events, for resuming),
//!   [`stores::limits::Limits`] (rate limits and concurrency leases) and
//!   [`stores::cache::ReadCache`] (the per-user read cache, Redis only).
//! - [`import`]: upload sniffing, the parsers ([`import::text`],
//!   [`import::html`], [`import::docx`], [`import::pdf`]) behind one
//!   interface ([`import::parse`]), chunking ([`import::chunk`]), the parse
//!   worker that runs them in a child process under time and memory limits
//!   ([`import::isolate`]), and the import workers (leases, heartbeats,
//!   take-over, idempotent storing).
//! - [`assist`]: the three AI assistants (writing, polishing, web search
//!   with tool calls): a turn runs in its own task under the session's
//!   lease, streams its events through [`stores::streams`], and keeps the
//!   conversation in [`stores::chat`]; the built-in offline provider
//!   stands in when no model is configured. [`llm`] is the
//!   OpenAI-compatible streaming client it calls.
//! - [`search`]: Chinese-aware full-text search over a user's chunks (jieba
//!   segmentation, SQLite FTS5 with BM25), used by the HTTP API and the
//!   assistants.
//! - [`llm`]: the streaming client for OpenAI-compatible chat completions.
//! - [`db`]: the SQL store (SQLite by default, PostgreSQL for several
//!   instances): users, documents, chunks, and staged uploads, which are
//!   also the durable, leased record of import jobs ([`db::jobs`]).
//! - [`auth`]: argon2 passwords and HS256 access tokens.
//! - [`net`]: the client's IP address (`X-Forwarded-For` from
//!   `TRUSTED_PROXIES` only), for the login limits.
//! - [`telemetry`]: logging and the Prometheus recorder.
//! - [`doctor`]: `reportd doctor`, read-only checks of a deployment (the
//!   configuration, the database's migrations, Redis's persistence, eviction
//!   policy and keys, the flags in force, the LLM and search endpoints) with
//!   a readable or JSON report.
//!
//! Deployment (Dockerfile, docker-compose.yml, `deploy/`) is checked by
//! `tests/deploy.rs`; the end-to-end suite is `tests/api`; the web console
//! (plain ES modules under `console/`, no build step) is tested in a
//! headless Chromium by `tests/console.rs`.

pub mod app;
pub mod assist;
pub mod auth;
pub mod config;
pub mod db;
pub mod doctor;
pub mod error;
pub mod http;
pub mod ids;
pub mod import;
pub mod keys;
pub mod llm;
pub mod net;
pub mod search;
pub mod state;
pub mod stores;
pub mod telemetry;

pub use app::{App, serve, shutdown_signal};
pub use config::{Cli, Command, Config, UserCommand};
