//! The controller: watch-fed stores, a keyed work queue, and workers that
//! reconcile each DaemonSet on its own, concurrently, with per-key backoff.
//!
//! What triggers a reconcile: a new desired state (every key), a change to a
//! DaemonSet, one of its pods or its record (that key), a node added, removed or
//! relabelled (keys with open work), and the timer a plan asks for (deadlines of
//! an open rollout: bake, ready timeout, Prometheus interval). A DaemonSet with
//! nothing going on is never looked at, and looking at it costs no API request.
//!
//! - [`queue`]: the work queue.
//! - [`reconcile`]: one reconcile: gather inputs, ask `plan::decide`, fetch what
//!   it needs, execute the plan (record write first, then actions).
//! - [`companions`]: the commit's other objects (Namespaces, RBAC, ConfigMaps,
//!   CRDs, ...), applied at once before its DaemonSets, drift healed, pruned.
//! - [`fence`]: leadership fencing checked before every write and action.
//! - [`prometheus`]: the Prometheus checks of the health gates.

pub mod companions;
pub mod fence;
pub mod prometheus;
pub mod queue;
mod reconcile;

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt as _;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{Instrument, error, info_span, warn};

use crate::cluster::Cluster;
use crate::desired::{DesiredRx, Loader, SourceIdentity};
use crate::diff::Difference;
use crate::manifest::ObjectKey;
use crate::metrics::Metrics;
use crate::plan;
use crate::record::RecordState;
use crate::record::client::Records;
use crate::service::SharedStatus;
use crate::store::{Stores, Touched};

pub use fence::{Fence, NotLeader};
pub use reconcile::{ERROR_KINDS, ReconcileError};

/// How the controller behaves; filled from flags, env and the config file.
#[derive(Debug, Clone)]
pub struct Config {
    pub identity: SourceIdentity,
    pub settings: plan::Settings,
    /// DaemonSets reconciled at the same time.
    pub workers: usize,
    pub create_namespaces: bool,
}

/// What the live DaemonSet looked like when a diff was computed: the diff stays
/// valid until its spec (generation), labels or annotations change.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    uid: String,
    generation: i64,
    metadata: u64,
}

#[derive(Default)]
struct Caches {
    /// key → (content hash, live fingerprint, diff).
    diffs: HashMap<ObjectKey, (String, Fingerprint, Arc<Difference>)>,
    /// key → (resourceVersion, decoded state or the decode error).
    decoded: HashMap<ObjectKey, (String, Result<Arc<RecordState>, String>)>,
    /// Consecutive failed reconciles per key, for the backoff.
    failures: HashMap<ObjectKey, u32>,
    /// Invalid records already reported (key → resourceVersion).
    invalid_reported: HashMap<ObjectKey, String>,
    /// (ancestor, descendant) → is ancestor-or-equal (commit graphs never change).
    ancestry: HashMap<(String, String), bool>,
    /// (key, recorded commit) → when this replica first found the record naming
    /// a commit its clone does not have.
    unknown_since: HashMap<(ObjectKey, String), std::time::Instant>,
}

pub struct Context {
    pub cfg: Config,
    pub cluster: Cluster,
    pub records: Records,
    pub stores: Arc<Stores>,
    pub queue: Arc<queue::Queue<ObjectKey>>,
    pub desired: DesiredRx,
    pub loader: Arc<Loader>,
    pub metrics: Metrics,
    pub status: SharedStatus,
    pub fence: Fence,
    pub prom: prometheus::Gatekeeper,
    pub companions: companions::CompanionState,
    caches: Mutex<Caches>,
    /// Keys of the first desired state not reconciled yet (for `/readyz`).
    first_round: Mutex<Option<HashSet<ObjectKey>>>,
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: Config,
        cluster: Cluster,
        records: Records,
        stores: Arc<Stores>,
        desired: DesiredRx,
        loader: Arc<Loader>,
        metrics: Metrics,
        status: SharedStatus,
        fence: Fence,
    ) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            cluster,
            records,
            stores,
            queue: Arc::new(queue::Queue::default()),
            desired,
            loader,
            metrics,
            status,
            fence,
            prom: prometheus::Gatekeeper::default(),
            companions: companions::CompanionState::default(),
            caches: Mutex::new(Caches::default()),
            first_round: Mutex::new(None),
        })
    }

    fn caches(&self) -> std::sync::MutexGuard<'_, Caches> {
        self.caches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every key worth a look: in the desired state, recorded, or owned.
    fn all_keys(&self) -> HashSet<ObjectKey> {
        let mut keys: HashSet<ObjectKey> = HashSet::new();
        if let Some(d) = self.desired.borrow().as_ref() {
            keys.extend(d.loaded.daemonsets.keys().cloned());
        }
        for r in self.stores.records() {
            if self.owns_meta(&r.metadata) {
                keys.insert(ObjectKey::new(
                    r.metadata.namespace.clone().unwrap_or_default(),
                    r.metadata.name.clone().unwrap_or_default(),
                ));
            }
        }
        for (k, ds) in self.stores.daemonsets().iter() {
            if self.owns_meta(&ds.metadata) {
                keys.insert(k.clone());
            }
        }
        keys
    }

    /// Keys whose record has work open (a node change may matter to them).
    fn open_keys(&self) -> Vec<ObjectKey> {
        self.stores
            .records()
            .iter()
            .filter(|r| self.owns_meta(&r.metadata))
            .filter(|r| {
                r.status
                    .as_ref()
                    .is_some_and(|s| !s.rollout_phase.is_empty())
            })
            .map(|r| {
                ObjectKey::new(
                    r.metadata.namespace.clone().unwrap_or_default(),
                    r.metadata.name.clone().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Spawns a long-running task with its panics reported (see
    /// [`crate::service::spawn_supervised`]).
    fn supervise(
        &self,
        name: &'static str,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        crate::service::spawn_supervised(name, self.status.clone(), self.metrics.clone(), task)
    }

    fn owns_meta(&self, m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
        self.cfg.identity.owns_meta(m)
    }

    async fn finished_first_round(&self, key: &ObjectKey) {
        let done = {
            let mut g = self
                .first_round
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match g.as_mut() {
                Some(pending) => {
                    pending.remove(key);
                    pending.is_empty()
                }
                None => false,
            }
        };
        if done {
            self.status.write().await.synced_once = true;
        }
    }
}

/// Delay before retry `attempt` of a failing key: 1 s doubling to 5 minutes.
fn backoff(attempt: u32) -> Duration {
    crate::source::backoff(attempt.saturating_sub(1))
}

/// Runs the controller until `shutdown`: dispatches watch events and desired
/// states to the queue, and runs `workers` reconcilers.
pub async fn run(
    ctx: Arc<Context>,
    mut touched: mpsc::UnboundedReceiver<Touched>,
    mut shutdown: watch::Receiver<bool>,
) {
    let dispatcher = {
        let ctx = ctx.clone();
        ctx.clone().supervise("watch-event dispatcher", async move {
            while let Some(t) = touched.recv().await {
                match t {
                    Touched::DaemonSet(k) => ctx.queue.touch(k),
                    Touched::Nodes => {
                        for k in ctx.open_keys() {
                            ctx.queue.touch(k);
                        }
                    }
                }
            }
        })
    };
    let desired_watch = {
        let ctx = ctx.clone();
        let mut rx = ctx.desired.clone();
        ctx.clone()
            .supervise("desired-state dispatcher", async move {
                loop {
                    let keys = ctx.all_keys();
                    let has_desired = rx.borrow().is_some();
                    if has_desired {
                        let mut g = ctx
                            .first_round
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner);
                        if g.is_none() {
                            *g = Some(keys.clone());
                        }
                    }
                    if has_desired && keys.is_empty() {
                        ctx.status.write().await.synced_once = true;
                    }
                    for k in keys {
                        ctx.queue.touch(k);
                    }
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            })
    };
    let companion_task = ctx.supervise("companion objects", companions::run(ctx.clone()));
    let mut workers = Vec::new();
    for _ in 0..ctx.cfg.workers.max(1) {
        let ctx = ctx.clone();
        workers.push(tokio::spawn(async move { worker(ctx).await }));
    }
    let _ = shutdown.wait_for(|s| *s).await;
    ctx.queue.close();
    dispatcher.abort();
    desired_watch.abort();
    companion_task.abort();
    for w in workers {
        let _ = w.await;
    }
}

async fn worker(ctx: Arc<Context>) {
    while let Some(key) = ctx.queue.next().await {
        let span = info_span!("daemonset", namespace = %key.namespace, daemonset = %key.name, commit = tracing::field::Empty, stage = tracing::field::Empty);
        let result = AssertUnwindSafe(reconcile::reconcile(&ctx, &key).instrument(span.clone()))
            .catch_unwind()
            .await;
        let next = match result {
            Ok(Ok(wake_ms)) => {
                ctx.caches().failures.remove(&key);
                ctx.finished_first_round(&key).await;
                wake_ms.map(|ms| {
                    let now = reconcile::now_ms();
                    Instant::now() + Duration::from_millis(u64::try_from(ms - now).unwrap_or(0))
                })
            }
            Ok(Err(e)) => {
                let label = e.metric_label();
                ctx.metrics.reconcile_error(label);
                let attempt = {
                    let mut c = ctx.caches();
                    let n = c.failures.entry(key.clone()).or_insert(0);
                    *n = n.saturating_add(1);
                    *n
                };
                let delay = if e.is_conflict() {
                    Duration::from_millis(50)
                } else {
                    backoff(attempt)
                };
                span.in_scope(|| {
                    if e.is_conflict() || matches!(e, ReconcileError::NotLeader(_)) {
                        tracing::info!(error = %e, retry_in = ?delay, "reconcile deferred");
                    } else {
                        warn!(error = %e, retry_in = ?delay, "reconcile failed; retrying");
                    }
                });
                if !e.is_conflict() {
                    ctx.status
                        .write()
                        .await
                        .daemonsets
                        .insert(key.to_string(), format!("Error: {e}"));
                }
                Some(Instant::now() + delay)
            }
            Err(panic) => {
                let what = crate::service::panic_message(panic.as_ref());
                span.in_scope(|| error!(panic = %what, "reconcile panicked; nodewave reports itself unhealthy so it is restarted"));
                ctx.metrics.reconcile_error("panic");
                ctx.status.write().await.panicked = Some(format!("{key}: {what}"));
                Some(Instant::now() + Duration::from_mins(5))
            }
        };
        ctx.queue.done(&key, next);
    }
}
