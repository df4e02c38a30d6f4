//! A real OpenSSH server (Debian's `openssh-server`) for SSH end-to-end tests.
//!
//! [`Sshd::start`] writes an `sshd_config` into a temp dir, generates the
//! server's own ed25519 host key and one authorised client key with
//! `ssh-keygen`, and runs `/usr/sbin/sshd -D -e -f <config>` as a child
//! process listening only on a loopback address. The process is killed when
//! the [`Sshd`] is dropped. Git is served by the session running
//! `git-upload-pack` (Debian's `git` package), so repositories are addressed
//! by absolute path: `ssh://<user>@127.0.0.1:<port>/tmp/.../repo.git`.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead as _, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tempfile::TempDir;

/// Absolute path: sshd re-executes itself and refuses to start otherwise.
pub const SSHD: &str = "/usr/sbin/sshd";

/// Generates a key pair with `ssh-keygen` (`passphrase` `""` for none) and
/// returns the private key path; the public key is `<path>.pub`.
pub fn keygen(path: &Path, passphrase: &str) -> PathBuf {
    keygen_type(path, "ed25519", passphrase)
}

/// Like [`keygen`] with a key type (`ed25519`, `ecdsa`, `rsa`).
pub fn keygen_type(path: &Path, key_type: &str, passphrase: &str) -> PathBuf {
    let out = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            key_type,
            "-N",
            passphrase,
            "-C",
            "nodewave-test",
            "-f",
        ])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("run ssh-keygen (Debian package openssh-client)");
    assert!(
        out.status.success(),
        "ssh-keygen -f {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    path.to_path_buf()
}

/// The key type and base64 key of a `.pub` file: `ssh-ed25519 AAAA...`.
pub fn public_key(private: &Path) -> String {
    let text = fs::read_to_string(pub_path(private)).expect("read public key");
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The user the tests run as, who is also the SSH login user (sshd can only
/// switch to another user when it runs as root).
pub fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("run id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn pub_path(private: &Path) -> PathBuf {
    let mut p = private.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

pub struct Sshd {
    child: Child,
    /// The loopback address sshd listens on.
    pub addr: IpAddr,
    pub port: u16,
    /// Private key of the server (its public half is `host_key.pub`).
    pub host_key: PathBuf,
    /// A client private key listed in `authorized_keys`.
    pub client_key: PathBuf,
    /// Everything sshd has written to stderr so far (`-e`), for messages.
    log: Arc<Mutex<String>>,
    dir: TempDir,
}

/// How to start an [`Sshd`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Loopback address to listen on.
    pub ip: IpAddr,
    /// Port 22 of a free 127.x.y.z address instead of a free port on `ip`.
    pub port_22: bool,
    /// Host key types besides ed25519 (`ecdsa`, `rsa`), in
    /// `host_key_<type>`; sshd offers them all.
    pub extra_host_key_types: Vec<&'static str>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port_22: false,
            extra_host_key_types: Vec::new(),
        }
    }
}

impl Sshd {
    /// Starts sshd on 127.0.0.1 and a free port.
    pub fn start() -> Self {
        Self::start_with(&Options::default())
    }

    pub fn start_with(options: &Options) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        if options.port_22 {
            return Self::start_on_port_22(dir, options);
        }
        // A port that was free a moment ago can be taken before sshd binds
        // it; sshd then exits, and another port is tried.
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = TcpListener::bind((options.ip, 0))
                .and_then(|l| l.local_addr())
                .unwrap_or_else(|e| panic!("find a free port on {}: {e}", options.ip))
                .port();
            match Self::try_start(&dir, options, options.ip, port) {
                Ok(parts) => return Self::finish(parts, dir),
                Err(log) => last_log = log,
            }
        }
        panic!("sshd did not start:\n{last_log}");
    }

    /// Port 22 of a free loopback address other than 127.0.0.1 (all of
    /// 127.0.0.0/8 is routed to `lo` on Linux). This is what scp-style URLs
    /// (`user@host:path`) need: they cannot name a port. Binding port 22
    /// needs root (tests run as root here).
    fn start_on_port_22(dir: TempDir, options: &Options) -> Self {
        let seed = std::process::id();
        let mut last_log = String::from("no free 127.x.y.z:22 found");
        for i in 0..20u32 {
            let n = seed.wrapping_mul(31).wrapping_add(i * 7919);
            let [_, b, c, d] = n.to_be_bytes();
            let ip = IpAddr::V4(Ipv4Addr::new(127, b, c, d.clamp(2, 254)));
            if TcpListener::bind((ip, 22)).is_err() {
                continue;
            }
            match Self::try_start(&dir, options, ip, 22) {
                Ok(parts) => return Self::finish(parts, dir),
                Err(log) => last_log = log,
            }
        }
        panic!(
            "sshd did not start on port 22 of a loopback address 127.x.y.z (binding port 22 needs root; \
             a server listening on 0.0.0.0:22, such as a system sshd, takes every address):\n{last_log}"
        );
    }

    fn finish(parts: Started, dir: TempDir) -> Self {
        let Started {
            child,
            addr,
            port,
            log,
        } = parts;
        Self {
            child,
            addr,
            port,
            host_key: dir.path().join("host_key"),
            client_key: dir.path().join("client_key"),
            log,
            dir,
        }
    }

    fn try_start(
        dir: &TempDir,
        options: &Options,
        addr: IpAddr,
        port: u16,
    ) -> Result<Started, String> {
        let d = dir.path();
        let host_key = d.join("host_key");
        let client_key = d.join("client_key");
        let mut host_keys = vec![host_key.clone()];
        host_keys.extend(
            options
                .extra_host_key_types
                .iter()
                .map(|t| d.join(format!("host_key_{t}"))),
        );
        if !host_key.exists() {
            keygen(&host_key, "");
            for (path, key_type) in host_keys[1..].iter().zip(&options.extra_host_key_types) {
                keygen_type(path, key_type, "");
            }
            keygen(&client_key, "");
            fs::copy(pub_path(&client_key), d.join("authorized_keys"))
                .expect("write authorized_keys");
        }
        // Privilege separation directory (normally created by the service).
        fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        let mut config = String::new();
        let root = current_user() == "root";
        for line in [
            format!("ListenAddress {}", SocketAddr::new(addr, port)),
            format!("PidFile {}", d.join("sshd.pid").display()),
            format!("AuthorizedKeysFile {}", d.join("authorized_keys").display()),
            format!(
                "PermitRootLogin {}",
                if root { "prohibit-password" } else { "no" }
            ),
            "StrictModes no".to_owned(),
            "UsePAM no".to_owned(),
            "PubkeyAuthentication yes".to_owned(),
            "PasswordAuthentication no".to_owned(),
            "KbdInteractiveAuthentication no".to_owned(),
            "PrintMotd no".to_owned(),
            "LogLevel VERBOSE".to_owned(),
        ]
        .into_iter()
        .chain(host_keys.iter().map(|k| format!("HostKey {}", k.display())))
        {
            writeln!(config, "{line}").unwrap();
        }
        let config_path = d.join("sshd_config");
        fs::write(&config_path, config).expect("write sshd_config");

        let mut child = Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {SSHD} (Debian package openssh-server): {e}"));
        let stderr = child.stderr.take().expect("sshd stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread_log = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let listening = line.starts_with("Server listening on");
                let mut l = thread_log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
                drop(l);
                if listening {
                    let _ = ready_tx.send(true);
                }
            }
            // EOF: sshd exited (or was killed).
            let _ = ready_tx.send(false);
        });
        // Generous: this is a readiness wait on a busy machine, not an
        // assertion about speed.
        let ready = ready_rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or(false);
        if ready {
            Ok(Started {
                child,
                addr,
                port,
                log,
            })
        } else {
            let _ = child.kill();
            let _ = child.wait();
            Err(log.lock().unwrap().clone())
        }
    }

    /// The directory of the server's files; repositories may live here too.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `ssh://<user>@<addr>:<port><path>` for an absolute `path`
    /// (`[addr]` for IPv6).
    pub fn url(&self, path: &Path) -> String {
        format!(
            "ssh://{}@{}{}",
            current_user(),
            SocketAddr::new(self.addr, self.port),
            path.display()
        )
    }

    /// The name known_hosts uses for this server: `[127.0.0.1]:<port>`, or
    /// the bare address on port 22.
    pub fn known_hosts_name(&self) -> String {
        if self.port == 22 {
            self.addr.to_string()
        } else {
            format!("[{}]:{}", self.addr, self.port)
        }
    }

    /// A known_hosts line with the server's real ed25519 host key.
    pub fn known_hosts_line(&self) -> String {
        format!(
            "{} {}\n",
            self.known_hosts_name(),
            public_key(&self.host_key)
        )
    }

    /// A known_hosts line with one of the extra host keys (`ecdsa`, `rsa`).
    pub fn known_hosts_line_for(&self, key_type: &str) -> String {
        format!(
            "{} {}\n",
            self.known_hosts_name(),
            public_key(&self.dir.path().join(format!("host_key_{key_type}")))
        )
    }

    /// Waits until sshd has logged `needle` (its stderr is read by another
    /// thread, so a line can arrive just after the client saw the effect),
    /// then returns the log. The deadline is generous; it only stops a hang.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sshd never logged {needle:?}; log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What sshd logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

struct Started {
    child: Child,
    addr: IpAddr,
    port: u16,
    log: Arc<Mutex<String>>,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
