//! Health and resilience: failover without failed requests, outlier ejection, active checks,
//! slow start, panic and ejection limits, flapping, circuit breaking.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::Request;

use crate::support::*;

/// The live state of one backend from the admin API.
async fn backend_json(admin: SocketAddr, service: &str, b: &Backend) -> serde_json::Value {
    let routes = admin_json(admin, "/api/v1/routes").await;
    routes["services"][service]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["url"] == b.url())
        .cloned()
        .unwrap_or_else(|| panic!("{} not in {service}", b.url()))
}

fn config_of(backends: &[(&Backend, u32)], service_extra: &str) -> String {
    one_service(backends, service_extra)
}

/// Sends requests from `workers` clients until `stop`, counting answers per backend and
/// collecting failures. Bounded by `max` requests per worker.
fn load(
    addr: SocketAddr,
    workers: usize,
    max: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(HashMap<String, u64>, Vec<String>)> {
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let c = client();
                let (mut hits, mut failed) = (HashMap::<String, u64>::new(), Vec::new());
                for _ in 0..max {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match send(&c, addr, "GET", "h", "/", &[]).await {
                        Ok(a) if a.status == 200 => *hits.entry(a.backend().to_string()).or_default() += 1,
                        Ok(a) => failed.push(format!("{} {}", a.status, a.body)),
                        Err(e) => failed.push(e),
                    }
                }
                (hits, failed)
            }));
        }
        let (mut hits, mut failed) = (HashMap::new(), Vec::new());
        for t in tasks {
            let (h, f) = t.await.unwrap();
            for (k, v) in h {
                *hits.entry(k).or_default() += v;
            }
            failed.extend(f);
        }
        (hits, failed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_backends_under_load_fails_no_request() {
    let a = Backend::start("a", Behavior::Name).await;
    let b = Backend::start("b", Behavior::Name).await;
    let victim = Backend::start("victim", Behavior::Name).await;
    let g = Gantry::start(&config_of(&[(&a, 1), (&b, 1), (&victim, 1)], "")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(g.addr(), 4, 50_000, stop.clone());
    eventually(Duration::from_secs(10), "the victim to serve traffic", || async {
        (victim.requests() > 200).then_some(())
    })
    .await;
    victim.stop();
    let at_kill = a.requests() + b.requests();
    eventually(
        Duration::from_secs(20),
        "traffic to go on after the kill",
        || async { (a.requests() + b.requests() > at_kill + 2000).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let (hits, failed) = running.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} failed requests, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(hits["a"] > 0 && hits["b"] > 0, "{hits:?}");
    let state = backend_json(g.running.admin_addr, "svc", &victim).await;
    assert_eq!(state["state"], "ejected", "{state}");
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_whose_body_reached_a_dying_backend_is_not_replayed() {
    let dying = Backend::start("dying", Behavior::CloseAfterBody).await;
    let other = Backend::start("other", Behavior::CountBody).await;
    // Weights 10:1: smooth round robin sends the first request to `dying`.
    let g = Gantry::start(&config_of(&[(&dying, 10), (&other, 1)], "")).await;
    let c = client();
    let req = Request::post(format!("http://{}/orders", g.addr()))
        .header("host", "h")
        .body(TestBody::full("x".repeat(5000)))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(dying.requests(), 1, "the dying backend saw the request once");
    assert_eq!(
        other.requests(),
        0,
        "a POST whose body was sent must never be replayed"
    );
    // A GET without a body is replayed on the other backend.
    let a = get(&c, g.addr(), "h", "/").await;
    assert_eq!((a.status, a.backend()), (200, "other"));
    assert_eq!(dying.requests(), 2);
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_answering_503_is_ejected_returns_and_is_ejected_longer_the_second_time() {
    let good = Backend::start("good", Behavior::Name).await;
    let bad = Backend::start("bad", Behavior::Status(503)).await;
    let outlier =
        "outlier = { consecutive_failures = 5, base_ejection_time = \"1s\", max_ejection_time = \"10s\" }";
    let g = Gantry::start(&config_of(&[(&good, 1), (&bad, 1)], outlier)).await;
    let (admin, c) = (g.running.admin_addr, client());

    for round in 1..=2u64 {
        let before = bad.requests();
        // Five 503s in a row eject it.
        eventually(
            Duration::from_secs(10),
            "the bad backend to be ejected",
            || async {
                get(&c, g.addr(), "h", "/").await;
                let s = backend_json(admin, "svc", &bad).await;
                (s["state"] == "ejected").then_some(())
            },
        )
        .await;
        assert_eq!(
            bad.requests() - before,
            5,
            "round {round}: ejected after exactly five failures"
        );
        let s = backend_json(admin, "svc", &bad).await;
        assert_eq!(s["ejections"], round);
        let remaining = s["ejected_for_ms"].as_u64().unwrap();
        assert!(
            remaining > (round - 1) * 1000 && remaining <= round * 1000,
            "round {round}: {remaining} ms"
        );
        // While ejected, everything goes to the good backend.
        let during = bad.requests();
        for _ in 0..10 {
            assert_eq!(get(&c, g.addr(), "h", "/").await.backend(), "good");
        }
        assert_eq!(bad.requests(), during);
        // It comes back when the ejection ends.
        eventually(Duration::from_secs(10), "the ejection to end", || async {
            (backend_json(admin, "svc", &bad).await["state"] != "ejected").then_some(())
        })
        .await;
    }
    let m = admin_get(admin, "/metrics").await.body;
    assert!(
        m.contains(&format!(
            "gantry_backend_ejections_total{{backend=\"{}\",service=\"svc\"}} 2",
            bad.url()
        )),
        "{m}"
    );
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_backend_failing_its_check_gets_no_traffic_until_it_passes() {
    let old = Backend::start("old", Behavior::Name).await;
    let new = Backend::start("new", Behavior::Name).await;
    new.set_healthy(false);
    let check = "health_check = { path = \"/health\", interval = \"100ms\", timeout = \"1s\" }";
    let g = Gantry::start(&config_of(&[(&old, 1)], check)).await;
    g.reconfigure(&config_of(&[(&old, 1), (&new, 1)], check)).await;
    let c = client();
    // Five seconds of traffic while its check fails (bounded in count too).
    let until = Instant::now() + Duration::from_secs(5);
    let mut sent = 0;
    while Instant::now() < until && sent < 100_000 {
        let a = get(&c, g.addr(), "h", "/").await;
        assert_eq!((a.status, a.backend()), (200, "old"));
        sent += 1;
    }
    assert_eq!(new.requests(), 0, "a backend failing its check got traffic");
    assert!(new.health_checks() >= 20, "checks ran: {}", new.health_checks());
    let s = backend_json(g.running.admin_addr, "svc", &new).await;
    assert_eq!(s["state"], "not_ready");
    assert!(s["reason"].as_str().unwrap().contains("503"), "{s}");
    new.set_healthy(true);
    eventually(
        Duration::from_secs(10),
        "the new backend to get traffic",
        || async {
            get(&c, g.addr(), "h", "/").await;
            (new.requests() > 0).then_some(())
        },
    )
    .await;
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_keeps_a_new_backends_first_second_well_below_its_final_share() {
    let old = Backend::start("old", Behavior::Name).await;
    let new = Backend::start("new", Behavior::Name).await;
    let g = Gantry::start(&config_of(&[(&old, 1)], "slow_start = \"4s\"")).await;
    g.reconfigure(&config_of(&[(&old, 1), (&new, 1)], "slow_start = \"4s\""))
        .await;
    let c = client();
    let share = |secs: f64| {
        let c = c.clone();
        let addr = g.addr();
        async move {
            let until = Instant::now() + Duration::from_secs_f64(secs);
            let (mut n, mut to_new) = (0u32, 0u32);
            while Instant::now() < until && n < 100_000 {
                let a = get(&c, addr, "h", "/").await;
                assert_eq!(a.status, 200);
                n += 1;
                to_new += u32::from(a.backend() == "new");
            }
            f64::from(to_new) / f64::from(n)
        }
    };
    let first = share(1.0).await;
    let s = backend_json(g.running.admin_addr, "svc", &new).await;
    assert_eq!(s["state"], "slow_start");
    eventually(Duration::from_secs(10), "slow start to end", || async {
        (backend_json(g.running.admin_addr, "svc", &new).await["state"] == "ready").then_some(())
    })
    .await;
    let last = share(1.0).await;
    assert!(
        first > 0.0,
        "the new backend got no traffic at all in its first second"
    );
    assert!(first < 0.25, "first-second share {first:.3}");
    assert!((last - 0.5).abs() < 0.05, "final share {last:.3}");
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_down_gets_a_fast_503_and_at_most_half_are_ejected() {
    let mut urls = Vec::new();
    for _ in 0..4 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        urls.push(format!("http://{}", l.local_addr().unwrap()));
    }
    let list: Vec<String> = urls.iter().map(|u| format!("{{ url = \"{u}\" }}")).collect();
    let g = Gantry::start(&format!(
        "[routers.all]\nservice = \"svc\"\n[services.svc]\nbackends = [{}]\ntimeouts = {{ connect = \"2s\" }}\n\
         outlier = {{ consecutive_failures = 2, max_ejection_percent = 50 }}\n",
        list.join(", ")
    ))
    .await;
    let c = client();
    for _ in 0..40 {
        let t = Instant::now();
        let a = get(&c, g.addr(), "h", "/").await;
        assert_eq!(a.status, 503, "{}", a.body);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "a request took {:?}",
            t.elapsed()
        );
    }
    let routes = admin_json(g.running.admin_addr, "/api/v1/routes").await;
    let ejected = routes["services"]["svc"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["state"] == "ejected")
        .count();
    assert_eq!(ejected, 2, "max_ejection_percent = 50 ejects two of four");
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_flapping_every_200ms_rebuilds_nothing_and_keeps_its_pool() {
    let steady = Backend::start("steady", Behavior::Name).await;
    let flappy = Backend::start("flappy", Behavior::Name).await;
    let check = "health_check = { path = \"/health\", interval = \"50ms\", unhealthy_threshold = 1, healthy_threshold = 1 }";
    let g = Gantry::start(&config_of(&[(&steady, 1), (&flappy, 1)], check)).await;
    let generation = g.running.generation();
    let stop = Arc::new(AtomicBool::new(false));
    let flapper = {
        let (flappy, stop) = (flappy.clone(), stop.clone());
        tokio::spawn(async move {
            let mut healthy = true;
            for _ in 0..15 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                healthy = !healthy;
                flappy.set_healthy(healthy);
                tokio::time::sleep(Duration::from_millis(200)).await; // the flapping itself
            }
            flappy.set_healthy(true);
        })
    };
    let running = load(g.addr(), 2, 5_000, stop.clone());
    flapper.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let (_, failed) = running.await.unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        g.running.generation(),
        generation,
        "health changes rebuilt the routing table"
    );
    let m = admin_get(g.running.admin_addr, "/metrics").await.body;
    let opened: u64 = m
        .lines()
        .find(|l| l.starts_with("gantry_upstream_connections_opened_total{") && l.contains(&flappy.url()))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        opened <= 4,
        "the flapping backend's pool was reset: {opened} connections opened"
    );
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_concurrent_requests_against_a_limit_of_100_get_fast_503s() {
    raise_fd_limit();
    // The backend holds its answers 3 s: a 503 well before that cannot have waited for it, even
    // on a busy two-core machine running other tests.
    let slow = Backend::start("slow", Behavior::Delay(Duration::from_secs(3))).await;
    let g = Gantry::start(&config_of(
        &[(&slow, 1)],
        "limits = { max_pending_requests = 100 }",
    ))
    .await;
    let addr = g.addr();
    let rejected_fast = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    // 25 HTTP/2 connections x 200 streams.
    for _ in 0..25 {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        for _ in 0..200 {
            let mut s = sender.clone();
            let rejected_fast = rejected_fast.clone();
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                // A GET ends its stream on the HEADERS frame, as h2load and browsers send it.
                let resp = s
                    .send_request(
                        Request::get("http://h/")
                            .body(http_body_util::Empty::<bytes::Bytes>::new())
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                if status == 503 && t.elapsed() < Duration::from_millis(2500) {
                    rejected_fast.fetch_add(1, Ordering::Relaxed);
                }
                status
            }));
        }
    }
    let mut by_status: HashMap<u16, u64> = HashMap::new();
    for t in tasks {
        *by_status.entry(t.await.unwrap()).or_default() += 1;
    }
    assert_eq!(by_status.values().sum::<u64>(), 5000);
    assert!(
        slow.max_in_flight() <= 100,
        "the backend saw {} at once",
        slow.max_in_flight()
    );
    let ok = by_status.get(&200).copied().unwrap_or(0);
    let rejected = by_status.get(&503).copied().unwrap_or(0);
    assert!(ok >= 100 && ok + rejected == 5000, "{by_status:?}");
    assert_eq!(
        rejected_fast.load(Ordering::Relaxed),
        rejected,
        "every 503 came before the backend's 3 s answer"
    );
    let m = admin_get(g.running.admin_addr, "/metrics").await.body;
    let line =
        format!("gantry_circuit_breaker_rejections_total{{scope=\"service\",service=\"svc\"}} {rejected}");
    assert!(m.contains(&line), "missing {line}");
    g.running.shutdown().await;
}
