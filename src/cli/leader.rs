//! Leader election with a Kubernetes Lease (kube-lease-manager), so several
//! replicas of nodewave can run and exactly one acts.

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

/// Lease duration and renewal grace, in seconds: a crashed leader is replaced
/// within about this long. The leader renews `GRACE_SECONDS` before expiry and
/// stops acting `controller::fence::MARGIN` before expiry (renew deadline 13 s
/// of a 15 s lease), so its last action always precedes a takeover.
pub const LEASE_SECONDS: u64 = 15;
const GRACE_SECONDS: u64 = 5;

pub struct Leadership {
    channel: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
}

pub fn identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map_or_else(|_| "nodewave".into(), |h| h.trim().to_string());
        format!("{host}-{}", std::process::id())
    })
}

/// Waits until this process holds the lease.
pub async fn acquire(
    client: Client,
    namespace: &str,
    lease: &str,
    id: &str,
) -> Result<Leadership, String> {
    let id = id.to_string();
    let manager = LeaseManagerBuilder::new(client, lease)
        .with_namespace(namespace)
        .with_identity(&id)
        .with_duration(LEASE_SECONDS)
        .with_grace(GRACE_SECONDS)
        .build()
        .await
        .map_err(|e| format!("cannot set up lease {namespace}/{lease}: {e}"))?;
    let (mut channel, task) = manager.watch().await;
    info!(lease = %format!("{namespace}/{lease}"), identity = %id, "waiting to become leader");
    while !*channel.borrow_and_update() {
        channel
            .changed()
            .await
            .map_err(|_| "the lease manager stopped".to_string())?;
    }
    info!(lease = %format!("{namespace}/{lease}"), identity = %id, "became leader");
    Ok(Leadership { channel, task })
}

impl Leadership {
    /// Resolves when the lease is lost (or the lease manager stops).
    pub async fn lost(&mut self) {
        loop {
            if self.channel.changed().await.is_err() || !*self.channel.borrow_and_update() {
                return;
            }
        }
    }

    /// Gives the lease up so a standby replica takes over at once.
    pub async fn release(self) {
        drop(self.channel);
        if let Ok(Ok(manager)) = self.task.await {
            let _ = manager.release().await;
        }
    }
}
