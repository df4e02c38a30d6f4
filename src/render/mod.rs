//! Rendering Kustomize and Helm sources into the plain manifests that the rest of
//! nodewave validates, diffs and rolls out.
//!
//! A commit whose tracked path holds no `kustomization.yaml` / `Chart.yaml` is
//! read exactly as before ([`crate::source::GitSource::files_at`]), at no extra
//! cost. Otherwise the whole commit is written to a temporary directory under the
//! state directory (so bases elsewhere in the repository resolve), [`discover`]
//! decides the units, and each is rendered by the upstream tool, hermetically by
//! default (see [`hermetic_env`]), with a time and an output limit. Any failure
//! rejects the commit whole with findings (`render-error`,
//! `remote-source-refused`) that name the source directory.
//!
//! - [`discover`]: which directories render how, what is refused (pure).
//! - [`kustomization`], [`chart`]: reading kustomizations, `Chart.yaml`, `nodewave.yaml` (pure).
//! - [`output`]: renderer output to [`ManifestFile`]s, renderer messages (pure).
//! - [`runner`]: the bounded subprocess.
//! - here: the disk view, the environment, the entry points
//!   [`desired_files`] (service) and [`render_dir`] (`nodewave validate`).

pub mod chart;
pub mod discover;
mod disk;
pub mod kustomization;
pub mod output;
pub mod runner;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use discover::{Plan, Renderer, Scope, Unit, display_dir};
use runner::{Invocation, RunError};

use crate::manifest::{self, Finding, Location, ManifestFile, RENDER_ERROR, Severity};
use crate::source::{SourceError, SourceWorker, TreeLimits};

pub use discover::MARKER_FILES;

/// Per renderer run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// All renders of one commit together.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 64 * 1024 * 1024;
/// Bounds of the checkout written for rendering.
pub const DEFAULT_TREE_LIMITS: TreeLimits = TreeLimits {
    max_files: 20_000,
    max_bytes: 256 * 1024 * 1024,
};

/// How sources are rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderOptions {
    /// `helm` binary; `None` looks it up on `PATH` when a chart needs it.
    pub helm: Option<PathBuf>,
    /// `kustomize` binary; `None` looks it up on `PATH`.
    pub kustomize: Option<PathBuf>,
    /// Time limit of one renderer run; the process group is killed past it.
    pub timeout: Duration,
    /// Limit on the rendered output of one commit, all units together.
    pub max_output_bytes: usize,
    /// Allow remote bases and non-vendored chart dependencies, and run the
    /// renderers with this process's environment (proxies, `PATH`, Helm's config).
    pub allow_network: bool,
    /// Release namespace of charts whose `nodewave.yaml` names none.
    pub default_namespace: String,
    /// Where temporary checkouts go [default: the system temp directory].
    pub work_dir: Option<PathBuf>,
    pub tree_limits: TreeLimits,
    /// Size limits on plain manifest files read from disk (`render_dir`).
    pub limits: manifest::Limits,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            helm: None,
            kustomize: None,
            timeout: DEFAULT_TIMEOUT,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            allow_network: false,
            default_namespace: "default".to_owned(),
            work_dir: None,
            tree_limits: DEFAULT_TREE_LIMITS,
            limits: manifest::Limits::default(),
        }
    }
}

/// Why a commit's files could not be produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// Reading the commit failed (as [`SourceWorker::files_at`] can).
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The local disk: a temporary directory, a plain file that cannot be read.
    #[error("{0}")]
    Io(String),
    /// A render failed or was refused: the commit is rejected whole.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Rejected(Vec<Finding>),
}

impl RenderError {
    /// Low-cardinality label: the check id of the first finding, or the kind.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Source(e) => e.metric_label(),
            Self::Io(_) => "io",
            Self::Rejected(f) => f.first().map_or(RENDER_ERROR, |f| f.check),
        }
    }
}

/// The files of `commit` under `tracked`, rendered where needed: plain YAML
/// exactly as [`SourceWorker::files_at`] returns it, plus one or more files per
/// Kustomize or Helm directory (see [`output`]). Paths are relative to the
/// repository root. `tracked` is the path the worker tracks (its
/// `GitSourceConfig::path`; the cheap "anything to render?" check looks there).
/// The temporary checkout is removed before returning.
pub async fn desired_files(
    source: &SourceWorker,
    commit: &str,
    tracked: &str,
    opts: &RenderOptions,
) -> Result<Vec<ManifestFile>, RenderError> {
    if !source
        .has_file_named(commit.to_owned(), MARKER_FILES)
        .await?
    {
        return Ok(source.files_at(commit.to_owned()).await?);
    }
    let tracked = crate::source::git::normalize_subpath(tracked)?;
    let session = Session::new(opts.work_dir.as_deref(), true)?;
    let repo = session.path().join("repo");
    std::fs::create_dir(&repo).map_err(|e| io_error(&repo, &e))?;
    source
        .write_tree(commit.to_owned(), repo.clone(), opts.tree_limits)
        .await?;
    let opts = opts.clone();
    tokio::task::spawn_blocking(move || {
        let tree = disk::DiskTree::new(&repo);
        let plan = discover::discover(&tree, &scope(&tracked, Some(0), &opts));
        let result = render_plan(&tree, plan, &opts, &session);
        drop(session);
        result
    })
    .await
    .map_err(|e| RenderError::Io(format!("the render task failed: {e}")))?
}

/// `nodewave validate DIR`: the same rules on a directory on disk. Kustomize bases
/// outside `dir` resolve on disk; when `dir` is inside a Git work tree, references
/// may not leave that work tree (as on the server, where they may not leave the
/// repository). Paths are relative to `dir`. A directory without Kustomize or
/// Helm sources is read exactly as [`manifest::read_dir`] does.
pub fn render_dir(dir: &Path, opts: &RenderOptions) -> Result<Vec<ManifestFile>, RenderError> {
    let base = dir
        .canonicalize()
        .map_err(|e| RenderError::Io(format!("cannot read {}: {e}", dir.display())))?;
    let tree = disk::DiskTree::new(&base);
    let plan = discover::discover(&tree, &scope("", disk::depth_below_work_tree(&base), opts));
    if plan.units.is_empty() && plan.findings.is_empty() {
        return manifest::read_dir(&base, &opts.limits).map_err(|e| match e {
            manifest::ReadDirError::Rejected(r) => RenderError::Rejected(r.errors),
            manifest::ReadDirError::Io(e) => {
                RenderError::Io(format!("cannot read {}: {e}", dir.display()))
            }
        });
    }
    let session = Session::new(opts.work_dir.as_deref(), false)?;
    render_plan(&tree, plan, opts, &session)
}

fn scope<'a>(tracked: &'a str, max_up: Option<usize>, opts: &'a RenderOptions) -> Scope<'a> {
    Scope {
        tracked,
        max_up,
        allow_network: opts.allow_network,
        default_namespace: &opts.default_namespace,
    }
}

fn io_error(path: &Path, e: &std::io::Error) -> RenderError {
    RenderError::Io(format!("{}: {e}", path.display()))
}

/// A temporary directory for one render: the checkout (`repo/`), the renderers'
/// home (`home/`) and inline values files. Removed on drop.
struct Session {
    dir: tempfile::TempDir,
}

/// Session directories older than this are left over from a killed process and
/// are removed (a live render is bounded by the render timeout per directory,
/// far below this, so a concurrent render's directory is never swept).
const STALE_AFTER: Duration = Duration::from_hours(24);

impl Session {
    fn new(work_dir: Option<&Path>, sweep: bool) -> Result<Self, RenderError> {
        let parent = work_dir.map_or_else(std::env::temp_dir, Path::to_path_buf);
        std::fs::create_dir_all(&parent).map_err(|e| io_error(&parent, &e))?;
        if sweep {
            sweep_stale(&parent);
        }
        let dir = tempfile::Builder::new()
            .prefix("nodewave-render-")
            .tempdir_in(&parent)
            .map_err(|e| io_error(&parent, &e))?;
        for sub in ["home", "home/bin", "values"] {
            let p = dir.path().join(sub);
            std::fs::create_dir_all(&p).map_err(|e| io_error(&p, &e))?;
        }
        Ok(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn sweep_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_AFTER);
        if old
            && entry
                .file_name()
                .to_string_lossy()
                .starts_with("nodewave-render-")
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The renderers' environment. Hermetic (the default): nothing inherited; `HOME`
/// and every Helm directory in the session; an empty `PATH` (no `git` for remote
/// bases, no plugins); no `KUBECONFIG`; every proxy variable pointing at a closed
/// loopback port, so any network attempt fails at once. With network allowed:
/// this process's environment without cluster credentials.
pub fn hermetic_env(home: &Path, allow_network: bool) -> Vec<(String, OsString)> {
    if allow_network {
        return std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v)))
            .filter(|(k, _)| k != "KUBECONFIG" && !k.starts_with("KUBERNETES_"))
            .collect();
    }
    let port = closed_loopback_port();
    let proxy = OsString::from(format!("http://127.0.0.1:{port}"));
    let h = |sub: &str| home.join(sub).into_os_string();
    let mut env = vec![
        ("HOME".to_owned(), home.as_os_str().to_owned()),
        ("PATH".to_owned(), h("bin")),
        ("XDG_CONFIG_HOME".to_owned(), h(".config")),
        ("XDG_CACHE_HOME".to_owned(), h(".cache")),
        ("XDG_DATA_HOME".to_owned(), h(".local/share")),
        ("HELM_CONFIG_HOME".to_owned(), h("helm/config")),
        ("HELM_CACHE_HOME".to_owned(), h("helm/cache")),
        ("HELM_DATA_HOME".to_owned(), h("helm/data")),
        ("HELM_PLUGINS".to_owned(), h("helm/plugins")),
        ("HELM_REGISTRY_CONFIG".to_owned(), h("helm/registry.json")),
        (
            "HELM_REPOSITORY_CONFIG".to_owned(),
            h("helm/repositories.yaml"),
        ),
        ("HELM_REPOSITORY_CACHE".to_owned(), h("helm/repository")),
        ("GIT_TERMINAL_PROMPT".to_owned(), "0".into()),
        ("GIT_CONFIG_NOSYSTEM".to_owned(), "1".into()),
    ];
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        env.push((var.to_owned(), proxy.clone()));
    }
    env
}

/// A loopback port nothing listens on: bound and released at once, so a
/// connection to it is refused immediately (not left to time out).
fn closed_loopback_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map_or(9, |a| a.port())
}

fn unit_error(dir: &str, message: String) -> Finding {
    Finding {
        check: RENDER_ERROR,
        severity: Severity::Error,
        location: Location::new(display_dir(dir), None),
        object: None,
        message,
    }
}

fn render_plan(
    tree: &disk::DiskTree,
    plan: Plan,
    opts: &RenderOptions,
    session: &Session,
) -> Result<Vec<ManifestFile>, RenderError> {
    if !plan.findings.is_empty() {
        return Err(RenderError::Rejected(plan.findings));
    }
    let home = session.path().join("home");
    let env = hermetic_env(&home, opts.allow_network);
    let roots = tree.display_roots();
    let mut files = Vec::new();
    let mut findings = Vec::new();
    let mut budget = opts.max_output_bytes;
    for (i, unit) in plan.units.iter().enumerate() {
        match render_unit(tree, unit, i, opts, session, &env, &mut budget) {
            Ok(mut rendered) => files.append(&mut rendered),
            Err(mut failure) => {
                failure.message = output::clean_message(&failure.message, &roots);
                findings.push(failure);
                // Past the output limit, later units cannot render either.
                if budget == 0 {
                    break;
                }
            }
        }
    }
    if !findings.is_empty() {
        return Err(RenderError::Rejected(findings));
    }
    for path in &plan.plain {
        files.push(tree.read_manifest(path)?);
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

fn render_unit(
    tree: &disk::DiskTree,
    unit: &Unit,
    index: usize,
    opts: &RenderOptions,
    session: &Session,
    env: &[(String, OsString)],
    budget: &mut usize,
) -> Result<Vec<ManifestFile>, Finding> {
    let dir = tree.abs(&unit.dir);
    let (tool, flag, configured) = match unit.renderer {
        Renderer::Kustomize { .. } => ("kustomize", "--kustomize", opts.kustomize.as_ref()),
        Renderer::Helm(_) => ("helm", "--helm", opts.helm.as_ref()),
    };
    let program = configured
        .cloned()
        .or_else(|| runner::find_on_path(tool))
        .ok_or_else(|| {
            unit_error(
                &unit.dir,
                format!(
                    "{tool} is needed to render {} but was not found on PATH: install it (hack/build-renderers.sh builds the pinned version) or pass {flag} PATH",
                    display_dir(&unit.dir)
                ),
            )
        })?;
    let mut args: Vec<OsString> = Vec::new();
    match &unit.renderer {
        Renderer::Kustomize { helm_charts } => {
            args.extend(["build".into(), dir.into_os_string()]);
            if *helm_charts && opts.allow_network {
                let helm = opts
                    .helm
                    .clone()
                    .or_else(|| runner::find_on_path("helm"))
                    .unwrap_or_else(|| PathBuf::from("helm"));
                args.extend(["--enable-helm".into(), "--helm-command".into(), helm.into()]);
            }
        }
        Renderer::Helm(release) => {
            args.extend([
                "template".into(),
                release.release_name.clone().into(),
                dir.into_os_string(),
                "--namespace".into(),
                release.namespace.clone().into(),
                // nodewave has no hook lifecycle; tests are not part of a release.
                "--no-hooks".into(),
                "--skip-tests".into(),
            ]);
            if release.include_crds {
                args.push("--include-crds".into());
            }
            if let Some(v) = &release.kube_version {
                args.extend(["--kube-version".into(), v.clone().into()]);
            }
            if release.dependency_update {
                args.push("--dependency-update".into());
            }
            for v in &release.values_files {
                args.extend(["--values".into(), tree.abs(v).into_os_string()]);
            }
            if let Some(values) = &release.values {
                // JSON is YAML; a file keeps types exactly (unlike --set).
                let file = session.path().join("values").join(format!("{index}.json"));
                std::fs::write(&file, values.to_string()).map_err(|e| {
                    unit_error(&unit.dir, format!("cannot write inline values: {e}"))
                })?;
                args.extend(["--values".into(), file.into_os_string()]);
            }
        }
    }
    let invocation = Invocation {
        program: program.clone(),
        args,
        cwd: tree.abs(""),
        env: env.to_vec(),
        timeout: opts.timeout,
        max_stdout: *budget,
    };
    let what = match unit.renderer {
        Renderer::Kustomize { .. } => "kustomize build",
        Renderer::Helm(_) => "helm template",
    };
    let stdout = runner::run(&invocation).map_err(|e| match e {
        RunError::Spawn(e) => unit_error(
            &unit.dir,
            format!("cannot run {}: {e}; install {tool} or pass {flag} PATH", program.display()),
        ),
        RunError::TimedOut(after) => unit_error(
            &unit.dir,
            format!(
                "{what} did not finish within {}s (--render-timeout) and was stopped",
                after.as_secs_f64()
            ),
        ),
        RunError::OutputTooLarge(_) => {
            *budget = 0;
            unit_error(
                &unit.dir,
                format!(
                    "the rendered output of this commit is over {} bytes (--render-max-bytes); {what} was stopped",
                    opts.max_output_bytes
                ),
            )
        }
        RunError::NotUtf8 => unit_error(&unit.dir, format!("{what} printed output that is not UTF-8")),
        RunError::Failed { stderr, .. } => {
            let stderr = stderr.trim();
            let message = format!(
                "{what} failed: {}",
                stderr.strip_prefix("Error: ").unwrap_or(stderr)
            );
            let mut finding = unit_error(&unit.dir, message);
            if let Renderer::Helm(release) = &unit.renderer
                && let Some((file, line)) =
                    output::helm_error_location(stderr, &release.chart_name, &unit.dir)
            {
                finding.location = Location::new(file, line);
            }
            finding
        }
    })?;
    *budget = budget.saturating_sub(stdout.len());
    Ok(match &unit.renderer {
        Renderer::Kustomize { .. } => vec![output::kustomize_file(&unit.dir, stdout)],
        Renderer::Helm(release) => output::helm_files(&unit.dir, release, &stdout),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'e>(env: &'e [(String, OsString)], key: &str) -> Option<&'e OsString> {
        env.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    #[test]
    fn the_hermetic_environment_has_no_way_out() {
        let home = Path::new("/state/render-x/home");
        let env = hermetic_env(home, false);
        assert_eq!(get(&env, "HOME").unwrap(), "/state/render-x/home");
        assert_eq!(get(&env, "PATH").unwrap(), "/state/render-x/home/bin");
        for key in [
            "KUBECONFIG",
            "KUBERNETES_SERVICE_HOST",
            "NO_PROXY",
            "no_proxy",
            "SSH_AUTH_SOCK",
        ] {
            assert!(get(&env, key).is_none(), "{key} must not be set");
        }
        for key in [
            "HELM_CONFIG_HOME",
            "HELM_CACHE_HOME",
            "HELM_DATA_HOME",
            "HELM_PLUGINS",
            "HELM_REPOSITORY_CONFIG",
        ] {
            let v = get(&env, key).unwrap().to_string_lossy().into_owned();
            assert!(v.starts_with("/state/render-x/home/"), "{key}={v}");
        }
        let proxy = get(&env, "HTTPS_PROXY")
            .unwrap()
            .to_string_lossy()
            .into_owned();
        for key in [
            "HTTP_PROXY",
            "http_proxy",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
        ] {
            assert_eq!(get(&env, key).unwrap().to_string_lossy(), proxy);
        }
        let addr = proxy.strip_prefix("http://").unwrap();
        assert!(addr.starts_with("127.0.0.1:"), "{proxy}");
        // Nothing listens there: a connection is refused at once.
        assert!(std::net::TcpStream::connect(addr).is_err());
    }

    #[test]
    fn with_network_allowed_the_process_environment_passes_without_cluster_access() {
        let env = hermetic_env(Path::new("/h"), true);
        assert_eq!(get(&env, "PATH"), std::env::var_os("PATH").as_ref());
        assert!(get(&env, "KUBECONFIG").is_none());
        assert!(env.iter().all(|(k, _)| !k.starts_with("KUBERNETES_")));
    }

    #[test]
    fn error_labels_are_check_ids_or_kinds() {
        let f = Finding {
            check: manifest::REMOTE_SOURCE_REFUSED,
            severity: Severity::Error,
            location: Location::new("k/kustomization.yaml", Some(2)),
            object: None,
            message: "m".into(),
        };
        assert_eq!(
            RenderError::Rejected(vec![f.clone()]).metric_label(),
            "remote-source-refused"
        );
        assert_eq!(RenderError::Io("x".into()).metric_label(), "io");
        assert_eq!(
            RenderError::Source(SourceError::WorkerGone).metric_label(),
            "worker_gone"
        );
        assert_eq!(
            RenderError::Rejected(vec![f]).to_string(),
            "k/kustomization.yaml:2: error[remote-source-refused] m"
        );
    }

    #[test]
    fn sessions_are_removed_and_stale_ones_swept() {
        let work = tempfile::tempdir().unwrap();
        let stale = work.path().join("nodewave-render-stale");
        std::fs::create_dir(&stale).unwrap();
        let old = std::time::SystemTime::now() - Duration::from_hours(48);
        std::fs::File::open(&stale)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let fresh = work.path().join("nodewave-render-fresh");
        std::fs::create_dir(&fresh).unwrap();
        let other = work.path().join("unrelated");
        std::fs::create_dir(&other).unwrap();
        std::fs::File::open(&other)
            .unwrap()
            .set_modified(old)
            .unwrap();

        let session = Session::new(Some(work.path()), true).unwrap();
        let path = session.path().to_path_buf();
        assert!(path.join("home/bin").is_dir());
        assert!(!stale.exists(), "a stale session is swept");
        assert!(
            fresh.exists() && other.exists(),
            "only stale sessions are swept"
        );
        drop(session);
        assert!(!path.exists());
    }
}
