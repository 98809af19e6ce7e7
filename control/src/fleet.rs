//! Gantry in a fleet sharing one etcd: each instance's own record under `<prefix>instances/`,
//! and `gantry register`, which keeps a workload that is not a container registered.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use gantry_config::Errors;
use gantry_config::backend::{FileBackend, validate_backend};
use gantry_config::check::check_name;
use gantry_config::compact::{compact_route, route_service_name};
use gantry_discovery::etcd::Endpoints;
use gantry_discovery::etcd::Keys;
use gantry_discovery::etcd::lease::{Keep, keep};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::publish::Publisher;
use crate::time::unix_secs;

/// How long an instance record outlives its instance.
pub const INSTANCE_TTL: Duration = Duration::from_secs(10);

/// `--etcd` (with its TLS and credentials), `--etcd-prefix`, `--instance-id`.
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    pub endpoints: Endpoints,
    pub prefix: String,
    /// Default: `<host name>-<admin port>`.
    pub instance_id: Option<String>,
}

/// This instance's id in the fleet: `--instance-id`, or `<host name>-<admin port>`.
pub fn instance_id(opts: &EtcdOptions, admin: SocketAddr) -> String {
    opts.instance_id
        .clone()
        .unwrap_or_else(|| format!("{}-{}", hostname(), admin.port()))
}

pub fn hostname() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

/// What an instance says about itself: the etcd revision its live table was built from, so
/// that the platform can tell when a change has reached every instance.
fn record(
    id: &str,
    status: &Publisher,
    entrypoints: &[(String, SocketAddr)],
    admin: SocketAddr,
    started: u64,
) -> String {
    json!({
        "id": id,
        "revision": status.etcd_revision(),
        "generation": status.generation(),
        "ready": status.is_ready() && !status.is_draining(),
        "entrypoints": entrypoints.iter().map(|(n, a)| (n.clone(), json!(a.to_string()))).collect::<serde_json::Map<_, _>>(),
        "admin": admin.to_string(),
        "version": env!("CARGO_PKG_VERSION"),
        "started_unix": started,
    })
    .to_string()
}

/// What an instance reports in its figures: the proxy's counters for the rollouts under way, and
/// the scaled services' load.
#[derive(Debug, Clone)]
pub struct Reported {
    pub proxy: Arc<gantry_proxy::Proxy>,
    pub rollouts: Arc<crate::rollout::Rollouts>,
    pub scaling: Arc<crate::scaling::Scaling>,
}

/// Keeps this instance's record under `<prefix>instances/<id>` up to date until `shutdown`,
/// then removes it; beside it, under the same lease, its figures (`<prefix>figures/<id>`, see
/// [`crate::figures`]) every [`crate::figures::REPORT_EVERY`].
pub async fn publish_instance(
    opts: EtcdOptions,
    status: Arc<Publisher>,
    reported: Reported,
    entrypoints: Vec<(String, SocketAddr)>,
    admin: SocketAddr,
    shutdown: CancellationToken,
) {
    let id = instance_id(&opts, admin);
    let keys = Keys::new(&opts.prefix);
    let key = keys.instance(&id);
    let figures_key = crate::figures::key(&keys, &id);
    let started = unix_secs();
    let mut rate = crate::figures::Rate::default();
    let mut value = || {
        // Only what drivers and the scaling publisher judge (and this instance's rate, for the
        // fleet view): idle, a report is a few bytes.
        let now = crate::time::unix_ms();
        let mut report = crate::figures::report(
            &reported.proxy,
            &reported.rollouts.active(),
            reported.scaling.loads(),
            now,
        );
        report.rps = rate.per_second(crate::figures::answered(&reported.proxy), now);
        vec![
            (key.clone(), record(&id, &status, &entrypoints, admin, started)),
            (
                figures_key.clone(),
                serde_json::to_string(&report).unwrap_or_default(),
            ),
        ]
    };
    let (tx, rx) = watch::channel(value());
    let mut changed = status.subscribe();
    let follow = async {
        let mut every = tokio::time::interval(crate::figures::REPORT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut open = true;
        loop {
            tokio::select! {
                r = changed.changed(), if open => open = r.is_ok(),
                _ = every.tick() => {}
            }
            tx.send_replace(value());
        }
    };
    info!(%key, "etcd: publishing this instance's record and figures");
    let k = Keep {
        endpoints: opts.endpoints.clone(),
        ttl: INSTANCE_TTL,
        values: rx,
        ensure: Vec::new(),
    };
    tokio::select! {
        _ = keep(k, shutdown.clone()) => {}
        _ = follow => {}
    }
}

/// `GET /api/v1/fleet`: the instances sharing this etcd prefix, read from their records when
/// asked (the dashboard asks every few seconds), and the rollouts each drives.
pub struct FleetView {
    opts: EtcdOptions,
    here: String,
    client: tokio::sync::Mutex<Option<etcd_client::Client>>,
}

impl std::fmt::Debug for FleetView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetView")
            .field("opts", &self.opts)
            .field("here", &self.here)
            .finish_non_exhaustive()
    }
}

impl FleetView {
    pub fn new(opts: EtcdOptions, here: String) -> Self {
        FleetView {
            opts,
            here,
            client: tokio::sync::Mutex::new(None),
        }
    }

    /// `{"etcd": true, "instance": <this one>, "instances": [...]}`; when etcd cannot be read,
    /// `"error"` says why and the list is empty.
    pub async fn view(&self) -> serde_json::Value {
        match tokio::time::timeout(Duration::from_secs(3), self.read()).await {
            Ok(Ok(instances)) => json!({"etcd": true, "instance": self.here, "instances": instances}),
            Ok(Err(e)) => {
                *self.client.lock().await = None;
                json!({"etcd": true, "instance": self.here, "instances": [], "error": e})
            }
            Err(_) => {
                *self.client.lock().await = None;
                json!({"etcd": true, "instance": self.here, "instances": [], "error": "etcd did not answer within 3 s"})
            }
        }
    }

    async fn read(&self) -> Result<Vec<serde_json::Value>, String> {
        use etcd_client::GetOptions;
        let mut slot = self.client.lock().await;
        let client = match slot.take() {
            Some(c) => slot.insert(c),
            None => slot.insert(self.opts.endpoints.connect_any().await?),
        };
        let keys = Keys::new(&self.opts.prefix);
        let records = client
            .get(keys.instance(""), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| e.to_string())?;
        let rollouts = client
            .get(keys.rollouts(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| e.to_string())?;
        let mut drivers: Vec<(String, String)> = rollouts
            .kvs()
            .iter()
            .filter_map(|kv| {
                let (service, what) = keys.parse_rollout(kv.key_str().ok()?)?;
                (what == gantry_discovery::etcd::RolloutKey::Driver)
                    .then(|| Some((kv.value_str().ok()?.to_string(), service.to_string())))?
            })
            .collect();
        let publisher = client
            .get(keys.leader("scaling"), None)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(id) = publisher.kvs().first().and_then(|kv| kv.value_str().ok()) {
            drivers.push((id.to_string(), "scaling".to_string()));
        }
        let root = keys.figures("");
        let reports = client
            .get(root.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| e.to_string())?;
        let now = crate::time::unix_ms();
        let rates: BTreeMap<String, f64> = reports
            .kvs()
            .iter()
            .filter_map(|kv| {
                let id = kv.key_str().ok()?.strip_prefix(root.as_str())?;
                let r: crate::figures::Report = serde_json::from_slice(kv.value()).ok()?;
                (!r.is_stale(now)).then(|| (id.to_string(), r.rps))
            })
            .collect();
        Ok(fleet_view(
            records
                .kvs()
                .iter()
                .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
                .collect(),
            &drivers,
            &rates,
            &self.here,
        ))
    }
}

/// Each instance record with what the view adds: `behind` (how many etcd revisions it is behind
/// the newest revision any instance serves), `this`, `drives` (the rollouts it drives, and
/// `scaling` when it publishes the fleet's replica recommendations), and from its last fresh
/// report `rps` (requests answered per second) and `share` (of the fleet's, 0..=1; null
/// without a fresh report, or while the fleet answers nothing).
fn fleet_view(
    records: Vec<serde_json::Value>,
    drivers: &[(String, String)],
    rates: &BTreeMap<String, f64>,
    here: &str,
) -> Vec<serde_json::Value> {
    let newest = records.iter().filter_map(|r| r["revision"].as_i64()).max();
    let total: f64 = rates.values().sum();
    let mut out: Vec<serde_json::Value> = records
        .into_iter()
        .map(|mut r| {
            let id = r["id"].as_str().unwrap_or_default().to_string();
            let behind = match (newest, r["revision"].as_i64()) {
                (Some(n), Some(rev)) => json!(n - rev),
                _ => serde_json::Value::Null,
            };
            let drives: Vec<String> = drivers
                .iter()
                .filter(|(by, _)| *by == id)
                .map(|(_, s)| match s.as_str() {
                    "scaling" => s.clone(),
                    _ => format!("rollout {s}"),
                })
                .collect();
            let rps = rates.get(&id).copied();
            let share = rps.filter(|_| total > 0.0).map(|x| x / total);
            if let Some(o) = r.as_object_mut() {
                o.insert("rps".into(), json!(rps));
                o.insert("share".into(), json!(share));
                o.insert("behind".into(), behind);
                o.insert("this".into(), json!(id == here));
                o.insert("drives".into(), json!(drives));
            }
            r
        })
        .collect();
    out.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    out
}

/// `gantry register`.
#[derive(Debug, Clone)]
pub struct Registration {
    pub endpoints: Endpoints,
    pub prefix: String,
    pub service: String,
    pub url: String,
    pub route: Option<String>,
    pub version: Option<String>,
    pub weight: Option<u32>,
    pub ttl: Duration,
}

/// A key and its value.
type Kv = (String, String);

/// The keys a registration writes: the backend (leased) and its routes (created if absent).
fn keys(r: &Registration) -> Result<(Kv, Vec<Kv>), Errors> {
    let mut errs = Errors::new();
    check_name(&mut errs, "gantry register", "--service", &r.service);
    let backend = FileBackend {
        url: r.url.clone(),
        weight: r.weight.map(i64::from),
        version: r.version.clone(),
    };
    let parsed = validate_backend(backend.clone(), "gantry register", "--url", &mut errs);
    let keys = Keys::new(&r.prefix);
    let mut routes = Vec::new();
    for item in r
        .route
        .iter()
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|i| !i.is_empty())
    {
        match compact_route(item) {
            Ok(route) => {
                let name = route_service_name(&route.host, route.path.as_deref());
                let value = json!({
                    "hosts": [route.host],
                    "path_prefix": route.path,
                    "redirect_https": route.https,
                    "service": r.service,
                });
                routes.push((keys.router(&name), value.to_string()));
            }
            Err(e) => errs.push("gantry register", "--route", format!("{item:?}: {e}")),
        }
    }
    let Some(parsed) = parsed.filter(|_| errs.is_empty()) else {
        return Err(errs);
    };
    // One key per address: registering the same address twice is one backend.
    let id = format!("{}:{}", parsed.url.host, parsed.url.port);
    let value = json!({"url": r.url, "weight": r.weight, "version": r.version});
    Ok(((keys.backend(&r.service, &id), value.to_string()), routes))
}

/// Registers until SIGTERM or SIGINT, then removes the backend (and the routes it created, if
/// it was the service's last backend).
pub async fn register(r: Registration) -> ExitCode {
    let (backend, routes) = match keys(&r) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("gantry register: {e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "gantry register: {} as a backend of {} at {} (lease TTL {}s){}",
        r.url,
        r.service,
        backend.0,
        r.ttl.as_secs().max(1),
        routes
            .iter()
            .map(|(k, _)| format!(", route {k}"))
            .collect::<String>()
    );
    let (_tx, rx) = watch::channel(vec![backend.clone()]);
    let stop = CancellationToken::new();
    let k = Keep {
        endpoints: r.endpoints.clone(),
        ttl: r.ttl,
        values: rx,
        ensure: routes.clone(),
    };
    let keeper = tokio::spawn(keep(k, stop.clone()));
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            eprintln!("gantry register: cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    }
    stop.cancel();
    let _ = keeper.await;
    if !routes.is_empty() {
        remove_routes_if_last(&r, &routes).await;
    }
    ExitCode::SUCCESS
}

/// Deletes the routes this registration created when no backend of the service is left, unless
/// someone changed them meanwhile.
async fn remove_routes_if_last(r: &Registration, routes: &[(String, String)]) {
    use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
    for endpoint in r.endpoints.iter() {
        let Ok(mut client) = r.endpoints.connect(endpoint).await else {
            continue;
        };
        let prefix = Keys::new(&r.prefix).backends(&r.service);
        let left = match client
            .get(
                prefix.as_str(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
        {
            Ok(resp) => resp.count(),
            Err(e) => {
                warn!(%endpoint, error = %e, "etcd: cannot count the service's backends");
                continue;
            }
        };
        if left > 0 {
            return;
        }
        for (k, v) in routes {
            let txn = Txn::new()
                .when([Compare::value(k.as_str(), CompareOp::Equal, v.as_str())])
                .and_then([TxnOp::delete(k.as_str(), None)]);
            if let Ok(resp) = client.txn(txn).await
                && resp.succeeded()
            {
                info!(key = %k, "etcd: the service's last backend left; route removed");
            }
        }
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fleet_view_names_laggards_and_drivers() {
        let records = vec![
            json!({"id": "b", "revision": 40, "ready": true}),
            json!({"id": "a", "revision": 42, "ready": true}),
            json!({"id": "c", "ready": false}),
        ];
        let drivers = vec![
            ("a".to_string(), "shop".to_string()),
            ("b".to_string(), "scaling".to_string()),
        ];
        let rates = BTreeMap::from([("a".to_string(), 300.0), ("b".to_string(), 100.0)]);
        let v = fleet_view(records, &drivers, &rates, "b");
        let ids: Vec<&str> = v.iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(v[0]["behind"], 0);
        assert_eq!(v[0]["drives"], json!(["rollout shop"]));
        assert_eq!(v[1]["behind"], 2);
        assert_eq!(v[1]["this"], true);
        assert_eq!(v[1]["drives"], json!(["scaling"]));
        assert!(v[2]["behind"].is_null());
        assert_eq!(
            (v[0]["share"].as_f64(), v[1]["share"].as_f64()),
            (Some(0.75), Some(0.25))
        );
        assert!(v[2]["share"].is_null() && v[2]["rps"].is_null());
    }

    fn reg(url: &str, route: Option<&str>) -> Registration {
        Registration {
            endpoints: vec!["http://127.0.0.1:2379".to_string()].into(),
            prefix: "/gantry/".into(),
            service: "blog".into(),
            url: url.into(),
            route: route.map(Into::into),
            version: Some("v2".into()),
            weight: Some(3),
            ttl: Duration::from_secs(10),
        }
    }

    #[test]
    fn a_registration_is_one_backend_key_and_its_routes() {
        let ((k, v), routes) = keys(&reg(
            "http://10.0.0.5:2368",
            Some("http://blog.test; https://www.test/blog/"),
        ))
        .unwrap();
        assert_eq!(k, "/gantry/backends/blog/10.0.0.5:2368");
        assert_eq!(v, r#"{"url":"http://10.0.0.5:2368","version":"v2","weight":3}"#);
        assert_eq!(routes[0].0, "/gantry/routers/blog.test");
        assert_eq!(
            routes[0].1,
            r#"{"hosts":["blog.test"],"path_prefix":null,"redirect_https":false,"service":"blog"}"#
        );
        assert_eq!(routes[1].0, "/gantry/routers/www.test_blog");
        assert!(
            routes[1].1.contains(r#""path_prefix":"/blog""#)
                && routes[1].1.contains(r#""redirect_https":true"#)
        );
    }

    #[test]
    fn bad_flags_are_reported_by_name() {
        let e = keys(&reg("ftp://x", Some("bad host!"))).unwrap_err().to_string();
        assert!(e.contains("gantry register: --url"), "{e}");
        assert!(e.contains("gantry register: --route: \"bad host!\""), "{e}");
    }
}
