//! `nodewave rollout pause|resume|abort|approve`: control annotations on a DaemonSet.

use std::collections::BTreeMap;
use std::process::ExitCode;

use super::KubeArgs;
use crate::cluster::{self, Cluster};
use crate::keys;
use crate::manifest::ObjectKey;
use crate::metrics::Metrics;
use crate::reconciler::DaemonSetState;
use crate::rollout::Phase;

#[derive(Debug, clap::Subcommand)]
pub enum RolloutCommand {
    /// Stop deleting pods; the rollout keeps its place.
    Pause(Target),
    /// Continue a paused rollout.
    Resume(Target),
    /// Roll back to the last good commit now, and mark the commit as failed.
    Abort(Target),
    /// Let a stage with `approval: manual` start.
    Approve(Target),
}

#[derive(Debug, clap::Args)]
pub struct Target {
    /// The DaemonSet, as NAMESPACE/NAME.
    #[arg(value_name = "NAMESPACE/NAME")]
    pub daemonset: String,
    #[command(flatten)]
    pub kube: KubeArgs,
}

fn parse_key(s: &str) -> Result<ObjectKey, String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(ObjectKey::new(ns, name))
        }
        _ => Err(format!("expected NAMESPACE/NAME, got {s:?}")),
    }
}

pub async fn run(cmd: RolloutCommand) -> ExitCode {
    match control(cmd).await {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn control(cmd: RolloutCommand) -> Result<String, String> {
    let (target, verb) = match &cmd {
        RolloutCommand::Pause(t) => (t, "pause"),
        RolloutCommand::Resume(t) => (t, "resume"),
        RolloutCommand::Abort(t) => (t, "abort"),
        RolloutCommand::Approve(t) => (t, "approve"),
    };
    let key = parse_key(&target.daemonset)?;
    let client = cluster::client(target.kube.kubeconfig.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    let cluster = Cluster::new(client, Metrics::new());
    let ds = cluster
        .get_daemonset(&key)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("DaemonSet {key} not found"))?;
    let state = DaemonSetState::of(&ds);
    let mut ann: BTreeMap<&str, Option<String>> = BTreeMap::new();
    let msg = match verb {
        "pause" => {
            ann.insert(keys::CONTROL_PAUSED, Some("true".into()));
            format!("{key}: pause requested; nodewave stops replacing pods at its next step")
        }
        "resume" => {
            ann.insert(keys::CONTROL_PAUSED, None);
            format!("{key}: resume requested")
        }
        "abort" => {
            let active = state
                .rollout
                .as_ref()
                .is_some_and(|r| !r.phase.is_terminal());
            if !active {
                return Err(format!("{key} has no rollout in progress to abort"));
            }
            ann.insert(keys::CONTROL_ABORT, Some("true".into()));
            format!("{key}: abort requested; nodewave rolls back to the last good commit")
        }
        _ => {
            let Some(r) = state
                .rollout
                .as_ref()
                .filter(|r| matches!(r.phase, Phase::AwaitingApproval))
            else {
                return Err(format!("{key} has no stage awaiting approval"));
            };
            let name = r.stages.get(r.stage).map_or("?", |s| s.name.as_str());
            ann.insert(keys::CONTROL_APPROVED_STAGE, Some(r.stage.to_string()));
            format!("{key}: stage {} ({name}) approved", r.stage)
        }
    };
    cluster
        .annotate(&key, &ann)
        .await
        .map_err(|e| e.to_string())?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_namespace_slash_name() {
        assert_eq!(
            parse_key("logging/fluent-bit").unwrap(),
            ObjectKey::new("logging", "fluent-bit")
        );
        assert!(parse_key("fluent-bit").is_err());
        assert!(parse_key("a/b/c").is_err());
        assert!(parse_key("/b").is_err());
    }
}
