//! Push-webhook authentication and parsing (pure: headers and body in, event
//! or error out; the HTTP server wires it up).
//!
//! | provider | detected by | authentication |
//! | --- | --- | --- |
//! | GitHub (and Gitea/Forgejo, which send the same headers) | `X-GitHub-Event` or `X-Hub-Signature-256` | `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>` |
//! | GitLab | `X-Gitlab-Event` or `X-Gitlab-Token` | `X-Gitlab-Token` equals the secret |
//! | generic (scripts, CI) | `X-Nodewave-Signature` | `X-Nodewave-Signature: sha256=<hex HMAC-SHA256(secret, body)>` |
//!
//! The body must be JSON with at least `ref` (e.g. `refs/heads/main`) and
//! optionally `after` (the new commit); GitHub's and GitLab's push payloads
//! have both. GitHub webhooks must use content type `application/json`.
//!
//! Authentication happens before the body is parsed: unauthenticated input is
//! never interpreted. Comparisons are constant-time. An empty secret never
//! authenticates anything (an HMAC with an empty key can be forged by anyone).
//!
//! The server should cap the body size before calling [`authenticate`];
//! 1 MiB is plenty (GitHub caps payloads at 25 MiB, but push payloads are
//! tiny unless a push has thousands of commits, and the ref is all we need).
//!
//! A webhook only triggers an immediate fetch: the commit to deploy is always
//! the one fetched from the repository, never `after` from the request.
//!
//! Replays: [`replay_keys`] names what identifies a delivery (the providers'
//! delivery-id headers, and for HMAC-signed requests the signed content,
//! because a delivery-id header is not covered by the signature and can be
//! changed by whoever replays a captured request). The server remembers them
//! for a window. The generic provider may bind a time into its signature
//! (`X-Nodewave-Timestamp`, HMAC over `<timestamp>.<body>`); such a request
//! older than [`TIMESTAMP_TOLERANCE`] is refused, which bounds replays of it
//! to the window.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};

use super::git::GitRef;

type HmacSha256 = Hmac<Sha256>;

/// Recommended maximum webhook body size, for the server.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// How far `X-Nodewave-Timestamp` may be from nodewave's clock (either way).
/// The server's replay window must be at least this long.
pub const TIMESTAMP_TOLERANCE: Duration = Duration::from_mins(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    GitHub,
    GitLab,
    Generic,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::GitHub => "github",
            Provider::GitLab => "gitlab",
            Provider::Generic => "generic",
        }
    }
}

/// What kind of event was delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A push of a branch or tag.
    Push,
    /// GitHub's `ping` sent when a webhook is created.
    Ping,
    /// Any other event (issues, merge requests, ...); ignored.
    Other(String),
}

/// An authenticated webhook delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushEvent {
    pub provider: Provider,
    pub kind: EventKind,
    /// Full ref name, e.g. `refs/heads/main`; `None` for pings and non-push
    /// events.
    pub git_ref: Option<String>,
    /// Commit the ref points to after the push (all zeros when the ref was
    /// deleted).
    pub after: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error(
        "the request has no webhook signature (X-Hub-Signature-256, X-Gitlab-Token or X-Nodewave-Signature); configure the webhook secret at the Git host"
    )]
    MissingSignature,
    #[error("the webhook signature or token does not match the configured secret")]
    BadSignature,
    #[error("bad webhook request: {0}")]
    BadRequest(String),
    #[error(
        "X-Nodewave-Timestamp is {skew_secs} s away from nodewave's clock, more than the {tolerance_secs} s allowed: a replayed request, or the sender's clock is wrong; nothing was fetched"
    )]
    StaleTimestamp { skew_secs: u64, tolerance_secs: u64 },
}

impl WebhookError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            WebhookError::MissingSignature | WebhookError::BadSignature => "bad_signature",
            WebhookError::BadRequest(_) => "bad_request",
            WebhookError::StaleTimestamp { .. } => "replayed",
        }
    }
}

const GITHUB_EVENT: &str = "x-github-event";
const GITHUB_SIGNATURE: &str = "x-hub-signature-256";
const GITLAB_EVENT: &str = "x-gitlab-event";
const GITLAB_TOKEN: &str = "x-gitlab-token";
const NODEWAVE_SIGNATURE: &str = "x-nodewave-signature";
/// Generic provider: optional Unix time (seconds) bound into the signature.
pub const NODEWAVE_TIMESTAMP: &str = "x-nodewave-timestamp";

/// Headers naming one delivery, per provider. GitHub (and Gitea/Forgejo,
/// which send `X-GitHub-Delivery` too) keep the id on a redelivery; GitLab's
/// `Idempotency-Key` (17.4+) is kept on retries, `X-Gitlab-Event-UUID` is
/// shared by every hook fired for one event and `X-Gitlab-Webhook-UUID`
/// names one request. Any of them seen before marks a replay.
const GITHUB_DELIVERY_HEADERS: &[&str] = &["x-github-delivery"];
const GITLAB_DELIVERY_HEADERS: &[&str] = &[
    "idempotency-key",
    "x-gitlab-event-uuid",
    "x-gitlab-webhook-uuid",
];
/// Generic provider: the sender's unique id of a delivery (keep it on retries).
pub const NODEWAVE_DELIVERY: &str = "x-nodewave-delivery";
const GENERIC_DELIVERY_HEADERS: &[&str] = &[NODEWAVE_DELIVERY];

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, WebhookError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| WebhookError::BadRequest(format!("header {name} is not ASCII"))),
    }
}

/// Detects the provider, checks the signature/token against `secret`, then
/// parses the body. [`authenticate_at`] with the system clock.
pub fn authenticate(
    headers: &HeaderMap,
    body: &[u8],
    secret: &[u8],
) -> Result<PushEvent, WebhookError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    authenticate_at(headers, body, secret, now)
}

/// [`authenticate`] at `now_unix` (seconds), the time an
/// `X-Nodewave-Timestamp` is compared with.
pub fn authenticate_at(
    headers: &HeaderMap,
    body: &[u8],
    secret: &[u8],
    now_unix: u64,
) -> Result<PushEvent, WebhookError> {
    let provider = if headers.contains_key(GITHUB_EVENT) || headers.contains_key(GITHUB_SIGNATURE) {
        Provider::GitHub
    } else if headers.contains_key(GITLAB_EVENT) || headers.contains_key(GITLAB_TOKEN) {
        Provider::GitLab
    } else if headers.contains_key(NODEWAVE_SIGNATURE) {
        Provider::Generic
    } else {
        return Err(WebhookError::MissingSignature);
    };

    match provider {
        Provider::GitHub => {
            let sig = header(headers, GITHUB_SIGNATURE)?.ok_or(WebhookError::MissingSignature)?;
            verify_hmac(sig, body, secret)?;
        }
        Provider::Generic => {
            let sig = header(headers, NODEWAVE_SIGNATURE)?.ok_or(WebhookError::MissingSignature)?;
            match header(headers, NODEWAVE_TIMESTAMP)? {
                None => verify_hmac(sig, body, secret)?,
                Some(ts) => {
                    let sent = parse_timestamp(ts)?;
                    verify_hmac(sig, &timestamped(ts, body), secret)?;
                    // Checked after the signature: an unauthenticated time
                    // says nothing.
                    let skew_secs = now_unix.abs_diff(sent);
                    if skew_secs > TIMESTAMP_TOLERANCE.as_secs() {
                        return Err(WebhookError::StaleTimestamp {
                            skew_secs,
                            tolerance_secs: TIMESTAMP_TOLERANCE.as_secs(),
                        });
                    }
                }
            }
        }
        Provider::GitLab => {
            let token = header(headers, GITLAB_TOKEN)?.ok_or(WebhookError::MissingSignature)?;
            if secret.is_empty() || !constant_time_eq(token.as_bytes(), secret) {
                return Err(WebhookError::BadSignature);
            }
        }
    }

    let kind = match provider {
        Provider::GitHub => match header(headers, GITHUB_EVENT)? {
            None | Some("push") => EventKind::Push,
            Some("ping") => EventKind::Ping,
            Some(other) => EventKind::Other(other.to_owned()),
        },
        Provider::GitLab => match header(headers, GITLAB_EVENT)? {
            // System hooks carry push payloads too.
            None | Some("Push Hook" | "Tag Push Hook" | "System Hook") => EventKind::Push,
            Some(other) => EventKind::Other(other.to_owned()),
        },
        Provider::Generic => EventKind::Push,
    };
    if kind != EventKind::Push {
        return Ok(PushEvent {
            provider,
            kind,
            git_ref: None,
            after: None,
        });
    }
    let (git_ref, after) = parse_body(body)?;
    Ok(PushEvent {
        provider,
        kind,
        git_ref,
        after,
    })
}

fn parse_timestamp(value: &str) -> Result<u64, WebhookError> {
    // Digits only (no sign, no fraction), at most 20 so it fits a u64.
    if value.is_empty() || value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(WebhookError::BadRequest(format!(
            "{NODEWAVE_TIMESTAMP} must be a Unix time in seconds, not {:?}",
            value.chars().take(40).collect::<String>()
        )));
    }
    value.parse().map_err(|_| {
        WebhookError::BadRequest(format!("{NODEWAVE_TIMESTAMP} {value} is out of range"))
    })
}

/// What a timestamped generic request signs: `<timestamp>.<body>`.
fn timestamped(ts: &str, body: &[u8]) -> Vec<u8> {
    let mut signed = Vec::with_capacity(ts.len() + 1 + body.len());
    signed.extend_from_slice(ts.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    signed
}

/// A fixed-size digest identifying a delivery (so remembering one costs the
/// same whatever the sender put in its headers).
pub type ReplayKey = [u8; 32];

fn replay_key(parts: &[&[u8]]) -> ReplayKey {
    let mut h = Sha256::new();
    for part in parts {
        // Length-prefixed so that no two different part lists collide.
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// What identifies an authenticated delivery, for replay detection: one key
/// per delivery-id header present, plus for HMAC-signed content that is
/// unique per delivery the signed content itself (GitHub push bodies carry
/// the before/after commits and `pushed_at`; a timestamped generic request
/// signs its time). A generic request without timestamp has only its
/// `X-Nodewave-Delivery` (if any): identical bodies are legitimate there
/// (`{"ref":"main"}` on every push). GitLab's token is the same in every
/// request, so its content proves nothing and only the ids count.
///
/// Call only after [`authenticate`] succeeded for `provider`.
pub fn replay_keys(provider: Provider, headers: &HeaderMap, body: &[u8]) -> Vec<ReplayKey> {
    let tag = provider.as_str().as_bytes();
    let ids = match provider {
        Provider::GitHub => GITHUB_DELIVERY_HEADERS,
        Provider::GitLab => GITLAB_DELIVERY_HEADERS,
        Provider::Generic => GENERIC_DELIVERY_HEADERS,
    };
    let mut keys: Vec<ReplayKey> = ids
        .iter()
        .filter_map(|name| {
            let value = headers.get(*name)?.as_bytes().trim_ascii();
            (!value.is_empty()).then(|| replay_key(&[tag, b"id", name.as_bytes(), value]))
        })
        .collect();
    match provider {
        Provider::GitHub => keys.push(replay_key(&[tag, b"body", body])),
        Provider::Generic => {
            if let Some(ts) = headers.get(NODEWAVE_TIMESTAMP) {
                keys.push(replay_key(&[
                    tag,
                    b"signed",
                    ts.as_bytes().trim_ascii(),
                    body,
                ]));
            }
        }
        Provider::GitLab => {}
    }
    keys
}

/// The delivery id a provider sent (for logs), if any.
pub fn delivery_id(provider: Provider, headers: &HeaderMap) -> Option<&str> {
    let ids = match provider {
        Provider::GitHub => GITHUB_DELIVERY_HEADERS,
        Provider::GitLab => GITLAB_DELIVERY_HEADERS,
        Provider::Generic => GENERIC_DELIVERY_HEADERS,
    };
    ids.iter()
        .find_map(|name| headers.get(*name)?.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Checks `sha256=<hex>` against HMAC-SHA256(secret, body).
fn verify_hmac(signature: &str, body: &[u8], secret: &[u8]) -> Result<(), WebhookError> {
    if secret.is_empty() {
        tracing::warn!("webhook secret is empty; refusing every webhook");
        return Err(WebhookError::BadSignature);
    }
    let hex_sig = signature
        .strip_prefix("sha256=")
        .ok_or(WebhookError::BadSignature)?;
    let expected = hex::decode(hex_sig).map_err(|_| WebhookError::BadSignature)?;
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| WebhookError::BadSignature)?;
    mac.update(body);
    mac.verify_slice(&expected)
        .map_err(|_| WebhookError::BadSignature)
}

/// Constant-time equality that also hides the length: both sides are reduced
/// to HMAC tags under a fixed key, and the tags are compared with the
/// constant-time `verify_slice`.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let tag = |data: &[u8]| {
        HmacSha256::new_from_slice(b"nodewave token comparison").map(|mut m| {
            m.update(data);
            m
        })
    };
    match (tag(a), tag(b)) {
        (Ok(ma), Ok(mb)) => ma.verify_slice(&mb.finalize().into_bytes()).is_ok(),
        _ => false,
    }
}

fn parse_body(body: &[u8]) -> Result<(Option<String>, Option<String>), WebhookError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        let hint = if body.starts_with(b"payload=") {
            " (the webhook sends form data; set its content type to application/json)"
        } else {
            ""
        };
        WebhookError::BadRequest(format!("the body is not valid JSON: {e}{hint}"))
    })?;
    let object = value
        .as_object()
        .ok_or_else(|| WebhookError::BadRequest("the body must be a JSON object".to_owned()))?;
    let string_field = |name: &str| match object.get(name) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(WebhookError::BadRequest(format!(
            "field {name:?} must be a string"
        ))),
    };
    Ok((string_field("ref")?, string_field("after")?))
}

/// Whether an event concerns the tracked ref. Pings, non-push events and
/// events without a ref are not (they return `false`, and the server should
/// answer 2xx without fetching). The ref must be the full name
/// (`refs/heads/main`, `refs/tags/v1`); a short name (`main`) is accepted
/// only from the generic provider, where it is compared with the tracked
/// name whatever its kind.
pub fn is_for(event: &PushEvent, reference: &GitRef) -> bool {
    if event.kind != EventKind::Push {
        return false;
    }
    let Some(git_ref) = event.git_ref.as_deref() else {
        return false;
    };
    if git_ref == reference.full_name() {
        return true;
    }
    event.provider == Provider::Generic
        && !git_ref.starts_with("refs/")
        && git_ref == reference.name()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const SECRET: &[u8] = b"It's a Secret to Everybody";
    const PUSH: &[u8] = br#"{"ref":"refs/heads/main","after":"0123456789abcdef0123456789abcdef01234567","repository":{"full_name":"o/r"}}"#;

    fn sign(body: &[u8], secret: &[u8]) -> String {
        let mut mac = HmacSha256::new_from_slice(secret).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn main() -> GitRef {
        GitRef::Branch("main".into())
    }

    #[test]
    fn github_test_vector() {
        // From GitHub's "Validating webhook deliveries" documentation.
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(verify_hmac(sig, b"Hello, World!", SECRET).is_ok());
        assert_eq!(sign(b"Hello, World!", SECRET), sig);
    }

    #[test]
    fn github_valid_push() {
        let h = headers(&[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &sign(PUSH, SECRET)),
        ]);
        let ev = authenticate(&h, PUSH, SECRET).unwrap();
        assert_eq!(ev.provider, Provider::GitHub);
        assert_eq!(ev.provider.as_str(), "github");
        assert_eq!(ev.git_ref.as_deref(), Some("refs/heads/main"));
        assert_eq!(
            ev.after.as_deref(),
            Some("0123456789abcdef0123456789abcdef01234567")
        );
        assert!(is_for(&ev, &main()));
        assert!(!is_for(&ev, &GitRef::Branch("dev".into())));
        assert!(!is_for(&ev, &GitRef::Tag("main".into())));
    }

    #[test]
    fn github_bad_and_missing_signature() {
        let wrong = headers(&[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &sign(PUSH, b"other secret")),
        ]);
        let err = authenticate(&wrong, PUSH, SECRET).unwrap_err();
        assert_eq!(err, WebhookError::BadSignature);
        assert_eq!(err.metric_label(), "bad_signature");

        // Tampered body.
        let h = headers(&[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &sign(PUSH, SECRET)),
        ]);
        let tampered =
            br#"{"ref":"refs/heads/main","after":"ffffffffffffffffffffffffffffffffffffffff"}"#;
        assert_eq!(
            authenticate(&h, tampered, SECRET).unwrap_err(),
            WebhookError::BadSignature
        );

        let missing = headers(&[("X-GitHub-Event", "push")]);
        assert_eq!(
            authenticate(&missing, PUSH, SECRET).unwrap_err(),
            WebhookError::MissingSignature
        );
        assert_eq!(
            authenticate(&HeaderMap::new(), PUSH, SECRET).unwrap_err(),
            WebhookError::MissingSignature
        );
        for bad in ["sha1=abc", "sha256=nothex", "sha256=", "garbage"] {
            let h = headers(&[("X-GitHub-Event", "push"), ("X-Hub-Signature-256", bad)]);
            assert_eq!(
                authenticate(&h, PUSH, SECRET).unwrap_err(),
                WebhookError::BadSignature,
                "{bad}"
            );
        }
    }

    #[test]
    fn empty_secret_never_authenticates() {
        let h = headers(&[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &sign(PUSH, b"")),
        ]);
        assert_eq!(
            authenticate(&h, PUSH, b"").unwrap_err(),
            WebhookError::BadSignature
        );
        let h = headers(&[("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", "")]);
        assert_eq!(
            authenticate(&h, PUSH, b"").unwrap_err(),
            WebhookError::BadSignature
        );
    }

    #[test]
    fn github_ping_is_ignored() {
        let body = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#;
        let h = headers(&[
            ("X-GitHub-Event", "ping"),
            ("X-Hub-Signature-256", &sign(body, SECRET)),
        ]);
        let ev = authenticate(&h, body, SECRET).unwrap();
        assert_eq!(ev.kind, EventKind::Ping);
        assert_eq!(ev.git_ref, None);
        assert!(!is_for(&ev, &main()));
    }

    #[test]
    fn other_events_are_ignored() {
        let body = br#"{"ref":"refs/heads/main","action":"opened"}"#;
        let h = headers(&[
            ("X-GitHub-Event", "pull_request"),
            ("X-Hub-Signature-256", &sign(body, SECRET)),
        ]);
        let ev = authenticate(&h, body, SECRET).unwrap();
        assert_eq!(ev.kind, EventKind::Other("pull_request".into()));
        assert!(!is_for(&ev, &main()));
    }

    #[test]
    fn gitlab_token() {
        let ok = headers(&[
            ("X-Gitlab-Event", "Push Hook"),
            ("X-Gitlab-Token", "It's a Secret to Everybody"),
        ]);
        let ev = authenticate(&ok, PUSH, SECRET).unwrap();
        assert_eq!(ev.provider, Provider::GitLab);
        assert!(is_for(&ev, &main()));

        let wrong = headers(&[("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", "nope")]);
        assert_eq!(
            authenticate(&wrong, PUSH, SECRET).unwrap_err(),
            WebhookError::BadSignature
        );
        let prefix = headers(&[
            ("X-Gitlab-Event", "Push Hook"),
            ("X-Gitlab-Token", "It's a Secret"),
        ]);
        assert_eq!(
            authenticate(&prefix, PUSH, SECRET).unwrap_err(),
            WebhookError::BadSignature
        );
        let missing = headers(&[("X-Gitlab-Event", "Push Hook")]);
        assert_eq!(
            authenticate(&missing, PUSH, SECRET).unwrap_err(),
            WebhookError::MissingSignature
        );
    }

    #[test]
    fn gitlab_tag_push() {
        let body = br#"{"object_kind":"tag_push","ref":"refs/tags/v1.2.0","after":"abc"}"#;
        let h = headers(&[
            ("X-Gitlab-Event", "Tag Push Hook"),
            ("X-Gitlab-Token", "It's a Secret to Everybody"),
        ]);
        let ev = authenticate(&h, body, SECRET).unwrap();
        assert!(is_for(&ev, &GitRef::Tag("v1.2.0".into())));
        assert!(!is_for(&ev, &GitRef::Branch("v1.2.0".into())));
        assert!(!is_for(&ev, &main()));
    }

    #[test]
    fn generic_hmac() {
        let body = br#"{"ref":"main"}"#;
        let h = headers(&[("X-Nodewave-Signature", &sign(body, SECRET))]);
        let ev = authenticate(&h, body, SECRET).unwrap();
        assert_eq!(ev.provider, Provider::Generic);
        assert_eq!(ev.after, None);
        // Short names are accepted from the generic provider only.
        assert!(is_for(&ev, &main()));

        let h = headers(&[("X-Nodewave-Signature", &sign(body, b"wrong"))]);
        assert_eq!(
            authenticate(&h, body, SECRET).unwrap_err(),
            WebhookError::BadSignature
        );

        // GitHub-shaped body.
        let h = headers(&[("X-Nodewave-Signature", &sign(PUSH, SECRET))]);
        assert!(is_for(&authenticate(&h, PUSH, SECRET).unwrap(), &main()));
    }

    #[test]
    fn short_ref_from_github_is_not_trusted() {
        let body = br#"{"ref":"main"}"#;
        let h = headers(&[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &sign(body, SECRET)),
        ]);
        let ev = authenticate(&h, body, SECRET).unwrap();
        assert!(!is_for(&ev, &main()));
    }

    #[test]
    fn malformed_bodies_are_bad_requests() {
        for body in [
            &b"not json"[..],
            b"[1,2]",
            br#"{"ref": 5}"#,
            b"payload=%7B%7D",
        ] {
            let h = headers(&[
                ("X-GitHub-Event", "push"),
                ("X-Hub-Signature-256", &sign(body, SECRET)),
            ]);
            let err = authenticate(&h, body, SECRET).unwrap_err();
            assert!(
                matches!(err, WebhookError::BadRequest(_)),
                "{body:?}: {err}"
            );
            assert_eq!(err.metric_label(), "bad_request");
        }
        // A push without a ref authenticates but concerns nothing.
        let body = b"{}";
        let h = headers(&[("X-Nodewave-Signature", &sign(body, SECRET))]);
        let ev = authenticate(&h, body, SECRET).unwrap();
        assert!(!is_for(&ev, &main()));
    }

    #[test]
    fn unauthenticated_bodies_are_not_parsed() {
        // Bad signature wins over a malformed body.
        let h = headers(&[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", "sha256=00"),
        ]);
        assert_eq!(
            authenticate(&h, b"not json", SECRET).unwrap_err(),
            WebhookError::BadSignature
        );
    }

    fn sign_at(ts: &str, body: &[u8], secret: &[u8]) -> String {
        sign(&timestamped(ts, body), secret)
    }

    #[test]
    fn generic_timestamp_is_signed_and_bounded() {
        let body = br#"{"ref":"main"}"#;
        let now = 1_750_000_000_u64;
        let ts = now.to_string();
        let h = headers(&[
            ("X-Nodewave-Signature", &sign_at(&ts, body, SECRET)),
            ("X-Nodewave-Timestamp", &ts),
        ]);
        assert!(authenticate_at(&h, body, SECRET, now).is_ok());
        // Within the tolerance either way (clocks differ a little).
        let tol = TIMESTAMP_TOLERANCE.as_secs();
        assert!(authenticate_at(&h, body, SECRET, now + tol).is_ok());
        assert!(authenticate_at(&h, body, SECRET, now - tol).is_ok());
        for at in [now + tol + 1, now - tol - 1, 0, u64::MAX] {
            let err = authenticate_at(&h, body, SECRET, at).unwrap_err();
            assert!(
                matches!(err, WebhookError::StaleTimestamp { .. }),
                "{at}: {err}"
            );
            assert_eq!(err.metric_label(), "replayed");
            assert!(err.to_string().contains("clock"), "{err}");
        }
        // The time is bound into the signature: changing it, or signing the
        // body alone, fails.
        let moved = headers(&[
            ("X-Nodewave-Signature", &sign_at(&ts, body, SECRET)),
            ("X-Nodewave-Timestamp", &(now + 1).to_string()),
        ]);
        assert_eq!(
            authenticate_at(&moved, body, SECRET, now).unwrap_err(),
            WebhookError::BadSignature
        );
        let body_only = headers(&[
            ("X-Nodewave-Signature", &sign(body, SECRET)),
            ("X-Nodewave-Timestamp", &ts),
        ]);
        assert_eq!(
            authenticate_at(&body_only, body, SECRET, now).unwrap_err(),
            WebhookError::BadSignature
        );
        // A stale time with a wrong signature is a bad signature, not stale.
        let forged = headers(&[
            ("X-Nodewave-Signature", &sign_at("1", body, b"wrong")),
            ("X-Nodewave-Timestamp", "1"),
        ]);
        assert_eq!(
            authenticate_at(&forged, body, SECRET, now).unwrap_err(),
            WebhookError::BadSignature
        );
        for bad in ["", "-5", "1.5", "12a", "99999999999999999999999", " "] {
            let h = headers(&[
                ("X-Nodewave-Signature", &sign_at(bad, body, SECRET)),
                ("X-Nodewave-Timestamp", bad),
            ]);
            let err = authenticate_at(&h, body, SECRET, now).unwrap_err();
            assert!(matches!(err, WebhookError::BadRequest(_)), "{bad:?}: {err}");
        }
        // The timestamp header means nothing to the other providers.
        let h = headers(&[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &sign(PUSH, SECRET)),
            ("X-Nodewave-Timestamp", "1"),
        ]);
        assert!(authenticate_at(&h, PUSH, SECRET, now).is_ok());
    }

    #[test]
    fn replay_keys_name_deliveries() {
        let gh = |delivery: &str| {
            headers(&[("X-GitHub-Event", "push"), ("X-GitHub-Delivery", delivery)])
        };
        let a = replay_keys(Provider::GitHub, &gh("d-1"), PUSH);
        assert_eq!(a.len(), 2, "delivery id and signed body");
        assert_eq!(a, replay_keys(Provider::GitHub, &gh("d-1"), PUSH));
        // A replay with a made-up delivery id still shares the body key.
        let b = replay_keys(Provider::GitHub, &gh("d-2"), PUSH);
        assert_ne!(a[0], b[0]);
        assert_eq!(a[1], b[1]);
        // Another push (another body) under a new id shares nothing.
        let other = replay_keys(Provider::GitHub, &gh("d-3"), b"{}");
        assert!(other.iter().all(|k| !a.contains(k)));
        assert_eq!(delivery_id(Provider::GitHub, &gh(" d-1 ")), Some("d-1"));
        assert_eq!(delivery_id(Provider::GitHub, &gh("")), None);

        // GitLab: only ids count (the token is the same in every request).
        let gl = headers(&[
            ("X-Gitlab-Event", "Push Hook"),
            ("Idempotency-Key", "k-1"),
            ("X-Gitlab-Event-UUID", "e-1"),
            ("X-Gitlab-Webhook-UUID", "w-1"),
        ]);
        let keys = replay_keys(Provider::GitLab, &gl, PUSH);
        assert_eq!(keys.len(), 3);
        assert!(replay_keys(Provider::GitLab, &HeaderMap::new(), PUSH).is_empty());
        assert_eq!(delivery_id(Provider::GitLab, &gl), Some("k-1"));
        let retry = headers(&[("Idempotency-Key", "k-1"), ("X-Gitlab-Webhook-UUID", "w-2")]);
        let retry_keys = replay_keys(Provider::GitLab, &retry, PUSH);
        assert!(retry_keys.iter().any(|k| keys.contains(k)));

        // Generic: identical bodies without a timestamp are legitimate, so
        // only the delivery id counts; a timestamped request is its own key.
        let body = br#"{"ref":"main"}"#;
        assert!(replay_keys(Provider::Generic, &HeaderMap::new(), body).is_empty());
        let with_id = headers(&[("X-Nodewave-Delivery", "g-1")]);
        assert_eq!(replay_keys(Provider::Generic, &with_id, body).len(), 1);
        let t1 = headers(&[("X-Nodewave-Timestamp", "100")]);
        let t2 = headers(&[("X-Nodewave-Timestamp", "101")]);
        let k1 = replay_keys(Provider::Generic, &t1, body);
        assert_eq!(k1.len(), 1);
        assert_ne!(k1, replay_keys(Provider::Generic, &t2, body));

        // The same id from two providers is two deliveries.
        let same = headers(&[("X-GitHub-Delivery", "x"), ("X-Nodewave-Delivery", "x")]);
        let g = replay_keys(Provider::GitHub, &same, b"");
        let n = replay_keys(Provider::Generic, &same, b"");
        assert!(n.iter().all(|k| !g.contains(k)));
    }

    #[test]
    fn constant_time_eq_works() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(constant_time_eq(b"", b""));
    }
}
