//! The pod and node objects the watches decode, keeping only the fields the
//! stores read. Every field of the API server's JSON that is not named here is
//! skipped while decoding, without being allocated: `managedFields` (a
//! description of every field each writer set, most of a kwok pod's size), the
//! containers, volumes, tolerations, annotations and node status. A watch event
//! or list page then costs its few stored fields in memory, not the whole
//! object: measured with heaptrack at 1,000 nodes, decoded `managedFields` and
//! list bodies were nine tenths of nodewave's peak heap.
//!
//! The objects are the usual `k8s_openapi` types with the skipped fields empty,
//! so the code reading them (`pods::observe_pod`) does not change.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ContainerStatus, Node, Pod, PodCondition, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::Resource;
use kube::core::PartialObjectMeta;
use serde::{Deserialize, Deserializer};

/// The metadata fields the stores read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    owner_references: Option<Vec<OwnerReference>>,
    deletion_timestamp: Option<Time>,
}

impl From<WireMeta> for ObjectMeta {
    fn from(m: WireMeta) -> Self {
        ObjectMeta {
            name: m.name,
            namespace: m.namespace,
            uid: m.uid,
            resource_version: m.resource_version,
            labels: m.labels,
            owner_references: m.owner_references,
            deletion_timestamp: m.deletion_timestamp,
            ..ObjectMeta::default()
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireSpec {
    node_name: Option<String>,
    /// Names the node of a DaemonSet pod the scheduler has not bound yet.
    affinity: Option<Affinity>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireStatus {
    conditions: Option<Vec<PodCondition>>,
    container_statuses: Option<Vec<ContainerStatus>>,
}

#[derive(Deserialize)]
struct WirePod {
    #[serde(default)]
    metadata: Option<WireMeta>,
    spec: Option<WireSpec>,
    status: Option<WireStatus>,
}

/// A pod as the pod watch decodes it: metadata (name, namespace, UID,
/// resourceVersion, labels, owners, deletion), `spec.nodeName` and
/// `spec.affinity`, and the conditions and container statuses.
#[derive(Debug, Clone, Default)]
pub struct LeanPod(pub Pod);

impl<'de> Deserialize<'de> for LeanPod {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = WirePod::deserialize(d)?;
        Ok(LeanPod(Pod {
            metadata: w.metadata.map(ObjectMeta::from).unwrap_or_default(),
            spec: w.spec.map(|s| PodSpec {
                node_name: s.node_name,
                affinity: s.affinity,
                ..PodSpec::default()
            }),
            status: w.status.map(|s| PodStatus {
                conditions: s.conditions,
                container_statuses: s.container_statuses,
                ..PodStatus::default()
            }),
        }))
    }
}

/// `kube::Resource` for a lean type: the kind, group, version and plural of the
/// object it stands for; `$meta` reaches its metadata.
macro_rules! resource_as {
    ($lean:ty, $full:ty, $scope:ty, |$s:ident| $meta:expr) => {
        impl Resource for $lean {
            type DynamicType = ();
            type Scope = $scope;

            fn kind((): &()) -> Cow<'_, str> {
                <$full>::kind(&())
            }
            fn group((): &()) -> Cow<'_, str> {
                <$full>::group(&())
            }
            fn version((): &()) -> Cow<'_, str> {
                <$full>::version(&())
            }
            fn plural((): &()) -> Cow<'_, str> {
                <$full>::plural(&())
            }
            fn metadata_api() -> bool {
                <$full>::metadata_api()
            }
            fn meta(&self) -> &ObjectMeta {
                let $s = self;
                &$meta
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                let $s = self;
                &mut $meta
            }
        }
    };
}

resource_as!(LeanPod, Pod, k8s_openapi::NamespaceResourceScope, |p| p
    .0
    .metadata);

#[derive(Deserialize)]
struct WireNode {
    #[serde(default)]
    metadata: Option<WireMeta>,
}

/// A node's metadata as the node watch decodes it (requested metadata-only, as
/// `PartialObjectMeta` is): name, UID, resourceVersion and labels.
#[derive(Debug, Clone, Default)]
pub struct LeanNode(pub ObjectMeta);

impl<'de> Deserialize<'de> for LeanNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = WireNode::deserialize(d)?;
        Ok(LeanNode(
            w.metadata.map(ObjectMeta::from).unwrap_or_default(),
        ))
    }
}

// Requested metadata-only, as `PartialObjectMeta<Node>` is.
resource_as!(
    LeanNode,
    PartialObjectMeta<Node>,
    k8s_openapi::ClusterResourceScope,
    |n| n.0
);

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod as a kwok cluster serves it, managed fields and all.
    const POD: &str = r#"{
      "apiVersion": "v1", "kind": "Pod",
      "metadata": {
        "name": "agent-x7k2p", "namespace": "fleet", "uid": "4f0c8a1e-0000-4000-8000-000000000001",
        "resourceVersion": "123456", "generation": 1,
        "labels": {"app": "agent", "controller-revision-hash": "6b9f7c5d4f"},
        "annotations": {"note": "dropped"},
        "deletionTimestamp": "2026-12-03T10:00:00Z",
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent",
          "uid": "d5d5", "controller": true, "blockOwnerDeletion": true}],
        "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
          "apiVersion": "v1", "fieldsType": "FieldsV1",
          "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}}}]
      },
      "spec": {
        "nodeName": "kwok-node-0",
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
          "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["kwok-node-0"]}]}]}}},
        "containers": [{"name": "agent", "image": "registry.example/agent:2.0"}],
        "tolerations": [{"operator": "Exists"}]
      },
      "status": {
        "phase": "Running", "podIP": "10.0.0.1",
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [{"name": "agent", "image": "registry.example/agent:2.0", "imageID": "",
          "ready": true, "restartCount": 3,
          "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]
      }
    }"#;

    #[test]
    fn a_pod_keeps_what_the_stores_read_and_drops_the_rest() {
        let LeanPod(p) = serde_json::from_str(POD).unwrap_or_else(|e| panic!("{e}"));
        let full: Pod = serde_json::from_str(POD).unwrap_or_else(|e| panic!("{e}"));
        // What the pod index reads is the same as from the full object.
        assert_eq!(
            super::super::pods::observe_pod(&p),
            super::super::pods::observe_pod(&full)
        );
        assert!(super::super::pods::observe_pod(&p).is_some());
        assert_eq!(p.metadata.resource_version.as_deref(), Some("123456"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("fleet"));
        assert!(p.metadata.deletion_timestamp.is_some());
        let spec = p.spec.as_ref().unwrap_or_else(|| panic!("no spec"));
        assert!(spec.affinity.is_some());
        // Dropped: managed fields, annotations, containers, tolerations, phase.
        assert!(p.metadata.managed_fields.is_none());
        assert!(p.metadata.annotations.is_none());
        assert!(spec.containers.is_empty() && spec.tolerations.is_none());
        assert!(p.status.as_ref().is_some_and(|s| s.phase.is_none()));
        assert!(full.metadata.managed_fields.is_some());
    }

    #[test]
    fn a_pod_the_scheduler_has_not_bound_still_names_its_node() {
        let unbound = POD.replace(r#""nodeName": "kwok-node-0","#, "");
        let LeanPod(p) = serde_json::from_str(&unbound).unwrap_or_else(|e| panic!("{e}"));
        let (_, obs) = super::super::pods::observe_pod(&p).unwrap_or_else(|| panic!("dropped"));
        assert_eq!(&*obs.node, "kwok-node-0");
    }

    #[test]
    fn a_node_keeps_its_name_and_labels() {
        let json = r#"{"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
          "metadata": {"name": "kwok-node-0", "uid": "n1", "resourceVersion": "9",
            "labels": {"nodewave.io/pool": "pool-a"},
            "managedFields": [{"manager": "kwok", "fieldsV1": {"f:status": {}}}]}}"#;
        let LeanNode(m) = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.name.as_deref(), Some("kwok-node-0"));
        assert_eq!(m.resource_version.as_deref(), Some("9"));
        assert_eq!(
            m.labels
                .as_ref()
                .and_then(|l| l.get("nodewave.io/pool"))
                .map(String::as_str),
            Some("pool-a")
        );
        assert!(m.managed_fields.is_none());
    }

    #[test]
    fn the_requests_are_those_of_pods_and_node_metadata() {
        assert_eq!(
            LeanPod::url_path(&(), Some("fleet")),
            "/api/v1/namespaces/fleet/pods"
        );
        assert!(!LeanPod::metadata_api());
        assert_eq!(LeanNode::url_path(&(), None), "/api/v1/nodes");
        assert!(LeanNode::metadata_api());
    }
}
