//! Reading the `DaemonSetRollout` record nodewave keeps for a DaemonSet: what the
//! tests assert on besides the live objects themselves.
#![allow(dead_code, clippy::missing_panics_doc, clippy::unwrap_used)]

use std::time::Duration;

use kube::api::Api;
use nodewave::record::{DaemonSetRollout, RecordState, codec};

use super::{TestEnv, wait_for};

/// The record of DaemonSet `name`, decoded.
#[derive(Debug, Clone)]
pub struct Rec {
    pub object: DaemonSetRollout,
    /// `status.phase`: Synced, Progressing, RolledBack, ...
    pub status: String,
    pub message: String,
    pub applied: Option<String>,
    pub last_good: Option<String>,
    pub failed: Vec<String>,
    /// `status.rolloutPhase`: Applying, Updating, AwaitingApproval, ...
    pub rollout_phase: String,
    pub state: Option<RecordState>,
}

impl Rec {
    pub fn failed_contains(&self, commit: &str) -> bool {
        self.failed.iter().any(|c| c == commit)
    }
}

pub async fn get(env: &TestEnv, name: &str) -> Option<Rec> {
    let api: Api<DaemonSetRollout> = Api::namespaced(env.client.clone(), &env.ns);
    let object = api.get_opt(name).await.unwrap()?;
    let st = object.status.clone().unwrap_or_default();
    let state = (!st.state.is_empty()).then(|| codec::decode(&st.state).unwrap());
    Some(Rec {
        status: st.phase.clone(),
        message: st.message.clone(),
        applied: st.applied_commit.clone(),
        last_good: st.last_good_commit.clone(),
        failed: st.failed_commits.iter().map(|f| f.commit.clone()).collect(),
        rollout_phase: st.rollout_phase.clone(),
        state,
        object,
    })
}

/// Waits until the record of `name` has `status` (Synced, RolledBack, ...).
pub async fn wait_status(env: &TestEnv, name: &str, status: &str, timeout: Duration) -> Rec {
    wait_for(
        &format!("DaemonSet {name} status {status}"),
        timeout,
        || async {
            match get(env, name).await {
                Some(r) if r.status == status => Ok(Some(r)),
                Some(r) => Err(format!(
                    "status {:?} ({}), applied {:?}, message {:?}",
                    r.status, r.rollout_phase, r.applied, r.message
                )),
                None => Err("no DaemonSetRollout record".into()),
            }
        },
    )
    .await
}

/// Waits until the record says `commit` is applied with `status`; Synced also
/// needs the commit recorded as the last good one.
pub async fn wait_commit_status(
    env: &TestEnv,
    name: &str,
    commit: &str,
    status: &str,
    timeout: Duration,
) -> Rec {
    wait_for(&format!("{name} {status} at {commit}"), timeout, || async {
        let r = get(env, name).await.ok_or("no DaemonSetRollout record")?;
        let good = status != "Synced" || r.last_good.as_deref() == Some(commit);
        if r.status == status && r.applied.as_deref() == Some(commit) && good {
            Ok(Some(r))
        } else {
            Err(format!(
                "status {:?} ({}), applied {:?}, last good {:?}, message {:?}",
                r.status, r.rollout_phase, r.applied, r.last_good, r.message
            ))
        }
    })
    .await
}
