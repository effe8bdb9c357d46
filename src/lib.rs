//! gifts — a REST service that stores citizen imports for a gift shop and
//! answers how many presents each citizen buys per month and the age
//! percentiles per town. The contract is `docs/api.md`; decisions are in
//! `docs/decisions.md` (the README indexes the rest).
//!
//! # Layout
//! - [`config`]: one `Config` from defaults, `GIFTS_*` environment and flags
//!   ([`units`]: the sizes they are written in).
//! - [`access`]: bearer tokens and their scopes (`--tokens-file`).
//! - [`startup`]: builds the storage and the router and serves until shutdown.
//! - [`telemetry`]: the tracing subscriber.
//! - [`healthcheck`]: the `gifts healthcheck` client of `/health`.
//! - [`client`]: `gifts import FILE`, the upload client.
//! - [`domain`]: pure types and rules — validation, relatives graph, birthdays,
//!   ages, numpy-compatible percentiles.
//! - [`storage`]: the async, backend-neutral [`storage::Storage`] trait and its
//!   backends (SQLite embedded; Tarantool and PostgreSQL servers).
//! - [`sample`]: seeded generator of realistic imports (benchmark and tests).
//! - [`metrics`]: the Prometheus metrics of one running service.
//! - [`reads`]: the one way from the edge to the store: the read cache, its
//!   protocol (writes move or forget what it holds) and the read policy;
//!   the answers' bodies.
//! - [`http`]: the edge: the router, one module per resource, the JSON
//!   extractor and [`http::error::AppError`], the one place that maps errors
//!   to responses.

pub mod access;
pub mod client;
pub mod config;
pub mod domain;
pub mod healthcheck;
pub mod http;
pub mod metrics;
pub mod reads;
#[doc(hidden)] // public for the tests and benchmarks only
pub mod sample;
pub mod startup;
pub mod storage;
pub mod telemetry;
pub mod units;
