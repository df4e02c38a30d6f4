//! Command-line interface: `run` (the service), `diff`, `validate`, `status` and
//! `rollout` (pause, resume, abort, approve).

mod config;
mod diff;
mod leader;
mod limit_args;
mod logfmt;
mod render;
mod rollout;
mod run;
mod status;
mod trust;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use config::RunArgs;

#[derive(Debug, Parser)]
#[command(
    name = "nodewave",
    version,
    about = "GitOps for Kubernetes DaemonSets: staged rollouts per node pool, health gates, automatic rollback to the last good commit",
    long_about = "nodewave tracks a Git branch of DaemonSet manifests and RolloutPolicies, validates every commit, \
and rolls each change out node pool by node pool. Each stage is gated on pod health (readiness, restarts, \
fatal container states) and optional Prometheus queries scoped to the stage's nodes. When a gate fails, \
nodewave rolls the DaemonSet back to the last commit that rolled out cleanly and never re-applies the \
failed commit by itself.",
    after_help = "Examples:\n  nodewave run --repo https://git.example.com/platform/daemonsets.git --path clusters/prod\n  nodewave validate ./daemonsets\n  nodewave diff --dir ./daemonsets\n  nodewave status\n  nodewave rollout pause logging/fluent-bit"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the reconciler: fetch, validate, diff, roll out, serve metrics and webhooks.
    Run(Box<RunArgs>),
    /// Show what applying a checkout or a Git ref would change in the cluster.
    ///
    /// Exit code 0 when the cluster is in sync, 1 when there are differences, 2 on error
    /// (like `kubectl diff`).
    Diff(diff::DiffArgs),
    /// Validate manifests offline (no cluster): schema, selectors, namespaces, policies
    /// and best-practice checks. Exit code 1 when any error is found.
    Validate(validate::ValidateArgs),
    /// Show every DaemonSet nodewave manages: sync status, commits, rollout progress.
    Status(status::StatusArgs),
    /// Control a rollout in progress.
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    /// Internal: one Git fetch, run by `nodewave run` in a child process so a
    /// hanging remote can be stopped (source on stdin, outcome on stdout).
    #[command(name = "internal-git-fetch", hide = true)]
    InternalGitFetch,
}

/// Options shared by the commands that talk to a cluster.
#[derive(Debug, Clone, clap::Args)]
pub struct KubeArgs {
    /// Path to a kubeconfig file. Default: $KUBECONFIG, ~/.kube/config, or the
    /// in-cluster service account.
    #[arg(long, env = "NODEWAVE_KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::InternalGitFetch) {
        return crate::source::fetch_process::child_main();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    // reqwest (Prometheus checks) uses rustls without a built-in provider choice.
    let _ = rustls::crypto::ring::default_provider().install_default();
    runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run::run(*args).await,
            Command::Diff(args) => diff::run(args).await,
            Command::Validate(args) => validate::run(&args),
            Command::Status(args) => status::run(args).await,
            Command::Rollout(cmd) => rollout::run(cmd).await,
            Command::InternalGitFetch => crate::source::fetch_process::child_main(),
        }
    })
}
