//! The per-DaemonSet decision: given what Git wants, what runs, and what the record
//! says nodewave was doing, decide what to do *now*. Pure and synchronous, like the
//! planner it drives, so every rule is tested without a cluster.
//!
//! [`decide`] returns either a [`Plan`] (a record write, then actions in order) or
//! a [`Need`]: an input the controller must fetch first (a dry-run diff, the
//! DaemonSet's update revision, the last good commit's manifest, Prometheus values,
//! how the record's commit relates to the desired one). The controller supplies it and calls again; only the inputs a
//! decision actually needs are ever fetched, so an unchanged DaemonSet costs no
//! API request.
//!
//! The contract with the controller: `Plan::write` is persisted (conditionally on
//! the record's resourceVersion) *before* any of `Plan::actions` runs; if the write
//! fails nothing runs. Every state the record can be in leads to the same decision
//! when replayed, so a crash between any two steps only repeats idempotent work:
//!
//! * `Idle` → (write `Applying`) → apply the template
//! * `Applying` → apply again until the live object matches, then, once the
//!   DaemonSet controller has observed it, (write `Rolling`) with resolved stages
//! * `Rolling` → planner step: (write its state) → delete pods / Events; a failed
//!   gate is first recorded as `Failed`, then (write `Applying` rollback) → apply the
//!   last good template; a finished rollout (write `Idle`)
//! * not in Git → (write `Pruning`) → delete the DaemonSet, then the record

pub mod config;
mod lineage;
pub mod objects;
mod progress;
mod rolling;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::diff::Difference;
use crate::keys;
use crate::manifest::ObjectKey;
use crate::manifest::policy::RolloutPolicySpec;
use crate::record::{ApplyMode, RecordState, SyncStatus, Target, Work, short};
use crate::rollout::{self, Control, Gate, PodObservation, PromOutcome, Rollout};

pub use lineage::Lineage;
pub use progress::{
    NodeIndex, PoolProgress, ProgressColumns, eligible_nodes, pool_label, progress_by_pool,
    progress_changed, progress_columns, record_status, target_revision,
};
pub use rolling::{control_for, next_deadline};

/// How long a new DaemonSet may report zero scheduled nodes before nodewave
/// believes it (the controller counts nodes right after creation).
pub const NEW_DAEMONSET_GRACE_MS: i64 = 3_000;
/// How long a rollout start waits for pods on every scheduled node before it
/// starts with the pods that exist (the rest are adopted as they appear).
pub const SETTLE_TIMEOUT_MS: i64 = 30_000;
/// How long the DaemonSet controller may take to observe an applied template
/// before the record says nodewave is waiting for it.
pub const CONTROLLER_LAG_WARN_MS: i64 = 10_000;
/// Upper bound between two looks at an open rollout with no event.
pub const OPEN_WORK_RESYNC_MS: i64 = 30_000;

/// How soon a replica that is behind the record's commit looks again (its own
/// fetch usually catches up within a poll interval).
pub const BEHIND_RETRY_MS: i64 = 2_000;

/// Service-wide switches that shape decisions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    pub self_heal: bool,
    pub prune: bool,
    /// Pool label given to `nodewave run`, when policies name none.
    pub pool_label: Option<String>,
    /// Take over existing DaemonSets not managed by nodewave.
    pub allow_takeover: bool,
}

/// A DaemonSet as the desired commit declares it, decorated for applying.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredDs {
    pub key: ObjectKey,
    pub commit: String,
    /// What nodewave applies (managed-by label, source annotations, OnDelete).
    pub object: Value,
    /// Content hash of the declaration (bookkeeping excluded).
    pub hash: String,
    pub policy: RolloutPolicySpec,
}

impl DesiredDs {
    pub fn target(&self) -> Target {
        Target {
            commit: self.commit.clone(),
            hash: self.hash.clone(),
        }
    }

    fn takeover_opted_in(&self) -> bool {
        self.object
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(keys::ALLOW_TAKEOVER))
            .and_then(Value::as_str)
            == Some("true")
    }
}

/// The live DaemonSet, as much of it as decisions need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveDs {
    pub generation: i64,
    pub observed_generation: i64,
    pub desired_scheduled: usize,
    /// Carries nodewave's managed-by label.
    pub managed: bool,
    /// Its source annotations name this nodewave's repository and path.
    pub same_source: bool,
}

impl LiveDs {
    fn ours(&self) -> bool {
        self.managed && self.same_source
    }

    /// The DaemonSet controller reported the current generation observed.
    pub fn observed(&self) -> bool {
        self.observed_generation >= self.generation
    }
}

/// The record as read.
#[derive(Debug, Clone, Copy)]
pub enum RecordView<'a> {
    Missing,
    /// Present but its state cannot be decoded: reported, never acted on.
    Invalid(&'a str),
    Valid(&'a RecordState),
}

/// Everything [`decide`] may look at.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub key: &'a ObjectKey,
    pub now_ms: i64,
    pub settings: &'a Settings,
    /// `None`: the DaemonSet is not in the desired commit.
    pub desired: Option<&'a DesiredDs>,
    /// The desired state comes from a fetch this process made (not only from a
    /// possibly stale local clone).
    pub fresh: bool,
    /// Pruning is allowed for the desired commit (the prune guard passed).
    pub prune_allowed: bool,
    pub live: Option<&'a LiveDs>,
    pub record: RecordView<'a>,
    pub pods: &'a Arc<[PodObservation]>,
    pub nodes: &'a NodeIndex,
    pub control: Control,
    // Inputs supplied on request (see `Need`).
    /// Diff of the object with the given content hash against the live one.
    pub diff: Option<(&'a str, &'a Difference)>,
    /// The update revision of the live DaemonSet at its current generation:
    /// the DaemonSet controller has made the live template current.
    pub revision: Option<&'a str>,
    /// The revision was looked up and the controller has not made the live
    /// template current yet (nor observed the generation).
    pub revision_pending: bool,
    /// The DaemonSet as the given last good commit declared it.
    pub rollback_target: Option<&'a DesiredDs>,
    /// Values of the current stage's Prometheus checks, and the stage they are for.
    pub prometheus: Option<(PromOutcome, usize)>,
    /// How the commit the record names relates to `snapshot_commit`.
    pub lineage: Option<Lineage>,
    /// The commit this replica's desired state comes from.
    pub snapshot_commit: &'a str,
}

/// An input [`decide`] needs before it can decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// A server-side-apply dry run of the object with this content hash, compared
    /// with the live object.
    Diff { hash: String },
    /// The DaemonSet's update revision (the newest ControllerRevision).
    Revision,
    /// The DaemonSet at this commit (from the local clone).
    RollbackTarget { commit: String },
    /// The current stage's Prometheus checks.
    Prometheus,
    /// How the record's commit `recorded` relates to the snapshot's `snapshot`.
    Lineage { recorded: String, snapshot: String },
}

/// A counted fact for the metrics.
#[derive(Debug, Clone, PartialEq)]
pub enum Count {
    RolloutFinished { outcome: Outcome, secs: f64 },
    RollbackFinished { secs: f64 },
    GateFailed(Gate),
    Drift,
}

/// How a rollout ended (`nodewave_rollouts_total{outcome}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Succeeded,
    RolledBack,
    Aborted,
    Failed,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Succeeded,
        Outcome::RolledBack,
        Outcome::Aborted,
        Outcome::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::RolledBack => "rolled_back",
            Outcome::Aborted => "aborted",
            Outcome::Failed => "failed",
        }
    }
}

/// One action, executed in order after the record write.
#[derive(Debug, Clone, PartialEq)]
pub enum Act {
    /// Server-side apply of this DaemonSet object.
    Apply(Value),
    DeletePod {
        node: String,
        name: String,
        uid: String,
    },
    Event {
        warning: bool,
        reason: String,
        message: String,
    },
    DeleteDaemonSet,
    DeleteRecord,
    Count(Count),
    /// A line for the log (warnings for failures, info otherwise).
    Log(Line),
}

/// A log line, with the structured fields a log pipeline filters on.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Line {
    pub warning: bool,
    pub message: String,
    /// The Event reason the line reports.
    pub reason: Option<&'static str>,
    /// The gate that failed.
    pub gate: Option<&'static str>,
    /// The stage the line is about, when it is not the one in progress.
    pub stage: Option<String>,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Persisted first, conditionally; nothing below runs when it fails.
    pub write: Option<RecordState>,
    /// The write only keeps bookkeeping current (replacements that became Ready,
    /// adopted nodes, the last gate reading) and no action in this plan depends
    /// on it: the next step derives the same from the record already stored and
    /// fresh observations, so the write may wait until the progress columns are
    /// due (the record's `observedAt` plus the progress interval).
    pub write_can_wait: bool,
    pub actions: Vec<Act>,
    /// Look again at this time (unix ms) even without an event.
    pub wake_at_ms: Option<i64>,
}

impl Plan {
    fn write(state: RecordState) -> Self {
        Self {
            write: Some(state),
            ..Self::default()
        }
    }

    fn act(mut self, a: Act) -> Self {
        self.actions.push(a);
        self
    }

    fn log(self, message: impl Into<String>) -> Self {
        self.act(Act::Log(Line {
            message: message.into(),
            ..Line::default()
        }))
    }

    fn warn(self, message: impl Into<String>) -> Self {
        self.act(Act::Log(Line {
            warning: true,
            message: message.into(),
            ..Line::default()
        }))
    }

    fn event(self, warning: bool, reason: &str, message: impl Into<String>) -> Self {
        self.act(Act::Event {
            warning,
            reason: reason.to_string(),
            message: message.into(),
        })
    }

    /// `self`, then `next`, a plan computed from the state `self` writes: one
    /// write (`next`'s state, or `self`'s if `next` changed nothing) before the
    /// actions of both, and `next`'s wake-up. The write never waits: `self`'s
    /// state is not stored yet.
    fn then(mut self, next: Plan) -> Self {
        self.actions.extend(next.actions);
        Self {
            write: next.write.or(self.write),
            write_can_wait: false,
            actions: self.actions,
            wake_at_ms: next.wake_at_ms,
        }
    }

    fn wake(mut self, at_ms: i64) -> Self {
        self.wake_at_ms = Some(self.wake_at_ms.map_or(at_ms, |w| w.min(at_ms)));
        self
    }
}

/// [`decide`]'s answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Plan(Box<Plan>),
    Need(Need),
}

impl From<Plan> for Decision {
    fn from(p: Plan) -> Self {
        Decision::Plan(Box::new(p))
    }
}

type Step<T> = Result<T, Need>;

/// Decides what to do with one DaemonSet now. See the module docs.
pub fn decide(i: &Inputs<'_>) -> Decision {
    match (Decider { i }).run() {
        Ok(plan) => Decision::Plan(Box::new(plan)),
        Err(need) => Decision::Need(need),
    }
}

struct Decider<'a, 'b> {
    i: &'b Inputs<'a>,
}

fn secs_between(from_ms: i64, to_ms: i64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let ms = (to_ms - from_ms).max(0) as f64;
    ms / 1000.0
}

fn timestamp(now_ms: i64) -> String {
    jiff::Timestamp::from_millisecond(now_ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

impl Decider<'_, '_> {
    fn run(&self) -> Step<Plan> {
        let rec = match self.i.record {
            RecordView::Invalid(error) => return Ok(self.invalid_record(error)),
            RecordView::Missing => RecordState::default(),
            RecordView::Valid(r) => r.clone(),
        };
        if let Some(wait) = self.behind(&rec)? {
            return Ok(wait);
        }
        let Some(desired) = self.i.desired else {
            return Ok(self.not_in_git(&rec));
        };
        match &rec.work {
            Work::Applying {
                target,
                mode,
                since_ms,
            } => self.applying(&rec, desired, target, mode, *since_ms),
            Work::Rolling { target, rollout } => self.rolling(&rec, desired, target, rollout),
            Work::Idle | Work::Pruning => self.idle(&rec, desired),
        }
    }

    fn invalid_record(&self, error: &str) -> Plan {
        Plan::default()
            .warn(format!(
                "the rollout record of {} cannot be read ({error}); nodewave does nothing with this DaemonSet until it is fixed or deleted",
                self.i.key
            ))
            .event(
                true,
                "RecordInvalid",
                format!(
                    "the DaemonSetRollout record cannot be read: {error}; nodewave takes no action on this DaemonSet. Delete the record (kubectl delete dsrollout -n {} {}) to start over from the live state",
                    self.i.key.namespace, self.i.key.name
                ),
            )
    }

    /// Writes `status`/`message` when they differ from the record (so steady
    /// state writes nothing).
    fn set_status(rec: &RecordState, status: SyncStatus, message: &str) -> Plan {
        if rec.status == status && rec.message == message {
            return Plan::default();
        }
        let mut st = rec.clone();
        st.status = status;
        st.message = message.to_string();
        Plan::write(st)
    }

    fn diff_of(&self, hash: &str) -> Step<&Difference> {
        match self.i.diff {
            Some((h, d)) if h == hash => Ok(d),
            _ => Err(Need::Diff {
                hash: hash.to_string(),
            }),
        }
    }

    fn idle(&self, rec: &RecordState, desired: &DesiredDs) -> Step<Plan> {
        if let Some(live) = self.i.live
            && !live.ours()
            && !(self.i.settings.allow_takeover || desired.takeover_opted_in())
        {
            let why = if live.managed {
                "is managed by nodewave from another repository or path"
            } else {
                "exists and is not managed by nodewave"
            };
            let msg = format!(
                "DaemonSet {} {why}; nodewave leaves it alone. To take it over, add the annotation {}: \"true\" to it in Git (or run nodewave with --allow-takeover)",
                self.i.key,
                keys::ALLOW_TAKEOVER
            );
            let plan = Self::set_status(rec, SyncStatus::OutOfSync, &msg);
            return Ok(if plan.write.is_some() {
                plan.warn(msg.clone()).event(true, "TakeoverRefused", msg)
            } else {
                plan
            });
        }
        if let Some(f) = rec.failed_for(&desired.hash) {
            // Never re-apply a failed change by itself: wait for a commit that changes it.
            let status = rec.status_or(SyncStatus::RolledBack);
            let msg = if status == SyncStatus::Degraded && !rec.message.is_empty() {
                rec.message.clone()
            } else {
                format!(
                    "commit {} failed ({}) and was rolled back; push a fix or a revert",
                    short(&f.commit),
                    f.reason
                )
            };
            return Ok(Self::set_status(rec, status, &msg));
        }
        if self.i.live.is_none() {
            return Ok(self.begin(rec, desired, ApplyMode::Forward, "creating the DaemonSet"));
        }
        let diff = self.diff_of(&desired.hash)?;
        let target = desired.target();
        if diff.is_empty() {
            // Same content under a new commit (a `git revert` of a rolled-back
            // change, or a commit that did not touch this DaemonSet): record it as
            // synced without replacing any pod.
            if rec.applied.as_ref() == Some(&target)
                && rec.status == SyncStatus::Synced
                && rec.last_good.as_deref() == Some(desired.commit.as_str())
                && rec.message.is_empty()
            {
                return Ok(Plan::default());
            }
            let mut st = rec.clone();
            st.applied = Some(target);
            st.last_good = Some(desired.commit.clone());
            st.status = SyncStatus::Synced;
            st.message.clear();
            st.work = Work::Idle;
            return Ok(Plan::write(st).log(format!(
                "in sync with Git at {}; recorded without changes to pods",
                short(&desired.commit)
            )));
        }
        let drift = rec.applied.as_ref().is_some_and(|a| a.hash == desired.hash);
        let mut lead = Plan::default();
        if drift {
            let action = if self.i.settings.self_heal {
                "re-applying Git's version"
            } else {
                "self-heal is off, reporting only"
            };
            let msg = format!(
                "live DaemonSet differs from Git at {}: {}; {action}",
                short(&desired.commit),
                diff.paths.join(", ")
            );
            lead = lead
                .act(Act::Count(Count::Drift))
                .warn(format!("drift: {msg}\n{}", diff.unified))
                .event(true, "DriftDetected", msg);
            if !self.i.settings.self_heal {
                let status = Self::set_status(
                    rec,
                    SyncStatus::OutOfSync,
                    "drift detected; self-heal is off",
                );
                return Ok(Plan {
                    write: status.write,
                    ..lead
                });
            }
        }
        let mode = if diff.touches_pod_template() {
            ApplyMode::Forward
        } else {
            ApplyMode::InPlace
        };
        let why = if drift {
            "undoing drift".to_string()
        } else {
            format!(
                "change from Git ({}):\n{}",
                diff.paths.join(", "),
                diff.unified
            )
        };
        let mut plan = self.begin(rec, desired, mode, &why);
        lead.actions.append(&mut plan.actions);
        plan.actions = lead.actions;
        Ok(plan)
    }

    /// Records the intent to apply `desired`, then applies it.
    fn begin(&self, rec: &RecordState, desired: &DesiredDs, mode: ApplyMode, why: &str) -> Plan {
        let mut st = rec.clone();
        st.applied = Some(desired.target());
        st.status = if matches!(mode, ApplyMode::InPlace) && rec.status == SyncStatus::Synced {
            SyncStatus::Synced
        } else {
            SyncStatus::Progressing
        };
        st.message.clear();
        st.work = Work::Applying {
            target: desired.target(),
            mode,
            since_ms: self.i.now_ms,
        };
        Plan::write(st)
            .log(format!("applying commit {}: {why}", short(&desired.commit)))
            .act(Act::Apply(desired.object.clone()))
            .wake(self.i.now_ms + 5_000)
    }

    fn applying(
        &self,
        rec: &RecordState,
        desired: &DesiredDs,
        target: &Target,
        mode: &ApplyMode,
        since_ms: i64,
    ) -> Step<Plan> {
        let rollback = matches!(mode, ApplyMode::Rollback { .. });
        if !rollback && desired.hash != target.hash {
            // A newer commit arrived before the rollout started: start over with it.
            return self.idle(rec, desired);
        }
        let object = if rollback {
            self.rollback_target(&target.commit)?
        } else {
            desired
        };
        let now = self.i.now_ms;
        let Some(live) = self.i.live else {
            return Ok(Plan::default()
                .act(Act::Apply(object.object.clone()))
                .wake(now + 5_000));
        };
        let diff = self.diff_of(&target.hash)?;
        if !diff.is_empty() {
            return Ok(Plan::default()
                .act(Act::Apply(object.object.clone()))
                .wake(now + 5_000));
        }
        if matches!(mode, ApplyMode::InPlace) {
            let mut st = rec.clone();
            st.status = SyncStatus::Synced;
            st.last_good = Some(target.commit.clone());
            st.work = Work::Idle;
            return Ok(Plan::write(st).log(format!(
                "applied commit {} (no pod template change)",
                short(&target.commit)
            )));
        }
        // The DaemonSet controller has the template once it made its revision
        // current, usually before it reports the generation observed.
        let revision = match self.i.revision {
            Some(r) => r,
            None if live.observed() || !self.i.revision_pending => return Err(Need::Revision),
            None => return Ok(self.controller_lag(rec, live, since_ms)),
        };
        let nodes_with_pods = self
            .i
            .pods
            .iter()
            .filter(|p| !p.terminating)
            .map(|p| &*p.node)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        let waited = now - since_ms;
        let counted = live.desired_scheduled > 0 || waited > NEW_DAEMONSET_GRACE_MS;
        let settled = counted && nodes_with_pods >= live.desired_scheduled;
        if !settled && waited <= SETTLE_TIMEOUT_MS {
            let wake = if counted {
                since_ms + SETTLE_TIMEOUT_MS + 1
            } else {
                since_ms + NEW_DAEMONSET_GRACE_MS + 1
            };
            return Ok(Plan::default().wake(wake));
        }
        let policy = &object.policy;
        let label = pool_label(
            policy.pool_label.as_deref(),
            self.i.settings.pool_label.as_deref(),
            self.i.nodes,
            self.i.pods,
        );
        let obs = self.observation(None);
        let mut st = rec.clone();
        st.message.clear();
        st.status = SyncStatus::Progressing;
        let plan = match mode {
            ApplyMode::Rollback {
                from,
                failed_commit,
                reason,
            } => {
                let rb = Rollout::rollback(
                    from,
                    target.commit.clone(),
                    failed_commit.clone(),
                    reason.clone(),
                    revision.to_string(),
                    &obs,
                    policy.rollback.max_unavailable,
                );
                let nodes: usize = rb.stages.iter().map(|s| s.nodes.len()).sum();
                st.work = Work::Rolling {
                    target: target.clone(),
                    rollout: rb,
                };
                Plan::write(st).act(Act::Log(Line {
                    warning: true,
                    message: format!(
                        "rollback of {} to last good commit {} covers {nodes} node(s): {reason}",
                        short(failed_commit),
                        short(&target.commit)
                    ),
                    stage: Some(rollout::ROLLBACK_STAGE.to_string()),
                    ..Line::default()
                }))
            }
            ApplyMode::Forward | ApplyMode::InPlace => {
                let eligible = eligible_nodes(self.i.nodes, self.i.pods, label.as_deref());
                let restarts: BTreeMap<String, u32> = self
                    .i
                    .pods
                    .iter()
                    .map(|p| ((*p.node).to_owned(), p.restarts))
                    .collect();
                let stages = rollout::resolve_stages(policy, &eligible, &restarts);
                let r = Rollout::start(target.commit.clone(), revision.to_string(), stages, &obs);
                let described = r
                    .stages
                    .iter()
                    .map(|s| format!("{} ({} nodes)", s.name, s.nodes.len()))
                    .collect::<Vec<_>>()
                    .join(", ");
                let msg = format!(
                    "rolling out commit {} (revision {revision}) in {} stage(s): {described}",
                    short(&target.commit),
                    r.stages.len()
                );
                let first_stage = r.stages.first().map(|s| s.name.clone());
                st.pool_label = label;
                st.work = Work::Rolling {
                    target: target.clone(),
                    rollout: r,
                };
                Plan::write(st)
                    .act(Act::Log(Line {
                        message: "rollout started".into(),
                        reason: Some("RolloutStarted"),
                        stage: first_stage,
                        ..Line::default()
                    }))
                    .log(msg.clone())
                    .event(false, "RolloutStarted", msg)
            }
        };
        // The first step runs on the state just built, so the write that starts
        // the rollout already holds the first wave: one write, not two, before the
        // first deletions. A first stage with Prometheus checks is stepped by the
        // next reconcile instead, which queries them for the stored stage.
        let first = plan.write.as_ref().and_then(|st| match &st.work {
            Work::Rolling { target, rollout } => Some(self.rolling(st, desired, target, rollout)),
            _ => None,
        });
        match first {
            Some(Ok(step)) => Ok(plan.then(step)),
            _ => Ok(plan.wake(now)),
        }
    }

    /// Waiting for the DaemonSet controller to take an applied template: normal
    /// for a moment, worth saying after a while.
    fn controller_lag(&self, rec: &RecordState, live: &LiveDs, since_ms: i64) -> Plan {
        let now = self.i.now_ms;
        if now - since_ms < CONTROLLER_LAG_WARN_MS {
            return Plan::default().wake(since_ms + CONTROLLER_LAG_WARN_MS);
        }
        let msg = format!(
            "waiting for the DaemonSet controller to observe generation {} (observed {}); is kube-controller-manager running?",
            live.generation, live.observed_generation
        );
        let plan = Self::set_status(rec, SyncStatus::Progressing, &msg);
        let plan = if plan.write.is_some() {
            plan.warn(msg)
        } else {
            plan
        };
        plan.wake(now + OPEN_WORK_RESYNC_MS)
    }

    fn not_in_git(&self, rec: &RecordState) -> Plan {
        let has_record = !matches!(self.i.record, RecordView::Missing);
        let Some(live) = self.i.live else {
            // The DaemonSet is gone; its record goes too.
            return if has_record {
                Plan::default().act(Act::DeleteRecord)
            } else {
                Plan::default()
            };
        };
        if !live.ours() {
            return Plan::default();
        }
        if matches!(rec.work, Work::Pruning) {
            return Plan::default()
                .act(Act::DeleteDaemonSet)
                .act(Act::DeleteRecord);
        }
        if !self.i.settings.prune {
            return Self::set_status(
                rec,
                SyncStatus::OutOfSync,
                "removed from Git; not pruned (pruning is off)",
            );
        }
        if !self.i.prune_allowed {
            return Self::set_status(
                rec,
                SyncStatus::OutOfSync,
                "removed from Git; not pruned until the commit is confirmed (see the CommitRejected or PruneRefused Event)",
            );
        }
        let mut st = rec.clone();
        st.work = Work::Pruning;
        st.message = "removed from Git: pruning".into();
        Plan::write(st)
            .log("DaemonSet removed from Git: pruning")
            .act(Act::DeleteDaemonSet)
            .act(Act::DeleteRecord)
    }
}
