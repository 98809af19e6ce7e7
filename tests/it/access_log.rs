//! The access log, read as a user reads it: JSON lines that carry what happened to each request
//! (a 200, a 404 with no route, a 502 from a refused backend, a retried request), the Combined
//! Log Format, filters and sampling over 10,000 requests, a file reopened on SIGUSR1 with no line
//! lost, and a log nobody reads that never holds a request up.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

async fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    eventually(Duration::from_secs(10), "the access log lines", || async {
        let l = lines(path);
        (l.len() >= n).then_some(l)
    })
    .await
}

/// Sends `n` requests from `workers` concurrent clients; returns how many got 200.
async fn load(addr: std::net::SocketAddr, host: &'static str, n: usize, workers: usize) -> usize {
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (next, ok) = (next.clone(), ok.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let a = tokio::time::timeout(Duration::from_secs(10), get(&c, addr, host, "/"))
                    .await
                    .expect("a request was held up");
                if a.status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    ok.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_say_what_happened_to_each_request() {
    let ok = Backend::start("ok", Behavior::Name).await;
    let counter = Backend::start("counter", Behavior::CountBody).await;
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = format!(
        r#"
[access_log]
path = "access.log"
headers = ["Authorization", "X-Tenant"]
query = true
[routers.upload]
hosts = ["upload.test"]
service = "upload"
[services.upload]
backends = [{{ url = "{counter}" }}]
[routers.ok]
hosts = ["ok.test"]
service = "ok"
[routers.down]
hosts = ["down.test"]
service = "down"
[routers.retried]
hosts = ["retried.test"]
service = "retried"
[routers.quiet]
hosts = ["quiet.test"]
service = "ok"
access_log = false
[services.ok]
backends = [{{ url = "{ok}", version = "v2" }}]
[services.down]
backends = [{{ url = "http://{refused}" }}]
[services.retried]
policy = "round_robin"
backends = [{{ url = "http://{refused}", weight = 1000 }}, {{ url = "{ok}", weight = 1 }}]
"#,
        ok = ok.url(),
        counter = counter.url()
    );
    let g = Gantry::start(&config).await;
    let log = g.dir.path().join("access.log");
    let c = client();
    let a = send(
        &c,
        g.addr(),
        "GET",
        "ok.test",
        "/shop?item=7",
        &[
            ("authorization", "Bearer secret-token"),
            ("x-tenant", "acme"),
            ("user-agent", "curl/8"),
            ("referer", "https://ref.test/"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ],
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(get(&c, g.addr(), "nowhere.test", "/").await.status, 404);
    assert_eq!(get(&c, g.addr(), "down.test", "/").await.status, 502);
    let retried = get(&c, g.addr(), "retried.test", "/").await;
    assert_eq!(retried.status, 200);
    assert_eq!(get(&c, g.addr(), "quiet.test", "/").await.status, 200);
    let upload = c
        .request(
            http::Request::post(format!("http://{}/upload", g.addr()))
                .header("host", "upload.test")
                .body(TestBody::zeros(100_000))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(upload.status(), 200);
    drop(upload);

    let text = wait_lines(&log, 5).await;
    assert!(
        !text.join("\n").contains("secret-token"),
        "a credential was logged"
    );
    let parsed: Vec<Value> = text.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(parsed.len(), 5, "the opted-out router was logged: {text:?}");
    let by_host = |h: &str| parsed.iter().find(|v| v["host"] == h).unwrap().clone();
    let up = parsed.iter().find(|v| v["path"] == "/upload").unwrap();
    assert_eq!(up["bytes_received"], 100_000, "{up}");

    let line = parsed
        .iter()
        .find(|v| v["path"] == "/shop?item=7")
        .unwrap()
        .clone();
    assert_eq!(line["status"], 200);
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/shop?item=7");
    assert_eq!(line["protocol"], "HTTP/1.1");
    assert_eq!(line["client_ip"], "127.0.0.1");
    assert_eq!(line["router"], "ok");
    assert_eq!(line["service"], "ok");
    assert!(
        line["backend"].as_str().unwrap().contains(&ok.addr.to_string()),
        "{line}"
    );
    assert_eq!(line["version"], "v2");
    assert_eq!(line["attempts"], 1);
    assert_eq!(line["bytes_sent"], 2, "the body \"ok\"");
    assert_eq!(line["user_agent"], "curl/8");
    assert_eq!(line["referer"], "https://ref.test/");
    assert_eq!(line["header_authorization"], "REDACTED");
    assert_eq!(line["header_x_tenant"], "acme");
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(line["request_id"], a.headers["x-request-id"].to_str().unwrap());
    assert!(line["duration_ms"].as_f64().unwrap() >= line["upstream_ms"].as_f64().unwrap());
    assert!(line["time"].as_str().unwrap().ends_with('Z'));
    // Without a traceparent, Gantry starts a trace and the backend gets it.
    let seen = ok.last().headers;
    assert!(seen.contains_key("traceparent"), "{seen:?}");

    let line = by_host("nowhere.test");
    assert_eq!(
        (line["status"].clone(), line["error"].clone()),
        (404.into(), "no_route".into())
    );
    assert!(line["router"].is_null());

    let line = by_host("down.test");
    assert_eq!(line["status"], 502);
    assert_eq!(line["error"], "connect_refused");
    assert!(
        line["backend"].as_str().unwrap().contains(&refused.to_string()),
        "{line}"
    );

    let line = by_host("retried.test");
    assert_eq!(line["status"], 200);
    assert_eq!(line["attempts"], 2, "{line}");
    assert_eq!(line["retries"], 1);
    assert!(
        line["backend"].as_str().unwrap().contains(&ok.addr.to_string()),
        "{line}"
    );
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_sampling_hold_over_ten_thousand_requests() {
    let ok = Backend::start("ok", Behavior::Name).await;
    let failing = Backend::start("failing", Behavior::Status(503)).await;
    let config = format!(
        r#"
[access_log]
path = "access.log"
format = "combined"
filters = {{ status = ["500-599"], sample = 0.1 }}
[routers.ok]
hosts = ["ok.test"]
service = "ok"
[routers.failing]
hosts = ["failing.test"]
service = "failing"
[services.ok]
backends = [{{ url = "{}" }}]
[services.failing]
backends = [{{ url = "{}" }}]
"#,
        ok.url(),
        failing.url()
    );
    let g = Gantry::start(&config).await;
    let log = g.dir.path().join("access.log");
    assert_eq!(load(g.addr(), "ok.test", 8_000, 8).await, 8_000);
    load(g.addr(), "failing.test", 2_000, 8).await;
    // Every 5xx, and about a tenth of the rest.
    let all = eventually(Duration::from_secs(10), "the 5xx lines", || async {
        let l = lines(&log);
        (l.iter().filter(|l| l.contains("\" 503 ")).count() == 2_000).then_some(l)
    })
    .await;
    let sampled = all.iter().filter(|l| l.contains("\" 200 ")).count();
    let ratio = sampled as f64 / 8_000.0;
    assert!((0.08..=0.12).contains(&ratio), "{sampled} of 8000 sampled");
    // Combined Log Format: host ident user [time] "request" status bytes "referer" "agent".
    for l in &all {
        let (head, rest) = l.split_once(" [").unwrap();
        assert_eq!(head, "127.0.0.1 - -", "{l}");
        let (time, rest) = rest.split_once("] \"").unwrap();
        assert_eq!(time.len(), "10/Oct/2000:13:55:36 +0000".len(), "{l}");
        assert!(rest.starts_with("GET / HTTP/1.1\" "), "{l}");
        assert!(rest.ends_with("\"\" \"\""), "no referer or agent was sent: {l}");
    }
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_file_and_no_line_is_lost_or_torn() {
    let ok = Backend::start("ok", Behavior::Name).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gantry.toml");
    std::fs::write(&config, one_service(&[(&ok, 1)], "")).unwrap();
    let log = dir.path().join("access.log");
    let g = GantryProcess::spawn(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--access-log",
        log.to_str().unwrap(),
        "--access-log-format",
        "common",
    ]);
    assert_eq!(load(g.addr, "a.test", 300, 4).await, 300);
    wait_lines(&log, 300).await;
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    g.signal(rustix::process::Signal::USR1);
    assert_eq!(load(g.addr, "a.test", 300, 4).await, 300);
    let (old, new) = eventually(Duration::from_secs(10), "600 lines across both files", || async {
        let (old, new) = (lines(&rotated), lines(&log));
        (old.len() + new.len() == 600 && !new.is_empty()).then_some((old, new))
    })
    .await;
    assert!(old.len() >= 300, "{}", old.len());
    for l in old.iter().chain(&new) {
        assert!(
            l.starts_with("127.0.0.1 - - [") && l.ends_with(" 200 2"),
            "torn: {l:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_nobody_reads_never_holds_a_request_up() {
    let ok = Backend::start("ok", Behavior::Name).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gantry.toml");
    std::fs::write(
        &config,
        format!("[access_log]\nqueue = 1024\n{}", one_service(&[(&ok, 1)], "")),
    )
    .unwrap();
    let mut g =
        GantryProcess::spawn_with_stdout(&["run", "--config", config.to_str().unwrap()], Stdio::piped());
    let stdout = g.child.stdout.take().unwrap();
    // Nobody reads: the pipe's buffer fills, then the queue, then lines are dropped.
    assert_eq!(load(g.addr, "a.test", 10_000, 8).await, 10_000);
    let metrics = admin_get(g.admin, "/metrics").await.body;
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gantry_access_log_dropped_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no drop counter in\n{metrics}"));
    assert!(dropped > 5_000, "dropped {dropped}");

    // The reader comes back: lines flow again.
    let read = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = read.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let c = client();
    let count = |marker: &str| {
        read.lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(&format!("\"path\":\"/{marker}/")))
            .count()
    };
    // First the backlog drains (the queue is full of old lines): a marked request's line shows
    // that it has.
    eventually(Duration::from_secs(10), "the backlog drained", || async {
        assert_eq!(get(&c, g.addr, "a.test", "/first/0").await.status, 200);
        (count("first") > 0).then_some(())
    })
    .await;
    for i in 0..200 {
        let a = get(&c, g.addr, "a.test", &format!("/after/{i}")).await;
        assert_eq!(a.status, 200);
    }
    eventually(Duration::from_secs(10), "every new line read", || async {
        (count("after") == 200).then_some(())
    })
    .await;
}

/// A test OTLP/HTTP collector: keeps every JSON body posted to it.
async fn collector() -> (std::net::SocketAddr, Arc<Mutex<Vec<Value>>>) {
    use http_body_util::BodyExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let sink = sink.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let sink = sink.clone();
                    async move {
                        assert_eq!(req.uri().path(), "/v1/traces");
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        sink.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
                        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from_static(b"{}"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, got)
}

fn spans(got: &Mutex<Vec<Value>>) -> Vec<Value> {
    got.lock()
        .unwrap()
        .iter()
        .flat_map(|b| {
            b["resourceSpans"][0]["scopeSpans"][0]["spans"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_collector_with_the_trace_ids_the_backend_and_the_log_saw() {
    let ok = Backend::start("ok", Behavior::Name).await;
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (at, got) = collector().await;
    let config = format!(
        r#"
[access_log]
path = "access.log"
[tracing]
endpoint = "http://{at}/v1/traces"
interval = "100ms"
[routers.ok]
hosts = ["ok.test"]
service = "ok"
[routers.retried]
hosts = ["retried.test"]
service = "retried"
[services.ok]
backends = [{{ url = "{ok}" }}]
[services.retried]
backends = [{{ url = "http://{refused}", weight = 1000 }}, {{ url = "{ok}", weight = 1 }}]
"#,
        ok = ok.url()
    );
    let g = Gantry::start(&config).await;
    let c = client();
    // A request that starts its trace at Gantry: the backend's parent is Gantry's span.
    assert_eq!(get(&c, g.addr(), "ok.test", "/a").await.status, 200);
    let seen = ok.last().headers["traceparent"].to_str().unwrap().to_string();
    let parts: Vec<&str> = seen.split('-').collect();
    let (trace, parent) = (parts[1].to_string(), parts[2].to_string());
    // A request that comes with a trace: Gantry's span is the caller's child.
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    send(&c, g.addr(), "GET", "ok.test", "/b", &[("traceparent", caller)])
        .await
        .unwrap();
    assert!(
        ok.last().headers["traceparent"]
            .to_str()
            .unwrap()
            .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    );
    // A retried request: two attempts, two client spans.
    assert_eq!(get(&c, g.addr(), "retried.test", "/c").await.status, 200);

    let all = eventually(Duration::from_secs(10), "the spans at the collector", || async {
        let s = spans(&got);
        (s.len() >= 6).then_some(s)
    })
    .await;
    let server = |path: &str| {
        all.iter()
            .find(|s| {
                s["kind"] == 2
                    && s["attributes"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|a| a["key"] == "url.path" && a["value"]["stringValue"] == path)
            })
            .unwrap_or_else(|| panic!("no server span for {path}: {all:#?}"))
            .clone()
    };
    let a = server("/a");
    assert_eq!(a["traceId"], trace.as_str());
    assert_eq!(
        a["spanId"],
        parent.as_str(),
        "the backend's parent is Gantry's span"
    );
    assert!(a.get("parentSpanId").is_none());
    let b = server("/b");
    assert_eq!(b["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(b["parentSpanId"], "00f067aa0ba902b7");
    let c3 = server("/c");
    let mut tries: Vec<Value> = all
        .iter()
        .filter(|s| s["kind"] == 3 && s["parentSpanId"] == c3["spanId"])
        .cloned()
        .collect();
    tries.sort_by_key(|s| s["startTimeUnixNano"].as_str().unwrap().parse::<u128>().unwrap());
    let statuses: Vec<&Value> = tries
        .iter()
        .map(|s| &s["attributes"][1]["value"]["intValue"])
        .collect();
    assert_eq!(statuses, ["502", "200"], "{tries:#?}");
    // The access log names the same traces.
    let log = wait_lines(&g.dir.path().join("access.log"), 3).await.join("\n");
    assert!(
        log.contains(&trace) && log.contains("4bf92f3577b34da6a3ce929d0e0e4736"),
        "{log}"
    );
    g.running.shutdown().await;

    // A collector that is down: requests are unaffected, spans are dropped and counted.
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let g = Gantry::start(&format!(
        "[tracing]\nendpoint = \"http://{down}/v1/traces\"\ninterval = \"50ms\"\n{}",
        one_service(&[(&ok, 1)], "")
    ))
    .await;
    assert_eq!(load(g.addr(), "a.test", 500, 4).await, 500);
    eventually(Duration::from_secs(10), "the dropped spans counted", || async {
        let m = admin_get(g.running.admin_addr, "/metrics").await.body;
        m.lines()
            .find_map(|l| l.strip_prefix("gantry_trace_spans_dropped_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&n| n > 0)
    })
    .await;
    g.running.shutdown().await;
}
