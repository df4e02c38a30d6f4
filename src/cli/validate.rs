//! `nodewave validate`: offline validation for repository CI pipelines.

use std::path::PathBuf;
use std::process::ExitCode;

use super::limit_args::LimitArgs;
use super::render::{FileRender, RenderArgs};
use crate::manifest::{self, CHECKS, Limits, LoadOptions, Severity};
use crate::render::{self, RenderError};

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Directory holding the manifests (every *.yaml / *.yml below it; directories
    /// with a kustomization.yaml or Chart.yaml are rendered as the server does).
    #[arg(value_name = "DIR", required_unless_present = "list_checks")]
    pub dir: Option<PathBuf>,
    #[command(flatten)]
    pub rules: RuleArgs,
    #[command(flatten)]
    pub render: RenderArgs,
    /// List every check with its id and default severity, and exit.
    #[arg(long)]
    pub list_checks: bool,
    /// Also verify the signature of the checkout's HEAD commit against the
    /// trusted keys, as `run --verify-commits head` would; exit 1 when it is
    /// not signed by a trusted key, 2 when it cannot be checked.
    #[arg(long)]
    pub verify: bool,
    #[command(flatten)]
    pub trust: super::trust::TrustArgs,
}

/// Validation options shared by `run`, `diff` and `validate`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RuleArgs {
    /// Namespace DaemonSets may be applied to (repeatable; default: any).
    #[arg(
        long = "allow-namespace",
        value_name = "NAMESPACE",
        env = "NODEWAVE_ALLOW_NAMESPACES",
        value_delimiter = ','
    )]
    pub allow_namespaces: Vec<String>,
    /// Kind of companion object nodewave may apply next to DaemonSets: `Kind`
    /// (core group), `Kind.group`, or `*.group` (repeatable; replaces the default
    /// list: Namespace, ServiceAccount, ConfigMap, Secret, Service, RBAC,
    /// PodDisruptionBudget, PriorityClass, CRDs and their custom resources,
    /// Deployment, webhook configurations; `none`: DaemonSets only).
    #[arg(
        long = "allow-kind",
        value_name = "KIND",
        env = "NODEWAVE_ALLOW_KINDS",
        value_delimiter = ','
    )]
    pub allow_kinds: Vec<String>,
    /// Change a best-practice check's severity, e.g. `probes-missing=error` or
    /// `resources-missing=off` (repeatable). Levels: error, warning, off.
    #[arg(long = "severity", value_name = "CHECK=LEVEL", value_parser = parse_severity)]
    pub severities: Vec<(String, Severity)>,
    /// Require every image to be pinned by digest (@sha256:...).
    #[arg(long)]
    pub require_digest: bool,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Base URL of a Prometheus that RolloutPolicy checks may query, e.g.
    /// http://prometheus.monitoring:9090 (repeatable). Scheme, host and port
    /// must be equal, the policy's path at or below this one. Without any, a
    /// policy with Prometheus checks is rejected [default: none allowed].
    #[arg(
        long = "allow-prometheus-url",
        value_name = "URL",
        env = "NODEWAVE_ALLOW_PROMETHEUS_URLS",
        value_delimiter = ',',
        value_parser = manifest::prometheus_url::parse_allowed
    )]
    pub allow_prometheus_urls: Vec<String>,
}

fn parse_severity(s: &str) -> Result<(String, Severity), String> {
    let (check, level) = s
        .split_once('=')
        .ok_or_else(|| format!("expected CHECK=LEVEL, got {s:?}"))?;
    let info = manifest::check_info(check).ok_or_else(|| {
        format!(
            "unknown check {check:?}; known checks: {}",
            CHECKS.iter().map(|c| c.id).collect::<Vec<_>>().join(", ")
        )
    })?;
    if !info.overridable {
        return Err(format!(
            "check {check:?} guards what can be applied at all; its severity cannot be changed"
        ));
    }
    let level = level.parse::<Severity>().map_err(|e: String| e)?;
    Ok((check.to_string(), level))
}

impl RuleArgs {
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            allowed_namespaces: self.allow_namespaces.clone(),
            allowed_kinds: self.allow_kinds.clone(),
            severity_overrides: self.severities.iter().cloned().collect(),
            require_digest: self.require_digest,
            limits: self.limits(),
            allowed_prometheus_urls: self.allow_prometheus_urls.clone(),
            ..LoadOptions::default()
        }
    }

    /// The size limits in force (also for the Git source: `GitSourceConfig::limits`).
    pub fn limits(&self) -> Limits {
        self.limits.limits()
    }
}

pub fn run(args: &ValidateArgs) -> ExitCode {
    if args.list_checks {
        println!(
            "{:<24} {:<9} {:<11} SUMMARY",
            "CHECK", "DEFAULT", "OVERRIDABLE"
        );
        for c in CHECKS {
            println!(
                "{:<24} {:<9} {:<11} {}",
                c.id,
                c.default_severity.to_string(),
                if c.overridable { "yes" } else { "no" },
                c.summary
            );
        }
        return ExitCode::SUCCESS;
    }
    let Some(dir) = &args.dir else {
        return ExitCode::from(2);
    };
    if args.verify
        && let Err(code) = super::trust::verify_checkout(dir, &args.trust)
    {
        return ExitCode::from(code);
    }
    let options = match args.render.options(&FileRender::default()) {
        Ok(mut o) => {
            o.limits = args.rules.limits();
            o
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // Kustomize and Helm directories are rendered exactly as `nodewave run` does.
    let files = match render::render_dir(dir, &options) {
        Ok(f) => f,
        Err(RenderError::Rejected(findings)) => {
            for f in &findings {
                println!("{f}");
            }
            println!(
                "invalid: {} error(s) reading or rendering the sources; a commit like this is rejected whole and nothing from it is applied",
                findings.len()
            );
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if files.is_empty() {
        eprintln!("error: no *.yaml or *.yml files under {}", dir.display());
        return ExitCode::from(1);
    }
    let repo_config = match manifest::read_repo_config(dir) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "error: cannot read {}: {e}",
                dir.join(manifest::REPO_CONFIG_FILE).display()
            );
            return ExitCode::from(2);
        }
    };
    match manifest::load_with_config(&files, repo_config.as_ref(), &args.rules.load_options()) {
        Ok(state) => {
            for w in &state.warnings {
                println!("{w}");
            }
            let objects = if state.objects.is_empty() {
                String::new()
            } else {
                format!(", {} other object(s)", state.objects.len())
            };
            println!(
                "ok: {} file(s), {} DaemonSet(s), {} RolloutPolicy(ies){objects}, {} warning(s)",
                files.len(),
                state.daemonsets.len(),
                state.policies.len(),
                state.warnings.len()
            );
            ExitCode::SUCCESS
        }
        Err(rejected) => print_rejected(&rejected),
    }
}

fn print_rejected(rejected: &manifest::Rejected) -> ExitCode {
    for f in rejected.errors.iter().chain(&rejected.warnings) {
        println!("{f}");
    }
    println!(
        "invalid: {} error(s), {} warning(s); a commit like this is rejected whole and nothing from it is applied",
        rejected.errors.len(),
        rejected.warnings.len()
    );
    ExitCode::from(1)
}
