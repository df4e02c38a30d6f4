//! The HTTP server: `/metrics`, `/healthz`, `/readyz`, `/status` and the push
//! webhook, on one listener or split over two (`--metrics-listen`).
//!
//! The routers are built by [`router`] so tests drive them in-process;
//! [`Server`] binds the listeners and serves them with the limits of
//! [`listener`] (connection limit, header-read, request and write-stall
//! timeouts). What is authenticated: only `/webhook` (HMAC or token, see
//! [`crate::source::webhook`]); the other endpoints are read-only and open,
//! which is why they can be moved to a listener that is not exposed.

mod coalesce;
mod listener;
mod replay;
#[cfg(test)]
mod tests;
mod webhook;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use coalesce::{Coalescer, Decision};
pub use listener::{Accept, Limits, MAX_BUF_BYTES, WriteTimeout, serve_connections};
pub use replay::ReplayCache;
pub use webhook::WebhookGuard;

use crate::metrics::{self, Metrics};
use crate::service::{SharedStatus, Triggers};
use crate::source::GitRef;
use crate::source::webhook::MAX_BODY_BYTES;

/// Everything about the HTTP server that comes from flags or the config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// `/webhook`, and every other endpoint when `metrics_listen` is unset.
    pub listen: SocketAddr,
    /// `/metrics`, `/status`, `/healthz`, `/readyz` on their own listener.
    pub metrics_listen: Option<SocketAddr>,
    /// Applied to each listener separately (a webhook flood cannot take the
    /// metrics listener's connections).
    pub limits: Limits,
    /// How long a webhook delivery is remembered to recognise a replay.
    pub replay_window: Duration,
    /// Webhook-triggered fetches are at least this far apart (the first one
    /// after a quiet period runs at once).
    pub fetch_coalesce_window: Duration,
}

impl ServerConfig {
    /// Defaults for everything but the addresses.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            metrics_listen: None,
            limits: Limits::default(),
            replay_window: DEFAULT_REPLAY_WINDOW,
            fetch_coalesce_window: DEFAULT_FETCH_COALESCE_WINDOW,
        }
    }
}

pub const DEFAULT_REPLAY_WINDOW: Duration = Duration::from_mins(10);
pub const DEFAULT_FETCH_COALESCE_WINDOW: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct AppState {
    pub metrics: Metrics,
    pub status: SharedStatus,
    pub triggers: Arc<Triggers>,
    pub reference: GitRef,
    /// Webhook secret, replay cache and fetch coalescing.
    pub webhook: Arc<WebhookGuard>,
}

impl AppState {
    /// `webhook_secret` `None` disables `/webhook` (404).
    pub fn new(
        metrics: Metrics,
        status: SharedStatus,
        triggers: Arc<Triggers>,
        reference: GitRef,
        webhook_secret: Option<Arc<Vec<u8>>>,
        cfg: &ServerConfig,
    ) -> Self {
        Self {
            metrics,
            status,
            triggers,
            reference,
            webhook: Arc::new(WebhookGuard::new(
                webhook_secret,
                cfg.replay_window,
                cfg.fetch_coalesce_window,
            )),
        }
    }
}

/// Which endpoints a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoints {
    /// Everything (one listener, the default).
    All,
    /// `/webhook` only (the listener a Git host reaches).
    Webhook,
    /// `/metrics`, `/status`, `/healthz`, `/readyz`.
    Operations,
}

pub fn router(state: AppState, endpoints: Endpoints, request_timeout: Duration) -> Router {
    let operations = || {
        Router::new()
            .route("/metrics", get(metrics_handler))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/leaderz", get(leaderz))
            .route("/status", get(status))
    };
    let hook = || Router::new().route("/webhook", post(webhook::handler));
    let routes = match endpoints {
        Endpoints::All => operations().merge(hook()),
        Endpoints::Webhook => hook(),
        Endpoints::Operations => operations(),
    };
    routes
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            request_timeout,
            request_deadline,
        ))
        .with_state(state)
}

/// Bounds a request from its headers to its response, body read included (a
/// client trickling its body is answered 408 and the connection closed).
async fn request_deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            format!("request not completed within {}s\n", limit.as_secs_f64()),
        )
            .into_response(),
    }
}

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// The bound listeners, ready to serve.
pub struct Server {
    main: TcpListener,
    operations: Option<TcpListener>,
    state: AppState,
    limits: Limits,
}

impl Server {
    /// Binds `listen` (and `metrics_listen`), so a taken port is an error
    /// at start rather than in a background task.
    pub async fn bind(cfg: &ServerConfig, state: AppState) -> Result<Self, BindError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| BindError { addr, source })
        };
        let main = bind(cfg.listen).await?;
        let operations = match cfg.metrics_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        Ok(Self {
            main,
            operations,
            state,
            limits: cfg.limits,
        })
    }

    /// The bound addresses (port 0 resolved): main, then metrics.
    pub fn local_addrs(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        (
            self.main.local_addr().ok(),
            self.operations.as_ref().and_then(|l| l.local_addr().ok()),
        )
    }

    /// Serves until `shutdown` completes, then finishes requests in flight
    /// (for at most the request timeout).
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) {
        let timeout = self.limits.request_timeout;
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let main_endpoints = if self.operations.is_some() {
            Endpoints::Webhook
        } else {
            Endpoints::All
        };
        let main = serve_connections(
            self.main,
            router(self.state.clone(), main_endpoints, timeout),
            self.limits,
            stopped(stop_rx.clone()),
        );
        let operations = async {
            if let Some(l) = self.operations {
                serve_connections(
                    l,
                    router(self.state.clone(), Endpoints::Operations, timeout),
                    self.limits,
                    stopped(stop_rx.clone()),
                )
                .await;
            }
        };
        let signal = async {
            shutdown.await;
            let _ = stop_tx.send(true);
        };
        tokio::join!(signal, main, operations);
    }
}

async fn metrics_handler(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        s.metrics.encode(),
    )
        .into_response()
}

/// `/healthz`: the process is alive and no task panicked (a panic makes it 503 so
/// the kubelet restarts the pod and a standby takes over).
async fn healthz(State(s): State<AppState>) -> Response {
    match &s.status.read().await.panicked {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(p) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: a task panicked ({p}); restart me\n"),
        )
            .into_response(),
    }
}

/// `/leaderz`: 200 only on the replica that holds the lease and is in sync, for
/// a load balancer that should send webhooks to the replica that acts.
async fn leaderz(State(s): State<AppState>) -> Response {
    let st = s.status.read().await;
    if st.leader && st.synced_once {
        (StatusCode::OK, "leader\n").into_response()
    } else if st.leader {
        (StatusCode::SERVICE_UNAVAILABLE, "leader, not in sync yet\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not the leader\n").into_response()
    }
}

/// `/readyz`: 200 for a standby replica waiting for the leader lease (so a
/// two-replica Deployment rolls out; `/leaderz` tells which replica acts).
/// For the leader: 503 (the reasons in the body) until nodewave holds a valid commit
/// from Git and has finished one sync pass comparing it with the cluster; 200 from
/// then on.
///
/// Before that first pass nodewave has decided nothing, so it is not ready: not
/// while Git has never been reached, nor while the only commit it knows was
/// rejected. After a restart the last fetched commit is read from the local clone,
/// so a restarted nodewave becomes ready even when the remote is down.
///
/// Once ready it stays ready while the remote is unreachable: nodewave keeps the
/// cluster at the last fetched commit (healing drift, finishing or rolling back
/// rollouts from its local clone), which is its job; failing readiness would only
/// take it out of its Service and drop the webhook that says the remote is back.
/// A Git outage shows instead in `/status` (`last_fetch_error`),
/// `nodewave_git_fetch_total{result="error"}` and
/// `nodewave_git_last_successful_fetch_timestamp_seconds`: alert on those.
async fn readyz(State(s): State<AppState>) -> Response {
    let st = s.status.read().await;
    if st.standby {
        (StatusCode::OK, "standby: waiting for the leader lease\n").into_response()
    } else if st.synced_once {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        let mut why = Vec::new();
        if !st.git_reached {
            why.push(format!(
                "Git not reached yet{}",
                st.last_fetch_error
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ));
        }
        if let Some(c) = &st.rejected_commit {
            why.push(format!("commit {c} was rejected (see /status); push a fix"));
        }
        why.push("first sync with the cluster not finished".to_string());
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", why.join("; ")),
        )
            .into_response()
    }
}

async fn status(State(s): State<AppState>) -> Response {
    let st = s.status.read().await.clone();
    axum::Json(st).into_response()
}
