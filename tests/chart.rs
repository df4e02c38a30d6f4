//! The Helm chart `deploy/helm/nodewave` and the single-file install generated
//! from it (`deploy/kubernetes/nodewave.yaml`), with the real `helm`:
//!
//! - `helm lint --strict` with the default and a full values file; values that
//!   cannot work are refused with a message; the chart's version is nodewave's;
//! - the rendered objects: Pod Security "restricted" securityContext, probes,
//!   `--no-install-crds`, PDB, anti-affinity, no Secret, read-only cluster grants
//!   in namespaced mode; the PrometheusRule is the shipped one;
//! - the generated copies and the single-file manifest are up to date;
//! - on the local cluster: both renderings pass a server-side dry run; `helm
//!   install` creates every object and its pods are admitted in a namespace that
//!   enforces "restricted" (a non-compliant pod there is refused, so the check is
//!   live); the single-file manifest is admitted the same way.
#![allow(clippy::unwrap_used, clippy::expect_used)] // integration test crate: panics are test failures

mod chart_common;
mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use chart_common::{deployment_args, documents, of_kind, one_of_kind, run_helm, template};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};
use support::{TestEnv, unique_name, wait_for};

const REPO: &str = "repo.url=https://git.example.com/platform/daemonsets.git";

fn full_values() -> String {
    chart_common::repo_root()
        .join("tests/fixtures/chart/full-values.yaml")
        .to_str()
        .unwrap()
        .to_string()
}

/// The default values (plus the required repository) and the full values file.
fn renderings(release: &str, namespace: &str, allowed: &[&str]) -> [Vec<Value>; 2] {
    let allowed = format!("allowedNamespaces={{{}}}", allowed.join(","));
    [
        template(release, namespace, &["--set", REPO]),
        template(
            release,
            namespace,
            &["-f", &full_values(), "--set", &allowed],
        ),
    ]
}

fn kubectl() -> String {
    std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into())
}

/// `kubectl <args>` with `input` on stdin; the output, or a panic with it.
fn kubectl_with(args: &[&str], input: &str) -> Result<String, String> {
    let mut child = Command::new(kubectl())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

fn list(items: &[Value]) -> String {
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

#[test]
fn chart_lints_with_default_and_full_values() {
    let chart = chart_common::chart_dir();
    let chart = chart.to_str().unwrap();
    run_helm(&["lint", "--strict", chart, "--set", REPO]);
    run_helm(&["lint", "--strict", chart, "-f", &full_values()]);
}

#[test]
fn chart_version_is_nodewave_version() {
    let text = std::fs::read_to_string(chart_common::chart_dir().join("Chart.yaml")).unwrap();
    let chart: Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(chart["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn generated_copies_and_single_file_manifest_are_up_to_date() {
    let out = Command::new(chart_common::repo_root().join("hack/gen-deploy.sh"))
        .arg("--check")
        .env("HELM", chart_common::helm())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn values_that_cannot_work_are_refused_with_a_message() {
    let chart = chart_common::chart_dir();
    let chart = chart.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&[], "repo.url is required"),
        (
            &["--set", REPO, "--set", "rbac.mode=namespaced"],
            "rbac.mode=namespaced needs allowedNamespaces",
        ),
        (
            &[
                "--set",
                REPO,
                "--set",
                "rbac.mode=namespaced",
                "--set",
                "allowedNamespaces={logging}",
                "--set",
                "createNamespaces=true",
            ],
            "createNamespaces needs rbac.mode=cluster",
        ),
        (
            &["--set", REPO, "--set", "rbac.mode=both"],
            "rbac.mode must be cluster or namespaced",
        ),
        (
            &["--set", REPO, "--set", "allowedKinds={ConfigMap,Pod}"],
            "the chart cannot grant \"Pod\"",
        ),
        (
            &[
                "--set",
                REPO,
                "--set",
                "credentials.token.secretName=a",
                "--set",
                "credentials.ssh.secretName=b",
            ],
            "set at most one of",
        ),
        (
            &["--set", REPO, "--set", "verifyCommits.enabled=true"],
            "verifyCommits.enabled needs verifyCommits.configMapName",
        ),
    ];
    for (args, message) in cases {
        let out = Command::new(chart_common::helm())
            .args(["template", "x", chart])
            .args(*args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} rendered");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}

#[test]
fn rendered_pod_is_restricted_and_probes_and_rbac_are_as_documented() {
    for docs in renderings("nodewave", "nodewave-system", &["logging", "monitoring"]) {
        let deploy = one_of_kind(&docs, "Deployment");
        let pod = &deploy["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["securityContext"]["runAsUser"], 65532);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert!(pod["affinity"]["podAntiAffinity"].is_object());
        let args = deployment_args(&docs);
        assert!(args.iter().any(|a| a == "--no-install-crds"), "{args:?}");
        assert!(args.iter().any(|a| a == "--leader-elect"), "{args:?}");
        assert_eq!(
            one_of_kind(&docs, "PodDisruptionBudget")["spec"]["selector"],
            deploy["spec"]["selector"]
        );
        // Secrets are referenced, never rendered.
        assert!(of_kind(&docs, "Secret").is_empty());
        for kind in ["Service", "ServiceAccount", "Deployment"] {
            for obj in of_kind(&docs, kind) {
                assert_eq!(obj["metadata"]["namespace"], "nodewave-system");
            }
        }
    }
    let [default, full] = renderings("nodewave", "nodewave-system", &["logging", "monitoring"]);
    // Cluster mode: one ClusterRole with the write rules; no Role but the Lease's.
    let cr = one_of_kind(&default, "ClusterRole");
    assert!(
        cr["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["resources"] == json!(["daemonsets"]))
    );
    assert_eq!(of_kind(&default, "Role").len(), 1);
    // Namespaced mode: the ClusterRole only reads; a Role per allowed namespace.
    let cr = one_of_kind(&full, "ClusterRole");
    for rule in cr["rules"].as_array().unwrap() {
        for verb in rule["verbs"].as_array().unwrap() {
            assert!(
                ["list", "watch", "get"].contains(&verb.as_str().unwrap()),
                "{rule}"
            );
        }
    }
    let role_namespaces: Vec<&str> = of_kind(&full, "Role")
        .iter()
        .map(|r| r["metadata"]["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(
        role_namespaces,
        ["logging", "monitoring", "nodewave-system"]
    );
    let args = deployment_args(&full);
    assert!(args.iter().any(|a| a == "--namespaced"), "{args:?}");
    // Webhook and metrics on separate listeners and Services.
    let services: Vec<&str> = of_kind(&full, "Service")
        .iter()
        .map(|s| s["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(services, ["nodewave-metrics", "nodewave-webhook"]);
    assert_eq!(
        one_of_kind(&default, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"],
        format!(
            "registry.example.com/nodewave/nodewave:{}",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[test]
fn prometheus_rule_is_the_shipped_one() {
    let docs = template(
        "nodewave",
        "monitoring",
        &["--set", REPO, "--set", "prometheusRule.enabled=true"],
    );
    let rule = one_of_kind(&docs, "PrometheusRule");
    let shipped = std::fs::read_to_string(
        chart_common::repo_root().join("deploy/prometheus/nodewave-prometheusrule.yaml"),
    )
    .unwrap();
    let shipped: Value = serde_saphyr::from_str(&shipped).unwrap();
    assert_eq!(rule["apiVersion"], shipped["apiVersion"]);
    assert_eq!(rule["spec"], shipped["spec"]);
    let sm = template(
        "nodewave",
        "monitoring",
        &["--set", REPO, "--set", "serviceMonitor.enabled=true"],
    );
    let sm = one_of_kind(&sm, "ServiceMonitor");
    // NodewaveDown expects job="nodewave".
    assert_eq!(sm["spec"]["jobLabel"], "app.kubernetes.io/name");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
}

/// Kinds whose CRDs (Prometheus Operator) the local cluster does not have.
fn without_operator_kinds(docs: Vec<Value>) -> Vec<Value> {
    docs.into_iter()
        .filter(|d| d["apiVersion"] != "monitoring.coreos.com/v1")
        .collect()
}

#[tokio::test]
async fn templates_pass_a_server_side_dry_run() {
    let env = TestEnv::new("chart-dry").await;
    let nss: Api<Namespace> = Api::all(env.client.clone());
    let fleet: Vec<String> = ["a", "b"]
        .iter()
        .map(|s| format!("{}-{s}", env.ns))
        .collect();
    for ns in &fleet {
        nss.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();
    }
    let fleet_refs: Vec<&str> = fleet.iter().map(String::as_str).collect();
    let [default, full] = renderings(&env.ns, &env.ns, &fleet_refs);
    for (name, docs) in [("default", default), ("full", full)] {
        let out = kubectl_with(
            &[
                "apply",
                "--server-side",
                "--dry-run=server",
                "--field-manager=nodewave-chart-test",
                "-f",
                "-",
            ],
            &list(&without_operator_kinds(docs)),
        );
        let out = out.unwrap_or_else(|e| panic!("{name} values: dry run refused:\n{e}"));
        assert!(out.contains("deployment.apps/"), "{name}: {out}");
    }
    for ns in &fleet {
        let _ = nss.delete(ns, &DeleteParams::default()).await;
    }
}

/// A namespace that enforces Pod Security "restricted".
async fn restricted_namespace(client: &kube::Client, name: &str) {
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": name, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        }}}))
        .unwrap(),
    )
    .await
    .unwrap();
}

/// Pod Security admission is live in `ns`: a pod without seccompProfile and
/// with privilege escalation allowed is refused.
async fn assert_restricted_is_enforced(client: &kube::Client, ns: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let bad: Pod = serde_json::from_value(json!({
        "metadata": {"name": "not-restricted"},
        "spec": {"containers": [{"name": "c", "image": "registry.example/x:1"}]}
    }))
    .unwrap();
    let err = pods.create(&PostParams::default(), &bad).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("violates PodSecurity \"restricted"),
        "{err}"
    );
}

/// Waits until `n` pods with `selector` exist in `ns` (created, so admitted).
async fn wait_pods_admitted(client: &kube::Client, ns: &str, selector: &str, n: usize) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let ns = ns.to_string();
    wait_for(
        &format!("{n} nodewave pods admitted in {ns}"),
        Duration::from_mins(1),
        || async {
            let found = pods
                .list(&ListParams::default().labels(selector))
                .await
                .unwrap();
            if found.items.len() == n {
                Ok(Some(()))
            } else {
                let events = Command::new(kubectl())
                    .args([
                        "get",
                        "events",
                        "-n",
                        &ns,
                        "-o",
                        "custom-columns=REASON:.reason,MESSAGE:.message",
                    ])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                    .unwrap_or_default();
                Err(format!("{} pods; events:\n{events}", found.items.len()))
            }
        },
    )
    .await;
}

#[tokio::test]
async fn helm_install_creates_every_object_admitted_under_restricted_pod_security() {
    let env = TestEnv::new("chart-install").await;
    let ns = format!("{}-sys", env.ns);
    restricted_namespace(&env.client, &ns).await;
    assert_restricted_is_enforced(&env.client, &ns).await;
    let release = env.ns.clone();
    let chart = chart_common::chart_dir();
    let allowed = format!("allowedNamespaces={{{}}}", env.ns);
    let out = run_helm(&[
        "install",
        &release,
        chart.to_str().unwrap(),
        "--namespace",
        &ns,
        "--set",
        REPO,
        "--set",
        &allowed,
        "--set",
        "webhook.secretName=nodewave-webhook",
    ]);
    assert!(out.contains("STATUS: deployed"), "{out}");
    // Every object the chart renders exists, as rendered (helm get manifest).
    let manifest = documents(&run_helm(&[
        "get",
        "manifest",
        &release,
        "--namespace",
        &ns,
    ]));
    let kinds: Vec<&str> = manifest
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
    ] {
        assert!(kinds.contains(&kind), "{kind} not installed: {kinds:?}");
    }
    for doc in &manifest {
        let mut args = vec![
            "get".to_string(),
            doc["kind"].as_str().unwrap().to_lowercase(),
            doc["metadata"]["name"].as_str().unwrap().to_string(),
        ];
        if let Some(n) = doc["metadata"]["namespace"].as_str() {
            args.extend(["-n".into(), n.into()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        kubectl_with(&args, "").unwrap_or_else(|e| panic!("{args:?}: {e}"));
    }
    let selector = format!("app.kubernetes.io/instance={release}");
    wait_pods_admitted(&env.client, &ns, &selector, 2).await;

    run_helm(&["uninstall", &release, "--namespace", &ns]);
    let nss: Api<Namespace> = Api::all(env.client.clone());
    let _ = nss.delete(&ns, &DeleteParams::default()).await;
}

#[tokio::test]
async fn single_file_manifest_is_admitted_under_restricted_pod_security() {
    let env = TestEnv::new("single-file").await;
    let text =
        std::fs::read_to_string(chart_common::repo_root().join("deploy/kubernetes/nodewave.yaml"))
            .unwrap();
    let docs = documents(&text);
    // The shipped namespace itself enforces "restricted".
    let shipped_ns = one_of_kind(&docs, "Namespace");
    assert_eq!(
        shipped_ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    // Applied as shipped, under names of this test: its namespace, and a suffix
    // on the cluster-scoped RBAC so parallel runs do not meet.
    let ns = unique_name("nw-single-sys");
    let suffix = format!("-{}", env.ns);
    let mut apply = Vec::new();
    let mut crd = Vec::new();
    for mut doc in docs {
        match doc["kind"].as_str().unwrap() {
            "Namespace" => doc["metadata"]["name"] = json!(ns),
            "CustomResourceDefinition" => {
                crd.push(doc);
                continue;
            }
            "ClusterRole" => {
                let name = format!("{}{suffix}", doc["metadata"]["name"].as_str().unwrap());
                doc["metadata"]["name"] = json!(name);
            }
            "ClusterRoleBinding" => {
                let name = format!("{}{suffix}", doc["metadata"]["name"].as_str().unwrap());
                doc["metadata"]["name"] = json!(name);
                let role = format!("{}{suffix}", doc["roleRef"]["name"].as_str().unwrap());
                doc["roleRef"]["name"] = json!(role);
                doc["subjects"][0]["namespace"] = json!(ns);
            }
            _ => {
                doc["metadata"]["namespace"] = json!(ns);
                if let Some(subjects) = doc.get_mut("subjects").and_then(Value::as_array_mut) {
                    subjects[0]["namespace"] = json!(ns);
                }
            }
        }
        apply.push(doc);
    }
    // The CRD as shipped: a dry run (the cluster's CRD is shared by every test).
    kubectl_with(
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "--field-manager=nodewave-chart-test",
            "-f",
            "-",
        ],
        &list(&crd),
    )
    .unwrap();
    let cluster_scoped: Vec<(String, String)> = apply
        .iter()
        .filter(|d| d["kind"].as_str().unwrap().starts_with("Cluster"))
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_lowercase(),
                d["metadata"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let out = kubectl_with(
        &[
            "apply",
            "--server-side",
            "--field-manager=nodewave-chart-test",
            "-f",
            "-",
        ],
        &list(&apply),
    )
    .unwrap();
    assert!(
        out.contains("deployment.apps/nodewave serverside-applied"),
        "{out}"
    );
    assert_restricted_is_enforced(&env.client, &ns).await;
    wait_pods_admitted(&env.client, &ns, "app.kubernetes.io/name=nodewave", 2).await;

    let nss: Api<Namespace> = Api::all(env.client.clone());
    let _ = nss.delete(&ns, &DeleteParams::default()).await;
    for (kind, name) in cluster_scoped {
        let _ = kubectl_with(&["delete", &kind, &name, "--wait=false"], "");
    }
}
