//! Speed and size of nodewave's pure core at fleet scale: stage resolution, one
//! planner step, the persisted rollout state, manifest validation and diffing,
//! and the memory of the pod index the watches feed.
//!
//! Run: `cargo bench --bench core` (optimised build). Prints one line per case:
//! the median of several timed runs, and sizes where they matter (the rollout
//! state is stored in an annotation, and Kubernetes caps all annotations of an
//! object at 256 KiB together).

#[path = "support/proc_status.rs"]
mod proc_status;

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;
use std::time::{Duration, Instant};

use nodewave::manifest::policy::{IntOrPercent, RolloutPolicySpec, StageSpec};
use nodewave::manifest::{LoadOptions, ManifestFile};
use nodewave::record::{RecordState, Target, Work, codec};
use nodewave::rollout::{
    Control, HealthRules, NodeInfo, Observation, PodObservation, PromOutcome, Rollout,
    resolve_stages, step,
};

fn median<F: FnMut()>(runs: usize, mut f: F) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn fleet(nodes: usize, pools: usize) -> Vec<NodeInfo> {
    (0..nodes)
        .map(|i| {
            NodeInfo::new(
                format!("node-{i:05}"),
                Some(&format!("pool-{:02}", i % pools)),
            )
        })
        .collect()
}

fn policy() -> RolloutPolicySpec {
    let stage = |name: &str, pools: &[&str], nodes: Option<u32>, mu: IntOrPercent| StageSpec {
        name: name.into(),
        pools: pools.iter().map(|s| (*s).to_string()).collect(),
        nodes,
        max_unavailable: mu,
        bake: None,
        approval: None,
    };
    RolloutPolicySpec {
        stages: vec![
            stage("canary", &["pool-00"], Some(5), IntOrPercent::Count(1)),
            stage(
                "early",
                &["pool-00", "pool-01"],
                None,
                IntOrPercent::Percent(10),
            ),
            stage("rest", &["*"], None, IntOrPercent::Percent(10)),
        ],
        ..RolloutPolicySpec::default()
    }
}

fn observation(nodes: &[NodeInfo], revision_of: impl Fn(usize) -> &'static str) -> Observation {
    Observation {
        now_ms: 1_000_000,
        nodes: std::sync::Arc::new(
            nodes
                .iter()
                .map(|n| std::sync::Arc::from(n.name.as_str()))
                .collect::<BTreeSet<_>>(),
        ),
        pods: nodes
            .iter()
            .enumerate()
            .map(|(i, n)| PodObservation {
                node: n.name.as_str().into(),
                name: format!("agent-{i}").into(),
                uid: format!("uid-{i}").into(),
                revision: revision_of(i).into(),
                ready: true,
                restarts: 0,
                reason: None,
                terminating: false,
            })
            .collect(),
        control: Control::default(),
        prometheus: PromOutcome::NotConfigured,
        prometheus_stage: None,
    }
}

fn bench_planner(n: usize) {
    let nodes = fleet(n, 20);
    let restarts = BTreeMap::new();
    let spec = policy();
    let t = median(9, || {
        black_box(resolve_stages(&spec, &nodes, &restarts));
    });
    println!(
        "resolve_stages      {n:>6} nodes  {:>10.3} ms",
        t.as_secs_f64() * 1e3
    );

    let stages = resolve_stages(&spec, &nodes, &restarts);
    let obs = observation(&nodes, |_| "old");
    let rollout = Rollout::start("c0ffee", "new", stages, &obs);
    let rules = HealthRules::default();
    // First step: announces stage 1 and deletes its first pods.
    let t = median(9, || {
        black_box(step(&rollout, &obs, &rules));
    });
    println!(
        "step (stage start)  {n:>6} nodes  {:>10.3} ms",
        t.as_secs_f64() * 1e3
    );

    // A step in the middle of the last stage, half of the fleet already updated.
    let mid_obs = observation(&nodes, |i| if i % 2 == 0 { "new" } else { "old" });
    let mut r = rollout.clone();
    for _ in 0..3 {
        r = step(&r, &mid_obs, &rules).rollout;
    }
    let t = median(9, || {
        black_box(step(&r, &mid_obs, &rules));
    });
    println!(
        "step (mid-rollout)  {n:>6} nodes  {:>10.3} ms",
        t.as_secs_f64() * 1e3
    );

    // Worst case for the annotation: every node of the fleet listed as updated.
    let mut full = rollout.clone();
    full.updated = nodes.iter().map(|n| n.name.as_str().into()).collect();
    let json = serde_json::to_string(&full).unwrap_or_default();
    let t = median(9, || {
        black_box(serde_json::to_string(&full).unwrap_or_default());
    });
    println!(
        "rollout state JSON  {n:>6} nodes  {:>10.3} ms  {:>8} bytes ({}% of the 256 KiB annotation budget)",
        t.as_secs_f64() * 1e3,
        json.len(),
        json.len() * 100 / 262_144
    );

    // The same state as the DaemonSetRollout record stores it (compact JSON,
    // gzip, base64): encoded on every record write.
    let state = RecordState {
        work: Work::Rolling {
            target: Target {
                commit: "c0ffee".into(),
                hash: "0123456789abcdef".into(),
            },
            rollout: full,
        },
        ..RecordState::default()
    };
    let encoded = codec::encode(&state);
    let t = median(9, || {
        black_box(codec::encode(&state));
    });
    println!(
        "record state encode {n:>6} nodes  {:>10.3} ms  {:>8} bytes",
        t.as_secs_f64() * 1e3,
        encoded.len()
    );
}

fn manifest_files(count: usize) -> Vec<ManifestFile> {
    (0..count)
        .map(|i| ManifestFile {
            path: format!("agents/agent-{i}.yaml"),
            contents: format!(
                r"apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent-{i}
  namespace: team-{ns}
spec:
  selector:
    matchLabels: {{app: agent-{i}}}
  template:
    metadata:
      labels: {{app: agent-{i}}}
    spec:
      tolerations: [{{operator: Exists}}]
      containers:
        - name: agent
          image: registry.example/agent:1.{i}.0
          resources:
            requests: {{cpu: 10m, memory: 32Mi}}
            limits: {{cpu: 200m, memory: 128Mi}}
          readinessProbe: {{httpGet: {{path: /ready, port: 8080}}}}
          livenessProbe: {{httpGet: {{path: /live, port: 8080}}}}
---
apiVersion: nodewave.io/v1alpha1
kind: RolloutPolicy
metadata: {{name: agent-{i}, namespace: team-{ns}}}
spec:
  target: {{name: agent-{i}}}
  stages:
    - {{name: canary, pools: [canary], nodes: 1, bake: 5m}}
    - {{name: rest, pools: ['*'], maxUnavailable: 10%}}
",
                ns = i % 10
            ),
        })
        .collect()
}

fn bench_manifests(count: usize) {
    let files = manifest_files(count);
    let bytes: usize = files.iter().map(|f| f.contents.len()).sum();
    let opts = LoadOptions::default();
    let t = median(7, || {
        let r = nodewave::manifest::load(&files, &opts);
        assert!(r.is_ok(), "benchmark manifests must be valid");
        black_box(r.ok());
    });
    println!(
        "manifest::load      {count:>6} DaemonSets+policies ({} KiB)  {:>10.3} ms",
        bytes / 1024,
        t.as_secs_f64() * 1e3
    );
}

fn bench_diff() {
    let files = manifest_files(1);
    let state =
        nodewave::manifest::load(&files, &LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let Some(dds) = state.daemonsets.values().next() else {
        return;
    };
    let a = dds.manifest.clone();
    let mut b = a.clone();
    b["spec"]["template"]["spec"]["containers"][0]["image"] =
        serde_json::json!("registry.example/agent:9.9.9");
    let t = median(101, || {
        black_box(nodewave::diff::compare("ns/agent", &a, &b));
    });
    println!(
        "diff::compare       1 DaemonSet  {:>10.3} ms",
        t.as_secs_f64() * 1e3
    );
}

fn main() {
    // `cargo test --benches` runs this too; keep that quick.
    let quick = std::env::args().any(|a| a == "--test");
    let sizes: &[usize] = if quick { &[100] } else { &[100, 1_000, 5_000] };
    for &n in sizes {
        bench_planner(n);
    }
    bench_manifests(if quick { 10 } else { 200 });
    bench_diff();
    bench_pod_decode();
    if quick {
        bench_pod_index(2, 100);
    } else {
        bench_pod_index(21, 5_001);
    }
}

/// A DaemonSet pod as a watch delivers it from kwok: owner reference, node
/// affinity and name, revision label, conditions and one container status.
fn daemon_pod(
    ds: usize,
    node: usize,
    revision: &str,
    ready: bool,
) -> k8s_openapi::api::core::v1::Pod {
    let node_name = format!("kwok-node-pool-{}-{node:05}", node % 3);
    let status = if ready { "True" } else { "False" };
    let json = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("fleet-{ds:02}-{:05x}", node * 7919 % 1_048_576),
            "namespace": "fleet",
            "uid": format!("{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}", ds * 100_003 + node, ds, node % 4096, ds % 4096, node * 31 + ds),
            "resourceVersion": format!("{}", 1_000_000 + ds * 10_000 + node),
            "labels": {
                "app": format!("fleet-{ds:02}"),
                "controller-revision-hash": revision,
                "pod-template-generation": "2",
            },
            "ownerReferences": [{
                "apiVersion": "apps/v1",
                "kind": "DaemonSet",
                "name": format!("fleet-{ds:02}"),
                "uid": format!("{ds:08x}-0000-4000-8000-00000000d5d5"),
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": {
            "nodeName": node_name,
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node_name]}]}],
            }}},
            "containers": [{"name": "agent", "image": "registry.example/agent:2.0"}],
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "Initialized", "status": "True"},
                {"type": "Ready", "status": status},
                {"type": "ContainersReady", "status": status},
                {"type": "PodScheduled", "status": "True"},
            ],
            "containerStatuses": [{
                "name": "agent",
                "image": "registry.example/agent:2.0",
                "imageID": "",
                "ready": ready,
                "restartCount": 0,
                "state": {"running": {"startedAt": "2026-12-02T10:00:00Z"}},
            }],
        },
    });
    serde_json::from_value(json).unwrap_or_else(|e| panic!("the bench pod does not parse: {e}"))
}

/// Memory of the pod index at fleet scale, fed the way the pod watch feeds it
/// (one deserialized `Pod` per event, dropped after), and the cost of the copy
/// a reconcile takes of one DaemonSet's pods.
fn bench_pod_index(daemonsets: usize, nodes: usize) {
    let stores = nodewave::store::Stores::default();
    let before = proc_status::kib("VmRSS");
    for ds in 0..daemonsets {
        for node in 0..nodes {
            black_box(stores.observed_pod(&daemon_pod(ds, node, "6b9f7c5d4f", false)));
        }
    }
    let created = proc_status::kib("VmRSS");
    // Every pod becomes Ready: one more event each, as in the fleet phase.
    for ds in 0..daemonsets {
        for node in 0..nodes {
            black_box(stores.observed_pod(&daemon_pod(ds, node, "6b9f7c5d4f", true)));
        }
    }
    let ready = proc_status::kib("VmRSS");
    let pods = stores.pod_count();
    // KiB counts and pod counts stay far below 2^52: the casts are exact.
    #[allow(clippy::cast_precision_loss)]
    let mib = |kb: u64| kb.saturating_sub(before) as f64 / 1024.0;
    #[allow(clippy::cast_precision_loss)]
    let per_pod = |kb: u64| mib(kb) * 1024.0 * 1024.0 / pods.max(1) as f64;
    println!(
        "pod index     {pods:>7} pods  RSS +{:.1} MiB created ({:.0} B/pod), +{:.1} MiB after all Ready ({:.0} B/pod)",
        mib(created),
        per_pod(created),
        mib(ready),
        per_pod(ready),
    );
    let owner = format!("{:08x}-0000-4000-8000-00000000d5d5", 0);
    let t = median(21, || {
        black_box(stores.pods_of(&owner));
    });
    println!(
        "pods_of       {nodes:>7} pods  {:>10.3} ms (the copy one reconcile takes)",
        t.as_secs_f64() * 1e3
    );
}

/// Decoding one pod watch event: a pod as a kwok cluster served it (managed
/// fields and all, `benches/fixtures/kwok-pod.json`), as the full `Pod` and as
/// the lean one the pod watch decodes.
fn bench_pod_decode() {
    let json = include_str!("fixtures/kwok-pod.json");
    let full = median(201, || {
        black_box(
            serde_json::from_str::<k8s_openapi::api::core::v1::Pod>(json)
                .unwrap_or_else(|e| panic!("the fixture does not parse: {e}")),
        );
    });
    let lean = median(201, || {
        black_box(
            serde_json::from_str::<nodewave::store::LeanPod>(json)
                .unwrap_or_else(|e| panic!("the fixture does not parse: {e}")),
        );
    });
    println!(
        "pod decode    {} bytes  Pod {:>7.1} us  LeanPod {:>7.1} us",
        json.len(),
        full.as_secs_f64() * 1e6,
        lean.as_secs_f64() * 1e6
    );
}
