use std::sync::Arc;

use super::*;
use crate::keys;
use crate::record::{DaemonSetRollout, PoolStatus, RecordStatus};

/// Sample lines (not comments) whose name is `name` exactly.
fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .collect()
}

fn identity() -> SourceIdentity {
    SourceIdentity {
        repo: "https://git.example/fleet.git".into(),
        path: "prod".into(),
    }
}

/// A record as the controller writes it, with the given status.
fn record(ns: &str, name: &str, status: RecordStatus, id: &SourceIdentity) -> DaemonSetRollout {
    let mut r = DaemonSetRollout::default();
    r.metadata.name = Some(name.into());
    r.metadata.namespace = Some(ns.into());
    r.metadata.resource_version = Some("1".into());
    r.metadata.labels = Some(
        [(
            keys::MANAGED_BY_LABEL.to_string(),
            keys::MANAGED_BY_VALUE.to_string(),
        )]
        .into(),
    );
    r.metadata.annotations = Some(
        [
            (keys::SOURCE_REPO.to_string(), id.repo.clone()),
            (keys::SOURCE_PATH.to_string(), id.path.clone()),
        ]
        .into(),
    );
    r.status = Some(status);
    r
}

fn progressing() -> RecordStatus {
    RecordStatus {
        phase: "Progressing".into(),
        applied_commit: Some("aaaa".into()),
        last_good_commit: Some("bbbb".into()),
        stage: "2/3 general".into(),
        rollout_phase: "Updating".into(),
        pools: vec![PoolStatus {
            name: "canary".into(),
            updated: 1,
            ready: 1,
            total: 2,
        }],
        ..RecordStatus::default()
    }
}

fn with_records(records: Vec<DaemonSetRollout>) -> (Metrics, Arc<Stores>) {
    let m = Metrics::new();
    let stores = Arc::new(Stores::default());
    for r in records {
        stores.wrote_record(r);
    }
    m.watch_daemonsets(stores.clone(), identity());
    (m, stores)
}

fn record_everything(m: &Metrics) {
    drop(m.git_fetch_timer());
    m.git_fetch_result(FetchResult::Success);
    m.set_git_head("aaaa");
    m.git_force_push();
    m.webhook_request(WebhookProvider::Github, WebhookResult::Accepted);
    m.commit_rejected("yaml-syntax");
    m.drift_detected("kube-system", "cilium");
    m.rollout_finished("kube-system", "cilium", RolloutOutcome::RolledBack, 90.0);
    m.gate_failed(
        "kube-system",
        "cilium",
        crate::rollout::Gate::Restarts.metric_label(),
    );
    drop(m.rollback_timer());
    m.reconcile_error("kube_api");
    m.kube_request("patch", true);
}

#[test]
fn encode_contains_every_metric() {
    let (m, _s) = with_records(vec![record(
        "kube-system",
        "cilium",
        progressing(),
        &identity(),
    )]);
    record_everything(&m);
    let text = m.encode();
    assert!(text.ends_with("# EOF\n"), "{text}");
    for name in [
        "nodewave_build_info",
        "nodewave_git_fetch_total",
        "nodewave_git_fetch_duration_seconds_bucket",
        "nodewave_git_fetch_duration_seconds_count",
        "nodewave_git_last_successful_fetch_timestamp_seconds",
        "nodewave_git_head_info",
        "nodewave_git_force_push_total",
        "nodewave_webhook_requests_total",
        "nodewave_commit_rejected_total",
        "nodewave_daemonset_sync_status",
        "nodewave_daemonset_info",
        "nodewave_drift_detected_total",
        "nodewave_rollout_stage",
        "nodewave_rollout_pool_pods",
        "nodewave_rollouts_total",
        "nodewave_rollout_duration_seconds_bucket",
        "nodewave_gate_failures_total",
        "nodewave_rollback_duration_seconds_bucket",
        "nodewave_reconcile_errors_total",
        "nodewave_kube_requests_total",
    ] {
        assert!(!samples(&text, name).is_empty(), "{name} missing:\n{text}");
    }
    let version = format!(
        "nodewave_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.contains(&version), "{text}");
    assert!(text.contains(
        r#"nodewave_rollouts_total{namespace="kube-system",daemonset="cilium",outcome="rolled_back"} 1"#
    ));
    assert!(
        text.contains(r#"nodewave_rollout_stage{namespace="kube-system",daemonset="cilium"} 1"#)
    );
    assert!(text.contains(
        r#"nodewave_rollout_pool_pods{namespace="kube-system",daemonset="cilium",pool="canary",state="total"} 2"#
    ));
    assert!(text.contains(
        r#"nodewave_daemonset_info{namespace="kube-system",daemonset="cilium",applied_commit="aaaa",last_good_commit="bbbb"} 1"#
    ));
}

#[test]
fn bounded_counters_start_at_zero() {
    let idle = RecordStatus {
        phase: "Synced".into(),
        ..RecordStatus::default()
    };
    let (m, _s) = with_records(vec![record("ns", "ds", idle, &identity())]);
    m.init_reconcile_error_kinds(["kube_api"]);
    let text = m.encode();
    assert!(text.contains(r#"nodewave_git_fetch_total{result="error"} 0"#));
    assert!(text.contains(
        r#"nodewave_webhook_requests_total{provider="gitlab",result="bad_signature"} 0"#
    ));
    assert!(text.contains(
        r#"nodewave_rollouts_total{namespace="ns",daemonset="ds",outcome="rolled_back"} 0"#
    ));
    assert!(text.contains(
        r#"nodewave_gate_failures_total{namespace="ns",daemonset="ds",gate="ready_timeout"} 0"#
    ));
    assert!(text.contains(r#"nodewave_drift_detected_total{namespace="ns",daemonset="ds"} 0"#));
    assert!(text.contains(r#"nodewave_rollout_stage{namespace="ns",daemonset="ds"} -1"#));
    assert!(text.contains(r#"nodewave_reconcile_errors_total{kind="kube_api"} 0"#));
    m.init_commit_reject_reasons(["yaml-syntax", "policy"]);
    assert!(
        m.encode()
            .contains(r#"nodewave_commit_rejected_total{reason="policy"} 0"#)
    );
}

#[test]
fn git_head_info_drops_previous_commit() {
    let m = Metrics::new();
    m.set_git_head("aaaa");
    m.set_git_head("aaaa");
    m.set_git_head("bbbb");
    let text = m.encode();
    let heads = samples(&text, "nodewave_git_head_info");
    assert_eq!(heads, vec![r#"nodewave_git_head_info{commit="bbbb"} 1"#]);
}

#[test]
fn sync_status_has_exactly_one_active_series_per_daemonset() {
    for status in [
        SyncStatus::OutOfSync,
        SyncStatus::Progressing,
        SyncStatus::RolledBack,
    ] {
        let st = RecordStatus {
            phase: status.as_str().into(),
            ..RecordStatus::default()
        };
        let (m, _s) = with_records(vec![record("ns", "ds", st, &identity())]);
        let text = m.encode();
        let lines = samples(&text, "nodewave_daemonset_sync_status");
        assert_eq!(lines.len(), SyncStatus::ALL.len(), "{text}");
        let active: Vec<_> = lines.iter().filter(|l| l.ends_with(" 1")).collect();
        assert_eq!(active.len(), 1, "{text}");
        assert!(
            active[0].contains(&format!("status=\"{}\"", status.as_str())),
            "{text}"
        );
    }
}

#[test]
fn a_daemonset_no_longer_recorded_has_no_series_left() {
    let (m, stores) = with_records(vec![
        record("kube-system", "cilium", progressing(), &identity()),
        record("ns", "keep", RecordStatus::default(), &identity()),
    ]);
    record_everything(&m);
    assert!(m.encode().contains(r#"daemonset="cilium""#));
    stores.forgot_record(&crate::manifest::ObjectKey::new("kube-system", "cilium"));
    let text = m.encode();
    assert!(!text.contains(r#"daemonset="cilium""#), "{text}");
    assert!(text.contains(r#"daemonset="keep""#), "{text}");
}

#[test]
fn records_of_another_source_are_not_exported_and_a_standby_exports_none() {
    let other = SourceIdentity {
        repo: "https://git.example/other.git".into(),
        path: String::new(),
    };
    let (m, _s) = with_records(vec![record("ns", "theirs", progressing(), &other)]);
    assert!(!m.encode().contains("theirs"));
    let standby = Metrics::new();
    standby.drift_detected("ns", "ds");
    assert!(samples(&standby.encode(), "nodewave_drift_detected_total").is_empty());
}

#[test]
fn drop_timer_records_once() {
    let m = Metrics::new();
    drop(m.rollback_timer());
    let _recorded = m.rollback_timer().observe();
    m.rollback_timer().discard();
    let text = m.encode();
    assert!(
        text.contains("nodewave_rollback_duration_seconds_count 2"),
        "{text}"
    );
}

#[test]
fn git_fetch_success_sets_timestamp() {
    let m = Metrics::new();
    m.git_fetch_result(FetchResult::Error);
    assert!(
        m.encode()
            .contains("nodewave_git_last_successful_fetch_timestamp_seconds 0.0")
    );
    m.git_fetch_result(FetchResult::Success);
    let text = m.encode();
    assert!(text.contains(r#"nodewave_git_fetch_total{result="error"} 1"#));
    assert!(
        !text.contains("nodewave_git_last_successful_fetch_timestamp_seconds 0.0"),
        "{text}"
    );
}

#[test]
fn metrics_is_send_sync_clone() {
    fn assert_traits<T: Send + Sync + Clone + 'static>() {}
    assert_traits::<Metrics>();
}
