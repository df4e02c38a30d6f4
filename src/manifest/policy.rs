//! The `nodewave.io/v1alpha1 RolloutPolicy` document: how one DaemonSet is rolled out.
//!
//! A policy lives in Git next to its DaemonSet and is read by nodewave, never applied
//! to the cluster. Unknown fields are errors, like everywhere else in a commit.

use std::fmt::{self, Write as _};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub const API_VERSION: &str = "nodewave.io/v1alpha1";
pub const KIND: &str = "RolloutPolicy";

/// Node labels that name a node's pool on the common platforms, in the order they
/// are tried when a policy names no `poolLabel`.
pub const WELL_KNOWN_POOL_LABELS: &[&str] = &[
    "cloud.google.com/gke-nodepool",
    "eks.amazonaws.com/nodegroup",
    "kubernetes.azure.com/agentpool",
    "karpenter.sh/nodepool",
    "nodewave.io/pool",
];

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RolloutPolicy {
    pub api_version: String,
    pub kind: String,
    pub metadata: PolicyMetadata,
    pub spec: RolloutPolicySpec,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyMetadata {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RolloutPolicySpec {
    pub target: PolicyTarget,
    /// Node label whose value is the node's pool. Unset: the first of
    /// [`WELL_KNOWN_POOL_LABELS`] (or the label given to `nodewave run`) found on the nodes.
    #[serde(default)]
    pub pool_label: Option<String>,
    /// Ordered stages. Empty: one stage per pool, in pool-name order.
    #[serde(default)]
    pub stages: Vec<StageSpec>,
    #[serde(default)]
    pub health: HealthSpec,
    #[serde(default)]
    pub rollback: RollbackSpec,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyTarget {
    /// Name of the DaemonSet, in the policy's namespace.
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StageSpec {
    pub name: String,
    /// Pool names; `"*"` means every pool no earlier stage named.
    pub pools: Vec<String>,
    /// Canary: only this many nodes of the pools, spread across them.
    #[serde(default)]
    pub nodes: Option<u32>,
    #[serde(default = "default_stage_max_unavailable")]
    pub max_unavailable: IntOrPercent,
    /// Soak time after every pod of the stage is Ready on the new revision.
    #[serde(default, with = "duration_opt")]
    pub bake: Option<Duration>,
    /// `manual`: wait for `nodewave rollout approve` before this stage starts.
    #[serde(default)]
    pub approval: Option<Approval>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Approval {
    Manual,
}

fn default_stage_max_unavailable() -> IntOrPercent {
    IntOrPercent::Count(1)
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthSpec {
    /// A replacement pod not Ready within this long fails the gate.
    #[serde(default = "default_ready_timeout", with = "duration")]
    pub ready_timeout: Duration,
    /// More restarts than this on an updated pod fail the gate.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    /// Container waiting/terminated reasons that fail the gate at once.
    #[serde(default = "default_fatal_reasons")]
    pub fatal_reasons: Vec<String>,
    #[serde(default)]
    pub prometheus: Option<PrometheusSpec>,
}

impl Default for HealthSpec {
    fn default() -> Self {
        Self {
            ready_timeout: default_ready_timeout(),
            max_restarts: default_max_restarts(),
            fatal_reasons: default_fatal_reasons(),
            prometheus: None,
        }
    }
}

fn default_ready_timeout() -> Duration {
    Duration::from_mins(5)
}
fn default_max_restarts() -> u32 {
    1
}
pub fn default_fatal_reasons() -> Vec<String> {
    [
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "CreateContainerConfigError",
        "OOMKilled",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrometheusSpec {
    /// Base URL of a Prometheus HTTP API, e.g. `http://prometheus.monitoring:9090`.
    pub url: String,
    /// How often checks are evaluated during a stage and its bake.
    #[serde(default = "default_prom_interval", with = "duration")]
    pub interval: Duration,
    /// How long Prometheus may be unreachable before the gate fails.
    #[serde(default = "default_prom_grace", with = "duration")]
    pub unreachable_grace: Duration,
    pub checks: Vec<PrometheusCheck>,
}

fn default_prom_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_prom_grace() -> Duration {
    Duration::from_mins(2)
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrometheusCheck {
    pub name: String,
    /// PromQL; `{{nodes}}` expands to a regex matching the stage's node names.
    pub query: String,
    /// Fail when the query's value is above this.
    #[serde(default)]
    pub max: Option<f64>,
    /// Fail when the query's value is below this.
    #[serde(default)]
    pub min: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RollbackSpec {
    #[serde(default = "default_true")]
    pub automatic: bool,
    #[serde(default = "default_rollback_max_unavailable")]
    pub max_unavailable: IntOrPercent,
}

impl Default for RollbackSpec {
    fn default() -> Self {
        Self {
            automatic: true,
            max_unavailable: default_rollback_max_unavailable(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_rollback_max_unavailable() -> IntOrPercent {
    IntOrPercent::Percent(50)
}

/// A count (`2`) or a percentage (`"25%"`) of a stage's nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntOrPercent {
    Count(u32),
    Percent(u32),
}

impl IntOrPercent {
    /// Resolves against `total` nodes. Percentages round down, and the result is
    /// at least 1 so a rollout can always progress.
    pub fn resolve(self, total: usize) -> usize {
        let n = match self {
            Self::Count(c) => c as usize,
            // Percentages are at most 100 when parsed; saturate anyway, since the
            // value can also come from a persisted record.
            Self::Percent(p) => total.saturating_mul(p as usize) / 100,
        };
        n.max(1)
    }
}

impl fmt::Display for IntOrPercent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Count(c) => write!(f, "{c}"),
            Self::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for IntOrPercent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Count(c) => s.serialize_u32(*c),
            Self::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for IntOrPercent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u32),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(c) => Ok(Self::Count(c)),
            Raw::Str(s) => parse_int_or_percent(&s).map_err(serde::de::Error::custom),
        }
    }
}

pub fn parse_int_or_percent(s: &str) -> Result<IntOrPercent, String> {
    let t = s.trim();
    if let Some(p) = t.strip_suffix('%') {
        let v: u32 = p
            .trim()
            .parse()
            .map_err(|_| format!("invalid percentage {s:?}: expected e.g. \"25%\""))?;
        if v == 0 || v > 100 {
            return Err(format!("percentage {s:?} must be between 1% and 100%"));
        }
        Ok(IntOrPercent::Percent(v))
    } else {
        let v: u32 = t.parse().map_err(|_| {
            format!("invalid value {s:?}: expected a count like 2 or a percentage like \"25%\"")
        })?;
        Ok(IntOrPercent::Count(v))
    }
}

/// The longest duration nodewave reads anywhere (flags and policies): one year.
/// Longer values are mistakes, and time arithmetic on them could overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses durations written like Kubernetes/Go ones: `90s`, `5m`, `1h30m`, `500ms`.
/// Arithmetic is checked: anything over [`MAX_DURATION`] is an error, never an
/// overflow.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let too_long = || {
        format!(
            "duration {s:?} is longer than {}: use a shorter one",
            format_duration(MAX_DURATION)
        )
    };
    let max_ms = u64::try_from(MAX_DURATION.as_millis()).unwrap_or(u64::MAX);
    let mut total_ms: u64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("duration {s:?} lacks a unit (use ms, s, m or h)"))?;
        if num_end == 0 {
            return Err(format!(
                "invalid duration {s:?}: expected e.g. 30s, 5m, 1h30m"
            ));
        }
        // Only digits: the sole parse failure left is a number beyond u64.
        let n: u64 = rest[..num_end].parse().map_err(|_| too_long())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let unit_ms: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => {
                return Err(format!(
                    "invalid duration unit {unit:?} in {s:?} (use ms, s, m or h)"
                ));
            }
        };
        total_ms = n
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .filter(|ms| *ms <= max_ms)
            .ok_or_else(too_long)?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    let h = secs / 3600;
    secs %= 3600;
    let m = secs / 60;
    secs %= 60;
    if h > 0 {
        let _ = write!(out, "{h}h");
    }
    if m > 0 {
        let _ = write!(out, "{m}m");
    }
    if secs > 0 {
        let _ = write!(out, "{secs}s");
    }
    out
}

mod duration {
    use super::{Duration, format_duration, parse_duration};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

mod duration_opt {
    use super::{Duration, format_duration, parse_duration};
    use serde::{Deserialize, Deserializer, Serializer};

    #[allow(clippy::ref_option)]
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format_duration(*d)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip() {
        for (s, secs) in [("30s", 30), ("5m", 300), ("1h30m", 5400), ("0", 0)] {
            assert_eq!(parse_duration(s).unwrap(), Duration::from_secs(secs), "{s}");
        }
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(format_duration(Duration::from_mins(90)), "1h30m");
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn overflowing_durations_are_errors_not_panics() {
        // Regression: `total += d` overflowed Duration and panicked (exit 101 from
        // `nodewave validate`), and `n * 3600` wrapped silently in release builds.
        for s in [
            "1s18446744073709551615s",
            "18446744073709551615s18446744073709551615s",
            "5124095576030431h",
            "18446744073709551615h",
            "99999999999999999999999s",
            "307445734561825861m",
            "8761h",
            "365h365h365h365h365h365h365h365h365h365h365h365h365h365h365h365h365h365h365h365h365h365h365h365h365h",
        ] {
            let e = parse_duration(s).unwrap_err();
            assert!(e.contains("longer than"), "{s}: {e}");
        }
        assert_eq!(parse_duration("8760h").unwrap(), MAX_DURATION);
        assert_eq!(
            parse_duration("1h1m1s1ms").unwrap(),
            Duration::from_millis(3_661_001)
        );
        assert_eq!(
            IntOrPercent::Percent(u32::MAX).resolve(usize::MAX),
            usize::MAX / 100
        );
    }

    #[test]
    fn int_or_percent_resolves_with_floor_of_one() {
        assert_eq!(IntOrPercent::Percent(25).resolve(10), 2);
        assert_eq!(IntOrPercent::Percent(10).resolve(3), 1);
        assert_eq!(IntOrPercent::Count(3).resolve(2), 3);
        assert_eq!(IntOrPercent::Count(0).resolve(2), 1);
        assert!(parse_int_or_percent("0%").is_err());
        assert!(parse_int_or_percent("150%").is_err());
        assert_eq!(
            parse_int_or_percent("50%").unwrap(),
            IntOrPercent::Percent(50)
        );
    }
}
