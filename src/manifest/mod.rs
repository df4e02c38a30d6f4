//! Reading a commit's manifests: YAML parsing, the DaemonSet and RolloutPolicy model,
//! validation and best-practice checks. Pure: files in, desired state or errors out.

#[doc(hidden)]
pub mod adversarial;
mod daemonset;
mod findings;
pub mod limits;
/// Document splitting and the line index; public for the fuzz targets only.
#[doc(hidden)]
pub mod lines;
pub mod policy;
mod policy_rules;
mod ports;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path as FsPath;

use serde_json::Value;

pub use findings::{CHECKS, CheckInfo, Finding, Location, Severity, check_info};
use findings::{
    DUPLICATE_NAME, LIMIT_EXCEEDED, POLICY_TARGET_MISSING, UNSUPPORTED_KIND, YAML_SYNTAX,
};
pub use limits::{FileBudget, Limit, LimitExceeded, Limits};
use lines::{DocumentSource, IndexError, LineIndex, Path};

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
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            allowed_namespaces: Vec::new(),
            default_namespace: "default".to_string(),
            severity_overrides: BTreeMap::new(),
            require_digest: false,
            limits: Limits::default(),
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

    fn namespace_allowed(&self, namespace: &str) -> bool {
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

/// One parsed document with what is needed to point at its lines.
pub(crate) struct Doc<'a> {
    pub file: &'a str,
    pub source: DocumentSource<'a>,
    pub index: LineIndex,
    pub value: Value,
    /// serde-saphyr options carrying this document's budget, for typed re-parses.
    yaml: serde_saphyr::Options,
}

/// A serde-saphyr error as a finding needs it: file line, message without the source
/// snippet, and the limit it breached, if it was a budget breach.
pub(crate) struct YamlError {
    pub line: Option<usize>,
    pub message: String,
    pub limit: Option<Limit>,
}

impl Doc<'_> {
    /// Location of `path`, falling back to its closest ancestor and then to the
    /// document's first line.
    pub fn location(&self, path: &Path) -> Location {
        let line = self.index.line_of(path).unwrap_or(self.source.first_line);
        Location::new(self.file, Some(line))
    }

    /// Deserializes the document's text as `T`, within the same budget as its first
    /// parse; error lines are file lines.
    pub fn deserialize<T: serde::de::DeserializeOwned>(&self) -> Result<T, YamlError> {
        serde_saphyr::from_str_with_options(self.source.text, self.yaml.clone())
            .map_err(|e| yaml_error(&e, &self.source))
    }

    pub fn str_at(&self, dotted: &str) -> Option<&str> {
        Path::parse(dotted)
            .0
            .iter()
            .try_fold(&self.value, |v, seg| match seg {
                lines::Seg::Key(k) => v.get(k),
                lines::Seg::Index(i) => v.get(i),
            })
            .and_then(Value::as_str)
    }

    /// `Kind namespace/name` as far as the document says, for findings.
    /// Names the field on `line` in front of a parser message, which often lacks it.
    pub fn with_field(&self, line: Option<usize>, message: &str) -> String {
        match line.and_then(|l| self.index.path_at(l)) {
            Some(path) => format!("{path}: {message}"),
            None => message.to_string(),
        }
    }

    pub fn object_label(&self, kind: &str, namespace: &str) -> String {
        match self.str_at("metadata.name") {
            Some(name) => format!("{kind} {namespace}/{name}"),
            None => kind.to_string(),
        }
    }
}

/// File line, message (without its source snippet: findings carry the location
/// separately) and breached limit of a serde-saphyr error.
fn yaml_error(e: &serde_saphyr::Error, source: &DocumentSource<'_>) -> YamlError {
    let mut render = serde_saphyr::RenderOptions::new(&serde_saphyr::UserMessageFormatter);
    render.snippets = serde_saphyr::SnippetMode::Off;
    let mut message = e.render_with_options(render);
    if let Some(at) = message.rfind(" at line ") {
        message.truncate(at);
    }
    let line = e
        .location()
        .map(|l| l.line())
        .filter(|l| *l > 0)
        .and_then(|l| usize::try_from(l).ok())
        .map(|l| source.file_line(l));
    YamlError {
        line,
        message,
        limit: breached_limit(e),
    }
}

/// The nodewave limit behind a serde-saphyr budget or alias-replay error.
fn breached_limit(e: &serde_saphyr::Error) -> Option<Limit> {
    use serde_saphyr::Error as E;
    use serde_saphyr::budget::BudgetBreach as B;
    let mut e = e;
    while let E::AliasError { error, .. } | E::WithSnippet { error, .. } = e {
        e = error;
    }
    match e {
        E::Budget { breach, .. } => match breach {
            B::Depth { .. } => Some(Limit::Depth),
            B::Aliases { .. } | B::Anchors { .. } | B::AliasAnchorRatio { .. } => {
                Some(Limit::Aliases)
            }
            B::ScalarBytes { .. } | B::RecordedAnchorBytes { .. } | B::InputBytes { .. } => {
                Some(Limit::ObjectBytes)
            }
            B::Documents { .. } => Some(Limit::Objects),
            _ => Some(Limit::Nodes),
        },
        E::AliasReplayLimitExceeded { .. } | E::AliasReplayCounterOverflow { .. } => {
            Some(Limit::Nodes)
        }
        E::AliasReplayStackDepthExceeded { .. } => Some(Limit::Depth),
        E::AliasExpansionLimitExceeded { .. } => Some(Limit::Aliases),
        _ => None,
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
    let mut daemonsets: Vec<DesiredDaemonSet> = Vec::new();
    let mut policies: Vec<policy_rules::LoadedPolicy> = Vec::new();

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
                let api_version = doc.str_at("apiVersion").unwrap_or_default();
                let kind = doc.str_at("kind").unwrap_or_default();
                match (api_version, kind) {
                    ("apps/v1", "DaemonSet") => {
                        if let Some(ds) = daemonset::check(&doc, &mut report, opts) {
                            daemonsets.push(ds);
                        }
                    }
                    (policy::API_VERSION, policy::KIND) => {
                        if let Some(p) = policy_rules::check(&doc, &mut report, opts) {
                            policies.push(p);
                        }
                    }
                    _ => unsupported_kind(&doc, api_version, kind, &mut report),
                }
            }
        }
    }

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
            warnings,
        })
    } else {
        Err(Rejected { errors, warnings })
    }
}

/// What a commit's documents have used of the per-commit limits.
struct DocBudget {
    objects: usize,
    /// Of `max_total_nodes`.
    nodes_left: usize,
    /// A per-commit limit was hit: nothing more is parsed.
    exhausted: bool,
}

/// Parses one document within the limits; `None` for empty documents and for
/// syntax errors and limit breaches (reported).
fn parse_document<'a>(
    file: &'a str,
    source: DocumentSource<'a>,
    report: &mut Report<'_>,
    limits: &Limits,
    budget: &mut DocBudget,
) -> Option<Doc<'a>> {
    let limit_finding = |line: usize, limit: Limit, actual: usize, report: &mut Report<'_>| {
        report.add(
            LIMIT_EXCEEDED,
            Location::new(file, Some(line)),
            None,
            LimitExceeded::new(limit, limits, actual).to_string(),
        );
    };
    if source.text.len() > limits.max_object_bytes {
        limit_finding(
            source.first_line,
            Limit::ObjectBytes,
            source.text.len(),
            report,
        );
        return None;
    }
    // A document may use what the commit has left of its node budget, at most
    // its own limit; running out of the former is a per-commit breach.
    let max_nodes = limits.max_nodes.min(budget.nodes_left);
    let doc_limit = |limit: Limit| {
        if limit == Limit::Nodes && max_nodes < limits.max_nodes {
            Limit::TotalNodes
        } else {
            limit
        }
    };
    let doc_limits = Limits {
        max_nodes,
        ..*limits
    };
    let index = match LineIndex::build(&source, &doc_limits) {
        Ok(index) => index,
        Err(IndexError::Syntax { line, message }) => {
            report.add(
                YAML_SYNTAX,
                Location::new(file, Some(line.max(source.first_line))),
                None,
                format!(
                    "invalid YAML: {message}; fix the syntax (indentation, quoting, unclosed brackets)"
                ),
            );
            return None;
        }
        Err(IndexError::Limit { line, limit }) => {
            let limit = doc_limit(limit);
            budget.exhausted = limit == Limit::TotalNodes;
            limit_finding(line, limit, 0, report);
            return None;
        }
    };
    // Every document pays for the nodes it made the parsers produce, also when it
    // is rejected: otherwise thousands of alias bombs, each stopped at the
    // per-document limit, would cost that limit thousands of times.
    budget.nodes_left = budget.nodes_left.saturating_sub(index.nodes());
    // Documents with only comments or a bare `---` are no objects.
    index.root_line()?;
    let yaml = limits.yaml_options(max_nodes);
    let value = match serde_saphyr::from_str_with_options::<Value>(source.text, yaml.clone()) {
        Ok(value) => value,
        Err(e) => {
            let e = yaml_error(&e, &source);
            let line = e.line.or(index.root_line());
            if let Some(limit) = e.limit.map(doc_limit) {
                // Stopped at its allowance: it cost all of it.
                let rest = max_nodes.saturating_sub(index.nodes());
                budget.nodes_left = budget.nodes_left.saturating_sub(rest);
                budget.exhausted = limit == Limit::TotalNodes;
                limit_finding(line.unwrap_or(source.first_line), limit, 0, report);
            } else {
                report.add(
                    YAML_SYNTAX,
                    Location::new(file, line),
                    None,
                    format!("invalid YAML: {}", e.message),
                );
            }
            return None;
        }
    };
    // Alias expansion may have produced more nodes than the text holds.
    let expanded = value_nodes(&value).saturating_sub(index.nodes());
    budget.nodes_left = budget.nodes_left.saturating_sub(expanded);
    if value.is_null() {
        return None;
    }
    Some(Doc {
        file,
        source,
        index,
        value,
        yaml,
    })
}

/// Nodes of a parsed document as YAML counts them (every value and every mapping
/// key), without recursion.
fn value_nodes(value: &Value) -> usize {
    let mut count = 0usize;
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        count += 1;
        match v {
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => {
                count += map.len();
                stack.extend(map.values());
            }
            _ => {}
        }
    }
    count
}

fn unsupported_kind(doc: &Doc<'_>, api_version: &str, kind: &str, report: &mut Report<'_>) {
    let supported = "a commit may contain only apps/v1 DaemonSet and nodewave.io/v1alpha1 RolloutPolicy documents";
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

/// Why [`read_dir`] returned no files.
#[derive(Debug)]
pub enum ReadDirError {
    Io(std::io::Error),
    /// The directory is over a size limit; nothing past the limit was read.
    Rejected(Rejected),
}

impl fmt::Display for ReadDirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => e.fmt(f),
            Self::Rejected(r) => r.fmt(f),
        }
    }
}

impl std::error::Error for ReadDirError {}

impl From<std::io::Error> for ReadDirError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<LimitExceeded> for ReadDirError {
    fn from(mut e: LimitExceeded) -> Self {
        // The file goes into the finding's location, not its message.
        let file = e.subject.take().unwrap_or_default();
        Self::Rejected(Rejected {
            errors: vec![Finding {
                check: LIMIT_EXCEEDED,
                severity: Severity::Error,
                location: Location::new(file, None),
                object: None,
                message: e.to_string(),
            }],
            warnings: Vec::new(),
        })
    }
}

/// Every `*.yaml` / `*.yml` file below `dir`, recursively, sorted by path. Paths are
/// relative to `dir` with `/` separators; hidden files and directories (`.git`) and
/// symlinked directories are skipped. File sizes are checked against `limits` before
/// a file is read, so an oversized directory costs no memory.
pub fn read_dir(dir: &FsPath, limits: &Limits) -> Result<Vec<ManifestFile>, ReadDirError> {
    let mut files = Vec::new();
    let mut budget = FileBudget::new(limits);
    walk(dir, "", &mut files, &mut budget, limits)?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

fn walk(
    dir: &FsPath,
    prefix: &str,
    out: &mut Vec<ManifestFile>,
    budget: &mut FileBudget,
    limits: &Limits,
) -> Result<(), ReadDirError> {
    // Sorted, so that which file trips a limit does not depend on the file system.
    let mut entries = std::fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let rel = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        let file_type = entry.file_type()?;
        let path = entry.path();
        if file_type.is_dir() {
            walk(&path, &rel, out, budget, limits)?;
        } else if is_yaml(&path)
            && let Some(contents) = read_limited(&path, &rel, budget, limits)?
        {
            out.push(ManifestFile {
                path: rel,
                contents,
            });
        }
    }
    Ok(())
}

/// Reads a regular file (following a symlink) after admitting its size; `None` for
/// anything else (FIFOs, devices). At most one byte past the limit is ever read, in
/// case the file grows after its size was taken.
fn read_limited(
    path: &FsPath,
    rel: &str,
    budget: &mut FileBudget,
    limits: &Limits,
) -> Result<Option<String>, ReadDirError> {
    use std::io::Read as _;
    let context = |e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("reading {}: {e}", path.display()))
    };
    if !std::fs::metadata(path).map_err(context)?.is_file() {
        return Ok(None);
    }
    let file = std::fs::File::open(path).map_err(context)?;
    let size = file.metadata().map_err(context)?.len();
    budget.admit(rel, usize::try_from(size).unwrap_or(usize::MAX))?;
    let cap = limits.max_file_bytes.saturating_add(1);
    let mut contents = String::new();
    file.take(u64::try_from(cap).unwrap_or(u64::MAX))
        .read_to_string(&mut contents)
        .map_err(context)?;
    if contents.len() > limits.max_file_bytes {
        return Err(LimitExceeded::new(Limit::FileBytes, limits, contents.len())
            .at(rel)
            .into());
    }
    Ok(Some(contents))
}

fn is_yaml(path: &FsPath) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
}

#[cfg(test)]
mod limit_tests;
#[cfg(test)]
mod tests;
