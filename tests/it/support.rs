//! Test fixtures kept in one place: backends with counters, Gantry in-process and as a process,
//! an HTTP client, and waiting with a deadline.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Polls `check` until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What a test backend does with a request.
#[derive(Clone, Debug)]
pub enum Behavior {
    /// Answers 200 with its name as the body.
    Name,
    /// Waits, then answers like `Name`.
    Delay(Duration),
    /// Reads the whole request body and answers with the number of bytes read.
    CountBody,
    /// Answers with this many bytes, streamed in 64 KiB chunks.
    Stream(u64),
    /// Answers with this status.
    Status(u16),
    /// Answers 500 to every n-th request, 200 with its name to the others.
    FailOneIn(u64),
    /// Answers 500 to requests carrying this header with this value, 200 with its name to the
    /// others.
    FailIfHeader(&'static str, &'static str),
    /// Reads the whole request body, then drops the connection without answering (a backend
    /// that dies mid-request).
    CloseAfterBody,
}

/// The head of a request as a backend saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
}

/// A real HTTP/1.1 server on 127.0.0.1 that counts what it receives.
#[derive(Clone)]
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    requests: Arc<AtomicU64>,
    /// `GET /health` answers 200 while this is true, 503 otherwise; not counted in `requests`.
    healthy: Arc<AtomicBool>,
    health_checks: Arc<AtomicU64>,
    in_flight: Arc<AtomicU64>,
    max_in_flight: Arc<AtomicU64>,
    last: Arc<Mutex<Option<Seen>>>,
    stop: tokio_util::sync::CancellationToken,
}

impl Backend {
    pub async fn start(name: &str, behavior: Behavior) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let b = Backend {
            name: name.to_string(),
            addr,
            requests: Arc::new(AtomicU64::new(0)),
            healthy: Arc::new(AtomicBool::new(true)),
            health_checks: Arc::new(AtomicU64::new(0)),
            in_flight: Arc::new(AtomicU64::new(0)),
            max_in_flight: Arc::new(AtomicU64::new(0)),
            last: Arc::new(Mutex::new(None)),
            stop: tokio_util::sync::CancellationToken::new(),
        };
        let me = b.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = me.stop.cancelled() => return,
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                };
                let me = me.clone();
                let behavior = behavior.clone();
                tokio::spawn(async move {
                    let stop = me.stop.clone();
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let me = me.clone();
                        let behavior = behavior.clone();
                        async move {
                            // A stopped backend answers nothing, also on a kept connection whose
                            // task has not yet seen the stop (hyper then closes it unanswered).
                            if me.stop.is_cancelled() {
                                return Err(std::io::Error::other("backend stopped"));
                            }
                            me.serve(req, behavior).await
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        b
    }

    async fn serve(
        &self,
        req: Request<Incoming>,
        behavior: Behavior,
    ) -> Result<Response<TestBody>, std::io::Error> {
        if req.uri().path() == "/health" {
            self.health_checks.fetch_add(1, Ordering::SeqCst);
            let mut r = Response::new(TestBody::full(self.name.clone()));
            if !self.healthy.load(Ordering::SeqCst) {
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            return Ok(r);
        }
        self.requests.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let resp = if let Behavior::CloseAfterBody = behavior {
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                let _ = frame;
            }
            Err(std::io::Error::other("closing without an answer"))
        } else {
            Ok(self.answer(req, behavior).await)
        };
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        resp
    }

    async fn answer(&self, req: Request<Incoming>, behavior: Behavior) -> Response<TestBody> {
        *self.last.lock().unwrap() = Some(Seen {
            method: req.method().to_string(),
            uri: req.uri().to_string(),
            headers: req.headers().clone(),
        });
        let mut resp = match behavior {
            Behavior::Name => Response::new(TestBody::full(self.name.clone())),
            Behavior::Delay(d) => {
                tokio::time::sleep(d).await;
                Response::new(TestBody::full(self.name.clone()))
            }
            Behavior::CountBody => {
                let mut body = req.into_body();
                let mut n = 0u64;
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame.unwrap().into_data() {
                        n += data.len() as u64;
                    }
                }
                Response::new(TestBody::full(n.to_string()))
            }
            Behavior::Stream(n) => Response::new(TestBody::zeros(n)),
            Behavior::CloseAfterBody => unreachable!("handled in serve"),
            Behavior::FailIfHeader(name, value) => {
                let fail = req.headers().get(name).is_some_and(|v| v == value);
                let mut r = Response::new(TestBody::full(self.name.clone()));
                if fail {
                    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                }
                r
            }
            Behavior::FailOneIn(n) => {
                let mut r = Response::new(TestBody::full(self.name.clone()));
                if self.requests() % n == 0 {
                    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                }
                r
            }
            Behavior::Status(s) => {
                let mut r = Response::new(TestBody::full(self.name.clone()));
                *r.status_mut() = StatusCode::from_u16(s).unwrap();
                r
            }
        };
        resp.headers_mut().insert("x-backend", self.name.parse().unwrap());
        resp
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// Makes `GET /health` pass or fail.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }

    pub fn health_checks(&self) -> u64 {
        self.health_checks.load(Ordering::SeqCst)
    }

    /// Requests being answered right now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests this backend was answering at once.
    pub fn max_in_flight(&self) -> u64 {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    pub fn last(&self) -> Seen {
        self.last
            .lock()
            .unwrap()
            .clone()
            .expect("the backend saw no request")
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// A body that is either small and complete, or a stream of zeros generated on the fly (so a
/// 200 MB transfer never holds 200 MB anywhere).
pub enum TestBody {
    Full(Option<Bytes>),
    Zeros { left: u64, chunk: Bytes },
}

impl TestBody {
    pub fn full(s: impl Into<Bytes>) -> Self {
        TestBody::Full(Some(s.into()))
    }
    pub fn zeros(n: u64) -> Self {
        TestBody::Zeros {
            left: n,
            chunk: Bytes::from(vec![0u8; 64 * 1024]),
        }
    }
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            TestBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            TestBody::Zeros { left, chunk } => {
                if *left == 0 {
                    return Poll::Ready(None);
                }
                let n = (*left).min(chunk.len() as u64) as usize;
                *left -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(chunk.slice(..n)))))
            }
        }
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            TestBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            TestBody::Full(None) => SizeHint::with_exact(0),
            TestBody::Zeros { left, .. } => SizeHint::with_exact(*left),
        }
    }
}

/// A real HTTP/1.1 client with a keep-alive pool.
pub fn client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A response read to its end.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn backend(&self) -> &str {
        self.headers.get("x-backend").map_or("", |v| v.to_str().unwrap())
    }
}

/// Sends `method path` to Gantry at `addr` with `Host: host` and extra headers.
pub async fn send(
    c: &Client<HttpConnector, TestBody>,
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, String> {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = c
        .request(req.body(TestBody::full("")).unwrap())
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| format!("{e:?}"))?.to_bytes();
    Ok(Answer {
        status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

pub async fn get(c: &Client<HttpConnector, TestBody>, addr: SocketAddr, host: &str, path: &str) -> Answer {
    send(c, addr, "GET", host, path, &[]).await.unwrap()
}

/// Gantry started in this process from a config file in a temporary directory.
pub struct Gantry {
    pub running: gantry::Running,
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Gantry {
    pub async fn start(config: &str) -> Self {
        Self::start_with(config, gantry::Options::default()).await
    }

    /// Starts with extra files (certificates, keys) written next to the config.
    pub async fn start_with_files(config: &str, files: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        Self::start_in(dir, config, gantry::Options::default()).await
    }

    pub async fn start_with(config: &str, opts: gantry::Options) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), config, opts).await
    }

    async fn start_in(dir: tempfile::TempDir, config: &str, opts: gantry::Options) -> Self {
        let path = dir.path().join("gantry.toml");
        std::fs::write(&path, config).unwrap();
        let opts = gantry::Options {
            config: Some(path.clone()),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            admin: Some("127.0.0.1:0".parse().unwrap()),
            ..opts
        };
        let running = gantry::start(opts)
            .await
            .unwrap_or_else(|e| panic!("gantry did not start: {e}"));
        Gantry { running, dir, path }
    }

    pub fn addr(&self) -> SocketAddr {
        self.running.addr()
    }

    /// The bound address of a named entrypoint.
    pub fn addr_of(&self, entrypoint: &str) -> SocketAddr {
        self.running
            .entrypoints
            .iter()
            .find(|(n, _)| n == entrypoint)
            .map(|(_, a)| *a)
            .unwrap()
    }

    /// Replaces the config file the way editors and config managers do: write aside, rename.
    pub fn write_config(&self, text: &str) {
        write_atomically(&self.path, text);
    }

    /// Writes a new config and waits until the generation moves past the current one.
    pub async fn reconfigure(&self, text: &str) -> u64 {
        let before = self.running.generation();
        self.write_config(text);
        eventually(Duration::from_secs(10), "the new config to be live", || async {
            let g = self.running.generation();
            (g > before).then_some(g)
        })
        .await
    }
}

pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension(format!("tmp{}", fastrand::u32(..)));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Fetches a URL from the admin API (or anywhere) with a throwaway client.
pub async fn admin_get(addr: SocketAddr, path: &str) -> Answer {
    get(&client(), addr, &addr.to_string(), path).await
}

pub async fn admin_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let a = admin_get(addr, path).await;
    assert_eq!(a.status, 200, "{path}: {}", a.body);
    serde_json::from_str(&a.body).unwrap()
}

/// Gantry as a real process (the `gantry` binary), for what only a process shows: signals,
/// exit codes, resident memory.
pub struct GantryProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl GantryProcess {
    /// Starts `gantry ARGS --listen 127.0.0.1:0 --admin 127.0.0.1:0` and waits for its
    /// "listening" log lines.
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_with_stdout(args, Stdio::null())
    }

    /// [`GantryProcess::spawn`] with its standard output sent to `stdout` (`Stdio::piped()`:
    /// taken from `child.stdout`).
    pub fn spawn_with_stdout(args: &[&str], stdout: Stdio) -> Self {
        Self::spawn_inner(args, &[], stdout, None)
    }

    /// [`GantryProcess::spawn`] with these environment variables set.
    pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_inner(args, env, Stdio::null(), None)
    }

    /// [`GantryProcess::spawn`], sending `signal` the moment a log line contains `when` (while
    /// Gantry is still starting).
    pub fn spawn_signalled(args: &[&str], when: &str, signal: rustix::process::Signal) -> Self {
        Self::spawn_inner(args, &[], Stdio::null(), Some((when, signal)))
    }

    fn spawn_inner(
        args: &[&str],
        env: &[(&str, &str)],
        stdout: Stdio,
        mut early: Option<(&str, rustix::process::Signal)>,
    ) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(args)
            .envs(env.iter().copied())
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            // GANTRY_TEST_LOG=debug (or a filter) shows more of the process's log on failures.
            .env(
                "GANTRY_LOG",
                std::env::var("GANTRY_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                log2.lock().unwrap().push(line);
            }
        });
        let mut found: HashMap<&str, SocketAddr> = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while found.len() < 2 {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| {
                    panic!(
                        "gantry did not report its addresses; log: {:?}",
                        log.lock().unwrap()
                    )
                });
            if let Some((when, signal)) = early
                && line.contains(when)
            {
                let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
                rustix::process::kill_process(pid, signal).unwrap();
                early = None;
            }
            for (what, key) in [("proxy listening", "proxy"), ("admin listening", "admin")] {
                if line.contains(what) {
                    let addr = line
                        .split("addr=")
                        .nth(1)
                        .unwrap()
                        .split_whitespace()
                        .next()
                        .unwrap();
                    found.insert(key, addr.parse().unwrap());
                }
            }
        }
        GantryProcess {
            child,
            addr: found["proxy"],
            admin: found["admin"],
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: rustix::process::Signal) {
        rustix::process::kill_process(rustix::process::Pid::from_raw(self.pid()).unwrap(), sig).unwrap();
    }

    /// A field of /proc/PID/status in KiB (VmRSS, VmHWM).
    pub fn status_kib(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }
}

impl Drop for GantryProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config with one catch-all router to one service over these backends.
pub fn one_service(backends: &[(&Backend, u32)], extra_service: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|(b, w)| format!("{{ url = \"{}\", weight = {w} }}", b.url()))
        .collect();
    format!(
        "[routers.all]\npath_prefix = \"/\"\nservice = \"svc\"\n\n[services.svc]\n{extra_service}\nbackends = [{}]\n",
        list.join(", ")
    )
}

/// Tests that hold many sockets need more than the usual 1024 descriptors.
pub fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
}

/// Sends raw bytes on a new connection and returns everything the server sends back until it
/// closes the connection (or `timeout` passes).
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(timeout, s.read_to_end(&mut out))
        .await
        .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// The status code of the first response in raw HTTP/1.1 text.
pub fn status_of(raw: &str) -> u16 {
    raw.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A certificate authority for tests, and leaf certificates it signs.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub cert_pem: String,
    pub cert_der: rustls_pki_types::CertificateDer<'static>,
}

/// A leaf certificate and its key, as PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: rustls_pki_types::CertificateDer<'static>,
}

impl TestCa {
    pub fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Gantry test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A rustls client that trusts this CA, offering these ALPN protocols.
    pub fn client(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert_der.clone()).unwrap();
        let mut cfg =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    }
}

/// Fails the test unless every request of a [`clients`] run was answered 200.
pub fn assert_none_failed((ok, failed): (usize, Vec<String>), during: &str) -> usize {
    assert!(
        failed.is_empty(),
        "{} of {} requests failed {during}: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(3)]
    );
    ok
}

/// `workers` clients sending `method` requests for `host` one after another until `stop`, at most
/// `max_each` each. Returns (answered 200, every failure). POSTs are never replayed by Gantry,
/// so a request cut by a stopping backend shows.
pub fn clients(
    addr: SocketAddr,
    method: &'static str,
    host: String,
    workers: usize,
    max_each: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    use std::sync::atomic::Ordering;
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let (stop, host) = (stop.clone(), host.clone());
            tasks.push(tokio::spawn(async move {
                let c = client();
                let (mut ok, mut failed) = (0, Vec::new());
                for _ in 0..max_each {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match send(&c, addr, method, &host, "/", &[]).await {
                        Ok(a) if a.status == 200 => ok += 1,
                        Ok(a) => failed.push(format!("{} {}", a.status, a.body.trim())),
                        Err(e) => failed.push(e),
                    }
                }
                (ok, failed)
            }));
        }
        let (mut ok, mut failed) = (0, Vec::new());
        for t in tasks {
            let (o, f) = t.await.unwrap();
            ok += o;
            failed.extend(f);
        }
        (ok, failed)
    })
}
