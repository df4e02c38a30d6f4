//! `fleet bench`: nodewave side by side with the native DaemonSet controller on
//! one cluster, in one invocation:
//!
//! * (a) a native RollingUpdate (maxUnavailable M) vs nodewave's rollout of the
//!   same change with one stage `"*"` and the same M; (b) the same with one
//!   stage per pool (each with M). Paired runs, native then nodewave, back to
//!   back; each nodewave run starts at the push webhook, each native run at the
//!   template patch, and ends when every node runs a Ready pod of the new image.
//! * (c) Kubernetes API requests per minute with many DaemonSets in sync and
//!   nothing changing: nodewave's own counter and the API server's audit log
//!   (nodewave runs as a user of its own), lease renewals and watch
//!   re-establishments counted apart.
//! * (d) nodewave's peak RSS (VmHWM), also with many DaemonSets on every node.
//! * (e) webhook → first pod delete, from every nodewave run.
//!
//! Each run is also profiled from the pod watch: how long kwok takes to finish
//! a deletion, the controller-manager to create the replacement, the scheduler
//! to bind it, kwok to make it Ready, and the deleting controller (native or
//! nodewave) to react to a Ready pod with the next deletion.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::{Client, ResourceExt as _};
use serde_json::{Value, json};

use crate::ClusterArgs;
use crate::control_plane::{Audited, ControlPlane, audit_len, read_audit, read_others_writes};
use crate::git::{Repo, push_webhook};
use crate::nodewave::{Nodewave, metric_samples};
use crate::replay::PodRecord;
use crate::stats::{median, median_ms, secs, spread};
use crate::watch::{DsWatch, PodWatch, RecordWatch};

const NS: &str = "bench";
const SECRET: &[u8] = b"fleet-bench-secret";
const IDLE_LABEL: &str = "bench.nodewave.io/idle";

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Kubeconfig nodewave runs with: a user of its own, so that the audit log
    /// tells its requests apart.
    #[arg(long)]
    pub nodewave_kubeconfig: PathBuf,
    /// That user's name in the audit log.
    #[arg(long, default_value = "nodewave-bench")]
    pub audit_user: String,
    /// maxUnavailable as a percentage of the nodes (resolved to one count, used
    /// by the native DaemonSet and every nodewave stage alike).
    #[arg(long, default_value_t = 20)]
    pub max_unavailable_percent: usize,
    /// Paired runs per comparison.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// DaemonSets in sync for the idle measurement (c), each on `idle-nodes` nodes.
    #[arg(long, default_value_t = 100)]
    pub idle_daemonsets: usize,
    /// Nodes each idle DaemonSet runs on.
    #[arg(long, default_value_t = 10)]
    pub idle_nodes: usize,
    /// Length of the idle window.
    #[arg(long, default_value_t = 60)]
    pub idle_secs: u64,
    /// nodewave-managed DaemonSets on every node for the memory measurement (d); 0 skips it.
    #[arg(long, default_value_t = 20)]
    pub fleet_daemonsets: usize,
    /// How far the fleet phase (d) goes: `ready` waits for every pod Ready and
    /// every record Synced, then measures one more rollout; `created` measures
    /// once every pod exists (kwok makes pods Ready far more slowly than the
    /// controller-manager creates them: hours for 100,000 pods on 2 cores).
    #[arg(long, value_enum, default_value_t = FleetUntil::Ready)]
    pub fleet_until: FleetUntil,
    /// Longest a single rollout may take.
    #[arg(long, default_value_t = 1800)]
    pub rollout_timeout_secs: u64,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// How far the fleet phase goes before nodewave's memory is sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FleetUntil {
    /// Every pod exists (on its node), Ready or not.
    Created,
    /// Every pod Ready, every record Synced; then one more rollout each way.
    Ready,
}

/// What one rollout's pod states say about where its time went.
#[derive(Debug, Default, Clone, serde::Serialize)]
struct Profile {
    deletions: usize,
    /// Groups of deletions more than 100 ms apart.
    delete_batches: usize,
    /// Median: deletion requested → pod gone (kwok finalizes it).
    kwok_terminate_ms: Option<f64>,
    /// Median: old pod gone → its replacement created (kube-controller-manager).
    recreate_ms: Option<f64>,
    /// Median: replacement created → bound to its node (kube-scheduler).
    bind_ms: Option<f64>,
    /// Median: bound → Ready (kwok).
    ready_ms: Option<f64>,
    /// Median: the latest Ready before a deletion → that deletion (the deleting
    /// controller's reaction; first batch excluded).
    react_ms: Option<f64>,
    /// Trigger → the first old pod seen terminating.
    first_delete_s: Option<f64>,
    done_s: Option<f64>,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
struct Run {
    who: &'static str,
    policy: &'static str,
    /// Trigger → every node runs a Ready pod of the new image.
    total_s: f64,
    /// Trigger → the new template is on the DaemonSet (nodewave only).
    applied_s: Option<f64>,
    /// Trigger → the record says Synced (nodewave only).
    synced_s: Option<f64>,
    cpu_s: Option<f64>,
    profile: Profile,
    /// nodewave's requests during the run by `verb resource`: (count, median ms).
    requests: BTreeMap<String, (usize, f64)>,
    /// nodewave's requests from the webhook to the first pod delete, with their
    /// start offset and duration in ms.
    critical_path: Vec<(String, f64, f64)>,
}

struct Bench {
    a: Args,
    client: Client,
    cp: ControlPlane,
    repo: Repo,
    nw: Nodewave,
    nodes: Vec<(String, String)>,
    m: usize,
    native_pods: PodWatch,
    agent_pods: PodWatch,
    records: RecordWatch,
    ds: DsWatch,
    version: usize,
    /// The policy file content currently committed for `agent`.
    policy: &'static str,
    extra_files: Vec<(String, Option<String>)>,
    anchor: (Instant, SystemTime),
    /// Built once: a client's construction (its TLS roots) is not part of (e).
    http: reqwest::Client,
}

fn wall(anchor: (Instant, SystemTime), at: Instant) -> SystemTime {
    anchor.1 + at.saturating_duration_since(anchor.0)
}

fn container(image: &str) -> Value {
    json!({
        "name": "agent",
        "image": image,
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "100m", "memory": "64Mi"}},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
        "livenessProbe": {"httpGet": {"path": "/live", "port": 8080}}
    })
}

fn native_ds(image: &str, m: usize) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "native", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "native"}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": m, "maxSurge": 0}},
            "template": {"metadata": {"labels": {"app": "native"}}, "spec": {"containers": [container(image)]}}
        }
    })
}

/// A managed DaemonSet as committed to Git (YAML is a superset of JSON).
fn managed_ds(name: &str, image: &str, node_selector: Option<(&str, &str)>) -> String {
    let mut spec = json!({"containers": [container(image)]});
    if let Some((k, v)) = node_selector {
        spec["nodeSelector"] = json!({k: v});
    }
    let ds = json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec}
        }
    });
    serde_json::to_string_pretty(&ds).unwrap_or_default()
}

fn policy(name: &str, stages: &[(String, Vec<String>)], m: usize) -> String {
    let stages: Vec<Value> = stages
        .iter()
        .map(|(n, pools)| json!({"name": n, "pools": pools, "maxUnavailable": m}))
        .collect();
    // A generous readyTimeout: a slow control plane must not turn a measurement into a rollback.
    let p = json!({
        "apiVersion": "nodewave.io/v1alpha1", "kind": "RolloutPolicy",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"target": {"name": name}, "stages": stages, "health": {"readyTimeout": "30m"}}
    });
    serde_json::to_string_pretty(&p).unwrap_or_default()
}

impl Bench {
    fn pools(&self) -> Vec<String> {
        let mut p: Vec<String> = self.nodes.iter().map(|(_, p)| p.clone()).collect();
        p.sort();
        p.dedup();
        p
    }

    fn agent_files(&self, image: &str) -> Vec<(String, Option<String>)> {
        let stages: Vec<(String, Vec<String>)> = if self.policy == "per-pool" {
            self.pools()
                .into_iter()
                .map(|p| (p.clone(), vec![p]))
                .collect()
        } else {
            vec![("all".into(), vec!["*".into()])]
        };
        let mut f = vec![
            (
                "agent.yaml".to_string(),
                Some(managed_ds("agent", image, None)),
            ),
            (
                "agent-policy.yaml".to_string(),
                Some(policy("agent", &stages, self.m)),
            ),
        ];
        f.extend(self.extra_files.iter().cloned());
        f
    }

    async fn webhook(&self, commit: &str) -> anyhow::Result<()> {
        let status = push_webhook(&self.http, &self.nw.url("/webhook"), SECRET, commit).await?;
        anyhow::ensure!(status == 202, "webhook answered {status}");
        Ok(())
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.a.rollout_timeout_secs)
    }

    async fn native_run(&mut self, policy: &'static str) -> anyhow::Result<Run> {
        self.version += 1;
        let image = format!("registry.example/native:{}", self.version);
        self.native_pods.forget();
        let live0 = self.native_pods.live();
        let api: Api<DaemonSet> = Api::namespaced(self.client.clone(), NS);
        let t0 = Instant::now();
        api.patch(
            "native",
            &PatchParams::apply("fleet-bench").force(),
            &Patch::Apply(native_ds(&image, self.m)),
        )
        .await?;
        self.native_pods
            .wait_rolled_out(&image, self.nodes.len(), self.timeout())
            .await?;
        let recs = self.native_pods.since(0);
        let profile = analyze(&live0, &recs, t0, &image, self.nodes.len());
        Ok(Run {
            who: "native",
            policy,
            total_s: profile.done_s.unwrap_or(secs(t0.elapsed())),
            profile,
            ..Run::default()
        })
    }

    async fn nodewave_run(&mut self, policy: &'static str) -> anyhow::Result<Run> {
        self.version += 1;
        let image = format!("registry.example/agent:{}", self.version);
        self.policy = policy;
        let commit = self.repo.commit(
            &format!("agent {}", self.version),
            &self.agent_files(&image),
        )?;
        self.agent_pods.forget();
        let live0 = self.agent_pods.live();
        let gen0 = self.ds.generation("agent");
        let audit_path = self.cp.audit_log();
        let audit0 = audit_len(&audit_path);
        let cpu0 = self.nw.cpu_secs();
        let t0 = Instant::now();
        self.webhook(&commit).await?;
        self.agent_pods
            .wait_rolled_out(&image, self.nodes.len(), self.timeout())
            .await?;
        let synced_at = self
            .records
            .wait("agent", "Synced", &commit, Duration::from_mins(5))
            .await?;
        let cpu = match (cpu0, self.nw.cpu_secs()) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let recs = self.agent_pods.since(0);
        let profile = analyze(&live0, &recs, t0, &image, self.nodes.len());
        let (applied, _) = self.ds.bumped_after("agent", gen0, t0);
        let (audited, _) = read_audit(&audit_path, &self.a.audit_user, audit0).unwrap_or_default();
        let controller = read_others_writes(&audit_path, &self.a.audit_user, "agent", audit0)
            .unwrap_or_default();
        let t0_wall = wall(self.anchor, t0);
        let first_delete_wall = profile
            .first_delete_s
            .map(|s| t0_wall + Duration::from_secs_f64(s));
        Ok(Run {
            who: "nodewave",
            policy,
            total_s: profile.done_s.unwrap_or(secs(t0.elapsed())),
            applied_s: applied.map(|a| secs(a - t0)),
            synced_s: Some(secs(synced_at.saturating_duration_since(t0))),
            cpu_s: cpu,
            requests: request_summary(&audited),
            critical_path: critical_path(&audited, &controller, t0_wall, first_delete_wall),
            profile,
        })
    }

    async fn wait_records_synced(
        &self,
        prefix: &str,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let mut progress = Progress::start();
        let deadline = progress.started + timeout;
        loop {
            let synced = self
                .records
                .all_latest()
                .iter()
                .filter(|r| r.name.starts_with(prefix) && r.phase == "Synced")
                .count();
            if synced >= count {
                return Ok(());
            }
            if progress.due() {
                eprintln!(
                    "[bench] after {:.0}s: {synced} of {count} {prefix}* records Synced; nodewave peak RSS {}",
                    progress.elapsed_s(),
                    peak_mib(self.nw.memory_kib())
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {synced} of {count} {prefix}* records Synced within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits until at least `expect` DaemonSets exist, `prefix`-named ones
    /// among them at least `expect - 2` (the rest are `agent` and `native`),
    /// and every one has an updated pod on every node it should run on: Ready
    /// too, unless `until` is `Created`.
    async fn wait_all_daemonsets(
        &self,
        prefix: &str,
        expect: usize,
        until: FleetUntil,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let api: Api<DaemonSet> = Api::namespaced(self.client.clone(), NS);
        let mut progress = Progress::start();
        let deadline = progress.started + timeout;
        loop {
            let list = api.list(&ListParams::default()).await?;
            if progress.due() {
                let (ready, created, desired) =
                    list.items.iter().fold((0, 0, 0), |(r, c, d), ds| {
                        let s = ds.status.clone().unwrap_or_default();
                        (
                            r + s.number_ready,
                            c + s.current_number_scheduled,
                            d + s.desired_number_scheduled,
                        )
                    });
                eprintln!(
                    "[bench] after {:.0}s: {created} of {desired} pods created, {ready} Ready, in {} DaemonSets; nodewave peak RSS {}",
                    progress.elapsed_s(),
                    list.items.len(),
                    peak_mib(self.nw.memory_kib())
                );
            }
            let pending: Vec<String> = list
                .items
                .iter()
                .filter(|d| {
                    let s = d.status.clone().unwrap_or_default();
                    let waiting_ready =
                        until == FleetUntil::Ready && s.number_ready < s.desired_number_scheduled;
                    s.desired_number_scheduled == 0
                        || waiting_ready
                        || s.current_number_scheduled < s.desired_number_scheduled
                        || s.updated_number_scheduled.unwrap_or(0) < s.desired_number_scheduled
                })
                .map(kube::ResourceExt::name_any)
                .collect();
            let named = list
                .items
                .iter()
                .filter(|d| d.name_any().starts_with(prefix))
                .count();
            if list.items.len() >= expect && named + 2 >= expect && pending.is_empty() {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "DaemonSets not ready within {timeout:?}: {} of {expect} exist, pending {:?}",
                list.items.len(),
                pending.iter().take(5).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

/// Per-UID times from the records of one rollout.
#[derive(Default, Clone)]
struct PodTimes {
    image: String,
    node: String,
    initial: bool,
    first_seen: Option<Instant>,
    bound: Option<Instant>,
    ready: Option<Instant>,
    terminating: Option<Instant>,
    gone: Option<Instant>,
}

fn analyze(
    live0: &BTreeMap<String, PodRecord>,
    recs: &[PodRecord],
    t0: Instant,
    image: &str,
    nodes: usize,
) -> Profile {
    let mut pods: HashMap<String, PodTimes> = live0
        .iter()
        .map(|(uid, r)| {
            (
                uid.clone(),
                PodTimes {
                    image: r.image.clone(),
                    node: r.node.clone(),
                    initial: true,
                    ..PodTimes::default()
                },
            )
        })
        .collect();
    for r in recs {
        let p = pods.entry(r.uid.clone()).or_insert_with(|| PodTimes {
            image: r.image.clone(),
            first_seen: Some(r.at),
            ..PodTimes::default()
        });
        if !r.node.is_empty() {
            p.node.clone_from(&r.node);
            p.bound.get_or_insert(r.at);
        }
        if r.ready && !r.terminating && !r.deleted {
            p.ready.get_or_insert(r.at);
        }
        if r.terminating || r.deleted {
            p.terminating.get_or_insert(r.at);
        }
        if r.deleted {
            p.gone.get_or_insert(r.at);
        }
    }
    let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1000.0;
    let old: Vec<&PodTimes> = pods.values().filter(|p| p.image != image).collect();
    let new: Vec<&PodTimes> = pods
        .values()
        .filter(|p| p.image == image && !p.initial)
        .collect();
    let mut deletes: Vec<Instant> = old.iter().filter_map(|p| p.terminating).collect();
    deletes.sort();
    let mut readies: Vec<Instant> = new.iter().filter_map(|p| p.ready).collect();
    readies.sort();
    let batches = deletes
        .windows(2)
        .filter(|w| w[1].saturating_duration_since(w[0]) > Duration::from_millis(100))
        .count()
        + usize::from(!deletes.is_empty());
    let gone_by_node: HashMap<&str, Instant> = old
        .iter()
        .filter_map(|p| Some((p.node.as_str(), p.gone?)))
        .collect();
    let terminate: Vec<f64> = old
        .iter()
        .filter_map(|p| Some(ms(p.terminating?, p.gone?)))
        .collect();
    let recreate: Vec<f64> = new
        .iter()
        .filter_map(|p| Some(ms(*gone_by_node.get(p.node.as_str())?, p.first_seen?)))
        .collect();
    let bind: Vec<f64> = new
        .iter()
        .filter_map(|p| Some(ms(p.first_seen?, p.bound?)))
        .collect();
    let ready: Vec<f64> = new
        .iter()
        .filter_map(|p| Some(ms(p.bound?, p.ready?)))
        .collect();
    let react: Vec<f64> = deletes
        .iter()
        .filter_map(|d| {
            let i = readies.partition_point(|r| r <= d);
            (i > 0).then(|| ms(readies[i - 1], *d))
        })
        .collect();
    // Done: the moment the last node got its Ready new pod.
    let mut ready_nodes: HashMap<&str, Instant> = HashMap::new();
    for p in &new {
        if let Some(r) = p.ready {
            let e = ready_nodes.entry(p.node.as_str()).or_insert(r);
            if r < *e {
                *e = r;
            }
        }
    }
    let done = (ready_nodes.len() >= nodes)
        .then(|| ready_nodes.values().max().copied())
        .flatten();
    Profile {
        deletions: deletes.len(),
        delete_batches: batches,
        kwok_terminate_ms: median(&terminate),
        recreate_ms: median(&recreate),
        bind_ms: median(&bind),
        ready_ms: median(&ready),
        react_ms: median(&react),
        first_delete_s: deletes
            .first()
            .map(|d| secs(d.saturating_duration_since(t0))),
        done_s: done.map(|d| secs(d.saturating_duration_since(t0))),
    }
}

fn request_key(r: &Audited) -> String {
    let mut k = format!("{} {}", r.verb, r.resource);
    if !r.subresource.is_empty() {
        let _ = write!(k, "/{}", r.subresource);
    }
    if r.dry_run {
        k.push_str(" (dry run)");
    }
    k
}

fn request_summary(reqs: &[Audited]) -> BTreeMap<String, (usize, f64)> {
    let mut by: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    for r in reqs.iter().filter(|r| r.verb != "watch") {
        by.entry(request_key(r))
            .or_default()
            .push(r.completed.duration_since(r.received).unwrap_or_default());
    }
    by.into_iter()
        .map(|(k, v)| {
            let n = v.len();
            (k, (n, median_ms(&v).unwrap_or(0.0)))
        })
        .collect()
}

/// nodewave's requests (`reqs`) and the DaemonSet controller's writes
/// (`controller`) from `t0` to `end`, in order: (what, offset ms, duration ms).
fn critical_path(
    reqs: &[Audited],
    controller: &[Audited],
    t0: SystemTime,
    end: Option<SystemTime>,
) -> Vec<(String, f64, f64)> {
    let Some(end) = end else {
        return Vec::new();
    };
    let mut v: Vec<(bool, &Audited)> = reqs
        .iter()
        .map(|r| (false, r))
        .chain(controller.iter().map(|r| (true, r)))
        .filter(|(_, r)| {
            r.verb != "watch" && r.resource != "leases" && r.received >= t0 && r.received <= end
        })
        .collect();
    v.sort_by_key(|(_, r)| r.received);
    v.into_iter()
        .map(|(by_controller, r)| {
            let at = r
                .received
                .duration_since(t0)
                .unwrap_or_default()
                .as_secs_f64()
                * 1000.0;
            let took = r
                .completed
                .duration_since(r.received)
                .unwrap_or_default()
                .as_secs_f64()
                * 1000.0;
            let what = if by_controller {
                format!("{} (DaemonSet controller)", request_key(r))
            } else {
                request_key(r)
            };
            (what, at, took)
        })
        .collect()
}

async fn ensure_namespace(client: &Client) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(NS).await?.is_none() {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}}))?;
        api.create(&PostParams::default(), &ns).await?;
    }
    Ok(())
}

async fn list_nodes(client: &Client) -> anyhow::Result<Vec<(String, String)>> {
    let api: Api<Node> = Api::all(client.clone());
    let list = api.list_metadata(&ListParams::default()).await?;
    let mut nodes: Vec<(String, String)> = list
        .items
        .into_iter()
        .map(|n: PartialObjectMeta<Node>| {
            let pool = n
                .labels()
                .get("nodewave.io/pool")
                .cloned()
                .unwrap_or_default();
            (n.name_any(), pool)
        })
        .collect();
    nodes.sort();
    Ok(nodes)
}

#[allow(clippy::too_many_lines)]
pub async fn run(a: Args) -> anyhow::Result<()> {
    let cp = ControlPlane::new(&a.cluster.cluster)?;
    let client = crate::control_plane::client_for(&cp.kubeconfig()).await?;
    let nodes = list_nodes(&client).await?;
    anyhow::ensure!(!nodes.is_empty(), "the cluster has no nodes");
    let m = (nodes.len() * a.max_unavailable_percent / 100).max(1);
    ensure_namespace(&client).await?;
    std::fs::create_dir_all(&a.cluster.work)?;
    let secret_file = a.cluster.work.join("webhook-secret");
    std::fs::write(&secret_file, SECRET)?;
    let repo = Repo::init(&a.cluster.work.join("repo"))?;
    eprintln!(
        "[bench] {} nodes in pools {:?}; maxUnavailable {m} ({}%)",
        nodes.len(),
        {
            let mut p: Vec<&str> = nodes.iter().map(|(_, p)| p.as_str()).collect();
            p.dedup();
            p
        },
        a.max_unavailable_percent
    );

    let api: Api<DaemonSet> = Api::namespaced(client.clone(), NS);
    api.patch(
        "native",
        &PatchParams::apply("fleet-bench").force(),
        &Patch::Apply(native_ds("registry.example/native:0", m)),
    )
    .await?;
    let secret = secret_file.display().to_string();
    let nw_args = Nodewave::run_args(
        &repo.url(),
        &a.cluster.work.join("state"),
        "1h",
        NS,
        &a.nodewave_kubeconfig,
        &["--webhook-secret-file", &secret],
    );
    let mut b = Bench {
        client: client.clone(),
        repo,
        nw: Nodewave::spawn(
            "nodewave",
            &a.cluster.nodewave,
            nw_args,
            a.cluster.work.join("nodewave.log"),
        )?,
        nodes,
        m,
        native_pods: PodWatch::start(client.clone(), NS, "app=native").await?,
        agent_pods: PodWatch::start(client.clone(), NS, "app=agent").await?,
        records: RecordWatch::start(client.clone(), NS, false),
        ds: DsWatch::start(client.clone(), NS),
        version: 0,
        policy: "all",
        extra_files: Vec::new(),
        anchor: (Instant::now(), SystemTime::now()),
        // A new connection per webhook, as GitHub makes.
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()?,
        cp,
        a,
    };
    let c0 = b
        .repo
        .commit("agent 0", &b.agent_files("registry.example/agent:0"))?;
    b.nw.wait_healthy(Duration::from_mins(1)).await?;
    let t = Instant::now();
    b.records
        .wait("agent", "Synced", &c0, Duration::from_mins(30))
        .await?;
    let n = b.nodes.len();
    b.agent_pods
        .wait_rolled_out("registry.example/agent:0", n, Duration::from_mins(30))
        .await?;
    b.native_pods
        .wait_rolled_out("registry.example/native:0", n, Duration::from_mins(30))
        .await?;
    eprintln!(
        "[bench] both DaemonSets on {n} nodes after {:.0}s",
        t.elapsed().as_secs_f64()
    );

    let mut runs: Vec<Run> = Vec::new();
    for policy in ["all", "per-pool"] {
        for i in 0..b.a.runs {
            let native = b.native_run(policy).await?;
            eprintln!(
                "[bench] {policy} run {}: native {:.1}s",
                i + 1,
                native.total_s
            );
            runs.push(native);
            let nw = b.nodewave_run(policy).await?;
            eprintln!(
                "[bench] {policy} run {}: nodewave {:.1}s (webhook -> first delete {:.0} ms)",
                i + 1,
                nw.total_s,
                nw.profile.first_delete_s.unwrap_or(f64::NAN) * 1000.0
            );
            runs.push(nw);
        }
    }
    let mem_after_rollouts = b.nw.memory_kib();

    // (c) idle
    let idle = idle_phase(&mut b).await?;
    let mem_after_idle = b.nw.memory_kib();

    let report = |b: &Bench, fleet: Option<&Fleet>| -> anyhow::Result<String> {
        if let Some(path) = &b.a.json {
            let doc = json!({
                "nodes": b.nodes.len(),
                "max_unavailable": b.m,
                "runs": runs,
                "idle": idle,
                "fleet": fleet,
                "memory_kib_after_rollouts": mem_after_rollouts,
                "memory_kib_after_idle": mem_after_idle,
            });
            std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
        }
        Ok(render(
            b,
            &runs,
            &idle,
            fleet,
            mem_after_rollouts,
            mem_after_idle,
        ))
    };

    // (d) many DaemonSets on every node: the longest phase by far at fleet
    // scale, so what is measured already is printed (and written) first, and
    // a run stopped during it keeps (a), (b), (c) and (e).
    let fleet = if b.a.fleet_daemonsets > 0 {
        eprintln!("[bench] before the fleet phase:\n{}", report(&b, None)?);
        Some(fleet_phase(&mut b).await?)
    } else {
        None
    };
    println!("{}", report(&b, fleet.as_ref())?);
    b.nw.stop(Duration::from_secs(10)).await;
    Ok(())
}

#[derive(Debug, Default, Clone, serde::Serialize)]
struct Idle {
    daemonsets: usize,
    window_s: f64,
    /// nodewave_kube_requests_total increase per minute, by label set.
    metric_per_min: BTreeMap<String, f64>,
    metric_total_per_min: f64,
    /// Audit log, per minute.
    audit_other_per_min: f64,
    audit_leases_per_min: f64,
    audit_watches_per_min: f64,
    audit_other: BTreeMap<String, usize>,
}

async fn idle_phase(b: &mut Bench) -> anyhow::Result<Idle> {
    let count = b.a.idle_daemonsets.saturating_sub(1);
    let node_api: Api<Node> = Api::all(b.client.clone());
    for (name, _) in b.nodes.iter().take(b.a.idle_nodes) {
        node_api
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {IDLE_LABEL: "true"}}})),
            )
            .await?;
    }
    b.extra_files = (1..=count)
        .map(|i| {
            let name = format!("idle-{i:03}");
            (
                format!("idle/{name}.yaml"),
                Some(managed_ds(
                    &name,
                    "registry.example/idle:1",
                    Some((IDLE_LABEL, "true")),
                )),
            )
        })
        .collect();
    let image = format!("registry.example/agent:{}", b.version);
    let commit = b.repo.commit("idle daemonsets", &b.agent_files(&image))?;
    b.webhook(&commit).await?;
    b.wait_records_synced("idle-", count, Duration::from_mins(20))
        .await?;
    b.wait_all_daemonsets(
        "idle-",
        count + 2,
        FleetUntil::Ready,
        Duration::from_mins(20),
    )
    .await?;
    eprintln!(
        "[bench] {} DaemonSets in sync; settling 20 s, then counting for {} s",
        count + 1,
        b.a.idle_secs
    );
    tokio::time::sleep(Duration::from_secs(20)).await;

    let audit_path = b.cp.audit_log();
    let m0 = metric_samples(&b.nw.metrics().await?, "nodewave_kube_requests_total");
    let a0 = audit_len(&audit_path);
    let t = Instant::now();
    let w0 = SystemTime::now();
    tokio::time::sleep(Duration::from_secs(b.a.idle_secs)).await;
    let m1 = metric_samples(&b.nw.metrics().await?, "nodewave_kube_requests_total");
    let window = t.elapsed().as_secs_f64();
    let w1 = SystemTime::now();
    let per_min = |n: f64| n * 60.0 / window;
    let before: HashMap<String, f64> = m0.into_iter().collect();
    let metric_per_min: BTreeMap<String, f64> = m1
        .into_iter()
        .map(|(k, v)| {
            let d = v - before.get(&k).copied().unwrap_or(0.0);
            (k, per_min(d))
        })
        .filter(|(_, v)| *v > 0.0)
        .collect();
    let (audited, _) = read_audit(&audit_path, &b.a.audit_user, a0).unwrap_or_default();
    let in_window: Vec<&Audited> = audited
        .iter()
        .filter(|r| r.completed >= w0 && r.completed <= w1)
        .collect();
    let leases = in_window
        .iter()
        .filter(|r| r.resource == "leases" && r.verb != "watch")
        .count();
    let watches = in_window.iter().filter(|r| r.verb == "watch").count();
    let mut other: BTreeMap<String, usize> = BTreeMap::new();
    for r in in_window
        .iter()
        .filter(|r| r.resource != "leases" && r.verb != "watch")
    {
        *other.entry(request_key(r)).or_default() += 1;
    }
    #[allow(clippy::cast_precision_loss)]
    let idle = Idle {
        daemonsets: count + 1,
        window_s: window,
        // abs: an empty f64 sum is -0.0, which would print as "-0.0" (every term is > 0).
        metric_total_per_min: metric_per_min.values().sum::<f64>().abs(),
        metric_per_min,
        audit_other_per_min: per_min(other.values().sum::<usize>() as f64),
        audit_leases_per_min: per_min(leases as f64),
        audit_watches_per_min: per_min(watches as f64),
        audit_other: other,
    };
    Ok(idle)
}

#[derive(Debug, Default, Clone, serde::Serialize)]
struct Fleet {
    daemonsets: usize,
    pods: usize,
    until: Option<FleetUntil>,
    load_s: f64,
    memory_kib_loaded: Option<(u64, u64)>,
    rollout: Option<Run>,
    native: Option<Run>,
    memory_kib_after_rollout: Option<(u64, u64)>,
}

async fn fleet_phase(b: &mut Bench) -> anyhow::Result<Fleet> {
    let count = b.a.fleet_daemonsets.saturating_sub(1);
    let mut files: Vec<(String, Option<String>)> = b
        .extra_files
        .iter()
        .map(|(p, _)| (p.clone(), None))
        .collect();
    files.extend((1..=count).map(|i| {
        let name = format!("fleet-{i:02}");
        (
            format!("fleet/{name}.yaml"),
            // With the generous readyTimeout too: 20,000 pods created at once take
            // longer than the default 5 minutes, which failed their first rollout.
            Some(format!(
                "{}\n---\n{}\n",
                managed_ds(&name, "registry.example/fleet:1", None),
                policy(&name, &[("all".to_string(), vec!["*".to_string()])], b.m)
            )),
        )
    }));
    b.extra_files = files;
    let image = format!("registry.example/agent:{}", b.version);
    let commit = b.repo.commit("fleet daemonsets", &b.agent_files(&image))?;
    b.extra_files.retain(|(_, c)| c.is_some());
    let t = Instant::now();
    b.webhook(&commit).await?;
    let until = b.a.fleet_until;
    if until == FleetUntil::Ready {
        b.wait_records_synced("fleet-", count, Duration::from_mins(90))
            .await?;
    }
    b.wait_all_daemonsets("fleet-", count + 2, until, Duration::from_mins(90))
        .await?;
    let load_s = t.elapsed().as_secs_f64();
    if until == FleetUntil::Created {
        // The pod watch delivers the last creations within seconds; a minute
        // more lets nodewave's reconciles of the open rollouts settle.
        tokio::time::sleep(Duration::from_mins(1)).await;
    }
    let memory_kib_loaded = b.nw.memory_kib();
    eprintln!(
        "[bench] {} nodewave DaemonSets on every node ({} pods, {until:?}) after {load_s:.0}s; nodewave peak RSS {}",
        count + 1,
        (count + 2) * b.nodes.len(),
        peak_mib(memory_kib_loaded)
    );
    let (native, rollout) = if until == FleetUntil::Ready {
        (
            b.native_run("all").await.ok(),
            b.nodewave_run("all").await.ok(),
        )
    } else {
        (None, None)
    };
    Ok(Fleet {
        daemonsets: count + 1,
        pods: (count + 2) * b.nodes.len(),
        until: Some(until),
        load_s,
        memory_kib_loaded,
        rollout,
        native,
        memory_kib_after_rollout: b.nw.memory_kib(),
    })
}

/// One progress line a minute during a long wait.
struct Progress {
    started: Instant,
    next: Instant,
}

impl Progress {
    fn start() -> Self {
        let started = Instant::now();
        Self {
            started,
            next: started + Duration::from_mins(1),
        }
    }

    /// Whether the next line is due (then the one after is a minute away).
    fn due(&mut self) -> bool {
        let due = Instant::now() >= self.next;
        if due {
            self.next += Duration::from_mins(1);
        }
        due
    }

    fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// The peak of a `(VmHWM, VmRSS)` sample in KiB, or "-" when there is none.
fn peak_mib(memory_kib: Option<(u64, u64)>) -> String {
    memory_kib.map_or_else(|| "-".into(), |(peak, _)| mib(peak))
}

fn mib(kib: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let m = kib as f64 / 1024.0;
    format!("{m:.1} MiB")
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

#[allow(clippy::too_many_lines)]
fn render(
    b: &Bench,
    runs: &[Run],
    idle: &Idle,
    fleet: Option<&Fleet>,
    mem_rollouts: Option<(u64, u64)>,
    mem_idle: Option<(u64, u64)>,
) -> String {
    let mut o = String::new();
    let n = b.nodes.len();
    let _ = writeln!(
        o,
        "\n== nodewave vs the native DaemonSet controller: {n} kwok nodes, {} pools, maxUnavailable {} ({}%), {} paired runs, nodewave release build ==\n",
        b.pools().len(),
        b.m,
        b.a.max_unavailable_percent,
        b.a.runs
    );
    let _ = writeln!(
        o,
        "| | native RollingUpdate (s) | nodewave (s) | ratio: median (min–max) |"
    );
    let _ = writeln!(o, "| --- | --- | --- | --- |");
    for (policy, label) in [
        ("all", "(a) one stage \"*\""),
        ("per-pool", "(b) one stage per pool"),
    ] {
        let native: Vec<f64> = runs
            .iter()
            .filter(|r| r.who == "native" && r.policy == policy)
            .map(|r| r.total_s)
            .collect();
        let nw: Vec<f64> = runs
            .iter()
            .filter(|r| r.who == "nodewave" && r.policy == policy)
            .map(|r| r.total_s)
            .collect();
        let ratios: Vec<f64> = native.iter().zip(&nw).map(|(a, b)| b / a).collect();
        let list = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.1}"))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let _ = writeln!(
            o,
            "| {label} | {} | {} | {} |",
            list(&native),
            list(&nw),
            spread(&ratios, 2)
        );
    }
    let first_delete: Vec<f64> = runs
        .iter()
        .filter(|r| r.who == "nodewave")
        .filter_map(|r| r.profile.first_delete_s.map(|s| s * 1000.0))
        .collect();
    let _ = writeln!(
        o,
        "| (e) webhook → first pod delete (ms), p50 (min–max) of {} runs | | {} | |",
        first_delete.len(),
        spread(&first_delete, 0)
    );
    let _ = writeln!(
        o,
        "| (c) API requests/min, {} DaemonSets in sync, {:.0} s idle | | {:.1} (nodewave_kube_requests_total); audit log: {:.1} besides leases, {:.1} lease requests, {:.1} watch re-establishments | |",
        idle.daemonsets,
        idle.window_s,
        idle.metric_total_per_min,
        idle.audit_other_per_min,
        idle.audit_leases_per_min,
        idle.audit_watches_per_min
    );
    if let Some((hwm, _)) = mem_rollouts {
        let _ = writeln!(
            o,
            "| (d) peak RSS (VmHWM) after the rollouts above (1 managed DaemonSet on every node) | | {} | |",
            mib(hwm)
        );
    }
    if let Some((hwm, rss)) = mem_idle {
        let _ = writeln!(
            o,
            "| (d) peak RSS after the idle phase ({} DaemonSets) / RSS now | | {} / {} | |",
            idle.daemonsets,
            mib(hwm),
            mib(rss)
        );
    }
    if let Some(f) = fleet {
        if let Some((hwm, rss)) = f.memory_kib_loaded {
            let _ = writeln!(
                o,
                "| (d) peak RSS with {} managed DaemonSets on every node ({} pods {}), loaded in {:.0} s / RSS now | | {} / {} | |",
                f.daemonsets,
                f.pods,
                if f.until == Some(FleetUntil::Created) {
                    "created, not all Ready"
                } else {
                    "Ready"
                },
                f.load_s,
                mib(hwm),
                mib(rss)
            );
        }
        if let (Some(nat), Some(r), Some((hwm, _))) =
            (&f.native, &f.rollout, f.memory_kib_after_rollout)
        {
            let _ = writeln!(
                o,
                "| (d) … after one more rollout (native {:.1} s, nodewave {:.1} s, ratio {:.2}) | | {} | |",
                nat.total_s,
                r.total_s,
                r.total_s / nat.total_s,
                mib(hwm)
            );
        }
    }

    let _ = writeln!(
        o,
        "\nWhere the time goes (medians per pod from the pod watch, ms):\n"
    );
    let _ = writeln!(
        o,
        "| run | total s | applied s | first delete s | synced s | deletions | delete batches | reaction (Ready → next delete) | kwok finalizes delete | controller-manager recreates | scheduler binds | kwok Ready | nodewave CPU s |"
    );
    let _ = writeln!(
        o,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for r in runs.iter().chain(
        fleet
            .iter()
            .flat_map(|f| f.native.iter().chain(f.rollout.iter())),
    ) {
        let p = &r.profile;
        let _ = writeln!(
            o,
            "| {} {} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.who,
            r.policy,
            r.total_s,
            r.applied_s.map_or("-".into(), |v| format!("{v:.2}")),
            p.first_delete_s.map_or("-".into(), |v| format!("{v:.2}")),
            r.synced_s.map_or("-".into(), |v| format!("{v:.1}")),
            p.deletions,
            p.delete_batches,
            opt_ms(p.react_ms),
            opt_ms(p.kwok_terminate_ms),
            opt_ms(p.recreate_ms),
            opt_ms(p.bind_ms),
            opt_ms(p.ready_ms),
            r.cpu_s.map_or("-".into(), |v| format!("{v:.1}")),
        );
    }
    if let Some(r) = runs.iter().find(|r| r.who == "nodewave") {
        let _ = writeln!(
            o,
            "\nnodewave's requests in its first run (audit log; count, median server time ms):"
        );
        for (k, (c, med)) in &r.requests {
            let _ = writeln!(o, "  {k:<45} {c:>6}  {med:>7.1}");
        }
        let _ = writeln!(
            o,
            "\nwebhook → first pod delete, nodewave's requests and the DaemonSet controller's writes (offset ms, duration ms):"
        );
        for (k, at, took) in r.critical_path.iter().take(40) {
            let _ = writeln!(o, "  +{at:>7.1}  {took:>6.1}  {k}");
        }
    }
    if !idle.audit_other.is_empty() {
        let _ = writeln!(
            o,
            "\nidle requests besides leases and watches: {:?}",
            idle.audit_other
        );
    }
    if !idle.metric_per_min.is_empty() {
        let _ = writeln!(
            o,
            "idle nodewave_kube_requests_total per minute: {:?}",
            idle.metric_per_min
        );
    }
    o
}
