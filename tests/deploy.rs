//! Deployment tests (issue #8): the Dockerfile, docker-compose.yml and the
//! files it mounts, parsed and checked; the compose file's own Redis command
//! line run against a local `redis-server`; the shipped nginx configuration
//! run by a local `nginx` in front of two reportd instances; and
//! `reportd healthcheck`. There is no Docker engine here, so the real parts
//! run directly (NOTES.md, "Real servers in tests").
//!
//! Needs `redis-server`, `redis-cli` and `nginx` on the machine (Debian:
//! `apt-get install redis-server redis-tools nginx`).

#[path = "deploy/dashboard.rs"]
mod dashboard;
// The API tests' fake model, shared as it is (it is not copied: it speaks
// the real OpenAI wire protocol and paces its stream).
#[path = "api/fakes.rs"]
mod fakes;
#[path = "deploy/files.rs"]
mod files;
#[path = "deploy/harness.rs"]
mod harness;
// The API tests' harness and SSE reader, shared as they are; this target
// uses part of them.
#[path = "deploy/healthcheck.rs"]
mod healthcheck;
#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;
#[path = "deploy/nginx.rs"]
mod nginx;
#[path = "deploy/redis_server.rs"]
mod redis_server;
#[allow(dead_code)]
#[path = "api/sse.rs"]
mod sse;
