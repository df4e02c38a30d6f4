//! What to do with each companion object (pure): apply it, leave it, refuse to
//! take it over, or prune it. The IO is in `controller::companions`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::desired::SourceIdentity;
use crate::diff::{self, Difference};
use crate::keys;
use crate::manifest::ObjectRef;
use crate::plan::config;

/// The decision for one desired companion object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectStep {
    /// Does not exist: create it.
    Create,
    /// Differs from Git. `drift`: nodewave had applied this very content, so
    /// someone changed the object in the cluster.
    Update { drift: bool, diff: Difference },
    /// What the API server would store equals what is stored.
    InSync,
    /// Exists, is not nodewave's, and nothing opts in to taking it over.
    Refuse { why: String },
}

/// Decides for one object. `live`: the stored object (`None`: absent);
/// `dry_run`: what applying `desired` would store (`None` when absent: no dry
/// run is needed to create it).
pub fn step(
    identity: &SourceIdentity,
    allow_takeover: bool,
    desired: &Value,
    desired_hash: &str,
    live: Option<&Value>,
    dry_run: Option<&Value>,
) -> ObjectStep {
    let Some(live) = live else {
        return ObjectStep::Create;
    };
    let (labels, annotations) = meta_maps(live);
    let managed =
        labels.get(keys::MANAGED_BY_LABEL).map(String::as_str) == Some(keys::MANAGED_BY_VALUE);
    let opted_in = allow_takeover
        || desired
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(keys::ALLOW_TAKEOVER))
            .and_then(Value::as_str)
            == Some("true");
    let own = managed && identity.owns(&labels, &annotations);
    if !(opted_in || own) {
        let why = if managed {
            "is managed by nodewave from another repository or path".to_string()
        } else {
            "exists and is not managed by nodewave".to_string()
        };
        return ObjectStep::Refuse { why };
    }
    let Some(dry_run) = dry_run else {
        return ObjectStep::InSync;
    };
    let d = diff::compare("object", live, dry_run);
    if d.is_empty() {
        ObjectStep::InSync
    } else {
        let drift = annotations.get(keys::CONTENT_HASH).map(String::as_str) == Some(desired_hash);
        ObjectStep::Update { drift, diff: d }
    }
}

/// A live object nodewave might prune.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveObject {
    pub reference: ObjectRef,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub deleting: bool,
    /// Creation time (RFC 3339), for keeping the newest config copies.
    pub created: String,
}

/// The live objects to delete: applied by nodewave from this repository and
/// path, and no longer in the commit. Hashed config copies (`plan::config`)
/// follow their own rule: those still `referenced` by a DaemonSet template
/// (desired or live) and the newest [`config::KEEP_COPIES`] of each config
/// stay, so a rollback finds the config its template names.
pub fn to_prune<'a>(
    identity: &SourceIdentity,
    desired: &BTreeSet<&ObjectRef>,
    referenced: &BTreeSet<ObjectRef>,
    live: &'a [LiveObject],
) -> Vec<&'a LiveObject> {
    let candidates: Vec<&LiveObject> = live
        .iter()
        .filter(|o| !o.deleting)
        .filter(|o| identity.owns(&o.labels, &o.annotations))
        .filter(|o| !desired.contains(&o.reference))
        .collect();
    let (copies, plain): (Vec<&LiveObject>, Vec<&LiveObject>) = candidates
        .into_iter()
        .partition(|o| o.labels.contains_key(config::COPY_OF_LABEL));
    let live_copies: Vec<config::LiveCopy> = copies
        .iter()
        .filter_map(|o| {
            Some(config::LiveCopy {
                kind: config::ConfigKind::of(&o.reference.kind)?,
                name: o.reference.name.clone(),
                copy_of: format!(
                    "{}/{}",
                    o.reference.namespace,
                    o.labels.get(config::COPY_OF_LABEL)?
                ),
                created: o.created.clone(),
            })
        })
        .collect();
    let referenced_here: BTreeSet<config::ConfigRef> = referenced
        .iter()
        .filter_map(|r| {
            Some(config::ConfigRef {
                kind: config::ConfigKind::of(&r.kind)?,
                name: r.name.clone(),
            })
        })
        .collect();
    let mut out = plain;
    for c in config::prunable(&live_copies, &referenced_here) {
        if let Some(o) = copies.iter().find(|o| {
            o.reference.name == c.name && config::ConfigKind::of(&o.reference.kind) == Some(c.kind)
        }) {
            out.push(o);
        }
    }
    out
}

/// The ConfigMaps and Secrets (namespace and name) a DaemonSet's template names.
pub fn template_configs(namespace: &str, daemonset: &Value) -> Vec<ObjectRef> {
    config::references(daemonset)
        .into_iter()
        .map(|r| ObjectRef {
            group: String::new(),
            kind: r.kind.as_str().to_string(),
            namespace: namespace.to_string(),
            name: r.name,
        })
        .collect()
}

/// The labels and annotations of an object.
pub fn meta_maps(obj: &Value) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let read = |field: &str| {
        obj.pointer(&format!("/metadata/{field}"))
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    };
    (read("labels"), read("annotations"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn id() -> SourceIdentity {
        SourceIdentity {
            repo: "https://git/r.git".into(),
            path: "agents".into(),
        }
    }

    fn ours(data: &str, hash: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "n",
                "labels": {keys::MANAGED_BY_LABEL: keys::MANAGED_BY_VALUE},
                "annotations": {keys::SOURCE_REPO: "https://git/r.git", keys::SOURCE_PATH: "agents",
                    keys::CONTENT_HASH: hash}},
            "data": {"k": data}})
    }

    #[test]
    fn absent_objects_are_created_and_equal_ones_left_alone() {
        let want = ours("v", "h1");
        assert_eq!(
            step(&id(), false, &want, "h1", None, None),
            ObjectStep::Create
        );
        assert_eq!(
            step(&id(), false, &want, "h1", Some(&want), Some(&want)),
            ObjectStep::InSync
        );
    }

    #[test]
    fn a_change_is_drift_only_when_nodewave_applied_this_content() {
        let want = ours("v", "h1");
        let edited = ours("edited", "h1");
        let ObjectStep::Update { drift, diff } =
            step(&id(), false, &want, "h1", Some(&edited), Some(&want))
        else {
            panic!("expected an update");
        };
        assert!(drift);
        assert_eq!(diff.paths, vec!["data.k".to_string()]);
        // An older commit's content: a new commit, not drift.
        let older = ours("old", "h0");
        assert!(matches!(
            step(&id(), false, &want, "h1", Some(&older), Some(&want)),
            ObjectStep::Update { drift: false, .. }
        ));
    }

    #[test]
    fn foreign_objects_are_refused_unless_opted_in() {
        let want = ours("v", "h1");
        let foreign = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "n"}, "data": {"k": "x"}});
        assert!(matches!(
            step(&id(), false, &want, "h1", Some(&foreign), Some(&want)),
            ObjectStep::Refuse { .. }
        ));
        assert!(matches!(
            step(&id(), true, &want, "h1", Some(&foreign), Some(&want)),
            ObjectStep::Update { drift: false, .. }
        ));
        let other = SourceIdentity {
            repo: "https://git/r.git".into(),
            path: "elsewhere".into(),
        };
        let ObjectStep::Refuse { why } = step(&other, false, &want, "h1", Some(&want), Some(&want))
        else {
            panic!("expected a refusal");
        };
        assert!(why.contains("another repository or path"), "{why}");
    }

    #[test]
    fn only_own_objects_missing_from_the_commit_are_pruned() {
        let r = |name: &str| ObjectRef {
            group: String::new(),
            kind: "ConfigMap".into(),
            namespace: "n".into(),
            name: name.into(),
        };
        let (labels, annotations) = meta_maps(&ours("v", "h"));
        let live = vec![
            LiveObject {
                reference: r("kept"),
                uid: "1".into(),
                labels: labels.clone(),
                annotations: annotations.clone(),
                deleting: false,
                created: String::new(),
            },
            LiveObject {
                reference: r("gone"),
                uid: "2".into(),
                labels: labels.clone(),
                annotations: annotations.clone(),
                deleting: false,
                created: String::new(),
            },
            LiveObject {
                reference: r("other-path"),
                uid: "3".into(),
                labels,
                annotations: BTreeMap::from([(
                    keys::SOURCE_REPO.into(),
                    "https://git/r.git".into(),
                )]),
                deleting: false,
                created: String::new(),
            },
        ];
        let kept = r("kept");
        let desired = BTreeSet::from([&kept]);
        let pruned: Vec<&str> = to_prune(&id(), &desired, &BTreeSet::new(), &live)
            .iter()
            .map(|o| o.reference.name.as_str())
            .collect();
        assert_eq!(pruned, ["gone"]);
    }

    #[test]
    fn config_copies_stay_while_referenced_or_among_the_newest() {
        let (mut labels, annotations) = meta_maps(&ours("v", "h"));
        labels.insert(config::COPY_OF_LABEL.into(), "agent-config".into());
        let copy = |name: &str, created: &str| LiveObject {
            reference: ObjectRef {
                group: String::new(),
                kind: "ConfigMap".into(),
                namespace: "n".into(),
                name: name.into(),
            },
            uid: name.into(),
            labels: labels.clone(),
            annotations: annotations.clone(),
            deleting: false,
            created: created.into(),
        };
        let live: Vec<LiveObject> = (1..=6)
            .map(|i| {
                copy(
                    &format!("agent-config-{i}"),
                    &format!("2026-12-01T00:0{i}:00Z"),
                )
            })
            .collect();
        // -6 is the desired copy; -1 is still named by a live template.
        let current = live[5].reference.clone();
        let desired = BTreeSet::from([&current]);
        let referenced = BTreeSet::from([live[0].reference.clone()]);
        let pruned: Vec<&str> = to_prune(&id(), &desired, &referenced, &live)
            .iter()
            .map(|o| o.reference.name.as_str())
            .collect();
        assert_eq!(pruned, ["agent-config-2"]);
    }
}
