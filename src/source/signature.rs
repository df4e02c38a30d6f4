//! Reading a commit's signature: the `gpgsig` header (git writes OpenPGP and
//! SSH signatures there) and the bytes it signs, exactly as `git verify-commit`
//! sees them. Judging the signature is [`crate::verify`]'s job; this module
//! only gets the bytes out of a repository (the clone cache or a checkout).

use git2::{ErrorCode, ObjectType, Oid, Repository};

use super::SourceError;
use super::url::redact_text;

/// Largest commit object read for verification. Real commits are a few KiB
/// (an RSA-4096 signature adds about 1 KiB); anything near this is a crafted
/// object and reading it whole would only cost memory.
pub const MAX_COMMIT_BYTES: usize = 1024 * 1024;

/// A commit's signature and the data it signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitSignature {
    /// Full commit id.
    pub commit: String,
    /// The `gpgsig` header's value (armored signature), `None` when unsigned.
    pub signature: Option<Vec<u8>>,
    /// The commit object without the signature header: what the signer signed.
    /// For an unsigned commit, the commit object itself.
    pub signed_data: Vec<u8>,
}

/// Reads `commit`'s signature from `repo`'s object database.
pub fn read(repo: &Repository, commit: Oid) -> Result<CommitSignature, SourceError> {
    let sha = commit.to_string();
    let git_err = |e: &git2::Error| SourceError::Git {
        context: format!("cannot read commit {sha}"),
        cause: redact_text(e.message()),
    };
    let odb = repo.odb().map_err(|e| git_err(&e))?;
    let (size, kind) = odb.read_header(commit).map_err(|e| {
        if e.code() == ErrorCode::NotFound {
            SourceError::CommitNotFound {
                commit: sha.clone(),
            }
        } else {
            git_err(&e)
        }
    })?;
    if kind != ObjectType::Commit {
        return Err(SourceError::CommitNotFound { commit: sha });
    }
    if size > MAX_COMMIT_BYTES {
        return Err(SourceError::InvalidFile {
            path: "(commit object)".to_owned(),
            commit: sha,
            reason: format!(
                "{size} bytes is over the {MAX_COMMIT_BYTES} byte limit for a commit object"
            ),
        });
    }
    match repo.extract_signature(&commit, None) {
        Ok((signature, signed)) => Ok(CommitSignature {
            commit: sha,
            signature: Some(signature.to_vec()),
            signed_data: signed.to_vec(),
        }),
        // libgit2 says NotFound both for "no such commit" (ruled out above) and
        // "this commit has no signature header".
        Err(e) if e.code() == ErrorCode::NotFound => {
            let object = odb.read(commit).map_err(|e| git_err(&e))?;
            Ok(CommitSignature {
                commit: sha,
                signature: None,
                signed_data: object.data().to_vec(),
            })
        }
        Err(e) => Err(git_err(&e)),
    }
}

/// Reads the signature of the commit `HEAD` points to in the repository that
/// contains `dir` (a checkout, as `nodewave validate --verify` gets it in CI).
pub fn read_head(dir: &std::path::Path) -> Result<CommitSignature, SourceError> {
    let repo = Repository::discover(dir).map_err(|e| SourceError::InvalidConfig {
        reason: format!(
            "{} is not inside a Git repository: {}",
            dir.display(),
            e.message()
        ),
    })?;
    let head = repo
        .head()
        .and_then(|h| h.peel_to_commit())
        .map_err(|e| SourceError::Git {
            context: format!("cannot resolve HEAD of {}", dir.display()),
            cause: redact_text(e.message()),
        })?;
    read(&repo, head.id())
}
