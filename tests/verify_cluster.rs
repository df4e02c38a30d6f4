//! `--verify-commits head` against the real local control plane and the real
//! `nodewave` binary, with commits signed by real GnuPG and ssh-keygen keys.
//! Assertions are black-box: the DaemonSet's content, `/status`, `/metrics`,
//! Events and logs.

// A failed setup step should just fail the test; counters are small integers,
// exact in f64.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::float_cmp)]

mod signing;
mod support;

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use signing::{Gpg, Repo, Sign, SshKey, write};
use support::gitops::*;
use support::nodewave::Nodewave;
use support::rollout::events;
use support::*;

const IMG1: &str = "registry.example/agent:1.0.0";
const IMG2: &str = "registry.example/agent:2.0.0";
const IMG3: &str = "registry.example/agent:3.0.0";
const IMG4: &str = "registry.example/agent:4.0.0";
const SIGNATURE_REJECTED: &str = r#"nodewave_commit_rejected_total{reason="signature"}"#;
const SECRET: &str = "hook-secret";

/// A valid GitHub push webhook for main, whose payload names `after` (which
/// nodewave must ignore: it verifies what it fetches).
async fn webhook(nw: &Nodewave, after: &str) {
    // Each push is a new delivery (the server answers a replayed one with 200).
    static DELIVERY: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = DELIVERY.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let body = json!({"ref": "refs/heads/main", "after": after, "delivery": n}).to_string();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let r = reqwest::Client::new()
        .post(nw.url("/webhook"))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", format!("verify-cluster-{n}"))
        .header("X-Hub-Signature-256", sig)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

async fn wait_rejected(nw: &Nodewave, commit: &str, label: &str) -> Value {
    wait_for(
        &format!("/status rejects {commit} with {label}"),
        Duration::from_mins(1),
        || async {
            let st = nw.status().await;
            let first = st["rejected_errors"][0].as_str().unwrap_or_default();
            if st["rejected_commit"].as_str() == Some(commit)
                && first.starts_with(&format!("{label}: "))
            {
                Ok(Some(st))
            } else {
                Err(st.to_string())
            }
        },
    )
    .await
}

async fn wait_applied(nw: &Nodewave, commit: &str) -> Value {
    wait_for(
        &format!("/status applied_commit {commit}"),
        Duration::from_mins(1),
        || async {
            let st = nw.status().await;
            if st["applied_commit"].as_str() == Some(commit) && st["rejected_commit"].is_null() {
                Ok(Some(st))
            } else {
                Err(st.to_string())
            }
        },
    )
    .await
}

async fn wait_metric(nw: &Nodewave, series: &str, value: f64) {
    wait_for(
        &format!("{series} == {value}"),
        Duration::from_mins(1),
        || async {
            match nw.metric(series).await {
                Some(v) if v == value => Ok(Some(())),
                v => Err(format!("{v:?}")),
            }
        },
    )
    .await;
}

/// The DaemonSet keeps `image` across several more passes.
async fn assert_stays(env: &TestEnv, image: &str, why: &str) {
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ds = get_ds(env, "agent").await.unwrap();
    assert_eq!(image_of(&ds), image, "{why}");
}

#[tokio::test]
async fn only_commits_signed_by_trusted_keys_deploy_whatever_the_webhook_says() {
    let mut env = TestEnv::new("verify").await;
    let nodes = env.create_nodes(&["pool-a"], 2).await;
    let keys = tempfile::tempdir().unwrap();
    let gpg = Gpg::new();
    let alice = gpg.gen_key("Alice <alice@example.com>", "ed25519", "sign", "never");
    let ssh = SshKey::new(keys.path(), "bob", "ed25519");
    let newcomer = SshKey::new(keys.path(), "carol", "ed25519");
    let ring = write(keys.path(), "keys.asc", gpg.export(&alice));
    let signers = write(
        keys.path(),
        "allowed_signers",
        format!("bob@example.com namespaces=\"git\" {}\n", ssh.public),
    );
    let secret = write(keys.path(), "webhook-secret", format!("{SECRET}\n"));

    let repo = Repo::new();
    let c1 = repo.commit(
        &Sign::Gpg(&gpg, &alice),
        "agent 1",
        &[("agent.yaml", &ds_yaml(&env, "agent", IMG1))],
    );
    // Only webhooks make it fetch after the first fetch at start.
    let nw = Nodewave::start(
        &repo.url(),
        &[
            "--poll-interval",
            "1h",
            "--webhook-secret-file",
            secret.to_str().unwrap(),
            "--allow-namespace",
            &env.ns,
            "--verify-commits",
            "head",
            "--trusted-gpg-keys",
            ring.to_str().unwrap(),
            "--trusted-ssh-signers",
            signers.to_str().unwrap(),
        ],
    )
    .await;
    wait_rolled_out(&env, "agent", IMG1, nodes.len()).await;
    let st = wait_applied(&nw, &c1).await;
    assert_eq!(
        st["applied_signer"],
        json!({"format": "openpgp", "fingerprint": alice, "identity": "Alice <alice@example.com>"}),
        "{st}"
    );
    // The series exists before anything was rejected (alerts see 0, not absent).
    assert_eq!(nw.metric(SIGNATURE_REJECTED).await, Some(0.0));

    // 1. An unsigned commit, announced by a valid webhook: rejected, nothing applied.
    let c2 = repo.commit(
        &Sign::No,
        "agent 2, unsigned",
        &[("agent.yaml", &ds_yaml(&env, "agent", IMG2))],
    );
    webhook(&nw, &c2).await;
    let st = wait_rejected(&nw, &c2, "unsigned").await;
    assert_eq!(st["applied_commit"].as_str(), Some(c1.as_str()), "{st}");
    assert_eq!(st["applied_signer"]["fingerprint"], json!(alice), "{st}");
    wait_metric(&nw, SIGNATURE_REJECTED, 1.0).await;
    wait_for(
        "a CommitRejected Event on agent saying why",
        Duration::from_secs(30),
        || async {
            let evs = events(&env, "agent").await;
            if evs.iter().any(|(reason, note)| {
                reason == "CommitRejected" && note.contains(&c2[..12]) && note.contains("unsigned:")
            }) {
                Ok(Some(()))
            } else {
                Err(format!("{evs:?}"))
            }
        },
    )
    .await;
    assert!(
        nw.logs()
            .lines()
            .any(|l| l.contains("commit signature not verified")
                && l.contains("\"reason\":\"unsigned\"")),
        "the logs say why"
    );
    assert_stays(&env, IMG1, "an unsigned commit must not be applied").await;

    // 2. A webhook naming the trusted commit c1 while the branch holds a commit
    //    with new content and c1's (valid, but foreign) signature spliced in:
    //    nodewave verifies what it fetched, not what the payload claims.
    let unsigned3 = repo.commit(
        &Sign::No,
        "agent 3",
        &[("agent.yaml", &ds_yaml(&env, "agent", IMG3))],
    );
    let forged = repo.splice_signature(&unsigned3, &c1);
    webhook(&nw, &c1).await;
    wait_rejected(&nw, &forged, "bad_signature").await;
    wait_metric(&nw, SIGNATURE_REJECTED, 2.0).await;
    assert_stays(&env, IMG1, "a forged signature must not be applied").await;

    // 3. A correctly signed next commit (SSH this time) deploys.
    let c4 = repo.commit(
        &Sign::Ssh(&ssh),
        "agent 3, signed",
        &[("agent.yaml", &ds_yaml(&env, "agent", IMG3))],
    );
    webhook(&nw, &c4).await;
    wait_rolled_out(&env, "agent", IMG3, nodes.len()).await;
    let st = wait_applied(&nw, &c4).await;
    assert_eq!(st["applied_signer"]["format"], json!("ssh"), "{st}");
    assert_eq!(
        st["applied_signer"]["identity"],
        json!("bob@example.com"),
        "{st}"
    );
    assert_eq!(
        st["applied_signer"]["fingerprint"],
        json!(ssh.fingerprint()),
        "{st}"
    );
    assert!(st["rejected_errors"].as_array().unwrap().is_empty(), "{st}");

    // 4. A signer not trusted yet is rejected; once her key is added to the
    //    file (no restart), the same head deploys on the next fetch.
    let c5 = repo.commit(
        &Sign::Ssh(&newcomer),
        "agent 4 by carol",
        &[("agent.yaml", &ds_yaml(&env, "agent", IMG4))],
    );
    webhook(&nw, &c5).await;
    let st = wait_rejected(&nw, &c5, "unknown_key").await;
    assert!(
        st["rejected_errors"][0]
            .as_str()
            .unwrap()
            .contains(&newcomer.fingerprint()),
        "{st}"
    );
    wait_metric(&nw, SIGNATURE_REJECTED, 3.0).await;
    // Another fetch with unchanged keys does not reject it again.
    webhook(&nw, &c5).await;
    assert_stays(&env, IMG3, "an untrusted signer must not deploy").await;
    assert_eq!(nw.metric(SIGNATURE_REJECTED).await, Some(3.0));

    write(
        keys.path(),
        "allowed_signers",
        format!(
            "bob@example.com namespaces=\"git\" {}\ncarol@example.com {}\n",
            ssh.public, newcomer.public
        ),
    );
    webhook(&nw, &c5).await;
    wait_rolled_out(&env, "agent", IMG4, nodes.len()).await;
    let st = wait_applied(&nw, &c5).await;
    assert_eq!(
        st["applied_signer"]["identity"],
        json!("carol@example.com"),
        "{st}"
    );
    assert_eq!(nw.metric(SIGNATURE_REJECTED).await, Some(3.0));
}

#[tokio::test]
async fn a_restart_does_not_deploy_an_unverified_cached_head() {
    let mut env = TestEnv::new("verify-restart").await;
    let nodes = env.create_nodes(&["pool-a"], 2).await;
    let keys = tempfile::tempdir().unwrap();
    let ssh = SshKey::new(keys.path(), "deployer", "ed25519");
    let signers = write(
        keys.path(),
        "allowed_signers",
        format!("deployer@example.com {}\n", ssh.public),
    );
    let repo = Repo::new();
    let c1 = repo.commit(
        &Sign::Ssh(&ssh),
        "agent 1",
        &[("agent.yaml", &ds_yaml(&env, "agent", IMG1))],
    );
    let mut nw = Nodewave::start(
        &repo.url(),
        &[
            "--poll-interval",
            "1s",
            "--allow-namespace",
            &env.ns,
            "--verify-commits",
            "head",
            "--trusted-ssh-signers",
            signers.to_str().unwrap(),
        ],
    )
    .await;
    wait_rolled_out(&env, "agent", IMG1, nodes.len()).await;
    wait_applied(&nw, &c1).await;

    // The unsigned head is fetched (and rejected) before the restart, so the
    // restarted nodewave finds it as the head of its local clone.
    let c2 = repo.commit(
        &Sign::No,
        "agent 2, unsigned",
        &[("agent.yaml", &ds_yaml(&env, "agent", IMG2))],
    );
    wait_rejected(&nw, &c2, "unsigned").await;

    // Restart with the remote gone: only the cached head is there to load.
    let away = tempfile::tempdir().unwrap();
    let moved = away.path().join("repo");
    std::fs::rename(repo.path(), &moved).unwrap();
    nw.restart().await;
    wait_for(
        "the cached head rejected again, the remote unreachable",
        Duration::from_mins(1),
        || async {
            let st = nw.status().await;
            let first = st["rejected_errors"][0].as_str().unwrap_or_default();
            if st["rejected_commit"].as_str() == Some(c2.as_str())
                && first.starts_with("unsigned: ")
                && st["last_fetch_error"].is_string()
            {
                Ok(Some(()))
            } else {
                Err(st.to_string())
            }
        },
    )
    .await;
    assert_stays(&env, IMG1, "the unverified cached head must not be applied").await;
    let logs = nw.logs();
    let after_restart = logs.rsplit("starting nodewave").next().unwrap();
    assert!(
        after_restart.contains("loaded the last fetched commit from the local clone")
            && after_restart.contains("commit signature not verified"),
        "{after_restart}"
    );
    assert_eq!(
        support::record::get(&env, "agent")
            .await
            .unwrap()
            .applied
            .as_ref(),
        Some(&c1)
    );
    std::fs::rename(&moved, repo.path()).unwrap();
}
