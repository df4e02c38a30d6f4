//! The Git source over SSH against a real OpenSSH server (Debian's
//! `openssh-server`, started by each test on a loopback address with its own
//! host key; see `support/sshd.rs`). The served repository is a bare repo in a
//! temp dir, addressed by absolute path; `git-upload-pack` (Debian's `git`)
//! runs in the sshd session. No stubs: libgit2 + libssh2 talk to sshd.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;

use git2::{Oid, Repository, Signature};
use nodewave::source::{Credentials, GitRef, GitSource, GitSourceConfig, SourceError};
use support::sshd::{Options, Sshd, current_user, keygen, public_key};
use tempfile::TempDir;

const DS: &str = "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: agent\n";

/// A bare repository (what sshd serves) and a work repository that pushes
/// to it over the local transport, like a developer would.
struct Upstream {
    bare: PathBuf,
    work: Repository,
    work_path: PathBuf,
}

impl Upstream {
    fn new(dir: &Path) -> Self {
        let bare = dir.join("repo.git");
        let bare_repo = Repository::init_bare(&bare).unwrap();
        bare_repo.set_head("refs/heads/main").unwrap();
        let work_path = dir.join("work");
        let work = Repository::init(&work_path).unwrap();
        work.set_head("refs/heads/main").unwrap();
        Self {
            bare,
            work,
            work_path,
        }
    }

    /// Commits `files` on `main` in the work repo and pushes `main`.
    fn commit_and_push(&self, files: &[(&str, &str)], message: &str) -> Oid {
        for (path, contents) in files {
            let full = self.work_path.join(path);
            fs::create_dir_all(full.parent().unwrap()).unwrap();
            fs::write(&full, contents).unwrap();
        }
        let mut index = self.work.index().unwrap();
        index
            .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
            .unwrap();
        index.write().unwrap();
        let tree = self.work.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = Signature::now("Ada Lovelace", "ada@example.com").unwrap();
        let parent = self
            .work
            .find_reference("refs/heads/main")
            .ok()
            .and_then(|r| r.peel_to_commit().ok());
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        let oid = self
            .work
            .commit(
                Some("refs/heads/main"),
                &sig,
                &sig,
                message,
                &tree,
                &parents,
            )
            .unwrap();
        let mut remote = self
            .work
            .remote_anonymous(&self.bare.display().to_string())
            .unwrap();
        remote
            .push(&["refs/heads/main:refs/heads/main"], None)
            .unwrap();
        let pushed = Repository::open_bare(&self.bare)
            .unwrap()
            .refname_to_id("refs/heads/main")
            .unwrap();
        assert_eq!(pushed, oid, "the push did not update the bare repository");
        oid
    }
}

/// One test's world: a running sshd, an upstream with one commit, and a
/// scratch dir for the client side (cache, known_hosts, keys).
struct World {
    sshd: Sshd,
    upstream: Upstream,
    first: Oid,
    client: TempDir,
    _repos: TempDir,
}

impl World {
    fn new() -> Self {
        Self::with(Sshd::start())
    }

    fn with(sshd: Sshd) -> Self {
        let repos = TempDir::new().unwrap();
        let upstream = Upstream::new(repos.path());
        let first = upstream.commit_and_push(
            &[
                ("deploy/agent.yaml", DS),
                ("deploy/README.md", "# not a manifest\n"),
            ],
            "initial",
        );
        Self {
            sshd,
            upstream,
            first,
            client: TempDir::new().unwrap(),
            _repos: repos,
        }
    }

    fn url(&self) -> String {
        self.sshd.url(&self.upstream.bare)
    }

    fn known_hosts(&self) -> PathBuf {
        self.client.path().join("known_hosts")
    }

    fn cache(&self) -> PathBuf {
        self.client.path().join("cache")
    }

    /// Config with the server's authorised key and `known_hosts()`.
    fn config(&self) -> GitSourceConfig {
        GitSourceConfig {
            url: self.url(),
            reference: GitRef::Branch("main".into()),
            path: "deploy".into(),
            checkout_dir: self.cache(),
            credentials: Credentials {
                ssh_key_file: Some(self.sshd.client_key.clone()),
                known_hosts_file: Some(self.known_hosts()),
                ..Credentials::default()
            },
            limits: nodewave::manifest::Limits::default(),
        }
    }

    fn trust_server(&self) {
        fs::write(self.known_hosts(), self.sshd.known_hosts_line()).unwrap();
    }

    /// Fetches and panics with sshd's log on failure (the client-side error
    /// alone rarely says why the server closed the connection).
    fn fetch_ok(&self, source: &mut GitSource) -> nodewave::source::FetchOutcome {
        match source.fetch() {
            Ok(o) => o,
            Err(e) => panic!(
                "fetch over ssh failed: {e} ({})\nsshd log:\n{}",
                e.metric_label(),
                self.sshd.log()
            ),
        }
    }

    fn fetch_err(&self, source: &mut GitSource) -> SourceError {
        match source.fetch() {
            Ok(o) => panic!(
                "fetch unexpectedly succeeded: {o:?}\nsshd log:\n{}",
                self.sshd.log()
            ),
            Err(e) => e,
        }
    }
}

fn paths(files: &[nodewave::manifest::ManifestFile]) -> Vec<&str> {
    files.iter().map(|f| f.path.as_str()).collect()
}

/// Nothing at all was written to the cache: no head, no fetched commit.
fn assert_nothing_fetched(source: &GitSource, cache: &Path, commit: Oid) {
    assert_eq!(source.head(), None);
    let repo = Repository::open_bare(cache).unwrap();
    assert!(
        repo.find_commit(commit).is_err(),
        "commit {commit} reached the cache"
    );
    assert!(
        repo.references_glob("refs/nodewave/*")
            .unwrap()
            .next()
            .is_none()
    );
}

fn ssh_keygen(args: &[&str], file: &Path) {
    let out = Command::new("ssh-keygen")
        .args(args)
        .arg("-f")
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ssh-keygen {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn fetch_over_ssh_with_key_and_known_hosts_sees_new_commits() {
    let w = World::new();
    w.trust_server();
    let mut source = GitSource::open(w.config()).unwrap();
    assert_eq!(source.head(), None);

    let outcome = w.fetch_ok(&mut source);
    assert_eq!(outcome.head, w.first.to_string());
    assert!(outcome.changed);
    let files = source.files_at(&outcome.head).unwrap();
    assert_eq!(paths(&files), ["deploy/agent.yaml"]);
    assert_eq!(files[0].contents, DS);

    // Nothing new: unchanged.
    let again = w.fetch_ok(&mut source);
    assert!(!again.changed);
    assert_eq!(again.head, w.first.to_string());

    // A push is seen by the next fetch.
    let second = w.upstream.commit_and_push(
        &[("deploy/agent.yaml", "kind: DaemonSet\n# v2\n")],
        "Bump agent to v2",
    );
    let outcome = w.fetch_ok(&mut source);
    assert_eq!(outcome.head, second.to_string());
    assert_eq!(outcome.previous, Some(w.first.to_string()));
    assert!(outcome.changed);
    assert!(!outcome.forced);
    let files = source.files_at(&outcome.head).unwrap();
    assert!(files[0].contents.contains("v2"));
    assert_eq!(
        source.commit_info(&outcome.head).unwrap().summary,
        "Bump agent to v2"
    );
    // The known_hosts file was only read.
    assert_eq!(
        fs::read_to_string(w.known_hosts()).unwrap(),
        w.sshd.known_hosts_line()
    );
}

#[test]
fn unknown_host_key_is_refused_and_nothing_is_fetched() {
    let w = World::new();
    fs::write(w.known_hosts(), "").unwrap();
    let mut source = GitSource::open(w.config()).unwrap();
    let err = w.fetch_err(&mut source);
    assert_eq!(err.metric_label(), "host_key_unknown", "{err}");
    let message = err.to_string();
    let name = w.sshd.known_hosts_name();
    assert!(
        message.starts_with(&format!(
            "host key for {name} is not in {}",
            w.known_hosts().display()
        )),
        "{message}"
    );
    // Says how to add it, with the real fingerprint of the server's key.
    assert!(
        message.contains(&format!(
            "ssh-keyscan -t ssh-ed25519 -p {} 127.0.0.1",
            w.sshd.port
        )),
        "{message}"
    );
    assert!(message.contains("--git-accept-new-host-keys"), "{message}");
    let fingerprint = host_fingerprint(&w.sshd);
    assert!(message.contains(&fingerprint), "{message} / {fingerprint}");
    assert!(!err.is_transient());

    assert_nothing_fetched(&source, &w.cache(), w.first);
    assert_eq!(fs::read_to_string(w.known_hosts()).unwrap(), "");
}

/// `SHA256:...` of the server's host key, as `ssh-keygen -l` prints it.
fn host_fingerprint(sshd: &Sshd) -> String {
    let mut public = sshd.host_key.as_os_str().to_owned();
    public.push(".pub");
    let out = Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(public)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned()
}

#[test]
fn changed_host_key_is_refused_even_with_accept_new() {
    let w = World::new();
    let impostor = keygen(&w.client.path().join("other_host_key"), "");
    let line = format!("{} {}\n", w.sshd.known_hosts_name(), public_key(&impostor));
    fs::write(w.known_hosts(), &line).unwrap();
    for accept_new in [false, true] {
        let mut cfg = w.config();
        cfg.credentials.accept_new_host_keys = accept_new;
        let mut source = GitSource::open(cfg).unwrap();
        let err = w.fetch_err(&mut source);
        assert_eq!(err.metric_label(), "host_key_changed", "{err}");
        let message = err.to_string();
        assert!(
            message.starts_with(&format!(
                "host key for {} CHANGED",
                w.sshd.known_hosts_name()
            )),
            "{message}"
        );
        assert!(message.contains("line 1 of"), "{message}");
        assert!(message.contains(&host_fingerprint(&w.sshd)), "{message}");
        assert_nothing_fetched(&source, &w.cache(), w.first);
        // The file is never rewritten.
        assert_eq!(fs::read_to_string(w.known_hosts()).unwrap(), line);
    }
}

#[test]
fn accept_new_host_keys_records_the_key_and_later_runs_trust_it() {
    let w = World::new();
    fs::write(w.known_hosts(), "").unwrap();
    let mut cfg = w.config();
    cfg.credentials.accept_new_host_keys = true;
    let mut source = GitSource::open(cfg).unwrap();
    let outcome = w.fetch_ok(&mut source);
    assert_eq!(outcome.head, w.first.to_string());
    // Exactly the server's key, once, under [127.0.0.1]:<port>.
    assert_eq!(
        fs::read_to_string(w.known_hosts()).unwrap(),
        w.sshd.known_hosts_line()
    );
    drop(source);

    // A second run, without accept_new: the recorded key is trusted.
    let second = w
        .upstream
        .commit_and_push(&[("deploy/extra.yaml", "kind: ConfigMap\n")], "extra");
    let mut source = GitSource::open(w.config()).unwrap();
    let outcome = w.fetch_ok(&mut source);
    assert_eq!(outcome.head, second.to_string());
    assert_eq!(
        paths(&source.files_at(&outcome.head).unwrap()),
        ["deploy/agent.yaml", "deploy/extra.yaml"]
    );
    assert_eq!(
        fs::read_to_string(w.known_hosts()).unwrap(),
        w.sshd.known_hosts_line()
    );
}

#[test]
fn wrong_client_key_is_a_clear_auth_error_without_retrying() {
    let w = World::new();
    w.trust_server();
    let stranger = keygen(&w.client.path().join("stranger"), "");
    let mut cfg = w.config();
    cfg.credentials.ssh_key_file = Some(stranger.clone());
    let mut source = GitSource::open(cfg).unwrap();
    let err = w.fetch_err(&mut source);
    assert_eq!(err.metric_label(), "auth", "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&format!(
            "rejected the SSH key {} for user {}",
            stranger.display(),
            current_user()
        )),
        "{message}\nsshd log:\n{}",
        w.sshd.log()
    );
    assert!(!err.is_transient());
    assert_nothing_fetched(&source, &w.cache(), w.first);

    // One connection, one key offered, then the client gave up.
    let log = w.sshd.wait_for_log(&format!(
        "Connection closed by authenticating user {}",
        current_user()
    ));
    assert_eq!(log.matches("Connection from 127.0.0.1").count(), 1, "{log}");
    let failed = format!("Failed publickey for {}", current_user());
    assert_eq!(log.matches(&failed).count(), 1, "{log}");
}

#[test]
fn missing_key_file_is_a_credentials_error() {
    let w = World::new();
    w.trust_server();
    let missing = w.client.path().join("no_such_key");
    let mut cfg = w.config();
    cfg.credentials.ssh_key_file = Some(missing.clone());
    let mut source = GitSource::open(cfg).unwrap();
    let err = w.fetch_err(&mut source);
    assert_eq!(err.metric_label(), "credentials", "{err}");
    assert!(
        err.to_string()
            .contains(&format!("cannot read SSH key {}", missing.display())),
        "{err}"
    );
}

#[test]
fn scp_style_url_on_port_22() {
    // scp-style URLs cannot carry a port, so this server listens on port 22
    // of another loopback address (127.x.y.z) instead of 127.0.0.1.
    let w = World::with(Sshd::start_with(&Options {
        port_22: true,
        ..Options::default()
    }));
    w.trust_server();
    let mut cfg = w.config();
    cfg.url = format!(
        "{}@{}:{}",
        current_user(),
        w.sshd.addr,
        w.upstream.bare.display()
    );
    let mut source = GitSource::open(cfg).unwrap();
    let outcome = w.fetch_ok(&mut source);
    assert_eq!(outcome.head, w.first.to_string());
    assert_eq!(
        paths(&source.files_at(&outcome.head).unwrap()),
        ["deploy/agent.yaml"]
    );

    // Host keys are looked up under the bare address (port 22).
    fs::write(w.known_hosts(), "").unwrap();
    let err = w.fetch_err(&mut source);
    assert_eq!(err.metric_label(), "host_key_unknown", "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("host key for {} is not in", w.sshd.addr)),
        "{err}"
    );
}

#[test]
fn hashed_known_hosts_entry_is_matched() {
    let w = World::new();
    w.trust_server();
    ssh_keygen(&["-H"], &w.known_hosts());
    let hashed = fs::read_to_string(w.known_hosts()).unwrap();
    assert!(hashed.starts_with("|1|"), "{hashed}");
    assert!(!hashed.contains("127.0.0.1"), "{hashed}");

    let mut source = GitSource::open(w.config()).unwrap();
    let outcome = w.fetch_ok(&mut source);
    assert_eq!(outcome.head, w.first.to_string());
    assert_eq!(fs::read_to_string(w.known_hosts()).unwrap(), hashed);

    // A hashed entry with another key for the same name is a changed key.
    let impostor = keygen(&w.client.path().join("other_host_key"), "");
    fs::write(
        w.known_hosts(),
        format!("{} {}\n", w.sshd.known_hosts_name(), public_key(&impostor)),
    )
    .unwrap();
    ssh_keygen(&["-H"], &w.known_hosts());
    let mut cfg = w.config();
    cfg.checkout_dir = w.client.path().join("cache2");
    let mut source = GitSource::open(cfg).unwrap();
    let err = w.fetch_err(&mut source);
    assert_eq!(err.metric_label(), "host_key_changed", "{err}");
}

#[test]
fn passphrase_protected_key_with_passphrase_file() {
    let w = World::new();
    w.trust_server();
    let key = keygen(&w.client.path().join("locked"), "correct horse");
    fs::write(w.sshd.dir().join("authorized_keys"), {
        let mut text = fs::read_to_string(w.sshd.dir().join("authorized_keys")).unwrap();
        text.push_str(&public_key(&key));
        text.push('\n');
        text
    })
    .unwrap();
    let passphrase = w.client.path().join("passphrase");
    fs::write(&passphrase, "correct horse\n").unwrap();

    let mut cfg = w.config();
    cfg.credentials.ssh_key_file = Some(key.clone());
    cfg.credentials.ssh_key_passphrase_file = Some(passphrase.clone());
    let mut source = GitSource::open(cfg.clone()).unwrap();
    let outcome = w.fetch_ok(&mut source);
    assert_eq!(outcome.head, w.first.to_string());
    drop(source);

    // Problems with the key file itself are configuration errors that name
    // the key (never the passphrase), not network failures.
    let cases = [
        ("wrong passphrase", key.clone(), Some("wrong battery\n")),
        ("encrypted key, no passphrase file", key.clone(), None),
        (
            "a public key, not a private key",
            {
                let mut p = key.as_os_str().to_owned();
                p.push(".pub");
                PathBuf::from(p)
            },
            None,
        ),
    ];
    for (i, (case, key, pass)) in cases.into_iter().enumerate() {
        let mut cfg = cfg.clone();
        cfg.checkout_dir = w.client.path().join(format!("cache-{i}"));
        cfg.credentials.ssh_key_file = Some(key.clone());
        cfg.credentials.ssh_key_passphrase_file = pass.map(|text| {
            fs::write(&passphrase, text).unwrap();
            passphrase.clone()
        });
        let cache = cfg.checkout_dir.clone();
        let mut source = GitSource::open(cfg).unwrap();
        let err = w.fetch_err(&mut source);
        assert_eq!(err.metric_label(), "credentials", "{case}: {err}");
        assert!(!err.is_transient(), "{case}");
        let message = err.to_string();
        assert!(
            message.contains(&format!("cannot use SSH key {}", key.display())),
            "{case}: {message}"
        );
        assert!(!message.contains("battery"), "{case}: {message}");
        assert!(!message.contains("horse"), "{case}: {message}");
        if pass.is_some() {
            assert!(
                message.contains(&format!("check that {} holds", passphrase.display())),
                "{case}: {message}"
            );
        } else {
            assert!(
                message.contains("--git-ssh-passphrase-file"),
                "{case}: {message}"
            );
        }
        assert_nothing_fetched(&source, &cache, w.first);
    }
}

#[test]
fn ipv6_loopback_with_bracketed_host() {
    let w = World::with(Sshd::start_with(&Options {
        ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
        ..Options::default()
    }));
    assert!(
        w.url().contains(&format!("@[::1]:{}/", w.sshd.port)),
        "{}",
        w.url()
    );
    assert_eq!(w.sshd.known_hosts_name(), format!("[::1]:{}", w.sshd.port));
    w.trust_server();
    let mut source = GitSource::open(w.config()).unwrap();
    let outcome = w.fetch_ok(&mut source);
    assert_eq!(outcome.head, w.first.to_string());

    // accept_new records the key under the name OpenSSH would use.
    fs::write(w.known_hosts(), "").unwrap();
    let mut cfg = w.config();
    cfg.credentials.accept_new_host_keys = true;
    cfg.checkout_dir = w.client.path().join("cache2");
    let mut source = GitSource::open(cfg).unwrap();
    w.fetch_ok(&mut source);
    assert_eq!(
        fs::read_to_string(w.known_hosts()).unwrap(),
        w.sshd.known_hosts_line()
    );
}

#[test]
fn server_with_several_host_key_types() {
    let w = World::with(Sshd::start_with(&Options {
        extra_host_key_types: vec!["ecdsa", "rsa"],
        ..Options::default()
    }));
    // What `ssh-keyscan` gives: every type. Trusted.
    let all = format!(
        "{}{}{}",
        w.sshd.known_hosts_line_for("rsa"),
        w.sshd.known_hosts_line_for("ecdsa"),
        w.sshd.known_hosts_line()
    );
    fs::write(w.known_hosts(), &all).unwrap();
    let mut source = GitSource::open(w.config()).unwrap();
    assert_eq!(w.fetch_ok(&mut source).head, w.first.to_string());

    // Only the ecdsa key listed: libssh2 negotiates ed25519 (its first
    // choice; libgit2 only steers that from ~/.ssh/known_hosts, not from
    // nodewave's file), and a new key type for a known host is refused with
    // a message saying which key to add, even with accept_new.
    let ecdsa_only = w.sshd.known_hosts_line_for("ecdsa");
    fs::write(w.known_hosts(), &ecdsa_only).unwrap();
    let mut cfg = w.config();
    cfg.credentials.accept_new_host_keys = true;
    cfg.checkout_dir = w.client.path().join("cache2");
    let mut source = GitSource::open(cfg).unwrap();
    let err = w.fetch_err(&mut source);
    assert_eq!(err.metric_label(), "host_key_unknown", "{err}");
    let message = err.to_string();
    assert!(
        message.contains("the file only has ecdsa-sha2-nistp256 key(s) for this host"),
        "{message}"
    );
    assert!(
        message.contains("add the server's ssh-ed25519 key"),
        "{message}"
    );
    assert_eq!(fs::read_to_string(w.known_hosts()).unwrap(), ecdsa_only);
}

#[test]
fn url_without_user_logs_in_as_git() {
    // The documented default user; this server has no `git` account, so the
    // login is refused, once, with an auth error naming the user.
    let w = World::new();
    w.trust_server();
    let mut cfg = w.config();
    cfg.url = format!(
        "ssh://{}:{}{}",
        w.sshd.addr,
        w.sshd.port,
        w.upstream.bare.display()
    );
    let mut source = GitSource::open(cfg).unwrap();
    let err = w.fetch_err(&mut source);
    assert_eq!(err.metric_label(), "auth", "{err}");
    assert!(err.to_string().contains("for user git"), "{err}");
    let log = w.sshd.wait_for_log("Invalid user git from");
    assert_eq!(log.matches("Connection from").count(), 1, "{log}");
}
