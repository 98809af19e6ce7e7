//! Docker Swarm mode against the real engine: a single-node swarm initialised on loopback by the
//! test (and left after it, unless the engine was in one already), an attachable overlay
//! network the test creates, stacks deployed with `docker stack deploy`, and Gantry in a
//! container on that network (`gantry run --swarm`: the image of the image test, built from the
//! `demo` profile's binary, running unprivileged with the socket's group), reached through its
//! published port. Swarm mode changes the whole engine, so these tests hold the
//! Docker tests' lock.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::docker::{load, lock, spread};
use crate::docker_support::*;
use crate::support::*;

/// A single-node swarm for one test, and what the test put on it; all removed when dropped.
struct Swarm {
    /// The engine was not in a swarm before: leave it after.
    joined_here: bool,
    /// Swarm mode creates `docker_gwbridge`: removed after leaving, unless it was there before.
    gwbridge_before: bool,
    network: String,
    stacks: Vec<String>,
    containers: Vec<String>,
    /// Gantry's image, built for this test.
    image: Option<String>,
    dir: tempfile::TempDir,
}

impl Swarm {
    fn init() -> Self {
        let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
        let joined_here = state.trim() != "active";
        let gwbridge_before = Command::new("docker")
            .args(["network", "inspect", "docker_gwbridge"])
            .output()
            .is_ok_and(|o| o.status.success());
        if joined_here {
            let out = Command::new("docker")
                .args(["swarm", "init", "--advertise-addr", "127.0.0.1"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "Swarm mode cannot be initialised on this engine: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let network = unique("gt-swarm-net");
        let mut s = Swarm {
            joined_here,
            gwbridge_before,
            network: String::new(),
            stacks: Vec::new(),
            containers: Vec::new(),
            image: None,
            dir: tempfile::tempdir().unwrap(),
        };
        docker(&["network", "create", "-d", "overlay", "--attachable", &network]);
        s.network = network;
        s
    }

    /// Deploys `services` (YAML, indented under `services:`) as a stack on the test's network;
    /// returns the stack's name.
    fn deploy(&mut self, services: &str) -> String {
        let stack = unique("gts");
        let file = self.dir.path().join(format!("{stack}.yml"));
        std::fs::write(
            &file,
            format!(
                "version: \"3.8\"\nservices:\n{services}\nnetworks:\n  net:\n    external: true\n    name: {}\n",
                self.network
            ),
        )
        .unwrap();
        self.stacks.push(stack.clone());
        docker(&[
            "stack",
            "deploy",
            "--resolve-image",
            "never",
            "-c",
            file.to_str().unwrap(),
            &stack,
        ]);
        stack
    }

    /// Gantry in a container on the test's network, following the swarm; returns its proxy and
    /// admin addresses on loopback once it answers.
    async fn gantry(&mut self, args: &[&str]) -> (SocketAddr, SocketAddr) {
        let name = unique("gt-swarm-gantry");
        let image = format!("{}:it", unique("gantry-swarm"));
        crate::image::build_image(&image);
        self.image = Some(image.clone());
        let gid = run(Command::new("stat").args(["-c", "%g", "/var/run/docker.sock"]));
        let gid = gid.trim().to_string();
        let mut all = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &self.network,
            "--group-add",
            &gid,
            "-p",
            "127.0.0.1::8080",
            "-p",
            "127.0.0.1::8081",
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            &image,
            "run",
            "--swarm",
            "--listen",
            "0.0.0.0:8080",
            "--admin",
            "0.0.0.0:8081",
        ];
        all.extend(args);
        docker(&all);
        self.containers.push(name.clone());
        let port = |p: &str| -> SocketAddr {
            docker(&["port", &name, p])
                .lines()
                .find_map(|l| l.trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} does not publish {p}"))
        };
        let (proxy, admin) = (port("8080/tcp"), port("8081/tcp"));
        // The published ports accept before Gantry listens behind them.
        let c = client();
        eventually(
            Duration::from_secs(30),
            "Gantry in its container to answer",
            || async {
                let a = send(&c, admin, "GET", "localhost", "/healthz", &[]).await.ok()?;
                (a.status == 200).then_some(())
            },
        )
        .await;
        (proxy, admin)
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        for s in &self.stacks {
            let _ = Command::new("docker").args(["stack", "rm", s]).output();
        }
        // Tasks go away after `stack rm` returns: the network can go once they have.
        let deadline = Instant::now() + Duration::from_secs(30);
        for s in &self.stacks {
            let label = format!("label=com.docker.stack.namespace={s}");
            while Instant::now() < deadline {
                let left = Command::new("docker")
                    .args(["ps", "-aq", "--filter", &label])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                    .unwrap_or_default();
                if left.is_empty() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        remove_network(&self.network, deadline);
        if let Some(image) = &self.image {
            let _ = Command::new("docker").args(["rmi", "-f", image]).output();
        }
        if self.joined_here {
            let _ = Command::new("docker")
                .args(["swarm", "leave", "--force"])
                .output();
            if !self.gwbridge_before {
                // Its endpoints go some time after the leave returns. A stale ingress endpoint
                // (moby/moby#37018) can keep it until dockerd restarts: then it stays, and the
                // next `init` finds it there and reuses it.
                remove_network("docker_gwbridge", Instant::now() + Duration::from_secs(10));
            }
        }
    }
}

/// Removes a network, trying again until `deadline` while it still has endpoints.
fn remove_network(name: &str, deadline: Instant) {
    while Instant::now() < deadline {
        let Ok(out) = Command::new("docker").args(["network", "rm", name]).output() else {
            return;
        };
        let gone = String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("not found");
        if out.status.success() || gone {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The replicas (container IDs, as the backends name themselves) of a swarm service now.
fn replicas(service: &str) -> BTreeSet<String> {
    let label = format!("label=com.docker.swarm.service.name={service}");
    docker(&["ps", "-q", "--filter", &label])
        .lines()
        .map(|l| l[..12].to_string())
        .collect()
}

/// Waits until requests for `host` reach exactly `want`.
async fn reaches(addr: SocketAddr, host: &str, want: &BTreeSet<String>, what: &str) {
    eventually(Duration::from_secs(60), what, || async {
        let (hits, _) = spread(addr, host, 10 * want.len()).await;
        (hits.keys().cloned().collect::<BTreeSet<_>>() == *want).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_service_is_routed_task_by_task_scaled_and_updated_without_a_failed_request() {
    let _lock = lock().await;
    let mut swarm = Swarm::init();
    let host = format!("{}.test", unique("web"));
    let vip_host = format!("{}.test", unique("vip"));
    let stack = swarm.deploy(&format!(
        "  web:\n    image: {image}\n    networks: [net]\n    deploy:\n      replicas: 3\n      labels:\n        aliyun.routing.port_80: http://{host}\n  vip:\n    image: {image}\n    networks: [net]\n    deploy:\n      replicas: 2\n      labels:\n        aliyun.routing.port_80: http://{vip_host}\n        gantry.swarm.address: vip\n",
        image = test_image()
    ));
    let (addr, admin) = swarm.gantry(&[]).await;
    let service = format!("{stack}_web");

    // All three replicas answer, each its own backend (task by task, not the VIP).
    let three = eventually(Duration::from_secs(60), "three running replicas", || async {
        let r = replicas(&service);
        (r.len() == 3).then_some(r)
    })
    .await;
    reaches(addr, &host, &three, "requests to reach all three replicas").await;
    let status = admin_json(admin, "/api/v1/status").await;
    assert_eq!(status["sources"]["swarm"]["reachable"], true, "{status:#}");
    assert_eq!(
        status["sources"]["swarm"]["problems"],
        serde_json::json!([]),
        "{status:#}"
    );

    // A service reached by its virtual IP: its one backend is the VIP, and Swarm balances behind
    // it. (Swarm's VIPs need the kernel's IPVS, which the test machine lacks: a VIP answers
    // nothing there, so this checks the backend and sends it no traffic.)
    let vip = docker(&[
        "service",
        "inspect",
        "--format",
        "{{range .Endpoint.VirtualIPs}}{{.Addr}}{{end}}",
        &format!("{stack}_vip"),
    ]);
    let vip = vip.trim().split('/').next().unwrap().to_string();
    let urls = |routes: &serde_json::Value, name: &str| -> Vec<String> {
        routes["services"][name]["backends"]
            .as_array()
            .map(|b| b.iter().map(|x| x["url"].as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let routes = eventually(
        Duration::from_secs(30),
        "the VIP service to be routed",
        || async {
            let r = admin_json(admin, "/api/v1/routes").await;
            (!urls(&r, &vip_host).is_empty()).then_some(r)
        },
    )
    .await;
    assert_eq!(
        urls(&routes, &vip_host),
        [format!("http://{vip}:80")],
        "{routes:#}"
    );
    assert_eq!(urls(&routes, &host).len(), 3, "{routes:#}");

    // Scaled to five: the two new replicas are routed.
    docker(&["service", "scale", "--detach=false", &format!("{service}=5")]);
    let five = replicas(&service);
    assert_eq!(five.len(), 5);
    reaches(addr, &host, &five, "requests to reach all five replicas").await;

    // A rolling update under load: every task is replaced, one at a time, and no request fails.
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(addr, host.clone(), 4, stop.clone());
    docker(&[
        "service",
        "update",
        "--detach=false",
        "--force",
        "--no-resolve-image",
        "--update-parallelism",
        "1",
        &service,
    ]);
    let updated = replicas(&service);
    assert_eq!(updated.len(), 5);
    assert!(updated.is_disjoint(&five), "every replica replaced");
    reaches(addr, &host, &updated, "requests to reach the updated replicas").await;
    stop.store(true, Ordering::Relaxed);
    let ok = assert_none_failed(running.await.unwrap(), "during the rolling update");
    assert!(ok > 100, "{ok} requests during the update");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_of_a_stack_split_a_route_90_10_and_aliyun_labels_apply() {
    let _lock = lock().await;
    let mut swarm = Swarm::init();
    let host = format!("{}.test", unique("shop"));
    let image = test_image();
    let version = |v: &str, weight: u32| {
        format!(
            "  {v}:\n    image: {image}\n    networks: [net]\n    environment:\n      VERSION: {v}\n    deploy:\n      replicas: 1\n      labels:\n        aliyun.routing.port_80: http://{host}\n        gantry.version: {v}\n        gantry.weight: \"{weight}\"\n"
        )
    };
    let sticky_host = format!("{}.test", unique("sticky"));
    let stack = swarm.deploy(&format!(
        "{}{}  sticky:\n    image: {image}\n    networks: [net]\n    deploy:\n      replicas: 3\n      labels:\n        aliyun.routing.port_80: http://{sticky_host}\n        aliyun.routing.session_sticky: \"true\"\n        aliyun.probe.url: http://container/health\n        aliyun.probe.timeout_seconds: \"2\"\n        aliyun.global: \"true\"\n",
        version("v1", 90),
        version("v2", 10),
    ));
    let (addr, admin) = swarm.gantry(&[]).await;

    // 90/10 over 5,000 requests: v2 expected 500, within 5 standard deviations (21).
    let c = client();
    eventually(Duration::from_secs(60), "both versions routed", || async {
        let mut seen = BTreeSet::new();
        for _ in 0..40 {
            let a = send(&c, addr, "GET", &host, "/", &[]).await.ok()?;
            seen.insert(a.headers.get("x-version")?.to_str().ok()?.to_string());
        }
        (seen.len() == 2).then_some(())
    })
    .await;
    let mut versions: HashMap<String, usize> = HashMap::new();
    for _ in 0..5000 {
        let a = send(&c, addr, "GET", &host, "/", &[]).await.unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
        let v = a.headers.get("x-version").map_or("", |v| v.to_str().unwrap());
        *versions.entry(v.to_string()).or_insert(0) += 1;
    }
    let v2 = versions.get("v2").copied().unwrap_or(0);
    assert!(
        (395..=605).contains(&v2) && versions.get("v1").copied().unwrap_or(0) + v2 == 5000,
        "v1/v2 split of 5,000 requests: {versions:?}"
    );

    // aliyun.routing.session_sticky: a client keeps its replica.
    let sticky = format!("{stack}_sticky");
    let three = eventually(Duration::from_secs(60), "three sticky replicas", || async {
        let r = replicas(&sticky);
        (r.len() == 3).then_some(r)
    })
    .await;
    reaches(
        addr,
        &sticky_host,
        &three,
        "requests to reach the three sticky replicas",
    )
    .await;
    let first = send(&c, addr, "GET", &sticky_host, "/", &[]).await.unwrap();
    let cookie = first.headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    for _ in 0..20 {
        let a = send(&c, addr, "GET", &sticky_host, "/", &[("cookie", &cookie)])
            .await
            .unwrap();
        assert_eq!(a.backend(), first.backend(), "the sticky client moved");
    }

    // aliyun.probe.url: a replica whose probe fails (paused: the probe times out) is taken out,
    // and its sticky clients move.
    let victim = first.backend().to_string();
    docker(&["pause", &victim]);
    eventually(
        Duration::from_secs(30),
        "the paused replica to be taken out",
        || async {
            let r = admin_json(admin, "/api/v1/routes").await;
            let s = &r["services"][sticky_host.as_str()];
            let states: Vec<&str> = s["backends"]
                .as_array()?
                .iter()
                .filter_map(|b| b["state"].as_str())
                .collect();
            (s["health_check"]["path"] == "/health"
                && states.iter().filter(|&&x| x == "not_ready").count() == 1)
                .then_some(())
        },
    )
    .await;
    for _ in 0..20 {
        let a = send(&c, addr, "GET", &sticky_host, "/", &[("cookie", &cookie)])
            .await
            .unwrap();
        assert_eq!(a.status, 200);
        assert_ne!(a.backend(), victim, "a request reached the unhealthy replica");
    }
    docker(&["unpause", &victim]);

    // An Aliyun label Gantry cannot honour is reported once, with its service.
    let problems = eventually(
        Duration::from_secs(10),
        "the unsupported label reported",
        || async {
            let s = admin_json(admin, "/api/v1/status").await;
            let p: Vec<String> = s["sources"]["swarm"]["problems"]
                .as_array()?
                .iter()
                .map(|x| x.as_str().unwrap_or_default().to_string())
                .filter(|x| x.contains("aliyun.global"))
                .collect();
            (!p.is_empty()).then_some(p)
        },
    )
    .await;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains(&format!("swarm service {sticky}")),
        "{problems:?}"
    );
}

/// The replica count a Swarm service asks for.
fn replica_count(service: &str) -> usize {
    docker(&[
        "service",
        "inspect",
        "--format",
        "{{.Spec.Mode.Replicated.Replicas}}",
        service,
    ])
    .trim()
    .parse()
    .unwrap_or_else(|e| panic!("{service}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scaler_grows_a_swarm_service_under_load_and_shrinks_it_after() {
    use crate::scaling::recommendation;
    let _lock = lock().await;
    let mut swarm = Swarm::init();
    let host = format!("{}.test", unique("api"));
    // As examples/compose-scale: 100 ms per answer, 2 in flight per replica, 1 to 4 replicas.
    let stack = swarm.deploy(&format!(
        "  api:\n    image: {}\n    command: [\"--delay\", \"100ms\"]\n    networks: [net]\n    healthcheck:\n      test: [\"CMD\", \"/gantry\", \"probe\", \"http://127.0.0.1:80/health\"]\n      interval: 1s\n      timeout: 2s\n      retries: 3\n    deploy:\n      replicas: 1\n      labels:\n        gantry.routing.port_80: {host}\n        gantry.scale.min: \"1\"\n        gantry.scale.max: \"4\"\n        gantry.scale.target: \"2\"\n        gantry.scale.utilization: \"1\"\n        gantry.scale.window: 6s\n",
        test_image()
    ));
    let service = format!("{stack}_api");
    let (addr, admin) = swarm.gantry(&["--swarm-scale"]).await;
    eventually(
        Duration::from_secs(60),
        "the first replica to be ready",
        || async {
            recommendation(&admin_json(admin, "/api/v1/scaling").await, &host).filter(|r| r["ready"] == 1)
        },
    )
    .await;

    // About three replicas' worth: 6 clients at 100 ms per answer. POSTs are never replayed,
    // so a request cut by a task going away shows.
    let stop = Arc::new(AtomicBool::new(false));
    let heavy = clients(addr, "POST", host.clone(), 6, 600, stop.clone());
    eventually(Duration::from_secs(60), "three ready replicas", || async {
        recommendation(&admin_json(admin, "/api/v1/scaling").await, &host).filter(|r| r["ready"] == 3)
    })
    .await;
    let under_load = replica_count(&service);
    stop.store(true, Ordering::Relaxed);
    assert_none_failed(heavy.await.unwrap(), "while scaling up");
    assert!((3..=4).contains(&under_load), "{under_load} replicas under load");

    // One client keeps going while the scaler shrinks the service back to one replica.
    let stop = Arc::new(AtomicBool::new(false));
    let light = clients(addr, "POST", host.clone(), 1, 3000, stop.clone());
    eventually(Duration::from_secs(90), "one replica again", || async {
        (replica_count(&service) == 1 && replicas(&service).len() == 1).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    assert_none_failed(light.await.unwrap(), "while scaling down");
    let view = admin_json(admin, "/api/v1/scaling").await;
    let actions = view["scaler"]["actions"].as_array().unwrap();
    assert!(actions.iter().all(|a| a["result"] == "ok"), "{actions:?}");
    assert!(
        actions
            .iter()
            .any(|a| a["action"] == "up" && a["compose"] == service.as_str()),
        "{actions:?}"
    );
    assert!(actions.iter().any(|a| a["action"] == "down"), "{actions:?}");
}
