//! Companion objects: everything in a commit besides DaemonSets and
//! RolloutPolicies (the Namespace, ServiceAccount, RBAC, ConfigMaps, CRDs and
//! custom resources a node agent ships with). Pure: which kinds are known and
//! where they go, legacy apiVersions and their replacements, the kind
//! allowlist, and the checks each object gets.
//!
//! Companions are applied at once (not staged) before the DaemonSets, in
//! [`ApplyOrder`]. The allowlist's default accepts what vendor node-agent files
//! contain; `--allow-kind` replaces it.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use super::daemonset::{dns_label, dns_subdomain};
use super::findings::{
    INVALID_OBJECT, KIND_NOT_ALLOWED, LEGACY_API_VERSION, NAMESPACE_NOT_ALLOWED,
};
use super::lines::Path;
use super::{Doc, LoadOptions, Location, Report};

/// Which object: API group (empty for the core group), kind, namespace (empty
/// for cluster-scoped objects), name. The version is not part of it: one object
/// served at two versions is still one object.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct ObjectRef {
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    /// `Kind.group`, or `Kind` for the core group: the form the allowlist uses.
    pub fn kind_name(&self) -> String {
        kind_name(&self.group, &self.kind)
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind_name())?;
        if self.namespace.is_empty() {
            write!(f, " {}", self.name)
        } else {
            write!(f, " {}/{}", self.namespace, self.name)
        }
    }
}

fn kind_name(group: &str, kind: &str) -> String {
    if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    }
}

/// When an object is applied relative to the others: namespaces and CRDs first,
/// then what a pod needs, then custom resources (after their CRD is
/// established), then workloads and webhooks (a webhook configuration before its
/// Service's pods run would block admission).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub enum ApplyOrder {
    Namespace,
    Definition,
    Identity,
    Config,
    Network,
    CustomResource,
    Workload,
    Webhook,
}

/// A companion object as the commit defines it.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredObject {
    pub reference: ObjectRef,
    pub api_version: String,
    /// The document as written, `metadata.namespace` set for namespaced kinds.
    pub manifest: Value,
    pub location: Location,
    pub order: ApplyOrder,
}

/// A built-in kind nodewave knows: its group, whether it is namespaced, when it
/// is applied.
struct Known {
    group: &'static str,
    kind: &'static str,
    namespaced: bool,
    order: ApplyOrder,
}

const fn known(
    group: &'static str,
    kind: &'static str,
    namespaced: bool,
    order: ApplyOrder,
) -> Known {
    Known {
        group,
        kind,
        namespaced,
        order,
    }
}

/// Built-in kinds whose scope nodewave knows without asking the API server.
const KNOWN: &[Known] = &[
    known("", "Namespace", false, ApplyOrder::Namespace),
    known(
        "apiextensions.k8s.io",
        "CustomResourceDefinition",
        false,
        ApplyOrder::Definition,
    ),
    known(
        "scheduling.k8s.io",
        "PriorityClass",
        false,
        ApplyOrder::Definition,
    ),
    known("node.k8s.io", "RuntimeClass", false, ApplyOrder::Definition),
    known(
        "storage.k8s.io",
        "StorageClass",
        false,
        ApplyOrder::Definition,
    ),
    known("storage.k8s.io", "CSIDriver", false, ApplyOrder::Definition),
    known("", "ServiceAccount", true, ApplyOrder::Identity),
    known(
        "rbac.authorization.k8s.io",
        "ClusterRole",
        false,
        ApplyOrder::Identity,
    ),
    known(
        "rbac.authorization.k8s.io",
        "ClusterRoleBinding",
        false,
        ApplyOrder::Identity,
    ),
    known(
        "rbac.authorization.k8s.io",
        "Role",
        true,
        ApplyOrder::Identity,
    ),
    known(
        "rbac.authorization.k8s.io",
        "RoleBinding",
        true,
        ApplyOrder::Identity,
    ),
    known("", "ConfigMap", true, ApplyOrder::Config),
    known("", "Secret", true, ApplyOrder::Config),
    known("", "Service", true, ApplyOrder::Network),
    known("policy", "PodDisruptionBudget", true, ApplyOrder::Network),
    known(
        "networking.k8s.io",
        "NetworkPolicy",
        true,
        ApplyOrder::Network,
    ),
    known("apps", "Deployment", true, ApplyOrder::Workload),
    known(
        "admissionregistration.k8s.io",
        "ValidatingWebhookConfiguration",
        false,
        ApplyOrder::Webhook,
    ),
    known(
        "admissionregistration.k8s.io",
        "MutatingWebhookConfiguration",
        false,
        ApplyOrder::Webhook,
    ),
];

/// The kinds nodewave manages when `--allow-kind` is not given: what vendor
/// node-agent files ship with their DaemonSet. Custom resources are allowed
/// when the commit also defines their CRD (`CustomResourceDefinition` allowed).
pub const DEFAULT_ALLOWED_KINDS: &[&str] = &[
    "Namespace",
    "ServiceAccount",
    "ConfigMap",
    "Secret",
    "Service",
    "Role.rbac.authorization.k8s.io",
    "RoleBinding.rbac.authorization.k8s.io",
    "ClusterRole.rbac.authorization.k8s.io",
    "ClusterRoleBinding.rbac.authorization.k8s.io",
    "PodDisruptionBudget.policy",
    "PriorityClass.scheduling.k8s.io",
    "CustomResourceDefinition.apiextensions.k8s.io",
    "Deployment.apps",
    "ValidatingWebhookConfiguration.admissionregistration.k8s.io",
    "MutatingWebhookConfiguration.admissionregistration.k8s.io",
];

/// Built-in kinds nodewave looks through for objects to prune (and that
/// `nodewave status` lists) even when the commit holds none of them any more,
/// with the apiVersion they are listed at.
pub const PRUNABLE_KINDS: &[(&str, &str)] = &[
    ("v1", "Namespace"),
    ("v1", "ServiceAccount"),
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "Service"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
    ("policy/v1", "PodDisruptionBudget"),
    ("scheduling.k8s.io/v1", "PriorityClass"),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
    ("apps/v1", "Deployment"),
    (
        "admissionregistration.k8s.io/v1",
        "ValidatingWebhookConfiguration",
    ),
    (
        "admissionregistration.k8s.io/v1",
        "MutatingWebhookConfiguration",
    ),
];

/// The current apiVersion for a removed one, for kinds node agents used to ship
/// with. `None`: not a legacy apiVersion nodewave knows.
pub fn legacy_replacement(api_version: &str, kind: &str) -> Option<&'static str> {
    let replacement = match (api_version, kind) {
        (
            "extensions/v1beta1" | "apps/v1beta1" | "apps/v1beta2",
            "DaemonSet" | "Deployment" | "ReplicaSet" | "StatefulSet",
        ) => "apps/v1",
        ("extensions/v1beta1" | "networking.k8s.io/v1beta1", "Ingress")
        | ("extensions/v1beta1", "NetworkPolicy") => "networking.k8s.io/v1",
        ("policy/v1beta1", "PodDisruptionBudget") => "policy/v1",
        ("rbac.authorization.k8s.io/v1beta1" | "rbac.authorization.k8s.io/v1alpha1", _) => {
            "rbac.authorization.k8s.io/v1"
        }
        ("apiextensions.k8s.io/v1beta1", "CustomResourceDefinition") => "apiextensions.k8s.io/v1",
        (
            "admissionregistration.k8s.io/v1beta1",
            "ValidatingWebhookConfiguration" | "MutatingWebhookConfiguration",
        ) => "admissionregistration.k8s.io/v1",
        ("scheduling.k8s.io/v1beta1" | "scheduling.k8s.io/v1alpha1", "PriorityClass") => {
            "scheduling.k8s.io/v1"
        }
        ("storage.k8s.io/v1beta1", "CSIDriver" | "StorageClass" | "CSINode") => "storage.k8s.io/v1",
        ("node.k8s.io/v1beta1", "RuntimeClass") => "node.k8s.io/v1",
        _ => return None,
    };
    Some(replacement)
}

/// The group of an apiVersion (`apps/v1` → `apps`, `v1` → ``).
pub fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

/// A CustomResourceDefinition of the commit: the kind it serves and its scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinedKind {
    pub namespaced: bool,
    /// The CRD's versions that are served.
    pub versions: Vec<String>,
}

/// `(group, kind)` → what a CRD of the commit says about it.
pub type DefinedKinds = BTreeMap<(String, String), DefinedKind>;

/// Reads the kind a CRD document defines (nothing when it is not well formed:
/// the API server will say why when it is applied, and its custom resources are
/// then refused here as kinds nobody defines).
pub fn defined_kind(value: &Value) -> Option<((String, String), DefinedKind)> {
    let spec = value.get("spec")?;
    let group = spec.get("group")?.as_str()?.to_string();
    let kind = spec.get("names")?.get("kind")?.as_str()?.to_string();
    let namespaced = spec.get("scope").and_then(Value::as_str) != Some("Cluster");
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter(|v| v.get("served").and_then(Value::as_bool) != Some(false))
                .filter_map(|v| v.get("name").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Some((
        (group, kind),
        DefinedKind {
            namespaced,
            versions,
        },
    ))
}

/// Whether the allowlist admits `group`/`kind`. Entries are `Kind` (core
/// group), `Kind.group`, or `*.group` (every kind of a group); the single entry
/// `none` admits nothing (DaemonSets and RolloutPolicies only).
pub fn kind_allowed(allowed: &[String], group: &str, kind: &str) -> bool {
    let full = kind_name(group, kind);
    let list: Vec<&str> = if allowed.is_empty() {
        DEFAULT_ALLOWED_KINDS.to_vec()
    } else {
        allowed.iter().map(String::as_str).collect()
    };
    list.iter().any(|entry| {
        *entry == full
            || entry
                .strip_prefix("*.")
                .is_some_and(|g| !group.is_empty() && g == group)
    })
}

/// Checks one companion document. `defined` holds the CRDs of the whole commit,
/// so a custom resource may come before its definition in the files.
pub(crate) fn check(
    doc: &Doc<'_>,
    api_version: &str,
    kind: &str,
    defined: &DefinedKinds,
    report: &mut Report<'_>,
    opts: &LoadOptions,
) -> Option<DesiredObject> {
    let group = group_of(api_version).to_string();
    let name = doc.str_at("metadata.name").unwrap_or_default().to_string();
    let label = if name.is_empty() {
        kind.to_string()
    } else {
        format!("{kind} {name}")
    };
    let object = Some(label.as_str());

    if let Some(replacement) = legacy_replacement(api_version, kind) {
        report.add(
            LEGACY_API_VERSION,
            doc.location(&Path::parse("apiVersion")),
            object,
            format!(
                "{api_version} {kind} is a legacy apiVersion that current Kubernetes no longer serves: use apiVersion: {replacement}"
            ),
        );
        return None;
    }

    let builtin = KNOWN.iter().find(|k| k.group == group && k.kind == kind);
    let custom = defined.get(&(group.clone(), kind.to_string()));
    let allowed_by_list = kind_allowed(&opts.allowed_kinds, &group, kind);
    let allowed = allowed_by_list
        || (custom.is_some()
            && kind_allowed(
                &opts.allowed_kinds,
                "apiextensions.k8s.io",
                "CustomResourceDefinition",
            ));
    if !allowed {
        let how = if opts.allowed_kinds.is_empty() {
            "add it with --allow-kind (or allowed-kinds in the config file; the default list is in the README), or manage it with another tool"
        } else {
            "add it to --allow-kind (or allowed-kinds in the config file), or manage it with another tool"
        };
        report.add(
            KIND_NOT_ALLOWED,
            doc.location(&Path::parse("kind")),
            object,
            format!(
                "{} is not a kind nodewave may manage: {how}",
                kind_name(&group, kind)
            ),
        );
        return None;
    }

    if name.is_empty() {
        report.add(
            INVALID_OBJECT,
            doc.location(&Path::parse("metadata")),
            object,
            format!("metadata.name is missing: give the {kind} a name"),
        );
        return None;
    }
    if let Err(why) = dns_subdomain(&name) {
        report.add(
            INVALID_OBJECT,
            doc.location(&Path::parse("metadata.name")),
            object,
            format!("metadata.name {name:?} is not a valid name: {why}"),
        );
        return None;
    }
    if !doc.value.get("metadata").is_some_and(Value::is_object) {
        report.add(
            INVALID_OBJECT,
            doc.location(&Path::parse("metadata")),
            object,
            "metadata is not a mapping",
        );
        return None;
    }

    // Scope: known built-ins and kinds defined in the commit say it; for any
    // other allowed kind the document does (the API server checks it on apply).
    let written_ns = doc.str_at("metadata.namespace").filter(|ns| !ns.is_empty());
    let namespaced = match (builtin, custom) {
        (Some(k), _) => k.namespaced,
        (None, Some(c)) => c.namespaced,
        (None, None) => written_ns.is_some(),
    };
    let order = match (builtin, custom) {
        (Some(k), _) => k.order,
        _ => ApplyOrder::CustomResource,
    };
    let mut manifest = doc.value.clone();
    let namespace = if namespaced {
        let ns = written_ns.unwrap_or(&opts.default_namespace).to_string();
        if let Err(why) = dns_label(&ns) {
            report.add(
                INVALID_OBJECT,
                doc.location(&Path::parse("metadata.namespace")),
                object,
                format!("namespace {ns:?} is not a valid namespace name: {why}"),
            );
            return None;
        }
        if !opts.namespace_allowed(&ns) {
            report.add(
                NAMESPACE_NOT_ALLOWED,
                doc.location(&Path::parse("metadata.namespace")),
                object,
                format!(
                    "namespace {ns} is not in the allowed namespaces ({}): move the object or allow the namespace with --allow-namespace",
                    opts.allowed_namespaces.join(", ")
                ),
            );
        }
        manifest["metadata"]["namespace"] = Value::String(ns.clone());
        ns
    } else {
        if let Some(map) = manifest["metadata"].as_object_mut() {
            map.remove("namespace");
        }
        if kind == "Namespace" && !opts.namespace_allowed(&name) {
            report.add(
                NAMESPACE_NOT_ALLOWED,
                doc.location(&Path::parse("metadata.name")),
                object,
                format!(
                    "namespace {name} is not in the allowed namespaces ({}): allow it with --allow-namespace",
                    opts.allowed_namespaces.join(", ")
                ),
            );
        }
        String::new()
    };
    if let Some(c) = custom {
        let version = api_version.rsplit_once('/').map_or("", |(_, v)| v);
        if !c.versions.is_empty() && !c.versions.iter().any(|v| v == version) {
            report.add(
                INVALID_OBJECT,
                doc.location(&Path::parse("apiVersion")),
                object,
                format!(
                    "{api_version} is not a served version of {}: the CRD in this commit serves {}",
                    kind_name(&group, kind),
                    c.versions.join(", ")
                ),
            );
            return None;
        }
    }
    Some(DesiredObject {
        reference: ObjectRef {
            group,
            kind: kind.to_string(),
            namespace,
            name,
        },
        api_version: api_version.to_string(),
        manifest,
        location: doc.location(&Path::root()),
        order,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_daemonsets_name_apps_v1() {
        assert_eq!(
            legacy_replacement("extensions/v1beta1", "DaemonSet"),
            Some("apps/v1")
        );
        assert_eq!(
            legacy_replacement("rbac.authorization.k8s.io/v1beta1", "ClusterRole"),
            Some("rbac.authorization.k8s.io/v1")
        );
        assert_eq!(legacy_replacement("apps/v1", "DaemonSet"), None);
        assert_eq!(legacy_replacement("v1", "ConfigMap"), None);
    }

    #[test]
    fn the_allowlist_takes_kinds_with_groups_and_group_wildcards() {
        assert!(kind_allowed(&[], "", "ConfigMap"));
        assert!(kind_allowed(
            &[],
            "rbac.authorization.k8s.io",
            "ClusterRole"
        ));
        assert!(!kind_allowed(&[], "", "Pod"));
        assert!(!kind_allowed(&[], "apps", "StatefulSet"));
        let list = vec![
            "ConfigMap".to_string(),
            "*.monitoring.coreos.com".to_string(),
        ];
        assert!(kind_allowed(&list, "", "ConfigMap"));
        assert!(!kind_allowed(&list, "", "Secret"));
        assert!(kind_allowed(
            &list,
            "monitoring.coreos.com",
            "ServiceMonitor"
        ));
        assert!(!kind_allowed(&list, "", "monitoring.coreos.com"));
        let none = vec!["none".to_string()];
        assert!(!kind_allowed(&none, "", "ConfigMap"));
        assert!(!kind_allowed(
            &none,
            "apiextensions.k8s.io",
            "CustomResourceDefinition"
        ));
    }

    #[test]
    fn crds_define_their_kind_scope_and_served_versions() {
        let crd = serde_json::json!({"spec": {"group": "example.io", "scope": "Cluster",
            "names": {"kind": "Widget"},
            "versions": [{"name": "v1", "served": true}, {"name": "v0", "served": false}]}});
        let ((group, kind), d) = defined_kind(&crd).unwrap();
        assert_eq!((group.as_str(), kind.as_str()), ("example.io", "Widget"));
        assert!(!d.namespaced);
        assert_eq!(d.versions, vec!["v1".to_string()]);
        assert!(defined_kind(&serde_json::json!({"spec": {}})).is_none());
    }

    #[test]
    fn apply_order_puts_namespaces_first_and_webhooks_last() {
        assert!(ApplyOrder::Namespace < ApplyOrder::Definition);
        assert!(ApplyOrder::Config < ApplyOrder::CustomResource);
        assert!(ApplyOrder::Workload < ApplyOrder::Webhook);
        let r = ObjectRef {
            group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            namespace: String::new(),
            name: "agent".into(),
        };
        assert_eq!(r.to_string(), "ClusterRole.rbac.authorization.k8s.io agent");
    }
}
