//! Publication of the recommendations in etcd, for the rest of the platform.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gantry_discovery::etcd::Endpoints;
use gantry_discovery::etcd::Keys;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{Mode, Scaling};

/// While this instance publishes (see [`super::fleet`]), writes each service's recommendation,
/// with its inputs, to `<prefix>scaling/<service>` when it changes (and every `refresh`
/// otherwise, so the inputs stay current); removes the keys of services that stopped declaring
/// scale settings.
pub async fn publish_to_etcd(
    scaling: Arc<Scaling>,
    endpoints: Endpoints,
    keys: Keys,
    instance: String,
    refresh: Duration,
    shutdown: CancellationToken,
) {
    let mut updates = scaling.subscribe();
    let mut client = None;
    let mut written: BTreeMap<String, (u32, Mode, Instant)> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = updates.changed() => if r.is_err() { return },
        }
        let all = updates.borrow_and_update().clone();
        if !scaling.publishes() {
            // Whoever publishes now writes; when this instance is elected again it writes anew.
            written.clear();
            continue;
        }
        if client.is_none() {
            match endpoints.connect_any().await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    warn!(error = %e, "scaling: cannot reach etcd to publish recommendations");
                    continue;
                }
            }
        }
        let Some(c) = client.as_mut() else { continue };
        let now = Instant::now();
        let mut failed = false;
        for (name, r) in &all {
            let due = written.get(name).is_none_or(|&(n, m, at)| {
                n != r.replicas || m != r.mode || now.duration_since(at) >= refresh
            });
            if !due {
                continue;
            }
            let value = serde_json::json!({
                "recommendation": r,
                "instance": instance,
                "at_unix_ms": crate::time::unix_ms(),
            });
            match c.put(keys.scaling(name), value.to_string(), None).await {
                Ok(_) => {
                    written.insert(name.clone(), (r.replicas, r.mode, now));
                }
                Err(e) => {
                    warn!(error = %e, "scaling: cannot write the recommendation to etcd");
                    failed = true;
                    break;
                }
            }
        }
        let gone: Vec<String> = written
            .keys()
            .filter(|n| !all.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            if c.delete(keys.scaling(&name), None).await.is_ok() {
                written.remove(&name);
            }
        }
        if failed {
            client = None;
        }
    }
}
