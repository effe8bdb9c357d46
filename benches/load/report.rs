//! The report: JSON for the record, tables for the terminal.

use std::path::Path;

use serde::Serialize;
use serde_json::json;

use super::Args;
use super::measure::{Latency, Throughput};

#[derive(Debug, Serialize)]
pub(crate) struct BackendReport {
    pub(crate) backend: String,
    pub(crate) latency: Vec<Latency>,
    pub(crate) throughput: Vec<Throughput>,
    pub(crate) server_peak_rss_mib: f64,
    pub(crate) tarantool_peak_rss_mib: Option<f64>,
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

pub(crate) fn print_tables(args: &Args, reports: &[BackendReport]) {
    println!(
        "\nimport: {} citizens, {} links, seed {}; latency with 1 client, throughput with {} clients for {} s",
        args.citizens, args.links, args.seed, args.clients, args.duration_secs
    );
    for report in reports {
        println!("\n## {}", report.backend);
        println!("| endpoint | runs | min ms | median ms | p99 ms |");
        println!("|---|---:|---:|---:|---:|");
        for l in &report.latency {
            println!(
                "| {} | {} | {:.2} | {:.2} | {:.2} |",
                l.endpoint, l.runs, l.min_ms, l.median_ms, l.p99_ms
            );
        }
        if !report.throughput.is_empty() {
            println!("\n| endpoint | clients | requests/s | errors |");
            println!("|---|---:|---:|---:|");
            for t in &report.throughput {
                println!(
                    "| {} | {} | {:.0} | {} |",
                    t.endpoint, t.clients, t.per_second, t.errors
                );
            }
        }
        print!("\nserver peak RSS: {:.0} MiB", report.server_peak_rss_mib);
        if let Some(rss) = report.tarantool_peak_rss_mib {
            print!("; tarantool peak RSS: {rss:.0} MiB");
        }
        println!();
    }
    print_ratios(reports);
}

/// Each other backend against the embedded store of the same run: median
/// latency and throughput as multiples (above 1: the other is slower).
pub(crate) fn print_ratios(reports: &[BackendReport]) {
    let Some(base) = reports.iter().find(|r| r.backend == "sqlite") else {
        return;
    };
    for other in reports.iter().filter(|r| r.backend != "sqlite") {
        println!(
            "\n## {} against sqlite (× slower: median latency ratio; sqlite/{} throughput)",
            other.backend, other.backend
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
