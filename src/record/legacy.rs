//! Migration from nodewave 0.1, which kept its state in annotations on each
//! DaemonSet (`nodewave.io/rollout`, `nodewave.io/sync-status`, ...). On first
//! sight of such a DaemonSet without a record, the controller builds the record
//! from them, writes it, then removes the annotations.

use std::collections::BTreeMap;

use super::{FailedCommit, RecordState, SyncStatus, Target, Work};
use crate::rollout::{Phase, Rollout, RolloutKind};

pub const APPLIED_COMMIT: &str = "nodewave.io/applied-commit";
pub const APPLIED_AT: &str = "nodewave.io/applied-at";
pub const DESIRED_HASH: &str = "nodewave.io/desired-hash";
pub const LAST_GOOD_COMMIT: &str = "nodewave.io/last-good-commit";
pub const FAILED_COMMITS: &str = "nodewave.io/failed-commits";
pub const SYNC_STATUS: &str = "nodewave.io/sync-status";
pub const SYNC_MESSAGE: &str = "nodewave.io/sync-message";
pub const POOL_LABEL: &str = "nodewave.io/pool-label";
pub const ROLLOUT_STATE: &str = "nodewave.io/rollout";

/// Every annotation the old release wrote; removed after migration.
pub const ANNOTATIONS: [&str; 9] = [
    APPLIED_COMMIT,
    APPLIED_AT,
    DESIRED_HASH,
    LAST_GOOD_COMMIT,
    FAILED_COMMITS,
    SYNC_STATUS,
    SYNC_MESSAGE,
    POOL_LABEL,
    ROLLOUT_STATE,
];

/// Whether the annotations carry 0.1 state.
pub fn has_state(annotations: &BTreeMap<String, String>) -> bool {
    annotations.contains_key(SYNC_STATUS) || annotations.contains_key(ROLLOUT_STATE)
}

/// The record equivalent to the 0.1 annotations. An unreadable rollout
/// annotation is an error: migrating it as "nothing open" could skip stages.
pub fn from_annotations(a: &BTreeMap<String, String>) -> Result<RecordState, String> {
    let status = a
        .get(SYNC_STATUS)
        .and_then(|s| SyncStatus::parse(s))
        .unwrap_or(SyncStatus::OutOfSync);
    let applied = match (a.get(APPLIED_COMMIT), a.get(DESIRED_HASH)) {
        (Some(c), Some(h)) => Some(Target {
            commit: c.clone(),
            hash: h.clone(),
        }),
        _ => None,
    };
    let failed: Vec<FailedCommit> = match a.get(FAILED_COMMITS) {
        Some(s) => serde_json::from_str(s)
            .map_err(|e| format!("annotation {FAILED_COMMITS} is not readable: {e}"))?,
        None => Vec::new(),
    };
    let last_good = a.get(LAST_GOOD_COMMIT).cloned();
    let rollout: Option<Rollout> = match a.get(ROLLOUT_STATE) {
        Some(s) => Some(
            serde_json::from_str(s)
                .map_err(|e| format!("annotation {ROLLOUT_STATE} is not readable: {e}"))?,
        ),
        None => None,
    };
    let open = rollout.as_ref().is_some_and(|r| match (&r.phase, &r.kind) {
        (Phase::Succeeded, RolloutKind::Forward) => {
            !(status == SyncStatus::Synced && last_good.as_deref() == Some(r.commit.as_str()))
        }
        (Phase::Succeeded, RolloutKind::Rollback { .. }) => status != SyncStatus::RolledBack,
        (Phase::Failed { .. }, _) => status != SyncStatus::Degraded,
        _ => true,
    });
    let work = match (rollout, open, &applied) {
        (Some(r), true, Some(t)) => Work::Rolling {
            target: t.clone(),
            rollout: r,
        },
        (Some(_), true, None) => {
            return Err(format!(
                "a rollout is in progress but {APPLIED_COMMIT}/{DESIRED_HASH} are missing"
            ));
        }
        _ => Work::Idle,
    };
    Ok(RecordState {
        status,
        message: a.get(SYNC_MESSAGE).cloned().unwrap_or_default(),
        applied,
        last_good,
        failed,
        pool_label: a.get(POOL_LABEL).cloned(),
        work,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    #[test]
    fn a_synced_daemonset_migrates_idle() {
        let a = ann(&[
            (SYNC_STATUS, "Synced"),
            (APPLIED_COMMIT, "c1"),
            (DESIRED_HASH, "h1"),
            (LAST_GOOD_COMMIT, "c1"),
            (
                FAILED_COMMITS,
                r#"[{"commit":"c0","hash":"h0","reason":"crash","at":"t"}]"#,
            ),
        ]);
        let s = from_annotations(&a).unwrap();
        assert_eq!(s.status, SyncStatus::Synced);
        assert_eq!(s.work, Work::Idle);
        assert_eq!(s.failed.len(), 1);
        assert_eq!(s.applied.unwrap().hash, "h1");
    }

    #[test]
    fn an_open_rollout_migrates_as_rolling_and_garbage_is_refused() {
        let r = r#"{"commit":"c2","targetRevision":"r2","kind":{"type":"forward"},"stages":[{"name":"a","nodes":["n1"],"maxUnavailable":1,"bakeMs":0,"manualApproval":false}],"stage":0,"phase":{"type":"updating"},"startedAtMs":1,"stageStartedAtMs":1,"replacing":{},"updated":[],"baselineUnready":[],"lastGate":null}"#;
        let a = ann(&[
            (SYNC_STATUS, "Progressing"),
            (APPLIED_COMMIT, "c2"),
            (DESIRED_HASH, "h2"),
            (ROLLOUT_STATE, r),
        ]);
        let s = from_annotations(&a).unwrap();
        assert!(matches!(s.work, Work::Rolling { ref rollout, .. } if rollout.commit == "c2"));
        let bad = ann(&[(SYNC_STATUS, "Progressing"), (ROLLOUT_STATE, "{not json")]);
        assert!(from_annotations(&bad).unwrap_err().contains(ROLLOUT_STATE));
    }
}
