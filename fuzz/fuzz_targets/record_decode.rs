//! The rollout record's decoder and the planner it feeds: any `status.state`
//! string (raw, or fuzzed JSON behind valid gzip and base64 so the fuzzer
//! reaches the compact-state layer) decodes to a state or an error, never a
//! panic; a decoded state re-encodes to the same state; and `plan::decide`,
//! driven the way the controller drives it, answers every decoded state with
//! a plan (never a panic) whose record write also round-trips.
#![no_main]

use std::collections::BTreeMap;
use std::io::Write as _;

use arbitrary::Arbitrary;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use nodewave::diff::Difference;
use nodewave::manifest::ObjectKey;
use nodewave::manifest::policy::{IntOrPercent, RolloutPolicySpec, StageSpec};
use nodewave::plan::{
    Decision, DesiredDs, Inputs, Lineage, LiveDs, Need, NodeIndex, RecordView, Settings, decide,
};
use nodewave::record::RecordState;
use nodewave::record::codec::{decode, encode};
use nodewave::rollout::{Control, PodObservation, PromOutcome};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    raw: &'a str,
    json: &'a [u8],
    new_pods: u8,
    generation: (u8, u8),
    template_changed: bool,
    /// How the record's commit relates to the snapshot's (one of three).
    lineage: u8,
    fresh: bool,
    paused: bool,
    abort: bool,
    now: u32,
}

fn wrap(json: &[u8]) -> String {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let bytes = gz.write_all(json).and_then(|()| gz.finish()).unwrap_or_default();
    format!("v1.{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn desired(commit: &str) -> DesiredDs {
    DesiredDs {
        key: ObjectKey::new("ns", "agent"),
        commit: commit.to_string(),
        object: serde_json::json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "agent", "namespace": "ns"},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": commit}]}}}}),
        hash: format!("hash-{commit}"),
        policy: RolloutPolicySpec {
            stages: ["a", "b"]
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
            ..RolloutPolicySpec::default()
        },
    }
}

fn plan_for(state: &RecordState, input: &Input<'_>) {
    let key = ObjectKey::new("ns", "agent");
    let settings = Settings {
        self_heal: true,
        prune: true,
        pool_label: None,
        allow_takeover: false,
    };
    let mut nodes = NodeIndex::default();
    let mut pods = Vec::new();
    for (i, pool) in ["a", "a", "b", "b"].iter().enumerate() {
        let node = format!("n{i}");
        nodes.upsert(
            &node,
            BTreeMap::from([("nodewave.io/pool".to_string(), (*pool).to_string())]),
        );
        let revision = if usize::from(input.new_pods) > i { "new" } else { "old" };
        pods.push(PodObservation {
            node: node.as_str().into(),
            name: format!("agent-{node}").into(),
            uid: format!("uid-{node}-{revision}").into(),
            revision: revision.into(),
            ready: i % 3 != 2,
            restarts: 0,
            reason: None,
            terminating: false,
        });
    }
    let pods: std::sync::Arc<[PodObservation]> = pods.into();
    let target = desired("c2");
    let previous = desired("c1");
    let live = LiveDs {
        generation: i64::from(input.generation.0),
        observed_generation: i64::from(input.generation.1),
        desired_scheduled: 4,
        managed: true,
        same_source: true,
    };
    let difference = Difference {
        paths: if input.template_changed {
            vec!["spec.template.spec.containers[0].image".to_string()]
        } else {
            Vec::new()
        },
        unified: String::new(),
    };
    let mut diff = None;
    let mut revision = None;
    let mut rollback_target = None;
    let mut prometheus = None;
    let mut lineage = None;
    // The controller answers at most one need of each kind; more is a loop.
    for _ in 0..6 {
        let inputs = Inputs {
            key: &key,
            now_ms: i64::from(input.now),
            settings: &settings,
            desired: Some(&target),
            fresh: input.fresh,
            prune_allowed: true,
            live: Some(&live),
            record: RecordView::Valid(state),
            pods: &pods,
            nodes: &nodes,
            control: Control {
                paused: input.paused,
                abort: input.abort,
                approved_stage: None,
            },
            diff: diff.as_ref().map(|(h, d): &(String, Difference)| (h.as_str(), d)),
            revision,
            revision_pending: false,
            rollback_target,
            prometheus: prometheus.clone(),
            lineage,
            snapshot_commit: &target.commit,
        };
        match decide(&inputs) {
            Decision::Plan(plan) => {
                if let Some(write) = &plan.write {
                    assert_eq!(&decode(&encode(write)).expect("re-decode a write"), write);
                }
                return;
            }
            Decision::Need(Need::Diff { hash }) => diff = Some((hash, difference.clone())),
            Decision::Need(Need::Revision) => revision = Some("new"),
            Decision::Need(Need::RollbackTarget { .. }) => rollback_target = Some(&previous),
            Decision::Need(Need::Prometheus) => prometheus = Some((PromOutcome::NotConfigured, 0)),
            Decision::Need(Need::Lineage { .. }) => {
                lineage = Some(match input.lineage % 3 {
                    0 => Lineage::Ancestor,
                    1 => Lineage::Ahead,
                    _ => Lineage::Rewritten,
                });
            }
        }
    }
}

fuzz_target!(|input: Input<'_>| {
    for encoded in [input.raw.to_string(), wrap(input.json)] {
        if let Ok(state) = decode(&encoded) {
            let again = decode(&encode(&state)).expect("a decoded state re-encodes");
            assert_eq!(again, state);
            plan_for(&state, &input);
        }
    }
});
