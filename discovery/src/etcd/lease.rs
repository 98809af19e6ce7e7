//! Keys kept alive by a lease: they disappear when their keeper stops renewing them. Used by
//! `gantry register` (a backend that is not a container) and by each instance's own record.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::source::connect;

/// Puts `keys` under a lease of `ttl` and keeps renewing it; on `shutdown`, revokes the lease
/// (the keys go at once). When etcd cannot be reached, tries the next endpoint; when the lease
/// was lost meanwhile, grants a new one and puts the keys again. `create_only` keys are written
/// only if absent, without the lease (a route must outlive its backends).
///
/// The values of `keys` are read from `values`, and written again whenever it changes.
pub async fn keep(
    endpoints: Vec<String>,
    values: watch::Receiver<Vec<(String, String)>>,
    create_only: Vec<(String, String)>,
    ttl: Duration,
    shutdown: CancellationToken,
) {
    let mut i = 0usize;
    let mut backoff = Duration::from_millis(100);
    loop {
        let endpoint = &endpoints[i % endpoints.len()];
        match session(endpoint, values.clone(), &create_only, ttl, &shutdown).await {
            Ok(()) => return,
            Err(e) => warn!(%endpoint, error = %e, "etcd lease lost; retrying"),
        }
        i += 1;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn session(
    endpoint: &str,
    mut values: watch::Receiver<Vec<(String, String)>>,
    create_only: &[(String, String)],
    ttl: Duration,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let mut client: Client = connect(endpoint).await?;
    let lease = client
        .lease_grant(ttl.as_secs().max(1) as i64, None)
        .await
        .map_err(|e| e.to_string())?
        .id();
    for (k, v) in create_only {
        let txn = Txn::new()
            .when([Compare::create_revision(k.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(k.as_str(), v.as_str(), None)]);
        client.txn(txn).await.map_err(|e| e.to_string())?;
    }
    let put_all = |client: &mut Client, kv: Vec<(String, String)>| {
        let mut client = client.clone();
        async move {
            for (k, v) in kv {
                client
                    .put(k, v, Some(PutOptions::new().with_lease(lease)))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        }
    };
    put_all(&mut client, values.borrow_and_update().clone()).await?;
    info!(%endpoint, lease, "etcd: keys registered");
    let (mut keeper, mut responses) = client.lease_keep_alive(lease).await.map_err(|e| e.to_string())?;
    let mut tick = tokio::time::interval((ttl / 3).max(Duration::from_millis(200)));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                // Remove the keys now rather than at lease expiry.
                let _ = tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(lease)).await;
                return Ok(());
            }
            _ = tick.tick() => {
                keeper.keep_alive().await.map_err(|e| e.to_string())?;
                match tokio::time::timeout(ttl, responses.message()).await {
                    Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                    Ok(Ok(Some(_))) => return Err("the lease expired".into()),
                    Ok(Ok(None)) => return Err("the keep-alive stream ended".into()),
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(_) => return Err("no keep-alive answer".into()),
                }
            }
            changed = values.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                put_all(&mut client, values.borrow_and_update().clone()).await?;
            }
        }
    }
}
