//! The etcd backing: rollouts shared by a fleet. State lives under `rollouts/<service>/` (see
//! `gantry_discovery::etcd::keys`); exactly one instance drives each rollout (it holds the
//! `driver` key under its lease), every instance applies the weights it writes to
//! `weights/<service>`, and when the driver dies another takes over from the stored step. Every
//! write of the driver is one transaction guarded by the driver key and the state's revision.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use gantry_config::rollout::RolloutSpec;
use gantry_discovery::etcd::{Endpoints, Keys, RolloutKey};
use gantry_proxy::metrics::VersionStats;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::judge::{self, Action, Command, Phase, RolloutState, await_fleet, fleet_check, started, weights};
use super::{RolloutError, Rollouts};

/// Where a fleet's rollouts live.
#[derive(Debug, Clone)]
pub struct EtcdBacking {
    pub endpoints: Endpoints,
    pub keys: Keys,
    /// The driver key's lease: how long a dead driver holds its rollouts.
    pub lease_ttl: Duration,
}

impl Rollouts {
    pub(super) async fn start_etcd(&self, etcd: &EtcdBacking, spec: RolloutSpec) -> Result<(), RolloutError> {
        let service = spec.service.clone();
        let mut client = etcd
            .endpoints
            .connect_any()
            .await
            .map_err(RolloutError::Unavailable)?;
        let key = |k| etcd.keys.rollout(&service, k);
        let state = client
            .get(key(RolloutKey::State), None)
            .await
            .map_err(|e| RolloutError::Unavailable(e.to_string()))?;
        if let Some(kv) = state.kvs().first()
            && let Ok(s) = serde_json::from_slice::<RolloutState>(kv.value())
            && !s.phase.is_over()
        {
            return Err(RolloutError::Conflict(format!(
                "a rollout of {service} is already {:?}",
                s.phase
            )));
        }
        let body = serde_json::to_string(&spec).unwrap_or_default();
        client
            .put(key(RolloutKey::Spec), body, None)
            .await
            .map_err(|e| RolloutError::Unavailable(e.to_string()))?;
        Ok(())
    }

    /// Whether etcd already holds this very spec (then declaring it again starts nothing).
    pub(super) async fn declared_etcd(
        &self,
        etcd: &EtcdBacking,
        spec: &RolloutSpec,
    ) -> Result<bool, RolloutError> {
        let mut client = etcd
            .endpoints
            .connect_any()
            .await
            .map_err(RolloutError::Unavailable)?;
        let key = etcd.keys.rollout(&spec.service, RolloutKey::Spec);
        let got = client
            .get(key.as_str(), None)
            .await
            .map_err(|e| RolloutError::Unavailable(e.to_string()))?;
        let same = got
            .kvs()
            .first()
            .and_then(|kv| serde_json::from_slice::<RolloutSpec>(kv.value()).ok())
            .is_some_and(|stored| stored == *spec);
        Ok(same)
    }

    pub(super) async fn set_weights_etcd(
        &self,
        etcd: &EtcdBacking,
        service: &str,
        weights: Option<BTreeMap<String, u32>>,
    ) -> Result<Option<i64>, RolloutError> {
        let mut client = etcd
            .endpoints
            .connect_any()
            .await
            .map_err(RolloutError::Unavailable)?;
        let key = etcd.keys.weights(service);
        let rev = match weights {
            Some(w) => client
                .put(key, serde_json::to_string(&w).unwrap_or_default(), None)
                .await
                .map_err(|e| RolloutError::Unavailable(e.to_string()))?
                .header()
                .map(|h| h.revision()),
            None => client
                .delete(key, None)
                .await
                .map_err(|e| RolloutError::Unavailable(e.to_string()))?
                .header()
                .map(|h| h.revision()),
        };
        Ok(rev)
    }

    pub(super) async fn command_etcd(
        &self,
        etcd: &EtcdBacking,
        service: &str,
        cmd: Command,
    ) -> Result<RolloutState, RolloutError> {
        let mut client = etcd
            .endpoints
            .connect_any()
            .await
            .map_err(RolloutError::Unavailable)?;
        let key = etcd.keys.rollout(service, RolloutKey::State);
        let got = client
            .get(key.as_str(), None)
            .await
            .map_err(|e| RolloutError::Unavailable(e.to_string()))?;
        let kv = got
            .kvs()
            .first()
            .ok_or_else(|| RolloutError::NotFound(format!("no rollout of {service}")))?;
        let current: RolloutState = serde_json::from_slice(kv.value())
            .map_err(|e| RolloutError::Corrupt(format!("{key} holds no rollout state: {e}")))?;
        let (next, action) = judge::command(&current, cmd)?;
        let d = self.decide_now(&next, action);
        let mut ops = vec![
            TxnOp::put(
                key.as_str(),
                serde_json::to_string(&next).unwrap_or_default(),
                None,
            ),
            TxnOp::put(
                etcd.keys.rollout(service, RolloutKey::Decision),
                serde_json::to_string(&d).unwrap_or_default(),
                None,
            ),
        ];
        if action == Action::Abort {
            ops.push(weights_op(&etcd.keys, &next));
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                kv.mod_revision(),
            )])
            .and_then(ops);
        let ok = client
            .txn(txn)
            .await
            .map_err(|e| RolloutError::Unavailable(e.to_string()))?
            .succeeded();
        if !ok {
            return Err(RolloutError::Conflict(
                "the rollout changed meanwhile; try again".into(),
            ));
        }
        self.record(&d);
        Ok(next)
    }

    pub(super) async fn run_etcd(self: Arc<Self>, etcd: EtcdBacking, shutdown: CancellationToken) {
        let mut backoff = gantry_discovery::backoff::Backoff::default();
        loop {
            let started = std::time::Instant::now();
            match self.etcd_session(&etcd, &shutdown).await {
                Ok(()) => return,
                Err(e) => warn!(error = %e, "rollouts: lost etcd; retrying"),
            }
            self.inner().driving.clear();
            backoff.session_lasted(started.elapsed());
            if !backoff.wait(&shutdown).await {
                return;
            }
        }
    }

    async fn etcd_session(&self, etcd: &EtcdBacking, shutdown: &CancellationToken) -> Result<(), String> {
        let lease_ttl = etcd.lease_ttl;
        let mut client = etcd.endpoints.connect_any().await?;
        let ttl = lease_ttl.as_secs().max(1) as i64;
        let lease = client
            .lease_grant(ttl, None)
            .await
            .map_err(|e| e.to_string())?
            .id();
        let (mut keeper, mut answers) = client.lease_keep_alive(lease).await.map_err(|e| e.to_string())?;
        let tick = self.tick.min(lease_ttl / 3);
        // A step waiting for the fleet is looked at again soon: instances apply a change within
        // milliseconds, and the step's clock should start when they have.
        let mut pause = Duration::ZERO;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    // Hand the rollouts over at once rather than at lease expiry.
                    let _ = tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(lease)).await;
                    return Ok(());
                }
                _ = tokio::time::sleep(pause) => {}
            }
            keeper.keep_alive().await.map_err(|e| e.to_string())?;
            match tokio::time::timeout(lease_ttl, answers.message()).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                _ => return Err("the rollout lease expired or its keep-alive failed".into()),
            }
            let waiting = self.etcd_tick(&mut client, &etcd.keys, lease).await?;
            pause = if waiting { FLEET_RECHECK.min(tick) } else { tick };
        }
    }

    /// Reads every rollout; starts declared ones, takes undriven ones, drives its own. True when
    /// one of its own waits for the fleet.
    async fn etcd_tick(&self, client: &mut Client, keys: &Keys, lease: i64) -> Result<bool, String> {
        let root = keys.rollouts();
        let got = client
            .get(root.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| e.to_string())?;
        #[derive(Default)]
        struct Keys {
            spec: Option<(Vec<u8>, i64)>,
            state: Option<(Vec<u8>, i64)>,
            driver: Option<String>,
        }
        let mut by: BTreeMap<String, Keys> = BTreeMap::new();
        for kv in got.kvs() {
            let Ok(key) = kv.key_str() else { continue };
            let Some((service, what)) = keys.parse_rollout(key) else {
                continue;
            };
            let k = by.entry(service.to_string()).or_default();
            match what {
                RolloutKey::Spec => k.spec = Some((kv.value().to_vec(), kv.mod_revision())),
                RolloutKey::State => k.state = Some((kv.value().to_vec(), kv.mod_revision())),
                RolloutKey::Driver => k.driver = kv.value_str().ok().map(str::to_string),
                RolloutKey::Decision => {}
            }
        }
        let mut seen = BTreeMap::new();
        let mut driving = BTreeMap::new();
        // The revision each live instance serves and its figures, read once per tick when a
        // rollout of this instance's needs them.
        let mut fleet: Option<crate::figures::Fleet> = None;
        let mut waiting = false;
        for (service, k) in by {
            let key = |k| keys.rollout(&service, k);
            let state: Option<(RolloutState, i64)> = k
                .state
                .as_ref()
                .and_then(|(v, rev)| serde_json::from_slice(v).ok().map(|s| (s, *rev)));
            let spec = match &k.spec {
                Some((v, rev)) => match RolloutSpec::from_json(
                    &service,
                    v,
                    &format!("etcd key {} @ rev {rev}", key(RolloutKey::Spec)),
                ) {
                    Ok(s) => Some((s, *rev)),
                    Err(e) => {
                        warn!("rollout not started:\n{e}");
                        None
                    }
                },
                None => None,
            };
            // A spec newer than the state (or without one) starts a rollout.
            let fresh = match (&spec, &state) {
                (Some((_, rev)), Some((s, _))) => *rev > s.spec_revision,
                (Some(_), None) => true,
                _ => false,
            };
            let mine = k.driver.as_deref() == Some(self.instance.as_str());
            let live = fresh || state.as_ref().is_some_and(|(s, _)| !s.phase.is_over());
            if let Some((s, _)) = &state {
                seen.insert(service.clone(), s.clone());
            }
            if !live {
                continue;
            }
            if !mine {
                if k.driver.is_some() {
                    continue;
                }
                // Nobody drives it: try to.
                let txn = Txn::new()
                    .when([Compare::create_revision(
                        key(RolloutKey::Driver),
                        CompareOp::Equal,
                        0,
                    )])
                    .and_then([TxnOp::put(
                        key(RolloutKey::Driver),
                        self.instance.as_str(),
                        Some(PutOptions::new().with_lease(lease)),
                    )]);
                if !client.txn(txn).await.map_err(|e| e.to_string())?.succeeded() {
                    continue;
                }
                info!(%service, instance = %self.instance, "rollouts: driving the rollout of {service}");
            }
            driving.insert(service.clone(), true);
            let state_rev = state.as_ref().map_or(0, |(_, r)| *r);
            let (next, d) = match (fresh, spec, state) {
                (true, Some((spec, rev)), _) => {
                    let st = started(spec, rev);
                    let d = self.decide(
                        &st,
                        Action::Start,
                        &VersionStats::default(),
                        &VersionStats::default(),
                    );
                    (st, d)
                }
                (_, _, Some((st, rev))) if !st.fleet_ready => {
                    // The step's weights are written; its clock starts when the fleet serves them.
                    let awaited = if st.weights_revision > 0 {
                        st.weights_revision
                    } else {
                        rev
                    };
                    if fleet.is_none() {
                        fleet = Some(crate::figures::read(client, keys).await?);
                    }
                    // An instance that reports figures but not yet this service's (it learns of
                    // the rollout on its next read) is not ready either: the step's figures
                    // must cover it from the start.
                    let instances: Vec<(String, i64)> = fleet.as_ref().map_or_else(Vec::new, |f| {
                        f.revisions
                            .iter()
                            .map(|(id, rev)| {
                                let unreported = f
                                    .reports
                                    .iter()
                                    .any(|(r, rep)| r == id && !rep.services.contains_key(&service));
                                (id.clone(), if unreported { 0 } else { *rev })
                            })
                            .collect()
                    });
                    match fleet_check(&st, awaited, &instances, crate::time::unix_ms()) {
                        Some(next) => {
                            waiting |= !next.fleet_ready;
                            if next.fleet_ready {
                                // The step's window begins now, from the figures just read.
                                self.begin_window(&next, fleet.as_ref().map(|f| &f.reports[..]));
                            }
                            self.write_state(client, keys, &service, rev, &next).await?;
                            seen.insert(service.clone(), next);
                        }
                        None => waiting = true,
                    }
                    continue;
                }
                (_, _, Some((st, _))) => {
                    if st.phase != Phase::Running {
                        continue;
                    }
                    if fleet.is_none() {
                        fleet = Some(crate::figures::read(client, keys).await?);
                    }
                    let reports = fleet.as_ref().map(|f| &f.reports[..]);
                    match self.step(&st, reports) {
                        Some(x) => x,
                        None => continue,
                    }
                }
                _ => continue,
            };
            // New weights (a start, a step): judged once the fleet serves them.
            let next = match d.action {
                Action::Start | Action::Step => await_fleet(next),
                _ => next,
            };
            let guard = if state_rev == 0 {
                Compare::create_revision(key(RolloutKey::State), CompareOp::Equal, 0)
            } else {
                Compare::mod_revision(key(RolloutKey::State), CompareOp::Equal, state_rev)
            };
            let txn = Txn::new()
                .when([
                    Compare::value(key(RolloutKey::Driver), CompareOp::Equal, self.instance.as_str()),
                    guard,
                ])
                .and_then([
                    TxnOp::put(
                        key(RolloutKey::State),
                        serde_json::to_string(&next).unwrap_or_default(),
                        None,
                    ),
                    TxnOp::put(
                        key(RolloutKey::Decision),
                        serde_json::to_string(&d).unwrap_or_default(),
                        None,
                    ),
                    weights_op(keys, &next),
                ]);
            if client.txn(txn).await.map_err(|e| e.to_string())?.succeeded() {
                waiting |= !next.fleet_ready;
                self.record(&d);
                if fresh {
                    self.inner().windows.remove(&service);
                }
                seen.insert(service.clone(), next);
            }
        }
        let mut inner = self.inner();
        inner.states = seen;
        inner.driving = driving;
        Ok(waiting)
    }
}

impl Rollouts {
    /// Writes a state that changes no weights (a step waiting for the fleet), guarded like
    /// every write of the driver.
    async fn write_state(
        &self,
        client: &mut Client,
        keys: &Keys,
        service: &str,
        state_rev: i64,
        next: &RolloutState,
    ) -> Result<(), String> {
        let key = |k| keys.rollout(service, k);
        let txn = Txn::new()
            .when([
                Compare::value(key(RolloutKey::Driver), CompareOp::Equal, self.instance.as_str()),
                Compare::mod_revision(key(RolloutKey::State), CompareOp::Equal, state_rev),
            ])
            .and_then([TxnOp::put(
                key(RolloutKey::State),
                serde_json::to_string(next).unwrap_or_default(),
                None,
            )]);
        if client.txn(txn).await.map_err(|e| e.to_string())?.succeeded() {
            info!(%service, reason = %next.reason, waiting_for = ?next.waiting_for, "rollouts: the step and the fleet");
        }
        Ok(())
    }
}

/// How soon a step waiting for the fleet is looked at again.
const FLEET_RECHECK: Duration = Duration::from_millis(100);

fn weights_op(keys: &Keys, state: &RolloutState) -> TxnOp {
    TxnOp::put(keys.weights(&state.spec.service), weights(state).to_json(), None)
}
