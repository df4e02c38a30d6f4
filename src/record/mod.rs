//! The rollout record: what nodewave must remember about each DaemonSet it manages,
//! kept in a `DaemonSetRollout` resource (`nodewave.io/v1alpha1`) of the same name
//! and namespace as the DaemonSet.
//!
//! The record is written *before* every action it justifies (template apply, pod
//! delete, rollback apply, prune), and every write is conditional on the
//! `resourceVersion` it was computed from (see [`client`]), so two actors can never
//! both act on one record and a deposed leader's late write fails harmlessly.
//!
//! This module is pure: the resource type, the state it carries ([`RecordState`]),
//! the summary `kubectl get dsrollouts` shows, and the compact encoding
//! ([`codec`]) that keeps a 10,000-node rollout well under the 1.5 MiB object limit.
//! [`client`] is the thin IO part.

pub mod client;
pub mod codec;
pub mod legacy;
mod resource;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::rollout::{NodeName, Phase, Rollout, RolloutKind};

pub use resource::{
    API_GROUP, API_VERSION, DaemonSetRollout, KIND, PLURAL, PoolStatus, RecordSpec, RecordStatus,
    StageApproval,
};

/// How many failed commits are remembered per DaemonSet.
pub const FAILED_HISTORY: usize = 10;

/// Sync status of a managed DaemonSet: the record's `status.phase`, the `status`
/// label of `nodewave_daemonset_sync_status`, and the STATUS column everywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum SyncStatus {
    /// The live DaemonSet matches the desired commit and that commit rolled out.
    Synced,
    /// Git holds a change that is not applied (self-heal off, held back, refused).
    #[default]
    OutOfSync,
    /// A staged rollout (or a rollback) is in progress.
    Progressing,
    /// A rollout failed and could not be rolled back (first rollout, rollback off).
    Degraded,
    /// The last rollout failed a gate and was rolled back to the last good commit.
    RolledBack,
    /// The rollout is paused by an operator.
    Paused,
}

impl SyncStatus {
    pub const ALL: [SyncStatus; 6] = [
        SyncStatus::Synced,
        SyncStatus::OutOfSync,
        SyncStatus::Progressing,
        SyncStatus::Degraded,
        SyncStatus::RolledBack,
        SyncStatus::Paused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SyncStatus::Synced => "Synced",
            SyncStatus::OutOfSync => "OutOfSync",
            SyncStatus::Progressing => "Progressing",
            SyncStatus::Degraded => "Degraded",
            SyncStatus::RolledBack => "RolledBack",
            SyncStatus::Paused => "Paused",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// A commit and the content hash of the DaemonSet at that commit. The hash is what
/// counts: the same content under another commit (a `git revert`) is the same target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    pub commit: String,
    pub hash: String,
}

/// A commit whose rollout failed; its content is never re-applied automatically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailedCommit {
    pub commit: String,
    /// Content hash of the DaemonSet at that commit.
    pub hash: String,
    pub reason: String,
    pub at: String,
}

/// Why a template is being applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ApplyMode {
    /// A change to the pod template (or a new DaemonSet): a staged rollout follows.
    Forward,
    /// A change outside the pod template: no pod is replaced.
    InPlace,
    /// Back to the last good commit after `from` failed; a one-stage rollback follows.
    #[serde(rename_all = "camelCase")]
    Rollback {
        from: Box<Rollout>,
        failed_commit: String,
        reason: String,
    },
}

/// What nodewave is doing with the DaemonSet.
// One value per managed DaemonSet, mostly `Rolling` while anything happens:
// boxing the rollout would only add indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Work {
    /// Nothing open.
    #[default]
    Idle,
    /// Written before `target` is applied; the staged rollout (or rollback) starts
    /// once the DaemonSet controller has observed the applied template.
    #[serde(rename_all = "camelCase")]
    Applying {
        target: Target,
        mode: ApplyMode,
        since_ms: i64,
    },
    /// The planner's state of a staged rollout or rollback of `target`.
    Rolling { target: Target, rollout: Rollout },
    /// Written before the DaemonSet (removed from Git) is deleted.
    Pruning,
}

/// Everything nodewave remembers about one DaemonSet (encoded in `status.state`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordState {
    pub status: SyncStatus,
    #[serde(default)]
    pub message: String,
    /// The content nodewave applied last.
    #[serde(default)]
    pub applied: Option<Target>,
    /// The last commit whose rollout finished cleanly.
    #[serde(default)]
    pub last_good: Option<String>,
    #[serde(default)]
    pub failed: Vec<FailedCommit>,
    /// Node label the current rollout groups pools by.
    #[serde(default)]
    pub pool_label: Option<String>,
    #[serde(default)]
    pub work: Work,
}

impl RecordState {
    /// Points the node names of an open rollout at the copies `known` holds
    /// ([`Rollout::share_node_names`]).
    pub fn share_node_names(&mut self, known: &BTreeSet<NodeName>) {
        if let Work::Rolling { rollout, .. } = &mut self.work {
            rollout.share_node_names(known);
        }
    }

    /// A copy with `work` in place of this record's work, which is not copied (a
    /// rollout's state holds every node of every stage).
    #[must_use]
    pub fn with_work(&self, work: Work) -> RecordState {
        RecordState {
            status: self.status,
            message: self.message.clone(),
            applied: self.applied.clone(),
            last_good: self.last_good.clone(),
            failed: self.failed.clone(),
            pool_label: self.pool_label.clone(),
            work,
        }
    }

    /// The recorded status when it is one of the "stay put" ones, else `default`.
    pub fn status_or(&self, default: SyncStatus) -> SyncStatus {
        match self.status {
            s @ (SyncStatus::Degraded | SyncStatus::RolledBack) => s,
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

    pub fn failed_for(&self, hash: &str) -> Option<&FailedCommit> {
        self.failed.iter().find(|f| f.hash == hash)
    }

    /// The rollout in progress, if any.
    pub fn rollout(&self) -> Option<&Rollout> {
        match &self.work {
            Work::Rolling { rollout, .. } => Some(rollout),
            _ => None,
        }
    }

    /// Whether something is open: an apply waiting for its rollout, or a rollout
    /// not yet recorded as finished.
    pub fn is_open(&self) -> bool {
        !matches!(self.work, Work::Idle)
    }
}

/// One line of progress for `kubectl get dsrollouts` and `nodewave status`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StageSummary {
    /// `"2/3 general"`, or empty when no rollout runs.
    pub stage: String,
    /// The planner phase (`Updating`, `Baking`, ...), or the apply phase.
    pub phase: String,
    pub kind: String,
}

/// The stage column and phase of the work in progress.
pub fn stage_summary(work: &Work) -> StageSummary {
    match work {
        Work::Idle => StageSummary::default(),
        Work::Pruning => StageSummary {
            stage: String::new(),
            phase: "Pruning".into(),
            kind: String::new(),
        },
        Work::Applying { mode, .. } => StageSummary {
            stage: String::new(),
            phase: "Applying".into(),
            kind: match mode {
                ApplyMode::Rollback { .. } => "rollback".into(),
                ApplyMode::Forward | ApplyMode::InPlace => "forward".into(),
            },
        },
        Work::Rolling { rollout: r, .. } => {
            let total = r.stages.len();
            let stage = match r.stages.get(r.stage) {
                Some(s) => format!("{}/{total} {}", r.stage + 1, s.name),
                None => format!("{total}/{total}"),
            };
            StageSummary {
                stage,
                phase: phase_name(&r.phase),
                kind: match r.kind {
                    RolloutKind::Forward => "forward".into(),
                    RolloutKind::Rollback { .. } => "rollback".into(),
                },
            }
        }
    }
}

/// Phase name with the failed gate, e.g. `Failed (ready_timeout)`.
pub fn phase_name(p: &Phase) -> String {
    match p {
        Phase::Failed { failure } => format!("Failed ({})", failure.gate.metric_label()),
        other => other.name().to_string(),
    }
}

/// First 12 characters of a commit id, for messages and columns.
pub fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_history_is_bounded() {
        let mut s = RecordState::default();
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
        assert_eq!(s.failed_for("h14").map(|f| f.commit.as_str()), Some("c14"));
        assert!(s.failed_for("h1").is_none());
    }

    #[test]
    fn status_names_round_trip() {
        for s in SyncStatus::ALL {
            assert_eq!(SyncStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(SyncStatus::parse("Bogus"), None);
    }
}
