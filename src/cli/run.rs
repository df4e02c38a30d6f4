//! `nodewave run`: wires the HTTP server, leader election, the watches, the
//! desired-state pipeline and the controller together.

use std::process::ExitCode;
use std::sync::Arc;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use super::RunArgs;
use super::leader;
use crate::cluster::{self, Cluster};
use crate::controller::{self, Fence};
use crate::desired::{Loader, Pipeline, SourceIdentity};
use crate::manifest::CHECKS;
use crate::metrics::Metrics;
use crate::plan;
use crate::record::client::{Records, ensure_crd};
use crate::server::{self, AppState};
use crate::service::{SharedStatus, Triggers};
use crate::source::{GitSourceConfig, SourceWorker, redact_url};
use crate::store::{Scope, Touched, Watches};

pub fn init_logging(json: bool, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: logs redirected to a file stay plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if json {
        // One flat object per line: span fields (namespace, daemonset, commit,
        // stage) at the top level next to the event's (see logfmt.rs).
        builder
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(super::logfmt::FlatJson)
            .init();
    } else {
        builder.init();
    }
}

fn read_webhook_secret(path: &std::path::Path) -> Result<Arc<Vec<u8>>, String> {
    let mut bytes = std::fs::read(path).map_err(|e| {
        format!(
            "cannot read the webhook secret file {}: {e}",
            path.display()
        )
    })?;
    while bytes.last().is_some_and(u8::is_ascii_whitespace) {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(format!(
            "the webhook secret file {} is empty",
            path.display()
        ));
    }
    Ok(Arc::new(bytes))
}

pub async fn run(args: RunArgs) -> ExitCode {
    let cfg = match args.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(cfg.log_json, &cfg.log_level);
    let repo_display = redact_url(&cfg.repo);
    info!(version = env!("CARGO_PKG_VERSION"), repo = %repo_display, reference = %cfg.reference, path = %cfg.path, "starting nodewave");
    if cfg.rollout_interval.is_some() {
        warn!(
            "--rollout-interval is no longer used: rollouts follow watch events and their own deadlines"
        );
    }

    let metrics = Metrics::new();
    metrics.init_commit_reject_reasons(CHECKS.iter().map(|c| c.id).chain([
        "read-error",
        crate::verify::REJECT_REASON,
        crate::desired::PANIC_REASON,
    ]));
    metrics.init_reconcile_error_kinds(controller::ERROR_KINDS.iter().copied());
    let trust = match super::trust::trust_store(cfg.verify_commits, &cfg.trust_files) {
        Ok(t) => t,
        Err(e) => {
            error!(error = %e, "cannot load the trusted keys");
            return ExitCode::from(2);
        }
    };
    let client = match cluster::client(cfg.kubeconfig.as_deref()).await {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "cannot connect to Kubernetes");
            return ExitCode::from(2);
        }
    };
    let source_cfg = GitSourceConfig {
        url: cfg.repo.clone(),
        reference: cfg.reference.clone(),
        path: cfg.path.clone(),
        checkout_dir: cfg.state_dir.clone(),
        credentials: cfg.credentials.clone(),
        limits: cfg.rules.limits(),
    };
    let source = match SourceWorker::open(source_cfg.clone()) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot open the Git source");
            return ExitCode::from(2);
        }
    };
    let webhook_secret = match cfg.webhook_secret_file.as_deref().map(read_webhook_secret) {
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            error!("{e}");
            return ExitCode::from(2);
        }
        None => None,
    };

    let status = SharedStatus::default();
    let triggers = Arc::new(Triggers::default());
    let app = AppState::new(
        metrics.clone(),
        status.clone(),
        triggers.clone(),
        cfg.reference.clone(),
        webhook_secret,
        &cfg.http,
    );
    let webhook_enabled = app.webhook.enabled();
    let http = match server::Server::bind(&cfg.http, app).await {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot listen");
            return ExitCode::from(2);
        }
    };
    info!(listen = %cfg.http.listen, metrics_listen = ?cfg.http.metrics_listen, webhook = webhook_enabled, "HTTP server listening");
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut server_shutdown = shutdown_rx.clone();
    let server = tokio::spawn(http.serve(async move {
        let _ = server_shutdown.changed().await;
    }));
    let stop = |code: ExitCode| async move {
        let _ = shutdown_tx.send(true);
        let _ = server.await;
        code
    };

    if let Err(e) = ensure_crd(&client, cfg.install_crds).await {
        error!("{e}");
        return stop(ExitCode::from(2)).await;
    }

    // Only the leader watches and acts; a standby serves /healthz and /readyz
    // (ready: "standby") and takes over within the lease duration.
    let identity = leader::identity();
    let mut leadership = None;
    let mut lease_watch = None;
    let fence = match &cfg.leader_election {
        Some((namespace, lease)) => {
            status.write().await.standby = true;
            let fence = Fence::lease(&identity);
            lease_watch =
                Some(fence.follow(Api::<Lease>::namespaced(client.clone(), namespace), lease));
            tokio::select! {
                r = leader::acquire(client.clone(), namespace, lease, &identity) => match r {
                    Ok(l) => leadership = Some(l),
                    Err(e) => {
                        error!(error = %e, "leader election failed");
                        return stop(ExitCode::from(1)).await;
                    }
                },
                () = shutdown_signal() => return stop(ExitCode::SUCCESS).await,
            }
            fence
        }
        None => Fence::unfenced(),
    };
    {
        let mut st = status.write().await;
        st.standby = false;
        st.leader = true;
    }

    // Namespaced mode: one set of watches per allowed namespace, so Roles in
    // those namespaces suffice (nodes are always watched cluster-wide).
    let scope = if cfg.namespaced {
        Scope::Namespaces(cfg.rules.allow_namespaces.clone())
    } else {
        Scope::AllNamespaces
    };
    let (touch_tx, touch_rx) = mpsc::unbounded_channel::<Touched>();
    let mut watches = Watches::start(
        &client,
        &scope,
        Arc::new(move |t| {
            let _ = touch_tx.send(t);
        }),
    );
    info!(scope = ?scope, "waiting for the watches to list DaemonSets, pods, nodes and records");
    tokio::select! {
        () = watches.wait_ready() => {}
        () = shutdown_signal() => return stop(ExitCode::SUCCESS).await,
    }
    info!(
        daemonsets = watches.stores.daemonsets().iter().count(),
        pods = watches.stores.pod_count(),
        nodes = watches.stores.nodes().len(),
        "watches ready"
    );

    let identity_src = SourceIdentity {
        repo: repo_display.clone(),
        path: cfg.path.clone(),
    };
    metrics.watch_daemonsets(watches.stores.clone(), identity_src.clone());
    let cluster = Cluster::new(client.clone(), metrics.clone());
    let loader = Arc::new(
        Loader::new(
            source,
            cfg.rules.load_options(),
            cfg.render.clone(),
            identity_src.clone(),
        )
        .with_poisoned_commits(&cfg.state_dir),
    );
    let (desired_tx, desired_rx) = watch::channel(None);
    let pipeline = Pipeline {
        loader: loader.clone(),
        fetch: source_cfg,
        fetch_timeout: cfg.fetch_timeout,
        poll_interval: cfg.poll_interval,
        status: status.clone(),
        metrics: metrics.clone(),
        triggers: triggers.clone(),
        cluster: cluster.clone(),
        stores: watches.stores.clone(),
        report_namespaces: cfg.rules.allow_namespaces.clone(),
        trust,
        prune: cfg.prune.then_some(cfg.prune_limit),
    };
    let pipeline_task = crate::service::spawn_supervised(
        "desired-state pipeline",
        status.clone(),
        metrics.clone(),
        pipeline.run(desired_tx, shutdown_rx.clone()),
    );
    let ctx = controller::Context::new(
        controller::Config {
            identity: identity_src.clone(),
            settings: plan::Settings {
                self_heal: cfg.self_heal,
                prune: cfg.prune,
                pool_label: cfg.pool_label.clone(),
                allow_takeover: cfg.allow_takeover,
            },
            workers: cfg.workers,
            create_namespaces: cfg.create_namespaces,
        },
        cluster,
        Records::new(
            client.clone(),
            identity_src.repo.clone(),
            identity_src.path.clone(),
        ),
        watches.stores.clone(),
        desired_rx,
        loader,
        metrics.clone(),
        status.clone(),
        fence,
    );
    let controller_task = crate::service::spawn_supervised(
        "controller",
        status,
        metrics,
        controller::run(ctx, touch_rx, shutdown_rx.clone()),
    );

    let mut exit = ExitCode::SUCCESS;
    if let Some(l) = leadership.as_mut() {
        tokio::select! {
            () = shutdown_signal() => info!("signal received, stopping"),
            () = l.lost() => {
                // Treat a lost lease as fatal: another replica may already act.
                error!("lost the leader lease; stopping so another replica can take over");
                exit = ExitCode::from(1);
            }
        }
    } else {
        shutdown_signal().await;
        info!("signal received, stopping");
    }
    let code = stop(exit).await;
    let _ = controller_task.await;
    let _ = pipeline_task.await;
    drop(watches);
    if let Some(t) = lease_watch {
        t.abort();
    }
    if let Some(l) = leadership {
        l.release().await;
    }
    code
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
