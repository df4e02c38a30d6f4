//! `nodewave rollout pause|resume|abort|approve`: the controls in the spec of a
//! DaemonSet's `DaemonSetRollout` record (what `kubectl patch dsrollout` does too).

use std::process::ExitCode;

use kube::api::Api;
use serde_json::json;

use super::KubeArgs;
use crate::cluster;
use crate::manifest::ObjectKey;
use crate::record::client::{Records, WriteError};
use crate::record::{self, DaemonSetRollout};
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
    let api: Api<DaemonSetRollout> = Api::namespaced(client.clone(), &key.namespace);
    let records = Records::new(client, "", "");
    // A conflict means nodewave wrote the record in between: read it again.
    for _ in 0..5 {
        let current = api
            .get_opt(&key.name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!("{key}: no DaemonSetRollout record; is it managed by nodewave?")
            })?;
        let (spec, msg) = request(&key, verb, &current)?;
        match records.patch_spec(&current, &spec).await {
            Ok(_) => return Ok(msg),
            Err(WriteError::Conflict(_)) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(format!("{key}: the record kept changing; try again"))
}

/// The spec change for `verb`, and what to tell the user.
fn request(
    key: &ObjectKey,
    verb: &str,
    current: &DaemonSetRollout,
) -> Result<(serde_json::Value, String), String> {
    let state = current
        .status
        .as_ref()
        .filter(|s| !s.state.is_empty())
        .map(|s| record::codec::decode(&s.state))
        .transpose()
        .map_err(|e| format!("{key}: {e}"))?
        .unwrap_or_default();
    let rollout = state.rollout();
    Ok(match verb {
        "pause" => (
            json!({"paused": true}),
            format!("{key}: pause requested; nodewave stops replacing pods at once"),
        ),
        "resume" => (json!({"paused": null}), format!("{key}: resume requested")),
        "abort" => {
            let Some(r) = rollout.filter(|r| !r.phase.is_terminal() && !r.is_rollback()) else {
                return Err(format!("{key} has no rollout in progress to abort"));
            };
            (
                json!({"abortCommit": r.commit}),
                format!(
                    "{key}: abort of commit {} requested; nodewave rolls back to the last good commit",
                    record::short(&r.commit)
                ),
            )
        }
        _ => {
            let Some(r) = rollout.filter(|r| matches!(r.phase, Phase::AwaitingApproval)) else {
                return Err(format!("{key} has no stage awaiting approval"));
            };
            let name = r.stages.get(r.stage).map_or("?", |s| s.name.as_str());
            (
                json!({"approvedStage": {"commit": r.commit, "stage": r.stage}}),
                format!("{key}: stage {} ({name}) approved", r.stage + 1),
            )
        }
    })
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
