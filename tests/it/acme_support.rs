//! A real ACME CA for the tests: Debian's `pebble`, with `pebble-challtestsrv` answering every
//! DNS query with 127.0.0.1, all on free loopback ports, stopped by PID. Pebble validates
//! HTTP-01 and TLS-ALPN-01 on the ports it is given: Gantry's entrypoints.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustix::process::{Pid, Signal, kill_process};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use crate::etcd_support::free_port;
use crate::support::*;

/// Pebble runs at most one at a time: each test's CA is its own, and orders are counted per CA.
pub static PEBBLE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct Pebble {
    children: Vec<Child>,
    pub dir: tempfile::TempDir,
    /// The directory URL.
    pub directory: String,
    /// The CA file that makes pebble's own HTTPS trusted (for Gantry's `ca`).
    pub https_ca: PathBuf,
    /// The root that pebble issues under (PEM).
    pub root_pem: String,
}

impl Pebble {
    /// Pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port`, with `env` and,
    /// when set, certificates valid for `validity`.
    pub async fn start(
        http_port: u16,
        tls_port: u16,
        env: &[(&str, &str)],
        validity: Option<Duration>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let leaf = ca.leaf(&["localhost", "127.0.0.1"]);
        let https_ca = dir.path().join("pebble-https-ca.pem");
        std::fs::write(&https_ca, &ca.cert_pem).unwrap();
        std::fs::write(dir.path().join("cert.pem"), &leaf.cert_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), &leaf.key_pem).unwrap();
        let (acme, management, dns, chall_mgmt) = (free_port(), free_port(), free_port(), free_port());
        let mut cfg = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.path().join("cert.pem"),
            "privateKey": dir.path().join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        if let Some(v) = validity {
            cfg["pebble"]["certificateValidityPeriod"] = v.as_secs().into();
        }
        let cfg_path = dir.path().join("pebble.json");
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
        let chall = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{chall_mgmt}")])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(log("challtestsrv.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv must be installed (Debian's pebble)");
        let mut cmd = Command::new("pebble");
        cmd.arg("-config")
            .arg(&cfg_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            // Nonces are refused at random by default (5%), which a client retries; tests count
            // orders, so keep the protocol exchange deterministic.
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            // Always a fresh authorization: each order is validated.
            .env("PEBBLE_AUTHZREUSE", "0");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let pebble = cmd
            .stdout(log("pebble.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble must be installed (Debian's pebble)");
        let mut p = Pebble {
            children: vec![chall, pebble],
            directory: format!("https://127.0.0.1:{acme}/dir"),
            https_ca,
            root_pem: String::new(),
            dir,
        };
        let roots = format!("https://127.0.0.1:{management}/roots/0");
        p.root_pem = eventually(Duration::from_secs(20), "pebble to serve its root", || async {
            let out = Command::new("curl")
                .args(["-sf", "--cacert"])
                .arg(&p.https_ca)
                .arg(&roots)
                .output()
                .ok()?;
            let text = String::from_utf8(out.stdout).ok()?;
            text.contains("BEGIN CERTIFICATE").then_some(text)
        })
        .await;
        p
    }

    /// Orders pebble has been asked for (its new-order endpoint).
    pub fn orders(&self) -> usize {
        self.log().matches("Added order").count()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// A client config that trusts pebble's root and nothing else.
    pub fn client(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.root_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut cfg =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        // Every connection a full handshake: a resumed session reports the certificate of the
        // session it resumed, not the one Gantry serves now.
        cfg.resumption = rustls::client::Resumption::disabled();
        Arc::new(cfg)
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            if let Some(pid) = Pid::from_raw(c.id() as i32) {
                let _ = kill_process(pid, Signal::KILL);
            }
            let _ = c.wait();
        }
    }
}

/// A GET over a new TLS connection for `host`, verified with `tls` (pebble's root): the status
/// and the served leaf certificate.
pub async fn https_get(
    tls: &Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
    host: &str,
) -> Result<(u16, CertificateDer<'static>), String> {
    let connector = tokio_rustls::TlsConnector::from(tls.clone());
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let stream = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| format!("handshake: {e}"))?;
    let leaf = stream.get_ref().1.peer_certificates().ok_or("no certificate")?[0].clone();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .map_err(|_| "request timed out".to_string())?
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await.map_err(|e| e.to_string())?;
    Ok((status, leaf))
}
