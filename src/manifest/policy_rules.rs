//! Checks of one `nodewave.io/v1alpha1 RolloutPolicy` document beyond what its serde
//! model enforces.

use std::collections::BTreeMap;

use serde_json::Value;

use super::daemonset::{dns_label, dns_subdomain};
use super::findings::{
    INVALID_OBJECT, INVALID_POLICY, NAMESPACE_NOT_ALLOWED, PROMETHEUS_URL_NOT_ALLOWED,
    UNKNOWN_FIELD,
};
use super::lines::Path;
use super::policy::RolloutPolicy;
use super::{Doc, LoadOptions, Location, ObjectKey, Report};

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
    let mut policy: RolloutPolicy = match doc.deserialize() {
        Ok(policy) => policy,
        Err(e) => {
            let (line, yaml_message) = (e.line, e.message);
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
    // A URL that is not even well-formed is reported by invalid-policy above.
    if let Some(prom) = &policy.spec.health.prometheus
        && check_url(&prom.url).is_ok()
        && let Err(message) = super::prometheus_url::check(&prom.url, &opts.allowed_prometheus_urls)
    {
        report.add(
            PROMETHEUS_URL_NOT_ALLOWED,
            doc.location(&Path::parse("spec.health.prometheus.url")),
            object,
            message,
        );
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

    range_errors(policy, &mut errors);

    if let Some(prom) = &spec.health.prometheus {
        let prom_path = Path::parse("spec.health.prometheus");
        if let Err(why) = check_url(&prom.url) {
            errors.push((
                prom_path.key("url"),
                format!("prometheus url {:?} {why}", prom.url),
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
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    // `[::1]:9090`: the port follows the bracket; otherwise the last colon.
    let (host, port) = match host_port.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((_, "")) => (host_port, None),
            Some((_, after)) => (host_port, Some(after.strip_prefix(':').unwrap_or("x"))),
            None => ("", None),
        },
        None => match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        },
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err("has no host: write it like http://prometheus.monitoring:9090");
    }
    if port.is_some_and(|p| !p.parse::<u16>().is_ok_and(|p| p > 0)) {
        return Err("has an invalid port: use a number from 1 to 65535");
    }
    Ok(())
}

/// Largest count a stage may name (`nodes`, `maxUnavailable`): more nodes than any
/// Kubernetes cluster supports is a typo, not a plan.
pub(crate) const MAX_NODE_COUNT: u32 = 100_000;

/// Durations and counts outside what makes sense for a rollout: each bound is far
/// beyond any reasonable setting and keeps time arithmetic far from overflow.
fn range_errors(policy: &RolloutPolicy, errors: &mut Vec<(Path, String)>) {
    use super::policy::{IntOrPercent, format_duration};
    use std::time::Duration;
    const HOUR: Duration = Duration::from_secs(3600);
    let mut duration = |path: Path, what: &str, d: Duration, min: Duration, max: Duration| {
        if d < min || d > max {
            errors.push((
                path,
                format!(
                    "{what} {} is outside {} to {}: {}",
                    format_duration(d),
                    format_duration(min),
                    format_duration(max),
                    if d < min {
                        "use a longer one"
                    } else {
                        "use a shorter one"
                    }
                ),
            ));
        }
    };
    let spec = &policy.spec;
    let health = Path::parse("spec.health");
    duration(
        health.key("readyTimeout"),
        "readyTimeout",
        spec.health.ready_timeout,
        Duration::from_secs(1),
        24 * HOUR,
    );
    if let Some(prom) = &spec.health.prometheus {
        let prom_path = health.key("prometheus");
        duration(
            prom_path.key("interval"),
            "prometheus interval",
            prom.interval,
            Duration::from_secs(1),
            HOUR,
        );
        duration(
            prom_path.key("unreachableGrace"),
            "prometheus unreachableGrace",
            prom.unreachable_grace,
            Duration::ZERO,
            24 * HOUR,
        );
    }
    let stages = Path::parse("spec.stages");
    for (i, stage) in spec.stages.iter().enumerate() {
        let here = stages.index(i);
        if let Some(bake) = stage.bake {
            duration(
                here.key("bake"),
                &format!("stage {:?} bake", stage.name),
                bake,
                Duration::ZERO,
                30 * 24 * HOUR,
            );
        }
    }
    let mut count = |path: Path, what: String, n: u32| {
        if n > MAX_NODE_COUNT {
            errors.push((
                path,
                format!(
                    "{what} is {n}, more nodes than any cluster has (at most {MAX_NODE_COUNT}): use a smaller count, or a percentage such as \"100%\""
                ),
            ));
        }
    };
    for (i, stage) in spec.stages.iter().enumerate() {
        let here = stages.index(i);
        if let Some(n) = stage.nodes {
            count(
                here.key("nodes"),
                format!("stage {:?} nodes", stage.name),
                n,
            );
        }
        if let IntOrPercent::Count(n) = stage.max_unavailable {
            count(
                here.key("maxUnavailable"),
                format!("stage {:?} maxUnavailable", stage.name),
                n,
            );
        }
    }
    if let IntOrPercent::Count(n) = spec.rollback.max_unavailable {
        count(
            Path::parse("spec.rollback.maxUnavailable"),
            "rollback maxUnavailable".to_string(),
            n,
        );
    }
}
