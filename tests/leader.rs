//! Leader election: of two replicas only the lease holder acts; when it dies the
//! standby takes over.

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration test crate: panics are test failures

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use support::nodewave::{GitRepo, Nodewave};
use support::*;

fn ds_yaml(env: &TestEnv, image: &str) -> String {
    let mut ds = daemonset(env, "agent", image);
    ds["metadata"]["labels"] = serde_json::json!({"app": "agent"});
    let c = &mut ds["spec"]["template"]["spec"]["containers"][0];
    c["readinessProbe"] = serde_json::json!({"httpGet": {"path": "/ready", "port": 8080}});
    c["livenessProbe"] = serde_json::json!({"httpGet": {"path": "/live", "port": 8080}});
    serde_json::to_string_pretty(&ds).unwrap()
}

async fn image(env: &TestEnv) -> Option<String> {
    let ds = env.api::<DaemonSet>().get_opt("agent").await.unwrap()?;
    ds.spec?.template.spec?.containers[0].image.clone()
}

#[tokio::test]
async fn only_the_leader_acts_and_a_standby_takes_over() {
    let mut env = TestEnv::new("leader").await;
    env.create_nodes(&["pool-a"], 1).await;
    let repo = GitRepo::new();
    repo.commit(
        "v1",
        &[(
            "agent.json.yaml",
            Some(&ds_yaml(&env, "registry.example/agent:1.0.0")),
        )],
    );
    let args = [
        "--poll-interval",
        "1s",
        "--allow-namespace",
        env.ns.as_str(),
        "--leader-elect",
        "--leader-election-namespace",
        env.ns.as_str(),
    ];
    let mut first = Nodewave::start(&repo.url(), &args).await;
    wait_for(
        "first replica leads and applies v1",
        Duration::from_secs(60),
        || async {
            match image(&env).await.as_deref() {
                Some("registry.example/agent:1.0.0") => Ok(Some(())),
                other => Err(format!("image {other:?}; log:\n{}", first.logs())),
            }
        },
    )
    .await;
    assert!(first.logs().contains("became leader"));

    let second = Nodewave::start(&repo.url(), &args).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        second.logs().contains("waiting to become leader"),
        "{}",
        second.logs()
    );
    assert!(
        !second.logs().contains("became leader"),
        "two leaders at once:\n{}",
        second.logs()
    );
    // A standby is Ready (a two-replica Deployment rolls out), but /leaderz tells
    // a load balancer that only the first replica acts (and takes webhooks).
    let ready = reqwest::get(second.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    assert!(ready.text().await.unwrap().contains("standby"));
    let leaderz = |nw: &Nodewave| reqwest::get(nw.url("/leaderz"));
    assert_eq!(leaderz(&second).await.unwrap().status(), 503);
    assert_eq!(leaderz(&first).await.unwrap().status(), 200);

    first.kill();
    let killed = std::time::Instant::now();
    repo.commit(
        "v2",
        &[(
            "agent.json.yaml",
            Some(&ds_yaml(&env, "registry.example/agent:2.0.0")),
        )],
    );
    wait_for(
        "standby takes over and applies v2",
        Duration::from_secs(90),
        || async {
            match image(&env).await.as_deref() {
                Some("registry.example/agent:2.0.0") => Ok(Some(())),
                other => Err(format!("image {other:?}; standby log:\n{}", second.logs())),
            }
        },
    )
    .await;
    eprintln!(
        "standby took over and applied the next commit {:?} after the leader was killed",
        killed.elapsed()
    );
    assert!(second.logs().contains("became leader"));
}
