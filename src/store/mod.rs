//! In-memory indexes fed by watches: DaemonSets, their pods (only the fields the
//! planner reads), node names and labels, and rollout records. Reconciles read
//! from here instead of calling the API server, so a DaemonSet with nothing going
//! on costs no request.
//!
//! Every watch reports what it touched through a [`Touched`] callback, which the
//! controller turns into work-queue entries. Pods are stored as the few fields
//! the planner reads, with shared strings stored once (`pods`), rather than
//! full `Pod` objects, and nodes as labels only, so memory grows with the fleet
//! by a few hundred bytes per pod, not kilobytes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use tokio::sync::watch;

use crate::keys;
use crate::manifest::ObjectKey;
use crate::plan::NodeIndex;
use crate::record::DaemonSetRollout;
use crate::rollout::{NodeName, PodObservation, PodUid};

mod lean;
mod pods;
pub use lean::{LeanNode, LeanPod};
pub use pods::PodIndex;
use pods::observe_pod;

/// What a watch event touched, for the work queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touched {
    /// One DaemonSet (its object, a pod of it, or its record).
    DaemonSet(ObjectKey),
    /// Nodes were added, removed or relabelled: every open rollout may care.
    Nodes,
}

pub type OnTouch = Arc<dyn Fn(Touched) + Send + Sync>;

/// Which namespaces the namespaced watches cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    AllNamespaces,
    Namespaces(Vec<String>),
}

/// The DaemonSets nodewave can see, by key, and their UIDs.
#[derive(Debug, Default)]
pub struct DaemonSetIndex {
    by_key: HashMap<ObjectKey, Arc<DaemonSet>>,
    key_of_uid: HashMap<String, ObjectKey>,
}

impl DaemonSetIndex {
    pub fn get(&self, key: &ObjectKey) -> Option<Arc<DaemonSet>> {
        self.by_key.get(key).cloned()
    }

    pub fn key_of_uid(&self, uid: &str) -> Option<&ObjectKey> {
        self.key_of_uid.get(uid)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ObjectKey, &Arc<DaemonSet>)> {
        self.by_key.iter()
    }

    fn insert(&mut self, key: ObjectKey, ds: DaemonSet) {
        let uid = ds.metadata.uid.clone();
        if let Some(old) = self.by_key.insert(key.clone(), Arc::new(ds))
            && let Some(old_uid) = &old.metadata.uid
            && Some(old_uid) != uid.as_ref()
        {
            self.key_of_uid.remove(old_uid);
        }
        if let Some(uid) = uid {
            self.key_of_uid.insert(uid, key);
        }
    }

    fn remove(&mut self, key: &ObjectKey) {
        if let Some(old) = self.by_key.remove(key)
            && let Some(uid) = &old.metadata.uid
        {
            self.key_of_uid.remove(uid);
        }
    }
}

/// The shared indexes.
#[derive(Default)]
pub struct Stores {
    daemonsets: RwLock<DaemonSetIndex>,
    pods: RwLock<PodIndex>,
    nodes: RwLock<NodeIndex>,
    records: RwLock<HashMap<ObjectKey, Arc<DaemonSetRollout>>>,
}

// A poisoned lock means a writer panicked mid-update of an in-memory index; the
// index is still structurally sound, so keep serving it.
fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn key_of<K: ResourceExt>(o: &K) -> ObjectKey {
    ObjectKey::new(o.namespace().unwrap_or_default(), o.name_any())
}

/// `resourceVersion`s are etcd revisions: numbers in every Kubernetes release so
/// far. Only used to keep a write's response from being overwritten by an older
/// watch event; when either is not a number the watch wins.
fn newer_or_equal(a: Option<&str>, b: Option<&str>) -> bool {
    match (
        a.and_then(|v| v.parse::<u64>().ok()),
        b.and_then(|v| v.parse::<u64>().ok()),
    ) {
        (Some(a), Some(b)) => a >= b,
        _ => false,
    }
}

impl Stores {
    pub fn daemonsets(&self) -> RwLockReadGuard<'_, DaemonSetIndex> {
        read(&self.daemonsets)
    }

    pub fn daemonset(&self, key: &ObjectKey) -> Option<Arc<DaemonSet>> {
        read(&self.daemonsets).get(key)
    }

    pub fn pods_of(&self, owner_uid: &str) -> Arc<[PodObservation]> {
        read(&self.pods).of(owner_uid)
    }

    pub fn pod_count(&self) -> usize {
        read(&self.pods).len()
    }

    /// Keeps what the planner reads of a pod from a watch event. Returns the UID
    /// of the owning DaemonSet when its observed pods changed.
    pub fn observed_pod(&self, p: &Pod) -> Option<String> {
        let (owner, obs) = observe_pod(p)?;
        write(&self.pods).upsert(&owner, obs).then_some(owner)
    }

    /// Forgets a deleted pod. Returns the UID of the DaemonSet that owned it.
    pub fn pod_deleted(&self, uid: &str) -> Option<String> {
        write(&self.pods).remove(&PodUid::from(uid))
    }

    pub fn nodes(&self) -> RwLockReadGuard<'_, NodeIndex> {
        read(&self.nodes)
    }

    pub fn record(&self, key: &ObjectKey) -> Option<Arc<DaemonSetRollout>> {
        read(&self.records).get(key).cloned()
    }

    pub fn records(&self) -> Vec<Arc<DaemonSetRollout>> {
        read(&self.records).values().cloned().collect()
    }

    /// Keeps the response of nodewave's own write, unless the watch already
    /// delivered something newer, so the next reconcile does not decide on the
    /// version before the write.
    pub fn wrote_daemonset(&self, ds: DaemonSet) {
        let key = key_of(&ds);
        let mut idx = write(&self.daemonsets);
        let current = idx.get(&key);
        if current.as_ref().is_none_or(|c| {
            newer_or_equal(
                ds.metadata.resource_version.as_deref(),
                c.metadata.resource_version.as_deref(),
            )
        }) {
            idx.insert(key, slim_daemonset(ds));
        }
    }

    pub fn wrote_record(&self, r: DaemonSetRollout) {
        let key = key_of(&r);
        let mut idx = write(&self.records);
        let current = idx.get(&key);
        if current.is_none_or(|c| {
            newer_or_equal(
                r.metadata.resource_version.as_deref(),
                c.metadata.resource_version.as_deref(),
            )
        }) {
            idx.insert(key, Arc::new(r));
        }
    }

    pub fn forgot_record(&self, key: &ObjectKey) {
        write(&self.records).remove(key);
    }

    pub fn forgot_daemonset(&self, key: &ObjectKey) {
        write(&self.daemonsets).remove(key);
    }
}

/// Drops what nodewave never reads from a stored DaemonSet.
fn slim_daemonset(mut ds: DaemonSet) -> DaemonSet {
    ds.metadata.managed_fields = None;
    ds
}

/// Readiness of the watches: each one counts once its first list completed.
#[derive(Clone)]
pub struct Readiness {
    tx: Arc<watch::Sender<usize>>,
}

impl Readiness {
    fn new() -> (Self, watch::Receiver<usize>) {
        let (tx, rx) = watch::channel(0);
        (Self { tx: Arc::new(tx) }, rx)
    }

    fn synced(&self) {
        self.tx.send_modify(|n| *n += 1);
    }
}

/// The running watches.
pub struct Watches {
    pub stores: Arc<Stores>,
    ready: watch::Receiver<usize>,
    expected: usize,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Watches {
    /// Starts every watch. `on_touch` is called (from the watch tasks) for every
    /// change a reconcile may care about.
    pub fn start(client: &Client, scope: &Scope, on_touch: OnTouch) -> Self {
        let stores = Arc::new(Stores::default());
        let (readiness, ready) = Readiness::new();
        let mut tasks = Vec::new();
        let namespaces: Vec<Option<String>> = match scope {
            Scope::AllNamespaces => vec![None],
            Scope::Namespaces(ns) => ns.iter().cloned().map(Some).collect(),
        };
        let managed = format!("{}={}", keys::MANAGED_BY_LABEL, keys::MANAGED_BY_VALUE);
        for ns in &namespaces {
            let ds_api: Api<DaemonSet> = api(client, ns.as_deref());
            tasks.push(tokio::spawn(watch_daemonsets(
                watcher(ds_api, watcher::Config::default()),
                stores.clone(),
                on_touch.clone(),
                readiness.clone(),
            )));
            // Every DaemonSet pod carries the revision label; StatefulSet pods do
            // too and are dropped by the owner check.
            let pod_api: Api<LeanPod> = api(client, ns.as_deref());
            tasks.push(tokio::spawn(watch_pods(
                watcher(
                    pod_api,
                    watcher::Config::default().labels(keys::REVISION_HASH_LABEL),
                ),
                stores.clone(),
                on_touch.clone(),
                readiness.clone(),
            )));
            // Metadata only, and nothing stored: a new or re-numbered revision
            // is the DaemonSet controller's first sign that it has a new
            // template, earlier than the observed generation in its status.
            let rev_api: Api<PartialObjectMeta<ControllerRevision>> = api(client, ns.as_deref());
            tasks.push(tokio::spawn(watch_revisions(
                watcher(
                    rev_api,
                    watcher::Config::default().labels(keys::REVISION_HASH_LABEL),
                ),
                on_touch.clone(),
                readiness.clone(),
            )));
            let rec_api: Api<DaemonSetRollout> = api(client, ns.as_deref());
            tasks.push(tokio::spawn(watch_records(
                watcher(rec_api, watcher::Config::default().labels(&managed)),
                stores.clone(),
                on_touch.clone(),
                readiness.clone(),
            )));
        }
        // Metadata only: a Node's status (images, conditions) is most of its size
        // and never read here; its managed fields are skipped while decoding.
        let node_api: Api<LeanNode> = Api::all(client.clone());
        tasks.push(tokio::spawn(watch_nodes(
            watcher(node_api, watcher::Config::default()),
            stores.clone(),
            on_touch,
            readiness,
        )));
        let expected = namespaces.len() * 4 + 1;
        Self {
            stores,
            ready,
            expected,
            tasks,
        }
    }

    /// Resolves once every watch has listed its objects once.
    pub async fn wait_ready(&mut self) {
        let expected = self.expected;
        let _ = self.ready.wait_for(|n| *n >= expected).await;
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow() >= self.expected
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn watcher<K>(api: Api<K>, cfg: watcher::Config) -> impl Stream<Item = watcher::Result<Event<K>>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(api, cfg).default_backoff()
}

/// Tracks which objects a relist saw, to drop the ones it did not.
struct Relist<Id = String> {
    active: bool,
    seen: HashSet<Id>,
}

impl<Id> Default for Relist<Id> {
    fn default() -> Self {
        Relist {
            active: false,
            seen: HashSet::new(),
        }
    }
}

impl<Id: std::hash::Hash + Eq + Clone> Relist<Id> {
    fn begin(&mut self) {
        self.active = true;
        self.seen.clear();
    }

    fn saw(&mut self, id: Id) {
        if self.active {
            self.seen.insert(id);
        }
    }

    /// The ids of `known` the relist did not see.
    fn done<'a>(&mut self, known: impl Iterator<Item = &'a Id>) -> Vec<Id>
    where
        Id: 'a,
    {
        self.active = false;
        let gone = known.filter(|k| !self.seen.contains(*k)).cloned().collect();
        self.seen.clear();
        gone
    }
}

fn warn_watch(what: &str, e: &watcher::Error) {
    tracing::warn!(watch = what, error = %e, "watch interrupted; it resumes with backoff");
}

/// Touches the DaemonSet that owns a ControllerRevision created or changed
/// after the first list (the DaemonSet controller made a template current);
/// StatefulSets' revisions are skipped.
async fn watch_revisions(
    stream: impl Stream<Item = watcher::Result<Event<PartialObjectMeta<ControllerRevision>>>>,
    on_touch: OnTouch,
    readiness: Readiness,
) {
    let mut stream = std::pin::pin!(stream);
    let mut synced = false;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(Event::Apply(cr)) => {
                if let Some(owner) = daemonset_owner(&cr.metadata) {
                    on_touch(Touched::DaemonSet(owner));
                }
            }
            Ok(Event::InitDone) if !synced => {
                synced = true;
                readiness.synced();
            }
            Ok(_) => {}
            Err(e) => warn_watch("controllerrevisions", &e),
        }
    }
}

/// The DaemonSet controlling an object, from its owner references.
fn daemonset_owner(meta: &ObjectMeta) -> Option<ObjectKey> {
    let ns = meta.namespace.as_deref()?;
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|o| o.kind == "DaemonSet" && o.controller == Some(true))
        .map(|o| ObjectKey::new(ns, &o.name))
}

async fn watch_daemonsets(
    stream: impl Stream<Item = watcher::Result<Event<DaemonSet>>>,
    stores: Arc<Stores>,
    on_touch: OnTouch,
    readiness: Readiness,
) {
    let mut stream = std::pin::pin!(stream);
    let mut relist = Relist::default();
    let mut synced = false;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(Event::Init) => relist.begin(),
            Ok(Event::Apply(ds) | Event::InitApply(ds)) => {
                let key = key_of(&ds);
                relist.saw(key.to_string());
                write(&stores.daemonsets).insert(key.clone(), slim_daemonset(ds));
                on_touch(Touched::DaemonSet(key));
            }
            Ok(Event::Delete(ds)) => {
                let key = key_of(&ds);
                write(&stores.daemonsets).remove(&key);
                on_touch(Touched::DaemonSet(key));
            }
            Ok(Event::InitDone) => {
                let gone: Vec<ObjectKey> = {
                    let mut idx = write(&stores.daemonsets);
                    let names: Vec<String> = idx.by_key.keys().map(ToString::to_string).collect();
                    let gone = relist.done(names.iter());
                    let keys: Vec<ObjectKey> = idx
                        .by_key
                        .keys()
                        .filter(|k| gone.contains(&k.to_string()))
                        .cloned()
                        .collect();
                    for k in &keys {
                        idx.remove(k);
                    }
                    keys
                };
                for k in gone {
                    on_touch(Touched::DaemonSet(k));
                }
                if !synced {
                    synced = true;
                    readiness.synced();
                }
            }
            Err(e) => warn_watch("daemonsets", &e),
        }
    }
}

async fn watch_pods(
    stream: impl Stream<Item = watcher::Result<Event<LeanPod>>>,
    stores: Arc<Stores>,
    on_touch: OnTouch,
    readiness: Readiness,
) {
    let mut stream = std::pin::pin!(stream);
    // Pod UIDs, kept as 16 bytes each: a relist of a fleet sees every pod.
    let mut relist = Relist::<PodUid>::default();
    let mut synced = false;
    let touch_owner = |owner: &str| {
        let key = stores.daemonsets().key_of_uid(owner).cloned();
        if let Some(key) = key {
            on_touch(Touched::DaemonSet(key));
        }
    };
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(Event::Init) => relist.begin(),
            Ok(Event::Apply(LeanPod(p)) | Event::InitApply(LeanPod(p))) => {
                if let Some(uid) = &p.metadata.uid {
                    relist.saw(PodUid::from(uid.as_str()));
                }
                if let Some(owner) = stores.observed_pod(&p) {
                    touch_owner(&owner);
                }
            }
            Ok(Event::Delete(LeanPod(p))) => {
                let owner = p
                    .metadata
                    .uid
                    .as_deref()
                    .and_then(|uid| stores.pod_deleted(uid));
                if let Some(owner) = owner {
                    touch_owner(&owner);
                }
            }
            Ok(Event::InitDone) => {
                let owners: Vec<String> = {
                    let mut idx = write(&stores.pods);
                    let uids = idx.uids();
                    let gone = relist.done(uids.iter());
                    gone.iter().filter_map(|u| idx.remove(u)).collect()
                };
                for o in owners {
                    touch_owner(&o);
                }
                if !synced {
                    synced = true;
                    readiness.synced();
                }
            }
            Err(e) => warn_watch("pods", &e),
        }
    }
}

async fn watch_nodes(
    stream: impl Stream<Item = watcher::Result<Event<LeanNode>>>,
    stores: Arc<Stores>,
    on_touch: OnTouch,
    readiness: Readiness,
) {
    let mut stream = std::pin::pin!(stream);
    let mut relist = Relist::default();
    let mut synced = false;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(Event::Init) => relist.begin(),
            Ok(Event::Apply(n) | Event::InitApply(n)) => {
                let name = n.name_any();
                relist.saw(NodeName::from(name.as_str()));
                let labels = n.0.labels.unwrap_or_default();
                // Heartbeats change a node's resourceVersion every few seconds;
                // only existence and labels matter here.
                if write(&stores.nodes).upsert(&name, labels) && synced {
                    on_touch(Touched::Nodes);
                }
            }
            Ok(Event::Delete(n)) => {
                if write(&stores.nodes).remove(&n.name_any()) {
                    on_touch(Touched::Nodes);
                }
            }
            Ok(Event::InitDone) => {
                let removed = {
                    let mut idx = write(&stores.nodes);
                    let names = idx.names();
                    let gone = relist.done(names.iter());
                    drop(names);
                    for n in &gone {
                        idx.remove(n);
                    }
                    !gone.is_empty()
                };
                if removed || !synced {
                    on_touch(Touched::Nodes);
                }
                if !synced {
                    synced = true;
                    readiness.synced();
                }
            }
            Err(e) => warn_watch("nodes", &e),
        }
    }
}

async fn watch_records(
    stream: impl Stream<Item = watcher::Result<Event<DaemonSetRollout>>>,
    stores: Arc<Stores>,
    on_touch: OnTouch,
    readiness: Readiness,
) {
    let mut stream = std::pin::pin!(stream);
    let mut relist = Relist::default();
    let mut synced = false;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(Event::Init) => relist.begin(),
            Ok(Event::Apply(r) | Event::InitApply(r)) => {
                let key = key_of(&r);
                relist.saw(key.to_string());
                write(&stores.records).insert(key.clone(), Arc::new(r));
                on_touch(Touched::DaemonSet(key));
            }
            Ok(Event::Delete(r)) => {
                let key = key_of(&r);
                write(&stores.records).remove(&key);
                on_touch(Touched::DaemonSet(key));
            }
            Ok(Event::InitDone) => {
                let gone: Vec<ObjectKey> = {
                    let mut idx = write(&stores.records);
                    let names: Vec<String> = idx.keys().map(ToString::to_string).collect();
                    let gone = relist.done(names.iter());
                    let keys: Vec<ObjectKey> = idx
                        .keys()
                        .filter(|k| gone.contains(&k.to_string()))
                        .cloned()
                        .collect();
                    for k in &keys {
                        idx.remove(k);
                    }
                    keys
                };
                for k in gone {
                    on_touch(Touched::DaemonSet(k));
                }
                if !synced {
                    synced = true;
                    readiness.synced();
                }
            }
            Err(e) => warn_watch("daemonsetrollouts", &e),
        }
    }
}
