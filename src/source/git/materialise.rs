//! Writing a commit's whole tree into a directory, for renderers that read the
//! repository from disk (Kustomize bases elsewhere in the repository, vendored
//! Helm charts). Bounded by a file-count and a total-bytes limit; symlinks are
//! resolved inside the commit's tree only (a link whose target leaves the tree,
//! or names a directory, is not written), so a renderer never reads a file of
//! the host through the checkout. Files are written without executable bits.
//!
//! Also the cheap check that tells whether a commit needs rendering at all
//! (names only, no blob is read), so plain-YAML repositories never pay for a
//! checkout.

use std::fs;
use std::path::Path;

use git2::{ObjectType, Oid, Tree};

use super::{GitSource, SourceError, git_error, short};

/// Bounds for [`GitSource::write_tree`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeLimits {
    pub max_files: usize,
    pub max_bytes: u64,
}

/// What [`GitSource::write_tree`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeStats {
    pub files: usize,
    pub bytes: u64,
    /// Symlinks not written (target outside the tree, a directory, or missing).
    pub skipped_links: usize,
}

const MODE_TREE: i32 = 0o040_000;
const MODE_LINK: i32 = 0o120_000;
const MODE_SUBMODULE: i32 = 0o160_000;
/// Links to links are followed this many times, then given up (a cycle).
const MAX_LINK_HOPS: usize = 8;

impl GitSource {
    /// Whether a file named one of `names` exists under the configured sub-path at
    /// `commit` (hidden directories skipped, as [`GitSource::files_at`] does). Reads
    /// tree objects only. A sub-path that is a file has none.
    pub fn has_file_named(&self, commit: &str, names: &[&str]) -> Result<bool, SourceError> {
        let commit_obj = self.find_commit(commit)?;
        let sha = commit_obj.id().to_string();
        let root = commit_obj
            .tree()
            .map_err(|e| git_error(format!("cannot read the tree of {}", short(&sha)), &e))?;
        let tree = if self.subpath.is_empty() {
            root
        } else {
            let entry =
                root.get_path(Path::new(&self.subpath))
                    .map_err(|_| SourceError::PathNotFound {
                        path: format!("{}/", self.subpath),
                        commit: short(&sha).to_owned(),
                    })?;
            if entry.kind() != Some(ObjectType::Tree) {
                return Ok(false);
            }
            self.repo
                .find_tree(entry.id())
                .map_err(|e| git_error("cannot read tree", &e))?
        };
        let mut found = false;
        tree.walk(git2::TreeWalkMode::PreOrder, |_, entry| {
            let Ok(name) = entry.name() else {
                return git2::TreeWalkResult::Skip;
            };
            if name.starts_with('.') {
                return git2::TreeWalkResult::Skip;
            }
            if entry.kind() == Some(ObjectType::Blob) && names.contains(&name) {
                found = true;
                return git2::TreeWalkResult::Abort;
            }
            git2::TreeWalkResult::Ok
        })
        .or_else(|e| {
            if found {
                Ok(())
            } else {
                Err(git_error("cannot walk the tree", &e))
            }
        })?;
        Ok(found)
    }

    /// Whether the regular file `name` lies directly in the tracked directory at
    /// `commit` (next to the tracked file when the sub-path is a YAML file; at the
    /// root without a sub-path). Reads tree objects only; hidden names are
    /// allowed, unlike [`GitSource::files_at`]: this is how marker files such as
    /// `.nodewave-allow-prune` are found. A missing sub-path has none.
    pub fn has_tracked_file(&self, commit: &str, name: &str) -> Result<bool, SourceError> {
        Ok(self.tracked_file(commit, name)?.is_some())
    }

    /// The contents of the regular file `name` in the tracked directory at
    /// `commit` (found as [`GitSource::has_tracked_file`] finds it; hidden names
    /// allowed), read within the per-file size limit: how the repository's
    /// `.nodewave.yaml` is read. `None` when there is no such file.
    pub fn read_tracked_file(
        &self,
        commit: &str,
        name: &str,
    ) -> Result<Option<crate::manifest::ManifestFile>, SourceError> {
        let Some((path, id, sha)) = self.tracked_file(commit, name)? else {
            return Ok(None);
        };
        self.read_blob(&path, id, &sha).map(Some)
    }

    fn tracked_file(
        &self,
        commit: &str,
        name: &str,
    ) -> Result<Option<(String, git2::Oid, String)>, SourceError> {
        let commit_obj = self.find_commit(commit)?;
        let sha = commit_obj.id().to_string();
        let root = commit_obj
            .tree()
            .map_err(|e| git_error(format!("cannot read the tree of {}", short(&sha)), &e))?;
        let dir = if self.subpath.is_empty() {
            String::new()
        } else {
            match root.get_path(Path::new(&self.subpath)).map(|e| e.kind()) {
                Ok(Some(ObjectType::Tree)) => self.subpath.clone(),
                Ok(Some(ObjectType::Blob)) => self
                    .subpath
                    .rsplit_once('/')
                    .map_or(String::new(), |(dir, _)| dir.to_owned()),
                _ => return Ok(None),
            }
        };
        let path = if dir.is_empty() {
            name.to_owned()
        } else {
            format!("{dir}/{name}")
        };
        Ok(root
            .get_path(Path::new(&path))
            .ok()
            .filter(|e| e.kind() == Some(ObjectType::Blob) && e.filemode() != MODE_LINK)
            .map(|e| (path, e.id(), sha)))
    }

    /// Writes the whole tree of `commit` (the repository, not only the sub-path)
    /// below `dest`, which must exist and should be empty. Fails with
    /// [`SourceError::InvalidFile`] when the commit is over `limits`, and with
    /// [`SourceError::Cache`] when `dest` cannot be written; what was written so
    /// far stays for the caller to remove with `dest`.
    pub fn write_tree(
        &self,
        commit: &str,
        dest: &Path,
        limits: &TreeLimits,
    ) -> Result<TreeStats, SourceError> {
        let commit_obj = self.find_commit(commit)?;
        let sha = commit_obj.id().to_string();
        let root = commit_obj
            .tree()
            .map_err(|e| git_error(format!("cannot read the tree of {}", short(&sha)), &e))?;
        let mut writer = Writer {
            source: self,
            root: &root,
            sha: &sha,
            limits,
            stats: TreeStats::default(),
        };
        writer.write_dir(&root, dest, "")?;
        Ok(writer.stats)
    }
}

struct Writer<'a> {
    source: &'a GitSource,
    root: &'a Tree<'a>,
    sha: &'a str,
    limits: &'a TreeLimits,
    stats: TreeStats,
}

impl Writer<'_> {
    fn io_error(dest: &Path, e: &std::io::Error) -> SourceError {
        SourceError::Cache {
            dir: dest.display().to_string(),
            cause: e.to_string(),
        }
    }

    fn write_dir(&mut self, tree: &Tree<'_>, dest: &Path, rel: &str) -> Result<(), SourceError> {
        for entry in tree {
            // Git forbids these names, but a crafted tree object could hold them.
            let Ok(name) = entry.name() else { continue };
            if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
                continue;
            }
            let path = dest.join(name);
            let rel_path = if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            };
            match entry.filemode() {
                MODE_TREE => {
                    let sub = self
                        .source
                        .repo
                        .find_tree(entry.id())
                        .map_err(|e| git_error("cannot read tree", &e))?;
                    fs::create_dir(&path).map_err(|e| Self::io_error(&path, &e))?;
                    self.write_dir(&sub, &path, &rel_path)?;
                }
                MODE_SUBMODULE => {}
                MODE_LINK => match self.link_target_blob(entry.id(), rel) {
                    Some(id) => self.write_blob(id, &path, &rel_path)?,
                    None => self.stats.skipped_links += 1,
                },
                _ => self.write_blob(entry.id(), &path, &rel_path)?,
            }
        }
        Ok(())
    }

    fn write_blob(&mut self, id: Oid, path: &Path, rel_path: &str) -> Result<(), SourceError> {
        let too_big = |reason: String| SourceError::InvalidFile {
            path: rel_path.to_owned(),
            commit: short(self.sha).to_owned(),
            reason,
        };
        let blob = self
            .source
            .repo
            .find_blob(id)
            .map_err(|e| too_big(format!("cannot read: {}", e.message())))?;
        let size = blob.size() as u64;
        if self.stats.files + 1 > self.limits.max_files {
            return Err(too_big(format!(
                "the repository has more than {} files, the limit for checking it out to render Kustomize or Helm sources; move large content out of the repository",
                self.limits.max_files
            )));
        }
        if self.stats.bytes + size > self.limits.max_bytes {
            return Err(too_big(format!(
                "the repository holds more than {} bytes, the limit for checking it out to render Kustomize or Helm sources; move large content out of the repository",
                self.limits.max_bytes
            )));
        }
        fs::write(path, blob.content()).map_err(|e| Self::io_error(path, &e))?;
        self.stats.files += 1;
        self.stats.bytes += size;
        Ok(())
    }

    /// The blob a symlink in directory `dir` (relative to the root) finally points
    /// to, if every hop stays inside the tree and ends on a regular file.
    fn link_target_blob(&self, link: Oid, dir: &str) -> Option<Oid> {
        let mut link = link;
        let mut dir = dir.to_owned();
        for _ in 0..MAX_LINK_HOPS {
            let blob = self.source.repo.find_blob(link).ok()?;
            let target = std::str::from_utf8(blob.content()).ok()?;
            let resolved = resolve_inside(&dir, target)?;
            let entry = self.root.get_path(Path::new(&resolved)).ok()?;
            match entry.filemode() {
                MODE_LINK => {
                    link = entry.id();
                    dir = resolved
                        .rsplit_once('/')
                        .map_or_else(String::new, |(d, _)| d.to_owned());
                }
                MODE_TREE | MODE_SUBMODULE => return None,
                _ => return Some(entry.id()),
            }
        }
        None
    }
}

/// `target` (a symlink's contents) seen from directory `dir`, as a path relative
/// to the root, or `None` when it is absolute or climbs out of the root.
fn resolve_inside(dir: &str, target: &str) -> Option<String> {
    if target.starts_with('/') || target.is_empty() {
        return None;
    }
    let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::resolve_inside;

    #[test]
    fn symlink_targets_stay_inside_the_tree() {
        assert_eq!(
            resolve_inside("a/b", "c.yaml").as_deref(),
            Some("a/b/c.yaml")
        );
        assert_eq!(
            resolve_inside("a/b", "../c.yaml").as_deref(),
            Some("a/c.yaml")
        );
        assert_eq!(resolve_inside("", "./x/y").as_deref(), Some("x/y"));
        assert_eq!(resolve_inside("a", "../../etc/passwd"), None);
        assert_eq!(resolve_inside("a", "/etc/passwd"), None);
        assert_eq!(resolve_inside("a", ".."), None);
        assert_eq!(resolve_inside("", ""), None);
    }
}
