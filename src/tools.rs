//! Small programs that ship inside the `gantry` binary so that test images and compose examples
//! need nothing else: `gantry backend` (an HTTP backend that says who it is, with a version,
//! a delay and a period of failing health) and `gantry probe` (a blocking GET for Docker
//! HEALTHCHECKs, no runtime needed).

use std::net::SocketAddr;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;
use tracing::info;

pub async fn backend(
    listen: Option<SocketAddr>,
    version: Option<String>,
    unhealthy_for: Option<String>,
    delay: Option<String>,
) -> ExitCode {
    let port = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(80);
    let listen = listen.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], port)));
    let version = version
        .or_else(|| std::env::var("VERSION").ok())
        .unwrap_or_else(|| "v1".into());
    let unhealthy_until = match unhealthy_for.as_deref().map(gantry_config::duration::parse) {
        None => None,
        Some(Ok(d)) => Some(std::time::Instant::now() + d),
        Some(Err(e)) => {
            eprintln!("gantry backend: --unhealthy-for: {e}");
            return ExitCode::FAILURE;
        }
    };
    let delay = match delay
        .or_else(|| std::env::var("DELAY").ok())
        .as_deref()
        .map(gantry_config::duration::parse)
    {
        None => std::time::Duration::ZERO,
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            eprintln!("gantry backend: --delay: {e}");
            return ExitCode::FAILURE;
        }
    };
    let name = rustix::system::uname().nodename().to_string_lossy().into_owned();
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("gantry backend: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stop = CancellationToken::new();
    let b = crate::demo::DemoBackend {
        name,
        version,
        delay,
        unhealthy_until,
    };
    let connections = tokio_util::task::TaskTracker::new();
    if let Err(e) = b.serve(listener, stop.clone(), connections.clone()) {
        eprintln!("gantry backend: {e}");
        return ExitCode::FAILURE;
    }
    info!(%listen, "backend listening");
    use tokio::signal::unix::{SignalKind, signal};
    if let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    // Like a well-behaved service: no new connection, the requests in flight answered.
    stop.cancel();
    connections.close();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), connections.wait()).await;
    ExitCode::SUCCESS
}

/// A blocking HTTP/1.1 GET on loopback, for container health checks (no runtime needed).
pub fn probe(url: &str) -> ExitCode {
    use std::io::{Read, Write};
    let Some(rest) = url.strip_prefix("http://") else {
        eprintln!("gantry probe: only http:// URLs");
        return ExitCode::FAILURE;
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let timeout = std::time::Duration::from_secs(2);
    let addr = match std::net::ToSocketAddrs::to_socket_addrs(authority)
        .ok()
        .and_then(|mut a| a.next())
    {
        Some(a) => a,
        None => return ExitCode::FAILURE,
    };
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, timeout) else {
        return ExitCode::FAILURE;
    };
    let _ = s.set_read_timeout(Some(timeout));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    let mut head = [0u8; 12];
    if s.write_all(req.as_bytes()).is_err() || s.read_exact(&mut head).is_err() {
        return ExitCode::FAILURE;
    }
    match &head[9..10] {
        b"2" | b"3" => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}
