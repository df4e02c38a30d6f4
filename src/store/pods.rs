//! The pod index: what the planner reads of each DaemonSet pod, kept compact.
//!
//! A fleet has one pod per node and DaemonSet, so this is the one index that
//! grows with nodes × DaemonSets (105,021 pods for 21 DaemonSets on 5,001
//! nodes). Each pod keeps the few fields the planner reads as a
//! [`PodObservation`]; the strings many pods share (node names, revisions,
//! reasons, owner UIDs) are stored once, and the pod UID once for both maps. The
//! strings are reference-counted, so the copy a reconcile takes of a
//! DaemonSet's pods allocates nothing per pod.

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, PodSpec};
use kube::ResourceExt;

use crate::keys;
use crate::rollout::{PodObservation, PodUid};

/// Strings many pods share, each stored once. Strings no pod refers to any more
/// (a node gone, a revision replaced) are dropped whenever the table has doubled
/// since the last sweep, so it stays proportional to what is in use.
#[derive(Debug, Default)]
struct Interner {
    strings: HashSet<Arc<str>>,
    live_after_sweep: usize,
}

/// The table is not swept below this size: sweeping a small table buys nothing.
const SWEEP_FLOOR: usize = 512;

impl Interner {
    /// The stored copy of `s`, which becomes the stored copy when there is none.
    fn share(&mut self, s: Arc<str>) -> Arc<str> {
        if let Some(a) = self.strings.get(&s) {
            return Arc::clone(a);
        }
        self.strings.insert(Arc::clone(&s));
        if self.strings.len() > 2 * self.live_after_sweep.max(SWEEP_FLOOR) {
            self.sweep();
        }
        s
    }

    fn get(&mut self, s: &str) -> Arc<str> {
        match self.strings.get(s) {
            Some(a) => Arc::clone(a),
            None => self.share(Arc::from(s)),
        }
    }

    /// Drops the strings only this table still holds.
    fn sweep(&mut self) {
        self.strings.retain(|s| Arc::strong_count(s) > 1);
        self.live_after_sweep = self.strings.len();
    }
}

/// A stored pod, ordered and found by its UID (so the UID is not kept twice).
#[derive(Debug)]
struct ByUid(PodObservation);

impl PartialEq for ByUid {
    fn eq(&self, other: &Self) -> bool {
        self.0.uid == other.0.uid
    }
}

impl Eq for ByUid {}

impl Ord for ByUid {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.uid.cmp(&other.0.uid)
    }
}

impl PartialOrd for ByUid {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Borrow<PodUid> for ByUid {
    fn borrow(&self) -> &PodUid {
        &self.0.uid
    }
}

/// Pods of DaemonSets by owner UID, as the planner observes them.
#[derive(Debug, Default)]
pub struct PodIndex {
    /// Owner UID → its pods, ordered by pod UID so reconciles see a stable order.
    by_owner: HashMap<Arc<str>, BTreeSet<ByUid>>,
    /// Pod UID → owner UID.
    owner_of: HashMap<PodUid, Arc<str>>,
    strings: Interner,
}

impl PodIndex {
    /// The pods of the DaemonSet with this UID, in a stable order.
    pub fn of(&self, owner_uid: &str) -> Arc<[PodObservation]> {
        self.by_owner
            .get(owner_uid)
            .map(|m| m.iter().map(|p| p.0.clone()).collect())
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.owner_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.owner_of.is_empty()
    }

    /// Returns whether the stored observation changed.
    pub(super) fn upsert(&mut self, owner: &str, mut pod: PodObservation) -> bool {
        if let Some(prev) = self.owner_of.get(&pod.uid).map(Arc::clone) {
            if *prev == *owner {
                let stored = self.by_owner.get(owner).and_then(|m| m.get(&pod.uid));
                if stored.is_some_and(|s| s.0 == pod) {
                    return false;
                }
            } else {
                // The pod changed owners (an adopted orphan): move it.
                self.detach(&prev, &pod.uid);
            }
        }
        pod.node = self.strings.share(pod.node);
        pod.revision = self.strings.share(pod.revision);
        pod.reason = pod.reason.map(|r| self.strings.share(r));
        let stem = self.strings.share(Arc::clone(pod.name.stem()));
        pod.name = pod.name.with_stem(stem);
        let owner = self.strings.get(owner);
        self.owner_of.insert(pod.uid.clone(), Arc::clone(&owner));
        self.by_owner.entry(owner).or_default().replace(ByUid(pod));
        true
    }

    /// Forgets a pod; returns the UID of its owner.
    pub(super) fn remove(&mut self, uid: &PodUid) -> Option<String> {
        let owner = self.owner_of.remove(uid)?;
        self.detach(&owner, uid);
        Some(owner.as_ref().to_owned())
    }

    fn detach(&mut self, owner: &str, uid: &PodUid) {
        if let Some(m) = self.by_owner.get_mut(owner) {
            m.remove(uid);
            if m.is_empty() {
                self.by_owner.remove(owner);
            }
        }
    }

    pub(super) fn uids(&self) -> Vec<PodUid> {
        self.owner_of.keys().cloned().collect()
    }
}

pub(super) fn observe_pod(p: &Pod) -> Option<(String, PodObservation)> {
    let owner = p
        .metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.kind == "DaemonSet" && o.controller == Some(true))?
        .uid
        .clone();
    let spec = p.spec.as_ref()?;
    let node = spec
        .node_name
        .clone()
        .or_else(|| daemon_pod_target_node(spec))?;
    let status = p.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let statuses = status
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    let restarts = statuses
        .iter()
        .map(|c| u32::try_from(c.restart_count).unwrap_or(0))
        .fold(0u32, u32::saturating_add);
    let reason = statuses
        .iter()
        .find_map(|c| {
            let st = c.state.as_ref()?;
            st.waiting
                .as_ref()
                .and_then(|w| w.reason.clone())
                .or_else(|| st.terminated.as_ref().and_then(|t| t.reason.clone()))
        })
        .or_else(|| {
            statuses.iter().find_map(|c| {
                let t = c.last_state.as_ref()?.terminated.as_ref()?;
                (t.reason.as_deref() == Some("OOMKilled")).then(|| "OOMKilled".to_string())
            })
        });
    Some((
        owner,
        PodObservation {
            node: node.into(),
            name: p.name_any().into(),
            uid: p.metadata.uid.as_deref().unwrap_or_default().into(),
            revision: p
                .labels()
                .get(keys::REVISION_HASH_LABEL)
                .map_or("", String::as_str)
                .into(),
            ready,
            restarts,
            reason: reason.map(Into::into),
            terminating: p.metadata.deletion_timestamp.is_some(),
        },
    ))
}

/// The node a DaemonSet pod is meant for before the scheduler has bound it: the
/// DaemonSet controller pins each pod with a `metadata.name` node-affinity field.
fn daemon_pod_target_node(spec: &PodSpec) -> Option<String> {
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms.iter().find_map(|t| {
        t.match_fields.as_ref()?.iter().find_map(|f| {
            (f.key == "metadata.name" && f.operator == "In")
                .then(|| f.values.as_ref()?.first().cloned())
                .flatten()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, node: &str, revision: &str, ready: bool) -> PodObservation {
        PodObservation {
            node: node.into(),
            name: format!("agent-{uid}").into(),
            uid: uid.into(),
            revision: revision.into(),
            ready,
            restarts: 0,
            reason: None,
            terminating: false,
        }
    }

    #[test]
    fn an_unchanged_event_is_no_change_and_a_changed_one_is() {
        let mut idx = PodIndex::default();
        assert!(idx.upsert("ds-1", pod("u1", "n1", "r1", false)));
        assert!(!idx.upsert("ds-1", pod("u1", "n1", "r1", false)));
        assert!(idx.upsert("ds-1", pod("u1", "n1", "r1", true)));
        let mut crashing = pod("u1", "n1", "r1", true);
        crashing.reason = Some("CrashLoopBackOff".into());
        crashing.restarts = 3;
        assert!(idx.upsert("ds-1", crashing.clone()));
        assert_eq!(idx.of("ds-1").to_vec(), vec![crashing]);
        assert_eq!(idx.len(), 1);
    }

    #[test]
    fn pods_come_back_whole_in_uid_order_per_owner() {
        let mut idx = PodIndex::default();
        idx.upsert("ds-1", pod("u3", "n3", "r1", true));
        idx.upsert("ds-1", pod("u1", "n1", "r1", true));
        idx.upsert("ds-2", pod("u2", "n1", "r9", false));
        assert_eq!(
            idx.of("ds-1").to_vec(),
            vec![pod("u1", "n1", "r1", true), pod("u3", "n3", "r1", true)]
        );
        assert_eq!(idx.of("ds-2").to_vec(), vec![pod("u2", "n1", "r9", false)]);
        assert!(idx.of("ds-3").is_empty());
        assert_eq!(idx.len(), 3);
    }

    #[test]
    fn a_pod_that_changes_owner_moves() {
        let mut idx = PodIndex::default();
        idx.upsert("ds-1", pod("u1", "n1", "r1", true));
        assert!(idx.upsert("ds-2", pod("u1", "n1", "r1", true)));
        assert!(idx.of("ds-1").is_empty());
        assert_eq!(idx.of("ds-2").len(), 1);
        assert_eq!(idx.remove(&"u1".into()).as_deref(), Some("ds-2"));
        assert!(idx.is_empty());
        assert!(
            idx.by_owner.is_empty(),
            "an owner without pods is forgotten"
        );
    }

    #[test]
    fn removing_returns_the_owner_once() {
        let mut idx = PodIndex::default();
        idx.upsert("ds-1", pod("u1", "n1", "r1", true));
        idx.upsert("ds-1", pod("u2", "n2", "r1", true));
        assert_eq!(idx.remove(&"u1".into()).as_deref(), Some("ds-1"));
        assert_eq!(idx.remove(&"u1".into()), None);
        assert_eq!(idx.uids(), vec![PodUid::from("u2")]);
        assert_eq!(idx.of("ds-1").to_vec(), vec![pod("u2", "n2", "r1", true)]);
    }

    #[test]
    fn shared_strings_are_stored_once() {
        let mut idx = PodIndex::default();
        for i in 0..100 {
            idx.upsert("ds-1", pod(&format!("a{i}"), &format!("n{i}"), "r1", true));
            idx.upsert("ds-2", pod(&format!("b{i}"), &format!("n{i}"), "r2", true));
        }
        // 100 node names, 2 revisions, 2 owners, 1 name stem ("agent-").
        assert_eq!(idx.strings.strings.len(), 105);
        let stored = |owner: &str, uid: &str| {
            &idx.by_owner[owner]
                .get(&PodUid::from(uid))
                .unwrap_or_else(|| panic!("{uid} is stored"))
                .0
        };
        let (a, b) = (stored("ds-1", "a7"), stored("ds-2", "b7"));
        assert!(Arc::ptr_eq(&a.node, &b.node));
        assert!(Arc::ptr_eq(a.name.stem(), b.name.stem()));
    }

    #[test]
    fn strings_no_pod_uses_are_dropped_as_revisions_roll() {
        let mut idx = PodIndex::default();
        // 3,000 revisions in turn on 10 pods: only the last one stays in use.
        for r in 0..3_000 {
            for i in 0..10 {
                idx.upsert(
                    "ds-1",
                    pod(&format!("u{i}"), &format!("n{i}"), &format!("r{r}"), true),
                );
            }
        }
        assert!(
            idx.strings.strings.len() <= 2 * SWEEP_FLOOR + 1,
            "table holds {} strings",
            idx.strings.strings.len()
        );
        idx.strings.sweep();
        // 10 node names, 1 revision, 1 owner, 1 name stem.
        assert_eq!(idx.strings.strings.len(), 13);
        assert!(idx.of("ds-1").iter().all(|p| &*p.revision == "r2999"));
    }
}
