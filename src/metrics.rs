//! Prometheus metrics for nodewave, exposed in the OpenMetrics text format.
//!
//! Metric names and label values are a contract with the alert rules in
//! `deploy/prometheus/`, the Grafana dashboard in `dashboards/` and
//! `docs/metrics.md`; `tests/observability_artifacts.rs` checks that every
//! metric those artifacts query is produced here.
//!
//! All label values are bounded: label sets come from the enums in this module,
//! from namespace/DaemonSet/pool names of the managed objects, from validation
//! check ids, or from the *current* commits only. Series for a previous commit
//! are removed when the commit changes and [`Metrics::forget_daemonset`] drops
//! every per-DaemonSet series when a DaemonSet stops being managed, so the
//! cardinality is proportional to the number of managed DaemonSets.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Content type of [`Metrics::encode`]'s output, for the `/metrics` handler.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub use crate::plan::Outcome as RolloutOutcome;
pub use crate::record::SyncStatus;
use crate::rollout::Gate;

/// Result of a Git fetch (`nodewave_git_fetch_total{result}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FetchResult {
    /// The fetch completed.
    Success,
    /// The fetch failed (network, auth, corrupt repository...).
    Error,
}

impl FetchResult {
    /// Both results; pre-created at 0.
    pub const ALL: [FetchResult; 2] = [FetchResult::Success, FetchResult::Error];

    /// The `result` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FetchResult::Success => "success",
            FetchResult::Error => "error",
        }
    }
}

/// Webhook sender (`nodewave_webhook_requests_total{provider}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WebhookProvider {
    /// GitHub (`X-Hub-Signature-256`).
    Github,
    /// GitLab (`X-Gitlab-Token`).
    Gitlab,
    /// Any other sender using the generic endpoint.
    Generic,
}

impl WebhookProvider {
    /// Every provider; pre-created at 0.
    pub const ALL: [WebhookProvider; 3] = [
        WebhookProvider::Github,
        WebhookProvider::Gitlab,
        WebhookProvider::Generic,
    ];

    /// The `provider` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookProvider::Github => "github",
            WebhookProvider::Gitlab => "gitlab",
            WebhookProvider::Generic => "generic",
        }
    }
}

/// What nodewave did with a webhook request (`nodewave_webhook_requests_total{result}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WebhookResult {
    /// Triggered a fetch.
    Accepted,
    /// Valid, but for another branch/event.
    Ignored,
    /// Signature or token did not verify.
    BadSignature,
    /// Malformed request.
    BadRequest,
    /// Authenticated, but a delivery already handled (or a stale timestamp):
    /// nothing fetched.
    Replayed,
}

impl WebhookResult {
    /// Every result; pre-created at 0.
    pub const ALL: [WebhookResult; 5] = [
        WebhookResult::Accepted,
        WebhookResult::Ignored,
        WebhookResult::BadSignature,
        WebhookResult::BadRequest,
        WebhookResult::Replayed,
    ];

    /// The `result` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookResult::Accepted => "accepted",
            WebhookResult::Ignored => "ignored",
            WebhookResult::BadSignature => "bad_signature",
            WebhookResult::BadRequest => "bad_request",
            WebhookResult::Replayed => "replayed",
        }
    }
}

/// Pod counts of one node pool during a rollout (`nodewave_rollout_pool_pods{state}`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolPodCounts {
    /// Pods running the new template.
    pub updated: i64,
    /// Pods that are ready.
    pub ready: i64,
    /// Pods the pool should run.
    pub total: i64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommitLabels {
    commit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    provider: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DsLabels {
    namespace: String,
    daemonset: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DsStatusLabels {
    namespace: String,
    daemonset: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DsInfoLabels {
    namespace: String,
    daemonset: String,
    applied_commit: String,
    last_good_commit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    namespace: String,
    daemonset: String,
    pool: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DsOutcomeLabels {
    namespace: String,
    daemonset: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DsGateLabels {
    namespace: String,
    daemonset: String,
    gate: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KubeLabels {
    verb: String,
    result: &'static str,
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// Label values that were exported for one DaemonSet and must be removed again
/// when they change or the DaemonSet is forgotten: `Family` cannot enumerate
/// its children, so the metrics module remembers them.
#[derive(Debug, Default)]
struct DaemonSetSeries {
    /// `(applied_commit, last_good_commit)` of the exported info series.
    commits: Option<(String, String)>,
    pools: BTreeSet<String>,
    gates: BTreeSet<String>,
    status_exported: bool,
}

#[derive(Debug, Default)]
struct SeriesState {
    git_head: Option<String>,
    daemonsets: HashMap<(String, String), DaemonSetSeries>,
}

struct Inner {
    registry: Registry,
    /// Guards the bookkeeping *and* the remove-then-create sequences on the
    /// families below, so a concurrent update never leaves two "current" series.
    state: Mutex<SeriesState>,

    git_fetch: Family<ResultLabels, Counter>,
    git_fetch_duration: Histogram,
    git_last_success: Gauge<f64, AtomicU64>,
    git_head_info: Family<CommitLabels, Gauge>,
    git_force_push: Counter,
    webhook_requests: Family<WebhookLabels, Counter>,
    commit_rejected: Family<ReasonLabels, Counter>,

    sync_status: Family<DsStatusLabels, Gauge>,
    daemonset_info: Family<DsInfoLabels, Gauge>,
    drift_detected: Family<DsLabels, Counter>,

    rollout_stage: Family<DsLabels, Gauge>,
    rollout_pool_pods: Family<PoolLabels, Gauge>,
    rollouts: Family<DsOutcomeLabels, Counter>,
    rollout_duration: HistogramFamily<OutcomeLabels>,
    gate_failures: Family<DsGateLabels, Counter>,
    rollback_duration: Histogram,

    reconcile_errors: Family<KindLabels, Counter>,
    kube_requests: Family<KubeLabels, Counter>,
}

/// nodewave's metrics registry. Cloning is cheap and every clone records into
/// the same registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Git fetches are usually sub-second but large repositories over SSH can take
/// a minute: 50ms .. ~51s.
fn git_fetch_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 11))
}

/// A rollout waits for every pool of every stage; minutes to hours.
fn rollout_buckets() -> Histogram {
    Histogram::new([
        30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
    ])
}

/// A rollback re-applies the last good template and waits for pods: seconds to tens of minutes.
fn rollback_buckets() -> Histogram {
    Histogram::new([
        5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
    ])
}

fn ds_labels(namespace: &str, daemonset: &str) -> DsLabels {
    DsLabels {
        namespace: namespace.to_owned(),
        daemonset: daemonset.to_owned(),
    }
}

fn pool_labels(namespace: &str, daemonset: &str, pool: &str, state: &'static str) -> PoolLabels {
    PoolLabels {
        namespace: namespace.to_owned(),
        daemonset: daemonset.to_owned(),
        pool: pool.to_owned(),
        state,
    }
}

/// Creates a series at its default value (0) without recording anything, so
/// the series exists before its first event.
fn create_series<S, M, C>(family: &Family<S, M, C>, labels: &S)
where
    S: Clone + std::hash::Hash + Eq,
    C: prometheus_client::metrics::family::MetricConstructor<M>,
{
    drop(family.get_or_create(labels));
}

const POOL_STATES: [&str; 3] = ["updated", "ready", "total"];

fn unix_now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Metrics {
    /// Creates and registers every nodewave metric.
    ///
    /// Counters with a bounded, known label set are created at 0 here so that
    /// `increase()` in alert rules sees their first increment.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();

        let build_info = Family::<VersionLabels, Gauge>::default();
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "nodewave_build_info",
            "nodewave build information; always 1",
            build_info,
        );

        // Counters are registered without `_total`: the OpenMetrics encoder appends it.
        let git_fetch = Family::<ResultLabels, Counter>::default();
        for result in FetchResult::ALL {
            create_series(
                &git_fetch,
                &ResultLabels {
                    result: result.as_str(),
                },
            );
        }
        registry.register(
            "nodewave_git_fetch",
            "Git fetches by result",
            git_fetch.clone(),
        );
        let git_fetch_duration = git_fetch_buckets();
        registry.register(
            "nodewave_git_fetch_duration_seconds",
            "Duration of Git fetches",
            git_fetch_duration.clone(),
        );
        let git_last_success = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "nodewave_git_last_successful_fetch_timestamp_seconds",
            "Unix time of the last successful Git fetch; 0 before the first one",
            git_last_success.clone(),
        );
        let git_head_info = Family::<CommitLabels, Gauge>::default();
        registry.register(
            "nodewave_git_head_info",
            "Commit at the head of the tracked branch; 1 for the current head only",
            git_head_info.clone(),
        );
        let git_force_push = Counter::default();
        registry.register(
            "nodewave_git_force_push",
            "Fetches where the new head did not descend from the previous head",
            git_force_push.clone(),
        );

        let webhook_requests = Family::<WebhookLabels, Counter>::default();
        for provider in WebhookProvider::ALL {
            for result in WebhookResult::ALL {
                create_series(
                    &webhook_requests,
                    &WebhookLabels {
                        provider: provider.as_str(),
                        result: result.as_str(),
                    },
                );
            }
        }
        registry.register(
            "nodewave_webhook_requests",
            "Webhook requests by provider and result",
            webhook_requests.clone(),
        );
        let commit_rejected = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "nodewave_commit_rejected",
            "Commits rejected by validation, by failed check id",
            commit_rejected.clone(),
        );

        let sync_status = Family::<DsStatusLabels, Gauge>::default();
        registry.register(
            "nodewave_daemonset_sync_status",
            "1 for the current sync status of a DaemonSet, 0 for the others",
            sync_status.clone(),
        );
        let daemonset_info = Family::<DsInfoLabels, Gauge>::default();
        registry.register(
            "nodewave_daemonset_info",
            "Applied and last good commit of a DaemonSet; always 1",
            daemonset_info.clone(),
        );
        let drift_detected = Family::<DsLabels, Counter>::default();
        registry.register(
            "nodewave_drift_detected",
            "Times the live DaemonSet differed from Git without a rollout",
            drift_detected.clone(),
        );

        let rollout_stage = Family::<DsLabels, Gauge>::default();
        registry.register(
            "nodewave_rollout_stage",
            "Index of the rollout stage in progress; -1 when idle",
            rollout_stage.clone(),
        );
        let rollout_pool_pods = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "nodewave_rollout_pool_pods",
            "Pods per node pool by state (updated, ready, total) as last observed",
            rollout_pool_pods.clone(),
        );
        let rollouts = Family::<DsOutcomeLabels, Counter>::default();
        registry.register(
            "nodewave_rollouts",
            "Finished rollouts by outcome",
            rollouts.clone(),
        );
        let rollout_duration: HistogramFamily<OutcomeLabels> =
            Family::new_with_constructor(rollout_buckets);
        for outcome in RolloutOutcome::ALL {
            create_series(
                &rollout_duration,
                &OutcomeLabels {
                    outcome: outcome.as_str(),
                },
            );
        }
        registry.register(
            "nodewave_rollout_duration_seconds",
            "Duration of finished rollouts by outcome",
            rollout_duration.clone(),
        );
        let gate_failures = Family::<DsGateLabels, Counter>::default();
        registry.register(
            "nodewave_gate_failures",
            "Health gate failures by gate",
            gate_failures.clone(),
        );
        let rollback_duration = rollback_buckets();
        registry.register(
            "nodewave_rollback_duration_seconds",
            "Duration of rollbacks to the last good commit",
            rollback_duration.clone(),
        );

        let reconcile_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "nodewave_reconcile_errors",
            "Reconcile loop errors by kind",
            reconcile_errors.clone(),
        );
        let kube_requests = Family::<KubeLabels, Counter>::default();
        registry.register(
            "nodewave_kube_requests",
            "Kubernetes API requests by verb and result",
            kube_requests.clone(),
        );

        Metrics {
            inner: Arc::new(Inner {
                registry,
                state: Mutex::new(SeriesState::default()),
                git_fetch,
                git_fetch_duration,
                git_last_success,
                git_head_info,
                git_force_push,
                webhook_requests,
                commit_rejected,
                sync_status,
                daemonset_info,
                drift_detected,
                rollout_stage,
                rollout_pool_pods,
                rollouts,
                rollout_duration,
                gate_failures,
                rollback_duration,
                reconcile_errors,
                kube_requests,
            }),
        }
    }

    /// The whole registry in the OpenMetrics text format, ending in `# EOF`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an error would come from a metric
        // encoder and is worth a log line rather than a failed scrape.
        if let Err(err) = encode(&mut out, &self.inner.registry) {
            tracing::error!(error = %err, "encoding metrics failed");
        }
        out
    }

    // A poisoned lock only means another thread panicked mid-update; the
    // bookkeeping is still usable and metrics must never take the process down.
    fn state(&self) -> MutexGuard<'_, SeriesState> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    // ---------------------------------------------------------------- Git

    /// Starts timing a Git fetch; the duration is recorded when the timer is dropped.
    pub fn git_fetch_timer(&self) -> DropTimer {
        DropTimer::new(self.inner.git_fetch_duration.clone())
    }

    /// Records a fetch duration measured by the caller (instead of [`Metrics::git_fetch_timer`]).
    pub fn observe_git_fetch_duration(&self, duration: Duration) {
        self.inner
            .git_fetch_duration
            .observe(duration.as_secs_f64());
    }

    /// Counts a finished fetch; a success also sets the last-success timestamp to now.
    pub fn git_fetch_result(&self, result: FetchResult) {
        self.inner
            .git_fetch
            .get_or_create(&ResultLabels {
                result: result.as_str(),
            })
            .inc();
        if result == FetchResult::Success {
            self.inner.git_last_success.set(unix_now_seconds());
        }
    }

    /// Sets the current head commit, removing the previous head's series.
    pub fn set_git_head(&self, commit: &str) {
        let mut guard = self.state();
        if guard.git_head.as_deref() == Some(commit) {
            return;
        }
        if let Some(old) = guard.git_head.take() {
            self.inner
                .git_head_info
                .remove(&CommitLabels { commit: old });
        }
        self.inner
            .git_head_info
            .get_or_create(&CommitLabels {
                commit: commit.to_owned(),
            })
            .set(1);
        guard.git_head = Some(commit.to_owned());
    }

    /// Counts a fetch whose new head does not descend from the previous head.
    pub fn git_force_push(&self) {
        self.inner.git_force_push.inc();
    }

    /// Counts a webhook request.
    pub fn webhook_request(&self, provider: WebhookProvider, result: WebhookResult) {
        self.inner
            .webhook_requests
            .get_or_create(&WebhookLabels {
                provider: provider.as_str(),
                result: result.as_str(),
            })
            .inc();
    }

    /// Counts a commit rejected by validation. `reason` is the failed check id
    /// (e.g. `yaml-syntax`) and must come from the fixed set of checks.
    pub fn commit_rejected(&self, reason: &str) {
        self.inner
            .commit_rejected
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Creates the rejection counters of the given check ids at 0, so the first
    /// rejection shows up as an increase. Call once at startup with every check id.
    pub fn init_commit_reject_reasons<'a>(&self, reasons: impl IntoIterator<Item = &'a str>) {
        for reason in reasons {
            create_series(
                &self.inner.commit_rejected,
                &ReasonLabels {
                    reason: reason.to_owned(),
                },
            );
        }
    }

    // ---------------------------------------------------------- DaemonSets

    /// Registers the DaemonSet on first sight and creates its event counters at 0.
    fn ensure_known<'s>(
        &self,
        state: &'s mut SeriesState,
        namespace: &str,
        daemonset: &str,
    ) -> &'s mut DaemonSetSeries {
        let key = (namespace.to_owned(), daemonset.to_owned());
        state.daemonsets.entry(key).or_insert_with(|| {
            let labels = ds_labels(namespace, daemonset);
            create_series(&self.inner.drift_detected, &labels);
            self.inner.rollout_stage.get_or_create(&labels).set(-1);
            for outcome in RolloutOutcome::ALL {
                create_series(
                    &self.inner.rollouts,
                    &DsOutcomeLabels {
                        namespace: namespace.to_owned(),
                        daemonset: daemonset.to_owned(),
                        outcome: outcome.as_str(),
                    },
                );
            }
            let mut series = DaemonSetSeries::default();
            for gate in Gate::ALL {
                create_series(
                    &self.inner.gate_failures,
                    &DsGateLabels {
                        namespace: namespace.to_owned(),
                        daemonset: daemonset.to_owned(),
                        gate: gate.metric_label().to_owned(),
                    },
                );
                series.gates.insert(gate.metric_label().to_owned());
            }
            series
        })
    }

    /// Sets the sync status: 1 for `status`, 0 for the five others.
    pub fn set_sync_status(&self, namespace: &str, daemonset: &str, status: SyncStatus) {
        let mut guard = self.state();
        let series = self.ensure_known(&mut guard, namespace, daemonset);
        series.status_exported = true;
        for candidate in SyncStatus::ALL {
            self.inner
                .sync_status
                .get_or_create(&DsStatusLabels {
                    namespace: namespace.to_owned(),
                    daemonset: daemonset.to_owned(),
                    status: candidate.as_str(),
                })
                .set(i64::from(candidate == status));
        }
    }

    /// Sets the applied and last good commit; the previous info series is removed
    /// when either changes. Pass `""` for a commit that is not known yet.
    pub fn set_daemonset_commits(
        &self,
        namespace: &str,
        daemonset: &str,
        applied_commit: &str,
        last_good_commit: &str,
    ) {
        let mut guard = self.state();
        let series = self.ensure_known(&mut guard, namespace, daemonset);
        if let Some((applied, last_good)) = &series.commits {
            if applied == applied_commit && last_good == last_good_commit {
                return;
            }
            self.inner.daemonset_info.remove(&DsInfoLabels {
                namespace: namespace.to_owned(),
                daemonset: daemonset.to_owned(),
                applied_commit: applied.clone(),
                last_good_commit: last_good.clone(),
            });
        }
        self.inner
            .daemonset_info
            .get_or_create(&DsInfoLabels {
                namespace: namespace.to_owned(),
                daemonset: daemonset.to_owned(),
                applied_commit: applied_commit.to_owned(),
                last_good_commit: last_good_commit.to_owned(),
            })
            .set(1);
        series.commits = Some((applied_commit.to_owned(), last_good_commit.to_owned()));
    }

    /// Counts a drift of the live DaemonSet away from Git.
    pub fn drift_detected(&self, namespace: &str, daemonset: &str) {
        let mut guard = self.state();
        self.ensure_known(&mut guard, namespace, daemonset);
        self.inner
            .drift_detected
            .get_or_create(&ds_labels(namespace, daemonset))
            .inc();
    }

    /// Sets the index of the stage in progress; `None` when no rollout runs (-1).
    pub fn set_rollout_stage(&self, namespace: &str, daemonset: &str, stage: Option<usize>) {
        let mut guard = self.state();
        self.ensure_known(&mut guard, namespace, daemonset);
        let value = stage.map_or(-1, |s| i64::try_from(s).unwrap_or(i64::MAX));
        self.inner
            .rollout_stage
            .get_or_create(&ds_labels(namespace, daemonset))
            .set(value);
    }

    /// Sets the pod counts of one node pool. The series stay at their last value
    /// after the rollout so the dashboard keeps showing where it ended.
    pub fn set_pool_pods(
        &self,
        namespace: &str,
        daemonset: &str,
        pool: &str,
        counts: PoolPodCounts,
    ) {
        let mut guard = self.state();
        let series = self.ensure_known(&mut guard, namespace, daemonset);
        series.pools.insert(pool.to_owned());
        for (state_label, value) in
            POOL_STATES
                .into_iter()
                .zip([counts.updated, counts.ready, counts.total])
        {
            self.inner
                .rollout_pool_pods
                .get_or_create(&pool_labels(namespace, daemonset, pool, state_label))
                .set(value);
        }
    }

    /// Removes the pool series of pools not in `pools` (after the rollout policy
    /// changed its pools).
    pub fn retain_pools(&self, namespace: &str, daemonset: &str, pools: &[&str]) {
        let mut guard = self.state();
        let key = (namespace.to_owned(), daemonset.to_owned());
        let Some(series) = guard.daemonsets.get_mut(&key) else {
            return;
        };
        let stale: Vec<String> = series
            .pools
            .iter()
            .filter(|p| !pools.contains(&p.as_str()))
            .cloned()
            .collect();
        for pool in stale {
            for state_label in POOL_STATES {
                self.inner.rollout_pool_pods.remove(&pool_labels(
                    namespace,
                    daemonset,
                    &pool,
                    state_label,
                ));
            }
            series.pools.remove(&pool);
        }
    }

    /// Counts a finished rollout and records its duration.
    pub fn rollout_finished(
        &self,
        namespace: &str,
        daemonset: &str,
        outcome: RolloutOutcome,
        secs: f64,
    ) {
        let mut guard = self.state();
        self.ensure_known(&mut guard, namespace, daemonset);
        self.inner
            .rollouts
            .get_or_create(&DsOutcomeLabels {
                namespace: namespace.to_owned(),
                daemonset: daemonset.to_owned(),
                outcome: outcome.as_str(),
            })
            .inc();
        self.inner
            .rollout_duration
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .observe(secs);
    }

    /// Counts a failed health gate. `gate` is a `Gate::metric_label()` value.
    pub fn gate_failed(&self, namespace: &str, daemonset: &str, gate: &str) {
        let mut guard = self.state();
        let series = self.ensure_known(&mut guard, namespace, daemonset);
        series.gates.insert(gate.to_owned());
        self.inner
            .gate_failures
            .get_or_create(&DsGateLabels {
                namespace: namespace.to_owned(),
                daemonset: daemonset.to_owned(),
                gate: gate.to_owned(),
            })
            .inc();
    }

    /// Starts timing a rollback; the duration is recorded when the timer is dropped.
    pub fn rollback_timer(&self) -> DropTimer {
        DropTimer::new(self.inner.rollback_duration.clone())
    }

    /// Records a rollback duration measured by the caller.
    pub fn observe_rollback_duration(&self, secs: f64) {
        self.inner.rollback_duration.observe(secs);
    }

    /// Removes every per-DaemonSet series of a DaemonSet that is no longer managed.
    pub fn forget_daemonset(&self, namespace: &str, daemonset: &str) {
        let mut guard = self.state();
        let key = (namespace.to_owned(), daemonset.to_owned());
        let Some(series) = guard.daemonsets.remove(&key) else {
            return;
        };
        let labels = ds_labels(namespace, daemonset);
        if series.status_exported {
            for status in SyncStatus::ALL {
                self.inner.sync_status.remove(&DsStatusLabels {
                    namespace: namespace.to_owned(),
                    daemonset: daemonset.to_owned(),
                    status: status.as_str(),
                });
            }
        }
        if let Some((applied, last_good)) = series.commits {
            self.inner.daemonset_info.remove(&DsInfoLabels {
                namespace: namespace.to_owned(),
                daemonset: daemonset.to_owned(),
                applied_commit: applied,
                last_good_commit: last_good,
            });
        }
        self.inner.drift_detected.remove(&labels);
        self.inner.rollout_stage.remove(&labels);
        for pool in &series.pools {
            for state_label in POOL_STATES {
                self.inner.rollout_pool_pods.remove(&pool_labels(
                    namespace,
                    daemonset,
                    pool,
                    state_label,
                ));
            }
        }
        for outcome in RolloutOutcome::ALL {
            self.inner.rollouts.remove(&DsOutcomeLabels {
                namespace: namespace.to_owned(),
                daemonset: daemonset.to_owned(),
                outcome: outcome.as_str(),
            });
        }
        for gate in series.gates {
            self.inner.gate_failures.remove(&DsGateLabels {
                namespace: namespace.to_owned(),
                daemonset: daemonset.to_owned(),
                gate,
            });
        }
    }

    // ------------------------------------------------------- reconciler

    /// Counts a reconcile error. `kind` must come from a fixed set (an error enum's label).
    pub fn reconcile_error(&self, kind: &str) {
        self.inner
            .reconcile_errors
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Counts a Kubernetes API request. `verb` is the API verb (`get`, `list`,
    /// `patch`, ...); `ok` selects `result="success"` or `result="error"`.
    pub fn kube_request(&self, verb: &str, ok: bool) {
        let result = if ok {
            FetchResult::Success
        } else {
            FetchResult::Error
        };
        self.inner
            .kube_requests
            .get_or_create(&KubeLabels {
                verb: verb.to_owned(),
                result: result.as_str(),
            })
            .inc();
    }
}

/// Records the time since its creation into a histogram when dropped, so every
/// exit path of the timed operation (including `?` and panics) is measured.
#[derive(Debug)]
#[must_use = "the duration is recorded when the timer is dropped"]
pub struct DropTimer {
    histogram: Histogram,
    start: Instant,
    armed: bool,
}

impl DropTimer {
    fn new(histogram: Histogram) -> Self {
        DropTimer {
            histogram,
            start: Instant::now(),
            armed: true,
        }
    }

    /// Time elapsed so far.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Records now instead of at drop and returns the recorded duration.
    pub fn observe(mut self) -> Duration {
        let elapsed = self.start.elapsed();
        self.histogram.observe(elapsed.as_secs_f64());
        self.armed = false;
        elapsed
    }

    /// Drops the timer without recording (e.g. the operation was skipped).
    pub fn discard(mut self) {
        self.armed = false;
    }
}

impl Drop for DropTimer {
    fn drop(&mut self) {
        if self.armed {
            self.histogram.observe(self.start.elapsed().as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sample lines (not comments) whose name is `name` exactly.
    fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .collect()
    }

    fn record_everything(m: &Metrics) {
        drop(m.git_fetch_timer());
        m.git_fetch_result(FetchResult::Success);
        m.set_git_head("aaaa");
        m.git_force_push();
        m.webhook_request(WebhookProvider::Github, WebhookResult::Accepted);
        m.commit_rejected("yaml-syntax");
        m.set_sync_status("kube-system", "cilium", SyncStatus::Progressing);
        m.set_daemonset_commits("kube-system", "cilium", "aaaa", "bbbb");
        m.drift_detected("kube-system", "cilium");
        m.set_rollout_stage("kube-system", "cilium", Some(1));
        m.set_pool_pods(
            "kube-system",
            "cilium",
            "canary",
            PoolPodCounts {
                updated: 1,
                ready: 1,
                total: 2,
            },
        );
        m.rollout_finished("kube-system", "cilium", RolloutOutcome::RolledBack, 90.0);
        m.gate_failed("kube-system", "cilium", Gate::Restarts.metric_label());
        drop(m.rollback_timer());
        m.reconcile_error("kube-api");
        m.kube_request("patch", true);
    }

    #[test]
    fn encode_contains_every_metric() {
        let m = Metrics::new();
        record_everything(&m);
        let text = m.encode();
        assert!(text.ends_with("# EOF\n"), "{text}");
        for name in [
            "nodewave_build_info",
            "nodewave_git_fetch_total",
            "nodewave_git_fetch_duration_seconds_bucket",
            "nodewave_git_fetch_duration_seconds_count",
            "nodewave_git_last_successful_fetch_timestamp_seconds",
            "nodewave_git_head_info",
            "nodewave_git_force_push_total",
            "nodewave_webhook_requests_total",
            "nodewave_commit_rejected_total",
            "nodewave_daemonset_sync_status",
            "nodewave_daemonset_info",
            "nodewave_drift_detected_total",
            "nodewave_rollout_stage",
            "nodewave_rollout_pool_pods",
            "nodewave_rollouts_total",
            "nodewave_rollout_duration_seconds_bucket",
            "nodewave_gate_failures_total",
            "nodewave_rollback_duration_seconds_bucket",
            "nodewave_reconcile_errors_total",
            "nodewave_kube_requests_total",
        ] {
            assert!(!samples(&text, name).is_empty(), "{name} missing:\n{text}");
        }
        let version = format!(
            "nodewave_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&version), "{text}");
        assert!(text.contains(
            r#"nodewave_rollouts_total{namespace="kube-system",daemonset="cilium",outcome="rolled_back"} 1"#
        ));
        assert!(
            text.contains(
                r#"nodewave_rollout_stage{namespace="kube-system",daemonset="cilium"} 1"#
            )
        );
    }

    #[test]
    fn bounded_counters_start_at_zero() {
        let m = Metrics::new();
        m.set_sync_status("ns", "ds", SyncStatus::Synced);
        let text = m.encode();
        assert!(text.contains(r#"nodewave_git_fetch_total{result="error"} 0"#));
        assert!(text.contains(
            r#"nodewave_webhook_requests_total{provider="gitlab",result="bad_signature"} 0"#
        ));
        assert!(text.contains(
            r#"nodewave_rollouts_total{namespace="ns",daemonset="ds",outcome="rolled_back"} 0"#
        ));
        assert!(text.contains(
            r#"nodewave_gate_failures_total{namespace="ns",daemonset="ds",gate="ready_timeout"} 0"#
        ));
        assert!(text.contains(r#"nodewave_drift_detected_total{namespace="ns",daemonset="ds"} 0"#));
        assert!(text.contains(r#"nodewave_rollout_stage{namespace="ns",daemonset="ds"} -1"#));
        m.init_commit_reject_reasons(["yaml-syntax", "policy"]);
        assert!(
            m.encode()
                .contains(r#"nodewave_commit_rejected_total{reason="policy"} 0"#)
        );
    }

    #[test]
    fn git_head_info_drops_previous_commit() {
        let m = Metrics::new();
        m.set_git_head("aaaa");
        m.set_git_head("aaaa");
        m.set_git_head("bbbb");
        let text = m.encode();
        let heads = samples(&text, "nodewave_git_head_info");
        assert_eq!(heads, vec![r#"nodewave_git_head_info{commit="bbbb"} 1"#]);
    }

    #[test]
    fn daemonset_info_drops_previous_commits() {
        let m = Metrics::new();
        m.set_daemonset_commits("ns", "ds", "a1", "a1");
        m.set_daemonset_commits("ns", "ds", "b2", "a1");
        m.set_daemonset_commits("ns", "other", "c3", "c3");
        let text = m.encode();
        let mut info = samples(&text, "nodewave_daemonset_info");
        info.sort_unstable();
        assert_eq!(
            info,
            vec![
                r#"nodewave_daemonset_info{namespace="ns",daemonset="ds",applied_commit="b2",last_good_commit="a1"} 1"#,
                r#"nodewave_daemonset_info{namespace="ns",daemonset="other",applied_commit="c3",last_good_commit="c3"} 1"#,
            ]
        );
        m.set_daemonset_commits("ns", "ds", "b2", "b2");
        let text = m.encode();
        let ds: Vec<_> = samples(&text, "nodewave_daemonset_info")
            .into_iter()
            .filter(|l| l.contains(r#"daemonset="ds""#))
            .collect();
        assert_eq!(
            ds,
            vec![
                r#"nodewave_daemonset_info{namespace="ns",daemonset="ds",applied_commit="b2",last_good_commit="b2"} 1"#
            ]
        );
    }

    #[test]
    fn sync_status_has_exactly_one_active_series() {
        let m = Metrics::new();
        for status in [
            SyncStatus::OutOfSync,
            SyncStatus::Progressing,
            SyncStatus::RolledBack,
        ] {
            m.set_sync_status("ns", "ds", status);
            let text = m.encode();
            let lines = samples(&text, "nodewave_daemonset_sync_status");
            assert_eq!(lines.len(), SyncStatus::ALL.len(), "{text}");
            let active: Vec<_> = lines.iter().filter(|l| l.ends_with(" 1")).collect();
            assert_eq!(active.len(), 1, "{text}");
            assert!(
                active[0].contains(&format!("status=\"{}\"", status.as_str())),
                "{text}"
            );
            assert_eq!(lines.iter().filter(|l| l.ends_with(" 0")).count(), 5);
        }
    }

    #[test]
    fn forget_daemonset_removes_every_per_daemonset_series() {
        let m = Metrics::new();
        record_everything(&m);
        m.set_sync_status("ns", "keep", SyncStatus::Synced);
        m.forget_daemonset("kube-system", "cilium");
        let text = m.encode();
        assert!(!text.contains(r#"daemonset="cilium""#), "{text}");
        assert!(text.contains(r#"daemonset="keep""#), "{text}");
        // Forgetting twice or an unknown DaemonSet is harmless.
        m.forget_daemonset("kube-system", "cilium");
        m.forget_daemonset("nope", "nope");
    }

    #[test]
    fn retain_pools_removes_only_stale_pools() {
        let m = Metrics::new();
        let counts = PoolPodCounts {
            updated: 0,
            ready: 3,
            total: 3,
        };
        m.set_pool_pods("ns", "ds", "canary", counts);
        m.set_pool_pods("ns", "ds", "rest", counts);
        m.retain_pools("ns", "ds", &["rest"]);
        let text = m.encode();
        assert!(!text.contains(r#"pool="canary""#), "{text}");
        assert_eq!(samples(&text, "nodewave_rollout_pool_pods").len(), 3);
    }

    #[test]
    fn drop_timer_records_once() {
        let m = Metrics::new();
        drop(m.rollback_timer());
        let _recorded = m.rollback_timer().observe();
        m.rollback_timer().discard();
        let text = m.encode();
        assert!(
            text.contains("nodewave_rollback_duration_seconds_count 2"),
            "{text}"
        );
    }

    #[test]
    fn git_fetch_success_sets_timestamp() {
        let m = Metrics::new();
        m.git_fetch_result(FetchResult::Error);
        assert!(
            m.encode()
                .contains("nodewave_git_last_successful_fetch_timestamp_seconds 0.0")
        );
        m.git_fetch_result(FetchResult::Success);
        let text = m.encode();
        assert!(text.contains(r#"nodewave_git_fetch_total{result="error"} 1"#));
        assert!(
            !text.contains("nodewave_git_last_successful_fetch_timestamp_seconds 0.0"),
            "{text}"
        );
    }

    #[test]
    fn metrics_is_send_sync_clone() {
        fn assert_traits<T: Send + Sync + Clone + 'static>() {}
        assert_traits::<Metrics>();
    }
}
