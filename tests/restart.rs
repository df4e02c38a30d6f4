//! nodewave restarted while the newest commit is invalid keeps the cluster on
//! the last valid commit it applied: drift is still healed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // integration test crate: panics are test failures

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use support::gitops::*;
use support::nodewave::{GitRepo, Nodewave};
use support::*;

#[tokio::test]
async fn restart_on_an_invalid_head_keeps_healing_from_the_last_applied_commit() {
    let mut env = TestEnv::new("restart-invalid").await;
    let nodes = env.create_nodes(&["pool-a"], 2).await;
    let repo = GitRepo::new();
    let good = repo.commit(
        "v1",
        &[(
            "agent.yaml",
            Some(&ds_yaml(&env, "agent", "registry.example/agent:1.0.0")),
        )],
    );
    let mut nw = Nodewave::start(
        &repo.url(),
        &["--poll-interval", "1s", "--allow-namespace", &env.ns],
    )
    .await;
    wait_rolled_out(&env, "agent", "registry.example/agent:1.0.0", nodes.len()).await;
    wait_status(&env, "agent", "Synced", Duration::from_secs(60)).await;

    // The invalid commit is fetched (and rejected) before the restart, so the
    // restarted nodewave finds it as the head of its local clone.
    let bad = repo.commit(
        "broken",
        &[(
            "broken.yaml",
            Some("apiVersion: apps/v1\nkind: DaemonSet\nmetadata: [oops\n"),
        )],
    );
    let rejected = |url: String| {
        let bad = bad.clone();
        async move {
            let st: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
            if st["rejected_commit"] == json!(bad) {
                Ok(Some(()))
            } else {
                Err(st.to_string())
            }
        }
    };
    wait_for(
        "the invalid head is rejected",
        Duration::from_secs(60),
        || rejected(nw.url("/status")),
    )
    .await;
    nw.restart().await;
    wait_for(
        "the invalid head is rejected after the restart",
        Duration::from_secs(60),
        || rejected(nw.url("/status")),
    )
    .await;
    wait_for(
        "the last applied commit is used",
        Duration::from_secs(60),
        || async {
            if nw
                .logs()
                .contains("keeping the cluster on the last valid commit")
            {
                Ok(Some(()))
            } else {
                Err("not yet".into())
            }
        },
    )
    .await;

    // Drift is still healed, from the last valid commit.
    let api: Api<DaemonSet> = env.api();
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "agent", "image": "registry.example/agent:hotfix"}]}}}});
    api.patch("agent", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    wait_for(
        "drift healed back to the last valid commit",
        Duration::from_secs(60),
        || async {
            let ds = get_ds(&env, "agent").await.unwrap();
            if image_of(&ds) == "registry.example/agent:1.0.0" {
                Ok(Some(()))
            } else {
                Err(image_of(&ds))
            }
        },
    )
    .await;
    let ds = wait_status(&env, "agent", "Synced", Duration::from_secs(60)).await;
    let _ = ds;
    assert_eq!(
        support::record::get(&env, "agent")
            .await
            .unwrap()
            .applied
            .as_ref(),
        Some(&good),
        "the cluster stays on the last valid commit, not the rejected one"
    );
}
