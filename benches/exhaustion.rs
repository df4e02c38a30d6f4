//! Time and peak memory of nodewave on hostile commits: separator storms, deep
//! nesting, alias bombs, wide documents, huge files, many files, and a huge blob
//! in a real Git repository.
//!
//! Run: `cargo bench --bench exhaustion` (optimised build; about a minute).
//!
//! - `validate`: the real `nodewave validate DIR` binary on a generated
//!   directory, under `/usr/bin/time` (wall time, peak RSS of the process, exit
//!   code, and the check of the first finding).
//! - `files_at`: `GitSource::files_at` in this process on a repository whose
//!   commit holds a huge blob or many files; the peak RSS is this process's
//!   VmHWM, reset through `/proc/self/clear_refs` before each case, so it shows
//!   what reading the commit added.

// A failed setup step should just fail the benchmark.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/proc_status.rs"]
mod proc_status;

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use git2::{Repository, Signature};
use nodewave::manifest::adversarial as adv;
use nodewave::manifest::{Limits, ManifestFile};
use nodewave::source::{Credentials, GitRef, GitSource, GitSourceConfig};

fn write_dir(dir: &Path, files: &[ManifestFile]) {
    for f in files {
        let path = dir.join(&f.path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, &f.contents).unwrap();
    }
}

fn one(path: &str, contents: String) -> Vec<ManifestFile> {
    vec![ManifestFile {
        path: path.into(),
        contents,
    }]
}

/// Runs `nodewave validate` on `files` and prints one table row.
fn validate(name: &str, files: &[ManifestFile], extra: impl FnOnce(&Path), args: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    write_dir(tmp.path(), files);
    extra(tmp.path());
    let bytes: u64 = walk_size(tmp.path());
    let out = Command::new("/usr/bin/time")
        .args(["-f", "TIME %e %M"])
        .arg(env!("CARGO_BIN_EXE_nodewave"))
        .arg("validate")
        .arg(tmp.path())
        .args(args)
        .output()
        .expect("/usr/bin/time (Debian package `time`)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (secs, kb) = stderr
        .lines()
        .find_map(|l| l.strip_prefix("TIME "))
        .and_then(|t| t.split_once(' '))
        .map_or(("?".into(), 0u64), |(s, k)| {
            (s.to_string(), k.parse().unwrap_or(0))
        });
    // The limit that rejected it, else the first finding's check.
    let check = if stdout.contains("error[limit-exceeded]") {
        "limit-exceeded"
    } else {
        stdout
            .lines()
            .next()
            .and_then(|l| l.split_once("error[").or_else(|| l.split_once("warning[")))
            .and_then(|(_, rest)| rest.split_once(']'))
            .map_or("-", |(c, _)| c)
    };
    let code = match out.status.code() {
        Some(c) => c.to_string(),
        None => "signal".into(),
    };
    println!(
        "validate  {name:<44} {:>10} {:>8}s {:>8} MB  exit {code:<3} {check}",
        human(bytes),
        secs,
        kb / 1024
    );
}

fn walk_size(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            walk_size(&e.path())
        } else {
            m.len()
        };
    }
    total
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 => format!("{}.{} MiB", b >> 20, ((b & ((1 << 20) - 1)) * 10) >> 20),
        b if b >= 1 << 10 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

fn reset_hwm() {
    // "5" resets the peak RSS (Linux >= 4.0).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// A bare repository whose `main` holds the given blobs (path, size or contents).
fn repo_with(dir: &Path, files: &[(String, BlobSpec)]) {
    let repo = Repository::init_bare(dir).unwrap();
    let mut trees: std::collections::BTreeMap<String, git2::TreeBuilder<'_>> =
        std::collections::BTreeMap::new();
    for (path, spec) in files {
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        let oid = match spec {
            BlobSpec::Text(t) => repo.blob(t.as_bytes()).unwrap(),
            BlobSpec::Zeros(n) => {
                let mut w = repo.blob_writer(None).unwrap();
                let chunk = vec![b'a'; 1 << 20];
                let mut left = *n;
                while left > 0 {
                    let k = left.min(chunk.len());
                    w.write_all(&chunk[..k]).unwrap();
                    left -= k;
                }
                w.commit().unwrap()
            }
        };
        trees
            .entry(parent.to_string())
            .or_insert_with(|| repo.treebuilder(None).unwrap())
            .insert(name, oid, 0o100_644)
            .unwrap();
    }
    let mut root = trees
        .remove("")
        .unwrap_or_else(|| repo.treebuilder(None).unwrap());
    for (dir, builder) in trees {
        root.insert(&dir, builder.write().unwrap(), 0o040_000)
            .unwrap();
    }
    let tree = repo.find_tree(root.write().unwrap()).unwrap();
    let sig = Signature::now("Mallory", "m@example.com").unwrap();
    repo.commit(Some("refs/heads/main"), &sig, &sig, "hostile", &tree, &[])
        .unwrap();
}

enum BlobSpec {
    Text(String),
    Zeros(usize),
}

fn files_at(name: &str, files: &[(String, BlobSpec)]) {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote.git");
    repo_with(&remote, files);
    let mut source = GitSource::open(GitSourceConfig {
        url: remote.display().to_string(),
        reference: GitRef::Branch("main".into()),
        path: String::new(),
        checkout_dir: tmp.path().join("cache"),
        credentials: Credentials::default(),
        limits: Limits::default(),
    })
    .unwrap();
    let head = source.fetch().unwrap().head;
    reset_hwm();
    let before = proc_status::kib("VmHWM");
    let start = Instant::now();
    let result = source.files_at(&head);
    let elapsed = start.elapsed();
    let peak = proc_status::kib("VmHWM");
    let outcome = match &result {
        Ok(files) => format!("ok, {} files", files.len()),
        Err(e) => e.metric_label().to_string(),
    };
    println!(
        "files_at  {name:<44} {:>8.3}s  RSS {:>5} MB (+{} MB)  {outcome}",
        elapsed.as_secs_f64(),
        peak / 1024,
        peak.saturating_sub(before) / 1024,
    );
}

fn main() {
    println!(
        "what      input                                              size     time  peak RSS  result"
    );
    let good = || one("good.yaml", adv::daemonset("ns", "good"));
    validate("baseline: one DaemonSet", &good(), |_| {}, &[]);
    validate(
        "200 DaemonSets in 200 files",
        &adv::many_files(200, "ns"),
        |_| {},
        &[],
    );
    validate(
        "5,000 DaemonSets in 5,000 files (the object limit)",
        &adv::many_files(5_000, "ns"),
        |_| {},
        &[],
    );
    validate(
        "separator storm: 100,000 `---` (issue 10)",
        &one("storm.yaml", adv::separator_storm(100_000)),
        |_| {},
        &[],
    );
    validate(
        "separator storm: 1,000,000 `---`",
        &one("storm.yaml", adv::separator_storm(1_000_000)),
        |_| {},
        &[],
    );
    validate(
        "document storm: 400,000 `a: 1` documents",
        &one("docs.yaml", adv::document_storm(400_000)),
        |_| {},
        &[],
    );
    validate(
        "deep nesting: depth 200 x 2,000 items",
        &one("deep.yaml", adv::deep_nesting(200, 2_000)),
        |_| {},
        &[],
    );
    validate(
        "deep nesting: depth 250 x 5,000 items, --max-depth 250",
        &one("deep.yaml", adv::deep_nesting(249, 5_000)),
        |_| {},
        &[
            "--max-depth",
            "250",
            "--max-object-bytes",
            "4MiB",
            "--max-nodes",
            "2000000",
            "--max-total-nodes",
            "2000000",
        ],
    );
    validate(
        "alias bomb: 10 levels x 10 (10^10 scalars)",
        &one("lol.yaml", adv::alias_bomb(9, 10)),
        |_| {},
        &[],
    );
    validate(
        "alias bombs: 5,000 documents of 10^10",
        &one(
            "lol.yaml",
            vec![adv::alias_bomb(9, 10); 5_000].join("---\n"),
        ),
        |_| {},
        &[],
    );
    validate(
        "wide document: 2,000,000 nodes",
        &one("wide.yaml", adv::wide_document(2_000_000)),
        |_| {},
        &["--max-object-bytes", "4MiB"],
    );
    validate(
        "within limits: 16 x 1 MiB documents of 90,000 nodes",
        &(0..16)
            .map(|i| ManifestFile {
                path: format!("w{i:02}.yaml"),
                contents: adv::wide_document(90_000),
            })
            .collect::<Vec<_>>(),
        |_| {},
        &["--max-total-nodes", "2000000"],
    );
    validate(
        "huge file: 4 GiB (sparse)",
        &good(),
        |dir| {
            let f = std::fs::File::create(dir.join("huge.yaml")).unwrap();
            f.set_len(4 << 30).unwrap();
        },
        &[],
    );
    validate(
        "many files: 100,000 small files",
        &(0..100_000)
            .map(|i| ManifestFile {
                path: format!("d{:03}/{i:06}.yaml", i % 100),
                contents: "a: 1\n".into(),
            })
            .collect::<Vec<_>>(),
        |_| {},
        &[],
    );
    validate(
        "overflowing duration (issue 10)",
        &[
            good(),
            one("policy.yaml", adv::bad_numbers("ns", "good").swap_remove(0)),
        ]
        .concat(),
        |_| {},
        &[],
    );

    files_at(
        "huge blob: 1 GiB",
        &[
            (
                "good.yaml".into(),
                BlobSpec::Text(adv::daemonset("ns", "good")),
            ),
            ("huge.yaml".into(), BlobSpec::Zeros(1 << 30)),
        ],
    );
    files_at(
        "many blobs: 100,000 files",
        &(0..100_000)
            .map(|i| {
                (
                    format!("d{:03}/{i:06}.yaml", i % 100),
                    BlobSpec::Text(format!("a: {i}\n")),
                )
            })
            .collect::<Vec<_>>(),
    );
    files_at(
        "within limits: 200 DaemonSets",
        &adv::many_files(200, "ns")
            .into_iter()
            .map(|f| (f.path, BlobSpec::Text(f.contents)))
            .collect::<Vec<_>>(),
    );
}
