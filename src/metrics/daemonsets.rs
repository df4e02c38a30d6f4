//! Per-DaemonSet series, produced at scrape time from the rollout records in the
//! watch-fed store (a `Collector`), so a DaemonSet nodewave stops managing takes
//! all its series with it and nothing stale can remain. Event counters (drift,
//! finished rollouts, failed gates) are counted here and exported the same way,
//! at 0 from the moment the DaemonSet is known.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::desired::SourceIdentity;
use crate::plan::Outcome;
use crate::record::{RecordStatus, SyncStatus};
use crate::rollout::Gate;
use crate::store::Stores;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DsLabels {
    namespace: String,
    daemonset: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    namespace: String,
    daemonset: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
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
struct OutcomeLabels {
    namespace: String,
    daemonset: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GateLabels {
    namespace: String,
    daemonset: String,
    gate: &'static str,
}

/// Event counts of one DaemonSet.
#[derive(Debug, Default, Clone)]
struct Counts {
    drift: u64,
    rollouts: [u64; Outcome::ALL.len()],
    gates: [u64; Gate::ALL.len()],
}

type Key = (String, String);

/// The store the gauges are read from, once this replica leads.
#[derive(Clone)]
struct Source {
    stores: Arc<Stores>,
    identity: SourceIdentity,
}

/// Shared between the `Metrics` handle (which counts) and the registered collector.
#[derive(Clone, Default)]
pub(super) struct DaemonSets {
    source: Arc<RwLock<Option<Source>>>,
    counts: Arc<Mutex<HashMap<Key, Counts>>>,
}

impl fmt::Debug for DaemonSets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DaemonSets").finish_non_exhaustive()
    }
}

fn key(namespace: &str, daemonset: &str) -> Key {
    (namespace.to_owned(), daemonset.to_owned())
}

/// Stage index from the record's `2/3 name` column: 0-based, or -1 when no stage
/// of a rollout is in progress.
fn stage_index(s: &RecordStatus) -> i64 {
    match s.rollout_phase.as_str() {
        "" | "Applying" | "Pruning" | "Succeeded" => return -1,
        p if p.starts_with("Failed") => return -1,
        _ => {}
    }
    s.stage
        .split_once('/')
        .and_then(|(n, _)| n.parse::<i64>().ok())
        .map_or(-1, |n| n - 1)
}

impl DaemonSets {
    pub(super) fn attach(&self, stores: Arc<Stores>, identity: SourceIdentity) {
        *self.source.write().unwrap_or_else(PoisonError::into_inner) =
            Some(Source { stores, identity });
    }

    fn bump(&self, namespace: &str, daemonset: &str, f: impl FnOnce(&mut Counts)) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        f(counts.entry(key(namespace, daemonset)).or_default());
    }

    pub(super) fn drift(&self, namespace: &str, daemonset: &str) {
        self.bump(namespace, daemonset, |c| c.drift += 1);
    }

    pub(super) fn rollout_finished(&self, namespace: &str, daemonset: &str, outcome: Outcome) {
        if let Some(i) = Outcome::ALL.iter().position(|o| *o == outcome) {
            self.bump(namespace, daemonset, |c| c.rollouts[i] += 1);
        }
    }

    pub(super) fn gate_failed(&self, namespace: &str, daemonset: &str, gate: &str) {
        if let Some(i) = Gate::ALL.iter().position(|g| g.metric_label() == gate) {
            self.bump(namespace, daemonset, |c| c.gates[i] += 1);
        }
    }

    /// The records of this source, as `(namespace, name, status)`.
    fn records(&self) -> Vec<(String, String, RecordStatus)> {
        let source = self.source.read().unwrap_or_else(PoisonError::into_inner);
        let Some(src) = source.as_ref() else {
            return Vec::new();
        };
        let mut out: Vec<(String, String, RecordStatus)> = src
            .stores
            .records()
            .into_iter()
            .filter(|r| src.identity.owns_meta(&r.metadata))
            .map(|r| {
                (
                    r.metadata.namespace.clone().unwrap_or_default(),
                    r.metadata.name.clone().unwrap_or_default(),
                    r.status.clone().unwrap_or_default(),
                )
            })
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }
}

fn gauge_family<'a, S: EncodeLabelSet + 'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (S, i64)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter_family<S: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (S, u64)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for DaemonSets {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let records = self.records();
        let counts = {
            let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
            // Forget the counts of DaemonSets no longer managed (their series go).
            if self.source.read().is_ok_and(|s| s.is_some()) {
                counts.retain(|k, _| records.iter().any(|(n, d, _)| k.0 == *n && k.1 == *d));
            }
            counts.clone()
        };
        let ds = |n: &str, d: &str| DsLabels {
            namespace: n.to_owned(),
            daemonset: d.to_owned(),
        };
        gauge_family(
            &mut encoder,
            "nodewave_daemonset_sync_status",
            "1 for the current sync status of a DaemonSet, 0 for the others",
            records.iter().flat_map(|(n, d, s)| {
                let current = SyncStatus::parse(&s.phase);
                SyncStatus::ALL.into_iter().map(move |st| {
                    (
                        StatusLabels {
                            namespace: n.clone(),
                            daemonset: d.clone(),
                            status: st.as_str(),
                        },
                        i64::from(current == Some(st)),
                    )
                })
            }),
        )?;
        gauge_family(
            &mut encoder,
            "nodewave_daemonset_info",
            "Applied and last good commit of a DaemonSet; always 1",
            records.iter().map(|(n, d, s)| {
                (
                    InfoLabels {
                        namespace: n.clone(),
                        daemonset: d.clone(),
                        applied_commit: s.applied_commit.clone().unwrap_or_default(),
                        last_good_commit: s.last_good_commit.clone().unwrap_or_default(),
                    },
                    1,
                )
            }),
        )?;
        gauge_family(
            &mut encoder,
            "nodewave_rollout_stage",
            "Index of the rollout stage in progress; -1 when idle",
            records.iter().map(|(n, d, s)| (ds(n, d), stage_index(s))),
        )?;
        gauge_family(
            &mut encoder,
            "nodewave_rollout_pool_pods",
            "Pods per node pool by state (updated, ready, total) as last recorded",
            records.iter().flat_map(|(n, d, s)| {
                s.pools.iter().flat_map(move |p| {
                    [
                        ("updated", p.updated),
                        ("ready", p.ready),
                        ("total", p.total),
                    ]
                    .into_iter()
                    .map(move |(state, v)| {
                        (
                            PoolLabels {
                                namespace: n.clone(),
                                daemonset: d.clone(),
                                pool: p.name.clone(),
                                state,
                            },
                            v,
                        )
                    })
                })
            }),
        )?;
        let count_of = |n: &str, d: &str| counts.get(&key(n, d)).cloned().unwrap_or_default();
        counter_family(
            &mut encoder,
            "nodewave_drift_detected",
            "Times the live DaemonSet differed from Git without a rollout",
            records
                .iter()
                .map(|(n, d, _)| (ds(n, d), count_of(n, d).drift)),
        )?;
        counter_family(
            &mut encoder,
            "nodewave_rollouts",
            "Finished rollouts by outcome",
            records.iter().flat_map(|(n, d, _)| {
                let c = count_of(n, d);
                Outcome::ALL.into_iter().zip(c.rollouts).map(move |(o, v)| {
                    (
                        OutcomeLabels {
                            namespace: n.clone(),
                            daemonset: d.clone(),
                            outcome: o.as_str(),
                        },
                        v,
                    )
                })
            }),
        )?;
        counter_family(
            &mut encoder,
            "nodewave_gate_failures",
            "Health gate failures by gate",
            records.iter().flat_map(|(n, d, _)| {
                let c = count_of(n, d);
                Gate::ALL.into_iter().zip(c.gates).map(move |(g, v)| {
                    (
                        GateLabels {
                            namespace: n.clone(),
                            daemonset: d.clone(),
                            gate: g.metric_label(),
                        },
                        v,
                    )
                })
            }),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_index_comes_from_the_stage_column() {
        let s = |phase: &str, stage: &str| RecordStatus {
            rollout_phase: phase.into(),
            stage: stage.into(),
            ..RecordStatus::default()
        };
        assert_eq!(stage_index(&s("Updating", "2/3 general")), 1);
        assert_eq!(stage_index(&s("Baking", "1/1 canary")), 0);
        assert_eq!(stage_index(&s("", "")), -1);
        assert_eq!(stage_index(&s("Applying", "")), -1);
        assert_eq!(stage_index(&s("Failed (restarts)", "1/3 a")), -1);
    }
}
