//! The prune guard's metrics: desired states whose deletions were refused, and
//! how many DaemonSets the current desired state holds back from deletion.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug)]
pub(super) struct PruneMetrics {
    refused: Counter,
    held_back: Gauge,
}

impl PruneMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let refused = Counter::default();
        registry.register(
            "nodewave_prune_refused",
            "Commits whose deletions the prune guard refused (all managed DaemonSets, or more than --max-prune-percent, without the marker file)",
            refused.clone(),
        );
        let held_back = Gauge::default();
        registry.register(
            "nodewave_prune_refused_daemonsets",
            "DaemonSets the current desired state would delete but the prune guard holds back; 0 when nothing is refused",
            held_back.clone(),
        );
        Self { refused, held_back }
    }

    pub(super) fn refused(&self) {
        self.refused.inc();
    }

    pub(super) fn held_back(&self, daemonsets: usize) {
        self.held_back
            .set(i64::try_from(daemonsets).unwrap_or(i64::MAX));
    }
}
