//! `nodewave diff` against a repository and ref (not a checkout): exit codes 1
//! with differences, 0 in sync, 2 on error.
#![allow(clippy::unwrap_used, clippy::expect_used)] // integration test crate: panics are test failures

mod support;

use std::time::Duration;

use support::gitops::*;
use support::nodewave::{GitRepo, Nodewave, cli};
use support::*;

#[tokio::test]
async fn diff_of_a_repo_ref_reports_then_clears() {
    let mut env = TestEnv::new("diff-repo").await;
    let nodes = env.create_nodes(&["pool-a"], 1).await;
    let repo = GitRepo::new();
    repo.commit(
        "v1",
        &[(
            "agent.yaml",
            Some(&ds_yaml(&env, "agent", "registry.example/agent:1.0.0")),
        )],
    );
    let url = repo.url();

    let (code, out) = cli(&["diff", "--repo", &url, "--branch", "main"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("DaemonSet {}/agent: would be created", env.ns)),
        "{out}"
    );

    let nw = Nodewave::start(
        &url,
        &["--poll-interval", "1s", "--allow-namespace", &env.ns],
    )
    .await;
    wait_rolled_out(&env, "agent", "registry.example/agent:1.0.0", nodes.len()).await;
    wait_status(&env, "agent", "Synced", Duration::from_secs(60)).await;
    let (code, out) = cli(&["diff", "--repo", &url, "--branch", "main"]);
    assert_eq!(code, 0, "{out}");

    let (code, out) = cli(&["diff", "--repo", &url, "--branch", "no-such-branch"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no-such-branch"), "{out}");
    drop(nw);
}
