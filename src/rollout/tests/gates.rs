//! Health gates: readiness, restarts, fatal reasons, the ready timeout, Prometheus.

use super::*;

fn one_replaced(p: PodObservation, now: i64) -> Decision {
    let nodes = ["a", "b"];
    let o = obs(0, all_old(&nodes));
    let r = Rollout::start("c1", NEW, vec![stage("s", &nodes, 1)], &o);
    let d = step(&r, &o, &rules());
    assert_eq!(deleted(&d.actions), vec!["a"]);
    step(
        &d.rollout,
        &obs(now, vec![p, pod("b", OLD, true)]),
        &rules(),
    )
}

#[test]
fn fatal_reason_fails_at_once() {
    let mut p = pod("a", NEW, false);
    p.reason = Some("ImagePullBackOff".into());
    let d = one_replaced(p, 1000);
    assert_eq!(failure(&d.actions), Some(Gate::FatalReason));
    let Phase::Failed { failure } = &d.rollout.phase else {
        panic!("not failed: {:?}", d.rollout.phase);
    };
    assert_eq!(failure.nodes, vec!["a"]);
    assert_eq!(failure.pods, vec!["ds-a-new"]);
    assert_eq!(events(&d.actions), vec!["GateFailed"]);
    assert!(matches!(d.actions.last(), Some(Action::RollBack(_))));
}

#[test]
fn unknown_reason_is_not_fatal() {
    let mut p = pod("a", NEW, false);
    p.reason = Some("ContainerCreating".into());
    let d = one_replaced(p, 1000);
    assert_eq!(failure(&d.actions), None);
}

#[test]
fn too_many_restarts_fail() {
    let mut p = pod("a", NEW, true);
    p.restarts = 2;
    assert_eq!(failure(&one_replaced(p.clone(), 1000).actions), None);
    p.restarts = 3;
    assert_eq!(
        failure(&one_replaced(p, 1000).actions),
        Some(Gate::Restarts)
    );
}

#[test]
fn ready_timeout_fails_only_after_the_timeout() {
    let p = pod("a", NEW, false);
    assert_eq!(failure(&one_replaced(p.clone(), 60_000).actions), None);
    assert_eq!(
        failure(&one_replaced(p, 60_001).actions),
        Some(Gate::ReadyTimeout)
    );
}

#[test]
fn replacement_never_created_times_out() {
    let nodes = ["a", "b"];
    let o = obs(0, all_old(&nodes));
    let r = Rollout::start("c1", NEW, vec![stage("s", &nodes, 1)], &o);
    let d = step(&r, &o, &rules());
    let mut later = obs(60_001, vec![pod("b", OLD, true)]);
    std::sync::Arc::make_mut(&mut later.nodes).insert("a".into());
    let d = step(&d.rollout, &later, &rules());
    assert_eq!(failure(&d.actions), Some(Gate::ReadyTimeout));
}

#[test]
fn old_revision_and_untouched_baseline_pods_are_never_blamed() {
    let nodes = ["a", "b", "c"];
    let mut pods = all_old(&nodes);
    pods[1].ready = false;
    pods[1].restarts = 40;
    pods[1].reason = Some("CrashLoopBackOff".into());
    let o = obs(0, pods.clone());
    let r = Rollout::start("c1", NEW, vec![stage("s", &nodes, 1)], &o);
    let d = step(&r, &o, &rules());
    assert_eq!(failure(&d.actions), None);
    assert_eq!(deleted(&d.actions), vec!["b", "a"]);
}

#[test]
fn later_stage_pods_are_not_blamed() {
    let mut pods = vec![pod("a", OLD, true), pod("b", NEW, false)];
    pods[1].reason = Some("CrashLoopBackOff".into());
    let o = obs(0, pods);
    let r = Rollout::start(
        "c1",
        NEW,
        vec![stage("s0", &["a"], 1), stage("s1", &["b"], 1)],
        &o,
    );
    let d = step(&r, &o, &rules());
    assert_eq!(failure(&d.actions), None);
    assert_eq!(deleted(&d.actions), vec!["a"]);
}

fn prom(outcome: PromOutcome, now: i64) -> Decision {
    let nodes = ["a"];
    let o = obs(0, all_old(&nodes));
    let r = Rollout::start("c1", NEW, vec![stage("s", &nodes, 1)], &o);
    let mut o = obs(now, all_old(&nodes));
    o.prometheus = outcome;
    step(&r, &o, &rules())
}

#[test]
fn prometheus_checks() {
    assert_eq!(failure(&prom(PromOutcome::NotConfigured, 0).actions), None);
    assert_eq!(
        failure(&prom(check(Some(0.5), Some(1.0), Some(0.0)), 0).actions),
        None
    );
    for bad in [
        check(Some(1.5), Some(1.0), None),
        check(Some(-1.0), None, Some(0.0)),
        check(None, Some(1.0), None),
        check(Some(f64::NAN), Some(1.0), None),
    ] {
        assert_eq!(
            failure(&prom(bad.clone(), 0).actions),
            Some(Gate::Prometheus),
            "{bad:?}"
        );
    }
}

#[test]
fn prometheus_unreachable_has_a_grace() {
    let un = |since_ms| PromOutcome::Unreachable {
        since_ms,
        error: "connection refused".into(),
    };
    let d = prom(un(0), 30_000);
    assert_eq!(failure(&d.actions), None);
    let gate = d.rollout.last_gate.unwrap();
    assert!(gate.passed);
    assert!(gate.message.contains("unreachable"), "{}", gate.message);
    assert_eq!(
        failure(&prom(un(0), 30_001).actions),
        Some(Gate::Prometheus)
    );
}

#[test]
fn last_gate_keeps_its_timestamp_while_unchanged() {
    let nodes = ["a", "b"];
    let o = obs(0, all_old(&nodes));
    let r = Rollout::start("c1", NEW, vec![stage("s", &nodes, 1)], &o);
    let d = step(&r, &o, &rules());
    let d2 = step(&d.rollout, &obs(5000, all_old(&nodes)), &rules());
    assert_eq!(d2.rollout.last_gate.as_ref().map(|g| g.at_ms), Some(0));
}
