//! Desired vs live: normalisation of Kubernetes objects, the list of changed field
//! paths, and a unified YAML diff. Pure: the cluster module supplies both sides
//! (live object and server-side-apply dry-run result).

use std::collections::BTreeSet;

use serde_json::Value;
use similar::TextDiff;

use crate::keys;
use crate::record::legacy;

/// Metadata the API server or controllers own; never part of what Git declares.
const SERVER_METADATA: &[&str] = &[
    "managedFields",
    "resourceVersion",
    "uid",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "ownerReferences",
    "finalizers",
];

/// Annotations written by nodewave or by Kubernetes controllers as bookkeeping.
const BOOKKEEPING_ANNOTATIONS: &[&str] = &[
    keys::SOURCE_REPO,
    keys::SOURCE_PATH,
    keys::SOURCE_FILE,
    keys::CONTENT_HASH,
    keys::ALLOW_TAKEOVER,
    legacy::APPLIED_COMMIT,
    legacy::APPLIED_AT,
    legacy::DESIRED_HASH,
    legacy::LAST_GOOD_COMMIT,
    legacy::FAILED_COMMITS,
    legacy::SYNC_STATUS,
    legacy::SYNC_MESSAGE,
    legacy::ROLLOUT_STATE,
    legacy::POOL_LABEL,
    "nodewave.io/paused",
    "nodewave.io/abort",
    "nodewave.io/approved-stage",
    "deprecated.daemonset.template.generation",
    "kubectl.kubernetes.io/last-applied-configuration",
];

/// Removes status, server-owned metadata and nodewave's bookkeeping so that two
/// objects compare equal exactly when their declared content is equal.
pub fn normalise(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(map) = v.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in SERVER_METADATA {
                meta.remove(*k);
            }
            let mut empty = false;
            if let Some(ann) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
                for k in BOOKKEEPING_ANNOTATIONS {
                    ann.remove(*k);
                }
                empty = ann.is_empty();
            }
            if empty {
                meta.remove("annotations");
            }
        }
    }
    v
}

/// The part of a DaemonSet whose change needs pods replaced: the pod template.
pub fn pod_template(obj: &Value) -> Value {
    obj.pointer("/spec/template")
        .cloned()
        .unwrap_or(Value::Null)
}

/// One difference between desired and live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// Field paths that differ, like `spec.template.spec.containers[0].image`.
    pub paths: Vec<String>,
    /// Unified diff of the normalised objects as YAML (`live` → `desired`).
    pub unified: String,
}

impl Difference {
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// True when some changed path lies inside the pod template, so applying it
    /// makes a new revision that has to be rolled out.
    pub fn touches_pod_template(&self) -> bool {
        self.paths.iter().any(|p| p.starts_with("spec.template"))
    }
}

/// Compares normalised `live` and `desired` (either may be `Value::Null` for
/// "does not exist"). `name` labels the unified diff's headers.
pub fn compare(name: &str, live: &Value, desired: &Value) -> Difference {
    let live = if live.is_null() {
        Value::Null
    } else {
        normalise(live)
    };
    let desired = if desired.is_null() {
        Value::Null
    } else {
        normalise(desired)
    };
    let mut paths = BTreeSet::new();
    changed_paths(&live, &desired, String::new(), &mut paths);
    let unified = if paths.is_empty() {
        String::new()
    } else {
        unified_yaml(name, &live, &desired)
    };
    Difference {
        paths: paths.into_iter().collect(),
        unified,
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn changed_paths(a: &Value, b: &Value, prefix: String, out: &mut BTreeSet<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = join(&prefix, k);
                match (x.get(k), y.get(k)) {
                    (Some(va), Some(vb)) => changed_paths(va, vb, p, out),
                    _ => {
                        out.insert(p);
                    }
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                changed_paths(va, vb, format!("{prefix}[{i}]"), out);
            }
        }
        _ if a == b => {}
        _ => {
            out.insert(if prefix.is_empty() {
                ".".into()
            } else {
                prefix
            });
        }
    }
}

fn to_yaml(v: &Value) -> String {
    if v.is_null() {
        return String::new();
    }
    serde_saphyr::to_string(v).unwrap_or_else(|e| format!("# cannot render as YAML: {e}\n{v}"))
}

/// Unified diff of two objects rendered as YAML.
pub fn unified_yaml(name: &str, live: &Value, desired: &Value) -> String {
    let a = to_yaml(live);
    let b = to_yaml(desired);
    TextDiff::from_lines(&a, &b)
        .unified_diff()
        .context_radius(3)
        .header(&format!("live/{name}"), &format!("git/{name}"))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ds(image: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "a", "namespace": "n", "uid": "u1", "resourceVersion": "7",
                "generation": 2, "managedFields": [{"manager": "x"}],
                "annotations": {"nodewave.io/applied-commit": "abc", "team": "obs"}},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": image}]}}},
            "status": {"numberReady": 3}
        })
    }

    #[test]
    fn normalise_drops_server_fields_and_bookkeeping_but_keeps_user_annotations() {
        let n = normalise(&ds("x:1"));
        assert!(n.get("status").is_none());
        assert!(n["metadata"].get("uid").is_none());
        assert!(n["metadata"].get("managedFields").is_none());
        assert_eq!(n["metadata"]["annotations"], json!({"team": "obs"}));
    }

    #[test]
    fn equal_objects_have_no_difference_even_with_different_bookkeeping() {
        let mut b = ds("x:1");
        b["metadata"]["annotations"]["nodewave.io/applied-commit"] = json!("def");
        b["metadata"]["resourceVersion"] = json!("99");
        let d = compare("n/a", &ds("x:1"), &b);
        assert!(d.is_empty(), "{d:?}");
        assert!(d.unified.is_empty());
    }

    #[test]
    fn image_change_is_reported_as_path_and_unified_diff() {
        let d = compare("n/a", &ds("x:1"), &ds("x:2"));
        assert_eq!(d.paths, vec!["spec.template.spec.containers[0].image"]);
        assert!(d.touches_pod_template());
        assert!(d.unified.contains("-      - image: x:1"), "{}", d.unified);
        assert!(d.unified.contains("+      - image: x:2"), "{}", d.unified);
        assert!(d.unified.contains("live/n/a") && d.unified.contains("git/n/a"));
    }

    #[test]
    fn added_and_removed_fields_and_resized_lists() {
        let a = json!({"spec": {"x": 1, "l": [1, 2]}});
        let b = json!({"spec": {"y": 1, "l": [1]}});
        let d = compare("n/a", &a, &b);
        assert_eq!(d.paths, vec!["spec.l", "spec.x", "spec.y"]);
        assert!(!d.touches_pod_template());
    }

    #[test]
    fn missing_live_object_is_all_new() {
        let d = compare("n/a", &Value::Null, &ds("x:1"));
        assert_eq!(d.paths, vec!["."]);
        assert!(d.unified.contains("+apiVersion: apps/v1"), "{}", d.unified);
    }
}
