//! Reading a commit's manifests: YAML parsing, the DaemonSet and RolloutPolicy model,
//! validation and best-practice checks. Pure: files in, desired state or errors out.

#[doc(hidden)]
pub mod adversarial;
mod daemonset;
mod dir;
mod document;
pub(crate) use document::saphyr_error;
mod findings;
pub mod limits;
/// Document splitting and the line index; public for the fuzz targets only.
#[doc(hidden)]
pub mod lines;
pub mod objects;
pub mod policy;
mod policy_rules;
mod ports;
pub mod prometheus_url;
pub mod repo_config;

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

pub use dir::{ReadDirError, read_dir};
pub(crate) use document::Doc;
use document::{DocBudget, parse_document};
pub use findings::{CHECKS, CheckInfo, Finding, Location, Severity, check_info};
use findings::{DUPLICATE_NAME, LIMIT_EXCEEDED, POLICY_TARGET_MISSING, UNSUPPORTED_KIND};
pub use findings::{REMOTE_SOURCE_REFUSED, RENDER_ERROR};
pub use limits::{FileBudget, Limit, LimitExceeded, Limits};
use lines::Path;
pub use objects::{ApplyOrder, DEFAULT_ALLOWED_KINDS, DesiredObject, ObjectRef};
pub use repo_config::{REPO_CONFIG_FILE, RepoConfig};

/// One file of a commit, path relative to the repository root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    pub path: String,
    pub contents: String,
}

/// Namespace and name of an object.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// How a commit is validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Namespaces objects may live in; empty allows any.
    pub allowed_namespaces: Vec<String>,
    /// Namespace of documents that name none.
    pub default_namespace: String,
    /// Check id to severity; only best-practice checks can be changed.
    pub severity_overrides: BTreeMap<String, Severity>,
    /// Turns `image-digest` on (as an error) unless an override says otherwise.
    pub require_digest: bool,
    /// Size limits on the commit, its files and its documents.
    pub limits: Limits,
    /// `--allow-prometheus-url`: base URLs a RolloutPolicy's Prometheus checks
    /// may query (see [`prometheus_url`]); empty allows none.
    pub allowed_prometheus_urls: Vec<String>,
    /// Kinds of companion objects nodewave may manage (`Kind`, `Kind.group`,
    /// `*.group`); empty means [`DEFAULT_ALLOWED_KINDS`].
    pub allowed_kinds: Vec<String>,
    /// (object as findings name it, check id): findings of best-practice checks
    /// that do not apply to that object (`.nodewave.yaml` `exemptions`).
    pub exemptions: Vec<(String, String)>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            allowed_namespaces: Vec::new(),
            default_namespace: "default".to_string(),
            severity_overrides: BTreeMap::new(),
            require_digest: false,
            limits: Limits::default(),
            allowed_prometheus_urls: Vec::new(),
            allowed_kinds: Vec::new(),
            exemptions: Vec::new(),
        }
    }
}

impl LoadOptions {
    /// The severity `check` has under these options.
    pub fn severity(&self, check: &str) -> Severity {
        let Some(info) = check_info(check) else {
            return Severity::Error;
        };
        if !info.overridable {
            return Severity::Error;
        }
        if let Some(severity) = self.severity_overrides.get(check) {
            return *severity;
        }
        if check == findings::IMAGE_DIGEST && self.require_digest {
            return Severity::Error;
        }
        info.default_severity
    }

    pub(crate) fn namespace_allowed(&self, namespace: &str) -> bool {
        self.allowed_namespaces.is_empty() || self.allowed_namespaces.iter().any(|n| n == namespace)
    }
}

/// A DaemonSet as the commit defines it.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredDaemonSet {
    pub key: ObjectKey,
    /// The document exactly as written (nodewave applies it with server-side apply),
    /// with `metadata.namespace` set to the effective namespace.
    pub manifest: Value,
    pub location: Location,
}

/// Everything a valid commit asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DesiredState {
    pub daemonsets: BTreeMap<ObjectKey, DesiredDaemonSet>,
    /// Keyed by the DaemonSet the policy targets.
    pub policies: BTreeMap<ObjectKey, policy::RolloutPolicy>,
    /// Companion objects (everything else), applied before the DaemonSets.
    pub objects: BTreeMap<ObjectRef, DesiredObject>,
    pub warnings: Vec<Finding>,
}

/// Why a commit was rejected: at least one error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub errors: Vec<Finding>,
    pub warnings: Vec<Finding>,
}

impl Rejected {
    /// Check id of the first error; bounded, so usable as a metric label.
    pub fn reason(&self) -> &'static str {
        self.errors
            .first()
            .map_or(INVALID_OBJECT_FALLBACK, |f| f.check)
    }
}

const INVALID_OBJECT_FALLBACK: &str = findings::INVALID_OBJECT;

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "commit rejected: {n} error{}",
            if n == 1 { "" } else { "s" }
        )?;
        for finding in self.errors.iter().chain(&self.warnings) {
            write!(f, "\n{finding}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Rejected {}

/// Collects findings, dropping those whose check is off.
pub(crate) struct Report<'o> {
    opts: &'o LoadOptions,
    findings: Vec<Finding>,
}

impl<'o> Report<'o> {
    fn new(opts: &'o LoadOptions) -> Self {
        Self {
            opts,
            findings: Vec::new(),
        }
    }

    pub(crate) fn add(
        &mut self,
        check: &'static str,
        location: Location,
        object: Option<&str>,
        message: impl Into<String>,
    ) {
        let severity = self.opts.severity(check);
        if severity == Severity::Off {
            return;
        }
        let exempt = check_info(check).is_some_and(|i| i.overridable)
            && object.is_some_and(|o| {
                self.opts
                    .exemptions
                    .iter()
                    .any(|(eo, ec)| eo == o && ec == check)
            });
        if exempt {
            return;
        }
        self.findings.push(Finding {
            check,
            severity,
            location,
            object: object.map(str::to_string),
            message: message.into(),
        });
    }

    pub(crate) fn enabled(&self, check: &str) -> bool {
        self.opts.severity(check) != Severity::Off
    }
}

/// Validates a commit's files and builds the desired state. Any finding of severity
/// `Error` rejects the whole commit; the result does not depend on the order of `files`.
///
/// Work and memory are bounded by `opts.limits`: a commit over a per-commit limit
/// is rejected with one finding and not parsed further.
pub fn load(files: &[ManifestFile], opts: &LoadOptions) -> Result<DesiredState, Rejected> {
    let mut sorted: Vec<&ManifestFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));

    let mut report = Report::new(opts);
    let mut sort = Sorted {
        opts,
        daemonsets: Vec::new(),
        policies: Vec::new(),
        others: Vec::new(),
        defined: objects::DefinedKinds::new(),
    };

    let limits = &opts.limits;
    let mut file_budget = FileBudget::new(limits);
    let oversized = sorted.iter().find_map(|f| {
        file_budget.admit("", f.contents.len()).err().map(|e| {
            (
                Location::new(&f.path, None),
                LimitExceeded { subject: None, ..e },
            )
        })
    });
    let mut budget = DocBudget {
        objects: 0,
        nodes_left: limits.max_total_nodes,
        exhausted: false,
    };
    if let Some((location, exceeded)) = oversized {
        report.add(LIMIT_EXCEEDED, location, None, exceeded.to_string());
    } else {
        'files: for file in sorted {
            for source in lines::split_documents(&file.contents) {
                budget.objects += 1;
                if budget.objects > limits.max_objects {
                    let exceeded = LimitExceeded::new(Limit::Objects, limits, budget.objects);
                    report.add(
                        LIMIT_EXCEEDED,
                        Location::new(&file.path, Some(source.first_line)),
                        None,
                        exceeded.to_string(),
                    );
                    break 'files;
                }
                let doc = parse_document(&file.path, source, &mut report, limits, &mut budget);
                if budget.exhausted {
                    break 'files;
                }
                let Some(doc) = doc else {
                    continue;
                };
                match doc.list_items() {
                    Some(items) => {
                        for item in items {
                            if item.list_items().is_some() {
                                report.add(
                                    UNSUPPORTED_KIND,
                                    item.location(&Path::parse("kind")),
                                    None,
                                    "a List inside a List is not flattened: move its items up",
                                );
                            } else {
                                sort.add(item, &mut report);
                            }
                        }
                    }
                    None => sort.add(doc, &mut report),
                }
            }
        }
    }
    let Sorted {
        daemonsets,
        policies,
        others,
        defined,
        ..
    } = sort;
    let mut objects = Vec::new();
    for (doc, api_version, kind) in &others {
        if let Some(o) = objects::check(doc, api_version, kind, &defined, &mut report, opts) {
            objects.push(o);
        }
    }
    let objects = index_objects(objects, &mut report);

    let daemonsets = index_daemonsets(daemonsets, &mut report);
    let policies = attach_policies(policies, &daemonsets, &mut report);

    let mut findings = report.findings;
    findings.sort_by(|a, b| a.location.cmp(&b.location));
    let (errors, warnings): (Vec<Finding>, Vec<Finding>) = findings
        .into_iter()
        .partition(|f| f.severity == Severity::Error);
    if errors.is_empty() {
        Ok(DesiredState {
            daemonsets,
            policies,
            objects,
            warnings,
        })
    } else {
        Err(Rejected { errors, warnings })
    }
}

/// Documents sorted by what they are, as the commit is read.
struct Sorted<'a, 'o> {
    opts: &'o LoadOptions,
    daemonsets: Vec<DesiredDaemonSet>,
    policies: Vec<policy_rules::LoadedPolicy>,
    /// Companion documents, checked once every CRD of the commit is known.
    others: Vec<(Doc<'a>, String, String)>,
    defined: objects::DefinedKinds,
}

impl<'a> Sorted<'a, '_> {
    fn add(&mut self, doc: Doc<'a>, report: &mut Report<'_>) {
        let api_version = doc.str_at("apiVersion").unwrap_or_default().to_string();
        let kind = doc.str_at("kind").unwrap_or_default().to_string();
        match (api_version.as_str(), kind.as_str()) {
            ("apps/v1", "DaemonSet") => {
                if let Some(ds) = daemonset::check(&doc, report, self.opts) {
                    self.daemonsets.push(ds);
                }
            }
            (policy::API_VERSION, policy::KIND) => {
                if let Some(p) = policy_rules::check(&doc, report, self.opts) {
                    self.policies.push(p);
                }
            }
            (a, k)
                if !doc.value.is_object()
                    || a.is_empty()
                    || k.is_empty()
                    || ((k == "DaemonSet" || k == policy::KIND)
                        && objects::legacy_replacement(a, k).is_none()) =>
            {
                unsupported_kind(&doc, a, k, report);
            }
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
                if let Some((defines, d)) = objects::defined_kind(&doc.value) {
                    self.defined.insert(defines, d);
                }
                self.others.push((doc, api_version, kind));
            }
            _ => self.others.push((doc, api_version, kind)),
        }
    }
}

fn index_objects(
    all: Vec<DesiredObject>,
    report: &mut Report<'_>,
) -> BTreeMap<ObjectRef, DesiredObject> {
    let mut by_ref: BTreeMap<ObjectRef, Vec<DesiredObject>> = BTreeMap::new();
    for o in all {
        by_ref.entry(o.reference.clone()).or_default().push(o);
    }
    let mut out = BTreeMap::new();
    for (reference, mut group) in by_ref {
        if group.len() > 1 {
            let places: Vec<Location> = group.iter().map(|o| o.location.clone()).collect();
            report_duplicates(
                &reference.to_string(),
                &places,
                "keep one definition and delete the others",
                report,
            );
        }
        out.insert(reference, group.swap_remove(0));
    }
    out
}

/// [`load`] with the repository's `.nodewave.yaml` (when there is one) applied
/// to `opts` first; an invalid config rejects the commit like any other error.
pub fn load_with_config(
    files: &[ManifestFile],
    config: Option<&ManifestFile>,
    opts: &LoadOptions,
) -> Result<DesiredState, Rejected> {
    let opts = match config.map(repo_config::parse) {
        None => opts.clone(),
        Some(Ok(c)) => c.apply(opts),
        Some(Err(finding)) => {
            return Err(Rejected {
                errors: vec![finding],
                warnings: Vec::new(),
            });
        }
    };
    load(files, &opts)
}

/// `dir/.nodewave.yaml`, when it exists (for `nodewave validate` and `diff` on a
/// checkout; the server reads it from the commit).
pub fn read_repo_config(dir: &std::path::Path) -> std::io::Result<Option<ManifestFile>> {
    let path = dir.join(REPO_CONFIG_FILE);
    match std::fs::read_to_string(&path) {
        Ok(contents) => Ok(Some(ManifestFile {
            path: REPO_CONFIG_FILE.to_string(),
            contents,
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn unsupported_kind(doc: &Doc<'_>, api_version: &str, kind: &str, report: &mut Report<'_>) {
    let supported = "every document needs an apiVersion and a kind";
    let (path, message) = if !doc.value.is_object() {
        (
            Path::root(),
            format!("the document is not a mapping: {supported}"),
        )
    } else if api_version.is_empty() || kind.is_empty() {
        let missing = match (api_version.is_empty(), kind.is_empty()) {
            (true, true) => "apiVersion and kind",
            (true, false) => "apiVersion",
            _ => "kind",
        };
        (
            Path::root(),
            format!("the document has no {missing}: {supported}; add them"),
        )
    } else if kind == "DaemonSet" {
        (
            Path::parse("apiVersion"),
            format!(
                "DaemonSet with apiVersion {api_version} is not supported: use apiVersion: apps/v1"
            ),
        )
    } else if kind == policy::KIND {
        (
            Path::parse("apiVersion"),
            format!(
                "RolloutPolicy with apiVersion {api_version} is not supported: use apiVersion: {}",
                policy::API_VERSION
            ),
        )
    } else {
        (
            Path::parse("kind"),
            format!(
                "{api_version} {kind} is not supported: {supported}; manage other objects with another tool or move them out of the watched path"
            ),
        )
    };
    let label = match (
        kind,
        doc.str_at("metadata.namespace"),
        doc.str_at("metadata.name"),
    ) {
        ("", ..) => None,
        (kind, Some(namespace), _) => Some(doc.object_label(kind, namespace)),
        (kind, None, Some(name)) => Some(format!("{kind} {name}")),
        (kind, None, None) => Some(kind.to_string()),
    };
    report.add(
        UNSUPPORTED_KIND,
        doc.location(&path),
        label.as_deref(),
        message,
    );
}

fn index_daemonsets(
    all: Vec<DesiredDaemonSet>,
    report: &mut Report<'_>,
) -> BTreeMap<ObjectKey, DesiredDaemonSet> {
    let mut by_key: BTreeMap<ObjectKey, Vec<DesiredDaemonSet>> = BTreeMap::new();
    for ds in all {
        by_key.entry(ds.key.clone()).or_default().push(ds);
    }
    let mut out = BTreeMap::new();
    for (key, mut group) in by_key {
        if group.len() > 1 {
            let label = format!("DaemonSet {key}");
            let places: Vec<Location> = group.iter().map(|d| d.location.clone()).collect();
            report_duplicates(
                &label,
                &places,
                "keep one definition and delete the others",
                report,
            );
        }
        out.insert(key, group.swap_remove(0));
    }
    out
}

/// How many other places a duplicate finding lists: with thousands of copies,
/// listing all of them in each finding would be quadratic.
const MAX_LISTED: usize = 5;

/// `items` joined with ", ", at most [`MAX_LISTED`] of them and then "and N more".
fn list_some<I: IntoIterator<Item = String>>(items: I, total: usize) -> String {
    let mut listed: Vec<String> = items.into_iter().take(MAX_LISTED).collect();
    if total > listed.len() {
        listed.push(format!("and {} more", total - listed.len()));
    }
    listed.join(", ")
}

fn report_duplicates(label: &str, places: &[Location], fix: &str, report: &mut Report<'_>) {
    for (i, here) in places.iter().enumerate() {
        let others = places
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, l)| l.to_string());
        report.add(
            DUPLICATE_NAME,
            here.clone(),
            Some(label),
            format!(
                "defined {} times in this commit, also at {}: {fix}",
                places.len(),
                list_some(others, places.len() - 1)
            ),
        );
    }
}

fn attach_policies(
    all: Vec<policy_rules::LoadedPolicy>,
    daemonsets: &BTreeMap<ObjectKey, DesiredDaemonSet>,
    report: &mut Report<'_>,
) -> BTreeMap<ObjectKey, policy::RolloutPolicy> {
    let mut by_key: BTreeMap<ObjectKey, Vec<policy_rules::LoadedPolicy>> = BTreeMap::new();
    for p in all {
        by_key.entry(p.key.clone()).or_default().push(p);
    }
    let mut by_target: BTreeMap<ObjectKey, Vec<policy_rules::LoadedPolicy>> = BTreeMap::new();
    for (key, mut group) in by_key {
        if group.len() > 1 {
            let places: Vec<Location> = group.iter().map(|p| p.location.clone()).collect();
            report_duplicates(
                &format!("RolloutPolicy {key}"),
                &places,
                "keep one policy and delete the others",
                report,
            );
        }
        let p = group.swap_remove(0);
        if daemonsets.contains_key(&p.target) {
            by_target.entry(p.target.clone()).or_default().push(p);
        } else {
            report.add(
                POLICY_TARGET_MISSING,
                p.target_location.clone(),
                Some(&format!("RolloutPolicy {key}")),
                format!(
                    "spec.target.name {:?} names no DaemonSet of this commit in namespace {}: fix the name or add the DaemonSet (a policy only applies to a DaemonSet in its own namespace)",
                    p.target.name, p.target.namespace
                ),
            );
        }
    }
    let mut out = BTreeMap::new();
    for (target, mut group) in by_target {
        if group.len() > 1 {
            let names = list_some(group.iter().map(|p| p.key.name.clone()), group.len());
            for p in &group {
                report.add(
                    DUPLICATE_NAME,
                    p.target_location.clone(),
                    Some(&format!("RolloutPolicy {}", p.key)),
                    format!(
                        "DaemonSet {target} is targeted by {} RolloutPolicies ({}): a DaemonSet takes at most one policy; merge them into one",
                        group.len(),
                        names
                    ),
                );
            }
        }
        out.insert(target, group.swap_remove(0).policy);
    }
    out
}

#[cfg(test)]
mod limit_tests;
#[cfg(test)]
mod object_tests;
#[cfg(test)]
mod tests;
