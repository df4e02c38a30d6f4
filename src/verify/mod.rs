//! Verified commits: decide whether a commit carries a valid signature by a
//! trusted key before anything from it is deployed.
//!
//! - this module: the outcome types ([`Signer`], [`Unverified`] with its
//!   bounded [`Unverified::metric_label`]), the format dispatch
//!   ([`verify_commit`], pure) and [`check_commit`], the one call the service
//!   makes for a commit it is about to load.
//! - [`openpgp`]: keyrings and `gpgsig` OpenPGP signatures (rpgp), with key
//!   expiry, revocation and signing-capability checks (pure).
//! - [`ssh`]: `allowed_signers` files and SSH signatures (namespace `git`,
//!   `ssh-key`'s SSHSIG support) (pure).
//! - [`trust`]: the [`TrustStore`] that loads the key files and re-reads them
//!   when their content changes (IO).
//!
//! What is verified is always the commit object read from the local clone,
//! never anything a webhook sent: a webhook only triggers a fetch.

pub mod openpgp;
pub mod ssh;
pub mod trust;

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::source::{CommitSignature, SourceWorker};

pub use trust::{TrustError, TrustFiles, TrustStore, TrustedKeys};

/// The `reason` label of `nodewave_commit_rejected_total` for every commit
/// rejected by verification (the precise reason is [`Unverified::metric_label`],
/// shown in `/status`, logs and the Event).
pub const REJECT_REASON: &str = "signature";

/// Largest signature header accepted. An RSA-4096 OpenPGP signature is about
/// 1 KiB armored; anything this large is not a signature git wrote.
pub const MAX_SIGNATURE_BYTES: usize = 64 * 1024;

/// `--verify-commits`: what must be signed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VerifyMode {
    /// Nothing is verified (the default).
    #[default]
    Off,
    /// The commit about to be deployed must carry a valid signature by a
    /// trusted key. Its ancestors are not checked: only what is deployed.
    Head,
}

impl std::str::FromStr for VerifyMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Self::Off),
            "head" => Ok(Self::Head),
            other => Err(format!("verify-commits must be off or head, not {other:?}")),
        }
    }
}

/// Which kind of signature git wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureFormat {
    /// `git commit -S` with GnuPG (`-----BEGIN PGP SIGNATURE-----`).
    OpenPgp,
    /// `gpg.format=ssh` (`-----BEGIN SSH SIGNATURE-----`, namespace `git`).
    Ssh,
}

impl fmt::Display for SignatureFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SignatureFormat::OpenPgp => "OpenPGP",
            SignatureFormat::Ssh => "SSH",
        })
    }
}

/// Who signed a verified commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Signer {
    pub format: SignatureFormat,
    /// OpenPGP: the primary key's fingerprint (upper-case hex, what
    /// `gpg --list-keys` shows); SSH: the key's `SHA256:` fingerprint (what
    /// `ssh-keygen -lf` shows).
    pub fingerprint: String,
    /// OpenPGP: the key's primary user ID; SSH: the principals of the
    /// `allowed_signers` line that trusts the key.
    pub identity: String,
    /// OpenPGP: fingerprint of the subkey that made the signature, when it was
    /// a subkey.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subkey: Option<String>,
}

impl fmt::Display for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} key {}", self.format, self.fingerprint)?;
        if let Some(sub) = &self.subkey {
            write!(f, " (subkey {sub})")?;
        }
        write!(f, " ({})", self.identity)
    }
}

/// Why a commit is not verified. Messages say what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unverified {
    #[error(
        "the commit is not signed; with --verify-commits head every deployed commit must be signed by a trusted key (git commit -S)"
    )]
    Unsigned,
    #[error("the commit's signature is in a format nodewave does not verify: {detail}")]
    UnsupportedFormat { detail: String },
    #[error("the commit is signed by {format} key {key}, which is not trusted{hint}")]
    UnknownKey {
        format: SignatureFormat,
        key: String,
        /// Where nodewave looked, or why a listed key does not count.
        hint: String,
    },
    #[error("bad {format} signature: {detail}")]
    BadSignature {
        format: SignatureFormat,
        detail: String,
    },
    #[error("the commit is signed by {format} key {key}, which {detail}")]
    ExpiredKey {
        format: SignatureFormat,
        key: String,
        /// "expired at ..." or "is not valid before ...".
        detail: String,
    },
    #[error("the commit is signed by {format} key {key}, which was revoked{detail}")]
    RevokedKey {
        format: SignatureFormat,
        key: String,
        detail: String,
    },
    #[error(
        "the commit is signed by {format} key {key}, which cannot be used for signing: {detail}"
    )]
    UnusableKey {
        format: SignatureFormat,
        key: String,
        detail: String,
    },
    #[error("the commit's signature expired at {expired_at}")]
    ExpiredSignature { expired_at: String },
    #[error("the trusted keys cannot be loaded, so no commit can be verified: {detail}")]
    KeysUnavailable { detail: String },
    #[error("cannot read the commit's signature: {detail}")]
    Unreadable { detail: String },
}

impl Unverified {
    /// Every value [`Unverified::metric_label`] returns.
    pub const LABELS: &'static [&'static str] = &[
        "unsigned",
        "unsupported_format",
        "unknown_key",
        "bad_signature",
        "expired_key",
        "revoked_key",
        "unusable_key",
        "expired_signature",
        "keys_unavailable",
        "unreadable",
    ];

    /// Low-cardinality label for logs and metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Unverified::Unsigned => "unsigned",
            Unverified::UnsupportedFormat { .. } => "unsupported_format",
            Unverified::UnknownKey { .. } => "unknown_key",
            Unverified::BadSignature { .. } => "bad_signature",
            Unverified::ExpiredKey { .. } => "expired_key",
            Unverified::RevokedKey { .. } => "revoked_key",
            Unverified::UnusableKey { .. } => "unusable_key",
            Unverified::ExpiredSignature { .. } => "expired_signature",
            Unverified::KeysUnavailable { .. } => "keys_unavailable",
            Unverified::Unreadable { .. } => "unreadable",
        }
    }

    /// The message as `/status`, logs and Events show it: `<label>: <message>`,
    /// so the precise reason is machine-readable next to reason="signature".
    pub fn report(&self) -> String {
        format!("{}: {self}", self.metric_label())
    }
}

const PGP_BEGIN: &[u8] = b"-----BEGIN PGP SIGNATURE-----";
const SSH_BEGIN: &[u8] = b"-----BEGIN SSH SIGNATURE-----";
/// gpgsm (`gpg.format=x509`).
const X509_BEGIN: &[u8] = b"-----BEGIN SIGNED MESSAGE-----";

/// Decides whether `commit` is signed by one of `keys`, at time `now`. Pure.
pub fn verify_commit(
    commit: &CommitSignature,
    keys: &TrustedKeys,
    now: SystemTime,
) -> Result<Signer, Unverified> {
    let Some(signature) = commit.signature.as_deref() else {
        return Err(Unverified::Unsigned);
    };
    let trimmed = signature.trim_ascii_start();
    let format = if trimmed.starts_with(PGP_BEGIN) {
        SignatureFormat::OpenPgp
    } else if trimmed.starts_with(SSH_BEGIN) {
        SignatureFormat::Ssh
    } else if trimmed.starts_with(X509_BEGIN) {
        return Err(Unverified::UnsupportedFormat {
            detail: "an X.509 (gpgsm) signature; sign with OpenPGP or SSH keys".to_owned(),
        });
    } else {
        return Err(Unverified::UnsupportedFormat {
            detail: "the gpgsig header is neither an OpenPGP nor an SSH signature".to_owned(),
        });
    };
    if signature.len() > MAX_SIGNATURE_BYTES {
        return Err(Unverified::BadSignature {
            format,
            detail: format!(
                "the signature header is {} bytes, over the {MAX_SIGNATURE_BYTES} byte limit",
                signature.len()
            ),
        });
    }
    let now_secs = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    match format {
        SignatureFormat::OpenPgp => match &keys.openpgp {
            Some(ring) => openpgp::verify(trimmed, &commit.signed_data, ring, now_secs),
            None => Err(Unverified::UnknownKey {
                format,
                key: openpgp::issuer_of(trimmed).unwrap_or_else(|| "(unknown)".to_owned()),
                hint: "; no OpenPGP keyring is configured (--trusted-gpg-keys)".to_owned(),
            }),
        },
        SignatureFormat::Ssh => match &keys.ssh {
            Some(signers) => ssh::verify(trimmed, &commit.signed_data, signers, now_secs),
            None => Err(Unverified::UnknownKey {
                format,
                key: ssh::key_of(trimmed).unwrap_or_else(|| "(unknown)".to_owned()),
                hint: "; no allowed_signers file is configured (--trusted-ssh-signers)".to_owned(),
            }),
        },
    }
}

/// Verifies `commit` (read from the local clone through `worker`) against the
/// trusted keys, re-reading the key files first if they changed. This is the
/// call to make before a commit's content is loaded for deployment; a commit
/// nodewave deployed before (a rollback target) needs none.
pub async fn check_commit(
    worker: &SourceWorker,
    trust: &TrustStore,
    commit: &str,
) -> Result<Signer, Unverified> {
    let signed = worker
        .commit_signature(commit.to_owned())
        .await
        .map_err(|e| Unverified::Unreadable {
            detail: e.to_string(),
        })?;
    // Reading two small files and one signature check take well under a
    // millisecond (see the README), so this stays on the async thread.
    let keys = trust.current().map_err(|e| Unverified::KeysUnavailable {
        detail: e.to_string(),
    })?;
    verify_commit(&signed, &keys, SystemTime::now())
}

/// Seconds since the epoch as an RFC 3339 UTC time, for messages.
pub(crate) fn format_time(secs: i64) -> String {
    jiff::Timestamp::from_second(secs).map_or_else(|_| format!("@{secs}"), |t| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(signature: Option<&str>) -> CommitSignature {
        CommitSignature {
            commit: "0".repeat(40),
            signature: signature.map(|s| s.as_bytes().to_vec()),
            signed_data: b"tree 0\n\nmessage\n".to_vec(),
        }
    }

    #[test]
    fn every_outcome_has_its_own_bounded_label() {
        let all = [
            Unverified::Unsigned,
            Unverified::UnsupportedFormat { detail: "x".into() },
            Unverified::UnknownKey {
                format: SignatureFormat::Ssh,
                key: "k".into(),
                hint: String::new(),
            },
            Unverified::BadSignature {
                format: SignatureFormat::OpenPgp,
                detail: "x".into(),
            },
            Unverified::ExpiredKey {
                format: SignatureFormat::OpenPgp,
                key: "k".into(),
                detail: "expired".into(),
            },
            Unverified::RevokedKey {
                format: SignatureFormat::OpenPgp,
                key: "k".into(),
                detail: String::new(),
            },
            Unverified::UnusableKey {
                format: SignatureFormat::OpenPgp,
                key: "k".into(),
                detail: "x".into(),
            },
            Unverified::ExpiredSignature {
                expired_at: "t".into(),
            },
            Unverified::KeysUnavailable { detail: "x".into() },
            Unverified::Unreadable { detail: "x".into() },
        ];
        let labels: Vec<&str> = all.iter().map(Unverified::metric_label).collect();
        assert_eq!(labels, Unverified::LABELS);
        assert!(
            all[0]
                .report()
                .starts_with("unsigned: the commit is not signed")
        );
    }

    #[test]
    fn format_is_told_apart_before_any_key_is_needed() {
        let keys = TrustedKeys::default();
        let now = SystemTime::now();
        assert_eq!(
            verify_commit(&commit(None), &keys, now),
            Err(Unverified::Unsigned)
        );
        let x509 = "-----BEGIN SIGNED MESSAGE-----\nMIAG\n-----END SIGNED MESSAGE-----\n";
        let e = verify_commit(&commit(Some(x509)), &keys, now).unwrap_err();
        assert_eq!(e.metric_label(), "unsupported_format");
        assert!(e.to_string().contains("X.509"), "{e}");
        let e = verify_commit(&commit(Some("hello")), &keys, now).unwrap_err();
        assert_eq!(e.metric_label(), "unsupported_format");

        // A real format without the matching trust file names the flag.
        let pgp = "-----BEGIN PGP SIGNATURE-----\n\n-----END PGP SIGNATURE-----\n";
        let e = verify_commit(&commit(Some(pgp)), &keys, now).unwrap_err();
        assert_eq!(e.metric_label(), "unknown_key");
        assert!(e.to_string().contains("--trusted-gpg-keys"), "{e}");
        let ssh = "-----BEGIN SSH SIGNATURE-----\n-----END SSH SIGNATURE-----\n";
        let e = verify_commit(&commit(Some(ssh)), &keys, now).unwrap_err();
        assert!(e.to_string().contains("--trusted-ssh-signers"), "{e}");
    }

    #[test]
    fn oversized_signature_headers_are_refused_unparsed() {
        let mut big = String::from("-----BEGIN SSH SIGNATURE-----\n");
        big.push_str(&"A".repeat(MAX_SIGNATURE_BYTES));
        let e = verify_commit(
            &commit(Some(&big)),
            &TrustedKeys::default(),
            SystemTime::now(),
        )
        .unwrap_err();
        assert_eq!(e.metric_label(), "bad_signature");
        assert!(e.to_string().contains("byte limit"), "{e}");
    }

    #[test]
    fn verify_mode_parses() {
        assert_eq!("off".parse::<VerifyMode>(), Ok(VerifyMode::Off));
        assert_eq!("head".parse::<VerifyMode>(), Ok(VerifyMode::Head));
        assert!(
            "all"
                .parse::<VerifyMode>()
                .unwrap_err()
                .contains("off or head")
        );
    }
}
