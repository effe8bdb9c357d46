//! Black-box HTTP tests: each starts the real app on 127.0.0.1:0 with its own
//! temporary store, and each runs once per storage backend.

mod helpers;

mod deploy;
mod durability;
mod imports;
mod patch;
mod reads;
mod robustness;
mod tarantool;
