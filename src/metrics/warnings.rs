//! Best-practice warnings of the current desired commit, per check: advice that
//! never blocks a commit, counted so a dashboard shows how much of it there is.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::manifest::CHECKS;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    check: &'static str,
}

#[derive(Debug)]
pub(super) struct WarningMetrics {
    warnings: Family<CheckLabels, Gauge>,
}

impl WarningMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let warnings = Family::<CheckLabels, Gauge>::default();
        registry.register(
            "nodewave_commit_warnings",
            "Best-practice warnings of the current desired commit, by check (they never block a commit)",
            warnings.clone(),
        );
        for c in CHECKS.iter().filter(|c| c.overridable) {
            let _ = warnings.get_or_create(&CheckLabels { check: c.id });
        }
        Self { warnings }
    }

    /// Sets every check's count from the commit's warnings (check ids).
    pub(super) fn set<'a>(&self, checks: impl IntoIterator<Item = &'a str>) {
        let mut counts: std::collections::BTreeMap<&'static str, i64> = CHECKS
            .iter()
            .filter(|c| c.overridable)
            .map(|c| (c.id, 0))
            .collect();
        for id in checks {
            if let Some((_, n)) = counts.iter_mut().find(|(k, _)| **k == id) {
                *n += 1;
            }
        }
        for (check, n) in counts {
            self.warnings.get_or_create(&CheckLabels { check }).set(n);
        }
    }
}
