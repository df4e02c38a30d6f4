//! A Helm chart directory (pure): its `Chart.yaml` (name, dependencies) and the
//! `nodewave.yaml` next to it that says how to render it.

use serde::Deserialize;
use serde_json::Value;

pub const CHART_FILE: &str = "Chart.yaml";
/// Helm 2 style dependencies (apiVersion v1 charts).
pub const REQUIREMENTS_FILE: &str = "requirements.yaml";
pub const CONFIG_FILE: &str = "nodewave.yaml";

/// A chart dependency as `Chart.yaml` declares it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Dependency {
    pub name: String,
    #[serde(default)]
    pub repository: String,
}

#[derive(Debug, Deserialize)]
struct ChartYaml {
    #[serde(default)]
    name: String,
    #[serde(default)]
    dependencies: Vec<Dependency>,
}

/// What discovery needs from `Chart.yaml` (or `requirements.yaml`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChartMeta {
    pub name: String,
    pub dependencies: Vec<Dependency>,
}

/// Parses `Chart.yaml` or `requirements.yaml`; the error is (line, message).
pub fn parse_chart(text: &str) -> Result<ChartMeta, (Option<usize>, String)> {
    let chart: Option<ChartYaml> =
        serde_saphyr::from_str(text).map_err(|e| crate::manifest::saphyr_error(&e))?;
    let chart = chart.unwrap_or(ChartYaml {
        name: String::new(),
        dependencies: Vec::new(),
    });
    Ok(ChartMeta {
        name: chart.name,
        dependencies: chart.dependencies,
    })
}

/// `nodewave.yaml` next to a `Chart.yaml`. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ChartConfig {
    /// Helm release name [default: the chart directory's name].
    pub release_name: Option<String>,
    /// Release namespace, also given to objects that name none [default: the
    /// default namespace, `default`].
    pub namespace: Option<String>,
    /// Values files, relative to the chart directory, applied in order after the
    /// chart's own `values.yaml`.
    #[serde(default)]
    pub values_files: Vec<String>,
    /// Values applied after the values files (like `--set`, but typed).
    pub values: Option<Value>,
    /// Render the chart's `crds/` directory too [default: true, as `helm install` does].
    #[serde(rename = "includeCRDs")]
    pub include_crds: Option<bool>,
    /// Kubernetes version the templates see in `.Capabilities.KubeVersion`
    /// [default: Helm's built-in].
    pub kube_version: Option<String>,
}

/// Parses `nodewave.yaml`; the error is (line, message).
pub fn parse_config(text: &str) -> Result<ChartConfig, (Option<usize>, String)> {
    let config: Option<ChartConfig> =
        serde_saphyr::from_str(text).map_err(|e| crate::manifest::saphyr_error(&e))?;
    let config = config.unwrap_or_default();
    if let Some(values) = &config.values
        && !values.is_object()
    {
        return Err((
            crate::render::kustomization::line_of(text, "values:"),
            "values must be a mapping of chart values".to_owned(),
        ));
    }
    for (what, value) in [
        ("releaseName", config.release_name.as_deref()),
        ("namespace", config.namespace.as_deref()),
    ] {
        if let Some(v) = value
            && !is_dns_label(v)
        {
            return Err((
                crate::render::kustomization::line_of(text, what),
                format!(
                    "{what} {v:?} is not a valid name: use lowercase letters, digits and '-', at most 53 characters, starting and ending with a letter or digit"
                ),
            ));
        }
    }
    Ok(config)
}

/// Helm limits release names to 53 characters of a DNS label; namespaces are
/// DNS labels (63), the stricter bound is fine for both.
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 53
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether the chart's `charts/` directory (given as its entries: directory names
/// with the `name:` of their `Chart.yaml`, and file names) holds `dep`.
pub fn is_vendored(dep: &Dependency, subchart_names: &[String], files: &[String]) -> bool {
    subchart_names.contains(&dep.name)
        || files.iter().any(|f| {
            f.strip_prefix(&dep.name)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|rest| {
                    std::path::Path::new(rest)
                        .extension()
                        .is_some_and(|e| e.eq_ignore_ascii_case("tgz"))
                })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_metadata_and_dependencies() {
        let meta = parse_chart(
            "apiVersion: v2\nname: fluent-bit\nversion: 0.1.0\ndependencies:\n- name: common\n  version: 1.x\n  repository: https://charts.example\n",
        )
        .unwrap();
        assert_eq!(meta.name, "fluent-bit");
        assert_eq!(
            meta.dependencies,
            vec![Dependency {
                name: "common".into(),
                repository: "https://charts.example".into()
            }]
        );
        assert!(parse_chart("name: [\n").is_err());
        assert_eq!(parse_chart("").unwrap(), ChartMeta::default());
    }

    #[test]
    fn vendored_dependencies_are_directories_or_archives() {
        let dep = Dependency {
            name: "common".into(),
            repository: String::new(),
        };
        assert!(is_vendored(&dep, &["common".into()], &[]));
        assert!(is_vendored(&dep, &[], &["common-1.2.0.tgz".into()]));
        assert!(!is_vendored(
            &dep,
            &["other".into()],
            &["commonx-1.tgz".into()]
        ));
        assert!(!is_vendored(&dep, &[], &["common-1.2.0.tar".into()]));
    }

    #[test]
    fn config_fields_defaults_and_errors() {
        let c = parse_config(
            "releaseName: fb\nnamespace: logging\nvaluesFiles: [values-prod.yaml]\nvalues:\n  image: {tag: \"1.2\"}\nincludeCRDs: false\nkubeVersion: \"1.33.0\"\n",
        )
        .unwrap();
        assert_eq!(c.release_name.as_deref(), Some("fb"));
        assert_eq!(c.namespace.as_deref(), Some("logging"));
        assert_eq!(c.values_files, vec!["values-prod.yaml"]);
        assert_eq!(c.values.unwrap()["image"]["tag"], "1.2");
        assert_eq!(c.include_crds, Some(false));
        assert_eq!(c.kube_version.as_deref(), Some("1.33.0"));
        assert_eq!(parse_config("").unwrap(), ChartConfig::default());

        let (line, msg) = parse_config("namespace: logging\nrelease: x\n").unwrap_err();
        assert_eq!(line, Some(2));
        assert!(msg.contains("release"), "{msg}");
        let (line, msg) = parse_config("values: [1]\n").unwrap_err();
        assert_eq!(line, Some(1));
        assert!(msg.contains("mapping"), "{msg}");
        let (_, msg) = parse_config("namespace: Logging_NS\n").unwrap_err();
        assert!(msg.contains("not a valid name"), "{msg}");
    }
}
