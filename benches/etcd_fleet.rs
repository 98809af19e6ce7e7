//! Put-to-live latency across a fleet: three Gantry instances watch one real etcd; for each of 200
//! changes, the time from just before the put to the moment the last instance has the change in
//! its live routing table (its status reports the put's revision, which happens after the
//! snapshot is published). Then the same with 10,000 routes stored, to show that a change costs
//! what it touches.
//!
//! `cargo bench --bench etcd_fleet` (needs Debian's etcd-server).

#![allow(clippy::expect_used, clippy::unwrap_used, dead_code)] // a bench that cannot set up should stop loudly

#[path = "../tests/it/etcd_support.rs"]
mod etcd_support;

use std::time::{Duration, Instant};

use etcd_client::{Txn, TxnOp};
use etcd_support::{Etcd, put};

const CHANGES: usize = 200;
const STORED: usize = 10_000;

async fn fleet(etcd: &Etcd) -> Vec<gantry::Running> {
    let mut fleet = Vec::new();
    for _ in 0..3 {
        let opts = gantry::Options {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            admin: Some("127.0.0.1:0".parse().unwrap()),
            etcd: Some(gantry::fleet::EtcdOptions {
                endpoints: etcd.endpoints().into(),
                prefix: "/gantry/".into(),
                instance_id: None,
            }),
            ..Default::default()
        };
        fleet.push(gantry::start(opts).await.expect("gantry starts"));
    }
    fleet
}

/// Waits until every instance's live table includes revision `rev`.
async fn all_at(fleet: &[gantry::Running], rev: i64) {
    for g in fleet {
        let mut changed = g.status.subscribe();
        while g.status.etcd_revision() < rev {
            tokio::time::timeout(Duration::from_secs(30), changed.changed())
                .await
                .expect("the change reaches every instance")
                .unwrap();
        }
    }
}

async fn measure(label: &str, fleet: &[gantry::Running], c: &mut etcd_client::Client) {
    let mut samples = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        let value = format!(r#"{{"url": "http://127.0.0.1:9", "weight": {}}}"#, i % 50 + 1);
        let t0 = Instant::now();
        let rev = put(c, "/gantry/backends/bench/b", &value).await;
        all_at(fleet, rev).await;
        samples.push(t0.elapsed());
    }
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "{label}: put -> live on 3 instances over {CHANGES} changes: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3,
    );
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let etcd = Etcd::start().await;
        let mut c = etcd.client().await;
        put(
            &mut c,
            "/gantry/routers/bench",
            r#"{"hosts": ["bench.test"], "service": "bench"}"#,
        )
        .await;
        let fleet = fleet(&etcd).await;
        measure("empty table", &fleet, &mut c).await;

        // 10,000 routes, each with its own service and two backends, in transactions of 32 routes.
        let started = Instant::now();
        let mut rev = 0;
        for chunk in (0..STORED).collect::<Vec<_>>().chunks(32) {
            let mut ops = Vec::new();
            for &i in chunk {
                ops.push(TxnOp::put(
                    format!("/gantry/routers/app{i}"),
                    format!(r#"{{"hosts": ["app{i}.example.com"], "service": "app{i}"}}"#),
                    None,
                ));
                for b in 0..2 {
                    ops.push(TxnOp::put(
                        format!("/gantry/backends/app{i}/b{b}"),
                        format!(r#"{{"url": "http://10.{}.{}.{b}:8080"}}"#, i / 250, i % 250),
                        None,
                    ));
                }
            }
            rev = c
                .txn(Txn::new().and_then(ops))
                .await
                .unwrap()
                .header()
                .unwrap()
                .revision();
        }
        all_at(&fleet, rev).await;
        println!(
            "stored {STORED} routes ({} keys) in {:.1} s",
            STORED * 3,
            started.elapsed().as_secs_f64()
        );
        assert_eq!(fleet[0].proxy.snapshot().table.route_count(), STORED + 1);
        measure("10,000 routes stored", &fleet, &mut c).await;
        for g in fleet {
            g.shutdown().await;
        }
    });
}
