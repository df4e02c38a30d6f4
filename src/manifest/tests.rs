use super::*;

/// A compliant DaemonSet; tests edit it with `str::replace`, so line numbers below refer
/// to this text (line 1 is `apiVersion`).
const DS: &str = "\
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: fluent-bit
  namespace: logging
spec:
  selector:
    matchLabels:
      app: fluent-bit
  template:
    metadata:
      labels:
        app: fluent-bit
    spec:
      containers:
        - name: fluent-bit
          image: fluent/fluent-bit:3.1.4
          resources:
            requests:
              cpu: 100m
              memory: 128Mi
            limits:
              cpu: 1
              memory: 256Mi
          livenessProbe:
            httpGet: {path: /, port: 2020}
          readinessProbe:
            httpGet: {path: /api/v1/health, port: 2020}
";

const POLICY: &str = "\
apiVersion: nodewave.io/v1alpha1
kind: RolloutPolicy
metadata:
  name: fluent-bit
  namespace: logging
spec:
  target:
    name: fluent-bit
  stages:
    - name: canary
      pools: [canary]
      nodes: 1
    - name: rest
      pools: [\"*\"]
  health:
    prometheus:
      url: http://prometheus.monitoring:9090
      checks:
        - name: errors
          query: sum(rate(fluentbit_output_errors_total[5m]))
          max: 0
";

fn file(path: &str, contents: &str) -> ManifestFile {
    ManifestFile {
        path: path.to_string(),
        contents: contents.to_string(),
    }
}

fn run(contents: &str) -> Result<DesiredState, Rejected> {
    run_with(contents, &LoadOptions::default())
}

/// `POLICY`'s Prometheus is allowed unless a test sets its own allowlist.
fn run_with(contents: &str, opts: &LoadOptions) -> Result<DesiredState, Rejected> {
    let mut opts = opts.clone();
    if opts.allowed_prometheus_urls.is_empty() {
        opts.allowed_prometheus_urls = vec!["http://prometheus.monitoring:9090".into()];
    }
    load(&[file("ds.yaml", contents)], &opts)
}

/// All findings (errors and warnings) of one check.
fn findings(result: &Result<DesiredState, Rejected>, check: &str) -> Vec<Finding> {
    let all: Vec<Finding> = match result {
        Ok(state) => state.warnings.clone(),
        Err(rejected) => rejected
            .errors
            .iter()
            .chain(&rejected.warnings)
            .cloned()
            .collect(),
    };
    all.into_iter().filter(|f| f.check == check).collect()
}

/// Asserts exactly one finding of `check`, at `line` of ds.yaml, and returns it.
fn one(result: &Result<DesiredState, Rejected>, check: &str, line: usize) -> Finding {
    let found = findings(result, check);
    assert_eq!(found.len(), 1, "{check}: {found:#?}\nall: {result:#?}");
    let finding = found[0].clone();
    assert_eq!(
        finding.location,
        Location::new("ds.yaml", Some(line)),
        "{finding}"
    );
    finding
}

fn none(result: &Result<DesiredState, Rejected>, check: &str) {
    let found = findings(result, check);
    assert!(found.is_empty(), "{check}: {found:#?}");
}

#[test]
fn compliant_daemonset_and_policy_load() {
    let state = run(&format!("{DS}---\n{POLICY}")).unwrap();
    assert!(state.warnings.is_empty(), "{:#?}", state.warnings);
    let key = ObjectKey::new("logging", "fluent-bit");
    let ds = &state.daemonsets[&key];
    assert_eq!(ds.location, Location::new("ds.yaml", Some(1)));
    assert_eq!(ds.manifest["metadata"]["namespace"], "logging");
    // The manifest is the document as written, not the typed model's normal form.
    assert_eq!(
        ds.manifest["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"],
        1
    );
    let policy = &state.policies[&key];
    assert_eq!(policy.metadata.name, "fluent-bit");
    assert_eq!(policy.spec.stages.len(), 2);
}

#[test]
fn default_namespace_is_filled_in() {
    let state = run(&DS.replace("  namespace: logging\n", "")).unwrap();
    let ds = &state.daemonsets[&ObjectKey::new("default", "fluent-bit")];
    assert_eq!(ds.manifest["metadata"]["namespace"], "default");
}

#[test]
fn empty_documents_and_comments_are_ignored() {
    let state = run(&format!("# header\n---\n---\n{DS}---\n# trailing\n")).unwrap();
    assert_eq!(state.daemonsets.len(), 1);
    let ds = state.daemonsets.values().next().unwrap();
    assert_eq!(ds.location.line, Some(4));
}

#[test]
fn yaml_syntax_error_names_the_line() {
    let r = run(&DS.replace(
        "      app: fluent-bit\n  template",
        "      app: [fluent-bit\n  template",
    ));
    let f = one(&r, "yaml-syntax", 10);
    assert!(f.message.starts_with("invalid YAML"), "{f}");
    assert_eq!(r.unwrap_err().reason(), "yaml-syntax");
}

#[test]
fn yaml_syntax_error_in_one_document_keeps_checking_the_others() {
    let r = run(&format!(
        "a: [\n---\n{}",
        DS.replace("fluent-bit:3.1.4", "fluent-bit")
    ));
    one(&r, "yaml-syntax", 1);
    one(&r, "image-unpinned", 19);
}

#[test]
fn unsupported_kinds() {
    let r = run("apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\n");
    let f = one(&r, "kind-not-allowed", 2);
    assert!(
        f.message.contains("Pod is not a kind nodewave may manage"),
        "{f}"
    );
    assert!(f.message.contains("--allow-kind"), "{f}");
    let r = run(&DS.replace("apps/v1", "extensions/v1beta1"));
    let f = one(&r, "legacy-api-version", 1);
    assert!(f.message.contains("use apiVersion: apps/v1"), "{f}");
    let r = run(&DS.replace("apps/v1", "apps/v7"));
    let f = one(&r, "unsupported-kind", 1);
    assert!(f.message.contains("use apiVersion: apps/v1"), "{f}");
    let r = run("\n\nmetadata:\n  name: x\n");
    let f = one(&r, "unsupported-kind", 3);
    assert!(f.message.contains("no apiVersion and kind"), "{f}");
    let r = run("- a\n- b\n");
    one(&r, "unsupported-kind", 1);
    none(&run(DS), "unsupported-kind");
}

#[test]
fn unknown_daemonset_fields_are_reported_with_their_path_and_line() {
    let r = run(&DS.replace(
        "          image: fluent/fluent-bit:3.1.4\n",
        "          image: fluent/fluent-bit:3.1.4\n          imagePullPolcy: Always\n",
    ));
    let f = one(&r, "unknown-field", 18);
    assert!(
        f.message
            .starts_with("spec.template.spec.containers[0].imagePullPolcy is not a field"),
        "{f}"
    );
    let r = run(&DS.replace(
        "spec:\n  selector",
        "spec:\n  minReadySecond: 5\n  selector",
    ));
    one(&r, "unknown-field", 7);
}

#[test]
fn free_form_maps_and_normalised_values_are_not_unknown_fields() {
    let yaml = DS
        .replace(
            "  namespace: logging\n",
            "  namespace: logging\n  annotations:\n    example.com/anything: \"yes\"\n  labels: {team.example.com/owner: infra}\n",
        )
        .replace("              memory: 256Mi\n", "              memory: 256Mi\n              example.com/gpu: 1\n")
        .replace("port: 2020}", "port: http}");
    let r = run(&format!(
        "{yaml}          env:\n            - name: A\n              value: \"1\"\n      nodeSelector:\n        kubernetes.io/os: linux\n"
    ));
    none(&r, "unknown-field");
    assert!(r.is_ok(), "{r:#?}");
}

#[test]
fn null_values_are_not_unknown_fields() {
    let r = run(&DS.replace(
        "spec:\n  selector",
        "spec:\n  updateStrategy: ~\n  selector",
    ));
    none(&r, "unknown-field");
    none(&r, "update-strategy");
}

#[test]
fn wrong_types_and_missing_fields_are_invalid_objects() {
    let r = run(&DS.replace("port: 2020}\n          readinessProbe", "port: 2020}\n          readinessProbe:\n            periodSeconds: often\n          startupProbe"));
    let f = one(&r, "invalid-object", 28);
    assert!(
        f.message.starts_with("not a valid apps/v1 DaemonSet"),
        "{f}"
    );
    let r = run(&DS.replace("  selector:\n    matchLabels:\n      app: fluent-bit\n", ""));
    let f = one(&r, "invalid-object", 6);
    assert!(f.message.contains("spec.selector is missing"), "{f}");
    let r = run("apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: x\n");
    let f = one(&r, "invalid-object", 1);
    assert!(f.message.contains("no spec"), "{f}");
}

#[test]
fn invalid_names_and_missing_containers() {
    let r = run(&DS.replace(
        "name: fluent-bit\n  namespace",
        "name: Fluent_Bit\n  namespace",
    ));
    let f = one(&r, "invalid-object", 4);
    assert!(
        f.message
            .contains("\"Fluent_Bit\" is not a valid DaemonSet name"),
        "{f}"
    );
    let r = run(&DS.replace("  name: fluent-bit\n", ""));
    let f = one(&r, "invalid-object", 3);
    assert!(f.message.contains("metadata.name is missing"), "{f}");
    let r = run(&DS.replace("        - name: fluent-bit\n", "        - name: Bad_Name\n"));
    one(&r, "invalid-object", 16);
    let cut = DS.find("      containers:").unwrap();
    let r = run(&format!("{}      containers: []\n", &DS[..cut]));
    let f = one(&r, "invalid-object", 15);
    assert!(f.message.contains("containers is empty"), "{f}");
    none(&run(DS), "invalid-object");
}

#[test]
fn selector_must_match_template_labels() {
    let r = run(&DS.replace(
        "      app: fluent-bit\n  template",
        "      app: fluentbit\n  template",
    ));
    let f = one(&r, "selector-mismatch", 8);
    assert!(
        f.to_string().starts_with(
            "ds.yaml:8: error[selector-mismatch] DaemonSet logging/fluent-bit: selector {app: fluentbit} does not match template labels {app: fluent-bit}"
        ),
        "{f}"
    );
    none(&run(DS), "selector-mismatch");
}

#[test]
fn selector_expressions_are_evaluated() {
    let with = |expr: &str| {
        run(&DS.replace(
            "    matchLabels:\n      app: fluent-bit\n",
            &format!(
                "    matchLabels:\n      app: fluent-bit\n    matchExpressions:\n      - {expr}\n"
            ),
        ))
    };
    none(
        &with("{key: app, operator: In, values: [fluent-bit, x]}"),
        "selector-mismatch",
    );
    none(
        &with("{key: tier, operator: DoesNotExist}"),
        "selector-mismatch",
    );
    none(
        &with("{key: tier, operator: NotIn, values: [a]}"),
        "selector-mismatch",
    );
    none(&with("{key: app, operator: Exists}"), "selector-mismatch");
    one(
        &with("{key: app, operator: NotIn, values: [fluent-bit]}"),
        "selector-mismatch",
        11,
    );
    one(
        &with("{key: tier, operator: Exists}"),
        "selector-mismatch",
        11,
    );
    one(
        &with("{key: app, operator: In, values: [x]}"),
        "selector-mismatch",
        11,
    );
    one(&with("{key: app, operator: Maybe}"), "invalid-object", 11);
}

#[test]
fn empty_selector_is_a_mismatch() {
    let r = run(&DS.replace(
        "    matchLabels:\n      app: fluent-bit\n",
        "    matchLabels: {}\n",
    ));
    let f = one(&r, "selector-mismatch", 7);
    assert!(f.message.contains("spec.selector is empty"), "{f}");
}

#[test]
fn duplicate_daemonsets_are_reported_at_both_places() {
    let r = load(
        &[file("a.yaml", DS), file("b.yaml", &format!("# x\n{DS}"))],
        &LoadOptions::default(),
    );
    let found = findings(&r, "duplicate-name");
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_eq!(found[0].location, Location::new("a.yaml", Some(1)));
    assert_eq!(found[1].location, Location::new("b.yaml", Some(2)));
    assert!(
        found[0].message.contains("also at b.yaml:2"),
        "{}",
        found[0]
    );
    none(
        &run(&format!(
            "{DS}---\n{}",
            DS.replace("namespace: logging", "namespace: other")
        )),
        "duplicate-name",
    );
}

#[test]
fn duplicate_policies_and_two_policies_for_one_daemonset() {
    let r = run(&format!("{DS}---\n{POLICY}---\n{POLICY}"));
    assert_eq!(findings(&r, "duplicate-name").len(), 2);
    let second = POLICY.replace(
        "  name: fluent-bit\n  namespace",
        "  name: other\n  namespace",
    );
    let r = run(&format!("{DS}---\n{POLICY}---\n{second}"));
    let found = findings(&r, "duplicate-name");
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found[0].message.contains("targeted by 2 RolloutPolicies"),
        "{}",
        found[0]
    );
    assert_eq!(found[0].location.line, Some(37));
}

#[test]
fn namespaces_outside_the_allowed_list_are_rejected() {
    let opts = LoadOptions {
        allowed_namespaces: vec!["monitoring".into()],
        ..LoadOptions::default()
    };
    let r = run_with(&format!("{DS}---\n{POLICY}"), &opts);
    let found = findings(&r, "namespace-not-allowed");
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].location.line, Some(5));
    assert_eq!(found[1].location.line, Some(34));
    let opts = LoadOptions {
        allowed_namespaces: vec!["logging".into()],
        ..LoadOptions::default()
    };
    none(&run_with(DS, &opts), "namespace-not-allowed");
}

#[test]
fn policy_target_must_be_in_the_commit_and_namespace() {
    let r = run(&format!(
        "{DS}---\n{}",
        POLICY.replace(
            "    name: fluent-bit\n  stages",
            "    name: fluentbit\n  stages"
        )
    ));
    let f = one(&r, "policy-target-missing", 37);
    assert!(f.message.contains("\"fluentbit\""), "{f}");
    let r = run(&format!(
        "{DS}---\n{}",
        POLICY.replace("namespace: logging", "namespace: other")
    ));
    one(&r, "policy-target-missing", 37);
    none(&run(&format!("{DS}---\n{POLICY}")), "policy-target-missing");
}

#[test]
fn policy_unknown_fields_and_type_errors() {
    let r = run(&format!(
        "{DS}---\n{}",
        POLICY.replace("      nodes: 1\n", "      node: 1\n")
    ));
    let f = one(&r, "unknown-field", 41);
    assert!(f.message.contains("node"), "{f}");
    let r = run(&format!(
        "{DS}---\n{}",
        POLICY.replace("      nodes: 1\n", "      nodes: many\n")
    ));
    one(&r, "invalid-object", 41);
}

#[test]
fn policy_semantics() {
    let base = format!("{DS}---\n");
    let check = |policy: String, line: usize, needle: &str| {
        let r = run(&format!("{base}{policy}"));
        let f = one(&r, "invalid-policy", line);
        assert!(f.message.contains(needle), "{needle}: {f}");
    };
    check(
        POLICY.replace("pools: [canary]", "pools: []"),
        40,
        "names no pools",
    );
    check(POLICY.replace("nodes: 1", "nodes: 0"), 41, "nodes: 0");
    check(
        POLICY.replace("name: rest", "name: canary"),
        42,
        "unique name",
    );
    check(
        POLICY
            .replace("pools: [canary]", "pools: [\"*\"]")
            .replace("pools: [\"*\"]\n  health", "pools: [b]\n  health"),
        40,
        "not the last stage",
    );
    check(
        POLICY
            .replace("      nodes: 1\n", "")
            .replace("pools: [\"*\"]", "pools: [canary]"),
        42,
        "already rolled out completely",
    );
    // A canary stage shares its pool with the stage that finishes it.
    none(
        &run(&format!(
            "{base}{}",
            POLICY.replace("pools: [\"*\"]", "pools: [canary]")
        )),
        "invalid-policy",
    );
    check(
        POLICY.replace("pools: [canary]", "pools: [a, a]"),
        40,
        "listed twice",
    );
    check(
        POLICY.replace("          max: 0\n", ""),
        48,
        "neither max nor min",
    );
    check(
        POLICY.replace(
            "query: sum(rate(fluentbit_output_errors_total[5m]))",
            "query: \"  \"",
        ),
        49,
        "empty query",
    );
    check(
        POLICY.replace("http://prometheus", "ftp://prometheus"),
        46,
        "http:// or https://",
    );
    none(&run(&format!("{base}{POLICY}")), "invalid-policy");
}

#[test]
fn resources_must_be_complete() {
    let r = run(&DS.replace("              cpu: 100m\n", ""));
    let f = one(&r, "resources-missing", 18);
    assert!(
        f.message
            .contains("does not set resources.requests.cpu: add it"),
        "{f}"
    );
    let r = run(&DS.replace("          resources:\n            requests:\n              cpu: 100m\n              memory: 128Mi\n            limits:\n              cpu: 1\n              memory: 256Mi\n", ""));
    let f = one(&r, "resources-missing", 16);
    assert!(f.message.contains("resources.requests.cpu, resources.requests.memory, resources.limits.cpu and resources.limits.memory"), "{f}");
    none(&run(DS), "resources-missing");
}

#[test]
fn probes_are_a_warning_and_do_not_reject() {
    let yaml = DS.replace(
        "          readinessProbe:\n            httpGet: {path: /api/v1/health, port: 2020}\n",
        "",
    );
    let r = run(&yaml);
    let f = one(&r, "probes-missing", 16);
    assert_eq!(f.severity, Severity::Warning);
    assert!(f.message.contains("has no readinessProbe"), "{f}");
    assert!(r.is_ok());
    none(&run(DS), "probes-missing");
}

#[test]
fn init_containers_need_resources_but_not_probes() {
    let yaml = DS.replace(
        "      containers:\n",
        "      initContainers:\n        - name: init\n          image: busybox:1.36\n      containers:\n",
    );
    let r = run(&yaml);
    one(&r, "resources-missing", 16);
    none(&r, "probes-missing");
}

#[test]
fn images_must_be_pinned() {
    let r = run(&DS.replace("fluent-bit:3.1.4", "fluent-bit"));
    let f = one(&r, "image-unpinned", 17);
    assert!(f.message.contains("without a tag"), "{f}");
    let r = run(&DS.replace("fluent-bit:3.1.4", "fluent-bit:latest"));
    one(&r, "image-unpinned", 17);
    none(
        &run(&DS.replace("fluent-bit:3.1.4", "fluent-bit@sha256:0123")),
        "image-unpinned",
    );
    none(&run(DS), "image-unpinned");
}

#[test]
fn digests_are_required_only_when_asked() {
    none(&run(DS), "image-digest");
    let opts = LoadOptions {
        require_digest: true,
        ..LoadOptions::default()
    };
    let f = one(&run_with(DS, &opts), "image-digest", 17);
    assert_eq!(f.severity, Severity::Error);
    none(
        &run_with(
            &DS.replace("fluent-bit:3.1.4", "fluent-bit:3.1.4@sha256:0123"),
            &opts,
        ),
        "image-digest",
    );
}

#[test]
fn privileged_needs_an_opt_in() {
    let yaml = DS.replace(
        "          image: fluent/fluent-bit:3.1.4\n",
        "          image: fluent/fluent-bit:3.1.4\n          securityContext:\n            privileged: true\n",
    );
    let f = one(&run(&yaml), "privileged", 19);
    assert!(
        f.message.contains("nodewave.io/allow-privileged: \"true\""),
        "{f}"
    );
    let allowed = yaml.replace(
        "  namespace: logging\n",
        "  namespace: logging\n  annotations:\n    nodewave.io/allow-privileged: \"true\"\n",
    );
    none(&run(&allowed), "privileged");
    none(&run(DS), "privileged");
}

#[test]
fn host_network_and_pid_need_opt_ins() {
    let yaml = DS.replace(
        "    spec:\n      containers",
        "    spec:\n      hostNetwork: true\n      hostPID: true\n      containers",
    );
    let r = run(&yaml);
    let f = one(&r, "host-network", 15);
    assert!(
        f.message
            .contains("nodewave.io/allow-host-network: \"true\" if this is intended"),
        "{f}"
    );
    one(&r, "host-pid", 16);
    let allowed = yaml.replace(
        "  namespace: logging\n",
        "  namespace: logging\n  annotations:\n    nodewave.io/allow-host-network: \"true\"\n    nodewave.io/allow-host-pid: \"true\"\n",
    );
    let r = run(&allowed);
    none(&r, "host-network");
    none(&r, "host-pid");
}

#[test]
fn update_strategy_other_than_on_delete_warns() {
    let r = run(&DS.replace(
        "spec:\n  selector",
        "spec:\n  updateStrategy:\n    type: RollingUpdate\n  selector",
    ));
    let f = one(&r, "update-strategy", 7);
    assert_eq!(f.severity, Severity::Warning);
    assert!(f.message.contains("OnDelete"), "{f}");
    assert!(r.is_ok());
    none(
        &run(&DS.replace(
            "spec:\n  selector",
            "spec:\n  updateStrategy:\n    type: OnDelete\n  selector",
        )),
        "update-strategy",
    );
}

#[test]
fn severity_overrides_apply_to_best_practices_only() {
    let bad = DS.replace("fluent-bit:3.1.4", "fluent-bit").replace(
        "      app: fluent-bit\n  template",
        "      app: x\n  template",
    );
    let opts = LoadOptions {
        severity_overrides: BTreeMap::from([
            ("image-unpinned".to_string(), Severity::Off),
            ("selector-mismatch".to_string(), Severity::Off),
            ("probes-missing".to_string(), Severity::Error),
        ]),
        ..LoadOptions::default()
    };
    let r = run_with(&bad, &opts);
    none(&r, "image-unpinned");
    one(&r, "selector-mismatch", 8);
    let r = run_with(
        &DS.replace(
            "          livenessProbe:\n            httpGet: {path: /, port: 2020}\n",
            "",
        ),
        &opts,
    );
    assert_eq!(one(&r, "probes-missing", 16).severity, Severity::Error);
}

#[test]
fn rejection_lists_errors_then_warnings() {
    let yaml = DS.replace("fluent-bit:3.1.4", "fluent-bit:latest").replace(
        "spec:\n  selector",
        "spec:\n  updateStrategy: {type: RollingUpdate}\n  selector",
    );
    // Best-practice checks warn by default; made an error, one rejects.
    let mut opts = LoadOptions::default();
    opts.severity_overrides
        .insert("image-unpinned".into(), Severity::Error);
    let rejected = run_with(&yaml, &opts).unwrap_err();
    assert_eq!(rejected.reason(), "image-unpinned");
    let text = rejected.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "commit rejected: 1 error");
    assert!(
        lines[1].starts_with("ds.yaml:18: error[image-unpinned] DaemonSet logging/fluent-bit: "),
        "{text}"
    );
    assert!(
        lines[2].starts_with("ds.yaml:7: warning[update-strategy]"),
        "{text}"
    );
}

#[test]
fn load_is_independent_of_file_order() {
    let a = file("a.yaml", DS);
    let b = file(
        "b.yaml",
        &DS.replace("name: fluent-bit\n  namespace", "name: other\n  namespace")
            .replace("fluent-bit:3.1.4", "x")
            .replace("apps/v1", "apps/v9"),
    );
    let one_way = load(&[a.clone(), b.clone()], &LoadOptions::default()).unwrap_err();
    let other_way = load(&[b, a], &LoadOptions::default()).unwrap_err();
    assert_eq!(one_way, other_way);
}

#[test]
fn read_dir_finds_yaml_recursively_and_skips_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("b/c")).unwrap();
    std::fs::create_dir_all(root.join(".git")).unwrap();
    std::fs::write(root.join("b/c/x.yml"), "x").unwrap();
    std::fs::write(root.join("a.yaml"), "a").unwrap();
    std::fs::write(root.join("README.md"), "no").unwrap();
    std::fs::write(root.join(".git/config.yaml"), "no").unwrap();
    let files = read_dir(root, &Limits::default()).unwrap();
    let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, vec!["a.yaml", "b/c/x.yml"]);
    assert_eq!(files[1].contents, "x");
}

#[test]
fn parser_messages_name_the_field() {
    let r = run(&DS.replace(
        "port: 2020}\n          readinessProbe",
        "port: 2020}\n          readinessProbe:\n            periodSeconds: often\n          startupProbe",
    ));
    let f = one(&r, "invalid-object", 28);
    assert!(
        f.message.contains("spec.template.spec.containers[0].readinessProbe.periodSeconds: invalid type: string \"often\", expected i32"),
        "{f}"
    );
    let r = run(&format!(
        "{DS}---\n{}",
        POLICY.replace("      nodes: 1\n", "      nodes: many\n")
    ));
    let f = one(&r, "invalid-object", 41);
    assert!(
        f.message
            .contains("spec.stages[0].nodes: invalid type: string \"many\""),
        "{f}"
    );
}

#[test]
fn missing_policy_fields_point_at_their_parent() {
    let r = run(&format!(
        "{DS}---\n{}",
        POLICY.replace("  target:\n    name: fluent-bit\n", "")
    ));
    let f = one(&r, "invalid-object", 35);
    assert_eq!(f.message, "spec.target is missing: add it");
    let r = run(&format!(
        "{DS}---\n{}",
        POLICY.replace(
            "          query: sum(rate(fluentbit_output_errors_total[5m]))\n",
            ""
        )
    ));
    let f = one(&r, "invalid-object", 48);
    assert_eq!(
        f.message,
        "spec.health.prometheus.checks[0].query is missing: add it"
    );
}

#[test]
fn duplicate_keys_are_syntax_errors() {
    let r = run(&DS.replace(
        "  name: fluent-bit\n",
        "  name: fluent-bit\n  name: again\n",
    ));
    let f = one(&r, "yaml-syntax", 5);
    assert!(f.message.contains("duplicate mapping key"), "{f}");
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Whatever a commit contains, validation answers instead of panicking, and
        /// every finding points into the file.
        #[test]
        fn load_never_panics(contents in "[a-z:\\-\\[\\]{}#&*!|>'\" \n]{0,200}") {
            let lines = contents.lines().count().max(1);
            if let Err(rejected) = run(&contents) {
                for f in rejected.errors.iter().chain(&rejected.warnings) {
                    prop_assert!(f.location.line.is_some_and(|l| l >= 1 && l <= lines + 1), "{f}");
                }
            }
        }

        /// Cutting the compliant DaemonSet anywhere never panics either.
        #[test]
        fn truncated_manifests_never_panic(cut in 0usize..DS.len()) {
            let _ = run(&DS[..cut]);
        }
    }
}
