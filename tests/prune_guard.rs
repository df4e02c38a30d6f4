//! The prune guard on the real control plane and the real `nodewave` binary: a
//! commit whose tracked path disappears is rejected, not read as "delete
//! everything"; a commit that removes every manifest has its deletions refused
//! (nothing deleted, `PruneRefused` Events, metrics, `/status`) while the rest of
//! it is applied; the same deletions go through once the commit carries
//! `.nodewave-allow-prune`.

// A failed setup step should just fail the test; counters are small integers,
// exact in f64.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::float_cmp)]

mod support;

use std::time::Duration;

use serde_json::Value;
use support::gitops::*;
use support::nodewave::{GitRepo, Nodewave};
use support::rollout::events;
use support::*;

const IMG: &str = "registry.example/agent:1.0.0";
const NAMES: [&str; 2] = ["agent", "other"];

async fn uids(env: &TestEnv) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for name in NAMES {
        out.push(get_ds(env, name).await.and_then(|d| d.metadata.uid));
    }
    out
}

/// Waits until `/status` satisfies `ok`.
async fn wait_status_json(nw: &Nodewave, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, Duration::from_secs(90), || async {
        let st = nw.status().await;
        if ok(&st) {
            Ok(Some(st))
        } else {
            Err(st.to_string())
        }
    })
    .await
}

#[tokio::test]
async fn removing_every_manifest_is_refused_until_the_commit_carries_the_marker() {
    let mut env = TestEnv::new("prune-guard").await;
    let nodes = env.create_nodes(&["pool-a"], 2).await;
    let repo = GitRepo::new();
    let c1 = repo.commit(
        "two agents",
        &[
            ("deploy/agent.yaml", Some(&ds_yaml(&env, "agent", IMG))),
            ("deploy/other.yaml", Some(&ds_yaml(&env, "other", IMG))),
        ],
    );
    let nw = Nodewave::start(
        &repo.url(),
        &[
            "--poll-interval",
            "1s",
            "--allow-namespace",
            &env.ns,
            "--path",
            "deploy",
        ],
    )
    .await;
    for name in NAMES {
        wait_rolled_out(&env, name, IMG, nodes.len()).await;
        wait_status(&env, name, "Synced", Duration::from_mins(1)).await;
    }
    wait_status_json(&nw, "c1 applied", |st| st["applied_commit"] == c1.as_str()).await;
    let before = uids(&env).await;
    assert!(before.iter().all(Option::is_some));

    // 1. The tracked path disappears (moved elsewhere): a rejected commit.
    let moved = repo.commit(
        "move the directory",
        &[
            ("deploy/agent.yaml", None),
            ("deploy/other.yaml", None),
            ("elsewhere/agent.yaml", Some(&ds_yaml(&env, "agent", IMG))),
        ],
    );
    let st = wait_status_json(&nw, "the moved path is rejected", |st| {
        st["rejected_commit"] == moved.as_str()
    })
    .await;
    eprintln!("path gone: {}", st["rejected_errors"]);
    assert!(st["rejected_errors"].to_string().contains("deploy"), "{st}");
    assert_eq!(
        nw.metric(r#"nodewave_commit_rejected_total{reason="read-error"}"#)
            .await,
        Some(1.0)
    );

    // 2. The path is back, without any manifest: applied, deletions refused.
    let empty = repo.commit(
        "no agents",
        &[("deploy/README.md", Some("# agents: none for now\n"))],
    );
    let st = wait_status_json(&nw, "the empty commit applied, its prune refused", |st| {
        st["applied_commit"] == empty.as_str() && st["prune_refused"].is_string()
    })
    .await;
    let message = st["prune_refused"].as_str().unwrap().to_string();
    eprintln!("prune refused: {message}");
    assert!(
        message.contains("would delete all 2 DaemonSet(s)")
            && message.contains(&format!("{}/agent", env.ns))
            && message.contains("deploy/.nodewave-allow-prune"),
        "{message}"
    );
    assert_eq!(nw.metric("nodewave_prune_refused_total").await, Some(1.0));
    assert_eq!(
        nw.metric("nodewave_prune_refused_daemonsets").await,
        Some(2.0)
    );
    for name in NAMES {
        wait_for(
            &format!("a PruneRefused Event on {name}"),
            Duration::from_secs(30),
            || async {
                let ev = events(&env, name).await;
                if ev.iter().any(|(r, m)| r == "PruneRefused" && *m == message) {
                    Ok(Some(()))
                } else {
                    Err(format!("{ev:?}"))
                }
            },
        )
        .await;
    }
    // Several passes later nothing is deleted, and the refusal is counted once.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(uids(&env).await, before, "no managed DaemonSet is deleted");
    assert_eq!(env.pods_by_node("agent").await.len(), nodes.len());
    assert_eq!(nw.metric("nodewave_prune_refused_total").await, Some(1.0));

    // 3. The same deletions, marked as intended: both DaemonSets go.
    let marked = repo.commit(
        "really no agents",
        &[("deploy/.nodewave-allow-prune", Some(""))],
    );
    for name in NAMES {
        wait_for(
            &format!("{name} pruned"),
            Duration::from_secs(90),
            || async {
                match get_ds(&env, name).await {
                    None => Ok(Some(())),
                    Some(ds) => Err(format!("still there: {:?}", ds.metadata.uid)),
                }
            },
        )
        .await;
    }
    let st = wait_status_json(&nw, "the marked commit applied", |st| {
        st["applied_commit"] == marked.as_str()
    })
    .await;
    assert!(st["prune_refused"].is_null(), "{st}");
    assert_eq!(
        nw.metric("nodewave_prune_refused_daemonsets").await,
        Some(0.0)
    );
    assert_eq!(nw.metric("nodewave_prune_refused_total").await, Some(1.0));
}
