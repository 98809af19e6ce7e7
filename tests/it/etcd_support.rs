//! A real etcd for the tests: Debian's `etcd` binary on free loopback ports with a temporary data
//! dir, one member or a cluster, stopped and killed by PID.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

/// etcd tests share two cores with everything else: one etcd (or cluster) at a time keeps
/// elections and deadlines honest.
pub static ETCD_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Member {
    pub name: String,
    pub client_url: String,
    child: Option<Child>,
}

pub struct Etcd {
    pub members: Vec<Member>,
    dir: tempfile::TempDir,
    /// Members serve TLS and require client certificates.
    tls: Option<EtcdTls>,
    /// Authentication is on: root's password, used by [`Etcd::ctl`] and [`Etcd::client`].
    root_password: Option<String>,
    /// Where the TLS files of a secure etcd are (see `etcd_secure`).
    pub tls_dir: Option<tempfile::TempDir>,
}

/// The user a fleet connects as to [`Etcd::start_secure`], allowed under `/gantry/` only.
pub const FLEET_USER: &str = "gantry";
pub const FLEET_PASSWORD: &str = "fleet-s3cret";

/// TLS for a test etcd: a CA, the members' certificate and key, and a client certificate and
/// key, as PEM files.
#[derive(Clone)]
pub struct EtcdTls {
    pub ca: std::path::PathBuf,
    pub server_cert: std::path::PathBuf,
    pub server_key: std::path::PathBuf,
    pub client_cert: std::path::PathBuf,
    pub client_key: std::path::PathBuf,
}

impl EtcdTls {
    /// The CA, client certificate and client key files after the flags a client names them
    /// with (in that order).
    pub fn flags(&self, names: [&str; 3]) -> Vec<String> {
        let files = [&self.ca, &self.client_cert, &self.client_key];
        names
            .iter()
            .zip(files)
            .flat_map(|(flag, p)| [flag.to_string(), p.display().to_string()])
            .collect()
    }

    /// What a client of these members needs.
    pub fn options(&self) -> etcd_client::ConnectOptions {
        let read = |p: &std::path::Path| std::fs::read(p).unwrap();
        etcd_client::ConnectOptions::new().with_tls(
            etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read(&self.ca)))
                .identity(etcd_client::Identity::from_pem(
                    read(&self.client_cert),
                    read(&self.client_key),
                )),
        )
    }
}

impl Etcd {
    /// One member.
    pub async fn start() -> Self {
        Self::cluster(1).await
    }

    /// `n` members on loopback, all healthy.
    pub async fn cluster(n: usize) -> Self {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        Self::start_on(&ports).await
    }

    /// The flags that connect Gantry (`run`, `register`) to these members: the endpoints and,
    /// with TLS and authentication, the CA, the client certificate and key, and the user (the
    /// password comes from [`Etcd::gantry_env`]).
    pub fn gantry_flags(&self) -> Vec<String> {
        let mut v = vec!["--etcd".to_string(), self.endpoints().join(",")];
        if let Some(t) = &self.tls {
            v.extend(t.flags(["--etcd-ca", "--etcd-cert", "--etcd-key"]));
        }
        if self.root_password.is_some() {
            v.push("--etcd-user".into());
            v.push(FLEET_USER.into());
        }
        v
    }

    /// The environment Gantry needs besides [`Etcd::gantry_flags`]: the password.
    pub fn gantry_env(&self) -> Vec<(&'static str, &'static str)> {
        match self.root_password {
            Some(_) => vec![("GANTRY_ETCD_PASSWORD", FLEET_PASSWORD)],
            None => Vec::new(),
        }
    }

    /// One member serving TLS on its client port and requiring client certificates signed by
    /// `tls`'s CA.
    pub async fn start_tls(tls: EtcdTls) -> Self {
        Self::start_with(&[(free_port(), free_port())], Some(tls)).await
    }

    /// Members on these (client, peer) ports.
    pub async fn start_on(ports: &[(u16, u16)]) -> Self {
        Self::start_with(ports, None).await
    }

    async fn start_with(ports: &[(u16, u16)], tls: Option<EtcdTls>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = format!("m{i}");
            let scheme = if tls.is_some() { "https" } else { "http" };
            let client_url = format!("{scheme}://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap();
            let mut cmd = Command::new("etcd");
            if let Some(t) = &tls {
                cmd.arg("--cert-file")
                    .arg(&t.server_cert)
                    .arg("--key-file")
                    .arg(&t.server_key)
                    .arg("--trusted-ca-file")
                    .arg(&t.ca)
                    .arg("--client-cert-auth");
            }
            let child = cmd
                .args(["--name", &name])
                .arg("--data-dir")
                .arg(dir.path().join(&name))
                .args([
                    "--listen-client-urls",
                    &client_url,
                    "--advertise-client-urls",
                    &client_url,
                ])
                .args([
                    "--listen-peer-urls",
                    &peer_url,
                    "--initial-advertise-peer-urls",
                    &peer_url,
                ])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-token", "gantry-test"])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("etcd must be installed (Debian's etcd-server)");
            members.push(Member {
                name,
                client_url,
                child: Some(child),
            });
        }
        let etcd = Etcd {
            members,
            dir,
            tls,
            root_password: None,
            tls_dir: None,
        };
        for m in &etcd.members {
            etcd.wait_healthy(&m.client_url).await;
        }
        etcd
    }

    async fn wait_healthy(&self, url: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let options = self.tls.as_ref().map(EtcdTls::options);
            if let Ok(mut c) = etcd_client::Client::connect([url], options).await
                && c.get("health-probe", None).await.is_ok()
            {
                return;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .members
                    .iter()
                    .map(|m| {
                        std::fs::read_to_string(self.dir.path().join(format!("{}.log", m.name)))
                            .unwrap_or_default()
                    })
                    .collect();
                panic!(
                    "etcd at {url} did not become healthy; logs:\n{}",
                    logs.join("\n---\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Turns authentication on: a root user, and `user` with `password` allowed to read and
    /// write everything under `prefix` (what a Gantry fleet needs).
    pub fn enable_auth(&mut self, user: &str, password: &str, prefix: &str) {
        let root = "root-password";
        let (root_user, gantry_user) = (format!("root:{root}"), format!("{user}:{password}"));
        for args in [
            vec!["user", "add", root_user.as_str()],
            vec!["user", "grant-role", "root", "root"],
            vec!["user", "add", gantry_user.as_str()],
            vec!["role", "add", user],
            vec![
                "role",
                "grant-permission",
                user,
                "--prefix=true",
                "readwrite",
                prefix,
            ],
            vec!["user", "grant-role", user, user],
            vec!["auth", "enable"],
        ] {
            self.ctl(&args);
        }
        self.root_password = Some(root.into());
    }

    /// etcdctl against the first member, with its TLS files and as root once authentication is
    /// on.
    pub fn ctl(&self, args: &[&str]) -> String {
        let mut all: Vec<String> = Vec::new();
        if let Some(t) = &self.tls {
            all.extend(t.flags(["--cacert", "--cert", "--key"]));
        }
        if let Some(pw) = &self.root_password {
            all.push("--user".into());
            all.push(format!("root:{pw}"));
        }
        all.extend(args.iter().map(|a| a.to_string()));
        Self::etcdctl(
            &self.members[0].client_url,
            &all.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// A client of every member that is still running (with TLS and as root when they need it).
    pub async fn client(&self) -> etcd_client::Client {
        let live: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| m.client_url.clone())
            .collect();
        let mut options = self.tls.as_ref().map(EtcdTls::options);
        if let Some(pw) = &self.root_password {
            options = Some(options.unwrap_or_default().with_user("root", pw.as_str()));
        }
        etcd_client::Client::connect(live, options).await.unwrap()
    }

    /// A client of one member.
    pub async fn client_of(&self, i: usize) -> etcd_client::Client {
        etcd_client::Client::connect([self.members[i].client_url.clone()], None)
            .await
            .unwrap()
    }

    /// Runs `etcdctl ARGS` against `endpoint` and returns its output; panics if it fails.
    pub fn etcdctl(endpoint: &str, args: &[&str]) -> String {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", endpoint, "--command-timeout", "10s"])
            .args(args)
            .output()
            .expect("etcdctl must be installed (Debian's etcd-client)");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Moves the cluster's leadership away from member `i`, so that stopping `i` costs no
    /// election (writes right after it do not wait for one).
    pub async fn ensure_not_leader(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut c = self.client_of(i).await;
            let status = c.status().await.unwrap();
            let (me, leader) = (status.header().unwrap().member_id(), status.leader());
            if me != leader {
                return;
            }
            let other = self
                .client_of((i + 1) % self.members.len())
                .await
                .status()
                .await
                .unwrap();
            let target = other.header().unwrap().member_id();
            if let Err(e) = c.move_leader(target).await {
                assert!(Instant::now() < deadline, "cannot move the leadership: {e}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn index_of(&self, url: &str) -> usize {
        self.members
            .iter()
            .position(|m| m.client_url == url)
            .unwrap_or_else(|| panic!("no member at {url}"))
    }

    pub fn signal(&self, i: usize, sig: Signal) {
        let child = self.members[i].child.as_ref().unwrap();
        kill_process(Pid::from_raw(child.id() as i32).unwrap(), sig).unwrap();
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// Puts a key and returns the revision it was written at. Retries for a while when the cluster
/// has no leader (a test may have just stopped it).
pub async fn put(c: &mut etcd_client::Client, key: &str, value: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match c.put(key, value, None).await {
            Ok(r) => return r.header().unwrap().revision(),
            Err(e) if Instant::now() < deadline => {
                eprintln!("put {key}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("put {key}: {e}"),
        }
    }
}

/// Deletes a key and returns the revision of the deletion, retrying like [`put`].
pub async fn delete(c: &mut etcd_client::Client, key: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match c.delete(key, None).await {
            Ok(r) => return r.header().unwrap().revision(),
            Err(e) if Instant::now() < deadline => {
                eprintln!("delete {key}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("delete {key}: {e}"),
        }
    }
}
