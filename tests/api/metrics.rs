//! `GET /metrics`: the Prometheus metrics move with the traffic.

use reqwest::StatusCode;

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, spec_example};

/// A scrape as Prometheus makes it (OpenMetrics asked for).
async fn scrape(app: &TestApp) -> String {
    let response = app
        .client
        .get(app.url("/metrics"))
        .header("accept", PROMETHEUS_ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
    );
    String::from_utf8(response.bytes().await.unwrap().to_vec()).unwrap()
}

/// The `Accept` header of Prometheus's scrapes.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// The value of the sample whose line starts with `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn the_metrics_count_requests_storage_cache_and_totals(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let name = backend.name();
    let import = app.import(spec_example()).await;
    for _ in 0..3 {
        app.citizens(import).await;
    }
    app.get("/imports/99/citizens").await;
    let text = scrape(&app).await;
    let expect = |series: &str, at_least: f64| {
        let value = sample(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"));
        assert!(value >= at_least, "{series} = {value}, wanted ≥ {at_least}");
    };
    expect(
        "gifts_http_requests_total{method=\"POST\",route=\"/imports\",status=\"201\"}",
        1.0,
    );
    expect(
        "gifts_http_requests_total{method=\"GET\",route=\"/imports/{import_id}/citizens\",status=\"200\"}",
        3.0,
    );
    expect(
        "gifts_http_requests_total{method=\"GET\",route=\"/imports/{import_id}/citizens\",status=\"404\"}",
        1.0,
    );
    expect(
        "gifts_http_request_duration_seconds_count{method=\"GET\",route=\"/imports/{import_id}/citizens\",status=\"200\"}",
        3.0,
    );
    expect(
        "gifts_http_request_duration_seconds_count{method=\"GET\",route=\"/imports/{import_id}/citizens\",status=\"404\"}",
        1.0,
    );
    // This scrape is being served.
    expect("gifts_http_requests_in_flight ", 1.0);
    expect(
        &format!(
            "gifts_storage_operation_duration_seconds_count{{backend=\"{name}\",operation=\"create_import\",outcome=\"ok\"}}"
        ),
        1.0,
    );
    expect(
        &format!(
            "gifts_storage_operation_duration_seconds_count{{backend=\"{name}\",operation=\"import_version\",outcome=\"not_found\"}}"
        ),
        1.0,
    );
    expect("gifts_cache_hits_total{kind=\"body\"}", 2.0);
    expect("gifts_cache_misses_total{kind=\"body\"}", 1.0);
    expect("gifts_cache_bytes", 1.0);
    assert_eq!(sample(&text, "gifts_imports "), Some(1.0), "{text}");
    assert_eq!(sample(&text, "gifts_citizens "), Some(3.0), "{text}");
    assert!(text.contains("gifts_build_info{version=\""), "{text}");
    // Each backend exports its own metrics and no other's.
    for other in [Backend::Sqlite, Backend::Tarantool, Backend::Postgres] {
        if other != backend {
            let prefix = format!("gifts_{}_", other.name());
            assert!(!text.contains(&prefix), "{prefix} on {name}:\n{text}");
        }
    }
    if backend == Backend::Sqlite {
        expect("gifts_sqlite_write_batch_size_count", 1.0);
        assert!(
            text.contains("gifts_sqlite_queue_depth{kind=\"write\"}"),
            "{text}"
        );
    } else if backend == Backend::Tarantool {
        assert_eq!(
            sample(&text, "gifts_tarantool_connected "),
            Some(1.0),
            "{text}"
        );
    } else {
        let pool_size = f64::from(
            u32::try_from(
                gifts::config::Config::with_storage(app.store.url().clone()).postgres_pool_size,
            )
            .unwrap(),
        );
        assert_eq!(
            sample(&text, "gifts_postgres_pool_max_connections "),
            Some(pool_size),
            "{text}"
        );
        let connections = |state: &str| {
            sample(
                &text,
                &format!("gifts_postgres_pool_connections{{state=\"{state}\"}}"),
            )
            .unwrap_or_else(|| panic!("no {state} connections in:\n{text}"))
        };
        // The requests above opened one at least; this scrape holds none.
        assert!(connections("idle") >= 1.0, "{text}");
        assert!(
            connections("idle") + connections("in_use") <= pool_size,
            "{text}"
        );
        assert_eq!(
            sample(&text, "gifts_postgres_pool_waiting "),
            Some(0.0),
            "{text}"
        );
    }
}

/// Two PATCHes in a row, no read between: the next read shows both, and
/// neither the PATCHes nor that read load the import from storage again —
/// the in-memory snapshot moved forward one version per write.
async fn reads_after_patches_come_from_the_moved_snapshot_and_show_every_patch(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let name = backend.name();
    let loads = format!(
        "gifts_storage_operation_duration_seconds_count{{backend=\"{name}\",operation=\"citizens\",outcome=\"ok\"}}"
    );
    let import = app.import(spec_example()).await;
    assert_eq!(app.citizens(import).await, spec_example());
    assert_eq!(sample(&scrape(&app).await, &loads), Some(1.0));

    for (citizen, name) in [(1, "Первый"), (2, "Второй")] {
        let (status, _) = app
            .patch(import, citizen, &serde_json::json!({ "name": name }))
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let listed = app.citizens(import).await;
    assert_eq!(listed[0]["name"], "Первый", "{listed:?}");
    assert_eq!(listed[1]["name"], "Второй", "{listed:?}");
    assert_eq!(listed[2], spec_example()[2]);
    let text = scrape(&app).await;
    assert_eq!(sample(&text, &loads), Some(1.0), "{text}");
}

backend_tests!(
    the_metrics_count_requests_storage_cache_and_totals,
    reads_after_patches_come_from_the_moved_snapshot_and_show_every_patch
);

/// Methods are the client's choice: every unknown one counts as `OTHER`, so
/// junk requests (answered 405, or 401 with tokens) add no series.
#[tokio::test]
async fn unknown_methods_share_one_label_and_add_no_series() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let before = scrape(&app).await.lines().count();
    for n in 0..50 {
        let method = reqwest::Method::from_bytes(format!("JUNK{n}").as_bytes()).unwrap();
        let response = app
            .client
            .request(method, app.url("/imports"))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_client_error());
    }
    let after = scrape(&app).await;
    assert!(!after.contains("JUNK"), "{after}");
    let other = after
        .lines()
        .filter(|l| l.starts_with("gifts_http_requests_total{method=\"OTHER\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum::<u64>();
    assert_eq!(other, 50, "{after}");
    // A few series more (OTHER's counter and histogram, /metrics itself), not fifty.
    assert!(after.lines().count() < before + 40, "{after}");
}

/// Without OpenMetrics asked for, `/metrics` answers the classic text
/// format: each counter's family named with its `_total`, no `# EOF` or
/// `# UNIT`, the same samples; and the process's own metrics come with
/// both, with values that fit this process.
#[tokio::test]
async fn the_classic_text_format_unless_openmetrics_is_asked_for_and_the_process_metrics() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    app.import(spec_example()).await;
    let openmetrics = scrape(&app).await;
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let classic = response.text().await.unwrap();
    assert!(openmetrics.contains("# EOF"), "{openmetrics}");
    assert!(
        !classic.contains("# EOF") && !classic.contains("# UNIT"),
        "{classic}"
    );
    for text in [&openmetrics, &classic] {
        for series in [
            "gifts_http_requests_total{method=\"POST\",route=\"/imports\",status=\"201\"} 1",
            "process_open_fds ",
            "process_resident_memory_bytes ",
            "process_cpu_seconds_total ",
        ] {
            assert!(text.contains(series), "{series} in:\n{text}");
        }
    }
    // Every family the classic text types has samples under that very name.
    let mut families = 0;
    for line in classic.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("name and type");
            assert!(
                ["counter", "gauge", "histogram", "untyped"].contains(&kind),
                "{line}"
            );
            let sample = match kind {
                "histogram" => format!("{name}_count"),
                _ => name.to_owned(),
            };
            assert!(
                classic.lines().any(|l| l.starts_with(&format!("{sample} "))
                    || l.starts_with(&format!("{sample}{{"))),
                "no sample of {name} ({kind}):\n{classic}"
            );
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{line}");
            }
            families += 1;
        }
    }
    assert!(families > 10, "{classic}");
    let resident = sample(&classic, "process_resident_memory_bytes ").unwrap();
    assert!(resident > 1e6, "{resident}");
    let fds = sample(&classic, "process_open_fds ").unwrap();
    assert!(fds >= 3.0, "{fds}");
    let started = sample(&classic, "process_start_time_seconds ").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started <= now + 1.0 && started > now - 86_400.0,
        "{started} vs {now}"
    );
}
