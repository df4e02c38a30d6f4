//! `nodewave run`: wires source, cluster, reconciler and HTTP server together.

use std::process::ExitCode;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::RunArgs;
use super::leader;
use crate::cluster::{self, Cluster};
use crate::keys;
use crate::manifest::CHECKS;
use crate::metrics::Metrics;
use crate::reconciler::{Reconciler, Settings, SharedStatus, Triggers};
use crate::server::{self, AppState};
use crate::source::{GitSourceConfig, SourceWorker, redact_url};

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

    let metrics = Metrics::new();
    metrics.init_commit_reject_reasons(CHECKS.iter().map(|c| c.id));
    let client = match cluster::client(cfg.kubeconfig.as_deref()).await {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "cannot connect to Kubernetes");
            return ExitCode::from(2);
        }
    };
    let source = match SourceWorker::open(GitSourceConfig {
        url: cfg.repo.clone(),
        reference: cfg.reference.clone(),
        path: cfg.path.clone(),
        checkout_dir: cfg.state_dir.clone(),
        credentials: cfg.credentials.clone(),
        limits: cfg.rules.limits(),
    }) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot open the Git source");
            return ExitCode::from(2);
        }
    };
    let webhook_secret = match &cfg.webhook_secret_file {
        Some(p) => match std::fs::read(p) {
            Ok(mut bytes) => {
                while bytes.last().is_some_and(u8::is_ascii_whitespace) {
                    bytes.pop();
                }
                if bytes.is_empty() {
                    error!(file = %p.display(), "the webhook secret file is empty");
                    return ExitCode::from(2);
                }
                Some(Arc::new(bytes))
            }
            Err(e) => {
                error!(file = %p.display(), error = %e, "cannot read the webhook secret file");
                return ExitCode::from(2);
            }
        },
        None => None,
    };

    let status = SharedStatus::default();
    let triggers = Arc::new(Triggers::default());
    let cluster = Cluster::new(client.clone(), metrics.clone());
    let settings = Settings {
        repo_display,
        path: cfg.path.clone(),
        poll_interval: cfg.poll_interval,
        prune: cfg.prune,
        self_heal: cfg.self_heal,
        create_namespaces: cfg.create_namespaces,
        pool_label: cfg.pool_label.clone(),
        load: cfg.rules.load_options(),
        rollout_tick: cfg.rollout_interval,
    };

    let listener = match tokio::net::TcpListener::bind(cfg.listen).await {
        Ok(l) => l,
        Err(e) => {
            error!(listen = %cfg.listen, error = %e, "cannot listen");
            return ExitCode::from(2);
        }
    };
    info!(listen = %cfg.listen, webhook = webhook_secret.is_some(), "HTTP server listening");
    let app = server::router(AppState {
        metrics: metrics.clone(),
        status: status.clone(),
        triggers: triggers.clone(),
        webhook_secret,
        reference: cfg.reference.clone(),
    });

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut server_shutdown = shutdown_rx.clone();
    let server = tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = server_shutdown.changed().await;
            })
            .await;
        if let Err(e) = r {
            error!(error = %e, "HTTP server failed");
        }
    });

    // Any change to a managed DaemonSet (ours or someone's `kubectl edit`) wakes the
    // loop, so drift is seen within seconds rather than at the next poll.
    let watch_triggers = triggers.clone();
    let client_for_lease = client.clone();
    let ds_api: Api<DaemonSet> = Api::all(client);
    let watcher_task = tokio::spawn(async move {
        let cfg = watcher::Config::default().labels(&format!(
            "{}={}",
            keys::MANAGED_BY_LABEL,
            keys::MANAGED_BY_VALUE
        ));
        let mut stream = watcher(ds_api, cfg).boxed();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(
                    watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone,
                ) => {
                    watch_triggers.resync.notify_one();
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "DaemonSet watch interrupted; retrying"),
            }
        }
    });

    // Only the leader reconciles; the HTTP server already answers /healthz (and
    // /readyz says not ready) while a replica waits.
    let mut exit = ExitCode::SUCCESS;
    let mut leadership = None;
    if let Some((namespace, lease)) = &cfg.leader_election {
        tokio::select! {
            r = leader::acquire(client_for_lease, namespace, lease) => match r {
                Ok(l) => leadership = Some(l),
                Err(e) => {
                    error!(error = %e, "leader election failed");
                    let _ = shutdown_tx.send(true);
                    watcher_task.abort();
                    let _ = server.await;
                    return ExitCode::from(1);
                }
            },
            () = shutdown_signal() => {
                let _ = shutdown_tx.send(true);
                watcher_task.abort();
                let _ = server.await;
                return ExitCode::SUCCESS;
            }
        }
    }

    let reconciler = Reconciler::new(settings, cluster, source, metrics, status, triggers);
    let loop_task = tokio::spawn(reconciler.run(shutdown_rx));

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
    let _ = shutdown_tx.send(true);
    watcher_task.abort();
    let _ = loop_task.await;
    let _ = server.await;
    if let Some(l) = leadership {
        l.release().await;
    }
    exit
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
