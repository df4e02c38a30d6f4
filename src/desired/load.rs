//! From a commit to the DaemonSets nodewave applies: read the files from the local
//! clone, validate the whole commit, decorate each DaemonSet for applying. The
//! last few loaded commits are cached, so a rollback target (the last good
//! commit) is at hand without reading Git again.
//!
//! Validation runs on a blocking thread with its panic caught: a commit that
//! makes the parser panic is rejected (reason `panic`) and remembered in the
//! state directory ([`PoisonedCommits`]), so no restart parses it again.

use std::collections::{BTreeMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};

use futures::FutureExt as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::keys;
use crate::manifest::{self, ApplyOrder, Finding, LoadOptions, ObjectKey, ObjectRef, Rejected};
use crate::plan::{DesiredDs, config};
use crate::render::{self, RenderError, RenderOptions};
use crate::service::panic_message;
use crate::source::{SourceError, SourceWorker};

use super::poisoned::PoisonedCommits;

/// The rejection reason (metric label) of a commit whose validation panicked.
pub const PANIC_REASON: &str = "panic";

/// Commits kept loaded: the head, the last good one, a few in between.
const CACHED_COMMITS: usize = 4;

/// A valid commit, ready to apply.
#[derive(Debug)]
pub struct Loaded {
    pub commit: String,
    pub daemonsets: BTreeMap<ObjectKey, Arc<DesiredDs>>,
    /// Companion objects, applied before the DaemonSets (see `controller::companions`).
    pub objects: BTreeMap<ObjectRef, Arc<DesiredObject>>,
    pub warnings: Vec<Finding>,
}

/// A companion object ready to apply: the manifest with nodewave's label and
/// source annotations.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredObject {
    pub reference: ObjectRef,
    pub api_version: String,
    pub object: Value,
    pub hash: String,
    pub order: ApplyOrder,
    /// The file it came from, relative to the repository root.
    pub file: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read commit {commit}: {source}")]
    Read {
        commit: String,
        #[source]
        source: SourceError,
    },
    /// Local disk trouble while checking the commit out for rendering.
    #[error("cannot render commit {commit}: {message}")]
    Io { commit: String, message: String },
    /// A Kustomize or Helm render failed or was refused.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Render(Vec<Finding>),
    #[error("{0}")]
    Rejected(Rejected),
    /// Not signed by a trusted key (`--verify-commits head`).
    #[error("{}", .0.report())]
    Unverified(crate::verify::Unverified),
    /// Validating the commit panicked, now (`before: false`) or in an earlier
    /// run (`before: true`, listed in the poisoned-commits file).
    #[error("{message}")]
    Panicked {
        commit: String,
        message: String,
        before: bool,
    },
}

impl LoadError {
    /// Bounded label: the failed check id, or `read-error`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Read { .. } | Self::Io { .. } => "read-error",
            Self::Render(f) => f.first().map_or(crate::manifest::RENDER_ERROR, |f| f.check),
            Self::Rejected(r) => r.reason(),
            Self::Unverified(_) => crate::verify::REJECT_REASON,
            Self::Panicked { .. } => PANIC_REASON,
        }
    }

    /// One line per problem, for `/status` and logs.
    pub fn messages(&self) -> Vec<String> {
        match self {
            Self::Read { .. } | Self::Io { .. } | Self::Unverified(_) | Self::Panicked { .. } => {
                vec![self.to_string()]
            }
            Self::Render(f) => f.iter().map(ToString::to_string).collect(),
            Self::Rejected(r) => r.errors.iter().map(ToString::to_string).collect(),
        }
    }

    /// The findings, for the namespaces they name.
    pub fn findings(&self) -> Vec<&Finding> {
        match self {
            Self::Read { .. } | Self::Io { .. } | Self::Unverified(_) | Self::Panicked { .. } => {
                Vec::new()
            }
            Self::Render(f) => f.iter().collect(),
            Self::Rejected(r) => r.errors.iter().chain(&r.warnings).collect(),
        }
    }
}

/// Where applied objects say they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceIdentity {
    /// Repository URL without credentials.
    pub repo: String,
    pub path: String,
}

impl SourceIdentity {
    /// Whether an object's labels and annotations say nodewave applied it from
    /// this repository and path.
    /// [`Self::owns`] on an object's metadata.
    pub fn owns_meta(
        &self,
        m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    ) -> bool {
        let none = BTreeMap::new();
        self.owns(
            m.labels.as_ref().unwrap_or(&none),
            m.annotations.as_ref().unwrap_or(&none),
        )
    }

    pub fn owns(
        &self,
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
    ) -> bool {
        labels.get(keys::MANAGED_BY_LABEL).map(String::as_str) == Some(keys::MANAGED_BY_VALUE)
            && annotations.get(keys::SOURCE_REPO) == Some(&self.repo)
            && annotations
                .get(keys::SOURCE_PATH)
                .map_or("", String::as_str)
                == self.path
    }
}

pub struct Loader {
    source: SourceWorker,
    options: LoadOptions,
    render: RenderOptions,
    identity: SourceIdentity,
    cache: Mutex<VecDeque<Arc<Loaded>>>,
    poisoned: PoisonedCommits,
}

impl Loader {
    pub fn new(
        source: SourceWorker,
        options: LoadOptions,
        render: RenderOptions,
        identity: SourceIdentity,
    ) -> Self {
        Self {
            source,
            options,
            render,
            identity,
            cache: Mutex::new(VecDeque::new()),
            poisoned: PoisonedCommits::default(),
        }
    }

    /// Remembers panicking commits in `<state_dir>/nodewave-poisoned-commits`
    /// (without this, only for the life of the process).
    #[must_use]
    pub fn with_poisoned_commits(mut self, state_dir: &std::path::Path) -> Self {
        self.poisoned = PoisonedCommits::open(state_dir);
        self
    }

    pub fn source(&self) -> &SourceWorker {
        &self.source
    }

    pub fn identity(&self) -> &SourceIdentity {
        &self.identity
    }

    pub fn options(&self) -> &LoadOptions {
        &self.options
    }

    fn cached(&self, commit: &str) -> Option<Arc<Loaded>> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.iter().find(|l| l.commit == commit).cloned()
    }

    /// Loads and validates `commit` (from the cache when it was loaded lately).
    pub async fn load(&self, commit: &str) -> Result<Arc<Loaded>, LoadError> {
        if let Some(l) = self.cached(commit) {
            return Ok(l);
        }
        if self.poisoned.contains(commit) {
            return Err(LoadError::Panicked {
                commit: commit.to_string(),
                message: format!(
                    "validating commit {} panicked in an earlier run ({}), so it is not read again: push a fix or a revert (delete the file to retry it, e.g. after upgrading nodewave)",
                    crate::record::short(commit),
                    self.poisoned_file()
                ),
                before: true,
            });
        }
        // Rendering and decorating run on this task: a panic there (a bug hit
        // by hostile input) is caught here, as one in validation is below.
        match AssertUnwindSafe(self.load_uncached(commit))
            .catch_unwind()
            .await
        {
            Ok(result) => result,
            Err(payload) => Err(self.panicked(commit, &panic_message(payload.as_ref()))),
        }
    }

    async fn load_uncached(&self, commit: &str) -> Result<Arc<Loaded>, LoadError> {
        // Plain YAML as it is, Kustomize and Helm directories rendered (from the
        // local clone: a rollback target is rendered again without the remote).
        let files = render::desired_files(&self.source, commit, &self.identity.path, &self.render)
            .await
            .map_err(|e| match e {
                RenderError::Source(source) => LoadError::Read {
                    commit: commit.to_string(),
                    source,
                },
                RenderError::Io(message) => LoadError::Io {
                    commit: commit.to_string(),
                    message,
                },
                RenderError::Rejected(findings) => LoadError::Render(findings),
            })?;
        // The repository's own settings (`.nodewave.yaml` at the tracked path).
        let repo_config = self
            .source
            .read_tracked_file(commit.to_string(), manifest::REPO_CONFIG_FILE)
            .await
            .map_err(|source| LoadError::Read {
                commit: commit.to_string(),
                source,
            })?;
        let state = self.validate(commit, files, repo_config).await?;
        crate::failpoint::panic_at("load-panic");
        let mut objects: BTreeMap<ObjectRef, Arc<DesiredObject>> = state
            .objects
            .into_iter()
            .map(|(reference, o)| {
                let object = mark(
                    &o.manifest,
                    &o.location.file,
                    &self.identity.repo,
                    &self.identity.path,
                );
                let d = DesiredObject {
                    reference: reference.clone(),
                    api_version: o.api_version,
                    hash: content_hash(&object),
                    object,
                    order: o.order,
                    file: o.location.file,
                };
                (reference, Arc::new(d))
            })
            .collect();
        let mut copies: Vec<DesiredObject> = Vec::new();
        let daemonsets = state
            .daemonsets
            .into_iter()
            .map(|(key, dds)| {
                let mut object = decorate(
                    &dds.manifest,
                    &dds.location.file,
                    &self.identity.repo,
                    &self.identity.path,
                );
                copies.extend(version_configs(&key.namespace, &mut object, &objects));
                let policy = state
                    .policies
                    .get(&key)
                    .map(|p| p.spec.clone())
                    .unwrap_or_default();
                let ds = DesiredDs {
                    key: key.clone(),
                    commit: commit.to_string(),
                    hash: content_hash(&object),
                    object,
                    policy,
                };
                (key, Arc::new(ds))
            })
            .collect();
        for c in copies {
            objects
                .entry(c.reference.clone())
                .or_insert_with(|| Arc::new(c));
        }
        let loaded = Arc::new(Loaded {
            commit: commit.to_string(),
            daemonsets,
            objects,
            warnings: state.warnings,
        });
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.retain(|l| l.commit != commit);
        cache.push_front(loaded.clone());
        cache.truncate(CACHED_COMMITS);
        Ok(loaded)
    }

    /// `manifest::load_with_config` on a blocking thread (it is CPU work on hostile input),
    /// with a panic caught, reported and remembered instead of unwinding into
    /// the pipeline.
    async fn validate(
        &self,
        commit: &str,
        files: Vec<manifest::ManifestFile>,
        repo_config: Option<manifest::ManifestFile>,
    ) -> Result<manifest::DesiredState, LoadError> {
        let options = self.options.clone();
        let job = tokio::task::spawn_blocking(move || {
            crate::failpoint::panic_at("validate-panic");
            manifest::load_with_config(&files, repo_config.as_ref(), &options)
        });
        let panic = match job.await {
            Ok(result) => return result.map_err(LoadError::Rejected),
            Err(e) => match e.try_into_panic() {
                Ok(payload) => panic_message(payload.as_ref()),
                // Cancelled: only when the runtime shuts down.
                Err(e) => e.to_string(),
            },
        };
        Err(self.panicked(commit, &panic))
    }

    /// Reports and remembers a commit whose reading panicked: rejected now, and
    /// rejected unread after a restart.
    fn panicked(&self, commit: &str, panic: &str) -> LoadError {
        tracing::error!(commit = %crate::record::short(commit), panic = %panic, "reading the commit panicked; it is rejected and remembered so no restart parses it again");
        let recorded = match self.poisoned.record(commit) {
            Ok(()) => format!("recorded in {}", self.poisoned_file()),
            Err(e) => {
                tracing::error!(error = %e, "cannot remember the panicking commit on disk");
                format!("not recorded on disk: {e}")
            }
        };
        LoadError::Panicked {
            commit: commit.to_string(),
            message: format!(
                "reading commit {} panicked ({panic}); it is rejected and {recorded}: this is a nodewave bug, please report it with the commit; push a fix or a revert",
                crate::record::short(commit)
            ),
            before: false,
        }
    }

    fn poisoned_file(&self) -> String {
        self.poisoned
            .path()
            .map_or_else(|| "in memory".to_string(), |p| p.display().to_string())
    }
}

/// The object nodewave applies for a DaemonSet from Git: the manifest as written,
/// plus the managed-by label, where it came from, and `updateStrategy: OnDelete`
/// (nodewave drives every update itself: the controller only replaces pods it
/// deletes).
pub fn decorate(manifest: &Value, file: &str, repo: &str, path: &str) -> Value {
    let mut obj = mark(manifest, file, repo, path);
    obj["spec"]["updateStrategy"] = json!({"type": "OnDelete"});
    obj
}

/// The manifest with the managed-by label and where it came from (what pruning
/// and the ownership checks read).
pub fn mark(manifest: &Value, file: &str, repo: &str, path: &str) -> Value {
    let mut obj = manifest.clone();
    let meta = &mut obj["metadata"];
    if !meta["labels"].is_object() {
        meta["labels"] = json!({});
    }
    meta["labels"][keys::MANAGED_BY_LABEL] = json!(keys::MANAGED_BY_VALUE);
    if !meta["annotations"].is_object() {
        meta["annotations"] = json!({});
    }
    let ann = &mut meta["annotations"];
    ann[keys::SOURCE_REPO] = json!(repo);
    ann[keys::SOURCE_PATH] = json!(path);
    ann[keys::SOURCE_FILE] = json!(file);
    obj
}

/// Config rollouts (`plan::config`): each ConfigMap or Secret of the commit that
/// the DaemonSet's pod template references (same namespace, not opted out, not
/// immutable already) gets an immutable copy named by its content hash, and the
/// template is rewritten to it. A config change is then a new pod template,
/// rolled out stage by stage like an image change. Returns the copies.
pub fn version_configs(
    namespace: &str,
    daemonset: &mut Value,
    objects: &BTreeMap<ObjectRef, Arc<DesiredObject>>,
) -> Vec<DesiredObject> {
    let mut renames = BTreeMap::new();
    let mut copies = Vec::new();
    for r in config::references(daemonset) {
        let reference = ObjectRef {
            group: String::new(),
            kind: r.kind.as_str().to_string(),
            namespace: namespace.to_string(),
            name: r.name.clone(),
        };
        let Some(original) = objects.get(&reference) else {
            continue;
        };
        if !config::is_versioned(&original.object) {
            continue;
        }
        let name = config::hashed_name(&r.name, &config::content_hash(&original.object));
        let object = config::hashed_copy(&original.object, &name);
        copies.push(DesiredObject {
            reference: ObjectRef {
                name: name.clone(),
                ..reference
            },
            api_version: original.api_version.clone(),
            hash: content_hash(&object),
            object,
            order: original.order,
            file: original.file.clone(),
        });
        renames.insert(r, name);
    }
    config::rewrite(daemonset, &renames);
    copies
}

/// Hash of what Git declares for a DaemonSet, without nodewave's bookkeeping.
pub fn content_hash(desired: &Value) -> String {
    let normal = crate::diff::normalise(desired);
    let bytes = serde_json::to_vec(&normal).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    hex::encode(&digest[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hash_ignores_bookkeeping() {
        let a = json!({"metadata": {"name": "x", "annotations": {"nodewave.io/source-file": "a"}}, "spec": {"k": 1}});
        let b = json!({"metadata": {"name": "x", "annotations": {"nodewave.io/source-file": "b"}}, "spec": {"k": 1}});
        let c = json!({"metadata": {"name": "x"}, "spec": {"k": 2}});
        assert_eq!(content_hash(&a), content_hash(&b));
        assert_ne!(content_hash(&a), content_hash(&c));
    }

    #[test]
    fn decorated_objects_are_on_delete_and_carry_their_source() {
        let m = json!({"metadata": {"name": "x", "namespace": "n"}, "spec": {"updateStrategy": {"type": "RollingUpdate"}}});
        let d = decorate(&m, "a.yaml", "https://g/r.git", "clusters/prod");
        assert_eq!(d["spec"]["updateStrategy"]["type"], "OnDelete");
        assert_eq!(d["metadata"]["labels"][keys::MANAGED_BY_LABEL], "nodewave");
        assert_eq!(
            d["metadata"]["annotations"][keys::SOURCE_PATH],
            "clusters/prod"
        );
        let id = SourceIdentity {
            repo: "https://g/r.git".into(),
            path: "clusters/prod".into(),
        };
        let labels: BTreeMap<String, String> =
            serde_json::from_value(d["metadata"]["labels"].clone()).unwrap();
        let ann: BTreeMap<String, String> =
            serde_json::from_value(d["metadata"]["annotations"].clone()).unwrap();
        assert!(id.owns(&labels, &ann));
        let other = SourceIdentity {
            repo: "https://g/r.git".into(),
            path: "clusters/dev".into(),
        };
        assert!(!other.owns(&labels, &ann));
    }
}
