//! Companion objects of any kind through the dynamic API: resolving a kind with
//! discovery, server-side apply (and its dry run), reading, listing what
//! nodewave manages, deleting, and Events about them.

use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiResource, Scope};
use serde_json::Value;

use super::{Cluster, ClusterError, Result, api_err, is_status};
use crate::keys;
use crate::manifest::ObjectRef;

/// A kind as the API server serves it.
#[derive(Debug, Clone)]
pub struct ServedKind {
    pub resource: ApiResource,
    pub namespaced: bool,
}

impl Cluster {
    /// What the API server serves for `apiVersion`/`kind`; `None` when it does
    /// not know the kind (no CRD, or a group it does not serve).
    pub async fn served_kind(&self, api_version: &str, kind: &str) -> Result<Option<ServedKind>> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        match kube::discovery::pinned_kind(self.client(), &gvk).await {
            Ok((resource, caps)) => {
                self.metrics.kube_request("discovery", true);
                Ok(Some(ServedKind {
                    resource,
                    namespaced: caps.scope == Scope::Namespaced,
                }))
            }
            Err(e) if is_status(&e, 404) || matches!(e, kube::Error::Discovery(_)) => {
                self.metrics.kube_request("discovery", true);
                Ok(None)
            }
            Err(e) => {
                self.metrics.kube_request("discovery", false);
                Err(api_err("discover", format!("{api_version} {kind}"), e))
            }
        }
    }

    fn dynamic(&self, kind: &ServedKind, namespace: &str) -> Api<DynamicObject> {
        if kind.namespaced {
            Api::namespaced_with(self.client().clone(), namespace, &kind.resource)
        } else {
            Api::all_with(self.client().clone(), &kind.resource)
        }
    }

    /// Server-side apply of a companion object as field manager `nodewave`,
    /// forced, with strict field validation.
    pub async fn apply_object(
        &self,
        kind: &ServedKind,
        reference: &ObjectRef,
        obj: &Value,
        dry_run: bool,
    ) -> Result<Value> {
        let mut pp = PatchParams::apply(keys::FIELD_MANAGER).force();
        pp.field_validation = Some(kube::api::ValidationDirective::Strict);
        if dry_run {
            pp = pp.dry_run();
        }
        let r = self
            .dynamic(kind, &reference.namespace)
            .patch(&reference.name, &pp, &Patch::Apply(obj))
            .await;
        let verb = if dry_run { "dry_run_apply" } else { "apply" };
        self.record(verb, &r);
        let o = r.map_err(|e| api_err(verb, reference.to_string(), e))?;
        serde_json::to_value(o).map_err(|e| ClusterError::Invalid(e.to_string()))
    }

    pub async fn get_object(
        &self,
        kind: &ServedKind,
        reference: &ObjectRef,
    ) -> Result<Option<Value>> {
        let r = self
            .dynamic(kind, &reference.namespace)
            .get_opt(&reference.name)
            .await;
        self.record("get", &r);
        let o = r.map_err(|e| api_err("get", reference.to_string(), e))?;
        o.map(|o| serde_json::to_value(o).map_err(|e| ClusterError::Invalid(e.to_string())))
            .transpose()
    }

    /// Objects of `kind` carrying nodewave's managed-by label, in every namespace.
    pub async fn managed_objects(&self, kind: &ServedKind) -> Result<Vec<DynamicObject>> {
        let api: Api<DynamicObject> = Api::all_with(self.client().clone(), &kind.resource);
        let lp = ListParams::default().labels(&format!(
            "{}={}",
            keys::MANAGED_BY_LABEL,
            keys::MANAGED_BY_VALUE
        ));
        let r = api.list(&lp).await;
        self.record("list", &r);
        Ok(
            r.map_err(|e| api_err("list", format!("managed {}", kind.resource.kind), e))?
                .items,
        )
    }

    /// Deletes a companion object with a UID precondition (never a newer
    /// object of the same name); gone already is fine.
    pub async fn delete_object(
        &self,
        kind: &ServedKind,
        reference: &ObjectRef,
        uid: &str,
    ) -> Result<()> {
        let dp = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        let r = self
            .dynamic(kind, &reference.namespace)
            .delete(&reference.name, &dp)
            .await;
        self.record("delete", &r);
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
            Err(e) => Err(api_err("delete", reference.to_string(), e)),
        }
    }

    /// Publishes an Event about a companion object (cluster-scoped ones in
    /// `default`, where `kubectl get events` finds them).
    pub async fn object_event(
        &self,
        api_version: &str,
        reference: &ObjectRef,
        warning: bool,
        reason: &str,
        note: &str,
    ) {
        let ns = if reference.namespace.is_empty() {
            "default".to_string()
        } else {
            reference.namespace.clone()
        };
        let object_ref = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some(api_version.to_string()),
            kind: Some(reference.kind.clone()),
            name: Some(reference.name.clone()),
            namespace: Some(ns),
            ..Default::default()
        };
        self.publish(object_ref, warning, reason, note).await;
    }
}
