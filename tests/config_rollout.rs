//! Config rollouts on the real control plane: a commit that changes only a
//! ConfigMap the DaemonSet mounts is rolled out stage by stage (while stage 1
//! runs, the pods of stages 2 and 3 still mount the old content, which still
//! exists), and a bad config that fails the stage's health gate is rolled back,
//! after which every pod mounts the old config again.
//!
//! The "bad config" is reported by the stage's Prometheus check (a fake
//! Prometheus answering with an error rate above the check's max): kwok fakes
//! containers from the pod spec only, so it cannot crash on a file's content.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use support::nodewave::{GitRepo, Nodewave, cli};
use support::record;
use support::rollout::*;
use support::*;

const POOLS: [&str; 3] = ["pool-a", "pool-b", "pool-c"];
const IMAGE: &str = "registry.example/agent:1.0.0";

fn files(env: &TestEnv, level: &str, prom: &str) -> String {
    let policy = policy_yaml(
        env,
        "agent",
        &format!(
            "  stages:\n    - {{name: a, pools: [pool-a], maxUnavailable: 1}}\n    - {{name: b, pools: [pool-b], maxUnavailable: 1, approval: manual}}\n    - {{name: c, pools: [pool-c], maxUnavailable: 1}}\n  health:\n    prometheus:\n      url: {prom}\n      interval: 1s\n      checks:\n        - name: errors\n          query: 'sum(rate(agent_config_errors_total[1m]))'\n          max: 0\n"
        ),
    );
    let ds = agent_yaml(env, "agent", IMAGE, None).replace(
        "      containers:\n",
        "      volumes:\n        - name: config\n          configMap: {name: agent-config}\n      containers:\n",
    );
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: agent-config\n  namespace: {ns}\ndata:\n  level: {level}\n---\n{ds}{policy}",
        ns = env.ns
    )
}

/// The ConfigMap each pod mounts, by pool.
fn mounted(pods: &BTreeMap<String, Pod>) -> BTreeMap<String, String> {
    pods.iter()
        .map(|(node, p)| {
            let pool = POOLS
                .iter()
                .find(|pool| node.contains(*pool))
                .unwrap()
                .to_string();
            let cm = p.spec.as_ref().unwrap().volumes.as_ref().unwrap()[0]
                .config_map
                .as_ref()
                .unwrap()
                .name
                .clone();
            (pool, cm)
        })
        .collect()
}

async fn wait_mounted(env: &TestEnv, want: &BTreeMap<&str, &str>, what: &str) {
    wait_for(what, Duration::from_mins(2), || async {
        let pods = env.pods_by_node("agent").await;
        let ready = pods.values().all(pod_ready) && pods.len() == POOLS.len();
        let m = mounted(&pods);
        let ok = ready
            && want
                .iter()
                .all(|(pool, cm)| m.get(*pool).map(String::as_str) == Some(*cm));
        if ok {
            Ok(Some(()))
        } else {
            Err(format!("{m:?} ready={ready}"))
        }
    })
    .await;
}

async fn wait_phase(env: &TestEnv, phase: &str) {
    wait_for(phase, Duration::from_mins(2), || async {
        let r = record::get(env, "agent").await.ok_or("no record")?;
        if r.rollout_phase == phase {
            Ok(Some(()))
        } else {
            Err(r.rollout_phase)
        }
    })
    .await;
}

#[tokio::test]
async fn a_config_change_rolls_out_stage_by_stage_and_a_bad_one_is_rolled_back() {
    let mut env = TestEnv::new("cfg-rollout").await;
    env.create_nodes(&POOLS, 1).await;
    let prom = FakePrometheus::start(0.0).await;
    let key = format!("{}/agent", env.ns);
    let cms: kube::Api<ConfigMap> = env.api();
    let repo = GitRepo::new();
    let c1 = repo.commit(
        "agent",
        &[("agent.yaml", Some(&files(&env, "info", &prom.url)))],
    );
    let _nw = Nodewave::start(
        &repo.url(),
        &[
            "--poll-interval",
            "1s",
            "--allow-namespace",
            &env.ns,
            "--allow-prometheus-url",
            &prom.url,
        ],
    )
    .await;
    wait_phase(&env, "AwaitingApproval").await;
    assert_eq!(cli(&["rollout", "approve", &key]).0, 0);
    record::wait_commit_status(&env, "agent", &c1, "Synced", Duration::from_mins(2)).await;
    let pods = env.pods_by_node("agent").await;
    let v1 = mounted(&pods)["pool-a"].clone();
    assert!(v1.starts_with("agent-config-"), "{v1}");
    let copy = cms.get(&v1).await.unwrap();
    assert_eq!(copy.data.unwrap()["level"], "info");
    assert_eq!(copy.immutable, Some(true));

    // Only the config changes: stage a gets it, b and c keep the old copy.
    let c2 = repo.commit(
        "debug logging",
        &[("agent.yaml", Some(&files(&env, "debug", &prom.url)))],
    );
    wait_phase(&env, "AwaitingApproval").await;
    let pods = env.pods_by_node("agent").await;
    let m = mounted(&pods);
    let v2 = m["pool-a"].clone();
    eprintln!("while stage a runs: {m:?}");
    assert_ne!(v2, v1, "{m:?}");
    assert_eq!(m["pool-b"], v1, "{m:?}");
    assert_eq!(m["pool-c"], v1, "{m:?}");
    assert_eq!(cms.get(&v1).await.unwrap().data.unwrap()["level"], "info");
    assert_eq!(cms.get(&v2).await.unwrap().data.unwrap()["level"], "debug");
    assert_eq!(cli(&["rollout", "approve", &key]).0, 0);
    record::wait_commit_status(&env, "agent", &c2, "Synced", Duration::from_mins(2)).await;
    wait_mounted(
        &env,
        &BTreeMap::from([
            ("pool-a", v2.as_str()),
            ("pool-b", v2.as_str()),
            ("pool-c", v2.as_str()),
        ]),
        "every pod on the debug config",
    )
    .await;

    // `nodewave diff` shows the config change and the template change it makes.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("agent.yaml"),
        files(&env, "broken", &prom.url),
    )
    .unwrap();
    let (code, out) = cli(&[
        "diff",
        "--dir",
        dir.path().to_str().unwrap(),
        "--paths-only",
        "--allow-namespace",
        &env.ns,
        "--allow-prometheus-url",
        &prom.url,
    ]);
    eprintln!("nodewave diff:\n{out}");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("DaemonSet {}/agent: differs", env.ns)),
        "{out}"
    );
    assert!(
        out.contains("~ spec.template.spec.volumes[0].configMap.name"),
        "{out}"
    );
    assert!(
        out.contains(&format!("ConfigMap {}/agent-config: differs", env.ns)),
        "{out}"
    );
    assert!(out.contains("~ data.level"), "{out}");
    assert!(out.contains("would be created"), "{out}");

    // A bad config: its stage's health check fails, the rollout is rolled back,
    // and every pod mounts the last good config again.
    *prom.value.lock().unwrap() = 5.0;
    let c3 = repo.commit(
        "broken config",
        &[("agent.yaml", Some(&files(&env, "broken", &prom.url)))],
    );
    record::wait_status(&env, "agent", "RolledBack", Duration::from_mins(2)).await;
    let r = record::get(&env, "agent").await.unwrap();
    assert!(r.failed_contains(&c3), "{:?}", r.failed);
    wait_mounted(
        &env,
        &BTreeMap::from([
            ("pool-a", v2.as_str()),
            ("pool-b", v2.as_str()),
            ("pool-c", v2.as_str()),
        ]),
        "every pod back on the debug config",
    )
    .await;
    assert_eq!(cms.get(&v2).await.unwrap().data.unwrap()["level"], "debug");
    // The original ConfigMap is applied under its own name too (for other readers).
    assert_eq!(
        cms.get("agent-config").await.unwrap().data.unwrap()["level"],
        "broken"
    );
}
