//! The report: JSON for the record, tables for the terminal.

use std::path::Path;

use serde::Serialize;
use serde_json::json;

use super::Args;
use super::floor::Floor;
use super::measure::{Latency, Throughput};
use super::server::COLD;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct BackendReport {
    pub(crate) backend: String,
    /// Which round (from 1); in a median report, how many rounds it summarises.
    pub(crate) round: usize,
    /// The one-minute load average before and after; in a median report, the
    /// lowest and the highest of the rounds'.
    pub(crate) load_average: [f64; 2],
    pub(crate) latency: Vec<Latency>,
    pub(crate) throughput: Vec<Throughput>,
    /// None for a server the benchmark did not start.
    pub(crate) server_peak_rss_mib: Option<f64>,
    pub(crate) tarantool_peak_rss_mib: Option<f64>,
}

/// The one-minute load average of the machine (NaN where /proc has none).
pub(crate) fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| !v.is_nan());
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => f64::midpoint(values[n / 2 - 1], values[n / 2]),
    }
}

/// One report per target (in the order first seen) holding each figure's
/// median over the rounds; the reports themselves when there is one round.
pub(crate) fn medians(reports: &[BackendReport]) -> Vec<BackendReport> {
    let mut names: Vec<&str> = Vec::new();
    for report in reports {
        if !names.contains(&report.backend.as_str()) {
            names.push(&report.backend);
        }
    }
    names
        .into_iter()
        .map(|name| {
            let rounds: Vec<&BackendReport> =
                reports.iter().filter(|r| r.backend == name).collect();
            let first = rounds[0];
            if rounds.len() == 1 {
                return first.clone();
            }
            let latency = first
                .latency
                .iter()
                .map(|l| {
                    let of = |f: fn(&Latency) -> f64| {
                        median(
                            rounds
                                .iter()
                                .flat_map(|r| r.latency.iter().filter(|o| o.endpoint == l.endpoint))
                                .map(f)
                                .collect(),
                        )
                    };
                    Latency {
                        endpoint: l.endpoint.clone(),
                        runs: rounds
                            .iter()
                            .flat_map(|r| r.latency.iter().filter(|o| o.endpoint == l.endpoint))
                            .map(|o| o.runs)
                            .sum(),
                        min_ms: of(|o| o.min_ms),
                        median_ms: of(|o| o.median_ms),
                        p99_ms: of(|o| o.p99_ms),
                    }
                })
                .collect();
            let throughput = first
                .throughput
                .iter()
                .map(|t| {
                    let same = || {
                        rounds
                            .iter()
                            .flat_map(|r| r.throughput.iter().filter(|o| o.endpoint == t.endpoint))
                    };
                    let of = |f: fn(&Throughput) -> f64| median(same().map(f).collect());
                    Throughput {
                        endpoint: t.endpoint.clone(),
                        clients: t.clients,
                        seconds: same().map(|o| o.seconds).sum(),
                        requests: same().map(|o| o.requests).sum(),
                        errors: same().map(|o| o.errors).sum(),
                        per_second: of(|o| o.per_second),
                        p50_ms: of(|o| o.p50_ms),
                        p99_ms: of(|o| o.p99_ms),
                    }
                })
                .collect();
            let loads = rounds.iter().flat_map(|r| r.load_average);
            let lowest = loads
                .clone()
                .filter(|v| !v.is_nan())
                .fold(f64::NAN, f64::min);
            let highest = loads.filter(|v| !v.is_nan()).fold(f64::NAN, f64::max);
            BackendReport {
                backend: name.to_owned(),
                round: rounds.len(),
                load_average: [lowest, highest],
                latency,
                throughput,
                server_peak_rss_mib: Some(median(
                    rounds
                        .iter()
                        .filter_map(|r| r.server_peak_rss_mib)
                        .collect(),
                ))
                .filter(|rss| !rss.is_nan()),
                tarantool_peak_rss_mib: rounds
                    .iter()
                    .filter_map(|r| r.tarantool_peak_rss_mib)
                    .reduce(f64::max),
            }
        })
        .collect()
}

/// Each round's key figures beside its load average, to tell a slow
/// round from a slow target.
pub(crate) fn print_rounds(reports: &[BackendReport]) {
    let key = [
        "PATCH name",
        "PATCH relatives",
        "GET birthdays (after a write)",
    ];
    println!(
        "
## each round (load average before → after)"
    );
    print!("| target | round | load average |");
    for k in key {
        print!(" {k} p50 ms |");
    }
    println!(" PATCH name, 8 clients, req/s |");
    println!("|---|---:|---|{}---:|", "---:|".repeat(key.len()));
    for r in reports {
        print!(
            "| {} | {} | {:.2} → {:.2} |",
            r.backend, r.round, r.load_average[0], r.load_average[1]
        );
        for k in key {
            let v = r
                .latency
                .iter()
                .find(|l| l.endpoint == k)
                .map_or(f64::NAN, |l| l.median_ms);
            print!(" {v:.2} |");
        }
        let t = r
            .throughput
            .iter()
            .find(|t| t.endpoint == "PATCH name")
            .map_or(f64::NAN, |t| t.per_second);
        println!(" {t:.0} |");
    }
}

/// Writes the JSON report and says where.
pub(crate) fn write_report(out: &Path, report: &serde_json::Value) -> anyhow::Result<()> {
    std::fs::write(out, serde_json::to_vec_pretty(report)?)?;
    eprintln!("report written to {}", out.display());
    Ok(())
}

pub(crate) fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown", str::trim);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "cpus": std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        "cpu_model": model,
        "kernel": kernel.trim(),
    })
}

pub(crate) fn print_tables(args: &Args, reports: &[BackendReport], floor: &Floor) {
    println!(
        "\nimport: {} citizens, {} links, seed {}; latency with 1 client, throughput with {} clients for {} s",
        args.citizens, args.links, args.seed, args.clients, args.duration_secs
    );
    println!(
        "floor of a durable write: fdatasync {:.3} ms + loopback round trip {:.3} ms = {:.3} ms",
        floor.fsync_ms, floor.loopback_ms, floor.floor_ms
    );
    for report in reports {
        if report.round > 1 || args.rounds > 1 {
            println!(
                "\n## {} (medians of {} rounds; load average {:.2}–{:.2})",
                report.backend, report.round, report.load_average[0], report.load_average[1]
            );
        } else {
            println!(
                "\n## {} (load average {:.2} → {:.2})",
                report.backend, report.load_average[0], report.load_average[1]
            );
        }
        println!("| endpoint | runs | min ms | median ms | p99 ms |");
        println!("|---|---:|---:|---:|---:|");
        for l in &report.latency {
            println!(
                "| {} | {} | {:.2} | {:.2} | {:.2} |",
                l.endpoint, l.runs, l.min_ms, l.median_ms, l.p99_ms
            );
        }
        if let Some(patch) = report.latency.iter().find(|l| l.endpoint == "PATCH name") {
            println!(
                "\nPATCH name p50 {:.2} ms = {:.1}× the floor ({:.3} ms)",
                patch.median_ms,
                patch.median_ms / floor.floor_ms,
                floor.floor_ms
            );
        }
        if !report.throughput.is_empty() {
            println!("\n| endpoint | clients | requests/s | p50 ms | p99 ms | errors |");
            println!("|---|---:|---:|---:|---:|---:|");
            for t in &report.throughput {
                println!(
                    "| {} | {} | {:.0} | {:.2} | {:.2} | {} |",
                    t.endpoint, t.clients, t.per_second, t.p50_ms, t.p99_ms, t.errors
                );
            }
        }
        if let Some(rss) = report.server_peak_rss_mib {
            print!("\nserver peak RSS: {rss:.0} MiB");
            if let Some(rss) = report.tarantool_peak_rss_mib {
                print!("; tarantool peak RSS: {rss:.0} MiB");
            }
            println!();
        }
    }
    print_ratios(reports);
}

/// Each other backend against the embedded store of the same run (a cold
/// one, `-cold`, against the embedded store run cold, when it ran): median
/// latency and throughput as multiples (above 1: the other is slower).
pub(crate) fn print_ratios(reports: &[BackendReport]) {
    for other in reports {
        let named = |name: &str| reports.iter().find(|r| r.backend == name);
        let cold = other.backend.ends_with(COLD);
        let Some(base) = cold
            .then(|| named(&format!("sqlite{COLD}")))
            .flatten()
            .or_else(|| named("sqlite"))
            .or(reports.first())
        else {
            return;
        };
        if base.backend == other.backend {
            continue;
        }
        println!(
            "\n## {} against {} (× slower: median latency ratio; {}/{} throughput)",
            other.backend, base.backend, base.backend, other.backend
        );
        println!("| endpoint | latency × | throughput × |");
        println!("|---|---:|---:|");
        for l in &other.latency {
            let latency = base
                .latency
                .iter()
                .find(|b| b.endpoint == l.endpoint)
                .map_or(f64::NAN, |b| l.median_ms / b.median_ms);
            let throughput = other
                .throughput
                .iter()
                .find(|t| t.endpoint == l.endpoint)
                .and_then(|t| {
                    base.throughput
                        .iter()
                        .find(|b| b.endpoint == t.endpoint)
                        .map(|b| b.per_second / t.per_second)
                });
            match throughput {
                Some(t) => println!("| {} | {latency:.2} | {t:.2} |", l.endpoint),
                None => println!("| {} | {latency:.2} | |", l.endpoint),
            }
        }
        for t in other
            .throughput
            .iter()
            .filter(|t| !other.latency.iter().any(|l| l.endpoint == t.endpoint))
        {
            if let Some(b) = base.throughput.iter().find(|b| b.endpoint == t.endpoint) {
                println!("| {} | | {:.2} |", t.endpoint, b.per_second / t.per_second);
            }
        }
    }
}
