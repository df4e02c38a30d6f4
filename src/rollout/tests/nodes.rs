//! Nodes and pods coming and going during a rollout.

use super::*;

#[test]
fn removed_node_is_dropped_and_stage_completes_without_it() {
    let nodes = ["a", "b"];
    let o = obs(0, all_old(&nodes));
    let r = Rollout::start("c1", NEW, vec![stage("s", &nodes, 1)], &o);
    let d = step(&r, &o, &rules());
    assert!(d.rollout.replacing.contains_key("a"));
    // Node a is gone (and its pod with it).
    let d = step(&d.rollout, &obs(1000, vec![pod("b", OLD, true)]), &rules());
    assert!(!d.rollout.replacing.contains_key("a"));
    assert_eq!(deleted(&d.actions), vec!["b"]);
    let d = step(&d.rollout, &obs(2000, vec![pod("b", NEW, true)]), &rules());
    assert_eq!(d.rollout.phase, Phase::Succeeded);
}

#[test]
fn new_node_is_adopted_into_the_last_stage() {
    let pods = all_old(&["a", "b"]);
    let o = obs(0, pods.clone());
    let r = Rollout::start(
        "c1",
        NEW,
        vec![stage("s0", &["a"], 1), stage("s1", &["b"], 1)],
        &o,
    );
    let mut pods2 = pods;
    pods2.push(pod("c", OLD, true));
    let d = step(&r, &obs(1000, pods2), &rules());
    assert_eq!(names(&d.rollout.stages[1]), vec!["b", "c"]);
    assert_eq!(deleted(&d.actions), vec!["a"], "c waits for its stage");
}

#[test]
fn evicted_pod_is_waited_for_with_a_deadline() {
    let nodes = ["a", "b"];
    let o = obs(
        0,
        vec![
            pod("a", NEW, true),
            pod("b", OLD, true),
            pod("c", OLD, true),
        ],
    );
    let stages = vec![stage("s", &nodes, 1), stage("t", &["c"], 1)];
    let r = Rollout::start("c1", NEW, stages, &o);
    // b's old pod was evicted by someone else and is not recreated yet.
    let mut now = obs(0, vec![pod("a", NEW, true), pod("c", OLD, true)]);
    std::sync::Arc::make_mut(&mut now.nodes).insert("b".into());
    let first = step(&r, &now, &rules());
    let d = first.clone();
    assert_eq!(
        d.rollout.stage, 0,
        "b has not been seen healthy on the target"
    );
    assert_eq!(d.rollout.replacing["b"].old_pod_uid, "");
    assert!(deleted(&d.actions).is_empty());
    // The controller recreates it from the new template.
    let later = obs(
        5000,
        vec![
            pod("a", NEW, true),
            pod("b", NEW, true),
            pod("c", OLD, true),
        ],
    );
    let d = step(&d.rollout, &later, &rules());
    assert_eq!(d.rollout.stage, 1);
    assert_eq!(deleted(&d.actions), vec!["c"]);
    // Never recreated: the ready timeout applies.
    now.now_ms = 60_001;
    let d = step(&first.rollout, &now, &rules());
    assert_eq!(failure(&d.actions), Some(Gate::ReadyTimeout));
}

#[test]
fn target_pod_created_by_controller_gets_a_ready_deadline() {
    let nodes = ["a", "b"];
    let o = obs(0, vec![pod("a", NEW, false), pod("b", OLD, true)]);
    let r = Rollout::start("c1", NEW, vec![stage("s", &nodes, 1)], &o);
    let d = step(
        &r,
        &obs(1000, vec![pod("a", NEW, false), pod("b", OLD, true)]),
        &rules(),
    );
    assert_eq!(
        d.rollout.replacing["a"],
        Replacement {
            old_pod_uid: String::new(),
            deleted_at_ms: 1000
        }
    );
    assert!(
        deleted(&d.actions).is_empty(),
        "a's unready target pod uses the budget"
    );
    let d = step(
        &d.rollout,
        &obs(61_001, vec![pod("a", NEW, false), pod("b", OLD, true)]),
        &rules(),
    );
    assert_eq!(failure(&d.actions), Some(Gate::ReadyTimeout));
}

#[test]
fn empty_rollout_completes_at_once() {
    let o = obs(0, vec![]);
    let d = step(&Rollout::start("c1", NEW, vec![], &o), &o, &rules());
    assert_eq!(d.actions, vec![Action::Complete]);
}
