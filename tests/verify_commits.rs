//! Commit signature verification with real signatures: GnuPG (`git commit -S`)
//! and ssh-keygen (`git -c gpg.format=ssh commit -S`), read from real
//! repositories, judged against trust files on disk. No cluster needed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration test crate: panics are test failures

mod signing;

use std::path::Path;
use std::time::{Duration, SystemTime};

use git2::{Oid, Repository};
use jiff::tz::TimeZone;
use nodewave::source::{GitRef, GitSourceConfig, SourceWorker, signature};
use nodewave::verify::{
    self, SignatureFormat, Signer, TrustFiles, TrustStore, Unverified, verify_commit,
};
use signing::{Gpg, Repo, Sign, SshKey, write};

fn read(repo: &Repo, commit: &str) -> nodewave::source::CommitSignature {
    let r = Repository::open(repo.path()).unwrap();
    signature::read(&r, Oid::from_str(commit).unwrap()).unwrap()
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

fn check(repo: &Repo, commit: &str, trust: &TrustStore) -> Result<Signer, Unverified> {
    verify_commit(
        &read(repo, commit),
        &trust.current().unwrap(),
        SystemTime::now(),
    )
}

fn label(r: &Result<Signer, Unverified>) -> &'static str {
    match r {
        Ok(_) => "verified",
        Err(u) => u.metric_label(),
    }
}

#[test]
fn openpgp_commits_signed_by_trusted_keys_verify() {
    let keys = tempfile::tempdir().unwrap();
    let gpg = Gpg::new();
    let alice = gpg.gen_key("Alice <alice@example.com>", "ed25519", "sign", "1y");
    let bob = gpg.gen_key("Bob <bob@example.com>", "rsa2048", "sign", "never");
    let carol = gpg.gen_key("Carol <carol@example.com>", "ed25519", "cert", "never");
    let carol_sub = gpg.add_signing_subkey(&carol, "ed25519");
    // Concatenated armored exports, as `cat *.asc` or GitHub's <user>.gpg give them.
    let ring = write(
        keys.path(),
        "keys.asc",
        format!(
            "# team keys\n{}{}{}",
            gpg.export(&alice),
            gpg.export(&bob),
            gpg.export(&carol)
        ),
    );
    let trust = store(Some(&ring), None);

    let repo = Repo::new();
    let c1 = repo.commit(
        &Sign::Gpg(&gpg, &alice),
        "by alice",
        &[("a.yaml", "a: 1\n")],
    );
    let s = check(&repo, &c1, &trust).unwrap();
    assert_eq!(s.format, SignatureFormat::OpenPgp);
    assert_eq!(s.fingerprint, alice);
    assert_eq!(s.identity, "Alice <alice@example.com>");
    assert_eq!(s.subkey, None);

    // RSA primary key.
    let c2 = repo.commit(&Sign::Gpg(&gpg, &bob), "by bob", &[("a.yaml", "a: 2\n")]);
    let s = check(&repo, &c2, &trust).unwrap();
    assert_eq!(
        (s.fingerprint.as_str(), s.identity.as_str()),
        (bob.as_str(), "Bob <bob@example.com>")
    );

    // A signing subkey of a certify-only primary key: reported with both.
    let c3 = repo.commit(
        &Sign::Gpg(&gpg, &carol),
        "by carol",
        &[("a.yaml", "a: 3\n")],
    );
    let s = check(&repo, &c3, &trust).unwrap();
    assert_eq!(s.fingerprint, carol);
    assert_eq!(s.subkey.as_deref(), Some(carol_sub.as_str()));
    assert!(
        s.to_string().contains(&format!("(subkey {carol_sub})")),
        "{s}"
    );

    // A binary keyring (gpg --export without --armor) works the same.
    let binary = write(keys.path(), "keys.gpg", gpg.export_binary(&alice));
    assert_eq!(
        check(&repo, &c1, &store(Some(&binary), None))
            .unwrap()
            .fingerprint,
        alice
    );
}

#[test]
fn ssh_commits_signed_by_trusted_keys_verify() {
    let dir = tempfile::tempdir().unwrap();
    let ed = SshKey::new(dir.path(), "ed", "ed25519");
    let rsa = SshKey::new(dir.path(), "rsa", "rsa");
    let ecdsa = SshKey::new(dir.path(), "ecdsa", "ecdsa");
    let signers = write(
        dir.path(),
        "allowed_signers",
        format!(
            "# who may deploy\nalice@example.com namespaces=\"git\" {}\nbob@example.com {}\n\"carol@example.com,c@example.com\" namespaces=\"file,git\",valid-after=\"20200101\" {}\n",
            ed.public, rsa.public, ecdsa.public
        ),
    );
    let trust = store(None, Some(&signers));
    let repo = Repo::new();
    for (key, who) in [
        (&ed, "alice@example.com"),
        (&rsa, "bob@example.com"),
        (&ecdsa, "carol@example.com,c@example.com"),
    ] {
        let c = repo.commit(
            &Sign::Ssh(key),
            who,
            &[("a.yaml", &format!("who: {who}\n"))],
        );
        let s = check(&repo, &c, &trust).unwrap_or_else(|e| panic!("{who}: {e}"));
        assert_eq!(s.format, SignatureFormat::Ssh);
        assert_eq!(s.fingerprint, key.fingerprint());
        assert_eq!(s.identity, who);
    }
}

#[test]
fn unsigned_and_untrusted_commits_are_rejected_with_their_own_reason() {
    let dir = tempfile::tempdir().unwrap();
    let gpg = Gpg::new();
    let trusted = gpg.gen_key("Trusted <t@example.com>", "ed25519", "sign", "never");
    let stranger = gpg.gen_key("Stranger <s@example.com>", "ed25519", "sign", "never");
    let ssh_trusted = SshKey::new(dir.path(), "trusted", "ed25519");
    let ssh_stranger = SshKey::new(dir.path(), "stranger", "ed25519");
    let ssh_other_ns = SshKey::new(dir.path(), "otherns", "ed25519");
    let ring = write(dir.path(), "keys.asc", gpg.export(&trusted));
    let signers = write(
        dir.path(),
        "allowed_signers",
        format!(
            "ok@example.com {}\nfiles@example.com namespaces=\"file\" {}\n",
            ssh_trusted.public, ssh_other_ns.public
        ),
    );
    let both = store(Some(&ring), Some(&signers));
    let repo = Repo::new();

    let unsigned = repo.commit(&Sign::No, "unsigned", &[("a.yaml", "a: 1\n")]);
    assert_eq!(check(&repo, &unsigned, &both), Err(Unverified::Unsigned));

    let by_stranger = repo.commit(&Sign::Gpg(&gpg, &stranger), "stranger", &[]);
    let e = check(&repo, &by_stranger, &both).unwrap_err();
    assert_eq!(e.metric_label(), "unknown_key");
    let msg = e.to_string();
    assert!(msg.contains(&stranger) && msg.contains(&trusted), "{msg}");
    assert!(msg.contains("keys.asc"), "{msg}");

    let by_ssh_stranger = repo.commit(&Sign::Ssh(&ssh_stranger), "ssh stranger", &[]);
    let e = check(&repo, &by_ssh_stranger, &both).unwrap_err();
    assert_eq!(e.metric_label(), "unknown_key");
    assert!(e.to_string().contains(&ssh_stranger.fingerprint()), "{e}");

    let other_ns = repo.commit(&Sign::Ssh(&ssh_other_ns), "namespace file only", &[]);
    let e = check(&repo, &other_ns, &both).unwrap_err();
    assert_eq!(e.metric_label(), "unknown_key");
    assert!(e.to_string().contains("namespaces"), "{e}");

    // A format whose trust file is not configured names the flag to set.
    let ssh_only = store(None, Some(&signers));
    let by_trusted_gpg = repo.commit(&Sign::Gpg(&gpg, &trusted), "gpg", &[]);
    let e = check(&repo, &by_trusted_gpg, &ssh_only).unwrap_err();
    assert_eq!(e.metric_label(), "unknown_key");
    assert!(e.to_string().contains("--trusted-gpg-keys"), "{e}");
    // ... and with it, the same commit verifies.
    assert!(check(&repo, &by_trusted_gpg, &both).is_ok());
}

#[test]
fn tampered_commits_are_bad_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let gpg = Gpg::new();
    let key = gpg.gen_key("Alice <alice@example.com>", "ed25519", "sign", "never");
    let ssh = SshKey::new(dir.path(), "alice", "ed25519");
    let ring = write(dir.path(), "keys.asc", gpg.export(&key));
    let signers = write(
        dir.path(),
        "allowed_signers",
        format!("alice@example.com {}\n", ssh.public),
    );
    let trust = store(Some(&ring), Some(&signers));
    let repo = Repo::new();

    for sign in [Sign::Gpg(&gpg, &key), Sign::Ssh(&ssh)] {
        let good = repo.commit(&sign, "good", &[("ds.yaml", "image: agent:1\n")]);
        assert!(check(&repo, &good, &trust).is_ok());
        // Same headers and signature, different message.
        let forged = repo.forge_from(&good, "something else");
        assert_ne!(forged, good);
        let e = check(&repo, &forged, &trust).unwrap_err();
        assert_eq!(e.metric_label(), "bad_signature", "{e}");
        assert!(
            e.to_string()
                .contains("does not match the commit's content"),
            "{e}"
        );

        // A valid signature copied onto a commit with other content (another tree).
        let unsigned = repo.commit(&Sign::No, "evil", &[("ds.yaml", "image: evil:1\n")]);
        let spliced = repo.splice_signature(&unsigned, &good);
        let e = check(&repo, &spliced, &trust).unwrap_err();
        assert_eq!(e.metric_label(), "bad_signature", "{e}");
    }
}

#[test]
fn expired_revoked_and_weak_signatures_are_rejected_with_their_own_reason() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::new();

    // A key that expired on 2020-01-02, used on 2020-01-01 (gpg's faked time):
    // the signature was good when made, but the key is expired now.
    let past = Gpg::with_conf("faked-system-time 20200101T000000\n");
    let old = past.gen_key("Old <old@example.com>", "ed25519", "sign", "1d");
    let c = repo.commit(&Sign::Gpg(&past, &old), "old", &[]);
    let ring = write(dir.path(), "old.asc", past.export(&old));
    let e = check(&repo, &c, &store(Some(&ring), None)).unwrap_err();
    assert_eq!(e.metric_label(), "expired_key", "{e}");
    assert!(e.to_string().contains("2020-01-02T00:00:00Z"), "{e}");
    // ... the same signature verifies at a time the key was valid.
    let keys = store(Some(&ring), None).current().unwrap();
    let then = SystemTime::UNIX_EPOCH + Duration::from_secs(1_577_836_800 + 3600);
    assert!(verify_commit(&read(&repo, &c), &keys, then).is_ok());

    // A revoked key (revoked with the certificate gpg made at generation).
    let gpg = Gpg::new();
    let revoked = gpg.gen_key("Gone <gone@example.com>", "ed25519", "sign", "never");
    let c = repo.commit(&Sign::Gpg(&gpg, &revoked), "before the revocation", &[]);
    gpg.revoke(&revoked);
    let ring = write(dir.path(), "revoked.asc", gpg.export(&revoked));
    let e = check(&repo, &c, &store(Some(&ring), None)).unwrap_err();
    assert_eq!(e.metric_label(), "revoked_key", "{e}");

    // A signature made with an expiry (default-sig-expire) in the past.
    let sig_expiring = Gpg::with_conf("faked-system-time 20200101T000000\ndefault-sig-expire 1d\n");
    let key = sig_expiring.gen_key("Short <short@example.com>", "ed25519", "sign", "never");
    let c = repo.commit(
        &Sign::Gpg(&sig_expiring, &key),
        "short-lived signature",
        &[],
    );
    let ring = write(dir.path(), "short.asc", sig_expiring.export(&key));
    let e = check(&repo, &c, &store(Some(&ring), None)).unwrap_err();
    assert_eq!(e.metric_label(), "expired_signature", "{e}");

    // SHA-1 data signatures are refused (chosen-prefix collisions exist).
    let weak = Gpg::with_conf("digest-algo SHA1\n");
    let key = weak.gen_key("Weak <weak@example.com>", "rsa2048", "sign", "never");
    let c = repo.commit(&Sign::Gpg(&weak, &key), "sha1", &[]);
    let ring = write(dir.path(), "weak.asc", weak.export(&key));
    let e = check(&repo, &c, &store(Some(&ring), None)).unwrap_err();
    assert_eq!(e.metric_label(), "bad_signature", "{e}");
    assert!(e.to_string().contains("SHA1"), "{e}");

    // SSH: valid-before in the past, valid-after in the future.
    let ssh = SshKey::new(dir.path(), "k", "ed25519");
    let c = repo.commit(&Sign::Ssh(&ssh), "ssh", &[]);
    for (options, needle) in [
        (
            "valid-before=\"20200101\"",
            "expired at 2020-01-01T00:00:00Z",
        ),
        (
            "valid-after=\"29990101Z\"",
            "is not valid before 2999-01-01",
        ),
    ] {
        let signers = write(
            dir.path(),
            "allowed_signers",
            format!("k@example.com {options} {}\n", ssh.public),
        );
        let e = check(&repo, &c, &store(None, Some(&signers))).unwrap_err();
        assert_eq!(e.metric_label(), "expired_key", "{e}");
        assert!(e.to_string().contains(needle), "{e}");
    }
}

#[test]
fn key_files_changed_at_runtime_take_effect_without_a_new_store() {
    let dir = tempfile::tempdir().unwrap();
    let gpg = Gpg::new();
    let alice = gpg.gen_key("Alice <alice@example.com>", "ed25519", "sign", "never");
    let bob = gpg.gen_key("Bob <bob@example.com>", "ed25519", "sign", "never");
    let ssh_alice = SshKey::new(dir.path(), "alice", "ed25519");
    let ssh_bob = SshKey::new(dir.path(), "bob", "ed25519");
    let ring = write(dir.path(), "keys.asc", gpg.export(&alice));
    let signers = write(
        dir.path(),
        "allowed_signers",
        format!("alice@example.com {}\n", ssh_alice.public),
    );
    let trust = store(Some(&ring), Some(&signers));
    let repo = Repo::new();
    let by_bob = repo.commit(&Sign::Gpg(&gpg, &bob), "bob", &[]);
    let by_ssh_bob = repo.commit(&Sign::Ssh(&ssh_bob), "ssh bob", &[]);
    let by_alice = repo.commit(&Sign::Gpg(&gpg, &alice), "alice", &[]);
    assert_eq!(label(&check(&repo, &by_bob, &trust)), "unknown_key");
    assert_eq!(label(&check(&repo, &by_ssh_bob, &trust)), "unknown_key");
    let g0 = trust.generation();

    // Bob's keys are added: his commits verify with the same store.
    write(
        dir.path(),
        "keys.asc",
        format!("{}{}", gpg.export(&alice), gpg.export(&bob)),
    );
    write(
        dir.path(),
        "allowed_signers",
        format!(
            "alice@example.com {}\nbob@example.com {}\n",
            ssh_alice.public, ssh_bob.public
        ),
    );
    assert_eq!(check(&repo, &by_bob, &trust).unwrap().fingerprint, bob);
    assert_eq!(
        check(&repo, &by_ssh_bob, &trust).unwrap().identity,
        "bob@example.com"
    );
    assert!(trust.generation() > g0);

    // Alice's key is removed: her commit no longer verifies.
    write(dir.path(), "keys.asc", gpg.export(&bob));
    assert_eq!(label(&check(&repo, &by_alice, &trust)), "unknown_key");

    // A broken key file fails closed (nothing verifies) and recovers when fixed.
    write(
        dir.path(),
        "keys.asc",
        "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\ngarbage\n-----END PGP PUBLIC KEY BLOCK-----\n",
    );
    assert!(trust.current().is_err());
    let e = verify::TrustStore::current(&trust).unwrap_err();
    assert!(e.to_string().contains("keys.asc"), "{e}");
    write(dir.path(), "keys.asc", gpg.export(&alice));
    assert_eq!(label(&check(&repo, &by_alice, &trust)), "verified");
}

/// The service's path: the commit is read from nodewave's own clone cache
/// through the git worker, after a fetch from the remote.
#[tokio::test]
async fn check_commit_reads_the_fetched_commit_through_the_git_worker() {
    let dir = tempfile::tempdir().unwrap();
    let ssh = SshKey::new(dir.path(), "deployer", "ed25519");
    let signers = write(
        dir.path(),
        "allowed_signers",
        format!("deployer@example.com {}\n", ssh.public),
    );
    let trust = store(None, Some(&signers));
    let repo = Repo::new();
    let signed = repo.commit(&Sign::Ssh(&ssh), "signed", &[("ds.yaml", "a: 1\n")]);

    let worker = SourceWorker::open(GitSourceConfig {
        url: repo.url(),
        reference: GitRef::Branch("main".into()),
        path: String::new(),
        checkout_dir: dir.path().join("cache"),
        limits: ::nodewave::manifest::Limits::default(),
        credentials: nodewave::source::Credentials::default(),
    })
    .unwrap();
    assert_eq!(worker.fetch().await.unwrap().head, signed);
    let s = verify::check_commit(&worker, &trust, &signed)
        .await
        .unwrap();
    assert_eq!(s.identity, "deployer@example.com");

    let unsigned = repo.commit(&Sign::No, "unsigned", &[("ds.yaml", "a: 2\n")]);
    assert_eq!(worker.fetch().await.unwrap().head, unsigned);
    assert_eq!(
        verify::check_commit(&worker, &trust, &unsigned).await,
        Err(Unverified::Unsigned)
    );
    let forged = repo.forge_from(&signed, "forged");
    worker.fetch().await.unwrap();
    assert_eq!(
        label(&verify::check_commit(&worker, &trust, &forged).await),
        "bad_signature"
    );
    // A commit that is not in the clone is unreadable, not verified.
    let e = verify::check_commit(&worker, &trust, &"ab".repeat(20))
        .await
        .unwrap_err();
    assert_eq!(e.metric_label(), "unreadable", "{e}");
}
