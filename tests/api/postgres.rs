//! What only the PostgreSQL backend has: schema migrations shared by
//! instances, the user and password it is given, statements over their
//! time, and a `COMMIT` whose answer never comes.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use gifts::config::{Config, StorageUrl};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    Backend, Binary, Fault, FaultProxy, KillOnDrop, TestApp, TestStore, get_json,
    postgres_available, spec_example,
};
use crate::support::{
    POSTGRES_PASSWORD, find_postgres_bin, find_postgres_bin_in, poll, postgres_bin, psql_query,
};

/// The store's database URL with another password or port.
fn url(store: &TestStore, password: &str, port: Option<u16>) -> String {
    let flag = store.flag();
    let flag = flag.replace(&format!(":{POSTGRES_PASSWORD}@"), &format!(":{password}@"));
    match port {
        Some(port) => {
            let (head, tail) = flag.rsplit_once(':').expect("a port");
            let path = &tail[tail.find('/').expect("a database")..];
            format!("{head}:{port}{path}")
        }
        None => flag,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_together_migrate_the_schema_once() {
    if !postgres_available("migrate_once") {
        return;
    }
    let store = Arc::new(TestStore::new(Backend::Postgres));
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let config = Config::with_storage(store.url().clone());
                TestApp::start(store, config).await
            })
        })
        .collect();
    let mut apps = Vec::new();
    for start in starts {
        apps.push(start.await.expect("every instance starts"));
    }
    let import = apps[0].import(spec_example()).await;
    for app in &apps {
        assert_eq!(app.citizens(import).await, spec_example());
    }
    for app in apps {
        app.stop().await;
    }
    let found = psql_query(
        &postgres_bin().unwrap(),
        &store.flag(),
        "SELECT schema_version, (SELECT count(*) FROM pg_tables
             WHERE tablename IN ('imports', 'citizens', 'idempotency_keys', 'presents', 'town_dates'))
         FROM gifts_meta",
    );
    assert_eq!(found.trim(), "5|5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_newer_than_the_build_is_refused_at_start_naming_both_versions() {
    if !postgres_available("newer_schema") {
        return;
    }
    let store = Arc::new(TestStore::new(Backend::Postgres));
    TestApp::start(
        Arc::clone(&store),
        Config::with_storage(store.url().clone()),
    )
    .await
    .stop()
    .await;
    store.edit_offline("UPDATE gifts_meta SET schema_version = 99", "");
    let (code, log) = Binary::start(&["--storage", &store.flag()], &[], None).wait_exit();
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("schema is version 99"), "{log}");
    assert!(log.contains("this build of gifts knows (5)"), "{log}");
    assert!(
        !log.contains(POSTGRES_PASSWORD),
        "no password in the log: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_postgres_password_is_one_clear_error_and_health_says_which() {
    if !postgres_available("wrong_password") {
        return;
    }
    let store = TestStore::new(Backend::Postgres);
    let wrong = url(&store, "wrong-secret", None);
    let mut app = Binary::start(&["--storage", &wrong], &[], None);
    app.wait_for_log("postgresql refuses the service").await;
    // Every answer is 503; it names the cause unless the check outlasted
    // the probe's one-second bound on a busy machine (then a later one does).
    let mut named = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while named < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "/health never named the cause"
        );
        let (status, body) = get_json(&app.base, "/health").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"]["code"], "storage_unavailable");
        let message = body["error"]["message"].as_str().unwrap();
        if message.contains("misconfigured") {
            assert!(
                message.contains("password authentication failed"),
                "{message}"
            );
            named += 1;
        } else {
            assert!(message.contains("did not answer"), "{message}");
        }
    }
    let log = app.log();
    assert_eq!(
        log.matches("postgresql refuses the service").count(),
        1,
        "{log}"
    );
    assert!(
        !log.contains("wrong-secret"),
        "no password in the log: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_postgres_at_start_is_reported_then_followed_when_it_comes() {
    if !postgres_available("unreachable_at_start") {
        return;
    }
    let store = TestStore::new(Backend::Postgres);
    store.kill_server();
    let mut app = Binary::start(&["--storage", &store.flag()], &[], None);
    app.wait_for_log("postgresql is not reachable yet").await;
    let (status, body) = get_json(&app.base, "/health").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "storage_unavailable");
    store.start_server();
    app.wait_healthy().await;
    app.wait_for_log("postgresql schema migrated").await;
}

/// A lock held elsewhere keeps a PATCH waiting past its time: the server
/// cancels the statement (`statement_timeout`), the client gets 503 — the
/// transaction was rolled back, nothing applied — and once the lock is
/// gone the same PATCH succeeds, applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_over_its_time_is_cancelled_with_503_and_nothing_applied() {
    if !postgres_available("statement_timeout") {
        return;
    }
    let app = TestApp::spawn_with(Backend::Postgres, |c| c.postgres_timeout_secs = 1).await;
    let import = app.import(spec_example()).await;
    let bin = postgres_bin().unwrap();
    let _holder = KillOnDrop(
        Command::new(bin.join("psql"))
            .args(["-X", "-q", "-d", &app.store.flag(), "-c"])
            .arg("BEGIN; LOCK TABLE imports IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60);")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let store = Arc::clone(&app.store);
    poll(Duration::from_secs(10), || async {
        let held = psql_query(
            &bin,
            &store.flag(),
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
             WHERE c.relname = 'imports' AND l.mode = 'AccessExclusiveLock' AND l.granted",
        );
        if held.trim() == "1" {
            Ok(())
        } else {
            Err(held)
        }
    })
    .await
    .expect("the lock is held");

    let (status, body) = app.patch(import, 1, &json!({"name": "Ждал"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "storage_unavailable");

    psql_query(
        &bin,
        &app.store.flag(),
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()",
    );
    let (status, body) = app.patch(import, 2, &json!({"name": "Дождался"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed = app.citizens(import).await;
    assert_eq!(
        listed[0],
        spec_example()[0],
        "the cancelled PATCH left nothing"
    );
    assert_eq!(listed[1]["name"], "Дождался");
}

/// A `COMMIT` sent and never answered: the import may be stored, so the
/// answer is 504 `storage_timeout`, not 503; it was in fact stored, and the
/// retry with the same idempotency key gets that import, not a second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_gets_no_answer_is_504_and_the_retry_with_its_key_finds_the_import() {
    if !postgres_available("commit_unanswered") {
        return;
    }
    let store = Arc::new(TestStore::new(Backend::Postgres));
    let StorageUrl::Postgres(address) = store.url() else {
        unreachable!()
    };
    let port = match address.config().get_ports() {
        [port] => *port,
        ports => panic!("one port: {ports:?}"),
    };
    // The simple-protocol query message tokio-postgres sends to commit.
    let proxy = FaultProxy::with_trigger(
        format!("127.0.0.1:{port}"),
        Fault::None,
        b"Q\0\0\0\x0bCOMMIT\0",
    )
    .await;
    let mut config = Config::with_storage(url_with_hosts(&store, &[proxy.addr]).parse().unwrap());
    config.postgres_timeout_secs = 1;
    let app = TestApp::launch(Arc::clone(&store), config).await;
    let first = app.import(vec![]).await;
    let body = json!({ "citizens": spec_example() }).to_string();
    let post = || {
        app.client
            .post(app.url("/imports"))
            .header("Idempotency-Key", "commit-unanswered")
            .body(body.clone())
            .send()
    };

    proxy.set(Fault::Swallow);
    let response = post().await.unwrap();
    proxy.set(Fault::None);
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    let error: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(error["error"]["code"], "storage_timeout", "{error}");

    let response = post().await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let stored: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(
        stored["data"]["import_id"],
        first + 1,
        "the unanswered import"
    );
    assert_eq!(app.citizens(first + 1).await, spec_example());
    assert_eq!(app.import(vec![]).await, first + 2, "stored once");
}

/// The URL of `store` with these hosts, in this order.
fn url_with_hosts(store: &TestStore, hosts: &[std::net::SocketAddr]) -> String {
    let flag = store.flag();
    let (head, tail) = flag.rsplit_once(':').expect("a port");
    let user = head.rsplit_once('@').expect("a host").0;
    let path = &tail[tail.find('/').expect("a database")..];
    let hosts: Vec<String> = hosts.iter().map(ToString::to_string).collect();
    format!("{user}@{}{path}", hosts.join(","))
}

/// The port of the store's PostgreSQL.
fn store_port(store: &TestStore) -> u16 {
    let StorageUrl::Postgres(address) = store.url() else {
        unreachable!()
    };
    match address.config().get_ports() {
        [port] => *port,
        ports => panic!("one port: {ports:?}"),
    }
}

/// A host that accepts TCP and never answers (a stalled server), first in
/// the URL: each new connection gives it one bounded attempt at most, and
/// once passed over it is tried last — the service works through the next
/// host instead of waiting on the first until the pool gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_host_first_in_the_url_is_passed_over_and_then_tried_last() {
    if !postgres_available("stalled_host_first") {
        return;
    }
    let store = Arc::new(TestStore::new(Backend::Postgres));
    let hole = FaultProxy::start(format!("127.0.0.1:{}", store_port(&store)), Fault::Stall).await;
    let config = Config::with_storage(
        url_with_hosts(
            &store,
            &[hole.addr, ([127, 0, 0, 1], store_port(&store)).into()],
        )
        .parse()
        .unwrap(),
    );
    let app = TestApp::launch(Arc::clone(&store), config).await;
    let id = app.import(spec_example()).await;
    assert_eq!(app.citizens(id).await, spec_example());
    let tried = hole.accepted();
    assert!(tried >= 1, "the first host was tried first");
    // Many requests at once: the pool opens more connections, none of
    // them to the stalled host.
    let reads: Vec<_> = (0..16)
        .map(|_| {
            let read = app
                .client
                .get(app.url(&format!("/imports/{id}/citizens")))
                .send();
            tokio::spawn(read)
        })
        .collect();
    for read in reads {
        assert_eq!(read.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(hole.accepted(), tried, "a stalled host is tried last");
}

/// The host in use stalls mid-way (every pooled connection to it hangs):
/// the fence of a read fails within its bound, the host is left (its
/// connections never handed out again), and requests go through the other
/// host; what was answered meanwhile is 503, never a hang past the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_stalls_in_use_is_left_for_the_next_one() {
    if !postgres_available("stalls_in_use") {
        return;
    }
    let store = Arc::new(TestStore::new(Backend::Postgres));
    let port = store_port(&store);
    let first = FaultProxy::start(format!("127.0.0.1:{port}"), Fault::None).await;
    let second = FaultProxy::start(format!("127.0.0.1:{port}"), Fault::None).await;
    let mut config = Config::with_storage(
        url_with_hosts(&store, &[first.addr, second.addr])
            .parse()
            .unwrap(),
    );
    config.postgres_timeout_secs = 5;
    let app = TestApp::launch(Arc::clone(&store), config).await;
    let id = app.import(spec_example()).await;
    assert_eq!(app.citizens(id).await, spec_example());
    assert_eq!(second.accepted(), 0, "the first host serves");

    first.set(Fault::Stall);
    let statuses = poll(Duration::from_secs(60), || async {
        let response = app
            .client
            .get(app.url(&format!("/imports/{id}/citizens")))
            .send()
            .await
            .unwrap();
        match response.status() {
            StatusCode::OK => Ok(()),
            StatusCode::SERVICE_UNAVAILABLE => Err(503),
            other => panic!("only 503 while the host is left, then 200: {other}"),
        }
    })
    .await;
    assert_eq!(statuses, Ok(()), "reads come back through the second host");
    assert!(second.accepted() >= 1);
    // Writes too, and what they wrote is read back.
    let next = app.import(spec_example()).await;
    assert_eq!(next, id + 1);
    assert_eq!(app.citizens(next).await, spec_example());
}

/// A `PATH` directory early on that links some of PostgreSQL's programs
/// (`initdb`, `postgres`, `pg_ctl`) but not `psql`, as one machine image
/// does: the tests follow the links to the directory that has them all.
#[test]
fn postgres_programs_are_found_through_a_directory_of_symlinks() {
    if !postgres_available("programs_through_symlinks") {
        return;
    }
    let real = find_postgres_bin().unwrap();
    let links = tempfile::tempdir().unwrap();
    for tool in ["initdb", "postgres", "pg_ctl"] {
        std::os::unix::fs::symlink(real.join(tool), links.path().join(tool)).unwrap();
    }
    let path = std::env::join_paths([links.path(), Path::new("/usr/bin")]).unwrap();
    let found = find_postgres_bin_in(&path).unwrap();
    assert_eq!(
        std::fs::canonicalize(found).unwrap(),
        std::fs::canonicalize(&real).unwrap()
    );
    // A directory with some of them and nothing to follow is passed over
    // (for Debian's), or named with what it lacks when nothing has them all.
    let partial = tempfile::tempdir().unwrap();
    std::fs::write(partial.path().join("initdb"), "").unwrap();
    match find_postgres_bin_in(partial.path().as_os_str()) {
        Ok(found) => assert_ne!(found, partial.path(), "a directory with initdb alone"),
        Err(why) => assert!(
            why.contains(&format!(
                "{} lacks postgres, pg_ctl, psql",
                partial.path().display()
            )),
            "{why}"
        ),
    }
}

/// The probes answer within their bound whatever the store does: with the
/// database stalled, `/health` and `/readyz` say 503 in about a second,
/// long before a request's storage budget (10 s) runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_quickly_while_the_database_stalls() {
    if !postgres_available("probes_while_stalled") {
        return;
    }
    let store = Arc::new(TestStore::new(Backend::Postgres));
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", store_port(&store)), Fault::None).await;
    let config = Config::with_storage(url_with_hosts(&store, &[proxy.addr]).parse().unwrap());
    let app = TestApp::launch(Arc::clone(&store), config).await;
    let (status, _) = app.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    proxy.set(Fault::Stall);
    let prober = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for probe in ["/health", "/readyz"] {
        let response = prober
            .get(app.url(probe))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{probe} did not answer within 5 s: {e}"));
        assert_eq!(
            response.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{probe}"
        );
        let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("did not answer"),
            "{probe}: {body}"
        );
    }
}

/// Migration 5: towns stored before their picks (`summary::picked`) get
/// them at the upgrade, from their dates; percentiles read with nothing
/// cached answer exactly, before and after PATCHes that move births, and
/// the dates are stored uncompressed from then on. Dates written without
/// picks, as an older build still running would write them, clear the
/// picks, and reads take the dates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn towns_stored_before_their_picks_get_them_at_the_upgrade() {
    if !postgres_available("picks_before_upgrade") {
        return;
    }
    let app = TestApp::spawn(Backend::Postgres).await;
    let import = app
        .import(crate::helpers::generate_import(300, 200, 5))
        .await;
    let store = app.stop().await;
    store.edit_offline(
        "DROP TRIGGER picks_follow_dates ON town_dates;
         DROP FUNCTION gifts_picks_follow_dates();
         ALTER TABLE town_dates DROP COLUMN picks, DROP COLUMN picks_stamp,
             ALTER COLUMN dates SET STORAGE EXTENDED;
         UPDATE gifts_meta SET schema_version = 4;",
        "",
    );
    let mut config = Config::with_storage(store.url().clone());
    config.cache_bytes = gifts::config::ByteSize(0);
    let app = TestApp::start(store, config).await;
    crate::analytics::assert_answers_exact(&app, import).await;
    for (citizen, body) in [
        (1, json!({"birth_date": "29.02.2000"})),
        (
            2,
            json!({"town": "Новый город", "birth_date": "01.01.1950"}),
        ),
        (3, json!({"town": "Новый город"})),
    ] {
        let (status, answer) = app.patch(import, citizen, &body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        crate::analytics::assert_answers_exact(&app, import).await;
    }
    let bin = postgres_bin().unwrap();
    let storage = psql_query(
        &bin,
        &app.store.flag(),
        "SELECT attstorage::text || ' ' || attnotnull::text FROM pg_attribute
         WHERE attrelid = 'town_dates'::regclass AND attname IN ('dates', 'picks')
         ORDER BY attname",
    );
    assert_eq!(storage.trim(), "e true\nx false", "dates, picks");
    // Town 0 given town 1's picks as its dates, by an "older build".
    let before = app.percentiles(import).await;
    let towns = before.as_array().unwrap();
    let ages = |town: &Value| {
        (
            town["p50"].clone(),
            town["p75"].clone(),
            town["p99"].clone(),
        )
    };
    assert_ne!(ages(&towns[0]), ages(&towns[1]), "{before}");
    psql_query(
        &bin,
        &app.store.flag(),
        &format!(
            "UPDATE town_dates SET dates = (SELECT picks FROM town_dates
                 WHERE import_id = {import} AND town = '{}')
             WHERE import_id = {import} AND town = '{}'",
            towns[1]["town"].as_str().unwrap(),
            towns[0]["town"].as_str().unwrap()
        ),
    );
    let after = app.percentiles(import).await;
    assert_eq!(ages(&after[0]), ages(&towns[1]), "{after}");
    assert_eq!(after[1], towns[1], "{after}");
}

/// Migration 3: a U+10FFFF stored raw by an older build (before strings
/// were escaped) is escaped at the upgrade, so it reads back as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escape_character_stored_before_the_upgrade_reads_back_as_sent() {
    if !postgres_available("escape_before_upgrade") {
        return;
    }
    let app = TestApp::spawn(Backend::Postgres).await;
    let citizens = vec![
        crate::helpers::citizen_with(
            1,
            &[],
            json!({"name": "a\u{10FFFF}b", "town": "Т\u{10FFFF}"}),
        ),
        crate::helpers::citizen_with(2, &[], json!({"name": "plain"})),
    ];
    let import = app.import(citizens.clone()).await;
    let store = app.stop().await;
    // As an older build stored them: raw, schema version 2.
    store.edit_offline(
        r"UPDATE citizens SET name = replace(name, U&'\+10FFFFe', U&'\+10FFFF'),
                              town = replace(town, U&'\+10FFFFe', U&'\+10FFFF');
          UPDATE town_dates SET town = replace(town, U&'\+10FFFFe', U&'\+10FFFF');
          ALTER TABLE imports DROP COLUMN name, DROP COLUMN digest;
          DROP TRIGGER picks_follow_dates ON town_dates;
          DROP FUNCTION gifts_picks_follow_dates();
          ALTER TABLE town_dates DROP COLUMN picks, DROP COLUMN picks_stamp;
          UPDATE gifts_meta SET schema_version = 2;",
        "",
    );
    let mut config = Config::with_storage(store.url().clone());
    config.cache_bytes = gifts::config::ByteSize(0);
    let app = TestApp::start(store, config).await;
    assert_eq!(
        app.citizens(import).await,
        crate::helpers::expected_listing(&citizens)
    );
    let (status, towns) = app
        .get(&format!("/imports/{import}/towns/stat/percentile/age"))
        .await;
    assert_eq!(status, StatusCode::OK, "{towns}");
    assert_eq!(towns["data"][1]["town"], "Т\u{10FFFF}", "{towns}");
}

/// PATCHes queued together commit in one transaction (one WAL flush); each
/// gets its own answer and a refused one writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_patches_commit_together_and_each_gets_its_answer() {
    if !postgres_available("patches_together") {
        return;
    }
    let app = Arc::new(TestApp::spawn(Backend::Postgres).await);
    crate::patch::patches_share_a_commit(app, "gifts_postgres_patch_batch_size", None).await;
}

/// A PATCH the server fails on in a shared commit (here a trigger raises
/// for one name) is taken back to its savepoint and answers 500 alone; the
/// others in the commit stand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_the_server_fails_in_a_shared_commit_is_taken_back_alone() {
    if !postgres_available("failed_patch_alone") {
        return;
    }
    let store = TestApp::spawn(Backend::Postgres).await.stop().await;
    store.edit_offline(
        "CREATE FUNCTION gifts_test_fault() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.name = 'Сбой' THEN RAISE EXCEPTION 'a fault for the test'; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER gifts_test_fault BEFORE UPDATE ON citizens
             FOR EACH ROW EXECUTE FUNCTION gifts_test_fault();",
        "",
    );
    let config = Config::with_storage(store.url().clone());
    let app = Arc::new(TestApp::start(store, config).await);
    crate::patch::patches_share_a_commit(app, "gifts_postgres_patch_batch_size", Some("Сбой"))
        .await;
}

/// Every statement of a PATCH is planned once per connection, not at each
/// call, and reads a handful of pages whatever the import's size, before
/// PostgreSQL has any statistics for it (autovacuum is off for the tables,
/// so no `ANALYZE` runs): a PATCH of relatives, town and birth date
/// (`planned.rs`) and one of a name alone (`own_rows.rs`).
/// `pg_stat_statements` counts plans, calls and pages. The build before
/// `writes::WRITE_PLANS` planned every call (a custom plan: the generic
/// one's estimate for an array parameter never wins), and the plans it chose
/// for its presents change at times scanned the whole import.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_is_planned_once_per_connection_and_reads_a_handful_of_pages() {
    if !postgres_available("patch_plans") {
        return;
    }
    let app = TestApp::spawn_with(Backend::Postgres, |config| {
        config.cache_bytes = gifts::config::ByteSize(0);
    })
    .await;
    let store = Arc::clone(&app.store);
    // ALTER SYSTEM runs alone, outside a transaction: one statement a
    // call; the module's setting once the module is loaded. The app is up:
    // `sql_rows`, not `edit_offline`.
    store.sql_rows("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'");
    store.kill_server();
    store.start_server();
    crate::servers::wait_for(&app, "/health", StatusCode::OK).await;
    store.sql_rows("ALTER SYSTEM SET pg_stat_statements.track_planning = on");
    store.sql_rows("SELECT pg_reload_conf()");
    store.sql_rows(
        "CREATE EXTENSION pg_stat_statements;
         ALTER TABLE citizens SET (autovacuum_enabled = false);
         ALTER TABLE presents SET (autovacuum_enabled = false);
         ALTER TABLE town_dates SET (autovacuum_enabled = false);",
    );
    let n = 30_000;
    let import = app
        .import(crate::helpers::generate_import(n, 3_000, 5))
        .await;
    // A sorted page with nothing cached reads its citizens 16 at a time, on
    // 16 more connections: the PATCHes after it must still keep to the
    // connections used last (LIFO), each planning its statements once,
    // rather than go round all of them (FIFO planned every statement on
    // each of the 17).
    let (status, answer) = app
        .get(&format!("/imports/{import}/citizens?sort=name&limit=50"))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let connections: u64 = store
        .sql_rows("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'gifts'")
        .trim()
        .parse()
        .expect("a count");
    assert!(
        connections >= 12,
        "the sorted page opened {connections} connections, not the 16 this test needs"
    );
    store.sql_rows("SELECT pg_stat_statements_reset()");
    let patches = 60;
    let mut rng = gifts::sample::Rng::new(3);
    for step in 0..patches {
        let who = rng.below(n);
        let mut relatives = vec![rng.below(n), rng.below(n)];
        relatives.retain(|&r| r != who);
        relatives.sort_unstable();
        relatives.dedup();
        let mut body = json!({ "relatives": relatives });
        if step % 4 == 1 {
            // A PATCH of its own row alone: `own_rows.rs`.
            body = json!({ "name": format!("Имя {step}") });
        } else if step % 4 == 0 {
            body["town"] = json!(format!("Город {step}"));
            body["birth_date"] = json!("29.02.2000");
        }
        let (status, answer) = app.patch(import, who, &body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let rows = store.sql_rows(&format!(
        "SELECT calls, plans, (shared_blks_hit + shared_blks_read) / calls,
                regexp_replace(left(query, 60), '\\s+', ' ', 'g')
         FROM pg_stat_statements WHERE calls >= {} AND plans > 0",
        patches / 4
    ));
    let statements: Vec<(u64, u64, u64, &str)> = rows
        .lines()
        .filter_map(|line| {
            let mut cells = line.splitn(4, '|');
            Some((
                cells.next()?.parse().ok()?,
                cells.next()?.parse().ok()?,
                cells.next()?.parse().ok()?,
                cells.next()?,
            ))
        })
        .collect();
    // The lock, the reads (citizens, months, towns), the writes (the
    // relatives' and the own row's).
    assert!(
        statements.len() >= 6,
        "the PATCHes' statements were not counted:\n{rows}"
    );
    for (calls, plans, pages, query) in &statements {
        assert!(
            plans * 4 <= *calls,
            "planned {plans} times in {calls} calls: {query}\n{rows}"
        );
        assert!(
            *pages <= 100,
            "{pages} pages a call in an import of {n}: {query}\n{rows}"
        );
    }
}

/// A counter of `GET /metrics`, 0 when not shown yet.
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// A PATCH is planned from the import's copy held in memory, with no read,
/// only while the database is still at the copy's version: one that
/// another instance's write overtook writes nothing and is read again.
/// Planned from the stale copy, instance a's PATCH would leave 2 listing 1
/// (b's write, which a's copy does not know) while 1 no longer lists 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_planned_from_a_stale_copy_writes_nothing_and_is_read_again() {
    if !postgres_available("stale_copy") {
        return;
    }
    let store = Arc::new(TestStore::new(Backend::Postgres));
    let config = || Config::with_storage(store.url().clone());
    let a = TestApp::start(Arc::clone(&store), config()).await;
    let b = TestApp::start(Arc::clone(&store), config()).await;
    let people: Vec<Value> = (1..=4).map(|id| crate::helpers::citizen(id, &[])).collect();
    let import = a.import(people).await;
    let from_copies = "gifts_postgres_patch_batches_from_copies_total";
    let stale = "gifts_postgres_patch_batches_stale_copies_total";

    // a holds the import; a PATCH through a is planned from that copy.
    a.citizens(import).await;
    let (status, body) = a.patch(import, 3, &json!({ "relatives": [4] })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let metrics = a.metrics().await;
    assert_eq!(
        (counter(&metrics, from_copies), counter(&metrics, stale)),
        (1, 0)
    );

    // b writes; a's copy (moved by its own PATCH) is now behind.
    let (status, body) = b.patch(import, 1, &json!({ "relatives": [2] })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = a.patch(import, 1, &json!({ "relatives": [3] })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["relatives"], json!([3]));
    let metrics = a.metrics().await;
    assert_eq!(
        (counter(&metrics, from_copies), counter(&metrics, stale)),
        (1, 1),
        "a's second PATCH was planned from its copy, found stale, and read"
    );
    let relatives: Vec<Value> = b
        .citizens(import)
        .await
        .iter()
        .map(|c| c["relatives"].clone())
        .collect();
    assert_eq!(
        relatives,
        [json!([3]), json!([]), json!([1, 4]), json!([3])],
        "the relation as the database holds it"
    );
    assert_eq!(a.citizens(import).await, b.citizens(import).await);
}
