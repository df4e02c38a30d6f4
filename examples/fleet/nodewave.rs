//! One `nodewave run` process started by the driver: its port, log, signals,
//! metrics and memory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

pub struct Nodewave {
    pub name: String,
    pub port: u16,
    pub log: PathBuf,
    bin: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Nodewave {
    /// Starts `nodewave run <args> --listen 127.0.0.1:<free port>` with its log
    /// appended to `log`. Does not wait for it (see [`Nodewave::wait_healthy`]).
    /// The `nodewave run` arguments both drivers use: one repository and state
    /// directory, one allowed namespace (also the Lease's), leader election and
    /// JSON logs; `extra` adds the driver's own.
    pub fn run_args(
        repo_url: &str,
        state_dir: &Path,
        poll_interval: &str,
        namespace: &str,
        kubeconfig: &Path,
        extra: &[&str],
    ) -> Vec<String> {
        let state = state_dir.display().to_string();
        let kubeconfig = kubeconfig.display().to_string();
        [
            "--repo",
            repo_url,
            "--state-dir",
            &state,
            "--poll-interval",
            poll_interval,
            "--allow-namespace",
            namespace,
            "--kubeconfig",
            &kubeconfig,
            "--leader-elect",
            "--leader-election-namespace",
            namespace,
            "--log-format",
            "json",
        ]
        .iter()
        .chain(extra)
        .map(ToString::to_string)
        .collect()
    }

    pub fn spawn(name: &str, bin: &Path, args: Vec<String>, log: PathBuf) -> anyhow::Result<Self> {
        let mut nw = Self {
            name: name.to_string(),
            port: free_port()?,
            log,
            bin: bin.to_path_buf(),
            args,
            child: None,
        };
        nw.start()?;
        Ok(nw)
    }

    /// (Re)starts the process on the same port.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.bin)
            .arg("run")
            .args(&self.args)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()?;
        // The calling script stops whatever is left by these pids (the driver
        // may itself be interrupted before it can).
        std::fs::write(self.log.with_extension("pid"), child.id().to_string())?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok())
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .and_then(Pid::from_raw)
            .ok_or_else(|| anyhow::anyhow!("{} is not running", self.name))?;
        kill_process(pid, sig)?;
        Ok(())
    }

    /// SIGKILL, as a crash would; reaps the process.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (a graceful stop: a leader gives its lease up), then waits up to
    /// `grace` before SIGKILL.
    pub async fn stop(&mut self, grace: Duration) {
        if self.signal(Signal::TERM).is_ok() {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline && self.running() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.kill();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let r = reqwest::Client::new()
            .get(self.url(path))
            .timeout(Duration::from_secs(10))
            .send()
            .await?;
        Ok((r.status().as_u16(), r.text().await?))
    }

    pub async fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if matches!(self.get("/healthz").await, Ok((200, _))) {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} not healthy within {timeout:?}; see {}",
                self.name,
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `/leaderz` answers 200 on the replica that holds the lease and is in sync.
    pub async fn is_leader(&self) -> bool {
        matches!(self.get("/leaderz").await, Ok((200, _)))
    }

    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(self.get("/metrics").await?.1)
    }

    /// `VmHWM` and `VmRSS` in KiB.
    pub fn memory_kib(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        };
        Some((field("VmHWM:")?, field("VmRSS:")?))
    }

    /// User + system CPU seconds so far.
    pub fn cpu_secs(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()?)).ok()?;
        // Fields after the parenthesised command name; utime and stime are 14 and 15.
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        Some(ticks / 100.0)
    }
}

impl Drop for Nodewave {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sum of every sample of metric `name` (all label sets) in a text exposition,
/// and the samples by their label text.
pub fn metric_samples(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let labels = series.strip_prefix(name)?;
            if !(labels.is_empty() || labels.starts_with('{')) {
                return None;
            }
            Some((labels.to_string(), value.parse().ok()?))
        })
        .collect()
}
