//! Shared by the rendering tests: the real renderers (as hack/test.sh provides
//! them), fixture repositories in the layouts fleets use, and Git repositories.
#![allow(dead_code, clippy::unwrap_used, clippy::missing_panics_doc)]

use std::path::{Path, PathBuf};

use git2::{Repository, Signature};

/// A renderer binary: `$NODEWAVE_<TOOL>`, else on `PATH`. Never skipped: without it
/// the test fails and says how to get it.
fn renderer(tool: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    nodewave::render::runner::find_on_path(tool).unwrap_or_else(|| {
        panic!(
            "{tool} is not on PATH and {env} is not set: these tests run the real renderers.\n\
             Build them with `hack/build-renderers.sh` (it prints their directory) and run\n\
             `export PATH=\"$(hack/build-renderers.sh):$PATH\"`, or run `hack/test.sh`, which does that."
        )
    })
}

pub fn helm() -> PathBuf {
    renderer("helm", "NODEWAVE_HELM")
}

pub fn kustomize() -> PathBuf {
    renderer("kustomize", "NODEWAVE_KUSTOMIZE")
}

pub fn options() -> nodewave::render::RenderOptions {
    nodewave::render::RenderOptions {
        helm: Some(helm()),
        kustomize: Some(kustomize()),
        ..nodewave::render::RenderOptions::default()
    }
}

pub fn write(dir: &Path, files: &[(&str, String)]) {
    for (path, contents) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, contents).unwrap();
    }
}

/// A compliant DaemonSet (resources, probes, OnDelete). `scheduling` is extra pod
/// spec YAML, unindented (e.g. a nodeSelector), or empty.
pub fn agent_ds(name: &str, namespace: Option<&str>, image: &str, scheduling: &str) -> String {
    let scheduling: String = scheduling
        .lines()
        .flat_map(|l| ["      ", l, "\n"])
        .collect();
    let ns = namespace.map_or_else(String::new, |n| format!("  namespace: {n}\n"));
    format!(
        "apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: {name}
{ns}spec:
  selector:
    matchLabels: {{app: {name}}}
  updateStrategy: {{type: OnDelete}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
{scheduling}      containers:
        - name: agent
          image: {image}
          resources:
            requests: {{cpu: 10m, memory: 16Mi}}
            limits: {{cpu: 100m, memory: 64Mi}}
          readinessProbe: {{httpGet: {{path: /ready, port: 8080}}}}
          livenessProbe: {{httpGet: {{path: /live, port: 8080}}}}
"
    )
}

/// The usual Kustomize layout: a base in `agents/<name>` and an overlay per
/// cluster in `clusters/<cluster>` that sets the namespace, a label and the image tag.
pub fn kustomize_fleet(
    name: &str,
    namespace: &str,
    tag: &str,
    scheduling: &str,
) -> Vec<(&'static str, String)> {
    vec![
        (
            "agents/fluent-bit/kustomization.yaml",
            "resources:\n  - daemonset.yaml\n".into(),
        ),
        (
            "agents/fluent-bit/daemonset.yaml",
            agent_ds(name, None, "registry.example/fluent-bit:1.0.0", scheduling),
        ),
        (
            "clusters/prod/kustomization.yaml",
            format!(
                "namespace: {namespace}\nresources:\n  - ../../agents/fluent-bit\nlabels:\n  - pairs: {{cluster: prod}}\nimages:\n  - name: registry.example/fluent-bit\n    newTag: \"{tag}\"\n"
            ),
        ),
    ]
}

/// A vendored chart in `charts/<dir>` rendered into `namespace` via nodewave.yaml,
/// with a values file and inline values; its template names no namespace.
pub fn helm_chart(
    dir: &str,
    namespace: &str,
    tag: &str,
    scheduling: &str,
) -> Vec<(String, String)> {
    let template = "apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: {{ .Release.Name }}
  labels:
    app: {{ .Release.Name }}
    tier: {{ .Values.tier }}
spec:
  selector:
    matchLabels: {app: {{ .Release.Name }}}
  updateStrategy: {type: OnDelete}
  template:
    metadata:
      labels: {app: {{ .Release.Name }}}
    spec:
{{- with .Values.scheduling }}
{{ . | indent 6 }}
{{- end }}
      containers:
        - name: agent
          image: \"{{ .Values.image.repository }}:{{ .Values.image.tag }}\"
          resources:
            requests: {cpu: 10m, memory: 16Mi}
            limits: {cpu: 100m, memory: 64Mi}
          readinessProbe: {httpGet: {path: /ready, port: 8080}}
          livenessProbe: {httpGet: {path: /live, port: 8080}}
";
    let base = format!("charts/{dir}");
    vec![
        (
            format!("{base}/Chart.yaml"),
            "apiVersion: v2\nname: node-agent\nversion: 0.1.0\n".into(),
        ),
        (
            format!("{base}/values.yaml"),
            "tier: default\nimage:\n  repository: registry.example/node-agent\n  tag: \"0.0.1\"\nscheduling: \"\"\n".into(),
        ),
        (format!("{base}/values-prod.yaml"), "tier: prod\n".into()),
        (format!("{base}/templates/daemonset.yaml"), template.into()),
        (
            format!("{base}/templates/_helpers.tpl"),
            "{{- define \"node-agent.unused\" -}}x{{- end -}}\n".into(),
        ),
        (
            format!("{base}/nodewave.yaml"),
            format!(
                "releaseName: {dir}\nnamespace: {namespace}\nvaluesFiles: [values-prod.yaml]\nvalues:\n  image: {{tag: \"{tag}\"}}\n  scheduling: {scheduling:?}\n"
            ),
        ),
    ]
}

/// Commits `files` (written into the work tree at `dir`) on `main`.
pub fn commit(dir: &Path, message: &str, files: &[(&str, Option<&str>)]) -> String {
    let repo = Repository::open(dir).unwrap_or_else(|_| {
        let r = Repository::init(dir).unwrap();
        r.set_head("refs/heads/main").unwrap();
        r
    });
    for (path, content) in files {
        let p = dir.join(path);
        match content {
            Some(c) => {
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, c).unwrap();
            }
            None => {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    let mut index = repo.index().unwrap();
    index
        .add_all(["*"].iter(), git2::IndexAddOption::DEFAULT, None)
        .unwrap();
    index.update_all(["*"].iter(), None).unwrap();
    index.write().unwrap();
    let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
    let sig = Signature::now("nodewave tests", "tests@nodewave.invalid").unwrap();
    let parent = repo
        .head()
        .ok()
        .and_then(|h| h.target())
        .map(|oid| repo.find_commit(oid).unwrap());
    let parents: Vec<&git2::Commit> = parent.iter().collect();
    repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)
        .unwrap()
        .to_string()
}

pub fn owned(files: &[(String, String)]) -> Vec<(&str, String)> {
    files.iter().map(|(p, c)| (p.as_str(), c.clone())).collect()
}
