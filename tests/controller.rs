//! The watch-driven controller seen from outside, on the real control plane:
//! - an idle DaemonSet costs no Kubernetes API request at all;
//! - `kubectl get dsrollouts` shows a rollout's progress (commit, stage, phase,
//!   updated/ready/total) while it runs;
//! - a `kubectl` change during a rollout (updateStrategy back to RollingUpdate) is
//!   detected and undone at once, with an Event; with the shipped admission policy
//!   the change is refused outright.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::DaemonSet;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use support::gitops::{get_ds, wait_rolled_out};
use support::nodewave::{GitRepo, Nodewave, cli};
use support::record;
use support::rollout::*;
use support::*;

const POOLS: [&str; 3] = ["pool-a", "pool-b", "pool-c"];
const V1: &str = "registry.example/agent-slowready:1.0.0";
const V2: &str = "registry.example/agent-slowready:2.0.0";

fn repo_path(relative: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Every document of the shipped admission policy.
fn shipped_admission_policy() -> Vec<Value> {
    let text =
        std::fs::read_to_string(repo_path("deploy/kubernetes/admission-policy.yaml")).unwrap();
    text.split("\n---")
        .map(|d| serde_saphyr::from_str::<Value>(d).unwrap())
        .collect()
}

fn file(env: &TestEnv, image: &str) -> String {
    let policy = policy_yaml(
        env,
        "agent",
        "  stages:\n    - {name: a, pools: [pool-a], maxUnavailable: 1}\n    - {name: b, pools: [pool-b], maxUnavailable: 1, approval: manual}\n    - {name: c, pools: [pool-c], maxUnavailable: 1}\n",
    );
    format!("{}{policy}", agent_yaml(env, "agent", image, Some(500)))
}

async fn api_requests(nw: &Nodewave) -> f64 {
    nw.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("nodewave_kube_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn an_idle_daemonset_costs_no_api_request() {
    let mut env = TestEnv::new("ctl-idle").await;
    let nodes = env.create_nodes(&["pool-a", "pool-b"], 2).await;
    let repo = GitRepo::new();
    let c1 = repo.commit(
        "v1",
        &[("agent.yaml", Some(&agent_yaml(&env, "agent", V1, None)))],
    );
    let nw = Nodewave::start(
        &repo.url(),
        &["--poll-interval", "1s", "--allow-namespace", &env.ns],
    )
    .await;
    record::wait_commit_status(&env, "agent", &c1, "Synced", Duration::from_mins(2)).await;
    wait_rolled_out(&env, "agent", V1, nodes.len()).await;
    // Let the last watch events of the rollout settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = api_requests(&nw).await;
    // Fifteen polls of an unchanged repository, node heartbeats, and nothing else.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let after = api_requests(&nw).await;
    eprintln!(
        "Kubernetes API requests while idle for 15 s: {}",
        after - before
    );
    assert!(
        (after - before).abs() < f64::EPSILON,
        "idle requests: {}\n{}",
        after - before,
        nw.metrics().await
    );
}

#[tokio::test]
async fn kubectl_shows_progress_and_drift_during_a_rollout_is_undone_at_once() {
    let mut env = TestEnv::new("ctl-drift").await;
    let nodes = env.create_nodes(&POOLS, 2).await;
    let repo = GitRepo::new();
    let c1 = repo.commit("v1", &[("agent.yaml", Some(&file(&env, V1)))]);
    let nw = Nodewave::start(
        &repo.url(),
        &["--poll-interval", "1s", "--allow-namespace", &env.ns],
    )
    .await;
    // The first rollout waits for approval before stage 2 too.
    wait_for(
        "first rollout awaits approval",
        Duration::from_mins(2),
        || async {
            let r = record::get(&env, "agent").await.ok_or("no record")?;
            if r.rollout_phase == "AwaitingApproval" {
                Ok(Some(()))
            } else {
                Err(r.rollout_phase)
            }
        },
    )
    .await;
    let key = format!("{}/agent", env.ns);
    assert_eq!(cli(&["rollout", "approve", &key]).0, 0);
    record::wait_commit_status(&env, "agent", &c1, "Synced", Duration::from_mins(2)).await;
    wait_rolled_out(&env, "agent", V1, nodes.len()).await;

    let c2 = repo.commit("v2", &[("agent.yaml", Some(&file(&env, V2)))]);
    wait_for(
        "stage 2 awaits approval",
        Duration::from_mins(2),
        || async {
            let r = record::get(&env, "agent").await.ok_or("no record")?;
            if r.applied.as_deref() == Some(c2.as_str()) && r.rollout_phase == "AwaitingApproval" {
                Ok(Some(()))
            } else {
                Err(format!("{} {}", r.status, r.rollout_phase))
            }
        },
    )
    .await;
    // `kubectl get dsrollouts`: the printer columns show the rollout.
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let out = std::process::Command::new(&kubectl)
        .args(["get", "dsrollouts", "-n", &env.ns])
        .env("KUBECONFIG", kubeconfig_path())
        .output()
        .expect("kubectl (hack/cluster.sh puts it on PATH)");
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!(
        "kubectl get dsrollouts:\n{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "DAEMONSET",
            "STATUS",
            "COMMIT",
            "STAGE",
            "PHASE",
            "UPDATED",
            "READY",
            "TOTAL",
            "AGE"
        ]
    );
    let row = table.lines().nth(1).unwrap();
    for want in ["agent", "Progressing", &c2[..12], "2/3", "AwaitingApproval"] {
        assert!(row.contains(want), "{want} not in {row}");
    }
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cols[cols.len() - 4..cols.len() - 1],
        &["2", "2", "6"],
        "{row}"
    );

    // Someone switches the DaemonSet back to RollingUpdate mid-rollout.
    let before = uids(&env, "agent").await;
    let later: Vec<String> = nodes
        .iter()
        .filter(|n| !n.contains("-pool-a-"))
        .cloned()
        .collect();
    let ds_api: Api<DaemonSet> = env.api();
    let edited = Instant::now();
    ds_api
        .patch(
            "agent",
            &PatchParams::apply("kubectl-edit").force(),
            &Patch::Apply(json!({
                "apiVersion": "apps/v1", "kind": "DaemonSet",
                "metadata": {"name": "agent", "namespace": env.ns},
                "spec": {"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}}
            })),
        )
        .await
        .unwrap();
    wait_for("drift undone", Duration::from_secs(30), || async {
        let ds = get_ds(&env, "agent").await.unwrap();
        let strategy = ds
            .spec
            .unwrap()
            .update_strategy
            .unwrap()
            .type_
            .unwrap_or_default();
        let evs = events(&env, "agent").await;
        if strategy == "OnDelete"
            && evs
                .iter()
                .any(|(r, n)| r == "DriftDetected" && n.contains("updateStrategy"))
        {
            Ok(Some(()))
        } else {
            Err(format!("{strategy}; {evs:?}"))
        }
    })
    .await;
    eprintln!(
        "updateStrategy switched to RollingUpdate -> OnDelete again in {:?}",
        edited.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = uids(&env, "agent").await;
    let replaced: Vec<&String> = later
        .iter()
        .filter(|n| after.get(*n) != before.get(*n))
        .collect();
    eprintln!(
        "pods of later stages replaced by the DaemonSet controller in that window: {replaced:?}"
    );
    assert!(
        replaced.len() <= 1,
        "the controller replaced {replaced:?} before nodewave undid the edit"
    );
    let r = record::get(&env, "agent").await.unwrap();
    assert_eq!(
        r.rollout_phase, "AwaitingApproval",
        "the rollout keeps its place"
    );

    // With the shipped admission policy the edit is refused outright.
    let docs = shipped_admission_policy();
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(env.client.clone());
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(docs[0].clone()).unwrap();
    let policy_name = policy.metadata.name.clone().unwrap();
    policies
        .patch(
            &policy_name,
            &PatchParams::apply("nodewave-tests").force(),
            &Patch::Apply(&policy),
        )
        .await
        .unwrap();
    // Bound to this test's namespace only, so no other test is affected.
    let mut binding = docs[1].clone();
    let binding_name = format!("{policy_name}-{}", env.ns);
    binding["metadata"]["name"] = json!(binding_name);
    binding["spec"]["matchResources"] =
        json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": env.ns}}});
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(binding).unwrap();
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(env.client.clone());
    bindings
        .patch(
            &binding_name,
            &PatchParams::apply("nodewave-tests").force(),
            &Patch::Apply(&binding),
        )
        .await
        .unwrap();
    let refused = wait_for(
        "the admission policy refuses the edit",
        Duration::from_secs(30),
        || async {
            match ds_api
                .patch(
                    "agent",
                    &PatchParams::apply("kubectl-edit").force(),
                    &Patch::Apply(json!({
                        "apiVersion": "apps/v1", "kind": "DaemonSet",
                        "metadata": {"name": "agent", "namespace": env.ns},
                        "spec": {"updateStrategy": {"type": "RollingUpdate"}}
                    })),
                )
                .await
            {
                Err(kube::Error::Api(s)) if s.code == 403 || s.code == 422 => Ok(Some(s.message)),
                Err(e) => Err(e.to_string()),
                // Not enforced yet (policies take a moment): undo and try again.
                Ok(_) => Err("accepted".into()),
            }
        },
    )
    .await;
    eprintln!("refused: {refused}");
    assert!(refused.contains("rolled out by nodewave"), "{refused}");
    // nodewave itself still applies the DaemonSet (always OnDelete) and finishes.
    assert_eq!(cli(&["rollout", "approve", &key]).0, 0);
    record::wait_commit_status(&env, "agent", &c2, "Synced", Duration::from_mins(2)).await;
    wait_rolled_out(&env, "agent", V2, nodes.len()).await;
    let _ = bindings
        .delete(&binding_name, &DeleteParams::default())
        .await;
    drop(nw);
}
