//! `nodewave validate --verify` as a repository's CI runs it: the real binary
//! on a checkout whose HEAD is signed (or not) by real GnuPG / ssh-keygen
//! signatures. Exit 0 verified and valid, 1 not verified (or invalid
//! manifests), 2 when verification cannot run at all. No cluster needed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration test crate: panics are test failures

mod signing;

use std::path::Path;
use std::process::Command;

use signing::{Gpg, Repo, Sign, SshKey, write};

const VALID: &str = include_str!("fixtures/manifests/valid/fluent-bit.yaml");

fn validate(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nodewave"))
        .arg("validate")
        .arg(dir)
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("NODEWAVE_ALLOW_NAMESPACES")
        // The fixture's Prometheus gate is allowed: these tests are about signatures.
        .env(
            "NODEWAVE_ALLOW_PROMETHEUS_URLS",
            "http://prometheus.monitoring:9090",
        )
        .env_remove("NODEWAVE_TRUSTED_GPG_KEYS")
        .env_remove("NODEWAVE_TRUSTED_SSH_SIGNERS")
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn validate_verify_exit_codes() {
    let keys = tempfile::tempdir().unwrap();
    let gpg = Gpg::new();
    let trusted = gpg.gen_key("CI Signer <ci@example.com>", "ed25519", "sign", "never");
    let stranger = gpg.gen_key("Stranger <s@example.com>", "ed25519", "sign", "never");
    let ssh = SshKey::new(keys.path(), "dev", "ed25519");
    let ring = write(keys.path(), "keys.asc", gpg.export(&trusted));
    let signers = write(
        keys.path(),
        "allowed_signers",
        format!("dev@example.com namespaces=\"git\" {}\n", ssh.public),
    );
    let ring_s = ring.to_str().unwrap();
    let signers_s = signers.to_str().unwrap();
    let both = [
        "--verify",
        "--trusted-gpg-keys",
        ring_s,
        "--trusted-ssh-signers",
        signers_s,
    ];

    let repo = Repo::new();
    let manifests = repo.path().join("deploy");
    let c = repo.commit(
        &Sign::Gpg(&gpg, &trusted),
        "signed",
        &[("deploy/fluent-bit.yaml", VALID)],
    );

    // Verified and valid; a sub-directory of the checkout is enough.
    let (code, out) = validate(&manifests, &both);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "verified: commit {} is signed by OpenPGP key {trusted} (CI Signer <ci@example.com>)",
            &c[..12]
        )),
        "{out}"
    );
    assert!(out.contains("ok: 1 file(s)"), "{out}");
    // Without --verify nothing about signatures is checked or printed.
    let (code, out) = validate(&manifests, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("verified"), "{out}");

    // SSH-signed HEAD, configured through the environment.
    repo.commit(&Sign::Ssh(&ssh), "ssh signed", &[]);
    let out = Command::new(env!("CARGO_BIN_EXE_nodewave"))
        .args(["validate", "--verify"])
        .arg(&manifests)
        .env("NODEWAVE_TRUSTED_SSH_SIGNERS", &signers)
        .env(
            "NODEWAVE_ALLOW_PROMETHEUS_URLS",
            "http://prometheus.monitoring:9090",
        )
        .env_remove("NODEWAVE_TRUSTED_GPG_KEYS")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("is signed by SSH key SHA256:") && text.contains("(dev@example.com)"),
        "{text}"
    );

    // Each failure: exit 1 and the reason label first.
    repo.commit(&Sign::No, "unsigned", &[]);
    let (code, out) = validate(&manifests, &both);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(": unsigned: the commit is not signed"),
        "{out}"
    );
    assert!(
        !out.contains("ok: 1 file(s)"),
        "verification fails first: {out}"
    );

    repo.commit(&Sign::Gpg(&gpg, &stranger), "stranger", &[]);
    let (code, out) = validate(&manifests, &both);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(": unknown_key: ") && out.contains(&stranger),
        "{out}"
    );

    let good = repo.commit(&Sign::Gpg(&gpg, &trusted), "good again", &[]);
    repo.forge_from(&good, "tampered");
    let (code, out) = validate(&manifests, &both);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(": bad_signature: "), "{out}");

    // Verified, but the manifests are invalid: still exit 1.
    repo.commit(
        &Sign::Gpg(&gpg, &trusted),
        "broken manifest",
        &[("deploy/fluent-bit.yaml", "kind: [\n")],
    );
    let (code, out) = validate(&manifests, &both);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("verified: commit") && out.contains("yaml-syntax"),
        "{out}"
    );

    // Cannot verify at all: exit 2 with what to fix.
    let (code, out) = validate(&manifests, &["--verify"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("--trusted-gpg-keys FILE and/or --trusted-ssh-signers FILE"),
        "{out}"
    );
    let (code, out) = validate(
        &manifests,
        &["--verify", "--trusted-gpg-keys", "/nonexistent/keys.asc"],
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("cannot read /nonexistent/keys.asc"), "{out}");
    let bad_ring = write(
        keys.path(),
        "private.asc",
        "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nx\n-----END PGP PRIVATE KEY BLOCK-----\n",
    );
    let (code, out) = validate(
        &manifests,
        &["--verify", "--trusted-gpg-keys", bad_ring.to_str().unwrap()],
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("PRIVATE"), "{out}");
    let not_a_repo = tempfile::tempdir().unwrap();
    std::fs::write(not_a_repo.path().join("ds.yaml"), VALID).unwrap();
    let (code, out) = validate(not_a_repo.path(), &both);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("is not inside a Git repository"), "{out}");
}
