//! Turning a policy's stage list and the live node list into concrete stages.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::NodeName;
use crate::manifest::policy::{Approval, RolloutPolicySpec};

/// Name of the implicit last stage that takes every node no explicit stage claimed.
pub const REMAINING_STAGE: &str = "remaining";

/// Pool wildcard in `StageSpec::pools`.
pub const ALL_POOLS: &str = "*";

/// A node the DaemonSet runs on, with the value of its pool label (if any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    pub name: String,
    pub pool: Option<String>,
}

impl NodeInfo {
    pub fn new(name: impl Into<String>, pool: Option<&str>) -> Self {
        Self {
            name: name.into(),
            pool: pool.map(String::from),
        }
    }
}

/// One resolved stage: a fixed set of nodes rolled out together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stage {
    pub name: String,
    /// Sorted, no duplicates.
    pub nodes: Vec<NodeName>,
    /// Already resolved against the stage's node count; at least 1.
    pub max_unavailable: usize,
    pub bake_ms: u64,
    pub manual_approval: bool,
}

impl Stage {
    pub fn contains(&self, node: &str) -> bool {
        self.nodes.binary_search_by(|n| (**n).cmp(node)).is_ok()
    }

    /// Keeps `nodes` sorted so `contains` can binary-search.
    pub(crate) fn insert_node(&mut self, node: &str) {
        if let Err(at) = self.nodes.binary_search_by(|n| (**n).cmp(node)) {
            self.nodes.insert(at, NodeName::from(node));
        }
    }
}

/// Resolves the policy's stages against the nodes the DaemonSet runs on.
///
/// * Every node lands in exactly one stage: the first one that claims it.
/// * A stage claims the still-unclaimed nodes of the pools it names, `"*"` standing
///   for every pool (in pool-name order). Nodes without a pool are never claimed by
///   a named stage.
/// * `nodes: N` (a canary) claims only N of those nodes, taken round-robin across
///   the stage's pools in the order the stage names them, each pool's nodes ordered
///   by fewest `restarts` first, then by name, so canaries land on the healthiest
///   nodes of every pool.
/// * Unclaimed nodes (including nodes without a pool) go to a final implicit stage
///   named [`REMAINING_STAGE`] with `maxUnavailable: 1`, no bake and no approval.
/// * Without any stage in the policy there is one stage per pool, named after the
///   pool, in pool-name order, each with `maxUnavailable: 1`, no bake and no
///   approval, followed by [`REMAINING_STAGE`] for nodes without a pool.
/// * Stages that end up empty are dropped.
///
/// `maxUnavailable` resolves against the stage's own node count.
pub fn resolve_stages(
    spec: &RolloutPolicySpec,
    nodes: &[NodeInfo],
    restarts: &BTreeMap<String, u32>,
) -> Vec<Stage> {
    // A node listed twice keeps its first pool; deterministic regardless of input order.
    let mut pool_of: BTreeMap<&str, Option<&str>> = BTreeMap::new();
    for n in nodes {
        pool_of.entry(n.name.as_str()).or_insert(n.pool.as_deref());
    }
    let mut by_pool: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, pool) in &pool_of {
        if let Some(pool) = pool {
            by_pool.entry(pool).or_default().push(name);
        }
    }
    let restarts_of = |n: &str| restarts.get(n).copied().unwrap_or(0);
    for members in by_pool.values_mut() {
        members.sort_by(|a, b| restarts_of(a).cmp(&restarts_of(b)).then_with(|| a.cmp(b)));
    }

    let mut claimed: BTreeSet<&str> = BTreeSet::new();
    let mut stages = Vec::new();

    if spec.stages.is_empty() {
        for (pool, members) in &by_pool {
            claimed.extend(members.iter().copied());
            stages.push(make_stage(
                (*pool).to_string(),
                members.clone(),
                1,
                0,
                false,
            ));
        }
    } else {
        for s in &spec.stages {
            let mut pools: Vec<&str> = Vec::new();
            for p in &s.pools {
                if p == ALL_POOLS {
                    pools.extend(by_pool.keys().copied());
                } else {
                    pools.push(p.as_str());
                }
            }
            let mut seen = BTreeSet::new();
            pools.retain(|p| seen.insert(*p));

            let mut queues: Vec<Vec<&str>> = pools
                .iter()
                .map(|p| {
                    by_pool
                        .get(p)
                        .map(|m| m.iter().copied().filter(|n| !claimed.contains(n)).collect())
                        .unwrap_or_default()
                })
                .collect();
            let picked: Vec<&str> = match s.nodes {
                None => queues.concat(),
                Some(limit) => round_robin(&mut queues, limit as usize),
            };
            claimed.extend(picked.iter().copied());
            let count = picked.len();
            let bake_ms = s
                .bake
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            stages.push(make_stage(
                s.name.clone(),
                picked,
                s.max_unavailable.resolve(count),
                bake_ms,
                s.approval == Some(Approval::Manual),
            ));
        }
    }

    let rest: Vec<&str> = pool_of
        .keys()
        .copied()
        .filter(|n| !claimed.contains(n))
        .collect();
    stages.push(make_stage(REMAINING_STAGE.to_string(), rest, 1, 0, false));
    stages.retain(|s| !s.nodes.is_empty());
    stages
}

fn round_robin<'a>(queues: &mut [Vec<&'a str>], limit: usize) -> Vec<&'a str> {
    let mut picked = Vec::new();
    let mut round = 0;
    while picked.len() < limit {
        let mut any = false;
        for q in queues.iter() {
            if picked.len() == limit {
                break;
            }
            if let Some(n) = q.get(round) {
                picked.push(*n);
                any = true;
            }
        }
        if !any {
            break;
        }
        round += 1;
    }
    picked
}

fn make_stage(
    name: String,
    nodes: Vec<&str>,
    max_unavailable: usize,
    bake_ms: u64,
    manual_approval: bool,
) -> Stage {
    let mut nodes: Vec<NodeName> = nodes.into_iter().map(NodeName::from).collect();
    nodes.sort();
    nodes.dedup();
    Stage {
        name,
        nodes,
        max_unavailable: max_unavailable.max(1),
        bake_ms,
        manual_approval,
    }
}
