//! Stage resolution, and the node names a rollout's stages hold.

use super::*;

#[test]
fn default_stages_are_one_per_pool_then_remaining() {
    let nodes = [
        node("n3", Some("b")),
        node("n1", Some("a")),
        node("n2", None),
        node("n4", Some("a")),
    ];
    let stages = resolve_stages(&RolloutPolicySpec::default(), &nodes, &BTreeMap::new());
    let got: Vec<(&str, Vec<&str>, usize, u64)> = stages
        .iter()
        .map(|s| (s.name.as_str(), names(s), s.max_unavailable, s.bake_ms))
        .collect();
    assert_eq!(
        got,
        vec![
            ("a", vec!["n1", "n4"], 1, 0),
            ("b", vec!["n3"], 1, 0),
            ("remaining", vec!["n2"], 1, 0)
        ]
    );
}

#[test]
fn first_stage_claiming_a_node_wins_and_star_takes_the_rest() {
    let nodes = [
        node("a1", Some("a")),
        node("a2", Some("a")),
        node("b1", Some("b")),
        node("c1", Some("c")),
        node("x", None),
    ];
    let spec = with_stages(vec![
        spec_stage("first", &["b"]),
        spec_stage("again", &["b"]),
        spec_stage("all", &["*"]),
    ]);
    let stages = resolve_stages(&spec, &nodes, &BTreeMap::new());
    let got: Vec<(&str, Vec<&str>)> = stages.iter().map(|s| (s.name.as_str(), names(s))).collect();
    assert_eq!(
        got,
        vec![
            ("first", vec!["b1"]),
            ("all", vec!["a1", "a2", "c1"]),
            ("remaining", vec!["x"])
        ],
        "the empty stage `again` is dropped, nodes without a pool go to remaining"
    );
}

#[test]
fn canary_spreads_round_robin_fewest_restarts_first() {
    let nodes = [
        node("a1", Some("a")),
        node("a2", Some("a")),
        node("a3", Some("a")),
        node("b1", Some("b")),
        node("b2", Some("b")),
        node("c1", Some("c")),
    ];
    let restarts: BTreeMap<String, u32> = [("a1", 5), ("a2", 0), ("a3", 0), ("b1", 1), ("b2", 0)]
        .into_iter()
        .map(|(n, r)| (n.to_string(), r))
        .collect();
    let mut canary = spec_stage("canary", &["a", "b"]);
    canary.nodes = Some(3);
    canary.approval = Some(Approval::Manual);
    canary.bake = Some(Duration::from_secs(90));
    let mut rest = spec_stage("rest", &["*"]);
    rest.max_unavailable = IntOrPercent::Percent(50);
    let spec = with_stages(vec![canary, rest]);
    let stages = resolve_stages(&spec, &nodes, &restarts);
    // Round 1: a2 (0 restarts, before a3 by name), b2 (0); round 2: a3.
    assert_eq!(names(&stages[0]), vec!["a2", "a3", "b2"]);
    assert!(stages[0].manual_approval);
    assert_eq!(stages[0].bake_ms, 90_000);
    assert_eq!(names(&stages[1]), vec!["a1", "b1", "c1"]);
    assert_eq!(stages[1].max_unavailable, 1, "50% of 3 rounds down to 1");
    assert_eq!(stages.len(), 2);
}

#[test]
fn canary_larger_than_pools_takes_what_exists() {
    let nodes = [node("a1", Some("a")), node("b1", Some("b"))];
    let mut canary = spec_stage("canary", &["a", "b", "missing"]);
    canary.nodes = Some(10);
    let spec = with_stages(vec![canary]);
    let stages = resolve_stages(&spec, &nodes, &BTreeMap::new());
    assert_eq!(stages.len(), 1);
    assert_eq!(names(&stages[0]), vec!["a1", "b1"]);
}

#[test]
fn max_unavailable_percent_resolves_against_stage_size() {
    let nodes: Vec<NodeInfo> = (0..10)
        .map(|i| node(&format!("n{i:02}"), Some("p")))
        .collect();
    let mut s = spec_stage("all", &["p"]);
    s.max_unavailable = IntOrPercent::Percent(25);
    let spec = with_stages(vec![s]);
    let stages = resolve_stages(&spec, &nodes, &BTreeMap::new());
    assert_eq!(stages[0].max_unavailable, 2);
}

#[test]
fn health_rules_from_spec() {
    let r = HealthRules::from(&HealthSpec::default());
    assert_eq!(r.ready_timeout_ms, 300_000);
    assert_eq!(r.max_restarts, 1);
    assert!(r.fatal_reasons.iter().any(|f| f == "CrashLoopBackOff"));
    assert_eq!(r.prometheus_grace_ms, 120_000);
    assert_eq!(Gate::ReadyTimeout.metric_label(), "ready_timeout");
    assert_eq!(Gate::Aborted.metric_label(), "aborted");
}

#[test]
fn a_rollout_shares_the_node_names_it_is_given_and_keeps_the_rest() {
    let nodes = ["n1", "n2", "n3"];
    let mut pods = all_old(&nodes);
    pods[2].ready = false;
    let o = obs(0, pods);
    let mut r = Rollout::start("c1", NEW, vec![stage("s", &nodes, 1)], &o);
    r.updated.insert("n1".into());
    r.replacing.insert(
        "gone".into(),
        Replacement {
            old_pod_uid: String::new(),
            deleted_at_ms: 0,
        },
    );
    let before = r.clone();
    let known: BTreeSet<NodeName> = ["n1", "n2", "n3", "n4"]
        .into_iter()
        .map(NodeName::from)
        .collect();
    r.share_node_names(&known);
    assert_eq!(r, before, "only where the names live changes");
    let shared = |n: &NodeName| known.get(&**n).is_some_and(|k| Arc::ptr_eq(k, n));
    assert!(r.stages[0].nodes.iter().all(shared));
    assert!(r.updated.iter().all(shared));
    assert!(r.baseline_unready.iter().all(shared));
    let gone = r.replacing.keys().next().unwrap();
    assert_eq!(&**gone, "gone");
    assert!(
        !shared(gone),
        "a name the index does not know keeps its own copy"
    );
}
