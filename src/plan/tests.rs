//! Every rule of `decide`, without a cluster: each test builds the inputs a
//! reconcile would gather and checks the decision, then replays the persisted
//! state where a crash could happen.

use std::collections::BTreeMap;

use serde_json::json;

use super::*;
use crate::manifest::policy::{HealthSpec, IntOrPercent, RollbackSpec, StageSpec};
use crate::record::{ApplyMode, FailedCommit, RecordState, SyncStatus, Work};
use crate::rollout::{Control, HealthRules, NodeName, Phase, PodObservation, Rollout, RolloutKind};

const POOL: &str = "nodewave.io/pool";

fn nodes() -> NodeIndex {
    let mut n = NodeIndex::default();
    for pool in ["a", "b", "c"] {
        for i in 1..=2 {
            n.upsert(
                &format!("{pool}{i}"),
                BTreeMap::from([(POOL.to_string(), pool.to_string())]),
            );
        }
    }
    n
}

fn policy() -> RolloutPolicySpec {
    RolloutPolicySpec {
        stages: ["a", "b", "c"]
            .iter()
            .map(|p| StageSpec {
                name: (*p).to_string(),
                pools: vec![(*p).to_string()],
                nodes: None,
                max_unavailable: IntOrPercent::Count(1),
                bake: None,
                approval: None,
            })
            .collect(),
        health: HealthSpec::default(),
        rollback: RollbackSpec::default(),
        ..RolloutPolicySpec::default()
    }
}

fn desired(commit: &str, image: &str) -> DesiredDs {
    DesiredDs {
        key: ObjectKey::new("ns", "agent"),
        commit: commit.to_string(),
        object: json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "agent", "namespace": "ns"},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": image}]}}}}),
        hash: format!("hash-{image}"),
        policy: policy(),
    }
}

fn live(generation: i64, observed: i64) -> LiveDs {
    LiveDs {
        generation,
        observed_generation: observed,
        desired_scheduled: 6,
        managed: true,
        same_source: true,
    }
}

fn pod(node: &str, rev: &str) -> PodObservation {
    PodObservation {
        node: node.into(),
        name: format!("agent-{node}-{rev}").into(),
        uid: format!("uid-{node}-{rev}").into(),
        revision: rev.into(),
        ready: true,
        restarts: 0,
        reason: None,
        terminating: false,
    }
}

fn all_pods(rev: &str) -> Vec<PodObservation> {
    nodes().names().iter().map(|n| pod(n, rev)).collect()
}

fn empty_diff() -> Difference {
    Difference {
        paths: Vec::new(),
        unified: String::new(),
    }
}

fn template_diff() -> Difference {
    Difference {
        paths: vec!["spec.template.spec.containers[0].image".into()],
        unified: "-old\n+new\n".into(),
    }
}

fn synced_at(d: &DesiredDs) -> RecordState {
    RecordState {
        status: SyncStatus::Synced,
        applied: Some(d.target()),
        last_good: Some(d.commit.clone()),
        ..RecordState::default()
    }
}

/// The record of a forward apply of `d` started at `since_ms`, after `last_good`.
fn applying(d: &DesiredDs, last_good: Option<&str>, since_ms: i64) -> RecordState {
    RecordState {
        status: SyncStatus::Progressing,
        applied: Some(d.target()),
        last_good: last_good.map(String::from),
        work: Work::Applying {
            target: d.target(),
            mode: ApplyMode::Forward,
            since_ms,
        },
        ..RecordState::default()
    }
}

/// A scenario: owned inputs from which `Inputs` are borrowed.
struct S {
    key: ObjectKey,
    settings: Settings,
    desired: Option<DesiredDs>,
    fresh: bool,
    prune_allowed: bool,
    live: Option<LiveDs>,
    record: Option<RecordState>,
    invalid: Option<String>,
    pods: Vec<PodObservation>,
    nodes: NodeIndex,
    control: Control,
    diff: Option<(String, Difference)>,
    revision: Option<String>,
    revision_pending: bool,
    rollback_target: Option<DesiredDs>,
    prometheus: Option<(PromOutcome, usize)>,
    /// Most scenarios move Git forward; the lineage tests set this.
    lineage: Option<Lineage>,
    /// The snapshot's commit when it differs from the desired DaemonSet's.
    snapshot: Option<String>,
    now: i64,
}

impl S {
    fn new(d: Option<DesiredDs>) -> Self {
        Self {
            key: ObjectKey::new("ns", "agent"),
            settings: Settings {
                self_heal: true,
                prune: true,
                pool_label: None,
                allow_takeover: false,
            },
            desired: d,
            fresh: true,
            prune_allowed: true,
            live: None,
            record: None,
            invalid: None,
            pods: Vec::new(),
            nodes: nodes(),
            control: Control::default(),
            diff: None,
            revision: None,
            revision_pending: false,
            rollback_target: None,
            prometheus: None,
            lineage: Some(Lineage::Ancestor),
            snapshot: None,
            now: 1_000_000,
        }
    }

    fn decide(&self) -> Decision {
        let pods: std::sync::Arc<[PodObservation]> = self.pods.clone().into();
        let inputs = Inputs {
            key: &self.key,
            now_ms: self.now,
            settings: &self.settings,
            desired: self.desired.as_ref(),
            fresh: self.fresh,
            prune_allowed: self.prune_allowed,
            live: self.live.as_ref(),
            record: match (&self.invalid, &self.record) {
                (Some(e), _) => RecordView::Invalid(e),
                (None, Some(r)) => RecordView::Valid(r),
                (None, None) => RecordView::Missing,
            },
            pods: &pods,
            nodes: &self.nodes,
            control: self.control.clone(),
            diff: self.diff.as_ref().map(|(h, d)| (h.as_str(), d)),
            revision: self.revision.as_deref(),
            revision_pending: self.revision_pending,
            rollback_target: self.rollback_target.as_ref(),
            prometheus: self.prometheus.clone(),
            lineage: self.lineage,
            snapshot_commit: self
                .snapshot
                .as_deref()
                .or(self.desired.as_ref().map(|d| d.commit.as_str()))
                .unwrap_or("c-snapshot"),
        };
        decide(&inputs)
    }

    fn plan(&self) -> Plan {
        match self.decide() {
            Decision::Plan(p) => *p,
            Decision::Need(n) => panic!("expected a plan, got a need: {n:?}"),
        }
    }

    fn need(&self) -> Need {
        match self.decide() {
            Decision::Need(n) => n,
            Decision::Plan(p) => panic!("expected a need, got a plan: {p:?}"),
        }
    }

    /// Persists the plan's write, as the controller would.
    fn persist(&mut self, p: &Plan) {
        if let Some(w) = &p.write {
            self.record = Some(w.clone());
        }
    }
}

fn applies(p: &Plan) -> usize {
    p.actions
        .iter()
        .filter(|a| matches!(a, Act::Apply(_)))
        .count()
}

fn deletes(p: &Plan) -> Vec<String> {
    p.actions
        .iter()
        .filter_map(|a| match a {
            Act::DeletePod { node, .. } => Some(node.clone()),
            _ => None,
        })
        .collect()
}

fn events(p: &Plan) -> Vec<String> {
    p.actions
        .iter()
        .filter_map(|a| match a {
            Act::Event { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

/// Drives a fresh DaemonSet change up to the first stage: returns the scenario
/// with the rollout persisted.
fn rolling_scenario() -> S {
    rolling_start().0
}

/// [`rolling_scenario`], and the plan that started the rollout (persisted).
fn rolling_start() -> (S, Plan) {
    let v1 = desired("c1", "v1");
    let v2 = desired("c2", "v2");
    let mut s = S::new(Some(v2.clone()));
    s.live = Some(live(1, 1));
    s.record = Some(synced_at(&v1));
    s.pods = all_pods("r1");
    s.diff = Some((v2.hash.clone(), template_diff()));
    let p = s.plan();
    s.persist(&p);
    // Applied; the controller observed generation 2 and made revision r2.
    s.live = Some(live(2, 2));
    s.diff = Some((v2.hash.clone(), empty_diff()));
    s.revision = Some("r2".into());
    let p = s.plan();
    s.persist(&p);
    assert!(matches!(
        s.record.as_ref().unwrap().work,
        Work::Rolling { .. }
    ));
    (s, p)
}

#[test]
fn a_new_daemonset_is_recorded_before_it_is_applied() {
    let d = desired("c1", "v1");
    let s = S::new(Some(d.clone()));
    let p = s.plan();
    let w = p.write.as_ref().expect("record first");
    assert!(matches!(
        &w.work,
        Work::Applying { target, mode: ApplyMode::Forward, .. } if target.hash == d.hash
    ));
    assert_eq!(w.status, SyncStatus::Progressing);
    assert_eq!(applies(&p), 1);
}

#[test]
fn an_unchanged_daemonset_costs_nothing() {
    let d = desired("c1", "v1");
    let mut s = S::new(Some(d.clone()));
    s.live = Some(live(1, 1));
    s.record = Some(synced_at(&d));
    s.pods = all_pods("r1");
    // Without a diff it asks for one (the controller caches it per live version)...
    assert_eq!(
        s.need(),
        Need::Diff {
            hash: d.hash.clone()
        }
    );
    // ...and with it there is nothing to write and nothing to do.
    s.diff = Some((d.hash.clone(), empty_diff()));
    let p = s.plan();
    assert_eq!(p, Plan::default());
}

#[test]
fn a_template_change_is_staged_pool_by_pool_after_the_controller_observed_it() {
    let v1 = desired("c1", "v1");
    let v2 = desired("c2", "v2");
    let mut s = S::new(Some(v2.clone()));
    s.live = Some(live(1, 1));
    s.record = Some(synced_at(&v1));
    s.pods = all_pods("r1");
    s.diff = Some((v2.hash.clone(), template_diff()));
    let p = s.plan();
    assert!(matches!(
        p.write.as_ref().unwrap().work,
        Work::Applying { .. }
    ));
    assert_eq!(applies(&p), 1);
    assert!(deletes(&p).is_empty());
    s.persist(&p);

    // Crash right after the apply, and the controller-manager is stopped: the
    // live template matches but its generation is not observed, and the
    // revision lookup finds none current. Nothing is Synced, nothing is
    // deleted, no rollout is computed yet.
    s.live = Some(live(2, 1));
    s.diff = Some((v2.hash.clone(), empty_diff()));
    assert_eq!(s.need(), Need::Revision);
    s.revision_pending = true;
    let p = s.plan();
    assert_eq!(p.write, None, "a moment of lag is normal");
    assert_eq!(p.wake_at_ms, Some(s.now + CONTROLLER_LAG_WARN_MS));
    s.now += CONTROLLER_LAG_WARN_MS;
    let p = s.plan();
    assert!(deletes(&p).is_empty());
    assert_eq!(applies(&p), 0);
    let w = p.write.expect("explains the wait");
    assert_eq!(w.status, SyncStatus::Progressing);
    assert!(
        w.message.contains("kube-controller-manager"),
        "{}",
        w.message
    );
    assert!(matches!(w.work, Work::Applying { .. }));

    // The controller catches up: the revision is asked for, then stages resolved
    // and the first step taken on them: stage a starts with one deletion, and the
    // one write that starts the rollout records it first.
    s.live = Some(live(2, 2));
    s.revision_pending = false;
    assert_eq!(s.need(), Need::Revision);
    s.revision = Some("r2".into());
    let p = s.plan();
    assert!(!p.write_can_wait);
    let w = p
        .write
        .as_ref()
        .expect("the planner's state is written before deleting");
    let Work::Rolling { rollout, target } = &w.work else {
        panic!("{p:?}");
    };
    assert_eq!(target.hash, v2.hash);
    assert_eq!(rollout.target_revision, "r2");
    let names: Vec<&str> = rollout.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(rollout.phase, Phase::Updating);
    assert_eq!(rollout.replacing.len(), 1);
    assert_eq!(deletes(&p).len(), 1);
    assert!(deletes(&p)[0].starts_with('a'));
    assert_eq!(events(&p), ["RolloutStarted", "StageStarted"]);
    let position = |pred: fn(&Act) -> bool| p.actions.iter().position(pred);
    assert!(
        position(|a| matches!(a, Act::Log(l) if l.message == "rollout started"))
            < position(|a| matches!(a, Act::DeletePod { .. })),
        "{:?}",
        p.actions
    );
    assert!(p.wake_at_ms.is_some_and(|w| w > s.now), "{p:?}");
    s.persist(&p);

    // The next step finds the deletion recorded and deletes nothing more (budget 1).
    let p = s.plan();
    assert!(deletes(&p).is_empty(), "{p:?}");
}

#[test]
fn a_rollout_starts_once_the_controller_made_the_template_current_before_it_reports_the_generation()
{
    let v1 = desired("c1", "v1");
    let v2 = desired("c2", "v2");
    let mut s = S::new(Some(v2.clone()));
    s.record = Some(applying(&v2, Some(&v1.commit), s.now));
    // Generation 2 not observed yet, but its revision r2 is the newest and
    // holds the live template: the controller has it, so deleting is safe.
    s.live = Some(live(2, 1));
    s.pods = all_pods("r1");
    s.diff = Some((v2.hash.clone(), empty_diff()));
    assert_eq!(s.need(), Need::Revision);
    s.revision = Some("r2".into());
    let p = s.plan();
    let Work::Rolling { rollout, .. } = &p.write.as_ref().expect("started").work else {
        panic!("{p:?}");
    };
    assert_eq!(rollout.target_revision, "r2");
    assert_eq!(deletes(&p).len(), 1);
}

#[test]
fn a_first_stage_with_prometheus_checks_is_stepped_after_the_rollout_start_is_stored() {
    let mut v2 = desired("c2", "v2");
    v2.policy.health.prometheus = Some(crate::manifest::policy::PrometheusSpec {
        url: "http://prometheus.invalid:9090".into(),
        interval: std::time::Duration::from_secs(30),
        unreachable_grace: std::time::Duration::from_mins(2),
        checks: Vec::new(),
    });
    let v1 = desired("c1", "v1");
    let mut s = S::new(Some(v2.clone()));
    s.record = Some(applying(&v2, Some(&v1.commit), s.now));
    s.live = Some(live(2, 2));
    s.pods = all_pods("r1");
    s.diff = Some((v2.hash.clone(), empty_diff()));
    s.revision = Some("r2".into());
    // Prometheus is queried for the stage of the stored rollout, so the start is
    // written alone and the first deletion waits for the next reconcile.
    let p = s.plan();
    let Work::Rolling { rollout, .. } = &p.write.as_ref().expect("the start").work else {
        panic!("{p:?}");
    };
    assert_eq!(rollout.phase, Phase::Pending);
    assert!(deletes(&p).is_empty());
    assert_eq!(events(&p), ["RolloutStarted"]);
    assert_eq!(p.wake_at_ms, Some(s.now));
    s.persist(&p);
    assert_eq!(s.need(), Need::Prometheus);
}

#[test]
fn a_new_daemonset_waits_for_its_pods_before_resolving_stages() {
    let d = desired("c1", "v1");
    let mut s = S::new(Some(d.clone()));
    s.record = Some(applying(&d, None, s.now));
    s.live = Some(LiveDs {
        desired_scheduled: 0,
        ..live(1, 1)
    });
    s.diff = Some((d.hash.clone(), empty_diff()));
    s.revision = Some("r1".into());
    // The controller has counted no node yet: give it a moment.
    let p = s.plan();
    assert!(p.write.is_none());
    assert_eq!(p.wake_at_ms, Some(s.now + NEW_DAEMONSET_GRACE_MS + 1));
    // Six nodes counted, pods on four: wait (bounded).
    s.live = Some(live(1, 1));
    s.pods = all_pods("r1").into_iter().take(4).collect();
    let p = s.plan();
    assert!(p.write.is_none());
    // All six there (one not Ready yet, so stage a is still open after the
    // first step): the rollout starts and covers them.
    s.pods = all_pods("r1");
    s.pods[0].ready = false;
    let p = s.plan();
    let Work::Rolling { rollout, .. } = &p.write.unwrap().work else {
        panic!()
    };
    let covered: usize = rollout.stages.iter().map(|s| s.nodes.len()).sum();
    assert_eq!(covered, 6);
}

#[test]
fn a_rollout_with_nothing_to_replace_is_finished_by_the_write_that_starts_it() {
    let d = desired("c1", "v1");
    let mut s = S::new(Some(d.clone()));
    s.record = Some(applying(&d, None, s.now));
    s.live = Some(live(1, 1));
    s.diff = Some((d.hash.clone(), empty_diff()));
    s.revision = Some("r1".into());
    // A new DaemonSet: its pods came up on the target revision, all Ready.
    s.pods = all_pods("r1");
    let p = s.plan();
    let w = p.write.as_ref().expect("one write");
    assert!(matches!(w.work, Work::Idle), "{w:?}");
    assert_eq!(w.status, SyncStatus::Synced);
    assert_eq!(w.last_good.as_deref(), Some("c1"));
    assert!(deletes(&p).is_empty());
    let reasons = events(&p);
    assert_eq!(reasons.first().map(String::as_str), Some("RolloutStarted"));
    assert_eq!(reasons.last().map(String::as_str), Some("RolloutSucceeded"));
}

#[test]
fn a_revert_to_running_content_is_synced_without_touching_pods() {
    let v1 = desired("c1", "v1");
    let revert = desired("c3", "v1");
    let mut s = S::new(Some(revert.clone()));
    s.live = Some(live(3, 3));
    s.record = Some(RecordState {
        status: SyncStatus::RolledBack,
        ..synced_at(&v1)
    });
    s.pods = all_pods("r1");
    s.diff = Some((revert.hash.clone(), empty_diff()));
    let p = s.plan();
    let w = p.write.as_ref().unwrap();
    assert_eq!(w.status, SyncStatus::Synced);
    assert_eq!(w.last_good.as_deref(), Some("c3"));
    assert_eq!(w.applied.as_ref().unwrap().commit, "c3");
    assert_eq!(applies(&p), 0);
    assert!(deletes(&p).is_empty());
}

#[test]
fn drift_is_undone_with_self_heal_and_only_reported_without() {
    let d = desired("c1", "v1");
    let mut s = S::new(Some(d.clone()));
    s.live = Some(live(2, 2));
    s.record = Some(synced_at(&d));
    s.pods = all_pods("r1");
    s.diff = Some((d.hash.clone(), template_diff()));
    let p = s.plan();
    assert!(events(&p).contains(&"DriftDetected".to_string()));
    assert!(p.actions.contains(&Act::Count(Count::Drift)));
    assert_eq!(applies(&p), 1);
    assert!(matches!(p.write.unwrap().work, Work::Applying { .. }));

    s.settings.self_heal = false;
    let p = s.plan();
    assert_eq!(applies(&p), 0);
    let w = p.write.unwrap();
    assert_eq!(w.status, SyncStatus::OutOfSync);
    assert!(matches!(w.work, Work::Idle));
}

#[test]
fn a_change_outside_the_template_is_applied_in_place() {
    let v1 = desired("c1", "v1");
    let mut v2 = desired("c2", "v1");
    v2.hash = "hash-labels".into();
    let mut s = S::new(Some(v2.clone()));
    s.live = Some(live(1, 1));
    s.record = Some(synced_at(&v1));
    s.diff = Some((
        v2.hash.clone(),
        Difference {
            paths: vec!["metadata.labels.team".into()],
            unified: String::new(),
        },
    ));
    let p = s.plan();
    let w = p.write.clone().unwrap();
    assert!(matches!(
        w.work,
        Work::Applying {
            mode: ApplyMode::InPlace,
            ..
        }
    ));
    assert_eq!(
        w.status,
        SyncStatus::Synced,
        "no Progressing flash for a label"
    );
    s.persist(&p);
    s.diff = Some((v2.hash.clone(), empty_diff()));
    let p = s.plan();
    let w = p.write.unwrap();
    assert!(matches!(w.work, Work::Idle));
    assert_eq!(w.last_good.as_deref(), Some("c2"));
}

#[test]
fn a_failed_gate_is_recorded_then_rolled_back_to_the_last_good_commit() {
    let (mut s, p) = rolling_start();
    let v1 = desired("c1", "v1");
    // Stage a's first pod came up crash-looping on the new revision.
    let victim = deletes(&p)[0].clone();
    s.pods.retain(|p| *p.node != *victim);
    let mut bad = pod(&victim, "r2");
    bad.ready = false;
    bad.reason = Some("CrashLoopBackOff".into());
    s.pods.push(bad);
    s.now += 1000;
    let p = s.plan();
    let w = p.write.clone().expect("the failure is recorded first");
    assert!(
        matches!(&w.work, Work::Rolling { rollout, .. } if matches!(rollout.phase, Phase::Failed { .. }))
    );
    assert_eq!(w.failed.len(), 1);
    assert_eq!(w.failed[0].hash, "hash-v2");
    assert_eq!(applies(&p), 0, "nothing is applied in the same step");
    assert!(
        p.actions
            .iter()
            .any(|a| matches!(a, Act::Count(Count::GateFailed(_))))
    );
    s.persist(&p);

    // Next look: the last good commit is needed, then applied, record first.
    assert_eq!(
        s.need(),
        Need::RollbackTarget {
            commit: "c1".into()
        }
    );
    s.rollback_target = Some(v1.clone());
    let p = s.plan();
    let w = p.write.clone().unwrap();
    assert!(
        matches!(&w.work, Work::Applying { target, mode: ApplyMode::Rollback { .. }, .. } if target.commit == "c1")
    );
    assert_eq!(applies(&p), 1);
    assert!(p.actions.iter().any(|a| matches!(
        a,
        Act::Count(Count::RolloutFinished {
            outcome: Outcome::RolledBack,
            ..
        })
    )));
    s.persist(&p);

    // The good template is live and observed: a one-stage rollback starts.
    s.live = Some(live(3, 3));
    s.diff = Some((v1.hash.clone(), empty_diff()));
    s.revision = Some("r1".into());
    let p = s.plan();
    let Work::Rolling { rollout, .. } = &p.write.as_ref().unwrap().work else {
        panic!("{p:?}")
    };
    assert!(matches!(rollout.kind, RolloutKind::Rollback { .. }));
    assert_eq!(rollout.stages.len(), 1);
    assert_eq!(
        rollout.stages[0].nodes,
        vec![NodeName::from(victim.as_str())]
    );
    s.persist(&p);

    // The failed content is never re-applied by itself, even after the rollback.
    s.pods.retain(|p| *p.node != *victim);
    s.pods.push(pod(&victim, "r1"));
    let p = s.plan();
    s.persist(&p);
    let st = s.record.clone().unwrap();
    assert_eq!(st.status, SyncStatus::RolledBack, "{st:?}");
    assert!(matches!(st.work, Work::Idle));
    s.diff = Some(("hash-v2".into(), template_diff()));
    let p = s.plan();
    assert_eq!(applies(&p), 0);
}

#[test]
fn a_first_rollout_that_fails_is_degraded_not_rolled_back() {
    let d = desired("c1", "v1");
    let mut s = S::new(Some(d.clone()));
    let mut failed = Rollout::start("c1", "r1", Vec::new(), &observation());
    failed.phase = Phase::Failed {
        failure: crate::rollout::GateFailure {
            gate: crate::rollout::Gate::FatalReason,
            message: "CrashLoopBackOff".into(),
            nodes: vec![],
            pods: vec![],
        },
    };
    s.live = Some(live(1, 1));
    s.diff = Some((d.hash.clone(), empty_diff()));
    s.record = Some(RecordState {
        status: SyncStatus::Progressing,
        applied: Some(d.target()),
        failed: vec![FailedCommit {
            commit: "c1".into(),
            hash: d.hash.clone(),
            reason: "CrashLoopBackOff".into(),
            at: "t".into(),
        }],
        work: Work::Rolling {
            target: d.target(),
            rollout: failed,
        },
        ..RecordState::default()
    });
    let p = s.plan();
    let w = p.write.clone().unwrap();
    assert_eq!(w.status, SyncStatus::Degraded);
    assert!(w.message.contains("no last good commit"), "{}", w.message);
    assert!(events(&p).contains(&"RolloutDegraded".to_string()));
    assert_eq!(applies(&p), 0);
    s.persist(&p);
    // And it stays so: the same content is not retried.
    let p = s.plan();
    assert_eq!(p, Plan::default());
}

fn observation() -> crate::rollout::Observation {
    crate::rollout::Observation {
        now_ms: 0,
        nodes: std::sync::Arc::default(),
        pods: std::sync::Arc::default(),
        control: Control::default(),
        prometheus: PromOutcome::NotConfigured,
        prometheus_stage: None,
    }
}

#[test]
fn drift_during_a_rollout_is_undone_before_any_pod_is_deleted() {
    let mut s = rolling_scenario();
    // Someone switched updateStrategy back to RollingUpdate.
    s.diff = Some((
        "hash-v2".into(),
        Difference {
            paths: vec!["spec.updateStrategy.type".into()],
            unified: String::new(),
        },
    ));
    let p = s.plan();
    assert!(deletes(&p).is_empty());
    assert_eq!(applies(&p), 1);
    assert!(events(&p).contains(&"DriftDetected".to_string()));
    assert!(p.write.is_none(), "the record already justifies the apply");
}

#[test]
fn a_newer_commit_supersedes_the_rollout_in_progress() {
    let mut s = rolling_scenario();
    let v3 = desired("c3", "v3");
    s.desired = Some(v3.clone());
    s.diff = Some((v3.hash.clone(), template_diff()));
    let p = s.plan();
    assert!(
        matches!(&p.write.as_ref().unwrap().work, Work::Applying { target, .. } if target.commit == "c3")
    );
    assert_eq!(applies(&p), 1);
}

#[test]
fn removed_from_git_is_pruned_record_first_and_only_when_allowed() {
    let d = desired("c1", "v1");
    let mut s = S::new(None);
    s.live = Some(live(1, 1));
    s.record = Some(synced_at(&d));
    let p = s.plan();
    assert!(matches!(p.write.as_ref().unwrap().work, Work::Pruning));
    assert_eq!(
        p.actions
            .iter()
            .filter(|a| matches!(a, Act::DeleteDaemonSet | Act::DeleteRecord))
            .count(),
        2
    );
    // Replayed after a crash between the write and the delete.
    s.persist(&p);
    let p = s.plan();
    assert!(p.write.is_none());
    assert!(p.actions.contains(&Act::DeleteDaemonSet));

    s.record = Some(synced_at(&d));
    s.prune_allowed = false;
    let p = s.plan();
    assert!(!p.actions.contains(&Act::DeleteDaemonSet));
    s.prune_allowed = true;
    s.settings.prune = false;
    let p = s.plan();
    assert!(!p.actions.contains(&Act::DeleteDaemonSet));
    // A DaemonSet someone else manages is never touched.
    s.settings.prune = true;
    s.live = Some(LiveDs {
        same_source: false,
        ..live(1, 1)
    });
    assert_eq!(s.plan().actions, vec![]);
}

#[test]
fn an_unmanaged_daemonset_is_not_taken_over_without_opt_in() {
    let d = desired("c1", "v1");
    let mut s = S::new(Some(d.clone()));
    s.live = Some(LiveDs {
        managed: false,
        same_source: false,
        ..live(1, 1)
    });
    let p = s.plan();
    assert_eq!(applies(&p), 0);
    assert!(events(&p).contains(&"TakeoverRefused".to_string()));
    assert_eq!(p.write.as_ref().unwrap().status, SyncStatus::OutOfSync);
    // Reported once, not on every look.
    s.persist(&p);
    assert_eq!(s.plan(), Plan::default());
    // Opted in by the annotation in Git.
    let mut opted = d.clone();
    opted.object["metadata"]["annotations"] = json!({keys::ALLOW_TAKEOVER: "true"});
    s.desired = Some(opted.clone());
    s.diff = Some((opted.hash.clone(), template_diff()));
    assert_eq!(applies(&s.plan()), 1);
}

#[test]
fn a_stale_replica_applies_nothing_older_than_what_runs() {
    let running = desired("c5", "v5");
    let old = desired("c4", "v4");
    let mut s = S::new(Some(old.clone()));
    s.fresh = false;
    s.lineage = None;
    s.live = Some(live(1, 1));
    s.record = Some(synced_at(&running));
    s.diff = Some((old.hash.clone(), template_diff()));
    assert_eq!(
        s.need(),
        Need::Lineage {
            recorded: "c5".into(),
            snapshot: "c4".into()
        }
    );
    for lineage in [Lineage::Ahead, Lineage::Rewritten] {
        s.lineage = Some(lineage);
        let p = s.plan();
        assert_eq!(applies(&p), 0, "{lineage:?}");
        assert!(
            p.write
                .unwrap()
                .message
                .contains("waiting for a successful fetch")
        );
    }
    // When what runs is an ancestor of the clone's head, it may proceed.
    s.lineage = Some(Lineage::Ancestor);
    assert_eq!(applies(&s.plan()), 1);
    // After a fetch, a rewritten branch is Git's word.
    s.lineage = Some(Lineage::Rewritten);
    s.fresh = true;
    assert_eq!(applies(&s.plan()), 1);
}

/// A replica whose fetch lags another's must not act on its older commit in any
/// state of the record: not record it as synced over a newer template (the pods
/// would then never be replaced), not re-apply it, not prune what is newer.
#[test]
fn a_replica_behind_the_record_decides_nothing_and_writes_nothing() {
    let newer = desired("c2", "v2");
    let older = desired("c1", "v1");
    let mut s = S::new(Some(older.clone()));
    s.lineage = Some(Lineage::Ahead);
    s.live = Some(live(2, 2));
    // Idle at c2: the older commit's diff against the c2 template is not empty,
    // and if this replica's live view still showed c1 it would be empty.
    for diff in [template_diff(), empty_diff()] {
        s.record = Some(synced_at(&newer));
        s.diff = Some((older.hash.clone(), diff));
        let p = s.plan();
        assert_eq!(p.write, None);
        assert_eq!(applies(&p), 0);
        assert!(p.wake_at_ms.is_some(), "looks again soon");
    }
    // Applying c2, and rolling out c2.
    let mut applying = synced_at(&newer);
    applying.work = Work::Applying {
        target: newer.target(),
        mode: ApplyMode::Forward,
        since_ms: s.now,
    };
    s.record = Some(applying);
    let p = s.plan();
    assert_eq!((p.write.is_none(), applies(&p)), (true, 0));
    // Not in this replica's commit at all (added in c2): not pruned.
    s.desired = None;
    s.snapshot = Some("c1".into());
    s.record = Some(synced_at(&newer));
    let p = s.plan();
    assert_eq!(p.write, None);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    // Once its fetch catches up (the record's commit is an ancestor), it acts.
    s.desired = Some(older.clone());
    s.snapshot = None;
    s.lineage = Some(Lineage::Ancestor);
    s.diff = Some((older.hash.clone(), template_diff()));
    assert_eq!(applies(&s.plan()), 1);
    // The same commit as recorded needs no lineage at all.
    s.lineage = None;
    s.record = Some(synced_at(&older));
    s.diff = Some((older.hash.clone(), empty_diff()));
    assert_eq!(s.plan(), Plan::default());
}

#[test]
fn an_unreadable_record_is_reported_and_nothing_acts_on_it() {
    let d = desired("c1", "v1");
    let mut s = S::new(Some(d));
    s.live = Some(live(1, 1));
    s.invalid = Some("not gzip".into());
    let p = s.plan();
    assert!(p.write.is_none());
    assert_eq!(applies(&p), 0);
    assert_eq!(events(&p), ["RecordInvalid"]);
}

#[test]
fn controls_apply_only_to_the_rollout_they_name() {
    let mut spec = crate::record::RecordSpec {
        paused: true,
        abort_commit: Some("c2".into()),
        approved_stage: Some(crate::record::StageApproval {
            commit: "c2".into(),
            stage: 1,
        }),
        ..Default::default()
    };
    let r = Rollout::start("c2", "r2", Vec::new(), &observation());
    let c = control_for(&spec, Some(&r));
    assert!(c.paused && c.abort);
    assert_eq!(c.approved_stage, Some(1));
    spec.abort_commit = Some("c1".into());
    spec.approved_stage.as_mut().unwrap().commit = "c1".into();
    let c = control_for(&spec, Some(&r));
    assert!(!c.abort);
    assert_eq!(c.approved_stage, None);
}

#[test]
fn deadlines_wake_an_open_rollout_without_events() {
    let s = rolling_scenario();
    let Work::Rolling { rollout, .. } = &s.record.as_ref().unwrap().work else {
        panic!()
    };
    let rules = HealthRules::default();
    let mut r = rollout.clone();
    r.phase = Phase::Baking { since_ms: 100 };
    r.stages[0].bake_ms = 50;
    assert_eq!(next_deadline(&r, &rules, &policy(), 120), 151);
    r.phase = Phase::AwaitingApproval;
    assert_eq!(
        next_deadline(&r, &rules, &policy(), 120),
        120 + OPEN_WORK_RESYNC_MS
    );
}

#[test]
fn bookkeeping_alone_may_wait_but_a_deletion_or_a_new_stage_never_does() {
    let (mut s, p) = rolling_start();
    assert_eq!(deletes(&p), ["a1"]);
    assert!(
        !p.write_can_wait,
        "the record that justifies a deletion is written before it"
    );

    // The deleted pod is gone and the other node of stage a lost its pod too
    // (evicted): nodewave tracks it, with nothing to delete (the budget of 1 is
    // spent). Only bookkeeping changed, so the write may wait.
    s.pods.retain(|p| !p.node.starts_with('a'));
    let p = s.plan();
    assert!(deletes(&p).is_empty());
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    let w = p.write.as_ref().expect("the missing pod is tracked");
    assert!(matches!(&w.work, Work::Rolling { rollout, .. } if rollout.replacing.len() == 2));
    assert!(p.write_can_wait);

    // That write never happened (it waited, then the process died). The next step
    // derives the same from the stored record: both replacements Ready pass stage
    // a, and stage b starts with a deletion, which is never deferred.
    s.pods.push(pod("a1", "r2"));
    s.pods.push(pod("a2", "r2"));
    let p = s.plan();
    assert_eq!(deletes(&p), ["b1"]);
    assert!(!p.write_can_wait);
    let w = p.write.as_ref().expect("stage b is recorded first");
    assert!(matches!(&w.work, Work::Rolling { rollout, .. }
        if rollout.stage == 1 && rollout.updated.contains("a1") && rollout.updated.contains("a2")));
}
