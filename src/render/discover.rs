//! Deciding what to render (pure): which directories under the tracked path are
//! Kustomize or Helm units, which files stay plain YAML, and what is refused
//! before any renderer runs (remote bases, non-vendored chart dependencies,
//! references that leave the repository).
//!
//! Paths are relative to a base directory (the repository root on the server,
//! the validated directory for `nodewave validate`), `/`-separated and
//! normalised; they may start with `..` when a base lies outside the validated
//! directory. [`Tree`] is the only view of the files, so the rules are tested on
//! an in-memory tree and run unchanged on a checkout.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde_json::Value;

use super::chart::{self, CHART_FILE, CONFIG_FILE, REQUIREMENTS_FILE};
use super::kustomization::{self, FILE_NAMES, Kustomization};
use crate::manifest::{Finding, Location, REMOTE_SOURCE_REFUSED, RENDER_ERROR, Severity};

/// File names that make a directory a render unit; a tracked path without any of
/// them is plain YAML and is never checked out.
pub const MARKER_FILES: &[&str] = &[
    "kustomization.yaml",
    "kustomization.yml",
    "Kustomization",
    CHART_FILE,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
}

/// Read access to the files discovery looks at.
pub trait Tree {
    /// Entries directly in `dir` (`""` is the base), sorted by name; empty when
    /// `dir` is not a directory.
    fn list(&self, dir: &str) -> Vec<(String, EntryKind)>;
    fn kind(&self, path: &str) -> Option<EntryKind>;
    /// A small text file (kustomization, `Chart.yaml`, `nodewave.yaml`); `None`
    /// when missing or unreadable.
    fn read(&self, path: &str) -> Option<String>;
}

/// Where discovery looks and what it may follow.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The tracked path, relative to the base (`""` is the base itself).
    pub tracked: &'a str,
    /// How many `..` a reference may climb above the base: `Some(0)` on the server
    /// (the base is the repository root), the depth below the repository root for
    /// `validate`, `None` when there is no repository to stay inside.
    pub max_up: Option<usize>,
    pub allow_network: bool,
    /// Release namespace of charts whose `nodewave.yaml` names none.
    pub default_namespace: &'a str,
}

/// How one unit is rendered.
#[derive(Debug, Clone, PartialEq)]
pub enum Renderer {
    Kustomize {
        /// The kustomization uses `helmCharts` (only with network allowed).
        helm_charts: bool,
    },
    Helm(HelmRelease),
}

/// A `helm template` invocation, resolved from `Chart.yaml` and `nodewave.yaml`.
#[derive(Debug, Clone, PartialEq)]
pub struct HelmRelease {
    /// `name:` of `Chart.yaml`; Helm's `# Source:` comments start with it.
    pub chart_name: String,
    pub release_name: String,
    pub namespace: String,
    /// Paths relative to the base.
    pub values_files: Vec<String>,
    pub values: Option<Value>,
    pub include_crds: bool,
    pub kube_version: Option<String>,
    /// Dependencies are missing from `charts/` (network allowed): let Helm fetch them.
    pub dependency_update: bool,
}

/// A directory rendered as a whole.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    pub dir: String,
    pub renderer: Renderer,
}

/// The outcome of discovery. Any finding rejects the commit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub units: Vec<Unit>,
    /// Plain YAML files, as today: every `*.yaml`/`*.yml` under the tracked path
    /// outside unit directories (hidden names skipped), except files a rendered
    /// kustomization lists itself.
    pub plain: Vec<String>,
    pub findings: Vec<Finding>,
}

/// `rel` seen from directory `dir`, normalised; `None` for an absolute path.
/// `..` beyond the base is kept (`../agents/x`).
pub fn join(dir: &str, rel: &str) -> Option<String> {
    if rel.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in dir.split('/').chain(rel.split('/')) {
        match part {
            "" | "." => {}
            ".." if parts.last().is_some_and(|l| *l != "..") => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

fn path_in(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// How far above the base a normalised path lies.
fn ups(path: &str) -> usize {
    path.split('/').take_while(|p| *p == "..").count()
}

fn is_yaml(name: &str) -> bool {
    std::path::Path::new(name)
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
}

fn error(check: &'static str, file: &str, line: Option<usize>, message: String) -> Finding {
    Finding {
        check,
        severity: Severity::Error,
        location: Location::new(file, line),
        object: None,
        message,
    }
}

/// Directory name shown in findings (`.` for the base).
pub fn display_dir(dir: &str) -> &str {
    if dir.is_empty() { "." } else { dir }
}

/// Decides the render units and plain files under `scope.tracked`.
pub fn discover(tree: &dyn Tree, scope: &Scope<'_>) -> Plan {
    let mut plan = Plan::default();
    if tree.kind(scope.tracked) == Some(EntryKind::File) {
        if is_yaml(scope.tracked) {
            plan.plain.push(scope.tracked.to_owned());
        }
        return plan;
    }
    let mut walk = Walk::default();
    let top = tree.list(scope.tracked);
    let top_kustomization = kustomization_name(&top);
    if top_kustomization.is_some() && !has_file(&top, CHART_FILE) {
        // A tracked kustomization is the whole answer: it decides what it includes.
        walk.kustomizations.push(scope.tracked.to_owned());
    } else {
        walk.dir(tree, scope.tracked, false);
    }
    plan.findings.append(&mut walk.findings);

    let mut graph = Graph {
        tree,
        scope,
        analysed: BTreeMap::new(),
        findings: Vec::new(),
    };
    let mut referenced: BTreeSet<String> = BTreeSet::new();
    let mut listed_files: BTreeSet<String> = BTreeSet::new();
    for candidate in &walk.kustomizations {
        let reach = graph.reach(candidate, &mut listed_files);
        if reach.contains(candidate) {
            let file = graph.kustomization_path(candidate);
            graph.findings.push(error(
                RENDER_ERROR,
                &file,
                None,
                format!(
                    "kustomization {} refers back to itself through its resources; Kustomize cannot build a cycle: remove one of the references",
                    display_dir(candidate)
                ),
            ));
        }
        referenced.extend(reach.into_iter().filter(|d| d != candidate));
    }
    plan.findings.append(&mut graph.findings);
    for dir in &walk.kustomizations {
        if !referenced.contains(dir) {
            let helm_charts = graph.analysed.get(dir).is_some_and(|a| a.helm_charts);
            plan.units.push(Unit {
                dir: dir.clone(),
                renderer: Renderer::Kustomize { helm_charts },
            });
        }
    }
    for dir in &walk.charts {
        if let Some(release) = helm_release(tree, scope, dir, &mut plan.findings) {
            plan.units.push(Unit {
                dir: dir.clone(),
                renderer: Renderer::Helm(release),
            });
        }
    }
    plan.units.sort_by(|a, b| a.dir.cmp(&b.dir));
    plan.plain = walk
        .plain
        .into_iter()
        .filter(|p| !listed_files.contains(p))
        .collect();
    plan.findings.sort_by(|a, b| a.location.cmp(&b.location));
    plan
}

fn has_file(entries: &[(String, EntryKind)], name: &str) -> bool {
    entries
        .iter()
        .any(|(n, k)| n == name && *k == EntryKind::File)
}

fn kustomization_name(entries: &[(String, EntryKind)]) -> Option<&'static str> {
    FILE_NAMES.into_iter().find(|n| has_file(entries, n))
}

#[derive(Default)]
struct Walk {
    kustomizations: Vec<String>,
    charts: Vec<String>,
    plain: Vec<String>,
    findings: Vec<Finding>,
}

impl Walk {
    /// `owned`: inside a kustomization directory, whose files are Kustomize's.
    fn dir(&mut self, tree: &dyn Tree, dir: &str, owned: bool) {
        let entries = tree.list(dir);
        let kustomization = kustomization_name(&entries);
        if has_file(&entries, CHART_FILE) {
            if let Some(k) = kustomization {
                self.findings.push(error(
                    RENDER_ERROR,
                    &path_in(dir, CHART_FILE),
                    None,
                    format!(
                        "{} holds both Chart.yaml and {k}, so nodewave cannot tell whether Helm or Kustomize renders it: move the chart into its own directory",
                        display_dir(dir)
                    ),
                ));
            } else {
                // Subcharts and templates are Helm's business.
                self.charts.push(dir.to_owned());
            }
            return;
        }
        if kustomization.is_some() {
            self.kustomizations.push(dir.to_owned());
        }
        let owned = owned || kustomization.is_some();
        for (name, kind) in entries {
            if name.starts_with('.') {
                continue;
            }
            let path = path_in(dir, &name);
            match kind {
                EntryKind::Dir => self.dir(tree, &path, owned),
                EntryKind::File if !owned && is_yaml(&name) => self.plain.push(path),
                EntryKind::File => {}
            }
        }
    }
}

/// What one kustomization directory refers to, once checked.
#[derive(Default)]
struct Analysed {
    dirs: Vec<String>,
    files: Vec<String>,
    helm_charts: bool,
}

struct Graph<'t, 's> {
    tree: &'t dyn Tree,
    scope: &'s Scope<'s>,
    analysed: BTreeMap<String, Analysed>,
    findings: Vec<Finding>,
}

impl Graph<'_, '_> {
    fn kustomization_path(&self, dir: &str) -> String {
        let entries = self.tree.list(dir);
        path_in(dir, kustomization_name(&entries).unwrap_or(FILE_NAMES[0]))
    }

    /// Every directory reachable from `start` through references (`start` itself
    /// only through a cycle); files listed on the way go to `files`.
    fn reach(&mut self, start: &str, files: &mut BTreeSet<String>) -> BTreeSet<String> {
        let mut reach = BTreeSet::new();
        let mut visited = BTreeSet::new();
        let mut queue = VecDeque::from([start.to_owned()]);
        while let Some(dir) = queue.pop_front() {
            if !visited.insert(dir.clone()) {
                continue;
            }
            self.analyse(&dir);
            let Some(a) = self.analysed.get(&dir) else {
                continue;
            };
            files.extend(a.files.iter().cloned());
            for d in &a.dirs {
                reach.insert(d.clone());
                queue.push_back(d.clone());
            }
        }
        reach
    }

    fn analyse(&mut self, dir: &str) {
        if self.analysed.contains_key(dir) {
            return;
        }
        let mut out = Analysed::default();
        let entries = self.tree.list(dir);
        let parsed = kustomization_name(&entries).and_then(|name| {
            let file = path_in(dir, name);
            self.tree.read(&file).map(|text| (file, text))
        });
        // A referenced directory without a kustomization is Kustomize's error to report.
        if let Some((file, text)) = parsed {
            match kustomization::parse(&text) {
                Ok(k) => self.check_references(dir, &file, &text, &k, &mut out),
                Err((line, message)) => self.findings.push(error(
                    RENDER_ERROR,
                    &file,
                    line,
                    format!("invalid kustomization: {message}"),
                )),
            }
        }
        self.analysed.insert(dir.to_owned(), out);
    }

    fn check_references(
        &mut self,
        dir: &str,
        file: &str,
        text: &str,
        k: &Kustomization,
        out: &mut Analysed,
    ) {
        let allow = self.scope.allow_network;
        if k.helm_charts {
            out.helm_charts = true;
            if !allow {
                self.findings.push(error(
                    REMOTE_SOURCE_REFUSED,
                    file,
                    kustomization::line_of(text, "helmCharts"),
                    "helmCharts makes Kustomize run Helm and pull charts from the network, which nodewave does not allow by default: vendor the chart in its own directory with a Chart.yaml and a nodewave.yaml, or allow network access with --render-allow-network".to_owned(),
                ));
            }
        }
        for r in &k.references {
            let line = kustomization::line_of(text, &r.value);
            let remote = |what: &str| {
                error(
                    REMOTE_SOURCE_REFUSED,
                    file,
                    line,
                    format!(
                        "{} entry {:?} is {what}; rendering is hermetic by default: vendor it into the repository and refer to it by a relative path, or allow network access with --render-allow-network",
                        r.field, r.value
                    ),
                )
            };
            if kustomization::is_remote(&r.value) {
                if !allow {
                    self.findings.push(remote("a remote source"));
                }
                continue;
            }
            let Some(resolved) =
                join(dir, &r.value).filter(|p| self.scope.max_up.is_none_or(|max| ups(p) <= max))
            else {
                self.findings.push(error(
                    REMOTE_SOURCE_REFUSED,
                    file,
                    line,
                    format!(
                        "{} entry {:?} points outside the repository; renderers may read only the repository: move what it names into the repository",
                        r.field, r.value
                    ),
                ));
                continue;
            };
            match self.tree.kind(&resolved) {
                Some(EntryKind::Dir) => out.dirs.push(resolved),
                Some(EntryKind::File) => out.files.push(resolved),
                // Kustomize tries such names as git repositories.
                None if kustomization::looks_like_host_path(&r.value) && !allow => {
                    self.findings.push(remote(
                        "not in the repository and would be fetched as a remote source",
                    ));
                }
                // Missing: Kustomize reports it with its own message.
                None => {}
            }
        }
    }
}

fn helm_release(
    tree: &dyn Tree,
    scope: &Scope<'_>,
    dir: &str,
    findings: &mut Vec<Finding>,
) -> Option<HelmRelease> {
    let chart_file = path_in(dir, CHART_FILE);
    let chart_text = tree.read(&chart_file).unwrap_or_default();
    let meta = match chart::parse_chart(&chart_text) {
        Ok(m) => m,
        Err((line, message)) => {
            findings.push(error(
                RENDER_ERROR,
                &chart_file,
                line,
                format!("invalid Chart.yaml: {message}"),
            ));
            return None;
        }
    };
    if meta.name.is_empty() {
        findings.push(error(
            RENDER_ERROR,
            &chart_file,
            Some(1),
            "Chart.yaml has no name: add `name:`".to_owned(),
        ));
        return None;
    }
    let before = findings.len();
    let mut dependencies = meta.dependencies.clone();
    let requirements = path_in(dir, REQUIREMENTS_FILE);
    if let Some(text) = tree.read(&requirements)
        && let Ok(req) = chart::parse_chart(&text)
    {
        dependencies.extend(req.dependencies);
    }
    let charts_dir = path_in(dir, "charts");
    let mut subcharts = Vec::new();
    let mut archives = Vec::new();
    for (name, kind) in tree.list(&charts_dir) {
        match kind {
            EntryKind::Dir => {
                let sub = path_in(&charts_dir, &name);
                let sub_name = tree
                    .read(&path_in(&sub, CHART_FILE))
                    .and_then(|t| chart::parse_chart(&t).ok())
                    .map(|m| m.name)
                    .filter(|n| !n.is_empty())
                    .unwrap_or(name);
                subcharts.push(sub_name);
            }
            EntryKind::File => archives.push(name),
        }
    }
    let mut dependency_update = false;
    for dep in &dependencies {
        if chart::is_vendored(dep, &subcharts, &archives) {
            continue;
        }
        if scope.allow_network {
            dependency_update = true;
            continue;
        }
        let line = kustomization::line_of(&chart_text, &format!("name: {}", dep.name));
        findings.push(error(
            REMOTE_SOURCE_REFUSED,
            &chart_file,
            line,
            format!(
                "dependency {:?}{} is not vendored under {}/: rendering is hermetic by default, so run `helm dependency build` and commit the charts/ directory, or allow network access with --render-allow-network",
                dep.name,
                if dep.repository.is_empty() {
                    String::new()
                } else {
                    format!(" (repository {})", dep.repository)
                },
                display_dir(&charts_dir)
            ),
        ));
    }

    let config_file = path_in(dir, CONFIG_FILE);
    let config = match tree.read(&config_file) {
        None => chart::ChartConfig::default(),
        Some(text) => match chart::parse_config(&text) {
            Ok(c) => c,
            Err((line, message)) => {
                findings.push(error(
                    RENDER_ERROR,
                    &config_file,
                    line,
                    format!("invalid {CONFIG_FILE}: {message}"),
                ));
                return None;
            }
        },
    };
    let mut values_files = Vec::new();
    for v in &config.values_files {
        let resolved = join(dir, v).filter(|p| scope.max_up.is_none_or(|max| ups(p) <= max));
        match resolved {
            Some(p) if tree.kind(&p) == Some(EntryKind::File) => values_files.push(p),
            Some(_) => findings.push(error(
                RENDER_ERROR,
                &config_file,
                None,
                format!("values file {v:?} does not exist (paths are relative to the chart directory {})", display_dir(dir)),
            )),
            None => findings.push(error(
                REMOTE_SOURCE_REFUSED,
                &config_file,
                None,
                format!("values file {v:?} points outside the repository: move it into the repository"),
            )),
        }
    }
    let release_name = if let Some(n) = config.release_name.clone() {
        n
    } else {
        let name = dir
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty() && *n != "..");
        let name = name.unwrap_or(&meta.name).to_owned();
        if !chart::is_dns_label(&name) {
            findings.push(error(
                RENDER_ERROR,
                &config_file,
                None,
                format!(
                    "the chart directory's name {name:?} is not a valid Helm release name: set releaseName in {CONFIG_FILE}"
                ),
            ));
        }
        name
    };
    if findings.len() > before {
        return None;
    }
    Some(HelmRelease {
        chart_name: meta.name,
        release_name,
        namespace: config
            .namespace
            .clone()
            .unwrap_or_else(|| scope.default_namespace.to_owned()),
        values_files,
        values: config.values,
        include_crds: config.include_crds.unwrap_or(true),
        kube_version: config.kube_version,
        dependency_update,
    })
}

#[cfg(test)]
#[path = "discover_tests.rs"]
mod tests;
