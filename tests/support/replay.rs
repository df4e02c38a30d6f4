//! Replaying recorded pod states of one DaemonSet to check a staged rollout:
//! the most nodes of each stage down at once, stage order, and where the new
//! image came up. Pure (no cluster, no `super`), so the cluster tests
//! (`support::rollout`) and the chaos driver (`examples/fleet`) share one
//! definition of "staged within budget".
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// One pod state seen by the watcher.
#[derive(Debug, Clone)]
pub struct PodRecord {
    pub at: Instant,
    pub deleted: bool,
    pub name: String,
    pub uid: String,
    pub node: String,
    pub image: String,
    pub ready: bool,
    pub terminating: bool,
    pub created: Option<jiff::Timestamp>,
    /// Part of the watcher's initial list (the state before the test acted).
    pub initial: bool,
}

/// What the recorded pod states say about a rollout to `new_image` over `stages`
/// (node lists, in order, each with its `maxUnavailable`).
#[derive(Debug, Default)]
pub struct Replay {
    /// Per stage: the most nodes without a Ready pod at any one time.
    pub max_unavailable: Vec<usize>,
    /// Per node: index of the record at which it first had a Ready pod on `new_image`.
    pub ready_new_at: BTreeMap<String, usize>,
    /// Per node: index of the first record showing an old pod going away.
    pub first_delete_at: BTreeMap<String, usize>,
    /// Per node: creation time of the first pod on `new_image`.
    pub new_created: BTreeMap<String, jiff::Timestamp>,
    /// Nodes that had unavailable nodes in more than one stage at the same time.
    pub overlapping: Vec<String>,
    /// Per stage: nodes on `new_image` when the first old pod of that stage went.
    pub updated_when_stage_began: Vec<usize>,
}

pub fn replay(records: &[PodRecord], stages: &[Vec<String>], new_image: &str) -> Replay {
    let mut live: BTreeMap<String, PodRecord> = BTreeMap::new();
    let mut out = Replay {
        max_unavailable: vec![0; stages.len()],
        updated_when_stage_began: vec![usize::MAX; stages.len()],
        ..Replay::default()
    };
    for (i, r) in records.iter().enumerate() {
        if r.deleted {
            live.remove(&r.uid);
        } else {
            live.insert(r.uid.clone(), r.clone());
        }
        if r.initial {
            continue;
        }
        if (r.deleted || r.terminating) && r.image != new_image {
            out.first_delete_at.entry(r.node.clone()).or_insert(i);
            if let Some(s) = stages.iter().position(|s| s.contains(&r.node))
                && out.updated_when_stage_began[s] == usize::MAX
            {
                let updated: BTreeSet<&str> = live
                    .values()
                    .filter(|p| p.image == new_image && !p.terminating)
                    .map(|p| p.node.as_str())
                    .collect();
                out.updated_when_stage_began[s] = updated.len();
            }
        }
        if !r.deleted && !r.terminating && r.ready && r.image == new_image {
            out.ready_new_at.entry(r.node.clone()).or_insert(i);
        }
        if !r.deleted
            && r.image == new_image
            && let Some(c) = r.created
        {
            out.new_created.entry(r.node.clone()).or_insert(c);
        }
        let available: BTreeSet<&str> = live
            .values()
            .filter(|p| p.ready && !p.terminating)
            .map(|p| p.node.as_str())
            .collect();
        let mut stages_with_unavailable = Vec::new();
        for (s, nodes) in stages.iter().enumerate() {
            let down = nodes
                .iter()
                .filter(|n| !available.contains(n.as_str()))
                .count();
            out.max_unavailable[s] = out.max_unavailable[s].max(down);
            if down > 0 {
                stages_with_unavailable.push(s);
            }
        }
        if stages_with_unavailable.len() > 1 {
            out.overlapping
                .push(format!("record {i}: stages {stages_with_unavailable:?}"));
        }
    }
    out
}

/// Stage order and the budget from a replay, as messages (empty: staged): every
/// node of stage i has a Ready pod on the new image before any old pod of a later
/// stage goes away, new pods of later stages are created no earlier, and no stage
/// ever has more than its `maxUnavailable` nodes down.
pub fn staged_violations(
    rep: &Replay,
    stages: &[Vec<String>],
    max_unavailable: &[usize],
) -> Vec<String> {
    let mut out = Vec::new();
    for (s, nodes) in stages.iter().enumerate() {
        let max = max_unavailable.get(s).copied().unwrap_or(0);
        if rep.max_unavailable[s] > max {
            out.push(format!(
                "stage {s} had {} nodes unavailable at once, maxUnavailable {max}",
                rep.max_unavailable[s]
            ));
        }
        let mut stage_ready = Some(0);
        for n in nodes {
            if let Some(i) = rep.ready_new_at.get(n) {
                stage_ready = stage_ready.map(|r: usize| r.max(*i));
            } else {
                out.push(format!("node {n} never Ready on the new image"));
                stage_ready = None;
            }
        }
        let last_created = nodes.iter().filter_map(|n| rep.new_created.get(n)).max();
        for later in &stages[s + 1..] {
            for n in later {
                match (rep.first_delete_at.get(n), stage_ready) {
                    (None, _) => out.push(format!("old pod on {n} was never deleted")),
                    (Some(del), Some(ready)) if *del <= ready => out.push(format!(
                        "old pod on {n} (stage > {s}) went away at record {del}, before stage {s} was Ready on the new image (record {ready})"
                    )),
                    _ => {}
                }
                // New pods of later stages were created no earlier (1 s resolution).
                if let (Some(c), Some(last)) = (rep.new_created.get(n), last_created)
                    && c < last
                {
                    out.push(format!(
                        "new pod on {n} created at {c} before stage {s}'s last new pod ({last})"
                    ));
                }
            }
        }
    }
    if !rep.overlapping.is_empty() {
        out.push(format!(
            "nodes of two stages unavailable at once: {:?}",
            rep.overlapping
        ));
    }
    out
}

/// Asserts stage order and the budget from a replay (see [`staged_violations`]).
pub fn assert_staged(rep: &Replay, stages: &[Vec<String>], max_unavailable: &[usize]) {
    let v = staged_violations(rep, stages, max_unavailable);
    assert!(v.is_empty(), "not staged within budget:\n{}", v.join("\n"));
}
