//! What the tasks of `nodewave run` share: the status behind `/status` and
//! `/readyz`, and the triggers a webhook pulls.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{Notify, RwLock};

/// What `/status`, `/readyz` and `nodewave status` report about the service.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ServiceStatus {
    /// Head of the tracked ref as last fetched.
    pub head: Option<String>,
    /// The commit whose desired state the controller works from.
    pub applied_commit: Option<String>,
    /// Who signed it (with `--verify-commits head`; `None` for a commit
    /// nodewave fell back to, which it had deployed before).
    pub applied_signer: Option<crate::verify::Signer>,
    pub git_reached: bool,
    pub last_fetch_error: Option<String>,
    pub rejected_commit: Option<String>,
    pub rejected_errors: Vec<String>,
    /// Best-practice warnings of the commit the controller works from.
    pub warnings: Vec<String>,
    /// Why the current desired state's deletions are refused by the prune guard
    /// (`None`: nothing refused).
    pub prune_refused: Option<String>,
    /// A valid commit has been compared with the cluster at least once.
    pub synced_once: bool,
    /// This replica holds the leader lease (always true without `--leader-elect`).
    pub leader: bool,
    /// This replica waits for the leader lease (with `--leader-elect`).
    pub standby: bool,
    /// Set when a task panicked: `/healthz` fails so the pod is restarted.
    pub panicked: Option<String>,
    /// `namespace/name` → sync status (or the error of its last reconcile).
    pub daemonsets: BTreeMap<String, String>,
    /// Companion objects (`Kind.group namespace/name`) → `Synced` or the error.
    pub objects: BTreeMap<String, String>,
    /// The commit `objects` was synced for.
    pub objects_commit: Option<String>,
}

pub type SharedStatus = Arc<RwLock<ServiceStatus>>;

/// Wakes the desired-state pipeline: `fetch` for a webhook.
#[derive(Debug, Default)]
pub struct Triggers {
    pub fetch: Notify,
}
