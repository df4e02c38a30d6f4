//! nodewave restarted while the newest commit is invalid keeps the cluster on
//! the last valid commit it applied: drift is still healed. A commit whose
//! validation panicked (the `validate-panic` failpoint), or whose reading panicked
//! after it (`load-panic`), is rejected, fails `/healthz`, and is not parsed again
//! by the restarted process.
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

/// `/healthz`: HTTP status code and body.
async fn healthz(nw: &Nodewave) -> (u16, String) {
    let r = reqwest::get(nw.url("/healthz")).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn a_commit_whose_validation_panicked_is_rejected_and_not_parsed_again_after_a_restart() {
    panicking_commit("validate-panic", "restart-panic").await;
}

/// The same for a panic after validation (rendering, decorating, config copies),
/// which runs on the pipeline's own task.
#[tokio::test]
async fn a_commit_whose_loading_panicked_after_validation_is_rejected_the_same_way() {
    panicking_commit("load-panic", "restart-loadpanic").await;
}

async fn panicking_commit(failpoint: &str, name: &str) {
    let mut env = TestEnv::new(name).await;
    let nodes = env.create_nodes(&["pool-a"], 2).await;
    let repo = GitRepo::new();
    let v1 = "registry.example/agent:1.0.0";
    let v2 = "registry.example/agent:2.0.0";
    let v3 = "registry.example/agent:3.0.0";
    let good = repo.commit("v1", &[("agent.yaml", Some(&ds_yaml(&env, "agent", v1)))]);
    let args = ["--poll-interval", "1s", "--allow-namespace", &env.ns];
    let mut nw = Nodewave::start(&repo.url(), &args).await;
    wait_rolled_out(&env, "agent", v1, nodes.len()).await;
    wait_status(&env, "agent", "Synced", Duration::from_secs(60)).await;

    // The next process panics in its second validation (the first is the
    // local head, v1): the new commit, a valid one (the panic stands for a
    // parser bug on hostile input).
    let nth = format!("{failpoint}:2");
    nw.set_env("NODEWAVE_FAILPOINT", Some(&nth));
    let poisoned = repo.commit("v2", &[("agent.yaml", Some(&ds_yaml(&env, "agent", v2)))]);
    nw.restart_maybe_unhealthy().await;
    let (code, body) = wait_for(
        "/healthz fails after the panic",
        Duration::from_secs(60),
        || async {
            let (code, body) = healthz(&nw).await;
            if code == 503 {
                Ok(Some((code, body)))
            } else {
                Err(format!("{code} {body}"))
            }
        },
    )
    .await;
    eprintln!("/healthz {code}: {}", body.trim());
    assert!(body.contains("panicked"), "{body}");
    let st = nw.status().await;
    assert_eq!(st["rejected_commit"], json!(poisoned), "{st}");
    let errors = st["rejected_errors"].to_string();
    assert!(
        errors.contains(&format!("panicked (failpoint {failpoint} reached")),
        "{errors}"
    );
    let file = nw.state_dir().join("nodewave-poisoned-commits");
    let listed = std::fs::read_to_string(&file).unwrap();
    assert_eq!(listed, format!("{poisoned}\n"));
    assert_eq!(
        nw.metric(r#"nodewave_commit_rejected_total{reason="panic"}"#)
            .await,
        Some(1.0)
    );
    let ds = get_ds(&env, "agent").await.unwrap();
    assert_eq!(
        image_of(&ds),
        v1,
        "nothing of the panicking commit is applied"
    );

    // Restarted without the failpoint: the head is that commit, and valid, so
    // parsing it would deploy v2. It is rejected unread; the process is healthy
    // and keeps the cluster on the last commit it applied.
    nw.set_env("NODEWAVE_FAILPOINT", None);
    nw.restart().await;
    wait_for(
        "the poisoned head is rejected unread",
        Duration::from_secs(60),
        || async {
            let st = nw.status().await;
            if st["rejected_commit"] == json!(poisoned)
                && st["rejected_errors"]
                    .to_string()
                    .contains("panicked in an earlier run")
            {
                Ok(Some(()))
            } else {
                Err(st.to_string())
            }
        },
    )
    .await;
    assert_eq!(healthz(&nw).await.0, 200);
    assert_eq!(
        nw.metric(r#"nodewave_commit_rejected_total{reason="panic"}"#)
            .await,
        Some(1.0)
    );
    wait_status(&env, "agent", "Synced", Duration::from_secs(60)).await;
    assert_eq!(image_of(&get_ds(&env, "agent").await.unwrap()), v1);
    assert_eq!(
        support::record::get(&env, "agent")
            .await
            .unwrap()
            .applied
            .as_ref(),
        Some(&good)
    );

    // The next commit is read and applied as usual.
    repo.commit("v3", &[("agent.yaml", Some(&ds_yaml(&env, "agent", v3)))]);
    wait_rolled_out(&env, "agent", v3, nodes.len()).await;
    assert_eq!(healthz(&nw).await.0, 200);
}
