//! Runs the real `nodewave` binary against the local cluster and a Git repository
//! the test builds, and reads its HTTP endpoints and logs.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use git2::{Oid, Repository, Signature};

use super::{kubeconfig_path, wait_for};

/// A Git repository on disk that the test commits to (the "remote" nodewave pulls).
pub struct GitRepo {
    pub dir: tempfile::TempDir,
    repo: Repository,
}

impl GitRepo {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        repo.set_head("refs/heads/main").unwrap();
        Self { dir, repo }
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.dir.path().display())
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes (Some) or removes (None) files and commits them on main.
    pub fn commit(&self, message: &str, files: &[(&str, Option<&str>)]) -> String {
        commit_in(self.dir.path(), message, files)
    }

    /// Moves main to an older commit, as a force-push would, and resets the files.
    pub fn force_reset(&self, commit: &str) {
        let obj = self
            .repo
            .find_object(Oid::from_str(commit).unwrap(), None)
            .unwrap();
        self.repo.reset(&obj, git2::ResetType::Hard, None).unwrap();
    }

    pub fn head(&self) -> String {
        self.repo.head().unwrap().target().unwrap().to_string()
    }
}

/// Commits on main in the repository whose work tree is `dir` (opened afresh, so it
/// also works after the test moved the directory away from `GitRepo::path`).
pub fn commit_in(dir: &Path, message: &str, files: &[(&str, Option<&str>)]) -> String {
    let repo = Repository::open(dir).unwrap();
    for (path, content) in files {
        let p = dir.join(path);
        match content {
            Some(c) => {
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, c).unwrap();
            }
            None => {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    let mut index = repo.index().unwrap();
    index
        .add_all(["*"].iter(), git2::IndexAddOption::DEFAULT, None)
        .unwrap();
    index.update_all(["*"].iter(), None).unwrap();
    index.write().unwrap();
    let tree_id = index.write_tree().unwrap();
    let tree = repo.find_tree(tree_id).unwrap();
    let sig = Signature::now("nodewave tests", "tests@nodewave.invalid").unwrap();
    let parent = repo
        .head()
        .ok()
        .and_then(|h| h.target())
        .map(|oid| repo.find_commit(oid).unwrap());
    let parents: Vec<&git2::Commit> = parent.iter().collect();
    let oid = repo
        .commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)
        .unwrap();
    oid.to_string()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `nodewave run`.
pub struct Nodewave {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub log_path: PathBuf,
    args: Vec<String>,
    _state: tempfile::TempDir,
    state_dir: PathBuf,
    env: Vec<(String, String)>,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_nodewave")
}

impl Nodewave {
    /// Starts `nodewave run --repo <url> <extra...>` on a free loopback port, with
    /// JSON logs in a file, and waits for /healthz.
    pub async fn start(repo_url: &str, extra: &[&str]) -> Self {
        let state = tempfile::tempdir().unwrap();
        let state_dir = state.path().join("clone");
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log_path = state.path().join("nodewave.log");
        let mut args: Vec<String> = vec![
            "run".into(),
            "--repo".into(),
            repo_url.into(),
            "--listen".into(),
            addr.to_string(),
            "--log-format".into(),
            "json".into(),
        ];
        // A fresh clone cache unless the test brings its own.
        let state_dir = if let Some(i) = extra.iter().position(|a| *a == "--state-dir") {
            PathBuf::from(extra[i + 1])
        } else {
            args.extend(["--state-dir".into(), state_dir.display().to_string()]);
            state_dir
        };
        // The admin kubeconfig unless the test brings its own (e.g. a service account's).
        if !extra.contains(&"--kubeconfig") {
            args.extend([
                "--kubeconfig".into(),
                kubeconfig_path().display().to_string(),
            ]);
        }
        args.extend(extra.iter().map(|s| (*s).to_string()));
        let mut nw = Self {
            child: None,
            addr,
            log_path,
            args,
            _state: state,
            state_dir,
            env: Vec::new(),
        };
        nw.spawn().await;
        nw
    }

    async fn spawn(&mut self) {
        self.spawn_until(true).await;
    }

    /// Starts the process and waits until `/healthz` answers: 200 if `healthy`,
    /// any status otherwise (a process that fails its health check at once).
    async fn spawn_until(&mut self, healthy: bool) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let child = Command::new(binary())
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("NODEWAVE_GIT_TOKEN")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start nodewave");
        self.child = Some(child);
        let url = format!("http://{}/healthz", self.addr);
        let log_path = self.log_path.clone();
        wait_for("nodewave /healthz", Duration::from_secs(30), || {
            let url = url.clone();
            let log_path = log_path.clone();
            async move {
                match reqwest::get(&url).await {
                    Ok(r) if r.status().is_success() || !healthy => Ok(Some(())),
                    _ => Err(std::fs::read_to_string(&log_path).unwrap_or_default()),
                }
            }
        })
        .await;
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sets (Some) or removes (None) an environment variable for the next start.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.env.push((key.to_string(), v.to_string()));
        }
    }

    /// Waits until the process exits by itself (e.g. at a failpoint); returns its
    /// exit status, or panics after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait().unwrap()
            {
                self.child = None;
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nodewave did not exit within {timeout:?}:\n{}",
                tail(&self.logs(), 30)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts the same command again (same state directory, new process).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// [`Self::restart`] for a process expected to report itself unhealthy
    /// soon: waits only until its HTTP server answers.
    pub async fn restart_maybe_unhealthy(&mut self) {
        self.kill();
        self.spawn_until(false).await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one metric series, `name{labels}` exactly as exposed.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = self.metrics().await;
        parse_metric(&text, series)
    }

    /// `/status` as JSON.
    pub async fn status(&self) -> serde_json::Value {
        reqwest::get(self.url("/status"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `/readyz`: HTTP status code and body.
    pub async fn readyz(&self) -> (u16, String) {
        let r = reqwest::get(self.url("/readyz")).await.unwrap();
        let code = r.status().as_u16();
        (code, r.text().await.unwrap())
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }
}

impl Drop for Nodewave {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- nodewave log ({}) ---\n{}",
                self.log_path.display(),
                tail(&self.logs(), 60)
            );
        }
        self.kill();
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn parse_metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}

/// Runs a nodewave CLI command to completion; returns (exit code, stdout+stderr).
pub fn cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(binary())
        .args(args)
        .env("KUBECONFIG", kubeconfig_path())
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// nodewave's annotations on a DaemonSet.
pub fn nodewave_annotations(
    ds: &k8s_openapi::api::apps::v1::DaemonSet,
) -> BTreeMap<String, String> {
    ds.metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k.starts_with("nodewave.io/"))
        .collect()
}
