//! A real Prometheus server (Debian's `prometheus` package) started by a test as
//! a child process: bound to 127.0.0.1 on a free port, with its TSDB in a
//! temporary directory, scraping the given targets as `job_name: nodewave` and
//! evaluating the given rule files. It is killed when dropped.
//!
//! The test never talks to a system-wide Prometheus: if the Debian package
//! started one (it normally cannot, `policy-rc.d` and the lack of systemd stop
//! it), it listens on :9090, which this helper never uses.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use super::nodewave::free_port;
use super::wait_for;

/// The Prometheus binary: `$PROMETHEUS` or `prometheus` on `PATH`.
pub fn binary() -> String {
    std::env::var("PROMETHEUS").unwrap_or_else(|_| "prometheus".into())
}

/// Scrape and evaluation settings of a test Prometheus.
#[derive(Clone, Debug)]
pub struct PrometheusConfig {
    /// `host:port` targets of the `nodewave` job.
    pub targets: Vec<SocketAddr>,
    /// Rule files (absolute paths), loaded as they are.
    pub rule_files: Vec<PathBuf>,
    pub scrape_interval: Duration,
    /// Global `evaluation_interval` (groups with their own `interval:` keep it).
    pub evaluation_interval: Duration,
}

impl PrometheusConfig {
    pub fn new(targets: &[SocketAddr]) -> Self {
        Self {
            targets: targets.to_vec(),
            rule_files: Vec::new(),
            scrape_interval: Duration::from_secs(1),
            evaluation_interval: Duration::from_secs(1),
        }
    }

    #[must_use]
    pub fn rule_file(mut self, path: impl AsRef<Path>) -> Self {
        self.rule_files.push(path.as_ref().to_path_buf());
        self
    }

    /// The configuration file (JSON is valid YAML).
    pub fn render(&self) -> String {
        let secs = |d: Duration| format!("{}ms", d.as_millis());
        let targets: Vec<String> = self.targets.iter().map(ToString::to_string).collect();
        let rule_files: Vec<String> = self
            .rule_files
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        serde_json::to_string_pretty(&json!({
            "global": {
                "scrape_interval": secs(self.scrape_interval),
                "scrape_timeout": secs(self.scrape_interval),
                "evaluation_interval": secs(self.evaluation_interval),
            },
            "rule_files": rule_files,
            "scrape_configs": [{
                "job_name": "nodewave",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": targets}],
            }],
        }))
        .unwrap()
    }
}

/// A running Prometheus server owned by the test.
pub struct Prometheus {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub log_path: PathBuf,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Prometheus {
    /// Writes the configuration, starts Prometheus and waits until it is ready
    /// (`/-/ready`) and has loaded every rule group of `config.rule_files`.
    pub async fn start(config: &PrometheusConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config.render()).unwrap();
        let log_path = dir.path().join("prometheus.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(binary())
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            // Debian's defaults point at /etc/prometheus; keep everything in the temp dir.
            .arg(format!(
                "--web.console.templates={}",
                dir.path().join("consoles").display()
            ))
            .arg(format!(
                "--web.console.libraries={}",
                dir.path().join("console_libraries").display()
            ))
            .arg("--log.level=info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `{}`: {e}. Install it with `apt-get install -y prometheus` \
                     (or set $PROMETHEUS to the binary)",
                    binary()
                )
            });
        let prom = Self {
            child: Some(child),
            addr,
            log_path,
            dir,
            http: reqwest::Client::new(),
        };
        prom.wait_ready(config).await;
        prom
    }

    async fn wait_ready(&self, config: &PrometheusConfig) {
        let expected_groups: usize = config
            .rule_files
            .iter()
            .map(|p| {
                let text = std::fs::read_to_string(p)
                    .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
                text.lines()
                    .filter(|l| l.trim_start().starts_with("- name:"))
                    .count()
            })
            .sum();
        wait_for("Prometheus ready", Duration::from_mins(1), || async {
            let ready = self
                .http
                .get(self.url("/-/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if !ready {
                return Err(format!("not ready; log:\n{}", self.logs()));
            }
            let rules = self.api("/api/v1/rules", &[]).await?;
            let groups = rules["groups"].as_array().map_or(0, Vec::len);
            if groups >= expected_groups {
                Ok(Some(()))
            } else {
                Err(format!(
                    "{groups} of {expected_groups} rule groups loaded; log:\n{}",
                    self.logs()
                ))
            }
        })
        .await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// GETs an HTTP API endpoint and returns its `data`, or an error describing
    /// the failure (transport, HTTP status or `status: "error"`).
    pub async fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let resp = self
            .http
            .get(self.url(path))
            .query(params)
            .send()
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        let status = resp.status();
        let body: Value = resp
            .json()
            .await
            .map_err(|e| format!("GET {path}: HTTP {status}, body is not JSON: {e}"))?;
        if body["status"] == "success" {
            Ok(body["data"].clone())
        } else {
            Err(format!("GET {path} {params:?}: HTTP {status}: {body}"))
        }
    }

    /// An instant query; returns the `result` array (a vector or a one-element
    /// list for scalars). Errors name the query.
    pub async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let data = self.api("/api/v1/query", &[("query", expr)]).await?;
        match data["resultType"].as_str() {
            Some("vector" | "matrix") => Ok(data["result"].as_array().cloned().unwrap_or_default()),
            Some("scalar" | "string") => Ok(vec![json!({"metric": {}, "value": data["result"]})]),
            other => Err(format!("unexpected resultType {other:?} for {expr}")),
        }
    }

    /// Alerts as `/api/v1/alerts` reports them.
    pub async fn alerts(&self) -> Result<Vec<Value>, String> {
        let data = self.api("/api/v1/alerts", &[]).await?;
        Ok(data["alerts"].as_array().cloned().unwrap_or_default())
    }

    /// The alerts named `name` in state `firing`.
    pub async fn firing(&self, name: &str) -> Result<Vec<Value>, String> {
        Ok(self
            .alerts()
            .await?
            .into_iter()
            .filter(|a| a["labels"]["alertname"] == name && a["state"] == "firing")
            .collect())
    }

    /// Scrape targets as `/api/v1/targets` reports them (active only).
    pub async fn targets(&self) -> Result<Vec<Value>, String> {
        let data = self.api("/api/v1/targets", &[("state", "active")]).await?;
        Ok(data["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Waits until every target of the `nodewave` job has been scraped successfully.
    pub async fn wait_targets_up(&self) {
        wait_for(
            "Prometheus scrapes every nodewave target successfully",
            Duration::from_mins(1),
            || async {
                let targets = self.targets().await?;
                let all_up = !targets.is_empty() && targets.iter().all(|t| t["health"] == "up");
                if all_up {
                    Ok(Some(()))
                } else {
                    Err(format!("targets: {targets:#?}"))
                }
            },
        )
        .await;
    }

    /// SIGKILL and wait.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.logs();
            let lines: Vec<&str> = logs.lines().collect();
            eprintln!(
                "--- prometheus log ({}) ---\n{}",
                self.log_path.display(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
        self.kill();
    }
}

/// Whether a query result holds at least one sample with a finite value
/// (`NaN`, e.g. a quantile over empty buckets, is no data for a panel).
pub fn has_finite_sample(result: &[Value]) -> bool {
    result.iter().any(|s| {
        let values: Vec<&Value> = match (s.get("value"), s.get("values")) {
            (Some(v), _) => vec![v],
            (None, Some(Value::Array(vs))) => vs.iter().collect(),
            _ => Vec::new(),
        };
        values.iter().any(|v| {
            v.get(1)
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<f64>().ok())
                .is_some_and(f64::is_finite)
        })
    })
}
