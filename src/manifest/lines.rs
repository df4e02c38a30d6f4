//! Source positions for findings: splitting a file into YAML documents and mapping
//! JSON-style paths (`spec.template.spec.containers[0].image`) to 1-based lines.
//!
//! serde-saphyr reports a location only for its own errors, so the index is built
//! from the event stream of granit-parser (which serde-saphyr is built on and
//! re-exports), where every scalar and collection carries a start marker.

use std::collections::BTreeMap;
use std::fmt;

use serde_saphyr::granit_parser::{Event, Parser};

/// One step of a path into a document.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A path into a document, displayed like `spec.template.spec.containers[0].image`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Path(pub Vec<Seg>);

impl Path {
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// Builds a path from a dotted form; `[n]` suffixes are sequence indices. Keys that
    /// contain dots cannot be expressed this way; use [`Path::key`] for those.
    pub fn parse(dotted: &str) -> Self {
        let mut segs = Vec::new();
        for part in dotted.split('.').filter(|p| !p.is_empty()) {
            let mut rest = part;
            if let Some(open) = rest.find('[') {
                segs.push(Seg::Key(rest[..open].to_string()));
                rest = &rest[open..];
                while let Some(stripped) = rest.strip_prefix('[') {
                    let Some(close) = stripped.find(']') else {
                        break;
                    };
                    if let Ok(i) = stripped[..close].parse() {
                        segs.push(Seg::Index(i));
                    }
                    rest = &stripped[close + 1..];
                }
            } else {
                segs.push(Seg::Key(rest.to_string()));
            }
        }
        Self(segs)
    }

    #[must_use]
    pub fn key(&self, key: impl Into<String>) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.into()));
        Self(segs)
    }

    #[must_use]
    pub fn index(&self, i: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(i));
        Self(segs)
    }

    /// Appends a dotted relative path (see [`Path::parse`]).
    #[must_use]
    pub fn join(&self, dotted: &str) -> Self {
        let mut segs = self.0.clone();
        segs.extend(Self::parse(dotted).0);
        Self(segs)
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Index(n) => write!(f, "[{n}]")?,
                // Label and annotation keys contain dots and slashes; quoting keeps the
                // path unambiguous.
                Seg::Key(k) if k.contains(['.', '/', ' ', '[', ']']) || k.is_empty() => {
                    write!(f, "[{k:?}]")?;
                }
                Seg::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
            }
        }
        Ok(())
    }
}

/// One YAML document of a file, cut out so that it parses on its own while keeping the
/// file's line numbers.
#[derive(Debug, Clone)]
pub struct DocumentSource {
    /// 1-based line of the document's first line (its `---` marker if it has one).
    pub first_line: usize,
    /// The file text with every line outside this document blanked, so that parser
    /// positions are positions in the file.
    pub text: String,
}

/// Splits a file into documents at column-0 `---` / `...` markers.
///
/// A marker at column 0 always ends a document in YAML 1.2 (such lines are
/// "forbidden" inside scalars), so `---` lines indented inside block scalars are not
/// split on. `%` directive lines stay with the document they precede.
pub fn split_documents(contents: &str) -> Vec<DocumentSource> {
    let contents = contents.strip_prefix('\u{feff}').unwrap_or(contents);
    let lines: Vec<&str> = contents.split_inclusive('\n').collect();
    let mut docs = Vec::new();
    // (first line index, end line index exclusive)
    let mut start = 0usize;
    // Whether the current chunk holds only directives, comments and blank lines; a
    // `---` then opens the same document rather than ending one.
    let mut only_prelude = true;
    let push = |from: usize, to: usize, docs: &mut Vec<DocumentSource>| {
        if from >= to {
            return;
        }
        let mut text = "\n".repeat(from);
        for line in &lines[from..to] {
            text.push_str(line);
        }
        docs.push(DocumentSource {
            first_line: from + 1,
            text,
        });
    };
    for (i, line) in lines.iter().enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        if is_marker(bare, "---") {
            if !only_prelude {
                push(start, i, &mut docs);
                start = i;
            }
            only_prelude = false;
        } else if is_marker(bare, "...") {
            push(start, i + 1, &mut docs);
            start = i + 1;
            only_prelude = true;
        } else if bare.starts_with('%') {
            if !only_prelude {
                push(start, i, &mut docs);
                start = i;
            }
            only_prelude = true;
        } else if !(bare.trim().is_empty() || bare.trim_start().starts_with('#')) {
            only_prelude = false;
        }
    }
    push(start, lines.len(), &mut docs);
    docs
}

fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

/// Where each mapping key and sequence item of one document starts.
#[derive(Debug, Clone, Default)]
pub struct LineIndex {
    root: Option<usize>,
    lines: BTreeMap<Path, usize>,
}

/// A YAML syntax error with the line the parser reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub message: String,
}

enum Frame {
    Map {
        path: Path,
        /// The key whose value comes next; `None` when a key comes next.
        pending: Option<String>,
    },
    Seq {
        path: Path,
        next: usize,
    },
    /// A collection used as a mapping key: its insides have no path.
    ComplexKey {
        depth: usize,
    },
}

impl LineIndex {
    /// Indexes one document. Fails with the parser's message and line on invalid YAML.
    pub fn build(text: &str) -> Result<Self, SyntaxError> {
        let mut index = Self::default();
        let mut frames: Vec<Frame> = Vec::new();
        for next in Parser::new_from_str(text) {
            let (event, span) = next.map_err(|e| SyntaxError {
                line: e.marker().line(),
                message: e.info(),
            })?;
            let line = span.start.line();
            match event {
                Event::Scalar(..) | Event::Alias(_) => {
                    let value = match &event {
                        Event::Scalar(v, ..) => v.to_string(),
                        _ => "*alias".to_string(),
                    };
                    index.node(&mut frames, line, Some(value));
                }
                Event::MappingStart(..) => {
                    if let Some(path) = index.node(&mut frames, line, None) {
                        frames.push(Frame::Map {
                            path,
                            pending: None,
                        });
                    }
                }
                Event::SequenceStart(..) => {
                    if let Some(path) = index.node(&mut frames, line, None) {
                        frames.push(Frame::Seq { path, next: 0 });
                    }
                }
                Event::MappingEnd | Event::SequenceEnd => Self::end(&mut frames),
                _ => {}
            }
        }
        Ok(index)
    }

    /// Records a node. Returns the path of a collection node when it should be tracked
    /// (a new frame must be pushed); complex keys push their own frame.
    fn node(
        &mut self,
        frames: &mut Vec<Frame>,
        line: usize,
        scalar: Option<String>,
    ) -> Option<Path> {
        let is_collection = scalar.is_none();
        let mut complex_key = false;
        let tracked = match frames.last_mut() {
            None => {
                self.root.get_or_insert(line);
                is_collection.then(Path::root)
            }
            Some(Frame::ComplexKey { depth }) => {
                if is_collection {
                    *depth += 1;
                }
                None
            }
            Some(Frame::Map { path, pending }) => match pending.take() {
                None => {
                    if let Some(key) = scalar {
                        self.lines.entry(path.key(key.clone())).or_insert(line);
                        *pending = Some(key);
                        None
                    } else {
                        complex_key = true;
                        None
                    }
                }
                Some(key) => is_collection.then(|| path.key(key)),
            },
            Some(Frame::Seq { path, next }) => {
                let item = path.index(*next);
                *next += 1;
                self.lines.entry(item.clone()).or_insert(line);
                is_collection.then_some(item)
            }
        };
        if complex_key {
            frames.push(Frame::ComplexKey { depth: 1 });
        }
        tracked
    }

    fn end(frames: &mut Vec<Frame>) {
        match frames.last_mut() {
            Some(Frame::ComplexKey { depth }) => {
                *depth -= 1;
                if *depth == 0 {
                    frames.pop();
                    if let Some(Frame::Map { pending, .. }) = frames.last_mut() {
                        *pending = Some("<complex key>".to_string());
                    }
                }
            }
            Some(_) => {
                frames.pop();
            }
            None => {}
        }
    }

    /// Line of the document's root node, if the document has any content.
    pub fn root_line(&self) -> Option<usize> {
        self.root
    }

    /// Line of `path`, or of its closest ancestor present in the document.
    pub fn line_of(&self, path: &Path) -> Option<usize> {
        let mut segs = path.0.as_slice();
        loop {
            if segs.is_empty() {
                return self.root;
            }
            if let Some(line) = self.lines.get(&Path(segs.to_vec())) {
                return Some(*line);
            }
            segs = &segs[..segs.len() - 1];
        }
    }

    /// The deepest path that starts on `line`, to name the field a parser error is about.
    pub fn path_at(&self, line: usize) -> Option<&Path> {
        self.lines
            .iter()
            .filter(|(_, l)| **l == line)
            .map(|(path, _)| path)
            .max_by_key(|path| path.0.len())
    }

    /// Line of `path` only if that exact path exists.
    #[cfg(test)]
    pub fn exact_line(&self, path: &Path) -> Option<usize> {
        self.lines.get(path).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_at_column_zero_markers_only() {
        let text =
            "a: 1\n---\nb: |\n  ---\n  not a marker\n---\n---\n# only a comment\n...\nc: 3\n";
        let docs = split_documents(text);
        let firsts: Vec<usize> = docs.iter().map(|d| d.first_line).collect();
        assert_eq!(firsts, vec![1, 2, 6, 7, 10]);
        assert!(docs[1].text.contains("not a marker"));
        // Line numbers survive the split.
        assert_eq!(docs[4].text.lines().count(), 10);
    }

    #[test]
    fn directives_stay_with_the_following_document() {
        let docs = split_documents("a: 1\n%YAML 1.2\n---\nb: 2\n");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].first_line, 2);
        assert!(LineIndex::build(&docs[1].text).is_ok());
    }

    #[test]
    fn indexes_keys_and_sequence_items() {
        let text = "\n\nspec:\n  containers:\n    - name: a\n      image: x\n    - name: b\n      image: y\n  labels: {app.kubernetes.io/name: z}\n";
        let idx = LineIndex::build(text).unwrap();
        assert_eq!(idx.root_line(), Some(3));
        assert_eq!(
            idx.line_of(&Path::parse("spec.containers[1].image")),
            Some(8)
        );
        assert_eq!(idx.line_of(&Path::parse("spec.containers[0]")), Some(5));
        assert_eq!(
            idx.exact_line(&Path::parse("spec.labels").key("app.kubernetes.io/name")),
            Some(9)
        );
        // Missing leaves fall back to their closest ancestor.
        assert_eq!(
            idx.line_of(&Path::parse("spec.containers[1].resources.limits")),
            Some(7)
        );
        assert_eq!(idx.exact_line(&Path::parse("spec.nothing")), None);
        assert_eq!(
            idx.path_at(7),
            Some(&Path::parse("spec.containers[1].name"))
        );
        assert_eq!(idx.path_at(1), None);
    }

    #[test]
    fn complex_keys_do_not_derail_the_index() {
        let text = "? [a, b]\n: 1\nafter: 2\n";
        let idx = LineIndex::build(text).unwrap();
        assert_eq!(idx.exact_line(&Path::parse("after")), Some(3));
    }

    #[test]
    fn syntax_errors_carry_a_line() {
        let err = LineIndex::build("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(err.line >= 2, "{err:?}");
    }

    #[test]
    fn paths_display_like_kubectl_explain() {
        let p = Path::parse("spec.template.spec.containers[0].imagePullPolcy");
        assert_eq!(
            p.to_string(),
            "spec.template.spec.containers[0].imagePullPolcy"
        );
        let a = Path::parse("metadata.annotations").key("nodewave.io/x");
        assert_eq!(a.to_string(), "metadata.annotations[\"nodewave.io/x\"]");
    }
}
