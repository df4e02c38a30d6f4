//! The manifest fixtures that `nodewave validate` documents: the valid directory loads
//! cleanly, and every `invalid/<check-id>/` directory yields findings of exactly that
//! check, rendered as in its `expected.txt`. Set `NODEWAVE_BLESS=1` to rewrite those
//! files after an intended message change.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use nodewave::manifest::{
    self, CHECKS, Finding, Limits, LoadOptions, ObjectKey, REMOTE_SOURCE_REFUSED, RENDER_ERROR,
    Severity,
};
use nodewave::render::{self, RenderError, RenderOptions};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/manifests")
}

/// The options each fixture is documented with in the fixtures' README.
fn options_for(check: &str) -> LoadOptions {
    let mut opts = LoadOptions::default();
    match check {
        "namespace-not-allowed" => opts.allowed_namespaces = vec!["monitoring".to_string()],
        "image-digest" => opts.require_digest = true,
        "prometheus-url-not-allowed" => {
            opts.allowed_prometheus_urls = vec!["http://prometheus.monitoring:9090".to_string()];
        }
        _ => {}
    }
    opts
}

#[test]
fn valid_fixture_loads_without_findings() {
    let files = manifest::read_dir(&fixtures().join("valid"), &Limits::default()).unwrap();
    // Its Prometheus gate needs its URL allowed, as `--allow-prometheus-url` does.
    let opts = LoadOptions {
        allowed_prometheus_urls: vec!["http://prometheus.monitoring:9090".to_string()],
        ..LoadOptions::default()
    };
    let state = manifest::load(&files, &opts).unwrap();
    assert_eq!(
        manifest::load(&files, &LoadOptions::default())
            .unwrap_err()
            .reason(),
        "prometheus-url-not-allowed"
    );
    assert!(state.warnings.is_empty(), "{:#?}", state.warnings);
    let key = ObjectKey::new("logging", "fluent-bit");
    assert!(state.daemonsets.contains_key(&key));
    assert_eq!(state.policies[&key].spec.stages.len(), 3);
}

#[test]
fn every_check_has_an_invalid_fixture_with_its_documented_output() {
    let bless = std::env::var_os("NODEWAVE_BLESS").is_some();
    for check in CHECKS {
        let dir = fixtures().join("invalid").join(check.id);
        if check.id == RENDER_ERROR || check.id == REMOTE_SOURCE_REFUSED {
            let findings = render_findings(&dir);
            compare(check.id, &dir, &findings, bless);
            continue;
        }
        let files = manifest::read_dir(&dir, &Limits::default())
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        assert!(!files.is_empty(), "no fixture for {}", check.id);
        let config = manifest::read_repo_config(&dir).unwrap();
        let findings =
            match manifest::load_with_config(&files, config.as_ref(), &options_for(check.id)) {
                Ok(state) => state.warnings,
                Err(rejected) => {
                    assert_eq!(rejected.reason(), check.id);
                    rejected
                        .errors
                        .into_iter()
                        .chain(rejected.warnings)
                        .collect()
                }
            };
        compare(check.id, &dir, &findings, bless);
    }
}

/// Rendering checks come from `render::render_dir` (with the real renderers, as
/// hack/test.sh provides them on PATH), before any manifest is loaded.
fn render_findings(dir: &Path) -> Vec<Finding> {
    let opts = RenderOptions {
        helm: std::env::var_os("NODEWAVE_HELM").map(PathBuf::from),
        kustomize: std::env::var_os("NODEWAVE_KUSTOMIZE").map(PathBuf::from),
        ..RenderOptions::default()
    };
    match render::render_dir(dir, &opts) {
        Err(RenderError::Rejected(findings)) => findings,
        other => panic!("{}: expected a rejection, got {other:?}", dir.display()),
    }
}

fn compare(check: &str, dir: &Path, findings: &[Finding], bless: bool) {
    assert!(!findings.is_empty(), "{check}: no findings");
    for finding in findings {
        assert_eq!(finding.check, check, "{check}: unrelated finding {finding}");
        assert_ne!(finding.severity, Severity::Off);
        assert!(finding.location.line.is_some(), "{finding}");
    }
    let rendered: String = findings.iter().fold(String::new(), |mut out, f| {
        let _ = writeln!(out, "{f}");
        out
    });
    let expected_path = dir.join("expected.txt");
    if bless {
        std::fs::write(&expected_path, &rendered)
            .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
    } else {
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
        assert_eq!(rendered, expected, "{check}");
    }
}
