//! `nodewave run` settings: flags, environment variables (`NODEWAVE_*`) and an
//! optional TOML config file. Flags and environment win over the file; the file
//! wins over defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::KubeArgs;
use super::limit_args::{FileLimits, LimitValue};
use super::validate::RuleArgs;
use crate::manifest::policy::parse_duration;
use crate::manifest::{Limit, Severity};
use crate::source::{Credentials, GitRef};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Every flag can also be set in the config file (same name, e.g. `poll-interval = \"30s\"`) \
or the environment variable shown. Secrets are read from files or NODEWAVE_GIT_TOKEN / NODEWAVE_GIT_PASSWORD, \
never from flags."
)]
pub struct RunArgs {
    /// TOML config file with any of the options below.
    #[arg(long, env = "NODEWAVE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Git repository: https://, ssh://, git@host:org/repo.git, file:// or a local path.
    #[arg(long, env = "NODEWAVE_REPO", value_name = "URL")]
    pub repo: Option<String>,
    /// Branch to track [default: main].
    #[arg(long, env = "NODEWAVE_BRANCH", conflicts_with = "tag")]
    pub branch: Option<String>,
    /// Track a tag instead of a branch.
    #[arg(long, env = "NODEWAVE_TAG")]
    pub tag: Option<String>,
    /// Sub-path of the repository holding the manifests [default: repository root].
    #[arg(long, env = "NODEWAVE_PATH")]
    pub path: Option<String>,
    /// How often to fetch when no webhook arrives [default: 60s].
    #[arg(long, env = "NODEWAVE_POLL_INTERVAL", value_name = "DURATION", value_parser = parse_duration)]
    pub poll_interval: Option<Duration>,
    /// Address of the HTTP server (/metrics, /healthz, /readyz, /status, /webhook)
    /// [default: 127.0.0.1:8080; use 0.0.0.0:8080 in a pod].
    #[arg(long, env = "NODEWAVE_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// File holding the push webhook's shared secret; without it /webhook is disabled.
    #[arg(long, env = "NODEWAVE_WEBHOOK_SECRET_FILE", value_name = "FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    /// Where the local clone lives [default: ~/.cache/nodewave/repos/<hash of repo and ref>].
    #[arg(long, env = "NODEWAVE_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// HTTPS: file holding an access token (sent as the password).
    #[arg(long, env = "NODEWAVE_GIT_TOKEN_FILE", value_name = "FILE")]
    pub git_token_file: Option<PathBuf>,
    /// HTTPS: user name for basic auth, or for the token [default: x-access-token].
    #[arg(long, env = "NODEWAVE_GIT_USERNAME")]
    pub git_username: Option<String>,
    /// HTTPS: file holding the basic-auth password.
    #[arg(long, env = "NODEWAVE_GIT_PASSWORD_FILE", value_name = "FILE")]
    pub git_password_file: Option<PathBuf>,
    /// SSH: private key file.
    #[arg(long, env = "NODEWAVE_GIT_SSH_KEY_FILE", value_name = "FILE")]
    pub git_ssh_key_file: Option<PathBuf>,
    /// SSH: file holding the private key's passphrase.
    #[arg(long, env = "NODEWAVE_GIT_SSH_PASSPHRASE_FILE", value_name = "FILE")]
    pub git_ssh_passphrase_file: Option<PathBuf>,
    /// SSH: known_hosts file the server's host key is checked against.
    #[arg(long, env = "NODEWAVE_GIT_KNOWN_HOSTS_FILE", value_name = "FILE")]
    pub git_known_hosts_file: Option<PathBuf>,
    /// SSH: trust and record host keys not yet in known_hosts (a changed key is always refused).
    #[arg(long, env = "NODEWAVE_GIT_ACCEPT_NEW_HOST_KEYS")]
    pub git_accept_new_host_keys: bool,
    /// Do not delete managed DaemonSets that disappeared from Git.
    #[arg(long, env = "NODEWAVE_NO_PRUNE")]
    pub no_prune: bool,
    /// Report drift (changes made outside Git) without undoing it.
    #[arg(long, env = "NODEWAVE_NO_SELF_HEAL")]
    pub no_self_heal: bool,
    /// Create a DaemonSet's namespace when it does not exist.
    #[arg(long, env = "NODEWAVE_CREATE_NAMESPACES")]
    pub create_namespaces: bool,
    /// Node label naming a node's pool when a policy names none
    /// [default: auto-detect GKE, EKS, AKS, Karpenter and nodewave.io/pool labels].
    #[arg(long, env = "NODEWAVE_POOL_LABEL")]
    pub pool_label: Option<String>,
    /// How often rollouts in progress are checked [default: 2s].
    #[arg(long, env = "NODEWAVE_ROLLOUT_INTERVAL", value_name = "DURATION", value_parser = parse_duration)]
    pub rollout_interval: Option<Duration>,
    /// Log format: human or json [default: human].
    #[arg(long, env = "NODEWAVE_LOG_FORMAT", value_parser = ["human", "json"])]
    pub log_format: Option<String>,
    /// Log filter (tracing EnvFilter syntax) [default: info].
    #[arg(long, env = "NODEWAVE_LOG", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Run with leader election so only one of several replicas acts; the others
    /// wait. Losing the lease stops the process (exit code 1) so it restarts clean.
    #[arg(long, env = "NODEWAVE_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Namespace of the leader-election Lease [default: $POD_NAMESPACE or default].
    #[arg(
        long,
        env = "NODEWAVE_LEADER_ELECTION_NAMESPACE",
        value_name = "NAMESPACE"
    )]
    pub leader_election_namespace: Option<String>,
    /// Name of the leader-election Lease [default: nodewave].
    #[arg(long, env = "NODEWAVE_LEADER_ELECTION_LEASE", value_name = "NAME")]
    pub leader_election_lease: Option<String>,
    #[command(flatten)]
    pub rules: RuleArgs,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// The config file: the same options in kebab-case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub repo: Option<String>,
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub path: Option<String>,
    pub poll_interval: Option<String>,
    pub listen: Option<SocketAddr>,
    pub webhook_secret_file: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub git_token_file: Option<PathBuf>,
    pub git_username: Option<String>,
    pub git_password_file: Option<PathBuf>,
    pub git_ssh_key_file: Option<PathBuf>,
    pub git_ssh_passphrase_file: Option<PathBuf>,
    pub git_known_hosts_file: Option<PathBuf>,
    pub git_accept_new_host_keys: Option<bool>,
    pub prune: Option<bool>,
    pub self_heal: Option<bool>,
    pub create_namespaces: Option<bool>,
    pub pool_label: Option<String>,
    pub rollout_interval: Option<String>,
    pub log_format: Option<String>,
    pub log_level: Option<String>,
    pub allow_namespaces: Option<Vec<String>>,
    pub severity: Option<std::collections::BTreeMap<String, Severity>>,
    pub require_digest: Option<bool>,
    pub kubeconfig: Option<PathBuf>,
    pub leader_elect: Option<bool>,
    pub leader_election_namespace: Option<String>,
    pub leader_election_lease: Option<String>,
    pub max_file_bytes: Option<LimitValue>,
    pub max_files: Option<LimitValue>,
    pub max_total_bytes: Option<LimitValue>,
    pub max_objects: Option<LimitValue>,
    pub max_total_nodes: Option<LimitValue>,
    pub max_object_bytes: Option<LimitValue>,
    pub max_depth: Option<LimitValue>,
    pub max_nodes: Option<LimitValue>,
    pub max_aliases: Option<LimitValue>,
}

impl FileConfig {
    fn limits(&self) -> FileLimits {
        let field = |limit: Limit| match limit {
            Limit::FileBytes => &self.max_file_bytes,
            Limit::Files => &self.max_files,
            Limit::TotalBytes => &self.max_total_bytes,
            Limit::Objects => &self.max_objects,
            Limit::TotalNodes => &self.max_total_nodes,
            Limit::ObjectBytes => &self.max_object_bytes,
            Limit::Depth => &self.max_depth,
            Limit::Nodes => &self.max_nodes,
            Limit::Aliases => &self.max_aliases,
        };
        FileLimits {
            values: Limit::ALL
                .into_iter()
                .filter_map(|l| field(l).clone().map(|v| (l, v)))
                .collect(),
        }
    }
}

/// Bounds of the two intervals: shorter ones would busy-loop, longer ones are
/// typos (and time arithmetic on them could overflow).
const POLL_INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(24 * 3600));
const ROLLOUT_INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(3600));

fn check_interval(
    what: &str,
    d: Duration,
    (min, max): (Duration, Duration),
) -> Result<Duration, String> {
    use crate::manifest::policy::format_duration;
    if d < min || d > max {
        return Err(format!(
            "{what} {} is outside {} to {}",
            format_duration(d),
            format_duration(min),
            format_duration(max)
        ));
    }
    Ok(d)
}

/// Everything `run` needs, resolved.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub repo: String,
    pub reference: GitRef,
    pub path: String,
    pub poll_interval: Duration,
    pub listen: SocketAddr,
    pub webhook_secret_file: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub credentials: Credentials,
    pub prune: bool,
    pub self_heal: bool,
    pub create_namespaces: bool,
    pub pool_label: Option<String>,
    pub rollout_interval: Duration,
    pub log_json: bool,
    pub log_level: String,
    pub rules: RuleArgs,
    pub kubeconfig: Option<PathBuf>,
    /// `Some((namespace, lease name))` when leader election is on.
    pub leader_election: Option<(String, String)>,
}

fn read_file_config(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
}

fn duration_opt(s: Option<&String>, what: &str) -> Result<Option<Duration>, String> {
    s.map(|s| parse_duration(s).map_err(|e| format!("config file: {what}: {e}")))
        .transpose()
}

impl RunArgs {
    pub fn resolve(&self) -> Result<Resolved, String> {
        let file = match &self.config {
            Some(p) => read_file_config(p)?,
            None => FileConfig::default(),
        };
        let repo = self.repo.clone().or(file.repo.clone()).ok_or(
            "no repository given: use --repo URL (or NODEWAVE_REPO, or `repo` in the config file)",
        )?;
        let reference = match (
            self.tag.clone().or(file.tag.clone()),
            self.branch.clone().or(file.branch.clone()),
        ) {
            (Some(_), Some(_)) => return Err("give either a branch or a tag, not both".into()),
            (Some(t), None) => GitRef::Tag(t),
            (None, b) => GitRef::Branch(b.unwrap_or_else(|| "main".into())),
        };
        let path = self.path.clone().or(file.path.clone()).unwrap_or_default();
        let path = path.trim_matches('/').to_string();
        let state_dir = match self.state_dir.clone().or(file.state_dir.clone()) {
            Some(d) => d,
            None => default_state_dir(&repo, &reference),
        };
        let mut rules = self.rules.clone();
        if rules.allow_namespaces.is_empty() {
            rules.allow_namespaces = file.allow_namespaces.clone().unwrap_or_default();
        }
        if let Some(sev) = &file.severity {
            for (k, v) in sev {
                if !rules.severities.iter().any(|(c, _)| c == k) {
                    rules.severities.push((k.clone(), *v));
                }
            }
        }
        rules.require_digest |= file.require_digest.unwrap_or(false);
        rules.limits.merge_file(&file.limits())?;
        let log_format = self
            .log_format
            .clone()
            .or(file.log_format.clone())
            .unwrap_or_else(|| "human".into());
        if log_format != "human" && log_format != "json" {
            return Err(format!(
                "config file: log-format must be human or json, not {log_format:?}"
            ));
        }
        Ok(Resolved {
            repo,
            reference,
            path,
            poll_interval: check_interval(
                "poll-interval",
                self.poll_interval
                    .or(duration_opt(file.poll_interval.as_ref(), "poll-interval")?)
                    .unwrap_or(Duration::from_mins(1)),
                POLL_INTERVAL_RANGE,
            )?,
            listen: self
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            webhook_secret_file: self
                .webhook_secret_file
                .clone()
                .or(file.webhook_secret_file.clone()),
            state_dir,
            credentials: Credentials {
                token_file: self.git_token_file.clone().or(file.git_token_file.clone()),
                username: self.git_username.clone().or(file.git_username.clone()),
                password_file: self
                    .git_password_file
                    .clone()
                    .or(file.git_password_file.clone()),
                ssh_key_file: self
                    .git_ssh_key_file
                    .clone()
                    .or(file.git_ssh_key_file.clone()),
                ssh_key_passphrase_file: self
                    .git_ssh_passphrase_file
                    .clone()
                    .or(file.git_ssh_passphrase_file.clone()),
                known_hosts_file: self
                    .git_known_hosts_file
                    .clone()
                    .or(file.git_known_hosts_file.clone()),
                accept_new_host_keys: self.git_accept_new_host_keys
                    || file.git_accept_new_host_keys.unwrap_or(false),
            },
            prune: !self.no_prune && file.prune.unwrap_or(true),
            self_heal: !self.no_self_heal && file.self_heal.unwrap_or(true),
            create_namespaces: self.create_namespaces || file.create_namespaces.unwrap_or(false),
            pool_label: self.pool_label.clone().or(file.pool_label.clone()),
            rollout_interval: check_interval(
                "rollout-interval",
                self.rollout_interval
                    .or(duration_opt(
                        file.rollout_interval.as_ref(),
                        "rollout-interval",
                    )?)
                    .unwrap_or(Duration::from_secs(2)),
                ROLLOUT_INTERVAL_RANGE,
            )?,
            log_json: log_format == "json",
            log_level: self
                .log_level
                .clone()
                .or(file.log_level.clone())
                .unwrap_or_else(|| "info".into()),
            rules,
            kubeconfig: self.kube.kubeconfig.clone().or(file.kubeconfig.clone()),
            leader_election: (self.leader_elect || file.leader_elect.unwrap_or(false)).then(|| {
                (
                    self.leader_election_namespace
                        .clone()
                        .or(file.leader_election_namespace.clone())
                        .or_else(|| std::env::var("POD_NAMESPACE").ok())
                        .unwrap_or_else(|| "default".into()),
                    self.leader_election_lease
                        .clone()
                        .or(file.leader_election_lease.clone())
                        .unwrap_or_else(|| "nodewave".into()),
                )
            }),
        })
    }
}

fn default_state_dir(repo: &str, reference: &GitRef) -> PathBuf {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{repo}\n{}", reference.full_name()).as_bytes());
    let base = std::env::var_os("HOME").map_or_else(
        || PathBuf::from("/var/lib/nodewave"),
        |h| PathBuf::from(h).join(".cache/nodewave"),
    );
    base.join("repos").join(hex::encode(&digest[..8]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn flags_override_the_config_file_and_defaults_apply() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("nodewave.toml");
        std::fs::write(&cfg, "repo = \"file:///from-file\"\npoll-interval = \"30s\"\nprune = false\nallow-namespaces = [\"logging\"]\n[severity]\nprobes-missing = \"error\"\n").unwrap();
        let t = T::parse_from([
            "x",
            "--config",
            cfg.to_str().unwrap(),
            "--repo",
            "file:///from-flag",
        ]);
        let r = t.run.resolve().unwrap();
        assert_eq!(r.repo, "file:///from-flag");
        assert_eq!(r.poll_interval, Duration::from_secs(30));
        assert!(!r.prune);
        assert!(r.self_heal);
        assert_eq!(r.reference, GitRef::Branch("main".into()));
        assert_eq!(r.rules.allow_namespaces, vec!["logging"]);
        assert_eq!(
            r.rules.severities,
            vec![("probes-missing".to_string(), Severity::Error)]
        );
        assert_eq!(r.listen.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn limits_come_from_flags_then_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("nodewave.toml");
        std::fs::write(
            &cfg,
            "repo = \"file:///r\"\nmax-file-bytes = \"8MiB\"\nmax-files = 10\nmax-depth = 32\n",
        )
        .unwrap();
        let t = T::parse_from(["x", "--config", cfg.to_str().unwrap(), "--max-files", "20"]);
        let limits = t.run.resolve().unwrap().rules.load_options().limits;
        assert_eq!(limits.max_file_bytes, 8 << 20);
        assert_eq!(limits.max_files, 20);
        assert_eq!(limits.max_depth, 32);
        assert_eq!(
            limits.max_nodes,
            crate::manifest::Limits::default().max_nodes
        );
        std::fs::write(&cfg, "repo = \"file:///r\"\nmax-object-bytes = \"lots\"\n").unwrap();
        let t = T::parse_from(["x", "--config", cfg.to_str().unwrap()]);
        let e = t.run.resolve().unwrap_err();
        assert!(e.contains("max-object-bytes"), "{e}");
    }

    #[test]
    fn absurd_intervals_are_refused() {
        for (flag, value) in [
            ("--poll-interval", "0"),
            ("--poll-interval", "25h"),
            ("--rollout-interval", "10ms"),
            ("--rollout-interval", "2h"),
        ] {
            let t = T::parse_from(["x", "--repo", "file:///r", flag, value]);
            let e = t.run.resolve().unwrap_err();
            assert!(e.contains("is outside"), "{flag} {value}: {e}");
        }
        // Overflowing values are clap errors, not panics.
        assert!(T::try_parse_from(["x", "--poll-interval", "1s18446744073709551615s"]).is_err());
    }

    #[test]
    fn unknown_config_keys_and_missing_repo_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("nodewave.toml");
        std::fs::write(&cfg, "repository = \"x\"\n").unwrap();
        let t = T::parse_from(["x", "--config", cfg.to_str().unwrap()]);
        let e = t.run.resolve().unwrap_err();
        assert!(e.contains("unknown field `repository`"), "{e}");
        let t = T::parse_from(["x"]);
        assert!(t.run.resolve().unwrap_err().contains("--repo"));
    }
}
