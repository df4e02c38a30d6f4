//! Blocking Git access: a bare local clone cache that is fetched incrementally
//! and read from its object database.
//!
//! One [`GitSource`] is owned by one thread (see [`super::worker`]); libgit2
//! objects are not `Sync`, and serialising fetches also means two triggers
//! (poll and webhook) can never race on the same refs.
//!
//! Layout of the cache (a bare repository at `checkout_dir`):
//! - `refs/nodewave/head`: the commit of the tracked branch/tag at the last
//!   successful fetch. It is what [`GitSource::head`] reports after a restart.
//! - `refs/nodewave/fetched`: what the fetch refspec writes (for an annotated
//!   tag this is the tag object).
//! - `refs/nodewave/rewritten/<sha>`: the old head each time history was
//!   rewritten (force push), so that a rollback to a commit that is no longer
//!   on the branch still finds it even if someone runs `git gc` on the cache.
//! - config `nodewave.source`: URL and ref the cache tracks; when either changes
//!   the refs above are reset so that an old head is never reported for a new
//!   source (the objects are kept, they are harmless).
//!
//! Credentials: see [`Credentials`]. Secrets are read at fetch time from files
//! (so a rotated Kubernetes Secret is picked up without a restart) or, as an
//! alternative, from the environment variables [`TOKEN_ENV`] and
//! [`PASSWORD_ENV`]. They never appear in `Debug` output, logs or errors.

use std::cell::RefCell;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use git2::{
    AutotagOption, Direction, ErrorCode, FetchOptions, FetchPrune, ObjectType, Oid, Repository,
    TreeWalkMode, TreeWalkResult,
};

use super::url::{RemoteUrl, Transport, redact_text, redact_url};
use crate::manifest::{FileBudget, LimitExceeded, Limits, ManifestFile};

// Checking a commit out to disk for the renderers (a separate file: files_at and
// fetch are edited by others).
mod materialise;
pub use materialise::{TreeLimits, TreeStats};

/// Token for https remotes, used when no `token_file`/`password_file` is set.
pub const TOKEN_ENV: &str = "NODEWAVE_GIT_TOKEN";
/// Password for https basic auth (with `username`), used when no file and no
/// token is set.
pub const PASSWORD_ENV: &str = "NODEWAVE_GIT_PASSWORD";
/// User name sent with a token when none is configured. GitHub requires this
/// exact name for app installation tokens and accepts it for PATs; GitLab and
/// Gitea accept any non-empty name with a personal access token.
pub const TOKEN_USERNAME: &str = "x-access-token";

/// The local ref holding the last fetched head.
pub const HEAD_REF: &str = "refs/nodewave/head";
const FETCHED_REF: &str = "refs/nodewave/fetched";
const REWRITTEN_PREFIX: &str = "refs/nodewave/rewritten/";
const SOURCE_CONFIG_KEY: &str = "nodewave.source";

/// What to track on the remote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GitRef {
    Branch(String),
    Tag(String),
}

impl GitRef {
    /// Full ref name on the remote, `refs/heads/<b>` or `refs/tags/<t>`.
    pub fn full_name(&self) -> String {
        match self {
            GitRef::Branch(b) => format!("refs/heads/{b}"),
            GitRef::Tag(t) => format!("refs/tags/{t}"),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            GitRef::Branch(_) => "branch",
            GitRef::Tag(_) => "tag",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            GitRef::Branch(n) | GitRef::Tag(n) => n,
        }
    }
}

impl fmt::Display for GitRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind(), self.name())
    }
}

// Credentials and the libgit2 callbacks that use them (host keys, auth).
mod callbacks;
mod credentials;
use callbacks::{CallbackCtx, CallbackState};
pub use credentials::{Credentials, INSECURE_HTTP_OVERRIDE};

/// Everything needed to track one repository.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GitSourceConfig {
    pub url: String,
    pub reference: GitRef,
    /// Sub-path inside the repository; `""` (or `"."`, `"/"`) is the root.
    pub path: String,
    /// Local clone cache (a bare repository); created if missing.
    pub checkout_dir: PathBuf,
    pub credentials: Credentials,
    /// Size limits on a commit's files, checked from object headers before any
    /// blob is inflated (`manifest::Limits::default()` unless configured).
    pub limits: Limits,
}

/// Result of a fetch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FetchOutcome {
    /// Commit the tracked ref points to now.
    pub head: String,
    /// Head before this fetch (`None` on the first fetch into a new cache).
    pub previous: Option<String>,
    /// `head != previous`.
    pub changed: bool,
    /// The new head is not a descendant of the previous one: history was
    /// rewritten (force push, or a tag moved to another line of history).
    pub forced: bool,
}

/// Metadata of one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    pub sha: String,
    /// First line of the message.
    pub summary: String,
    /// Author name (no e-mail: it ends up in annotations and events).
    pub author: String,
    /// Committer time, seconds since the Unix epoch.
    pub time_unix: i64,
    /// Parent commits, first parent first.
    pub parents: Vec<String>,
}

/// Errors of the source. Messages name what to fix and never contain
/// secrets (URLs are shown without `user:pass@`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("invalid git source configuration: {reason}")]
    InvalidConfig { reason: String },
    #[error("cannot reach {url}: {cause}")]
    Unreachable { url: String, cause: String },
    #[error("authentication to {url} failed: {cause}")]
    Auth { url: String, cause: String },
    #[error("git credentials: {cause}")]
    Credentials { cause: String },
    #[error(
        "no known_hosts file is configured, so the SSH host key of {host} cannot be verified; configure a known_hosts file (for example from `ssh-keyscan {host}`)"
    )]
    NoKnownHosts { host: String },
    #[error(
        "host key for {host} is not in {known_hosts} (server offered {key_type} {fingerprint}); {hint}"
    )]
    HostKeyUnknown {
        host: String,
        known_hosts: String,
        key_type: String,
        fingerprint: String,
        hint: String,
    },
    #[error(
        "host key for {host} CHANGED: the server offered {key_type} {fingerprint}, which differs from line {line} of {known_hosts}. This may be a man-in-the-middle attack, so nodewave will not connect. If the key was really rotated, remove the old line (ssh-keygen -R '{host}' -f {known_hosts}) and add the new key"
    )]
    HostKeyChanged {
        host: String,
        known_hosts: String,
        line: usize,
        key_type: String,
        fingerprint: String,
    },
    #[error(
        "host key for {host} ({key_type} {fingerprint}) is marked @revoked on line {line} of {known_hosts}; nodewave will not connect"
    )]
    HostKeyRevoked {
        host: String,
        known_hosts: String,
        line: usize,
        key_type: String,
        fingerprint: String,
    },
    #[error("TLS certificate check for {url} failed: {cause}")]
    Tls { url: String, cause: String },
    #[error("{kind} {name} not found on remote {url}")]
    RefNotFound {
        kind: &'static str,
        name: String,
        url: String,
    },
    #[error("path {path} not found at commit {commit}")]
    PathNotFound { path: String, commit: String },
    #[error(
        "commit {commit} is not in the local clone (it was never fetched, or the cache was deleted)"
    )]
    CommitNotFound { commit: String },
    #[error("commit {commit} is rejected: {exceeded}")]
    LimitExceeded {
        commit: String,
        exceeded: LimitExceeded,
    },
    #[error("{path} at commit {commit}: {reason}")]
    InvalidFile {
        path: String,
        commit: String,
        reason: String,
    },
    #[error("local clone cache {dir}: {cause}")]
    Cache { dir: String, cause: String },
    #[error("{context}: {cause}")]
    Git { context: String, cause: String },
    #[error("the git source worker has stopped")]
    WorkerGone,
    /// A failure reported by the fetch subprocess (see `fetch_process`), with the
    /// label and message of the error it hit.
    #[error("{message}")]
    Remote {
        label: &'static str,
        message: String,
        transient: bool,
    },
}

impl SourceError {
    /// Low-cardinality label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            SourceError::InvalidConfig { .. } => "config",
            SourceError::Unreachable { .. } => "unreachable",
            SourceError::Auth { .. } => "auth",
            SourceError::Credentials { .. } => "credentials",
            SourceError::NoKnownHosts { .. } => "no_known_hosts",
            SourceError::HostKeyUnknown { .. } => "host_key_unknown",
            SourceError::HostKeyChanged { .. } => "host_key_changed",
            SourceError::HostKeyRevoked { .. } => "host_key_revoked",
            SourceError::Tls { .. } => "tls",
            SourceError::RefNotFound { .. } => "ref_not_found",
            SourceError::PathNotFound { .. } => "path_not_found",
            SourceError::CommitNotFound { .. } => "commit_not_found",
            SourceError::LimitExceeded { .. } => "limit_exceeded",
            SourceError::InvalidFile { .. } => "invalid_file",
            SourceError::Cache { .. } => "cache",
            SourceError::Git { .. } => "git",
            SourceError::WorkerGone => "worker_gone",
            SourceError::Remote { label, .. } => label,
        }
    }

    /// Whether retrying later can help without a configuration change
    /// (network trouble), as opposed to errors a human must fix.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SourceError::Unreachable { .. }
                | SourceError::Git { .. }
                | SourceError::Remote {
                    transient: true,
                    ..
                }
        )
    }
}

fn git_error(context: impl Into<String>, e: &git2::Error) -> SourceError {
    SourceError::Git {
        context: context.into(),
        cause: redact_text(e.message()),
    }
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// A tracked repository with its local clone cache.
pub struct GitSource {
    cfg: GitSourceConfig,
    url: RemoteUrl,
    /// Normalised sub-path, no leading/trailing slash, `""` for the root.
    subpath: String,
    repo: Repository,
}

impl fmt::Debug for GitSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitSource")
            .field("url", &self.url.display)
            .field("reference", &self.cfg.reference)
            .field("path", &self.subpath)
            .field("checkout_dir", &self.cfg.checkout_dir)
            .finish_non_exhaustive()
    }
}

impl GitSource {
    /// Opens the local clone cache, creating an empty bare repository if it
    /// does not exist. Does not touch the network.
    pub fn open(cfg: GitSourceConfig) -> Result<Self, SourceError> {
        let url = RemoteUrl::parse(&cfg.url).map_err(|reason| SourceError::InvalidConfig {
            reason: format!("repository URL {}: {reason}", redact_url(&cfg.url)),
        })?;
        validate_ref(&cfg.reference)?;
        let subpath = normalize_subpath(&cfg.path)?;
        cfg.credentials
            .check_transport(&url, &|name| std::env::var(name).ok())?;
        if url.has_password {
            tracing::warn!(
                url = %url.display,
                "the repository URL embeds a password; prefer a token file, the URL is stored in the clone cache"
            );
        }
        let repo = open_or_init(&cfg.checkout_dir)?;
        remove_stale_locks(&cfg.checkout_dir);
        let source = Self {
            cfg,
            url,
            subpath,
            repo,
        };
        source.check_tracked_source()?;
        Ok(source)
    }

    pub fn config(&self) -> &GitSourceConfig {
        &self.cfg
    }

    /// The URL without userinfo, for logs and status.
    pub fn display_url(&self) -> &str {
        &self.url.display
    }

    /// Resets the local refs when the cache was last used for another URL or
    /// ref, so an old head is never reported for a new source.
    fn check_tracked_source(&self) -> Result<(), SourceError> {
        let wanted = format!("{} {}", self.url.display, self.cfg.reference.full_name());
        let dir = self.cfg.checkout_dir.display().to_string();
        let cache_err = |e: git2::Error| SourceError::Cache {
            dir: dir.clone(),
            cause: redact_text(e.message()),
        };
        let mut config = self.repo.config().map_err(cache_err)?;
        let recorded = config.get_string(SOURCE_CONFIG_KEY).ok();
        if recorded.as_deref() == Some(wanted.as_str()) {
            return Ok(());
        }
        if let Some(old) = recorded {
            tracing::info!(old = %old, new = %wanted, "git source changed; forgetting the cached head");
            let refs: Vec<String> = self
                .repo
                .references_glob("refs/nodewave/*")
                .map_err(cache_err)?
                .filter_map(|r| r.ok().and_then(|r| r.name().ok().map(str::to_owned)))
                .collect();
            for name in refs {
                if let Ok(mut r) = self.repo.find_reference(&name) {
                    r.delete().map_err(cache_err)?;
                }
            }
        }
        config
            .set_str(SOURCE_CONFIG_KEY, &wanted)
            .map_err(cache_err)?;
        Ok(())
    }

    /// Last fetched head, read from the local clone (survives restarts).
    pub fn head(&self) -> Option<String> {
        self.head_oid().map(|o| o.to_string())
    }

    fn head_oid(&self) -> Option<Oid> {
        let reference = self.repo.find_reference(HEAD_REF).ok()?;
        Some(reference.peel_to_commit().ok()?.id())
    }

    /// Fetches just the tracked ref, incrementally, into the local cache.
    ///
    /// First lists the remote's refs (like `git ls-remote`); when the tracked
    /// ref still points at a commit we already have, nothing is downloaded,
    /// which keeps polling cheap.
    pub fn fetch(&mut self) -> Result<FetchOutcome, SourceError> {
        let previous = self.head_oid();
        let remote_ref = self.cfg.reference.full_name();
        let ctx = Rc::new(CallbackCtx {
            url: self.url.clone(),
            credentials: self.cfg.credentials.clone(),
            state: RefCell::new(CallbackState::default()),
        });

        // libgit2 reports a missing local path as "unsupported URL protocol".
        if self.url.transport == Transport::Local
            && !self.url.libgit2_url.starts_with("file://")
            && !Path::new(&self.url.libgit2_url).exists()
        {
            return Err(SourceError::Unreachable {
                url: self.url.display.clone(),
                cause: "no such file or directory".to_owned(),
            });
        }
        let mut remote = self
            .repo
            .remote_anonymous(&self.url.libgit2_url)
            .map_err(|e| git_error(format!("cannot use remote {}", self.url.display), &e))?;
        let mut conn = remote
            .connect_auth(Direction::Fetch, Some(ctx.callbacks()), None)
            .map_err(|e| ctx.network_error(&e))?;
        let listed = conn
            .list()
            .map_err(|e| ctx.network_error(&e))?
            .iter()
            .find(|h| h.name() == remote_ref)
            .map(git2::RemoteHead::oid);
        let Some(target) = listed else {
            return Err(SourceError::RefNotFound {
                kind: self.cfg.reference.kind(),
                name: self.cfg.reference.name().to_owned(),
                url: self.url.display.clone(),
            });
        };

        if self.repo.find_object(target, None).is_err() {
            // Each network phase gets its own single attempt per credential
            // type (libgit2 may ask again on the new request).
            ctx.state.borrow_mut().reset_attempts();
            let mut opts = FetchOptions::new();
            opts.remote_callbacks(ctx.callbacks())
                .download_tags(AutotagOption::None)
                .update_fetchhead(false)
                .prune(FetchPrune::Off);
            let refspec = format!("+{remote_ref}:{FETCHED_REF}");
            conn.remote()
                .fetch(
                    &[refspec.as_str()],
                    Some(&mut opts),
                    Some("nodewave: fetch"),
                )
                .map_err(|e| ctx.network_error(&e))?;
        }
        drop(conn);

        let object = self
            .repo
            .find_object(target, None)
            .map_err(|_| SourceError::Git {
                context: format!("fetching {} from {}", self.cfg.reference, self.url.display),
                cause: format!("the remote advertised {target} but did not send it"),
            })?;
        let commit = object.peel_to_commit().map_err(|_| SourceError::Git {
            context: format!("fetching {} from {}", self.cfg.reference, self.url.display),
            cause: format!(
                "{remote_ref} points to a {}, not a commit",
                object.kind().map_or("unknown object", |k| k.str())
            ),
        })?;
        let head = commit.id();

        let changed = previous != Some(head);
        let forced = match previous {
            Some(prev) if changed => !self.descendant_or_equal(head, prev)?,
            _ => false,
        };
        if let (true, Some(prev)) = (forced, previous) {
            tracing::warn!(
                url = %self.url.display,
                reference = %self.cfg.reference,
                previous = %prev,
                head = %head,
                "history was rewritten on the remote (force push); the old head is kept under {REWRITTEN_PREFIX}"
            );
            self.repo
                .reference(
                    &format!("{REWRITTEN_PREFIX}{prev}"),
                    prev,
                    true,
                    "nodewave: keep rewritten history",
                )
                .map_err(|e| git_error("cannot keep the rewritten head", &e))?;
        }
        if changed {
            self.repo
                .reference(HEAD_REF, head, true, "nodewave: fetch")
                .map_err(|e| git_error(format!("cannot update {HEAD_REF}"), &e))?;
            tracing::info!(
                url = %self.url.display,
                reference = %self.cfg.reference,
                head = %head,
                forced,
                "fetched a new head"
            );
        }
        Ok(FetchOutcome {
            head: head.to_string(),
            previous: previous.map(|p| p.to_string()),
            changed,
            forced,
        })
    }

    fn descendant_or_equal(&self, descendant: Oid, ancestor: Oid) -> Result<bool, SourceError> {
        if descendant == ancestor {
            return Ok(true);
        }
        self.repo
            .graph_descendant_of(descendant, ancestor)
            .map_err(|e| git_error("cannot compare commits", &e))
    }

    fn find_commit(&self, commit: &str) -> Result<git2::Commit<'_>, SourceError> {
        let not_found = || SourceError::CommitNotFound {
            commit: commit.to_owned(),
        };
        // Only hex ids: revparse would also accept `HEAD~1`, `main`, ... which
        // mean nothing in this cache.
        if commit.len() < 4 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SourceError::InvalidConfig {
                reason: format!("{commit:?} is not a commit id"),
            });
        }
        let object = self.repo.revparse_single(commit).map_err(|e| {
            if e.code() == ErrorCode::Ambiguous {
                SourceError::InvalidConfig {
                    reason: format!("commit id {commit} is ambiguous; use the full id"),
                }
            } else {
                not_found()
            }
        })?;
        object.peel_to_commit().map_err(|_| not_found())
    }

    /// Every `*.yaml`/`*.yml` file under the configured sub-path at `commit`
    /// (recursive, sorted by path, paths relative to the repository root),
    /// read from the local object database: works while the remote is down.
    ///
    /// Skipped: files and directories whose name starts with `.` (CI
    /// configuration such as `.github/` or `.gitlab-ci.yml` is never a
    /// manifest), symlinks (their target is not in the tree) and submodules.
    /// If the sub-path is itself a YAML file, just that file is returned.
    pub fn files_at(&self, commit: &str) -> Result<Vec<ManifestFile>, SourceError> {
        let commit_obj = self.find_commit(commit)?;
        let sha = commit_obj.id().to_string();
        let root = commit_obj
            .tree()
            .map_err(|e| git_error(format!("cannot read the tree of {}", short(&sha)), &e))?;
        let path_not_found = || SourceError::PathNotFound {
            path: format!("{}/", self.subpath),
            commit: short(&sha).to_owned(),
        };
        let tree = if self.subpath.is_empty() {
            root
        } else {
            let entry = root
                .get_path(Path::new(&self.subpath))
                .map_err(|_| path_not_found())?;
            match entry.kind() {
                Some(ObjectType::Tree) => self
                    .repo
                    .find_tree(entry.id())
                    .map_err(|e| git_error("cannot read tree", &e))?,
                Some(ObjectType::Blob) if is_yaml(&self.subpath) => {
                    let file = self.read_blob(&self.subpath, entry.id(), &sha)?;
                    return Ok(vec![file]);
                }
                _ => {
                    return Err(SourceError::PathNotFound {
                        path: format!("{} (a directory or YAML file)", self.subpath),
                        commit: short(&sha).to_owned(),
                    });
                }
            }
        };

        let prefix = if self.subpath.is_empty() {
            String::new()
        } else {
            format!("{}/", self.subpath)
        };
        let mut files = Vec::new();
        let mut failure = None;
        let mut budget = FileBudget::new(&self.cfg.limits);
        let odb = self
            .repo
            .odb()
            .map_err(|e| git_error("cannot open the object database", &e))?;
        tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
            // Names that are not UTF-8 cannot be manifest paths.
            let Ok(name) = entry.name() else {
                return TreeWalkResult::Skip;
            };
            if name.starts_with('.') {
                return TreeWalkResult::Skip;
            }
            // 0o120000 is a symlink, 0o160000 a submodule (kind Commit).
            if entry.kind() != Some(ObjectType::Blob)
                || entry.filemode() == 0o120_000
                || !is_yaml(name)
            {
                return TreeWalkResult::Ok;
            }
            let path = format!("{prefix}{dir}{name}");
            match self.read_blob_within(&odb, &mut budget, &path, entry.id(), &sha) {
                Ok(file) => {
                    files.push(file);
                    TreeWalkResult::Ok
                }
                Err(e) => {
                    failure = Some(e);
                    TreeWalkResult::Abort
                }
            }
        })
        .or_else(|e| {
            if failure.is_some() {
                Ok(())
            } else {
                Err(git_error("cannot walk the tree", &e))
            }
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(files)
    }

    fn read_blob(&self, path: &str, id: Oid, sha: &str) -> Result<ManifestFile, SourceError> {
        let odb = self
            .repo
            .odb()
            .map_err(|e| git_error("cannot open the object database", &e))?;
        let mut budget = FileBudget::new(&self.cfg.limits);
        self.read_blob_within(&odb, &mut budget, path, id, sha)
    }

    /// Reads one blob after admitting its size, taken from the object header:
    /// a blob over a limit is never inflated.
    fn read_blob_within(
        &self,
        odb: &git2::Odb<'_>,
        budget: &mut FileBudget,
        path: &str,
        id: Oid,
        sha: &str,
    ) -> Result<ManifestFile, SourceError> {
        let invalid = |reason: String| SourceError::InvalidFile {
            path: path.to_owned(),
            commit: short(sha).to_owned(),
            reason,
        };
        let (size, _) = odb
            .read_header(id)
            .map_err(|e| invalid(format!("cannot read: {}", e.message())))?;
        budget
            .admit(path, size)
            .map_err(|exceeded| SourceError::LimitExceeded {
                commit: short(sha).to_owned(),
                exceeded,
            })?;
        let blob = self
            .repo
            .find_blob(id)
            .map_err(|e| invalid(format!("cannot read: {}", e.message())))?;
        let contents = std::str::from_utf8(blob.content())
            .map_err(|_| invalid("not valid UTF-8".to_owned()))?;
        Ok(ManifestFile {
            path: path.to_owned(),
            contents: contents.to_owned(),
        })
    }

    pub fn commit_info(&self, commit: &str) -> Result<CommitInfo, SourceError> {
        let c = self.find_commit(commit)?;
        Ok(CommitInfo {
            sha: c.id().to_string(),
            summary: String::from_utf8_lossy(c.summary_bytes().unwrap_or_default()).into_owned(),
            author: String::from_utf8_lossy(c.author().name_bytes()).into_owned(),
            time_unix: c.time().seconds(),
            parents: c.parent_ids().map(|p| p.to_string()).collect(),
        })
    }

    /// Whether `ancestor` is reachable from `descendant`; a commit is its own
    /// ancestor (as with `git merge-base --is-ancestor`).
    pub fn is_ancestor(&self, ancestor: &str, descendant: &str) -> Result<bool, SourceError> {
        let a = self.find_commit(ancestor)?.id();
        let d = self.find_commit(descendant)?.id();
        self.descendant_or_equal(d, a)
    }
}

impl GitSource {
    /// The signature header of `commit` and the data it signs (see
    /// [`super::signature`]); read from the local clone, no network.
    pub fn commit_signature(
        &self,
        commit: &str,
    ) -> Result<super::signature::CommitSignature, SourceError> {
        let oid = self.find_commit(commit)?.id();
        super::signature::read(&self.repo, oid)
    }
}

fn is_yaml(name: &str) -> bool {
    Path::new(name)
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("yaml") || ext.eq_ignore_ascii_case("yml"))
}

fn validate_ref(reference: &GitRef) -> Result<(), SourceError> {
    let name = reference.name();
    if name.is_empty()
        || name.starts_with("refs/")
        || !git2::Reference::is_valid_name(&reference.full_name())
    {
        return Err(SourceError::InvalidConfig {
            reason: format!(
                "{name:?} is not a valid {} name (give the short name, e.g. main or v1.2.0)",
                reference.kind()
            ),
        });
    }
    Ok(())
}

/// `""`, `"."`, `"/"` → root; strips `./`, leading and trailing `/`;
/// rejects `..` so the path cannot leave the repository.
pub(crate) fn normalize_subpath(path: &str) -> Result<String, SourceError> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(SourceError::InvalidConfig {
                    reason: format!("path {path:?} must not contain '..'"),
                });
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

fn open_or_init(dir: &Path) -> Result<Repository, SourceError> {
    let cache_err = |cause: String| SourceError::Cache {
        dir: dir.display().to_string(),
        cause,
    };
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(|e| cache_err(format!("cannot create: {e}")))?;
        return Repository::init_bare(dir)
            .map_err(|e| cache_err(format!("cannot initialise: {}", e.message())));
    }
    match Repository::open_bare(dir) {
        Ok(repo) => Ok(repo),
        Err(open_err) => {
            let empty = fs::read_dir(dir)
                .map_err(|e| cache_err(format!("cannot read: {e}")))?
                .next()
                .is_none();
            if empty {
                Repository::init_bare(dir)
                    .map_err(|e| cache_err(format!("cannot initialise: {}", e.message())))
            } else {
                Err(cache_err(format!(
                    "exists but is not a bare git repository ({}); point the checkout directory at an empty or nodewave-owned directory, or delete it to re-clone",
                    open_err.message()
                )))
            }
        }
    }
}

/// Lock files left by a crash in the middle of a ref update would make every
/// later update fail. This process is the cache's only user (one worker
/// thread), so at open time any lock is stale.
fn remove_stale_locks(dir: &Path) {
    let candidates = [
        dir.join("refs/nodewave/head.lock"),
        dir.join("refs/nodewave/fetched.lock"),
        dir.join("packed-refs.lock"),
        dir.join("config.lock"),
    ];
    for path in candidates {
        if path.exists() {
            match fs::remove_file(&path) {
                Ok(()) => tracing::warn!(path = %path.display(), "removed a stale git lock file"),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove a stale git lock file");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
