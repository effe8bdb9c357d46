//! The app in-process on a test's store, and its HTTP helpers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gifts::config::Config;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::*;
use crate::support::poll;

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

    /// The ids of an import's citizens, ascending (GET citizens, which must succeed).
    pub async fn citizen_ids(&self, import: i64) -> Vec<u64> {
        self.citizens(import)
            .await
            .iter()
            .map(|c| c["citizen_id"].as_u64().expect("a citizen_id"))
            .collect()
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
