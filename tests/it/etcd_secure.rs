//! etcd as production runs it: TLS with client certificates required (a CA made with rcgen) and
//! authentication on (a user allowed only under the fleet's prefix). Every etcd use of Gantry
//! works over it (discovery, instance records, `gantry register`, a rollout's driver and its
//! writes, the fleet view); credentials etcd refuses are a clear start-up error, and the password
//! never appears in the process list.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::etcd_support::{ETCD_LOCK, Etcd, EtcdTls, FLEET_PASSWORD, FLEET_USER};
use crate::support::{Backend, Behavior, GantryProcess, admin_json, client, eventually, get};

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

const PASSWORD: &str = FLEET_PASSWORD;

/// A CA made with rcgen, the member's certificate (for 127.0.0.1 and localhost) and a client
/// certificate, written under `dir`.
pub fn tls_files(dir: &std::path::Path) -> EtcdTls {
    let ca = crate::support::TestCa::new();
    let server = ca.leaf(&["127.0.0.1", "localhost"]);
    let client = ca.leaf(&["gantry-client"]);
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    EtcdTls {
        ca: write("ca.pem", &ca.cert_pem),
        server_cert: write("server.pem", &server.cert_pem),
        server_key: write("server-key.pem", &server.key_pem),
        client_cert: write("client.pem", &client.cert_pem),
        client_key: write("client-key.pem", &client.key_pem),
    }
}

impl Etcd {
    /// One member as production runs it: TLS with client certificates required (a CA made with
    /// rcgen) and authentication on, [`FLEET_USER`] allowed to read and write under `/gantry/`.
    /// Gantry connects with [`Etcd::gantry_flags`] and [`Etcd::gantry_env`]; the test's own
    /// client ([`Etcd::client`]) as root, as an operator would.
    pub async fn start_secure() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut etcd = Self::start_tls(tls_files(dir.path())).await;
        etcd.enable_auth(FLEET_USER, FLEET_PASSWORD, "/gantry/");
        etcd.tls_dir = Some(dir);
        etcd
    }

    /// `gantry run` with these members and `args`, as instance `id`.
    pub fn spawn_gantry(&self, id: &str, args: &[&str]) -> crate::support::GantryProcess {
        let mut all = vec!["run".to_string()];
        all.extend(self.gantry_flags());
        all.extend(["--instance-id".to_string(), id.to_string()]);
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        crate::support::GantryProcess::spawn_with_env(&all, &self.gantry_env())
    }
}

struct Secure {
    etcd: Etcd,
    dir: tempfile::TempDir,
}

impl Secure {
    async fn start() -> Self {
        Secure {
            etcd: Etcd::start_secure().await,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn url(&self) -> String {
        self.etcd.endpoints()[0].clone()
    }

    /// The flags every Gantry command needs here (the password comes separately).
    fn flags(&self) -> Vec<String> {
        self.etcd.gantry_flags()
    }

    /// A file holding `password`, for `--etcd-password-file`.
    fn password_file(&self, password: &str) -> String {
        let p = self.dir.path().join("etcd-password");
        std::fs::write(&p, format!("{password}\n")).unwrap();
        p.display().to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_works_over_etcd_with_tls_and_authentication() {
    let _one = ETCD_LOCK.lock().await;
    let s = Secure::start().await;
    let (v1, v2) = (
        Backend::start("v1", Behavior::Name).await,
        Backend::start("v2", Behavior::Name).await,
    );
    s.etcd.ctl(&[
        "put",
        "/gantry/backends/web/a",
        &format!(r#"{{"url": "{}", "version": "v1"}}"#, v1.url()),
    ]);
    s.etcd.ctl(&[
        "put",
        "/gantry/backends/web/b",
        &format!(r#"{{"url": "{}", "version": "v2"}}"#, v2.url()),
    ]);
    s.etcd.ctl(&[
        "put",
        "/gantry/routers/web",
        r#"{"hosts": ["web.test"], "service": "web"}"#,
    ]);
    s.etcd
        .ctl(&["put", "/gantry/weights/web", r#"{"v1": 100, "v2": 0}"#]);

    // One instance reads the password from the environment, the other from a file.
    let mut a_args = vec!["run".to_string()];
    a_args.extend(s.flags());
    a_args.extend(["--instance-id".into(), "a".into()]);
    let mut b_args = a_args.clone();
    *b_args.last_mut().unwrap() = "b".into();
    b_args.extend(["--etcd-password-file".into(), s.password_file(PASSWORD)]);
    let a = GantryProcess::spawn_with_env(&refs(&a_args), &[("GANTRY_ETCD_PASSWORD", PASSWORD)]);
    let b = GantryProcess::spawn(&refs(&b_args));

    // Discovery: both serve the route from etcd.
    let c = client();
    for p in [&a, &b] {
        let addr = p.addr;
        let c = c.clone();
        eventually(Duration::from_secs(20), "the route from etcd to serve", || {
            let c = c.clone();
            async move { (get(&c, addr, "web.test", "/").await.body == "v1").then_some(()) }
        })
        .await;
    }
    // Instance records (leased writes), read back through the fleet view.
    let fleet = eventually(
        Duration::from_secs(20),
        "both instances in the fleet view",
        || async {
            let v = admin_json(a.admin, "/api/v1/fleet").await;
            (v["instances"].as_array()?.len() == 2).then_some(v)
        },
    )
    .await;
    assert!(fleet.get("error").is_none(), "{fleet:#}");
    let ids = s
        .etcd
        .ctl(&["get", "--prefix", "/gantry/instances/", "--keys-only"]);
    assert!(
        ids.contains("/gantry/instances/a") && ids.contains("/gantry/instances/b"),
        "{ids}"
    );

    // gantry register: a backend kept under a lease over the same connection settings.
    let v3 = Backend::start("v3", Behavior::Name).await;
    let mut reg_args = vec!["register".to_string()];
    reg_args.extend(s.flags());
    reg_args.extend(
        [
            "--service",
            "extra",
            "--url",
            &v3.url(),
            "--route",
            "http://extra.test/",
            "--ttl",
            "5",
        ]
        .map(String::from),
    );
    let mut keeper = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(&reg_args)
        .env("GANTRY_ETCD_PASSWORD", PASSWORD)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "the registered backend to serve",
        || async { (get(&c, a.addr, "extra.test", "/").await.body == "v3").then_some(()) },
    )
    .await;
    keeper.kill().unwrap();
    keeper.wait().unwrap();

    // A rollout: one instance drives it (a lease-bound driver key, guarded transactions) and
    // promotes v2 on the fleet's traffic.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, addr) = (stop.clone(), a.addr);
        tokio::spawn(async move {
            let c = client();
            let mut failed = 0;
            for _ in 0..6000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                failed += u32::from(get(&c, addr, "web.test", "/").await.status != 200);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            failed
        })
    };
    s.etcd.ctl(&[
        "put",
        "/gantry/rollouts/web/spec",
        r#"{"stable": "v1", "canary": "v2", "steps": [50, 100], "step_time": "1s", "min_requests": 5}"#,
    ]);
    let state = eventually(Duration::from_secs(40), "the rollout to be promoted", || async {
        let out = s
            .etcd
            .ctl(&["get", "/gantry/rollouts/web/state", "--print-value-only"]);
        let v: Value = serde_json::from_str(out.trim()).ok()?;
        (v["phase"] == "promoted").then_some(v)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    assert_eq!(
        load.await.unwrap(),
        0,
        "requests failed during the rollout: {state}"
    );
    let driver = s
        .etcd
        .ctl(&["get", "/gantry/rollouts/web/driver", "--print-value-only"]);
    assert!(["a", "b"].contains(&driver.trim()), "{driver}");
    eventually(
        Duration::from_secs(10),
        "b to serve the promoted weights",
        || async { (get(&c, b.addr, "web.test", "/").await.body == "v2").then_some(()) },
    )
    .await;

    // The password is nowhere in the process list.
    for p in [&a, &b] {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", p.pid())).unwrap();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(PASSWORD),
            "the password shows in the process list"
        );
    }
}

/// Runs `gantry ARGS` expecting it to stop by itself within 30 s; returns its exit status and
/// standard error.
fn run_to_exit(args: &[String], env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return (status, err);
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("gantry {args:?} did not stop by itself");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_or_settings_etcd_cannot_take_are_clear_start_up_errors() {
    let _one = ETCD_LOCK.lock().await;
    let s = Secure::start().await;
    let mut args = vec!["run".to_string()];
    args.extend(s.flags());

    let (status, err) = run_to_exit(&args, &[("GANTRY_ETCD_PASSWORD", "not-the-password")]);
    assert!(!status.success());
    assert!(
        err.contains("etcd refused the credentials of user \"gantry\""),
        "{err}"
    );
    assert!(
        !err.contains("not-the-password"),
        "the password is printed: {err}"
    );

    // A user and no password anywhere.
    let (status, err) = run_to_exit(&args, &[]);
    assert!(!status.success());
    assert!(err.contains("GANTRY_ETCD_PASSWORD"), "{err}");

    // A certificate without its key.
    let no_key: Vec<String> = {
        let i = args.iter().position(|a| a == "--etcd-key").unwrap();
        let mut v = args.clone();
        v.drain(i..i + 2);
        v
    };
    let (status, err) = run_to_exit(&no_key, &[("GANTRY_ETCD_PASSWORD", PASSWORD)]);
    assert!(!status.success());
    assert!(err.contains("required") && err.contains("--etcd-key"), "{err}");

    // Without a client certificate the members refuse the connection: Gantry starts (etcd may
    // come back), serves nothing from etcd, and says why.
    let mut no_cert = no_key.clone();
    let i = no_cert.iter().position(|a| a == "--etcd-cert").unwrap();
    no_cert.drain(i..i + 2);
    let p = GantryProcess::spawn_with_env(&refs(&no_cert), &[("GANTRY_ETCD_PASSWORD", PASSWORD)]);
    let why = eventually(
        Duration::from_secs(20),
        "etcd to be reported unreachable",
        || async {
            let v = admin_json(p.admin, "/api/v1/status").await;
            let e = &v["sources"]["etcd"];
            (e["reachable"] == false)
                .then(|| e["unreachable_because"].as_str().unwrap_or_default().to_string())
        },
    )
    .await;
    assert!(why.contains(&s.url()), "{why}");
    // (The cause reads "received fatal alert: BadCertificate" or, when TLS 1.3 lets the client
    // finish first, "connection closed": which one is a race inside the handshake.)
    drop(p);

    // TLS settings with a plain-text member URL.
    let mut plain = args.clone();
    plain[2] = plain[2].replace("https://", "http://");
    let (status, err) = run_to_exit(&plain, &[("GANTRY_ETCD_PASSWORD", PASSWORD)]);
    assert!(!status.success());
    assert!(err.contains("https://"), "{err}");
}
