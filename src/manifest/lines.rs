//! Source positions for findings: splitting a file into YAML documents and mapping
//! JSON-style paths (`spec.template.spec.containers[0].image`) to 1-based lines.
//!
//! serde-saphyr reports a location only for its own errors, so the index is built
//! from the event stream of granit-parser (which serde-saphyr is built on and
//! re-exports), where every scalar and collection carries a start marker.

use std::collections::HashMap;
use std::fmt;

use serde_saphyr::granit_parser::{Event, Parser};

use super::limits::{Limit, Limits};

/// One step of a path into a document.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
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

/// One YAML document of a file: a slice of the file's text, so that splitting costs
/// no copy, with the line it starts on so positions map back to the file.
#[derive(Debug, Clone, Copy)]
pub struct DocumentSource<'a> {
    /// 1-based line of the document's first line (its `---` marker if it has one).
    pub first_line: usize,
    /// The document's lines, markers included.
    pub text: &'a str,
}

impl DocumentSource<'_> {
    /// The file line of a 1-based line of [`Self::text`].
    pub fn file_line(&self, line_in_text: usize) -> usize {
        self.first_line
            .saturating_add(line_in_text.max(1))
            .saturating_sub(1)
    }
}

/// Splits a file into documents at column-0 `---` / `...` markers, in one pass and
/// without copying. Chunks holding nothing but markers, comments and blank lines are
/// no objects and are skipped, so a storm of separators costs no parsing.
///
/// A marker at column 0 always ends a document in YAML 1.2 (such lines are
/// "forbidden" inside scalars), so `---` lines indented inside block scalars are not
/// split on. `%` directive lines stay with the document they precede.
pub fn split_documents(contents: &str) -> Documents<'_> {
    let contents = contents.strip_prefix('\u{feff}').unwrap_or(contents);
    Documents {
        contents,
        pos: 0,
        line: 1,
    }
}

/// Iterator returned by [`split_documents`].
pub struct Documents<'a> {
    contents: &'a str,
    /// Byte offset of the next unread line.
    pos: usize,
    /// 1-based number of that line.
    line: usize,
}

impl<'a> Iterator for Documents<'a> {
    type Item = DocumentSource<'a>;

    fn next(&mut self) -> Option<DocumentSource<'a>> {
        while self.pos < self.contents.len() {
            let (start, start_line) = (self.pos, self.line);
            // Whether the chunk holds only directives, comments and blank lines so far;
            // a `---` then opens the same document rather than ending one.
            let mut only_prelude = true;
            let mut has_content = false;
            let mut end = self.contents.len();
            let mut end_line = self.line;
            for line in yaml_lines(&self.contents[self.pos..]) {
                let bare = line.trim_end_matches(['\n', '\r']);
                let (here, here_line) = (self.pos, self.line);
                let next_pos = self.pos + line.len();
                let mut cut_before = false;
                let mut cut_after = false;
                if let Some(rest) = marker_rest(bare, "---") {
                    cut_before = !only_prelude;
                    if !cut_before {
                        only_prelude = false;
                        has_content |= is_content(rest);
                    }
                } else if marker_rest(bare, "...").is_some() {
                    cut_after = true;
                } else if bare.starts_with('%') {
                    cut_before = !only_prelude;
                    if !cut_before {
                        // A directive without a document is an error the parser reports.
                        has_content = true;
                    }
                } else if is_content(bare) {
                    only_prelude = false;
                    has_content = true;
                }
                if cut_before {
                    end = here;
                    end_line = here_line;
                    break;
                }
                self.pos = next_pos;
                self.line += 1;
                end = self.pos;
                end_line = self.line;
                if cut_after {
                    break;
                }
            }
            self.pos = end;
            self.line = end_line;
            if has_content {
                return Some(DocumentSource {
                    first_line: start_line,
                    text: &self.contents[start..end],
                });
            }
        }
        None
    }
}

/// Lines with their break, as YAML breaks them: at `\n`, `\r\n` and a lone `\r`
/// (so that line numbers agree with the parser's).
fn yaml_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = match rest.find(['\n', '\r']) {
            None => rest.len(),
            Some(i) if rest[i..].starts_with("\r\n") => i + 2,
            Some(i) => i + 1,
        };
        let (line, tail) = rest.split_at(end);
        rest = tail;
        Some(line)
    })
}

/// What follows a column-0 marker (`---`, `...`), if `line` is one.
fn marker_rest<'l>(line: &'l str, marker: &str) -> Option<&'l str> {
    line.strip_prefix(marker)
        .filter(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

/// Whether a line (or what follows a marker) holds more than blanks and a comment.
fn is_content(text: &str) -> bool {
    let t = text.trim();
    !(t.is_empty() || t.starts_with('#'))
}

/// Where each mapping key and sequence item of one document starts.
///
/// Stored as a tree of path segments (one entry per node, each holding only its own
/// key), so memory is linear in the document, not in nodes times depth.
#[derive(Debug, Clone, Default)]
pub struct LineIndex {
    root: Option<usize>,
    /// YAML nodes of the text (aliases count one each, unexpanded).
    node_count: usize,
    /// Node 0 is the root; every other node has a parent and a segment.
    nodes: Vec<IndexNode>,
    children: HashMap<(usize, Seg), usize>,
}

#[derive(Debug, Clone)]
struct IndexNode {
    parent: usize,
    seg: Option<Seg>,
    depth: usize,
    line: usize,
}

/// Why a document could not be indexed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexError {
    /// Invalid YAML, with the file line the parser reported.
    Syntax { line: usize, message: String },
    /// A per-document limit, with the file line where it was crossed.
    Limit { line: usize, limit: Limit },
}

enum Frame {
    Map {
        node: usize,
        /// The key whose value comes next; `None` when a key comes next.
        pending: Option<String>,
    },
    Seq {
        node: usize,
        next: usize,
    },
    /// A collection used as a mapping key: its insides have no path.
    ComplexKey {
        depth: usize,
    },
}

impl LineIndex {
    /// Indexes one document, enforcing the per-document depth, node and alias
    /// limits on the text as written (alias expansion is bounded by the
    /// deserializer). Fails with the parser's message and line on invalid YAML.
    pub fn build(source: &DocumentSource<'_>, limits: &Limits) -> Result<Self, IndexError> {
        let mut index = Self {
            root: None,
            node_count: 0,
            nodes: vec![IndexNode {
                parent: 0,
                seg: None,
                depth: 0,
                line: source.first_line,
            }],
            children: HashMap::new(),
        };
        let mut frames: Vec<Frame> = Vec::new();
        // Open collections; complex keys nest without frames, so frames cannot tell.
        let (mut nodes, mut aliases, mut open) = (0usize, 0usize, 0usize);
        // The parser's own nesting caps sit above ours, so ours is the one that reports.
        let cap = limits.max_depth.saturating_add(1).max(255);
        let options = serde_saphyr::granit_parser::options! {
            flow_nesting_limit: cap,
            block_nesting_limit: cap,
        };
        for next in Parser::new_from_str_with_options(source.text, options) {
            let (event, span) = next.map_err(|e| IndexError::Syntax {
                line: source.file_line(e.marker().line()),
                message: e.info(),
            })?;
            let line = source.file_line(span.start.line());
            let (scalar, opens) = match event {
                Event::Scalar(value, ..) => (Some(value.into_owned()), None),
                Event::Alias(_) => {
                    aliases += 1;
                    if aliases > limits.max_aliases {
                        return Err(IndexError::Limit {
                            line,
                            limit: Limit::Aliases,
                        });
                    }
                    (Some("*alias".to_string()), None)
                }
                Event::MappingStart(..) => (None, Some(true)),
                Event::SequenceStart(..) => (None, Some(false)),
                Event::MappingEnd | Event::SequenceEnd => {
                    open = open.saturating_sub(1);
                    Self::end(&mut frames);
                    continue;
                }
                _ => continue,
            };
            nodes += 1;
            let exceeded = if nodes > limits.max_nodes {
                Some(Limit::Nodes)
            } else if opens.is_some() && open >= limits.max_depth {
                Some(Limit::Depth)
            } else {
                None
            };
            if let Some(limit) = exceeded {
                return Err(IndexError::Limit { line, limit });
            }
            if opens.is_some() {
                open += 1;
            }
            index.node_count = nodes;
            if let Some(node) = index.node(&mut frames, line, scalar) {
                frames.push(match opens {
                    Some(true) => Frame::Map {
                        node,
                        pending: None,
                    },
                    _ => Frame::Seq { node, next: 0 },
                });
            }
        }
        Ok(index)
    }

    /// The child of `parent` at `seg`, created at `line` if new (the first
    /// occurrence of a duplicate key keeps its line).
    fn child(&mut self, parent: usize, seg: Seg, line: usize) -> usize {
        if let Some(&id) = self.children.get(&(parent, seg.clone())) {
            return id;
        }
        let id = self.nodes.len();
        self.nodes.push(IndexNode {
            parent,
            seg: Some(seg.clone()),
            depth: self.nodes[parent].depth + 1,
            line,
        });
        self.children.insert((parent, seg), id);
        id
    }

    /// Records a node. Returns the index node of a collection when it should be
    /// tracked (a new frame must be pushed); complex keys push their own frame.
    fn node(
        &mut self,
        frames: &mut Vec<Frame>,
        line: usize,
        scalar: Option<String>,
    ) -> Option<usize> {
        let is_collection = scalar.is_none();
        let mut complex_key = false;
        let tracked = match frames.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(line);
                    self.nodes[0].line = line;
                }
                is_collection.then_some(0)
            }
            Some(Frame::ComplexKey { depth }) => {
                if is_collection {
                    *depth += 1;
                }
                None
            }
            Some(Frame::Map { node, pending }) => match pending.take() {
                None => {
                    if let Some(key) = scalar {
                        let parent = *node;
                        *pending = Some(key.clone());
                        self.child(parent, Seg::Key(key), line);
                    } else {
                        complex_key = true;
                    }
                    None
                }
                Some(key) => {
                    let parent = *node;
                    is_collection.then(|| self.child(parent, Seg::Key(key), line))
                }
            },
            Some(Frame::Seq { node, next }) => {
                let (parent, i) = (*node, *next);
                *next += 1;
                let item = self.child(parent, Seg::Index(i), line);
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

    /// YAML nodes in the document's text (an alias counts as one).
    pub fn nodes(&self) -> usize {
        self.node_count
    }

    /// The index node at exactly `path`, if present.
    #[cfg(test)]
    fn find(&self, segs: &[Seg]) -> Option<usize> {
        segs.iter().try_fold(0, |node, seg| {
            self.children.get(&(node, seg.clone())).copied()
        })
    }

    /// Line of `path`, or of its closest ancestor present in the document.
    pub fn line_of(&self, path: &Path) -> Option<usize> {
        let mut node = 0;
        for seg in &path.0 {
            match self.children.get(&(node, seg.clone())) {
                Some(&child) => node = child,
                None => break,
            }
        }
        if node == 0 {
            self.root
        } else {
            Some(self.nodes[node].line)
        }
    }

    /// The path from the root to `node`.
    fn path_of(&self, mut node: usize) -> Path {
        let mut segs = Vec::with_capacity(self.nodes[node].depth);
        while let Some(seg) = &self.nodes[node].seg {
            segs.push(seg.clone());
            node = self.nodes[node].parent;
        }
        segs.reverse();
        Path(segs)
    }

    /// The deepest path that starts on `line`, to name the field a parser error is
    /// about (the greatest such path when several are equally deep). One scan of
    /// the index: called once per rejected document at most.
    pub fn path_at(&self, line: usize) -> Option<Path> {
        let deepest = self
            .nodes
            .iter()
            .skip(1)
            .filter(|n| n.line == line)
            .map(|n| n.depth)
            .max()?;
        (1..self.nodes.len())
            .filter(|&i| self.nodes[i].line == line && self.nodes[i].depth == deepest)
            .map(|i| self.path_of(i))
            .max()
    }

    /// Line of `path` only if that exact path exists.
    #[cfg(test)]
    pub fn exact_line(&self, path: &Path) -> Option<usize> {
        self.find(&path.0)
            .filter(|&n| n != 0)
            .map(|n| self.nodes[n].line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(text: &str) -> LineIndex {
        let source = DocumentSource {
            first_line: 1,
            text,
        };
        LineIndex::build(&source, &Limits::default()).unwrap()
    }

    #[test]
    fn splits_documents_at_column_zero_markers_only() {
        let text =
            "a: 1\n---\nb: |\n  ---\n  not a marker\n---\n---\n# only a comment\n...\nc: 3\n";
        let docs: Vec<DocumentSource<'_>> = split_documents(text).collect();
        // The two chunks without content (a bare `---`, a comment) are no documents.
        let firsts: Vec<usize> = docs.iter().map(|d| d.first_line).collect();
        assert_eq!(firsts, vec![1, 2, 10]);
        assert!(docs[1].text.contains("not a marker"));
        assert_eq!(docs[1].text, "---\nb: |\n  ---\n  not a marker\n");
        assert_eq!(docs[2].text, "c: 3\n");
        // Line numbers survive the split.
        let idx = LineIndex::build(&docs[2], &Limits::default()).unwrap();
        assert_eq!(idx.line_of(&Path::parse("c")), Some(10));
    }

    #[test]
    fn content_on_a_marker_line_is_a_document() {
        let docs: Vec<DocumentSource<'_>> =
            split_documents("--- # comment\n--- !!str x\n---\n").collect();
        assert_eq!(docs.len(), 1);
        assert_eq!((docs[0].first_line, docs[0].text), (2, "--- !!str x\n"));
        assert_eq!(split_documents("\u{feff}a: 1").next().unwrap().text, "a: 1");
        assert_eq!(split_documents("").count(), 0);
    }

    #[test]
    fn splitting_is_linear_and_copies_nothing() {
        // Regression: each document used to be rebuilt as "\n" x offset + text,
        // quadratic in the number of separators (112 s and 5.3 GB for 100,000).
        let storm = "a: 1\n---\n".repeat(20_000);
        let docs: Vec<DocumentSource<'_>> = split_documents(&storm).collect();
        assert_eq!(docs.len(), 20_000);
        let total: usize = docs.iter().map(|d| d.text.len()).sum();
        assert!(total <= storm.len(), "{total} > {}", storm.len());
        assert_eq!(docs[19_999].first_line, 39_998);
        assert_eq!(split_documents(&"---\n".repeat(100_000)).count(), 0);
    }

    #[test]
    fn a_lone_carriage_return_breaks_lines_as_in_yaml() {
        let docs: Vec<DocumentSource<'_>> = split_documents("a: 1\r---\rb: 2\r\nc: 3").collect();
        assert_eq!(docs.len(), 2);
        assert_eq!((docs[1].first_line, docs[1].text), (2, "---\rb: 2\r\nc: 3"));
        let idx = LineIndex::build(&docs[1], &Limits::default()).unwrap();
        assert_eq!(idx.line_of(&Path::parse("c")), Some(4));
    }

    #[test]
    fn directives_stay_with_the_following_document() {
        let docs: Vec<DocumentSource<'_>> =
            split_documents("a: 1\n%YAML 1.2\n---\nb: 2\n").collect();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].first_line, 2);
        let idx = LineIndex::build(&docs[1], &Limits::default()).unwrap();
        assert_eq!(idx.line_of(&Path::parse("b")), Some(4));
    }

    #[test]
    fn indexes_keys_and_sequence_items() {
        let text = "\n\nspec:\n  containers:\n    - name: a\n      image: x\n    - name: b\n      image: y\n  labels: {app.kubernetes.io/name: z}\n";
        let idx = index(text);
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
        assert_eq!(idx.path_at(7), Some(Path::parse("spec.containers[1].name")));
        assert_eq!(idx.path_at(1), None);
    }

    #[test]
    fn equally_deep_paths_on_one_line_name_the_greatest() {
        let idx = index("spec: {b: 1, a: 2}\n");
        assert_eq!(idx.path_at(1), Some(Path::parse("spec.b")));
    }

    #[test]
    fn duplicate_keys_keep_the_first_line() {
        let idx = index("a:\n  x: 1\na:\n  y: 2\n");
        assert_eq!(idx.exact_line(&Path::parse("a")), Some(1));
        assert_eq!(idx.exact_line(&Path::parse("a.y")), Some(4));
    }

    #[test]
    fn complex_keys_do_not_derail_the_index() {
        let idx = index("? [a, b]\n: 1\nafter: 2\n");
        assert_eq!(idx.exact_line(&Path::parse("after")), Some(3));
    }

    #[test]
    fn syntax_errors_carry_a_file_line() {
        let source = DocumentSource {
            first_line: 41,
            text: "a: 1\nb: [1, 2\nc: 3\n",
        };
        match LineIndex::build(&source, &Limits::default()) {
            Err(IndexError::Syntax { line, .. }) => assert!(line >= 42, "{line}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn depth_nodes_and_aliases_are_limited_with_the_line() {
        let limits = Limits {
            max_depth: 3,
            max_nodes: 7,
            max_aliases: 1,
            ..Limits::default()
        };
        let build = |text: &str| {
            LineIndex::build(
                &DocumentSource {
                    first_line: 1,
                    text,
                },
                &limits,
            )
        };
        assert!(build("a:\n  b:\n    c: 1\n").is_ok());
        assert_eq!(
            build("a:\n  b:\n    c:\n      d: 1\n").unwrap_err(),
            IndexError::Limit {
                line: 4,
                limit: Limit::Depth
            }
        );
        assert_eq!(
            build("[[[[x]]]]").unwrap_err(),
            IndexError::Limit {
                line: 1,
                limit: Limit::Depth
            }
        );
        assert_eq!(
            build("? [[[[x]]]]\n: 1\n").unwrap_err(),
            IndexError::Limit {
                line: 1,
                limit: Limit::Depth
            }
        );
        assert_eq!(
            build("a: 1\nb: 2\nc: 3\nd: 4\n").unwrap_err(),
            IndexError::Limit {
                line: 4,
                limit: Limit::Nodes
            }
        );
        assert_eq!(
            build("a: &x 1\nb: *x\nc: *x\n").unwrap_err(),
            IndexError::Limit {
                line: 3,
                limit: Limit::Aliases
            }
        );
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
