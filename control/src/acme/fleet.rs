//! ACME across a fleet sharing etcd: one instance at a time orders a host, under a lock (a key
//! bound to the order's lease, so a dead orderer's lock expires with it); the challenge answers
//! go under the same lease, for whichever instance the CA reaches; certificates, the account and
//! failures are stored for every instance. Keys: `gantry_discovery::etcd::keys`.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use gantry_discovery::etcd::Endpoints;
use gantry_discovery::etcd::Keys;
use tokio_util::sync::CancellationToken;

/// How long a dead orderer holds a host's lock.
pub const LOCK_TTL: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct Fleet {
    pub endpoints: Endpoints,
    pub keys: Keys,
    pub instance: String,
}

/// A host's order lock, held while its lease is kept alive.
pub struct Lock {
    client: Client,
    lease: i64,
    keep: CancellationToken,
}

impl Fleet {
    pub async fn client(&self) -> Result<Client, String> {
        self.endpoints.connect_any().await
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let mut c = self.client().await?;
        let r = c.get(key, None).await.map_err(|e| e.to_string())?;
        Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
    }

    pub async fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
        let mut c = self.client().await?;
        let r = c
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| e.to_string())?;
        Ok(r.kvs()
            .iter()
            .filter_map(|kv| Some((kv.key_str().ok()?.to_string(), kv.value().to_vec())))
            .collect())
    }

    pub async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), String> {
        let mut c = self.client().await?;
        c.put(key, value, None).await.map_err(|e| e.to_string())?;
        Ok(())
    }

    pub async fn delete(&self, key: &str) -> Result<(), String> {
        let mut c = self.client().await?;
        c.delete(key, None).await.map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Takes `key` for this instance, or `None` when another instance holds it.
    pub async fn lock(&self, key: &str) -> Result<Option<Lock>, String> {
        let mut client = self.client().await?;
        let lease = client
            .lease_grant(LOCK_TTL.as_secs() as i64, None)
            .await
            .map_err(|e| e.to_string())?
            .id();
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                self.instance.as_str(),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let taken = client.txn(txn).await.map_err(|e| e.to_string())?.succeeded();
        if !taken {
            let _ = client.lease_revoke(lease).await;
            return Ok(None);
        }
        let keep = CancellationToken::new();
        let (mut keeper, mut answers) = client.lease_keep_alive(lease).await.map_err(|e| e.to_string())?;
        let stop = keep.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LOCK_TTL / 3);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {
                        if keeper.keep_alive().await.is_err() || answers.message().await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Some(Lock { client, lease, keep }))
    }
}

impl std::fmt::Debug for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lock")
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl Lock {
    /// Puts a key that goes with the lock (a challenge answer). Returns the revision it made.
    pub async fn put(&mut self, key: &str, value: Vec<u8>) -> Result<i64, String> {
        let r = self
            .client
            .put(key, value, Some(PutOptions::new().with_lease(self.lease)))
            .await
            .map_err(|e| e.to_string())?;
        Ok(r.header().map_or(0, |h| h.revision()))
    }

    /// Lets the lock and every key under it go now.
    pub async fn release(mut self) {
        self.keep.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.lease_revoke(self.lease)).await;
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Not released (an error path): the lease, and the lock, expire after LOCK_TTL.
        self.keep.cancel();
    }
}
