//! Harness for tests that run against the real local control plane
//! (`hack/cluster.sh up`; `hack/test.sh` starts it for the whole suite).
//!
//! Each test gets a fresh namespace and, when it needs them, its own fake nodes
//! (labelled with the test's owner label so its DaemonSets select only them);
//! both are deleted when the `TestEnv` is dropped, whether the test passed or not.
#![allow(
    dead_code,
    clippy::missing_panics_doc,
    clippy::unwrap_used,
    clippy::expect_used
)]
// Test support code: panicking with a clear message is how a test fails.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Config};
use serde_json::json;

pub const POOL_LABEL: &str = "nodewave.io/pool";
pub const OWNER_LABEL: &str = "nodewave.test/owner";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique, DNS-safe name with the given prefix.
pub fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}-{:x}{n}", (nanos ^ std::process::id()) & 0xfffff)
}

pub fn kubeconfig_path() -> PathBuf {
    match std::env::var_os("KUBECONFIG") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "this test needs the local control plane: KUBECONFIG is not set.\n\
             Run the whole suite with `hack/test.sh`, or start a cluster with \
             `hack/cluster.sh up` and export the KUBECONFIG it prints."
        ),
    }
}

pub async fn client() -> Client {
    let path = kubeconfig_path();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("cannot read kubeconfig {}: {e}", path.display()));
    let config =
        Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
            .await
            .unwrap_or_else(|e| panic!("invalid kubeconfig {}: {e}", path.display()));
    Client::try_from(config).expect("kube client")
}

pub struct TestEnv {
    pub client: Client,
    pub ns: String,
    nodes: Vec<String>,
}

impl TestEnv {
    /// Creates a fresh namespace for one test.
    pub async fn new(prefix: &str) -> Self {
        let client = client().await;
        let ns = unique_name(&format!("nw-{prefix}"));
        let nss: Api<Namespace> = Api::all(client.clone());
        let obj: Namespace = serde_json::from_value(json!({
            "metadata": {"name": ns, "labels": {"nodewave.test/namespace": "true"}}
        }))
        .unwrap();
        nss.create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("cannot create namespace {ns}: {e}"));
        Self {
            client,
            ns,
            nodes: Vec::new(),
        }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// The label value that marks nodes belonging to this test.
    pub fn owner(&self) -> &str {
        &self.ns
    }

    /// Creates `per_pool` fake nodes in each pool, owned by this test, and waits
    /// until kwok reports them Ready. Returns their names, sorted.
    pub async fn create_nodes(&mut self, pools: &[&str], per_pool: usize) -> Vec<String> {
        let mut names = Vec::new();
        for pool in pools {
            for i in 1..=per_pool {
                names.push(self.add_node(pool, i).await);
            }
        }
        for n in &names {
            self.wait_node_ready(n).await;
        }
        names.sort();
        names
    }

    /// Adds one fake node in `pool` (not waiting for it to become Ready).
    pub async fn add_node(&mut self, pool: &str, index: usize) -> String {
        let name = format!("{}-{pool}-{index}", self.ns);
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node: Node = serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake"},
                "labels": {
                    "type": "kwok",
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/hostname": name,
                    POOL_LABEL: pool,
                    OWNER_LABEL: self.ns,
                }
            }
        }))
        .unwrap();
        nodes
            .create(&PostParams::default(), &node)
            .await
            .unwrap_or_else(|e| panic!("cannot create node {name}: {e}"));
        self.nodes.push(name.clone());
        name
    }

    pub async fn wait_node_ready(&self, name: &str) {
        let nodes: Api<Node> = Api::all(self.client.clone());
        wait_for(
            &format!("node {name} Ready"),
            Duration::from_mins(1),
            || {
                let nodes = nodes.clone();
                async move {
                    let n = nodes.get(name).await.map_err(|e| e.to_string())?;
                    let ready = n
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        });
                    // A new node carries `node.kubernetes.io/not-ready:NoSchedule`
                    // until the node lifecycle controller sees it Ready; DaemonSet
                    // pods do not tolerate it, so until then the DaemonSet
                    // controller does not count the node.
                    let taints: Vec<String> = n
                        .spec
                        .as_ref()
                        .and_then(|s| s.taints.as_ref())
                        .map(|ts| ts.iter().map(|t| t.key.clone()).collect())
                        .unwrap_or_default();
                    let untainted = !taints.iter().any(|k| k == "node.kubernetes.io/not-ready");
                    if ready && untainted {
                        Ok(Some(()))
                    } else {
                        Err(format!(
                            "conditions: {:?}; taints: {taints:?}",
                            n.status.and_then(|s| s.conditions)
                        ))
                    }
                }
            },
        )
        .await;
    }

    pub async fn remove_node(&mut self, name: &str) {
        let nodes: Api<Node> = Api::all(self.client.clone());
        nodes
            .delete(name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("cannot delete node {name}: {e}"));
        self.nodes.retain(|n| n != name);
    }

    /// Pods of a DaemonSet (by its `app` label), keyed by node name.
    pub async fn pods_by_node(&self, app: &str) -> BTreeMap<String, Pod> {
        let pods: Api<Pod> = self.api();
        let list = pods
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .expect("list pods");
        list.items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| {
                let node = p.spec.as_ref()?.node_name.clone()?;
                Some((node, p))
            })
            .collect()
    }

    /// Applies a DaemonSet as the test's own field manager (not nodewave's).
    pub async fn apply_daemonset(&self, ds: &serde_json::Value) -> DaemonSet {
        let api: Api<DaemonSet> = self.api();
        let name = ds["metadata"]["name"].as_str().expect("metadata.name");
        api.patch(
            name,
            &PatchParams::apply("nodewave-tests").force(),
            &Patch::Apply(ds),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot apply DaemonSet {name}: {e}"))
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let ns = self.ns.clone();
        let nodes = std::mem::take(&mut self.nodes);
        let keep = std::env::var_os("NODEWAVE_TEST_KEEP").is_some();
        if keep {
            eprintln!("NODEWAVE_TEST_KEEP set: leaving namespace {ns} and nodes {nodes:?}");
            return;
        }
        // Drop cannot await; clean up on a separate thread with its own runtime and
        // its own client: the test's client is driven by the test's runtime, which
        // is blocked right here.
        let handle = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let client = client().await;
                let dp = DeleteParams::background();
                let nss: Api<Namespace> = Api::all(client.clone());
                let _ = nss.delete(&ns, &dp).await;
                let api: Api<Node> = Api::all(client);
                for n in nodes {
                    let _ = api.delete(&n, &dp).await;
                }
            });
        });
        let _ = handle.join();
    }
}

/// Polls `check` until it returns `Ok(Some(value))` or the timeout passes. `Err(state)`
/// and `Ok(None)` mean "not yet"; the last `Err` is shown when the wait fails, so a
/// failing test says what it expected and what the cluster had.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, String>>,
{
    let start = Instant::now();
    let mut last = String::from("(no observation yet)");
    loop {
        match check().await {
            Ok(Some(v)) => return v,
            Ok(None) => {}
            Err(state) => last = state,
        }
        assert!(
            start.elapsed() <= timeout,
            "timed out after {timeout:?} waiting for: {what}\nlast observed: {last}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn pod_revision(p: &Pod) -> String {
    p.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("controller-revision-hash").cloned())
        .unwrap_or_default()
}

pub fn pod_restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |cs| cs.iter().map(|c| c.restart_count).sum())
}

pub fn pod_waiting_reason(p: &Pod) -> Option<String> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
}

/// A minimal, policy-compliant DaemonSet that runs only on this test's nodes.
pub fn daemonset(env: &TestEnv, name: &str, image: &str) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": env.ns},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "updateStrategy": {"type": "OnDelete"},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {OWNER_LABEL: env.owner()},
                    "containers": [{
                        "name": "agent",
                        "image": image,
                        "resources": {
                            "requests": {"cpu": "10m", "memory": "16Mi"},
                            "limits": {"cpu": "100m", "memory": "64Mi"}
                        }
                    }]
                }
            }
        }
    })
}

pub fn debug_pods(pods: &BTreeMap<String, Pod>) -> String {
    pods.iter()
        .map(|(node, p)| {
            format!(
                "{node}: {} rev={} ready={} restarts={} waiting={:?}",
                p.metadata.name.clone().unwrap_or_default(),
                pod_revision(p),
                pod_ready(p),
                pod_restarts(p),
                pod_waiting_reason(p)
            )
        })
        .collect::<Vec<_>>()
        .join("\n  ")
}

pub mod gitops;
pub mod nodewave;
pub mod prometheus;
pub mod record;
pub mod replay;
pub mod rollout;
pub mod sshd;
