//! `--cache-bytes` is the budget of everything cached: reading many imports
//! raises the peak RSS by at most the budget (+25 % for what the weights
//! cannot see), measured against the same workload with the cache off.

use crate::helpers::{Binary, generate_import};

/// Peak RSS (KiB) of the real binary while it reads each view of `imports`
/// imports of `citizens`, with `cache` bytes. The peak is reset after
/// the imports are stored, so only the reads (and what they cache) count:
/// the imports' own transient memory varies from run to run by more than a
/// small budget.
async fn peak_after_reading(imports: i64, citizens: u64, cache: u64) -> u64 {
    // One reader thread, so SQLite's page cache fills the same way in both
    // runs; the allocator returns freed memory at once, so the peaks compare
    // what is held, not when the allocator got round to purging.
    let mut app = Binary::start(
        &["--cache-bytes", &cache.to_string(), "--sqlite-readers", "1"],
        &[("MIMALLOC_PURGE_DELAY", "0")],
        None,
    );
    app.wait_healthy().await;
    let client = reqwest::Client::new();
    let body =
        serde_json::json!({ "citizens": generate_import(citizens, usize::try_from(citizens / 10).unwrap(), 3) })
            .to_string();
    for _ in 0..imports {
        let response = client
            .post(format!("{}/imports", app.base))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    app.reset_peak_rss();
    {
        for import in 1..=imports {
            for view in [
                "citizens",
                "citizens/birthdays",
                "towns/stat/percentile/age",
            ] {
                let response = client
                    .get(format!("{}/imports/{import}/{view}", app.base))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                response.bytes().await.unwrap();
            }
        }
    }
    app.peak_rss_kib()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_many_imports_stays_within_the_cache_budget() {
    // 10 imports of 10,000 citizens want about 55 MiB of cache; the budget is 20 MiB.
    let budget: u64 = 20 << 20;
    // Two runs each, averaged: one run's peak moves by a few MiB with when
    // the allocator returns memory.
    let without = u64::midpoint(
        peak_after_reading(10, 10_000, 0).await,
        peak_after_reading(10, 10_000, 0).await,
    );
    let with = u64::midpoint(
        peak_after_reading(10, 10_000, budget).await,
        peak_after_reading(10, 10_000, budget).await,
    );
    let allowed = without + budget / 1024 * 5 / 4;
    eprintln!(
        "peak RSS: {without} KiB without the cache, {with} KiB with {budget} bytes (allowed {allowed} KiB)"
    );
    assert!(
        with <= allowed,
        "peak RSS {with} KiB with the cache, {without} KiB without: more than the budget + 25 %"
    );
}
