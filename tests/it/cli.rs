//! The command line: `gantry check`, a bad config at start, `gantry demo`, `gantry register`'s flags.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

fn gantry(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn check_names_the_file_the_field_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[routers.web]\nhosts = [\"example.com\"]\nservice = \"web\"\n[services.web]\nbackends = [{ url = \"http://10.0.0.1:80\", weight = 100000 }]\n",
    )
    .unwrap();
    let out = gantry(&["check", "--config", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}: services.web.backends[0].weight: 100000 is out of range 0..=10000",
            bad.display()
        )),
        "{err}"
    );

    let dangling = dir.path().join("dangling.toml");
    std::fs::write(&dangling, "[routers.web]\npath = \"/\"\nservice = \"missing\"\n").unwrap();
    let out = gantry(&["check", "--config", dangling.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("routers.web.service: unknown service \"missing\"")
    );

    let missing = gantry(&["check", "--config", "/nonexistent/gantry.toml"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read the config file"));

    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[routers.web]\npath = \"/\"\nservice = \"web\"\n[services.web]\nbackends = [{ url = \"http://10.0.0.1\" }]\n").unwrap();
    let out = gantry(&["check", "--config", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 entrypoints, 1 routers, 1 services)"));
}

#[test]
fn an_invalid_config_at_start_stops_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[services.web]\npolicy = \"random\"\n").unwrap();
    let out = gantry(&[
        "run",
        "--config",
        bad.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("services.web.policy: unknown policy \"random\""),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_routes_and_balances_with_nothing_installed() {
    let p = GantryProcess::spawn(&["demo"]);
    let c = client();
    let mut seen = std::collections::HashMap::new();
    for _ in 0..50 {
        let a = get(&c, p.addr, "127.0.0.1", "/").await;
        assert_eq!(a.status, 200);
        *seen.entry(a.backend().to_string()).or_insert(0) += 1;
    }
    assert_eq!(seen.get("web-1"), Some(&30), "3:1:1 weights: {seen:?}");
    assert_eq!(seen.get("web-2"), Some(&10), "{seen:?}");
    assert_eq!(get(&c, p.addr, "blog.localhost", "/").await.backend(), "blog-1");
    assert_eq!(get(&c, p.addr, "nowhere.invalid", "/").await.status, 404);
    let api = get(&c, p.addr, "x", "/api/users").await;
    assert!(api.body.contains("answered GET /users"), "{}", api.body);
    // /private: basic auth (demo:demo), security headers, then the rate limit (burst 5).
    assert_eq!(get(&c, p.addr, "127.0.0.1", "/private").await.status, 401);
    let demo = [("authorization", "Basic ZGVtbzpkZW1v")];
    let ok = send(&c, p.addr, "GET", "127.0.0.1", "/private", &demo)
        .await
        .unwrap();
    assert_eq!(
        (ok.status, &ok.headers["x-frame-options"]),
        (200, &"DENY".parse().unwrap())
    );
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(
            send(&c, p.addr, "GET", "127.0.0.1", "/private", &demo)
                .await
                .unwrap()
                .status,
        );
    }
    assert!(statuses.contains(&429), "no request was limited: {statuses:?}");
    // Once the bucket has refilled, the answer comes compressed.
    let squeezed = eventually(Duration::from_secs(5), "a request within the limit", || async {
        let a = send(
            &c,
            p.addr,
            "GET",
            "127.0.0.1",
            "/private",
            &[demo[0], ("accept-encoding", "gzip")],
        )
        .await
        .unwrap();
        (a.status == 200).then_some(a)
    })
    .await;
    assert_eq!(squeezed.headers["content-encoding"], "gzip");
    let ready = eventually(Duration::from_secs(5), "readyz", || async {
        let a = admin_get(p.admin, "/readyz").await;
        (a.status == 200).then_some(a)
    })
    .await;
    assert_eq!(ready.body, "ready\n");
}

#[test]
fn register_refuses_bad_flags_before_touching_etcd() {
    // Nothing listens on port 9: a flag check that needed etcd would hang or fail differently.
    let out = gantry(&[
        "register",
        "--etcd",
        "http://127.0.0.1:9",
        "--service",
        "blog",
        "--url",
        "ftp://x",
        "--route",
        "bad host!",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gantry register: --url"), "{err}");
    assert!(err.contains("gantry register: --route: \"bad host!\""), "{err}");
    let out = gantry(&[
        "register",
        "--etcd",
        "http://127.0.0.1:9",
        "--service",
        "b",
        "--url",
        "http://10.0.0.1:80",
        "--ttl",
        "soon",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ttl"));
}

#[test]
fn version_names_the_package_version_and_the_commit() {
    let out = gantry(&["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    assert_eq!(
        text.trim(),
        format!("gantry {} (commit {head})", env!("CARGO_PKG_VERSION"))
    );
}
