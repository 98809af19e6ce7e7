//! etcd discovery against a real etcd (Debian's etcd-server): routes put with etcdctl or the
//! client go live, transactions land as one snapshot, compaction and member loss lose nothing,
//! leases expire, and a fleet of instances agrees on the revision.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Txn, TxnOp};
use rustix::process::Signal;
use serde_json::Value;

use crate::etcd_support::{ETCD_LOCK, Etcd, delete, free_port, put};
use crate::support::{Backend, Behavior, Gantry, admin_get, admin_json, client, eventually, get, send};

fn opts(endpoints: Vec<String>) -> gantry::Options {
    gantry::Options {
        etcd: Some(gantry::fleet::EtcdOptions {
            endpoints: endpoints.into(),
            prefix: "/gantry/".into(),
            instance_id: None,
        }),
        ..Default::default()
    }
}

async fn start(etcd: &Etcd, config: &str) -> Gantry {
    Gantry::start_with(config, opts(etcd.endpoints())).await
}

async fn etcd_status(g: &Gantry) -> Value {
    admin_json(g.running.admin_addr, "/api/v1/status").await["sources"]["etcd"].clone()
}

/// The value of a metric line that starts with `prefix` (name and labels).
async fn metric(g: &Gantry, prefix: &str) -> Option<f64> {
    let m = admin_get(g.running.admin_addr, "/metrics").await.body;
    m.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Waits until `host` + `path` is answered by backend `name`.
async fn routed_to(g: &Gantry, host: &str, path: &str, name: &str) {
    let c = client();
    eventually(
        Duration::from_secs(15),
        &format!("{host}{path} to reach {name}"),
        || {
            let c = c.clone();
            async move {
                let a = get(&c, g.addr(), host, path).await;
                (a.status == 200 && a.body == name).then_some(())
            }
        },
    )
    .await;
}

/// The member Gantry's watch is on, and how its status says so.
async fn watched_member(etcd: &Etcd, g: &Gantry) -> (usize, String) {
    let origin = etcd_status(g).await["origin"].as_str().unwrap().to_string();
    (etcd.index_of(origin.trim_start_matches("etcd at ")), origin)
}

/// Waits until the instance serves etcd's revision `rev` or a later one. Later is as good: the
/// instance reports the revision of everything it has read, and writes that are not
/// configuration (instance records) can land between a test's put and the instance's read.
async fn revision_is(g: &Gantry, rev: i64) {
    eventually(
        Duration::from_secs(15),
        &format!("revision {rev} (or later) to be live"),
        || async { (etcd_status(g).await["revision"].as_i64() >= Some(rev)).then_some(()) },
    )
    .await;
}

fn backend_json(b: &Backend) -> String {
    format!(r#"{{"url": "{}"}}"#, b.url())
}

#[tokio::test]
async fn a_route_put_with_etcdctl_becomes_routable_and_its_revision_is_reported() {
    let _one = ETCD_LOCK.lock().await;
    let etcd = Etcd::start().await;
    let ep = &etcd.endpoints()[0];
    let app = Backend::start("app", Behavior::Name).await;
    let g = start(&etcd, "").await;
    Etcd::etcdctl(ep, &["put", "/gantry/backends/app/1", &backend_json(&app)]);
    let out = Etcd::etcdctl(
        ep,
        &[
            "put",
            "-w",
            "json",
            "/gantry/routers/app",
            r#"{"hosts": ["app.test"], "service": "app"}"#,
        ],
    );
    let rev = serde_json::from_str::<Value>(&out).unwrap()["header"]["revision"]
        .as_i64()
        .unwrap();
    routed_to(&g, "app.test", "/", "app").await;
    revision_is(&g, rev).await;
    assert!(metric(&g, "gantry_etcd_revision ").await >= Some(rev as f64));
    // The instance published itself, with that revision.
    let record = eventually(
        Duration::from_secs(10),
        "the instance record at that revision",
        || async {
            let out = Etcd::etcdctl(
                ep,
                &["get", "--prefix", "/gantry/instances/", "--print-value-only"],
            );
            let record: Value = serde_json::from_str(out.trim()).ok()?;
            (record["revision"].as_i64() >= Some(rev)).then_some(record)
        },
    )
    .await;
    assert_eq!(record["admin"], g.running.admin_addr.to_string());
    assert_eq!(record["ready"], true);
    // Deleting the router takes the route away.
    Etcd::etcdctl(ep, &["del", "/gantry/routers/app"]);
    eventually(Duration::from_secs(10), "the route to go", || async {
        (get(&client(), g.addr(), "app.test", "/").await.status == 404).then_some(())
    })
    .await;
    g.running.shutdown().await;
    // A stopped instance takes its record with it.
    let left = Etcd::etcdctl(ep, &["get", "--prefix", "/gantry/instances/", "--keys-only"]);
    assert!(left.trim().is_empty(), "{left}");
}

#[tokio::test]
async fn a_transaction_that_moves_a_route_is_applied_as_one_snapshot() {
    let _one = ETCD_LOCK.lock().await;
    let etcd = Etcd::start().await;
    let (a, b) = (
        Backend::start("A", Behavior::Name).await,
        Backend::start("B", Behavior::Name).await,
    );
    let mut c = etcd.client().await;
    put(&mut c, "/gantry/backends/a/1", &backend_json(&a)).await;
    put(&mut c, "/gantry/backends/b/1", &backend_json(&b)).await;
    put(
        &mut c,
        "/gantry/routers/r",
        r#"{"hosts": ["move.test"], "service": "a"}"#,
    )
    .await;
    let g = start(&etcd, "").await;
    routed_to(&g, "move.test", "/", "A").await;

    // Requests in a loop (bounded in count and time) while the route moves.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, addr) = (stop.clone(), g.addr());
        tokio::spawn(async move {
            let c = client();
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && seen.len() < 20_000 && Instant::now() < deadline {
                let a = get(&c, addr, "move.test", "/").await;
                seen.push((a.status, a.body));
            }
            seen
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = g.running.generation();
    // Service a loses its backend and the route moves to b, in one transaction: applied event by
    // event, a request could land between the two and get 503.
    let txn = Txn::new().and_then([
        TxnOp::delete("/gantry/backends/a/1", None),
        TxnOp::put(
            "/gantry/routers/r",
            r#"{"hosts": ["move.test"], "service": "b"}"#,
            None,
        ),
    ]);
    c.txn(txn).await.unwrap();
    routed_to(&g, "move.test", "/", "B").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = load.await.unwrap();
    assert_eq!(
        g.running.generation(),
        before + 1,
        "the transaction must be one snapshot"
    );
    let bad: Vec<_> = seen
        .iter()
        .filter(|(s, b)| *s != 200 || (b != "A" && b != "B"))
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} requests failed: {:?}",
        bad.len(),
        seen.len(),
        &bad[..bad.len().min(5)]
    );
    let first_b = seen
        .iter()
        .position(|(_, b)| b == "B")
        .expect("the load saw the move");
    assert!(
        seen[first_b..].iter().all(|(_, b)| b == "B"),
        "a request went back to A after the move"
    );
    assert!(first_b > 0, "the load started before the move");
    g.running.shutdown().await;
}

#[tokio::test]
async fn after_a_compaction_past_the_watch_nothing_is_missed() {
    let _one = ETCD_LOCK.lock().await;
    let etcd = Etcd::cluster(3).await;
    let (a, b) = (
        Backend::start("A", Behavior::Name).await,
        Backend::start("B", Behavior::Name).await,
    );
    let mut c = etcd.client().await;
    put(&mut c, "/gantry/backends/app/a", &backend_json(&a)).await;
    put(
        &mut c,
        "/gantry/routers/app",
        r#"{"hosts": ["compact.test"], "service": "app"}"#,
    )
    .await;
    let g = start(&etcd, "").await;
    routed_to(&g, "compact.test", "/", "A").await;
    // Hold the member Gantry watches, change things elsewhere, and compact past the revision
    // the watch would resume from.
    let (watched, _) = watched_member(&etcd, &g).await;
    // Without an election to wait for, the writes and the compaction below are done in
    // milliseconds, long before Gantry gives up on the held member (seconds).
    etcd.ensure_not_leader(watched).await;
    etcd.signal(watched, Signal::STOP);
    let other = (watched + 1) % 3;
    let mut c = etcd.client_of(other).await;
    put(&mut c, "/gantry/backends/app/b", &backend_json(&b)).await;
    delete(&mut c, "/gantry/backends/app/a").await;
    let rev = put(
        &mut c,
        "/gantry/routers/app",
        r#"{"hosts": ["compact.test"], "path_prefix": "/v2", "service": "app"}"#,
    )
    .await;
    Etcd::etcdctl(&etcd.members[other].client_url, &["compact", &rev.to_string()]);
    // The held member stays held: Gantry must resume elsewhere, from a compacted revision.
    routed_to(&g, "compact.test", "/v2/x", "B").await;
    revision_is(&g, rev).await;
    etcd.signal(watched, Signal::CONT);
    assert_eq!(get(&client(), g.addr(), "compact.test", "/").await.status, 404);
    let reads = metric(&g, "gantry_etcd_reads_total{reason=\"compacted\"}").await;
    assert!(
        reads >= Some(1.0),
        "the watch should have found its revision compacted: {reads:?}"
    );
    g.running.shutdown().await;
}

#[tokio::test]
async fn losing_the_member_gantry_watches_loses_no_later_update() {
    let _one = ETCD_LOCK.lock().await;
    let mut etcd = Etcd::cluster(3).await;
    let backends = [
        Backend::start("one", Behavior::Name).await,
        Backend::start("two", Behavior::Name).await,
        Backend::start("three", Behavior::Name).await,
    ];
    let mut c = etcd.client().await;
    put(&mut c, "/gantry/backends/app/1", &backend_json(&backends[0])).await;
    put(
        &mut c,
        "/gantry/routers/app",
        r#"{"hosts": ["ha.test"], "service": "app"}"#,
    )
    .await;
    let g = start(&etcd, "").await;
    routed_to(&g, "ha.test", "/", "one").await;
    let (watched, origin) = watched_member(&etcd, &g).await;
    let others: Vec<usize> = (0..3).filter(|&i| i != watched).collect();

    // SIGSTOP: the member hangs with its connections open.
    etcd.signal(watched, Signal::STOP);
    assert_eq!(
        get(&client(), g.addr(), "ha.test", "/").await.body,
        "one",
        "the last table keeps serving"
    );
    let mut c = etcd.client_of(others[0]).await;
    put(&mut c, "/gantry/backends/app/2", &backend_json(&backends[1])).await;
    let rev = delete(&mut c, "/gantry/backends/app/1").await;
    routed_to(&g, "ha.test", "/", "two").await;
    revision_is(&g, rev).await;
    let now_on = etcd_status(&g).await["origin"].as_str().unwrap().to_string();
    assert_ne!(now_on, origin, "gantry moved to another member");

    // SIGKILL the stopped member: the rest of the cluster carries on, and so does Gantry.
    etcd.kill(watched);
    let mut c = etcd.client_of(others[1]).await;
    put(&mut c, "/gantry/backends/app/3", &backend_json(&backends[2])).await;
    let rev = delete(&mut c, "/gantry/backends/app/2").await;
    routed_to(&g, "ha.test", "/", "three").await;
    revision_is(&g, rev).await;
    g.running.shutdown().await;
}

/// `gantry register` as a process.
fn register(etcd: &Etcd, backend: &Backend, ttl: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args([
            "register",
            "--etcd",
            &etcd.endpoints().join(","),
            "--service",
            "leased",
            "--url",
        ])
        .arg(backend.url())
        .args(["--route", "http://lease.test", "--ttl", ttl])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn backends_of(g: &Gantry, service: &str) -> usize {
    let routes = admin_json(g.running.admin_addr, "/api/v1/routes").await;
    routes["services"][service]["backends"]
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test]
async fn a_registered_backend_goes_within_its_ttl_plus_a_second_after_its_keeper_dies() {
    let _one = ETCD_LOCK.lock().await;
    let etcd = Etcd::start().await;
    let b = Backend::start("leased", Behavior::Name).await;
    let g = start(&etcd, "").await;

    // Killed: nothing renews the lease, and the backend goes when it expires.
    let mut keeper = register(&etcd, &b, "2");
    routed_to(&g, "lease.test", "/", "leased").await;
    keeper.kill().unwrap();
    keeper.wait().unwrap();
    let killed = Instant::now();
    eventually(
        Duration::from_secs(3),
        "the backend to go within TTL + 1 s",
        || async { (backends_of(&g, "leased").await == 0).then_some(()) },
    )
    .await;
    eprintln!("backend gone {:?} after its keeper was killed", killed.elapsed());
    // The route is configuration: it stays, and the service answers 503 until a backend is back.
    assert_eq!(get(&client(), g.addr(), "lease.test", "/").await.status, 503);

    // Stopped: the backend goes at once, and so does the route it created (it was the last).
    let keeper = register(&etcd, &b, "10");
    routed_to(&g, "lease.test", "/", "leased").await;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(keeper.id() as i32).unwrap(),
        Signal::TERM,
    )
    .unwrap();
    eventually(
        Duration::from_secs(2),
        "the registration to go when stopped",
        || async { (get(&client(), g.addr(), "lease.test", "/").await.status == 404).then_some(()) },
    )
    .await;
    let mut keeper = keeper;
    assert!(keeper.wait().unwrap().success());
    g.running.shutdown().await;
}

#[tokio::test]
async fn three_instances_report_the_revision_of_a_weight_change() {
    let _one = ETCD_LOCK.lock().await;
    let etcd = Etcd::start().await;
    let (v1, v2) = (
        Backend::start("v1", Behavior::Name).await,
        Backend::start("v2", Behavior::Name).await,
    );
    let mut c = etcd.client().await;
    put(
        &mut c,
        "/gantry/backends/web/v1",
        &format!(r#"{{"url": "{}", "version": "v1"}}"#, v1.url()),
    )
    .await;
    put(
        &mut c,
        "/gantry/backends/web/v2",
        &format!(r#"{{"url": "{}", "version": "v2"}}"#, v2.url()),
    )
    .await;
    put(&mut c, "/gantry/weights/web", r#"{"v1": 100, "v2": 0}"#).await;
    put(
        &mut c,
        "/gantry/routers/web",
        r#"{"hosts": ["fleet.test"], "service": "web"}"#,
    )
    .await;
    let fleet = [
        start(&etcd, "").await,
        start(&etcd, "").await,
        start(&etcd, "").await,
    ];
    for g in &fleet {
        routed_to(g, "fleet.test", "/", "v1").await;
    }
    let rev = put(&mut c, "/gantry/weights/web", r#"{"v1": 0, "v2": 100}"#).await;
    for g in &fleet {
        revision_is(g, rev).await;
        assert_eq!(metric(g, "gantry_etcd_revision ").await, Some(rev as f64));
        assert_eq!(get(&client(), g.addr(), "fleet.test", "/").await.body, "v2");
    }
    // The platform's view: every instance record says it has the change.
    eventually(
        Duration::from_secs(10),
        "three instance records at the new revision",
        || async {
            let mut c = c.clone();
            let resp = c
                .get(
                    "/gantry/instances/",
                    Some(etcd_client::GetOptions::new().with_prefix()),
                )
                .await
                .ok()?;
            let revs: Vec<i64> = resp
                .kvs()
                .iter()
                .filter_map(|kv| serde_json::from_slice::<Value>(kv.value()).ok()?["revision"].as_i64())
                .collect();
            (revs.len() == 3 && revs.iter().all(|r| *r == rev)).then_some(())
        },
    )
    .await;
    for g in fleet {
        g.running.shutdown().await;
    }
}

#[tokio::test]
async fn a_thousand_rapid_puts_end_in_the_same_final_state_on_every_instance() {
    let _one = ETCD_LOCK.lock().await;
    let etcd = Etcd::start().await;
    let b = Backend::start("rapid", Behavior::Name).await;
    let mut c = etcd.client().await;
    put(&mut c, "/gantry/backends/rapid/1", &backend_json(&b)).await;
    let fleet = [
        start(&etcd, "").await,
        start(&etcd, "").await,
        start(&etcd, "").await,
    ];
    let routers = 20;
    let mut last = 0;
    for i in 0..1000 {
        let value = format!(
            r#"{{"hosts": ["r{}.test"], "path_prefix": "/p{i}", "service": "rapid"}}"#,
            i % routers
        );
        last = put(&mut c, &format!("/gantry/routers/r{}", i % routers), &value).await;
    }
    for g in &fleet {
        revision_is(g, last).await;
        let routes = admin_json(g.running.admin_addr, "/api/v1/routes").await;
        for k in 0..routers {
            let final_i = 1000 - routers + k;
            let path = &routes["routers"][format!("r{k}")]["match"]["path"];
            assert_eq!(
                path,
                &serde_json::json!({"prefix": format!("/p{final_i}")}),
                "router r{k}: {path}"
            );
            assert_eq!(
                get(
                    &client(),
                    g.addr(),
                    &format!("r{k}.test"),
                    &format!("/p{final_i}/x")
                )
                .await
                .body,
                "rapid"
            );
        }
    }
    for g in fleet {
        g.running.shutdown().await;
    }
}

#[tokio::test]
async fn with_etcd_down_at_start_the_file_serves_and_etcd_routes_arrive_when_it_is_up() {
    let _one = ETCD_LOCK.lock().await;
    let (file_b, etcd_b) = (
        Backend::start("file", Behavior::Name).await,
        Backend::start("etcd", Behavior::Name).await,
    );
    let ports = [(free_port(), free_port())];
    let endpoint = format!("http://127.0.0.1:{}", ports[0].0);
    let config = format!(
        "[routers.f]\nhosts = [\"file.test\"]\nservice = \"f\"\n[services.f]\nbackends = [{{ url = \"{}\" }}]\n",
        file_b.url()
    );
    let g = Gantry::start_with(&config, opts(vec![endpoint])).await;
    assert_eq!(get(&client(), g.addr(), "file.test", "/").await.body, "file");
    eventually(
        Duration::from_secs(10),
        "etcd to be reported unreachable",
        || async { (etcd_status(&g).await["reachable"] == false).then_some(()) },
    )
    .await;
    assert_eq!(
        admin_get(g.running.admin_addr, "/readyz").await.status,
        200,
        "ready on the file alone"
    );

    let etcd = Etcd::start_on(&ports).await;
    let mut c = etcd.client().await;
    put(&mut c, "/gantry/backends/e/1", &backend_json(&etcd_b)).await;
    put(
        &mut c,
        "/gantry/routers/e",
        r#"{"hosts": ["etcd.test"], "service": "e"}"#,
    )
    .await;
    routed_to(&g, "etcd.test", "/", "etcd").await;
    assert_eq!(etcd_status(&g).await["reachable"], true);
    assert_eq!(get(&client(), g.addr(), "file.test", "/").await.body, "file");
    g.running.shutdown().await;
}

#[tokio::test]
async fn bad_keys_are_reported_with_key_and_revision_and_the_rest_serves() {
    let _one = ETCD_LOCK.lock().await;
    let etcd = Etcd::start().await;
    let b = Backend::start("good", Behavior::Name).await;
    let mut c = etcd.client().await;
    put(&mut c, "/gantry/backends/good/1", &backend_json(&b)).await;
    put(
        &mut c,
        "/gantry/routers/good",
        r#"{"hosts": ["good.test"], "service": "good"}"#,
    )
    .await;
    // The file declares a router etcd also declares: the file wins, etcd's is reported.
    let config = format!(
        "[routers.shared]\nhosts = [\"shared.test\"]\nservice = \"s\"\n[services.s]\nbackends = [{{ url = \"{}\" }}]\n",
        b.url()
    );
    let g = start(&etcd, &config).await;
    routed_to(&g, "good.test", "/", "good").await;
    let json_rev = put(
        &mut c,
        "/gantry/routers/broken",
        r#"{"hosts": ["x.test"], "service": "#,
    )
    .await;
    let weight_rev = put(
        &mut c,
        "/gantry/backends/good/2",
        r#"{"url": "http://127.0.0.1:9", "weight": 100000}"#,
    )
    .await;
    let field_rev = put(
        &mut c,
        "/gantry/routers/typo",
        r#"{"hots": ["y.test"], "service": "good"}"#,
    )
    .await;
    let stray_rev = put(&mut c, "/gantry/whatever", "1").await;
    let ep_rev = put(
        &mut c,
        "/gantry/routers/nowhere",
        r#"{"hosts": ["n.test"], "entrypoints": ["nope"], "service": "good"}"#,
    )
    .await;
    put(
        &mut c,
        "/gantry/routers/shared",
        r#"{"hosts": ["other.test"], "service": "good"}"#,
    )
    .await;
    let expected = [
        format!("etcd key /gantry/routers/broken @ rev {json_rev}: value: EOF while parsing"),
        format!("etcd key /gantry/backends/good/2 @ rev {weight_rev}: value.weight: 100000 is out of range"),
        format!("etcd key /gantry/routers/typo @ rev {field_rev}: value: unknown field `hots`"),
        format!("etcd key /gantry/whatever @ rev {stray_rev}: key outside the layout"),
        format!(
            "etcd key /gantry/routers/nowhere @ rev {ep_rev}: routers.nowhere.entrypoints: unknown entrypoint \"nope\""
        ),
        "routers.shared: ignored: already declared by".to_string(),
    ];

    let problems = eventually(
        Duration::from_secs(10),
        "every bad key to be reported",
        || async {
            let p: Vec<String> = etcd_status(&g).await["problems"]
                .as_array()?
                .iter()
                .map(|x| x.as_str().unwrap_or("").to_string())
                .collect();
            expected
                .iter()
                .all(|e| p.iter().any(|x| x.contains(e.as_str())))
                .then_some(p)
        },
    )
    .await;
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
    // The rest of the table serves: the good route, and the file's version of the shared one.
    assert_eq!(get(&client(), g.addr(), "good.test", "/").await.body, "good");
    assert_eq!(get(&client(), g.addr(), "shared.test", "/").await.status, 200);
    assert_eq!(get(&client(), g.addr(), "other.test", "/").await.status, 404);
    g.running.shutdown().await;
}

// Middlewares in etcd: declared under `middlewares/`, named by an etcd router and by a router of
// the file (either source's routers may use either source's middlewares); a bad value keeps the
// last good one; deleting it makes its routers answer 503, never let through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn middlewares_from_etcd_apply_to_routers_of_either_source() {
    let _one = ETCD_LOCK.lock().await;
    let etcd = Etcd::start().await;
    let mut c = etcd.client().await;
    let app = Backend::start("app", Behavior::Name).await;
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let g = start(
        &etcd,
        &format!(
            "[routers.filed]\nhosts = [\"filed.test\"]\nservice = \"app\"\nmiddlewares = [\"tag\"]\n\
             [services.app]\nbackends = [{{ url = \"{}\" }}]\n\
             [services.down]\nbackends = [{{ url = \"http://{refused}\" }}]\n",
            app.url()
        ),
    )
    .await;
    put(
        &mut c,
        "/gantry/middlewares/tag",
        r#"{"headers": {"response": {"set": {"X-Tag": "from-etcd"}}}}"#,
    )
    .await;
    put(
        &mut c,
        "/gantry/middlewares/office",
        r#"{"ip_allow": {"allow": ["10.0.0.0/8"]}}"#,
    )
    .await;
    put(
        &mut c,
        "/gantry/routers/etcd-routed",
        r#"{"hosts": ["etcd.test"], "service": "app", "middlewares": ["tag", "office"]}"#,
    )
    .await;
    let cl = client();
    let tagged = eventually(
        Duration::from_secs(15),
        "the file router tagged by etcd",
        || async {
            let a = get(&cl, g.addr(), "filed.test", "/").await;
            (a.status == 200 && a.headers.get("x-tag").is_some_and(|v| v == "from-etcd")).then_some(a)
        },
    )
    .await;
    assert_eq!(tagged.body, "app");
    eventually(
        Duration::from_secs(15),
        "the etcd router refusing loopback",
        || async { (get(&cl, g.addr(), "etcd.test", "/").await.status == 403).then_some(()) },
    )
    .await;

    // A bad value is reported with its key and the last good one keeps working.
    put(
        &mut c,
        "/gantry/middlewares/tag",
        r#"{"headers": {"response": {"set": {"bad name": "x"}}}}"#,
    )
    .await;
    eventually(Duration::from_secs(15), "the bad middleware reported", || async {
        let s = etcd_status(&g).await.to_string();
        s.contains("etcd key /gantry/middlewares/tag").then_some(())
    })
    .await;
    assert_eq!(
        get(&cl, g.addr(), "filed.test", "/").await.headers["x-tag"],
        "from-etcd"
    );

    // Deleted: its routers answer 503 (fail closed) and say why.
    delete(&mut c, "/gantry/middlewares/office").await;
    let refused = eventually(Duration::from_secs(15), "503 without the middleware", || async {
        let a = get(&cl, g.addr(), "etcd.test", "/").await;
        (a.status == 503).then_some(a)
    })
    .await;
    assert!(refused.body.contains("middleware \"office\""), "{}", refused.body);

    // CORS, a redirect and error pages from etcd, on an etcd router over a backend that is down
    // (Gantry's own 502 gets the page, served by the file's `app`).
    put(
        &mut c,
        "/gantry/middlewares/cors",
        r#"{"headers": {"cors": {"allow_origins": ["https://app.test"], "allow_methods": ["*"]}}}"#,
    )
    .await;
    put(
        &mut c,
        "/gantry/middlewares/moved",
        r#"{"redirect": {"regex": "^http://pages\\.test/old$", "replacement": "https://pages.test/new", "permanent": true}}"#,
    )
    .await;
    put(
        &mut c,
        "/gantry/middlewares/oops",
        r#"{"errors": {"status": ["500-599"], "service": "app", "path": "/sorry/{status}"}}"#,
    )
    .await;
    put(
        &mut c,
        "/gantry/routers/pages",
        r#"{"hosts": ["pages.test"], "service": "down", "middlewares": ["cors", "moved", "oops"]}"#,
    )
    .await;
    let page = eventually(Duration::from_secs(15), "the etcd error page", || async {
        let a = get(&cl, g.addr(), "pages.test", "/").await;
        (a.status == 502 && a.body == "app").then_some(a)
    })
    .await;
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(app.last().uri, "/sorry/502");
    let moved = get(&cl, g.addr(), "pages.test", "/old").await;
    assert_eq!(
        (moved.status, &moved.headers["location"]),
        (301, &"https://pages.test/new".parse().unwrap())
    );
    let preflight = send(
        &cl,
        g.addr(),
        "OPTIONS",
        "pages.test",
        "/",
        &[
            ("origin", "https://app.test"),
            ("access-control-request-method", "DELETE"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(preflight.status, 204);
    assert_eq!(preflight.headers["access-control-allow-methods"], "DELETE");
    g.running.shutdown().await;
}
