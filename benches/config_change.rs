//! The cost of applying one etcd change when N routes are stored: the whole control-plane path
//! from a changed key to a live snapshot (layout -> reconcile -> table -> proxy snapshot).
//! Target: proportional to the change, not to the table.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a bench that cannot set up should stop loudly

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use gantry_config::{Errors, RoutingTable};
use gantry_discovery::etcd::layout::{Entry, Layout};
use gantry_discovery::{Reconciler, Report, SourceId, Update};
use gantry_proxy::Proxy;

struct Publish(Arc<Proxy>);

impl gantry_discovery::Sink for Publish {
    fn publish(&self, table: Arc<RoutingTable>) -> u64 {
        self.0.publish(table)
    }
    fn rejected(&self, _: SourceId, e: &Errors) {
        panic!("rejected: {e}");
    }
}

/// n routers, each with its own host and service of two backends: a platform where every app
/// has a host name.
fn keys(n: usize) -> Vec<(String, Vec<u8>)> {
    let mut kv = Vec::new();
    for i in 0..n {
        kv.push((
            format!("/gantry/routers/app{i}"),
            format!(r#"{{"hosts": ["app{i}.example.com"], "service": "app{i}"}}"#).into_bytes(),
        ));
        kv.push((
            format!("/gantry/services/app{i}"),
            br#"{"policy": "least_request"}"#.to_vec(),
        ));
        for b in 0..2 {
            kv.push((
                format!("/gantry/backends/app{i}/b{b}"),
                format!(r#"{{"url": "http://10.{}.{}.{b}:8080"}}"#, i / 250, i % 250).into_bytes(),
            ));
        }
    }
    kv
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("etcd_change");
    for n in [100usize, 1_000, 10_000] {
        let proxy = Proxy::new(vec!["web".into()], &prometheus::Registry::new()).unwrap();
        let mut reconciler = Reconciler::new(vec!["web".into()], Arc::new(Publish(proxy.clone())));
        let kv = keys(n);
        let mut layout = Layout::from_kvs(
            "/gantry/",
            kv.iter().map(|(k, v)| {
                (
                    k.as_str(),
                    Entry {
                        value: v.clone(),
                        mod_revision: 1,
                    },
                )
            }),
        );
        assert!(layout.warnings().is_empty(), "{}", layout.warnings());
        let first = Update {
            source: SourceId::Etcd,
            origin: "bench".into(),
            report: Report::Valid {
                state: layout.desired(),
                warnings: Errors::new(),
            },
            revision: Some(1),
            origins: Default::default(),
        };
        reconciler.apply(first);
        assert_eq!(proxy.snapshot().table.route_count(), n);
        let mut rev = 1;
        let mut change = |key: &str, value: String| {
            rev += 1;
            let changes = layout.apply([(
                key,
                Some(Entry {
                    value: value.into_bytes(),
                    mod_revision: rev,
                }),
            )]);
            let u = Update {
                source: SourceId::Etcd,
                origin: "bench".into(),
                report: Report::Changed {
                    changes,
                    warnings: layout.warnings(),
                },
                revision: Some(rev),
                origins: Default::default(),
            };
            assert!(matches!(
                reconciler.apply(u),
                gantry_discovery::Outcome::Published(_)
            ));
        };
        // A backend's weight moves: one service is rebuilt.
        let mut w = 1;
        group.bench_with_input(BenchmarkId::new("backend_weight", n), &n, |b, _| {
            b.iter(|| {
                w = w % 50 + 1;
                change(
                    "/gantry/backends/app7/b1",
                    format!(r#"{{"url": "http://10.0.7.1:8080", "weight": {w}}}"#),
                );
            });
        });
        // A router's path changes: one route and its host's bucket.
        let mut p = 0;
        group.bench_with_input(BenchmarkId::new("router_path", n), &n, |b, _| {
            b.iter(|| {
                p += 1;
                change(
                    "/gantry/routers/app7",
                    format!(
                        r#"{{"hosts": ["app7.example.com"], "path_prefix": "/v{p}", "service": "app7"}}"#
                    ),
                );
            });
        });
        assert_eq!(proxy.snapshot().table.route_count(), n);
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
