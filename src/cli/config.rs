//! `nodewave run` settings: flags, environment variables (`NODEWAVE_*`) and an
//! optional TOML config file. Flags and environment win over the file; the file
//! wins over defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::KubeArgs;
use super::limit_args::{FileLimits, LimitValue};
use super::render::{FileRender, RenderArgs};
use super::trust::{TrustArgs, parse_verify_mode};
use super::validate::RuleArgs;
use crate::desired::PruneLimit;
use crate::manifest::policy::parse_duration;
use crate::manifest::{Limit, Severity};
use crate::server::ServerConfig;
use crate::source::webhook::TIMESTAMP_TOLERANCE;
use crate::source::{Credentials, GitRef};
use crate::verify::{TrustFiles, VerifyMode};

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
    /// Address of the HTTP server: /webhook, plus /metrics, /healthz, /readyz and
    /// /status unless --metrics-listen is set [default: 127.0.0.1:8080; use
    /// 0.0.0.0:8080 in a pod].
    #[arg(long, env = "NODEWAVE_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Serve /metrics, /healthz, /readyz and /status on this address instead, so
    /// --listen serves only /webhook and can be exposed to the Git host alone
    /// [default: unset, one listener serves everything].
    #[arg(long, env = "NODEWAVE_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Time a client has to send a request's headers; also how long an idle
    /// keep-alive connection is kept [default: 10s].
    #[arg(long, env = "NODEWAVE_HTTP_HEADER_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub http_header_timeout: Option<Duration>,
    /// Time a request has from its headers to its response (body included), and
    /// the longest a response write may stall on a client that does not read
    /// [default: 30s].
    #[arg(long, env = "NODEWAVE_HTTP_REQUEST_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub http_request_timeout: Option<Duration>,
    /// Connections served at once, per listener; more wait in the accept backlog
    /// [default: 64].
    #[arg(long, env = "NODEWAVE_HTTP_MAX_CONNECTIONS", value_name = "N")]
    pub http_max_connections: Option<usize>,
    /// How long a webhook delivery is remembered: the same delivery again within
    /// this window answers 200 without fetching [default: 10m; at least 5m].
    #[arg(long, env = "NODEWAVE_WEBHOOK_REPLAY_WINDOW", value_name = "DURATION", value_parser = parse_duration)]
    pub webhook_replay_window: Option<Duration>,
    /// Webhook-triggered fetches are at least this far apart: the first webhook
    /// after a quiet period fetches at once, later ones within the window share one
    /// fetch at its end; 0s disables coalescing [default: 5s].
    #[arg(long, env = "NODEWAVE_WEBHOOK_COALESCE_WINDOW", value_name = "DURATION", value_parser = parse_duration)]
    pub webhook_coalesce_window: Option<Duration>,
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
    /// HTTPS: also send the token/password to a plain http:// remote. Without it
    /// such a configuration is refused at start: anyone on the network path could
    /// read the secret. Only for a network you trust.
    #[arg(long, env = "NODEWAVE_INSECURE_ALLOW_HTTP_CREDENTIALS")]
    pub insecure_allow_http_credentials: bool,
    /// Do not delete managed DaemonSets that disappeared from Git.
    #[arg(long, env = "NODEWAVE_NO_PRUNE")]
    pub no_prune: bool,
    /// Prune guard: refuse the deletions of a commit that would delete more than
    /// this share (0-100) of the managed DaemonSets. A commit deleting all of them
    /// is always refused. Either is allowed when the commit carries the file
    /// .nodewave-allow-prune in the tracked directory [default: 100].
    #[arg(long, env = "NODEWAVE_MAX_PRUNE_PERCENT", value_name = "PERCENT")]
    pub max_prune_percent: Option<u32>,
    /// Report drift (changes made outside Git) without undoing it.
    #[arg(long, env = "NODEWAVE_NO_SELF_HEAL")]
    pub no_self_heal: bool,
    /// Create a DaemonSet's namespace when it does not exist.
    #[arg(long, env = "NODEWAVE_CREATE_NAMESPACES")]
    pub create_namespaces: bool,
    /// Watch and write only in the --allow-namespace namespaces, so a Role in each
    /// of them is enough (nodes are still watched cluster-wide, read-only). Needs
    /// at least one --allow-namespace; excludes --create-namespaces.
    #[arg(long, env = "NODEWAVE_NAMESPACED")]
    pub namespaced: bool,
    /// Node label naming a node's pool when a policy names none
    /// [default: auto-detect GKE, EKS, AKS, Karpenter and nodewave.io/pool labels].
    #[arg(long, env = "NODEWAVE_POOL_LABEL")]
    pub pool_label: Option<String>,
    /// No longer used: rollouts are driven by watch events and their own
    /// deadlines. Accepted (with a warning) so old configurations keep working.
    #[arg(long, env = "NODEWAVE_ROLLOUT_INTERVAL", value_name = "DURATION", value_parser = parse_duration, hide = true)]
    pub rollout_interval: Option<Duration>,
    /// Stop a Git fetch that has not finished after this long [default: 60s].
    #[arg(long, env = "NODEWAVE_FETCH_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub fetch_timeout: Option<Duration>,
    /// DaemonSets reconciled concurrently [default: 8].
    #[arg(long, env = "NODEWAVE_WORKERS", value_name = "N")]
    pub workers: Option<usize>,
    /// Take over existing DaemonSets that nodewave does not manage (otherwise only
    /// those carrying the annotation nodewave.io/allow-takeover: "true" in Git).
    #[arg(long, env = "NODEWAVE_ALLOW_TAKEOVER")]
    pub allow_takeover: bool,
    /// Do not install or upgrade the DaemonSetRollout CRD at start (install
    /// deploy/crds/ yourself; nodewave then needs no permission on CRDs).
    #[arg(long, env = "NODEWAVE_NO_INSTALL_CRDS")]
    pub no_install_crds: bool,
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
    /// Signature verification: `off`, or `head` (the commit about to be deployed
    /// must be signed by a key in --trusted-gpg-keys / --trusted-ssh-signers;
    /// anything else is rejected like an invalid commit) [default: off].
    #[arg(long, env = "NODEWAVE_VERIFY_COMMITS", value_name = "off|head", value_parser = parse_verify_mode)]
    pub verify_commits: Option<VerifyMode>,
    #[command(flatten)]
    pub trust: TrustArgs,
    #[command(flatten)]
    pub rules: RuleArgs,
    #[command(flatten)]
    pub render: RenderArgs,
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
    pub metrics_listen: Option<SocketAddr>,
    pub http_header_timeout: Option<String>,
    pub http_request_timeout: Option<String>,
    pub http_max_connections: Option<usize>,
    pub webhook_replay_window: Option<String>,
    pub webhook_coalesce_window: Option<String>,
    pub webhook_secret_file: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub git_token_file: Option<PathBuf>,
    pub git_username: Option<String>,
    pub git_password_file: Option<PathBuf>,
    pub git_ssh_key_file: Option<PathBuf>,
    pub git_ssh_passphrase_file: Option<PathBuf>,
    pub git_known_hosts_file: Option<PathBuf>,
    pub git_accept_new_host_keys: Option<bool>,
    pub insecure_allow_http_credentials: Option<bool>,
    pub prune: Option<bool>,
    pub max_prune_percent: Option<u32>,
    pub self_heal: Option<bool>,
    pub create_namespaces: Option<bool>,
    pub namespaced: Option<bool>,
    pub pool_label: Option<String>,
    pub rollout_interval: Option<String>,
    pub fetch_timeout: Option<String>,
    pub workers: Option<usize>,
    pub allow_takeover: Option<bool>,
    pub install_crds: Option<bool>,
    pub log_format: Option<String>,
    pub log_level: Option<String>,
    pub allow_namespaces: Option<Vec<String>>,
    pub allow_prometheus_urls: Option<Vec<String>>,
    pub allow_kinds: Option<Vec<String>>,
    pub severity: Option<std::collections::BTreeMap<String, Severity>>,
    pub require_digest: Option<bool>,
    pub kubeconfig: Option<PathBuf>,
    pub leader_elect: Option<bool>,
    pub leader_election_namespace: Option<String>,
    pub leader_election_lease: Option<String>,
    // Rendering (see `super::render`); not flattened: serde's flatten disables
    // deny_unknown_fields.
    pub helm: Option<PathBuf>,
    pub kustomize: Option<PathBuf>,
    pub render_timeout: Option<String>,
    pub render_max_bytes: Option<super::render::ByteSize>,
    pub render_allow_network: Option<bool>,
    pub verify_commits: Option<String>,
    pub trusted_gpg_keys: Option<PathBuf>,
    pub trusted_ssh_signers: Option<PathBuf>,
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
    /// Listeners, HTTP limits, webhook replay window and fetch coalescing.
    pub http: ServerConfig,
    pub webhook_secret_file: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub credentials: Credentials,
    pub prune: bool,
    /// The prune guard's limit (`--max-prune-percent`).
    pub prune_limit: PruneLimit,
    pub self_heal: bool,
    pub create_namespaces: bool,
    /// Watches (and so the permissions needed) limited to the allowed namespaces.
    pub namespaced: bool,
    pub pool_label: Option<String>,
    /// Set when the obsolete `rollout-interval` was given (warned about).
    pub rollout_interval: Option<Duration>,
    pub fetch_timeout: Duration,
    pub workers: usize,
    pub allow_takeover: bool,
    pub install_crds: bool,
    pub log_json: bool,
    pub log_level: String,
    pub rules: RuleArgs,
    pub kubeconfig: Option<PathBuf>,
    /// `Some((namespace, lease name))` when leader election is on.
    pub leader_election: Option<(String, String)>,
    /// Rendering of Kustomize and Helm sources; checkouts go under the state dir.
    pub render: crate::render::RenderOptions,
    pub verify_commits: VerifyMode,
    pub trust_files: TrustFiles,
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
        let mut render = self.render.options(&FileRender {
            helm: file.helm.clone(),
            kustomize: file.kustomize.clone(),
            render_timeout: file.render_timeout.clone(),
            render_max_bytes: file.render_max_bytes.clone(),
            render_allow_network: file.render_allow_network,
        })?;
        render.work_dir = Some(state_dir.join("nodewave-render"));
        let mut rules = self.rules.clone();
        if rules.allow_namespaces.is_empty() {
            rules.allow_namespaces = file.allow_namespaces.clone().unwrap_or_default();
        }
        if rules.allow_prometheus_urls.is_empty() {
            rules.allow_prometheus_urls = file
                .allow_prometheus_urls
                .iter()
                .flatten()
                .map(|u| {
                    crate::manifest::prometheus_url::parse_allowed(u)
                        .map_err(|e| format!("config file: allow-prometheus-urls: {e}"))
                })
                .collect::<Result<_, _>>()?;
        }
        if rules.allow_kinds.is_empty() {
            rules.allow_kinds = file.allow_kinds.clone().unwrap_or_default();
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
        render.limits = rules.limits();
        let create_namespaces = self.create_namespaces || file.create_namespaces.unwrap_or(false);
        let namespaced = self.namespaced || file.namespaced.unwrap_or(false);
        if namespaced && rules.allow_namespaces.is_empty() {
            return Err("--namespaced needs at least one --allow-namespace (config file: allow-namespaces): the namespaces nodewave watches and may write to".into());
        }
        if namespaced && create_namespaces {
            return Err("--namespaced and --create-namespaces exclude each other: in namespaced mode the allowed namespaces must exist (their Roles live there)".into());
        }
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
        let verify_commits = match (self.verify_commits, &file.verify_commits) {
            (Some(m), _) => m,
            (None, Some(s)) => s.parse().map_err(|e| format!("config file: {e}"))?,
            (None, None) => VerifyMode::Off,
        };
        let trust_files = TrustFiles {
            openpgp: self
                .trust
                .trusted_gpg_keys
                .clone()
                .or(file.trusted_gpg_keys.clone()),
            ssh: self
                .trust
                .trusted_ssh_signers
                .clone()
                .or(file.trusted_ssh_signers.clone()),
        };
        if verify_commits == VerifyMode::Head && trust_files == TrustFiles::default() {
            return Err(crate::verify::TrustError::NoFiles.to_string());
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
            http: self.http_config(&file)?,
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
                insecure_allow_http: self.insecure_allow_http_credentials
                    || file.insecure_allow_http_credentials.unwrap_or(false),
            },
            prune: !self.no_prune && file.prune.unwrap_or(true),
            prune_limit: self
                .max_prune_percent
                .or(file.max_prune_percent)
                .map(PruneLimit::new)
                .transpose()?
                .unwrap_or_default(),
            self_heal: !self.no_self_heal && file.self_heal.unwrap_or(true),
            create_namespaces,
            namespaced,
            pool_label: self.pool_label.clone().or(file.pool_label.clone()),
            rollout_interval: self.rollout_interval.or(duration_opt(
                file.rollout_interval.as_ref(),
                "rollout-interval",
            )?),
            fetch_timeout: self
                .fetch_timeout
                .or(duration_opt(file.fetch_timeout.as_ref(), "fetch-timeout")?)
                .unwrap_or(Duration::from_mins(1)),
            workers: self.workers.or(file.workers).unwrap_or(8).clamp(1, 256),
            allow_takeover: self.allow_takeover || file.allow_takeover.unwrap_or(false),
            install_crds: !self.no_install_crds && file.install_crds.unwrap_or(true),
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
            render,
            verify_commits,
            trust_files,
        })
    }
}

impl RunArgs {
    fn http_config(&self, file: &FileConfig) -> Result<ServerConfig, String> {
        let listen = self
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
        let mut http = ServerConfig::new(listen);
        http.metrics_listen = self.metrics_listen.or(file.metrics_listen);
        if http.metrics_listen == Some(listen) {
            return Err(format!(
                "--metrics-listen {listen} is the same address as --listen; give it another port, or leave it unset to serve everything on --listen"
            ));
        }
        let duration = |flag: Option<Duration>, key: &str, value: Option<&String>| {
            Ok::<_, String>(flag.or(duration_opt(value, key)?))
        };
        let positive = |d: Option<Duration>, key: &str| match d {
            Some(d) if d.is_zero() => Err(format!(
                "--{key} must be longer than 0s (config file: {key})"
            )),
            other => Ok(other),
        };
        let limits = &mut http.limits;
        if let Some(d) = positive(
            duration(
                self.http_header_timeout,
                "http-header-timeout",
                file.http_header_timeout.as_ref(),
            )?,
            "http-header-timeout",
        )? {
            limits.header_read_timeout = d;
        }
        if let Some(d) = positive(
            duration(
                self.http_request_timeout,
                "http-request-timeout",
                file.http_request_timeout.as_ref(),
            )?,
            "http-request-timeout",
        )? {
            limits.request_timeout = d;
        }
        if let Some(n) = self.http_max_connections.or(file.http_max_connections) {
            if !(1..=MAX_CONNECTIONS_LIMIT).contains(&n) {
                return Err(format!(
                    "--http-max-connections must be between 1 and {MAX_CONNECTIONS_LIMIT}, not {n}"
                ));
            }
            limits.max_connections = n;
        }
        if let Some(d) = duration(
            self.webhook_replay_window,
            "webhook-replay-window",
            file.webhook_replay_window.as_ref(),
        )? {
            // A timestamped generic webhook is accepted for this long, so the
            // replay cache must remember it at least as long.
            if d < TIMESTAMP_TOLERANCE {
                return Err(format!(
                    "--webhook-replay-window must be at least {}s (the webhook timestamp tolerance), not {}s",
                    TIMESTAMP_TOLERANCE.as_secs(),
                    d.as_secs_f64()
                ));
            }
            http.replay_window = d;
        }
        if let Some(d) = duration(
            self.webhook_coalesce_window,
            "webhook-coalesce-window",
            file.webhook_coalesce_window.as_ref(),
        )? {
            http.fetch_coalesce_window = d;
        }
        Ok(http)
    }
}

/// Far more than one process should serve; a typo such as 1000000 is refused.
const MAX_CONNECTIONS_LIMIT: usize = 65_536;

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
mod tests;
