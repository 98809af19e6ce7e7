//! How Gantry reaches etcd: the members' URLs, and what every connection to them uses: TLS (the
//! CA that signed the members' certificates, a client certificate, the name to verify) and a
//! user's credentials. One [`Endpoints`] is made at start-up and handed to every etcd user
//! (discovery, instance records, registration, rollouts, scaling, ACME storage).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

/// The members, tried in turn, and how to talk to them. Reads as the list of member URLs.
#[derive(Clone, Default)]
pub struct Endpoints {
    urls: Vec<String>,
    security: Arc<Security>,
}

/// TLS and credentials for every connection. The password is never printed.
#[derive(Clone, Default)]
pub struct Security {
    tls: Option<TlsOptions>,
    /// For logs and `Debug`: the files the TLS settings came from.
    tls_from: String,
    user: Option<(String, String)>,
}

/// Where the TLS and credential settings come from (`gantry run --etcd-*`).
#[derive(Debug, Clone, Default)]
pub struct SecurityFiles<'a> {
    /// PEM: the CA (or CAs) the members' certificates must chain to.
    pub ca: Option<&'a Path>,
    /// PEM: this client's certificate and key, for members that require client certificates.
    pub cert: Option<&'a Path>,
    pub key: Option<&'a Path>,
    /// The name the members' certificates must carry (default: the host of each URL).
    pub server_name: Option<&'a str>,
    pub user: Option<&'a str>,
    /// The user's password, read from a file or the environment by the caller: never a flag.
    pub password: Option<String>,
}

impl Security {
    /// Reads and checks the files. Any TLS setting turns TLS on; a user needs a password and a
    /// password a user; a certificate needs its key.
    pub fn load(f: SecurityFiles<'_>) -> Result<Self, String> {
        let read =
            |what: &str, p: &Path| std::fs::read(p).map_err(|e| format!("{what} {}: {e}", p.display()));
        let mut tls = None;
        let mut from = Vec::new();
        if f.ca.is_some() || f.cert.is_some() || f.key.is_some() || f.server_name.is_some() {
            let mut t = TlsOptions::new();
            if let Some(ca) = f.ca {
                let pem = read("--etcd-ca", ca)?;
                if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                    return Err(format!(
                        "--etcd-ca {}: no PEM certificate in the file",
                        ca.display()
                    ));
                }
                t = t.ca_certificate(Certificate::from_pem(pem));
                from.push(format!("CA {}", ca.display()));
            } else {
                t = t.with_native_roots();
                from.push("the system's CAs".into());
            }
            match (f.cert, f.key) {
                (Some(cert), Some(key)) => {
                    let (c, k) = (read("--etcd-cert", cert)?, read("--etcd-key", key)?);
                    if !String::from_utf8_lossy(&k).contains("PRIVATE KEY-----") {
                        return Err(format!(
                            "--etcd-key {}: no PEM private key in the file",
                            key.display()
                        ));
                    }
                    t = t.identity(Identity::from_pem(c, k));
                    from.push(format!("client certificate {}", cert.display()));
                }
                (None, None) => {}
                (Some(_), None) => {
                    return Err("--etcd-cert needs --etcd-key (the certificate's key)".into());
                }
                (None, Some(_)) => {
                    return Err("--etcd-key needs --etcd-cert (the key's certificate)".into());
                }
            }
            if let Some(name) = f.server_name {
                t = t.domain_name(name);
                from.push(format!("server name {name}"));
            }
            tls = Some(t);
        }
        let user = match (f.user, f.password) {
            (Some(u), Some(p)) if !u.is_empty() => Some((u.to_string(), p)),
            (Some(_), Some(_)) => return Err("--etcd-user is empty".into()),
            (Some(u), None) => {
                return Err(format!(
                    "--etcd-user {u} needs a password: set GANTRY_ETCD_PASSWORD or --etcd-password-file"
                ));
            }
            (None, Some(_)) => {
                return Err("an etcd password was given without --etcd-user".into());
            }
            (None, None) => None,
        };
        Ok(Security {
            tls,
            tls_from: from.join(", "),
            user,
        })
    }

    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn user(&self) -> Option<&str> {
        self.user.as_ref().map(|(u, _)| u.as_str())
    }
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("tls", &self.tls.as_ref().map(|_| &self.tls_from))
            .field("user", &self.user())
            .finish()
    }
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints")
            .field("urls", &self.urls)
            .field("security", &self.security)
            .finish()
    }
}

impl std::ops::Deref for Endpoints {
    type Target = [String];
    fn deref(&self) -> &[String] {
        &self.urls
    }
}

impl From<Vec<String>> for Endpoints {
    /// Members reached without TLS or credentials.
    fn from(urls: Vec<String>) -> Self {
        Endpoints {
            urls,
            security: Arc::default(),
        }
    }
}

impl Endpoints {
    /// With TLS on, a URL written without a scheme or with `http://` is an error: etcd-client
    /// would silently talk plain text to an `http://` member.
    pub fn new(urls: Vec<String>, mut security: Security) -> Result<Self, String> {
        if !security.tls() && urls.iter().any(|u| u.starts_with("https://")) {
            // https:// members and no CA given: the system's CAs.
            security.tls = Some(TlsOptions::new().with_native_roots());
            security.tls_from = "the system's CAs".into();
        }
        if security.tls()
            && let Some(u) = urls.iter().find(|u| !u.starts_with("https://"))
        {
            return Err(format!(
                "etcd member {u}: TLS settings are given, so members are https:// URLs"
            ));
        }
        Ok(Endpoints {
            urls,
            security: Arc::new(security),
        })
    }

    pub fn security(&self) -> &Security {
        &self.security
    }

    pub fn connect_options(&self) -> ConnectOptions {
        let mut o = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2));
        if let Some(t) = &self.security.tls {
            o = o.with_tls(t.clone());
        }
        if let Some((u, p)) = &self.security.user {
            // etcd's tokens expire (5 minutes by default): get a new one instead of failing.
            o = o.with_user(u.clone(), p.clone()).with_auto_token_refresh(true);
        }
        o
    }

    /// A client of one member.
    pub async fn connect(&self, url: &str) -> Result<Client, String> {
        Client::connect([url], Some(self.connect_options()))
            .await
            .map_err(|e| describe(&e, self.security.user()))
    }

    /// A client of the first member that answers.
    pub async fn connect_any(&self) -> Result<Client, String> {
        let mut last = String::from("no etcd endpoint");
        for e in &self.urls {
            match self.connect(e).await {
                Ok(c) => return Ok(c),
                Err(err) => last = format!("{e}: {err}"),
            }
        }
        Err(last)
    }

    /// At start-up: credentials etcd refuses are an error worth stopping for (nothing will work
    /// until they are fixed); members that cannot be reached are not (the sources retry, the
    /// last good table serves).
    pub async fn check_credentials(&self) -> Result<(), String> {
        if self.security.user.is_none() {
            return Ok(());
        }
        for e in &self.urls {
            match tokio::time::timeout(Duration::from_secs(5), self.connect(e)).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(err)) if refused_credentials(&err) => return Err(format!("{e}: {err}")),
                Ok(Err(_)) | Err(_) => {}
            }
        }
        Ok(())
    }
}

/// Whether an error is etcd refusing the user or its password.
pub fn refused_credentials(err: &str) -> bool {
    err.contains("authentication failed")
}

fn describe(e: &etcd_client::Error, user: Option<&str>) -> String {
    let s = e.to_string();
    match user {
        Some(u) if refused_credentials(&s) => {
            format!(
                "etcd refused the credentials of user {u:?} (authentication failed: wrong user or password)"
            )
        }
        _ => match e {
            // tonic's "transport error" alone says nothing: name the cause.
            etcd_client::Error::TransportError(t) => {
                let mut msg = t.to_string();
                let mut src = std::error::Error::source(t);
                while let Some(cause) = src {
                    msg.push_str(": ");
                    msg.push_str(&cause.to_string());
                    src = cause.source();
                }
                msg
            }
            _ => s,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_cannot_work_are_refused_with_the_flag_named() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let missing = dir.path().join("nope.pem");
        let err = |f: SecurityFiles<'_>| Security::load(f).unwrap_err();
        assert!(
            err(SecurityFiles {
                cert: Some(&cert),
                ..Default::default()
            })
            .contains("--etcd-cert needs --etcd-key")
        );
        assert!(
            err(SecurityFiles {
                ca: Some(&missing),
                ..Default::default()
            })
            .starts_with("--etcd-ca ")
        );
        assert!(
            err(SecurityFiles {
                ca: Some(&cert),
                cert: Some(&cert),
                key: Some(&cert),
                ..Default::default()
            })
            .contains("no PEM private key")
        );
        assert!(
            err(SecurityFiles {
                user: Some("gantry"),
                ..Default::default()
            })
            .contains("GANTRY_ETCD_PASSWORD")
        );
        assert!(
            err(SecurityFiles {
                password: Some("x".into()),
                ..Default::default()
            })
            .contains("without --etcd-user")
        );
        let tls = Security::load(SecurityFiles {
            ca: Some(&cert),
            user: Some("gantry"),
            password: Some("s3cret".into()),
            ..Default::default()
        })
        .unwrap();
        // The password never shows.
        assert!(!format!("{tls:?}").contains("s3cret"), "{tls:?}");
        let plain = vec!["http://127.0.0.1:2379".to_string()];
        assert!(
            Endpoints::new(plain.clone(), tls)
                .unwrap_err()
                .contains("https://")
        );
        assert!(Endpoints::new(plain, Security::default()).is_ok());
    }
}
