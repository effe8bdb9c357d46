//! Black-box HTTP tests: each starts the real app on 127.0.0.1:0 with its own
//! temporary store, and each runs once per storage backend.

#[path = "../support/mod.rs"]
mod support;

mod helpers;

mod access;
mod analytics;

mod caching;
mod cli;
mod contract;
mod deploy;
mod diskfull;
mod durability;
mod failover;
mod imports;
mod lifecycle;
mod memory;
mod messages;
mod metrics;
mod page;
mod patch;
mod postgres;
mod reads;
mod retries;
mod robustness;
mod servers;
mod shapes;
mod startup;
mod tarantool;
