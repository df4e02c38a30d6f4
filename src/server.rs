//! The HTTP server: `/metrics`, `/healthz`, `/readyz`, `/status` and the push
//! webhook. The router is built by [`router`] so tests drive it in-process.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::metrics::{self, Metrics, WebhookProvider, WebhookResult};
use crate::service::{SharedStatus, Triggers};
use crate::source::GitRef;
use crate::source::webhook::{self, MAX_BODY_BYTES, Provider};

#[derive(Clone)]
pub struct AppState {
    pub metrics: Metrics,
    pub status: SharedStatus,
    pub triggers: Arc<Triggers>,
    /// `None`: the webhook endpoint answers 404 (no secret configured).
    pub webhook_secret: Option<Arc<Vec<u8>>>,
    pub reference: GitRef,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/leaderz", get(leaderz))
        .route("/status", get(status))
        .route("/webhook", post(webhook_handler))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
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

/// `/readyz`: 200 for a standby replica waiting for the leader lease (so a
/// two-replica Deployment rolls out), and for the leader once it is in sync;
/// `/leaderz` answers 200 only on the leader in sync, for a
/// load balancer that should send webhooks to the replica that acts.
///
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

/// `/leaderz`: 200 only on the replica that holds the lease and is in sync.
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

async fn status(State(s): State<AppState>) -> Response {
    let st = s.status.read().await.clone();
    axum::Json(st).into_response()
}

fn provider_label(p: Provider) -> WebhookProvider {
    match p {
        Provider::GitHub => WebhookProvider::Github,
        Provider::GitLab => WebhookProvider::Gitlab,
        Provider::Generic => WebhookProvider::Generic,
    }
}

/// Which provider a request claims to come from, for the metric label even when
/// it fails authentication.
fn claimed_provider(headers: &HeaderMap) -> WebhookProvider {
    if headers.contains_key("x-github-event") || headers.contains_key("x-hub-signature-256") {
        WebhookProvider::Github
    } else if headers.contains_key("x-gitlab-event") || headers.contains_key("x-gitlab-token") {
        WebhookProvider::Gitlab
    } else {
        WebhookProvider::Generic
    }
}

async fn webhook_handler(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(secret) = s.webhook_secret.as_ref() else {
        return (
            StatusCode::NOT_FOUND,
            "webhook disabled: start nodewave with --webhook-secret-file\n",
        )
            .into_response();
    };
    match webhook::authenticate(&headers, &body, secret) {
        Err(e) => {
            let provider = claimed_provider(&headers);
            let (code, result) = match e {
                webhook::WebhookError::BadRequest(_) => {
                    (StatusCode::BAD_REQUEST, WebhookResult::BadRequest)
                }
                _ => (StatusCode::UNAUTHORIZED, WebhookResult::BadSignature),
            };
            s.metrics.webhook_request(provider, result);
            tracing::warn!(provider = provider.as_str(), error = %e, "webhook refused");
            (code, format!("{e}\n")).into_response()
        }
        Ok(event) => {
            let provider = provider_label(event.provider);
            if webhook::is_for(&event, &s.reference) {
                s.metrics.webhook_request(provider, WebhookResult::Accepted);
                tracing::info!(
                    provider = provider.as_str(),
                    git_ref = event.git_ref.as_deref().unwrap_or(""),
                    after = event.after.as_deref().unwrap_or(""),
                    "push webhook: fetching now"
                );
                s.triggers.fetch.notify_one();
                (StatusCode::ACCEPTED, "fetching\n").into_response()
            } else {
                s.metrics.webhook_request(provider, WebhookResult::Ignored);
                tracing::debug!(
                    provider = provider.as_str(),
                    git_ref = event.git_ref.as_deref().unwrap_or(""),
                    "webhook ignored: not a push to the tracked ref"
                );
                (
                    StatusCode::OK,
                    format!("ignored: not a push to {}\n", s.reference.full_name()),
                )
                    .into_response()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use hmac::{Hmac, KeyInit, Mac};
    use sha2::Sha256;
    use tower::ServiceExt;

    fn state(secret: Option<&str>) -> AppState {
        AppState {
            metrics: Metrics::new(),
            status: SharedStatus::default(),
            triggers: Arc::new(Triggers::default()),
            webhook_secret: secret.map(|s| Arc::new(s.as_bytes().to_vec())),
            reference: GitRef::Branch("main".into()),
        }
    }

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    async fn post(
        st: AppState,
        headers: &[(&str, String)],
        body: &'static [u8],
    ) -> (StatusCode, String) {
        let mut req = Request::post("/webhook");
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = router(st)
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let code = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (code, String::from_utf8_lossy(&bytes).into_owned())
    }

    const PUSH: &[u8] =
        br#"{"ref":"refs/heads/main","after":"0123456789abcdef0123456789abcdef01234567"}"#;
    const OTHER: &[u8] =
        br#"{"ref":"refs/heads/dev","after":"0123456789abcdef0123456789abcdef01234567"}"#;

    #[tokio::test]
    async fn valid_github_push_triggers_a_fetch() {
        let st = state(Some("s3cret"));
        let triggers = st.triggers.clone();
        let metrics = st.metrics.clone();
        let (code, _) = post(
            st,
            &[
                ("x-github-event", "push".into()),
                ("x-hub-signature-256", sign("s3cret", PUSH)),
            ],
            PUSH,
        )
        .await;
        assert_eq!(code, StatusCode::ACCEPTED);
        // notify_one stores a permit: the loop would wake at once.
        tokio::time::timeout(std::time::Duration::from_secs(1), triggers.fetch.notified())
            .await
            .unwrap();
        assert!(
            metrics.encode().contains(
                r#"nodewave_webhook_requests_total{provider="github",result="accepted"} 1"#
            )
        );
    }

    #[tokio::test]
    async fn bad_or_missing_signature_is_401_and_triggers_nothing() {
        let st = state(Some("s3cret"));
        let triggers = st.triggers.clone();
        let metrics = st.metrics.clone();
        let (code, body) = post(
            st.clone(),
            &[
                ("x-github-event", "push".into()),
                ("x-hub-signature-256", sign("wrong", PUSH)),
            ],
            PUSH,
        )
        .await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{body}");
        let (code, _) = post(st, &[("x-github-event", "push".into())], PUSH).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        assert!(
            tokio::time::timeout(
                std::time::Duration::from_millis(100),
                triggers.fetch.notified()
            )
            .await
            .is_err()
        );
        assert!(metrics.encode().contains(
            r#"nodewave_webhook_requests_total{provider="github",result="bad_signature"} 2"#
        ));
    }

    #[tokio::test]
    async fn push_to_another_branch_is_ignored() {
        let st = state(Some("k"));
        let triggers = st.triggers.clone();
        let (code, body) = post(
            st,
            &[
                ("x-gitlab-event", "Push Hook".into()),
                ("x-gitlab-token", "k".into()),
            ],
            OTHER,
        )
        .await;
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("ignored"), "{body}");
        assert!(
            tokio::time::timeout(
                std::time::Duration::from_millis(100),
                triggers.fetch.notified()
            )
            .await
            .is_err()
        );
    }

    #[tokio::test]
    async fn webhook_without_secret_is_disabled() {
        let (code, _) = post(
            state(None),
            &[("x-nodewave-signature", sign("x", PUSH))],
            PUSH,
        )
        .await;
        assert_eq!(code, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn body_over_the_limit_is_refused() {
        static BIG: std::sync::LazyLock<Vec<u8>> =
            std::sync::LazyLock::new(|| vec![b' '; MAX_BODY_BYTES + 10]);
        let req = Request::post("/webhook")
            .header("x-nodewave-signature", "sha256=00")
            .body(Body::from(BIG.as_slice()))
            .unwrap();
        let resp = router(state(Some("k"))).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn readyz_waits_for_git_and_first_sync() {
        let st = state(None);
        let status = st.status.clone();
        let r = router(st.clone())
            .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        {
            let mut s = status.write().await;
            s.git_reached = true;
            s.synced_once = true;
        }
        let r = router(st.clone())
            .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let r = router(st)
            .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
}
