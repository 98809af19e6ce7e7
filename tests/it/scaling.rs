//! Scaling recommendations from real traffic: published in /metrics, the admin API and etcd;
//! and the Docker scaler growing and shrinking a real compose service under load.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::docker_support::*;
use crate::etcd_support::*;
use crate::support::*;

pub(crate) fn recommendation(view: &serde_json::Value, service: &str) -> Option<serde_json::Value> {
    view["services"]
        .as_array()?
        .iter()
        .find(|s| s["service"] == service)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recommendations_follow_the_load_into_metrics_the_admin_api_and_etcd() {
    let etcd = Etcd::start().await;
    // Every answer takes 50 ms; 8 clients keep about 8 requests in flight.
    let b = Backend::start("slow", Behavior::Delay(Duration::from_millis(50))).await;
    let config = format!(
        r#"
[routers.api]
hosts = ["api.test"]
service = "api"

[services.api]
backends = [{{ url = "{}" }}]
scale = {{ min = 1, max = 6, target = 2, utilization = 1.0, window = "4s" }}
"#,
        b.url()
    );
    let opts = gantry::Options {
        etcd: Some(gantry::fleet::EtcdOptions {
            endpoints: etcd.endpoints().into(),
            prefix: "/gantry/".into(),
            instance_id: Some("scaling-test".into()),
        }),
        ..Default::default()
    };
    let g = Gantry::start_with(&config, opts).await;
    let admin = g.running.admin_addr;

    // No traffic: the minimum, with its inputs.
    let idle = eventually(Duration::from_secs(10), "a first recommendation", || async {
        recommendation(&admin_json(admin, "/api/v1/scaling").await, "api")
    })
    .await;
    assert_eq!(idle["replicas"], 1, "{idle}");
    assert_eq!(idle["ready"], 1, "{idle}");

    let stop = Arc::new(AtomicBool::new(false));
    let load = clients(g.addr(), "POST", "api.test".into(), 8, 2000, stop.clone());
    // 8 in flight at 2 per replica: 4 replicas, reached through the burst window.
    let busy = eventually(Duration::from_secs(15), "a recommendation of 4", || async {
        recommendation(&admin_json(admin, "/api/v1/scaling").await, "api").filter(|r| r["replicas"] == 4)
    })
    .await;
    assert_eq!(busy["mode"], "burst", "{busy}");
    let burst = &busy["burst"];
    assert!(burst["concurrency"].as_f64().unwrap() > 6.0, "{busy}");
    assert!(burst["requests_per_second"].as_f64().unwrap() > 50.0, "{busy}");
    let latency = burst["mean_latency_ms"].as_f64().unwrap();
    assert!((50.0..500.0).contains(&latency), "{busy}");
    assert_eq!(burst["error_rate"], 0.0, "{busy}");

    // The same figure in /metrics...
    let metrics = admin_get(admin, "/metrics").await.body;
    assert!(
        metrics.contains("gantry_scale_recommended_replicas{service=\"api\"} 4"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("gantry_scale"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // ...and in etcd, with the inputs that led to it.
    let c = etcd.client().await;
    let stored = eventually(Duration::from_secs(10), "the recommendation in etcd", || {
        let mut c = c.clone();
        async move {
            let r = c.get("/gantry/scaling/api", None).await.ok()?;
            let v: serde_json::Value = serde_json::from_slice(r.kvs().first()?.value()).ok()?;
            (v["recommendation"]["replicas"] == 4).then_some(v)
        }
    })
    .await;
    assert_eq!(stored["instance"], "scaling-test", "{stored}");
    assert!(stored["recommendation"]["burst"]["concurrency"].as_f64().unwrap() > 6.0);
    assert!(!stored["recommendation"]["reason"].as_str().unwrap().is_empty());

    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}",
        failed.len(),
        ok,
        &failed[..failed.len().min(3)]
    );

    // Without traffic it comes back to the minimum once the 4 s window agrees, and etcd follows.
    eventually(
        Duration::from_secs(30),
        "the recommendation back at 1 in etcd",
        || {
            let mut c = c.clone();
            async move {
                let r = c.get("/gantry/scaling/api", None).await.ok()?;
                let v: serde_json::Value = serde_json::from_slice(r.kvs().first()?.value()).ok()?;
                (v["recommendation"]["replicas"] == 1).then_some(())
            }
        },
    )
    .await;
    g.running.shutdown().await;
}

/// The recommendation published in etcd for `service`, and who wrote it.
async fn stored(c: &etcd_client::Client, service: &str) -> Option<(u64, String)> {
    let mut c = c.clone();
    let r = c.get(format!("/gantry/scaling/{service}"), None).await.ok()?;
    let v: serde_json::Value = serde_json::from_slice(r.kvs().first()?.value()).ok()?;
    Some((
        v["recommendation"]["replicas"].as_u64()?,
        v["instance"].as_str()?.to_string(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_a_load_spread_over_the_fleet_is_scaled_as_if_through_one_instance_and_one_instance_publishes()
 {
    let _one = ETCD_LOCK.lock().await;
    let etcd = Etcd::start_secure().await;
    let c = etcd.client().await;
    // Every put under scaling/ from now on, to tell who published.
    let mut events = c
        .clone()
        .watch(
            "/gantry/scaling/",
            Some(etcd_client::WatchOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let writers = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let watching = {
        let writers = writers.clone();
        tokio::spawn(async move {
            while let Ok(Some(resp)) = events.message().await {
                for e in resp.events() {
                    if let Some(kv) = e.kv()
                        && let Ok(v) = serde_json::from_slice::<serde_json::Value>(kv.value())
                        && let Some(i) = v["instance"].as_str()
                    {
                        writers.lock().unwrap().insert(i.to_string());
                    }
                }
            }
        })
    };
    // Two services alike: 50 ms answers, one replica per request in flight.
    let one = Backend::start("one", Behavior::Delay(Duration::from_millis(50))).await;
    let spread = Backend::start("spread", Behavior::Delay(Duration::from_millis(50))).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gantry.toml");
    let scale = r#"scale = { min = 1, max = 30, target = 1, utilization = 1.0, window = "6s" }"#;
    std::fs::write(
        &config,
        format!(
            r#"
[routers.one]
hosts = ["one.test"]
service = "one"

[routers.spread]
hosts = ["spread.test"]
service = "spread"

[services.one]
backends = [{{ url = "{}" }}]
{scale}

[services.spread]
backends = [{{ url = "{}" }}]
{scale}
"#,
            one.url(),
            spread.url()
        ),
    )
    .unwrap();
    let spawn = |id: &str| etcd.spawn_gantry(id, &["--config", config.to_str().unwrap()]);
    let mut instances = vec![spawn("a"), spawn("b"), spawn("c")];
    let ids = ["a", "b", "c"];

    // 10 clients of `one` all through A; 10 of `spread`, 5 through A, 3 through B, 2 through C.
    // At most 2,000 requests per client (100 s).
    let stop = Arc::new(AtomicBool::new(false));
    let mut loads = vec![clients(
        instances[0].addr,
        "GET",
        "one.test".into(),
        10,
        2000,
        stop.clone(),
    )];
    for (i, n) in [5, 3, 2].into_iter().enumerate() {
        loads.push(clients(
            instances[i].addr,
            "GET",
            "spread.test".into(),
            n,
            2000,
            stop.clone(),
        ));
    }
    // The largest share alone (5 in flight) would ask for 5 replicas; the fleet's 10 for about 10.
    // Waited for until it has risen to 9: the fleet's figures reach the publisher a second or two
    // after the load does, so on the way up it trails the single instance's.
    let (r_spread, publisher) = eventually(
        Duration::from_secs(40),
        "the fleet's recommendation for spread",
        || async { stored(&c, "spread").await.filter(|(r, _)| *r >= 9) },
    )
    .await;
    for _ in 0..3 {
        let (a, b) = (
            stored(&c, "one").await.unwrap(),
            stored(&c, "spread").await.unwrap(),
        );
        assert!(
            a.0.abs_diff(b.0) <= 1,
            "through one instance {a:?}, spread 50/30/20 {b:?} (from {r_spread})"
        );
        assert!((8..=12).contains(&b.0), "{b:?}");
        assert_eq!(a.1, publisher);
        assert_eq!(b.1, publisher);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Each instance says who publishes; the publisher summed all three.
    let mut cc = c.clone();
    let leader = cc.get("/gantry/leaders/scaling", None).await.unwrap();
    assert_eq!(leader.kvs()[0].value_str().unwrap(), publisher);
    for (p, id) in instances.iter().zip(ids) {
        let view = admin_json(p.admin, "/api/v1/scaling").await;
        let r = recommendation(&view, "spread").unwrap();
        let scope = &r["scope"];
        if id == publisher {
            assert_eq!(scope["figures"], "fleet", "{r}");
            assert_eq!(scope["publishes"], true, "{r}");
            assert_eq!(scope["instances"], serde_json::json!(ids), "{r}");
        } else {
            assert_eq!(scope["figures"], "instance", "{r}");
            assert_eq!(scope["publishes"], false, "{r}");
            assert_eq!(scope["publisher"], publisher, "{r}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for l in loads {
        let (ok, failed) = l.await.unwrap();
        assert!(
            failed.is_empty(),
            "{} failed of {ok}: {:?}",
            failed.len(),
            &failed[..failed.len().min(3)]
        );
    }
    let who = writers.lock().unwrap().clone();
    assert_eq!(
        who,
        BTreeSet::from([publisher.clone()]),
        "only the publisher writes recommendations"
    );

    // The publisher dies: another instance takes the role over and publishes.
    let gone = ids.iter().position(|i| *i == publisher).unwrap();
    instances[gone].signal(rustix::process::Signal::KILL);
    let (_, next) = eventually(Duration::from_secs(30), "another publisher", || async {
        stored(&c, "spread").await.filter(|(_, by)| *by != publisher)
    })
    .await;
    assert!(ids.contains(&next.as_str()), "{next}");
    watching.abort();
    drop(instances.remove(gone));
}

/// Running containers of a compose service.
fn running(project: &str, service: &str) -> BTreeSet<String> {
    docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--filter",
        &format!("label=com.docker.compose.service={service}"),
    ])
    .lines()
    .map(str::to_string)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docker_scaler_grows_a_compose_service_under_load_and_shrinks_it_after() {
    let _lock = crate::docker::lock().await;
    let mut cleanup = Cleanup::default();
    let host = format!("{}.test", unique("api"));
    let compose = Compose::new(
        "examples/compose-scale/docker-compose.yml",
        &[
            ("API_IMAGE", test_image()),
            ("API_HOST", &host),
            ("SCALE_WINDOW", "6s"),
        ],
        &mut cleanup,
    );
    let opts = gantry::Options {
        docker: Some(gantry::DockerFlags {
            published: Some(true),
            scale: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    let g = Gantry::start_with("", opts).await;
    let admin = g.running.admin_addr;
    compose.run(&["up", "-d"]);
    eventually(
        Duration::from_secs(30),
        "the first replica to be ready",
        || async {
            recommendation(&admin_json(admin, "/api/v1/scaling").await, &host).filter(|r| r["ready"] == 1)
        },
    )
    .await;
    assert_eq!(running(&compose.project, "api").len(), 1);

    // The curve: every 500 ms, what Gantry saw and recommended, and the containers running.
    let t0 = Instant::now();
    let record = Arc::new(AtomicBool::new(false));
    let curve = {
        let (record, host, project) = (record.clone(), host.clone(), compose.project.clone());
        tokio::spawn(async move {
            let mut rows: Vec<(f64, f64, f64, u64, u64, usize)> = Vec::new();
            for _ in 0..400 {
                let last = record.load(Ordering::Relaxed);
                if let Some(r) = recommendation(&admin_json(admin, "/api/v1/scaling").await, &host) {
                    rows.push((
                        t0.elapsed().as_secs_f64(),
                        r["stable"]["concurrency"].as_f64().unwrap_or(0.0),
                        r["burst"]["concurrency"].as_f64().unwrap_or(0.0),
                        r["replicas"].as_u64().unwrap_or(0),
                        r["ready"].as_u64().unwrap_or(0),
                        running(&project, "api").len(),
                    ));
                }
                if last {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            rows
        })
    };

    // About three replicas' worth: 6 clients, 100 ms per answer, at 2 in flight per replica.
    let stop = Arc::new(AtomicBool::new(false));
    let heavy = clients(g.addr(), "POST", host.clone(), 6, 400, stop.clone());
    eventually(Duration::from_secs(40), "three ready replicas", || async {
        recommendation(&admin_json(admin, "/api/v1/scaling").await, &host).filter(|r| r["ready"] == 3)
    })
    .await;
    // Hold the load a little longer: the count must stay put.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let under_load = running(&compose.project, "api").len();
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = heavy.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed while scaling up: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!((2..=4).contains(&under_load), "{under_load} replicas under load");
    eprintln!("under load: {ok} POSTs, all 200; {under_load} replicas");

    // One client keeps going while the scaler drains and removes the surplus replicas.
    let stop = Arc::new(AtomicBool::new(false));
    let light = clients(g.addr(), "POST", host.clone(), 1, 2000, stop.clone());
    eventually(Duration::from_secs(60), "one replica again", || async {
        (running(&compose.project, "api").len() == 1).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = light.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed while scaling down: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(3)]
    );
    eprintln!("scaling down: {ok} POSTs, all 200");
    record.store(true, Ordering::Relaxed);
    let rows = curve.await.unwrap();
    eprintln!("t_s  stable_conc  burst_conc  recommended  ready  containers");
    for (t, s, b, r, ready, c) in &rows {
        eprintln!("{t:5.1}  {s:5.2}  {b:5.2}  {r}  {ready}  {c}");
    }
    assert!(
        rows.iter().all(|r| (1..=4).contains(&r.3)),
        "outside min..=max: {rows:?}"
    );

    // Every action is on record: the adds and the drained removals, all successful.
    let view = admin_json(admin, "/api/v1/scaling").await;
    let actions = view["scaler"]["actions"].as_array().unwrap();
    let count = |dir: &str| -> u64 {
        actions
            .iter()
            .filter(|a| a["action"] == dir && a["service"] == host.as_str())
            .map(|a| a["containers"].as_array().unwrap().len() as u64)
            .sum()
    };
    assert!(actions.iter().all(|a| a["result"] == "ok"), "{actions:?}");
    assert!(count("up") >= under_load as u64 - 1, "{actions:?}");
    assert_eq!(count("down"), count("up"), "{actions:?}");
    let metrics = admin_get(admin, "/metrics").await.body;
    assert!(
        metrics.contains(&format!(
            "gantry_scaler_actions_total{{action=\"down\",result=\"ok\",service=\"{host}\"}}"
        )),
        "{metrics}"
    );
    g.running.shutdown().await;
}
