//! The desired-state pipeline, a task of its own: fetch (in a child process with a
//! deadline), load and validate the whole commit, and publish the result on a
//! watch channel the controller reads (latest wins). A rejected commit changes
//! nothing: the previous desired state stays published, and the rejection shows
//! in `/status`, the logs, a `CommitRejected` Event and
//! `nodewave_commit_rejected_total{reason}`.
//!
//! Each published desired state carries the prune guard's verdict
//! ([`prune_guard`]): a commit that would delete every managed DaemonSet, or
//! more than `--max-prune-percent` of them, has its deletions refused (a
//! `PruneRefused` Event, `nodewave_prune_refused_total`, `/status`) unless it
//! carries the marker file.
//!
//! Nothing here waits on the cluster, and nothing in the controller waits on
//! this: a slow or hanging remote never delays a rollout step or a rollback.

mod load;
pub mod poisoned;
pub mod prune_guard;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::cluster::Cluster;
use crate::metrics::{FetchResult, Metrics};
use crate::record::{self, short};
use crate::service::{SharedStatus, Triggers};
use crate::source::{GitSourceConfig, fetch_process};
use crate::store::Stores;
use crate::verify::{self, TrustStore};

pub use load::{
    DesiredObject, LoadError, Loaded, Loader, PANIC_REASON, SourceIdentity, content_hash, decorate,
    mark, version_configs,
};
pub use prune_guard::{ALLOW_PRUNE_MARKER, PruneLimit, PruneVerdict};

/// How many commits back the fallback looks for one nodewave applied itself.
const FALLBACK_DEPTH: usize = 100;

/// The desired state the controller works toward.
#[derive(Debug)]
pub struct Desired {
    pub loaded: Arc<Loaded>,
    /// Confirmed by a fetch this process made. Until then the commit comes from
    /// the local clone only, which may be older than what the cluster runs.
    pub fresh: bool,
    /// The prune guard's verdict, computed when this state was published.
    pub prune: PruneVerdict,
}

impl Desired {
    pub fn commit(&self) -> &str {
        &self.loaded.commit
    }
}

pub type DesiredTx = watch::Sender<Option<Arc<Desired>>>;
pub type DesiredRx = watch::Receiver<Option<Arc<Desired>>>;

pub struct Pipeline {
    pub loader: Arc<Loader>,
    pub fetch: GitSourceConfig,
    pub fetch_timeout: Duration,
    pub poll_interval: Duration,
    pub status: SharedStatus,
    pub metrics: Metrics,
    pub triggers: Arc<Triggers>,
    pub cluster: Cluster,
    pub stores: Arc<Stores>,
    /// Namespaces to report a rejected commit in when no DaemonSet is managed yet.
    pub report_namespaces: Vec<String>,
    /// `--verify-commits head`: the keys a commit must be signed by before it is
    /// read at all (never checked again for a commit nodewave deployed before).
    pub trust: Option<Arc<TrustStore>>,
    /// The prune guard's limit; `None` when pruning is off (`--no-prune`).
    pub prune: Option<PruneLimit>,
}

struct Progress {
    published: Option<Arc<Desired>>,
    rejected_head: Option<String>,
    /// The commit last rejected for its signature and the trust-store
    /// generation then: it is tried again once the trusted keys change.
    signature_rejected: Option<(String, u64)>,
    fetch_failures: u32,
    /// The commit whose refused prune was last reported (Event, counter): once
    /// per commit, not again when the same state is published fresh.
    prune_reported: Option<String>,
}

impl Progress {
    fn signature_retry_due(&self, trust: Option<&TrustStore>, head: &str) -> bool {
        match (trust, &self.signature_rejected) {
            (Some(t), Some((commit, generation))) => {
                commit == head && t.generation() != *generation
            }
            _ => false,
        }
    }
}

impl Pipeline {
    /// Runs until `shutdown` turns true.
    pub async fn run(self, tx: DesiredTx, mut shutdown: watch::Receiver<bool>) {
        let mut p = Progress {
            published: None,
            rejected_head: None,
            signature_rejected: None,
            fetch_failures: 0,
            prune_reported: None,
        };
        // A restarted nodewave knows what it last fetched: use it before touching
        // the network, so rollouts and rollbacks continue while the remote is away.
        if let Some(head) = self.loader.source().head() {
            info!(commit = %short(&head), "loaded the last fetched commit from the local clone");
            self.consider(&mut p, &tx, &head, false).await;
        }
        loop {
            let delay = self.fetch_once(&mut p, &tx).await;
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.triggers.fetch.notified() => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }

    /// One fetch; returns the delay until the next one.
    async fn fetch_once(&self, p: &mut Progress, tx: &DesiredTx) -> Duration {
        let started = Instant::now();
        let result = fetch_process::fetch(&self.fetch, self.fetch_timeout).await;
        self.metrics.observe_git_fetch_duration(started.elapsed());
        self.metrics.git_fetch_result(if result.is_ok() {
            FetchResult::Success
        } else {
            FetchResult::Error
        });
        match result {
            Ok(outcome) => {
                p.fetch_failures = 0;
                self.loader.source().note_fetch(started, &outcome.head);
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
                let known = p.published.as_ref().map(|d| d.commit().to_string());
                if known.as_deref() == Some(outcome.head.as_str()) {
                    // The local head is confirmed current: the controller may act on it.
                    let stale = p
                        .published
                        .as_ref()
                        .filter(|d| !d.fresh)
                        .map(|d| d.loaded.clone());
                    if let Some(loaded) = stale {
                        self.publish(p, tx, loaded, true).await;
                    }
                } else if p.rejected_head.as_deref() != Some(outcome.head.as_str())
                    || p.signature_retry_due(self.trust.as_deref(), &outcome.head)
                {
                    info!(commit = %short(&outcome.head), "new commit");
                    self.consider(p, tx, &outcome.head, true).await;
                }
                self.poll_interval
            }
            Err(e) => {
                p.fetch_failures += 1;
                let delay = crate::source::backoff(p.fetch_failures).min(self.poll_interval);
                error!(error = %e, retry_in = ?delay, "git fetch failed; keeping what is deployed");
                self.metrics.reconcile_error("git_fetch");
                self.status.write().await.last_fetch_error = Some(e.to_string());
                delay
            }
        }
    }

    /// Loads and validates `commit`; publishes it, or rejects it whole.
    async fn consider(&self, p: &mut Progress, tx: &DesiredTx, commit: &str, fresh: bool) {
        // With --verify-commits head, a commit not signed by a trusted key is
        // rejected before anything of it is read (reason "signature").
        let mut signer = None;
        if let Some(trust) = &self.trust {
            match verify::check_commit(self.loader.source(), trust, commit).await {
                Ok(s) => {
                    info!(commit = %short(commit), signer = %s, "commit signature verified");
                    p.signature_rejected = None;
                    signer = Some(s);
                }
                Err(u) => {
                    error!(commit = %short(commit), reason = u.metric_label(), error = %u, "commit signature not verified");
                    p.signature_rejected = Some((commit.to_string(), trust.generation()));
                    self.reject(p, commit, &LoadError::Unverified(u)).await;
                    if p.published.is_none() {
                        self.fall_back_to_deployed(p, tx, commit).await;
                    }
                    return;
                }
            }
        }
        match self.loader.load(commit).await {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    warn!(commit = %short(commit), finding = %w, "best-practice warning");
                }
                info!(
                    commit = %short(commit),
                    daemonsets = loaded.daemonsets.len(),
                    "commit is valid"
                );
                p.rejected_head = None;
                {
                    let mut st = self.status.write().await;
                    st.rejected_commit = None;
                    st.rejected_errors.clear();
                    st.applied_commit = Some(commit.to_string());
                    st.applied_signer = signer;
                    st.warnings = loaded.warnings.iter().map(ToString::to_string).collect();
                }
                self.metrics
                    .set_commit_warnings(loaded.warnings.iter().map(|w| w.check));
                self.publish(p, tx, loaded, fresh).await;
            }
            Err(e) => {
                self.reject(p, commit, &e).await;
                if p.published.is_none() {
                    self.fall_back_to_deployed(p, tx, commit).await;
                }
            }
        }
    }

    /// Publishes a desired state with the prune guard's verdict for it.
    async fn publish(&self, p: &mut Progress, tx: &DesiredTx, loaded: Arc<Loaded>, fresh: bool) {
        let prune = self.prune_verdict(&loaded).await;
        self.report_prune(p, &loaded.commit, &prune).await;
        let d = Arc::new(Desired {
            loaded,
            fresh,
            prune,
        });
        p.published = Some(d.clone());
        tx.send_replace(Some(d));
    }

    /// The guard against what is managed now. The watches listed everything
    /// before the pipeline started, so "managed" is never an empty store.
    async fn prune_verdict(&self, loaded: &Loaded) -> PruneVerdict {
        let Some(limit) = self.prune else {
            return PruneVerdict::Nothing;
        };
        let managed: Vec<_> = self.owned().into_iter().map(|(k, _)| k).collect();
        let declared = |k: &crate::manifest::ObjectKey| loaded.daemonsets.contains_key(k);
        if managed.iter().all(declared) {
            return PruneVerdict::Nothing;
        }
        // The marker is a hidden file, which the manifest reader skips: ask the
        // source for it. If it cannot be read, it counts as absent (refuse).
        let marker = match self
            .loader
            .source()
            .has_tracked_file(loaded.commit.clone(), ALLOW_PRUNE_MARKER)
            .await
        {
            Ok(m) => m,
            Err(e) => {
                warn!(commit = %short(&loaded.commit), error = %e, "cannot look for the prune marker file; treating it as absent");
                false
            }
        };
        prune_guard::evaluate(&managed, declared, limit, marker)
    }

    async fn report_prune(&self, p: &mut Progress, commit: &str, verdict: &PruneVerdict) {
        let Some(refusal) = verdict.refusal() else {
            self.metrics.set_prune_held_back(0);
            self.status.write().await.prune_refused = None;
            if let PruneVerdict::Allowed {
                prune,
                managed,
                marker: true,
            } = verdict
                && p.prune_reported.as_deref() != Some(commit)
            {
                warn!(commit = %short(commit), prune, managed, "the commit carries {ALLOW_PRUNE_MARKER}: the prune guard lets it delete {prune} of {managed} managed DaemonSet(s)");
            }
            p.prune_reported = None;
            return;
        };
        let message = refusal.message(short(commit), &self.loader.identity().path);
        self.metrics.set_prune_held_back(refusal.would_prune.len());
        self.status.write().await.prune_refused = Some(message.clone());
        if p.prune_reported.as_deref() == Some(commit) {
            return;
        }
        p.prune_reported = Some(commit.to_string());
        error!(
            commit = %short(commit),
            daemonsets = refusal.would_prune.len(),
            managed = refusal.managed,
            "{message}"
        );
        self.metrics.prune_refused();
        let uids: BTreeMap<_, _> = self.owned().into_iter().collect();
        for key in &refusal.would_prune {
            let uid = uids.get(key).and_then(Option::as_deref);
            self.cluster
                .event(key, uid, true, "PruneRefused", &message)
                .await;
        }
    }

    /// The DaemonSets this source manages now (from the watch-fed store).
    fn owned(&self) -> Vec<(crate::manifest::ObjectKey, Option<String>)> {
        let id = self.loader.identity();
        self.stores
            .daemonsets()
            .iter()
            .filter(|(_, ds)| id.owns_meta(&ds.metadata))
            .map(|(k, ds)| (k.clone(), ds.metadata.uid.clone()))
            .collect()
    }

    async fn reject(&self, p: &mut Progress, commit: &str, e: &LoadError) {
        if let LoadError::Panicked {
            message,
            before: false,
            ..
        } = e
        {
            // A bug was hit: fail /healthz so the pod restarts (and a standby
            // takes over); the restarted process will not parse this commit.
            self.status.write().await.panicked = Some(message.clone());
        }
        let errors = e.messages();
        for m in &errors {
            error!(commit = %short(commit), finding = %m, "commit rejected");
        }
        self.metrics.commit_rejected(e.reason());
        p.rejected_head = Some(commit.to_string());
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
            st.rejected_errors.clone_from(&errors);
        }
        // Tell the owners of every managed DaemonSet where they look: its Events.
        let owned = self.owned();
        for (key, uid) in &owned {
            self.cluster
                .event(key, uid.as_deref(), true, "CommitRejected", &summary)
                .await;
        }
        if owned.is_empty() {
            // "DaemonSet ns/name" -> ns: where the commit's authors will look.
            let mut namespaces: BTreeSet<String> = e
                .findings()
                .into_iter()
                .filter_map(|f| f.object.as_deref()?.split_once(' ')?.1.split_once('/'))
                .map(|(ns, _)| ns.to_string())
                .collect();
            if namespaces.is_empty() {
                namespaces.extend(self.report_namespaces.iter().cloned());
            }
            if namespaces.is_empty() {
                namespaces.insert(self.loader.options().default_namespace.clone());
            }
            for ns in &namespaces {
                self.cluster
                    .namespace_event(ns, true, "CommitRejected", &summary)
                    .await;
            }
        }
    }

    /// Started (or restarted) with an invalid newest commit: rather than knowing
    /// nothing, take the newest valid ancestor that nodewave itself applied (its
    /// records say which), so drift is healed and rollouts continue against what
    /// is deployed. Never an ancestor nobody applied.
    async fn fall_back_to_deployed(&self, p: &mut Progress, tx: &DesiredTx, rejected: &str) {
        let id = self.loader.identity();
        let applied: BTreeSet<String> = self
            .stores
            .records()
            .iter()
            .filter(|r| id.owns_meta(&r.metadata))
            .filter_map(|r| record::codec::decode(&r.status.as_ref()?.state).ok())
            .filter_map(|s| s.applied.map(|t| t.commit))
            .collect();
        if applied.is_empty() {
            return;
        }
        let mut commit = rejected.to_string();
        for _ in 0..FALLBACK_DEPTH {
            let Ok(info) = self.loader.source().commit_info(commit.clone()).await else {
                return;
            };
            let Some(parent) = info.parents.first().cloned() else {
                return;
            };
            commit = parent;
            if !applied.contains(&commit) {
                continue;
            }
            if let Ok(loaded) = self.loader.load(&commit).await {
                warn!(
                    rejected = %short(rejected),
                    using = %short(&commit),
                    "the newest commit is invalid; keeping the cluster on the last valid commit nodewave applied"
                );
                {
                    // Deployed by nodewave before: not verified again, signer unknown.
                    let mut st = self.status.write().await;
                    st.applied_commit = Some(commit.clone());
                    st.applied_signer = None;
                }
                self.publish(p, tx, loaded, false).await;
                return;
            }
        }
    }
}
