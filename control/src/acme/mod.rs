//! Automatic HTTPS: certificates from ACME CAs for the hosts of routers that ask for them.
//!
//! The manager follows the live routing table. A host of a router with `tls = { resolver }` (or
//! a compact `https://` route, with the default resolver) is checked (`gantry_config::acme::
//! check_host`), then ordered at first sight, one certificate per host. The CA's challenge is
//! answered by the data plane (`gantry_proxy::acme::AcmeCerts`: an HTTP-01 token on plain-HTTP
//! entrypoints, a TLS-ALPN-01 certificate on TLS entrypoints), and the issued certificate is
//! served from the next handshake on. Certificates are renewed at two thirds of their lifetime
//! (less a random share, so a fleet's renewals spread); a failed order waits before the next
//! try, twice as long after each failure up to a cap, and never less than the CA's
//! `Retry-After`. A host no longer routed keeps its certificate until it expires, without
//! renewal. Certificates and the account are stored (`store`), so a restart orders nothing.

mod client;
pub mod fleet;
pub mod store;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gantry_config::acme::{AcmeResolver, KeyType, check_host};
use gantry_config::{Certificate, HostPattern};
use gantry_proxy::Proxy;
use gantry_proxy::acme::AcmeCerts;
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, ExternalAccountKey, Identifier, NewAccount, NewOrder,
    OrderStatus, RetryPolicy,
};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::client::{Http, RetryAfter};
use self::store::Storage;

/// At most this many orders run at once.
const CONCURRENT_ORDERS: usize = 4;
/// An order that has not produced a certificate by then has failed.
const ORDER_TIMEOUT: Duration = Duration::from_secs(180);

/// The certificate manager. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Acme {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    proxy: Arc<Proxy>,
    certs: Arc<AcmeCerts>,
    resolvers: Vec<Resolver>,
    names: Mutex<BTreeMap<String, Name>>,
    wake: Notify,
    limit: Semaphore,
    orders: IntCounterVec,
    expiry: IntGaugeVec,
    /// The etcd revision the ACME watch has delivered (with etcd).
    seen: std::sync::atomic::AtomicI64,
    seen_changed: Notify,
}

/// A host's failures as the fleet shares them.
#[derive(serde::Deserialize, Serialize)]
struct SharedFailure {
    failures: u32,
    /// Unix seconds.
    next_attempt: u64,
    last_error: String,
}

struct Resolver {
    spec: AcmeResolver,
    storage: Storage,
    /// The CA's roots for its own HTTPS (`ca`), read at start.
    ca: Option<Vec<u8>>,
    account: tokio::sync::Mutex<Option<Account>>,
    retry_after: RetryAfter,
    /// A rate-limit answer holds every order of the resolver until then.
    hold_until: Mutex<Option<SystemTime>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("name", &self.spec.name)
            .finish_non_exhaustive()
    }
}

/// What the manager knows of one host.
#[derive(Debug, Default)]
struct Name {
    resolver: Option<usize>,
    routers: Vec<String>,
    /// Still asked for by a router: renewed. Otherwise kept until it expires.
    routed: bool,
    /// Why Gantry will not order it (a wildcard, an IP, outside `allowed_domains`...).
    refused: Option<String>,
    ordering: bool,
    /// Another instance of the fleet holds the host's order lock.
    elsewhere: bool,
    cert: Option<Meta>,
    last_error: Option<String>,
    failures: u32,
    next_attempt: Option<SystemTime>,
}

#[derive(Clone, Debug)]
struct Meta {
    issuer: String,
    not_after: SystemTime,
    renew_at: SystemTime,
}

/// One host in the admin API.
#[derive(Clone, Debug, Serialize)]
pub struct NameView {
    pub name: String,
    pub source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolver: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routers: Vec<String>,
    /// `pending` (not ordered yet), `ordering`, `valid`, `failed` (waiting to try again),
    /// `refused` (never ordered, see `last_error`), `expired`.
    pub state: &'static str,
    pub routed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renew_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub failures: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<u64>,
}

/// Why an order failed, and whether the CA asked Gantry to slow down.
struct OrderError {
    message: String,
    rate_limited: bool,
}

/// The error and its causes ("client error (Connect): tcp connect error: Connection refused"),
/// which is what an operator needs.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message
}

impl From<instant_acme::Error> for OrderError {
    fn from(e: instant_acme::Error) -> Self {
        let message = with_causes(&e);
        let rate_limited = matches!(&e, instant_acme::Error::Api(p)
            if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:rateLimited"));
        Self {
            message,
            rate_limited,
        }
    }
}

impl From<rcgen::Error> for OrderError {
    fn from(e: rcgen::Error) -> Self {
        with_causes(&e).into()
    }
}

impl From<serde_json::Error> for OrderError {
    fn from(e: serde_json::Error) -> Self {
        with_causes(&e).into()
    }
}

impl From<String> for OrderError {
    fn from(message: String) -> Self {
        Self {
            message,
            rate_limited: false,
        }
    }
}

impl From<&str> for OrderError {
    fn from(message: &str) -> Self {
        message.to_string().into()
    }
}

impl Acme {
    /// The manager for `resolvers`, each with its storage. Installs the data plane's side in
    /// `proxy` (before the listeners start, so that TLS entrypoints offer `acme-tls/1`).
    pub fn new(
        proxy: Arc<Proxy>,
        resolvers: Vec<(AcmeResolver, Storage)>,
        registry: &Registry,
    ) -> Result<Self, String> {
        let http01 = resolvers.iter().any(|(r, _)| r.http01);
        let tls_alpn01 = resolvers.iter().any(|(r, _)| r.tls_alpn01);
        let fallback = self_signed(&["gantry-default-certificate.invalid"], None)?;
        let certs = Arc::new(AcmeCerts::new(http01, tls_alpn01, Some(fallback)));
        let _ = proxy.acme.set(certs.clone());
        let mut out = Vec::new();
        for (spec, storage) in resolvers {
            let ca = match &spec.ca {
                Some(path) => Some(
                    std::fs::read(path)
                        .map_err(|e| format!("acme.{}.ca: cannot read {path}: {e}", spec.name))?,
                ),
                None => None,
            };
            out.push(Resolver {
                spec,
                storage,
                ca,
                account: tokio::sync::Mutex::new(None),
                retry_after: RetryAfter::default(),
                hold_until: Mutex::new(None),
            });
        }
        let orders = prometheus::register_int_counter_vec_with_registry!(
            Opts::new(
                "gantry_acme_orders_total",
                "Certificate orders by resolver and outcome (issued, failed, rate_limited).",
            ),
            &["resolver", "outcome"],
            registry
        )
        .map_err(|e| e.to_string())?;
        let expiry = prometheus::register_int_gauge_vec_with_registry!(
            Opts::new(
                "gantry_tls_certificate_expiry_seconds",
                "Unix time at which a served certificate expires, by name and source (acme, file).",
            ),
            &["name", "source"],
            registry
        )
        .map_err(|e| e.to_string())?;
        Ok(Self {
            inner: Arc::new(Inner {
                proxy,
                certs,
                resolvers: out,
                names: Mutex::new(BTreeMap::new()),
                wake: Notify::new(),
                limit: Semaphore::new(CONCURRENT_ORDERS),
                orders,
                expiry,
                seen: std::sync::atomic::AtomicI64::new(0),
                seen_changed: Notify::new(),
            }),
        })
    }

    /// Follows the routing table until `stop` (call [`Acme::load_stored`] first). `changed`
    /// fires when a new table is live.
    pub async fn run(self, mut changed: tokio::sync::watch::Receiver<()>, stop: CancellationToken) {
        loop {
            let next = self.reconcile();
            let wait = next
                .and_then(|t| t.duration_since(SystemTime::now()).ok())
                .unwrap_or(Duration::from_secs(60))
                .min(Duration::from_secs(60));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.inner.wake.notified() => {}
                r = changed.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Every host the manager knows, ACME's first, then the configured certificates.
    pub fn view(&self) -> Vec<NameView> {
        let names = lock(&self.inner.names);
        let now = SystemTime::now();
        let mut out: Vec<NameView> = names
            .iter()
            .map(|(name, n)| NameView {
                name: name.clone(),
                source: "acme",
                resolver: n.resolver.map(|i| self.inner.resolvers[i].spec.name.clone()),
                routers: n.routers.clone(),
                state: if n.refused.is_some() {
                    "refused"
                } else if n.ordering {
                    "ordering"
                } else if n.elsewhere && n.cert.is_none() {
                    "ordering_elsewhere"
                } else {
                    match &n.cert {
                        Some(m) if m.not_after <= now => "expired",
                        Some(_) if n.failures == 0 => "valid",
                        _ if n.failures > 0 => "failed",
                        Some(_) => "valid",
                        None => "pending",
                    }
                },
                routed: n.routed,
                issuer: n.cert.as_ref().map(|m| m.issuer.clone()),
                not_after: n.cert.as_ref().map(|m| unix(m.not_after)),
                renew_at: n.cert.as_ref().filter(|_| n.routed).map(|m| unix(m.renew_at)),
                last_error: n.refused.clone().or_else(|| n.last_error.clone()),
                failures: n.failures,
                next_attempt: n
                    .next_attempt
                    .filter(|_| n.routed && n.refused.is_none())
                    .map(unix),
            })
            .collect();
        drop(names);
        out.extend(configured(&self.inner.proxy));
        out
    }

    /// Serves the stored certificates that have not expired.
    pub async fn load_stored(&self) {
        let now = SystemTime::now();
        for (i, r) in self.inner.resolvers.iter().enumerate() {
            let stored = match r.storage.certificates().await {
                Ok(s) => s,
                Err(e) => {
                    warn!(resolver = %r.spec.name, storage = %r.storage.describe(), error = %e, "cannot read stored certificates");
                    continue;
                }
            };
            for s in stored {
                match parse_issued(&s.name, s.chain, s.key) {
                    Ok((key, m)) if m.not_after > now => {
                        self.inner.certs.install(&s.name, key);
                        self.inner
                            .expiry
                            .with_label_values(&[&s.name, "acme"])
                            .set(unix(m.not_after) as i64);
                        let mut names = lock(&self.inner.names);
                        let n = names.entry(s.name.clone()).or_default();
                        n.resolver = Some(i);
                        n.next_attempt = Some(m.renew_at);
                        n.cert = Some(m);
                    }
                    Ok(_) => info!(name = %s.name, "stored certificate has expired; not served"),
                    Err(e) => {
                        warn!(name = %s.name, storage = %r.storage.describe(), error = %e, "stored certificate is unusable")
                    }
                }
            }
        }
        self.set_file_expiry();
    }

    fn set_file_expiry(&self) {
        for c in self.inner.proxy.snapshot().table.certs().certificates() {
            if let Some(m) = c.cert.first().and_then(|der| meta(der).ok()) {
                for n in c_names(c).split(',') {
                    self.inner
                        .expiry
                        .with_label_values(&[n, "file"])
                        .set(unix(m.not_after) as i64);
                }
            }
        }
    }

    /// Brings the hosts in line with the live table; starts the orders that are due. Returns
    /// when the next one is due.
    fn reconcile(&self) -> Option<SystemTime> {
        let wanted = self.wanted();
        let now = SystemTime::now();
        let mut due = Vec::new();
        let mut next: Option<SystemTime> = None;
        let mut names = lock(&self.inner.names);
        for n in names.values_mut() {
            n.routed = false;
        }
        for (name, (resolver, routers)) in wanted {
            let n = names.entry(name.clone()).or_default();
            n.routed = true;
            n.routers = routers;
            let refused = match resolver {
                Err(why) => Some(why),
                Ok(i) => {
                    n.resolver = Some(i);
                    check_host(&name, &self.inner.resolvers[i].spec.allowed_domains).err()
                }
            };
            if refused != n.refused {
                if let Some(why) = &refused {
                    warn!(host = %name, routers = ?n.routers, reason = %why, "no certificate will be ordered for this host");
                }
                n.refused = refused;
            }
        }
        for (name, n) in names.iter_mut() {
            if let Some(m) = &n.cert
                && m.not_after <= now
                && self.inner.certs.issued(name).is_some()
            {
                info!(host = %name, "certificate expired; no longer served");
                self.inner.certs.remove(name);
                self.inner.expiry.remove_label_values(&[name, "acme"]).ok();
            }
            let Some(i) = n.resolver else { continue };
            if !n.routed || n.refused.is_some() || n.ordering {
                continue;
            }
            let held = *lock(&self.inner.resolvers[i].hold_until);
            let at = [n.next_attempt, held].into_iter().flatten().max().unwrap_or(now);
            if at <= now {
                n.ordering = true;
                due.push((name.clone(), i));
            } else {
                next = Some(next.map_or(at, |t| t.min(at)));
            }
        }
        drop(names);
        for (name, i) in due {
            let this = self.clone();
            tokio::spawn(async move { this.order(name, i).await });
        }
        next
    }

    /// The hosts routers ask certificates for, with their resolver (or why none) and routers.
    #[allow(clippy::type_complexity)]
    fn wanted(&self) -> BTreeMap<String, (Result<usize, String>, Vec<String>)> {
        let default = self.inner.resolvers.iter().position(|r| r.spec.default);
        let snapshot = self.inner.proxy.snapshot();
        let mut out: BTreeMap<String, (Result<usize, String>, Vec<String>)> = BTreeMap::new();
        for route in snapshot.table.routes() {
            let Some(tls) = &route.tls else { continue };
            let resolver = match &tls.resolver {
                None => match default {
                    Some(i) => Ok(i),
                    // TLS from configured certificates only.
                    None => continue,
                },
                Some(r) => self
                    .inner
                    .resolvers
                    .iter()
                    .position(|x| &x.spec.name == r)
                    .ok_or_else(|| {
                        format!(
                            "router {} names resolver {r:?}, which is not configured",
                            route.name
                        )
                    }),
            };
            for h in &route.matcher.hosts {
                let name = match h {
                    HostPattern::Exact(h) => h.clone(),
                    HostPattern::Wildcard(s) => format!("*.{s}"),
                };
                let e = out.entry(name).or_insert_with(|| (resolver.clone(), Vec::new()));
                e.1.push(route.name.to_string());
            }
        }
        out
    }

    async fn order(self, name: String, i: usize) {
        let r = &self.inner.resolvers[i];
        let Ok(_permit) = self.inner.limit.acquire().await else {
            return;
        };
        let mut turn = None;
        if let Some(f) = r.storage.fleet() {
            match self.take_turn(r, f, &name).await {
                Some(l) => turn = Some(l),
                None => {
                    self.inner.wake.notify_one();
                    return;
                }
            }
        }
        let result = match tokio::time::timeout(ORDER_TIMEOUT, self.obtain(r, &name, turn.as_mut())).await {
            Ok(r) => r,
            Err(_) => Err(OrderError::from("the order did not complete within 180 s")),
        };
        let now = SystemTime::now();
        let outcome = match result {
            Ok((chain, key_pem)) => match parse_issued(&name, chain.clone(), key_pem.clone()) {
                Ok((key, m)) => {
                    if let Err(e) = r.storage.save_certificate(&name, chain, key_pem).await {
                        warn!(host = %name, storage = %r.storage.describe(), error = %e, "cannot store the certificate; it is served but a restart will order it again");
                    }
                    if let Some(f) = r.storage.fleet() {
                        let _ = f.delete(&f.keys.acme_failures(&r.spec.name, &name)).await;
                    }
                    info!(host = %name, resolver = %r.spec.name, not_after = unix(m.not_after), "certificate issued");
                    self.serve(&name, i, key, m);
                    "issued"
                }
                Err(e) => self.failed(
                    &name,
                    r,
                    OrderError::from(format!("the CA's certificate is unusable: {e}")),
                    now,
                ),
            },
            Err(e) => self.failed(&name, r, e, now),
        };
        if outcome != "issued"
            && let Some(f) = r.storage.fleet()
        {
            // The fleet's back-off: the next instance to take the lock waits as long.
            let shared = lock(&self.inner.names).get(&name).map(|n| SharedFailure {
                failures: n.failures,
                next_attempt: n.next_attempt.map_or(0, unix),
                last_error: n.last_error.clone().unwrap_or_default(),
            });
            if let Some(v) = shared.and_then(|s| serde_json::to_vec(&s).ok()) {
                let _ = f.put(&f.keys.acme_failures(&r.spec.name, &name), v).await;
            }
        }
        if let Some(l) = turn {
            l.release().await;
        }
        self.inner
            .orders
            .with_label_values(&[&r.spec.name, outcome])
            .inc();
        self.inner.wake.notify_one();
    }

    /// Serves `key` for `name` and records it, unless what is served already lasts longer.
    fn serve(&self, name: &str, i: usize, key: Arc<CertifiedKey>, m: Meta) {
        let mut names = lock(&self.inner.names);
        let n = names.entry(name.to_string()).or_default();
        n.ordering = false;
        n.elsewhere = false;
        if n.cert.as_ref().is_some_and(|c| c.not_after >= m.not_after) {
            return;
        }
        self.inner.certs.install(name, key);
        self.inner
            .expiry
            .with_label_values(&[name, "acme"])
            .set(unix(m.not_after) as i64);
        n.resolver.get_or_insert(i);
        n.failures = 0;
        n.last_error = None;
        n.next_attempt = Some(m.renew_at);
        n.cert = Some(m);
    }

    /// With etcd: this instance's turn to order `name` (the lock), or `None` when it is not: another
    /// instance orders it, the fleet's back-off says wait, or a certificate is already stored.
    async fn take_turn(&self, r: &Resolver, f: &fleet::Fleet, name: &str) -> Option<fleet::Lock> {
        let i = self.inner.resolvers.iter().position(|x| std::ptr::eq(x, r))?;
        let now = SystemTime::now();
        let not_now = |why: Option<String>, elsewhere: bool, wait: Duration| {
            let mut names = lock(&self.inner.names);
            let n = names.entry(name.to_string()).or_default();
            n.ordering = false;
            n.elsewhere = elsewhere;
            if why.is_some() {
                n.last_error = why;
            }
            n.next_attempt = Some(n.next_attempt.map_or(now + wait, |t| t.max(now + wait)));
        };
        let held = match f.lock(&f.keys.acme_order(&r.spec.name, name)).await {
            Ok(Some(l)) => l,
            Ok(None) => {
                // Another instance orders it; its certificate arrives through the watch.
                not_now(None, true, fleet::LOCK_TTL / 2);
                return None;
            }
            Err(e) => {
                not_now(Some(format!("etcd: {e}")), false, Duration::from_secs(5));
                return None;
            }
        };
        if let Ok(Some(v)) = f.get(&f.keys.acme_cert(&r.spec.name, name)).await
            && let Ok(c) = serde_json::from_slice::<store::EtcdCert>(&v)
            && let Ok((key, m)) = parse_issued(name, c.chain.into_bytes(), c.key.into_bytes())
            && m.renew_at > now
        {
            self.serve(name, i, key, m);
            held.release().await;
            return None;
        }
        if let Ok(Some(v)) = f.get(&f.keys.acme_failures(&r.spec.name, name)).await
            && let Ok(shared) = serde_json::from_slice::<SharedFailure>(&v)
            && shared.next_attempt > unix(now)
        {
            {
                let mut names = lock(&self.inner.names);
                let n = names.entry(name.to_string()).or_default();
                n.ordering = false;
                n.failures = n.failures.max(shared.failures);
                n.last_error = Some(shared.last_error);
                n.next_attempt = Some(UNIX_EPOCH + Duration::from_secs(shared.next_attempt));
            }
            held.release().await;
            return None;
        }
        Some(held)
    }

    /// With etcd: follows the fleet's certificates and challenge answers until `stop`.
    pub async fn follow(self, f: fleet::Fleet, stop: CancellationToken) {
        loop {
            let why = tokio::select! {
                _ = stop.cancelled() => return,
                r = self.follow_session(&f) => r,
            };
            warn!(error = %why, "etcd: lost the ACME watch; resuming");
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn follow_session(&self, f: &fleet::Fleet) -> String {
        use etcd_client::{EventType, GetOptions, WatchOptions};
        let mut c = match f.client().await {
            Ok(c) => c,
            Err(e) => return e,
        };
        let prefix = f.keys.acme();
        let listed = match c
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
        {
            Ok(r) => r,
            Err(e) => return e.to_string(),
        };
        let revision = listed.header().map_or(0, |h| h.revision());
        for kv in listed.kvs() {
            if let Ok(k) = kv.key_str() {
                self.apply(f, k, Some(kv.value()));
            }
        }
        self.saw(revision);
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut stream = match c.watch(prefix.as_str(), Some(opts)).await {
            Ok(w) => w,
            Err(e) => return e.to_string(),
        };
        loop {
            match stream.message().await {
                Ok(Some(r)) => {
                    for e in r.events() {
                        let Some(kv) = e.kv() else { continue };
                        let Ok(k) = kv.key_str() else { continue };
                        match e.event_type() {
                            EventType::Put => self.apply(f, k, Some(kv.value())),
                            EventType::Delete => self.apply(f, k, None),
                        }
                    }
                    if let Some(h) = r.header() {
                        self.saw(h.revision());
                    }
                }
                Ok(None) => return "the watch ended".into(),
                Err(e) => return e.to_string(),
            }
        }
    }

    fn saw(&self, revision: i64) {
        self.inner
            .seen
            .fetch_max(revision, std::sync::atomic::Ordering::Relaxed);
        self.inner.seen_changed.notify_waiters();
    }

    /// Waits (briefly) until this instance's watch has delivered `revision`: by then the fleet's
    /// watches have it too, and a challenge answer put at it is served by every instance.
    async fn seen(&self, revision: i64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let notified = self.inner.seen_changed.notified();
            if self.inner.seen.load(std::sync::atomic::Ordering::Relaxed) >= revision {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// One ACME key from etcd (`None`: deleted).
    fn apply(&self, f: &fleet::Fleet, key: &str, value: Option<&[u8]>) {
        use gantry_discovery::etcd::keys::AcmeKey;
        let certs = &self.inner.certs;
        match (f.keys.parse_acme(key), value) {
            (Some(AcmeKey::HttpChallenge(token)), Some(v)) => {
                certs.set_token(token, &String::from_utf8_lossy(v));
            }
            (Some(AcmeKey::HttpChallenge(token)), None) => certs.remove_token(token),
            (Some(AcmeKey::AlpnChallenge(host)), Some(v)) => {
                match unhex(v).map(|d| self_signed(&[host], Some(&d))) {
                    Some(Ok(cert)) => certs.set_alpn(host, cert),
                    _ => warn!(key, "etcd: unusable TLS-ALPN-01 answer"),
                }
            }
            (Some(AcmeKey::AlpnChallenge(host)), None) => certs.remove_alpn(host),
            (Some(AcmeKey::Cert(resolver, host)), Some(v)) => {
                let Some(i) = self.inner.resolvers.iter().position(|r| r.spec.name == resolver) else {
                    return;
                };
                let parsed = serde_json::from_slice::<store::EtcdCert>(v)
                    .map_err(|e| e.to_string())
                    .and_then(|c| parse_issued(host, c.chain.into_bytes(), c.key.into_bytes()));
                match parsed {
                    Ok((k, m)) if m.not_after > SystemTime::now() => self.serve(host, i, k, m),
                    Ok(_) => {}
                    Err(e) => warn!(key, error = %e, "etcd: unusable stored certificate"),
                }
            }
            _ => {}
        }
    }

    fn failed(&self, name: &str, r: &Resolver, e: OrderError, now: SystemTime) -> &'static str {
        let mut names = lock(&self.inner.names);
        let n = names.entry(name.to_string()).or_default();
        n.failures = n.failures.saturating_add(1);
        let mut wait = backoff(r.spec.retry_initial, r.spec.retry_max, n.failures);
        let retry_after = lock(&r.retry_after).take();
        if let Some(at) = retry_after
            && let Ok(d) = at.duration_since(now)
        {
            wait = wait.max(d);
        }
        if e.rate_limited {
            *lock(&r.hold_until) = Some(now + wait);
        }
        warn!(host = %name, resolver = %r.spec.name, failures = n.failures, retry_in_s = wait.as_secs(), error = %e.message, "certificate order failed");
        n.last_error = Some(e.message);
        n.next_attempt = Some(now + wait);
        n.ordering = false;
        if e.rate_limited { "rate_limited" } else { "failed" }
    }

    /// Runs one order for `name`: the chain and the key, PEM.
    async fn obtain(
        &self,
        r: &Resolver,
        name: &str,
        mut turn: Option<&mut fleet::Lock>,
    ) -> Result<(Vec<u8>, Vec<u8>), OrderError> {
        let account = self.account(r).await?;
        let keys = r
            .storage
            .fleet()
            .map_or_else(|| gantry_discovery::etcd::Keys::new("/"), |f| f.keys.clone());
        let ids = [Identifier::Dns(name.to_string())];
        let mut order = account.new_order(&NewOrder::new(&ids)).await?;
        let mut answers = Answers {
            certs: &self.inner.certs,
            tokens: Vec::new(),
            alpn: Vec::new(),
        };
        let mut authorizations = order.authorizations();
        while let Some(a) = authorizations.next().await {
            let mut a = a?;
            match a.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("the CA's authorization is {other:?}").into()),
            }
            let offers = |t: ChallengeType| a.challenges.iter().any(|c| c.r#type == t);
            let kind = if r.spec.http01 && offers(ChallengeType::Http01) {
                ChallengeType::Http01
            } else if r.spec.tls_alpn01 && offers(ChallengeType::TlsAlpn01) {
                ChallengeType::TlsAlpn01
            } else {
                return Err("the CA offers none of the challenges this resolver may answer".into());
            };
            let Some(mut challenge) = a.challenge(kind.clone()) else {
                return Err("the challenge went away".into());
            };
            let key_authorization = challenge.key_authorization();
            let (key, value) = match kind {
                ChallengeType::Http01 => {
                    self.inner
                        .certs
                        .set_token(&challenge.token, key_authorization.as_str());
                    answers.tokens.push(challenge.token.clone());
                    let key = |k: &gantry_discovery::etcd::Keys| k.acme_http_challenge(&challenge.token);
                    (key(&keys), key_authorization.as_str().as_bytes().to_vec())
                }
                _ => {
                    let digest = key_authorization.digest();
                    let cert = self_signed(&[name], Some(digest.as_ref()))?;
                    self.inner.certs.set_alpn(name, cert);
                    answers.alpn.push(name.to_string());
                    (keys.acme_alpn_challenge(name), hex(digest.as_ref()).into_bytes())
                }
            };
            // With a fleet, the CA may reach any instance: every one must have the answer
            // before the CA is told to look.
            if let Some(l) = turn.as_deref_mut() {
                let revision = l
                    .put(&key, value)
                    .await
                    .map_err(|e| format!("etcd: cannot publish the challenge answer: {e}"))?;
                self.seen(revision).await;
            }
            challenge.set_ready().await?;
        }
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(Duration::from_secs(90));
        let status = order.poll_ready(&retry).await?;
        if status != OrderStatus::Ready {
            let mut why = format!("the order is {status:?}");
            let mut authorizations = order.authorizations();
            while let Some(Ok(mut a)) = authorizations.next().await {
                if let Ok(state) = a.refresh().await {
                    for c in &state.challenges {
                        if let Some(e) = &c.error {
                            why = format!("{:?} validation failed: {e}", c.r#type);
                        }
                    }
                }
            }
            return Err(why.into());
        }
        drop(answers);
        let alg = match r.spec.key_type {
            KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        };
        let key = rcgen::KeyPair::generate_for(alg)?;
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()])?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&key)?;
        order.finalize_csr(csr.der()).await?;
        let chain = order.poll_certificate(&retry).await?;
        Ok((chain.into_bytes(), key.serialize_pem().into_bytes()))
    }

    /// The resolver's account: stored, or registered with the CA (and stored) the first time.
    async fn account(&self, r: &Resolver) -> Result<Account, OrderError> {
        let mut slot = r.account.lock().await;
        if let Some(a) = &*slot {
            return Ok(a.clone());
        }
        let http = || {
            Http::new(r.ca.as_deref(), r.retry_after.clone()).map(|h| Account::builder_with_http(Box::new(h)))
        };
        let stored = r
            .storage
            .account()
            .await
            .map_err(|e| format!("cannot read the stored account: {e}"))?;
        // Stored with the directory it belongs to: another CA means another account.
        let usable = stored
            .and_then(|b| serde_json::from_slice::<StoredAccount>(&b).ok())
            .filter(|s| s.directory == r.spec.directory);
        let account = match usable {
            Some(s) => http()?.from_credentials(s.credentials).await?,
            None => {
                let contact = r.spec.email.as_ref().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let eab = r
                    .spec
                    .eab
                    .as_ref()
                    .map(|e| ExternalAccountKey::new(e.kid.clone(), &e.hmac_key));
                let (account, credentials) = http()?
                    .create(
                        &NewAccount {
                            contact: &contacts,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        r.spec.directory.clone(),
                        eab.as_ref(),
                    )
                    .await?;
                let json = serde_json::to_vec(&StoredAccount {
                    directory: r.spec.directory.clone(),
                    credentials,
                })?;
                r.storage
                    .save_account(json)
                    .await
                    .map_err(|e| format!("cannot store the account: {e}"))?;
                info!(resolver = %r.spec.name, directory = %r.spec.directory, "ACME account registered");
                account
            }
        };
        *slot = Some(account.clone());
        Ok(account)
    }
}

#[derive(serde::Deserialize, Serialize)]
struct StoredAccount {
    directory: String,
    credentials: instant_acme::AccountCredentials,
}

/// The challenge answers an order put up, taken down when it ends however it ends.
struct Answers<'a> {
    certs: &'a AcmeCerts,
    tokens: Vec<String>,
    alpn: Vec<String>,
}

impl Drop for Answers<'_> {
    fn drop(&mut self) {
        for t in &self.tokens {
            self.certs.remove_token(t);
        }
        for n in &self.alpn {
            self.certs.remove_alpn(n);
        }
    }
}

/// The wait after the `failures`-th failure in a row: `initial`, doubled each time, at most
/// `max`, less up to a tenth at random (so that many hosts do not retry in step).
fn backoff(initial: Duration, max: Duration, failures: u32) -> Duration {
    let exp = initial.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    let d = exp.min(max);
    d.saturating_sub(d.mul_f64(fastrand::f64() * 0.1))
}

/// A self-signed certificate for `names`; with `acme_identifier`, the TLS-ALPN-01 answer
/// (RFC 8737: the digest of the key authorization in a critical extension).
fn self_signed(names: &[&str], acme_identifier: Option<&[u8]>) -> Result<Arc<CertifiedKey>, String> {
    let mut params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .map_err(|e| e.to_string())?;
    if let Some(digest) = acme_identifier {
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    }
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| e.to_string())?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| e.to_string())?;
    Ok(Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing)))
}

/// The configured certificates (`[tls]`), as the admin API lists them.
pub fn configured(proxy: &Proxy) -> Vec<NameView> {
    let now = SystemTime::now();
    let snapshot = proxy.snapshot();
    snapshot
        .table
        .certs()
        .certificates()
        .map(|c| {
            let meta = c.cert.first().and_then(|der| meta(der).ok());
            NameView {
                name: c_names(c),
                source: "file",
                resolver: None,
                routers: Vec::new(),
                state: if meta.as_ref().is_some_and(|m| m.not_after <= now) {
                    "expired"
                } else {
                    "valid"
                },
                routed: true,
                issuer: meta.as_ref().map(|m| m.issuer.clone()),
                not_after: meta.map(|m| unix(m.not_after)),
                renew_at: None,
                last_error: None,
                failures: 0,
                next_attempt: None,
            }
        })
        .collect()
}

/// A certificate chain and key as issued: the served key and what the manager tracks.
fn parse_issued(name: &str, chain: Vec<u8>, key: Vec<u8>) -> Result<(Arc<CertifiedKey>, Meta), String> {
    let c = Certificate::from_pem(&format!("{name}.pem"), chain, &format!("{name}.key"), key)?;
    let leaf = c.key.cert.first().ok_or("empty chain")?;
    let m = meta(leaf)?;
    if !c.names.iter().any(|n| n == name) {
        return Err(format!("the certificate does not name {name}"));
    }
    Ok((c.key, m))
}

fn meta(der: &CertificateDer<'_>) -> Result<Meta, String> {
    let (_, x) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let at = |t: i64| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    let not_before = at(x.validity().not_before.timestamp());
    let not_after = at(x.validity().not_after.timestamp());
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let jitter = lifetime.mul_f64(fastrand::f64() / 20.0);
    Ok(Meta {
        issuer: x.issuer().to_string(),
        not_after,
        renew_at: not_before + lifetime * 2 / 3 - jitter,
    })
}

/// The names of a configured certificate, comma-separated.
fn c_names(c: &CertifiedKey) -> String {
    c.cert
        .first()
        .and_then(|der| webpki_names(der).ok())
        .unwrap_or_default()
        .join(",")
}

fn webpki_names(der: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let (_, x) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                out.push(d.to_string());
            }
        }
    }
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(text).ok()?;
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_at_most_a_tenth_off() {
        let (i, max) = (Duration::from_secs(10), Duration::from_secs(100));
        for (failures, full) in [(1, 10), (2, 20), (3, 40), (4, 80), (5, 100), (40, 100)] {
            let d = backoff(i, max, failures);
            let full = Duration::from_secs(full);
            assert!(d <= full && d >= full.mul_f64(0.9), "{failures}: {d:?}");
        }
    }

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_lifetime_less_a_little() {
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2027, 1, 15);
        params.not_after = rcgen::date_time_ymd(2027, 4, 15);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let m = meta(cert.der()).unwrap();
        let not_before = UNIX_EPOCH + Duration::from_secs(1_799_971_200);
        let lifetime = Duration::from_secs(90 * 86400);
        assert_eq!(
            m.not_after,
            not_before + lifetime,
            "dates are read from the certificate"
        );
        let two_thirds = not_before + lifetime * 2 / 3;
        assert!(
            m.renew_at <= two_thirds && m.renew_at >= two_thirds - lifetime / 20,
            "{:?}",
            m.renew_at
        );
    }

    #[test]
    fn the_tls_alpn_answer_carries_the_critical_acme_identifier() {
        let digest = [7u8; 32];
        let cert = self_signed(&["a.test"], Some(&digest)).unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(&cert.cert[0]).unwrap();
        let oid = x509_parser::oid_registry::Oid::from(&[1, 3, 6, 1, 5, 5, 7, 1, 31]).unwrap();
        let ext = x
            .extensions()
            .iter()
            .find(|e| e.oid == oid)
            .expect("acmeIdentifier");
        assert!(ext.critical);
        assert!(ext.value.ends_with(&digest), "an OCTET STRING holding the digest");
        assert_eq!(webpki_names(&cert.cert[0]).unwrap(), ["a.test"]);
    }
}
