//! Criterion micro-benchmarks of the hot paths, on a 10,000-citizen import
//! with 1,000 links (the supplier's promised maximum):
//! parse + validate, birthdays, percentiles, and serialising the citizens.
//!
//! ```sh
//! cargo bench --bench hot_paths
//! ```

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gifts::domain::{stats, today_utc};
use gifts::http::wire::{self, ImportBody, Object};

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
    group.finish();
}

criterion_group!(benches, hot_paths);
criterion_main!(benches);
