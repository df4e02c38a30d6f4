//! Reading and writing records, every write conditional on the `resourceVersion`
//! the caller computed it from: a `409 Conflict` means someone else (a user
//! changing `spec`, another nodewave) wrote in between, and the caller must not
//! act on its decision but recompute from the newer record.
//!
//! Also installs the CRD when it is missing or older than this binary's.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::wait::Condition as _;
use kube::{Client, ResourceExt};
use serde_json::Value;

use super::{DaemonSetRollout, RecordSpec, RecordStatus};
use crate::keys;
use crate::manifest::ObjectKey;

/// The CRD this binary writes records for (also shipped in `deploy/crds/`).
pub const CRD_YAML: &str = include_str!("../../deploy/crds/daemonsetrollouts.yaml");
pub const CRD_NAME: &str = "daemonsetrollouts.nodewave.io";
/// Annotation on the CRD naming its schema revision; bumped with every change.
pub const CRD_REVISION_ANNOTATION: &str = "nodewave.io/crd-revision";

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The record changed since it was read: recompute, do not act.
    #[error("the rollout record {0} changed since it was read (conflict); recomputing")]
    Conflict(String),
    #[error("Kubernetes API {verb} DaemonSetRollout {what} failed: {source}")]
    Api {
        verb: &'static str,
        what: String,
        #[source]
        source: Box<kube::Error>,
    },
}

impl WriteError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Conflict(_) => "record_conflict",
            Self::Api { .. } => "kube_api",
        }
    }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

fn api_err(verb: &'static str, key: &ObjectKey, e: kube::Error) -> WriteError {
    if is_status(&e, 409) {
        WriteError::Conflict(key.to_string())
    } else {
        WriteError::Api {
            verb,
            what: key.to_string(),
            source: Box::new(e),
        }
    }
}

/// Writes records for one source (repository and path).
#[derive(Clone)]
pub struct Records {
    client: Client,
    repo: String,
    path: String,
}

impl Records {
    pub fn new(client: Client, repo: impl Into<String>, path: impl Into<String>) -> Self {
        Self {
            client,
            repo: repo.into(),
            path: path.into(),
        }
    }

    fn api(&self, ns: &str) -> Api<DaemonSetRollout> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Creates the record (spec only; the status is written next, conditionally
    /// on the created object's version). `AlreadyExists` is a conflict.
    pub async fn create(&self, key: &ObjectKey) -> Result<DaemonSetRollout, WriteError> {
        let mut obj = DaemonSetRollout {
            spec: RecordSpec {
                daemon_set: key.name.clone(),
                ..RecordSpec::default()
            },
            ..DaemonSetRollout::default()
        };
        obj.metadata.name = Some(key.name.clone());
        obj.metadata.namespace = Some(key.namespace.clone());
        obj.labels_mut().insert(
            keys::MANAGED_BY_LABEL.to_string(),
            keys::MANAGED_BY_VALUE.to_string(),
        );
        let ann = obj.annotations_mut();
        ann.insert(keys::SOURCE_REPO.to_string(), self.repo.clone());
        ann.insert(keys::SOURCE_PATH.to_string(), self.path.clone());
        self.api(&key.namespace)
            .create(&PostParams::default(), &obj)
            .await
            .map_err(|e| api_err("create", key, e))
    }

    /// Replaces the status of `current` (which carries the resourceVersion the
    /// decision was computed from). Fails with [`WriteError::Conflict`] when the
    /// record changed in between.
    pub async fn write_status(
        &self,
        current: &DaemonSetRollout,
        status: RecordStatus,
    ) -> Result<DaemonSetRollout, WriteError> {
        let key = ObjectKey::new(current.namespace().unwrap_or_default(), current.name_any());
        let mut obj = current.clone();
        obj.status = Some(status);
        obj.metadata.managed_fields = None;
        self.api(&key.namespace)
            .replace_status(&key.name, &PostParams::default(), &obj)
            .await
            .map_err(|e| api_err("replace_status", &key, e))
    }

    /// Deletes the record if it is still at `current`'s resourceVersion.
    pub async fn delete(&self, current: &DaemonSetRollout) -> Result<(), WriteError> {
        let key = ObjectKey::new(current.namespace().unwrap_or_default(), current.name_any());
        let dp = DeleteParams::default().preconditions(Preconditions {
            uid: current.metadata.uid.clone(),
            resource_version: current.metadata.resource_version.clone(),
        });
        match self.api(&key.namespace).delete(&key.name, &dp).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(api_err("delete", &key, e)),
        }
    }

    /// Sets the spec controls (used by `nodewave rollout ...`), conditional on
    /// the version read.
    pub async fn patch_spec(
        &self,
        current: &DaemonSetRollout,
        spec: &Value,
    ) -> Result<DaemonSetRollout, WriteError> {
        let key = ObjectKey::new(current.namespace().unwrap_or_default(), current.name_any());
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": current.metadata.resource_version},
            "spec": spec,
        });
        self.api(&key.namespace)
            .patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| api_err("patch", &key, e))
    }
}

/// The shipped CRD as JSON.
pub fn crd() -> Result<Value, String> {
    serde_saphyr::from_str::<Value>(CRD_YAML).map_err(|e| format!("embedded CRD: {e}"))
}

/// Makes sure the CRD exists at this binary's revision. With `install`, applies
/// it when missing or older and waits until it is Established; without, only
/// checks. Without permission to read CRDs (the shipped RBAC grants `get` on
/// this one CRD only), it assumes the deploy manifests installed it.
pub async fn ensure_crd(client: &Client, install: bool) -> Result<(), String> {
    let wanted = crd()?;
    let revision = wanted
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(CRD_REVISION_ANNOTATION))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let live = match api.get_opt(CRD_NAME).await {
        Ok(l) => l,
        Err(e) if is_status(&e, 403) => {
            tracing::warn!(
                crd = CRD_NAME,
                "not allowed to read CRDs; assuming deploy/crds/daemonsetrollouts.yaml is installed"
            );
            return Ok(());
        }
        Err(e) => return Err(format!("cannot read CRD {CRD_NAME}: {e}")),
    };
    let current = live
        .as_ref()
        .and_then(|c| c.annotations().get(CRD_REVISION_ANNOTATION).cloned());
    if current.as_deref() != Some(revision.as_str()) && !install {
        if live.is_none() {
            return Err(format!(
                "the CRD {CRD_NAME} is not installed; apply deploy/crds/daemonsetrollouts.yaml (kubectl apply --server-side -f ...) or run without --no-install-crds"
            ));
        }
        tracing::warn!(
            crd = CRD_NAME,
            installed = current.as_deref().unwrap_or("-"),
            wanted = %revision,
            "the installed CRD is older than this nodewave; apply deploy/crds/daemonsetrollouts.yaml"
        );
        return Ok(());
    }
    if current.as_deref() != Some(revision.as_str()) {
        api.patch(
            CRD_NAME,
            &PatchParams::apply(keys::FIELD_MANAGER).force(),
            &Patch::Apply(&wanted),
        )
        .await
        .map_err(|e| {
            format!(
                "the CRD {CRD_NAME} is {} and nodewave cannot install it ({e}); \
                 apply deploy/crds/daemonsetrollouts.yaml (kubectl apply --server-side -f ...)",
                if live.is_some() {
                    "outdated"
                } else {
                    "missing"
                }
            )
        })?;
        tracing::info!(crd = CRD_NAME, revision = %revision, "installed the DaemonSetRollout CRD");
    } else if live.as_ref().is_some_and(|c| {
        kube::runtime::wait::conditions::is_crd_established().matches_object(Some(c))
    }) {
        return Ok(());
    }
    let established = kube::runtime::wait::await_condition(
        api,
        CRD_NAME,
        kube::runtime::wait::conditions::is_crd_established(),
    );
    match tokio::time::timeout(Duration::from_secs(30), established).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("waiting for CRD {CRD_NAME}: {e}")),
        Err(_) => Err(format!("CRD {CRD_NAME} was not Established within 30 s")),
    }
}
