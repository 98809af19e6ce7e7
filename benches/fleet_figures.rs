//! The cost of fleet figures: the size of one instance's report for 100 services x 3 versions
//! (what it writes to etcd every second), and the driver's work to read the reports of 10
//! instances from JSON and sum one service's canary and stable over them (once per rollout per
//! second); and, with every one of the 100 services scaled, the scaling publisher's work to sum
//! the load of 10 instances (once per second).
//!
//! `cargo bench --bench fleet_figures`

#![allow(clippy::expect_used, clippy::unwrap_used)] // a bench that cannot set up should stop loudly

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use gantry_control::figures::{Baselines, Counts, Load, Report, baselines, since};
use gantry_control::scaling::fleet::Sums;
use gantry_proxy::metrics::{VERSION_BUCKETS, VersionStats};

/// An instance that has served about `scale` requests per version, their latencies spread over
/// five neighbouring buckets (as a service's are), from cumulative counters as the proxy keeps
/// them.
fn report(seed: u64, scale: u64) -> Report {
    let services = (0..100u64)
        .map(|s| {
            let versions = ["v1", "v2", "v3"]
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let n = scale + seed * 7919 + (s * 31 + i as u64 * 17) % 1000;
                    let first = 3 + (s as usize % 8);
                    let mut total = 0;
                    let buckets = VERSION_BUCKETS
                        .iter()
                        .enumerate()
                        .map(|(b, &le)| {
                            if (first..first + 5).contains(&b) {
                                total += n / 5;
                            }
                            if b >= first + 5 {
                                total = n;
                            }
                            (le, total)
                        })
                        .collect();
                    let stats = VersionStats {
                        requests: n,
                        errors: n / 100,
                        buckets,
                    };
                    (v.to_string(), Counts::of(&stats))
                })
                .collect::<BTreeMap<_, _>>();
            (format!("service-{s:03}"), versions)
        })
        .collect();
    let scale = (0..100u64)
        .map(|s| {
            let n = scale * 3 + seed * 7919 + s * 31;
            (
                format!("service-{s:03}"),
                Load {
                    in_flight: 12.34 + s as f64,
                    answered: n,
                    errors: n / 100,
                    busy_micros: n * 4_321,
                },
            )
        })
        .collect();
    Report {
        at_ms: 1_800_000_000_000,
        services,
        scale,
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let one = serde_json::to_string(&report(1, 1_000_000)).unwrap();
    println!(
        "one report, 100 services x 3 versions, all scaled, counters near 10^6: {} bytes (one put per second per instance)",
        one.len()
    );
    let no_scale = Report {
        scale: BTreeMap::new(),
        ..report(1, 1_000_000)
    };
    println!(
        "of which the scaled services' load: {} bytes",
        one.len() - serde_json::to_string(&no_scale).unwrap().len()
    );
    let before: Vec<String> = (0..10)
        .map(|i| serde_json::to_string(&report(i, 1_000_000)).unwrap())
        .collect();
    let after: Vec<String> = (0..10)
        .map(|i| serde_json::to_string(&report(i, 1_001_000)).unwrap())
        .collect();
    let parse = |texts: &[String]| -> Vec<(String, Report)> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("gw-{i}"), serde_json::from_str(t).unwrap()))
            .collect()
    };
    let start = parse(&before);
    let base: Baselines = baselines(&start, "service-042", "v2", "v1");
    c.bench_function("driver: parse 10 reports and sum one service", |b| {
        b.iter(|| {
            let reports = parse(black_box(&after));
            let mut bl = base.clone();
            black_box(since(
                &reports,
                &mut bl,
                "service-042",
                "v2",
                "v1",
                1_800_000_000_000,
            ))
        })
    });
    let parsed = parse(&after);
    c.bench_function("driver: sum one service over 10 parsed reports", |b| {
        b.iter(|| {
            let mut bl = base.clone();
            black_box(since(
                black_box(&parsed),
                &mut bl,
                "service-042",
                "v2",
                "v1",
                1_800_000_000_000,
            ))
        })
    });
    let mut sums = Sums::default();
    sums.fold(&start, 1_800_000_000_000);
    c.bench_function(
        "scaling publisher: sum 100 services' load over 10 parsed reports",
        |b| {
            // The steady state: every (instance, service) already known.
            b.iter(|| black_box(sums.fold(black_box(&parsed), 1_800_000_000_000)))
        },
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
