//! Companion objects' metrics: how many are managed and how many are in error,
//! per-object errors by reason, and drift corrected on them (the kind and
//! name are in the log line and the `DriftCorrected` Event).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Reasons an object can be in error; each exists at 0 from the start.
pub const OBJECT_ERROR_REASONS: &[&str] = &["unknown_kind", "not_managed", "apply_failed"];

#[derive(Debug)]
pub(super) struct ObjectMetrics {
    objects: Family<StateLabels, Gauge>,
    errors: Family<ReasonLabels, Counter>,
    drift: Counter,
}

impl ObjectMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let objects = Family::<StateLabels, Gauge>::default();
        registry.register(
            "nodewave_objects",
            "Companion objects (everything but DaemonSets) of the desired commit, by state (synced, error)",
            objects.clone(),
        );
        let errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "nodewave_object_errors",
            "Companion objects that could not be applied, by reason (unknown_kind, not_managed, apply_failed)",
            errors.clone(),
        );
        let drift = Counter::default();
        registry.register(
            "nodewave_object_drift",
            "Companion objects changed or deleted in the cluster and put back to what Git declares",
            drift.clone(),
        );
        for state in ["synced", "error"] {
            let _ = objects.get_or_create(&StateLabels { state });
        }
        for reason in OBJECT_ERROR_REASONS {
            let _ = errors.get_or_create(&ReasonLabels { reason });
        }
        Self {
            objects,
            errors,
            drift,
        }
    }

    pub(super) fn set_counts(&self, synced: usize, error: usize) {
        for (state, n) in [("synced", synced), ("error", error)] {
            self.objects
                .get_or_create(&StateLabels { state })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    pub(super) fn error(&self, reason: &'static str) {
        self.errors.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub(super) fn drift(&self) {
        self.drift.inc();
    }
}
