//! Kustomize and Helm sources against the real local control plane and the real
//! `nodewave` binary: an overlay (with its base outside the tracked path and a
//! RolloutPolicy) and a vendored chart roll out (and a bad chart version rolls
//! back) like plain YAML, `nodewave diff` agrees; a render error
//! rejects the commit whole and changes nothing; a remote base is refused.
//!
//! Needs the cluster (`hack/cluster.sh up`, KUBECONFIG) and helm/kustomize as
//! hack/build-renderers.sh builds them (hack/test.sh provides both).

// A failed setup step should just fail the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod render_common;
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use support::gitops::{get_ds, image_of, wait_rolled_out};
use support::nodewave::{GitRepo, Nodewave, cli};
use support::{OWNER_LABEL, TestEnv, wait_for};

const TRACKED: &str = "clusters/test";

/// The fleet repository: base `agents/fluent-bit` (outside the tracked path), an
/// overlay `clusters/test/fluent-bit` with a RolloutPolicy, and the chart
/// `clusters/test/node-agent`, all confined to the test's nodes and namespace.
fn fleet(env: &TestEnv, fluent_bit_tag: &str, agent_tag: &str) -> Vec<(String, String)> {
    let scheduling = format!("nodeSelector:\n  {OWNER_LABEL}: {}\n", env.owner());
    let mut files: Vec<(String, String)> = vec![
        (
            "agents/fluent-bit/kustomization.yaml".into(),
            "resources:\n  - daemonset.yaml\n".into(),
        ),
        (
            "agents/fluent-bit/daemonset.yaml".into(),
            render_common::agent_ds("fluent-bit", None, "registry.example/fluent-bit:1.0.0", &scheduling),
        ),
        (
            format!("{TRACKED}/fluent-bit/kustomization.yaml"),
            format!(
                "namespace: {ns}\nresources:\n  - ../../../agents/fluent-bit\n  - policy.yaml\nimages:\n  - name: registry.example/fluent-bit\n    newTag: \"{fluent_bit_tag}\"\n",
                ns = env.ns
            ),
        ),
        (
            format!("{TRACKED}/fluent-bit/policy.yaml"),
            "apiVersion: nodewave.io/v1alpha1\nkind: RolloutPolicy\nmetadata:\n  name: fluent-bit\nspec:\n  target: {name: fluent-bit}\n  stages:\n    - {name: first, pools: [pool-a], maxUnavailable: 1}\n    - {name: rest, pools: [\"*\"], maxUnavailable: 1}\n".into(),
        ),
    ];
    for (path, contents) in render_common::helm_chart("node-agent", &env.ns, agent_tag, &scheduling)
    {
        // helm_chart lays the chart out under charts/; here it lives in the tracked path.
        files.push((
            path.replacen("charts/", &format!("{TRACKED}/"), 1),
            contents,
        ));
    }
    files
}

fn commit(repo: &GitRepo, message: &str, files: &[(String, String)]) -> String {
    let refs: Vec<(&str, Option<&str>)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), Some(c.as_str())))
        .collect();
    repo.commit(message, &refs)
}

async fn start(env: &TestEnv, repo: &GitRepo) -> Nodewave {
    let helm = render_common::helm().display().to_string();
    let kustomize = render_common::kustomize().display().to_string();
    Nodewave::start(
        &repo.url(),
        &[
            "--path",
            TRACKED,
            "--poll-interval",
            "1s",
            "--allow-namespace",
            &env.ns,
            "--helm",
            &helm,
            "--kustomize",
            &kustomize,
        ],
    )
    .await
}

async fn pod_uids(env: &TestEnv) -> BTreeMap<String, String> {
    let pods: kube::Api<Pod> = env.api();
    pods.list(&kube::api::ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| (p.metadata.name.unwrap(), p.metadata.uid.unwrap()))
        .collect()
}

async fn wait_rejected(nw: &Nodewave, commit: &str) -> Vec<String> {
    let st = wait_for(
        &format!("/status rejected_commit {commit}"),
        Duration::from_mins(1),
        || async {
            let st = nw.status().await;
            if st["rejected_commit"].as_str() == Some(commit) {
                Ok(Some(st))
            } else {
                Err(st.to_string())
            }
        },
    )
    .await;
    serde_json::from_value(st["rejected_errors"].clone()).unwrap()
}

#[tokio::test]
async fn a_kustomize_overlay_and_a_helm_chart_roll_out_and_back_like_plain_yaml() {
    let mut env = TestEnv::new("render").await;
    let nodes = env.create_nodes(&["pool-a", "pool-b"], 1).await;
    let repo = GitRepo::new();
    commit(&repo, "fleet", &fleet(&env, "1.1.0", "2.0.0"));
    let nw = start(&env, &repo).await;
    wait_rolled_out(
        &env,
        "fluent-bit",
        "registry.example/fluent-bit:1.1.0",
        nodes.len(),
    )
    .await;
    wait_rolled_out(
        &env,
        "node-agent",
        "registry.example/node-agent:2.0.0",
        nodes.len(),
    )
    .await;
    let ds = get_ds(&env, "node-agent").await.unwrap();
    // values-prod.yaml of the chart was applied.
    assert_eq!(
        ds.metadata
            .labels
            .as_ref()
            .unwrap()
            .get("tier")
            .map(String::as_str),
        Some("prod")
    );

    // A new tag in the overlay and in the chart's values: both roll out.
    let c2 = commit(&repo, "bump both", &fleet(&env, "1.2.0", "2.1.0"));
    wait_rolled_out(
        &env,
        "fluent-bit",
        "registry.example/fluent-bit:1.2.0",
        nodes.len(),
    )
    .await;
    wait_rolled_out(
        &env,
        "node-agent",
        "registry.example/node-agent:2.1.0",
        nodes.len(),
    )
    .await;
    let st = wait_for("/status applied_commit", Duration::from_mins(1), || async {
        let st = nw.status().await;
        if st["applied_commit"].as_str() == Some(c2.as_str()) {
            Ok(Some(st))
        } else {
            Err(st.to_string())
        }
    })
    .await;
    assert!(st["rejected_commit"].is_null(), "{st}");
    // `nodewave diff` on the checkout renders the same way: nothing differs.
    let helm = render_common::helm().display().to_string();
    let kustomize = render_common::kustomize().display().to_string();
    let dir = repo.path().display().to_string();
    let (code, out) = cli(&[
        "diff",
        "--dir",
        &dir,
        "--path",
        TRACKED,
        "--helm",
        &helm,
        "--kustomize",
        &kustomize,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("in sync"), "{out}");
    // An uncommitted change to the chart's values shows as a difference.
    let values = repo.path().join(TRACKED).join("node-agent/nodewave.yaml");
    let text = std::fs::read_to_string(&values).unwrap();
    std::fs::write(&values, text.replace("tag: \"2.1.0\"", "tag: \"9.9.9\"")).unwrap();
    let (code, out) = cli(&[
        "diff",
        "--dir",
        &dir,
        "--path",
        TRACKED,
        "--helm",
        &helm,
        "--kustomize",
        &kustomize,
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("DaemonSet {}/node-agent: differs", env.ns)),
        "{out}"
    );
    assert!(out.contains("registry.example/node-agent:9.9.9"), "{out}");
    // A crash-looping chart version is rolled back to the last good commit, which
    // nodewave renders again from the local clone.
    let bad = commit(
        &repo,
        "bad chart version",
        &fleet(&env, "1.2.0", "crashloop-1"),
    );
    wait_for("rollback of node-agent", Duration::from_mins(2), || async {
        let ds = get_ds(&env, "node-agent").await.unwrap();
        let failed = support::record::get(&env, "node-agent")
            .await
            .map(|r| r.failed)
            .unwrap_or_default();
        if failed.contains(&bad) && image_of(&ds) == "registry.example/node-agent:2.1.0" {
            Ok(Some(()))
        } else {
            Err(format!(
                "image {}, failed commits {failed:?}",
                image_of(&ds)
            ))
        }
    })
    .await;
    wait_rolled_out(
        &env,
        "node-agent",
        "registry.example/node-agent:2.1.0",
        nodes.len(),
    )
    .await;
    // The DaemonSets record where they came from: the rendered source.
    let ds = get_ds(&env, "fluent-bit").await.unwrap();
    let annotations = ds.metadata.annotations.unwrap_or_default();
    assert!(
        annotations
            .values()
            .any(|v| v == &format!("{TRACKED}/fluent-bit (kustomize)")),
        "{annotations:#?}"
    );
}

#[tokio::test]
async fn a_render_error_rejects_the_commit_whole_and_a_remote_base_is_refused() {
    let mut env = TestEnv::new("render-reject").await;
    let nodes = env.create_nodes(&["pool-a"], 2).await;
    let repo = GitRepo::new();
    let good = fleet(&env, "1.1.0", "2.0.0");
    let c1 = commit(&repo, "fleet", &good);
    let nw = start(&env, &repo).await;
    wait_rolled_out(
        &env,
        "fluent-bit",
        "registry.example/fluent-bit:1.1.0",
        nodes.len(),
    )
    .await;
    wait_rolled_out(
        &env,
        "node-agent",
        "registry.example/node-agent:2.0.0",
        nodes.len(),
    )
    .await;
    let pods_before = pod_uids(&env).await;

    // A valid change to the overlay and a broken template in the chart, in one commit.
    let mut bad = fleet(&env, "1.2.0", "2.0.0");
    bad.push((
        format!("{TRACKED}/node-agent/templates/broken.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  a: {{ .Values.missing.key }}\n".into(),
    ));
    let c2 = commit(&repo, "bump fluent-bit, break the chart", &bad);
    let errors = wait_rejected(&nw, &c2).await;
    assert!(
        errors.iter().any(|e| e.starts_with(&format!(
            "{TRACKED}/node-agent/templates/broken.yaml:6: error[render-error] helm template failed"
        ))),
        "{errors:#?}"
    );
    // Nothing of it was applied: not even the valid overlay change.
    let st = nw.status().await;
    assert_eq!(st["applied_commit"].as_str(), Some(c1.as_str()), "{st}");
    assert_eq!(
        image_of(&get_ds(&env, "fluent-bit").await.unwrap()),
        "registry.example/fluent-bit:1.1.0"
    );
    assert_eq!(pod_uids(&env).await, pods_before);
    let rejected = nw
        .metric(r#"nodewave_commit_rejected_total{reason="render-error"}"#)
        .await;
    assert!(rejected.is_some_and(|v| v >= 1.0), "{rejected:?}");

    // A remote base is refused by default, before any renderer runs.
    let mut remote = fleet(&env, "1.2.0", "2.0.0");
    remote[2].1 = remote[2].1.replace(
        "  - policy.yaml\nimages:",
        "  - policy.yaml\n  - https://github.com/fluent/fluent-bit-kustomize//base?ref=v3.0.0\nimages:",
    );
    let c3 = commit(&repo, "remote base", &remote);
    let errors = wait_rejected(&nw, &c3).await;
    assert!(
        errors.iter().any(|e| e.starts_with(&format!(
            "{TRACKED}/fluent-bit/kustomization.yaml:5: error[remote-source-refused]"
        ))),
        "{errors:#?}"
    );
    assert_eq!(pod_uids(&env).await, pods_before);

    // Fixed (the broken template removed): the overlay change rolls out.
    let broken = format!("{TRACKED}/node-agent/templates/broken.yaml");
    let fixed = fleet(&env, "1.2.0", "2.0.0");
    let mut files: Vec<(&str, Option<&str>)> = fixed
        .iter()
        .map(|(p, c)| (p.as_str(), Some(c.as_str())))
        .collect();
    files.push((broken.as_str(), None));
    repo.commit("fixed", &files);
    wait_rolled_out(
        &env,
        "fluent-bit",
        "registry.example/fluent-bit:1.2.0",
        nodes.len(),
    )
    .await;
}
