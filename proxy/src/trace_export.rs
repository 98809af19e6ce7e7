//! Spans over OTLP/HTTP (JSON): one server span per request and a client span per attempt at a
//! backend (retries visible), batched on a task of their own behind a bounded queue. A slow or
//! absent collector costs dropped spans (counted), never a request's time.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use gantry_config::traces::Tracing;
use http::{Request, Uri, header};
use http_body_util::Full;
use prometheus::IntCounter;
use tokio::sync::mpsc;

/// One finished span.
#[derive(Debug)]
pub struct Span {
    pub trace_id: String,
    pub span_id: u64,
    pub parent: Option<String>,
    pub name: String,
    /// 2: server, 3: client (OTLP's `SpanKind`).
    pub kind: u8,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Attr)>,
    pub error: bool,
}

#[derive(Debug)]
pub enum Attr {
    Str(String),
    Int(i64),
}

pub struct SpanExporter {
    tx: mpsc::Sender<Span>,
    dropped: IntCounter,
}

impl std::fmt::Debug for SpanExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpanExporter")
    }
}

impl SpanExporter {
    /// Starts the export task (call within a runtime).
    pub fn start(spec: Tracing, registry: &prometheus::Registry) -> Result<Arc<Self>, prometheus::Error> {
        let dropped = prometheus::register_int_counter_with_registry!(
            "gantry_trace_spans_dropped_total",
            "Spans dropped: the export queue was full, or the collector failed or was too slow",
            registry
        )?;
        let (tx, rx) = mpsc::channel(spec.queue);
        tokio::spawn(run(spec, rx, dropped.clone()));
        Ok(Arc::new(SpanExporter { tx, dropped }))
    }

    pub fn export(&self, span: Span) {
        if self.tx.try_send(span).is_err() {
            self.dropped.inc();
        }
    }
}

async fn run(spec: Tracing, mut rx: mpsc::Receiver<Span>, dropped: IntCounter) {
    let Ok(uri) = spec.endpoint.parse::<Uri>() else {
        return;
    };
    let Some(authority) = uri.authority().cloned() else {
        return;
    };
    let addr = format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80));
    let path = uri
        .path_and_query()
        .map_or("/v1/traces", |p| p.as_str())
        .to_string();
    let mut batch = Vec::with_capacity(spec.batch);
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + spec.interval;
        while batch.len() < spec.batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        let body = encode(&spec.service_name, &batch);
        let n = batch.len() as u64;
        batch.clear();
        let sent = tokio::time::timeout(spec.timeout, post(&addr, &authority, &path, body)).await;
        if !matches!(sent, Ok(Ok(()))) {
            dropped.inc_by(n);
            tracing::debug!(collector = %spec.endpoint, "span export failed");
        }
    }
}

async fn post(addr: &str, authority: &http::uri::Authority, path: &str, body: String) -> Result<(), ()> {
    let mut sender = crate::forward_auth::connect(addr).await.ok_or(())?;
    let req = Request::post(path)
        .header(header::HOST, authority.as_str())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|_| ())?;
    let resp = sender.send_request(req).await.map_err(|_| ())?;
    resp.status().is_success().then_some(()).ok_or(())
}

fn nanos(t: SystemTime) -> u128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos()
}

/// An OTLP `ExportTraceServiceRequest` in its JSON encoding (IDs in hex, times as strings).
fn encode(service: &str, spans: &[Span]) -> String {
    let json = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let mut out = String::with_capacity(256 * spans.len() + 256);
    let _ = write!(
        out,
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":{}}}}}]}},"scopeSpans":[{{"scope":{{"name":"gantry"}},"spans":["#,
        json(service)
    );
    for (i, s) in spans.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            r#"{{"traceId":"{}","spanId":"{:016x}","name":{},"kind":{},"startTimeUnixNano":"{}","endTimeUnixNano":"{}""#,
            s.trace_id,
            s.span_id,
            json(&s.name),
            s.kind,
            nanos(s.start),
            nanos(s.end)
        );
        if let Some(p) = &s.parent {
            let _ = write!(out, r#","parentSpanId":"{p}""#);
        }
        out.push_str(r#","attributes":["#);
        for (j, (k, v)) in s.attributes.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            match v {
                Attr::Str(t) => {
                    let _ = write!(out, r#"{{"key":"{k}","value":{{"stringValue":{}}}}}"#, json(t));
                }
                Attr::Int(n) => {
                    let _ = write!(out, r#"{{"key":"{k}","value":{{"intValue":"{n}"}}}}"#);
                }
            }
        }
        let _ = write!(out, r#"],"status":{{"code":{}}}}}"#, if s.error { 2 } else { 0 });
    }
    out.push_str("]}]}]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_encodes_as_otlp_json() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1);
        let spans = [Span {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            span_id: 0xab,
            parent: Some("00f067aa0ba902b7".into()),
            name: "GET \"x\"".into(),
            kind: 2,
            start: t,
            end: t + Duration::from_millis(5),
            attributes: vec![
                ("http.response.status_code", Attr::Int(502)),
                ("gantry.router", Attr::Str("web".into())),
            ],
            error: true,
        }];
        let v: serde_json::Value = serde_json::from_str(&encode("gantry", &spans)).unwrap();
        let s = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(s["spanId"], "00000000000000ab");
        assert_eq!(s["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(s["name"], "GET \"x\"");
        assert_eq!(s["startTimeUnixNano"], "1000000000");
        assert_eq!(s["endTimeUnixNano"], "1005000000");
        assert_eq!(s["attributes"][0]["value"]["intValue"], "502");
        assert_eq!(s["status"]["code"], 2);
        assert_eq!(
            v["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "gantry"
        );
    }
}
