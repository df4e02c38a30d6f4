//! Companion objects on the real control plane: a repository of vendor-style
//! files (ServiceAccount, ClusterRole and binding, a `kind: List` of
//! ConfigMaps, a CRD and a custom resource, the DaemonSet using them) syncs in
//! one commit; drift on a ConfigMap is put back; removing files prunes exactly
//! their objects and nothing nodewave did not apply; a kind the API server
//! does not serve is a per-object error while the rest of the commit proceeds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;
use support::gitops::wait_rolled_out;
use support::nodewave::{GitRepo, Nodewave, cli};
use support::record;
use support::*;

const IMAGE: &str = "registry.example/agent:1.0.0";

fn ds_yaml(env: &TestEnv) -> String {
    format!(
        r"apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
  namespace: {ns}
spec:
  selector:
    matchLabels: {{app: agent}}
  template:
    metadata:
      labels: {{app: agent}}
    spec:
      serviceAccountName: agent
      nodeSelector:
        {OWNER_LABEL}: {owner}
      containers:
        - name: agent
          image: {IMAGE}
          volumeMounts:
            - {{name: config, mountPath: /etc/agent}}
      volumes:
        - name: config
          configMap: {{name: agent-config}}
",
        ns = env.ns,
        owner = env.owner(),
    )
}

fn rbac_yaml(env: &TestEnv) -> String {
    format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata:
  name: agent
  namespace: {ns}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {ns}-agent
rules:
  - apiGroups: [""]
    resources: [nodes]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {ns}-agent
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {ns}-agent}}
subjects:
  - {{kind: ServiceAccount, name: agent, namespace: {ns}}}
"#,
        ns = env.ns
    )
}

fn config_yaml(env: &TestEnv) -> String {
    format!(
        r"apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: ConfigMap
    metadata: {{name: agent-config, namespace: {ns}}}
    data: {{level: info}}
  - apiVersion: v1
    kind: ConfigMap
    metadata: {{name: agent-extra, namespace: {ns}}}
    data: {{extra: 'yes'}}
",
        ns = env.ns
    )
}

fn group(env: &TestEnv) -> String {
    format!("{}.example.io", env.ns)
}

fn crd_yaml(env: &TestEnv) -> String {
    format!(
        r"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.{group}
spec:
  group: {group}
  scope: Namespaced
  names: {{kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          x-kubernetes-preserve-unknown-fields: true
",
        group = group(env)
    )
}

fn widget_yaml(env: &TestEnv) -> String {
    format!(
        "apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: w\n  namespace: {ns}\nspec:\n  size: 3\n",
        group = group(env),
        ns = env.ns
    )
}

fn widgets(env: &TestEnv) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(&group(env), "v1", "Widget"),
        "widgets",
    );
    Api::namespaced_with(env.client.clone(), &env.ns, &ar)
}

#[tokio::test]
async fn vendor_files_with_companions_sync_heal_and_prune_exactly_their_objects() {
    let mut env = TestEnv::new("companions").await;
    let nodes = env.create_nodes(&["pool-a"], 2).await;
    let cms: Api<ConfigMap> = env.api();
    // An object nodewave did not apply, with nodewave's label even: never pruned.
    let bystander: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "bystander", "labels": {"app.kubernetes.io/managed-by": "nodewave"}},
        "data": {"k": "v"}
    }))
    .unwrap();
    cms.create(&PostParams::default(), &bystander)
        .await
        .unwrap();

    let repo = GitRepo::new();
    let c1 = repo.commit(
        "agent with companions",
        &[
            ("agent/ds.yaml", Some(&ds_yaml(&env))),
            ("agent/rbac.yaml", Some(&rbac_yaml(&env))),
            ("agent/config.yaml", Some(&config_yaml(&env))),
            ("agent/crd.yaml", Some(&crd_yaml(&env))),
            ("agent/widget.yaml", Some(&widget_yaml(&env))),
        ],
    );
    let nw = Nodewave::start(
        &repo.url(),
        &["--poll-interval", "1s", "--allow-namespace", &env.ns],
    )
    .await;
    record::wait_commit_status(&env, "agent", &c1, "Synced", Duration::from_mins(2)).await;
    wait_rolled_out(&env, "agent", IMAGE, nodes.len()).await;

    // Everything exists, carries the managed-by label and its source file.
    let sa = env.api::<ServiceAccount>().get("agent").await.unwrap();
    assert_eq!(
        sa.metadata.labels.unwrap()["app.kubernetes.io/managed-by"],
        "nodewave"
    );
    assert_eq!(
        sa.metadata.annotations.unwrap()["nodewave.io/source-file"],
        "agent/rbac.yaml"
    );
    let cluster_roles: Api<ClusterRole> = Api::all(env.client.clone());
    cluster_roles
        .get(&format!("{}-agent", env.ns))
        .await
        .unwrap();
    let bindings: Api<ClusterRoleBinding> = Api::all(env.client.clone());
    bindings.get(&format!("{}-agent", env.ns)).await.unwrap();
    let config = cms.get("agent-config").await.unwrap();
    assert_eq!(config.data.unwrap()["level"], "info");
    cms.get("agent-extra").await.unwrap();
    let w = widgets(&env).get("w").await.unwrap();
    assert_eq!(w.data["spec"]["size"], 3);

    // /status and `nodewave status` list them.
    let status = nw.status().await;
    let objects = status["objects"].as_object().unwrap().clone();
    eprintln!("/status objects: {objects:#?}");
    // Seven from Git, and the content-hashed copy of the mounted ConfigMap.
    assert_eq!(objects.len(), 8, "{objects:#?}");
    assert!(
        objects.keys().any(|k| k.contains("/agent-config-")),
        "{objects:#?}"
    );
    assert!(objects.values().all(|v| v == "Synced"), "{objects:#?}");
    // The DaemonSet has no probes nor resources: warnings, shown, never blocking.
    let warnings = status["warnings"].to_string();
    assert!(warnings.contains("warning[probes-missing]"), "{warnings}");
    assert_eq!(
        nw.metric("nodewave_commit_warnings{check=\"resources-missing\"}")
            .await,
        Some(1.0),
        "{}",
        nw.metrics().await
    );
    let (code, out) = cli(&["status", "-n", &env.ns]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ServiceAccount") && out.contains("agent/rbac.yaml"),
        "{out}"
    );

    // Drift: a kubectl edit of a ConfigMap is put back.
    cms.patch(
        "agent-config",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"level": "debug"}})),
    )
    .await
    .unwrap();
    let t = std::time::Instant::now();
    wait_for(
        "ConfigMap drift put back",
        Duration::from_mins(1),
        || async {
            let level = cms.get("agent-config").await.unwrap().data.unwrap()["level"].clone();
            if level == "info" {
                Ok(Some(()))
            } else {
                Err(level)
            }
        },
    )
    .await;
    eprintln!("ConfigMap drift put back after {:?}", t.elapsed());
    assert!(
        nw.metric("nodewave_object_drift_total")
            .await
            .unwrap_or(0.0)
            >= 1.0,
        "{}",
        nw.metrics().await
    );

    // Removing files prunes exactly their objects; a kind nobody serves is an
    // error on that object only.
    let config_only = config_yaml(&env).replace(
        &format!(
            "  - apiVersion: v1\n    kind: ConfigMap\n    metadata: {{name: agent-extra, namespace: {ns}}}\n    data: {{extra: 'yes'}}\n",
            ns = env.ns
        ),
        "",
    );
    let unknown = format!(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: gadgets.{group}\nspec:\n  group: {group}\n  scope: Namespaced\n  names: {{kind: Gadget, plural: gadgets}}\n  versions:\n    - name: v1\n      served: true\n      storage: true\n      schema: {{openAPIV3Schema: {{type: object}}}}\n---\napiVersion: {group}/v2\nkind: Gadget\nmetadata:\n  name: g\n  namespace: {ns}\n",
        group = group(&env),
        ns = env.ns
    );
    // `nodewave validate` refuses a custom resource at a version the commit's
    // CRD does not serve, before anything is applied.
    let (code, out) = {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("g.yaml"), &unknown).unwrap();
        cli(&["validate", dir.path().to_str().unwrap()])
    };
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not a served version"), "{out}");
    let c2 = repo.commit(
        "drop the widget and the extra config",
        &[
            ("agent/widget.yaml", None),
            ("agent/config.yaml", Some(&config_only)),
        ],
    );
    wait_for(
        "the widget and agent-extra pruned",
        Duration::from_mins(1),
        || async {
            let w = widgets(&env).get_opt("w").await.unwrap();
            let extra = cms.get_opt("agent-extra").await.unwrap();
            if w.is_none() && extra.is_none() {
                Ok(Some(()))
            } else {
                Err(format!(
                    "widget {:?}, agent-extra {:?}",
                    w.is_some(),
                    extra.is_some()
                ))
            }
        },
    )
    .await;
    record::wait_commit_status(&env, "agent", &c2, "Synced", Duration::from_mins(1)).await;
    cms.get("bystander").await.unwrap();
    cms.get("agent-config").await.unwrap();
    env.api::<ServiceAccount>().get("agent").await.unwrap();
    cluster_roles
        .get(&format!("{}-agent", env.ns))
        .await
        .unwrap();
    wait_rolled_out(&env, "agent", IMAGE, nodes.len()).await;
    let logs = nw.logs();
    assert!(
        logs.contains("pruning companion object removed from Git"),
        "{logs}"
    );

    // With companions in sync nothing is polled: no API request while idle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let requests = |m: String| -> f64 {
        m.lines()
            .filter(|l| l.starts_with("nodewave_kube_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let before = requests(nw.metrics().await);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = requests(nw.metrics().await);
    eprintln!(
        "API requests in 10 s idle with 8 companion objects: {}",
        after - before
    );
    let m = nw.metrics().await;
    let verbs: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("nodewave_kube_requests_total{"))
        .collect();
    assert!(
        (after - before).abs() < f64::EPSILON,
        "{verbs:#?}\n{}",
        nw.logs()
    );
}

#[tokio::test]
async fn a_kind_the_api_server_does_not_serve_is_an_error_on_that_object_only() {
    let mut env = TestEnv::new("companions-unknown").await;
    let nodes = env.create_nodes(&["pool-a"], 1).await;
    let repo = GitRepo::new();
    let gadget = format!(
        "apiVersion: nowhere.example/v1\nkind: Gadget\nmetadata:\n  name: g\n  namespace: {ns}\n",
        ns = env.ns
    );
    let sa = format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: agent\n  namespace: {}\n",
        env.ns
    );
    let c1 = repo.commit(
        "agent and a gadget nobody serves",
        &[
            ("ds.yaml", Some(&ds_yaml(&env).replace(
                "      volumes:\n        - name: config\n          configMap: {name: agent-config}\n",
                "      volumes:\n        - name: config\n          emptyDir: {}\n",
            ))),
            ("sa.yaml", Some(&sa)),
            ("gadget.yaml", Some(&gadget)),
        ],
    );
    let nw = Nodewave::start(
        &repo.url(),
        &[
            "--poll-interval",
            "1s",
            "--allow-namespace",
            &env.ns,
            "--allow-kind",
            "ServiceAccount,*.nowhere.example",
        ],
    )
    .await;
    record::wait_commit_status(&env, "agent", &c1, "Synced", Duration::from_mins(2)).await;
    wait_rolled_out(&env, "agent", IMAGE, nodes.len()).await;
    let status = nw.status().await;
    let objects = &status["objects"];
    let gadget_status = objects[format!("Gadget.nowhere.example {}/g", env.ns)]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        gadget_status.contains("does not serve nowhere.example/v1 Gadget"),
        "{objects:#}"
    );
    assert_eq!(
        objects[format!("ServiceAccount {}/agent", env.ns)],
        "Synced"
    );
    assert!(
        nw.metric("nodewave_object_errors_total{reason=\"unknown_kind\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );
}
