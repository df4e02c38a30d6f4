//! The prune guard: whether a desired state may delete the managed DaemonSets it
//! no longer declares. Computed once per published desired state (pure; the
//! pipeline supplies what is managed and whether the commit carries the marker).
//!
//! A commit that would delete every managed DaemonSet (an emptied directory, a
//! `--path` pointing at the wrong place, a bad merge) is refused, and so is one
//! that would delete more than `--max-prune-percent` of them, unless the
//! commit carries the marker file [`ALLOW_PRUNE_MARKER`] at the tracked path
//! (like Argo CD's `allowEmpty`). A refused prune holds back only the
//! deletions: the rest of the commit is applied as usual.

use std::fmt::Write as _;

use crate::manifest::ObjectKey;

/// The marker file that says "the deletions in this commit are intended". It
/// lies in the tracked directory (the directory holding the tracked file when
/// `--path` names a YAML file); its content is ignored.
pub const ALLOW_PRUNE_MARKER: &str = ".nodewave-allow-prune";

/// How many DaemonSets named in a message, at most.
const NAMED_IN_MESSAGE: usize = 5;

/// `--max-prune-percent`: the largest share of the managed DaemonSets one
/// desired state may delete. Deleting all of them is refused whatever the
/// share (only the marker allows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneLimit {
    max_percent: u8,
}

impl PruneLimit {
    /// 100: only "every managed DaemonSet" is refused.
    pub const DEFAULT: Self = Self { max_percent: 100 };

    pub fn new(max_percent: u32) -> Result<Self, String> {
        u8::try_from(max_percent)
            .ok()
            .filter(|p| *p <= 100)
            .map(|max_percent| Self { max_percent })
            .ok_or_else(|| {
                format!("--max-prune-percent must be between 0 and 100, not {max_percent}")
            })
    }

    pub fn max_percent(self) -> u8 {
        self.max_percent
    }
}

impl Default for PruneLimit {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What the guard decided for one desired state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PruneVerdict {
    /// Nothing would be deleted (or pruning is off).
    #[default]
    Nothing,
    /// Deletions within the limit, or allowed by the marker.
    Allowed {
        prune: usize,
        managed: usize,
        marker: bool,
    },
    Refused(Refusal),
}

impl PruneVerdict {
    /// Whether the controller may delete DaemonSets missing from this desired state.
    pub fn allows_prune(&self) -> bool {
        !matches!(self, Self::Refused(_))
    }

    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Self::Refused(r) => Some(r),
            _ => None,
        }
    }
}

/// A refused prune: what would have been deleted, out of how many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Managed DaemonSets the desired state does not declare, sorted.
    pub would_prune: Vec<ObjectKey>,
    pub managed: usize,
    pub limit: PruneLimit,
}

impl Refusal {
    /// Every managed DaemonSet would go.
    pub fn all(&self) -> bool {
        self.would_prune.len() == self.managed
    }

    /// The share that would be deleted, in whole percent (rounded up, so 1 of
    /// 1,000 is 1%, never 0%).
    pub fn percent(&self) -> usize {
        percent_ceil(self.would_prune.len(), self.managed)
    }

    /// The text of `/status`, the log line and the `PruneRefused` Events.
    /// `path` is the tracked path (`""`: the repository root).
    pub fn message(&self, commit: &str, path: &str) -> String {
        let n = self.would_prune.len();
        let mut names: Vec<String> = self
            .would_prune
            .iter()
            .take(NAMED_IN_MESSAGE)
            .map(ToString::to_string)
            .collect();
        if n > NAMED_IN_MESSAGE {
            names.push(format!("+{} more", n - NAMED_IN_MESSAGE));
        }
        let place = if path.is_empty() {
            "the repository root".to_string()
        } else {
            format!("path {path}")
        };
        let mut m = if self.all() {
            format!(
                "commit {commit} would delete all {n} DaemonSet(s) nodewave manages from {place} ({})",
                names.join(", ")
            )
        } else {
            format!(
                "commit {commit} would delete {n} of the {} DaemonSets nodewave manages from {place} ({}%, more than --max-prune-percent {}: {})",
                self.managed,
                self.percent(),
                self.limit.max_percent(),
                names.join(", ")
            )
        };
        let marker = marker_path(path);
        let _ = write!(
            m,
            "; pruning refused, nothing is deleted (the rest of the commit is applied). If the deletion is intended, commit the file {marker}; if the directory was emptied or moved by mistake, restore it"
        );
        if !self.all() {
            let _ = write!(m, ", or raise --max-prune-percent");
        }
        m
    }
}

/// Where the marker goes for tracked path `path`, as a repository path.
pub fn marker_path(path: &str) -> String {
    let is_yaml = std::path::Path::new(path)
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
    // A tracked YAML file: the marker goes next to it (the Git source looks there).
    let dir = if is_yaml {
        path.rsplit_once('/').map_or("", |(dir, _)| dir)
    } else {
        path
    };
    if dir.is_empty() {
        ALLOW_PRUNE_MARKER.to_string()
    } else {
        format!("{dir}/{ALLOW_PRUNE_MARKER}")
    }
}

fn percent_ceil(part: usize, whole: usize) -> usize {
    if whole == 0 {
        return 0;
    }
    (part.saturating_mul(100)).div_ceil(whole)
}

/// The guard. `managed`: the DaemonSets this source manages now (live, with its
/// labels and annotations); `declared`: whether the desired state declares a
/// key; `marker`: the commit carries [`ALLOW_PRUNE_MARKER`].
pub fn evaluate<'a>(
    managed: impl IntoIterator<Item = &'a ObjectKey>,
    declared: impl Fn(&ObjectKey) -> bool,
    limit: PruneLimit,
    marker: bool,
) -> PruneVerdict {
    let mut total = 0usize;
    let mut would_prune = Vec::new();
    for key in managed {
        total += 1;
        if !declared(key) {
            would_prune.push(key.clone());
        }
    }
    if would_prune.is_empty() {
        return PruneVerdict::Nothing;
    }
    let over_limit = would_prune.len() == total
        || would_prune.len().saturating_mul(100)
            > total.saturating_mul(usize::from(limit.max_percent()));
    if over_limit && !marker {
        would_prune.sort();
        would_prune.dedup();
        return PruneVerdict::Refused(Refusal {
            would_prune,
            managed: total,
            limit,
        });
    }
    PruneVerdict::Allowed {
        prune: would_prune.len(),
        managed: total,
        marker,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn keys(n: usize) -> Vec<ObjectKey> {
        (0..n)
            .map(|i| ObjectKey::new("ns", format!("ds-{i:03}")))
            .collect()
    }

    fn verdict(managed: usize, declared: usize, percent: u32, marker: bool) -> PruneVerdict {
        let all = keys(managed);
        let kept: BTreeSet<ObjectKey> = all.iter().take(declared).cloned().collect();
        evaluate(
            &all,
            |k| kept.contains(k),
            PruneLimit::new(percent).unwrap(),
            marker,
        )
    }

    #[test]
    fn deleting_every_managed_daemonset_is_refused_by_default() {
        let v = verdict(3, 0, 100, false);
        let r = v.refusal().expect("refused");
        assert!(r.all());
        assert_eq!(r.would_prune, keys(3));
        assert!(!v.allows_prune());
        // Even a fleet of one: deleting the only managed DaemonSet is "all of them".
        assert!(!verdict(1, 0, 100, false).allows_prune());
    }

    #[test]
    fn the_default_allows_any_partial_prune() {
        assert_eq!(
            verdict(3, 1, 100, false),
            PruneVerdict::Allowed {
                prune: 2,
                managed: 3,
                marker: false
            }
        );
        assert_eq!(
            verdict(1000, 1, 100, false),
            PruneVerdict::Allowed {
                prune: 999,
                managed: 1000,
                marker: false
            }
        );
    }

    #[test]
    fn nothing_to_prune_is_nothing() {
        assert_eq!(verdict(3, 3, 0, false), PruneVerdict::Nothing);
        assert_eq!(verdict(0, 0, 0, false), PruneVerdict::Nothing);
        assert!(PruneVerdict::Nothing.allows_prune());
    }

    #[test]
    fn the_limit_is_a_share_of_the_managed_daemonsets() {
        // 50%: 2 of 4 may go, 3 of 4 may not.
        assert!(verdict(4, 2, 50, false).allows_prune());
        let v = verdict(4, 1, 50, false);
        let r = v.refusal().expect("3 of 4 is over 50%");
        assert!(!r.all());
        assert_eq!(r.percent(), 75);
        // 0%: any deletion needs the marker.
        assert!(!verdict(10, 9, 0, false).allows_prune());
        assert!(verdict(10, 9, 0, true).allows_prune());
        // Rounding never lets a deletion look like 0%.
        assert_eq!(percent_ceil(1, 1000), 1);
    }

    #[test]
    fn the_marker_allows_everything() {
        assert_eq!(
            verdict(3, 0, 0, true),
            PruneVerdict::Allowed {
                prune: 3,
                managed: 3,
                marker: true
            }
        );
    }

    #[test]
    fn limits_are_checked() {
        assert_eq!(PruneLimit::default().max_percent(), 100);
        assert!(PruneLimit::new(0).is_ok());
        assert!(
            PruneLimit::new(101)
                .unwrap_err()
                .contains("between 0 and 100")
        );
        assert!(PruneLimit::new(u32::MAX).is_err());
    }

    #[test]
    fn messages_name_the_daemonsets_the_marker_and_the_flag() {
        let all = verdict(7, 0, 100, false);
        let m = all.refusal().unwrap().message("abc1234", "clusters/prod");
        assert!(
            m.starts_with("commit abc1234 would delete all 7 DaemonSet(s) nodewave manages from path clusters/prod (ns/ds-000, ns/ds-001, ns/ds-002, ns/ds-003, ns/ds-004, +2 more)"),
            "{m}"
        );
        assert!(
            m.contains("commit the file clusters/prod/.nodewave-allow-prune"),
            "{m}"
        );
        assert!(!m.contains("--max-prune-percent"), "{m}");
        let some = verdict(4, 1, 50, false);
        let m = some.refusal().unwrap().message("abc1234", "");
        assert!(
            m.contains("would delete 3 of the 4 DaemonSets nodewave manages from the repository root (75%, more than --max-prune-percent 50"),
            "{m}"
        );
        assert!(m.contains("commit the file .nodewave-allow-prune;"), "{m}");
        assert!(m.ends_with("or raise --max-prune-percent"), "{m}");
    }

    #[test]
    fn the_marker_lies_next_to_a_tracked_file() {
        assert_eq!(marker_path(""), ".nodewave-allow-prune");
        assert_eq!(marker_path("fleet"), "fleet/.nodewave-allow-prune");
        assert_eq!(marker_path("fleet/all.yaml"), "fleet/.nodewave-allow-prune");
        assert_eq!(marker_path("all.yml"), ".nodewave-allow-prune");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// The guard refuses exactly when everything would go or the share is over
        /// the limit, and the marker always allows; a refusal lists exactly the
        /// managed keys the desired state lacks.
        #[test]
        fn refuses_exactly_over_the_limit(
            managed in 0usize..40,
            declared in proptest::collection::vec(any::<bool>(), 40),
            percent in 0u32..=100,
            marker in any::<bool>(),
        ) {
            let all = keys(managed);
            let is_declared = |k: &ObjectKey| {
                all.iter().position(|x| x == k).is_some_and(|i| declared[i])
            };
            let missing: Vec<ObjectKey> = all.iter().filter(|k| !is_declared(k)).cloned().collect();
            let v = evaluate(&all, is_declared, PruneLimit::new(percent).unwrap(), marker);
            let d = missing.len();
            let over = d > 0 && (d == managed || d * 100 > managed * percent as usize);
            prop_assert_eq!(v.allows_prune(), !over || marker);
            if let PruneVerdict::Refused(r) = &v {
                prop_assert_eq!(&r.would_prune, &missing);
                prop_assert_eq!(r.managed, managed);
            }
            if d == 0 {
                prop_assert_eq!(v, PruneVerdict::Nothing);
            }
        }

        /// Once allowed, deleting one of the DaemonSets it allows keeps it allowed:
        /// a prune never stops half-way because it made progress.
        #[test]
        fn allowed_stays_allowed_as_deletions_proceed(
            managed in 1usize..40,
            kept in 0usize..40,
            percent in 0u32..=100,
        ) {
            let kept = kept.min(managed);
            let limit = PruneLimit::new(percent).unwrap();
            let mut all = keys(managed);
            let declared: BTreeSet<ObjectKey> = all.iter().take(kept).cloned().collect();
            let mut v = evaluate(&all, |k| declared.contains(k), limit, false);
            while let PruneVerdict::Allowed { .. } = v {
                let Some(pos) = all.iter().position(|k| !declared.contains(k)) else { break };
                all.remove(pos);
                v = evaluate(&all, |k| declared.contains(k), limit, false);
                prop_assert!(v.allows_prune());
            }
        }
    }
}
