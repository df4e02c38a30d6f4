//! Hostile input: every limit rejects with a finding that names it, numbers that
//! overflow or make no sense are findings with their line, and the generators of
//! `adversarial` are rejected (or accepted cheaply) as catalogued.

use super::adversarial::{self, alias_bomb, bad_numbers, daemonset, deep_nesting};
use super::*;

fn file(path: &str, contents: impl Into<String>) -> ManifestFile {
    ManifestFile {
        path: path.to_string(),
        contents: contents.into(),
    }
}

/// The Prometheus URLs of these policies are allowed (`--allow-prometheus-url`),
/// so each test sees only the finding it is about.
fn opts() -> LoadOptions {
    LoadOptions {
        allowed_prometheus_urls: ["http://p:9090", "http://[::1]:9090", "https://prometheus"]
            .map(String::from)
            .to_vec(),
        ..LoadOptions::default()
    }
}

fn with_limits(limits: Limits) -> LoadOptions {
    LoadOptions { limits, ..opts() }
}

/// The single error of a rejected commit.
fn only_error(result: Result<DesiredState, Rejected>) -> Finding {
    let rejected = result.expect_err("the commit must be rejected");
    assert_eq!(rejected.errors.len(), 1, "{rejected}");
    rejected.errors[0].clone()
}

fn assert_limit(f: &Finding, limit: Limit, location: &str) {
    assert_eq!(f.check, "limit-exceeded", "{f}");
    assert_eq!(f.location.to_string(), location, "{f}");
    let flag = format!("--{}", limit.key());
    let field = format!("`{}` in the config file", limit.key());
    assert!(
        f.message.contains(&flag) && f.message.contains(&field),
        "{f}"
    );
}

const POLICY_HEAD: &str = "apiVersion: nodewave.io/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: good, namespace: ns}\nspec:\n  target: {name: good}\n";

fn policy_commit(spec: &str) -> Vec<ManifestFile> {
    vec![
        file("ds.yaml", daemonset("ns", "good")),
        file("policy.yaml", format!("{POLICY_HEAD}{spec}")),
    ]
}

#[test]
fn the_overflowing_duration_is_a_finding_with_its_line() {
    // Regression: this readyTimeout panicked in `parse_duration` (exit 101 from
    // `nodewave validate`, a panic in the reconciler task).
    let f = only_error(load(
        &policy_commit("  health:\n    readyTimeout: \"1s18446744073709551615s\"\n"),
        &opts(),
    ));
    assert_eq!(f.check, "invalid-object");
    assert_eq!(f.location.to_string(), "policy.yaml:7");
    assert!(
        f.message.contains("readyTimeout") && f.message.contains("longer than 8760h"),
        "{f}"
    );
}

#[test]
fn every_bad_number_is_a_finding_never_a_panic() {
    for policy in bad_numbers("ns", "good") {
        let files = vec![
            file("ds.yaml", daemonset("ns", "good")),
            file("policy.yaml", policy.clone()),
        ];
        let rejected = load(&files, &opts()).expect_err(&policy);
        for f in &rejected.errors {
            assert!(f.location.line.is_some(), "{f}");
            // `.nan` and `.inf` are refused by the YAML parser itself.
            assert!(
                ["invalid-object", "invalid-policy", "yaml-syntax"].contains(&f.check),
                "{f}"
            );
        }
    }
}

#[test]
fn durations_and_counts_outside_their_range_are_invalid_policies() {
    let cases = [
        (
            "  health: {readyTimeout: 0s}\n",
            6,
            "readyTimeout 0s is outside 1s to 24h",
        ),
        ("  health: {readyTimeout: 25h}\n", 6, "outside 1s to 24h"),
        (
            "  stages: [{name: a, pools: [\"*\"], bake: 721h}]\n",
            6,
            "bake 721h is outside 0s to 720h",
        ),
        (
            "  stages: [{name: a, pools: [\"*\"], nodes: 100001}]\n",
            6,
            "nodes is 100001",
        ),
        (
            "  stages:\n    - name: a\n      pools: [\"*\"]\n      maxUnavailable: 200000\n",
            9,
            "maxUnavailable is 200000",
        ),
        (
            "  rollback: {maxUnavailable: 100001}\n",
            6,
            "rollback maxUnavailable",
        ),
        (
            "  health:\n    prometheus:\n      url: http://p:9090\n      interval: 500ms\n      checks: [{name: c, query: q, max: 1}]\n",
            9,
            "interval 500ms is outside 1s to 1h",
        ),
        (
            "  health:\n    prometheus:\n      url: http://p:9090\n      unreachableGrace: 48h\n      checks: [{name: c, query: q, max: 1}]\n",
            9,
            "unreachableGrace 48h is outside 0s to 24h",
        ),
        (
            "  health:\n    prometheus:\n      url: http://p:0\n      checks: [{name: c, query: q, max: 1}]\n",
            8,
            "invalid port",
        ),
        (
            "  health:\n    prometheus:\n      url: http://[::1]:99999/x\n      checks: [{name: c, query: q, max: 1}]\n",
            8,
            "invalid port",
        ),
    ];
    for (spec, line, needle) in cases {
        let f = only_error(load(&policy_commit(spec), &opts()));
        assert_eq!(f.check, "invalid-policy", "{spec}: {f}");
        assert_eq!(f.location.line, Some(line), "{spec}: {f}");
        assert!(f.message.contains(needle), "{spec}: {needle}: {f}");
    }
    for ok in [
        "  health:\n    prometheus:\n      url: http://[::1]:9090\n      checks: [{name: c, query: q, max: 1}]\n",
        "  health:\n    prometheus:\n      url: https://prometheus:443/api\n      checks: [{name: c, query: q, max: 1}]\n",
        "  stages: [{name: a, pools: [\"*\"], bake: 720h, nodes: 100000}]\n",
        "  health: {readyTimeout: 24h}\n",
    ] {
        assert!(load(&policy_commit(ok), &opts()).is_ok(), "{ok}");
    }
}

#[test]
fn non_finite_thresholds_are_refused_with_their_line() {
    for (value, needle) in [
        (".nan", "`.nan` is not a finite number"),
        ("-.inf", "`-.inf`"),
    ] {
        let spec = format!(
            "  health:\n    prometheus:\n      url: http://p:9090\n      checks:\n        - {{name: c, query: q, max: {value}}}\n"
        );
        let f = only_error(load(&policy_commit(&spec), &opts()));
        assert_eq!(f.location.line, Some(10), "{f}");
        assert!(f.message.contains(needle), "{f}");
    }
}

#[test]
fn ports_outside_1_to_65535_are_invalid_objects_with_their_line() {
    let ds = daemonset("ns", "good");
    for (from, to, line, needle) in [
        (
            "          livenessProbe: {tcpSocket: {port: 8080}}\n",
            "          ports: [{containerPort: 0}]\n          livenessProbe: {tcpSocket: {port: 8080}}\n",
            19,
            "containerPort 0",
        ),
        (
            "          livenessProbe: {tcpSocket: {port: 8080}}\n",
            "          ports:\n            - {containerPort: 80, hostPort: 70000}\n          livenessProbe: {tcpSocket: {port: 8080}}\n",
            20,
            "hostPort 70000",
        ),
        (
            "readinessProbe: {tcpSocket: {port: 8080}}",
            "readinessProbe: {httpGet: {port: 65536}}",
            20,
            "readinessProbe port 65536",
        ),
    ] {
        let f = only_error(load(&[file("ds.yaml", ds.replace(from, to))], &opts()));
        assert_eq!(f.check, "invalid-object", "{f}");
        assert_eq!(f.location.line, Some(line), "{f}");
        assert!(f.message.contains(needle), "{needle}: {f}");
    }
}

#[test]
fn per_commit_limits_reject_before_parsing() {
    let files = vec![
        file("a.yaml", daemonset("ns", "a")),
        file("b.yaml", daemonset("ns", "b")),
        file("c.yaml", daemonset("ns", "c")),
    ];
    let size = files[0].contents.len();
    let opts = with_limits(Limits {
        max_files: 2,
        ..Limits::default()
    });
    assert_limit(&only_error(load(&files, &opts)), Limit::Files, "c.yaml");
    let opts = with_limits(Limits {
        max_file_bytes: size - 1,
        ..Limits::default()
    });
    assert_limit(&only_error(load(&files, &opts)), Limit::FileBytes, "a.yaml");
    let opts = with_limits(Limits {
        max_total_bytes: 2 * size + 1,
        ..Limits::default()
    });
    let f = only_error(load(&files, &opts));
    assert_limit(&f, Limit::TotalBytes, "c.yaml");
    assert!(
        f.message.contains(&format!("reach {} bytes", 3 * size)),
        "{f}"
    );
    assert!(load(&files, &LoadOptions::default()).is_ok());
}

#[test]
fn too_many_documents_stop_the_commit() {
    let text = format!(
        "{}---\n{}---\n{}",
        daemonset("ns", "a"),
        daemonset("ns", "b"),
        daemonset("ns", "c")
    );
    let opts = with_limits(Limits {
        max_objects: 2,
        ..Limits::default()
    });
    let f = only_error(load(&[file("all.yaml", text.clone())], &opts));
    assert_limit(&f, Limit::Objects, "all.yaml:42");
    // Separators and comments alone are no documents.
    let padded = format!("---\n# x\n---\n{}", text.replace("---\n", "---\n---\n"));
    let opts = with_limits(Limits {
        max_objects: 3,
        ..Limits::default()
    });
    assert_eq!(
        load(&[file("all.yaml", padded)], &opts)
            .unwrap()
            .daemonsets
            .len(),
        3
    );
}

#[test]
fn per_document_limits_name_the_line() {
    let limits = Limits {
        max_depth: 5,
        max_nodes: 50,
        max_aliases: 2,
        max_object_bytes: 200,
        ..Limits::default()
    };
    let opts = with_limits(limits);
    // The limit's finding (a document before it may have findings of its own).
    let run = |text: &str| {
        let rejected = load(&[file("x.yaml", text)], &opts).unwrap_err();
        let found: Vec<Finding> = rejected
            .errors
            .into_iter()
            .filter(|f| f.check == "limit-exceeded")
            .collect();
        assert_eq!(found.len(), 1, "{found:?}");
        found[0].clone()
    };
    assert_limit(
        &run(&format!("a: 1\n---\n{}", deep_nesting(5, 1))),
        Limit::Depth,
        "x.yaml:3",
    );
    assert_limit(
        &run(&adversarial::block_nesting(6)),
        Limit::Depth,
        "x.yaml:6",
    );
    assert_limit(
        &run(&adversarial::wide_document(60)),
        Limit::Nodes,
        "x.yaml:1",
    );
    assert_limit(
        &run("a: &a [x]\nb: *a\nc: *a\nd: *a\n"),
        Limit::Aliases,
        "x.yaml:4",
    );
    let f = run(&format!("a: 1\n---\n{}", adversarial::huge_scalar(300)));
    assert_limit(&f, Limit::ObjectBytes, "x.yaml:2");
    assert!(f.message.contains("the document is 308 bytes"), "{f}");
}

#[test]
fn alias_bombs_are_bounded_by_the_node_limit_after_expansion() {
    // 10^9 scalars once expanded, from 400 bytes: the line index sees 100 nodes and
    // 90 aliases; serde-saphyr's budget stops the expansion.
    let f = only_error(load(&[file("lol.yaml", alias_bomb(9, 10))], &opts()));
    assert_limit(&f, Limit::Nodes, f.location.to_string().as_str());
    assert!(f.location.line.is_some(), "{f}");
    assert!(f.message.contains("after alias expansion"), "{f}");
}

#[test]
fn rejected_alias_bombs_still_spend_the_commit_node_budget() {
    // Each bomb is stopped at the per-document limit; without charging that work
    // to the commit, 5,000 of them took four minutes.
    let opts = with_limits(Limits {
        max_nodes: 1_000,
        max_total_nodes: 3_500,
        ..Limits::default()
    });
    let bombs = vec![alias_bomb(9, 10); 50].join("---\n");
    let rejected = load(&[file("lol.yaml", bombs)], &opts).unwrap_err();
    let checks: Vec<String> = rejected
        .errors
        .iter()
        .map(|f| f.message.split(';').next().unwrap_or_default().to_string())
        .collect();
    // Three bombs use up 3,000 of the 3,500 nodes; the fourth hits the commit limit.
    assert_eq!(rejected.errors.len(), 4, "{checks:#?}");
    assert!(
        checks[3].contains("the commit's documents have more than 3500"),
        "{checks:#?}"
    );
}

#[test]
fn the_commit_node_budget_spans_documents() {
    let opts = with_limits(Limits {
        max_total_nodes: 150,
        ..Limits::default()
    });
    let files = vec![
        file("a.yaml", adversarial::wide_document(60)),
        file("b.yaml", adversarial::wide_document(60)),
        file("c.yaml", adversarial::wide_document(60)),
    ];
    let rejected = load(&files, &opts).unwrap_err();
    let limit: Vec<&Finding> = rejected
        .errors
        .iter()
        .filter(|f| f.check == "limit-exceeded")
        .collect();
    assert_eq!(limit.len(), 1, "{rejected}");
    assert_limit(limit[0], Limit::TotalNodes, "c.yaml:1");
    // Nothing is parsed past the breach.
    assert!(
        rejected
            .errors
            .iter()
            .all(|f| f.location.file != "c.yaml" || f.check == "limit-exceeded")
    );
}

#[test]
fn a_separator_storm_is_cheap_and_loses_nothing() {
    let storm = format!(
        "{}{}{}",
        adversarial::separator_storm(100_000),
        daemonset("ns", "a"),
        adversarial::separator_storm(100_000)
    );
    let state = load(&[file("storm.yaml", storm)], &opts()).unwrap();
    let ds = &state.daemonsets[&ObjectKey::new("ns", "a")];
    assert_eq!(ds.location, Location::new("storm.yaml", Some(100_001)));
}

#[test]
fn thousands_of_duplicates_keep_each_message_short() {
    let files: Vec<ManifestFile> = (0..500)
        .map(|i| file(&format!("d{i:04}.yaml"), daemonset("ns", "same")))
        .collect();
    let rejected = load(&files, &opts()).unwrap_err();
    assert_eq!(rejected.errors.len(), 500);
    let longest = rejected.errors.iter().map(|f| f.message.len()).max();
    assert!(longest < Some(400), "{:?}", rejected.errors[0]);
    assert!(
        rejected.errors[0].message.contains("and 494 more"),
        "{}",
        rejected.errors[0]
    );
}

#[test]
fn the_catalogue_of_hostile_commits_is_rejected_as_documented() {
    for commit in adversarial::catalogue("ns") {
        match (load(&commit.files, &opts()), commit.check) {
            (Ok(state), None) => {
                assert!(state.daemonsets.contains_key(&ObjectKey::new("ns", "good")));
            }
            (Err(rejected), Some(check)) => {
                assert!(
                    rejected.errors.iter().any(|f| f.check == check),
                    "{}: {rejected}",
                    commit.name
                );
            }
            (Ok(_), Some(check)) => panic!("{}: accepted, expected {check}", commit.name),
            (Err(rejected), None) => panic!("{}: {rejected}", commit.name),
        }
    }
}

/// The deepest nesting any configuration allows parses, validates and drops on a
/// 2 MiB stack (a tokio worker thread's), in this unoptimised build too.
#[test]
fn the_deepest_allowed_nesting_fits_a_small_stack() {
    let cap = super::limits::MAX_DEPTH_CAP;
    let limits = Limits {
        max_depth: cap,
        ..Limits::default()
    };
    // The document's mapping is one level; `extra` holds the rest.
    let text = format!(
        "{}extra: {}x{}\n",
        daemonset("ns", "deep"),
        "[".repeat(cap - 1),
        "]".repeat(cap - 1)
    );
    let handle = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let rejected = load(&[file("deep.yaml", text)], &with_limits(limits)).unwrap_err();
            rejected.errors.iter().map(|f| f.check).collect::<Vec<_>>()
        })
        .unwrap();
    let checks = handle.join().expect("no stack overflow");
    // Parsed all the way: the one finding is about the field, not a limit.
    assert_eq!(checks, vec!["unknown-field"]);
}
