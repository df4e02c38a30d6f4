//! The rollout planner: a pure, deterministic state machine deciding which pods to
//! replace next, whether a gate passed, and when to roll back.
//!
//! The reconciler owns all IO. It calls [`step`] with the persisted [`Rollout`] and a
//! fresh [`Observation`], persists [`Decision::rollout`] *before* executing
//! [`Decision::actions`] in order, and may crash anywhere in between. `step` is
//! therefore written to be re-run on any persisted state: deletions that may have
//! been lost are re-issued, nothing is counted twice, and terminal phases re-emit
//! their terminal action until the reconciler replaces the state.
//!
//! Per stage: `Pending` → (`AwaitingApproval`) → `Updating` → (`Baking`) → next
//! stage, and `Succeeded` after the last one; any gate failure or an abort turns a
//! forward rollout `Failed` and asks for a rollback, which is a one-stage rollout
//! back to the previous revision that never fails.
//!
//! The budget rule: in a stage, nodes without a Ready pod (nodes being replaced
//! included, nodes that were unready before nodewave touched them excluded) are
//! unavailable; a Ready old pod is deleted only while fewer than the stage's
//! `max_unavailable` nodes are. Old pods that are not Ready are replaced freely.
//!
//! Time is unix milliseconds (`i64`) throughout so that the planner stays pure.

mod gates;
mod planner;
mod pod_id;
mod stages;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use gates::{CheckValue, Gate, GateFailure, GateResult, HealthRules, PromOutcome};
pub use planner::{REISSUE_AFTER_MS, step};
pub use pod_id::{PodName, PodUid};
pub use stages::{ALL_POOLS, NodeInfo, REMAINING_STAGE, Stage, resolve_stages};

/// Name of the single stage of a rollback.
pub const ROLLBACK_STAGE: &str = "rollback";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum RolloutKind {
    Forward,
    /// Going back to the last good revision. Ignores approval and abort, and never
    /// fails a gate: there is nothing better to go back to.
    #[serde(rename_all = "camelCase")]
    Rollback {
        failed_commit: String,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Phase {
    /// The stage `Rollout::stage` was selected but not begun; the next `step`
    /// announces it and moves to `AwaitingApproval` or `Updating` at once.
    Pending,
    /// The stage needs `control.approved_stage >= Some(stage)`. Pod gates keep being
    /// evaluated for the stages already rolled out (Prometheus is not).
    AwaitingApproval,
    /// Replacing old pods of the current stage within its budget.
    Updating,
    /// Every pod of the stage is Ready on the target revision; soaking.
    #[serde(rename_all = "camelCase")]
    Baking {
        since_ms: i64,
    },
    /// No deletions and no gates until un-paused; then back to `resume_to`.
    #[serde(rename_all = "camelCase")]
    Paused {
        resume_to: Box<Phase>,
    },
    Succeeded,
    Failed {
        failure: GateFailure,
    },
}

impl Phase {
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed { .. })
    }

    /// Short name for status output and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::AwaitingApproval => "AwaitingApproval",
            Self::Updating => "Updating",
            Self::Baking { .. } => "Baking",
            Self::Paused { .. } => "Paused",
            Self::Succeeded => "Succeeded",
            Self::Failed { .. } => "Failed",
        }
    }
}

/// A node of the current stage without a Ready pod on the target revision that
/// nodewave is waiting for: it deleted the old pod, or the pod went missing or
/// came up on the target revision without nodewave's doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Replacement {
    /// UID of the pod nodewave deleted; empty when nodewave deleted nothing (pod
    /// evicted, new node, target pod created by the controller). Tracked anyway so
    /// the ready timeout covers it.
    pub old_pod_uid: String,
    /// Start of the ready timeout: when nodewave asked for the deletion, moved
    /// forward each time a deletion that did not take effect is issued again
    /// (see `planner::REISSUE_AFTER_MS`: a deletion lost in a crash or held back by
    /// a pause must not eat into the timeout).
    pub deleted_at_ms: i64,
}

/// The persisted state of one rollout (stored as JSON in an annotation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    pub commit: String,
    pub target_revision: String,
    pub kind: RolloutKind,
    pub stages: Vec<Stage>,
    /// Index into `stages`; equals `stages.len()` only once `Succeeded`.
    pub stage: usize,
    pub phase: Phase,
    pub started_at_ms: i64,
    pub stage_started_at_ms: i64,
    pub replacing: BTreeMap<NodeName, Replacement>,
    pub updated: BTreeSet<NodeName>,
    pub baseline_unready: BTreeSet<NodeName>,
    pub last_gate: Option<GateResult>,
}

impl Rollout {
    pub fn is_rollback(&self) -> bool {
        matches!(self.kind, RolloutKind::Rollback { .. })
    }

    pub fn current_stage(&self) -> Option<&Stage> {
        self.stages.get(self.stage)
    }

    /// Makes every node name this state holds the copy `known` holds, where it
    /// holds one (names of nodes since deleted keep their own).
    pub fn share_node_names(&mut self, known: &BTreeSet<NodeName>) {
        let share = |n: &mut NodeName| {
            if let Some(k) = known.get(&**n) {
                *n = Arc::clone(k);
            }
        };
        for stage in &mut self.stages {
            stage.nodes.iter_mut().for_each(share);
        }
        let shared = |n: &NodeName| known.get(&**n).is_none_or(|k| Arc::ptr_eq(k, n));
        let set = |s: &mut BTreeSet<NodeName>| {
            if s.iter().all(shared) {
                return;
            }
            *s = std::mem::take(s)
                .into_iter()
                .map(|mut n| {
                    share(&mut n);
                    n
                })
                .collect();
        };
        set(&mut self.updated);
        set(&mut self.baseline_unready);
        if self.replacing.keys().all(shared) {
            return;
        }
        self.replacing = std::mem::take(&mut self.replacing)
            .into_iter()
            .map(|(mut n, r)| {
                share(&mut n);
                (n, r)
            })
            .collect();
    }
}

/// A node's name. Shared rather than owned: a rollout's state names every node
/// of its stages up to four times (stage, replacement, updated, unready before),
/// and at 5,000 nodes and 20 DaemonSets owned copies were about 1 MB per
/// DaemonSet; [`Rollout::share_node_names`] points them at the node index's.
pub type NodeName = Arc<str>;

/// One pod of the DaemonSet as seen now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodObservation {
    pub node: Arc<str>,
    pub name: PodName,
    pub uid: PodUid,
    /// `controller-revision-hash` label.
    pub revision: Arc<str>,
    pub ready: bool,
    /// Sum over the pod's containers.
    pub restarts: u32,
    /// Current waiting reason or last terminated reason of any container.
    pub reason: Option<Arc<str>>,
    /// Has a deletion timestamp.
    pub terminating: bool,
}

/// User intent from the control annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Control {
    pub paused: bool,
    pub abort: bool,
    /// Highest stage index (0-based) a user approved. Stages up to it start without
    /// waiting, so the reconciler must clear it when a new rollout starts.
    pub approved_stage: Option<usize>,
}

/// Everything `step` may look at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Observation {
    pub now_ms: i64,
    /// Nodes that exist now. Best: only those the DaemonSet can run on (selector,
    /// affinity, taints), since a node leaving this set is treated like a removed
    /// one, while a node of the current stage that keeps having no pod fails the
    /// ready timeout. Shared with the node index (`plan::NodeIndex::names`).
    pub nodes: Arc<BTreeSet<NodeName>>,
    /// This DaemonSet's pods, any order; shared with the reconcile that observed
    /// them (at 5,000 nodes a copy is 0.5 MB, and up to `--workers` reconciles run
    /// at once).
    pub pods: Arc<[PodObservation]>,
    pub control: Control,
    pub prometheus: PromOutcome,
    /// The stage `prometheus` was evaluated for. `None` means the current one.
    /// A value for another stage (the reconciler queried before the planner moved
    /// on) is not used: a stage with Prometheus checks passes only on its own data.
    #[serde(default)]
    pub prometheus_stage: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Action {
    /// Delete the pod by name with a UID precondition; a 404 or a precondition
    /// conflict means it is already gone and is not an error.
    DeletePod {
        node: String,
        name: String,
        uid: String,
    },
    Event(RolloutEvent),
    /// Re-apply the last good template, then persist `Rollout::rollback`.
    RollBack(GateFailure),
    /// Record success and drop the rollout state.
    Complete,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum RolloutEvent {
    StageStarted {
        stage: usize,
        name: String,
        nodes: usize,
    },
    AwaitingApproval {
        stage: usize,
        name: String,
    },
    #[serde(rename_all = "camelCase")]
    BakeStarted {
        stage: usize,
        name: String,
        bake_ms: u64,
    },
    StagePassed {
        stage: usize,
        name: String,
    },
    GateFailed(GateFailure),
    Paused,
    Resumed,
    #[serde(rename_all = "camelCase")]
    RollbackStarted {
        failed_commit: String,
        reason: String,
        nodes: usize,
    },
    #[serde(rename_all = "camelCase")]
    RollbackFinished {
        failed_commit: String,
    },
}

impl RolloutEvent {
    /// The Kubernetes Event `reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::StageStarted { .. } => "StageStarted",
            Self::AwaitingApproval { .. } => "AwaitingApproval",
            Self::BakeStarted { .. } => "BakeStarted",
            Self::StagePassed { .. } => "StagePassed",
            Self::GateFailed(_) => "GateFailed",
            Self::Paused => "RolloutPaused",
            Self::Resumed => "RolloutResumed",
            Self::RollbackStarted { .. } => "RollbackStarted",
            Self::RollbackFinished { .. } => "RollbackFinished",
        }
    }

    /// Name of the stage the event is about, for events that concern one stage.
    pub fn stage_name(&self) -> Option<&str> {
        match self {
            Self::StageStarted { name, .. }
            | Self::AwaitingApproval { name, .. }
            | Self::BakeStarted { name, .. }
            | Self::StagePassed { name, .. } => Some(name),
            Self::GateFailed(_)
            | Self::Paused
            | Self::Resumed
            | Self::RollbackStarted { .. }
            | Self::RollbackFinished { .. } => None,
        }
    }

    /// Kubernetes Event type `Warning` (otherwise `Normal`).
    pub fn is_warning(&self) -> bool {
        matches!(self, Self::GateFailed(_) | Self::RollbackStarted { .. })
    }

    /// The Kubernetes Event `message`.
    pub fn message(&self) -> String {
        match self {
            Self::StageStarted { stage, name, nodes } => {
                format!("stage {} ({name}) started on {nodes} node(s)", stage + 1)
            }
            Self::AwaitingApproval { stage, name } => format!(
                "stage {} ({name}) awaits approval: run `nodewave rollout approve <namespace>/<name>`",
                stage + 1
            ),
            Self::BakeStarted {
                stage,
                name,
                bake_ms,
            } => format!(
                "stage {} ({name}) is Ready on every node, baking for {}s",
                stage + 1,
                bake_ms / 1000
            ),
            Self::StagePassed { stage, name } => format!("stage {} ({name}) passed", stage + 1),
            Self::GateFailed(f) => format!("{} gate failed: {}", f.gate.metric_label(), f.message),
            Self::Paused => "rollout paused".to_string(),
            Self::Resumed => "rollout resumed".to_string(),
            Self::RollbackStarted {
                failed_commit,
                reason,
                nodes,
            } => format!("rolling back {failed_commit} on {nodes} node(s): {reason}"),
            Self::RollbackFinished { failed_commit } => {
                format!("rollback of {failed_commit} finished")
            }
        }
    }
}

/// What `step` decided: the state to persist first, then the actions to execute.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub rollout: Rollout,
    pub actions: Vec<Action>,
}
