//! The typed stores: each kind of state the service keeps, saying *what* to
//! do with it, while [`crate::state`] alone decides *where* (Redis or process
//! memory, per the flags and Redis's health).
//!
//! - [`tasks`]: import task status, a state machine enforced atomically in
//!   both backends.
//! - [`import_queue`]: the import job queue: a Redis stream with a consumer
//!   group when task status is served by Redis, else this instance's bounded
//!   in-process queue. The durable record of each job is its staged upload in
//!   SQL ([`crate::db::jobs`]).
//! - [`chat`]: the assistants' conversations (append, trim and TTL refresh
//!   in one atomic step; tombstones on delete) and the lease that lets one
//!   turn at a time run on each.
//! - [`streams`]: the events of AI answers, kept for resuming on any
//!   instance (a Redis Stream per answer, or this instance's memory), and
//!   cancelling across instances.
//! - [`cache`]: the per-user read cache of the document endpoints, in Redis only.
//! - [`limits`]: rate limits (GCRA) and concurrency leases (sorted sets
//!   scored by expiry), each decided in one script with Redis's clock.

pub mod cache;
pub mod chat;
pub mod import_queue;
pub mod limits;
pub mod streams;
pub mod tasks;
