//! What a kustomization file refers to (pure): the entries discovery follows to
//! find bases, and the ones that would make Kustomize reach the network.

use serde_json::Value;

/// File names Kustomize accepts for a kustomization, in its order of preference.
pub const FILE_NAMES: [&str; 3] = ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// Fields whose entries are paths or URLs: files, or directories holding another
/// kustomization (resources, bases, components, and the generator/transformer
/// configurations, which may be kustomization directories too).
const LIST_FIELDS: [&str; 9] = [
    "resources",
    "bases",
    "components",
    "crds",
    "configurations",
    "generators",
    "transformers",
    "validators",
    "patchesStrategicMerge",
];

/// One path-like entry of a kustomization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub field: &'static str,
    pub value: String,
}

/// What discovery needs from a kustomization.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kustomization {
    pub references: Vec<Reference>,
    /// `helmCharts` makes Kustomize run Helm itself (and pull charts).
    pub helm_charts: bool,
}

/// Parses a kustomization; the error is (line, message) for a finding.
pub fn parse(text: &str) -> Result<Kustomization, (Option<usize>, String)> {
    let value: Value = match serde_saphyr::from_str(text) {
        Ok(v) => v,
        Err(e) => return Err(crate::manifest::saphyr_error(&e)),
    };
    if value.is_null() {
        return Ok(Kustomization::default());
    }
    let Some(map) = value.as_object() else {
        return Err((Some(1), "a kustomization must be a mapping".to_owned()));
    };
    let mut references = Vec::new();
    for field in LIST_FIELDS {
        let Some(list) = map.get(field) else { continue };
        let Some(items) = list.as_array() else {
            return Err((
                line_of(text, field),
                format!("{field} must be a list of paths"),
            ));
        };
        for item in items {
            // Inline generator/transformer configurations are YAML text, not paths.
            if let Some(s) = item.as_str().filter(|s| !s.contains('\n')) {
                references.push(Reference {
                    field,
                    value: s.trim().to_owned(),
                });
            }
        }
    }
    for field in ["patches", "patchesJson6902", "replacements"] {
        for item in map
            .get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(path) = item.get("path").and_then(Value::as_str) {
                references.push(Reference {
                    field,
                    value: path.trim().to_owned(),
                });
            }
        }
    }
    Ok(Kustomization {
        references,
        helm_charts: map
            .get("helmCharts")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty()),
    })
}

/// Whether an entry is remote whatever the repository holds: a URL, a git
/// address or a go-getter style reference with a query.
pub fn is_remote(value: &str) -> bool {
    let v = value.trim();
    v.contains("://")
        || v.starts_with("git@")
        || v.starts_with("git::")
        || v.starts_with("github.com/")
        || v.starts_with("gitlab.com/")
        || v.starts_with("bitbucket.org/")
        || ["?ref=", "?version=", "?submodules=", "?timeout=", "&ref="]
            .iter()
            .any(|q| v.contains(q))
}

/// Whether an entry that is not in the repository looks like `host.tld/org/repo`,
/// which Kustomize then tries to clone.
pub fn looks_like_host_path(value: &str) -> bool {
    let first = value.trim().split('/').next().unwrap_or_default();
    value.contains('/')
        && first.contains('.')
        && !first.starts_with('.')
        && first
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == ':')
}

/// First line (1-based) on which `needle` occurs, for pointing a finding at an entry.
pub fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_path_entries_of_every_field() {
        let k = parse(
            "resources:\n- ../../agents/fluent-bit\n- ds.yaml\nbases: [../base]\ncomponents:\n- ../comp\npatches:\n- path: patch.yaml\n- patch: |-\n    inline\ntransformers:\n- |\n  apiVersion: builtin\n  kind: LabelTransformer\n",
        )
        .unwrap();
        let values: Vec<(&str, &str)> = k
            .references
            .iter()
            .map(|r| (r.field, r.value.as_str()))
            .collect();
        assert_eq!(
            values,
            vec![
                ("resources", "../../agents/fluent-bit"),
                ("resources", "ds.yaml"),
                ("bases", "../base"),
                ("components", "../comp"),
                ("patches", "patch.yaml"),
            ]
        );
        assert!(!k.helm_charts);
        assert!(
            parse("helmCharts:\n- name: x\n  repo: https://charts.example\n")
                .unwrap()
                .helm_charts
        );
        assert_eq!(parse("").unwrap(), Kustomization::default());
    }

    #[test]
    fn malformed_kustomizations_are_errors_with_a_line() {
        let (line, msg) = parse("resources: ds.yaml\n").unwrap_err();
        assert_eq!(line, Some(1));
        assert!(msg.contains("resources must be a list"), "{msg}");
        assert!(parse("resources: [\n").is_err());
        assert!(parse("- a\n- b\n").is_err());
    }

    #[test]
    fn remote_entries_are_recognised() {
        for remote in [
            "https://github.com/org/repo//deploy?ref=v1.2.3",
            "http://example.com/ds.yaml",
            "github.com/org/repo/deploy?ref=main",
            "git@github.com:org/repo.git//base",
            "git::https://example.com/repo.git",
            "ssh://git@example.com/repo.git",
            "example.com/org/repo?version=v1",
        ] {
            assert!(is_remote(remote), "{remote}");
        }
        for local in ["../base", "ds.yaml", "./overlays/prod", "github/base"] {
            assert!(!is_remote(local), "{local}");
        }
        assert!(looks_like_host_path("example.com/org/repo"));
        assert!(looks_like_host_path("gitea.internal:3000/org/repo"));
        assert!(!looks_like_host_path("../base"));
        assert!(!looks_like_host_path("ds.yaml"));
        assert!(!looks_like_host_path("sub.dir"));
        assert!(!looks_like_host_path(".hidden/x"));
    }
}
