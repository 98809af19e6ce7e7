//! The container image and Gantry inside compose, against the real engine: the image is built
//! with `docker/build-image.sh` (no registry) from the `demo` profile's binary (the same code as
//! the release build without whole-program LTO: minutes less of CI), the compose example in
//! `examples/compose-gantry` comes up with Gantry as a container that reads the socket as an
//! unprivileged user and routes by container IP, and it follows `--scale` without failing a
//! request.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::docker::{load, lock, spread};
use crate::docker_support::*;
use crate::support::*;

/// Builds the `demo` profile's binary (a no-op when `.ci/run` built it already) and the image
/// from it.
/// Returns the image's size in bytes as the script reports it.
pub(crate) fn build_image(image: &str) -> u64 {
    let root = env!("CARGO_MANIFEST_DIR");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo)
        .args(["build", "--profile", "demo", "--locked", "--bin", "gantry"])
        .current_dir(root));
    let out = run(Command::new("bash")
        .arg(format!("{root}/docker/build-image.sh"))
        .arg(image)
        .arg(format!("{root}/target/demo/gantry")));
    // "gantry-it:123: 14 MB (14123456 bytes)"
    out.rsplit_once('(')
        .and_then(|(_, b)| b.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no size in {out:?}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_runs_gantry_inside_compose_routing_replicas_and_a_canary_by_container_ip() {
    let _lock = lock().await;
    let image = format!("{}:it", unique("gantry-image"));
    // Dropped last, after the compose project (whose containers use the image) is down.
    let _image = RemoveImage(image.clone());
    let mut cleanup = Cleanup::default();
    let size = build_image(&image);
    assert!(size < 30_000_000, "the image is {size} bytes");
    let user = docker(&["image", "inspect", "--format", "{{.Config.User}}", &image]);
    assert_eq!(user, "65532:65532", "the image runs as an unprivileged user");
    let health = docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Healthcheck.Test}}",
        &image,
    ]);
    assert!(health.contains("/gantry") && health.contains("probe"), "{health}");

    let gid = run(Command::new("stat").args(["-c", "%g", "/var/run/docker.sock"]));
    let port = free_port();
    let publish = format!("127.0.0.1:{port}");
    let whoami = format!("{}.test", unique("whoami"));
    let web = format!("{}.test", unique("web"));
    let compose = Compose::new(
        "examples/compose-gantry/docker-compose.yml",
        &[
            ("GANTRY_IMAGE", &image),
            ("APP_IMAGE", &image),
            ("DOCKER_GID", &gid),
            ("GANTRY_PUBLISH", &publish),
            ("WHOAMI_HOST", &whoami),
            ("WEB_HOST", &web),
        ],
        &mut cleanup,
    );
    compose.run(&["up", "-d"]);
    let addr: std::net::SocketAddr = publish.parse().unwrap();
    let three = compose.ids("whoami");
    assert_eq!(three.len(), 3);
    eventually(
        Duration::from_secs(30),
        "requests with the example's host to reach all three replicas",
        || async {
            let (hits, _) = spread(addr, &whoami, 30).await;
            (hits.keys().cloned().collect::<BTreeSet<_>>() == three).then_some(())
        },
    )
    .await;

    // The admin API is not published: only the proxy's port is.
    let ports = compose.run(&["port", "gantry", "8081"]);
    assert!(
        ports.trim().is_empty() || ports.contains(":0"),
        "admin published: {ports}"
    );

    // The canary in labels: v1 90%, v2 10% of the web host's requests.
    let c = client();
    eventually(Duration::from_secs(30), "both web versions routed", || async {
        let a = send(&c, addr, "GET", &web, "/", &[]).await.ok()?;
        (a.status == 200).then_some(())
    })
    .await;
    let mut versions: HashMap<String, usize> = HashMap::new();
    for _ in 0..400 {
        let a = send(&c, addr, "GET", &web, "/", &[]).await.unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
        let v = a.headers.get("x-version").map_or("", |v| v.to_str().unwrap());
        *versions.entry(v.to_string()).or_insert(0) += 1;
    }
    let v2 = versions.get("v2").copied().unwrap_or(0);
    assert!(
        (16..=72).contains(&v2) && versions.get("v1").copied().unwrap_or(0) + v2 == 400,
        "v1/v2 split of 400 requests: {versions:?}"
    );

    // Scaling from 3 to 5 under load: the new replicas are routed once healthy, no request fails.
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(addr, whoami.clone(), 4, stop.clone());
    compose.run(&["up", "-d", "--scale", "whoami=5"]);
    let five = compose.ids("whoami");
    assert_eq!(five.len(), 5);
    let reached = eventually(
        Duration::from_secs(30),
        "requests to reach all five replicas",
        || async {
            let (hits, _) = spread(addr, &whoami, 50).await;
            (hits.keys().cloned().collect::<BTreeSet<_>>() == five).then_some(hits)
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = running.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed while scaling 3 -> 5: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(ok > 0 && reached.len() == 5);

    // Down leaves nothing of the project behind.
    compose.run(&["down", "-t", "2", "--remove-orphans"]);
    let label = format!("label=com.docker.compose.project={}", compose.project);
    assert_eq!(docker(&["ps", "-aq", "--filter", &label]), "", "containers left");
    assert_eq!(
        docker(&["network", "ls", "-q", "--filter", &label]),
        "",
        "networks left"
    );
}

/// Removes the test's image when dropped (after the compose project's cleanup ran).
struct RemoveImage(String);

impl Drop for RemoveImage {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}
