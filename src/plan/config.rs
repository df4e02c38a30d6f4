//! Config rollouts: a ConfigMap or Secret that a managed DaemonSet's pod template
//! references is applied (also) under a content-hashed name, `<name>-<hash>`,
//! immutable, and the template is rewritten to refer to that copy. A change of the
//! config is then a change of the pod template: a new revision that goes through
//! the stages and gates like an image change, and a rollback brings the old config
//! back with the old pods (the old copy is still there: it is immutable and kept
//! while it may be needed, see [`keep`]).
//!
//! Pure: objects in, objects out.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Annotation on a ConfigMap/Secret in Git: `in-place` applies it under its own
/// name only, and pods pick up a change whenever the kubelet refreshes the volume
/// (or never, for environment variables): not staged, not rolled back.
pub const ROLLOUT_ANNOTATION: &str = "nodewave.io/config-rollout";
pub const IN_PLACE: &str = "in-place";
/// Label on every hashed copy: the name it is a copy of.
pub const COPY_OF_LABEL: &str = "nodewave.io/config-of";
/// How many hashed copies of one config are kept besides those still referenced.
pub const KEEP_COPIES: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConfigKind {
    ConfigMap,
    Secret,
}

impl ConfigKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConfigMap => "ConfigMap",
            Self::Secret => "Secret",
        }
    }

    pub fn of(kind: &str) -> Option<Self> {
        match kind {
            "ConfigMap" => Some(Self::ConfigMap),
            "Secret" => Some(Self::Secret),
            _ => None,
        }
    }
}

/// A reference from a pod template to a ConfigMap or Secret (same namespace).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfigRef {
    pub kind: ConfigKind,
    pub name: String,
}

/// Where in a pod spec a config name appears, as (path to a list or object, key).
fn visit_refs(spec: &mut Value, f: &mut dyn FnMut(ConfigKind, &mut Value)) {
    if let Some(volumes) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        for v in volumes {
            if let Some(n) = v.pointer_mut("/configMap/name") {
                f(ConfigKind::ConfigMap, n);
            }
            if let Some(n) = v.pointer_mut("/secret/secretName") {
                f(ConfigKind::Secret, n);
            }
            if let Some(sources) = v
                .pointer_mut("/projected/sources")
                .and_then(Value::as_array_mut)
            {
                for s in sources {
                    if let Some(n) = s.pointer_mut("/configMap/name") {
                        f(ConfigKind::ConfigMap, n);
                    }
                    if let Some(n) = s.pointer_mut("/secret/name") {
                        f(ConfigKind::Secret, n);
                    }
                }
            }
        }
    }
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers {
            if let Some(from) = c.get_mut("envFrom").and_then(Value::as_array_mut) {
                for e in from {
                    if let Some(n) = e.pointer_mut("/configMapRef/name") {
                        f(ConfigKind::ConfigMap, n);
                    }
                    if let Some(n) = e.pointer_mut("/secretRef/name") {
                        f(ConfigKind::Secret, n);
                    }
                }
            }
            if let Some(env) = c.get_mut("env").and_then(Value::as_array_mut) {
                for e in env {
                    if let Some(n) = e.pointer_mut("/valueFrom/configMapKeyRef/name") {
                        f(ConfigKind::ConfigMap, n);
                    }
                    if let Some(n) = e.pointer_mut("/valueFrom/secretKeyRef/name") {
                        f(ConfigKind::Secret, n);
                    }
                }
            }
        }
    }
}

/// The ConfigMaps and Secrets a DaemonSet's pod template refers to.
pub fn references(daemonset: &Value) -> BTreeSet<ConfigRef> {
    let mut out = BTreeSet::new();
    let mut spec = daemonset
        .pointer("/spec/template/spec")
        .cloned()
        .unwrap_or(Value::Null);
    visit_refs(&mut spec, &mut |kind, name| {
        if let Some(n) = name.as_str() {
            out.insert(ConfigRef {
                kind,
                name: n.to_string(),
            });
        }
    });
    out
}

/// Rewrites the template's references by `renames`.
pub fn rewrite(daemonset: &mut Value, renames: &BTreeMap<ConfigRef, String>) {
    let Some(spec) = daemonset.pointer_mut("/spec/template/spec") else {
        return;
    };
    visit_refs(spec, &mut |kind, name| {
        let current = ConfigRef {
            kind,
            name: name.as_str().unwrap_or_default().to_string(),
        };
        if let Some(new) = renames.get(&current) {
            *name = Value::String(new.clone());
        }
    });
}

/// Hash of what a ConfigMap/Secret carries to pods (data, binary data, type).
pub fn content_hash(config: &Value) -> String {
    let mut h = Sha256::new();
    for field in ["type", "data", "binaryData", "stringData"] {
        h.update(field.as_bytes());
        h.update(serde_json::to_vec(config.get(field).unwrap_or(&Value::Null)).unwrap_or_default());
    }
    let digest = h.finalize();
    // Lowercase letters and digits only: valid in a DNS subdomain name.
    hex::encode(&digest[..5])
}

/// `<name>-<hash>`, shortened so it stays a valid object name (253 characters).
pub fn hashed_name(name: &str, hash: &str) -> String {
    let max = 253 - hash.len() - 1;
    let mut base = name.get(..max.min(name.len())).unwrap_or(name).to_string();
    while base.ends_with(['-', '.']) {
        base.pop();
    }
    format!("{base}-{hash}")
}

/// Whether a config is versioned by nodewave: referenced by a DaemonSet, not
/// opted out, and not immutable already (an immutable config, like Kustomize's
/// `configMapGenerator` output, is versioned by its own name).
pub fn is_versioned(config: &Value) -> bool {
    let opted_out = config
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(ROLLOUT_ANNOTATION))
        .and_then(Value::as_str)
        == Some(IN_PLACE);
    let immutable = config.get("immutable").and_then(Value::as_bool) == Some(true);
    !opted_out && !immutable
}

/// The immutable hashed copy of `config` named `name`.
pub fn hashed_copy(config: &Value, name: &str) -> Value {
    let mut copy = config.clone();
    let original = config
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let meta = &mut copy["metadata"];
    meta["name"] = Value::String(name.to_string());
    if !meta["labels"].is_object() {
        meta["labels"] = Value::Object(serde_json::Map::new());
    }
    meta["labels"][COPY_OF_LABEL] = Value::String(original);
    copy["immutable"] = Value::Bool(true);
    copy
}

/// A hashed copy as it exists in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveCopy {
    pub kind: ConfigKind,
    pub name: String,
    /// The config it is a copy of.
    pub copy_of: String,
    /// Creation time (RFC 3339; sorts in time order).
    pub created: String,
}

/// Which hashed copies to keep: every copy `referenced` (by the desired
/// DaemonSets or the live ones, whose templates name what their pods mount), and
/// the newest [`KEEP_COPIES`] of each config (a rollback to the last good commit
/// needs the copy its template names, even when no pod mounts it any more).
/// Returns the copies that may be deleted.
pub fn prunable<'a>(live: &'a [LiveCopy], referenced: &BTreeSet<ConfigRef>) -> Vec<&'a LiveCopy> {
    let mut by_config: BTreeMap<(ConfigKind, &str), Vec<&LiveCopy>> = BTreeMap::new();
    for c in live {
        by_config
            .entry((c.kind, c.copy_of.as_str()))
            .or_default()
            .push(c);
    }
    let mut out = Vec::new();
    for copies in by_config.values_mut() {
        copies.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.name.cmp(&b.name)));
        for c in copies.iter().skip(KEEP_COPIES) {
            let r = ConfigRef {
                kind: c.kind,
                name: c.name.clone(),
            };
            if !referenced.contains(&r) {
                out.push(*c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ds() -> Value {
        json!({"spec": {"template": {"spec": {
            "volumes": [
                {"name": "cfg", "configMap": {"name": "agent-config"}},
                {"name": "tls", "secret": {"secretName": "agent-tls"}},
                {"name": "p", "projected": {"sources": [{"configMap": {"name": "extra"}}, {"secret": {"name": "s2"}}]}},
                {"name": "host", "hostPath": {"path": "/var/log"}}
            ],
            "initContainers": [{"name": "i", "envFrom": [{"configMapRef": {"name": "init-env"}}]}],
            "containers": [{"name": "c",
                "envFrom": [{"secretRef": {"name": "creds"}}],
                "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "agent-config", "key": "a"}}},
                        {"name": "B", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "b"}}},
                        {"name": "C", "value": "plain"}]}]
        }}}})
    }

    fn r(kind: ConfigKind, name: &str) -> ConfigRef {
        ConfigRef {
            kind,
            name: name.into(),
        }
    }

    #[test]
    fn every_kind_of_reference_is_found() {
        use ConfigKind::{ConfigMap, Secret};
        let refs = references(&ds());
        let want: BTreeSet<ConfigRef> = [
            r(ConfigMap, "agent-config"),
            r(Secret, "agent-tls"),
            r(ConfigMap, "extra"),
            r(Secret, "s2"),
            r(ConfigMap, "init-env"),
            r(Secret, "creds"),
        ]
        .into();
        assert_eq!(refs, want);
    }

    #[test]
    fn rewriting_changes_exactly_the_renamed_references() {
        let mut d = ds();
        let renames = BTreeMap::from([
            (
                r(ConfigKind::ConfigMap, "agent-config"),
                "agent-config-abc".to_string(),
            ),
            (r(ConfigKind::Secret, "creds"), "creds-def".to_string()),
        ]);
        rewrite(&mut d, &renames);
        let refs = references(&d);
        assert!(refs.contains(&r(ConfigKind::ConfigMap, "agent-config-abc")));
        assert!(!refs.contains(&r(ConfigKind::ConfigMap, "agent-config")));
        assert!(refs.contains(&r(ConfigKind::Secret, "creds-def")));
        // A Secret named like a renamed ConfigMap is a different object.
        assert!(refs.contains(&r(ConfigKind::Secret, "agent-tls")));
        assert_eq!(
            d.pointer("/spec/template/spec/containers/0/env/0/valueFrom/configMapKeyRef/name"),
            Some(&json!("agent-config-abc"))
        );
    }

    #[test]
    fn hashes_follow_the_content_only() {
        let a = json!({"metadata": {"name": "x", "labels": {"l": "1"}}, "data": {"k": "v"}});
        let b = json!({"metadata": {"name": "y"}, "data": {"k": "v"}});
        let c = json!({"metadata": {"name": "x"}, "data": {"k": "w"}});
        assert_eq!(content_hash(&a), content_hash(&b));
        assert_ne!(content_hash(&a), content_hash(&c));
        assert_eq!(content_hash(&a).len(), 10);
        let long = "a".repeat(260);
        let n = hashed_name(&long, "0123456789");
        assert_eq!(n.len(), 253);
        assert!(n.ends_with("-0123456789"));
    }

    #[test]
    fn copies_are_immutable_and_say_what_they_copy_and_opt_outs_are_honoured() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "agent-config"}, "data": {"k": "v"}});
        let copy = hashed_copy(&cm, "agent-config-0123456789");
        assert_eq!(copy["immutable"], json!(true));
        assert_eq!(
            copy["metadata"]["labels"][COPY_OF_LABEL],
            json!("agent-config")
        );
        assert!(is_versioned(&cm));
        let mut opted = cm.clone();
        opted["metadata"]["annotations"] = json!({ROLLOUT_ANNOTATION: IN_PLACE});
        assert!(!is_versioned(&opted));
        let mut generated = cm;
        generated["immutable"] = json!(true);
        assert!(!is_versioned(&generated));
    }

    #[test]
    fn pruning_keeps_referenced_and_recent_copies() {
        let copy = |name: &str, t: &str| LiveCopy {
            kind: ConfigKind::ConfigMap,
            name: name.into(),
            copy_of: "cfg".into(),
            created: t.into(),
        };
        let live = vec![
            copy("cfg-1", "2026-01-01T00:00:01Z"),
            copy("cfg-2", "2026-01-01T00:00:02Z"),
            copy("cfg-3", "2026-01-01T00:00:03Z"),
            copy("cfg-4", "2026-01-01T00:00:04Z"),
            copy("cfg-5", "2026-01-01T00:00:05Z"),
        ];
        let referenced = BTreeSet::from([r(ConfigKind::ConfigMap, "cfg-1")]);
        let gone: Vec<&str> = prunable(&live, &referenced)
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            gone,
            vec!["cfg-2"],
            "newest three and the referenced one stay"
        );
    }
}
