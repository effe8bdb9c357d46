//! Test harness: start the real app on 127.0.0.1:0 with its own temporary
//! store, talk to it over HTTP, stop or restart it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gifts::config::{Config, StorageUrl};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// With `TEST_LOG=1`, the in-process apps log into the test's captured
/// output (shown when a test fails, or always with `--nocapture`).
fn init_test_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if std::env::var_os("TEST_LOG").is_some() {
        ONCE.call_once(|| {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
                .with_test_writer()
                .try_init();
        });
    }
}

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

pub use crate::support::{KillOnDrop, free_port};
use crate::support::{
    PostgresServer, app_lua, find_postgres_bin, peak_rss_kib, poll, postgres_bin,
    tarantool_command, tarantool_installed,
};

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

/// A Tarantool server of the test's own, running `tarantool/app.lua`.
struct TarantoolServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
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
                    a.password.expose(),
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

/// GET `base` + `path` with a fresh client: the status and the JSON body.
pub async fn get_json(base: &str, path: &str) -> (StatusCode, Value) {
    let response = reqwest::get(format!("{base}{path}"))
        .await
        .expect("request");
    let status = response.status();
    (
        status,
        serde_json::from_slice(&response.bytes().await.unwrap()).expect("JSON body"),
    )
}

/// A running app and an HTTP client for it.
pub struct TestApp {
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub base: String,
    /// The client used by the helpers; tests may use it directly.
    pub client: reqwest::Client,
    /// The store behind the app (shared with other apps of the same test).
    pub store: Arc<TestStore>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// Starts the app on a fresh store with default settings.
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, |_| {}).await
    }

    /// Starts the app on a fresh store after `adjust` has changed the config.
    pub async fn spawn_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> Self {
        let store = Arc::new(TestStore::new(backend));
        let mut config = Config::with_storage(store.url().clone());
        adjust(&mut config);
        Self::start(store, config).await
    }

    /// Starts the app on an existing store.
    pub async fn start(store: Arc<TestStore>, mut config: Config) -> Self {
        config.storage = store.url().clone();
        Self::launch(store, config).await
    }

    /// Starts the app with `config` as it is: its `storage` may reach
    /// `store` another way (through a proxy).
    pub async fn launch(store: Arc<TestStore>, config: Config) -> Self {
        init_test_log();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("local addr");
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(gifts::startup::run(config, listener, async {
            let _ = stop.await;
            gifts::startup::Shutdown::Now
        }));
        let app = Self {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            store,
            shutdown: Some(shutdown),
            task: Some(task),
        };
        app.wait_until_healthy().await;
        app
    }

    /// Polls `/health` until it answers 200; panics after a deadline or if the app stopped.
    async fn wait_until_healthy(&self) {
        let healthy = poll(Duration::from_secs(30), || async {
            let task = self.task.as_ref().expect("running");
            assert!(!task.is_finished(), "the app stopped during start-up");
            match self.client.get(self.url("/health")).send().await {
                Ok(r) if r.status() == StatusCode::OK => Ok(()),
                _ => Err(()),
            }
        })
        .await;
        assert!(
            healthy.is_ok(),
            "the app did not become healthy; server log:\n{}",
            self.store.server_log()
        );
    }

    /// Graceful shutdown; returns the store so a new app can open it.
    pub async fn stop(mut self) -> Arc<TestStore> {
        self.shutdown.take().expect("running").send(()).ok();
        let result = self.task.take().expect("running").await.expect("join");
        result.expect("the app ran and stopped cleanly");
        self.store
    }

    /// Stops and starts again on the same store.
    pub async fn restart(self) -> Self {
        let store = self.stop().await;
        let config = Config::with_storage(store.url().clone());
        Self::start(store, config).await
    }

    /// Full URL of a path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends a request with a raw body; returns status and JSON body (Null if empty).
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.request(method, self.url(path));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let bytes = response.bytes().await.expect("body read");
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{status}: body is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        (status, json)
    }

    /// GET a path.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    /// POST /imports with a JSON value.
    pub async fn post_import(&self, body: &Value) -> (StatusCode, Value) {
        self.post_import_raw(serde_json::to_vec(body).unwrap())
            .await
    }

    /// POST /imports with raw bytes.
    pub async fn post_import_raw(&self, body: Vec<u8>) -> (StatusCode, Value) {
        self.send(reqwest::Method::POST, "/imports", Some(body))
            .await
    }

    /// POST /imports that must succeed; returns the new import id.
    pub async fn import(&self, citizens: Vec<Value>) -> i64 {
        let (status, body) = self.post_import(&json!({ "citizens": citizens })).await;
        assert_eq!(status, StatusCode::CREATED, "import failed: {body}");
        body["data"]["import_id"].as_i64().expect("import_id")
    }

    /// PATCH a citizen with a JSON value.
    pub async fn patch(&self, import: i64, citizen: u64, body: &Value) -> (StatusCode, Value) {
        self.patch_raw(import, citizen, serde_json::to_vec(body).unwrap())
            .await
    }

    /// PATCH a citizen as a careful client does: a 503 (not applied, safe
    /// to retry) is retried until another answer, within two minutes. For
    /// tests of what concurrent PATCHes leave behind, where a 503 under a
    /// busy machine's load (a PATCH queued past its budget behind the others
    /// on the import's lock) is the contract's answer, not a failure.
    pub async fn patch_applied(
        &self,
        import: i64,
        citizen: u64,
        body: &Value,
    ) -> (StatusCode, Value) {
        let answer = poll(Duration::from_secs(120), || async {
            let (status, body) = self.patch(import, citizen, body).await;
            if status == StatusCode::SERVICE_UNAVAILABLE {
                Err((status, body))
            } else {
                Ok((status, body))
            }
        })
        .await;
        answer.unwrap_or_else(|last| last)
    }

    /// PATCH a citizen with raw bytes.
    pub async fn patch_raw(&self, import: i64, citizen: u64, body: Vec<u8>) -> (StatusCode, Value) {
        self.send(
            reqwest::Method::PATCH,
            &format!("/imports/{import}/citizens/{citizen}"),
            Some(body),
        )
        .await
    }

    /// GET citizens that must succeed; returns the `data` list.
    pub async fn citizens(&self, import: i64) -> Vec<Value> {
        let (status, body) = self.get(&format!("/imports/{import}/citizens")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["data"].as_array().expect("data list").clone()
    }

    /// GET birthdays that must succeed; returns `data`.
    pub async fn birthdays(&self, import: i64) -> Value {
        let (status, body) = self
            .get(&format!("/imports/{import}/citizens/birthdays"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["data"].clone()
    }

    /// The text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// GET percentiles that must succeed; returns `data`.
    pub async fn percentiles(&self, import: i64) -> Value {
        let (status, body) = self
            .get(&format!("/imports/{import}/towns/stat/percentile/age"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["data"].clone()
    }
}

/// A valid citizen with the given id and relatives; tests override fields.
pub fn citizen(id: u64, relatives: &[u64]) -> Value {
    crate::support::shapes::citizen(id, relatives, Value::Null)
}

/// `citizen` with some fields replaced.
pub fn citizen_with(id: u64, relatives: &[u64], fields: Value) -> Value {
    assert!(fields.is_object(), "fields must be an object");
    crate::support::shapes::citizen(id, relatives, fields)
}

/// The contract's example import (docs/example-import.json): 1↔2 in Москва, 3 alone in Керчь.
pub fn spec_example() -> Vec<Value> {
    vec![
        json!({"citizen_id": 1, "town": "Москва", "street": "Льва Толстого", "building": "16к7стр5",
               "apartment": 7, "name": "Иванов Иван Иванович", "birth_date": "26.12.1986",
               "gender": "male", "relatives": [2]}),
        json!({"citizen_id": 2, "town": "Москва", "street": "Льва Толстого", "building": "16к7стр5",
               "apartment": 7, "name": "Иванов Сергей Иванович", "birth_date": "01.04.1997",
               "gender": "male", "relatives": [1]}),
        json!({"citizen_id": 3, "town": "Керчь", "street": "Иосифа Бродского", "building": "2",
               "apartment": 11, "name": "Романова Мария Леонидовна", "birth_date": "23.11.1986",
               "gender": "female", "relatives": []}),
    ]
}

/// Today's date in UTC, as the service sees it.
pub fn today() -> time::Date {
    time::OffsetDateTime::now_utc().date()
}

/// A date in the wire form `DD.MM.YYYY`.
pub fn wire_date(date: time::Date) -> String {
    format!(
        "{:02}.{:02}.{:04}",
        date.day(),
        date.month() as u8,
        date.year()
    )
}

/// `n` citizens with `links` symmetric relative links between distinct
/// citizens, in shuffled order, relatives unsorted (the benchmark's generator).
pub fn generate_import(n: u64, links: usize, seed: u64) -> Vec<Value> {
    gifts::sample::import(n, links, seed)
        .into_iter()
        .map(|c| serde_json::to_value(c).expect("plain data"))
        .collect()
}

/// Panics unless every relative in `listing` (a GET citizens answer) lists
/// the citizen back; `what` names the import in the message.
pub fn assert_relatives_symmetric(listing: &[Value], what: &str) {
    let graph: std::collections::BTreeMap<u64, Vec<u64>> = listing
        .iter()
        .map(|c| {
            let relatives = c["relatives"].as_array().expect("relatives");
            (
                c["citizen_id"].as_u64().expect("citizen_id"),
                relatives
                    .iter()
                    .map(|r| r.as_u64().expect("an id"))
                    .collect(),
            )
        })
        .collect();
    for (me, list) in &graph {
        for other in list {
            assert!(
                graph.get(other).is_some_and(|back| back.contains(me)),
                "{what}: {me} lists {other}, not back: {graph:?}"
            );
        }
    }
}

/// What GET citizens must return for an import body: ordered by id, relatives ascending.
pub fn expected_listing(citizens: &[Value]) -> Vec<Value> {
    let mut expected: Vec<Value> = citizens.to_vec();
    expected.sort_by_key(|c| c["citizen_id"].as_u64().unwrap());
    for c in &mut expected {
        let mut r: Vec<u64> = c["relatives"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        r.sort_unstable();
        c["relatives"] = json!(r);
    }
    expected
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

/// A small tmpfs of the test's own, to run a store out of disk space;
/// unmounted when dropped. Needs root (`mount`): elsewhere the test is
/// skipped with a printed reason, and fails under `CI=true`.
pub struct Tmpfs {
    /// Where it is mounted.
    pub path: PathBuf,
    _dir: TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `16m`), or reports why it cannot.
    pub fn mount(size: &str, test: &str) -> Option<Self> {
        let dir = tempfile::tempdir().expect("temp dir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::piped())
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(Self {
                path: dir.path().to_owned(),
                _dir: dir,
            }),
            other => {
                let why = match other {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                    Err(e) => e.to_string(),
                };
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "CI=true but a tmpfs cannot be mounted: {why}"
                );
                skipped(&format!(
                    "{test}: cannot mount a tmpfs here ({why}); run as root"
                ));
                None
            }
        }
    }

    /// Fills the file system with a file `filler` until no byte is left.
    pub fn fill(&self) {
        use std::io::Write;
        let mut file = std::fs::File::create(self.path.join("filler")).expect("filler");
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        while file.write_all(&chunk[..512]).is_ok() {}
        while file.write_all(&chunk[..1]).is_ok() {}
    }

    /// Removes the filler: the space is back.
    pub fn free(&self) {
        std::fs::remove_file(self.path.join("filler")).expect("remove the filler");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
