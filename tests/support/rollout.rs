//! Helpers for rollout tests: manifests with a RolloutPolicy, a pod watcher that
//! records every state the pods of a DaemonSet go through (to check stage order and
//! the unavailability budget afterwards), and a tiny Prometheus query API.
#![allow(dead_code, clippy::missing_panics_doc, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher;

// Re-exported so rollout tests keep importing them from here; a test crate that
// uses none of them would otherwise warn.
#[allow(unused_imports)]
pub use super::replay::{PodRecord, Replay, assert_staged, replay, staged_violations};
use super::{OWNER_LABEL, TestEnv, pod_ready, wait_for};

/// A compliant DaemonSet confined to the test's nodes. `ready_delay_ms` sets the
/// kwok `slowready` delay annotation on the pod template.
pub fn agent_yaml(env: &TestEnv, name: &str, image: &str, ready_delay_ms: Option<u64>) -> String {
    let annotations = ready_delay_ms.map_or_else(String::new, |ms| {
        format!("      annotations:\n        nodewave.io/kwok-ready-delay: \"{ms}ms\"\n")
    });
    format!(
        r"apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: {name}
  namespace: {ns}
  labels:
    app: {name}
spec:
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
{annotations}    spec:
      nodeSelector:
        {owner_label}: {owner}
      containers:
        - name: agent
          image: {image}
          resources:
            requests: {{cpu: 10m, memory: 16Mi}}
            limits: {{cpu: 100m, memory: 64Mi}}
          readinessProbe:
            httpGet: {{path: /ready, port: 8080}}
          livenessProbe:
            httpGet: {{path: /live, port: 8080}}
",
        ns = env.ns,
        owner_label = OWNER_LABEL,
        owner = env.owner(),
    )
}

/// A RolloutPolicy for DaemonSet `name`; `spec` is the YAML below `spec:` (without
/// `target`), indented by two spaces.
pub fn policy_yaml(env: &TestEnv, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: nodewave.io/v1alpha1\nkind: RolloutPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  target:\n    name: {name}\n{spec}",
        ns = env.ns
    )
}

pub fn pod_image(p: &Pod) -> String {
    p.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

/// Pod UIDs by node.
pub async fn uids(env: &TestEnv, app: &str) -> BTreeMap<String, String> {
    env.pods_by_node(app)
        .await
        .into_iter()
        .map(|(n, p)| (n, p.metadata.uid.unwrap_or_default()))
        .collect()
}

/// Reasons of the Events about DaemonSet `name` (events.k8s.io/v1, as nodewave's
/// recorder publishes them), with their notes.
pub async fn events(env: &TestEnv, name: &str) -> Vec<(String, String)> {
    let api: Api<k8s_openapi::api::events::v1::Event> = env.api();
    api.list(&kube::api::ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

/// A metric value, absent counted as 0.
pub async fn metric0(nw: &super::nodewave::Nodewave, series: &str) -> f64 {
    nw.metric(series).await.unwrap_or(0.0)
}

/// Watches the pods of one DaemonSet and records every state, in watch order.
pub struct PodWatcher {
    records: Arc<Mutex<Vec<PodRecord>>>,
    task: tokio::task::JoinHandle<()>,
    pub started: Instant,
}

impl PodWatcher {
    /// Starts watching and returns once the initial list has been recorded.
    pub async fn start(env: &TestEnv, app: &str) -> Self {
        let api: Api<Pod> = env.api();
        let records = Arc::new(Mutex::new(Vec::new()));
        let sink = records.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        let cfg = watcher::Config::default().labels(&format!("app={app}"));
        let task = tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let mut initial = true;
            let mut stream = watcher(api, cfg).boxed();
            while let Some(ev) = stream.next().await {
                let (pod, deleted) = match ev {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => (p, false),
                    Ok(watcher::Event::Delete(p)) => (p, true),
                    Ok(watcher::Event::InitDone) => {
                        initial = false;
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                        continue;
                    }
                    Ok(watcher::Event::Init) => continue,
                    Err(e) => {
                        eprintln!("pod watcher: {e}");
                        continue;
                    }
                };
                let node = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default();
                let rec = PodRecord {
                    at: Instant::now(),
                    deleted,
                    name: pod.metadata.name.clone().unwrap_or_default(),
                    uid: pod.metadata.uid.clone().unwrap_or_default(),
                    node,
                    image: pod_image(&pod),
                    ready: pod_ready(&pod),
                    terminating: pod.metadata.deletion_timestamp.is_some(),
                    created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    initial,
                };
                sink.lock().unwrap().push(rec);
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(30), ready_rx).await;
        Self {
            records,
            task,
            started: Instant::now(),
        }
    }

    pub fn records(&self) -> Vec<PodRecord> {
        self.records.lock().unwrap().clone()
    }

    /// Waits until some recorded state satisfies `pred`; returns its index.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&PodRecord) -> bool,
    ) -> usize {
        wait_for(what, timeout, || async {
            let recs = self.records();
            Ok(recs.iter().position(&pred))
        })
        .await
    }

    /// One line per recorded state, for failure output.
    pub fn timeline(records: &[PodRecord]) -> String {
        let t0 = records.first().map(|r| r.at);
        records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                format!(
                    "{i:>3} +{:>6}ms {} {} {} ready={} term={} del={}",
                    t0.map_or(0, |t| r.at.duration_since(t).as_millis()),
                    r.node,
                    r.name,
                    r.image.rsplit('/').next().unwrap_or(""),
                    r.ready,
                    r.terminating,
                    r.deleted
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn stop(self) -> Vec<PodRecord> {
        self.task.abort();
        self.records()
    }
}

/// A tiny Prometheus HTTP API (`/api/v1/query`) answering every instant query with
/// one sample of the current `value` (then one per entry of `more`, as further
/// series), recording the queries it receives.
pub struct FakePrometheus {
    pub url: String,
    pub queries: Arc<Mutex<Vec<String>>>,
    pub value: Arc<Mutex<f64>>,
    pub more: Arc<Mutex<Vec<f64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakePrometheus {
    pub async fn start(value: f64) -> Self {
        use axum::extract::{Query, State};
        use axum::routing::get;

        type Shared = (
            Arc<Mutex<Vec<String>>>,
            Arc<Mutex<f64>>,
            Arc<Mutex<Vec<f64>>>,
        );
        async fn query(
            State((queries, value, more)): State<Shared>,
            Query(params): Query<BTreeMap<String, String>>,
        ) -> axum::Json<serde_json::Value> {
            let q = params.get("query").cloned().unwrap_or_default();
            queries.lock().unwrap().push(q);
            let values: Vec<f64> = std::iter::once(*value.lock().unwrap())
                .chain(more.lock().unwrap().iter().copied())
                .collect();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            axum::Json(serde_json::json!({
                "status": "success",
                "data": {
                    "resultType": "vector",
                    "result": values
                        .iter()
                        .enumerate()
                        .map(|(i, v)| serde_json::json!({"metric": {"series": i.to_string()}, "value": [now, v.to_string()]}))
                        .collect::<Vec<_>>()
                }
            }))
        }

        let queries = Arc::new(Mutex::new(Vec::new()));
        let value = Arc::new(Mutex::new(value));
        let more = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route("/api/v1/query", get(query).post(query))
            .with_state((queries.clone(), value.clone(), more.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url,
            queries,
            value,
            more,
            task,
        }
    }

    pub fn queries(&self) -> Vec<String> {
        self.queries.lock().unwrap().clone()
    }
}

impl Drop for FakePrometheus {
    fn drop(&mut self) {
        self.task.abort();
    }
}
