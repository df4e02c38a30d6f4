//! What validation reports: findings, their severities and the catalogue of checks.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How a finding affects a commit: any `Error` rejects the whole commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    Off,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warning => "warning",
            Self::Off => "off",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Severity {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "error" => Ok(Self::Error),
            "warning" | "warn" => Ok(Self::Warning),
            "off" => Ok(Self::Off),
            _ => Err(format!(
                "invalid severity {s:?}: expected error, warning or off"
            )),
        }
    }
}

/// A place in a commit: file path relative to the repository root, 1-based line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Location {
    pub file: String,
    pub line: Option<usize>,
}

impl Location {
    pub fn new(file: impl Into<String>, line: Option<usize>) -> Self {
        Self {
            file: file.into(),
            line,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}", self.file),
            None => f.write_str(&self.file),
        }
    }
}

/// One problem found in a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable check id, one of [`CHECKS`]; safe as a metric label.
    pub check: &'static str,
    pub severity: Severity,
    pub location: Location,
    /// The object concerned, e.g. `DaemonSet logging/fluent-bit`.
    pub object: Option<String>,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}[{}] ", self.location, self.severity, self.check)?;
        if let Some(object) = &self.object {
            write!(f, "{object}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// A check's entry in the catalogue, for docs and `nodewave validate --list-checks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CheckInfo {
    pub id: &'static str,
    pub default_severity: Severity,
    /// Structural checks guard what nodewave can apply at all; their severity cannot be
    /// overridden.
    pub overridable: bool,
    pub summary: &'static str,
}

pub const YAML_SYNTAX: &str = "yaml-syntax";
pub const LIMIT_EXCEEDED: &str = "limit-exceeded";
pub const UNSUPPORTED_KIND: &str = "unsupported-kind";
pub const UNKNOWN_FIELD: &str = "unknown-field";
pub const INVALID_OBJECT: &str = "invalid-object";
pub const SELECTOR_MISMATCH: &str = "selector-mismatch";
pub const DUPLICATE_NAME: &str = "duplicate-name";
pub const NAMESPACE_NOT_ALLOWED: &str = "namespace-not-allowed";
pub const POLICY_TARGET_MISSING: &str = "policy-target-missing";
pub const INVALID_POLICY: &str = "invalid-policy";
/// A RolloutPolicy's Prometheus URL is outside `--allow-prometheus-url`.
pub const PROMETHEUS_URL_NOT_ALLOWED: &str = "prometheus-url-not-allowed";
pub const RESOURCES_MISSING: &str = "resources-missing";
pub const PROBES_MISSING: &str = "probes-missing";
pub const IMAGE_UNPINNED: &str = "image-unpinned";
pub const IMAGE_DIGEST: &str = "image-digest";
pub const PRIVILEGED: &str = "privileged";
pub const HOST_NETWORK: &str = "host-network";
pub const HOST_PID: &str = "host-pid";
pub const UPDATE_STRATEGY: &str = "update-strategy";
// Companion objects (src/manifest/objects.rs).
pub const LEGACY_API_VERSION: &str = "legacy-api-version";
pub const KIND_NOT_ALLOWED: &str = "kind-not-allowed";
// The repository's .nodewave.yaml (src/manifest/repo_config.rs).
pub const REPO_CONFIG: &str = "repo-config";
// Rendering (src/render): the renderer failed, or a source was refused.
pub const RENDER_ERROR: &str = "render-error";
pub const REMOTE_SOURCE_REFUSED: &str = "remote-source-refused";

const fn structural(id: &'static str, summary: &'static str) -> CheckInfo {
    CheckInfo {
        id,
        default_severity: Severity::Error,
        overridable: false,
        summary,
    }
}

const fn practice(
    id: &'static str,
    default_severity: Severity,
    summary: &'static str,
) -> CheckInfo {
    CheckInfo {
        id,
        default_severity,
        overridable: true,
        summary,
    }
}

/// Every check `load` runs, structural ones first.
pub const CHECKS: &[CheckInfo] = &[
    structural(YAML_SYNTAX, "the file is not valid YAML"),
    structural(
        RENDER_ERROR,
        "Kustomize or Helm failed to render a directory (their message), or its kustomization, Chart.yaml or nodewave.yaml is invalid",
    ),
    structural(
        REMOTE_SOURCE_REFUSED,
        "a kustomization or chart needs the network (remote base, non-vendored dependency) or a file outside the repository; rendering is hermetic by default",
    ),
    structural(
        LIMIT_EXCEEDED,
        "a file, the commit or a document is over a size limit (bytes, files, documents, nesting depth, nodes, aliases)",
    ),
    structural(
        UNSUPPORTED_KIND,
        "a document has no apiVersion or kind, is not a mapping, or is a DaemonSet or RolloutPolicy of an unknown apiVersion",
    ),
    structural(
        LEGACY_API_VERSION,
        "an object uses an apiVersion current Kubernetes no longer serves (e.g. extensions/v1beta1 DaemonSet); the message names the replacement",
    ),
    structural(
        KIND_NOT_ALLOWED,
        "an object's kind is not in the kinds nodewave may manage (--allow-kind; custom resources need their CRD in the commit or an entry)",
    ),
    structural(
        REPO_CONFIG,
        "the repository's .nodewave.yaml is invalid (unknown field or check, or a structural check named)",
    ),
    structural(
        UNKNOWN_FIELD,
        "a field is not part of the DaemonSet or RolloutPolicy schema (often a typo)",
    ),
    structural(
        INVALID_OBJECT,
        "a document has wrong value types, lacks required fields or has an invalid name",
    ),
    structural(
        SELECTOR_MISMATCH,
        "spec.selector does not match the pod template's labels",
    ),
    structural(
        DUPLICATE_NAME,
        "two objects of the same kind have the same namespace and name",
    ),
    structural(
        NAMESPACE_NOT_ALLOWED,
        "an object is in a namespace nodewave may not manage",
    ),
    structural(
        POLICY_TARGET_MISSING,
        "a RolloutPolicy targets a DaemonSet that is not in the commit, in its namespace",
    ),
    structural(
        INVALID_POLICY,
        "a RolloutPolicy's stages or health checks are inconsistent",
    ),
    structural(
        PROMETHEUS_URL_NOT_ALLOWED,
        "a RolloutPolicy's Prometheus URL is not allowed by --allow-prometheus-url (none is by default), or carries credentials, a query or a fragment",
    ),
    practice(
        RESOURCES_MISSING,
        Severity::Warning,
        "a container lacks cpu and memory requests and limits",
    ),
    practice(
        PROBES_MISSING,
        Severity::Warning,
        "a container lacks a liveness or readiness probe",
    ),
    practice(
        IMAGE_UNPINNED,
        Severity::Warning,
        "an image has no tag or uses the latest tag",
    ),
    practice(
        IMAGE_DIGEST,
        Severity::Off,
        "an image is not pinned by @sha256 digest (error when digests are required)",
    ),
    practice(
        PRIVILEGED,
        Severity::Warning,
        "a container is privileged without the nodewave.io/allow-privileged opt-in",
    ),
    practice(
        HOST_NETWORK,
        Severity::Warning,
        "the pod uses the host network without the nodewave.io/allow-host-network opt-in",
    ),
    practice(
        HOST_PID,
        Severity::Warning,
        "the pod shares the host PID namespace without the nodewave.io/allow-host-pid opt-in",
    ),
    practice(
        UPDATE_STRATEGY,
        Severity::Warning,
        "spec.updateStrategy is not OnDelete; nodewave applies OnDelete and drives the rollout itself",
    ),
];

pub fn check_info(id: &str) -> Option<&'static CheckInfo> {
    CHECKS.iter().find(|c| c.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severities_parse_and_print_lowercase() {
        assert_eq!("Warning".parse::<Severity>().unwrap(), Severity::Warning);
        assert_eq!("off".parse::<Severity>().unwrap(), Severity::Off);
        assert!("fatal".parse::<Severity>().is_err());
        assert_eq!(
            serde_json::to_string(&Severity::Error).unwrap(),
            "\"error\""
        );
        assert_eq!(Severity::Warning.to_string(), "warning");
    }

    #[test]
    fn check_ids_are_unique_and_kebab_case() {
        let mut ids: Vec<&str> = CHECKS.iter().map(|c| c.id).collect();
        assert!(
            ids.iter()
                .all(|id| id.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
        );
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), CHECKS.len());
        assert!(
            CHECKS
                .iter()
                .filter(|c| !c.overridable)
                .all(|c| c.default_severity == Severity::Error)
        );
    }

    #[test]
    fn finding_display_names_file_line_check_and_object() {
        let f = Finding {
            check: SELECTOR_MISMATCH,
            severity: Severity::Error,
            location: Location::new("examples/ds.yaml", Some(12)),
            object: Some("DaemonSet logging/fluent-bit".into()),
            message: "selector {app: x} does not match template labels {app: y}".into(),
        };
        assert_eq!(
            f.to_string(),
            "examples/ds.yaml:12: error[selector-mismatch] DaemonSet logging/fluent-bit: selector {app: x} does not match template labels {app: y}"
        );
    }
}
