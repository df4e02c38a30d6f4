//! One YAML document of a commit: parsing it within the limits (line index first,
//! then serde-saphyr with the document's budget), and what the checks need from it
//! (locations, typed re-parses, labels).

use std::rc::Rc;

use serde_json::Value;

use super::findings::{LIMIT_EXCEEDED, YAML_SYNTAX};
use super::lines::{self, DocumentSource, IndexError, LineIndex, Path};
use super::{Limit, LimitExceeded, Limits, Location, Report};

/// One parsed document with what is needed to point at its lines.
pub(crate) struct Doc<'a> {
    pub file: &'a str,
    pub source: DocumentSource<'a>,
    /// Shared by the items of a `kind: List` document.
    pub index: Rc<LineIndex>,
    pub value: Value,
    /// Where `value` sits in the document: the root, or `items[n]` for an item
    /// of a `kind: List`.
    pub prefix: Path,
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

impl<'a> Doc<'a> {
    /// Location of `path`, falling back to its closest ancestor and then to the
    /// document's first line.
    pub fn location(&self, path: &Path) -> Location {
        let mut full = self.prefix.clone();
        full.0.extend(path.0.iter().cloned());
        let line = self.index.line_of(&full).unwrap_or(self.source.first_line);
        Location::new(self.file, Some(line))
    }

    /// Deserializes the document's text as `T`, within the same budget as its first
    /// parse; error lines are file lines. An item of a `kind: List` is read from
    /// its parsed value instead (no line; findings fall back to the item's).
    pub fn deserialize<T: serde::de::DeserializeOwned>(&self) -> Result<T, YamlError> {
        if !self.prefix.0.is_empty() {
            return serde_json::from_value(self.value.clone()).map_err(|e| YamlError {
                line: None,
                message: e.to_string(),
                limit: None,
            });
        }
        serde_saphyr::from_str_with_options(self.source.text, self.yaml.clone())
            .map_err(|e| yaml_error(&e, &self.source))
    }

    /// The items of a `kind: List` document (`v1 List` or any `*List` kind with
    /// `items`, as kubectl flattens them), each as a document of its own that
    /// points at its lines; `None` when this is no list.
    pub fn list_items(&self) -> Option<Vec<Doc<'a>>> {
        let kind = self.str_at("kind")?;
        if kind != "List" && !(kind.ends_with("List") && self.str_at("apiVersion") == Some("v1")) {
            return None;
        }
        let items = self.value.get("items")?.as_array()?;
        Some(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| Doc {
                    file: self.file,
                    source: self.source,
                    index: self.index.clone(),
                    value: item.clone(),
                    prefix: self.prefix.join("items").index(i),
                    yaml: self.yaml.clone(),
                })
                .collect(),
        )
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

/// Line (of the parsed text) and message without its source snippet of a
/// serde-saphyr error, for other parsers of YAML files (the renderers' configs).
pub(crate) fn saphyr_error(e: &serde_saphyr::Error) -> (Option<usize>, String) {
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
        .and_then(|l| usize::try_from(l).ok());
    (line, message)
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

/// What a commit's documents have used of the per-commit limits.
pub(crate) struct DocBudget {
    pub objects: usize,
    /// Of `max_total_nodes`.
    pub nodes_left: usize,
    /// A per-commit limit was hit: nothing more is parsed.
    pub exhausted: bool,
}

/// Parses one document within the limits; `None` for empty documents and for
/// syntax errors and limit breaches (reported).
pub(crate) fn parse_document<'a>(
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
        index: Rc::new(index),
        value,
        prefix: Path::root(),
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
