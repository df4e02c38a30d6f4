//! The [`Tree`] of a directory on disk (a checkout written for rendering, or the
//! directory `nodewave validate` is given), and reading plain manifests from it
//! with the same rules as the Git source.

use std::fs;
use std::path::{Path, PathBuf};

use super::RenderError;
use super::discover::{EntryKind, Tree};
use crate::manifest::ManifestFile;

/// kustomization / Chart.yaml / nodewave.yaml files larger than this are not read
/// (discovery treats them as unreadable; the renderer then reports them).
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

pub struct DiskTree {
    base: PathBuf,
}

impl DiskTree {
    pub fn new(base: &Path) -> Self {
        Self {
            base: base.to_path_buf(),
        }
    }

    /// `path` (relative to the base, may start with `..`) on disk.
    pub fn abs(&self, path: &str) -> PathBuf {
        if path.is_empty() {
            self.base.clone()
        } else {
            self.base.join(path)
        }
    }

    /// Forms of the base path a renderer may print, for removing from messages.
    pub fn display_roots(&self) -> Vec<String> {
        let mut roots = vec![self.base.display().to_string()];
        if let Ok(c) = self.base.canonicalize() {
            let c = c.display().to_string();
            if !roots.contains(&c) {
                roots.push(c);
            }
        }
        // Longest first, so a prefix never replaces part of a longer form.
        roots.sort_by_key(|r| std::cmp::Reverse(r.len()));
        roots
    }

    /// A plain manifest, with the Git source's limits (size, UTF-8).
    pub fn read_manifest(&self, path: &str) -> Result<ManifestFile, RenderError> {
        let abs = self.abs(path);
        let err = |reason: String| RenderError::Io(format!("{path}: {reason}"));
        let meta = fs::metadata(&abs).map_err(|e| err(format!("cannot read: {e}")))?;
        let max_file_bytes = crate::manifest::Limits::default().max_file_bytes;
        if meta.len() > max_file_bytes as u64 {
            return Err(err(format!(
                "{} bytes is over the {max_file_bytes} byte limit for a manifest",
                meta.len()
            )));
        }
        let bytes = fs::read(&abs).map_err(|e| err(format!("cannot read: {e}")))?;
        let contents = String::from_utf8(bytes).map_err(|_| err("not valid UTF-8".to_owned()))?;
        Ok(ManifestFile {
            path: path.to_owned(),
            contents,
        })
    }
}

impl Tree for DiskTree {
    fn list(&self, dir: &str) -> Vec<(String, EntryKind)> {
        let Ok(entries) = fs::read_dir(self.abs(dir)) else {
            return Vec::new();
        };
        let mut out: Vec<(String, EntryKind)> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let file_type = entry.file_type().ok()?;
                let kind = if file_type.is_dir() {
                    EntryKind::Dir
                } else if file_type.is_file() {
                    EntryKind::File
                } else if file_type.is_symlink() {
                    // As manifest::read_dir: linked files count, linked directories do not.
                    fs::metadata(entry.path())
                        .ok()
                        .filter(fs::Metadata::is_file)
                        .map(|_| EntryKind::File)?
                } else {
                    return None;
                };
                Some((name, kind))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn kind(&self, path: &str) -> Option<EntryKind> {
        let meta = fs::metadata(self.abs(path)).ok()?;
        if meta.is_dir() {
            Some(EntryKind::Dir)
        } else if meta.is_file() {
            Some(EntryKind::File)
        } else {
            None
        }
    }

    fn read(&self, path: &str) -> Option<String> {
        let abs = self.abs(path);
        if fs::metadata(&abs).ok()?.len() > MAX_CONFIG_BYTES {
            return None;
        }
        fs::read_to_string(abs).ok()
    }
}

/// How deep `dir` lies below the root of the Git work tree holding it (`Some(0)`
/// at the root), or `None` outside any work tree.
pub fn depth_below_work_tree(dir: &Path) -> Option<usize> {
    dir.ancestors().position(|a| a.join(".git").exists())
}
