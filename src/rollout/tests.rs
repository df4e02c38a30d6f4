use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::*;
use crate::manifest::policy::{Approval, HealthSpec, IntOrPercent, RolloutPolicySpec, StageSpec};

mod gates;
mod nodes;
mod stages;

const OLD: &str = "old";
const NEW: &str = "new";

fn pod(node: &str, rev: &str, ready: bool) -> PodObservation {
    PodObservation {
        node: node.into(),
        name: format!("ds-{node}-{rev}").into(),
        uid: format!("uid-{node}-{rev}").into(),
        revision: rev.into(),
        ready,
        restarts: 0,
        reason: None,
        terminating: false,
    }
}

fn obs(now_ms: i64, pods: Vec<PodObservation>) -> Observation {
    Observation {
        now_ms,
        nodes: std::sync::Arc::new(pods.iter().map(|p| p.node.clone()).collect()),
        pods: pods.into(),
        control: Control::default(),
        prometheus: PromOutcome::NotConfigured,
        prometheus_stage: None,
    }
}

fn all_old(nodes: &[&str]) -> Vec<PodObservation> {
    nodes.iter().map(|n| pod(n, OLD, true)).collect()
}

fn stage(name: &str, nodes: &[&str], max: usize) -> Stage {
    let mut nodes: Vec<NodeName> = nodes.iter().map(|n| NodeName::from(*n)).collect();
    nodes.sort();
    Stage {
        name: name.to_string(),
        nodes,
        max_unavailable: max,
        bake_ms: 0,
        manual_approval: false,
    }
}

fn rules() -> HealthRules {
    HealthRules {
        ready_timeout_ms: 60_000,
        max_restarts: 2,
        fatal_reasons: vec!["CrashLoopBackOff".into(), "ImagePullBackOff".into()],
        prometheus_grace_ms: 30_000,
    }
}

fn deleted(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::DeletePod { node, .. } => Some(node.clone()),
            _ => None,
        })
        .collect()
}

fn events(actions: &[Action]) -> Vec<&'static str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Event(e) => Some(e.reason()),
            _ => None,
        })
        .collect()
}

fn failure(actions: &[Action]) -> Option<Gate> {
    actions.iter().find_map(|a| match a {
        Action::RollBack(f) => Some(f.gate),
        _ => None,
    })
}

/// Replaces the pod on `node` with a pod of `rev`.
fn set(pods: &mut Vec<PodObservation>, node: &str, rev: &str, ready: bool) {
    pods.retain(|p| *p.node != *node);
    pods.push(pod(node, rev, ready));
}

fn node(name: &str, pool: Option<&str>) -> NodeInfo {
    NodeInfo::new(name, pool)
}

fn spec_stage(name: &str, pools: &[&str]) -> StageSpec {
    StageSpec {
        name: name.to_string(),
        pools: pools.iter().map(|p| (*p).to_string()).collect(),
        nodes: None,
        max_unavailable: IntOrPercent::Count(1),
        bake: None,
        approval: None,
    }
}

fn with_stages(stages: Vec<StageSpec>) -> RolloutPolicySpec {
    RolloutPolicySpec {
        stages,
        ..RolloutPolicySpec::default()
    }
}

/// One Prometheus check named `errors` with this value and bounds.
fn check(value: Option<f64>, max: Option<f64>, min: Option<f64>) -> PromOutcome {
    PromOutcome::Values(vec![CheckValue {
        name: "errors".into(),
        value,
        max,
        min,
    }])
}

fn names(s: &Stage) -> Vec<&str> {
    s.nodes.iter().map(|n| &**n).collect()
}

// ---------------------------------------------------------------- budgets

#[test]
fn deletes_at_most_max_unavailable_in_name_order() {
    let nodes = ["n1", "n2", "n3", "n4", "n5"];
    let mut pods = all_old(&nodes);
    let o = obs(0, pods.clone());
    let r = Rollout::start("c1", NEW, vec![stage("s", &nodes, 2)], &o);
    let d = step(&r, &o, &rules());
    assert_eq!(deleted(&d.actions), vec!["n1", "n2"]);
    assert_eq!(events(&d.actions), vec!["StageStarted"]);
    assert_eq!(d.rollout.phase, Phase::Updating);

    // Deletions in flight: old pods terminating, nothing more may go.
    for p in &mut pods {
        if &*p.node == "n1" || &*p.node == "n2" {
            p.terminating = true;
        }
    }
    let d = step(&d.rollout, &obs(1000, pods.clone()), &rules());
    assert!(deleted(&d.actions).is_empty());

    // n1 replaced and Ready: one slot frees up.
    set(&mut pods, "n1", NEW, true);
    pods.retain(|p| &*p.node != "n2");
    let mut o = obs(2000, pods.clone());
    std::sync::Arc::make_mut(&mut o.nodes).insert("n2".into());
    let d = step(&d.rollout, &o, &rules());
    assert_eq!(deleted(&d.actions), vec!["n3"]);
    assert!(d.rollout.updated.contains("n1"));
    assert!(!d.rollout.replacing.contains_key("n1"));
    assert!(d.rollout.replacing.contains_key("n2"));
}

#[test]
fn unready_old_pods_go_first_and_free() {
    let nodes = ["n1", "n2", "n3"];
    let mut pods = all_old(&nodes);
    let o = obs(0, pods.clone());
    let r = Rollout::start("c1", NEW, vec![stage("s", &nodes, 1)], &o);
    // n3's old pod turns unready after the rollout began: it counts as unavailable,
    // so no healthy pod may go, but n3 itself is replaced at no cost.
    pods[2].ready = false;
    let d = step(&r, &obs(0, pods), &rules());
    assert_eq!(deleted(&d.actions), vec!["n3"]);
}

#[test]
fn baseline_unready_nodes_do_not_consume_budget() {
    let nodes = ["n1", "n2", "n3"];
    let mut pods = all_old(&nodes);
    pods[1].ready = false;
    let o = obs(0, pods);
    let r = Rollout::start("c1", NEW, vec![stage("s", &nodes, 1)], &o);
    assert_eq!(r.baseline_unready, BTreeSet::from([NodeName::from("n2")]));
    let d = step(&r, &o, &rules());
    assert_eq!(
        deleted(&d.actions),
        vec!["n2", "n1"],
        "unready first, then one healthy"
    );
}

#[test]
fn crash_restart_reissues_only_missing_deletes() {
    let nodes = ["n1", "n2", "n3", "n4"];
    let mut pods = all_old(&nodes);
    let o = obs(0, pods.clone());
    let r = Rollout::start("c1", NEW, vec![stage("s", &nodes, 2)], &o);
    let d = step(&r, &o, &rules());
    assert_eq!(deleted(&d.actions), vec!["n1", "n2"]);
    // Persisted, then killed after deleting n1 only; JSON round trip like the annotation.
    let json = serde_json::to_string(&d.rollout).unwrap();
    let persisted: Rollout = serde_json::from_str(&json).unwrap();
    assert_eq!(persisted, d.rollout);
    pods[0].terminating = true;
    let d2 = step(&persisted, &obs(5000, pods.clone()), &rules());
    assert_eq!(
        deleted(&d2.actions),
        vec!["n2"],
        "re-issued, no budget spent twice"
    );
    assert_eq!(d2.rollout.replacing["n1"].deleted_at_ms, 0);
    assert_eq!(
        d2.rollout.replacing["n2"].deleted_at_ms, 5000,
        "the ready timeout starts when the deletion takes effect"
    );
    assert!(events(&d2.actions).is_empty());
    // Right after a (re-)issued deletion the old pod may still show: it is in
    // flight, not issued again (a second actor on the same record stays quiet).
    let d3 = step(&d2.rollout, &obs(6000, pods.clone()), &rules());
    assert!(deleted(&d3.actions).is_empty(), "{:?}", d3.actions);
    assert_eq!(d3.rollout, d2.rollout, "nothing to persist while in flight");
    // Still there after REISSUE_AFTER_MS: issued again, idempotently.
    let d4 = step(
        &d3.rollout,
        &obs(5000 + super::REISSUE_AFTER_MS, pods),
        &rules(),
    );
    assert_eq!(deleted(&d4.actions), vec!["n2"]);
    assert_eq!(
        d4.rollout
            .replacing
            .keys()
            .map(|n| &**n)
            .collect::<Vec<_>>(),
        vec!["n1", "n2"]
    );
}

#[test]
fn old_pod_recreated_by_lagging_controller_is_deleted_again() {
    let nodes = ["n1"];
    let pods = all_old(&nodes);
    let o = obs(0, pods);
    let r = Rollout::start("c1", NEW, vec![stage("s", &nodes, 1)], &o);
    let d = step(&r, &o, &rules());
    assert_eq!(deleted(&d.actions), vec!["n1"]);
    let mut again = pod("n1", OLD, true);
    again.uid = "uid-2".into();
    // Within REISSUE_AFTER_MS it may just be the first one not gone yet...
    let d = step(&d.rollout, &obs(1000, vec![again.clone()]), &rules());
    assert!(deleted(&d.actions).is_empty(), "{:?}", d.actions);
    // ...after it, the old-revision pod is deleted again.
    let d = step(
        &d.rollout,
        &obs(super::REISSUE_AFTER_MS, vec![again]),
        &rules(),
    );
    assert_eq!(
        d.actions,
        vec![Action::DeletePod {
            node: "n1".into(),
            name: "ds-n1-old".into(),
            uid: "uid-2".into()
        }]
    );
    assert_eq!(d.rollout.replacing["n1"].old_pod_uid, "uid-2");
}

// ---------------------------------------------------------------- stage flow

#[test]
fn stages_run_in_order_with_bake() {
    let mut s0 = stage("canary", &["a"], 1);
    s0.bake_ms = 10_000;
    let s1 = stage("rest", &["b", "c"], 2);
    let mut pods = all_old(&["a", "b", "c"]);
    let o = obs(0, pods.clone());
    let r = Rollout::start("c1", NEW, vec![s0, s1], &o);
    let d = step(&r, &o, &rules());
    assert_eq!(deleted(&d.actions), vec!["a"], "stage 1 untouched");

    set(&mut pods, "a", NEW, true);
    let d = step(&d.rollout, &obs(1000, pods.clone()), &rules());
    assert_eq!(d.rollout.phase, Phase::Baking { since_ms: 1000 });
    assert_eq!(events(&d.actions), vec!["BakeStarted"]);
    assert!(deleted(&d.actions).is_empty());

    let d = step(&d.rollout, &obs(10_999, pods.clone()), &rules());
    assert!(d.actions.is_empty());
    let d = step(&d.rollout, &obs(11_000, pods.clone()), &rules());
    assert_eq!(events(&d.actions), vec!["StagePassed", "StageStarted"]);
    assert_eq!(deleted(&d.actions), vec!["b", "c"]);
    assert_eq!(d.rollout.stage, 1);

    set(&mut pods, "b", NEW, true);
    set(&mut pods, "c", NEW, true);
    let d = step(&d.rollout, &obs(12_000, pods.clone()), &rules());
    assert_eq!(events(&d.actions), vec!["StagePassed"]);
    assert_eq!(d.actions.last(), Some(&Action::Complete));
    assert_eq!(d.rollout.phase, Phase::Succeeded);
    // Complete is re-emitted until the reconciler drops the state.
    let again = step(&d.rollout, &obs(13_000, pods), &rules());
    assert_eq!(again.actions, vec![Action::Complete]);
}

#[test]
fn bake_restarts_when_a_pod_regresses() {
    let mut s0 = stage("s", &["a", "b"], 1);
    s0.bake_ms = 5000;
    let mut pods = vec![pod("a", NEW, true), pod("b", NEW, true)];
    let o = obs(0, pods.clone());
    let r = Rollout::start("c1", NEW, vec![s0], &o);
    let d = step(&r, &o, &rules());
    assert_eq!(d.rollout.phase, Phase::Baking { since_ms: 0 });
    pods[1].ready = false;
    let d = step(&d.rollout, &obs(3000, pods.clone()), &rules());
    assert_eq!(d.rollout.phase, Phase::Updating);
    pods[1].ready = true;
    let d = step(&d.rollout, &obs(4000, pods), &rules());
    assert_eq!(d.rollout.phase, Phase::Baking { since_ms: 4000 });
}

#[test]
fn manual_approval_waits_and_announces_once() {
    let s0 = stage("canary", &["a"], 1);
    let mut s1 = stage("rest", &["b"], 1);
    s1.manual_approval = true;
    let mut pods = all_old(&["a", "b"]);
    pods[0] = pod("a", NEW, true);
    let o = obs(0, pods.clone());
    let r = Rollout::start("c1", NEW, vec![s0, s1], &o);
    let d = step(&r, &o, &rules());
    assert_eq!(
        events(&d.actions),
        vec!["StageStarted", "StagePassed", "AwaitingApproval"]
    );
    assert_eq!(d.rollout.phase, Phase::AwaitingApproval);
    assert!(deleted(&d.actions).is_empty());

    let mut o2 = obs(1000, pods.clone());
    o2.control.approved_stage = Some(0);
    let d = step(&d.rollout, &o2, &rules());
    assert!(
        d.actions.is_empty(),
        "approval of an earlier stage does not count"
    );

    o2.control.approved_stage = Some(1);
    let d = step(&d.rollout, &o2, &rules());
    assert_eq!(events(&d.actions), vec!["StageStarted"]);
    assert_eq!(deleted(&d.actions), vec!["b"]);
}

#[test]
fn gates_keep_running_while_awaiting_approval() {
    let s0 = stage("canary", &["a"], 1);
    let mut s1 = stage("rest", &["b"], 1);
    s1.manual_approval = true;
    let mut pods = vec![pod("a", NEW, true), pod("b", OLD, true)];
    let o = obs(0, pods.clone());
    let d = step(&Rollout::start("c1", NEW, vec![s0, s1], &o), &o, &rules());
    assert_eq!(d.rollout.phase, Phase::AwaitingApproval);
    pods[0].restarts = 3;
    let d = step(&d.rollout, &obs(1000, pods), &rules());
    assert_eq!(failure(&d.actions), Some(Gate::Restarts));
}

#[test]
fn pause_stops_deletions_and_resume_continues() {
    let nodes = ["a", "b"];
    let pods = all_old(&nodes);
    let o = obs(0, pods.clone());
    let r = Rollout::start("c1", NEW, vec![stage("s", &nodes, 1)], &o);
    let mut paused = obs(0, pods.clone());
    paused.control.paused = true;
    let d = step(&r, &paused, &rules());
    assert_eq!(events(&d.actions), vec!["RolloutPaused"]);
    assert!(matches!(d.rollout.phase, Phase::Paused { .. }));
    let d = step(&d.rollout, &paused, &rules());
    assert!(d.actions.is_empty(), "Paused is announced once");

    let d = step(&d.rollout, &obs(1000, pods), &rules());
    assert_eq!(events(&d.actions), vec!["RolloutResumed", "StageStarted"]);
    assert_eq!(deleted(&d.actions), vec!["a"]);
}

#[test]
fn pause_during_bake_restarts_the_bake() {
    let mut s = stage("s", &["a"], 1);
    s.bake_ms = 10_000;
    let pods = vec![pod("a", NEW, true)];
    let o = obs(0, pods.clone());
    let d = step(&Rollout::start("c1", NEW, vec![s], &o), &o, &rules());
    assert_eq!(d.rollout.phase, Phase::Baking { since_ms: 0 });
    let mut paused = obs(5000, pods.clone());
    paused.control.paused = true;
    let d = step(&d.rollout, &paused, &rules());
    let d = step(&d.rollout, &obs(20_000, pods), &rules());
    assert_eq!(d.rollout.phase, Phase::Baking { since_ms: 20_000 });
}

#[test]
fn abort_fails_and_rolls_back_and_rollback_is_reemitted() {
    let nodes = ["a"];
    let o = obs(0, all_old(&nodes));
    let r = Rollout::start("c1", NEW, vec![stage("s", &nodes, 1)], &o);
    let mut aborted = o.clone();
    aborted.control.abort = true;
    aborted.control.paused = true;
    let d = step(&r, &aborted, &rules());
    assert_eq!(events(&d.actions), vec!["GateFailed"]);
    assert_eq!(failure(&d.actions), Some(Gate::Aborted));
    assert!(matches!(d.rollout.phase, Phase::Failed { .. }));
    let again = step(&d.rollout, &aborted, &rules());
    assert_eq!(again.actions.len(), 1);
    assert_eq!(failure(&again.actions), Some(Gate::Aborted));
}

// ---------------------------------------------------------------- rollback

#[test]
fn rollback_replaces_bad_pods_and_never_fails() {
    let nodes = ["a", "b", "c", "d"];
    let mut s = stage("s", &nodes, 1);
    s.manual_approval = true;
    let o = obs(0, all_old(&nodes));
    let forward = Rollout::start("bad", NEW, vec![s], &o);
    let mut bad_a = pod("a", NEW, false);
    bad_a.reason = Some("CrashLoopBackOff".into());
    bad_a.restarts = 9;
    let pods = vec![
        bad_a,
        pod("b", NEW, true),
        pod("c", NEW, true),
        pod("d", OLD, true),
    ];
    let mut o = obs(1000, pods);
    o.control.abort = true;
    let rb = Rollout::rollback(
        &forward,
        "good",
        "bad",
        "CrashLoopBackOff",
        OLD,
        &o,
        IntOrPercent::Percent(50),
    );
    assert_eq!(rb.commit, "good");
    assert_eq!(names(&rb.stages[0]), vec!["a", "b", "c"]);
    assert_eq!(rb.stages[0].max_unavailable, 1);
    assert_eq!(rb.baseline_unready, BTreeSet::from([NodeName::from("a")]));

    let d = step(&rb, &o, &rules());
    assert_eq!(events(&d.actions), vec!["RollbackStarted"]);
    assert_eq!(
        deleted(&d.actions),
        vec!["a", "b"],
        "crashing pod free, then budget 1"
    );
    assert_eq!(failure(&d.actions), None);

    // The replacement on a never becomes Ready: reported, never failed.
    let pods = vec![
        pod("a", OLD, false),
        pod("b", OLD, true),
        pod("c", NEW, true),
        pod("d", OLD, true),
    ];
    let d = step(&d.rollout, &obs(100_000, pods), &rules());
    assert_eq!(failure(&d.actions), None);
    assert!(!d.rollout.last_gate.as_ref().unwrap().passed);
    assert!(deleted(&d.actions).is_empty(), "a is still unavailable");

    let pods = vec![
        pod("a", OLD, true),
        pod("b", OLD, true),
        pod("c", NEW, true),
        pod("d", OLD, true),
    ];
    let d = step(&d.rollout, &obs(101_000, pods), &rules());
    assert_eq!(deleted(&d.actions), vec!["c"]);
    let pods = all_old(&nodes);
    let d = step(&d.rollout, &obs(102_000, pods), &rules());
    assert_eq!(events(&d.actions), vec!["RollbackFinished"]);
    assert_eq!(d.actions.last(), Some(&Action::Complete));
}

#[test]
fn rollback_waits_for_pending_replacements() {
    let nodes = ["a", "b"];
    let o = obs(0, all_old(&nodes));
    let forward = Rollout::start("bad", NEW, vec![stage("s", &nodes, 1)], &o);
    let d = step(&forward, &o, &rules());
    // a's old pod is gone, no replacement yet.
    let mut o = obs(1000, vec![pod("b", OLD, true)]);
    std::sync::Arc::make_mut(&mut o.nodes).insert("a".into());
    let rb = Rollout::rollback(
        &d.rollout,
        "good",
        "bad",
        "x",
        OLD,
        &o,
        IntOrPercent::Count(1),
    );
    assert_eq!(names(&rb.stages[0]), vec!["a"]);
    let d = step(&rb, &o, &rules());
    assert!(deleted(&d.actions).is_empty());
    assert_eq!(d.rollout.replacing["a"].old_pod_uid, "");
    assert_ne!(d.rollout.phase, Phase::Succeeded);
    let d = step(&d.rollout, &obs(2000, all_old(&nodes)), &rules());
    assert_eq!(d.rollout.phase, Phase::Succeeded);
}

#[test]
fn rollout_round_trips_through_json_in_every_phase() {
    let o = obs(0, all_old(&["a"]));
    let mut r = Rollout::start("c1", NEW, vec![stage("s", &["a"], 1)], &o);
    r.replacing.insert(
        "a".into(),
        Replacement {
            old_pod_uid: "u".into(),
            deleted_at_ms: 5,
        },
    );
    r.last_gate = Some(GateResult {
        at_ms: 1,
        passed: true,
        message: "ok".into(),
    });
    let failure = GateFailure {
        gate: Gate::FatalReason,
        message: "m".into(),
        nodes: vec!["a".into()],
        pods: vec!["p".into()],
    };
    for phase in [
        Phase::Pending,
        Phase::AwaitingApproval,
        Phase::Updating,
        Phase::Baking { since_ms: 3 },
        Phase::Paused {
            resume_to: Box::new(Phase::Baking { since_ms: 3 }),
        },
        Phase::Succeeded,
        Phase::Failed {
            failure: failure.clone(),
        },
    ] {
        r.phase = phase;
        let back: Rollout = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
    r.kind = RolloutKind::Rollback {
        failed_commit: "x".into(),
        reason: "y".into(),
    };
    let back: Rollout = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(back, r);
}

#[test]
fn events_have_reasons_and_messages() {
    let all = [
        RolloutEvent::StageStarted {
            stage: 0,
            name: "canary".into(),
            nodes: 2,
        },
        RolloutEvent::AwaitingApproval {
            stage: 1,
            name: "rest".into(),
        },
        RolloutEvent::BakeStarted {
            stage: 0,
            name: "canary".into(),
            bake_ms: 60_000,
        },
        RolloutEvent::StagePassed {
            stage: 0,
            name: "canary".into(),
        },
        RolloutEvent::Paused,
        RolloutEvent::Resumed,
        RolloutEvent::RollbackStarted {
            failed_commit: "abc".into(),
            reason: "r".into(),
            nodes: 3,
        },
        RolloutEvent::RollbackFinished {
            failed_commit: "abc".into(),
        },
    ];
    for e in &all {
        assert!(!e.reason().is_empty());
        assert!(!e.message().is_empty());
        assert!(e.reason().chars().next().unwrap().is_ascii_uppercase());
    }
    assert_eq!(
        all[1].message(),
        "stage 2 (rest) awaits approval: run `nodewave rollout approve <namespace>/<name>`"
    );
}

#[test]
fn rollback_leaves_nodes_on_the_good_revision_alone() {
    let nodes = ["a", "b", "c"];
    let o = obs(0, all_old(&nodes));
    let forward = Rollout::start("bad", NEW, vec![stage("s", &nodes, 1)], &o);
    // c's old pod is unready for reasons of its own; rollback must not wait for it.
    let mut stuck = pod("c", OLD, false);
    stuck.reason = Some("CrashLoopBackOff".into());
    let o = obs(1000, vec![pod("a", NEW, true), pod("b", OLD, true), stuck]);
    let rb = Rollout::rollback(
        &forward,
        "good",
        "bad",
        "r",
        OLD,
        &o,
        IntOrPercent::Count(1),
    );
    let d = step(&rb, &o, &rules());
    assert_eq!(names(&d.rollout.stages[0]), vec!["a"]);
    assert_eq!(deleted(&d.actions), vec!["a"]);
    let mut stuck = pod("c", OLD, false);
    stuck.reason = Some("CrashLoopBackOff".into());
    let o = obs(2000, vec![pod("a", OLD, true), pod("b", OLD, true), stuck]);
    let d = step(&d.rollout, &o, &rules());
    assert_eq!(d.rollout.phase, Phase::Succeeded);
}

#[test]
fn a_lost_delete_held_back_by_a_pause_does_not_time_out() {
    let nodes = ["a", "b"];
    let o = obs(0, all_old(&nodes));
    let r = Rollout::start("c1", NEW, vec![stage("s", &nodes, 1)], &o);
    let d = step(&r, &o, &rules());
    assert_eq!(deleted(&d.actions), vec!["a"]);
    // Killed before deleting; then paused for longer than the ready timeout.
    let mut paused = obs(1000, all_old(&nodes));
    paused.control.paused = true;
    let d = step(&d.rollout, &paused, &rules());
    paused.now_ms = 500_000;
    let d = step(&d.rollout, &paused, &rules());
    let d = step(&d.rollout, &obs(501_000, all_old(&nodes)), &rules());
    assert_eq!(failure(&d.actions), None);
    let at = 500_000 + super::REISSUE_AFTER_MS;
    let d = step(&d.rollout, &obs(at, all_old(&nodes)), &rules());
    assert_eq!(failure(&d.actions), None);
    assert_eq!(deleted(&d.actions), vec!["a"], "re-issued after the pause");
    assert_eq!(d.rollout.replacing["a"].deleted_at_ms, at);
}

#[test]
fn rollback_ignores_approval_and_gates_but_honours_pause() {
    let nodes = ["a"];
    let mut s = stage("s", &nodes, 1);
    s.manual_approval = true;
    let o = obs(0, all_old(&nodes));
    let forward = Rollout::start("bad", NEW, vec![s], &o);
    let mut bad = pod("a", NEW, true);
    bad.restarts = 99;
    let mut o = obs(1000, vec![bad]);
    o.control.paused = true;
    let rb = Rollout::rollback(
        &forward,
        "good",
        "bad",
        "r",
        OLD,
        &o,
        IntOrPercent::Count(1),
    );
    let d = step(&rb, &o, &rules());
    assert_eq!(events(&d.actions), vec!["RolloutPaused"]);
    o.control.paused = false;
    let d = step(&d.rollout, &o, &rules());
    assert_eq!(
        events(&d.actions),
        vec!["RolloutResumed", "RollbackStarted"]
    );
    assert_eq!(deleted(&d.actions), vec!["a"]);
    assert_eq!(failure(&d.actions), None);
}

#[test]
fn prometheus_is_not_judged_while_awaiting_approval() {
    let mut s1 = stage("rest", &["b"], 1);
    s1.manual_approval = true;
    let pods = vec![pod("a", NEW, true), pod("b", OLD, true)];
    let mut o = obs(0, pods);
    let r = Rollout::start("c1", NEW, vec![stage("canary", &["a"], 1), s1], &o);
    let d = step(&r, &o, &rules());
    assert_eq!(d.rollout.phase, Phase::AwaitingApproval);
    // Queries now cover the waiting stage, which still runs the old revision.
    o.prometheus = check(None, Some(1.0), None);
    let d = step(&d.rollout, &o, &rules());
    assert_eq!(failure(&d.actions), None);
    o.control.approved_stage = Some(1);
    let d = step(&d.rollout, &o, &rules());
    assert_eq!(failure(&d.actions), Some(Gate::Prometheus));
}

#[test]
fn long_failure_lists_are_cut_in_the_message_only() {
    let nodes: Vec<String> = (0..8).map(|i| format!("n{i}")).collect();
    let refs: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let o = obs(0, all_old(&refs));
    let r = Rollout::start("c1", NEW, vec![stage("s", &refs, 8)], &o);
    let d = step(&r, &o, &rules());
    assert_eq!(deleted(&d.actions).len(), 8);
    let crashing: Vec<PodObservation> = refs
        .iter()
        .map(|n| {
            let mut p = pod(n, NEW, false);
            p.reason = Some("CrashLoopBackOff".into());
            p
        })
        .collect();
    let d = step(&d.rollout, &obs(1000, crashing), &rules());
    let Phase::Failed { failure } = &d.rollout.phase else {
        panic!("not failed");
    };
    assert_eq!(failure.gate, Gate::FatalReason);
    assert_eq!(failure.nodes.len(), 8);
    assert!(
        failure.message.ends_with(" and 3 more"),
        "{}",
        failure.message
    );
}

#[test]
fn rollback_spends_its_own_budget_on_replacements_that_came_up() {
    let nodes = ["a", "b", "c"];
    let o = obs(0, all_old(&nodes));
    let forward = Rollout::start("bad", NEW, vec![stage("s", &nodes, 2)], &o);
    let d = step(&forward, &o, &rules());
    assert_eq!(deleted(&d.actions), vec!["a", "b"]);
    // Both replacements came up Ready on the bad revision just as the user aborted:
    // the forward state still lists them as being replaced.
    let mut o = obs(
        1000,
        vec![
            pod("a", NEW, true),
            pod("b", NEW, true),
            pod("c", OLD, true),
        ],
    );
    o.control.abort = true;
    let failed = step(&d.rollout, &o, &rules());
    assert_eq!(failure(&failed.actions), Some(Gate::Aborted));
    assert_eq!(failed.rollout.replacing.len(), 2);
    let rb = Rollout::rollback(
        &failed.rollout,
        "good",
        "bad",
        "x",
        OLD,
        &o,
        IntOrPercent::Count(1),
    );
    let d = step(&rb, &o, &rules());
    assert_eq!(
        deleted(&d.actions),
        vec!["a"],
        "one at a time, as the rollback budget says"
    );
}

#[test]
fn a_stage_with_prometheus_checks_passes_only_on_its_own_values() {
    // Two stages whose nodes already run the target revision (e.g. a first
    // rollout): without checks both pass in one step.
    let o = obs(0, vec![pod("a", NEW, true), pod("b", NEW, true)]);
    let r = Rollout::start(
        "c1",
        NEW,
        vec![stage("one", &["a"], 1), stage("two", &["b"], 1)],
        &o,
    );
    let mut o = obs(1, vec![pod("a", NEW, true), pod("b", NEW, true)]);
    o.prometheus = check(Some(0.0), Some(1.0), None);
    o.prometheus_stage = Some(0);
    let d = step(&r, &o, &rules());
    assert_eq!(
        d.rollout.stage, 1,
        "stage one passes on its own values, then waits"
    );
    assert!(
        !d.rollout.phase.is_terminal(),
        "stage two must not pass on stage one's values"
    );
    assert_eq!(
        events(&d.actions),
        vec!["StageStarted", "StagePassed", "StageStarted"]
    );

    // Values for stage two that fail the check fail the gate...
    let mut bad = o.clone();
    bad.prometheus = check(Some(5.0), Some(1.0), None);
    bad.prometheus_stage = Some(1);
    assert_eq!(
        failure(&step(&d.rollout, &bad, &rules()).actions),
        Some(Gate::Prometheus)
    );
    // ...and passing values let it finish.
    o.prometheus_stage = Some(1);
    let done = step(&d.rollout, &o, &rules());
    assert_eq!(done.rollout.phase, Phase::Succeeded);
}
