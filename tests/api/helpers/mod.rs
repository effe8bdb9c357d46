//! Test harness: start the real app on 127.0.0.1:0 with its own temporary
//! store, talk to it over HTTP, stop or restart it.
//!
//! - `store`: the backends and a store of the test's own (a server for
//!   Tarantool and PostgreSQL), whether their servers are installed;
//! - `app`: the app in-process on that store, and its HTTP helpers;
//! - `fixtures`: citizens, imports and the answers expected of them;
//! - `binary`: the real `gifts` binary as a child process;
//! - `tmpfs`: a small file system to run out of space;
//! - `proxy`: a TCP proxy that damages or stalls a store's connection.

mod app;
mod binary;
mod fixtures;
mod proxy;
mod store;
mod tmpfs;

pub use app::*;
pub use binary::*;
pub use fixtures::*;
pub use proxy::*;
pub use store::*;
pub use tmpfs::*;

pub use crate::support::{KillOnDrop, free_port};

/// Prints a test's figures on the real standard error, which the harness
/// does not capture: a passing test's measurements stay visible.
pub fn report(what: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{what}");
}

/// Reports a skipped test on the real standard error, which the test
/// harness does not capture: a skipped test passes, so without this line the
/// summary would count it as run.
pub fn skipped(what: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {what}");
}

/// Runs each named `async fn name(backend: Backend)` once per backend, as
/// separate tests named `<backend>::<name>`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await;
                }
            )*
        }
        $crate::server_backend_tests!($($name),*);
    };
}

/// Runs each named `async fn name(backend: Backend)` once per backend with
/// a database server (Tarantool, PostgreSQL), as tests named
/// `<backend>::<name>`.
#[macro_export]
macro_rules! server_backend_tests {
    ($($name:ident),* $(,)?) => {
        mod tarantool {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if $crate::helpers::tarantool_available(stringify!($name)) {
                        super::$name($crate::helpers::Backend::Tarantool).await;
                    }
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if $crate::helpers::postgres_available(stringify!($name)) {
                        super::$name($crate::helpers::Backend::Postgres).await;
                    }
                }
            )*
        }
    };
}
