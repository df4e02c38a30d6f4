//! One reconcile of one DaemonSet: read the stores, ask [`plan::decide`], fetch
//! only what it asks for, then carry out the plan: the record write first
//! (conditional), then the actions, each behind the leadership fence.

use std::collections::BTreeMap;
use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::api::apps::v1::DaemonSet;
use tracing::{Instrument as _, info, warn};

use super::{Context, Fingerprint, NotLeader};
use crate::cluster::ClusterError;
use crate::desired::LoadError;
use crate::diff::{self, Difference};
use crate::manifest::ObjectKey;
use crate::plan::{
    self, Act, Count, Decision, DesiredDs, Inputs, Line, Lineage, LiveDs, Need, Plan, RecordView,
};
use crate::record::client::WriteError;
use crate::record::{self, DaemonSetRollout, RecordState, Work, legacy};
use crate::rollout::{PodObservation, PromOutcome};

/// At most this many inputs are fetched for one decision (each `Need` once).
const MAX_NEEDS: usize = 8;
/// Progress columns of an open record are rewritten at most this often.
const PROGRESS_WRITE_MS: i64 = 2_000;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Record(#[from] WriteError),
    #[error(transparent)]
    NotLeader(#[from] NotLeader),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{0}")]
    Invalid(String),
}

impl ReconcileError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Cluster(e) => e.metric_label(),
            Self::Record(e) => e.metric_label(),
            Self::NotLeader(_) => "not_leader",
            Self::Load(_) => "load_commit",
            Self::Invalid(_) => "invalid_object",
        }
    }

    /// A conditional write lost a race: retry at once with fresh inputs.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Record(WriteError::Conflict(_)))
    }
}

/// Every `ReconcileError::metric_label` value (and the worker's own), so the
/// error counters exist at 0 from the start.
pub const ERROR_KINDS: &[&str] = &[
    "kube_config",
    "kube_api",
    "invalid_object",
    "record_conflict",
    "not_leader",
    "load_commit",
    "record_invalid",
    "git_fetch",
    "panic",
    "companions",
];

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// When a record was last written (its `observedAt`), unix ms; 0 if unreadable.
fn written_at_ms(observed_at: &str) -> i64 {
    jiff::Timestamp::strptime("%Y-%m-%dT%H:%M:%S%.fZ", observed_at)
        .ok()
        .or_else(|| observed_at.parse::<jiff::Timestamp>().ok())
        .map_or(0, jiff::Timestamp::as_millisecond)
}

fn fingerprint(ds: &DaemonSet) -> Fingerprint {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ds.metadata.labels.hash(&mut h);
    ds.metadata.annotations.hash(&mut h);
    Fingerprint {
        uid: ds.metadata.uid.clone().unwrap_or_default(),
        generation: ds.metadata.generation.unwrap_or(0),
        metadata: h.finish(),
    }
}

fn live_view(ctx: &Context, ds: &DaemonSet) -> LiveDs {
    let status = ds.status.as_ref();
    let labels = ds.metadata.labels.clone().unwrap_or_default();
    let annotations = ds.metadata.annotations.clone().unwrap_or_default();
    LiveDs {
        generation: ds.metadata.generation.unwrap_or(0),
        observed_generation: status.and_then(|s| s.observed_generation).unwrap_or(0),
        desired_scheduled: status.map_or(0, |s| {
            usize::try_from(s.desired_number_scheduled).unwrap_or(0)
        }),
        managed: labels
            .get(crate::keys::MANAGED_BY_LABEL)
            .map(String::as_str)
            == Some(crate::keys::MANAGED_BY_VALUE),
        same_source: ctx.cfg.identity.owns(&labels, &annotations),
    }
}

/// The decoded state of a record, cached by resourceVersion.
fn decoded(
    ctx: &Context,
    key: &ObjectKey,
    r: &DaemonSetRollout,
) -> Result<Arc<RecordState>, String> {
    let rv = r.metadata.resource_version.clone().unwrap_or_default();
    if let Some((v, s)) = ctx.caches().decoded.get(key)
        && *v == rv
    {
        return s.clone();
    }
    let result = match r.status.as_ref().map(|s| s.state.as_str()) {
        None | Some("") => Ok(Arc::new(RecordState::default())),
        Some(s) => record::codec::decode(s)
            .map(|mut state| {
                state.share_node_names(&ctx.stores.nodes().names());
                Arc::new(state)
            })
            .map_err(|e| e.to_string()),
    };
    ctx.caches()
        .decoded
        .insert(key.clone(), (rv, result.clone()));
    result
}

/// Everything fetched on `plan::decide`'s request.
#[derive(Default)]
struct Fetched {
    diff: Option<(String, Arc<Difference>)>,
    revision: Option<String>,
    /// Looked up, and the controller has not made the live template current yet.
    revision_pending: bool,
    rollback_target: Option<Arc<DesiredDs>>,
    prometheus: Option<(PromOutcome, usize)>,
    lineage: Option<Lineage>,
}

/// Reconciles `key`; returns when to look again (unix ms), if at all.
pub async fn reconcile(ctx: &Context, key: &ObjectKey) -> Result<Option<i64>, ReconcileError> {
    let Some(snapshot) = ctx.desired.borrow().clone() else {
        return Ok(None);
    };
    tracing::Span::current().record("commit", record::short(snapshot.commit()));
    let desired = snapshot.loaded.daemonsets.get(key).cloned();
    let live = ctx.stores.daemonset(key);
    let mut rec_obj = ctx.stores.record(key);
    let live_ours = live.as_ref().is_some_and(|d| ctx.owns_meta(&d.metadata));
    if let Some(r) = &rec_obj
        && !ctx.owns_meta(&r.metadata)
    {
        // Another nodewave (another repository or path) keeps this record.
        return Ok(None);
    }
    if desired.is_none() && rec_obj.is_none() && !live_ours {
        return Ok(None);
    }
    if rec_obj.is_none()
        && let Some(ds) = live.as_ref().filter(|_| live_ours)
        && legacy::has_state(ds.metadata.annotations.as_ref().unwrap_or(&BTreeMap::new()))
    {
        migrate(ctx, key, ds).await?;
        return Ok(Some(now_ms()));
    }

    let state = rec_obj.as_ref().map(|r| decoded(ctx, key, r));
    if let (Some(Err(e)), Some(r)) = (&state, &rec_obj) {
        let rv = r.metadata.resource_version.clone().unwrap_or_default();
        let first = ctx
            .caches()
            .invalid_reported
            .insert(key.clone(), rv.clone())
            != Some(rv);
        ctx.status
            .write()
            .await
            .daemonsets
            .insert(key.to_string(), format!("Error: invalid record: {e}"));
        if first {
            ctx.metrics.reconcile_error("record_invalid");
            let plan = plan::decide(&inputs_for_invalid(ctx, key, e));
            if let Decision::Plan(p) = plan {
                execute(ctx, key, live.as_deref(), &mut rec_obj, *p, &[], None).await?;
            }
        }
        return Ok(None);
    }
    let state = state.and_then(Result::ok);
    // A new commit's DaemonSet waits until the commit's companion objects (its
    // namespace, ServiceAccount, ConfigMaps) are synced; open work never waits.
    if let Some(d) = &desired
        && !snapshot.loaded.objects.is_empty()
        && !ctx.companions.synced(snapshot.commit())
        && state
            .as_deref()
            .is_none_or(|s| !s.is_open() && s.applied.as_ref().is_none_or(|t| t.hash != d.hash))
    {
        return Ok(None);
    }
    let live_view = live.as_ref().map(|d| live_view(ctx, d));
    // The DaemonSet controller reported the live generation observed.
    let observed = live_view.as_ref().is_some_and(LiveDs::observed);
    let pods: Arc<[PodObservation]> = live
        .as_ref()
        .and_then(|d| d.metadata.uid.as_deref())
        .map(|uid| ctx.stores.pods_of(uid))
        .unwrap_or_default();
    let spec = rec_obj.as_ref().map(|r| r.spec.clone()).unwrap_or_default();
    let control = plan::control_for(&spec, state.as_ref().and_then(|s| s.rollout()));
    // The prune guard ran once for this desired state (src/desired/prune_guard.rs).
    let prune_allowed = snapshot.fresh && snapshot.prune.allows_prune();

    // Lines about a rollout carry its commit and stage (a log pipeline filters one
    // rollout on them), in a span of their own.
    let span = match state.as_deref().map(|s| &s.work) {
        Some(Work::Rolling { target, rollout }) => tracing::info_span!(
            "rollout",
            commit = record::short(&target.commit),
            stage = rollout.current_stage().map_or("", |s| s.name.as_str())
        ),
        // Before the stages are resolved the line is about the apply.
        Some(Work::Applying { target, .. }) => tracing::info_span!(
            "rollout",
            commit = record::short(&target.commit),
            stage = "applying"
        ),
        _ => tracing::Span::current(),
    };
    let mut fetched = Fetched::default();
    async {
        for _ in 0..MAX_NEEDS {
            let decision = {
                let nodes = ctx.stores.nodes();
                let inputs = Inputs {
                    key,
                    now_ms: now_ms(),
                    settings: &ctx.cfg.settings,
                    desired: desired.as_deref(),
                    fresh: snapshot.fresh,
                    prune_allowed,
                    live: live_view.as_ref(),
                    record: match &state {
                        Some(s) => RecordView::Valid(s),
                        None => RecordView::Missing,
                    },
                    pods: &pods,
                    nodes: &nodes,
                    control: control.clone(),
                    diff: fetched.diff.as_ref().map(|(h, d)| (h.as_str(), d.as_ref())),
                    revision: fetched.revision.as_deref(),
                    revision_pending: fetched.revision_pending,
                    rollback_target: fetched.rollback_target.as_deref(),
                    prometheus: fetched.prometheus.clone(),
                    lineage: fetched.lineage,
                    snapshot_commit: snapshot.commit(),
                };
                plan::decide(&inputs)
            };
            match decision {
                Decision::Plan(p) => {
                    let p = *p;
                    let revision = state
                        .as_ref()
                        .and_then(|s| plan::target_revision(s).map(String::from));
                    return execute(
                        ctx,
                        key,
                        live.as_deref(),
                        &mut rec_obj,
                        p,
                        &pods,
                        revision.as_deref(),
                    )
                    .await;
                }
                Decision::Need(need) => {
                    supply(
                        ctx,
                        key,
                        &need,
                        desired.as_ref(),
                        live.as_deref(),
                        observed,
                        state.as_deref(),
                        &mut fetched,
                    )
                    .await?;
                    if matches!(need, Need::Revision) && fetched.revision.is_none() {
                        if observed {
                            // Observed, yet no revision recorded: look again soon.
                            return Ok(Some(now_ms() + 1_000));
                        }
                        // Not made current yet: its revision's change or the
                        // observed generation brings the next look.
                        fetched.revision_pending = true;
                    }
                }
            }
        }
        Err(ReconcileError::Invalid(format!(
            "could not decide what to do with {key}: too many inputs requested"
        )))
    }
    .instrument(span)
    .await
}

fn inputs_for_invalid<'a>(ctx: &'a Context, key: &'a ObjectKey, e: &'a str) -> Inputs<'a> {
    static EMPTY: std::sync::OnceLock<plan::NodeIndex> = std::sync::OnceLock::new();
    static NO_PODS: std::sync::OnceLock<Arc<[PodObservation]>> = std::sync::OnceLock::new();
    Inputs {
        key,
        now_ms: now_ms(),
        settings: &ctx.cfg.settings,
        desired: None,
        fresh: false,
        prune_allowed: false,
        live: None,
        record: RecordView::Invalid(e),
        pods: NO_PODS.get_or_init(Arc::default),
        nodes: EMPTY.get_or_init(plan::NodeIndex::default),
        control: crate::rollout::Control::default(),
        diff: None,
        revision: None,
        revision_pending: false,
        rollback_target: None,
        prometheus: None,
        lineage: None,
        snapshot_commit: "",
    }
}

#[allow(clippy::too_many_arguments)]
async fn supply(
    ctx: &Context,
    key: &ObjectKey,
    need: &Need,
    desired: Option<&Arc<DesiredDs>>,
    live: Option<&DaemonSet>,
    observed: bool,
    state: Option<&RecordState>,
    f: &mut Fetched,
) -> Result<(), ReconcileError> {
    match need {
        Need::Diff { hash } => {
            let object = if let Some(d) = desired.filter(|d| d.hash == *hash) {
                d.object.clone()
            } else if let Some(t) = f.rollback_target.as_ref().filter(|t| t.hash == *hash) {
                t.object.clone()
            } else {
                return Err(ReconcileError::Invalid(format!(
                    "no object with content hash {hash} to compare"
                )));
            };
            let Some(live) = live else {
                return Err(ReconcileError::Invalid(
                    "no live DaemonSet to compare".into(),
                ));
            };
            let fp = fingerprint(live);
            let cached = ctx
                .caches()
                .diffs
                .get(key)
                .filter(|(h, p, _)| h == hash && *p == fp)
                .map(|(_, _, d)| d.clone());
            let d = if let Some(d) = cached {
                d
            } else {
                let dry = ctx.cluster.apply(&object, true).await?;
                let live_value = serde_json::to_value(live)
                    .map_err(|e| ReconcileError::Invalid(e.to_string()))?;
                let d = Arc::new(diff::compare(&key.to_string(), &live_value, &dry));
                ctx.caches()
                    .diffs
                    .insert(key.clone(), (hash.clone(), fp, d.clone()));
                d
            };
            f.diff = Some((hash.clone(), d));
        }
        Need::Revision => {
            let Some(live) = live else {
                return Err(ReconcileError::Invalid("no live DaemonSet".into()));
            };
            f.revision = ctx.cluster.update_revision(live, observed).await?;
        }
        Need::RollbackTarget { commit } => {
            let loaded = ctx.loader.load(commit).await?;
            let ds = loaded.daemonsets.get(key).cloned().ok_or_else(|| {
                ReconcileError::Invalid(format!(
                    "the last good commit {} does not declare DaemonSet {key}",
                    record::short(commit)
                ))
            })?;
            f.rollback_target = Some(ds);
        }
        Need::Prometheus => {
            let r = state
                .and_then(RecordState::rollout)
                .ok_or_else(|| ReconcileError::Invalid("no rollout to check".into()))?;
            let policy = desired.map(|d| &d.policy);
            let spec = policy
                .and_then(|p| p.health.prometheus.as_ref())
                .ok_or_else(|| ReconcileError::Invalid("no Prometheus checks".into()))?;
            let nodes = r
                .current_stage()
                .map(|s| s.nodes.iter().map(ToString::to_string).collect::<Vec<_>>())
                .unwrap_or_default();
            let outcome = ctx.prom.evaluate(key, r, spec, &nodes, now_ms()).await;
            f.prometheus = Some((outcome, r.stage));
        }
        Need::Lineage { recorded, snapshot } => {
            f.lineage = Some(lineage(ctx, key, recorded, snapshot).await);
        }
    }
    Ok(())
}

/// How `recorded` (the record's commit) relates to `snapshot` (this replica's
/// desired commit); see [`Lineage`]. Git lookups in the local clone only.
pub(super) async fn lineage(
    ctx: &Context,
    key: &ObjectKey,
    recorded: &str,
    snapshot: &str,
) -> Lineage {
    let source = ctx.loader.source();
    let k = (recorded.to_string(), snapshot.to_string());
    let cached = ctx.caches().ancestry.get(&k).copied();
    let ancestor = if let Some(v) = cached {
        v
    } else {
        // An error means `recorded` is not in the clone: not an ancestor of
        // `snapshot`, whose history the clone has in full.
        let v = source
            .is_ancestor(k.0.clone(), k.1.clone())
            .await
            .unwrap_or(false);
        ctx.caches().ancestry.insert(k, v);
        v
    };
    if ancestor {
        return Lineage::Ancestor;
    }
    let head = source.head();
    let in_head = match head {
        Some(h) => source.is_ancestor(recorded.to_string(), h).await.ok(),
        None => None,
    };
    match in_head {
        // Fetched already, the desired state not loaded from it yet.
        Some(true) => Lineage::Ahead,
        Some(false) => Lineage::Rewritten,
        None => {
            // Not in the clone. It was on the remote before the record named it,
            // so a fetch that started after this replica saw the record would
            // have brought it, unless the branch was rewritten since.
            let first_seen = *ctx
                .caches()
                .unknown_since
                .entry((key.clone(), recorded.to_string()))
                .or_insert_with(std::time::Instant::now);
            if source.last_fetch_started().is_some_and(|t| t > first_seen) {
                Lineage::Rewritten
            } else {
                tracing::debug!(
                    recorded = %record::short(recorded),
                    snapshot = %record::short(snapshot),
                    "the record names a commit this replica has not fetched yet; waiting"
                );
                Lineage::Ahead
            }
        }
    }
}

/// Pod deletions in flight at once, per DaemonSet.
const DELETE_CONCURRENCY: usize = 32;

/// Deletes the pods of one plan, up to [`DELETE_CONCURRENCY`] at once. The
/// record written before them justifies every one, so their order does not
/// matter; one at a time, a wave of M pods would cost M round trips before
/// the last of them is replaced (measured: 60 deletions per second, 16 ms
/// each, where the native controller deletes a wave at once). The first
/// failure ends the batch; the next reconcile sees what was deleted.
async fn delete_pods(
    ctx: &Context,
    key: &ObjectKey,
    batch: Vec<(String, String, String)>,
) -> Result<(), ReconcileError> {
    use futures::{StreamExt as _, TryStreamExt as _};
    futures::stream::iter(batch)
        .map(|(node, name, uid)| async move {
            ctx.fence.check()?;
            info!(node = %node, pod = %name, "replacing pod");
            ctx.cluster.delete_pod(&key.namespace, &name, &uid).await?;
            crate::failpoint::hit("after-pod-delete");
            Ok::<(), ReconcileError>(())
        })
        .buffer_unordered(DELETE_CONCURRENCY)
        .try_collect()
        .await
}

/// Carries out a plan: the record write first, then the actions in order.
async fn execute(
    ctx: &Context,
    key: &ObjectKey,
    live: Option<&DaemonSet>,
    rec_obj: &mut Option<Arc<DaemonSetRollout>>,
    plan: Plan,
    pods: &[PodObservation],
    revision: Option<&str>,
) -> Result<Option<i64>, ReconcileError> {
    let now = now_ms();
    // Writes that may wait (bookkeeping, progress columns) are due one interval
    // after the record's last write.
    let due = rec_obj
        .as_ref()
        .and_then(|r| r.status.as_ref())
        .map_or(now, |s| written_at_ms(&s.observed_at) + PROGRESS_WRITE_MS);
    let wake_by_due = |wake: Option<i64>| Some(wake.map_or(due, |w| w.min(due)));
    let mut final_state: Option<Arc<RecordState>> = None;
    if let Some(mut state) = plan.write {
        if plan.write_can_wait && plan.actions.is_empty() && now < due {
            // Bookkeeping only: one write per interval, not one per pod event.
            return Ok(wake_by_due(plan.wake_at_ms));
        }
        // A new rollout's stages hold names of their own: share the node index's.
        state.share_node_names(&ctx.stores.nodes().names());
        let state = Arc::new(state);
        write_record(ctx, key, rec_obj, Arc::clone(&state), pods, revision, now).await?;
        final_state = Some(state);
    }
    let uid = live.and_then(|d| d.metadata.uid.clone());
    // Events are posted after the other actions, whatever their outcome: each is
    // an API round trip, and none should hold back the deletions it reports.
    let mut events = Vec::new();
    let done = run_actions(ctx, key, rec_obj, plan.actions, &mut events).await;
    for (warning, reason, message) in events {
        ctx.cluster
            .event(key, uid.as_deref(), warning, &reason, &message)
            .await;
    }
    done?;
    // Keep the progress columns current while something is open, without a
    // write per pod event.
    if final_state.is_none()
        && let Some(r) = rec_obj.as_ref()
        && let Ok(state) = decoded(ctx, key, r)
        && state.is_open()
        && let Some(old) = r.status.as_ref()
    {
        let new = {
            let nodes = ctx.stores.nodes();
            plan::progress_columns(&state, pods, &nodes, revision)
        };
        if plan::progress_changed(old, &new) {
            if now >= due {
                write_record(ctx, key, rec_obj, Arc::clone(&state), pods, revision, now).await?;
            } else {
                return Ok(wake_by_due(plan.wake_at_ms));
            }
        }
        publish(ctx, key, &state).await;
    } else if let Some(s) = final_state.as_ref() {
        publish(ctx, key, s).await;
    } else if let Some(Ok(s)) = rec_obj.as_ref().map(|r| decoded(ctx, key, r)) {
        publish(ctx, key, &s).await;
    }
    Ok(plan.wake_at_ms)
}

/// What `execute` still has to post as Events: (warning, reason, message).
type PendingEvents = Vec<(bool, String, String)>;

/// Runs a plan's actions in order, the deletions that follow each other as one
/// batch, and collects its Events into `events`; stops at the first failure.
async fn run_actions(
    ctx: &Context,
    key: &ObjectKey,
    rec_obj: &mut Option<Arc<DaemonSetRollout>>,
    acts: Vec<Act>,
    events: &mut PendingEvents,
) -> Result<(), ReconcileError> {
    let mut actions = acts.into_iter().peekable();
    while let Some(act) = actions.next() {
        match act {
            Act::Apply(object) => {
                ctx.fence.check()?;
                apply(ctx, key, &object).await?;
                crate::failpoint::hit("after-apply");
            }
            Act::DeletePod { node, name, uid } => {
                // The deletions that follow each other in the plan go together.
                let mut batch = vec![(node, name, uid)];
                while let Some(Act::DeletePod { node, name, uid }) =
                    actions.next_if(|a| matches!(a, Act::DeletePod { .. }))
                {
                    batch.push((node, name, uid));
                }
                delete_pods(ctx, key, batch).await?;
            }
            Act::Event {
                warning,
                reason,
                message,
            } => events.push((warning, reason, message)),
            Act::DeleteDaemonSet => {
                ctx.fence.check()?;
                info!("deleting DaemonSet {key} (removed from Git)");
                ctx.cluster.delete_daemonset(key).await?;
                ctx.stores.forgot_daemonset(key);
                ctx.status.write().await.daemonsets.remove(&key.to_string());
            }
            Act::DeleteRecord => {
                ctx.fence.check()?;
                if let Some(r) = rec_obj.take() {
                    ctx.records.delete(&r).await?;
                    ctx.stores.forgot_record(key);
                }
            }
            Act::Count(c) => count(ctx, key, &c),
            Act::Log(line) => log_line(&line),
        }
    }
    Ok(())
}

async fn write_record(
    ctx: &Context,
    key: &ObjectKey,
    rec_obj: &mut Option<Arc<DaemonSetRollout>>,
    state: Arc<RecordState>,
    pods: &[PodObservation],
    revision: Option<&str>,
    now: i64,
) -> Result<(), ReconcileError> {
    ctx.fence.check()?;
    let status = {
        let nodes = ctx.stores.nodes();
        let rev = plan::target_revision(&state).or(revision);
        plan::record_status(&state, pods, &nodes, rev, rfc3339(now))
    };
    let base = if let Some(r) = rec_obj.as_ref() {
        r.clone()
    } else {
        Arc::new(ctx.records.create(key).await?)
    };
    let written = ctx.records.write_status(&base, status).await?;
    let rv = written
        .metadata
        .resource_version
        .clone()
        .unwrap_or_default();
    ctx.caches().decoded.insert(key.clone(), (rv, Ok(state)));
    ctx.stores.wrote_record(written.clone());
    *rec_obj = Some(Arc::new(written));
    crate::failpoint::hit("after-record-write");
    Ok(())
}

async fn apply(
    ctx: &Context,
    key: &ObjectKey,
    object: &serde_json::Value,
) -> Result<(), ReconcileError> {
    let result = match ctx.cluster.apply(object, false).await {
        Err(e) if e.is_namespace_missing() => {
            if ctx.cfg.create_namespaces {
                info!(namespace = %key.namespace, "creating namespace");
                ctx.cluster.create_namespace(&key.namespace).await?;
                ctx.cluster.apply(object, false).await?
            } else {
                return Err(ReconcileError::Invalid(format!(
                    "namespace {} does not exist; create it, or run nodewave with --create-namespaces",
                    key.namespace
                )));
            }
        }
        other => other?,
    };
    if let Ok(ds) = serde_json::from_value::<DaemonSet>(result) {
        ctx.stores.wrote_daemonset(ds);
    }
    Ok(())
}

fn log_line(l: &Line) {
    if let Some(stage) = &l.stage {
        tracing::Span::current().record("stage", stage.as_str());
    }
    let m = &l.message;
    match (l.warning, l.reason, l.gate) {
        (true, _, Some(gate)) => warn!(gate, "{m}"),
        (true, Some(reason), None) => warn!(reason, "{m}"),
        (true, None, None) => warn!("{m}"),
        (false, Some(reason), _) => info!(reason, "{m}"),
        (false, None, Some(gate)) => info!(gate, "{m}"),
        (false, None, None) => info!("{m}"),
    }
}

fn count(ctx: &Context, key: &ObjectKey, c: &Count) {
    let (ns, name) = (key.namespace.as_str(), key.name.as_str());
    match *c {
        Count::RolloutFinished { outcome, secs } => {
            ctx.metrics.rollout_finished(ns, name, outcome, secs);
        }
        Count::RollbackFinished { secs } => ctx.metrics.observe_rollback_duration(secs),
        Count::GateFailed(g) => ctx.metrics.gate_failed(ns, name, g.metric_label()),
        Count::Drift => ctx.metrics.drift_detected(ns, name),
    }
}

/// Updates `/status` after a reconcile (the metrics read the records themselves).
async fn publish(ctx: &Context, key: &ObjectKey, s: &RecordState) {
    ctx.status
        .write()
        .await
        .daemonsets
        .insert(key.to_string(), s.status.as_str().to_string());
}

/// Builds the record from nodewave 0.1's annotations, writes it, then removes them.
async fn migrate(ctx: &Context, key: &ObjectKey, ds: &DaemonSet) -> Result<(), ReconcileError> {
    let ann = ds.metadata.annotations.clone().unwrap_or_default();
    let state = legacy::from_annotations(&ann).map_err(|e| {
        ReconcileError::Invalid(format!(
            "cannot migrate the rollout state annotations of {key} from nodewave 0.1: {e}; fix or remove them"
        ))
    })?;
    info!("migrating the rollout state from DaemonSet annotations to a DaemonSetRollout record");
    let mut rec = None;
    write_record(ctx, key, &mut rec, Arc::new(state), &[], None, now_ms()).await?;
    ctx.fence.check()?;
    ctx.cluster
        .remove_annotations(key, &legacy::ANNOTATIONS)
        .await?;
    Ok(())
}
