//! nodewave's JSON logs during a rollout that fails and is rolled back: every
//! line about the rollout carries the DaemonSet, the commit and the stage, so a
//! log pipeline (Loki, Elastic) can filter one rollout without parsing messages.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::gitops::{ds_yaml, wait_status};
use support::nodewave::{GitRepo, Nodewave};
use support::*;

const POOLS: [&str; 3] = ["pool-a", "pool-b", "pool-c"];

/// Fields every rollout log line carries at the top level of its JSON object.
const ROLLOUT_FIELDS: [&str; 4] = ["namespace", "daemonset", "commit", "stage"];

fn parse_lines(logs: &str) -> Vec<Value> {
    logs.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}"))
        })
        .collect()
}

fn message(line: &Value) -> &str {
    line["message"].as_str().unwrap_or("")
}

/// A top-level field as a string, or `None` when absent or empty.
fn field<'a>(line: &'a Value, name: &str) -> Option<&'a str> {
    line.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

#[tokio::test]
async fn rollout_log_lines_carry_namespace_daemonset_commit_and_stage() {
    let mut env = TestEnv::new("logging").await;
    env.create_nodes(&POOLS, 1).await;
    let repo = GitRepo::new();
    let good = repo.commit(
        "add agent",
        &[(
            "agent.yaml",
            Some(&ds_yaml(&env, "agent", "registry.example/agent:1.0.0")),
        )],
    );
    let nw = Nodewave::start(
        &repo.url(),
        &["--poll-interval", "1s", "--allow-namespace", &env.ns],
    )
    .await;
    wait_status(&env, "agent", "Synced", Duration::from_mins(2)).await;
    let bad = repo.commit(
        "agent 2.0.0 (crashes)",
        &[(
            "agent.yaml",
            Some(&ds_yaml(
                &env,
                "agent",
                "registry.example/agent:2.0.0-crashloop",
            )),
        )],
    );
    wait_status(&env, "agent", "RolledBack", Duration::from_mins(3)).await;

    let logs = nw.logs();
    let lines = parse_lines(&logs);
    let dump = || {
        lines
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };
    for l in &lines {
        for key in ["timestamp", "level", "message"] {
            assert!(field(l, key).is_some(), "no {key}: {l}\n{}", dump());
        }
    }

    // Which lines belong to a rollout: everything logged while a rollout is
    // stepped (span "rollout"), plus the line that starts it.
    let rollout_lines: Vec<&Value> = lines
        .iter()
        .filter(|l| field(l, "span") == Some("rollout") || message(l) == "rollout started")
        .collect();
    for l in &rollout_lines {
        for key in ROLLOUT_FIELDS {
            assert!(
                field(l, key).is_some(),
                "rollout log line without `{key}`: {l}\nall lines:\n{}",
                dump()
            );
        }
        assert_eq!(field(l, "namespace"), Some(env.ns.as_str()), "{l}");
        assert_eq!(field(l, "daemonset"), Some("agent"), "{l}");
        // "stage 2 (pool-b) started/passed": the line is about that stage.
        if let Some(rest) = message(l).strip_prefix("stage ")
            && let Some(name) = rest.split_once('(').and_then(|(_, r)| r.split_once(')'))
        {
            assert_eq!(field(l, "stage"), Some(name.0), "{l}");
        }
    }

    let short = |c: &str| c[..12].to_string();
    let find = |what: &str, pred: &dyn Fn(&Value) -> bool| -> Value {
        rollout_lines.iter().find(|l| pred(l)).map_or_else(
            || panic!("no rollout log line for {what}; all lines:\n{}", dump()),
            |l| (*l).clone(),
        )
    };
    let is = |l: &Value, commit: &str, stage: &str| {
        field(l, "commit") == Some(commit) && field(l, "stage") == Some(stage)
    };
    let (good, bad) = (short(&good), short(&bad));

    // The good commit's rollout went through all three stages.
    find("good rollout started", &|l| {
        message(l) == "rollout started" && is(l, &good, "pool-a")
    });
    for pool in POOLS {
        find(&format!("good rollout {pool} passed"), &|l| {
            field(l, "reason") == Some("StagePassed") && is(l, &good, pool)
        });
    }
    find("good rollout succeeded", &|l| {
        message(l) == "rollout succeeded" && field(l, "commit") == Some(&good)
    });
    // The bad commit: stage started, pod replaced, gate failed, rollback decided.
    find("bad rollout started", &|l| {
        message(l) == "rollout started" && is(l, &bad, "pool-a")
    });
    find("bad stage started", &|l| {
        field(l, "reason") == Some("StageStarted") && is(l, &bad, "pool-a")
    });
    find("bad rollout replacing a pod", &|l| {
        message(l) == "replacing pod" && is(l, &bad, "pool-a") && field(l, "pod").is_some()
    });
    let gate = find("gate failed", &|l| {
        message(l).starts_with("gate failed") && is(l, &bad, "pool-a")
    });
    assert_eq!(field(&gate, "gate"), Some("fatal_reason"), "{gate}");
    assert_eq!(field(&gate, "level"), Some("WARN"), "{gate}");
    find("rollback decided", &|l| {
        message(l).starts_with("rolling back from") && is(l, &bad, "pool-a")
    });
    // The rollback itself rolls the good commit out again, in stage "rollback".
    find("rollback started", &|l| {
        field(l, "reason") == Some("RollbackStarted") && is(l, &good, "rollback")
    });
    find("rollback replacing a pod", &|l| {
        message(l) == "replacing pod" && is(l, &good, "rollback")
    });
    find("rollback finished", &|l| {
        message(l).starts_with("rolled back to") && is(l, &good, "rollback")
    });
    eprintln!("gate failure line: {gate}");
    eprintln!(
        "{} log lines, {} of them rollout lines, all with {ROLLOUT_FIELDS:?}",
        lines.len(),
        rollout_lines.len()
    );
}
