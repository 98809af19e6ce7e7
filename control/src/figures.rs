//! Fleet figures. With etcd, each instance publishes its per-service, per-version counters
//! (requests, 5xx errors, latency histogram buckets; cumulative since it started) about once a
//! second beside its instance record, at `<prefix>figures/<id>`, bound to the record's lease. A driver sums what happened on every instance since a window began: the fleet's error
//! rate, and the fleet's p99 from the merged histograms (never an average of p99s). An instance
//! whose report is older than [`STALE_AFTER`] is left out and named.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Client, GetOptions};
use gantry_discovery::etcd::Keys;
use gantry_proxy::Proxy;
use gantry_proxy::metrics::{VERSION_BUCKETS, VersionStats};
use serde::{Deserialize, Serialize};

/// How often an instance publishes its figures.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// A report older than this (three intervals) is left out of the fleet's figures.
pub const STALE_AFTER: Duration = Duration::from_secs(3);

/// One instance's counters: service -> version -> counts, and the load of each scaled service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// When the counters were read (unix ms, the instance's clock).
    pub at_ms: u64,
    pub services: BTreeMap<String, BTreeMap<String, Counts>>,
    /// Services that declare scale settings: what the scaling publisher sums.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scale: BTreeMap<String, Load>,
    /// Requests this instance answered per second over the last interval: its share of the
    /// fleet's traffic, for the fleet view.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rps: f64,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// Requests per second between two readings of a cumulative count.
#[derive(Debug, Default)]
pub struct Rate {
    total: u64,
    at_ms: u64,
}

impl Rate {
    /// The rate since the last reading (0 at the first), and this reading kept for the next.
    pub fn per_second(&mut self, total: u64, now_ms: u64) -> f64 {
        let (dt, dn) = (
            now_ms.saturating_sub(self.at_ms),
            total.saturating_sub(self.total),
        );
        let first = self.at_ms == 0;
        (self.total, self.at_ms) = (total, now_ms);
        if first || dt == 0 {
            0.0
        } else {
            dn as f64 * 1000.0 / dt as f64
        }
    }
}

/// Every request this instance's services have answered since it started.
pub fn answered(proxy: &Proxy) -> u64 {
    proxy
        .snapshot()
        .services()
        .map(|s| s.state.demand().answered)
        .sum()
}

impl Report {
    /// Older than [`STALE_AFTER`] at `now_ms`: left out of the fleet's figures.
    pub fn is_stale(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.at_ms) > STALE_AFTER.as_millis() as u64
    }
}

/// A scaled service's load at one instance, compact: `{"c": requests in flight, averaged over
/// the last second, "a": answered, "e": 5xx answers, "u": the answers' summed durations in
/// microseconds}` (the last three cumulative since the instance started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Load {
    #[serde(rename = "c")]
    pub in_flight: f64,
    #[serde(rename = "a")]
    pub answered: u64,
    #[serde(rename = "e")]
    pub errors: u64,
    #[serde(rename = "u")]
    pub busy_micros: u64,
}

/// A version's counters, compact: `{"r": requests, "e": errors, "b": [requests per latency
/// bucket, in the order of VERSION_BUCKETS, not cumulative, trailing zeros left out]}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    #[serde(rename = "r")]
    pub requests: u64,
    #[serde(rename = "e")]
    pub errors: u64,
    #[serde(rename = "b")]
    pub buckets: Vec<u64>,
}

impl Counts {
    pub fn of(s: &VersionStats) -> Self {
        let mut below = 0;
        let mut buckets: Vec<u64> = s
            .buckets
            .iter()
            .map(|&(_, n)| {
                let here = n.saturating_sub(below);
                below = n;
                here
            })
            .collect();
        while buckets.last() == Some(&0) {
            buckets.pop();
        }
        Counts {
            requests: s.requests,
            errors: s.errors,
            buckets,
        }
    }

    /// Back to cumulative buckets over every bound.
    pub fn stats(&self) -> VersionStats {
        let mut total = 0;
        VersionStats {
            requests: self.requests,
            errors: self.errors,
            buckets: VERSION_BUCKETS
                .iter()
                .enumerate()
                .map(|(i, &le)| {
                    total += self.buckets.get(i).copied().unwrap_or(0);
                    (le, total)
                })
                .collect(),
        }
    }
}

/// This instance's counters now, for the services a driver may judge: those `wanted` names (a
/// rollout is under way) and those whose traffic is split or mirrored between versions right now
/// (seen the moment a rollout's first weights arrive, before this instance reads the rollout
/// itself).
pub fn report(proxy: &Proxy, wanted: &[String], scale: BTreeMap<String, Load>, now_ms: u64) -> Report {
    let snap = proxy.snapshot();
    let services = snap
        .services()
        .filter(|s| {
            s.versions().next().is_some()
                && (wanted.iter().any(|w| **w == *s.name)
                    || s.versions().filter(|(_, w)| *w > 0).count() > 1
                    || s.spec.mirror.is_some())
        })
        .map(|s| {
            let mut versions: BTreeMap<String, Counts> = s
                .versions()
                .map(|(v, _)| (v.to_string(), Counts::of(&proxy.version_stats(&s.name, v))))
                .collect();
            if let Some(m) = &s.spec.mirror {
                let copies = Counts::of(&proxy.mirror_stats(&s.name, &m.version));
                versions.insert(mirrored(&m.version), copies);
            }
            (s.name.to_string(), versions)
        })
        .collect();
    Report {
        at_ms: now_ms,
        services,
        scale,
        rps: 0.0,
    }
}

/// The report's entry for the copies mirrored to `version` (not a version name: those have no
/// spaces).
pub fn mirrored(version: &str) -> String {
    format!("{version} (mirrored)")
}

/// The report entry a rollout's step judges the canary on: its copies in a shadow step, its
/// live answers otherwise.
pub fn canary_key(state: &crate::rollout::RolloutState) -> String {
    let spec = &state.spec;
    if spec.is_shadow(state.step) {
        mirrored(&spec.canary)
    } else {
        spec.canary.clone()
    }
}

/// Where an instance's figures live.
pub fn key(keys: &Keys, instance: &str) -> String {
    keys.figures(instance)
}

/// What one read of `<prefix>instances/` tells: each live instance's served revision, and the
/// reports.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    /// (instance, the etcd revision it serves).
    pub revisions: Vec<(String, i64)>,
    /// (instance, its latest report).
    pub reports: Vec<(String, Report)>,
}

/// Reads every instance record and report.
pub async fn read(client: &mut Client, keys: &Keys) -> Result<Fleet, String> {
    let mut fleet = Fleet::default();
    let records = client
        .get(keys.instance(""), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| e.to_string())?;
    for kv in records.kvs() {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(kv.value())
            && let Some(id) = v["id"].as_str()
        {
            fleet
                .revisions
                .push((id.to_string(), v["revision"].as_i64().unwrap_or(0)));
        }
    }
    let root = keys.figures("");
    let reports = client
        .get(root.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| e.to_string())?;
    for kv in reports.kvs() {
        let id = kv.key_str().ok().and_then(|k| k.strip_prefix(root.as_str()));
        if let (Some(id), Ok(r)) = (id, serde_json::from_slice::<Report>(kv.value())) {
            fleet.reports.push((id.to_string(), r));
        }
    }
    Ok(fleet)
}

/// Per instance, the counters a window began from: (canary, stable).
pub type Baselines = BTreeMap<String, (VersionStats, VersionStats)>;

/// Every reporting instance's counters for a service's canary and stable now: where a window
/// begins.
pub fn baselines(reports: &[(String, Report)], service: &str, canary: &str, stable: &str) -> Baselines {
    // An instance that does not report the service yet gets its baseline when it first does:
    // its counters then include everything before, which must not count.
    reports
        .iter()
        .filter_map(|(id, r)| {
            let versions = r.services.get(service)?;
            let of = |v: &str| versions.get(v).map(Counts::stats).unwrap_or_else(empty);
            Some((id.clone(), (of(canary), of(stable))))
        })
        .collect()
}

/// The fleet's figures for a service's canary and stable since the window's baselines, and the
/// instances left out for want of a recent report. An instance seen for the first time in the
/// window counts from then; one whose counters went back (a restart) counts from zero.
pub fn since(
    reports: &[(String, Report)],
    baselines: &mut Baselines,
    service: &str,
    canary: &str,
    stable: &str,
    now_ms: u64,
) -> (VersionStats, VersionStats, Vec<String>) {
    let mut sum_c = empty();
    let mut sum_s = empty();
    let mut stale = Vec::new();
    for (id, r) in reports {
        if r.is_stale(now_ms) {
            stale.push(id.clone());
            continue;
        }
        if !r.services.contains_key(service) {
            continue;
        }
        let of = |v: &str| {
            r.services
                .get(service)
                .and_then(|s| s.get(v))
                .map(Counts::stats)
                .unwrap_or_else(empty)
        };
        let (c, s) = (of(canary), of(stable));
        let base = baselines
            .entry(id.clone())
            .or_insert_with(|| (c.clone(), s.clone()));
        if c.requests < base.0.requests || s.requests < base.1.requests {
            *base = (empty(), empty());
        }
        add(&mut sum_c, &c.since(&base.0));
        add(&mut sum_s, &s.since(&base.1));
    }
    stale.sort();
    (sum_c, sum_s, stale)
}

fn empty() -> VersionStats {
    VersionStats {
        requests: 0,
        errors: 0,
        buckets: VERSION_BUCKETS.iter().map(|&le| (le, 0)).collect(),
    }
}

fn add(into: &mut VersionStats, more: &VersionStats) {
    into.requests += more.requests;
    into.errors += more.errors;
    for (i, b) in into.buckets.iter_mut().enumerate() {
        b.1 += more.buckets.get(i).map_or(0, |m| m.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` requests, `errors` of them errors, all taking `ms`.
    fn counts(n: u64, errors: u64, ms: f64) -> Counts {
        Counts::of(&cumulative(n, errors, ms))
    }

    fn cumulative(n: u64, errors: u64, ms: f64) -> VersionStats {
        VersionStats {
            requests: n,
            errors,
            buckets: VERSION_BUCKETS
                .iter()
                .map(|&le| (le, if ms / 1000.0 <= le { n } else { 0 }))
                .collect(),
        }
    }

    fn report(at_ms: u64, canary: Counts, stable: Counts) -> Report {
        Report {
            at_ms,
            services: BTreeMap::from([(
                "web".to_string(),
                BTreeMap::from([("v2".to_string(), canary), ("v1".to_string(), stable)]),
            )]),
            scale: BTreeMap::new(),
            ..Default::default()
        }
    }

    #[test]
    fn the_fleet_sums_deltas_merges_histograms_and_names_the_stale() {
        let mut base = Baselines::new();
        let now = 10_000;
        // The window begins: a and b have history, which does not count.
        let first = vec![
            (
                "a".to_string(),
                report(now, counts(100, 0, 2.0), counts(900, 0, 2.0)),
            ),
            (
                "b".to_string(),
                report(now, counts(50, 0, 2.0), counts(400, 0, 2.0)),
            ),
        ];
        let (c, s, stale) = since(&first, &mut base, "web", "v2", "v1", now);
        assert_eq!((c.requests, s.requests, stale.len()), (0, 0, 0));
        // Then a serves 80 more canary requests, fast and fine; b 20, all failing and slow;
        // c's last report is 5 s old.
        let later = vec![
            (
                "a".to_string(),
                report(now + 1000, counts(180, 0, 2.0), counts(1000, 0, 2.0)),
            ),
            (
                "b".to_string(),
                Report {
                    at_ms: now + 1000,
                    services: BTreeMap::from([(
                        "web".to_string(),
                        BTreeMap::from([
                            ("v2".to_string(), {
                                let mut x = cumulative(50, 0, 2.0);
                                add(&mut x, &cumulative(20, 20, 400.0));
                                Counts::of(&x)
                            }),
                            ("v1".to_string(), counts(400, 0, 2.0)),
                        ]),
                    )]),
                    scale: BTreeMap::new(),
                    ..Default::default()
                },
            ),
            (
                "c".to_string(),
                report(now - 4000, counts(5, 5, 1.0), counts(5, 0, 1.0)),
            ),
        ];
        let (c, s, stale) = since(&later, &mut base, "web", "v2", "v1", now + 1000);
        assert_eq!((c.requests, c.errors), (100, 20));
        assert_eq!(s.requests, 100);
        assert_eq!(stale, ["c"]);
        // The merged p99 is the slow one's: a fifth of the canary took 400 ms.
        assert!(c.quantile(0.99).unwrap() > 0.25, "{:?}", c.quantile(0.99));
        // a restarts: its counters go back, and count from zero.
        let restarted = vec![(
            "a".to_string(),
            report(now + 2000, counts(7, 0, 2.0), counts(10, 0, 2.0)),
        )];
        let (c, _, _) = since(&restarted, &mut base, "web", "v2", "v1", now + 2000);
        assert_eq!(c.requests, 7);
    }

    #[test]
    fn a_report_survives_json() {
        let r = report(5, counts(3, 1, 2.0), counts(4, 0, 2.0));
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains(r#""r":3"#), "{text}");
        assert_eq!(serde_json::from_str::<Report>(&text).unwrap(), r);
        let back = r.services["web"]["v2"].stats();
        assert_eq!(back.buckets.len(), VERSION_BUCKETS.len());
        assert_eq!(Counts::of(&back), r.services["web"]["v2"]);
        // 2 ms is the 6th bound: five zeros, the three requests, nothing after.
        assert_eq!(r.services["web"]["v2"].buckets, [0, 0, 0, 0, 0, 3]);
    }
}
