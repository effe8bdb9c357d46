//! The real `gifts` binary as a child process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tempfile::TempDir;

pub use crate::support::free_port;
use crate::support::{peak_rss_kib, poll};

/// The real `gifts` binary running as a child process, its standard error
/// in a file; killed (SIGKILL) when dropped, so a failing test leaves no
/// process behind.
pub struct Binary {
    child: Child,
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub base: String,
    log: PathBuf,
    _dir: TempDir,
}

impl Binary {
    /// Starts `gifts` with `args` and `env` (on top of a cleared `GIFTS_*`
    /// environment), listening on a free loopback port unless `args` or
    /// `env` say otherwise; `cwd` is its working directory (a temporary one
    /// if `None`). Does not wait for anything.
    pub fn start(args: &[&str], env: &[(&str, &str)], cwd: Option<&Path>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let log = dir.path().join("gifts.log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_gifts"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("GIFTS_") {
                command.env_remove(name);
            }
        }
        command
            .env("GIFTS_LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "GIFTS_STORAGE",
                format!("sqlite:{}", dir.path().join("gifts.db").display()),
            )
            .env("RUST_LOG", "info")
            .env("GIFTS_SHUTDOWN_DRAIN_SECS", "0");
        command.envs(env.iter().copied()).args(args);
        command
            .current_dir(cwd.unwrap_or(dir.path()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let child = command.spawn().expect("start the gifts binary");
        let listen = env
            .iter()
            .rev()
            .find(|(k, _)| *k == "GIFTS_LISTEN")
            .map_or_else(|| format!("127.0.0.1:{port}"), |(_, v)| v.to_string());
        let listen = if listen.bytes().all(|b| b.is_ascii_digit()) {
            format!("127.0.0.1:{listen}")
        } else {
            listen
        };
        // A listen address under test may be invalid on purpose.
        let base = gifts::healthcheck::target(&listen)
            .map_or_else(|_| "http://invalid".to_owned(), |a| format!("http://{a}"));
        Self {
            child,
            base,
            log,
            _dir: dir,
        }
    }

    /// What the process has written to standard error so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the process exits (at most 30 s); its exit code and log.
    pub fn wait_exit(&mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return (status.code(), self.log());
            }
            assert!(
                Instant::now() < deadline,
                "gifts did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls until the log contains `text`; panics after 30 s or if the process exits.
    pub async fn wait_for_log(&mut self, text: &str) -> String {
        let found = poll(Duration::from_secs(30), || {
            let log = self.log();
            assert!(
                log.contains(text) || self.child.try_wait().expect("wait").is_none(),
                "gifts exited before logging {text:?}:\n{log}"
            );
            std::future::ready(if log.contains(text) {
                Ok(log)
            } else {
                Err(log)
            })
        })
        .await;
        found.unwrap_or_else(|log| panic!("no {text:?} in the log:\n{log}"))
    }

    /// Polls `/health` until it answers 200; panics after 30 s or if the process exits.
    pub async fn wait_healthy(&mut self) {
        let client = reqwest::Client::new();
        let url = format!("{}/health", self.base);
        let healthy = poll(Duration::from_secs(30), || {
            assert!(
                self.child.try_wait().expect("wait").is_none(),
                "gifts exited during start-up:\n{}",
                self.log()
            );
            let answer = client.get(&url).send();
            async {
                match answer.await {
                    Ok(r) if r.status() == StatusCode::OK => Ok(()),
                    _ => Err(()),
                }
            }
        })
        .await;
        assert!(
            healthy.is_ok(),
            "gifts did not become healthy:\n{}",
            self.log()
        );
    }

    /// The process's peak resident set so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        peak_rss_kib(self.child.id()).expect("VmHWM of a running process")
    }

    /// Resets the peak resident set to the current one (`/proc/PID/clear_refs`).
    pub fn reset_peak_rss(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5")
            .expect("reset the peak RSS");
    }

    /// SIGKILL, like a crash; waits for the process to be gone.
    pub fn kill(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and returns at once.
    pub fn sigterm(&self) {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
    }

    /// SIGTERM; waits (at most 30 s) for a graceful exit and returns its code.
    pub fn terminate(&mut self) -> Option<i32> {
        self.sigterm();
        self.wait_exit().0
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        self.kill();
    }
}
