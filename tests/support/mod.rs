//! Support shared by the black-box tests (`tests/api`) and the load
//! benchmark (`benches/load.rs`), each of which includes this file with
//! `#[path]`: free ports, children that die with their owner, a Tarantool
//! of one's own, and waiting for a condition without sleeping blindly.

#![allow(dead_code)] // each includer uses its own part

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bound, read and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Whether a `tarantool` binary is on `PATH`.
pub fn tarantool_installed() -> bool {
    Command::new("tarantool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The service's Tarantool script, `tarantool/app.lua`.
pub fn app_lua() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tarantool/app.lua")
}

/// The command that runs `script` (usually [`app_lua`]) on
/// `127.0.0.1:port` with its data in `data`, for the user `gifts` with
/// `password` and `memory` bytes of memtx. The caller adds the working
/// directory and output, and spawns it.
pub fn tarantool_command(
    script: &Path,
    port: u16,
    data: &Path,
    password: &str,
    memory: u64,
) -> Command {
    let mut command = Command::new("tarantool");
    command
        .arg(script)
        .env("GIFTS_TARANTOOL_LISTEN", format!("127.0.0.1:{port}"))
        .env("GIFTS_TARANTOOL_DIR", data)
        .env("GIFTS_TARANTOOL_USER", "gifts")
        .env("GIFTS_TARANTOOL_PASSWORD", password)
        .env("GIFTS_TARANTOOL_MEMORY", memory.to_string())
        .stdin(Stdio::null());
    command
}

/// A child process killed (SIGKILL) and reaped when dropped, also when the
/// test that started it panics.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// Peak resident set (`VmHWM`) of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `check` every 20 ms until it succeeds, and returns its value; after
/// `timeout`, returns its last error (what was seen instead, for the message).
pub async fn poll<T, E, F, Fut>(timeout: Duration, mut check: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(last) if started.elapsed() > timeout => return Err(last),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
