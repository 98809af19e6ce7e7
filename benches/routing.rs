//! Route lookup cost at 10, 1,000 and 10,000 routes (it must stay nearly flat), and the cost of
//! compiling a table of that size (paid once per change, off the request path).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a bench that cannot set up should stop loudly

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use gantry_config::routing::{RequestView, normalize_host};
use gantry_config::{DesiredState, RoutingTable};
use http::{HeaderMap, Method};

/// `n` routers over n/10 hosts (10 path prefixes each), a few wildcards and a catch-all: the
/// shape of a multi-tenant entry point.
fn state(n: usize) -> DesiredState {
    let mut text = String::from("[services.s]\nbackends = [{ url = \"http://127.0.0.1:1\" }]\n");
    let hosts = (n / 10).max(1);
    for i in 0..n {
        let host = i % hosts;
        let path = i / hosts;
        text.push_str(&format!(
            "[routers.r{i}]\nhosts = [\"tenant-{host}.example.com\"]\npath_prefix = \"/app{path}/\"\nservice = \"s\"\n"
        ));
    }
    text.push_str("[routers.wild]\nhosts = [\"*.example.com\"]\nservice = \"s\"\n");
    text.push_str("[routers.any]\npath = \"/healthz\"\nservice = \"s\"\n");
    gantry_config::file::load(&text, "bench").expect("valid").state
}

fn bench(c: &mut Criterion) {
    let eps = vec!["web".to_string()];
    let mut lookup = c.benchmark_group("route_lookup");
    for n in [10usize, 1_000, 10_000] {
        let table = RoutingTable::compile(&state(n), &eps, &|_| String::new()).expect("compiles");
        let hosts = (n / 10).max(1);
        // Requests spread over hosts and paths; one in ten falls through to the wildcard.
        let reqs: Vec<(String, String)> = (0..1024)
            .map(|k| {
                let h = (k * 7919) % hosts;
                let p = k % 11;
                (
                    format!("Tenant-{h}.example.com:443"),
                    format!("/app{p}/items/{k}"),
                )
            })
            .collect();
        let headers = HeaderMap::new();
        lookup.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            let mut i = 0;
            b.iter(|| {
                let (host, path) = &reqs[i & 1023];
                i += 1;
                let host = normalize_host(host);
                let view = RequestView {
                    host: &host,
                    path,
                    method: &Method::GET,
                    headers: &headers,
                    query: None,
                };
                black_box(table.lookup(0, &view).map(|r| r.id))
            })
        });
    }
    lookup.finish();

    let mut build = c.benchmark_group("route_compile");
    build.sample_size(10);
    for n in [10usize, 1_000, 10_000] {
        let s = state(n);
        build.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(RoutingTable::compile(&s, &eps, &|_| String::new()).expect("compiles")))
        });
    }
    build.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
