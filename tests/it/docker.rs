//! Docker discovery against the real engine: compose projects, scaling, stops under load,
//! health checks, canary labels, pause, engine disconnection, bad labels, and Gantry itself in
//! a container routing by container IP.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, UnixStream};

use crate::docker_support::*;
use crate::support::*;

/// Docker tests run one at a time: they share one engine (and two cores).
pub(crate) async fn lock() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

pub(crate) async fn gantry_on_docker(config: &str, endpoint: Option<String>) -> Gantry {
    let opts = gantry::Options {
        docker: Some(gantry::DockerFlags {
            endpoint,
            published: Some(true),
            network: None,
            scale: None,
        }),
        ..Default::default()
    };
    Gantry::start_with(config, opts).await
}

/// Which backends (container hostnames) answer `n` requests for `host`, and the failures.
pub(crate) async fn spread(addr: SocketAddr, host: &str, n: usize) -> (HashMap<String, usize>, Vec<String>) {
    let c = client();
    let (mut hits, mut failed) = (HashMap::new(), Vec::new());
    for _ in 0..n {
        match send(&c, addr, "GET", host, "/", &[]).await {
            Ok(a) if a.status == 200 => *hits.entry(a.backend().to_string()).or_insert(0) += 1,
            Ok(a) => failed.push(format!("{} {}", a.status, a.body.trim())),
            Err(e) => failed.push(e),
        }
    }
    (hits, failed)
}

/// Continuous GETs for `host` from `workers` clients until `stop`; returns the failures.
pub(crate) fn load(
    addr: SocketAddr,
    host: String,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    clients(addr, "GET", host, workers, 100_000, stop)
}

/// The backend URLs Gantry has for a service.
async fn backend_urls(admin: SocketAddr, service: &str) -> BTreeSet<String> {
    let routes = admin_json(admin, "/api/v1/routes").await;
    routes["services"][service]["backends"]
        .as_array()
        .map(|b| b.iter().map(|x| x["url"].as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// The problems the Docker source reports (`/api/v1/status`).
async fn docker_problems(admin: SocketAddr) -> Option<Vec<String>> {
    let s = admin_json(admin, "/api/v1/status").await;
    Some(
        s["sources"]["docker"]["problems"]
            .as_array()?
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect(),
    )
}

/// Host ports a container publishes for container port `port`, as backend URLs.
fn published_url(container: &str, port: u16) -> String {
    let p = docker(&["port", container, &format!("{port}/tcp")]);
    format!(
        "http://{}",
        p.lines().next().unwrap().replace("0.0.0.0", "127.0.0.1")
    )
}

pub(crate) fn run_backend(cleanup: &mut Cleanup, labels: &[(&str, &str)], extra: &[&str]) -> String {
    let name = unique("gtc");
    let mut args = vec!["run", "-d", "--name", &name, "-p", "127.0.0.1::80"];
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    for l in &labels {
        args.extend(["--label", l.as_str()]);
    }
    let image = test_image();
    let mut tail: Vec<&str> = Vec::new();
    let mut before_image = Vec::new();
    let mut after = false;
    for a in extra {
        if *a == "--" {
            after = true;
        } else if after {
            tail.push(a);
        } else {
            before_image.push(*a);
        }
    }
    args.extend(before_image);
    args.push(image);
    args.extend(tail);
    let id = docker(&args);
    cleanup.containers.insert(name.clone());
    wait_answering(&name);
    id[..12].to_string()
}

/// Waits until a container's backend answers on its published port 80. `docker run` returns
/// once the process has started, not once it listens: until then Docker's proxy accepts and
/// closes each connection, and those failures would get the replica ejected by outlier
/// detection (30 s) before the test has begun.
fn wait_answering(container: &str) {
    use std::io::{Read, Write};
    let url = published_url(container, 80);
    let addr = url.trim_start_matches("http://").to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answered = std::net::TcpStream::connect(&addr).is_ok_and(|mut s| {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut head = [0u8; 8];
            s.write_all(b"GET / HTTP/1.0\r\nHost: ready.test\r\n\r\n").is_ok()
                && s.read_exact(&mut head).is_ok()
                && head.starts_with(b"HTTP/1.")
        });
        if answered {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "container {container} does not answer on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_replicas_are_routed_and_follow_scaling_without_failures() {
    let _lock = lock().await;
    let mut cleanup = Cleanup::default();
    let host = format!("{}.test", unique("blog"));
    let compose = Compose::new(
        "examples/compose/docker-compose.yml",
        &[("BLOG_IMAGE", test_image()), ("BLOG_HOST", &host)],
        &mut cleanup,
    );
    let g = gantry_on_docker("", None).await;
    compose.run(&["up", "-d"]);
    let ids = compose.ids("blog");
    assert_eq!(ids.len(), 3);
    eventually(
        Duration::from_secs(20),
        "requests to reach all three replicas",
        || async {
            let (hits, _) = spread(g.addr(), &host, 30).await;
            (hits.keys().cloned().collect::<BTreeSet<_>>() == ids).then_some(())
        },
    )
    .await;

    compose.run(&["up", "-d", "--scale", "blog=5"]);
    let five = compose.ids("blog");
    assert_eq!(five.len(), 5);
    eventually(
        Duration::from_secs(20),
        "requests to reach all five replicas",
        || async {
            let (hits, _) = spread(g.addr(), &host, 50).await;
            (hits.keys().cloned().collect::<BTreeSet<_>>() == five).then_some(())
        },
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let running = load(g.addr(), host.clone(), 4, stop.clone());
    compose.run(&["up", "-d", "--scale", "blog=2"]);
    let two = compose.ids("blog");
    assert_eq!(two.len(), 2);
    eventually(
        Duration::from_secs(20),
        "Gantry to follow the scale-down",
        || async { (backend_urls(g.running.admin_addr, &host).await.len() == 2).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = running.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the scale-down: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(3)]
    );
    let (hits, _) = spread(g.addr(), &host, 20).await;
    assert_eq!(hits.keys().cloned().collect::<BTreeSet<_>>(), two);
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_stop_of_a_replica_under_load_fails_no_request() {
    let _lock = lock().await;
    let mut cleanup = Cleanup::default();
    let host = format!("{}.test", unique("stop"));
    let ids: Vec<String> = (0..3)
        .map(|_| run_backend(&mut cleanup, &[("gantry.routing.port_80", &host)], &[]))
        .collect();
    let g = gantry_on_docker("", None).await;
    eventually(Duration::from_secs(20), "three backends", || async {
        (backend_urls(g.running.admin_addr, &host).await.len() == 3).then_some(())
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(g.addr(), host.clone(), 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await; // let the load run before the stop
    docker(&["stop", "-t", "5", &ids[0]]);
    eventually(
        Duration::from_secs(10),
        "the stopped replica to leave",
        || async { (backend_urls(g.running.admin_addr, &host).await.len() == 2).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = running.await.unwrap();
    assert!(ok > 100, "the load did not run ({ok} requests)");
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_failing_its_healthcheck_gets_no_request_until_healthy() {
    let _lock = lock().await;
    let mut cleanup = Cleanup::default();
    let host = format!("{}.test", unique("hc"));
    let healthcheck = [
        "--health-cmd",
        "/gantry probe http://127.0.0.1:80/health",
        "--health-interval",
        "200ms",
        "--health-retries",
        "1",
    ];
    let steady = run_backend(&mut cleanup, &[("gantry.routing.port_80", &host)], &healthcheck);
    let g = gantry_on_docker("", None).await;
    eventually(
        Duration::from_secs(20),
        "the healthy container to serve",
        || async {
            spread(g.addr(), &host, 1)
                .await
                .0
                .contains_key(&steady)
                .then_some(())
        },
    )
    .await;
    let mut args = healthcheck.to_vec();
    args.extend(["--", "--unhealthy-for", "5s"]);
    // From before `docker run`: the 5 s of failing health start with the container.
    let started = Instant::now();
    let late = run_backend(&mut cleanup, &[("gantry.routing.port_80", &host)], &args);
    let c = client();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(4) && sent < 50_000 {
        let a = get(&c, g.addr(), &host, "/").await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_ne!(
            a.backend(),
            late,
            "the container got a request while its health check failed"
        );
        sent += 1;
    }
    eventually(
        Duration::from_secs(30),
        "the container to get traffic once healthy",
        || async {
            spread(g.addr(), &host, 10)
                .await
                .0
                .contains_key(&late)
                .then_some(())
        },
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "traffic before the health check passed"
    );
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_compose_services_split_ninety_ten_by_labels() {
    let _lock = lock().await;
    let mut cleanup = Cleanup::default();
    let host = format!("{}.test", unique("web"));
    let compose = Compose::new(
        "examples/compose-canary/docker-compose.yml",
        &[("WEB_IMAGE", test_image()), ("WEB_HOST", &host)],
        &mut cleanup,
    );
    let g = gantry_on_docker("", None).await;
    compose.run(&["up", "-d"]);
    eventually(Duration::from_secs(20), "three backends", || async {
        (backend_urls(g.running.admin_addr, &host).await.len() == 3).then_some(())
    })
    .await;
    let c = client();
    let mut v2 = 0;
    for _ in 0..2000 {
        let a = get(&c, g.addr(), &host, "/").await;
        assert_eq!(a.status, 200);
        v2 += usize::from(a.headers["x-version"] == "v2");
    }
    let share = v2 as f64 / 2000.0;
    assert!(
        (share - 0.10).abs() < 0.02,
        "v2 got {share:.3} of the traffic (labels say 10%)"
    );
    let routes = admin_json(g.running.admin_addr, "/api/v1/routes").await;
    assert_eq!(
        routes["services"][&host]["versions"],
        serde_json::json!({"v1": 90, "v2": 10})
    );
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_removes_unpause_restores_and_a_vanished_service_answers_503_then_404() {
    let _lock = lock().await;
    let mut cleanup = Cleanup::default();
    let host = format!("{}.test", unique("life"));
    let id = run_backend(&mut cleanup, &[("gantry.routing.port_80", &host)], &[]);
    let g = gantry_on_docker("[docker]\ngrace = \"3s\"\n", None).await;
    let c = client();
    // A request routed to the container just as it is paused waits for an answer that never
    // comes; give up on it after a second and ask again (0: no answer yet).
    let status = |c: &hyper_util::client::legacy::Client<_, TestBody>| {
        let (c, addr, host) = (c.clone(), g.addr(), host.clone());
        async move {
            tokio::time::timeout(Duration::from_secs(1), get(&c, addr, &host, "/"))
                .await
                .map_or(0, |a| a.status)
        }
    };
    eventually(Duration::from_secs(20), "the container to serve", || async {
        (status(&c).await == 200).then_some(())
    })
    .await;
    docker(&["pause", &id]);
    eventually(Duration::from_secs(10), "503 while paused", || async {
        (status(&c).await == 503).then_some(())
    })
    .await;
    docker(&["unpause", &id]);
    eventually(Duration::from_secs(10), "200 after unpause", || async {
        (status(&c).await == 200).then_some(())
    })
    .await;
    let gone = Instant::now();
    docker(&["rm", "-f", &id]);
    eventually(
        Duration::from_secs(10),
        "503 once the container is gone",
        || async { (status(&c).await == 503).then_some(()) },
    )
    .await;
    eventually(Duration::from_secs(15), "404 after the grace period", || async {
        (status(&c).await == 404).then_some(())
    })
    .await;
    let after = gone.elapsed();
    assert!(
        after >= Duration::from_secs(3),
        "404 before the grace period ended ({after:?})"
    );
    g.running.shutdown().await;
}

/// A TCP front for the Docker socket, which the test can cut and restore.
struct Relay {
    port: u16,
    stop: tokio_util::sync::CancellationToken,
}

impl Relay {
    async fn start(port: u16) -> Relay {
        let l = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = tokio_util::sync::CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            loop {
                let (mut tcp, _) = tokio::select! {
                    _ = s.cancelled() => return,
                    r = l.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let Ok(mut unix) = UnixStream::connect("/var/run/docker.sock").await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix) => {}
                        _ = s.cancelled() => {}
                    }
                });
            }
        });
        Relay { port, stop }
    }

    fn cut(&self) {
        self.stop.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_engine_connection_is_restored_the_table_matches_docker_ps() {
    let _lock = lock().await;
    let mut cleanup = Cleanup::default();
    let host = format!("{}.test", unique("relay"));
    let first = run_backend(&mut cleanup, &[("gantry.routing.port_80", &host)], &[]);
    let relay = Relay::start(0).await;
    let port = relay.port;
    let g = gantry_on_docker("", Some(format!("tcp://127.0.0.1:{port}"))).await;
    let admin = g.running.admin_addr;
    eventually(Duration::from_secs(20), "the first container", || async {
        (backend_urls(admin, &host).await == BTreeSet::from([published_url(&first, 80)])).then_some(())
    })
    .await;

    relay.cut();
    eventually(
        Duration::from_secs(10),
        "Gantry to notice the engine is gone",
        || async {
            (admin_json(admin, "/api/v1/status").await["sources"]["docker"]["reachable"] == false)
                .then_some(())
        },
    )
    .await;
    // While disconnected: one container stops, two start.
    docker(&["rm", "-f", &first]);
    let second = run_backend(&mut cleanup, &[("gantry.routing.port_80", &host)], &[]);
    let third = run_backend(&mut cleanup, &[("gantry.routing.port_80", &host)], &[]);
    // The last known routes keep serving meanwhile.
    assert_eq!(backend_urls(admin, &host).await.len(), 1);

    let _relay = Relay::start(port).await;
    let want = BTreeSet::from([published_url(&second, 80), published_url(&third, 80)]);
    eventually(
        Duration::from_secs(20),
        "the table to match docker ps after reconnecting",
        || async { (backend_urls(admin, &host).await == want).then_some(()) },
    )
    .await;
    let running: BTreeSet<String> = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=gantry.routing.port_80={host}"),
    ])
    .lines()
    .map(str::to_string)
    .collect();
    assert_eq!(running, BTreeSet::from([second.clone(), third.clone()]));
    let (hits, failed) = spread(g.addr(), &host, 20).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        hits.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([second, third])
    );
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_label_is_reported_and_the_rest_keeps_routing() {
    let _lock = lock().await;
    let mut cleanup = Cleanup::default();
    let u = unique("bad");
    let good_host = format!("{u}.test");
    let reserved = format!("admin.{u}.test");
    let claimed = format!("claimed.{u}.test");
    let good = run_backend(&mut cleanup, &[("gantry.routing.port_80", &good_host)], &[]);
    let mut names = Vec::new();
    for labels in [
        vec![("gantry.routing.port_abc".to_string(), good_host.clone())],
        vec![
            ("gantry.routing.port_80".to_string(), good_host.clone()),
            ("gantry.wieght".to_string(), "3".to_string()),
        ],
        vec![
            ("gantry.http.routers.r.rule".to_string(), "Hots(`x`)".to_string()),
            ("gantry.http.services.s.port".to_string(), "80".to_string()),
        ],
        vec![("gantry.routing.port_80".to_string(), reserved.clone())],
        vec![
            ("gantry.routing.port_80".to_string(), claimed.clone()),
            ("com.docker.compose.project".to_string(), "alpha".to_string()),
        ],
        vec![
            ("gantry.routing.port_80".to_string(), claimed.clone()),
            ("com.docker.compose.project".to_string(), "beta".to_string()),
        ],
    ] {
        let refs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let id = run_backend(&mut cleanup, &refs, &[]);
        names.push(
            docker(&["inspect", "-f", "{{.Name}}", &id])
                .trim_start_matches('/')
                .to_string(),
        );
    }
    let g = gantry_on_docker(&format!("[docker]\nreserved_hosts = [\"{reserved}\"]\n"), None).await;
    let admin = g.running.admin_addr;
    let problems = eventually(Duration::from_secs(20), "the problems to be reported", || async {
        let p = docker_problems(admin).await?;
        (p.iter()
            .filter(|x| names.iter().any(|n| x.contains(n.as_str())))
            .count()
            >= 5)
            .then_some(p)
    })
    .await;
    let expect = [
        format!(
            "docker container {}: label gantry.routing.port_abc: \"abc\" is not a port number",
            names[0]
        ),
        format!(
            "docker container {}: label gantry.wieght: unknown gantry label",
            names[1]
        ),
        format!(
            "docker container {}: label gantry.http.routers.r.rule: unknown matcher \"Hots\"",
            names[2]
        ),
        format!(
            "docker container {}: label gantry.routing.port_80: host \"{reserved}\" is reserved",
            names[3]
        ),
    ];
    // The project whose container sorts first keeps a contested route; the other is reported.
    let (winner, loser) = if names[4] < names[5] {
        (("alpha", &names[4]), &names[5])
    } else {
        (("beta", &names[5]), &names[4])
    };
    let contested = format!(
        "docker container {loser}: label gantry.routing.port_80: {claimed} is already routed to compose project {} (container {})",
        winner.0, winner.1
    );
    let expect: Vec<String> = expect.into_iter().chain([contested]).collect();
    for e in &expect {
        assert!(
            problems.iter().any(|p| p.starts_with(e.as_str())),
            "missing {e:?} in {problems:#?}"
        );
    }
    let m = admin_get(admin, "/metrics").await.body;
    assert!(
        m.lines()
            .any(|l| l.starts_with("gantry_source_problems{source=\"docker\"}") && !l.ends_with(" 0")),
        "{m}"
    );
    // The rest routes: the good container (and the one with a misspelled label) serve their host.
    let (hits, failed) = spread(g.addr(), &good_host, 20).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert!(hits.contains_key(&good));
    // (Routed as soon as it starts, before it may listen: no HEALTHCHECK says otherwise.)
    eventually(
        Duration::from_secs(20),
        "the claimed host to be answered",
        || async { (get(&client(), g.addr(), &claimed, "/").await.status == 200).then_some(()) },
    )
    .await;
    g.running.shutdown().await;
}

/// Compose files written for Alibaba Cloud: a bare routing name is a prefix of the default
/// domain, a name over 128 characters is refused with its label, and the family's labels Gantry
/// cannot honour are reported with their container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliyun_bare_names_take_the_default_domain_and_unsupported_labels_are_reported() {
    let _lock = lock().await;
    let mut cleanup = Cleanup::default();
    let u = unique("ali");
    let domain = format!("{u}.apps.test");
    let site = format!("wp.{u}.test");
    let routes = format!("wordpress;http://{site}/context");
    // Three labels of 50 characters: each within DNS's 63, the name over the cloud's 128.
    let long = format!("{0}.{0}.{0}.test", "x".repeat(50));
    let id = run_backend(
        &mut cleanup,
        &[
            ("aliyun.routing.port_80", &routes),
            ("aliyun.logs.web", "stdout"),
            ("aliyun.global", "true"),
        ],
        &[],
    );
    let long_id = run_backend(&mut cleanup, &[("aliyun.routing.port_80", &long)], &[]);
    let name_of = |id: &str| {
        docker(&["inspect", "-f", "{{.Name}}", id])
            .trim_start_matches('/')
            .to_string()
    };
    let (name, long_name) = (name_of(&id), name_of(&long_id));
    let g = gantry_on_docker(&format!("[docker]\ndefault_domain = \"{domain}\"\n"), None).await;
    let admin = g.running.admin_addr;
    let expect = [
        format!("docker container {name}: label aliyun.global: not supported by Gantry; ignored"),
        format!("docker container {name}: label aliyun.logs.web: not supported by Gantry; ignored"),
        format!(
            "docker container {long_name}: label aliyun.routing.port_80: \"{long}\": a name or path is longer than 128 characters"
        ),
    ];
    let problems = eventually(Duration::from_secs(20), "the problems to be reported", || async {
        let p = docker_problems(admin).await?;
        expect.iter().all(|e| p.contains(e)).then_some(p)
    })
    .await;
    assert_eq!(
        problems.iter().filter(|p| p.contains(&name)).count(),
        2,
        "each unsupported label once: {problems:#?}"
    );
    let c = client();
    let prefixed = format!("wordpress.{domain}");
    eventually(
        Duration::from_secs(20),
        "the prefixed name to be routed",
        || async { (get(&c, g.addr(), &prefixed, "/").await.status == 200).then_some(()) },
    )
    .await;
    assert_eq!(get(&c, g.addr(), &site, "/context").await.status, 200);
    assert_eq!(get(&c, g.addr(), &site, "/").await.status, 404, "only /context");
    assert_eq!(
        get(&c, g.addr(), "wordpress", "/").await.status,
        404,
        "not a host of its own"
    );
    g.running.shutdown().await;
}

/// `aliyun.probe.url` becomes Gantry's active health check of the route: a replica whose probe
/// fails gets no traffic, with no Docker HEALTHCHECK to tell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aliyun_probe_takes_a_failing_replica_out() {
    let _lock = lock().await;
    let mut cleanup = Cleanup::default();
    let host = format!("{}.test", unique("probe"));
    let labels = [
        ("aliyun.routing.port_80", host.as_str()),
        ("aliyun.probe.url", "http://container:80/health"),
        ("aliyun.probe.timeout_seconds", "2"),
    ];
    let healthy = run_backend(&mut cleanup, &labels, &[]);
    let failing = run_backend(&mut cleanup, &labels, &["--", "--unhealthy-for", "1h"]);
    let g = gantry_on_docker("", None).await;
    // Once the checks have run, every request goes to the replica whose probe passes.
    let hits = eventually(
        Duration::from_secs(45),
        "the failing replica to be taken out",
        || async {
            let (hits, failed) = spread(g.addr(), &host, 20).await;
            (failed.is_empty() && hits.len() == 1).then_some(hits)
        },
    )
    .await;
    assert_eq!(hits.get(&healthy), Some(&20), "{hits:?} (failing: {failing})");
    // Both replicas are the service's backends: the failing one is kept out by its probe.
    let routes = admin_json(g.running.admin_addr, "/api/v1/routes").await;
    let service = &routes["services"][host.as_str()];
    assert_eq!(service["health_check"]["path"], "/health", "{service}");
    let backends = service["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 2, "{service}");
    let failing_url = published_url(&failing, 80);
    let state = backends
        .iter()
        .find(|b| b["url"] == failing_url.as_str())
        .map(|b| b["state"].clone());
    assert_eq!(state, Some("not_ready".into()), "{service}");
    g.running.shutdown().await;
}

/// `aliyun.routing.session_sticky: true`: a client stays on the replica that first answered it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliyun_session_sticky_keeps_a_client_on_its_replica() {
    let _lock = lock().await;
    let mut cleanup = Cleanup::default();
    let host = format!("{}.test", unique("sticky"));
    let labels = [
        ("aliyun.routing.port_80", host.as_str()),
        ("aliyun.routing.session_sticky", "true"),
    ];
    let replicas = [
        run_backend(&mut cleanup, &labels, &[]),
        run_backend(&mut cleanup, &labels, &[]),
    ];
    let g = gantry_on_docker("", None).await;
    eventually(Duration::from_secs(20), "both replicas to be routed", || async {
        let (hits, _) = spread(g.addr(), &host, 10).await;
        (hits.len() == 2).then_some(())
    })
    .await;
    let c = client();
    let first = get(&c, g.addr(), &host, "/").await;
    assert!(replicas.contains(&first.backend().to_string()));
    let set = first.headers["set-cookie"].to_str().unwrap().to_string();
    let pair = set.split_once(';').unwrap().0;
    for _ in 0..20 {
        let again = send(&c, g.addr(), "GET", &host, "/", &[("cookie", pair)])
            .await
            .unwrap();
        assert_eq!(again.backend(), first.backend());
    }
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gantry_in_a_container_routes_by_container_ip_on_its_network() {
    let _lock = lock().await;
    let mut cleanup = Cleanup::default();
    let net = unique("gtnet");
    docker(&["network", "create", &net]);
    cleanup.networks.insert(net.clone());
    let host = format!("{}.test", unique("ip"));
    let mut backends = BTreeSet::new();
    for _ in 0..2 {
        let name = unique("gtb");
        let label = format!("gantry.routing.port_80={host}");
        let id = docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &net,
            "--label",
            &label,
            test_image(),
        ]);
        cleanup.containers.insert(name);
        backends.insert(id[..12].to_string());
    }
    let gname = unique("gtproxy");
    docker(&[
        "run",
        "-d",
        "--name",
        &gname,
        "--network",
        &net,
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock:ro",
        "-p",
        "127.0.0.1::8080",
        "-p",
        "127.0.0.1::8081",
        "--entrypoint",
        "/gantry",
        test_image(),
        "run",
        "--docker",
        "--docker-network",
        &net,
        "--listen",
        "0.0.0.0:8080",
        "--admin",
        "0.0.0.0:8081",
    ]);
    cleanup.containers.insert(gname.clone());
    let proxy: SocketAddr = docker(&["port", &gname, "8080/tcp"])
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let admin: SocketAddr = docker(&["port", &gname, "8081/tcp"])
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "both backends through the containerized Gantry",
        || async {
            let (hits, _) = spread(proxy, &host, 20).await;
            (hits.keys().cloned().collect::<BTreeSet<_>>() == backends).then_some(())
        },
    )
    .await;
    let subnet = docker(&[
        "network",
        "inspect",
        "-f",
        "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
        &net,
    ]);
    let prefix = subnet.rsplit_once('.').unwrap().0.to_string();
    let urls = backend_urls(admin, &host).await;
    assert_eq!(urls.len(), 2);
    for u in &urls {
        assert!(
            u.starts_with(&format!("http://{prefix}.")) && u.ends_with(":80"),
            "{u} is not an address on {net} ({subnet})"
        );
    }
}

// Middlewares from labels: declared on a container in Traefik's shape (headers with CORS, a
// regex redirect, error pages from a file-declared service), attached to its compact route with
// `gantry.middlewares`, next to a middleware the file declares (either source's routers may use
// either source's middlewares).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn middlewares_from_labels_and_the_file_apply_to_a_containers_route() {
    let _lock = lock().await;
    let mut cleanup = Cleanup::default();
    let host = format!("{}.test", unique("mw"));
    run_backend(
        &mut cleanup,
        &[
            ("gantry.routing.port_80", &host),
            ("gantry.middlewares", "sec,moved,auth,oops"),
            (
                "gantry.http.middlewares.sec.headers.cors.allow_origins",
                "https://app.test,https://admin.test",
            ),
            ("gantry.http.middlewares.sec.headers.cors.max_age", "60"),
            (
                "gantry.http.middlewares.moved.redirect.regex",
                "^http://[^/]+/old/(.*)$",
            ),
            (
                "gantry.http.middlewares.moved.redirect.replacement",
                "http://new.test/${1}",
            ),
            ("gantry.http.middlewares.oops.errors.status", "401"),
            ("gantry.http.middlewares.oops.errors.service", "error-pages"),
            ("gantry.http.middlewares.oops.errors.path", "/{status}.html"),
            (
                "gantry.http.middlewares.sec.headers.response.set.X-Frame-Options",
                "DENY",
            ),
            ("gantry.http.middlewares.sec.headers.response.set.X-Max", "10"),
            (
                "gantry.http.middlewares.sec.headers.request.remove",
                "X-Debug,X-Trace",
            ),
        ],
        &[],
    );
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let pages = Backend::start("login-page", Behavior::Name).await;
    let g = gantry_on_docker(
        &format!(
            "[middlewares.auth.basic_auth]\nusers = [\"ops:{hash}\"]\n\
             [services.error-pages]\nbackends = [{{ url = \"{}\" }}]\n",
            pages.url()
        ),
        None,
    )
    .await;
    let c = client();
    let challenged = eventually(Duration::from_secs(20), "the route behind basic auth", || async {
        let a = get(&c, g.addr(), &host, "/").await;
        (a.status == 401).then_some(a)
    })
    .await;
    assert_eq!(challenged.headers["www-authenticate"], "Basic realm=\"gantry\"");
    assert_eq!(challenged.body, "login-page", "the labels' error page");
    assert_eq!(pages.last().uri, "/401.html");
    // CORS (a preflight carries no credentials: answered before auth) and a regex redirect.
    let preflight = send(
        &c,
        g.addr(),
        "OPTIONS",
        &host,
        "/api",
        &[
            ("origin", "https://admin.test"),
            ("access-control-request-method", "GET"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.headers["access-control-allow-origin"],
        "https://admin.test"
    );
    assert_eq!(preflight.headers["access-control-max-age"], "60");
    let moved = get(&c, g.addr(), &host, "/old/page?x=1").await;
    assert_eq!(moved.status, 302, "{}", moved.body);
    assert_eq!(moved.headers["location"], "http://new.test/page?x=1");
    use base64::Engine;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("ops:s3cret")
    );
    // The middlewares answered without the backend so far: the container (no HEALTHCHECK, so
    // routed as soon as it starts) may not listen yet.
    let a = eventually(
        Duration::from_secs(20),
        "the backend behind the chain to answer",
        || async {
            let a = send(&c, g.addr(), "GET", &host, "/", &[("authorization", &auth)])
                .await
                .ok()?;
            (a.status != 502).then_some(a)
        },
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.headers["x-frame-options"], "DENY");
    assert_eq!(a.headers["x-max"], "10");
    let routes = admin_json(g.running.admin_addr, "/api/v1/routes").await;
    let router = routes["routers"]
        .as_object()
        .unwrap()
        .values()
        .find(|r| r["match"]["hosts"][0] == host.as_str())
        .cloned()
        .unwrap();
    assert_eq!(
        router["middlewares"],
        serde_json::json!(["sec", "moved", "auth", "oops"])
    );
    g.running.shutdown().await;
}
