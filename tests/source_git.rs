//! The Git source against real repositories created with git2 in temp dirs
//! (local `file://` and path remotes, plus a loopback HTTP stub for auth
//! failures). No external network.

// Test helpers outside #[test] functions are not covered by clippy.toml's
// allow-unwrap-in-tests; a failed setup step should just fail the test.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use git2::{Oid, Repository, Signature};
use nodewave::source::git::HEAD_REF;
use nodewave::source::{
    Credentials, GitRef, GitSource, GitSourceConfig, SourceError, SourceWorker,
};
use tempfile::TempDir;

/// A "remote" repository with a work tree, committed to with git2.
struct Remote {
    path: PathBuf,
    repo: Repository,
}

impl Remote {
    fn new(path: &Path) -> Self {
        let repo = Repository::init(path).unwrap();
        repo.set_head("refs/heads/main").unwrap();
        Self {
            path: path.to_path_buf(),
            repo,
        }
    }

    /// Writes (`Some`) or deletes (`None`) files and commits on `main`.
    fn commit(&self, files: &[(&str, Option<&str>)], message: &str) -> Oid {
        for (path, contents) in files {
            let full = self.path.join(path);
            match contents {
                Some(c) => {
                    fs::create_dir_all(full.parent().unwrap()).unwrap();
                    fs::write(&full, c).unwrap();
                }
                None => fs::remove_file(&full).unwrap(),
            }
        }
        let mut index = self.repo.index().unwrap();
        index
            .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
            .unwrap();
        index.update_all(["*"], None).unwrap();
        index.write().unwrap();
        let tree = self.repo.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = Signature::now("Ada Lovelace", "ada@example.com").unwrap();
        let parent = self
            .repo
            .find_reference("refs/heads/main")
            .ok()
            .and_then(|r| r.peel_to_commit().ok());
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        self.repo
            .commit(
                Some("refs/heads/main"),
                &sig,
                &sig,
                message,
                &tree,
                &parents,
            )
            .unwrap()
    }

    /// A commit with no parent (unrelated history), not on any branch.
    fn orphan(&self, files: &[(&str, &str)]) -> Oid {
        let mut builder = self.repo.treebuilder(None).unwrap();
        for (name, contents) in files {
            let blob = self.repo.blob(contents.as_bytes()).unwrap();
            builder.insert(name, blob, 0o100_644).unwrap();
        }
        let tree = self.repo.find_tree(builder.write().unwrap()).unwrap();
        let sig = Signature::now("Mallory", "m@example.com").unwrap();
        self.repo
            .commit(None, &sig, &sig, "rewritten", &tree, &[])
            .unwrap()
    }

    /// `git push --force origin <oid>:main`.
    fn force_main(&self, oid: Oid) {
        self.repo
            .reference("refs/heads/main", oid, true, "force push")
            .unwrap();
    }

    fn file_url(&self) -> String {
        format!("file://{}", self.path.display())
    }
}

fn config(url: String, reference: GitRef, path: &str, checkout: &Path) -> GitSourceConfig {
    GitSourceConfig {
        url,
        reference,
        path: path.to_owned(),
        checkout_dir: checkout.to_path_buf(),
        credentials: Credentials::default(),
        limits: nodewave::manifest::Limits::default(),
    }
}

fn main_branch() -> GitRef {
    GitRef::Branch("main".into())
}

const DS: &str = "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: agent\n";

fn standard_remote(tmp: &TempDir) -> (Remote, Oid) {
    let remote = Remote::new(&tmp.path().join("remote"));
    let first = remote.commit(
        &[
            ("deploy/agent.yaml", Some(DS)),
            ("deploy/nested/policy.yml", Some("kind: RolloutPolicy\n")),
            ("deploy/README.md", Some("# not a manifest\n")),
            ("deploy/.hidden.yaml", Some("hidden: true\n")),
            ("deploy/.github/workflows/ci.yml", Some("on: push\n")),
            ("deploy/UPPER.YAML", Some("kind: ConfigMap\n")),
            ("other/unrelated.yaml", Some("kind: Service\n")),
            ("root.yaml", Some("kind: Namespace\n")),
        ],
        "initial",
    );
    (remote, first)
}

fn paths(files: &[nodewave::manifest::ManifestFile]) -> Vec<&str> {
    files.iter().map(|f| f.path.as_str()).collect()
}

#[test]
fn fetch_from_file_url_reads_yaml_under_the_subpath() {
    let tmp = TempDir::new().unwrap();
    let (remote, first) = standard_remote(&tmp);
    let mut source = GitSource::open(config(
        remote.file_url(),
        main_branch(),
        "deploy",
        &tmp.path().join("cache"),
    ))
    .unwrap();
    assert_eq!(source.head(), None);

    let outcome = source.fetch().unwrap();
    assert_eq!(outcome.head, first.to_string());
    assert_eq!(outcome.previous, None);
    assert!(outcome.changed);
    assert!(!outcome.forced);
    assert_eq!(source.head(), Some(first.to_string()));

    let files = source.files_at(&outcome.head).unwrap();
    assert_eq!(
        paths(&files),
        [
            "deploy/UPPER.YAML",
            "deploy/agent.yaml",
            "deploy/nested/policy.yml"
        ]
    );
    assert_eq!(files[1].contents, DS);

    // Abbreviated ids work too.
    assert_eq!(source.files_at(&outcome.head[..10]).unwrap(), files);
}

#[test]
fn fetch_from_plain_path_and_root_subpath() {
    let tmp = TempDir::new().unwrap();
    let (remote, first) = standard_remote(&tmp);
    let mut source = GitSource::open(config(
        remote.path.display().to_string(),
        main_branch(),
        "",
        &tmp.path().join("cache"),
    ))
    .unwrap();
    let outcome = source.fetch().unwrap();
    assert_eq!(outcome.head, first.to_string());
    let files = source.files_at(&outcome.head).unwrap();
    assert_eq!(
        paths(&files),
        [
            "deploy/UPPER.YAML",
            "deploy/agent.yaml",
            "deploy/nested/policy.yml",
            "other/unrelated.yaml",
            "root.yaml",
        ]
    );
}

#[test]
fn subpath_may_be_a_single_yaml_file() {
    let tmp = TempDir::new().unwrap();
    let (remote, _) = standard_remote(&tmp);
    let mut source = GitSource::open(config(
        remote.file_url(),
        main_branch(),
        "./deploy/agent.yaml",
        &tmp.path().join("cache"),
    ))
    .unwrap();
    let head = source.fetch().unwrap().head;
    assert_eq!(
        paths(&source.files_at(&head).unwrap()),
        ["deploy/agent.yaml"]
    );
}

#[test]
fn new_commits_are_seen_and_unchanged_heads_are_not_refetched() {
    let tmp = TempDir::new().unwrap();
    let (remote, first) = standard_remote(&tmp);
    let mut source = GitSource::open(config(
        remote.file_url(),
        main_branch(),
        "deploy",
        &tmp.path().join("cache"),
    ))
    .unwrap();
    source.fetch().unwrap();

    let again = source.fetch().unwrap();
    assert!(!again.changed);
    assert!(!again.forced);
    assert_eq!(again.previous, Some(first.to_string()));
    assert_eq!(again.head, first.to_string());

    let second = remote.commit(
        &[
            ("deploy/agent.yaml", Some("kind: DaemonSet\n# v2\n")),
            ("deploy/nested/policy.yml", None),
        ],
        "Bump agent to v2\n\nLonger description.",
    );
    let outcome = source.fetch().unwrap();
    assert_eq!(outcome.head, second.to_string());
    assert_eq!(outcome.previous, Some(first.to_string()));
    assert!(outcome.changed);
    assert!(!outcome.forced);

    let files = source.files_at(&outcome.head).unwrap();
    assert_eq!(paths(&files), ["deploy/UPPER.YAML", "deploy/agent.yaml"]);
    assert!(files[1].contents.contains("v2"));
    // The old commit is still readable.
    assert_eq!(source.files_at(&first.to_string()).unwrap().len(), 3);

    let info = source.commit_info(&outcome.head).unwrap();
    assert_eq!(info.sha, second.to_string());
    assert_eq!(info.summary, "Bump agent to v2");
    assert_eq!(info.author, "Ada Lovelace");
    assert!(info.time_unix > 1_600_000_000);

    assert!(
        source
            .is_ancestor(&first.to_string(), &second.to_string())
            .unwrap()
    );
    assert!(
        !source
            .is_ancestor(&second.to_string(), &first.to_string())
            .unwrap()
    );
    assert!(
        source
            .is_ancestor(&second.to_string(), &second.to_string())
            .unwrap()
    );
}

#[test]
fn local_clone_is_reused_across_open() {
    let tmp = TempDir::new().unwrap();
    let (remote, first) = standard_remote(&tmp);
    let cache = tmp.path().join("cache");
    let cfg = config(remote.file_url(), main_branch(), "deploy", &cache);
    {
        let mut source = GitSource::open(cfg.clone()).unwrap();
        source.fetch().unwrap();
    }
    // A restart: the head is known before any fetch, from the cache.
    let mut source = GitSource::open(cfg.clone()).unwrap();
    assert_eq!(source.head(), Some(first.to_string()));
    let outcome = source.fetch().unwrap();
    assert!(!outcome.changed);
    assert_eq!(outcome.previous, Some(first.to_string()));
    drop(source);

    // Even with the remote gone, a reopened cache still serves its history:
    // it was not re-cloned.
    let moved = tmp.path().join("remote-moved");
    fs::rename(&remote.path, &moved).unwrap();
    let source = GitSource::open(cfg).unwrap();
    assert_eq!(source.files_at(&first.to_string()).unwrap().len(), 3);
}

#[test]
fn force_push_is_detected_and_old_history_kept() {
    let tmp = TempDir::new().unwrap();
    let (remote, first) = standard_remote(&tmp);
    let second = remote.commit(&[("deploy/agent.yaml", Some("v: 2\n"))], "second");
    let cache = tmp.path().join("cache");
    let mut source = GitSource::open(config(remote.file_url(), main_branch(), "", &cache)).unwrap();
    assert_eq!(source.fetch().unwrap().head, second.to_string());

    // Reset to an older commit (already in the cache: nothing to download).
    remote.force_main(first);
    let outcome = source.fetch().unwrap();
    assert_eq!(outcome.head, first.to_string());
    assert_eq!(outcome.previous, Some(second.to_string()));
    assert!(outcome.changed);
    assert!(outcome.forced);

    // Replace with unrelated history (needs a download).
    let orphan = remote.orphan(&[("agent.yaml", "v: rewritten\n")]);
    remote.force_main(orphan);
    let outcome = source.fetch().unwrap();
    assert_eq!(outcome.head, orphan.to_string());
    assert!(outcome.forced);
    assert_eq!(
        paths(&source.files_at(&outcome.head).unwrap()),
        ["agent.yaml"]
    );

    // Rewritten-away commits stay readable and pinned by refs.
    assert!(source.files_at(&second.to_string()).is_ok());
    let cache_repo = Repository::open_bare(&cache).unwrap();
    assert!(
        cache_repo
            .find_reference(&format!("refs/nodewave/rewritten/{second}"))
            .is_ok()
    );
    assert!(
        cache_repo
            .find_reference(&format!("refs/nodewave/rewritten/{first}"))
            .is_ok()
    );

    // Fast-forward after that is not forced.
    let next = remote.commit(&[("x.yaml", Some("a: 1\n"))], "next");
    let outcome = source.fetch().unwrap();
    assert_eq!(outcome.head, next.to_string());
    assert!(!outcome.forced);
}

#[test]
fn unreachable_remote_keeps_local_history() {
    let tmp = TempDir::new().unwrap();
    let (remote, first) = standard_remote(&tmp);
    let mut source = GitSource::open(config(
        remote.file_url(),
        main_branch(),
        "deploy",
        &tmp.path().join("cache"),
    ))
    .unwrap();
    source.fetch().unwrap();

    let moved = tmp.path().join("remote-moved");
    fs::rename(&remote.path, &moved).unwrap();
    let err = source.fetch().unwrap_err();
    assert_eq!(err.metric_label(), "unreachable", "{err}");
    let message = err.to_string();
    assert!(message.starts_with("cannot reach file://"), "{message}");
    assert!(err.is_transient());
    // The last good head is still there and readable.
    assert_eq!(source.head(), Some(first.to_string()));
    assert_eq!(source.files_at(&first.to_string()).unwrap().len(), 3);

    // The same through a plain-path remote.
    let mut by_path = GitSource::open(config(
        remote.path.display().to_string(),
        main_branch(),
        "deploy",
        &tmp.path().join("cache-path"),
    ))
    .unwrap();
    let err = by_path.fetch().unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot reach {}: no such file or directory",
            remote.path.display()
        )
    );

    fs::rename(&moved, &remote.path).unwrap();
    let outcome = source.fetch().unwrap();
    assert!(!outcome.changed);
    assert_eq!(outcome.head, first.to_string());
    assert!(by_path.fetch().unwrap().changed);
}

#[test]
fn tags_are_tracked_lightweight_and_annotated() {
    let tmp = TempDir::new().unwrap();
    let (remote, first) = standard_remote(&tmp);
    let sig = Signature::now("Rel", "rel@example.com").unwrap();
    let first_obj = remote.repo.find_object(first, None).unwrap();
    remote
        .repo
        .tag("v1.0.0", &first_obj, &sig, "release 1.0.0", false)
        .unwrap();
    remote
        .repo
        .tag_lightweight("light", &first_obj, false)
        .unwrap();
    let second = remote.commit(&[("deploy/agent.yaml", Some("v: 2\n"))], "second");

    let mut annotated = GitSource::open(config(
        remote.file_url(),
        GitRef::Tag("v1.0.0".into()),
        "deploy",
        &tmp.path().join("cache-annotated"),
    ))
    .unwrap();
    let outcome = annotated.fetch().unwrap();
    assert_eq!(outcome.head, first.to_string());
    assert!(!annotated.fetch().unwrap().changed);

    let mut light = GitSource::open(config(
        remote.file_url(),
        GitRef::Tag("light".into()),
        "deploy",
        &tmp.path().join("cache-light"),
    ))
    .unwrap();
    assert_eq!(light.fetch().unwrap().head, first.to_string());

    // Moving the tag (re-tag with --force) is picked up.
    let second_obj = remote.repo.find_object(second, None).unwrap();
    remote
        .repo
        .tag("v1.0.0", &second_obj, &sig, "release 1.0.0 again", true)
        .unwrap();
    let outcome = annotated.fetch().unwrap();
    assert_eq!(outcome.head, second.to_string());
    assert!(outcome.changed);
    assert!(!outcome.forced);
}

#[test]
fn missing_branch_or_tag_is_a_clear_error() {
    let tmp = TempDir::new().unwrap();
    let (remote, _) = standard_remote(&tmp);
    let mut source = GitSource::open(config(
        remote.file_url(),
        GitRef::Branch("release".into()),
        "deploy",
        &tmp.path().join("cache"),
    ))
    .unwrap();
    let err = source.fetch().unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("branch release not found on remote {}", remote.file_url())
    );
    assert_eq!(err.metric_label(), "ref_not_found");

    let mut source = GitSource::open(config(
        remote.file_url(),
        GitRef::Tag("v9".into()),
        "deploy",
        &tmp.path().join("cache2"),
    ))
    .unwrap();
    let err = source.fetch().unwrap_err();
    assert!(
        err.to_string().starts_with("tag v9 not found on remote"),
        "{err}"
    );
}

#[test]
fn missing_path_is_a_clear_error() {
    let tmp = TempDir::new().unwrap();
    let (remote, first) = standard_remote(&tmp);
    let mut source = GitSource::open(config(
        remote.file_url(),
        main_branch(),
        "manifests/prod/",
        &tmp.path().join("cache"),
    ))
    .unwrap();
    source.fetch().unwrap();
    let err = source.files_at(&first.to_string()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "path manifests/prod/ not found at commit {}",
            &first.to_string()[..12]
        )
    );
    assert_eq!(err.metric_label(), "path_not_found");
}

/// The prune guard's marker (`.nodewave-allow-prune`) is found directly in the
/// tracked directory although `files_at` skips hidden files; next to a tracked
/// YAML file; not in a subdirectory, not as a directory or a symlink, and a
/// tracked path that disappeared has none (the commit is rejected for it).
#[test]
fn marker_files_are_found_in_the_tracked_directory_only() {
    let tmp = TempDir::new().unwrap();
    let (remote, first) = standard_remote(&tmp);
    let marked = remote.commit(
        &[
            ("deploy/.nodewave-allow-prune", Some("")),
            ("other/nested/.nodewave-allow-prune", Some("")),
        ],
        "marker",
    );
    let open = |path: &str, cache: &str| {
        let mut s = GitSource::open(config(
            remote.file_url(),
            main_branch(),
            path,
            &tmp.path().join(cache),
        ))
        .unwrap();
        s.fetch().unwrap();
        s
    };
    let marker = ".nodewave-allow-prune";
    let deploy = open("deploy", "c1");
    assert!(!deploy.has_tracked_file(&first.to_string(), marker).unwrap());
    assert!(
        deploy
            .has_tracked_file(&marked.to_string(), marker)
            .unwrap()
    );
    assert!(
        !paths(&deploy.files_at(&marked.to_string()).unwrap())
            .contains(&"deploy/.nodewave-allow-prune"),
        "the marker is not a manifest"
    );
    let file = open("deploy/agent.yaml", "c2");
    assert!(file.has_tracked_file(&marked.to_string(), marker).unwrap());
    let other = open("other", "c3");
    assert!(
        !other.has_tracked_file(&marked.to_string(), marker).unwrap(),
        "a marker in a subdirectory does not count"
    );
    std::os::unix::fs::symlink("unrelated.yaml", remote.path.join("other").join(marker)).unwrap();
    let linked = remote.commit(&[], "a symlinked marker");
    let other = open("other", "c3b");
    assert!(
        !other.has_tracked_file(&linked.to_string(), marker).unwrap(),
        "a symlink is not a marker"
    );
    let root = open("", "c4");
    assert!(!root.has_tracked_file(&marked.to_string(), marker).unwrap());
    assert!(
        root.has_tracked_file(&marked.to_string(), "root.yaml")
            .unwrap(),
        "any regular file at the root"
    );
    assert!(
        !root
            .has_tracked_file(&marked.to_string(), "deploy")
            .unwrap(),
        "a directory is not a marker"
    );
    // The tracked directory renamed away: no marker, and reading it fails
    // (PathNotFound) rather than returning no files.
    fs::rename(remote.path.join("deploy"), remote.path.join("deploy-old")).unwrap();
    let renamed = remote.commit(&[], "rename deploy");
    let deploy = open("deploy", "c5");
    assert!(
        !deploy
            .has_tracked_file(&renamed.to_string(), marker)
            .unwrap()
    );
    let err = deploy.files_at(&renamed.to_string()).unwrap_err();
    assert_eq!(err.metric_label(), "path_not_found", "{err}");
}

#[test]
fn unknown_commits_and_bad_ids_are_errors() {
    let tmp = TempDir::new().unwrap();
    let (remote, _) = standard_remote(&tmp);
    let mut source = GitSource::open(config(
        remote.file_url(),
        main_branch(),
        "deploy",
        &tmp.path().join("cache"),
    ))
    .unwrap();
    source.fetch().unwrap();
    let err = source
        .files_at("0123456789abcdef0123456789abcdef01234567")
        .unwrap_err();
    assert_eq!(err.metric_label(), "commit_not_found", "{err}");
    let err = source.commit_info("HEAD~1").unwrap_err();
    assert_eq!(err.metric_label(), "config", "{err}");
}

#[test]
fn invalid_files_are_reported_with_their_path() {
    let tmp = TempDir::new().unwrap();
    let remote = Remote::new(&tmp.path().join("remote"));
    let blob = remote.repo.blob(&[0xff, 0xfe, 0x00]).unwrap();
    let mut builder = remote.repo.treebuilder(None).unwrap();
    builder.insert("bad.yaml", blob, 0o100_644).unwrap();
    let tree = remote.repo.find_tree(builder.write().unwrap()).unwrap();
    let sig = Signature::now("A", "a@example.com").unwrap();
    let oid = remote
        .repo
        .commit(Some("refs/heads/main"), &sig, &sig, "binary", &tree, &[])
        .unwrap();
    let mut source = GitSource::open(config(
        remote.file_url(),
        main_branch(),
        "",
        &tmp.path().join("c"),
    ))
    .unwrap();
    source.fetch().unwrap();
    let err = source.files_at(&oid.to_string()).unwrap_err();
    assert_eq!(err.metric_label(), "invalid_file");
    assert!(err.to_string().starts_with("bad.yaml at commit "), "{err}");
}

#[test]
fn changing_the_tracked_ref_forgets_the_old_head() {
    let tmp = TempDir::new().unwrap();
    let (remote, first) = standard_remote(&tmp);
    let cache = tmp.path().join("cache");
    let mut source = GitSource::open(config(remote.file_url(), main_branch(), "", &cache)).unwrap();
    source.fetch().unwrap();
    drop(source);
    remote
        .repo
        .branch("release", &remote.repo.find_commit(first).unwrap(), false)
        .unwrap();
    let mut source = GitSource::open(config(
        remote.file_url(),
        GitRef::Branch("release".into()),
        "",
        &cache,
    ))
    .unwrap();
    assert_eq!(source.head(), None);
    let outcome = source.fetch().unwrap();
    assert_eq!(outcome.previous, None);
    assert!(!outcome.forced);
}

#[test]
fn cache_dir_that_is_not_a_repository_is_refused() {
    let tmp = TempDir::new().unwrap();
    let (remote, _) = standard_remote(&tmp);
    let cache = tmp.path().join("cache");
    fs::create_dir_all(&cache).unwrap();
    fs::write(cache.join("precious.txt"), "do not touch").unwrap();
    let err = GitSource::open(config(remote.file_url(), main_branch(), "", &cache)).unwrap_err();
    assert_eq!(err.metric_label(), "cache", "{err}");
    assert!(cache.join("precious.txt").exists());

    // An existing empty directory (a fresh volume) is fine.
    let empty = tmp.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    assert!(GitSource::open(config(remote.file_url(), main_branch(), "", &empty)).is_ok());
}

#[test]
fn stale_lock_files_do_not_block_updates() {
    let tmp = TempDir::new().unwrap();
    let (remote, _) = standard_remote(&tmp);
    let cache = tmp.path().join("cache");
    let cfg = config(remote.file_url(), main_branch(), "", &cache);
    GitSource::open(cfg.clone()).unwrap().fetch().unwrap();
    // A crash during a ref update leaves a lock file behind.
    fs::write(cache.join(format!("{HEAD_REF}.lock")), "").unwrap();
    remote.commit(&[("new.yaml", Some("a: 1\n"))], "new");
    let mut source = GitSource::open(cfg).unwrap();
    assert!(source.fetch().unwrap().changed);
}

#[test]
fn bad_configuration_is_rejected_at_open() {
    let tmp = TempDir::new().unwrap();
    let cache = tmp.path().join("cache");
    for (url, reference, path) in [
        ("ftp://example.com/repo", main_branch(), ""),
        (
            "https://example.com/repo",
            GitRef::Branch("bad..name".into()),
            "",
        ),
        ("https://example.com/repo", main_branch(), "../outside"),
    ] {
        let err = GitSource::open(config(url.into(), reference, path, &cache)).unwrap_err();
        assert_eq!(err.metric_label(), "config", "{err}");
    }
}

/// A loopback HTTP server that answers every request with 401 and records the
/// `Authorization` headers it saw. Bounded: at most `max` connections and 20 s.
fn unauthorized_server(max: usize) -> (String, Arc<Mutex<Vec<Option<String>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!(
        "http://127.0.0.1:{}/org/repo.git",
        listener.local_addr().unwrap().port()
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen_thread = Arc::clone(&seen);
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut served = 0;
        while served < max && Instant::now() < deadline {
            let Ok((mut stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            served += 1;
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let request = String::from_utf8_lossy(&buf).to_string();
            let auth = request
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
                .map(|l| l["authorization:".len()..].trim().to_owned());
            seen_thread.lock().unwrap().push(auth);
            let _ = stream.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (url, seen)
}

#[test]
fn wrong_https_credentials_fail_once_without_looping() {
    let tmp = TempDir::new().unwrap();
    let (url, seen) = unauthorized_server(20);
    let token = tmp.path().join("token");
    fs::write(&token, "s3cr3t-token\n").unwrap();
    let mut cfg = config(url.clone(), main_branch(), "", &tmp.path().join("cache"));
    cfg.credentials.token_file = Some(token);
    // The stub speaks plain http (no TLS server here): allow the token over it.
    cfg.credentials.insecure_allow_http = true;
    let mut source = GitSource::open(cfg).unwrap();
    let err = source.fetch().unwrap_err();
    assert_eq!(err.metric_label(), "auth", "{err}");
    let message = err.to_string();
    assert!(
        message.contains("rejected the credentials for user x-access-token"),
        "{message}"
    );
    assert!(!message.contains("s3cr3t"), "{message}");
    let seen = seen.lock().unwrap().clone();
    // One anonymous request, one with the token, then we give up.
    assert!(seen.len() <= 3, "{seen:?}");
    let expected = format!("Basic {}", base64_encode(b"x-access-token:s3cr3t-token"));
    assert!(
        seen.iter().any(|a| a.as_deref() == Some(expected.as_str())),
        "{seen:?}"
    );
}

#[test]
fn https_without_credentials_says_what_to_configure() {
    if std::env::var_os(nodewave::source::TOKEN_ENV).is_some()
        || std::env::var_os(nodewave::source::PASSWORD_ENV).is_some()
    {
        return;
    }
    let tmp = TempDir::new().unwrap();
    let (url, _) = unauthorized_server(20);
    let mut source =
        GitSource::open(config(url, main_branch(), "", &tmp.path().join("cache"))).unwrap();
    let err = source.fetch().unwrap_err();
    assert_eq!(err.metric_label(), "auth", "{err}");
    assert!(err.to_string().contains("none are configured"), "{err}");
}

type Configure = fn(&mut Credentials, &Path);

/// Issue 10: a token or password configured for a plain `http://` remote must
/// never reach the wire, where anyone on the path could read it. The remote
/// here records every `Authorization` header it receives.
#[test]
fn credentials_are_never_sent_over_plain_http() {
    let tmp = TempDir::new().unwrap();
    let secret = tmp.path().join("secret");
    fs::write(&secret, "s3cr3t-token\n").unwrap();
    let cases: [(&str, Configure); 2] = [
        ("token file", |c, p| c.token_file = Some(p.to_path_buf())),
        ("password file", |c, p| {
            c.username = Some("bob".into());
            c.password_file = Some(p.to_path_buf());
        }),
    ];
    for (what, set) in cases {
        let (url, seen) = unauthorized_server(20);
        let mut cfg = config(url, main_branch(), "", &tmp.path().join(what));
        set(&mut cfg.credentials, &secret);
        let err = match GitSource::open(cfg) {
            Ok(mut source) => source.fetch().unwrap_err(),
            Err(e) => e,
        };
        let seen = seen.lock().unwrap().clone();
        assert!(
            seen.iter().all(Option::is_none),
            "{what}: credentials went over plain http: {seen:?}"
        );
        assert_eq!(err.metric_label(), "config", "{what}: {err}");
        let message = err.to_string();
        assert!(
            message.contains("plain http://")
                && message.contains("--insecure-allow-http-credentials")
                && message.contains("https://"),
            "{what}: {message}"
        );
        assert!(!message.contains("s3cr3t"), "{message}");
    }

    // A password embedded in an http:// URL is refused the same way.
    let (url, seen) = unauthorized_server(20);
    let url = url.replace("http://", "http://bob:hunter2@");
    let err =
        GitSource::open(config(url, main_branch(), "", &tmp.path().join("embedded"))).unwrap_err();
    assert_eq!(err.metric_label(), "config", "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(seen.lock().unwrap().is_empty());
}

/// The explicit override sends the credentials over http (for a trusted
/// network or a local test server), as before issue 10.
#[test]
fn insecure_override_sends_credentials_over_http() {
    let tmp = TempDir::new().unwrap();
    let (url, seen) = unauthorized_server(20);
    let token = tmp.path().join("token");
    fs::write(&token, "s3cr3t-token\n").unwrap();
    let mut cfg = config(url, main_branch(), "", &tmp.path().join("cache"));
    cfg.credentials.token_file = Some(token);
    cfg.credentials.insecure_allow_http = true;
    let err = GitSource::open(cfg).unwrap().fetch().unwrap_err();
    assert_eq!(err.metric_label(), "auth", "{err}");
    let expected = format!("Basic {}", base64_encode(b"x-access-token:s3cr3t-token"));
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().any(|a| a.as_deref() == Some(expected.as_str())),
        "{seen:?}"
    );
}

#[test]
fn errors_never_show_embedded_passwords() {
    let tmp = TempDir::new().unwrap();
    // Nothing listens on port 1 of the loopback: connection refused.
    let mut source = GitSource::open(config(
        "https://user:hunter2@127.0.0.1:1/org/repo.git".into(),
        main_branch(),
        "",
        &tmp.path().join("cache"),
    ))
    .unwrap();
    let err = source.fetch().unwrap_err();
    let message = err.to_string();
    assert!(!message.contains("hunter2"), "{message}");
    assert!(
        message.starts_with("cannot reach https://127.0.0.1:1/org/repo.git"),
        "{message}"
    );
    assert!(!format!("{err:?}").contains("hunter2"));
    assert!(!format!("{source:?}").contains("hunter2"));
}

fn base64_encode(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[tokio::test]
async fn worker_serves_requests_from_async_code() {
    let tmp = TempDir::new().unwrap();
    let (remote, first) = standard_remote(&tmp);
    let worker = SourceWorker::open(config(
        remote.file_url(),
        main_branch(),
        "deploy",
        &tmp.path().join("cache"),
    ))
    .unwrap();
    assert_eq!(worker.head(), None);
    let mut head_rx = worker.subscribe_head();

    let outcome = worker.fetch().await.unwrap();
    assert_eq!(outcome.head, first.to_string());
    assert_eq!(worker.head(), Some(first.to_string()));
    assert!(head_rx.has_changed().unwrap());
    assert_eq!(*head_rx.borrow_and_update(), Some(first.to_string()));

    let files = worker.files_at(outcome.head.clone()).await.unwrap();
    assert_eq!(files.len(), 3);
    let info = worker.commit_info(outcome.head.clone()).await.unwrap();
    assert_eq!(info.summary, "initial");

    let second = remote.commit(&[("deploy/agent.yaml", Some("v: 2\n"))], "second");
    // Concurrent fetches from cloned handles (a poll and a webhook).
    let other = worker.clone();
    let (a, b) = tokio::join!(worker.fetch(), other.fetch());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.head, second.to_string());
    assert_eq!(b.head, second.to_string());
    assert!(a.changed || b.changed);
    assert!(
        worker
            .is_ancestor(first.to_string(), second.to_string())
            .await
            .unwrap()
    );
    let err = worker
        .files_at("0123456789abcdef0123456789abcdef01234567".into())
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::CommitNotFound { .. }));
}
