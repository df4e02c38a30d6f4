//! The write-ahead record under faults, on the real control plane: nodewave
//! killed right after applying a new template (a failpoint aborts the process
//! there), and kube-controller-manager stopped for 40 s during a change. Both end
//! with the rollout going through every stage within its budget, never Synced
//! before that.
//!
//! The tests stop the cluster's controller-manager, so they run one at a time
//! (the lock below) and in a test binary of their own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::gitops::{get_ds, image_of, wait_rolled_out};
use support::nodewave::{GitRepo, Nodewave};
use support::record;
use support::rollout::*;
use support::*;

const POOLS: [&str; 3] = ["pool-a", "pool-b", "pool-c"];
const V1: &str = "registry.example/agent-slowready:1.0.0";
const V2: &str = "registry.example/agent-slowready:2.0.0";

/// One fault test at a time: a stopped controller-manager stalls every test.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn pool_nodes(nodes: &[String], pool: &str) -> Vec<String> {
    nodes
        .iter()
        .filter(|n| n.contains(&format!("-{pool}-")))
        .cloned()
        .collect()
}

fn policy(env: &TestEnv) -> String {
    policy_yaml(
        env,
        "agent",
        "  stages:\n    - {name: a, pools: [pool-a], maxUnavailable: 1}\n    - {name: b, pools: [pool-b], maxUnavailable: 1}\n    - {name: c, pools: [pool-c], maxUnavailable: 1}\n",
    )
}

fn file(env: &TestEnv, image: &str) -> String {
    format!(
        "{}{}",
        agent_yaml(env, "agent", image, Some(800)),
        policy(env)
    )
}

/// `(status.phase, status.appliedCommit)` of the record, in time order.
type Samples = Vec<(String, Option<String>)>;

/// Samples the record every 200 ms and returns what it saw, to prove the commit
/// was never reported Synced before its pods were all replaced.
fn sample_records(
    env: &TestEnv,
) -> (
    tokio::task::JoinHandle<Samples>,
    tokio::sync::watch::Sender<bool>,
) {
    let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
    let client = env.client.clone();
    let ns = env.ns.clone();
    let handle = tokio::spawn(async move {
        let api: kube::Api<::nodewave::record::DaemonSetRollout> =
            kube::Api::namespaced(client, &ns);
        let mut seen = Vec::new();
        loop {
            let stopping = *stop.borrow();
            if let Ok(Some(r)) = api.get_opt("agent").await {
                let st = r.status.unwrap_or_default();
                seen.push((st.phase, st.applied_commit));
            }
            if stopping {
                return seen;
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => {}
            }
        }
    });
    (handle, stop_tx)
}

#[tokio::test]
async fn killed_right_after_the_template_apply_the_rollout_still_goes_stage_by_stage() {
    let _serial = SERIAL.lock().await;
    let mut env = TestEnv::new("fault-kill").await;
    let nodes = env.create_nodes(&POOLS, 2).await;
    let repo = GitRepo::new();
    let c1 = repo.commit("v1", &[("agent.yaml", Some(&file(&env, V1)))]);
    let mut nw = Nodewave::start(
        &repo.url(),
        &["--poll-interval", "1s", "--allow-namespace", &env.ns],
    )
    .await;
    record::wait_commit_status(&env, "agent", &c1, "Synced", Duration::from_mins(2)).await;
    wait_rolled_out(&env, "agent", V1, nodes.len()).await;

    // The next process aborts right after it applies a template.
    nw.set_env("NODEWAVE_FAILPOINT", Some("after-apply"));
    nw.restart().await;
    let watcher = PodWatcher::start(&env, "agent").await;
    let c2 = repo.commit("v2", &[("agent.yaml", Some(&file(&env, V2)))]);
    let status = nw.wait_exit(Duration::from_mins(1)).await;
    assert!(!status.success(), "the failpoint aborts the process");
    assert!(nw.logs().contains("failpoint after-apply reached"));

    // What the crash left: the new template is live (OnDelete, so no pod moved),
    // and the record, written before the apply, says a rollout of c2 is open.
    let ds = get_ds(&env, "agent").await.unwrap();
    assert_eq!(image_of(&ds), V2);
    assert!(
        env.pods_by_node("agent")
            .await
            .values()
            .all(|p| pod_image(p) == V1),
        "no pod replaced yet"
    );
    let r = record::get(&env, "agent").await.unwrap();
    assert_eq!(r.applied.as_deref(), Some(c2.as_str()));
    assert_eq!(r.status, "Progressing", "{r:?}");
    assert_eq!(r.rollout_phase, "Applying", "{r:?}");

    // Restarted without the failpoint: the rollout resumes from the record,
    // stage by stage, and only then reports Synced.
    let (sampler, stop) = sample_records(&env);
    nw.set_env("NODEWAVE_FAILPOINT", None);
    let t0 = Instant::now();
    nw.restart().await;
    record::wait_commit_status(&env, "agent", &c2, "Synced", Duration::from_mins(3)).await;
    eprintln!("restart -> rollout of c2 Synced in {:?}", t0.elapsed());
    wait_rolled_out(&env, "agent", V2, nodes.len()).await;
    let _ = stop.send(true);
    let samples = sampler.await.unwrap();
    let records = watcher.stop();
    let stages: Vec<Vec<String>> = POOLS.iter().map(|p| pool_nodes(&nodes, p)).collect();
    let rep = replay(&records, &stages, V2);
    eprintln!("pod timeline:\n{}", PodWatcher::timeline(&records));
    assert_staged(&rep, &stages, &[1, 1, 1]);
    // Synced at c2 appears only at the end: every sample before the last
    // Progressing one is Progressing.
    let first_synced = samples
        .iter()
        .position(|(st, c)| st == "Synced" && c.as_deref() == Some(c2.as_str()));
    let last_progressing = samples.iter().rposition(|(st, _)| st == "Progressing");
    assert!(
        first_synced.is_some() && first_synced > last_progressing,
        "Synced early: {samples:?}"
    );
}

/// SIGSTOPs the cluster's kube-controller-manager; SIGCONTs it when dropped,
/// whatever happens in the test.
struct StoppedControllerManager {
    pid: String,
}

fn controller_manager_pid() -> String {
    let kubeconfig = kubeconfig_path();
    let dir: PathBuf = kubeconfig.parent().unwrap().to_path_buf();
    let pid = std::fs::read_to_string(dir.join("pids/kube-controller-manager.pid"))
        .unwrap_or_else(|e| {
            panic!(
                "cannot find the controller-manager of the local cluster next to {} ({e}); start it with hack/cluster.sh up",
                kubeconfig.display()
            )
        });
    pid.trim().to_string()
}

impl StoppedControllerManager {
    fn stop() -> Self {
        let pid = controller_manager_pid();
        let ok = std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot stop kube-controller-manager {pid}");
        Self { pid }
    }
}

impl Drop for StoppedControllerManager {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.pid])
            .status();
    }
}

#[tokio::test]
async fn controller_manager_stopped_during_a_change_is_waited_for_never_skipped() {
    let _serial = SERIAL.lock().await;
    let mut env = TestEnv::new("fault-kcm").await;
    let nodes = env.create_nodes(&POOLS, 2).await;
    let repo = GitRepo::new();
    let c1 = repo.commit("v1", &[("agent.yaml", Some(&file(&env, V1)))]);
    let nw = Nodewave::start(
        &repo.url(),
        &["--poll-interval", "1s", "--allow-namespace", &env.ns],
    )
    .await;
    record::wait_commit_status(&env, "agent", &c1, "Synced", Duration::from_mins(2)).await;
    wait_rolled_out(&env, "agent", V1, nodes.len()).await;
    let before = uids(&env, "agent").await;

    let watcher = PodWatcher::start(&env, "agent").await;
    let (sampler, stop) = sample_records(&env);
    let stopped = StoppedControllerManager::stop();
    let c2 = repo.commit("v2", &[("agent.yaml", Some(&file(&env, V2)))]);
    // For 40 s the controller cannot observe the new template: nodewave waits
    // (and says why) instead of finishing the rollout.
    let r = wait_for(
        "nodewave waits for the controller",
        Duration::from_secs(30),
        || async {
            let r = record::get(&env, "agent").await.ok_or("no record")?;
            if r.applied.as_deref() == Some(c2.as_str())
                && r.message.contains("kube-controller-manager")
            {
                Ok(Some(r))
            } else {
                Err(format!("{r:?}"))
            }
        },
    )
    .await;
    eprintln!(
        "while the controller-manager is stopped: {} / {}",
        r.status, r.message
    );
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert_eq!(
        uids(&env, "agent").await,
        before,
        "no pod moved while it was stopped"
    );
    let r = record::get(&env, "agent").await.unwrap();
    assert_eq!(r.status, "Progressing", "{r:?}");
    drop(stopped);

    let t0 = Instant::now();
    record::wait_commit_status(&env, "agent", &c2, "Synced", Duration::from_mins(3)).await;
    eprintln!("controller-manager back -> c2 Synced in {:?}", t0.elapsed());
    wait_rolled_out(&env, "agent", V2, nodes.len()).await;
    let _ = stop.send(true);
    let samples = sampler.await.unwrap();
    let records = watcher.stop();
    let stages: Vec<Vec<String>> = POOLS.iter().map(|p| pool_nodes(&nodes, p)).collect();
    let rep = replay(&records, &stages, V2);
    assert_staged(&rep, &stages, &[1, 1, 1]);
    let first_synced = samples
        .iter()
        .position(|(st, c)| st == "Synced" && c.as_deref() == Some(c2.as_str()));
    let last_progressing = samples.iter().rposition(|(st, _)| st == "Progressing");
    assert!(
        first_synced.is_some() && first_synced > last_progressing,
        "Synced early: {samples:?}"
    );
    assert!(nw.logs().contains("waiting for the DaemonSet controller"));
}
