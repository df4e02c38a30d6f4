//! The loop that glues everything together: fetch the tracked commit, load and
//! validate it, diff each DaemonSet against the cluster, start rollouts, step them
//! with the planner, execute its actions, and record the outcome in the cluster,
//! metrics, Events and logs.
//!
//! State that must survive a restart lives in annotations on each DaemonSet
//! (`crate::keys`); the rollout in progress is persisted *before* each action the
//! planner asks for, so a killed nodewave resumes where it stopped.

mod prometheus;
mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::apps::v1::DaemonSet;
use kube::ResourceExt;
use serde_json::{Value, json};
use tokio::sync::{Notify, RwLock, watch};
use tracing::{Instrument, error, info, info_span, warn};

use crate::cluster::{Cluster, ClusterError, NodeView, PodView};
use crate::diff;
use crate::keys;
use crate::manifest::policy::{RolloutPolicySpec, WELL_KNOWN_POOL_LABELS};
use crate::manifest::{self, DesiredState, LoadOptions, ObjectKey};
use crate::metrics::{FetchResult, Metrics, PoolPodCounts, RolloutOutcome, SyncStatus};
use crate::rollout::{
    self, Action, Control, HealthRules, NodeInfo, Observation, Phase, PodObservation, Rollout,
    RolloutKind,
};
use crate::source::SourceWorker;
use crate::verify::{self, Signer, TrustStore};

pub use state::{DaemonSetState, FailedCommit};

/// How the service behaves; filled from flags, env and the config file by `cli`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Repository URL as shown in annotations and logs (credentials removed).
    pub repo_display: String,
    pub path: String,
    pub poll_interval: Duration,
    pub prune: bool,
    pub self_heal: bool,
    pub create_namespaces: bool,
    pub pool_label: Option<String>,
    pub load: LoadOptions,
    /// How often rollouts in progress are stepped.
    pub rollout_tick: Duration,
    /// `--verify-commits head`: the keys a commit must be signed by before it
    /// is loaded; `None` when verification is off.
    pub verify: Option<Arc<TrustStore>>,
}

/// What `/status`, `/readyz` and `nodewave status` report about the source.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ServiceStatus {
    pub head: Option<String>,
    pub applied_commit: Option<String>,
    pub git_reached: bool,
    pub last_fetch_error: Option<String>,
    pub rejected_commit: Option<String>,
    pub rejected_errors: Vec<String>,
    /// Who signed the loaded commit (with `--verify-commits head`).
    pub applied_signer: Option<Signer>,
    pub synced_once: bool,
    pub daemonsets: BTreeMap<String, String>,
}

pub type SharedStatus = Arc<RwLock<ServiceStatus>>;

/// Wakes the loop: `fetch` for a webhook, `resync` for a cluster change.
#[derive(Debug, Default)]
pub struct Triggers {
    pub fetch: Notify,
    pub resync: Notify,
}

pub struct Reconciler {
    settings: Settings,
    cluster: Cluster,
    source: SourceWorker,
    metrics: Metrics,
    status: SharedStatus,
    triggers: Arc<Triggers>,
    desired: Option<(String, DesiredState)>,
    rejected_head: Option<String>,
    /// The commit last rejected for its signature and the trust-store
    /// generation then: it is tried again once the trusted keys change.
    signature_rejected: Option<(String, u64)>,
    prom: prometheus::Gatekeeper,
    fetch_failures: u32,
    /// Errors in the current pass; a failing pass is not re-run at once on the
    /// watch events its own writes caused (that would spin).
    pass_errors: u32,
}

/// How many commits back `fall_back_to_deployed` looks for the deployed one.
const FALLBACK_DEPTH: usize = 100;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

impl Reconciler {
    pub fn new(
        settings: Settings,
        cluster: Cluster,
        source: SourceWorker,
        metrics: Metrics,
        status: SharedStatus,
        triggers: Arc<Triggers>,
    ) -> Self {
        Self {
            settings,
            cluster,
            source,
            metrics,
            status,
            triggers,
            desired: None,
            rejected_head: None,
            signature_rejected: None,
            prom: prometheus::Gatekeeper::default(),
            fetch_failures: 0,
            pass_errors: 0,
        }
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        // A restarted nodewave knows what it last fetched: load it before touching
        // the network so rollouts (and rollbacks) continue while the remote is away.
        if let Some(head) = self.source.head() {
            info!(commit = %short(&head), "loaded the last fetched commit from the local clone");
            self.load_commit(&head).await;
        }
        let mut next_fetch = tokio::time::Instant::now();
        loop {
            let now = tokio::time::Instant::now();
            if now >= next_fetch {
                next_fetch = now + self.fetch().await;
            }
            self.pass_errors = 0;
            if let Err(e) = self.sync_pass().await {
                self.metrics.reconcile_error(e.metric_label());
                self.pass_errors += 1;
                warn!(error = %e, "sync pass failed; retrying");
            }
            if let Err(e) = self.rollout_pass().await {
                self.metrics.reconcile_error(e.metric_label());
                self.pass_errors += 1;
                warn!(error = %e, "rollout pass failed; retrying");
            }
            let sleep = tokio::time::sleep_until(
                next_fetch.min(tokio::time::Instant::now() + self.settings.rollout_tick),
            );
            let failing = self.pass_errors > 0;
            tokio::select! {
                () = sleep => {}
                () = self.triggers.fetch.notified() => { next_fetch = tokio::time::Instant::now(); }
                () = self.triggers.resync.notified(), if !failing => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                info!("shutting down");
                return;
            }
        }
    }

    /// One fetch; returns the delay until the next one.
    async fn fetch(&mut self) -> Duration {
        let started = std::time::Instant::now();
        let result = self.source.fetch().await;
        self.metrics.observe_git_fetch_duration(started.elapsed());
        self.metrics.git_fetch_result(if result.is_ok() {
            FetchResult::Success
        } else {
            FetchResult::Error
        });
        match result {
            Ok(outcome) => {
                self.fetch_failures = 0;
                self.metrics.set_git_head(&outcome.head);
                if outcome.forced {
                    self.metrics.git_force_push();
                    warn!(
                        previous = outcome.previous.as_deref().unwrap_or("-"),
                        head = %outcome.head,
                        "history was rewritten on the remote (force-push); following the new head"
                    );
                }
                {
                    let mut st = self.status.write().await;
                    st.git_reached = true;
                    st.last_fetch_error = None;
                    st.head = Some(outcome.head.clone());
                }
                let known = self.desired.as_ref().map(|(c, _)| c.as_str());
                if known != Some(outcome.head.as_str())
                    && (self.rejected_head.as_deref() != Some(outcome.head.as_str())
                        || self.signature_retry_due(&outcome.head))
                {
                    info!(commit = %short(&outcome.head), "new commit");
                    self.load_commit(&outcome.head).await;
                }
                self.settings.poll_interval
            }
            Err(e) => {
                self.fetch_failures += 1;
                let delay =
                    crate::source::backoff(self.fetch_failures).min(self.settings.poll_interval);
                error!(error = %e, retry_in = ?delay, "git fetch failed; keeping what is deployed");
                self.metrics.reconcile_error("git_fetch");
                self.status.write().await.last_fetch_error = Some(e.to_string());
                delay
            }
        }
    }

    /// A head rejected for its signature is loaded again once the trusted keys
    /// changed (a signer's key was added), without waiting for another push.
    fn signature_retry_due(&self, head: &str) -> bool {
        match (&self.settings.verify, &self.signature_rejected) {
            (Some(trust), Some((commit, generation))) => {
                commit == head && trust.generation() != *generation
            }
            _ => false,
        }
    }

    /// Loads and validates a commit. A rejected commit changes nothing: the previous
    /// desired state stays in force.
    async fn load_commit(&mut self, commit: &str) {
        // With --verify-commits head, a commit not signed by a trusted key is
        // rejected before anything of it is read (reason "signature").
        let mut signer = None;
        if let Some(trust) = self.settings.verify.clone() {
            match verify::check_commit(&self.source, &trust, commit).await {
                Ok(s) => {
                    info!(commit = %short(commit), signer = %s, "commit signature verified");
                    self.signature_rejected = None;
                    signer = Some(s);
                }
                Err(u) => {
                    error!(commit = %short(commit), reason = u.metric_label(), error = %u, "commit signature not verified");
                    self.signature_rejected = Some((commit.to_string(), trust.generation()));
                    self.reject(
                        commit,
                        verify::REJECT_REASON,
                        vec![u.report()],
                        BTreeSet::new(),
                    )
                    .await;
                    if self.desired.is_none() {
                        self.fall_back_to_deployed(commit).await;
                    }
                    return;
                }
            }
        }
        let files = match self.source.files_at(commit.to_string()).await {
            Ok(f) => f,
            Err(e) => {
                error!(commit = %short(commit), error = %e, "cannot read the commit's files");
                self.reject(commit, "read-error", vec![e.to_string()], BTreeSet::new())
                    .await;
                return;
            }
        };
        match manifest::load(&files, &self.settings.load) {
            Ok(state) => {
                for w in &state.warnings {
                    warn!(commit = %short(commit), finding = %w, "best-practice warning");
                }
                info!(
                    commit = %short(commit),
                    daemonsets = state.daemonsets.len(),
                    policies = state.policies.len(),
                    "commit is valid"
                );
                self.rejected_head = None;
                {
                    let mut st = self.status.write().await;
                    st.rejected_commit = None;
                    st.rejected_errors.clear();
                    st.applied_signer = signer;
                }
                self.desired = Some((commit.to_string(), state));
                self.triggers.resync.notify_one();
            }
            Err(rejected) => {
                let errors: Vec<String> = rejected.errors.iter().map(ToString::to_string).collect();
                for e in &errors {
                    error!(commit = %short(commit), finding = %e, "commit rejected");
                }
                // "DaemonSet ns/name" -> ns: where the commit's authors will look.
                let namespaces = rejected
                    .errors
                    .iter()
                    .chain(&rejected.warnings)
                    .filter_map(|f| f.object.as_deref()?.split_once(' ')?.1.split_once('/'))
                    .map(|(ns, _)| ns.to_string())
                    .collect();
                self.reject(commit, rejected.reason(), errors, namespaces)
                    .await;
                if self.desired.is_none() {
                    self.fall_back_to_deployed(commit).await;
                }
            }
        }
    }

    /// Started (or restarted) with an invalid newest commit: rather than knowing
    /// nothing, take the newest valid ancestor that nodewave itself applied (a
    /// managed DaemonSet records it), so drift is healed and rollouts continue
    /// against what is deployed. Never an ancestor nobody applied.
    async fn fall_back_to_deployed(&mut self, rejected: &str) {
        let applied: BTreeSet<String> = match self.cluster.managed_daemonsets().await {
            Ok(list) => list
                .iter()
                .filter(|d| self.owns(d))
                .filter_map(|d| d.annotations().get(keys::APPLIED_COMMIT).cloned())
                .collect(),
            Err(_) => return,
        };
        if applied.is_empty() {
            return;
        }
        let mut commit = rejected.to_string();
        for _ in 0..FALLBACK_DEPTH {
            let Ok(info) = self.source.commit_info(commit.clone()).await else {
                return;
            };
            let Some(parent) = info.parents.first().cloned() else {
                return;
            };
            commit = parent;
            if !applied.contains(&commit) {
                continue;
            }
            let Ok(files) = self.source.files_at(commit.clone()).await else {
                return;
            };
            if let Ok(state) = manifest::load(&files, &self.settings.load) {
                warn!(
                    rejected = %short(rejected),
                    using = %short(&commit),
                    "the newest commit is invalid; keeping the cluster on the last valid commit nodewave applied"
                );
                // Deployed by nodewave before: not verified again, signer unknown.
                self.status.write().await.applied_signer = None;
                self.desired = Some((commit, state));
                self.triggers.resync.notify_one();
                return;
            }
        }
    }

    /// Records a rejected commit: metric, `/status`, and a `CommitRejected` Event on
    /// every DaemonSet nodewave manages from this source. With none managed yet (a
    /// first commit that is already invalid) the Event goes to a namespace instead:
    /// those of the objects the findings name, else the allowed namespaces, else the
    /// default namespace; `kubectl get events -n <ns>` shows it.
    async fn reject(
        &mut self,
        commit: &str,
        reason: &str,
        errors: Vec<String>,
        namespaces: BTreeSet<String>,
    ) {
        self.metrics.commit_rejected(reason);
        self.rejected_head = Some(commit.to_string());
        let summary = format!(
            "commit {} rejected, nothing applied: {}{}",
            short(commit),
            errors
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join("; "),
            if errors.len() > 3 {
                format!(" (+{} more)", errors.len() - 3)
            } else {
                String::new()
            }
        );
        {
            let mut st = self.status.write().await;
            st.rejected_commit = Some(commit.to_string());
            st.rejected_errors = errors;
        }
        // Tell the owners of every managed DaemonSet where they look: its Events.
        let owned: Vec<DaemonSet> = match self.cluster.managed_daemonsets().await {
            Ok(list) => list.into_iter().filter(|d| self.owns(d)).collect(),
            Err(e) => {
                warn!(error = %e, "cannot list managed DaemonSets to report the rejected commit");
                return;
            }
        };
        for ds in &owned {
            let key = key_of(ds);
            self.cluster
                .event(
                    &key,
                    ds.metadata.uid.as_deref(),
                    true,
                    "CommitRejected",
                    &summary,
                )
                .await;
        }
        if owned.is_empty() {
            let mut namespaces = namespaces;
            if namespaces.is_empty() {
                namespaces.extend(self.settings.load.allowed_namespaces.iter().cloned());
            }
            if namespaces.is_empty() {
                namespaces.insert(self.settings.load.default_namespace.clone());
            }
            for ns in &namespaces {
                self.cluster
                    .namespace_event(ns, true, "CommitRejected", &summary)
                    .await;
            }
        }
    }

    fn owns(&self, ds: &DaemonSet) -> bool {
        let ann = ds.annotations();
        ds.labels().get(keys::MANAGED_BY_LABEL).map(String::as_str) == Some(keys::MANAGED_BY_VALUE)
            && ann.get(keys::SOURCE_REPO) == Some(&self.settings.repo_display)
            && ann.get(keys::SOURCE_PATH).map_or("", String::as_str) == self.settings.path.as_str()
    }

    /// Brings every DaemonSet of the desired state toward Git, and prunes.
    async fn sync_pass(&mut self) -> Result<(), ClusterError> {
        let Some((commit, desired)) = self.desired.clone() else {
            return Ok(());
        };
        for (key, dds) in &desired.daemonsets {
            let policy = desired.policies.get(key).map(|p| p.spec.clone());
            let span = info_span!("daemonset", namespace = %key.namespace, daemonset = %key.name, commit = %short(&commit));
            if let Err(e) = self
                .sync_daemonset(key, &dds.manifest, &dds.location.file, &commit, policy)
                .instrument(span.clone())
                .await
            {
                self.metrics.reconcile_error(e.metric_label());
                self.pass_errors += 1;
                span.in_scope(|| error!(error = %e, "cannot sync DaemonSet"));
                self.status
                    .write()
                    .await
                    .daemonsets
                    .insert(key.to_string(), format!("Error: {e}"));
            }
        }
        if self.settings.prune {
            for ds in self.cluster.managed_daemonsets().await? {
                let key = key_of(&ds);
                if self.owns(&ds) && !desired.daemonsets.contains_key(&key) {
                    info!(namespace = %key.namespace, daemonset = %key.name, commit = %short(&commit), "DaemonSet removed from Git: pruning");
                    self.cluster.delete_daemonset(&key).await?;
                    self.metrics.forget_daemonset(&key.namespace, &key.name);
                    self.status
                        .write()
                        .await
                        .daemonsets
                        .remove(&key.to_string());
                }
            }
        }
        {
            let mut st = self.status.write().await;
            st.synced_once = true;
            st.applied_commit = Some(commit.clone());
        }
        Ok(())
    }

    fn desired_object(&self, manifest: &Value, file: &str, commit: &str) -> Value {
        decorate(
            manifest,
            file,
            commit,
            &self.settings.repo_display,
            &self.settings.path,
        )
    }

    async fn sync_daemonset(
        &mut self,
        key: &ObjectKey,
        manifest: &Value,
        file: &str,
        commit: &str,
        policy: Option<RolloutPolicySpec>,
    ) -> Result<(), ClusterError> {
        let live = self.cluster.get_daemonset(key).await?;
        let state = live.as_ref().map(DaemonSetState::of).unwrap_or_default();
        let desired = self.desired_object(manifest, file, commit);
        let content = state::content_hash(&desired);

        if let Some(r) = &state.rollout
            && rollout_open(&state)
        {
            match r.kind {
                // A rollback finishes first; the next commit is looked at after it.
                RolloutKind::Rollback { .. } => return Ok(()),
                RolloutKind::Forward if state.desired_hash.as_deref() == Some(content.as_str()) => {
                    return Ok(());
                }
                RolloutKind::Forward => {
                    info!(superseded = %short(&r.commit), "a newer commit supersedes the rollout in progress");
                }
            }
        }
        if let Some(f) = state.failed.iter().find(|f| f.hash == content) {
            // Never re-apply a failed change by itself: wait for a commit that changes it.
            let status = state.status_or(SyncStatus::RolledBack);
            let msg = match (&state.message, status) {
                // Degraded: nothing was rolled back; keep the explanation why.
                (Some(m), SyncStatus::Degraded) if !m.is_empty() => m.clone(),
                _ => format!(
                    "commit {} failed ({}) and was rolled back; push a fix or a revert",
                    short(&f.commit),
                    f.reason
                ),
            };
            self.set_status(key, live.as_ref(), &state, status, &msg)
                .await?;
            return Ok(());
        }

        if live.is_none() && !self.cluster.namespace_exists(&key.namespace).await? {
            if self.settings.create_namespaces {
                info!(namespace = %key.namespace, "creating namespace");
                self.cluster.create_namespace(&key.namespace).await?;
            } else {
                return Err(ClusterError::Invalid(format!(
                    "namespace {} does not exist; create it, or run nodewave with --create-namespaces",
                    key.namespace
                )));
            }
        }

        let dry = self.cluster.apply(&desired, true).await?;
        let live_value = match &live {
            Some(ds) => {
                serde_json::to_value(ds).map_err(|e| ClusterError::Invalid(e.to_string()))?
            }
            None => Value::Null,
        };
        let difference = diff::compare(&key.to_string(), &live_value, &dry);

        if difference.is_empty() {
            // Same content under a new commit (e.g. a `git revert` of a rolled-back
            // change): record it as synced without replacing any pod.
            let changed = state.applied_commit.as_deref() != Some(commit) || state.status.is_none();
            self.record_synced(key, live.as_ref(), &state, commit, &content, changed)
                .await?;
            if changed {
                info!("in sync with Git; recorded commit without changes to pods");
            }
            return Ok(());
        }

        let drift = live.is_some() && state.applied_commit.as_deref() == Some(commit);
        if drift {
            self.metrics.drift_detected(&key.namespace, &key.name);
            warn!(paths = ?difference.paths, diff = %difference.unified, "drift: the live DaemonSet differs from Git");
            let uid = live.as_ref().and_then(|d| d.metadata.uid.clone());
            let action = if self.settings.self_heal {
                "re-applying Git's version"
            } else {
                "self-heal is off, reporting only"
            };
            self.cluster
                .event(
                    key,
                    uid.as_deref(),
                    true,
                    "DriftDetected",
                    &format!(
                        "live DaemonSet differs from Git at {}: {}; {action}",
                        short(commit),
                        difference.paths.join(", ")
                    ),
                )
                .await;
            if !self.settings.self_heal {
                self.set_status(
                    key,
                    live.as_ref(),
                    &state,
                    SyncStatus::OutOfSync,
                    "drift detected; self-heal is off",
                )
                .await?;
                return Ok(());
            }
        } else {
            info!(paths = ?difference.paths, "change from Git:\n{}", difference.unified);
        }

        if live.is_some() && !difference.touches_pod_template() {
            // No new pod revision: apply directly, nothing to roll out.
            self.cluster.apply(&desired, false).await?;
            self.record_synced(key, live.as_ref(), &state, commit, &content, true)
                .await?;
            return Ok(());
        }

        self.start_rollout(
            key,
            &desired,
            commit,
            &content,
            policy.unwrap_or_default(),
            &state,
        )
        .await
    }

    /// Records `commit` as applied, good and Synced. With `annotate`, writes the
    /// bookkeeping annotations too; a finished rollout (or rollback) becomes
    /// history: left in place, recording Synced would make it look unfinished.
    async fn record_synced(
        &self,
        key: &ObjectKey,
        live: Option<&DaemonSet>,
        state: &DaemonSetState,
        commit: &str,
        content: &str,
        annotate: bool,
    ) -> Result<(), ClusterError> {
        if annotate {
            let mut ann: BTreeMap<&str, Option<String>> = BTreeMap::new();
            ann.insert(keys::APPLIED_COMMIT, Some(commit.to_string()));
            ann.insert(keys::APPLIED_AT, Some(timestamp()));
            ann.insert(keys::LAST_GOOD_COMMIT, Some(commit.to_string()));
            ann.insert(keys::DESIRED_HASH, Some(content.to_string()));
            if state.rollout.is_some() {
                ann.insert(keys::ROLLOUT_STATE, None);
            }
            self.cluster.annotate(key, &ann).await?;
        }
        let st = DaemonSetState {
            applied_commit: Some(commit.to_string()),
            last_good: Some(commit.to_string()),
            rollout: None,
            ..state.clone()
        };
        self.set_status(key, live, &st, SyncStatus::Synced, "")
            .await
    }

    async fn start_rollout(
        &mut self,
        key: &ObjectKey,
        desired: &Value,
        commit: &str,
        content: &str,
        policy: RolloutPolicySpec,
        state: &DaemonSetState,
    ) -> Result<(), ClusterError> {
        if state.status.is_some() {
            // The apply below records the new commit as applied; without this the
            // DaemonSet would briefly read "Synced" at a commit not rolled out yet.
            let mut ann: BTreeMap<&str, Option<String>> = BTreeMap::new();
            ann.insert(
                keys::SYNC_STATUS,
                Some(SyncStatus::Progressing.as_str().to_string()),
            );
            self.cluster.annotate(key, &ann).await?;
        }
        self.cluster.apply(desired, false).await?;
        let mut ann: BTreeMap<&str, Option<String>> = BTreeMap::new();
        ann.insert(keys::DESIRED_HASH, Some(content.to_string()));
        ann.insert(keys::APPLIED_AT, Some(timestamp()));
        self.cluster.annotate(key, &ann).await?;

        let target = self
            .cluster
            .update_revision(key, Duration::from_secs(30))
            .await?;
        let (ds, pods) = self.settled_pods(key).await?;
        let nodes = self.cluster.nodes().await?;
        let pool_label = self.pool_label(&policy, &nodes, &pods);
        let eligible = eligible_nodes(&nodes, &pods, pool_label.as_deref());
        let mut ann: BTreeMap<&str, Option<String>> = BTreeMap::new();
        ann.insert(keys::POOL_LABEL, pool_label.clone());
        // An approval or abort given for an earlier rollout does not carry over.
        ann.insert(keys::CONTROL_APPROVED_STAGE, None);
        ann.insert(keys::CONTROL_ABORT, None);
        self.cluster.annotate(key, &ann).await?;
        let restarts: BTreeMap<String, u32> =
            pods.iter().map(|p| (p.node.clone(), p.restarts)).collect();
        let stages = rollout::resolve_stages(&policy, &eligible, &restarts);
        let obs = self.observe(&ds, &pods, &nodes, None);
        let r = Rollout::start(commit.to_string(), target.clone(), stages, &obs);
        info!(
            stage = %r.stages.first().map_or("-", |s| s.name.as_str()),
            revision = %target,
            pool_label = pool_label.as_deref().unwrap_or("(none)"),
            stages = %r.stages.iter().map(|s| format!("{}({} nodes)", s.name, s.nodes.len())).collect::<Vec<_>>().join(", "),
            "rollout started"
        );
        self.cluster
            .event(
                key,
                ds.metadata.uid.as_deref(),
                false,
                "RolloutStarted",
                &format!(
                    "rolling out commit {} (revision {target}) in {} stage(s): {}",
                    short(commit),
                    r.stages.len(),
                    r.stages
                        .iter()
                        .map(|s| format!("{} ({} nodes)", s.name, s.nodes.len()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
            .await;
        let st = DaemonSetState {
            applied_commit: Some(commit.to_string()),
            ..state.clone()
        };
        self.persist(key, &r, &st, SyncStatus::Progressing).await?;
        self.metrics
            .set_rollout_stage(&key.namespace, &key.name, Some(0));
        Ok(())
    }

    /// Waits briefly until the DaemonSet controller has created a pod on every node
    /// it schedules to, so the rollout counts exactly the nodes this DaemonSet runs on.
    async fn settled_pods(
        &self,
        key: &ObjectKey,
    ) -> Result<(DaemonSet, Vec<PodView>), ClusterError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let started = std::time::Instant::now();
        loop {
            let ds = self
                .cluster
                .get_daemonset(key)
                .await?
                .ok_or_else(|| ClusterError::Invalid(format!("DaemonSet {key} disappeared")))?;
            let pods = self.cluster.pods_of(&ds).await?;
            let want = ds.status.as_ref().map_or(0, |s| {
                usize::try_from(s.desired_number_scheduled).unwrap_or(0)
            });
            let observed = ds
                .status
                .as_ref()
                .and_then(|s| s.observed_generation)
                .unwrap_or(0)
                >= ds.metadata.generation.unwrap_or(0);
            let nodes_with_pods: BTreeSet<&str> = pods.iter().map(|p| p.node.as_str()).collect();
            // Right after creation the controller may not have counted the nodes yet
            // (desired 0): give it a moment before believing "no nodes".
            let counted = want > 0 || started.elapsed() > Duration::from_secs(3);
            if (observed && counted && nodes_with_pods.len() >= want)
                || tokio::time::Instant::now() > deadline
            {
                return Ok((ds, pods));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn pool_label(
        &self,
        policy: &RolloutPolicySpec,
        nodes: &[NodeView],
        pods: &[PodView],
    ) -> Option<String> {
        if let Some(l) = &policy.pool_label {
            return Some(l.clone());
        }
        if let Some(l) = &self.settings.pool_label {
            return Some(l.clone());
        }
        let running: BTreeSet<&str> = pods.iter().map(|p| p.node.as_str()).collect();
        WELL_KNOWN_POOL_LABELS
            .iter()
            .find(|l| {
                nodes
                    .iter()
                    .filter(|n| running.contains(n.name.as_str()))
                    .any(|n| n.labels.contains_key(**l))
            })
            .map(|l| (*l).to_string())
    }

    #[allow(clippy::unused_self)]
    fn observe(
        &self,
        ds: &DaemonSet,
        pods: &[PodView],
        nodes: &[NodeView],
        prometheus: Option<(rollout::PromOutcome, usize)>,
    ) -> Observation {
        let ann = ds.annotations();
        let control = Control {
            paused: ann.get(keys::CONTROL_PAUSED).is_some_and(|v| v == "true"),
            abort: ann.get(keys::CONTROL_ABORT).is_some_and(|v| v == "true"),
            approved_stage: ann
                .get(keys::CONTROL_APPROVED_STAGE)
                .and_then(|v| v.parse().ok()),
        };
        Observation {
            now_ms: now_ms(),
            nodes: nodes.iter().map(|n| n.name.clone()).collect(),
            pods: pods
                .iter()
                .map(|p| PodObservation {
                    node: p.node.clone(),
                    name: p.name.clone(),
                    uid: p.uid.clone(),
                    revision: p.revision.clone(),
                    ready: p.ready,
                    restarts: p.restarts,
                    reason: p.reason.clone(),
                    terminating: p.terminating,
                })
                .collect(),
            control,
            prometheus_stage: prometheus.as_ref().map(|(_, stage)| *stage),
            prometheus: prometheus.map_or(rollout::PromOutcome::NotConfigured, |(p, _)| p),
        }
    }

    /// Steps every rollout in progress once.
    async fn rollout_pass(&mut self) -> Result<(), ClusterError> {
        let list = self.cluster.managed_daemonsets().await?;
        let owned: Vec<DaemonSet> = list.into_iter().filter(|d| self.owns(d)).collect();
        for ds in owned {
            let state = DaemonSetState::of(&ds);
            let Some(r) = state.rollout.clone() else {
                continue;
            };
            if !rollout_open(&state) {
                continue;
            }
            let key = key_of(&ds);
            let span = info_span!(
                "rollout",
                namespace = %key.namespace,
                daemonset = %key.name,
                commit = %short(&r.commit),
                stage = %r.stages.get(r.stage).map_or("-", |s| s.name.as_str()),
            );
            if let Err(e) = self
                .step_rollout(&key, &ds, &state, &r)
                .instrument(span.clone())
                .await
            {
                self.metrics.reconcile_error(e.metric_label());
                self.pass_errors += 1;
                span.in_scope(|| error!(error = %e, "rollout step failed; will retry"));
            }
        }
        Ok(())
    }

    fn policy_for(&self, key: &ObjectKey) -> RolloutPolicySpec {
        self.desired
            .as_ref()
            .and_then(|(_, d)| d.policies.get(key))
            .map(|p| p.spec.clone())
            .unwrap_or_default()
    }

    async fn step_rollout(
        &mut self,
        key: &ObjectKey,
        ds: &DaemonSet,
        state: &DaemonSetState,
        r: &Rollout,
    ) -> Result<(), ClusterError> {
        let policy = self.policy_for(key);
        let rules = HealthRules::from(&policy.health);
        let pods = self.cluster.pods_of(ds).await?;
        let nodes = self.cluster.nodes().await?;
        let prom = match (&r.kind, &policy.health.prometheus, r.stages.get(r.stage)) {
            (RolloutKind::Forward, Some(spec), Some(stage))
                if matches!(
                    r.phase,
                    Phase::Pending | Phase::Updating | Phase::Baking { .. }
                ) =>
            {
                Some((
                    self.prom
                        .evaluate(key, r, spec, &stage.nodes, now_ms())
                        .await,
                    r.stage,
                ))
            }
            _ => None,
        };
        let obs = self.observe(ds, &pods, &nodes, prom);
        let decision = rollout::step(r, &obs, &rules);
        let status = status_of(&decision.rollout);
        if decision.rollout != *r {
            self.persist(key, &decision.rollout, state, status).await?;
        }
        self.record_progress(key, &decision.rollout, &pods, &nodes, &policy);
        let uid = ds.metadata.uid.clone();
        for action in decision.actions {
            match action {
                Action::DeletePod {
                    node,
                    name,
                    uid: pod_uid,
                } => {
                    info!(node = %node, pod = %name, "replacing pod");
                    self.cluster
                        .delete_pod(&key.namespace, &name, &pod_uid)
                        .await?;
                }
                Action::Event(ev) => {
                    // One step can pass several stages: keep the span's `stage`
                    // on the stage this and the following lines are about.
                    if let Some(stage) = ev.stage_name() {
                        tracing::Span::current().record("stage", stage);
                    }
                    let warning = ev.is_warning();
                    info!(reason = ev.reason(), "{}", ev.message());
                    self.cluster
                        .event(key, uid.as_deref(), warning, ev.reason(), &ev.message())
                        .await;
                }
                Action::RollBack(failure) => {
                    self.metrics.gate_failed(
                        &key.namespace,
                        &key.name,
                        failure.gate.metric_label(),
                    );
                    warn!(gate = failure.gate.metric_label(), nodes = ?failure.nodes, pods = ?failure.pods, "gate failed: {}", failure.message);
                    self.roll_back(
                        key,
                        ds,
                        state,
                        &decision.rollout,
                        &failure,
                        &policy,
                        &pods,
                        &nodes,
                    )
                    .await?;
                }
                Action::Complete => self.complete(key, ds, state, &decision.rollout).await?,
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn roll_back(
        &mut self,
        key: &ObjectKey,
        ds: &DaemonSet,
        state: &DaemonSetState,
        failed: &Rollout,
        failure: &rollout::GateFailure,
        policy: &RolloutPolicySpec,
        pods: &[PodView],
        nodes: &[NodeView],
    ) -> Result<(), ClusterError> {
        let aborted = matches!(failure.gate, rollout::Gate::Aborted);
        let mut st = state.clone();
        st.record_failure(FailedCommit {
            commit: failed.commit.clone(),
            hash: state.desired_hash.clone().unwrap_or_default(),
            reason: failure.message.clone(),
            at: timestamp(),
        });
        let mut ann: BTreeMap<&str, Option<String>> = BTreeMap::new();
        ann.insert(keys::FAILED_COMMITS, Some(st.failed_json()));
        if aborted {
            ann.insert(keys::CONTROL_ABORT, None);
        }
        self.cluster.annotate(key, &ann).await?;
        let elapsed = secs_since(failed.started_at_ms);

        let last_good = st.last_good.clone().filter(|c| c != &failed.commit);
        let manifest = match (&last_good, policy.rollback.automatic || aborted) {
            (Some(good), true) => self.manifest_at(good, key).await,
            _ => None,
        };
        let Some((good, good_manifest, good_file)) = manifest else {
            let why = if !(policy.rollback.automatic || aborted) {
                "automatic rollback is disabled by the policy".to_string()
            } else if last_good.is_none() {
                "there is no last good commit to roll back to (first rollout of this DaemonSet)"
                    .to_string()
            } else {
                "the last good commit's manifest could not be read".to_string()
            };
            let msg = format!(
                "rollout of {} failed: {}; {why}. Rollout paused: fix forward with a new commit or revert in Git",
                short(&failed.commit),
                failure.message
            );
            error!("{msg}");
            self.cluster
                .event(
                    key,
                    ds.metadata.uid.as_deref(),
                    true,
                    "RolloutDegraded",
                    &msg,
                )
                .await;
            self.metrics.rollout_finished(
                &key.namespace,
                &key.name,
                RolloutOutcome::Failed,
                elapsed,
            );
            self.persist(key, failed, &st, SyncStatus::Degraded).await?;
            self.set_message(key, &msg).await?;
            return Ok(());
        };

        let desired = self.desired_object(&good_manifest, &good_file, &good);
        self.cluster.apply(&desired, false).await?;
        let target = self
            .cluster
            .update_revision(key, Duration::from_secs(30))
            .await?;
        let obs = self.observe(ds, pods, nodes, None);
        let reason = failure.message.clone();
        let rb = Rollout::rollback(
            failed,
            good.clone(),
            failed.commit.clone(),
            reason.clone(),
            target,
            &obs,
            policy.rollback.max_unavailable,
        );
        self.prom.forget(key);
        st.applied_commit = Some(good.clone());
        st.desired_hash = Some(state::content_hash(&desired));
        let mut ann: BTreeMap<&str, Option<String>> = BTreeMap::new();
        ann.insert(keys::DESIRED_HASH, st.desired_hash.clone());
        self.cluster.annotate(key, &ann).await?;
        self.persist(key, &rb, &st, SyncStatus::Progressing).await?;
        let outcome = if aborted {
            RolloutOutcome::Aborted
        } else {
            RolloutOutcome::RolledBack
        };
        self.metrics
            .rollout_finished(&key.namespace, &key.name, outcome, elapsed);
        let msg = format!(
            "rolling back from {} to last good commit {}: {reason}",
            short(&failed.commit),
            short(&good)
        );
        warn!("{msg}");
        Ok(())
    }

    /// The DaemonSet as it was at `commit`, read from the local clone (works while
    /// the remote is unreachable).
    async fn manifest_at(&self, commit: &str, key: &ObjectKey) -> Option<(String, Value, String)> {
        let files = match self.source.files_at(commit.to_string()).await {
            Ok(f) => f,
            Err(e) => {
                error!(commit = %short(commit), error = %e, "cannot read the last good commit");
                return None;
            }
        };
        match manifest::load(&files, &self.settings.load) {
            Ok(mut d) => d
                .daemonsets
                .remove(key)
                .map(|dds| (commit.to_string(), dds.manifest, dds.location.file)),
            Err(e) => {
                error!(commit = %short(commit), error = %e, "the last good commit no longer validates");
                None
            }
        }
    }

    async fn complete(
        &mut self,
        key: &ObjectKey,
        ds: &DaemonSet,
        state: &DaemonSetState,
        r: &Rollout,
    ) -> Result<(), ClusterError> {
        let mut st = state.clone();
        let secs = secs_since(r.started_at_ms);
        self.prom.forget(key);
        match &r.kind {
            RolloutKind::Forward => {
                st.last_good = Some(r.commit.clone());
                let mut ann: BTreeMap<&str, Option<String>> = BTreeMap::new();
                ann.insert(keys::LAST_GOOD_COMMIT, Some(r.commit.clone()));
                self.cluster.annotate(key, &ann).await?;
                self.metrics.rollout_finished(
                    &key.namespace,
                    &key.name,
                    RolloutOutcome::Succeeded,
                    secs,
                );
                info!(seconds = secs.as_secs(), "rollout succeeded");
                self.cluster
                    .event(
                        key,
                        ds.metadata.uid.as_deref(),
                        false,
                        "RolloutSucceeded",
                        &format!(
                            "commit {} rolled out to every stage in {}s",
                            short(&r.commit),
                            secs.as_secs()
                        ),
                    )
                    .await;
                self.set_status(key, Some(ds), &st, SyncStatus::Synced, "")
                    .await?;
            }
            RolloutKind::Rollback {
                failed_commit,
                reason,
            } => {
                self.metrics.observe_rollback_duration(secs);
                let msg = format!(
                    "rolled back to {} after commit {} failed: {reason}",
                    st.applied_commit.as_deref().map_or("-", short),
                    short(failed_commit)
                );
                info!(seconds = secs.as_secs(), "{msg}");
                self.set_status(key, Some(ds), &st, SyncStatus::RolledBack, &msg)
                    .await?;
            }
        }
        self.metrics
            .set_rollout_stage(&key.namespace, &key.name, None);
        Ok(())
    }

    async fn persist(
        &self,
        key: &ObjectKey,
        r: &Rollout,
        state: &DaemonSetState,
        status: SyncStatus,
    ) -> Result<(), ClusterError> {
        let json = serde_json::to_string(r).map_err(|e| ClusterError::Invalid(e.to_string()))?;
        let mut ann: BTreeMap<&str, Option<String>> = BTreeMap::new();
        ann.insert(keys::ROLLOUT_STATE, Some(json));
        ann.insert(keys::SYNC_STATUS, Some(status.as_str().to_string()));
        if let Some(c) = &state.applied_commit {
            ann.insert(keys::APPLIED_COMMIT, Some(c.clone()));
        }
        self.cluster.annotate(key, &ann).await?;
        self.record_status(key, state, status).await;
        self.metrics.set_rollout_stage(
            &key.namespace,
            &key.name,
            (!r.phase.is_terminal() && r.stage < r.stages.len()).then_some(r.stage),
        );
        Ok(())
    }

    async fn set_status(
        &self,
        key: &ObjectKey,
        ds: Option<&DaemonSet>,
        state: &DaemonSetState,
        status: SyncStatus,
        message: &str,
    ) -> Result<(), ClusterError> {
        if state.status != Some(status) || state.message.as_deref().unwrap_or("") != message {
            let mut ann: BTreeMap<&str, Option<String>> = BTreeMap::new();
            ann.insert(keys::SYNC_STATUS, Some(status.as_str().to_string()));
            ann.insert(
                keys::SYNC_MESSAGE,
                (!message.is_empty()).then(|| message.to_string()),
            );
            if ds.is_some() || self.cluster.get_daemonset(key).await?.is_some() {
                self.cluster.annotate(key, &ann).await?;
            }
        }
        self.record_status(key, state, status).await;
        Ok(())
    }

    async fn set_message(&self, key: &ObjectKey, message: &str) -> Result<(), ClusterError> {
        let mut ann: BTreeMap<&str, Option<String>> = BTreeMap::new();
        ann.insert(keys::SYNC_MESSAGE, Some(message.to_string()));
        self.cluster.annotate(key, &ann).await
    }

    async fn record_status(&self, key: &ObjectKey, state: &DaemonSetState, status: SyncStatus) {
        self.metrics
            .set_sync_status(&key.namespace, &key.name, status);
        self.metrics.set_daemonset_commits(
            &key.namespace,
            &key.name,
            state.applied_commit.as_deref().unwrap_or(""),
            state.last_good.as_deref().unwrap_or(""),
        );
        self.status
            .write()
            .await
            .daemonsets
            .insert(key.to_string(), status.as_str().to_string());
    }

    fn record_progress(
        &self,
        key: &ObjectKey,
        r: &Rollout,
        pods: &[PodView],
        nodes: &[NodeView],
        policy: &RolloutPolicySpec,
    ) {
        let label = self.pool_label(policy, nodes, pods);
        for (pool, p) in progress_by_pool(r, pods, nodes, label.as_deref()) {
            self.metrics.set_pool_pods(
                &key.namespace,
                &key.name,
                &pool,
                PoolPodCounts {
                    updated: count(p.updated),
                    ready: count(p.ready),
                    total: count(p.total),
                },
            );
        }
    }
}

/// The object nodewave applies for a DaemonSet from Git: the manifest as written,
/// plus the managed-by label, where it came from, and `updateStrategy: OnDelete`.
pub fn decorate(manifest: &Value, file: &str, commit: &str, repo: &str, path: &str) -> Value {
    let mut obj = manifest.clone();
    let meta = &mut obj["metadata"];
    if !meta["labels"].is_object() {
        meta["labels"] = json!({});
    }
    meta["labels"][keys::MANAGED_BY_LABEL] = json!(keys::MANAGED_BY_VALUE);
    if !meta["annotations"].is_object() {
        meta["annotations"] = json!({});
    }
    let ann = &mut meta["annotations"];
    ann[keys::SOURCE_REPO] = json!(repo);
    ann[keys::SOURCE_PATH] = json!(path);
    ann[keys::SOURCE_FILE] = json!(file);
    ann[keys::APPLIED_COMMIT] = json!(commit);
    // nodewave drives every update itself: the controller only replaces pods we delete.
    obj["spec"]["updateStrategy"] = json!({"type": "OnDelete"});
    obj
}

/// Per-pool progress of a rollout: pods on the target revision, Ready ones among
/// them, and all pods of the DaemonSet in the pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolProgress {
    pub updated: usize,
    pub ready: usize,
    pub total: usize,
}

pub fn progress_by_pool(
    r: &Rollout,
    pods: &[PodView],
    nodes: &[NodeView],
    pool_label: Option<&str>,
) -> BTreeMap<String, PoolProgress> {
    let pool_of: BTreeMap<&str, String> = nodes
        .iter()
        .map(|n| {
            let pool = pool_label
                .and_then(|l| n.labels.get(l).cloned())
                .unwrap_or_else(|| "(none)".to_string());
            (n.name.as_str(), pool)
        })
        .collect();
    let mut out: BTreeMap<String, PoolProgress> = BTreeMap::new();
    for p in pods.iter().filter(|p| !p.terminating) {
        let pool = pool_of
            .get(p.node.as_str())
            .cloned()
            .unwrap_or_else(|| "(none)".into());
        let e = out.entry(pool).or_default();
        e.total += 1;
        if p.revision == r.target_revision {
            e.updated += 1;
            if p.ready {
                e.ready += 1;
            }
        }
    }
    out
}

fn eligible_nodes(nodes: &[NodeView], pods: &[PodView], pool_label: Option<&str>) -> Vec<NodeInfo> {
    let running: BTreeSet<&str> = pods.iter().map(|p| p.node.as_str()).collect();
    nodes
        .iter()
        .filter(|n| running.contains(n.name.as_str()))
        .map(|n| NodeInfo {
            name: n.name.clone(),
            pool: pool_label.and_then(|l| n.labels.get(l).cloned()),
        })
        .collect()
}

/// Status while a rollout runs. Terminal phases stay Progressing until the
/// action that ends them (Complete, RollBack) has been carried out and recorded
/// its own status: a crash in between must not look finished.
fn status_of(r: &Rollout) -> SyncStatus {
    match r.phase {
        Phase::Paused { .. } => SyncStatus::Paused,
        _ => SyncStatus::Progressing,
    }
}

/// Whether the rollout still needs driving: not terminal, or terminal with its
/// final action not yet carried out (nodewave died in between).
fn rollout_open(state: &DaemonSetState) -> bool {
    let Some(r) = &state.rollout else {
        return false;
    };
    match (&r.phase, &r.kind) {
        (Phase::Succeeded, RolloutKind::Forward) => {
            !(state.status == Some(SyncStatus::Synced)
                && state.last_good.as_deref() == Some(r.commit.as_str()))
        }
        (Phase::Succeeded, RolloutKind::Rollback { .. }) => {
            state.status != Some(SyncStatus::RolledBack)
        }
        (Phase::Failed { .. }, _) => state.status != Some(SyncStatus::Degraded),
        _ => true,
    }
}

pub fn key_of(ds: &DaemonSet) -> ObjectKey {
    ObjectKey::new(ds.namespace().unwrap_or_default(), ds.name_any())
}

fn timestamp() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map_or_else(|_| jiff::Timestamp::now().to_string(), |t| t.to_string())
}

fn secs_since(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(now_ms() - ms).unwrap_or(0))
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
