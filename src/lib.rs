//! Gantry: wires sources -> reconciler -> snapshot store -> proxy, plus the admin API.
//!
//! [`start`] binds every listener, makes the first routing table live, and returns a
//! [`Running`] handle; `main.rs` and the integration tests both drive Gantry through it.

pub mod admin;
pub mod demo;
pub mod tools;

pub use gantry_control::{fleet, rollout, scaler, scaling};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gantry_config::DEFAULT_ENTRYPOINT;
use gantry_config::{DesiredState, DockerConfig, Entrypoint, Errors, RoutingTable, StaticConfig};
use gantry_discovery::{FileSource, Outcome, Reconciler, SourceId, Update};
use gantry_proxy::{Proxy, ServerConfig, Shutdown};
use prometheus::Registry;
use tokio::net::TcpListener as Listener;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::admin::Admin;
use gantry_control::publish::Publisher;

/// How to start Gantry.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// The config file, watched for changes.
    pub config: Option<PathBuf>,
    /// A config given as values instead of a file (the demo's embedded config).
    pub embedded: Option<(StaticConfig, DesiredState)>,
    /// Sets the address of entrypoint `web` (created if the config has no such entrypoint).
    pub listen: Option<SocketAddr>,
    /// Overrides the admin address.
    pub admin: Option<SocketAddr>,
    /// Overrides the drain deadline of the config (`lifecycle.drain_timeout`).
    pub drain_timeout: Option<Duration>,
    /// Follow a Docker engine (`--docker`), with these settings over the config's `[docker]`.
    pub docker: Option<DockerFlags>,
    /// Follow a Docker Swarm's services (`--swarm`), over the config's `[swarm]`.
    pub swarm: Option<DockerFlags>,
    /// Follow an etcd prefix shared by a fleet of instances, and publish this instance there.
    pub etcd: Option<fleet::EtcdOptions>,
    /// The bearer token admin writes require; default: `GANTRY_ADMIN_TOKEN`, then the file
    /// named by `[admin] token_file`. Without one, admin writes are refused.
    pub admin_token: Option<String>,
    /// How often rollouts are judged (default 1 s).
    pub rollout_tick: Option<Duration>,
    /// With etcd: how long a dead driver keeps its rollouts before another instance takes
    /// them over (default 5 s).
    pub driver_ttl: Option<Duration>,
    /// How often scaled services' concurrency is sampled (default 100 ms) and recommendations
    /// made (default 1 s).
    pub scale_sample: Option<Duration>,
    pub scale_tick: Option<Duration>,
    /// `--access-log`: stdout, stderr or a file (over the config's `[access_log] path`).
    pub access_log: Option<String>,
    /// `--access-log-format` (over the config's `[access_log] format`).
    pub access_log_format: Option<gantry_config::access_log::LogFormat>,
}

/// The `--docker*` flags; each one set overrides the config file's `[docker]` section.
#[derive(Debug, Default, Clone)]
pub struct DockerFlags {
    pub endpoint: Option<String>,
    pub published: Option<bool>,
    pub network: Option<String>,
    /// `--docker-scale`: act on scaling recommendations.
    pub scale: Option<bool>,
}

#[derive(Debug)]
pub enum StartError {
    Config(Errors),
    Bind {
        what: String,
        addr: SocketAddr,
        error: std::io::Error,
    },
    Metrics(prometheus::Error),
    /// The access log's file cannot be opened.
    AccessLog(String, std::io::Error),
    /// An ACME resolver cannot be set up (its storage, its CA file).
    Acme(String),
    /// etcd refused the configured credentials.
    Etcd(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "invalid configuration:\n{e}"),
            StartError::Bind { what, addr, error } => write!(f, "cannot listen on {addr} ({what}): {error}"),
            StartError::Metrics(e) => write!(f, "metrics registry: {e}"),
            StartError::AccessLog(target, e) => write!(f, "cannot open the access log {target}: {e}"),
            StartError::Acme(e) => write!(f, "ACME: {e}"),
            StartError::Etcd(e) => write!(f, "etcd: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A running Gantry.
#[derive(Debug)]
pub struct Running {
    /// Bound address of every entrypoint, in entrypoint order.
    pub entrypoints: Vec<(String, SocketAddr)>,
    pub admin_addr: SocketAddr,
    pub proxy: Arc<Proxy>,
    pub status: Arc<Publisher>,
    reload: Arc<Notify>,
    shutdown: Shutdown,
    tasks: JoinSet<()>,
    drain_timeout: Duration,
}

impl Running {
    /// The address of the first entrypoint.
    pub fn addr(&self) -> SocketAddr {
        self.entrypoints[0].1
    }

    /// Re-reads the config file now (what SIGHUP does).
    pub fn reload(&self) {
        self.reload.notify_one();
    }

    /// The generation of the live routing table.
    pub fn generation(&self) -> u64 {
        self.proxy.snapshot().generation
    }

    /// Stops accepting (new connections are refused), closes idle keep-alive connections, sends
    /// GOAWAY on HTTP/2, lets in-flight requests and WebSocket tunnels finish up to the drain
    /// deadline, and returns.
    pub async fn shutdown(mut self) {
        self.status.set_draining();
        self.shutdown.trigger();
        let proxy = self.proxy.clone();
        let drain = async {
            while self.tasks.join_next().await.is_some() {}
            proxy.tunnels_closed().await;
        };
        if tokio::time::timeout(self.drain_timeout, drain).await.is_err() {
            warn!("drain deadline reached; closing the remaining connections");
            self.tasks.abort_all();
        }
    }

    /// The signal that stops this instance (for signal handlers).
    pub fn shutdown_signal(&self) -> Shutdown {
        self.shutdown.clone()
    }
}

/// Reads, validates and compiles a config file without starting anything (`gantry check`).
pub fn check(path: &std::path::Path) -> Result<(StaticConfig, RoutingTable), Errors> {
    let source = FileSource::new(path);
    let v = source.read()?;
    let names: Vec<String> = v
        .static_config
        .entrypoints
        .iter()
        .map(|e| e.name.clone())
        .collect();
    let origin = source.origin();
    let table = RoutingTable::compile(&v.state, &names, &|_| origin.clone())?;
    Ok((v.static_config, table))
}

/// What Gantry runs with, decided before a socket is bound or a task spawned: the config's static
/// part with the command line over it.
#[derive(Debug, Clone)]
pub struct Settings {
    /// With `--listen` (entrypoint `web`, created if missing) and `--admin` applied.
    pub static_config: StaticConfig,
    /// The file's `[docker]` with the `--docker*` flags over it; `None`: no Docker source.
    pub docker: Option<DockerConfig>,
    /// The file's `[swarm]` with `--swarm` over it; `None`: no Swarm source.
    pub swarm: Option<DockerConfig>,
    /// The bearer token admin writes need: `--admin-token`/options, then `GANTRY_ADMIN_TOKEN`,
    /// then `[admin] token_file` (relative to the config file). `None`: writes are refused.
    pub admin_token: Option<String>,
    pub drain_timeout: Duration,
}

/// Resolves the settings from the options and the config's static part. Pure but for `read`,
/// which reads the admin token file, so tests can call it with a map.
pub fn resolve(
    opts: &Options,
    mut static_config: StaticConfig,
    env_token: Option<String>,
    read: &dyn Fn(&std::path::Path) -> std::io::Result<String>,
) -> Settings {
    if let Some(listen) = opts.listen {
        match static_config
            .entrypoints
            .iter_mut()
            .find(|e| e.name == DEFAULT_ENTRYPOINT)
        {
            Some(e) => e.address = listen,
            None => static_config
                .entrypoints
                .push(Entrypoint::new(DEFAULT_ENTRYPOINT, listen)),
        }
    }
    if let Some(admin) = opts.admin {
        static_config.admin = admin;
    }
    // The file's access log path is relative to the file; the flag's to the working directory.
    if let (Some(a), Some(dir)) = (
        &mut static_config.access_log,
        opts.config.as_ref().and_then(|c| c.parent()),
    ) && let gantry_config::access_log::LogTarget::File(p) = &mut a.target
        && std::path::Path::new(p.as_str()).is_relative()
    {
        *p = dir.join(p.as_str()).display().to_string();
    }
    static_config.access_log = gantry_config::access_log::AccessLog::with_flags(
        static_config.access_log.take(),
        opts.access_log.as_deref(),
        opts.access_log_format,
    );
    let engine = |flags: &Option<DockerFlags>, from_file: &Option<DockerConfig>| match (flags, from_file) {
        (None, None) => None,
        (flags, from_file) => {
            let mut cfg = from_file.clone().unwrap_or_default();
            if let Some(f) = flags {
                cfg.endpoint = f.endpoint.clone().or(cfg.endpoint);
                cfg.published = f.published.unwrap_or(cfg.published);
                cfg.network = f.network.clone().or(cfg.network);
                cfg.scale = f.scale.unwrap_or(cfg.scale);
            }
            Some(cfg)
        }
    };
    let docker = engine(&opts.docker, &static_config.docker);
    let swarm = engine(&opts.swarm, &static_config.swarm);
    let admin_token = opts
        .admin_token
        .clone()
        .or(env_token)
        .or_else(|| {
            let named = static_config.admin_token_file.as_ref()?;
            // Relative to the config file, like certificate paths.
            let f = match opts.config.as_ref().and_then(|c| c.parent()) {
                Some(dir) if named.is_relative() => dir.join(named),
                _ => named.clone(),
            };
            match read(&f) {
                Ok(t) => Some(t.trim().to_string()),
                Err(e) => {
                    warn!(file = %f.display(), error = %e, "cannot read the admin token; admin writes are refused");
                    None
                }
            }
        })
        .filter(|t| !t.is_empty());
    Settings {
        drain_timeout: opts.drain_timeout.unwrap_or(static_config.drain_timeout),
        static_config,
        docker,
        swarm,
        admin_token,
    }
}

pub async fn start(opts: Options) -> Result<Running, StartError> {
    // 1. The configuration at start: invalid means do not start.
    let file = opts.config.clone().map(FileSource::new);
    // Watch before the first read: a change made from here on is seen.
    let watch = file.clone().map(FileSource::watch);
    let (static_config, initial) = match (&file, &opts.embedded) {
        (Some(f), _) => {
            let v = f.read().map_err(StartError::Config)?;
            (v.static_config, v.state)
        }
        (None, Some((s, d))) => (s.clone(), d.clone()),
        (None, None) => (StaticConfig::default(), DesiredState::default()),
    };
    let started_with = static_config.clone();
    let settings = resolve(
        &opts,
        static_config,
        std::env::var("GANTRY_ADMIN_TOKEN").ok(),
        &|p| std::fs::read_to_string(p),
    );
    let static_config = settings.static_config.clone();
    let names: Vec<String> = static_config.entrypoints.iter().map(|e| e.name.clone()).collect();
    // Credentials etcd refuses will not get better by retrying: say so and do not start.
    if let Some(e) = &opts.etcd {
        e.endpoints.check_credentials().await.map_err(StartError::Etcd)?;
    }

    // 2. Sockets, before anything reports ready.
    let (listeners, admin_listener) = bind(&static_config).await?;

    // 3. Data plane and control plane; the first table is live before `start` returns.
    let registry = Registry::new();
    let proxy = Proxy::new(names.clone(), &registry).map_err(StartError::Metrics)?;
    if static_config.access_log.is_some() || static_config.tracing.is_some() {
        let spec = &static_config.access_log;
        let logger = gantry_proxy::access_log::AccessLogger::start(
            spec.clone(),
            static_config.tracing.clone(),
            &registry,
        )
        .map_err(|e| StartError::AccessLog(format!("{:?}", spec.as_ref().map(|s| &s.target)), e))?;
        let _ = proxy.access_log.set(logger.clone());
        // logrotate's convention: SIGUSR1 reopens the file.
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut usr1) = signal(SignalKind::user_defined1()) {
            tokio::spawn(async move {
                while usr1.recv().await.is_some() {
                    logger.reopen();
                }
            });
        }
    }
    let status = Arc::new(Publisher::new(proxy.clone(), &registry).map_err(StartError::Metrics)?);
    let mut reconciler = Reconciler::new(names, status.clone());
    let origin = match (&file, &opts.embedded) {
        (Some(f), _) => f.origin(),
        (None, Some(_)) => "embedded config".to_string(),
        (None, None) => "no config file".to_string(),
    };
    let first = Update::from_result(SourceId::File, origin, Ok(initial));
    if reconciler.apply(first) == Outcome::Rejected {
        let last = status.snapshot().last_error.map(|e| e.errors).unwrap_or_default();
        return Err(StartError::Config(last));
    }

    let shutdown = Shutdown::new();
    let reload = Arc::new(Notify::new());
    let mut tasks = JoinSet::new();
    let (updates_tx, updates_rx) = mpsc::channel::<Update>(64);
    // The reconciler ends when every source has ended; it is not part of the drain.
    tokio::spawn(reconciler.run(updates_rx));
    if let Some(w) = watch {
        tokio::spawn(w.run(started_with, updates_tx.clone(), reload.clone(), shutdown.token()));
    }
    let docker = settings.docker.clone();
    let scaling = scaling::Scaling::new(
        proxy.clone(),
        opts.scale_sample.unwrap_or(Duration::from_millis(100)),
        opts.scale_tick.unwrap_or(Duration::from_secs(1)),
        &registry,
    )
    .map_err(StartError::Metrics)?;
    if opts.etcd.is_some() {
        // Before anything reads the recommendations: in a fleet, one elected instance acts.
        scaling.join_fleet();
    }
    tokio::spawn(scaling.clone().run(shutdown.token()));
    let scaler = match docker {
        Some(cfg) => spawn_docker(&cfg, &proxy, &scaling, &registry, &updates_tx, &shutdown),
        None => None,
    };
    let mut scaler = scaler;
    if let Some(cfg) = &settings.swarm {
        // One scaler: the Swarm's when both are asked for (the admin API shows one history).
        if let Some(s) = spawn_scaler(cfg, true, &proxy, &scaling, &registry, &shutdown) {
            scaler = Some(s);
        }
        let source = gantry_discovery::SwarmSource {
            engine: engine(cfg),
            vip: cfg.vip,
        };
        info!(source = %source.origin(), "following swarm");
        tokio::spawn(source.run(updates_tx.clone(), shutdown.token()));
    }
    if let Some(e) = &opts.etcd {
        spawn_etcd(e, &registry, &updates_tx, &shutdown)?;
    }
    let instance = match &opts.etcd {
        Some(e) => fleet::instance_id(e, static_config.admin),
        None => fleet::hostname(),
    };
    let fleet_view = opts
        .etcd
        .clone()
        .map(|e| fleet::FleetView::new(e, instance.clone()));
    if let Some(e) = &opts.etcd {
        tokio::spawn(scaling::publish_to_etcd(
            scaling.clone(),
            e.endpoints.clone(),
            gantry_discovery::etcd::Keys::new(&e.prefix),
            instance.clone(),
            Duration::from_secs(10),
            shutdown.token(),
        ));
        tokio::spawn(scaling::lead(
            scaling.clone(),
            e.endpoints.clone(),
            gantry_discovery::etcd::Keys::new(&e.prefix),
            instance.clone(),
            shutdown.token(),
        ));
    }
    let rollouts = spawn_rollouts(
        &opts,
        &static_config,
        &proxy,
        instance.clone(),
        updates_tx,
        &registry,
        &shutdown,
    )?;
    let admin_token = settings.admin_token.clone();
    // Before the entrypoints: TLS entrypoints offer acme-tls/1 when a resolver answers it.
    let acme = spawn_acme(
        &opts,
        &static_config,
        &proxy,
        &status,
        &registry,
        &shutdown,
        instance,
    )
    .await?;

    let entrypoints = serve_entrypoints(&static_config, listeners, &proxy, &shutdown, &mut tasks)?;
    let admin_addr = admin_listener.local_addr().map_err(|error| StartError::Bind {
        what: "admin".into(),
        addr: static_config.admin,
        error,
    })?;
    info!(addr = %admin_addr, "admin listening");
    let admin = Arc::new(Admin {
        proxy: proxy.clone(),
        status: status.clone(),
        registry,
        rollouts: rollouts.clone(),
        scaling: scaling.clone(),
        scaler,
        acme,
        token: admin_token,
        fleet: fleet_view,
    });
    tokio::spawn(admin.serve(admin_listener, shutdown.clone()));
    if let Some(e) = opts.etcd.clone() {
        // Part of the drain: the record goes (its lease is revoked) before the process exits.
        let record = fleet::publish_instance(
            e,
            status.clone(),
            fleet::Reported {
                proxy: proxy.clone(),
                rollouts: rollouts.clone(),
                scaling,
            },
            entrypoints.clone(),
            admin_addr,
            shutdown.token(),
        );
        tasks.spawn(record);
    }
    tokio::spawn(proxy.clone().maintain(shutdown.clone()));

    Ok(Running {
        entrypoints,
        admin_addr,
        proxy,
        status,
        reload,
        shutdown,
        tasks,
        drain_timeout: settings.drain_timeout,
    })
}

/// The certificate manager, when `[acme.*]` resolvers are configured. Paths (storage, CA file)
/// are relative to the config file.
async fn spawn_acme(
    opts: &Options,
    static_config: &StaticConfig,
    proxy: &Arc<Proxy>,
    status: &Arc<Publisher>,
    registry: &Registry,
    shutdown: &Shutdown,
    instance: String,
) -> Result<Option<gantry_control::acme::Acme>, StartError> {
    use gantry_control::acme::{Acme, fleet::Fleet, store::Storage};
    if static_config.acme.is_empty() {
        return Ok(None);
    }
    let dir = opts
        .config
        .as_ref()
        .and_then(|c| c.parent())
        .unwrap_or(std::path::Path::new(""));
    // With etcd, storage defaults to etcd: the fleet shares orders, answers and certificates.
    let fleet = opts.etcd.as_ref().map(|e| Fleet {
        endpoints: e.endpoints.clone(),
        keys: gantry_discovery::etcd::Keys::new(&e.prefix),
        instance,
    });
    let mut resolvers = Vec::new();
    for r in &static_config.acme {
        let mut r = r.clone();
        let storage = match (&r.storage, &fleet) {
            (Some(storage), _) => Storage::dir(&dir.join(storage), &r.name),
            (None, Some(f)) => Storage::Etcd(f.clone(), r.name.clone()),
            (None, None) => {
                return Err(StartError::Acme(format!(
                    "acme.{}.storage: name a directory to keep the account and certificates in (a restart must not order them again), or run with --etcd to keep them there",
                    r.name
                )));
            }
        };
        r.ca = r.ca.map(|c| dir.join(c).display().to_string());
        resolvers.push((r, storage));
    }
    let acme = Acme::new(proxy.clone(), resolvers, registry).map_err(StartError::Acme)?;
    // Stored certificates serve from the first handshake.
    acme.load_stored().await;
    if let Some(f) = fleet.filter(|_| static_config.acme.iter().any(|r| r.storage.is_none())) {
        tokio::spawn(acme.clone().follow(f, shutdown.token()));
    }
    tokio::spawn(acme.clone().run(status.subscribe(), shutdown.token()));
    Ok(Some(acme))
}

/// The etcd source: the fleet's shared configuration.
fn spawn_etcd(
    e: &fleet::EtcdOptions,
    registry: &Registry,
    updates: &mpsc::Sender<Update>,
    shutdown: &Shutdown,
) -> Result<(), StartError> {
    let source = gantry_discovery::etcd::EtcdSource {
        endpoints: e.endpoints.clone(),
        prefix: gantry_discovery::etcd::normalize_prefix(&e.prefix),
        metrics: Some(
            gantry_discovery::etcd::source::EtcdMetrics::new(registry).map_err(StartError::Metrics)?,
        ),
    };
    let security = e.endpoints.security();
    info!(
        endpoints = %e.endpoints.join(","),
        prefix = %source.prefix,
        tls = security.tls(),
        user = security.user().unwrap_or("-"),
        "following etcd"
    );
    tokio::spawn(source.run(updates.clone(), shutdown.token()));
    Ok(())
}

/// The rollout driver (in etcd with a fleet, else in memory) and the file's rollouts. Takes the
/// last sender of updates: with the local backing, the reconciler lives as long as it does.
fn spawn_rollouts(
    opts: &Options,
    static_config: &StaticConfig,
    proxy: &Arc<Proxy>,
    instance: String,
    updates: mpsc::Sender<Update>,
    registry: &Registry,
    shutdown: &Shutdown,
) -> Result<Arc<rollout::Rollouts>, StartError> {
    let backing = match &opts.etcd {
        Some(e) => rollout::Backing::Etcd(rollout::EtcdBacking {
            endpoints: e.endpoints.clone(),
            keys: gantry_discovery::etcd::Keys::new(&e.prefix),
            lease_ttl: opts.driver_ttl.unwrap_or(Duration::from_secs(5)),
        }),
        // The admin API's and rollouts' weights: the reconciler lives as long as they do.
        None => rollout::Backing::Local(updates),
    };
    let rollouts = rollout::Rollouts::new(
        proxy.clone(),
        instance,
        backing,
        opts.rollout_tick.unwrap_or(Duration::from_secs(1)),
        registry,
    )
    .map_err(StartError::Metrics)?;
    tokio::spawn(rollouts.clone().run(shutdown.token()));
    for spec in static_config.rollouts.clone() {
        let r = rollouts.clone();
        tokio::spawn(async move {
            let service = spec.service.clone();
            if let Err(why) = r.declare(spec).await {
                warn!(%service, "rollout from the config file not started: {why}");
            }
        });
    }
    Ok(rollouts)
}

/// Binds every entrypoint and the admin listener, before anything reports ready.
async fn bind(static_config: &StaticConfig) -> Result<(Vec<(String, Listener)>, TcpListener), StartError> {
    let mut listeners: Vec<(String, Listener)> = Vec::new();
    for ep in &static_config.entrypoints {
        let l = TcpListener::bind(ep.address)
            .await
            .map_err(|error| StartError::Bind {
                what: format!("entrypoint {}", ep.name),
                addr: ep.address,
                error,
            })?;
        listeners.push((ep.name.clone(), l));
    }
    let admin_listener = TcpListener::bind(static_config.admin)
        .await
        .map_err(|error| StartError::Bind {
            what: "admin".into(),
            addr: static_config.admin,
            error,
        })?;
    if !static_config.admin.ip().is_loopback() {
        warn!(addr = %static_config.admin, "the admin API listens on a non-loopback address");
    }
    Ok((listeners, admin_listener))
}

/// The scaler of compose services (or with `swarm`, of Swarm services) when `cfg.scale` is on.
fn spawn_scaler(
    cfg: &DockerConfig,
    swarm: bool,
    proxy: &Arc<Proxy>,
    scaling: &Arc<scaling::Scaling>,
    registry: &Registry,
    shutdown: &Shutdown,
) -> Option<Arc<scaler::Scaler>> {
    if !cfg.scale {
        return None;
    }
    let what = if swarm { "swarm" } else { "docker" };
    match scaler::Scaler::new(
        cfg.endpoint.as_deref(),
        swarm,
        proxy.clone(),
        cfg.exposed_by_default,
        cfg.default_domain.clone(),
        registry,
    ) {
        Ok(s) => {
            info!("{what} scaler on: replicas follow the scaling recommendations");
            tokio::spawn(s.clone().run(scaling.clone(), shutdown.token()));
            Some(s)
        }
        Err(e) => {
            warn!(error = %e, "{what} scaler not started");
            None
        }
    }
}

/// The engine the Docker and Swarm sources follow, and how they read labels and addresses.
fn engine(cfg: &DockerConfig) -> gantry_discovery::docker::Engine {
    gantry_discovery::docker::Engine {
        endpoint: cfg.endpoint.clone(),
        options: gantry_discovery::docker::DockerOptions {
            address: if cfg.published {
                gantry_discovery::AddressMode::Published
            } else {
                gantry_discovery::AddressMode::ContainerIp
            },
            network: cfg.network.clone(),
            exposed_by_default: cfg.exposed_by_default,
            reserved_hosts: cfg.reserved_hosts.clone(),
            default_domain: cfg.default_domain.clone(),
        },
        grace: cfg.grace,
    }
}

/// The Docker source, and the Docker scaler when it is on.
fn spawn_docker(
    cfg: &DockerConfig,
    proxy: &Arc<Proxy>,
    scaling: &Arc<scaling::Scaling>,
    registry: &Registry,
    updates: &mpsc::Sender<Update>,
    shutdown: &Shutdown,
) -> Option<Arc<scaler::Scaler>> {
    let scaler = spawn_scaler(cfg, false, proxy, scaling, registry, shutdown);
    let source = gantry_discovery::DockerSource { engine: engine(cfg) };
    info!(source = %source.origin(), "following docker");
    tokio::spawn(source.run(updates.clone(), shutdown.token()));
    scaler
}

/// Serves every entrypoint on its listener; returns the bound addresses in entrypoint order.
fn serve_entrypoints(
    static_config: &StaticConfig,
    listeners: Vec<(String, Listener)>,
    proxy: &Arc<Proxy>,
    shutdown: &Shutdown,
    tasks: &mut JoinSet<()>,
) -> Result<Vec<(String, SocketAddr)>, StartError> {
    let mut entrypoints = Vec::new();
    for (i, (name, l)) in listeners.iter().enumerate() {
        let addr = l.local_addr().map_err(|error| StartError::Bind {
            what: format!("entrypoint {name}"),
            addr: static_config.entrypoints[i].address,
            error,
        })?;
        entrypoints.push((name.clone(), addr));
    }
    // `redirect_https` routers send clients to the first TLS entrypoint's port.
    let https_port = static_config
        .entrypoints
        .iter()
        .zip(&entrypoints)
        .find(|(ep, _)| ep.tls.is_some())
        .map(|(_, (_, addr))| addr.port());
    for (i, (name, l)) in listeners.into_iter().enumerate() {
        let ep = &static_config.entrypoints[i];
        let mut server = ServerConfig::for_entrypoint(ep);
        server.https_port = https_port;
        let tls = if ep.tls.is_some() { " (TLS)" } else { "" };
        info!(entrypoint = %name, addr = %entrypoints[i].1, "proxy listening{tls}");
        tasks.spawn(gantry_proxy::serve(proxy.clone(), l, i, server, shutdown.clone()));
    }
    Ok(entrypoints)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_file(_: &std::path::Path) -> std::io::Result<String> {
        Err(std::io::Error::new(std::io::ErrorKind::NotFound, "no file"))
    }

    #[test]
    fn listen_sets_the_web_entrypoint_and_creates_it_when_missing() {
        let addr: SocketAddr = "127.0.0.1:9999".parse().unwrap();
        let opts = Options {
            listen: Some(addr),
            ..Options::default()
        };
        let mut cfg = StaticConfig::default();
        cfg.entrypoints.clear();
        let s = resolve(&opts, cfg, None, &no_file);
        assert_eq!(s.static_config.entrypoints.len(), 1);
        assert_eq!(s.static_config.entrypoints[0].name, DEFAULT_ENTRYPOINT);
        assert_eq!(s.static_config.entrypoints[0].address, addr);
        let s = resolve(&opts, StaticConfig::default(), None, &no_file);
        assert_eq!(s.static_config.entrypoints.len(), 1);
        assert_eq!(s.static_config.entrypoints[0].address, addr);
    }

    #[test]
    fn docker_flags_override_the_file_and_no_docker_means_none() {
        let s = resolve(&Options::default(), StaticConfig::default(), None, &no_file);
        assert!(s.docker.is_none());
        let cfg = StaticConfig {
            docker: Some(DockerConfig {
                network: Some("from-file".into()),
                ..DockerConfig::default()
            }),
            ..StaticConfig::default()
        };
        let opts = Options {
            docker: Some(DockerFlags {
                published: Some(true),
                ..DockerFlags::default()
            }),
            ..Options::default()
        };
        let d = resolve(&opts, cfg, None, &no_file).docker.unwrap();
        assert!(d.published);
        assert_eq!(d.network.as_deref(), Some("from-file"));
    }

    #[test]
    fn the_admin_token_comes_from_options_then_env_then_the_file_relative_to_the_config() {
        let cfg = StaticConfig {
            admin_token_file: Some(PathBuf::from("token")),
            ..StaticConfig::default()
        };
        let opts = Options {
            config: Some(PathBuf::from("/etc/gantry/gantry.toml")),
            ..Options::default()
        };
        let read = |p: &std::path::Path| {
            assert_eq!(p, std::path::Path::new("/etc/gantry/token"));
            Ok(" from-file \n".to_string())
        };
        assert_eq!(
            resolve(&opts, cfg.clone(), None, &read).admin_token.as_deref(),
            Some("from-file")
        );
        assert_eq!(
            resolve(&opts, cfg.clone(), Some("env".into()), &read)
                .admin_token
                .as_deref(),
            Some("env")
        );
        let explicit = Options {
            admin_token: Some("opt".into()),
            ..opts.clone()
        };
        assert_eq!(
            resolve(&explicit, cfg.clone(), Some("env".into()), &read)
                .admin_token
                .as_deref(),
            Some("opt")
        );
        // An unreadable or empty token file means no token: writes are refused, never open.
        assert_eq!(resolve(&opts, cfg, None, &no_file).admin_token, None);
    }
}
