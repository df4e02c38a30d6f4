use std::collections::BTreeMap;

use super::*;

/// Files by path; directories are implied by the paths.
struct MemTree(BTreeMap<String, String>);

impl MemTree {
    fn new(files: &[(&str, &str)]) -> Self {
        Self(
            files
                .iter()
                .map(|(p, c)| ((*p).to_owned(), (*c).to_owned()))
                .collect(),
        )
    }
}

impl Tree for MemTree {
    fn list(&self, dir: &str) -> Vec<(String, EntryKind)> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let mut out: BTreeMap<String, EntryKind> = BTreeMap::new();
        for path in self.0.keys() {
            let Some(rest) = path.strip_prefix(&prefix) else {
                continue;
            };
            match rest.split_once('/') {
                Some((d, _)) => out.insert(d.to_owned(), EntryKind::Dir),
                None => out.insert(rest.to_owned(), EntryKind::File),
            };
        }
        out.into_iter().collect()
    }

    fn kind(&self, path: &str) -> Option<EntryKind> {
        if self.0.contains_key(path) {
            Some(EntryKind::File)
        } else if path.is_empty() || self.0.keys().any(|p| p.starts_with(&format!("{path}/"))) {
            Some(EntryKind::Dir)
        } else {
            None
        }
    }

    fn read(&self, path: &str) -> Option<String> {
        self.0.get(path).cloned()
    }
}

fn scope(tracked: &str) -> Scope<'_> {
    Scope {
        tracked,
        max_up: Some(0),
        allow_network: false,
        default_namespace: "default",
    }
}

fn dirs(plan: &Plan) -> Vec<(&str, &'static str)> {
    plan.units
        .iter()
        .map(|u| {
            (
                u.dir.as_str(),
                match u.renderer {
                    Renderer::Kustomize { .. } => "kustomize",
                    Renderer::Helm(_) => "helm",
                },
            )
        })
        .collect()
}

fn checks(plan: &Plan) -> Vec<(&'static str, String)> {
    plan.findings
        .iter()
        .map(|f| (f.check, f.location.to_string()))
        .collect()
}

const DS: &str = "apiVersion: apps/v1\nkind: DaemonSet\n";

#[test]
fn paths_join_and_normalise() {
    assert_eq!(
        join("clusters/prod", "../../agents/fb").as_deref(),
        Some("agents/fb")
    );
    assert_eq!(join("", "../x").as_deref(), Some("../x"));
    assert_eq!(join("../a", "../../b").as_deref(), Some("../../b"));
    assert_eq!(join("a", "./b/./c/").as_deref(), Some("a/b/c"));
    assert_eq!(join("a", "..").as_deref(), Some(""));
    assert_eq!(join("a", "/etc"), None);
    assert_eq!(ups("../../b"), 2);
    assert_eq!(ups("a/b"), 0);
}

#[test]
fn plain_only_trees_have_no_units_and_keep_every_yaml_file() {
    let tree = MemTree::new(&[
        ("clusters/prod/ds.yaml", DS),
        ("clusters/prod/sub/policy.yml", DS),
        ("clusters/prod/README.md", "x"),
        ("clusters/prod/.github/ci.yaml", "x"),
        ("clusters/prod/.hidden.yaml", "x"),
        ("other/kustomization.yaml", "resources: []\n"),
    ]);
    let plan = discover(&tree, &scope("clusters/prod"));
    assert!(plan.units.is_empty());
    assert!(plan.findings.is_empty());
    assert_eq!(
        plan.plain,
        vec!["clusters/prod/ds.yaml", "clusters/prod/sub/policy.yml"]
    );
    // A tracked file is just that file.
    let plan = discover(&tree, &scope("clusters/prod/ds.yaml"));
    assert_eq!(plan.plain, vec!["clusters/prod/ds.yaml"]);
}

#[test]
fn a_tracked_kustomization_is_the_only_unit_and_may_use_bases_outside_it() {
    let tree = MemTree::new(&[
        (
            "clusters/prod/kustomization.yaml",
            "resources:\n- ../../agents/fluent-bit\n- extra.yaml\n",
        ),
        ("clusters/prod/extra.yaml", DS),
        (
            "clusters/prod/nested/kustomization.yaml",
            "resources: [ds.yaml]\n",
        ),
        ("clusters/prod/nested/ds.yaml", DS),
        (
            "agents/fluent-bit/kustomization.yaml",
            "resources: [ds.yaml]\n",
        ),
        ("agents/fluent-bit/ds.yaml", DS),
    ]);
    let plan = discover(&tree, &scope("clusters/prod"));
    assert!(plan.findings.is_empty(), "{:?}", plan.findings);
    assert_eq!(dirs(&plan), vec![("clusters/prod", "kustomize")]);
    // Files in a kustomization directory are Kustomize's, never plain YAML.
    assert!(plan.plain.is_empty());
}

#[test]
fn without_a_tracked_kustomization_only_unreferenced_ones_render() {
    let tree = MemTree::new(&[
        (
            "apps/fluent-bit/base/kustomization.yaml",
            "resources: [ds.yaml]\n",
        ),
        ("apps/fluent-bit/base/ds.yaml", DS),
        (
            "apps/fluent-bit/overlays/prod/kustomization.yaml",
            "resources:\n- ../../base\ncomponents:\n- ../../../components/tolerations\n",
        ),
        (
            "apps/fluent-bit/overlays/staging/kustomization.yml",
            "bases: [../../base]\n",
        ),
        ("apps/node-exporter/Kustomization", "resources: [ds.yaml]\n"),
        ("apps/node-exporter/ds.yaml", DS),
        (
            "components/tolerations/kustomization.yaml",
            "kind: Component\n",
        ),
        ("apps/plain/ds.yaml", DS),
    ]);
    let plan = discover(&tree, &scope("apps"));
    assert!(plan.findings.is_empty(), "{:?}", plan.findings);
    assert_eq!(
        dirs(&plan),
        vec![
            ("apps/fluent-bit/overlays/prod", "kustomize"),
            ("apps/fluent-bit/overlays/staging", "kustomize"),
            ("apps/node-exporter", "kustomize"),
        ]
    );
    assert_eq!(plan.plain, vec!["apps/plain/ds.yaml"]);
}

#[test]
fn references_through_bases_outside_the_tracked_path_count_transitively() {
    // clusters/x -> ../../shared/mid (outside) -> ../../clusters/x-base (inside).
    let tree = MemTree::new(&[
        (
            "clusters/x/kustomization.yaml",
            "resources: [../../shared/mid]\n",
        ),
        (
            "shared/mid/kustomization.yaml",
            "resources: [../../clusters/x-base]\n",
        ),
        (
            "clusters/x-base/kustomization.yaml",
            "resources: [ds.yaml]\n",
        ),
        ("clusters/x-base/ds.yaml", DS),
    ]);
    let plan = discover(&tree, &scope("clusters"));
    assert_eq!(dirs(&plan), vec![("clusters/x", "kustomize")]);
}

#[test]
fn files_a_rendered_kustomization_lists_are_not_also_plain() {
    let tree = MemTree::new(&[
        (
            "fleet/prod/kustomization.yaml",
            "resources: [../common/namespace.yaml]\n",
        ),
        ("fleet/common/namespace.yaml", DS),
        ("fleet/common/ds.yaml", DS),
    ]);
    let plan = discover(&tree, &scope("fleet"));
    assert_eq!(dirs(&plan), vec![("fleet/prod", "kustomize")]);
    assert_eq!(plan.plain, vec!["fleet/common/ds.yaml"]);
}

#[test]
fn cycles_are_an_error() {
    let tree = MemTree::new(&[
        ("a/kustomization.yaml", "resources: [../b]\n"),
        ("b/kustomization.yaml", "resources: [../a]\n"),
    ]);
    let plan = discover(&tree, &scope(""));
    assert!(plan.units.is_empty());
    assert_eq!(
        checks(&plan),
        vec![
            (RENDER_ERROR, "a/kustomization.yaml".to_owned()),
            (RENDER_ERROR, "b/kustomization.yaml".to_owned())
        ]
    );
}

#[test]
fn chart_directories_render_with_helm_and_their_files_are_not_plain() {
    let tree = MemTree::new(&[
        (
            "fleet/charts/fluent-bit/Chart.yaml",
            "apiVersion: v2\nname: fluent-bit\nversion: 0.1.0\n",
        ),
        ("fleet/charts/fluent-bit/values.yaml", "image: x\n"),
        ("fleet/charts/fluent-bit/values-prod.yaml", "image: y\n"),
        (
            "fleet/charts/fluent-bit/templates/ds.yaml",
            "{{ .Values.image }}",
        ),
        (
            "fleet/charts/fluent-bit/nodewave.yaml",
            "namespace: logging\nvaluesFiles: [values-prod.yaml, ../../values/common.yaml]\nvalues: {a: 1}\n",
        ),
        ("fleet/values/common.yaml", "a: 2\n"),
        ("fleet/ds.yaml", DS),
    ]);
    let plan = discover(&tree, &scope("fleet"));
    assert!(plan.findings.is_empty(), "{:?}", plan.findings);
    assert_eq!(dirs(&plan), vec![("fleet/charts/fluent-bit", "helm")]);
    let Renderer::Helm(release) = &plan.units[0].renderer else {
        panic!("helm unit expected");
    };
    assert_eq!(release.chart_name, "fluent-bit");
    assert_eq!(release.release_name, "fluent-bit");
    assert_eq!(release.namespace, "logging");
    assert_eq!(
        release.values_files,
        vec![
            "fleet/charts/fluent-bit/values-prod.yaml",
            "fleet/values/common.yaml"
        ]
    );
    assert_eq!(release.values, Some(serde_json::json!({"a": 1})));
    assert!(release.include_crds);
    assert!(!release.dependency_update);
    // The values file outside the chart is still plain YAML where it is; that it
    // is also a values file does not change it (it holds no objects in practice).
    assert_eq!(
        plan.plain,
        vec!["fleet/ds.yaml", "fleet/values/common.yaml"]
    );
}

#[test]
fn chart_defaults_and_the_tracked_path_as_a_chart() {
    let tree = MemTree::new(&[
        (
            "node-exporter/Chart.yaml",
            "apiVersion: v2\nname: prometheus-node-exporter\nversion: 1.0.0\n",
        ),
        ("node-exporter/templates/ds.yaml", "x"),
    ]);
    let plan = discover(&tree, &scope("node-exporter"));
    let Renderer::Helm(release) = &plan.units[0].renderer else {
        panic!("helm unit expected");
    };
    assert_eq!(plan.units[0].dir, "node-exporter");
    assert_eq!(release.release_name, "node-exporter");
    assert_eq!(release.namespace, "default");
    assert!(release.values_files.is_empty());
    assert!(plan.plain.is_empty());
}

#[test]
fn chart_problems_are_findings_at_the_file() {
    let tree = MemTree::new(&[
        (
            "a/Chart.yaml",
            "apiVersion: v2\nname: a\ndependencies:\n- name: common\n  version: 1.0.0\n  repository: https://charts.example\n- name: vendored\n  version: 1.0.0\n",
        ),
        ("a/charts/vendored/Chart.yaml", "name: vendored\n"),
        ("b/Chart.yaml", "apiVersion: v2\nversion: 1\n"),
        ("c/Chart.yaml", "name: c\n"),
        (
            "c/nodewave.yaml",
            "valuesFiles: [missing.yaml, ../../../etc/passwd]\nnamespace: ok\n",
        ),
        ("d/Chart.yaml", "name: d\n"),
        ("d/nodewave.yaml", "releaseNam: x\n"),
        ("Bad_Name/Chart.yaml", "name: e\n"),
        ("both/Chart.yaml", "name: f\n"),
        ("both/kustomization.yaml", "resources: []\n"),
    ]);
    let plan = discover(&tree, &scope(""));
    assert!(plan.units.is_empty(), "{:?}", plan.units);
    assert_eq!(
        checks(&plan),
        vec![
            (RENDER_ERROR, "Bad_Name/nodewave.yaml".to_owned()),
            (REMOTE_SOURCE_REFUSED, "a/Chart.yaml:4".to_owned()),
            (RENDER_ERROR, "b/Chart.yaml:1".to_owned()),
            (RENDER_ERROR, "both/Chart.yaml".to_owned()),
            (RENDER_ERROR, "c/nodewave.yaml".to_owned()),
            (REMOTE_SOURCE_REFUSED, "c/nodewave.yaml".to_owned()),
            (RENDER_ERROR, "d/nodewave.yaml:1".to_owned()),
        ]
    );
    let dep = &plan.findings[1].message;
    assert!(
        dep.contains(
            "\"common\" (repository https://charts.example) is not vendored under a/charts/"
        ),
        "{dep}"
    );
    assert!(dep.contains("--render-allow-network"), "{dep}");

    // With network allowed the dependency is fetched instead of refused.
    let mut s = scope("a");
    s.allow_network = true;
    let plan = discover(&tree, &s);
    assert!(plan.findings.is_empty());
    let Renderer::Helm(release) = &plan.units[0].renderer else {
        panic!("helm unit expected");
    };
    assert!(release.dependency_update);
}

#[test]
fn remote_and_escaping_kustomize_sources_are_refused_unless_allowed() {
    let tree = MemTree::new(&[
        (
            "prod/kustomization.yaml",
            "resources:\n- https://github.com/org/repo//deploy?ref=v1\n- github.com/org/repo/base\n- example.com/org/base\n- ../../outside\n- ../local\nhelmCharts:\n- name: x\n",
        ),
        (
            "local/kustomization.yaml",
            "resources:\n- git@github.com:org/repo.git//x\n",
        ),
    ]);
    let plan = discover(&tree, &scope("prod"));
    assert_eq!(
        checks(&plan),
        vec![
            (
                REMOTE_SOURCE_REFUSED,
                "local/kustomization.yaml:2".to_owned()
            ),
            (
                REMOTE_SOURCE_REFUSED,
                "prod/kustomization.yaml:2".to_owned()
            ),
            (
                REMOTE_SOURCE_REFUSED,
                "prod/kustomization.yaml:3".to_owned()
            ),
            (
                REMOTE_SOURCE_REFUSED,
                "prod/kustomization.yaml:4".to_owned()
            ),
            (
                REMOTE_SOURCE_REFUSED,
                "prod/kustomization.yaml:5".to_owned()
            ),
            (
                REMOTE_SOURCE_REFUSED,
                "prod/kustomization.yaml:7".to_owned()
            ),
        ]
    );
    let m = &plan.findings[1].message;
    assert!(
        m.contains(
            "resources entry \"https://github.com/org/repo//deploy?ref=v1\" is a remote source"
        ),
        "{m}"
    );
    assert!(
        plan.findings[4]
            .message
            .contains("points outside the repository")
    );
    assert!(plan.findings[5].message.contains("helmCharts"));

    let mut s = scope("prod");
    s.allow_network = true;
    let plan = discover(&tree, &s);
    // Leaving the repository is refused whatever the network setting.
    assert_eq!(
        checks(&plan),
        vec![(
            REMOTE_SOURCE_REFUSED,
            "prod/kustomization.yaml:5".to_owned()
        )]
    );
    // validate without a repository around the directory may climb anywhere.
    s.max_up = None;
    let plan = discover(&tree, &s);
    assert!(plan.findings.is_empty());
    assert_eq!(
        plan.units[0].renderer,
        Renderer::Kustomize { helm_charts: true }
    );
}

#[test]
fn invalid_kustomizations_are_findings_with_a_line() {
    let tree = MemTree::new(&[("k/kustomization.yaml", "resources:\n  bad: 1\n")]);
    let plan = discover(&tree, &scope(""));
    assert_eq!(
        checks(&plan),
        vec![(RENDER_ERROR, "k/kustomization.yaml:1".to_owned())]
    );
    assert!(
        plan.findings[0]
            .message
            .starts_with("invalid kustomization: resources must be a list")
    );
}
