//! End-to-end tests: the service over HTTP, against a real `redis-server`
//! started by the harness (see `helpers.rs`). One binary, one module per
//! area, as in zero-to-production.

mod ai;
mod audit;
mod auth;
mod bad_files;
mod cache;
mod corpus;
mod doctor;
mod durability;
mod fakes;
mod ha;
mod hardening;
mod helpers;
mod imports;
mod instances;
mod limits;
mod llm;
mod metrics;
mod openapi;
mod props;
mod search;
mod sse;
mod state;
mod topology;
mod uploads;
