//! nodewave runs with exactly the RBAC the Helm chart renders (and so
//! `deploy/kubernetes/nodewave.yaml`, generated from it), in both modes: a
//! service-account token bound to the rendered ClusterRole/Roles drives a
//! rollout, a rollback, a prune and a repeated drift (an Event series) with no
//! request forbidden.
//!
//! - cluster mode (`rbac.mode=cluster`, the default): one ClusterRole;
//! - namespaced mode (`rbac.mode=namespaced`, `--namespaced`): write access only
//!   through a Role in the allowed namespace; the ClusterRole is read-only (nodes,
//!   the record CRD), checked with SubjectAccessReviews.
//!
//! nodewave's own namespace (service account, Lease) is a second namespace, as
//! in a real install. To check by hand that every verb is needed, set
//! `NODEWAVE_RBAC_TEST_DROP=<resource>:<verb>` (e.g. `pods:delete`): the verb is
//! removed from the rendered rules and the test must then fail.
#![allow(clippy::unwrap_used, clippy::expect_used)] // integration test crate: panics are test failures

mod chart_common;
mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::gitops::{ds_yaml, get_ds, wait_rolled_out, wait_status};
use support::nodewave::{GitRepo, Nodewave};
use support::*;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Cluster,
    Namespaced,
}

/// The chart's RBAC for a release in `system_ns` managing DaemonSets in `fleet_ns`.
fn rendered(mode: Mode, release: &str, system_ns: &str, fleet_ns: &str) -> Vec<Value> {
    let allowed = format!("allowedNamespaces={{{fleet_ns}}}");
    let mut args = vec!["--set", "repo.url=https://git.example.com/fleet.git"];
    args.extend(["--set", &allowed]);
    // Companion objects of two namespaced kinds (a ServiceAccount and a
    // ConfigMap next to the DaemonSets): the chart grants exactly these.
    args.extend(["--set", "allowedKinds={ServiceAccount,ConfigMap}"]);
    if mode == Mode::Namespaced {
        args.extend(["--set", "rbac.mode=namespaced"]);
    }
    chart_common::template(release, system_ns, &args)
}

/// Removes `NODEWAVE_RBAC_TEST_DROP`'s verb from every rule of its resource.
fn drop_verb(doc: &mut Value) {
    let Ok(spec) = std::env::var("NODEWAVE_RBAC_TEST_DROP") else {
        return;
    };
    let (resource, verb) = spec
        .split_once(':')
        .expect("NODEWAVE_RBAC_TEST_DROP=<resource>:<verb>");
    let rules = doc["rules"].as_array_mut().unwrap();
    for rule in rules.iter_mut() {
        if rule["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == resource)
        {
            rule["verbs"].as_array_mut().unwrap().retain(|v| v != verb);
        }
    }
    // A rule left without verbs is invalid: drop it.
    rules.retain(|r| !r["verbs"].as_array().unwrap().is_empty());
}

/// Changes the agent's image behind nodewave's back and waits until nodewave
/// has put Git's image back (a DriftDetected Event each time).
async fn drift_and_wait_healed(env: &TestEnv, nodes: usize) {
    let patch = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "agent", "image": "registry.example/agent:9.9.9-drift"}
    ]}}}});
    env.api::<DaemonSet>()
        .patch("agent", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    wait_for("drift undone", Duration::from_mins(1), || async {
        let ds = get_ds(env, "agent").await.unwrap();
        let image = support::gitops::image_of(&ds);
        if image == "registry.example/agent:1.0.0" {
            Ok(Some(()))
        } else {
            Err(image)
        }
    })
    .await;
    wait_rolled_out(env, "agent", "registry.example/agent:1.0.0", nodes).await;
}

/// Whether the service account may `verb` `resource` (in `namespace`, or
/// cluster-wide with None), as the API server's authorizer answers.
async fn allowed(
    client: &kube::Client,
    sa: &str,
    sa_ns: &str,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
) -> bool {
    let mut attrs = json!({"verb": verb, "group": group, "resource": resource});
    if let Some(ns) = namespace {
        attrs["namespace"] = json!(ns);
    }
    let sar: SubjectAccessReview = serde_json::from_value(json!({
        "spec": {"user": format!("system:serviceaccount:{sa_ns}:{sa}"), "resourceAttributes": attrs}
    }))
    .unwrap();
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    api.create(&PostParams::default(), &sar)
        .await
        .unwrap()
        .status
        .unwrap()
        .allowed
}

async fn create_all(client: &kube::Client, docs: &[Value]) -> Vec<(String, String)> {
    let mut cluster_scoped = Vec::new();
    for doc in docs {
        let mut doc = doc.clone();
        let ns = doc["metadata"]["namespace"].as_str().map(str::to_string);
        let name = doc["metadata"]["name"].as_str().unwrap().to_string();
        let pp = PostParams::default();
        match doc["kind"].as_str().unwrap() {
            "ServiceAccount" => {
                let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.unwrap());
                api.create(&pp, &serde_json::from_value(doc).unwrap())
                    .await
                    .unwrap();
            }
            "ClusterRole" => {
                drop_verb(&mut doc);
                let api: Api<ClusterRole> = Api::all(client.clone());
                api.create(&pp, &serde_json::from_value(doc).unwrap())
                    .await
                    .unwrap();
                cluster_scoped.push(("ClusterRole".into(), name));
            }
            "ClusterRoleBinding" => {
                let api: Api<ClusterRoleBinding> = Api::all(client.clone());
                api.create(&pp, &serde_json::from_value(doc).unwrap())
                    .await
                    .unwrap();
                cluster_scoped.push(("ClusterRoleBinding".into(), name));
            }
            "Role" => {
                drop_verb(&mut doc);
                let api: Api<Role> = Api::namespaced(client.clone(), &ns.unwrap());
                api.create(&pp, &serde_json::from_value(doc).unwrap())
                    .await
                    .unwrap();
            }
            "RoleBinding" => {
                let api: Api<RoleBinding> = Api::namespaced(client.clone(), &ns.unwrap());
                api.create(&pp, &serde_json::from_value(doc).unwrap())
                    .await
                    .unwrap();
            }
            _ => {}
        }
    }
    cluster_scoped
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

async fn nodewave_works_with_exactly_the_chart_rbac(mode: Mode) {
    let mut env = TestEnv::new(match mode {
        Mode::Cluster => "rbac",
        Mode::Namespaced => "rbac-ns",
    })
    .await;
    let nodes = env.create_nodes(&["pool-a", "pool-b"], 1).await;
    let ns = env.ns.clone();
    // nodewave's own namespace, as nodewave-system in a real install.
    let system_ns = format!("{ns}-sys");
    let nss: Api<Namespace> = Api::all(env.client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": system_ns}})).unwrap(),
    )
    .await
    .unwrap();

    let docs = rendered(mode, &ns, &system_ns, &ns);
    let sa = chart_common::one_of_kind(&docs, "ServiceAccount")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let args = chart_common::deployment_args(&docs);
    for flag in [
        "--no-install-crds",
        "--leader-elect",
        &format!("--allow-namespace={ns}"),
    ] {
        assert!(args.iter().any(|a| a == flag), "{flag} not in {args:?}");
    }
    assert_eq!(
        args.iter().any(|a| a == "--namespaced"),
        mode == Mode::Namespaced,
        "{args:?}"
    );
    let cluster_scoped = create_all(&env.client, &docs).await;

    // What each mode grants, as the authorizer sees it.
    let c = &env.client;
    let cluster_wide_write = allowed(c, &sa, &system_ns, "patch", "apps", "daemonsets", None).await;
    assert_eq!(cluster_wide_write, mode == Mode::Cluster);
    assert!(allowed(c, &sa, &system_ns, "patch", "apps", "daemonsets", Some(&ns)).await);
    assert_eq!(
        allowed(
            c,
            &sa,
            &system_ns,
            "delete",
            "",
            "pods",
            Some("kube-system")
        )
        .await,
        mode == Mode::Cluster
    );
    assert!(allowed(c, &sa, &system_ns, "watch", "", "nodes", None).await);
    assert!(!allowed(c, &sa, &system_ns, "patch", "", "nodes", None).await);
    assert!(
        !allowed(
            c,
            &sa,
            &system_ns,
            "create",
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            None
        )
        .await
    );
    assert!(!allowed(c, &sa, &system_ns, "get", "", "secrets", Some(&ns)).await);

    // The record CRD, installed by the cluster admin (the chart's crds/).
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
    let sas: Api<ServiceAccount> = Api::namespaced(env.client.clone(), &system_ns);
    let token = sas
        .create_subresource::<TokenRequest, TokenRequest>("token", &sa, &PostParams::default(), &tr)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = token_kubeconfig(dir.path(), &token);

    let repo = GitRepo::new();
    let first = repo.commit(
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
    // Cluster mode: companions too (namespaced mode cannot watch them
    // cluster-wide, the README's known gap).
    let good = if mode == Mode::Cluster {
        repo.commit(
            "companions",
            &[(
                "companions.yaml",
                Some(&format!(
                    "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: agent, namespace: {ns}}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: agent, namespace: {ns}}}\ndata: {{level: info}}\n"
                )),
            )],
        )
    } else {
        first
    };
    let allow = format!("--allow-namespace={ns}");
    let mut nw_args = vec![
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--poll-interval",
        "1s",
        &allow,
        "--leader-elect",
        "--leader-election-namespace",
        &system_ns,
        "--no-install-crds",
        // As the chart passes it (allowedKinds).
        "--allow-kind=ServiceAccount,ConfigMap",
    ];
    if mode == Mode::Namespaced {
        nw_args.push("--namespaced");
    }
    let nw = Nodewave::start(&repo.url(), &nw_args).await;
    wait_rolled_out(&env, "agent", "registry.example/agent:1.0.0", nodes.len()).await;
    wait_status(&env, "agent", "Synced", Duration::from_mins(1)).await;

    // The same drift twice: the second DriftDetected Event is a patch of the
    // first one's series (events: patch).
    drift_and_wait_healed(&env, nodes.len()).await;
    drift_and_wait_healed(&env, nodes.len()).await;
    let events: Api<Event> = env.api();
    wait_for(
        "a DriftDetected series of 2",
        Duration::from_secs(30),
        || async {
            let list = events.list(&ListParams::default()).await.unwrap();
            let counts: Vec<i32> = list
                .items
                .iter()
                .filter(|e| e.reason.as_deref() == Some("DriftDetected"))
                .map(|e| e.series.as_ref().map_or(1, |s| s.count))
                .collect();
            if counts.iter().any(|c| *c >= 2) {
                Ok(Some(()))
            } else {
                Err(format!("DriftDetected events with counts {counts:?}"))
            }
        },
    )
    .await;

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
    wait_status(&env, "agent", "RolledBack", Duration::from_mins(2)).await;
    assert_eq!(
        support::record::get(&env, "agent")
            .await
            .unwrap()
            .applied
            .as_ref(),
        Some(&good)
    );
    wait_rolled_out(&env, "agent", "registry.example/agent:1.0.0", nodes.len()).await;

    // Pruning: delete (the ConfigMap too, in cluster mode).
    if mode == Mode::Cluster {
        let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = env.api();
        assert!(cms.get_opt("agent").await.unwrap().is_some());
        repo.commit(
            "drop the config",
            &[(
                "companions.yaml",
                Some(&format!(
                    "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: agent, namespace: {ns}}}\n"
                )),
            )],
        );
        wait_for("the ConfigMap pruned", Duration::from_mins(1), || async {
            match cms.get_opt("agent").await.unwrap() {
                None => Ok(Some(())),
                Some(_) => Err("still there".to_string()),
            }
        })
        .await;
    }
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
        "a request was forbidden by the chart's RBAC ({mode:?} mode):\n{logs}"
    );
    // A 403 on the CRD check is tolerated at run time (nodewave then assumes the
    // CRD is installed), so only the log shows the check was skipped.
    assert!(
        !logs.contains("not allowed to read CRDs"),
        "nodewave could not check its CRD with the chart's RBAC ({mode:?} mode):\n{logs}"
    );
    drop(nw);
    for (kind, name) in cluster_scoped {
        let dp = DeleteParams::default();
        if kind == "ClusterRole" {
            let _ = Api::<ClusterRole>::all(env.client.clone())
                .delete(&name, &dp)
                .await;
        } else {
            let _ = Api::<ClusterRoleBinding>::all(env.client.clone())
                .delete(&name, &dp)
                .await;
        }
    }
    let _ = nss.delete(&system_ns, &DeleteParams::default()).await;
}

#[tokio::test]
async fn nodewave_works_with_exactly_the_chart_rbac_cluster_mode() {
    nodewave_works_with_exactly_the_chart_rbac(Mode::Cluster).await;
}

#[tokio::test]
async fn nodewave_works_with_exactly_the_chart_rbac_namespaced_mode() {
    nodewave_works_with_exactly_the_chart_rbac(Mode::Namespaced).await;
}
