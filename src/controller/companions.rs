//! Companion objects (Namespaces, ServiceAccounts, RBAC, ConfigMaps, CRDs and
//! custom resources, ...): applied at once, not staged, in dependency order,
//! before the DaemonSets of the same commit; drift on them healed; those
//! removed from Git pruned. Decisions are in `plan::objects`; this task does
//! the IO.
//!
//! A sync runs when a new desired state is published, when a watched
//! companion object changes or is deleted (a metadata-only watch per kind in
//! the commit, filtered by nodewave's label), and on retry after a failure.
//! Nothing runs on a timer: an idle cluster costs no request.
//!
//! Per-object problems (a kind the API server does not serve, an object that
//! exists and is not nodewave's, an apply the API server refuses) are reported
//! on that object (`/status`, a log line, an Event,
//! `nodewave_object_errors_total{reason}`), and the rest of the commit proceeds.
//! A DaemonSet of a new commit waits until its companions were applied once, so
//! its pods find their ServiceAccount and ConfigMaps; pruning follows.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use kube::api::{Api, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use super::Context;
use crate::cluster::ClusterError;
use crate::cluster::dynamic::ServedKind;
use crate::desired::{Desired, DesiredObject};
use crate::keys;
use crate::manifest::objects::{PRUNABLE_KINDS, defined_kind};
use crate::manifest::{ApplyOrder, ObjectKey, ObjectRef};
use crate::plan::Lineage;
use crate::plan::objects::{LiveObject, ObjectStep, meta_maps, step, template_configs, to_prune};
use crate::record;

/// A wait between a watch event and the sync it causes: a burst of events
/// (nodewave's own applies among them) costs one sync.
const DEBOUNCE: Duration = Duration::from_millis(500);

/// Shared between the companion task and the DaemonSet reconcilers.
#[derive(Debug, Default)]
pub struct CompanionState {
    /// The commit whose companions were last synced.
    synced: std::sync::Mutex<Option<String>>,
    /// Woken by the watches of companion kinds.
    pub wake: Notify,
    /// uid → (generation, resourceVersion) of each companion as the last sync
    /// left it: a watch event that brings nothing newer (a status update of a
    /// CRD, the echo of nodewave's own apply) wakes nothing.
    seen: std::sync::Mutex<HashMap<String, (Option<i64>, String)>>,
}

impl CompanionState {
    /// Whether the companions of `commit` were synced (DaemonSets of a new
    /// commit wait for it).
    pub fn synced(&self, commit: &str) -> bool {
        self.synced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_deref()
            == Some(commit)
    }

    fn remember(&self, obj: &Value) {
        let meta = &obj["metadata"];
        if let (Some(uid), Some(rv)) = (meta["uid"].as_str(), meta["resourceVersion"].as_str()) {
            self.seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(
                    uid.to_string(),
                    (meta["generation"].as_i64(), rv.to_string()),
                );
        }
    }

    /// Whether a watched change is news: a new spec (generation) or, for kinds
    /// without one, a new resourceVersion.
    fn is_news(&self, uid: Option<&str>, generation: Option<i64>, rv: Option<&str>) -> bool {
        let (Some(uid), Some(rv)) = (uid, rv) else {
            return true;
        };
        let seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match seen.get(uid) {
            None => true,
            Some((Some(g), _)) if generation.is_some() => generation != Some(*g),
            Some((_, r)) => r != rv,
        }
    }

    fn set_synced(&self, commit: &str) -> bool {
        let mut g = self
            .synced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = g.as_deref() != Some(commit);
        *g = Some(commit.to_string());
        changed
    }
}

/// A failure that makes the whole sync retry (with backoff).
#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("not the leader")]
    NotLeader,
    #[error("{0}")]
    NotReady(String),
    /// A record names a commit newer than this replica's (see [`behind`]).
    #[error("{0}")]
    Behind(String),
}

/// What one sync found, per object (`Synced` or the error).
type Report = BTreeMap<ObjectRef, Result<(), String>>;

/// Runs until the desired channel closes.
pub async fn run(ctx: Arc<Context>) {
    let mut rx = ctx.desired.clone();
    let mut kinds: HashMap<(String, String), Option<ServedKind>> = HashMap::new();
    let mut watches: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut seen_kinds: BTreeSet<(String, String)> = BTreeSet::new();
    let mut failures: u32 = 0;
    let mut retry_at: Option<Instant> = None;
    let mut first = true;
    loop {
        if !first {
            let retry = async {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                () = ctx.companions.wake.notified() => tokio::time::sleep(DEBOUNCE).await,
                () = retry => {}
            }
        }
        first = false;
        let Some(desired) = rx.borrow().clone() else {
            continue;
        };
        for o in desired.loaded.objects.values() {
            seen_kinds.insert((o.api_version.clone(), o.reference.kind.clone()));
        }
        // The DaemonSets of the commit wait for the applies only: pruning what
        // Git removed follows (as `kubectl apply --prune` does), and the
        // objects live templates still mount are never pruned anyway.
        let outcome = async {
            let report = sync(&ctx, &desired, &mut kinds).await?;
            publish(&ctx, &desired, &report).await;
            ensure_watches(&ctx, &desired, &kinds, &mut watches);
            if ctx.companions.set_synced(desired.commit()) {
                for key in desired.loaded.daemonsets.keys() {
                    ctx.queue.touch(key.clone());
                }
            }
            prune(&ctx, &desired, &mut kinds, &seen_kinds).await
        }
        .await;
        match outcome {
            Ok(()) => {
                failures = 0;
                retry_at = None;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let delay = retry_delay(&ctx, &e, failures);
                // Kinds may have become known (a CRD established) meanwhile.
                kinds.retain(|_, k| k.is_some());
                retry_at = Some(Instant::now() + delay);
            }
        }
    }
}

/// Logs a failed sync (and counts it, unless this replica is merely not the
/// leader or behind) and says when to try again.
fn retry_delay(ctx: &Context, e: &SyncError, failures: u32) -> Duration {
    let delay = match e {
        SyncError::NotReady(_) => Duration::from_secs(1),
        SyncError::Behind(_) => Duration::from_secs(2),
        _ => super::backoff(failures),
    };
    if matches!(e, SyncError::NotLeader) {
        info!("companion objects not synced: not the leader");
    } else if let SyncError::Behind(why) = e {
        tracing::debug!(why = %why, "companion objects not synced: this replica is behind");
    } else {
        warn!(error = %e, retry_in = ?delay, "companion objects not synced; retrying");
        ctx.metrics.reconcile_error("companions");
    }
    delay
}

async fn served(
    ctx: &Context,
    kinds: &mut HashMap<(String, String), Option<ServedKind>>,
    api_version: &str,
    kind: &str,
) -> Result<Option<ServedKind>, ClusterError> {
    let k = (api_version.to_string(), kind.to_string());
    if let Some(s) = kinds.get(&k) {
        return Ok(s.clone());
    }
    let s = ctx.cluster.served_kind(api_version, kind).await?;
    kinds.insert(k, s.clone());
    Ok(s)
}

/// The object as applied: marked with the content hash it was applied for.
fn with_hash(o: &DesiredObject) -> Value {
    let mut v = o.object.clone();
    v["metadata"]["annotations"][keys::CONTENT_HASH] = Value::String(o.hash.clone());
    v
}

/// Applies the commit's companion objects in dependency order.
async fn sync(
    ctx: &Context,
    desired: &Desired,
    kinds: &mut HashMap<(String, String), Option<ServedKind>>,
) -> Result<Report, SyncError> {
    if let Some(why) = behind(ctx, desired).await {
        return Err(SyncError::Behind(why));
    }
    let mut report = Report::new();
    let mut ordered: Vec<&Arc<DesiredObject>> = desired.loaded.objects.values().collect();
    ordered.sort_by(|a, b| (a.order, &a.reference).cmp(&(b.order, &b.reference)));
    let defined_here: BTreeSet<(String, String)> = desired
        .loaded
        .objects
        .values()
        .filter(|o| o.reference.kind == "CustomResourceDefinition")
        .filter_map(|o| defined_kind(&o.object).map(|(defines, _)| defines))
        .collect();
    for o in ordered {
        ctx.fence.check().map_err(|_| SyncError::NotLeader)?;
        let Some(kind) = served(ctx, kinds, &o.api_version, &o.reference.kind).await? else {
            if o.order == ApplyOrder::CustomResource
                && defined_here.contains(&(o.reference.group.clone(), o.reference.kind.clone()))
            {
                // Its CRD was applied in this sync and is not established yet.
                return Err(SyncError::NotReady(format!(
                    "{} waits for its CustomResourceDefinition to be established",
                    o.reference
                )));
            }
            let why = format!(
                "the API server does not serve {} {}: install its CustomResourceDefinition first, or fix the apiVersion or kind",
                o.api_version, o.reference.kind
            );
            object_error(ctx, o, "unknown_kind", &why).await;
            report.insert(o.reference.clone(), Err(why));
            continue;
        };
        let result = sync_one(ctx, &kind, o).await;
        match result {
            Ok(()) => {
                report.insert(o.reference.clone(), Ok(()));
            }
            Err(ObjectFailure::Fatal(e)) => return Err(e),
            Err(ObjectFailure::Object(reason, why)) => {
                object_error(ctx, o, reason, &why).await;
                report.insert(o.reference.clone(), Err(why));
            }
        }
    }
    Ok(report)
}

enum ObjectFailure {
    Fatal(SyncError),
    Object(&'static str, String),
}

impl From<ClusterError> for ObjectFailure {
    fn from(e: ClusterError) -> Self {
        // The API server refusing this object (invalid, forbidden, conflict) is
        // about the object; anything else (unreachable, 5xx) is retried whole.
        match &e {
            ClusterError::Api { source, .. } if matches!(source.as_ref(), kube::Error::Api(s) if (400..500).contains(&s.code) && s.code != 429) => {
                Self::Object("apply_failed", e.to_string())
            }
            _ => Self::Fatal(SyncError::Cluster(e)),
        }
    }
}

/// Why this replica must not sync its commit's companion objects now: a
/// DaemonSet record of this source names a commit this replica does not have
/// yet (another replica applied it), so applying the older objects would undo
/// the newer ones. The same rule as for DaemonSets (`plan::Lineage`); a replica
/// that has not fetched since it started also waits on a rewritten history.
async fn behind(ctx: &Context, desired: &Desired) -> Option<String> {
    let snapshot = desired.commit();
    let mut recorded: BTreeSet<(ObjectKey, String)> = BTreeSet::new();
    for r in ctx.stores.records() {
        if !ctx.owns_meta(&r.metadata) {
            continue;
        }
        if let Some(c) = r.status.as_ref().and_then(|s| s.applied_commit.clone())
            && c != snapshot
        {
            let key = ObjectKey::new(
                r.metadata.namespace.clone().unwrap_or_default(),
                r.metadata.name.clone().unwrap_or_default(),
            );
            recorded.insert((key, c));
        }
    }
    for (key, commit) in recorded {
        match super::reconcile::lineage(ctx, &key, &commit, snapshot).await {
            Lineage::Ancestor => {}
            Lineage::Rewritten if desired.fresh => {}
            Lineage::Ahead | Lineage::Rewritten => {
                return Some(format!(
                    "the record of {key} names commit {}, which this replica's commit {} does not include yet",
                    record::short(&commit),
                    record::short(snapshot)
                ));
            }
        }
    }
    None
}

async fn sync_one(
    ctx: &Context,
    kind: &ServedKind,
    o: &DesiredObject,
) -> Result<(), ObjectFailure> {
    let object = with_hash(o);
    let live = ctx.cluster.get_object(kind, &o.reference).await?;
    let dry_run = match &live {
        Some(_) => Some(
            ctx.cluster
                .apply_object(kind, &o.reference, &object, true)
                .await?,
        ),
        None => None,
    };
    let decision = step(
        &ctx.cfg.identity,
        ctx.cfg.settings.allow_takeover,
        &object,
        &o.hash,
        live.as_ref(),
        dry_run.as_ref(),
    );
    match decision {
        ObjectStep::InSync => {
            if let Some(l) = &live {
                ctx.companions.remember(l);
            }
            Ok(())
        }
        ObjectStep::Refuse { why } => Err(ObjectFailure::Object(
            "not_managed",
            format!(
                "{} {why}; nodewave leaves it alone. To take it over, add the annotation {}: \"true\" to it in Git (or run nodewave with --allow-takeover)",
                o.reference,
                keys::ALLOW_TAKEOVER
            ),
        )),
        ObjectStep::Create | ObjectStep::Update { .. } => {
            ctx.fence
                .check()
                .map_err(|_| ObjectFailure::Fatal(SyncError::NotLeader))?;
            let applied = ctx
                .cluster
                .apply_object(kind, &o.reference, &object, false)
                .await?;
            ctx.companions.remember(&applied);
            match decision {
                ObjectStep::Update { drift: true, diff } => {
                    let msg = format!(
                        "{} drifted from Git ({}); put back",
                        o.reference,
                        diff.paths.join(", ")
                    );
                    warn!(object = %o.reference, paths = ?diff.paths, "companion object drifted from Git; put back");
                    ctx.metrics.object_drift();
                    ctx.cluster
                        .object_event(&o.api_version, &o.reference, true, "DriftCorrected", &msg)
                        .await;
                }
                ObjectStep::Create => {
                    info!(object = %o.reference, "companion object created");
                }
                _ => info!(object = %o.reference, "companion object updated"),
            }
            Ok(())
        }
    }
}

async fn object_error(ctx: &Context, o: &DesiredObject, reason: &'static str, why: &str) {
    warn!(object = %o.reference, reason, error = %why, "companion object not applied");
    ctx.metrics.object_error(reason);
    ctx.cluster
        .object_event(&o.api_version, &o.reference, true, "ApplyFailed", why)
        .await;
}

/// Deletes what nodewave applied from this repository and path and the commit
/// no longer holds: newest dependents first (webhooks before the Services they
/// call, namespaces last). Only for a fetched desired state the prune guard
/// allows, and never with `--no-prune`.
async fn prune(
    ctx: &Context,
    desired: &Desired,
    kinds: &mut HashMap<(String, String), Option<ServedKind>>,
    seen_kinds: &BTreeSet<(String, String)>,
) -> Result<(), SyncError> {
    if !(ctx.cfg.settings.prune && desired.fresh && desired.prune.allows_prune()) {
        return Ok(());
    }
    let wanted: BTreeSet<&ObjectRef> = desired.loaded.objects.keys().collect();
    // Config copies the templates name, desired and live (pods of the live
    // revision mount them).
    let mut referenced: BTreeSet<ObjectRef> = BTreeSet::new();
    for ds in desired.loaded.daemonsets.values() {
        referenced.extend(template_configs(&ds.key.namespace, &ds.object));
    }
    for (key, ds) in ctx.stores.daemonsets().iter() {
        if let Ok(v) = serde_json::to_value(ds.as_ref()) {
            referenced.extend(template_configs(&key.namespace, &v));
        }
    }
    let mut candidates: Vec<(String, String)> = PRUNABLE_KINDS
        .iter()
        .map(|(a, k)| ((*a).to_string(), (*k).to_string()))
        .collect();
    for k in seen_kinds {
        if !candidates.contains(k) {
            candidates.push(k.clone());
        }
    }
    // Custom resources first, namespaces and CRDs last.
    candidates.reverse();
    for (api_version, kind_name) in candidates {
        let Some(kind) = served(ctx, kinds, &api_version, &kind_name).await? else {
            continue;
        };
        let listed = match ctx.cluster.managed_objects(&kind).await {
            Ok(listed) => listed,
            // Not granted cluster-wide (namespaced mode, or a narrowed role):
            // nothing of this kind can be pruned; applying is unaffected.
            Err(e) if e.is_forbidden() => {
                tracing::debug!(kind = %kind_name, error = %e, "may not list this kind cluster-wide; not pruning it");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let live: Vec<LiveObject> = listed.iter().map(|o| live_object(o, &kind)).collect();
        for gone in to_prune(&ctx.cfg.identity, &wanted, &referenced, &live) {
            ctx.fence.check().map_err(|_| SyncError::NotLeader)?;
            info!(object = %gone.reference, "pruning companion object removed from Git");
            ctx.cluster
                .delete_object(&kind, &gone.reference, &gone.uid)
                .await?;
            ctx.cluster
                .object_event(
                    &api_version,
                    &gone.reference,
                    false,
                    "Pruned",
                    &format!("{} was removed from Git; deleted", gone.reference),
                )
                .await;
        }
    }
    Ok(())
}

fn live_object(o: &DynamicObject, kind: &ServedKind) -> LiveObject {
    let value = serde_json::to_value(o).unwrap_or(Value::Null);
    let (labels, annotations) = meta_maps(&value);
    LiveObject {
        reference: ObjectRef {
            group: kind.resource.group.clone(),
            kind: kind.resource.kind.clone(),
            namespace: o.metadata.namespace.clone().unwrap_or_default(),
            name: o.metadata.name.clone().unwrap_or_default(),
        },
        uid: o.metadata.uid.clone().unwrap_or_default(),
        labels,
        annotations,
        deleting: o.metadata.deletion_timestamp.is_some(),
        created: o
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
    }
}

async fn publish(ctx: &Context, desired: &Desired, report: &Report) {
    let mut synced = 0;
    let mut errors = 0;
    let mut objects = BTreeMap::new();
    for (r, result) in report {
        let text = match result {
            Ok(()) => {
                synced += 1;
                "Synced".to_string()
            }
            Err(e) => {
                errors += 1;
                format!("Error: {e}")
            }
        };
        objects.insert(r.to_string(), text);
    }
    ctx.metrics.set_object_counts(synced, errors);
    let mut status = ctx.status.write().await;
    status.objects = objects;
    status.objects_commit = Some(desired.commit().to_string());
}

/// One metadata-only watch per companion kind of the commit (nodewave's label
/// only): a change or deletion by anyone wakes a sync.
fn ensure_watches(
    ctx: &Arc<Context>,
    desired: &Desired,
    kinds: &HashMap<(String, String), Option<ServedKind>>,
    watches: &mut HashMap<String, JoinHandle<()>>,
) {
    let mut wanted: BTreeMap<String, ServedKind> = BTreeMap::new();
    for o in desired.loaded.objects.values() {
        if let Some(Some(k)) = kinds.get(&(o.api_version.clone(), o.reference.kind.clone())) {
            wanted.insert(
                format!("{}/{}", k.resource.api_version, k.resource.kind),
                k.clone(),
            );
        }
    }
    watches.retain(|name, handle| {
        let keep = wanted.contains_key(name);
        if !keep {
            handle.abort();
        }
        keep
    });
    for (name, kind) in wanted {
        if watches.contains_key(&name) {
            continue;
        }
        let ctx = ctx.clone();
        let handle = tokio::spawn(async move {
            let api: Api<PartialObjectMeta<DynamicObject>> =
                Api::all_with(ctx.cluster.client().clone(), &kind.resource);
            let cfg = watcher::Config::default().labels(&format!(
                "{}={}",
                keys::MANAGED_BY_LABEL,
                keys::MANAGED_BY_VALUE
            ));
            let mut stream = std::pin::pin!(watcher::watcher(api, cfg));
            let mut initial = true;
            let mut warned = false;
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::InitDone) => initial = false,
                    // Objects of another nodewave (another repository or path)
                    // carry the same label; their changes are not ours.
                    Ok(watcher::Event::Apply(m)) if !initial && ctx.owns_meta(&m.metadata) => {
                        let meta = &m.metadata;
                        if ctx.companions.is_news(
                            meta.uid.as_deref(),
                            meta.generation,
                            meta.resource_version.as_deref(),
                        ) {
                            ctx.companions.wake.notify_one();
                        }
                    }
                    Ok(watcher::Event::Delete(m)) if !initial && ctx.owns_meta(&m.metadata) => {
                        ctx.companions.wake.notify_one();
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if warned {
                            tracing::debug!(kind = %kind.resource.kind, error = %e, "watch of companion objects failed; retrying");
                        } else {
                            warn!(kind = %kind.resource.kind, error = %e, "watch of companion objects failed (drift on them is seen at the next commit only); retrying every 30s");
                            warned = true;
                        }
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                }
            }
        });
        watches.insert(name, handle);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_newer_specs_or_versions_are_news() {
        let s = CompanionState::default();
        s.remember(&json!({"metadata": {"uid": "crd", "resourceVersion": "5", "generation": 1}}));
        s.remember(&json!({"metadata": {"uid": "cm", "resourceVersion": "7"}}));
        // A status update of the CRD: same generation.
        assert!(!s.is_news(Some("crd"), Some(1), Some("6")));
        assert!(s.is_news(Some("crd"), Some(2), Some("8")));
        // The echo of nodewave's own apply, then someone's edit.
        assert!(!s.is_news(Some("cm"), None, Some("7")));
        assert!(s.is_news(Some("cm"), None, Some("9")));
        assert!(s.is_news(Some("new"), None, Some("1")));
        assert!(s.is_news(None, None, None));
    }
}
