//! Keys kept alive by a lease: they disappear when their keeper stops renewing them. Used by
//! `gantry register` (a backend that is not a container) and by each instance's own record.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Endpoints;
use crate::backoff::Backoff;

/// What to keep.
#[derive(Debug, Clone)]
pub struct Keep {
    /// Members, tried in turn.
    pub endpoints: Endpoints,
    pub ttl: Duration,
    /// Keys under the lease; their values are read from here, and written again whenever it
    /// changes.
    pub values: watch::Receiver<Vec<(String, String)>>,
    /// Keys written without the lease when absent, checked again with every renewal (a route:
    /// configuration that outlives any one of its backends).
    pub ensure: Vec<(String, String)>,
}

/// Puts the keys under a lease and keeps renewing it until `shutdown`, then revokes it (the keys
/// go at once). When a member cannot be reached, tries the next; when the lease was lost
/// meanwhile (it expired), grants a new one and puts the keys again.
pub async fn keep(k: Keep, shutdown: CancellationToken) {
    let mut i = 0usize;
    let mut backoff = Backoff::default();
    loop {
        let endpoint = &k.endpoints[i % k.endpoints.len()];
        let started = std::time::Instant::now();
        match session(endpoint, &k, &shutdown).await {
            Ok(()) => return,
            Err(e) => warn!(%endpoint, error = %e, "etcd lease: lost the member or the lease; retrying"),
        }
        i += 1;
        backoff.session_lasted(started.elapsed());
        if !backoff.wait(&shutdown).await {
            return;
        }
    }
}

async fn ensure(client: &mut Client, keys: &[(String, String)]) -> Result<(), String> {
    for (k, v) in keys {
        let txn = Txn::new()
            .when([Compare::create_revision(k.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(k.as_str(), v.as_str(), None)]);
        let created = client.txn(txn).await.map_err(|e| e.to_string())?.succeeded();
        if created {
            info!(key = %k, "etcd: created");
        }
    }
    Ok(())
}

/// Puts the keys of `kv` whose values differ from `before` (all of them when `before` is
/// empty): a value that changes every second does not rewrite the others.
async fn put_all(
    client: &mut Client,
    lease: i64,
    kv: &[(String, String)],
    before: &[(String, String)],
) -> Result<(), String> {
    for (k, v) in kv {
        if before.iter().any(|(bk, bv)| bk == k && bv == v) {
            continue;
        }
        client
            .put(k.as_str(), v.as_str(), Some(PutOptions::new().with_lease(lease)))
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn session(endpoint: &str, k: &Keep, shutdown: &CancellationToken) -> Result<(), String> {
    let mut values = k.values.clone();
    let mut client: Client = k.endpoints.connect(endpoint).await?;
    let ttl = k.ttl.as_secs().max(1);
    let lease = client
        .lease_grant(ttl as i64, None)
        .await
        .map_err(|e| e.to_string())?
        .id();
    ensure(&mut client, &k.ensure).await?;
    let mut current = values.borrow_and_update().clone();
    put_all(&mut client, lease, &current, &[]).await?;
    info!(%endpoint, lease = format!("{lease:x}"), ttl, keys = current.len(), "etcd: keys kept under a lease");
    let (mut keeper, mut responses) = client.lease_keep_alive(lease).await.map_err(|e| e.to_string())?;
    let mut tick = tokio::time::interval(Duration::from_secs(ttl) / 3);
    tick.tick().await;
    let mut open = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                // Remove the keys now rather than at lease expiry.
                match tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(lease)).await {
                    Ok(Ok(_)) => info!("etcd: lease revoked, keys removed"),
                    _ => warn!("etcd: could not revoke the lease; its keys go when it expires"),
                }
                return Ok(());
            }
            _ = tick.tick() => {
                keeper.keep_alive().await.map_err(|e| e.to_string())?;
                match tokio::time::timeout(Duration::from_secs(ttl), responses.message()).await {
                    Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                    Ok(Ok(Some(_))) => return Err("the lease expired".into()),
                    Ok(Ok(None)) => return Err("the keep-alive stream ended".into()),
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(_) => return Err("no keep-alive answer".into()),
                }
                ensure(&mut client, &k.ensure).await?;
            }
            changed = values.changed(), if open => {
                if changed.is_err() {
                    // Nobody updates the values any more: keep the last ones until shutdown.
                    open = false;
                    continue;
                }
                let next = values.borrow_and_update().clone();
                put_all(&mut client, lease, &next, &current).await?;
                current = next;
            }
        }
    }
}
