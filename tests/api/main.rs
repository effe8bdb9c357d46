//! Black-box HTTP tests: each starts the real app on 127.0.0.1:0 with its own
//! temporary store, and each runs once per storage backend.

mod helpers;

mod cli;
mod deploy;
mod durability;
mod imports;
mod messages;
mod patch;
mod reads;
mod robustness;
mod startup;
mod tarantool;
