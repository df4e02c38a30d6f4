//! Commits whose validation panicked, remembered across restarts in
//! `<state-dir>/nodewave-poisoned-commits` (one commit id a line). A restarted
//! nodewave finds the same head in its local clone; without this file it would
//! parse it again, panic again, and never get past it. A listed commit is
//! rejected (reason `panic`) without being read.
//!
//! The file is bounded: the newest [`MAX_ENTRIES`] ids are kept, and reading
//! it stops after [`MAX_FILE_BYTES`]. Lines that are not commit ids are
//! ignored, so a damaged file costs at most a re-parse, never a crash. To let
//! nodewave try a listed commit again (after upgrading it), delete the file.

use std::collections::VecDeque;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// The file's name in the state directory.
pub const FILE_NAME: &str = "nodewave-poisoned-commits";
/// Commits remembered; the oldest is forgotten first.
pub const MAX_ENTRIES: usize = 64;
/// More than [`MAX_ENTRIES`] SHA-256 ids with room to spare.
const MAX_FILE_BYTES: u64 = 16 * 1024;

/// The remembered commits and where they are kept.
#[derive(Debug, Default)]
pub struct PoisonedCommits {
    /// `None`: in memory only (tests, or no state directory).
    path: Option<PathBuf>,
    commits: Mutex<VecDeque<String>>,
}

/// A Git object id: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
fn is_commit_id(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The ids of a file's text, newest last, at most [`MAX_ENTRIES`].
fn parse(text: &str) -> VecDeque<String> {
    let mut out: VecDeque<String> = VecDeque::new();
    for id in text.lines().map(str::trim).filter(|l| is_commit_id(l)) {
        push(&mut out, id);
    }
    out
}

/// Adds `id` as the newest entry (moving it if present), dropping the oldest
/// beyond [`MAX_ENTRIES`].
fn push(list: &mut VecDeque<String>, id: &str) {
    list.retain(|c| c != id);
    list.push_back(id.to_string());
    while list.len() > MAX_ENTRIES {
        list.pop_front();
    }
}

fn render(list: &VecDeque<String>) -> String {
    let mut text = String::new();
    for c in list {
        text.push_str(c);
        text.push('\n');
    }
    text
}

impl PoisonedCommits {
    /// Reads `<dir>/nodewave-poisoned-commits`; a missing file is an empty list,
    /// an unreadable one is logged and treated as empty.
    pub fn open(dir: &Path) -> Self {
        let path = dir.join(FILE_NAME);
        let commits = match std::fs::File::open(&path) {
            Ok(f) => {
                let mut text = String::new();
                match f.take(MAX_FILE_BYTES).read_to_string(&mut text) {
                    Ok(_) => parse(&text),
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "cannot read the poisoned-commits file; ignoring it");
                        VecDeque::new()
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => VecDeque::new(),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot open the poisoned-commits file; ignoring it");
                VecDeque::new()
            }
        };
        if !commits.is_empty() {
            tracing::warn!(file = %path.display(), commits = commits.len(), "commits whose validation panicked before are rejected without being read");
        }
        Self {
            path: Some(path),
            commits: Mutex::new(commits),
        }
    }

    /// Where the list is kept, for messages.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn contains(&self, commit: &str) -> bool {
        self.commits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|c| c == commit)
    }

    /// Remembers `commit`, in memory at once and on disk (written to a
    /// temporary file, then renamed, so a crash leaves the old or the new list).
    pub fn record(&self, commit: &str) -> Result<(), String> {
        let text = {
            let mut list = self.commits.lock().unwrap_or_else(PoisonError::into_inner);
            push(&mut list, commit);
            render(&list)
        };
        let Some(path) = &self.path else {
            return Ok(());
        };
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: usize) -> String {
        format!("{n:040x}")
    }

    #[test]
    fn only_commit_ids_are_kept_newest_last_and_bounded() {
        let text = format!(
            "{}\nnot an id\n{}\n  {}  \n{}\n{}\n",
            id(1),
            id(1).to_uppercase(),
            "a".repeat(64),
            id(2),
            id(1)
        );
        let list = parse(&text);
        assert_eq!(
            Vec::from(list),
            vec!["a".repeat(64), id(2), id(1)],
            "uppercase and junk ignored, a repeat moves to the end"
        );
        let many: String = (0..MAX_ENTRIES + 10).map(|n| id(n) + "\n").collect();
        let list = parse(&many);
        assert_eq!(list.len(), MAX_ENTRIES);
        assert_eq!(list.front(), Some(&id(10)));
        assert_eq!(list.back(), Some(&id(MAX_ENTRIES + 9)));
    }

    #[test]
    fn recorded_commits_survive_a_reopen_and_the_file_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let p = PoisonedCommits::open(dir.path());
        assert!(!p.contains(&id(1)));
        p.record(&id(1)).unwrap();
        assert!(p.contains(&id(1)));
        let again = PoisonedCommits::open(dir.path());
        assert!(again.contains(&id(1)) && !again.contains(&id(2)));
        for n in 0..200 {
            again.record(&id(n)).unwrap();
        }
        let file = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert_eq!(file.lines().count(), MAX_ENTRIES);
        let last = PoisonedCommits::open(dir.path());
        assert!(last.contains(&id(199)) && !last.contains(&id(1)));
    }

    #[test]
    fn a_damaged_or_huge_file_is_read_within_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        // 1 MiB of junk then an id: reading stops at the bound, nothing panics.
        let mut text = "x".repeat(1 << 20);
        text.push('\n');
        text.push_str(&id(7));
        std::fs::write(&path, &text).unwrap();
        assert!(!PoisonedCommits::open(dir.path()).contains(&id(7)));
        std::fs::write(&path, [0xff, 0xfe, b'\n']).unwrap();
        assert!(!PoisonedCommits::open(dir.path()).contains(&id(7)));
        // A state directory that is not writable: the commit is still
        // remembered in memory, and the error says which file.
        let p = PoisonedCommits::open(&dir.path().join("missing/dir"));
        let e = p.record(&id(3)).unwrap_err();
        assert!(e.contains(FILE_NAME), "{e}");
        assert!(p.contains(&id(3)));
    }
}
