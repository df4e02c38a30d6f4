//! `nodewave validate` as CI pipelines run it: the real binary on the documented
//! fixtures (`tests/fixtures/manifests/README.md`) and on `examples-repo/`. No
//! cluster needed.

// A failed setup step should just fail the test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use nodewave::manifest::{CHECKS, LoadOptions, Severity};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures() -> PathBuf {
    root().join("tests/fixtures/manifests")
}

/// Runs `nodewave <args>` without any Kubernetes configuration; returns the exit
/// code, stdout and stderr.
fn nodewave(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nodewave"))
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("NODEWAVE_ALLOW_NAMESPACES")
        .env_remove("NODEWAVE_ALLOW_PROMETHEUS_URLS")
        .current_dir(root())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The flags each fixture is documented with in the fixtures' README.
fn flags_for(check: &str) -> Vec<&'static str> {
    match check {
        "namespace-not-allowed" => vec!["--allow-namespace", "monitoring"],
        "image-digest" => vec!["--require-digest"],
        "prometheus-url-not-allowed" => {
            vec![
                "--allow-prometheus-url",
                "http://prometheus.monitoring:9090",
            ]
        }
        _ => vec![],
    }
}

fn options_for(check: &str) -> LoadOptions {
    let mut opts = LoadOptions::default();
    match check {
        "namespace-not-allowed" => opts.allowed_namespaces = vec!["monitoring".into()],
        "image-digest" => opts.require_digest = true,
        "prometheus-url-not-allowed" => {
            opts.allowed_prometheus_urls = vec!["http://prometheus.monitoring:9090".into()];
        }
        _ => {}
    }
    opts
}

#[test]
fn valid_fixture_passes() {
    let dir = fixtures().join("valid");
    let dir = dir.to_str().unwrap();
    let allow = [
        "--allow-prometheus-url",
        "http://prometheus.monitoring:9090",
    ];
    let (code, out, err) = nodewave(&["validate", dir, allow[0], allow[1]]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        "ok: 1 file(s), 1 DaemonSet(s), 1 RolloutPolicy(ies), 0 warning(s)\n"
    );
    // Its Prometheus gate is refused unless the operator allows the URL.
    let (code, out, err) = nodewave(&["validate", dir]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.starts_with("fluent-bit.yaml:103: error[prometheus-url-not-allowed] ")
            && out.contains("--allow-prometheus-url http://prometheus.monitoring:9090"),
        "{out}"
    );
    // The same allowlist through the environment (comma-separated).
    let out = Command::new(env!("CARGO_BIN_EXE_nodewave"))
        .args(["validate", dir])
        .env_remove("KUBECONFIG")
        .env(
            "NODEWAVE_ALLOW_PROMETHEUS_URLS",
            "http://other:9090,http://prometheus.monitoring:9090",
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

/// Every `invalid/<check>/` directory prints exactly its `expected.txt`, then a
/// summary; exit 1 when the check is an error, 0 for the two checks that only
/// warn by default (`probes-missing`, `update-strategy`: the commit is accepted).
#[test]
fn every_invalid_fixture_prints_its_documented_message() {
    let invalid = fixtures().join("invalid");
    let dirs: BTreeSet<String> = std::fs::read_dir(&invalid)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let checks: BTreeSet<String> = CHECKS.iter().map(|c| c.id.to_string()).collect();
    assert_eq!(dirs, checks, "one fixture directory per check");

    for check in &dirs {
        let dir = invalid.join(check);
        let expected = std::fs::read_to_string(dir.join("expected.txt")).unwrap();
        let mut args = vec!["validate", dir.to_str().unwrap()];
        args.extend(flags_for(check));
        let (code, out, err) = nodewave(&args);
        let severity = options_for(check).severity(check);
        let (want_code, summary) = match severity {
            Severity::Error => (1, "invalid: "),
            _ => (0, "ok: "),
        };
        assert_eq!(code, want_code, "{check}: {out}{err}");
        let (findings, last) = out
            .trim_end_matches('\n')
            .rsplit_once('\n')
            .unwrap_or_else(|| panic!("{check}: no findings printed: {out}"));
        assert_eq!(format!("{findings}\n"), expected, "{check}");
        assert!(last.starts_with(summary), "{check}: {last}");
        assert!(
            expected
                .lines()
                .all(|l| l.split_once(": ").is_some_and(|(loc, _)| loc
                    .rsplit_once(':')
                    .is_some_and(|(_, n)| n.parse::<usize>().is_ok()))),
            "{check}: every message names file:line"
        );
        eprintln!("{check}: exit {code}");
    }
}

#[test]
fn list_checks_lists_every_check_with_its_default() {
    let (code, out, err) = nodewave(&["validate", "--list-checks"]);
    assert_eq!(code, 0, "{err}");
    for c in CHECKS {
        let line = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(c.id))
            .unwrap_or_else(|| panic!("{} missing from:\n{out}", c.id));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[1], c.default_severity.to_string(), "{line}");
        assert_eq!(cols[2], if c.overridable { "yes" } else { "no" }, "{line}");
        assert!(line.ends_with(c.summary), "{line}");
    }
    assert_eq!(
        out.lines().count(),
        CHECKS.len() + 1,
        "a header and one line per check"
    );
}

#[test]
fn severity_override_turns_a_warning_into_an_error() {
    let dir = fixtures().join("invalid/probes-missing");
    let dir = dir.to_str().unwrap();
    let (code, out, _) = nodewave(&["validate", dir]);
    assert_eq!(code, 0, "a warning alone passes: {out}");
    assert!(out.contains("warning[probes-missing]"), "{out}");

    let (code, out, _) = nodewave(&["validate", dir, "--severity", "probes-missing=error"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("node-exporter.yaml:16: error[probes-missing]"),
        "{out}"
    );

    let (code, out, _) = nodewave(&["validate", dir, "--severity", "probes-missing=off"]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("probes-missing"), "{out}");

    // Checks that guard what can be applied at all cannot be turned down.
    let (code, _, err) = nodewave(&["validate", dir, "--severity", "yaml-syntax=off"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot be changed"), "{err}");
}

/// The example repository the docs point to validates cleanly.
#[test]
fn examples_repo_validates() {
    let (code, out, err) = nodewave(&["validate", "examples-repo"]);
    assert_eq!(code, 0, "{out}{err}");
    let summary = out.lines().last().unwrap_or_default();
    assert!(summary.starts_with("ok: "), "{out}");
    assert!(!summary.contains(" 0 DaemonSet(s)"), "{out}");
    eprintln!("{summary}");
}

/// Writes `files` (path, contents) into a new temporary directory.
fn commit_dir(files: &[(String, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, contents) in files {
        let full = dir.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, contents).unwrap();
    }
    dir
}

fn good_ds() -> (String, String) {
    (
        "good.yaml".into(),
        nodewave::manifest::adversarial::daemonset("ns", "good"),
    )
}

/// Regression (issue 10): this readyTimeout overflowed `Duration` addition and
/// `nodewave validate` died with a panic (exit 101).
#[test]
fn an_overflowing_duration_is_a_finding_not_a_panic() {
    let policy = nodewave::manifest::adversarial::bad_numbers("ns", "good").swap_remove(0);
    let dir = commit_dir(&[good_ds(), ("policy.yaml".into(), policy)]);
    let (code, out, err) = nodewave(&["validate", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.starts_with("policy.yaml:6: error[invalid-object] RolloutPolicy ns/good: "),
        "{out}"
    );
    assert!(out.contains("longer than 8760h"), "{out}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Every hostile input of `manifest::adversarial::catalogue`, through the binary.
#[test]
fn hostile_directories_are_rejected_naming_the_limit_or_pass_cheaply() {
    for commit in nodewave::manifest::adversarial::catalogue("ns") {
        let files: Vec<(String, String)> = commit
            .files
            .iter()
            .map(|f| (f.path.clone(), f.contents.clone()))
            .collect();
        let dir = commit_dir(&files);
        let (code, out, err) = nodewave(&["validate", dir.path().to_str().unwrap()]);
        match commit.check {
            None => assert_eq!(code, 0, "{}: {out}{err}", commit.name),
            Some(check) => {
                assert_eq!(code, 1, "{}: {out}{err}", commit.name);
                assert!(
                    out.contains(&format!("error[{check}]")),
                    "{}: {out}",
                    commit.name
                );
                if check == "limit-exceeded" {
                    assert!(
                        out.contains("raise it with --max-"),
                        "{}: {out}",
                        commit.name
                    );
                }
            }
        }
        eprintln!("{}: exit {code}", commit.name);
    }
}

/// A file over the per-file limit is refused from its size alone (a sparse 1 GiB
/// file costs nothing to create, and would cost 1 GiB to read).
#[test]
fn a_huge_file_is_refused_before_it_is_read_and_the_flag_raises_the_limit() {
    let dir = commit_dir(&[good_ds()]);
    let huge = std::fs::File::create(dir.path().join("huge.yaml")).unwrap();
    huge.set_len(1 << 30).unwrap();
    let (code, out, err) = nodewave(&["validate", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(
        out.lines().next().unwrap(),
        "huge.yaml: error[limit-exceeded] the file is 1GiB; the limit is 4MiB: split the file, or raise it with --max-file-bytes (`max-file-bytes` in the config file)"
    );

    let many: Vec<(String, String)> = (0..12)
        .map(|i| {
            (
                format!("d/{i:02}.yaml"),
                nodewave::manifest::adversarial::daemonset("ns", &format!("d{i}")),
            )
        })
        .collect();
    let dir = commit_dir(&many);
    let path = dir.path().to_str().unwrap();
    let (code, out, _) = nodewave(&["validate", path, "--max-files", "10"]);
    assert_eq!(code, 1, "{out}");
    // One directory over the limit is named as the place: its files are not even
    // collected past the limit.
    assert!(
        out.starts_with("d: error[limit-exceeded] the commit has more than 10 manifest files"),
        "{out}"
    );
    // Spread over directories, the file that crosses the limit is named.
    let (code, out, _) = nodewave(&["validate", path, "--max-files", "11"]);
    assert_eq!(code, 1, "{out}");
    let spread: Vec<(String, String)> = many
        .iter()
        .enumerate()
        .map(|(i, (p, c))| (p.replace("d/", if i < 6 { "a/" } else { "b/" }), c.clone()))
        .collect();
    let spread_dir = commit_dir(&spread);
    let (code, out, _) = nodewave(&[
        "validate",
        spread_dir.path().to_str().unwrap(),
        "--max-files",
        "10",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("b/10.yaml: error[limit-exceeded] the commit has more than 10"),
        "{out}"
    );
    let (code, out, _) = nodewave(&["validate", path, "--max-files", "12"]);
    assert_eq!(code, 0, "{out}");
    let (code, _, err) = nodewave(&["validate", path, "--max-depth", "1000"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("at most 250"), "{err}");
}

/// Manifests in the style node-agent projects ship them (CNI, overlay network,
/// host metrics, log shipper, GPU device plugin, CSI node driver; written for
/// these tests, `tests/fixtures/vendor/`), each with its companion objects:
/// accepted with warnings only (privileged, host namespaces, missing CPU limits
/// and probes are advice, not reasons to refuse a commit).
#[test]
fn vendor_style_manifests_are_accepted_with_warnings_only() {
    let vendor = root().join("tests/fixtures/vendor");
    let mut seen = 0;
    for entry in std::fs::read_dir(&vendor).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let mut args = vec!["validate", dir.to_str().unwrap()];
        // CSIDriver is not in the default kind allowlist: the repository allows it.
        let kinds = "Namespace,ServiceAccount,ClusterRole.rbac.authorization.k8s.io,ClusterRoleBinding.rbac.authorization.k8s.io,CSIDriver.storage.k8s.io";
        if name.starts_with("csi") {
            args.extend(["--allow-kind", kinds]);
        }
        let (code, out, err) = nodewave(&args);
        assert_eq!(code, 0, "{name}: {out}{err}");
        let last = out.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("ok: ") && last.contains("other object(s)"),
            "{name}: {last}"
        );
        assert!(
            out.contains(": warning["),
            "{name}: expected warnings: {out}"
        );
        assert!(!out.contains(": error["), "{name}: {out}");
        if name.starts_with("csi") {
            let (code, out, _) = nodewave(&["validate", dir.to_str().unwrap()]);
            assert_eq!(code, 1, "CSIDriver needs --allow-kind: {out}");
            assert!(
                out.contains("CSIDriver.storage.k8s.io is not a kind"),
                "{out}"
            );
        }
        seen += 1;
    }
    assert_eq!(seen, 6);
}
