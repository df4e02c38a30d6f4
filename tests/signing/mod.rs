//! Real signing tools for the verification tests: Debian's GnuPG with a
//! throw-away GNUPGHOME, ssh-keygen keys, and git commits signed with them by
//! `git commit -S` (both `gpg.format=openpgp` and `gpg.format=ssh`).
//!
//! Each `Gpg` starts at most one gpg-agent (for its own GNUPGHOME) and stops
//! exactly that one when dropped (`gpgconf --kill gpg-agent` with the same
//! GNUPGHOME); nothing is killed by name.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::missing_panics_doc
)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;

fn run(mut cmd: Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {what}: {e} (is it installed? apt-get install gnupg git openssh-client)")
    });
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A GnuPG home with its own keys.
pub struct Gpg {
    home: TempDir,
}

impl Gpg {
    pub fn new() -> Self {
        Self::with_conf("")
    }

    /// A home whose gpg.conf has `conf` (e.g. `faked-system-time 20200101T000000`
    /// to make keys and signatures in the past).
    pub fn with_conf(conf: &str) -> Self {
        // Short path: the agent's socket path must fit in 108 bytes.
        let home = tempfile::Builder::new()
            .prefix("nwgpg")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::set_permissions(
            home.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        std::fs::write(home.path().join("gpg.conf"), conf).unwrap();
        Self { home }
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("gpg");
        c.env("GNUPGHOME", self.home()).args(["--batch", "--yes"]);
        c
    }

    /// Generates a key without passphrase; returns its fingerprint.
    /// `usage`: e.g. `sign` or `default`; `expire`: `never`, `1y`, `1d`.
    pub fn gen_key(&self, uid: &str, algo: &str, usage: &str, expire: &str) -> String {
        let mut c = self.cmd();
        c.args([
            "--passphrase",
            "",
            "--quick-gen-key",
            uid,
            algo,
            usage,
            expire,
        ]);
        run(c, "gpg --quick-gen-key");
        self.fingerprints(uid)[0].clone()
    }

    /// Adds a signing subkey; returns the subkey's fingerprint.
    pub fn add_signing_subkey(&self, fpr: &str, algo: &str) -> String {
        let mut c = self.cmd();
        c.args([
            "--passphrase",
            "",
            "--quick-add-key",
            fpr,
            algo,
            "sign",
            "never",
        ]);
        run(c, "gpg --quick-add-key");
        self.fingerprints(fpr).last().unwrap().clone()
    }

    /// Primary fingerprint first, then each subkey's.
    pub fn fingerprints(&self, key: &str) -> Vec<String> {
        let mut c = self.cmd();
        c.args(["--with-colons", "--list-keys", key]);
        let out = run(c, "gpg --list-keys");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("fpr:"))
            .map(|l| l.split(':').nth(9).unwrap().to_owned())
            .collect()
    }

    pub fn export(&self, key: &str) -> String {
        let mut c = self.cmd();
        c.args(["--armor", "--export", key]);
        String::from_utf8(run(c, "gpg --export").stdout).unwrap()
    }

    pub fn export_binary(&self, key: &str) -> Vec<u8> {
        let mut c = self.cmd();
        c.args(["--export", key]);
        run(c, "gpg --export").stdout
    }

    /// Revokes the key with the revocation certificate gpg made when it
    /// generated it (the armor line is prefixed with ':' against accidents).
    pub fn revoke(&self, fpr: &str) {
        let cert_path = self.home().join(format!("openpgp-revocs.d/{fpr}.rev"));
        let cert = std::fs::read_to_string(&cert_path).unwrap();
        let cert = cert.replace(
            ":-----BEGIN PGP PUBLIC KEY BLOCK-----",
            "-----BEGIN PGP PUBLIC KEY BLOCK-----",
        );
        let mut c = self.cmd();
        c.arg("--import")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(cert.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "gpg --import revocation: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        // Stops the agent of this GNUPGHOME only.
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home())
            .args(["--kill", "gpg-agent"])
            .output();
    }
}

/// An SSH key pair made by ssh-keygen.
pub struct SshKey {
    pub private: PathBuf,
    /// `keytype base64 comment`
    pub public: String,
}

impl SshKey {
    pub fn new(dir: &Path, name: &str, key_type: &str) -> Self {
        let private = dir.join(name);
        let mut c = Command::new("ssh-keygen");
        c.args(["-q", "-t", key_type, "-N", "", "-C", name, "-f"])
            .arg(&private);
        if key_type == "rsa" {
            c.args(["-b", "2048"]);
        }
        run(c, "ssh-keygen");
        let public = std::fs::read_to_string(private.with_extension("pub"))
            .unwrap()
            .trim()
            .to_owned();
        Self { private, public }
    }

    /// The `SHA256:...` fingerprint as ssh-keygen prints it.
    pub fn fingerprint(&self) -> String {
        let mut c = Command::new("ssh-keygen");
        c.arg("-lf").arg(self.private.with_extension("pub"));
        let out = String::from_utf8(run(c, "ssh-keygen -l").stdout).unwrap();
        out.split_whitespace().nth(1).unwrap().to_owned()
    }
}

/// How a commit is signed.
pub enum Sign<'a> {
    No,
    /// GnuPG home and key (fingerprint or user ID).
    Gpg(&'a Gpg, &'a str),
    Ssh(&'a SshKey),
}

/// A work-tree repository on `main`, committed to with the real `git`.
pub struct Repo {
    dir: TempDir,
}

impl Repo {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repo = Self { dir };
        repo.git(&["init", "-q", "-b", "main"], None);
        repo
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.path().display())
    }

    /// Runs git in the repository, isolated from the user's and the system's
    /// configuration; `gnupg` sets GNUPGHOME.
    pub fn git(&self, args: &[&str], gnupg: Option<&Path>) -> String {
        let mut c = Command::new("git");
        c.current_dir(self.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .args([
                "-c",
                "user.name=Signer",
                "-c",
                "user.email=signer@example.com",
            ])
            .args(args);
        if let Some(home) = gnupg {
            c.env("GNUPGHOME", home);
        }
        String::from_utf8(run(c, &format!("git {}", args.join(" "))).stdout).unwrap()
    }

    /// Writes `files` and commits them (or an empty commit when none), signed
    /// as `sign` says; returns the commit id.
    pub fn commit(&self, sign: &Sign<'_>, message: &str, files: &[(&str, &str)]) -> String {
        for (path, content) in files {
            let p = self.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        self.git(&["add", "-A"], None);
        let key_path;
        let (config, home): (Vec<String>, Option<&Path>) = match sign {
            Sign::No => (vec!["commit.gpgsign=false".into()], None),
            Sign::Gpg(gpg, key) => (
                vec![format!("user.signingkey={key}"), "gpg.program=gpg".into()],
                Some(gpg.home()),
            ),
            Sign::Ssh(key) => {
                key_path = key.private.display().to_string();
                (
                    vec![
                        "gpg.format=ssh".into(),
                        format!("user.signingkey={key_path}"),
                    ],
                    None,
                )
            }
        };
        let mut args: Vec<&str> = Vec::new();
        for c in &config {
            args.extend(["-c", c.as_str()]);
        }
        args.extend(["commit", "-q", "--allow-empty", "-m", message]);
        if !matches!(sign, Sign::No) {
            args.push("-S");
        }
        self.git(&args, home);
        self.head()
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"], None).trim().to_owned()
    }

    /// The raw commit object.
    pub fn cat(&self, commit: &str) -> String {
        self.git(&["cat-file", "commit", commit], None)
    }

    /// Writes a commit object (`git hash-object -t commit -w`) and moves main
    /// to it; returns its id.
    pub fn write_commit_object(&self, object: &str) -> String {
        let mut c = Command::new("git");
        c.current_dir(self.path())
            .args(["hash-object", "-t", "commit", "-w", "--stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(object.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "git hash-object: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        self.git(&["update-ref", "refs/heads/main", &id], None);
        self.git(&["reset", "-q", "--hard", &id], None);
        id
    }

    /// A commit with `signed`'s signature header but another message: the
    /// signature is valid, for other content. Main moves to it.
    pub fn forge_from(&self, signed: &str, new_message: &str) -> String {
        let object = self.cat(signed);
        let (headers, _message) = object.split_once("\n\n").unwrap();
        assert!(
            headers.contains("\ngpgsig "),
            "{signed} is not signed:\n{object}"
        );
        self.write_commit_object(&format!("{headers}\n\n{new_message}\n"))
    }

    /// A commit whose content is `content_from`'s (tree, parents, message)
    /// with the signature header of `signature_from` spliced in.
    pub fn splice_signature(&self, content_from: &str, signature_from: &str) -> String {
        let content = self.cat(content_from);
        let signed = self.cat(signature_from);
        let (sig_headers, _) = signed.split_once("\n\n").unwrap();
        let start = sig_headers.find("\ngpgsig ").unwrap();
        let gpgsig = &sig_headers[start..];
        let (headers, message) = content.split_once("\n\n").unwrap();
        self.write_commit_object(&format!("{headers}{gpgsig}\n\n{message}"))
    }
}

/// Writes `content` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}
