//! Lineage: whether this replica's desired state is new enough to act on. A
//! replica whose snapshot may be older than the commit the record names decides
//! nothing, so two replicas fetching on their own schedules never move the
//! cluster back and forth.

use super::{BEHIND_RETRY_MS, Decider, Need, Plan, Step};
use crate::record::{RecordState, SyncStatus, short};

/// How the commit the record names (what the cluster was last given) relates to
/// the commit this replica's desired state comes from. Replicas fetch on their
/// own schedule, so one may still hold an older commit than the one another
/// replica (or this one before a restart) applied; acting on it would move the
/// cluster back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lineage {
    /// The recorded commit is the snapshot's commit or one of its ancestors: Git
    /// moved forward, act on the snapshot.
    Ancestor,
    /// This replica is behind: its clone does not have the recorded commit yet,
    /// or its desired state was not yet loaded from the head it fetched. Wait.
    Ahead,
    /// The recorded commit is not in the history this replica fetched after it
    /// saw the record: the branch was rewritten (a force push). Git wins.
    Rewritten,
}

impl Decider<'_, '_> {
    /// A plan to wait, when this replica's desired state may be older than the
    /// commit the record names: it then decides nothing, so it never moves the
    /// cluster back (see [`Lineage`]). A replica that has not fetched since it
    /// started also waits on a rewritten history, and says why in the record.
    pub(super) fn behind(&self, rec: &RecordState) -> Step<Option<Plan>> {
        let Some(applied) = &rec.applied else {
            return Ok(None);
        };
        let snapshot = self.i.snapshot_commit;
        if applied.commit == snapshot {
            return Ok(None);
        }
        let lineage = self.i.lineage.ok_or_else(|| Need::Lineage {
            recorded: applied.commit.clone(),
            snapshot: snapshot.to_string(),
        })?;
        match (lineage, self.i.fresh) {
            (Lineage::Ancestor, _) | (Lineage::Rewritten, true) => Ok(None),
            (Lineage::Ahead, true) => {
                Ok(Some(Plan::default().wake(self.i.now_ms + BEHIND_RETRY_MS)))
            }
            (_, false) => {
                let why = format!(
                    "the cluster runs commit {} which this replica's clone does not have before {}; waiting for a successful fetch before applying anything",
                    short(&applied.commit),
                    short(snapshot)
                );
                Ok(Some(Self::set_status(rec, SyncStatus::OutOfSync, &why)))
            }
        }
    }
}
