//! The `DaemonSetRollout` resource as Rust types. The CRD itself (schema, printer
//! columns, status subresource) is `deploy/crds/daemonsetrollouts.yaml`; a unit
//! test checks that the two agree on every field.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use super::FailedCommit;

pub const API_GROUP: &str = "nodewave.io";
pub const API_VERSION: &str = "nodewave.io/v1alpha1";
pub const KIND: &str = "DaemonSetRollout";
pub const PLURAL: &str = "daemonsetrollouts";

/// One record per managed DaemonSet, same namespace and name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonSetRollout {
    #[serde(default = "api_version")]
    pub api_version: String,
    #[serde(default = "kind")]
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: RecordSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RecordStatus>,
}

impl Default for DaemonSetRollout {
    fn default() -> Self {
        Self {
            api_version: api_version(),
            kind: kind(),
            metadata: ObjectMeta::default(),
            spec: RecordSpec::default(),
            status: None,
        }
    }
}

fn api_version() -> String {
    API_VERSION.to_string()
}

fn kind() -> String {
    KIND.to_string()
}

/// What users (or `nodewave rollout ...`) write: the controls of the rollout.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordSpec {
    /// Name of the DaemonSet (same namespace).
    #[serde(default)]
    pub daemon_set: String,
    /// Stop replacing pods; the rollout keeps its place.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// Abort the rollout of this commit: roll back to the last good commit and
    /// record the commit as failed. Naming the commit keeps an old request from
    /// aborting a later rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_commit: Option<String>,
    /// Stages up to `stage` (0-based) of the rollout of `commit` may start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_stage: Option<StageApproval>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageApproval {
    pub commit: String,
    pub stage: u32,
}

/// What nodewave writes. Everything but `state` is a summary for people and
/// `kubectl`; `state` (see `codec`) is what nodewave reads back.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordStatus {
    /// `Synced`, `Progressing`, `RolledBack`, ...
    #[serde(default)]
    pub phase: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The commit being rolled out, else the commit applied last (12 characters).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub commit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_good_commit: Option<String>,
    /// `2/3 general` while a rollout runs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stage: String,
    /// Planner phase of the rollout in progress (`Updating`, `Baking`, ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rollout_phase: String,
    /// `forward` or `rollback` while something is open.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rollout_kind: String,
    #[serde(default)]
    pub updated: i64,
    #[serde(default)]
    pub ready: i64,
    #[serde(default)]
    pub total: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<PoolStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_commits: Vec<FailedCommit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_label: Option<String>,
    /// When nodewave last wrote this status (RFC 3339).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub observed_at: String,
    /// The encoded `RecordState`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
}

/// Pods of one node pool: on the rollout's revision, Ready among those, all.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    pub name: String,
    pub updated: i64,
    pub ready: i64,
    pub total: i64,
}

impl kube::Resource for DaemonSetRollout {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind((): &()) -> Cow<'_, str> {
        Cow::Borrowed(KIND)
    }

    fn group((): &()) -> Cow<'_, str> {
        Cow::Borrowed(API_GROUP)
    }

    fn version((): &()) -> Cow<'_, str> {
        Cow::Borrowed("v1alpha1")
    }

    fn api_version((): &()) -> Cow<'_, str> {
        Cow::Borrowed(API_VERSION)
    }

    fn plural((): &()) -> Cow<'_, str> {
        Cow::Borrowed(PLURAL)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The property names of a schema object.
    fn properties(schema: &serde_json::Value) -> std::collections::BTreeSet<String> {
        schema["properties"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Every field the Rust types write is declared in the shipped CRD (the API
    /// server would drop undeclared ones), and every declared field exists.
    #[test]
    fn the_shipped_crd_declares_exactly_the_fields_nodewave_writes() {
        let crd = crate::record::client::crd().unwrap();
        let version = &crd["spec"]["versions"][0];
        assert_eq!(crd["spec"]["group"], API_GROUP);
        assert_eq!(crd["spec"]["names"]["kind"], KIND);
        assert_eq!(crd["spec"]["names"]["plural"], PLURAL);
        assert_eq!(version["subresources"]["status"], serde_json::json!({}));
        let schema = &version["schema"]["openAPIV3Schema"];
        let full = RecordStatus {
            message: "m".into(),
            commit: "c".into(),
            applied_commit: Some("a".into()),
            last_good_commit: Some("g".into()),
            stage: "s".into(),
            rollout_phase: "p".into(),
            rollout_kind: "forward".into(),
            pools: vec![PoolStatus::default()],
            failed_commits: vec![FailedCommit {
                commit: "c".into(),
                hash: "h".into(),
                reason: "r".into(),
                at: "t".into(),
            }],
            pool_label: Some("l".into()),
            observed_at: "o".into(),
            state: "v1.".into(),
            ..RecordStatus::default()
        };
        let written = serde_json::to_value(&full).unwrap();
        let keys: std::collections::BTreeSet<String> =
            written.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, properties(&schema["properties"]["status"]));
        let spec = serde_json::to_value(RecordSpec {
            daemon_set: "d".into(),
            paused: true,
            abort_commit: Some("c".into()),
            approved_stage: Some(StageApproval {
                commit: "c".into(),
                stage: 1,
            }),
        })
        .unwrap();
        let keys: std::collections::BTreeSet<String> =
            spec.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, properties(&schema["properties"]["spec"]));
        assert_eq!(
            properties(&schema["properties"]["status"]["properties"]["pools"]["items"]),
            properties(
                &serde_json::json!({"properties": serde_json::to_value(PoolStatus::default()).unwrap()})
            )
        );
    }
}
