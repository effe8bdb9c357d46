//! What only the Tarantool backend promises: several app instances over one
//! database, and riding out a Tarantool crash. The stored procedures called
//! directly, with the app's credentials, are `procedures`.

mod procedures;

use procedures::{NO_ROWS, WAIT, row};

use std::sync::Arc;
use std::time::{Duration, Instant};

use gifts::config::Config;
use reqwest::StatusCode;
use serde_json::json;

use gifts::storage::iproto::{self, Client};

use crate::helpers::{
    Backend, Binary, Fault, FaultProxy, KillOnDrop, TestApp, TestStore, free_port, spec_example,
    tarantool_available,
};
use crate::servers::wait_for;
use crate::support::{app_lua, poll, tarantool_command};

/// A client of the test's Tarantool as `user`.
pub fn client_as(store: &TestStore, user: &str, password: &str) -> Client {
    let gifts::config::StorageUrl::Tarantool(address) = store.url() else {
        unreachable!("a tarantool store")
    };
    Client::new(iproto::Config {
        address: address.host_port.clone(),
        user: user.into(),
        password: password.into(),
        connect_timeout: Duration::from_secs(5),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_patches_go_to_tarantool_together_and_each_gets_its_answer() {
    if !tarantool_available("patches_together") {
        return;
    }
    let app = Arc::new(TestApp::spawn(Backend::Tarantool).await);
    crate::patch::patches_share_a_commit(app, "gifts_tarantool_patch_batch_size", None).await;
}

/// A Tarantool that opens its port before the app's user may call anything
/// (as `app.lua` did before it listened last), and runs `app.lua` — which
/// grants — once the file `grant` appears in its directory.
const LISTENS_BEFORE_GRANTING: &str = r"
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
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tarantool_that_listens_before_granting_gets_503_then_201_once_granted() {
    if !tarantool_available("listens_before_granting") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("start.lua"), LISTENS_BEFORE_GRANTING).unwrap();
    let port = free_port();
    let _tarantool = KillOnDrop(
        tarantool_command(
            &dir.path().join("start.lua"),
            port,
            dir.path(),
            "test-password",
            256 << 20,
        )
        .env("GIFTS_APP_LUA", app_lua())
        .current_dir(dir.path())
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
    let denied = poll(Duration::from_secs(30), || async {
        let Ok(response) = client.get(format!("{}/health", app.base)).send().await else {
            return Err(serde_json::Value::Null);
        };
        let status = response.status();
        let body: serde_json::Value =
            serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        if body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("denies the service's user")
        {
            Ok(body)
        } else {
            Err(body)
        }
    })
    .await
    .unwrap_or_else(|last| panic!("never denied ({last}):\n{}", app.log()));
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
async fn a_big_import_is_stored_in_chunks_intact_and_with_its_key() {
    if !tarantool_available("chunked_import") {
        return;
    }
    // Chunks of 1,000: a 3,500-citizen import takes four, plus begin and commit.
    let app = TestApp::spawn_with(Backend::Tarantool, |c| c.tarantool_import_chunk = 1_000).await;
    let citizens = crate::helpers::generate_import(3_500, 400, 11);
    let body = json!({ "citizens": citizens });
    let send = || {
        app.client
            .post(app.url("/imports"))
            .header("idempotency-key", "big-one")
            .body(body.to_string())
            .send()
    };
    assert_eq!(send().await.unwrap().status(), StatusCode::CREATED);
    assert_eq!(
        app.citizens(1).await,
        crate::helpers::expected_listing(&citizens)
    );
    let again = send().await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    let again: serde_json::Value = serde_json::from_slice(&again.bytes().await.unwrap()).unwrap();
    assert_eq!(
        again["data"]["import_id"], 1,
        "the key's import, not a new one"
    );
    // An invalid big import is refused whole (the app checks first; the
    // database would too), and takes no id.
    let (status, _) = app
        .post_import(&json!({"citizens": [crate::helpers::citizen(1, &[2])]}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(app.import(vec![]).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_cut_short_by_a_crash_is_never_seen_and_is_cleaned_at_start() {
    if !tarantool_available("chunked_import_crash") {
        return;
    }
    let app = TestApp::spawn(Backend::Tarantool).await;
    let gifts = client_as(&app.store, "gifts", "test-password");
    let none: Option<&str> = None;
    let (status, import): (String, i64) = gifts
        .call("gifts_import_begin", &(none, none), WAIT)
        .await
        .unwrap();
    assert_eq!(status, "ok");
    let (status, _): (String, Option<String>) = gifts
        .call(
            "gifts_import_chunk",
            &(import, vec![row(1, &[]), row(2, &[])], NO_ROWS, NO_ROWS),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(status, "ok");
    // Loading: invisible to reads and patches.
    let (status, _) = app.get(&format!("/imports/{import}/citizens")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.patch(import, 1, &json!({"name": "x"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    app.store.kill_server();
    app.store.start_server();
    wait_for(&app, "/health", StatusCode::OK).await;
    let (status, _) = app.get(&format!("/imports/{import}/citizens")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let gifts = client_as(&app.store, "gifts", "test-password");
    let (status, reason): (String, Option<String>) = gifts
        .call(
            "gifts_import_chunk",
            &(import, vec![row(3, &[])], NO_ROWS, NO_ROWS),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(status, "invalid", "the leftover import is gone: {reason:?}");
    assert!(
        app.store.server_log().contains(&format!(
            "deleting import {import}, left half-stored by a crash"
        )),
        "{}",
        app.store.server_log()
    );
    assert!(app.import(vec![]).await > import, "its id is not reused");
}

/// Whatever Tarantool's connection does — garbage, answers cut short, a
/// peer that goes silent — requests end within their time with 503 or
/// 504 (never 500, never a hang), and once the connection is sound again
/// the service recovers by itself with every acknowledged write intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_tarantool_connection_gives_503s_then_recovers() {
    if !tarantool_available("damaged_connection") {
        return;
    }
    let store = Arc::new(TestStore::new(Backend::Tarantool));
    let gifts::config::StorageUrl::Tarantool(address) = store.url().clone() else {
        unreachable!("a tarantool store")
    };
    let proxy = FaultProxy::start(address.host_port.clone(), Fault::None).await;
    let mut config = Config::with_storage(store.url().clone());
    config.storage = format!(
        "tarantool://{}:{}@{}",
        address.user,
        address.password.as_ref().unwrap().expose(),
        proxy.addr
    )
    .parse()
    .unwrap();
    config.tarantool_timeout_secs = 1;
    let app = TestApp::launch(Arc::clone(&store), config).await;
    let import = app.import(spec_example()).await;
    let (status, _) = app.patch(import, 3, &json!({"relatives": [1]})).await;
    assert_eq!(status, StatusCode::OK);
    let before = app.citizens(import).await;

    for fault in [Fault::Garbage, Fault::Cut, Fault::Stall] {
        proxy.set(fault);
        let mut statuses = Vec::new();
        for _ in 0..2 {
            let started = Instant::now();
            let requests = async {
                let read = app.get(&format!("/imports/{import}/citizens")).await;
                // The same name again: whether it was applied does not matter.
                let write = app
                    .patch(import, 1, &json!({"name": before[0]["name"]}))
                    .await;
                let health = app.get("/health").await;
                [read, write, health]
            };
            let answers = tokio::time::timeout(Duration::from_secs(20), requests)
                .await
                .unwrap_or_else(|_| panic!("{fault:?}: requests hung"));
            for (status, body) in answers {
                assert!(
                    status == StatusCode::SERVICE_UNAVAILABLE
                        || status == StatusCode::GATEWAY_TIMEOUT,
                    "{fault:?}: {status} {body}"
                );
                statuses.push(status.as_u16());
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "{fault:?}: {:?}",
                started.elapsed()
            );
        }
        eprintln!("{fault:?}: {statuses:?}");

        proxy.set(Fault::None);
        wait_for(&app, "/health", StatusCode::OK).await;
        wait_for(&app, &format!("/imports/{import}/citizens"), StatusCode::OK).await;
        assert_eq!(app.citizens(import).await, before, "after {fault:?}");
        let (status, body) = app.patch(import, 2, &json!({"apartment": 8})).await;
        assert_eq!(status, StatusCode::OK, "after {fault:?}: {body}");
        let (status, body) = app.patch(import, 2, &json!({"apartment": 7})).await;
        assert_eq!(status, StatusCode::OK, "after {fault:?}: {body}");
    }
}

/// `tarantool/app.lua` beyond loopback with the default password warns
/// loudly; on loopback it does not; either way it names its data directory.
#[tokio::test]
async fn app_lua_warns_of_the_default_password_beyond_loopback_and_names_its_data() {
    if !tarantool_available("default_password_warning") {
        return;
    }
    for (host, warned) in [("0.0.0.0", true), ("127.0.0.1", false)] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let log = dir.path().join("tarantool.log");
        let port = crate::helpers::free_port();
        let child = std::process::Command::new("tarantool")
            .arg(app_lua())
            .env("GIFTS_TARANTOOL_LISTEN", format!("{host}:{port}"))
            .env("GIFTS_TARANTOOL_DIR", &data)
            .env("GIFTS_TARANTOOL_MEMORY", "64MiB")
            .env_remove("GIFTS_TARANTOOL_PASSWORD")
            .current_dir(dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .unwrap();
        let _guard = crate::support::KillOnDrop(child);
        let ready = format!("ready on {host}:{port}");
        let text = poll(Duration::from_secs(60), || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default()
                + &std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
            if text.contains(&ready) {
                Ok(text)
            } else {
                Err(text)
            }
        })
        .await
        .unwrap_or_else(|text| panic!("no {ready:?} in:\n{text}"));
        assert_eq!(text.contains("DEFAULT PASSWORD"), warned, "{host}: {text}");
        assert!(
            text.contains(&format!("data in {}", data.display())),
            "{text}"
        );
    }
}

/// The password from files on both sides (Docker secrets): Tarantool's from
/// `GIFTS_TARANTOOL_PASSWORD_FILE`, the app's from `--storage-password-file`
/// with a URL that names none; the service works. An empty file stops
/// Tarantool's start with a message naming the variable.
#[tokio::test]
async fn passwords_come_from_files_on_both_sides() {
    if !tarantool_available("password_files") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, "from a file: @\n").unwrap();
    let file = file.to_str().unwrap();
    // An empty GIFTS_TARANTOOL_PASSWORD counts as unset.
    let store = TestStore::with_env(
        Backend::Tarantool,
        &[
            ("GIFTS_TARANTOOL_PASSWORD", ""),
            ("GIFTS_TARANTOOL_PASSWORD_FILE", file),
        ],
    );
    let url = store.flag().replace(":test-password@", "@");
    assert!(!url.contains("test-password"), "{url}");
    let mut app = Binary::start(
        &["--storage", &url],
        &[("GIFTS_STORAGE_PASSWORD_FILE", file)],
        None,
    );
    app.wait_healthy().await;
    let response = reqwest::Client::new()
        .post(format!("{}/imports", app.base))
        .header("content-type", "application/json")
        .body(json!({ "citizens": spec_example() }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED, "{}", app.log());
    // The file's password, not the old one: the test's usual password fails.
    let wrong = client_as(&store, "gifts", "test-password");
    assert!(
        wrong
            .call::<_, (u64,)>("gifts_health", &procedures::NO_ARGS, WAIT)
            .await
            .is_err()
    );

    std::fs::write(dir.path().join("empty"), "").unwrap();
    let output = tarantool_command(
        &app_lua(),
        free_port(),
        &dir.path().join("data"),
        "",
        64 << 20,
    )
    .env_remove("GIFTS_TARANTOOL_PASSWORD")
    .env("GIFTS_TARANTOOL_PASSWORD_FILE", dir.path().join("empty"))
    .current_dir(dir.path())
    .output()
    .unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{said}");
    assert!(said.contains("GIFTS_TARANTOOL_PASSWORD_FILE"), "{said}");
    assert!(said.contains("is empty"), "{said}");
}

/// A GET citizens read in many `SELECT`s (pages of 3 rows) while PATCHes
/// keep changing the import answers one state: a relation that PATCHes
/// make and break between the first citizen and the last (ten pages apart)
/// is seen from both sides or from neither, never half; and no row of the
/// next import creeps in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_of_many_pages_sees_one_state_while_patches_run() {
    if !tarantool_available("paged_read_state") {
        return;
    }
    let app = TestApp::spawn_with(Backend::Tarantool, |c| {
        c.tarantool_read_page = 3;
        c.cache_bytes = gifts::config::ByteSize(0);
    })
    .await;
    let import = app.import(crate::helpers::generate_import(30, 0, 3)).await;
    let ids = app.citizen_ids(import).await;
    let (first, last) = (ids[0], ids[ids.len() - 1]);
    // A page after the import's last key runs on into this one's rows.
    app.import(crate::helpers::generate_import(5, 0, 4)).await;
    let done = std::sync::atomic::AtomicBool::new(false);
    let patching = async {
        for round in 0..150 {
            let relatives = if round % 2 == 0 {
                json!([last])
            } else {
                json!([])
            };
            let (status, body) = app
                .patch(import, first, &json!({ "relatives": relatives }))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        done.store(true, std::sync::atomic::Ordering::Release);
    };
    let reading = async {
        let mut reads = 0;
        while !done.load(std::sync::atomic::Ordering::Acquire) || reads == 0 {
            let listing = app.citizens(import).await;
            assert_eq!(listing.len(), ids.len());
            crate::helpers::assert_relatives_symmetric(&listing, "a read of ten pages");
            reads += 1;
        }
        reads
    };
    let ((), reads) = tokio::join!(patching, reading);
    assert!(reads > 0);
}

/// Presents in a birthdays answer, all months together.
fn presents_in(birthdays: &serde_json::Value) -> u64 {
    birthdays
        .as_object()
        .expect("months")
        .values()
        .flat_map(|month| month.as_array().expect("a month's list").iter())
        .map(|row| row["presents"].as_u64().expect("presents"))
        .sum()
}

/// A PATCH that mirrors more relatives than one step (here 2) is written
/// in several transactions; whoever reads the import meanwhile — whole or
/// in pages of 3 rows, nothing cached — sees it before or after, never
/// half: the relation symmetric and the presents either none or all. Other
/// PATCHes of the import wait for it and are applied after, each answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_written_in_steps_is_seen_whole_or_not_at_all() {
    if !tarantool_available("long_patch_readers") {
        return;
    }
    let store = Arc::new(TestStore::with_env(
        Backend::Tarantool,
        &[("GIFTS_TARANTOOL_PATCH_STEP", "2")],
    ));
    let mut config = Config::with_storage(store.url().clone());
    config.tarantool_read_page = 3;
    config.cache_bytes = gifts::config::ByteSize(0);
    let app = TestApp::start(Arc::clone(&store), config).await;
    let import = app.import(crate::helpers::generate_import(40, 0, 5)).await;
    let ids = app.citizen_ids(import).await;
    let hub = ids[0];
    let others = ids[1..].to_vec();
    let all = u64::try_from(2 * others.len()).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let patching = async {
        for round in 0..6 {
            let relatives = if round % 2 == 0 {
                others.clone()
            } else {
                vec![]
            };
            let (status, body) = app
                .patch(import, hub, &json!({ "relatives": relatives }))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        done.store(true, std::sync::atomic::Ordering::Release);
    };
    let reading = async {
        let mut reads = 0;
        while !done.load(std::sync::atomic::Ordering::Acquire) || reads == 0 {
            let listing = app.citizens(import).await;
            crate::helpers::assert_relatives_symmetric(&listing, "a read during a long PATCH");
            let presents = presents_in(&app.birthdays(import).await);
            assert!(
                presents == 0 || presents == all,
                "{presents} presents: a PATCH seen half-written (0 or {all} expected)"
            );
            reads += 1;
        }
        reads
    };
    let renaming = async {
        let mut n = 0;
        while !done.load(std::sync::atomic::Ordering::Acquire) {
            n += 1;
            let (status, body) = app
                .patch(
                    import,
                    others[n % others.len()],
                    &json!({ "name": format!("Имя {n}") }),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    };
    let ((), reads, ()) = tokio::join!(patching, reading, renaming);
    assert!(reads > 0);
    // The last round dropped them all: the same as a store that never had them.
    let listing = app.citizens(import).await;
    assert!(
        listing.iter().all(|c| c["relatives"] == json!([])),
        "{listing:?}"
    );
    assert_eq!(presents_in(&app.birthdays(import).await), 0);
}

/// A Tarantool that dies in the middle of a PATCH written in steps (after
/// 3 of its 10) finishes it at its next start, before it lets clients in:
/// the import then answers exactly as on SQLite after the same PATCH, and
/// the log says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_cut_short_by_a_crash_is_finished_at_the_next_start() {
    if !tarantool_available("long_patch_crash") {
        return;
    }
    let store = Arc::new(TestStore::with_env(
        Backend::Tarantool,
        &[
            ("GIFTS_TARANTOOL_PATCH_STEP", "2"),
            ("GIFTS_TARANTOOL_CRASH_AFTER_STEPS", "3"),
        ],
    ));
    // Nothing cached: each answer comes from the rows stored.
    let mut config = Config::with_storage(store.url().clone());
    config.cache_bytes = gifts::config::ByteSize(0);
    let app = TestApp::start(Arc::clone(&store), config).await;
    let sqlite = TestApp::spawn(Backend::Sqlite).await;
    let citizens = crate::helpers::generate_import(30, 20, 6);
    let import = app.import(citizens.clone()).await;
    assert_eq!(sqlite.import(citizens.clone()).await, import);
    let hub = citizens[0]["citizen_id"].as_u64().unwrap();
    // 20 relatives touched, and the birth month moves the presents of the
    // ones it keeps: more than 3 steps of 2.
    let relatives: Vec<u64> = citizens[10..]
        .iter()
        .map(|c| c["citizen_id"].as_u64().unwrap())
        .collect();
    let patch = json!({ "relatives": relatives, "birth_date": "15.07.1990" });
    let (status, body) = sqlite.patch(import, hub, &patch).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app.patch(import, hub, &patch).await;
    assert!(
        status == StatusCode::GATEWAY_TIMEOUT || status == StatusCode::SERVICE_UNAVAILABLE,
        "the database died in the middle of the PATCH: {status} {body}"
    );
    store.kill_server(); // reaps the exited process
    store.set_server_env(&[("GIFTS_TARANTOOL_PATCH_STEP", "2")]);
    store.start_server();
    wait_for(&app, "/health", StatusCode::OK).await;
    for what in [
        "citizens/birthdays",
        "towns/stat/percentile/age",
        "citizens",
    ] {
        let path = format!("/imports/{import}/{what}");
        let (status, body) = app.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, sqlite.get(&path).await.1, "{what}");
    }
    let log = store.server_log();
    assert!(log.contains("exiting in the middle of a PATCH"), "{log}");
    assert!(
        log.contains(&format!(
            "finished the PATCH of citizen {hub} of import {import}, cut short by a crash"
        )),
        "{log}"
    );
}
