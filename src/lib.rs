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
//!   `imports`, `documents`, `admin`, `ops`), plus [`http::extract`], the
//!   extractors that turn malformed requests into JSON errors.
//! - [`error`]: [`error::ApiError`], the one error type a client sees
//!   (`{"detail","code"}` with the right status).
//! - [`ids`] and [`keys`]: parsed ids (`UserId`, `TaskId`, …) and the only
//!   module that formats Redis keys, so that no client input can build a key
//!   outside `{REDIS_PREFIX}:{APP_ENV}:`.
//! - [`state`]: the state layer. One [`state::Backend`] abstraction with a
//!   Redis implementation (fail-fast client, circuit breaker, health monitor)
//!   and a memory implementation (TTLs, sweeping, a cap), the feature flags
//!   with their run-time overrides, and [`state::StateLayer`], the one place
//!   that decides per feature which backend serves a call (SPEC §4).
//! - [`tasks`]: [`tasks::TaskStatusStore`], the import-task state machine on
//!   the state layer, enforced atomically in both backends.
//! - [`import`]: upload sniffing, decoding (UTF-8, UTF-16, GBK/GB18030, Big5),
//!   parsing into sections and chunks, and the import workers.
//! - [`db`]: the SQL store (SQLite by default, PostgreSQL for several
//!   instances): users, documents, chunks, staged uploads.
//! - [`auth`]: argon2 passwords and HS256 access tokens.
//! - [`telemetry`]: logging and the Prometheus recorder.

pub mod app;
pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod http;
pub mod ids;
pub mod import;
pub mod keys;
pub mod search;
pub mod state;
pub mod stores;
pub mod telemetry;

pub use app::{App, serve, shutdown_signal};
pub use config::{Cli, Command, Config, UserCommand};
