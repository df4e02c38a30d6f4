//! Encoding of [`RecordState`] into the record's `status.state` string.
//!
//! A rollout names every node several times (stage membership, updated, baseline,
//! replacements). At 10,000 nodes with 63-character names that is megabytes of
//! JSON, over the API server's object limit. So each rollout is stored with one
//! sorted table of its node names and every other mention as an index
//! (ascending lists as deltas), then the whole state is gzip-compressed and
//! base64-encoded behind a version prefix: `v1.<base64>`.
//!
//! Decoding is total: any input yields a state or a [`DecodeError`], never a
//! panic, and the decoded size is bounded (a small string cannot inflate into
//! gigabytes).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::{ApplyMode, FailedCommit, RecordState, SyncStatus, Target, Work};
use crate::rollout::{GateResult, NodeName, Phase, Replacement, Rollout, RolloutKind, Stage};

const PREFIX: &str = "v1.";

/// Largest decoded (uncompressed) state accepted: far above what 10,000 nodes need.
pub const MAX_DECODED_BYTES: u64 = 32 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode the rollout record: {0}")]
pub struct DecodeError(pub String);

pub fn encode(state: &RecordState) -> String {
    let compact = EncodedState::from(state);
    // Serialising plain data structures cannot fail; fall back to an empty state
    // rather than panic if it ever did.
    let json = serde_json::to_vec(&compact).unwrap_or_default();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let bytes = gz
        .write_all(&json)
        .and_then(|()| gz.finish())
        .unwrap_or_default();
    format!("{PREFIX}{}", STANDARD.encode(bytes))
}

pub fn decode(s: &str) -> Result<RecordState, DecodeError> {
    let body = s
        .strip_prefix(PREFIX)
        .ok_or_else(|| DecodeError(format!("unknown encoding (expected the prefix {PREFIX:?})")))?;
    let bytes = STANDARD
        .decode(body.trim())
        .map_err(|e| DecodeError(format!("not base64: {e}")))?;
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(bytes.as_slice())
        .take(MAX_DECODED_BYTES + 1)
        .read_to_end(&mut json)
        .map_err(|e| DecodeError(format!("not gzip: {e}")))?;
    if json.len() as u64 > MAX_DECODED_BYTES {
        return Err(DecodeError(format!(
            "decoded state is larger than {MAX_DECODED_BYTES} bytes"
        )));
    }
    let compact: EncodedState =
        serde_json::from_slice(&json).map_err(|e| DecodeError(format!("invalid state: {e}")))?;
    compact.into_state()
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EncodedState {
    status: SyncStatus,
    #[serde(default)]
    message: String,
    #[serde(default)]
    applied: Option<Target>,
    #[serde(default)]
    last_good: Option<String>,
    #[serde(default)]
    failed: Vec<FailedCommit>,
    #[serde(default)]
    pool_label: Option<String>,
    work: EncodedWork,
}

#[allow(clippy::large_enum_variant)] // short-lived, one per encode/decode
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum EncodedWork {
    Idle,
    #[serde(rename_all = "camelCase")]
    Applying {
        target: Target,
        mode: EncodedMode,
        since_ms: i64,
    },
    Rolling {
        target: Target,
        rollout: CompactRollout,
    },
    Pruning,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum EncodedMode {
    Forward,
    InPlace,
    #[serde(rename_all = "camelCase")]
    Rollback {
        from: Box<CompactRollout>,
        failed_commit: String,
        reason: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CompactRollout {
    /// Sorted, unique node names; everything else refers to them by index (and,
    /// decoded, shares them).
    nodes: Vec<NodeName>,
    commit: String,
    target_revision: String,
    kind: RolloutKind,
    stages: Vec<CompactStage>,
    stage: usize,
    phase: Phase,
    started_at_ms: i64,
    stage_started_at_ms: i64,
    replacing: Vec<(u32, Replacement)>,
    /// Ascending indices, delta-encoded.
    updated: Vec<u32>,
    baseline_unready: Vec<u32>,
    last_gate: Option<GateResult>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CompactStage {
    name: String,
    nodes: Vec<u32>,
    max_unavailable: usize,
    bake_ms: u64,
    manual_approval: bool,
}

impl From<&RecordState> for EncodedState {
    fn from(s: &RecordState) -> Self {
        Self {
            status: s.status,
            message: s.message.clone(),
            applied: s.applied.clone(),
            last_good: s.last_good.clone(),
            failed: s.failed.clone(),
            pool_label: s.pool_label.clone(),
            work: match &s.work {
                Work::Idle => EncodedWork::Idle,
                Work::Pruning => EncodedWork::Pruning,
                Work::Applying {
                    target,
                    mode,
                    since_ms,
                } => EncodedWork::Applying {
                    target: target.clone(),
                    since_ms: *since_ms,
                    mode: match mode {
                        ApplyMode::Forward => EncodedMode::Forward,
                        ApplyMode::InPlace => EncodedMode::InPlace,
                        ApplyMode::Rollback {
                            from,
                            failed_commit,
                            reason,
                        } => EncodedMode::Rollback {
                            from: Box::new(CompactRollout::from(from.as_ref())),
                            failed_commit: failed_commit.clone(),
                            reason: reason.clone(),
                        },
                    },
                },
                Work::Rolling { target, rollout } => EncodedWork::Rolling {
                    target: target.clone(),
                    rollout: CompactRollout::from(rollout),
                },
            },
        }
    }
}

impl EncodedState {
    fn into_state(self) -> Result<RecordState, DecodeError> {
        let work = match self.work {
            EncodedWork::Idle => Work::Idle,
            EncodedWork::Pruning => Work::Pruning,
            EncodedWork::Applying {
                target,
                mode,
                since_ms,
            } => Work::Applying {
                target,
                since_ms,
                mode: match mode {
                    EncodedMode::Forward => ApplyMode::Forward,
                    EncodedMode::InPlace => ApplyMode::InPlace,
                    EncodedMode::Rollback {
                        from,
                        failed_commit,
                        reason,
                    } => ApplyMode::Rollback {
                        from: Box::new(from.into_rollout()?),
                        failed_commit,
                        reason,
                    },
                },
            },
            EncodedWork::Rolling { target, rollout } => Work::Rolling {
                target,
                rollout: rollout.into_rollout()?,
            },
        };
        Ok(RecordState {
            status: self.status,
            message: self.message,
            applied: self.applied,
            last_good: self.last_good,
            failed: self.failed,
            pool_label: self.pool_label,
            work,
        })
    }
}

/// Index lookup into the sorted node table.
struct Table<'a> {
    names: &'a [NodeName],
}

impl Table<'_> {
    fn index(&self, name: &str) -> u32 {
        // Every name was put into the table before indexing; a miss cannot happen,
        // but must not panic: map it past the end, which decoding rejects.
        self.names
            .binary_search_by(|n| (**n).cmp(name))
            .ok()
            .and_then(|i| u32::try_from(i).ok())
            .unwrap_or(u32::MAX)
    }

    fn ascending<'n>(&self, names: impl Iterator<Item = &'n NodeName>) -> Vec<u32> {
        let mut idx: Vec<u32> = names.map(|n| self.index(n)).collect();
        idx.sort_unstable();
        let mut prev = 0u32;
        idx.iter()
            .map(|&i| {
                let d = i.wrapping_sub(prev);
                prev = i;
                d
            })
            .collect()
    }
}

impl From<&Rollout> for CompactRollout {
    fn from(r: &Rollout) -> Self {
        let mut all: BTreeSet<&NodeName> = BTreeSet::new();
        for s in &r.stages {
            all.extend(s.nodes.iter());
        }
        all.extend(r.replacing.keys());
        all.extend(r.updated.iter());
        all.extend(r.baseline_unready.iter());
        let nodes: Vec<NodeName> = all.into_iter().cloned().collect();
        let t = Table { names: &nodes };
        let stages = r
            .stages
            .iter()
            .map(|s| CompactStage {
                name: s.name.clone(),
                nodes: t.ascending(s.nodes.iter()),
                max_unavailable: s.max_unavailable,
                bake_ms: s.bake_ms,
                manual_approval: s.manual_approval,
            })
            .collect();
        let replacing = r
            .replacing
            .iter()
            .map(|(n, rep)| (t.index(n), rep.clone()))
            .collect();
        let updated = t.ascending(r.updated.iter());
        let baseline_unready = t.ascending(r.baseline_unready.iter());
        Self {
            commit: r.commit.clone(),
            target_revision: r.target_revision.clone(),
            kind: r.kind.clone(),
            stages,
            stage: r.stage,
            phase: r.phase.clone(),
            started_at_ms: r.started_at_ms,
            stage_started_at_ms: r.stage_started_at_ms,
            replacing,
            updated,
            baseline_unready,
            last_gate: r.last_gate.clone(),
            nodes,
        }
    }
}

impl CompactRollout {
    fn into_rollout(self) -> Result<Rollout, DecodeError> {
        let nodes = self.nodes;
        let name = |i: u32| -> Result<NodeName, DecodeError> {
            nodes
                .get(i as usize)
                .cloned()
                .ok_or_else(|| DecodeError(format!("node index {i} out of range")))
        };
        let undelta = |d: &[u32]| -> Result<Vec<NodeName>, DecodeError> {
            let mut at = 0u32;
            let mut out = Vec::with_capacity(d.len());
            for (k, step) in d.iter().enumerate() {
                at = if k == 0 {
                    *step
                } else {
                    at.checked_add(*step)
                        .ok_or_else(|| DecodeError("node index overflow".into()))?
                };
                out.push(name(at)?);
            }
            Ok(out)
        };
        let mut stages = Vec::with_capacity(self.stages.len());
        for s in self.stages {
            stages.push(Stage {
                name: s.name,
                nodes: undelta(&s.nodes)?,
                max_unavailable: s.max_unavailable,
                bake_ms: s.bake_ms,
                manual_approval: s.manual_approval,
            });
        }
        if self.stage > stages.len() {
            return Err(DecodeError(format!(
                "stage {} of {} stages",
                self.stage,
                stages.len()
            )));
        }
        let mut replacing = BTreeMap::new();
        for (i, rep) in self.replacing {
            replacing.insert(name(i)?, rep);
        }
        Ok(Rollout {
            commit: self.commit,
            target_revision: self.target_revision,
            kind: self.kind,
            stages,
            stage: self.stage,
            phase: self.phase,
            started_at_ms: self.started_at_ms,
            stage_started_at_ms: self.stage_started_at_ms,
            replacing,
            updated: undelta(&self.updated)?.into_iter().collect(),
            baseline_unready: undelta(&self.baseline_unready)?.into_iter().collect(),
            last_gate: self.last_gate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::{Gate, GateFailure};

    /// Node names of exactly 63 characters (the DNS label maximum) with a random
    /// tail, so compression gets no easy wins beyond a shared cluster prefix.
    fn long_names(n: usize) -> Vec<String> {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
        (0..n)
            .map(|_| {
                let mut s = String::from("gke-production-eu-west4-general-pool-");
                while s.len() < 63 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    s.push(alphabet[(x % 36) as usize] as char);
                }
                s
            })
            .collect()
    }

    fn big_rollout(names: &[String]) -> Rollout {
        let mut sorted: Vec<NodeName> = names.iter().map(|n| NodeName::from(n.as_str())).collect();
        sorted.sort();
        let per = sorted.len() / 3;
        let stages = vec![
            Stage {
                name: "canary".into(),
                nodes: sorted[..per].to_vec(),
                max_unavailable: 1,
                bake_ms: 300_000,
                manual_approval: false,
            },
            Stage {
                name: "general".into(),
                nodes: sorted[per..2 * per].to_vec(),
                max_unavailable: 2000,
                bake_ms: 0,
                manual_approval: true,
            },
            Stage {
                name: "rest".into(),
                nodes: sorted[2 * per..].to_vec(),
                max_unavailable: 2000,
                bake_ms: 0,
                manual_approval: false,
            },
        ];
        let replacing = sorted[per..per + 2000]
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    Replacement {
                        old_pod_uid: "0f8fad5b-d9cb-469f-a165-70867728950e".into(),
                        deleted_at_ms: 1_764_000_000_000,
                    },
                )
            })
            .collect();
        Rollout {
            commit: "a".repeat(40),
            target_revision: "6d5f8b9c7".into(),
            kind: RolloutKind::Forward,
            stages,
            stage: 1,
            phase: Phase::Updating,
            started_at_ms: 1,
            stage_started_at_ms: 2,
            replacing,
            updated: sorted.iter().take(2 * per).cloned().collect(),
            baseline_unready: sorted.iter().step_by(97).cloned().collect(),
            last_gate: None,
        }
    }

    fn state_with(work: Work) -> RecordState {
        RecordState {
            status: SyncStatus::Progressing,
            message: "m".into(),
            applied: Some(Target {
                commit: "c".repeat(40),
                hash: "h".into(),
            }),
            last_good: Some("b".repeat(40)),
            failed: vec![FailedCommit {
                commit: "d".repeat(40),
                hash: "x".into(),
                reason: "crash".into(),
                at: "2026-12-01T00:00:00Z".into(),
            }],
            pool_label: Some("cloud.google.com/gke-nodepool".into()),
            work,
        }
    }

    #[test]
    fn every_kind_of_work_round_trips() {
        let names = long_names(50);
        let r = big_rollout_small(&names);
        let target = Target {
            commit: "e".repeat(40),
            hash: "abc".into(),
        };
        let mut failed = r.clone();
        failed.phase = Phase::Failed {
            failure: GateFailure {
                gate: Gate::FatalReason,
                message: "CrashLoopBackOff".into(),
                nodes: vec![names[0].clone()],
                pods: vec!["p".into()],
            },
        };
        for work in [
            Work::Idle,
            Work::Pruning,
            Work::Applying {
                target: target.clone(),
                mode: ApplyMode::Forward,
                since_ms: 5,
            },
            Work::Applying {
                target: target.clone(),
                mode: ApplyMode::InPlace,
                since_ms: 5,
            },
            Work::Applying {
                target: target.clone(),
                mode: ApplyMode::Rollback {
                    from: Box::new(failed.clone()),
                    failed_commit: "f".repeat(40),
                    reason: "crash".into(),
                },
                since_ms: 5,
            },
            Work::Rolling {
                target: target.clone(),
                rollout: r.clone(),
            },
            Work::Rolling {
                target,
                rollout: failed,
            },
        ] {
            let s = state_with(work);
            let encoded = encode(&s);
            assert!(encoded.starts_with(PREFIX));
            assert_eq!(decode(&encoded).unwrap(), s);
        }
    }

    fn big_rollout_small(names: &[String]) -> Rollout {
        let mut r = big_rollout(&long_names(6000));
        // Replace with a small consistent rollout over `names`.
        let mut sorted: Vec<NodeName> = names.iter().map(|n| NodeName::from(n.as_str())).collect();
        sorted.sort();
        r.stages.truncate(1);
        r.stages[0].nodes.clone_from(&sorted);
        r.stage = 0;
        r.replacing = BTreeMap::from([(
            sorted[1].clone(),
            Replacement {
                old_pod_uid: "u".into(),
                deleted_at_ms: 3,
            },
        )]);
        r.updated = sorted.iter().take(10).cloned().collect();
        r.baseline_unready = BTreeSet::from([sorted[20].clone()]);
        r
    }

    /// The acceptance bound: a rollout over 10,000 nodes with 63-character names,
    /// two thirds updated and 2,000 replacements in flight, fits comfortably in one
    /// object (etcd's default request limit is 1.5 MiB; we stay under 1 MiB for the
    /// whole resource).
    #[test]
    fn ten_thousand_nodes_with_long_names_fit_in_one_record() {
        let names = long_names(10_000);
        assert!(names.iter().all(|n| n.len() == 63));
        let r = big_rollout(&names);
        let state = state_with(Work::Rolling {
            target: Target {
                commit: "e".repeat(40),
                hash: "abc".into(),
            },
            rollout: r,
        });
        let encoded = encode(&state);
        let record = super::super::DaemonSetRollout {
            status: Some(super::super::RecordStatus {
                state: encoded.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let bytes = serde_json::to_vec(&record).unwrap().len();
        eprintln!(
            "10,000 nodes x 63 chars: encoded state {} bytes, record {bytes} bytes",
            encoded.len()
        );
        assert!(bytes < 1024 * 1024, "record is {bytes} bytes");
        assert_eq!(decode(&encoded).unwrap(), state);
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        for input in [
            "",
            "v1.",
            "v1.!!!",
            "v2.abc",
            "v1.aGVsbG8=",
            &format!("{PREFIX}{}", STANDARD.encode(b"\x1f\x8b\x08\x00garbage")),
        ] {
            assert!(decode(input).is_err(), "{input:?}");
        }
        // Valid gzip of JSON that refers to a node index out of range.
        let json = br#"{"status":"Progressing","work":{"type":"rolling","target":{"commit":"c","hash":"h"},"rollout":{"nodes":["a"],"commit":"c","targetRevision":"r","kind":{"type":"forward"},"stages":[{"name":"s","nodes":[0,5],"maxUnavailable":1,"bakeMs":0,"manualApproval":false}],"stage":0,"phase":{"type":"pending"},"startedAtMs":0,"stageStartedAtMs":0,"replacing":[],"updated":[],"baselineUnready":[],"lastGate":null}}}"#;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(json).unwrap();
        let s = format!("{PREFIX}{}", STANDARD.encode(gz.finish().unwrap()));
        let err = decode(&s).unwrap_err();
        assert!(err.0.contains("out of range"), "{err}");
    }

    #[test]
    fn a_compression_bomb_is_refused() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![b' '; 1024 * 1024];
        for _ in 0..40 {
            gz.write_all(&zeros).unwrap();
        }
        let s = format!("{PREFIX}{}", STANDARD.encode(gz.finish().unwrap()));
        assert!(s.len() < 200_000);
        let err = decode(&s).unwrap_err();
        assert!(err.0.contains("larger than"), "{err}");
    }
}
