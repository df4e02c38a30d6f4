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
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, Direction, ErrorClass, ErrorCode,
    FetchOptions, FetchPrune, ObjectType, Oid, RemoteCallbacks, Repository, TreeWalkMode,
    TreeWalkResult,
};

use super::known_hosts::{self, HostKeyStatus, KnownHosts};
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

/// Where to find secrets. Only paths are held here; contents are read at
/// fetch time and dropped right after, so `Debug` is safe to derive.
///
/// https: `token_file` (sent as the password, with `username` or
/// [`TOKEN_USERNAME`]), else `password_file` with `username` (or the user in
/// the URL), else the environment variables [`TOKEN_ENV`], [`PASSWORD_ENV`].
/// File contents have trailing newlines removed. There is deliberately no way
/// to pass a secret on the command line (it would show in `ps`).
///
/// ssh: `ssh_key_file` (OpenSSH or PEM private key, optionally encrypted
/// with the passphrase in `ssh_key_passphrase_file`); the user is the one in
/// the URL, else `git`. Host keys are verified against `known_hosts_file`;
/// unknown hosts are refused unless `accept_new_host_keys` (then the key is
/// appended to that file); changed keys are always refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Credentials {
    pub token_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub ssh_key_file: Option<PathBuf>,
    pub ssh_key_passphrase_file: Option<PathBuf>,
    pub known_hosts_file: Option<PathBuf>,
    pub accept_new_host_keys: bool,
    /// Send the https token/password to a plain `http://` remote too
    /// (`--insecure-allow-http-credentials`). Off: such a configuration is
    /// refused before anything is sent, because anyone on the path could read
    /// the secret.
    pub insecure_allow_http: bool,
}

/// A secret value; never printed.
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// User name and password/token for https.
#[derive(Debug)]
pub(crate) struct HttpsAuth {
    username: String,
    secret: Secret,
}

impl Credentials {
    /// Resolves https credentials. `env` looks up an environment variable
    /// (injected so tests do not depend on the process environment).
    pub(crate) fn https_auth(
        &self,
        url_user: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<HttpsAuth>, SourceError> {
        let token_user = || {
            self.username
                .clone()
                .or_else(|| url_user.map(str::to_owned))
                .unwrap_or_else(|| TOKEN_USERNAME.to_owned())
        };
        let basic_user = |source: &str| {
            self.username
                .clone()
                .or_else(|| url_user.map(str::to_owned))
                .ok_or_else(|| SourceError::Credentials {
                    cause: format!(
                        "{source} is set but no username is configured (set the git username, or use a token)"
                    ),
                })
        };
        if let Some(path) = &self.token_file {
            return Ok(Some(HttpsAuth {
                username: token_user(),
                secret: read_secret_file(path)?,
            }));
        }
        if let Some(path) = &self.password_file {
            let username = basic_user(&format!("password file {}", path.display()))?;
            return Ok(Some(HttpsAuth {
                username,
                secret: read_secret_file(path)?,
            }));
        }
        if let Some(token) = env(TOKEN_ENV).filter(|v| !v.trim().is_empty()) {
            return Ok(Some(HttpsAuth {
                username: token_user(),
                secret: Secret(token.trim_end_matches(['\r', '\n']).to_owned()),
            }));
        }
        if let Some(password) = env(PASSWORD_ENV).filter(|v| !v.is_empty()) {
            let username = basic_user(PASSWORD_ENV)?;
            return Ok(Some(HttpsAuth {
                username,
                secret: Secret(password.trim_end_matches(['\r', '\n']).to_owned()),
            }));
        }
        Ok(None)
    }
}

impl Credentials {
    /// Refuses, before anything is sent, a configuration that would hand a
    /// token or password to a plain `http://` remote (issue 10): anyone on the
    /// network path could read it. Looks only at where credentials would come
    /// from (files are not read). `env` as in [`Credentials::https_auth`].
    pub(crate) fn check_transport(
        &self,
        url: &RemoteUrl,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), SourceError> {
        if url.transport != Transport::Http || self.insecure_allow_http {
            return Ok(());
        }
        let set = |name: &str| env(name).is_some_and(|v| !v.trim().is_empty());
        let what = if url.has_password {
            "the password embedded in the URL".to_owned()
        } else if let Some(p) = &self.token_file {
            format!("the token from {}", p.display())
        } else if let Some(p) = &self.password_file {
            format!("the password from {}", p.display())
        } else if set(TOKEN_ENV) {
            format!("the token from {TOKEN_ENV}")
        } else if set(PASSWORD_ENV) {
            format!("the password from {PASSWORD_ENV}")
        } else {
            return Ok(());
        };
        Err(plain_http_refusal(&what, &url.display))
    }
}

/// The flag, environment variable and config key that allow credentials over
/// plain http, as named in errors.
pub const INSECURE_HTTP_OVERRIDE: &str = "--insecure-allow-http-credentials (NODEWAVE_INSECURE_ALLOW_HTTP_CREDENTIALS=true, or insecure-allow-http-credentials = true in the config file)";

fn plain_http_refusal(what: &str, display: &str) -> SourceError {
    SourceError::InvalidConfig {
        reason: format!(
            "refusing to send {what} to {display} over plain http://, where anyone on the network path can read it; use the repository's https:// URL, or, only on a network you trust, set {INSECURE_HTTP_OVERRIDE}"
        ),
    }
}

/// Whether the URL libgit2 is about to authenticate against is plain http
/// (the configured URL, or where a server redirected to).
fn is_plain_http(url: &str) -> bool {
    url.get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http://"))
}

fn read_secret_file(path: &Path) -> Result<Secret, SourceError> {
    let text = fs::read_to_string(path).map_err(|e| SourceError::Credentials {
        cause: format!("cannot read {}: {e}", path.display()),
    })?;
    let value = text.trim_end_matches(['\r', '\n']);
    if value.is_empty() {
        return Err(SourceError::Credentials {
            cause: format!("{} is empty", path.display()),
        });
    }
    Ok(Secret(value.to_owned()))
}

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

/// State shared by the libgit2 callbacks of one fetch. The callbacks can only
/// return a `git2::Error` (a string); the precise, actionable error is kept
/// here and preferred when the operation fails.
#[derive(Default)]
struct CallbackState {
    host_key_error: Option<SourceError>,
    auth_error: Option<SourceError>,
    tried_username: bool,
    tried_ssh_key: bool,
    tried_userpass: bool,
    /// An SSH key was handed to libssh2 during this fetch: libssh2 only reads
    /// the file then, so a bad file or passphrase fails after the callback.
    offered_ssh_key: bool,
}

impl CallbackState {
    fn reset_attempts(&mut self) {
        self.tried_username = false;
        self.tried_ssh_key = false;
        self.tried_userpass = false;
    }
}

struct CallbackCtx {
    url: RemoteUrl,
    credentials: Credentials,
    state: RefCell<CallbackState>,
}

impl CallbackCtx {
    fn callbacks(self: &Rc<Self>) -> RemoteCallbacks<'static> {
        let mut cbs = RemoteCallbacks::new();
        let ctx = Rc::clone(self);
        cbs.credentials(move |url, user_from_url, allowed| {
            ctx.credentials_for(url, user_from_url, allowed)
        });
        let ctx = Rc::clone(self);
        cbs.certificate_check(move |cert, _hostname| {
            // x509 (https): keep libgit2's normal verification against the
            // system CA store.
            let Some(hostkey) = cert.as_hostkey() else {
                return Ok(CertificateCheckStatus::CertificatePassthrough);
            };
            let verdict = match (hostkey.hostkey(), hostkey.hostkey_type()) {
                (Some(key), Some(key_type)) => ctx.verify_host_key(key_type.name(), key),
                _ => Err(SourceError::Git {
                    context: format!("connecting to {}", ctx.url.display),
                    cause: "the SSH library did not provide the server's host key".to_owned(),
                }),
            };
            match verdict {
                Ok(()) => Ok(CertificateCheckStatus::CertificateOk),
                Err(e) => {
                    let message = e.to_string();
                    ctx.state.borrow_mut().host_key_error = Some(e);
                    Err(git2::Error::from_str(&message))
                }
            }
        });
        cbs
    }

    fn verify_host_key(&self, key_type: &str, key: &[u8]) -> Result<(), SourceError> {
        let host = self.url.host.clone().unwrap_or_default();
        let port = self.url.ssh_port();
        let name = known_hosts::lookup_name(&host, port);
        let Some(path) = &self.credentials.known_hosts_file else {
            return Err(SourceError::NoKnownHosts { host: name });
        };
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(SourceError::Credentials {
                    cause: format!("cannot read known_hosts file {}: {e}", path.display()),
                });
            }
        };
        let known = KnownHosts::parse(&text);
        if !known.skipped_lines.is_empty() {
            tracing::warn!(
                file = %path.display(),
                lines = ?known.skipped_lines,
                "ignored unparseable known_hosts lines"
            );
        }
        let fingerprint = known_hosts::fingerprint(key);
        let keyscan = if port == 22 {
            format!("ssh-keyscan -t {key_type} {host} >> {}", path.display())
        } else {
            format!(
                "ssh-keyscan -t {key_type} -p {port} {host} >> {}",
                path.display()
            )
        };
        match known.check(&host, port, key_type, key) {
            HostKeyStatus::Trusted => Ok(()),
            HostKeyStatus::Unknown if self.credentials.accept_new_host_keys => {
                append_known_host(path, &known_hosts::format_line(&host, port, key_type, key))
                    .map_err(|e| SourceError::Credentials {
                        cause: format!(
                            "cannot record the new host key of {name} in {}: {e}",
                            path.display()
                        ),
                    })?;
                tracing::warn!(
                    host = %name,
                    key_type,
                    fingerprint = %fingerprint,
                    file = %path.display(),
                    "accepted and recorded a new SSH host key (trust on first use)"
                );
                Ok(())
            }
            HostKeyStatus::Unknown => Err(SourceError::HostKeyUnknown {
                host: name,
                known_hosts: path.display().to_string(),
                key_type: key_type.to_owned(),
                fingerprint,
                hint: format!(
                    "add it with ssh-keyscan (`{keyscan}`, then compare the fingerprint with the one your Git host publishes), or enable --git-accept-new-host-keys"
                ),
            }),
            HostKeyStatus::OtherKeyTypes { known_types } => Err(SourceError::HostKeyUnknown {
                host: name,
                known_hosts: path.display().to_string(),
                key_type: key_type.to_owned(),
                fingerprint,
                hint: format!(
                    "the file only has {} key(s) for this host; add the server's {key_type} key (`{keyscan}`). New key types are not accepted automatically for a known host",
                    known_types.join(", ")
                ),
            }),
            HostKeyStatus::Changed { line } => Err(SourceError::HostKeyChanged {
                host: name,
                known_hosts: path.display().to_string(),
                line,
                key_type: key_type.to_owned(),
                fingerprint,
            }),
            HostKeyStatus::Revoked { line } => Err(SourceError::HostKeyRevoked {
                host: name,
                known_hosts: path.display().to_string(),
                line,
                key_type: key_type.to_owned(),
                fingerprint,
            }),
        }
    }

    /// libgit2 calls this again and again while the server rejects what it is
    /// given; each credential type is offered once per network phase, then
    /// the fetch fails with a clear error instead of looping.
    fn credentials_for(
        &self,
        request_url: &str,
        user_from_url: Option<&str>,
        allowed: CredentialType,
    ) -> Result<Cred, git2::Error> {
        let result = self.pick_credentials(request_url, user_from_url, allowed);
        result.map_err(|e| {
            let message = e.to_string();
            let mut state = self.state.borrow_mut();
            if state.auth_error.is_none() {
                state.auth_error = Some(e);
            }
            git2::Error::from_str(&message)
        })
    }

    fn pick_credentials(
        &self,
        request_url: &str,
        user_from_url: Option<&str>,
        allowed: CredentialType,
    ) -> Result<Cred, SourceError> {
        let url = self.url.display.clone();
        let auth = |cause: String| SourceError::Auth {
            url: url.clone(),
            cause,
        };
        let creds = &self.credentials;
        let user_from_url = user_from_url.or(self.url.user.as_deref());
        let ssh_user = user_from_url.unwrap_or("git");
        let mut state = self.state.borrow_mut();

        if allowed.contains(CredentialType::USERNAME) {
            if state.tried_username {
                return Err(auth(format!(
                    "the server rejected the user name {ssh_user}"
                )));
            }
            state.tried_username = true;
            return Cred::username(ssh_user).map_err(|e| auth(e.message().to_owned()));
        }
        if allowed.contains(CredentialType::SSH_KEY)
            && let Some(key) = &creds.ssh_key_file
        {
            if state.tried_ssh_key {
                return Err(auth(format!(
                    "the server rejected the SSH key {} for user {ssh_user} (is its public key registered as a deploy key with read access?)",
                    key.display()
                )));
            }
            state.tried_ssh_key = true;
            state.offered_ssh_key = true;
            // Checked here because libssh2 reports a missing file as a vague
            // authentication failure.
            fs::metadata(key).map_err(|e| SourceError::Credentials {
                cause: format!("cannot read SSH key {}: {e}", key.display()),
            })?;
            let passphrase = match &creds.ssh_key_passphrase_file {
                Some(p) => Some(read_secret_file(p)?),
                None => None,
            };
            return Cred::ssh_key(
                ssh_user,
                None,
                key,
                passphrase.as_ref().map(|s| s.0.as_str()),
            )
            .map_err(|e| {
                auth(format!(
                    "cannot use SSH key {}: {}",
                    key.display(),
                    e.message()
                ))
            });
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            let env = |name: &str| std::env::var(name).ok();
            if let Some(found) = creds.https_auth(user_from_url, &env)? {
                // `open` refused this configuration for an http:// URL; this
                // catches what it cannot see: a redirect to http, or a token
                // variable set after start.
                if is_plain_http(request_url) && !creds.insecure_allow_http {
                    return Err(plain_http_refusal(
                        &format!("the credentials for user {}", found.username),
                        &redact_url(request_url),
                    ));
                }
                if state.tried_userpass {
                    return Err(auth(format!(
                        "the server rejected the credentials for user {} (wrong or expired token/password, or no read access to the repository)",
                        found.username
                    )));
                }
                state.tried_userpass = true;
                return Cred::userpass_plaintext(&found.username, &found.secret.0)
                    .map_err(|e| auth(e.message().to_owned()));
            }
        }
        if self.url.transport == Transport::Ssh {
            Err(auth(
                "the server requires authentication but no SSH key is configured".to_owned(),
            ))
        } else {
            Err(auth(format!(
                "the server requires credentials but none are configured (set a token file or the {TOKEN_ENV} environment variable)"
            )))
        }
    }

    /// Turns a failed network operation into the most precise error we know.
    fn network_error(&self, e: &git2::Error) -> SourceError {
        let mut state = self.state.borrow_mut();
        if let Some(err) = state.host_key_error.take() {
            return err;
        }
        if let Some(err) = state.auth_error.take() {
            return err;
        }
        let mut cause = redact_text(e.message());
        if state.offered_ssh_key
            && e.class() == ErrorClass::Ssh
            && is_key_file_error(e.message())
            && let Some(key) = &self.credentials.ssh_key_file
        {
            return self.ssh_key_file_error(key, &cause);
        }
        let url = self.url.display.clone();
        match e.code() {
            ErrorCode::Auth => SourceError::Auth { url, cause },
            ErrorCode::Certificate => SourceError::Tls { url, cause },
            _ => {
                if cause.contains("404") {
                    cause.push_str(
                        " (does the repository exist, and do the credentials grant read access? Some hosts answer 404 for private repositories without access)",
                    );
                }
                SourceError::Unreachable { url, cause }
            }
        }
    }

    /// libssh2 could not load the private key (wrong or missing passphrase,
    /// not a private key, unsupported format). Without this, the error would
    /// read like a network failure (`unreachable`, transient).
    fn ssh_key_file_error(&self, key: &Path, cause: &str) -> SourceError {
        let hint = match &self.credentials.ssh_key_passphrase_file {
            Some(p) => format!(
                "check that {} holds this key's passphrase and that the key is an OpenSSH or PEM private key",
                p.display()
            ),
            None => "if the key is encrypted, configure its passphrase file (--git-ssh-passphrase-file); the key must be an OpenSSH or PEM private key".to_owned(),
        };
        SourceError::Credentials {
            cause: format!("cannot use SSH key {}: {cause}; {hint}", key.display()),
        }
    }
}

/// Messages of libssh2 failing to read or decrypt a private key file (as
/// opposed to the server rejecting the key, which libgit2 reports as
/// `ErrorCode::Auth` and which goes through the credentials callback again).
fn is_key_file_error(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    ["private key", "passphrase", "key file", "public key from"]
        .iter()
        .any(|needle| m.contains(needle))
}

fn append_known_host(path: &Path, line: &str) -> std::io::Result<()> {
    let needs_newline = match fs::read(path) {
        Ok(existing) => !existing.is_empty() && !existing.ends_with(b"\n"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    };
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        fs::create_dir_all(parent)?;
    }
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    if needs_newline {
        file.write_all(b"\n")?;
    }
    file.write_all(line.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn token_file_is_trimmed_and_uses_default_user() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        fs::write(&token, "ghp_abc\n").unwrap();
        let creds = Credentials {
            token_file: Some(token),
            ..Credentials::default()
        };
        let auth = creds.https_auth(None, &no_env).unwrap().unwrap();
        assert_eq!(auth.username, TOKEN_USERNAME);
        assert_eq!(auth.secret.0, "ghp_abc");
        // Debug never shows the secret.
        assert!(!format!("{auth:?}").contains("ghp_abc"));
    }

    #[test]
    fn password_file_needs_a_username() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        fs::write(&pw, "hunter2\r\n").unwrap();
        let mut creds = Credentials {
            password_file: Some(pw),
            ..Credentials::default()
        };
        let err = creds.https_auth(None, &no_env).unwrap_err();
        assert_eq!(err.metric_label(), "credentials");
        assert!(!err.to_string().contains("hunter2"));
        // The user in the URL is enough.
        let auth = creds.https_auth(Some("bob"), &no_env).unwrap().unwrap();
        assert_eq!(auth.username, "bob");
        creds.username = Some("alice".into());
        let auth = creds.https_auth(Some("bob"), &no_env).unwrap().unwrap();
        assert_eq!(auth.username, "alice");
        assert_eq!(auth.secret.0, "hunter2");
    }

    #[test]
    fn env_vars_are_the_fallback() {
        let env = |name: &str| (name == TOKEN_ENV).then(|| "tok\n".to_owned());
        let auth = Credentials::default()
            .https_auth(None, &env)
            .unwrap()
            .unwrap();
        assert_eq!(auth.secret.0, "tok");
        let env = |name: &str| (name == PASSWORD_ENV).then(|| "pw".to_owned());
        let creds = Credentials {
            username: Some("u".into()),
            ..Credentials::default()
        };
        let auth = creds.https_auth(None, &env).unwrap().unwrap();
        assert_eq!(
            (auth.username.as_str(), auth.secret.0.as_str()),
            ("u", "pw")
        );
        assert!(
            Credentials::default()
                .https_auth(None, &no_env)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn empty_or_missing_secret_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        fs::write(&empty, "\n").unwrap();
        for path in [empty, dir.path().join("missing")] {
            let creds = Credentials {
                token_file: Some(path.clone()),
                ..Credentials::default()
            };
            let err = creds.https_auth(None, &no_env).unwrap_err();
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{err}"
            );
        }
    }

    #[test]
    fn subpath_normalisation() {
        assert_eq!(normalize_subpath("").unwrap(), "");
        assert_eq!(normalize_subpath(".").unwrap(), "");
        assert_eq!(normalize_subpath("/").unwrap(), "");
        assert_eq!(normalize_subpath("./deploy/").unwrap(), "deploy");
        assert_eq!(normalize_subpath("/a//b/").unwrap(), "a/b");
        assert!(normalize_subpath("a/../../etc").is_err());
    }

    #[test]
    fn ref_validation() {
        assert!(validate_ref(&GitRef::Branch("main".into())).is_ok());
        assert!(validate_ref(&GitRef::Tag("v1.2.0".into())).is_ok());
        assert!(validate_ref(&GitRef::Branch(String::new())).is_err());
        assert!(validate_ref(&GitRef::Branch("refs/heads/main".into())).is_err());
        assert!(validate_ref(&GitRef::Branch("a..b".into())).is_err());
        assert!(validate_ref(&GitRef::Branch("with space".into())).is_err());
    }

    #[test]
    fn error_messages_are_actionable() {
        let e = SourceError::HostKeyUnknown {
            host: "github.com".into(),
            known_hosts: "/etc/nodewave/known_hosts".into(),
            key_type: "ssh-ed25519".into(),
            fingerprint: "SHA256:abc".into(),
            hint: "add it with ssh-keyscan, or enable --git-accept-new-host-keys".into(),
        };
        assert_eq!(
            e.to_string(),
            "host key for github.com is not in /etc/nodewave/known_hosts (server offered ssh-ed25519 SHA256:abc); add it with ssh-keyscan, or enable --git-accept-new-host-keys"
        );
        let e = SourceError::RefNotFound {
            kind: "branch",
            name: "main".into(),
            url: "https://github.com/o/r".into(),
        };
        assert_eq!(
            e.to_string(),
            "branch main not found on remote https://github.com/o/r"
        );
        assert_eq!(e.metric_label(), "ref_not_found");
    }

    fn ssh_ctx(known_hosts: Option<PathBuf>, accept_new: bool) -> CallbackCtx {
        CallbackCtx {
            url: RemoteUrl::parse("ssh://git@git.example.com:2222/org/repo.git").unwrap(),
            credentials: Credentials {
                known_hosts_file: known_hosts,
                accept_new_host_keys: accept_new,
                ..Credentials::default()
            },
            state: RefCell::new(CallbackState::default()),
        }
    }

    const KEY: &[u8] = b"\0\0\0\x0bssh-ed25519\0\0\0\x20aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const OTHER_KEY: &[u8] = b"\0\0\0\x0bssh-ed25519\0\0\0\x20bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn host_key_verification_decisions() {
        let dir = tempfile::tempdir().unwrap();
        let kh = dir.path().join("known_hosts");

        // No file configured: refused.
        let err = ssh_ctx(None, true)
            .verify_host_key("ssh-ed25519", KEY)
            .unwrap_err();
        assert_eq!(err.metric_label(), "no_known_hosts");
        assert!(err.to_string().contains("[git.example.com]:2222"), "{err}");

        // Unknown host, file missing: refused with an ssh-keyscan hint.
        let err = ssh_ctx(Some(kh.clone()), false)
            .verify_host_key("ssh-ed25519", KEY)
            .unwrap_err();
        assert_eq!(err.metric_label(), "host_key_unknown");
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "host key for [git.example.com]:2222 is not in {}",
                kh.display()
            )),
            "{msg}"
        );
        assert!(
            msg.contains("ssh-keyscan -t ssh-ed25519 -p 2222 git.example.com"),
            "{msg}"
        );
        assert!(msg.contains("--git-accept-new-host-keys"), "{msg}");
        assert!(!kh.exists());

        // accept_new: recorded, then trusted without accept_new.
        ssh_ctx(Some(kh.clone()), true)
            .verify_host_key("ssh-ed25519", KEY)
            .unwrap();
        assert!(
            fs::read_to_string(&kh)
                .unwrap()
                .starts_with("[git.example.com]:2222 ssh-ed25519 ")
        );
        ssh_ctx(Some(kh.clone()), false)
            .verify_host_key("ssh-ed25519", KEY)
            .unwrap();

        // Changed key: refused even with accept_new, file untouched.
        let before = fs::read_to_string(&kh).unwrap();
        let err = ssh_ctx(Some(kh.clone()), true)
            .verify_host_key("ssh-ed25519", OTHER_KEY)
            .unwrap_err();
        assert_eq!(err.metric_label(), "host_key_changed");
        assert!(err.to_string().contains("CHANGED"), "{err}");
        assert_eq!(fs::read_to_string(&kh).unwrap(), before);

        // A new key type for a known host is not trust-on-first-use.
        let err = ssh_ctx(Some(kh.clone()), true)
            .verify_host_key("ecdsa-sha2-nistp256", b"\0\0\0\x13ecdsa-sha2-nistp256xyz")
            .unwrap_err();
        assert_eq!(err.metric_label(), "host_key_unknown");
        assert_eq!(fs::read_to_string(&kh).unwrap(), before);
    }

    #[test]
    fn credentials_callback_gives_up_after_one_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id_ed25519");
        fs::write(&key, "not really a key").unwrap();
        let mut ctx = ssh_ctx(None, false);
        ctx.credentials.ssh_key_file = Some(key);
        let allowed = CredentialType::SSH_KEY;
        assert!(
            ctx.credentials_for("ssh://git@example.com/r", Some("git"), allowed)
                .is_ok()
        );
        let Err(err) = ctx.credentials_for("ssh://git@example.com/r", Some("git"), allowed) else {
            panic!("a second SSH key attempt must fail");
        };
        assert!(
            err.message().contains("rejected the SSH key"),
            "{}",
            err.message()
        );
        let recorded = ctx.state.borrow_mut().auth_error.take().unwrap();
        assert_eq!(recorded.metric_label(), "auth");
        // The first username request is answered, a repeat is refused.
        assert!(
            ctx.credentials_for("ssh://example.com/r", None, CredentialType::USERNAME)
                .is_ok()
        );
        assert!(
            ctx.credentials_for("ssh://example.com/r", None, CredentialType::USERNAME)
                .is_err()
        );
    }

    #[test]
    fn key_file_errors_are_told_apart_from_rejections() {
        // What libssh2 says when it cannot load the key (the first seen
        // against a real sshd in tests/source_ssh.rs, the others from
        // libssh2's sources) ...
        assert!(is_key_file_error(
            "failed to authenticate SSH session: Unable to extract public key from private key: Unsupported private key format"
        ));
        for message in [
            "Unable to initialize private key from file",
            "Wrong passphrase for private key",
            "bcrypt-encrypted without passphrase",
            "Unable to open private key file",
        ] {
            assert!(is_key_file_error(message), "{message}");
        }
        // ... and not when the server refuses the key or the network fails.
        assert!(!is_key_file_error(
            "failed to authenticate SSH session: Username/PublicKey combination invalid"
        ));
        assert!(!is_key_file_error(
            "failed to connect to 127.0.0.1: Connection refused"
        ));

        let mut ctx = ssh_ctx(None, false);
        ctx.credentials.ssh_key_file = Some(PathBuf::from("/keys/id"));
        let err = ctx.ssh_key_file_error(Path::new("/keys/id"), "Unsupported private key format");
        assert_eq!(err.metric_label(), "credentials");
        assert!(
            err.to_string().contains("--git-ssh-passphrase-file"),
            "{err}"
        );
        ctx.credentials.ssh_key_passphrase_file = Some(PathBuf::from("/keys/pass"));
        let err = ctx.ssh_key_file_error(Path::new("/keys/id"), "Unsupported private key format");
        assert!(
            err.to_string().contains("check that /keys/pass holds"),
            "{err}"
        );
    }

    #[test]
    fn appending_known_hosts_adds_missing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/known_hosts");
        append_known_host(&path, "a ssh-ed25519 AAAA\n").unwrap();
        fs::write(&path, "a ssh-ed25519 AAAA").unwrap();
        append_known_host(&path, "b ssh-ed25519 BBBB\n").unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "a ssh-ed25519 AAAA\nb ssh-ed25519 BBBB\n"
        );
    }

    #[test]
    fn credentials_for_plain_http_are_refused_unless_overridden() {
        let http = RemoteUrl::parse("http://git.example.com/org/repo.git").unwrap();
        let https = RemoteUrl::parse("https://git.example.com/org/repo.git").unwrap();
        let token_env = |name: &str| (name == TOKEN_ENV).then(|| "ghp_abc".to_owned());
        let password_env = |name: &str| (name == PASSWORD_ENV).then(|| "pw".to_owned());
        let blank_env = |_: &str| Some("  ".to_owned());
        let file = Credentials {
            token_file: Some(PathBuf::from("/etc/nodewave/token")),
            ..Credentials::default()
        };
        let password = Credentials {
            username: Some("bob".into()),
            password_file: Some(PathBuf::from("/etc/nodewave/password")),
            ..Credentials::default()
        };
        let none = Credentials::default();

        for (creds, env, what) in [
            (
                &file,
                &no_env as &dyn Fn(&str) -> Option<String>,
                "/etc/nodewave/token",
            ),
            (&password, &no_env, "/etc/nodewave/password"),
            (&none, &token_env, TOKEN_ENV),
            (&none, &password_env, PASSWORD_ENV),
        ] {
            let err = creds.check_transport(&http, env).unwrap_err();
            assert_eq!(err.metric_label(), "config");
            let message = err.to_string();
            assert!(message.contains(what), "{message}");
            assert!(
                message.contains("http://git.example.com/org/repo.git")
                    && message.contains("--insecure-allow-http-credentials")
                    && message.contains("NODEWAVE_INSECURE_ALLOW_HTTP_CREDENTIALS")
                    && message.contains("insecure-allow-http-credentials = true"),
                "{message}"
            );
            // https, and the explicit override, are fine.
            assert!(creds.check_transport(&https, env).is_ok());
            let allowed = Credentials {
                insecure_allow_http: true,
                ..creds.clone()
            };
            assert!(allowed.check_transport(&http, env).is_ok());
        }
        // No credentials anywhere (blank variables count as unset): plain
        // http is allowed, nothing secret would be sent.
        assert!(none.check_transport(&http, &no_env).is_ok());
        assert!(none.check_transport(&http, &blank_env).is_ok());
        let embedded = RemoteUrl::parse("HTTP://bob:hunter2@git.example.com/r.git").unwrap();
        let err = none.check_transport(&embedded, &no_env).unwrap_err();
        assert!(err.to_string().contains("embedded in the URL"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        // ssh and local remotes have no http credentials to leak.
        for url in ["ssh://git@host/r", "file:///srv/r"] {
            let url = RemoteUrl::parse(url).unwrap();
            assert!(file.check_transport(&url, &token_env).is_ok());
        }
    }

    #[test]
    fn credentials_callback_refuses_a_redirect_to_plain_http() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        fs::write(&token, "ghp_abc\n").unwrap();
        let ctx = |insecure_allow_http| CallbackCtx {
            url: RemoteUrl::parse("https://git.example.com/org/repo.git").unwrap(),
            credentials: Credentials {
                token_file: Some(token.clone()),
                insecure_allow_http,
                ..Credentials::default()
            },
            state: RefCell::new(CallbackState::default()),
        };
        let plain = ctx(false);
        let Err(err) = plain.credentials_for(
            "http://u:p@mirror.example.com/org/repo.git",
            None,
            CredentialType::USER_PASS_PLAINTEXT,
        ) else {
            panic!("credentials handed to a plain http URL");
        };
        assert!(err.message().contains("plain http://"), "{}", err.message());
        assert!(!err.message().contains("u:p@"), "{}", err.message());
        let recorded = plain.state.borrow_mut().auth_error.take().unwrap();
        assert_eq!(recorded.metric_label(), "config");
        assert!(
            plain
                .credentials_for(
                    "https://git.example.com/org/repo.git",
                    None,
                    CredentialType::USER_PASS_PLAINTEXT
                )
                .is_ok()
        );
        assert!(
            ctx(true)
                .credentials_for(
                    "http://mirror.example.com/org/repo.git",
                    None,
                    CredentialType::USER_PASS_PLAINTEXT
                )
                .is_ok()
        );
        assert!(is_plain_http("HTTP://x") && !is_plain_http("https://x") && !is_plain_http("http"));
    }
}
