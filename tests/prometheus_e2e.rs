//! End-to-end observability: the real `nodewave` binary drives a rollout on the
//! local control plane while a real Prometheus (Debian's package, started by the
//! test) scrapes it and evaluates the shipped alert rules. The test then checks
//! that the rollback alert fires and that every Grafana panel query returns data.
#![allow(clippy::unwrap_used)]
// Test code: a panic with the failing value is how a test fails.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::gitops::{ds_yaml, wait_status};
use support::nodewave::{GitRepo, Nodewave};
use support::prometheus::{Prometheus, PrometheusConfig, has_finite_sample};
use support::*;

const POOLS: [&str; 3] = ["pool-a", "pool-b", "pool-c"];
const RULES: &str = "deploy/prometheus/nodewave-rules.yaml";
const DASHBOARD: &str = "dashboards/nodewave.json";

fn repo_path(relative: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Every target `expr` of the dashboard with its panel title, with the Grafana
/// variables replaced as `docs/metrics.md` documents.
fn dashboard_queries() -> Vec<(String, String)> {
    fn walk(panels: &[Value], out: &mut Vec<(String, String)>) {
        for p in panels {
            if let Some(children) = p["panels"].as_array() {
                walk(children, out);
            }
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    let title = p["title"].as_str().unwrap_or("(untitled)");
                    let ref_id = t["refId"].as_str().unwrap_or("?");
                    out.push((format!("{title} [{ref_id}]"), substitute(expr)));
                }
            }
        }
    }
    let text = std::fs::read_to_string(repo_path(DASHBOARD)).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    walk(dashboard["panels"].as_array().unwrap(), &mut out);
    assert!(!out.is_empty(), "no panel queries in {DASHBOARD}");
    out
}

/// The substitutions documented in docs/metrics.md ("To run the panel queries
/// outside Grafana").
fn substitute(expr: &str) -> String {
    let out = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "5m")
        .replace("$namespace", ".*")
        .replace("$daemonset", ".*");
    assert!(
        !out.contains('$'),
        "undocumented Grafana variable left in {out}"
    );
    out
}

#[tokio::test]
async fn real_prometheus_fires_rollback_alert_and_every_panel_has_data() {
    let mut env = TestEnv::new("prom-e2e").await;
    env.create_nodes(&POOLS, 1).await;
    let repo = GitRepo::new();
    let good = repo.commit(
        "add agent",
        &[(
            "agent.yaml",
            Some(&ds_yaml(&env, "agent", "registry.example/agent:1.0.0")),
        )],
    );
    let secret_dir = tempfile::tempdir().unwrap();
    let secret_file = secret_dir.path().join("secret");
    std::fs::write(&secret_file, "hook-secret\n").unwrap();
    let nw = Nodewave::start(
        &repo.url(),
        &[
            "--poll-interval",
            "1s",
            "--allow-namespace",
            &env.ns,
            "--webhook-secret-file",
            secret_file.to_str().unwrap(),
        ],
    )
    .await;

    let prom =
        Prometheus::start(&PrometheusConfig::new(&[nw.addr]).rule_file(repo_path(RULES))).await;
    prom.wait_targets_up().await;
    wait_status(&env, "agent", "Synced", Duration::from_mins(2)).await;

    // A forged webhook and a commit that fails validation, so that the webhook
    // and rejected-commit panels show events rather than zeros.
    let bad = reqwest::Client::new()
        .post(nw.url("/webhook"))
        .header("X-GitHub-Event", "push")
        .header("X-Hub-Signature-256", format!("sha256={}", "0".repeat(64)))
        .body(r#"{"ref":"refs/heads/main"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    repo.commit(
        "broken yaml",
        &[(
            "broken.yaml",
            Some("kind: DaemonSet\nmetadata: [unclosed\n"),
        )],
    );
    wait_for(
        "nodewave_commit_rejected_total > 0 in Prometheus",
        Duration::from_mins(1),
        || async {
            let r = prom
                .query("sum(nodewave_commit_rejected_total) > 0")
                .await?;
            Ok((!r.is_empty()).then_some(()))
        },
    )
    .await;

    // The bad commit: pods crash-loop in the first stage, the gate fails and
    // nodewave rolls back to the good commit.
    let committed = Instant::now();
    let bad_commit = repo.commit(
        "agent 2.0.0 (crashes)",
        &[
            ("broken.yaml", None),
            (
                "agent.yaml",
                Some(&ds_yaml(
                    &env,
                    "agent",
                    "registry.example/agent:2.0.0-crashloop",
                )),
            ),
        ],
    );
    let ds = wait_status(&env, "agent", "RolledBack", Duration::from_mins(3)).await;
    let rolled_back_after = committed.elapsed();
    let _ = &ds;
    let r = support::record::get(&env, "agent").await.unwrap();
    assert_eq!(r.last_good.as_ref(), Some(&good));
    assert!(
        r.failed_contains(&bad_commit),
        "failed commits: {:?}",
        r.failed
    );

    // (a) The shipped rule fires in the real Prometheus.
    let alert = wait_for(
        "NodewaveRolloutRolledBack firing in /api/v1/alerts",
        Duration::from_mins(3),
        || async {
            let firing = prom.firing("NodewaveRolloutRolledBack").await?;
            match firing.into_iter().find(|a| {
                a["labels"]["namespace"] == env.ns.as_str() && a["labels"]["daemonset"] == "agent"
            }) {
                Some(a) => Ok(Some(a)),
                None => Err(format!(
                    "alerts: {:#?}\nnodewave's rollout counters: {:?}",
                    prom.alerts().await?,
                    nw.metrics()
                        .await
                        .lines()
                        .filter(|l| l.starts_with("nodewave_rollouts_total"))
                        .collect::<Vec<_>>()
                )),
            }
        },
    )
    .await;
    let alert_after = committed.elapsed();
    assert_eq!(alert["labels"]["severity"], "warning");
    assert_eq!(alert["labels"]["job"], "nodewave");
    assert!(
        alert["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains(&format!("{}/agent", env.ns))),
        "{alert:#}"
    );
    // The rejected commit fires its alert as well (its rule group may be
    // evaluated a little later than the rollout group's).
    wait_for(
        "NodewaveCommitRejected firing",
        Duration::from_mins(1),
        || async {
            let firing = prom.firing("NodewaveCommitRejected").await?;
            if firing.is_empty() {
                Err(format!("{:#?}", prom.alerts().await))
            } else {
                Ok(Some(()))
            }
        },
    )
    .await;

    // Every shipped rule evaluates without error in a real Prometheus.
    let rules = prom.api("/api/v1/rules", &[]).await.unwrap();
    let mut evaluated = 0;
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(
                rule["health"], "ok",
                "rule {} in group {}: {rule:#}",
                rule["name"], group["name"]
            );
            evaluated += 1;
        }
    }
    assert!(evaluated > 0);

    // (b) Every dashboard panel query returns at least one finite sample.
    let queries = dashboard_queries();
    let panels_started = Instant::now();
    wait_for(
        "every dashboard panel query returns data",
        Duration::from_mins(2),
        || async {
            let mut empty = Vec::new();
            let mut report = Vec::new();
            for (panel, expr) in &queries {
                match prom.query(expr).await {
                    Ok(r) if has_finite_sample(&r) => report.push(format!(
                        "{panel}: {}",
                        r.iter()
                            .map(|s| format!("{}={}", s["metric"], s["value"][1]))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                    Ok(r) => empty.push(format!("{panel}: {expr}\n    -> {r:?}")),
                    Err(e) => empty.push(format!("{panel}: {e}")),
                }
            }
            if empty.is_empty() {
                eprintln!("panel queries:\n  {}", report.join("\n  "));
                Ok(Some(()))
            } else {
                Err(format!("panels without data:\n  {}", empty.join("\n  ")))
            }
        },
    )
    .await;
    eprintln!(
        "crashloop commit -> RolledBack status {rolled_back_after:?}, -> alert firing {alert_after:?}; \
         {} panel queries had data {:?} later",
        queries.len(),
        panels_started.elapsed()
    );
    drop(prom);
    drop(nw);
}
