//! The trusted keys, loaded from files and re-read when they change.
//!
//! Keys usually come from a Kubernetes Secret or ConfigMap mounted as files;
//! the kubelet replaces them in place (a symlink swap) when the object
//! changes. [`TrustStore::current`] hashes the files' contents on every call
//! (they are small) and re-parses only what changed, so a rotated key takes
//! effect on the next verification without a restart.
//!
//! Failing closed: when a file that loaded at start later becomes unreadable
//! or invalid, verification fails with that error (nothing is deployed)
//! until the file is fixed; the last good keys are not used, because the
//! edit that broke the file may have been the removal of a compromised key.

use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use jiff::tz::TimeZone;
use sha2::{Digest, Sha256};

use super::openpgp::Keyring;
use super::ssh::AllowedSigners;

/// Largest key file read. GitHub's `<user>.gpg` export is a few KiB per key;
/// this allows thousands of keys while bounding memory.
pub const MAX_KEY_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// Where the trusted keys are (`--trusted-gpg-keys`, `--trusted-ssh-signers`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustFiles {
    /// Armored (or binary) OpenPGP public keys.
    pub openpgp: Option<PathBuf>,
    /// OpenSSH `allowed_signers` file.
    pub ssh: Option<PathBuf>,
}

/// The parsed keys at one point in time.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    pub openpgp: Option<Keyring>,
    pub ssh: Option<AllowedSigners>,
}

impl TrustedKeys {
    /// "2 OpenPGP key(s) from F, 3 SSH signer(s) from G", for logs.
    pub fn summary(&self, files: &TrustFiles) -> String {
        let mut parts = Vec::new();
        if let (Some(ring), Some(path)) = (&self.openpgp, &files.openpgp) {
            parts.push(format!(
                "{} OpenPGP key(s) from {}",
                ring.len(),
                path.display()
            ));
        }
        if let (Some(signers), Some(path)) = (&self.ssh, &files.ssh) {
            parts.push(format!(
                "{} SSH signer(s) from {}",
                signers.len(),
                path.display()
            ));
        }
        parts.join(", ")
    }
}

/// A trust file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error(
        "--verify-commits head needs trusted keys: give --trusted-gpg-keys FILE and/or --trusted-ssh-signers FILE"
    )]
    NoFiles,
    #[error("cannot read {path}: {cause}")]
    Read { path: String, cause: String },
    #[error("{path}: {cause}")]
    Invalid { path: String, cause: String },
}

#[derive(Debug)]
struct Loaded {
    openpgp_hash: Option<[u8; 32]>,
    ssh_hash: Option<[u8; 32]>,
    /// What verification uses: the keys, or why there are none.
    keys: Result<Arc<TrustedKeys>, TrustError>,
    /// Bumped each time the keys (or the error) change.
    generation: u64,
}

/// The trusted keys with change detection; share it with an `Arc`.
pub struct TrustStore {
    files: TrustFiles,
    tz: TimeZone,
    state: Mutex<Loaded>,
}

impl fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustStore")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

fn read_capped(path: &Path) -> Result<Vec<u8>, TrustError> {
    let read_err = |cause: String| TrustError::Read {
        path: path.display().to_string(),
        cause,
    };
    let file = std::fs::File::open(path).map_err(|e| read_err(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| read_err(e.to_string()))?;
    if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(read_err(format!(
            "larger than the {MAX_KEY_FILE_BYTES} byte limit for a key file"
        )));
    }
    Ok(bytes)
}

/// A key file's content and its SHA-256.
struct FileContent {
    bytes: Vec<u8>,
    hash: [u8; 32],
}

fn read_hashed(path: Option<&Path>) -> Result<Option<FileContent>, TrustError> {
    path.map(|p| {
        let bytes = read_capped(p)?;
        let hash = Sha256::digest(&bytes).into();
        Ok(FileContent { bytes, hash })
    })
    .transpose()
}

fn parse_openpgp(path: &Path, bytes: &[u8]) -> Result<Keyring, TrustError> {
    let name = path.display().to_string();
    Keyring::parse(bytes, &name).map_err(|cause| TrustError::Invalid { path: name, cause })
}

fn parse_ssh(path: &Path, bytes: &[u8], tz: &TimeZone) -> Result<AllowedSigners, TrustError> {
    let name = path.display().to_string();
    let text = std::str::from_utf8(bytes).map_err(|_| TrustError::Invalid {
        path: name.clone(),
        cause: "not UTF-8 text".to_owned(),
    })?;
    AllowedSigners::parse(text, &name, tz)
        .map_err(|cause| TrustError::Invalid { path: name, cause })
}

impl TrustStore {
    /// Loads the files; any error is returned (at start-up a bad trust file
    /// is a configuration error, not something to run with).
    pub fn load(files: TrustFiles) -> Result<Self, TrustError> {
        Self::load_in(files, TimeZone::system())
    }

    /// [`TrustStore::load`] with the time zone `allowed_signers` times
    /// without `Z` are read in.
    pub fn load_in(files: TrustFiles, tz: TimeZone) -> Result<Self, TrustError> {
        if files.openpgp.is_none() && files.ssh.is_none() {
            return Err(TrustError::NoFiles);
        }
        let store = Self {
            files,
            tz,
            state: Mutex::new(Loaded {
                openpgp_hash: None,
                ssh_hash: None,
                keys: Err(TrustError::NoFiles),
                generation: 0,
            }),
        };
        store.reload_if_changed()?;
        store.current()?;
        Ok(store)
    }

    pub fn files(&self) -> &TrustFiles {
        &self.files
    }

    /// Re-reads the files and re-parses them when their content changed.
    /// Returns whether anything changed; an unreadable or invalid file is
    /// returned as the error and also becomes what [`TrustStore::current`]
    /// reports (fail closed).
    pub fn reload_if_changed(&self) -> Result<bool, TrustError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let fresh = read_hashed(self.files.openpgp.as_deref())
            .and_then(|o| Ok((o, read_hashed(self.files.ssh.as_deref())?)));
        let (openpgp, ssh) = match fresh {
            Ok(pair) => pair,
            Err(e) => {
                let changed = state.keys.as_ref().err() != Some(&e);
                if changed {
                    state.keys = Err(e.clone());
                    state.openpgp_hash = None;
                    state.ssh_hash = None;
                    state.generation += 1;
                }
                return Err(e);
            }
        };
        let openpgp_hash = openpgp.as_ref().map(|f| f.hash);
        let ssh_hash = ssh.as_ref().map(|f| f.hash);
        if state.keys.is_ok() && state.openpgp_hash == openpgp_hash && state.ssh_hash == ssh_hash {
            return Ok(false);
        }
        let parsed = (|| {
            let ring = match (&self.files.openpgp, &openpgp) {
                (Some(p), Some(f)) => Some(parse_openpgp(p, &f.bytes)?),
                _ => None,
            };
            let signers = match (&self.files.ssh, &ssh) {
                (Some(p), Some(f)) => Some(parse_ssh(p, &f.bytes, &self.tz)?),
                _ => None,
            };
            Ok(TrustedKeys {
                openpgp: ring,
                ssh: signers,
            })
        })();
        let unchanged_error = matches!((&parsed, &state.keys), (Err(a), Err(b)) if a == b);
        state.openpgp_hash = openpgp_hash;
        state.ssh_hash = ssh_hash;
        if unchanged_error {
            return parsed.map(|_| false);
        }
        state.generation += 1;
        match parsed {
            Ok(keys) => {
                tracing::info!(keys = %keys.summary(&self.files), "loaded the trusted keys");
                state.keys = Ok(Arc::new(keys));
                Ok(true)
            }
            Err(e) => {
                tracing::error!(error = %e, "the trusted keys cannot be loaded; no commit verifies until this is fixed");
                state.keys = Err(e.clone());
                Err(e)
            }
        }
    }

    /// The keys to verify with now: re-reads the files first if they changed.
    pub fn current(&self) -> Result<Arc<TrustedKeys>, TrustError> {
        // The error, if any, is also stored as the current state.
        let _ = self.reload_if_changed();
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys
            .clone()
    }

    /// Changes each time the loaded keys (or the load error) change, so a
    /// caller can retry a commit it rejected once the keys changed.
    pub fn generation(&self) -> u64 {
        let _ = self.reload_if_changed();
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti";

    #[test]
    fn no_files_is_a_configuration_error() {
        assert_eq!(
            TrustStore::load(TrustFiles::default()).unwrap_err(),
            TrustError::NoFiles
        );
    }

    #[test]
    fn changes_are_picked_up_and_a_broken_file_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("allowed_signers");
        std::fs::write(&path, format!("alice@example.com {KEY}\n")).unwrap();
        let files = TrustFiles {
            openpgp: None,
            ssh: Some(path.clone()),
        };
        let store = TrustStore::load_in(files, TimeZone::UTC).unwrap();
        let g0 = store.generation();
        assert_eq!(store.current().unwrap().ssh.as_ref().unwrap().len(), 1);
        assert!(!store.reload_if_changed().unwrap());
        assert_eq!(store.generation(), g0);

        std::fs::write(
            &path,
            format!("alice@example.com {KEY}\nbob@example.com {KEY}\n"),
        )
        .unwrap();
        assert_eq!(store.current().unwrap().ssh.as_ref().unwrap().len(), 2);
        let g1 = store.generation();
        assert!(g1 > g0);

        std::fs::write(&path, "garbage line\n").unwrap();
        let e = store.current().unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        let g2 = store.generation();
        assert!(g2 > g1);
        // The same broken content again is no change.
        assert_eq!(store.generation(), g2);

        std::fs::remove_file(&path).unwrap();
        assert!(matches!(store.current(), Err(TrustError::Read { .. })));

        std::fs::write(&path, format!("carol@example.com {KEY}\n")).unwrap();
        assert_eq!(store.current().unwrap().ssh.as_ref().unwrap().len(), 1);
        assert!(store.generation() > g2);
    }

    #[test]
    fn oversized_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.asc");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(MAX_KEY_FILE_BYTES + 1).unwrap();
        let e = TrustStore::load(TrustFiles {
            openpgp: Some(path),
            ssh: None,
        })
        .unwrap_err();
        assert!(e.to_string().contains("byte limit"), "{e}");
    }
}
