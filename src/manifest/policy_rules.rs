//! Checks of one `nodewave.io/v1alpha1 RolloutPolicy` document beyond what its serde
//! model enforces.

use std::collections::BTreeMap;

use serde_json::Value;

use super::daemonset::{dns_label, dns_subdomain};
use super::findings::{INVALID_OBJECT, INVALID_POLICY, NAMESPACE_NOT_ALLOWED, UNKNOWN_FIELD};
use super::lines::Path;
use super::policy::RolloutPolicy;
use super::{Doc, LoadOptions, Location, ObjectKey, Report, saphyr_error};

pub(crate) struct LoadedPolicy {
    pub key: ObjectKey,
    /// The DaemonSet it applies to: `spec.target.name` in the policy's namespace.
    pub target: ObjectKey,
    pub policy: RolloutPolicy,
    pub location: Location,
    pub target_location: Location,
}

pub(crate) fn check(
    doc: &Doc<'_>,
    report: &mut Report<'_>,
    opts: &LoadOptions,
) -> Option<LoadedPolicy> {
    let namespace = doc
        .str_at("metadata.namespace")
        .filter(|ns| !ns.is_empty())
        .unwrap_or(&opts.default_namespace)
        .to_string();
    let label = doc.object_label("RolloutPolicy", &namespace);
    let object = Some(label.as_str());

    // serde names a missing field but not the mapping that lacks it, so required
    // fields are checked on the document first.
    let missing = missing_fields(&doc.value);
    for (parent, field) in &missing {
        report.add(
            INVALID_OBJECT,
            doc.location(parent),
            object,
            format!("{} is missing: add it", parent.key(*field)),
        );
    }
    if !missing.is_empty() {
        return None;
    }

    // Deserializing the YAML text (not the JSON value) yields the error's line;
    // serde_json's message is the more telling one (it quotes the bad value).
    let mut policy: RolloutPolicy = match serde_saphyr::from_str(&doc.source.text) {
        Ok(policy) => policy,
        Err(e) => {
            let (line, yaml_message) = saphyr_error(&e);
            let message = match serde_json::from_value::<RolloutPolicy>(doc.value.clone()) {
                Err(json_error) => json_error.to_string(),
                Ok(_) => yaml_message,
            };
            let message = doc.with_field(line, &message);
            let mut location = doc.location(&Path::root());
            location.line = line.or(location.line);
            let (check, fix) = if message.contains("unknown field") {
                (UNKNOWN_FIELD, "fix its spelling or remove it")
            } else {
                (INVALID_OBJECT, "fix the value")
            };
            report.add(
                check,
                location,
                object,
                format!(
                    "not a valid {} RolloutPolicy: {message}; {fix}",
                    super::policy::API_VERSION
                ),
            );
            return None;
        }
    };
    policy.metadata.namespace = Some(namespace.clone());

    if let Err(why) = dns_subdomain(&policy.metadata.name) {
        report.add(
            INVALID_OBJECT,
            doc.location(&Path::parse("metadata.name")),
            object,
            format!(
                "metadata.name {:?} is not a valid name: {why}",
                policy.metadata.name
            ),
        );
    }
    if let Err(why) = dns_label(&namespace) {
        report.add(
            INVALID_OBJECT,
            doc.location(&Path::parse("metadata.namespace")),
            object,
            format!("namespace {namespace:?} is not a valid namespace name: {why}"),
        );
    }
    if !opts.namespace_allowed(&namespace) {
        report.add(
            NAMESPACE_NOT_ALLOWED,
            doc.location(&Path::parse("metadata.namespace")),
            object,
            format!(
                "namespace {namespace:?} is not one nodewave may manage (allowed: {}): move the policy and its DaemonSet to an allowed namespace or extend the allowed list",
                opts.allowed_namespaces.join(", ")
            ),
        );
    }

    for (path, message) in semantic_errors(&policy) {
        report.add(INVALID_POLICY, doc.location(&path), object, message);
    }

    Some(LoadedPolicy {
        key: ObjectKey::new(namespace.clone(), policy.metadata.name.clone()),
        target: ObjectKey::new(namespace, policy.spec.target.name.clone()),
        location: doc.location(&Path::root()),
        target_location: doc.location(&Path::parse("spec.target.name")),
        policy,
    })
}

/// Fields the policy model requires, as (parent, field); `[]` stands for every item.
const REQUIRED: &[(&str, &str)] = &[
    ("", "metadata"),
    ("metadata", "name"),
    ("", "spec"),
    ("spec", "target"),
    ("spec.target", "name"),
    ("spec.stages[]", "name"),
    ("spec.stages[]", "pools"),
    ("spec.health.prometheus", "url"),
    ("spec.health.prometheus", "checks"),
    ("spec.health.prometheus.checks[]", "name"),
    ("spec.health.prometheus.checks[]", "query"),
];

/// Required fields absent from mappings that exist; absent parents are reported at
/// their own level.
fn missing_fields(doc: &Value) -> Vec<(Path, &'static str)> {
    let mut missing = Vec::new();
    for (parent, field) in REQUIRED {
        let mut nodes = vec![(Path::root(), doc)];
        for part in parent.split('.').filter(|p| !p.is_empty()) {
            let (key, each) = match part.strip_suffix("[]") {
                Some(key) => (key, true),
                None => (part, false),
            };
            let mut next = Vec::new();
            for (path, value) in nodes {
                let Some(child) = value.get(key) else {
                    continue;
                };
                let path = path.key(key);
                if each {
                    if let Some(items) = child.as_array() {
                        next.extend(
                            items
                                .iter()
                                .enumerate()
                                .map(|(i, item)| (path.index(i), item)),
                        );
                    }
                } else {
                    next.push((path, child));
                }
            }
            nodes = next;
        }
        for (path, value) in nodes {
            if value.as_object().is_some_and(|m| !m.contains_key(*field)) {
                missing.push((path, *field));
            }
        }
    }
    missing
}

/// Inconsistencies the serde model cannot express, each with the path to point at.
fn semantic_errors(policy: &RolloutPolicy) -> Vec<(Path, String)> {
    let mut errors = Vec::new();
    let spec = &policy.spec;
    if spec.target.name.is_empty() {
        errors.push((
            Path::parse("spec.target.name"),
            "spec.target.name is empty: name the DaemonSet this policy rolls out".to_string(),
        ));
    }

    let stages = Path::parse("spec.stages");
    let last = spec.stages.len().saturating_sub(1);
    let mut stage_names: BTreeMap<&str, usize> = BTreeMap::new();
    // pool -> (stage index, stage name, whether that stage updates the whole pool)
    let mut pools: BTreeMap<&str, (usize, &str, bool)> = BTreeMap::new();
    for (i, stage) in spec.stages.iter().enumerate() {
        let here = stages.index(i);
        if stage.name.trim().is_empty() {
            errors.push((here.key("name"), format!("stage {} has an empty name: name it (names are used by `nodewave rollout approve`)", i + 1)));
        } else if let Some(first) = stage_names.insert(&stage.name, i) {
            errors.push((
                here.key("name"),
                format!(
                    "stage name {:?} is used by stages {} and {}: give every stage a unique name",
                    stage.name,
                    first + 1,
                    i + 1
                ),
            ));
        }
        if stage.pools.is_empty() {
            errors.push((
                here.key("pools"),
                format!("stage {:?} names no pools: list at least one pool, or \"*\" for all remaining pools", stage.name),
            ));
        }
        if stage.nodes == Some(0) {
            errors.push((
                here.key("nodes"),
                format!("stage {:?} has nodes: 0 and would update nothing: set nodes to at least 1 or remove it to update every node of the stage", stage.name),
            ));
        }
        for (j, pool) in stage.pools.iter().enumerate() {
            let pool_path = here.key("pools").index(j);
            if pool == "*" {
                if i != last {
                    errors.push((
                        pool_path.clone(),
                        format!(
                            "stage {:?} uses \"*\" (every remaining pool) but is not the last stage: move \"*\" to the last stage so later stages have pools left",
                            stage.name
                        ),
                    ));
                }
            } else if pool.trim().is_empty() {
                errors.push((
                    pool_path.clone(),
                    format!("stage {:?} has an empty pool name", stage.name),
                ));
                continue;
            }
            // A canary stage (with `nodes`) updates only part of its pools, so a later
            // stage naming the same pool finishes it; any other repeat is a mistake.
            let full = stage.nodes.is_none();
            match pools.get(pool.as_str()) {
                Some(&(first_stage, _, _)) if first_stage == i => errors.push((
                    pool_path,
                    format!("pool {pool:?} is listed twice in stage {:?}: remove one", stage.name),
                )),
                Some(&(_, first_name, true)) => errors.push((
                    pool_path,
                    format!(
                        "pool {pool:?} is already rolled out completely by stage {first_name:?} and again named in stage {:?}: remove it from one of them (only a canary stage with nodes may share its pools with a later stage)",
                        stage.name
                    ),
                )),
                _ => {
                    pools.insert(pool, (i, &stage.name, full));
                }
            }
        }
    }

    if let Some(prom) = &spec.health.prometheus {
        let prom_path = Path::parse("spec.health.prometheus");
        if let Err(why) = check_url(&prom.url) {
            errors.push((
                prom_path.key("url"),
                format!("prometheus url {:?} {why}", prom.url),
            ));
        }
        if prom.interval.is_zero() {
            errors.push((
                prom_path.key("interval"),
                "prometheus interval is 0: set it to e.g. 30s".to_string(),
            ));
        }
        let mut check_names: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, check) in prom.checks.iter().enumerate() {
            let here = prom_path.key("checks").index(i);
            if let Some(first) = check_names.insert(&check.name, i) {
                errors.push((
                    here.key("name"),
                    format!(
                        "prometheus check name {:?} is used by checks {} and {}: make names unique",
                        check.name,
                        first + 1,
                        i + 1
                    ),
                ));
            }
            if check.query.trim().is_empty() {
                errors.push((
                    here.key("query"),
                    format!(
                        "prometheus check {:?} has an empty query: write the PromQL to evaluate",
                        check.name
                    ),
                ));
            }
            match (check.min, check.max) {
                (None, None) => errors.push((
                    here.clone(),
                    format!(
                        "prometheus check {:?} sets neither max nor min and can never fail: add max (fail above) or min (fail below)",
                        check.name
                    ),
                )),
                (Some(min), Some(max)) if min > max => errors.push((
                    here.key("min"),
                    format!("prometheus check {:?} has min {min} above max {max} and always fails: swap them", check.name),
                )),
                _ => {}
            }
        }
    }
    errors
}

fn check_url(url: &str) -> Result<(), &'static str> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or("must start with http:// or https://")?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err("has no host: write it like http://prometheus.monitoring:9090");
    }
    Ok(())
}
