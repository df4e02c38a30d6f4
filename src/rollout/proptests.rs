//! Property tests: the planner against a small simulated cluster whose DaemonSet
//! controller recreates deleted pods from the current template, with random delays,
//! crashing revisions, stale observations and nodewave being killed mid-step.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::manifest::policy::{Approval, IntOrPercent, RolloutPolicySpec, StageSpec};

const OLD: &str = "rev-old";
const NEW: &str = "rev-new";
const TICK_MS: i64 = 1000;
const MAX_TICKS: u64 = 6000;

/// How pods of the new revision behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Healthy,
    /// Never Ready, CrashLoopBackOff after a tick or two, restarts rising.
    Crash,
    /// Never Ready, no reason: only the ready timeout catches it.
    NeverReady,
    /// Ready, but already restarted more than the gate allows.
    Restarting,
}

#[derive(Debug, Clone)]
struct Scenario {
    pool_sizes: Vec<usize>,
    poolless: usize,
    stages: Vec<StageSpec>,
    behaviour: Behaviour,
    rollback_budget: IntOrPercent,
    seed: u64,
    /// Percent of steps after which nodewave "crashes".
    crash_pct: u64,
    /// Percent of steps that see the previous observation's pods.
    stale_pct: u64,
    /// Percent of nodes whose old pod is unready from the start.
    unready_pct: u64,
    pauses: bool,
    /// Someone else evicts pods, nodes come and go.
    churn: bool,
    /// The user aborts at this tick.
    abort_at: Option<u64>,
    /// Prometheus drops out for shorter than its grace now and then.
    prom_flaky: bool,
}

fn arb_budget() -> impl Strategy<Value = IntOrPercent> {
    prop_oneof![
        (0u32..4).prop_map(IntOrPercent::Count),
        (1u32..=100).prop_map(IntOrPercent::Percent),
    ]
}

prop_compose! {
    fn arb_stage()(
        star in prop::bool::weighted(0.3),
        pools in prop::collection::vec(0usize..6, 1..3),
        canary in prop::option::of(1u32..5),
        max_unavailable in arb_budget(),
        bake_s in 0u64..4,
        approval in prop::bool::weighted(0.2),
        i in 0u32..1000,
    ) -> StageSpec {
        StageSpec {
            name: format!("stage-{i}"),
            pools: if star { vec![ALL_POOLS.to_string()] } else { pools.iter().map(|p| format!("p{p}")).collect() },
            nodes: canary,
            max_unavailable,
            bake: Some(Duration::from_secs(bake_s)),
            approval: approval.then_some(Approval::Manual),
        }
    }
}

prop_compose! {
    fn arb_scenario()(
        pool_sizes in prop::collection::vec(1usize..=8, 1..=5),
        poolless in 0usize..3,
        stages in prop::collection::vec(arb_stage(), 0..4),
        behaviour in prop_oneof![
            3 => Just(Behaviour::Healthy),
            2 => Just(Behaviour::Crash),
            1 => Just(Behaviour::NeverReady),
            1 => Just(Behaviour::Restarting),
        ],
        rollback_budget in arb_budget(),
        seed in any::<u64>(),
        crash_pct in prop_oneof![Just(0u64), 1u64..30],
        stale_pct in prop_oneof![Just(0u64), 1u64..20],
        unready_pct in prop_oneof![Just(0u64), 1u64..25],
        pauses in any::<bool>(),
        churn in any::<bool>(),
        abort_at in prop::option::weighted(0.15, 5u64..300),
        prom_flaky in any::<bool>(),
    ) -> Scenario {
        Scenario {
            pool_sizes, poolless, stages, behaviour, rollback_budget, seed, crash_pct, stale_pct,
            unready_pct, pauses, churn, abort_at, prom_flaky,
        }
    }
}

/// splitmix64: deterministic randomness for the simulation's timing.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pct(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

#[derive(Debug, Clone)]
struct SimPod {
    node: String,
    uid: u64,
    revision: String,
    born: u64,
    ready_at: u64,
    /// Original old pod that is unready for reasons of its own.
    stuck: bool,
    /// Ticks left until gone, once deleted.
    terminating: Option<u64>,
}

struct Sim {
    rng: Rng,
    tick: u64,
    template: String,
    behaviour: Behaviour,
    max_restarts: u32,
    nodes: Vec<String>,
    pods: Vec<SimPod>,
    pending: BTreeMap<String, u64>,
    next_uid: u64,
}

impl Sim {
    fn new(nodes: &[String], sc: &Scenario, max_restarts: u32) -> Self {
        let mut sim = Sim {
            rng: Rng(sc.seed),
            tick: 0,
            template: OLD.to_string(),
            behaviour: sc.behaviour,
            max_restarts,
            nodes: nodes.to_vec(),
            pods: Vec::new(),
            pending: BTreeMap::new(),
            next_uid: 0,
        };
        for n in nodes {
            let stuck = sim.rng.pct(sc.unready_pct);
            sim.next_uid += 1;
            sim.pods.push(SimPod {
                node: n.clone(),
                uid: sim.next_uid,
                revision: OLD.to_string(),
                born: 0,
                ready_at: 0,
                stuck,
                terminating: None,
            });
        }
        sim
    }

    fn is_ready(&self, p: &SimPod) -> bool {
        if p.terminating.is_some() || p.stuck || self.tick < p.ready_at {
            return false;
        }
        p.revision == OLD || matches!(self.behaviour, Behaviour::Healthy | Behaviour::Restarting)
    }

    /// The DaemonSet controller and kubelet, one tick on.
    fn advance(&mut self) {
        self.tick += 1;
        self.pods.retain_mut(|p| match &mut p.terminating {
            Some(0) => false,
            Some(t) => {
                *t -= 1;
                true
            }
            None => true,
        });
        for n in self.nodes.clone() {
            let live = self
                .pods
                .iter()
                .any(|p| p.node == n && p.terminating.is_none());
            if live {
                continue;
            }
            match self.pending.get(&n) {
                None => {
                    let at = self.tick + self.rng.below(4);
                    self.pending.insert(n, at);
                }
                Some(at) if *at <= self.tick => {
                    self.pending.remove(&n);
                    self.next_uid += 1;
                    let ready_at = self.tick + 1 + self.rng.below(5);
                    self.pods.push(SimPod {
                        node: n,
                        uid: self.next_uid,
                        revision: self.template.clone(),
                        born: self.tick,
                        ready_at,
                        stuck: false,
                        terminating: None,
                    });
                }
                Some(_) => {}
            }
        }
    }

    fn delete(&mut self, uid: &str) {
        let terminate_for = self.rng.below(3);
        if let Some(p) = self
            .pods
            .iter_mut()
            .find(|p| p.uid.to_string() == uid && p.terminating.is_none())
        {
            p.terminating = Some(terminate_for);
        }
    }

    /// An eviction by someone else: the pod is gone at once.
    fn evict(&mut self, pick: u64) -> Option<String> {
        let live: Vec<usize> = (0..self.pods.len())
            .filter(|i| self.pods[*i].terminating.is_none())
            .collect();
        let i = *live.get(usize::try_from(pick).ok()? % live.len().max(1))?;
        Some(self.pods.remove(i).node)
    }

    /// Keeps at least one original node: a rollout whose nodes all vanished before
    /// any new-revision pod was seen has nothing to judge the revision by.
    fn remove_node(&mut self, pick: u64) {
        let originals = self.nodes.iter().filter(|n| !n.starts_with("new-")).count();
        if originals > 1 {
            let i = usize::try_from(pick).unwrap_or(0) % self.nodes.len();
            let n = self.nodes.remove(i);
            self.pods.retain(|p| p.node != n);
            self.pending.remove(&n);
        }
    }

    fn add_node(&mut self, name: String) {
        self.nodes.push(name);
    }

    fn has_ready_pod(&self, node: &str) -> bool {
        self.pods.iter().any(|p| p.node == node && self.is_ready(p))
    }

    fn observe(&self, control: &Control) -> Observation {
        let pods = self
            .pods
            .iter()
            .map(|p| {
                let age = self.tick.saturating_sub(p.born);
                let bad = p.revision == NEW && self.behaviour != Behaviour::Healthy;
                let (restarts, reason) = match self.behaviour {
                    Behaviour::Crash if bad && age >= 2 => (
                        u32::try_from(age / 2).unwrap_or(u32::MAX),
                        Some("CrashLoopBackOff".to_string()),
                    ),
                    Behaviour::Restarting if bad => (self.max_restarts + 1, None),
                    _ => (0, None),
                };
                PodObservation {
                    node: p.node.as_str().into(),
                    name: format!("ds-{}", p.uid).into(),
                    uid: p.uid.to_string().into(),
                    revision: p.revision.as_str().into(),
                    ready: self.is_ready(p),
                    restarts,
                    reason: reason.map(Into::into),
                    terminating: p.terminating.is_some(),
                }
            })
            .collect();
        Observation {
            now_ms: i64::try_from(self.tick).unwrap_or(i64::MAX) * TICK_MS,
            nodes: std::sync::Arc::new(
                self.nodes
                    .iter()
                    .map(|n| NodeName::from(n.as_str()))
                    .collect(),
            ),
            pods,
            control: control.clone(),
            prometheus: PromOutcome::NotConfigured,
            prometheus_stage: None,
        }
    }

    fn unavailable(&self) -> BTreeSet<String> {
        self.nodes
            .iter()
            .filter(|n| !self.pods.iter().any(|p| &p.node == *n && self.is_ready(p)))
            .cloned()
            .collect()
    }
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Succeeded,
    RolledBack,
}

/// Runs one scenario to the end, asserting the invariants at every tick.
fn run(sc: &Scenario) -> Result<Outcome, TestCaseError> {
    let mut nodes = Vec::new();
    let mut infos = Vec::new();
    for (i, size) in sc.pool_sizes.iter().enumerate() {
        for j in 0..*size {
            let n = format!("p{i}-n{j}");
            infos.push(NodeInfo::new(n.clone(), Some(&format!("p{i}"))));
            nodes.push(n);
        }
    }
    for k in 0..sc.poolless {
        let n = format!("nopool-{k}");
        infos.push(NodeInfo::new(n.clone(), None));
        nodes.push(n);
    }
    let rules = HealthRules {
        ready_timeout_ms: 60_000,
        max_restarts: 2,
        fatal_reasons: vec!["CrashLoopBackOff".to_string()],
        prometheus_grace_ms: 60_000,
    };
    let spec = RolloutPolicySpec {
        stages: sc.stages.clone(),
        ..RolloutPolicySpec::default()
    };
    let stages = resolve_stages(&spec, &infos, &BTreeMap::new());
    let mut stage_of = BTreeMap::new();
    for (i, s) in stages.iter().enumerate() {
        for n in &s.nodes {
            prop_assert!(stage_of.insert(n.clone(), i).is_none(), "{n} in two stages");
        }
    }
    prop_assert_eq!(stage_of.len(), nodes.len(), "every node in a stage");

    let mut sim = Sim::new(&nodes, sc, rules.max_restarts);
    // The reconciler applies the new template, then starts the rollout.
    sim.template = NEW.to_string();
    let mut control = Control::default();
    let first = sim.observe(&control);
    let mut rollout = Rollout::start("c-new", NEW, stages, &first);
    // Independent of the planner's own bookkeeping: who was down before we began.
    let mut excused = sim.unavailable();
    let mut prev_pods = first.pods;
    let mut rng = Rng(sc.seed ^ 0x5555);
    let mut rolled_back = false;
    let mut evicted: BTreeSet<String> = BTreeSet::new();
    let mut added = 0;
    let mut prom_down_since: Option<i64> = None;

    while sim.tick < MAX_TICKS {
        sim.advance();
        if sc.churn {
            if rng.pct(2)
                && let Some(n) = sim.evict(rng.next())
            {
                evicted.insert(n);
            }
            if rng.pct(1) {
                sim.remove_node(rng.next());
            }
            if rng.pct(1) {
                added += 1;
                let n = format!("new-{added}");
                // Its first pod coming up is the controller's business.
                evicted.insert(n.clone());
                sim.add_node(n);
            }
        }
        // Down because of someone else, until Ready again.
        evicted.retain(|n| sim.nodes.contains(n) && !sim.has_ready_pod(n));
        if sc.pauses && rng.pct(4) {
            control.paused = !control.paused;
        }
        if rollout.phase == Phase::AwaitingApproval && rng.pct(30) {
            control.approved_stage = Some(rollout.stage);
        }
        if sc.abort_at == Some(sim.tick) {
            control.abort = true;
        }
        let mut fresh = sim.observe(&control);
        if sc.prom_flaky {
            let now = fresh.now_ms;
            prom_down_since = match prom_down_since {
                Some(since) if now - since >= 30 * TICK_MS || rng.pct(10) => None,
                None if rng.pct(5) => Some(now),
                keep => keep,
            };
            fresh.prometheus = match prom_down_since {
                Some(since_ms) => PromOutcome::Unreachable {
                    since_ms,
                    error: "connection refused".to_string(),
                },
                None => PromOutcome::Values(vec![CheckValue {
                    name: "errors".to_string(),
                    value: Some(0.0),
                    max: Some(1.0),
                    min: None,
                }]),
            };
        }
        let mut obs = fresh.clone();
        if rng.pct(sc.stale_pct) {
            obs.pods = prev_pods.clone();
        }
        prev_pods = fresh.pods;

        let d = step(&rollout, &obs, &rules);

        // Idempotence: the same observation again changes nothing and only
        // repeats deletions (or the terminal action).
        let again = step(&d.rollout, &obs, &rules);
        prop_assert_eq!(&again.rollout, &d.rollout, "step is not a fixpoint");
        for a in &again.actions {
            let ok = match a {
                Action::DeletePod { .. } => d.actions.contains(a),
                Action::Complete | Action::RollBack(_) => d.rollout.phase.is_terminal(),
                Action::Event(_) => false,
            };
            prop_assert!(ok, "second step did {a:?} after {:?}", d.actions);
        }

        // Stage order: a stage is left only when all its pods were Ready on target.
        if !rolled_back && d.rollout.stage > rollout.stage {
            for s in rollout.stage..d.rollout.stage.min(d.rollout.stages.len()) {
                for n in &d.rollout.stages[s].nodes {
                    // Gone nodes and nodes without any pod need nothing.
                    if !obs.nodes.contains(n) || !obs.pods.iter().any(|p| *p.node == **n) {
                        continue;
                    }
                    let ok = obs.pods.iter().any(|p| {
                        *p.node == **n && &*p.revision == NEW && p.ready && !p.terminating
                    });
                    prop_assert!(ok, "stage {s} passed without {n} Ready on target");
                }
            }
        }

        // nodewave may die after persisting, part-way through the actions.
        let (persist, executed) = if rng.pct(sc.crash_pct) {
            match rng.below(3) {
                0 => (false, 0),
                1 => (
                    true,
                    usize::try_from(rng.below(d.actions.len() as u64 + 1)).unwrap_or(0),
                ),
                _ => (true, d.actions.len()),
            }
        } else {
            (true, d.actions.len())
        };
        if !persist {
            continue;
        }
        let json =
            serde_json::to_string(&d.rollout).map_err(|e| TestCaseError::fail(e.to_string()))?;
        rollout = serde_json::from_str(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&rollout, &d.rollout);

        let mut done = false;
        for a in d.actions.iter().take(executed) {
            match a {
                Action::DeletePod { node, uid, .. } => {
                    if !rolled_back {
                        let st = if let Some(st) = stage_of.get(node.as_str()) {
                            Some(*st)
                        } else {
                            // Adopted: only ever into the last stage.
                            let st = rollout.stages.iter().position(|s| s.contains(node));
                            prop_assert_eq!(st, Some(rollout.stages.len() - 1));
                            st
                        };
                        prop_assert_eq!(
                            st,
                            Some(rollout.stage),
                            "deleted a pod outside the current stage"
                        );
                    }
                    sim.delete(uid);
                }
                Action::RollBack(f) => {
                    prop_assert!(!rolled_back, "a rollback never fails");
                    prop_assert!(
                        sc.behaviour != Behaviour::Healthy || f.gate == Gate::Aborted,
                        "healthy revision rolled back: {f:?}"
                    );
                    sim.template = OLD.to_string();
                    let o = sim.observe(&control);
                    rollout = Rollout::rollback(
                        &rollout,
                        "c-old",
                        "c-new",
                        &f.message,
                        OLD,
                        &o,
                        sc.rollback_budget,
                    );
                    excused = sim.unavailable();
                    rolled_back = true;
                    break;
                }
                Action::Complete => done = true,
                Action::Event(_) => {}
            }
        }

        // Budget: nodes of the current stage down because of nodewave.
        if let Some(stage) = rollout.current_stage() {
            let down = sim.unavailable();
            let ours: Vec<&NodeName> = stage
                .nodes
                .iter()
                .filter(|n| {
                    down.contains(&***n) && !excused.contains(&***n) && !evicted.contains(&***n)
                })
                .collect();
            prop_assert!(
                ours.len() <= stage.max_unavailable,
                "tick {}: {} unavailable in stage {} (max {}): {:?}",
                sim.tick,
                ours.len(),
                stage.name,
                stage.max_unavailable,
                ours
            );
        }

        if done {
            // Let terminating pods go and missing pods come, then look at the result.
            for _ in 0..10 {
                sim.advance();
            }
            let want = if rolled_back { OLD } else { NEW };
            for n in &sim.nodes {
                let revs: Vec<&str> = sim
                    .pods
                    .iter()
                    .filter(|p| &p.node == n)
                    .map(|p| p.revision.as_str())
                    .collect();
                prop_assert_eq!(revs, vec![want], "node {}", n);
            }
            return Ok(if rolled_back {
                Outcome::RolledBack
            } else {
                Outcome::Succeeded
            });
        }
    }
    let stuck: Vec<&SimPod> = sim
        .pods
        .iter()
        .filter(|p| rollout.current_stage().is_some_and(|s| s.contains(&p.node)))
        .filter(|p| p.revision != rollout.target_revision || !sim.is_ready(p))
        .collect();
    Err(TestCaseError::fail(format!(
        "no end after {MAX_TICKS} ticks: phase {:?} stage {} of {}, replacing {:?}, pods {stuck:?}",
        rollout.phase,
        rollout.stage,
        rollout.stages.len(),
        rollout.replacing,
    )))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn simulated_rollouts_are_safe_and_end_well(sc in arb_scenario()) {
        let outcome = run(&sc)?;
        // A healthy revision only rolls back when aborted (unless it finished first).
        let want = if sc.behaviour == Behaviour::Healthy { Outcome::Succeeded } else { Outcome::RolledBack };
        prop_assert!(outcome == want || sc.abort_at.is_some(), "{outcome:?}");
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn stages_partition_the_nodes(
        pool_sizes in prop::collection::vec(0usize..=8, 1..=5),
        poolless in 0usize..3,
        stages in prop::collection::vec(arb_stage(), 0..5),
        restarts in prop::collection::vec(0u32..5, 45),
    ) {
        let mut infos = Vec::new();
        for (i, size) in pool_sizes.iter().enumerate() {
            for j in 0..*size {
                infos.push(NodeInfo::new(format!("p{i}-n{j}"), Some(&format!("p{i}"))));
            }
        }
        for k in 0..poolless {
            infos.push(NodeInfo::new(format!("x{k}"), None));
        }
        let restart_map: BTreeMap<String, u32> =
            infos.iter().zip(&restarts).map(|(n, r)| (n.name.clone(), *r)).collect();
        let mut stages = stages;
        for (i, s) in stages.iter_mut().enumerate() {
            s.name = format!("s{i}");
        }
        let spec = RolloutPolicySpec { stages: stages.clone(), ..RolloutPolicySpec::default() };
        let out = resolve_stages(&spec, &infos, &restart_map);
        let mut seen = BTreeSet::new();
        for s in &out {
            prop_assert!(!s.nodes.is_empty());
            prop_assert!(s.max_unavailable >= 1);
            prop_assert!(s.nodes.windows(2).all(|w| w[0] < w[1]), "sorted");
            for n in &s.nodes {
                prop_assert!(seen.insert(n.clone()), "{} twice", n);
            }
        }
        prop_assert_eq!(seen.len(), infos.len());
        // Canaries take exactly min(N, available) nodes.
        let named: Vec<&Stage> = out.iter().filter(|s| s.name != REMAINING_STAGE).collect();
        for s in &named {
            if let Some(spec_stage) = stages.iter().find(|st| st.name == s.name)
                && let Some(limit) = spec_stage.nodes
            {
                prop_assert!(s.nodes.len() <= limit as usize);
            }
        }
        prop_assert_eq!(resolve_stages(&spec, &infos, &restart_map), out, "deterministic");
    }
}
