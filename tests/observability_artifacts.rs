//! Keeps the shipped observability artifacts from rotting: the Grafana
//! dashboard, the alert rules (plain and PrometheusRule), the promtool tests
//! and docs/metrics.md must agree with each other and with the metrics that
//! `nodewave::metrics::Metrics` actually exports. No cluster or Prometheus
//! needed; `hack/promtool-test.sh` runs the rules through promtool.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nodewave::desired::SourceIdentity;
use nodewave::metrics::{FetchResult, Metrics, RolloutOutcome, WebhookProvider, WebhookResult};
use nodewave::record::{DaemonSetRollout, PoolStatus, RecordStatus};
use nodewave::store::Stores;
use serde::Deserialize;
use serde_json::Value;

const DASHBOARD: &str = "dashboards/nodewave.json";
const RULES: &str = "deploy/prometheus/nodewave-rules.yaml";
const PROMETHEUS_RULE: &str = "deploy/prometheus/nodewave-prometheusrule.yaml";
const PROMTOOL_TESTS: &str = "deploy/prometheus/tests";
const DOCS: &str = "docs/metrics.md";

/// Alerts the runbooks and the end-to-end test rely on.
const REQUIRED_ALERTS: [&str; 10] = [
    "NodewaveRolloutRolledBack",
    "NodewaveRolloutStuck",
    "NodewaveDaemonSetDegraded",
    "NodewaveOutOfSync",
    "NodewaveDriftDetected",
    "NodewaveGitFetchFailing",
    "NodewaveCommitRejected",
    "NodewavePruneRefused",
    "NodewaveWebhookBadSignature",
    "NodewaveDown",
];

fn path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(path(relative)).unwrap_or_else(|e| panic!("reading {relative}: {e}"))
}

fn yaml(relative: &str) -> Value {
    serde_saphyr::from_str(&read(relative)).unwrap_or_else(|e| panic!("parsing {relative}: {e}"))
}

// ------------------------------------------------------------------ rules

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    interval: Option<String>,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    alert: Option<String>,
    record: Option<String>,
    expr: String,
    #[serde(rename = "for")]
    for_duration: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

fn rule_file() -> RuleFile {
    serde_saphyr::from_str(&read(RULES)).unwrap_or_else(|e| panic!("parsing {RULES}: {e}"))
}

fn alerts() -> Vec<Rule> {
    rule_file()
        .groups
        .into_iter()
        .flat_map(|g| g.rules)
        .filter(|r| r.alert.is_some())
        .collect()
}

fn alert_name(rule: &Rule) -> &str {
    rule.alert.as_deref().unwrap_or_default()
}

#[test]
fn every_alert_has_severity_summary_and_actionable_description() {
    let file = rule_file();
    let mut names = BTreeSet::new();
    for group in &file.groups {
        assert!(!group.name.is_empty());
        // The e2e test expects a rolled-back rollout to alert within ~1 minute.
        assert_eq!(
            group.interval.as_deref(),
            Some("15s"),
            "group {}: evaluation interval",
            group.name
        );
        for rule in &group.rules {
            let name = rule
                .alert
                .as_deref()
                .or(rule.record.as_deref())
                .unwrap_or("");
            assert!(!name.is_empty(), "rule without alert/record name");
            assert!(!rule.expr.trim().is_empty(), "{name}: empty expr");
            if rule.alert.is_none() {
                continue;
            }
            assert!(names.insert(name.to_owned()), "duplicate alert {name}");
            let severity = rule.labels.get("severity").map(String::as_str);
            assert!(
                matches!(severity, Some("critical" | "warning" | "info")),
                "{name}: severity {severity:?}"
            );
            for key in ["summary", "description"] {
                let text = rule.annotations.get(key).map_or("", |s| s.trim());
                assert!(!text.is_empty(), "{name}: missing {key}");
            }
            let description = &rule.annotations["description"];
            assert!(
                description.contains("What to do") && description.contains('`'),
                "{name}: the description must say what to do, with commands"
            );
        }
    }
    for required in REQUIRED_ALERTS {
        assert!(names.contains(required), "missing alert {required}");
    }
    let down = alerts()
        .into_iter()
        .find(|r| alert_name(r) == "NodewaveDown")
        .map(|r| r.expr)
        .unwrap_or_default();
    assert!(
        down.contains(r#"up{job="nodewave"} == 0"#)
            && down.contains(r#"absent(up{job="nodewave"})"#),
        "{down}"
    );
    // Event alerts must not wait: the rolled-back alert fires on the first evaluation.
    let rolled_back = alerts()
        .into_iter()
        .find(|r| alert_name(r) == "NodewaveRolloutRolledBack");
    assert!(
        rolled_back.is_some_and(|r| r.for_duration.is_none()),
        "NodewaveRolloutRolledBack must not have a `for:`"
    );
}

#[test]
fn prometheus_rule_groups_equal_plain_rules() {
    let plain = yaml(RULES);
    let operator = yaml(PROMETHEUS_RULE);
    assert_eq!(operator["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(operator["kind"], "PrometheusRule");
    assert!(operator["metadata"]["name"].is_string());
    assert!(plain["groups"].is_array());
    assert_eq!(
        operator["spec"]["groups"], plain["groups"],
        "{PROMETHEUS_RULE} spec.groups differs from {RULES}; regenerate it (docs/metrics.md)"
    );
}

#[test]
fn promtool_tests_cover_firing_and_not_firing_for_every_alert() {
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    let dir = path(PROMTOOL_TESTS);
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let file = entry.map(|e| e.path()).unwrap_or_default();
        if file.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let doc: Value = serde_saphyr::from_str(&text)
            .unwrap_or_else(|e| panic!("parsing {}: {e}", file.display()));
        assert_eq!(
            doc["rule_files"],
            serde_json::json!(["../nodewave-rules.yaml"]),
            "{}",
            file.display()
        );
        for test in doc["tests"].as_array().into_iter().flatten() {
            for case in test["alert_rule_test"].as_array().into_iter().flatten() {
                let name = case["alertname"].as_str().unwrap_or_default().to_owned();
                let expected = case["exp_alerts"].as_array().map_or(0, Vec::len);
                if expected == 0 {
                    quiet.insert(name);
                } else {
                    firing.insert(name);
                }
            }
        }
    }
    assert!(files > 0, "no promtool tests in {PROMTOOL_TESTS}");
    for rule in alerts() {
        let name = alert_name(&rule);
        assert!(firing.contains(name), "no promtool test where {name} fires");
        assert!(
            quiet.contains(name),
            "no promtool test where {name} stays quiet"
        );
    }
}

// -------------------------------------------------------------- dashboard

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("parsing {DASHBOARD}: {e}"))
}

/// Every panel, including those nested in collapsed rows.
fn panels(dashboard: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(panel.clone());
        out.extend(panel["panels"].as_array().into_iter().flatten().cloned());
    }
    out
}

fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    panels(dashboard)
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn dashboard_structure() {
    let d = dashboard();
    assert_eq!(d["title"], "nodewave");
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()), "uid");
    assert!(d["description"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion {}",
        d["schemaVersion"]
    );
    assert!(d["id"].is_null(), "an exported dashboard has id null");

    let vars: BTreeMap<String, Value> = d["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| (v["name"].as_str().unwrap_or_default().to_owned(), v.clone()))
        .collect();
    let datasource = &vars["datasource"];
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    for (name, label) in [("namespace", "namespace"), ("daemonset", "daemonset")] {
        let var = &vars[name];
        assert_eq!(var["type"], "query", "{name}");
        assert_eq!(var["datasource"]["uid"], "${datasource}", "{name}");
        let query = var["definition"].as_str().unwrap_or_default();
        assert!(
            query.starts_with("label_values(nodewave_daemonset_sync_status")
                && query.ends_with(&format!(", {label})")),
            "{name}: {query}"
        );
        assert_eq!(var["query"]["query"].as_str(), Some(query), "{name}");
    }

    let mut ids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    for panel in panels(&d) {
        let title = panel["title"].as_str().unwrap_or_default().to_owned();
        assert!(!title.is_empty(), "panel without title: {panel}");
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("{title}: id"));
        assert!(ids.insert(id), "duplicate panel id {id}");
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64(), grid["w"].as_u64());
        assert!(
            x.zip(w).is_some_and(|(x, w)| w > 0 && x + w <= 24) && grid["h"].as_u64().is_some(),
            "{title}: gridPos {grid}"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert!(
            titles.insert(title.clone()),
            "duplicate panel title {title}"
        );
        assert!(
            panel["description"].as_str().is_some_and(|s| s.len() > 20),
            "{title}: description"
        );
        assert_eq!(panel["datasource"]["type"], "prometheus", "{title}");
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        assert!(!targets.is_empty(), "{title}: no targets");
        let mut refs = BTreeSet::new();
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(!expr.trim().is_empty(), "{title}: empty expr");
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            assert!(
                refs.insert(target["refId"].as_str().unwrap_or_default().to_owned()),
                "{title}: duplicate refId"
            );
            // Per-DaemonSet metrics must honour the dashboard's variables.
            for per_ds in [
                "nodewave_daemonset_sync_status",
                "nodewave_daemonset_info",
                "nodewave_drift_detected_total",
                "nodewave_rollout_stage",
                "nodewave_rollout_pool_pods",
                "nodewave_rollouts_total",
                "nodewave_gate_failures_total",
            ] {
                if expr.contains(per_ds) {
                    assert!(
                        expr.contains(r#"namespace=~"$namespace""#)
                            && expr.contains(r#"daemonset=~"$daemonset""#),
                        "{title}: {per_ds} without $namespace/$daemonset filter"
                    );
                }
            }
        }
    }
    assert!(titles.len() >= 15, "only {} panels", titles.len());
}

// ---------------------------------------------------------------- metrics

/// Base metric names (`nodewave_…`, histogram suffixes removed) in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut start = 0;
    while let Some(offset) = expr[start..].find("nodewave_") {
        let begin = start + offset;
        let preceded_by_ident =
            begin > 0 && (bytes[begin - 1].is_ascii_alphanumeric() || bytes[begin - 1] == b'_');
        let end = expr[begin..]
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .map_or(expr.len(), |e| begin + e);
        if !preceded_by_ident {
            names.insert(base_name(&expr[begin..end]).to_owned());
        }
        start = end;
    }
    names
}

fn base_name(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

/// Records one sample through every public recording method.
fn metrics_with_one_sample_of_everything() -> Metrics {
    let m = Metrics::new();
    let timer = m.git_fetch_timer();
    drop(timer);
    m.observe_git_fetch_duration(Duration::from_millis(120));
    m.git_fetch_result(FetchResult::Success);
    m.git_fetch_result(FetchResult::Error);
    m.set_git_head("4f2c1e9");
    m.git_force_push();
    m.webhook_request(WebhookProvider::Gitlab, WebhookResult::BadSignature);
    m.init_commit_reject_reasons(["yaml-syntax"]);
    m.commit_rejected("yaml-syntax");
    m.prune_refused();
    m.set_prune_held_back(3);
    // Per-DaemonSet series come from the rollout records nodewave keeps.
    let identity = SourceIdentity {
        repo: "https://git.example/fleet.git".into(),
        path: String::new(),
    };
    let mut record = DaemonSetRollout::default();
    record.metadata.name = Some("fluent-bit".into());
    record.metadata.namespace = Some("logging".into());
    record.metadata.resource_version = Some("1".into());
    record.metadata.labels = Some(
        [(
            "app.kubernetes.io/managed-by".to_string(),
            "nodewave".to_string(),
        )]
        .into(),
    );
    record.metadata.annotations = Some(
        [
            ("nodewave.io/source-repo".to_string(), identity.repo.clone()),
            ("nodewave.io/source-path".to_string(), String::new()),
        ]
        .into(),
    );
    record.status = Some(RecordStatus {
        phase: "RolledBack".into(),
        applied_commit: Some("1a2b3c4".into()),
        last_good_commit: Some("1a2b3c4".into()),
        stage: "1/2 canary".into(),
        rollout_phase: "Updating".into(),
        pools: vec![PoolStatus {
            name: "canary".into(),
            updated: 1,
            ready: 0,
            total: 1,
        }],
        ..RecordStatus::default()
    });
    let stores = std::sync::Arc::new(Stores::default());
    stores.wrote_record(record);
    m.watch_daemonsets(stores, identity);
    m.drift_detected("logging", "fluent-bit");
    m.gate_failed(
        "logging",
        "fluent-bit",
        nodewave::rollout::Gate::FatalReason.metric_label(),
    );
    m.rollout_finished("logging", "fluent-bit", RolloutOutcome::RolledBack, 95.0);
    drop(m.rollback_timer());
    m.observe_rollback_duration(20.0);
    m.reconcile_error("apply");
    m.kube_request("patch", true);
    m.kube_request("list", false);
    m
}

fn exported_metric_names() -> BTreeSet<String> {
    let text = metrics_with_one_sample_of_everything().encode();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let end = l.find(['{', ' ']).unwrap_or(l.len());
            base_name(&l[..end]).to_owned()
        })
        .collect()
}

#[test]
fn every_queried_metric_is_exported() {
    let exported = exported_metric_names();
    let d = dashboard();
    let mut queried: BTreeMap<String, &str> = BTreeMap::new();
    for expr in dashboard_exprs(&d) {
        for name in metric_names(&expr) {
            queried.insert(name, DASHBOARD);
        }
    }
    for var in d["templating"]["list"].as_array().into_iter().flatten() {
        for name in metric_names(var["definition"].as_str().unwrap_or_default()) {
            queried.insert(name, DASHBOARD);
        }
    }
    for rule in alerts() {
        for name in metric_names(&rule.expr) {
            queried.insert(name, RULES);
        }
    }
    assert!(queried.len() > 10, "{queried:?}");
    for (name, source) in &queried {
        assert!(
            exported.contains(name),
            "{source} queries {name}, which nodewave does not export; exported: {exported:?}"
        );
    }
}

#[test]
fn every_exported_metric_is_on_the_dashboard() {
    let on_dashboard: BTreeSet<String> = dashboard_exprs(&dashboard())
        .iter()
        .flat_map(|e| metric_names(e))
        .collect();
    for name in exported_metric_names() {
        assert!(
            on_dashboard.contains(&name),
            "{name} is exported but no dashboard panel shows it"
        );
    }
}

#[test]
fn docs_describe_every_metric_alert_and_panel() {
    let docs = read(DOCS);
    for name in exported_metric_names() {
        assert!(docs.contains(&format!("`{name}")), "{DOCS}: metric {name}");
    }
    for rule in alerts() {
        let name = alert_name(&rule);
        assert!(docs.contains(name), "{DOCS}: alert {name}");
    }
    for panel in panels(&dashboard()) {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(docs.contains(title), "{DOCS}: panel {title}");
    }
}

#[test]
fn metric_name_extraction() {
    let names = metric_names(
        r#"histogram_quantile(0.9, sum by (le) (rate(nodewave_git_fetch_duration_seconds_bucket[5m])))
           / xnodewave_fake + nodewave_rollouts_total{outcome="rolled_back"}"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        vec![
            "nodewave_git_fetch_duration_seconds".to_owned(),
            "nodewave_rollouts_total".to_owned()
        ]
    );
}
