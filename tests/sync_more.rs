//! More GitOps sync acceptance against the real local control plane and the real
//! `nodewave` binary: pruning (and what is never pruned), rejected commits, force
//! pushes, a remote that goes away and comes back, secrets kept out of every output,
//! and `/readyz`.

// A failed setup step should just fail the test; counters are small integers,
// exact in f64.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::float_cmp)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use support::gitops::*;
use support::nodewave::{GitRepo, Nodewave, commit_in, nodewave_annotations};
use support::record;
use support::*;

const IMG1: &str = "registry.example/agent:1.0.0";
const IMG2: &str = "registry.example/agent:2.0.0";

/// Pod UIDs of a DaemonSet, by node (only the pods it owns).
async fn pod_uids(env: &TestEnv, ds: &DaemonSet) -> BTreeMap<String, String> {
    let uid = ds.metadata.uid.clone().unwrap();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = env.api();
    pods.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| {
            p.metadata
                .owner_references
                .as_ref()
                .is_some_and(|o| o.iter().any(|o| o.uid == uid))
                && p.metadata.deletion_timestamp.is_none()
        })
        .filter_map(|p| Some((p.spec?.node_name?, p.metadata.uid?)))
        .collect()
}

/// What must not change on an object nodewave does not own.
fn fingerprint(ds: &DaemonSet) -> (String, String, String, String) {
    (
        ds.metadata.uid.clone().unwrap_or_default(),
        ds.metadata.resource_version.clone().unwrap_or_default(),
        format!("{:?}", ds.metadata.annotations),
        format!("{:?}", ds.metadata.labels),
    )
}

async fn events_with_reason(env: &TestEnv, reason: &str) -> Vec<Event> {
    let api: Api<Event> = env.api();
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

fn regarding(e: &Event) -> String {
    let r = e.regarding.clone().unwrap_or_default();
    format!(
        "{}/{}",
        r.kind.unwrap_or_default(),
        r.name.unwrap_or_default()
    )
}

/// Waits until `/status` says nodewave applied `commit`.
async fn wait_applied(nw: &Nodewave, commit: &str) -> Value {
    wait_for(
        &format!("/status applied_commit {commit}"),
        Duration::from_secs(90),
        || async {
            let st = nw.status().await;
            if st["applied_commit"].as_str() == Some(commit) {
                Ok(Some(st))
            } else {
                Err(st.to_string())
            }
        },
    )
    .await
}

async fn wait_metric_at_least(nw: &Nodewave, series: &str, min: f64) -> f64 {
    wait_for(
        &format!("{series} >= {min}"),
        Duration::from_secs(90),
        || async {
            match nw.metric(series).await {
                Some(v) if v >= min => Ok(Some(v)),
                v => Err(format!("{v:?}")),
            }
        },
    )
    .await
}

/// A DaemonSet the test creates itself, with the managed DaemonSet's `app` label,
/// plus `extra_labels`/`annotations` on its metadata.
fn unmanaged_ds(env: &TestEnv, name: &str, extra_labels: &Value, annotations: &Value) -> Value {
    let mut ds = daemonset(env, name, IMG1);
    let mut labels = json!({"app": "agent"});
    for (k, v) in extra_labels.as_object().unwrap() {
        labels[k] = v.clone();
    }
    ds["metadata"]["labels"] = labels;
    ds["metadata"]["annotations"] = annotations.clone();
    // Selects on `app: agent` too, plus its own label so the controllers keep apart.
    ds["spec"]["selector"] = json!({"matchLabels": {"app": "agent", "copy": name}});
    ds["spec"]["template"]["metadata"]["labels"] = json!({"app": "agent", "copy": name});
    ds
}

/// Acceptance 1: a DaemonSet removed from Git is pruned; DaemonSets nodewave did
/// not apply from this source are never touched, even with the same `app` label or
/// nodewave's managed-by label (another nodewave instance's); with `--no-prune` a
/// removed DaemonSet stays.
#[tokio::test]
async fn removed_daemonset_is_pruned_unmanaged_ones_never_and_no_prune_keeps_it() {
    let mut env = TestEnv::new("prune").await;
    let nodes = env.create_nodes(&["pool-a"], 2).await;

    // Created directly, not via nodewave: a plain one and one that carries
    // nodewave's managed-by label but comes from another repository.
    let plain = env
        .apply_daemonset(&unmanaged_ds(&env, "agent-manual", &json!({}), &json!({})))
        .await;
    let foreign = env
        .apply_daemonset(&unmanaged_ds(
            &env,
            "agent-foreign",
            &json!({"app.kubernetes.io/managed-by": "nodewave"}),
            &json!({"nodewave.io/source-repo": "file:///somewhere/else", "nodewave.io/source-path": ""}),
        ))
        .await;

    let repo = GitRepo::new();
    let c1 = repo.commit(
        "two agents",
        &[
            ("agent.yaml", Some(&ds_yaml(&env, "agent", IMG1))),
            ("other.yaml", Some(&ds_yaml(&env, "other", IMG1))),
        ],
    );
    let mut nw = Nodewave::start(
        &repo.url(),
        &["--poll-interval", "1s", "--allow-namespace", &env.ns],
    )
    .await;
    wait_rolled_out(&env, "agent", IMG1, nodes.len()).await;
    wait_rolled_out(&env, "other", IMG1, nodes.len()).await;
    wait_status(&env, "agent", "Synced", Duration::from_mins(1)).await;
    wait_status(&env, "other", "Synced", Duration::from_mins(1)).await;
    wait_applied(&nw, &c1).await;

    // Let the controller settle the unmanaged ones (status updates bump their
    // resourceVersion), then take their fingerprints.
    let unmanaged = ["agent-manual", "agent-foreign"];
    let mut before = BTreeMap::new();
    for name in unmanaged {
        let ds = wait_for(
            &format!("{name} scheduled on {} nodes", nodes.len()),
            Duration::from_mins(1),
            || async {
                let ds = get_ds(&env, name).await.unwrap();
                let uids = pod_uids(&env, &ds).await;
                let st = ds.status.clone().unwrap_or_default();
                if uids.len() == nodes.len()
                    && st.number_ready == i32::try_from(nodes.len()).unwrap()
                    && st.observed_generation == ds.metadata.generation
                {
                    Ok(Some(ds))
                } else {
                    Err(format!("pods {uids:?}, status {st:?}"))
                }
            },
        )
        .await;
        let uids = pod_uids(&env, &ds).await;
        before.insert(name, (fingerprint(&ds), uids));
    }
    assert_eq!(
        before["agent-manual"].0.0,
        plain.metadata.uid.clone().unwrap()
    );
    assert_eq!(
        before["agent-foreign"].0.0,
        foreign.metadata.uid.clone().unwrap()
    );

    let removed_at = Instant::now();
    let c2 = repo.commit("remove other", &[("other.yaml", None)]);
    wait_for("other pruned", Duration::from_secs(90), || async {
        match get_ds(&env, "other").await {
            None => Ok(Some(())),
            Some(ds) => Err(format!("still there: {:?}", nodewave_annotations(&ds))),
        }
    })
    .await;
    eprintln!(
        "commit removing other -> pruned in {:?}",
        removed_at.elapsed()
    );
    wait_for("other's pods gone", Duration::from_secs(90), || async {
        let pods = env.pods_by_node("other").await;
        if pods.is_empty() {
            Ok(Some(()))
        } else {
            Err(debug_pods(&pods))
        }
    })
    .await;
    wait_applied(&nw, &c2).await;
    // A few more passes (poll 1s, rollout tick 500ms) to give a wrong prune a chance.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let _agent = get_ds(&env, "agent").await.expect("agent stays");
    assert_eq!(
        record::get(&env, "agent").await.unwrap().applied.as_ref(),
        Some(&c2)
    );
    for name in unmanaged {
        let ds = get_ds(&env, name)
            .await
            .unwrap_or_else(|| panic!("{name} was deleted"));
        assert_eq!(
            (fingerprint(&ds), pod_uids(&env, &ds).await),
            before[name],
            "{name} must be untouched (uid, resourceVersion, annotations, labels, pods)"
        );
    }
    let logs = nw.logs();
    assert!(
        logs.contains("DaemonSet removed from Git: pruning") && logs.contains("/other"),
        "the prune is logged"
    );
    assert!(
        !logs.contains("agent-manual") && !logs.contains("agent-foreign"),
        "nodewave never even mentions the DaemonSets it does not own"
    );

    // --no-prune: the same service restarted with pruning off keeps a removed DaemonSet.
    nw.kill();
    let nw = Nodewave::start(
        &repo.url(),
        &[
            "--poll-interval",
            "1s",
            "--allow-namespace",
            &env.ns,
            "--no-prune",
        ],
    )
    .await;
    wait_applied(&nw, &c2).await;
    let agent_before = get_ds(&env, "agent").await.unwrap();
    let agent_pods = pod_uids(&env, &agent_before).await;
    let c3 = repo.commit("remove agent", &[("agent.yaml", None)]);
    wait_applied(&nw, &c3).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let agent = get_ds(&env, "agent")
        .await
        .expect("with --no-prune a DaemonSet removed from Git stays");
    assert_eq!(agent.metadata.uid, agent_before.metadata.uid);
    assert_eq!(pod_uids(&env, &agent).await, agent_pods, "its pods too");
    for name in unmanaged {
        assert!(get_ds(&env, name).await.is_some(), "{name} still there");
    }
    assert!(!nw.logs().contains("pruning"), "{}", nw.logs());
}

/// `ds_yaml` with the `matchLabels` value turned into an unclosed flow sequence.
/// Returns the manifest and the line the parser reports (the next key's line).
fn yaml_syntax_error(env: &TestEnv, name: &str) -> (String, usize) {
    let good = ds_yaml(env, name, IMG1);
    let needle = format!("    matchLabels:\n      app: {name}\n");
    assert!(good.contains(&needle));
    let bad = good.replacen(
        &needle,
        &format!("    matchLabels:\n      app: [{name}\n"),
        1,
    );
    let broken_line = bad
        .lines()
        .position(|l| l.contains(&format!("[{name}")))
        .unwrap()
        + 1;
    (bad, broken_line + 1)
}

/// `ds_yaml` with a misspelt container field; returns it and the typo's line.
fn unknown_field(env: &TestEnv, name: &str) -> (String, usize) {
    let good = ds_yaml(env, name, IMG1);
    let image_line = format!("          image: {IMG1}\n");
    let bad = good.replacen(
        &image_line,
        &format!("{image_line}          imagePullPolcy: Always\n"),
        1,
    );
    let line = bad
        .lines()
        .position(|l| l.contains("imagePullPolcy"))
        .unwrap()
        + 1;
    (bad, line)
}

/// Acceptance 2: a commit with one invalid document among valid ones changes
/// nothing (its valid change is not applied either) and says where the error is,
/// in `/status`, the logs, an Event on the managed DaemonSets and the
/// `nodewave_commit_rejected_total` metric; the next valid commit is applied.
#[tokio::test]
async fn commit_with_one_invalid_document_changes_nothing_and_reports_file_and_line() {
    let mut env = TestEnv::new("reject").await;
    let nodes = env.create_nodes(&["pool-a"], 2).await;
    let repo = GitRepo::new();
    let c1 = repo.commit(
        "agent",
        &[("agent.yaml", Some(&ds_yaml(&env, "agent", IMG1)))],
    );
    let nw = Nodewave::start(
        &repo.url(),
        &["--poll-interval", "1s", "--allow-namespace", &env.ns],
    )
    .await;
    wait_rolled_out(&env, "agent", IMG1, nodes.len()).await;
    let ds = wait_status(&env, "agent", "Synced", Duration::from_mins(1)).await;
    let pods_before = pod_uids(&env, &ds).await;
    let generation = ds.metadata.generation;

    let (syntax, syntax_line) = yaml_syntax_error(&env, "second");
    let (typo, typo_line) = unknown_field(&env, "second");
    let cases = [
        ("yaml-syntax", syntax, syntax_line),
        ("unknown-field", typo, typo_line),
    ];
    for (round, (check, content, line)) in cases.iter().enumerate() {
        let round = round + 1;
        // The valid change (a new image for agent) and the invalid second file in
        // one commit.
        let bad = repo.commit(
            &format!("bump agent, add a broken second ({check})"),
            &[
                ("agent.yaml", Some(&ds_yaml(&env, "agent", IMG2))),
                ("second.yaml", Some(content)),
            ],
        );
        let where_ = format!("second.yaml:{line}");
        let st = wait_for(
            &format!("/status rejected_commit {bad}"),
            Duration::from_mins(1),
            || async {
                let st = nw.status().await;
                if st["rejected_commit"].as_str() == Some(bad.as_str()) {
                    Ok(Some(st))
                } else {
                    Err(st.to_string())
                }
            },
        )
        .await;
        let errors: Vec<String> = serde_json::from_value(st["rejected_errors"].clone()).unwrap();
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with(&format!("{where_}: error[{check}]"))),
            "{errors:#?}"
        );
        assert_eq!(st["applied_commit"].as_str(), Some(c1.as_str()), "{st}");

        let series = format!(r#"nodewave_commit_rejected_total{{reason="{check}"}}"#);
        assert_eq!(wait_metric_at_least(&nw, &series, 1.0).await, 1.0);

        let events = wait_for(
            "a CommitRejected Event on agent naming file and line",
            Duration::from_secs(30),
            || async {
                let evs = events_with_reason(&env, "CommitRejected").await;
                let matching: Vec<Event> = evs
                    .iter()
                    .filter(|e| {
                        e.note
                            .as_deref()
                            .is_some_and(|n| n.contains(&where_) && n.contains(&bad[..12]))
                    })
                    .cloned()
                    .collect();
                if matching.is_empty() {
                    Err(format!(
                        "{:?}",
                        evs.iter()
                            .map(|e| (regarding(e), e.note.clone()))
                            .collect::<Vec<_>>()
                    ))
                } else {
                    Ok(Some(matching))
                }
            },
        )
        .await;
        assert!(
            events.iter().all(|e| regarding(e) == "DaemonSet/agent"
                && e.type_.as_deref() == Some("Warning")),
            "{:?}",
            events.iter().map(regarding).collect::<Vec<_>>()
        );
        let logs = nw.logs();
        assert!(
            logs.lines()
                .any(|l| l.contains("commit rejected") && l.contains(&where_)),
            "the logs name file and line"
        );

        // Several more passes: still nothing applied.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let ds = get_ds(&env, "agent").await.unwrap();
        assert_eq!(
            image_of(&ds),
            IMG1,
            "round {round}: the valid change must not be applied"
        );
        assert_eq!(ds.metadata.generation, generation);
        assert_eq!(
            record::get(&env, "agent").await.unwrap().applied.as_ref(),
            Some(&c1)
        );
        assert_eq!(pod_uids(&env, &ds).await, pods_before, "no pod replaced");
        assert!(get_ds(&env, "second").await.is_none());
        assert!(env.pods_by_node("second").await.is_empty());
    }

    // The fix: the same valid change without the broken file is applied normally.
    let fixed = repo.commit("drop the broken second", &[("second.yaml", None)]);
    wait_rolled_out(&env, "agent", IMG2, nodes.len()).await;
    let ds = wait_status(&env, "agent", "Synced", Duration::from_mins(1)).await;
    let _ = &ds;
    assert_eq!(
        record::get(&env, "agent").await.unwrap().last_good.as_ref(),
        Some(&fixed)
    );
    let st = wait_applied(&nw, &fixed).await;
    assert!(st["rejected_commit"].is_null(), "{st}");
    assert_eq!(st["rejected_errors"], json!([]), "{st}");
}

/// When no DaemonSet is managed yet there is none to carry the Event: it is
/// published on the namespace the rejected commit's objects name instead.
#[tokio::test]
async fn rejected_first_commit_is_reported_on_the_namespace() {
    let env = TestEnv::new("reject-first").await;
    let repo = GitRepo::new();
    let (typo, line) = unknown_field(&env, "agent");
    let bad = repo.commit("agent with a typo", &[("agent.yaml", Some(&typo))]);
    let nw = Nodewave::start(
        &repo.url(),
        &["--poll-interval", "1s", "--allow-namespace", &env.ns],
    )
    .await;
    let where_ = format!("agent.yaml:{line}");
    let events = wait_for(
        "a CommitRejected Event on the namespace",
        Duration::from_mins(1),
        || async {
            let evs = events_with_reason(&env, "CommitRejected").await;
            if evs.is_empty() {
                Err(nw.status().await.to_string())
            } else {
                Ok(Some(evs))
            }
        },
    )
    .await;
    assert!(
        events
            .iter()
            .any(|e| regarding(e) == format!("Namespace/{}", env.ns)
                && e.note
                    .as_deref()
                    .is_some_and(|n| n.contains(&where_) && n.contains(&bad[..12]))),
        "{:?}",
        events
            .iter()
            .map(|e| (regarding(e), e.note.clone()))
            .collect::<Vec<_>>()
    );
    let st = nw.status().await;
    assert_eq!(st["rejected_commit"].as_str(), Some(bad.as_str()));
    assert!(get_ds(&env, "agent").await.is_none());
}

/// Acceptance 3: a force-push to an older history is followed.
#[tokio::test]
async fn force_push_to_older_history_is_followed() {
    let mut env = TestEnv::new("force-push").await;
    let nodes = env.create_nodes(&["pool-a"], 2).await;
    let repo = GitRepo::new();
    let c1 = repo.commit(
        "agent 1",
        &[("agent.yaml", Some(&ds_yaml(&env, "agent", IMG1)))],
    );
    let nw = Nodewave::start(
        &repo.url(),
        &["--poll-interval", "1s", "--allow-namespace", &env.ns],
    )
    .await;
    wait_rolled_out(&env, "agent", IMG1, nodes.len()).await;
    wait_status(&env, "agent", "Synced", Duration::from_mins(1)).await;
    let c2 = repo.commit(
        "agent 2",
        &[("agent.yaml", Some(&ds_yaml(&env, "agent", IMG2)))],
    );
    wait_rolled_out(&env, "agent", IMG2, nodes.len()).await;
    wait_applied(&nw, &c2).await;
    assert_eq!(nw.metric("nodewave_git_force_push_total").await, Some(0.0));

    let pushed = Instant::now();
    repo.force_reset(&c1);
    assert_eq!(repo.head(), c1);
    wait_rolled_out(&env, "agent", IMG1, nodes.len()).await;
    let ds = wait_status(&env, "agent", "Synced", Duration::from_mins(1)).await;
    eprintln!(
        "force-push -> older content rolled out in {:?}",
        pushed.elapsed()
    );
    let r = record::get(&env, "agent").await.unwrap();
    assert_eq!(r.applied.as_ref(), Some(&c1));
    assert_eq!(r.last_good.as_ref(), Some(&c1));
    assert_eq!(image_of(&ds), IMG1);
    let st = wait_applied(&nw, &c1).await;
    assert_eq!(st["head"].as_str(), Some(c1.as_str()));
    assert_eq!(nw.metric("nodewave_git_force_push_total").await, Some(1.0));
    let logs = nw.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("history was rewritten"))
        .expect("a log line about the rewrite");
    assert!(line.contains(&c2) && line.contains(&c1), "{line}");
}

/// A force-push while nodewave was down, seen by a replica whose new clone never
/// had the rewritten-away commit the record names: once a fetch made after it
/// read the record confirms the branch no longer has that commit, Git's older
/// content rolls out (a replica that merely lags would have found it).
#[tokio::test]
async fn force_push_while_down_is_followed_by_a_new_clone() {
    let mut env = TestEnv::new("force-down").await;
    let nodes = env.create_nodes(&["pool-a"], 2).await;
    let repo = GitRepo::new();
    let c1 = repo.commit(
        "agent 1",
        &[("agent.yaml", Some(&ds_yaml(&env, "agent", IMG1)))],
    );
    let args = [
        "--poll-interval",
        "1s",
        "--allow-namespace",
        env.ns.as_str(),
    ];
    let mut nw = Nodewave::start(&repo.url(), &args).await;
    wait_rolled_out(&env, "agent", IMG1, nodes.len()).await;
    let c2 = repo.commit(
        "agent 2",
        &[("agent.yaml", Some(&ds_yaml(&env, "agent", IMG2)))],
    );
    wait_rolled_out(&env, "agent", IMG2, nodes.len()).await;
    wait_applied(&nw, &c2).await;
    nw.kill();

    repo.force_reset(&c1);
    // A new state directory: the clone is made from the rewritten branch.
    let nw = Nodewave::start(&repo.url(), &args).await;
    wait_rolled_out(&env, "agent", IMG1, nodes.len()).await;
    wait_status(&env, "agent", "Synced", Duration::from_mins(1)).await;
    let r = record::get(&env, "agent").await.unwrap();
    assert_eq!(r.applied.as_ref(), Some(&c1), "{}", nw.logs());
}

/// Acceptance 4: while the remote is away nothing changes in the cluster, fetch
/// errors are counted and shown, `/readyz` stays 200 (it was reached before; see
/// `server::readyz`), also after a restart while away; a commit pushed while away
/// is applied after the return.
#[tokio::test]
async fn remote_away_changes_nothing_and_sync_resumes_when_it_returns() {
    let mut env = TestEnv::new("remote-away").await;
    let nodes = env.create_nodes(&["pool-a"], 2).await;
    let repo = GitRepo::new();
    let c1 = repo.commit(
        "agent 1",
        &[("agent.yaml", Some(&ds_yaml(&env, "agent", IMG1)))],
    );
    let mut nw = Nodewave::start(
        &repo.url(),
        &["--poll-interval", "1s", "--allow-namespace", &env.ns],
    )
    .await;
    wait_rolled_out(&env, "agent", IMG1, nodes.len()).await;
    let ds = wait_status(&env, "agent", "Synced", Duration::from_mins(1)).await;
    wait_applied(&nw, &c1).await;
    assert_eq!(nw.readyz().await.0, 200);
    let pods_before = pod_uids(&env, &ds).await;
    let generation = ds.metadata.generation;
    let errors_before = nw
        .metric(r#"nodewave_git_fetch_total{result="error"}"#)
        .await
        .unwrap_or(0.0);

    let away = repo.path().with_extension("away");
    std::fs::rename(repo.path(), &away).unwrap();
    let gone = Instant::now();
    // A commit is pushed while nodewave cannot see the remote.
    let c2 = commit_in(
        &away,
        "agent 2",
        &[("agent.yaml", Some(&ds_yaml(&env, "agent", IMG2)))],
    );
    let errors = wait_metric_at_least(
        &nw,
        r#"nodewave_git_fetch_total{result="error"}"#,
        errors_before + 3.0,
    )
    .await;
    eprintln!(
        "fetch errors while away: {errors} after {:?}",
        gone.elapsed()
    );
    let st = nw.status().await;
    let err = st["last_fetch_error"].as_str().unwrap_or_default();
    assert!(!err.is_empty(), "{st}");
    assert_eq!(st["head"].as_str(), Some(c1.as_str()), "{st}");
    assert_eq!(st["applied_commit"].as_str(), Some(c1.as_str()), "{st}");
    let (code, body) = nw.readyz().await;
    assert_eq!(code, 200, "reached before: stays ready while away: {body}");
    let ds = get_ds(&env, "agent").await.unwrap();
    assert_eq!(image_of(&ds), IMG1);
    assert_eq!(ds.metadata.generation, generation);
    assert_eq!(pod_uids(&env, &ds).await, pods_before, "pods untouched");
    assert!(
        nw.logs()
            .contains("git fetch failed; keeping what is deployed"),
        "the outage is logged"
    );

    // Restarted while the remote is away: works from the local clone, becomes
    // ready, still changes nothing.
    nw.restart().await;
    let restarted = Instant::now();
    wait_for(
        "/readyz 200 after a restart while away",
        Duration::from_mins(1),
        || async {
            match nw.readyz().await {
                (200, _) => Ok(Some(())),
                (code, body) => Err(format!("{code} {body}")),
            }
        },
    )
    .await;
    eprintln!("restart while away -> ready in {:?}", restarted.elapsed());
    let st = nw.status().await;
    assert_eq!(st["git_reached"], json!(false), "{st}");
    assert!(st["last_fetch_error"].is_string(), "{st}");
    assert_eq!(st["applied_commit"].as_str(), Some(c1.as_str()), "{st}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ds = get_ds(&env, "agent").await.unwrap();
    assert_eq!(image_of(&ds), IMG1);
    assert_eq!(ds.metadata.generation, generation);
    assert_eq!(pod_uids(&env, &ds).await, pods_before, "pods untouched");

    std::fs::rename(&away, repo.path()).unwrap();
    let back = Instant::now();
    wait_rolled_out(&env, "agent", IMG2, nodes.len()).await;
    let ds = wait_status(&env, "agent", "Synced", Duration::from_mins(1)).await;
    eprintln!(
        "remote back -> commit pushed while away rolled out in {:?}",
        back.elapsed()
    );
    let _ = &ds;
    assert_eq!(
        record::get(&env, "agent").await.unwrap().applied.as_ref(),
        Some(&c2)
    );
    let st = wait_applied(&nw, &c2).await;
    assert!(st["last_fetch_error"].is_null(), "{st}");
    assert_eq!(nw.readyz().await.0, 200);
}

/// Acceptance 6: the Git token and the webhook secret never appear in the logs,
/// `/status` or `/metrics`, even at debug level and after a webhook with a bad
/// signature.
#[tokio::test]
async fn secrets_never_appear_in_logs_status_or_metrics() {
    let mut env = TestEnv::new("secrets").await;
    let nodes = env.create_nodes(&["pool-a"], 1).await;
    let repo = GitRepo::new();
    repo.commit(
        "agent",
        &[("agent.yaml", Some(&ds_yaml(&env, "agent", IMG1)))],
    );
    let token = "nwtok-3f9c1d7e5b2a4c6e8f0a1b2c3d4e5f6a";
    let hook = "nwhook-9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d";
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let hook_file = dir.path().join("hook");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    std::fs::write(&hook_file, format!("{hook}\n")).unwrap();
    let nw = Nodewave::start(
        &repo.url(),
        &[
            "--poll-interval",
            "1s",
            "--allow-namespace",
            &env.ns,
            "--git-token-file",
            token_file.to_str().unwrap(),
            "--git-username",
            "nwuser",
            "--webhook-secret-file",
            hook_file.to_str().unwrap(),
            "--log-level",
            "debug",
        ],
    )
    .await;
    wait_rolled_out(&env, "agent", IMG1, nodes.len()).await;
    wait_status(&env, "agent", "Synced", Duration::from_mins(1)).await;

    let http = reqwest::Client::new();
    let body = json!({"ref": "refs/heads/main", "after": repo.head()}).to_string();
    for (header, value) in [
        (
            "X-Hub-Signature-256",
            format!("sha256={}", hex::encode([7u8; 32])),
        ),
        // A GitLab token that is the secret with one character changed.
        ("X-Gitlab-Token", format!("{}x", &hook[..hook.len() - 1])),
    ] {
        let r = http
            .post(nw.url("/webhook"))
            .header(header, value)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let text = r.text().await.unwrap();
        assert!(!text.contains(hook) && !text.contains(token), "{text}");
    }
    wait_metric_at_least(
        &nw,
        r#"nodewave_webhook_requests_total{provider="github",result="bad_signature"}"#,
        1.0,
    )
    .await;
    // A few fetches with the credentials configured.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let logs = nw.logs();
    assert!(logs.contains("webhook refused"), "the refusal is logged");
    let status = nw.status().await.to_string();
    let metrics = nw.metrics().await;
    // The readable part of each secret too, in case something cut or quoted it.
    for secret in [token, hook, &token[6..20], &hook[7..21]] {
        for (what, text) in [("log", &logs), ("/status", &status), ("/metrics", &metrics)] {
            assert!(!text.contains(secret), "{what} contains a secret");
        }
    }
    eprintln!("checked {} log lines", logs.lines().count());
}

/// Acceptance 7: `/readyz` is 503 until nodewave has reached Git and compared it
/// with the cluster once, then 200.
#[tokio::test]
async fn readyz_is_503_until_the_first_successful_sync() {
    let env = TestEnv::new("readyz").await;
    let repo = GitRepo::new();
    repo.commit(
        "agent",
        &[("agent.yaml", Some(&ds_yaml(&env, "agent", IMG1)))],
    );
    // Start with the repository out of reach so "before" lasts long enough to see.
    let away = repo.path().with_extension("notyet");
    std::fs::rename(repo.path(), &away).unwrap();
    let nw = Nodewave::start(
        &repo.url(),
        &["--poll-interval", "1s", "--allow-namespace", &env.ns],
    )
    .await;
    wait_metric_at_least(&nw, r#"nodewave_git_fetch_total{result="error"}"#, 1.0).await;
    let (code, body) = nw.readyz().await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("Git not reached yet"), "{body}");
    let st = nw.status().await;
    assert_eq!(st["synced_once"], json!(false), "{st}");
    assert!(st["last_fetch_error"].is_string(), "{st}");

    std::fs::rename(&away, repo.path()).unwrap();
    let back = Instant::now();
    wait_for("/readyz 200", Duration::from_mins(1), || async {
        match nw.readyz().await {
            (200, _) => Ok(Some(())),
            (code, body) => Err(format!("{code} {body}")),
        }
    })
    .await;
    eprintln!("repo reachable -> ready in {:?}", back.elapsed());
    let st = nw.status().await;
    assert_eq!(st["synced_once"], json!(true), "{st}");
    assert!(get_ds(&env, "agent").await.is_some());
}
