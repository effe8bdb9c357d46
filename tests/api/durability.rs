//! What must survive: restarts, `kill -9`, and big imports round-tripping intact.

use reqwest::StatusCode;
use serde_json::json;

use crate::backend_tests;
use crate::helpers::{
    Backend, Binary, TestApp, TestStore, expected_listing, generate_import, spec_example,
};

async fn data_survives_a_restart_and_import_ids_are_not_reused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let first = app.import(spec_example()).await;
    app.patch(first, 3, &json!({"relatives": [1]})).await;
    let before = app.citizens(first).await;

    let app = app.restart().await;
    assert_eq!(app.citizens(first).await, before);
    let second = app.import(vec![]).await;
    assert!(second > first, "{second} after {first}");
}

/// The real binary over `store`, healthy.
async fn start(store: &TestStore) -> Binary {
    let mut process = Binary::start(&["--storage", &store.flag()], &[], None);
    process.wait_healthy().await;
    process
}

async fn acknowledged_writes_survive_kill_9(backend: Backend) {
    let store = TestStore::new(backend);
    let client = reqwest::Client::new();

    let mut process = start(&store).await;
    let response = client
        .post(format!("{}/imports", process.base))
        .body(json!({ "citizens": spec_example() }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = client
        .patch(format!("{}/imports/1/citizens/3", process.base))
        .body(json!({"relatives": [1], "name": "После"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let acknowledged: serde_json::Value =
        serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    process.kill();

    let process = start(&store).await;
    let response = client
        .get(format!("{}/imports/1/citizens", process.base))
        .send()
        .await
        .unwrap();
    let listing: serde_json::Value =
        serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(listing["data"][2], acknowledged["data"]);
    assert_eq!(listing["data"][0]["relatives"], json!([2, 3]));
}

async fn ten_thousand_citizens_with_a_thousand_links_round_trip_intact(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let citizens = generate_import(10_000, 1_000, 42);
    let import = app.import(citizens.clone()).await;
    let listing = app.citizens(import).await;
    assert_eq!(listing.len(), 10_000);
    assert_eq!(listing, expected_listing(&citizens));
    let links: usize = listing
        .iter()
        .map(|c| c["relatives"].as_array().unwrap().len())
        .sum();
    assert_eq!(links, 2_000, "1,000 links, each listed on both sides");
    let birthdays = app.birthdays(import).await;
    let presents: u64 = (1..=12)
        .flat_map(|m| birthdays[m.to_string()].as_array().unwrap().clone())
        .map(|e| e["presents"].as_u64().unwrap())
        .sum();
    assert_eq!(presents, 2_000, "one present per listed relative");
    let towns = app.percentiles(import).await;
    let mut names: Vec<&str> = citizens
        .iter()
        .map(|c| c["town"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    names.dedup();
    let answered: Vec<&str> = towns
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["town"].as_str().unwrap())
        .collect();
    assert_eq!(answered, names, "one entry per town, ordered by name");
}

backend_tests!(
    data_survives_a_restart_and_import_ids_are_not_reused,
    acknowledged_writes_survive_kill_9,
    ten_thousand_citizens_with_a_thousand_links_round_trip_intact,
);
