//! `nodewave status`: what nodewave manages, read from the cluster (works from a
//! laptop: everything is recorded on the DaemonSets themselves).

use std::process::ExitCode;

use kube::ResourceExt;
use serde::Serialize;

use super::KubeArgs;
use crate::cluster::{self, Cluster};
use crate::keys;
use crate::metrics::Metrics;
use crate::reconciler::{DaemonSetState, PoolProgress, key_of, progress_by_pool};
use crate::rollout::{Phase, RolloutKind};

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
    pub applied_at: Option<String>,
    pub last_good_commit: Option<String>,
    pub failed_commits: Vec<String>,
    pub rollout: Option<RolloutRow>,
    pub pools: std::collections::BTreeMap<String, PoolProgress>,
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
    match collect(&args).await {
        Ok(rows) => {
            if args.output == "json" {
                match serde_json::to_string_pretty(&rows) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                }
            } else {
                print_table(&rows);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

pub fn phase_name(p: &Phase) -> String {
    match p {
        Phase::Failed { failure } => format!("Failed ({})", failure.gate.metric_label()),
        other => other.name().to_string(),
    }
}

async fn collect(args: &StatusArgs) -> Result<Vec<Row>, String> {
    let client = cluster::client(args.kube.kubeconfig.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    let cluster = Cluster::new(client, Metrics::new());
    let nodes = cluster.nodes().await.map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for ds in cluster
        .managed_daemonsets()
        .await
        .map_err(|e| e.to_string())?
    {
        let key = key_of(&ds);
        if args.namespace.as_ref().is_some_and(|n| n != &key.namespace) {
            continue;
        }
        let st = DaemonSetState::of(&ds);
        let pods = cluster.pods_of(&ds).await.map_err(|e| e.to_string())?;
        let pool_label = ds.annotations().get(keys::POOL_LABEL).cloned();
        let pools = st
            .rollout
            .as_ref()
            .map(|r| progress_by_pool(r, &pods, &nodes, pool_label.as_deref()))
            .unwrap_or_default();
        rows.push(Row {
            namespace: key.namespace.clone(),
            daemonset: key.name.clone(),
            status: st
                .status
                .map_or_else(|| "Unknown".to_string(), |s| s.as_str().to_string()),
            message: st.message.clone(),
            applied_commit: st.applied_commit.clone(),
            applied_at: st.applied_at.clone(),
            last_good_commit: st.last_good.clone(),
            failed_commits: st.failed.iter().map(|f| f.commit.clone()).collect(),
            rollout: st.rollout.as_ref().map(|r| RolloutRow {
                kind: match &r.kind {
                    RolloutKind::Forward => "forward".into(),
                    RolloutKind::Rollback { .. } => "rollback".into(),
                },
                commit: r.commit.clone(),
                phase: phase_name(&r.phase),
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
            pools,
        });
    }
    Ok(rows)
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
                format!(
                    "{} {} {}/{} {}",
                    ro.kind,
                    ro.phase,
                    (ro.stage + 1).min(ro.stages),
                    ro.stages,
                    ro.stage_name
                )
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
    }
}
