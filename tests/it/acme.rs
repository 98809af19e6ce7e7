//! Automatic HTTPS against a real ACME CA (pebble): certificates over HTTP-01 and TLS-ALPN-01 for
//! hosts of the file and of container labels, verified by a client that trusts only pebble's
//! root; stored and reloaded without new orders; renewed before expiry under load; refused
//! orders backing off while the default certificate serves.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use crate::acme_support::*;
use crate::docker_support::*;
use crate::etcd_support::free_port;
use crate::support::*;

/// Gantry's entrypoints `http` and `https` on fixed loopback ports (pebble validates there),
/// one resolver `pebble`, and `routers` after it.
fn config(http: u16, https: u16, pebble: &Pebble, storage: &str, resolver: &str, routers: &str) -> String {
    format!(
        r#"
[entrypoints.http]
address = "127.0.0.1:{http}"
[entrypoints.https]
address = "127.0.0.1:{https}"
tls = {{}}

[acme.pebble]
directory = "{}"
ca = "{}"
agree_tos = true
email = "ops@example.com"
storage = "{storage}"
retry_initial = "1s"
{resolver}
{routers}
"#,
        pebble.directory,
        pebble.https_ca.display(),
    )
}

fn service(backend: &Backend) -> String {
    format!("[services.app]\nbackends = [{{ url = \"{}\" }}]\n", backend.url())
}

fn router(name: &str, host: &str, tls: bool) -> String {
    let tls = if tls {
        "tls = { resolver = \"pebble\" }"
    } else {
        ""
    };
    format!("[routers.{name}]\nhosts = [\"{host}\"]\nservice = \"app\"\n{tls}\n")
}

/// Waits until `host` answers 200 over TLS verified with pebble's root; on timeout, says what
/// the admin API shows.
async fn wait_verified(
    tls: &Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    host: &str,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let last = https_get(tls, addr, host).await;
        if matches!(last, Ok((200, _))) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let certs = admin_get(admin, "/api/v1/certificates").await.body;
            let status = admin_get(admin, "/api/v1/status").await.body;
            panic!("no certificate for {host} that pebble's root verifies: {last:?}\n{certs}\n{status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The admin API's entry for an ACME host.
async fn entry(admin: std::net::SocketAddr, host: &str) -> serde_json::Value {
    let v = admin_json(admin, "/api/v1/certificates").await;
    v["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == host && c["source"] == "acme")
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// A TLS connection that accepts any certificate (what a client holds before Gantry has the
/// real one), ready to send requests.
async fn open_tls(
    addr: std::net::SocketAddr,
    host: &str,
) -> (hyper::client::conn::http1::SendRequest<Empty<Bytes>>, Vec<u8>) {
    let mut cfg =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::tls::AcceptAny))
            .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from(host.to_string()).unwrap(), tcp)
        .await
        .unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    (send, leaf)
}

async fn send_on(send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>, host: &str) -> u16 {
    let req = Request::get("/").header("host", host).body(Empty::new()).unwrap();
    let resp = send
        .send_request(req)
        .await
        .expect("the connection is still open");
    let status = resp.status().as_u16();
    resp.into_body().collect().await.unwrap();
    status
}

/// One host from the file, one from a full-form container label naming the resolver, one from
/// a compact `https://` label (the default resolver): each gets a certificate over HTTP-01 that a
/// client trusting only pebble's root verifies. Connections opened before the router asked for
/// a certificate (TLS with Gantry's default certificate, and plain HTTP) keep working after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_certificates_for_file_and_label_hosts() {
    let _docker = crate::docker::lock().await;
    let _pebble = PEBBLE_LOCK.lock().await;
    let mut cleanup = Cleanup::default();
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(http, https, &[], None).await;
    let backend = Backend::start("app", Behavior::Name).await;
    let u = unique("acme");
    let (file_host, label_host, compact_host) = (
        format!("file.{u}.test"),
        format!("label.{u}.test"),
        format!("compact.{u}.test"),
    );
    let rule = format!("Host(`{label_host}`)");
    let compact = format!("https://{compact_host}");
    let router_key = format!("gantry.http.routers.{u}.rule");
    let resolver_key = format!("gantry.http.routers.{u}.tls.resolver");
    let service_key = format!("gantry.http.services.{u}.port");
    crate::docker::run_backend(
        &mut cleanup,
        &[
            (router_key.as_str(), rule.as_str()),
            (resolver_key.as_str(), "pebble"),
            (service_key.as_str(), "80"),
            ("gantry.routing.port_80", compact.as_str()),
        ],
        &[],
    );
    let storage = tempfile::tempdir().unwrap();
    let storage = storage.path().display().to_string();
    let without_tls = config(
        http,
        https,
        &pebble,
        &storage,
        "",
        &format!("{}{}", router("file", &file_host, false), service(&backend)),
    );
    let g = crate::docker::gantry_on_docker(&without_tls, None).await;
    let (tls_addr, http_addr) = (g.addr_of("https"), g.addr_of("http"));
    let admin = g.running.admin_addr;
    let client_tls = pebble.client();
    wait_verified(&client_tls, tls_addr, g.running.admin_addr, &label_host).await;
    wait_verified(&client_tls, tls_addr, g.running.admin_addr, &compact_host).await;

    // Before the file's router asks for a certificate: a TLS connection served with the
    // default certificate, and a plain keep-alive one.
    let (mut early_tls, early_leaf) = open_tls(tls_addr, &file_host).await;
    assert_eq!(send_on(&mut early_tls, &file_host).await, 200);
    assert!(
        https_get(&client_tls, tls_addr, &file_host).await.is_err(),
        "no certificate pebble's root verifies yet"
    );
    let c = client();
    assert_eq!(get(&c, http_addr, &file_host, "/").await.status, 200);

    g.reconfigure(&config(
        http,
        https,
        &pebble,
        &storage,
        "",
        &format!("{}{}", router("file", &file_host, true), service(&backend)),
    ))
    .await;
    wait_verified(&client_tls, tls_addr, g.running.admin_addr, &file_host).await;
    let (_, leaf) = https_get(&client_tls, tls_addr, &file_host).await.unwrap();
    assert_ne!(
        leaf.to_vec(),
        early_leaf,
        "the issued certificate replaced the default"
    );
    assert_eq!(
        send_on(&mut early_tls, &file_host).await,
        200,
        "the early TLS connection"
    );
    assert_eq!(
        get(&c, http_addr, &file_host, "/").await.status,
        200,
        "the plain one"
    );

    for host in [&file_host, &label_host, &compact_host] {
        let e = entry(admin, host).await;
        assert_eq!(e["state"], "valid", "{e}");
        assert_eq!(e["resolver"], "pebble", "{e}");
        assert!(e["issuer"].as_str().unwrap().contains("Pebble"), "{e}");
        assert!(
            e["not_after"].as_u64().unwrap() > e["renew_at"].as_u64().unwrap(),
            "{e}"
        );
    }
    assert_eq!(pebble.orders(), 3, "one order per host");
    assert!(
        pebble.log().contains("validate w/ HTTP"),
        "validated over HTTP-01"
    );
    let metrics = admin_get(admin, "/metrics").await.body;
    assert!(
        metrics.contains(&format!(
            "gantry_tls_certificate_expiry_seconds{{name=\"{label_host}\",source=\"acme\"}}"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("gantry_acme_orders_total{outcome=\"issued\",resolver=\"pebble\"} 3"));
    g.running.shutdown().await;
}

/// With HTTP-01 disabled, certificates come over TLS-ALPN-01. Stored, they serve again after a
/// restart, and pebble sees no new order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_certificates_and_a_restart_orders_nothing() {
    let _pebble = PEBBLE_LOCK.lock().await;
    // Pebble's HTTP-01 port is one nothing listens on: only TLS-ALPN-01 can pass.
    let (http, https, unused) = (free_port(), free_port(), free_port());
    let pebble = Pebble::start(unused, https, &[], None).await;
    let backend = Backend::start("app", Behavior::Name).await;
    let hosts = ["a.alpn.test", "b.alpn.test"];
    let storage = tempfile::tempdir().unwrap();
    let text = config(
        http,
        https,
        &pebble,
        &storage.path().display().to_string(),
        "challenges = [\"tls-alpn-01\"]",
        &format!(
            "{}{}{}",
            router("a", hosts[0], true),
            router("b", hosts[1], true),
            service(&backend)
        ),
    );
    let client_tls = pebble.client();
    let g = Gantry::start(&text).await;
    for h in hosts {
        wait_verified(&client_tls, g.addr_of("https"), g.running.admin_addr, h).await;
    }
    assert_eq!(pebble.orders(), 2);
    let files: BTreeSet<String> = std::fs::read_dir(storage.path().join("pebble/certs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        files,
        BTreeSet::from(
            [
                "a.alpn.test.key",
                "a.alpn.test.pem",
                "b.alpn.test.key",
                "b.alpn.test.pem"
            ]
            .map(String::from)
        )
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(storage.path().join("pebble/certs/a.alpn.test.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    g.running.shutdown().await;

    let g = Gantry::start(&text).await;
    for h in hosts {
        let (status, _) = https_get(&client_tls, g.addr_of("https"), h)
            .await
            .unwrap_or_else(|e| panic!("{h} right after the restart: {e}"));
        assert_eq!(status, 200);
        assert_eq!(entry(g.running.admin_addr, h).await["state"], "valid");
    }
    assert_eq!(pebble.orders(), 2, "the restart ordered nothing");
    g.running.shutdown().await;
}

/// Pebble's certificates here live 24 s: Gantry renews at two thirds of that, and clients that
/// open a new verified connection for every request never see a failure or an expired one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_replaces_the_certificate_before_expiry_under_load() {
    let _pebble = PEBBLE_LOCK.lock().await;
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(http, https, &[], Some(Duration::from_secs(24))).await;
    let backend = Backend::start("app", Behavior::Name).await;
    let host = "renew.test";
    let storage = tempfile::tempdir().unwrap();
    let g = Gantry::start(&config(
        http,
        https,
        &pebble,
        &storage.path().display().to_string(),
        "",
        &format!("{}{}", router("r", host, true), service(&backend)),
    ))
    .await;
    let client_tls = pebble.client();
    let addr = g.addr_of("https");
    wait_verified(&client_tls, addr, g.running.admin_addr, host).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..2 {
        let (stop, tls) = (stop.clone(), client_tls.clone());
        workers.push(tokio::spawn(async move {
            let (mut leaves, mut failures, mut ok) = (Vec::<Vec<u8>>::new(), Vec::new(), 0);
            // Bounded: 60 s or 20,000 requests.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) || tokio::time::Instant::now() > deadline {
                    break;
                }
                match https_get(&tls, addr, host).await {
                    Ok((200, leaf)) => {
                        ok += 1;
                        if leaves.last() != Some(&leaf.to_vec()) {
                            leaves.push(leaf.to_vec());
                        }
                    }
                    Ok((s, _)) => failures.push(format!("status {s}")),
                    Err(e) => failures.push(e),
                }
            }
            (ok, leaves, failures)
        }));
    }
    let first = entry(g.running.admin_addr, host).await;
    let renewed = eventually(
        Duration::from_secs(40),
        "the certificate to be renewed",
        || async {
            let e = entry(g.running.admin_addr, host).await;
            (e["not_after"] != first["not_after"] && e["state"] == "valid").then_some(e)
        },
    )
    .await;
    // Long enough for clients to meet the new certificate.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut leaves, mut failures) = (0, BTreeSet::new(), Vec::new());
    for w in workers {
        let (o, l, f) = w.await.unwrap();
        ok += o;
        leaves.extend(l);
        failures.extend(f);
    }
    assert!(
        failures.is_empty(),
        "{} failures: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        leaves.len() >= 2,
        "clients saw the renewed certificate ({ok} requests)"
    );
    let renewed_at = renewed["not_after"].as_u64().unwrap() - 24;
    assert!(
        renewed_at < first["not_after"].as_u64().unwrap(),
        "renewed before the first certificate expired: {first} then {renewed}"
    );
    assert_eq!(pebble.orders(), 2);
    g.running.shutdown().await;
}

/// Every validation fails (pebble checks HTTP-01 on a port nothing listens on): the failures
/// and the next attempt show in the admin API, the waits double (orders stay few), and the host
/// is served with Gantry's default certificate meanwhile. Hosts Gantry must not order (a
/// wildcard, an IP address, a name outside `allowed_domains`) are reported, never ordered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_orders_back_off_and_the_default_certificate_serves() {
    let _pebble = PEBBLE_LOCK.lock().await;
    let (http, https, unused) = (free_port(), free_port(), free_port());
    let pebble = Pebble::start(unused, https, &[], None).await;
    let backend = Backend::start("app", Behavior::Name).await;
    let host = "refused.test";
    let storage = tempfile::tempdir().unwrap();
    let g = Gantry::start(&config(
        http,
        https,
        &pebble,
        &storage.path().display().to_string(),
        "retry_max = \"4s\"\nchallenges = [\"http-01\"]\nallowed_domains = [\"test\"]",
        &format!(
            "{}{}{}{}{}",
            router("r", host, true),
            router("wild", "*.wild.test", true),
            router("ip", "127.0.0.2", true),
            router("outside", "shop.example.org", true),
            service(&backend)
        ),
    ))
    .await;
    let admin = g.running.admin_addr;
    for (name, reason) in [
        ("*.wild.test", "dns-01"),
        ("127.0.0.2", "IP address"),
        ("shop.example.org", "not under allowed_domains"),
    ] {
        let e = eventually(Duration::from_secs(10), "the host to be refused", || async {
            let e = entry(admin, name).await;
            (e["state"] == "refused").then_some(e)
        })
        .await;
        assert!(e["last_error"].as_str().unwrap().contains(reason), "{e}");
    }
    let e = eventually(Duration::from_secs(30), "three failed orders", || async {
        let e = entry(admin, host).await;
        (e["failures"].as_u64()? >= 3).then_some(e)
    })
    .await;
    assert_eq!(e["state"], "failed", "{e}");
    assert!(
        e["last_error"].as_str().unwrap().contains("connection refused"),
        "{e}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(e["next_attempt"].as_u64().unwrap() + 1 >= now, "{e}");

    // The waits are 1, 2, 4, 4... s (less up to a tenth): over 10 s, at most 4 more orders.
    let before = pebble.orders();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = pebble.orders() - before;
    assert!((1..=4).contains(&during), "{during} orders in 10 s");

    let (mut conn, leaf) = open_tls(g.addr_of("https"), host).await;
    assert!(
        leaf.windows(b"gantry-default-certificate.invalid".len())
            .any(|w| w == b"gantry-default-certificate.invalid"),
        "Gantry's default certificate serves meanwhile"
    );
    assert_eq!(send_on(&mut conn, host).await, 200);
    let metrics = admin_get(admin, "/metrics").await.body;
    assert!(metrics.contains("gantry_acme_orders_total{outcome=\"failed\",resolver=\"pebble\"}"));
    let log = pebble.log();
    assert!(
        !log.contains("wild.test") && !log.contains("example.org") && !log.contains("127.0.0.2"),
        "refused hosts never reach the CA"
    );
    g.running.shutdown().await;
}

/// A fleet config: entrypoints on fixed ports, the resolver with no storage (etcd keeps it).
fn fleet_config(http: u16, https: u16, pebble: &Pebble, hosts: &[String], backend: &Backend) -> String {
    let routers: String = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| router(&format!("r{i}"), h, true))
        .collect();
    config(
        http,
        https,
        pebble,
        "",
        "",
        &format!("{routers}{}", service(backend)),
    )
    .replace("storage = \"\"\n", "")
}

fn etcd_opts(etcd: &crate::etcd_support::Etcd, prefix: &str) -> gantry::Options {
    gantry::Options {
        etcd: Some(gantry::fleet::EtcdOptions {
            endpoints: etcd.endpoints().into(),
            prefix: prefix.into(),
            instance_id: None,
        }),
        ..Default::default()
    }
}

/// Two instances sharing etcd, pebble validating on A's ports only. Three hosts only B routes:
/// B orders them and A answers the CA with the answers B put in etcd. Then both route three
/// more at once: each host is ordered by one instance (pebble sees six orders in all), and both
/// serve all six certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_sharing_etcd_orders_each_host_once_and_every_instance_serves_it() {
    let _etcd = crate::etcd_support::ETCD_LOCK.lock().await;
    let _pebble = PEBBLE_LOCK.lock().await;
    let etcd = crate::etcd_support::Etcd::start().await;
    let (http_a, https_a, http_b, https_b) = (free_port(), free_port(), free_port(), free_port());
    let pebble = Pebble::start(http_a, https_a, &[], None).await;
    let backend = Backend::start("app", Behavior::Name).await;
    let hosts: Vec<String> = (1..=6).map(|i| format!("h{i}.fleet.test")).collect();
    let a = Gantry::start_with(
        &fleet_config(http_a, https_a, &pebble, &[], &backend),
        etcd_opts(&etcd, "/fleet/"),
    )
    .await;
    let b = Gantry::start_with(
        &fleet_config(http_b, https_b, &pebble, &hosts[..3], &backend),
        etcd_opts(&etcd, "/fleet/"),
    )
    .await;
    let tls = pebble.client();
    for h in &hosts[..3] {
        wait_verified(&tls, b.addr_of("https"), b.running.admin_addr, h).await;
        // A routes none of them, yet serves their certificates (it answers 404).
        let (status, _) = https_get(&tls, a.addr_of("https"), h).await.unwrap();
        assert_eq!(status, 404);
    }
    assert_eq!(pebble.orders(), 3);

    let both = fleet_config(http_a, https_a, &pebble, &hosts, &backend);
    a.write_config(&both);
    b.write_config(&fleet_config(http_b, https_b, &pebble, &hosts, &backend));
    for h in &hosts {
        wait_verified(&tls, a.addr_of("https"), a.running.admin_addr, h).await;
        wait_verified(&tls, b.addr_of("https"), b.running.admin_addr, h).await;
    }
    assert_eq!(pebble.orders(), 6, "one order per host across the fleet");
    let mut c = etcd.client().await;
    let stored = c
        .get(
            "/fleet/acme/pebble/certs/",
            Some(etcd_client::GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    assert_eq!(stored.kvs().len(), 6, "the certificates are kept in etcd");
    a.running.shutdown().await;
    b.running.shutdown().await;
}

/// Holds every connection until it is given a target, then relays it there. Counts the
/// connections it accepted.
async fn relay(
    port: u16,
) -> (
    tokio::sync::watch::Sender<Option<std::net::SocketAddr>>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let (tx, rx) = tokio::sync::watch::channel(None::<std::net::SocketAddr>);
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            let mut rx = rx.clone();
            tokio::spawn(async move {
                let target = loop {
                    if let Some(t) = *rx.borrow_and_update() {
                        break t;
                    }
                    if rx.changed().await.is_err() {
                        return;
                    }
                };
                if let Ok(mut out) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    (tx, accepted)
}

/// Instance A (a real process) takes a host's order lock, orders, and is killed while the CA's
/// validation of its answer is held up. The lock goes with A's lease; instance B then orders the host and
/// serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_instance_holding_an_order_dies_another_finishes_it() {
    let _etcd = crate::etcd_support::ETCD_LOCK.lock().await;
    let _pebble = PEBBLE_LOCK.lock().await;
    let etcd = crate::etcd_support::Etcd::start().await;
    let (validation, http_a, https_a, http_b, https_b, unused) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let pebble = Pebble::start(validation, unused, &[], None).await;
    let (held, validations) = relay(validation).await;
    let backend = Backend::start("app", Behavior::Name).await;
    let host = "takeover.fleet.test".to_string();
    let dir = tempfile::tempdir().unwrap();
    let file_a = dir.path().join("a.toml");
    std::fs::write(
        &file_a,
        fleet_config(http_a, https_a, &pebble, std::slice::from_ref(&host), &backend).replace(
            "retry_initial = \"1s\"",
            "retry_initial = \"1s\"\nchallenges = [\"http-01\"]",
        ),
    )
    .unwrap();
    let endpoint = etcd.endpoints().join(",");
    let mut a = GantryProcess::spawn(&[
        "run",
        "--config",
        file_a.to_str().unwrap(),
        "--etcd",
        &endpoint,
        "--etcd-prefix",
        "/takeover/",
    ]);
    eventually(
        Duration::from_secs(30),
        "pebble to validate A's answer",
        || async { (validations.load(Ordering::Relaxed) > 0).then_some(()) },
    )
    .await;
    assert_eq!(entry(a.admin, &host).await["state"], "ordering");
    let mut c = etcd.client().await;
    let lock = c
        .get("/takeover/acme/pebble/orders/takeover.fleet.test", None)
        .await
        .unwrap();
    assert!(!lock.kvs().is_empty(), "A holds the lock");
    a.signal(rustix::process::Signal::KILL);
    let _ = a.child.wait();

    let b = Gantry::start_with(
        &fleet_config(http_b, https_b, &pebble, std::slice::from_ref(&host), &backend),
        etcd_opts(&etcd, "/takeover/"),
    )
    .await;
    held.send(Some(format!("127.0.0.1:{http_b}").parse().unwrap()))
        .unwrap();
    wait_verified(&pebble.client(), b.addr_of("https"), b.running.admin_addr, &host).await;
    assert_eq!(pebble.orders(), 2, "A's order, abandoned, and B's");
    // B releases the lock once it has stored the certificate, which may come just after the
    // certificate is served.
    eventually(Duration::from_secs(10), "B to release the lock", || {
        let mut c = c.clone();
        async move {
            let lock = c
                .get("/takeover/acme/pebble/orders/takeover.fleet.test", None)
                .await
                .ok()?;
            lock.kvs().is_empty().then_some(())
        }
    })
    .await;
    b.running.shutdown().await;
}
