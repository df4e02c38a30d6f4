//! Two actors on one record, and a replica whose clone is behind the cluster:
//! - two nodewave processes without leader election drive one rollout, and still
//!   no pod is deleted twice and no stage exceeds its budget, because every record
//!   write is conditional on the version it was computed from; a write from a
//!   stale version (a deposed leader's) fails;
//! - a replica whose fetches lag the other's (here: it fetches once, at start)
//!   never acts on its older commit: it does not record the newer template as
//!   synced under its commit (which would skip the staging), re-apply its commit
//!   or supersede the open rollout;
//! - a replica starting with a stale clone and an unreachable remote applies
//!   nothing older than what the cluster runs, until a fetch succeeds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use ::nodewave::record::client::{Records, WriteError};
use ::nodewave::record::{DaemonSetRollout, RecordStatus};
use ::nodewave::source::{Credentials, GitRef, GitSource, GitSourceConfig};
use kube::Api;
use support::gitops::{get_ds, image_of, wait_rolled_out};
use support::nodewave::{GitRepo, Nodewave, parse_metric};
use support::record;
use support::rollout::*;
use support::*;

const POOLS: [&str; 3] = ["pool-a", "pool-b", "pool-c"];
const V1: &str = "registry.example/agent-slowready:1.0.0";
const V2: &str = "registry.example/agent-slowready:2.0.0";

fn pool_nodes(nodes: &[String], pool: &str) -> Vec<String> {
    nodes
        .iter()
        .filter(|n| n.contains(&format!("-{pool}-")))
        .cloned()
        .collect()
}

fn file(env: &TestEnv, image: &str) -> String {
    let policy = policy_yaml(
        env,
        "agent",
        "  stages:\n    - {name: a, pools: [pool-a], maxUnavailable: 1}\n    - {name: b, pools: [pool-b], maxUnavailable: 1}\n    - {name: c, pools: [pool-c], maxUnavailable: 1}\n",
    );
    format!("{}{policy}", agent_yaml(env, "agent", image, Some(700)))
}

async fn conflicts(nw: &Nodewave) -> f64 {
    parse_metric(
        &nw.metrics().await,
        r#"nodewave_reconcile_errors_total{kind="record_conflict"}"#,
    )
    .unwrap_or(0.0)
}

async fn deletes(nw: &Nodewave) -> f64 {
    parse_metric(
        &nw.metrics().await,
        r#"nodewave_kube_requests_total{verb="delete",result="success"}"#,
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn two_processes_on_one_record_never_both_act() {
    let mut env = TestEnv::new("fence-two").await;
    let nodes = env.create_nodes(&POOLS, 2).await;
    let repo = GitRepo::new();
    let c1 = repo.commit("v1", &[("agent.yaml", Some(&file(&env, V1)))]);
    let args = [
        "--poll-interval",
        "1s",
        "--allow-namespace",
        env.ns.as_str(),
    ];
    let first = Nodewave::start(&repo.url(), &args).await;
    let second = Nodewave::start(&repo.url(), &args).await;
    record::wait_commit_status(&env, "agent", &c1, "Synced", Duration::from_mins(2)).await;
    wait_rolled_out(&env, "agent", V1, nodes.len()).await;
    let deletes_before = deletes(&first).await + deletes(&second).await;

    let watcher = PodWatcher::start(&env, "agent").await;
    let c2 = repo.commit("v2", &[("agent.yaml", Some(&file(&env, V2)))]);
    // A version of the record from the middle of the rollout: what a leader that
    // was deposed then would still hold.
    let api: Api<DaemonSetRollout> = Api::namespaced(env.client.clone(), &env.ns);
    let stale = wait_for(
        "the rollout of v2 started",
        Duration::from_mins(2),
        || async {
            let r = api.get("agent").await.unwrap();
            let st = r.status.clone().unwrap_or_default();
            // Any phase of the open rollout (under load a poll may miss Updating).
            if st.applied_commit.as_deref() == Some(c2.as_str()) && !st.rollout_phase.is_empty() {
                Ok(Some(r))
            } else {
                Err(format!(
                    "{} {} (applied {:?}; c1 {c1}, c2 {c2})",
                    st.phase, st.rollout_phase, st.applied_commit
                ))
            }
        },
    )
    .await;
    record::wait_commit_status(&env, "agent", &c2, "Synced", Duration::from_mins(3)).await;
    wait_rolled_out(&env, "agent", V2, nodes.len()).await;
    let records = watcher.stop();
    let stages: Vec<Vec<String>> = POOLS.iter().map(|p| pool_nodes(&nodes, p)).collect();
    let rep = replay(&records, &stages, V2);
    assert_staged(&rep, &stages, &[1, 1, 1]);
    // Six pods replaced, six deletes in all: neither process deleted a pod the
    // other had already decided to replace.
    let deleted = deletes(&first).await + deletes(&second).await - deletes_before;
    eprintln!(
        "deletes by both processes: {deleted}; record conflicts: {} + {}",
        conflicts(&first).await,
        conflicts(&second).await
    );
    assert!(
        (deleted - f64::from(u32::try_from(nodes.len()).unwrap())).abs() < f64::EPSILON,
        "{deleted} deletes for {} replacements",
        nodes.len()
    );

    // The deposed leader's write: conditional on the version it read, it fails.
    let records_client = Records::new(env.client.clone(), repo.url(), "");
    let err = records_client
        .write_status(
            &stale,
            RecordStatus {
                phase: "Synced".into(),
                ..RecordStatus::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, WriteError::Conflict(_)), "{err}");
    let r = record::get(&env, "agent").await.unwrap();
    assert_eq!(
        r.applied.as_deref(),
        Some(c2.as_str()),
        "the stale write changed nothing"
    );
}

#[tokio::test]
async fn a_replica_with_an_older_commit_never_moves_the_cluster_back() {
    let mut env = TestEnv::new("fence-lag").await;
    let nodes = env.create_nodes(&POOLS, 2).await;
    let repo = GitRepo::new();
    let c1 = repo.commit("v1", &[("agent.yaml", Some(&file(&env, V1)))]);
    let ns = env.ns.clone();
    let current = Nodewave::start(
        &repo.url(),
        &["--poll-interval", "1s", "--allow-namespace", &ns],
    )
    .await;
    record::wait_commit_status(&env, "agent", &c1, "Synced", Duration::from_mins(2)).await;
    wait_rolled_out(&env, "agent", V1, nodes.len()).await;
    // The lagging replica fetches c1 at start and then not for an hour.
    let lagging = Nodewave::start(
        &repo.url(),
        &["--poll-interval", "1h", "--allow-namespace", &ns],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let watcher = PodWatcher::start(&env, "agent").await;
    let c2 = repo.commit("v2", &[("agent.yaml", Some(&file(&env, V2)))]);
    record::wait_commit_status(&env, "agent", &c2, "Synced", Duration::from_mins(3)).await;
    wait_rolled_out(&env, "agent", V2, nodes.len()).await;
    let records = watcher.stop();
    let stages: Vec<Vec<String>> = POOLS.iter().map(|p| pool_nodes(&nodes, p)).collect();
    assert_staged(&replay(&records, &stages, V2), &stages, &[1, 1, 1]);
    let lagging_deletes = deletes(&lagging).await;
    assert!(
        lagging_deletes < 0.5,
        "the lagging replica replaced {lagging_deletes} pods:\n{}",
        lagging.logs()
    );
    // And it keeps its hands off afterwards: c2 stays applied and synced.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = record::get(&env, "agent").await.unwrap();
        assert_eq!(
            (r.applied.as_deref(), r.status.as_str()),
            (Some(c2.as_str()), "Synced"),
            "{}",
            lagging.logs()
        );
        assert_eq!(image_of(&get_ds(&env, "agent").await.unwrap()), V2);
    }
    drop(current);
}

#[tokio::test]
async fn a_replica_with_a_stale_clone_applies_nothing_older_than_what_runs() {
    let mut env = TestEnv::new("fence-stale").await;
    let nodes = env.create_nodes(&["pool-a", "pool-b"], 1).await;
    let repo = GitRepo::new();
    let c1 = repo.commit("v1", &[("agent.yaml", Some(&file(&env, V1)))]);
    // A clone of the repository as it was at c1 (a replica that was down since).
    let stale = tempfile::tempdir().unwrap();
    let stale_dir = stale.path().join("clone");
    GitSource::open(GitSourceConfig {
        url: repo.url(),
        reference: GitRef::Branch("main".into()),
        path: String::new(),
        checkout_dir: stale_dir.clone(),
        limits: ::nodewave::manifest::Limits::default(),
        credentials: Credentials::default(),
    })
    .unwrap()
    .fetch()
    .unwrap();

    let mut current = Nodewave::start(
        &repo.url(),
        &["--poll-interval", "1s", "--allow-namespace", &env.ns],
    )
    .await;
    record::wait_commit_status(&env, "agent", &c1, "Synced", Duration::from_mins(2)).await;
    let c2 = repo.commit("v2", &[("agent.yaml", Some(&file(&env, V2)))]);
    record::wait_commit_status(&env, "agent", &c2, "Synced", Duration::from_mins(3)).await;
    wait_rolled_out(&env, "agent", V2, nodes.len()).await;
    current.kill();

    // The remote goes away; the stale replica starts from its clone (head c1).
    let moved = repo.path().with_extension("away");
    std::fs::rename(repo.path(), &moved).unwrap();
    let pods = uids(&env, "agent").await;
    let stale_nw = Nodewave::start(
        &repo.url(),
        &[
            "--poll-interval",
            "1s",
            "--allow-namespace",
            &env.ns,
            "--state-dir",
            stale_dir.to_str().unwrap(),
        ],
    )
    .await;
    let r = wait_for(
        "the stale replica holds back",
        Duration::from_mins(1),
        || async {
            let r = record::get(&env, "agent").await.ok_or("no record")?;
            if r.message.contains("waiting for a successful fetch") {
                Ok(Some(r))
            } else {
                Err(format!("{r:?}\n{}", stale_nw.logs()))
            }
        },
    )
    .await;
    eprintln!("stale replica: {}", r.message);
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            image_of(&get_ds(&env, "agent").await.unwrap()),
            V2,
            "c1 was applied"
        );
        assert_eq!(uids(&env, "agent").await, pods, "a pod was replaced");
    }
    assert_eq!(r.applied.as_deref(), Some(c2.as_str()));

    // The remote is back: the replica catches up to what runs, replacing nothing.
    std::fs::rename(&moved, repo.path()).unwrap();
    record::wait_commit_status(&env, "agent", &c2, "Synced", Duration::from_mins(1)).await;
    assert_eq!(uids(&env, "agent").await, pods, "catching up replaced pods");
}
