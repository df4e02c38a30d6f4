//! A Git remote that accepts connections and never answers (a tarpit) must not
//! stop anything: a rollout in progress finishes, a failing one rolls back (the
//! last good commit is read from the local clone), and each hanging fetch is
//! stopped at `--fetch-timeout` and counted as an error.
//!
//! The remote is Git's own `git daemon` behind a TCP proxy of the test's, which
//! can switch from forwarding to holding every new connection silently.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::gitops::{get_ds, image_of, wait_rolled_out};
use support::nodewave::{GitRepo, Nodewave, free_port};
use support::record;
use support::rollout::*;
use support::*;
use tokio::net::{TcpListener, TcpStream};

const V1: &str = "registry.example/agent-slowready:1.0.0";
const V2: &str = "registry.example/agent-slowready:2.0.0";
const BAD: &str = "registry.example/agent-neverready:3.0.0";

/// `git daemon` serving the directory holding the test's repository.
struct GitDaemon {
    child: Child,
    port: u16,
}

impl GitDaemon {
    fn start(base: &std::path::Path) -> Self {
        let port = free_port();
        let child = Command::new("git")
            .args([
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", base.display()),
                &base.display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon (Debian's git package) must be installed");
        Self { child, port }
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Forwards to `target` until `tarpit` is set; then accepts and holds every new
/// connection without a byte either way.
async fn proxy(listener: TcpListener, target: u16, tarpit: Arc<AtomicBool>) {
    let mut held = Vec::new();
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            return;
        };
        if tarpit.load(Ordering::SeqCst) {
            held.push(inbound);
            continue;
        }
        tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

fn policy(env: &TestEnv) -> String {
    policy_yaml(
        env,
        "agent",
        "  stages:\n    - {name: a, pools: [pool-a], maxUnavailable: 1, bake: 3s}\n    - {name: b, pools: [pool-b], maxUnavailable: 1, bake: 3s}\n    - {name: c, pools: [pool-c], maxUnavailable: 1}\n  health:\n    readyTimeout: 10s\n",
    )
}

#[tokio::test]
async fn a_hanging_remote_delays_no_rollout_and_no_rollback() {
    let mut env = TestEnv::new("fetch-hang").await;
    let nodes = env.create_nodes(&["pool-a", "pool-b", "pool-c"], 1).await;
    let repo = GitRepo::new();
    let file = |image: &str| {
        format!(
            "{}{}",
            agent_yaml(&env, "agent", image, Some(1500)),
            policy(&env)
        )
    };
    let c1 = repo.commit("v1", &[("agent.yaml", Some(&file(V1)))]);
    let base = repo.path().parent().unwrap().to_path_buf();
    let name = repo
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let daemon = GitDaemon::start(&base);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_port = listener.local_addr().unwrap().port();
    let tarpit = Arc::new(AtomicBool::new(false));
    let proxy_task = tokio::spawn(proxy(listener, daemon.port, tarpit.clone()));
    let url = format!("git://127.0.0.1:{proxy_port}/{name}");
    let nw = Nodewave::start(
        &url,
        &[
            "--poll-interval",
            "1s",
            "--fetch-timeout",
            "3s",
            "--allow-namespace",
            &env.ns,
        ],
    )
    .await;
    record::wait_commit_status(&env, "agent", &c1, "Synced", Duration::from_mins(2)).await;
    wait_rolled_out(&env, "agent", V1, nodes.len()).await;

    // A good change starts rolling out; then the remote turns into a tarpit.
    let c2 = repo.commit("v2", &[("agent.yaml", Some(&file(V2)))]);
    wait_for(
        "the rollout of v2 started",
        Duration::from_mins(1),
        || async {
            let r = record::get(&env, "agent").await.ok_or("no record")?;
            if r.applied.as_deref() == Some(c2.as_str())
                && r.rollout_phase != "Applying"
                && !r.rollout_phase.is_empty()
            {
                Ok(Some(()))
            } else {
                Err(format!("{} {}", r.status, r.rollout_phase))
            }
        },
    )
    .await;
    tarpit.store(true, Ordering::SeqCst);
    let hung_at = Instant::now();
    let errors = r#"nodewave_git_fetch_total{result="error"}"#;
    record::wait_commit_status(&env, "agent", &c2, "Synced", Duration::from_mins(2)).await;
    eprintln!(
        "rollout finished {:?} after the remote started hanging",
        hung_at.elapsed()
    );
    wait_for("a fetch timed out", Duration::from_secs(30), || async {
        let st = nw.status().await;
        let e = st["last_fetch_error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if e.contains("did not finish within 3s") && metric0(&nw, errors).await >= 1.0 {
            Ok(Some(()))
        } else {
            Err(format!("last_fetch_error {e:?}"))
        }
    })
    .await;

    // A failing change (never Ready: the gate fails after the 10 s ready timeout):
    // it starts while the remote answers, then the remote hangs again; the
    // rollback reads the last good commit from the clone.
    tarpit.store(false, Ordering::SeqCst);
    let c3 = repo.commit("bad", &[("agent.yaml", Some(&file(BAD)))]);
    wait_for(
        "the rollout of the bad commit started",
        Duration::from_mins(1),
        || async {
            let r = record::get(&env, "agent").await.ok_or("no record")?;
            if r.applied.as_deref() == Some(c3.as_str()) {
                Ok(Some(()))
            } else {
                Err(format!("{r:?}"))
            }
        },
    )
    .await;
    tarpit.store(true, Ordering::SeqCst);
    let hung_at = Instant::now();
    let r = record::wait_status(&env, "agent", "RolledBack", Duration::from_mins(2)).await;
    eprintln!(
        "failing rollout rolled back {:?} after the remote started hanging",
        hung_at.elapsed()
    );
    assert!(r.failed_contains(&c3), "{r:?}");
    assert_eq!(image_of(&get_ds(&env, "agent").await.unwrap()), V2);
    wait_rolled_out(&env, "agent", V2, nodes.len()).await;
    // And the fetches kept timing out meanwhile, each one counted.
    let before = metric0(&nw, errors).await;
    wait_for(
        "more fetches timed out",
        Duration::from_secs(30),
        || async {
            let now = metric0(&nw, errors).await;
            if now > before {
                Ok(Some(()))
            } else {
                Err(format!("{now}"))
            }
        },
    )
    .await;
    proxy_task.abort();
}
