//! `nodewave diff`: what applying a checkout (or a Git ref) would change.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use kube::ResourceExt;
use serde_json::Value;

use super::KubeArgs;
use super::render::{FileRender, RenderArgs};
use super::validate::RuleArgs;
use crate::cluster::{self, Cluster};
use crate::desired::{DesiredObject, decorate};
use crate::diff;
use crate::keys;
use crate::manifest::{self, ManifestFile, ObjectKey, ObjectRef};
use crate::metrics::Metrics;
use crate::source::{GitRef, GitSource, GitSourceConfig, redact_url};

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// A checkout (directory) to compare with the cluster.
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with = "repo",
        required_unless_present = "repo"
    )]
    pub dir: Option<PathBuf>,
    /// A repository to fetch instead of a checkout (with --branch or --tag).
    #[arg(long, value_name = "URL")]
    pub repo: Option<String>,
    /// Branch of --repo [default: main].
    #[arg(long, requires = "repo", conflicts_with = "tag")]
    pub branch: Option<String>,
    /// Tag of --repo.
    #[arg(long, requires = "repo")]
    pub tag: Option<String>,
    /// Sub-path of the repository holding the manifests.
    #[arg(long, default_value = "")]
    pub path: String,
    /// Show only the changed field paths, not the unified diff.
    #[arg(long)]
    pub paths_only: bool,
    #[command(flatten)]
    pub rules: RuleArgs,
    #[command(flatten)]
    pub render: RenderArgs,
    #[command(flatten)]
    pub kube: KubeArgs,
}

pub async fn run(args: DiffArgs) -> ExitCode {
    match diff_all(&args).await {
        Ok(0) => {
            println!("in sync: the cluster matches Git");
            ExitCode::SUCCESS
        }
        Ok(n) => {
            println!("{n} object(s) differ from Git");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// The files of the checkout or fetched commit, its id, the redacted remote
/// URL, and the repository's `.nodewave.yaml` if there is one.
type Loaded = (Vec<ManifestFile>, String, String, Option<ManifestFile>);

async fn load_files(args: &DiffArgs) -> Result<Loaded, String> {
    // Kustomize and Helm directories are rendered as `nodewave run` renders them.
    let mut render = args.render.options(&FileRender::default())?;
    render.limits = args.rules.limits();
    if let Some(dir) = &args.dir {
        let base = dir.join(&args.path);
        let mut files = crate::render::render_dir(&base, &render).map_err(|e| e.to_string())?;
        let prefix = args.path.trim_matches('/');
        if !prefix.is_empty() {
            for f in &mut files {
                f.path = format!("{prefix}/{}", f.path);
            }
        }
        let config = manifest::read_repo_config(&base).map_err(|e| e.to_string())?;
        return Ok((files, "(working tree)".into(), String::new(), config));
    }
    let Some(url) = &args.repo else {
        return Err("give --dir or --repo".into());
    };
    let reference = match &args.tag {
        Some(t) => GitRef::Tag(t.clone()),
        None => GitRef::Branch(args.branch.clone().unwrap_or_else(|| "main".into())),
    };
    let tmp = tempfile_dir()?;
    let mut src = GitSource::open(GitSourceConfig {
        url: url.clone(),
        reference,
        path: args.path.clone(),
        checkout_dir: tmp.clone(),
        credentials: crate::source::Credentials::default(),
        limits: args.rules.limits(),
    })
    .map_err(|e| e.to_string())?;
    let outcome = src.fetch().map_err(|e| e.to_string())?;
    let worker = crate::source::SourceWorker::spawn(src).map_err(|e| e.to_string())?;
    let files = crate::render::desired_files(&worker, &outcome.head, &args.path, &render)
        .await
        .map_err(|e| e.to_string());
    let config = worker
        .read_tracked_file(outcome.head.clone(), manifest::REPO_CONFIG_FILE)
        .await
        .map_err(|e| e.to_string());
    drop(worker);
    let _ = std::fs::remove_dir_all(&tmp);
    let files = files?;
    Ok((files, outcome.head, redact_url(url), config?))
}

fn tempfile_dir() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("nodewave-diff-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    Ok(dir)
}

async fn diff_all(args: &DiffArgs) -> Result<usize, String> {
    let (files, _commit, repo, config) = load_files(args).await?;
    let desired = manifest::load_with_config(&files, config.as_ref(), &args.rules.load_options())
        .map_err(|r| r.to_string())?;
    let client = cluster::client(args.kube.kubeconfig.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    let cluster = Cluster::new(client, Metrics::new());
    let mut differing = 0;
    // Companion objects as nodewave applies them, config copies included.
    let mut objects: BTreeMap<ObjectRef, Arc<DesiredObject>> = desired
        .objects
        .iter()
        .map(|(r, o)| {
            let object = crate::desired::mark(&o.manifest, &o.location.file, &repo, &args.path);
            let d = DesiredObject {
                reference: r.clone(),
                api_version: o.api_version.clone(),
                hash: crate::desired::content_hash(&object),
                object,
                order: o.order,
                file: o.location.file.clone(),
            };
            (r.clone(), Arc::new(d))
        })
        .collect();
    let mut copies = Vec::new();
    // Which repositories this checkout feeds: pruning is only reported for
    // DaemonSets nodewave applied from one of them.
    let mut sources: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    if !repo.is_empty() {
        sources.insert(repo.clone());
    }
    for (key, dds) in &desired.daemonsets {
        let live = cluster
            .get_daemonset(key)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(src) = live
            .as_ref()
            .and_then(|ds| ds.annotations().get(keys::SOURCE_REPO).cloned())
        {
            sources.insert(src);
        }
        // Compare against what nodewave would apply, with the source recorded as the
        // live object has it, so only real content differences show.
        let (repo_ann, path_ann) = live
            .as_ref()
            .map_or((repo.clone(), args.path.clone()), |ds| {
                let a = ds.annotations();
                (
                    a.get(keys::SOURCE_REPO)
                        .cloned()
                        .unwrap_or_else(|| repo.clone()),
                    a.get(keys::SOURCE_PATH)
                        .cloned()
                        .unwrap_or_else(|| args.path.clone()),
                )
            });
        let mut obj = decorate(&dds.manifest, &dds.location.file, &repo_ann, &path_ann);
        // A config change shows as the template's new config copy name.
        copies.extend(crate::desired::version_configs(
            &key.namespace,
            &mut obj,
            &objects,
        ));
        let live_value = match &live {
            Some(ds) => serde_json::to_value(ds).map_err(|e| e.to_string())?,
            None => Value::Null,
        };
        let dry = if live.is_some()
            || cluster
                .namespace_exists(&key.namespace)
                .await
                .map_err(|e| e.to_string())?
        {
            cluster.apply(&obj, true).await.map_err(|e| e.to_string())?
        } else {
            obj.clone()
        };
        let d = diff::compare(&key.to_string(), &live_value, &dry);
        if d.is_empty() {
            continue;
        }
        differing += 1;
        println!(
            "DaemonSet {key}: {}",
            if live.is_none() {
                "would be created"
            } else {
                "differs"
            }
        );
        for p in &d.paths {
            println!("  ~ {p}");
        }
        if !args.paths_only {
            println!("{}", d.unified);
        }
    }
    for c in copies {
        objects
            .entry(c.reference.clone())
            .or_insert_with(|| Arc::new(c));
    }
    differing += diff_objects(args, &cluster, &objects, &repo).await?;
    for ds in cluster
        .managed_daemonsets()
        .await
        .map_err(|e| e.to_string())?
    {
        let key = ObjectKey::new(ds.namespace().unwrap_or_default(), ds.name_any());
        let same_source = ds
            .annotations()
            .get(keys::SOURCE_REPO)
            .is_some_and(|r| sources.contains(r));
        if same_source && !desired.daemonsets.contains_key(&key) {
            differing += 1;
            println!("DaemonSet {key}: managed by nodewave but not in Git: would be pruned");
        }
    }
    Ok(differing)
}

/// Companion objects: what applying them would change (they are applied at
/// once, not staged).
async fn diff_objects(
    args: &DiffArgs,
    cluster: &Cluster,
    objects: &BTreeMap<ObjectRef, Arc<DesiredObject>>,
    repo: &str,
) -> Result<usize, String> {
    let mut differing = 0;
    for (reference, o) in objects {
        let Some(kind) = cluster
            .served_kind(&o.api_version, &reference.kind)
            .await
            .map_err(|e| e.to_string())?
        else {
            differing += 1;
            println!(
                "{reference}: the API server does not serve {} {} (its CRD is not installed yet)",
                o.api_version, reference.kind
            );
            continue;
        };
        let live = cluster
            .get_object(&kind, reference)
            .await
            .map_err(|e| e.to_string())?;
        let (repo_ann, path_ann) = live.as_ref().map_or_else(
            || (repo.to_string(), args.path.clone()),
            |l| {
                let source = |k: &str| {
                    l.pointer(&format!("/metadata/annotations/{}", k.replace('/', "~1")))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                };
                (
                    source(keys::SOURCE_REPO).unwrap_or_else(|| repo.to_string()),
                    source(keys::SOURCE_PATH).unwrap_or_else(|| args.path.clone()),
                )
            },
        );
        let obj = crate::desired::mark(&o.object, &o.file, &repo_ann, &path_ann);
        let Some(live) = live else {
            differing += 1;
            println!("{reference}: would be created");
            if !args.paths_only {
                println!(
                    "{}",
                    diff::unified_yaml(&reference.to_string(), &Value::Null, &obj)
                );
            }
            continue;
        };
        let dry = cluster
            .apply_object(&kind, reference, &obj, true)
            .await
            .map_err(|e| e.to_string())?;
        let d = diff::compare(&reference.to_string(), &live, &dry);
        if d.is_empty() {
            continue;
        }
        differing += 1;
        println!("{reference}: differs");
        for p in &d.paths {
            println!("  ~ {p}");
        }
        if !args.paths_only {
            println!("{}", d.unified);
        }
    }
    Ok(differing)
}
