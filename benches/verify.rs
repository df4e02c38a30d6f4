//! Cost of commit signature verification: one `verify_commit` per key type,
//! the per-verification change check of the trust files, and parsing a large
//! keyring. Signatures are real (GnuPG and ssh-keygen through `git commit -S`,
//! made when the bench starts; needs `gpg`, `ssh-keygen` and `git`).
//!
//! Run: `cargo bench --bench verify` (optimised build). Prints one line per
//! case: the median of several timed runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/signing/mod.rs"]
mod signing;

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use git2::{Oid, Repository};
use jiff::tz::TimeZone;
use nodewave::source::signature;
use nodewave::verify::{TrustFiles, TrustStore, verify_commit};
use signing::{Gpg, Repo, Sign, SshKey, write};

fn median<F: FnMut()>(runs: usize, mut f: F) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn store(gpg: Option<&Path>, ssh: Option<&Path>) -> TrustStore {
    TrustStore::load_in(
        TrustFiles {
            openpgp: gpg.map(Path::to_path_buf),
            ssh: ssh.map(Path::to_path_buf),
        },
        TimeZone::UTC,
    )
    .unwrap()
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let gpg = Gpg::new();
    let repo = Repo::new();
    let read = |commit: &str| {
        let r = Repository::open(repo.path()).unwrap();
        signature::read(&r, Oid::from_str(commit).unwrap()).unwrap()
    };

    // A keyring of 50 keys, the signer last (the worst case for the lookup).
    let mut armored = String::new();
    let mut last = String::new();
    for i in 0..50 {
        last = gpg.gen_key(
            &format!("Dev {i} <dev{i}@example.com>"),
            "ed25519",
            "sign",
            "never",
        );
        armored.push_str(&gpg.export(&last));
    }
    let rsa = gpg.gen_key("RSA <rsa@example.com>", "rsa3072", "sign", "never");
    armored.push_str(&gpg.export(&rsa));
    let ring = write(dir.path(), "keys.asc", &armored);
    let ssh_ed = SshKey::new(dir.path(), "ed", "ed25519");
    let ssh_rsa = SshKey::new(dir.path(), "rsa", "rsa");
    let mut lines = String::new();
    for i in 0..50 {
        let k = SshKey::new(dir.path(), &format!("k{i}"), "ed25519");
        writeln!(lines, "dev{i}@example.com {}", k.public).unwrap();
    }
    writeln!(lines, "ed@example.com {}", ssh_ed.public).unwrap();
    writeln!(lines, "rsa@example.com {}", ssh_rsa.public).unwrap();
    let signers = write(dir.path(), "allowed_signers", &lines);
    let trust = store(Some(&ring), Some(&signers));
    let keys = trust.current().unwrap();
    println!(
        "keyring {} bytes (51 OpenPGP keys), allowed_signers {} bytes (52 lines)",
        armored.len(),
        lines.len()
    );

    let cases = [
        (
            "OpenPGP ed25519, 51-key ring",
            repo.commit(&Sign::Gpg(&gpg, &last), "pgp ed25519", &[]),
        ),
        (
            "OpenPGP RSA-3072",
            repo.commit(&Sign::Gpg(&gpg, &rsa), "pgp rsa", &[]),
        ),
        (
            "SSH ed25519, 52-line file",
            repo.commit(&Sign::Ssh(&ssh_ed), "ssh ed25519", &[]),
        ),
        (
            "SSH RSA-2048",
            repo.commit(&Sign::Ssh(&ssh_rsa), "ssh rsa", &[]),
        ),
    ];
    for (name, commit) in &cases {
        let signed = read(commit);
        verify_commit(&signed, &keys, SystemTime::now()).unwrap();
        let t = median(51, || {
            black_box(verify_commit(black_box(&signed), &keys, SystemTime::now()).unwrap());
        });
        println!("verify_commit, {name}: {t:?}");
    }
    let t = median(51, || {
        black_box(trust.current().unwrap());
    });
    println!("TrustStore::current, files unchanged (read + SHA-256 of both): {t:?}");
    let t = median(11, || {
        black_box(store(Some(&ring), Some(&signers)));
    });
    println!("TrustStore::load, both files (parse 51 keys + 52 lines): {t:?}");
    let r = Repository::open(repo.path()).unwrap();
    let oid = Oid::from_str(&cases[0].1).unwrap();
    let t = median(51, || {
        black_box(signature::read(&r, oid).unwrap());
    });
    println!("signature::read from the object database: {t:?}");
}
