//! Shared by the chart tests: the real `helm` (as hack/test.sh provides it)
//! rendering `deploy/helm/nodewave`, and the rendered objects by kind.
#![allow(dead_code, clippy::unwrap_used, clippy::missing_panics_doc)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn chart_dir() -> PathBuf {
    repo_root().join("deploy/helm/nodewave")
}

/// `$NODEWAVE_HELM`, else `helm` on `PATH`. Never skipped.
pub fn helm() -> PathBuf {
    if let Some(p) = std::env::var_os("NODEWAVE_HELM") {
        return PathBuf::from(p);
    }
    nodewave::render::runner::find_on_path("helm").unwrap_or_else(|| {
        panic!(
            "helm is not on PATH and NODEWAVE_HELM is not set: the chart tests run the real helm.\n\
             Build it with `hack/build-renderers.sh` and run\n\
             `export PATH=\"$(hack/build-renderers.sh):$PATH\"`, or run `hack/test.sh`, which does that."
        )
    })
}

/// Runs helm with `args`; panics with its output when it fails.
pub fn run_helm(args: &[&str]) -> String {
    let out = Command::new(helm())
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Splits a multi-document YAML stream into its (non-empty) documents.
pub fn documents(text: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    let mut current = String::new();
    for line in text.lines().chain(std::iter::once("---")) {
        if line == "---" {
            let v: Value = serde_saphyr::from_str(&current)
                .unwrap_or_else(|e| panic!("invalid YAML document: {e}\n{current}"));
            if v.is_object() {
                docs.push(v);
            }
            current.clear();
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    docs
}

/// `helm template <release> deploy/helm/nodewave --namespace <namespace> <extra...>`.
pub fn template(release: &str, namespace: &str, extra: &[&str]) -> Vec<Value> {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        release,
        chart.to_str().unwrap(),
        "--namespace",
        namespace,
    ];
    args.extend_from_slice(extra);
    documents(&run_helm(&args))
}

pub fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

pub fn one_of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = of_kind(docs, kind);
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    found[0]
}

/// The container args of the rendered Deployment.
pub fn deployment_args(docs: &[Value]) -> Vec<String> {
    one_of_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}
