//! The access log: one line per request, written off the request path. A request hands its
//! facts (owned, unformatted) to a bounded queue when its response body ends; one writer thread
//! formats and writes them through a buffer, flushed whenever the queue runs dry. When the queue
//! is full the line is dropped and counted (`gantry_access_log_dropped_total`): a slow disk or a
//! pipe nobody reads never delays a request. SIGUSR1 makes the writer reopen its file
//! (logrotate's convention) between two lines, so no line is lost or torn.
//!
//! Trace context (W3C `traceparent`): a request that comes without one gets one, which the
//! backend receives; the trace ID is in the line.

use std::fmt::Write as _;
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
use crate::forward::X_REQUEST_ID;
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
    /// Request body bytes read from the client so far.
    pub received: Option<Arc<std::sync::atomic::AtomicU64>>,
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

/// One request's facts, owned, waiting for its response body to end.
#[derive(Debug)]
pub struct Line {
    time: SystemTime,
    start: Instant,
    client_ip: IpAddr,
    method: Method,
    host: Option<HeaderValue>,
    target: String,
    version: Version,
    status: u16,
    received: Option<u64>,
    sent: u64,
    took: Duration,
    trail: Trail,
    request_id: Option<HeaderValue>,
    tls: Option<(&'static str, Option<Arc<str>>)>,
    user_agent: Option<HeaderValue>,
    referer: Option<HeaderValue>,
    headers: Vec<(HeaderName, Option<HeaderValue>)>,
    trace_id: String,
    /// Gantry's span for this request, and the caller's (from its `traceparent`).
    span_id: u64,
    parent_span: Option<String>,
    /// An upgraded request: the line covers the tunnel's life and bytes.
    tunnel: bool,
}

impl Line {
    /// Counts body bytes as they are sent.
    #[inline]
    pub(crate) fn sent(&mut self, n: usize) {
        self.sent += n as u64;
    }
}

/// The access log of a running Gantry.
pub struct AccessLogger {
    spec: Arc<AccessLog>,
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
                    out: std::io::BufWriter::with_capacity(64 * 1024, out),
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
        Ok(Arc::new(AccessLogger {
            spec,
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
        let came = req
            .headers()
            .get(&TRACEPARENT)
            .and_then(|v| traceparent(v.as_bytes()));
        let span_id = fastrand::u64(1..);
        let (trace_id, parent_span) = match came {
            // With spans, the backend's parent is Gantry's span; without, the header passes as
            // it came.
            Some((id, parent, flags)) => {
                if self.spans.is_some()
                    && let Ok(v) = HeaderValue::from_str(&format!("00-{id}-{span_id:016x}-{flags}"))
                {
                    req.headers_mut().insert(TRACEPARENT.clone(), v);
                }
                (id, Some(parent))
            }
            None => {
                let id = format!("{:032x}", fastrand::u128(1..));
                if let Ok(v) = HeaderValue::from_str(&format!("00-{id}-{span_id:016x}-01")) {
                    req.headers_mut().insert(TRACEPARENT.clone(), v);
                }
                (id, None)
            }
        };
        let h = req.headers();
        let uri = req.uri();
        let target = match (self.spec.query, uri.query()) {
            (true, Some(q)) => format!("{}?{q}", uri.path()),
            _ => uri.path().to_string(),
        };
        let host = h.get(header::HOST).cloned().or_else(|| {
            uri.authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        Box::new(Line {
            time: SystemTime::now(),
            start: Instant::now(),
            client_ip: conn.client_ip,
            method: req.method().clone(),
            host,
            target,
            version: req.version(),
            status: 0,
            received: h
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok()),
            sent: 0,
            took: Duration::ZERO,
            trail: Trail::default(),
            request_id: None,
            tls: conn.tls.get().cloned(),
            user_agent: self
                .spec
                .user_agent
                .then(|| h.get(header::USER_AGENT).cloned())
                .flatten(),
            referer: self
                .spec
                .referer
                .then(|| h.get(header::REFERER).cloned())
                .flatten(),
            headers: self
                .spec
                .headers
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .map(|n| {
                    let v = h.get(&n).cloned();
                    (n, v)
                })
                .collect(),
            trace_id,
            span_id,
            parent_span,
            tunnel: false,
        })
    }

    /// Attaches the line to the response: it is sent when the body ends (or is dropped).
    pub(crate) fn attach(self: &Arc<Self>, mut line: Box<Line>, resp: &mut Response<ResponseBody>) {
        line.status = resp.status().as_u16();
        line.request_id = resp.headers().get(&X_REQUEST_ID).cloned();
        if let Some(t) = resp.extensions_mut().remove::<Trail>() {
            if t.skip {
                return;
            }
            line.trail = t;
        }
        if let Some(Failure(kind)) = resp.extensions_mut().remove::<Failure>() {
            line.trail.error = Some(kind);
        }
        if let Some(slot) = resp.extensions_mut().remove::<TunnelSlot>() {
            slot.park(line, self.clone());
            return;
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
        if !line.tunnel
            && let Some(c) = &line.trail.received
        {
            line.received = Some(c.load(Ordering::Relaxed));
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

fn open(target: &LogTarget) -> std::io::Result<Box<dyn Write + Send>> {
    Ok(match target {
        LogTarget::Stdout => Box::new(std::io::stdout()),
        LogTarget::Stderr => Box::new(std::io::stderr()),
        LogTarget::File(p) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(p)?),
    })
}

struct Writer {
    spec: Arc<AccessLog>,
    out: std::io::BufWriter<Box<dyn Write + Send>>,
    reopen: Arc<AtomicBool>,
}

impl Writer {
    /// Writes lines as they come. While they flow, the thread polls the queue every
    /// millisecond (so senders never have to wake it) and flushes once per batch; after 50 ms
    /// without a line it blocks until the next one.
    fn run(mut self, rx: Receiver<Box<Line>>) {
        let mut text = String::with_capacity(512);
        let mut last = Instant::now();
        loop {
            let mut wrote = false;
            while let Ok(line) = rx.try_recv() {
                self.write(&line, &mut text);
                wrote = true;
            }
            let _ = self.out.flush();
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
                    self.write(&line, &mut text);
                    last = Instant::now();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.out.flush();
                    return;
                }
            }
        }
    }

    fn write(&mut self, line: &Line, text: &mut String) {
        text.clear();
        format_line(&self.spec, line, text);
        text.push('\n');
        // A full pipe blocks this thread only; the queue absorbs, then drops.
        let _ = self.out.write_all(text.as_bytes());
    }

    fn check_reopen(&mut self) {
        if self.reopen.swap(false, Ordering::AcqRel) {
            let _ = self.out.flush();
            match open(&self.spec.target) {
                Ok(f) => {
                    self.out = std::io::BufWriter::with_capacity(64 * 1024, f);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reopen the access log; writing on to the old file")
                }
            }
        }
    }
}

fn text(v: &Option<HeaderValue>) -> &str {
    v.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("")
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

/// One line, without its newline.
pub fn format_line(spec: &AccessLog, l: &Line, out: &mut String) {
    match spec.format {
        LogFormat::Json => {
            let mut o = Obj { out, first: true };
            o.key("time");
            o.out.push('"');
            write_time(o.out, l.time, false);
            o.out.push('"');
            o.display("client_ip", &l.client_ip, true);
            o.str("method", l.method.as_str());
            o.str("host", text(&l.host));
            o.str("path", &l.target);
            o.str("protocol", version(l.version));
            o.display("status", &l.status, false);
            match l.received {
                Some(n) => o.display("bytes_received", &n, false),
                None => o.null("bytes_received"),
            }
            o.display("bytes_sent", &l.sent, false);
            o.ms("duration_ms", Some(l.took));
            o.ms("upstream_ms", l.trail.upstream);
            o.opt("router", l.trail.router.as_deref());
            o.opt("service", l.trail.service.as_deref());
            o.opt("backend", l.trail.backend.as_deref());
            o.opt("version", l.trail.version.as_deref());
            o.display("attempts", &l.trail.attempts, false);
            o.display("retries", &l.trail.attempts.saturating_sub(1), false);
            o.str("request_id", text(&l.request_id));
            o.str("trace_id", &l.trace_id);
            if let Some((v, sni)) = &l.tls {
                o.str("tls_version", v);
                o.opt("tls_sni", sni.as_deref());
            }
            if spec.user_agent {
                o.str("user_agent", text(&l.user_agent));
            }
            if spec.referer {
                o.str("referer", text(&l.referer));
            }
            if l.tunnel {
                o.key("upgraded");
                o.out.push_str("true");
            }
            if let Some(e) = l.trail.error {
                o.str("error", e);
            }
            for (n, v) in &l.headers {
                let key = format!("header_{}", n.as_str().replace('-', "_"));
                match v {
                    None => o.null(&key),
                    Some(_) if spec.redact.iter().any(|r| r == n.as_str()) => o.str(&key, "REDACTED"),
                    Some(v) => o.str(&key, &String::from_utf8_lossy(v.as_bytes())),
                }
            }
            o.out.push('}');
        }
        LogFormat::Common | LogFormat::Combined => {
            // host ident user [time] "request" status bytes
            let _ = write!(out, "{} - - [", l.client_ip);
            write_time(out, l.time, true);
            let _ = write!(
                out,
                "] \"{} {} {}\" {} {}",
                l.method,
                clf_escape(&l.target),
                version(l.version),
                l.status,
                l.sent
            );
            if spec.format == LogFormat::Combined {
                let _ = write!(
                    out,
                    " \"{}\" \"{}\"",
                    clf_escape(text(&l.referer)),
                    clf_escape(text(&l.user_agent))
                );
            }
        }
    }
}

/// A JSON object written straight into the line (no map, no intermediate strings).
struct Obj<'a> {
    out: &'a mut String,
    first: bool,
}

impl Obj<'_> {
    fn key(&mut self, k: &str) {
        self.out.push(if self.first { '{' } else { ',' });
        self.first = false;
        json_str(self.out, k);
        self.out.push(':');
    }

    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        json_str(self.out, v);
    }

    fn null(&mut self, k: &str) {
        self.key(k);
        self.out.push_str("null");
    }

    fn opt(&mut self, k: &str, v: Option<&str>) {
        match v {
            Some(v) => self.str(k, v),
            None => self.null(k),
        }
    }

    fn display(&mut self, k: &str, v: &dyn std::fmt::Display, quoted: bool) {
        self.key(k);
        if quoted {
            let _ = write!(self.out, "\"{v}\"");
        } else {
            let _ = write!(self.out, "{v}");
        }
    }

    /// Milliseconds with microsecond precision.
    fn ms(&mut self, k: &str, d: Option<Duration>) {
        self.key(k);
        match d {
            Some(d) => {
                let us = d.as_micros();
                let _ = write!(self.out, "{}.{:03}", us / 1000, us % 1000);
            }
            None => self.out.push_str("null"),
        }
    }
}

/// A JSON string: quotes, backslashes and control characters escaped. Runs that need no escape
/// are copied whole.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[from..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{:04x}", b);
        } else {
            out.push_str(escape);
        }
        from = i + 1;
    }
    out.push_str(&s[from..]);
    out.push('"');
}

/// Quotes and control characters escaped, so a line stays one line of the format.
fn clf_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// A UTC time in RFC 3339 (`2000-10-10T13:55:36.250Z`) or CLF's `10/Oct/2000:13:55:36 +0000`.
fn write_time(out: &mut String, t: SystemTime, clf: bool) {
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
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // Digits by hand: `write!` with padding costs more than the rest of the line.
    let two = |out: &mut String, n: i64| {
        out.push((b'0' + (n / 10 % 10) as u8) as char);
        out.push((b'0' + (n % 10) as u8) as char);
    };
    let four = |out: &mut String, n: i64| {
        two(out, n / 100);
        two(out, n % 100);
    };
    if clf {
        two(out, day);
        out.push('/');
        out.push_str(MONTHS[(month - 1) as usize]);
        out.push('/');
        four(out, year);
        out.push(':');
        two(out, h);
        out.push(':');
        two(out, mi);
        out.push(':');
        two(out, s);
        out.push_str(" +0000");
    } else {
        let ms = i64::from(d.subsec_millis());
        four(out, year);
        out.push('-');
        two(out, month);
        out.push('-');
        two(out, day);
        out.push('T');
        two(out, h);
        out.push(':');
        two(out, mi);
        out.push(':');
        two(out, s);
        out.push('.');
        out.push((b'0' + (ms / 100) as u8) as char);
        two(out, ms % 100);
        out.push('Z');
    }
}

/// A valid `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`, IDs not all zeros): its trace ID,
/// parent ID and flags.
fn traceparent(v: &[u8]) -> Option<(String, String, String)> {
    let s = std::str::from_utf8(v).ok()?;
    let mut parts = s.trim().split('-');
    let (ver, id, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    (hex(ver, 2)
        && ver != "ff"
        && hex(id, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && id.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0'))
    .then(|| (id.to_string(), parent.to_string(), flags.to_string()))
}

/// The request's server span and a client span per attempt at a backend.
fn export_spans(x: &crate::trace_export::SpanExporter, l: &Line) {
    use crate::trace_export::{Attr, Span};
    let trace_id = &l.trace_id;
    let mut attributes = vec![
        ("http.request.method", Attr::Str(l.method.to_string())),
        ("url.path", Attr::Str(l.target.clone())),
        ("server.address", Attr::Str(text(&l.host).to_string())),
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
    if l.request_id.is_some() {
        attributes.push(("gantry.request_id", Attr::Str(text(&l.request_id).to_string())));
    }
    let name = match &l.trail.router {
        Some(r) => format!("{} {r}", l.method),
        None => l.method.to_string(),
    };
    x.export(Span {
        trace_id: trace_id.clone(),
        span_id: l.span_id,
        parent: l.parent_span.clone(),
        name,
        kind: 2,
        start: l.time,
        end: l.time + l.took,
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
            start: l.time + t.start,
            end: l.time + t.end,
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
        let (mut iso, mut clf) = (String::new(), String::new());
        write_time(&mut iso, t, false);
        write_time(&mut clf, t, true);
        assert_eq!(iso, "2000-10-10T13:55:36.250Z");
        assert_eq!(clf, "10/Oct/2000:13:55:36 +0000");
        let mut j = String::new();
        json_str(&mut j, "a\"b\\c\n");
        assert_eq!(j, r#""a\"b\\c\u000a""#);
        assert_eq!(
            traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").map(|t| t.0),
            Some("4bf92f3577b34da6a3ce929d0e0e4736".to_string())
        );
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"garbage",
        ] {
            assert_eq!(traceparent(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(clf_escape("a\"b\nc"), "a\\\"b\\x0ac");
    }
}
