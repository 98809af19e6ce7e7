//! The access log: one line per request, written off the request path. A request hands its
//! facts (owned, unformatted) to a bounded queue when its response body ends; one writer thread
//! formats and writes them through a buffer, flushed whenever the queue runs dry. When the queue
//! is full the line is dropped and counted (`gantry_access_log_dropped_total`): a slow disk or a
//! pipe nobody reads never delays a request. SIGUSR1 makes the writer reopen its file
//! (logrotate's convention) between two lines, so no line is lost or torn.
//!
//! Trace context (W3C `traceparent`): a request that comes without one gets one, which the
//! backend receives; the trace ID is in the line.

use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use gantry_config::access_log::{AccessLog, LogFormat, LogTarget};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, Version};
use prometheus::IntCounter;

use crate::conn::ConnInfo;
use crate::request_id::hex;
use crate::response::ResponseBody;

/// What `handle` learned about a request, for its line (a response extension, only when the
/// access log is on).
#[derive(Clone, Debug, Default)]
pub struct Trail {
    pub router: Option<Arc<str>>,
    pub service: Option<Arc<str>>,
    pub backend: Option<Arc<str>>,
    pub version: Option<Arc<str>>,
    pub attempts: u32,
    /// From the start of the request to the backend's response head.
    pub upstream: Option<Duration>,
    /// Gantry's own failure (`no_route`, `connect_refused`, ...).
    pub error: Option<&'static str>,
    /// The router opted out (`access_log = false`).
    pub skip: bool,
    /// Spans are exported: `tried` is kept.
    pub spans: bool,
    /// Request body bytes read from the client.
    pub received: Received,
    /// Each attempt at a backend (for spans).
    pub tried: Vec<Tried>,
}

/// One attempt at a backend, in time since the request started.
#[derive(Clone, Debug)]
pub struct Tried {
    pub backend: Arc<str>,
    pub start: Duration,
    pub end: Duration,
    pub status: u16,
}

/// Gantry's own failure, as `fail` answered it (a response extension, only when the access log
/// is on).
#[derive(Clone, Copy, Debug)]
pub struct Failure(pub &'static str);

/// Where the line of an upgraded request (a WebSocket) waits for its tunnel to close: a
/// response extension on the `101`, shared with the tunnel's task. Whichever comes second, the
/// line or the tunnel's end, sends the line.
#[derive(Clone, Debug, Default)]
pub struct TunnelSlot(Arc<std::sync::Mutex<Slot>>);

#[derive(Debug, Default)]
enum Slot {
    #[default]
    Waiting,
    Line(Box<Line>, Arc<AccessLogger>),
    Ended {
        up: u64,
        down: u64,
    },
}

impl TunnelSlot {
    fn park(&self, line: Box<Line>, log: Arc<AccessLogger>) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match std::mem::take(&mut *s) {
            Slot::Ended { up, down } => log.finish_tunnel(line, up, down),
            _ => *s = Slot::Line(line, log),
        }
    }

    /// The tunnel closed, having carried these bytes from the client and to it.
    pub(crate) fn ended(&self, up: u64, down: u64) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match std::mem::take(&mut *s) {
            Slot::Line(line, log) => log.finish_tunnel(line, up, down),
            _ => *s = Slot::Ended { up, down },
        }
    }
}

/// One request's facts, owned, waiting for its response body to end. The request's strings are
/// copied into one buffer: a line holds nothing of the connection's read buffer (which hyper can
/// then reuse) and costs one allocation for all of them.
#[derive(Debug)]
pub struct Line {
    start: Instant,
    client_ip: IpAddr,
    method: Method,
    version: Version,
    status: u16,
    received: Option<u64>,
    sent: u64,
    took: Duration,
    trail: Trail,
    tls: Option<(&'static str, Option<Arc<str>>)>,
    /// Host, target, user agent, referer, request ID and the logged headers' values, one after
    /// the other; `at` and `headers` say where each is (a header that was absent: `None`).
    text: Vec<u8>,
    at: [(u32, u32); FIELDS],
    headers: Vec<Option<(u32, u32)>>,
    trace_id: u128,
    /// Gantry's span for this request, and the caller's (from its `traceparent`).
    span_id: u64,
    parent_span: Option<u64>,
    /// An upgraded request: the line covers the tunnel's life and bytes.
    tunnel: bool,
}

/// The request strings every line has, as indexes into `Line::at`.
#[derive(Clone, Copy, Debug)]
enum Field {
    Host,
    Target,
    UserAgent,
    Referer,
    RequestId,
}
const FIELDS: usize = 5;

/// Room kept in a line's text for the request ID (added by `handle`, once it has one).
const REQUEST_ID_ROOM: usize = 40;

impl Line {
    /// Counts body bytes as they are sent.
    #[inline]
    pub(crate) fn sent(&mut self, n: usize) {
        self.sent += n as u64;
    }

    /// Where `handle` writes what it learns of the request's way through.
    pub(crate) fn trail(&mut self) -> &mut Trail {
        &mut self.trail
    }

    /// The request ID `handle` gave the request.
    pub(crate) fn request_id(&mut self, id: &HeaderValue) {
        self.at[Field::RequestId as usize] = self.push(id.as_bytes());
    }

    /// Copies a string of the request, as it came (the writer makes it valid UTF-8).
    fn push(&mut self, v: &[u8]) -> (u32, u32) {
        let from = self.text.len() as u32;
        self.text.extend_from_slice(v);
        (from, self.text.len() as u32)
    }

    fn get(&self, f: Field) -> &[u8] {
        self.slice(self.at[f as usize])
    }

    fn slice(&self, (from, to): (u32, u32)) -> &[u8] {
        self.text.get(from as usize..to as usize).unwrap_or_default()
    }

    /// A string of the request, for a span.
    fn owned(&self, f: Field) -> String {
        String::from_utf8_lossy(self.get(f)).into_owned()
    }
}

/// How many bytes of the request's body were read from the client.
#[derive(Clone, Debug, Default)]
pub enum Received {
    /// Not known from the request alone: its `Content-Length`, if any.
    #[default]
    Declared,
    /// The request had no body.
    Nothing,
    /// Counted as the body is read.
    Counted(Arc<std::sync::atomic::AtomicU64>),
}

/// The access log of a running Gantry.
pub struct AccessLogger {
    spec: Arc<AccessLog>,
    /// The logged headers' names, parsed once.
    header_names: Vec<HeaderName>,
    /// The line writer's queue (`None`: spans only, no access log).
    tx: Option<SyncSender<Box<Line>>>,
    spans: Option<Arc<crate::trace_export::SpanExporter>>,
    dropped: IntCounter,
    /// Set by SIGUSR1: the writer reopens its file before its next line.
    reopen: Arc<AtomicBool>,
}

impl std::fmt::Debug for AccessLogger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLogger").field("spec", &self.spec).finish()
    }
}

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

impl AccessLogger {
    /// Opens the log's target (a file in append mode) and starts its writer thread, and the
    /// span exporter (call within a runtime). Either may be absent.
    pub fn start(
        log: Option<AccessLog>,
        tracing: Option<gantry_config::traces::Tracing>,
        registry: &prometheus::Registry,
    ) -> std::io::Result<Arc<Self>> {
        let dropped = prometheus::register_int_counter_with_registry!(
            "gantry_access_log_dropped_total",
            "Access log lines dropped because the writer's queue was full",
            registry
        )
        .map_err(std::io::Error::other)?;
        let reopen = Arc::new(AtomicBool::new(false));
        let (spec, tx) = match log {
            Some(spec) => {
                let out = open(&spec.target)?;
                let (tx, rx) = std::sync::mpsc::sync_channel(spec.queue);
                let spec = Arc::new(spec);
                let writer = Writer {
                    spec: spec.clone(),
                    memo: Memo::default(),
                    out,
                    buf: Vec::with_capacity(WRITE_AT + 4096),
                    reopen: reopen.clone(),
                };
                std::thread::Builder::new()
                    .name("gantry-access-log".into())
                    .spawn(move || writer.run(rx))?;
                (spec, Some(tx))
            }
            None => {
                let spec = gantry_config::access_log::validate_access_log(
                    Default::default(),
                    "",
                    &mut gantry_config::error::Errors::new(),
                );
                (Arc::new(spec), None)
            }
        };
        let spans = match tracing {
            Some(t) => {
                Some(crate::trace_export::SpanExporter::start(t, registry).map_err(std::io::Error::other)?)
            }
            None => None,
        };
        let header_names = spec
            .headers
            .iter()
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        Ok(Arc::new(AccessLogger {
            spec,
            header_names,
            tx,
            spans,
            dropped,
            reopen,
        }))
    }

    /// Whether spans are exported (attempts are then recorded).
    pub fn spans(&self) -> bool {
        self.spans.is_some()
    }

    /// Asks the writer to reopen its file (SIGUSR1).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    /// Takes the request's facts before it is handled, and gives it a `traceparent` if it came
    /// without one (the backend gets it).
    pub(crate) fn begin<B>(&self, req: &mut Request<B>, conn: &ConnInfo) -> Box<Line> {
        let start = Instant::now();
        let span_id = fastrand::u64(1..);
        let came = req
            .headers()
            .get(&TRACEPARENT)
            .and_then(|v| traceparent(v.as_bytes()));
        let (trace_id, parent_span) = match came {
            // With spans, the backend's parent is Gantry's span; without, the header passes as
            // it came.
            Some(tp) => {
                if self.spans.is_some() {
                    set_traceparent(req.headers_mut(), tp.trace_id, span_id, tp.flags);
                }
                (tp.trace_id, Some(tp.parent))
            }
            None => {
                let id = fastrand::u128(1..);
                set_traceparent(req.headers_mut(), id, span_id, 1);
                (id, None)
            }
        };
        let h = req.headers();
        let uri = req.uri();
        // One pass over the headers rather than a lookup for each.
        let (mut host, mut user_agent, mut referer, mut length) = (None, None, None, None);
        for (name, value) in h {
            let slot = if name == header::HOST {
                &mut host
            } else if name == header::USER_AGENT {
                &mut user_agent
            } else if name == header::REFERER {
                &mut referer
            } else if name == header::CONTENT_LENGTH {
                &mut length
            } else {
                continue;
            };
            slot.get_or_insert(value.as_bytes());
        }
        let host = host.unwrap_or_else(|| uri.authority().map_or(&b""[..], |a| a.as_str().as_bytes()));
        let user_agent = user_agent.filter(|_| self.spec.user_agent).unwrap_or_default();
        let referer = referer.filter(|_| self.spec.referer).unwrap_or_default();
        let path = uri.path().as_bytes();
        let query = uri.query().filter(|_| self.spec.query);
        let logged: Vec<Option<&HeaderValue>> = self.header_names.iter().map(|n| h.get(n)).collect();
        let room = host.len()
            + path.len()
            + query.map_or(0, |q| q.len() + 1)
            + user_agent.len()
            + referer.len()
            + REQUEST_ID_ROOM
            + logged.iter().flatten().map(|v| v.len()).sum::<usize>();
        let mut line = Box::new(Line {
            start,
            client_ip: conn.client_ip,
            method: req.method().clone(),
            version: req.version(),
            status: 0,
            received: length.and_then(|v| std::str::from_utf8(v).ok()?.parse().ok()),
            sent: 0,
            took: Duration::ZERO,
            trail: Trail::default(),
            tls: conn.tls.get().cloned(),
            text: Vec::with_capacity(room),
            at: [(0, 0); FIELDS],
            headers: Vec::new(),
            trace_id,
            span_id,
            parent_span,
            tunnel: false,
        });
        line.at[Field::Host as usize] = line.push(host);
        let (from, mut to) = line.push(path);
        if let Some(q) = query {
            line.text.push(b'?');
            to = line.push(q.as_bytes()).1;
        }
        line.at[Field::Target as usize] = (from, to);
        line.at[Field::UserAgent as usize] = line.push(user_agent);
        line.at[Field::Referer as usize] = line.push(referer);
        if !logged.is_empty() {
            line.headers = logged
                .into_iter()
                .map(|v| v.map(|v| line.push(v.as_bytes())))
                .collect();
        }
        line
    }

    /// Attaches the line to the response: it is sent when the body ends (or is dropped).
    pub(crate) fn attach(self: &Arc<Self>, mut line: Box<Line>, resp: &mut Response<ResponseBody>) {
        if line.trail.skip {
            return;
        }
        line.status = resp.status().as_u16();
        // Gantry's own failures and upgrades only (the common answer carries no extension).
        if !resp.extensions().is_empty() {
            if let Some(Failure(kind)) = resp.extensions_mut().remove::<Failure>() {
                line.trail.error = Some(kind);
            }
            if let Some(slot) = resp.extensions_mut().remove::<TunnelSlot>() {
                slot.park(line, self.clone());
                return;
            }
        }
        resp.body_mut().set_log(line, self.clone());
    }

    fn finish_tunnel(&self, mut line: Box<Line>, up: u64, down: u64) {
        line.tunnel = true;
        line.received = Some(up);
        line.sent = down;
        self.finish(line);
    }

    /// The body ended: the line goes to the writer if the filters keep it.
    pub(crate) fn finish(&self, mut line: Box<Line>) {
        line.took = line.start.elapsed();
        if !line.tunnel {
            match &line.trail.received {
                Received::Declared => {}
                Received::Nothing => line.received = Some(0),
                Received::Counted(c) => line.received = Some(c.load(Ordering::Relaxed)),
            }
        }
        if let Some(x) = &self.spans {
            export_spans(x, &line);
        }
        let Some(tx) = &self.tx else {
            return;
        };
        if !self.spec.filters.keeps(line.status, line.took, fastrand::f64) {
            return;
        }
        match tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

/// `traceparent: 00-<trace>-<span>-<flags>` on a request to a backend.
fn set_traceparent(h: &mut http::HeaderMap, trace_id: u128, span_id: u64, flags: u8) {
    let mut v = [0u8; 55];
    v[..3].copy_from_slice(b"00-");
    hex(&mut v[3..35], &trace_id.to_be_bytes());
    v[35] = b'-';
    hex(&mut v[36..52], &span_id.to_be_bytes());
    v[52] = b'-';
    hex(&mut v[53..], &[flags]);
    if let Ok(v) = HeaderValue::from_bytes(&v) {
        h.insert(TRACEPARENT.clone(), v);
    }
}

fn open(target: &LogTarget) -> std::io::Result<Box<dyn Write + Send>> {
    Ok(match target {
        LogTarget::Stdout => Box::new(std::io::stdout()),
        LogTarget::Stderr => Box::new(std::io::stderr()),
        LogTarget::File(p) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(p)?),
    })
}

/// The writer writes its buffer out once it holds this many bytes, or when the queue runs dry.
const WRITE_AT: usize = 60 * 1024;

struct Writer {
    spec: Arc<AccessLog>,
    memo: Memo,
    out: Box<dyn Write + Send>,
    /// Whole lines, formatted straight into it.
    buf: Vec<u8>,
    reopen: Arc<AtomicBool>,
}

/// The wall clock and the monotonic one read together: a line's wall time is its start's
/// distance back from `at` (one clock read per request, not two).
struct Clock {
    /// Since the Unix epoch.
    wall: Duration,
    at: Instant,
}

impl Clock {
    fn now() -> Clock {
        Clock {
            wall: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
            at: Instant::now(),
        }
    }

    /// The wall time (since the Unix epoch) of a line that started at `start`.
    fn wall_time(&mut self, start: Instant) -> Duration {
        match self.at.checked_duration_since(start) {
            Some(ago) => self.wall.saturating_sub(ago),
            None => {
                *self = Clock::now();
                self.wall
            }
        }
    }
}

impl Writer {
    /// Writes lines as they come. While they flow, the thread polls the queue every
    /// millisecond (so senders never have to wake it) and writes once per batch; after 50 ms
    /// without a line it blocks until the next one.
    fn run(mut self, rx: Receiver<Box<Line>>) {
        let mut last = Instant::now();
        loop {
            let mut clock = Clock::now();
            let mut wrote = false;
            while let Ok(line) = rx.try_recv() {
                self.add(&line, &mut clock);
                wrote = true;
            }
            self.flush();
            self.check_reopen();
            if wrote {
                last = Instant::now();
            }
            if last.elapsed() < Duration::from_millis(50) {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    self.check_reopen();
                    self.add(&line, &mut Clock::now());
                    last = Instant::now();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush();
                    return;
                }
            }
        }
    }

    fn add(&mut self, line: &Line, clock: &mut Clock) {
        let time = clock.wall_time(line.start);
        format_line(&self.spec, line, time, &mut self.memo, &mut self.buf);
        self.buf.push(b'\n');
        if self.buf.len() >= WRITE_AT {
            self.flush();
        }
    }

    /// A full pipe blocks this thread only; the queue absorbs, then drops.
    fn flush(&mut self) {
        if !self.buf.is_empty() {
            let _ = self.out.write_all(&self.buf);
            let _ = self.out.flush();
            self.buf.clear();
        }
    }

    fn check_reopen(&mut self) {
        if self.reopen.swap(false, Ordering::AcqRel) {
            self.flush();
            match open(&self.spec.target) {
                Ok(f) => self.out = f,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reopen the access log; writing on to the old file")
                }
            }
        }
    }
}

fn version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// What consecutive lines share, formatted once: the time to the second, the client's address.
#[derive(Debug, Default)]
pub struct Memo {
    secs: Option<u64>,
    /// The time at `secs`, in the log's format.
    date: Vec<u8>,
    ip: Option<IpAddr>,
    ip_text: Vec<u8>,
}

impl Memo {
    /// `d`: since the Unix epoch.
    fn time(&mut self, out: &mut Vec<u8>, d: Duration, clf: bool) {
        if self.secs != Some(d.as_secs()) {
            self.date.clear();
            write_time(
                &mut self.date,
                SystemTime::UNIX_EPOCH + Duration::from_secs(d.as_secs()),
                clf,
            );
            self.secs = Some(d.as_secs());
        }
        if clf {
            out.extend_from_slice(&self.date);
        } else {
            // `2000-10-10T13:55:36.` then the milliseconds.
            out.extend_from_slice(&self.date[..20]);
            let ms = d.subsec_millis();
            out.extend_from_slice(&[
                b'0' + (ms / 100) as u8,
                b'0' + (ms / 10 % 10) as u8,
                b'0' + (ms % 10) as u8,
                b'Z',
            ]);
        }
    }

    fn ip(&mut self, out: &mut Vec<u8>, ip: IpAddr) {
        if self.ip != Some(ip) {
            self.ip_text.clear();
            write_ip(&mut self.ip_text, ip);
            self.ip = Some(ip);
        }
        out.extend_from_slice(&self.ip_text);
    }
}

/// One line, without its newline, appended to `out`.
/// `time`: the request's start, since the Unix epoch.
pub fn format_line(spec: &AccessLog, l: &Line, time: Duration, memo: &mut Memo, out: &mut Vec<u8>) {
    match spec.format {
        LogFormat::Json => {
            put(out, "{\"time\":\"");
            memo.time(out, time, false);
            put(out, "\",\"client_ip\":\"");
            memo.ip(out, l.client_ip);
            put(out, "\",\"method\":");
            // A method is a token: nothing to escape.
            out.push(b'"');
            put(out, l.method.as_str());
            out.push(b'"');
            put(out, ",\"host\":");
            json_str(out, l.get(Field::Host));
            put(out, ",\"path\":");
            json_str(out, l.get(Field::Target));
            put(out, ",\"protocol\":\"");
            put(out, version(l.version));
            put(out, "\",\"status\":");
            int(out, l.status);
            put(out, ",\"bytes_received\":");
            match l.received {
                Some(n) => int(out, n),
                None => put(out, "null"),
            }
            put(out, ",\"bytes_sent\":");
            int(out, l.sent);
            put(out, ",\"duration_ms\":");
            ms(out, Some(l.took));
            put(out, ",\"upstream_ms\":");
            ms(out, l.trail.upstream);
            put(out, ",\"router\":");
            opt_str(out, l.trail.router.as_deref());
            put(out, ",\"service\":");
            opt_str(out, l.trail.service.as_deref());
            put(out, ",\"backend\":");
            opt_str(out, l.trail.backend.as_deref());
            put(out, ",\"version\":");
            opt_str(out, l.trail.version.as_deref());
            put(out, ",\"attempts\":");
            int(out, l.trail.attempts);
            put(out, ",\"retries\":");
            int(out, l.trail.attempts.saturating_sub(1));
            put(out, ",\"request_id\":");
            json_str(out, l.get(Field::RequestId));
            put(out, ",\"trace_id\":\"");
            let mut id = [0u8; 32];
            hex(&mut id, &l.trace_id.to_be_bytes());
            out.extend_from_slice(&id);
            out.push(b'"');
            if let Some((v, sni)) = &l.tls {
                put(out, ",\"tls_version\":");
                json_str(out, v.as_bytes());
                put(out, ",\"tls_sni\":");
                opt_str(out, sni.as_deref());
            }
            if spec.user_agent {
                put(out, ",\"user_agent\":");
                json_str(out, l.get(Field::UserAgent));
            }
            if spec.referer {
                put(out, ",\"referer\":");
                json_str(out, l.get(Field::Referer));
            }
            if l.tunnel {
                put(out, ",\"upgraded\":true");
            }
            if let Some(e) = l.trail.error {
                put(out, ",\"error\":");
                json_str(out, e.as_bytes());
            }
            for (name, at) in spec.headers.iter().zip(&l.headers) {
                put(out, ",\"header_");
                out.extend(name.bytes().map(|b| if b == b'-' { b'_' } else { b }));
                put(out, "\":");
                match at {
                    None => put(out, "null"),
                    Some(_) if spec.redact.iter().any(|r| r == name) => put(out, "\"REDACTED\""),
                    Some(at) => json_str(out, l.slice(*at)),
                }
            }
            out.push(b'}');
        }
        LogFormat::Common | LogFormat::Combined => {
            // host ident user [time] "request" status bytes
            memo.ip(out, l.client_ip);
            put(out, " - - [");
            memo.time(out, time, true);
            put(out, "] \"");
            put(out, l.method.as_str());
            out.push(b' ');
            clf_escape(out, l.get(Field::Target));
            out.push(b' ');
            put(out, version(l.version));
            put(out, "\" ");
            int(out, l.status);
            out.push(b' ');
            int(out, l.sent);
            if spec.format == LogFormat::Combined {
                put(out, " \"");
                clf_escape(out, l.get(Field::Referer));
                put(out, "\" \"");
                clf_escape(out, l.get(Field::UserAgent));
                out.push(b'"');
            }
        }
    }
}

#[inline]
fn put(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
}

fn int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    put(out, itoa::Buffer::new().format(n));
}

fn opt_str(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        Some(v) => json_str(out, v.as_bytes()),
        None => put(out, "null"),
    }
}

fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, b) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                int(out, b);
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Milliseconds with microsecond precision, or `null`.
fn ms(out: &mut Vec<u8>, d: Option<Duration>) {
    match d {
        Some(d) => {
            let us = d.as_micros() as u64;
            int(out, us / 1000);
            let r = us % 1000;
            out.extend_from_slice(&[
                b'.',
                b'0' + (r / 100) as u8,
                b'0' + (r / 10 % 10) as u8,
                b'0' + (r % 10) as u8,
            ]);
        }
        None => put(out, "null"),
    }
}

/// Whether `s` needs more than copying into a JSON string: a quote, a backslash, a control
/// character, or a byte outside ASCII (UTF-8 to check); eight bytes at a time.
#[inline]
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte of `x` is below `n` (n <= 0x80) / is zero: the classic bit tricks, exact for
    // "is there any".
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let hit = |c: &[u8]| {
        let x = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        (x & HIGH)
            | below(x, 0x20)
            | below(x ^ (ONES * u64::from(b'"')), 1)
            | below(x ^ (ONES * u64::from(b'\\')), 1)
            != 0
    };
    if s.len() < 8 {
        return s
            .iter()
            .any(|&b| b < 0x20 || b == b'"' || b == b'\\' || b >= 0x80);
    }
    // Whole words, then the last eight bytes (overlapping the last word): no byte-by-byte tail.
    s.chunks_exact(8).any(hit) || hit(&s[s.len() - 8..])
}

/// A JSON string: quotes, backslashes and control characters escaped.
#[inline]
fn json_str(out: &mut Vec<u8>, bytes: &[u8]) {
    if needs_escape(bytes) {
        json_escaped(out, bytes);
    } else {
        out.reserve(bytes.len() + 2);
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
    }
}

/// The slow way: invalid UTF-8 replaced, then escaped byte by byte.
#[cold]
fn json_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    {
        for &b in String::from_utf8_lossy(bytes).as_bytes() {
            match b {
                b'"' => put(out, "\\\""),
                b'\\' => put(out, "\\\\"),
                0..=0x1f => {
                    let mut h = [0u8; 2];
                    hex(&mut h, &[b]);
                    put(out, "\\u00");
                    out.extend_from_slice(&h);
                }
                _ => out.push(b),
            }
        }
    }
    out.push(b'"');
}

/// Quotes and control characters escaped, so a line stays one line of the format.
fn clf_escape(out: &mut Vec<u8>, s: &[u8]) {
    for c in String::from_utf8_lossy(s).chars() {
        match c {
            '"' => put(out, "\\\""),
            '\\' => put(out, "\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => {
                let mut b = [0u8; 4];
                put(out, c.encode_utf8(&mut b));
            }
        }
    }
}

/// A UTC time in RFC 3339 (`2000-10-10T13:55:36.250Z`) or CLF's `10/Oct/2000:13:55:36 +0000`.
fn write_time(out: &mut Vec<u8>, t: SystemTime, clf: bool) {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
    ];
    // Digits by hand into a fixed-width field: `write!` with padding costs more than the rest
    // of the line.
    let two = |n: i64| [b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8];
    let [y1, y2] = two(year / 100);
    let [y3, y4] = two(year % 100);
    let [d1, d2] = two(day);
    let [h1, h2] = two(h);
    let [m1, m2] = two(mi);
    let [s1, s2] = two(s);
    if clf {
        let [a, b, c] = *MONTHS[(month - 1) as usize];
        out.extend_from_slice(&[
            d1, d2, b'/', a, b, c, b'/', y1, y2, y3, y4, b':', h1, h2, b':', m1, m2, b':', s1, s2, b' ',
            b'+', b'0', b'0', b'0', b'0',
        ]);
    } else {
        let ms = i64::from(d.subsec_millis());
        let [o1, o2] = two(month);
        let [f2, f3] = two(ms % 100);
        out.extend_from_slice(&[
            y1,
            y2,
            y3,
            y4,
            b'-',
            o1,
            o2,
            b'-',
            d1,
            d2,
            b'T',
            h1,
            h2,
            b':',
            m1,
            m2,
            b':',
            s1,
            s2,
            b'.',
            b'0' + (ms / 100) as u8,
            f2,
            f3,
            b'Z',
        ]);
    }
}

/// A request's `traceparent`, read.
struct TraceParent {
    trace_id: u128,
    parent: u64,
    flags: u8,
}

/// A valid `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`, lowercase, IDs not all zeros).
fn traceparent(v: &[u8]) -> Option<TraceParent> {
    let s = std::str::from_utf8(v).ok()?;
    let mut parts = s.trim().split('-');
    let (ver, id, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !(hex(ver, 2) && ver != "ff" && hex(id, 32) && hex(parent, 16) && hex(flags, 2)) {
        return None;
    }
    let tp = TraceParent {
        trace_id: u128::from_str_radix(id, 16).ok()?,
        parent: u64::from_str_radix(parent, 16).ok()?,
        flags: u8::from_str_radix(flags, 16).ok()?,
    };
    (tp.trace_id != 0 && tp.parent != 0).then_some(tp)
}

/// The request's server span and a client span per attempt at a backend.
fn export_spans(x: &crate::trace_export::SpanExporter, l: &Line) {
    use crate::trace_export::{Attr, Span};
    let trace_id = format!("{:032x}", l.trace_id);
    // The line's wall time, from its start (only when spans are exported).
    let time = SystemTime::now()
        .checked_sub(l.start.elapsed())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut attributes = vec![
        ("http.request.method", Attr::Str(l.method.to_string())),
        ("url.path", Attr::Str(l.owned(Field::Target))),
        ("server.address", Attr::Str(l.owned(Field::Host))),
        ("client.address", Attr::Str(l.client_ip.to_string())),
        ("http.response.status_code", Attr::Int(i64::from(l.status))),
        ("gantry.attempts", Attr::Int(i64::from(l.trail.attempts))),
    ];
    for (k, v) in [
        ("gantry.router", &l.trail.router),
        ("gantry.service", &l.trail.service),
    ] {
        if let Some(v) = v {
            attributes.push((k, Attr::Str(v.to_string())));
        }
    }
    if let Some(e) = l.trail.error {
        attributes.push(("error.type", Attr::Str(e.to_string())));
    }
    if !l.get(Field::RequestId).is_empty() {
        attributes.push(("gantry.request_id", Attr::Str(l.owned(Field::RequestId))));
    }
    let name = match &l.trail.router {
        Some(r) => format!("{} {r}", l.method),
        None => l.method.to_string(),
    };
    x.export(Span {
        trace_id: trace_id.clone(),
        span_id: l.span_id,
        parent: l.parent_span.map(|p| format!("{p:016x}")),
        name,
        kind: 2,
        start: time,
        end: time + l.took,
        attributes,
        error: l.status >= 500,
    });
    let parent = format!("{:016x}", l.span_id);
    for t in &l.trail.tried {
        x.export(Span {
            trace_id: trace_id.clone(),
            span_id: fastrand::u64(1..),
            parent: Some(parent.clone()),
            name: format!("{} {}", l.method, t.backend),
            kind: 3,
            start: time + t.start,
            end: time + t.end,
            attributes: vec![
                ("server.address", Attr::Str(t.backend.to_string())),
                ("http.response.status_code", Attr::Int(i64::from(t.status))),
            ],
            error: t.status >= 500,
        });
    }
}

/// Set once per connection after its TLS handshake: (version, SNI).
pub type TlsFacts = OnceLock<(&'static str, Option<Arc<str>>)>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_traceparents_are_read_and_written_to_their_formats() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(971_186_136_250);
        let (mut iso, mut clf) = (Vec::new(), Vec::new());
        write_time(&mut iso, t, false);
        write_time(&mut clf, t, true);
        assert_eq!(iso, b"2000-10-10T13:55:36.250Z");
        assert_eq!(clf, b"10/Oct/2000:13:55:36 +0000");
        // The memo's copy of the second, with each line's own milliseconds.
        let mut memo = Memo::default();
        for ms in [250, 7, 999] {
            let t = SystemTime::UNIX_EPOCH + Duration::from_millis(971_186_136_000 + ms);
            let (mut direct, mut memoed) = (Vec::new(), Vec::new());
            write_time(&mut direct, t, false);
            memo.time(
                &mut memoed,
                t.duration_since(SystemTime::UNIX_EPOCH).unwrap(),
                false,
            );
            assert_eq!(memoed, direct);
        }
        let tp = traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(tp.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(tp.parent, 0x00f067aa0ba902b7);
        let mut h = http::HeaderMap::new();
        set_traceparent(&mut h, tp.trace_id, 0xab, 1);
        assert_eq!(
            h[&TRACEPARENT],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00000000000000ab-01"
        );
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"garbage",
        ] {
            assert!(traceparent(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
        let mut m = Vec::new();
        for (us, text) in [
            (0, "0.000"),
            (257, "0.257"),
            (999, "0.999"),
            (1_000, "1.000"),
            (61_234_567, "61234.567"),
        ] {
            m.clear();
            ms(&mut m, Some(Duration::from_micros(us)));
            assert_eq!(m, text.as_bytes());
        }
        let mut c = Vec::new();
        clf_escape(&mut c, b"a\"b\nc");
        assert_eq!(c, b"a\\\"b\\x0ac");
    }

    /// The eight-at-a-time check finds what the byte-by-byte one does, wherever it is.
    #[test]
    fn json_strings_are_escaped_wherever_the_byte_is() {
        for len in 0..20 {
            for pos in 0..len {
                for special in [b'"', b'\\', 0u8, 0x1f, b'\n'] {
                    let mut s = vec![b'a'; len];
                    s[pos] = special;
                    assert!(needs_escape(&s), "{len} {pos} {special}");
                }
                for plain in [b' ', b'~', 0x7f, b'!', b'#', b']'] {
                    let mut s = vec![b'a'; len];
                    s[pos] = plain;
                    assert!(!needs_escape(&s), "{len} {pos} {plain}");
                }
            }
        }
        assert!(
            needs_escape("héllo".as_bytes()),
            "UTF-8 is checked on the slow path"
        );
        let mut j = Vec::new();
        json_str(&mut j, b"a\"b\\c\n12345678");
        assert_eq!(j, br#""a\"b\\c\u000a12345678""#);
        // Not UTF-8: replaced, so the line stays valid JSON.
        j.clear();
        json_str(&mut j, b"ok \xff \xc3\xa9");
        assert_eq!(String::from_utf8(j).unwrap(), "\"ok \u{fffd} \u{e9}\"");
    }
}
