//! The `gantry` command. Thin: parse arguments, set up logging and signals, call the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

#[derive(Parser, Debug)]
#[command(
    name = "gantry",
    version,
    about = "A dynamic load-balancing HTTP reverse proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    },
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
                    table.routes().len(),
                    table.services().len()
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::FAILURE
            }
        };
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
            let opts = gantry::Options {
                embedded: Some((embedded.static_config, embedded.state)),
                listen: Some(listen),
                admin: Some(admin),
                ..Default::default()
            };
            (opts, true)
        }
        Command::Run {
            config,
            listen,
            admin,
        } => (
            gantry::Options {
                config,
                listen,
                admin,
                ..Default::default()
            },
            false,
        ),
        Command::Check { .. } => return ExitCode::FAILURE,
    };
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
    wait_for_signals(&running).await;
    info!("shutting down: draining in-flight requests");
    running.shutdown().await;
    backends_stop.cancel();
    info!("stopped");
    ExitCode::SUCCESS
}

/// SIGHUP reloads the config; SIGTERM and SIGINT return (and the caller drains).
async fn wait_for_signals(running: &gantry::Running) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                info!("SIGHUP: reloading the config file");
                running.reload();
            }
            _ = term.recv() => return,
            _ = int.recv() => return,
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
