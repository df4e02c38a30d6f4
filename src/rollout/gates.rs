//! Health gates: deciding from one observation whether the updated pods are healthy.

use std::collections::HashSet;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::manifest::policy::HealthSpec;

use super::{Observation, PodObservation, Rollout};

/// Prometheus grace when the policy configures no Prometheus (irrelevant then, but
/// keeps `HealthRules` total). Matches the policy's default `unreachableGrace`.
const DEFAULT_PROMETHEUS_GRACE_MS: u64 = 120_000;

/// The health part of a policy, in the planner's units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthRules {
    pub ready_timeout_ms: u64,
    pub max_restarts: u32,
    pub fatal_reasons: Vec<String>,
    pub prometheus_grace_ms: u64,
}

impl From<&HealthSpec> for HealthRules {
    fn from(h: &HealthSpec) -> Self {
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self {
            ready_timeout_ms: ms(h.ready_timeout),
            max_restarts: h.max_restarts,
            fatal_reasons: h.fatal_reasons.clone(),
            prometheus_grace_ms: h
                .prometheus
                .as_ref()
                .map_or(DEFAULT_PROMETHEUS_GRACE_MS, |p| ms(p.unreachable_grace)),
        }
    }
}

impl Default for HealthRules {
    fn default() -> Self {
        Self::from(&HealthSpec::default())
    }
}

/// What the reconciler got from Prometheus for the current stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PromOutcome {
    NotConfigured,
    Values(Vec<CheckValue>),
    /// `since_ms`: when the first of the current run of failed queries happened.
    Unreachable {
        since_ms: i64,
        error: String,
    },
}

/// One evaluated Prometheus check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckValue {
    pub name: String,
    /// `None`: the query returned no sample.
    pub value: Option<f64>,
    pub max: Option<f64>,
    pub min: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Gate {
    ReadyTimeout,
    FatalReason,
    Restarts,
    Prometheus,
    Aborted,
}

impl Gate {
    /// Every gate; the failure counters exist at 0 for each from the start.
    pub const ALL: [Gate; 5] = [
        Gate::ReadyTimeout,
        Gate::FatalReason,
        Gate::Restarts,
        Gate::Prometheus,
        Gate::Aborted,
    ];

    /// Value of the `gate` label on failure metrics.
    pub fn metric_label(self) -> &'static str {
        match self {
            Self::ReadyTimeout => "ready_timeout",
            Self::FatalReason => "fatal_reason",
            Self::Restarts => "restarts",
            Self::Prometheus => "prometheus",
            Self::Aborted => "aborted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GateFailure {
    pub gate: Gate,
    pub message: String,
    /// Sorted node names the failure is about (empty for Prometheus and abort).
    pub nodes: Vec<String>,
    /// Pod names, in the order of `nodes`.
    pub pods: Vec<String>,
}

/// The latest gate verdict, for status output. `at_ms` is when this verdict was
/// first reached: it is kept while the verdict stays the same, so an unchanged
/// rollout does not have to be persisted again on every step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GateResult {
    pub at_ms: i64,
    pub passed: bool,
    pub message: String,
}

/// Result of evaluating every gate once.
pub(crate) enum Verdict {
    Pass(String),
    Fail(GateFailure),
}

/// Evaluates the pod and Prometheus gates for the pods nodewave is accountable for:
/// pods on the target revision on nodes of the current and earlier stages, except
/// nodes that were unready at baseline and that nodewave has not touched yet.
pub(crate) fn evaluate(
    rollout: &Rollout,
    obs: &Observation,
    rules: &HealthRules,
    with_prometheus: bool,
) -> Verdict {
    let last = rollout.stage.min(rollout.stages.len().saturating_sub(1));
    let scope: HashSet<&str> = rollout
        .stages
        .iter()
        .take(last + 1)
        .flat_map(|s| s.nodes.iter().map(|n| &**n))
        .filter(|n| obs.nodes.contains(*n))
        .filter(|n| {
            !rollout.baseline_unready.contains(*n)
                || rollout.replacing.contains_key(*n)
                || rollout.updated.contains(*n)
        })
        .collect();
    let mut pods: Vec<&PodObservation> = obs
        .pods
        .iter()
        .filter(|p| {
            *p.revision == *rollout.target_revision && !p.terminating && scope.contains(&*p.node)
        })
        .collect();
    pods.sort_by(|a, b| (&a.node, &a.name).cmp(&(&b.node, &b.name)));

    let fatal: Vec<&PodObservation> = pods
        .iter()
        .copied()
        .filter(|p| {
            p.reason
                .as_ref()
                .is_some_and(|r| rules.fatal_reasons.iter().any(|f| **f == **r))
        })
        .collect();
    if !fatal.is_empty() {
        let detail = summarize(fatal.iter().map(|p| {
            format!(
                "{} on {}: {}",
                p.name,
                p.node,
                p.reason.as_deref().unwrap_or("")
            )
        }));
        return Verdict::Fail(pod_failure(
            Gate::FatalReason,
            format!("fatal container state: {detail}"),
            &fatal,
        ));
    }

    let restarting: Vec<&PodObservation> = pods
        .iter()
        .copied()
        .filter(|p| p.restarts > rules.max_restarts)
        .collect();
    if !restarting.is_empty() {
        let detail = summarize(
            restarting
                .iter()
                .map(|p| format!("{} on {}: {} restarts", p.name, p.node, p.restarts)),
        );
        return Verdict::Fail(pod_failure(
            Gate::Restarts,
            format!("more than {} restarts: {detail}", rules.max_restarts),
            &restarting,
        ));
    }

    let timeout = i64::try_from(rules.ready_timeout_ms).unwrap_or(i64::MAX);
    let late: Vec<&str> = rollout
        .replacing
        .iter()
        .filter(|(n, r)| {
            scope.contains(&***n) && obs.now_ms.saturating_sub(r.deleted_at_ms) > timeout
        })
        .map(|(n, _)| &**n)
        .collect();
    if !late.is_empty() {
        let late_pods: Vec<String> = pods
            .iter()
            .filter(|p| late.contains(&&*p.node))
            .map(|p| p.name.to_string())
            .collect();
        return Verdict::Fail(GateFailure {
            gate: Gate::ReadyTimeout,
            message: format!(
                "no Ready pod on revision {} within {}s on {}",
                rollout.target_revision,
                rules.ready_timeout_ms / 1000,
                summarize(late.iter().map(|n| (*n).to_string()))
            ),
            nodes: late.iter().map(|n| (*n).to_string()).collect(),
            pods: late_pods,
        });
    }

    let mut message = format!("{} updated pods healthy", pods.len());
    if with_prometheus {
        match prometheus_verdict(rollout, obs, rules) {
            Ok(Some(note)) => {
                let _ = write!(message, "; {note}");
            }
            Ok(None) => {}
            Err(f) => return Verdict::Fail(f),
        }
    }
    Verdict::Pass(message)
}

/// Items for a message; long lists are cut so Events and the state annotation
/// stay small (the full lists are in `GateFailure::nodes`/`pods`).
fn summarize(items: impl Iterator<Item = String>) -> String {
    const SHOWN: usize = 5;
    let items: Vec<String> = items.collect();
    let mut out = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        let _ = write!(out, " and {} more", items.len() - SHOWN);
    }
    out
}

fn pod_failure(gate: Gate, message: String, pods: &[&PodObservation]) -> GateFailure {
    let mut nodes: Vec<String> = pods.iter().map(|p| (*p.node).to_owned()).collect();
    nodes.dedup();
    GateFailure {
        gate,
        message,
        nodes,
        pods: pods.iter().map(|p| p.name.to_string()).collect(),
    }
}

/// `Ok(Some(note))` passes with a note worth showing, `Err` fails the gate.
fn prometheus_verdict(
    rollout: &Rollout,
    obs: &Observation,
    rules: &HealthRules,
) -> Result<Option<String>, GateFailure> {
    let stage_nodes = || {
        rollout
            .stages
            .get(rollout.stage)
            .map(|s| s.nodes.iter().map(ToString::to_string).collect())
            .unwrap_or_default()
    };
    match &obs.prometheus {
        PromOutcome::NotConfigured => Ok(None),
        PromOutcome::Unreachable { since_ms, error } => {
            let grace = i64::try_from(rules.prometheus_grace_ms).unwrap_or(i64::MAX);
            if obs.now_ms.saturating_sub(*since_ms) > grace {
                Err(GateFailure {
                    gate: Gate::Prometheus,
                    message: format!(
                        "prometheus unreachable for more than {}s: {error}",
                        rules.prometheus_grace_ms / 1000
                    ),
                    nodes: stage_nodes(),
                    pods: Vec::new(),
                })
            } else {
                Ok(Some(format!(
                    "prometheus unreachable (within grace): {error}"
                )))
            }
        }
        PromOutcome::Values(values) => {
            let bad: Vec<String> = values.iter().filter_map(check_problem).collect();
            if bad.is_empty() {
                Ok(Some(format!("{} prometheus checks passed", values.len())))
            } else {
                Err(GateFailure {
                    gate: Gate::Prometheus,
                    message: format!("prometheus checks failed: {}", bad.join(", ")),
                    nodes: stage_nodes(),
                    pods: Vec::new(),
                })
            }
        }
    }
}

fn check_problem(c: &CheckValue) -> Option<String> {
    let Some(v) = c.value else {
        // An empty result usually means the query or its labels are wrong; passing it
        // would make the check silently useless.
        return Some(format!("{}: empty result", c.name));
    };
    if v.is_nan() {
        // NaN compares false with every bound, so it would pass both max and min.
        return Some(format!(
            "{}: NaN (a series evaluated to NaN, e.g. 0/0; NaN never passes)",
            c.name
        ));
    }
    if let Some(max) = c.max
        && v > max
    {
        return Some(format!("{}: {v} > max {max}", c.name));
    }
    if let Some(min) = c.min
        && v < min
    {
        return Some(format!("{}: {v} < min {min}", c.name));
    }
    None
}
