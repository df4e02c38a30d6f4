//! What the tasks of `nodewave run` share: the status behind `/status` and
//! `/readyz`, and the triggers a webhook pulls.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt as _;
use tokio::sync::{Notify, RwLock};
use tokio::task::JoinHandle;

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

/// The text of a panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Spawns one of `nodewave run`'s long-running tasks with its panics caught at
/// the task boundary: a panic is logged, counted
/// (`nodewave_reconcile_errors_total{kind="panic"}`) and set in the status, so
/// `/healthz` fails and the pod is restarted (a standby takes over meanwhile).
/// The task then ends, as it would at shutdown.
pub fn spawn_supervised<F>(
    name: &'static str,
    status: SharedStatus,
    metrics: crate::metrics::Metrics,
    task: F,
) -> JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(payload) = AssertUnwindSafe(task).catch_unwind().await {
            let what = panic_message(payload.as_ref());
            tracing::error!(task = name, panic = %what, "a task panicked; nodewave reports itself unhealthy so it is restarted");
            metrics.reconcile_error("panic");
            status.write().await.panicked = Some(format!("task {name}: {what}"));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_is_reported_and_fails_health() {
        let status = SharedStatus::default();
        let metrics = crate::metrics::Metrics::new();
        let task = spawn_supervised("test task", status.clone(), metrics.clone(), async {
            let v: Vec<u8> = Vec::new();
            let _ = v[usize::from(v.is_empty())];
        });
        task.await.expect("the panic is caught inside the task");
        let panicked = status.read().await.panicked.clone().unwrap_or_default();
        assert!(
            panicked.starts_with("task test task: index out of bounds"),
            "{panicked}"
        );
        assert!(
            metrics
                .encode()
                .contains(r#"nodewave_reconcile_errors_total{kind="panic"} 1"#),
            "{}",
            metrics.encode()
        );
    }

    #[tokio::test]
    async fn a_task_that_ends_normally_reports_nothing() {
        let status = SharedStatus::default();
        let task = spawn_supervised(
            "test task",
            status.clone(),
            crate::metrics::Metrics::new(),
            async {},
        );
        task.await.expect("ends");
        assert_eq!(status.read().await.panicked, None);
    }
}
