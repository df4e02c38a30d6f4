//! nodewave runs with exactly the permissions shipped in
//! `deploy/kubernetes/nodewave.yaml`: a service-account token bound to that
//! ClusterRole and leader-election Role drives a rollout, a rollback and a prune
//! with no request forbidden.
#![allow(clippy::unwrap_used, clippy::expect_used)] // integration test crate: panics are test failures

mod support;

use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::gitops::{ds_yaml, get_ds, wait_rolled_out, wait_status};
use support::nodewave::{GitRepo, Nodewave};
use support::*;

fn shipped_documents() -> Vec<Value> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/kubernetes/nodewave.yaml"
    ))
    .unwrap();
    text.split("\n---\n")
        .map(|doc| serde_saphyr::from_str::<Value>(doc).unwrap())
        .filter(Value::is_object)
        .collect()
}

fn shipped(kind: &str) -> Value {
    shipped_documents()
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("deploy/kubernetes/nodewave.yaml has no {kind}"))
}

/// A kubeconfig for the local cluster that authenticates with `token`.
fn token_kubeconfig(dir: &std::path::Path, token: &str) -> std::path::PathBuf {
    let admin = kube::config::Kubeconfig::read_from(kubeconfig_path()).unwrap();
    let cluster = admin.clusters[0].cluster.clone().unwrap();
    let mut c = json!({"server": cluster.server});
    if let Some(ca) = cluster.certificate_authority {
        c["certificate-authority"] = json!(ca);
    }
    if let Some(ca) = cluster.certificate_authority_data {
        c["certificate-authority-data"] = json!(ca);
    }
    // JSON is YAML: kube reads this as any kubeconfig.
    let kc = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": c}],
        "users": [{"name": "nodewave", "user": {"token": token}}],
        "contexts": [{"name": "nodewave", "context": {"cluster": "local", "user": "nodewave"}}],
        "current-context": "nodewave",
    });
    let path = dir.join("kubeconfig.json");
    std::fs::write(&path, kc.to_string()).unwrap();
    path
}

#[tokio::test]
async fn nodewave_works_with_exactly_the_shipped_rbac() {
    let mut env = TestEnv::new("rbac").await;
    let nodes = env.create_nodes(&["pool-a", "pool-b"], 1).await;
    let ns = env.ns.clone();
    let cluster_role_name = format!("nodewave-{ns}");

    // The shipped rules, bound to a service account of this test's namespace.
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "nodewave", "namespace": ns}})).unwrap();
    env.api::<ServiceAccount>()
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    let mut cr = shipped("ClusterRole");
    cr["metadata"] = json!({"name": cluster_role_name});
    let crs: Api<ClusterRole> = Api::all(env.client.clone());
    crs.create(&PostParams::default(), &serde_json::from_value(cr).unwrap())
        .await
        .unwrap();
    let crb: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": cluster_role_name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role_name},
        "subjects": [{"kind": "ServiceAccount", "name": "nodewave", "namespace": ns}],
    }))
    .unwrap();
    let crbs: Api<ClusterRoleBinding> = Api::all(env.client.clone());
    crbs.create(&PostParams::default(), &crb).await.unwrap();
    let mut role = shipped("Role");
    role["metadata"]["namespace"] = json!(ns);
    env.api::<Role>()
        .create(
            &PostParams::default(),
            &serde_json::from_value(role).unwrap(),
        )
        .await
        .unwrap();
    let mut rb = shipped("RoleBinding");
    rb["metadata"]["namespace"] = json!(ns);
    rb["subjects"][0]["namespace"] = json!(ns);
    env.api::<RoleBinding>()
        .create(&PostParams::default(), &serde_json::from_value(rb).unwrap())
        .await
        .unwrap();

    // The record CRD, installed by the cluster admin as the deploy docs say.
    let crds: Api<CustomResourceDefinition> = Api::all(env.client.clone());
    crds.patch(
        ::nodewave::record::client::CRD_NAME,
        &PatchParams::apply("nodewave-tests").force(),
        &Patch::Apply(::nodewave::record::client::crd().unwrap()),
    )
    .await
    .unwrap();

    let tr: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))
            .unwrap();
    let token = env
        .api::<ServiceAccount>()
        .create_subresource::<TokenRequest, TokenRequest>(
            "token",
            "nodewave",
            &PostParams::default(),
            &tr,
        )
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = token_kubeconfig(dir.path(), &token);

    let repo = GitRepo::new();
    let good = repo.commit(
        "agent",
        &[
            (
                "agent.yaml",
                Some(&ds_yaml(&env, "agent", "registry.example/agent:1.0.0")),
            ),
            (
                "other.yaml",
                Some(&ds_yaml(&env, "other", "registry.example/other:1.0.0")),
            ),
        ],
    );
    let nw = Nodewave::start(
        &repo.url(),
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--poll-interval",
            "1s",
            "--allow-namespace",
            &ns,
            "--leader-elect",
            "--leader-election-namespace",
            &ns,
            "--no-install-crds",
        ],
    )
    .await;
    wait_rolled_out(&env, "agent", "registry.example/agent:1.0.0", nodes.len()).await;
    wait_status(&env, "agent", "Synced", Duration::from_mins(1)).await;

    // A rollout that fails its gate and rolls back: pod deletes, revisions, Events.
    repo.commit(
        "crash",
        &[(
            "agent.yaml",
            Some(&ds_yaml(
                &env,
                "agent",
                "registry.example/agent:2.0.0-crashloop",
            )),
        )],
    );
    let ds = wait_status(&env, "agent", "RolledBack", Duration::from_mins(2)).await;
    let _ = ds;
    assert_eq!(
        support::record::get(&env, "agent")
            .await
            .unwrap()
            .applied
            .as_ref(),
        Some(&good)
    );
    wait_rolled_out(&env, "agent", "registry.example/agent:1.0.0", nodes.len()).await;

    // Pruning: delete.
    repo.commit("remove other", &[("other.yaml", None)]);
    wait_for("other pruned", Duration::from_mins(1), || async {
        if get_ds(&env, "other").await.is_none() {
            Ok(Some(()))
        } else {
            Err("still there".into())
        }
    })
    .await;

    let logs = nw.logs();
    assert!(logs.contains("became leader"), "{logs}");
    assert!(
        !logs.to_lowercase().contains("forbidden"),
        "a request was forbidden by the shipped RBAC:\n{logs}"
    );
    drop(nw);
    let _ = crbs
        .delete(&cluster_role_name, &DeleteParams::default())
        .await;
    let _ = crs
        .delete(&cluster_role_name, &DeleteParams::default())
        .await;
}
