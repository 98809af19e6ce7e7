//! Hot reload: under load, with invalid files, with no-op edits, and by SIGHUP.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::support::*;

fn weights(a: &Backend, b: &Backend, wa: u32, wb: u32, extra_router: usize) -> String {
    format!(
        "{}\n[routers.extra{extra_router}]\npath = \"/never/{extra_router}\"\nservice = \"svc\"\n",
        one_service(&[(a, wa), (b, wb)], "")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_reloads_under_load_fail_no_request() {
    let a = Backend::start("a", Behavior::Name).await;
    let b = Backend::start("b", Behavior::Name).await;
    let g = Gantry::start(&weights(&a, &b, 1, 1, 0)).await;
    let first_generation = g.running.generation();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), g.addr());
        load.push(tokio::spawn(async move {
            let c = client();
            // Bounded: at most 200k requests per worker even if the reloads stall.
            for _ in 0..200_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match send(&c, addr, "GET", "h", "/", &[]).await {
                    Ok(a) if a.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(a) => failed.lock().unwrap().push(format!("{} {}", a.status, a.body)),
                    Err(e) => failed.lock().unwrap().push(e),
                }
            }
        }));
    }
    for i in 1..=200 {
        let (wa, wb) = if i % 2 == 0 { (1, 2) } else { (2, 1) };
        g.reconfigure(&weights(&a, &b, wa, wb, i)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let failed = failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} failed requests, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    assert!(
        ok.load(Ordering::Relaxed) > 200,
        "the load did not run alongside the reloads"
    );
    assert_eq!(g.running.generation(), first_generation + 200);
    let m = admin_get(g.running.admin_addr, "/metrics").await.body;
    assert!(
        m.contains(&format!("gantry_config_generation {}", first_generation + 200)),
        "{m}"
    );
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_is_refused_reported_and_the_old_routes_keep_serving() {
    let a = Backend::start("a", Behavior::Name).await;
    let good = one_service(&[(&a, 1)], "");
    let g = Gantry::start(&good).await;
    let generation = g.running.generation();
    let admin = g.running.admin_addr;
    let c = client();

    g.write_config(&good.replace("weight = 1", "weight = -4"));
    let status = eventually(
        Duration::from_secs(10),
        "the reload failure to be reported",
        || async {
            let s = admin_json(admin, "/api/v1/status").await;
            (s["reload_failures"] == 1).then_some(s)
        },
    )
    .await;
    let message = status["last_error"]["message"].as_str().unwrap();
    assert!(
        message.contains("gantry.toml: services.svc.backends[0].weight: -4 is out of range"),
        "{message}"
    );
    assert_eq!(status["sources"]["file"]["ok"], false);
    let m = admin_get(admin, "/metrics").await.body;
    assert!(m.contains("gantry_config_reload_failures_total 1"), "{m}");

    // The last good table keeps serving.
    let r = get(&c, g.addr(), "h", "/").await;
    assert_eq!((r.status, r.backend()), (200, "a"));
    assert_eq!(g.running.generation(), generation);

    // A syntax error too, then a dangling reference.
    g.write_config("[routers.x\n");
    eventually(Duration::from_secs(10), "the second failure", || async {
        (admin_json(admin, "/api/v1/status").await["reload_failures"] == 2).then_some(())
    })
    .await;
    g.write_config(&good.replace("service = \"svc\"", "service = \"nope\""));
    let status = eventually(Duration::from_secs(10), "the third failure", || async {
        let s = admin_json(admin, "/api/v1/status").await;
        (s["reload_failures"] == 3).then_some(s)
    })
    .await;
    assert!(
        status["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("routers.all.service: unknown service \"nope\"")
    );
    assert_eq!(get(&c, g.addr(), "h", "/").await.backend(), "a");
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_that_does_not_change_the_meaning_makes_no_new_snapshot() {
    let a = Backend::start("a", Behavior::Name).await;
    let good = one_service(&[(&a, 1)], "");
    let g = Gantry::start(&good).await;
    let generation = g.running.generation();
    let admin = g.running.admin_addr;
    let updates = |s: &serde_json::Value| s["sources"]["file"]["updates"].as_u64().unwrap();
    let before = updates(&admin_json(admin, "/api/v1/status").await);
    g.write_config(&format!("# a comment, and the same routes\n\n{good}"));
    eventually(Duration::from_secs(10), "the edit to be read", || async {
        (updates(&admin_json(admin, "/api/v1/status").await) > before).then_some(())
    })
    .await;
    assert_eq!(g.running.generation(), generation);
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file() {
    let a = Backend::start("a", Behavior::Name).await;
    let b = Backend::start("b", Behavior::Name).await;
    // The file is reached through a symlink in a directory Gantry watches, while edits happen in
    // another directory: only SIGHUP can tell Gantry about them.
    let watched = tempfile::tempdir().unwrap();
    let real = tempfile::tempdir().unwrap();
    let target = real.path().join("real.toml");
    std::fs::write(&target, one_service(&[(&a, 1)], "")).unwrap();
    let link = watched.path().join("gantry.toml");
    std::os::unix::fs::symlink(&target, &link).unwrap();

    let p = GantryProcess::spawn(&["run", "--config", link.to_str().unwrap()]);
    let c = client();
    assert_eq!(get(&c, p.addr, "h", "/").await.backend(), "a");
    std::fs::write(&target, one_service(&[(&b, 1)], "")).unwrap();
    p.signal(rustix::process::Signal::HUP);
    eventually(
        Duration::from_secs(10),
        "SIGHUP to switch the backend",
        || async { (get(&c, p.addr, "h", "/").await.backend() == "b").then_some(()) },
    )
    .await;
    let s = admin_json(p.admin, "/api/v1/status").await;
    assert_eq!(s["generation"], 2);
}

/// A SIGHUP while Gantry starts (here: the moment its admin listener is up, before the proxy
/// listeners) is a reload, never the default action (which ends the process): the handlers are
/// installed before anything listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_right_after_start_reloads_and_does_not_kill() {
    let a = Backend::start("a", Behavior::Name).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gantry.toml");
    std::fs::write(&config, one_service(&[(&a, 1)], "")).unwrap();
    let mut p = GantryProcess::spawn_signalled(
        &["run", "--config", config.to_str().unwrap()],
        "admin listening",
        rustix::process::Signal::HUP,
    );
    let c = client();
    assert_eq!(get(&c, p.addr, "h", "/").await.backend(), "a");
    assert!(p.child.try_wait().unwrap().is_none(), "gantry exited on SIGHUP");
}
