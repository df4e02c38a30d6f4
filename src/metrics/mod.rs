//! Prometheus metrics for nodewave, exposed in the OpenMetrics text format.
//!
//! Metric names and label values are a contract with the alert rules in
//! `deploy/prometheus/`, the Grafana dashboard in `dashboards/` and
//! `docs/metrics.md`; `tests/observability_artifacts.rs` checks that every
//! metric those artifacts query is produced here.
//!
//! Groups register themselves: [`source`] (Git, webhooks, rejected commits),
//! [`prune`] (the prune guard),
//! [`daemonsets`] (per-DaemonSet series read from the rollout records at scrape
//! time, so nothing stale remains when a DaemonSet stops being managed), and here
//! the rollout duration histograms and the controller's own health (reconcile
//! errors, Kubernetes API requests). Every bounded label set exists at 0 from
//! the first scrape, so `increase()` in alert rules sees the first event.

mod daemonsets;
mod objects;
mod prune;
mod source;
mod warnings;

pub use objects::OBJECT_ERROR_REASONS;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use crate::plan::Outcome as RolloutOutcome;
pub use crate::record::SyncStatus;
pub use source::{FetchResult, WebhookProvider, WebhookResult};

use crate::desired::SourceIdentity;
use crate::store::Stores;

/// Content type of [`Metrics::encode`]'s output, for the `/metrics` handler.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
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

/// Creates a series at its default value (0) without recording anything, so
/// the series exists before its first event.
fn create_series<S, M, C>(family: &Family<S, M, C>, labels: &S)
where
    S: Clone + std::hash::Hash + Eq,
    C: prometheus_client::metrics::family::MetricConstructor<M>,
{
    drop(family.get_or_create(labels));
}

/// A rollout waits for every pool of every stage: seconds (a small canary) to hours.
fn rollout_buckets() -> Histogram {
    Histogram::new([
        5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0,
    ])
}

/// A rollback re-applies the last good template and waits for pods: seconds to tens of minutes.
fn rollback_buckets() -> Histogram {
    Histogram::new([
        5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
    ])
}

/// The rollout durations and the controller's own health.
#[derive(Debug)]
struct ControllerMetrics {
    rollout_duration: HistogramFamily<OutcomeLabels>,
    rollback_duration: Histogram,
    reconcile_errors: Family<KindLabels, Counter>,
    kube_requests: Family<KubeLabels, Counter>,
}

impl ControllerMetrics {
    fn register(registry: &mut Registry) -> Self {
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
        let rollback_duration = rollback_buckets();
        registry.register(
            "nodewave_rollback_duration_seconds",
            "Duration of rollbacks to the last good commit",
            rollback_duration.clone(),
        );
        let reconcile_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "nodewave_reconcile_errors",
            "Reconcile errors by kind",
            reconcile_errors.clone(),
        );
        let kube_requests = Family::<KubeLabels, Counter>::default();
        registry.register(
            "nodewave_kube_requests",
            "Kubernetes API requests by verb and result",
            kube_requests.clone(),
        );
        Self {
            rollout_duration,
            rollback_duration,
            reconcile_errors,
            kube_requests,
        }
    }
}

struct Inner {
    registry: Registry,
    source: source::SourceMetrics,
    prune: prune::PruneMetrics,
    objects: objects::ObjectMetrics,
    warnings: warnings::WarningMetrics,
    daemonsets: daemonsets::DaemonSets,
    controller: ControllerMetrics,
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

impl Metrics {
    /// Creates and registers every nodewave metric.
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
        let source = source::SourceMetrics::register(&mut registry);
        let prune = prune::PruneMetrics::register(&mut registry);
        let objects = objects::ObjectMetrics::register(&mut registry);
        let warnings = warnings::WarningMetrics::register(&mut registry);
        let controller = ControllerMetrics::register(&mut registry);
        let daemonsets = daemonsets::DaemonSets::default();
        registry.register_collector(Box::new(daemonsets.clone()));
        Metrics {
            inner: Arc::new(Inner {
                registry,
                source,
                prune,
                objects,
                warnings,
                daemonsets,
                controller,
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

    /// Per-DaemonSet series come from the records in `stores` (those of
    /// `identity`) from now on; before, a standby exports none.
    pub fn watch_daemonsets(&self, stores: Arc<Stores>, identity: SourceIdentity) {
        self.inner.daemonsets.attach(stores, identity);
    }

    // ---------------------------------------------------------------- Git

    /// Starts timing a Git fetch; the duration is recorded when the timer is dropped.
    pub fn git_fetch_timer(&self) -> DropTimer {
        self.inner.source.fetch_timer()
    }

    /// Records a fetch duration measured by the caller.
    pub fn observe_git_fetch_duration(&self, duration: Duration) {
        self.inner.source.observe_fetch_duration(duration);
    }

    /// Counts a finished fetch; a success also sets the last-success timestamp to now.
    pub fn git_fetch_result(&self, result: FetchResult) {
        self.inner.source.fetch_result(result);
    }

    /// Sets the current head commit, removing the previous head's series.
    pub fn set_git_head(&self, commit: &str) {
        self.inner.source.set_head(commit);
    }

    /// Counts a fetch whose new head does not descend from the previous head.
    pub fn git_force_push(&self) {
        self.inner.source.force_push();
    }

    /// Counts a webhook request.
    pub fn webhook_request(&self, provider: WebhookProvider, result: WebhookResult) {
        self.inner.source.webhook(provider, result);
    }

    /// Counts a rejected commit. `reason` is a check id, `read-error` or
    /// `signature`: a fixed set.
    pub fn commit_rejected(&self, reason: &str) {
        self.inner.source.commit_rejected(reason);
    }

    /// Creates the rejection counters of these reasons at 0.
    pub fn init_commit_reject_reasons<'a>(&self, reasons: impl IntoIterator<Item = &'a str>) {
        self.inner.source.init_reject_reasons(reasons);
    }

    // --------------------------------------------------------- prune guard

    /// Counts a commit whose deletions the prune guard refused (once per commit).
    pub fn prune_refused(&self) {
        self.inner.prune.refused();
    }

    /// How many DaemonSets the current desired state holds back from deletion
    /// (0 when its prune is allowed or there is nothing to prune).
    pub fn set_prune_held_back(&self, daemonsets: usize) {
        self.inner.prune.held_back(daemonsets);
    }

    /// The current desired commit's best-practice warnings (their check ids).
    pub fn set_commit_warnings<'a>(&self, checks: impl IntoIterator<Item = &'a str>) {
        self.inner.warnings.set(checks);
    }

    // ---------------------------------------------------- companion objects

    /// Companion objects of the desired commit: synced and in error.
    pub fn set_object_counts(&self, synced: usize, error: usize) {
        self.inner.objects.set_counts(synced, error);
    }

    /// Counts a companion object that could not be applied (`OBJECT_ERROR_REASONS`).
    pub fn object_error(&self, reason: &'static str) {
        self.inner.objects.error(reason);
    }

    /// Counts a companion object put back after it drifted.
    pub fn object_drift(&self) {
        self.inner.objects.drift();
    }

    // ---------------------------------------------------------- DaemonSets

    /// Counts a drift of the live DaemonSet away from Git.
    pub fn drift_detected(&self, namespace: &str, daemonset: &str) {
        self.inner.daemonsets.drift(namespace, daemonset);
    }

    /// Counts a finished rollout and records its duration.
    pub fn rollout_finished(
        &self,
        namespace: &str,
        daemonset: &str,
        outcome: RolloutOutcome,
        secs: f64,
    ) {
        self.inner
            .daemonsets
            .rollout_finished(namespace, daemonset, outcome);
        self.inner
            .controller
            .rollout_duration
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .observe(secs);
    }

    /// Counts a failed health gate. `gate` is a `Gate::metric_label()` value.
    pub fn gate_failed(&self, namespace: &str, daemonset: &str, gate: &str) {
        self.inner
            .daemonsets
            .gate_failed(namespace, daemonset, gate);
    }

    /// Starts timing a rollback; the duration is recorded when the timer is dropped.
    pub fn rollback_timer(&self) -> DropTimer {
        DropTimer::new(self.inner.controller.rollback_duration.clone())
    }

    /// Records a rollback duration measured by the caller.
    pub fn observe_rollback_duration(&self, secs: f64) {
        self.inner.controller.rollback_duration.observe(secs);
    }

    // ---------------------------------------------------------- controller

    /// Counts a reconcile error. `kind` must come from a fixed set (an error's label).
    pub fn reconcile_error(&self, kind: &str) {
        self.inner
            .controller
            .reconcile_errors
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Creates the reconcile-error counters of these kinds at 0.
    pub fn init_reconcile_error_kinds<'a>(&self, kinds: impl IntoIterator<Item = &'a str>) {
        for kind in kinds {
            create_series(
                &self.inner.controller.reconcile_errors,
                &KindLabels {
                    kind: kind.to_owned(),
                },
            );
        }
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
            .controller
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
mod tests;
