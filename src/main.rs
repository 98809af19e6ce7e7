//! The `gantry` command. Thin: parse arguments, set up logging and signals, call the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// `gantry --version`: the package version and the commit it was built from.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("GANTRY_COMMIT"), ")");

#[derive(Parser, Debug)]
#[command(
    name = "gantry",
    version = VERSION,
    about = "A dynamic load-balancing HTTP reverse proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How to reach an etcd that requires TLS, client certificates or a user (`run` and `register`).
#[derive(clap::Args, Debug, Clone)]
struct EtcdSecurityFlags {
    /// PEM file of the CA that signed the etcd members' certificates (members are then https://
    /// URLs). https:// members without it are verified against the system's CAs.
    #[arg(long, value_name = "FILE")]
    etcd_ca: Option<PathBuf>,
    /// PEM client certificate, for members that require one (--client-cert-auth).
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    etcd_cert: Option<PathBuf>,
    /// PEM key of --etcd-cert.
    #[arg(long, value_name = "FILE")]
    etcd_key: Option<PathBuf>,
    /// The name the members' certificates must carry (default: each URL's host).
    #[arg(long, value_name = "NAME")]
    etcd_server_name: Option<String>,
    /// etcd user (authentication on). Its password comes from GANTRY_ETCD_PASSWORD or
    /// --etcd-password-file, never from a flag: flags show in the process list.
    #[arg(long, value_name = "NAME")]
    etcd_user: Option<String>,
    /// File holding the etcd user's password (one line; wins over GANTRY_ETCD_PASSWORD).
    #[arg(long, value_name = "FILE")]
    etcd_password_file: Option<PathBuf>,
}

impl EtcdSecurityFlags {
    /// The members with these settings, files read and checked.
    fn endpoints(self, urls: Vec<String>) -> Result<gantry_discovery::etcd::Endpoints, String> {
        use gantry_discovery::etcd::{Endpoints, Security, SecurityFiles};
        let password = match &self.etcd_password_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| format!("--etcd-password-file {}: {e}", p.display()))?
                    .trim_end_matches(['\n', '\r'])
                    .to_string(),
            ),
            None => std::env::var("GANTRY_ETCD_PASSWORD").ok(),
        };
        let security = Security::load(SecurityFiles {
            ca: self.etcd_ca.as_deref(),
            cert: self.etcd_cert.as_deref(),
            key: self.etcd_key.as_deref(),
            server_name: self.etcd_server_name.as_deref(),
            user: self.etcd_user.as_deref(),
            password,
        })?;
        Endpoints::new(urls, security)
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run with built-in backends: proxy on 127.0.0.1:8080, admin on 127.0.0.1:8081.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:8081")]
        admin: SocketAddr,
    },
    /// Run the proxy.
    Run {
        /// Config file (TOML), watched for changes; SIGHUP also reloads it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address of entrypoint `web` (default 0.0.0.0:8080, or the config's).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Admin API address (default 127.0.0.1:8081, or the config's).
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// Write an access log: stdout, stderr or a file (over the config's [access_log]).
        #[arg(long, value_name = "stdout|stderr|FILE")]
        access_log: Option<String>,
        /// The access log's format (implies --access-log stdout when that is not given).
        #[arg(long, value_name = "json|common|combined", value_parser = parse_log_format)]
        access_log_format: Option<gantry_config::access_log::LogFormat>,
        /// Follow a Docker engine: containers' labels become routes. ENDPOINT defaults to
        /// DOCKER_HOST, then unix:///var/run/docker.sock.
        #[arg(long, value_name = "ENDPOINT", num_args = 0..=1, default_missing_value = "")]
        docker: Option<String>,
        /// How to reach containers: `ip` (their address on a Docker network) or `published`
        /// (their ports published on the host).
        #[arg(long, value_parser = ["ip", "published"])]
        docker_address: Option<String>,
        /// The network whose container addresses to use (unless a container's
        /// gantry.docker.network label says otherwise).
        #[arg(long)]
        docker_network: Option<String>,
        /// Act on scaling recommendations: add and remove replicas of compose services whose
        /// containers carry scaling labels (gantry.scale.*, aliyun.scale).
        #[arg(long)]
        docker_scale: bool,
        /// Follow a Docker Swarm (on a manager node): services' labels become routes to their
        /// running tasks. ENDPOINT defaults to DOCKER_HOST, then unix:///var/run/docker.sock.
        #[arg(long, value_name = "ENDPOINT", num_args = 0..=1, default_missing_value = "")]
        swarm: Option<String>,
        /// Act on scaling recommendations on the swarm: set the replica count of services whose
        /// labels carry scaling settings (implies --swarm).
        #[arg(long)]
        swarm_scale: bool,
        /// Follow the configuration a fleet shares in etcd (members, comma-separated), and
        /// publish this instance under <prefix>instances/.
        #[arg(long, value_name = "URL,...", value_delimiter = ',')]
        etcd: Vec<String>,
        /// The etcd key prefix.
        #[arg(long, default_value = gantry_discovery::etcd::DEFAULT_PREFIX)]
        etcd_prefix: String,
        #[command(flatten)]
        etcd_security: EtcdSecurityFlags,
        /// This instance's name under <prefix>instances/ (default: <host name>-<admin port>).
        #[arg(long)]
        instance_id: Option<String>,
        /// With etcd: seconds a dead instance keeps driving its rollouts before another takes
        /// them over.
        #[arg(long, value_name = "SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
        driver_ttl: u64,
    },
    /// Register a backend that is not a container in etcd, under a lease kept alive until this
    /// command is stopped (SIGTERM, SIGINT): then the backend is removed at once; if this
    /// process dies, when the lease expires.
    Register {
        /// etcd members, comma-separated.
        #[arg(long, value_name = "URL,...", value_delimiter = ',', required = true)]
        etcd: Vec<String>,
        #[arg(long, default_value = gantry_discovery::etcd::DEFAULT_PREFIX)]
        etcd_prefix: String,
        #[command(flatten)]
        etcd_security: EtcdSecurityFlags,
        /// The service the backend belongs to.
        #[arg(long)]
        service: String,
        /// The backend, e.g. http://10.0.0.5:8080 (h2c:// for HTTP/2 without TLS).
        #[arg(long)]
        url: String,
        /// Route requests to the service: `[http://|https://]host[/path]`, several separated by
        /// `;` (the grammar of the aliyun.routing.port_* label). Created if absent.
        #[arg(long)]
        route: Option<String>,
        #[arg(long)]
        version: Option<String>,
        #[arg(long)]
        weight: Option<u32>,
        /// Lease time to live: seconds, or a duration such as "10s".
        #[arg(long, default_value = "10")]
        ttl: String,
    },
    /// A tiny HTTP backend (for demos and test containers): answers with its host name and
    /// version; `GET /health` says whether it is healthy.
    Backend {
        /// Default: 0.0.0.0:$PORT, or 0.0.0.0:80.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Default: $VERSION, or "v1".
        #[arg(long)]
        version: Option<String>,
        /// `GET /health` answers 503 for this long after start (e.g. "5s").
        #[arg(long)]
        unhealthy_for: Option<String>,
        /// Every answer (but `/health`) waits this long first, e.g. "100ms" (default: $DELAY,
        /// or none).
        #[arg(long)]
        delay: Option<String>,
    },
    /// Exit 0 if URL answers 2xx or 3xx within 2 s, 1 otherwise (a Docker HEALTHCHECK command).
    Probe { url: String },
    /// Validate a config file; exit non-zero with the field and the reason if it is invalid.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
}

fn init_logging() {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let spec = std::env::var("GANTRY_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_default();
    let filter: Targets = if spec.is_empty() {
        Targets::new().with_default(tracing::Level::INFO)
    } else {
        spec.parse()
            .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO))
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(filter)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Check { config } = &cli.command {
        return match gantry::check(config) {
            Ok((static_config, table)) => {
                println!(
                    "{}: ok ({} entrypoints, {} routers, {} services)",
                    config.display(),
                    static_config.entrypoints.len(),
                    table.route_count(),
                    table.service_count()
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::Probe { url } = &cli.command {
        return gantry::tools::probe(url);
    }
    init_logging();
    raise_fd_limit();
    // One worker asked for (TOKIO_WORKER_THREADS=1): tokio's current-thread scheduler does the
    // same work without work-stealing bookkeeping.
    let one_worker = std::env::var("TOKIO_WORKER_THREADS").is_ok_and(|v| v.trim() == "1");
    let mut builder = if one_worker {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gantry: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async_main(cli.command))
}

/// 128 random bits from the kernel, in hex.
fn random_token() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    if let Err(e) = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)) {
        error!("cannot read /dev/urandom for the admin token: {e}");
        std::process::exit(1);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn async_main(command: Command) -> ExitCode {
    let backends_stop = CancellationToken::new();
    let (opts, demo) = match command {
        Command::Demo { listen, admin } => {
            let embedded = match gantry::demo::backends_and_config(backends_stop.clone()).await {
                Ok(v) => v,
                Err(e) => {
                    error!("cannot start the demo backends: {e}");
                    return ExitCode::FAILURE;
                }
            };
            // Writes through the demo's admin API (weights, rollouts) need a token: the one in
            // GANTRY_ADMIN_TOKEN, or a fresh one shown here.
            let token = std::env::var("GANTRY_ADMIN_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
                .unwrap_or_else(random_token);
            info!("admin writes: TOKEN={token}; curl -H \"Authorization: Bearer $TOKEN\" ...");
            let opts = gantry::Options {
                embedded: Some((embedded.static_config, embedded.state)),
                listen: Some(listen),
                admin: Some(admin),
                admin_token: Some(token),
                ..Default::default()
            };
            (opts, true)
        }
        Command::Run {
            config,
            listen,
            admin,
            access_log,
            access_log_format,
            docker,
            docker_address,
            docker_network,
            docker_scale,
            swarm,
            swarm_scale,
            etcd,
            etcd_prefix,
            etcd_security,
            instance_id,
            driver_ttl,
        } => {
            let etcd = if etcd.is_empty() {
                None
            } else {
                match etcd_security.endpoints(etcd) {
                    Ok(e) => Some(e),
                    Err(e) => {
                        eprintln!("gantry run: {e}");
                        return ExitCode::from(2);
                    }
                }
            };
            let docker =
                (docker.is_some() || docker_address.is_some() || docker_network.is_some() || docker_scale)
                    .then(|| gantry::DockerFlags {
                        endpoint: docker.filter(|e| !e.is_empty()),
                        published: docker_address.map(|a| a == "published"),
                        network: docker_network,
                        scale: docker_scale.then_some(true),
                    });
            (
                gantry::Options {
                    config,
                    listen,
                    admin,
                    docker,
                    swarm: (swarm.is_some() || swarm_scale).then(|| gantry::DockerFlags {
                        endpoint: swarm.filter(|e| !e.is_empty()),
                        scale: swarm_scale.then_some(true),
                        ..Default::default()
                    }),
                    etcd: etcd.map(|endpoints| gantry::fleet::EtcdOptions {
                        endpoints,
                        prefix: etcd_prefix,
                        instance_id,
                    }),
                    driver_ttl: Some(Duration::from_secs(driver_ttl)),
                    access_log,
                    access_log_format,
                    ..Default::default()
                },
                false,
            )
        }
        Command::Backend {
            listen,
            version,
            unhealthy_for,
            delay,
        } => return gantry::tools::backend(listen, version, unhealthy_for, delay).await,
        Command::Register {
            etcd,
            etcd_prefix,
            etcd_security,
            service,
            url,
            route,
            version,
            weight,
            ttl,
        } => {
            let ttl = match ttl.parse::<u64>() {
                Ok(s) => std::time::Duration::from_secs(s),
                Err(_) => match gantry_config::duration::parse(&ttl) {
                    Ok(d) => d,
                    Err(e) => {
                        eprintln!("gantry register: --ttl: {e}");
                        return ExitCode::from(2);
                    }
                },
            };
            let endpoints = match etcd_security.endpoints(etcd) {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("gantry register: {e}");
                    return ExitCode::from(2);
                }
            };
            let r = gantry::fleet::Registration {
                endpoints,
                prefix: etcd_prefix,
                service,
                url,
                route,
                version,
                weight,
                ttl,
            };
            return gantry::fleet::register(r).await;
        }
        Command::Check { .. } | Command::Probe { .. } => return ExitCode::FAILURE,
    };
    // Before the listeners open: a SIGHUP (or SIGTERM) that arrives once Gantry answers must be
    // Gantry's to handle, not the default action's (which ends the process).
    let signals = Signals::install();
    let running = match gantry::start(opts).await {
        Ok(r) => r,
        Err(e) => {
            error!("{e}");
            eprintln!("gantry: {e}");
            return ExitCode::FAILURE;
        }
    };
    if demo {
        println!(
            "{}",
            gantry::demo::instructions(running.addr(), running.admin_addr)
        );
    }
    match signals {
        Some(s) => s.wait(&running).await,
        None => error!("cannot install signal handlers"),
    }
    info!("shutting down: draining in-flight requests");
    running.shutdown().await;
    backends_stop.cancel();
    info!("stopped");
    ExitCode::SUCCESS
}

/// The signals a running Gantry acts on, installed before it starts (a signal that arrives
/// meanwhile waits for `wait`).
struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Option<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Some(Self {
            hup: signal(SignalKind::hangup()).ok()?,
            term: signal(SignalKind::terminate()).ok()?,
            int: signal(SignalKind::interrupt()).ok()?,
        })
    }

    /// SIGHUP reloads the config; SIGTERM and SIGINT return (and the caller drains).
    async fn wait(mut self, running: &gantry::Running) {
        loop {
            tokio::select! {
                _ = self.hup.recv() => {
                    info!("SIGHUP: reloading the config file");
                    running.reload();
                }
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
            }
        }
    }
}

/// A proxy holds two descriptors per proxied connection; the usual soft limit of 1024 is far too
/// low. Raise it to the hard limit, as nginx's `worker_rlimit_nofile` and Go's runtime do.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            tracing::warn!(error = %e, "cannot raise the open-files limit");
        }
    }
}

fn parse_log_format(s: &str) -> Result<gantry_config::access_log::LogFormat, String> {
    gantry_config::access_log::LogFormat::parse(s)
        .ok_or_else(|| format!("{s:?}: use json, common or combined"))
}
