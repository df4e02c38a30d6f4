//! Watches that record every state the driver may later replay: the pods of one
//! DaemonSet (as `replay::PodRecord`s, relist-aware: a pod gone while the watch
//! was down gets a synthetic delete record), DaemonSet generations, and the
//! nodewave record's phase.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt as _};
use nodewave::record::DaemonSetRollout;

use crate::replay::PodRecord;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn pod_image(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

pub fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn record_of(p: &Pod, initial: bool) -> PodRecord {
    PodRecord {
        at: Instant::now(),
        deleted: false,
        name: p.name_any(),
        uid: p.metadata.uid.clone().unwrap_or_default(),
        node: p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        image: pod_image(p),
        ready: pod_ready(p),
        terminating: p.metadata.deletion_timestamp.is_some(),
        created: p.metadata.creation_timestamp.as_ref().map(|t| t.0),
        initial,
    }
}

#[derive(Default)]
struct PodState {
    records: Vec<PodRecord>,
    live: BTreeMap<String, PodRecord>,
    synced: bool,
}

/// Every state the pods matching a label selector go through, in watch order.
pub struct PodWatch {
    state: Arc<Mutex<PodState>>,
    task: tokio::task::JoinHandle<()>,
}

/// What is live now, in counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    /// Live (not terminating) pods on `image` that are Ready, on distinct nodes.
    pub ready_new_nodes: usize,
    /// Live pods not on `image`.
    pub old_live: usize,
    /// Live pods on `image`.
    pub new_live: usize,
}

impl PodWatch {
    pub async fn start(client: Client, ns: &str, selector: &str) -> anyhow::Result<Self> {
        let api: Api<Pod> = Api::namespaced(client, ns);
        let state = Arc::new(Mutex::new(PodState::default()));
        let sink = state.clone();
        let cfg = watcher::Config::default().labels(selector);
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(watcher::watcher(api, cfg).default_backoff());
            let mut initial = true;
            let mut relist: Option<HashSet<String>> = None;
            while let Some(ev) = stream.next().await {
                let mut st = lock(&sink);
                match ev {
                    Ok(Event::Init) => relist = Some(HashSet::new()),
                    Ok(Event::InitApply(p) | Event::Apply(p)) => {
                        let r = record_of(&p, initial);
                        if let Some(seen) = relist.as_mut() {
                            seen.insert(r.uid.clone());
                        }
                        st.live.insert(r.uid.clone(), r.clone());
                        st.records.push(r);
                    }
                    Ok(Event::Delete(p)) => {
                        let mut r = record_of(&p, initial);
                        r.deleted = true;
                        st.live.remove(&r.uid);
                        st.records.push(r);
                    }
                    Ok(Event::InitDone) => {
                        // Pods deleted while the watch was down: the relist no longer has them.
                        if let Some(seen) = relist.take() {
                            let gone: Vec<String> = st
                                .live
                                .keys()
                                .filter(|u| !seen.contains(*u))
                                .cloned()
                                .collect();
                            for uid in gone {
                                if let Some(mut r) = st.live.remove(&uid) {
                                    r.at = Instant::now();
                                    r.deleted = true;
                                    r.initial = false;
                                    st.records.push(r);
                                }
                            }
                        }
                        initial = false;
                        st.synced = true;
                    }
                    // The API server went away: the watcher relists (see InitDone).
                    Err(_) => {}
                }
            }
        });
        let w = Self { state, task };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !lock(&w.state).synced {
            anyhow::ensure!(
                Instant::now() < deadline,
                "pod watch {selector}: no initial list in 120 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(w)
    }

    /// The live pods now and every record from `mark` on.
    pub fn since(&self, mark: usize) -> Vec<PodRecord> {
        lock(&self.state).records[mark..].to_vec()
    }

    /// The live pods as of now, by UID.
    pub fn live(&self) -> BTreeMap<String, PodRecord> {
        lock(&self.state).live.clone()
    }

    /// Drops the records so far (the live pods stay known), keeping memory flat
    /// over many rollouts; marks start again at 0.
    pub fn forget(&self) {
        lock(&self.state).records.clear();
    }

    pub fn census(&self, image: &str) -> Census {
        let st = lock(&self.state);
        let mut nodes = HashSet::new();
        let mut c = Census::default();
        for p in st.live.values().filter(|p| !p.terminating) {
            if p.image == image {
                c.new_live += 1;
                if p.ready && !p.node.is_empty() {
                    nodes.insert(p.node.as_str());
                }
            } else {
                c.old_live += 1;
            }
        }
        c.ready_new_nodes = nodes.len();
        c
    }

    /// Waits until every one of `nodes` nodes runs a Ready pod on `image` and no
    /// other live pod is left.
    pub async fn wait_rolled_out(
        &self,
        image: &str,
        nodes: usize,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.census(image);
            if c.ready_new_nodes >= nodes && c.old_live == 0 && c.new_live == c.ready_new_nodes {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "not rolled out to {image} within {timeout:?}: {c:?} of {nodes} nodes"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One observed state of a nodewave `DaemonSetRollout` record.
#[derive(Debug, Clone)]
pub struct RecordObs {
    pub at: Instant,
    pub name: String,
    pub phase: String,
    pub rollout_phase: String,
    pub applied: Option<String>,
    pub failed: Vec<String>,
    /// Decoded state (None when the record has none or it cannot be decoded).
    pub state: Option<nodewave::record::RecordState>,
    pub decode_error: Option<String>,
}

/// Every state of the records in a namespace, in watch order.
pub struct RecordWatch {
    records: Arc<Mutex<Vec<RecordObs>>>,
    latest: Arc<Mutex<HashMap<String, RecordObs>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordWatch {
    pub fn start(client: Client, ns: &str, decode: bool) -> Self {
        let api: Api<DaemonSetRollout> = Api::namespaced(client, ns);
        let records = Arc::new(Mutex::new(Vec::new()));
        let latest = Arc::new(Mutex::new(HashMap::new()));
        let (sink, last) = (records.clone(), latest.clone());
        let task = tokio::spawn(async move {
            let mut stream =
                std::pin::pin!(watcher::watcher(api, watcher::Config::default()).default_backoff());
            while let Some(ev) = stream.next().await {
                let r = match ev {
                    Ok(Event::InitApply(r) | Event::Apply(r)) => r,
                    Ok(Event::Delete(r)) => {
                        lock(&last).remove(&r.name_any());
                        continue;
                    }
                    _ => continue,
                };
                let st = r.status.clone().unwrap_or_default();
                let (state, decode_error) = if decode && !st.state.is_empty() {
                    match nodewave::record::codec::decode(&st.state) {
                        Ok(s) => (Some(s), None),
                        Err(e) => (None, Some(e.to_string())),
                    }
                } else {
                    (None, None)
                };
                let obs = RecordObs {
                    at: Instant::now(),
                    name: r.name_any(),
                    phase: st.phase,
                    rollout_phase: st.rollout_phase,
                    applied: st.applied_commit,
                    failed: st.failed_commits.iter().map(|f| f.commit.clone()).collect(),
                    state,
                    decode_error,
                };
                lock(&last).insert(obs.name.clone(), obs.clone());
                lock(&sink).push(obs);
            }
        });
        Self {
            records,
            latest,
            task,
        }
    }

    pub fn len(&self) -> usize {
        lock(&self.records).len()
    }

    pub fn since(&self, mark: usize) -> Vec<RecordObs> {
        lock(&self.records)[mark..].to_vec()
    }

    pub fn latest(&self, name: &str) -> Option<RecordObs> {
        lock(&self.latest).get(name).cloned()
    }

    pub fn all_latest(&self) -> Vec<RecordObs> {
        lock(&self.latest).values().cloned().collect()
    }

    /// Waits until the record `name` has `phase` with `commit` applied.
    pub async fn wait(
        &self,
        name: &str,
        phase: &str,
        commit: &str,
        timeout: Duration,
    ) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.latest(name)
                && r.phase == phase
                && r.applied.as_deref() == Some(commit)
            {
                return Ok(r.at);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "record {name} not {phase} at {commit} within {timeout:?}: {:?}",
                self.latest(name)
                    .map(|r| (r.phase, r.rollout_phase, r.applied))
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for RecordWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// (seen at, DaemonSet, generation, observedGeneration)
type Generation = (Instant, String, i64, i64);

/// Generations of the DaemonSets in a namespace as they change.
pub struct DsWatch {
    /// (at, name, generation, observedGeneration)
    records: Arc<Mutex<Vec<Generation>>>,
    task: tokio::task::JoinHandle<()>,
}

impl DsWatch {
    pub fn start(client: Client, ns: &str) -> Self {
        let api: Api<DaemonSet> = Api::namespaced(client, ns);
        let records = Arc::new(Mutex::new(Vec::new()));
        let sink = records.clone();
        let task = tokio::spawn(async move {
            let mut stream =
                std::pin::pin!(watcher::watcher(api, watcher::Config::default()).default_backoff());
            while let Some(ev) = stream.next().await {
                if let Ok(Event::InitApply(d) | Event::Apply(d)) = ev {
                    let g = d.metadata.generation.unwrap_or(0);
                    let o = d
                        .status
                        .as_ref()
                        .and_then(|s| s.observed_generation)
                        .unwrap_or(0);
                    lock(&sink).push((Instant::now(), d.name_any(), g, o));
                }
            }
        });
        Self { records, task }
    }

    /// When `name` was first seen at a generation above `above` (the template
    /// change landed), and when the controller first reported observing it.
    pub fn bumped_after(
        &self,
        name: &str,
        above: i64,
        after: Instant,
    ) -> (Option<Instant>, Option<Instant>) {
        let recs = lock(&self.records);
        let mut applied = None;
        let mut observed = None;
        for (at, n, g, o) in recs.iter() {
            if n != name || *at < after {
                continue;
            }
            if applied.is_none() && *g > above {
                applied = Some(*at);
            }
            if observed.is_none() && *o > above {
                observed = Some(*at);
            }
        }
        (applied, observed)
    }

    pub fn generation(&self, name: &str) -> i64 {
        lock(&self.records)
            .iter()
            .rev()
            .find(|(_, n, _, _)| n == name)
            .map_or(0, |(_, _, g, _)| *g)
    }
}

impl Drop for DsWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}
