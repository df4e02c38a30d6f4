//! `GitSource::files_at` under the commit size limits, on real repositories made
//! with git2: a blob over the per-file limit is refused from its object header
//! (never inflated), and too many files or too many bytes reject the commit.
//! No network; the "remote" is a local path.

// A failed setup step should just fail the test.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use git2::{Oid, Repository, Signature};
use nodewave::manifest::adversarial::daemonset;
use nodewave::manifest::{Limit, Limits};
use nodewave::source::{Credentials, GitRef, GitSource, GitSourceConfig, SourceError};
use tempfile::TempDir;

/// Commits `files` (path, contents) on `main` of a new repository at `dir`,
/// writing blobs and trees directly (fast for thousands of files).
fn repo_with(dir: &Path, files: &[(String, Vec<u8>)]) -> Oid {
    let repo = Repository::init_bare(dir).unwrap();
    let mut by_dir: std::collections::BTreeMap<&str, Vec<(&str, Oid)>> =
        std::collections::BTreeMap::new();
    for (path, contents) in files {
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        by_dir
            .entry(parent)
            .or_default()
            .push((name, repo.blob(contents).unwrap()));
    }
    // One level of directories is all these tests need.
    let mut root = repo.treebuilder(None).unwrap();
    for (parent, entries) in by_dir {
        let mut builder = repo.treebuilder(None).unwrap();
        for (name, oid) in entries {
            builder.insert(name, oid, 0o100_644).unwrap();
        }
        let tree = builder.write().unwrap();
        if parent.is_empty() {
            let t = repo.find_tree(tree).unwrap();
            for entry in &t {
                root.insert(entry.name().unwrap(), entry.id(), entry.filemode())
                    .unwrap();
            }
        } else {
            root.insert(parent, tree, 0o040_000).unwrap();
        }
    }
    let tree = repo.find_tree(root.write().unwrap()).unwrap();
    let sig = Signature::now("Mallory", "m@example.com").unwrap();
    repo.commit(Some("refs/heads/main"), &sig, &sig, "hostile", &tree, &[])
        .unwrap()
}

fn fetched(tmp: &TempDir, files: &[(String, Vec<u8>)], limits: Limits) -> (GitSource, String) {
    let remote = tmp.path().join("remote.git");
    repo_with(&remote, files);
    let mut source = GitSource::open(GitSourceConfig {
        url: remote.display().to_string(),
        reference: GitRef::Branch("main".into()),
        path: String::new(),
        checkout_dir: tmp.path().join("cache"),
        credentials: Credentials::default(),
        limits,
    })
    .unwrap();
    let head = source.fetch().unwrap().head;
    (source, head)
}

fn limit_of(e: &SourceError) -> Limit {
    match e {
        SourceError::LimitExceeded { exceeded, .. } => exceeded.limit,
        other => panic!("expected a limit error, got {other}"),
    }
}

fn ds_files(n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            (
                format!("ds/{i:05}.yaml"),
                daemonset("ns", &format!("d{i}")).into_bytes(),
            )
        })
        .collect()
}

#[test]
fn a_blob_over_the_file_limit_is_refused_from_its_header() {
    let tmp = TempDir::new().unwrap();
    // 8 MiB of one byte compresses to a few KiB in the pack, so only the header's
    // size can tell how large it would be once inflated.
    let mut files = ds_files(2);
    files.push(("huge.yaml".into(), vec![b'a'; 8 << 20]));
    let (source, head) = fetched(&tmp, &files, Limits::default());
    let e = source.files_at(&head).unwrap_err();
    assert_eq!(limit_of(&e), Limit::FileBytes);
    let message = e.to_string();
    assert!(
        message.contains("huge.yaml: the file is 8MiB; the limit is 4MiB")
            && message.contains("--max-file-bytes"),
        "{message}"
    );
    assert_eq!(e.metric_label(), "limit_exceeded");
    assert!(!e.is_transient());
}

#[test]
fn raising_the_file_limit_reads_the_blob() {
    let tmp = TempDir::new().unwrap();
    let files = vec![("big.yaml".to_string(), vec![b'a'; 5 << 20])];
    let limits = Limits {
        max_file_bytes: 6 << 20,
        ..Limits::default()
    };
    let (source, head) = fetched(&tmp, &files, limits);
    let read = source.files_at(&head).unwrap();
    assert_eq!(read[0].contents.len(), 5 << 20);
}

#[test]
fn too_many_files_or_bytes_reject_the_commit() {
    let tmp = TempDir::new().unwrap();
    let files = ds_files(40);
    let size = files[0].1.len();
    let limits = Limits {
        max_files: 30,
        ..Limits::default()
    };
    let (source, head) = fetched(&tmp, &files, limits);
    let e = source.files_at(&head).unwrap_err();
    assert_eq!(limit_of(&e), Limit::Files, "{e}");
    assert!(e.to_string().contains("more than 30 manifest files"), "{e}");

    let tmp = TempDir::new().unwrap();
    let limits = Limits {
        max_total_bytes: 10 * size,
        ..Limits::default()
    };
    let (source, head) = fetched(&tmp, &files, limits);
    assert_eq!(
        limit_of(&source.files_at(&head).unwrap_err()),
        Limit::TotalBytes
    );

    // Within the limits every file is read.
    let tmp = TempDir::new().unwrap();
    let (source, head) = fetched(&tmp, &files, Limits::default());
    assert_eq!(source.files_at(&head).unwrap().len(), 40);
}

#[test]
fn thousands_of_files_stop_at_the_limit() {
    let tmp = TempDir::new().unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..5_001)
        .map(|i| (format!("many/{i:05}.yaml"), b"a: 1\n".to_vec()))
        .collect();
    let (source, head) = fetched(&tmp, &files, Limits::default());
    let e = source.files_at(&head).unwrap_err();
    assert_eq!(limit_of(&e), Limit::Files, "{e}");
    assert!(
        e.to_string()
            .contains("many/05000.yaml: the commit has more than 5000"),
        "{e}"
    );
}
