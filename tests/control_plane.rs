//! Smoke tests proving the local control plane is real: the DaemonSet controller,
//! the scheduler and kwok's fake kubelets behave as nodewave relies on.

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration test crate: panics are test failures

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;
use support::*;

const POOLS: [&str; 3] = ["pool-a", "pool-b", "pool-c"];

#[tokio::test]
async fn cluster_has_ready_nodes_in_three_pools() {
    let client = client().await;
    let nodes: Api<Node> = Api::all(client);
    let list = nodes
        .list(&ListParams::default().labels("type=kwok"))
        .await
        .unwrap();
    let ready: Vec<&Node> = list
        .items
        .iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .collect();
    let pools: BTreeSet<String> = ready
        .iter()
        .filter_map(|n| n.metadata.labels.as_ref()?.get(POOL_LABEL).cloned())
        .collect();
    assert!(
        ready.len() >= 9,
        "expected >= 9 Ready fake nodes, found {}",
        ready.len()
    );
    assert!(pools.len() >= 3, "expected >= 3 pools, found {pools:?}");
}

#[tokio::test]
async fn daemonset_gets_one_ready_pod_per_node() {
    let mut env = TestEnv::new("smoke-ds").await;
    let nodes = env.create_nodes(&POOLS, 3).await;
    env.apply_daemonset(&daemonset(&env, "agent", "registry.example/agent:1.0.0"))
        .await;

    let want: BTreeSet<String> = nodes.iter().cloned().collect();
    wait_for(
        "one Ready pod on each of the test's 9 nodes",
        Duration::from_mins(1),
        || async {
            let pods = env.pods_by_node("agent").await;
            let ready: BTreeSet<String> = pods
                .iter()
                .filter(|(_, p)| pod_ready(p))
                .map(|(n, _)| n.clone())
                .collect();
            if ready == want {
                Ok(Some(()))
            } else {
                Err(format!("pods:\n  {}", debug_pods(&pods)))
            }
        },
    )
    .await;

    // Exactly one pod per node: the controller must not create extras.
    let pods: Api<Pod> = env.api();
    let all = pods
        .list(&ListParams::default().labels("app=agent"))
        .await
        .unwrap();
    assert_eq!(all.items.len(), nodes.len(), "one pod per node, no more");
}

#[tokio::test]
async fn on_delete_updates_only_the_pool_whose_pods_are_deleted() {
    let mut env = TestEnv::new("smoke-ondelete").await;
    let nodes = env.create_nodes(&POOLS, 3).await;
    env.apply_daemonset(&daemonset(&env, "agent", "registry.example/agent:1.0.0"))
        .await;
    let old = wait_for(
        "9 Ready pods on one revision",
        Duration::from_mins(1),
        || async {
            let pods = env.pods_by_node("agent").await;
            let revs: BTreeSet<String> = pods.values().map(pod_revision).collect();
            if pods.len() == nodes.len() && pods.values().all(pod_ready) && revs.len() == 1 {
                Ok(Some(revs.into_iter().next().unwrap()))
            } else {
                Err(format!("pods:\n  {}", debug_pods(&pods)))
            }
        },
    )
    .await;

    env.apply_daemonset(&daemonset(&env, "agent", "registry.example/agent:1.1.0"))
        .await;
    // OnDelete: nothing changes until pods are deleted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pods = env.pods_by_node("agent").await;
    assert!(
        pods.values().all(|p| pod_revision(p) == old),
        "OnDelete must not replace pods by itself:\n  {}",
        debug_pods(&pods)
    );

    let pool_a: Vec<String> = nodes
        .iter()
        .filter(|n| n.contains("-pool-a-"))
        .cloned()
        .collect();
    let api: Api<Pod> = env.api();
    for (node, pod) in &pods {
        if pool_a.contains(node) {
            api.delete(
                pod.metadata.name.as_deref().unwrap(),
                &DeleteParams::default(),
            )
            .await
            .unwrap();
        }
    }
    let pods = wait_for(
        "pool-a back on a new revision",
        Duration::from_mins(1),
        || async {
            let pods = env.pods_by_node("agent").await;
            let done = pool_a.iter().all(|n| {
                pods.get(n)
                    .is_some_and(|p| pod_revision(p) != old && pod_ready(p))
            });
            if done && pods.len() == nodes.len() {
                Ok(Some(pods))
            } else {
                Err(format!("pods:\n  {}", debug_pods(&pods)))
            }
        },
    )
    .await;
    let new_revs: BTreeSet<String> = pool_a.iter().map(|n| pod_revision(&pods[n])).collect();
    assert_eq!(new_revs.len(), 1, "pool-a on a single new revision");
    for (node, pod) in &pods {
        if !pool_a.contains(node) {
            assert_eq!(
                pod_revision(pod),
                old,
                "{node} outside pool-a must keep the old revision"
            );
        }
    }
}

#[tokio::test]
async fn crash_marker_crash_loops_and_never_ready_marker_stays_unready() {
    let mut env = TestEnv::new("smoke-markers").await;
    env.create_nodes(&["pool-a"], 1).await;
    env.apply_daemonset(&daemonset(
        &env,
        "crasher",
        "registry.example/agent:2.0.0-crashloop",
    ))
    .await;
    env.apply_daemonset(&daemonset(
        &env,
        "sleeper",
        "registry.example/agent:2.0.0-neverready",
    ))
    .await;

    let first = wait_for(
        "crashloop pod in CrashLoopBackOff",
        Duration::from_mins(1),
        || async {
            let pods = env.pods_by_node("crasher").await;
            match pods.values().next() {
                Some(p) if pod_waiting_reason(p).as_deref() == Some("CrashLoopBackOff") => {
                    Ok(Some(pod_restarts(p)))
                }
                _ => Err(format!("pods:\n  {}", debug_pods(&pods))),
            }
        },
    )
    .await;
    wait_for("restart count rising", Duration::from_secs(30), || async {
        let pods = env.pods_by_node("crasher").await;
        match pods.values().next() {
            Some(p) if pod_restarts(p) > first + 1 && !pod_ready(p) => Ok(Some(())),
            _ => Err(format!("first={first}, pods:\n  {}", debug_pods(&pods))),
        }
    })
    .await;

    wait_for("neverready pod Running", Duration::from_mins(1), || async {
        let pods = env.pods_by_node("sleeper").await;
        match pods.values().next() {
            Some(p) if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") => {
                Ok(Some(()))
            }
            _ => Err(format!("pods:\n  {}", debug_pods(&pods))),
        }
    })
    .await;
    // Give kwok time to (wrongly) make it Ready, then check it did not.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pods = env.pods_by_node("sleeper").await;
    let p = pods.values().next().unwrap();
    assert!(
        !pod_ready(p),
        "neverready pod must stay not Ready:\n  {}",
        debug_pods(&pods)
    );
    assert_eq!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Running")
    );
}

#[tokio::test]
async fn slow_marker_becomes_ready_after_its_delay() {
    let mut env = TestEnv::new("smoke-slow").await;
    env.create_nodes(&["pool-a"], 1).await;
    let mut ds = daemonset(&env, "slow", "registry.example/agent:3.0.0-slowready");
    ds["spec"]["template"]["metadata"]["annotations"] =
        json!({"nodewave.io/kwok-ready-delay": "3s"});
    env.apply_daemonset(&ds).await;
    let pods: Api<Pod> = env.api();
    wait_for(
        "slow pod scheduled and not yet Ready",
        Duration::from_secs(30),
        || async {
            let pods = env.pods_by_node("slow").await;
            match pods.values().next() {
                Some(p) if !pod_ready(p) => Ok(Some(())),
                _ => Err(format!("pods:\n  {}", debug_pods(&pods))),
            }
        },
    )
    .await;
    wait_for(
        "slow pod Ready after its delay",
        Duration::from_secs(30),
        || async {
            let list = pods
                .list(&ListParams::default().labels("app=slow"))
                .await
                .map_err(|e| e.to_string())?;
            if list.items.iter().any(pod_ready) {
                Ok(Some(()))
            } else {
                Err(format!("{} pods, none Ready", list.items.len()))
            }
        },
    )
    .await;
}

/// The revisions the DaemonSet controller made for `agent`, and the DaemonSet.
async fn revisions_and_daemonset(
    env: &TestEnv,
) -> (
    Vec<k8s_openapi::api::apps::v1::ControllerRevision>,
    k8s_openapi::api::apps::v1::DaemonSet,
) {
    let crs: Api<k8s_openapi::api::apps::v1::ControllerRevision> = env.api();
    let list = crs
        .list(&ListParams::default().labels("app=agent"))
        .await
        .unwrap();
    let ds: Api<k8s_openapi::api::apps::v1::DaemonSet> = env.api();
    (list.items, ds.get("agent").await.unwrap())
}

fn observed(ds: &k8s_openapi::api::apps::v1::DaemonSet) -> bool {
    let g = ds.metadata.generation.unwrap_or(0);
    ds.status
        .as_ref()
        .and_then(|s| s.observed_generation)
        .is_some_and(|o| o >= g)
}

/// Applies `image` and follows the controller until it observed the change:
/// before that the revision read from the live template may be none yet or
/// `want`, never `never` (the one the template replaced); after it, the same
/// with or without the observed generation. Returns the revision.
async fn follow_to_revision(
    env: &TestEnv,
    image: &str,
    want: Option<&str>,
    never: Option<&str>,
) -> String {
    use ::nodewave::cluster::revision::update_revision;
    env.apply_daemonset(&daemonset(env, "agent", image)).await;
    let seen_early = std::sync::Mutex::new(0_usize);
    let rev = wait_for(
        &format!("the DaemonSet controller to take {image}"),
        Duration::from_mins(1),
        || async {
            let (crs, ds) = revisions_and_daemonset(env).await;
            let from_template = update_revision(&crs, &ds, false);
            if !observed(&ds) {
                if let Some(r) = &from_template {
                    assert_ne!(Some(r.as_str()), never, "the replaced template's revision");
                    if let Some(w) = want {
                        assert_eq!(r, w, "a revision other than the applied template's");
                    }
                    *seen_early.lock().unwrap() += 1;
                }
                return Err(format!(
                    "generation not observed; revision {from_template:?}"
                ));
            }
            let newest = update_revision(&crs, &ds, true);
            assert_eq!(
                from_template, newest,
                "the live template must match its revision"
            );
            Ok(newest)
        },
    )
    .await;
    eprintln!(
        "{image}: revision {rev}; read from the template before the generation was observed {} time(s)",
        seen_early.lock().unwrap()
    );
    if let Some(w) = want {
        assert_eq!(rev, w);
    }
    rev
}

#[tokio::test]
async fn the_current_revision_is_read_from_the_controllers_revisions_and_the_live_template() {
    let mut env = TestEnv::new("smoke-revision").await;
    let nodes = env.create_nodes(&POOLS, 1).await;
    let v1 = follow_to_revision(&env, "registry.example/agent:1", None, None).await;
    // The pods the controller made carry the revision read from the template.
    wait_for(
        "a pod of v1 on every node",
        Duration::from_mins(1),
        || async {
            let pods = env.pods_by_node("agent").await;
            let on_v1 = pods.values().filter(|p| pod_revision(p) == v1).count();
            if on_v1 == nodes.len() {
                Ok(Some(()))
            } else {
                Err(format!("pods:\n  {}", debug_pods(&pods)))
            }
        },
    )
    .await;
    let v2 = follow_to_revision(&env, "registry.example/agent:2", None, Some(&v1)).await;
    assert_ne!(v2, v1, "a new template gets a new revision");
    // Back to v1's template: its old revision is re-numbered to be the newest,
    // and until then v2's (still the newest) must not count for it.
    follow_to_revision(&env, "registry.example/agent:1", Some(&v1), Some(&v2)).await;
}
