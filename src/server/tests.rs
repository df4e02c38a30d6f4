//! In-process tests of the router (tower `oneshot`) and of the connection
//! handling (in-memory streams on tokio's paused clock: deterministic, no
//! timing thresholds).

use std::time::Duration;

use super::*;
use axum::body::{Body, Bytes};
use axum::http::Request;
use futures::StreamExt as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::time::Instant;
use tower::ServiceExt;

fn state(secret: Option<&str>) -> AppState {
    AppState::new(
        Metrics::new(),
        SharedStatus::default(),
        Arc::new(Triggers::default()),
        GitRef::Branch("main".into()),
        secret.map(|s| Arc::new(s.as_bytes().to_vec())),
        &ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0))),
    )
}

/// The router as served on one listener, with the default limits.
fn app(st: AppState) -> Router {
    router(st, Endpoints::All, Limits::default().request_timeout)
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
    let resp = app(st)
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
        metrics
            .encode()
            .contains(r#"nodewave_webhook_requests_total{provider="github",result="accepted"} 1"#)
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
    let resp = app(state(Some("k"))).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

/// Issue 10: a captured signed webhook replayed (same delivery, same body)
/// must not trigger a second fetch.
#[tokio::test(start_paused = true)]
async fn replayed_delivery_triggers_one_fetch() {
    let st = state(Some("s3cret"));
    let triggers = st.triggers.clone();
    let metrics = st.metrics.clone();
    let headers = [
        ("x-github-event", "push".to_string()),
        (
            "x-github-delivery",
            "72d3162e-cc78-11e3-81ab-4c9367dc0958".into(),
        ),
        ("x-hub-signature-256", sign("s3cret", PUSH)),
    ];
    let (code, _) = post(st.clone(), &headers, PUSH).await;
    assert_eq!(code, StatusCode::ACCEPTED);
    within(triggers.fetch.notified()).await;
    let (code, body) = post(st, &headers, PUSH).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(body.contains("replayed"), "{body}");
    assert!(
        tokio::time::timeout(
            std::time::Duration::from_secs(3600),
            triggers.fetch.notified()
        )
        .await
        .is_err(),
        "a replay triggered a fetch"
    );
    assert!(
        metrics
            .encode()
            .contains(r#"nodewave_webhook_requests_total{provider="github",result="replayed"} 1"#)
    );
}

/// The delivery-id header is not signed: a replay under a made-up id is
/// still recognised by its signed body.
#[tokio::test(start_paused = true)]
async fn replay_under_a_new_delivery_id_is_recognised() {
    let st = state(Some("s3cret"));
    let triggers = st.triggers.clone();
    let with_id = |id: &str| {
        [
            ("x-github-event", "push".to_string()),
            ("x-github-delivery", id.to_string()),
            ("x-hub-signature-256", sign("s3cret", PUSH)),
        ]
    };
    assert_eq!(
        post(st.clone(), &with_id("a"), PUSH).await.0,
        StatusCode::ACCEPTED
    );
    within(triggers.fetch.notified()).await;
    let (code, body) = post(st.clone(), &with_id("b"), PUSH).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(body.contains("replayed"), "{body}");
    // Past the window the same delivery counts again (and is coalesced
    // like any other).
    tokio::time::advance(DEFAULT_REPLAY_WINDOW).await;
    assert_eq!(post(st, &with_id("a"), PUSH).await.0, StatusCode::ACCEPTED);
    within(triggers.fetch.notified()).await;
}

/// Generic senders may post the same body on every push: without a
/// delivery id or timestamp each is a new delivery (coalesced, not dropped).
#[tokio::test(start_paused = true)]
async fn identical_generic_bodies_without_id_are_not_replays() {
    let st = state(Some("k"));
    let metrics = st.metrics.clone();
    let body: &'static [u8] = br#"{"ref":"main"}"#;
    let h = [("x-nodewave-signature", sign("k", body))];
    for _ in 0..3 {
        assert_eq!(post(st.clone(), &h, body).await.0, StatusCode::ACCEPTED);
    }
    assert!(
        metrics
            .encode()
            .contains(r#"nodewave_webhook_requests_total{provider="generic",result="accepted"} 3"#)
    );
    // With the same X-Nodewave-Delivery, the second is a replay.
    let h = [
        ("x-nodewave-signature", sign("k", body)),
        ("x-nodewave-delivery", "job-42".to_string()),
    ];
    assert_eq!(post(st.clone(), &h, body).await.0, StatusCode::ACCEPTED);
    assert_eq!(post(st, &h, body).await.0, StatusCode::OK);
}

#[tokio::test]
async fn stale_generic_timestamp_is_refused_and_counted() {
    let st = state(Some("k"));
    let metrics = st.metrics.clone();
    let triggers = st.triggers.clone();
    let body: &'static [u8] = br#"{"ref":"main"}"#;
    let ts = "1000000000"; // 2001: far outside the tolerance
    let mut signed = ts.as_bytes().to_vec();
    signed.push(b'.');
    signed.extend_from_slice(body);
    let h = [
        ("x-nodewave-signature", sign("k", &signed)),
        ("x-nodewave-timestamp", ts.to_string()),
    ];
    let (code, text) = post(st, &h, body).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("clock"), "{text}");
    assert!(
        metrics
            .encode()
            .contains(r#"nodewave_webhook_requests_total{provider="generic",result="replayed"} 1"#)
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(100), triggers.fetch.notified())
            .await
            .is_err()
    );
}

/// Fails the test instead of hanging it (the paused clock jumps to the
/// deadline when nothing else can run).
async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(3600), f)
        .await
        .expect("timed out")
}

/// Counts the fetches the loop would run: consumes every notification as
/// soon as it is given (`Notify` keeps at most one permit, so notifications
/// are only countable when consumed one by one).
fn count_fetches(triggers: &Arc<Triggers>) -> Arc<std::sync::Mutex<Vec<Instant>>> {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (triggers, out) = (Arc::clone(triggers), Arc::clone(&seen));
    tokio::spawn(async move {
        loop {
            triggers.fetch.notified().await;
            out.lock().unwrap().push(Instant::now());
        }
    });
    seen
}

/// Waits (on the paused clock) long enough for any pending timer to fire.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

/// N webhooks within the coalescing window: one fetch at once, one at the
/// end of the window, none after.
#[tokio::test(start_paused = true)]
async fn webhook_fetches_are_coalesced() {
    let st = state(Some("k"));
    let fetches = count_fetches(&st.triggers);
    let window = DEFAULT_FETCH_COALESCE_WINDOW;
    let started = Instant::now();
    let mut answers = Vec::new();
    for n in 0..20 {
        // Distinct deliveries (a burst of pushes), 100 ms apart.
        let body: &'static [u8] = Box::leak(
            format!(r#"{{"ref":"refs/heads/main","after":"{n:040}"}}"#)
                .into_bytes()
                .into_boxed_slice(),
        );
        let h = [
            ("x-github-event", "push".to_string()),
            ("x-hub-signature-256", sign("k", body)),
        ];
        let (code, text) = post(st.clone(), &h, body).await;
        assert_eq!(code, StatusCode::ACCEPTED, "{text}");
        answers.push(text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    settle().await;
    assert_eq!(answers[0], "fetching\n");
    assert!(
        answers[1..].iter().all(|a| a.contains("coalesced")),
        "{answers:?}"
    );
    let at: Vec<Duration> = fetches
        .lock()
        .unwrap()
        .iter()
        .map(|t| t.duration_since(started))
        .collect();
    assert_eq!(at, vec![Duration::ZERO, window], "fetch times");
}

#[tokio::test(start_paused = true)]
async fn a_request_body_that_never_completes_is_answered_408() {
    let limit = Duration::from_secs(30);
    let trickle = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"{"))])
        .chain(futures::stream::pending());
    let req = Request::post("/webhook")
        .header("x-nodewave-signature", "sha256=00")
        .body(Body::from_stream(trickle))
        .unwrap();
    let started = Instant::now();
    let resp = router(state(Some("k")), Endpoints::All, limit)
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(started.elapsed(), limit);
}

#[tokio::test]
async fn split_listeners_serve_disjoint_endpoints() {
    let get = |endpoints, path: &'static str| async move {
        router(state(Some("k")), endpoints, Duration::from_secs(30))
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap()
            .status()
    };
    let post_hook = |endpoints| async move {
        router(state(Some("k")), endpoints, Duration::from_secs(30))
            .oneshot(Request::post("/webhook").body(Body::empty()).unwrap())
            .await
            .unwrap()
            .status()
    };
    for path in ["/metrics", "/healthz", "/status"] {
        assert_eq!(
            get(Endpoints::Operations, path).await,
            StatusCode::OK,
            "{path}"
        );
        assert_eq!(get(Endpoints::All, path).await, StatusCode::OK, "{path}");
        assert_eq!(
            get(Endpoints::Webhook, path).await,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    assert_eq!(
        get(Endpoints::Webhook, "/readyz").await,
        StatusCode::NOT_FOUND
    );
    // No signature: 401 where /webhook is served, 404 where it is not.
    assert_eq!(
        post_hook(Endpoints::Webhook).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(post_hook(Endpoints::All).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        post_hook(Endpoints::Operations).await,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn readyz_waits_for_git_and_first_sync() {
    let st = state(None);
    let status = st.status.clone();
    let r = app(st.clone())
        .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    {
        let mut s = status.write().await;
        s.git_reached = true;
        s.synced_once = true;
    }
    let r = app(st.clone())
        .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = app(st)
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// `Server` on real loopback sockets: with `metrics_listen` set, the two
/// listeners serve disjoint endpoints; shutdown ends `serve`.
#[tokio::test]
async fn server_binds_two_listeners_and_stops() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut cfg = ServerConfig::new(loopback);
    cfg.metrics_listen = Some(loopback);
    let server = Server::bind(&cfg, state(Some("k"))).await.unwrap();
    let (Some(main), Some(ops)) = server.local_addrs() else {
        panic!("both listeners are bound");
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async move {
        let _ = stopped.await;
    }));
    let request = |addr: SocketAddr, method: &'static str, path: &'static str| async move {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: nodewave\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        c.write_all(head.as_bytes()).await.unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        out.split(' ').nth(1).unwrap_or_default().to_owned()
    };
    assert_eq!(request(ops, "GET", "/metrics").await, "200");
    assert_eq!(request(ops, "GET", "/healthz").await, "200");
    assert_eq!(request(ops, "POST", "/webhook").await, "404");
    assert_eq!(request(main, "GET", "/metrics").await, "404");
    assert_eq!(request(main, "GET", "/status").await, "404");
    assert_eq!(request(main, "POST", "/webhook").await, "401");
    stop.send(()).unwrap();
    within(serving).await.unwrap();
    // A port taken is an error naming the address.
    let taken = TcpListener::bind(loopback).await.unwrap();
    let addr = taken.local_addr().unwrap();
    let Err(e) = Server::bind(&ServerConfig::new(addr), state(None)).await else {
        panic!("bound a port in use");
    };
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
}
