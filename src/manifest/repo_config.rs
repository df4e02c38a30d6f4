//! The repository's own validation settings: `.nodewave.yaml` at the tracked
//! path. It sets check severities, per-object exemptions and the namespace and
//! kind allowlists, so `nodewave validate` in the repository's CI and
//! `nodewave run` on the server give the same answer without flags. Flags (and
//! the server's config file) still win: a severity they set is kept, and an
//! allowlist they set is not replaced (a repository cannot widen what the
//! server allows). Pure.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::findings::{REPO_CONFIG, check_info};
use super::{Finding, LoadOptions, Location, ManifestFile, Severity};

/// File name of the repository config, in the tracked directory.
pub const REPO_CONFIG_FILE: &str = ".nodewave.yaml";

/// `.nodewave.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RepoConfig {
    /// Check id → `error`, `warning` or `off` (best-practice checks only).
    #[serde(default)]
    pub severity: BTreeMap<String, Severity>,
    /// Checks that do not apply to one object.
    #[serde(default)]
    pub exemptions: Vec<Exemption>,
    /// Namespaces objects may live in (when the server sets none).
    #[serde(default)]
    pub allow_namespaces: Vec<String>,
    /// Kinds of companion objects (when the server sets none).
    #[serde(default)]
    pub allow_kinds: Vec<String>,
}

/// Checks switched off for one object, named as findings name it:
/// `DaemonSet kube-system/netplane-node`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Exemption {
    pub object: String,
    pub checks: Vec<String>,
    /// Why (for reviewers; not used).
    #[serde(default)]
    pub reason: Option<String>,
}

fn finding(file: &str, line: Option<usize>, message: String) -> Finding {
    Finding {
        check: REPO_CONFIG,
        severity: Severity::Error,
        location: Location::new(file, Some(line.unwrap_or(1))),
        object: None,
        message,
    }
}

/// Reads and checks `.nodewave.yaml`.
pub fn parse(file: &ManifestFile) -> Result<RepoConfig, Finding> {
    let config: RepoConfig = serde_saphyr::from_str(&file.contents).map_err(|e| {
        let (line, message) = super::saphyr_error(&e);
        finding(
            &file.path,
            line,
            format!("invalid {REPO_CONFIG_FILE}: {message} (fields: severity, exemptions, allowNamespaces, allowKinds)"),
        )
    })?;
    let checks = config.severity.keys().map(String::as_str).chain(
        config
            .exemptions
            .iter()
            .flat_map(|e| e.checks.iter().map(String::as_str)),
    );
    for check in checks {
        match check_info(check) {
            None => {
                return Err(finding(
                    &file.path,
                    line_of(&file.contents, check),
                    format!(
                        "unknown check {check:?} in {REPO_CONFIG_FILE}: `nodewave validate --list-checks` lists them"
                    ),
                ));
            }
            Some(info) if !info.overridable => {
                return Err(finding(
                    &file.path,
                    line_of(&file.contents, check),
                    format!(
                        "check {check:?} guards what can be applied at all: its severity cannot be changed and no object is exempt from it"
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(config)
}

/// The first line mentioning `word`, for pointing at a bad entry.
fn line_of(text: &str, word: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(word)).map(|i| i + 1)
}

impl RepoConfig {
    /// `base` (from flags and the server's config file) completed by this
    /// file: what `base` sets wins.
    pub fn apply(&self, base: &LoadOptions) -> LoadOptions {
        let mut opts = base.clone();
        for (check, severity) in &self.severity {
            opts.severity_overrides
                .entry(check.clone())
                .or_insert(*severity);
        }
        for e in &self.exemptions {
            for check in &e.checks {
                opts.exemptions.push((e.object.clone(), check.clone()));
            }
        }
        if opts.allowed_namespaces.is_empty() {
            opts.allowed_namespaces.clone_from(&self.allow_namespaces);
        }
        if opts.allowed_kinds.is_empty() {
            opts.allowed_kinds.clone_from(&self.allow_kinds);
        }
        opts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> ManifestFile {
        ManifestFile {
            path: "clusters/prod/.nodewave.yaml".into(),
            contents: text.into(),
        }
    }

    #[test]
    fn severities_exemptions_and_allowlists_fill_what_flags_leave_open() {
        let c = parse(&file(
            "severity:\n  probes-missing: error\n  privileged: off\nexemptions:\n  - object: DaemonSet kube-system/cni\n    checks: [host-network]\n    reason: a CNI plugin\nallowNamespaces: [kube-system]\nallowKinds: [ConfigMap]\n",
        ))
        .unwrap();
        let mut flags = LoadOptions::default();
        flags
            .severity_overrides
            .insert("privileged".into(), Severity::Error);
        let o = c.apply(&flags);
        assert_eq!(o.severity("probes-missing"), Severity::Error);
        assert_eq!(o.severity("privileged"), Severity::Error, "the flag wins");
        assert_eq!(o.allowed_namespaces, ["kube-system"]);
        assert_eq!(o.allowed_kinds, ["ConfigMap"]);
        assert_eq!(
            o.exemptions,
            [(
                "DaemonSet kube-system/cni".to_string(),
                "host-network".to_string()
            )]
        );
        let server = LoadOptions {
            allowed_namespaces: vec!["logging".into()],
            ..LoadOptions::default()
        };
        assert_eq!(
            c.apply(&server).allowed_namespaces,
            ["logging"],
            "cannot widen"
        );
    }

    #[test]
    fn unknown_fields_checks_and_structural_checks_are_errors_with_lines() {
        let e = parse(&file("severities: {}\n")).unwrap_err();
        assert!(e.message.contains("unknown field"), "{e}");
        let e = parse(&file("severity:\n  probes-mising: error\n")).unwrap_err();
        assert_eq!(e.location.line, Some(2));
        assert!(e.message.contains("unknown check"), "{e}");
        let e = parse(&file(
            "exemptions:\n  - object: DaemonSet a/b\n    checks: [yaml-syntax]\n",
        ))
        .unwrap_err();
        assert!(e.message.contains("cannot be changed"), "{e}");
        assert_eq!(e.location.line, Some(3));
    }
}
