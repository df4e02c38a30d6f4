//! `fleet chaos`: repeated staged rollouts on the local cluster while faults are
//! injected at random moments — nodewave SIGKILLed, kube-controller-manager
//! SIGSTOPped and SIGCONTed, kube-apiserver restarted, leadership flipped
//! between two `--leader-elect` replicas (SIGTERM of the leader: it gives the
//! lease up) — and every recorded observation of the pods and the
//! `DaemonSetRollout` record checked against the rollout invariants:
//!
//! * never more than a stage's maxUnavailable of its nodes without a Ready pod,
//!   stages in order, no pod of a later stage replaced before the earlier stage
//!   passed (`replay::staged_violations`, shared with the cluster tests);
//! * the record's stage never goes back during a rollout, and it never says
//!   Synced before every node runs a Ready pod of the commit;
//! * every rollout ends with all pods on one revision and the record Synced (a
//!   good commit) or RolledBack (a crash-looping one, which may only ever reach
//!   the canary), with no pod of the failed commit left running.
//!
//! Prints trials run, violations, and the slowest recovery (a fault's end →
//! nodewave's next record write, for faults that hit an open rollout).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt as _};
use nodewave::record::Work;
use rustix::process::Signal;
use serde_json::json;
use tokio::sync::Mutex;

use crate::ClusterArgs;
use crate::control_plane::{ControlPlane, client_for, wait_api_ready};
use crate::git::Repo;
use crate::nodewave::Nodewave;
use crate::replay::{PodRecord, replay, staged_violations};
use crate::watch::{PodWatch, RecordObs, RecordWatch};

const NS: &str = "chaos";
const GOOD: &str = "registry.example/agent-slowready";
const BAD: &str = "registry.example/agent-crashloop";

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Trials (staged rollouts) to run.
    #[arg(long, default_value_t = 100)]
    pub trials: usize,
    /// No trial starts after this many minutes; the run is bounded by it plus
    /// one trial's timeout.
    #[arg(long, default_value_t = 60)]
    pub minutes: u64,
    /// Longest one trial may take before it counts as a violation.
    #[arg(long, default_value_t = 240)]
    pub trial_timeout_secs: u64,
    /// Share of trials that commit a crash-looping image (rolled back).
    #[arg(long, default_value_t = 0.2)]
    pub bad_share: f64,
    /// Random seed (default: the time); printed, so a run can be repeated.
    #[arg(long)]
    pub seed: Option<u64>,
}

/// xorshift64*: enough randomness for fault timing, no extra crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    #[allow(clippy::cast_precision_loss)]
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi.saturating_sub(lo) + 1))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGKILL the leader (a crash); it is started again after a moment.
    KillLeader,
    /// SIGKILL the standby.
    KillStandby,
    /// SIGTERM the leader: it gives its lease up and the standby takes over.
    FlipLeader,
    /// SIGSTOP kube-controller-manager for a while, then SIGCONT.
    StopControllerManager,
    /// Stop kube-apiserver and start it again.
    RestartApiServer,
}

const FAULTS: [Fault; 5] = [
    Fault::KillLeader,
    Fault::KillStandby,
    Fault::FlipLeader,
    Fault::StopControllerManager,
    Fault::RestartApiServer,
];

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "SIGKILL leader",
            Fault::KillStandby => "SIGKILL standby",
            Fault::FlipLeader => "leadership flip (SIGTERM leader)",
            Fault::StopControllerManager => "SIGSTOP kube-controller-manager",
            Fault::RestartApiServer => "restart kube-apiserver",
        }
    }
}

/// Two replicas, kept running like a Deployment would (a replica that exits,
/// e.g. after losing its lease, is started again), except while a fault holds
/// one down.
struct Replicas {
    nw: Vec<Nodewave>,
    held: Vec<bool>,
    restarts: usize,
}

impl Replicas {
    async fn leader(&self) -> Option<usize> {
        for (i, n) in self.nw.iter().enumerate() {
            if n.is_leader().await {
                return Some(i);
            }
        }
        None
    }

    fn supervise(&mut self) {
        for i in 0..self.nw.len() {
            if !self.held[i] && !self.nw[i].running() {
                self.nw[i].kill();
                if self.nw[i].start().is_ok() {
                    self.restarts += 1;
                }
            }
        }
    }
}

/// SIGCONTs kube-controller-manager when dropped, whatever happened.
struct Continue<'a>(&'a ControlPlane);

impl Drop for Continue<'_> {
    fn drop(&mut self) {
        let _ = self.0.signal("kube-controller-manager", Signal::CONT);
    }
}

#[derive(Debug, Clone)]
struct Injected {
    fault: Fault,
    /// When the fault ended (process killed, controller-manager continued,
    /// kube-apiserver ready again, leader gone).
    ended: Instant,
    detail: String,
}

async fn inject(
    fault: Fault,
    cp: &ControlPlane,
    client: &Client,
    replicas: &Mutex<Replicas>,
    rng: &Mutex<Rng>,
) -> anyhow::Result<Injected> {
    let detail;
    match fault {
        Fault::KillLeader | Fault::KillStandby | Fault::FlipLeader => {
            let mut r = replicas.lock().await;
            let leader = r.leader().await;
            let i = match (fault, leader) {
                (Fault::KillStandby, Some(l)) => 1 - l,
                (_, Some(l)) => l,
                (_, None) => usize::try_from(rng.lock().await.below(2)).unwrap_or(0),
            };
            detail = format!(
                "replica {i} ({})",
                if leader == Some(i) {
                    "leader"
                } else {
                    "not leading"
                }
            );
            r.held[i] = true;
            if fault == Fault::FlipLeader {
                r.nw[i].stop(Duration::from_secs(15)).await;
            } else {
                r.nw[i].kill();
            }
            drop(r);
            let ended = Instant::now();
            let pause = rng.lock().await.millis(0, 3_000);
            tokio::time::sleep(pause).await;
            let mut r = replicas.lock().await;
            r.held[i] = false;
            r.supervise();
            return Ok(Injected {
                fault,
                ended,
                detail,
            });
        }
        Fault::StopControllerManager => {
            let pause = rng.lock().await.millis(3_000, 30_000);
            cp.signal("kube-controller-manager", Signal::STOP)?;
            let guard = Continue(cp);
            tokio::time::sleep(pause).await;
            drop(guard);
            detail = format!("stopped {:.1}s", pause.as_secs_f64());
        }
        Fault::RestartApiServer => {
            let t = Instant::now();
            let cp_dir = cp.dir.clone();
            tokio::task::spawn_blocking(move || {
                ControlPlane { dir: cp_dir }.restart("kube-apiserver")
            })
            .await??;
            let up = wait_api_ready(client, Duration::from_mins(2)).await?;
            detail = format!(
                "down {:.1}s (ready {:.1}s after the start)",
                t.elapsed().as_secs_f64(),
                up.as_secs_f64()
            );
        }
    }
    Ok(Injected {
        fault,
        ended: Instant::now(),
        detail,
    })
}

fn agent_yaml(image: &str) -> String {
    let ds = json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "agent", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {
                "metadata": {"labels": {"app": "agent"}, "annotations": {"nodewave.io/kwok-ready-delay": "700ms"}},
                "spec": {"containers": [{
                    "name": "agent", "image": image,
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "100m", "memory": "64Mi"}},
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
                    "livenessProbe": {"httpGet": {"path": "/live", "port": 8080}}
                }]}
            }
        }
    });
    // The ready timeout outlasts the longest controller-manager stop, so only a
    // crash-looping image fails a gate.
    let policy = json!({
        "apiVersion": "nodewave.io/v1alpha1", "kind": "RolloutPolicy",
        "metadata": {"name": "agent", "namespace": NS},
        "spec": {
            "target": {"name": "agent"},
            "stages": [
                {"name": "canary", "pools": ["pool-a"], "nodes": 1, "maxUnavailable": 1},
                {"name": "pool-a", "pools": ["pool-a"], "maxUnavailable": 1},
                {"name": "rest", "pools": ["*"], "maxUnavailable": 3}
            ],
            "health": {"readyTimeout": "2m", "maxRestarts": 1},
            "rollback": {"maxUnavailable": "50%"}
        }
    });
    format!(
        "{}\n---\n{}\n",
        serde_json::to_string_pretty(&ds).unwrap_or_default(),
        serde_json::to_string_pretty(&policy).unwrap_or_default()
    )
}

/// The forward rollout's stages of `commit` as the record first showed them:
/// (name, nodes, maxUnavailable).
fn recorded_stages(obs: &[RecordObs], commit: &str) -> Option<Vec<(String, Vec<String>, usize)>> {
    obs.iter()
        .find_map(|o| match o.state.as_ref().map(|s| &s.work) {
            Some(Work::Rolling { target, rollout })
                if target.commit == commit && !rollout.is_rollback() =>
            {
                Some(
                    rollout
                        .stages
                        .iter()
                        .map(|s| {
                            let nodes = s.nodes.iter().map(ToString::to_string).collect();
                            (s.name.clone(), nodes, s.max_unavailable)
                        })
                        .collect(),
                )
            }
            _ => None,
        })
}

/// What one trial committed.
struct TrialCommit<'a> {
    commit: &'a str,
    /// A crash-looping image: the rollout must roll back.
    bad: bool,
    image: &'a str,
    /// The image of the last good commit (what a rollback returns to).
    previous_image: &'a str,
}

/// The violations one trial's observations show.
#[allow(clippy::too_many_lines)]
fn check_trial(
    t: &TrialCommit<'_>,
    nodes: &BTreeMap<String, String>,
    live0: &BTreeMap<String, PodRecord>,
    pods: &[PodRecord],
    recs: &[RecordObs],
) -> Vec<String> {
    let TrialCommit {
        commit,
        bad,
        image,
        previous_image,
    } = *t;
    let mut v = Vec::new();
    let mut all: Vec<PodRecord> = live0
        .values()
        .cloned()
        .map(|mut r| {
            r.initial = true;
            r
        })
        .collect();
    all.extend(pods.iter().cloned());
    let agent: Vec<&RecordObs> = recs.iter().filter(|r| r.name == "agent").collect();
    if let Some(e) = agent.iter().find_map(|r| r.decode_error.clone()) {
        v.push(format!("record could not be decoded: {e}"));
    }
    let Some(stages) = recorded_stages(recs, commit) else {
        v.push("the record never showed the rollout's stages".into());
        return v;
    };
    // The stages are what the policy says: a 1-node canary in pool-a, the rest
    // of pool-a, then every other node.
    let pool = |n: &str| nodes.get(n).map_or("", String::as_str);
    let shape_ok = stages.len() == 3
        && stages[0].1.len() == 1
        && stages[0].1.iter().all(|n| pool(n) == "pool-a")
        && stages[1].1.iter().all(|n| pool(n) == "pool-a")
        && stages[2].1.iter().all(|n| pool(n) != "pool-a")
        && stages.iter().map(|s| s.1.len()).sum::<usize>() == nodes.len();
    if !shape_ok {
        v.push(format!("stages do not match the policy: {stages:?}"));
    }
    let stage_nodes: Vec<Vec<String>> = stages.iter().map(|s| s.1.clone()).collect();
    let maxes: Vec<usize> = stages.iter().map(|s| s.2).collect();

    // The record's stage index of this commit's forward rollout never goes back.
    let mut last_stage = 0usize;
    for o in &agent {
        if let Some(Work::Rolling { target, rollout }) = o.state.as_ref().map(|s| &s.work)
            && target.commit == commit
            && !rollout.is_rollback()
        {
            if rollout.stage < last_stage {
                v.push(format!(
                    "record went back from stage {last_stage} to {}",
                    rollout.stage
                ));
            }
            last_stage = rollout.stage;
        }
    }

    if bad {
        // A crash-looping commit never gets past the canary, and is rolled back.
        let canary = &stage_nodes[0];
        for p in pods
            .iter()
            .filter(|p| p.image == image && !p.node.is_empty())
        {
            if !canary.contains(&p.node) {
                v.push(format!(
                    "pod {} of the failed commit ran on {} outside the canary",
                    p.name, p.node
                ));
            }
        }
        for p in pods
            .iter()
            .filter(|p| (p.deleted || p.terminating) && p.image == previous_image)
        {
            if !canary.contains(&p.node) && !p.node.is_empty() {
                v.push(format!(
                    "old pod {} on {} replaced although the canary never passed",
                    p.name, p.node
                ));
            }
        }
        let rep = replay(&all, &stage_nodes[..1], image);
        if rep.max_unavailable[0] > maxes[0] {
            v.push(format!(
                "canary had {} nodes down, maxUnavailable {}",
                rep.max_unavailable[0], maxes[0]
            ));
        }
        let ok_end = agent
            .last()
            .is_some_and(|r| r.phase == "RolledBack" && r.failed.iter().any(|c| c == commit));
        if !ok_end {
            v.push(format!(
                "record did not end RolledBack with {commit} failed: {:?}",
                agent
                    .last()
                    .map(|r| (&r.phase, &r.rollout_phase, &r.failed))
            ));
        }
    } else {
        let rep = replay(&all, &stage_nodes, image);
        v.extend(staged_violations(&rep, &stage_nodes, &maxes));
        let ok_end = agent
            .last()
            .is_some_and(|r| r.phase == "Synced" && r.applied.as_deref() == Some(commit));
        if !ok_end {
            v.push(format!(
                "record did not end Synced at {commit}: {:?}",
                agent
                    .last()
                    .map(|r| (&r.phase, &r.rollout_phase, &r.applied))
            ));
        }
        // Never Synced early: when the record first says Synced at this commit,
        // every node already runs a Ready pod of it.
        if let Some(first) = agent
            .iter()
            .find(|r| r.phase == "Synced" && r.applied.as_deref() == Some(commit))
        {
            let before: Vec<PodRecord> = all
                .iter()
                .filter(|p| p.initial || p.at <= first.at)
                .cloned()
                .collect();
            let rep = replay(&before, &stage_nodes, image);
            let missing: Vec<&String> = nodes
                .keys()
                .filter(|n| !rep.ready_new_at.contains_key(*n))
                .collect();
            if !missing.is_empty() {
                v.push(format!(
                    "record said Synced before {} nodes ran the commit: {missing:?}",
                    missing.len()
                ));
            }
        }
    }
    v
}

#[derive(Default)]
struct Summary {
    trials: usize,
    bad_trials: usize,
    faults: BTreeMap<&'static str, usize>,
    violations: Vec<String>,
    slowest_recovery: Option<(Duration, usize, String)>,
    slowest_trial: Option<(Duration, usize)>,
    /// Faults the driver could not inject (the run then did not test what it says).
    failed_faults: Vec<String>,
    restarts: usize,
}

#[allow(clippy::too_many_lines)]
pub async fn run(a: Args) -> anyhow::Result<()> {
    let cp = Arc::new(ControlPlane::new(&a.cluster.cluster)?);
    let client = client_for(&cp.kubeconfig()).await?;
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| (d.as_secs() << 30) ^ u64::from(d.subsec_nanos()) | 1)
    });
    let rng = Mutex::new(Rng(seed));
    let nodes: BTreeMap<String, String> = Api::<Node>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|n| {
            let pool = n
                .labels()
                .get("nodewave.io/pool")
                .cloned()
                .unwrap_or_default();
            (n.name_any(), pool)
        })
        .collect();
    let ns_api: Api<Namespace> = Api::all(client.clone());
    if ns_api.get_opt(NS).await?.is_none() {
        ns_api
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": NS}}))?,
            )
            .await?;
    }
    std::fs::create_dir_all(&a.cluster.work)?;
    let repo = Repo::init(&a.cluster.work.join("repo"))?;
    let mut version = 0usize;
    let mut good_image = format!("{GOOD}:v0");
    let mut commit = repo.commit(
        "v0",
        &[("agent.yaml".into(), Some(agent_yaml(&good_image)))],
    )?;
    let replica = |i: usize| -> anyhow::Result<Nodewave> {
        let args = Nodewave::run_args(
            &repo.url(),
            &a.cluster.work.join(format!("state-{i}")),
            "1s",
            NS,
            &cp.kubeconfig(),
            &[],
        );
        Nodewave::spawn(
            &format!("replica-{i}"),
            &a.cluster.nodewave,
            args,
            a.cluster.work.join(format!("nodewave-{i}.log")),
        )
    };
    let replicas = Arc::new(Mutex::new(Replicas {
        nw: vec![replica(0)?, replica(1)?],
        held: vec![false, false],
        restarts: 0,
    }));
    let pods = PodWatch::start(client.clone(), NS, "app=agent").await?;
    let records = RecordWatch::start(client.clone(), NS, true);
    records
        .wait("agent", "Synced", &commit, Duration::from_mins(3))
        .await?;
    pods.wait_rolled_out(&good_image, nodes.len(), Duration::from_mins(3))
        .await?;
    eprintln!(
        "[chaos] {} nodes, 2 replicas with --leader-elect, seed {seed}; up to {} trials within {} min",
        nodes.len(),
        a.trials,
        a.minutes
    );

    // Keeps both replicas running between faults, and the control-plane
    // components that exit on their own (kube-controller-manager and
    // kube-scheduler give up when they cannot renew their leader lease while
    // kube-apiserver is down) started again, as the kubelet would.
    let revived: Arc<Mutex<BTreeMap<&'static str, usize>>> = Arc::default();
    let supervisor = {
        let (replicas, cp, revived) = (replicas.clone(), cp.clone(), revived.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                replicas.lock().await.supervise();
                for c in [
                    "kube-controller-manager",
                    "kube-scheduler",
                    "kwok-controller",
                ] {
                    match cp.revive(c) {
                        Ok(true) => {
                            eprintln!("[chaos] {c} had exited; started it again");
                            *revived.lock().await.entry(c).or_default() += 1;
                        }
                        Ok(false) => {}
                        Err(e) => eprintln!("[chaos] cannot check or start {c}: {e}"),
                    }
                }
            }
        })
    };

    let started = Instant::now();
    let mut sum = Summary::default();
    for trial in 1..=a.trials {
        if started.elapsed() > Duration::from_mins(a.minutes) {
            eprintln!("[chaos] time is up after {} trials", trial - 1);
            break;
        }
        version += 1;
        let bad = trial > 1 && rng.lock().await.chance(a.bad_share);
        let image = format!("{}:v{version}", if bad { BAD } else { GOOD });
        let previous_image = good_image.clone();
        pods.forget();
        let live0 = pods.live();
        let rec_mark = records.len();
        commit = repo.commit(
            &format!("v{version}"),
            &[("agent.yaml".into(), Some(agent_yaml(&image)))],
        )?;
        let t0 = Instant::now();

        // One or two faults at random moments of the rollout (it takes ~10 s undisturbed).
        let n_faults = 1 + usize::from(rng.lock().await.chance(0.4));
        let mut plan = Vec::new();
        for _ in 0..n_faults {
            let mut r = rng.lock().await;
            let f = FAULTS[usize::try_from(r.below(FAULTS.len() as u64)).unwrap_or(0)];
            plan.push((r.millis(0, 9_000), f));
        }
        plan.sort_by_key(|(d, _)| *d);
        let injector = {
            let (cp, client, replicas) = (cp.clone(), client.clone(), replicas.clone());
            let seed = rng.lock().await.next() | 1;
            tokio::spawn(async move {
                let rng = Mutex::new(Rng(seed));
                let mut done = Vec::new();
                let mut failed = Vec::new();
                for (at, f) in plan {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(t0 + at)).await;
                    match inject(f, &cp, &client, &replicas, &rng).await {
                        Ok(i) => done.push(i),
                        Err(e) => {
                            eprintln!("[chaos] fault {} failed: {e}", f.name());
                            failed.push(format!("{}: {e}", f.name()));
                        }
                    }
                }
                (done, failed)
            })
        };

        let expected_image = if bad {
            previous_image.clone()
        } else {
            image.clone()
        };
        let timeout = Duration::from_secs(a.trial_timeout_secs);
        let end = async {
            if bad {
                wait_rolled_back(&records, &commit, timeout).await?;
            } else {
                records.wait("agent", "Synced", &commit, timeout).await?;
            }
            pods.wait_rolled_out(&expected_image, nodes.len(), Duration::from_mins(2))
                .await
        };
        let outcome = end.await;
        let (injected, failed_faults) = injector.await.unwrap_or_default();
        for f in failed_faults {
            sum.failed_faults.push(format!("trial {trial}: {f}"));
        }
        let took = t0.elapsed();
        // Let the last faults' aftermath settle before judging the end state.
        wait_api_ready(&client, Duration::from_mins(2)).await?;
        let finished = outcome.is_ok();
        let recs = records.since(rec_mark);
        let mut v = match outcome {
            Ok(()) => Vec::new(),
            Err(e) => vec![format!("did not finish: {e}")],
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pod_recs = pods.since(0);
        v.extend(check_trial(
            &TrialCommit {
                commit: &commit,
                bad,
                image: &image,
                previous_image: &previous_image,
            },
            &nodes,
            &live0,
            &pod_recs,
            &recs,
        ));

        // Recovery: a fault's end → the next record write, for faults that hit an open rollout.
        let done_at = recs
            .iter()
            .find(|r| {
                r.name == "agent"
                    && r.applied.as_deref() == Some(commit.as_str())
                    && (r.phase == "Synced" || r.phase == "RolledBack")
            })
            .map(|r| r.at);
        for i in &injected {
            *sum.faults.entry(i.fault.name()).or_default() += 1;
            if done_at.is_some_and(|d| d <= i.ended) {
                continue;
            }
            if let Some(next) = recs.iter().find(|r| r.name == "agent" && r.at > i.ended) {
                let rec = next.at - i.ended;
                if sum
                    .slowest_recovery
                    .as_ref()
                    .is_none_or(|(d, _, _)| rec > *d)
                {
                    sum.slowest_recovery =
                        Some((rec, trial, format!("{} ({})", i.fault.name(), i.detail)));
                }
            }
        }
        sum.trials += 1;
        sum.bad_trials += usize::from(bad);
        if sum.slowest_trial.is_none_or(|(d, _)| took > d) {
            sum.slowest_trial = Some((took, trial));
        }
        let faults: Vec<String> = injected
            .iter()
            .map(|i| format!("{} {}", i.fault.name(), i.detail))
            .collect();
        eprintln!(
            "[chaos] trial {trial}: {} {} in {:.1}s; faults: {}; {}",
            if bad {
                "bad commit rolled back"
            } else {
                "rolled out"
            },
            &commit[..8],
            took.as_secs_f64(),
            if faults.is_empty() {
                "-".into()
            } else {
                faults.join(", ")
            },
            if v.is_empty() {
                "ok".to_string()
            } else {
                format!("VIOLATIONS: {}", v.join(" | "))
            }
        );
        for x in &v {
            sum.violations
                .push(format!("trial {trial} ({}): {x}", &commit[..8]));
        }
        if !finished {
            // Leave the cluster in a known state for the next trial: nothing held,
            // the controller-manager running (the guard already continued it).
            let _ = cp.signal("kube-controller-manager", Signal::CONT);
        }
        if !bad {
            good_image = image;
        }
    }
    supervisor.abort();
    sum.restarts = replicas.lock().await.restarts;
    for r in &mut replicas.lock().await.nw {
        r.stop(Duration::from_secs(5)).await;
    }
    println!(
        "\n== chaos: {} trials ({} with a crash-looping commit), {:.1} min ==",
        sum.trials,
        sum.bad_trials,
        started.elapsed().as_secs_f64() / 60.0
    );
    println!("faults injected: {:?}", sum.faults);
    println!(
        "replica restarts (after a kill or a lost lease): {}",
        sum.restarts
    );
    println!(
        "control-plane components started again after they exited: {:?}",
        revived.lock().await
    );
    if let Some((d, t, what)) = &sum.slowest_recovery {
        println!(
            "slowest recovery: {:.1}s (trial {t}, {what})",
            d.as_secs_f64()
        );
    }
    if let Some((d, t)) = sum.slowest_trial {
        println!("slowest trial: {:.1}s (trial {t})", d.as_secs_f64());
    }
    println!("invariant violations: {}", sum.violations.len());
    for v in &sum.violations {
        println!("  {v}");
    }
    if !sum.failed_faults.is_empty() {
        println!(
            "faults that could not be injected: {}",
            sum.failed_faults.len()
        );
        for f in &sum.failed_faults {
            println!("  {f}");
        }
    }
    anyhow::ensure!(
        sum.failed_faults.is_empty(),
        "{} faults could not be injected",
        sum.failed_faults.len()
    );
    anyhow::ensure!(
        sum.violations.is_empty(),
        "{} invariant violations",
        sum.violations.len()
    );
    Ok(())
}

async fn wait_rolled_back(
    records: &RecordWatch,
    commit: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(r) = records.latest("agent")
            && r.phase == "RolledBack"
            && r.failed.iter().any(|c| c == commit)
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "not rolled back from {commit} within {timeout:?}: {:?}",
            records
                .latest("agent")
                .map(|r| (r.phase, r.rollout_phase, r.failed))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
