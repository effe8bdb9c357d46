//! The backends, and a store of the test's own for each.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use gifts::config::StorageUrl;
use tempfile::TempDir;

use super::*;
pub use crate::support::free_port;
use crate::support::{
    PostgresServer, app_lua, find_postgres_bin, postgres_bin, tarantool_command,
    tarantool_installed,
};

/// The storage backends every black-box test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite in a temporary directory.
    Sqlite,
    /// A `tarantool tarantool/app.lua` process of the test's own, on a free port.
    Tarantool,
    /// A PostgreSQL server of the test's own (a copy of a template cluster),
    /// on a free port.
    Postgres,
}

impl Backend {
    /// The backend's name in metrics and test names.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Tarantool => "tarantool",
            Backend::Postgres => "postgres",
        }
    }
}

/// True when Tarantool tests can run; with `CI=true` a missing `tarantool` fails the test.
pub fn tarantool_available(test: &str) -> bool {
    let found = tarantool_installed();
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but the `tarantool` binary is missing (apt-get install -y tarantool)"
        );
        skipped(&format!(
            "tarantool::{test}: no `tarantool` binary on PATH (apt-get install -y tarantool)"
        ));
    }
    found
}

/// True when PostgreSQL tests can run; with `CI=true` a missing PostgreSQL fails the test.
pub fn postgres_available(test: &str) -> bool {
    let found = find_postgres_bin();
    if let Err(why) = &found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but PostgreSQL is missing (apt-get install -y postgresql): {why}"
        );
        skipped(&format!(
            "postgres::{test}: no PostgreSQL (apt-get install -y postgresql): {why}"
        ));
    }
    found.is_ok()
}

/// True when the failover test can run: Patroni, etcd and PostgreSQL
/// installed; with `CI=true` a missing one fails the test.
pub fn ha_available(test: &str) -> bool {
    let on_path = |program: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()))
    };
    // Patroni itself comes from PyPI: deploy/ha/cluster.sh installs it (pinned)
    // into a virtual environment of Debian's python3.
    let venv = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import ensurepip, venv"])
        .output()
        .is_ok_and(|out| out.status.success());
    let found = venv && on_path("etcd") && on_path("curl") && postgres_bin().is_some();
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but etcd, curl, PostgreSQL or python3-venv is missing (apt-get install -y etcd-server curl postgresql python3-venv)"
        );
        skipped(&format!(
            "failover::{test}: needs etcd, curl, PostgreSQL and python3-venv (apt-get install -y etcd-server curl postgresql python3-venv)"
        ));
    }
    found
}

/// A Tarantool server of the test's own, running `tarantool/app.lua`.
struct TarantoolServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Extra environment for `app.lua` (its settings), from the next start.
    env: Vec<(String, String)>,
}

impl TarantoolServer {
    fn start(&mut self) {
        assert!(self.child.is_none(), "tarantool already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tarantool.log"))
            .expect("tarantool log file");
        let child = tarantool_command(
            &app_lua(),
            self.port,
            &self.dir.join("data"),
            "test-password",
            256 << 20,
        )
        .envs(self.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&self.dir)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start tarantool");
        self.child = Some(child);
    }

    /// SIGKILL, like a crash.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("tarantool.log")).unwrap_or_default()
    }
}

impl Drop for TarantoolServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The database server process behind a store, when it has one.
enum Server {
    Tarantool(TarantoolServer),
    Postgres(PostgresServer),
}

/// A store that outlives app restarts within one test, shareable by several apps.
pub struct TestStore {
    url: StorageUrl,
    server: Option<Mutex<Server>>,
    // Declared last: dropped after the server process is gone.
    _dir: TempDir,
}

/// Settings of the tests' PostgreSQL servers: no fsync, since what they
/// test is a killed server, not a lost machine (the page cache keeps what
/// was written). Commits stay synchronous: `synchronous_commit=off` would
/// lose acknowledged writes with the server's shared memory.
const POSTGRES_SETTINGS: &[&str] = &["fsync=off", "full_page_writes=off"];

impl TestStore {
    /// A fresh, empty store of the given backend.
    pub fn new(backend: Backend) -> Self {
        Self::with_env(backend, &[])
    }

    /// A fresh, empty store whose server (Tarantool only) runs with `env`
    /// added to its environment: `app.lua`'s settings.
    pub fn with_env(backend: Backend, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Sqlite => Self {
                url: StorageUrl::Sqlite(dir.path().join("gifts.db")),
                server: None,
                _dir: dir,
            },
            Backend::Tarantool => {
                let port = free_port();
                let mut server = TarantoolServer {
                    port,
                    dir: dir.path().to_owned(),
                    child: None,
                    env: env
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                };
                server.start();
                let url = format!("tarantool://gifts:test-password@127.0.0.1:{port}")
                    .parse()
                    .expect("tarantool url");
                Self {
                    url,
                    server: Some(Mutex::new(Server::Tarantool(server))),
                    _dir: dir,
                }
            }
            Backend::Postgres => {
                let bin = postgres_bin().expect("PostgreSQL installed");
                let server = PostgresServer::start_new(&bin, POSTGRES_SETTINGS);
                let url = server.url().parse().expect("postgres url");
                Self {
                    url,
                    server: Some(Mutex::new(Server::Postgres(server))),
                    _dir: dir,
                }
            }
        }
    }

    /// The `--storage` value for this store.
    pub fn url(&self) -> &StorageUrl {
        &self.url
    }

    /// The `--storage` flag text for this store, for running the real binary.
    pub fn flag(&self) -> String {
        match &self.url {
            StorageUrl::Sqlite(path) => format!("sqlite:{}", path.display()),
            StorageUrl::Tarantool(a) => {
                format!(
                    "tarantool://{}:{}@{}",
                    a.user,
                    a.password.as_ref().map_or("", |p| p.expose()),
                    a.host_port
                )
            }
            StorageUrl::Postgres(_) => match &*self.server() {
                Server::Postgres(server) => server.url(),
                Server::Tarantool(_) => unreachable!("a postgres store"),
            },
        }
    }

    fn server(&self) -> std::sync::MutexGuard<'_, Server> {
        self.server
            .as_ref()
            .expect("a store with a server")
            .lock()
            .expect("server lock")
    }

    /// Kills the database server with SIGKILL (PostgreSQL: with all its
    /// backends).
    pub fn kill_server(&self) {
        match &mut *self.server() {
            Server::Tarantool(t) => t.kill(),
            Server::Postgres(p) => p.kill(),
        }
    }

    /// Sets the environment added to Tarantool's (`app.lua`'s settings)
    /// from its next start.
    pub fn set_server_env(&self, env: &[(&str, &str)]) {
        if let Server::Tarantool(t) = &mut *self.server() {
            t.env = env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
        }
    }

    /// Starts the database server again on the same port and data.
    pub fn start_server(&self) {
        match &mut *self.server() {
            Server::Tarantool(t) => t.start(),
            Server::Postgres(p) => p.start(),
        }
    }

    /// Stops (`true`) or resumes (`false`) the database server and, for
    /// PostgreSQL, all its backends: a database that hangs with its
    /// connections open, so requests are sent and never answered.
    pub fn freeze_server(&self, frozen: bool) {
        use rustix::process::Signal;
        let signal = if frozen { Signal::STOP } else { Signal::CONT };
        match &*self.server() {
            Server::Tarantool(t) => {
                if let Some(pid) = t
                    .child
                    .as_ref()
                    .and_then(|c| rustix::process::Pid::from_raw(c.id().cast_signed()))
                {
                    rustix::process::kill_process(pid, signal).expect("signal tarantool");
                }
            }
            Server::Postgres(p) => p.signal(signal),
        }
    }

    /// Changes the stored data behind the service's back, with no app
    /// running on the store: `sql` on SQLite and PostgreSQL, `lua` (with
    /// `box` configured on the data) on a stopped Tarantool, which is
    /// started again after.
    pub fn edit_offline(&self, sql: &str, lua: &str) {
        if let StorageUrl::Sqlite(path) = &self.url {
            rusqlite::Connection::open(path)
                .and_then(|conn| conn.execute_batch(sql))
                .expect("edit the sqlite database");
            return;
        }
        match &mut *self.server() {
            Server::Postgres(server) => {
                server.psql(sql);
            }
            Server::Tarantool(server) => {
                server.kill();
                let script = server.dir.join("edit.lua");
                std::fs::write(
                    &script,
                    format!(
                        "box.cfg({{ work_dir = {:?}, memtx_memory = 256 * 1024 * 1024 }})\n{lua}\nos.exit(0)\n",
                        server.dir.join("data").display().to_string()
                    ),
                )
                .expect("write the edit script");
                let status = Command::new("tarantool")
                    .arg(&script)
                    .current_dir(&server.dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .expect("run tarantool");
                assert!(status.success(), "the offline edit failed");
                server.start();
            }
        }
    }

    /// The rows of a query on a PostgreSQL store, app running or not (`psql`'s unaligned
    /// output: one line a row, cells split by `|`).
    pub fn sql_rows(&self, sql: &str) -> String {
        match &mut *self.server() {
            Server::Postgres(server) => server.psql(sql),
            Server::Tarantool(_) => panic!("a SQL query on a Tarantool store"),
        }
    }

    /// What the database server logged, for failure messages.
    pub fn server_log(&self) -> String {
        self.server
            .as_ref()
            .map(|s| match &*s.lock().expect("server lock") {
                Server::Tarantool(t) => t.log(),
                Server::Postgres(p) => p.log(),
            })
            .unwrap_or_default()
    }
}
