//! Helpers shared by the GitOps sync tests (`tests/sync.rs`, `tests/sync_more.rs`).
#![allow(dead_code)]

use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;

use super::{TestEnv, debug_pods, pod_ready, wait_for};

/// A compliant DaemonSet manifest confined to the test's nodes.
pub fn ds_yaml(env: &TestEnv, name: &str, image: &str) -> String {
    super::rollout::agent_yaml(env, name, image, None)
}

pub async fn get_ds(env: &TestEnv, name: &str) -> Option<DaemonSet> {
    env.api::<DaemonSet>().get_opt(name).await.unwrap()
}

pub fn image_of(ds: &DaemonSet) -> String {
    ds.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

/// Waits until every pod of `app` runs `image` and is Ready on all `nodes`.
pub async fn wait_rolled_out(env: &TestEnv, app: &str, image: &str, nodes: usize) {
    wait_for(
        &format!("{app} on {image} Ready on {nodes} nodes"),
        Duration::from_mins(3),
        || async {
            let pods = env.pods_by_node(app).await;
            let ok = pods.len() == nodes
                && pods.values().all(|p| {
                    pod_ready(p)
                        && p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some(image)
                });
            if ok {
                Ok(Some(()))
            } else {
                Err(format!("pods:\n  {}", debug_pods(&pods)))
            }
        },
    )
    .await;
}

/// Waits until the record of `name` has `status`; returns the DaemonSet then.
pub async fn wait_status(env: &TestEnv, name: &str, status: &str, timeout: Duration) -> DaemonSet {
    super::record::wait_status(env, name, status, timeout).await;
    get_ds(env, name).await.expect("the DaemonSet exists")
}
