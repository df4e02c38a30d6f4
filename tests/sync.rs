//! GitOps sync against the real local control plane, driving the real `nodewave`
//! binary with a Git repository each test builds.

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration test crate: panics are test failures

mod support;

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};

use k8s_openapi::api::apps::v1::DaemonSet;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use support::gitops::*;
use support::nodewave::{GitRepo, Nodewave, cli, nodewave_annotations};
use support::record;
use support::*;

const POOLS: [&str; 3] = ["pool-a", "pool-b", "pool-c"];

#[tokio::test]
async fn new_daemonset_appears_image_change_rolls_out_and_diff_reports_it() {
    let mut env = TestEnv::new("sync-basic").await;
    let nodes = env.create_nodes(&POOLS, 2).await;
    let repo = GitRepo::new();
    let c1 = repo.commit(
        "add agent",
        &[(
            "agents/agent.yaml",
            Some(&ds_yaml(&env, "agent", "registry.example/agent:1.0.0")),
        )],
    );
    let nw = Nodewave::start(
        &repo.url(),
        &["--poll-interval", "1s", "--allow-namespace", &env.ns],
    )
    .await;

    wait_rolled_out(&env, "agent", "registry.example/agent:1.0.0", nodes.len()).await;
    let ds = wait_status(&env, "agent", "Synced", Duration::from_secs(60)).await;
    let ann = nodewave_annotations(&ds);
    let r = record::get(&env, "agent").await.unwrap();
    assert_eq!(r.applied.as_ref(), Some(&c1));
    assert_eq!(r.last_good.as_ref(), Some(&c1));
    assert_eq!(ann.get("nodewave.io/source-repo"), Some(&repo.url()));
    assert_eq!(
        ann.get("nodewave.io/source-file").map(String::as_str),
        Some("agents/agent.yaml")
    );
    assert_eq!(
        ds.metadata
            .labels
            .as_ref()
            .unwrap()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("nodewave")
    );
    assert_eq!(
        ds.spec
            .as_ref()
            .unwrap()
            .update_strategy
            .as_ref()
            .unwrap()
            .type_
            .as_deref(),
        Some("OnDelete")
    );

    // The working tree changes before the commit: `nodewave diff` shows it, exit 1.
    std::fs::write(
        repo.path().join("agents/agent.yaml"),
        ds_yaml(&env, "agent", "registry.example/agent:1.1.0"),
    )
    .unwrap();
    let (code, out) = cli(&["diff", "--dir", repo.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("spec.template.spec.containers[0].image"),
        "{out}"
    );
    assert!(out.contains("registry.example/agent:1.1.0"), "{out}");

    let c2 = repo.commit(
        "bump agent",
        &[(
            "agents/agent.yaml",
            Some(&ds_yaml(&env, "agent", "registry.example/agent:1.1.0")),
        )],
    );
    wait_rolled_out(&env, "agent", "registry.example/agent:1.1.0", nodes.len()).await;
    let ds = wait_status(&env, "agent", "Synced", Duration::from_secs(60)).await;
    assert_eq!(
        record::get(&env, "agent").await.unwrap().last_good.as_ref(),
        Some(&c2)
    );
    assert_eq!(image_of(&ds), "registry.example/agent:1.1.0");

    let (code, out) = cli(&["diff", "--dir", repo.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("in sync"), "{out}");
    drop(nw);
}

#[tokio::test]
async fn valid_webhook_applies_at_once_and_bad_signature_changes_nothing() {
    let mut env = TestEnv::new("sync-webhook").await;
    let nodes = env.create_nodes(&["pool-a"], 2).await;
    let repo = GitRepo::new();
    repo.commit(
        "add",
        &[(
            "agent.yaml",
            Some(&ds_yaml(&env, "agent", "registry.example/agent:1.0.0")),
        )],
    );
    let secret_dir = tempfile::tempdir().unwrap();
    let secret_file = secret_dir.path().join("secret");
    std::fs::write(&secret_file, "hook-secret\n").unwrap();
    // A poll interval far longer than the test: only the webhook can make it fetch.
    let nw = Nodewave::start(
        &repo.url(),
        &[
            "--poll-interval",
            "1h",
            "--webhook-secret-file",
            secret_file.to_str().unwrap(),
            "--allow-namespace",
            &env.ns,
        ],
    )
    .await;
    wait_rolled_out(&env, "agent", "registry.example/agent:1.0.0", nodes.len()).await;
    wait_status(&env, "agent", "Synced", Duration::from_secs(60)).await;

    let c2 = repo.commit(
        "bump",
        &[(
            "agent.yaml",
            Some(&ds_yaml(&env, "agent", "registry.example/agent:2.0.0")),
        )],
    );
    let body = json!({"ref": "refs/heads/main", "after": c2}).to_string();
    let http = reqwest::Client::new();

    let bad = http
        .post(nw.url("/webhook"))
        .header("X-GitHub-Event", "push")
        .header(
            "X-Hub-Signature-256",
            format!("sha256={}", hex::encode([0u8; 32])),
        )
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ds = get_ds(&env, "agent").await.unwrap();
    assert_eq!(
        image_of(&ds),
        "registry.example/agent:1.0.0",
        "a bad signature must not trigger a fetch"
    );
    assert_eq!(
        nw.metric(r#"nodewave_webhook_requests_total{provider="github",result="bad_signature"}"#)
            .await,
        Some(1.0)
    );

    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"hook-secret").unwrap();
    mac.update(body.as_bytes());
    let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let sent = std::time::Instant::now();
    let ok = http
        .post(nw.url("/webhook"))
        .header("X-GitHub-Event", "push")
        .header("X-Hub-Signature-256", sig)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 202);
    wait_for(
        "template applied after the webhook",
        Duration::from_secs(30),
        || async {
            let ds = get_ds(&env, "agent").await.unwrap();
            if image_of(&ds) == "registry.example/agent:2.0.0" {
                Ok(Some(()))
            } else {
                Err(image_of(&ds))
            }
        },
    )
    .await;
    eprintln!("webhook -> template applied in {:?}", sent.elapsed());
    wait_rolled_out(&env, "agent", "registry.example/agent:2.0.0", nodes.len()).await;
}

#[tokio::test]
async fn drift_is_healed_and_with_self_heal_off_only_reported() {
    for self_heal in [true, false] {
        let mut env = TestEnv::new(if self_heal {
            "drift-heal"
        } else {
            "drift-report"
        })
        .await;
        let nodes = env.create_nodes(&["pool-a"], 2).await;
        let repo = GitRepo::new();
        repo.commit(
            "add",
            &[(
                "agent.yaml",
                Some(&ds_yaml(&env, "agent", "registry.example/agent:1.0.0")),
            )],
        );
        let mut args = vec![
            "--poll-interval",
            "1h",
            "--allow-namespace",
            env.ns.as_str(),
        ];
        if !self_heal {
            args.push("--no-self-heal");
        }
        let nw = Nodewave::start(&repo.url(), &args).await;
        wait_rolled_out(&env, "agent", "registry.example/agent:1.0.0", nodes.len()).await;
        wait_status(&env, "agent", "Synced", Duration::from_secs(60)).await;

        // `kubectl set image`, as another field manager.
        let api: Api<DaemonSet> = env.api();
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "agent", "image": "registry.example/agent:hotfix"}]}}}});
        api.patch("agent", &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .unwrap();

        wait_for("drift counted", Duration::from_secs(30), || async {
            match nw
                .metric(&format!(
                    r#"nodewave_drift_detected_total{{namespace="{}",daemonset="agent"}}"#,
                    env.ns
                ))
                .await
            {
                Some(v) if v >= 1.0 => Ok(Some(())),
                v => Err(format!("{v:?}")),
            }
        })
        .await;
        if self_heal {
            wait_for("drift undone", Duration::from_secs(30), || async {
                let ds = get_ds(&env, "agent").await.unwrap();
                if image_of(&ds) == "registry.example/agent:1.0.0" {
                    Ok(Some(()))
                } else {
                    Err(image_of(&ds))
                }
            })
            .await;
            wait_rolled_out(&env, "agent", "registry.example/agent:1.0.0", nodes.len()).await;
        } else {
            wait_status(&env, "agent", "OutOfSync", Duration::from_secs(30)).await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            let ds = get_ds(&env, "agent").await.unwrap();
            assert_eq!(
                image_of(&ds),
                "registry.example/agent:hotfix",
                "self-heal off must leave the change"
            );
        }
        assert!(nw.logs().contains("drift"), "drift is logged");
    }
}
