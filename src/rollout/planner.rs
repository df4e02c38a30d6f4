//! The state machine: `Rollout::start`, `Rollout::rollback` and `step`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::manifest::policy::IntOrPercent;

use super::gates::{self, Verdict};
use super::{
    Action, Decision, Gate, GateFailure, GateResult, HealthRules, NodeName, Observation, Phase,
    PodObservation, ROLLBACK_STAGE, Replacement, Rollout, RolloutEvent, RolloutKind, Stage,
};

/// A deletion whose pod is still seen running after this long is issued again.
pub const REISSUE_AFTER_MS: i64 = 5_000;

/// The observation's pods grouped by node, restricted to nodes that exist.
/// Hashed: it is rebuilt and queried per node on every step, and node names
/// share long prefixes that make ordered lookups compare many bytes.
struct View<'a> {
    target: &'a str,
    by_node: HashMap<&'a str, Vec<&'a PodObservation>>,
}

impl<'a> View<'a> {
    fn new(obs: &'a Observation, target: &'a str) -> Self {
        let mut by_node: HashMap<&str, Vec<&PodObservation>> = HashMap::new();
        for p in obs.pods.iter() {
            if obs.nodes.contains(&*p.node) {
                by_node.entry(&*p.node).or_default().push(p);
            }
        }
        for pods in by_node.values_mut() {
            pods.sort_by(|a, b| (&a.name, &a.uid).cmp(&(&b.name, &b.uid)));
        }
        Self { target, by_node }
    }

    fn pods(&self, node: &str) -> &[&'a PodObservation] {
        self.by_node.get(node).map_or(&[], Vec::as_slice)
    }

    fn has_pods(&self, node: &str) -> bool {
        !self.pods(node).is_empty()
    }

    fn live(&self, node: &str) -> impl Iterator<Item = &'a PodObservation> + '_ {
        self.pods(node).iter().copied().filter(|p| !p.terminating)
    }

    fn available(&self, node: &str) -> bool {
        self.live(node).any(|p| p.ready)
    }

    fn target_ready(&self, node: &str) -> bool {
        self.live(node)
            .any(|p| p.ready && *p.revision == *self.target)
    }

    /// Live pods on another revision: the ones that still need deleting.
    fn old_live(&self, node: &str) -> Vec<&'a PodObservation> {
        self.live(node)
            .filter(|p| *p.revision != *self.target)
            .collect()
    }

    fn has_old(&self, node: &str) -> bool {
        self.pods(node).iter().any(|p| *p.revision != *self.target)
    }

    /// Nodes with at least one pod that were not available.
    fn unready_nodes<'s>(&self, nodes: impl Iterator<Item = &'s NodeName>) -> BTreeSet<NodeName> {
        nodes
            .filter(|n| self.has_pods(n) && !self.available(n))
            .cloned()
            .collect()
    }
}

impl Rollout {
    /// A forward rollout of `stages`, starting with the first one at the next `step`.
    /// Records which nodes' pods are not Ready now, so they are neither counted
    /// against the budget nor blamed before nodewave touches them.
    pub fn start(
        commit: impl Into<String>,
        target_revision: impl Into<String>,
        stages: Vec<Stage>,
        obs: &Observation,
    ) -> Rollout {
        let target_revision = target_revision.into();
        let view = View::new(obs, &target_revision);
        let baseline_unready = view.unready_nodes(stages.iter().flat_map(|s| s.nodes.iter()));
        Rollout {
            commit: commit.into(),
            kind: RolloutKind::Forward,
            stages,
            stage: 0,
            phase: Phase::Pending,
            started_at_ms: obs.now_ms,
            stage_started_at_ms: obs.now_ms,
            replacing: BTreeMap::new(),
            updated: BTreeSet::new(),
            baseline_unready,
            last_gate: None,
            target_revision,
        }
    }

    /// A rollback to `target_revision` (the last good one, whose template the
    /// reconciler has just re-applied) after `from` failed.
    ///
    /// One stage, [`ROLLBACK_STAGE`], holds every existing node that still runs a pod
    /// of another revision or whose replacement `from` was waiting for; its
    /// `max_unavailable` is `budget` resolved against that node count.
    pub fn rollback(
        from: &Rollout,
        good_commit: impl Into<String>,
        failed_commit: impl Into<String>,
        reason: impl Into<String>,
        target_revision: impl Into<String>,
        obs: &Observation,
        budget: IntOrPercent,
    ) -> Rollout {
        let target_revision = target_revision.into();
        let view = View::new(obs, &target_revision);
        let nodes: Vec<NodeName> = obs
            .nodes
            .iter()
            .filter(|n| {
                !view.old_live(n).is_empty()
                    || (!view.target_ready(n)
                        && (view.has_old(n) || from.replacing.contains_key(*n)))
            })
            .cloned()
            .collect();
        let baseline_unready = view.unready_nodes(nodes.iter());
        let stages = if nodes.is_empty() {
            Vec::new()
        } else {
            vec![Stage {
                name: ROLLBACK_STAGE.to_string(),
                max_unavailable: budget.resolve(nodes.len()),
                nodes,
                bake_ms: 0,
                manual_approval: false,
            }]
        };
        Rollout {
            commit: good_commit.into(),
            kind: RolloutKind::Rollback {
                failed_commit: failed_commit.into(),
                reason: reason.into(),
            },
            stages,
            stage: 0,
            phase: Phase::Pending,
            started_at_ms: obs.now_ms,
            stage_started_at_ms: obs.now_ms,
            // Not carried over: `from`'s entries reserve budget of another stage, and
            // the pods they wait for are the ones to delete now. A node still
            // without a pod is tracked again by the first step.
            replacing: BTreeMap::new(),
            updated: BTreeSet::new(),
            baseline_unready,
            last_gate: None,
            target_revision,
        }
    }
}

/// Advances `rollout` by one observation. Pure and deterministic; safe to call again
/// with the same or a newer observation at any time (see the module docs).
///
/// * `Succeeded` re-emits `Complete` and `Failed` re-emits `RollBack` on every call,
///   because the persisted state proves the action has not completed yet.
/// * `control.abort` fails a forward rollout with [`Gate::Aborted`].
/// * `control.paused` stops deletions and gates (bookkeeping continues); resuming
///   into `Baking` restarts the bake.
/// * Otherwise the current stage is driven: lost deletions are re-issued, gates are
///   evaluated, old pods are deleted within the stage's budget, and finished stages
///   are baked and passed, possibly several stages within one call.
pub fn step(rollout: &Rollout, obs: &Observation, rules: &HealthRules) -> Decision {
    let mut p = Planner {
        r: rollout.clone(),
        obs,
        rules,
        view: View::new(obs, &rollout.target_revision),
        actions: Vec::new(),
    };
    p.run();
    Decision {
        rollout: p.r,
        actions: p.actions,
    }
}

struct Planner<'a> {
    r: Rollout,
    obs: &'a Observation,
    rules: &'a HealthRules,
    view: View<'a>,
    actions: Vec<Action>,
}

impl Planner<'_> {
    fn run(&mut self) {
        match &self.r.phase {
            Phase::Succeeded => {
                self.actions.push(Action::Complete);
                return;
            }
            Phase::Failed { failure } => {
                self.actions.push(Action::RollBack(failure.clone()));
                return;
            }
            _ => {}
        }
        let obs = self.obs;
        self.r.replacing.retain(|n, _| obs.nodes.contains(n));
        self.adopt_new_nodes();

        // Abort is ignored by rollbacks: the abort annotation usually outlives the
        // forward rollout it stopped, and a rollback has nothing to fall back to.
        if obs.control.abort && !self.r.is_rollback() {
            self.fail(GateFailure {
                gate: Gate::Aborted,
                message: "rollout aborted by user".to_string(),
                nodes: Vec::new(),
                pods: Vec::new(),
            });
            return;
        }
        if obs.control.paused {
            if !matches!(self.r.phase, Phase::Paused { .. }) {
                let current = std::mem::replace(&mut self.r.phase, Phase::Pending);
                self.r.phase = Phase::Paused {
                    resume_to: Box::new(current),
                };
                self.event(RolloutEvent::Paused);
            }
            // Keep `replacing`/`updated` current, but deleting is exactly what a pause
            // stops. A stage that has not started yet is left alone.
            if let Phase::Paused { resume_to } = &self.r.phase
                && matches!(**resume_to, Phase::Updating | Phase::Baking { .. })
            {
                let _ = self.track();
            }
            return;
        }
        if let Phase::Paused { resume_to } = &self.r.phase {
            self.r.phase = match resume_to.as_ref() {
                // Time spent paused did not prove anything; soak again.
                Phase::Baking { .. } => Phase::Baking {
                    since_ms: obs.now_ms,
                },
                other => other.clone(),
            };
            self.event(RolloutEvent::Resumed);
        }

        // Each pass either stops or moves the phase forward (at most Pending →
        // AwaitingApproval → Updating → Baking → next stage), so this bounds the loop.
        for _ in 0..=4 * (self.r.stages.len() + 1) {
            let more = match self.r.phase {
                Phase::Pending => self.begin_stage(),
                Phase::AwaitingApproval => self.await_approval(),
                Phase::Updating | Phase::Baking { .. } => self.drive(),
                Phase::Paused { .. } | Phase::Succeeded | Phase::Failed { .. } => false,
            };
            if !more {
                break;
            }
        }
    }

    fn now(&self) -> i64 {
        self.obs.now_ms
    }

    fn event(&mut self, e: RolloutEvent) {
        self.actions.push(Action::Event(e));
    }

    fn is_approved(&self) -> bool {
        self.obs
            .control
            .approved_stage
            .is_some_and(|a| a >= self.r.stage)
    }

    /// Nodes pods appeared on that no stage knows: the DaemonSet now runs there, so
    /// they join the last stage, which is still ahead or current as long as the
    /// rollout is not finished. A rollback adopts nothing: its stage deliberately
    /// omits nodes already on the good revision, and pods on new nodes come from
    /// the good template anyway.
    fn adopt_new_nodes(&mut self) {
        if self.r.is_rollback() {
            return;
        }
        let unknown: Vec<&str> = self
            .view
            .by_node
            .keys()
            .copied()
            .filter(|n| !self.r.stages.iter().any(|s| s.contains(n)))
            .collect();
        if let Some(last) = self.r.stages.last_mut() {
            for n in unknown {
                last.insert_node(n);
            }
        }
    }

    /// Nodes of the current stage that exist. A node whose pod is missing (evicted,
    /// not yet recreated) still counts: passing a stage needs a Ready target pod on
    /// every node, or a canary could pass without a single pod of the new revision
    /// having been seen healthy.
    fn counted_nodes(&self) -> Vec<NodeName> {
        let Some(stage) = self.r.current_stage() else {
            return Vec::new();
        };
        stage
            .nodes
            .iter()
            .filter(|n| self.obs.nodes.contains(*n))
            .cloned()
            .collect()
    }

    fn is_unavailable(&self, node: &str) -> bool {
        if self.r.replacing.contains_key(node) {
            return true;
        }
        if self.view.available(node) {
            return false;
        }
        // Unready before nodewave touched it: not nodewave's doing.
        !self.r.baseline_unready.contains(node) || self.view.old_live(node).is_empty()
    }

    fn begin_stage(&mut self) -> bool {
        let Some(stage) = self.r.current_stage() else {
            self.finish();
            return false;
        };
        if stage.manual_approval && !self.r.is_rollback() && !self.is_approved() {
            let e = RolloutEvent::AwaitingApproval {
                stage: self.r.stage,
                name: stage.name.clone(),
            };
            self.r.phase = Phase::AwaitingApproval;
            self.event(e);
            return true;
        }
        self.start_updating();
        true
    }

    fn await_approval(&mut self) -> bool {
        if self.is_approved() {
            self.start_updating();
            return true;
        }
        // Earlier stages keep being watched: nobody should approve a stage while the
        // canary crashes, and waiting for approval can take hours. Prometheus is
        // left out: its queries cover the waiting stage, which still runs the old
        // revision, so a failure there says nothing about the new one.
        let _ = self.check_gates(false);
        false
    }

    fn start_updating(&mut self) {
        self.r.phase = Phase::Updating;
        self.r.stage_started_at_ms = self.now();
        let nodes = self.counted_nodes().len();
        let e = match (&self.r.kind, self.r.current_stage()) {
            (
                RolloutKind::Rollback {
                    failed_commit,
                    reason,
                },
                _,
            ) => RolloutEvent::RollbackStarted {
                failed_commit: failed_commit.clone(),
                reason: reason.clone(),
                nodes,
            },
            (RolloutKind::Forward, Some(s)) => RolloutEvent::StageStarted {
                stage: self.r.stage,
                name: s.name.clone(),
                nodes,
            },
            (RolloutKind::Forward, None) => return,
        };
        self.event(e);
    }

    /// One pass over `Updating`/`Baking`. Returns whether the stage passed and the
    /// loop should go on with the next one.
    fn drive(&mut self) -> bool {
        let redeletes = self.track();
        let prom_current = self.prometheus_is_current();
        if !self.check_gates(prom_current) {
            return false;
        }
        self.actions.extend(redeletes);

        let Some(stage) = self.r.current_stage() else {
            self.finish();
            return false;
        };
        let bake_ms = stage.bake_ms;
        let complete = self.counted_nodes().iter().all(|n| self.settled(n));
        if !complete {
            // Something regressed during the bake (eviction, new node, a pod going
            // unready): soak again from scratch once it is whole.
            self.r.phase = Phase::Updating;
            self.plan_deletions();
            return false;
        }
        match self.r.phase {
            Phase::Updating if bake_ms > 0 => {
                let e = RolloutEvent::BakeStarted {
                    stage: self.r.stage,
                    name: stage.name.clone(),
                    bake_ms,
                };
                self.r.phase = Phase::Baking {
                    since_ms: self.now(),
                };
                self.event(e);
                false
            }
            Phase::Baking { since_ms }
                if u64::try_from(self.now().saturating_sub(since_ms)).unwrap_or(0) < bake_ms =>
            {
                false
            }
            // A stage with Prometheus checks passes only on values queried for it:
            // wait for the next step, when the reconciler queries this stage's nodes.
            _ if !prom_current => false,
            _ => {
                self.pass_stage();
                true
            }
        }
    }

    /// A node is done when it runs a Ready pod on the target revision. In a
    /// rollback, a node whose pod was already not Ready when the rollback began and
    /// now runs the target revision (the good one) is done too: its readiness is
    /// not the rollback's to fix, and waiting for it would never end.
    fn settled(&self, node: &str) -> bool {
        self.view.target_ready(node)
            || (self.r.is_rollback()
                && self.r.baseline_unready.contains(node)
                && self.view.old_live(node).is_empty()
                && self.obs.pods.iter().any(|p| {
                    *p.node == *node && !p.terminating && *p.revision == *self.r.target_revision
                }))
    }

    fn prometheus_is_current(&self) -> bool {
        matches!(self.obs.prometheus, gates::PromOutcome::NotConfigured)
            || self.obs.prometheus_stage.is_none_or(|s| s == self.r.stage)
    }

    /// Bookkeeping for the current stage: finished replacements move to `updated`,
    /// nodes waiting for a target pod nodewave did not cause get a ready deadline
    /// too, and deletions that may have been lost in a crash are returned to be
    /// issued again (the node is already counted as unavailable, so no budget is
    /// spent twice).
    fn track(&mut self) -> Vec<Action> {
        let mut redeletes = Vec::new();
        let now = self.now();
        for n in self.counted_nodes() {
            if self.view.target_ready(&n) {
                self.r.replacing.remove(&n);
                self.r.updated.insert(n);
                continue;
            }
            let olds = self.view.old_live(&n);
            if let Some(rep) = self.r.replacing.get_mut(&n) {
                if let Some(first) = olds.first()
                    && !olds.iter().any(|p| p.uid == *rep.old_pod_uid)
                {
                    rep.old_pod_uid = first.uid.to_string();
                }
                // The old pod is still running. Right after the deletion that is
                // normal (it takes a moment to show as terminating); past
                // `REISSUE_AFTER_MS` the deletion was lost (a crash between the
                // record write and the delete, or a pause): it is issued again, and
                // the ready timeout, which measures the replacement, starts over.
                // Not re-issuing at once keeps a second actor working from the same
                // record (two replicas, a deposed leader) from deleting it twice.
                if !olds.is_empty() && now - rep.deleted_at_ms >= REISSUE_AFTER_MS {
                    rep.deleted_at_ms = now;
                    redeletes.extend(olds.iter().map(|p| delete(p)));
                }
            } else if olds.is_empty() {
                // A target pod nodewave did not ask for, or no pod at all: wait for
                // it like for a replacement, with the same deadline.
                self.r.replacing.insert(
                    n,
                    Replacement {
                        old_pod_uid: String::new(),
                        deleted_at_ms: now,
                    },
                );
            }
        }
        redeletes
    }

    /// Deletes old pods of the current stage: unready ones freely (they are not
    /// serving anyway, as the DaemonSet controller does it), Ready ones only while
    /// fewer than `max_unavailable` nodes are unavailable. Node-name order.
    fn plan_deletions(&mut self) {
        let Some(stage) = self.r.current_stage() else {
            return;
        };
        let max = stage.max_unavailable;
        let counted = self.counted_nodes();
        let unavailable = counted.iter().filter(|n| self.is_unavailable(n)).count();
        let mut budget = max.saturating_sub(unavailable);
        let mut candidates: Vec<(bool, NodeName)> = counted
            .into_iter()
            .filter(|n| !self.r.replacing.contains_key(n) && !self.view.target_ready(n))
            .filter(|n| !self.view.old_live(n).is_empty())
            .map(|n| (self.view.available(&n), n))
            .collect();
        candidates.sort();
        let now = self.now();
        for (serving, n) in candidates {
            if serving {
                if budget == 0 {
                    break;
                }
                budget -= 1;
            }
            let olds = self.view.old_live(&n);
            let Some(first) = olds.first() else {
                continue;
            };
            self.r.replacing.insert(
                n,
                Replacement {
                    old_pod_uid: first.uid.to_string(),
                    deleted_at_ms: now,
                },
            );
            self.actions.extend(olds.iter().map(|p| delete(p)));
        }
    }

    /// Evaluates the gates. Returns false when the rollout failed (forward only);
    /// a rollback only records the verdict and ignores Prometheus.
    fn check_gates(&mut self, with_prometheus: bool) -> bool {
        let forward = !self.r.is_rollback();
        match gates::evaluate(&self.r, self.obs, self.rules, forward && with_prometheus) {
            Verdict::Pass(message) => {
                self.note_gate(true, message);
                true
            }
            Verdict::Fail(f) if forward => {
                self.fail(f);
                false
            }
            Verdict::Fail(f) => {
                self.note_gate(false, f.message);
                true
            }
        }
    }

    fn note_gate(&mut self, passed: bool, message: String) {
        let same = self
            .r
            .last_gate
            .as_ref()
            .is_some_and(|g| g.passed == passed && g.message == message);
        if !same {
            self.r.last_gate = Some(GateResult {
                at_ms: self.now(),
                passed,
                message,
            });
        }
    }

    fn fail(&mut self, failure: GateFailure) {
        self.r.last_gate = Some(GateResult {
            at_ms: self.now(),
            passed: false,
            message: failure.message.clone(),
        });
        self.r.phase = Phase::Failed {
            failure: failure.clone(),
        };
        self.event(RolloutEvent::GateFailed(failure.clone()));
        self.actions.push(Action::RollBack(failure));
    }

    fn pass_stage(&mut self) {
        if let (RolloutKind::Forward, Some(s)) = (&self.r.kind, self.r.current_stage()) {
            let e = RolloutEvent::StagePassed {
                stage: self.r.stage,
                name: s.name.clone(),
            };
            self.event(e);
        }
        self.r.stage += 1;
        self.r.replacing.clear();
        self.r.stage_started_at_ms = self.now();
        if self.r.stage >= self.r.stages.len() {
            self.finish();
        } else {
            self.r.phase = Phase::Pending;
        }
    }

    fn finish(&mut self) {
        self.r.stage = self.r.stages.len();
        self.r.phase = Phase::Succeeded;
        if let RolloutKind::Rollback { failed_commit, .. } = &self.r.kind {
            let e = RolloutEvent::RollbackFinished {
                failed_commit: failed_commit.clone(),
            };
            self.event(e);
        }
        self.actions.push(Action::Complete);
    }
}

fn delete(p: &PodObservation) -> Action {
    Action::DeletePod {
        node: (*p.node).to_owned(),
        name: p.name.to_string(),
        uid: p.uid.to_string(),
    }
}
