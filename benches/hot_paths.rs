//! Criterion micro-benchmarks of the hot paths, on a 10,000-citizen import
//! with 1,000 links (the supplier's promised maximum):
//! parse + validate, birthdays, percentiles, and serialising the citizens;
//! then the incremental aggregates: building them, moving them over one
//! PATCH of relatives, and answering from them; the citizens listing
//! rendered whole and spliced after that PATCH; and the analytics kept in
//! the stored summary's shape beside `domain::analytics` (`one_model.rs`).
//!
//! ```sh
//! cargo bench --bench hot_paths
//! ```

use std::hint::black_box;

#[path = "hot_paths/one_model.rs"]
mod one_model;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gifts::domain::analytics::Analytics;
use gifts::domain::patch::after_patch;
use gifts::domain::{stats, today_utc};
use gifts::http::wire::{self, ImportBody, Object};
use gifts::reads::listing;

fn hot_paths(c: &mut Criterion) {
    let body = gifts::sample::import_body(10_000, 1_000, 1);
    let today = today_utc();
    let citizens = wire::parse::<Object<ImportBody>>(&body)
        .expect("valid")
        .0
        .into_citizens(today)
        .expect("valid");

    let mut group = c.benchmark_group("10k_citizens");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("parse_and_validate_import", |b| {
        b.iter(|| {
            wire::parse::<Object<ImportBody>>(black_box(&body))
                .expect("valid")
                .0
                .into_citizens(today)
                .expect("valid")
        });
    });
    group.throughput(Throughput::Elements(citizens.len() as u64));
    group.bench_function("birthdays", |b| {
        b.iter(|| stats::birthdays(black_box(&citizens)));
    });
    group.bench_function("percentiles", |b| {
        b.iter(|| stats::town_percentiles(black_box(&citizens), today));
    });
    group.bench_function("serialise_citizens_json", |b| {
        b.iter(|| serde_json::to_vec(black_box(&citizens)).expect("serialises"));
    });

    let mut sorted: Vec<_> = citizens.iter().cloned().map(std::sync::Arc::new).collect();
    sorted.sort_by_key(|c| c.citizen_id);
    group.bench_function("analytics_build", |b| {
        b.iter(|| Analytics::new(black_box(&sorted)));
    });
    let mut analytics = Analytics::new(&sorted);
    // The benchmark's PATCH of relatives: citizen 0 takes two others.
    let before = std::sync::Arc::clone(&sorted[0]);
    let mut now = gifts::domain::Citizen::clone(&before);
    now.relatives = vec![sorted[1].citizen_id, sorted[2].citizen_id];
    let after = after_patch(&sorted, &now).expect("in the import");
    group.bench_function("analytics_apply_patch", |b| {
        b.iter(|| {
            analytics
                .apply(black_box(&after), &before, &now)
                .expect("applies");
        });
    });
    group.bench_function("birthdays_from_analytics", |b| {
        b.iter(|| analytics.birthdays(black_box(&after)));
    });
    group.bench_function("percentiles_from_analytics", |b| {
        b.iter(|| analytics.percentiles(black_box(today)));
    });
    // GET citizens after that PATCH: the previous body with the citizen
    // and its relatives before and after rendered again.
    let previous = listing::render(&sorted).expect("renders");
    let mut changed: Vec<usize> = std::iter::once(&before.relatives)
        .chain([&now.relatives])
        .flatten()
        .chain([&now.citizen_id])
        .filter_map(|id| after.binary_search_by_key(id, |c| c.citizen_id).ok())
        .collect();
    changed.sort_unstable();
    changed.dedup();
    group.bench_function("listing_render_whole", |b| {
        b.iter(|| listing::render(black_box(&after)).expect("renders"));
    });
    group.bench_function("listing_splice_after_patch", |b| {
        b.iter(|| {
            listing::splice(
                &previous.body,
                &previous.starts,
                black_box(&after),
                &changed,
            )
            .expect("renders")
        });
    });
    group.finish();

    let mut group = c.benchmark_group("one_model_10k");
    one_model::compare(&mut group, &sorted, today);
    group.finish();
}

criterion_group!(benches, hot_paths);
criterion_main!(benches);
