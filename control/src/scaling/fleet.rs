//! Scaling on the fleet's traffic. With etcd, every instance reports each scaled service's load
//! in its figures (`<prefix>figures/<id>`, see [`crate::figures::Load`]); one instance, elected
//! by holding `<prefix>leaders/scaling` under its lease (as a rollout's driver holds its driver
//! key), sums them every second, recommends from the sum, publishes the recommendation and runs
//! the Docker scaler. The others recommend from their own traffic for their own metrics, say who
//! publishes, and neither publish nor scale. When the publisher dies its key expires with its
//! lease and another instance takes over, its recommender starting afresh.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use gantry_discovery::etcd::{Endpoints, Keys};
use gantry_proxy::service::Demand;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Scaling;
use crate::figures::{Load, Report};

/// The lease of the publisher's key: how long a dead publisher keeps the role.
pub const LEADER_TTL: Duration = Duration::from_secs(6);

/// What the fleet's latest reports add up to.
#[derive(Debug, Clone, Default)]
pub struct FleetLoad {
    /// When the reports were read.
    pub read: Option<Instant>,
    /// Instances whose reports are summed.
    pub instances: Vec<String>,
    /// Instances left out: no report within [`crate::figures::STALE_AFTER`].
    pub left_out: Vec<String>,
    /// Per scaled service: requests in flight across the fleet (each instance's one-second
    /// average, summed) and counters that only grow.
    pub services: BTreeMap<String, (f64, Demand)>,
}

/// The publisher's running sums: each instance's counters grow the fleet's by what they grew
/// since the last read. An instance seen for the first time counts from then; one whose
/// counters went back (a restart) counts from zero.
#[derive(Debug, Default)]
pub struct Sums {
    last: BTreeMap<(String, String), Load>,
    totals: BTreeMap<String, Demand>,
}

impl Sums {
    pub fn fold(&mut self, reports: &[(String, Report)], now_ms: u64) -> FleetLoad {
        let mut load = FleetLoad::default();
        for (id, r) in reports {
            if r.is_stale(now_ms) {
                load.left_out.push(id.clone());
                continue;
            }
            load.instances.push(id.clone());
            for (service, now) in &r.scale {
                let prev = self.last.insert((id.clone(), service.clone()), *now);
                let grew = match prev {
                    None => Load::default(),
                    Some(p) if now.answered < p.answered => *now,
                    Some(p) => Load {
                        in_flight: 0.0,
                        answered: now.answered - p.answered,
                        errors: now.errors.saturating_sub(p.errors),
                        busy_micros: now.busy_micros.saturating_sub(p.busy_micros),
                    },
                };
                let total = self.totals.entry(service.clone()).or_default();
                total.answered += grew.answered;
                total.errors += grew.errors;
                total.busy_micros += grew.busy_micros;
                let entry = load.services.entry(service.clone()).or_insert((0.0, *total));
                entry.0 += now.in_flight;
                entry.1 = *total;
            }
        }
        for (_, d) in load.services.values_mut() {
            d.in_flight = 0;
        }
        load.instances.sort();
        load.left_out.sort();
        load
    }
}

/// Campaigns for the publisher's key and, while this instance holds it, feeds the fleet's load
/// to `scaling` every [`crate::figures::REPORT_EVERY`]; until `shutdown`.
pub async fn lead(
    scaling: Arc<Scaling>,
    endpoints: Endpoints,
    keys: Keys,
    instance: String,
    shutdown: CancellationToken,
) {
    let mut backoff = gantry_discovery::backoff::Backoff::default();
    loop {
        let started = std::time::Instant::now();
        let r = session(&scaling, &endpoints, &keys, &instance, &shutdown).await;
        scaling.follow(None);
        match r {
            Ok(()) => return,
            Err(e) => warn!(error = %e, "scaling: lost etcd; not publishing until it is back"),
        }
        backoff.session_lasted(started.elapsed());
        if !backoff.wait(&shutdown).await {
            return;
        }
    }
}

async fn session(
    scaling: &Scaling,
    endpoints: &Endpoints,
    keys: &Keys,
    instance: &str,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let mut client = endpoints.connect_any().await?;
    let lease = client
        .lease_grant(LEADER_TTL.as_secs() as i64, None)
        .await
        .map_err(|e| e.to_string())?
        .id();
    let (mut keeper, mut answers) = client.lease_keep_alive(lease).await.map_err(|e| e.to_string())?;
    let key = keys.leader("scaling");
    let mut sums = Sums::default();
    let mut leading = false;
    let mut every = tokio::time::interval(crate::figures::REPORT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                // Hand the role over at once rather than at lease expiry.
                let _ = tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(lease)).await;
                return Ok(());
            }
            _ = every.tick() => {}
        }
        let round = async {
            keeper.keep_alive().await.map_err(|e| e.to_string())?;
            match answers.message().await {
                Ok(Some(r)) if r.ttl() > 0 => {}
                _ => return Err("the publisher's lease expired or its keep-alive failed".to_string()),
            }
            let holder = campaign(&mut client, &key, instance, lease).await?;
            if holder.as_deref() == Some(instance) {
                let fleet = crate::figures::read(&mut client, keys).await?;
                Ok((holder, Some(sums.fold(&fleet.reports, crate::time::unix_ms()))))
            } else {
                Ok((holder, None))
            }
        };
        let (holder, load) = tokio::time::timeout(LEADER_TTL / 2, round)
            .await
            .map_err(|_| "etcd did not answer within 3 s".to_string())??;
        match load {
            Some(mut load) => {
                if !leading {
                    info!(%instance, "scaling: this instance publishes the fleet's recommendations");
                    leading = true;
                }
                load.read = Some(Instant::now());
                scaling.set_leading(load);
            }
            None => {
                if leading {
                    info!(?holder, "scaling: another instance publishes now");
                    leading = false;
                }
                sums = Sums::default();
                scaling.follow(holder);
            }
        }
    }
}

/// Takes the key if nobody holds it; the holder's id either way.
async fn campaign(
    client: &mut Client,
    key: &str,
    instance: &str,
    lease: i64,
) -> Result<Option<String>, String> {
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key,
            instance,
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(key, None)]);
    let resp = client.txn(txn).await.map_err(|e| e.to_string())?;
    if resp.succeeded() {
        return Ok(Some(instance.to_string()));
    }
    Ok(resp.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(g) => g
            .kvs()
            .first()
            .and_then(|kv| kv.value_str().ok().map(str::to_string)),
        _ => None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(at_ms: u64, loads: &[(&str, f64, u64)]) -> Report {
        Report {
            at_ms,
            services: BTreeMap::new(),
            scale: loads
                .iter()
                .map(|&(s, c, a)| {
                    (
                        s.to_string(),
                        Load {
                            in_flight: c,
                            answered: a,
                            errors: a / 10,
                            busy_micros: a * 1000,
                        },
                    )
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_publisher_sums_concurrency_and_counter_growth_and_leaves_out_the_stale() {
        let mut sums = Sums::default();
        let t = 100_000;
        let first = sums.fold(
            &[
                ("a".into(), report(t, &[("api", 5.0, 1000)])),
                ("b".into(), report(t, &[("api", 3.0, 500), ("db", 1.0, 10)])),
                ("c".into(), report(t - 10_000, &[("api", 9.0, 9000)])),
            ],
            t,
        );
        assert_eq!(first.instances, ["a", "b"]);
        assert_eq!(first.left_out, ["c"]);
        let (c, d) = first.services["api"];
        assert!((c - 8.0).abs() < 1e-9);
        // History before the first read does not count.
        assert_eq!(d.answered, 0);
        // a grows by 100, b restarted (its counters went back to 40), c is back.
        let second = sums.fold(
            &[
                ("a".into(), report(t + 1000, &[("api", 4.5, 1100)])),
                ("b".into(), report(t + 1000, &[("api", 2.5, 40)])),
                ("c".into(), report(t + 1000, &[("api", 2.0, 9100)])),
            ],
            t + 1000,
        );
        assert_eq!(second.instances, ["a", "b", "c"]);
        let (c, d) = second.services["api"];
        assert!((c - 9.0).abs() < 1e-9);
        assert_eq!(d.answered, 100 + 40);
        assert_eq!(d.errors, 10 + 4);
        assert_eq!(d.busy_micros, 140_000);
        assert!(!second.services.contains_key("db"));
    }
}
