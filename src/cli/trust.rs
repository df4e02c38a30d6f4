//! The trusted-key flags shared by `run` and `validate`, and `nodewave
//! validate --verify` (verify a checkout's HEAD the way `run` verifies a
//! commit before deploying it).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::source::signature;
use crate::verify::{self, TrustFiles, TrustStore, VerifyMode};

/// Where the trusted signing keys are.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TrustArgs {
    /// OpenPGP public keys (armored, several blocks allowed, e.g.
    /// https://github.com/<user>.gpg) whose signatures are trusted.
    #[arg(long, env = "NODEWAVE_TRUSTED_GPG_KEYS", value_name = "FILE")]
    pub trusted_gpg_keys: Option<PathBuf>,
    /// OpenSSH allowed_signers file (`principals [namespaces="git"] keytype key`)
    /// listing the trusted SSH signing keys.
    #[arg(long, env = "NODEWAVE_TRUSTED_SSH_SIGNERS", value_name = "FILE")]
    pub trusted_ssh_signers: Option<PathBuf>,
}

impl TrustArgs {
    pub fn files(&self) -> TrustFiles {
        TrustFiles {
            openpgp: self.trusted_gpg_keys.clone(),
            ssh: self.trusted_ssh_signers.clone(),
        }
    }
}

pub fn parse_verify_mode(s: &str) -> Result<VerifyMode, String> {
    s.parse()
}

/// The trust store `run` verifies with: `None` when verification is off.
pub fn trust_store(
    mode: VerifyMode,
    files: &TrustFiles,
) -> Result<Option<Arc<TrustStore>>, String> {
    match mode {
        VerifyMode::Off => {
            if files.openpgp.is_some() || files.ssh.is_some() {
                tracing::warn!(
                    "trusted keys are configured but --verify-commits is off: commits are NOT verified (use --verify-commits head)"
                );
            }
            Ok(None)
        }
        VerifyMode::Head => {
            let store = TrustStore::load(files.clone()).map_err(|e| e.to_string())?;
            let summary = store
                .current()
                .map(|k| k.summary(files))
                .unwrap_or_default();
            tracing::info!(keys = %summary, "verifying commit signatures before deploying (--verify-commits head)");
            Ok(Some(Arc::new(store)))
        }
    }
}

/// `validate --verify`: verifies HEAD of the repository holding `dir`.
/// `Err(exit code)`: 1 when the commit is not verified, 2 when it cannot be
/// checked at all (no trust files, not a repository).
pub fn verify_checkout(dir: &Path, trust: &TrustArgs) -> Result<(), u8> {
    let store = match TrustStore::load(trust.files()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Err(2);
        }
    };
    let signed = match signature::read_head(dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Err(2);
        }
    };
    let short = signed.commit.get(..12).unwrap_or(&signed.commit);
    let keys = match store.current() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {e}");
            return Err(2);
        }
    };
    match verify::verify_commit(&signed, &keys, SystemTime::now()) {
        Ok(signer) => {
            println!("verified: commit {short} is signed by {signer}");
            Ok(())
        }
        Err(u) => {
            println!("unverified: commit {short}: {}", u.report());
            println!(
                "nodewave run --verify-commits head rejects this commit and deploys nothing from it"
            );
            Err(1)
        }
    }
}
