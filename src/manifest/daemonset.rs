//! Checks of one `apps/v1 DaemonSet` document: schema, names, selector and the
//! DaemonSet best practices.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Container;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;

use super::findings::{
    HOST_NETWORK, HOST_PID, IMAGE_DIGEST, IMAGE_UNPINNED, INVALID_OBJECT, NAMESPACE_NOT_ALLOWED,
    PRIVILEGED, PROBES_MISSING, RESOURCES_MISSING, SELECTOR_MISMATCH, UNKNOWN_FIELD,
    UPDATE_STRATEGY,
};
use super::lines::Path;
use super::{DesiredDaemonSet, Doc, LoadOptions, ObjectKey, Report};
use crate::keys;

/// Checks a DaemonSet document. Returns it whenever it has a name, even with errors,
/// so that later commit-wide checks (duplicates, policy targets) do not pile up
/// follow-on errors.
pub(crate) fn check(
    doc: &Doc<'_>,
    report: &mut Report<'_>,
    opts: &LoadOptions,
) -> Option<DesiredDaemonSet> {
    let namespace = doc
        .str_at("metadata.namespace")
        .filter(|ns| !ns.is_empty())
        .unwrap_or(&opts.default_namespace)
        .to_string();
    let label = doc.object_label("DaemonSet", &namespace);
    let object = Some(label.as_str());

    let ds: DaemonSet = match serde_json::from_value(doc.value.clone()) {
        Ok(ds) => ds,
        Err(json_error) => {
            // serde_json knows no positions; deserializing the YAML text again yields
            // the line of the offending value.
            // serde_json's message names the offending value; the YAML one only its type.
            let line = doc.deserialize::<DaemonSet>().err().and_then(|e| e.line);
            let json_message = json_error.to_string();
            let json_message = json_message
                .strip_suffix(" at line 0 column 0")
                .unwrap_or(&json_message);
            let message = doc.with_field(line, json_message);
            let mut location = doc.location(&Path::root());
            location.line = line.or(location.line);
            report.add(
                INVALID_OBJECT,
                location,
                object,
                format!("not a valid apps/v1 DaemonSet: {message}; fix the value's type or add the missing field"),
            );
            return None;
        }
    };

    if let Ok(round_trip) = serde_json::to_value(&ds) {
        let mut unknown = Vec::new();
        unknown_fields(&doc.value, &round_trip, &Path::root(), &mut unknown);
        for path in unknown {
            report.add(
                UNKNOWN_FIELD,
                doc.location(&path),
                object,
                format!("{path} is not a field of apps/v1 DaemonSet: fix its spelling or remove it (the API server would drop it silently)"),
            );
        }
    }

    let name = check_names(doc, &ds, &namespace, report, object);

    if !opts.namespace_allowed(&namespace) {
        let path = Path::parse("metadata.namespace");
        report.add(
            NAMESPACE_NOT_ALLOWED,
            doc.location(&path),
            object,
            format!(
                "namespace {namespace:?} is not one nodewave may manage (allowed: {}): move the DaemonSet to an allowed namespace or extend the allowed list",
                opts.allowed_namespaces.join(", ")
            ),
        );
    }

    check_spec(doc, &ds, report, object);

    let name = name?;
    let mut manifest = doc.value.clone();
    if let Some(meta) = manifest.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("namespace".to_string(), Value::String(namespace.clone()));
    }
    Some(DesiredDaemonSet {
        key: ObjectKey::new(namespace, name),
        manifest,
        location: doc.location(&Path::root()),
    })
}

/// Collects keys of `input` that did not survive a round trip through the typed model.
/// Only keys are compared: k8s-openapi normalises some values (quantities,
/// int-or-string), and free-form maps such as labels round-trip whole.
fn unknown_fields(input: &Value, round_trip: &Value, path: &Path, out: &mut Vec<Path>) {
    match (input, round_trip) {
        (Value::Object(input), Value::Object(known)) => {
            for (key, value) in input {
                let child = path.key(key.clone());
                match known.get(key) {
                    Some(known_value) => unknown_fields(value, known_value, &child, out),
                    // An explicit null deserializes to an absent optional field.
                    None if value.is_null() => {}
                    None => out.push(child),
                }
            }
        }
        (Value::Array(input), Value::Array(known)) => {
            for (i, (value, known_value)) in input.iter().zip(known).enumerate() {
                unknown_fields(value, known_value, &path.index(i), out);
            }
        }
        _ => {}
    }
}

fn check_names(
    doc: &Doc<'_>,
    ds: &DaemonSet,
    namespace: &str,
    report: &mut Report<'_>,
    object: Option<&str>,
) -> Option<String> {
    let Some(name) = ds.metadata.name.clone().filter(|n| !n.is_empty()) else {
        report.add(
            INVALID_OBJECT,
            doc.location(&Path::parse("metadata")),
            object,
            "metadata.name is missing: give the DaemonSet a name",
        );
        return None;
    };
    if let Err(why) = dns_subdomain(&name) {
        report.add(
            INVALID_OBJECT,
            doc.location(&Path::parse("metadata.name")),
            object,
            format!("metadata.name {name:?} is not a valid DaemonSet name: {why}"),
        );
    }
    if let Err(why) = dns_label(namespace) {
        report.add(
            INVALID_OBJECT,
            doc.location(&Path::parse("metadata.namespace")),
            object,
            format!("namespace {namespace:?} is not a valid namespace name: {why}"),
        );
    }
    Some(name)
}

fn check_spec(doc: &Doc<'_>, ds: &DaemonSet, report: &mut Report<'_>, object: Option<&str>) {
    let Some(spec) = &ds.spec else {
        report.add(
            INVALID_OBJECT,
            doc.location(&Path::root()),
            object,
            "the DaemonSet has no spec: add spec.selector and spec.template with at least one container",
        );
        return;
    };

    check_selector(
        doc,
        &spec.selector,
        spec.template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.as_ref()),
        report,
        object,
    );

    if let Some(strategy) = &spec.update_strategy {
        let kind = strategy.type_.as_deref().unwrap_or("RollingUpdate");
        if kind != "OnDelete" {
            report.add(
                UPDATE_STRATEGY,
                doc.location(&Path::parse("spec.updateStrategy")),
                object,
                format!(
                    "spec.updateStrategy is {kind}: nodewave always applies DaemonSets with updateStrategy OnDelete and replaces pods itself, pool by pool, following the RolloutPolicy; remove spec.updateStrategy (or set type: OnDelete) and tune the rollout in the RolloutPolicy"
                ),
            );
        }
    }

    let Some(pod) = &spec.template.spec else {
        report.add(
            INVALID_OBJECT,
            doc.location(&Path::parse("spec.template")),
            object,
            "spec.template.spec is missing: add a pod spec with at least one container",
        );
        return;
    };
    if pod.containers.is_empty() {
        report.add(
            INVALID_OBJECT,
            doc.location(&Path::parse("spec.template.spec.containers")),
            object,
            "spec.template.spec.containers is empty: add at least one container",
        );
    }

    let annotations = ds.metadata.annotations.as_ref();
    let opted_in = |key: &str| {
        annotations
            .and_then(|a| a.get(key))
            .is_some_and(|v| v == "true")
    };
    let pod_path = Path::parse("spec.template.spec");

    if pod.host_network == Some(true) && !opted_in(keys::ALLOW_HOST_NETWORK) {
        report.add(
            HOST_NETWORK,
            doc.location(&pod_path.key("hostNetwork")),
            object,
            format!(
                "the pods use the host network (hostNetwork: true), which exposes every port of the node: remove hostNetwork, or annotate the DaemonSet with {}: \"true\" if this is intended",
                keys::ALLOW_HOST_NETWORK
            ),
        );
    }
    if pod.host_pid == Some(true) && !opted_in(keys::ALLOW_HOST_PID) {
        report.add(
            HOST_PID,
            doc.location(&pod_path.key("hostPID")),
            object,
            format!(
                "the pods share the node's process namespace (hostPID: true) and can see and signal every process: remove hostPID, or annotate the DaemonSet with {}: \"true\" if this is intended",
                keys::ALLOW_HOST_PID
            ),
        );
    }

    let mut seen_names = BTreeSet::new();
    let groups = [
        ("containers", pod.containers.as_slice(), true),
        (
            "initContainers",
            pod.init_containers.as_deref().unwrap_or_default(),
            false,
        ),
    ];
    for (field, containers, regular) in groups {
        for (i, container) in containers.iter().enumerate() {
            let path = pod_path.key(field).index(i);
            if let Err(why) = dns_label(&container.name) {
                report.add(
                    INVALID_OBJECT,
                    doc.location(&path.key("name")),
                    object,
                    format!("container name {:?} is invalid: {why}", container.name),
                );
            } else if !seen_names.insert(container.name.clone()) {
                report.add(
                    INVALID_OBJECT,
                    doc.location(&path.key("name")),
                    object,
                    format!(
                        "container name {:?} is used twice in the pod: rename one of them",
                        container.name
                    ),
                );
            }
            check_container(doc, container, &path, regular, report, object);
            super::ports::check_container_ports(doc, container, &path, report, object);
            if container
                .security_context
                .as_ref()
                .and_then(|s| s.privileged)
                == Some(true)
                && !opted_in(keys::ALLOW_PRIVILEGED)
            {
                report.add(
                    PRIVILEGED,
                    doc.location(&path.join("securityContext.privileged")),
                    object,
                    format!(
                        "container {:?} runs privileged, with full access to the node: drop privileged and add only the capabilities it needs (securityContext.capabilities.add), or annotate the DaemonSet with {}: \"true\" if this is intended",
                        container.name,
                        keys::ALLOW_PRIVILEGED
                    ),
                );
            }
        }
    }
}

fn check_container(
    doc: &Doc<'_>,
    container: &Container,
    path: &Path,
    regular: bool,
    report: &mut Report<'_>,
    object: Option<&str>,
) {
    let name = &container.name;
    let resources = container.resources.as_ref();
    let mut missing = Vec::new();
    for (kind, set) in [
        ("requests", resources.and_then(|r| r.requests.as_ref())),
        ("limits", resources.and_then(|r| r.limits.as_ref())),
    ] {
        for resource in ["cpu", "memory"] {
            if !set.is_some_and(|s| s.contains_key(resource)) {
                missing.push(format!("resources.{kind}.{resource}"));
            }
        }
    }
    if !missing.is_empty() {
        report.add(
            RESOURCES_MISSING,
            doc.location(&path.key("resources")),
            object,
            format!(
                "container {name:?} does not set {}: add {} so the pod gets its share on every node and cannot starve the node's other workloads",
                join_and(&missing),
                if missing.len() == 1 { "it" } else { "them" }
            ),
        );
    }

    if regular {
        let mut missing = Vec::new();
        if container.liveness_probe.is_none() {
            missing.push("livenessProbe");
        }
        if container.readiness_probe.is_none() {
            missing.push("readinessProbe");
        }
        if !missing.is_empty() {
            report.add(
                PROBES_MISSING,
                doc.location(path),
                object,
                format!(
                    "container {name:?} has no {}: add a readinessProbe so nodewave's health gate only passes once the agent really works, and a livenessProbe so a hung agent is restarted",
                    missing.join(" and no ")
                ),
            );
        }
    }

    let image_path = path.key("image");
    let image = container.image.as_deref().unwrap_or_default();
    if image.is_empty() {
        report.add(
            INVALID_OBJECT,
            doc.location(&image_path),
            object,
            format!("container {name:?} has no image: set image to a pinned reference such as registry/agent:1.2.3"),
        );
        return;
    }
    let reference = ImageRef::parse(image);
    if reference.digest.is_none() {
        match reference.tag {
            None => report.add(
                IMAGE_UNPINNED,
                doc.location(&image_path),
                object,
                format!(
                    "container {name:?} uses image {image:?} without a tag, which means latest: pin a version (e.g. \"{image}:1.2.3\") or a digest so every node runs the same code and a rollback restores the previous image"
                ),
            ),
            Some("latest") => report.add(
                IMAGE_UNPINNED,
                doc.location(&image_path),
                object,
                format!(
                    "container {name:?} uses image {image:?}: latest moves, so nodes would run different code and rollbacks would not restore anything; pin a version tag or a digest"
                ),
            ),
            Some(_) => {}
        }
    }
    if report.enabled(IMAGE_DIGEST) && !reference.digest.is_some_and(|d| d.starts_with("sha256:")) {
        report.add(
            IMAGE_DIGEST,
            doc.location(&image_path),
            object,
            format!(
                "container {name:?} uses image {image:?}, which is not pinned by digest: write it as name@sha256:<digest> (a tag may stay in front of the @) so the image cannot change under the same tag"
            ),
        );
    }
}

/// The parts of an image reference that matter for pinning.
struct ImageRef<'a> {
    tag: Option<&'a str>,
    digest: Option<&'a str>,
}

impl<'a> ImageRef<'a> {
    fn parse(image: &'a str) -> Self {
        let (rest, digest) = match image.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest)),
            None => (image, None),
        };
        // A colon before the last slash belongs to a registry port, not a tag.
        let last = rest.rsplit('/').next().unwrap_or(rest);
        let tag = last
            .split_once(':')
            .map(|(_, tag)| tag)
            .filter(|t| !t.is_empty());
        Self { tag, digest }
    }
}

fn check_selector(
    doc: &Doc<'_>,
    selector: &LabelSelector,
    labels: Option<&BTreeMap<String, String>>,
    report: &mut Report<'_>,
    object: Option<&str>,
) {
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    let selector_path = Path::parse("spec.selector");
    // k8s-openapi fills in a missing required selector with an empty one.
    if doc
        .value
        .pointer("/spec/selector")
        .is_none_or(Value::is_null)
    {
        report.add(
            INVALID_OBJECT,
            doc.location(&selector_path),
            object,
            format!(
                "spec.selector is missing: add spec.selector.matchLabels with the template's identifying labels (template labels: {})",
                format_map(labels)
            ),
        );
        return;
    }
    let match_labels = selector.match_labels.as_ref().filter(|m| !m.is_empty());
    let expressions = selector.match_expressions.as_deref().unwrap_or_default();
    if match_labels.is_none() && expressions.is_empty() {
        report.add(
            SELECTOR_MISMATCH,
            doc.location(&selector_path),
            object,
            format!(
                "spec.selector is empty and would select every pod in the namespace: set spec.selector.matchLabels to the template's identifying labels (template labels: {})",
                format_map(labels)
            ),
        );
        return;
    }
    if let Some(match_labels) = match_labels {
        let matches = match_labels.iter().all(|(k, v)| labels.get(k) == Some(v));
        if !matches {
            report.add(
                SELECTOR_MISMATCH,
                doc.location(&selector_path.key("matchLabels")),
                object,
                format!(
                    "selector {} does not match template labels {}: add the selector's labels to spec.template.metadata.labels (the selector cannot be changed once the DaemonSet exists)",
                    format_map(match_labels),
                    format_map(labels)
                ),
            );
        }
    }
    for (i, expr) in expressions.iter().enumerate() {
        let values = expr.values.as_deref().unwrap_or_default();
        let value = labels.get(&expr.key);
        let ok = match expr.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => {
                report.add(
                    INVALID_OBJECT,
                    doc.location(&selector_path.join("matchExpressions").index(i).key("operator")),
                    object,
                    format!("selector operator {other:?} is invalid: use In, NotIn, Exists or DoesNotExist"),
                );
                continue;
            }
        };
        if !ok {
            report.add(
                SELECTOR_MISMATCH,
                doc.location(&selector_path.join("matchExpressions").index(i)),
                object,
                format!(
                    "selector expression {} {} [{}] does not match template labels {}: change spec.template.metadata.labels so the DaemonSet selects its own pods",
                    expr.key,
                    expr.operator,
                    values.join(", "),
                    format_map(labels)
                ),
            );
        }
    }
}

fn format_map(map: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = map.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("{{{}}}", pairs.join(", "))
}

fn join_and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// RFC 1123 label, as Kubernetes requires for namespaces and container names.
pub(crate) fn dns_label(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err("it must be 1 to 63 characters long".to_string());
    }
    dns_chars(s)
}

/// RFC 1123 subdomain, as Kubernetes requires for most object names.
pub(crate) fn dns_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err("it must be 1 to 253 characters long".to_string());
    }
    s.split('.').try_for_each(dns_chars)
}

fn dns_chars(s: &str) -> Result<(), String> {
    let valid = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err("use only lowercase letters, digits and '-', starting and ending with a letter or digit".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_split_registry_ports_from_tags() {
        let r = ImageRef::parse("registry:5000/fluent/fluent-bit");
        assert_eq!(r.tag, None);
        let r = ImageRef::parse("registry:5000/fluent/fluent-bit:3.1.4");
        assert_eq!(r.tag, Some("3.1.4"));
        let r = ImageRef::parse("fluent-bit:3.1@sha256:abc");
        assert_eq!((r.tag, r.digest), (Some("3.1"), Some("sha256:abc")));
    }

    #[test]
    fn dns_names() {
        assert!(dns_label("fluent-bit").is_ok());
        assert!(dns_label("Fluent").is_err());
        assert!(dns_label("-a").is_err());
        assert!(dns_label(&"a".repeat(64)).is_err());
        assert!(dns_subdomain("node.exporter").is_ok());
        assert!(dns_subdomain("node..exporter").is_err());
        assert!(dns_subdomain("node_exporter").is_err());
    }
}
