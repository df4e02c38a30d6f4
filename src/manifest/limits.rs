//! Size limits on what one commit may contain, so that no commit can make nodewave
//! spend unbounded memory or time: per file (bytes), per commit (files, bytes,
//! objects, nodes) and per object (bytes, nesting depth, nodes, aliases).
//!
//! Readers (`manifest::read_dir`, the Git source) check file sizes with a
//! [`FileBudget`] *before* reading a file's content; `manifest::load` checks
//! everything again on the text it is given, and hands the per-object limits to
//! serde-saphyr's budget (which also bounds alias expansion). Every rejection names
//! the limit, the flag and the config-file field that raise it.

use std::fmt;
use std::str::FromStr;

/// Limits on one commit. `Default` gives the documented defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Bytes of one manifest file.
    pub max_file_bytes: usize,
    /// `*.yaml`/`*.yml` files in one commit (under the watched path).
    pub max_files: usize,
    /// Bytes of all manifest files of one commit together.
    pub max_total_bytes: usize,
    /// Non-empty YAML documents (objects) in one commit.
    pub max_objects: usize,
    /// YAML nodes of all documents of one commit together, after alias expansion.
    pub max_total_nodes: usize,
    /// Bytes of one YAML document.
    pub max_object_bytes: usize,
    /// Nesting depth of mappings and sequences in one document.
    pub max_depth: usize,
    /// YAML nodes (scalars, mappings, sequences) of one document, after alias expansion.
    pub max_nodes: usize,
    /// Alias references (`*name`) in one document.
    pub max_aliases: usize,
}

/// The deepest nesting any configuration may allow: parsing, comparing and dropping
/// a document recurse once per level, and must fit a 2 MiB thread stack.
pub const MAX_DEPTH_CAP: usize = 250;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_file_bytes: 4 * MIB,
            max_files: 5_000,
            max_total_bytes: 16 * MIB,
            max_objects: 5_000,
            max_total_nodes: 1_000_000,
            max_object_bytes: MIB,
            max_depth: 64,
            max_nodes: 100_000,
            max_aliases: 1_000,
        }
    }
}

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const GIB: usize = 1024 * MIB;

/// One of the [`Limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Limit {
    FileBytes,
    Files,
    TotalBytes,
    Objects,
    TotalNodes,
    ObjectBytes,
    Depth,
    Nodes,
    Aliases,
}

impl Limit {
    pub const ALL: [Limit; 9] = [
        Limit::FileBytes,
        Limit::Files,
        Limit::TotalBytes,
        Limit::Objects,
        Limit::TotalNodes,
        Limit::ObjectBytes,
        Limit::Depth,
        Limit::Nodes,
        Limit::Aliases,
    ];

    /// Name of the config-file field; the flag is `--` and this.
    pub fn key(self) -> &'static str {
        match self {
            Limit::FileBytes => "max-file-bytes",
            Limit::Files => "max-files",
            Limit::TotalBytes => "max-total-bytes",
            Limit::Objects => "max-objects",
            Limit::TotalNodes => "max-total-nodes",
            Limit::ObjectBytes => "max-object-bytes",
            Limit::Depth => "max-depth",
            Limit::Nodes => "max-nodes",
            Limit::Aliases => "max-aliases",
        }
    }

    /// What is counted, for messages and docs.
    pub fn what(self) -> &'static str {
        match self {
            Limit::FileBytes => "bytes per manifest file",
            Limit::Files => "manifest files per commit",
            Limit::TotalBytes => "bytes of all manifest files of a commit",
            Limit::Objects => "YAML documents per commit",
            Limit::TotalNodes => "YAML nodes per commit, after alias expansion",
            Limit::ObjectBytes => "bytes per YAML document",
            Limit::Depth => "nesting depth of a YAML document",
            Limit::Nodes => "YAML nodes per document, after alias expansion",
            Limit::Aliases => "YAML aliases (*name) per document",
        }
    }

    /// Whether values are byte sizes (accepting `KiB`/`MiB`/`GiB`).
    pub fn is_bytes(self) -> bool {
        matches!(
            self,
            Limit::FileBytes | Limit::TotalBytes | Limit::ObjectBytes
        )
    }

    pub fn get(self, limits: &Limits) -> usize {
        match self {
            Limit::FileBytes => limits.max_file_bytes,
            Limit::Files => limits.max_files,
            Limit::TotalBytes => limits.max_total_bytes,
            Limit::Objects => limits.max_objects,
            Limit::TotalNodes => limits.max_total_nodes,
            Limit::ObjectBytes => limits.max_object_bytes,
            Limit::Depth => limits.max_depth,
            Limit::Nodes => limits.max_nodes,
            Limit::Aliases => limits.max_aliases,
        }
    }

    pub fn set(self, limits: &mut Limits, value: usize) {
        let field = match self {
            Limit::FileBytes => &mut limits.max_file_bytes,
            Limit::Files => &mut limits.max_files,
            Limit::TotalBytes => &mut limits.max_total_bytes,
            Limit::Objects => &mut limits.max_objects,
            Limit::TotalNodes => &mut limits.max_total_nodes,
            Limit::ObjectBytes => &mut limits.max_object_bytes,
            Limit::Depth => &mut limits.max_depth,
            Limit::Nodes => &mut limits.max_nodes,
            Limit::Aliases => &mut limits.max_aliases,
        };
        *field = value;
    }

    /// What the author of a commit can do instead of raising the limit.
    fn advice(self) -> &'static str {
        match self {
            Limit::FileBytes => "split the file",
            Limit::Files | Limit::TotalBytes | Limit::Objects | Limit::TotalNodes => {
                "move manifests out of the watched path or split the repository"
            }
            Limit::ObjectBytes | Limit::Nodes => "make the document smaller",
            Limit::Depth => "flatten the nesting",
            Limit::Aliases => "write the values out instead of using YAML aliases",
        }
    }

    /// Formats a value of this limit (`4MiB`, `5000`).
    pub fn format(self, value: usize) -> String {
        if self.is_bytes() {
            format_bytes(value)
        } else {
            value.to_string()
        }
    }

    /// Parses a value of this limit: a count, or for byte limits also `512KiB`, `4MiB`.
    pub fn parse(self, s: &str) -> Result<usize, String> {
        let value = if self.is_bytes() {
            parse_bytes(s)?
        } else {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("{s:?} is not a count: expected a whole number"))?
        };
        self.check(value)?;
        Ok(value)
    }

    /// Whether `value` is allowed for this limit at all.
    pub fn check(self, value: usize) -> Result<(), String> {
        if value == 0 {
            return Err(format!("{} must be at least 1", self.key()));
        }
        if self == Limit::Depth && value > MAX_DEPTH_CAP {
            return Err(format!(
                "{} can be at most {MAX_DEPTH_CAP}: deeper documents could exhaust the stack",
                self.key()
            ));
        }
        Ok(())
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

impl FromStr for Limit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Limit::ALL
            .into_iter()
            .find(|l| l.key() == s)
            .ok_or_else(|| format!("unknown limit {s:?}"))
    }
}

impl Limits {
    /// Checks every value (see [`Limit::check`]).
    pub fn check(&self) -> Result<(), String> {
        Limit::ALL
            .into_iter()
            .try_for_each(|l| l.check(l.get(self)))
    }

    /// serde-saphyr options enforcing the per-document limits; `max_nodes` is also
    /// capped by what is left of the commit's node budget.
    pub(crate) fn yaml_options(&self, max_nodes: usize) -> serde_saphyr::Options {
        let mut budget = serde_saphyr::Budget::default();
        budget.max_depth = self.max_depth;
        budget.max_nodes = max_nodes;
        // Every node is at most two events (start and end); documents markers add a few.
        budget.max_events = max_nodes.saturating_mul(2).saturating_add(16);
        budget.max_aliases = self.max_aliases;
        budget.max_anchors = self.max_aliases.max(max_nodes);
        budget.max_total_scalar_bytes = self.max_object_bytes;
        budget.max_documents = 1;
        budget.max_recorded_anchor_events = max_nodes;
        budget.max_recorded_anchor_bytes = self.max_object_bytes;
        // The node and event caps bound alias expansion; the ratio heuristic would
        // reject harmless documents with an opaque message.
        budget.enforce_alias_anchor_ratio = false;
        let mut options = serde_saphyr::Options::default();
        options.budget = Some(budget);
        options.alias_limits.max_total_replayed_events = max_nodes;
        options.alias_limits.max_replay_stack_depth = self.max_depth;
        options
    }
}

/// A limit that a commit exceeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitExceeded {
    pub limit: Limit,
    /// The configured maximum.
    pub max: usize,
    /// What was found (for counts: the first value over the maximum).
    pub actual: usize,
    /// Where: a file, a document, or the commit (`None`).
    pub subject: Option<String>,
}

impl LimitExceeded {
    pub fn new(limit: Limit, limits: &Limits, actual: usize) -> Self {
        Self {
            limit,
            max: limit.get(limits),
            actual,
            subject: None,
        }
    }

    #[must_use]
    pub fn at(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }
}

impl fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = self.limit;
        if let Some(subject) = &self.subject {
            write!(f, "{subject}: ")?;
        }
        let max = l.format(self.max);
        match l {
            Limit::FileBytes => write!(f, "the file is {}", l.format(self.actual)),
            Limit::TotalBytes => write!(
                f,
                "the commit's manifest files reach {}",
                l.format(self.actual)
            ),
            Limit::ObjectBytes => write!(f, "the document is {}", l.format(self.actual)),
            Limit::Files => write!(f, "the commit has more than {max} manifest files"),
            Limit::Objects => write!(f, "the commit has more than {max} YAML documents"),
            Limit::TotalNodes => write!(
                f,
                "the commit's documents have more than {max} YAML nodes (after alias expansion)"
            ),
            Limit::Depth => write!(f, "the document nests deeper than {max} levels"),
            Limit::Nodes => write!(
                f,
                "the document has more than {max} YAML nodes (after alias expansion)"
            ),
            Limit::Aliases => write!(f, "the document has more than {max} aliases"),
        }?;
        write!(
            f,
            "; the limit is {max}: {}, or raise it with --{} (`{}` in the config file)",
            l.advice(),
            l.key(),
            l.key(),
        )
    }
}

impl std::error::Error for LimitExceeded {}

/// Counts the files of a commit as they are read; call [`FileBudget::admit`] with a
/// file's size *before* reading its content.
#[derive(Debug, Clone)]
pub struct FileBudget {
    limits: Limits,
    files: usize,
    bytes: usize,
}

impl FileBudget {
    pub fn new(limits: &Limits) -> Self {
        Self {
            limits: *limits,
            files: 0,
            bytes: 0,
        }
    }

    /// Admits one more file of `size` bytes at `path`, or says which limit it breaks.
    pub fn admit(&mut self, path: &str, size: usize) -> Result<(), LimitExceeded> {
        self.files += 1;
        if self.files > self.limits.max_files {
            return Err(LimitExceeded::new(Limit::Files, &self.limits, self.files).at(path));
        }
        if size > self.limits.max_file_bytes {
            return Err(LimitExceeded::new(Limit::FileBytes, &self.limits, size).at(path));
        }
        self.bytes = self.bytes.saturating_add(size);
        if self.bytes > self.limits.max_total_bytes {
            return Err(LimitExceeded::new(Limit::TotalBytes, &self.limits, self.bytes).at(path));
        }
        Ok(())
    }
}

/// Parses a byte size: `4194304`, `512KiB`, `4MiB`, `1GiB` (also `Ki`, `Mi`, `Gi`,
/// and a `B` suffix on plain numbers). Overflow is an error.
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits_end == 0 {
        return Err(format!(
            "invalid size {s:?}: expected a number of bytes such as 1048576, 512KiB or 4MiB"
        ));
    }
    let n: usize = t[..digits_end]
        .parse()
        .map_err(|_| format!("size {s:?} is too large"))?;
    let unit = match t[digits_end..].trim() {
        "" | "B" => 1,
        "Ki" | "KiB" => KIB,
        "Mi" | "MiB" => MIB,
        "Gi" | "GiB" => GIB,
        other => {
            return Err(format!(
                "invalid size unit {other:?} in {s:?}: use B, KiB, MiB or GiB"
            ));
        }
    };
    n.checked_mul(unit)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// Formats a byte size the way [`parse_bytes`] reads it, exact: `4MiB`, `1536KiB`,
/// `1000 bytes`.
pub fn format_bytes(n: usize) -> String {
    for (unit, name) in [(GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
        if n >= unit && n.is_multiple_of(unit) {
            return format!("{}{name}", n / unit);
        }
    }
    format!("{n} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_with_binary_units_and_refuse_overflow() {
        assert_eq!(parse_bytes("1048576").unwrap(), MIB);
        assert_eq!(parse_bytes("512KiB").unwrap(), 512 * KIB);
        assert_eq!(parse_bytes(" 4Mi ").unwrap(), 4 * MIB);
        assert_eq!(parse_bytes("1GiB").unwrap(), GIB);
        assert_eq!(parse_bytes("10B").unwrap(), 10);
        assert!(parse_bytes("99999999999999999999").is_err());
        assert!(parse_bytes("18446744073709551615GiB").is_err());
        assert!(parse_bytes("17179869184GiB").is_err());
        assert!(parse_bytes("4MB").is_err());
        assert!(parse_bytes("MiB").is_err());
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("-1").is_err());
        for n in [0, 1, 1000, KIB, 1536 * KIB, 4 * MIB, 3 * GIB, usize::MAX] {
            assert_eq!(parse_bytes(&format_bytes(n).replace(" bytes", "")), Ok(n));
        }
    }

    #[test]
    fn limits_parse_per_kind_and_refuse_zero_and_deep_stacks() {
        assert_eq!(Limit::Files.parse("10"), Ok(10));
        assert!(Limit::Files.parse("10KiB").is_err());
        assert_eq!(Limit::FileBytes.parse("10KiB"), Ok(10 * KIB));
        assert!(Limit::Nodes.parse("0").is_err());
        assert_eq!(Limit::Depth.parse("250"), Ok(250));
        assert!(
            Limit::Depth
                .parse("251")
                .unwrap_err()
                .contains("at most 250")
        );
        assert!(Limits::default().check().is_ok());
        for l in Limit::ALL {
            assert_eq!(l.key().parse::<Limit>(), Ok(l));
            let mut limits = Limits::default();
            l.set(&mut limits, 7);
            assert_eq!(l.get(&limits), 7);
        }
    }

    #[test]
    fn file_budget_counts_files_and_bytes_before_reading() {
        let limits = Limits {
            max_files: 3,
            max_file_bytes: 100,
            max_total_bytes: 250,
            ..Limits::default()
        };
        let mut b = FileBudget::new(&limits);
        assert!(b.admit("a.yaml", 100).is_ok());
        let e = b.admit("b.yaml", 101).unwrap_err();
        assert_eq!((e.limit, e.actual), (Limit::FileBytes, 101));
        assert!(b.admit("c.yaml", 100).is_ok());
        let e = b.admit("d.yaml", 1).unwrap_err();
        assert_eq!(e.limit, Limit::Files);
        let mut b = FileBudget::new(&limits);
        b.admit("a.yaml", 100).unwrap();
        b.admit("b.yaml", 100).unwrap();
        let e = b.admit("c.yaml", 51).unwrap_err();
        assert_eq!((e.limit, e.actual), (Limit::TotalBytes, 251));
        assert_eq!(
            e.to_string(),
            "c.yaml: the commit's manifest files reach 251 bytes; the limit is 250 bytes: move manifests out of the watched path or split the repository, or raise it with --max-total-bytes (`max-total-bytes` in the config file)"
        );
    }
}
