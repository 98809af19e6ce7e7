//! The cost of one pick for each balancing policy, at 3, 10 and 100 backends.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a bench that cannot set up should stop loudly

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use gantry_proxy::balance::{Ring, SmoothWrr, hash_key, p2c, weighted_random};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick");
    for n in [3usize, 10, 100] {
        let weights: Vec<u32> = (0..n).map(|i| 1 + (i % 5) as u32).collect();
        let loads: Vec<f64> = (0..n).map(|i| ((i * 37) % 11) as f64).collect();

        let rr = SmoothWrr::new(n);
        g.bench_with_input(BenchmarkId::new("round_robin", n), &n, |b, _| {
            b.iter(|| black_box(rr.pick(|i| weights[i])))
        });

        let mut rng = fastrand::Rng::with_seed(1);
        g.bench_with_input(BenchmarkId::new("least_request_p2c", n), &n, |b, _| {
            b.iter(|| black_box(p2c(n, |i| Some(loads[i] / f64::from(weights[i])), &mut rng)))
        });

        let ids: Vec<(String, u32)> = (0..n)
            .map(|i| (format!("http://10.0.{}.{}:80", i / 250, i % 250), weights[i]))
            .collect();
        let ring = Ring::build(&ids);
        let keys: Vec<String> = (0..1024).map(|k| format!("session-{k}")).collect();
        let mut k = 0usize;
        g.bench_with_input(BenchmarkId::new("hash_ring", n), &n, |b, _| {
            b.iter(|| {
                k += 1;
                black_box(ring.pick(hash_key(keys[k & 1023].as_bytes()), |_| true))
            })
        });

        g.bench_with_input(BenchmarkId::new("weighted_random", n), &n, |b, _| {
            b.iter(|| black_box(weighted_random(n, |i| weights[i], &mut rng)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
