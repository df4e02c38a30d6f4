//! `POST /webhook`: authentication (in [`crate::source::webhook`]), replay
//! detection ([`super::replay`]) and coalesced fetch triggering
//! ([`super::coalesce`]); this module holds their shared state and the timer
//! of a scheduled fetch.
//!
//! | request | answer | fetch | `result` label |
//! | --- | --- | --- | --- |
//! | webhook disabled (no secret) | 404 | – | – |
//! | bad or missing signature/token | 401 | – | `bad_signature` |
//! | malformed | 400 | – | `bad_request` |
//! | generic with a stale `X-Nodewave-Timestamp` | 400 | – | `replayed` |
//! | a delivery already handled within the replay window | 200 | – | `replayed` |
//! | other branch, ping, other event | 200 | – | `ignored` |
//! | push to the tracked ref | 202 | at once, or coalesced into one at the end of the window | `accepted` |
//!
//! A replay answers 200, not 409: the sender did nothing wrong by
//! redelivering (GitHub's "Redeliver" button, GitLab's retries), and a 2xx
//! keeps its delivery log green; the body says it was a replay.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use super::AppState;
use super::coalesce::{Coalescer, Decision};
use super::replay::{self, ReplayCache};
use crate::metrics::{WebhookProvider, WebhookResult};
use crate::service::Triggers;
use crate::source::webhook::{self, Provider, WebhookError};

/// Replay and coalescing state shared by every request.
#[derive(Debug)]
pub struct WebhookGuard {
    /// `None`: the webhook endpoint answers 404 (no secret configured).
    secret: Option<Arc<Vec<u8>>>,
    replays: Mutex<ReplayCache>,
    coalescer: Mutex<Coalescer>,
    /// Refusals and replays are logged at most once per [`LOG_EVERY`]: a
    /// flood of them must not become a flood of log lines (the metric
    /// counts every one).
    refused_log: Mutex<LogBudget>,
    replayed_log: Mutex<LogBudget>,
}

const LOG_EVERY: Duration = Duration::from_secs(10);

/// One log line per `every` for a kind of event; the events in between are
/// counted and reported with the next line.
#[derive(Debug)]
struct LogBudget {
    every: Duration,
    next: Option<Instant>,
    suppressed: u64,
}

impl LogBudget {
    fn new(every: Duration) -> Self {
        Self {
            every,
            next: None,
            suppressed: 0,
        }
    }

    /// `Some(events suppressed since the last line)` when this one may be
    /// logged.
    fn take(&mut self, now: Instant) -> Option<u64> {
        if self.next.is_some_and(|next| now < next) {
            self.suppressed += 1;
            return None;
        }
        self.next = Some(now + self.every);
        Some(std::mem::take(&mut self.suppressed))
    }
}

fn take(budget: &Mutex<LogBudget>) -> Option<u64> {
    budget
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take(Instant::now())
}

impl WebhookGuard {
    pub fn new(
        secret: Option<Arc<Vec<u8>>>,
        replay_window: Duration,
        coalesce_window: Duration,
    ) -> Self {
        Self {
            secret,
            replays: Mutex::new(ReplayCache::new(replay_window, replay::CAPACITY)),
            coalescer: Mutex::new(Coalescer::new(coalesce_window)),
            refused_log: Mutex::new(LogBudget::new(LOG_EVERY)),
            replayed_log: Mutex::new(LogBudget::new(LOG_EVERY)),
        }
    }

    pub fn enabled(&self) -> bool {
        self.secret.is_some()
    }

    /// Whether this authenticated delivery was seen before (recording it if
    /// not). The lock is never held across an await; a panic while holding
    /// it cannot leave the cache inconsistent, so poisoning is ignored.
    fn is_replay(&self, keys: &[webhook::ReplayKey]) -> bool {
        self.replays
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .check_and_record(keys, Instant::now())
    }

    /// Triggers a fetch now or schedules the one coalesced fetch; returns
    /// what was decided, for the answer.
    fn trigger_fetch(self: &Arc<Self>, triggers: &Arc<Triggers>) -> Decision {
        let decision = self
            .coalescer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .request(Instant::now());
        match decision {
            Decision::FetchNow => triggers.fetch.notify_one(),
            Decision::ScheduleAt(at) => {
                // At most one such timer exists: the coalescer schedules
                // again only after `fire_scheduled`.
                let guard = Arc::clone(self);
                let triggers = Arc::clone(triggers);
                tokio::spawn(async move {
                    tokio::time::sleep_until(at).await;
                    guard
                        .coalescer
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .fire_scheduled(Instant::now());
                    triggers.fetch.notify_one();
                });
            }
            Decision::Coalesced(_) => {}
        }
        decision
    }
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

/// A delivery id for logs: authenticated, but capped so a sender cannot fill
/// the log line.
fn short_id(id: Option<&str>) -> String {
    id.unwrap_or("").chars().take(80).collect()
}

pub(super) async fn handler(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(secret) = s.webhook.secret.as_ref() else {
        return (
            StatusCode::NOT_FOUND,
            "webhook disabled: start nodewave with --webhook-secret-file\n",
        )
            .into_response();
    };
    let event = match webhook::authenticate(&headers, &body, secret) {
        Ok(event) => event,
        Err(e) => {
            let provider = claimed_provider(&headers);
            let (code, result) = match e {
                WebhookError::BadRequest(_) => (StatusCode::BAD_REQUEST, WebhookResult::BadRequest),
                WebhookError::StaleTimestamp { .. } => {
                    (StatusCode::BAD_REQUEST, WebhookResult::Replayed)
                }
                WebhookError::MissingSignature | WebhookError::BadSignature => {
                    (StatusCode::UNAUTHORIZED, WebhookResult::BadSignature)
                }
            };
            s.metrics.webhook_request(provider, result);
            if let Some(suppressed) = take(&s.webhook.refused_log) {
                tracing::warn!(
                    provider = provider.as_str(),
                    error = %e,
                    suppressed,
                    "webhook refused (suppressed: refusals not logged since the last such line)"
                );
            }
            return (code, format!("{e}\n")).into_response();
        }
    };
    let provider = provider_label(event.provider);
    let delivery = short_id(webhook::delivery_id(event.provider, &headers));
    if s.webhook
        .is_replay(&webhook::replay_keys(event.provider, &headers, &body))
    {
        s.metrics.webhook_request(provider, WebhookResult::Replayed);
        if let Some(suppressed) = take(&s.webhook.replayed_log) {
            tracing::info!(
                provider = provider.as_str(),
                delivery = %delivery,
                suppressed,
                "webhook replayed: this delivery was already handled; not fetching"
            );
        }
        return (
            StatusCode::OK,
            "replayed: this delivery was already handled; nothing to do\n",
        )
            .into_response();
    }
    if !webhook::is_for(&event, &s.reference) {
        s.metrics.webhook_request(provider, WebhookResult::Ignored);
        tracing::debug!(
            provider = provider.as_str(),
            delivery = %delivery,
            git_ref = event.git_ref.as_deref().unwrap_or(""),
            "webhook ignored: not a push to the tracked ref"
        );
        return (
            StatusCode::OK,
            format!("ignored: not a push to {}\n", s.reference.full_name()),
        )
            .into_response();
    }
    s.metrics.webhook_request(provider, WebhookResult::Accepted);
    let decision = s.webhook.trigger_fetch(&s.triggers);
    let answer = match decision {
        Decision::FetchNow => "fetching\n".to_owned(),
        Decision::ScheduleAt(at) | Decision::Coalesced(at) => format!(
            "fetch scheduled in {:.1}s (webhook fetches are coalesced)\n",
            at.saturating_duration_since(Instant::now()).as_secs_f64()
        ),
    };
    // A webhook folded into an already scheduled fetch changes nothing worth
    // a line at info (a burst would otherwise log every request).
    if matches!(decision, Decision::Coalesced(_)) {
        tracing::debug!(
            provider = provider.as_str(),
            delivery = %delivery,
            after = event.after.as_deref().unwrap_or(""),
            decision = decision_label(decision),
            "push webhook accepted"
        );
    } else {
        tracing::info!(
            provider = provider.as_str(),
            delivery = %delivery,
            git_ref = event.git_ref.as_deref().unwrap_or(""),
            after = event.after.as_deref().unwrap_or(""),
            decision = decision_label(decision),
            "push webhook accepted"
        );
    }
    (StatusCode::ACCEPTED, answer).into_response()
}

fn decision_label(d: Decision) -> &'static str {
    match d {
        Decision::FetchNow => "fetch_now",
        Decision::ScheduleAt(_) => "scheduled",
        Decision::Coalesced(_) => "coalesced",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_budget_allows_one_line_per_period_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut b = LogBudget::new(Duration::from_secs(10));
        assert_eq!(b.take(t0), Some(0));
        for n in 1..=5 {
            assert_eq!(b.take(t0 + Duration::from_secs(n)), None);
        }
        assert_eq!(b.take(t0 + Duration::from_secs(10)), Some(5));
        assert_eq!(b.take(t0 + Duration::from_secs(11)), None);
        assert_eq!(b.take(t0 + Duration::from_secs(30)), Some(1));
    }
}
