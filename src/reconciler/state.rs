//! What nodewave records on each DaemonSet it manages (annotations), so that a
//! restarted nodewave, or `nodewave status` on a laptop, sees the same thing.

use k8s_openapi::api::apps::v1::DaemonSet;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::keys;
use crate::metrics::SyncStatus;
use crate::rollout::Rollout;

/// How many failed commits are remembered per DaemonSet.
const FAILED_HISTORY: usize = 10;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedCommit {
    pub commit: String,
    /// Content hash of the DaemonSet at that commit: the same content is never
    /// re-applied automatically, whatever commit carries it.
    pub hash: String,
    pub reason: String,
    pub at: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DaemonSetState {
    pub applied_commit: Option<String>,
    pub applied_at: Option<String>,
    pub last_good: Option<String>,
    pub desired_hash: Option<String>,
    pub failed: Vec<FailedCommit>,
    pub status: Option<SyncStatus>,
    pub message: Option<String>,
    pub rollout: Option<Rollout>,
}

impl DaemonSetState {
    pub fn of(ds: &DaemonSet) -> Self {
        let a = ds.annotations();
        let get = |k: &str| a.get(k).cloned();
        Self {
            applied_commit: get(keys::APPLIED_COMMIT),
            applied_at: get(keys::APPLIED_AT),
            last_good: get(keys::LAST_GOOD_COMMIT),
            desired_hash: get(keys::DESIRED_HASH),
            failed: a
                .get(keys::FAILED_COMMITS)
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or_default(),
            status: a
                .get(keys::SYNC_STATUS)
                .and_then(|s| SyncStatus::ALL.iter().copied().find(|x| x.as_str() == s)),
            message: get(keys::SYNC_MESSAGE),
            rollout: a
                .get(keys::ROLLOUT_STATE)
                .and_then(|s| serde_json::from_str(s).ok()),
        }
    }

    /// The recorded status when it is one of the "stay put" ones, else `default`.
    pub fn status_or(&self, default: SyncStatus) -> SyncStatus {
        match self.status {
            Some(s @ (SyncStatus::Degraded | SyncStatus::RolledBack)) => s,
            _ => default,
        }
    }

    pub fn record_failure(&mut self, f: FailedCommit) {
        self.failed
            .retain(|x| x.hash != f.hash || x.commit != f.commit);
        self.failed.push(f);
        if self.failed.len() > FAILED_HISTORY {
            let excess = self.failed.len() - FAILED_HISTORY;
            self.failed.drain(..excess);
        }
    }

    pub fn failed_json(&self) -> String {
        serde_json::to_string(&self.failed).unwrap_or_else(|_| "[]".into())
    }
}

/// Hash of what Git declares for a DaemonSet, without nodewave's bookkeeping.
pub fn content_hash(desired: &Value) -> String {
    let normal = crate::diff::normalise(desired);
    let bytes = serde_json::to_vec(&normal).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    hex::encode(&digest[..12])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_hash_ignores_bookkeeping() {
        let a = json!({"metadata": {"name": "x", "annotations": {"nodewave.io/applied-commit": "a"}}, "spec": {"k": 1}});
        let b = json!({"metadata": {"name": "x", "annotations": {"nodewave.io/applied-commit": "b"}}, "spec": {"k": 1}});
        let c = json!({"metadata": {"name": "x"}, "spec": {"k": 2}});
        assert_eq!(content_hash(&a), content_hash(&b));
        assert_ne!(content_hash(&a), content_hash(&c));
    }

    #[test]
    fn failed_history_is_bounded() {
        let mut s = DaemonSetState::default();
        for i in 0..15 {
            s.record_failure(FailedCommit {
                commit: format!("c{i}"),
                hash: format!("h{i}"),
                reason: "r".into(),
                at: "t".into(),
            });
        }
        assert_eq!(s.failed.len(), FAILED_HISTORY);
        assert_eq!(s.failed[0].commit, "c5");
    }
}
