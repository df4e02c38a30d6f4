//! Drivers that measure nodewave on the real local control plane (kwok nodes),
//! never asserted in tests: `bench` (nodewave side by side with the native
//! DaemonSet controller: rollout duration, idle API requests, peak memory,
//! webhook latency) and `chaos` (staged rollouts under SIGKILLs, a stopped
//! controller-manager, kube-apiserver restarts and leadership flips, with every
//! observation checked against the rollout invariants).
//!
//! Run through `hack/bench-scale.sh` and `hack/chaos.sh`, which start and stop
//! the cluster and build nodewave in release mode.

mod bench;
mod chaos;
mod control_plane;
mod git;
mod nodewave;
mod stats;
mod watch;

#[path = "../../tests/support/replay.rs"]
mod replay;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    about = "nodewave fleet benchmark and chaos drivers (see hack/bench-scale.sh, hack/chaos.sh)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// nodewave side by side with the native DaemonSet controller (hack/bench-scale.sh).
    Bench(bench::Args),
    /// Staged rollouts under injected faults, every observation checked (hack/chaos.sh).
    Chaos(chaos::Args),
}

/// Where the cluster's files are (kwokctl's binary runtime).
#[derive(clap::Args, Clone, Debug)]
pub struct ClusterArgs {
    /// kwokctl cluster name (its files are in ~/.kwok/clusters/NAME).
    #[arg(long)]
    pub cluster: String,
    /// The nodewave binary to run (a release build).
    #[arg(long)]
    pub nodewave: PathBuf,
    /// Scratch directory (Git repository, nodewave state and logs).
    #[arg(long)]
    pub work: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            // kube_client logs every failed request of the watches while kube-apiserver
            // restarts; the driver reports what matters itself.
            tracing_subscriber::EnvFilter::try_from_env("FLEET_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,kube_client::client::builder=off")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        match cli.cmd {
            Cmd::Bench(a) => bench::run(a).await,
            Cmd::Chaos(a) => chaos::run(a).await,
        }
    })
}
