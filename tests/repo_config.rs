//! The repository's `.nodewave.yaml` is honoured the same way by
//! `nodewave validate` on a checkout and by `nodewave run` on the commit: a
//! severity it raises rejects the commit on both, an exemption it grants lets
//! the next commit through on both, and flags still win on the server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::nodewave::{GitRepo, Nodewave, cli};
use support::record;
use support::rollout::agent_yaml;
use support::*;

const IMAGE: &str = "registry.example/agent:1.0.0";

#[tokio::test]
async fn validate_and_run_agree_on_the_repository_config() {
    let mut env = TestEnv::new("repo-config").await;
    env.create_nodes(&["pool-a"], 1).await;
    // No probes: a warning by default.
    let no_probes = agent_yaml(&env, "agent", IMAGE, None)
        .replace(
            "          readinessProbe:\n            httpGet: {path: /ready, port: 8080}\n",
            "",
        )
        .replace(
            "          livenessProbe:\n            httpGet: {path: /live, port: 8080}\n",
            "",
        );
    let strict = "severity:\n  probes-missing: error\n";
    let exempt = format!(
        "severity:\n  probes-missing: error\nexemptions:\n  - object: DaemonSet {}/agent\n    checks: [probes-missing]\n    reason: the agent has no health endpoint\n",
        env.ns
    );
    let repo = GitRepo::new();
    let c1 = repo.commit(
        "agent",
        &[("agent.yaml", Some(&agent_yaml(&env, "agent", IMAGE, None)))],
    );
    let nw = Nodewave::start(
        &repo.url(),
        &["--poll-interval", "1s", "--allow-namespace", &env.ns],
    )
    .await;
    record::wait_commit_status(&env, "agent", &c1, "Synced", Duration::from_mins(2)).await;

    // probes-missing made an error by the repository: validate and run refuse.
    let bad = repo.commit(
        "strict config, agent without probes",
        &[
            (".nodewave.yaml", Some(strict)),
            ("agent.yaml", Some(&no_probes)),
        ],
    );
    let (code, out) = cli(&["validate", repo.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("error[probes-missing]"), "{out}");
    let st = wait_for("the commit rejected", Duration::from_mins(1), || async {
        let st = nw.status().await;
        if st["rejected_commit"].as_str() == Some(bad.as_str()) {
            Ok(Some(st))
        } else {
            Err(st.to_string())
        }
    })
    .await;
    let errors = st["rejected_errors"].to_string();
    assert!(
        errors.contains("agent.yaml:") && errors.contains("error[probes-missing]"),
        "{errors}"
    );
    assert_eq!(st["applied_commit"].as_str(), Some(c1.as_str()), "{st}");

    // An exemption for this DaemonSet: both accept.
    let good = repo.commit("exempt the agent", &[(".nodewave.yaml", Some(&exempt))]);
    let (code, out) = cli(&["validate", repo.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    record::wait_commit_status(&env, "agent", &good, "Synced", Duration::from_mins(1)).await;

    // A broken config file is an error with its line on both.
    let broken = repo.commit(
        "typo",
        &[(
            ".nodewave.yaml",
            Some("severity:\n  probe-missing: error\n"),
        )],
    );
    let (code, out) = cli(&["validate", repo.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(".nodewave.yaml:2: error[repo-config]"),
        "{out}"
    );
    wait_for(
        "the broken config rejected",
        Duration::from_mins(1),
        || async {
            let st = nw.status().await;
            let errors = st["rejected_errors"].to_string();
            if st["rejected_commit"].as_str() == Some(broken.as_str())
                && errors.contains("repo-config")
            {
                Ok(Some(()))
            } else {
                Err(st.to_string())
            }
        },
    )
    .await;
}
