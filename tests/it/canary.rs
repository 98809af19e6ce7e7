//! Canary releases: weighted splits between versions, overrides, sticky assignment, rollouts
//! gated on Gantry's own figures, and the admin API that drives them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use serde_json::Value;

use crate::support::{
    Answer, Backend, Behavior, Gantry, TestBody, admin_json, client, eventually, get, send,
};

const TOKEN: &str = "test-token-3f9a";

fn with_token() -> gantry::Options {
    gantry::Options {
        admin_token: Some(TOKEN.into()),
        rollout_tick: Some(Duration::from_millis(100)),
        ..Default::default()
    }
}

/// A service `web` with backends of versions v1 and v2 (their names start with the version).
fn canary_config(backends: &[&Backend], versions: &str, canary: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| {
            let version = b.name.split('-').next().unwrap();
            format!("{{ url = \"{}\", version = \"{version}\" }}", b.url())
        })
        .collect();
    format!(
        "[routers.web]\npath_prefix = \"/\"\nservice = \"web\"\n\n[services.web]\nversions = {versions}\nbackends = [{}]\n\n[services.web.canary]\n{canary}\n",
        list.join(", ")
    )
}

fn version_of(a: &Answer) -> &str {
    a.backend().split('-').next().unwrap_or("")
}

/// An admin write, with the bearer token when given.
async fn admin_write(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> Answer {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = client()
        .request(req.body(TestBody::full(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Sends `n` GETs over `workers` keep-alive connections, each with the headers `headers(i)`
/// gives request `i`, and returns the version that answered each.
async fn versions_seen(
    addr: SocketAddr,
    n: usize,
    workers: usize,
    headers: impl Fn(usize) -> Vec<(String, String)> + Send + Sync + 'static,
) -> Vec<String> {
    let headers = Arc::new(headers);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let headers = headers.clone();
        tasks.spawn(async move {
            let c = client();
            let mut out = Vec::new();
            for i in (w..n).step_by(workers) {
                let h = headers(i);
                let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let a = send(&c, addr, "GET", "app.test", "/", &h).await.unwrap();
                assert_eq!(a.status, 200, "{}", a.body);
                out.push((i, version_of(&a).to_string()));
            }
            out
        });
    }
    let mut all = vec![String::new(); n];
    while let Some(r) = tasks.join_next().await {
        for (i, v) in r.unwrap() {
            all[i] = v;
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_95_5_split_holds_over_20000_requests_and_the_override_always_reaches_the_canary() {
    let v1a = Backend::start("v1-a", Behavior::Name).await;
    let v1b = Backend::start("v1-b", Behavior::Name).await;
    let v2 = Backend::start("v2-a", Behavior::Name).await;
    let g = Gantry::start(&canary_config(
        &[&v1a, &v1b, &v2],
        "{ v1 = 95, v2 = 5 }",
        r#"overrides = [{ on = "header:X-Canary", value = "always", version = "v2" }, { on = "cookie:version" }]"#,
    ))
    .await;
    let seen = versions_seen(g.addr(), 20_000, 8, |_| Vec::new()).await;
    let canary = seen.iter().filter(|v| *v == "v2").count();
    let share = canary as f64 / seen.len() as f64;
    assert!(
        (share - 0.05).abs() < 0.005,
        "canary share {share} ({canary} of 20000)"
    );
    assert_eq!(seen.iter().filter(|v| *v == "v1").count() + canary, 20_000);

    let pinned = versions_seen(g.addr(), 500, 4, |_| vec![("x-canary".into(), "always".into())]).await;
    assert!(
        pinned.iter().all(|v| v == "v2"),
        "{:?}",
        pinned.iter().filter(|v| *v != "v2").count()
    );
    // The cookie names the version; another header value does not pin.
    let by_cookie = versions_seen(g.addr(), 200, 4, |_| {
        vec![("cookie".into(), "a=1; version=v1".into())]
    })
    .await;
    assert!(by_cookie.iter().all(|v| v == "v1"));
    let other = versions_seen(g.addr(), 2_000, 4, |_| vec![("x-canary".into(), "never".into())]).await;
    let share = other.iter().filter(|v| *v == "v2").count() as f64 / 2_000.0;
    assert!(share < 0.1, "x-canary: never must not pin: {share}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_users_only_ever_move_into_the_canary_and_two_instances_agree() {
    let v1 = Backend::start("v1-a", Behavior::Name).await;
    let v2 = Backend::start("v2-a", Behavior::Name).await;
    let config = canary_config(&[&v1, &v2], "{ v1 = 90, v2 = 10 }", r#"sticky = "cookie:uid""#);
    let a = Gantry::start_with(&config, with_token()).await;
    let b = Gantry::start_with(&config, with_token()).await;
    const USERS: usize = 10_000;
    let user = |i: usize| vec![("cookie".to_string(), format!("uid=user-{i}"))];
    let mut before: Option<Vec<String>> = None;
    for canary in [10u32, 25, 50] {
        let body = format!(r#"{{"v1": {}, "v2": {canary}}}"#, 100 - canary);
        for g in [&a, &b] {
            let gen_before = g.running.generation();
            let r = admin_write(
                g.running.admin_addr,
                "PUT",
                "/api/v1/services/web/weights",
                Some(TOKEN),
                &body,
            )
            .await;
            if canary != 10 {
                assert_eq!(r.status, 200, "{}", r.body);
                eventually(Duration::from_secs(5), "the new weights to be live", || async {
                    (g.running.generation() > gen_before).then_some(())
                })
                .await;
            }
        }
        let on_a = versions_seen(a.addr(), USERS, 8, user).await;
        let on_b = versions_seen(b.addr(), USERS, 8, user).await;
        let differ = on_a.iter().zip(&on_b).filter(|(x, y)| x != y).count();
        assert_eq!(
            differ, 0,
            "the instances placed {differ} users differently at {canary}%"
        );
        let share = on_a.iter().filter(|v| *v == "v2").count() as f64 / USERS as f64;
        assert!(
            (share - f64::from(canary) / 100.0).abs() < 0.02,
            "{canary}%: {share} of users in the canary"
        );
        if let Some(before) = &before {
            let back = before
                .iter()
                .zip(&on_a)
                .filter(|(w, n)| *w == "v2" && *n == "v1")
                .count();
            assert_eq!(
                back, 0,
                "{back} users moved from canary back to stable at {canary}%"
            );
        }
        // A user stays where they are from one request to the next.
        let again = versions_seen(a.addr(), USERS, 8, user).await;
        assert_eq!(again, on_a);
        before = Some(on_a);
    }
}

/// Sends GETs until `done` is set (or 60 s pass); counts the answers by status.
fn keep_loading(addr: SocketAddr, done: Arc<AtomicBool>) -> tokio::task::JoinHandle<BTreeMap<u16, u64>> {
    tokio::spawn(async move {
        let c = client();
        let mut counts = BTreeMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !done.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
            if let Ok(a) = send(&c, addr, "GET", "app.test", "/", &[]).await {
                *counts.entry(a.status).or_insert(0) += 1;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        counts
    })
}

async fn rollout(g: &Gantry) -> Value {
    admin_json(g.running.admin_addr, "/api/v1/rollouts").await
}

fn actions(view: &Value) -> Vec<(String, u64)> {
    view["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["action"].as_str().unwrap().to_string(),
                d["weight"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_walks_every_step_and_promotes_a_healthy_canary() {
    let v1 = Backend::start("v1-a", Behavior::Name).await;
    let v2 = Backend::start("v2-a", Behavior::Name).await;
    // Declared in the file: it starts with Gantry.
    let config = format!(
        "{}\n[rollouts.web]\nstable = \"v1\"\ncanary = \"v2\"\nsteps = [10, 50, 100]\nstep_time = \"500ms\"\nmin_requests = 10\nmax_error_rate = 0.01\np99_slack = \"50ms\"\n",
        canary_config(&[&v1, &v2], "{ v1 = 100, v2 = 0 }", "")
    );
    let g = Gantry::start_with(&config, with_token()).await;
    let done = Arc::new(AtomicBool::new(false));
    let load = keep_loading(g.addr(), done.clone());
    let view = eventually(Duration::from_secs(40), "the rollout to end", || async {
        let v = rollout(&g).await;
        let phase = v["rollouts"]["web"]["phase"].as_str().unwrap_or("").to_string();
        (phase != "running" && !phase.is_empty()).then_some(v)
    })
    .await;
    done.store(true, Ordering::SeqCst);
    let counts = load.await.unwrap();
    assert_eq!(view["rollouts"]["web"]["phase"], "promoted", "{view:#}");
    assert_eq!(
        actions(&view),
        [("start", 10), ("step", 50), ("step", 100), ("promote", 100)]
            .map(|(a, w)| (a.to_string(), w))
            .to_vec()
    );
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        vec![200],
        "{counts:?}"
    );
    // All traffic on the canary now, and the decisions are in the metrics.
    let after = v2.requests();
    let c = client();
    for _ in 0..50 {
        assert_eq!(version_of(&get(&c, g.addr(), "app.test", "/").await), "v2");
    }
    assert_eq!(v2.requests(), after + 50);
    let metrics = crate::support::admin_get(g.running.admin_addr, "/metrics")
        .await
        .body;
    assert!(
        metrics.contains(r#"gantry_rollout_decisions_total{action="promote",service="web"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"gantry_version_requests_total{code="2xx",service="web",version="v2"}"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_rolls_back_within_one_step_when_the_canary_fails_a_fifth_of_requests() {
    let v1 = Backend::start("v1-a", Behavior::Name).await;
    let v2 = Backend::start("v2-a", Behavior::FailOneIn(5)).await;
    let g = Gantry::start_with(
        &canary_config(&[&v1, &v2], "{ v1 = 100, v2 = 0 }", ""),
        with_token(),
    )
    .await;
    let spec = r#"{"stable": "v1", "canary": "v2", "steps": [20, 50, 100], "step_time": "5s", "min_requests": 40, "max_error_rate": 0.05}"#;
    let r = admin_write(
        g.running.admin_addr,
        "POST",
        "/api/v1/rollouts/web",
        Some(TOKEN),
        spec,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let done = Arc::new(AtomicBool::new(false));
    let load = keep_loading(g.addr(), done.clone());
    let view = eventually(Duration::from_secs(30), "the rollout to end", || async {
        let v = rollout(&g).await;
        (v["rollouts"]["web"]["phase"] != "running").then_some(v)
    })
    .await;
    done.store(true, Ordering::SeqCst);
    load.await.unwrap();
    assert_eq!(view["rollouts"]["web"]["phase"], "rolled_back", "{view:#}");
    // Within the first step: it never went past 20%.
    assert_eq!(
        actions(&view),
        vec![("start".to_string(), 20), ("rollback".to_string(), 0)]
    );
    let reason = view["decisions"][1]["reason"].as_str().unwrap();
    assert!(reason.contains("error rate"), "{reason}");
    // The canary gets nothing any more.
    let before = v2.requests();
    let c = client();
    for _ in 0..300 {
        assert_eq!(get(&c, g.addr(), "app.test", "/").await.status, 200);
    }
    assert_eq!(v2.requests(), before);
    let versions = admin_json(g.running.admin_addr, "/api/v1/versions").await;
    assert_eq!(versions["services"]["web"]["versions"]["v2"]["weight"], 0);
    assert!(
        versions["services"]["web"]["versions"]["v2"]["errors"]
            .as_u64()
            .unwrap()
            > 0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_writes_need_the_token_and_bad_requests_change_nothing() {
    let v1 = Backend::start("v1-a", Behavior::Name).await;
    let v2 = Backend::start("v2-a", Behavior::Name).await;
    let config = canary_config(&[&v1, &v2], "{ v1 = 95, v2 = 5 }", "");
    let g = Gantry::start_with(&config, with_token()).await;
    let admin = g.running.admin_addr;
    let weights = "/api/v1/services/web/weights";
    let generation = g.running.generation();

    for token in [None, Some("wrong"), Some("")] {
        let r = admin_write(admin, "PUT", weights, token, r#"{"v1": 50, "v2": 50}"#).await;
        assert_eq!(r.status, 401, "{token:?}: {}", r.body);
        assert_eq!(r.headers["www-authenticate"], "Bearer");
    }
    let r = admin_write(
        admin,
        "POST",
        "/api/v1/rollouts/web",
        None,
        r#"{"stable": "v1", "canary": "v2"}"#,
    )
    .await;
    assert_eq!(r.status, 401);

    let bad: [(&str, &str, &str, u16, &str); 8] = [
        ("PUT", weights, r#"{"v1": -5, "v2": 50}"#, 400, "weights.v1"),
        ("PUT", weights, r#"{"v1": "fifty"}"#, 400, "weights.v1"),
        ("PUT", weights, r#"{"v1": 1.5}"#, 400, "weights.v1"),
        ("PUT", weights, r#"{"v3": 10}"#, 400, "is not a version of web"),
        ("PUT", weights, r#"[50, 50]"#, 400, "expected an object"),
        (
            "PUT",
            "/api/v1/services/nope/weights",
            r#"{"v1": 1}"#,
            404,
            "no service",
        ),
        (
            "POST",
            "/api/v1/rollouts/web",
            r#"{"stable": "v1", "canary": "v2", "step": [5]}"#,
            400,
            "unknown field `step`",
        ),
        (
            "POST",
            "/api/v1/rollouts/web",
            r#"{"stable": "v1", "canary": "v9"}"#,
            400,
            "v9",
        ),
    ];
    for (method, path, body, status, says) in bad {
        let r = admin_write(admin, method, path, Some(TOKEN), body).await;
        assert_eq!(r.status, status, "{method} {path} {body}: {}", r.body);
        assert!(r.body.contains(says), "{body}: {}", r.body);
    }
    assert_eq!(
        g.running.generation(),
        generation,
        "a refused write changed the table"
    );
    let versions = admin_json(admin, "/api/v1/versions").await;
    assert_eq!(versions["services"]["web"]["versions"]["v2"]["weight"], 5);
    assert_eq!(rollout(&g).await["rollouts"], serde_json::json!({}));

    // A good write with the token works, and so does draining a backend.
    let r = admin_write(admin, "PUT", weights, Some(TOKEN), r#"{"v1": 0, "v2": 1}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    eventually(Duration::from_secs(5), "the weights to apply", || async {
        (g.running.generation() > generation).then_some(())
    })
    .await;
    let c = client();
    assert_eq!(version_of(&get(&c, g.addr(), "app.test", "/").await), "v2");
    let r = admin_write(
        admin,
        "POST",
        "/api/v1/services/web/drain",
        Some(TOKEN),
        &format!(r#"{{"url": "{}"}}"#, v2.url()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let before = v2.requests();
    for _ in 0..20 {
        // Stable has weight 0 and the canary drains: nothing can take the request.
        assert_eq!(get(&c, g.addr(), "app.test", "/").await.status, 503);
    }
    assert_eq!(v2.requests(), before);

    // Without a configured token, writes are refused outright.
    let open = Gantry::start(&config).await;
    let r = admin_write(
        open.running.admin_addr,
        "PUT",
        weights,
        Some(TOKEN),
        r#"{"v1": 1}"#,
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    // The token from a file named in the config, next to it.
    let from_file = Gantry::start_with_files(
        &format!("[admin]\ntoken_file = \"admin.token\"\n{config}"),
        &[("admin.token", "file-token-77\n")],
    )
    .await;
    let admin = from_file.running.admin_addr;
    let r = admin_write(
        admin,
        "PUT",
        weights,
        Some("file-token-77"),
        r#"{"v1": 1, "v2": 1}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        admin_write(admin, "PUT", weights, Some(TOKEN), r#"{"v1": 1}"#)
            .await
            .status,
        401
    );
}

async fn value_of(c: &mut etcd_client::Client, key: &str) -> Option<Value> {
    let r = c.get(key, None).await.unwrap();
    let kv = r.kvs().first()?;
    Some(
        serde_json::from_slice(kv.value())
            .unwrap_or_else(|_| Value::String(kv.value_str().unwrap().to_string())),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_one_instance_drives_and_another_takes_over_from_the_stored_step() {
    use crate::etcd_support::{ETCD_LOCK, Etcd, put};
    let _one = ETCD_LOCK.lock().await;
    let etcd = Etcd::start().await;
    let v1 = Backend::start("v1-a", Behavior::Name).await;
    let v2 = Backend::start("v2-a", Behavior::Name).await;
    let mut c = etcd.client().await;
    put_web(&mut c, r#"{"path_prefix": "/", "service": "web"}"#, &v1, &v2).await;
    let spawn = |id: &str| etcd.spawn_gantry(id, &["--driver-ttl", "2"]);
    let mut instances = BTreeMap::from([("a".to_string(), spawn("a")), ("b".to_string(), spawn("b"))]);
    let done = Arc::new(AtomicBool::new(false));
    let loads: Vec<_> = instances
        .values()
        .map(|p| keep_loading(p.addr, done.clone()))
        .collect();

    // Many small steps, so that the driver is killed in the middle.
    let spec = r#"{"stable": "v1", "canary": "v2", "steps": [10, 20, 30, 40, 50, 60, 70, 100], "step_time": "1s", "min_requests": 5, "p99_slack": "50ms"}"#;
    put(&mut c, "/gantry/rollouts/web/spec", spec).await;
    let state_key = "/gantry/rollouts/web/state";
    let c2 = etcd.client().await;
    eventually(
        Duration::from_secs(30),
        "the rollout to reach its third step",
        || {
            let mut c = c2.clone();
            async move {
                value_of(&mut c, state_key)
                    .await
                    .filter(|s| s["step"].as_u64() >= Some(2))
            }
        },
    )
    .await;
    let driver = value_of(&mut c, "/gantry/rollouts/web/driver").await.unwrap();
    let driver = driver.as_str().unwrap().to_string();
    let survivor = if driver == "a" { "b" } else { "a" }.to_string();
    // Exactly one drives: the other says so, and every decision so far is the driver's.
    let view = admin_json(instances[&survivor].admin, "/api/v1/rollouts").await;
    assert_eq!(view["rollouts"]["web"]["driven_here"], false, "{view:#}");
    assert!(view["decisions"].as_array().unwrap().is_empty(), "{view:#}");
    let view = admin_json(instances[&driver].admin, "/api/v1/rollouts").await;
    assert_eq!(view["rollouts"]["web"]["driven_here"], true, "{view:#}");

    let mut killed = instances.remove(&driver).unwrap();
    killed.signal(rustix::process::Signal::KILL);
    killed.child.wait().unwrap();
    let stored = value_of(&mut c, state_key).await.unwrap();
    let stored_step = stored["step"].as_u64().unwrap();
    assert_eq!(stored["phase"], "running");

    let view = eventually(
        Duration::from_secs(40),
        "the survivor to finish the rollout",
        || {
            let admin = instances[&survivor].admin;
            async move {
                let v = admin_json(admin, "/api/v1/rollouts").await;
                (v["rollouts"]["web"]["phase"] == "promoted").then_some(v)
            }
        },
    )
    .await;
    done.store(true, Ordering::SeqCst);
    for l in loads {
        l.await.unwrap();
    }
    let mine: Vec<(String, u64)> = view["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["action"].as_str().unwrap().to_string(),
                d["step"].as_u64().unwrap(),
            )
        })
        .collect();
    // It continued from the stored step, not from the start.
    assert_eq!(
        mine.first(),
        Some(&("step".to_string(), stored_step + 1)),
        "{mine:?}"
    );
    assert_eq!(mine.last().map(|m| m.0.as_str()), Some("promote"));
    assert!(mine.iter().all(|(a, _)| a != "start"), "{mine:?}");
    let decision = value_of(&mut c, "/gantry/rollouts/web/decision").await.unwrap();
    assert_eq!(decision["instance"], survivor.as_str());
    assert_eq!(decision["action"], "promote");
    assert_eq!(
        value_of(&mut c, "/gantry/weights/web").await.unwrap(),
        serde_json::json!({"v1": 0, "v2": 100})
    );
    let c = client();
    assert_eq!(
        version_of(&get(&c, instances[&survivor].addr, "app.test", "/").await),
        "v2"
    );
}

/// Three instances behind an uneven balancer: A takes 80% of the requests, B 20%, C none. The
/// canary fails only what comes through B (B's own middleware marks its requests). Judged on
/// its own traffic, A would see a healthy canary and C nothing at all; judged on the fleet's,
/// whichever of the three drives the rollout rolls it back within its first step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_a_canary_failing_on_one_instance_is_rolled_back_whichever_drives() {
    use crate::etcd_support::{ETCD_LOCK, Etcd, put};
    let _one = ETCD_LOCK.lock().await;
    let etcd = Etcd::start_secure().await;
    let v1 = Backend::start("v1-a", Behavior::Name).await;
    let v2 = Backend::start("v2-a", Behavior::FailIfHeader("x-via", "b")).await;
    let mut c = etcd.client().await;
    // No passive ejection: B would otherwise stop sending to the canary after 5 failures, and
    // the canary would fail only a handful of requests.
    put(
        &mut c,
        "/gantry/services/web",
        r#"{"outlier": {"consecutive_failures": 0}}"#,
    )
    .await;
    put_web(
        &mut c,
        r#"{"path_prefix": "/", "service": "web", "middlewares": ["via"]}"#,
        &v1,
        &v2,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let spawn = |id: &str| {
        // Each instance marks the requests it forwards with its name.
        let config = dir.path().join(format!("{id}.toml"));
        std::fs::write(
            &config,
            format!("[middlewares.via.headers]\nrequest = {{ set = {{ \"x-via\" = \"{id}\" }} }}\n"),
        )
        .unwrap();
        etcd.spawn_gantry(id, &["--config", config.to_str().unwrap()])
    };
    let instances = [spawn("a"), spawn("b"), spawn("c")];
    let client = client();
    routed(&client, &instances).await;
    // 80% through A, 20% through B, none through C; at most 40,000 requests or 90 s.
    let done = Arc::new(AtomicBool::new(false));
    let load = {
        let (done, a, b) = (done.clone(), instances[0].addr, instances[1].addr);
        let c = client.clone();
        tokio::spawn(async move {
            let end = tokio::time::Instant::now() + Duration::from_secs(90);
            for i in 0..40_000u32 {
                if done.load(Ordering::SeqCst) || tokio::time::Instant::now() > end {
                    break;
                }
                let _ = send(&c, if i % 10 < 8 { a } else { b }, "GET", "app.test", "/", &[]).await;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };

    // The fleet view shows each instance's share of the traffic.
    let admin = instances[2].admin;
    eventually(
        Duration::from_secs(20),
        "the shares 80/20/0 in the fleet view",
        || async move {
            let v = admin_json(admin, "/api/v1/fleet").await;
            let share = |i: usize| v["instances"][i]["share"].as_f64();
            let (a, b, c) = (share(0)?, share(1)?, share(2)?);
            ((0.7..0.9).contains(&a) && (0.1..0.3).contains(&b) && c == 0.0).then_some(())
        },
    )
    .await;

    // The driver is pinned in turn: the test holds the driver key under its own lease.
    let lease = c.lease_grant(120, None).await.unwrap().id();
    for driver in ["a", "c", "b"] {
        let _ = c.delete("/gantry/rollouts/web/driver", None).await.unwrap();
        c.put(
            "/gantry/rollouts/web/driver",
            driver,
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
        // Each put is a new rollout, started over by its driver.
        let spec = r#"{"stable": "v1", "canary": "v2", "steps": [50, 100], "step_time": "30s", "min_requests": 40, "max_error_rate": 0.05}"#;
        put(&mut c, "/gantry/rollouts/web/spec", spec).await;
        let c2 = etcd.client().await;

        let decision = eventually(
            Duration::from_secs(20),
            &format!("the rollout driven by {driver} to be rolled back"),
            || {
                let mut c = c2.clone();
                async move {
                    let d = value_of(&mut c, "/gantry/rollouts/web/decision").await?;
                    (d["action"] == "rollback" && d["instance"] == driver).then_some(d)
                }
            },
        )
        .await;
        // Within the first step, on the fleet's figures: B's errors count whichever drives (A's
        // and C's own figures have none). The gate fails as soon as the errors alone pass what
        // min_requests allows (more than 2), on whatever reports are in: B's latest second may
        // come before A's (reports are a second apart) or after, so the rate may be below B's
        // 20% of the canary's requests or anywhere above it, up to 1.
        assert_eq!(decision["step"], 0, "{decision:#}");
        let canary = &decision["canary"];
        assert!(
            canary["errors"].as_u64() > Some(2) && canary["error_rate"].as_f64() > Some(0.05),
            "rolled back on the fleet's canary errors: {decision:#}"
        );
        assert_eq!(
            value_of(&mut c, "/gantry/weights/web").await.unwrap(),
            serde_json::json!({"v1": 100, "v2": 0})
        );
    }
    done.store(true, Ordering::SeqCst);
    load.await.unwrap();
}

/// A rollout that begins with a shadow step: half of stable's requests, through two of three
/// instances, are copied to a canary that fails every one. Users see no error; the fleet's
/// figures of the copies roll the rollout back before any user reaches the canary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_a_shadow_step_rolls_back_a_failing_canary_before_users_see_it() {
    use crate::etcd_support::{ETCD_LOCK, Etcd, put};
    let _one = ETCD_LOCK.lock().await;
    let etcd = Etcd::start_secure().await;
    let v1 = Backend::start("v1-a", Behavior::Name).await;
    let v2 = Backend::start("v2-a", Behavior::Status(500)).await;
    let mut c = etcd.client().await;
    put_web(&mut c, r#"{"path_prefix": "/", "service": "web"}"#, &v1, &v2).await;
    let spawn = |id: &str| etcd.spawn_gantry(id, &[]);
    let instances = [spawn("a"), spawn("b"), spawn("c")];
    let client = client();
    routed(&client, &instances).await;
    let done = Arc::new(AtomicBool::new(false));
    let loads = [
        keep_loading(instances[0].addr, done.clone()),
        keep_loading(instances[1].addr, done.clone()),
    ];
    let spec = r#"{"stable": "v1", "canary": "v2", "shadow": [50], "steps": [50, 100], "step_time": "5s", "min_requests": 20, "max_error_rate": 0.05}"#;
    put(&mut c, "/gantry/rollouts/web/spec", spec).await;
    let c2 = etcd.client().await;
    let st = eventually(Duration::from_secs(30), "the rollout to be rolled back", || {
        let mut c = c2.clone();
        async move {
            let st = value_of(&mut c, "/gantry/rollouts/web/state").await?;
            (st["phase"] == "rolled_back").then_some(st)
        }
    })
    .await;
    done.store(true, Ordering::SeqCst);
    // In the shadow step, on the copies' figures: no user was ever sent to the canary.
    assert_eq!(st["step"], 0, "{st:#}");
    assert!(
        st["reason"]
            .as_str()
            .unwrap()
            .starts_with("shadow step: canary error rate"),
        "{st:#}"
    );
    let d = value_of(&mut c, "/gantry/rollouts/web/decision").await.unwrap();
    assert_eq!(
        (d["action"].as_str(), d["weight"].as_u64()),
        (Some("rollback"), Some(0)),
        "{d:#}"
    );
    assert!(d["canary"]["errors"].as_u64().unwrap() >= 1, "{d:#}");
    assert_eq!(
        value_of(&mut c, "/gantry/weights/web").await.unwrap(),
        serde_json::json!({"v1": 100, "v2": 0})
    );
    for l in loads {
        let counts = l.await.unwrap();
        assert_eq!(counts.keys().copied().collect::<Vec<_>>(), [200], "{counts:?}");
    }
    // The copies reached the canary, marked as copies.
    assert!(v2.requests() >= 1);
    assert_eq!(v2.last().headers["x-gantry-mirror"], "1");
}

/// Waits until every instance routes `web` (from etcd).
async fn routed(
    client: &hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, TestBody>,
    instances: &[crate::support::GantryProcess],
) {
    for p in instances {
        let addr = p.addr;
        eventually(Duration::from_secs(20), "the route from etcd", || {
            let c = client.clone();
            async move { (get(&c, addr, "app.test", "/").await.status == 200).then_some(()) }
        })
        .await;
    }
}

/// Puts service `web` in etcd: a router, backend `a` of v1 and `b` of v2, and all traffic on v1.
async fn put_web(c: &mut etcd_client::Client, router: &str, v1: &Backend, v2: &Backend) {
    use crate::etcd_support::put;
    put(c, "/gantry/routers/web", router).await;
    put(
        c,
        "/gantry/backends/web/a",
        &format!(r#"{{"url": "{}", "version": "v1"}}"#, v1.url()),
    )
    .await;
    put(
        c,
        "/gantry/backends/web/b",
        &format!(r#"{{"url": "{}", "version": "v2"}}"#, v2.url()),
    )
    .await;
    put(c, "/gantry/weights/web", r#"{"v1": 100, "v2": 0}"#).await;
}

/// The unix time in milliseconds.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Stops (SIGSTOP) instance `id` just after it has renewed its record's lease, so that its record
/// outlives the stop by nearly the lease's whole TTL (10 s): a step's deadline passes before the
/// record would expire.
async fn stop_fresh(c: &mut etcd_client::Client, instance: &crate::support::GantryProcess, id: &str) {
    let key = format!("/gantry/instances/{id}");
    let r = c.get(key.as_str(), None).await.unwrap();
    let lease = r.kvs().first().map(|kv| kv.lease()).filter(|&l| l != 0);
    let lease = lease.unwrap_or_else(|| panic!("{key} is not under a lease"));
    let mut last = i64::MAX;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let ttl = c.lease_time_to_live(lease, None).await.unwrap().ttl();
        // A renewal puts the TTL back up: stop right after one.
        if ttl > last {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id}'s lease was not renewed within 15 s"
        );
        last = ttl;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    instance.signal(rustix::process::Signal::STOP);
}

/// Polls the rollout state of `web` in etcd every 100 ms for `how_long`, checking `ok` each time.
async fn holds(
    c: &mut etcd_client::Client,
    how_long: Duration,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let end = tokio::time::Instant::now() + how_long;
    loop {
        let st = value_of(c, "/gantry/rollouts/web/state").await.unwrap();
        assert!(ok(&st), "{what}: {st:#}");
        if tokio::time::Instant::now() >= end {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Three instances; one stops (SIGSTOP) just before a step. The step is not judged while it
/// does not serve the step's weights: the state names it, past the deadline too (the default is
/// to wait), and the step's clock starts once it is back. With `fleet_lagging = drop`, the step
/// begins without it after the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_a_step_begins_only_when_every_instance_serves_its_weights() {
    use crate::etcd_support::{ETCD_LOCK, Etcd, put};
    use rustix::process::Signal;
    let _one = ETCD_LOCK.lock().await;
    let etcd = Etcd::start_secure().await;
    let v1 = Backend::start("v1-a", Behavior::Name).await;
    let v2 = Backend::start("v2-a", Behavior::Name).await;
    let mut c = etcd.client().await;
    put_web(&mut c, r#"{"path_prefix": "/", "service": "web"}"#, &v1, &v2).await;
    let spawn = |id: &str| etcd.spawn_gantry(id, &[]);
    let (a, b, lagger) = (spawn("a"), spawn("b"), spawn("c"));
    let c2 = etcd.client().await;
    eventually(Duration::from_secs(20), "three instance records", || {
        let mut c = c2.clone();
        async move {
            let r = c
                .get(
                    "/gantry/instances/",
                    Some(etcd_client::GetOptions::new().with_prefix()),
                )
                .await
                .ok()?;
            (r.kvs().len() == 3).then_some(())
        }
    })
    .await;
    let done = Arc::new(AtomicBool::new(false));
    let loads = [
        keep_loading(a.addr, done.clone()),
        keep_loading(b.addr, done.clone()),
    ];

    // c stops just before the first step's weights are written.
    stop_fresh(&mut c, &lagger, "c").await;
    // What this test is about is the fleet's readiness, not the gates: a generous latency slack,
    // because on a loaded machine (the whole suite at once) one slow answer among the canary's
    // hundred can put its p99 over the default 5 ms slack and roll it back.
    let spec = r#"{"stable": "v1", "canary": "v2", "steps": [20, 100], "step_time": "1s", "min_requests": 5, "fleet_deadline": "1s", "p99_slack": "2s"}"#;
    put(&mut c, "/gantry/rollouts/web/spec", spec).await;
    let c3 = etcd.client().await;
    eventually(Duration::from_secs(15), "the step to wait for c", || {
        let mut c = c3.clone();
        async move {
            let st = value_of(&mut c, "/gantry/rollouts/web/state").await?;
            (st["waiting_for"] == serde_json::json!(["c"])).then_some(st)
        }
    })
    .await;
    // Past the step's time and the deadline, it still waits: not judged, c named.
    let st = holds(
        &mut c,
        Duration::from_millis(2500),
        "the step waits for c",
        |st| st["step"] == 0 && st["fleet_ready"] == false && st["waiting_for"] == serde_json::json!(["c"]),
    )
    .await;
    assert!(st["reason"].as_str().unwrap().contains("after 1s"), "{st:#}");
    let driver = value_of(&mut c, "/gantry/rollouts/web/driver").await.unwrap();
    let driver = if driver == "a" { &a } else { &b };
    let view = admin_json(driver.admin, "/api/v1/rollouts").await;
    assert_eq!(
        view["rollouts"]["web"]["waiting_for"],
        serde_json::json!(["c"]),
        "{view:#}"
    );
    assert!(
        view["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["action"] == "start"),
        "nothing judged while c lags: {view:#}"
    );

    let back_ms = now_ms();
    lagger.signal(Signal::CONT);
    // Polled with a deadline, keeping the last state: a rollout that is rolled back, or still
    // running at the deadline, fails with what it was doing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let st = loop {
        let st = value_of(&mut c, "/gantry/rollouts/web/state").await;
        if st.as_ref().is_some_and(|st| st["phase"] != "running") || tokio::time::Instant::now() >= deadline {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        st.as_ref().map(|st| &st["phase"]),
        Some(&serde_json::json!("promoted")),
        "the rollout was not promoted within 30 s of c's return: {st:#?}"
    );
    // The first step's clock started when c was back: its judgement came a step time later.
    let view = admin_json(driver.admin, "/api/v1/rollouts").await;
    let first_step = view["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["action"] == "step")
        .unwrap_or_else(|| panic!("{view:#}"))["at_ms"]
        .as_u64()
        .unwrap();
    assert!(
        first_step >= back_ms + 1000,
        "step judged {} ms after c came back",
        first_step as i64 - back_ms as i64
    );

    // With fleet_lagging = drop, a stopped c holds a step back no longer than the deadline.
    stop_fresh(&mut c, &lagger, "c").await;
    let spec = r#"{"stable": "v2", "canary": "v1", "steps": [50, 100], "step_time": "1s", "min_requests": 5, "fleet_deadline": "2s", "fleet_lagging": "drop", "p99_slack": "2s"}"#;
    put(&mut c, "/gantry/rollouts/web/spec", spec).await;
    let c5 = etcd.client().await;
    let st = eventually(Duration::from_secs(15), "the step to begin without c", || {
        let mut c = c5.clone();
        async move {
            let st = value_of(&mut c, "/gantry/rollouts/web/state").await?;
            (st["spec"]["stable"] == "v2" && st["fleet_ready"] == true).then_some(st)
        }
    })
    .await;
    let reason = st["reason"].as_str().unwrap();
    assert!(reason.contains("without c:"), "{st:#}");
    lagger.signal(Signal::CONT);
    done.store(true, Ordering::SeqCst);
    for l in loads {
        let counts = l.await.unwrap();
        assert_eq!(counts.keys().copied().collect::<Vec<_>>(), [200], "{counts:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_can_be_paused_resumed_and_aborted_back_to_stable() {
    let v1 = Backend::start("v1-a", Behavior::Name).await;
    let v2 = Backend::start("v2-a", Behavior::Name).await;
    let g = Gantry::start_with(
        &canary_config(&[&v1, &v2], "{ v1 = 100, v2 = 0 }", ""),
        with_token(),
    )
    .await;
    let admin = g.running.admin_addr;
    let start = |body: &'static str| admin_write(admin, "POST", "/api/v1/rollouts/web", Some(TOKEN), body);
    let spec = r#"{"stable": "v1", "canary": "v2", "steps": [50, 100], "step_time": "1h"}"#;
    assert_eq!(start(spec).await.status, 202);
    assert_eq!(start(spec).await.status, 409, "a second rollout of a running one");
    let weight_of_v2 = || async {
        admin_json(admin, "/api/v1/versions").await["services"]["web"]["versions"]["v2"]["weight"].as_u64()
    };
    eventually(Duration::from_secs(5), "the first step's weights", || async {
        (weight_of_v2().await == Some(50)).then_some(())
    })
    .await;
    let cmd = |c: &'static str| async move {
        let path = format!("/api/v1/rollouts/web/{c}");
        admin_write(admin, "POST", &path, Some(TOKEN), "").await
    };
    let r = cmd("resume").await;
    assert_eq!(r.status, 409, "resume of a running rollout: {}", r.body);
    let r = cmd("pause").await;
    assert_eq!(
        (
            r.status,
            serde_json::from_str::<Value>(&r.body).unwrap()["phase"].clone()
        ),
        (200, "paused".into())
    );
    assert_eq!(weight_of_v2().await, Some(50), "pausing keeps the weights");
    let r = cmd("resume").await;
    assert_eq!(
        serde_json::from_str::<Value>(&r.body).unwrap()["phase"],
        "running"
    );
    let r = cmd("abort").await;
    assert_eq!(
        serde_json::from_str::<Value>(&r.body).unwrap()["phase"],
        "aborted"
    );
    eventually(
        Duration::from_secs(5),
        "the canary's weight back to 0",
        || async { (weight_of_v2().await == Some(0)).then_some(()) },
    )
    .await;
    let before = v2.requests();
    let c = client();
    for _ in 0..100 {
        assert_eq!(version_of(&get(&c, g.addr(), "app.test", "/").await), "v1");
    }
    assert_eq!(v2.requests(), before);
    assert_eq!(cmd("pause").await.status, 409, "an aborted rollout is over");
    assert_eq!(cmd("jump").await.status, 404);
    let actions: Vec<String> = rollout(&g).await["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(actions, ["start", "pause", "resume", "abort"]);
}
