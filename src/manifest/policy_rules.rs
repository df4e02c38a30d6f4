//! Checks of one `nodewave.io/v1alpha1 RolloutPolicy` document beyond what its serde
//! model enforces.

use std::collections::BTreeMap;

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

    // Deserializing the YAML text (not the JSON value) keeps the error's line.
    let mut policy: RolloutPolicy = match serde_saphyr::from_str(&doc.source.text) {
        Ok(policy) => policy,
        Err(e) => {
            let (line, message) = saphyr_error(&e);
            let mut location = doc.location(&Path::root());
            location.line = line.or(location.line);
            let (check, fix) = if message.contains("unknown field") {
                (UNKNOWN_FIELD, "fix its spelling or remove it")
            } else {
                (INVALID_OBJECT, "fix the value or add the missing field")
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
    let mut pools: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
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
            if let Some((first_stage, first_name)) = pools.insert(pool, (i, &stage.name)) {
                let message = if first_stage == i {
                    format!(
                        "pool {pool:?} is listed twice in stage {:?}: remove one",
                        stage.name
                    )
                } else {
                    format!(
                        "pool {pool:?} is in stage {first_name:?} and again in stage {:?}: a pool belongs to exactly one stage",
                        stage.name
                    )
                };
                errors.push((pool_path, message));
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
