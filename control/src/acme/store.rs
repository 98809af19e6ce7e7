//! Where a resolver keeps its account and certificates: a directory (per resolver), each file
//! written whole (a temporary file renamed over the old one) and readable by its owner only; or
//! etcd, shared by the fleet (see `fleet`).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub enum Storage {
    /// `<storage>/<resolver>/`: `account.json`, and `certs/<name>.pem` with `certs/<name>.key`.
    Dir(PathBuf),
    /// `<prefix>acme/<resolver>/account` and `.../certs/<name>` (JSON: chain and key).
    Etcd(super::fleet::Fleet, String),
}

/// A certificate as stored in etcd.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct EtcdCert {
    pub chain: String,
    pub key: String,
}

impl std::fmt::Debug for EtcdCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCert").finish_non_exhaustive()
    }
}

/// A stored certificate: the chain and the key, PEM.
#[derive(Debug)]
pub struct Stored {
    pub name: String,
    pub chain: Vec<u8>,
    pub key: Vec<u8>,
}

impl Storage {
    pub fn dir(root: &Path, resolver: &str) -> Self {
        Storage::Dir(root.join(resolver))
    }

    pub fn describe(&self) -> String {
        match self {
            Storage::Dir(d) => d.display().to_string(),
            Storage::Etcd(f, r) => format!("etcd {}", f.keys.acme_certs(r)),
        }
    }

    pub fn fleet(&self) -> Option<&super::fleet::Fleet> {
        match self {
            Storage::Dir(_) => None,
            Storage::Etcd(f, _) => Some(f),
        }
    }

    pub async fn account(&self) -> std::io::Result<Option<Vec<u8>>> {
        match self {
            Storage::Dir(d) => read_opt(d.join("account.json")).await,
            Storage::Etcd(f, r) => f
                .get(&f.keys.acme_account(r))
                .await
                .map_err(std::io::Error::other),
        }
    }

    pub async fn save_account(&self, json: Vec<u8>) -> std::io::Result<()> {
        match self {
            Storage::Dir(d) => write_private(d.clone(), "account.json".into(), json).await,
            Storage::Etcd(f, r) => f
                .put(&f.keys.acme_account(r), json)
                .await
                .map_err(std::io::Error::other),
        }
    }

    pub async fn certificates(&self) -> std::io::Result<Vec<Stored>> {
        match self {
            Storage::Dir(d) => {
                let dir = d.join("certs");
                tokio::task::spawn_blocking(move || {
                    let mut out = Vec::new();
                    let entries = match std::fs::read_dir(&dir) {
                        Ok(e) => e,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                        Err(e) => return Err(e),
                    };
                    for entry in entries {
                        let path = entry?.path();
                        let Some(name) = path
                            .file_name()
                            .and_then(|n| n.to_str())
                            .and_then(|n| n.strip_suffix(".pem"))
                        else {
                            continue;
                        };
                        let key = match std::fs::read(dir.join(format!("{name}.key"))) {
                            Ok(k) => k,
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                            Err(e) => return Err(e),
                        };
                        out.push(Stored {
                            name: name.to_string(),
                            chain: std::fs::read(&path)?,
                            key,
                        });
                    }
                    Ok(out)
                })
                .await
                .map_err(std::io::Error::other)?
            }
            Storage::Etcd(f, r) => {
                let prefix = f.keys.acme_certs(r);
                let kvs = f.get_prefix(&prefix).await.map_err(std::io::Error::other)?;
                Ok(kvs
                    .into_iter()
                    .filter_map(|(k, v)| {
                        let c: EtcdCert = serde_json::from_slice(&v).ok()?;
                        Some(Stored {
                            name: k.strip_prefix(&prefix)?.to_string(),
                            chain: c.chain.into_bytes(),
                            key: c.key.into_bytes(),
                        })
                    })
                    .collect())
            }
        }
    }

    pub async fn save_certificate(&self, name: &str, chain: Vec<u8>, key: Vec<u8>) -> std::io::Result<()> {
        match self {
            Storage::Dir(d) => {
                let dir = d.join("certs");
                // The key first: a chain on disk always has its key.
                write_private(dir.clone(), format!("{name}.key"), key).await?;
                write_private(dir, format!("{name}.pem"), chain).await
            }
            Storage::Etcd(f, r) => {
                let value = serde_json::to_vec(&EtcdCert {
                    chain: String::from_utf8_lossy(&chain).into_owned(),
                    key: String::from_utf8_lossy(&key).into_owned(),
                })?;
                f.put(&f.keys.acme_cert(r, name), value)
                    .await
                    .map_err(std::io::Error::other)
            }
        }
    }
}

async fn read_opt(path: PathBuf) -> std::io::Result<Option<Vec<u8>>> {
    match tokio::fs::read(&path).await {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `dir/name` atomically with mode 0600 (the directory 0700 when created).
async fn write_private(dir: PathBuf, name: String, bytes: Vec<u8>) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(&name))?;
        std::fs::File::open(&dir)?.sync_all()
    })
    .await
    .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn files_are_written_whole_and_private_and_read_back() {
        let root = std::env::temp_dir().join(format!("gantry-acme-store-{}", fastrand::u64(..)));
        let s = Storage::dir(&root, "le");
        assert!(s.account().await.unwrap().is_none());
        assert!(s.certificates().await.unwrap().is_empty());
        s.save_account(b"{}".to_vec()).await.unwrap();
        s.save_certificate("a.test", b"chain".to_vec(), b"key".to_vec())
            .await
            .unwrap();
        s.save_certificate("a.test", b"chain2".to_vec(), b"key2".to_vec())
            .await
            .unwrap();
        assert_eq!(s.account().await.unwrap().as_deref(), Some(&b"{}"[..]));
        let certs = s.certificates().await.unwrap();
        assert_eq!(certs.len(), 1);
        assert_eq!(
            (certs[0].name.as_str(), &certs[0].chain[..], &certs[0].key[..]),
            ("a.test", &b"chain2"[..], &b"key2"[..])
        );
        for f in ["account.json", "certs/a.test.key", "certs/a.test.pem"] {
            let mode = std::fs::metadata(root.join("le").join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let names: Vec<_> = std::fs::read_dir(root.join("le/certs"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temporary files left: {names:?}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
