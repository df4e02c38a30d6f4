//! Pure helpers about where a DaemonSet's pods are: the node index the watches
//! maintain, the pool label in use, the nodes a rollout covers, per-pool progress,
//! and the summary written into the record's status for `kubectl`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::manifest::policy::WELL_KNOWN_POOL_LABELS;
use crate::record::{self, PoolStatus, RecordState, RecordStatus, Work};
use crate::rollout::{NodeInfo, NodeName, PodObservation};

/// Every node's labels, by node name (kept current by a metadata watch).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeIndex {
    nodes: BTreeMap<String, BTreeMap<String, String>>,
    /// The same names, shared: every planner step hands them to the rollout
    /// state machine, which at 5,000 nodes was a 5,000-string copy per step.
    names: Arc<BTreeSet<NodeName>>,
}

impl NodeIndex {
    /// Inserts or replaces a node; returns whether anything a rollout looks at
    /// (existence, labels) changed.
    pub fn upsert(&mut self, name: &str, labels: BTreeMap<String, String>) -> bool {
        match self.nodes.get(name) {
            Some(old) if *old == labels => false,
            _ => {
                if self.nodes.insert(name.to_string(), labels).is_none() {
                    Arc::make_mut(&mut self.names).insert(NodeName::from(name));
                }
                true
            }
        }
    }

    pub fn remove(&mut self, name: &str) -> bool {
        let removed = self.nodes.remove(name).is_some();
        if removed {
            Arc::make_mut(&mut self.names).remove(name);
        }
        removed
    }

    pub fn clear(&mut self) {
        self.nodes.clear();
        self.names = Arc::default();
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.nodes.contains_key(name)
    }

    /// Every node's name; shared, not copied.
    pub fn names(&self) -> Arc<BTreeSet<NodeName>> {
        Arc::clone(&self.names)
    }

    pub fn label(&self, node: &str, label: &str) -> Option<&str> {
        self.nodes.get(node)?.get(label).map(String::as_str)
    }

    pub fn has_label(&self, node: &str, label: &str) -> bool {
        self.nodes.get(node).is_some_and(|l| l.contains_key(label))
    }
}

/// The node label naming pools: the policy's, else the one `nodewave run` was
/// given, else the first well-known label found on a node this DaemonSet runs on.
pub fn pool_label(
    policy_label: Option<&str>,
    configured: Option<&str>,
    nodes: &NodeIndex,
    pods: &[PodObservation],
) -> Option<String> {
    if let Some(l) = policy_label.or(configured) {
        return Some(l.to_string());
    }
    let running: BTreeSet<&str> = pods.iter().map(|p| &*p.node).collect();
    WELL_KNOWN_POOL_LABELS
        .iter()
        .find(|l| running.iter().any(|n| nodes.has_label(n, l)))
        .map(|l| (*l).to_string())
}

/// The nodes the DaemonSet runs on (those with a pod of it), with their pool.
pub fn eligible_nodes(
    nodes: &NodeIndex,
    pods: &[PodObservation],
    pool_label: Option<&str>,
) -> Vec<NodeInfo> {
    let running: BTreeSet<&str> = pods.iter().map(|p| &*p.node).collect();
    running
        .into_iter()
        .filter(|n| nodes.contains(n))
        .map(|n| NodeInfo {
            name: n.to_string(),
            pool: pool_label.and_then(|l| nodes.label(n, l)).map(String::from),
        })
        .collect()
}

/// Pods of one pool: on the target revision, Ready among those, all live ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolProgress {
    pub updated: usize,
    pub ready: usize,
    pub total: usize,
}

/// Per-pool progress toward `target_revision`; pods on nodes without the pool
/// label count under `(none)`.
pub fn progress_by_pool(
    target_revision: &str,
    pods: &[PodObservation],
    nodes: &NodeIndex,
    pool_label: Option<&str>,
) -> BTreeMap<String, PoolProgress> {
    // Keyed by borrowed names while counting: one allocation per pool, not per pod
    // (this runs on every reconcile of an open rollout).
    let mut out: BTreeMap<&str, PoolProgress> = BTreeMap::new();
    for p in pods.iter().filter(|p| !p.terminating) {
        let pool = pool_label
            .and_then(|l| nodes.label(&p.node, l))
            .unwrap_or("(none)");
        let e = out.entry(pool).or_default();
        e.total += 1;
        if *p.revision == *target_revision {
            e.updated += 1;
            if p.ready {
                e.ready += 1;
            }
        }
    }
    out.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// The progress columns of a record: pods updated, Ready and in all, per pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressColumns {
    pub updated: i64,
    pub ready: i64,
    pub total: i64,
    pub pools: Vec<PoolStatus>,
}

/// The progress columns for `state` and the pods; `current_revision` as for
/// [`record_status`].
pub fn progress_columns(
    state: &RecordState,
    pods: &[PodObservation],
    nodes: &NodeIndex,
    current_revision: Option<&str>,
) -> ProgressColumns {
    let revision = target_revision(state).or(current_revision).unwrap_or("");
    let pools = progress_by_pool(revision, pods, nodes, state.pool_label.as_deref());
    let (mut updated, mut ready, mut total) = (0, 0, 0);
    for p in pools.values() {
        updated += p.updated;
        ready += p.ready;
        total += p.total;
    }
    ProgressColumns {
        updated: count(updated),
        ready: count(ready),
        total: count(total),
        pools: pools
            .into_iter()
            .map(|(name, p)| PoolStatus {
                name,
                updated: count(p.updated),
                ready: count(p.ready),
                total: count(p.total),
            })
            .collect(),
    }
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The revision the open work drives toward, when known.
pub fn target_revision(state: &RecordState) -> Option<&str> {
    state.rollout().map(|r| r.target_revision.as_str())
}

/// The record's status for `kubectl get dsrollouts`: the summary columns computed
/// from the state and the pods, and the encoded state itself. `current_revision`
/// is the DaemonSet's revision when no rollout is open (so counts stay meaningful).
pub fn record_status(
    state: &RecordState,
    pods: &[PodObservation],
    nodes: &NodeIndex,
    current_revision: Option<&str>,
    observed_at: String,
) -> RecordStatus {
    let summary = record::stage_summary(&state.work);
    let progress = progress_columns(state, pods, nodes, current_revision);
    let commit = match &state.work {
        Work::Applying { target, .. } | Work::Rolling { target, .. } => {
            Some(target.commit.as_str())
        }
        Work::Idle | Work::Pruning => state.applied.as_ref().map(|t| t.commit.as_str()),
    };
    RecordStatus {
        phase: state.status.as_str().to_string(),
        message: state.message.clone(),
        commit: commit
            .map(|c| record::short(c).to_string())
            .unwrap_or_default(),
        applied_commit: state.applied.as_ref().map(|t| t.commit.clone()),
        last_good_commit: state.last_good.clone(),
        stage: summary.stage,
        rollout_phase: summary.phase,
        rollout_kind: summary.kind,
        updated: progress.updated,
        ready: progress.ready,
        total: progress.total,
        pools: progress.pools,
        failed_commits: state.failed.clone(),
        pool_label: state.pool_label.clone(),
        observed_at,
        state: record::codec::encode(state),
    }
}

/// Whether the progress columns differ from the record's: worth a write at most
/// every few seconds while a rollout runs, never when nothing is open.
pub fn progress_changed(old: &RecordStatus, new: &ProgressColumns) -> bool {
    (old.updated, old.ready, old.total) != (new.updated, new.ready, new.total)
        || old.pools != new.pools
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(node: &str, rev: &str, ready: bool) -> PodObservation {
        PodObservation {
            node: node.into(),
            name: format!("p-{node}").into(),
            uid: format!("u-{node}").into(),
            revision: rev.into(),
            ready,
            restarts: 0,
            reason: None,
            terminating: false,
        }
    }

    fn index(nodes: &[(&str, &str)]) -> NodeIndex {
        let mut i = NodeIndex::default();
        for (n, pool) in nodes {
            i.upsert(
                n,
                BTreeMap::from([("nodewave.io/pool".into(), (*pool).into())]),
            );
        }
        i
    }

    #[test]
    fn node_index_reports_only_relevant_changes() {
        let mut i = NodeIndex::default();
        assert!(i.upsert("a", BTreeMap::new()));
        assert!(!i.upsert("a", BTreeMap::new()));
        assert!(i.upsert("a", BTreeMap::from([("k".into(), "v".into())])));
        assert!(i.remove("a"));
        assert!(!i.remove("a"));
    }

    #[test]
    fn shared_node_names_follow_the_index_and_a_handed_out_copy_stays_as_it_was() {
        let mut i = NodeIndex::default();
        i.upsert("a", BTreeMap::new());
        i.upsert("b", BTreeMap::new());
        let before = i.names();
        i.upsert("b", BTreeMap::from([("k".into(), "v".into())]));
        i.upsert("c", BTreeMap::new());
        i.remove("a");
        let names = |s: &BTreeSet<NodeName>| s.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(names(&before), ["a", "b"]);
        assert_eq!(names(&i.names()), ["b", "c"]);
        // Relabelling alone shares the same set (no copy per label change).
        let shared = i.names();
        i.upsert("c", BTreeMap::from([("k".into(), "v".into())]));
        assert!(Arc::ptr_eq(&shared, &i.names()));
        i.clear();
        assert!(i.names().is_empty() && i.is_empty());
    }

    #[test]
    fn pool_label_is_detected_on_nodes_with_pods() {
        let nodes = index(&[("a", "x"), ("b", "y")]);
        let pods = vec![pod("a", "r1", true)];
        assert_eq!(
            pool_label(None, None, &nodes, &pods).as_deref(),
            Some("nodewave.io/pool")
        );
        assert_eq!(
            pool_label(Some("p"), Some("q"), &nodes, &pods).as_deref(),
            Some("p")
        );
        assert_eq!(pool_label(None, None, &nodes, &[]), None);
    }

    #[test]
    fn progress_counts_per_pool() {
        let nodes = index(&[("a", "x"), ("b", "x"), ("c", "y")]);
        let pods = vec![
            pod("a", "new", true),
            pod("b", "new", false),
            pod("c", "old", true),
            pod("d", "new", true),
        ];
        let p = progress_by_pool("new", &pods, &nodes, Some("nodewave.io/pool"));
        assert_eq!(
            p["x"],
            PoolProgress {
                updated: 2,
                ready: 1,
                total: 2
            }
        );
        assert_eq!(p["y"].updated, 0);
        assert_eq!(p["(none)"].total, 1);
        let eligible = eligible_nodes(&nodes, &pods, Some("nodewave.io/pool"));
        assert_eq!(eligible.len(), 3, "d has no Node object: {eligible:?}");
    }
}
