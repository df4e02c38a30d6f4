//! The Git source's metrics: fetches, the head, force pushes, webhooks and
//! rejected commits.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::{DropTimer, create_series};

/// Result of a Git fetch (`nodewave_git_fetch_total{result}`), also used for
/// Kubernetes API requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FetchResult {
    /// The fetch completed.
    Success,
    /// The fetch failed (network, auth, timeout, corrupt repository...).
    Error,
}

impl FetchResult {
    pub const ALL: [FetchResult; 2] = [FetchResult::Success, FetchResult::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            FetchResult::Success => "success",
            FetchResult::Error => "error",
        }
    }
}

/// Webhook sender (`nodewave_webhook_requests_total{provider}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WebhookProvider {
    /// GitHub (`X-Hub-Signature-256`).
    Github,
    /// GitLab (`X-Gitlab-Token`).
    Gitlab,
    /// Any other sender using the generic endpoint.
    Generic,
}

impl WebhookProvider {
    pub const ALL: [WebhookProvider; 3] = [
        WebhookProvider::Github,
        WebhookProvider::Gitlab,
        WebhookProvider::Generic,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookProvider::Github => "github",
            WebhookProvider::Gitlab => "gitlab",
            WebhookProvider::Generic => "generic",
        }
    }
}

/// What nodewave did with a webhook request (`nodewave_webhook_requests_total{result}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WebhookResult {
    /// Triggered a fetch (possibly coalesced with others).
    Accepted,
    /// Valid, but for another branch/event.
    Ignored,
    /// Signature or token did not verify.
    BadSignature,
    /// Malformed request.
    BadRequest,
    /// A delivery already handled (or a stale generic timestamp): nothing fetched.
    Replayed,
}

impl WebhookResult {
    pub const ALL: [WebhookResult; 5] = [
        WebhookResult::Accepted,
        WebhookResult::Ignored,
        WebhookResult::BadSignature,
        WebhookResult::BadRequest,
        WebhookResult::Replayed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookResult::Accepted => "accepted",
            WebhookResult::Ignored => "ignored",
            WebhookResult::BadSignature => "bad_signature",
            WebhookResult::BadRequest => "bad_request",
            WebhookResult::Replayed => "replayed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommitLabels {
    commit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    provider: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

/// Git fetches are usually sub-second but large repositories over SSH can take
/// a minute: 50ms .. ~51s.
fn git_fetch_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 11))
}

fn unix_now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[derive(Debug)]
pub(super) struct SourceMetrics {
    fetch: Family<ResultLabels, Counter>,
    fetch_duration: Histogram,
    last_success: Gauge<f64, AtomicU64>,
    head_info: Family<CommitLabels, Gauge>,
    /// The head whose series is exported (only the current head has one).
    head: Arc<Mutex<Option<String>>>,
    force_push: Counter,
    webhooks: Family<WebhookLabels, Counter>,
    commit_rejected: Family<ReasonLabels, Counter>,
}

impl SourceMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let fetch = Family::<ResultLabels, Counter>::default();
        for result in FetchResult::ALL {
            create_series(
                &fetch,
                &ResultLabels {
                    result: result.as_str(),
                },
            );
        }
        // Counters are registered without `_total`: the OpenMetrics encoder appends it.
        registry.register("nodewave_git_fetch", "Git fetches by result", fetch.clone());
        let fetch_duration = git_fetch_buckets();
        registry.register(
            "nodewave_git_fetch_duration_seconds",
            "Duration of Git fetches",
            fetch_duration.clone(),
        );
        let last_success = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "nodewave_git_last_successful_fetch_timestamp_seconds",
            "Unix time of the last successful Git fetch; 0 before the first one",
            last_success.clone(),
        );
        let head_info = Family::<CommitLabels, Gauge>::default();
        registry.register(
            "nodewave_git_head_info",
            "Commit at the head of the tracked branch; 1 for the current head only",
            head_info.clone(),
        );
        let force_push = Counter::default();
        registry.register(
            "nodewave_git_force_push",
            "Fetches where the new head did not descend from the previous head",
            force_push.clone(),
        );
        let webhooks = Family::<WebhookLabels, Counter>::default();
        for provider in WebhookProvider::ALL {
            for result in WebhookResult::ALL {
                create_series(
                    &webhooks,
                    &WebhookLabels {
                        provider: provider.as_str(),
                        result: result.as_str(),
                    },
                );
            }
        }
        registry.register(
            "nodewave_webhook_requests",
            "Webhook requests by provider and result",
            webhooks.clone(),
        );
        let commit_rejected = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "nodewave_commit_rejected",
            "Commits rejected by validation, rendering or signature verification, by reason",
            commit_rejected.clone(),
        );
        Self {
            fetch,
            fetch_duration,
            last_success,
            head_info,
            head: Arc::default(),
            force_push,
            webhooks,
            commit_rejected,
        }
    }

    pub(super) fn fetch_timer(&self) -> DropTimer {
        DropTimer::new(self.fetch_duration.clone())
    }

    pub(super) fn observe_fetch_duration(&self, d: Duration) {
        self.fetch_duration.observe(d.as_secs_f64());
    }

    pub(super) fn fetch_result(&self, result: FetchResult) {
        self.fetch
            .get_or_create(&ResultLabels {
                result: result.as_str(),
            })
            .inc();
        if result == FetchResult::Success {
            self.last_success.set(unix_now_seconds());
        }
    }

    pub(super) fn set_head(&self, commit: &str) {
        let mut head = self.head.lock().unwrap_or_else(PoisonError::into_inner);
        if head.as_deref() == Some(commit) {
            return;
        }
        if let Some(old) = head.take() {
            self.head_info.remove(&CommitLabels { commit: old });
        }
        self.head_info
            .get_or_create(&CommitLabels {
                commit: commit.to_owned(),
            })
            .set(1);
        *head = Some(commit.to_owned());
    }

    pub(super) fn force_push(&self) {
        self.force_push.inc();
    }

    pub(super) fn webhook(&self, provider: WebhookProvider, result: WebhookResult) {
        self.webhooks
            .get_or_create(&WebhookLabels {
                provider: provider.as_str(),
                result: result.as_str(),
            })
            .inc();
    }

    pub(super) fn commit_rejected(&self, reason: &str) {
        self.commit_rejected
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub(super) fn init_reject_reasons<'a>(&self, reasons: impl IntoIterator<Item = &'a str>) {
        for reason in reasons {
            create_series(
                &self.commit_rejected,
                &ReasonLabels {
                    reason: reason.to_owned(),
                },
            );
        }
    }
}
