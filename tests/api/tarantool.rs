//! What only the Tarantool backend promises: several app instances over one
//! database, and riding out a Tarantool crash.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gifts::config::Config;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{
    Backend, Binary, KillOnDrop, TestApp, TestStore, free_port, spec_example, tarantool_available,
};

async fn two_apps(store: &Arc<TestStore>) -> (TestApp, TestApp) {
    let config = || Config::with_storage(store.url().clone());
    (
        TestApp::start(Arc::clone(store), config()).await,
        TestApp::start(Arc::clone(store), config()).await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_app_instances_over_one_tarantool_see_each_others_writes_at_once() {
    if !tarantool_available("two_app_instances") {
        return;
    }
    let store = Arc::new(TestStore::new(Backend::Tarantool));
    let (a, b) = two_apps(&store).await;

    let import = a.import(spec_example()).await;
    assert_eq!(b.citizens(import).await, spec_example());

    let (status, patched) = b
        .patch(import, 3, &json!({"relatives": [1], "name": "Б"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let listing = a.citizens(import).await;
    assert_eq!(listing[2], patched["data"]);
    assert_eq!(listing[0]["relatives"], json!([2, 3]));
    assert_eq!(
        a.birthdays(import).await,
        b.birthdays(import).await,
        "both instances answer from the same data"
    );

    let second = b.import(vec![]).await;
    assert!(second > import, "one id sequence for all instances");
}

/// Polls until `path` answers `want`, or fails after a deadline.
async fn wait_for(app: &TestApp, path: &str, want: StatusCode) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = app.get(path).await;
        if status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} still answers {status}, not {want}; tarantool log:\n{}",
            app.store.tarantool_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tarantool_crash_gives_503s_then_everything_acknowledged_is_back() {
    if !tarantool_available("tarantool_crash") {
        return;
    }
    let app = TestApp::spawn(Backend::Tarantool).await;
    let import = app.import(spec_example()).await;
    let (status, _) = app.patch(import, 3, &json!({"relatives": [1]})).await;
    assert_eq!(status, StatusCode::OK);
    let before = app.citizens(import).await;

    app.store.kill_tarantool();
    let started = Instant::now();
    for path in [
        format!("/imports/{import}/citizens"),
        format!("/imports/{import}/citizens/birthdays"),
        "/health".to_string(),
    ] {
        let (status, body) = app.get(&path).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {body}");
        assert_eq!(body["error"]["code"], "storage_unavailable", "{path}");
    }
    let (status, _) = app.patch(import, 1, &json!({"name": "Потерян"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = app.post_import(&json!({"citizens": []})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "503s came fast: {:?}",
        started.elapsed()
    );

    app.store.start_tarantool();
    wait_for(&app, "/health", StatusCode::OK).await;
    assert_eq!(
        app.citizens(import).await,
        before,
        "nothing acknowledged was lost"
    );
    let (status, body) = app.patch(import, 1, &json!({"name": "Снова"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(app.import(vec![]).await > import);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_user_may_only_call_our_functions_and_guests_nothing() {
    use rusty_tarantool::tarantool::ClientConfig;

    if !tarantool_available("permissions") {
        return;
    }
    // Starting an app waits until app.lua has created the schema and the user.
    let app = TestApp::spawn(Backend::Tarantool).await;
    let gifts::config::StorageUrl::Tarantool(address) = app.store.url() else {
        unreachable!("a tarantool store")
    };
    let as_user = |user: &str, password: &str| {
        ClientConfig::new(address.host_port.clone(), user, password).build()
    };
    let no_args = Vec::<()>::new();

    let gifts = as_user(&address.user, &address.password);
    assert!(gifts.call_fn("gifts_health", &no_args).await.is_ok());
    assert!(
        gifts
            .eval("return box.space.citizens:count()", &no_args)
            .await
            .is_err(),
        "the app user cannot evaluate code"
    );
    assert!(
        gifts
            .call_fn("box.space.citizens:truncate", &no_args)
            .await
            .is_err(),
        "the app user cannot call anything else"
    );

    let guest = as_user("guest", "");
    assert!(
        guest.call_fn("gifts_health", &no_args).await.is_err(),
        "guests cannot call our functions"
    );
    assert!(guest.eval("return 1", &no_args).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_through_one_instance_never_miss_a_write_made_through_another() {
    if !tarantool_available("concurrent_reads_across_instances") {
        return;
    }
    let store = Arc::new(TestStore::new(Backend::Tarantool));
    let (reader, writer) = two_apps(&store).await;
    let import = reader.import(spec_example()).await;
    let reader = Arc::new(reader);
    // Keep readers busy so version checks overlap with the writes.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let background: Vec<_> = (0..4)
        .map(|_| {
            let (reader, stop) = (Arc::clone(&reader), Arc::clone(&stop));
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    reader.citizens(import).await;
                }
            })
        })
        .collect();
    for round in 0..20 {
        let name = format!("Раунд {round}");
        let (status, _) = writer.patch(import, 2, &json!({ "name": name })).await;
        assert_eq!(status, StatusCode::OK);
        // Every read that starts after the acknowledgement sees the write.
        let reads: Vec<_> = (0..8)
            .map(|_| {
                let reader = Arc::clone(&reader);
                tokio::spawn(async move { reader.citizens(import).await })
            })
            .collect();
        for read in reads {
            assert_eq!(
                read.await.unwrap()[1]["name"],
                name.as_str(),
                "round {round}"
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in background {
        task.await.unwrap();
    }
}

/// A Tarantool that opens its port before the app's user may call anything
/// (as `app.lua` did before it listened last), and runs `app.lua` — which
/// grants — once the file `grant` appears in its directory.
const LISTENS_BEFORE_GRANTING: &str = r#"
local fio = require('fio')
local fiber = require('fiber')
box.cfg({
    listen = os.getenv('GIFTS_TARANTOOL_LISTEN'),
    work_dir = os.getenv('GIFTS_TARANTOOL_DIR'),
    memtx_memory = 256 * 1024 * 1024,
    wal_mode = 'fsync',
})
box.schema.user.create('gifts', { password = 'test-password', if_not_exists = true })
fiber.create(function()
    while not fio.path.exists('grant') do fiber.sleep(0.02) end
    dofile(os.getenv('GIFTS_APP_LUA'))
end)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tarantool_that_listens_before_granting_gets_503_then_201_once_granted() {
    if !tarantool_available("listens_before_granting") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("start.lua"), LISTENS_BEFORE_GRANTING).unwrap();
    let port = free_port();
    let _tarantool = KillOnDrop(
        std::process::Command::new("tarantool")
            .arg("start.lua")
            .current_dir(dir.path())
            .env("GIFTS_TARANTOOL_LISTEN", format!("127.0.0.1:{port}"))
            .env("GIFTS_TARANTOOL_DIR", dir.path())
            .env("GIFTS_TARANTOOL_PASSWORD", "test-password")
            .env("GIFTS_TARANTOOL_MEMORY", "256MiB")
            .env(
                "GIFTS_APP_LUA",
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tarantool/app.lua"),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start tarantool"),
    );
    let storage = format!("tarantool://gifts:test-password@127.0.0.1:{port}");
    let mut app = Binary::start(&["--storage", &storage], &[], None);
    // Until the user may call gifts_health, every answer is a 503: first the
    // port is not open, then access is denied; never a 500.
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let denied = loop {
        let response = client.get(format!("{}/health", app.base)).send().await;
        if let Ok(response) = response {
            let status = response.status();
            let body: serde_json::Value =
                serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            if body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("denies the service's user")
            {
                break body;
            }
        }
        assert!(Instant::now() < deadline, "never denied:\n{}", app.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(denied["error"]["code"], "storage_unavailable");
    let response = client
        .post(format!("{}/imports", app.base))
        .body(json!({"citizens": []}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    app.wait_for_log("denies the service's user the gifts functions")
        .await;

    std::fs::write(dir.path().join("grant"), "").unwrap();
    app.wait_healthy().await;
    let response = client
        .post(format!("{}/imports", app.base))
        .body(json!({"citizens": spec_example()}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tarantool_restarts_under_a_steady_request_stream_never_give_500() {
    if !tarantool_available("restart_loop") {
        return;
    }
    // GIFTS_TEST_TARANTOOL_RESTARTS=100 for the long run.
    let restarts: usize = std::env::var("GIFTS_TEST_TARANTOOL_RESTARTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let app = Arc::new(TestApp::spawn(Backend::Tarantool).await);
    let import = app.import(spec_example()).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counts = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let streams: Vec<_> = (0..3)
        .map(|k| {
            let (app, stop, counts) = (Arc::clone(&app), Arc::clone(&stop), Arc::clone(&counts));
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let (status, body) = match (k + n) % 4 {
                        0 => app.post_import(&json!({"citizens": spec_example()})).await,
                        1 => {
                            app.patch(import, 1 + n % 3, &json!({"name": format!("N{n}")}))
                                .await
                        }
                        2 => {
                            app.get(&format!("/imports/{import}/citizens/birthdays"))
                                .await
                        }
                        _ => app.get("/health").await,
                    };
                    assert!(
                        [200, 201, 503].contains(&status.as_u16()),
                        "unexpected {status}: {body}"
                    );
                    *counts
                        .lock()
                        .unwrap()
                        .entry(status.as_u16())
                        .or_insert(0u64) += 1;
                }
            })
        })
        .collect();
    for round in 0..restarts {
        app.store.kill_tarantool();
        app.store.start_tarantool();
        wait_for(&app, "/health", StatusCode::OK).await;
        assert!(
            streams.iter().all(|s| !s.is_finished()),
            "a request stream stopped in round {round}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for stream in streams {
        stream.await.expect("no unexpected status");
    }
    let counts = counts.lock().unwrap().clone();
    eprintln!("{restarts} tarantool restarts; answers by status: {counts:?}");
    assert!(
        counts.contains_key(&503),
        "the restarts were seen: {counts:?}"
    );
}
