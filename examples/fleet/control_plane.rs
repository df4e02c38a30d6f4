//! The local control plane's processes (kwokctl's binary runtime keeps their
//! pids in `~/.kwok/clusters/<name>/pids/` and their command lines in
//! `kwok.yaml`): signals, restarting one component, and the audit log.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use kube::Client;
use rustix::process::{Pid, Signal, kill_process, test_kill_process};
use serde_json::Value;

pub struct ControlPlane {
    pub dir: PathBuf,
}

impl ControlPlane {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let home = std::env::var_os("KWOK_WORKDIR")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kwok")))
            .ok_or_else(|| anyhow::anyhow!("neither KWOK_WORKDIR nor HOME is set"))?;
        let dir = home.join("clusters").join(name);
        anyhow::ensure!(
            dir.join("pids").is_dir(),
            "no cluster {name} in {} (start it with NODEWAVE_CLUSTER={name} hack/cluster.sh up)",
            dir.display()
        );
        Ok(Self { dir })
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig.yaml")
    }

    fn pid_file(&self, component: &str) -> PathBuf {
        self.dir.join("pids").join(format!("{component}.pid"))
    }

    pub fn pid(&self, component: &str) -> anyhow::Result<Pid> {
        let text = std::fs::read_to_string(self.pid_file(component))?;
        let raw: i32 = text.trim().parse()?;
        Pid::from_raw(raw).ok_or_else(|| anyhow::anyhow!("bad pid {raw} for {component}"))
    }

    pub fn signal(&self, component: &str, sig: Signal) -> anyhow::Result<()> {
        kill_process(self.pid(component)?, sig)?;
        Ok(())
    }

    /// Stops `component` (SIGTERM, SIGKILL after 20 s) and starts it again (see
    /// [`ControlPlane::start`]).
    pub fn restart(&self, component: &str) -> anyhow::Result<()> {
        let pid = self.pid(component)?;
        kill_process(pid, Signal::TERM)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut killed = false;
        while alive(pid) {
            if !killed && Instant::now() > deadline {
                let _ = kill_process(pid, Signal::KILL);
                killed = true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.start(component)
    }

    /// Starts `component` again if it has exited, as the kubelet restarts a
    /// static pod: kube-controller-manager and kube-scheduler exit when they
    /// cannot renew their leader lease, e.g. while kube-apiserver restarts.
    /// Returns whether it had to.
    pub fn revive(&self, component: &str) -> anyhow::Result<bool> {
        if alive(self.pid(component)?) {
            return Ok(false);
        }
        self.start(component)?;
        Ok(true)
    }

    /// Starts `component` with the command line kwokctl used, its output
    /// appended to the same log, and its new pid in the pid file (so
    /// `hack/cluster.sh down` stops it).
    fn start(&self, component: &str) -> anyhow::Result<()> {
        // kwok.yaml holds several documents (KwokctlConfiguration, KwokConfiguration,
        // ...); the components are in the one that has them.
        let docs: Vec<Value> =
            serde_saphyr::from_str_multiple(&std::fs::read_to_string(self.dir.join("kwok.yaml"))?)
                .map_err(|e| anyhow::anyhow!("kwok.yaml: {e}"))?;
        let c = docs
            .iter()
            .find_map(|d| d.get("components").and_then(Value::as_array))
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c.get("name").and_then(Value::as_str) == Some(component))
            })
            .ok_or_else(|| anyhow::anyhow!("no component {component} in kwok.yaml"))?;
        let binary = c
            .get("binary")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow::anyhow!("{component} has no binary"))?;
        let args: Vec<String> = c
            .get("args")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let work_dir = c
            .get("workDir")
            .and_then(Value::as_str)
            .map_or_else(|| self.dir.clone(), PathBuf::from);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("logs").join(format!("{component}.log")))?;
        let child = {
            use std::os::unix::process::CommandExt as _;
            Command::new(binary)
                .args(&args)
                .current_dir(work_dir)
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone()?))
                .stderr(Stdio::from(log))
                // Its own process group: it outlives the driver like the other components.
                .process_group(0)
                .spawn()?
        };
        std::fs::write(self.pid_file(component), child.id().to_string())?;
        // Not waited for: it runs until `hack/cluster.sh down` stops it by its pid.
        drop(child);
        Ok(())
    }

    /// The audit log (`NODEWAVE_KUBE_AUDIT_POLICY`), when the cluster has one.
    pub fn audit_log(&self) -> PathBuf {
        self.dir.join("logs").join("audit.log")
    }
}

/// A client for the cluster's admin kubeconfig.
pub async fn client_for(kubeconfig: &std::path::Path) -> anyhow::Result<Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let mut cfg =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    // The chaos driver keeps going through kube-apiserver restarts: fail fast, retry.
    cfg.connect_timeout = Some(Duration::from_secs(5));
    Ok(Client::try_from(cfg)?)
}

/// Whether `pid` is a running process (a zombie, e.g. a component this driver
/// restarted earlier and has not reaped, counts as gone).
fn alive(pid: Pid) -> bool {
    if test_kill_process(pid).is_err() {
        return false;
    }
    std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero()))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

/// Waits until the API server answers `/readyz`.
pub async fn wait_api_ready(client: &Client, timeout: Duration) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    loop {
        let req = http::Request::get("/readyz").body(Vec::new())?;
        if client
            .request_text(req)
            .await
            .is_ok_and(|t| t.trim() == "ok")
        {
            return Ok(t0.elapsed());
        }
        anyhow::ensure!(
            t0.elapsed() < timeout,
            "kube-apiserver not ready within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One request in the audit log.
#[derive(Debug, Clone)]
pub struct Audited {
    pub verb: String,
    pub resource: String,
    pub subresource: String,
    pub received: SystemTime,
    pub completed: SystemTime,
    pub dry_run: bool,
}

fn parse_time(v: Option<&Value>) -> Option<SystemTime> {
    let t: jiff::Timestamp = v?.as_str()?.parse().ok()?;
    let ms = u64::try_from(t.as_millisecond()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

/// The requests of `user` in the audit log from byte `offset` on; returns them
/// and the offset after the last complete line.
pub fn read_audit(
    path: &std::path::Path,
    user: &str,
    offset: u64,
) -> anyhow::Result<(Vec<Audited>, u64)> {
    read_audit_where(path, offset, |v| {
        v.pointer("/user/username").and_then(Value::as_str) == Some(user)
    })
}

/// The writes of anyone but `user` to the DaemonSet `name` and its revisions
/// (`name-HASH`) in the audit log from byte `offset` on: the DaemonSet
/// controller's new revision and status of a DaemonSet nodewave rolls out (the
/// audit policy records only those).
pub fn read_others_writes(
    path: &std::path::Path,
    user: &str,
    name: &str,
    offset: u64,
) -> anyhow::Result<Vec<Audited>> {
    let revision_prefix = format!("{name}-");
    let (v, _) = read_audit_where(path, offset, |v| {
        let object = v.pointer("/objectRef/name").and_then(Value::as_str);
        let is_revision =
            v.pointer("/objectRef/resource").and_then(Value::as_str) == Some("controllerrevisions");
        v.pointer("/user/username").and_then(Value::as_str) != Some(user)
            && (object == Some(name)
                || (is_revision && object.is_some_and(|o| o.starts_with(&revision_prefix))))
    })?;
    Ok(v)
}

fn read_audit_where(
    path: &std::path::Path,
    offset: u64,
    keep: impl Fn(&Value) -> bool,
) -> anyhow::Result<(Vec<Audited>, u64)> {
    use std::io::{BufRead as _, Seek as _};
    let mut f = std::fs::File::open(path)?;
    f.seek(std::io::SeekFrom::Start(offset))?;
    let mut reader = std::io::BufReader::new(f);
    let mut out = Vec::new();
    let mut pos = offset;
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n == 0 || !line.ends_with('\n') {
            break;
        }
        pos += n as u64;
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if !keep(&v) {
            continue;
        }
        let s = |p: &str| {
            v.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let (Some(received), Some(completed)) = (
            parse_time(v.get("requestReceivedTimestamp")),
            parse_time(v.get("stageTimestamp")),
        ) else {
            continue;
        };
        out.push(Audited {
            verb: s("/verb"),
            resource: s("/objectRef/resource"),
            subresource: s("/objectRef/subresource"),
            received,
            completed,
            dry_run: s("/requestURI").contains("dryRun="),
        });
    }
    Ok((out, pos))
}

pub fn audit_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}
