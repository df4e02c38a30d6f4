//! Turning renderer output into [`ManifestFile`]s and renderer errors into
//! readable messages (pure).
//!
//! Kustomize output becomes one file named after the directory,
//! `clusters/prod (kustomize)`. Helm output is split on the `# Source:` comments
//! Helm prints, one file per template, `charts/fluent-bit/templates/ds.yaml (helm)`,
//! so a finding names the template; lines count in that template's rendered text.
//! Objects Helm renders without a namespace get the release namespace (as
//! `helm install --namespace` would apply them), cluster-scoped kinds excepted.

use serde_json::Value;

use super::discover::{HelmRelease, display_dir, join};
use crate::manifest::ManifestFile;

/// Kinds that have no namespace; objects of other kinds without one are put in
/// the release namespace. Custom cluster-scoped kinds are not known here (no
/// cluster is asked): give them no namespace in the chart and they are left alone
/// only if listed.
const CLUSTER_SCOPED: &[&str] = &[
    "APIService",
    "CSIDriver",
    "CSINode",
    "CertificateSigningRequest",
    "ClusterRole",
    "ClusterRoleBinding",
    "ComponentStatus",
    "CustomResourceDefinition",
    "FlowSchema",
    "IngressClass",
    "MutatingAdmissionPolicy",
    "MutatingAdmissionPolicyBinding",
    "MutatingWebhookConfiguration",
    "Namespace",
    "Node",
    "PersistentVolume",
    "PriorityClass",
    "PriorityLevelConfiguration",
    "RuntimeClass",
    "StorageClass",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "ValidatingWebhookConfiguration",
    "VolumeAttachment",
];

const SOURCE_PREFIX: &str = "# Source: ";

pub fn kustomize_file(dir: &str, stdout: String) -> ManifestFile {
    ManifestFile {
        path: format!("{} (kustomize)", display_dir(dir)),
        contents: stdout,
    }
}

/// Splits `helm template` output into one file per template (see the module docs).
pub fn helm_files(dir: &str, release: &HelmRelease, stdout: &str) -> Vec<ManifestFile> {
    // Documents in output order, each with the template it came from.
    let mut docs: Vec<(String, String)> = Vec::new();
    let mut source = String::new();
    let mut current = String::new();
    let mut lines = stdout.lines().peekable();
    while let Some(line) = lines.next() {
        let next_is_source = lines.peek().is_some_and(|n| n.starts_with(SOURCE_PREFIX));
        if line.trim_end() == "---" && next_is_source {
            if !current.trim().is_empty() {
                docs.push((source.clone(), std::mem::take(&mut current)));
            }
            current.clear();
            if let Some(s) = lines.peek().and_then(|n| n.strip_prefix(SOURCE_PREFIX)) {
                s.trim().clone_into(&mut source);
            }
        }
        current.push_str(line);
        current.push('\n');
    }
    if !current.trim().is_empty() {
        docs.push((source, current));
    }

    let mut files: Vec<ManifestFile> = Vec::new();
    for (source, doc) in docs {
        let path = source_path(dir, &release.chart_name, &source);
        let doc = with_namespace(&doc, &release.namespace);
        match files.iter_mut().find(|f| f.path == path) {
            Some(f) => f.contents.push_str(&doc),
            None => files.push(ManifestFile {
                path,
                contents: doc,
            }),
        }
    }
    files
}

/// `fluent-bit/templates/ds.yaml` from chart directory `charts/fb` →
/// `charts/fb/templates/ds.yaml (helm)`.
fn source_path(dir: &str, chart_name: &str, source: &str) -> String {
    let rel = source
        .strip_prefix(chart_name)
        .and_then(|r| r.strip_prefix('/'))
        .and_then(|r| join(dir, r))
        .filter(|_| !source.is_empty());
    match rel {
        Some(p) => format!("{p} (helm)"),
        None => format!("{} (helm)", display_dir(dir)),
    }
}

/// One rendered document with `metadata.namespace` set to `namespace` when it has
/// none and its kind is namespaced. The text is kept (one line inserted) so lines
/// still match what Helm printed; a layout that cannot be edited safely is
/// rewritten as JSON instead.
pub fn with_namespace(doc: &str, namespace: &str) -> String {
    let Ok(value) = serde_saphyr::from_str::<Value>(doc) else {
        return doc.to_owned();
    };
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let Some(metadata) = value.get("metadata").and_then(Value::as_object) else {
        return doc.to_owned();
    };
    let has_namespace = metadata
        .get("namespace")
        .is_some_and(|n| n.as_str().is_some_and(|s| !s.is_empty()));
    if has_namespace || CLUSTER_SCOPED.contains(&kind) || kind == "List" {
        return doc.to_owned();
    }
    let quoted = serde_json::to_string(namespace).unwrap_or_default();
    if let Some(edited) = insert_namespace_line(doc, &quoted)
        && namespace_of(&edited).as_deref() == Some(namespace)
    {
        return edited;
    }
    let mut value = value;
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("namespace".into(), Value::String(namespace.to_owned()));
    }
    let mut comments = String::new();
    for l in doc
        .lines()
        .take_while(|l| l.trim_end() == "---" || l.starts_with('#'))
    {
        comments.push_str(l);
        comments.push('\n');
    }
    format!(
        "{comments}{}\n",
        serde_json::to_string_pretty(&value).unwrap_or_default()
    )
}

fn namespace_of(doc: &str) -> Option<String> {
    let value = serde_saphyr::from_str::<Value>(doc).ok()?;
    Some(
        value
            .get("metadata")?
            .get("namespace")?
            .as_str()?
            .to_owned(),
    )
}

/// Inserts `namespace: <quoted>` under a top-level `metadata:` (block or flow style).
fn insert_namespace_line(doc: &str, quoted: &str) -> Option<String> {
    let lines: Vec<&str> = doc.lines().collect();
    let at = lines.iter().position(|l| {
        let l = l.trim_end();
        l == "metadata:"
            || l.starts_with("metadata: {")
            || l.strip_prefix("metadata:")
                .is_some_and(|r| r.trim_start().starts_with('#'))
    })?;
    let line = lines[at].trim_end();
    let mut out: Vec<String> = lines[..at].iter().map(|l| (*l).to_owned()).collect();
    if let Some(rest) = line.strip_prefix("metadata: {") {
        // Flow style: the namespace goes first inside the braces.
        let rest = rest.trim_start();
        if rest.starts_with('}') {
            out.push(format!("metadata: {{namespace: {quoted}{rest}"));
        } else {
            out.push(format!("metadata: {{namespace: {quoted}, {rest}"));
        }
    } else {
        let indent = lines[at + 1..]
            .iter()
            .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .map(|l| l.len() - l.trim_start().len())
            .filter(|n| *n > 0)?;
        out.push(line.to_owned());
        out.push(format!("{}namespace: {quoted}", " ".repeat(indent)));
        // A trailing comment after `metadata:` stays where it was.
    }
    out.extend(lines[at + 1..].iter().map(|l| (*l).to_owned()));
    let mut text = out.join("\n");
    text.push('\n');
    Some(text)
}

/// Most lines and characters of a renderer message shown in a finding.
const MAX_MESSAGE_LINES: usize = 20;
const MAX_MESSAGE_CHARS: usize = 2_000;

/// A renderer's stderr, readable in a finding: the checkout's absolute path
/// removed (paths become repository-relative), Helm's `--debug` hint dropped,
/// bounded in lines and characters.
pub fn clean_message(stderr: &str, roots: &[String]) -> String {
    let mut text = stderr.to_owned();
    for root in roots.iter().filter(|r| !r.is_empty()) {
        text = text.replace(&format!("{root}/"), "").replace(root, ".");
    }
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.strip_prefix("Error: ").unwrap_or(l).trim_end())
        .filter(|l| !l.is_empty() && !l.starts_with("Use --debug flag"))
        .collect();
    let mut message = lines
        .iter()
        .take(MAX_MESSAGE_LINES)
        .copied()
        .collect::<Vec<_>>()
        .join("\n");
    let mut truncated = lines.len() > MAX_MESSAGE_LINES;
    if message.chars().count() > MAX_MESSAGE_CHARS {
        message = message.chars().take(MAX_MESSAGE_CHARS).collect();
        truncated = true;
    }
    if truncated {
        message.push_str(" [...truncated]");
    }
    message
}

/// Where a Helm error points, as `(file, line)` relative to the base: Helm names
/// templates as `<chart name>/templates/x.yaml:LINE` (or `...yaml:LINE:COL`, or
/// `on <chart>/templates/x.yaml` for YAML errors in the output).
pub fn helm_error_location(
    message: &str,
    chart_name: &str,
    dir: &str,
) -> Option<(String, Option<usize>)> {
    let needle = format!("{chart_name}/");
    let mut from = 0;
    while let Some(found) = message[from..].find(&needle) {
        let start = from + found;
        from = start + needle.len();
        // Only at a word start: `(agent/...` or ` agent/...`, not `myagent/...`.
        if start > 0
            && message[..start]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '-' || c == '_' || c == '/')
        {
            continue;
        }
        let rest = &message[start + needle.len()..];
        let end = rest
            .find(|c: char| c == ':' || c == ')' || c == '"' || c.is_whitespace())
            .unwrap_or(rest.len());
        let file = &rest[..end];
        let template_file = std::path::Path::new(file)
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| ["yaml", "yml", "tpl", "txt"].contains(&e));
        if !template_file {
            continue;
        }
        let line = rest[end..]
            .strip_prefix(':')
            .map(|r| {
                r.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
            })
            .and_then(|d| d.parse().ok());
        return Some((join(dir, file)?, line));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(namespace: &str) -> HelmRelease {
        HelmRelease {
            chart_name: "agent".into(),
            release_name: "rel".into(),
            namespace: namespace.into(),
            values_files: Vec::new(),
            values: None,
            include_crds: true,
            kube_version: None,
            dependency_update: false,
        }
    }

    const HELM_OUTPUT: &str = "---\n# Source: agent/crds/crd.yaml\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: foos.x.io}\n\n---\n# Source: agent/templates/ds.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\n# Source: agent/templates/ds.yaml\napiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: rel\n  labels: {a: b}\nspec: {}\n---\n# Source: agent/templates/other.yaml\napiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: other\n  namespace: kube-system\n";

    #[test]
    fn helm_output_is_split_per_template_with_the_release_namespace() {
        let files = helm_files("charts/agent", &release("logging"), HELM_OUTPUT);
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "charts/agent/crds/crd.yaml (helm)",
                "charts/agent/templates/ds.yaml (helm)",
                "charts/agent/templates/other.yaml (helm)"
            ]
        );
        // Cluster-scoped: unchanged.
        assert!(!files[0].contents.contains("namespace"));
        assert_eq!(
            files[1].contents,
            "---\n# Source: agent/templates/ds.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata: {namespace: \"logging\", name: x}\n---\n# Source: agent/templates/ds.yaml\napiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  namespace: \"logging\"\n  name: rel\n  labels: {a: b}\nspec: {}\n"
        );
        // An explicit namespace wins.
        assert!(files[2].contents.contains("namespace: kube-system"));
        assert!(!files[2].contents.contains("logging"));
    }

    #[test]
    fn namespace_injection_falls_back_to_json_for_odd_layouts() {
        let doc = "kind: DaemonSet\nmetadata:\n    {name: x}\n";
        let out = with_namespace(doc, "ns");
        assert_eq!(namespace_of(&out).as_deref(), Some("ns"));
        assert!(out.contains("\"name\": \"x\""), "{out}");
        assert_eq!(
            with_namespace("metadata: {}\n", "ns"),
            "metadata: {namespace: \"ns\"}\n"
        );
        // Not an object, no metadata, or a List: left alone.
        assert_eq!(with_namespace("- a\n", "ns"), "- a\n");
        assert_eq!(with_namespace("kind: X\n", "ns"), "kind: X\n");
    }

    #[test]
    fn output_without_source_comments_is_named_after_the_chart_directory() {
        let files = helm_files("", &release("default"), "kind: X\nmetadata:\n  name: a\n");
        assert_eq!(files[0].path, ". (helm)");
        assert_eq!(
            kustomize_file("clusters/prod", String::new()).path,
            "clusters/prod (kustomize)"
        );
        assert!(helm_files("x", &release("d"), "").is_empty());
    }

    #[test]
    fn messages_lose_the_checkout_path_and_stay_bounded() {
        let roots = vec!["/state/render-1/repo".to_owned()];
        let m = clean_message(
            "Error: accumulating resources: '/state/render-1/repo/clusters/missing': no such file\n\nUse --debug flag to render out invalid YAML\n",
            &roots,
        );
        assert_eq!(
            m,
            "accumulating resources: 'clusters/missing': no such file"
        );
        let long = "x\n".repeat(100);
        let m = clean_message(&long, &roots);
        assert_eq!(m.lines().count(), MAX_MESSAGE_LINES);
        assert!(m.ends_with("[...truncated]"));
        let m = clean_message(&"y".repeat(10_000), &roots);
        assert!(m.len() < MAX_MESSAGE_CHARS + 20);
    }

    #[test]
    fn helm_errors_point_at_the_template() {
        let cases = [
            (
                "template: agent/templates/bad.yaml:12:10: executing \"agent/templates/bad.yaml\" at <.Values.x.y>: nil pointer",
                Some(("charts/agent/templates/bad.yaml".to_owned(), Some(12))),
            ),
            (
                "parse error at (agent/templates/_helpers.tpl:3): missing value for if",
                Some(("charts/agent/templates/_helpers.tpl".to_owned(), Some(3))),
            ),
            (
                "YAML parse error on agent/templates/ds.yaml: error converting YAML to JSON: yaml: line 2",
                Some(("charts/agent/templates/ds.yaml".to_owned(), None)),
            ),
            ("myagent/templates/x.yaml:3: nope", None),
            ("chart requires kubeVersion >=1.40", None),
        ];
        for (message, want) in cases {
            assert_eq!(
                helm_error_location(message, "agent", "charts/agent"),
                want,
                "{message}"
            );
        }
    }
}
