//! Staged per-pool rollouts, health gates and automatic rollback, against the real
//! local control plane with the real `nodewave` binary. A watcher task records every
//! state the DaemonSet's pods go through, so stage order and the unavailability
//! budget are checked on what actually happened, not on nodewave's own report.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::gitops::{get_ds, image_of, wait_rolled_out, wait_status};
use support::nodewave::{GitRepo, Nodewave, cli};
use support::record;
use support::rollout::*;
use support::*;

const POOLS: [&str; 3] = ["pool-a", "pool-b", "pool-c"];
const GOOD: &str = "registry.example/agent:1.0.0";

async fn start(repo: &GitRepo, env: &TestEnv) -> Nodewave {
    Nodewave::start(
        &repo.url(),
        &["--poll-interval", "1s", "--allow-namespace", &env.ns],
    )
    .await
}

fn pool_nodes(nodes: &[String], pool: &str) -> Vec<String> {
    nodes
        .iter()
        .filter(|n| n.contains(&format!("-{pool}-")))
        .cloned()
        .collect()
}

/// Waits until the record says `commit` is applied with `status` (Synced only
/// once the rollout recorded the commit as good).
async fn wait_commit_status(env: &TestEnv, name: &str, commit: &str, status: &str) -> Instant {
    record::wait_commit_status(env, name, commit, status, Duration::from_mins(3)).await;
    Instant::now()
}

async fn rec(env: &TestEnv, name: &str) -> record::Rec {
    record::get(env, name)
        .await
        .expect("a DaemonSetRollout record")
}

fn is_old_pod_leaving(r: &PodRecord, new_image: &str) -> bool {
    (r.deleted || r.terminating) && r.image != new_image
}

/// Asserts for `secs` seconds that the template keeps `image` and no pod is replaced.
async fn assert_stays(env: &TestEnv, name: &str, image: &str, secs: u64) {
    let before = uids(env, name).await;
    for _ in 0..secs {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let ds = get_ds(env, name).await.unwrap();
        assert_eq!(
            image_of(&ds),
            image,
            "template changed while it should stay"
        );
        assert_eq!(uids(env, name).await, before, "a pod was replaced");
    }
}

// 1. A good change goes pool by pool, within each stage's budget.
#[tokio::test]
async fn good_change_rolls_out_stage_by_stage_within_budget() {
    let mut env = TestEnv::new("ro-staged").await;
    let nodes = env.create_nodes(&POOLS, 3).await;
    let policy = policy_yaml(
        &env,
        "agent",
        "  stages:\n    - name: first\n      pools: [pool-a]\n      maxUnavailable: 1\n    - name: second\n      pools: [pool-b]\n      maxUnavailable: 2\n    - name: rest\n      pools: [\"*\"]\n      maxUnavailable: \"100%\"\n",
    );
    let v1 = "registry.example/agent-slowready:1.0.0";
    let v2 = "registry.example/agent-slowready:2.0.0";
    let repo = GitRepo::new();
    let file = |image: &str| format!("{}{policy}", agent_yaml(&env, "agent", image, Some(1500)));
    let c1 = repo.commit("add", &[("agent.yaml", Some(&file(v1)))]);
    let nw = start(&repo, &env).await;
    wait_rolled_out(&env, "agent", v1, nodes.len()).await;
    wait_commit_status(&env, "agent", &c1, "Synced").await;

    let watcher = PodWatcher::start(&env, "agent").await;
    let t0 = Instant::now();
    let c2 = repo.commit("bump", &[("agent.yaml", Some(&file(v2)))]);
    wait_commit_status(&env, "agent", &c2, "Synced").await;
    eprintln!(
        "staged rollout of 9 nodes (1/2/3 budget, 1.5 s ready delay): {:?}",
        t0.elapsed()
    );
    wait_rolled_out(&env, "agent", v2, nodes.len()).await;
    let records = watcher.stop();
    let stages: Vec<Vec<String>> = POOLS.iter().map(|p| pool_nodes(&nodes, p)).collect();
    let rep = replay(&records, &stages, v2);
    eprintln!("pod timeline:\n{}", PodWatcher::timeline(&records));
    eprintln!(
        "max unavailable per stage: {:?} ({} pod states recorded)",
        rep.max_unavailable,
        records.len()
    );
    assert_staged(&rep, &stages, &[1, 2, 3]);
    // The budget is used, not just respected: stage 2 replaced two at once.
    assert!(rep.max_unavailable.iter().all(|m| *m >= 1), "{rep:?}");
    assert_eq!(
        rec(&env, "agent").await.last_good.as_deref(),
        Some(c2.as_str())
    );
    let ev = events(&env, "agent").await;
    for reason in [
        "RolloutStarted",
        "StageStarted",
        "StagePassed",
        "RolloutSucceeded",
    ] {
        assert!(
            ev.iter().any(|(r, _)| r == reason),
            "no {reason} Event: {ev:?}"
        );
    }
    let ok = format!(
        r#"nodewave_rollouts_total{{namespace="{}",daemonset="agent",outcome="succeeded"}}"#,
        env.ns
    );
    assert!(metric0(&nw, &ok).await >= 2.0);
}

// 2 + 4. A crash-looping image fails the first stage's gate and is rolled back,
// never re-applied; a revert afterwards syncs without replacing a pod.
#[tokio::test]
async fn crashloop_is_rolled_back_in_first_stage_not_reapplied_and_revert_is_free() {
    let mut env = TestEnv::new("ro-crash").await;
    let nodes = env.create_nodes(&POOLS, 2).await;
    let repo = GitRepo::new();
    let good = agent_yaml(&env, "agent", GOOD, None);
    let c1 = repo.commit("add", &[("agent.yaml", Some(&good))]);
    let nw = start(&repo, &env).await;
    wait_rolled_out(&env, "agent", GOOD, nodes.len()).await;
    wait_commit_status(&env, "agent", &c1, "Synced").await;
    let before = uids(&env, "agent").await;

    let rolled_back = format!(
        r#"nodewave_rollouts_total{{namespace="{}",daemonset="agent",outcome="rolled_back"}}"#,
        env.ns
    );
    let fatal = format!(
        r#"nodewave_gate_failures_total{{namespace="{}",daemonset="agent",gate="fatal_reason"}}"#,
        env.ns
    );
    let (rb0, fatal0) = (metric0(&nw, &rolled_back).await, metric0(&nw, &fatal).await);

    let bad = "registry.example/agent-crashloop:2.0.0";
    let t0 = Instant::now();
    let c2 = repo.commit(
        "bad",
        &[("agent.yaml", Some(&agent_yaml(&env, "agent", bad, None)))],
    );
    let ds = wait_status(&env, "agent", "RolledBack", Duration::from_mins(2)).await;
    eprintln!(
        "crashloop commit -> RolledBack recorded: {:?}",
        t0.elapsed()
    );
    assert_eq!(image_of(&ds), GOOD, "template back to the last good commit");
    wait_rolled_out(&env, "agent", GOOD, nodes.len()).await;
    eprintln!(
        "crashloop commit -> every pod back on the old revision: {:?}",
        t0.elapsed()
    );

    let after = uids(&env, "agent").await;
    for n in pool_nodes(&nodes, "pool-b")
        .iter()
        .chain(&pool_nodes(&nodes, "pool-c"))
    {
        assert_eq!(after[n], before[n], "pod on {n} (pool 2/3) was touched");
    }
    let replaced = pool_nodes(&nodes, "pool-a")
        .iter()
        .filter(|n| after[*n] != before[*n])
        .count();
    assert!(replaced >= 1, "the first stage tried the new image");

    let r = rec(&env, "agent").await;
    assert!(r.failed_contains(&c2), "failed commits: {:?}", r.failed);
    assert_eq!(r.last_good.as_deref(), Some(c1.as_str()));
    let ev = events(&env, "agent").await;
    for reason in ["GateFailed", "RollbackStarted"] {
        assert!(
            ev.iter().any(|(r, _)| r == reason),
            "no {reason} Event: {ev:?}"
        );
    }
    assert!(metric0(&nw, &rolled_back).await > rb0);
    assert!(metric0(&nw, &fatal).await > fatal0);

    // Polls every second: the failed commit is never applied again by itself.
    assert_stays(&env, "agent", GOOD, 10).await;
    assert_eq!(rec(&env, "agent").await.status, "RolledBack");

    // 4. `git revert`: same content as what runs, under a new commit.
    let quiet = uids(&env, "agent").await;
    let c3 = repo.commit("Revert \"bad\"", &[("agent.yaml", Some(&good))]);
    wait_commit_status(&env, "agent", &c3, "Synced").await;
    // It stays Synced (no flapping back to RolledBack) and nothing is replaced.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(rec(&env, "agent").await.status, "Synced");
    }
    assert_eq!(uids(&env, "agent").await, quiet, "the revert replaced pods");
    assert_eq!(
        rec(&env, "agent").await.last_good.as_deref(),
        Some(c3.as_str())
    );
}

// 3. A pod that never becomes Ready fails the ready timeout.
#[tokio::test]
async fn never_ready_image_is_rolled_back_after_ready_timeout() {
    let mut env = TestEnv::new("ro-never").await;
    let nodes = env.create_nodes(&POOLS, 2).await;
    let policy = policy_yaml(&env, "agent", "  health:\n    readyTimeout: 5s\n");
    let repo = GitRepo::new();
    let c1 = repo.commit(
        "add",
        &[(
            "agent.yaml",
            Some(&format!(
                "{}{policy}",
                agent_yaml(&env, "agent", GOOD, None)
            )),
        )],
    );
    let nw = start(&repo, &env).await;
    wait_rolled_out(&env, "agent", GOOD, nodes.len()).await;
    wait_commit_status(&env, "agent", &c1, "Synced").await;
    let before = uids(&env, "agent").await;

    let t0 = Instant::now();
    let bad = "registry.example/agent-neverready:2.0.0";
    let c2 = repo.commit(
        "bad",
        &[(
            "agent.yaml",
            Some(&format!("{}{policy}", agent_yaml(&env, "agent", bad, None))),
        )],
    );
    let ds = wait_status(&env, "agent", "RolledBack", Duration::from_mins(2)).await;
    eprintln!("neverready commit -> RolledBack: {:?}", t0.elapsed());
    assert_eq!(image_of(&ds), GOOD);
    wait_rolled_out(&env, "agent", GOOD, nodes.len()).await;
    let r = rec(&env, "agent").await;
    assert!(r.failed_contains(&c2), "{:?}", r.failed);
    let gate = format!(
        r#"nodewave_gate_failures_total{{namespace="{}",daemonset="agent",gate="ready_timeout"}}"#,
        env.ns
    );
    assert!(metric0(&nw, &gate).await >= 1.0, "{}", nw.metrics().await);
    let after = uids(&env, "agent").await;
    for n in pool_nodes(&nodes, "pool-b")
        .iter()
        .chain(&pool_nodes(&nodes, "pool-c"))
    {
        assert_eq!(after[n], before[n], "pod on {n} was touched");
    }
}

// 5. SIGKILL in the middle of a stage; the restarted nodewave finishes correctly.
#[tokio::test]
async fn killed_mid_stage_resumes_and_finishes_within_budget() {
    let mut env = TestEnv::new("ro-kill").await;
    let nodes = env.create_nodes(&POOLS, 2).await;
    let v1 = "registry.example/agent-slowready:1.0.0";
    let v2 = "registry.example/agent-slowready:2.0.0";
    let repo = GitRepo::new();
    let c1 = repo.commit(
        "add",
        &[(
            "agent.yaml",
            Some(&agent_yaml(&env, "agent", v1, Some(3000))),
        )],
    );
    let mut nw = start(&repo, &env).await;
    wait_rolled_out(&env, "agent", v1, nodes.len()).await;
    wait_commit_status(&env, "agent", &c1, "Synced").await;

    let watcher = PodWatcher::start(&env, "agent").await;
    let t0 = Instant::now();
    let c2 = repo.commit(
        "bump",
        &[(
            "agent.yaml",
            Some(&agent_yaml(&env, "agent", v2, Some(3000))),
        )],
    );
    let pool_b = pool_nodes(&nodes, "pool-b");
    watcher
        .wait_until(
            "the first deletion of stage 2",
            Duration::from_mins(2),
            |r| is_old_pod_leaving(r, v2) && pool_b.contains(&r.node),
        )
        .await;
    nw.kill();
    eprintln!(
        "killed nodewave {:?} after the commit, mid stage 2",
        t0.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    nw.restart().await;
    wait_commit_status(&env, "agent", &c2, "Synced").await;
    eprintln!(
        "rollout with a SIGKILL and restart finished in {:?}",
        t0.elapsed()
    );
    wait_rolled_out(&env, "agent", v2, nodes.len()).await;
    let records = watcher.stop();
    let stages: Vec<Vec<String>> = POOLS.iter().map(|p| pool_nodes(&nodes, p)).collect();
    let rep = replay(&records, &stages, v2);
    eprintln!("max unavailable per stage: {:?}", rep.max_unavailable);
    assert_staged(&rep, &stages, &[1, 1, 1]);
    assert!(nw.logs().contains("rollout"), "logs");
}

// 6 + 8. A canary updates exactly one node; the next stage waits for approval;
// pause stops deletions, resume continues; status shows progress; abort rolls back.
#[tokio::test]
async fn canary_approval_pause_resume_abort_and_status() {
    let mut env = TestEnv::new("ro-ctl").await;
    let nodes = env.create_nodes(&POOLS, 2).await;
    let policy = policy_yaml(
        &env,
        "agent",
        "  stages:\n    - name: canary\n      pools: [pool-a]\n      nodes: 1\n    - name: fleet\n      pools: [\"*\"]\n      approval: manual\n",
    );
    let v1 = "registry.example/agent-slowready:1.0.0";
    let v2 = "registry.example/agent-slowready:2.0.0";
    let v3 = "registry.example/agent-slowready:3.0.0";
    let file = |image: &str| format!("{}{policy}", agent_yaml(&env, "agent", image, Some(2000)));
    let repo = GitRepo::new();
    let c1 = repo.commit("add", &[("agent.yaml", Some(&file(v1)))]);
    let nw = start(&repo, &env).await;
    // The first rollout also has the approval stage.
    wait_for(
        "first rollout awaits approval",
        Duration::from_mins(2),
        || async {
            let r = record::get(&env, "agent").await.ok_or("no record")?;
            if r.rollout_phase == "AwaitingApproval" {
                Ok(Some(()))
            } else {
                Err(format!("{} {}", r.status, r.rollout_phase))
            }
        },
    )
    .await;
    let key = format!("{}/agent", env.ns);
    let (code, out) = cli(&["rollout", "approve", &key]);
    assert_eq!(code, 0, "{out}");
    wait_commit_status(&env, "agent", &c1, "Synced").await;
    wait_rolled_out(&env, "agent", v1, nodes.len()).await;

    let watcher = PodWatcher::start(&env, "agent").await;
    let c2 = repo.commit("bump", &[("agent.yaml", Some(&file(v2)))]);
    wait_status(&env, "agent", "Progressing", Duration::from_mins(1)).await;
    let status_json = wait_for(
        "stage 2 awaiting approval",
        Duration::from_mins(2),
        || async {
            let (code, out) = cli(&["status", "-o", "json", "-n", &env.ns]);
            if code != 0 {
                return Err(out);
            }
            let v: serde_json::Value =
                serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
            let row = &v["daemonsets"][0];
            if row["rollout"]["phase"] == "AwaitingApproval" && row["rollout"]["stage"] == 1 {
                Ok(Some(row.clone()))
            } else {
                Err(out)
            }
        },
    )
    .await;
    eprintln!("status -o json while awaiting approval: {status_json:#}");
    assert_eq!(status_json["rollout"]["stage_name"], "fleet");
    assert_eq!(status_json["status"], "Progressing");
    assert_eq!(
        status_json["pools"]["pool-a"]["updated"], 1,
        "{status_json:#}"
    );
    assert_eq!(
        status_json["pools"]["pool-a"]["ready"], 1,
        "{status_json:#}"
    );
    assert_eq!(
        status_json["pools"]["pool-a"]["total"], 2,
        "{status_json:#}"
    );
    assert_eq!(
        status_json["pools"]["pool-b"]["updated"], 0,
        "{status_json:#}"
    );
    assert!(
        status_json["rollout"]["last_gate"]
            .as_str()
            .is_some_and(|g| g.contains("passed")),
        "{status_json:#}"
    );
    let (code, table) = cli(&["status", "-n", &env.ns]);
    assert_eq!(code, 0, "{table}");
    eprintln!("status table:\n{table}");
    assert!(table.contains("AwaitingApproval"), "{table}");
    assert!(table.contains("pool-a=1/1/2"), "{table}");
    assert!(table.contains("last gate: passed"), "{table}");

    // Waiting for approval: exactly the canary is on the new revision, for a while.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let pods = env.pods_by_node("agent").await;
    let on_new: Vec<&String> = pods
        .iter()
        .filter(|(_, p)| pod_image(p) == v2)
        .map(|(n, _)| n)
        .collect();
    assert_eq!(on_new.len(), 1, "canary updates one node: {on_new:?}");

    let (code, out) = cli(&["rollout", "approve", &key]);
    assert_eq!(code, 0, "{out}");
    let fleet: Vec<String> = nodes
        .iter()
        .filter(|n| n.as_str() != on_new[0].as_str())
        .cloned()
        .collect();
    watcher
        .wait_until("the first fleet deletion", Duration::from_mins(1), |r| {
            is_old_pod_leaving(r, v2) && fleet.contains(&r.node)
        })
        .await;
    let (code, out) = cli(&["rollout", "pause", &key]);
    assert_eq!(code, 0, "{out}");
    wait_status(&env, "agent", "Paused", Duration::from_secs(30)).await;
    let leaving = |recs: &[PodRecord]| {
        recs.iter()
            .filter(|r| is_old_pod_leaving(r, v2) && !r.deleted)
            .count()
    };
    let paused_at = leaving(&watcher.records());
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        leaving(&watcher.records()),
        paused_at,
        "a pod was deleted while paused"
    );
    let (_, table) = cli(&["status", "-n", &env.ns]);
    assert!(table.contains("Paused"), "{table}");
    let (code, out) = cli(&["rollout", "resume", &key]);
    assert_eq!(code, 0, "{out}");
    wait_commit_status(&env, "agent", &c2, "Synced").await;
    wait_rolled_out(&env, "agent", v2, nodes.len()).await;
    let records = watcher.stop();
    let canary = vec![on_new[0].clone()];
    let rep = replay(&records, &[canary.clone(), fleet.clone()], v2);
    assert_eq!(
        rep.updated_when_stage_began[1], 1,
        "exactly one node was updated when the next stage started"
    );
    assert_staged(&rep, &[canary, fleet], &[1, 1]);

    // Abort: the next rollout is rolled back on request.
    let aborted = format!(
        r#"nodewave_rollouts_total{{namespace="{}",daemonset="agent",outcome="aborted"}}"#,
        env.ns
    );
    let ab0 = metric0(&nw, &aborted).await;
    let c3 = repo.commit("bump again", &[("agent.yaml", Some(&file(v3)))]);
    wait_for("v3 rollout started", Duration::from_mins(1), || async {
        let pods = env.pods_by_node("agent").await;
        if pods.values().any(|p| pod_image(p) == v3) {
            Ok(Some(()))
        } else {
            Err(debug_pods(&pods))
        }
    })
    .await;
    let (code, out) = cli(&["rollout", "abort", &key]);
    assert_eq!(code, 0, "{out}");
    let t0 = Instant::now();
    let ds = wait_status(&env, "agent", "RolledBack", Duration::from_mins(2)).await;
    eprintln!("abort -> RolledBack: {:?}", t0.elapsed());
    assert_eq!(image_of(&ds), v2);
    let r = rec(&env, "agent").await;
    assert!(r.failed_contains(&c3), "{:?}", r.failed);
    // The abort names the commit it was for, so it cannot abort a later rollout.
    assert_eq!(r.object.spec.abort_commit.as_deref(), Some(c3.as_str()));
    wait_rolled_out(&env, "agent", v2, nodes.len()).await;
    assert!(metric0(&nw, &aborted).await > ab0);
}

// 7. The first rollout ever of a crashing DaemonSet: nothing to go back to.
#[tokio::test]
async fn first_rollout_that_crashes_is_paused_degraded_and_not_reapplied() {
    let mut env = TestEnv::new("ro-first").await;
    let nodes = env.create_nodes(&POOLS, 1).await;
    let repo = GitRepo::new();
    let bad = "registry.example/agent-crashloop:1.0.0";
    let c1 = repo.commit(
        "add",
        &[("agent.yaml", Some(&agent_yaml(&env, "agent", bad, None)))],
    );
    let _nw = start(&repo, &env).await;
    let ds = wait_status(&env, "agent", "Degraded", Duration::from_mins(2)).await;
    let _ = ds;
    let r = rec(&env, "agent").await;
    let msg = r.message.clone();
    eprintln!("Degraded message: {msg}");
    assert!(msg.contains("no last good commit"), "{msg}");
    assert!(r.failed_contains(&c1), "{:?}", r.failed);
    assert_eq!(env.pods_by_node("agent").await.len(), nodes.len());
    let ev = events(&env, "agent").await;
    assert!(ev.iter().any(|(r, _)| r == "RolloutDegraded"), "{ev:?}");
    assert_stays(&env, "agent", bad, 8).await;
    assert_eq!(rec(&env, "agent").await.status, "Degraded");
}

// 10. Prometheus checks gate each stage, with {{nodes}} expanded to the stage's nodes.
#[tokio::test]
async fn prometheus_check_fails_the_gate_or_lets_the_rollout_finish() {
    let mut env = TestEnv::new("ro-prom").await;
    let nodes = env.create_nodes(&POOLS, 2).await;
    let prom = FakePrometheus::start(0.0).await;
    let policy = policy_yaml(
        &env,
        "agent",
        &format!(
            "  health:\n    prometheus:\n      url: {}\n      interval: 1s\n      checks:\n        - name: errors\n          query: 'sum(rate(agent_errors_total{{node=~\"{{{{nodes}}}}\"}}[1m]))'\n          max: 0\n",
            prom.url
        ),
    );
    let file = |image: &str| format!("{}{policy}", agent_yaml(&env, "agent", image, None));
    let repo = GitRepo::new();
    let c1 = repo.commit("add", &[("agent.yaml", Some(&file(GOOD)))]);
    // The policy's Prometheus must be allowed (none is by default).
    let nw = Nodewave::start(
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
    wait_commit_status(&env, "agent", &c1, "Synced").await;
    wait_rolled_out(&env, "agent", GOOD, nodes.len()).await;
    let expected = |pool: &str| {
        format!(
            "sum(rate(agent_errors_total{{node=~\"{}\"}}[1m]))",
            pool_nodes(&nodes, pool).join("|")
        )
    };
    // Even the first rollout (pods created on the new revision at once) is checked.
    // Known gap: stages with nothing to replace pass in the same step as the one
    // before, on its values, so only the first stage's query is certain here.
    let first = prom.queries();
    assert!(
        first.contains(&expected("pool-a")),
        "first rollout: no query for pool-a: {first:#?}"
    );

    // Failing check: rolled back with gate `prometheus`.
    *prom.value.lock().unwrap() = 3.0;
    let t0 = Instant::now();
    let c2 = repo.commit(
        "v2",
        &[("agent.yaml", Some(&file("registry.example/agent:2.0.0")))],
    );
    let ds = wait_status(&env, "agent", "RolledBack", Duration::from_mins(2)).await;
    eprintln!("failing Prometheus check -> RolledBack: {:?}", t0.elapsed());
    assert_eq!(image_of(&ds), GOOD);
    assert!(rec(&env, "agent").await.failed_contains(&c2));
    let gate = format!(
        r#"nodewave_gate_failures_total{{namespace="{}",daemonset="agent",gate="prometheus"}}"#,
        env.ns
    );
    assert!(metric0(&nw, &gate).await >= 1.0);
    wait_rolled_out(&env, "agent", GOOD, nodes.len()).await;

    // Passing check: the rollout finishes, each stage queried with its own nodes.
    *prom.value.lock().unwrap() = 0.0;
    let n_before = prom.queries().len();
    let c3 = repo.commit(
        "v3",
        &[("agent.yaml", Some(&file("registry.example/agent:3.0.0")))],
    );
    wait_commit_status(&env, "agent", &c3, "Synced").await;
    wait_rolled_out(&env, "agent", "registry.example/agent:3.0.0", nodes.len()).await;
    let queries = prom.queries();
    eprintln!("queries received: {}", queries.len());
    for pool in POOLS {
        let expected = expected(pool);
        assert!(
            queries[n_before..].contains(&expected),
            "no query for {pool}: expected {expected}\ngot {:#?}",
            &queries[n_before..]
        );
    }
    assert!(queries.iter().all(|q| !q.contains("{{nodes}}")));

    // One series fine, one NaN (e.g. 0/0 in the query): the gate fails, where
    // f64::max(0, NaN) == 0 used to pass it.
    *prom.value.lock().unwrap() = 0.0;
    *prom.more.lock().unwrap() = vec![f64::NAN];
    let c4 = repo.commit(
        "v4",
        &[("agent.yaml", Some(&file("registry.example/agent:4.0.0")))],
    );
    let ds = wait_status(&env, "agent", "RolledBack", Duration::from_mins(2)).await;
    assert_eq!(image_of(&ds), "registry.example/agent:3.0.0");
    let r = rec(&env, "agent").await;
    assert!(r.failed_contains(&c4), "{:?}", r.failed);
    let ev = events(&env, "agent").await;
    let said_nan = std::iter::once(r.message.as_str())
        .chain(ev.iter().map(|(_, m)| m.as_str()))
        .find(|m| m.contains("errors: NaN"));
    assert!(said_nan.is_some(), "no NaN message: {} / {ev:?}", r.message);
    eprintln!("NaN check: {}", said_nan.unwrap_or_default());
    assert!(metric0(&nw, &gate).await >= 2.0);
}

// 9. Nodes joining or leaving during a rollout; a DaemonSet confined to one pool.
#[tokio::test]
async fn node_changes_during_rollout_and_pool_confined_daemonset() {
    let mut env = TestEnv::new("ro-nodes").await;
    let nodes = env.create_nodes(&POOLS, 2).await;
    let v1 = "registry.example/agent-slowready:1.0.0";
    let v2 = "registry.example/agent-slowready:2.0.0";
    // A second DaemonSet only on pool-b.
    let only_b = |image: &str| {
        agent_yaml(&env, "onlyb", image, None).replace(
            &format!("        {OWNER_LABEL}: {}\n", env.owner()),
            &format!(
                "        {OWNER_LABEL}: {}\n        {POOL_LABEL}: pool-b\n",
                env.owner()
            ),
        )
    };
    let repo = GitRepo::new();
    let c1 = repo.commit(
        "add",
        &[
            (
                "agent.yaml",
                Some(&agent_yaml(&env, "agent", v1, Some(2000))),
            ),
            ("onlyb.yaml", Some(&only_b(GOOD))),
        ],
    );
    let _nw = start(&repo, &env).await;
    wait_commit_status(&env, "agent", &c1, "Synced").await;
    wait_commit_status(&env, "onlyb", &c1, "Synced").await;
    wait_rolled_out(&env, "agent", v1, nodes.len()).await;

    let c2 = repo.commit(
        "bump",
        &[
            (
                "agent.yaml",
                Some(&agent_yaml(&env, "agent", v2, Some(2000))),
            ),
            ("onlyb.yaml", Some(&only_b("registry.example/agent:2.0.0"))),
        ],
    );
    wait_status(&env, "agent", "Progressing", Duration::from_mins(1)).await;
    // During stage 1: remove a pool-c node (not yet rolled) and add a pool-b node.
    let gone = pool_nodes(&nodes, "pool-c")[0].clone();
    env.remove_node(&gone).await;
    let added = env.add_node("pool-b", 9).await;
    env.wait_node_ready(&added).await;
    wait_commit_status(&env, "agent", &c2, "Synced").await;
    wait_rolled_out(&env, "agent", v2, nodes.len()).await;
    let pods = env.pods_by_node("agent").await;
    assert!(pods.contains_key(&added), "{}", debug_pods(&pods));
    assert!(!pods.contains_key(&gone));

    wait_commit_status(&env, "onlyb", &c2, "Synced").await;
    // The rollout of the pool-confined DaemonSet had stages of pool-b only (the
    // added node may or may not have existed when it started).
    let started: Vec<String> = events(&env, "onlyb")
        .await
        .into_iter()
        .filter(|(r, note)| r == "RolloutStarted" && note.contains(&c2[..12]))
        .map(|(_, note)| note)
        .collect();
    assert_eq!(started.len(), 1, "{started:?}");
    let note = &started[0];
    assert!(
        note.contains("1 stage(s): pool-b (")
            && !note.contains("pool-a")
            && !note.contains("pool-c"),
        "stages of onlyb: {note}"
    );
    let _ = (&nodes, &added);
}
