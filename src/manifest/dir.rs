//! Reading a directory's manifests (for `nodewave validate` and `diff --dir`), with
//! every file's size admitted against the limits before it is read.

use std::fmt;
use std::path::Path as FsPath;

use super::findings::LIMIT_EXCEEDED;
use super::{
    FileBudget, Finding, Limit, LimitExceeded, Limits, Location, ManifestFile, Rejected, Severity,
};

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
    let rel = |name: &str| {
        if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        }
    };
    // Only what is walked or read is kept, and at most one file more than the
    // limit, so a directory of millions of files costs no memory.
    let mut entries: Vec<(String, bool)> = Vec::new();
    let mut yaml_files = 0usize;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let is_dir = entry.file_type()?.is_dir();
        if !is_dir && !is_yaml(FsPath::new(&name)) {
            continue;
        }
        if !is_dir {
            yaml_files += 1;
            if yaml_files > limits.max_files {
                // The directory, not a file: which file came first is up to the
                // file system.
                let here = if prefix.is_empty() { "." } else { prefix };
                return Err(LimitExceeded::new(Limit::Files, limits, yaml_files)
                    .at(here)
                    .into());
            }
        }
        entries.push((name, is_dir));
    }
    // Sorted, so that which file trips a limit does not depend on the file system.
    entries.sort();
    for (name, is_dir) in entries {
        let path = dir.join(&name);
        let rel = rel(&name);
        if is_dir {
            walk(&path, &rel, out, budget, limits)?;
        } else if let Some(contents) = read_limited(&path, &rel, budget, limits)? {
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
