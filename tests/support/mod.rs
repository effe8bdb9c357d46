//! Support shared by the black-box tests (`tests/api`) and the load
//! benchmark (`benches/load.rs`), each of which includes this file with
//! `#[path]`: free ports, children that die with their owner, a Tarantool
//! of one's own, and waiting for a condition without sleeping blindly.

#![allow(dead_code)] // each includer uses its own part

pub mod shapes;

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port for a server a test starts: bound, read and
/// released.
///
/// It is taken below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`, 32768–60999 by default), never from
/// `bind(0)`: a port from that range can be handed, between its release
/// and the server's bind, to another test's `bind(0)` or to the source
/// port of an outgoing connection, and the server then fails with "Address
/// already in use" (seen in CI: a Tarantool of its own that never started).
/// Each call in a process takes the next port of a walk from a random
/// start, so two tests of one run never get the same one.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let below = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|&low| low > FIRST + 1_000 && low <= 65_535)
        .unwrap_or(32_768);
    let span = below - FIRST;
    if NEXT.load(Ordering::Relaxed) == 0 {
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let start = u32::try_from(random % u64::from(span)).expect("below the span") + 1;
        let _ = NEXT.compare_exchange(0, start, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = u16::try_from(FIRST + offset).expect("a port");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    // Every port below the ephemeral range is taken: fall back to bind(0).
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

/// The PostgreSQL programs the tests and benchmarks run, all from one
/// directory (one version).
pub const POSTGRES_TOOLS: [&str; 4] = ["initdb", "postgres", "pg_ctl", "psql"];

/// The directory of PostgreSQL's programs ([`POSTGRES_TOOLS`]), or `None`
/// (see [`find_postgres_bin`] for why).
pub fn postgres_bin() -> Option<PathBuf> {
    find_postgres_bin().ok()
}

/// The directory of PostgreSQL's programs: the first that holds every one
/// of [`POSTGRES_TOOLS`], among the directories of each `initdb` on `PATH`
/// with symlinks followed (a machine may link some of the programs into
/// `/usr/local/bin`, and not `psql`), then Debian's `/usr/lib/postgresql/N/bin`,
/// newest first (the `postgresql` package puts them there, not on `PATH`).
/// The error names every directory looked at and what it lacked.
pub fn find_postgres_bin() -> Result<PathBuf, String> {
    find_postgres_bin_in(&std::env::var_os("PATH").unwrap_or_default())
}

/// [`find_postgres_bin`] with `path` for `PATH`.
pub fn find_postgres_bin_in(path: &std::ffi::OsStr) -> Result<PathBuf, String> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    for dir in std::env::split_paths(path) {
        let initdb = dir.join("initdb");
        if initdb.is_file() {
            let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
            if let Some(parent) = real.parent() {
                candidates.push(parent.to_path_buf());
            }
            candidates.push(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort();
    candidates.extend(versions.into_iter().rev().map(|(_, bin)| bin));
    let mut looked = Vec::new();
    for dir in candidates {
        let missing: Vec<&str> = POSTGRES_TOOLS
            .into_iter()
            .filter(|tool| !dir.join(tool).is_file())
            .collect();
        if missing.is_empty() {
            return Ok(dir);
        }
        looked.push(format!("{} lacks {}", dir.display(), missing.join(", ")));
    }
    if looked.is_empty() {
        looked.push("no initdb on PATH, nothing in /usr/lib/postgresql".into());
    }
    Err(format!(
        "no directory holds all of {}: {}",
        POSTGRES_TOOLS.join(", "),
        looked.join("; ")
    ))
}

/// The password of the test clusters' superuser `gifts`.
pub const POSTGRES_PASSWORD: &str = "test-password";

/// When the tests run as root, PostgreSQL (which refuses root) runs as the
/// `postgres` user the Debian package creates: its uid and gid.
fn postgres_user() -> Option<(u32, u32)> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        assert!(
            out.status.success(),
            "running as root needs a `postgres` user to run PostgreSQL as (the postgresql package creates it)"
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a numeric id")
    };
    Some((id("-u"), id("-g")))
}

/// A directory the PostgreSQL user may enter (a root-owned temporary
/// directory is private).
fn open_temp_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// `command`, run as the PostgreSQL user when we are root.
fn as_postgres_user(command: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = postgres_user() {
        command.uid(uid).gid(gid);
    }
    command
}

/// An initialised, never started cluster with the superuser `gifts`, made
/// once (about a second) and kept in the build's temporary directory;
/// every test server starts from a copy of it (a tenth of a second).
fn postgres_template(bin: &Path) -> PathBuf {
    static TEMPLATE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let version = Command::new(bin.join("postgres"))
                .arg("--version")
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .nth(2)
                        .unwrap_or("unknown")
                        .to_owned()
                })
                .unwrap_or_default();
            let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
            let template = root.join(format!("pg-template-v1-{version}"));
            if template.join("PG_VERSION").is_file() {
                return template;
            }
            let work = open_temp_dir();
            let data = work.path().join("data");
            std::fs::create_dir(&data).expect("mkdir");
            if let Some((uid, gid)) = postgres_user() {
                std::os::unix::fs::chown(&data, Some(uid), Some(gid)).expect("chown");
            }
            let pwfile = work.path().join("pw");
            std::fs::write(&pwfile, POSTGRES_PASSWORD).expect("pwfile");
            let out = as_postgres_user(
                Command::new(bin.join("initdb"))
                    .arg("-D")
                    .arg(&data)
                    .args([
                        "-U",
                        "gifts",
                        "--auth=scram-sha-256",
                        "-E",
                        "UTF8",
                        "--locale=C.UTF-8",
                        "--no-sync",
                    ])
                    .arg(format!("--pwfile={}", pwfile.display())),
            )
            .stdin(Stdio::null())
            .output()
            .expect("run initdb");
            assert!(
                out.status.success(),
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            // Built aside and renamed: a template that exists is complete,
            // also for another test process making one at the same time.
            std::fs::create_dir_all(root).expect("mkdir target tmp");
            let partial = root.join(format!("pg-template.{}", std::process::id()));
            copy_tree(&data, &partial);
            if std::fs::rename(&partial, &template).is_err() {
                std::fs::remove_dir_all(&partial).ok();
            }
            template
        })
        .clone()
}

/// `cp -a from to` (keeps owners when root).
fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

/// A PostgreSQL server of one's own on a free loopback port, with its data
/// in a temporary directory; killed (its whole process group) when dropped.
pub struct PostgresServer {
    bin: PathBuf,
    /// The loopback port it listens on.
    pub port: u16,
    settings: Vec<String>,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl PostgresServer {
    /// A new cluster (a copy of the template), started, with `settings`
    /// (`name=value`) on top of the test defaults. Does not wait for it.
    pub fn start_new(bin: &Path, settings: &[&str]) -> Self {
        let dir = open_temp_dir();
        copy_tree(&postgres_template(bin), &dir.path().join("data"));
        let mut server = Self {
            bin: bin.to_owned(),
            port: free_port(),
            settings: settings.iter().map(|s| (*s).to_owned()).collect(),
            child: None,
            dir,
        };
        server.start();
        server.wait_ready();
        server
    }

    /// Waits (polling its log, at most 30 s) until the server accepts
    /// connections.
    pub fn wait_ready(&self) {
        let started = Instant::now();
        while !self.log().contains("ready to accept connections") {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "postgres did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the server on its data and port.
    pub fn start(&mut self) {
        use std::os::unix::process::CommandExt;
        assert!(self.child.is_none(), "postgres already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("postgres.log"))
            .expect("postgres log file");
        let mut command = Command::new(self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string()])
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
            ]);
        for setting in &self.settings {
            command.args(["-c", setting]);
        }
        as_postgres_user(&mut command)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        self.child = Some(command.spawn().expect("start postgres"));
    }

    /// SIGKILL to the server and all its backends, like a machine losing
    /// power to the database (the data on disk stays). Returns once they
    /// are all gone: an orphaned backend must not answer a query after this.
    pub fn kill(&mut self) {
        let backends = self.backends();
        self.signal(rustix::process::Signal::KILL);
        if let Some(mut child) = self.child.take() {
            child.wait().ok();
        }
        let started = std::time::Instant::now();
        while backends
            .iter()
            .any(|pid| Path::new(&format!("/proc/{pid}")).exists())
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "postgres backends outlived their server"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The server's child processes (each backend is a session leader of
    /// its own, so a signal to the server's process group misses them).
    fn backends(&self) -> Vec<u32> {
        let Some(server) = self.child.as_ref().map(Child::id) else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|stat| {
                        // "pid (comm) state ppid …": the name may hold spaces.
                        let after = &stat[stat.rfind(')')? + 1..];
                        after.split_whitespace().nth(1)?.parse::<u32>().ok()
                    })
                    == Some(server)
            })
            .collect()
    }

    /// A signal to the server's process group and to each of its backends
    /// (`STOP`, `CONT`, `KILL`, ...).
    pub fn signal(&self, signal: rustix::process::Signal) {
        // The backends first: once the server is gone they are no longer its children.
        for backend in self.backends() {
            if let Some(pid) = rustix::process::Pid::from_raw(backend.cast_signed()) {
                rustix::process::kill_process(pid, signal).ok();
            }
        }
        if let Some(pid) = self
            .child
            .as_ref()
            .and_then(|c| rustix::process::Pid::from_raw(c.id().cast_signed()))
        {
            rustix::process::kill_process_group(pid, signal).ok();
        }
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The URL of its database as the superuser `gifts`.
    pub fn url(&self) -> String {
        format!(
            "postgres://gifts:{POSTGRES_PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// Runs `sql` with `psql`, which must succeed; returns its output.
    pub fn psql(&self, sql: &str) -> String {
        psql_query(&self.bin, &self.url(), sql)
    }

    /// What the server logged, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `sql` with the `psql` of `bin` on the database at `url`; returns
/// its unaligned, tuples-only output.
pub fn psql_query(bin: &Path, url: &str, sql: &str) -> String {
    let out = Command::new(bin.join("psql"))
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
