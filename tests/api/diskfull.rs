//! A full disk is a clear answer, reads go on, and recovery is complete:
//! each store on a small tmpfs of its own, filled to the last byte.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    Binary, KillOnDrop, Tmpfs, free_port, generate_import, spec_example, tarantool_available,
};
use crate::support::{app_lua, poll, tarantool_command};

async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = client.request(method, url);
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let bytes = response.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Polls `/health` until it answers `want`.
async fn health_becomes(client: &reqwest::Client, base: &str, want: StatusCode) -> Value {
    poll(Duration::from_secs(30), || async {
        match send(client, reqwest::Method::GET, format!("{base}/health"), None).await {
            (status, body) if status == want => Ok(body),
            other => Err(other),
        }
    })
    .await
    .unwrap_or_else(|(status, body)| panic!("/health still {status}: {body}"))
}

/// The checks common to both stores, against a service whose store lives
/// on `disk`: writes 507, reads 200, health 503; room again: health 200,
/// writes 201; full again and a restart (`restart` gives the new base URL):
/// reads 200; room: writes 201.
async fn full_disk_then_room_again(
    base: &str,
    disk: &Tmpfs,
    after_recovery: impl FnOnce(),
    restart: impl AsyncFnOnce() -> String,
) {
    let client = reqwest::Client::new();
    let get = async |base: &str| {
        send(
            &client,
            reqwest::Method::GET,
            format!("{base}/imports/1/citizens"),
            None,
        )
        .await
    };
    let post = async |base: &str, body: &Value| {
        send(
            &client,
            reqwest::Method::POST,
            format!("{base}/imports"),
            Some(body.clone()),
        )
        .await
    };
    let (status, body) = post(base, &json!({ "citizens": spec_example() })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let listing = get(base).await;
    let big = json!({ "citizens": generate_import(3_000, 300, 5) });

    disk.fill();
    let (status, body) = post(base, &big).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_storage");
    assert_eq!(get(base).await, listing, "reads are still served");
    let health = health_becomes(&client, base, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(health["error"]["code"], "insufficient_storage", "{health}");

    disk.free();
    health_becomes(&client, base, StatusCode::OK).await;
    let (status, body) = post(base, &big).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    after_recovery();

    // A restart on a full disk still serves reads.
    disk.fill();
    let base = restart().await;
    assert_eq!(
        get(&base).await,
        listing,
        "reads after a restart on a full disk"
    );
    disk.free();
    health_becomes(&client, &base, StatusCode::OK).await;
    let (status, body) = post(&base, &big).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_on_a_full_disk_refuses_writes_with_507_serves_reads_and_recovers() {
    let Some(disk) = Tmpfs::mount("8m", "sqlite_disk_full") else {
        return;
    };
    let storage = format!("sqlite:{}", disk.path.join("gifts.db").display());
    let mut first = Binary::start(&["--storage", &storage], &[], None);
    first.wait_healthy().await;
    let base = first.base.clone();
    let app = std::cell::RefCell::new(first);
    let wal = disk.path.join("gifts.db-wal");
    let shrunk = || {
        let log = app.borrow().log();
        assert!(log.contains("the disk has room again"), "{log}");
        // The failed import may have grown the WAL; recovery truncated it.
        let size = std::fs::metadata(&wal).map_or(0, |m| m.len());
        assert!(
            size < 2 << 20,
            "the WAL shrank once there was room: {size} bytes"
        );
    };
    full_disk_then_room_again(&base, &disk, shrunk, async || {
        // A graceful stop removes SQLite's -wal and -shm files, so the new
        // process must create them on the full disk.
        assert_eq!(
            app.borrow_mut().terminate(),
            Some(0),
            "{}",
            app.borrow().log()
        );
        let mut next = Binary::start(&["--storage", &storage], &[], None);
        next.wait_for_log("listening").await;
        let base = next.base.clone();
        *app.borrow_mut() = next;
        base
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tarantool_on_a_full_disk_refuses_writes_with_507_serves_reads_and_recovers() {
    if !tarantool_available("tarantool_disk_full") {
        return;
    }
    let Some(disk) = Tmpfs::mount("16m", "tarantool_disk_full") else {
        return;
    };
    let port = free_port();
    let start_tarantool = || {
        KillOnDrop(
            tarantool_command(
                &app_lua(),
                port,
                &disk.path.join("data"),
                "test-password",
                256 << 20,
            )
            .current_dir(&disk.path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start tarantool"),
        )
    };
    let tarantool = std::cell::RefCell::new(start_tarantool());
    let storage = format!("tarantool://gifts:test-password@127.0.0.1:{port}");
    let mut app = Binary::start(&["--storage", &storage], &[], None);
    app.wait_healthy().await;
    let base = app.base.clone();
    full_disk_then_room_again(
        &base,
        &disk,
        || {},
        async || {
            // Tarantool restarts on the full disk (recovering from its files).
            drop(tarantool.replace(start_tarantool()));
            let client = reqwest::Client::new();
            let url = format!("{base}/imports/1/citizens");
            poll(Duration::from_secs(30), || async {
                match send(&client, reqwest::Method::GET, url.clone(), None).await {
                    (StatusCode::OK, _) => Ok(()),
                    (status, body) => Err(format!("{status}: {body}")),
                }
            })
            .await
            .unwrap_or_else(|last| panic!("no reads after the restart: {last}"));
            base.clone()
        },
    )
    .await;
}

/// A database as the first schema left it (frozen: what an old release
/// wrote, not what this build would create), with one import of one citizen.
const SCHEMA_1_DATABASE: &str = "
    PRAGMA journal_mode = WAL;
    CREATE TABLE imports (
        import_id  INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE citizens (
        import_id  INTEGER NOT NULL REFERENCES imports (import_id),
        citizen_id INTEGER NOT NULL,
        town       TEXT    NOT NULL,
        street     TEXT    NOT NULL,
        building   TEXT    NOT NULL,
        apartment  INTEGER NOT NULL,
        name       TEXT    NOT NULL,
        birth_date TEXT    NOT NULL,
        gender     TEXT    NOT NULL,
        relatives  BLOB    NOT NULL,
        PRIMARY KEY (import_id, citizen_id)
    ) WITHOUT ROWID;
    INSERT INTO imports (created_at) VALUES (0);
    INSERT INTO citizens VALUES (1, 7, 'Москва', 'Льва Толстого', '16', 7, 'Иванов Иван', '2000-01-31', 'male', x'');
    PRAGMA user_version = 1;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_that_must_migrate_on_a_full_disk_starts_on_the_reserve() {
    let Some(disk) = Tmpfs::mount("8m", "sqlite_migrate_on_a_full_disk") else {
        return;
    };
    let db = disk.path.join("gifts.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(SCHEMA_1_DATABASE)
        .unwrap();
    // What an earlier start left beside the database.
    let reserve = disk.path.join("gifts.db.reserve");
    std::fs::write(&reserve, vec![0u8; 1 << 20]).unwrap();
    disk.fill();

    // The migration cannot write on the full disk; the retry on the freed
    // reserve can.
    let storage = format!("sqlite:{}", db.display());
    let mut app = Binary::start(&["--storage", &storage], &[], None);
    let log = app.wait_for_log("listening").await;
    assert!(
        log.contains("retrying with the disk-space reserve freed"),
        "{log}"
    );
    assert!(log.contains("sqlite database migrated"), "{log}");
    assert!(log.contains("from=1 to="), "{log}");
    assert!(!reserve.exists(), "the reserve was spent on the migration");
    let client = reqwest::Client::new();
    let (status, body) = send(
        &client,
        reqwest::Method::GET,
        format!("{}/imports/1/citizens", app.base),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"][0]["citizen_id"], 7);
    assert_eq!(body["data"][0]["birth_date"], "31.01.2000");
    let health = health_becomes(&client, &app.base, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(health["error"]["code"], "insufficient_storage", "{health}");

    // Room again: writable, and the reserve is back for the next time.
    disk.free();
    health_becomes(&client, &app.base, StatusCode::OK).await;
    let (status, body) = send(
        &client,
        reqwest::Method::POST,
        format!("{}/imports", app.base),
        Some(json!({ "citizens": spec_example() })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        std::fs::metadata(&reserve).map(|m| m.len()).ok(),
        Some(1 << 20),
        "the reserve is restored"
    );
}
