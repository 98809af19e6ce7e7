//! Clients that attack the connection rather than send a bad request: HTTP/2 frame floods and
//! resets, header-compression bombs, and clients that stop taking their responses. Each attack
//! runs against a real Gantry process with raw frames written by hand, while a well-behaved
//! client is served throughout; each test checks that the attacker's connection is closed or
//! throttled, that Gantry's resident memory stays bounded, and that the bystander got every
//! answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::task::JoinHandle;

use crate::support::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// `GET http://h/` in HPACK: three static-table entries and `:authority` as a literal.
const GET: &[u8] = &[0x82, 0x86, 0x84, 0x01, 0x01, b'h'];
/// `POST http://h/` with `content-length: 1` (a literal with the static table's name, index 28).
const POST_ONE_BYTE: &[u8] = &[0x83, 0x86, 0x84, 0x01, 0x01, b'h', 0x0f, 0x0d, 0x01, b'1'];

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// A raw HTTP/2 client: it writes any frame, well-formed or not.
struct RawH2 {
    r: FrameReader,
    w: OwnedWriteHalf,
}

impl RawH2 {
    /// Connects with prior knowledge, sends `settings`, and acknowledges the server's settings.
    async fn connect(addr: SocketAddr, settings: &[(u16, u32)]) -> Self {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        let (r, mut w) = s.into_split();
        let payload: Vec<u8> = settings
            .iter()
            .flat_map(|(id, v)| id.to_be_bytes().into_iter().chain(v.to_be_bytes()))
            .collect();
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &payload));
        w.write_all(&hello).await.unwrap();
        let mut r = FrameReader {
            r,
            hpack: loona_hpack::Decoder::new(),
        };
        loop {
            let f = r.read().await.expect("the server's SETTINGS");
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                break;
            }
        }
        w.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
        RawH2 { r, w }
    }
}

struct FrameReader {
    r: OwnedReadHalf,
    hpack: loona_hpack::Decoder<'static>,
}

/// What the server did to an attacking connection, read until it closed it.
#[derive(Debug, Default)]
struct Ended {
    /// The GOAWAY's error code, if one came.
    goaway: Option<u32>,
    /// Streams the server reset.
    resets: usize,
    /// The `:status` of each response, by stream.
    statuses: Vec<(u32, String)>,
    /// Bytes of DATA received.
    data: usize,
    /// The server closed the connection (rather than the read timing out).
    closed: bool,
}

impl FrameReader {
    /// The next frame; `None` once the connection is closed.
    async fn read(&mut self) -> Option<Frame> {
        let mut head = [0u8; 9];
        self.r.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0; len];
        self.r.read_exact(&mut payload).await.ok()?;
        Some(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        })
    }

    /// Reads until the server closes the connection or `timeout` passes.
    async fn until_closed(&mut self, timeout: Duration) -> Ended {
        let mut ended = Ended::default();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let Ok(next) = tokio::time::timeout_at(deadline, self.read()).await else {
                return ended;
            };
            let Some(f) = next else {
                ended.closed = true;
                return ended;
            };
            match f.kind {
                GOAWAY => ended.goaway = Some(u32::from_be_bytes(f.payload[4..8].try_into().unwrap())),
                RST_STREAM => ended.resets += 1,
                DATA => ended.data += f.payload.len(),
                HEADERS => {
                    let fields = self.hpack.decode(&f.payload).expect("a response head in HPACK");
                    if let Some((_, v)) = fields.iter().find(|(n, _)| n == b":status") {
                        ended
                            .statuses
                            .push((f.stream, String::from_utf8_lossy(v).into_owned()));
                    }
                }
                _ => {}
            }
        }
    }
}

/// A well-behaved HTTP/1.1 client requesting in a loop while an attack runs; every answer must
/// be a 200.
struct Bystander {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Bystander {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let task = {
            let (stop, served) = (stop.clone(), served.clone());
            tokio::spawn(async move {
                let c = client();
                for _ in 0..200_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let a = get(&c, addr, BYSTANDER_HOST, "/").await;
                    assert_eq!(a.status, 200, "the bystander was refused: {}", a.body);
                    served.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        Bystander { stop, served, task }
    }

    fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Stops the loop; panics if any answer was not a 200.
    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let served = self.served.clone();
        self.task.await.expect("every bystander request succeeded");
        served.load(Ordering::Relaxed)
    }
}

/// The attacked Gantry: a process with these entrypoint limits, routing everything to
/// `backend` except the bystander's host, which has a backend of its own (so that the attacked
/// backend counts only what the attacker got through).
struct Target {
    p: GantryProcess,
    _bystander_backend: Backend,
    _dir: tempfile::TempDir,
}

async fn gantry(backend: &Backend, limits: &str) -> Target {
    let bystander = Backend::start("bystander", Behavior::Name).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gantry.toml");
    std::fs::write(
        &path,
        format!(
            "[entrypoints.web]\naddress = \"127.0.0.1:0\"\nlimits = {{ {limits} }}\n\n\
             [routers.bystander]\nhosts = [\"{BYSTANDER_HOST}\"]\nservice = \"bystander\"\n\
             [services.bystander]\nbackends = [{{ url = \"{}\" }}]\n\n{}",
            bystander.url(),
            one_service(&[(backend, 1)], "")
        ),
    )
    .unwrap();
    Target {
        p: GantryProcess::spawn(&["run", "--config", path.to_str().unwrap()]),
        _bystander_backend: bystander,
        _dir: dir,
    }
}

const BYSTANDER_HOST: &str = "bystander.test";

/// Resident memory of the Gantry process, in MiB.
fn rss_mib(p: &GantryProcess) -> f64 {
    p.status_kib("VmRSS") as f64 / 1024.0
}

/// What an attack may add to Gantry's resident memory: far below what any of these attacks
/// would cost if Gantry kept what they send (each would take hundreds of MiB).
const RSS_BOUND_MIB: f64 = 48.0;

fn assert_memory_bounded(p: &GantryProcess, before: f64, attack: &str) {
    let after = rss_mib(p);
    eprintln!("{attack}: Gantry's RSS {before:.1} -> {after:.1} MiB");
    assert!(
        after - before < RSS_BOUND_MIB,
        "{attack}: Gantry's RSS grew from {before:.1} to {after:.1} MiB"
    );
}

/// Waits until the bystander has been served some more, proving it was served while the attack
/// was on.
async fn served_during(bystander: &Bystander, since: u64) {
    eventually(Duration::from_secs(10), "the bystander is served", || async {
        (bystander.served() > since).then_some(())
    })
    .await;
}

// Rapid reset (CVE-2023-44487): streams opened and cancelled at once, so they never count as
// concurrent. The server must end the connection long before 5,000 of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_burst_ends_the_connection_while_other_clients_are_served() {
    let backend = Backend::start("b", Behavior::Name).await;
    let Target { p, .. } = &gantry(&backend, "").await;
    let bystander = Bystander::start(p.addr);
    let before = rss_mib(p);
    let since = bystander.served();

    let tcp = TcpStream::connect(p.addr).await.unwrap();
    let (mut h2c, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut sent = 0;
    for _ in 0..5000 {
        h2c = match h2c.ready().await {
            Ok(c) => c,
            Err(_) => break,
        };
        match h2c.send_request(http::Request::get("http://h/").body(()).unwrap(), true) {
            Ok((_, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
            Err(_) => break,
        }
        sent += 1;
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the connection ended");
    let err = ended
        .unwrap()
        .expect_err("the server ended the connection with an error (GOAWAY)");
    assert!(err.is_go_away() || err.is_io(), "{err:?}");
    if err.is_go_away() {
        assert_eq!(err.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{err:?}");
    }
    assert!(sent < 5000, "the burst ran to completion ({sent} streams)");
    served_during(&bystander, since).await;
    assert_memory_bounded(p, before, "rapid reset");
    bystander.finish().await;
    // A new client is served afterwards.
    assert_eq!(get(&client(), p.addr, "h", "/").await.status, 200);
}

// MadeYouReset (CVE-2025-8671): each request is followed by a frame that makes the server reset
// the stream itself (more body than its Content-Length announced), so the streams never count
// as concurrent while the backend work they started goes on. After 256 such resets the server
// must end the connection with ENHANCE_YOUR_CALM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_you_reset_ends_the_connection_and_bounds_the_backend_work() {
    let backend = Backend::start("b", Behavior::Name).await;
    let Target { p, .. } = &gantry(&backend, "").await;
    let bystander = Bystander::start(p.addr);
    let before = rss_mib(p);
    let since = bystander.served();

    let mut h2 = RawH2::connect(p.addr, &[]).await;
    let mut burst = Vec::new();
    let attempts = 2000u32;
    for i in 0..attempts {
        let id = 1 + 2 * i;
        burst.extend(frame(HEADERS, END_HEADERS, id, POST_ONE_BYTE));
        burst.extend(frame(DATA, END_STREAM, id, b"xx"));
    }
    // The server may close while the burst is still being written.
    let _ = h2.w.write_all(&burst).await;
    let ended = h2.r.until_closed(Duration::from_secs(15)).await;
    assert!(ended.closed, "the connection was not closed: {ended:?}");
    // (h2 drops the RST_STREAM frames it had queued when it goes away.)
    assert_eq!(ended.goaway, Some(ENHANCE_YOUR_CALM), "{ended:?}");
    let reached = backend.requests();
    assert!(
        reached < 400,
        "{reached} of {attempts} reset requests reached the backend"
    );
    served_during(&bystander, since).await;
    assert_memory_bounded(p, before, "MadeYouReset");
    assert!(bystander.finish().await > 0);
}

// CONTINUATION flood (CVE-2024-27316 and kin): a header block that never ends, one CONTINUATION
// frame after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_cut_off_after_a_few_frames() {
    let backend = Backend::start("b", Behavior::Name).await;
    let Target { p, .. } = &gantry(&backend, "").await;
    let bystander = Bystander::start(p.addr);
    let before = rss_mib(p);
    let since = bystander.served();

    let mut h2 = RawH2::connect(p.addr, &[]).await;
    h2.w.write_all(&frame(HEADERS, 0, 1, GET)).await.unwrap();
    // Each fragment is a complete literal header `x-flood: aaa…` (never indexed).
    let mut fragment = vec![0x10, 0x07];
    fragment.extend_from_slice(b"x-flood");
    fragment.push(100);
    fragment.extend_from_slice(&[b'a'; 100]);
    let one = frame(CONTINUATION, 0, 1, &fragment);
    let chunk: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
    let writer = tokio::spawn(async move {
        let mut frames = 0u64;
        // Up to 100,000 frames (11 MB); the server should have given up long before.
        for _ in 0..100 {
            if h2.w.write_all(&chunk).await.is_err() {
                break;
            }
            frames += 1000;
        }
        frames
    });
    let ended = h2.r.until_closed(Duration::from_secs(15)).await;
    assert!(ended.closed, "the connection was not closed: {ended:?}");
    assert_eq!(ended.goaway, Some(ENHANCE_YOUR_CALM), "{ended:?}");
    assert!(ended.statuses.is_empty(), "{ended:?}");
    let written = writer.await.unwrap();
    assert!(written < 100_000, "all 100,000 CONTINUATION frames were accepted");
    assert_eq!(
        backend.requests(),
        0,
        "the endless header block reached the backend"
    );
    served_during(&bystander, since).await;
    assert_memory_bounded(p, before, "CONTINUATION flood");
    bystander.finish().await;
}

/// Writes `unit` over and over on a connection that never reads what the server answers, until
/// a write stalls for two seconds (the server stopped reading: throttled), a write fails (the
/// server closed the connection), or 64 MB have been written. Returns (bytes written, stalled).
async fn flood(w: &mut OwnedWriteHalf, unit: &[u8]) -> (usize, bool) {
    let chunk: Vec<u8> = unit.iter().copied().cycle().take(unit.len() * 2000).collect();
    let mut written = 0;
    while written < 64 << 20 {
        match tokio::time::timeout(Duration::from_secs(2), w.write_all(&chunk)).await {
            Err(_) => return (written, true),
            Ok(Err(_)) => return (written, false),
            Ok(Ok(())) => written += chunk.len(),
        }
    }
    (written, false)
}

/// A control-frame flood (each frame obliges the server to answer with an acknowledgement)
/// from a client that never reads the answers: the server must stop reading rather than queue
/// acknowledgements without bound, and the connection, which never sends a request, must be
/// closed by the header timeout.
async fn control_flood_is_throttled_then_closed(unit: Vec<u8>, attack: &str) {
    let backend = Backend::start("b", Behavior::Name).await;
    let Target { p, .. } = &gantry(&backend, "header_read_timeout = \"3s\"").await;
    let bystander = Bystander::start(p.addr);
    let before = rss_mib(p);
    let since = bystander.served();

    let mut h2 = RawH2::connect(p.addr, &[]).await;
    let started = Instant::now();
    let (written, stalled) = flood(&mut h2.w, &unit).await;
    assert!(
        written < 64 << 20,
        "{attack}: 64 MB of frames were accepted without the server pushing back"
    );
    let frames = written / unit.len();
    // Throttled (or already closed); either way the connection must not outlive the header
    // timeout (3 s, then a second's grace) by much: a write fails once the server dropped it.
    // (HTTP/2's own keep-alive would close it after 20 s: that is not the header timeout.)
    let deadline = started + Duration::from_secs(10);
    let closed = loop {
        if let Ok(Err(_)) = tokio::time::timeout(Duration::from_millis(500), h2.w.write_all(&unit)).await {
            break started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{attack}: the attacker's connection is still open"
        );
    };
    eprintln!("{attack}: {frames} frames accepted (stalled: {stalled}), connection closed after {closed:?}");
    served_during(&bystander, since).await;
    assert_memory_bounded(p, before, attack);
    bystander.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_flood_is_throttled_and_closed() {
    // SETTINGS_MAX_CONCURRENT_STREAMS = 100, over and over.
    let unit = frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]);
    control_flood_is_throttled_then_closed(unit, "SETTINGS flood").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_is_throttled_and_closed() {
    let unit = frame(PING, 0, 0, b"01234567");
    control_flood_is_throttled_then_closed(unit, "PING flood").await;
}

// A client that announces a zero flow-control window and opens streams for large responses:
// the responses can never be sent, and each would hold a backend connection (and, in a proxy
// that buffers, the whole body) forever. The send timeout closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_window_stall_is_closed_by_the_send_timeout() {
    let backend = Backend::start("big", Behavior::Stream(64 << 20)).await;
    let Target { p, .. } = &gantry(&backend, "send_timeout = \"1s\"").await;
    let bystander = Bystander::start(p.addr);
    let before = rss_mib(p);
    let since = bystander.served();

    let mut h2 = RawH2::connect(p.addr, &[(SETTINGS_INITIAL_WINDOW_SIZE, 0)]).await;
    let streams = 50u32;
    let mut burst = Vec::new();
    for i in 0..streams {
        burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1 + 2 * i, GET));
    }
    h2.w.write_all(&burst).await.unwrap();
    let started = Instant::now();
    let ended = h2.r.until_closed(Duration::from_secs(15)).await;
    let took = started.elapsed();
    assert!(ended.closed, "the stalled connection was not closed: {ended:?}");
    assert_eq!(ended.data, 0, "data was sent through a zero window: {ended:?}");
    assert_eq!(
        ended.statuses.len(),
        streams as usize,
        "every response head was sent (heads are not flow controlled): {ended:?}"
    );
    // Checked once per send_timeout period: closed after one to two periods.
    assert!(took < Duration::from_secs(5), "closed only after {took:?}");
    let metrics = admin_get(p.admin, "/metrics").await.body;
    assert!(
        metrics.contains("gantry_client_send_timeouts_total 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("send_timeouts"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    served_during(&bystander, since).await;
    assert_memory_bounded(p, before, "zero-window stall");
    bystander.finish().await;
}

// The same stall on HTTP/1.1: a client that asks for a large response and stops reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_that_stops_reading_is_closed_by_the_send_timeout() {
    let backend = Backend::start("big", Behavior::Stream(64 << 20)).await;
    let Target { p, .. } = &gantry(&backend, "send_timeout = \"1s\"").await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
    // Read the head and a little, then stop reading until Gantry gives up on us.
    let mut first = [0u8; 4096];
    let n = s.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    eventually(Duration::from_secs(10), "the send timeout fires", || async {
        let m = admin_get(p.admin, "/metrics").await.body;
        m.contains("gantry_client_send_timeouts_total 1").then_some(())
    })
    .await;
    // Draining the socket now ends at the close (or a reset), far short of the 64 MiB body.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection is still open");
    assert!(n + rest.len() < 64 << 20, "the whole body was sent");
}

/// A header block that puts one 4,000-byte header in the dynamic table, then references it
/// `copies` more times with one-byte indexes.
fn hpack_bomb(copies: usize) -> Vec<u8> {
    let mut block = GET.to_vec();
    // Literal with incremental indexing, new name `x-bomb`, a 4,000-byte value (length 4000 as
    // a 7-bit-prefix integer: 127, then 3873 in two continuation bytes).
    block.extend_from_slice(&[0x40, 0x06]);
    block.extend_from_slice(b"x-bomb");
    block.extend_from_slice(&[0x7f, 0xa1, 0x1e]);
    block.extend_from_slice(&[b'a'; 4000]);
    // Index 62: the newest dynamic-table entry, the header just added.
    block.extend(std::iter::repeat_n(0xbe, copies));
    assert!(block.len() <= 16_384, "one frame of the default size");
    block
}

/// A backend that sends its body in three chunks, `gap` apart.
async fn trickling_backend(gap: Duration) -> SocketAddr {
    use http_body_util::StreamBody;
    use hyper::body::Frame as BodyFrame;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    let chunks = futures_util::stream::unfold(0, move |i| async move {
                        if i == 3 {
                            return None;
                        }
                        tokio::time::sleep(gap).await;
                        let chunk = bytes::Bytes::from(format!("chunk {i}\n"));
                        Some((Ok::<_, std::convert::Infallible>(BodyFrame::data(chunk)), i + 1))
                    });
                    Ok::<_, std::convert::Infallible>(http::Response::new(StreamBody::new(chunks)))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn expected(host: &str) -> String {
    match host {
        "slow" => "slow".into(),
        _ => "chunk 0\nchunk 1\nchunk 2\n".into(),
    }
}

// The send timeout measures the client, never the backend: a backend slower than the timeout,
// before its head or between chunks, is waited for on HTTP/1.1 and HTTP/2 alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_is_not_taken_for_a_stalled_client() {
    let slow_head = Backend::start("slow", Behavior::Delay(Duration::from_millis(2500))).await;
    let trickle = trickling_backend(Duration::from_millis(1500)).await;
    let g = Gantry::start(&format!(
        "[entrypoints.web]\naddress = \"127.0.0.1:0\"\nlimits = {{ send_timeout = \"1s\" }}\n\n\
         [routers.slow]\nhosts = [\"slow\"]\nservice = \"slow\"\n\
         [services.slow]\nbackends = [{{ url = \"{}\" }}]\n\
         [routers.trickle]\nhosts = [\"trickle\"]\nservice = \"trickle\"\n\
         [services.trickle]\nbackends = [{{ url = \"http://{trickle}\" }}]\n",
        slow_head.url()
    ))
    .await;
    let h1 = client();
    for host in ["slow", "trickle"] {
        let a = get(&h1, g.addr(), host, "/").await;
        assert_eq!((a.status, a.body), (200, expected(host)), "HTTP/1.1");
    }
    let tcp = TcpStream::connect(g.addr()).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for host in ["slow", "trickle"] {
        let req = http::Request::get(format!("http://{host}/"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = h2.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(
            (status, String::from_utf8_lossy(&body).into_owned()),
            (200, expected(host)),
            "HTTP/2"
        );
    }
    g.running.shutdown().await;
}

// An HPACK bomb: 12,000 one-byte references to a 4,000-byte header, 16 KB on the wire and 48 MB
// once decoded. Decoding stops at a few times the header limit and the connection is ended
// with ENHANCE_YOUR_CALM; a block just over the limit gets 431 and the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hpack_table_bomb_ends_the_connection_and_never_reaches_the_backend() {
    let backend = Backend::start("b", Behavior::Name).await;
    let Target { p, .. } = &gantry(&backend, "max_header_bytes = \"64KiB\"").await;
    let bystander = Bystander::start(p.addr);
    let before = rss_mib(p);
    let since = bystander.served();

    // Just over the limit (21 copies: 84 KB): 431, then a normal request on the same connection.
    let mut h2 = RawH2::connect(p.addr, &[]).await;
    h2.w.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &hpack_bomb(20)))
        .await
        .unwrap();
    h2.w.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 3, GET))
        .await
        .unwrap();
    let ended = h2.r.until_closed(Duration::from_secs(2)).await;
    assert_eq!(
        ended.statuses,
        [(1, "431".to_string()), (3, "200".to_string())],
        "{ended:?}"
    );
    assert_eq!(
        backend.requests(),
        1,
        "only the well-formed request reached the backend"
    );

    // The bomb, on 20 connections in turn.
    for _ in 0..20 {
        let mut h2 = RawH2::connect(p.addr, &[]).await;
        h2.w.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &hpack_bomb(12_000)))
            .await
            .unwrap();
        let ended = h2.r.until_closed(Duration::from_secs(10)).await;
        assert!(ended.closed, "{ended:?}");
        assert_eq!(ended.goaway, Some(ENHANCE_YOUR_CALM), "{ended:?}");
        assert!(ended.statuses.is_empty(), "{ended:?}");
    }
    assert_eq!(backend.requests(), 1, "a bomb reached the backend");
    served_during(&bystander, since).await;
    assert_memory_bounded(p, before, "HPACK bomb");
    bystander.finish().await;
}

#[test]
fn frames_are_encoded_as_rfc_9113_lays_them_out() {
    let f = frame(HEADERS, END_HEADERS | END_STREAM, 3, GET);
    assert_eq!(&f[..9], &[0, 0, 6, 1, 5, 0, 0, 0, 3]);
    let fields = loona_hpack::Decoder::new().decode(GET).unwrap();
    let fields: Vec<(&[u8], &[u8])> = fields.iter().map(|(n, v)| (&n[..], &v[..])).collect();
    assert_eq!(
        fields,
        [
            (&b":method"[..], &b"GET"[..]),
            (b":scheme", b"http"),
            (b":path", b"/"),
            (b":authority", b"h")
        ]
    );
    let post = loona_hpack::Decoder::new().decode(POST_ONE_BYTE).unwrap();
    assert_eq!(post[0], (b":method".to_vec(), b"POST".to_vec()));
    assert_eq!(post[4], (b"content-length".to_vec(), b"1".to_vec()));
}
