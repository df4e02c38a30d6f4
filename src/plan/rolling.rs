//! An open rollout: turning the record's `Rolling` state and the observed pods
//! into a planner step, finishing a rollout, and starting the rollback to the last
//! good commit when a gate fails. Also when an open rollout must be looked at
//! again, and the user's controls as the planner sees them.

use std::sync::Arc;

use super::{
    Act, Count, Decider, DesiredDs, Line, Need, OPEN_WORK_RESYNC_MS, Outcome, Plan, Step,
    secs_between, timestamp,
};
use crate::manifest::policy::RolloutPolicySpec;
use crate::record::{self, ApplyMode, FailedCommit, RecordState, SyncStatus, Target, Work, short};
use crate::rollout::{
    self, Action, Control, Gate, HealthRules, Observation, Phase, PromOutcome, Rollout,
    RolloutEvent, RolloutKind,
};

impl Decider<'_, '_> {
    pub(super) fn rollback_target(&self, commit: &str) -> Step<&DesiredDs> {
        match self.i.rollback_target {
            Some(t) if t.commit == commit => Ok(t),
            _ => Err(Need::RollbackTarget {
                commit: commit.to_string(),
            }),
        }
    }

    pub(super) fn observation(&self, prometheus: Option<(PromOutcome, usize)>) -> Observation {
        Observation {
            now_ms: self.i.now_ms,
            nodes: self.i.nodes.names(),
            pods: Arc::clone(self.i.pods),
            control: self.i.control.clone(),
            prometheus_stage: prometheus.as_ref().map(|(_, s)| *s),
            prometheus: prometheus.map_or(PromOutcome::NotConfigured, |(p, _)| p),
        }
    }

    fn wants_prometheus(r: &Rollout, policy: &RolloutPolicySpec) -> bool {
        policy.health.prometheus.is_some()
            && matches!(r.kind, RolloutKind::Forward)
            && r.stage < r.stages.len()
            && matches!(
                r.phase,
                Phase::Pending | Phase::Updating | Phase::Baking { .. }
            )
    }

    pub(super) fn rolling(
        &self,
        rec: &RecordState,
        desired: &DesiredDs,
        target: &Target,
        r: &Rollout,
    ) -> Step<Plan> {
        if !r.is_rollback() && desired.hash != target.hash {
            return Ok(self.idle(rec, desired)?.log(format!(
                "commit {} supersedes the rollout of {} in progress",
                short(&desired.commit),
                short(&r.commit)
            )));
        }
        let object = if r.is_rollback() {
            self.rollback_target(&target.commit)?
        } else {
            desired
        };
        let now = self.i.now_ms;
        // Drift during a rollout (an edited template, updateStrategy switched to
        // RollingUpdate) is undone before anything else: no pod is deleted while
        // the live template is not the one this rollout is about.
        if self.i.live.is_some() && !matches!(r.phase, Phase::Succeeded | Phase::Failed { .. }) {
            let diff = self.diff_of(&target.hash)?;
            if !diff.is_empty() {
                let msg = format!(
                    "live DaemonSet changed during the {} of {}: {}; re-applying it at once",
                    if r.is_rollback() {
                        "rollback"
                    } else {
                        "rollout"
                    },
                    short(&r.commit),
                    diff.paths.join(", ")
                );
                return Ok(Plan::default()
                    .act(Act::Count(Count::Drift))
                    .warn(msg.clone())
                    .event(true, "DriftDetected", msg)
                    .act(Act::Apply(object.object.clone()))
                    .wake(now + 5_000));
            }
        }
        let policy = &object.policy;
        let prometheus = if Self::wants_prometheus(r, policy) {
            Some(self.i.prometheus.clone().ok_or(Need::Prometheus)?)
        } else {
            None
        };
        let rules = HealthRules::from(&policy.health);
        let obs = self.observation(prometheus);
        let d = rollout::step(r, &obs, &rules);
        let mut plan = Plan::default();
        // The failure a gate just reported, recorded with the new state.
        let mut failure_record = None;
        let mut changed = d.rollout != *r;
        // Nothing to do and still in the same stage and phase: what changed is
        // bookkeeping `step` re-derives from the stored record every time.
        plan.write_can_wait =
            d.actions.is_empty() && d.rollout.stage == r.stage && d.rollout.phase == r.phase;
        for action in d.actions {
            match action {
                Action::DeletePod { node, name, uid } => {
                    plan = plan.act(Act::DeletePod { node, name, uid });
                }
                Action::Event(ev) => {
                    let message = ev.message();
                    plan = plan
                        .act(Act::Log(Line {
                            warning: ev.is_warning(),
                            message: message.clone(),
                            reason: Some(ev.reason()),
                            stage: ev.stage_name().map(String::from),
                            gate: None,
                        }))
                        .event(ev.is_warning(), ev.reason(), message);
                    if let RolloutEvent::GateFailed(f) = &ev {
                        plan = plan.act(Act::Count(Count::GateFailed(f.gate)));
                    }
                }
                Action::Complete => return Ok(self.complete(rec, target, &d.rollout, plan)),
                Action::RollBack(failure) => {
                    if matches!(r.phase, Phase::Failed { .. }) {
                        return self.start_rollback(rec, target, r, &failure, policy);
                    }
                    // Just failed: record it (and the failed content) first.
                    failure_record = Some(FailedCommit {
                        commit: r.commit.clone(),
                        hash: target.hash.clone(),
                        reason: failure.message.clone(),
                        at: timestamp(now),
                    });
                    plan = plan
                        .act(Act::Log(Line {
                            warning: true,
                            message: format!("gate failed: {}", failure.message),
                            gate: Some(failure.gate.metric_label()),
                            ..Line::default()
                        }))
                        .wake(now);
                    changed = true;
                }
            }
        }
        let wake = next_deadline(&d.rollout, &rules, policy, now);
        if changed {
            let status = match d.rollout.phase {
                Phase::Paused { .. } => SyncStatus::Paused,
                _ => SyncStatus::Progressing,
            };
            // The new rollout state moves into the record; the old one is not copied.
            let mut st = rec.with_work(Work::Rolling {
                target: target.clone(),
                rollout: d.rollout,
            });
            if let Some(f) = failure_record {
                st.record_failure(f);
            }
            st.status = status;
            st.message.clear();
            plan.write = Some(st);
        }
        Ok(plan.wake(wake))
    }

    fn complete(&self, rec: &RecordState, target: &Target, r: &Rollout, mut plan: Plan) -> Plan {
        let mut st = rec.with_work(Work::Idle);
        let secs = secs_between(r.started_at_ms, self.i.now_ms);
        match &r.kind {
            RolloutKind::Forward => {
                st.last_good = Some(r.commit.clone());
                st.applied = Some(target.clone());
                st.status = SyncStatus::Synced;
                st.message.clear();
                let msg = format!(
                    "commit {} rolled out to every stage in {secs:.0}s",
                    short(&r.commit)
                );
                plan = plan
                    .log("rollout succeeded")
                    .log(msg.clone())
                    .event(false, "RolloutSucceeded", msg)
                    .act(Act::Count(Count::RolloutFinished {
                        outcome: Outcome::Succeeded,
                        secs,
                    }));
            }
            RolloutKind::Rollback {
                failed_commit,
                reason,
            } => {
                st.applied = Some(target.clone());
                st.status = SyncStatus::RolledBack;
                st.message = format!(
                    "rolled back to {} after commit {} failed: {reason}",
                    short(&r.commit),
                    short(failed_commit)
                );
                plan = plan
                    .log(st.message.clone())
                    .act(Act::Count(Count::RollbackFinished { secs }));
            }
        }
        plan.write = Some(st);
        plan
    }

    fn start_rollback(
        &self,
        rec: &RecordState,
        target: &Target,
        failed: &Rollout,
        failure: &rollout::GateFailure,
        policy: &RolloutPolicySpec,
    ) -> Step<Plan> {
        let aborted = failure.gate == Gate::Aborted;
        let secs = secs_between(failed.started_at_ms, self.i.now_ms);
        let last_good = rec.last_good.clone().filter(|c| c != &failed.commit);
        let allowed = policy.rollback.automatic || aborted;
        let (Some(good), true) = (last_good.as_ref(), allowed) else {
            let why = if allowed {
                "there is no last good commit to roll back to (first rollout of this DaemonSet)"
            } else {
                "automatic rollback is disabled by the policy"
            };
            let msg = format!(
                "rollout of {} failed: {}; {why}. Rollout paused: fix forward with a new commit or revert in Git",
                short(&failed.commit),
                failure.message
            );
            let mut st = rec.with_work(Work::Idle);
            st.status = SyncStatus::Degraded;
            st.message.clone_from(&msg);
            return Ok(Plan::write(st)
                .warn(msg.clone())
                .event(true, "RolloutDegraded", msg)
                .act(Act::Count(Count::RolloutFinished {
                    outcome: Outcome::Failed,
                    secs,
                })));
        };
        let good_ds = self.rollback_target(good)?;
        let mut st = rec.with_work(Work::Applying {
            target: good_ds.target(),
            mode: ApplyMode::Rollback {
                from: Box::new(failed.clone()),
                failed_commit: failed.commit.clone(),
                reason: failure.message.clone(),
            },
            since_ms: self.i.now_ms,
        });
        st.applied = Some(good_ds.target());
        st.status = SyncStatus::Progressing;
        st.message.clear();
        let _ = target;
        Ok(Plan::write(st)
            .warn(format!(
                "rolling back from {} to last good commit {}: {}",
                short(&failed.commit),
                short(good),
                failure.message
            ))
            .act(Act::Count(Count::RolloutFinished {
                outcome: if aborted {
                    Outcome::Aborted
                } else {
                    Outcome::RolledBack
                },
                secs,
            }))
            .act(Act::Apply(good_ds.object.clone()))
            .wake(self.i.now_ms + 5_000))
    }
}

/// When an open rollout must be looked at again without any event: the end of a
/// bake, the earliest ready timeout of a replacement, the next Prometheus
/// evaluation; at most [`OPEN_WORK_RESYNC_MS`] away.
pub fn next_deadline(
    r: &Rollout,
    rules: &HealthRules,
    policy: &RolloutPolicySpec,
    now_ms: i64,
) -> i64 {
    let mut at = now_ms + OPEN_WORK_RESYNC_MS;
    let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let ready_timeout = i64::try_from(rules.ready_timeout_ms).unwrap_or(i64::MAX);
    match &r.phase {
        Phase::Succeeded | Phase::Failed { .. } => return now_ms,
        Phase::Paused { .. } | Phase::AwaitingApproval => return at,
        Phase::Baking { since_ms } => {
            if let Some(s) = r.current_stage() {
                let bake = i64::try_from(s.bake_ms).unwrap_or(i64::MAX);
                at = at.min(since_ms.saturating_add(bake).saturating_add(1));
            }
        }
        Phase::Pending | Phase::Updating => {}
    }
    for rep in r.replacing.values() {
        at = at.min(
            rep.deleted_at_ms
                .saturating_add(ready_timeout)
                .saturating_add(1),
        );
    }
    if let Some(p) = &policy.health.prometheus
        && matches!(r.kind, RolloutKind::Forward)
    {
        at = at.min(now_ms.saturating_add(ms(p.interval).max(1)));
    }
    at.max(now_ms)
}

/// The controls a user set on the record, as the planner sees them for `r`.
pub fn control_for(spec: &record::RecordSpec, r: Option<&Rollout>) -> Control {
    let commit = r.map(|r| r.commit.as_str());
    Control {
        paused: spec.paused,
        abort: commit.is_some() && spec.abort_commit.as_deref() == commit,
        approved_stage: spec
            .approved_stage
            .as_ref()
            .filter(|a| Some(a.commit.as_str()) == commit)
            .and_then(|a| usize::try_from(a.stage).ok()),
    }
}
