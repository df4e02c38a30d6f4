//! `nodewave status`: what nodewave manages, read from the DaemonSetRollout
//! records (works from a laptop: everything is recorded in the cluster).

use std::collections::BTreeMap;
use std::process::ExitCode;

use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde::Serialize;

use super::KubeArgs;
use crate::cluster;
use crate::keys;
use crate::plan::PoolProgress;
use crate::record::{self, DaemonSetRollout, RecordState, Work};
use crate::rollout::RolloutKind;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json"])]
    pub output: String,
    /// Only this namespace.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub kube: KubeArgs,
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub namespace: String,
    pub daemonset: String,
    pub status: String,
    pub message: Option<String>,
    pub applied_commit: Option<String>,
    pub observed_at: Option<String>,
    pub last_good_commit: Option<String>,
    pub failed_commits: Vec<String>,
    pub rollout: Option<RolloutRow>,
    pub pools: BTreeMap<String, PoolProgress>,
    pub source_repo: Option<String>,
    pub source_path: Option<String>,
    /// Set when the record cannot be decoded (nodewave does not act on it).
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RolloutRow {
    pub kind: String,
    pub commit: String,
    pub phase: String,
    pub stage: usize,
    pub stage_name: String,
    pub stages: usize,
    pub last_gate: Option<String>,
}

fn short(c: &str) -> String {
    c.chars().take(8).collect()
}

pub async fn run(args: StatusArgs) -> ExitCode {
    let objects = match collect_objects(&args).await {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match collect(&args).await {
        Ok(rows) => {
            if args.output == "json" {
                let out = serde_json::json!({"daemonsets": rows, "objects": objects});
                match serde_json::to_string_pretty(&out) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                }
            } else {
                print_table(&rows);
                print_objects(&objects);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn rollout_row(state: &RecordState) -> Option<RolloutRow> {
    match &state.work {
        Work::Rolling { rollout: r, .. } => Some(RolloutRow {
            kind: match &r.kind {
                RolloutKind::Forward => "forward".into(),
                RolloutKind::Rollback { .. } => "rollback".into(),
            },
            commit: r.commit.clone(),
            phase: record::phase_name(&r.phase),
            stage: r.stage,
            stage_name: r
                .stages
                .get(r.stage)
                .map(|s| s.name.clone())
                .unwrap_or_default(),
            stages: r.stages.len(),
            last_gate: r.last_gate.as_ref().map(|g| {
                format!(
                    "{} {}",
                    if g.passed { "passed:" } else { "FAILED:" },
                    g.message
                )
            }),
        }),
        Work::Applying { target, mode, .. } => Some(RolloutRow {
            kind: match mode {
                record::ApplyMode::Rollback { .. } => "rollback".into(),
                _ => "forward".into(),
            },
            commit: target.commit.clone(),
            phase: "Applying".into(),
            stage: 0,
            stage_name: String::new(),
            stages: 0,
            last_gate: None,
        }),
        Work::Idle | Work::Pruning => None,
    }
}

/// One row per record.
pub fn row_of(r: &DaemonSetRollout) -> Row {
    let ann = r.annotations();
    let status = r.status.clone().unwrap_or_default();
    let decoded = if status.state.is_empty() {
        Ok(RecordState::default())
    } else {
        record::codec::decode(&status.state)
    };
    let pools = status
        .pools
        .iter()
        .map(|p| {
            let n = |v: i64| usize::try_from(v).unwrap_or(0);
            (
                p.name.clone(),
                PoolProgress {
                    updated: n(p.updated),
                    ready: n(p.ready),
                    total: n(p.total),
                },
            )
        })
        .collect();
    let (rollout, error) = match &decoded {
        Ok(s) => (rollout_row(s), None),
        Err(e) => (None, Some(e.to_string())),
    };
    Row {
        namespace: r.namespace().unwrap_or_default(),
        daemonset: r.name_any(),
        status: if status.phase.is_empty() {
            "Unknown".into()
        } else {
            status.phase.clone()
        },
        message: (!status.message.is_empty()).then(|| status.message.clone()),
        applied_commit: status.applied_commit.clone(),
        observed_at: (!status.observed_at.is_empty()).then(|| status.observed_at.clone()),
        last_good_commit: status.last_good_commit.clone(),
        failed_commits: status
            .failed_commits
            .iter()
            .map(|f| f.commit.clone())
            .collect(),
        rollout,
        pools,
        source_repo: ann.get(keys::SOURCE_REPO).cloned(),
        source_path: ann.get(keys::SOURCE_PATH).cloned(),
        error,
    }
}

/// A companion object nodewave applied (any kind but DaemonSet).
#[derive(Debug, Serialize)]
pub struct ObjectRow {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub source_file: Option<String>,
}

/// Companion objects carrying nodewave's label, of the built-in kinds it
/// manages by default (custom resources are in `/status`).
async fn collect_objects(args: &StatusArgs) -> Result<Vec<ObjectRow>, String> {
    let client = cluster::client(args.kube.kubeconfig.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    let cluster = cluster::Cluster::new(client, crate::metrics::Metrics::new());
    let mut rows = Vec::new();
    for (api_version, kind) in crate::manifest::objects::PRUNABLE_KINDS {
        let Some(served) = cluster
            .served_kind(api_version, kind)
            .await
            .map_err(|e| e.to_string())?
        else {
            continue;
        };
        let list = match cluster.managed_objects(&served).await {
            Ok(list) => list,
            // Not allowed to list this kind: show what can be seen.
            Err(e) if e.to_string().contains("403") => continue,
            Err(e) => return Err(e.to_string()),
        };
        for o in list {
            let namespace = o.metadata.namespace.clone().unwrap_or_default();
            if args.namespace.as_ref().is_some_and(|n| *n != namespace) {
                continue;
            }
            rows.push(ObjectRow {
                kind: (*kind).to_string(),
                namespace,
                name: o.name_any(),
                source_file: o.annotations().get(keys::SOURCE_FILE).cloned(),
            });
        }
    }
    Ok(rows)
}

async fn collect(args: &StatusArgs) -> Result<Vec<Row>, String> {
    let client = cluster::client(args.kube.kubeconfig.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    let api: Api<DaemonSetRollout> = match &args.namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let list = api
        .list(&ListParams::default().labels(&format!(
            "{}={}",
            keys::MANAGED_BY_LABEL,
            keys::MANAGED_BY_VALUE
        )))
        .await
        .map_err(|e| format!("cannot list DaemonSetRollout records: {e}"))?;
    let mut rows: Vec<Row> = list.items.iter().map(row_of).collect();
    rows.sort_by(|a, b| (&a.namespace, &a.daemonset).cmp(&(&b.namespace, &b.daemonset)));
    Ok(rows)
}

fn print_objects(objects: &[ObjectRow]) {
    if objects.is_empty() {
        return;
    }
    println!();
    println!("{:<48} {:<44} SOURCE", "OBJECT", "NAMESPACE/NAME");
    for o in objects {
        let name = if o.namespace.is_empty() {
            o.name.clone()
        } else {
            format!("{}/{}", o.namespace, o.name)
        };
        println!(
            "{:<48} {:<44} {}",
            o.kind,
            name,
            o.source_file.as_deref().unwrap_or("-")
        );
    }
}

fn print_table(rows: &[Row]) {
    if rows.is_empty() {
        println!("nodewave manages no DaemonSets in this cluster yet");
        return;
    }
    println!(
        "{:<36} {:<12} {:<9} {:<9} {:<28} POOLS (updated/ready/total)",
        "DAEMONSET", "STATUS", "APPLIED", "LAST-GOOD", "ROLLOUT"
    );
    for r in rows {
        let rollout = r.rollout.as_ref().map_or_else(
            || "-".to_string(),
            |ro| {
                if ro.stages == 0 {
                    format!("{} {}", ro.kind, ro.phase)
                } else {
                    format!(
                        "{} {} {}/{} {}",
                        ro.kind,
                        ro.phase,
                        (ro.stage + 1).min(ro.stages),
                        ro.stages,
                        ro.stage_name
                    )
                }
            },
        );
        let pools = r
            .pools
            .iter()
            .map(|(p, c)| format!("{p}={}/{}/{}", c.updated, c.ready, c.total))
            .collect::<Vec<_>>()
            .join(" ");
        println!(
            "{:<36} {:<12} {:<9} {:<9} {:<28} {}",
            format!("{}/{}", r.namespace, r.daemonset),
            r.status,
            r.applied_commit.as_deref().map_or("-".into(), short),
            r.last_good_commit.as_deref().map_or("-".into(), short),
            rollout,
            if pools.is_empty() { "-".into() } else { pools }
        );
        if let Some(g) = r.rollout.as_ref().and_then(|ro| ro.last_gate.as_ref()) {
            println!("    last gate: {g}");
        }
        if let Some(m) = &r.message {
            println!("    {m}");
        }
        if let Some(e) = &r.error {
            println!("    RECORD ERROR: {e}");
        }
    }
}
